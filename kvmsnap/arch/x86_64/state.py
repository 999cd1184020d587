"""An x86-64 vCPU's state: raw ``<linux/kvm.h>`` structs, one field per GET ioctl, and the names of
the VM-wide device blobs of an x86 :class:`kvmsnap.state.Snapshot`."""
from dataclasses import dataclass

#: Snapshot.devices of an x86 VM: KVM's irqchip (struct kvm_irqchip, by chip), PIT (struct
#: kvm_pit_state2), kvmclock (struct kvm_clock_data) and the VMM's UART (registers, and the input
#: the guest has not read), RTC/CMOS, PCI configuration ports and ACPI PM registers
#: (layouts.UartState, bytes, CmosState, PciState, AcpiPmState).
DEVICES = ("pic_master", "pic_slave", "ioapic", "pit", "clock", "uart", "uart_input", "cmos", "pci", "acpi_pm")


@dataclass
class VcpuState:
    """One vCPU, in the order the fields are read (see ``kvmsnap.arch.x86_64.vcpu``)."""
    index: int
    mp_state: int                  # struct kvm_mp_state.mp_state
    regs: bytes                    # struct kvm_regs
    sregs: bytes                   # struct kvm_sregs2 when sregs2 is True, else struct kvm_sregs
    sregs2: bool
    xsave: bytes                   # KVM_GET_XSAVE2 area, KVM_CAP_XSAVE2 bytes (at least 4096)
    xcrs: bytes                    # struct kvm_xcrs
    lapic: bytes                   # struct kvm_lapic_state
    msrs: list[tuple[int, int]]    # (index, value) for every listed MSR that reads back
    debugregs: bytes               # struct kvm_debugregs
    cpuid: bytes                   # nent * struct kvm_cpuid_entry2, as given to KVM_SET_CPUID2
    tsc_khz: int
    events: bytes                  # struct kvm_vcpu_events, read last
