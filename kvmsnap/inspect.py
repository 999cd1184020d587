"""``kvmsnap inspect``: describe a core file.

:func:`summarize` decodes (returns plain data, JSON-ready, documented in docs/inspect-json.md);
:func:`render_text` describes that data for humans.  Works for kvmsnap cores (fully validated by
:func:`kvmsnap.corefile.read_core`) and for any ELF core (QEMU dump-guest-memory, gdb gcore, Linux
process cores), parsed with the same bounded ELF reader.
"""
import struct

from kvmsnap import corefile
from kvmsnap import notes as N
from kvmsnap.formats import elf, x86

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")
X86_64_REGS = GPRS + SEGMENTS + ("fs_base", "gs_base") + CONTROL
AARCH64_PRSTATUS_REG_OFFSET = 112     # pr_reg in the aarch64 elf_prstatus: x0..x30, sp, pc, pstate


def summarize(path) -> dict:
    """A JSON-ready description of the core at ``path`` (CoreFormatError if it cannot be read)."""
    image = corefile.parse_elf(path, strict=False)
    first = image.notes[0] if image.notes else None
    if first is not None and (first.owner, first.type) == (N.OWNER_KVMSNAP, N.KVMSNAP_HEADER):
        return _summarize_kvmsnap(corefile.read_core(path))
    return _summarize_foreign(image)


def _note_list(notes) -> list[dict]:
    return [dict(owner=n.owner, type=n.type, type_name=n.type_name, size=n.size, offset=n.offset,
                 vcpu=n.vcpu) for n in notes]


def _memory_list(segments) -> list[dict]:
    return [dict(paddr=s.paddr, vaddr=s.vaddr, size=s.memsz, filesz=s.filesz, offset=s.offset,
                 physical=s.physical, beyond_eof=s.beyond_eof) for s in segments]


def _summarize_kvmsnap(core: corefile.Core) -> dict:
    vcpus = []
    for v in core.vcpus:
        regs = x86.kvm_regs.parse(v.regs)
        sregs = corefile.parse_sregs(v.sregs, v.sregs2)
        values = {name: regs[name] for name in GPRS}
        values.update({name: sregs[name].selector for name in SEGMENTS})
        values.update(fs_base=sregs.fs.base, gs_base=sregs.gs.base,
                      **{name: sregs[name] for name in CONTROL})
        vcpus.append(dict(id=v.index, pid=v.index + 1, regs=values, mp_state=v.mp_state,
                          tsc_khz=v.tsc_khz, apic_base=sregs.apic_base, msrs=len(v.msrs),
                          xcr0=corefile.xcr0_of(v.xcrs), xsave_size=len(v.xsave)))
    uart = x86.UartState.parse(core.uart)
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
        devices=dict(uart={k: v for k, v in uart.items() if not k.startswith("_")}),
        vcpus=vcpus,
        memory=_memory_list(core.segments),
        notes=_note_list(core.notes()),
    )


def _x86_64_prstatus(desc: bytes) -> dict:
    pr = x86.elf_prstatus.parse(desc[:x86.elf_prstatus.sizeof()])
    r = pr.pr_reg
    values = {name: r[name] for name in GPRS if name != "rflags"}
    values["rflags"] = r.eflags
    values.update({name: r[name] for name in SEGMENTS + ("fs_base", "gs_base")})
    return dict(pid=pr.pr_pid, regs=values)


I386_PRSTATUS_REG_OFFSET = 72        # pr_reg in the i386 elf_prstatus (144 bytes)
I386_REGS = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs", "orig_eax",
             "eip", "cs", "eflags", "esp", "ss")


def _i386_prstatus(desc: bytes) -> dict | None:
    if len(desc) < I386_PRSTATUS_REG_OFFSET + 4 * len(I386_REGS):
        return None
    words = struct.unpack_from(f"<{len(I386_REGS)}I", desc, I386_PRSTATUS_REG_OFFSET)
    return dict(pid=struct.unpack_from("<i", desc, 24)[0], regs=dict(zip(I386_REGS, words)))


def _aarch64_prstatus(desc: bytes) -> dict | None:
    end = AARCH64_PRSTATUS_REG_OFFSET + 34 * 8
    if len(desc) < end:
        return None
    words = struct.unpack_from("<34Q", desc, AARCH64_PRSTATUS_REG_OFFSET)
    values = {f"x{i}": words[i] for i in range(31)}
    values.update(sp=words[31], pc=words[32], pstate=words[33])
    return dict(pid=struct.unpack_from("<i", desc, 32)[0], regs=values)


def _summarize_foreign(image: corefile.ElfCore) -> dict:
    machine = image.ehdr.e_machine
    arch = elf.MACHINE_NAMES.get(machine, f"e_machine {machine}")
    threads, qemu = [], []
    for note in image.notes:
        if (note.owner, note.type) == (N.OWNER_CORE, N.NT_PRSTATUS):
            thread = None
            if machine == elf.EM_X86_64 and image.elfclass == 64 \
                    and note.size >= x86.elf_prstatus.sizeof():
                thread = _x86_64_prstatus(note.desc)
            elif machine == elf.EM_AARCH64 and image.elfclass == 64:
                thread = _aarch64_prstatus(note.desc)
            elif machine == elf.EM_386:
                thread = _i386_prstatus(note.desc)
            thread = thread or dict(pid=None, regs={})
            thread["id"] = len(threads)
            note.vcpu = thread["id"]
            threads.append(thread)
        elif (note.owner, note.type) == (N.OWNER_QEMU, N.NT_QEMU_CPUSTATE) \
                and note.size >= x86.QEMUCPUSTATE_SIZE_V1_MIN \
                and machine in (elf.EM_X86_64, elf.EM_386):
            # QEMU writes one QEMUCPUState per CPU, in CPU order, after the NT_PRSTATUS notes.
            note.vcpu = len(qemu)
            qemu.append(x86.QEMUCPUState.parse(note.desc.ljust(x86.QEMUCPUState.sizeof(), b"\0")))
        elif threads and note.owner in (N.OWNER_CORE, N.OWNER_LINUX) \
                and note.type not in (N.NT_PRPSINFO, N.NT_AUXV, N.NT_FILE):
            note.vcpu = threads[-1]["id"]      # register notes follow their thread's NT_PRSTATUS
    for thread, state in zip(threads, qemu):
        thread["regs"].update(cr0=state.cr[0], cr2=state.cr[2], cr3=state.cr[3], cr4=state.cr[4])
    if machine == elf.EM_X86_64:
        for thread in threads:
            for name in X86_64_REGS:
                thread["regs"].setdefault(name, None)
    return dict(
        file=image.path,
        kind="elf-core",
        arch=arch,
        producer=_guess_producer(image),
        format=None,
        host_kernel=None,
        config=None,
        memory_map=None,
        devices=None,
        vcpus=[dict(id=t["id"], pid=t["pid"], regs=t["regs"]) for t in threads],
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
    return None


# =============================================================================================
# Text

def _hex(value) -> str:
    return "-" if value is None else f"0x{value:x}"


def render_text(summary: dict) -> str:
    """The summary as text for humans: header, memory, notes, registers per vCPU."""
    lines = [f"file:         {summary['file']}",
             f"kind:         {summary['kind']}",
             f"architecture: {summary['arch']}",
             f"producer:     {summary['producer'] or 'unknown'}"]
    if summary.get("format"):
        lines.append(f"format:       {summary['format']['major']}.{summary['format']['minor']}")
    if summary.get("host_kernel"):
        lines.append(f"host kernel:  {summary['host_kernel']}")
    if summary.get("config"):
        c = summary["config"]
        lines.append(f"guest:        {c['guest']}  ({c['mem_size'] // (1 << 20)} MiB, "
                     f"{c['vcpus']} vCPUs)")
    lines.append(f"vCPUs:        {len(summary['vcpus'])}")

    if summary.get("memory_map"):
        lines += ["", "Memory slots:", f"  {'slot':>4}  {'guest-physical':>18}  {'size':>12}"]
        for m in summary["memory_map"]:
            lines.append(f"  {m['slot']:>4}  {m['gpa']:#18x}  {m['size']:#12x}")

    lines += ["", "Memory segments (PT_LOAD):",
              f"  {'paddr':>18}  {'vaddr':>18}  {'size':>12}  {'offset':>12}  kind"]
    for m in summary["memory"]:
        kind = "physical" if m["physical"] else ("virtual" if summary["kind"] == "kvmsnap"
                                                 else "")
        if m["beyond_eof"]:
            kind += " (past end of file)"
        lines.append(f"  {m['paddr']:#18x}  {m['vaddr']:#18x}  {m['size']:#12x}  "
                     f"{m['offset']:#12x}  {kind}".rstrip())

    lines += ["", "Notes:", f"  {'owner':<12} {'type':>10}  {'name':<22} {'size':>8}  vcpu"]
    for n in summary["notes"]:
        vcpu = "" if n["vcpu"] is None else str(n["vcpu"])
        lines.append(f"  {n['owner'][:12]:<12} {n['type']:#10x}  {n['type_name']:<22} "
                     f"{n['size']:>8}  {vcpu}".rstrip())

    for v in summary["vcpus"]:
        header = f"vCPU {v['id']}"
        if v.get("pid") is not None:
            header += f" (pid {v['pid']})"
        if v.get("mp_state") is not None:
            header += f", mp_state {v['mp_state']}"
        lines += ["", header + ":"]
        items = list(v["regs"].items())
        for i in range(0, len(items), 3):
            lines.append("  " + "  ".join(f"{name:<8}{_hex(value):>18}"
                                          for name, value in items[i:i + 3]))
    return "\n".join(lines) + "\n"
