"""x86-64 (IA-32e) page-table walk over guest-physical memory: 4- and 5-level paging, 4 KiB, 2 MiB
and 1 GiB pages.

``read_phys(addr, length) -> bytes`` reads guest-physical memory and raises ``LookupError`` (for
example :class:`kvmsnap.memory.AddressError`) when the range is not RAM; tables it cannot
read are skipped.  :func:`walk` is bounded as kvmsnap.arch.pagetables says (shared or recursive
tables would otherwise be revisited up to 512^4 times).
"""
import struct
from typing import NamedTuple

from kvmsnap import notes as N
from kvmsnap.arch.pagetables import (MAX_ENTRIES, MAX_LEAVES, PageWalkError, TranslationError, Walk,
                                     ranges_in_ram)
from kvmsnap.arch.x86_64.layouts import (CR0_PG, CR4_LA57, EFER_LMA, QEMUCPUSTATE_SIZE_V1_MIN,
                                         QEMUCPUState)
from kvmsnap.formats import elf
from kvmsnap.memory import PAGE_SIZE

PTE_P = 1 << 0
PTE_PS = 1 << 7
ADDR_MASK = 0x000f_ffff_ffff_f000      # physical-address bits 12..51 of a table entry
ENTRIES = 512
_TABLE = struct.Struct("<512Q")

# Leaf sizes by level (1 = PT, 2 = PD, 3 = PDPT); PS is only meaningful at levels 2 and 3.
_LEVEL_SHIFT = {1: 12, 2: 21, 3: 30, 4: 39, 5: 48}


class PagingState(NamedTuple):
    """What a vCPU's address translation depends on."""
    cr0: int
    cr3: int
    cr4: int
    efer: int


def paging_enabled(cr0: int, efer: int) -> bool:
    """True when the vCPU runs with IA-32e paging (CR0.PG and EFER.LMA)."""
    return bool(cr0 & CR0_PG) and bool(efer & EFER_LMA)


def _levels(cr4: int, efer: int) -> int:
    if not efer & EFER_LMA:
        raise PageWalkError("only IA-32e paging (EFER.LMA=1) is supported")
    return 5 if cr4 & CR4_LA57 else 4


def _canonical(vaddr: int, levels: int) -> int:
    """Sign-extend a linear address built from table indices (bit 47 or 56 upwards)."""
    bits = 48 if levels == 4 else 57
    if vaddr & (1 << (bits - 1)):
        vaddr |= ((1 << 64) - 1) ^ ((1 << bits) - 1)
    return vaddr


def is_canonical(vaddr: int, levels: int = 4) -> bool:
    bits = 48 if levels == 4 else 57
    top = vaddr >> (bits - 1)
    return top == 0 or top == (1 << (64 - bits + 1)) - 1


def _leaf_mask(level: int) -> int:
    return ADDR_MASK & ~((1 << _LEVEL_SHIFT[level]) - 1)


def walk(read_phys, cr3: int, cr4: int, efer: int, *, max_entries: int = MAX_ENTRIES,
         max_leaves: int = MAX_LEAVES) -> tuple[list[tuple[int, int, int]], bool]:
    """Every mapping of the page tables at ``cr3``: ``([(vaddr, paddr, size)], truncated)``, the
    mappings sorted by vaddr, with runs contiguous in both address spaces coalesced.

    Non-present entries and tables outside RAM are skipped; reserved PS bits at levels 4/5 are
    ignored.  Each table visit costs its 512 entries, each time the table is reached; the walk
    stops (returning what it found, ``truncated`` True) before the visit that would take more than
    ``max_entries`` entries in all, or at the ``max_leaves``-th leaf entry.
    """
    levels = _levels(cr4, efer)
    found = Walk(max_entries, max_leaves)

    def visit(addr, level, base):
        if not found.visit(ENTRIES):
            return
        try:
            data = read_phys(addr, PAGE_SIZE)
        except LookupError:
            return
        if len(data) != PAGE_SIZE:
            return
        shift = _LEVEL_SHIFT[level]
        for i, pte in enumerate(_TABLE.unpack(data)):
            if not pte & PTE_P:
                continue
            if found.truncated:
                return
            vaddr = base | (i << shift)
            if level == 1 or (level in (2, 3) and pte & PTE_PS):
                if not found.leaf(_canonical(vaddr, levels), pte & _leaf_mask(level), 1 << shift):
                    return
            elif level > 3 and pte & PTE_PS:
                continue            # PS is reserved in PML4E/PML5E: such an entry faults
            else:
                visit(pte & ADDR_MASK, level - 1, vaddr)

    visit(cr3 & ADDR_MASK, levels, 0)
    return found.result()


LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


def entries(read_phys, cr3: int, cr4: int, efer: int, vaddr: int):
    """``(level, entry address, entry)`` of each table entry on ``vaddr``'s walk, top level first,
    down to its leaf or its first entry not present; :class:`TranslationError` when ``vaddr`` is
    not canonical or a table is not in RAM."""
    levels = _levels(cr4, efer)
    vaddr &= (1 << 64) - 1
    if not is_canonical(vaddr, levels):
        raise TranslationError(f"0x{vaddr:x}: non-canonical address ({levels}-level paging)")
    addr = cr3 & ADDR_MASK
    for level in range(levels, 0, -1):
        at = addr + ((vaddr >> _LEVEL_SHIFT[level]) & (ENTRIES - 1)) * 8
        try:
            (pte,) = struct.unpack("<Q", read_phys(at, 8))
        except LookupError as e:
            raise TranslationError(
                f"0x{vaddr:x}: {LEVEL_NAMES[level]} table at 0x{addr:x} is not in RAM") from e
        yield level, at, pte
        if not pte & PTE_P or level == 1 or (level in (2, 3) and pte & PTE_PS):
            return
        addr = pte & ADDR_MASK


def leaf_address(level: int, pte: int, vaddr: int) -> int:
    """The guest-physical address of ``vaddr`` through ``pte``, its present leaf at ``level``."""
    return (pte & _leaf_mask(level)) | (vaddr & ((1 << _LEVEL_SHIFT[level]) - 1))


def translate(read_phys, cr3: int, cr4: int, efer: int, vaddr: int) -> int:
    """The guest-physical address of ``vaddr``; :class:`TranslationError` if it is not mapped."""
    vaddr &= (1 << 64) - 1
    for level, _, pte in entries(read_phys, cr3, cr4, efer, vaddr):
        if not pte & PTE_P:
            raise TranslationError(f"0x{vaddr:x}: not mapped ({LEVEL_NAMES[level]} not present)")
    return leaf_address(level, pte, vaddr)


def virtual_to_physical(read_phys, state: PagingState, vaddr: int) -> int:
    """``vaddr`` translated as a vCPU in ``state`` does: itself with paging off, else through the
    IA-32e tables (PageWalkError for 32-bit paging, TranslationError when not mapped)."""
    if not state.cr0 & CR0_PG:
        return vaddr                     # paging off: linear = physical
    if not paging_enabled(state.cr0, state.efer):
        raise PageWalkError("the vCPU uses 32-bit paging; only IA-32e (4- and 5-level) page "
                            "tables are walked")
    return translate(read_phys, state.cr3, state.cr4, state.efer, vaddr)


def from_notes(image) -> list[PagingState]:
    """Per-CPU paging state from QEMU's notes (one QEMUCPUState per CPU, in CPU order); QEMU writes
    EM_X86_64 exactly when the CPU is in long mode, so EFER.LMA follows from ``e_machine``."""
    lma = EFER_LMA if image.ehdr.e_machine == elf.EM_X86_64 else 0
    states = []
    for n in image.notes:
        if (n.owner, n.type) == (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE) \
                and n.size >= QEMUCPUSTATE_SIZE_V1_MIN:
            st = QEMUCPUState.parse(n.desc.ljust(QEMUCPUState.sizeof(), b"\0"))
            states.append(PagingState(st.cr[0], st.cr[3], st.cr[4], lma))
    return states


def virtual_ranges(read_phys, state: PagingState, slots, limit: int):
    """Guest-virtual ranges the tables of ``state`` map onto RAM that need a PT_LOAD of their own
    (pagetables.ranges_in_ram): ``([(vaddr, paddr, size)], truncated)``."""
    if not paging_enabled(state.cr0, state.efer):
        return [], False
    return ranges_in_ram(*walk(read_phys, state.cr3, state.cr4, state.efer), slots, limit)
