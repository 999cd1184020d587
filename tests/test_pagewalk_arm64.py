"""aarch64 stage-1 translation over page tables built in a bytearray (4, 16 and 64 KiB granules),
and a core of a guest running with its MMU on: its kernel's addresses get PT_LOADs of their own,
which `kvmsnap mem --virtual` and gdb-multiarch read."""
import shutil
import struct
import subprocess

import pytest

from conftest import kvmsnap_cmd
from coretools import gdb
from kvmsnap.arch.aarch64 import notes as arm_notes
from kvmsnap.arch.aarch64.paging import PagingState, translate, walk
from kvmsnap.arch.pagetables import PageWalkError, TranslationError
from synthetic import ARM64_RAM, make_arm64_state, write

MiB, GiB = 1 << 20, 1 << 30
TABLE, PAGE, BLOCK = 0b11, 0b11, 0b01          # descriptor bits 1:0 (a page is 0b11 at the last level)
AF = 1 << 10                                   # access flag: Linux sets it on every valid leaf
UPPER = 0xFFFF_0000_0000_0000                  # the first TTBR1 address with 48-bit ranges
KERNEL = 0xFFFF_8000_0800_0000                 # where Debian's arm64 kernel text is


def tcr(t0sz=16, t1sz=16, tg0=0, tg1=2, epd0=0, epd1=0) -> int:
    """TCR_EL1 (TG0: 0 4K, 1 64K, 2 16K; TG1: 1 16K, 2 4K, 3 64K)."""
    return t0sz | epd0 << 7 | tg0 << 14 | t1sz << 16 | epd1 << 23 | tg1 << 30


class Ram:
    """Guest-physical memory from ``base`` with a bump allocator of ``granule``-aligned tables."""

    def __init__(self, size=8 * MiB, base=0, granule=4096):
        self.data, self.base, self.granule = bytearray(size), base, granule
        self.next = base + granule

    def table(self) -> int:
        addr = self.next
        self.next += self.granule
        return addr

    def set(self, table, index, value):
        struct.pack_into("<Q", self.data, table - self.base + 8 * index, value)

    def read(self, addr, length):
        if addr < self.base or addr + length > self.base + len(self.data):
            raise LookupError(f"0x{addr:x} not in RAM")
        return bytes(self.data[addr - self.base:addr - self.base + length])


def four_k():
    """TTBR0: L0[0] -> L1[0] -> L2[0] -> L3[16], a page at 0x100000 (VA 0x10000).
    TTBR1: L0[256] -> L1: [0] -> L2: [64] -> L3: [0..3] pages at 0x300000.. (VA KERNEL..),
    [65] a 2 MiB block at 0x200000; L1[1] a 1 GiB block at 1 GiB."""
    ram = Ram()
    lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = (ram.table() for _ in range(8))
    ram.set(lo0, 0, lo1 | TABLE)
    ram.set(lo1, 0, lo2 | TABLE)
    ram.set(lo2, 0, lo3 | TABLE)
    ram.set(lo3, 16, 0x100000 | AF | PAGE)
    ram.set(hi0, 256, hi1 | TABLE)
    ram.set(hi1, 0, hi2 | TABLE)
    ram.set(hi1, 1, GiB | AF | BLOCK)
    ram.set(hi2, 64, hi3 | TABLE)
    ram.set(hi2, 65, 2 * MiB | AF | BLOCK)
    for i in range(4):
        ram.set(hi3, i, 0x300000 + 0x1000 * i | AF | PAGE)
    return ram, PagingState(sctlr=1, tcr=tcr(), ttbr0=lo0, ttbr1=hi0 | 1 << 48)     # ASID 1 in TTBR1


def test_both_ranges_are_walked_blocks_and_pages_coalesced():
    ram, state = four_k()
    mappings, truncated = walk(ram.read, state)
    assert not truncated
    assert mappings == [(0x10000, 0x100000, 0x1000), (KERNEL, 0x300000, 0x4000),
                        (KERNEL + 2 * MiB, 2 * MiB, 2 * MiB), (UPPER + 0x8000_4000_0000, GiB, GiB)]


def test_translate_pages_blocks_and_what_is_not_mapped():
    ram, state = four_k()
    assert translate(ram.read, state, 0x10123) == 0x100123
    assert translate(ram.read, state, KERNEL + 0x3FFF) == 0x303FFF
    assert translate(ram.read, state, KERNEL + 2 * MiB + 0x12345) == 2 * MiB + 0x12345
    assert translate(ram.read, state, UPPER + 0x8000_4000_0000 + 0x5678) == GiB + 0x5678
    with pytest.raises(TranslationError, match="not mapped .level 3"):
        translate(ram.read, state, KERNEL + 0x4000)
    with pytest.raises(TranslationError, match="outside the ranges"):
        translate(ram.read, state, 0x0001_0000_0000_0000)


def test_epd_and_the_mmu_off():
    ram, state = four_k()
    upper_only = state._replace(tcr=tcr(epd0=1))
    assert [m[0] for m in walk(ram.read, upper_only)[0]][0] == KERNEL
    with pytest.raises(TranslationError):
        translate(ram.read, upper_only, 0x10000)
    assert walk(ram.read, state._replace(sctlr=0)) == ([], False)


@pytest.mark.parametrize("granule, tg1, t1sz, levels", [(1 << 14, 1, 17, 3), (1 << 16, 3, 16, 3)])
def test_16k_and_64k_granules(granule, tg1, t1sz, levels):
    """Linux's other arm64 layouts: 16 KiB pages with 47-bit ranges, 64 KiB pages with 48-bit."""
    ram = Ram(size=16 * MiB, granule=granule)
    shift = [(granule.bit_length() - 1) + n * (granule.bit_length() - 4) for n in range(levels)]
    va_bits = 64 - t1sz
    start = (1 << 64) - (1 << va_bits)
    vaddr = (1 << 64) - (1 << (va_bits - 1)) + 5 * granule      # upper half of the range, 6th page
    tables = [ram.table() for _ in range(levels)]
    for level in range(levels - 1):
        index = (vaddr - start) >> shift[levels - 1 - level] & ((granule // 8) - 1)
        ram.set(tables[level], index, tables[level + 1] | TABLE)
    page = 12 * MiB
    ram.set(tables[-1], (vaddr - start) >> shift[0] & ((granule // 8) - 1), page | AF | PAGE)
    state = PagingState(sctlr=1, tcr=tcr(t1sz=t1sz, tg1=tg1, epd0=1), ttbr0=0, ttbr1=tables[0])
    assert walk(ram.read, state) == ([(vaddr, page, granule)], False)
    assert translate(ram.read, state, vaddr + 123) == page + 123


def test_reserved_granule_and_range_are_refused():
    ram, state = four_k()
    with pytest.raises(PageWalkError, match="TG1 = 0 is reserved"):
        walk(ram.read, state._replace(tcr=tcr(tg1=0)))
    with pytest.raises(PageWalkError, match="T0SZ = 8"):
        walk(ram.read, state._replace(tcr=tcr(t0sz=8)))


def test_recursive_tables_are_bounded():
    """Every entry of a level-0 table points back at itself: the walk stops at its budget."""
    ram = Ram()
    top = ram.table()
    for i in range(512):
        ram.set(top, i, top | TABLE)
    state = PagingState(sctlr=1, tcr=tcr(epd1=1), ttbr0=top, ttbr1=0)
    mappings, truncated = walk(ram.read, state, max_entries=512 * 1000)
    assert truncated
    assert all(size == 0x1000 for _, _, size in mappings)


def _mmu_core(tmp_path):
    """The synthetic arm64 core with vCPU 0's MMU on: the kernel's text at KERNEL mapped onto RAM
    at ARM64_RAM + 0x80000 (where the synthetic PC's code is), and PC there."""
    state = make_arm64_state()
    ram = state.memory
    tables = [ARM64_RAM + 0x10000 + 0x1000 * n for n in range(4)]
    put = lambda table, index, value: ram.write(table + 8 * index, struct.pack("<Q", value))
    offset = KERNEL - UPPER
    for level in range(3):
        put(tables[level], offset >> (39 - 9 * level) & 511, tables[level + 1] | TABLE)
    put(tables[3], 0, ARM64_RAM + 0x80000 | AF | PAGE)
    ids = dict(zip(("sctlr", "tcr", "ttbr0", "ttbr1"), arm_notes.PAGING_IDS))
    values = {ids["sctlr"]: 0x30d00801, ids["tcr"]: tcr(epd0=1), ids["ttbr1"]: tables[0],
              arm_notes.PT_REG_IDS["pc"]: KERNEL}
    v = state.vcpus[0]
    v.regs = [(i, values.pop(i).to_bytes(8, "little") if i in values else x) for i, x in v.regs]
    v.regs += [(i, value.to_bytes(8, "little")) for i, value in values.items()]
    path = tmp_path / "mmu.core"
    result = write(state, path)
    return path, result, ram.read(ARM64_RAM + 0x80000, 8)


def test_a_core_of_a_guest_with_its_mmu_on_has_its_kernel_mapped(tmp_path):
    path, result, code = _mmu_core(tmp_path)
    assert result.virtual_segments == 1 and not result.virtual_truncated
    r = subprocess.run(kvmsnap_cmd("mem", path, hex(KERNEL), "8", "--virtual", "--format", "raw"),
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == code, r.stderr


@pytest.mark.skipif(not shutil.which("gdb-multiarch"), reason="gdb-multiarch: .ci/setup installs it")
def test_gdb_reads_the_code_at_a_kernel_pc(tmp_path):
    path, _, code = _mmu_core(tmp_path)
    out = gdb(path, "x/2xw $pc")
    words = [int(w, 16) for w in out.split(":")[1].split()]
    assert words == list(struct.unpack("<2I", code)), out
