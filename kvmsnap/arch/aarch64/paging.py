"""aarch64 stage-1 translation of the EL1&0 regime over guest-physical memory (VMSAv8-64): TTBR0_EL1
for the lower range, TTBR1_EL1 for the upper (Linux's kernel), 4, 16 and 64 KiB granules, blocks and
pages, output addresses up to 48 bits. Bounded as kvmsnap.arch.pagetables says.

``read_phys(addr, length) -> bytes`` reads guest-physical memory and raises ``LookupError`` when
the range is not RAM; tables it cannot read are skipped. Not modelled: 52-bit addresses (FEAT_LPA,
FEAT_LPA2), the top byte ignored (TBI: translate only untagged addresses), stage 2 (the guest's
physical addresses are the core's).
"""
from typing import NamedTuple

from kvmsnap.arch.pagetables import (MAX_ENTRIES, MAX_LEAVES, PageWalkError, TranslationError, Walk,
                                     ranges_in_ram)

SCTLR_M = 1 << 0                        # the stage-1 MMU is on
DESC_VALID, DESC_TABLE = 1 << 0, 1 << 1   # bits 1:0: 0b11 table or page, 0b01 block
OA_MASK = (1 << 48) - 1
#: TCR_EL1.TG0 and TG1 (their encodings differ) -> the granule's log2 size.
TG0_GRANULE = {0: 12, 1: 16, 2: 14}
TG1_GRANULE = {1: 14, 2: 12, 3: 16}
MAX_BLOCK_SHIFT = 30                    # blocks: 1 GiB and 2 MiB (4K), 32 MiB (16K), 512 MiB (64K)


class PagingState(NamedTuple):
    """What a vCPU's EL1&0 translation depends on."""
    sctlr: int
    tcr: int
    ttbr0: int
    ttbr1: int


class Regime(NamedTuple):
    """One half of the address space: its table, its size and its granule."""
    table: int          # the top-level table's guest-physical address
    va_bits: int        # 64 - TnSZ
    granule: int        # log2 of the granule: 12, 14 or 16
    start: int          # the first address it translates (0, or 2^64 - 2^va_bits)

    @property
    def stride(self) -> int:
        return self.granule - 3             # address bits resolved per level

    @property
    def levels(self) -> int:
        return -(-(self.va_bits - self.granule) // self.stride)


def _regime(state: PagingState, upper: bool) -> Regime | None:
    """The TTBR1 (``upper``) or TTBR0 regime, None where its walks are disabled (TCR_EL1.EPDn)."""
    tcr = state.tcr
    if tcr >> (23 if upper else 7) & 1:
        return None
    tsz = tcr >> (16 if upper else 0) & 0x3F
    tg = tcr >> (30 if upper else 14) & 3
    granule = (TG1_GRANULE if upper else TG0_GRANULE).get(tg)
    if granule is None:
        raise PageWalkError(f"TCR_EL1.TG{1 if upper else 0} = {tg} is reserved")
    va_bits = 64 - tsz
    if not 25 <= va_bits <= 48:
        raise PageWalkError(f"TCR_EL1.T{1 if upper else 0}SZ = {tsz}: only 25- to 48-bit address ranges "
                            "are walked")
    ttbr = state.ttbr1 if upper else state.ttbr0
    return Regime(ttbr & OA_MASK & ~1, va_bits, granule, (1 << 64) - (1 << va_bits) if upper else 0)


def regimes(state: PagingState) -> list[Regime]:
    """The enabled regimes, lower first; none with the MMU off."""
    if not state.sctlr & SCTLR_M:
        return []
    return [r for r in (_regime(state, False), _regime(state, True)) if r]


def _shift(regime: Regime, level: int) -> int:
    """The address bits below level ``level``'s index (levels count down to 1, the last)."""
    return regime.granule + (level - 1) * regime.stride


def _entries(regime: Regime, level: int) -> int:
    """How many entries a table at ``level`` has (the top one may be smaller than a granule)."""
    if level == regime.levels:
        return 1 << (regime.va_bits - _shift(regime, level))
    return 1 << regime.stride


def _leaf(desc: int, level: int, regime: Regime) -> int | None:
    """The output address of a block or page descriptor, None for a table descriptor."""
    shift = _shift(regime, level)
    if level > 1 and desc & DESC_TABLE:
        return None
    return desc & OA_MASK & ~((1 << shift) - 1)


def _valid(desc: int, level: int, regime: Regime) -> bool:
    """Bit 0 set, and a page at the last level (0b11) or a block where blocks may be (0b01)."""
    if not desc & DESC_VALID:
        return False
    if level == 1:
        return bool(desc & DESC_TABLE)
    return bool(desc & DESC_TABLE) or _shift(regime, level) <= MAX_BLOCK_SHIFT


def walk(read_phys, state: PagingState, *, max_entries: int = MAX_ENTRIES,
         max_leaves: int = MAX_LEAVES) -> tuple[list[tuple[int, int, int]], bool]:
    """Every mapping of both regimes: ``([(vaddr, paddr, size)], truncated)``, lower range first,
    each in address order, runs contiguous in both address spaces coalesced."""
    found = Walk(max_entries, max_leaves)

    def visit(regime, addr, level, base):
        count = _entries(regime, level)
        if not found.visit(count):
            return
        try:
            data = read_phys(addr, 8 * count)
        except LookupError:
            return
        if len(data) != 8 * count:
            return
        shift = _shift(regime, level)
        for i in range(count):
            desc = int.from_bytes(data[8 * i:8 * i + 8], "little")
            if not _valid(desc, level, regime):
                continue
            if found.truncated:
                return
            vaddr = base + (i << shift)
            paddr = _leaf(desc, level, regime)
            if paddr is not None:
                if not found.leaf(vaddr, paddr, 1 << shift):
                    return
            else:
                visit(regime, desc & OA_MASK & ~((1 << regime.granule) - 1), level - 1, vaddr)

    for regime in regimes(state):
        visit(regime, regime.table, regime.levels, regime.start)
    return found.result()


def _regime_of(state: PagingState, vaddr: int) -> Regime:
    for regime in regimes(state):
        if regime.start <= vaddr < regime.start + (1 << regime.va_bits):
            return regime
    raise TranslationError(f"0x{vaddr:x}: outside the ranges TTBR0_EL1 and TTBR1_EL1 translate")


def translate(read_phys, state: PagingState, vaddr: int) -> int:
    """The guest-physical address of ``vaddr``; :class:`TranslationError` if it is not mapped."""
    vaddr &= (1 << 64) - 1
    regime = _regime_of(state, vaddr)
    addr, offset = regime.table, vaddr - regime.start
    for level in range(regime.levels, 0, -1):
        shift = _shift(regime, level)
        at = addr + 8 * (offset >> shift & (_entries(regime, level) - 1))
        try:
            desc = int.from_bytes(read_phys(at, 8), "little")
        except LookupError as e:
            raise TranslationError(f"0x{vaddr:x}: the level {4 - level} table at 0x{addr:x} is not in RAM") from e
        if not _valid(desc, level, regime):
            raise TranslationError(f"0x{vaddr:x}: not mapped (level {4 - level} descriptor {desc:#x})")
        paddr = _leaf(desc, level, regime)
        if paddr is not None:
            return paddr | offset & ((1 << shift) - 1)
        addr = desc & OA_MASK & ~((1 << regime.granule) - 1)
    raise AssertionError("unreachable: the last level holds pages")


def virtual_to_physical(read_phys, state: PagingState, vaddr: int) -> int:
    """``vaddr`` translated as a vCPU in ``state`` does: itself with the MMU off."""
    if not state.sctlr & SCTLR_M:
        return vaddr
    return translate(read_phys, state, vaddr)


def from_notes(image) -> list[PagingState]:
    """QEMU's arm64 dumps carry no system registers: no paging state."""
    return []


def virtual_ranges(read_phys, state: PagingState, slots, limit: int):
    """Guest-virtual ranges the tables of ``state`` map onto RAM that need a PT_LOAD of their own
    (pagetables.ranges_in_ram): ``([(vaddr, paddr, size)], truncated)``."""
    return ranges_in_ram(*walk(read_phys, state), slots, limit)
