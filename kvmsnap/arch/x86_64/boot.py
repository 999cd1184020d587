"""Guest image loaders: ELF64 images in long mode (CPL0 or CPL3) and flat binaries in real mode.

The entry state is documented in docs/boot-protocol.md; this module is its implementation.
"""
import struct
from dataclasses import dataclass

from . import cpuid
from .errors import InputError

# Boot data the loader keeps below 1 MiB (docs/boot-protocol.md)
GDT_ADDR, START_INFO_ADDR, MEMMAP_ADDR, TSS_ADDR = 0x1000, 0x2000, 0x2100, 0x4000
PAGE_TABLES_ADDR, PAGE_TABLES_END = 0x10000, 0xA0000
ELF_LOAD_MIN = 0x100000
PVH_MAGIC = 0x336EC578

SEL_KCODE, SEL_KDATA, SEL_UDATA, SEL_UCODE, SEL_TSS = 0x08, 0x10, 0x1B, 0x23, 0x28
GDT = [
    0,
    0x00AF9A000000FFFF,   # 0x08 kernel code, 64-bit
    0x00CF92000000FFFF,   # 0x10 kernel data
    0x00CFF2000000FFFF,   # 0x18 user data, DPL3
    0x00AFFA000000FFFF,   # 0x20 user code, 64-bit, DPL3
]
IO_BITMAP_OFFSET = 104
#: TSS with a full I/O permission bitmap (all ports allowed) and its 0xff terminator byte.
TSS_LIMIT = IO_BITMAP_OFFSET + 8192

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE = 1 << 5, 1 << 9, 1 << 10, 1 << 18
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
RFLAGS_RESERVED, RFLAGS_IOPL3 = 0x2, 0x3000

ELFMAG = b"\x7fELF"
EM_X86_64, ET_EXEC, PT_LOAD, PT_NOTE = 62, 2, 1, 4
KVMSNAP_BOOT_NOTE = (b"kvmsnap", 1)
REALMODE_DEFAULT_ADDR = 0x7C00


class LoadError(InputError):
    """The image cannot be loaded: bad format, wrong architecture, or too big for guest RAM."""


@dataclass
class EntryState:
    """Where and how every vCPU starts."""
    mode: str           # "long" or "real"
    rip: int
    cpl: int = 0
    cs_base: int = 0


def load_image(data: bytes, name: str, memory, flat_addr: int | None = None) -> EntryState:
    """Copy an image into guest RAM and say how to enter it. ELF64 by magic, else a flat binary."""
    if data[:4] == ELFMAG:
        return _load_elf(data, name, memory)
    addr = REALMODE_DEFAULT_ADDR if flat_addr is None else flat_addr
    if not data:
        raise LoadError(f"{name}: empty image")
    if addr + len(data) > 0x100000 or addr < 0x500:
        raise LoadError(f"{name}: a real-mode flat binary must lie in 0x500-0xfffff (load address {addr:#x}, "
                        f"{len(data)} bytes)")
    _require_ram(memory, name, addr, len(data))
    memory.write(addr, data)
    return EntryState("real", rip=addr & 0xFFFF, cs_base=addr & 0xF0000)


def _require_ram(memory, name: str, addr: int, size: int) -> None:
    if not memory.contains(addr, size):
        raise LoadError(f"{name}: needs guest RAM at {addr:#x}-{addr + size:#x}, but the guest has only "
                        f"{memory.top >> 20} MiB: use a larger --mem")


def _load_elf(data: bytes, name: str, memory) -> EntryState:
    if len(data) < 64:
        raise LoadError(f"{name}: truncated ELF header")
    ei_class, ei_data = data[4], data[5]
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if ei_class != 2 or ei_data != 1 or e_machine != EM_X86_64:
        raise LoadError(f"{name}: not an x86-64 ELF image (class {ei_class}, machine {e_machine}); "
                        "kvmsnap runs x86_64 guests")
    if e_type != ET_EXEC:
        raise LoadError(f"{name}: ELF type {e_type} is not an executable (ET_EXEC)")
    e_entry, e_phoff = struct.unpack_from("<QQ", data, 24)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_phentsize != 56 or e_phoff + e_phnum * 56 > len(data):
        raise LoadError(f"{name}: program header table at {e_phoff:#x} lies outside the file")
    entry = EntryState("long", rip=e_entry, cpl=0)
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIQQQQQ", data, e_phoff + i * 56)
        if p_offset + p_filesz > len(data) or p_filesz > p_memsz:
            raise LoadError(f"{name}: segment {i} at file offset {p_offset:#x} lies outside the file")
        if p_type == PT_LOAD and p_memsz:
            if p_paddr < ELF_LOAD_MIN:
                raise LoadError(f"{name}: segment {i} loads at {p_paddr:#x}, below 1 MiB (reserved for boot data)")
            _require_ram(memory, name, p_paddr, p_memsz)
            memory.write(p_paddr, data[p_offset:p_offset + p_filesz] + bytes(p_memsz - p_filesz))
        elif p_type == PT_NOTE:
            boot = _find_note(data[p_offset:p_offset + p_filesz], *KVMSNAP_BOOT_NOTE)
            if boot is not None and len(boot) >= 12:
                rip, cpl = struct.unpack_from("<QI", boot)
                if cpl not in (0, 3):
                    raise LoadError(f"{name}: kvmsnap boot note asks for CPL {cpl} (0 or 3)")
                entry = EntryState("long", rip=rip, cpl=cpl)
    return entry


def _find_note(notes: bytes, owner: bytes, ntype: int):
    off = 0
    while off + 12 <= len(notes):
        namesz, descsz, t = struct.unpack_from("<III", notes, off)
        name_off = off + 12
        desc_off = name_off + (namesz + 3 & ~3)
        end = desc_off + (descsz + 3 & ~3)
        if end > len(notes):
            return None
        if notes[name_off:name_off + namesz].rstrip(b"\0") == owner and t == ntype:
            return notes[desc_off:desc_off + descsz]
        off = end
    return None


def write_boot_data(memory) -> None:
    """GDT, TSS, PVH start info with the memory map, and identity page tables (2 MiB pages)."""
    tss_lo = (TSS_LIMIT & 0xFFFF) | (TSS_ADDR & 0xFFFFFF) << 16 | 0x89 << 40 | ((TSS_ADDR >> 24) & 0xFF) << 56
    memory.write(GDT_ADDR, struct.pack(f"<{len(GDT) + 2}Q", *GDT, tss_lo, TSS_ADDR >> 32))
    # User-mode port I/O goes through the TSS I/O bitmap: some hosts' KVM drop IOPL at CPL3.
    tss = bytearray(TSS_LIMIT + 1)
    struct.pack_into("<H", tss, 102, IO_BITMAP_OFFSET)
    tss[TSS_LIMIT] = 0xFF
    memory.write(TSS_ADDR, bytes(tss))

    # below 1 MiB: reserved (boot data); RAM starts at 1 MiB
    memmap = [(0, ELF_LOAD_MIN, 2)] + [(max(r.guest_phys_addr, ELF_LOAD_MIN),
                                        r.guest_phys_addr + r.size - max(r.guest_phys_addr, ELF_LOAD_MIN), 1)
                                       for r in memory.regions]
    memory.write(MEMMAP_ADDR, b"".join(struct.pack("<QQII", a, s, t, 0) for a, s, t in memmap))
    memory.write(START_INFO_ADDR, struct.pack("<IIIIQQQQII", PVH_MAGIC, 1, 0, 0, 0, 0, 0,
                                              MEMMAP_ADDR, len(memmap), 0))

    gib = max(4, -(-memory.top // (1 << 30)))
    if PAGE_TABLES_ADDR + (2 + gib) * 4096 > PAGE_TABLES_END:
        raise LoadError(f"guest-physical space of {gib} GiB is more than the boot page tables map")
    pml4, pdpt, pd = PAGE_TABLES_ADDR, PAGE_TABLES_ADDR + 0x1000, PAGE_TABLES_ADDR + 0x2000
    present_rw_user, large = 0x7, 0x80
    memory.write(pml4, struct.pack("<Q", pdpt | present_rw_user).ljust(4096, b"\0"))
    memory.write(pdpt, struct.pack(f"<{gib}Q", *(pd + i * 4096 | present_rw_user for i in range(gib))))
    memory.write(pd, struct.pack(f"<{gib * 512}Q", *((i << 21) | present_rw_user | large
                                                    for i in range(gib * 512))))


def long_mode_sregs(sregs, cpl: int) -> None:
    """Fill a cffi ``struct kvm_sregs2`` (from KVM_GET_SREGS2 after reset) for the long-mode entry."""
    code, data = (SEL_UCODE, SEL_UDATA) if cpl == 3 else (SEL_KCODE, SEL_KDATA)
    sregs.cs.base, sregs.cs.limit, sregs.cs.selector = 0, 0xFFFFFFFF, code
    sregs.cs.type, sregs.cs.present, sregs.cs.dpl, sregs.cs.db, sregs.cs.s, sregs.cs.l, sregs.cs.g = \
        11, 1, cpl, 0, 1, 1, 1
    for seg in (sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs):
        seg.base, seg.limit, seg.selector = 0, 0xFFFFFFFF, data
        seg.type, seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.unusable = 3, 1, cpl, 1, 1, 0, 1, 0
    sregs.tr.base, sregs.tr.limit, sregs.tr.selector = TSS_ADDR, TSS_LIMIT, SEL_TSS
    sregs.tr.type, sregs.tr.present, sregs.tr.s, sregs.tr.dpl, sregs.tr.g = 11, 1, 0, 0, 0
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, (len(GDT) + 2) * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr3 = PAGE_TABLES_ADDR
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE


def real_mode_sregs(sregs, cs_base: int) -> None:
    """Point CS at ``cs_base`` in a reset ``struct kvm_sregs2`` (real mode otherwise unchanged)."""
    sregs.cs.base, sregs.cs.selector = cs_base, cs_base >> 4


def guest_xcr0(cpuid_table: bytes) -> int:
    """XCR0 for a long-mode entry: the guest-usable components the CPUID table offers."""
    return cpuid.supported_xcr0(cpuid_table) & cpuid.GUEST_XCR0_MASK
