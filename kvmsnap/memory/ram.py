"""Live guest RAM: page-aligned private mappings, one per KVM memory slot, fresh (anonymous), mapped
copy-on-write from a core file, or read from one."""
import errno
import mmap
import os

from kvmsnap.kvm import ffi
from kvmsnap.memory import AddressError, Extent, GuestMemory, Slot, file_data_runs
from kvmsnap.memory.pagemap import touched_runs


class GuestRam(GuestMemory):
    """The RAM slots of a running VM; ``Extent.backing`` is ``(buffer, host address)``."""

    def __init__(self, slots: list[tuple[Slot, object]]):
        extents = []
        for slot, buffer in slots:
            address = int(ffi.cast("uintptr_t", ffi.from_buffer(buffer)))
            extents.append(Extent(slot.gpa, slot.end, slot.end, (buffer, address), slot))
        super().__init__("guest RAM", extents)

    @classmethod
    def anonymous(cls, layout: list[tuple[int, int]]) -> "GuestRam":
        """Fresh zeroed RAM: one slot per ``(guest_phys_addr, size)`` of ``layout``."""
        return cls([(Slot(i, gpa, size),
                     mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                               | getattr(mmap, "MAP_NORESERVE", 0)))
                    for i, (gpa, size) in enumerate(layout)])

    @classmethod
    def map_file(cls, fileno: int, slots: list[tuple[Slot, int]]) -> "GuestRam":
        """RAM mapped copy-on-write from a file, ``(slot, file offset)`` each: pages are read on
        first touch and guest writes never reach the file (MAP_PRIVATE)."""
        return cls([(slot, mmap.mmap(fileno, slot.size, mmap.MAP_PRIVATE,
                                     mmap.PROT_READ | mmap.PROT_WRITE, offset=offset))
                    for slot, offset in slots])

    @classmethod
    def load_file(cls, fileno: int, slots: list[tuple[Slot, int]], chunk: int = 64 << 20) -> "GuestRam":
        """Fresh RAM filled from a file now (same pairs as :meth:`map_file`): slower to start than
        a mapping, but the guest's first touch of a page costs no copy-on-write fault.  Holes of
        a sparse file are skipped (their RAM stays zero)."""
        ram = cls.anonymous([(slot.gpa, slot.size) for slot, _ in slots])
        for (buffer, _), (slot, offset) in zip(ram.buffers(), slots):
            view = memoryview(buffer)
            for start, end in file_data_runs(fileno, offset, offset + slot.size):
                pos = start
                while pos < end:
                    n = os.preadv(fileno, [view[pos - offset:min(end, pos + chunk) - offset]], pos)
                    if n <= 0:
                        raise OSError(errno.EIO, f"short read at file offset {pos:#x}")
                    pos += n
            view.release()
        return ram

    def slots(self) -> list[Slot]:
        return [e.origin for e in self._extents]

    def buffers(self) -> list[tuple[object, int]]:
        """``(buffer, host address)`` of each slot, in slot order."""
        return [e.backing for e in self._extents]

    @property
    def top(self) -> int:
        """One past the highest guest-physical RAM address."""
        return self._extents[-1].end

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into RAM at ``gpa`` (inside one slot)."""
        extent = self.extent_at(gpa)
        if extent is None or gpa + len(data) > extent.end:
            raise AddressError(f"guest-physical range {gpa:#x}+{len(data):#x} is not in RAM")
        buffer = extent.backing[0]
        buffer[gpa - extent.start:gpa - extent.start + len(data)] = data

    def _fetch(self, extent: Extent, addr: int, out: memoryview) -> None:
        offset = addr - extent.start
        out[:] = memoryview(extent.backing[0])[offset:offset + len(out)]

    def data_runs(self, start: int, end: int):
        """Pages of anonymous RAM never touched are zero without reading them (pagemap)."""
        for extent in self.extents_in(start, end):
            lo, hi = max(start, extent.start), min(end, extent.end)
            touched = touched_runs(extent.backing[1], extent.end - extent.start)
            if touched is None:
                yield lo, hi
                continue
            for a, b in touched:
                a, b = max(lo, extent.start + a), min(hi, extent.start + b)
                if a < b:
                    yield a, b

    def close(self) -> None:
        for buffer, _ in self.buffers():
            try:
                buffer.close()
            except BufferError:
                pass                    # a view is still alive (a caller's); the mapping goes with it

