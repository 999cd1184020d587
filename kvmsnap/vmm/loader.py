"""Loading an ELF64 executable into guest RAM, for every architecture's boot: each PT_LOAD at its
p_paddr (zero-filled to p_memsz), with the checks that make a bad image one line for the user."""
from kvmsnap.errors import InputError
from kvmsnap.formats import elf

_PHDR = elf.row_parser("Elf64_Phdr", elf.Elf64_Phdr)


class LoadError(InputError):
    """The image cannot be loaded: bad format, wrong architecture, or too big for guest RAM."""


def require_ram(memory, name: str, addr: int, size: int) -> None:
    if not memory.contains(addr, size):
        raise LoadError(f"{name}: needs guest RAM at {addr:#x}-{addr + size:#x}, but the guest has only "
                        f"{memory.top >> 20} MiB: give it more memory", setting="mem_size")


def load_elf(data: bytes, name: str, memory, e_machine: int, arch: str, min_paddr: int):
    """Copy an ELF64 executable for ``e_machine`` into ``memory``: (its ELF header, the end of its
    highest PT_LOAD, the bytes of each PT_NOTE). No segment may load below ``min_paddr``."""
    if len(data) < elf.Elf64_Ehdr.sizeof():
        raise LoadError(f"{name}: truncated ELF header")
    ident = elf.e_ident.parse(data)
    ehdr = elf.Elf64_Ehdr.parse(data)
    if ident.EI_CLASS != elf.ELFCLASS64 or ident.EI_DATA != elf.ELFDATA2LSB or ehdr.e_machine != e_machine:
        raise LoadError(f"{name}: not an {arch} ELF image (class {ident.EI_CLASS}, machine "
                        f"{ehdr.e_machine}); this host runs {arch} guests")
    if ehdr.e_type != elf.ET_EXEC:
        raise LoadError(f"{name}: ELF type {ehdr.e_type} is not an executable (ET_EXEC)")
    entsize = elf.Elf64_Phdr.sizeof()
    if ehdr.e_phentsize != entsize or ehdr.e_phoff + ehdr.e_phnum * entsize > len(data):
        raise LoadError(f"{name}: program header table at {ehdr.e_phoff:#x} lies outside the file")
    image_end, notes = 0, []
    for i in range(ehdr.e_phnum):
        at = ehdr.e_phoff + i * entsize
        p = _PHDR(data[at:at + entsize])
        if p.p_offset + p.p_filesz > len(data) or p.p_filesz > p.p_memsz:
            raise LoadError(f"{name}: segment {i} at file offset {p.p_offset:#x} lies outside the file")
        if p.p_type == elf.PT_LOAD and p.p_memsz:
            if p.p_paddr < min_paddr:
                raise LoadError(f"{name}: segment {i} loads at {p.p_paddr:#x}, below {min_paddr:#x} (reserved "
                                "for boot data)")
            require_ram(memory, name, p.p_paddr, p.p_memsz)
            memory.write(p.p_paddr, data[p.p_offset:p.p_offset + p.p_filesz] + bytes(p.p_memsz - p.p_filesz))
            image_end = max(image_end, p.p_paddr + p.p_memsz)
        elif p.p_type == elf.PT_NOTE:
            notes.append(data[p.p_offset:p.p_offset + p.p_filesz])
    return ehdr, image_end, notes
