"""Guest kernel mode on a KVM that emulates it: kvm_pvm, this project's host backend, runs every
guest CPL0 instruction through KVM's instruction emulator, which cannot run some of the ones Linux
uses.  This module finds out whether this host's KVM is such a one (by running one: :func:`probe`, only
when a guest first needs to know), completes the instructions its emulator stops at, and names the
kernel parameters that keep Linux away from the others (docs/kernel-mode-assist.md gives the
reasons, one per parameter).

Assisted, as the CPU would do them:

- ``int3``: RIP past it, #BP injected (Linux's int3 self-test, text patching);
- ``fwait``: #MF when an unmasked x87 exception is pending, else RIP past it;
- ``cmpxchg16b`` (with or without ``lock``, FS/GS-relative or not): the compare-exchange done
  atomically on guest RAM by the host CPU's own ``lock cmpxchg16b``, ZF and RDX:RAX as the CPU
  sets them, RIP past it (Linux is told not to use it, clearcpuid=cx16: each one would be an exit);
- the 64-bit system call from user mode, which the emulating KVM sends to the guest's syscall
  entry without leaving user mode.  The VMM keeps the guest's LSTAR itself (an MSR filter brings
  every guest RDMSR and WRMSR of it here) and gives the vCPU :data:`SYSCALL_TRAP` instead: a
  user-readable page the VMM maps beside Linux's vsyscall page onto a guest-physical address with
  no RAM.  Fetching there fails, and the VMM completes the switch to kernel mode at the guest's own
  entry.  A core holds the guest's LSTAR (what a debugger or a native host needs); a restore here
  installs the trap again.
"""
import functools
import mmap
import struct
import threading

from kvmsnap.arch.x86_64 import paging
from kvmsnap.arch.x86_64.layouts import CR0_ET, CR0_PE, CR0_WP, RFLAGS_IOPL3, RFLAGS_RESERVED
from kvmsnap.arch.x86_64.msrs import MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE
from kvmsnap.errors import KvmsnapError
from kvmsnap.kvm import Cap, Kvm, KvmError, ffi, lib

MSR_STAR, MSR_LSTAR, MSR_SYSCALL_MASK = 0xC0000081, 0xC0000082, 0xC0000084
#: Where a system call from user mode goes: the page after Linux's vsyscall page (0xffffffffff600000),
#: a fixmap slot Linux leaves free, under page tables Linux makes user-accessible for the vsyscall page.
SYSCALL_TRAP = 0xFFFFFFFFFF601000
#: The guest-physical page behind SYSCALL_TRAP: in the 32-bit hole, below the IOAPIC, never RAM.
SYSCALL_TRAP_GPA = 0xFEBFF000
PTE_RW, PTE_U, PTE_A, PTE_D = 1 << 1, 1 << 2, 1 << 5, 1 << 6
INT3, FWAIT = 0xCC, 0x9B
VECTOR_BP, VECTOR_MF = 3, 16
FSW_ES = 1 << 7           # x87 status word: an unmasked exception is pending
RFLAGS_ZF = 1 << 6
#: ModRM/SIB register numbers -> struct kvm_regs fields.
GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{n}" for n in range(8, 16)))
PREFIX_LOCK, PREFIX_FS, PREFIX_GS = 0xF0, 0x64, 0x65
IGNORED_PREFIXES = {0x26, 0x2E, 0x36, 0x3E}     # ES, CS, SS, DS overrides: no effect in 64-bit mode

#: MSRs whose guest accesses always come to the VMM (the filter of every VM with the assists).
FILTERED = [(MSR_LSTAR, lib.KVM_MSR_FILTER_READ | lib.KVM_MSR_FILTER_WRITE)]
#: On an emulating KVM no guest TSC deadline is sooner than this many seconds ahead: Linux's 250 Hz
#: tick, emulated, would take most of the vCPU; the kernel counts the ticks a late one stands for.
TIMER_FLOOR = 0.04

#: Parameters appended to a Linux kernel's command line on an emulating KVM, each with its reason.
KERNEL_PARAMS = (
    ("noxsave", "the emulator cannot run XSAVE/XRSTOR, and KVM cannot hide them from CPUID"),
    ("clearcpuid=cx16,popcnt,rdtscp,rdpid,smap,invpcid,pcid,fsgsbase,ssse3,sse4_1,sse4_2,monitor",
     "instructions the emulator cannot run in kernel mode, which KVM cannot hide from CPUID (cmpxchg16b "
     "is assisted, but the slab allocator's fast path would exit to the VMM on every allocation)"),
    ("noinvpcid nopcid nofsgsbase", "the same features, for code that tests the parameters"),
    ("vsyscall=emulate", "the system-call assist maps its trap page beside the vsyscall page"),
    ("nopti", "user mode must run on the page tables that hold the trap page"),
    ("cryptomgr.notests", "the crypto self-tests are half the instructions to /init when emulated"),
    ("rodata=off", "after marking its data read-only Linux checks every kernel mapping for W+X: a minute emulated"),
    ("nowatchdog", "a kernel slowed down this much trips the soft-lockup watchdog, whose reports cost more"),
    ("rcupdate.rcu_cpu_stall_suppress=1", "and RCU's stall detector, likewise"),
)


class AssistError(KvmsnapError):
    """The guest needs an assist this module cannot give; the message says why."""


@functools.cache
def probe() -> bool:
    """True when this host's KVM emulates guest kernel mode: a 32-bit CPL0 ``int3`` in a scratch VM
    stops with an emulation failure instead of reaching its handler."""
    kvm = Kvm()
    try:
        return _int3_fails(kvm)
    finally:
        kvm.close()


# The probe guest: GDT, IDT (gate 3), code `int3`, handler `out 0x80, al`.
_PROBE_GDT, _PROBE_IDT, _PROBE_CODE, _PROBE_HANDLER, _PROBE_STACK = 0x500, 0x600, 0x1000, 0x1100, 0x8000
_PROBE_PORT = 0x80


def _int3_fails(kvm) -> bool:
    vm = kvm.create_vm()
    ram = mmap.mmap(-1, 0x10000, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    vcpu = None
    try:
        ram[_PROBE_GDT:_PROBE_GDT + 24] = struct.pack("<3Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
        gate = struct.pack("<HHHH", _PROBE_HANDLER & 0xFFFF, 0x08, 0x8E00, _PROBE_HANDLER >> 16)
        ram[_PROBE_IDT + 8 * VECTOR_BP:_PROBE_IDT + 8 * VECTOR_BP + 8] = gate
        ram[_PROBE_CODE:_PROBE_CODE + 2] = bytes([INT3, 0xF4])
        ram[_PROBE_HANDLER:_PROBE_HANDLER + 2] = bytes([0xE6, _PROBE_PORT])
        vm.set_user_memory_region(0, 0, len(ram), int(ffi.cast("uintptr_t", ffi.from_buffer(ram))))
        vcpu = vm.create_vcpu(0)
        sregs = _struct(vcpu.get_sregs(), "struct kvm_sregs")
        for seg, sel, kind in ((sregs.cs, 0x08, 11), (sregs.ds, 0x10, 3), (sregs.es, 0x10, 3),
                               (sregs.ss, 0x10, 3), (sregs.fs, 0x10, 3), (sregs.gs, 0x10, 3)):
            seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, sel, kind
            seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g = 1, 0, 1, 1, 0, 1
        sregs.gdt.base, sregs.gdt.limit = _PROBE_GDT, 23
        sregs.idt.base, sregs.idt.limit = _PROBE_IDT, 8 * (VECTOR_BP + 1) - 1
        sregs.cr0 = CR0_PE | CR0_ET
        vcpu.set_sregs(_bytes(sregs))
        regs = _struct(vcpu.get_regs(), "struct kvm_regs")
        regs.rip, regs.rsp, regs.rflags = _PROBE_CODE, _PROBE_STACK, RFLAGS_RESERVED
        vcpu.set_regs(_bytes(regs))
        reason = vcpu.run()
        if reason == lib.KVM_EXIT_IO and vcpu.run_area.io.port == _PROBE_PORT:
            return False
        return (reason == lib.KVM_EXIT_INTERNAL_ERROR
                and vcpu.run_area.internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION)
    finally:
        if vcpu is not None:
            vcpu.close()
        vm.close()
        ram.close()


def _struct(data: bytes, ctype: str):
    value = ffi.new(ctype + " *")
    ffi.memmove(value, data, min(len(data), ffi.sizeof(ctype)))
    return value


def _bytes(value) -> bytes:
    return bytes(ffi.buffer(value))


class KernelModeAssist:
    """The assists of one VM (see the module docstring), made before its vCPUs run.  Whether this
    host's KVM needs them is found out only when first asked (a Linux kernel booted, the guest's
    first kernel-mode LSTAR, an emulation failure): a guest that asks none of these runs as it
    would without, and costs no probe."""

    def __init__(self, vm, memory):
        vm.enable_cap(Cap.X86_USER_SPACE_MSR, lib.KVM_MSR_EXIT_REASON_FILTER)
        vm.set_msr_filter(FILTERED)
        self.vm = vm
        self.memory = memory
        self.lstar: dict[int, int] = {}         # vCPU index -> the LSTAR the guest wrote
        self._needed: bool | None = None
        self._floor_ticks: int | None = None     # TIMER_FLOOR in guest TSC ticks
        self._lock = threading.Lock()

    def needed(self) -> bool:
        """True when this host's KVM emulates guest kernel mode (found out once); from then on
        emulation failures in user mode come to the VMM too, instead of a #UD in the guest."""
        with self._lock:
            if self._needed is None:
                self._needed = probe()
                if self._needed:
                    self.vm.enable_cap(Cap.EXIT_ON_EMULATION_FAILURE, 1)
                    self.vm.set_msr_filter(FILTERED + [(MSR_IA32_TSC_DEADLINE, lib.KVM_MSR_FILTER_WRITE)])
            return self._needed

    def kernel_params(self) -> str:
        """What a Linux kernel's command line needs on this host (empty where nothing is emulated)."""
        return " ".join(p for p, _ in KERNEL_PARAMS) if self.needed() else ""

    # --- exits ----------------------------------------------------------------------------------
    def emulation_failure(self, vcpu) -> bool:
        """Complete the instruction KVM's emulator stopped at, if it is one assisted; False if not."""
        if not self.needed():
            return False
        regs = _struct(vcpu.get_regs(), "struct kvm_regs")
        if regs.rip == SYSCALL_TRAP and vcpu.index in self.lstar:
            self._enter_kernel(vcpu, regs)
            return True
        fail = vcpu.run_area.emulation_failure
        if not (fail.flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES and fail.insn_size):
            return False
        opcode = fail.insn_bytes[0]
        if (cmpxchg := _decode_cmpxchg16b(bytes(fail.insn_bytes)[:fail.insn_size])) is not None:
            return self._cmpxchg16b(vcpu, regs, *cmpxchg)
        if opcode == INT3:
            regs.rip += 1
            vcpu.set_regs(_bytes(regs))
            self._raise(vcpu, VECTOR_BP)
        elif opcode == FWAIT:
            fpu = _struct(vcpu.get_fpu(), "struct kvm_fpu")
            if fpu.fsw & FSW_ES:
                self._raise(vcpu, VECTOR_MF)        # a fault: RIP stays at the fwait
            else:
                regs.rip += 1
                vcpu.set_regs(_bytes(regs))
        else:
            return False
        return True

    def _cmpxchg16b(self, vcpu, regs, length: int, segment: str | None, base: int | str | None,
                    index: int | None, scale: int, disp: int) -> bool:
        """Complete a decoded CMPXCHG16B m128 of kernel code (CPL0, 64-bit mode): the page-table
        entries on its way get Accessed, the last one Dirty, as the CPU sets them (a plain store:
        another vCPU setting a bit in the same entry at that instant could lose it). False where
        the CPU would fault instead (not aligned, not mapped, not writable with CR0.WP, not RAM)
        or for other code: left to the caller's message."""
        sregs = _struct(vcpu.get_sregs(), "struct kvm_sregs")
        if sregs.cs.selector & 3 or not sregs.cs.l:
            return False
        address = disp + (regs.rip + length if base == "rip" else getattr(regs, GPRS[base]) if base is not None else 0)
        address += getattr(regs, GPRS[index]) * scale if index is not None else 0
        address += getattr(sregs, segment).base if segment else 0
        address &= (1 << 64) - 1
        if address % 16:
            return False
        try:
            chain = list(paging.entries(self.memory.read, sregs.cr3, sregs.cr4, sregs.efer, address))
        except (paging.PageWalkError, LookupError):
            return False
        if not all(e & paging.PTE_P and (e & PTE_RW or not sregs.cr0 & CR0_WP) for _, _, e in chain):
            return False
        gpa = paging.leaf_address(chain[-1][0], chain[-1][2], address)
        for i, (_, at, entry) in enumerate(chain):
            wanted = entry | PTE_A | (PTE_D if i == len(chain) - 1 else 0)
            if wanted != entry:
                self.memory.write(at, struct.pack("<Q", wanted))
        found = self.memory.buffer_at(gpa, 16)
        if found is None:
            return False
        buffer, offset = found
        expected = ffi.new("__u64[2]", [regs.rax, regs.rdx])
        zf = lib.kvmsnap_cmpxchg16b(ffi.from_buffer(buffer) + offset, expected, ffi.new("__u64[2]", [regs.rbx, regs.rcx]))
        self.memory.wrote(gpa, 16)
        regs.rax, regs.rdx = expected
        regs.rflags = regs.rflags | RFLAGS_ZF if zf else regs.rflags & ~RFLAGS_ZF
        regs.rip += length
        vcpu.set_regs(_bytes(regs))
        return True

    def msr_access(self, vcpu, reason: int) -> None:
        """A guest access the MSR filter sends here: RDMSR or WRMSR of LSTAR, or (on an emulating
        KVM) WRMSR of IA32_TSC_DEADLINE, which is held to :data:`TIMER_FLOOR`."""
        msr = vcpu.run_area.msr
        if msr.index == MSR_IA32_TSC_DEADLINE:
            vcpu.set_msrs([(MSR_IA32_TSC_DEADLINE, self._deadline(vcpu, msr.data))])
        elif reason == lib.KVM_EXIT_X86_RDMSR:
            msr.data = self.lstar.get(vcpu.index, 0)
        else:
            self.redirect(vcpu, msr.data)
        msr.error = 0

    def _deadline(self, vcpu, deadline: int) -> int:
        """The guest's TSC deadline (0: disarmed), no sooner than TIMER_FLOOR from now."""
        if not deadline:
            return 0
        if self._floor_ticks is None:
            self._floor_ticks = int(vcpu.get_tsc_khz() * 1000 * TIMER_FLOOR)
        ((_, now),) = vcpu.get_msrs([MSR_IA32_TSC])
        return max(deadline, now + self._floor_ticks)

    # --- state ----------------------------------------------------------------------------------
    def redirect(self, vcpu, lstar: int) -> None:
        """The guest's LSTAR is ``lstar``: on an emulating KVM a kernel entry gets the trap in front."""
        self.lstar[vcpu.index] = lstar
        if lstar >> 63 and self.needed():
            self._map_trap(vcpu)
            lstar = SYSCALL_TRAP
        vcpu.set_msrs([(MSR_LSTAR, lstar)])

    def as_guest_sees(self, state) -> None:
        """Put the guest's LSTAR in place of the trap in a ``VcpuState`` just read."""
        state.msrs = [(i, self.lstar.get(state.index, v) if i == MSR_LSTAR else v) for i, v in state.msrs]

    def adopt(self, vcpu, state) -> None:
        """A vCPU restored from ``state``: its LSTAR gets the trap in front of it again."""
        self.redirect(vcpu, dict(state.msrs).get(MSR_LSTAR, 0))

    def _map_trap(self, vcpu) -> None:
        """Point the PTE of SYSCALL_TRAP at SYSCALL_TRAP_GPA, user-readable and executable."""
        sregs = _struct(vcpu.get_sregs(), "struct kvm_sregs")
        try:
            chain = list(paging.entries(self.memory.read, sregs.cr3, sregs.cr4, sregs.efer, SYSCALL_TRAP))
        except (paging.PageWalkError, LookupError) as e:
            raise AssistError(f"cannot assist system calls: {e}") from None
        level, at, pte = chain[-1]
        if level != 1 or not all(e & paging.PTE_P and e & PTE_U for _, _, e in chain[:-1]):
            raise AssistError(f"cannot assist system calls: the guest's page tables at {SYSCALL_TRAP:#x} "
                              "are not user-accessible (boot Linux with vsyscall=emulate)")
        want = SYSCALL_TRAP_GPA | paging.PTE_P | PTE_U | PTE_A
        if pte & paging.PTE_P and pte != want:
            raise AssistError(f"cannot assist system calls: the guest maps {SYSCALL_TRAP:#x} itself "
                              f"(PTE {pte:#x})")
        self.memory.write(at, struct.pack("<Q", want))

    def _enter_kernel(self, vcpu, regs) -> None:
        """Finish SYSCALL: kernel CS and SS from STAR, RFLAGS masked by SFMASK, RIP at the guest's
        entry (the KVM already saved RIP in RCX and RFLAGS in R11 and jumped to the trap).  A user
        process can also jump to the trap with R11 of its choice, which SYSRET loads into RFLAGS:
        R11's I/O privilege level is therefore forced to the one in RFLAGS at the trap (never 3 in a
        Linux process since 5.5)."""
        star, mask = (v for _, v in vcpu.get_msrs([MSR_STAR, MSR_SYSCALL_MASK]))
        sregs = _struct(vcpu.get_sregs(), "struct kvm_sregs")
        code = (star >> 32) & 0xFFFC
        for seg, sel, kind, long in ((sregs.cs, code, 11, 1), (sregs.ss, code + 8, 3, 0)):
            seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, sel, kind
            seg.present, seg.dpl, seg.s, seg.l, seg.db, seg.g, seg.unusable = 1, 0, 1, long, 1 - long, 1, 0
        vcpu.set_sregs(_bytes(sregs))
        regs.r11 = regs.r11 & ~RFLAGS_IOPL3 | regs.rflags & RFLAGS_IOPL3
        regs.rip = self.lstar[vcpu.index]
        regs.rflags = regs.rflags & ~mask | RFLAGS_RESERVED
        vcpu.set_regs(_bytes(regs))

    @staticmethod
    def _raise(vcpu, vector: int) -> None:
        """Deliver exception ``vector`` (no error code) on the next entry."""
        events = _struct(vcpu.get_vcpu_events(), "struct kvm_vcpu_events")
        events.exception.injected, events.exception.nr = 1, vector
        events.exception.has_error_code, events.exception.pending = 0, 0
        vcpu.set_vcpu_events(_bytes(events))


def _decode_cmpxchg16b(code: bytes):
    """``(length, segment, base, index, scale, disp)`` of a CMPXCHG16B m128 at the start of
    ``code`` ([prefixes] REX.W 0F C7 /1; segment "fs", "gs" or None; base a register number, "rip"
    or None), else None."""
    at, segment = 0, None
    while at < len(code) and code[at] in (PREFIX_LOCK, PREFIX_FS, PREFIX_GS, *IGNORED_PREFIXES):
        segment = {PREFIX_FS: "fs", PREFIX_GS: "gs"}.get(code[at], segment)
        at += 1
    if len(code) < at + 4 or code[at] & 0xF8 != 0x48 or code[at + 1:at + 3] != b"\x0f\xc7":
        return None
    rex, modrm = code[at], code[at + 3]
    mod, reg, rm = modrm >> 6, modrm >> 3 & 7, modrm & 7
    if mod == 3 or reg != 1:
        return None
    at += 4
    base, index, scale = rm | (rex & 1) << 3, None, 1
    if rm == 4:                                     # SIB
        if len(code) <= at:
            return None
        sib = code[at]
        at += 1
        scale, index, base = 1 << (sib >> 6), sib >> 3 & 7 | (rex >> 1 & 1) << 3, sib & 7 | (rex & 1) << 3
        index = None if index == 4 else index
        if mod == 0 and sib & 7 == 5:
            base = None                             # disp32, no base
    elif mod == 0 and rm == 5:
        base = "rip"                                # RIP-relative: disp32 from the next instruction
    size = 4 if mod == 2 or base in (None, "rip") else 1 if mod == 1 else 0
    if len(code) < at + size:
        return None
    disp = int.from_bytes(code[at:at + size], "little", signed=True) if size else 0
    return at + size, segment, base, index, scale, disp


def for_vm(vm, memory) -> KernelModeAssist | None:
    """The assists for a VM, or None where this host's KVM lacks the MSR filter they need (an
    emulation failure then stops the guest, with its message)."""
    try:
        return KernelModeAssist(vm, memory)
    except KvmError:
        return None
