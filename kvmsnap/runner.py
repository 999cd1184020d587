"""A running guest: the machine, its console, its control socket and its lifetime (``kvmsnap run``)."""
import contextlib
import json
import os
import signal
import sys
import threading
import time

from . import save
from .control import ControlServer
from .errors import InputError, Interrupted, KvmsnapError
from .keyboard import Keyboard
from .samples import SAMPLES
from .state import MachineConfig
from .vmm import Machine


def resolve_guest(guest: str) -> tuple[str, bytes, int | None]:
    """(display name, image bytes, flat load address) for a sample name or an image path."""
    sample = SAMPLES.get(guest)
    if sample is not None:
        path, flat_addr = sample.path, sample.flat_addr
        if not os.path.exists(path):
            raise KvmsnapError(f"sample {guest!r} is not built ({path} missing): reinstall kvmsnap "
                               "(pip install .) to assemble the sample guests")
    elif os.sep in guest or os.path.exists(guest):
        path, flat_addr = guest, None
    else:
        raise InputError(f"{guest!r} is neither a sample ({', '.join(SAMPLES)}) nor an image file")
    return guest, read_file(path, "image"), flat_addr


def read_file(path: str, what: str) -> bytes:
    """The bytes of an input file, or a one-line error naming it and ``what`` it was to be."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read {what}: {e.strerror}") from None


class GuestSession:
    """Runs one machine until the guest stops, ``quit`` arrives, or the user presses Ctrl-C."""

    def __init__(self, machine: Machine, control_path: str | None = None):
        """Takes ownership of ``machine``: it is closed here if the control socket cannot be made."""
        self.machine = machine
        self.notes: list[str] = []      # what the user should know about how the guest was started
        self.started = time.monotonic()
        self._quit = threading.Event()
        # pause, resume and save change the run state; one at a time, so that a resume from one
        # client cannot let the guest run while another client's save is reading it
        self._run_state = threading.Lock()
        self._one_save = threading.Lock()
        self._writers: set = set()      # background saves whose child is writing
        self._writers_done = threading.Event()
        try:
            self.control = ControlServer(control_path, self.handlers()) if control_path else None
        except BaseException:
            machine.close()
            raise
        machine.memory.on_lease_break = self._detach_ram

    @classmethod
    def boot(cls, guest: str, mem_size: int, vcpus: int | None, console, control_path=None,
             flat_addr: int | None = None, cmdline: str = "", initrd: str | None = None) -> "GuestSession":
        name, image, sample_flat = resolve_guest(guest)
        sample = SAMPLES.get(guest)
        initrd_data = read_file(initrd, "initrd") if initrd is not None else None
        config = MachineConfig(guest=name, mem_size=mem_size, vcpus=vcpus or (sample.vcpus if sample else 1))
        machine = Machine(config, console)
        try:
            notes = machine.boot(image, name, flat_addr if flat_addr is not None else sample_flat, cmdline,
                                 initrd_data)
        except BaseException:
            machine.close()
            raise
        session = cls(machine, control_path)
        session.notes = notes
        return session

    def handlers(self) -> dict:
        """Control commands (docs/control.md)."""
        return {"status": self._status, "pause": self._pause, "resume": self._resume, "quit": self._do_quit,
                "save": self._save, "type": self._type}

    def _status(self, _req, _emit) -> dict:
        m = self.machine
        return {"state": "paused" if m.paused else ("running" if m.running else "stopped"),
                "guest": m.config.guest, "mem_size": m.config.mem_size, "vcpus": m.config.vcpus,
                "uptime_s": round(time.monotonic() - self.started, 3), "pid": os.getpid(),
                "memory_check": m.memory_check.status() if m.memory_check else None,
                "first_run_ms": round((m.first_run_at - m.restore_began) * 1000, 3)
                if m.restore_began and m.first_run_at else None}

    def _pause(self, _req, _emit) -> dict:
        with self._run_state:
            return {"paused_ms": round(self.machine.pause() * 1000, 3)}

    def _resume(self, _req, _emit) -> dict:
        with self._run_state:
            self.machine.resume()
        return {}

    def _type(self, req, _emit) -> dict:
        text = req.get("text")
        if not isinstance(text, str):
            raise InputError('type needs "text": a string')
        return {"taken": self.machine.uart.receive(text.encode())}

    def _do_quit(self, _req, _emit) -> dict:
        self._quit.set()
        return {}

    def _save(self, req, emit) -> dict:
        """Pause, capture, write the core atomically, then resume (or end the guest with ``quit``);
        with ``background`` the guest resumes once a forked child holds its memory, and the reply
        comes when that child has written the file.  A failure leaves no file at ``path`` and the
        guest as it was (running unless it was paused)."""
        path, quit_after, background = req.get("path"), _flag(req, "quit"), _flag(req, "background")
        base = req.get("incremental_from")
        for name, value in (("path", path), ("incremental_from", base)):
            if (value is not None or name == "path") and not _is_file_name(value):
                raise InputError(f'save needs "{name}": an absolute file name (without NUL)')
        self._refuse_own_file(path)
        if quit_after and background:
            raise InputError('"quit" and "background" exclude each other: a guest that ends has no need to run '
                             "while its core is written")
        progress = _progress_lines(emit)
        self._memory_checked()
        with self._one_save:            # each counts the pages written since the one before
            if not background:
                with self._run_state:
                    return self._save_paused(path, quit_after, progress, base)
            t0 = time.perf_counter()
            self.machine.memory.wait_filled()       # the writer's copy of RAM has no userfaultfd behind it
            with self._run_state:
                with self._paused():
                    t_paused = time.perf_counter()
                    writer = save.BackgroundSave(self.machine, path, incremental_from=base)
                t_resumed = time.perf_counter()
            self._writers.add(writer)
            try:
                result = writer.wait(progress)
            finally:
                self._writers.discard(writer)
                self._writers_done.set()
        return {**_reply(result, t_resumed - t_paused, t0, quit=False, background=True, incremental_from=base),
                "resumed_ms": round((t_resumed - t0) * 1000, 3)}

    def _memory_checked(self) -> None:
        """Wait until a restored guest's RAM has been checked against its core's digests: a save
        must not give damaged memory a new, valid digest."""
        check = self.machine.memory_check
        if check is not None and check.wait():
            raise KvmsnapError("not saved: this guest was restored from a core whose memory is damaged ("
                               + "; ".join(check.messages()) + ")")

    def _detach_ram(self, detach) -> None:
        """The core guest RAM is mapped from is about to change: ``detach`` it once its memory is
        checked against its digests (the writer waits while the lease is held) and every save is
        complete (a background writer maps it too), with the guest paused."""
        if self.machine.memory_check is not None:
            self.machine.memory_check.wait()
        with self._one_save, self._run_state, self._paused():
            detach()

    @contextlib.contextmanager
    def _paused(self):
        """The guest paused, then running again unless it was paused before (hold ``_run_state``)."""
        was_paused = self.machine.paused
        self.machine.pause()
        try:
            yield
        finally:
            if not was_paused:
                self.machine.resume()

    def _refuse_own_file(self, path: str) -> None:
        """A save replaces its target: never one of the files this VMM itself uses."""
        try:
            target = os.stat(path)
        except OSError:
            return                      # nothing there yet (or nothing reachable: the save will say)
        own = {"control socket": self.control.path if self.control else None}
        sink = self.machine.uart.sink
        with contextlib.suppress(AttributeError, OSError, ValueError):
            own["console file"] = sink.fileno()
        for what, file in own.items():
            with contextlib.suppress(OSError, TypeError):
                st = os.stat(file)
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    raise InputError(f"{path} is this VMM's {what}: a save would replace it")

    def _save_paused(self, path: str, quit_after: bool, progress, base: str | None) -> dict:
        t0 = time.perf_counter()
        was_paused = self.machine.paused
        self.machine.pause()
        t_paused = time.perf_counter()
        try:
            try:
                result = save.save(self.machine, path, progress, incremental_from=base)
            except OSError as e:
                raise KvmsnapError(f"cannot write {path}: {e.strerror or e}") from None
        except BaseException:
            self._after_save(was_paused, False)
            raise
        paused = time.perf_counter() - t_paused
        self._after_save(was_paused, quit_after)
        return _reply(result, paused, t0, quit=quit_after, background=False, incremental_from=base)

    def _after_save(self, was_paused: bool, quit_after: bool) -> None:
        if quit_after:
            self._quit.set()            # vCPUs stay parked until they exit: no further instruction runs
        elif not was_paused:
            self.machine.resume()

    def run(self, paused: bool = False, keyboard: bool = False, save_on_fault: str | None = None) -> str | None:
        """Run until the end; returns the error that stopped the guest, or None. With ``keyboard``
        stdin is the guest's serial input; with ``save_on_fault`` a guest that stops with an error
        is saved there first, as it was when it stopped (the error then names the core)."""
        # SIGTERM and Ctrl-C only ask the loop below to end, so neither can interrupt start-up half
        # way (a KeyboardInterrupt inside Thread.start would leave a control thread nobody stops).
        interrupted = threading.Event()
        handlers = {signal.SIGTERM: lambda *_: self._quit.set()}
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:    # started in the background: keep ignoring
            handlers[signal.SIGINT] = lambda *_: (interrupted.set(), self._quit.set())
        old_handlers = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        keys = Keyboard(self.machine.uart.receive) if keyboard else None
        try:
            self.machine.start(paused=paused)
            if self.control:
                self.control.start()
            if keys:
                keys.start()
            while not self._quit.is_set() and not self.machine.wait(0.1):
                pass
            if self.machine.error and save_on_fault:
                self.machine.error += "; " + self._save_fault(save_on_fault)
        finally:
            if keys:
                keys.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.shutdown()
        if interrupted.is_set():
            raise Interrupted()
        return self.machine.error

    def _save_fault(self, path: str) -> str:
        """Save the stopped guest to ``path``; what became of it, for the error message."""
        try:
            result = save.save(self.machine, path)
        except (OSError, KvmsnapError) as e:
            return f"saving it to {path} failed: {getattr(e, 'strerror', None) or e}"
        return f"saved as it stopped to {result.path}"

    def shutdown(self) -> None:
        self.machine.stop()
        while self._writers:            # a background save's child still writing: the file completes
            self._writers_done.clear()
            if self._writers:
                paths = ", ".join(sorted(w.path for w in self._writers))
                print(f"kvmsnap: waiting for the background save to {paths}", file=sys.stderr, flush=True)
                self._writers_done.wait()
        if self.control:
            self.control.close()
            self.control = None
        self.machine.close()


def _reply(result, paused: float, t0: float, **flags) -> dict:
    """The fields of a save's reply (docs/control.md) common to both kinds."""
    return {"path": result.path, "paused_ms": round(paused * 1000, 3),
            "wall_ms": round((time.perf_counter() - t0) * 1000, 3), "bytes_written": result.bytes_written,
            "apparent_size": result.apparent_size, "size_on_disk": result.size_on_disk,
            "leftovers_removed": result.leftovers_removed, "state_blake3": result.state_blake3, **flags}


def _is_file_name(value) -> bool:
    return isinstance(value, str) and os.path.isabs(value) and "\0" not in value


def _flag(req: dict, name: str) -> bool:
    """A boolean field of a control request (absent: False); a string such as "false" is refused."""
    value = req.get(name, False)
    if not isinstance(value, bool):
        raise InputError(f'"{name}" must be true or false, not {json.dumps(value)}')
    return value


def _progress_lines(emit):
    """``progress(done, total)`` sending at most five progress lines a second through ``emit``."""
    last = [0.0]

    def progress(done, total):
        now = time.perf_counter()
        if now - last[0] >= 0.2 or done == total:
            last[0] = now
            emit({"done": done, "total": total})
    return progress
