"""``kvmsnap inspect``: everything a core holds, decoded to plain data (docs/inspect-json.md).

:func:`summarize` reads headers and notes only (never guest memory) and returns JSON-ready data;
:mod:`kvmsnap.describe` turns it into text.  It reads kvmsnap cores (validated in full by
:func:`kvmsnap.formats.kvmsnap.read_core`) and any little-endian ELF core: QEMU ``dump-guest-memory``
(x86-64, i386, aarch64), gdb ``gcore`` and Linux process cores, vmcores with VMCOREINFO.  The
decoding of each note lives with its architecture (``kvmsnap.arch.*.decode``) or in
:mod:`kvmsnap.decode`; this module picks the notes and assembles.
"""
import dataclasses
import os
import struct

import blake3

from kvmsnap import arch
from kvmsnap import notes as N
from kvmsnap.arch import x86_64
from kvmsnap.arch.x86_64 import decode as x86_decode
from kvmsnap.arch.x86_64 import devices
from kvmsnap.decode import linux
from kvmsnap.decode.bits import DecodeError
from kvmsnap.errors import InputError
from kvmsnap.formats import elf
from kvmsnap.formats.kvmsnap import decode, is_kvmsnap
from kvmsnap.formats.reader import CoreFormatError, ElfCore, parse_elf, payload

_ARCH_AT = elf.offsets(N.KvmsnapHeader)["arch"]

VCPU_SECTIONS = ("thread", "regs", "segments", "control", "debug", "fpu", "msrs", "lapic",
                 "events", "mp_state", "cpuid", "siginfo", "sysregs", "arm")
FILE_SECTIONS = ("devices", "process", "vmcoreinfo", "xsave_layout", "memory", "notes")
SECTIONS = VCPU_SECTIONS + FILE_SECTIONS

KEY_PRSTATUS = (N.OWNER_CORE, N.NT_PRSTATUS)
KEY_QEMU = (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE)
PROCESS_NOTES = {N.NT_PRPSINFO: "prpsinfo", N.NT_AUXV: "auxv", N.NT_FILE: "files"}
ARM_NOTES = {t: N.type_name(N.OWNER_LINUX, t) for t in range(0x400, 0x410)
             if N.type_name(N.OWNER_LINUX, t).startswith("NT_ARM_")}
DECODED = ({(N.OWNER_CORE, t) for t in (N.NT_PRSTATUS, N.NT_FPREGSET, N.NT_PRPSINFO, N.NT_AUXV,
                                        N.NT_FILE, N.NT_SIGINFO)}
           | {(N.OWNER_LINUX, t) for t in (N.NT_X86_XSTATE, N.NT_X86_XSAVE_LAYOUT, N.NT_SIGINFO,
                                           *ARM_NOTES)}
           | {KEY_QEMU, (N.OWNER_VMCOREINFO, N.NT_VMCOREINFO)}
           | {key for key in N.REGISTRY if key[0] == N.OWNER_KVMSNAP})


class Lazy(list):
    """A list whose items are made one at a time as it is iterated and never held together: how
    ``inspect`` and ``diff`` go through thousands of decoded vCPUs in bounded memory.  ``len`` is
    known without making any item; the json encoder writes it as a list (it iterates it)."""

    def __init__(self, count: int, make):
        super().__init__()
        self._count, self._make = count, make

    @classmethod
    def of(cls, items) -> "Lazy":
        return items if isinstance(items, Lazy) else cls(len(items), items.__getitem__)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self):
        return (self._make(i) for i in range(self._count))

    def __getitem__(self, i: int):
        return self._make(range(self._count)[i])

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def map(self, function) -> "Lazy":
        return Lazy(self._count, lambda i: function(self._make(i)))


def summarize(path, *, vcpu: int | None = None, sections=None) -> dict:
    """A JSON-ready description of the core at ``path`` (CoreFormatError if it cannot be read).

    ``vcpu`` keeps one vCPU/thread; ``sections`` (names from :data:`SECTIONS`) keeps only those
    per-vCPU sections and file-wide parts.  InputError for an unknown vCPU or section."""
    unknown = set(sections or ()) - set(SECTIONS)
    if unknown:
        raise InputError(f"unknown section {sorted(unknown)[0]!r} (choose from "
                         f"{', '.join(SECTIONS)})")
    image = parse_elf(path)
    if _is_kvmsnap_x86(image):
        with decode(image) as snapshot:
            summary = _summarize_kvmsnap(snapshot)
    else:
        from kvmsnap import foreign
        summary = foreign.summarize(image)
    return _select(summary, vcpu, sections)


def _is_kvmsnap_x86(image: ElfCore) -> bool:
    """A kvmsnap x86 core (KVMSNAP_HEADER first, arch x86_64); aarch64 ones are read note by
    note like any other core."""
    if not is_kvmsnap(image):
        return False
    arch_id = image.notes[0].desc[_ARCH_AT:_ARCH_AT + 4]
    return len(arch_id) < 4 or struct.unpack("<I", arch_id)[0] == x86_64.ARCH_ID


def _select(summary: dict, vcpu, sections) -> dict:
    vcpus = Lazy.of(summary["vcpus"])
    summary["vcpu_count"] = len(vcpus)
    if vcpu is not None:
        chosen = vcpus[vcpu] if vcpu < len(vcpus) else None       # kvmsnap cores: vCPU n is the n-th
        if chosen is None or chosen["id"] != vcpu:
            chosen = next((v for v in vcpus if v["id"] == vcpu), None)
        if chosen is None:
            raise InputError(f"{summary['file']}: no vCPU {vcpu} (the core has {len(vcpus)})")
        vcpus = Lazy.of([chosen])
    if sections:
        vcpus = vcpus.map(lambda v: {**v, "sections": {k: s for k, s in v["sections"].items() if k in sections}})
    summary["vcpus"] = vcpus
    summary["selected"] = dict(vcpu=vcpu, sections=list(sections) if sections else None)
    return summary


_NOTE_FIELDS = ("owner", "type", "type_name", "size", "offset", "vcpu", "decoded", "blake3")


def note_list(notes) -> Lazy:
    """One dict per note, made when read from a tuple held per note (a core may have 100,000)."""
    rows = [(n.owner, n.type, n.type_name, n.size, n.offset, n.vcpu, (n.owner, n.type) in DECODED,
             blake3.blake3(n.desc).hexdigest()) for n in notes]
    return Lazy(len(rows), lambda i: dict(zip(_NOTE_FIELDS, rows[i])))


def xsave_layout(image: ElfCore) -> list[dict] | None:
    """The NT_X86_XSAVE_LAYOUT note of an x86-64 core, decoded; None without one."""
    note = next((n for n in image.notes if (n.owner, n.type) == (N.OWNER_LINUX, N.NT_X86_XSAVE_LAYOUT)
                 and image.ehdr.e_machine == elf.EM_X86_64), None)
    return None if note is None else decode_note(image.path, note, x86_decode.xsave_layout)


def memory_list(segments) -> list[dict]:
    return [dict(paddr=s.paddr, vaddr=s.vaddr, size=s.memsz, filesz=s.filesz, offset=s.offset,
                 physical=s.physical, beyond_eof=s.beyond_eof) for s in segments]


def decode_note(path, note, decoder, *args):
    """``decoder(note.desc, *args)``; a note too short for its layout is a CoreFormatError."""
    try:
        return decoder(note.desc, *args)
    except DecodeError as e:
        raise CoreFormatError(path, note.offset, str(e)) from None


# =============================================================================================
# kvmsnap cores

def _summarize_kvmsnap(snapshot) -> dict:
    info = snapshot.info
    package = arch.by_name(snapshot.arch)
    return dict(
        file=info.path,
        kind="kvmsnap",
        arch=package.NAME,
        producer=info.producer,
        format=dict(major=info.format_major, minor=info.format_minor),
        host_kernel=info.host_kernel,
        config=dict(guest=snapshot.config.guest, mem_size=snapshot.config.mem_size,
                    vcpus=snapshot.config.vcpus),
        memory_map=[dict(slot=s.slot, gpa=s.gpa, size=s.size) for s in snapshot.memory.slots()],
        base=None if snapshot.base is None else dict(
            path=snapshot.base.path, size=snapshot.base.size, state_blake3=snapshot.base.state_blake3.hex(),
            changed_runs=len(snapshot.changed), changed_bytes=sum(b - a for a, b in snapshot.changed)),
        digest=_digest(info),
        devices=devices.summary(snapshot.devices),
        process=None,
        vmcoreinfo=next((linux.vmcoreinfo(n.desc) for n in info.elf.notes
                         if (n.owner, n.type) == (N.OWNER_VMCOREINFO, N.NT_VMCOREINFO)), None),
        xsave_layout=xsave_layout(info.elf),
        vcpus=_decoded_vcpus(info.path, package, info.elf.notes, len(snapshot.vcpus)),
        memory=memory_list(info.elf.loads),
        notes=note_list(info.elf.notes),
    )


def _digest(info) -> dict | None:
    """What the core's KVMSNAP_DIGEST covers (``kvmsnap verify`` checks it)."""
    note = info.elf.notes[-1]
    if (note.owner, note.type) != (N.OWNER_KVMSNAP, N.KVMSNAP_DIGEST):
        return None
    d = payload(info.path, note, N.KvmsnapDigest)
    return dict(notes=d.nr_notes, chunks=d.nr_chunks, chunk_size=1 << d.chunk_shift, memory_offset=d.memory_offset)


def _decoded_vcpus(path: str, package, notes, count: int) -> Lazy:
    """Each vCPU of a validated kvmsnap core decoded when it is read, its notes read again from
    the file: a summary holds where they are, not their bytes or the states, so that thousands
    of vCPUs fit in bounded memory."""
    where: list[dict] = [{} for _ in range(count)]
    for n in notes:
        entry = N.lookup(n.owner, n.type)
        if n.vcpu is not None and entry is not None and entry.scope == "vcpu":
            where[n.vcpu][(n.owner, n.type)] = dataclasses.replace(n, desc=b"")

    def make(i):
        with open(path, "rb") as f:
            loaded = {key: dataclasses.replace(n, desc=os.pread(f.fileno(), n.size, n.desc_offset))
                      for key, n in where[i].items()}
        return x86_decode.vcpu(package.notes.read_vcpu(path, i, loaded), loaded[KEY_PRSTATUS].desc)
    return Lazy(count, make)


# =============================================================================================
# One note's raw bytes

def raw_note(path, which: str, vcpu: int | None = None) -> dict:
    """The note named ``which`` (a type name such as ``KVMSNAP_LAPIC``, or a number) of vCPU
    ``vcpu`` (default: the first such note): header fields plus ``data`` (bytes)."""
    image = parse_elf(path)
    summary = summarize(path)          # assigns notes to vCPUs the way the summary shows them
    try:
        wanted_type = int(which, 0)
    except ValueError:
        wanted_type = None
    matches = [(n, entry) for n, entry in zip(image.notes, summary["notes"])
               if (entry["type_name"] == which or entry["type"] == wanted_type)
               and (vcpu is None or entry["vcpu"] == vcpu)]
    if not matches:
        raise InputError(f"{image.path}: no note {which!r}"
                         + (f" for vCPU {vcpu}" if vcpu is not None else ""))
    note, entry = matches[0]
    return dict(entry, data=note.desc)
