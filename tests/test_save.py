"""kvmsnap save on real KVM: the core opens in gdb, readelf, eu-readelf and pyelftools, and holds
exactly what KVM returned."""
import json
import os
import re
import struct
import subprocess
import time

import pytest
from elftools.elf.elffile import ELFFile

from conftest import needs_kvm, run_kvmsnap, seconds
from coretools import gdb, gdb_values
from kvmsnap.save import capture
from kvmsnap.arch.x86_64 import cpuid
from kvmsnap.formats.kvmsnap import read_core
from kvmsnap.formats.writer import write_core
from kvmsnap.summary import summarize
from kvmsnap.samples import SAMPLES
from kvmsnap.state import MachineConfig
from kvmsnap.vmm import Machine

pytestmark = needs_kvm
REG_NAMES = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags"]


def save(g, tmp_path, name="guest.core", *extra):
    out = tmp_path / name
    r = run_kvmsnap("save", "--control", g.sock, out, "--json", *extra, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


@pytest.fixture(scope="module")
def fpu_save(tmp_path_factory):
    """The fpu guest run in this process; KVM's own answers kept beside the core saved from them."""
    tmp = tmp_path_factory.mktemp("fpu")
    console = open(tmp / "console", "wb")
    m = Machine(MachineConfig("fpu", 64 << 20, 1), console)
    m.boot(open(SAMPLES["fpu"].path, "rb").read(), "fpu")
    m.start()
    deadline = time.monotonic() + seconds(30)
    while (tmp / "console").read_bytes().count(b" ok\n") < 3:
        assert time.monotonic() < deadline and m.running, m.error
        time.sleep(0.02)
    m.pause()
    vcpu = m.vcpus[0]
    kvm = {"regs": vcpu.get_regs(), "sregs": vcpu.get_sregs2(), "xsave": vcpu.get_xsave2(m.vcpu_caps.xsave_size),
           "cpuid": vcpu.get_cpuid2()}
    state = capture(m)
    core = tmp / "fpu.core"
    write_core(state, str(core), producer="test", host_kernel=os.uname().release)
    rip = struct.unpack_from("<Q", kvm["regs"], 16 * 8)[0]
    kvm["ram_at_rip"] = m.memory.read(rip, 8)
    kvm["ram_image"] = m.memory.read(0x100000, 0x4000)
    m.stop()
    m.close()
    return core, kvm


def test_gdb_general_registers_equal_kvm(fpu_save):
    core, kvm = fpu_save
    regs = dict(zip(REG_NAMES, struct.unpack("<18Q", kvm["regs"])))
    out = gdb_values(gdb(core, *[f"p/x ${'eflags' if n == 'rflags' else n}" for n in REG_NAMES]))
    assert [v[0] & (1 << 64) - 1 for v in out] == [regs[n] for n in REG_NAMES]
    sel = [struct.unpack_from("<H", kvm["sregs"], 24 * i + 12)[0] for i in range(6)]   # cs ds es fs gs ss
    out = gdb_values(gdb(core, "p $cs", "p $ds", "p $es", "p $fs", "p $gs", "p $ss"))
    assert [v[0] for v in out] == sel
    inspected = summarize(str(core))["vcpus"][0]["regs"]
    assert all(inspected[n] == regs[n] for n in REG_NAMES)
    assert [inspected[n] for n in ("cs", "ds", "es", "fs", "gs", "ss")] == sel


def _component_offset(table: bytes, comp: int) -> int:
    return cpuid.lookup(table, 0xD, comp)[1]


def test_gdb_vector_and_mask_registers_equal_kvm_xsave(fpu_save):
    core, kvm = fpu_save
    xs, table = kvm["xsave"], kvm["cpuid"]
    xcr0 = cpuid.supported_xcr0(table) & cpuid.GUEST_XCR0_MASK
    q = lambda off, n: list(struct.unpack_from(f"<{n}Q", xs, off))
    cmds, want = [], []
    for i in range(16):
        cmds.append(f"p/x $xmm{i}.v2_int64")
        want.append(q(160 + 16 * i, 2))
        cmds.append(f"p/x $ymm{i}.v4_int64")
        want.append(q(160 + 16 * i, 2) + q(576 + 16 * i, 2))
    if xcr0 & 0xE0 == 0xE0:
        zmm_hi, hi16, opmask = (_component_offset(table, c) for c in (6, 7, 5))
        for i in range(32):
            cmds.append(f"p/x $zmm{i}.v8_int64")
            low = (q(160 + 16 * i, 2) + q(576 + 16 * i, 2) + q(zmm_hi + 32 * i, 4)) if i < 16 \
                else q(hi16 + 64 * (i - 16), 8)
            want.append(low)
        for i in range(8):
            cmds.append(f"p/x $k{i}")
            want.append(q(opmask + 8 * i, 1))
    got = [[x & (1 << 64) - 1 for x in v] for v in gdb_values(gdb(core, *cmds))]
    assert got == want
    assert any(any(v) for v in want[1::2]), "the fpu guest had put values in the vector registers"


def test_gdb_reads_instruction_bytes_and_physical_ram(fpu_save):
    core, kvm = fpu_save
    out = gdb(core, "x/8xb $pc")
    assert [int(b, 16) for b in out.split(":")[1].split()] == list(kvm["ram_at_rip"])
    with read_core(core) as c:
        assert c.memory.read(0x100000, 0x4000) == kvm["ram_image"]


def test_elf_tools_read_the_core_cleanly(guest, tmp_path):
    g = guest("counter", "--mem", "64M")
    g.wait_lines(2)
    core, reply = save(g, tmp_path)
    for cmd in (["readelf", "-n", core], ["readelf", "-W", "-a", core], ["eu-readelf", "-n", core]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "warning" not in (r.stdout + r.stderr).lower() and "error" not in (r.stdout + r.stderr).lower()
        assert "NT_PRSTATUS" in r.stdout or "PRSTATUS" in r.stdout
    with open(core, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
        assert elf.get_segment(0)["p_type"] == "PT_NOTE"
        notes = [n for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE" for n in seg.iter_notes()]
        assert len(notes) == len(summarize(str(core))["notes"])
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads and all(s["p_offset"] % 4096 == 0 for s in loads)
        assert sum(s["p_filesz"] for s in loads if s["p_vaddr"] == s["p_paddr"]) == 64 << 20
    assert reply["size_on_disk"] < reply["apparent_size"] // 10       # zero pages are holes
    assert g.request("status")["state"] == "running"


def test_smp_core_has_one_gdb_thread_per_vcpu(guest, tmp_path):
    g = guest("smp", "--cpus", "2", "--mem", "32M")
    g.wait_lines(2, r"^cpu1 ")
    core, _ = save(g, tmp_path)
    summary = summarize(str(core))
    out = gdb(core, "info threads", "thread 1", "p/x $rip", "p/x $rsp", "thread 2", "p/x $rip", "p/x $rsp")
    threads = re.findall(r"^\*?\s+\d+\s+LWP (\d+)", out, re.M)
    assert sorted(threads) == ["1", "2"]                  # LWP = vCPU index + 1
    vals = gdb_values(out)
    got = {(vals[0][0], vals[1][0]), (vals[2][0], vals[3][0])}
    assert got == {(v["regs"]["rip"], v["regs"]["rsp"]) for v in summary["vcpus"]}
    assert len({v["regs"]["rsp"] >> 12 for v in summary["vcpus"]}) == 2     # own stacks


def test_save_timer_between_interrupts_and_it_runs_on(guest, tmp_path):
    g = guest("timer", "--mem", "32M")
    g.wait_lines(3, r"^timer tick")
    core, reply = save(g, tmp_path)
    assert reply["paused_ms"] > 0
    with read_core(core) as c:
        lvt_timer = struct.unpack_from("<I", c.vcpus[0].lapic, 0x320)[0]
        assert lvt_timer & (1 << 17) and not lvt_timer & (1 << 16)        # periodic, unmasked
    n = len(g.lines())
    g.wait_lines(n + 3, timeout=30)
    assert not any("STALLED" in l or "EXCEPTION" in l for l in g.lines())


def test_save_memtest_1g_while_running(guest, tmp_path):
    g = guest("memtest", "--mem", "1G")
    g.wait_lines(1, r"^memtest round 0 ok", timeout=120)
    core, reply = save(g, tmp_path)
    assert reply["apparent_size"] >= 1 << 30 and reply["bytes_written"] > 512 << 20
    with read_core(core) as c:
        assert sum(s.size for s in c.memory.slots()) == 1 << 30
    n = len(g.lines())
    lines = g.wait_lines(n + 1, timeout=120)
    assert all(" ok " in l for l in lines if l.startswith("memtest round"))
    core.unlink()


@pytest.mark.slow
def test_save_4g_counter(guest, tmp_path):
    g = guest("counter", "--mem", "4G")
    g.wait_lines(2)
    core, reply = save(g, tmp_path)
    assert reply["apparent_size"] > 4 << 30
    assert reply["size_on_disk"] < 64 << 20
    with read_core(core) as c:
        assert [(s.gpa, s.size) for s in c.memory.slots()] == [(0, 3 << 30), (4 << 30, 1 << 30)]


def test_save_json_fields(guest, tmp_path):
    g = guest("counter", "--mem", "32M")
    g.wait_lines(1)
    core, reply = save(g, tmp_path)
    assert set(reply) >= {"path", "paused_ms", "wall_ms", "bytes_written", "size_on_disk"}
    assert reply["path"] == str(core) and reply["size_on_disk"] == os.stat(core).st_blocks * 512
    assert 0 < reply["paused_ms"] <= reply["wall_ms"]


def _mount_tmpfs(path, options):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
@pytest.mark.parametrize("options, words", [("size=16k", "No space left"), ("ro,size=1m", "Read-only")])
def test_failed_save_leaves_no_file_and_guest_running(guest, tmp_path, options, words):
    target_dir = tmp_path / "target"
    _mount_tmpfs(target_dir, options)
    try:
        g = guest("counter", "--mem", "32M")
        g.wait_lines(2)
        out = target_dir / "guest.core"
        r = run_kvmsnap("save", "--control", g.sock, out)
        assert r.returncode == 1
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr and str(out) in r.stderr
        assert os.listdir(target_dir) == []                   # no core, no temporary file
        assert g.request("status")["state"] == "running"
        n = len(g.lines())
        g.wait_lines(n + 2)
    finally:
        subprocess.run(["umount", str(target_dir)], check=False)


def test_save_without_a_vmm_is_a_clear_error(tmp_path):
    r = run_kvmsnap("save", "--control", tmp_path / "none.sock", tmp_path / "x.core")
    assert r.returncode == 2 and "no control socket" in r.stderr and len(r.stderr.splitlines()) == 1
