"""aarch64 notes of a kvmsnap core, encoded and decoded side by side (docs/core-format.md).

Per vCPU, NT_PRSTATUS first (gdb attaches the register notes that follow it to that thread), then
NT_PRFPREG and NT_ARM_TLS for the debuggers (a LINUX note also tells lldb the core is Linux's),
then the private notes restore uses: KVMSNAP_ARM64_REGS (every register KVM_GET_REG_LIST names,
with its value: the standard notes' registers' one home) and KVMSNAP_ARM64_VCPU. VM-wide: the vGIC,
the PL011 UART and its unread input.
"""
from kvmsnap import notes as N
from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.arch.aarch64.paging import PagingState
from kvmsnap.arch.aarch64.state import VcpuState
from kvmsnap.formats import elf
from kvmsnap.formats.reader import CoreFormatError, payload

MAX_REGS = 1 << 14

#: Every vCPU's note set, in the order kvmsnap writes it.
VCPU_NOTES = ((N.OWNER_CORE, N.NT_PRSTATUS), (N.OWNER_CORE, N.NT_PRFPREG), (N.OWNER_LINUX, N.NT_ARM_TLS),
              (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS), (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_VCPU))
#: VM-wide device notes: type -> (payload layout, {device name: payload field}).
DEVICE_NOTES = {
    N.KVMSNAP_VGIC: (N.KvmsnapVgic, {"vgic": "vgic"}),
    N.KVMSNAP_PL011: (N.KvmsnapPl011, {"uart": "pl011"}),
    N.KVMSNAP_UART_INPUT: (N.KvmsnapUartInput, {"uart_input": "input"}),
}
OPTIONAL_DEVICE_NOTES = ()
DEVICE_SIZES = {"uart": arm64.Pl011State.sizeof()}


def _id(group: int, size_log2: int, index: int) -> int:
    return arm64.KVM_REG_ARM64 | size_log2 << arm64.KVM_REG_SIZE_SHIFT | group << arm64.KVM_REG_ARM_COPROC_SHIFT | index


def core_id(word: int, size_log2: int = 3) -> int:
    """The ONE_REG id of the ``struct kvm_regs`` field at u32 ``word`` (docs/core-format.md)."""
    return _id(arm64.KVM_REG_ARM_CORE, size_log2, word)


#: user_pt_regs' fields: x0-x30, sp, pc, pstate (kvm_regs starts with it: u32 word 2 * i).
PT_REG_IDS = {name: core_id(2 * i) for i, name in enumerate(arm64.USER_PT_REGS)}
V_IDS = [core_id(84 + 4 * n, 4) for n in range(32)]            # fp_regs.vregs[n], 128 bits
FPSR_ID, FPCR_ID = core_id(212, 2), core_id(213, 2)
Z_IDS = [_id(arm64.KVM_REG_ARM64_SVE, 8, n << 5) for n in range(32)]   # Z<n> slice 0, 2048 bits
P_IDS = [_id(arm64.KVM_REG_ARM64_SVE, 5, 0x400 | n << 5) for n in range(16)]   # P<n> slice 0, 256 bits
FFR_ID = _id(arm64.KVM_REG_ARM64_SVE, 5, 0x600)
SVE_VLS_ID = _id(arm64.KVM_REG_ARM64_SVE, 6, 0xffff)           # the vector lengths: a bitmap of VQs
ZCR_EL1_ID = _id(arm64.KVM_REG_ARM64_SYSREG, 3, arm64.sysreg_index(3, 0, 1, 2, 0))
TPIDR_EL0_ID = _id(arm64.KVM_REG_ARM64_SYSREG, 3, arm64.sysreg_index(3, 3, 13, 0, 2))
#: SCTLR_EL1, TCR_EL1, TTBR0_EL1, TTBR1_EL1: what stage-1 translation depends on (PagingState's order).
PAGING_IDS = [_id(arm64.KVM_REG_ARM64_SYSREG, 3, arm64.sysreg_index(*enc))
              for enc in ((3, 0, 1, 0, 0), (3, 0, 2, 0, 2), (3, 0, 2, 0, 0), (3, 0, 2, 0, 1))]


def paging_state(v: VcpuState) -> PagingState:
    """What vCPU ``v``'s stage-1 translation depends on (a register not saved reads 0: MMU off)."""
    regs = dict(v.regs)
    return PagingState(*(int.from_bytes(regs.get(reg_id, bytes(8)), "little") for reg_id in PAGING_IDS))


# -- writing --------------------------------------------------------------------------------------

def check_vcpu(i: int, v: VcpuState) -> None:
    """ValueError unless ``v`` holds what its notes need: sized registers, the core registers."""
    if len(v.regs) > MAX_REGS:
        raise ValueError(f"vCPU {i}: {len(v.regs)} registers, at most {MAX_REGS}")
    for reg_id, value in v.regs:
        if len(value) != N.kvm_reg_size(reg_id):
            raise ValueError(f"vCPU {i}: register {reg_id:#x} has {len(value)} bytes, its id says "
                             f"{N.kvm_reg_size(reg_id)}")
    missing = set(PT_REG_IDS.values()) - {reg_id for reg_id, _ in v.regs}
    if missing:
        raise ValueError(f"vCPU {i}: core register {min(missing):#x} is not in its register list")
    if len(v.events) != arm64.KVM_VCPU_EVENTS_SIZE:
        raise ValueError(f"vCPU {i} events: {len(v.events)} bytes, expected {arm64.KVM_VCPU_EVENTS_SIZE}")


def kernel_in_high_half(vcpus: list[VcpuState]) -> bool:
    """Whether a vCPU runs in the upper half of the address space (TTBR1), as Linux does: only
    such a guest's RAM is searched for VMCOREINFO."""
    return any(int.from_bytes(dict(v.regs)[PT_REG_IDS["pc"]], "little") >> 63 for v in vcpus)


def check_devices(devices: dict[str, bytes]) -> None:
    N.check_device_blobs(devices, DEVICE_SIZES)
    arm64.VgicState.parse(devices["vgic"])


def prstatus(index: int, regs: dict[int, bytes]) -> bytes:
    """NT_PRSTATUS for vCPU ``index`` from its registers (id -> value)."""
    tv = dict(tv_sec=0, tv_usec=0)
    return arm64.elf_prstatus.build(dict(
        pr_info=dict(si_signo=0, si_code=0, si_errno=0), pr_cursig=0, pr_sigpend=0, pr_sighold=0,
        pr_pid=index + 1, pr_ppid=0, pr_pgrp=0, pr_sid=0,
        pr_utime=tv, pr_stime=tv, pr_cutime=tv, pr_cstime=tv,
        pr_reg={name: int.from_bytes(regs[reg_id], "little") for name, reg_id in PT_REG_IDS.items()},
        pr_fpvalid=1))


def fpsimd(regs: dict[int, bytes]) -> bytes:
    """NT_PRFPREG (struct user_fpsimd_state): V0-V31, or with SVE the low 128 bits of Z0-Z31 (KVM
    lists no V registers then), FPSR and FPCR."""
    vregs = [regs[v][:16] if v in regs else regs.get(z, bytes(16))[:16] for v, z in zip(V_IDS, Z_IDS)]
    return arm64.user_fpsimd_state.build(dict(
        vregs=vregs, fpsr=int.from_bytes(regs.get(FPSR_ID, bytes(4)), "little"),
        fpcr=int.from_bytes(regs.get(FPCR_ID, bytes(4)), "little"), __reserved=[0, 0]))


def sve(regs: dict[int, bytes]) -> bytes | None:
    """NT_ARM_SVE in SVE format, as Linux writes it for a task using SVE, from KVM's Z, P and FFR
    registers (which KVM gives at the vCPU's largest vector length): at the vector length EL1 runs
    with (ZCR_EL1.LEN, at most the largest); None for a vCPU without SVE."""
    if Z_IDS[0] not in regs or SVE_VLS_ID not in regs:
        return None
    vls = int.from_bytes(regs[SVE_VLS_ID], "little")
    max_vq = vls.bit_length()
    vq = min((int.from_bytes(regs.get(ZCR_EL1_ID, bytes(8)), "little") & 0xF) + 1, max_vq)
    vl, at = vq * arm64.SVE_VQ_BYTES, arm64.sve_layout(vq)
    out = bytearray(at["size"])
    out[:at["z"]] = arm64.user_sve_header.build(dict(
        size=at["size"], max_size=arm64.sve_layout(max_vq)["size"], vl=vl, max_vl=max_vq * arm64.SVE_VQ_BYTES,
        flags=arm64.SVE_PT_REGS_SVE, __reserved=0))
    for n, z in enumerate(Z_IDS):
        out[at["z"] + vl * n:at["z"] + vl * (n + 1)] = regs[z][:vl]
    for n, p in enumerate(P_IDS):
        out[at["p"] + 2 * vq * n:at["p"] + 2 * vq * (n + 1)] = regs.get(p, bytes(32))[:2 * vq]
    out[at["ffr"]:at["ffr"] + 2 * vq] = regs.get(FFR_ID, bytes(32))[:2 * vq]
    out[at["fpsr"]:at["fpsr"] + 4] = regs.get(FPSR_ID, bytes(4))
    out[at["fpcr"]:at["fpcr"] + 4] = regs.get(FPCR_ID, bytes(4))
    return bytes(out)


def _features_words(features: list[int]) -> list[int]:
    words = [0] * 7
    for bit in features:
        words[bit // 32] |= 1 << bit % 32
    return words


def vcpu_notes(v: VcpuState) -> list[tuple[str, int, bytes]]:
    """``(owner, type, descriptor)`` of vCPU ``v``'s notes, in :data:`VCPU_NOTES` order, with
    NT_ARM_SVE after NT_ARM_TLS for a vCPU with SVE."""
    regs = dict(v.regs)
    sve_note = sve(regs)
    return [
        (N.OWNER_CORE, N.NT_PRSTATUS, prstatus(v.index, regs)),
        (N.OWNER_CORE, N.NT_PRFPREG, fpsimd(regs)),
        (N.OWNER_LINUX, N.NT_ARM_TLS, regs.get(TPIDR_EL0_ID, bytes(8))),     # TPIDR_EL0, as Linux cores have it
        *([(N.OWNER_LINUX, N.NT_ARM_SVE, sve_note)] if sve_note else []),
        (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS, N.KvmsnapArm64Regs.build(dict(
            reserved=0, regs=[dict(id=reg_id, value=value) for reg_id, value in v.regs]))),
        (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_VCPU, N.KvmsnapArm64Vcpu.build(dict(
            features=_features_words(v.features), mp_state=v.mp_state, reserved=0, events=v.events))),
    ]


def process_notes(vcpus: list[VcpuState]) -> list[tuple[str, int, bytes]]:
    """Notes a Linux arm64 core has once per process: none that kvmsnap writes."""
    return []


def device_notes(devices: dict[str, bytes]) -> list[tuple[str, int, bytes]]:
    """``(owner, type, descriptor)`` of the VM-wide device notes."""
    return [(N.OWNER_KVMSNAP, n_type, layout.build({field: devices[name] for name, field in fields.items()}))
            for n_type, (layout, fields) in DEVICE_NOTES.items()]


# -- reading --------------------------------------------------------------------------------------

def read_devices(path: str, vm_notes: dict) -> dict[str, bytes]:
    """The device blobs from the VM-wide notes (type -> Note), every one present."""
    devices = {}
    for n_type, (layout, fields) in DEVICE_NOTES.items():
        parsed = payload(path, vm_notes[n_type], layout)
        if n_type == N.KVMSNAP_UART_INPUT and parsed.length > N.UART_INPUT_LIMIT:
            raise CoreFormatError(path, vm_notes[n_type].desc_offset, f"KVMSNAP_UART_INPUT: {parsed.length}"
                                  f" bytes of input, at most {N.UART_INPUT_LIMIT}")
        devices.update({name: bytes(parsed[field]) for name, field in fields.items()})
    try:
        arm64.VgicState.parse(devices["vgic"])
    except Exception as e:          # construct's errors: a count larger than the bytes
        raise CoreFormatError(path, vm_notes[N.KVMSNAP_VGIC].desc_offset + 16,
                              f"KVMSNAP_VGIC: malformed vGIC state: {str(e).splitlines()[-1]}") from None
    return devices


def _features(words) -> list[int]:
    return [32 * w + bit for w, word in enumerate(words) for bit in range(32) if word >> bit & 1]


def read_vcpu(path: str, index: int, notes_of: dict) -> VcpuState:
    """vCPU ``index`` from its notes (``(owner, type) -> Note``, every one of VCPU_NOTES present)."""
    pr_note = notes_of[(N.OWNER_CORE, N.NT_PRSTATUS)]
    if pr_note.size < arm64.elf_prstatus.sizeof():
        raise CoreFormatError(path, pr_note.offset, f"vCPU {index}: NT_PRSTATUS is {pr_note.size} bytes, "
                                                    f"expected {arm64.elf_prstatus.sizeof()}")
    pr = arm64.elf_prstatus.parse(pr_note.desc)
    if pr.pr_pid != index + 1:
        raise CoreFormatError(path, pr_note.desc_offset + elf.offsets(arm64.elf_prstatus)["pr_pid"],
                              f"vCPU {index}: NT_PRSTATUS pr_pid {pr.pr_pid}, expected {index + 1}")
    regs_note = notes_of[(N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS)]
    regs = [(r.id, bytes(r.value)) for r in payload(path, regs_note, N.KvmsnapArm64Regs).regs]
    missing = set(PT_REG_IDS.values()) - {reg_id for reg_id, _ in regs}
    if missing:
        raise CoreFormatError(path, regs_note.offset, f"vCPU {index}: KVMSNAP_ARM64_REGS lacks core register "
                                                      f"{min(missing):#x}")
    extra = payload(path, notes_of[(N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_VCPU)], N.KvmsnapArm64Vcpu)
    return VcpuState(index=index, features=_features(extra.features), mp_state=extra.mp_state, regs=regs,
                     events=bytes(extra.events))
