"""ELF structures, fields spelled exactly as in ``<elf.h>`` (little-endian only: x86-64 and aarch64 cores).

Only the pieces kvmsnap reads or writes: file header, program header, section header, note header,
for ELFCLASS64 (what kvmsnap writes) and ELFCLASS32 (foreign cores the inspector may be given).
"""
from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

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
