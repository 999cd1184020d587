"""aarch64 layouts: the Linux arm64 core-dump structs and kvmsnap's note of KVM one-reg values.

``elf_prstatus`` and ``user_fpsimd_state`` are as in ``<linux/elfcore.h>`` and
``arch/arm64/include/uapi/asm/ptrace.h`` (QEMU's ``target/arm/arch_dump.c`` writes the same).
``KVM_REG_*`` is the one-reg id encoding of ``arch/arm64/include/uapi/asm/kvm.h``.
"""
from construct import Array, Bytes, Int16ul, Int32ul, Int64ul, Struct

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

SIZES = {user_pt_regs: 272, elf_prstatus: 392, user_fpsimd_state: 528, user_hwdebug_state: 264,
         user_sve_header: 16}
