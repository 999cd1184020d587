"""Increments offline (docs/core-format.md, "Increments"): written from synthetic snapshots, read through
their chain of bases by read_core, mem, diff and flatten; bases found, checked and refused."""
import json
import os
import shutil
import struct

import pytest

from kvmsnap import notes as N
from kvmsnap.formats import elf
from kvmsnap.formats.kvmsnap import read_core
from kvmsnap.formats.reader import CoreFormatError, parse_elf
from kvmsnap.memory import PAGE_SIZE
from kvmsnap.memory.dirty import bit_runs, coalesce
from kvmsnap.state import Base

from conftest import run_kvmsnap
from synthetic import MiB, make_state, write

PAGE_A, PAGE_B = 0x300000, 0x5ff000          # rewritten by the increments; PAGE_B is zeroed by the second


def base_of(result) -> Base:
    return Base(result.path, result.apparent_size, bytes.fromhex(result.state_blake3))


def increment(base_result, path, changes: dict[int, bytes]):
    """An increment of ``base_result``'s core: the synthetic state with ``changes`` (page -> bytes)."""
    state = make_state()
    for page, data in changes.items():
        state.memory.write(page, data.ljust(PAGE_SIZE, b"\0"))
    state.base, state.changed = base_of(base_result), [(p, p + PAGE_SIZE) for p in sorted(changes)]
    return write(state, path)


@pytest.fixture
def chain(tmp_path):
    """full.core <- inc1.core (PAGE_A, PAGE_B rewritten) <- inc2.core (PAGE_B zeroed)."""
    full = write(make_state(), tmp_path / "full.core")
    inc1 = increment(full, tmp_path / "inc1.core", {PAGE_A: b"first increment", PAGE_B: b"B" * PAGE_SIZE})
    inc2 = increment(inc1, tmp_path / "inc2.core", {PAGE_B: b""})
    return tmp_path / "full.core", tmp_path / "inc1.core", tmp_path / "inc2.core"


def test_an_increment_holds_its_pages_only_and_reads_through_its_bases(chain):
    full, inc1, inc2 = chain
    assert os.path.getsize(inc1) < os.path.getsize(full) // 100
    with read_core(inc2) as c:
        assert [m.path for m in c.memory.layers()] == [str(full), str(inc1), str(inc2)]
        assert c.memory.read(PAGE_A, 15) == b"first increment"      # from inc1
        assert c.memory.read(PAGE_B, PAGE_SIZE) == bytes(PAGE_SIZE)  # zeroed by inc2 (a hole there)
        assert c.memory.read(0x300010 - 16 + PAGE_SIZE, 4) == bytes(4)
        with read_core(full) as f:
            assert c.memory.read(0, 2 * MiB) == f.memory.read(0, 2 * MiB)   # untouched: the base's
        assert list(c.memory.data_runs(PAGE_B, PAGE_B + PAGE_SIZE)) == []
    with read_core(inc1) as c:
        assert c.memory.read(PAGE_B, 4) == b"BBBB"


def test_inspect_names_the_base_without_reading_it(chain, tmp_path):
    full, inc1, _ = chain
    os.rename(full, tmp_path / "elsewhere.core")
    r = run_kvmsnap("inspect", inc1, "--json")
    assert r.returncode == 0, r.stderr
    base = json.loads(r.stdout)["base"]
    assert base["path"] == str(full) and base["changed_runs"] == 2 and base["changed_bytes"] == 2 * PAGE_SIZE
    r = run_kvmsnap("inspect", inc1)
    assert f"increment of: {full}" in r.stdout


def test_mem_diff_and_flatten_follow_the_chain(chain, tmp_path):
    full, inc1, inc2 = chain
    r = run_kvmsnap("mem", inc2, hex(PAGE_A), "15", "--format", "raw")
    assert r.returncode == 0 and r.stdout == "first increment", r.stderr
    r = run_kvmsnap("flatten", inc2, tmp_path / "flat.core", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == [str(full), str(inc1), str(inc2)]
    with read_core(tmp_path / "flat.core") as flat, read_core(inc2) as c:
        assert flat.base is None and flat.memory.layers()[0].path == str(tmp_path / "flat.core")
        assert flat.memory.read(0, 8 * MiB) == c.memory.read(0, 8 * MiB)
        assert flat.vcpus == c.vcpus and flat.devices == c.devices
    r = run_kvmsnap("diff", tmp_path / "flat.core", inc2, "--json")
    assert json.loads(r.stdout)["memory"]["changed_pages"] == 0, r.stdout
    r = run_kvmsnap("diff", full, inc2, "--json")
    assert [(x["start"], x["pages"]) for x in json.loads(r.stdout)["memory"]["ranges"]] == [(PAGE_A, 1)]


def test_a_base_is_found_beside_its_increment_when_moved_with_it(chain, tmp_path):
    full, inc1, _ = chain
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(full, moved / "full.core")
    shutil.move(inc1, moved / "inc1.core")
    with read_core(moved / "inc1.core") as c:
        assert c.memory.layers()[0].path == str(moved / "full.core")
        assert c.memory.read(PAGE_A, 15) == b"first increment"


def test_a_missing_or_changed_base_is_named(chain, tmp_path):
    full, inc1, inc2 = chain
    os.rename(inc1, tmp_path / "gone")
    with pytest.raises(CoreFormatError, match=f"^{inc2}: an increment of {inc1}, which is missing: nor is it at "):
        read_core(inc2)
    os.rename(tmp_path / "gone", inc1)
    other = make_state()
    other.devices["clock"] = other.devices["clock"][:8] + b"\x01" + other.devices["clock"][9:]
    write(other, full)
    with pytest.raises(CoreFormatError, match=r"an increment of .*full.core, which is missing: .*full.core is not "
                                              r"it \(state BLAKE3 [0-9a-f]{16}…, expected [0-9a-f]{16}…\)"):
        read_core(inc1)
    r = run_kvmsnap("mem", inc2, "0", "16")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "full.core is not it" in r.stderr


def _phdr_at(path, index):
    image = parse_elf(path)
    return image.phdrs[index][0]


def test_hostile_increments_get_one_line_errors(chain, tmp_path):
    _, inc1, _ = chain
    po = elf.offsets(elf.Elf64_Phdr)
    cases = {}
    bad = tmp_path / "order.core"                                # runs out of address order
    shutil.copy(inc1, bad)
    with open(bad, "r+b") as f:
        at = _phdr_at(bad, 2)
        f.seek(at + po["p_paddr"])
        f.write(struct.pack("<Q", 0x200000))
        f.seek(at + po["p_vaddr"])
        f.write(struct.pack("<Q", 0x200000))
    cases[bad] = "is not a changed run of an increment"
    bad = tmp_path / "outside.core"                              # a run past the slot
    shutil.copy(inc1, bad)
    with open(bad, "r+b") as f:
        at = _phdr_at(bad, 2)
        for field in ("p_paddr", "p_vaddr"):
            f.seek(at + po[field])
            f.write(struct.pack("<Q", 64 * MiB))
    cases[bad] = "is not a changed run of an increment"
    bad = tmp_path / "phdr.core"                                 # a slot that names a PT_LOAD
    shutil.copy(inc1, bad)
    image = parse_elf(bad)
    mm = next(n for n in image.notes if n.type == N.KVMSNAP_MEMORY_MAP)
    with open(bad, "r+b") as f:
        f.seek(mm.desc_offset + elf.offsets(N.KvmsnapMemoryMap)["regions"]
               + elf.offsets(N.kvmsnap_memory_region)["phdr_index"])
        f.write(struct.pack("<I", 1))
    cases[bad] = "phdr_index 1 in an increment"
    for path, words in cases.items():
        with pytest.raises(CoreFormatError, match=words) as e:
            read_core(path)
        assert str(e.value).startswith(f"{path}: offset 0x") and "\n" not in str(e.value)


def test_dirty_bitmaps_become_runs_and_runs_are_bounded():
    assert bit_runs(0, 100) == []
    assert bit_runs(0b1011, 4) == [(0, 2), (3, 4)]
    everything = (1 << (1 << 20)) - 1                           # a 4 GiB slot, all written
    assert bit_runs(everything, 1 << 20) == [(0, 1 << 20)]
    alternate = int("01" * 4096, 2)
    assert len(bit_runs(alternate, 8192)) == 4096
    runs = [(2 * i, 2 * i + 1, 0) for i in range(10)] + [(100, 101, 1)]
    merged = coalesce(runs, 3)
    assert len(merged) == 3 and merged[-1] == (100, 101, 1)        # never across a slot
    assert sum(b - a for a, b, _ in merged) >= 11


def test_ram_compared_with_a_core_gives_the_pages_that_differ(tmp_path):
    """Where KVM did not log since the base, an increment holds the pages where RAM and the base
    core differ: written, zeroed (data in the base, none in RAM) and both written alike (no)."""
    from kvmsnap.memory.dirty import compare
    from kvmsnap.memory.ram import GuestRam
    state = make_state(mem=8 * MiB)
    base_ram = state.memory
    slot = base_ram.slots()[0]
    page = lambda n: slot.gpa + n * PAGE_SIZE
    base_ram.write(page(5), b"same")
    base_ram.write(page(9), b"only in the base")
    result = write(state, tmp_path / "base.core")
    ram = GuestRam.anonymous([(slot.gpa, slot.size)])
    try:
        ram.write(slot.gpa, base_ram.read(slot.gpa, slot.size))
        ram.zero(page(9), PAGE_SIZE)
        ram.write(page(7), b"new")
        ram.write(page(1500), b"two" + bytes(PAGE_SIZE) + b"pages")
        with read_core(result.path) as base:
            assert compare(ram, base.memory, ram.slots()) == [(page(7), page(8)), (page(9), page(10)),
                                                              (page(1500), page(1502))]
    finally:
        ram.close()


def test_changes_are_unknown_once_logging_stops_even_if_that_save_fails():
    """A whole save turns KVM's log off in its pause; if it then fails, the base stays the last
    increment, and what the guest writes from then on is not logged: the next increment must
    compare (changed() None), not trust the stale log. (A stand-in VM: only its log is asked.)"""
    from kvmsnap.memory.dirty import DirtyLog
    from kvmsnap.memory.ram import GuestRam

    class Vm:
        def set_user_memory_region(self, *args):
            pass

        def get_dirty_log(self, slot, npages):
            return bytes(-(-npages // 64) * 8)

    ram = GuestRam.anonymous([(0, 4 * MiB)])
    try:
        log = DirtyLog(Vm(), ram)
        log.saved(Base("/base", 1, bytes(32)))
        assert log.changed() is None                      # restored or saved without the log: compare
        log.saving(incremental=True)
        log.saved(Base("/inc1", 1, bytes(32)))
        log.take()
        assert log.changed() == []                        # logged since inc1: nothing written
        log.saving(incremental=False)                     # a whole save, which then fails: no saved()
        assert log.changed() is None
    finally:
        ram.close()
