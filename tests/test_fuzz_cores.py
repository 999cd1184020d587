"""Fuzzing the offline readers (hypothesis): mutated copies of small valid cores must read, or fail
with one line naming the file (a KvmsnapError), within bounded time and memory.

Seeds, written once per module without KVM: a synthetic kvmsnap core (2 vCPUs, 8 MiB, paging with
a high alias) with an increment over it, the increment itself (its base intact), a QEMU-style
x86-64 guest dump and an aarch64 process core (tests/synthetic.py).  A mutation overwrites bytes,
sets a 2/4/8-byte field to a boundary value, truncates, or appends; offsets lean towards the ELF
header, the program headers, the notes (every header field and the first words of every
descriptor) and the page tables in guest RAM.  Each mutated file goes through read_core,
summarize (+ render_text, JSON), CoreMemory.open (+ read_phys/read_virt), diff (+ render_diff),
verify (digests and standard notes, restore's checks before it creates anything), and, for the kvmsnap core, the increment that names it as its base.

The default run is small and reproducible (derandomized, no example database): 40 examples per
target, about 40 s.  A longer campaign, random from a seed (about 0.1-0.4 s an example):
``KVMSNAP_FUZZ_EXAMPLES=1000 KVMSNAP_FUZZ_SEED=1 python3 -m pytest tests/test_fuzz_cores.py``.
What fuzzing found is kept at the end as fixed cases (test_found_by_fuzzing), with the hostile
base paths of an increment that no mutation of bytes can make.
"""
import gc
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings, strategies as st
from hypothesis import seed as hypothesis_seed
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.errors import InvalidArgument

from kvmsnap import notes as N
from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.describe import render_diff, render_text
from kvmsnap.diff import diff
from kvmsnap.errors import KvmsnapError
from kvmsnap.formats import elf
from kvmsnap.formats.kvmsnap import read_core, state_blake3
from kvmsnap.formats.reader import EHDR_OFFSETS, PHDR_OFFSETS, parse_elf
from kvmsnap.memory import PAGE_SIZE
from kvmsnap.memory.core import CoreMemory
from kvmsnap.state import Base
from kvmsnap.summary import summarize
from kvmsnap.verify import verify

from conftest import ROOT, needs_kvm, seconds
from synthetic import (CODE, HIGH_BASE, MiB, PD, PDPT, PDPT_HIGH, PML4, RIP, identity_page_tables,
                       make_foreign, make_state, make_xsave, write)

EXAMPLES = int(os.environ.get("KVMSNAP_FUZZ_EXAMPLES") or 40)   # per target
SEED = os.environ.get("KVMSNAP_FUZZ_SEED")                     # set: random, from this seed
DEADLINE = timedelta(seconds=seconds(2))     # per example, every reader together
HANG = seconds(30)                           # a reader still running then is hung: fail, do not wait
PEAK = 64 << 20                              # Python memory the readers may hold at once
ADDRESS_SPACE = 2 << 30                      # beyond this (over what the process has) fails fast

# No example database (database=None below); hypothesis still caches the constants it finds in the
# source (.hypothesis/constants in the working directory): outside the repository.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "kvmsnap-hypothesis"))

BOUNDARIES = (0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff,
              1 << 32, 1 << 62, 1 << 63, (1 << 64) - 1)
PAGE_A = 0x300000                            # rewritten by the increment
TARGETS = ("kvmsnap", "increment", "qemu", "arm64-process")


# ---------------------------------------------------------------------------------------------
# Seeds

@dataclass
class Seed:
    name: str
    original: str            # the valid core, never changed (diff's "a")
    work: str                # where each mutated copy is written
    data: bytes              # the original's bytes
    head: int                # end of the notes: headers and notes lie below
    points: list[int]        # offsets of structure: header fields, note fields, page tables
    pages: list[int]         # offsets of the pages of data holds that are not all zero
    phys: list[int]          # addresses to read_phys
    virt: list[int]          # addresses to read_virt (vCPUs 0 and 1; process addresses)
    names: tuple[str, ...] = ()     # files an error may name besides ``work``
    chain: list[str] = field(default_factory=list)   # increments read through ``work``

    def __repr__(self):             # hypothesis shows the fixture with a failing example
        return f"<seed {self.name}: {self.original}>"


class Seeds(dict):
    def __repr__(self):
        return f"<seeds {', '.join(self)}>"


def x86_prstatus(pid, **regs):
    tv = dict(tv_sec=0, tv_usec=0)
    return x86.elf_prstatus.build(dict(
        pr_info=dict(si_signo=0, si_code=0, si_errno=0), pr_cursig=0, pr_sigpend=0, pr_sighold=0,
        pr_pid=pid, pr_ppid=0, pr_pgrp=0, pr_sid=0, pr_utime=tv, pr_stime=tv, pr_cutime=tv,
        pr_cstime=tv, pr_reg={name: regs.get(name, 0) for name in x86.USER_REGS}, pr_fpvalid=1))


def qemu_cpustate(rip, cr3):
    seg = dict(selector=0x10, limit=0xffffffff, flags=0xc09300, pad=0, base=0)
    return x86.QEMUCPUState.build(dict(
        version=1, size=440, **{r: 0 for r in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp",
                                               "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
                                               "r14", "r15")},
        rip=rip, rflags=0x202,
        **{s: dict(seg, selector=8, flags=0xa09b00) if s == "cs" else seg
           for s in ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")},
        cr=[0x80050033, 0, 0, cr3, 0x20], kernel_gs_base=0))


def qemu_core() -> bytes:
    """A QEMU dump-guest-memory style x86-64 core: 2 CPUs (NT_PRSTATUS, NT_FPREGSET,
    NT_X86_XSTATE each, then a QEMUCPUState each), VMCOREINFO, and physical PT_LOADs: page tables
    (CR3), code, and a segment whose p_memsz exceeds its p_filesz."""
    xstate = bytearray(make_xsave()[:832])
    struct.pack_into("<Q", xstate, 464, 0x7)                  # XCR0: x87 | SSE | AVX
    notes = [("LINUX", N.NT_X86_XSAVE_LAYOUT, struct.pack("<4I", 2, 256, 576, 0))]
    for cpu in range(2):
        notes += [("CORE", N.NT_PRSTATUS, x86_prstatus(cpu + 1, rip=RIP + cpu, rsp=0x8000,
                                                       eflags=0x202, cs=8, ss=0x10)),
                  ("CORE", N.NT_FPREGSET, bytes(xstate[:512])),
                  ("LINUX", N.NT_X86_XSTATE, bytes(xstate))]
    notes += [("QEMU", N.NT_QEMU_CPUSTATE, qemu_cpustate(RIP + cpu, PML4)) for cpu in range(2)]
    notes += [("VMCOREINFO", N.NT_VMCOREINFO,
               b"OSRELEASE=6.1.0-fuzz\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffffffff82a0a000\n\0")]
    low = bytearray(0x20000)
    identity_page_tables(low)
    code = bytearray(0x2000)
    code[RIP - 0x100000:RIP - 0x100000 + len(CODE)] = CODE
    data = b"hello qemu dump!".ljust(PAGE_SIZE, b"\0")
    blobs = [(0, low, len(low)), (0x100000, code, len(code)), (PAGE_A, data, 3 * PAGE_SIZE)]
    at = -(-len(make_foreign(notes=notes, phdrs=[(0, 0, 0, 0)] * 3)) // PAGE_SIZE) * PAGE_SIZE
    phdrs, body = [], b""
    for paddr, blob, memsz in blobs:
        phdrs.append((paddr, at + len(body), len(blob), memsz))
        body += bytes(blob)
    return make_foreign(notes=notes, phdrs=phdrs).ljust(at, b"\0") + body


def arm64_process_core() -> bytes:
    """An aarch64 process core (two threads) with the notes Linux and kvmsnap write for arm64."""
    def prstatus(pid, pc):
        desc = bytearray(arm64.elf_prstatus.sizeof())
        struct.pack_into("<i", desc, 32, pid)
        struct.pack_into("<34Q", desc, 112, *range(31), 0x7ffff800, pc, 0x60000000)
        return bytes(desc)
    fp = bytes(range(256)) * 2 + struct.pack("<II8x", 0x8000001f, 0x00c00000)
    hw = struct.pack("<II", 0x0606, 0) + b"".join(struct.pack("<QII", 0x400000 + 4 * i, i & 1, 0)
                                                    for i in range(16))
    one_regs = N.KvmsnapArm64Regs.build(dict(reserved=0, regs=[
        dict(id=0x6030000000138000 | (3 << 14) | (1 << 7), value=struct.pack("<Q", 0x30d00800)),
        dict(id=0x6030000000100040, value=struct.pack("<Q", 0x400000)),
        dict(id=0x6040000000100054 + 4, value=bytes(range(16))),
        dict(id=0x6030000000140000, value=struct.pack("<Q", 0x10001))]))
    prpsinfo = struct.pack("<bcbb4xQII4i16s80s", 0, b"R", 0, 0, 0, 1000, 1000, 42, 1, 42, 42,
                           b"fuzz", b"./fuzz --hard")
    siginfo = struct.pack("<3i4xQ", 11, 0, 1, 0xdead0000).ljust(128, b"\0")
    auxv = struct.pack("<6Q", 6, 4096, 9, 0x400000, 0, 0)
    files = struct.pack("<QQ", 2, 4096) + struct.pack("<6Q", 0x400000, 0x401000, 0,
                                                        0x7ffff000, 0x7ffff000 + 4096, 3) \
        + b"/usr/bin/fuzz\0/lib/ld.so\0"
    notes = [("CORE", N.NT_PRPSINFO, prpsinfo),
             ("CORE", N.NT_PRSTATUS, prstatus(42, 0x400000)),
             ("CORE", N.NT_PRFPREG, fp),
             ("LINUX", 0x401, struct.pack("<Q", 0x7f0000001000)),                # NT_ARM_TLS
             ("LINUX", 0x402, hw),                                               # NT_ARM_HW_BREAK
             ("LINUX", 0x405, struct.pack("<IIHHHH", 528, 8720, 16, 256, 0, 0)),  # NT_ARM_SVE
             ("LINUX", 0x406, struct.pack("<QQ", 0xff7f << 48, 0xff7f << 48)),   # NT_ARM_PAC_MASK
             ("CORE", N.NT_SIGINFO, siginfo),
             ("KVMSNAP", N.KVMSNAP_ARM64_REGS, one_regs),
             ("CORE", N.NT_PRSTATUS, prstatus(43, 0x400004)),
             ("CORE", N.NT_PRFPREG, fp),
             ("CORE", N.NT_AUXV, auxv),
             ("CORE", N.NT_FILE, files)]
    code = bytes.fromhex("1f2003d5") * 1024              # nop
    stack = b"stack of thread 42".ljust(PAGE_SIZE, b"\0")
    return make_foreign(machine=elf.EM_AARCH64, notes=notes,
                        loads=[(0x400000, code), (0x7ffff000, stack)])


def _structure(data: bytes, path: str) -> tuple[int, list[int]]:
    """End of the notes, and the offset of every header field, note header field and of the first
    words of every descriptor and of every memory map region."""
    image = parse_elf(path)
    points = set(EHDR_OFFSETS[64].values())
    for at, _ in image.phdrs:
        points.update(at + o for o in PHDR_OFFSETS[64].values())
    regions = elf.offsets(N.KvmsnapMemoryMap)["regions"]
    region_fields = elf.offsets(N.kvmsnap_memory_region).values()
    for n in image.notes:
        points.update((n.offset, n.offset + 4, n.offset + 8, n.offset + 12))
        points.update(n.desc_offset + o for o in range(0, min(n.size, 64), 4))
        points.add(n.desc_offset + n.size)
        if (n.owner, n.type) == (N.OWNER_KVMSNAP, N.KVMSNAP_MEMORY_MAP):
            count = struct.unpack_from("<I", n.desc, 8)[0]
            for i in range(count):
                points.update(n.desc_offset + regions + 32 * i + o for o in region_fields)
        if (n.owner, n.type) == (N.OWNER_KVMSNAP, N.KVMSNAP_BASE):
            points.update(n.desc_offset + o for o in range(48, min(n.size, 48 + 64)))   # the path
    first = image.phdrs[0][1]
    head = first.p_offset + first.p_filesz
    return head, sorted(p for p in points if p < len(data))


def _data_pages(data: bytes) -> list[int]:
    zero = bytes(PAGE_SIZE)
    return [at for at in range(0, len(data), PAGE_SIZE) if data[at:at + PAGE_SIZE] != zero]


def _increment(base_result, path, changes: dict[int, bytes]):
    """An increment of ``base_result``'s core: the synthetic state with ``changes`` (page -> bytes)."""
    state = make_state()
    for page, data in changes.items():
        state.memory.write(page, data.ljust(PAGE_SIZE, b"\0"))
    state.base = Base(base_result.path, base_result.apparent_size,
                      bytes.fromhex(base_result.state_blake3))
    state.changed = [(p, p + PAGE_SIZE) for p in sorted(changes)]
    return write(state, path)


def build_seeds(root) -> dict[str, Seed]:
    """The seeds of every target under directory ``root`` (each target works in a directory of its
    own, so that no base is found beside another target's increment)."""
    root = str(root)
    for d in ("seeds", "kvmsnap", "increment", "qemu", "arm64-process"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    j = lambda *p: os.path.join(root, *p)
    full = write(make_state(), j("seeds", "full.core"))
    _increment(full, j("seeds", "inc.core"), {PAGE_A: b"first increment", 0x5ff000: b"B" * 4096})
    # The kvmsnap target's work file is the base of an increment: each mutation is read through it.
    work = write(make_state(), j("kvmsnap", "full.core"))
    _increment(work, j("kvmsnap", "inc.core"), {PAGE_A: b"through a mutated base"})
    with open(j("seeds", "qemu.core"), "wb") as f:
        f.write(qemu_core())
    with open(j("seeds", "arm64.core"), "wb") as f:
        f.write(arm64_process_core())

    seeds = Seeds()
    for name, original, work, names, chain in [
            ("kvmsnap", "full.core", j("kvmsnap", "full.core"), (), [j("kvmsnap", "inc.core")]),
            ("increment", "inc.core", j("increment", "inc.core"), (j("seeds", "full.core"),), []),
            ("qemu", "qemu.core", j("qemu", "qemu.core"), (), []),
            ("arm64-process", "arm64.core", j("arm64-process", "arm64.core"), (), [])]:
        original = j("seeds", original)
        with open(original, "rb") as f:
            data = f.read()
        head, points = _structure(data, original)
        pages = _data_pages(data)
        image = parse_elf(original)
        if name in ("kvmsnap", "increment"):
            slot = next((s for s in image.loads if s.paddr == s.vaddr == 0 and s.filesz == 8 * MiB),
                        None)
            if slot is not None:        # the page tables vCPUs walk (CR3 = PML4)
                points += [slot.offset + t + 8 * i for t in (PML4, PDPT, PD, PDPT_HIGH)
                           for i in (0, 1, 510, 511)]
            phys = [0, PML4, RIP, PAGE_A, 0x5ff000, 8 * MiB - 16, 8 * MiB]
            virt = [RIP, PAGE_A, HIGH_BASE + PAGE_A, HIGH_BASE + RIP]
        elif name == "qemu":
            points += [s.offset + t + 8 * i for s in image.loads if s.paddr == 0
                       for t in (PML4, PDPT, PD, PDPT_HIGH) for i in (0, 1, 510, 511)]
            phys = [0, PML4, RIP, PAGE_A, PAGE_A + PAGE_SIZE, 0x102000 - 8]
            virt = [RIP, PAGE_A, HIGH_BASE + PAGE_A]
        else:
            phys = [0]
            virt = [0x400000, 0x7ffff000, 0x400ff8]
        seeds[name] = Seed(name, original, work, data, head, sorted(set(points)), pages, phys,
                           virt, tuple(names), chain)
    return seeds


# ---------------------------------------------------------------------------------------------
# Mutations

def mutations(seed: Seed):
    """A list of 1-4 mutations of ``seed``: ``("bytes", offset, data)``, ``("field", offset,
    width, value)``, ``("truncate", length)``, ``("append", data)``, ``("extend", n)`` (zeros)."""
    size = len(seed.data)
    near = st.sampled_from(seed.points)
    offset = st.one_of(
        near,
        st.tuples(near, st.integers(-8, 8)).map(lambda t: max(0, t[0] + t[1])),
        st.integers(0, seed.head),
        st.integers(0, size - 1))
    value = st.one_of(st.sampled_from(BOUNDARIES + (size, size - 1, size + 1, seed.head,
                                                    PAGE_SIZE, 0x40, 0x38)),
                      st.integers(0, (1 << 64) - 1))
    one = st.one_of(
        st.tuples(st.just("bytes"), offset, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("field"), offset, st.sampled_from((2, 4, 8)), value),
        st.tuples(st.just("truncate"), st.one_of(near, st.integers(0, seed.head + 1),
                                                 st.integers(0, size))),
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("extend"), st.integers(1, 3 * PAGE_SIZE)))
    return st.lists(one, min_size=1, max_size=4)


def apply(seed: Seed, changes, path: str) -> int:
    """Write ``seed`` with ``changes`` to ``path`` (sparse, as the original); returns the size."""
    data = bytearray(seed.data)
    touched = set(seed.pages)
    for change in changes:
        kind = change[0]
        if kind in ("bytes", "field"):
            if not data:
                continue
            if kind == "bytes":
                raw = change[2]
            else:
                raw = (change[3] & ((1 << 8 * change[2]) - 1)).to_bytes(change[2], "little")
            at = min(change[1], len(data) - 1)
            raw = raw[:len(data) - at]
            data[at:at + len(raw)] = raw
            touched.update(range(at - at % PAGE_SIZE, at + len(raw), PAGE_SIZE))
        elif kind == "truncate":
            del data[change[1]:]
        elif kind == "append":
            touched.update(range(len(data) - len(data) % PAGE_SIZE, len(data) + len(change[1]),
                                 PAGE_SIZE))
            data += change[1]
        elif kind == "extend":
            data += bytes(change[1])
    with open(path, "wb") as f:
        for at in sorted(touched):
            if at < len(data):
                f.seek(at)
                f.write(data[at:at + PAGE_SIZE])
        f.truncate(len(data))
    return len(data)


# ---------------------------------------------------------------------------------------------
# The readers

class Hung(Exception):
    """A reader ran past HANG seconds."""


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _note(text: str) -> None:
    """hypothesis's note (shown with a failing example); nothing outside an example."""
    try:
        note(text)
    except InvalidArgument:
        pass


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def exercise(seed: Seed, path: str, swap: bool = False, extra: tuple[int, ...] = ()) -> list[str]:
    """Every offline reader on ``path``; each must succeed or raise a KvmsnapError of one line that
    starts with a file's name.  Returns what each gave, for the failure report."""
    names = (path,) + seed.names + tuple(seed.chain)
    outcome = []

    def attempt(what, fn, *args):
        _note(f"{what}: ...")
        try:
            result = fn(*args)
        except KvmsnapError as e:
            message = str(e)
            outcome.append(f"{what}: {type(e).__name__}: {message}")
            _note(outcome[-1])
            assert message and "\n" not in message, f"{what}: not one line: {message!r}"
            assert any(message.startswith(f"{name}: ") for name in names), \
                f"{what}: the error does not start with the file's name: {message!r}"
            return None
        outcome.append(f"{what}: ok")
        _note(outcome[-1])
        return result

    def core():
        read_core(path).close()

    def inspect():
        s = summarize(path)
        json.dumps(s, default=_json_default)
        render_text(s)
        render_text(s, show_all=True)

    def memory(core_path, vcpus=(0, 1)):
        def reads():
            with CoreMemory.open(core_path) as m:
                for addr in seed.phys + list(extra):
                    for length in (16, PAGE_SIZE):
                        attempt(f"  read_phys(0x{addr:x}, {length})", m.read_phys, addr, length)
                for addr in seed.virt + list(extra):
                    for vcpu in vcpus:
                        attempt(f"  read_virt({vcpu}, 0x{addr:x}, 16)", m.read_virt, vcpu, addr, 16)
        return reads

    def compare():
        d = diff(path, seed.original) if swap else diff(seed.original, path)
        json.dumps(d, default=_json_default)
        render_diff(d)

    attempt("read_core", core)
    attempt("summarize + render_text", inspect)
    attempt("CoreMemory.open", memory(path))
    attempt("diff" + (" (mutated first)" if swap else ""), compare)
    if seed.name in ("kvmsnap", "increment"):
        attempt("verify", lambda: json.dumps(verify(path)))
    for increment in seed.chain:
        attempt(f"read_core({os.path.basename(increment)})", lambda: read_core(increment).close())
        attempt(f"verify({os.path.basename(increment)})", lambda: verify(increment))
        attempt(f"CoreMemory.open({os.path.basename(increment)})", memory(increment, (0,)))
    return outcome


class Bounded:
    """Around one example: fail a reader that runs HANG seconds (SIGALRM), cap the address space
    (a runaway allocation fails at once, as MemoryError, instead of taking the machine), measure
    Python's peak memory (tracemalloc) and the file descriptors left open."""

    def __init__(self, hang: float = HANG):
        self.hang = hang

    def __enter__(self):
        gc.collect()
        self.fds = _open_fds()
        self.limit = resource.getrlimit(resource.RLIMIT_AS)
        cap = _address_space() + ADDRESS_SPACE
        if self.limit[1] == resource.RLIM_INFINITY or cap < self.limit[1]:
            resource.setrlimit(resource.RLIMIT_AS, (cap, self.limit[1]))
        self.alarm = signal.signal(signal.SIGALRM, self._hung)
        signal.setitimer(signal.ITIMER_REAL, self.hang)
        tracemalloc.start()
        return self

    def _hung(self, signum, frame):
        raise Hung(f"a reader ran for more than {self.hang} s")

    def __exit__(self, *exc):
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.alarm)
        resource.setrlimit(resource.RLIMIT_AS, self.limit)
        if exc[0] is None:
            assert self.peak < PEAK, f"the readers held {self.peak >> 20} MiB at once"
            gc.collect()
            leaked = _open_fds() - self.fds
            assert not leaked, "file descriptors left open: " + ", ".join(
                f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}" for fd in sorted(leaked)
                if os.path.exists(f"/proc/self/fd/{fd}"))
        return False


def run_example(seed: Seed, changes, swap: bool = False, extra=()) -> list[str]:
    size = apply(seed, changes, seed.work)
    _note(f"{seed.name}: {seed.work} ({size} bytes) = {seed.original} with {changes}")
    with Bounded():
        return exercise(seed, seed.work, swap, extra)


# ---------------------------------------------------------------------------------------------
# The tests

@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Every target's seed; each reads cleanly, which also warms the readers' imports and caches
    before any example is timed."""
    seeds = build_seeds(tmp_path_factory.mktemp("fuzz"))
    for seed in seeds.values():
        apply(seed, [], seed.work)
        with Bounded():
            outcome = exercise(seed, seed.work)
        failed = [o for o in outcome if not o.endswith(": ok") and "read_" not in o]
        assert not failed, failed
    return seeds


def _seeded(test):
    return hypothesis_seed(int(SEED))(test) if SEED else test


def test_seeds_are_valid_and_the_mutations_apply(seeds):
    """The seeds read in full; a copy with no mutation is the original, byte for byte and sparse."""
    for seed in seeds.values():
        size = apply(seed, [], seed.work)
        with open(seed.work, "rb") as f:
            assert f.read() == seed.data and size == len(seed.data)
    kv = seeds["kvmsnap"]
    with read_core(kv.work) as c:
        assert c.memory.read_virt(0, HIGH_BASE + RIP, len(CODE)) == CODE
    with read_core(kv.chain[0]) as c:           # the increment reads through the work file
        assert [m.path for m in c.memory.layers()] == [kv.work, kv.chain[0]]
        assert c.memory.read(PAGE_A, 22) == b"through a mutated base"
    with CoreMemory.open(seeds["qemu"].work) as m:
        assert m.read_virt(1, HIGH_BASE + RIP, len(CODE)) == CODE
        assert m.read_phys(PAGE_A, 16) == b"hello qemu dump!"
    with CoreMemory.open(seeds["arm64-process"].work) as m:
        assert m.read_virt(0, 0x7ffff000, 18) == b"stack of thread 42"
    assert os.stat(kv.work).st_blocks * 512 < 1 * MiB            # the 8 MiB core stays sparse


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=EXAMPLES, deadline=DEADLINE, database=None, derandomize=SEED is None,
          print_blob=False, phases=[Phase.explicit, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@_seeded
@given(data=st.data())
def test_mutated_cores_read_or_fail_in_one_line(seeds, target, data):
    seed = seeds[target]
    changes = data.draw(mutations(seed), label="mutations")
    swap = data.draw(st.booleans(), label="diff the mutated core first")
    extra = data.draw(st.lists(st.integers(0, (1 << 64) - 1), max_size=1), label="address")
    run_example(seed, changes, swap, tuple(extra))


# ---------------------------------------------------------------------------------------------
# What fuzzing found (each failed once): kept as fixed cases, so that they fail until fixed

def _base_path_offset(seed: Seed) -> int:
    """File offset of the first byte of the base's path in an increment's KVMSNAP_BASE."""
    note = next(n for n in parse_elf(seed.original).notes
                if (n.owner, n.type) == (N.OWNER_KVMSNAP, N.KVMSNAP_BASE))
    return note.desc_offset + elf.offsets(N.KvmsnapBase)["path"] + 2


FOUND = {
    # a NUL byte in the increment's base path: os.stat() raises ValueError (embedded null byte)
    "nul-in-base-path": ("increment", lambda seed: [("bytes", _base_path_offset(seed) + 3, b"\0")]),
    # the base's program header 0 is not PT_NOTE: state_blake3() reads p_offset + p_filesz bytes
    # before any check (MemoryError; OverflowError past 2^63)
    "base-phdr0-not-a-note": ("kvmsnap", lambda seed: [("field", 64, 4, elf.PT_NULL),
                                                        ("field", 64 + 32, 8, 1 << 36)]),
    "base-phdr0-not-a-note-2^63": ("kvmsnap", lambda seed: [("field", 64, 4, elf.PT_NULL),
                                                             ("field", 64 + 32, 8, 1 << 63)]),
}


@pytest.mark.parametrize("case", FOUND)
def test_found_by_fuzzing(seeds, case):
    target, changes = FOUND[case]
    seed = seeds[target]
    run_example(seed, changes(seed))


@pytest.fixture(scope="module")
def hostile_bases(seeds, tmp_path_factory):
    """Increments of the kvmsnap seed whose KVMSNAP_BASE names what is no core: a FIFO (which
    open() waits on for a writer), a directory, the empty path (so "beside the increment" is the
    increment's directory)."""
    root = tmp_path_factory.mktemp("bases")
    original = seeds["kvmsnap"].original
    digest = state_blake3(original, parse_elf(original))
    os.mkfifo(root / "fifo")
    (root / "dir").mkdir()
    cases = {"fifo": Base(str(root / "fifo"), 0, digest),
             "directory": Base(str(root / "dir"), os.stat(root / "dir").st_size, digest),
             "empty path": Base("", os.stat(root).st_size, digest)}
    out = {}
    for name, base in cases.items():
        state = make_state()
        state.memory.write(PAGE_A, b"x".ljust(PAGE_SIZE, b"\0"))
        state.base, state.changed = base, [(PAGE_A, PAGE_A + PAGE_SIZE)]
        out[name] = str(root / f"{name.replace(' ', '-')}.core")
        write(state, out[name])
    return out


@pytest.mark.parametrize("case", ["fifo", "directory", "empty path"])
def test_an_increment_naming_no_core_as_its_base_fails_in_one_line(hostile_bases, case):
    """Not a mutation of bytes, so the fuzzer cannot make it: the base path of an increment names
    something that is not a regular file.  Reading the increment must fail at once, naming it."""
    path = hostile_bases[case]
    for what, read in [("read_core", lambda: read_core(path).close()),
                       ("CoreMemory.open", lambda: CoreMemory.open(path).close())]:
        with Bounded(hang=seconds(5)):
            with pytest.raises(KvmsnapError) as e:
                read()
        message = str(e.value)
        assert "\n" not in message, (what, message)
        assert message.startswith(f"{path}: "), f"{what}: the error does not name {path}: {message}"


FUZZ_READERS = os.path.join(ROOT, "scripts", "fuzz_readers")


def fuzz_readers(reader, corpus, artifacts, runs, *args) -> subprocess.CompletedProcess:
    pytest.importorskip("atheris", reason="atheris is in the test extra: pip install '.[test]'")
    r = subprocess.run([sys.executable, FUZZ_READERS, "--reader", reader, "--corpus", corpus,
                        "--artifacts", artifacts, "--runs", str(runs), "--seed", "1", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Done " in r.stderr, r.stderr[-3000:]
    assert not [f for f in os.listdir(artifacts) if f.startswith(("crash-", "timeout-", "oom-"))]
    return r


@pytest.fixture(scope="module")
def real_seeds(tmp_path_factory):
    """The --real seeds (kvmsnap's, QEMU's and gcore's cores), made once: their paths."""
    corpus = tmp_path_factory.mktemp("real-corpus")
    fuzz_readers("core", corpus, corpus, 1, "--real")
    seeds = [corpus / name for name in os.listdir(corpus) if name.startswith("seed-real-")]
    assert len(seeds) == 3, seeds
    return seeds


@needs_kvm
@pytest.mark.parametrize("reader", ["core", "inspect", "verify", "mem", "diff"])
def test_the_coverage_guided_fuzzer_runs_each_reader(tmp_path, reader, real_seeds):
    """scripts/fuzz_readers (atheris) for 200 inputs from every seed, the cores kvmsnap, QEMU and
    gcore write here among them: the seeds read, no input breaks the contract. The long campaigns
    are in docs/reliability.md."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in real_seeds:
        shutil.copy(seed, corpus)
    r = fuzz_readers(reader, corpus, tmp_path, 200, "--real")
    done = re.search(r"Done (\d+) runs", r.stderr)     # libFuzzer may count a few re-runs of the seeds too
    assert done and int(done.group(1)) >= 200 and r.stderr.count("seed seed-real-") == 3, r.stderr[-3000:]


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(__file__), "fuzz_found"))))
def test_inputs_the_coverage_guided_fuzzer_found_read_cleanly(name, tmp_path):
    """Each crash scripts/fuzz_readers found, kept as it was found (tests/fuzz_found/): every reader
    now reads it or fails in one line. nt-file-with-fewer-names-than-mappings: a process core whose
    NT_FILE lists more mappings than names made `inspect` fail with an internal error."""
    path = tmp_path / name
    path.write_bytes(open(os.path.join(os.path.dirname(__file__), "fuzz_found", name), "rb").read())
    for reader in (lambda: render_text(summarize(path), show_all=True), lambda: json.dumps(summarize(path)),
                   lambda: CoreMemory.open(path).close(), lambda: read_core(path).close(), lambda: verify(path)):
        try:
            reader()
        except KvmsnapError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
