"""Restore: a validated core back into a new VM, every register set checked by reading it back.
The architecture says what to check and in which order to set things (for x86:
``kvmsnap.arch.x86_64.host``, ``.vm`` and ``.vcpu``; docs/restore.md gives the order and its
sources); this module orders the whole:

1. validate the whole file and check this host (nothing is created before both pass);
2. map (or read) guest RAM from the full core, write each increment's pages over it (a chain of
   increments), and build the machine;
3. VM-wide device state, then each vCPU's state, then read every vCPU back;
4. tell a guest using kvmclock that it was stopped (KVM_KVMCLOCK_CTRL; EINVAL: it does not);
5. log the pages the guest writes from now on, so that a save can be an increment of this core.
"""
import dataclasses
import errno
from dataclasses import dataclass

from kvmsnap import arch
from kvmsnap.errors import KvmsnapError
from kvmsnap.formats.kvmsnap import read_core, state_blake3
from kvmsnap.kvm import Cap, Kvm, KvmError
from kvmsnap.memory.ram import GuestRam, LeaseUnavailable
from kvmsnap.state import Base, Snapshot
from kvmsnap.vmm import Machine


class RestoreError(KvmsnapError):
    """The core cannot be restored on this host; the message lists every reason, one per item."""


@dataclass(frozen=True)
class Policy:
    """What to do instead of refusing (each default: refuse), and how to bring RAM in."""
    allow_missing_msrs: bool = False       # drop MSRs this host's KVM does not list
    allow_missing_features: bool = False   # clear CPUID features this host lacks from the guest's table
    memory: str = "background"             # guest RAM: "lazy" (mapped from the core copy-on-write), "eager"
    #                                        (read now) or "background" (mapped, and copied in by a thread)


def restore(core_path, console, policy: Policy) -> tuple[Machine, list[str]]:
    """A machine holding the core's state, read back and checked, its vCPUs not yet run; and the
    warnings of what the policy let through."""
    with read_core(core_path) as snapshot:
        return build_machine(snapshot, console, policy)


def build_machine(snapshot: Snapshot, console, policy: Policy) -> tuple[Machine, list[str]]:
    """:func:`restore` for a snapshot already read."""
    host = arch.live(arch.by_name(snapshot.arch), "host")
    kvm = Kvm()
    try:
        plan = host.check_host(snapshot.vcpus, kvm, allow_missing_msrs=policy.allow_missing_msrs,
                               allow_missing_features=policy.allow_missing_features)
    finally:
        kvm.close()
    if plan.problems:
        raise RestoreError(_listing(snapshot.info.path, plan.problems))
    full, *increments = snapshot.memory.layers()
    slots = [(s, full.slot_offset(s.slot)) for s in full.slots()]
    lease_warning = []
    try:
        try:
            ram = (GuestRam.load_file if policy.memory == "eager" else GuestRam.map_file)(full.fileno(), slots)
        except LeaseUnavailable as e:
            policy = dataclasses.replace(policy, memory="eager")
            lease_warning = [f"{full.path}: guest RAM read now instead of mapped from the file: it cannot be held "
                             f"under a read lease ({e}), so a change to it could reach the guest"]
            ram = GuestRam.load_file(full.fileno(), slots)
    except OSError as e:
        raise KvmsnapError(f"{full.path}: cannot {'read' if policy.memory == 'eager' else 'map'} "
                           f"{snapshot.config.mem_size >> 20} MiB of guest RAM: {e.strerror}") from None
    try:
        for increment in increments:
            _apply(ram, increment)
    except OSError as e:
        ram.close()
        raise KvmsnapError(f"{increment.path}: cannot read its pages: {e.strerror}") from None
    restored = {i for i, _ in plan.msrs[0]}
    machine = Machine(snapshot.config, console, memory=ram,       # a later save keeps the order
                      saved_msrs=[i for i, _ in snapshot.vcpus[0].msrs if i in restored])
    try:
        warnings = lease_warning + plan.warnings + _restore_state(machine, snapshot, plan)
        for name, model in machine.device_models.items():
            if name in snapshot.devices:        # a format 1.0 core has no cmos or pci: reset state
                model.load_state_bytes(snapshot.devices[name])
        info = snapshot.info
        machine.dirty.start(Base(info.path, info.elf.file_size, state_blake3(info.path, info.elf)))
        if policy.memory == "background":
            ram.populate_in_background()
        return machine, warnings
    except BaseException:
        machine.close()
        raise


def _apply(ram: GuestRam, increment) -> None:
    """An increment's changed runs over the RAM of its base: their data, and zeros for their holes."""
    for extent in increment.extents():
        at = extent.start
        for start, end in [*increment.data_runs(extent.start, extent.end), (extent.end, extent.end)]:
            if start > at:
                ram.zero(at, start - at)
            if end > start:
                ram.read_file(increment.fileno(), extent.backing + start - extent.start, start, end - start)
            at = end


def _restore_state(machine: Machine, snapshot: Snapshot, plan) -> list[str]:
    live = machine.arch
    live.vm.restore_devices(machine.vm, snapshot.devices)
    can_scale_tsc = bool(machine.kvm.check_extension(Cap.TSC_CONTROL))
    warnings, problems = [], []
    for vcpu, saved, table, msrs in zip(machine.vcpus, snapshot.vcpus, plan.cpuid, plan.msrs):
        try:
            warnings += live.vcpu.restore_state(vcpu, saved, table, msrs, can_scale_tsc)
        except arch.RegisterRefused as e:
            raise RestoreError(str(e)) from None
    for vcpu, saved, msrs in zip(machine.vcpus, snapshot.vcpus, plan.msrs):
        differ, changed = live.vcpu.verify_state(vcpu, saved, msrs)
        problems += differ
        warnings += changed
    if problems:
        raise RestoreError(_listing(snapshot.info.path, problems))
    if machine.assist:
        for vcpu, saved in zip(machine.vcpus, snapshot.vcpus):
            machine.assist.adopt(vcpu, saved)
    for vcpu in machine.vcpus:
        try:
            vcpu.kvmclock_ctrl()
        except KvmError as e:
            if e.errno != errno.EINVAL:       # EINVAL: the guest has no kvmclock page
                raise
    return warnings


def _listing(path: str, problems: list[str]) -> str:
    return f"{path}: cannot restore on this host: " + "; ".join(problems)
