"""``inspect --json`` against gdb and lldb on real cores: every register each debugger shows, for
every thread/vCPU, equals the decoded value.  Cores: kvmsnap saves (smp: 2 vCPUs; fpu: AVX-512; aarch64 cores written
from a synthetic state, with and without SVE), QEMU x86-64 dumps
with paging off and on, a QEMU aarch64 dump (TCG), gdb gcore and a kernel process core."""
import json

import pytest

import dumptools
from conftest import KVM, run_kvmsnap
from dumptools import core_of, have


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
              "fpcr": lambda: fpu["fpcr"]["value"], "pkru": lambda: fpu["pkru"],
              "tpidr": lambda: s["arm"]["NT_ARM_TLS"]["tpidr_el0"]}
    if name in simple:
        return simple[name]()
    if name in ("cs", "ss", "ds", "es", "fs", "gs"):
        return s["segments"][name]["selector"]
    sve = s.get("arm", {}).get("NT_ARM_SVE", {})
    if name in ("vg", "ffr") or name[:1] in "zp" and name[1:].isdigit() and sve:
        return sve[name] if name in ("vg", "ffr") else sve[name[0]][int(name[1:])]
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


KINDS = ["kvmsnap-smp", "kvmsnap-fpu", "kvmsnap-arm64", "kvmsnap-arm64-sve", "qemu-x86-paging-off", "qemu-x86-paging-on", "qemu-arm64",
         "gcore", "kernel"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_gdb_register_matches_inspect(kind, cores):
    if kind.startswith(("kvmsnap-smp", "kvmsnap-fpu", "qemu-x86")) and not KVM:
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
    if kind in ("qemu-arm64", "kvmsnap-arm64"):
        assert {"v31", "fpcr", "cpsr", "x30"} <= set(seen[1])
    if kind == "kvmsnap-arm64-sve":
        assert {"z31", "vg", "fpcr", "cpsr", "x30"} <= set(seen[1])


# lldb's views of the x86-64 GPRs: (whole register, bits, shift)
_X86_PARTS = {**{f"e{r}": (f"r{r}", 32, 0) for r in ("ax", "bx", "cx", "dx", "di", "si", "bp", "sp")},
              **{r: (f"r{r}", 16, 0) for r in ("ax", "bx", "cx", "dx", "di", "si", "bp", "sp")},
              **{f"{r}l": (f"r{r}", 8, 0) for r in ("di", "si", "bp", "sp")},
              **{f"{c}l": (f"r{c}x", 8, 0) for c in "abcd"}, **{f"{c}h": (f"r{c}x", 8, 8) for c in "abcd"},
              **{f"r{n}{s}": (f"r{n}", bits, 0) for n in range(8, 16) for s, bits in (("d", 32), ("w", 16),
                                                                                          ("l", 8))}}


def expected_lldb(name: str, s: dict):
    """What ``inspect --json`` says for lldb's register ``name``: lldb's own names, then gdb's."""
    regs, fpu = s["regs"], s.get("fpu", {})
    x87 = fpu.get("x87", {})
    if name in _X86_PARTS and name not in regs:
        whole, bits, shift = _X86_PARTS[name]
        return regs[whole]["value"] >> shift & ((1 << bits) - 1) if isinstance(regs[whole], dict) \
            else regs[whole] >> shift & ((1 << bits) - 1)
    lldb_only = {"ftag": lambda: x87["ftw"],              # FXSAVE's abridged tag word, as the note holds it
                 "fip": lambda: x87["fip"], "fdp": lambda: x87["fdp"],
                 "fiseg": lambda: x87["fip"] >> 32, "foseg": lambda: x87["fdp"] >> 32,
                 "mxcsrmask": lambda: fpu["mxcsr_mask"],
                 "fp": lambda: regs["x29"], "lr": lambda: regs["x30"]}
    if name in lldb_only:
        return lldb_only[name]()
    if name.startswith("mm") and name[2:].isdigit():       # MMX: the low 64 bits of the x87 register
        return int(x87["st"][int(name[2:])], 16) & ((1 << 64) - 1)
    value = expected(name, s)
    if isinstance(value, str) and len(value) <= 18:       # lldb gives registers of up to 64 bits as ints
        return int(value, 16)
    return value


# lldb 14 opens no QEMU dump ("Don't know how to parse core file. Unsupported OS.")
@pytest.mark.parametrize("kind", [k for k in KINDS if not k.startswith("qemu")])
def test_every_lldb_register_matches_inspect(kind, cores):
    """lldb reads every register of every vCPU (thread) as inspect decodes it. lldb 14 shows no AVX
    state from any core (gcore's neither): it reads x87, SSE and the GPRs."""
    if not have("lldb"):
        pytest.skip("lldb is installed by .ci/setup")
    if kind.startswith(("kvmsnap-smp", "kvmsnap-fpu", "qemu-x86")) and not KVM:
        pytest.skip("needs /dev/kvm")
    core = core_of(kind, cores)
    by_tid = {v["pid"]: v for v in inspect_json(core)["vcpus"]}
    seen = dumptools.lldb_registers(core)
    assert seen and set(seen) == set(by_tid), (set(seen), set(by_tid))
    compared = 0
    for tid, registers in seen.items():
        for name, value in registers.items():
            assert expected_lldb(name, by_tid[tid]["sections"]) == value, (kind, tid, name, value)
            compared += 1
    assert compared >= 17 * len(seen)
