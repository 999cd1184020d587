"""Helpers shared by the benchmarks: timing, medians, QEMU and kvmsnap processes, result tables."""
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
