"""Restore: a validated core back into a new VM, every register set checked by reading it back.

Order of the SET ioctls (docs/restore.md gives the sources):
VM-wide, after the irqchip and PIT exist and before any vCPU state:
  KVM_SET_PIT2, KVM_SET_CLOCK, KVM_SET_IRQCHIP (PIC master, PIC slave, IOAPIC) — Firecracker's
  ``Vm::restore_state``; the IOAPIC must hold its redirection table before LAPICs accept interrupts.
Per vCPU:
  1. KVM_SET_CPUID2 — first: KVM sizes XSAVE, masks CR4/EFER/MSR writes and sets the APIC model by it.
  2. KVM_SET_MP_STATE — early: a vCPU left in wait-for-SIPI would ignore the state set below.
  3. KVM_SET_REGS — before VCPU_EVENTS: SET_REGS clears any pending exception.
  4. KVM_SET_SREGS2 — before LAPIC: it writes the APIC base MSR, which places the LAPIC.
  5. KVM_SET_XSAVE, KVM_SET_XCRS — XCR0 is checked against the CPUID just set.
  6. KVM_SET_DEBUGREGS.
  7. KVM_SET_LAPIC — before MSRS: KVM only accepts IA32_TSC_DEADLINE with an enabled LAPIC in
     TSC-deadline mode.
  8. KVM_SET_MSRS — IA32_TSC is written before IA32_TSC_DEADLINE so the deadline is relative to
     the restored TSC.
  9. KVM_SET_VCPU_EVENTS — last: the other SETs may change pending-event state.
Then KVM_KVMCLOCK_CTRL tells a guest using kvmclock that it was stopped (its watchdogs then
ignore the gap); EINVAL means the guest does not use kvmclock.
"""
import errno
import struct
from dataclasses import dataclass, field

from . import corefile, cpuid
from .errors import KvmsnapError
from .formats.x86 import UartState
from .kvm import Kvm, KvmError, MsrError
from .kvm._kvm import lib
from .msrnames import msr_name
from .vmm import Machine
from .vmm.memory import load_file_slots, map_file_slots

MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE = 0x10, 0x6E0
#: MSRs whose value moves on by itself between setting and reading back (compared as "not less").
VOLATILE_MSRS = {MSR_IA32_TSC}
#: LAPIC register whose value counts down by itself: Timer Current Count (offset 0x390).
LAPIC_TMCCT = 0x390


class RestoreError(KvmsnapError):
    """The core cannot be restored on this host; the message lists every reason, one per item."""


@dataclass
class Policy:
    """What to do instead of refusing (each default: refuse)."""
    allow_missing_msrs: bool = False       # drop MSRs this host's KVM does not list
    allow_missing_features: bool = False   # clear CPUID features this host lacks from the guest's table
    eager_memory: bool = False             # read guest RAM now instead of mapping the core copy-on-write
    warnings: list[str] = field(default_factory=list)


def check_host(core, kvm: Kvm, policy: Policy) -> dict:
    """Compare the core with what this host's KVM offers; returns the adjusted per-vCPU inputs
    (CPUID tables, MSR lists). Raises RestoreError naming every register or feature it cannot take."""
    problems = []
    max_vcpus = kvm.check_extension(lib.KVM_CAP_MAX_VCPUS) or 4
    if len(core.vcpus) > max_vcpus:
        problems.append(f"{len(core.vcpus)} vCPUs, this host's KVM allows {max_vcpus}")
    host_msrs = set(kvm.get_msr_index_list())
    host_cpuid, host_xsave = _effective_cpuid(kvm)
    host_xcr0 = cpuid.supported_xcr0(host_cpuid)
    plan = {"cpuid": [], "msrs": []}
    for v in core.vcpus:
        missing = cpuid.missing_features(v.cpuid, host_cpuid)
        if missing and policy.allow_missing_features:
            policy.warnings.append(f"vCPU {v.index}: CPUID features cleared: {', '.join(m[4] for m in missing)}")
            plan["cpuid"].append(cpuid.without_features(v.cpuid, missing))
        else:
            problems += [f"vCPU {v.index}: CPUID.{leaf:#x}.{sub}:{reg.upper()}[{bit}] ({name}): "
                         "not offered by this host's KVM" for leaf, sub, reg, bit, name in missing]
            plan["cpuid"].append(v.cpuid)
        xcr0 = corefile.xcr0_of(v.xcrs) or 0
        if xcr0 & ~host_xcr0:
            problems.append(f"vCPU {v.index}: XCR0 {xcr0:#x} enables XSAVE components {xcr0 & ~host_xcr0:#x} "
                            f"this host cannot hold (host XCR0 mask {host_xcr0:#x})")
        if len(v.xsave) > host_xsave and any(v.xsave[host_xsave:]):
            problems.append(f"vCPU {v.index}: XSAVE area of {len(v.xsave)} bytes, this host holds {host_xsave}")
        unlisted = [(i, val) for i, val in v.msrs if i not in host_msrs]
        if unlisted and policy.allow_missing_msrs:
            policy.warnings.append(f"vCPU {v.index}: MSRs not restored: "
                                   + ", ".join(f"{i:#x} ({msr_name(i)})" for i, _ in unlisted))
        elif unlisted:
            problems += [f"vCPU {v.index}: MSR {i:#x} ({msr_name(i)}): not listed by this host's KVM"
                         for i, _ in unlisted]
        msrs = [(i, val) for i, val in v.msrs if i in host_msrs or not policy.allow_missing_msrs]
        plan["msrs"].append(sorted(msrs, key=lambda e: (e[0] == MSR_IA32_TSC_DEADLINE, e[0] != MSR_IA32_TSC)))
    if problems:
        raise RestoreError(_listing(core.path, problems))
    return plan


def _effective_cpuid(kvm: Kvm) -> tuple[bytes, int]:
    """The CPUID a vCPU of this host really gets (KVM_GET_CPUID2 after setting the supported table:
    some KVMs, kvm_pvm among them, fill in more than KVM_GET_SUPPORTED_CPUID lists) and the XSAVE size."""
    vm = kvm.create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(kvm.get_supported_cpuid())
            return vcpu.get_cpuid2(), max(vm.check_extension(lib.KVM_CAP_XSAVE2), 4096)
        finally:
            vcpu.close()
    finally:
        vm.close()


def _listing(path: str, problems: list[str]) -> str:
    head = f"{path}: cannot restore on this host: " + problems[0]
    return head + "".join(f"; {p}" for p in problems[1:])


def build_machine(core, console, policy: Policy) -> Machine:
    """A new machine holding the core's state, checked by read-back, with every vCPU not yet run."""
    kvm = Kvm()
    try:
        plan = check_host(core, kvm, policy)
    finally:
        kvm.close()
    slots = [(slot, gpa, size, core.segment_for_region(slot).offset) for slot, gpa, size in core.memory_map]
    with open(core.path, "rb") as f:
        memory = (load_file_slots if policy.eager_memory else map_file_slots)(f.fileno(), slots)
    machine = Machine(core.config, console, memory=memory)
    try:
        restore_state(machine, core, plan, policy.warnings)
        machine.uart.load_state(UartState.parse(core.uart))
        restored = {i for i, _ in plan["msrs"][0]}
        machine.msr_indices = [i for i, _ in core.vcpus[0].msrs if i in restored]   # a later save keeps the order
        return machine
    except BaseException:
        machine.close()
        raise


def restore_state(machine: Machine, core, plan: dict, warnings: list[str]) -> None:
    """Every SET ioctl in the documented order, then a read-back check of each vCPU."""
    vm = machine.vm
    vm.set_pit2(core.pit)
    vm.set_clock(_clock_for_set(core.clock))
    for chip in (core.pic_master, core.pic_slave, core.ioapic):
        vm.set_irqchip(chip)
    problems = []
    for vcpu, saved, table, msrs in zip(machine.vcpus, core.vcpus, plan["cpuid"], plan["msrs"]):
        _restore_vcpu(machine, vcpu, saved, table, msrs, warnings)
    for vcpu, saved, msrs in zip(machine.vcpus, core.vcpus, plan["msrs"]):
        problems += verify_vcpu(machine, vcpu, saved, msrs)
    if problems:
        raise RestoreError(_listing(core.path, problems))
    for vcpu in machine.vcpus:
        try:
            vcpu.kvmclock_ctrl()
        except KvmError as e:
            if e.errno != errno.EINVAL:       # EINVAL: the guest has no kvmclock page
                raise


def _clock_for_set(clock: bytes) -> bytes:
    """kvm_clock_data for KVM_SET_CLOCK: the saved clock value alone (no realtime adjustment), so the
    guest's kvmclock continues from where it stopped."""
    return clock[:8] + bytes(len(clock) - 8)


def _restore_vcpu(machine, vcpu, saved, table: bytes, msrs, warnings: list[str]) -> None:
    if saved.tsc_khz and saved.tsc_khz != vcpu.get_tsc_khz():
        if machine.kvm.check_extension(lib.KVM_CAP_TSC_CONTROL):
            vcpu.set_tsc_khz(saved.tsc_khz)
        else:
            warnings.append(f"vCPU {saved.index}: the saved TSC ran at {saved.tsc_khz} kHz, this host's runs at "
                            f"{vcpu.get_tsc_khz()} kHz and its KVM cannot scale it")
    vcpu.set_cpuid2(table)
    vcpu.set_mp_state(saved.mp_state)
    vcpu.set_regs(saved.regs)
    (vcpu.set_sregs2 if saved.sregs2 else vcpu.set_sregs)(saved.sregs)
    vcpu.set_xsave(saved.xsave)
    vcpu.set_xcrs(saved.xcrs)
    vcpu.set_debugregs(saved.debugregs)
    vcpu.set_lapic(saved.lapic)
    try:
        vcpu.set_msrs(msrs)
    except MsrError as e:
        raise RestoreError(f"vCPU {saved.index}: MSR {e.index:#x} ({msr_name(e.index)}): refused by this "
                           "host's KVM") from None
    vcpu.set_vcpu_events(saved.events)


def verify_vcpu(machine, vcpu, saved, msrs) -> list[str]:
    """Read every register set back; a difference names the set (and the MSR or LAPIC register)."""
    problems = []
    checks = [("REGS", vcpu.get_regs(), saved.regs),
              ("SREGS2" if saved.sregs2 else "SREGS",
               vcpu.get_sregs2() if saved.sregs2 else vcpu.get_sregs(), saved.sregs),
              ("XCRS", vcpu.get_xcrs(), saved.xcrs),
              ("DEBUGREGS", vcpu.get_debugregs(), saved.debugregs),
              ("XSAVE", vcpu.get_xsave2(len(saved.xsave)), saved.xsave),
              ("VCPU_EVENTS", vcpu.get_vcpu_events(), saved.events)]
    for name, got, want in checks:
        if got != want:
            off = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                       min(len(got), len(want)))
            problems.append(f"vCPU {saved.index}: {name} reads back different from the core at byte {off}")
    lapic = vcpu.get_lapic()
    for reg in range(0, 0x400, 0x10):
        if reg != LAPIC_TMCCT and lapic[reg:reg + 4] != saved.lapic[reg:reg + 4]:
            problems.append(f"vCPU {saved.index}: LAPIC register {reg:#x} reads back "
                            f"{struct.unpack_from('<I', lapic, reg)[0]:#x}, core has "
                            f"{struct.unpack_from('<I', saved.lapic, reg)[0]:#x}")
    for (index, want), (_, got) in zip(msrs, vcpu.get_msrs([i for i, _ in msrs])):
        if got != want and not (index in VOLATILE_MSRS and got > want):
            problems.append(f"vCPU {saved.index}: MSR {index:#x} ({msr_name(index)}): set to {want:#x}, "
                            f"this host's KVM changed it to {got:#x}")
    if vcpu.get_mp_state() != saved.mp_state:
        problems.append(f"vCPU {saved.index}: MP state reads back {vcpu.get_mp_state()}, core has {saved.mp_state}")
    return problems
