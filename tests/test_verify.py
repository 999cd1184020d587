"""KVMSNAP_DIGEST, ``kvmsnap verify`` and restore's integrity checks: the headers, every note and
each memory chunk are covered; one flipped bit anywhere is named (file offset, note, guest-physical
address) by verify and refused by restore; the standard notes debuggers read must agree with the
private notes restore loads, even when the digests were made to match."""
import json
import os
import random
import shutil
import time

import pytest

from conftest import Restored, needs_kvm, run_kvmsnap, save_quit
from kvmsnap.formats import digest
from kvmsnap.formats.reader import parse_elf
from kvmsnap.memory import file_data_runs
from kvmsnap.verify import verify


def flip(path, offset: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as f:
        byte = os.pread(f.fileno(), 1, offset)[0]
        os.pwrite(f.fileno(), bytes([byte ^ mask]), offset)


def damaged(report: dict) -> list[tuple[str, str, int]]:
    return [(os.path.basename(f["path"]), d["part"], d["offset"]) for f in report["files"] for d in f["damaged"]]


def copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


def test_an_intact_core_verifies(core_path):
    r = run_kvmsnap("verify", core_path, "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["intact"], r.stdout
    image = parse_elf(core_path)
    [f] = report["files"]
    assert f["notes"] == len(image.notes) - 1 and f["chunks"] == 4 and f["chunk_size"] == 2 << 20   # 8 MiB
    text = run_kvmsnap("verify", core_path)
    assert text.returncode == 0 and text.stdout.strip().endswith("match their BLAKE3 digests)"), text.stdout


def test_one_flipped_bit_in_any_note_names_that_note(core_path, tmp_path):
    image = parse_elf(core_path)
    for i, note in enumerate(image.notes):
        path = copy(core_path, tmp_path / f"note{i}.core")
        flip(path, note.desc_offset + note.size // 2)
        if i == len(image.notes) - 1:           # the digest note checks itself
            assert damaged(verify(path)) == [(path.name, "digest", note.offset)], note.type_name
        else:
            assert damaged(verify(path)) == [(path.name, "note", note.offset)], note.type_name
    # a byte of the header note's text that is no longer UTF-8: named by the digests, not as a malformed header
    path = copy(core_path, tmp_path / "utf8.core")
    flip(path, image.notes[0].desc_offset + image.notes[0].size - 3, 0x80)
    assert damaged(verify(path)) == [(path.name, "note", image.notes[0].offset)]
    # a note's type (its header) and a program header are covered too
    path = copy(core_path, tmp_path / "type.core")
    flip(path, image.notes[3].offset + 8, 0x01)
    assert damaged(verify(path)) == [(path.name, "note", image.notes[3].offset)]
    path = copy(core_path, tmp_path / "phdr.core")
    flip(path, image.phdrs[1][0] + 4, 0x02)         # p_flags of the first PT_LOAD
    assert damaged(verify(path)) == [(path.name, "headers", 0)]
    r = run_kvmsnap("verify", path)
    assert r.returncode == 1 and "DAMAGED: the ELF header and program headers" in r.stdout, r.stdout


def test_one_flipped_bit_in_memory_names_the_chunk_and_its_guest_address(core_path, tmp_path):
    image = parse_elf(core_path)
    found = digest.find(image)
    with open(core_path, "rb") as f:
        runs = list(file_data_runs(f.fileno(), found.memory_offset, image.file_size))
    for name, offset in (("data", runs[-1][0] + 5), ("hole", image.file_size - 4096 * 3)):
        path = copy(core_path, tmp_path / f"{name}.core")
        flip(path, offset)
        chunk = (offset - found.memory_offset) >> found.chunk_shift
        lo = found.memory_offset + (chunk << found.chunk_shift)
        report = verify(path)
        assert damaged(report) == [(path.name, "memory", lo)], name
        slot = next(s for s in image.loads if s.offset <= offset < s.offset + s.filesz and s.paddr == s.vaddr)
        gpa = slot.paddr + lo - slot.offset
        assert f"guest-physical {gpa:#x}..{gpa + (2 << 20):#x}" in report["files"][0]["damaged"][0]["what"]


def test_a_truncated_core_is_refused_in_one_line(core_path, tmp_path):
    path = copy(core_path, tmp_path / "short.core")
    os.truncate(path, os.path.getsize(path) - 4096)
    r = run_kvmsnap("verify", path)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "past the end of the file" in r.stderr


def reseal(path) -> None:
    """Make the digests match the file again (as a tool editing a core might)."""
    image = parse_elf(path)
    found = digest.find(image)
    with open(path, "r+b") as f:
        header = f.read(image.notes[-1].desc_offset + image.notes[-1].size)
        sealed = digest.seal(header, [n.offset for n in image.notes], found.chunks)
        os.pwrite(f.fileno(), sealed, 0)


def test_standard_notes_that_disagree_with_the_private_state_are_named(core_path, tmp_path):
    """gdb would show an FPU control word the restored guest does not have: verify says so, even
    with digests that match."""
    image = parse_elf(core_path)
    fpregset = next(n for n in image.notes if n.type_name == "NT_FPREGSET")
    path = copy(core_path, tmp_path / "edited.core")
    flip(path, fpregset.desc_offset, 0x01)               # fcw
    reseal(path)
    report = verify(path)
    assert damaged(report) == [] and not report["intact"]
    assert report["standard_notes"] == [f"vCPU 0: NT_FPREGSET (what debuggers read) differs from the state restore "
                                        f"loads from the KVMSNAP notes, from file offset {fpregset.desc_offset:#x}"]


@needs_kvm
def test_restore_refuses_a_damaged_core_and_stops_a_guest_on_damaged_memory(guest, tmp_path):
    g = guest("counter", "--mem", "64M")
    g.wait_lines(2, "^tick")
    core = tmp_path / "a.core"
    save_quit(g, core)
    image = parse_elf(core)
    msrs = next(n for n in image.notes if n.type_name == "KVMSNAP_MSRS")
    notes = copy(core, tmp_path / "note.core")
    flip(notes, msrs.desc_offset + 40)
    found = digest.find(image)
    with open(core, "rb") as f:
        runs = list(file_data_runs(f.fileno(), found.memory_offset, image.file_size))
    memory = copy(core, tmp_path / "memory.core")
    flip(memory, runs[-1][0] + 5)
    for path, args, words in ((notes, (), f"vCPU 0 KVMSNAP_MSRS note (file offset {msrs.offset:#x}"),
                              (memory, ("--memory", "eager"), "memory at guest-physical 0x")):
        r = Restored(tmp_path, path, *args, console=tmp_path / f"{path.name}.console", may_refuse=True)
        assert r.proc.wait(60) == 1
        message = r.stderr().strip()
        assert len(message.splitlines()) == 1 and message.startswith(
            "kvmsnap: not restored: the core is not what was written: ") and words in message, message
        assert not (tmp_path / f"{path.name}.console").exists() or \
            (tmp_path / f"{path.name}.console").read_text() == ""          # no guest instruction ran
    # lazily mapped memory is checked while the guest runs: it is stopped, and says why
    r = Restored(tmp_path, memory, console=tmp_path / "lazy.console", may_refuse=True)
    assert r.proc.wait(60) == 1
    assert "memory at guest-physical 0x" in r.stderr() and "the guest was stopped" in r.stderr(), r.stderr()
    # the intact core runs on
    ok = Restored(tmp_path, core, console=tmp_path / "ok.console")
    ok.wait_lines(1, "^tick", timeout=60)
    deadline = time.monotonic() + 60
    while not (check := ok.request("status")["memory_check"])["done"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check["done"] and check["damaged"] == 0, check
    assert ok.quit() == 0


@needs_kvm
def test_verify_follows_a_chain_and_names_a_damaged_base(guest, tmp_path):
    g = guest("counter", "--mem", "64M")
    g.wait_lines(2, "^tick")
    base, inc = tmp_path / "base.core", tmp_path / "inc.core"
    assert run_kvmsnap("save", "--control", g.sock, base).returncode == 0
    g.wait_lines(4, "^tick")
    assert run_kvmsnap("save", "--control", g.sock, inc, "--incremental-from", base).returncode == 0
    report = json.loads(run_kvmsnap("verify", inc, "--json").stdout)
    assert report["intact"] and [f["path"] for f in report["files"]] == [str(base), str(inc)]
    image = parse_elf(base)
    found = digest.find(image)
    with open(base, "rb") as f:
        runs = list(file_data_runs(f.fileno(), found.memory_offset, image.file_size))
    flip(base, runs[0][0] + 100)
    r = run_kvmsnap("verify", inc)
    assert r.returncode == 1 and f"{base}: DAMAGED: memory at guest-physical 0x" in r.stdout, r.stdout
    assert f"{inc}: intact" in r.stdout


@needs_kvm
@pytest.mark.slow
def test_one_flipped_bit_anywhere_in_real_cores_is_named_and_refused(guest, tmp_path):
    """Each note, and 40 random bytes of memory data, of a saved `counter` and `memtest`: one bit
    flipped (and flipped back after), verify names exactly that part, and an eager restore
    refuses the core (figures in docs/reliability.md)."""
    rng = random.Random(12)
    figures = {}
    for name in ("counter", "memtest"):
        g = guest(name, "--mem", "64M")
        g.wait_lines(2)
        core = tmp_path / f"{name}.core"
        save_quit(g, core)
        image = parse_elf(core)
        found = digest.find(image)
        with open(core, "rb") as f:
            runs = list(file_data_runs(f.fileno(), found.memory_offset, image.file_size))
        flips = [(n.desc_offset + rng.randrange(max(n.size, 1)), "digest" if n is image.notes[-1] else "note",
                  n.offset) for n in image.notes]
        for _ in range(40):
            start, end = rng.choice(runs)
            at = rng.randrange(start, end)
            chunk = (at - found.memory_offset) >> found.chunk_shift
            flips.append((at, "memory", found.memory_offset + (chunk << found.chunk_shift)))
        named = refused = 0
        for at, part, where in flips:
            bit = 1 << rng.randrange(8)
            flip(core, at, bit)
            try:
                assert damaged(verify(core)) == [(core.name, part, where)], (at, part)
                named += 1
                r = run_kvmsnap("restore", core, "--memory", "eager", "--console", tmp_path / "refused.console")
                assert r.returncode == 1 and "not restored: the core is not what was written" in r.stderr, r.stderr
                refused += 1
            finally:
                flip(core, at, bit)
        assert run_kvmsnap("verify", core).returncode == 0
        figures[name] = dict(flips=len(flips), notes=len(image.notes), named=named, refused=refused)
    print("flipped bits:", figures)
