"""Command-line behaviour: help, bad input gives one line on stderr and exit 2."""
import json
import os
import re

import pytest

from conftest import needs_kvm, run_kvmsnap, tiny_elf


def one_line_error(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvmsnap: ") and "Traceback" not in result.stderr
    for w in words:
        assert w in lines[0], lines[0]


COMMANDS = ("diff", "flatten", "inspect", "mem", "restore", "run", "samples", "save", "verify")


def test_help_lists_every_command_untruncated():
    r = run_kvmsnap("--help")
    assert r.returncode == 0 and r.stderr == ""
    commands = r.stdout.split("Commands:")[1]
    assert tuple(re.findall(r"^  (\w+) ", commands, re.M)) == COMMANDS, commands
    assert "..." not in commands and "(summarised as ranges of changed 4 KiB pages)." in " ".join(commands.split())
    bare = run_kvmsnap()                            # no arguments: the same help, on stdout, exit 0
    assert (bare.returncode, bare.stdout, bare.stderr) == (0, r.stdout, "")
    r = run_kvmsnap("run", "--help")
    assert r.returncode == 0 and "--mem" in r.stdout and "--control" in r.stdout and "--cpus" in r.stdout


def test_json_errors_are_json_on_stdout(core_path, tmp_path):
    """With --json an error is {"error", "exit"} on stdout too, with the same exit status and the
    same one line on stderr."""
    missing = tmp_path / "none.core"
    for args, status in [(("inspect", missing, "--json"), 1), (("diff", core_path, missing, "--json"), 1),
                         (("inspect", core_path, "--json", "--vcpu", "x"), 2),
                         (("inspect", "--json", "--bogus", core_path), 2), (("samples", "--json", "extra"), 2)]:
        r = run_kvmsnap(*args)
        error = json.loads(r.stdout)
        assert error["exit"] == status and error["error"] and set(error) == {"error", "exit"}, error
        assert r.returncode == status and r.stderr == f"kvmsnap: {error['error']}\n", (args, r.stderr)
    one_line_error(run_kvmsnap("inspect", missing), 1, str(missing))
    one_line_error(run_kvmsnap("inspect", "--", "--json"), 1, "--json")     # a file named --json


def test_inspect_all_and_raw(core_path):
    r = run_kvmsnap("inspect", core_path, "--all")
    assert r.returncode == 0 and "rip" in r.stdout, r.stderr
    r = run_kvmsnap("inspect", core_path, "--raw", "NT_PRSTATUS", "--json")
    assert r.returncode == 0 and bytes.fromhex(json.loads(r.stdout)["data"]), r.stderr


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


@needs_kvm
def test_kernel_arguments_need_a_linux_kernel(tmp_path):
    one_line_error(run_kvmsnap("run", "counter", "--append", "console=ttyS0"), 2, "command line", "Linux")
    one_line_error(run_kvmsnap("run", "counter", "--kernel", "/boot/vmlinuz"), 2, "not both")
    one_line_error(run_kvmsnap("run", "--kernel", tmp_path / "none", "--initrd", tmp_path / "no.cpio"), 2,
                   str(tmp_path / "none"))
    img = tiny_elf(tmp_path / "k.elf", b"\xf4")
    one_line_error(run_kvmsnap("run", "--kernel", img, "--initrd", tmp_path / "no.cpio"), 2,
                   str(tmp_path / "no.cpio"), "initrd")


def test_vmlinux_must_have_symbols(tmp_path):
    stripped = tiny_elf(tmp_path / "stripped.elf", b"\xf4")
    for command in ("run", "restore"):
        one_line_error(run_kvmsnap(command, "--vmlinux", stripped, "x"), 2, str(stripped), "no symbol table")
    one_line_error(run_kvmsnap("run", "--vmlinux", tmp_path / "none"), 2, str(tmp_path / "none"))
    (tmp_path / "text").write_text("not a kernel")
    one_line_error(run_kvmsnap("run", "--vmlinux", tmp_path / "text"), 2, "not an ELF64 file")


@pytest.mark.parametrize("cpus", ["0", "x"])
def test_bad_cpu_count(cpus):
    one_line_error(run_kvmsnap("run", "--cpus", cpus), 2)


def test_python_dash_m_works():
    r = run_kvmsnap("--version")
    assert r.returncode == 0 and "kvmsnap" in r.stdout
