"""``Machine``: one KVM VM with its RAM, vCPU threads, in-kernel irqchip/PIT and the UART console.

Threading: one thread per vCPU sits in KVM_RUN. ``pause`` asks every vCPU out (immediate_exit plus a
signal) and returns once each has parked outside KVM_RUN after completing any pending I/O, so the
state read then is consistent; ``resume`` lets them re-enter.
"""
import errno
import signal
import threading
import time

from kvmsnap import arch
from kvmsnap.errors import InputError, KvmsnapError
from kvmsnap.kvm import Kvm, KvmError, lib, max_vcpus
from kvmsnap.memory.dirty import DirtyLog
from kvmsnap.memory.ram import GuestRam
from kvmsnap.state import MachineConfig
from kvmsnap.vmm.exits import ExitHandler, GuestStopped, fault_context

KICK_SIGNAL = signal.SIGUSR1
MIN_MEM = 2 << 20


class MachineError(KvmsnapError):
    """The machine cannot be built or stopped with an error; the message is one line for the user."""


class HostArch:
    """The live modules of this host's architecture: ``vm``, ``vcpu``, ``boot``; ``assist`` where
    the architecture has one (x86: a KVM that emulates guest kernel mode), else None."""

    def __init__(self):
        package = arch.host()
        self.name = package.NAME
        self.vm, self.vcpu, self.boot = (arch.live(package, m) for m in ("vm", "vcpu", "boot"))
        self.assist = arch.live(package, "assist") if package.ASSISTED else None


class Machine:
    """A VM built from a ``MachineConfig``; ``boot`` loads an image, ``start`` runs the vCPUs."""

    def __init__(self, config: MachineConfig, console, memory: GuestRam | None = None,
                 saved_msrs: list[int] | None = None, saved_vcpus: list | None = None):
        """``memory``: RAM to use (restore), else fresh RAM; ``saved_msrs`` (x86): the MSRs a snapshot
        of this machine holds (restore keeps the core's), else every listed MSR that reads back;
        ``saved_vcpus``: the vCPU states a restore will load (what the vCPUs are created with)."""
        if config.mem_size < MIN_MEM or config.mem_size % 4096:
            raise InputError(f"{config.mem_size} bytes of guest RAM: it must be a multiple of 4 KiB "
                             "and at least 2 MiB", setting="mem_size")
        self.config = config
        self.arch = HostArch()
        self.vm = None
        self.vcpus = []
        self.irqchip = None         # the in-kernel interrupt controller's device, where it has one (arm64)
        self.assist = None          # what the VMM completes for a KVM that emulates guest kernel mode
        self.memory = memory
        self.memory_check = None    # a restore's check of RAM against the core's digests, while it runs
        self.restore_began: float | None = None    # time.monotonic() when the restore building it began
        self.first_run_at: float | None = None     # ... and when a vCPU first entered KVM_RUN
        self.kvm = Kvm()
        try:
            self._build(memory, saved_vcpus)
        except BaseException:
            self.close()
            raise
        #: the VMM's own devices, by their name in Snapshot.devices; "uart" is the console
        self.device_models = self.arch.vm.device_models(self, console)
        self.uart = self.device_models["uart"]
        self._exits = ExitHandler(self, self.arch.vm.mmio_devices(self))
        self._cond = threading.Condition()
        self._pause_requested = False
        self._stopping = False
        self._parked = 0
        self._threads: list[threading.Thread] = []
        self.error: str | None = None       # why the guest stopped, when it failed
        self.symbols = None                 # the guest kernel's KernelSymbols, for fault messages
        self._saved_msrs = saved_msrs
        lib.kvmsnap_install_kick_handler(KICK_SIGNAL)

    def _build(self, memory: GuestRam | None, saved_vcpus: list | None) -> None:
        """The VM, its in-kernel devices, RAM slots and vCPUs."""
        limit = max_vcpus(self.kvm)
        if not 1 <= self.config.vcpus <= limit:
            raise InputError(f"{self.config.vcpus} vCPUs: this host's KVM allows 1 to {limit}",
                             setting="vcpus")
        self.vm = self.kvm.create_vm()
        self.arch.vm.setup_vm(self.kvm, self.vm)
        self.memory = memory or GuestRam.anonymous(self.arch.vm.ram_layout(self.config.mem_size))
        for slot, (_, address) in zip(self.memory.slots(), self.memory.buffers()):
            self.vm.set_user_memory_region(slot.slot, slot.gpa, slot.size, address)
        self.dirty = DirtyLog(self.vm, self.memory)
        if self.arch.assist:
            self.assist = self.arch.assist.for_vm(self.vm, self.memory)
        self.vcpu_caps = self.arch.vcpu.VcpuCaps.of(self.kvm, self.vm)
        for i in range(self.config.vcpus):
            self.vcpus.append(self.vm.create_vcpu(i))
        self.arch.vm.setup_vcpus(self, saved_vcpus)

    @property
    def saved_msrs(self) -> list[int]:
        """The MSRs a snapshot of this machine holds: given (restore keeps the core's), else every
        listed MSR that reads back once the guest's CPUID is set (found on first use)."""
        if self._saved_msrs is None:
            self._saved_msrs = self.arch.vcpu.readable_msrs(self.vcpus[0],
                                                            self.kvm.get_msr_index_list())
        return self._saved_msrs

    # --- building -------------------------------------------------------------------------------
    def boot(self, image: bytes, name: str, flat_addr: int | None = None, cmdline: str = "",
             initrd: bytes | None = None) -> list[str]:
        """Load ``image`` and put the vCPUs in its entry state (docs/boot-protocol.md); a Linux
        kernel gets ``cmdline`` and ``initrd``. Returns notes for the user: what was added, and why."""
        return self.arch.boot.boot_machine(self, image, name, flat_addr, cmdline, initrd)

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
            pending = False             # the last exit was handled but KVM has not completed it
            while True:
                if self._pause_requested or self._stopping:
                    if pending:
                        self._complete(vcpu)
                        pending = False
                    if not self._park():
                        return
                if self.first_run_at is None:
                    self.first_run_at = time.monotonic()
                try:
                    reason = vcpu.run()
                except KvmError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        pending = False
                        continue
                    raise
                self._exits.handle(vcpu, reason)
                pending = True
        except GuestStopped as stop:
            self.fail(str(stop) + fault_context(vcpu, self.uart, self.symbols) if stop.error else None)
        except Exception as e:          # any failure stops the whole machine with its message
            self.fail(f"vCPU {vcpu.index}: {e}")

    def _complete(self, vcpu) -> None:
        """Let KVM finish the exit just handled (api.rst: an I/O or MMIO exit is complete, and RIP
        past the instruction, only once KVM_RUN is entered again) without running the guest on:
        immediate_exit is set, so KVM_RUN completes it and returns EINTR. A state read before that
        holds the instruction still to do, which a restore would run a second time (kvm_amd).
        The completion may itself exit (the next round of a string I/O): handled in turn."""
        vcpu.run_area.immediate_exit = 1        # also if this thread saw the request before it
        while True:
            try:
                reason = vcpu.run()
            except KvmError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    return
                raise
            self._exits.handle(vcpu, reason)

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

    def fail(self, message: str | None) -> None:
        """Stop the guest (from any thread); ``message`` is why, unless an error came first."""
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
        if self.memory_check is not None:
            self.memory_check.close()
        for vcpu in self.vcpus:
            vcpu.close()
        if self.irqchip is not None:
            self.irqchip.close()
        if self.vm is not None:
            self.vm.close()
        self.kvm.close()
        if self.memory is not None:
            self.memory.close()
