"""Guest memory in a core file: by guest-physical address, or by guest-virtual address through a
vCPU's page tables (x86-64, 4- and 5-level, large pages), or by process address in process cores.

kvmsnap cores use their memory slots; QEMU dumps their ``PT_LOAD`` ``p_paddr`` ranges (overlapping
and unaligned headers allowed: any segment holding an address has the same bytes); process cores
(gcore, kernel) have no physical memory, their ``p_vaddr`` ranges are the process's addresses.
"""
import os

from kvmsnap import corefile, pagewalk
from kvmsnap import notes as N
from kvmsnap.errors import InputError, KvmsnapError
from kvmsnap.formats import elf, x86

PAGE_SIZE = 4096
MAX_READ = 64 << 20


class MemoryAccessError(KvmsnapError, LookupError):
    """An address that is not mapped, or whose page the core file does not hold."""


class GuestMemory:
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
        physical = self.kind != "process"
        segments = self._physical if physical else self._virtual
        taken, out = [], []
        for s in segments:
            start = s.paddr if physical else s.vaddr
            pieces = [(start, start + s.memsz)]
            for lo, hi in taken:
                pieces = [p for a, b in pieces for p in ((a, min(b, lo)), (max(a, hi), b))
                          if p[0] < p[1]]
            taken.append((start, start + s.memsz))
            held = min(start + s.filesz, start + max(0, self._size - s.offset))
            out += [(a, b, s.offset + a - start, min(b, max(a, held))) for a, b in pieces]
        return sorted(out)

    def read(self, addr: int, length: int) -> bytes:
        """Bytes of the address space :meth:`extents` describes (physical, or process)."""
        if self.kind == "process":
            return self._read(self._virtual, addr, length, "address")
        return self._read(self._physical, addr, length, "guest-physical")

    def fileno(self) -> int:
        return self._file.fileno()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, segments, addr: int, length: int, what: str) -> bytes:
        """Bytes at ``addr`` from whichever segment of ``segments`` holds each part."""
        out = bytearray()
        while length > 0:
            seg = self._find(segments, addr)
            if seg is None:
                raise MemoryAccessError(f"{self.path}: {what} 0x{addr:x} is not in the core")
            start = seg.paddr if segments is self._physical else seg.vaddr
            in_file = start + seg.filesz - addr
            if in_file <= 0 or seg.offset + (addr - start) >= self._size:
                raise MemoryAccessError(f"{self.path}: {what} 0x{addr:x}: its page is not in "
                                        "the file (segment 0x{:x}+0x{:x}, 0x{:x} bytes in the "
                                        "file)".format(start, seg.memsz, seg.filesz))
            n = min(length, in_file, self._size - seg.offset - (addr - start))
            self._file.seek(seg.offset + addr - start)
            out += self._file.read(n)
            addr += n
            length -= n
        return bytes(out)

    def _find(self, segments, addr):
        physical = segments is self._physical
        for s in segments:
            start = s.paddr if physical else s.vaddr
            if start <= addr < start + s.memsz:
                return s
        return None

    def read_phys(self, addr: int, length: int) -> bytes:
        """Guest-physical bytes (MemoryAccessError if any byte is not in the core)."""
        _check_length(length)
        if self.kind == "process":
            raise InputError(f"{self.path}: a process core has no guest-physical memory "
                             "(use --virtual)")
        return self._read(self._physical, addr, length, "guest-physical")

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
            return self._read(self._virtual, vaddr, length, "address")
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
