"""A kernel's symbol table (an unstripped ELF64 vmlinux, such as the one in Debian's -dbg package),
for naming the function at a guest address in error messages."""
import bisect
import mmap
import struct

from kvmsnap.errors import InputError
from kvmsnap.formats import elf

SHT_SYMTAB = 2
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
SHN_UNDEF, SHN_ABS = 0, 0xFFF1          # not addresses: undefined and absolute symbols
_SYM = struct.Struct("<IBBHQQ")          # Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size
_SHDR = elf.row_parser("Elf64_Shdr", elf.Elf64_Shdr)


class KernelSymbols:
    """The function, object and untyped symbols of ``path``; its symbol table is found when made
    and read on the first :meth:`name`."""

    def __init__(self, path: str):
        self.path = path
        self._starts: list[int] | None = None
        self._symbols: list[tuple[int, int, bytes]] = []
        try:
            with open(path, "rb") as f:
                self._symtab, self._strtab = _tables(path, f.read(elf.Elf64_Ehdr.sizeof()), f)
        except OSError as e:
            raise InputError(f"{path}: cannot read the kernel: {e.strerror}") from None

    def _load(self) -> None:
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            (sym_at, sym_size), (str_at, str_size) = self._symtab, self._strtab
            strings = data[str_at:str_at + str_size]
            wanted = (STT_NOTYPE, STT_OBJECT, STT_FUNC)
            rows = _SYM.iter_unpack(data[sym_at:sym_at + sym_size // _SYM.size * _SYM.size])
            self._symbols = sorted((value, size, _string(strings, name)) for name, info, _, shndx, value, size in rows
                                   if name and info & 0xF in wanted and shndx not in (SHN_UNDEF, SHN_ABS))
        self._starts = [start for start, _, _ in self._symbols]

    def name(self, addr: int) -> str | None:
        """``function+0xoffset`` for an address inside a symbol (one without a size, such as an
        assembly entry point, reaches to the next symbol), else None."""
        if self._starts is None:
            self._load()
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        start, size, name = self._symbols[i]
        end = start + size if size else (self._starts[i + 1] if i + 1 < len(self._starts) else start + 1)
        return f"{name.decode(errors='replace')}+{addr - start:#x}" if addr < end else None


def _string(strings: bytes, at: int) -> bytes:
    end = strings.find(b"\0", at)
    return strings[at:end if end >= 0 else len(strings)]


def _tables(path: str, head: bytes, f) -> tuple[tuple[int, int], tuple[int, int]]:
    """(offset, size) of the symbol table and of its string table; InputError when there is none."""
    if head[:4] != elf.ELFMAG or len(head) < elf.Elf64_Ehdr.sizeof() or head[4] != elf.ELFCLASS64:
        raise InputError(f"{path}: not an ELF64 file")
    ehdr = elf.Elf64_Ehdr.parse(head)
    f.seek(ehdr.e_shoff)
    table = f.read(ehdr.e_shnum * elf.Elf64_Shdr.sizeof())
    sections = [_SHDR(table[i:i + elf.Elf64_Shdr.sizeof()])
                for i in range(0, len(table) - elf.Elf64_Shdr.sizeof() + 1, elf.Elf64_Shdr.sizeof())]
    for s in sections:
        if s.sh_type == SHT_SYMTAB and s.sh_link < len(sections):
            strtab = sections[s.sh_link]
            return (s.sh_offset, s.sh_size), (strtab.sh_offset, strtab.sh_size)
    raise InputError(f"{path}: no symbol table (Debian's vmlinux is stripped: use the -dbg package's, "
                     "see samples/linux/build --debug)")
