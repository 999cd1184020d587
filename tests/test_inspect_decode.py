"""``inspect`` decoding on synthetic cores: every kvmsnap note by name, VMCOREINFO, the arm64
KVM one-reg note and NT_ARM_* notes, unknown notes, --raw/--vcpu/--section; hostile cores give a
one-line error naming the offset, exit 1, quickly and in bounded memory."""
import dataclasses
import json
import resource
import struct
import subprocess
import time

import blake3
import pytest

from conftest import kvmsnap_cmd, run_kvmsnap, seconds
from kvmsnap import notes as N
from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.formats import elf
from kvmsnap.summary import summarize
from synthetic import RIP, make_foreign


def test_kvmsnap_sections(core_path):
    s = summarize(core_path)
    v = s["vcpus"][1]["sections"]
    assert set(v) == {"thread", "regs", "segments", "control", "debug", "fpu", "msrs", "lapic",
                      "events", "mp_state", "cpuid"}
    assert v["regs"]["rip"] == RIP + 1 and v["regs"]["rflags"]["flags"] == ["IF"]
    assert v["control"]["cr0"]["flags"][-1] == "PG" and "LMA" in v["control"]["efer"]["flags"]
    assert v["control"]["xcr0"]["flags"] == ["x87", "sse", "avx", "opmask", "zmm_hi256",
                                             "hi16_zmm"]
    assert "64-bit" in v["segments"]["cs"]["attributes"] and v["segments"]["cs"]["selector"] == 8
    assert len(v["fpu"]["zmm"]) == 32 and len(v["fpu"]["k"]) == 8 and len(v["fpu"]["xmm"]) == 32
    assert v["mp_state"] == {"value": 3, "name": "HALTED"}
    assert all(set(m) == {"index", "name", "value"} for m in v["msrs"])
    assert {"timer", "lvt", "isr", "irr", "tmr", "svr", "tpr", "id"} <= set(v["lapic"])
    assert set(s["devices"]) == {"uart", "uart_input", "pic_master", "pic_slave", "ioapic", "pit", "clock",
                                "cmos", "pci", "acpi_pm"}
    assert s["devices"]["uart_input"] == {"length": 6, "text": "ls -l\n"}
    assert len(s["devices"]["ioapic"]["redirtbl"]) == 24
    assert all(n["decoded"] for n in s["notes"])
    json.dumps(s)


def test_vcpu_and_section_selection(core_path):
    s = summarize(core_path, vcpu=1, sections=["lapic", "msrs"])
    assert [v["id"] for v in s["vcpus"]] == [1] and set(s["vcpus"][0]["sections"]) == {"lapic",
                                                                                       "msrs"}
    r = run_kvmsnap("inspect", core_path, "--vcpu", "1", "--section", "regs", "--section", "fpu")
    assert r.returncode == 0 and " regs:" in r.stdout and " fpu:" in r.stdout
    assert " lapic:" not in r.stdout and "vCPU 0" not in r.stdout
    for args, what in [(("--vcpu", "7"), "no vCPU 7"), (("--section", "bogus"), "unknown section"),
                       (("--raw", "NT_NOPE"), "no note 'NT_NOPE'")]:
        r = run_kvmsnap("inspect", core_path, *args)
        assert r.returncode == 2 and what in r.stderr and r.stderr.count("\n") == 1


def test_raw_note(core_path):
    r = run_kvmsnap("inspect", core_path, "--raw", "KVMSNAP_MP_STATE", "--vcpu", "1")
    assert r.returncode == 0 and "KVMSNAP/KVMSNAP_MP_STATE" in r.stdout and "vCPU 1" in r.stdout
    assert "00 00 01 00 10 00 00 00 03 00 00 00" in r.stdout
    r = run_kvmsnap("inspect", core_path, "--raw", hex(N.KVMSNAP_LAPIC), "--json")
    assert json.loads(r.stdout)["size"] == 1032


def test_vmcoreinfo_and_unknown_notes(tmp_path):
    """QEMU writes VMCOREINFO only for Linux guests with the vmcoreinfo device: a synthetic one."""
    info = b"OSRELEASE=6.1.0-18-amd64\nPAGESIZE=4096\nSYMBOL(init_uts_ns)=ffffffff82a13f80\n\0"
    path = tmp_path / "vmcore"
    path.write_bytes(make_foreign(notes=[("VMCOREINFO", 0, info), ("ACME", 7, bytes(24))]))
    s = summarize(path)
    assert s["producer"] == "Linux kdump (vmcore)"
    assert s["vmcoreinfo"]["fields"] == {"OSRELEASE": "6.1.0-18-amd64", "PAGESIZE": "4096",
                                         "SYMBOL(init_uts_ns)": "ffffffff82a13f80"}
    assert s["notes"][1] == dict(owner="ACME", type=7, type_name="0x7", size=24,
                                 offset=s["notes"][1]["offset"], vcpu=None, decoded=False,
                                 blake3=blake3.blake3(bytes(24)).hexdigest())
    text = run_kvmsnap("inspect", path).stdout
    assert "OSRELEASE = 6.1.0-18-amd64" in text and "(not decoded)" in text


def arm64_prstatus(pid, regs):
    desc = bytearray(arm64.elf_prstatus.sizeof())
    struct.pack_into("<i", desc, 32, pid)
    struct.pack_into("<34Q", desc, 112, *regs)
    return bytes(desc)


def test_arm64_notes(tmp_path):
    fp = bytes(range(256)) * 2 + struct.pack("<II8x", 0x8000001f, 0x00c00000)
    one_regs = N.KvmsnapArm64Regs.build(dict(reserved=0, regs=[
        dict(id=0x6030000000138000 | (3 << 14) | (1 << 7), value=struct.pack("<Q", 0x30d00800)),
        dict(id=0x6030000000100040, value=struct.pack("<Q", 0x40080000)),
        dict(id=0x6040000000100054 + 4, value=bytes(range(16))),
        dict(id=0x6030000000140000, value=struct.pack("<Q", 0x10001)),
        dict(id=0x6030000000138000 | (3 << 14) | (7 << 11) | (15 << 7) | (15 << 3) | 7,
             value=bytes(8))]))
    path = tmp_path / "arm.core"
    path.write_bytes(make_foreign(machine=elf.EM_AARCH64, notes=[
        ("CORE", N.NT_PRSTATUS, arm64_prstatus(1, list(range(33)) + [0x600003c5])),
        ("CORE", N.NT_PRFPREG, fp),
        ("LINUX", 0x401, struct.pack("<Q", 0x7f0000001000)),          # NT_ARM_TLS
        ("LINUX", 0x406, struct.pack("<QQ", 0xff7f << 48, 0xff7f << 48)),   # NT_ARM_PAC_MASK
        ("KVMSNAP", N.KVMSNAP_ARM64_REGS, one_regs)]))
    v = summarize(path)["vcpus"][0]["sections"]
    assert v["regs"]["x30"] == 30 and v["regs"]["pc"] == 32
    assert v["regs"]["pstate"]["flags"] == ["F", "I", "A", "D", "C", "Z"]
    assert v["regs"]["pstate"]["mode"] == "EL1h" and v["regs"]["pstate"]["sp"] == "SP_EL1"
    assert v["fpu"]["v"][1] == "0x" + bytes(range(16, 32))[::-1].hex()
    assert v["fpu"]["fpsr"]["flags"] == ["IOC", "DZC", "OFC", "UFC", "IXC", "N"]
    assert v["fpu"]["fpcr"]["rounding"] == "toward zero"
    assert v["arm"]["NT_ARM_TLS"] == {"tpidr_el0": 0x7f0000001000}
    assert v["arm"]["NT_ARM_PAC_MASK"]["insn_mask"] == 0xff7f << 48
    names = [(r["group"], r["name"], r["size"]) for r in v["sysregs"]]
    assert names == [("sysreg", "SCTLR_EL1", 8), ("core", "pc", 8), ("core", "v1", 16),
                     ("firmware", "KVM_REG_ARM_PSCI_VERSION", 8),
                     ("sysreg", "S3_7_C15_C15_7", 8)]
    assert v["sysregs"][0]["value"] == 0x30d00800 and v["sysregs"][0]["op0"] == 3
    assert v["sysregs"][2]["value"] == "0x" + bytes(range(16))[::-1].hex()
    assert "SCTLR_EL1" in run_kvmsnap("inspect", path).stdout


# ---------------------------------------------------------------------------------------------
# Hostile cores through the CLI: one line naming the offset, exit 1, fast, bounded memory

def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def run_limited(*args):
    started = time.monotonic()
    r = subprocess.run(kvmsnap_cmd(*args), capture_output=True, text=True, timeout=30,
                       preexec_fn=_limited)
    return r, time.monotonic() - started


def _corruptions(data: bytes):
    """(description, bytes, expected offset) for every ELF header and note header field."""
    phoff, phnum = struct.unpack_from("<QxxxxxxxxxxxxxxxxH", data, 32)[0], \
        struct.unpack_from("<H", data, 56)[0]
    notes_at, notes_size = struct.unpack_from("<Q16xQ", data, phoff + 8)
    load1 = phoff + 56
    yield "e_ident class", _put(data, 4, "<B", 9), 0x4
    yield "e_ident data", _put(data, 5, "<B", 2), 0x5
    yield "e_type", _put(data, 16, "<H", 2), 0x10
    yield "e_machine", _put(data, 18, "<H", 40), 0x12
    yield "e_version", _put(data, 20, "<I", 7), 0x14
    yield "e_phoff", _put(data, 32, "<Q", 1 << 60), 0x20
    yield "e_shoff", _put(_put(_put(data, 60, "<H", 3), 58, "<H", 64), 40, "<Q", 1 << 60), 0x28
    yield "e_flags", _put(data, 48, "<I", 1), 0x30
    yield "e_ehsize", _put(data, 52, "<H", 99), 0x34
    yield "e_phentsize", _put(data, 54, "<H", 32), 0x36
    yield "e_phnum", _put(data, 56, "<H", 0), 0x38
    yield "e_phnum (PN_XNUM)", _put(data, 56, "<H", 0xffff), 0x38
    yield "PT_NOTE p_filesz", _put(data, phoff + 32, "<Q", 1 << 62), phoff + 8
    yield "PT_LOAD p_offset into the notes", _put(data, load1 + 8, "<Q", 0), load1 + 8
    yield "PT_LOAD p_memsz", _put(data, load1 + 40, "<Q", 1), load1 + 40
    load2 = load1 + 56
    yield "PT_LOAD past the end", _put(_put(data, load2 + 32, "<Q", 1 << 40), load2 + 40, "<Q",
                                       1 << 40), load2 + 8
    yield "virtual alias overlapping the wrong bytes", _put(data, load1 + 24, "<Q", 0x1000), load1
    yield "n_namesz", _put(data, notes_at, "<I", 0xffffffff), notes_at
    yield "n_descsz", _put(data, notes_at + 4, "<I", 0xfffffff0), notes_at
    yield "private payload size", _put(data, notes_at + 20 + 4, "<I", 0xffff), notes_at + 24
    yield "truncated inside the notes", data[:notes_at + notes_size // 2], phoff + 8
    yield "truncated after the headers", data[:phoff + 56 * phnum], phoff + 8


def _put(data, offset, fmt, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_hostile_cores_fail_in_one_line(core_path, tmp_path):
    base = core_path.read_bytes()
    bad = tmp_path / "bad.core"
    for what, data, offset in _corruptions(base):
        bad.write_bytes(data)
        for command in (("inspect", bad), ("inspect", bad, "--json"), ("mem", bad, "0x100000"),
                        ("diff", core_path, bad)):
            r, took = run_limited(*command)
            assert r.returncode == 1, (what, command, r.stderr)
            line = f"kvmsnap: {bad}: offset {offset:#x}: "
            assert r.stderr.startswith(line) and r.stderr.count("\n") == 1, (what, r.stderr)
            expected_stdout = "" if "--json" not in command else \
                json.dumps({"error": r.stderr[len("kvmsnap: "):-1], "exit": 1}) + "\n"
            assert r.stdout == expected_stdout and took < seconds(5), (what, r.stdout, took)


def _peak_mib(*args) -> tuple[int, float]:
    """Run kvmsnap with ``args`` (output discarded); its exit status and peak RSS in MiB."""
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *kvmsnap_cmd(*args)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=seconds(300))
    return r.returncode, int(r.stderr.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_readers_of_a_4096_vcpu_core_stay_in_bounded_memory(tmp_path):
    """The largest core kvmsnap writes (4,096 vCPUs: 57,000 notes, 50 MB of them): inspect decodes
    its vCPUs one at a time and streams them out; mem does not hold its hex dump; diff reads one
    file at a time; verify checks every note and the standard notes of every vCPU."""
    from synthetic import make_state, make_vcpu, write
    state = make_state(1)
    state.vcpus = [dataclasses.replace(make_vcpu(i % 200), index=i) for i in range(4096)]
    state.config = state.config._replace(vcpus=4096)
    core = tmp_path / "big.core"
    write(state, core)
    for args, limit in ((("inspect", core, "--json"), 200), (("mem", core, "0", "8M"), 200),
                        (("diff", core, core, "--json"), 200), (("verify", core), 200)):
        status, peak = _peak_mib(*args)
        assert status == 0 and peak < limit, (args, status, peak)
