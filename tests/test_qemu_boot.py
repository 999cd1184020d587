"""QEMU boots the very same sample images through their PVH note (our benchmarks' peer)."""
import shutil
import subprocess
import time

import pytest

from conftest import needs_kvm, seconds
from kvmsnap.samples import SAMPLES

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [needs_kvm, pytest.mark.skipif(not QEMU, reason="qemu-system-x86 is installed by .ci/setup")]


def qemu_lines(tmp_path, sample, n, mem="256M", timeout=60):
    """Boot ``sample`` in QEMU and return its first ``n`` console lines."""
    console = tmp_path / f"{sample}.qemu.console"
    proc = subprocess.Popen([QEMU, "-accel", "kvm", "-m", mem, "-display", "none", "-nodefaults", "-no-reboot",
                             "-serial", f"file:{console}", "-kernel", SAMPLES[sample].path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + seconds(timeout)
    try:
        while time.monotonic() < deadline:
            lines = console.read_text(errors="replace").split("\n")[:-1] if console.exists() else []
            if len(lines) >= n:
                return lines[:n]
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        raise AssertionError(f"QEMU printed only {lines}")
    finally:
        proc.kill()
        proc.wait()


def test_qemu_boots_counter(tmp_path):
    assert qemu_lines(tmp_path, "counter", 3) == ["tick 0", "tick 1", "tick 2"]


def test_qemu_boots_memtest(tmp_path):
    lines = qemu_lines(tmp_path, "memtest", 3)
    assert lines[0].startswith("memtest range 0x")
    assert lines[1].startswith("memtest round 0 ok") and lines[2].startswith("memtest round 1 ok")
