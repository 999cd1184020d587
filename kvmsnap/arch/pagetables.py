"""What the page-table walkers (``x86_64.paging``, ``aarch64.paging``) share: the bookkeeping of a
bounded walk, and the cut of the mappings it found into guest-virtual ranges of RAM, each of which
gets a PT_LOAD of its own in a core.

A walk is bounded because the guest controls its tables: every table visit charges its entries to
one budget, also when the same table is reached again through other entries (shared or recursive
tables would otherwise be revisited without end), and the leaf entries it records are capped; when
either runs out the walk stops and says it was truncated.
"""
import bisect
import collections

MAX_ENTRIES = 1 << 24         # entries examined per walk: 32768 visits of 512-entry tables
MAX_LEAVES = 1 << 22          # 4 Mi leaf entries (16 GiB of 4 KiB pages)
MAX_ALIASES = 8               # virtual ranges kept for one physical range


class PageWalkError(ValueError):
    """The walk cannot be done (a translation regime not supported)."""


class TranslationError(LookupError):
    """A guest-virtual address has no mapping."""


class Walk:
    """The mappings one walk found, ``[vaddr, paddr, size]`` in the order found, runs contiguous in
    both address spaces coalesced; ``truncated`` once the budget ran out."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_leaves: int = MAX_LEAVES):
        self.entries_left, self.leaves_left = max_entries, max_leaves
        self.truncated = False
        self.mappings: list[list[int]] = []

    def visit(self, entries: int) -> bool:
        """Charge a visit of a table of ``entries`` entries: False (truncated) past the budget."""
        if self.entries_left < entries:
            self.truncated = True
            return False
        self.entries_left -= entries
        return True

    def leaf(self, vaddr: int, paddr: int, size: int) -> bool:
        """Record a leaf mapping: False (truncated, nothing recorded) past the leaf budget."""
        if self.leaves_left <= 0:
            self.truncated = True
            return False
        self.leaves_left -= 1
        last = self.mappings[-1] if self.mappings else None
        if last and last[0] + last[2] == vaddr and last[1] + last[2] == paddr:
            last[2] += size
        else:
            self.mappings.append([vaddr, paddr, size])
        return True

    def result(self) -> tuple[list[tuple[int, int, int]], bool]:
        return [tuple(m) for m in self.mappings], self.truncated


def ranges_in_ram(mappings, truncated: bool, slots, limit: int):
    """The mappings ``[(vaddr, paddr, size)]`` of a walk that need a PT_LOAD of their own:
    ``([(vaddr, paddr, size)], truncated)``.

    Identity-mapped ranges are left out (the physical PT_LOADs have p_vaddr = p_paddr), and so
    are mappings of anything that is not RAM (MMIO); ranges are split at slot boundaries. A
    physical range mapped over and over gets MAX_ALIASES ranges only (Linux's x86 ESPFIX area maps
    one page thousands of times, below the kernel's text, which a debugger needs far more).
    ``truncated`` is True past ``limit`` ranges, or when the walk was.
    """
    slots = sorted((s.gpa, s.size) for s in slots)
    starts = [gpa for gpa, _ in slots]
    out, aliases = [], collections.Counter()
    for vaddr, paddr, size in mappings:
        if vaddr == paddr:
            continue
        aliases[paddr, size] += 1
        if aliases[paddr, size] > MAX_ALIASES:
            continue
        first = max(0, bisect.bisect_right(starts, paddr) - 1)
        for gpa, slot_size in slots[first:bisect.bisect_left(starts, paddr + size)]:
            start, end = max(paddr, gpa), min(paddr + size, gpa + slot_size)
            if start >= end:
                continue
            if len(out) == limit:
                return out, True
            out.append((vaddr + (start - paddr), start, end - start))
    return out, truncated
