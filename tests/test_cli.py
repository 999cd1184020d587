"""Command-line behaviour: help, bad input gives one line on stderr and exit 2."""
import json
import os

import pytest

from conftest import needs_kvm, run_kvmsnap, tiny_elf


def one_line_error(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvmsnap: ") and "Traceback" not in result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_help_lists_commands():
    r = run_kvmsnap("--help")
    assert r.returncode == 0
    for cmd in ("run", "samples"):
        assert cmd in r.stdout
    r = run_kvmsnap("run", "--help")
    assert r.returncode == 0 and "--mem" in r.stdout and "--control" in r.stdout and "--cpus" in r.stdout


def test_samples_lists_built_images():
    r = run_kvmsnap("samples", "--json")
    assert r.returncode == 0, r.stderr
    rows = {s["name"]: s for s in json.loads(r.stdout)["samples"]}
    assert set(rows) == {"counter", "smp", "fpu", "timer", "memtest", "realmode"}
    for s in rows.values():
        assert s["built"] and os.path.getsize(s["path"]) > 0


def test_unknown_sample():
    one_line_error(run_kvmsnap("run", "nosuchguest"), 2, "nosuchguest")


def test_bad_image_path():
    one_line_error(run_kvmsnap("run", "/nonexistent/guest.elf"), 2, "/nonexistent/guest.elf")


def test_bad_memory_size_flag():
    one_line_error(run_kvmsnap("run", "--mem", "lots"), 2, "lots")


@needs_kvm
def test_wrong_architecture_elf(tmp_path):
    img = tiny_elf(tmp_path / "arm.elf", b"\0" * 4, machine=183)            # EM_AARCH64
    one_line_error(run_kvmsnap("run", img), 2, "x86-64", str(img))


@needs_kvm
def test_memory_too_small_for_image():
    one_line_error(run_kvmsnap("run", "memtest", "--mem", "1M"), 2)
    one_line_error(run_kvmsnap("run", "counter", "--mem", "2M"), 2, "--mem")


@pytest.mark.parametrize("cpus", ["0", "x"])
def test_bad_cpu_count(cpus):
    one_line_error(run_kvmsnap("run", "--cpus", cpus), 2)


def test_python_dash_m_works():
    r = run_kvmsnap("--version")
    assert r.returncode == 0 and "kvmsnap" in r.stdout
