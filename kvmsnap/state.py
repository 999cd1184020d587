"""Machine state as plain data: raw kernel structs as KVM returns them, one field per GET ioctl.

Capture (``kvmsnap.snapshot``) fills these; the core writer turns them into ELF notes; the core
reader gives them back for restore. Byte fields hold the exact ``<linux/kvm.h>`` struct bytes.
"""
from dataclasses import dataclass, field


@dataclass
class VcpuState:
    """One vCPU, in the order the fields are read (see ``kvmsnap.snapshot``)."""
    index: int
    mp_state: int                  # struct kvm_mp_state.mp_state
    regs: bytes                    # struct kvm_regs (144 bytes)
    sregs: bytes                   # struct kvm_sregs2 (320) when sregs2 is True, else struct kvm_sregs (312)
    sregs2: bool
    xsave: bytes                   # KVM_GET_XSAVE2 area, length = KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) (>= 4096)
    xcrs: bytes                    # struct kvm_xcrs (392)
    lapic: bytes                   # struct kvm_lapic_state (1024)
    msrs: list[tuple[int, int]]    # (index, value) for every listed MSR that reads back, in index-list order
    debugregs: bytes               # struct kvm_debugregs (128)
    cpuid: bytes                   # nent * struct kvm_cpuid_entry2 (40 bytes each), as given to KVM_SET_CPUID2
    tsc_khz: int
    events: bytes                  # struct kvm_vcpu_events (64), read last


@dataclass
class MemoryRegion:
    """One KVM memory slot: guest-physical range backed by a host mapping (``buffer``)."""
    slot: int
    guest_phys_addr: int
    size: int
    buffer: object = field(repr=False, default=None)   # a writable buffer (mmap) of ``size`` bytes


@dataclass
class MachineConfig:
    """How the machine was started, so restore can build the same one."""
    guest: str          # sample name or image path
    mem_size: int       # bytes of RAM requested
    vcpus: int


@dataclass
class VmState:
    """The whole VM: per-vCPU state plus VM-wide devices and memory."""
    config: MachineConfig
    vcpus: list[VcpuState]
    pic_master: bytes   # struct kvm_irqchip (520), chip_id KVM_IRQCHIP_PIC_MASTER
    pic_slave: bytes    # struct kvm_irqchip (520), chip_id KVM_IRQCHIP_PIC_SLAVE
    ioapic: bytes       # struct kvm_irqchip (520), chip_id KVM_IRQCHIP_IOAPIC
    pit: bytes          # struct kvm_pit_state2 (112)
    clock: bytes        # struct kvm_clock_data (48)
    uart: bytes         # kvmsnap.vmm.uart.Uart.state_bytes() (documented in docs/core-format.md)
    memory: list[MemoryRegion]
