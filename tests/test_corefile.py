"""Core writer and validating reader: round trip, sparse files, gdb/readelf/pyelftools, atomic
writes, and one test per kind of corruption.  Offline: no KVM needed.

The states written come from ``tests/synthetic.py``; ``core_path`` is in ``tests/conftest.py``.
"""
import os
import re
import shutil
import struct
import subprocess
import time
import tracemalloc

import pytest

from kvmsnap import notes as N
from kvmsnap.arch import aarch64
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.arch.x86_64.notes import VCPU_NOTES
from kvmsnap.arch.x86_64.xsave import xstate_size
from kvmsnap.formats import elf, layout
from kvmsnap.formats.kvmsnap import FORMAT_MAJOR, FORMAT_MINOR, read_core
from kvmsnap.formats.reader import CoreFormatError, parse_elf
from kvmsnap.formats.writer import ZERO_CHUNK
from kvmsnap.memory import Slot
from kvmsnap.memory.pagemap import touched_runs
from kvmsnap.state import MachineConfig

from conftest import run_kvmsnap, seconds
from synthetic import (CODE, HIGH_BASE, K1, MiB, PD, PML4, PT, RIP, XCR0, identity_page_tables,
                       make_state, make_xsave, write, xmm, ymm_hi, zmm_hi)


# =============================================================================================
# Round trip

def test_round_trip_gives_identical_state(tmp_path):
    state = make_state()
    path = tmp_path / "vm.core"
    result = write(state, path)
    assert result.path == str(path) and result.bytes_written > 0
    core = read_core(path)
    got = core
    assert got.config == state.config
    assert got.vcpus == state.vcpus
    for name in ("pic_master", "pic_slave", "ioapic", "pit", "clock", "uart", "uart_input", "cmos", "pci",
                 "acpi_pm"):
        assert got.devices[name] == state.devices[name], name
    assert got.memory.slots() == [Slot(0, 0, 8 * MiB)]
    assert core.info.format_major == FORMAT_MAJOR and len(core.vcpus) == 2
    assert core.info.producer == "kvmsnap test" and core.info.host_kernel == "6.1.0-test"
    assert core.memory.read(0x300000, 16) == b"hello kvmsnap!!!"
    assert core.memory.read(RIP, 8) == CODE
    seg = next(s for s in core.info.elf.loads if s.physical)
    assert core.memory.slot_offset(0) == seg.offset
    assert seg.offset % 4096 == 0 and seg.filesz == 8 * MiB
    with open(path, "rb") as f:
        f.seek(seg.offset + 0x300000)
        assert f.read(16) == b"hello kvmsnap!!!"
    with pytest.raises(LookupError):
        core.memory.read(8 * MiB - 4, 8)
    core.close()


def test_round_trip_two_slots_sregs_and_no_paging(tmp_path):
    low, high = bytearray(2 * MiB), bytearray(1 * MiB)
    low[0x7c00:0x7c02] = b"\xeb\xfe"
    high[-4:] = b"\xde\xad\xbe\xef"
    state = make_state(1, paging=False, regions=[(Slot(1, 1 << 32, 1 * MiB), high),
                                                  (Slot(0, 0, 2 * MiB), low)])
    v = state.vcpus[0]
    s2 = x86.kvm_sregs2.parse(v.sregs)
    v.sregs = x86.kvm_sregs.build(dict({k: s2[k] for k in (
        "cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt", "gdt", "idt", "cr0", "cr2", "cr3", "cr4",
        "cr8", "efer", "apic_base")}, interrupt_bitmap=[0, 1 << 3, 0, 0]))
    v.sregs2 = False
    v.msrs = []
    v.cpuid = b""
    path = tmp_path / "two.core"
    result = write(state, path)
    assert result.virtual_segments == 0
    core = read_core(path)
    assert core.vcpus == state.vcpus
    assert core.memory.slots() == [Slot(0, 0, 2 * MiB), Slot(1, 1 << 32, 1 * MiB)]
    assert core.memory.read((1 << 32) + MiB - 4, 4) == b"\xde\xad\xbe\xef"
    assert core.memory.read(0x7c00, 2) == b"\xeb\xfe"
    assert [s.physical for s in core.info.elf.loads] == [True, True]


def test_notes_order_and_types(core_path):
    core = read_core(core_path)
    notes = core.info.elf.notes
    assert (notes[0].owner, notes[0].type) == ("KVMSNAP", N.KVMSNAP_HEADER)
    keys = [(n.owner, n.type) for n in notes]
    first_prstatus = keys.index(("CORE", N.NT_PRSTATUS))
    assert all(n.vcpu is None for n in notes[:first_prstatus])
    per_vcpu = keys[first_prstatus:-1]
    assert per_vcpu == list(VCPU_NOTES) * 2
    assert [n.vcpu for n in notes[first_prstatus:-1]] == [0] * 14 + [1] * 14
    assert keys[-1] == ("KVMSNAP", N.KVMSNAP_DIGEST) and notes[-1].vcpu is None
    # private types cannot collide with CORE/LINUX types (readelf labels core notes by type)
    for owner, n_type in keys:
        if owner == "KVMSNAP":
            assert n_type >> 16 == 0x4b53


def test_xstate_note_is_linux_layout(core_path):
    core = read_core(core_path)
    note = next(n for n in core.info.elf.notes if n.type_name == "NT_X86_XSTATE" and n.vcpu == 0)
    assert note.size == 2688            # standard size for XCR0 0xe7: gdb >= 14 needs it exact
    assert struct.unpack_from("<Q", note.desc, 464)[0] == XCR0
    assert note.desc[472:512] == bytes(40)
    raw = make_xsave()
    assert note.desc[:464] == raw[:464] and note.desc[512:] == raw[512:2688]


def test_xstate_size_from_cpuid_leaf_d():
    leaf = b"".join(x86.kvm_cpuid_entry2.build(dict(function=0xd, index=i, flags=1, eax=size,
                                                    ebx=offset, ecx=0, edx=0, padding=[0] * 3))
                    for i, offset, size in ((2, 576, 256), (5, 832, 64), (6, 896, 512),
                                            (7, 1408, 1024), (9, 2432, 8)))
    assert xstate_size(0x2e7, leaf, 4096) == 2440     # AMD layout
    assert xstate_size(0x2e7, b"", 4096) == 2696      # Intel defaults
    assert xstate_size(0x7, b"", 4096) == 832
    assert xstate_size(0x3, b"", 4096) == 576
    assert xstate_size(0x60000 | 0x2e7, b"", 4096) == 4096   # AMX: capped


# =============================================================================================
# Sparse files and progress

def test_sparse_64mib_guest_is_small_on_disk(tmp_path):
    mem = 64 * MiB
    state = make_state(1, mem=mem)
    ram = state.memory.buffers()[0][0]
    ram[40 * MiB:40 * MiB + 5] = b"tail!"
    calls = []
    result = write(state, tmp_path / "sparse.core", progress=lambda d, t: calls.append((d, t)))
    assert result.apparent_size > mem
    assert result.size_on_disk < 2 * MiB, result
    assert result.bytes_written < 1 * MiB
    assert calls[-1] == (mem, mem) and len(calls) == mem // ZERO_CHUNK
    assert read_core(tmp_path / "sparse.core").memory.read(40 * MiB, 5) == b"tail!"


def test_ram_mapped_from_a_core_is_read_only_where_the_core_has_data_or_the_guest_wrote(tmp_path):
    """A restored guest's RAM (a private mapping of its core): pages it has not written hold the
    core's bytes, so the core's holes are zero without reading them; its writes are found by
    pagemap (copied on write)."""
    from kvmsnap.memory import file_data_runs
    from kvmsnap.memory.ram import GuestRam
    size = 64 * MiB
    state = make_state(1, mem=size)
    state.memory.buffers()[0][0][40 * MiB:40 * MiB + 5] = b"saved"
    write(state, tmp_path / "source.core")
    with read_core(tmp_path / "source.core") as core:
        offset = core.memory.slot_offset(0)
        ram = GuestRam.map_file(core.memory.fileno(), [(Slot(0, 0, size), offset)])
    try:
        with open(tmp_path / "source.core", "rb") as f:
            data = [(a - offset, b - offset) for a, b in file_data_runs(f.fileno(), offset, offset + size)]
        assert data and sum(b - a for a, b in data) < 2 * MiB
        assert list(ram.data_runs(0, size)) == data
        ram.buffers()[0][0][20 * MiB] = 1                             # the guest writes a page
        ram.read(30 * MiB, 4096)                                       # and reads a hole
        runs = list(ram.data_runs(0, size))
        assert (20 * MiB, 20 * MiB + 4096) in runs and sorted(set(runs) - {(20 * MiB, 20 * MiB + 4096)}) == data
        state.memory = ram
        write(state, tmp_path / "again.core")
        with read_core(tmp_path / "again.core") as again:
            assert again.memory.read(40 * MiB, 5) == b"saved" and again.memory.read(20 * MiB, 1) == b"\x01"
    finally:
        ram.close()


def test_zeros_across_two_pages_are_written_and_a_zero_page_is_a_hole(tmp_path):
    state = make_state(1, mem=16 * MiB)
    ram = state.memory.buffers()[0][0]
    base = 8 * MiB
    ram[base:base + 3 * 4096] = b"\xff" * (3 * 4096)
    ram[base + 2048:base + 2048 + 4096] = bytes(4096)         # zeros across pages 0 and 1
    ram[base + 2 * 4096:base + 3 * 4096] = bytes(4096)        # page 2: a zero page
    write(state, tmp_path / "z.core")
    with read_core(tmp_path / "z.core") as core:
        assert core.memory.read(base, 3 * 4096) == bytes(ram[base:base + 3 * 4096])
        at = core.memory.slot_offset(0) + base
    with open(tmp_path / "z.core", "rb") as f:
        assert os.lseek(f.fileno(), at, os.SEEK_DATA) == at                       # pages 0 and 1 written
        assert os.lseek(f.fileno(), at + 2 * 4096, os.SEEK_HOLE) == at + 2 * 4096  # page 2 a hole


@pytest.mark.parametrize("flags", ["private", "shared"])
def test_sparse_anonymous_mappings(tmp_path, flags):
    """Guest RAM as the VMM allocates it (private anonymous mmap: never-touched pages are skipped
    via /proc/self/pagemap without reading them) and a shared one (every page is read)."""
    import mmap
    import time
    size = 256 * MiB
    mode = mmap.MAP_PRIVATE if flags == "private" else mmap.MAP_SHARED
    ram = mmap.mmap(-1, size, mode | mmap.MAP_ANONYMOUS)
    identity_page_tables(ram)
    ram[RIP:RIP + len(CODE)] = CODE
    ram[200 * MiB + 4095] = 7                          # last byte of a page
    ram[201 * MiB:201 * MiB + 4096] = bytes(4096)      # touched, but zero: still a hole
    state = make_state(1, mem=size, regions=[(Slot(0, 0, size), ram)])
    assert touched_runs(state.memory.buffers()[0][1], size) is not None or flags == "shared"
    t0 = time.monotonic()
    result = write(state, tmp_path / "anon.core")
    if flags == "private":
        assert time.monotonic() - t0 < seconds(2)
    assert result.bytes_written < 64 * 1024
    core = read_core(tmp_path / "anon.core")
    assert core.memory.read(200 * MiB + 4088, 16) == bytes(7) + b"\7" + bytes(8)
    assert core.memory.read(RIP, 8) == CODE
    assert core.memory.read(0, 1 << 20)[:PML4] == bytes(PML4)


# =============================================================================================
# Atomic writes

def test_progress_exception_leaves_no_file(tmp_path):
    path = tmp_path / "vm.core"

    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write(make_state(1), path, progress=boom)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "vm.core"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        write(make_state(1), path, progress=lambda d, t: (_ for _ in ()).throw(RuntimeError()))
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["vm.core"]


def test_failed_rename_leaves_no_temp_file(tmp_path):
    (tmp_path / "vm.core").mkdir()                  # rename(file, directory) fails, even for root
    with pytest.raises(IsADirectoryError):
        write(make_state(1), tmp_path / "vm.core")
    assert os.listdir(tmp_path) == ["vm.core"]
    assert os.listdir(tmp_path / "vm.core") == []


def test_missing_directory_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write(make_state(1), tmp_path / "nope" / "vm.core")
    assert os.listdir(tmp_path) == []


def test_bad_state_is_refused_before_writing(tmp_path):
    state = make_state(1)
    state.vcpus[0].lapic = b"short"
    with pytest.raises(ValueError, match="lapic"):
        write(state, tmp_path / "vm.core")
    assert os.listdir(tmp_path) == []


# =============================================================================================
# Guest-virtual segments

def test_virtual_segments_alias_physical_bytes(core_path):
    core = read_core(core_path)
    virtual = [s for s in core.info.elf.loads if not s.physical]
    physical = [s for s in core.info.elf.loads if s.physical]
    assert [(s.vaddr, s.paddr, s.filesz) for s in virtual] == [(HIGH_BASE, 0, 8 * MiB)]
    assert virtual[0].offset == physical[0].offset          # no second copy
    assert max(s.index for s in virtual) < min(s.index for s in physical)   # virtual first
    assert physical[0].vaddr == physical[0].paddr


def test_hostile_page_tables_truncate_the_walk_not_the_save(tmp_path):
    """Every PML4E -> one PDPT, every PDPTE -> one PD, every PDE -> one empty PT: the walk of
    vCPU 0's tables during a save (the guest chose CR3) stops at its budget, quickly, and the
    save succeeds with virtual_truncated."""
    state = make_state(1)
    ram = state.memory.buffers()[0][0]
    ram[PML4:PML4 + 0x5000] = bytes(0x5000)
    pdpt, pd, pt = PML4 + 0x1000, PML4 + 0x2000, PML4 + 0x3000
    for i in range(512):
        struct.pack_into("<Q", ram, PML4 + 8 * i, pdpt | 3)
        struct.pack_into("<Q", ram, pdpt + 8 * i, pd | 3)
        struct.pack_into("<Q", ram, pd + 8 * i, pt | 3)
    started = time.monotonic()
    result = write(state, tmp_path / "walk.core")
    assert time.monotonic() - started < seconds(15)
    assert result.virtual_truncated and result.virtual_segments == 0
    assert read_core(tmp_path / "walk.core").vcpus == state.vcpus


def test_virtual_segments_cap(tmp_path):
    state = make_state(1)
    ram = state.memory.buffers()[0][0]
    # PD[0] -> a page table mapping VA 0..2M to scattered 4 KiB pages (no coalescing possible)
    struct.pack_into("<Q", ram, PD, PT | 3)
    for i in range(512):
        struct.pack_into("<Q", ram, PT + 8 * i, ((511 - i) << 12) | 3)
    result = write(state, tmp_path / "cap.core", max_virtual_segments=100)
    assert result.virtual_segments == 100 and result.virtual_truncated
    core = read_core(tmp_path / "cap.core")
    assert sum(not s.physical for s in core.info.elf.loads) == 100


# =============================================================================================
# External tools

def _run(cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("cmd", [["readelf", "-W", "-a"], ["readelf", "-n"], ["eu-readelf", "-n"],
                                 ["eu-readelf", "-a"]])
def test_readelf_clean(core_path, cmd):
    if not shutil.which(cmd[0]):
        pytest.skip(f"{cmd[0]} not installed")
    out = _run(cmd + [str(core_path)])
    assert out.returncode == 0, out.stderr
    text = (out.stdout + out.stderr).lower()
    assert "warning" not in text and "error" not in text, text[:2000]
    if cmd[-1] == "-n":
        assert out.stdout.count("KVMSNAP") == 11 + 2 * 10 + 1     # VM-wide notes, 10 per vCPU, the digest
        assert out.stdout.count("CORE") == 4


def test_pyelftools_walks_every_note_and_segment(core_path):
    from elftools.elf.elffile import ELFFile
    with open(core_path, "rb") as f:
        e = ELFFile(f)
        assert e["e_type"] == "ET_CORE" and e["e_machine"] == "EM_X86_64"
        segments = list(e.iter_segments())
        assert segments[0]["p_type"] == "PT_NOTE"
        seen = []
        for note in segments[0].iter_notes():
            seen.append((note["n_name"], note["n_descsz"]))
            if note["n_name"] == "KVMSNAP":          # unnamed by pyelftools: no NT_* collision
                assert isinstance(note["n_type"], int), note["n_type"]
        loads = [s for s in segments if s["p_type"] == "PT_LOAD"]
        assert len(loads) == 2
        assert loads[1].data()[0x300000:0x300010] == b"hello kvmsnap!!!"
    core = read_core(core_path)
    assert seen == [(n.owner, n.size) for n in core.info.elf.notes]


def _gdb(core, *commands):
    if not shutil.which("gdb"):
        pytest.skip("gdb not installed")
    cmd = ["gdb", "-batch", "-nx", "-c", str(core)]
    for c in commands:
        cmd += ["-ex", c]
    out = _run(cmd)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_gdb_threads_and_registers(core_path):
    out = _gdb(core_path, "info threads",
               "thread apply all info registers rip rsp eflags cs ss fs_base gs_base")
    assert re.search(r"\* 1\s+LWP 1\s", out) and re.search(r"\n\s+2\s+LWP 2\s", out), out
    blocks = dict(re.findall(r"Thread (\d) \(LWP \d\):\n(.*?)(?=\nThread|\Z)", out, re.S))
    for i in range(2):
        regs = dict(re.findall(r"^(\w+)\s+(0x[0-9a-f]+)", blocks[str(i + 1)], re.M))
        assert int(regs["rip"], 16) == RIP + i
        assert int(regs["rsp"], 16) == 0x200000 - 16 * i
        assert int(regs["eflags"], 16) == 0x202
        assert int(regs["cs"], 16) == 0x8 and int(regs["ss"], 16) == 0x10
        assert int(regs["fs_base"], 16) == 0x7000 + i and int(regs["gs_base"], 16) == 0x8000 + i


def _int128s(text):
    return [int(x, 16) for x in re.findall(r"0x[0-9a-f]+", text)]


def test_gdb_vector_registers_match_xsave(core_path):
    out = _gdb(core_path, "p/x $xmm1.uint128", "p/x $ymm2.v2_int128", "p/x $zmm3.v4_int128",
               "p/x $k1", "p/x $zmm17.v4_int128")
    lines = [line for line in out.splitlines() if line.startswith("$")]
    le = lambda b: int.from_bytes(b, "little")
    assert _int128s(lines[0]) == [le(xmm(1))]
    assert _int128s(lines[1]) == [le(xmm(2)), le(ymm_hi(2))]
    assert _int128s(lines[2]) == [le(xmm(3)), le(ymm_hi(3)), le(zmm_hi(3)[:16]),
                                  le(zmm_hi(3)[16:])]
    assert _int128s(lines[3]) == [K1]
    assert _int128s(lines[4]) == [0, 0, 0, 0]


AMD_LEAF_D = ((2, 576, 256), (5, 832, 64), (6, 896, 512), (7, 1408, 1024), (9, 2432, 8))


def test_gdb_reads_vector_registers_of_an_amd_layout_core(tmp_path):
    """A vCPU whose CPUID puts the AVX-512 components where AMD does: NT_X86_XSTATE is written in
    Intel's layout (what gdb 13 reads) and NT_X86_XSAVE_LAYOUT says so; gdb shows the values KVM
    holds at AMD's offsets, and KVMSNAP_XSAVE keeps those bytes unmoved."""
    state = make_state(1)
    v = state.vcpus[0]
    xsave = bytearray(4096)
    xsave[:576] = v.xsave[:576]
    for r in range(16):
        xsave[576 + 16 * r:592 + 16 * r] = ymm_hi(r)
        xsave[896 + 32 * r:928 + 32 * r] = zmm_hi(r)
        xsave[1408 + 64 * r:1472 + 64 * r] = bytes([r + 0x40]) * 64       # zmm16..31
    struct.pack_into("<Q", xsave, 832 + 8, K1)
    v.xsave = bytes(xsave)
    v.cpuid += b"".join(x86.kvm_cpuid_entry2.build(dict(
        function=0xd, index=i, flags=1, eax=size, ebx=offset, ecx=0, edx=0, padding=[0] * 3))
        for i, offset, size in AMD_LEAF_D)
    write(state, tmp_path / "amd.core")
    core = read_core(tmp_path / "amd.core")
    assert core.vcpus[0].xsave == bytes(xsave)
    layout = next(n for n in core.info.elf.notes if n.type_name == "NT_X86_XSAVE_LAYOUT")
    assert [struct.unpack_from("<4I", layout.desc, at) for at in range(0, layout.size, 16)] == [
        (2, 256, 576, 0), (5, 64, 1088, 0), (6, 512, 1152, 0), (7, 1024, 1664, 0)]
    out = _gdb(tmp_path / "amd.core", "p/x $ymm2.v2_int128", "p/x $zmm3.v4_int128", "p/x $k1",
               "p/x $zmm17.v4_int128")
    lines = [line for line in out.splitlines() if line.startswith("$")]
    le = lambda b: int.from_bytes(b, "little")
    assert _int128s(lines[0]) == [le(xmm(2)), le(ymm_hi(2))]
    assert _int128s(lines[1]) == [le(xmm(3)), le(ymm_hi(3)), le(zmm_hi(3)[:16]),
                                  le(zmm_hi(3)[16:])]
    assert _int128s(lines[2]) == [K1]
    assert _int128s(lines[3]) == [le(bytes([0x41]) * 16)] * 4


def test_gdb_reads_instruction_bytes_at_pc(core_path):
    out = _gdb(core_path, "x/8xb $pc", f"x/s {HIGH_BASE + 0x300000:#x}", "x/s 0x300000")
    line = next(line for line in out.splitlines() if line.startswith(f"{RIP:#x}"))
    assert bytes(int(b, 16) for b in line.split(":")[1].split()) == CODE
    assert out.count('"hello kvmsnap!!!"') == 2


def test_gdb_prefers_virtual_segment_over_identity(tmp_path):
    """VA 0x100000 mapped to PA 0x300000: gdb must read through the virtual PT_LOAD."""
    state = make_state(1)
    ram = state.memory.buffers()[0][0]
    struct.pack_into("<Q", ram, PD, PT | 3)
    for i in range(512):
        struct.pack_into("<Q", ram, PT + 8 * i, (i << 12) | 3)
    struct.pack_into("<Q", ram, PT + 0x100 * 8, 0x300000 | 3)
    path = tmp_path / "alias.core"
    write(state, path)
    out = _gdb(path, "x/s 0x100000")
    assert '"hello kvmsnap!!!"' in out
    core = read_core(path)
    assert core.memory.read(0x100000, 8) != b"hello kv"        # physical view is unchanged


# =============================================================================================
# Corruption: each a one-line CoreFormatError naming the offset

def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _expect_error(path, offset=None, match=None):
    with pytest.raises(CoreFormatError) as info:
        read_core(path)
    e = info.value
    text = str(e)
    assert "\n" not in text
    assert text.startswith(f"{path}: offset 0x{e.offset:x}: "), text
    if offset is not None:
        assert e.offset == offset, text
    if match is not None:
        assert re.search(match, text), text
    return e


EHDR = {"EI_CLASS": 4, "EI_DATA": 5, "EI_VERSION": 6, "EI_OSABI": 7, "e_type": 16, "e_machine": 18,
        "e_version": 20, "e_phoff": 32, "e_shoff": 40, "e_flags": 48, "e_ehsize": 52,
        "e_phentsize": 54, "e_phnum": 56, "e_shentsize": 58, "e_shnum": 60}


@pytest.mark.parametrize("field,fmt,value,offset,match", [
    ("magic", "4s", b"\x7fELG", 0, "magic"),
    ("EI_CLASS", "B", 3, 4, "EI_CLASS"),
    ("EI_CLASS", "B", 1, None, None),
    ("EI_DATA", "B", 2, 5, "little-endian"),
    ("EI_VERSION", "B", 0, 6, "EI_VERSION"),
    ("EI_OSABI", "B", 9, 7, "EI_OSABI"),
    ("e_type", "H", elf.ET_EXEC, 16, "ET_CORE"),
    ("e_machine", "H", elf.EM_AARCH64, 18, "EM_X86_64"),
    ("e_version", "I", 0, 20, "e_version"),
    ("e_phoff", "Q", 1 << 40, 32, "program header table"),
    ("e_phoff", "Q", 0, 32, "program header table"),
    ("e_flags", "I", 1, 48, "e_flags"),
    ("e_ehsize", "H", 63, 52, "e_ehsize"),
    ("e_phentsize", "H", 32, 54, "e_phentsize"),
    ("e_phnum", "H", 0, 56, "no program headers"),
    ("e_phnum", "H", 0xffff, 56, "PN_XNUM"),
    ("e_phnum", "H", 0xfffe, None, None),
    ("e_shnum", "H", 3, 58, "e_shentsize"),
])
def test_header_field_out_of_range(core_path, field, fmt, value, offset, match):
    where = 0 if field == "magic" else EHDR[field]
    _patch(core_path, where, struct.pack("<" + fmt, value))
    _expect_error(core_path, offset, match)


def test_section_table_past_end(core_path):
    _patch(core_path, 58, struct.pack("<HHH", 64, 2, 0))
    _patch(core_path, 40, struct.pack("<Q", 1 << 40))
    _expect_error(core_path, 40, "section header table")


def _phdr(core_path, index):
    return 64 + 56 * index


@pytest.mark.parametrize("index,field_offset,fmt,value,match", [
    (0, 0, "I", elf.PT_LOAD, "start with PT_NOTE"),
    (0, 8, "Q", 1 << 40, "PT_NOTE 0"),
    (0, 32, "Q", 1 << 40, "PT_NOTE 0"),
    (1, 0, "I", 6, "expected PT_LOAD"),
    (1, 8, "Q", 0x5001, "page-aligned"),
    (1, 40, "Q", 16 * MiB, "p_memsz"),
    (1, 40, "Q", 4 * MiB, "p_memsz"),
    (2, 8, "Q", 1 << 40, "past the end of the file"),
    (2, 8, "Q", 0, "overlaps the notes"),
])
def test_program_header_out_of_range(core_path, index, field_offset, fmt, value, match):
    _patch(core_path, _phdr(core_path, index) + field_offset, struct.pack("<" + fmt, value))
    _expect_error(core_path, match=match)


def test_truncated_files(core_path):
    data = core_path.read_bytes()
    notes_at = struct.unpack_from("<Q", data, 64 + 8)[0]
    for size in (0, 3, 10, 40, 64, 100, notes_at + 50, len(data) - 4096):
        core_path.write_bytes(data[:size])
        _expect_error(core_path)


def _notes(path):
    return parse_elf(path).notes


def test_note_size_past_end_of_segment(core_path):
    note = _notes(core_path)[3]
    _patch(core_path, note.offset + 4, struct.pack("<I", 0xffffffff))
    _expect_error(core_path, note.offset, "past the end of PT_NOTE")
    _patch(core_path, note.offset, struct.pack("<I", 0x7fffffff))
    _expect_error(core_path, note.offset, "past the end of PT_NOTE")


def test_a_note_segment_of_zeros_is_refused_at_the_note_limit(core_path):
    """16 MiB of zeros read as 1.4 million empty notes: the reader stops at its limit, in bounded
    time and memory, and inspect says so in one line."""
    from kvmsnap.formats.reader import MAX_NOTES
    end = os.path.getsize(core_path)
    with open(core_path, "ab") as f:
        f.truncate(end + (16 << 20))
    _patch(core_path, 64 + 8, struct.pack("<QQQ", end, 0, 0))             # PT_NOTE: p_offset ...
    _patch(core_path, 64 + 32, struct.pack("<QQ", 16 << 20, 16 << 20))    # ... p_filesz, p_memsz
    _expect_error(core_path, end + 12 * MAX_NOTES, f"more than {MAX_NOTES} notes")
    r = run_kvmsnap("inspect", core_path)
    assert r.returncode == 1 and r.stderr.strip().endswith(f"more than {MAX_NOTES} notes"), r.stderr


def test_stray_bytes_at_end_of_note_segment(core_path):
    data = bytearray(core_path.read_bytes())
    struct.pack_into("<Q", data, 64 + 32, struct.unpack_from("<Q", data, 64 + 32)[0] + 4)
    core_path.write_bytes(data)
    _expect_error(core_path, match="stray bytes")


def test_header_note_must_be_first(core_path):
    note = _notes(core_path)[0]
    _patch(core_path, note.offset + 8, struct.pack("<I", N.NT_PRSTATUS))
    _expect_error(core_path, match="first note is not KVMSNAP_HEADER")


def test_newer_format_major_refused(core_path):
    note = _notes(core_path)[0]
    _patch(core_path, note.desc_offset + 16, struct.pack("<HH", 2, 0))
    _expect_error(core_path, note.desc_offset + 16, r"format 2\.0 is not supported")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_irqchip_state_with_another_chip_id_is_refused(core_path, index):
    """Restore hands each blob to KVM_SET_IRQCHIP as it is: an IOAPIC's bytes must not reach the PIC."""
    note = next(n for n in _notes(core_path) if n.type == N.KVMSNAP_IRQCHIP)
    at = note.desc_offset + 8 + index * 520
    _patch(core_path, at, struct.pack("<I", (index + 1) % 3))
    _expect_error(core_path, at, f"chip_id {(index + 1) % 3}, expected {index}")


def test_newer_note_major_refused(core_path):
    note = next(n for n in _notes(core_path) if n.type == N.KVMSNAP_LAPIC)
    _patch(core_path, note.desc_offset, struct.pack("<I", 2 << 16))
    _expect_error(core_path, note.desc_offset, r"KVMSNAP_LAPIC: payload version 2\.0")


def test_bad_magic_and_arch(core_path):
    note = _notes(core_path)[0]
    _patch(core_path, note.desc_offset + 20, struct.pack("<I", aarch64.ARCH_ID))
    _expect_error(core_path, 18, "e_machine 62 is not aarch64's")             # an x86 file says aarch64
    _patch(core_path, note.desc_offset + 20, struct.pack("<I", 9))
    _expect_error(core_path, note.desc_offset + 20, "architecture 9")
    _patch(core_path, note.desc_offset + 8, b"KVMSNOP\0")
    _expect_error(core_path, note.desc_offset + 8, "magic")


def test_vcpu_count_mismatch(core_path):
    note = _notes(core_path)[0]
    _patch(core_path, note.desc_offset + 24, struct.pack("<I", 3))
    _expect_error(core_path, match="says 3 vCPUs but the notes hold 2")
    _patch(core_path, note.desc_offset + 24, struct.pack("<I", 0))
    _expect_error(core_path, note.desc_offset + 24, "nr_vcpus 0")


def test_config_must_match_the_core(tmp_path):
    """Restore builds the machine from KVMSNAP_CONFIG: 3 vCPUs there and 1 vCPU's notes would
    leave 2 vCPUs unrestored; a mem_size that is not the slots' would map RAM the file lacks."""
    path = tmp_path / "one.core"
    write(make_state(1), path)
    config = next(n for n in _notes(path) if n.type == N.KVMSNAP_CONFIG)
    _patch(path, config.desc_offset + 16, struct.pack("<I", 3))
    _expect_error(path, config.desc_offset + 16, "KVMSNAP_CONFIG says 3 vCPUs but the core "
                                                 "holds 1")
    _patch(path, config.desc_offset + 16, struct.pack("<I", 1))
    for mem_size in (16 * MiB, 4 * MiB, 0):
        _patch(path, config.desc_offset + 8, struct.pack("<Q", mem_size))
        _expect_error(path, config.desc_offset + 8, f"mem_size {mem_size:#x} is not the size "
                                                    r"of the memory slots \(0x800000\)")
    _patch(path, config.desc_offset + 8, struct.pack("<Q", 8 * MiB))
    assert read_core(path).config == MachineConfig("hello", 8 * MiB, 1)


def test_config_counts_every_slot(tmp_path):
    path = tmp_path / "two.core"
    write(make_state(1, paging=False, regions=[(Slot(0, 0, 2 * MiB), bytearray(2 * MiB)),
                                               (Slot(1, 4 * MiB, MiB), bytearray(MiB))]),
          path)
    assert read_core(path).config.mem_size == 3 * MiB
    config = next(n for n in _notes(path) if n.type == N.KVMSNAP_CONFIG)
    _patch(path, config.desc_offset + 8, struct.pack("<Q", 2 * MiB))
    _expect_error(path, config.desc_offset + 8, r"size of the memory slots \(0x300000\)")


def test_missing_vcpu_note(core_path):
    notes = _notes(core_path)
    lapic1 = [n for n in notes if n.type == N.KVMSNAP_LAPIC][1]
    _patch(core_path, lapic1.offset + 8, struct.pack("<I", 0x4b5301ff))   # unknown type
    prstatus1 = [n for n in notes if (n.owner, n.type) == ("CORE", N.NT_PRSTATUS)][1]
    _expect_error(core_path, prstatus1.offset, "vCPU 1: missing KVMSNAP_LAPIC")


def test_missing_prstatus_merges_sets(core_path):
    prstatus1 = [n for n in _notes(core_path) if (n.owner, n.type) == ("CORE", 1)][1]
    _patch(core_path, prstatus1.offset + 8, struct.pack("<I", 0x4b5301fe))
    _expect_error(core_path, match="duplicate NT_FPREGSET note for vCPU 0")


def test_missing_vm_note(core_path):
    note = next(n for n in _notes(core_path) if n.type == N.KVMSNAP_PIT)
    _patch(core_path, note.offset + 8, struct.pack("<I", 0x4b5300ff))
    _expect_error(core_path, match="missing KVMSNAP_PIT")


def test_wrong_pid(core_path):
    prstatus1 = [n for n in _notes(core_path) if (n.owner, n.type) == ("CORE", 1)][1]
    _patch(core_path, prstatus1.desc_offset + 32, struct.pack("<i", 7))
    _expect_error(core_path, prstatus1.desc_offset + 32, "pr_pid 7")


def test_private_payload_sizes(core_path):
    notes = _notes(core_path)
    msrs = next(n for n in notes if n.type == N.KVMSNAP_MSRS)
    _patch(core_path, msrs.desc_offset + 8, struct.pack("<I", 0xffffffff))   # nmsrs
    tracemalloc.start()
    _expect_error(core_path, msrs.desc_offset, "KVMSNAP_MSRS: malformed payload")
    assert tracemalloc.get_traced_memory()[1] < 64 * MiB
    tracemalloc.stop()
    _patch(core_path, msrs.desc_offset + 8, struct.pack("<I", 2))
    _patch(core_path, msrs.desc_offset + 4, struct.pack("<I", 1 << 30))
    _expect_error(core_path, msrs.desc_offset + 4, "payload size")
    _patch(core_path, msrs.desc_offset + 4, struct.pack("<II", msrs.size, 1))   # size, nmsrs
    _expect_error(core_path, msrs.desc_offset + 4, "does not match its contents")


def _memory_map(path):
    note = next(n for n in _notes(path) if n.type == N.KVMSNAP_MEMORY_MAP)
    return note, N.KvmsnapMemoryMap.parse(note.desc)


def test_overlapping_physical_segments(tmp_path):
    a, b = bytearray(2 * MiB), bytearray(2 * MiB)
    path = tmp_path / "ov.core"
    write(make_state(1, paging=False, regions=[(Slot(0, 0, 2 * MiB), a),
                                               (Slot(1, 4 * MiB, 2 * MiB), b)]), path)
    note, mm = _memory_map(path)
    second = mm.regions[1]
    at = _phdr(path, second.phdr_index)
    _patch(path, at + 16, struct.pack("<QQ", MiB, MiB))      # p_vaddr, p_paddr
    _patch(path, note.desc_offset + 16 + 32 + 8, struct.pack("<Q", MiB))   # guest_phys_addr
    _expect_error(path, at, "overlaps the physical range of PT_LOAD 1")


def test_memory_map_must_match_segment(core_path):
    note, mm = _memory_map(core_path)
    _patch(core_path, note.desc_offset + 16 + 16, struct.pack("<Q", 4 * MiB))   # memory_size
    _expect_error(core_path, note.desc_offset + 16, "does not match PT_LOAD")
    _patch(core_path, note.desc_offset + 16 + 16, struct.pack("<Q", 8 * MiB))
    _patch(core_path, note.desc_offset + 16 + 24, struct.pack("<I", 9))          # phdr_index
    _expect_error(core_path, note.desc_offset + 16, "phdr_index 9")


def test_virtual_segment_must_alias_ram(core_path):
    _patch(core_path, _phdr(core_path, 1) + 24, struct.pack("<Q", 0x1000))   # p_paddr
    _expect_error(core_path, _phdr(core_path, 1), "not an alias")


def test_newer_minor_with_trailing_bytes_is_accepted(tmp_path, monkeypatch):
    """A newer minor version appends fields: this reader ignores them."""
    original = layout.note_bytes

    def grow(owner, n_type, desc):
        if owner == "KVMSNAP":
            desc = bytearray(desc + b"NEWFIELD")
            struct.pack_into("<II", desc, 0, 1 << 16 | FORMAT_MINOR + 1, len(desc))
        return original(owner, n_type, bytes(desc))

    monkeypatch.setattr(layout, "note_bytes", grow)
    state = make_state()
    write(state, tmp_path / "minor.core")
    monkeypatch.undo()
    core = read_core(tmp_path / "minor.core")
    assert core.vcpus == state.vcpus
    assert core.devices["uart"] == state.devices["uart"]


def test_format_1_0_core_without_the_vmm_device_notes_reads(tmp_path, monkeypatch):
    """Format 1.0 had no KVMSNAP_CMOS, KVMSNAP_PCI, KVMSNAP_ACPI_PM or KVMSNAP_UART_INPUT: such a core
    reads, without those devices (restore leaves them in their reset state)."""
    from kvmsnap.arch.x86_64 import notes as x86_notes
    original = x86_notes.device_notes
    monkeypatch.setattr(x86_notes, "device_notes", lambda devices: [
        n for n in original(devices) if n[1] not in x86_notes.OPTIONAL_DEVICE_NOTES])
    state = make_state()
    write(state, tmp_path / "old.core")
    monkeypatch.undo()
    core = read_core(tmp_path / "old.core")
    assert not {"cmos", "pci", "acpi_pm", "uart_input"} & set(core.devices)
    assert core.devices["uart"] == state.devices["uart"] and core.vcpus == state.vcpus


def test_uart_input_past_its_limit_is_refused(tmp_path, monkeypatch):
    """The UART holds 64 KiB of input: a core with more names the note instead of loading it."""
    from kvmsnap.arch.x86_64 import notes as x86_notes
    monkeypatch.setattr(x86_notes, "check_devices", lambda devices: None)
    state = make_state()
    state.devices["uart_input"] = bytes(65537)
    write(state, tmp_path / "flood.core")
    monkeypatch.undo()
    note = next(n for n in _notes(tmp_path / "flood.core") if n.type == N.KVMSNAP_UART_INPUT)
    _expect_error(tmp_path / "flood.core", note.desc_offset, "KVMSNAP_UART_INPUT: 65537 bytes of input, at most 65536")
    with pytest.raises(ValueError, match="uart_input: 65537 bytes, at most 65536"):
        write(state, tmp_path / "refused.core")


def test_temporary_files_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    """Only this target's, only regular files, only where no process has the pid any more."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f".vm.core.tmp-{dead.pid}"
    gone.write_bytes(b"half a core")
    alive = tmp_path / f".vm.core.tmp-{os.getppid()}"                  # a live process: maybe still writing
    alive.write_bytes(b"in progress")
    (tmp_path / f".vm.core.tmp-{dead.pid}x").write_bytes(b"not our name")
    (tmp_path / f".other.core.tmp-{dead.pid}").write_bytes(b"another target's")
    result = write(make_state(1), tmp_path / "vm.core")
    assert result.leftovers_removed == [str(gone)] and not gone.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, f".vm.core.tmp-{dead.pid}x", f".other.core.tmp-{dead.pid}", "vm.core"])


def test_not_a_file(tmp_path):
    """One line that reads naturally: no file offset for a file that cannot be opened."""
    missing = tmp_path / "missing.core"
    with pytest.raises(CoreFormatError) as info:
        read_core(missing)
    assert str(info.value) == f"{missing}: cannot open: No such file or directory"
    assert info.value.offset is None
    with pytest.raises(CoreFormatError) as info:
        read_core(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot open: Is a directory"


def test_random_corruption_never_escapes(any_core_path):
    """Flipping bytes in headers and notes gives CoreFormatError or a valid core, nothing else."""
    import random
    core_path = any_core_path
    data = core_path.read_bytes()
    notes_end = 64 + 56 * 3 + struct.unpack_from("<Q", data, 64 + 32)[0]
    rng = random.Random(1234)
    for _ in range(300):
        mutated = bytearray(data[:notes_end])
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(notes_end)] = rng.randrange(256)
        core_path.write_bytes(bytes(mutated) + data[notes_end:])
        try:
            read_core(core_path)
        except CoreFormatError as e:
            assert "\n" not in str(e)


def test_a_linux_guests_vmcoreinfo_is_found_in_its_memory_and_written_as_a_note(tmp_path):
    """Linux keeps VMCOREINFO as a note at the start of a page; the core carries it as vmcores do.
    A decoy without the note header, or off a page boundary, is not taken."""
    from kvmsnap.summary import summarize
    text = b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffffffff82a0c000\n"
    state = make_state(nvcpus=1)
    header = struct.pack("<III", 11, len(text), 0) + b"VMCOREINFO\0\0"
    state.memory.write(0x200000, b"VMCOREINFO\0\0" + text)                          # no header
    state.memory.write(0x280010, header + text)                                      # mid-page
    state.memory.write(0x2c0000, header + text)
    write(state, tmp_path / "low.core")       # RIP and IDT in the lower half: not a Linux kernel, not searched
    assert not [n for n in parse_elf(tmp_path / "low.core").notes if n.owner == "VMCOREINFO"]
    from kvmsnap.arch.x86_64 import layouts as x86
    regs = x86.kvm_regs.parse(state.vcpus[0].regs)
    regs.rip = HIGH_BASE + RIP
    state.vcpus[0].regs = x86.kvm_regs.build(regs)
    write(state, tmp_path / "linux.core")
    found = [n for n in parse_elf(tmp_path / "linux.core").notes if n.owner == "VMCOREINFO"]
    assert [(n.type, n.desc) for n in found] == [(0, text.rstrip(b"\0"))]
    fields = summarize(str(tmp_path / "linux.core"))["vmcoreinfo"]["fields"]
    assert fields["OSRELEASE"] == "6.1.0-test" and fields["SYMBOL(swapper_pg_dir)"] == "ffffffff82a0c000"
    plain = make_state(nvcpus=1)
    plain.vcpus[0].regs = state.vcpus[0].regs
    write(plain, tmp_path / "plain.core")                                 # no VMCOREINFO page: no note
    assert not [n for n in parse_elf(tmp_path / "plain.core").notes if n.owner == "VMCOREINFO"]
