"""An aarch64 vCPU's state: every register KVM_GET_REG_LIST names with its ONE_REG value, and what
the register API does not hold (VCPU_INIT's features, MP state, vCPU events); the names of the
VM-wide device blobs of an aarch64 :class:`kvmsnap.state.Snapshot`."""
from dataclasses import dataclass

#: Snapshot.devices of an aarch64 VM: the vGICv3 (layouts.VgicState) and the VMM's PL011 UART
#: (layouts.Pl011State, and the input the guest has not read).
DEVICES = ("vgic", "uart", "uart_input")


@dataclass
class VcpuState:
    """One vCPU, as saved (``kvmsnap.arch.aarch64.vcpu``)."""
    index: int
    features: list[int]             # KVM_ARM_VCPU_* feature bits it was initialized with
    mp_state: int                   # struct kvm_mp_state.mp_state
    regs: list[tuple[int, bytes]]   # (ONE_REG id, value) for each id KVM_GET_REG_LIST gave, in its order
    events: bytes                   # struct kvm_vcpu_events
