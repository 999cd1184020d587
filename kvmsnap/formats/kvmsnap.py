"""kvmsnap's own core files: a :class:`~kvmsnap.state.Snapshot` to notes, and a file back to a
validated Snapshot.  Every check a kvmsnap core must pass beyond being an ELF core is here; any
violation is a CoreFormatError naming the file offset (docs/core-format.md)."""
import bisect
import os
import stat

import blake3

from kvmsnap import arch
from kvmsnap import notes as N
from kvmsnap.formats import elf
from kvmsnap.formats.reader import (EHDR_OFFSETS, PHDR_OFFSETS, CoreFormatError, ElfCore, Note,
                                    parse_elf, payload)
from kvmsnap.memory import PAGE_SIZE, Slot
from kvmsnap.memory.vmcoreinfo import find_vmcoreinfo
from kvmsnap.state import Base, CoreInfo, MachineConfig, Snapshot

FORMAT_MAJOR = 1
FORMAT_MINOR = 4
MAX_VCPUS = 4096
MAX_CHAIN = 256                      # increments over one full core at most

_HEADER_AT = elf.offsets(N.KvmsnapHeader)
_CONFIG_AT = elf.offsets(N.KvmsnapConfig)
_REGIONS_AT = elf.offsets(N.KvmsnapMemoryMap)["regions"]


# -- writing --------------------------------------------------------------------------------------

def check(snapshot: Snapshot) -> None:
    """ValueError unless ``snapshot`` can be written: vCPUs in index order, kernel-sized structs,
    page-aligned slots that do not overlap."""
    notes = arch.by_name(snapshot.arch).notes
    if not snapshot.vcpus:
        raise ValueError("the snapshot has no vCPUs")
    if len(snapshot.vcpus) > MAX_VCPUS:
        raise ValueError(f"{len(snapshot.vcpus)} vCPUs: at most {MAX_VCPUS} supported")
    for i, v in enumerate(snapshot.vcpus):
        if v.index != i:
            raise ValueError(f"vCPU {i}: index {v.index} (vCPUs must be in index order from 0)")
        notes.check_vcpu(i, v)
    notes.check_devices(snapshot.devices)
    previous_end = -1
    for s in snapshot.memory.slots():
        if s.size <= 0 or s.size % PAGE_SIZE or s.gpa % PAGE_SIZE:
            raise ValueError(f"memory slot {s.slot}: 0x{s.gpa:x}+0x{s.size:x} is not page-aligned")
        if s.gpa < previous_end:
            raise ValueError(f"memory slot {s.slot} overlaps another slot")
        previous_end = s.end
    if snapshot.base is not None:
        slots = sorted(snapshot.memory.slots(), key=lambda s: s.gpa)
        previous_end = -1
        for start, end in snapshot.changed:
            if start % PAGE_SIZE or end % PAGE_SIZE or start < previous_end or start >= end \
                    or not any(s.gpa <= start and end <= s.end for s in slots):
                raise ValueError(f"changed run 0x{start:x}..0x{end:x}: not page-aligned, out of order, "
                                 "or not inside one memory slot")
            previous_end = end


def encode(snapshot: Snapshot, phdr_of_slot: dict[int, int], *, producer: str,
           host_kernel: str) -> list[tuple[str, int, bytes]]:
    """``(owner, type, descriptor)`` of every note, in file order: the VM-wide notes, then each
    vCPU's set; ``phdr_of_slot`` gives the PT_LOAD of each memory slot."""
    notes = arch.by_name(snapshot.arch).notes
    c = snapshot.config
    vm = [
        (N.OWNER_KVMSNAP, N.KVMSNAP_HEADER, N.KvmsnapHeader.build(dict(
            magic=N.KVMSNAP_MAGIC, format_major=FORMAT_MAJOR, format_minor=FORMAT_MINOR,
            arch=arch.by_name(snapshot.arch).ARCH_ID, nr_vcpus=len(snapshot.vcpus), reserved=0,
            host_kernel=host_kernel, producer=producer))),
        (N.OWNER_KVMSNAP, N.KVMSNAP_CONFIG, N.KvmsnapConfig.build(dict(
            mem_size=c.mem_size, vcpus=c.vcpus, reserved=0, guest=c.guest))),
        (N.OWNER_KVMSNAP, N.KVMSNAP_MEMORY_MAP, N.KvmsnapMemoryMap.build(dict(
            reserved=0, regions=[dict(slot=s.slot, flags=0, guest_phys_addr=s.gpa,
                                      memory_size=s.size, phdr_index=phdr_of_slot[s.slot],
                                      reserved=0) for s in snapshot.memory.slots()]))),
    ]
    if snapshot.base is not None:
        b = snapshot.base
        vm.append((N.OWNER_KVMSNAP, N.KVMSNAP_BASE, N.KvmsnapBase.build(dict(
            base_size=b.size, state_blake3=b.state_blake3, path=b.path))))
    text = find_vmcoreinfo(snapshot.memory) if notes.kernel_in_high_half(snapshot.vcpus) else None
    guest_os = [(N.OWNER_VMCOREINFO, N.NT_VMCOREINFO, text)] if text else []
    return vm + notes.device_notes(snapshot.devices) + guest_os + notes.process_notes(snapshot.vcpus) + [
        note for v in snapshot.vcpus for note in notes.vcpu_notes(v)]


# -- reading --------------------------------------------------------------------------------------

def read_core(path) -> Snapshot:
    """Open and validate a kvmsnap core, and the base of an increment (:func:`with_base`);
    CoreFormatError (one line, with the offset) otherwise.  The Snapshot's memory reads the
    file(s) (close the Snapshot when done)."""
    return with_base(decode(parse_elf(path)))


def with_base(snapshot: Snapshot, depth: int = 0) -> Snapshot:
    """``snapshot`` with, if it is an increment, its memory read through its base (found where it
    was saved, else beside the increment; checked by size and state BLAKE3), recursively."""
    if snapshot.base is None:
        return snapshot
    path, base = snapshot.info.path, snapshot.base
    try:
        if depth >= MAX_CHAIN:
            raise CoreFormatError(path, None, f"more than {MAX_CHAIN} increments over one full core")
        image = _find_base(path, base)
        below = with_base(decode(image), depth + 1)
    except BaseException:
        snapshot.close()
        raise
    if below.memory.slots() != snapshot.memory.slots() or below.arch != snapshot.arch:
        below.close()
        snapshot.close()
        raise CoreFormatError(path, None, f"its base {image.path} has other memory slots or another "
                                          "architecture")
    from kvmsnap.memory.chain import ChainMemory
    snapshot.memory = ChainMemory(below.memory, snapshot.memory)
    snapshot.chain = below.chain + [below.info]
    return snapshot


def _find_base(path: str, base) -> ElfCore:
    """The base an increment names: at its recorded path, else by its name beside the increment.
    A candidate that is missing, of another size, not a regular file or not a kvmsnap core with
    the recorded state is passed over, and named in the error if none is the base."""
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(base.path))
    problems = []
    for candidate in dict.fromkeys((base.path, beside)):
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:          # ValueError: a NUL in the recorded path
            problems.append(f"{_shown(candidate)}: {getattr(e, 'strerror', None) or e}")
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != base.size:
            what = f"size {st.st_size}" if stat.S_ISREG(st.st_mode) else "not a regular file"
            problems.append(f"{_shown(candidate)} is not it ({what}, expected a file of {base.size} bytes)")
            continue
        try:
            image = parse_elf(candidate)
            digest = state_blake3(candidate, image)
        except CoreFormatError as e:
            problems.append(str(e))
            continue
        if digest == base.state_blake3:
            return image
        problems.append(f"{_shown(candidate)} is not it (state BLAKE3 {digest.hex()[:16]}…, expected "
                        f"{base.state_blake3.hex()[:16]}…)")
    raise CoreFormatError(path, None, f"an increment of {_shown(base.path)}, which is missing: "
                                      + ("; ".join(problems) if problems else f"nor is it at {_shown(beside)}"))


def _shown(path: str) -> str:
    """A path as the message shows it: quoted when it holds a NUL, a newline or the like."""
    return path if path.isprintable() else repr(path)


def is_kvmsnap(image: ElfCore) -> bool:
    first = image.notes[0] if image.notes else None
    return first is not None and (first.owner, first.type) == (N.OWNER_KVMSNAP, N.KVMSNAP_HEADER)


def header(image: ElfCore):
    """The KVMSNAP_HEADER of a core this kvmsnap reads: first note, its magic, format major 1."""
    first = image.phdrs[0][1]
    if not is_kvmsnap(image):
        raise CoreFormatError(image.path, first.p_offset, "first note is not KVMSNAP_HEADER: not a kvmsnap core")
    h = payload(image.path, image.notes[0], N.KvmsnapHeader)
    at = image.notes[0].desc_offset
    if h.magic != N.KVMSNAP_MAGIC:
        raise CoreFormatError(image.path, at + _HEADER_AT["magic"], f"bad KVMSNAP_HEADER magic {bytes(h.magic)!r}")
    if h.format_major != FORMAT_MAJOR:
        raise CoreFormatError(image.path, at + _HEADER_AT["format_major"],
                              f"format {h.format_major}.{h.format_minor} is not supported (this kvmsnap reads "
                              f"{FORMAT_MAJOR}.x)")
    return h


def decode(image: ElfCore) -> Snapshot:
    """The Snapshot in a parsed core, after every structural check."""
    from kvmsnap.memory.core import CoreMemory
    path = image.path

    def fail(offset, what):
        raise CoreFormatError(path, offset, what)

    eo = EHDR_OFFSETS[64]
    if image.elfclass != 64:
        fail(4, "kvmsnap cores are ELFCLASS64")
    ehdr = image.ehdr
    if ehdr.e_ident.EI_OSABI not in (elf.ELFOSABI_NONE, elf.ELFOSABI_LINUX):
        fail(7, f"EI_OSABI {ehdr.e_ident.EI_OSABI} is not ELFOSABI_NONE")
    if ehdr.e_ehsize != elf.Elf64_Ehdr.sizeof():
        fail(eo["e_ehsize"], f"e_ehsize {ehdr.e_ehsize}, expected {elf.Elf64_Ehdr.sizeof()}")
    if ehdr.e_flags:
        fail(eo["e_flags"], f"e_flags 0x{ehdr.e_flags:x} is not 0")
    _check_segments(image)

    notes = image.notes
    first = image.phdrs[0][1]
    h = header(image)
    at = notes[0].desc_offset
    try:
        package = arch.for_id(h.arch)
    except arch.UnsupportedArch as e:
        fail(at + _HEADER_AT["arch"], str(e))
    arch_notes = package.notes
    if ehdr.e_machine != package.E_MACHINE:
        fail(eo["e_machine"], f"e_machine {ehdr.e_machine} is not {package.NAME}'s "
                              f"({elf.MACHINE_CONSTANTS[package.E_MACHINE]}, {package.E_MACHINE})")
    if not 1 <= h.nr_vcpus <= MAX_VCPUS:
        fail(at + _HEADER_AT["nr_vcpus"], f"nr_vcpus {h.nr_vcpus} out of range 1..{MAX_VCPUS}")

    # VM-wide notes come before the first NT_PRSTATUS; each NT_PRSTATUS opens a vCPU's set.
    vm: dict[int, Note] = {}
    sets: list[dict[tuple[str, int], Note]] = []
    for note in notes[1:]:
        key = (note.owner, note.type)
        entry = N.lookup(*key)
        if key == (N.OWNER_CORE, N.NT_PRSTATUS):
            sets.append({})
        if entry is None or entry.scope is None:
            note.vcpu = len(sets) - 1 if sets else None
            continue                      # unknown notes (e.g. newer minor) are ignored
        if entry.scope == "vm":
            if key[1] == N.KVMSNAP_HEADER or key[1] in vm:
                fail(note.offset, f"duplicate {entry.name} note")
            vm[key[1]] = note
        else:
            if not sets:
                fail(note.offset, f"{entry.name} before any NT_PRSTATUS (per-vCPU notes must "
                                  "follow their vCPU's NT_PRSTATUS)")
            if key in sets[-1]:
                fail(note.offset, f"duplicate {entry.name} note for vCPU {len(sets) - 1}")
            sets[-1][key] = note
            note.vcpu = len(sets) - 1
    for n_type in N.FORMAT_NOTES + tuple(arch_notes.DEVICE_NOTES):
        if n_type != N.KVMSNAP_HEADER and n_type not in vm and n_type not in arch_notes.OPTIONAL_DEVICE_NOTES:
            fail(first.p_offset, f"missing {N.type_name(N.OWNER_KVMSNAP, n_type)} note")
    if len(sets) != h.nr_vcpus:
        fail(first.p_offset, f"KVMSNAP_HEADER says {h.nr_vcpus} vCPUs but the notes hold "
                             f"{len(sets)} NT_PRSTATUS")
    vcpus = []
    for index, notes_of_vcpu in enumerate(sets):
        for key in arch_notes.VCPU_NOTES:
            if key not in notes_of_vcpu:
                fail(notes_of_vcpu[(N.OWNER_CORE, N.NT_PRSTATUS)].offset,
                     f"vCPU {index}: missing {N.type_name(*key)} note")
        vcpus.append(arch_notes.read_vcpu(path, index, notes_of_vcpu))

    # Restore builds the machine from KVMSNAP_CONFIG: it must describe exactly what the file holds.
    config_note = vm[N.KVMSNAP_CONFIG]
    c = payload(path, config_note, N.KvmsnapConfig)
    if c.vcpus != h.nr_vcpus:
        fail(config_note.desc_offset + _CONFIG_AT["vcpus"], f"KVMSNAP_CONFIG says {c.vcpus} vCPUs "
                                                            f"but the core holds {h.nr_vcpus}")
    base = None
    if N.KVMSNAP_BASE in vm:
        b = payload(path, vm[N.KVMSNAP_BASE], N.KvmsnapBase)
        base = Base(b.path, b.base_size, bytes(b.state_blake3))
        slots, slot_segments = _increment_slots(image, vm[N.KVMSNAP_MEMORY_MAP]), {}
    else:
        slot_segments = _memory_slots(image, vm[N.KVMSNAP_MEMORY_MAP])
        slots = [Slot(n, seg.paddr, seg.filesz) for n, seg in slot_segments.items()]
    slots_size = sum(s.size for s in slots)
    if c.mem_size != slots_size:
        fail(config_note.desc_offset + _CONFIG_AT["mem_size"],
             f"KVMSNAP_CONFIG mem_size 0x{c.mem_size:x} is not the size of the memory slots "
             f"(0x{slots_size:x})")
    devices = arch_notes.read_devices(path, vm)
    memory = CoreMemory(image, "kvmsnap", slots=slots, slot_segments=slot_segments,
                        segments=image.loads if base else list(slot_segments.values()),
                        paging=[arch_notes.paging_state(v) for v in vcpus])
    return Snapshot(arch=package.NAME, config=MachineConfig(c.guest, c.mem_size, c.vcpus),
                    vcpus=vcpus, devices=devices, memory=memory,
                    info=CoreInfo(path, h.format_major, h.format_minor, h.host_kernel, h.producer,
                                  image),
                    base=base, changed=[(s.paddr, s.paddr + s.filesz) for s in image.loads] if base else None)


def state_blake3(path, image: ElfCore) -> bytes:
    """BLAKE3 of a kvmsnap core's ELF header, program headers and notes: every byte before its
    memory, which holds every vCPU's and device's state (what an increment names its base by).
    CoreFormatError unless the notes follow the program headers as a kvmsnap core has them."""
    ehdr = image.ehdr
    notes = image.phdrs[0][1]
    if notes.p_type != elf.PT_NOTE or not is_kvmsnap(image) \
            or notes.p_offset != ehdr.e_phoff + ehdr.e_phnum * ehdr.e_phentsize:
        raise CoreFormatError(path, None, "not a kvmsnap core (KVMSNAP_HEADER is not the first note, right after "
                                          "the program headers)")
    end = notes.p_offset + notes.p_filesz        # bounded: parse_elf caps the notes and the headers
    with open(path, "rb") as f:
        data = f.read(end)
    if len(data) != end:
        raise CoreFormatError(path, len(data), "the file ends inside its notes (changed while read?)")
    return blake3.blake3(data).digest()


def standard_notes_disagree(snapshot: Snapshot) -> list[str]:
    """Each standard note (what gdb, crash and drgn read: NT_PRSTATUS, NT_FPREGSET, NT_X86_XSTATE,
    QEMU's, the XSAVE layout) whose bytes are not what the state restore loads from the private
    notes gives, in words."""
    notes = arch.by_name(snapshot.arch).notes
    found: dict = {}
    for n in snapshot.info.elf.notes:
        if n.owner != N.OWNER_KVMSNAP:
            found.setdefault((n.vcpu, n.owner, n.type), n)
    problems = []
    for v in [None, *snapshot.vcpus]:
        made = notes.process_notes(snapshot.vcpus) if v is None else notes.vcpu_notes(v)
        for owner, n_type, desc in made:
            note = found.get((None if v is None else v.index, owner, n_type))
            if owner == N.OWNER_KVMSNAP or note is None or note.desc == desc:
                continue
            at = next((i for i, (a, b) in enumerate(zip(note.desc, desc)) if a != b), min(len(desc), note.size))
            who = "" if v is None else f"vCPU {v.index}: "
            problems.append(f"{who}{note.type_name} (what debuggers read) differs from the state restore loads from "
                            f"the KVMSNAP notes, from file offset 0x{note.desc_offset + at:x}")
    return problems


def _check_segments(image: ElfCore) -> None:
    """PT_NOTE first, then page-aligned PT_LOADs wholly in the file, after the notes."""
    po = PHDR_OFFSETS[64]
    first_at, first = image.phdrs[0]

    def fail(offset, what):
        raise CoreFormatError(image.path, offset, what)

    if first.p_type != elf.PT_NOTE:
        fail(first_at, f"program header 0 has p_type {first.p_type}: kvmsnap cores start with "
                       "PT_NOTE")
    for i, (at, p) in enumerate(image.phdrs[1:], 1):
        if p.p_type != elf.PT_LOAD:
            fail(at, f"program header {i} has p_type {p.p_type}: expected PT_LOAD")
        if p.p_offset % PAGE_SIZE or p.p_paddr % PAGE_SIZE or p.p_vaddr % PAGE_SIZE \
                or p.p_filesz % PAGE_SIZE:
            fail(at + po["p_offset"], f"PT_LOAD {i} is not page-aligned")
        if p.p_filesz != p.p_memsz:
            fail(at + po["p_memsz"], f"PT_LOAD {i}: p_memsz 0x{p.p_memsz:x} != p_filesz "
                                     f"0x{p.p_filesz:x}")
        if p.p_filesz and p.p_offset < first.p_offset + first.p_filesz:
            fail(at + po["p_offset"], f"PT_LOAD {i} overlaps the notes")
        if p.p_offset + p.p_filesz > image.file_size:
            fail(at + po["p_offset"], f"PT_LOAD {i}: file range 0x{p.p_offset:x}..0x"
                                      f"{p.p_offset + p.p_filesz:x} is past the end of the file "
                                      f"(0x{image.file_size:x})")


def _increment_slots(image: ElfCore, note: Note) -> list[Slot]:
    """An increment's memory slots (NO_PHDR each: no PT_LOAD holds a slot; their bytes are the
    base's); its PT_LOADs hold the changed runs: physical (p_vaddr = p_paddr), in address order,
    disjoint, each inside one slot."""
    path = image.path
    mm = payload(path, note, N.KvmsnapMemoryMap)
    entry_size = N.kvmsnap_memory_region.sizeof()
    slots = []
    for i, r in enumerate(mm.regions):
        at = note.desc_offset + _REGIONS_AT + i * entry_size
        if r.phdr_index != N.NO_PHDR:
            raise CoreFormatError(path, at, f"memory slot {r.slot}: phdr_index {r.phdr_index} in an increment "
                                            f"(KVMSNAP_BASE): expected 0x{N.NO_PHDR:x}")
        if r.memory_size == 0 or r.memory_size % PAGE_SIZE or r.guest_phys_addr % PAGE_SIZE \
                or any(s.slot == r.slot or s.gpa < r.guest_phys_addr + r.memory_size and r.guest_phys_addr < s.end
                       for s in slots):
            raise CoreFormatError(path, at, f"memory slot {r.slot} (0x{r.guest_phys_addr:x}+0x{r.memory_size:x}) "
                                            "is empty, not page-aligned, or overlaps another")
        slots.append(Slot(r.slot, r.guest_phys_addr, r.memory_size))
    slots.sort(key=lambda s: s.gpa)
    starts = [s.gpa for s in slots]
    previous_end = 0
    for seg in image.loads:
        i = bisect.bisect_right(starts, seg.paddr) - 1
        if seg.vaddr != seg.paddr or seg.paddr < previous_end or i < 0 \
                or seg.paddr + seg.filesz > slots[i].end:
            raise CoreFormatError(path, image.phdrs[seg.index][0],
                                  f"PT_LOAD {seg.index} (0x{seg.paddr:x}+0x{seg.filesz:x}) is not a changed run of "
                                  "an increment: physical, in address order, inside one memory slot")
        previous_end = seg.paddr + seg.filesz
        seg.physical = True
    return slots


def _memory_slots(image: ElfCore, note: Note) -> dict:
    """slot -> its PT_LOAD, each matching the memory map, the slots disjoint, and every other
    PT_LOAD (guest-virtual) an alias of bytes inside one slot's."""
    path = image.path
    mm = payload(path, note, N.KvmsnapMemoryMap)
    by_index = {s.index: s for s in image.loads}
    entry_size = N.kvmsnap_memory_region.sizeof()
    slots = {}
    for i, r in enumerate(mm.regions):
        at = note.desc_offset + _REGIONS_AT + i * entry_size
        seg = by_index.get(r.phdr_index)
        if seg is None:
            raise CoreFormatError(path, at, f"memory slot {r.slot}: phdr_index {r.phdr_index} "
                                            "is not a PT_LOAD")
        if (seg.paddr, seg.vaddr, seg.filesz) != (r.guest_phys_addr, r.guest_phys_addr,
                                                  r.memory_size) or r.memory_size == 0:
            raise CoreFormatError(path, at, f"memory slot {r.slot} (0x{r.guest_phys_addr:x}+0x"
                                            f"{r.memory_size:x}) does not match PT_LOAD "
                                            f"{r.phdr_index}")
        if r.slot in slots or seg.physical:
            raise CoreFormatError(path, at, f"memory slot {r.slot}: duplicate slot or PT_LOAD")
        seg.physical = True
        slots[r.slot] = seg
    physical = sorted(slots.values(), key=lambda s: s.paddr)
    for a, b in zip(physical, physical[1:]):
        if b.paddr < a.paddr + a.filesz:
            raise CoreFormatError(path, image.phdrs[b.index][0],
                                  f"PT_LOAD {b.index} (0x{b.paddr:x}) overlaps the physical "
                                  f"range of PT_LOAD {a.index}")
    starts = [s.paddr for s in physical]
    for seg in image.loads:
        if seg.physical:
            continue
        i = bisect.bisect_right(starts, seg.paddr) - 1
        home = physical[i] if i >= 0 and seg.paddr < physical[i].paddr + physical[i].filesz \
            else None
        if home is None or seg.paddr + seg.filesz > home.paddr + home.filesz \
                or seg.offset - home.offset != seg.paddr - home.paddr:
            raise CoreFormatError(path, image.phdrs[seg.index][0],
                                  f"PT_LOAD {seg.index} (virtual 0x{seg.vaddr:x}) is not an "
                                  "alias of a memory slot's bytes")
    return slots
