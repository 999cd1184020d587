"""A kernel's symbol table (an unstripped ELF vmlinux, such as the one in Debian's -dbg package),
for naming the function at a guest address in error messages."""
import bisect

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from kvmsnap.errors import InputError


class KernelSymbols:
    """Function and object symbols of ``path``; checked when made, read on first :meth:`name`."""

    def __init__(self, path: str):
        self.path = path
        self._starts: list[int] | None = None
        self._symbols: list[tuple[int, int, str]] = []
        try:
            with open(path, "rb") as f:
                if not isinstance(ELFFile(f).get_section_by_name(".symtab"), SymbolTableSection):
                    raise InputError(f"{path}: no symbol table (Debian's vmlinux is stripped: use the "
                                     "-dbg package's, see samples/linux/build --debug)")
        except OSError as e:
            raise InputError(f"{path}: cannot read the kernel: {e.strerror}") from None
        except ELFError as e:
            raise InputError(f"{path}: not an ELF file ({e})") from None

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            table = ELFFile(f).get_section_by_name(".symtab")
            self._symbols = sorted((s["st_value"], s["st_size"], s.name) for s in table.iter_symbols()
                                   if s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")
                                   and s["st_value"] and s.name)
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
        return f"{name}+{addr - start:#x}" if addr < end else None
