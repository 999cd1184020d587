"""Guest RAM: page-aligned private anonymous mappings laid out around the x86 32-bit hole."""
import errno
import mmap
import os
from dataclasses import dataclass

from ..state import MemoryRegion

#: RAM below the hole ends here at the latest; the rest of RAM starts at 4 GiB.
LOW_RAM_TOP = 3 << 30
HIGH_RAM_BASE = 4 << 30


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


def load_file_slots(fileno: int, slots: list[tuple[int, int, int, int]], chunk: int = 64 << 20) -> GuestMemory:
    """Fresh RAM filled from a file now (same slot tuples as ``map_file_slots``): slower to start
    than a mapping, but the guest's first touch of each page costs no copy-on-write fault. Holes in
    a sparse file are skipped (SEEK_DATA/SEEK_HOLE), their RAM stays zero."""
    memory = GuestMemory.anonymous(sum(size for _slot, _gpa, size, _off in slots))
    for region, (_slot, _gpa, size, offset) in zip(memory.regions, slots):
        view = memoryview(region.buffer)
        for start, end in _data_runs(fileno, offset, offset + size):
            pos = start
            while pos < end:
                n = os.preadv(fileno, [view[pos - offset:min(end, pos + chunk) - offset]], pos)
                if n <= 0:
                    raise OSError(errno.EIO, f"short read at file offset {pos:#x}")
                pos += n
        view.release()
    return memory


def _data_runs(fileno: int, start: int, end: int):
    """(start, end) file ranges holding data within [start, end); all of it if the file system
    cannot tell holes."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fileno, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:           # only a hole remains
                return
            yield pos, end
            return
        if data >= end:
            return
        hole = min(os.lseek(fileno, data, os.SEEK_HOLE), end)
        yield data, hole
        pos = hole
