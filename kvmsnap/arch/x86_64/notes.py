"""x86-64 notes of a kvmsnap core, encoded and decoded side by side (docs/core-format.md).

Per vCPU, NT_PRSTATUS first (gdb attaches the register notes that follow it to that thread), then
NT_FPREGSET, NT_X86_XSTATE and QEMU's CPU state for the debuggers, then the private KVMSNAP notes
that hold the exact KVM bytes restore uses.  VM-wide: the irqchip, PIT, kvmclock and UART notes.
"""
from kvmsnap import notes as N
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.arch.x86_64.msrs import MSR_KERNEL_GS_BASE
from kvmsnap.arch.x86_64.paging import PagingState
from kvmsnap.arch.x86_64.state import VcpuState
from kvmsnap.arch.x86_64.xsave import XCR0_LEGACY, linux_layout, linux_xstate, xcr0_of
from kvmsnap.formats import elf
from kvmsnap.formats.reader import CoreFormatError, payload

MAX_XSAVE = 1 << 20
MIN_XSAVE = x86.XSAVE_LEGACY_SIZE + x86.XSAVE_HDR_SIZE
MAX_MSRS = 1 << 16
MAX_CPUID = 1 << 12

_U64 = (1 << 64) - 1

#: Every vCPU's note set, in the order kvmsnap writes it.
VCPU_NOTES = ((N.OWNER_CORE, N.NT_PRSTATUS), (N.OWNER_CORE, N.NT_FPREGSET),
              (N.OWNER_LINUX, N.NT_X86_XSTATE), (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE)) + tuple(
    (N.OWNER_KVMSNAP, t) for t in (N.KVMSNAP_SREGS, N.KVMSNAP_XSAVE, N.KVMSNAP_XCRS,
                                   N.KVMSNAP_LAPIC, N.KVMSNAP_MSRS, N.KVMSNAP_VCPU_EVENTS,
                                   N.KVMSNAP_DEBUGREGS, N.KVMSNAP_MP_STATE, N.KVMSNAP_CPUID,
                                   N.KVMSNAP_TSC_KHZ))
#: VM-wide device notes: type -> (payload layout, {device name: payload field}).
DEVICE_NOTES = {
    N.KVMSNAP_IRQCHIP: (N.KvmsnapIrqchip, {"pic_master": "pic_master", "pic_slave": "pic_slave",
                                           "ioapic": "ioapic"}),
    N.KVMSNAP_PIT: (N.KvmsnapPit, {"pit": "pit"}),
    N.KVMSNAP_CLOCK: (N.KvmsnapClock, {"clock": "clock"}),
    N.KVMSNAP_UART: (N.KvmsnapUart, {"uart": "uart"}),
    N.KVMSNAP_CMOS: (N.KvmsnapCmos, {"cmos": "cmos"}),
    N.KVMSNAP_PCI: (N.KvmsnapPci, {"pci": "pci"}),
    N.KVMSNAP_ACPI_PM: (N.KvmsnapAcpiPm, {"acpi_pm": "acpi_pm"}),
    N.KVMSNAP_UART_INPUT: (N.KvmsnapUartInput, {"uart_input": "input"}),
}
#: The chip_id each irqchip blob must carry (struct kvm_irqchip): restore hands it to KVM_SET_IRQCHIP.
IRQCHIP_IDS = {"pic_master": x86.KVM_IRQCHIP_PIC_MASTER, "pic_slave": x86.KVM_IRQCHIP_PIC_SLAVE,
               "ioapic": x86.KVM_IRQCHIP_IOAPIC}
#: Device notes an older core lacks (format 1.0: CMOS, PCI, ACPI PM; 1.0 and 1.1: the UART's
#: input): its devices then start from their reset state.
OPTIONAL_DEVICE_NOTES = (N.KVMSNAP_CMOS, N.KVMSNAP_PCI, N.KVMSNAP_ACPI_PM, N.KVMSNAP_UART_INPUT)
DEVICE_SIZES = {"pic_master": x86.kvm_irqchip.sizeof(), "pic_slave": x86.kvm_irqchip.sizeof(),
                "ioapic": x86.kvm_irqchip.sizeof(), "pit": x86.kvm_pit_state2.sizeof(),
                "clock": x86.kvm_clock_data.sizeof(), "uart": x86.UartState.sizeof(),
                "cmos": x86.CmosState.sizeof(), "pci": x86.PciState.sizeof(),
                "acpi_pm": x86.AcpiPmState.sizeof()}


def parse_sregs(v: VcpuState):
    """The vCPU's kvm_sregs2 (or kvm_sregs), parsed."""
    return (x86.kvm_sregs2 if v.sregs2 else x86.kvm_sregs).parse(v.sregs)


_PAGING_AT = [elf.offsets(x86.kvm_sregs)[name] for name in PagingState._fields]  # as in sregs2


def paging_state(v: VcpuState) -> PagingState:
    """CR0, CR3, CR4 and EFER, read at their kvm_sregs(2) offsets (without parsing the rest)."""
    return PagingState(*(int.from_bytes(v.sregs[at:at + 8], "little") for at in _PAGING_AT))


# -- writing --------------------------------------------------------------------------------------

def check_vcpu(i: int, v: VcpuState) -> None:
    """ValueError unless every raw struct of ``v`` has its kernel size."""
    def expect(what, data, size):
        if len(data) != size:
            raise ValueError(f"vCPU {i} {what}: {len(data)} bytes, expected {size}")
    expect("regs", v.regs, x86.kvm_regs.sizeof())
    expect("sregs", v.sregs, (x86.kvm_sregs2 if v.sregs2 else x86.kvm_sregs).sizeof())
    if not MIN_XSAVE <= len(v.xsave) <= MAX_XSAVE or len(v.xsave) % 4:
        raise ValueError(f"vCPU {i} xsave: {len(v.xsave)} bytes")
    expect("xcrs", v.xcrs, x86.kvm_xcrs.sizeof())
    expect("lapic", v.lapic, x86.kvm_lapic_state.sizeof())
    expect("debugregs", v.debugregs, x86.kvm_debugregs.sizeof())
    expect("events", v.events, x86.kvm_vcpu_events.sizeof())
    entry = x86.kvm_cpuid_entry2.sizeof()
    if len(v.cpuid) % entry or len(v.cpuid) > MAX_CPUID * entry:
        raise ValueError(f"vCPU {i} cpuid: {len(v.cpuid)} bytes, not a kvm_cpuid_entry2 array")
    if len(v.msrs) > MAX_MSRS:
        raise ValueError(f"vCPU {i}: {len(v.msrs)} MSRs, at most {MAX_MSRS}")


def kernel_in_high_half(vcpus: list[VcpuState]) -> bool:
    """Whether a vCPU runs code or takes interrupts in the upper half of the address space, as a
    64-bit Linux kernel does from its first instructions in long mode: only such a guest's RAM is
    searched for VMCOREINFO (a search reads all RAM that holds data)."""
    return any(x86.kvm_regs.parse(v.regs).rip >> 63 or parse_sregs(v).idt.base >> 63 for v in vcpus)


def check_devices(devices: dict[str, bytes]) -> None:
    N.check_device_blobs(devices, DEVICE_SIZES)


def prstatus(index: int, regs, sregs) -> bytes:
    """NT_PRSTATUS for vCPU ``index`` from parsed kvm_regs and kvm_sregs(2)."""
    pr_reg = {name: getattr(regs, name, 0) for name in x86.USER_REGS}
    pr_reg.update(orig_rax=_U64, eflags=regs.rflags,
                  cs=sregs.cs.selector, ss=sregs.ss.selector, ds=sregs.ds.selector,
                  es=sregs.es.selector, fs=sregs.fs.selector, gs=sregs.gs.selector,
                  fs_base=sregs.fs.base, gs_base=sregs.gs.base)
    tv = dict(tv_sec=0, tv_usec=0)
    return x86.elf_prstatus.build(dict(
        pr_info=dict(si_signo=0, si_code=0, si_errno=0), pr_cursig=0, pr_sigpend=0, pr_sighold=0,
        pr_pid=index + 1, pr_ppid=0, pr_pgrp=0, pr_sid=0,
        pr_utime=tv, pr_stime=tv, pr_cutime=tv, pr_cstime=tv,
        pr_reg=pr_reg, pr_fpvalid=1))


def qemu_cpustate(regs, sregs, kernel_gs_base: int) -> bytes:
    """QEMU's QEMUCPUState (owner "QEMU", type 0) from parsed kvm_regs and kvm_sregs(2)."""
    def seg(s):
        return dict(selector=s.selector, limit=s.limit, flags=x86.qemu_segment_flags(s), pad=0,
                    base=s.base)

    def dtable(d):
        return dict(selector=0, limit=d.limit, flags=0, pad=0, base=d.base)

    fields = {sub.name: getattr(regs, sub.name) for sub in x86.kvm_regs.subcons}
    fields.update({name: seg(getattr(sregs, name)) for name in
                   ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr")})
    return x86.QEMUCPUState.build(dict(
        version=x86.QEMUCPUSTATE_VERSION, size=x86.QEMUCPUState.sizeof(), **fields,
        gdt=dtable(sregs.gdt), idt=dtable(sregs.idt),
        cr=[sregs.cr0, 0, sregs.cr2, sregs.cr3, sregs.cr4], kernel_gs_base=kernel_gs_base))


def vcpu_notes(v: VcpuState) -> list[tuple[str, int, bytes]]:
    """``(owner, type, descriptor)`` of vCPU ``v``'s notes, in :data:`VCPU_NOTES` order."""
    regs = x86.kvm_regs.parse(v.regs)
    sregs = parse_sregs(v)
    xcr0 = xcr0_of(v.xcrs)
    if xcr0 is None:
        xcr0 = XCR0_LEGACY
    kernel_gs_base = dict(v.msrs).get(MSR_KERNEL_GS_BASE, 0)
    private = {
        N.KVMSNAP_SREGS: N.KvmsnapSregs.build(dict(
            flags=N.KVMSNAP_SREGS_FLAG_SREGS2 if v.sregs2 else 0, reserved=0, sregs=v.sregs)),
        N.KVMSNAP_XSAVE: N.KvmsnapXsave.build(dict(reserved=0, xsave=v.xsave)),
        N.KVMSNAP_XCRS: N.KvmsnapXcrs.build(dict(xcrs=v.xcrs)),
        N.KVMSNAP_LAPIC: N.KvmsnapLapic.build(dict(lapic=v.lapic)),
        N.KVMSNAP_MSRS: N.KvmsnapMsrs.build(dict(pad=0, entries=[
            dict(index=index, reserved=0, data=value) for index, value in v.msrs])),
        N.KVMSNAP_VCPU_EVENTS: N.KvmsnapVcpuEvents.build(dict(events=v.events)),
        N.KVMSNAP_DEBUGREGS: N.KvmsnapDebugregs.build(dict(debugregs=v.debugregs)),
        N.KVMSNAP_MP_STATE: N.KvmsnapMpState.build(dict(mp_state=v.mp_state, reserved=0)),
        N.KVMSNAP_CPUID: N.KvmsnapCpuid.build(dict(padding=0, entries=v.cpuid)),
        N.KVMSNAP_TSC_KHZ: N.KvmsnapTscKhz.build(dict(tsc_khz=v.tsc_khz, reserved=0)),
    }
    standard = {
        (N.OWNER_CORE, N.NT_PRSTATUS): prstatus(v.index, regs, sregs),
        (N.OWNER_CORE, N.NT_FPREGSET): v.xsave[:x86.XSAVE_LEGACY_SIZE],
        (N.OWNER_LINUX, N.NT_X86_XSTATE): linux_xstate(v.xsave, xcr0, v.cpuid),
        (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE): qemu_cpustate(regs, sregs, kernel_gs_base),
    }
    return [(owner, n_type, standard[(owner, n_type)] if owner != N.OWNER_KVMSNAP
             else private[n_type]) for owner, n_type in VCPU_NOTES]


def process_notes(vcpus: list[VcpuState]) -> list[tuple[str, int, bytes]]:
    """The notes a Linux core has once per process: NT_X86_XSAVE_LAYOUT, where NT_X86_XSTATE puts
    each component (the same standard places for every vCPU, see xsave.linux_xstate)."""
    xcr0 = 0
    for v in vcpus:
        xcr0 |= xcr0_of(v.xcrs) or XCR0_LEGACY
    return [(N.OWNER_LINUX, N.NT_X86_XSAVE_LAYOUT, b"".join(
        x86.x86_xfeat_component.build(dict(type=bit, size=size, offset=offset, flags=0))
        for bit, size, offset in linux_layout(xcr0)))]


def device_notes(devices: dict[str, bytes]) -> list[tuple[str, int, bytes]]:
    """``(owner, type, descriptor)`` of the VM-wide device notes."""
    return [(N.OWNER_KVMSNAP, n_type, layout.build({field: devices[name]
                                                   for name, field in fields.items()}))
            for n_type, (layout, fields) in DEVICE_NOTES.items()]


# -- reading --------------------------------------------------------------------------------------

def read_devices(path: str, vm_notes: dict) -> dict[str, bytes]:
    """The device blobs from the VM-wide notes (type -> Note), every one present but the
    OPTIONAL_DEVICE_NOTES."""
    devices = {}
    for n_type, (layout, fields) in DEVICE_NOTES.items():
        if n_type not in vm_notes and n_type in OPTIONAL_DEVICE_NOTES:
            continue
        parsed = payload(path, vm_notes[n_type], layout)
        if n_type == N.KVMSNAP_UART_INPUT and parsed.length > N.UART_INPUT_LIMIT:
            raise CoreFormatError(path, vm_notes[n_type].desc_offset, f"KVMSNAP_UART_INPUT: {parsed.length}"
                                  f" bytes of input, at most {N.UART_INPUT_LIMIT}")
        devices.update({name: bytes(parsed[field]) for name, field in fields.items()})
    for i, (name, chip_id) in enumerate(IRQCHIP_IDS.items()):       # in the note's order
        found = int.from_bytes(devices[name][:4], "little")
        if found != chip_id:
            at = vm_notes[N.KVMSNAP_IRQCHIP].desc_offset + 8 + i * x86.kvm_irqchip.sizeof()
            raise CoreFormatError(path, at, f"KVMSNAP_IRQCHIP: the {name} state has chip_id {found}, expected "
                                            f"{chip_id}")
    return devices


def read_vcpu(path: str, index: int, notes_of: dict) -> VcpuState:
    """vCPU ``index`` from its notes (``(owner, type) -> Note``, every one of VCPU_NOTES present):
    the private notes, and kvm_regs from NT_PRSTATUS (their one home in the file)."""
    def raw(key, size):
        note = notes_of[key]
        if note.size < size:
            raise CoreFormatError(path, note.offset, f"vCPU {index}: {note.type_name} is "
                                                     f"{note.size} bytes, expected {size}")
        return note

    pr_note = raw((N.OWNER_CORE, N.NT_PRSTATUS), x86.elf_prstatus.sizeof())
    pr = x86.elf_prstatus.parse(pr_note.desc)
    if pr.pr_pid != index + 1:
        raise CoreFormatError(path, pr_note.desc_offset + elf.offsets(x86.elf_prstatus)["pr_pid"],
                              f"vCPU {index}: NT_PRSTATUS pr_pid {pr.pr_pid}, expected "
                              f"{index + 1}")
    raw((N.OWNER_CORE, N.NT_FPREGSET), x86.user_fpregs_struct.sizeof())
    raw((N.OWNER_LINUX, N.NT_X86_XSTATE), MIN_XSAVE)
    raw((N.OWNER_QEMU, N.NT_QEMU_CPUSTATE), x86.QEMUCPUSTATE_SIZE_V1_MIN)
    regs = x86.kvm_regs.build({name: pr.pr_reg[name if name != "rflags" else "eflags"]
                               for name in (s.name for s in x86.kvm_regs.subcons)})

    def private(n_type, layout):
        return payload(path, notes_of[(N.OWNER_KVMSNAP, n_type)], layout)

    sregs = private(N.KVMSNAP_SREGS, N.KvmsnapSregs)
    xsave = private(N.KVMSNAP_XSAVE, N.KvmsnapXsave)
    if not MIN_XSAVE <= xsave.length <= MAX_XSAVE:
        note = notes_of[(N.OWNER_KVMSNAP, N.KVMSNAP_XSAVE)]
        raise CoreFormatError(path, note.desc_offset + elf.offsets(N.KvmsnapXsave)["length"],
                              f"vCPU {index}: XSAVE area of {xsave.length} bytes")
    return VcpuState(
        index=index,
        mp_state=private(N.KVMSNAP_MP_STATE, N.KvmsnapMpState).mp_state,
        regs=regs,
        sregs=bytes(sregs.sregs),
        sregs2=bool(sregs.flags & N.KVMSNAP_SREGS_FLAG_SREGS2),
        xsave=bytes(xsave.xsave),
        xcrs=bytes(private(N.KVMSNAP_XCRS, N.KvmsnapXcrs).xcrs),
        lapic=bytes(private(N.KVMSNAP_LAPIC, N.KvmsnapLapic).lapic),
        msrs=[(e.index, e.data) for e in private(N.KVMSNAP_MSRS, N.KvmsnapMsrs).entries],
        debugregs=bytes(private(N.KVMSNAP_DEBUGREGS, N.KvmsnapDebugregs).debugregs),
        cpuid=bytes(private(N.KVMSNAP_CPUID, N.KvmsnapCpuid).entries),
        tsc_khz=private(N.KVMSNAP_TSC_KHZ, N.KvmsnapTscKhz).tsc_khz,
        events=bytes(private(N.KVMSNAP_VCPU_EVENTS, N.KvmsnapVcpuEvents).events),
    )
