"""Restore: a validated core back into a new VM, every register set checked by reading it back.
The architecture says what to check and in which order to set things (for x86:
``kvmsnap.arch.x86_64.host``, ``.vm`` and ``.vcpu``; docs/restore.md gives the order and its
sources); this module orders the whole:

1. check the named file's headers and notes against its digests, validate it, find and validate
   its bases, check theirs too and the standard notes against the private ones, and check this
   host (nothing is created before all pass);
2. map (or read) guest RAM from the full core, write each increment's pages over it (a chain of
   increments), check the memory against its digests (before the guest runs when RAM is read
   eagerly, else from a thread while it runs, stopping it on damage), and build the machine;
3. VM-wide device state and each vCPU's state (x86: devices first; arm64: the vGIC after the
   vCPUs), then read every vCPU back;
4. what the architecture does before the guest runs on (x86: tell a guest using kvmclock that it
   was stopped, KVM_KVMCLOCK_CTRL);
5. log the pages the guest writes from now on, so that a save can be an increment of this core.
"""
import time
from dataclasses import dataclass

from kvmsnap import arch, verify
from kvmsnap.errors import KvmsnapError
from kvmsnap.formats.kvmsnap import decode, state_blake3, with_base
from kvmsnap.formats.reader import parse_elf
from kvmsnap.kvm import Kvm
from kvmsnap.memory import userfault
from kvmsnap.memory.ram import GuestRam, LeaseUnavailable
from kvmsnap.state import Base, Snapshot
from kvmsnap.verify import MemoryCheck
from kvmsnap.vmm import Machine


class RestoreError(KvmsnapError):
    """The core cannot be restored on this host; the message lists every reason, one per item."""


@dataclass(frozen=True)
class Policy:
    """What to do instead of refusing (each default: refuse), and how to bring RAM in."""
    allow_missing_msrs: bool = False       # x86: drop MSRs this host's KVM does not list
    allow_missing_features: bool = False   # x86: clear CPUID features this host lacks from the guest's table
    allow_missing_registers: bool = False  # arm64: leave out registers this host's KVM does not list or refuses
    memory: str = "background"             # guest RAM: "lazy" (mapped from the core copy-on-write), "eager"
    #                                        (read now) or "background" (mapped, and copied in by a thread)
    verify: bool = True                    # check the core against its digests (KVMSNAP_DIGEST)


def restore(core_path, console, policy: Policy) -> tuple[Machine, list[str]]:
    """A machine holding the core's state, read back and checked, its vCPUs not yet run; and the
    warnings of what the policy let through."""
    began = time.monotonic()
    image = parse_elf(core_path)
    top = verify.check_file(image) if policy.verify else None
    if top is not None:         # the named file's own digests first: a damaged note is named as such
        _refuse_damage([top], [])
    with with_base(decode(image)) as snapshot:
        machine, warnings = build_machine(snapshot, console, policy, top)
    machine.restore_began = began
    return machine, warnings


def build_machine(snapshot: Snapshot, console, policy: Policy,
                  top: verify.FileCheck | None = None) -> tuple[Machine, list[str]]:
    """:func:`restore` for a snapshot already read (``top``: its own file's check, if made)."""
    checks = _check_integrity(snapshot, top) if policy.verify else []
    host = arch.live(arch.by_name(snapshot.arch), "host")
    kvm = Kvm()
    try:
        plan = host.check_host(snapshot, kvm, policy)
    finally:
        kvm.close()
    if plan.problems:
        raise RestoreError(_listing(snapshot.info.path, plan.problems))
    full, *increments = snapshot.memory.layers()
    slots = [(s, full.slot_offset(s.slot)) for s in full.slots()]
    layers = snapshot.memory.layers()
    notes = [f"{c.path}: not verified: {c.unchecked}" for c in checks if c.unchecked]
    ram, how = _guest_ram(snapshot, full, slots, policy.memory, notes)
    try:
        for increment in increments:
            _apply(ram, increment)
    except OSError as e:
        ram.close()
        raise KvmsnapError(f"{increment.path}: cannot read its pages: {e.strerror}") from None
    if how == "eager":
        memory_check = MemoryCheck(checks, [layer.fileno() for layer in layers])
        damage = memory_check.run()
        memory_check.close()
        if damage:
            ram.close()
            raise RestoreError(_damaged(damage))
    machine = Machine(snapshot.config, console, memory=ram, saved_msrs=plan.saved_msrs, saved_vcpus=snapshot.vcpus)
    try:
        warnings = notes + plan.warnings + _restore_state(machine, snapshot, plan)
        for name, model in machine.device_models.items():
            if name in snapshot.devices:        # a format 1.0 core has no cmos or pci: reset state
                model.load_state_bytes(snapshot.devices[name])
        info = snapshot.info
        machine.dirty.saved(Base(info.path, info.elf.file_size, state_blake3(info.path, info.elf)))
        ram.when_fill_fails(lambda error: machine.fail(
            f"{error}: the guest was stopped, having maybe run on zeros in place of what was not read"))
        if how == "populate":
            ram.populate_in_background()
        if how != "eager":
            machine.memory_check = MemoryCheck(checks, [layer.fileno() for layer in layers])
            machine.memory_check.start(lambda damage: machine.fail(
                f"{_damaged([damage])}: the guest was stopped, having run on that memory"))
        return machine, warnings
    except BaseException:
        machine.close()
        raise


def _guest_ram(snapshot: Snapshot, full, slots, memory: str, notes: list[str]) -> tuple[GuestRam, str]:
    """Guest RAM brought in from the core ``full`` as ``memory`` asks, and how it was, which may
    differ (each change added to ``notes``): "fill" (background, userfaultfd), "populate"
    (background, mapped and copied in), "lazy" (mapped) or "eager" (read)."""
    how = {"background": "fill"}.get(memory, memory)
    try:
        try:
            if how == "fill":
                try:
                    return GuestRam.fill_file(full.fileno(), full.path, slots), how
                except userfault.Unavailable as e:
                    how = "populate"
                    notes.append(f"guest RAM mapped from {full.path} and copied in by a thread (each page the "
                                 f"guest writes first is a copy-on-write fault) instead of filled in behind it: {e}")
            if how != "eager":
                return GuestRam.map_file(full.fileno(), slots), how
        except LeaseUnavailable as e:
            how = "eager"
            notes.append(f"{full.path}: guest RAM read now instead of from the file while the guest runs: it cannot "
                         f"be held under a read lease ({e}), so a change to it could reach the guest")
        return GuestRam.load_file(full.fileno(), slots), how
    except OSError as e:
        raise KvmsnapError(f"{full.path}: cannot {'read' if how == 'eager' else 'map'} "
                           f"{snapshot.config.mem_size >> 20} MiB of guest RAM: {e.strerror}") from None


def _check_integrity(snapshot: Snapshot, top) -> list:
    """Each file's headers and notes checked against its digests, and the standard notes against
    the private ones: RestoreError naming all damage, else the checks (for the memory's)."""
    checks, disagree = verify.check_state(snapshot, top)
    _refuse_damage(checks, disagree)
    return checks


def _refuse_damage(checks: list, disagree: list[str]) -> None:
    damage = verify.problems(checks, disagree)
    if damage:
        raise RestoreError(_damaged(damage))


def _damaged(damage: list[str]) -> str:
    return "not restored: the core is not what was written: " + "; ".join(damage)


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
    """The VM-wide devices before or after the vCPUs as the architecture needs, every vCPU, every
    register read back; then what the architecture does before the guest runs on."""
    live = machine.arch
    if not live.vm.DEVICES_AFTER_VCPUS:
        live.vm.restore_devices(machine, snapshot.devices)
    warnings, problems = [], []
    for vcpu, saved in zip(machine.vcpus, snapshot.vcpus):
        try:
            warnings += live.vcpu.restore_state(vcpu, saved, plan, machine)
        except arch.RegisterRefused as e:
            raise RestoreError(f"{snapshot.info.path}: cannot restore on this host: {e}") from None
    if live.vm.DEVICES_AFTER_VCPUS:
        live.vm.restore_devices(machine, snapshot.devices)
    for vcpu, saved in zip(machine.vcpus, snapshot.vcpus):
        differ, changed = live.vcpu.verify_state(vcpu, saved, plan)
        problems += differ
        warnings += changed
    if problems:
        raise RestoreError(_listing(snapshot.info.path, problems))
    live.vcpu.before_running(machine, snapshot)
    return warnings


def _listing(path: str, problems: list[str]) -> str:
    return f"{path}: cannot restore on this host: " + "; ".join(problems)
