"""Capture: read a paused machine's whole state through the KVM GET ioctls into ``VmState``.

Ordering, as the known VMMs do it (Firecracker ``arch/x86_64/vcpu.rs`` save_state, QEMU
``kvm_arch_get_registers``):
- KVM_GET_MP_STATE first: it runs ``kvm_apic_accept_events``, which may change vCPU and LAPIC state.
- REGS, SREGS2, XSAVE, XCRS, DEBUGREGS, LAPIC (reading it may fold in pending LAPIC state), MSRS.
- KVM_GET_VCPU_EVENTS last: the other GETs may change pending-event state; events must reflect it.
- VM-wide state (irqchip, PIT, kvmclock) once every vCPU is parked, so no vCPU changes it meanwhile.
"""
from .formats.x86 import UartState
from .kvm import MsrError
from .kvm._kvm import lib
from .state import VcpuState, VmState


def readable_msrs(vcpu, indices: list[int]) -> list[int]:
    """The listed MSRs this vCPU actually returns (KVM lists some that a given CPU model refuses)."""
    wanted = list(indices)
    while True:
        try:
            vcpu.get_msrs(wanted)
            return wanted
        except MsrError as e:
            wanted.remove(e.index)


def capture_vcpu(vcpu, msr_indices: list[int], sregs2: bool, xsave_size: int) -> VcpuState:
    """One vCPU's state, in the order documented above. The vCPU must be out of KVM_RUN."""
    mp_state = vcpu.get_mp_state()
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs2() if sregs2 else vcpu.get_sregs()
    xsave = vcpu.get_xsave2(xsave_size)
    xcrs = vcpu.get_xcrs()
    debugregs = vcpu.get_debugregs()
    lapic = vcpu.get_lapic()
    msrs = vcpu.get_msrs(msr_indices)
    cpuid = vcpu.get_cpuid2()
    tsc_khz = vcpu.get_tsc_khz()
    events = vcpu.get_vcpu_events()
    return VcpuState(index=vcpu.index, mp_state=mp_state, regs=regs, sregs=sregs, sregs2=sregs2, xsave=xsave,
                     xcrs=xcrs, lapic=lapic, msrs=msrs, debugregs=debugregs, cpuid=cpuid, tsc_khz=tsc_khz,
                     events=events)


def capture(machine) -> VmState:
    """The whole machine; every vCPU must be parked (``Machine.pause``)."""
    if machine.msr_indices is None:
        machine.msr_indices = readable_msrs(machine.vcpus[0], machine.kvm.get_msr_index_list())
    vcpus = [capture_vcpu(v, machine.msr_indices, machine.sregs2, machine.xsave_size) for v in machine.vcpus]
    vm = machine.vm
    return VmState(
        config=machine.config, vcpus=vcpus,
        pic_master=vm.get_irqchip(lib.KVM_IRQCHIP_PIC_MASTER),
        pic_slave=vm.get_irqchip(lib.KVM_IRQCHIP_PIC_SLAVE),
        ioapic=vm.get_irqchip(lib.KVM_IRQCHIP_IOAPIC),
        pit=vm.get_pit2(), clock=vm.get_clock(),
        uart=UartState.build(machine.uart.state()),
        memory=machine.memory.regions)
