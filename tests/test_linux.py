"""A real Linux guest under kvmsnap: Debian's kernel and a busybox initramfs (samples/linux), booted
at the kernel's PVH entry, saved mid-flight and restored on.

On a KVM that runs guest kernel mode natively (kvm_intel, kvm_amd: the KVM lab, where this runs on
demand: `scripts/lab x86_64 -- python3 -m pytest tests/test_linux.py`) the guest boots in seconds
and is saved at its shell. On kvm_pvm, this project's own backend, which emulates guest kernel
mode, kvmsnap assists the emulator (docs/kernel-mode-assist.md): the boot takes minutes, and the
guest is saved in the middle of its boot log (slow tests).
"""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import KVM_MODULE, ROOT, Restored, RunningGuest, needs_kvm, run_kvmsnap, save_quit, seconds
from coretools import assert_continuous, assert_debuggers_read, console_lines, gdb, sequence

# The guest's tty ends lines with \r\n, and the shell's prompt may share a line with a tick.
TICK = r".*?uptime-tick (\d+) ([\d.]+)\r?"

pytestmark = needs_kvm
native = pytest.mark.skipif(KVM_MODULE == "kvm_pvm", reason=(
    "boots to a shell in seconds only where guest kernel mode runs natively (kvm_intel, kvm_amd; run it "
    "in the lab: scripts/lab x86_64 -- python3 -m pytest tests/test_linux.py); kvm_pvm emulates it: "
    "test_emulated_boot_is_saved_mid_log_and_reaches_user_space covers it there"))
emulated = pytest.mark.skipif(KVM_MODULE != "kvm_pvm", reason=(
    "for a KVM that emulates guest kernel mode (kvm_pvm); where it runs natively the other tests cover it"))
PRINTK = re.compile(r"\[\s*(\d+\.\d+)\] ")


@pytest.fixture(scope="module")
def linux():
    """(vmlinux, initramfs) of samples/linux, built (or found in its cache) by samples/linux/build."""
    out = os.path.join(ROOT, "samples", "build", "linux")
    files = (os.path.join(out, "vmlinux"), os.path.join(out, "initramfs.cpio"))
    if not all(map(os.path.exists, files)):
        r = subprocess.run([os.path.join(ROOT, "samples", "linux", "build")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    return files


@pytest.fixture(scope="module")
def vmlinuz():
    """The same kernel as Debian ships it: a bzImage (samples/linux/build --bzimage, cached)."""
    path = os.path.join(ROOT, "samples", "build", "linux", "vmlinuz")
    if os.path.exists(path):
        return path
    r = subprocess.run([os.path.join(ROOT, "samples", "linux", "build"), "--bzimage"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


def boot(tmp_path, linux, cpus):
    vmlinux, initrd = linux
    return RunningGuest(tmp_path, f"--kernel={vmlinux}", "--initrd", initrd, "--append", "console=ttyS0",
                        "--mem", "256M", "--cpus", str(cpus), console=tmp_path / "linux.console")


def power_off(r, tries=3) -> int:
    """Type ``poweroff -f`` into the guest's shell; its exit code.  On kvm_pvm a process the shell
    starts sometimes dies with SIGSEGV (docs/kernel-mode-assist.md, "A defect of this host's KVM"):
    the shell then says ``Segmentation fault`` and the line is typed again, at most ``tries`` times."""
    def crashes():
        return sum("Segmentation fault" in line for line in r.lines())

    for _ in range(tries):
        before = crashes()
        assert r.request("type", text="poweroff -f\n") == {"ok": True, "taken": 12}
        deadline = time.monotonic() + seconds(120)
        while r.proc.poll() is None and crashes() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        if r.proc.poll() is not None or crashes() == before:     # ended, or timed out
            break
    return r.exit_code(10)


def printk_times(lines):
    return [float(m.group(1)) for m in (re.match(r"\[\s*(\d+\.\d+)\]", l) for l in lines) if m]


# 2 vCPUs: boots, saves and restores in the lab (2026-12-01, three runs), but two other runs stalled
# before the first uptime tick: not yet understood, so CI does not run it.
@native
@pytest.mark.parametrize("cpus", [1])
def test_linux_boots_saves_and_restores_with_its_ticks_going_on(tmp_path, linux, cpus):
    g = boot(tmp_path, linux, cpus)
    g.wait_lines(1, "^GUEST-READY", timeout=300)
    g.wait_lines(3, "^uptime-tick", timeout=60)
    lines = g.lines()
    assert f"smp: Brought up 1 node, {cpus} CPU" in "\n".join(lines)
    times = printk_times(lines)
    assert times == sorted(times) and times[-1] > 0, times
    core = tmp_path / "linux.core"
    save_quit(g, core)
    r = Restored(tmp_path, core, console=tmp_path / "restored.console")
    r.wait_lines(4, "^uptime-tick", timeout=120)
    assert r.request("type", text="echo typed-$((6 * 7))\n") == {"ok": True, "taken": 22}
    r.wait_lines(1, "typed-42", timeout=60)                # the restored shell ran the command
    r.request("type", text="poweroff -f\n")                 # through ACPI: the run ends, exit 0
    assert r.exit_code(60) == 0 and "reboot: Power down" in "\n".join(r.lines()), r.lines()[-3:]
    ticks = sequence(console_lines(g.console, r.console), TICK)
    assert_continuous(ticks)
    uptimes = [float(m.group(2)) for m in (re.fullmatch(TICK, l) for l in console_lines(g.console, r.console))
               if m]
    assert uptimes == sorted(uptimes), uptimes

    # What a crash analyst looks at first: paging, the IDT, the LAPIC timer, kernel code at the PC.
    out = run_kvmsnap("inspect", "--json", "--section", "control", "--section", "segments",
                      "--section", "lapic", "--section", "regs", "--section", "vmcoreinfo", core)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    release = re.search(r"Linux version (\S+)", "\n".join(lines)).group(1)
    assert summary["vmcoreinfo"]["fields"]["OSRELEASE"] == release
    for vcpu in (v["sections"] for v in summary["vcpus"]):
        assert vcpu["control"]["cr3"]["value"] and vcpu["control"]["cr0"]["value"] & 0x80000001 == 0x80000001
        assert vcpu["segments"]["idt"]["base"] >> 47 == 0x1FFFF and vcpu["segments"]["idt"]["limit"] == 0xFFF
        assert not vcpu["lapic"]["lvt"]["timer"]["masked"]
    text = gdb(core, "x/i $pc")
    assert re.search(r"=> 0xffffffff[0-9a-f]{8}", text), text


@native
def test_bzimage_boots_through_the_64_bit_boot_protocol(tmp_path, linux, vmlinuz):
    """The zero page carries the command line, the initrd and the e820 map to the kernel."""
    g = RunningGuest(tmp_path, f"--kernel={vmlinuz}", "--initrd", linux[1], "--append", "console=ttyS0 via=bzimage",
                     "--mem", "256M", console=tmp_path / "bzimage.console")
    g.wait_lines(1, "^GUEST-READY", timeout=300)
    log = "\n".join(g.lines())
    assert "Command line: console=ttyS0 via=bzimage" in log
    assert "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable" in log
    assert re.search(r"RAMDISK: \[mem 0x[0-9a-f]+-0x0*fffffff\]", log), log
    assert "ACPI: PM: (supports S0 S5)" in log and "ACPI Error" not in log
    g.request("type", text="reboot -f\n")                   # the ACPI reset register ends the run
    assert g.exit_code(60) == 0 and "reboot: Restarting system" in "\n".join(g.lines())


@emulated
@pytest.mark.slow
@pytest.mark.parametrize("cpus", [1, 2])
def test_emulated_boot_is_saved_mid_log_and_reaches_user_space(tmp_path, linux, vmlinuz, vmlinux_dbg, cpus):
    """Debian's bzImage, saved (--quit) while the kernel prints its boot log, restored: the log goes
    on with no gap and no repeated line, printk time keeps rising, and the boot reaches user space
    (GUEST-READY and uptime ticks, printed through system calls kvmsnap completes); poweroff ends
    the run.  gdb, crash and drgn read the core."""
    g = RunningGuest(tmp_path, f"--kernel={vmlinuz}", "--initrd", linux[1], "--append", "console=ttyS0",
                     "--mem", "256M", "--cpus", str(cpus), console=tmp_path / "linux.console")
    # After the kernel's VMCOREINFO is set up (a subsys initcall: drgn needs it), long before /init.
    g.wait_lines(1, "clocksource: Switched to clocksource", timeout=1200)
    assert "booting the vmlinux inside this bzImage at its PVH entry" in g.stderr()
    core = tmp_path / "linux.core"
    save_quit(g, core)
    # The core holds the guest's own syscall entry (in the kernel's text mapping), not kvmsnap's trap.
    out = run_kvmsnap("inspect", "--json", "--section", "msrs", core)
    assert out.returncode == 0, out.stderr
    lstar = {m["value"] for v in json.loads(out.stdout)["vcpus"] for m in v["sections"]["msrs"]
             if m["index"] == 0xC0000082}
    assert len(lstar) == 1 and 0xFFFFFFFF80000000 <= lstar.pop() < 0xFFFFFFFFC0000000, lstar
    assert_debuggers_read(core, vmlinux_dbg, cpus, "NET: Registered PF_NETLINK")
    r = Restored(tmp_path, core, console=tmp_path / "restored.console")
    r.wait_lines(2, "^uptime-tick", timeout=1800)
    assert power_off(r) == 0 and "reboot: Power down" in "\n".join(r.lines()), r.lines()[-3:]
    lines = console_lines(g.console, r.console)         # a line cut by the save goes on in the second
    saved = len(g.lines())                              # complete lines before the save
    assert lines[saved - 3:saved] != lines[saved:saved + 3], "the boot log repeats at the save"
    kernel = [line for line in lines if PRINTK.match(line)]
    assert all(len(PRINTK.findall(line)) == 1 for line in kernel), "bytes lost or repeated at the save"
    times = [float(PRINTK.match(line).group(1)) for line in kernel]
    assert times == sorted(times), "printk time went backwards across the restore"
    joined = "\n".join(lines)
    for milestone in ("NET: Registered PF_NETLINK", "Switched to clocksource kvm-clock", "Freeing unused kernel image", "Run /init as init process",
                      "GUEST-READY", f"smp: Brought up 1 node, {cpus} CPU"):
        assert joined.count(milestone) == 1, milestone
    ticks = sequence(console_lines(r.console), TICK)
    assert_continuous(ticks)
