"""Booting x86 guests: ELF64 images in long mode (CPL0 or CPL3), Linux kernels with a command line
and initrd (an ELF vmlinux at its 32-bit PVH entry, a bzImage at its 64-bit entry with a zero page),
and flat binaries in real mode.

The entry state is documented in docs/boot-protocol.md; this module is its implementation.
"""
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kvmsnap.arch.x86_64 import acpi, bzimage, cpuid
from kvmsnap.arch.x86_64.host import offered_cpuid
from kvmsnap.arch.x86_64.mptable import MPTABLE_ADDR, mptable
from kvmsnap.arch.x86_64.layouts import (CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR,
                                         CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_PAE, EFER_LMA, EFER_LME,
                                         EFER_NXE, EFER_SCE, RFLAGS_IOPL3,
                                         RFLAGS_RESERVED)
from kvmsnap.formats import elf
from kvmsnap.kvm import ffi, lib
from kvmsnap.vmm.loader import LoadError, load_elf, require_ram

# Boot data the loader keeps below 1 MiB (docs/boot-protocol.md)
GDT_ADDR, START_INFO_ADDR, MEMMAP_ADDR, MODLIST_ADDR, TSS_ADDR = 0x1000, 0x2000, 0x2100, 0x3000, 0x4000
ZERO_PAGE_ADDR = 0x7000
CMDLINE_ADDR, CMDLINE_MAX = 0x20000, 2048      # Linux's COMMAND_LINE_SIZE, with its NUL
PAGE_TABLES_ADDR, PAGE_TABLES_END = 0x10000, 0xA0000
ELF_LOAD_MIN = 0x100000
PVH_MAGIC = 0x336EC578

SEL_KCODE, SEL_KDATA, SEL_UDATA, SEL_UCODE, SEL_TSS, SEL_KCODE32 = 0x08, 0x10, 0x1B, 0x23, 0x28, 0x38
BOOT_CS, BOOT_DS = 0x10, 0x18    # the 64-bit boot protocol's selectors (a bzImage's GDT has them)
GDT = [
    0,
    0x00AF9A000000FFFF,   # 0x08 kernel code, 64-bit
    0x00CF92000000FFFF,   # 0x10 kernel data
    0x00CFF2000000FFFF,   # 0x18 user data, DPL3
    0x00AFFA000000FFFF,   # 0x20 user code, 64-bit, DPL3
]                         # 0x28: the 64-bit TSS (two entries), then
GDT_CODE32 = 0x00CF9A000000FFFF   # 0x38 kernel code, 32-bit (the PVH entry)
GDT_SIZE = (len(GDT) + 3) * 8
IO_BITMAP_OFFSET = 104
#: TSS with a full I/O permission bitmap (all ports allowed) and its 0xff terminator byte.
TSS_LIMIT = IO_BITMAP_OFFSET + 8192


KVMSNAP_BOOT_NOTE = ("kvmsnap", 1)
XEN_PVH_NOTE = ("Xen", 18)        # XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry's physical address
REALMODE_DEFAULT_ADDR = 0x7C00


@dataclass
class EntryState:
    """Where and how every vCPU starts."""
    mode: str           # "long", "pvh" (32-bit protected mode), "bzimage" (64-bit, the BSP alone) or "real"
    rip: int
    cpl: int = 0
    cs_base: int = 0
    image_end: int = 0  # end of the highest PT_LOAD (a bzImage: of the memory its kernel may use)
    setup: bzimage.SetupHeader | None = None    # a bzImage's setup header
    unpacked: bool = False                      # a PVH vmlinux taken out of a bzImage


LINUX_MODES = ("pvh", "bzimage")


@dataclass
class KernelArgs:
    """What a Linux kernel is given besides its image: a command line and an initrd.  Asked only
    for a Linux kernel: ``host_params()``, what this host needs before the user's ``cmdline``
    (kvmsnap.arch.x86_64.assist); ``prefer_vmlinux()``, whether to boot the vmlinux inside a
    bzImage at its PVH entry when it can be unpacked (on an emulating KVM the decompressor would
    take many minutes)."""
    cmdline: str = ""
    initrd: bytes | None = None
    host_params: Callable[[], str] = lambda: ""
    prefer_vmlinux: Callable[[], bool] = lambda: False


def load_image(data: bytes, name: str, memory, flat_addr: int | None = None) -> EntryState:
    """Copy an image into guest RAM and say how to enter it. ELF64 or bzImage by magic, else a flat
    binary."""
    if data[:4] == elf.ELFMAG:
        return _load_elf(data, name, memory)
    if bzimage.is_bzimage(data):
        return _load_bzimage(data, name, memory)
    addr = REALMODE_DEFAULT_ADDR if flat_addr is None else flat_addr
    if not data:
        raise LoadError(f"{name}: empty image")
    if addr + len(data) > 0x100000 or addr < 0x500:
        raise LoadError(f"{name}: a real-mode flat binary must lie in 0x500-0xfffff (load address {addr:#x}, "
                        f"{len(data)} bytes)")
    require_ram(memory, name, addr, len(data))
    memory.write(addr, data)
    return EntryState("real", rip=addr & 0xFFFF, cs_base=addr & 0xF0000)


def _load_bzimage(data: bytes, name: str, memory) -> EntryState:
    """The protected-mode kernel at its preferred address, entered at its 64-bit entry."""
    try:
        setup = bzimage.parse(data)
    except bzimage.NotBootable as e:
        raise LoadError(f"{name}: {e}") from None
    load = setup.pref_address
    if load < ELF_LOAD_MIN or load % 4096:
        raise LoadError(f"{name}: preferred load address {load:#x} is not a page above 1 MiB")
    size = max(setup.init_size, len(setup.kernel))
    require_ram(memory, name, load, size)
    memory.write(load, setup.kernel)
    return EntryState("bzimage", rip=load + bzimage.ENTRY_64_OFFSET, image_end=load + size, setup=setup)


def _load_elf(data: bytes, name: str, memory) -> EntryState:
    ehdr, image_end, tables = load_elf(data, name, memory, elf.EM_X86_64, "x86-64", ELF_LOAD_MIN)
    notes = {}
    for table in tables:
        notes.update(_notes(table))
    boot, pvh = notes.get(KVMSNAP_BOOT_NOTE), notes.get(XEN_PVH_NOTE)
    if boot is not None and len(boot) >= 12:
        rip, cpl = struct.unpack_from("<QI", boot)
        if cpl not in (0, 3):
            raise LoadError(f"{name}: kvmsnap boot note asks for CPL {cpl} (0 or 3)")
        return EntryState("long", rip=rip, cpl=cpl, image_end=image_end)
    if pvh is not None and len(pvh) in (4, 8):
        return EntryState("pvh", rip=int.from_bytes(pvh, "little"), image_end=image_end)
    return EntryState("long", rip=ehdr.e_entry, cpl=0, image_end=image_end)


def _notes(table: bytes) -> dict[tuple[str, int], bytes]:
    """(owner, type) -> descriptor of the notes the loader reads, from one PT_NOTE segment."""
    found = {}
    try:
        for _, owner, n_type, _, desc in elf.iter_notes(io.BytesIO(table), len(table)):
            if (owner, n_type) in (KVMSNAP_BOOT_NOTE, XEN_PVH_NOTE):
                found[owner, n_type] = desc
    except elf.NoteError:
        pass
    return found


def write_boot_data(memory, entry: EntryState, kernel: KernelArgs) -> None:
    """GDT and TSS; the memory map and what the entry passes it in (PVH start info; a bzImage's
    zero page); for a long-mode or bzImage entry identity page tables (2 MiB pages); for a Linux
    kernel its command line and initrd."""
    gdt = list(GDT)
    if entry.mode == "bzimage":     # 64-bit code at BOOT_CS, data at BOOT_DS
        gdt[BOOT_CS // 8], gdt[BOOT_DS // 8] = GDT[SEL_KCODE // 8], GDT[SEL_KDATA // 8]
    tss_lo = (TSS_LIMIT & 0xFFFF) | (TSS_ADDR & 0xFFFFFF) << 16 | 0x89 << 40 | ((TSS_ADDR >> 24) & 0xFF) << 56
    memory.write(GDT_ADDR, struct.pack(f"<{len(gdt) + 3}Q", *gdt, tss_lo, TSS_ADDR >> 32, GDT_CODE32))
    # User-mode port I/O goes through the TSS I/O bitmap: some hosts' KVM drop IOPL at CPL3.
    tss = bytearray(TSS_LIMIT + 1)
    struct.pack_into("<H", tss, 102, IO_BITMAP_OFFSET)
    tss[TSS_LIMIT] = 0xFF
    memory.write(TSS_ADDR, bytes(tss))

    ram = [(max(s.gpa, ELF_LOAD_MIN), s.end - max(s.gpa, ELF_LOAD_MIN), 1) for s in memory.slots()]
    if entry.mode in LINUX_MODES:
        # Linux wants RAM below 640 KiB (its real-mode trampoline) and reserves all of the first MiB;
        # the ACPI tables and the MP table are in the reserved part.
        memmap = [(0, 0xA0000, 1), (acpi.ACPI_ADDR, ELF_LOAD_MIN - acpi.ACPI_ADDR, 2)] + ram
    else:   # the samples: below 1 MiB is reserved (boot data); RAM starts at 1 MiB
        memmap = [(0, ELF_LOAD_MIN, 2)] + ram
    initrd, cmdline = _kernel_args(memory, entry, kernel)
    rsdp = acpi.ACPI_ADDR if entry.mode in LINUX_MODES else 0
    if entry.mode == "bzimage":
        memory.write(ZERO_PAGE_ADDR, _zero_page(entry.setup, memmap, cmdline, initrd, rsdp))
    else:
        memory.write(MEMMAP_ADDR, b"".join(struct.pack("<QQII", a, s, t, 0) for a, s, t in memmap))
        if initrd:
            memory.write(MODLIST_ADDR, struct.pack("<QQQQ", *initrd, 0, 0))
        memory.write(START_INFO_ADDR, struct.pack("<IIIIQQQQII", PVH_MAGIC, 1, 0, 1 if initrd else 0,
                                                  MODLIST_ADDR, cmdline, rsdp, MEMMAP_ADDR, len(memmap), 0))
    if entry.mode in ("long", "bzimage"):
        _write_page_tables(memory)


def _kernel_args(memory, entry: EntryState, kernel: KernelArgs) -> tuple[tuple[int, int] | None, int]:
    """For a Linux kernel write the command line and the initrd (at the top of the RAM below the
    3 GiB hole, and below a bzImage's initrd_addr_max); return the initrd's (address, size) or None
    and the command line's address (0: none)."""
    if entry.mode not in LINUX_MODES:
        return None, 0
    text = f"{kernel.host_params()} {kernel.cmdline}".strip().encode()
    limit = min(CMDLINE_MAX, entry.setup.cmdline_size + 1) if entry.setup else CMDLINE_MAX
    if len(text) >= limit or b"\0" in text:
        raise LoadError(f"the kernel command line is {len(text)} bytes: at most {limit - 1}, "
                        "without NUL", setting="cmdline")
    memory.write(CMDLINE_ADDR, text + b"\0")
    if kernel.initrd is None:
        return None, CMDLINE_ADDR
    top = memory.slots()[0].end
    if entry.setup:
        top = min(top, entry.setup.initrd_addr_max + 1)
    start = (top - len(kernel.initrd)) & ~0xFFF
    if start < entry.image_end:
        raise LoadError(f"the kernel (up to {entry.image_end:#x}) and the initrd ({len(kernel.initrd)} "
                        f"bytes) do not fit below {top:#x} (the 3 GiB hole or the kernel's initrd "
                        "limit): give the guest more memory", setting="mem_size")
    memory.write(start, kernel.initrd)
    return (start, len(kernel.initrd)), CMDLINE_ADDR


def _zero_page(setup: bzimage.SetupHeader, memmap, cmdline: int, initrd, rsdp: int) -> bytes:
    """struct boot_params for the 64-bit boot protocol: the image's setup header with the loader's
    fields filled in, the RSDP's address, and the memory map as its e820 table."""
    page = bytearray(4096)
    struct.pack_into("<Q", page, 0x070, rsdp)           # acpi_rsdp_addr
    page[bzimage.SETUP_HEADER_START:bzimage.SETUP_HEADER_START + len(setup.header)] = setup.header
    page[0x210] = 0xFF                                  # type_of_loader: not a registered one
    struct.pack_into("<I", page, 0x228, cmdline)        # cmd_line_ptr
    if initrd:
        struct.pack_into("<II", page, 0x218, *initrd)  # ramdisk_image, ramdisk_size
    page[0x1E8] = len(memmap)                           # e820_entries, then e820_table at 0x2d0
    for i, (addr, size, kind) in enumerate(memmap):
        struct.pack_into("<QQI", page, 0x2D0 + 20 * i, addr, size, kind)
    return bytes(page)


def _write_page_tables(memory) -> None:
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
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, GDT_SIZE - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr3 = PAGE_TABLES_ADDR
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE


def pvh_sregs(sregs) -> None:
    """The PVH entry (Xen's hvm start ABI): 32-bit protected mode, paging off, flat segments."""
    long_mode_sregs(sregs, 0)
    sregs.cs.selector, sregs.cs.db, sregs.cs.l = SEL_KCODE32, 1, 0
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
    sregs.cr0 = CR0_PE | CR0_ET


def bzimage_sregs(sregs) -> None:
    """The 64-bit boot protocol: long mode on the identity tables, CS = __BOOT_CS (0x10), the data
    segments __BOOT_DS (0x18)."""
    long_mode_sregs(sregs, 0)
    sregs.cs.selector = BOOT_CS
    for seg in (sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs):
        seg.selector = BOOT_DS


def real_mode_sregs(sregs, cs_base: int) -> None:
    """Point CS at ``cs_base`` in a reset ``struct kvm_sregs2`` (real mode otherwise unchanged)."""
    sregs.cs.base, sregs.cs.selector = cs_base, cs_base >> 4


def guest_xcr0(cpuid_table: bytes) -> int:
    """XCR0 for a long-mode entry: the guest-usable components the CPUID table offers."""
    return cpuid.supported_xcr0(cpuid_table) & cpuid.GUEST_XCR0_MASK


def boot(image: bytes, name: str, flat_addr: int | None, memory, vcpus, supported_cpuid: bytes,
         kernel: KernelArgs = KernelArgs()) -> EntryState:
    """Load ``image`` and put the vCPUs in its entry state: every vCPU for a long-mode image, the
    BSP alone for a Linux kernel or a real-mode image (as on hardware, APs wait for INIT/SIPI in
    their reset state).  Returns the entry state."""
    inner = bzimage.embedded_vmlinux(image) if bzimage.is_bzimage(image) and kernel.prefer_vmlinux() else None
    entry = load_image(inner or image, name, memory, flat_addr)
    entry.unpacked = entry.mode == "pvh" and inner is not None
    if entry.mode not in LINUX_MODES and (kernel.cmdline or kernel.initrd is not None):
        raise LoadError(f"{name}: a command line and an initrd are for a Linux kernel (a bzImage, or an "
                        "ELF vmlinux with a PVH entry note); this image is neither")
    if entry.mode != "real":
        write_boot_data(memory, entry, kernel)
    if entry.mode in LINUX_MODES:
        memory.write(MPTABLE_ADDR, mptable(len(vcpus)))
        memory.write(acpi.ACPI_ADDR, acpi.tables(len(vcpus)))
    for vcpu in vcpus:
        vcpu.set_cpuid2(cpuid.for_vcpu(supported_cpuid, vcpu.index))
        if entry.mode != "long" and vcpu.index:
            continue
        sregs = ffi.new("struct kvm_sregs2 *")
        ffi.memmove(sregs, vcpu.get_sregs2(), ffi.sizeof(sregs[0]))
        regs = ffi.new("struct kvm_regs *")
        regs.rip = entry.rip
        regs.rflags = RFLAGS_RESERVED
        if entry.mode == "long":
            long_mode_sregs(sregs, entry.cpl)
            regs.rdi, regs.rsi = START_INFO_ADDR, vcpu.index
            if entry.cpl == 3:
                regs.rflags |= RFLAGS_IOPL3
        elif entry.mode == "pvh":
            pvh_sregs(sregs)
            regs.rbx = START_INFO_ADDR
        elif entry.mode == "bzimage":
            bzimage_sregs(sregs)
            regs.rsi = ZERO_PAGE_ADDR
        else:
            real_mode_sregs(sregs, entry.cs_base)
        vcpu.set_sregs2(bytes(ffi.buffer(sregs)))
        vcpu.set_regs(bytes(ffi.buffer(regs)))
        if entry.mode == "long":
            xcrs = ffi.new("struct kvm_xcrs *")
            xcrs.nr_xcrs = 1
            xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, guest_xcr0(supported_cpuid)
            vcpu.set_xcrs(bytes(ffi.buffer(xcrs)))
        vcpu.set_mp_state(lib.KVM_MP_STATE_RUNNABLE)
    return entry


def boot_machine(machine, image: bytes, name: str, flat_addr: int | None = None, cmdline: str = "",
                 initrd: bytes | None = None) -> list[str]:
    """:func:`boot` on ``machine``; a Linux kernel gets ``cmdline`` and ``initrd``, after the
    parameters an emulating KVM needs. Returns notes for the user: what was added, and why."""
    kernel = KernelArgs(cmdline, initrd)
    if machine.assist:
        kernel.host_params, kernel.prefer_vmlinux = machine.assist.kernel_params, machine.assist.needed
    entry = boot(image, name, flat_addr, machine.memory, machine.vcpus, offered_cpuid(machine.kvm), kernel)
    if entry.mode not in LINUX_MODES or not (added := kernel.host_params()):
        return []
    notes = [f"this host's KVM emulates guest kernel mode: the kernel command line starts with "
             f"\"{added}\" (instructions its emulator cannot run), and kvmsnap completes int3, "
             "fwait and system calls (docs/kernel-mode-assist.md)"]
    if entry.unpacked:
        notes.append(f"{name}: booting the vmlinux inside this bzImage at its PVH entry (its "
                     "decompressor would run emulated for many minutes)")
    return notes
