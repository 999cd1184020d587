"""Reading ELF core files, any producer's: the ELF header, program headers and notes, validated
against the file size and bounded (notes loaded are capped at MAX_NOTES_BYTES and MAX_NOTES).  kvmsnap's own
checks on top of this are in :mod:`kvmsnap.formats.kvmsnap`.
"""
import io
import os
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import construct

from kvmsnap import notes as N
from kvmsnap.errors import KvmsnapError
from kvmsnap.formats import elf

MAX_NOTES_BYTES = 64 << 20           # upper bound on the PT_NOTE segments the reader loads
MAX_NOTES = 1 << 17                  # and on their number (4,096 vCPUs of kvmsnap's take 57,000)


class CoreFormatError(KvmsnapError):
    """A core file that cannot be trusted: ``str(e) == "<path>: offset 0x<off>: <what>"``, or
    ``"<path>: <what>"`` (``offset`` None) when the file cannot be read at all."""

    def __init__(self, path: str, offset: int | None, what: str):
        self.path = str(path)
        self.offset = offset
        self.what = what
        where = "" if offset is None else f"offset 0x{offset:x}: "
        super().__init__(f"{self.path}: {where}{what}")


@dataclass(slots=True)
class Segment:
    """One PT_LOAD."""
    index: int             # program header index
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int
    physical: bool = False  # kvmsnap cores: holds a memory slot (else a guest-virtual alias)
    beyond_eof: bool = False   # foreign cores only: file data extends past the end of the file


@dataclass(slots=True)             # a core may have 100,000 of them
class Note:
    owner: str
    type: int
    type_name: str
    offset: int            # file offset of the note header (Elf64_Nhdr)
    size: int              # n_descsz
    desc: bytes = field(repr=False)
    vcpu: int | None = None
    desc_offset: int = 0


class ElfCore(NamedTuple):
    """The structure of an ELF core file, validated against the file size."""
    path: str
    file_size: int
    elfclass: int
    ehdr: object
    phdrs: list            # (file offset of the phdr, parsed phdr)
    loads: list[Segment]
    notes: list[Note]



EHDR_OFFSETS = {64: elf.offsets(elf.Elf64_Ehdr), 32: elf.offsets(elf.Elf32_Ehdr)}
PHDR_OFFSETS = {64: elf.offsets(elf.Elf64_Phdr), 32: elf.offsets(elf.Elf32_Phdr)}
_PHDR_PARSE = {64: elf.row_parser("Elf64_Phdr", elf.Elf64_Phdr),
               32: elf.row_parser("Elf32_Phdr", elf.Elf32_Phdr)}

def _pread(f, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def parse_elf(path) -> ElfCore:
    """Parse and validate the ELF header, program headers and notes of a core file.

    Everything is bounded by the file size: tables and notes must lie inside the file, and the
    notes loaded are capped at MAX_NOTES_BYTES.  As other tools write them, e_ehsize is not
    checked (QEMU's dump-guest-memory writes 8) and a PT_LOAD whose file range runs past the end
    of the file is marked ``beyond_eof``; kvmsnap's own cores allow neither
    (:func:`kvmsnap.formats.kvmsnap.decode`).
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CoreFormatError(path, None, f"cannot open: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size

        def fail(offset, what):
            raise CoreFormatError(path, offset, what)

        ident = _pread(f, 0, elf.EI_NIDENT)
        if ident[:4] != elf.ELFMAG[:len(ident)] or (len(ident) >= 4 and ident[:4] != elf.ELFMAG):
            fail(0, "not an ELF file (bad magic)")
        if len(ident) < elf.EI_NIDENT:
            fail(0, f"file too short for an ELF header ({size} bytes)")
        id_ = elf.e_ident.parse(ident)
        if id_.EI_CLASS not in (elf.ELFCLASS32, elf.ELFCLASS64):
            fail(4, f"EI_CLASS {id_.EI_CLASS} is neither ELFCLASS32 nor ELFCLASS64")
        if id_.EI_DATA != elf.ELFDATA2LSB:
            fail(5, f"EI_DATA {id_.EI_DATA}: only little-endian (ELFDATA2LSB) cores are supported")
        if id_.EI_VERSION != elf.EV_CURRENT:
            fail(6, f"EI_VERSION {id_.EI_VERSION} is not EV_CURRENT")
        bits = 64 if id_.EI_CLASS == elf.ELFCLASS64 else 32
        Ehdr, Phdr = (elf.Elf64_Ehdr, elf.Elf64_Phdr) if bits == 64 else (elf.Elf32_Ehdr,
                                                                          elf.Elf32_Phdr)
        eo = EHDR_OFFSETS[bits]
        raw = _pread(f, 0, Ehdr.sizeof())
        if len(raw) < Ehdr.sizeof():
            fail(0, f"file too short for an ELF{bits} header ({size} bytes)")
        ehdr = Ehdr.parse(raw)
        if ehdr.e_type != elf.ET_CORE:
            fail(eo["e_type"], f"e_type {ehdr.e_type} is not ET_CORE (4): not a core file")
        if ehdr.e_version != elf.EV_CURRENT:
            fail(eo["e_version"], f"e_version {ehdr.e_version} is not EV_CURRENT")
        if ehdr.e_phentsize != Phdr.sizeof():
            fail(eo["e_phentsize"], f"e_phentsize {ehdr.e_phentsize}, expected {Phdr.sizeof()}")
        if ehdr.e_phnum == 0:
            fail(eo["e_phnum"], "e_phnum is 0: no program headers")
        if ehdr.e_phnum == elf.PN_XNUM:
            fail(eo["e_phnum"], "e_phnum is PN_XNUM (extended numbering): not supported")
        table_end = ehdr.e_phoff + ehdr.e_phnum * Phdr.sizeof()
        if ehdr.e_phoff < Ehdr.sizeof() or table_end > size:
            fail(eo["e_phoff"], f"program header table 0x{ehdr.e_phoff:x}..0x{table_end:x} "
                                f"is not inside the file (size 0x{size:x})")
        if ehdr.e_shnum:
            shentsize = elf.SHENTSIZE[bits]
            if ehdr.e_shentsize != shentsize:
                fail(eo["e_shentsize"], f"e_shentsize {ehdr.e_shentsize}, expected {shentsize}")
            sh_end = ehdr.e_shoff + ehdr.e_shnum * shentsize
            if sh_end > size:
                fail(eo["e_shoff"], f"section header table ends at 0x{sh_end:x}, "
                                    f"past the end of the file (0x{size:x})")
            if ehdr.e_shstrndx >= ehdr.e_shnum:
                fail(eo["e_shstrndx"], f"e_shstrndx {ehdr.e_shstrndx} >= e_shnum {ehdr.e_shnum}")

        po = PHDR_OFFSETS[bits]
        table = _pread(f, ehdr.e_phoff, table_end - ehdr.e_phoff)
        phdrs, loads, notes = [], [], []
        notes_bytes = 0
        entsize, parse_phdr = Phdr.sizeof(), _PHDR_PARSE[bits]
        for i in range(ehdr.e_phnum):
            at = ehdr.e_phoff + i * entsize
            p = parse_phdr(table[i * entsize:(i + 1) * entsize])
            phdrs.append((at, p))
            end = p.p_offset + p.p_filesz
            if p.p_type == elf.PT_LOAD:
                if p.p_memsz < p.p_filesz:
                    fail(at + po["p_memsz"], f"PT_LOAD {i}: p_memsz 0x{p.p_memsz:x} < "
                                             f"p_filesz 0x{p.p_filesz:x}")
                if p.p_paddr + p.p_memsz > 1 << bits or p.p_vaddr + p.p_memsz > 1 << bits:
                    fail(at + po["p_vaddr"], f"PT_LOAD {i}: address range wraps around")
                loads.append(Segment(i, p.p_paddr, p.p_vaddr, p.p_offset, p.p_filesz, p.p_memsz,
                                     p.p_flags, beyond_eof=end > size))
            elif p.p_type == elf.PT_NOTE:
                if end > size:
                    fail(at + po["p_offset"], f"PT_NOTE {i}: 0x{p.p_offset:x}..0x{end:x} is "
                                              f"past the end of the file (0x{size:x})")
                notes_bytes += p.p_filesz
                if notes_bytes > MAX_NOTES_BYTES:
                    fail(at + po["p_filesz"], f"notes larger than {MAX_NOTES_BYTES} bytes")
                align = 8 if p.p_align == 8 else 4
                f.seek(p.p_offset)
                notes.extend(_parse_notes(path, f, p.p_offset, p.p_filesz, align, MAX_NOTES - len(notes)))
        return ElfCore(path, size, bits, ehdr, phdrs, loads, notes)


def _parse_notes(path: str, f, base: int, size: int, align: int, room: int) -> list[Note]:
    """The notes of the ``size``-byte PT_NOTE segment at file offset ``base`` (``f`` is there); at
    most ``room`` of them."""
    notes = []
    try:
        for at, owner, n_type, desc_at, desc in elf.iter_notes(f, size, align):
            if len(notes) == room:
                raise CoreFormatError(path, base + at, f"more than {MAX_NOTES} notes")
            notes.append(Note(owner, n_type, N.type_name(owner, n_type), base + at, len(desc), desc,
                              desc_offset=base + desc_at))
    except elf.NoteError as e:
        raise CoreFormatError(path, base + e.offset, str(e)) from None
    return notes


def payload(path: str, note: Note, layout: construct.Construct):
    """Decode a private payload: check ``version``/``size``, refuse a newer major, ignore bytes
    past the known layout of a newer minor."""
    desc = note.desc
    name = note.type_name
    if len(desc) < 8:
        raise CoreFormatError(path, note.desc_offset, f"{name}: {len(desc)}-byte payload is "
                                                      "shorter than its version/size words")
    version, size = struct.unpack_from("<II", desc)
    major, minor = N.version_split(version)
    if major > N.NOTE_VERSION_MAJOR or major == 0:
        raise CoreFormatError(path, note.desc_offset, f"{name}: payload version {major}.{minor}"
                                                      f" not supported (this kvmsnap reads "
                                                      f"{N.NOTE_VERSION_MAJOR}.x)")
    if not N.MIN_SIZES.get(note.type, 8) <= size <= len(desc):
        raise CoreFormatError(path, note.desc_offset + 4, f"{name}: payload size {size} is out "
                                                          f"of range (descriptor {len(desc)})")
    stream = io.BytesIO(desc[:size])
    try:
        parsed = layout.parse_stream(stream)
    except (construct.ConstructError, UnicodeDecodeError) as e:
        what = str(e).splitlines()[-1] if str(e) else type(e).__name__
        raise CoreFormatError(path, note.desc_offset, f"{name}: malformed payload: {what}") \
            from None
    if minor <= N.NOTE_VERSION_MINOR and stream.tell() != size:
        raise CoreFormatError(path, note.desc_offset + 4, f"{name}: payload size {size} does not "
                                                          f"match its contents ({stream.tell()})")
    return parsed

