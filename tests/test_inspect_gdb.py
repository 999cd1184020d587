"""``inspect --json`` against gdb on real cores: every register gdb shows, for every thread/vCPU,
equals the decoded value.  Cores: kvmsnap saves (smp: 2 vCPUs; fpu: AVX-512), QEMU x86-64 dumps
with paging off and on, a QEMU aarch64 dump (TCG), gdb gcore and a kernel process core."""
import json

import pytest

import dumptools
from conftest import KVM, run_kvmsnap
from dumptools import core_of


def inspect_json(core, *args) -> dict:
    r = run_kvmsnap("inspect", core, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def expected(name: str, s: dict):
    """What ``inspect --json`` says for gdb's register ``name`` (sections of one vCPU)."""
    regs, fpu = s["regs"], s.get("fpu", {})
    x87 = fpu.get("x87", {})
    if name in regs:
        return regs[name]["value"] if isinstance(regs[name], dict) else regs[name]
    simple = {"eflags": lambda: regs["rflags"]["value"], "cpsr": lambda: regs["pstate"]["value"],
              "fs_base": lambda: s["segments"]["fs"]["base"],
              "gs_base": lambda: s["segments"]["gs"]["base"],
              "fctrl": lambda: x87["fcw"]["value"], "fstat": lambda: x87["fsw"]["value"],
              "ftag": lambda: x87["tag"], "fop": lambda: x87["fop"],
              "fioff": lambda: x87["fip"] & 0xffffffff, "fiseg": lambda: x87["fip"] >> 32 & 0xffff,
              "fooff": lambda: x87["fdp"] & 0xffffffff, "foseg": lambda: x87["fdp"] >> 32 & 0xffff,
              "mxcsr": lambda: fpu["mxcsr"]["value"], "fpsr": lambda: fpu["fpsr"]["value"],
              "fpcr": lambda: fpu["fpcr"]["value"], "pkru": lambda: fpu["pkru"]}
    if name in simple:
        return simple[name]()
    if name in ("cs", "ss", "ds", "es", "fs", "gs"):
        return s["segments"][name]["selector"]
    for prefix in ("st", "xmm", "ymm", "zmm", "k", "v"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            n = int(name[len(prefix):])
            return x87["st"][n] if prefix == "st" else fpu[prefix][n]
    # aarch64 views of v0-v31 (q: 128, d: 64, s: 32, h: 16, b: 8 bits) and of x0-x30 (w: 32)
    widths = {"q": 128, "d": 64, "s": 32, "h": 16, "b": 8, "w": 32}
    if name[:1] in widths and name[1:].isdigit():
        n, bits = int(name[1:]), widths[name[0]]
        whole = regs[f"x{n}"] if name[0] == "w" else int(fpu["v"][n], 16)
        value = whole & ((1 << bits) - 1)
        return value if bits <= 64 else "0x%032x" % value
    raise AssertionError(f"gdb shows {name!r}: inspect has no such register")


KINDS = ["kvmsnap-smp", "kvmsnap-fpu", "qemu-x86-paging-off", "qemu-x86-paging-on", "qemu-arm64",
         "gcore", "kernel"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_gdb_register_matches_inspect(kind, cores):
    if kind.startswith(("kvmsnap", "qemu-x86")) and not KVM:
        pytest.skip("needs /dev/kvm")
    core = core_of(kind, cores)
    summary = inspect_json(core)
    by_pid = {v["pid"]: v for v in summary["vcpus"]}
    seen = dumptools.gdb_registers(core)
    assert seen and set(seen) == set(by_pid), (set(seen), set(by_pid))
    compared = 0
    for lwp, registers in seen.items():
        sections = by_pid[lwp]["sections"]
        for name, value in registers.items():
            if value is None:
                continue
            assert expected(name, sections) == value, (kind, lwp, name)
            compared += 1
    assert compared >= 17 * len(seen)
    if kind == "kvmsnap-fpu":      # the widest vector (and mask) registers the CPU has were compared
        xcr0 = by_pid[1]["xcr0"]
        avx512 = xcr0 & 0xe0 == 0xe0
        widest = {"zmm31", "k7"} if avx512 else {"ymm15"} if xcr0 & 0x4 else {"xmm15"}
        assert widest | {"st7", "ftag"} <= set(seen[1])
    if kind == "qemu-arm64":
        assert {"v31", "fpcr", "cpsr", "x30"} <= set(seen[1])
