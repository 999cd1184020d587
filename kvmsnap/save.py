"""Saving a running machine: capture its state into a :class:`~kvmsnap.state.Snapshot` while every
vCPU is parked, then write the core file, at once (:func:`save`) or from a forked child that keeps a
copy-on-write view of guest RAM while the guest runs on (:class:`BackgroundSave`); whole, or as an
increment of the last core the machine saved or restored (what the guest wrote since:
kvmsnap.memory.dirty)."""
import contextlib
import dataclasses
import json
import os
import signal
import stat

from kvmsnap import __version__
from kvmsnap.errors import InputError, KvmsnapError
from kvmsnap.formats.kvmsnap import read_core, state_blake3
from kvmsnap.formats.layout import MAX_VIRTUAL_SEGMENTS
from kvmsnap.formats.reader import CoreFormatError, parse_elf
from kvmsnap.formats.writer import WriteResult, temp_path, write_core
from kvmsnap.memory.dirty import compare
from kvmsnap.state import Base, Snapshot


def capture(machine) -> Snapshot:
    """The whole machine; every vCPU must be parked (``Machine.pause``).  Its memory is the live
    RAM: write it before the guest runs again."""
    live = machine.arch
    vcpus = [live.vcpu.save_state(v, machine) for v in machine.vcpus]
    if machine.assist:
        for state in vcpus:
            machine.assist.as_guest_sees(state)
    devices = live.vm.save_devices(machine)       # once every vCPU is parked: none changes them
    devices.update((name, model.state_bytes()) for name, model in machine.device_models.items())
    return Snapshot(arch=live.name, config=machine.config, vcpus=vcpus, devices=devices,
                    memory=machine.memory)


def save(machine, path: str, progress=None, max_virtual_segments: int = MAX_VIRTUAL_SEGMENTS,
         incremental_from: str | None = None) -> WriteResult:
    """Capture the paused ``machine`` and write it to ``path`` atomically; with
    ``incremental_from`` only the pages written since that core (:func:`capture_for_save`)."""
    result = _write(capture_for_save(machine, incremental_from), path, progress, max_virtual_segments)
    _saved(machine, result)
    return result


def capture_for_save(machine, incremental_from: str | None) -> Snapshot:
    """:func:`capture`, the dirty log taken in the same pause; an increment of the core at
    ``incremental_from``, which must be the last this VMM saved or restored (InputError, with
    nothing changed, otherwise). Its changed pages are KVM's log where it was on since the base,
    else None: the writer compares RAM with the base (:func:`_write`)."""
    base = _base_named(machine, incremental_from) if incremental_from is not None else None
    machine.dirty.take()
    snapshot = capture(machine)
    if base is not None:
        snapshot.base, snapshot.changed = base, machine.dirty.changed()
    machine.dirty.saving(incremental=base is not None)
    return snapshot


def _base_named(machine, path: str) -> Base:
    last = machine.dirty.base
    if last is None:
        raise InputError(f"{path}: this VMM has not saved or restored a core yet, so no changes are known "
                         "(save a full core first)")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError(f"the base {path} is not a regular file")     # a FIFO would hold the VMM
        image = parse_elf(path)
        digest = state_blake3(path, image)
    except OSError as e:
        raise InputError(f"the base {path}: cannot open: {e.strerror}") from None
    except CoreFormatError as e:
        raise InputError(f"the base {e}") from None
    if (image.file_size, digest) != (last.size, last.state_blake3):
        raise InputError(f"{path} is not the last core this VMM saved or restored ({last.path}): an increment "
                         "holds the pages written since that one")
    return Base(os.path.abspath(path), image.file_size, digest)


def _saved(machine, result: WriteResult) -> None:
    """The next increment counts from the file just written."""
    machine.dirty.saved(Base(result.path, result.apparent_size, bytes.fromhex(result.state_blake3)))


def _write(snapshot: Snapshot, path: str, progress, max_virtual_segments: int) -> WriteResult:
    if snapshot.base is not None and snapshot.changed is None:
        base_path = snapshot.base.path
        try:
            with read_core(base_path) as base:
                if (base.info.elf.file_size, state_blake3(base_path, base.info.elf)) != \
                        (snapshot.base.size, snapshot.base.state_blake3):
                    raise KvmsnapError(f"cannot write {path}: its base {base_path} changed since the save began")
                snapshot.changed = compare(snapshot.memory, base.memory, snapshot.memory.slots())
        except (OSError, CoreFormatError) as e:
            raise KvmsnapError(f"cannot write {path}: its base {base_path} cannot be read to "
                               f"compare with: {getattr(e, 'strerror', None) or e}") from None
    return write_core(snapshot, path, producer=f"kvmsnap {__version__}", host_kernel=os.uname().release,
                      progress=progress, max_virtual_segments=max_virtual_segments)


class BackgroundSave:
    """A core of the paused ``machine`` written by a forked child.  The child's memory is a
    copy-on-write image of the parent's at the fork, so guest RAM stays as captured however the
    guest writes it once resumed (which the caller may do as soon as this returns).  ``wait``
    relays the child's progress and gives its result."""

    def __init__(self, machine, path: str, max_virtual_segments: int = MAX_VIRTUAL_SEGMENTS,
                 incremental_from: str | None = None):
        self.path = path
        self._machine = machine
        snapshot = capture_for_save(machine, incremental_from)
        read_fd, write_fd = os.pipe()
        try:
            self.pid = os.fork()
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            raise KvmsnapError(f"cannot write {path}: cannot start a writer process: {e.strerror}") from None
        if self.pid == 0:
            os.close(read_fd)
            _write_in_child(snapshot, path, write_fd, max_virtual_segments)
        os.close(write_fd)
        self._messages = os.fdopen(read_fd, "rb")

    def wait(self, progress=None) -> WriteResult:
        """The child's WriteResult once the file is complete; KvmsnapError if it failed or died (its
        temporary file removed: nothing is left at ``path``)."""
        result = error = None
        with self._messages:
            for line in self._messages:
                message = json.loads(line)
                if "done" in message and progress is not None:
                    progress(message["done"], message["total"])
                result = WriteResult(**message["result"]) if "result" in message else result
                error = message.get("error", error)
        _, status = os.waitpid(self.pid, 0)
        self._machine.memory.collapse_in_background()
        if result is not None and status == 0:
            _saved(self._machine, result)
            return result
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path(self.path, self.pid))
        if error is None:
            how = (f"was killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                   else f"exited with status {os.waitstatus_to_exitcode(status)}")
            error = f"the writer (pid {self.pid}) {how}"
        raise KvmsnapError(f"cannot write {self.path}: {error}; no file was left")


def _write_in_child(snapshot: Snapshot, path: str, fd: int, max_virtual_segments: int):
    """The forked writer: only this thread lives on, so it touches nothing another thread may have
    held locked at the fork (no stdio, no logging); it reports on ``fd`` and never returns."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # the VMM's handler would only set its quit flag
        result = _write(snapshot, path, lambda done, total: _send(fd, {"done": done, "total": total}),
                        max_virtual_segments)
        _send(fd, {"result": dataclasses.asdict(result)})
        code = 0
    except BaseException as e:      # noqa: BLE001 - whatever it was, the parent must hear of it
        with contextlib.suppress(BaseException):
            _send(fd, {"error": e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"})
    finally:
        os._exit(code)


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode() + b"\n"
    while data:
        data = data[os.write(fd, data):]
