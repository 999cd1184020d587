"""x86-64 layouts: ``<linux/kvm.h>`` structs, Linux core-dump structs, QEMU's CPU note, kvmsnap's UART.

Each layout is declared once, named and spelled as in C, and used to parse and to build; the sizes are
checked against SIZES and the compiled cffi module (``kvmsnap.kvm._kvm``) by tests/test_formats.py.
"""
from construct import (Adapter, Array, Bytes, Container, Int8ul, Int16ul, Int32ul, Int64sl,
                       Int64ul, Padded, Struct, Switch, this)

from kvmsnap.formats.elf import linux_elf_prstatus

# ---------------------------------------------------------------------------------------------
# <linux/kvm.h> (arch/x86/include/uapi/asm/kvm.h)

kvm_regs = Struct(
    "rax" / Int64ul, "rbx" / Int64ul, "rcx" / Int64ul, "rdx" / Int64ul,
    "rsi" / Int64ul, "rdi" / Int64ul, "rsp" / Int64ul, "rbp" / Int64ul,
    "r8" / Int64ul, "r9" / Int64ul, "r10" / Int64ul, "r11" / Int64ul,
    "r12" / Int64ul, "r13" / Int64ul, "r14" / Int64ul, "r15" / Int64ul,
    "rip" / Int64ul, "rflags" / Int64ul,
)

kvm_segment = Struct(
    "base" / Int64ul,
    "limit" / Int32ul,
    "selector" / Int16ul,
    "type" / Int8ul,
    "present" / Int8ul, "dpl" / Int8ul, "db" / Int8ul, "s" / Int8ul,
    "l" / Int8ul, "g" / Int8ul, "avl" / Int8ul,
    "unusable" / Int8ul,
    "padding" / Int8ul,
)

kvm_dtable = Struct(
    "base" / Int64ul,
    "limit" / Int16ul,
    "padding" / Array(3, Int16ul),
)

_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")

kvm_sregs = Struct(
    *[name / kvm_segment for name in _SEGMENTS],
    "gdt" / kvm_dtable, "idt" / kvm_dtable,
    "cr0" / Int64ul, "cr2" / Int64ul, "cr3" / Int64ul, "cr4" / Int64ul, "cr8" / Int64ul,
    "efer" / Int64ul, "apic_base" / Int64ul,
    "interrupt_bitmap" / Array(4, Int64ul),
)

kvm_sregs2 = Struct(
    *[name / kvm_segment for name in _SEGMENTS],
    "gdt" / kvm_dtable, "idt" / kvm_dtable,
    "cr0" / Int64ul, "cr2" / Int64ul, "cr3" / Int64ul, "cr4" / Int64ul, "cr8" / Int64ul,
    "efer" / Int64ul, "apic_base" / Int64ul,
    "flags" / Int64ul,
    "pdptrs" / Array(4, Int64ul),
)

kvm_xcr = Struct("xcr" / Int32ul, "reserved" / Int32ul, "value" / Int64ul)
KVM_MAX_XCRS = 16
kvm_xcrs = Struct(
    "nr_xcrs" / Int32ul,
    "flags" / Int32ul,
    "xcrs" / Array(KVM_MAX_XCRS, kvm_xcr),
    "padding" / Array(16, Int64ul),
)

KVM_APIC_REG_SIZE = 0x400
kvm_lapic_state = Struct("regs" / Bytes(KVM_APIC_REG_SIZE))

kvm_debugregs = Struct(
    "db" / Array(4, Int64ul),
    "dr6" / Int64ul,
    "dr7" / Int64ul,
    "flags" / Int64ul,
    "reserved" / Array(9, Int64ul),
)

kvm_msr_entry = Struct("index" / Int32ul, "reserved" / Int32ul, "data" / Int64ul)

kvm_cpuid_entry2 = Struct(
    "function" / Int32ul,
    "index" / Int32ul,
    "flags" / Int32ul,
    "eax" / Int32ul, "ebx" / Int32ul, "ecx" / Int32ul, "edx" / Int32ul,
    "padding" / Array(3, Int32ul),
)

kvm_mp_state = Struct("mp_state" / Int32ul)

kvm_vcpu_events = Struct(
    "exception" / Struct("injected" / Int8ul, "nr" / Int8ul, "has_error_code" / Int8ul,
                         "pending" / Int8ul, "error_code" / Int32ul),
    "interrupt" / Struct("injected" / Int8ul, "nr" / Int8ul, "soft" / Int8ul, "shadow" / Int8ul),
    "nmi" / Struct("injected" / Int8ul, "pending" / Int8ul, "masked" / Int8ul, "pad" / Int8ul),
    "sipi_vector" / Int32ul,
    "flags" / Int32ul,
    "smi" / Struct("smm" / Int8ul, "pending" / Int8ul, "smm_inside_nmi" / Int8ul,
                   "latched_init" / Int8ul),
    "triple_fault" / Struct("pending" / Int8ul),
    "reserved" / Bytes(26),
    "exception_has_payload" / Int8ul,
    "exception_payload" / Int64ul,
)

kvm_pic_state = Struct(
    "last_irr" / Int8ul, "irr" / Int8ul, "imr" / Int8ul, "isr" / Int8ul,
    "priority_add" / Int8ul, "irq_base" / Int8ul, "read_reg_select" / Int8ul, "poll" / Int8ul,
    "special_mask" / Int8ul, "init_state" / Int8ul, "auto_eoi" / Int8ul,
    "rotate_on_auto_eoi" / Int8ul, "special_fully_nested_mode" / Int8ul, "init4" / Int8ul,
    "elcr" / Int8ul, "elcr_mask" / Int8ul,
)

KVM_IOAPIC_NUM_PINS = 24


class Bitfields(Adapter):
    """An integer holding C bitfields, declared as (name, lowest bit, width) from bit 0 upwards,
    as the C compiler lays them out on little-endian machines.  (A BitStruct says the same ten
    times slower: it reads bits most-significant first, one by one.)"""

    def __init__(self, subcon, *fields):
        super().__init__(subcon)
        self.fields = fields

    def _decode(self, obj, context, path):
        return Container((name, obj >> low & ((1 << width) - 1)) for name, low, width in self.fields)

    def _encode(self, obj, context, path):
        return sum((obj[name] & ((1 << width) - 1)) << low for name, low, width in self.fields)


# One redirection-table entry: union kvm_ioapic_state.redirtbl[].fields.
kvm_ioapic_redirtbl_entry = Bitfields(
    Int64ul,
    ("vector", 0, 8), ("delivery_mode", 8, 3), ("dest_mode", 11, 1), ("delivery_status", 12, 1),
    ("polarity", 13, 1), ("remote_irr", 14, 1), ("trig_mode", 15, 1), ("mask", 16, 1),
    ("reserve", 17, 7), ("reserved", 24, 32), ("dest_id", 56, 8))

kvm_ioapic_state = Struct(
    "base_address" / Int64ul,
    "ioregsel" / Int32ul,
    "id" / Int32ul,
    "irr" / Int32ul,
    "pad" / Int32ul,
    "redirtbl" / Array(KVM_IOAPIC_NUM_PINS, kvm_ioapic_redirtbl_entry),
)

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
kvm_irqchip = Struct(
    "chip_id" / Int32ul,
    "pad" / Int32ul,
    "chip" / Padded(512, Switch(this.chip_id, {     # union { pic; ioapic; char dummy[512]; }
        KVM_IRQCHIP_PIC_MASTER: kvm_pic_state,
        KVM_IRQCHIP_PIC_SLAVE: kvm_pic_state,
        KVM_IRQCHIP_IOAPIC: kvm_ioapic_state,
    }, default=Bytes(512))),
)

kvm_pit_channel_state = Struct(
    "count" / Int32ul,
    "latched_count" / Int16ul,
    "count_latched" / Int8ul,
    "status_latched" / Int8ul,
    "status" / Int8ul,
    "read_state" / Int8ul,
    "write_state" / Int8ul,
    "write_latch" / Int8ul,
    "rw_mode" / Int8ul,
    "mode" / Int8ul,
    "bcd" / Int8ul,
    "gate" / Int8ul,
    "count_load_time" / Int64sl,
)

kvm_pit_state2 = Struct(
    "channels" / Array(3, kvm_pit_channel_state),
    "flags" / Int32ul,
    "reserved" / Array(9, Int32ul),
)

kvm_clock_data = Struct(
    "clock" / Int64ul,
    "flags" / Int32ul,
    "pad0" / Int32ul,
    "realtime" / Int64ul,
    "host_tsc" / Int64ul,
    "pad" / Array(4, Int32ul),
)

# ---------------------------------------------------------------------------------------------
# Linux core-dump structs for x86-64 (include/uapi/linux/elfcore.h, arch/x86/include/asm/user_64.h)

# struct user_regs_struct, in the kernel's order (also gdb's amd64_linux_gregset_reg_offset).
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
             "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
             "es", "fs", "gs")
user_regs_struct = Struct(*[name / Int64ul for name in USER_REGS])

elf_prstatus = linux_elf_prstatus(user_regs_struct)

# struct user_i387_struct / user_fpregs_struct: the FXSAVE image.
user_fpregs_struct = Struct(
    "cwd" / Int16ul,
    "swd" / Int16ul,
    "ftw" / Int16ul,
    "fop" / Int16ul,
    "rip" / Int64ul,
    "rdp" / Int64ul,
    "mxcsr" / Int32ul,
    "mxcr_mask" / Int32ul,
    "st_space" / Array(32, Int32ul),    # 8 registers, 16 bytes each
    "xmm_space" / Array(64, Int32ul),   # 16 registers, 16 bytes each
    "padding" / Array(24, Int32ul),     # bytes 416..511; Linux puts XCR0 at 464 in NT_X86_XSTATE
)

# XSAVE area, standard (non-compacted) format, as KVM_GET_XSAVE/KVM_GET_XSAVE2 return it.
XSAVE_LEGACY_SIZE = 512
XSAVE_HDR_OFFSET = 512        # xstate_bv (u64), xcomp_bv (u64), 48 reserved bytes
XSAVE_HDR_SIZE = 64
XSAVE_RESERVED_OFFSET = 416   # legacy-area bytes 416..511: reserved, and software's
XSAVE_XCR0_OFFSET = 464       # software-reserved bytes of the legacy area: Linux/gdb read XCR0 here
xsave_header = Struct("xstate_bv" / Int64ul, "xcomp_bv" / Int64ul, "reserved" / Bytes(48))
# NT_X86_XSAVE_LAYOUT (Linux 6.11, arch/x86/include/uapi/asm/elf.h): one per extended component.
x86_xfeat_component = Struct("type" / Int32ul, "size" / Int32ul, "offset" / Int32ul,
                             "flags" / Int32ul)

# XSAVE state components: bit -> (name, standard-format offset, size) as on Intel CPUs (CPUID.0xD.i
# EBX/EAX).  Used when a vCPU's CPUID table lacks leaf 0xD sub-leaves.
XFEATURE_X87, XFEATURE_SSE, XFEATURE_AVX = 0, 1, 2
XFEATURES = {
    0: ("x87", 0, 160),
    1: ("sse", 160, 256),
    2: ("avx", 576, 256),
    3: ("bndregs", 960, 64),
    4: ("bndcsr", 1024, 64),
    5: ("opmask", 1088, 64),
    6: ("zmm_hi256", 1152, 512),
    7: ("hi16_zmm", 1664, 1024),
    9: ("pkru", 2688, 8),
    17: ("xtilecfg", 2752, 64),
    18: ("xtiledata", 2816, 8192),
}

# ---------------------------------------------------------------------------------------------
# QEMU's per-CPU note (owner "QEMU", type 0), target/i386/arch_dump.c, QEMUCPUSTATE_VERSION 1.

QEMUCPUSTATE_VERSION = 1
QEMUCPUSegment = Struct(
    "selector" / Int32ul,
    "limit" / Int32ul,
    "flags" / Int32ul,          # QEMU SegmentCache flags: descriptor bits 8..23 in place (DESC_*_MASK)
    "pad" / Int32ul,
    "base" / Int64ul,
)
QEMUCPUState = Struct(
    "version" / Int32ul,
    "size" / Int32ul,
    "rax" / Int64ul, "rbx" / Int64ul, "rcx" / Int64ul, "rdx" / Int64ul,
    "rsi" / Int64ul, "rdi" / Int64ul, "rsp" / Int64ul, "rbp" / Int64ul,
    "r8" / Int64ul, "r9" / Int64ul, "r10" / Int64ul, "r11" / Int64ul,
    "r12" / Int64ul, "r13" / Int64ul, "r14" / Int64ul, "r15" / Int64ul,
    "rip" / Int64ul, "rflags" / Int64ul,
    "cs" / QEMUCPUSegment, "ds" / QEMUCPUSegment, "es" / QEMUCPUSegment,
    "fs" / QEMUCPUSegment, "gs" / QEMUCPUSegment, "ss" / QEMUCPUSegment,
    "ldt" / QEMUCPUSegment, "tr" / QEMUCPUSegment, "gdt" / QEMUCPUSegment, "idt" / QEMUCPUSegment,
    "cr" / Array(5, Int64ul),
    "kernel_gs_base" / Int64ul,  # optional in QEMU: present when size >= 440
)
QEMUCPUSTATE_SIZE_V1_MIN = 432   # without kernel_gs_base


def qemu_segment_flags(seg) -> int:
    """QEMU's SegmentCache.flags from a parsed kvm_segment (as target/i386/kvm/kvm.c set_seg)."""
    return ((seg.type << 8) | (seg.s << 12) | (seg.dpl << 13)
            | ((1 if seg.present and not seg.unusable else 0) << 15)
            | (seg.avl << 20) | (seg.l << 21) | (seg.db << 22) | (seg.g << 23))


# ---------------------------------------------------------------------------------------------
# kvmsnap's 16550 UART model state (kvmsnap.vmm.uart.Uart.state_bytes()): one byte per register.

UartState = Struct(
    "dll" / Int8ul,   # divisor latch low
    "dlm" / Int8ul,   # divisor latch high
    "ier" / Int8ul,   # interrupt enable
    "iir" / Int8ul,   # interrupt identification
    "fcr" / Int8ul,   # FIFO control
    "lcr" / Int8ul,   # line control
    "mcr" / Int8ul,   # modem control
    "lsr" / Int8ul,   # line status
    "msr" / Int8ul,   # modem status
    "scr" / Int8ul,   # scratch
)

#: kvmsnap's MC146818 RTC / CMOS RAM (kvmsnap.vmm.cmos): the index register, then the 128 bytes.
CmosState = Struct(
    "index" / Int8ul,
    "ram" / Bytes(128),
)

#: kvmsnap's ACPI PM1a registers (kvmsnap.vmm.acpi_pm): what the guest wrote to enable and control.
AcpiPmState = Struct(
    "pm1_enable" / Int16ul,
    "pm1_control" / Int16ul,
)

#: kvmsnap's PCI configuration mechanism #1 (kvmsnap.vmm.pci): the address register at 0xcf8.
PciState = Struct(
    "address" / Int32ul,
)

# ---------------------------------------------------------------------------------------------
# Architectural bits (control registers, EFER, RFLAGS) used by boot, the core writer and paging.

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_LA57, CR4_OSXSAVE = 1 << 5, 1 << 9, 1 << 10, 1 << 12, 1 << 18
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
RFLAGS_RESERVED, RFLAGS_IOPL3 = 0x2, 0x3000

# Sizes from <linux/kvm.h> and the Linux core-dump ABI (tests/test_formats.py checks each layout
# against them, and the kvm_* ones against cffi).
SIZES = {
    kvm_regs: 144, kvm_segment: 24, kvm_dtable: 16, kvm_sregs: 312, kvm_sregs2: 320, kvm_xcrs: 392,
    kvm_lapic_state: 1024, kvm_debugregs: 128, kvm_msr_entry: 16, kvm_cpuid_entry2: 40,
    kvm_mp_state: 4, kvm_vcpu_events: 64, kvm_pic_state: 16, kvm_ioapic_state: 216, kvm_irqchip: 520,
    kvm_pit_channel_state: 24, kvm_pit_state2: 112, kvm_clock_data: 48,
    user_regs_struct: 216, elf_prstatus: 336, user_fpregs_struct: 512, xsave_header: 64,
    QEMUCPUSegment: 24, QEMUCPUState: 440, UartState: 10, CmosState: 129, PciState: 4, AcpiPmState: 4,
}
