"""``kvmsnap diff``: two saves of ``counter`` a second apart name the changed registers and the
page that holds the counter; a changed RIP is named; a core against itself is identical."""
import json
import struct

import pytest
from elftools.elf.elffile import ELFFile

import dumptools
from conftest import KVM, run_kvmsnap
from kvmsnap.diff import diff
from kvmsnap.samples import SAMPLES
from synthetic import RIP, make_state, write

needs_kvm = pytest.mark.skipif(not KVM, reason="needs /dev/kvm")


def test_changed_rip_and_page_are_named(tmp_path):
    state = make_state()
    write(state, tmp_path / "a.core")
    regs = bytearray(state.vcpus[1].regs)
    struct.pack_into("<Q", regs, 128, RIP + 0x40)            # kvm_regs.rip
    state.vcpus[1].regs = bytes(regs)
    state.memory.buffers()[0][0][0x300008] ^= 0xff
    write(state, tmp_path / "b.core")
    d = diff(tmp_path / "a.core", tmp_path / "b.core")
    assert [(r["vcpu"], r["name"], r["a"], r["b"]) for r in d["registers"]] == \
        [(1, "regs.rip", RIP + 1, RIP + 0x40)]
    assert d["memory"]["ranges"] == [dict(start=0x300000, end=0x301000, pages=1)]
    assert [(n["vcpu"], n["type_name"], n["status"]) for n in d["notes"]] == \
        [(1, "NT_PRSTATUS", "changed"), (1, "QEMU_CPUSTATE", "changed")]


def count_page() -> int:
    with open(SAMPLES["counter"].path, "rb") as f:
        symbol = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("count")[0]
    return symbol["st_value"] & ~0xfff


@needs_kvm
def test_two_saves_of_counter(tmp_path):
    """The counter spends nearly all its time in one spin loop of tick_wait, where the VMM's
    kick lands on the same instruction: the RIPs of the two saves usually agree, and then
    regs.rip must not be listed; when they differ it must be."""
    a, b = dumptools.kvmsnap_save(tmp_path, "counter", tmp_path / "a.core", tmp_path / "b.core",
                                  pause=1.0)
    rips = [json.loads(run_kvmsnap("inspect", p, "--json").stdout)["vcpus"][0]["regs"]["rip"]
            for p in (a, b)]
    r = run_kvmsnap("diff", a, b, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    changed = {(x["vcpu"], x["name"]): (x["a"], x["b"]) for x in d["registers"]}
    assert changed.get((0, "regs.rip")) == (tuple(rips) if rips[0] != rips[1] else None)
    assert (0, "regs.r12") in changed                    # the counter's register copy
    page = count_page()
    assert any(rg["start"] <= page < rg["end"] for rg in d["memory"]["ranges"]), d["memory"]
    assert d["memory"]["changed_pages"] < 16 and not d["identical"]
    assert {n["type_name"] for n in d["notes"]} >= {"NT_PRSTATUS", "KVMSNAP_MSRS"}
    text = run_kvmsnap("diff", a, b).stdout
    assert "regs.r12" in text and f"{page:#014x}-{page + 4096:#014x}" in text

    same = json.loads(run_kvmsnap("diff", a, a, "--json").stdout)
    assert same["identical"] and same["memory"]["changed_pages"] == 0
    assert run_kvmsnap("diff", a, a).stdout.rstrip().endswith("identical")
