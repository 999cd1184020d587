"""aarch64 vCPU state decoded: NT_PRSTATUS (x0–x30, sp, pc, PSTATE), NT_PRFPREG (v0–v31, FPSR,
FPCR), the NT_ARM_* notes, and KVM one-reg ids (size, core registers by name, system registers
as op0/op1/CRn/CRm/op2 and by name where known)."""
import struct

from kvmsnap.decode.bits import DecodeError, bitreg, field, parse, plain, wide
from kvmsnap.arch.aarch64 import layouts as arm64

PSTATE = {31: "N", 30: "Z", 29: "C", 28: "V", 25: "TCO", 24: "DIT", 23: "UAO", 22: "PAN",
          21: "SS", 20: "IL", 12: "SSBS", 9: "D", 8: "A", 7: "I", 6: "F"}
FPSR = {0: "IOC", 1: "DZC", 2: "OFC", 3: "UFC", 4: "IXC", 7: "IDC", 27: "QC", 28: "V", 29: "C",
        30: "Z", 31: "N"}
FPCR = {8: "IOE", 9: "DZE", 10: "OFE", 11: "UFE", 12: "IXE", 15: "IDE", 19: "FZ16", 24: "FZ",
        25: "DN", 26: "AHP"}
FP_ROUNDING = {0: "nearest", 1: "toward +inf", 2: "toward -inf", 3: "toward zero"}

# Core registers: word offset (u32 units) into struct kvm_regs -> name.
CORE_REGS = {2 * i: f"x{i}" for i in range(31)}
CORE_REGS.update({62: "sp", 64: "pc", 66: "pstate", 68: "sp_el1", 70: "elr_el1"})
CORE_REGS.update({72 + 2 * i: f"spsr[{name}]" for i, name in
                  enumerate(("EL1", "ABT", "UND", "IRQ", "FIQ"))})
CORE_REGS.update({84 + 4 * i: f"v{i}" for i in range(32)})
CORE_REGS.update({212: "fpsr", 213: "fpcr"})

# System registers: (op0, op1, CRn, CRm, op2) -> name.
SYSREGS = {
    (3, 0, 0, 0, 0): "MIDR_EL1", (3, 0, 0, 0, 5): "MPIDR_EL1", (3, 0, 0, 0, 6): "REVIDR_EL1",
    (3, 0, 0, 4, 0): "ID_AA64PFR0_EL1", (3, 0, 0, 4, 1): "ID_AA64PFR1_EL1",
    (3, 0, 0, 5, 0): "ID_AA64DFR0_EL1", (3, 0, 0, 5, 1): "ID_AA64DFR1_EL1",
    (3, 0, 0, 6, 0): "ID_AA64ISAR0_EL1", (3, 0, 0, 6, 1): "ID_AA64ISAR1_EL1",
    (3, 0, 0, 7, 0): "ID_AA64MMFR0_EL1", (3, 0, 0, 7, 1): "ID_AA64MMFR1_EL1",
    (3, 0, 0, 7, 2): "ID_AA64MMFR2_EL1",
    (3, 0, 1, 0, 0): "SCTLR_EL1", (3, 0, 1, 0, 1): "ACTLR_EL1", (3, 0, 1, 0, 2): "CPACR_EL1",
    (3, 0, 2, 0, 0): "TTBR0_EL1", (3, 0, 2, 0, 1): "TTBR1_EL1", (3, 0, 2, 0, 2): "TCR_EL1",
    (3, 0, 4, 0, 0): "SPSR_EL1", (3, 0, 4, 0, 1): "ELR_EL1", (3, 0, 4, 1, 0): "SP_EL0",
    (3, 0, 5, 1, 0): "AFSR0_EL1", (3, 0, 5, 1, 1): "AFSR1_EL1", (3, 0, 5, 2, 0): "ESR_EL1",
    (3, 0, 6, 0, 0): "FAR_EL1", (3, 0, 7, 4, 0): "PAR_EL1",
    (3, 0, 10, 2, 0): "MAIR_EL1", (3, 0, 10, 3, 0): "AMAIR_EL1", (3, 0, 12, 0, 0): "VBAR_EL1",
    (3, 0, 12, 1, 1): "DISR_EL1", (3, 0, 13, 0, 1): "CONTEXTIDR_EL1",
    (3, 0, 13, 0, 4): "TPIDR_EL1", (3, 0, 14, 1, 0): "CNTKCTL_EL1",
    (3, 2, 0, 0, 0): "CSSELR_EL1", (3, 3, 4, 2, 0): "NZCV", (3, 3, 4, 2, 1): "DAIF",
    (3, 3, 9, 12, 0): "PMCR_EL0", (3, 3, 13, 0, 2): "TPIDR_EL0", (3, 3, 13, 0, 3): "TPIDRRO_EL0",
    (3, 3, 14, 0, 0): "CNTFRQ_EL0",
    # KVM's timer ids: CNT and CVAL are deliberately swapped against the architecture's encoding
    (3, 3, 14, 3, 1): "KVM_REG_ARM_TIMER_CTL (CNTV_CTL_EL0)",
    (3, 3, 14, 3, 2): "KVM_REG_ARM_TIMER_CNT (CNTVCT_EL0)",
    (3, 3, 14, 0, 2): "KVM_REG_ARM_TIMER_CVAL (CNTV_CVAL_EL0)",
    (2, 0, 0, 2, 2): "MDSCR_EL1", (2, 0, 1, 0, 4): "MDRAR_EL1", (2, 4, 0, 7, 0): "DBGVCR32_EL2",
}
for _n in range(16):
    SYSREGS.update({(2, 0, 0, _n, 4): f"DBGBVR{_n}_EL1", (2, 0, 0, _n, 5): f"DBGBCR{_n}_EL1",
                    (2, 0, 0, _n, 6): f"DBGWVR{_n}_EL1", (2, 0, 0, _n, 7): f"DBGWCR{_n}_EL1"})
del _n
FW_REGS = {0: "KVM_REG_ARM_PSCI_VERSION", 1: "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_1",
           2: "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2", 3: "KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_3"}
FW_FEAT_BMAP = {0: "KVM_REG_ARM_STD_BMAP", 1: "KVM_REG_ARM_STD_HYP_BMAP",
                2: "KVM_REG_ARM_VENDOR_HYP_BMAP"}
GROUPS = {arm64.KVM_REG_ARM_CORE: "core", arm64.KVM_REG_ARM_DEMUX: "demux",
          arm64.KVM_REG_ARM64_SYSREG: "sysreg", arm64.KVM_REG_ARM_FW: "firmware",
          arm64.KVM_REG_ARM64_SVE: "sve", arm64.KVM_REG_ARM_FW_FEAT_BMAP: "firmware features"}


def pstate(value: int) -> dict:
    """PSTATE (SPSR layout): NZCV, DAIF and the other flags, exception level and stack pointer."""
    mode = value & 0x1f
    if mode & 0x10:
        where = dict(execution_state="AArch32", mode=mode)
    else:
        el = field(mode, 2, 2)
        where = dict(execution_state="AArch64", el=el, sp=f"SP_EL{el if mode & 1 else 0}",
                     mode=f"EL{el}{'h' if mode & 1 else 't'}")
    return bitreg(value, PSTATE, btype=field(value, 10, 2), **where)


def prstatus(desc: bytes) -> dict:
    """NT_PRSTATUS (aarch64): ``{"thread": …, "regs": {x0…x30, sp, pc, pstate}}``."""
    pr = parse(arm64.elf_prstatus, desc, "NT_PRSTATUS")
    regs = {name: pr.pr_reg[name] for name in arm64.USER_PT_REGS}
    thread = dict(pid=pr.pr_pid, ppid=pr.pr_ppid, pgrp=pr.pr_pgrp, sid=pr.pr_sid,
                  signal=pr.pr_info.si_signo, cursig=pr.pr_cursig, sigpend=pr.pr_sigpend,
                  sighold=pr.pr_sighold, fpvalid=pr.pr_fpvalid,
                  **{name: plain(pr[name]) for name in ("pr_utime", "pr_stime")})
    return dict(thread=thread, regs=regs)


def regs_section(regs: dict) -> dict:
    out = {name: regs[name] for name in arm64.USER_PT_REGS if name != "pstate"}
    out["pstate"] = pstate(regs["pstate"])
    return out


def fpsr(value: int) -> dict:
    return bitreg(value, FPSR)


def fpcr(value: int) -> dict:
    return bitreg(value, FPCR, rounding=FP_ROUNDING[field(value, 22, 2)],
                  len=field(value, 16, 3), stride=field(value, 20, 2))


def fpsimd(desc: bytes) -> dict:
    """NT_PRFPREG: the ``fpu`` section (v0–v31 as 128-bit hex strings, FPSR, FPCR)."""
    f = parse(arm64.user_fpsimd_state, desc, "NT_PRFPREG")
    return dict(v=[wide(v) for v in f.vregs], fpsr=fpsr(f.fpsr), fpcr=fpcr(f.fpcr))


def reg_id(reg: int) -> dict:
    """A KVM one-reg id in words: size, group, and the register it names."""
    group = field(reg, arm64.KVM_REG_ARM_COPROC_SHIFT, 12)
    out = {"id": f"0x{reg:016x}", "arch": "arm64" if reg & arm64.KVM_REG_ARCH_MASK ==
           arm64.KVM_REG_ARM64 else f"0x{reg >> 56:02x}",
           "size": 1 << field(reg, arm64.KVM_REG_SIZE_SHIFT, 4),
           "group": GROUPS.get(group, f"0x{group:x}"), "name": None}
    index = reg & 0xffff
    if group == arm64.KVM_REG_ARM_CORE:
        out.update(offset=index, name=CORE_REGS.get(index))
    elif group == arm64.KVM_REG_ARM64_SYSREG:
        enc = {name: field(reg, shift, mask.bit_length()) for name, shift, mask in
               arm64.SYSREG_FIELDS}
        key = tuple(enc.values())
        out.update(enc, name=SYSREGS.get(key, "S{}_{}_C{}_C{}_{}".format(*key)))
    elif group == arm64.KVM_REG_ARM_FW:
        out["name"] = FW_REGS.get(index)
    elif group == arm64.KVM_REG_ARM_FW_FEAT_BMAP:
        out["name"] = FW_FEAT_BMAP.get(index)
    elif group == arm64.KVM_REG_ARM_DEMUX:
        out["name"] = f"CCSIDR[{index & 0xff}]" if index >> 8 == 0 else None
    return out


def reg_name(reg: int) -> str:
    """A register in words for messages: ``MIDR_EL1 (op0=3 op1=0 CRn=0 CRm=0 op2=0)``, ``x0 (core)``,
    else its group and id."""
    d = reg_id(reg)
    if "op0" in d:
        return f"{d['name']} (op0={d['op0']} op1={d['op1']} CRn={d['crn']} CRm={d['crm']} op2={d['op2']})"
    return f"{d['name']} ({d['group']})" if d["name"] else f"{d['group']} register {d['id']}"


def one_regs(regs) -> list[dict]:
    """The ``sysregs`` section from a parsed KVMSNAP_ARM64_REGS: each id decoded, with its value
    (an int up to 64 bits, else a hex string)."""
    out = []
    for r in regs:
        entry = reg_id(r.id)
        raw = bytes(r.value)[:entry["size"]]
        entry["value"] = int.from_bytes(raw, "little") if len(raw) <= 8 else wide(raw)
        out.append(entry)
    return out


def _u64(desc: bytes, what: str, count: int = 1) -> tuple[int, ...]:
    if len(desc) < 8 * count:
        raise DecodeError(f"{what}: {len(desc)} bytes, expected at least {8 * count}")
    return struct.unpack_from(f"<{count}Q", desc)


def hwdebug(desc: bytes) -> dict:
    d = parse(arm64.user_hwdebug_state, desc, "NT_ARM_HW_BREAK/WATCH")
    slots = d.dbg_info & 0xff
    return dict(slots=slots, debug_arch=field(d.dbg_info, 8, 8),
                regs=[dict(addr=r.addr, ctrl=r.ctrl, enabled=r.ctrl & 1)
                      for r in d.dbg_regs[:slots]])


def sve(desc: bytes) -> dict:
    """NT_ARM_SVE: its header and, in SVE format, z0–z31, p0–p15 and FFR (hex strings of ``vl``
    and ``vl / 8`` bytes), with ``vg`` (the vector length in 64-bit granules, as gdb shows it)."""
    h = parse(arm64.user_sve_header, desc, "NT_ARM_SVE")
    out = dict(size=h.size, max_size=h.max_size, vl=h.vl, max_vl=h.max_vl, flags=h.flags,
               format="SVE" if h.flags & arm64.SVE_PT_REGS_SVE else "FPSIMD")
    if not h.flags & arm64.SVE_PT_REGS_SVE or not h.vl or h.vl % arm64.SVE_VQ_BYTES:
        return out
    vq = h.vl // arm64.SVE_VQ_BYTES
    at = arm64.sve_layout(vq)
    if len(desc) < at["size"]:
        raise DecodeError(f"NT_ARM_SVE: {len(desc)} bytes, its vector length {h.vl} needs {at['size']}")
    preg = 2 * vq
    out.update(vg=h.vl // 8, z=[wide(desc[at["z"] + h.vl * n:at["z"] + h.vl * (n + 1)]) for n in range(32)],
               p=[wide(desc[at["p"] + preg * n:at["p"] + preg * (n + 1)]) for n in range(16)],
               ffr=wide(desc[at["ffr"]:at["ffr"] + preg]))
    return out


def arm_note(desc: bytes, name: str) -> dict:
    """One NT_ARM_* note decoded (``name`` is its type name)."""
    if name == "NT_ARM_TLS":
        values = _u64(desc, name, min(2, max(1, len(desc) // 8)))
        return dict(tpidr_el0=values[0], **({"tpidr2_el0": values[1]} if len(values) > 1 else {}))
    if name in ("NT_ARM_HW_BREAK", "NT_ARM_HW_WATCH"):
        return hwdebug(desc)
    if name == "NT_ARM_SYSTEM_CALL":
        if len(desc) < 4:
            raise DecodeError(f"{name}: {len(desc)} bytes, expected at least 4")
        return dict(syscall=struct.unpack_from("<i", desc)[0])
    if name in ("NT_ARM_SVE", "NT_ARM_SSVE"):
        return sve(desc)
    if name == "NT_ARM_PAC_MASK":
        data_mask, insn_mask = _u64(desc, name, 2)
        return dict(data_mask=data_mask, insn_mask=insn_mask)
    if name in ("NT_ARM_TAGGED_ADDR_CTRL", "NT_ARM_PAC_ENABLED_KEYS"):
        return dict(value=_u64(desc, name)[0])
    return dict(size=len(desc))
