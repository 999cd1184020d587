"""inspect's view of cores other tools wrote: QEMU ``dump-guest-memory`` (x86-64, i386, aarch64),
gdb ``gcore`` and Linux process cores, vmcores with VMCOREINFO; each thread from its NT_PRSTATUS
and the register notes that follow it (docs/inspect-json.md)."""
import struct

from kvmsnap import notes as N
from kvmsnap.arch.aarch64 import decode as arm64_decode, devices as arm64_devices, notes as arm64_notes
from kvmsnap.arch.x86_64 import decode as x86_decode
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.arch.x86_64.xsave import XCR0_LEGACY, xcr0_from_linux_xstate
from kvmsnap.decode import linux
from kvmsnap.formats import elf
from kvmsnap.formats.reader import ElfCore, payload
from kvmsnap.summary import (ARM_NOTES, KEY_PRSTATUS, KEY_QEMU, PROCESS_NOTES, decode_note,
                             memory_list, note_list, xsave_layout)

X86_64_REGS = (x86_decode.GPRS + ("rflags",) + x86_decode.SELECTORS + ("fs_base", "gs_base")
               + x86_decode.CONTROL)
I386_PRSTATUS_REG_OFFSET = 72        # pr_reg in the i386 elf_prstatus (144 bytes)
I386_REGS = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs", "orig_eax",
             "eip", "cs", "eflags", "esp", "ss")


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
        regs, sections = x86_decode.thread(note.desc)
        decoded = sections
    elif machine == elf.EM_AARCH64 and elfclass == 64:
        decoded = decode_note(path, note, arm64_decode.prstatus)
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
        thread["xcr0"] = xcr0_from_linux_xstate(note.desc)
        sections["fpu"] = decode_note(path, note, x86_decode.xsave, thread["xcr0"])
    elif machine == elf.EM_X86_64 and key == (N.OWNER_CORE, N.NT_FPREGSET) \
            and "fpu" not in sections:
        sections["fpu"] = decode_note(path, note, x86_decode.xsave, XCR0_LEGACY)
        sections["fpu"].update(xcr0=None, xstate_bv=None)     # a bare FXSAVE image holds neither
    elif machine == elf.EM_AARCH64 and key == (N.OWNER_CORE, N.NT_PRFPREG):
        sections["fpu"] = decode_note(path, note, arm64_decode.fpsimd)
    elif machine == elf.EM_AARCH64 and note.owner == N.OWNER_LINUX and note.type in ARM_NOTES:
        sections.setdefault("arm", {})[note.type_name] = decode_note(
            path, note, arm64_decode.arm_note, note.type_name)
    elif note.owner in (N.OWNER_CORE, N.OWNER_LINUX) and note.type == N.NT_SIGINFO:
        sections["siginfo"] = decode_note(path, note, linux.siginfo)
    elif key == (N.OWNER_KVMSNAP, N.KVMSNAP_ARM64_REGS):
        sections["sysregs"] = arm64_decode.one_regs(payload(path, note, N.KvmsnapArm64Regs).regs)


def summarize(image: ElfCore) -> dict:
    path = image.path
    machine = image.ehdr.e_machine
    arch = elf.MACHINE_NAMES.get(machine, f"e_machine {machine}")
    threads, qemu, process, vmcoreinfo, arm_devices, device_note = [], [], {}, None, {}, None
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
            process[PROCESS_NOTES[note.type]] = decode_note(path, note, decoder)
        elif key == (N.OWNER_VMCOREINFO, N.NT_VMCOREINFO):
            vmcoreinfo = linux.vmcoreinfo(note.desc)
        elif machine == elf.EM_AARCH64 and note.owner == N.OWNER_KVMSNAP and note.type in arm64_notes.DEVICE_NOTES:
            layout, fields = arm64_notes.DEVICE_NOTES[note.type]
            parsed = payload(path, note, layout)
            arm_devices.update({name: bytes(parsed[field]) for name, field in fields.items()})
            device_note = device_note or note
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
        base=None,
        devices=decode_note(path, device_note, lambda _: arm64_devices.summary(arm_devices))
        if {"vgic", "uart"} <= arm_devices.keys() else None,
        process=process or None,
        vmcoreinfo=vmcoreinfo,
        xsave_layout=xsave_layout(image),
        vcpus=[dict(id=t["id"], pid=t["pid"], regs=t["regs"], mp_state=None, tsc_khz=None,
                    apic_base=None, msrs=None, xcr0=t.get("xcr0"), xsave_size=None,
                    sections=t["sections"]) for t in threads],
        memory=memory_list(image.loads),
        notes=note_list(image.notes),
    )


def _guess_producer(image: ElfCore) -> str | None:
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


