"""``kvmsnap inspect``: everything a core holds, decoded to plain data (docs/inspect-json.md).

:func:`summarize` reads headers and notes only (never guest memory) and returns JSON-ready data;
:mod:`kvmsnap.describe` turns it into text.  It reads kvmsnap cores (validated in full by
:func:`kvmsnap.corefile.read_core`) and any little-endian ELF core: QEMU ``dump-guest-memory``
(x86-64, i386, aarch64), gdb ``gcore`` and Linux process cores, vmcores with VMCOREINFO.  The
decoding of each note lives in :mod:`kvmsnap.decode`; this module picks the notes and assembles.
"""
import struct

from kvmsnap import corefile
from kvmsnap import notes as N
from kvmsnap.corefile import CoreFormatError
from kvmsnap.decode import arm64 as arm64_decode
from kvmsnap.decode import devices, lapic, linux
from kvmsnap.decode import x86 as x86_decode
from kvmsnap.decode.bits import DecodeError
from kvmsnap.errors import InputError
from kvmsnap.formats import elf, x86

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")
X86_64_REGS = GPRS + SEGMENTS + ("fs_base", "gs_base") + CONTROL
I386_PRSTATUS_REG_OFFSET = 72        # pr_reg in the i386 elf_prstatus (144 bytes)
I386_REGS = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs", "orig_eax",
             "eip", "cs", "eflags", "esp", "ss")

VCPU_SECTIONS = ("thread", "regs", "segments", "control", "debug", "fpu", "msrs", "lapic",
                 "events", "mp_state", "cpuid", "siginfo", "sysregs", "arm")
FILE_SECTIONS = ("devices", "process", "vmcoreinfo", "memory", "notes")
SECTIONS = VCPU_SECTIONS + FILE_SECTIONS

KEY_PRSTATUS = (N.OWNER_CORE, N.NT_PRSTATUS)
KEY_QEMU = (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE)
PROCESS_NOTES = {N.NT_PRPSINFO: "prpsinfo", N.NT_AUXV: "auxv", N.NT_FILE: "files"}
ARM_NOTES = {t: N.type_name(N.OWNER_LINUX, t) for t in range(0x400, 0x410)
             if N.type_name(N.OWNER_LINUX, t).startswith("NT_ARM_")}
DECODED = ({(N.OWNER_CORE, t) for t in (N.NT_PRSTATUS, N.NT_FPREGSET, N.NT_PRPSINFO, N.NT_AUXV,
                                        N.NT_FILE, N.NT_SIGINFO)}
           | {(N.OWNER_LINUX, t) for t in (N.NT_X86_XSTATE, N.NT_SIGINFO, *ARM_NOTES)}
           | {KEY_QEMU, (N.OWNER_VMCOREINFO, N.NT_VMCOREINFO)}
           | {key for key in N.REGISTRY if key[0] == N.OWNER_KVMSNAP})


def summarize(path, *, vcpu: int | None = None, sections=None) -> dict:
    """A JSON-ready description of the core at ``path`` (CoreFormatError if it cannot be read).

    ``vcpu`` keeps one vCPU/thread; ``sections`` (names from :data:`SECTIONS`) keeps only those
    per-vCPU sections and file-wide parts.  InputError for an unknown vCPU or section."""
    unknown = set(sections or ()) - set(SECTIONS)
    if unknown:
        raise InputError(f"unknown section {sorted(unknown)[0]!r} (choose from "
                         f"{', '.join(SECTIONS)})")
    image = corefile.parse_elf(path, strict=False)
    if _is_kvmsnap_x86(image):
        summary = _summarize_kvmsnap(corefile.read_core(path))
    else:
        summary = _summarize_foreign(image)
    return _select(summary, vcpu, sections)


def _is_kvmsnap_x86(image: corefile.ElfCore) -> bool:
    """A kvmsnap x86 core (KVMSNAP_HEADER first, arch x86_64); aarch64 ones are read note by
    note like any other core."""
    first = image.notes[0] if image.notes else None
    if first is None or (first.owner, first.type) != (N.OWNER_KVMSNAP, N.KVMSNAP_HEADER):
        return False
    arch = first.desc[20:24]
    return len(arch) < 4 or struct.unpack("<I", arch)[0] == N.ARCH_X86_64


def _select(summary: dict, vcpu, sections) -> dict:
    if vcpu is not None:
        chosen = [v for v in summary["vcpus"] if v["id"] == vcpu]
        if not chosen:
            raise InputError(f"{summary['file']}: no vCPU {vcpu} (the core has "
                             f"{len(summary['vcpus'])})")
        summary["vcpus"] = chosen
    if sections:
        for v in summary["vcpus"]:
            v["sections"] = {k: s for k, s in v["sections"].items() if k in sections}
    summary["selected"] = dict(vcpu=vcpu, sections=list(sections) if sections else None)
    return summary


def _note_list(notes) -> list[dict]:
    return [dict(owner=n.owner, type=n.type, type_name=n.type_name, size=n.size, offset=n.offset,
                 vcpu=n.vcpu, decoded=(n.owner, n.type) in DECODED) for n in notes]


def _memory_list(segments) -> list[dict]:
    return [dict(paddr=s.paddr, vaddr=s.vaddr, size=s.memsz, filesz=s.filesz, offset=s.offset,
                 physical=s.physical, beyond_eof=s.beyond_eof) for s in segments]


def _decode(path, note, decoder, *args):
    """``decoder(note.desc, *args)``; a note too short for its layout is a CoreFormatError."""
    try:
        return decoder(note.desc, *args)
    except DecodeError as e:
        raise CoreFormatError(path, note.offset, str(e)) from None


# =============================================================================================
# kvmsnap cores

def _summarize_kvmsnap(core: corefile.Core) -> dict:
    prstatus = [n for n in core.notes() if (n.owner, n.type) == KEY_PRSTATUS]
    vcpus = []
    for v, pr_note in zip(core.vcpus, prstatus):
        regs = x86.kvm_regs.parse(v.regs)
        sregs = corefile.parse_sregs(v.sregs, v.sregs2)
        values = {name: regs[name] for name in GPRS}
        values.update({name: sregs[name].selector for name in SEGMENTS})
        values.update(fs_base=sregs.fs.base, gs_base=sregs.gs.base,
                      **{name: sregs[name] for name in CONTROL})
        xcr0 = corefile.xcr0_of(v.xcrs)
        thread = x86_decode.prstatus(pr_note.desc)
        sections = dict(
            thread=thread["thread"],
            regs=x86_decode.regs_section(thread["regs"]),
            segments=x86_decode.segments_from_sregs(sregs),
            control=x86_decode.control(sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
                                       sregs.cr8, xcr0, sregs.apic_base),
            debug=x86_decode.debug(v.debugregs),
            fpu=x86_decode.xsave(v.xsave, 0x3 if xcr0 is None else xcr0, v.cpuid),
            msrs=x86_decode.msrs(v.msrs),
            lapic=lapic.lapic(v.lapic, x2apic=bool(sregs.apic_base >> 10 & 1)),
            events=x86_decode.events(v.events),
            mp_state=x86_decode.mp_state(v.mp_state),
            cpuid=x86_decode.cpuid(v.cpuid),
        )
        vcpus.append(dict(id=v.index, pid=v.index + 1, regs=values, mp_state=v.mp_state,
                          tsc_khz=v.tsc_khz, apic_base=sregs.apic_base, msrs=len(v.msrs),
                          xcr0=xcr0, xsave_size=len(v.xsave), sections=sections))
    return dict(
        file=core.path,
        kind="kvmsnap",
        arch=core.header.arch_name,
        producer=core.header.producer,
        format=dict(major=core.header.major, minor=core.header.minor),
        host_kernel=core.header.host_kernel,
        config=dict(guest=core.config.guest, mem_size=core.config.mem_size,
                    vcpus=core.config.vcpus),
        memory_map=[dict(slot=s, gpa=gpa, size=size) for s, gpa, size in core.memory_map],
        devices=dict(uart=devices.uart(core.uart), pic_master=devices.pic(core.pic_master),
                     pic_slave=devices.pic(core.pic_slave), ioapic=devices.ioapic(core.ioapic),
                     pit=devices.pit(core.pit), clock=devices.clock(core.clock)),
        process=None,
        vmcoreinfo=None,
        vcpus=vcpus,
        memory=_memory_list(core.segments),
        notes=_note_list(core.notes()),
    )


# =============================================================================================
# Other cores

def _i386_prstatus(desc: bytes) -> dict | None:
    if len(desc) < I386_PRSTATUS_REG_OFFSET + 4 * len(I386_REGS):
        return None
    words = struct.unpack_from(f"<{len(I386_REGS)}I", desc, I386_PRSTATUS_REG_OFFSET)
    return dict(thread=dict(pid=struct.unpack_from("<i", desc, 24)[0]),
                regs=dict(zip(I386_REGS, words)))


def _thread(path, note, machine, elfclass) -> dict:
    """A thread/vCPU from its NT_PRSTATUS: pid, ``regs`` (flat) and its first sections."""
    decoded = None
    if machine == elf.EM_X86_64 and elfclass == 64 \
            and note.size >= x86.elf_prstatus.sizeof():
        decoded = x86_decode.prstatus(note.desc)
        regs = {name: decoded["regs"][name] for name in GPRS + SEGMENTS + ("fs_base", "gs_base")}
        sections = dict(thread=decoded["thread"],
                        regs=x86_decode.regs_section(decoded["regs"]),
                        segments=x86_decode.segments_from_prstatus(decoded["regs"]))
    elif machine == elf.EM_AARCH64 and elfclass == 64:
        decoded = _decode(path, note, arm64_decode.prstatus)
        regs = dict(decoded["regs"])
        sections = dict(thread=decoded["thread"], regs=arm64_decode.regs_section(regs))
    elif machine == elf.EM_386:
        decoded = _i386_prstatus(note.desc)
        regs = dict(decoded["regs"]) if decoded else {}
        sections = dict(thread=decoded["thread"]) if decoded else {}
    else:
        regs, sections = {}, {}
    pid = decoded["thread"]["pid"] if decoded else None
    return dict(pid=pid, regs=regs, sections=sections)


def _attach(path, thread: dict, note, machine):
    """Decode a note that follows ``thread``'s NT_PRSTATUS into its sections."""
    sections = thread["sections"]
    key = (note.owner, note.type)
    if machine == elf.EM_X86_64 and key == (N.OWNER_LINUX, N.NT_X86_XSTATE):
        sections["fpu"] = _decode(path, note, lambda d: x86_decode.xsave(
            d, x86_decode.xcr0_from_linux_xstate(d)))
    elif machine == elf.EM_X86_64 and key == (N.OWNER_CORE, N.NT_FPREGSET) \
            and "fpu" not in sections:
        sections["fpu"] = _decode(path, note, x86_decode.xsave, 0x3)
    elif machine == elf.EM_AARCH64 and key == (N.OWNER_CORE, N.NT_PRFPREG):
        sections["fpu"] = _decode(path, note, arm64_decode.fpsimd)
    elif machine == elf.EM_AARCH64 and note.owner == N.OWNER_LINUX and note.type in ARM_NOTES:
        sections.setdefault("arm", {})[note.type_name] = _decode(
            path, note, arm64_decode.arm_note, note.type_name)
    elif note.owner in (N.OWNER_CORE, N.OWNER_LINUX) and note.type == N.NT_SIGINFO:
        sections["siginfo"] = _decode(path, note, linux.siginfo)
    elif key == (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS):
        payload = corefile.payload(path, note, N.KvmsnapArm64Regs)
        sections["sysregs"] = arm64_decode.one_regs(payload.regs)


def _summarize_foreign(image: corefile.ElfCore) -> dict:
    path = image.path
    machine = image.ehdr.e_machine
    arch = elf.MACHINE_NAMES.get(machine, f"e_machine {machine}")
    threads, qemu, process, vmcoreinfo = [], [], {}, None
    for note in image.notes:
        key = (note.owner, note.type)
        if key == KEY_PRSTATUS:
            thread = _thread(path, note, machine, image.elfclass)
            thread["id"] = note.vcpu = len(threads)
            threads.append(thread)
        elif key == KEY_QEMU and note.size >= x86.QEMUCPUSTATE_SIZE_V1_MIN \
                and machine in (elf.EM_X86_64, elf.EM_386):
            # QEMU writes one QEMUCPUState per CPU, in CPU order, after the NT_PRSTATUS notes.
            note.vcpu = len(qemu)
            qemu.append(x86.QEMUCPUState.parse(note.desc.ljust(x86.QEMUCPUState.sizeof(), b"\0")))
        elif note.owner == N.OWNER_CORE and note.type in PROCESS_NOTES:
            decoder = {N.NT_PRPSINFO: linux.prpsinfo, N.NT_AUXV: linux.auxv,
                       N.NT_FILE: linux.files}[note.type]
            process[PROCESS_NOTES[note.type]] = _decode(path, note, decoder)
        elif key == (N.OWNER_VMCOREINFO, N.NT_VMCOREINFO):
            vmcoreinfo = linux.vmcoreinfo(note.desc)
        elif threads and (note.owner in (N.OWNER_CORE, N.OWNER_LINUX)
                          or key == (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS)):
            note.vcpu = threads[-1]["id"]      # register notes follow their thread's NT_PRSTATUS
            _attach(path, threads[-1], note, machine)
    for thread, state in zip(threads, qemu):
        thread["regs"].update(cr0=state.cr[0], cr2=state.cr[2], cr3=state.cr[3], cr4=state.cr[4])
        thread["sections"]["segments"] = x86_decode.segments_from_qemu(state)
        thread["sections"]["control"] = x86_decode.control(state.cr[0], state.cr[2],
                                                           state.cr[3], state.cr[4])
    if machine == elf.EM_X86_64:
        for thread in threads:
            for name in X86_64_REGS:
                thread["regs"].setdefault(name, None)
    return dict(
        file=path,
        kind="elf-core",
        arch=arch,
        producer=_guess_producer(image),
        format=None,
        host_kernel=None,
        config=None,
        memory_map=None,
        devices=None,
        process=process or None,
        vmcoreinfo=vmcoreinfo,
        vcpus=[dict(id=t["id"], pid=t["pid"], regs=t["regs"], sections=t["sections"])
               for t in threads],
        memory=_memory_list(image.loads),
        notes=_note_list(image.notes),
    )


def _guess_producer(image: corefile.ElfCore) -> str | None:
    owners = {(n.owner, n.type) for n in image.notes}
    if any(owner == N.OWNER_QEMU for owner, _ in owners):
        return "QEMU dump-guest-memory"
    if (N.OWNER_VMCOREINFO, N.NT_VMCOREINFO) in owners:
        return "Linux kdump (vmcore)"
    if (N.OWNER_CORE, N.NT_FILE) in owners or (N.OWNER_CORE, N.NT_PRPSINFO) in owners:
        return "Linux process core (kernel or gdb gcore)"
    if any(owner == N.OWNER_KVMSNAP for owner, _ in owners):
        return "kvmsnap"
    return None


# =============================================================================================
# One note's raw bytes

def raw_note(path, which: str, vcpu: int | None = None) -> dict:
    """The note named ``which`` (a type name such as ``KVMSNAP_LAPIC``, or a number) of vCPU
    ``vcpu`` (default: the first such note): header fields plus ``data`` (bytes)."""
    image = corefile.parse_elf(path, strict=False)
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
