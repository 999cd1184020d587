"""An x86-64 vCPU's state through KVM: save, restore and read-back, side by side, each in the order
KVM needs (docs/restore.md gives the sources: Firecracker ``arch/x86_64/vcpu.rs``, QEMU
``kvm_arch_get_registers``/``kvm_arch_put_registers``)."""
import errno
import struct
import time
from dataclasses import dataclass

from kvmsnap.arch import RegisterRefused
from kvmsnap.arch.x86_64.msrs import COUNTER_MSRS, MSR_IA32_TSC, TRUNCATED_MSRS, msr_name
from kvmsnap.arch.x86_64.state import VcpuState
from kvmsnap.arch.x86_64.xsave import without_reserved
from kvmsnap.kvm import Cap, KvmError, MsrError, xsave2_size

#: LAPIC register whose value counts down by itself: Timer Current Count (offset 0x390).
LAPIC_TMCCT = 0x390
LAPIC_REGS = range(0, 0x400, 0x10)
COUNTER_PROBE_S = 0.001        # long enough for a 100 ns or TSC-rate counter to move
TSC_TAKES_S = 0.25             # IA32_TSC read back further past the value set: it did not take


@dataclass(frozen=True)
class VcpuCaps:
    """What this host's KVM offers for reading a vCPU."""
    sregs2: bool              # KVM_GET_SREGS2 (else KVM_GET_SREGS)
    xsave_size: int           # bytes of KVM_GET_XSAVE2

    @classmethod
    def of(cls, kvm, vm) -> "VcpuCaps":
        return cls(sregs2=bool(kvm.check_extension(Cap.SREGS2)), xsave_size=xsave2_size(vm))


def _counts(vcpu, index: int, value: int) -> bool:
    """True when MSR ``index`` moves on by itself: a known counter, or one that no longer reads
    ``value`` a moment later with the vCPU stopped."""
    if index in COUNTER_MSRS:
        return True
    time.sleep(COUNTER_PROBE_S)
    return vcpu.get_msrs([index])[0][1] != value


def readable_msrs(vcpu, indices: list[int]) -> list[int]:
    """The listed MSRs this vCPU actually returns (KVM lists some that a given CPU model refuses)."""
    wanted = list(indices)
    while True:
        try:
            vcpu.get_msrs(wanted)
            return wanted
        except MsrError as e:
            wanted.remove(e.index)


def save_state(vcpu, machine) -> VcpuState:
    """The vCPU's whole state; it must be out of KVM_RUN."""
    msr_indices, caps = machine.saved_msrs, machine.vcpu_caps
    # KVM_GET_MP_STATE first: it runs kvm_apic_accept_events, which may change vCPU and LAPIC state.
    mp_state = vcpu.get_mp_state()
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs2() if caps.sregs2 else vcpu.get_sregs()
    xsave = vcpu.get_xsave2(caps.xsave_size)
    xcrs = vcpu.get_xcrs()
    debugregs = vcpu.get_debugregs()
    lapic = vcpu.get_lapic()            # reading it may fold in pending LAPIC state: before MSRs
    msrs = vcpu.get_msrs(msr_indices)
    cpuid = vcpu.get_cpuid2()
    tsc_khz = vcpu.get_tsc_khz()
    # KVM_GET_VCPU_EVENTS last: the other GETs may change pending-event state.
    events = vcpu.get_vcpu_events()
    return VcpuState(index=vcpu.index, mp_state=mp_state, regs=regs, sregs=sregs,
                     sregs2=caps.sregs2, xsave=xsave, xcrs=xcrs, lapic=lapic, msrs=msrs,
                     debugregs=debugregs, cpuid=cpuid, tsc_khz=tsc_khz, events=events)


def restore_state(vcpu, saved: VcpuState, plan, machine) -> list[str]:
    """Every SET ioctl in the order KVM needs; returns warnings.  The plan's CPUID table and MSRs
    for this vCPU are the host-checked inputs (kvmsnap.arch.x86_64.host), the MSRs in restore order."""
    cpuid, msrs = plan.cpuid[saved.index], plan.msrs[saved.index]
    warnings = []
    # TSC frequency before CPUID: KVM derives the guest's TSC scaling from it.
    if saved.tsc_khz and saved.tsc_khz != vcpu.get_tsc_khz():
        if plan.can_scale_tsc:
            vcpu.set_tsc_khz(saved.tsc_khz)
        else:
            warnings.append(f"vCPU {saved.index}: the saved TSC ran at {saved.tsc_khz} kHz, this "
                            f"host's runs at {vcpu.get_tsc_khz()} kHz and its KVM cannot scale it")
    # CPUID first of the state: KVM sizes XSAVE, masks CR4/EFER/MSR writes and sets the APIC model by it.
    vcpu.set_cpuid2(cpuid)
    # MP state early: a vCPU left in wait-for-SIPI would ignore the state set below.
    vcpu.set_mp_state(saved.mp_state)
    # REGS before VCPU_EVENTS: SET_REGS clears any pending exception.
    vcpu.set_regs(saved.regs)
    # SREGS2 before LAPIC: it writes the APIC base MSR, which places the LAPIC.
    (vcpu.set_sregs2 if saved.sregs2 else vcpu.set_sregs)(saved.sregs)
    # XCRS after XSAVE... both after CPUID: XCR0 is checked against it.
    vcpu.set_xsave(plan.xsave[saved.index])
    vcpu.set_xcrs(saved.xcrs)
    vcpu.set_debugregs(saved.debugregs)
    # LAPIC before MSRS: KVM accepts IA32_TSC_DEADLINE only with an enabled LAPIC in deadline mode.
    # Twice: KVM works out the processor priority (PPR) before it counts the in-service vectors, so
    # on a new vCPU the first set leaves PPR as if none were in service; the second finds them.
    vcpu.set_lapic(saved.lapic)
    vcpu.set_lapic(saved.lapic)
    while True:
        try:
            vcpu.set_msrs(msrs)
            break
        except MsrError as e:
            refused = f"vCPU {saved.index}: MSR {e.index:#x} ({msr_name(e.index)}): refused by this host's KVM"
            if not plan.allow_refused_msrs:
                raise RegisterRefused(refused) from None
            warnings.append(refused + " (not restored)")
            msrs = plan.msrs[saved.index] = [(i, v) for i, v in msrs if i != e.index]
    # VCPU_EVENTS last: the other SETs may change pending-event state.
    vcpu.set_vcpu_events(saved.events)
    return warnings


def verify_state(vcpu, saved: VcpuState, plan) -> tuple[list[str], list[str]]:
    """Read every register set back: (problems, warnings). A difference names the set (and the
    MSR or LAPIC register). Not compared: what moves on by itself (the LAPIC timer's current count;
    a counter MSR that reads back no less than it was set to: the known COUNTER_MSRS, or one that
    reads differently again with the vCPU stopped) and the XSAVE bytes the reading kernel fills in.
    A SYSENTER MSR that kept its low 32 bits only is a warning (TRUNCATED_MSRS)."""
    msrs = plan.msrs[saved.index]
    problems, warnings = [], []
    checks = [("REGS", vcpu.get_regs(), saved.regs),
              ("SREGS2" if saved.sregs2 else "SREGS",
               vcpu.get_sregs2() if saved.sregs2 else vcpu.get_sregs(), saved.sregs),
              ("XCRS", vcpu.get_xcrs(), saved.xcrs),
              ("DEBUGREGS", vcpu.get_debugregs(), saved.debugregs),
              ("XSAVE", without_reserved(vcpu.get_xsave2(len(saved.xsave))),
               without_reserved(plan.xsave[saved.index])),
              ("VCPU_EVENTS", vcpu.get_vcpu_events(), saved.events)]
    for name, got, want in checks:
        if got != want:
            off = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                       min(len(got), len(want)))
            problems.append(f"vCPU {saved.index}: {name} reads back different from the core at "
                            f"byte {off}")
    lapic = vcpu.get_lapic()
    for reg in LAPIC_REGS:
        if reg != LAPIC_TMCCT and lapic[reg:reg + 4] != saved.lapic[reg:reg + 4]:
            problems.append(f"vCPU {saved.index}: LAPIC register {reg:#x} reads back "
                            f"{struct.unpack_from('<I', lapic, reg)[0]:#x}, core has "
                            f"{struct.unpack_from('<I', saved.lapic, reg)[0]:#x}")
    for (index, want), (_, got) in zip(msrs, vcpu.get_msrs([i for i, _ in msrs])):
        if index == MSR_IA32_TSC and saved.tsc_khz and got - want > saved.tsc_khz * 1000 * TSC_TAKES_S:
            if saved.index == 0:        # the same for every vCPU: said once
                warnings.append(f"vCPU {saved.index}: IA32_TSC did not take: it reads {got:#x}, "
                                f"{(got - want) / (saved.tsc_khz * 1000):.1f} s past the core's {want:#x}; this "
                                "host's KVM keeps the guest's TSC with its own (as kvm_pvm does, where the guest's "
                                "user-mode RDTSC runs natively), so the guest sees the time since the save pass at once")
            continue
        if got == want or got > want and _counts(vcpu, index, got):
            continue
        changed = (f"vCPU {saved.index}: MSR {index:#x} ({msr_name(index)}): set to {want:#x}, this "
                   f"host's KVM changed it to {got:#x}")
        if index in TRUNCATED_MSRS and got == want & 0xFFFFFFFF:
            warnings.append(changed + " (it keeps 32 bits for a guest with AMD's CPUID vendor)")
        else:
            problems.append(changed)
    if vcpu.get_mp_state() != saved.mp_state:
        problems.append(f"vCPU {saved.index}: MP state reads back {vcpu.get_mp_state()}, core has "
                        f"{saved.mp_state}")
    return problems, warnings


def before_running(machine, snapshot) -> None:
    """Once every vCPU is restored: the assist adopts each (an emulating KVM), and a guest using
    kvmclock is told it was stopped (KVM_KVMCLOCK_CTRL; EINVAL: it has no kvmclock page)."""
    if machine.assist:
        for vcpu, saved in zip(machine.vcpus, snapshot.vcpus):
            machine.assist.adopt(vcpu, saved)
    for vcpu in machine.vcpus:
        try:
            vcpu.kvmclock_ctrl()
        except KvmError as e:
            if e.errno != errno.EINVAL:
                raise
