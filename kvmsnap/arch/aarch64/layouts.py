"""aarch64 layouts: the Linux arm64 core-dump structs and kvmsnap's note of KVM one-reg values.

``elf_prstatus`` and ``user_fpsimd_state`` are as in ``<linux/elfcore.h>`` and
``arch/arm64/include/uapi/asm/ptrace.h`` (QEMU's ``target/arm/arch_dump.c`` writes the same).
``KVM_REG_*`` is the one-reg id encoding of ``arch/arm64/include/uapi/asm/kvm.h``.
"""
from construct import Array, Bytes, Int16ul, Int32ul, Int64ul, Rebuild, Struct, len_, this

from kvmsnap.formats.elf import linux_elf_prstatus

# struct user_pt_regs: x0..x30, sp, pc, pstate
USER_PT_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")
user_pt_regs = Struct(*[name / Int64ul for name in USER_PT_REGS])

elf_prstatus = linux_elf_prstatus(user_pt_regs)

# struct user_fpsimd_state (NT_PRFPREG): 32 128-bit V registers, FPSR, FPCR.
user_fpsimd_state = Struct(
    "vregs" / Array(32, Bytes(16)),
    "fpsr" / Int32ul,
    "fpcr" / Int32ul,
    "__reserved" / Array(2, Int32ul),
)

# struct user_hwdebug_state (NT_ARM_HW_BREAK, NT_ARM_HW_WATCH)
user_hwdebug_state = Struct(
    "dbg_info" / Int32ul,
    "pad" / Int32ul,
    "dbg_regs" / Array(16, Struct("addr" / Int64ul, "ctrl" / Int32ul, "pad" / Int32ul)),
)

# struct user_sve_header (NT_ARM_SVE, NT_ARM_SSVE)
user_sve_header = Struct(
    "size" / Int32ul, "max_size" / Int32ul, "vl" / Int16ul, "max_vl" / Int16ul,
    "flags" / Int16ul, "__reserved" / Int16ul,
)

SVE_PT_REGS_SVE = 1                # user_sve_header.flags: the payload is SVE's (else FPSIMD's)
SVE_VQ_BYTES = 16                  # a vector-length quantum: 128 bits


def sve_layout(vq: int) -> dict[str, int]:
    """Offsets in an NT_ARM_SVE note in SVE format (``arch/arm64/include/uapi/asm/ptrace.h``,
    SVE_PT_SVE_*) for vector length ``vq`` quanta: 32 Z registers of 16·vq bytes from 16, then
    16 P registers and FFR of 2·vq bytes, then FPSR and FPCR (u32) at the next 16-byte boundary."""
    z = user_sve_header.sizeof()
    p = z + 32 * vq * SVE_VQ_BYTES
    ffr = p + 16 * 2 * vq
    fpsr = -(-(ffr + 2 * vq) // SVE_VQ_BYTES) * SVE_VQ_BYTES
    return dict(z=z, p=p, ffr=ffr, fpsr=fpsr, fpcr=fpsr + 4, size=-(-(fpsr + 8) // SVE_VQ_BYTES) * SVE_VQ_BYTES)


# ---------------------------------------------------------------------------------------------
# KVM one-reg ids (KVM_GET_REG_LIST): arch | size | coprocessor group | group-specific index.

KVM_REG_ARCH_MASK = 0xff00_0000_0000_0000
KVM_REG_ARM64 = 0x6000_0000_0000_0000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_MASK = 0x00f0_0000_0000_0000
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_CORE = 0x0010
KVM_REG_ARM_DEMUX = 0x0011
KVM_REG_ARM64_SYSREG = 0x0013
KVM_REG_ARM_FW = 0x0014
KVM_REG_ARM64_SVE = 0x0015
KVM_REG_ARM_FW_FEAT_BMAP = 0x0016
# ARM64_SYS_REG(op0, op1, CRn, CRm, op2) field positions
SYSREG_FIELDS = (("op0", 14, 0x3), ("op1", 11, 0x7), ("crn", 7, 0xf), ("crm", 3, 0xf),
                 ("op2", 0, 0x7))

KVM_VCPU_EVENTS_SIZE = 64          # struct kvm_vcpu_events (pending SError, external abort; reserved)

SIZES = {user_pt_regs: 272, elf_prstatus: 392, user_fpsimd_state: 528, user_hwdebug_state: 264,
         user_sve_header: 16}

# ---------------------------------------------------------------------------------------------
# kvmsnap's devices (the VMM's, not KVM's), as saved in their notes (docs/core-format.md)

#: The PL011 UART model (kvmsnap.vmm.pl011): its programmable registers, u32 each.
PL011_REGS = ("ibrd", "fbrd", "lcr_h", "cr", "ifls", "imsc", "dmacr", "ilpr", "rsr", "tx_ris")
Pl011State = Struct(*[name / Int32ul for name in PL011_REGS])

#: KVM_DEV_ARM_VGIC_GRP_* of the attributes kvmsnap saves (arch/arm64/include/uapi/asm/kvm.h).
VGIC_GROUPS = {1: "dist", 2: "cpu_regs", 5: "redist", 6: "cpu_sysregs", 7: "level_info"}
VGIC_V2, VGIC_V3 = 5, 7             # KVM_DEV_TYPE_ARM_VGIC_V2, _V3: VgicState.type
#: (name, offset, bits per INTID) of each vGIC register bank kvmsnap saves: in the distributor
#: from INTID 32 on; for INTIDs 0-31 in each redistributor's SGI frame (SGI_BASE past RD_base) on a
#: GICv3, in the distributor banked per vCPU on a GICv2. GICv2 only: its SPIs' target CPUs.
VGIC_BANKS = (("IGROUPR", 0x080, 1), ("ICFGR", 0xC00, 2), ("IPRIORITYR", 0x400, 8),
              ("ISPENDR", 0x200, 1), ("ISACTIVER", 0x300, 1), ("ISENABLER", 0x100, 1))
GICV2_BANKS = (("ITARGETSR", 0x800, 8),)
GICD_CTLR, GICD_IIDR, GICD_IROUTER, GICR_SGI_BASE = 0x0000, 0x0008, 0x6000, 0x1_0000
#: GICv2: the SGIs' pending bits by source vCPU (8 bits per SGI, 16 SGIs: 4 words, banked per vCPU).
GICD_SPENDSGIR, GICV2_SGIS = 0x0F20, 16
#: The GICv2 CPU interface's registers (offsets in its MMIO frame), in the order they are written back.
GICC_REGS = {"GICC_CTLR": 0x00, "GICC_PMR": 0x04, "GICC_BPR": 0x08, "GICC_ABPR": 0x1C,
             **{f"GICC_APR{n}": 0xD0 + 4 * n for n in range(4)}}
#: The GICv3 CPU interface's registers (op0, op1, CRn, CRm, op2), in the order they are written back:
#: SRE and CTLR first (they decide what the others mean), the active priorities last.
ICC_REGS = {"ICC_SRE_EL1": (3, 0, 12, 12, 5), "ICC_CTLR_EL1": (3, 0, 12, 12, 4),
            "ICC_IGRPEN0_EL1": (3, 0, 12, 12, 6), "ICC_IGRPEN1_EL1": (3, 0, 12, 12, 7),
            "ICC_PMR_EL1": (3, 0, 4, 6, 0), "ICC_BPR0_EL1": (3, 0, 12, 8, 3),
            "ICC_BPR1_EL1": (3, 0, 12, 12, 3),
            **{f"ICC_AP0R{n}_EL1": (3, 0, 12, 8, 4 + n) for n in range(4)},
            **{f"ICC_AP1R{n}_EL1": (3, 0, 12, 9, n) for n in range(4)}}


def sysreg_index(op0, op1, crn, crm, op2) -> int:
    """The low 16 bits of an ARM64_SYS_REG id (and of a vGIC CPU_SYSREGS attribute)."""
    return op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


#: The vGIC's saved registers (kvmsnap.arch.aarch64.vgic): each a KVM device attribute, in restore order.
vgic_reg = Struct(
    "group" / Int32ul,              # KVM_DEV_ARM_VGIC_GRP_*
    "size" / Int32ul,               # bytes of the value KVM reads and writes: 4 or 8
    "attr" / Int64ul,               # KVM_DEV_ARM_VGIC_GRP_* attribute (MPIDR or vCPU index; offset or encoding)
    "value" / Int64ul,
)
VgicState = Struct(
    "type" / Int32ul,               # KVM_DEV_TYPE_ARM_VGIC_V2 (5) or _V3 (7)
    "nr_irqs" / Int32ul,            # KVM_DEV_ARM_VGIC_GRP_NR_IRQS
    "nregs" / Rebuild(Int32ul, len_(this.regs)),
    "reserved" / Int32ul,
    "regs" / Array(this.nregs, vgic_reg),
)

# ---------------------------------------------------------------------------------------------
# kvmsnap's arm64 machine (QEMU virt's layout; docs/boot-protocol.md)
RAM_BASE = 0x4000_0000
GICD_BASE, GICD_SIZE = 0x0800_0000, 0x1_0000
GICR_BASE, GICR_STRIDE = 0x080A_0000, 0x2_0000      # per vCPU: RD_base and SGI_base frames
GICC_BASE = 0x0801_0000                             # GICv2 only: the CPU interface
UART_BASE, UART_SIZE, UART_SPI = 0x0900_0000, 0x1000, 1   # the PL011; its interrupt is SPI 1 (INTID 33)
