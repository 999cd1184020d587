"""``inspect`` text as a person reads it: labelled PIT channels, the IOAPIC redirection table,
no all-zero registers or CPUID leaves unless asked, no process-only fields for vCPUs, "vCPU 1 of 2",
and no line over 120 columns, on synthetic cores and on real kvmsnap, QEMU, gdb and kernel cores."""
import struct

import pytest

from conftest import needs_kvm
from dumptools import core_of, have, kvmsnap_save
from kvmsnap.describe import render_text
from kvmsnap.formats import elf
from kvmsnap.summary import summarize
from synthetic import K1, make_foreign
from test_inspect import x86_prstatus


def section(text: str, vcpu: int, name: str) -> list[str]:
    """The lines of one vCPU section in ``text`` (without its `` name:`` line)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"vCPU {vcpu}")) + 1
    at = lines.index(f" {name}:", at) + 1
    end = next((i for i in range(at, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return lines[at:end]


def assert_fits(text: str):
    long = [line for line in text.splitlines() if len(line) > 120]
    assert not long, f"{len(long)} lines over 120 columns, e.g. {long[0]!r}"


def test_pit_channels_are_labelled(core_path):
    text = render_text(summarize(core_path))
    assert "    channel 0 (system timer, IRQ0): mode 3 (square wave), access lsb then msb" in text
    assert "    channel 1 (DRAM refresh, legacy): mode 0 (interrupt on terminal count)" in text
    assert "    channel 2 (PC speaker): " in text


def test_ioapic_redirection_table(core_path):
    s = summarize(core_path)
    pins = s["devices"]["ioapic"]["redirtbl"]
    text = render_text(s)                   # the synthetic IOAPIC has a vector on every pin
    assert "    pin  0: vector 0x20, fixed, physical destination 0, edge, active high, masked" in text
    assert "    pin 23: vector 0x37," in text and "pins masked with default settings" not in text
    for p in pins[1:]:
        p["vector"] = 0                     # reset value: masked, everything else zero
    pins[0].update(masked=0, trigger="level", polarity="active low", dest_id=1, remote_irr=1)
    text = render_text(s)
    assert "    pin  0: vector 0x20, fixed, physical destination 1, level, active low, unmasked, " \
           "remote IRR" in text
    assert "    pin  1:" not in text
    assert "    23 of 24 pins masked with default settings, not shown; --all shows them" in text
    assert "    pin 23: vector 0x0, fixed, physical destination 0, edge, active high, masked" \
           in render_text(s, show_all=True)
    pins[0].update(masked=1, trigger="edge", polarity="active high", dest_id=0, remote_irr=0,
                   vector=0)
    assert "    all 24 pins masked with default settings" in render_text(s)


def test_all_zero_registers_are_counted_not_shown(core_path):
    s = summarize(core_path)
    fpu = section(render_text(s), 0, "fpu")
    words = set(" ".join(fpu).split())
    assert {"zmm0", "zmm15", "k1", f"{K1:#x}"} <= words
    assert not words & {"st0", "st7", "zmm16", "zmm31", "k0", "k7"}
    assert fpu[-1] == "  31 all-zero registers not shown; --all shows them"   # st0-7, zmm16-31, 7 k
    fpu = section(render_text(s, show_all=True), 0, "fpu")
    assert {"st0", "st7", "zmm31", "k0"} <= set(" ".join(fpu).split())
    assert "not shown" not in "\n".join(fpu)


def test_wide_registers_split_in_256_bit_halves(core_path):
    s = summarize(core_path)
    zmm0 = s["vcpus"][0]["sections"]["fpu"]["zmm"][0]
    fpu = section(render_text(s), 0, "fpu")
    at = next(i for i, line in enumerate(fpu) if line.startswith("  zmm0 "))
    assert fpu[at] == "  zmm0      " + zmm0[:66] and fpu[at + 1] == " " * 14 + zmm0[66:]


def test_all_zero_cpuid_leaves_are_counted_not_shown(core_path):
    s = summarize(core_path)
    s["vcpus"] = list(s["vcpus"])                  # decoded once, to be edited (a summary makes them as read)
    rows = s["vcpus"][0]["sections"]["cpuid"]
    rows += [dict(rows[0], function=f, index=0, eax=0, ebx=0, ecx=0, edx=0, features=[])
             for f in (0x14, 0x15)]
    cpuid = section(render_text(s), 0, "cpuid")
    assert not any(line.startswith("  0x00000014.0") for line in cpuid)
    assert cpuid[-1] == "  2 all-zero CPUID leaves not shown; --all shows them"
    cpuid = section(render_text(s, show_all=True), 0, "cpuid")
    assert "  0x00000015.0   eax 00000000 ebx 00000000 ecx 00000000 edx 00000000" in cpuid


def test_vcpu_threads_without_process_fields(core_path, tmp_path):
    assert section(render_text(summarize(core_path)), 1, "thread") == ["  pid 2, fpvalid 1"]
    path = tmp_path / "proc.core"
    path.write_bytes(make_foreign(notes=[("CORE", 1, x86_prstatus(100, rip=0x401000))]))
    s = summarize(path)                     # a process killed by SIGSEGV: ppid 1, pgrp = sid = 100
    assert section(render_text(s), 0, "thread") == [
        "  pid 100, ppid 1, pgrp 100, sid 100, signal 11, cursig 11, fpvalid 1"]
    assert "sigpend 0x0" in section(render_text(s, show_all=True), 0, "thread")[0]


def test_vcpu_n_of_total(core_path):
    text = render_text(summarize(core_path, vcpu=1))
    assert "vCPU:         1 of 2" in text and "\nvCPU 1 of 2 (pid 2):" in text
    assert "vCPU 0" not in text


def test_i386_registers_are_shown(tmp_path):
    desc = bytearray(144)
    struct.pack_into("<i", desc, 24, 7)
    struct.pack_into("<I", desc, 72 + 12 * 4, 0xfff0)                   # eip
    path = tmp_path / "i386.core"
    path.write_bytes(make_foreign(machine=elf.EM_386, notes=[("CORE", 1, bytes(desc))]))
    regs = section(render_text(summarize(path)), 0, "regs")
    assert any("eip" in line and "0xfff0" in line for line in regs)


def test_lines_fit_in_120_columns(core_path):
    for s in (summarize(core_path), summarize(core_path, vcpu=1)):
        assert_fits(render_text(s))
        assert_fits(render_text(s, show_all=True))


def real_core(kind, cores):
    """dumptools.core_of, plus a kvmsnap save of the timer sample."""
    cache, factory = cores
    if kind == "kvmsnap-timer" and kind not in cache:
        d = factory.mktemp(kind)
        cache[kind] = kvmsnap_save(d, "timer", d / f"{kind}.core")[0]
    return core_of(kind, cores)


@pytest.mark.parametrize("kind", [
    pytest.param("kvmsnap-fpu", marks=needs_kvm), pytest.param("kvmsnap-timer", marks=needs_kvm),
    pytest.param("kvmsnap-smp", marks=needs_kvm), pytest.param("qemu-x86-paging-on", marks=needs_kvm),
    "qemu-arm64",
    pytest.param("gcore", marks=pytest.mark.skipif(not have("gdb"), reason="needs gdb")),
    "kernel"])
def test_real_cores_fit_in_120_columns(kind, cores):
    path = real_core(kind, cores)
    s = summarize(path)
    assert_fits(render_text(s))
    assert_fits(render_text(s, show_all=True))
    if len(s["vcpus"]) > 1:
        assert_fits(render_text(summarize(path, vcpu=1)))
    if kind.startswith("kvmsnap"):
        text = render_text(s)
        assert "channel 2 (PC speaker)" in text and "pins masked with default settings" in text
        assert " thread:\n  pid 1, fpvalid 1\n" in text
    if kind.startswith("qemu-x86"):
        assert " thread:\n  pid 1, fpvalid 0\n" in render_text(s)
        assert "\nvCPU 1 of 2 (pid 2):" in render_text(summarize(path, vcpu=1))
