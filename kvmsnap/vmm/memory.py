"""Guest RAM: page-aligned private anonymous mappings laid out around the x86 32-bit hole."""
import mmap
from dataclasses import dataclass

from ..state import MemoryRegion

#: RAM below the hole ends here at the latest; the rest of RAM starts at 4 GiB.
LOW_RAM_TOP = 3 << 30
HIGH_RAM_BASE = 4 << 30
PAGE = 4096


def layout(mem_size: int) -> list[tuple[int, int]]:
    """(guest_phys_addr, size) of each RAM slot for ``mem_size`` bytes of RAM."""
    low = min(mem_size, LOW_RAM_TOP)
    slots = [(0, low)]
    if mem_size > LOW_RAM_TOP:
        slots.append((HIGH_RAM_BASE, mem_size - LOW_RAM_TOP))
    return slots


@dataclass
class GuestMemory:
    """All RAM slots of a VM, addressable by guest-physical address."""
    regions: list[MemoryRegion]

    @classmethod
    def anonymous(cls, mem_size: int) -> "GuestMemory":
        """Fresh zeroed RAM of ``mem_size`` bytes (a multiple of 4 KiB)."""
        regions = []
        for slot, (gpa, size) in enumerate(layout(mem_size)):
            buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
            regions.append(MemoryRegion(slot, gpa, size, buf))
        return cls(regions)

    @property
    def top(self) -> int:
        """One past the highest guest-physical RAM address."""
        return max(r.guest_phys_addr + r.size for r in self.regions)

    def _find(self, gpa: int, length: int) -> tuple[MemoryRegion, int]:
        for r in self.regions:
            if r.guest_phys_addr <= gpa and gpa + length <= r.guest_phys_addr + r.size:
                return r, gpa - r.guest_phys_addr
        raise ValueError(f"guest-physical range {gpa:#x}+{length:#x} is not in RAM")

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into RAM at ``gpa``."""
        region, off = self._find(gpa, len(data))
        region.buffer[off:off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        """``length`` bytes of RAM at ``gpa``."""
        region, off = self._find(gpa, length)
        return region.buffer[off:off + length]

    def contains(self, gpa: int, length: int) -> bool:
        """True when ``gpa``..``gpa+length`` lies inside one RAM slot."""
        try:
            self._find(gpa, length)
        except ValueError:
            return False
        return True


def map_file_slots(fileno: int, slots: list[tuple[int, int, int, int]]) -> GuestMemory:
    """RAM mapped copy-on-write from a file: (slot, guest_phys_addr, size, file offset) per slot.
    Pages are read on first touch and guest writes never reach the file (MAP_PRIVATE)."""
    regions = []
    for slot, gpa, size, offset in slots:
        buf = mmap.mmap(fileno, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        regions.append(MemoryRegion(slot, gpa, size, buf))
    return GuestMemory(regions)
