"""kvmsnap restore on real KVM: guests continue exactly where they were saved; cores a host cannot
take are refused before anything starts."""
import os
import struct
import time

import pytest

from conftest import (KVM_MODULE, Restored, RunningGuest, assemble, needs_kvm, restore_warnings, run_kvmsnap, save_quit,
                      save_restore_cycles, seconds, ticks_continue)
from coretools import assert_continuous, console_lines, mask_volatile, notes_by_key, rewrite_core, sequence
from test_verify import reseal
from kvmsnap import notes
from kvmsnap.arch.x86_64 import cpuid
from kvmsnap.arch.x86_64.host import effective_cpuid
from kvmsnap.arch.x86_64.lapic import lapic
from kvmsnap.arch.x86_64.msrs import COUNTER_MSRS
from kvmsnap.arch.x86_64.xsave import xcr0_of
from kvmsnap.formats.kvmsnap import read_core
from kvmsnap.kvm import Kvm

pytestmark = needs_kvm


STREAMS = {
    "counter": [r"tick (\d+)"],
    "fpu": [r"fpu tick (\d+) ok"],
    "timer": [r"timer tick (\d+)"],
    "realmode": [r"realmode tick (\d+)"],
    "smp": [r"cpu0 tick (\d+)", r"cpu1 tick (\d+)"],
    "memtest": [r"memtest round (\d+) ok \d+ MiB"],
}
CASES = [("counter", "32M", 5), ("smp", "32M", 4), ("fpu", "32M", 5), ("timer", "32M", 5), ("realmode", "4M", 3),
         pytest.param("memtest", "1G", 2, marks=pytest.mark.slow)]


@pytest.mark.parametrize("sample, mem, n", CASES)
def test_console_continues_without_gap_or_repeat(guest, tmp_path, sample, mem, n):
    g = guest(sample, "--mem", mem)
    first = STREAMS[sample][-1]
    g.wait_lines(n, "^" + first.split(" (")[0], timeout=120)
    time.sleep(0.013 * (os.getpid() % 7))          # an arbitrary moment within a tick
    core = tmp_path / "saved.core"
    save_quit(g, core)
    before = len(console_lines(g.console))
    r = Restored(tmp_path, core, console=tmp_path / "restored.console")
    deadline = time.monotonic() + seconds(120)
    while len(console_lines(g.console, r.console)) < before + n:
        assert r.proc.poll() is None and time.monotonic() < deadline, r.why()
        time.sleep(0.02)
    assert r.quit() == 0
    lines = console_lines(g.console, r.console)
    assert not any("MISMATCH" in l or "EXCEPTION" in l or "STALLED" in l for l in lines), lines
    for stream in STREAMS[sample]:
        assert_continuous(sequence(lines, stream), start=None)
    core.unlink()


@pytest.mark.parametrize("sample, mem, cpus", [("counter", "32M", 1), ("smp", "32M", 2), ("fpu", "32M", 1),
                                               ("timer", "32M", 1), ("realmode", "4M", 1)])
def test_background_incremental_and_flattened_cores_continue(guest, tmp_path, sample, mem, cpus):
    """A background save taken while the guest runs, an increment on it saved with --quit, and that
    increment flattened into one core: each restores to a console that goes on, line by line, from
    where its save was taken, with no MISMATCH or EXCEPTION."""
    g = guest(sample, "--mem", mem, "--cpus", str(cpus))
    pattern = "^" + STREAMS[sample][-1].split(" (")[0]
    n = len(g.wait_lines(2, pattern, timeout=120))
    background, increment, flat = (tmp_path / f"{kind}.core" for kind in ("background", "increment", "flat"))
    r = run_kvmsnap("save", "--control", g.sock, "--background", background, timeout=300)
    assert r.returncode == 0, r.stderr
    g.wait_lines(n + 2, pattern, timeout=120)
    r = run_kvmsnap("save", "--control", g.sock, "--incremental-from", background, increment, "--quit", timeout=300)
    assert r.returncode == 0 and g.exit_code(30) == 0, r.stderr
    r = run_kvmsnap("flatten", increment, flat)
    assert r.returncode == 0, r.stderr
    for core in (background, increment, flat):
        restored = Restored(tmp_path, core, console=tmp_path / f"{core.stem}.console")
        restored.wait_lines(3, pattern, timeout=120)
        assert restored.quit() == 0
        after = console_lines(restored.console)
        # kvm_pvm cannot set a guest TSC back, says so, and timer then says STALLED once (docs/restore.md)
        tsc_warned = KVM_MODULE == "kvm_pvm" and "IA32_TSC did not take" in restored.stderr()
        bad = ("MISMATCH", "EXCEPTION") + (() if tsc_warned else ("STALLED",))
        assert not [line for line in after if any(word in line for word in bad)], (core.name, after)
        for stream in STREAMS[sample]:
            if core == background:      # the guest ran on after this save: its console goes on from the save
                resumed = sequence(after, stream)
                before = [v for v in sequence(console_lines(g.console), stream) if v < resumed[0]]
                assert_continuous(before + resumed, start=None)
            else:                       # saved with --quit: a line cut by the save goes on in the restored console
                assert_continuous(sequence(console_lines(g.console, restored.console), stream), start=None)


def test_a_sparse_guest_larger_than_the_host_restores(guest, tmp_path):
    """64 GiB of guest RAM on a host with less: untouched RAM is never backed, saved or read back."""
    g = guest("counter", "--mem", "64G")
    g.wait_lines(2)
    core = tmp_path / "big.core"
    save_quit(g, core)
    assert os.stat(core).st_blocks * 512 < 64 << 20
    r = Restored(tmp_path, core, console=tmp_path / "r.console")
    ticks_continue(g.console, r)


@pytest.mark.parametrize("memory", ["background", "lazy", "eager"])
def test_restore_then_save_again_gives_the_same_state(guest, tmp_path, memory):
    g = guest("timer", "--mem", "32M")
    g.wait_lines(3, r"^timer tick")
    first = tmp_path / "first.core"
    save_quit(g, first)
    r = Restored(tmp_path, first, "--paused", "--memory", memory, console=tmp_path / "r.console")
    second = tmp_path / "second.core"
    reply = r.request("save", path=str(second), quit=True)
    assert reply["path"] == str(second)
    assert r.exit_code(30) == 0
    a, core_a = notes_by_key(first)
    b, core_b = notes_by_key(second)
    assert a.keys() == b.keys()
    differing = [k for k in a if mask_volatile(k, a[k]) != mask_volatile(k, b[k])]
    assert differing == []
    with read_core(first) as ca, read_core(second) as cb:
        for gpa, size in ((s.gpa, s.size) for s in ca.memory.slots()):
            for off in range(0, size, 1 << 20):
                assert ca.memory.read(gpa + off, 1 << 20) == cb.memory.read(gpa + off, 1 << 20), hex(gpa + off)


IN_SERVICE_GUEST = r""".text
.globl start64
start64:
    lea stack_top(%rip), %rsp
    mov $0xff, %al; out %al, $0x21; out %al, $0xa1      # 8259s masked
    lea idt+16*0x40(%rip), %rdi; lea in_service(%rip), %rsi; call set_gate
    lidt idt_ptr(%rip)
    mov $0xfee00000, %eax
    movl $0x1ff, 0xf0(%rax)                             # SVR: LAPIC on
    movl $0x40040, 0x300(%rax)                          # ICR: fixed IPI to itself, vector 0x40
    sti
1:  hlt; jmp 1b
in_service:                                             # never EOIs: 0x40 stays in service
    incq count(%rip)
    lea text(%rip), %rsi; mov $0x3f8, %dx
2:  lodsb; test %al, %al; jz 3f; out %al, %dx; jmp 2b
3:  mov count(%rip), %rax; lea digits_end(%rip), %rdi; mov $10, %ecx
4:  xor %edx, %edx; div %rcx; add $'0', %dl; dec %rdi; mov %dl, (%rdi); test %rax, %rax; jnz 4b
    mov $0x3f8, %dx; lea digits_end(%rip), %rsi
5:  mov (%rdi), %al; out %al, %dx; inc %rdi; cmp %rsi, %rdi; jb 5b
    mov $'\n', %al; out %al, %dx
    rdtsc; shl $32, %rdx; or %rdx, %rax; lea 0x4000000(%rax), %rbx  # next line 2^26 TSC ticks on
6:  rdtsc; shl $32, %rdx; or %rdx, %rax; cmp %rbx, %rax; jb 6b
    jmp in_service
text: .asciz "in service "
.data
count: .quad 0
digits: .fill 24, 1, 0
digits_end:
"""


def test_a_guest_saved_inside_its_interrupt_handler_restores_with_the_vector_in_service(guest, tmp_path):
    """A CPL0 guest that sends itself an IPI and never leaves the handler: its core holds vector 0x40
    in service (ISR) and so a processor priority (PPR) of 0x40.  KVM_SET_LAPIC works the PPR out
    before it counts the in-service vectors of a new vCPU; the restored vCPU reads back the core's
    LAPIC all the same (saved again while paused), and the handler's lines go on."""
    img = assemble(tmp_path, "in_service", IN_SERVICE_GUEST)
    g = guest(str(img), "--mem", "16M")
    g.wait_lines(3, timeout=60)
    first, second = tmp_path / "first.core", tmp_path / "second.core"
    save_quit(g, first)
    r = Restored(tmp_path, first, "--paused", console=tmp_path / "r.console")
    r.request("save", path=str(second))
    r.request("resume")
    r.wait_lines(3, timeout=60)
    assert r.quit() == 0
    with read_core(first) as a, read_core(second) as b:
        saved, again = lapic(a.vcpus[0].lapic), lapic(b.vcpus[0].lapic)
    # kvm_pvm keeps no in-service vector in the LAPIC page: its ISR reads empty inside the handler
    in_service = ([], 0) if KVM_MODULE == "kvm_pvm" else ([0x40], 0x40)
    assert (saved["isr"], saved["ppr"]) == (again["isr"], again["ppr"]) == in_service
    assert_continuous(sequence(console_lines(g.console, r.console), r"in service (\d+)"), start=1)


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["counter", "timer"])
def test_fifty_save_restore_cycles(guest, tmp_path, sample):
    g = guest(sample, "--mem", "16M")
    g.wait_lines(1)
    lines = console_lines(*save_restore_cycles(tmp_path, g, 50))
    assert_continuous(sequence(lines, STREAMS[sample][0]), start=None)
    assert len(lines) >= 51


@pytest.fixture(scope="module")
def counter_core(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cc")
    g = RunningGuest(tmp, "counter", "--mem", "16M")
    g.wait_lines(2)
    core = tmp / "counter.core"
    save_quit(g, core)
    return core, g.console


def _refused(tmp_path, core, *words):
    console = tmp_path / "refused.console"
    sock = tmp_path / "refused.sock"
    r = run_kvmsnap("restore", core, "--console", console, "--control", sock)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not console.exists() or console.stat().st_size == 0      # nothing ran
    assert not sock.exists()


def _restores(tmp_path, core, *flags):
    console = tmp_path / "ok.console"
    r = Restored(tmp_path, core, *flags, console=console)
    r.wait_lines(2)
    assert r.quit() == 0
    return r.stderr()


def test_cpuid_feature_this_host_lacks_is_refused(tmp_path, counter_core):
    core, _ = counter_core
    kvm = Kvm()
    host, _ = effective_cpuid(kvm)
    kvm.close()
    leaf, sub, reg, bit, name = next((l, s, r, b, n) for (l, s, r), bits in cpuid.FEATURES.items()
                                     for b, n in bits.items() if not cpuid.lookup(host, l, s)[cpuid._REG[r]] >> b & 1)

    def claim(state):
        for v in state.vcpus:
            v.cpuid = cpuid.with_features(v.cpuid, [(leaf, sub, reg, bit)])
    bad = tmp_path / "cpuid.core"
    rewrite_core(core, bad, claim)
    _refused(tmp_path, bad, f"({name})", f"CPUID.{leaf:#x}")
    warnings = _restores(tmp_path, bad, "--allow-missing-features")
    assert name in warnings


def test_msr_this_host_does_not_list_is_refused(tmp_path, counter_core):
    core, _ = counter_core
    kvm = Kvm()
    listed = set(kvm.get_msr_index_list())
    kvm.close()
    index = next(i for i in (0xC0000103, 0x48, 0xDA0) if i not in listed)

    def add_msr(state):
        for v in state.vcpus:
            v.msrs = v.msrs + [(index, 1)]
    bad = tmp_path / "msr.core"
    rewrite_core(core, bad, add_msr)
    _refused(tmp_path, bad, f"MSR {index:#x}", "not listed by this host's KVM")
    warnings = _restores(tmp_path, bad, "--allow-missing-msrs")
    assert f"{index:#x}" in warnings


def test_xsave_component_placed_elsewhere_is_refused(tmp_path, counter_core):
    """A core from a CPU that puts an XSAVE component elsewhere (AMD and Intel differ): the guest
    would find its state where its CPUID no longer says, so restore refuses, naming the component."""
    core, _ = counter_core
    with read_core(core) as c:
        xcr0 = xcr0_of(c.vcpus[0].xcrs)
    bit = max(b for b in range(2, 64) if xcr0 >> b & 1)     # the sample enables AVX (bit 2) or more

    def move(state):
        for v in state.vcpus:
            rows = cpuid.entries(v.cpuid)
            row = next(r for r in rows if r[0] == 0xd and r[1] == bit)
            row[4] += 64                                    # EBX: the component's offset
            v.cpuid = cpuid.pack(rows)
    bad = tmp_path / "moved.core"
    rewrite_core(core, bad, move)
    _refused(tmp_path, bad, f"XSAVE component {bit} at offset", "in the core, at")


def test_truncated_core(tmp_path, counter_core):
    core, _ = counter_core
    bad = tmp_path / "truncated.core"
    bad.write_bytes(core.read_bytes()[:5000])
    _refused(tmp_path, bad, str(bad), "offset 0x")


def test_newer_format_major(tmp_path, counter_core):
    core, _ = counter_core
    with read_core(core) as c:
        header = next(n for n in c.info.elf.notes if n.type == notes.KVMSNAP_HEADER)
    data = bytearray(core.read_bytes())
    struct.pack_into("<H", data, header.desc_offset + 16, 99)          # format_major
    bad = tmp_path / "newer.core"
    bad.write_bytes(data)
    reseal(bad)                                     # as a newer kvmsnap would have written it
    _refused(tmp_path, bad, str(bad), "99")


def test_core_missing_one_vcpus_notes(guest, tmp_path):
    g = guest("smp", "--cpus", "2", "--mem", "16M")
    g.wait_lines(2, r"^cpu1")
    core = tmp_path / "smp.core"
    save_quit(g, core)
    with read_core(core) as c:
        lapic1 = next(n for n in c.info.elf.notes if n.type == notes.KVMSNAP_LAPIC and n.vcpu == 1)
    data = bytearray(core.read_bytes())
    struct.pack_into("<I", data, lapic1.offset + 8, 0x4B5301FF)         # n_type: an unknown private note
    bad = tmp_path / "missing.core"
    bad.write_bytes(data)
    _refused(tmp_path, bad, str(bad), "vCPU 1")


@pytest.mark.parametrize("sample, mem", [("counter", "16M"), ("fpu", "16M"), ("timer", "16M"), ("memtest", "64M"),
                                         ("realmode", "4M")])
def test_single_vcpu_samples_save_and_restore_with_two_vcpus(guest, tmp_path, sample, mem):
    """The extra vCPU parks (or, in real mode, waits for SIPI); both are saved and restored."""
    g = guest(sample, "--mem", mem, "--cpus", "2")
    stream = STREAMS[sample][0]
    g.wait_lines(2, "^" + stream.split(" (")[0], timeout=60)
    core = tmp_path / "two.core"
    save_quit(g, core)
    with read_core(core) as c:
        assert [v.index for v in c.vcpus] == [0, 1]
    r = Restored(tmp_path, core, console=tmp_path / "two.console")
    before = len(console_lines(g.console))
    deadline = time.monotonic() + seconds(60)
    while len(console_lines(g.console, r.console)) < before + 2:
        assert r.proc.poll() is None and time.monotonic() < deadline, r.why()
        time.sleep(0.02)
    assert r.quit() == 0
    lines = console_lines(g.console, r.console)
    assert not any("MISMATCH" in l for l in lines)
    assert_continuous(sequence(lines, stream), start=None)


@pytest.mark.lab
@pytest.mark.skipif(KVM_MODULE not in ("kvm_intel", "kvm_amd"),
                    reason="needs a KVM that offers Hyper-V's counter MSRs: kvm_intel or kvm_amd "
                           "(scripts/lab x86_64); kvm_pvm lists none")
def test_counter_msrs_are_saved_restored_and_keep_counting(guest, tmp_path):
    """HV_X64_MSR_VP_RUNTIME and TIME_REF_COUNT move on by themselves: restore accepts them reading
    back higher, and a save of the restored guest holds them no lower than the first core."""
    g = guest("counter", "--mem", "32M")
    g.wait_lines(2, r"^tick")
    first, second = tmp_path / "first.core", tmp_path / "second.core"
    save_quit(g, first)
    r = Restored(tmp_path, first, "--paused", console=tmp_path / "r.console")
    assert r.request("save", path=str(second), quit=True)["path"] == str(second)
    assert r.exit_code(30) == 0
    with read_core(first) as a, read_core(second) as b:
        before, after = dict(a.vcpus[0].msrs), dict(b.vcpus[0].msrs)
    assert {0x40000010, 0x40000020} <= COUNTER_MSRS & before.keys()
    assert all(after[i] >= before[i] for i in COUNTER_MSRS & before.keys())


MEMTEST_ROUND = r"memtest round (\d+) ok \d+ MiB"


@pytest.mark.parametrize("memory", ["lazy", "background"])
def test_a_guest_mapped_from_its_core_survives_the_core_being_rewritten_and_truncated(guest, tmp_path, memory):
    """RAM mapped from a core is held under a read lease: a process that opens the core to write it
    waits until the VMM has copied in what the guest still reads from the file; the guest (memtest
    checks all its RAM every round) and a later save see none of the change."""
    g = guest("memtest", "--mem", "64M")
    g.wait_lines(1, MEMTEST_ROUND, timeout=60)
    core = tmp_path / "memtest.core"
    save_quit(g, core)
    r = Restored(tmp_path, core, "--memory", memory, console=tmp_path / "restored.console")
    r.wait_lines(1, MEMTEST_ROUND, timeout=60)
    t0 = time.monotonic()
    with open(core, "r+b") as f:                  # returns once the VMM gave up its lease
        waited = time.monotonic() - t0
        f.seek(1 << 20)
        f.write(b"\xff" * (8 << 20))
        f.truncate(4096)
    assert waited < 30, waited                    # well before the kernel's lease-break-time (45 s)
    n = len(r.wait_lines(1, MEMTEST_ROUND))
    lines = r.wait_lines(n + 2, MEMTEST_ROUND, timeout=60)
    assert not any("MISMATCH" in line for line in r.lines()), r.lines()[-5:]
    again = tmp_path / "again.core"
    save_quit(r, again)
    assert restore_warnings(r.stderr()) == []
    r2 = Restored(tmp_path, again, console=tmp_path / "again.console")
    r2.wait_lines(2, MEMTEST_ROUND, timeout=60)
    assert r2.quit() == 0
    rounds = sequence(console_lines(r2.console), MEMTEST_ROUND)
    assert len(rounds) >= 2 and not any("MISMATCH" in l for l in console_lines(r2.console)), lines


def test_a_core_open_for_writing_is_read_instead_of_mapped(guest, tmp_path):
    g = guest("counter", "--mem", "32M")
    g.wait_lines(2, "^tick")
    core = tmp_path / "counter.core"
    save_quit(g, core)
    with open(core, "r+b"):                       # another writer: no read lease can be had
        r = Restored(tmp_path, core, console=tmp_path / "restored.console")
        r.wait_lines(1, "^tick", timeout=60)
    warning = restore_warnings(r.stderr())
    assert warning == [f"kvmsnap: warning: {core}: guest RAM read now instead of from the file while the guest "
                       "runs: it cannot be held under a read lease (Resource temporarily unavailable), so a change to "
                       "it could reach the guest"], warning
    ticks_continue(g.console, r)
