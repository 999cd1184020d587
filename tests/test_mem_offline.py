"""``mem``, ``inspect`` and ``diff`` on synthetic cores, without KVM: which segment answers an
address, and hostile sizes: a p_memsz of 2^62, and ~64000 program headers."""
import json
import struct
import subprocess
import time

import pytest

from conftest import kvmsnap_cmd, seconds
from kvmsnap.diff import diff
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.memory import AddressError as MemoryAccessError
from kvmsnap.memory.core import CoreMemory
from kvmsnap.memory import Slot
from synthetic import make_foreign, make_state, write


def timed(*args, limit):
    started = time.monotonic()
    r = subprocess.run(kvmsnap_cmd(*args), capture_output=True, timeout=seconds(120))
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert elapsed < seconds(limit), (args, elapsed)
    return r


def test_first_segment_in_header_order_wins(tmp_path):
    """Overlapping segments (QEMU paging dumps): the first program header holding an address
    answers it; the extents say the same."""
    data = bytes(0x3000) + b"A" * 0x2000 + b"B" * 0x3000 + b"C" * 0x8000
    path = tmp_path / "overlap.core"
    path.write_bytes(make_foreign(phdrs=[(0x1000, 0x3000, 0x2000, 0x2000),
                                         (0x2000, 0x5000, 0x3000, 0x3000),
                                         (0x0, 0x8000, 0x8000, 0x9000)]) + bytes(0x10000))
    path.write_bytes(path.read_bytes()[:0x3000].ljust(0x3000, b"\0") + data[0x3000:])
    with CoreMemory.open(path) as m:
        assert [(e.start, e.end, e.backing, e.held) for e in m.extents()] == [
            (0, 0x1000, 0x8000, 0x1000), (0x1000, 0x3000, 0x3000, 0x3000),
            (0x3000, 0x5000, 0x6000, 0x5000), (0x5000, 0x9000, 0xd000, 0x8000)]
        assert m.read_phys(0xfff, 1) == b"C"
        assert m.read_phys(0x1ffe, 4) == b"AAAA"
        assert m.read_phys(0x2ffe, 4) == b"AABB"
        assert m.read_phys(0x4ffe, 4) == b"BBCC"
        with pytest.raises(MemoryAccessError, match="0x8000: its page is not in the file"):
            m.read_phys(0x7fff, 2)
        with pytest.raises(MemoryAccessError, match="0x9000 is not in the core"):
            m.read_phys(0x9000, 1)


def test_huge_memsz_is_one_range(tmp_path):
    """A 4 KiB foreign core whose PT_LOAD claims 2^62 bytes: diff must not walk them."""
    path = tmp_path / "huge.core"
    path.write_bytes(make_foreign(phdrs=[(0x100000, 0, 0x1000, 1 << 62)]).ljust(0x1000, b"\0"))
    started = time.monotonic()
    d = diff(path, path)
    assert time.monotonic() - started < seconds(5)
    pages = ((1 << 62) - 0x1000) // 0x1000
    assert d["memory"]["ranges"] == [dict(start=0x101000, end=0x100000 + (1 << 62), pages=pages)]
    assert d["memory"]["changed_pages"] == pages and not d["identical"]
    assert d["memory"]["compared_bytes"] == 1 << 62
    r = timed("diff", path, path, limit=5)
    assert f"{pages} pages differ in 1 ranges".encode() in r.stdout
    with CoreMemory.open(path) as m:
        assert m.read_phys(0x100000, 4) == b"\x7fELF"
        with pytest.raises(MemoryAccessError, match="not in the file"):
            m.read_phys(0x101000, 1)


def many_slots_core(path, slots=32000):
    """A kvmsnap core with ``slots`` 4 KiB slots and 32513 virtual PT_LOADs (64514 headers):
    vCPU 0's page table at 0 maps 4 KiB, 2 MiB and 1 GiB aliases of address 0, and the 1 GiB one
    is split at every slot boundary."""
    table = bytearray(4096)
    struct.pack_into("<QQ", table, 0, 0 | 1, 0 | 1 | 0x80)     # -> itself; a large page at 0
    zero = bytes(4096)
    regions = [(Slot(i, i * 4096, 4096), bytes(table) if i == 0 else zero)
               for i in range(slots)]
    state = make_state(1, regions=regions)
    sregs = x86.kvm_sregs2.parse(state.vcpus[0].sregs)
    sregs.cr3 = 0
    state.vcpus[0].sregs = x86.kvm_sregs2.build(sregs)
    result = write(state, path, max_virtual_segments=40000)
    assert result.virtual_segments == 32513 and not result.virtual_truncated
    return path


def test_many_program_headers_kvmsnap(tmp_path):
    a = many_slots_core(tmp_path / "many.core")
    timed("inspect", a, "--section", "regs", limit=8)
    r = timed("mem", a, hex(31999 * 4096), "16", "--format", "raw", limit=8)
    assert r.stdout == bytes(16)
    r = timed("mem", a, "0x40000000", "16", "--virtual", "--format", "raw", limit=8)
    assert r.stdout == struct.pack("<QQ", 1, 0x81)
    assert timed("diff", a, a, limit=15).stdout.rstrip().endswith(b"identical")


def test_many_program_headers_foreign(tmp_path):
    """60000 PT_LOADs of one shared 4 KiB page each, one overlapping them all."""
    at = (64 + 56 * 60002 + 0xfff) & ~0xfff          # the page, after the headers
    phdrs = [(0x100000 + 0x2000 * i, at, 0x1000, 0x1000) for i in range(60000)]
    phdrs.append((0, at, 0x1000, 0x100000 + 0x2000 * 60000))
    path = tmp_path / "many-foreign.core"
    page = bytes(range(256)) * 16
    path.write_bytes(make_foreign(phdrs=phdrs).ljust(at, b"\0") + page)
    with CoreMemory.open(path) as m:
        assert len(m.extents()) == 2 * 60000 + 1     # and the big one between and around
    timed("inspect", path, limit=8)
    last = 0x100000 + 0x2000 * 59999
    r = timed("mem", path, hex(last + 16), "16", "--format", "raw", limit=8)
    assert r.stdout == page[16:32]
    d = json.loads(timed("diff", path, path, "--json", limit=15).stdout)["memory"]
    # the big segment holds only its first page: the rest, between and around the small ones,
    # is not in the file and so not known to be equal
    assert len(d["ranges"]) == 60001 and d["changed_pages"] == 255 + 60000
