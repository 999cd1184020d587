"""x86-64 vCPU state decoded: registers and their bits, segments, descriptor tables, debug
registers, the XSAVE area by component, MSRs, CPUID leaves, pending events and MP state."""
import struct

from kvmsnap.arch.x86_64 import cpuid as cpuid_table
from kvmsnap.arch.x86_64 import xsave as xsave_facts
from kvmsnap.arch.x86_64.xsave import XCR0_LEGACY
from kvmsnap.decode.bits import DecodeError, bitreg, field, flag_names, parse, plain, u64s, wide
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.arch.x86_64.msrs import MSR_NAMES

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip")
SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")

RFLAGS = {0: "CF", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF", 11: "OF",
          14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF", 20: "VIP", 21: "ID"}
CR0 = {0: "PE", 1: "MP", 2: "EM", 3: "TS", 4: "ET", 5: "NE", 16: "WP", 18: "AM", 29: "NW",
       30: "CD", 31: "PG"}
CR4 = {0: "VME", 1: "PVI", 2: "TSD", 3: "DE", 4: "PSE", 5: "PAE", 6: "MCE", 7: "PGE", 8: "PCE",
       9: "OSFXSR", 10: "OSXMMEXCPT", 11: "UMIP", 12: "LA57", 13: "VMXE", 14: "SMXE",
       16: "FSGSBASE", 17: "PCIDE", 18: "OSXSAVE", 19: "KL", 20: "SMEP", 21: "SMAP", 22: "PKE",
       23: "CET", 24: "PKS", 25: "UINTR", 28: "LAM_SUP"}
EFER = {0: "SCE", 8: "LME", 10: "LMA", 11: "NXE", 12: "SVME", 13: "LMSLE", 14: "FFXSR",
        15: "TCE", 21: "AUTOIBRS"}
XCR0 = {bit: name for bit, (name, _, _) in x86.XFEATURES.items()} | {8: "pt", 10: "pasid",
                                                                      11: "cet_u", 12: "cet_s"}
APIC_BASE = {8: "BSP", 10: "EXTD (x2APIC)", 11: "EN"}
DR6 = {0: "B0", 1: "B1", 2: "B2", 3: "B3", 11: "BLD", 13: "BD", 14: "BS", 15: "BT", 16: "RTM"}
DR7 = {8: "LE", 9: "GE", 11: "RTM", 13: "GD"}
DR7_CONDITION = {0: "execute", 1: "write", 2: "io", 3: "read/write"}
DR7_LENGTH = {0: 1, 1: 2, 2: 8, 3: 4}
MXCSR = {0: "IE", 1: "DE", 2: "ZE", 3: "OE", 4: "UE", 5: "PE", 6: "DAZ", 7: "IM", 8: "DM",
         9: "ZM", 10: "OM", 11: "UM", 12: "PM", 15: "FZ"}
FCW = {0: "IM", 1: "DM", 2: "ZM", 3: "OM", 4: "UM", 5: "PM", 12: "X"}
FSW = {0: "IE", 1: "DE", 2: "ZE", 3: "OE", 4: "UE", 5: "PE", 6: "SF", 7: "ES", 8: "C0", 9: "C1",
       10: "C2", 14: "C3", 15: "B"}
ROUNDING = {0: "nearest", 1: "down", 2: "up", 3: "toward zero"}
PRECISION = {0: "single", 1: "reserved", 2: "double", 3: "extended"}
MP_STATES = {0: "RUNNABLE", 1: "UNINITIALIZED", 2: "INIT_RECEIVED", 3: "HALTED",
             4: "SIPI_RECEIVED", 5: "STOPPED", 6: "CHECK_STOP", 7: "OPERATING", 8: "LOAD",
             9: "AP_RESET_HOLD", 10: "SUSPENDED"}
SYSTEM_TYPES = {1: "16-bit TSS (available)", 2: "LDT", 3: "16-bit TSS (busy)",
                4: "16-bit call gate", 5: "task gate", 6: "16-bit interrupt gate",
                7: "16-bit trap gate", 9: "TSS (available)", 11: "TSS (busy)", 12: "call gate",
                14: "interrupt gate", 15: "trap gate"}
FCW_INIT, MXCSR_INIT = 0x37f, 0x1f80


# ---------------------------------------------------------------------------------------------
# General registers

def prstatus(desc: bytes) -> dict:
    """NT_PRSTATUS (x86-64): ``{"thread": pid, signal, times…, "regs": {name: int}}``."""
    pr = parse(x86.elf_prstatus, desc, "NT_PRSTATUS")
    r = pr.pr_reg
    regs = {name: r[name] for name in GPRS + ("orig_rax",) + SELECTORS + ("fs_base", "gs_base")}
    regs["rflags"] = r.eflags
    thread = dict(pid=pr.pr_pid, ppid=pr.pr_ppid, pgrp=pr.pr_pgrp, sid=pr.pr_sid,
                  signal=pr.pr_info.si_signo, cursig=pr.pr_cursig, sigpend=pr.pr_sigpend,
                  sighold=pr.pr_sighold, fpvalid=pr.pr_fpvalid,
                  **{name: plain(pr[name]) for name in ("pr_utime", "pr_stime")})
    return dict(thread=thread, regs=regs)


def thread(desc: bytes) -> tuple[dict, dict]:
    """A thread (vCPU) from its NT_PRSTATUS: flat registers, and its ``thread``, ``regs`` and
    ``segments`` sections."""
    pr = prstatus(desc)
    flat = {name: pr["regs"][name] for name in GPRS + ("rflags",) + SELECTORS
            + ("fs_base", "gs_base")}
    return flat, dict(thread=pr["thread"], regs=regs_section(pr["regs"]),
                      segments=segments_from_prstatus(pr["regs"]))


def vcpu(v, pr_desc: bytes) -> dict:
    """A kvmsnap vCPU (arch.x86_64.state.VcpuState) and its NT_PRSTATUS, decoded."""
    from kvmsnap.arch.x86_64.notes import parse_sregs
    from kvmsnap.arch.x86_64.lapic import lapic
    sregs = parse_sregs(v)
    xcr0 = xsave_facts.xcr0_of(v.xcrs)
    values, sections = thread(pr_desc)
    values.update(fs_base=sregs.fs.base, gs_base=sregs.gs.base,
                  **{name: sregs[name] for name in CONTROL})
    sections.update(
        segments=segments_from_sregs(sregs),
        control=control(sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer, sregs.cr8, xcr0,
                        sregs.apic_base),
        debug=debug(v.debugregs),
        fpu=xsave(v.xsave, XCR0_LEGACY if xcr0 is None else xcr0, v.cpuid),
        msrs=msrs(v.msrs),
        lapic=lapic(v.lapic, x2apic=bool(sregs.apic_base >> 10 & 1)),
        events=events(v.events),
        mp_state=mp_state(v.mp_state),
        cpuid=cpuid(v.cpuid),
    )
    return dict(id=v.index, pid=v.index + 1, regs=values, mp_state=v.mp_state, tsc_khz=v.tsc_khz,
                apic_base=sregs.apic_base, msrs=len(v.msrs), xcr0=xcr0, xsave_size=len(v.xsave),
                sections=sections)


def regs_section(regs: dict) -> dict:
    """The ``regs`` section: general registers, RIP, ``orig_rax`` when known, RFLAGS decoded."""
    out = {name: regs[name] for name in GPRS + ("orig_rax",) if name in regs}
    out["rflags"] = bitreg(regs["rflags"], RFLAGS, iopl=field(regs["rflags"], 12, 2))
    return out


# ---------------------------------------------------------------------------------------------
# Segments and descriptor tables

def segment(selector, base, limit, type_, s, dpl, present, avl, l, db, g, unusable=0) -> dict:
    """One segment register: selector (index, TI, RPL), base, limit, attributes in words."""
    if s:
        kind = "code" if type_ & 8 else "data"
        words = [kind]
        if type_ & 8:
            words += ["conforming"] * bool(type_ & 4) + ["readable"] * bool(type_ & 2)
        else:
            words += ["expand-down"] * bool(type_ & 4) + ["writable"] * bool(type_ & 2)
        words += ["accessed"] * bool(type_ & 1)
    else:
        words = [SYSTEM_TYPES.get(type_, f"system type {type_}")]
    words.append("present" if present else "not present")
    words.append(f"DPL {dpl}")
    if l:
        words.append("64-bit")
    elif s and type_ & 8:
        words.append("32-bit" if db else "16-bit")
    words += ["4 KiB granularity"] * bool(g) + ["AVL"] * bool(avl) + ["unusable"] * bool(unusable)
    return dict(selector=selector, index=selector >> 3, ti=field(selector, 2, 1),
                rpl=selector & 3, base=base, limit=limit, type=type_, s=s, dpl=dpl,
                present=present, avl=avl, l=l, db=db, g=g, unusable=unusable,
                attributes=words)


def _dtable(base, limit) -> dict:
    return dict(base=base, limit=limit, entries=(limit + 1) // 8)


def segments_from_sregs(sregs) -> dict:
    """The ``segments`` section from a parsed kvm_sregs(2)."""
    out = {name: segment(sregs[name].selector, sregs[name].base, sregs[name].limit,
                         sregs[name].type, sregs[name].s, sregs[name].dpl, sregs[name].present,
                         sregs[name].avl, sregs[name].l, sregs[name].db, sregs[name].g,
                         sregs[name].unusable)
           for name in SELECTORS + ("tr", "ldt")}
    out.update(gdt=_dtable(sregs.gdt.base, sregs.gdt.limit),
               idt=_dtable(sregs.idt.base, sregs.idt.limit))
    return out


def segments_from_qemu(state) -> dict:
    """The ``segments`` section from a parsed QEMUCPUState (flags: QEMU's SegmentCache bits)."""
    def seg(s):
        f = s.flags
        return segment(s.selector, s.base, s.limit, field(f, 8, 4), field(f, 12, 1),
                       field(f, 13, 2), field(f, 15, 1), field(f, 20, 1), field(f, 21, 1),
                       field(f, 22, 1), field(f, 23, 1))
    out = {name: seg(state[name]) for name in SELECTORS + ("tr", "ldt")}
    out.update(gdt=_dtable(state.gdt.base, state.gdt.limit),
               idt=_dtable(state.idt.base, state.idt.limit))
    return out


def segments_from_prstatus(regs: dict) -> dict:
    """Process cores know only the selectors and the FS/GS bases."""
    out = {name: dict(selector=regs[name], index=regs[name] >> 3, ti=field(regs[name], 2, 1),
                      rpl=regs[name] & 3) for name in SELECTORS}
    out["fs"]["base"], out["gs"]["base"] = regs["fs_base"], regs["gs_base"]
    return out


# ---------------------------------------------------------------------------------------------
# Control registers

def control(cr0, cr2, cr3, cr4, efer=None, cr8=None, xcr0=None, apic_base=None) -> dict:
    """The ``control`` section: CR0, CR2, CR3, CR4, CR8, EFER, XCR0 and APIC base by bit; a
    register the file does not hold is None."""
    return dict(cr0=bitreg(cr0, CR0), cr2=cr2,
                cr3=dict(value=cr3, table=cr3 & 0x000f_ffff_ffff_f000, pcid=cr3 & 0xfff),
                cr4=bitreg(cr4, CR4), cr8=cr8,
                efer=None if efer is None else bitreg(efer, EFER),
                xcr0=None if xcr0 is None else bitreg(xcr0, XCR0),
                apic_base=None if apic_base is None else bitreg(apic_base, APIC_BASE,
                                                                 address=apic_base & ~0xfff))


def debug(raw: bytes) -> dict:
    """The ``debug`` section from kvm_debugregs: DR0–DR3, DR6 and DR7 with its breakpoints."""
    d = x86.kvm_debugregs.parse(raw)
    dr7 = d.dr7
    breakpoints = []
    for n in range(4):
        local, glob = field(dr7, 2 * n, 1), field(dr7, 2 * n + 1, 1)
        if local or glob:
            breakpoints.append({"n": n, "address": d.db[n], "local": local, "global": glob,
                                "condition": DR7_CONDITION[field(dr7, 16 + 4 * n, 2)],
                                "length": DR7_LENGTH[field(dr7, 18 + 4 * n, 2)]})
    out = {f"dr{n}": d.db[n] for n in range(4)}
    out.update(dr6=bitreg(d.dr6, DR6), dr7=bitreg(dr7, DR7, breakpoints=breakpoints),
               flags=d.flags)
    return out


# ---------------------------------------------------------------------------------------------
# XSAVE area

def x87_tag(ftw: int, fsw: int, st: list[bytes]) -> int:
    """The full x87 tag word (2 bits per physical register) from FXSAVE's abridged one, classifying
    each non-empty register as valid (0), zero (1) or special (2); empty is 3."""
    top = field(fsw, 11, 3)
    tag = 0
    for phys in range(8):
        if not ftw >> phys & 1:
            t = 3
        else:
            raw = int.from_bytes(st[(phys - top) % 8], "little")
            exponent, integer, fraction = raw >> 64 & 0x7fff, raw >> 63 & 1, raw & ((1 << 63) - 1)
            if exponent == 0x7fff:
                t = 2
            elif exponent == 0:
                t = 1 if not integer and not fraction else 2
            else:
                t = 0 if integer else 2
        tag |= t << 2 * phys
    return tag


def _components(area: bytes, xcr0: int, cpuid: bytes | None) -> dict:
    """bit -> bytes of each XSAVE component enabled in ``xcr0`` and inside ``area``; a component
    whose XSTATE_BV bit is clear is in its initial state (None)."""
    header = area[x86.XSAVE_HDR_OFFSET:x86.XSAVE_HDR_OFFSET + 8]
    xstate_bv = int.from_bytes(header, "little") if len(header) == 8 else XCR0_LEGACY
    out = {}
    for bit, (offset, size) in xsave_facts.components(xcr0, cpuid).items():
        if offset + size <= len(area):
            out[bit] = area[offset:offset + size] if xstate_bv >> bit & 1 else None
    return out, xstate_bv


def xsave(area: bytes, xcr0: int, cpuid: bytes | None = None) -> dict:
    """The ``fpu`` section from an XSAVE area (standard format; a bare 512-byte FXSAVE image is
    read as x87+SSE): x87 stack and control words, MXCSR, XMM, YMM, ZMM, opmask k0–k7, PKRU.
    Components whose XSTATE_BV bit is clear read as their initial values, as XRSTOR loads them."""
    legacy = area[:x86.XSAVE_LEGACY_SIZE]
    fx = parse(x86.user_fpregs_struct, legacy, "FXSAVE area")
    comps, xstate_bv = _components(area, xcr0, cpuid) if len(area) > 512 else ({}, XCR0_LEGACY)
    x87_live, sse_live = xstate_bv & 1, xstate_bv >> 1 & 1
    st = [legacy[32 + 16 * i:42 + 16 * i] if x87_live else bytes(10) for i in range(8)]
    fcw = fx.cwd if x87_live else FCW_INIT
    fsw, ftw = (fx.swd, fx.ftw & 0xff) if x87_live else (0, 0)
    fip, fdp, fop = (fx.rip, fx.rdp, fx.fop & 0x7ff) if x87_live else (0, 0, 0)
    mxcsr = fx.mxcsr if sse_live or xstate_bv >> 2 & 1 else MXCSR_INIT
    out = dict(
        xcr0=bitreg(xcr0, XCR0),
        xstate_bv=bitreg(xstate_bv, XCR0),
        x87=dict(fcw=bitreg(fcw, FCW, precision=PRECISION[field(fcw, 8, 2)],
                            rounding=ROUNDING[field(fcw, 10, 2)]),
                 fsw=bitreg(fsw, FSW, top=field(fsw, 11, 3)),
                 ftw=ftw, tag=x87_tag(ftw, fsw, st), fop=fop, fip=fip, fdp=fdp,
                 st=[wide(r) for r in st]),
        mxcsr=bitreg(mxcsr, MXCSR, rounding=ROUNDING[field(mxcsr, 13, 2)]),
        mxcsr_mask=fx.mxcr_mask,
    )
    xmm = [legacy[160 + 16 * i:176 + 16 * i] if sse_live else bytes(16) for i in range(16)]
    out["xmm"] = [wide(x) for x in xmm]
    if x86.XFEATURE_AVX in comps:
        hi = comps[x86.XFEATURE_AVX] or bytes(256)
        ymm = [xmm[i] + hi[16 * i:16 * i + 16] for i in range(16)]
        out["ymm"] = [wide(y) for y in ymm]
        if {5, 6, 7} <= comps.keys():
            zhi = comps[6] or bytes(512)
            upper16 = comps[7] or bytes(1024)
            zmm = [ymm[i] + zhi[32 * i:32 * i + 32] for i in range(16)] + \
                  [upper16[64 * i:64 * i + 64] for i in range(16)]
            out["xmm"] += [wide(z[:16]) for z in zmm[16:]]
            out["ymm"] += [wide(z[:32]) for z in zmm[16:]]
            out["zmm"] = [wide(z) for z in zmm]
            out["k"] = u64s(comps[5] or bytes(64))
    if 9 in comps:
        out["pkru"] = struct.unpack_from("<I", comps[9] or bytes(8))[0]
    return out


def xsave_layout(desc: bytes) -> list[dict]:
    """NT_X86_XSAVE_LAYOUT: where NT_X86_XSTATE holds each extended component."""
    if len(desc) % x86.x86_xfeat_component.sizeof():
        raise DecodeError(f"NT_X86_XSAVE_LAYOUT: {len(desc)} bytes is not a whole number of entries")
    size = x86.x86_xfeat_component.sizeof()
    return [dict(component=c.type, name=XCR0.get(c.type), offset=c.offset, size=c.size,
                 flags=c.flags)
            for c in (x86.x86_xfeat_component.parse(desc[at:at + size])
                      for at in range(0, len(desc), size))]


def msrs(entries: list[tuple[int, int]]) -> list[dict]:
    """The ``msrs`` section: every saved MSR with its name (null when not in the table)."""
    return [dict(index=index, name=MSR_NAMES.get(index), value=value) for index, value in entries]


def cpuid(table: bytes) -> list[dict]:
    """The ``cpuid`` section: every leaf, with the feature names of its set bits."""
    out = []
    for function, index, flags, eax, ebx, ecx, edx, *_ in cpuid_table.entries(table):
        values = dict(eax=eax, ebx=ebx, ecx=ecx, edx=edx)
        features = []
        for (leaf, sub, reg), names in cpuid_table.FEATURES.items():
            if leaf == function and (sub == index or not flags & 1):
                features += flag_names(values[reg], names)
        out.append(dict(function=function, index=index, flags=flags, **values,
                        features=features))
    return out


def events(raw: bytes) -> dict:
    """The ``events`` section: pending/injected exception, interrupt, NMI, SMI, triple fault."""
    return plain(x86.kvm_vcpu_events.parse(raw))


def mp_state(value: int) -> dict:
    return dict(value=value, name=MP_STATES.get(value))
