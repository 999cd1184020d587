"""Guest RAM filled from a file behind its user (kvmsnap/memory/userfault.py), without a VM: the
bytes a thread of this process reads while the filler runs, a save during the filling, a file that
ends too soon, and the fallback without a userfaultfd."""
import mmap
import os
import threading

import pytest

from kvmsnap.kvm import ffi
from kvmsnap.memory import userfault

CHUNK = 64 << 10


def fill(path, size, runs):
    """A region of ``size`` bytes registered with a Filler of ``runs`` (offsets into the region);
    (the region, the filler, an event set with the error when it ends)."""
    region = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = int(ffi.cast("uintptr_t", ffi.from_buffer(region)))
    ended, result = threading.Event(), []
    with open(path, "rb") as f:
        try:
            filler = userfault.Filler(f.fileno(), str(path), [(base, size)],
                                      [(base + at, length, offset) for at, length, offset in runs],
                                      lambda error: (result.append(error), ended.set()), chunk=CHUNK)
        except userfault.Unavailable as e:
            pytest.skip(f"this process may not have a userfaultfd here ({e})")
    return region, filler, ended, result


def test_reads_during_the_fill_see_the_file_and_zeros_elsewhere(tmp_path):
    size = 64 * CHUNK
    data = os.urandom(40 * CHUNK)
    path = tmp_path / "core"
    path.write_bytes(data)
    runs = [(3 * CHUNK + 100 * 4096 % CHUNK, 5 * CHUNK, 0), (20 * CHUNK, 30 * CHUNK, 10 * CHUNK)]
    expected = bytearray(size)
    for at, length, offset in runs:
        expected[at:at + length] = data[offset:offset + length]
    region, filler, ended, result = fill(path, size, runs)
    # from the last chunk down: most of these are faults the filler serves before its own order
    got = {at: region[at:at + CHUNK] for at in range(size - CHUNK, -1, -CHUNK)}
    got = b"".join(got[at] for at in sorted(got))
    assert ended.wait(30) and result == [None]
    assert got == expected and region[:] == expected
    filler.stop()


def test_a_file_that_ends_too_soon_is_reported_with_its_offset(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\1" * CHUNK)
    region, filler, ended, result = fill(path, 8 * CHUNK, [(0, 4 * CHUNK, 0)])
    assert ended.wait(30)
    assert result == [f"{path}: guest RAM could not be read at offset {CHUNK:#x}: Input/output error"], result
    # the first chunk was read in; the rest is released: reading it does not wait for anybody
    assert region[:4096] == b"\1" * 4096 and len(region[:]) == 8 * CHUNK
    filler.stop()


def test_guest_ram_being_filled_is_read_whole_by_a_save(tmp_path):
    """A save decides from the page tables which pages of anonymous RAM are zero: while RAM is
    still being filled, the pages not yet in would pass for zeros.  GuestRam waits for the fill."""
    from kvmsnap.memory import Slot
    from kvmsnap.memory.ram import GuestRam
    size = 256 << 20
    path = tmp_path / "core"
    with open(path, "wb") as f:
        f.truncate(size)
        for at in range(0, size, 4 << 20):          # 1 MiB of data every 4 MiB
            f.seek(at)
            f.write(b"\x5a" * (1 << 20))
    with open(path, "rb") as f:
        try:
            ram = GuestRam.fill_file(f.fileno(), str(path), [(Slot(0, 0, size), 0)])
        except userfault.Unavailable as e:
            pytest.skip(f"this process may not have a userfaultfd here ({e})")
    try:
        runs = list(ram.data_runs(0, size))         # whole chunks came in: each covers the file's data
        assert all(any(a <= at and at + (1 << 20) <= b for a, b in runs) for at in range(0, size, 4 << 20)), runs
        assert ram.read(3 << 20, 4) == b"\0" * 4 and ram.read(4 << 20, 4) == b"\x5a" * 4
    finally:
        ram.close()


def test_without_a_userfaultfd_ram_is_mapped_and_copied_in_by_a_thread(tmp_path):
    """Background restore's fallback: RAM mapped from the file, its data populated from a thread;
    the bytes are the file's, and a save still skips its holes where pagemap tells them apart."""
    from kvmsnap.memory import Slot, file_data_runs
    from kvmsnap.memory.ram import GuestRam
    size = 16 << 20
    path = tmp_path / "core"
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(5 << 20)
        f.write(b"\x5a" * (1 << 20))
    with open(path, "rb") as f:
        ram = GuestRam.map_file(f.fileno(), [(Slot(0, 0, size), 0)])
    try:
        ram.populate_in_background()                # populated or not, the same runs and bytes
        with open(path, "rb") as f:                 # the data as this file system tells it (9p: all)
            data = list(file_data_runs(f.fileno(), 0, size))
        # all of it where pagemap cannot tell written pages from the file's (the arm64 lab's kernel)
        assert list(ram.data_runs(0, size)) in (data, [(0, size)])
        assert ram.read(5 << 20, 4) == b"\x5a" * 4 and ram.read(4 << 20, 4) == b"\0" * 4
    finally:
        ram.close()
