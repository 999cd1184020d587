"""Synthetic cores for the offline tests (no KVM): ``make_state`` builds a plausible Snapshot from
the construct layouts (a format test, not a fake KVM) and ``write`` saves it as a kvmsnap core;
``make_foreign`` builds minimal foreign ELF cores."""
import struct

from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.arch.x86_64.state import VcpuState
from kvmsnap.formats import elf
from kvmsnap.formats.writer import write_core
from kvmsnap.memory import Slot
from kvmsnap.memory.ram import GuestRam
from kvmsnap.state import MachineConfig, Snapshot

MiB = 1 << 20
RIP = 0x100123
CODE = bytes([0xf4, 0x90, 0xeb, 0xfd, 0x0f, 0x0b, 0xcc, 0xc3])
PML4, PDPT, PD, PDPT_HIGH, PT = 0x10000, 0x11000, 0x12000, 0x13000, 0x14000
HIGH_BASE = 0xffffffff80000000          # PML4[511] / PDPT[510] -> PD: high alias of low RAM
XCR0 = 0xe7                             # x87 | SSE | AVX | opmask | ZMM_Hi256 | Hi16_ZMM
K1 = 0xdeadbeefcafef00d


def _seg(selector, type_, *, l=1, db=0, base=0):
    return dict(base=base, limit=0xffffffff, selector=selector, type=type_, present=1, dpl=0,
                db=db, s=1, l=l, g=1, avl=0, unusable=0, padding=0)


def xmm(r):
    return bytes((r * 16 + j) & 0xff for j in range(16))


def ymm_hi(r):
    return bytes((0x80 + r + j) & 0xff for j in range(16))


def zmm_hi(r):
    return bytes((0x40 + r + j) & 0xff for j in range(32))


def make_xsave(size=4096):
    xsave = bytearray(size)
    struct.pack_into("<HH", xsave, 0, 0x37f, 0)                # fcw, fsw
    struct.pack_into("<I", xsave, 24, 0x1f80)                  # mxcsr
    for r in range(16):
        xsave[160 + 16 * r:176 + 16 * r] = xmm(r)
        xsave[576 + 16 * r:592 + 16 * r] = ymm_hi(r)
        xsave[1152 + 32 * r:1184 + 32 * r] = zmm_hi(r)
    struct.pack_into("<Q", xsave, 1088 + 8, K1)                # k1
    struct.pack_into("<Q", xsave, 512, XCR0)                   # xstate_bv
    xsave[470] = 0x5a                                          # survives in KVMSNAP_XSAVE only
    return bytes(xsave)


def identity_page_tables(ram):
    """Identity map of 0..1 GiB with 2 MiB pages, plus HIGH_BASE -> 0 (the same page directory)."""
    struct.pack_into("<Q", ram, PML4, PDPT | 7)
    struct.pack_into("<Q", ram, PDPT, PD | 7)
    for i in range(512):
        struct.pack_into("<Q", ram, PD + 8 * i, (i << 21) | 0x87)
    struct.pack_into("<Q", ram, PML4 + 511 * 8, PDPT_HIGH | 3)
    struct.pack_into("<Q", ram, PDPT_HIGH + 510 * 8, PD | 3)


def make_vcpu(i, *, paging=True):
    regs = x86.kvm_regs.build(dict(
        rax=0x1111 + i, rbx=2, rcx=3, rdx=4, rsi=i, rdi=0x3000, rsp=0x200000 - 16 * i, rbp=0x55,
        r8=8, r9=9, r10=10, r11=11, r12=12, r13=13, r14=14, r15=15, rip=RIP + i, rflags=0x202))
    ds = _seg(0x10, 3, l=0, db=1)
    sregs = x86.kvm_sregs2.build(dict(
        cs=_seg(0x08, 11), ds=ds, es=ds, ss=ds,
        fs=dict(ds, base=0x7000 + i), gs=dict(ds, base=0x8000 + i),
        tr=dict(_seg(0x28, 11, l=0, base=0x2000), s=0, limit=0x67),
        ldt=dict(_seg(0, 2, l=0), present=0, unusable=1, s=0, limit=0),
        gdt=dict(base=0x1000, limit=0x37, padding=[0] * 3),
        idt=dict(base=0, limit=0, padding=[0] * 3),
        cr0=0x80050033 if paging else 0x11, cr2=0, cr3=PML4, cr4=0x40620,
        cr8=0, efer=0xd01 if paging else 0, apic_base=0xfee00900 | (0 if i else 0x100), flags=0,
        pdptrs=[0] * 4))
    xcrs = x86.kvm_xcrs.build(dict(nr_xcrs=1, flags=0, padding=[0] * 16, xcrs=[
        dict(xcr=0, reserved=0, value=XCR0)] + [dict(xcr=0, reserved=0, value=0)] * 15))
    cpuid = b"".join(x86.kvm_cpuid_entry2.build(dict(
        function=f, index=0, flags=0, eax=f + 1, ebx=2, ecx=3, edx=4, padding=[0] * 3))
        for f in (0, 1, 7))
    events = x86.kvm_vcpu_events.build(dict(
        exception=dict(injected=0, nr=0, has_error_code=0, pending=0, error_code=0),
        interrupt=dict(injected=0, nr=0, soft=0, shadow=0),
        nmi=dict(injected=0, pending=0, masked=0, pad=0), sipi_vector=0, flags=0x1f,
        smi=dict(smm=0, pending=0, smm_inside_nmi=0, latched_init=0),
        triple_fault=dict(pending=0), reserved=bytes(26), exception_has_payload=0,
        exception_payload=0))
    debugregs = x86.kvm_debugregs.build(dict(db=[1, 2, 3, 4], dr6=0xffff0ff0, dr7=0x400, flags=0,
                                             reserved=[0] * 9))
    return VcpuState(index=i, mp_state=0 if i == 0 else 3, regs=regs, sregs=sregs, sregs2=True,
                     xsave=make_xsave(), xcrs=xcrs, lapic=bytes([i + 1]) * 1024,
                     msrs=[(0x10, 12345 + i), (0xc0000102, 0xffff888000000000)],
                     debugregs=debugregs, cpuid=cpuid, tsc_khz=2_000_000, events=events)


def make_irqchip(chip_id):
    if chip_id == x86.KVM_IRQCHIP_IOAPIC:
        entry = dict(dest_id=0, reserved=0, reserve=0, mask=1, trig_mode=0, remote_irr=0,
                     polarity=0, delivery_status=0, dest_mode=0, delivery_mode=0, vector=0)
        chip = dict(base_address=0xfec00000, ioregsel=0, id=0, irr=0, pad=0,
                    redirtbl=[dict(entry, vector=0x20 + n) for n in range(24)])
    else:
        chip = dict(last_irr=0, irr=0, imr=0xff, isr=0, priority_add=0,
                    irq_base=0x20 if chip_id == 0 else 0x28, read_reg_select=0, poll=0,
                    special_mask=0, init_state=0, auto_eoi=0, rotate_on_auto_eoi=0,
                    special_fully_nested_mode=0, init4=1, elcr=0, elcr_mask=0xf8)
    return x86.kvm_irqchip.build(dict(chip_id=chip_id, pad=0, chip=chip))


def make_state(nvcpus=2, mem=8 * MiB, *, paging=True, regions=None) -> Snapshot:
    """``regions``: ``(Slot, buffer)`` pairs instead of one slot of ``mem`` bytes at 0."""
    ram = bytearray(mem)
    if paging:
        identity_page_tables(ram)
    ram[RIP:RIP + len(CODE)] = CODE
    ram[0x300000:0x300010] = b"hello kvmsnap!!!"
    memory = GuestRam(regions if regions is not None else [(Slot(0, 0, mem), ram)])
    uart = x86.UartState.build(dict(dll=1, dlm=0, ier=0, iir=1, fcr=0, lcr=3, mcr=8, lsr=0x60,
                                    msr=0xb0, scr=0))
    pit = x86.kvm_pit_state2.build(dict(channels=[dict(
        count=0x10000, latched_count=0, count_latched=0, status_latched=0, status=0,
        read_state=3, write_state=3, write_latch=0, rw_mode=3, mode=n == 0 and 3 or 0, bcd=0,
        gate=1, count_load_time=123456789 + n) for n in range(3)], flags=0, reserved=[0] * 9))
    clock = x86.kvm_clock_data.build(dict(clock=987654321, flags=2, pad0=0, realtime=0,
                                          host_tsc=0, pad=[0] * 4))
    return Snapshot(arch="x86_64",
                    config=MachineConfig("hello", sum(s.size for s in memory.slots()), nvcpus),
                    vcpus=[make_vcpu(i, paging=paging) for i in range(nvcpus)],
                    devices=dict(pic_master=make_irqchip(0), pic_slave=make_irqchip(1),
                                 ioapic=make_irqchip(2), pit=pit, clock=clock, uart=uart,
                                 cmos=bytes([0x0B]) + bytes(range(128)), pci=(0x80000000).to_bytes(4, "little"),
                                 acpi_pm=bytes([0x20, 0, 0x01, 0]), uart_input=b"ls -l\n"),
                    memory=memory)


ARM64_RAM = 0x4000_0000
ARM64_PC = ARM64_RAM + 0x80000
SCTLR_EL1, MPIDR_EL1 = 0x6030_0000_0013_c080, 0x6030_0000_0013_c005    # ARM64_SYS_REG(3,0,1,0,0), (3,0,0,0,5)
PSCI_VERSION = 0x6030_0000_0014_0000                                   # KVM_REG_ARM_PSCI_VERSION


def make_arm64_vcpu(i, sve=False):
    from kvmsnap.arch.aarch64 import notes as arm_notes
    from kvmsnap.arch.aarch64.state import VcpuState
    u64 = lambda v: v.to_bytes(8, "little")
    core = {name: 0x1000 * i + n for n, name in enumerate(arm64.USER_PT_REGS)}
    core.update(sp=ARM64_RAM + 0x200000 - 0x1000 * i, pc=ARM64_PC + 4 * i, pstate=0x3c5)
    regs = [(arm_notes.PT_REG_IDS[name], u64(value)) for name, value in core.items()]
    if sve:         # SVE at 1024 bits: KVM then lists Z, P and FFR, not V
        regs += [(z, bytes((n * 7 + j + i) & 0xff for j in range(256))) for n, z in enumerate(arm_notes.Z_IDS)]
        regs += [(p, bytes((n * 3 + j) & 0xff for j in range(32))) for n, p in enumerate(arm_notes.P_IDS)]
        regs += [(arm_notes.FFR_ID, bytes(range(32))), (arm_notes.SVE_VLS_ID, (0xff).to_bytes(64, "little")),
                 (arm_notes.ZCR_EL1_ID, u64(7))]
    else:
        regs += [(v, bytes((n * 16 + j + i) & 0xff for j in range(16))) for n, v in enumerate(arm_notes.V_IDS)]
    regs += [(arm_notes.FPSR_ID, (0x10 + i).to_bytes(4, "little")),
             (arm_notes.FPCR_ID, (0x3000000).to_bytes(4, "little")),
             (SCTLR_EL1, u64(0x30d00800)), (MPIDR_EL1, u64(0x80000000 | i)), (PSCI_VERSION, u64(0x10001)),
             (arm_notes.TPIDR_EL0_ID, u64(0xffff000012345000 + i))]
    return VcpuState(index=i, features=[2] + ([0] if i else []), mp_state=0, regs=regs, events=bytes(64))


def make_arm64_state(nvcpus=2, mem=8 * MiB, sve=False) -> Snapshot:
    """An aarch64 Snapshot: RAM at 1 GiB, core, FP/SIMD (or SVE) and a few system and firmware
    registers."""
    ram = bytearray(mem)
    ram[ARM64_PC - ARM64_RAM:ARM64_PC - ARM64_RAM + 8] = bytes.fromhex("1f2003d5ffffff17")   # nop; b .-4
    vgic = arm64.VgicState.build(dict(type=7, nr_irqs=128, reserved=0, regs=[
        dict(group=1, size=4, attr=0, value=0x12), dict(group=6, size=8, attr=0xc665, value=0xf0)]))
    pl011 = arm64.Pl011State.build({name: 0 for name in arm64.PL011_REGS})
    return Snapshot(arch="aarch64", config=MachineConfig("hello-arm64", mem, nvcpus),
                    vcpus=[make_arm64_vcpu(i, sve) for i in range(nvcpus)],
                    devices=dict(vgic=vgic, uart=pl011, uart_input=b"ls\n"),
                    memory=GuestRam([(Slot(0, ARM64_RAM, mem), ram)]))


def write(state, path, **kw):
    return write_core(state, str(path), producer="kvmsnap test", host_kernel="6.1.0-test", **kw)


# ---------------------------------------------------------------------------------------------
# Foreign cores

def _note(owner, n_type, desc):
    name = owner.encode() + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)
    return elf.Elf64_Nhdr.build(dict(n_namesz=len(name), n_descsz=len(desc), n_type=n_type)) + \
        pad(name) + pad(desc)


def make_foreign(machine=elf.EM_X86_64, notes=(), loads=(), ehsize=64, phdrs=()):
    """A minimal ELF64 core: PT_NOTE + PT_LOADs (each a (vaddr, data)), then ``phdrs``: PT_LOADs
    given as (p_paddr, p_offset, p_filesz, p_memsz), their data at offsets from the file's
    start (anything may be appended to the result)."""
    blob = b"".join(_note(*n) for n in notes)
    phnum = 1 + len(loads) + len(phdrs)
    notes_at = 64 + 56 * phnum
    data_at = notes_at + len(blob)
    table = [elf.Elf64_Phdr.build(dict(p_type=elf.PT_NOTE, p_flags=0, p_offset=notes_at,
                                       p_vaddr=0, p_paddr=0, p_filesz=len(blob), p_memsz=0,
                                       p_align=4))]
    body = b""
    for vaddr, data in loads:
        table.append(elf.Elf64_Phdr.build(dict(p_type=elf.PT_LOAD, p_flags=5,
                                               p_offset=data_at + len(body), p_vaddr=vaddr,
                                               p_paddr=0, p_filesz=len(data), p_memsz=len(data),
                                               p_align=1)))
        body += data
    for paddr, offset, filesz, memsz in phdrs:
        table.append(elf.Elf64_Phdr.build(dict(p_type=elf.PT_LOAD, p_flags=7, p_offset=offset,
                                               p_vaddr=paddr, p_paddr=paddr, p_filesz=filesz,
                                               p_memsz=memsz, p_align=4096)))
    phdrs = table
    ehdr = elf.Elf64_Ehdr.build(dict(
        e_ident=dict(EI_MAG=elf.ELFMAG, EI_CLASS=2, EI_DATA=1, EI_VERSION=1, EI_OSABI=0,
                     EI_ABIVERSION=0, EI_PAD=bytes(7)),
        e_type=elf.ET_CORE, e_machine=machine, e_version=1, e_entry=0, e_phoff=64, e_shoff=0,
        e_flags=0, e_ehsize=ehsize, e_phentsize=56, e_phnum=phnum, e_shentsize=0, e_shnum=0,
        e_shstrndx=0))
    return ehdr + b"".join(phdrs) + blob + body
