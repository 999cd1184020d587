"""Real cores for the inspect/mem/diff tests: kvmsnap saves, QEMU dump-guest-memory (x86-64 on KVM,
aarch64 under TCG), gdb gcore and kernel process cores; and what gdb and lldb say about them."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import RunningGuest, run_kvmsnap, seconds
from coretools import gdb_for
from kvmsnap.samples import SAMPLES

HERE = os.path.dirname(os.path.abspath(__file__))
ARM64_SOURCE = os.path.join(HERE, "guests", "arm64_tiny.S")
# lldb embeds Debian's Python, which finds its home through PATH (so not a pyenv python3 before it)
# and looks for lldb's module in the wrong place (`lldb -P`): show it both.
LLDB_ENV = dict(os.environ, PATH="/usr/bin:/bin",
                PYTHONPATH=":".join(glob.glob("/usr/lib/llvm-*/lib/python3*/dist-packages")))


def qmp_dumps(argv, dumps, ready, timeout=60):
    """Start QEMU (``argv``) with a QMP socket, wait for ``ready()``, stop the guest and write each
    ``(path, paging)`` of ``dumps`` with dump-guest-memory; then quit."""
    sock = os.path.join(os.path.dirname(dumps[0][0]), "qmp.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen(argv + ["-display", "none", "-nodefaults", "-qmp",
                                    f"unix:{sock},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + seconds(timeout)
        while not os.path.exists(sock) or not ready():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU guest did not get ready"
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            f = s.makefile("rw")

            def cmd(name, **args):
                f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        assert "error" not in reply, reply
                        return reply
            f.readline()
            cmd("qmp_capabilities")
            cmd("stop")
            for path, paging in dumps:
                cmd("dump-guest-memory", paging=paging, protocol=f"file:{path}")
            cmd("quit")
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def qemu_x86_dumps(directory, sample="smp", smp=2, mem="128M") -> dict:
    """{"paging-off": path, "paging-on": path} of a sample guest under QEMU/KVM."""
    console = os.path.join(directory, f"{sample}.qemu.console")
    paths = {mode: os.path.join(directory, f"{sample}-qemu-{mode}.core")
             for mode in ("paging-off", "paging-on")}
    qmp_dumps(["qemu-system-x86_64", "-accel", "kvm", "-m", mem, "-smp", str(smp),
               "-no-reboot", "-serial", f"file:{console}", "-kernel", SAMPLES[sample].path],
              [(paths["paging-off"], False), (paths["paging-on"], True)],
              lambda: os.path.exists(console) and open(console, "rb").read().count(b"\n") >= 4)
    return paths


def arm64_dump(directory) -> str:
    """A QEMU dump (paging off) of tests/guests/arm64_tiny.S built here and run under TCG."""
    obj, image = os.path.join(directory, "arm64_tiny.o"), os.path.join(directory, "arm64_tiny.elf")
    subprocess.run(["aarch64-linux-gnu-as", "-o", obj, ARM64_SOURCE], check=True)
    subprocess.run(["aarch64-linux-gnu-ld", "-Ttext=0x40080000", "-o", image, obj], check=True)
    path = os.path.join(directory, "arm64-qemu.core")
    started = time.monotonic()
    qmp_dumps(["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg",
               "-m", "64M", "-kernel", image], [(path, False)],
              lambda: time.monotonic() - started > 1.0)
    return path


def kvmsnap_save(tmp_path, sample, *paths, wait_lines=2, pause=0.0, run_args=()) -> list[str]:
    """Run ``sample`` (with ``run_args``) under kvmsnap and save it to each of ``paths`` (``pause`` s apart)."""
    g = RunningGuest(tmp_path, sample, *run_args, sock=tmp_path / f"{sample}.sock",
                     console=tmp_path / f"{sample}.console")
    try:
        g.wait_lines(wait_lines)
        for i, path in enumerate(paths):
            if i:
                time.sleep(pause)
            last = i == len(paths) - 1
            r = run_kvmsnap("save", "--control", g.sock, path, *(["--quit"] if last else []))
            assert r.returncode == 0, r.stderr
    finally:
        g.kill()
    return [str(p) for p in paths]


THREADS = "import os, threading, time\n" \
          "for _ in range(2): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n" \
          "time.sleep(0.3)\n"


def gcore(directory, argv=(sys.executable, "-c", THREADS + "time.sleep(60)"), name="gcore.core") -> str:
    """gdb's gcore of ``argv``, a process that sleeps (by default a three-thread Python process)."""
    proc = subprocess.Popen(argv)
    try:
        time.sleep(0.6)
        path = os.path.join(directory, name)
        subprocess.run(["gdb", "-batch", "-nx", "-p", str(proc.pid), "-ex", f"gcore {path}"],
                       capture_output=True, check=True, timeout=seconds(60))
        return path
    finally:
        proc.kill()
        proc.wait()


def kernel_core(directory) -> str | None:
    """A core the kernel writes for a three-thread Python process killed by SIGABRT, or None
    when core_pattern pipes to a handler (then no file appears here)."""
    pattern = open("/proc/sys/kernel/core_pattern").read().strip()
    if pattern.startswith("|"):
        return None
    subprocess.run(["bash", "-c", f"ulimit -c unlimited; cd {directory} && exec {sys.executable} "
                    f"-c '{THREADS}os.abort()'"], capture_output=True, timeout=seconds(60))
    name = os.path.basename(pattern.replace("%p", "*").replace("%e", "*").replace("%t", "*"))
    found = glob.glob(os.path.join(directory, name + "*")) if "/" not in pattern else \
        glob.glob(pattern.replace("%p", "*").replace("%e", "*").replace("%t", "*") + "*")
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# gdb's view

def gdb_registers(core) -> dict[int, dict]:
    """{lwp: {register: value}} as gdb reads the core (tests/gdb_registers.py)."""
    r = subprocess.run([gdb_for(core), "-batch", "-nx", "-c", str(core), "-x",
                        os.path.join(HERE, "gdb_registers.py")],
                       capture_output=True, text=True, timeout=120)
    line = next(l for l in r.stdout.splitlines() if l.startswith("REGISTERS "))
    return {int(k): v for k, v in json.loads(line[len("REGISTERS "):]).items()}


def lldb_registers(core) -> dict[int, dict]:
    """{tid: {register: value}} as lldb reads the core (tests/lldb_registers.py)."""
    r = subprocess.run(["lldb", "--batch", "-c", str(core), "-o",
                        f"command script import {os.path.join(HERE, 'lldb_registers.py')}"],
                       capture_output=True, text=True, timeout=120, env=LLDB_ENV)
    lines = [l for l in r.stdout.splitlines() if l.startswith("REGISTERS ")]
    assert r.returncode == 0 and lines and not r.stderr, (r.stdout[-2000:], r.stderr[-2000:])
    return {int(k): v for k, v in json.loads(lines[0][len("REGISTERS "):]).items()}


def gdb_read(core, address: str, length: int, tmp) -> bytes:
    """``length`` bytes at ``address`` (a gdb expression) read by gdb from the core."""
    out = os.path.join(str(tmp), "gdb.bin")
    r = subprocess.run([gdb_for(core), "-batch", "-nx", "-c", str(core), "-ex",
                        f"dump binary memory {out} ({address}) ({address})+{length}"],
                       capture_output=True, text=True, timeout=60)
    assert os.path.exists(out), r.stderr
    data = open(out, "rb").read()
    os.unlink(out)
    return data


def have(*tools) -> bool:
    return all(shutil.which(t) for t in tools)


def core_of(kind, cores):
    """The core of ``kind`` (kvmsnap-smp, kvmsnap-fpu, kvmsnap-arm64(-sve), qemu-x86-paging-off/-on, qemu-arm64,
    gcore, kernel), built on first use into the session cache of the ``cores`` fixture (conftest);
    skips the test when the tools it needs are missing."""
    cache, factory = cores
    if kind not in cache:
        d = factory.mktemp(kind)
        if kind in ("kvmsnap-smp", "kvmsnap-fpu"):
            cache[kind] = kvmsnap_save(d, kind.split("-")[1], d / f"{kind}.core")[0]
        elif kind.startswith("qemu-x86"):
            if not have("qemu-system-x86_64"):
                pytest.skip("qemu-system-x86 is installed by .ci/setup")
            paths = qemu_x86_dumps(str(d))
            cache["qemu-x86-paging-off"] = paths["paging-off"]
            cache["qemu-x86-paging-on"] = paths["paging-on"]
        elif kind == "qemu-arm64":
            if not have("qemu-system-aarch64", "aarch64-linux-gnu-as", "gdb-multiarch"):
                pytest.skip("qemu-system-arm, binutils-aarch64-linux-gnu, gdb-multiarch: .ci/setup")
            cache[kind] = arm64_dump(str(d))
        elif kind.startswith("kvmsnap-arm64"):  # the aarch64 format, offline: a synthetic state (tests/synthetic.py)
            from synthetic import make_arm64_state, write
            cache[kind] = write(make_arm64_state(sve=kind.endswith("-sve")), d / "arm64.core").path
        elif kind == "gcore":
            cache[kind] = gcore(str(d))
        elif kind == "kernel":
            cache[kind] = kernel_core(str(d))
            if cache[kind] is None:
                pytest.skip("core_pattern pipes to a handler: no kernel core file")
    return cache[kind]
