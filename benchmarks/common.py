"""Helpers shared by the benchmarks: timing, medians, QEMU and kvmsnap processes, result tables."""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU = shutil.which("qemu-system-x86_64")


def build_guests() -> str:
    """Assemble the benchmark guests; returns their directory."""
    out = os.path.join(tempfile.gettempdir(), "kvmsnap-bench-guests")
    subprocess.run(["make", "-s", "-C", os.path.join(HERE, "guests"), f"OUT={out}"], check=True)
    return out


def timed(cmd, **kw) -> float:
    """Seconds a command takes to run to completion."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def qemu_cmd(*args, mem="64M") -> list[str]:
    return [QEMU, "-accel", "kvm", "-m", mem, "-display", "none", "-nodefaults", "-no-reboot", *args]


def median(values) -> float:
    return statistics.median(values)


class Qmp:
    """A minimal QMP client over a Unix socket."""

    def __init__(self, path: str, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()                                  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def cmd(self, name: str, **args) -> dict:
        self.file.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply.get("return", {})

    def events_until(self, name: str, timeout=600) -> dict:
        self.sock.settimeout(timeout)
        while True:
            msg = json.loads(self.file.readline())
            if msg.get("event") == name:
                return msg


def report(title: str, rows: list[dict], out_name: str) -> None:
    """Print rows as a table and store them under benchmarks/results/."""
    print(f"\n== {title}")
    keys = list(rows[0])
    print("  ".join(f"{k:>14}" for k in keys))
    for r in rows:
        print("  ".join(f"{r[k]:>14.4g}" if isinstance(r[k], float) else f"{str(r[k]):>14}" for k in keys))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", out_name), "w") as f:
        json.dump(rows, f, indent=2)


def kvmsnap_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "kvmsnap", *map(str, args)]


# --- helpers for the save/restore benchmarks ---------------------------------------------------------

MiB = 1 << 20


def parse_size(text: str) -> int:
    """256M, 1G, 4GiB, 1073741824 → bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    return int(t[:len(t) - len(unit)]) * units[unit]


def size_label(n: int) -> str:
    return f"{n >> 30}G" if n % (1 << 30) == 0 else f"{n >> 20}M"


def file_sizes(path: str) -> tuple[int, int]:
    """(apparent size, bytes allocated on disk) of a file."""
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def fsync_path(path: str) -> float:
    """fsync an existing file; returns the seconds it took."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def complete_lines(path: str) -> list[str]:
    """The newline-terminated lines of a (console) file so far."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").split("\n")[:-1]


def wait_until(predicate, timeout: float, what: str, proc=None, interval: float = 0.002):
    """Poll ``predicate()`` until it returns something true; returns that. Fails after ``timeout`` s, or
    at once when ``proc`` (a Popen) has ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process ended (exit {proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_console_line(path: str, needle: str, timeout: float, proc=None, after: int = 0) -> int:
    """Wait for a complete console line containing ``needle`` at index >= ``after``; returns its index."""
    def find():
        lines = complete_lines(path)
        for i in range(after, len(lines)):
            if needle in lines[i]:
                return i + 1          # +1 so that index 0 is "true"
        return 0
    return wait_until(find, timeout, f"{needle!r} on {path}", proc) - 1


def stop_process(proc, grace: float = 10.0) -> None:
    """End a child process for sure: wait ``grace`` s for it to end on its own, then SIGKILL."""
    if proc is None or proc.returncode is not None:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_process(proc) -> None:
    """SIGKILL a child process (if still there) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that every ``finally`` (killing guests, removing files) runs."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


#: The console line that says a sample guest is going (memtest: all of its RAM has been written).
READY = {"counter": "tick 1", "memtest": "memtest round 0 ok"}


def sweep_arguments(doc: str, per: str, dir_help: str):
    """Parse the options shared by the save and restore sweeps; returns (args, guests, sizes, use_qemu)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256M,1G,4G", help="guest RAM sizes, comma-separated [%(default)s]")
    ap.add_argument("--guests", default="counter,memtest", help="sample guests, comma-separated [%(default)s]")
    ap.add_argument("--runs", type=int, default=3, help=f"{per} per VMM, guest and size [%(default)s]")
    ap.add_argument("--dir", help=dir_help)
    ap.add_argument("--no-qemu", action="store_true", help="kvmsnap only")
    args = ap.parse_args()
    exit_on_sigterm()
    guests = args.guests.split(",")
    for g in guests:
        if g not in READY:
            ap.error(f"--guests: {g!r} is not one of {', '.join(READY)}")
    use_qemu = bool(QEMU) and not args.no_qemu
    if not use_qemu:
        print("QEMU not used (not found, or --no-qemu): no ratios", file=sys.stderr)
    return args, guests, [parse_size(s) for s in args.sizes.split(",")], use_qemu


def sweep(prefix: str, work_dir, guests, sizes, one) -> tuple[list[dict], float]:
    """``one(guest, mem, work)`` for every guest and size in a scratch directory removed at the end;
    returns all rows and the seconds taken."""
    work = tempfile.mkdtemp(prefix=prefix, dir=work_dir)
    rows, started = [], time.monotonic()
    try:
        for guest in guests:
            for mem in sizes:
                print(f"-- {guest} {size_label(mem)}", file=sys.stderr, flush=True)
                rows += one(guest, mem, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, time.monotonic() - started
