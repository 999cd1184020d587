"""``Machine``: one KVM VM with its RAM, vCPU threads, in-kernel irqchip/PIT and the UART console.

Threading: one thread per vCPU sits in KVM_RUN. ``pause`` asks every vCPU out (immediate_exit plus a
signal) and returns once each has parked outside KVM_RUN after completing any pending I/O, so the
state read then is consistent; ``resume`` lets them re-enter.
"""
import errno
import signal
import threading
import time

from .. import cpuid, loader
from ..errors import InputError, KvmsnapError
from ..kvm import Kvm, KvmError
from ..kvm._kvm import ffi, lib
from ..state import MachineConfig
from .exits import ExitHandler, GuestStopped
from .memory import GuestMemory
from .uart import Uart

TSS_ADDR, IDENTITY_MAP_ADDR = 0xFFFBD000, 0xFFFBC000
KICK_SIGNAL = signal.SIGUSR1
MIN_MEM = 2 << 20


class MachineError(KvmsnapError):
    """The machine cannot be built or stopped with an error; the message is one line for the user."""


class Machine:
    """A VM built from a ``MachineConfig``; ``boot`` loads an image, ``start`` runs the vCPUs."""

    def __init__(self, config: MachineConfig, console, memory: GuestMemory | None = None):
        if config.mem_size < MIN_MEM or config.mem_size % 4096:
            raise InputError(f"--mem {config.mem_size}: guest RAM must be a multiple of 4 KiB and at least 2 MiB")
        self.config = config
        self.vm = None
        self.vcpus = []
        self._host_views = []
        self.memory = memory
        self.kvm = Kvm()
        try:
            self._build(memory)
        except BaseException:
            self.close()
            raise
        self.uart = Uart(console, raise_irq=self._pulse_irq)
        self._exits = ExitHandler(self)
        self._cond = threading.Condition()
        self._pause_requested = False
        self._stopping = False
        self._parked = 0
        self._threads: list[threading.Thread] = []
        self.error: str | None = None       # why the guest stopped, when it failed
        self.msr_indices: list[int] | None = None   # MSRs saved in a snapshot, found on first capture
        lib.kvmsnap_install_kick_handler(KICK_SIGNAL)

    def _build(self, memory: GuestMemory | None) -> None:
        """The VM, its in-kernel devices, RAM slots and vCPUs."""
        for cap in ("KVM_CAP_IRQCHIP", "KVM_CAP_PIT2", "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_XSAVE",
                    "KVM_CAP_XCRS", "KVM_CAP_VCPU_EVENTS", "KVM_CAP_DEBUGREGS", "KVM_CAP_MP_STATE"):
            if not self.kvm.check_extension(getattr(lib, cap)):
                raise MachineError(f"this host's KVM lacks {cap}, which kvmsnap needs")
        max_vcpus = self.kvm.check_extension(lib.KVM_CAP_MAX_VCPUS) or 4  # "Default to 4" (api.rst)
        if not 1 <= self.config.vcpus <= max_vcpus:
            raise InputError(f"--cpus {self.config.vcpus}: this host's KVM allows 1 to {max_vcpus} vCPUs")
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)
        self.memory = memory or GuestMemory.anonymous(self.config.mem_size)
        for region in self.memory.regions:
            view = ffi.from_buffer(region.buffer)
            self._host_views.append(view)
            self.vm.set_user_memory_region(region.slot, region.guest_phys_addr, region.size,
                                           int(ffi.cast("uintptr_t", view)))
        self.sregs2 = bool(self.kvm.check_extension(lib.KVM_CAP_SREGS2))
        self.xsave_size = max(self.vm.check_extension(lib.KVM_CAP_XSAVE2), 4096)
        self.supported_cpuid = self.kvm.get_supported_cpuid()
        for i in range(self.config.vcpus):
            self.vcpus.append(self.vm.create_vcpu(i))

    # --- building -------------------------------------------------------------------------------
    def boot(self, image: bytes, name: str, flat_addr: int | None = None) -> None:
        """Load ``image`` and put the vCPUs in the image's entry state (docs/boot-protocol.md): every
        vCPU for a long-mode image, the BSP alone for a real-mode one."""
        entry = loader.load_image(image, name, self.memory, flat_addr)
        if entry.mode == "long":
            loader.write_boot_data(self.memory)
        for vcpu in self.vcpus:
            vcpu.set_cpuid2(cpuid.for_vcpu(self.supported_cpuid, vcpu.index))
            if entry.mode == "real" and vcpu.index:
                continue                # as on hardware, APs wait for INIT/SIPI in their reset state
            sregs = ffi.new("struct kvm_sregs2 *")
            ffi.memmove(sregs, vcpu.get_sregs2(), ffi.sizeof(sregs[0]))
            regs = ffi.new("struct kvm_regs *")
            regs.rip = entry.rip
            regs.rflags = loader.RFLAGS_RESERVED
            if entry.mode == "long":
                loader.long_mode_sregs(sregs, entry.cpl)
                regs.rdi, regs.rsi = loader.START_INFO_ADDR, vcpu.index
                if entry.cpl == 3:
                    regs.rflags |= loader.RFLAGS_IOPL3
            else:
                loader.real_mode_sregs(sregs, entry.cs_base)
            vcpu.set_sregs2(bytes(ffi.buffer(sregs)))
            vcpu.set_regs(bytes(ffi.buffer(regs)))
            if entry.mode == "long":
                self._set_xcr0(vcpu, loader.guest_xcr0(self.supported_cpuid))
            vcpu.set_mp_state(lib.KVM_MP_STATE_RUNNABLE)

    @staticmethod
    def _set_xcr0(vcpu, value: int) -> None:
        xcrs = ffi.new("struct kvm_xcrs *")
        xcrs.nr_xcrs = 1
        xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, value
        vcpu.set_xcrs(bytes(ffi.buffer(xcrs)))

    def _pulse_irq(self, irq: int) -> None:
        self.vm.irq_line(irq, 1)
        self.vm.irq_line(irq, 0)

    # --- running ---------------------------------------------------------------------------------
    def start(self, paused: bool = False) -> None:
        """Start one thread per vCPU; with ``paused`` they park before their first KVM_RUN."""
        if paused:
            self._request_pause()
        for vcpu in self.vcpus:
            t = threading.Thread(target=self._vcpu_loop, args=(vcpu,), name=f"vcpu{vcpu.index}", daemon=True)
            self._threads.append(t)
            t.start()
        if paused:
            self._wait_parked()

    def _vcpu_loop(self, vcpu) -> None:
        try:
            while True:
                if self._pause_requested or self._stopping:
                    if not self._park():
                        return
                try:
                    reason = vcpu.run()
                except KvmError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        continue
                    raise
                self._exits.handle(vcpu, reason)
        except GuestStopped as stop:
            self._fail(str(stop) if stop.error else None)
        except Exception as e:          # any failure stops the whole machine with its message
            self._fail(f"vCPU {vcpu.index}: {e}")

    def _park(self) -> bool:
        """Wait outside KVM_RUN while paused; False when the machine is stopping."""
        with self._cond:
            self._parked += 1
            self._cond.notify_all()
            while self._pause_requested and not self._stopping:
                self._cond.wait()
            self._parked -= 1
            return not self._stopping

    def _kick_all(self) -> None:
        for vcpu, t in zip(self.vcpus, self._threads):
            vcpu.run_area.immediate_exit = 1        # covers a vCPU about to enter KVM_RUN
            if t.is_alive():
                try:
                    signal.pthread_kill(t.ident, KICK_SIGNAL)   # covers one inside KVM_RUN
                except ProcessLookupError:
                    pass

    def _request_pause(self) -> None:
        with self._cond:
            self._pause_requested = True
        for vcpu in self.vcpus:
            vcpu.run_area.immediate_exit = 1

    def _wait_parked(self) -> None:
        with self._cond:
            while self._parked < sum(t.is_alive() for t in self._threads) and not self._stopping:
                self._cond.wait(0.05)

    def pause(self) -> float:
        """Stop every vCPU outside KVM_RUN with pending I/O completed; returns seconds taken."""
        t0 = time.perf_counter()
        self._request_pause()
        self._kick_all()
        self._wait_parked()
        self.uart.flush()
        return time.perf_counter() - t0

    def resume(self) -> None:
        """Let paused vCPUs run again."""
        with self._cond:
            for vcpu in self.vcpus:
                vcpu.run_area.immediate_exit = 0
            self._pause_requested = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._pause_requested

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """End the guest: every vCPU leaves its loop; returns when all threads are gone."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._kick_all()
        for t in self._threads:
            t.join()
        self.uart.flush()

    def _fail(self, message: str | None) -> None:
        with self._cond:
            if message and self.error is None:
                self.error = message
            self._stopping = True
            self._cond.notify_all()
        self._kick_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the guest stops (all vCPU threads ended); True if it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not self.running
        if done:
            self.uart.flush()
        return done

    def close(self) -> None:
        """Release every file descriptor and the guest RAM (after ``stop``); safe on a machine
        whose construction failed part-way."""
        for vcpu in self.vcpus:
            vcpu.close()
        if self.vm is not None:
            self.vm.close()
        self.kvm.close()
        self._host_views = []
        for region in self.memory.regions if self.memory else []:
            try:
                region.buffer.close()
            except BufferError:
                pass                    # a view is still alive (a caller's); the mapping goes with it
