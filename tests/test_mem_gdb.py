"""``kvmsnap mem`` against gdb's reads: at each vCPU's saved RIP and RSP (virtual, through the page
tables) and at physical addresses, on kvmsnap saves, QEMU dumps (paging off and on) and process
cores; unmapped addresses and pages not in the file are one-line errors."""
import json
import subprocess

import pytest

import dumptools
from conftest import KVM, kvmsnap_cmd, run_kvmsnap, seconds
from dumptools import core_of

pytestmark = pytest.mark.skipif(not KVM, reason="needs /dev/kvm")


def mem_raw(core, addr, length, *args) -> subprocess.CompletedProcess:
    return subprocess.run(kvmsnap_cmd("mem", core, hex(addr), str(length), "--format", "raw", *args),
                          capture_output=True, timeout=seconds(60))


def mem(core, addr, length, *args) -> bytes:
    r = mem_raw(core, addr, length, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def vcpus(core) -> list[dict]:
    r = run_kvmsnap("inspect", core, "--json", "--section", "regs")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["vcpus"]


@pytest.mark.parametrize("kind", ["kvmsnap-smp", "qemu-x86-paging-off"])
def test_virtual_at_rip_and_rsp_and_physical_equal_gdb(kind, cores, tmp_path):
    core = core_of(kind, cores)
    for v in vcpus(core):
        for reg in ("rip", "rsp"):
            addr = v["regs"][reg] - (64 if reg == "rsp" else 0)
            assert mem(core, addr, 128, "--virtual", "--vcpu", str(v["id"])) == \
                dumptools.gdb_read(core, hex(addr), 128, tmp_path), (v["id"], reg)
    for addr in (0x100000, 0x101440, 0x7ff0):      # guest text, data, low RAM
        assert mem(core, addr, 256) == dumptools.gdb_read(core, hex(addr), 256, tmp_path)


def test_paging_dump_translates_like_the_identity_view(cores, tmp_path):
    """QEMU 7.2's paging dump gives low-half mappings p_vaddr 0xffff…; ``mem --virtual`` walks the
    page tables instead, and must read what gdb reads at that address in the paging-off dump,
    written at the same stop."""
    on, off = core_of("qemu-x86-paging-on", cores), core_of("qemu-x86-paging-off", cores)
    for v in vcpus(on):
        rip = v["regs"]["rip"]
        assert mem(on, rip, 64, "--virtual", "--vcpu", str(v["id"])) == \
            dumptools.gdb_read(off, hex(rip), 64, tmp_path)
    assert mem(on, 0x101000, 4096) == mem(off, 0x101000, 4096)


@pytest.mark.parametrize("kind", ["gcore", "kernel"])
def test_process_cores(kind, cores, tmp_path):
    core = core_of(kind, cores)
    for v in vcpus(core):
        rsp = v["regs"]["rsp"]
        assert mem(core, rsp, 64, "--virtual") == dumptools.gdb_read(core, hex(rsp), 64, tmp_path)
    rip = vcpus(core)[0]["regs"]["rip"]
    r = mem_raw(core, rip, 16, "--virtual")
    # gcore and the kernel leave read-only file pages (library text) out of the core; gdb reads
    # them from the files on disk, kvmsnap reads the core only and says so
    assert r.returncode == 1 and (b"not in the core" in r.stderr or b"not in the file"
                                  in r.stderr) and r.stderr.count(b"\n") == 1 or \
        r.stdout == dumptools.gdb_read(core, hex(rip), 16, tmp_path)
    r = run_kvmsnap("mem", core, "0x1000", "16")
    assert r.returncode == 2 and "no guest-physical memory" in r.stderr


def test_errors_are_one_line(cores):
    core = core_of("kvmsnap-smp", cores)
    for args, code, what in [(("0x7fff00000000", "--virtual"), 1, "not mapped (PML4E not present)"),
                             (("0x40000000",), 1, "guest-physical 0x40000000 is not in the core"),
                             (("0x1000", "--virtual", "--vcpu", "9"), 2, "no paging state for vCPU 9"),
                             (("0x1000", "0"), 2, "length 0 out of range")]:
        r = run_kvmsnap("mem", core, *args)
        assert r.returncode == code and what in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_hex_format(cores):
    core = core_of("kvmsnap-smp", cores)
    r = run_kvmsnap("mem", core, "0x100000", "32")
    assert r.returncode == 0 and r.stdout.startswith("0000000000100000  ")
    assert len(r.stdout.splitlines()) == 2
