"""Guest memory in one core file: by guest-physical address, or by guest-virtual address through a
vCPU's page tables (the core's architecture walks them), or by process address in process cores.

kvmsnap cores hold their memory slots; QEMU dumps their ``PT_LOAD`` ``p_paddr`` ranges (overlapping
and unaligned headers allowed: any segment holding an address has the same bytes); process cores
(gcore, kernel) have no physical memory, their ``p_vaddr`` ranges are the process's addresses.
A core may have up to 65534 program headers: they are swept into extents once, and every look-up
is a bisection.
"""
import heapq
import os

from kvmsnap import arch
from kvmsnap import notes as N
from kvmsnap.errors import InputError
from kvmsnap.formats.reader import ElfCore, Segment, parse_elf
from kvmsnap.memory import PAGE_SIZE, AddressError, Extent, GuestMemory, Slot, file_data_runs

MAX_READ = 64 << 20          # bytes read_phys/read_virt give at most


class AddressReads:
    """What ``kvmsnap mem`` reads, for a core's memory or a chain's: needs ``read``, ``path``,
    ``kind``, ``machine`` and ``_paging``."""

    def read_phys(self, addr: int, length: int) -> bytes:
        """Guest-physical bytes (AddressError if any byte is not in the core)."""
        _check_length(length)
        if self.kind == "process":
            raise InputError(f"{self.path}: a process core has no guest-physical memory, only "
                             "process (virtual) addresses")
        return self.read(addr, length)

    def translate(self, vcpu: int, vaddr: int) -> int:
        """The guest-physical address of ``vaddr`` through vCPU ``vcpu``'s page tables."""
        if not 0 <= vcpu < len(self._paging):
            raise InputError(f"{self.path}: no paging state for vCPU {vcpu} "
                             f"({len(self._paging)} known)")
        paging = arch.for_machine(self.machine).paging
        try:
            return paging.virtual_to_physical(self.read, self._paging[vcpu], vaddr)
        except paging.PageWalkError as e:
            raise InputError(f"{self.path}: vCPU {vcpu}: {e}") from None
        except LookupError as e:
            raise AddressError(f"{self.path}: vCPU {vcpu}: guest-virtual {e}") from None

    def read_virt(self, vcpu: int, vaddr: int, length: int) -> bytes:
        """Guest-virtual bytes as vCPU ``vcpu`` sees them (process cores: process addresses)."""
        _check_length(length)
        if self.kind == "process":
            return self.read(vaddr, length)
        out = bytearray()
        while length > 0:
            n = min(length, PAGE_SIZE - vaddr % PAGE_SIZE)
            out += self.read(self.translate(vcpu, vaddr), n)
            vaddr += n
            length -= n
        return bytes(out)


class CoreMemory(AddressReads, GuestMemory):
    """One core's memory; ``kind`` is ``"kvmsnap"``, ``"guest"`` (QEMU and other machine dumps) or
    ``"process"``.  ``Extent.backing`` is the file offset of the extent's start."""

    def __init__(self, image: ElfCore, kind: str, *, slots: list[Slot] | None = None,
                 slot_segments: dict[int, Segment] | None = None, segments: list[Segment] | None = None,
                 paging: list | None = None):
        """``slots``: a kvmsnap core's memory slots, ``slot_segments`` the PT_LOAD of each (none in
        an increment); ``segments``: the PT_LOADs that hold memory (default: all)."""
        self.path = image.path
        self.kind = kind
        self.machine = image.ehdr.e_machine
        self._slots = sorted(slots or [], key=lambda s: s.gpa)
        self._slot_segments = slot_segments or {}
        self._paging = paging or []          # per vCPU: the architecture's paging state, or None
        if kind == "process":
            self.space = "address"
        segments = image.loads if segments is None else segments
        self._file = open(self.path, "rb")
        self._size = os.fstat(self._file.fileno()).st_size
        super().__init__(self.path, self._sweep(segments, physical=kind != "process"))

    @classmethod
    def open(cls, path) -> "CoreMemory":
        """The memory of any core: kvmsnap's (validated in full), machine dumps, process cores."""
        image = parse_elf(path)
        from kvmsnap.formats import kvmsnap as kvmsnap_format
        if kvmsnap_format.is_kvmsnap(image):
            return kvmsnap_format.with_base(kvmsnap_format.decode(image)).memory
        if any(n.owner == N.OWNER_QEMU for n in image.notes) or any(s.paddr for s in image.loads):
            return cls(image, "guest", paging=arch.foreign_paging(image))
        return cls(image, "process")

    def close(self):
        self._file.close()

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def slot_offset(self, slot: int) -> int:
        """File offset of a memory slot's bytes (page-aligned: the slot can be mmap()ed there)."""
        return self._slot_segments[slot].offset

    @property
    def address_space(self) -> str:
        return "process" if self.kind == "process" else "physical"

    def fileno(self) -> int:
        return self._file.fileno()

    def _sweep(self, segments, physical: bool) -> list[Extent]:
        """Non-overlapping extents of ``segments``; where they overlap (QEMU paging dumps) the
        first in header order wins.  One sweep over the boundaries, with the segments covering
        the current point in a heap by header order."""
        spans = sorted(((s.paddr if physical else s.vaddr), position, s)
                       for position, s in enumerate(segments) if s.memsz)
        points = sorted({p for start, _, s in spans for p in (start, start + s.memsz)})
        active: list[tuple[int, int, int, Segment]] = []   # (position, start, end, segment)
        out: list[list] = []
        next_span = 0
        for lo, hi in zip(points, points[1:]):
            while next_span < len(spans) and spans[next_span][0] == lo:
                start, position, seg = spans[next_span]
                heapq.heappush(active, (position, start, start + seg.memsz, seg))
                next_span += 1
            while active and active[0][2] <= lo:
                heapq.heappop(active)
            if not active:
                continue
            _, start, _, seg = active[0]
            if out and out[-1][4] is seg and out[-1][1] == lo:
                out[-1][1] = hi
            else:
                out.append([lo, hi, seg.offset + lo - start, start, seg])
        extents = []
        for a, b, offset, start, seg in out:
            held = min(start + seg.filesz, start + max(0, self._size - seg.offset))
            extents.append(Extent(a, b, min(b, max(a, held)), offset, seg))
        return extents

    def _fetch(self, extent: Extent, addr: int, out: memoryview) -> None:
        n = os.preadv(self._file.fileno(), [out], extent.backing + addr - extent.start)
        if n != len(out):
            raise AddressError(f"{self.path}: {self.space} 0x{addr:x}: short read (file changed?)")

    def _where(self) -> str:
        return "in the core"

    def _not_held(self, addr: int, extent: Extent) -> str:
        seg = extent.origin
        begin = seg.vaddr if self.kind == "process" else seg.paddr
        return (f"{self.path}: {self.space} 0x{addr:x}: its page is not in the file (segment "
                f"0x{begin:x}+0x{seg.memsz:x}, 0x{seg.filesz:x} bytes in the file)")

    def data_runs(self, start: int, end: int):
        """Holes of the sparse file are known zero (SEEK_DATA/SEEK_HOLE)."""
        for extent in self.extents_in(start, end):
            lo, hi = max(start, extent.start), min(end, extent.held)
            if lo < hi:
                base = extent.backing - extent.start
                for a, b in file_data_runs(self.fileno(), base + lo, base + hi):
                    yield a - base, b - base

    def layers(self) -> list["CoreMemory"]:
        """The cores this memory reads, base first: this one."""
        return [self]


def _check_length(length: int):
    if not 0 < length <= MAX_READ:
        raise InputError(f"length {length} out of range 1..{MAX_READ}")
