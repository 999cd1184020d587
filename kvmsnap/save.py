"""Saving a running machine: capture its state into a :class:`~kvmsnap.state.Snapshot` while every
vCPU is parked, then write the core file."""
import os

from kvmsnap import __version__
from kvmsnap.formats.layout import MAX_VIRTUAL_SEGMENTS
from kvmsnap.formats.writer import WriteResult, write_core
from kvmsnap.state import Snapshot


def capture(machine) -> Snapshot:
    """The whole machine; every vCPU must be parked (``Machine.pause``).  Its memory is the live
    RAM: write it before the guest runs again."""
    live = machine.arch
    vcpus = [live.vcpu.save_state(v, machine.saved_msrs, machine.vcpu_caps) for v in machine.vcpus]
    if machine.assist:
        for state in vcpus:
            machine.assist.as_guest_sees(state)
    devices = live.vm.save_devices(machine.vm)    # once every vCPU is parked: none changes them
    devices.update((name, model.state_bytes()) for name, model in machine.device_models.items())
    return Snapshot(arch=live.name, config=machine.config, vcpus=vcpus, devices=devices,
                    memory=machine.memory)


def save(machine, path: str, progress=None,
         max_virtual_segments: int = MAX_VIRTUAL_SEGMENTS) -> WriteResult:
    """Capture the paused ``machine`` and write it to ``path`` atomically."""
    return write_core(capture(machine), path, producer=f"kvmsnap {__version__}",
                      host_kernel=os.uname().release, progress=progress,
                      max_virtual_segments=max_virtual_segments)
