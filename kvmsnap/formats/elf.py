"""ELF structures, fields spelled exactly as in ``<elf.h>`` (little-endian only: x86-64 and aarch64 cores).

Only the pieces kvmsnap reads or writes: file header, program header, section header, note header,
for ELFCLASS64 (what kvmsnap writes) and ELFCLASS32 (foreign cores the inspector may be given).
"""
import collections
import struct

from construct import Bytes, Int8ul, Int16ul, Int32sl, Int32ul, Int64sl, Int64ul, Padding, Struct

# e_ident
ELFMAG = b"\x7fELF"
EI_NIDENT = 16
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ELFOSABI_LINUX = 3

# e_type
ET_NONE, ET_REL, ET_EXEC, ET_DYN, ET_CORE = 0, 1, 2, 3, 4

# e_machine (the ones the inspector names)
EM_386 = 3
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
MACHINE_CONSTANTS = {EM_386: "EM_386", EM_ARM: "EM_ARM", EM_X86_64: "EM_X86_64",
                     EM_AARCH64: "EM_AARCH64", EM_RISCV: "EM_RISCV"}
MACHINE_NAMES = {EM_386: "i386", EM_ARM: "arm", EM_X86_64: "x86_64", EM_AARCH64: "aarch64",
                 EM_RISCV: "riscv"}

# p_type
PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 0, 1, 2, 3, 4
# p_flags
PF_X, PF_W, PF_R = 1, 2, 4

PN_XNUM = 0xffff

e_ident = Struct(
    "EI_MAG" / Bytes(4),
    "EI_CLASS" / Int8ul,
    "EI_DATA" / Int8ul,
    "EI_VERSION" / Int8ul,
    "EI_OSABI" / Int8ul,
    "EI_ABIVERSION" / Int8ul,
    "EI_PAD" / Bytes(7),
)

Elf64_Ehdr = Struct(
    "e_ident" / e_ident,
    "e_type" / Int16ul,
    "e_machine" / Int16ul,
    "e_version" / Int32ul,
    "e_entry" / Int64ul,
    "e_phoff" / Int64ul,
    "e_shoff" / Int64ul,
    "e_flags" / Int32ul,
    "e_ehsize" / Int16ul,
    "e_phentsize" / Int16ul,
    "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul,
    "e_shnum" / Int16ul,
    "e_shstrndx" / Int16ul,
)

Elf64_Phdr = Struct(
    "p_type" / Int32ul,
    "p_flags" / Int32ul,
    "p_offset" / Int64ul,
    "p_vaddr" / Int64ul,
    "p_paddr" / Int64ul,
    "p_filesz" / Int64ul,
    "p_memsz" / Int64ul,
    "p_align" / Int64ul,
)

Elf64_Shdr = Struct(
    "sh_name" / Int32ul,
    "sh_type" / Int32ul,
    "sh_flags" / Int64ul,
    "sh_addr" / Int64ul,
    "sh_offset" / Int64ul,
    "sh_size" / Int64ul,
    "sh_link" / Int32ul,
    "sh_info" / Int32ul,
    "sh_addralign" / Int64ul,
    "sh_entsize" / Int64ul,
)

Elf64_Nhdr = Struct(
    "n_namesz" / Int32ul,
    "n_descsz" / Int32ul,
    "n_type" / Int32ul,
)

Elf32_Ehdr = Struct(
    "e_ident" / e_ident,
    "e_type" / Int16ul,
    "e_machine" / Int16ul,
    "e_version" / Int32ul,
    "e_entry" / Int32ul,
    "e_phoff" / Int32ul,
    "e_shoff" / Int32ul,
    "e_flags" / Int32ul,
    "e_ehsize" / Int16ul,
    "e_phentsize" / Int16ul,
    "e_phnum" / Int16ul,
    "e_shentsize" / Int16ul,
    "e_shnum" / Int16ul,
    "e_shstrndx" / Int16ul,
)

Elf32_Phdr = Struct(
    "p_type" / Int32ul,
    "p_offset" / Int32ul,
    "p_vaddr" / Int32ul,
    "p_paddr" / Int32ul,
    "p_filesz" / Int32ul,
    "p_memsz" / Int32ul,
    "p_flags" / Int32ul,
    "p_align" / Int32ul,
)

# sizes fixed by the ELF specification
assert Elf64_Ehdr.sizeof() == 64
assert Elf64_Phdr.sizeof() == 56
assert Elf64_Shdr.sizeof() == 64
assert Elf64_Nhdr.sizeof() == 12
assert Elf32_Ehdr.sizeof() == 52
assert Elf32_Phdr.sizeof() == 32
# Linux core-dump ABI (include/uapi/linux/elfcore.h), 64-bit, around an architecture's pr_reg.
elf_siginfo = Struct("si_signo" / Int32sl, "si_code" / Int32sl, "si_errno" / Int32sl)
timeval = Struct("tv_sec" / Int64sl, "tv_usec" / Int64sl)

def linux_elf_prstatus(pr_reg):
    """The 64-bit Linux ``struct elf_prstatus`` around an architecture's ``pr_reg``."""
    return Struct(
        "pr_info" / elf_siginfo,
        "pr_cursig" / Int16ul,
        Padding(2),                   # alignment of pr_sigpend
        "pr_sigpend" / Int64ul,
        "pr_sighold" / Int64ul,
        "pr_pid" / Int32sl,
        "pr_ppid" / Int32sl,
        "pr_pgrp" / Int32sl,
        "pr_sid" / Int32sl,
        "pr_utime" / timeval,
        "pr_stime" / timeval,
        "pr_cutime" / timeval,
        "pr_cstime" / timeval,
        "pr_reg" / pr_reg,
        "pr_fpvalid" / Int32sl,
        Padding(4),                   # sizeof is a multiple of 8
    )



SHENTSIZE = {64: Elf64_Shdr.sizeof(), 32: 40}       # Elf32_Shdr: ten 32-bit words


def offsets(struct_: Struct) -> dict[str, int]:
    """Byte offset of each named field of ``struct_`` up to its first variable-size field (for
    messages that name where in a file a bad field is)."""
    result, position = {}, 0
    for sub in struct_.subcons:
        if sub.name:
            result[sub.name] = position
        try:
            position += sub.sizeof()
        except Exception:           # construct's SizeofError: the rest depends on the data
            break
    return result


def row_parser(name: str, struct_: Struct):
    """A parser of ``struct_`` (integer fields only) into a named tuple: the same layout, derived
    from the construct declaration, for tables of up to 65534 entries (construct parses ~100 times
    slower)."""
    names = [sub.name for sub in struct_.subcons]
    layout = struct.Struct("<" + "".join(sub.subcon.fmtstr.lstrip("<") for sub in struct_.subcons))
    assert layout.size == struct_.sizeof(), struct_
    row = collections.namedtuple(name, names)
    return lambda data: row._make(layout.unpack(data))


def align(value: int, to: int) -> int:
    """``value`` rounded up to a multiple of ``to``."""
    return (value + to - 1) // to * to


_NHDR = row_parser("Elf64_Nhdr", Elf64_Nhdr)
NHDR_SIZE = Elf64_Nhdr.sizeof()


class NoteError(ValueError):
    """A malformed note table; ``offset`` is where in it the bad note starts."""

    def __init__(self, offset: int, what: str):
        super().__init__(what)
        self.offset = offset


def iter_notes(stream, length: int, note_align: int = 4):
    """``(offset, owner, n_type, desc offset, desc)`` of each note in ``length`` bytes of a PT_NOTE
    read from ``stream`` (a file at the segment, or ``io.BytesIO``), note by note so that nothing
    is held twice; names and descriptors padded to ``note_align``.  NoteError at the first note
    that does not fit."""
    pos = 0
    while pos < length:
        if length - pos < NHDR_SIZE:
            raise NoteError(pos, f"{length - pos} stray bytes at the end of PT_NOTE (shorter "
                                 "than a note header)")
        h = _NHDR(_read(stream, NHDR_SIZE, pos))
        name_at = pos + NHDR_SIZE
        desc_at = name_at + align(h.n_namesz, note_align)
        if desc_at + h.n_descsz > length:
            raise NoteError(pos, f"note (namesz {h.n_namesz}, descsz {h.n_descsz}) extends past "
                                 "the end of PT_NOTE")
        name = _read(stream, desc_at - name_at, pos)
        owner = name[:h.n_namesz].split(b"\0", 1)[0].decode("ascii", "replace")
        end = min(desc_at + align(h.n_descsz, note_align), length)
        desc = _read(stream, end - desc_at, pos)
        yield pos, owner, h.n_type, desc_at, desc[:h.n_descsz]
        pos = end


def _read(stream, n: int, pos: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise NoteError(pos, "the file ends inside this note (changed while read?)")
    return data
