"""Where everything goes in a kvmsnap core file (docs/core-format.md)::

    Elf64_Ehdr                          64 bytes
    Elf64_Phdr[e_phnum]                 PT_NOTE, virtual PT_LOADs (vaddr order), physical PT_LOADs
    notes                               KVMSNAP_HEADER, VM-wide KVMSNAP notes, then per vCPU:
                                        NT_PRSTATUS, NT_FPREGSET, NT_X86_XSTATE, QEMU, KVMSNAP_*
                                        KVMSNAP_DIGEST (last, filled in once the memory is written)
    zero padding to 4096
    RAM of slot 0, slot 1, ...          page-aligned, sparse (all-zero pages are holes)

An increment (``snapshot.base`` set) has no guest-virtual PT_LOADs, and one physical PT_LOAD per
changed run instead of one per slot; its KVMSNAP_MEMORY_MAP slots point at no PT_LOAD (NO_PHDR).

Every note's file offset is known before anything is written, so the digest note, whose size
depends only on the number of notes and of memory chunks, is filled in after the memory.
"""
import bisect
from dataclasses import dataclass

from kvmsnap import arch
from kvmsnap import notes as N
from kvmsnap.formats import digest, elf
from kvmsnap.formats.kvmsnap import encode
from kvmsnap.memory import PAGE_SIZE, Slot
from kvmsnap.notes import NO_PHDR
from kvmsnap.state import Snapshot

NOTE_ALIGN = 4                       # Linux cores align notes (and PT_NOTE p_align) to 4
# PT_LOAD p_align, as kdump's and QEMU's cores have it: crash takes a core whose first PT_LOAD has a
# page-aligned p_offset and a nonzero p_align for a (2005) netdump core, and crash 8.0.2 then dies.
LOAD_ALIGN = 0
MAX_VIRTUAL_SEGMENTS = 4096          # guest-virtual PT_LOADs written at most
MAX_PHNUM = elf.PN_XNUM - 1
MAX_CHANGED_RUNS = 1 << 15           # an increment's PT_LOADs at most (closer runs are merged)
PF_RWX = elf.PF_R | elf.PF_W | elf.PF_X


@dataclass
class Layout:
    header: bytes                           # Ehdr + Phdrs + notes + padding to the first page
    placements: list[tuple[Slot, int]]      # each memory slot and the file offset of its bytes
    note_offsets: list[int]                 # file offset of each note header, in note order
    memory_offset: int                      # where the first slot's bytes start (chunks of the digest)
    total_size: int
    virtual_segments: int
    virtual_truncated: bool


def note_bytes(owner: str, n_type: int, desc: bytes) -> bytes:
    """One ELF note: Elf64_Nhdr, NUL-terminated owner padded to 4, descriptor padded to 4."""
    name = owner.encode("ascii") + b"\0"
    nhdr = elf.Elf64_Nhdr.build(dict(n_namesz=len(name), n_descsz=len(desc), n_type=n_type))
    return (nhdr + name.ljust(elf.align(len(name), NOTE_ALIGN), b"\0")
            + desc.ljust(elf.align(len(desc), NOTE_ALIGN), b"\0"))


def plan(snapshot: Snapshot, *, producer: str, host_kernel: str,
         max_virtual: int = MAX_VIRTUAL_SEGMENTS) -> Layout:
    """The file layout of ``snapshot``: headers and notes as bytes, and where each slot (each
    changed run, for an increment) goes."""
    if snapshot.base is None:
        slots = sorted(snapshot.memory.slots(), key=lambda s: s.gpa)
        virtual, truncated = _virtual_ranges(snapshot, slots, max_virtual)
        phdr_of_slot = {s.slot: 1 + len(virtual) + i for i, s in enumerate(slots)}
    else:
        slots = [Slot(-1, start, end - start) for start, end in snapshot.changed]
        virtual, truncated = [], False
        phdr_of_slot = {s.slot: NO_PHDR for s in snapshot.memory.slots()}
    phnum = 1 + len(virtual) + len(slots)
    if phnum > MAX_PHNUM:
        raise ValueError(f"{phnum} program headers: at most {MAX_PHNUM}")
    notes = [note_bytes(*n) for n in encode(snapshot, phdr_of_slot, producer=producer,
                                            host_kernel=host_kernel)]
    memory_size = sum(elf.align(s.size, PAGE_SIZE) for s in slots)
    notes.append(_digest_note(len(notes), 0, memory_size))
    notes_offset = elf.Elf64_Ehdr.sizeof() + phnum * elf.Elf64_Phdr.sizeof()
    note_offsets, offset = [], notes_offset
    for n in notes:
        note_offsets.append(offset)
        offset += len(n)
    notes_size = offset - notes_offset
    memory_offset = elf.align(notes_offset + notes_size, PAGE_SIZE)
    notes[-1] = _digest_note(len(notes) - 1, memory_offset, memory_size)

    placements, offset = [], memory_offset
    for s in slots:
        placements.append((s, offset))
        offset = elf.align(offset + s.size, PAGE_SIZE)

    def phdr(p_type, p_offset, p_vaddr, p_paddr, size, flags, align):
        return elf.Elf64_Phdr.build(dict(p_type=p_type, p_flags=flags, p_offset=p_offset,
                                         p_vaddr=p_vaddr, p_paddr=p_paddr, p_filesz=size,
                                         p_memsz=size, p_align=align))

    phdrs = [phdr(elf.PT_NOTE, notes_offset, 0, 0, notes_size, elf.PF_R, NOTE_ALIGN)]
    starts = [s.gpa for s in slots]
    for vaddr, paddr, size in virtual:      # each inside one slot (virtual_ranges splits them)
        s, s_offset = placements[bisect.bisect_right(starts, paddr) - 1]
        phdrs.append(phdr(elf.PT_LOAD, s_offset + paddr - s.gpa, vaddr, paddr, size, PF_RWX,
                          LOAD_ALIGN))
    for s, s_offset in placements:
        phdrs.append(phdr(elf.PT_LOAD, s_offset, s.gpa, s.gpa, s.size, PF_RWX, LOAD_ALIGN))

    ehdr = elf.Elf64_Ehdr.build(dict(
        e_ident=dict(EI_MAG=elf.ELFMAG, EI_CLASS=elf.ELFCLASS64, EI_DATA=elf.ELFDATA2LSB,
                     EI_VERSION=elf.EV_CURRENT, EI_OSABI=elf.ELFOSABI_NONE, EI_ABIVERSION=0,
                     EI_PAD=bytes(7)),
        e_type=elf.ET_CORE, e_machine=arch.by_name(snapshot.arch).E_MACHINE,
        e_version=elf.EV_CURRENT, e_entry=0, e_phoff=elf.Elf64_Ehdr.sizeof(), e_shoff=0,
        e_flags=0, e_ehsize=elf.Elf64_Ehdr.sizeof(), e_phentsize=elf.Elf64_Phdr.sizeof(),
        e_phnum=phnum, e_shentsize=0, e_shnum=0, e_shstrndx=0))
    return Layout(ehdr + b"".join(phdrs) + b"".join(notes), placements, note_offsets, memory_offset, offset,
                  len(virtual), truncated)


def _digest_note(nr_notes: int, memory_offset: int, memory_size: int) -> bytes:
    return note_bytes(N.OWNER_KVMSNAP, N.KVMSNAP_DIGEST, digest.placeholder(nr_notes, memory_offset, memory_size))


def _virtual_ranges(snapshot: Snapshot, slots: list[Slot], limit: int):
    """vCPU 0's guest-virtual mappings of RAM."""
    package = arch.by_name(snapshot.arch)
    if not limit:
        return [], False
    return package.paging.virtual_ranges(snapshot.memory.read,
                                         package.notes.paging_state(snapshot.vcpus[0]),
                                         slots, limit)
