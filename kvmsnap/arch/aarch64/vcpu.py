"""An aarch64 vCPU's state through KVM: what it is initialized with, its save, restore and read-back
(docs/restore.md gives the order and its sources: QEMU ``target/arm/kvm.c``, Firecracker
``arch/aarch64/vcpu.rs``)."""
from dataclasses import dataclass

from kvmsnap.arch.aarch64.state import VcpuState
from kvmsnap.kvm import lib
from kvmsnap.kvm.aarch64 import core_reg_id

PC = core_reg_id("regs", "pc")
MPIDR_EL1 = 0x6030_0000_0013_c005          # ARM64_SYS_REG(3, 0, 0, 0, 5)


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


def init(vcpu, target: int, features: list[int]) -> None:
    """KVM_ARM_VCPU_INIT, then KVM_ARM_VCPU_FINALIZE for SVE (at the vector lengths KVM offers)."""
    vcpu.arm_vcpu_init(target, features)
    if lib.KVM_ARM_VCPU_SVE in features:
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


def where(vcpu) -> str:
    """'PC 0x…' for messages."""
    try:
        return f"PC {int.from_bytes(vcpu.get_one_reg(PC), 'little'):#x}"
    except OSError:
        return "an unknown PC"
