"""An aarch64 VM through KVM: the machine's layout (QEMU ``virt``'s: RAM at 1 GiB, the GICv3 or
GICv2, a PL011 UART), what the VMM creates once the vCPUs exist (their VCPU_INIT, the vGIC), and the VM-wide
device state, saved and restored."""
from kvmsnap.arch.aarch64 import vcpu as arm_vcpu, vgic
from kvmsnap.arch.aarch64.layouts import RAM_BASE, UART_BASE, UART_SIZE, UART_SPI
from kvmsnap.errors import KvmsnapError
from kvmsnap.kvm import lib
from kvmsnap.vmm.pl011 import Pl011
from kvmsnap.vmm.uart import UartInput

DEVICES_AFTER_VCPUS = True           # restore: a GICv3 finds each redistributor by its vCPU's MPIDR
REQUIRED_CAPS = {"ONE_REG": lib.KVM_CAP_ONE_REG, "DEVICE_CTRL": lib.KVM_CAP_DEVICE_CTRL,
                 "ARM_PSCI_0_2": lib.KVM_CAP_ARM_PSCI_0_2, "IMMEDIATE_EXIT": lib.KVM_CAP_IMMEDIATE_EXIT,
                 "MP_STATE": lib.KVM_CAP_MP_STATE}


def ram_layout(mem_size: int) -> list[tuple[int, int]]:
    """(guest_phys_addr, size) of each RAM slot: one, from RAM_BASE."""
    return [(RAM_BASE, mem_size)]


def setup_vm(kvm, vm) -> None:
    """What must hold before memory and vCPUs: the capabilities kvmsnap uses."""
    for name, cap in REQUIRED_CAPS.items():
        if not kvm.check_extension(cap):
            raise KvmsnapError(f"this host's KVM lacks KVM_CAP_{name}, which kvmsnap needs")


def setup_vcpus(machine, saved: list | None = None) -> None:
    """Every vCPU initialized: with the saved features on restore (whose vGIC, of the saved type,
    comes with the devices); else vCPU 0 runnable and the others powered off until the guest starts
    them with PSCI CPU_ON, then the host's vGIC."""
    caps = machine.vcpu_caps
    for vcpu in machine.vcpus:
        if saved:
            state = saved[vcpu.index]
            arm_vcpu.init(vcpu, caps.target, state.features, dict(state.regs).get(lib.KVM_REG_ARM64_SVE_VLS))
        else:
            arm_vcpu.init(vcpu, caps.target, list(caps.features) + ([lib.KVM_ARM_VCPU_POWER_OFF] if vcpu.index else []))
    if not saved:
        type_ = vgic.host_type(machine.vm)
        if type_ is None:
            raise KvmsnapError("this host's KVM makes neither a vGICv3 nor a vGICv2 (KVM_CREATE_DEVICE)")
        machine.irqchip = vgic.create(machine.vm, type_)


def device_models(machine, console) -> dict:
    """The VMM's own devices, by their name in Snapshot.devices."""
    def set_irq(level: bool) -> None:
        machine.vm.irq_line(lib.KVM_ARM_IRQ_TYPE_SPI << lib.KVM_ARM_IRQ_TYPE_SHIFT | 32 + UART_SPI, int(level))
    uart = Pl011(console, set_irq=set_irq)
    return {"uart": uart, "uart_input": UartInput(uart)}


def mmio_devices(machine) -> list[tuple[int, int, object]]:
    """(base, size, model) of each MMIO device the VMM emulates."""
    return [(UART_BASE, UART_SIZE, machine.device_models["uart"])]


def save_devices(machine) -> dict[str, bytes]:
    """KVM's VM-wide device state (the vGIC); every vCPU must be parked."""
    return {"vgic": vgic.save(machine.irqchip, machine.vcpus)}


def restore_devices(machine, devices: dict[str, bytes]) -> None:
    """The vGIC of the saved type, created and loaded after every vCPU's registers (a GICv3's
    redistributors are found by the vCPUs' MPIDR), before any vCPU runs."""
    machine.irqchip = vgic.create(machine.vm, vgic.saved_type(devices["vgic"]))
    vgic.restore(machine.irqchip, devices["vgic"])
