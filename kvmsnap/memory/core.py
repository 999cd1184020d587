"""Guest memory in a core file: by guest-physical address, or by guest-virtual address through a
vCPU's page tables (x86-64, 4- and 5-level, large pages), or by process address in process cores.

kvmsnap cores use their memory slots; QEMU dumps their ``PT_LOAD`` ``p_paddr`` ranges (overlapping
and unaligned headers allowed: any segment holding an address has the same bytes); process cores
(gcore, kernel) have no physical memory, their ``p_vaddr`` ranges are the process's addresses.

A core may have up to 65534 program headers: they are sorted into extents once, and every look-up
is a bisection.  (Live guest RAM is :class:`kvmsnap.vmm.memory.GuestMemory`.)
"""
import bisect
import heapq
import os

from kvmsnap import corefile, pagewalk
from kvmsnap import notes as N
from kvmsnap.errors import InputError, KvmsnapError
from kvmsnap.formats import elf, x86

PAGE_SIZE = 4096
MAX_READ = 64 << 20


class MemoryAccessError(KvmsnapError, LookupError):
    """An address that is not mapped, or whose page the core file does not hold."""


class CoreMemory:
    """Reads one core's guest memory; ``kind`` is ``"kvmsnap"``, ``"guest"`` (QEMU and other
    machine dumps) or ``"process"``."""

    def __init__(self, path):
        image = corefile.parse_elf(path, strict=False)
        self.path = image.path
        self.machine = image.ehdr.e_machine
        self._paging = []             # per vCPU: (cr0, cr3, cr4, efer) or None
        first = image.notes[0] if image.notes else None
        if first is not None and (first.owner, first.type) == (N.OWNER_KVMSNAP, N.KVMSNAP_HEADER):
            core = corefile.read_core(path)
            self.kind = "kvmsnap"
            self._physical = [s for s in core.segments if s.physical]
            self._virtual = []
            for v in core.vcpus:
                s = corefile.parse_sregs(v.sregs, v.sregs2)
                self._paging.append((s.cr0, s.cr3, s.cr4, s.efer))
        elif any(n.owner == N.OWNER_QEMU for n in image.notes) or \
                any(s.paddr for s in image.loads):
            self.kind = "guest"
            self._physical, self._virtual = list(image.loads), []
            lma = x86.EFER_LMA if self.machine == elf.EM_X86_64 else 0   # QEMU: EM_X86_64 iff LMA
            for n in image.notes:
                if (n.owner, n.type) == (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE) \
                        and n.size >= x86.QEMUCPUSTATE_SIZE_V1_MIN:
                    st = x86.QEMUCPUState.parse(n.desc.ljust(x86.QEMUCPUState.sizeof(), b"\0"))
                    self._paging.append((st.cr[0], st.cr[3], st.cr[4], lma))
        else:
            self.kind = "process"
            self._physical, self._virtual = [], list(image.loads)
        self._file = open(self.path, "rb")
        self._size = os.fstat(self._file.fileno()).st_size
        self._extents = self._build_extents()
        self._starts = [x[0] for x in self._extents]

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def address_space(self) -> str:
        return "process" if self.kind == "process" else "physical"

    def extents(self) -> list[tuple[int, int, int, int]]:
        """The address space :meth:`read` serves, as sorted, non-overlapping
        ``(start, end, file offset of start, end of the bytes held in the file)``; where
        segments overlap (QEMU paging dumps) the first one in header order wins."""
        return [x[:4] for x in self._extents]

    def _build_extents(self) -> list[tuple[int, int, int, int, object]]:
        """:meth:`extents`, each with its segment: one sweep over the segment boundaries, with
        the segments covering the current point in a heap by header order."""
        physical = self.kind != "process"
        segments = self._physical if physical else self._virtual
        spans = sorted(((s.paddr if physical else s.vaddr), position, s)
                       for position, s in enumerate(segments) if s.memsz)
        points = sorted({p for start, _, s in spans for p in (start, start + s.memsz)})
        active: list[tuple[int, int, int, object]] = []   # (position, start, end, segment)
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
        result = []
        for a, b, offset, start, seg in out:
            held = min(start + seg.filesz, start + max(0, self._size - seg.offset))
            result.append((a, b, offset, min(b, max(a, held)), seg))
        return result

    def read(self, addr: int, length: int) -> bytes:
        """Bytes of the address space :meth:`extents` describes (physical, or process)."""
        return self._read(addr, length, "address" if self.kind == "process" else "guest-physical")

    def fileno(self) -> int:
        return self._file.fileno()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, addr: int, length: int, what: str) -> bytes:
        """Bytes at ``addr`` from whichever extent holds each part."""
        out = bytearray()
        while length > 0:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0 or addr >= self._extents[i][1]:
                raise MemoryAccessError(f"{self.path}: {what} 0x{addr:x} is not in the core")
            start, _, offset, held, seg = self._extents[i]
            if addr >= held:
                begin = seg.paddr if self.kind != "process" else seg.vaddr
                raise MemoryAccessError(f"{self.path}: {what} 0x{addr:x}: its page is not in "
                                        f"the file (segment 0x{begin:x}+0x{seg.memsz:x}, "
                                        f"0x{seg.filesz:x} bytes in the file)")
            n = min(length, held - addr)
            self._file.seek(offset + addr - start)
            data = self._file.read(n)
            if len(data) != n:
                raise MemoryAccessError(f"{self.path}: {what} 0x{addr:x}: short read (file "
                                        "changed?)")
            out += data
            addr += n
            length -= n
        return bytes(out)

    def read_phys(self, addr: int, length: int) -> bytes:
        """Guest-physical bytes (MemoryAccessError if any byte is not in the core)."""
        _check_length(length)
        if self.kind == "process":
            raise InputError(f"{self.path}: a process core has no guest-physical memory "
                             "(use --virtual)")
        return self._read(addr, length, "guest-physical")

    def translate(self, vcpu: int, vaddr: int) -> int:
        """The guest-physical address of ``vaddr`` through vCPU ``vcpu``'s page tables."""
        if not 0 <= vcpu < len(self._paging):
            raise InputError(f"{self.path}: no paging state for vCPU {vcpu} "
                             f"({len(self._paging)} known)")
        cr0, cr3, cr4, efer = self._paging[vcpu]
        if not cr0 & x86.CR0_PG:
            return vaddr                     # paging off: linear = physical
        if not pagewalk.paging_enabled(cr0, efer):
            raise InputError(f"{self.path}: vCPU {vcpu} uses 32-bit paging; only IA-32e "
                             "(4- and 5-level) page tables are walked")
        try:
            return pagewalk.translate(self.read_phys, cr3, cr4, efer, vaddr)
        except pagewalk.TranslationError as e:
            raise MemoryAccessError(f"{self.path}: vCPU {vcpu}: guest-virtual {e}") from None

    def read_virt(self, vcpu: int, vaddr: int, length: int) -> bytes:
        """Guest-virtual bytes as vCPU ``vcpu`` sees them (process cores: process addresses)."""
        _check_length(length)
        if self.kind == "process":
            return self._read(vaddr, length, "address")
        if self.machine != elf.EM_X86_64 and self.machine != elf.EM_386:
            raise InputError(f"{self.path}: virtual addresses are translated for x86 guests "
                             "only")
        out = bytearray()
        while length > 0:
            n = min(length, PAGE_SIZE - vaddr % PAGE_SIZE)
            out += self.read_phys(self.translate(vcpu, vaddr), n)
            vaddr += n
            length -= n
        return bytes(out)


def _check_length(length: int):
    if not 0 < length <= MAX_READ:
        raise InputError(f"length {length} out of range 1..{MAX_READ}")
