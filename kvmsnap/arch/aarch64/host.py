"""Can this host take an aarch64 snapshot? The checks restore makes before creating anything: every
saved register must be one this host's KVM lists for a vCPU initialized as the saved one was (its
features, its SVE vector lengths), and the ID registers that name the CPU must agree, but for
those that may differ between hosts of one CPU model (MAY_DIFFER: the host's value is kept); the
saved vGIC's type must be one this KVM makes."""
from dataclasses import dataclass, field

from kvmsnap.arch.aarch64 import vcpu as arm_vcpu, vgic
from kvmsnap.arch.aarch64.decode import reg_name
from kvmsnap.arch.aarch64.vcpu import sysreg_id
from kvmsnap.kvm import lib, max_vcpus


#: ID registers that describe the CPU (KVM keeps the host's on older kernels and refuses a write
#: of another value); MAY_DIFFER of them: a revision or implementation-defined detail that
#: software does not branch on, kept at the host's value with a warning (docs/restore.md).
ID_REGS = {"MIDR_EL1": sysreg_id(3, 0, 0, 0, 0), "REVIDR_EL1": sysreg_id(3, 0, 0, 0, 6),
           "AIDR_EL1": sysreg_id(3, 1, 0, 0, 7), "CLIDR_EL1": sysreg_id(3, 1, 0, 0, 1),
           "CTR_EL0": sysreg_id(3, 3, 0, 0, 1)}
MAY_DIFFER = {ID_REGS["REVIDR_EL1"], ID_REGS["AIDR_EL1"]}


@dataclass
class RestorePlan:
    """Per vCPU (in index order) the (id, value) registers to set, in saved order; what the host
    cannot take (``problems``) and what the policy let through (``warnings``)."""
    regs: list[list[tuple[int, bytes]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    allow_refused: bool = False     # a register KVM_SET_ONE_REG refuses is left out (warned), not fatal
    refused: set[int] = field(default_factory=set)      # ... those it refused (vcpu.restore_state)
    saved_msrs = None               # (x86's)


def check_host(snapshot, kvm, policy) -> RestorePlan:
    """Compare the saved vCPUs and vGIC with what this host's KVM lists and makes, naming every
    register it does not list and every ID register that differs and that it refuses to take; with
    ``policy.allow_missing_registers`` they are left out (warnings) instead."""
    vcpus = snapshot.vcpus
    plan = RestorePlan(allow_refused=policy.allow_missing_registers)
    limit = max_vcpus(kvm)
    if len(vcpus) > limit:
        plan.problems.append(f"{len(vcpus)} vCPUs, this host's KVM allows {limit}")
    try:
        listed, differing, gic_types = _host_registers(kvm, vcpus[0])
    except OSError as e:
        plan.problems.append(f"this host's KVM cannot make a vCPU with the saved features "
                             f"{vcpus[0].features} (KVM_ARM_VCPU_INIT / FINALIZE: {e.strerror})")
        return plan
    gic = vgic.saved_type(snapshot.devices["vgic"])
    if gic not in gic_types:
        plan.problems.append(f"the core's {vgic.NAMES.get(gic, f'vGIC type {gic}')}: this host's KVM cannot make "
                             f"one (it makes {', '.join(vgic.NAMES[t] for t in gic_types) or 'no vGIC'})")
    for v in vcpus:
        keep, left_out = [], []
        for reg_id, value in v.regs:
            if reg_id not in listed:
                left_out.append(f"vCPU {v.index}: {reg_name(reg_id)}: not listed by this host's KVM")
                continue
            if (checked := differing.get((reg_id, value))) is not None:
                words, refused = checked
                if reg_id in MAY_DIFFER:
                    plan.warnings.append(f"vCPU {v.index}: {words} (the host's kept: it may differ)")
                    continue
                if refused:
                    left_out.append(f"vCPU {v.index}: {words}")
                    continue
            keep.append((reg_id, value))
        if left_out and policy.allow_missing_registers:
            plan.warnings += [d + " (not restored)" for d in left_out]
        else:
            plan.problems += left_out
        plan.regs.append(keep)
    return plan


def _host_registers(kvm, saved):
    """The register ids this host's KVM lists for a vCPU like ``saved``; for each of its ID
    registers that differs from the host's, {(id, saved value): (the difference in words, whether
    this KVM refuses the saved value: KVM_SET_ONE_REG on a scratch vCPU)}; the vGIC types it makes."""
    vm = kvm.create_vm()
    try:
        gic_types = [t for t in vgic.NAMES if vm.can_create_device(t)]
        vcpu = vm.create_vcpu(0)
        try:
            target, _ = vm.arm_preferred_target()
            regs = dict(saved.regs)
            arm_vcpu.init(vcpu, target, saved.features, regs.get(lib.KVM_REG_ARM64_SVE_VLS))
            listed = set(vcpu.get_reg_list())
            differing = {}
            for reg_id in ID_REGS.values():
                if reg_id not in listed or reg_id not in regs:
                    continue
                host = vcpu.get_one_reg(reg_id)
                if host == regs[reg_id]:
                    continue
                words = arm_vcpu.differs(reg_id, host, regs[reg_id])
                try:
                    vcpu.set_one_reg(reg_id, regs[reg_id])
                    differing[reg_id, regs[reg_id]] = (words, False)
                except OSError as e:
                    differing[reg_id, regs[reg_id]] = (f"{words} (refused by this host's KVM: {e.strerror})", True)
            return listed, differing, gic_types
        finally:
            vcpu.close()
    finally:
        vm.close()
