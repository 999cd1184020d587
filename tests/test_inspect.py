"""``inspect``: summaries of kvmsnap cores and foreign ELF cores, text rendering, hostile input."""
import json
import random
import shutil
import signal
import struct
import subprocess

import pytest

from kvmsnap import notes as N
from kvmsnap.formats.reader import CoreFormatError
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.formats import elf
from kvmsnap.describe import render_text
from kvmsnap.summary import summarize

from conftest import seconds
from synthetic import HIGH_BASE, RIP, make_foreign

REG_KEYS = {"rip", "rsp", "rflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9",
            "r10", "r11", "r12", "r13", "r14", "r15", "cs", "ss", "ds", "es", "fs", "gs",
            "fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "efer"}


def test_summary_of_kvmsnap_core(core_path):
    s = summarize(core_path)
    json.dumps(s)                                   # JSON-ready
    assert s["kind"] == "kvmsnap" and s["arch"] == "x86_64" and s["producer"] == "kvmsnap test"
    assert s["format"] == {"major": 1, "minor": 4} and s["host_kernel"] == "6.1.0-test"
    assert s["config"] == {"guest": "hello", "mem_size": 8 << 20, "vcpus": 2}
    assert [(c["name"], c["offset"], c["size"]) for c in s["xsave_layout"]] == [
        ("avx", 576, 256), ("opmask", 1088, 64), ("zmm_hi256", 1152, 512), ("hi16_zmm", 1664, 1024)]
    assert [v["id"] for v in s["vcpus"]] == [0, 1]
    for i, v in enumerate(s["vcpus"]):
        assert set(v["regs"]) == REG_KEYS
        assert all(isinstance(x, int) for x in v["regs"].values())
        assert v["regs"]["rip"] == RIP + i and v["regs"]["cr3"] == 0x10000
        assert v["regs"]["efer"] == 0xd01 and v["regs"]["fs_base"] == 0x7000 + i
        assert v["regs"]["cs"] == 8 and v["regs"]["rflags"] == 0x202
    assert s["vcpus"][1]["mp_state"] == 3 and s["vcpus"][0]["xcr0"] == 0xe7
    assert s["memory"][0]["vaddr"] == HIGH_BASE and not s["memory"][0]["physical"]
    assert s["memory"][1] == dict(paddr=0, vaddr=0, size=8 << 20, filesz=8 << 20,
                                  offset=s["memory"][1]["offset"], physical=True,
                                  beyond_eof=False)
    assert s["memory_map"] == [{"slot": 0, "gpa": 0, "size": 8 << 20}]
    assert s["notes"][0]["type_name"] == "KVMSNAP_HEADER"
    assert {n["type_name"] for n in s["notes"]} >= {"NT_PRSTATUS", "QEMU_CPUSTATE",
                                                     "KVMSNAP_MSRS"}
    assert s["devices"]["uart"]["lcr"] == 3


def test_render_text(core_path):
    text = render_text(summarize(core_path))
    assert "architecture: x86_64" in text and "producer:     kvmsnap test" in text
    assert "vCPU 1 (pid 2)" in text
    assert f"{RIP + 1:#x}" in text and "cr3" in text
    assert "KVMSNAP_LAPIC" in text and "NT_X86_XSTATE" in text
    assert "0xffffffff80000000" in text and "physical" in text


def test_corrupt_kvmsnap_core_is_an_error(core_path):
    data = bytearray(core_path.read_bytes())
    struct.pack_into("<H", data, 18, elf.EM_386)
    core_path.write_bytes(data)
    with pytest.raises(CoreFormatError, match="EM_X86_64"):
        summarize(core_path)


# ---------------------------------------------------------------------------------------------
# Foreign cores

def x86_prstatus(pid, **regs):
    values = {name: regs.get(name, 0) for name in x86.USER_REGS}
    tv = dict(tv_sec=0, tv_usec=0)
    return x86.elf_prstatus.build(dict(
        pr_info=dict(si_signo=11, si_code=0, si_errno=0), pr_cursig=11, pr_sigpend=0,
        pr_sighold=0, pr_pid=pid, pr_ppid=1, pr_pgrp=pid, pr_sid=pid, pr_utime=tv, pr_stime=tv,
        pr_cutime=tv, pr_cstime=tv, pr_reg=values, pr_fpvalid=1))


def test_foreign_process_core(tmp_path):
    path = tmp_path / "proc.core"
    path.write_bytes(make_foreign(notes=[
        ("CORE", N.NT_PRPSINFO, bytes(136)),
        ("CORE", N.NT_PRSTATUS, x86_prstatus(100, rip=0x401000, rsp=0x7ffc0000, eflags=0x246)),
        ("CORE", N.NT_FPREGSET, bytes(512)),
        ("CORE", N.NT_PRSTATUS, x86_prstatus(101, rip=0x401010)),
        ("CORE", N.NT_FILE, bytes(16)),
        ("GNU", 0xff000000, b"gdb tdesc"),
    ], loads=[(0x400000, b"\x90" * 4096)]))
    s = summarize(path)
    json.dumps(s)
    assert s["kind"] == "elf-core" and s["arch"] == "x86_64"
    assert s["producer"] == "Linux process core (kernel or gdb gcore)"
    assert [(v["id"], v["pid"], v["regs"]["rip"]) for v in s["vcpus"]] == \
        [(0, 100, 0x401000), (1, 101, 0x401010)]
    assert s["vcpus"][0]["regs"]["rflags"] == 0x246 and s["vcpus"][0]["regs"]["cr3"] is None
    assert set(s["vcpus"][0]["regs"]) == REG_KEYS
    assert [n["vcpu"] for n in s["notes"]] == [None, 0, 0, 1, None, None]
    assert [n["type_name"] for n in s["notes"]] == ["NT_PRPSINFO", "NT_PRSTATUS", "NT_FPREGSET",
                                                    "NT_PRSTATUS", "NT_FILE", "0xff000000"]
    assert s["memory"] == [dict(paddr=0, vaddr=0x400000, size=4096, filesz=4096,
                                offset=s["memory"][0]["offset"], physical=False,
                                beyond_eof=False)]
    text = render_text(s)
    assert "producer:     Linux process core" in text and "0x401010" in text


def test_foreign_qemu_style_core(tmp_path):
    qemu = x86.QEMUCPUState.build(dict(
        version=1, size=440, **{r: 0 for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp",
                                               "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
                                               "r14", "r15", "rflags")}, rip=0xffffffff81000000,
        **{s: dict(selector=0, limit=0, flags=0, pad=0, base=0) for s in (
            "cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")},
        cr=[0x80050033, 0, 0x1234, 0x1000, 0x6f0], kernel_gs_base=0))
    path = tmp_path / "qemu.core"
    path.write_bytes(make_foreign(ehsize=8, notes=[
        ("CORE", N.NT_PRSTATUS, x86_prstatus(1, rip=0xffffffff81000000)),
        ("QEMU", 0, qemu[:432]),          # QEMU before kernel_gs_base was added
    ], loads=[(0, bytes(8192))]))
    s = summarize(path)
    assert s["producer"] == "QEMU dump-guest-memory"
    regs = s["vcpus"][0]["regs"]
    assert (regs["cr0"], regs["cr2"], regs["cr3"], regs["cr4"]) == (0x80050033, 0x1234, 0x1000,
                                                                    0x6f0)
    assert regs["efer"] is None
    assert s["notes"][1]["type_name"] == "QEMU_CPUSTATE" and s["notes"][1]["vcpu"] == 0


def test_foreign_aarch64_core(tmp_path):
    desc = bytearray(392)
    struct.pack_into("<i", desc, 32, 42)
    struct.pack_into("<34Q", desc, 112, *range(34))
    path = tmp_path / "arm.core"
    path.write_bytes(make_foreign(machine=elf.EM_AARCH64,
                                  notes=[("CORE", N.NT_PRSTATUS, bytes(desc)),
                                         ("LINUX", 0x405, struct.pack("<IIHHHH", 528, 8720,
                                                                      16, 256, 0, 0))]))
    s = summarize(path)
    assert s["arch"] == "aarch64"
    assert s["vcpus"][0]["pid"] == 42 and s["vcpus"][0]["regs"]["pc"] == 32
    assert s["notes"][1]["type_name"] == "NT_ARM_SVE"
    assert s["vcpus"][0]["sections"]["arm"]["NT_ARM_SVE"]["vl"] == 16


def test_foreign_segment_beyond_eof_is_reported(tmp_path):
    data = bytearray(make_foreign(loads=[(0x1000, bytes(4096))]))
    path = tmp_path / "trunc.core"
    path.write_bytes(data[:-100])
    s = summarize(path)
    assert s["memory"][0]["beyond_eof"] is True
    assert "past end of file" in render_text(s)


def _gcore(tmp_path):
    if not shutil.which("gdb"):
        pytest.skip("gdb not installed")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        path = tmp_path / "gcore.core"
        out = subprocess.run(["gdb", "-batch", "-nx", "-p", str(proc.pid), "-ex", f"gcore {path}"],
                             capture_output=True, text=True, timeout=seconds(60))
        if not path.exists():
            pytest.skip(f"gdb gcore not possible here: {out.stderr.strip()[-200:]}")
        return path, proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_real_gdb_gcore(tmp_path):
    path, pid = _gcore(tmp_path)
    s = summarize(path)
    json.dumps(s)
    assert s["arch"] == "x86_64" and len(s["vcpus"]) == 1 and s["vcpus"][0]["pid"] == pid
    assert s["vcpus"][0]["regs"]["rip"] and s["memory"]
    assert "NT_FILE" in {n["type_name"] for n in s["notes"]}
    render_text(s)


def test_real_qemu_dump(tmp_path):
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        pytest.skip("qemu-system-x86_64 not installed")
    path = tmp_path / "qemu.core"
    subprocess.run([qemu, "-machine", "pc,accel=tcg", "-m", "16", "-display", "none",
                    "-nodefaults", "-monitor", "stdio", "-S"],
                   input=f"dump-guest-memory {path}\nquit\n", capture_output=True, text=True,
                   timeout=60)
    if not path.exists():
        pytest.skip("QEMU did not write a dump")
    s = summarize(path)
    assert s["producer"] == "QEMU dump-guest-memory" and len(s["vcpus"]) == 1
    assert s["vcpus"][0]["regs"]["cr0"] is not None
    assert any(m["paddr"] == 0x100000 for m in s["memory"])
    render_text(s)


# ---------------------------------------------------------------------------------------------
# Hostile files: CoreFormatError, never a traceback, hang or huge allocation

@pytest.mark.parametrize("data,match", [
    (b"", "too short"),
    (b"\x7fELF", "too short"),
    (b"MZ" + bytes(100), "bad magic"),
    (make_foreign()[:40], "too short for an ELF64"),
])
def test_hostile_small_files(tmp_path, data, match):
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(CoreFormatError, match=match):
        summarize(path)


def test_hostile_note_sizes(tmp_path):
    data = bytearray(make_foreign(notes=[("CORE", 1, x86_prstatus(1))]))
    notes_at = struct.unpack_from("<Q", data, 64 + 8)[0]
    path = tmp_path / "bad"
    for field, value in ((0, 0xffffffff), (4, 0xfffffff0), (4, 337)):
        broken = bytearray(data)
        struct.pack_into("<I", broken, notes_at + field, value)
        path.write_bytes(broken)
        with pytest.raises(CoreFormatError, match=f"offset {notes_at:#x}: note"):
            summarize(path)
    broken = bytearray(data)
    struct.pack_into("<Q", broken, 64 + 32, 1 << 62)          # PT_NOTE p_filesz
    path.write_bytes(broken)
    with pytest.raises(CoreFormatError, match="PT_NOTE 0"):
        summarize(path)


def test_hostile_program_header_counts(tmp_path):
    data = bytearray(make_foreign())
    struct.pack_into("<H", data, 56, 0xfff0)
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(CoreFormatError, match="program header table"):
        summarize(path)


def test_short_prstatus_has_no_registers(tmp_path):
    path = tmp_path / "short.core"
    path.write_bytes(make_foreign(notes=[("CORE", 1, bytes(100))]))
    s = summarize(path)
    assert s["vcpus"] == [dict(id=0, pid=None, regs={k: None for k in REG_KEYS}, mp_state=None,
                               tsc_khz=None, apic_base=None, msrs=None, xcr0=None, xsave_size=None,
                               sections={})]


def test_random_corruption_of_foreign_core(tmp_path):
    base = make_foreign(notes=[("CORE", 1, x86_prstatus(5, rip=1)), ("QEMU", 0, bytes(440)),
                               ("CORE", 2, bytes(512))], loads=[(0, bytes(4096))])
    rng = random.Random(99)
    path = tmp_path / "fuzz.core"
    header_len = len(base) - 4096
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(header_len)] = rng.randrange(256)
        path.write_bytes(data)
        try:
            s = summarize(path)
        except CoreFormatError as e:
            assert "\n" not in str(e)
        else:
            json.dumps(s)
            render_text(s)


def test_random_corruption_of_kvmsnap_core(any_core_path):
    core_path = any_core_path
    base = core_path.read_bytes()
    rng = random.Random(7)
    for _ in range(200):
        data = bytearray(base[:0x6000])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(0x6000)] = rng.randrange(256)
        core_path.write_bytes(bytes(data) + base[0x6000:])
        try:
            render_text(summarize(core_path))
        except CoreFormatError as e:
            assert "\n" not in str(e)
