"""An x86-64 VM through KVM: what the VMM creates before any vCPU (in-kernel irqchip and PIT, the
pages KVM keeps for itself), the RAM layout, and the VM-wide device state, saved and restored."""
from kvmsnap.errors import KvmsnapError
from kvmsnap.kvm import Cap, lib
from kvmsnap.vmm.acpi_pm import AcpiPm
from kvmsnap.vmm.cmos import Cmos
from kvmsnap.vmm.pci import PciConfig
from kvmsnap.vmm.uart import Uart, UartInput

#: Guest-physical pages KVM uses for itself on Intel (real-mode TSS: 3 pages; EPT identity map: 1).
KVM_TSS_ADDR, KVM_IDENTITY_MAP_ADDR = 0xFFFBD000, 0xFFFBC000
REQUIRED_CAPS = ("IRQCHIP", "PIT2", "IMMEDIATE_EXIT", "XSAVE", "XCRS", "VCPU_EVENTS", "DEBUGREGS",
                 "MP_STATE")
#: RAM below the 32-bit hole ends here at the latest; the rest of RAM starts at 4 GiB.
LOW_RAM_TOP = 3 << 30
HIGH_RAM_BASE = 4 << 30
DEVICES_AFTER_VCPUS = False          # restore: the irqchip, PIT and clock come first
IRQCHIPS = {"pic_master": lib.KVM_IRQCHIP_PIC_MASTER, "pic_slave": lib.KVM_IRQCHIP_PIC_SLAVE,
            "ioapic": lib.KVM_IRQCHIP_IOAPIC}


def ram_layout(mem_size: int) -> list[tuple[int, int]]:
    """(guest_phys_addr, size) of each RAM slot for ``mem_size`` bytes of RAM, around the hole."""
    low = min(mem_size, LOW_RAM_TOP)
    slots = [(0, low)]
    if mem_size > LOW_RAM_TOP:
        slots.append((HIGH_RAM_BASE, mem_size - LOW_RAM_TOP))
    return slots


def setup_vm(kvm, vm) -> None:
    """What must exist before memory and vCPUs: KVM's private pages, the irqchip, the PIT."""
    for cap in REQUIRED_CAPS:
        if not kvm.check_extension(Cap[cap]):
            raise KvmsnapError(f"this host's KVM lacks KVM_CAP_{cap}, which kvmsnap needs")
    vm.set_tss_addr(KVM_TSS_ADDR)
    vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDR)
    vm.create_irqchip()
    vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)


def setup_vcpus(machine, saved: list | None = None) -> None:
    """Nothing to do once the vCPUs exist: the irqchip came first, and each vCPU's CPUID is set by
    its boot or restore."""


def device_models(machine, console) -> dict:
    """The VMM's own devices, by their name in Snapshot.devices: the UART (the console; IRQ 4,
    edge-triggered: pulsed), CMOS, PCI configuration ports and ACPI PM registers (port I/O)."""
    def pulse_irq(irq: int) -> None:
        machine.vm.irq_line(irq, 1)
        machine.vm.irq_line(irq, 0)
    uart = Uart(console, raise_irq=pulse_irq)
    return {"uart": uart, "uart_input": UartInput(uart), "cmos": Cmos(), "pci": PciConfig(), "acpi_pm": AcpiPm()}


def mmio_devices(machine) -> list:
    """(base, size, model) of each MMIO device the VMM emulates: none (its devices are port I/O)."""
    return []


def save_devices(machine) -> dict[str, bytes]:
    """KVM's VM-wide device state; every vCPU must be parked, so none changes it meanwhile."""
    vm = machine.vm
    devices = {name: vm.get_irqchip(chip) for name, chip in IRQCHIPS.items()}
    devices.update(pit=vm.get_pit2(), clock=vm.get_clock())
    return devices


def restore_devices(machine, devices: dict[str, bytes]) -> None:
    """Before any vCPU state (Firecracker's Vm::restore_state): PIT, clock, then the irqchip (the
    IOAPIC must hold its redirection table before the LAPICs accept interrupts)."""
    vm = machine.vm
    vm.set_pit2(devices["pit"])
    vm.set_clock(_clock_for_set(devices["clock"]))
    for name in IRQCHIPS:
        vm.set_irqchip(devices[name])


def _clock_for_set(clock: bytes) -> bytes:
    """kvm_clock_data for KVM_SET_CLOCK: the saved clock value alone (no realtime adjustment), so
    the guest's kvmclock continues from where it stopped."""
    clock_value = 8            # struct kvm_clock_data starts with __u64 clock
    return clock[:clock_value] + bytes(len(clock) - clock_value)
