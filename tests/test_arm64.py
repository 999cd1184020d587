"""kvmsnap on KVM/arm64 (the arm64 lab: scripts/lab aarch64 -- python3 -m pytest tests/test_arm64.py;
tests/test_lab.py runs it there): every arm64 sample guest saved at an arbitrary moment and restored
continues its console with no gap, repeat or MISMATCH; twenty save/restore cycles; a paused restore
saves the same state again; a register this KVM does not list, and an ID register it will not take,
are refused by name, then let through with --allow-missing-registers; a core whose vGIC (v3 or v2)
this KVM cannot make is refused by name; Debian's arm64 kernel with a
busybox initramfs (samples/linux/build --arch aarch64, run on the host first: tests/test_lab.py
does) boots, is saved and restored with its ticks going on. With KVMSNAP_XFER set, the cores are
left there for the host's gdb-multiarch and lldb (tests/test_lab.py)."""
import os
import platform
import re
import shutil
import subprocess
import time

import pytest

from conftest import KVM, ROOT, Restored, RunningGuest, run_kvmsnap, save_quit, save_restore_cycles, seconds
from coretools import assert_continuous, console_lines, notes_by_key, rewrite_core, sequence
from kvmsnap import notes as N
from kvmsnap.arch.aarch64.layouts import VGIC_V2, VGIC_V3, VgicState
from kvmsnap.formats.kvmsnap import read_core
from kvmsnap.kvm import Kvm, lib

pytestmark = pytest.mark.skipif(
    platform.machine() != "aarch64" or not KVM,
    reason="needs KVM/arm64: run it in the arm64 lab (scripts/lab aarch64 -- python3 -m pytest "
           "tests/test_arm64.py), as tests/test_lab.py does")

STREAMS = {"counter": [r"tick (\d+)"], "fpu": [r"fpu tick (\d+) ok"], "timer": [r"timer tick (\d+)"],
           "smp": [r"cpu0 tick (\d+)", r"cpu1 tick (\d+)"]}
BAD = ("MISMATCH", "EXCEPTION", "STALLED")
LINUX = os.path.join(ROOT, "samples", "build", "linux-aarch64")
TICK = r".*?uptime-tick (\d+) ([\d.]+)\r?"      # the guest's tty ends lines with \r\n
MIDR_EL1 = 0x6030_0000_0013_c000            # ARM64_SYS_REG(3, 0, 0, 0, 0)
UNLISTED = 0x6030_0000_0013_ffff            # ARM64_SYS_REG(3, 7, 15, 15, 7): IMPLEMENTATION DEFINED, no KVM lists it
TIMER_CNT = 0x6030_0000_0013_df1a           # KVM_REG_ARM_TIMER_CNT: the virtual count, moving on
PTIMER_CNT = 0x6030_0000_0013_df01          # KVM_REG_ARM_PTIMER_CNT: the physical count (listed from Linux 6.4)


def _xfer(core, name):
    if os.environ.get("KVMSNAP_XFER"):
        shutil.copy(core, os.path.join(os.environ["KVMSNAP_XFER"], name))


def _run_until_restored(tmp_path, core, console_before, n, *args):
    """Restore ``core`` and wait for ``n`` more console lines than ``console_before`` holds."""
    before = len(console_lines(console_before))
    r = Restored(tmp_path, core, *args, console=tmp_path / "restored.console")
    deadline = time.monotonic() + seconds(120)
    while len(console_lines(console_before, r.console)) < before + n:
        assert r.proc.poll() is None and time.monotonic() < deadline, r.why()
        time.sleep(0.05)
    return r


@pytest.mark.parametrize("sample", sorted(STREAMS))
def test_console_continues_without_gap_or_repeat(guest, tmp_path, sample):
    g = guest(sample, "--mem", "16M")
    g.wait_lines(3, "^" + STREAMS[sample][-1].split(" (")[0], timeout=120)
    time.sleep(0.013 * (os.getpid() % 7))          # an arbitrary moment within a tick
    core = tmp_path / f"{sample}.core"
    save_quit(g, core)
    r = _run_until_restored(tmp_path, core, g.console, 4)
    assert r.quit() == 0
    lines = console_lines(g.console, r.console)
    assert not any(b in line for line in lines for b in BAD), lines
    for stream in STREAMS[sample]:
        assert_continuous(sequence(lines, stream), start=None)
    _xfer(core, f"arm64-{sample}.core")


def test_twenty_save_restore_cycles(guest, tmp_path):
    g = guest("timer", "--mem", "16M")
    g.wait_lines(1)
    lines = console_lines(*save_restore_cycles(tmp_path, g, 20, timeout=60))
    assert not any(b in line for line in lines for b in BAD), lines
    assert len(lines) >= 21
    assert_continuous(sequence(lines, STREAMS["timer"][0]), start=None)


def _counter_hz() -> int:
    """The generic timer's frequency, as the lab's kernel logged it."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    return round(float(re.search(r"arch_timer: cp15 timer\(s\) running at ([\d.]+)MHz", log).group(1)) * 1e6)


def _kvm_has(cap: int) -> bool:
    """Whether this KVM offers ``cap`` (0: a capability the <linux/kvm.h> kvmsnap was built with lacks)."""
    if not cap:
        return False
    kvm = Kvm()
    try:
        return bool(kvm.check_extension(cap))
    finally:
        kvm.close()


def test_restore_paused_then_save_again_gives_the_same_state(guest, tmp_path):
    """Every note and every page the same, but the counts (they run on while paused) and the digests
    of the notes that hold them. The virtual count goes on from its saved value (by no more than
    the time between the two saves); where KVM takes a VM-wide counter offset (Linux 6.4) that
    offset moves the physical count too, so the two read alike."""
    g = guest("smp", "--mem", "16M")
    g.wait_lines(4, "^cpu")
    first = tmp_path / "first.core"
    began = time.monotonic()
    save_quit(g, first)
    r = Restored(tmp_path, first, "--paused", console=tmp_path / "r.console")
    second = tmp_path / "second.core"
    assert r.request("save", path=str(second), quit=True)["path"] == str(second)
    between = time.monotonic() - began
    assert r.exit_code(60) == 0
    a, _ = notes_by_key(first)
    b, _ = notes_by_key(second)
    assert a.keys() == b.keys()
    moving = {(N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS), (N.OWNER_KVMSNAP, N.KVMSNAP_DIGEST)}
    differing = [k for k in a if a[k] != b[k] and k[:2] not in moving]
    assert differing == []
    with read_core(first) as ca, read_core(second) as cb:
        for va, vb in zip(ca.vcpus, cb.vcpus):
            moved = [hex(i) for (i, x), (j, y) in zip(va.regs, vb.regs)
                     if i != j or x != y and i not in (TIMER_CNT, PTIMER_CNT)]
            assert moved == [], f"vCPU {va.index}"
            before, after = ({i: int.from_bytes(x, "little") for i, x in v.regs} for v in (va, vb))
            hz = _counter_hz()
            assert 0 <= after[TIMER_CNT] - before[TIMER_CNT] <= (between + 1) * hz, (va.index, before, after)
            if PTIMER_CNT in after and _kvm_has(lib.KVM_CAP_COUNTER_OFFSET):
                assert abs(after[PTIMER_CNT] - after[TIMER_CNT]) < hz // 2, (va.index, after)
        slot = ca.memory.slots()[0]
        assert ca.memory.read(slot.gpa, slot.size) == cb.memory.read(slot.gpa, slot.size)


@pytest.fixture(scope="module")
def counter_core(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arm64")
    g = RunningGuest(tmp, "counter", "--mem", "16M")
    try:
        g.wait_lines(2)
        core = tmp / "counter.core"
        save_quit(g, core)
    finally:
        g.kill()
    return core, g.console


def test_unlisted_and_refused_registers_are_named_then_let_through(tmp_path, counter_core):
    core, _ = counter_core

    def claim(state):
        for v in state.vcpus:
            regs = dict(v.regs)
            midr = int.from_bytes(regs[MIDR_EL1], "little")
            v.regs = [(i, (midr ^ 0xF0).to_bytes(8, "little") if i == MIDR_EL1 else x) for i, x in v.regs]
            v.regs.append((UNLISTED, (1).to_bytes(8, "little")))
    bad = tmp_path / "bad.core"
    rewrite_core(core, bad, claim)
    r = run_kvmsnap("restore", bad, "--console", tmp_path / "refused.console", "--control", tmp_path / "r.sock")
    message = r.stderr.strip()
    assert r.returncode == 1 and len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert "S3_7_C15_C15_7 (op0=3 op1=7 CRn=15 CRm=15 op2=7): not listed by this host's KVM" in message, message
    assert "MIDR_EL1 (op0=3 op1=0 CRn=0 CRm=0 op2=0): host value 0x" in message, message
    assert not (tmp_path / "refused.console").exists() or not (tmp_path / "refused.console").read_bytes()
    restored = Restored(tmp_path, bad, "--allow-missing-registers", console=tmp_path / "ok.console")
    restored.wait_lines(2, "^tick", timeout=120)
    assert restored.quit() == 0
    warnings = restored.stderr()
    assert "S3_7_C15_C15_7" in warnings and "MIDR_EL1" in warnings, warnings
    assert not any(b in line for line in restored.lines() for b in BAD)


def test_a_vgic_this_host_cannot_make_is_refused_by_name(tmp_path, counter_core):
    """The lab's KVM makes one vGIC type (v3 on QEMU's GICv3, v2 with --gic-version 2): a core
    claiming the other is refused before anything is created."""
    core, _ = counter_core
    with read_core(core) as c:
        saved = VgicState.parse(c.devices["vgic"]).type
    other = {VGIC_V3: VGIC_V2, VGIC_V2: VGIC_V3}[saved]
    assert saved == (VGIC_V2 if os.environ.get("KVMSNAP_LAB_GIC") == "2" else VGIC_V3)

    def claim(state):
        vgic = VgicState.parse(state.devices["vgic"])
        state.devices["vgic"] = VgicState.build(dict(vgic, type=other))
    bad = tmp_path / "bad.core"
    rewrite_core(core, bad, claim)
    r = run_kvmsnap("restore", bad, "--console", tmp_path / "refused.console", "--control", tmp_path / "r.sock")
    names = {VGIC_V2: "vGICv2", VGIC_V3: "vGICv3"}
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"the core's {names[other]}: this host's KVM cannot make one (it makes {names[saved]})" in r.stderr


def test_linux_boots_saves_and_restores_with_its_ticks_going_on(tmp_path):
    image, initrd = (os.path.join(LINUX, name) for name in ("Image", "initramfs.cpio"))
    assert os.path.exists(image) and os.path.exists(initrd), \
        f"{LINUX}: run samples/linux/build --arch aarch64 on the host first (tests/test_lab.py does)"
    g = RunningGuest(tmp_path, f"--kernel={image}", "--initrd", initrd, "--append", "console=ttyAMA0",
                     "--mem", "256M", console=tmp_path / "linux.console")
    g.wait_lines(1, "^GUEST-READY", timeout=900)
    g.wait_lines(3, "^uptime-tick", timeout=120)
    log = "\n".join(g.lines())
    assert "Machine model: linux,dummy-virt" in log or "GICv3" in log, log[-2000:]
    core = tmp_path / "linux.core"
    save_quit(g, core)
    _xfer(core, "arm64-linux.core")
    r = Restored(tmp_path, core, console=tmp_path / "restored.console")
    r.wait_lines(4, "^uptime-tick", timeout=300)
    assert r.request("type", text="echo typed-$((6 * 7))\n")["taken"] == 22
    r.wait_lines(1, "typed-42", timeout=120)               # the restored shell ran the command
    r.request("type", text="poweroff -f\n")                # PSCI SYSTEM_OFF: the run ends, exit 0
    assert r.exit_code(120) == 0, r.lines()[-3:]
    assert_continuous(sequence(console_lines(g.console, r.console), TICK))
