"""Shared fixtures: a real guest running under ``kvmsnap run`` in a subprocess, driven over --control."""
import functools
import os
import re
import subprocess
import sys
import time

import pytest

from coretools import assert_continuous, console_lines, sequence
from kvmsnap import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Time limits in these tests bound work (a hostile input must not take minutes), not speed. In
#: the KVM lab (scripts/lab sets KVMSNAP_LAB) every instruction runs under TCG emulation, several
#: times slower, so each limit is scaled by SLOWDOWN there (docs/testing.md).
SLOWDOWN = float(os.environ.get("KVMSNAP_TEST_SLOWDOWN") or (8 if os.environ.get("KVMSNAP_LAB") else 1))


def seconds(limit: float) -> float:
    """``limit`` seconds on this machine: scaled by SLOWDOWN."""
    return limit * SLOWDOWN


KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
needs_kvm = pytest.mark.skipif(not KVM, reason="needs read/write /dev/kvm")
#: The vendor module serving /dev/kvm here: kvm_intel, kvm_amd, kvm_pvm (this project's nested
#: backend), or None (none loaded, or KVM/arm64, which has none).
KVM_MODULE = next((m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}")),
                  None)


def restore_warnings(stderr: str) -> list[str]:
    """The lines of a restored VMM's stderr, but the warning kvm_pvm gives every restore of a core
    saved a moment before (its guest TSC cannot be set back: docs/restore.md)."""
    return [line for line in stderr.splitlines()
            if not (KVM_MODULE == "kvm_pvm" and "IA32_TSC did not take" in line)]


def lab_trace(lines=60) -> str:
    """In the KVM lab, the last ``lines`` KVM trace events (exits, injected exceptions, nested page
    faults: scripts/lab.d/init enables them); elsewhere nothing."""
    if not os.environ.get("KVMSNAP_LAB"):
        return ""
    try:
        with open("/sys/kernel/tracing/trace", errors="replace") as f:
            tail = f.readlines()[-lines:]
    except OSError:
        return ""
    return "\nKVM's last trace events in the lab:\n" + "".join(tail)


def kvmsnap_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "kvmsnap", *map(str, args)]


def run_kvmsnap(*args, timeout=60, **kw) -> subprocess.CompletedProcess:
    """Run one kvmsnap command to completion, capturing text output."""
    return subprocess.run(kvmsnap_cmd(*args), capture_output=True, text=True, timeout=seconds(timeout), **kw)


def tiny_elf(path, code: bytes, *, machine=62, boot_cpl=None):
    """An ELF64 executable loading ``code`` at 1 MiB (with a kvmsnap boot note when ``boot_cpl`` is
    given); ``machine`` is e_machine (62 = x86-64)."""
    import struct
    entry = 0x100000
    note = b""
    if boot_cpl is not None:
        note = struct.pack("<III", 8, 16, 1) + b"kvmsnap\0" + struct.pack("<QII", entry, boot_cpl, 0)
    phnum = 2 if note else 1
    ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, 64, 0, 0,
                                                            64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, entry, entry, len(code), len(code), 0x1000)
    if note:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, 0x800, 0, 0, len(note), len(note), 4)
    path.write_bytes(((ehdr + phdrs).ljust(0x800, b"\0") + note).ljust(0x1000, b"\0") + code)
    return path


#: Linked into every ``assemble``d guest: ``call set_gate`` writes an interrupt gate at rdi to the
#: handler at rsi, in the current code segment (clobbers rax, rdx); an empty 256-gate ``idt`` that
#: ``lidt idt_ptr(%rip)`` loads; an 8 KiB stack that ends at ``stack_top``.
CPL0_KIT = """
.text
set_gate:
    mov %rsi, %rax; and $0xffff, %eax
    xor %edx, %edx; mov %cs, %dx; shl $16, %rdx; or %rdx, %rax
    movabs $0x00008e0000000000, %rdx; or %rdx, %rax
    mov %rsi, %rdx; and $0xffff0000, %edx; shl $32, %rdx; or %rdx, %rax
    mov %rax, (%rdi)
    mov %rsi, %rax; shr $32, %rax; mov %rax, 8(%rdi)
    ret
.data
.balign 16
idt: .fill 512, 8, 0
idt_ptr: .word 16*256-1
    .quad idt
.fill 1024, 8, 0
stack_top:
"""


def assemble(tmp_path, name: str, source: str):
    """An ELF guest (samples/guest.ld, entry ``start64`` at CPL0 in long mode) from assembly, with
    CPL0_KIT."""
    (tmp_path / f"{name}.S").write_text(source + CPL0_KIT)
    img = tmp_path / f"{name}.elf"
    subprocess.run(["gcc", "-c", "-o", tmp_path / f"{name}.o", tmp_path / f"{name}.S"], check=True)
    subprocess.run(["ld", "-nostdlib", "-static", "-z", "max-page-size=0x1000", "--build-id=none", "-T",
                    os.path.join(ROOT, "samples", "guest.ld"), "-o", img, tmp_path / f"{name}.o"], check=True)
    return img


#: Every RunningGuest (and Restored) started, in order: a test's own are killed when it ends.
STARTED: list = []


@pytest.fixture(autouse=True)
def no_guest_outlives_its_test():
    """A failing test leaves no guest running (one left from a failed Linux test once ran for two
    hours beside everything else); guests of module fixtures, started before the test, stay."""
    mark = len(STARTED)
    yield
    while len(STARTED) > mark:
        STARTED.pop().kill()


class RunningGuest:
    """``kvmsnap run GUEST`` with its console in a file and a control socket."""

    def __init__(self, tmp_path, guest, *args, console=None, sock=None):
        self.console = console or tmp_path / f"{os.path.basename(str(guest))}.console"
        self.sock = str(sock or tmp_path / "ctl.sock")
        self.stderr_path = tmp_path / "run.stderr"
        self.proc = subprocess.Popen(kvmsnap_cmd("run", guest, "--console", self.console, "--control", self.sock,
                                                 *args),
                                     stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "wb"))
        STARTED.append(self)
        deadline = time.monotonic() + seconds(30)
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kvmsnap run did not start: {self.stderr()}")
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def why(self) -> str:
        """What a failed test shows: kvmsnap's stderr, and in the lab KVM's last trace events."""
        return self.stderr() + lab_trace()

    def lines(self) -> list[str]:
        if not os.path.exists(self.console):
            return []
        data = open(self.console, "rb").read().decode(errors="replace")
        return data.split("\n")[:-1]           # complete lines only

    def wait_lines(self, n, pattern=None, timeout=60.0) -> list[str]:
        """Wait until at least ``n`` complete console lines (matching ``pattern``) exist."""
        deadline = time.monotonic() + seconds(timeout)
        while True:
            lines = [l for l in self.lines() if pattern is None or re.search(pattern, l)]
            if len(lines) >= n:
                return lines
            if self.proc.poll() is not None:
                raise AssertionError(f"guest exited ({self.proc.returncode}): {self.why()}\n{self.lines()[-5:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {n} lines matching {pattern!r}; "
                                     f"last lines: {self.lines()[-5:]}")
            time.sleep(0.02)

    def request(self, cmd, **args) -> dict:
        return control.request(self.sock, cmd, **args)

    def quit(self, timeout=30) -> int:
        if self.proc.poll() is None:
            try:
                self.request("quit")
            except Exception:
                self.proc.terminate()
        return self.exit_code(timeout)

    def exit_code(self, timeout: float) -> int:
        """Wait for the run to end; one that does not fails the test with its last lines."""
        try:
            return self.proc.wait(seconds(timeout))
        except subprocess.TimeoutExpired:
            try:
                status = self.request("status")
            except Exception as e:                  # e.g. the guest stopped and the process hangs on
                status = f"no status: {e}"
            raise AssertionError(f"still running after {seconds(timeout):.0f} s ({status}): {self.why()}\n"
                                 f"last lines: {self.lines()[-5:]}") from None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Restored(RunningGuest):
    """``kvmsnap restore CORE`` with a console file and a control socket."""

    def __init__(self, tmp_path, core, *args, console, may_refuse=False):
        """With ``may_refuse`` a restore that ends before it serves --control (a refusal) returns
        with ``proc`` ended, instead of failing the test."""
        self.console = console
        self.sock = str(tmp_path / f"{console.name}.sock")
        self.stderr_path = tmp_path / f"{console.name}.stderr"
        self.proc = subprocess.Popen(kvmsnap_cmd("restore", core, "--console", console, "--control", self.sock,
                                                 *args), stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "wb"))
        STARTED.append(self)
        deadline = time.monotonic() + seconds(60)
        while not os.path.exists(self.sock):
            if may_refuse and self.proc.poll() is not None:
                return
            assert self.proc.poll() is None and time.monotonic() < deadline, self.why()
            time.sleep(0.02)


#: How restore names what a host cannot take, and the flag (if any) that lets each through.
REFUSALS = [(re.compile(r"vCPU \d+: CPUID\.0x[0-9a-f]+\.\d+:E[ABCD]X\[\d+\] \([\w.]+\): not offered by "
                        r"this host's KVM"), "--allow-missing-features"),
            (re.compile(r"vCPU \d+: MSR 0x[0-9a-f]+ \([^)]+\): (not listed by|refused by) this host's KVM"),
             "--allow-missing-msrs"),
            (re.compile(r"vCPU \d+: XCR0 0x[0-9a-f]+ enables XSAVE components 0x[0-9a-f]+ this host cannot "
                        r"hold \(host XCR0 mask 0x[0-9a-f]+\)"), None),
            (re.compile(r"vCPU \d+: XSAVE component \d+ at offset \d+ in the core, at \d+ on this host"),
             None),
            (re.compile(r"vCPU \d+: XSAVE area of \d+ bytes, this host holds \d+"), None),
            (re.compile(r"vCPU \d+: XSAVE holds state of components 0x[0-9a-f]+ this host cannot hold \(host XCR0 "
                        r"mask 0x[0-9a-f]+\)"), "--allow-missing-features"),
            (re.compile(r"\d+ vCPUs, this host's KVM allows \d+"), None)]


def restore_where_possible(tmp_path, core, console) -> tuple[list[str], Restored | None]:
    """Restore ``core`` (another host's) here.  When this host refuses, every refusal must be one
    that names what it refuses (REFUSALS); if flags can let them all through, restore again with
    those.  Returns the refusals and the running restore, or None when no flag helps."""
    r = Restored(tmp_path, core, console=console, may_refuse=True)
    if r.proc.poll() is None:
        return [], r
    message = r.stderr().strip()
    assert r.proc.returncode == 1 and len(message.splitlines()) == 1, message
    head = f"kvmsnap: {core}: cannot restore on this host: "
    assert message.startswith(head), message
    refusals = message[len(head):].split("; ")
    flags = set()
    for refusal in refusals:
        flag = next((f for pattern, f in REFUSALS if pattern.fullmatch(refusal)), "unnamed")
        assert flag != "unnamed", f"a refusal that names no register or feature: {refusal!r}"
        flags.add(flag)
    if None in flags:
        return refusals, None
    return refusals, Restored(tmp_path, core, *sorted(flags), console=console)


def ticks_continue(before, restored, n=3):
    """Wait for ``n`` ticks of a restored counter guest, quit it, and check that its ticks go on
    from those in the console file ``before`` with no gap or repeat."""
    restored.wait_lines(n, "^tick", timeout=120)
    assert restored.quit() == 0
    assert_continuous(sequence(console_lines(before, restored.console), r"tick (\d+)"), start=None)


def save_restore_cycles(tmp_path, g, cycles: int, timeout=30) -> list:
    """Save the running guest ``g`` with --quit, then ``cycles`` times: restore the last core, wait
    for one more console line, save it again with --quit. Returns the console files in order."""
    consoles, core = [g.console], tmp_path / "c0.core"
    save_quit(g, core)
    for i in range(1, cycles + 1):
        console = tmp_path / f"cycle{i}.console"
        r = Restored(tmp_path, core, console=console)
        want = len(console_lines(*consoles)) + 1
        deadline = time.monotonic() + seconds(timeout)
        while len(console_lines(*consoles, console)) < want:
            assert r.proc.poll() is None and time.monotonic() < deadline, (i, r.why())
            time.sleep(0.01)
        consoles.append(console)
        next_core = tmp_path / f"c{i}.core"
        save_quit(r, next_core)
        core.unlink()
        core = next_core
    return consoles


def save_quit(g, core):
    r = run_kvmsnap("save", "--control", g.sock, core, "--quit", timeout=300)
    assert r.returncode == 0, r.stderr
    assert g.exit_code(30) == 0



@pytest.fixture
def guest(tmp_path):
    """Factory: ``guest("counter", "--mem", "64M")`` starts a RunningGuest (killed when the test ends)."""
    return functools.partial(RunningGuest, tmp_path)


@pytest.fixture(scope="session")
def vmlinux_dbg():
    """The Linux sample's debug vmlinux, with DWARF (samples/linux/build --debug: fetched once, cached)."""
    r = subprocess.run([os.path.join(ROOT, "samples", "linux", "build"), "--debug"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


# ---------------------------------------------------------------------------------------------
# Offline core fixtures (shared by test_corefile, test_inspect*, test_diff, test_mem*)

@pytest.fixture
def core_path(tmp_path):
    """A synthetic kvmsnap core (tests/synthetic.py): 2 vCPUs, 8 MiB, paging with a high alias."""
    from synthetic import make_state, write
    path = tmp_path / "vm.core"
    write(make_state(), path)
    return path


@pytest.fixture(params=["x86_64", "aarch64"])
def any_core_path(request, tmp_path):
    """A synthetic kvmsnap core of each architecture (x86_64: as ``core_path``; aarch64: 2 vCPUs, SVE)."""
    from synthetic import make_arm64_state, make_state, write
    path = tmp_path / "vm.core"
    write(make_state() if request.param == "x86_64" else make_arm64_state(sve=True), path)
    return path


@pytest.fixture(scope="session")
def cores(tmp_path_factory):
    """Real cores, each kind built once per session on first use: ``dumptools.core_of(kind, cores)``."""
    return {}, tmp_path_factory
