"""kvmsnap core files: an ELF64 ET_CORE that gdb, readelf, crash and pyelftools read, and that holds
everything needed to restore the VM.  docs/core-format.md describes every byte.

Layout written by :func:`write_core`::

    Elf64_Ehdr                          64 bytes
    Elf64_Phdr[e_phnum]                 PT_NOTE, virtual PT_LOADs (vaddr order), physical PT_LOADs
    notes                               KVMSNAP_HEADER, VM-wide KVMSNAP notes, then per vCPU:
                                        NT_PRSTATUS, NT_FPREGSET, NT_X86_XSTATE, QEMU, KVMSNAP_*
    zero padding to 4096
    RAM of slot 0, slot 1, ...          page-aligned, sparse (all-zero pages are holes)

:func:`read_core` validates the whole structure (bounded by the file size) before returning a
:class:`Core`; any violation raises :class:`CoreFormatError` naming the file offset.
"""
import bisect
import collections
import contextlib
import ctypes
import io
import os
import struct
from dataclasses import dataclass, field

import construct

from kvmsnap import notes as N
from kvmsnap.errors import KvmsnapError
from kvmsnap import pagewalk
from kvmsnap.formats import elf, x86
from kvmsnap.state import MachineConfig, MemoryRegion, VcpuState, VmState

FORMAT_MAJOR = 1
FORMAT_MINOR = 0

PAGE_SIZE = 4096
ZERO_CHUNK = 2 << 20                 # sparse writing: test 2 MiB chunks, then 4 KiB pages
NOTE_ALIGN = 4                       # Linux cores align notes (and PT_NOTE p_align) to 4
MAX_NOTES_BYTES = 64 << 20           # upper bound on the PT_NOTE segment the reader loads
MAX_VCPUS = 4096
MAX_XSAVE = 1 << 20
MAX_MSRS = 1 << 16
MAX_CPUID = 1 << 12
MAX_VIRTUAL_SEGMENTS = 4096          # guest-virtual PT_LOADs written at most
MAX_PHNUM = elf.PN_XNUM - 1
PF_RWX = elf.PF_R | elf.PF_W | elf.PF_X
MSR_KERNEL_GS_BASE = 0xc0000102

_U64 = (1 << 64) - 1
_ZERO_CHUNK = bytes(ZERO_CHUNK)
_ZERO_PAGE = bytes(PAGE_SIZE)


class CoreFormatError(KvmsnapError):
    """A core file that cannot be trusted: ``str(e) == "<path>: offset 0x<off>: <what>"``, or
    ``"<path>: <what>"`` (``offset`` None) when the file cannot be read at all."""

    def __init__(self, path: str, offset: int | None, what: str):
        self.path = str(path)
        self.offset = offset
        self.what = what
        where = "" if offset is None else f"offset 0x{offset:x}: "
        super().__init__(f"{self.path}: {where}{what}")


class PhysicalAddressError(LookupError):
    """A guest-physical range that the core (or the VM state) does not hold."""


# =============================================================================================
# Writing

@dataclass
class WriteResult:
    path: str
    bytes_written: int           # bytes actually written (headers, notes, non-zero pages)
    size_on_disk: int            # st_blocks * 512 of the final file
    apparent_size: int = 0       # st_size
    virtual_segments: int = 0    # guest-virtual PT_LOADs written
    virtual_truncated: bool = False   # more than MAX_VIRTUAL_SEGMENTS, or the walk ran out


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _pad(data: bytes, to: int = NOTE_ALIGN) -> bytes:
    return data + bytes(_align(len(data), to) - len(data))


def _note(owner: str, n_type: int, desc: bytes) -> bytes:
    """One ELF note: Elf64_Nhdr, NUL-terminated owner padded to 4, descriptor padded to 4."""
    name = owner.encode("ascii") + b"\0"
    nhdr = elf.Elf64_Nhdr.build(dict(n_namesz=len(name), n_descsz=len(desc), n_type=n_type))
    return nhdr + _pad(name) + _pad(desc)


def _expect_len(what: str, data: bytes, size: int):
    if len(data) != size:
        raise ValueError(f"{what}: {len(data)} bytes, expected {size}")


def _check_state(state: VmState):
    """Refuse to write state whose raw structs do not have the kernel sizes."""
    if not state.vcpus:
        raise ValueError("VmState has no vCPUs")
    if len(state.vcpus) > MAX_VCPUS:
        raise ValueError(f"{len(state.vcpus)} vCPUs: at most {MAX_VCPUS} supported")
    for i, v in enumerate(state.vcpus):
        if v.index != i:
            raise ValueError(f"vCPU {i}: index {v.index} (vCPUs must be in index order from 0)")
        _expect_len(f"vCPU {i} regs", v.regs, x86.kvm_regs.sizeof())
        _expect_len(f"vCPU {i} sregs", v.sregs,
                    (x86.kvm_sregs2 if v.sregs2 else x86.kvm_sregs).sizeof())
        if not 576 <= len(v.xsave) <= MAX_XSAVE or len(v.xsave) % 4:
            raise ValueError(f"vCPU {i} xsave: {len(v.xsave)} bytes")
        _expect_len(f"vCPU {i} xcrs", v.xcrs, x86.kvm_xcrs.sizeof())
        _expect_len(f"vCPU {i} lapic", v.lapic, x86.kvm_lapic_state.sizeof())
        _expect_len(f"vCPU {i} debugregs", v.debugregs, x86.kvm_debugregs.sizeof())
        _expect_len(f"vCPU {i} events", v.events, x86.kvm_vcpu_events.sizeof())
        if len(v.cpuid) % x86.kvm_cpuid_entry2.sizeof() or \
                len(v.cpuid) > MAX_CPUID * x86.kvm_cpuid_entry2.sizeof():
            raise ValueError(f"vCPU {i} cpuid: {len(v.cpuid)} bytes, not a kvm_cpuid_entry2 array")
        if len(v.msrs) > MAX_MSRS:
            raise ValueError(f"vCPU {i}: {len(v.msrs)} MSRs, at most {MAX_MSRS}")
    for name, size in (("pic_master", 520), ("pic_slave", 520), ("ioapic", 520),
                       ("pit", x86.kvm_pit_state2.sizeof()), ("clock", x86.kvm_clock_data.sizeof()),
                       ("uart", x86.UartState.sizeof())):
        _expect_len(name, getattr(state, name), size)
    previous_end = -1
    for r in sorted(state.memory, key=lambda r: r.guest_phys_addr):
        if r.size <= 0 or r.size % PAGE_SIZE or r.guest_phys_addr % PAGE_SIZE:
            raise ValueError(f"memory slot {r.slot}: 0x{r.guest_phys_addr:x}+0x{r.size:x} "
                             "is not page-aligned")
        if r.guest_phys_addr < previous_end:
            raise ValueError(f"memory slot {r.slot} overlaps another slot")
        previous_end = r.guest_phys_addr + r.size
        if r.buffer is None or memoryview(r.buffer).nbytes < r.size:
            raise ValueError(f"memory slot {r.slot}: buffer missing or shorter than 0x{r.size:x}")


def _state_reader(memory: list[MemoryRegion]):
    """read_phys over the live buffers of ``memory`` (raises PhysicalAddressError outside RAM)."""
    views = [(r.guest_phys_addr, r.size, memoryview(r.buffer).cast("B")) for r in memory]

    def read_phys(addr: int, length: int) -> bytes:
        for gpa, size, view in views:
            if gpa <= addr and addr + length <= gpa + size:
                return bytes(view[addr - gpa:addr - gpa + length])
        raise PhysicalAddressError(f"0x{addr:x}+0x{length:x} is not in guest RAM")
    return read_phys


def xcr0_of(xcrs: bytes) -> int | None:
    """XCR0 from raw kvm_xcrs, or None when KVM reported no XCR0."""
    parsed = x86.kvm_xcrs.parse(xcrs)
    for entry in parsed.xcrs[:min(parsed.nr_xcrs, x86.KVM_MAX_XCRS)]:
        if entry.xcr == 0:
            return entry.value
    return None


def xstate_size(xcr0: int, cpuid: bytes, limit: int) -> int:
    """Standard-format XSAVE size for the components in ``xcr0`` (what Linux writes in
    NT_X86_XSTATE and what gdb >= 14 matches against its known layouts), capped at ``limit``.

    Component offsets and sizes come from the vCPU's CPUID leaf 0xD sub-leaves when present,
    else from the Intel defaults in :data:`kvmsnap.formats.x86.XFEATURES`.
    """
    leaf_d = {}
    entry_size = x86.kvm_cpuid_entry2.sizeof()
    for i in range(0, len(cpuid) - entry_size + 1, entry_size):
        e = x86.kvm_cpuid_entry2.parse(cpuid[i:i + entry_size])
        if e.function == 0xd and e.index >= 2 and e.eax:
            leaf_d[e.index] = (e.ebx, e.eax)     # (offset, size)
    end = x86.XSAVE_LEGACY_SIZE + x86.XSAVE_HDR_SIZE
    for bit in range(2, 64):
        if xcr0 & (1 << bit):
            offset, size = leaf_d.get(bit) or x86.XFEATURES.get(bit, ("", 0, 0))[1:]
            end = max(end, offset + size)
    return min(end, limit)


def linux_xstate(xsave: bytes, xcr0: int, cpuid: bytes) -> bytes:
    """The NT_X86_XSTATE descriptor: the XSAVE area trimmed to its standard size for ``xcr0``,
    with XCR0 in the software-reserved bytes 464..471 and zeros in 472..511 (as Linux writes it)."""
    area = bytearray(xsave[:xstate_size(xcr0, cpuid, len(xsave))])
    area[x86.XSAVE_XCR0_OFFSET:x86.XSAVE_LEGACY_SIZE] = struct.pack("<Q", xcr0) + bytes(40)
    return bytes(area)


def prstatus(index: int, regs, sregs) -> bytes:
    """NT_PRSTATUS for vCPU ``index`` from parsed kvm_regs and kvm_sregs(2)."""
    pr_reg = {name: getattr(regs, name, 0) for name in x86.USER_REGS}
    pr_reg.update(orig_rax=_U64, eflags=regs.rflags,
                  cs=sregs.cs.selector, ss=sregs.ss.selector, ds=sregs.ds.selector,
                  es=sregs.es.selector, fs=sregs.fs.selector, gs=sregs.gs.selector,
                  fs_base=sregs.fs.base, gs_base=sregs.gs.base)
    tv = dict(tv_sec=0, tv_usec=0)
    return x86.elf_prstatus.build(dict(
        pr_info=dict(si_signo=0, si_code=0, si_errno=0), pr_cursig=0, pr_sigpend=0, pr_sighold=0,
        pr_pid=index + 1, pr_ppid=0, pr_pgrp=0, pr_sid=0,
        pr_utime=tv, pr_stime=tv, pr_cutime=tv, pr_cstime=tv,
        pr_reg=pr_reg, pr_fpvalid=1))


def qemu_cpustate(regs, sregs, kernel_gs_base: int) -> bytes:
    """QEMU's QEMUCPUState (owner "QEMU", type 0) from parsed kvm_regs and kvm_sregs(2)."""
    def seg(s):
        return dict(selector=s.selector, limit=s.limit, flags=x86.qemu_segment_flags(s), pad=0,
                    base=s.base)

    def dtable(d):
        return dict(selector=0, limit=d.limit, flags=0, pad=0, base=d.base)

    fields = {name: getattr(regs, name) for name in
              ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
               "r12", "r13", "r14", "r15", "rip", "rflags")}
    fields.update({name: seg(getattr(sregs, name)) for name in
                   ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr")})
    return x86.QEMUCPUState.build(dict(
        version=x86.QEMUCPUSTATE_VERSION, size=x86.QEMUCPUState.sizeof(), **fields,
        gdt=dtable(sregs.gdt), idt=dtable(sregs.idt),
        cr=[sregs.cr0, 0, sregs.cr2, sregs.cr3, sregs.cr4], kernel_gs_base=kernel_gs_base))


def parse_sregs(raw: bytes, sregs2: bool):
    return (x86.kvm_sregs2 if sregs2 else x86.kvm_sregs).parse(raw)


def _vcpu_notes(v: VcpuState) -> list[bytes]:
    regs = x86.kvm_regs.parse(v.regs)
    sregs = parse_sregs(v.sregs, v.sregs2)
    xcr0 = xcr0_of(v.xcrs)
    if xcr0 is None:
        xcr0 = 0x3          # x87 | SSE: what every x86-64 CPU has
    kernel_gs_base = dict(v.msrs).get(MSR_KERNEL_GS_BASE, 0)
    return [
        # gdb attaches the register notes that follow an NT_PRSTATUS to that thread: it goes first.
        _note(N.OWNER_CORE, N.NT_PRSTATUS, prstatus(v.index, regs, sregs)),
        _note(N.OWNER_CORE, N.NT_FPREGSET, v.xsave[:x86.XSAVE_LEGACY_SIZE]),
        _note(N.OWNER_LINUX, N.NT_X86_XSTATE, linux_xstate(v.xsave, xcr0, v.cpuid)),
        _note(N.OWNER_QEMU, N.NT_QEMU_CPUSTATE, qemu_cpustate(regs, sregs, kernel_gs_base)),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_SREGS, N.KvmsnapSregs.build(dict(
            flags=N.KVMSNAP_SREGS_FLAG_SREGS2 if v.sregs2 else 0, reserved=0, sregs=v.sregs))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_XSAVE,
              N.KvmsnapXsave.build(dict(reserved=0, xsave=v.xsave))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_XCRS, N.KvmsnapXcrs.build(dict(xcrs=v.xcrs))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_LAPIC, N.KvmsnapLapic.build(dict(lapic=v.lapic))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_MSRS, N.KvmsnapMsrs.build(dict(pad=0, entries=[
            dict(index=index, reserved=0, data=value) for index, value in v.msrs]))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_VCPU_EVENTS,
              N.KvmsnapVcpuEvents.build(dict(events=v.events))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_DEBUGREGS,
              N.KvmsnapDebugregs.build(dict(debugregs=v.debugregs))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_MP_STATE,
              N.KvmsnapMpState.build(dict(mp_state=v.mp_state, reserved=0))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_CPUID,
              N.KvmsnapCpuid.build(dict(padding=0, entries=v.cpuid))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_TSC_KHZ,
              N.KvmsnapTscKhz.build(dict(tsc_khz=v.tsc_khz, reserved=0))),
    ]


def virtual_ranges(state: VmState, limit: int = MAX_VIRTUAL_SEGMENTS):
    """Guest-virtual ranges mapped by vCPU 0's page tables that need their own PT_LOAD:
    ``([(vaddr, paddr, size)], truncated)``.

    Identity-mapped ranges are left out (the physical PT_LOADs have p_vaddr = p_paddr), and so
    are mappings of anything that is not RAM (MMIO); ranges are split at slot boundaries.
    ``truncated`` is also True when the page-table walk ran out of its budget (the guest's
    tables are untrusted: see :func:`kvmsnap.pagewalk.walk`).
    """
    v0 = state.vcpus[0]
    sregs = parse_sregs(v0.sregs, v0.sregs2)
    if not pagewalk.paging_enabled(sregs.cr0, sregs.efer):
        return [], False
    mappings, truncated = pagewalk.walk(_state_reader(state.memory), sregs.cr3, sregs.cr4,
                                        sregs.efer)
    slots = sorted((r.guest_phys_addr, r.size) for r in state.memory)
    starts = [gpa for gpa, _ in slots]
    out = []
    for vaddr, paddr, size in mappings:
        if vaddr == paddr:
            continue
        first = max(0, bisect.bisect_right(starts, paddr) - 1)
        for gpa, slot_size in slots[first:bisect.bisect_left(starts, paddr + size)]:
            start, end = max(paddr, gpa), min(paddr + size, gpa + slot_size)
            if start >= end:
                continue
            if len(out) == limit:
                return out, True
            out.append((vaddr + (start - paddr), start, end - start))
    return out, truncated


@dataclass
class _Plan:
    header: bytes                               # Ehdr + Phdrs + notes + padding
    regions: list[tuple[MemoryRegion, int]]     # (region, file offset)
    total_size: int
    virtual_segments: int
    virtual_truncated: bool


def _plan(state: VmState, producer: str, host_kernel: str, max_virtual: int) -> _Plan:
    virtual, truncated = virtual_ranges(state, max_virtual) if max_virtual else ([], False)
    regions = sorted(state.memory, key=lambda r: r.guest_phys_addr)
    phnum = 1 + len(virtual) + len(regions)
    if phnum > MAX_PHNUM:
        raise ValueError(f"{phnum} program headers: at most {MAX_PHNUM}")
    first_physical = 1 + len(virtual)

    vm_notes = [
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_HEADER, N.KvmsnapHeader.build(dict(
            magic=N.KVMSNAP_MAGIC, format_major=FORMAT_MAJOR, format_minor=FORMAT_MINOR,
            arch=N.ARCH_X86_64, nr_vcpus=len(state.vcpus), reserved=0,
            host_kernel=host_kernel, producer=producer))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_CONFIG, N.KvmsnapConfig.build(dict(
            mem_size=state.config.mem_size, vcpus=state.config.vcpus, reserved=0,
            guest=state.config.guest))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_MEMORY_MAP, N.KvmsnapMemoryMap.build(dict(
            reserved=0, regions=[dict(slot=r.slot, flags=0, guest_phys_addr=r.guest_phys_addr,
                                      memory_size=r.size, phdr_index=first_physical + i,
                                      reserved=0) for i, r in enumerate(regions)]))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_IRQCHIP, N.KvmsnapIrqchip.build(dict(
            pic_master=state.pic_master, pic_slave=state.pic_slave, ioapic=state.ioapic))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_PIT, N.KvmsnapPit.build(dict(pit=state.pit))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_CLOCK, N.KvmsnapClock.build(dict(clock=state.clock))),
        _note(N.OWNER_KVMSNAP, N.KVMSNAP_UART, N.KvmsnapUart.build(dict(uart=state.uart))),
    ]
    notes = b"".join(vm_notes + [n for v in state.vcpus for n in _vcpu_notes(v)])
    notes_offset = elf.Elf64_Ehdr.sizeof() + phnum * elf.Elf64_Phdr.sizeof()
    data_offset = _align(notes_offset + len(notes), PAGE_SIZE)

    placed, offset = [], data_offset
    for r in regions:
        placed.append((r, offset))
        offset = _align(offset + r.size, PAGE_SIZE)
    total_size = offset

    def phdr(p_type, p_offset, p_vaddr, p_paddr, size, flags, align):
        return elf.Elf64_Phdr.build(dict(p_type=p_type, p_flags=flags, p_offset=p_offset,
                                         p_vaddr=p_vaddr, p_paddr=p_paddr, p_filesz=size,
                                         p_memsz=size, p_align=align))

    phdrs = [phdr(elf.PT_NOTE, notes_offset, 0, 0, len(notes), elf.PF_R, NOTE_ALIGN)]
    starts = [r.guest_phys_addr for r, _ in placed]
    for vaddr, paddr, size in virtual:      # each inside one slot (virtual_ranges splits them)
        r, r_offset = placed[bisect.bisect_right(starts, paddr) - 1]
        phdrs.append(phdr(elf.PT_LOAD, r_offset + paddr - r.guest_phys_addr, vaddr, paddr, size,
                          PF_RWX, PAGE_SIZE))
    for r, r_offset in placed:
        phdrs.append(phdr(elf.PT_LOAD, r_offset, r.guest_phys_addr, r.guest_phys_addr, r.size,
                          PF_RWX, PAGE_SIZE))

    ehdr = elf.Elf64_Ehdr.build(dict(
        e_ident=dict(EI_MAG=elf.ELFMAG, EI_CLASS=elf.ELFCLASS64, EI_DATA=elf.ELFDATA2LSB,
                     EI_VERSION=elf.EV_CURRENT, EI_OSABI=elf.ELFOSABI_NONE, EI_ABIVERSION=0,
                     EI_PAD=bytes(7)),
        e_type=elf.ET_CORE, e_machine=elf.EM_X86_64, e_version=elf.EV_CURRENT, e_entry=0,
        e_phoff=elf.Elf64_Ehdr.sizeof(), e_shoff=0, e_flags=0, e_ehsize=elf.Elf64_Ehdr.sizeof(),
        e_phentsize=elf.Elf64_Phdr.sizeof(), e_phnum=phnum, e_shentsize=0, e_shnum=0,
        e_shstrndx=0))
    header = ehdr + b"".join(phdrs) + notes
    return _Plan(header, placed, total_size, len(virtual), truncated)


def _pwrite_all(fd: int, data, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


_PRESENT_OR_SWAPPED = bytes((b & 0xc0) for b in range(256))   # pagemap bits 62, 63 (byte 7)


def _untouched_pages(buffer, size: int) -> bytes | None:
    """For a buffer that is an anonymous private mapping (guest RAM from mmap(-1, ...)): one byte
    per 4 KiB page, zero when the page was never touched (neither present nor swapped out, per
    /proc/self/pagemap), so it reads as zeros and need not be read at all.  None when that cannot
    be known (not page-aligned, read-only, file- or memfd-backed, no /proc)."""
    try:
        anchor = ctypes.c_char.from_buffer(buffer)
    except (TypeError, ValueError, BufferError):
        return None
    try:
        start = ctypes.addressof(anchor)
    finally:
        del anchor
    if start % PAGE_SIZE or size % PAGE_SIZE:
        return None
    end = start + size
    try:
        with open("/proc/self/maps") as maps:
            covered = start
            for line in maps:
                fields = line.split()
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if hi <= covered or lo > covered:
                    continue
                anonymous = fields[4] == "0" and (len(fields) < 6 or fields[5] == "[heap]")
                if fields[1][3] != "p" or not anonymous:
                    return None
                covered = hi
                if covered >= end:
                    break
            if covered < end:
                return None
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(start // PAGE_SIZE * 8)
            entries = pagemap.read(size // PAGE_SIZE * 8)
    except OSError:
        return None
    if len(entries) != size // PAGE_SIZE * 8:
        return None
    return entries[7::8].translate(_PRESENT_OR_SWAPPED)


def _write_sparse(fd: int, plan: _Plan, progress) -> int:
    """Write headers and every non-zero page; zero pages stay holes.  Returns bytes written.

    RAM is scanned in 2 MiB chunks, then 4 KiB pages; pages of anonymous memory that were never
    touched are known to be zero without reading them (see _untouched_pages)."""
    written = _pwrite_all(fd, plan.header, 0)
    total = sum(r.size for r, _ in plan.regions)
    done = 0
    chunk = bytearray(ZERO_CHUNK)
    pages_per_chunk = ZERO_CHUNK // PAGE_SIZE
    for region, file_offset in plan.regions:
        view = memoryview(region.buffer).cast("B")
        touched = _untouched_pages(region.buffer, region.size)
        for start in range(0, region.size, ZERO_CHUNK):
            length = min(ZERO_CHUNK, region.size - start)
            first_page = start // PAGE_SIZE
            live = None if touched is None else \
                touched[first_page:first_page + pages_per_chunk]
            if live is None or live.count(0) != len(live):
                data = memoryview(chunk)[:length]
                data[:] = view[start:start + length]
                if data != _ZERO_CHUNK[:length]:
                    run_start = None
                    for page in range(0, length + PAGE_SIZE, PAGE_SIZE):
                        zero = page >= length or (live is not None and not live[page // PAGE_SIZE]) \
                            or data[page:page + PAGE_SIZE] == _ZERO_PAGE
                        if not zero and run_start is None:
                            run_start = page
                        elif zero and run_start is not None:
                            written += _pwrite_all(fd, data[run_start:page],
                                                   file_offset + start + run_start)
                            run_start = None
            done += length
            if progress is not None:
                progress(done, total)
    os.ftruncate(fd, plan.total_size)
    return written


def write_core(state: VmState, path, *, producer: str, host_kernel: str, progress=None,
               max_virtual_segments: int = MAX_VIRTUAL_SEGMENTS) -> WriteResult:
    """Write ``state`` as a kvmsnap core at ``path``, atomically.

    The file is written as ``<dir>/.<name>.tmp-<pid>``, fsynced, renamed over ``path`` and the
    directory fsynced.  On any exception (including one raised by ``progress(done, total)``) the
    temporary file is removed and the exception re-raised: ``path`` is never left partial.
    """
    path = os.fspath(path)
    _check_state(state)
    plan = _plan(state, producer, host_kernel, max_virtual_segments)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            written = _write_sparse(fd, plan, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    st = os.stat(path)
    return WriteResult(path=path, bytes_written=written, size_on_disk=st.st_blocks * 512,
                       apparent_size=st.st_size, virtual_segments=plan.virtual_segments,
                       virtual_truncated=plan.virtual_truncated)


# =============================================================================================
# Reading: generic, bounded ELF core parsing (also used by kvmsnap.inspect for foreign cores)

@dataclass
class Segment:
    """One PT_LOAD."""
    index: int             # program header index
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int
    physical: bool = False  # kvmsnap cores: holds a memory slot (else a guest-virtual alias)
    beyond_eof: bool = False   # foreign cores only: file data extends past the end of the file


@dataclass
class Note:
    owner: str
    type: int
    type_name: str
    offset: int            # file offset of the note header (Elf64_Nhdr)
    size: int              # n_descsz
    desc: bytes = field(repr=False)
    vcpu: int | None = None
    desc_offset: int = 0


@dataclass
class ElfCore:
    """The structure of an ELF core file, validated against the file size."""
    path: str
    file_size: int
    elfclass: int
    ehdr: object
    phdrs: list            # (file offset of the phdr, parsed phdr)
    loads: list[Segment]
    notes: list[Note]


def _offsets(struct_: construct.Struct) -> dict[str, int]:
    offsets, position = {}, 0
    for sub in struct_.subcons:
        if sub.name:
            offsets[sub.name] = position
        position += sub.sizeof()
    return offsets


_EHDR_OFFSETS = {64: _offsets(elf.Elf64_Ehdr), 32: _offsets(elf.Elf32_Ehdr)}
_PHDR_OFFSETS = {64: _offsets(elf.Elf64_Phdr), 32: _offsets(elf.Elf32_Phdr)}


def _row_parser(name: str, struct_: construct.Struct):
    """A parser of ``struct_`` (integer fields only) into a named tuple: the same layout, derived
    from the construct declaration, for tables of up to 65534 entries (construct parses ~100 times
    slower)."""
    names = [sub.name for sub in struct_.subcons]
    layout = struct.Struct("<" + "".join(sub.subcon.fmtstr.lstrip("<") for sub in struct_.subcons))
    assert layout.size == struct_.sizeof(), struct_
    row = collections.namedtuple(name, names)
    return lambda data: row._make(layout.unpack(data))


_PHDR_PARSE = {64: _row_parser("Elf64_Phdr", elf.Elf64_Phdr),
               32: _row_parser("Elf32_Phdr", elf.Elf32_Phdr)}
_NHDR_PARSE = _row_parser("Elf64_Nhdr", elf.Elf64_Nhdr)
_NHDR_SIZE = elf.Elf64_Nhdr.sizeof()


def _pread(f, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def parse_elf(path, *, strict: bool = True) -> ElfCore:
    """Parse and validate the ELF header, program headers and notes of a core file.

    Everything is bounded by the file size: tables and notes must lie inside the file, and the
    notes loaded are capped at MAX_NOTES_BYTES.  With ``strict`` (kvmsnap cores) e_ehsize must be
    exact and PT_LOAD file ranges must lie inside the file; otherwise (foreign cores) e_ehsize is
    not checked and such segments are marked ``beyond_eof``.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CoreFormatError(path, None, f"cannot open: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size

        def fail(offset, what):
            raise CoreFormatError(path, offset, what)

        ident = _pread(f, 0, elf.EI_NIDENT)
        if ident[:4] != elf.ELFMAG[:len(ident)] or (len(ident) >= 4 and ident[:4] != elf.ELFMAG):
            fail(0, "not an ELF file (bad magic)")
        if len(ident) < elf.EI_NIDENT:
            fail(0, f"file too short for an ELF header ({size} bytes)")
        id_ = elf.e_ident.parse(ident)
        if id_.EI_CLASS not in (elf.ELFCLASS32, elf.ELFCLASS64):
            fail(4, f"EI_CLASS {id_.EI_CLASS} is neither ELFCLASS32 nor ELFCLASS64")
        if id_.EI_DATA != elf.ELFDATA2LSB:
            fail(5, f"EI_DATA {id_.EI_DATA}: only little-endian (ELFDATA2LSB) cores are supported")
        if id_.EI_VERSION != elf.EV_CURRENT:
            fail(6, f"EI_VERSION {id_.EI_VERSION} is not EV_CURRENT")
        bits = 64 if id_.EI_CLASS == elf.ELFCLASS64 else 32
        Ehdr, Phdr = (elf.Elf64_Ehdr, elf.Elf64_Phdr) if bits == 64 else (elf.Elf32_Ehdr,
                                                                          elf.Elf32_Phdr)
        eo = _EHDR_OFFSETS[bits]
        raw = _pread(f, 0, Ehdr.sizeof())
        if len(raw) < Ehdr.sizeof():
            fail(0, f"file too short for an ELF{bits} header ({size} bytes)")
        ehdr = Ehdr.parse(raw)
        if ehdr.e_type != elf.ET_CORE:
            fail(eo["e_type"], f"e_type {ehdr.e_type} is not ET_CORE (4): not a core file")
        if ehdr.e_version != elf.EV_CURRENT:
            fail(eo["e_version"], f"e_version {ehdr.e_version} is not EV_CURRENT")
        if strict and ehdr.e_ehsize != Ehdr.sizeof():   # QEMU's dump-guest-memory writes 8
            fail(eo["e_ehsize"], f"e_ehsize {ehdr.e_ehsize}, expected {Ehdr.sizeof()}")
        if ehdr.e_phentsize != Phdr.sizeof():
            fail(eo["e_phentsize"], f"e_phentsize {ehdr.e_phentsize}, expected {Phdr.sizeof()}")
        if ehdr.e_phnum == 0:
            fail(eo["e_phnum"], "e_phnum is 0: no program headers")
        if ehdr.e_phnum == elf.PN_XNUM:
            fail(eo["e_phnum"], "e_phnum is PN_XNUM (extended numbering): not supported")
        table_end = ehdr.e_phoff + ehdr.e_phnum * Phdr.sizeof()
        if ehdr.e_phoff < Ehdr.sizeof() or table_end > size:
            fail(eo["e_phoff"], f"program header table 0x{ehdr.e_phoff:x}..0x{table_end:x} "
                                f"is not inside the file (size 0x{size:x})")
        if ehdr.e_shnum:
            shentsize = 64 if bits == 64 else 40
            if ehdr.e_shentsize != shentsize:
                fail(eo["e_shentsize"], f"e_shentsize {ehdr.e_shentsize}, expected {shentsize}")
            sh_end = ehdr.e_shoff + ehdr.e_shnum * shentsize
            if sh_end > size:
                fail(eo["e_shoff"], f"section header table ends at 0x{sh_end:x}, "
                                    f"past the end of the file (0x{size:x})")
            if ehdr.e_shstrndx >= ehdr.e_shnum:
                fail(eo["e_shstrndx"], f"e_shstrndx {ehdr.e_shstrndx} >= e_shnum {ehdr.e_shnum}")

        po = _PHDR_OFFSETS[bits]
        table = _pread(f, ehdr.e_phoff, table_end - ehdr.e_phoff)
        phdrs, loads, notes = [], [], []
        notes_bytes = 0
        entsize, parse_phdr = Phdr.sizeof(), _PHDR_PARSE[bits]
        for i in range(ehdr.e_phnum):
            at = ehdr.e_phoff + i * entsize
            p = parse_phdr(table[i * entsize:(i + 1) * entsize])
            phdrs.append((at, p))
            end = p.p_offset + p.p_filesz
            if p.p_type == elf.PT_LOAD:
                if p.p_memsz < p.p_filesz:
                    fail(at + po["p_memsz"], f"PT_LOAD {i}: p_memsz 0x{p.p_memsz:x} < "
                                             f"p_filesz 0x{p.p_filesz:x}")
                if p.p_paddr + p.p_memsz > 1 << bits or p.p_vaddr + p.p_memsz > 1 << bits:
                    fail(at + po["p_vaddr"], f"PT_LOAD {i}: address range wraps around")
                beyond = end > size
                if beyond and strict:
                    fail(at + po["p_offset"], f"PT_LOAD {i}: file range 0x{p.p_offset:x}..0x"
                                              f"{end:x} is past the end of the file (0x{size:x})")
                loads.append(Segment(i, p.p_paddr, p.p_vaddr, p.p_offset, p.p_filesz, p.p_memsz,
                                     p.p_flags, beyond_eof=beyond))
            elif p.p_type == elf.PT_NOTE:
                if end > size:
                    fail(at + po["p_offset"], f"PT_NOTE {i}: 0x{p.p_offset:x}..0x{end:x} is "
                                              f"past the end of the file (0x{size:x})")
                notes_bytes += p.p_filesz
                if notes_bytes > MAX_NOTES_BYTES:
                    fail(at + po["p_filesz"], f"notes larger than {MAX_NOTES_BYTES} bytes")
                align = 8 if p.p_align == 8 else 4
                notes.extend(_parse_notes(path, _pread(f, p.p_offset, p.p_filesz), p.p_offset,
                                          align))
        return ElfCore(path, size, bits, ehdr, phdrs, loads, notes)


def _parse_notes(path: str, data: bytes, base: int, align: int) -> list[Note]:
    out, pos = [], 0
    while pos < len(data):
        at = base + pos
        if len(data) - pos < _NHDR_SIZE:
            raise CoreFormatError(path, at, f"{len(data) - pos} stray bytes at the end of "
                                            "PT_NOTE (shorter than a note header)")
        h = _NHDR_PARSE(data[pos:pos + _NHDR_SIZE])
        name_at = pos + _NHDR_SIZE
        desc_at = name_at + _align(h.n_namesz, align)
        end = desc_at + _align(h.n_descsz, align)
        if desc_at > len(data) or desc_at + h.n_descsz > len(data):
            raise CoreFormatError(path, at, f"note (namesz {h.n_namesz}, descsz {h.n_descsz}) "
                                            f"extends past the end of PT_NOTE")
        owner = data[name_at:name_at + h.n_namesz].split(b"\0", 1)[0].decode("ascii", "replace")
        desc = data[desc_at:desc_at + h.n_descsz]
        out.append(Note(owner, h.n_type, N.type_name(owner, h.n_type), at, h.n_descsz, desc,
                        desc_offset=base + desc_at))
        pos = min(end, len(data))
    return out


# =============================================================================================
# Reading kvmsnap cores

@dataclass
class Header:
    major: int
    minor: int
    arch: int
    vcpus: int
    host_kernel: str
    producer: str

    @property
    def arch_name(self) -> str:
        return N.ARCH_NAMES.get(self.arch, f"unknown ({self.arch})")


def payload(path: str, note: Note, layout: construct.Construct):
    """Decode a private payload: check ``version``/``size``, refuse a newer major, ignore bytes
    past the known layout of a newer minor."""
    desc = note.desc
    name = note.type_name
    if len(desc) < 8:
        raise CoreFormatError(path, note.desc_offset, f"{name}: {len(desc)}-byte payload is "
                                                      "shorter than its version/size words")
    version, size = struct.unpack_from("<II", desc)
    major, minor = N.version_split(version)
    if major > N.NOTE_VERSION_MAJOR or major == 0:
        raise CoreFormatError(path, note.desc_offset, f"{name}: payload version {major}.{minor}"
                                                      f" not supported (this kvmsnap reads "
                                                      f"{N.NOTE_VERSION_MAJOR}.x)")
    if not N.MIN_SIZES.get(note.type, 8) <= size <= len(desc):
        raise CoreFormatError(path, note.desc_offset + 4, f"{name}: payload size {size} is out "
                                                          f"of range (descriptor {len(desc)})")
    stream = io.BytesIO(desc[:size])
    try:
        parsed = layout.parse_stream(stream)
    except (construct.ConstructError, UnicodeDecodeError) as e:
        what = str(e).splitlines()[-1] if str(e) else type(e).__name__
        raise CoreFormatError(path, note.desc_offset, f"{name}: malformed payload: {what}") \
            from None
    if minor <= N.NOTE_VERSION_MINOR and stream.tell() != size:
        raise CoreFormatError(path, note.desc_offset + 4, f"{name}: payload size {size} does not "
                                                          f"match its contents ({stream.tell()})")
    return parsed


class Core:
    """A validated kvmsnap core file (see :func:`read_core`)."""

    def __init__(self, image: ElfCore):
        self.path = image.path
        self.elf = image
        self.header: Header
        self.config: MachineConfig
        self.vcpus: list[VcpuState] = []
        self.memory_map: list[tuple[int, int, int]] = []
        self.segments: list[Segment] = image.loads
        self.pic_master = self.pic_slave = self.ioapic = b""
        self.pit = self.clock = self.uart = b""
        self._notes: list[Note] = image.notes
        self._slot_segments: dict[int, Segment] = {}
        self._physical: list[Segment] = []      # the memory slots' PT_LOADs, by paddr
        self._physical_starts: list[int] = []   # their paddrs, for bisect
        self._file = None

    # -- API ----------------------------------------------------------------------------------
    def vm_state(self) -> VmState:
        """The saved VmState; memory regions have ``buffer=None`` (map them with
        :meth:`segment_for_region`)."""
        return VmState(
            config=MachineConfig(self.config.guest, self.config.mem_size, self.config.vcpus),
            vcpus=list(self.vcpus), pic_master=self.pic_master, pic_slave=self.pic_slave,
            ioapic=self.ioapic, pit=self.pit, clock=self.clock, uart=self.uart,
            memory=[MemoryRegion(slot, gpa, size) for slot, gpa, size in self.memory_map])

    def segment_for_region(self, region) -> Segment:
        """The physical PT_LOAD holding a memory slot (a MemoryRegion or a slot number): its
        ``offset`` is page-aligned and ``filesz`` equals the slot size, so the slot can be
        mmap()ed from the file (MAP_PRIVATE) at ``offset``."""
        slot = region if isinstance(region, int) else region.slot
        try:
            return self._slot_segments[slot]
        except KeyError:
            raise KeyError(f"{self.path}: no memory slot {slot}") from None

    def read_phys(self, addr: int, length: int) -> bytes:
        """Guest-physical bytes; PhysicalAddressError if any byte is not RAM in the core."""
        out = bytearray()
        while length > 0:
            seg = self._physical_at(addr)
            if seg is None:
                raise PhysicalAddressError(f"{self.path}: guest-physical 0x{addr:x} is not in "
                                           "the core")
            n = min(length, seg.paddr + seg.filesz - addr)
            if self._file is None:
                self._file = open(self.path, "rb")
            data = _pread(self._file, seg.offset + addr - seg.paddr, n)
            if len(data) != n:
                raise PhysicalAddressError(f"{self.path}: short read at 0x{addr:x} "
                                           "(file changed?)")
            out += data
            addr += n
            length -= n
        return bytes(out)

    def notes(self) -> list[Note]:
        return list(self._notes)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _physical_at(self, addr: int) -> Segment | None:
        """The physical segment holding guest-physical ``addr`` (they never overlap)."""
        i = bisect.bisect_right(self._physical_starts, addr) - 1
        if i >= 0 and addr < self._physical[i].paddr + self._physical[i].filesz:
            return self._physical[i]
        return None


def read_core(path) -> Core:
    """Open and validate a kvmsnap core; CoreFormatError (one line, with the offset) otherwise."""
    image = parse_elf(path, strict=True)
    path = image.path
    core = Core(image)

    def fail(offset, what):
        raise CoreFormatError(path, offset, what)

    eo = _EHDR_OFFSETS[64]
    if image.elfclass != 64:
        fail(4, "kvmsnap cores are ELFCLASS64")
    ehdr = image.ehdr
    if ehdr.e_ident.EI_OSABI not in (elf.ELFOSABI_NONE, elf.ELFOSABI_LINUX):
        fail(7, f"EI_OSABI {ehdr.e_ident.EI_OSABI} is not ELFOSABI_NONE")
    if ehdr.e_machine != elf.EM_X86_64:
        fail(eo["e_machine"], f"e_machine {ehdr.e_machine} is not EM_X86_64 (62)")
    if ehdr.e_flags:
        fail(eo["e_flags"], f"e_flags 0x{ehdr.e_flags:x} is not 0")

    po = _PHDR_OFFSETS[64]
    first_at, first = image.phdrs[0]
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

    notes = image.notes
    if not notes or (notes[0].owner, notes[0].type) != (N.OWNER_KVMSNAP, N.KVMSNAP_HEADER):
        fail(first.p_offset, "first note is not KVMSNAP_HEADER: not a kvmsnap core")
    h = payload(path, notes[0], N.KvmsnapHeader)
    if h.magic != N.KVMSNAP_MAGIC:
        fail(notes[0].desc_offset + 8, f"bad KVMSNAP_HEADER magic {bytes(h.magic)!r}")
    if h.format_major != FORMAT_MAJOR:
        fail(notes[0].desc_offset + 16, f"format {h.format_major}.{h.format_minor} is not "
                                        f"supported (this kvmsnap reads {FORMAT_MAJOR}.x)")
    if h.arch != N.ARCH_X86_64:
        fail(notes[0].desc_offset + 20, f"architecture {N.ARCH_NAMES.get(h.arch, h.arch)} "
                                        "is not supported (x86_64 only)")
    if not 1 <= h.nr_vcpus <= MAX_VCPUS:
        fail(notes[0].desc_offset + 24, f"nr_vcpus {h.nr_vcpus} out of range 1..{MAX_VCPUS}")
    core.header = Header(h.format_major, h.format_minor, h.arch, h.nr_vcpus, h.host_kernel,
                         h.producer)

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
    for n_type in N.VM_NOTES:
        if n_type != N.KVMSNAP_HEADER and n_type not in vm:
            fail(first.p_offset, f"missing {N.type_name(N.OWNER_KVMSNAP, n_type)} note")
    if len(sets) != h.nr_vcpus:
        fail(first.p_offset, f"KVMSNAP_HEADER says {h.nr_vcpus} vCPUs but the notes hold "
                             f"{len(sets)} NT_PRSTATUS")
    for index, notes_of in enumerate(sets):
        for key in N.VCPU_NOTES:
            if key not in notes_of:
                at = notes_of[(N.OWNER_CORE, N.NT_PRSTATUS)].offset
                fail(at, f"vCPU {index}: missing {N.type_name(*key)} note")
        core.vcpus.append(_read_vcpu(path, index, notes_of))

    # Restore builds the machine from KVMSNAP_CONFIG: it must describe exactly what the file holds.
    config_note = vm[N.KVMSNAP_CONFIG]
    c = payload(path, config_note, N.KvmsnapConfig)
    if c.vcpus != h.nr_vcpus:
        fail(config_note.desc_offset + 16, f"KVMSNAP_CONFIG says {c.vcpus} vCPUs but the core "
                                           f"holds {h.nr_vcpus}")
    core.config = MachineConfig(guest=c.guest, mem_size=c.mem_size, vcpus=c.vcpus)
    irq = payload(path, vm[N.KVMSNAP_IRQCHIP], N.KvmsnapIrqchip)
    core.pic_master, core.pic_slave, core.ioapic = (bytes(irq.pic_master), bytes(irq.pic_slave),
                                                    bytes(irq.ioapic))
    core.pit = bytes(payload(path, vm[N.KVMSNAP_PIT], N.KvmsnapPit).pit)
    core.clock = bytes(payload(path, vm[N.KVMSNAP_CLOCK], N.KvmsnapClock).clock)
    core.uart = bytes(payload(path, vm[N.KVMSNAP_UART], N.KvmsnapUart).uart)
    _read_memory_map(core, vm[N.KVMSNAP_MEMORY_MAP])
    slots_size = sum(size for _, _, size in core.memory_map)
    if c.mem_size != slots_size:
        fail(config_note.desc_offset + 8, f"KVMSNAP_CONFIG mem_size 0x{c.mem_size:x} is not the "
                                          f"size of the memory slots (0x{slots_size:x})")
    return core


def _read_memory_map(core: Core, note: Note):
    path = core.path
    mm = payload(path, note, N.KvmsnapMemoryMap)
    by_index = {s.index: s for s in core.segments}
    entry_size = N.kvmsnap_memory_region.sizeof()
    slots = set()
    for i, r in enumerate(mm.regions):
        at = note.desc_offset + 16 + i * entry_size
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
        slots.add(r.slot)
        seg.physical = True
        core._slot_segments[r.slot] = seg
        core.memory_map.append((r.slot, r.guest_phys_addr, r.memory_size))
    physical = sorted(core._slot_segments.values(), key=lambda s: s.paddr)
    for a, b in zip(physical, physical[1:]):
        if b.paddr < a.paddr + a.filesz:
            raise CoreFormatError(path, core.elf.phdrs[b.index][0],
                                  f"PT_LOAD {b.index} (0x{b.paddr:x}) overlaps the physical "
                                  f"range of PT_LOAD {a.index}")
    core._physical = physical
    core._physical_starts = [s.paddr for s in physical]
    for seg in core.segments:
        if seg.physical:
            continue
        home = core._physical_at(seg.paddr)
        if home is None or seg.paddr + seg.filesz > home.paddr + home.filesz \
                or seg.offset - home.offset != seg.paddr - home.paddr:
            raise CoreFormatError(path, core.elf.phdrs[seg.index][0],
                                  f"PT_LOAD {seg.index} (virtual 0x{seg.vaddr:x}) is not an "
                                  "alias of a memory slot's bytes")


def _read_vcpu(path: str, index: int, notes_of: dict) -> VcpuState:
    def raw(key, size=None):
        note = notes_of[key]
        if size is not None and note.size < size:
            raise CoreFormatError(path, note.offset, f"vCPU {index}: {note.type_name} is "
                                                     f"{note.size} bytes, expected {size}")
        return note

    pr_note = raw((N.OWNER_CORE, N.NT_PRSTATUS), x86.elf_prstatus.sizeof())
    pr = x86.elf_prstatus.parse(pr_note.desc)
    if pr.pr_pid != index + 1:
        raise CoreFormatError(path, pr_note.desc_offset + 32, f"vCPU {index}: NT_PRSTATUS pr_pid "
                                                              f"{pr.pr_pid}, expected {index + 1}")
    raw((N.OWNER_CORE, N.NT_FPREGSET), x86.user_fpregs_struct.sizeof())
    raw((N.OWNER_LINUX, N.NT_X86_XSTATE), x86.XSAVE_LEGACY_SIZE + x86.XSAVE_HDR_SIZE)
    raw((N.OWNER_QEMU, N.NT_QEMU_CPUSTATE), x86.QEMUCPUSTATE_SIZE_V1_MIN)
    regs = x86.kvm_regs.build({name: pr.pr_reg[name if name != "rflags" else "eflags"]
                               for name in (s.name for s in x86.kvm_regs.subcons)})

    def private(n_type, layout):
        return payload(path, notes_of[(N.OWNER_KVMSNAP, n_type)], layout)

    sregs = private(N.KVMSNAP_SREGS, N.KvmsnapSregs)
    xsave = private(N.KVMSNAP_XSAVE, N.KvmsnapXsave)
    if not 576 <= xsave.length <= MAX_XSAVE:
        raise CoreFormatError(path, notes_of[(N.OWNER_KVMSNAP, N.KVMSNAP_XSAVE)].desc_offset + 8,
                              f"vCPU {index}: XSAVE area of {xsave.length} bytes")
    msrs = private(N.KVMSNAP_MSRS, N.KvmsnapMsrs)
    cpuid = private(N.KVMSNAP_CPUID, N.KvmsnapCpuid)
    return VcpuState(
        index=index,
        mp_state=private(N.KVMSNAP_MP_STATE, N.KvmsnapMpState).mp_state,
        regs=regs,
        sregs=bytes(sregs.sregs),
        sregs2=bool(sregs.flags & N.KVMSNAP_SREGS_FLAG_SREGS2),
        xsave=bytes(xsave.xsave),
        xcrs=bytes(private(N.KVMSNAP_XCRS, N.KvmsnapXcrs).xcrs),
        lapic=bytes(private(N.KVMSNAP_LAPIC, N.KvmsnapLapic).lapic),
        msrs=[(e.index, e.data) for e in msrs.entries],
        debugregs=bytes(private(N.KVMSNAP_DEBUGREGS, N.KvmsnapDebugregs).debugregs),
        cpuid=bytes(cpuid.entries),
        tsc_khz=private(N.KVMSNAP_TSC_KHZ, N.KvmsnapTscKhz).tsc_khz,
        events=bytes(private(N.KVMSNAP_VCPU_EVENTS, N.KvmsnapVcpuEvents).events),
    )
