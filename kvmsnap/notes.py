"""ELF note owners, type numbers and names, and the payloads of kvmsnap's private notes.

Notes are identified by (owner, type) together: readelf and pyelftools label ET_CORE notes by type
alone, so kvmsnap's private types live in their own range (``0x4b53xxxx``, "KS") that collides with
no CORE or LINUX type.  Every private payload starts with ``u32 version; u32 size``:
``version = major << 16 | minor`` and ``size`` counts the whole payload (both header words included).
A reader refuses a newer major and ignores bytes past what it knows of a newer minor.

See docs/core-format.md for the byte-level description.
"""
from dataclasses import dataclass

from construct import (Aligned, Array, Bytes, Construct, Default, GreedyRange, Int16ul, Int32ul, Int64ul,
                       PascalString, Rebuild, Struct, len_, this)

from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.arch.x86_64 import layouts as x86

# ---------------------------------------------------------------------------------------------
# Owners

OWNER_CORE = "CORE"
OWNER_LINUX = "LINUX"
OWNER_QEMU = "QEMU"
OWNER_VMCOREINFO = "VMCOREINFO"
OWNER_GNU = "GNU"
OWNER_KVMSNAP = "KVMSNAP"

# ---------------------------------------------------------------------------------------------
# Standard types (include/uapi/linux/elf.h); CORE and LINUX share one number space in Linux.

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_FPREGSET = 2
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494c45
NT_PRXFPREG = 0x46e62b7f
NT_386_TLS = 0x200
NT_ARM_TLS = 0x401
NT_ARM_SVE = 0x405
NT_386_IOPERM = 0x201
NT_X86_XSTATE = 0x202
NT_X86_SHSTK = 0x204
NT_X86_XSAVE_LAYOUT = 0x205
NT_QEMU_CPUSTATE = 0          # owner "QEMU": QEMUCPUState
NT_VMCOREINFO = 0             # owner "VMCOREINFO": text

_LINUX_TYPES = {
    NT_PRSTATUS: "NT_PRSTATUS", NT_FPREGSET: "NT_FPREGSET", NT_PRPSINFO: "NT_PRPSINFO",
    NT_TASKSTRUCT: "NT_TASKSTRUCT", NT_AUXV: "NT_AUXV", NT_SIGINFO: "NT_SIGINFO", NT_FILE: "NT_FILE",
    NT_PRXFPREG: "NT_PRXFPREG", NT_386_TLS: "NT_386_TLS", NT_386_IOPERM: "NT_386_IOPERM",
    NT_X86_XSTATE: "NT_X86_XSTATE", 0x203: "NT_X86_CET", NT_X86_SHSTK: "NT_X86_SHSTK",
    NT_X86_XSAVE_LAYOUT: "NT_X86_XSAVE_LAYOUT",
    0x400: "NT_ARM_VFP", 0x401: "NT_ARM_TLS", 0x402: "NT_ARM_HW_BREAK", 0x403: "NT_ARM_HW_WATCH",
    0x404: "NT_ARM_SYSTEM_CALL", 0x405: "NT_ARM_SVE", 0x406: "NT_ARM_PAC_MASK",
    0x407: "NT_ARM_PACA_KEYS", 0x408: "NT_ARM_PACG_KEYS", 0x409: "NT_ARM_TAGGED_ADDR_CTRL",
    0x40a: "NT_ARM_PAC_ENABLED_KEYS", 0x40b: "NT_ARM_SSVE", 0x40c: "NT_ARM_ZA", 0x40d: "NT_ARM_ZT",
    0x900: "NT_RISCV_CSR", 0x901: "NT_RISCV_VECTOR",
}

# ---------------------------------------------------------------------------------------------
# kvmsnap private types: 0x4b53_00xx VM-wide, 0x4b53_01xx per vCPU.

KVMSNAP_HEADER = 0x4b530001
KVMSNAP_CONFIG = 0x4b530002
KVMSNAP_MEMORY_MAP = 0x4b530003
KVMSNAP_IRQCHIP = 0x4b530004
KVMSNAP_PIT = 0x4b530005
KVMSNAP_CLOCK = 0x4b530006
KVMSNAP_UART = 0x4b530007
KVMSNAP_DIGEST = 0x4b530008      # format 1.4: integrity digests, the last note, patched in after memory
KVMSNAP_BASE = 0x4b530009        # format 1.3: the base core of an increment
KVMSNAP_CMOS = 0x4b53000a        # format 1.1
KVMSNAP_PCI = 0x4b53000b         # format 1.1
KVMSNAP_ACPI_PM = 0x4b53000c     # format 1.1
KVMSNAP_UART_INPUT = 0x4b53000d  # format 1.2
KVMSNAP_VGIC = 0x4b53000e        # aarch64: the vGIC's registers
KVMSNAP_PL011 = 0x4b53000f       # aarch64: the PL011 UART's registers

KVMSNAP_SREGS = 0x4b530101
KVMSNAP_XSAVE = 0x4b530102
KVMSNAP_XCRS = 0x4b530103
KVMSNAP_LAPIC = 0x4b530104
KVMSNAP_MSRS = 0x4b530105
KVMSNAP_VCPU_EVENTS = 0x4b530106
KVMSNAP_DEBUGREGS = 0x4b530107
KVMSNAP_MP_STATE = 0x4b530108
KVMSNAP_CPUID = 0x4b530109
KVMSNAP_TSC_KHZ = 0x4b53010a

KVMSNAP_ARM64_REGS = 0x4b530201   # aarch64 vCPU: KVM_GET_REG_LIST ids with their values
KVMSNAP_ARM64_VCPU = 0x4b530202   # aarch64 vCPU: VCPU_INIT features, MP state, vCPU events

KVMSNAP_MAGIC = b"KVMSNAP\0"

NOTE_VERSION_MAJOR = 1
NOTE_VERSION_MINOR = 0
NOTE_VERSION = NOTE_VERSION_MAJOR << 16 | NOTE_VERSION_MINOR

KVMSNAP_SREGS_FLAG_SREGS2 = 1  # KVMSNAP_SREGS.flags bit 0: payload is kvm_sregs2, else kvm_sregs


def _private(*fields, size):
    """A private payload: ``u32 version; u32 size`` then ``fields``; ``size`` computes the total."""
    return Struct("version" / Rebuild(Int32ul, lambda this: NOTE_VERSION),
                  "size" / Rebuild(Int32ul, size),
                  *fields)


def _fixed(*fields):
    body = Struct(*fields)
    return _private(*fields, size=8 + body.sizeof())


def _utf8_len(text):
    return 2 + len(text.encode("utf-8"))


KvmsnapHeader = _private(
    "magic" / Bytes(8),
    "format_major" / Int16ul,
    "format_minor" / Int16ul,
    "arch" / Int32ul,
    "nr_vcpus" / Int32ul,
    "reserved" / Int32ul,
    "host_kernel" / PascalString(Int16ul, "utf8"),   # uname -r of the host that saved
    "producer" / PascalString(Int16ul, "utf8"),      # e.g. "kvmsnap 0.1.0"
    size=lambda this: 32 + _utf8_len(this.host_kernel) + _utf8_len(this.producer))
KVMSNAP_HEADER_MIN_SIZE = 36

KvmsnapConfig = _private(
    "mem_size" / Int64ul,
    "vcpus" / Int32ul,
    "reserved" / Int32ul,
    "guest" / PascalString(Int16ul, "utf8"),
    size=lambda this: 24 + _utf8_len(this.guest))

kvmsnap_memory_region = Struct(
    "slot" / Int32ul,
    "flags" / Int32ul,              # KVM memory-slot flags (0 today)
    "guest_phys_addr" / Int64ul,
    "memory_size" / Int64ul,
    "phdr_index" / Int32ul,         # PT_LOAD holding this slot's bytes; NO_PHDR in an increment
    "reserved" / Int32ul,
)
KvmsnapMemoryMap = _private(
    "nr_regions" / Rebuild(Int32ul, len_(this.regions)),
    "reserved" / Int32ul,
    "regions" / Array(this.nr_regions, kvmsnap_memory_region),
    size=lambda this: 16 + kvmsnap_memory_region.sizeof() * len(this.regions))

NO_PHDR = 0xffffffff                # phdr_index of a slot whose bytes are its base's but for the changes
BLAKE3_SIZE = 32
KvmsnapBase = _private(
    "base_size" / Int64ul,                          # st_size of the base core
    "state_blake3" / Bytes(BLAKE3_SIZE),            # BLAKE3 of the base's headers and notes
    "path" / PascalString(Int16ul, "utf8"),         # the base's absolute path when this was saved
    size=lambda this: 48 + _utf8_len(this.path))

KvmsnapDigest = _private(
    "chunk_shift" / Int32ul,                        # memory chunks of 1 << chunk_shift bytes
    "nr_notes" / Rebuild(Int32ul, lambda this: len(this.notes) // BLAKE3_SIZE),
    "memory_offset" / Int64ul,                      # file offset of the first chunk (page after the notes)
    "nr_chunks" / Rebuild(Int32ul, lambda this: len(this.chunks) // BLAKE3_SIZE),
    "reserved" / Int32ul,
    "headers" / Bytes(BLAKE3_SIZE),                 # of the ELF header and program headers
    "notes" / Bytes(this.nr_notes * BLAKE3_SIZE),   # of each note before this one, header to padding
    "chunks" / Bytes(this.nr_chunks * BLAKE3_SIZE),  # of each chunk from memory_offset to the file's end
    "own" / Bytes(BLAKE3_SIZE),                     # of this payload's bytes before this field
    size=lambda this: 96 + len(this.notes) + len(this.chunks))

KvmsnapIrqchip = _fixed(
    "pic_master" / Bytes(x86.kvm_irqchip.sizeof()),
    "pic_slave" / Bytes(x86.kvm_irqchip.sizeof()),
    "ioapic" / Bytes(x86.kvm_irqchip.sizeof()),
)
KvmsnapPit = _fixed("pit" / Bytes(x86.kvm_pit_state2.sizeof()))
KvmsnapClock = _fixed("clock" / Bytes(x86.kvm_clock_data.sizeof()))
KvmsnapUart = _fixed("uart" / Bytes(x86.UartState.sizeof()))
KvmsnapCmos = _fixed("cmos" / Bytes(x86.CmosState.sizeof()))
KvmsnapPci = _fixed("pci" / Bytes(x86.PciState.sizeof()))
KvmsnapAcpiPm = _fixed("acpi_pm" / Bytes(x86.AcpiPmState.sizeof()))
#: Most bytes of input kvmsnap's UART holds for the guest (KVMSNAP_UART_INPUT); more is dropped.
UART_INPUT_LIMIT = 1 << 16


def check_device_blobs(devices: dict[str, bytes], sizes: dict[str, int]) -> None:
    """ValueError unless each fixed-size device blob has its size and the UART's input its limit."""
    for name, size in sizes.items():
        if len(devices.get(name, b"")) != size:
            raise ValueError(f"{name}: {len(devices.get(name, b''))} bytes, expected {size}")
    if len(devices.get("uart_input", b"")) > UART_INPUT_LIMIT:
        raise ValueError(f"uart_input: {len(devices['uart_input'])} bytes, at most {UART_INPUT_LIMIT}")
KvmsnapUartInput = _private(
    "length" / Rebuild(Int32ul, len_(this.input)),
    "reserved" / Default(Int32ul, 0),
    "input" / Bytes(this.length),   # received bytes the guest has not read yet, oldest first
    size=lambda this: 16 + len(this.input))

KvmsnapSregs = _private(
    "flags" / Int32ul,
    "reserved" / Int32ul,
    "sregs" / Bytes(lambda this: x86.kvm_sregs2.sizeof() if this.flags & KVMSNAP_SREGS_FLAG_SREGS2
                    else x86.kvm_sregs.sizeof()),
    size=lambda this: 16 + len(this.sregs))
KvmsnapXsave = _private(
    "length" / Rebuild(Int32ul, len_(this.xsave)),
    "reserved" / Int32ul,
    "xsave" / Bytes(this.length),    # the whole KVM_GET_XSAVE2 area, unmodified
    size=lambda this: 16 + len(this.xsave))
KvmsnapXcrs = _fixed("xcrs" / Bytes(x86.kvm_xcrs.sizeof()))
KvmsnapLapic = _fixed("lapic" / Bytes(x86.kvm_lapic_state.sizeof()))
KvmsnapMsrs = _private(
    "nmsrs" / Rebuild(Int32ul, len_(this.entries)),
    "pad" / Int32ul,
    "entries" / Array(this.nmsrs, x86.kvm_msr_entry),
    size=lambda this: 16 + x86.kvm_msr_entry.sizeof() * len(this.entries))
KvmsnapVcpuEvents = _fixed("events" / Bytes(x86.kvm_vcpu_events.sizeof()))
KvmsnapDebugregs = _fixed("debugregs" / Bytes(x86.kvm_debugregs.sizeof()))
KvmsnapMpState = _fixed("mp_state" / Int32ul, "reserved" / Int32ul)
KvmsnapCpuid = _private(
    "nent" / Rebuild(Int32ul, lambda this: len(this.entries) // x86.kvm_cpuid_entry2.sizeof()),
    "padding" / Int32ul,
    "entries" / Bytes(this.nent * x86.kvm_cpuid_entry2.sizeof()),   # nent * kvm_cpuid_entry2
    size=lambda this: 16 + len(this.entries))
KvmsnapTscKhz = _fixed("tsc_khz" / Int32ul, "reserved" / Int32ul)


def kvm_reg_size(reg_id: int) -> int:
    """Bytes of a KVM one-reg value: ``1 << KVM_REG_SIZE(id)``."""
    return 1 << ((reg_id & arm64.KVM_REG_SIZE_MASK) >> arm64.KVM_REG_SIZE_SHIFT)


kvmsnap_arm64_reg = Struct(
    "id" / Int64ul,                                             # KVM one-reg id
    "value" / Aligned(8, Bytes(lambda this: kvm_reg_size(this.id))),   # little-endian, padded to 8
)
KvmsnapArm64Regs = _private(
    "nregs" / Rebuild(Int32ul, len_(this.regs)),
    "reserved" / Int32ul,
    "regs" / Array(this.nregs, kvmsnap_arm64_reg),
    size=lambda this: 16 + sum(8 + (kvm_reg_size(r["id"]) + 7) // 8 * 8 for r in this.regs))

KvmsnapArm64Vcpu = _fixed(
    "features" / Array(7, Int32ul),                 # struct kvm_vcpu_init.features it was initialized with
    "mp_state" / Int32ul,
    "reserved" / Int32ul,
    "events" / Bytes(arm64.KVM_VCPU_EVENTS_SIZE),   # struct kvm_vcpu_events
)
KvmsnapVgic = _private(
    "length" / Rebuild(Int32ul, len_(this.vgic)),
    "reserved" / Default(Int32ul, 0),
    "vgic" / Bytes(this.length),                    # arm64.VgicState
    size=lambda this: 16 + len(this.vgic))
KvmsnapPl011 = _fixed("pl011" / Bytes(arm64.Pl011State.sizeof()))

# Smallest payload each private type can have at version 1.0 (the reader's lower bound).
MIN_SIZES = {
    KVMSNAP_HEADER: KVMSNAP_HEADER_MIN_SIZE, KVMSNAP_CONFIG: 26, KVMSNAP_MEMORY_MAP: 16,
    KVMSNAP_SREGS: 16, KVMSNAP_XSAVE: 16, KVMSNAP_MSRS: 16, KVMSNAP_CPUID: 16, KVMSNAP_UART_INPUT: 16,
    KVMSNAP_BASE: 50, KVMSNAP_DIGEST: 96, KVMSNAP_VGIC: 16, KVMSNAP_ARM64_REGS: 16,
}


# ---------------------------------------------------------------------------------------------
# Registry

@dataclass(frozen=True)
class NoteType:
    owner: str
    type: int
    name: str
    payload: Construct | None   # layout of the descriptor, when kvmsnap decodes it
    scope: str | None           # "vm", "vcpu" for notes kvmsnap writes; None otherwise


def _entries():
    vm, vcpu = "vm", "vcpu"
    yield NoteType(OWNER_CORE, NT_PRSTATUS, "NT_PRSTATUS", x86.elf_prstatus, vcpu)
    yield NoteType(OWNER_CORE, NT_FPREGSET, "NT_FPREGSET", x86.user_fpregs_struct, vcpu)
    yield NoteType(OWNER_LINUX, NT_X86_XSTATE, "NT_X86_XSTATE", None, vcpu)
    yield NoteType(OWNER_LINUX, NT_X86_XSAVE_LAYOUT, "NT_X86_XSAVE_LAYOUT",
                   GreedyRange(x86.x86_xfeat_component), None)
    yield NoteType(OWNER_QEMU, NT_QEMU_CPUSTATE, "QEMU_CPUSTATE", x86.QEMUCPUState, vcpu)
    yield NoteType(OWNER_LINUX, NT_ARM_TLS, "NT_ARM_TLS", Int64ul, vcpu)
    yield NoteType(OWNER_VMCOREINFO, NT_VMCOREINFO, "VMCOREINFO", None, None)
    private = [
        (KVMSNAP_HEADER, "KVMSNAP_HEADER", KvmsnapHeader, vm),
        (KVMSNAP_CONFIG, "KVMSNAP_CONFIG", KvmsnapConfig, vm),
        (KVMSNAP_MEMORY_MAP, "KVMSNAP_MEMORY_MAP", KvmsnapMemoryMap, vm),
        (KVMSNAP_IRQCHIP, "KVMSNAP_IRQCHIP", KvmsnapIrqchip, vm),
        (KVMSNAP_PIT, "KVMSNAP_PIT", KvmsnapPit, vm),
        (KVMSNAP_CLOCK, "KVMSNAP_CLOCK", KvmsnapClock, vm),
        (KVMSNAP_UART, "KVMSNAP_UART", KvmsnapUart, vm),
        (KVMSNAP_CMOS, "KVMSNAP_CMOS", KvmsnapCmos, vm),
        (KVMSNAP_PCI, "KVMSNAP_PCI", KvmsnapPci, vm),
        (KVMSNAP_ACPI_PM, "KVMSNAP_ACPI_PM", KvmsnapAcpiPm, vm),
        (KVMSNAP_UART_INPUT, "KVMSNAP_UART_INPUT", KvmsnapUartInput, vm),
        (KVMSNAP_BASE, "KVMSNAP_BASE", KvmsnapBase, vm),
        (KVMSNAP_DIGEST, "KVMSNAP_DIGEST", KvmsnapDigest, vm),
        (KVMSNAP_SREGS, "KVMSNAP_SREGS", KvmsnapSregs, vcpu),
        (KVMSNAP_XSAVE, "KVMSNAP_XSAVE", KvmsnapXsave, vcpu),
        (KVMSNAP_XCRS, "KVMSNAP_XCRS", KvmsnapXcrs, vcpu),
        (KVMSNAP_LAPIC, "KVMSNAP_LAPIC", KvmsnapLapic, vcpu),
        (KVMSNAP_MSRS, "KVMSNAP_MSRS", KvmsnapMsrs, vcpu),
        (KVMSNAP_VCPU_EVENTS, "KVMSNAP_VCPU_EVENTS", KvmsnapVcpuEvents, vcpu),
        (KVMSNAP_DEBUGREGS, "KVMSNAP_DEBUGREGS", KvmsnapDebugregs, vcpu),
        (KVMSNAP_MP_STATE, "KVMSNAP_MP_STATE", KvmsnapMpState, vcpu),
        (KVMSNAP_CPUID, "KVMSNAP_CPUID", KvmsnapCpuid, vcpu),
        (KVMSNAP_TSC_KHZ, "KVMSNAP_TSC_KHZ", KvmsnapTscKhz, vcpu),
        (KVMSNAP_VGIC, "KVMSNAP_VGIC", KvmsnapVgic, vm),
        (KVMSNAP_PL011, "KVMSNAP_PL011", KvmsnapPl011, vm),
        (KVMSNAP_ARM64_REGS, "KVMSNAP_ARM64_REGS", KvmsnapArm64Regs, vcpu),
        (KVMSNAP_ARM64_VCPU, "KVMSNAP_ARM64_VCPU", KvmsnapArm64Vcpu, vcpu),
    ]
    for n_type, name, payload, scope in private:
        yield NoteType(OWNER_KVMSNAP, n_type, name, payload, scope)


REGISTRY: dict[tuple[str, int], NoteType] = {(e.owner, e.type): e for e in _entries()}

#: VM-wide notes every kvmsnap core has, whatever its architecture (which adds its own).
FORMAT_NOTES = (KVMSNAP_HEADER, KVMSNAP_CONFIG, KVMSNAP_MEMORY_MAP)


def lookup(owner: str, n_type: int) -> NoteType | None:
    """The registered note for (owner, type), or None."""
    return REGISTRY.get((owner, n_type))


def type_name(owner: str, n_type: int) -> str:
    """A name for (owner, type): registered name, the Linux name for CORE/LINUX, else hex."""
    entry = REGISTRY.get((owner, n_type))
    if entry is not None:
        return entry.name
    if owner in (OWNER_CORE, OWNER_LINUX) and n_type in _LINUX_TYPES:
        return _LINUX_TYPES[n_type]
    if owner == OWNER_GNU:
        return {1: "NT_GNU_ABI_TAG", 3: "NT_GNU_BUILD_ID", 5: "NT_GNU_PROPERTY_TYPE_0"}.get(
            n_type, f"0x{n_type:x}")
    return f"0x{n_type:x}"


def version_split(version: int) -> tuple[int, int]:
    """(major, minor) of a private payload's ``version`` word."""
    return version >> 16, version & 0xffff
