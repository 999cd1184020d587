"""Can this host take an x86-64 snapshot?  The checks restore makes before creating anything, and
the per-vCPU inputs they settle (CPUID tables, MSR lists)."""
from dataclasses import dataclass, field

from kvmsnap.arch.x86_64 import cpuid
from kvmsnap.arch.x86_64.msrs import msr_name, restore_order
from kvmsnap.arch.x86_64.xsave import components, without_components, xcr0_of, xstate_bv
from kvmsnap.kvm import Cap, max_vcpus, xsave2_size

# KVM_GET_SUPPORTED_CPUID leaves this bit out; KVM_CAP_TSC_DEADLINE_TIMER says KVM offers it.
TSC_DEADLINE_TIMER = (0x1, 0, "ecx", 24)
# "Running under a hypervisor": a VMM sets it (KVM does not), and Linux then looks for KVM's
# paravirtual leaves at 0x40000000 (kvmclock: the TSC rate without calibrating against the PIT).
HYPERVISOR = (0x1, 0, "ecx", 31)


@dataclass
class RestorePlan:
    """Per vCPU (in index order) the CPUID table and the MSRs to set, in restore order; what the
    host cannot take (``problems``) and what a policy flag let through (``warnings``); the MSRs a
    later save of the restored machine holds (``saved_msrs``: the core's that are restored, in its order)."""
    cpuid: list[bytes] = field(default_factory=list)
    xsave: list[bytes] = field(default_factory=list)        # the XSAVE area to set (its state may be dropped)
    msrs: list[list[tuple[int, int]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    saved_msrs: list[int] = field(default_factory=list)
    allow_refused_msrs: bool = False    # an MSR KVM_SET_MSRS refuses is left out (warned), not fatal
    can_scale_tsc: bool = False         # KVM_CAP_TSC_CONTROL: KVM_SET_TSC_KHZ takes the saved frequency


def check_host(snapshot, kvm, policy) -> RestorePlan:
    """Compare the saved vCPUs with what this host's KVM offers, naming every register or feature
    it cannot take; ``policy.allow_missing_msrs`` and ``allow_missing_features`` let them through."""
    vcpus = snapshot.vcpus
    allow_missing_msrs, allow_missing_features = policy.allow_missing_msrs, policy.allow_missing_features
    plan = RestorePlan(allow_refused_msrs=allow_missing_msrs,
                       can_scale_tsc=bool(kvm.check_extension(Cap.TSC_CONTROL)))
    limit = max_vcpus(kvm)
    if len(vcpus) > limit:
        plan.problems.append(f"{len(vcpus)} vCPUs, this host's KVM allows {limit}")
    host_msrs = set(kvm.get_msr_index_list())
    host_cpuid, host_xsave = effective_cpuid(kvm)
    host_xcr0 = cpuid.supported_xcr0(host_cpuid)
    for v in vcpus:
        missing = cpuid.missing_features(v.cpuid, host_cpuid)
        if missing and allow_missing_features:
            plan.warnings.append(f"vCPU {v.index}: CPUID features cleared: "
                                 + ", ".join(m[4] for m in missing))
            plan.cpuid.append(cpuid.without_features(v.cpuid, missing))
        else:
            plan.problems += [f"vCPU {v.index}: CPUID.{leaf:#x}.{sub}:{reg.upper()}[{bit}] ({name}): "
                              "not offered by this host's KVM" for leaf, sub, reg, bit, name in missing]
            plan.cpuid.append(v.cpuid)
        xcr0 = xcr0_of(v.xcrs) or 0
        if xcr0 & ~host_xcr0:
            plan.problems.append(f"vCPU {v.index}: XCR0 {xcr0:#x} enables XSAVE components "
                                 f"{xcr0 & ~host_xcr0:#x} this host cannot hold (host XCR0 mask "
                                 f"{host_xcr0:#x})")
        placed, here = components(xcr0, v.cpuid), components(xcr0, host_cpuid)
        plan.problems += [f"vCPU {v.index}: XSAVE component {bit} at offset {placed[bit][0]} in the "
                          f"core, at {here[bit][0]} on this host" for bit in placed
                          if bit in here and here[bit] != placed[bit]]
        # The state the area holds must be of components this vCPU may have (KVM_SET_XSAVE: EINVAL)
        held = xstate_bv(v.xsave) & ~(cpuid.supported_xcr0(plan.cpuid[-1]) & host_xcr0)
        if held and allow_missing_features:
            plan.warnings.append(f"vCPU {v.index}: XSAVE state of components {held:#x} dropped (its CPUID "
                                 "features are not offered here)")
        elif held:
            plan.problems.append(f"vCPU {v.index}: XSAVE holds state of components {held:#x} this host "
                                 f"cannot hold (host XCR0 mask {host_xcr0:#x})")
        plan.xsave.append(without_components(v.xsave, held) if held and allow_missing_features else v.xsave)
        if len(v.xsave) > host_xsave and any(v.xsave[host_xsave:]):
            plan.problems.append(f"vCPU {v.index}: XSAVE area of {len(v.xsave)} bytes, this host "
                                 f"holds {host_xsave}")
        unlisted = [(i, val) for i, val in v.msrs if i not in host_msrs]
        if unlisted and allow_missing_msrs:
            plan.warnings.append(f"vCPU {v.index}: MSRs not restored: "
                                 + ", ".join(f"{i:#x} ({msr_name(i)})" for i, _ in unlisted))
        elif unlisted:
            plan.problems += [f"vCPU {v.index}: MSR {i:#x} ({msr_name(i)}): not listed by this "
                              "host's KVM" for i, _ in unlisted]
        plan.msrs.append(restore_order([(i, val) for i, val in v.msrs
                                        if i in host_msrs or not allow_missing_msrs]))
    restored = {i for i, _ in plan.msrs[0]}
    plan.saved_msrs = [i for i, _ in vcpus[0].msrs if i in restored]
    return plan


def effective_cpuid(kvm) -> tuple[bytes, int]:
    """The CPUID a vCPU of this host really gets (KVM_GET_CPUID2 after setting the supported table:
    some KVMs, kvm_pvm among them, fill in more than KVM_GET_SUPPORTED_CPUID lists) and the XSAVE
    size."""
    vm = kvm.create_vm()
    try:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(offered_cpuid(kvm))
            return vcpu.get_cpuid2(), xsave2_size(vm)
        finally:
            vcpu.close()
    finally:
        vm.close()


def offered_cpuid(kvm) -> bytes:
    """What this VMM gives a vCPU: KVM_GET_SUPPORTED_CPUID, the hypervisor bit, and the features a
    KVM capability offers instead (the TSC-deadline timer)."""
    offered = [HYPERVISOR] + ([TSC_DEADLINE_TIMER] if kvm.check_extension(Cap.TSC_DEADLINE_TIMER) else [])
    return cpuid.with_features(kvm.get_supported_cpuid(), offered)
