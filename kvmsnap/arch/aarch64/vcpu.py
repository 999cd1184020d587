"""An aarch64 vCPU's state through KVM: what it is initialized with, its save, restore and read-back
(docs/restore.md gives the order and its sources: QEMU ``target/arm/kvm.c``, Firecracker
``arch/aarch64/vcpu.rs``)."""
from dataclasses import dataclass

from kvmsnap.arch import RegisterRefused
from kvmsnap.arch.aarch64.decode import reg_name
from kvmsnap.arch.aarch64.layouts import sysreg_index
from kvmsnap.arch.aarch64.state import VcpuState
from kvmsnap.kvm import lib
from kvmsnap.kvm.aarch64 import core_reg_id



def sysreg_id(*encoding: int) -> int:
    """The ONE_REG id of the 64-bit system register (op0, op1, CRn, CRm, op2)."""
    return lib.KVM_REG_ARM64 | lib.KVM_REG_SIZE_U64 | lib.KVM_REG_ARM64_SYSREG | sysreg_index(*encoding)


PC = core_reg_id("regs", "pc")
MPIDR_EL1 = sysreg_id(3, 0, 0, 0, 5)


@dataclass(frozen=True)
class VcpuCaps:
    """What this host's KVM offers a vCPU: the KVM_ARM_VCPU_INIT target and features kvmsnap asks for
    (PSCI 0.2; SVE and pointer authentication where offered)."""
    target: int
    features: tuple[int, ...]

    @classmethod
    def of(cls, kvm, vm) -> "VcpuCaps":
        target, _ = vm.arm_preferred_target()
        features = [lib.KVM_ARM_VCPU_PSCI_0_2]
        if kvm.check_extension(lib.KVM_CAP_ARM_SVE):
            features.append(lib.KVM_ARM_VCPU_SVE)
        if kvm.check_extension(lib.KVM_CAP_ARM_PTRAUTH_ADDRESS) and \
                kvm.check_extension(lib.KVM_CAP_ARM_PTRAUTH_GENERIC):   # both or neither (api.rst)
            features += [lib.KVM_ARM_VCPU_PTRAUTH_ADDRESS, lib.KVM_ARM_VCPU_PTRAUTH_GENERIC]
        return cls(target, tuple(features))


def init(vcpu, target: int, features: list[int], sve_vls: bytes | None = None) -> None:
    """KVM_ARM_VCPU_INIT, then for SVE the vector lengths (``sve_vls``: a saved KVM_REG_ARM64_SVE_VLS;
    else those KVM offers) and KVM_ARM_VCPU_FINALIZE, before any other register is set."""
    vcpu.arm_vcpu_init(target, features)
    if lib.KVM_ARM_VCPU_SVE in features:
        if sve_vls is not None:
            vcpu.set_one_reg(lib.KVM_REG_ARM64_SVE_VLS, sve_vls)
        vcpu.arm_vcpu_finalize(lib.KVM_ARM_VCPU_SVE)


def save_state(vcpu, machine) -> VcpuState:
    """The vCPU's whole state; it must be out of KVM_RUN."""
    mp_state = vcpu.get_mp_state()
    regs = [(reg_id, vcpu.get_one_reg(reg_id)) for reg_id in vcpu.get_reg_list()]
    return VcpuState(index=vcpu.index, features=list(vcpu.init_features), mp_state=mp_state, regs=regs,
                     events=vcpu.get_vcpu_events())


def mpidr(vcpu) -> int:
    """The vCPU's MPIDR_EL1 (KVM gives vCPU i Aff0 = i % 16, Aff1 = i / 16)."""
    return int.from_bytes(vcpu.get_one_reg(MPIDR_EL1), "little")


def differs(reg_id: int, host: bytes, core: bytes) -> str:
    """A register whose host value is not the core's, in words (for refusals)."""
    return (f"{reg_name(reg_id)}: host value {int.from_bytes(host, 'little'):#x}, core has "
            f"{int.from_bytes(core, 'little'):#x}")


def where(vcpu) -> str:
    """'PC 0x…' for messages."""
    try:
        return f"PC {int.from_bytes(vcpu.get_one_reg(PC), 'little'):#x}"
    except OSError:
        return "an unknown PC"


#: Registers that move on by themselves: the virtual and physical counters (they read the count,
#: not what was set); and bits: the timers' CTL ISTATUS (bit 2, read-only: set once the compare
#: value is reached, which the restored count may already be past).
VOLATILE = {lib.KVM_REG_ARM_TIMER_CNT, lib.KVM_REG_ARM_PTIMER_CNT}
VOLATILE_BITS = {lib.KVM_REG_ARM_TIMER_CTL: 1 << 2, sysreg_id(3, 3, 14, 2, 1): 1 << 2}    # CNTV_CTL, CNTP_CTL
#: What KVM_ARM_VCPU_INIT already settled: the SVE vector lengths.
SET_AT_INIT = {lib.KVM_REG_ARM64_SVE_VLS}


def restore_state(vcpu, saved: VcpuState, plan, machine) -> list[str]:
    """Every register the plan keeps, in the saved (KVM_GET_REG_LIST) order, then the vCPU events
    and the MP state last (docs/restore.md); the vCPU was initialized with the saved features and
    vector lengths (vm.setup_vcpus). Every register KVM refuses is named, all in one error; with
    ``allow_missing_registers`` they are left out with a warning instead."""
    refused = []
    for reg_id, value in plan.regs[saved.index]:
        if reg_id in SET_AT_INIT:
            continue
        try:
            vcpu.set_one_reg(reg_id, value)
        except OSError as e:
            plan.refused.add(reg_id)
            refused.append(f"vCPU {saved.index}: {differs(reg_id, vcpu.get_one_reg(reg_id), value)} "
                           f"(KVM_SET_ONE_REG: {e.strerror})")
    if refused and not plan.allow_refused:
        raise RegisterRefused("refused by this host's KVM: " + "; ".join(refused))
    vcpu.set_vcpu_events(saved.events)
    vcpu.set_mp_state(saved.mp_state)
    return [r + " (not restored)" for r in refused]


def verify_state(vcpu, saved: VcpuState, plan) -> tuple[list[str], list[str]]:
    """Read every register set back: (problems, warnings). Not compared: what moves on by itself
    (VOLATILE). A register KVM refused (warned) reads back the host's value: not compared either."""
    problems = []
    for reg_id, value in plan.regs[saved.index]:
        if reg_id in VOLATILE:
            continue
        got, want = (int.from_bytes(b, "little") for b in (vcpu.get_one_reg(reg_id), value))
        moving = VOLATILE_BITS.get(reg_id, 0)
        if got & ~moving != want & ~moving and reg_id not in plan.refused:
            problems.append(f"vCPU {saved.index}: {reg_name(reg_id)} reads back {got:#x}, core has {want:#x}")
    if vcpu.get_mp_state() != saved.mp_state:
        problems.append(f"vCPU {saved.index}: MP state reads back {vcpu.get_mp_state()}, core has {saved.mp_state}")
    return problems, []


def before_running(machine, snapshot) -> None:
    """Once every vCPU is restored: where KVM takes a VM-wide counter offset (KVM_CAP_COUNTER_OFFSET,
    Linux 6.4), the virtual count continues from its saved value on every vCPU through that one
    offset, which KVM applies to the physical count too (docs/restore.md); elsewhere the
    KVM_REG_ARM_TIMER_CNT write of :func:`restore_state` already did it."""
    vm = machine.vm
    if not lib.KVM_CAP_COUNTER_OFFSET or not vm.check_extension(lib.KVM_CAP_COUNTER_OFFSET):
        return
    saved = int.from_bytes(dict(snapshot.vcpus[0].regs)[lib.KVM_REG_ARM_TIMER_CNT], "little")
    vm.arm_set_counter_offset(0)                    # the virtual count then reads the host's counter
    host = int.from_bytes(machine.vcpus[0].get_one_reg(lib.KVM_REG_ARM_TIMER_CNT), "little")
    vm.arm_set_counter_offset((host - saved) % (1 << 64))
