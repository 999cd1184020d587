"""The memory of an increment: its changed runs over its base's memory (itself a core's, or a chain
again).  Each extent reads from the newest layer that holds its addresses."""
from kvmsnap.memory import Extent, GuestMemory, Slot
from kvmsnap.memory.core import AddressReads, CoreMemory


class ChainMemory(AddressReads, GuestMemory):
    """``top`` (an increment's CoreMemory) over ``below``; ``Extent.backing`` is the layer read."""
    kind = "kvmsnap"
    address_space = "physical"

    def __init__(self, below: GuestMemory, top: CoreMemory):
        self.below, self.top = below, top
        self.path, self.machine, self._paging = top.path, top.machine, top._paging
        extents = [Extent(t.start, t.end, t.held, top, t.origin) for t in top.extents()]
        for e in below.extents():
            pos = e.start
            for t in top.extents_in(e.start, e.end):
                if t.start > pos:
                    extents.append(_piece(e, pos, t.start, below))
                pos = max(pos, t.end)
            if pos < e.end:
                extents.append(_piece(e, pos, e.end, below))
        super().__init__(top.path, extents)

    def slots(self) -> list[Slot]:
        return self.top.slots()

    def layers(self) -> list[CoreMemory]:
        """The cores this memory reads, the full core first, then each increment in order."""
        return self.below.layers() + [self.top]

    def _fetch(self, extent: Extent, addr: int, out: memoryview) -> None:
        extent.backing.read_into(addr, out)

    def data_runs(self, start: int, end: int):
        for extent in self.extents_in(start, end):
            lo, hi = max(start, extent.start), min(end, extent.held)
            if lo < hi:
                yield from extent.backing.data_runs(lo, hi)

    def _where(self) -> str:
        return "in the core"

    def _not_held(self, addr: int, extent: Extent) -> str:
        return f"{extent.backing.path}: {self.space} 0x{addr:x}: its page is not in the file"

    def close(self) -> None:
        self.below.close()
        self.top.close()


def _piece(extent: Extent, start: int, end: int, layer) -> Extent:
    return Extent(start, end, max(start, min(end, extent.held)), layer, extent.origin)
