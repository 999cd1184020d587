"""x86-64 page-table walk over page tables built in a bytearray."""
import struct
import time

import pytest

from kvmsnap.arch.x86_64 import paging as pagewalk
from kvmsnap.arch.x86_64.paging import PageWalkError, TranslationError, translate, walk

from conftest import seconds

EFER_LMA = 1 << 10
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
P, RW, US, PS = 1, 2, 4, 0x80
GiB = 1 << 30
MiB = 1 << 20


class Ram:
    """Guest-physical memory with a bump allocator for page tables."""

    def __init__(self, size=4 * MiB):
        self.data = bytearray(size)
        self.next = 0x1000

    def table(self):
        addr = self.next
        self.next += 0x1000
        return addr

    def set(self, table, index, value):
        struct.pack_into("<Q", self.data, table + 8 * index, value)

    def read(self, addr, length):
        if addr < 0 or addr + length > len(self.data):
            raise LookupError(f"0x{addr:x} not in RAM")
        return bytes(self.data[addr:addr + length])


def four_level():
    """PML4[0] -> PDPT: [0] 1 GiB page at 0, [1] -> PD: [0] 2 MiB page at 2 MiB,
    [1] -> PT: [0..3] 4 KiB pages at 0x300000.., [5] 4 KiB page at 0x100000.
    PML4[511] -> PDPT2: [511] 1 GiB page at 1 GiB (kernel-style high mapping)."""
    ram = Ram()
    pml4, pdpt, pd, pt, pdpt2 = (ram.table() for _ in range(5))
    ram.set(pml4, 0, pdpt | P | RW)
    ram.set(pdpt, 0, 0 | P | RW | PS)
    ram.set(pdpt, 1, pd | P | RW)
    ram.set(pd, 0, 2 * MiB | P | PS)
    ram.set(pd, 1, pt | P)
    for i in range(4):
        ram.set(pt, i, (0x300000 + i * 0x1000) | P)
    ram.set(pt, 5, 0x100000 | P | (1 << 63))           # NX bit is not part of the address
    ram.set(pml4, 511, pdpt2 | P)
    ram.set(pdpt2, 511, GiB | P | PS | (1 << 12))       # PAT bit of a 1 GiB page
    return ram, pml4


def test_walk_four_level_coalesces_and_sign_extends():
    ram, cr3 = four_level()
    got, truncated = walk(ram.read, cr3, CR4_PAE, EFER_LMA)
    assert not truncated
    assert got == [
        (0, 0, GiB),
        (GiB, 2 * MiB, 2 * MiB),
        (GiB + 2 * MiB, 0x300000, 0x4000),
        (GiB + 2 * MiB + 0x5000, 0x100000, 0x1000),
        (0xffffffffc0000000, GiB, GiB),
    ]


def test_coalesces_runs_contiguous_in_both_spaces():
    ram = Ram()
    pml4, pdpt, pd = ram.table(), ram.table(), ram.table()
    ram.set(pml4, 0, pdpt | P)
    ram.set(pdpt, 0, pd | P)
    for i in range(512):
        ram.set(pd, i, (i << 21) | P | PS)
    assert walk(ram.read, pml4, 0, EFER_LMA) == ([(0, 0, GiB)], False)
    ram.set(pd, 7, (100 << 21) | P | PS)
    assert walk(ram.read, pml4, 0, EFER_LMA)[0] == [(0, 0, 7 << 21), (7 << 21, 100 << 21, 2 * MiB),
                                                   (8 << 21, 8 << 21, GiB - (8 << 21))]


def test_translate_each_page_size():
    ram, cr3 = four_level()
    assert translate(ram.read, cr3, CR4_PAE, EFER_LMA, 0x12345678) == 0x12345678
    assert translate(ram.read, cr3, CR4_PAE, EFER_LMA, GiB + 0x1234) == 2 * MiB + 0x1234
    assert translate(ram.read, cr3, CR4_PAE, EFER_LMA, GiB + 2 * MiB + 0x2abc) == 0x302abc
    assert translate(ram.read, cr3, CR4_PAE, EFER_LMA, GiB + 2 * MiB + 0x5008) == 0x100008
    assert translate(ram.read, cr3, CR4_PAE, EFER_LMA, 0xffffffffc0001000) == GiB + 0x1000


def test_translate_unmapped_and_non_canonical():
    ram, cr3 = four_level()
    with pytest.raises(TranslationError, match="PTE not present"):
        translate(ram.read, cr3, 0, EFER_LMA, GiB + 2 * MiB + 0x4000)
    with pytest.raises(TranslationError, match="PDPTE not present"):
        translate(ram.read, cr3, 0, EFER_LMA, 5 * GiB)
    with pytest.raises(TranslationError, match="PML4E not present"):
        translate(ram.read, cr3, 0, EFER_LMA, 1 << 40)
    with pytest.raises(TranslationError, match="non-canonical"):
        translate(ram.read, cr3, 0, EFER_LMA, 0x0000800000000000)
    with pytest.raises(TranslationError, match="non-canonical"):
        translate(ram.read, cr3, 0, EFER_LMA, 0xfff0000000000000)
    assert issubclass(TranslationError, LookupError)


def test_five_level():
    ram = Ram()
    pml5, pml4, pdpt = ram.table(), ram.table(), ram.table()
    ram.set(pml5, 0, pml4 | P)
    ram.set(pml4, 0, pdpt | P)
    ram.set(pdpt, 2, 0 | P | PS)
    ram.set(pml5, 511, pml4 | P)            # 0xffff000000000000 + the same tables
    cr4 = CR4_PAE | CR4_LA57
    assert walk(ram.read, pml5, cr4, EFER_LMA) == \
        ([(2 * GiB, 0, GiB), (0xffff000000000000 + 2 * GiB, 0, GiB)], False)
    assert translate(ram.read, pml5, cr4, EFER_LMA, 0xffff000080000010) == 0x10
    # canonical under LA57 (not under 4-level paging): reaches the PML4
    with pytest.raises(TranslationError, match="PML4E not present"):
        translate(ram.read, pml5, cr4, EFER_LMA, 0x0000800000000000)
    with pytest.raises(TranslationError, match="non-canonical"):
        translate(ram.read, pml5, cr4, EFER_LMA, 0x0100000000000000)
    with pytest.raises(TranslationError, match="PML5E not present"):
        translate(ram.read, pml5, cr4, EFER_LMA, 0x0080000000000000)


def test_tables_outside_ram_are_skipped():
    ram = Ram()
    pml4, pdpt = ram.table(), ram.table()
    ram.set(pml4, 0, pdpt | P)
    ram.set(pml4, 1, (1 << 40) | P)         # PDPT far outside RAM
    ram.set(pdpt, 0, 0 | P | PS)
    assert walk(ram.read, pml4, 0, EFER_LMA) == ([(0, 0, GiB)], False)
    with pytest.raises(TranslationError, match="not in RAM"):
        translate(ram.read, pml4, 0, EFER_LMA, (1 << 39) + 5)
    assert walk(ram.read, 1 << 40, 0, EFER_LMA) == ([], False)


def test_ps_in_pml4e_is_ignored():
    ram = Ram()
    pml4 = ram.table()
    ram.set(pml4, 0, 0 | P | PS)
    assert walk(ram.read, pml4, 0, EFER_LMA) == ([], False)


def test_recursive_tables_are_bounded():
    """A PML4 whose every entry points at itself maps 2^36 pages: the walk must stop early."""
    ram = Ram()
    pml4 = ram.table()
    for i in range(512):
        ram.set(pml4, i, pml4 | P)
    got, truncated = walk(ram.read, pml4, 0, EFER_LMA, max_leaves=10000)
    assert truncated and 0 < sum(size for _, _, size in got) <= 10000 * 4096
    # every visit is charged, also of a table already seen: reads stop with the entry budget
    calls = []
    got, truncated = walk(lambda a, n: calls.append(a) or ram.read(a, n), pml4, 0, EFER_LMA,
                          max_entries=20 * 512)
    assert truncated and calls == [pml4] * 20


def test_shared_empty_tables_are_bounded():
    """Every PML4E -> one PDPT, every PDPTE -> one PD, every PDE -> one empty PT: 512^3 visits of
    the PT, each finding nothing.  The walk must give up within its entry budget, quickly."""
    ram = Ram()
    pml4, pdpt, pd, pt = (ram.table() for _ in range(4))
    for i in range(512):
        ram.set(pml4, i, pdpt | P)
        ram.set(pdpt, i, pd | P)
        ram.set(pd, i, pt | P)
    reads = []
    started = time.monotonic()
    got, truncated = walk(lambda a, n: reads.append(a) or ram.read(a, n), pml4, 0, EFER_LMA)
    assert time.monotonic() - started < seconds(10)
    assert (got, truncated) == ([], True)
    assert len(reads) == pagewalk.MAX_ENTRIES // pagewalk.ENTRIES


def test_entry_budget():
    ram = Ram(8 * MiB)
    pml4, pdpt = ram.table(), ram.table()
    ram.set(pml4, 0, pdpt | P)
    for i in range(300):
        pd = ram.table()
        ram.set(pdpt, i, pd | P)
        ram.set(pd, 0, 0 | P | PS)
    got, truncated = walk(ram.read, pml4, 0, EFER_LMA, max_entries=12 * 512)
    assert len(got) == 10 and truncated      # PML4, PDPT, then 10 page directories
    got, truncated = walk(ram.read, pml4, 0, EFER_LMA, max_entries=302 * 512)
    assert len(got) == 300 and not truncated


def test_not_long_mode():
    ram, cr3 = four_level()
    with pytest.raises(PageWalkError):
        walk(ram.read, cr3, 0, 0)
    with pytest.raises(PageWalkError):
        translate(ram.read, cr3, 0, 0, 0)
    assert pagewalk.paging_enabled(0x80000001, EFER_LMA)
    assert not pagewalk.paging_enabled(0x1, EFER_LMA)
    assert not pagewalk.paging_enabled(0x80000001, 0)
