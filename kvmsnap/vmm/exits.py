"""What the VMM does with each KVM_RUN exit: port I/O (x86), MMIO, and the exits that stop the guest."""
import bisect
import platform
import struct

from kvmsnap.kvm import lib
from kvmsnap.arch.x86_64 import layouts
from kvmsnap.formats.elf import offsets
from kvmsnap.vmm import acpi_pm, cmos, pci, uart

EXIT_NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("KVM_EXIT_") and not n.startswith("KVM_EXIT_IO_")}
INTERNAL_ERRORS = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "instruction emulation failed",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering another exception",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "exit while delivering an event",
    lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}
SYSTEM_EVENTS = {lib.KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown", lib.KVM_SYSTEM_EVENT_RESET: "reset",
                 lib.KVM_SYSTEM_EVENT_CRASH: "crash"}
_RIP_AT = offsets(layouts.kvm_regs)["rip"]
_CS_BASE_AT = offsets(layouts.kvm_sregs)["cs"] + offsets(layouts.kvm_segment)["base"]
#: (RIP, CS base) of an x86 vCPU just after reset
RESET_VECTOR = (0xFFF0, 0xFFFF0000)
#: Port the guest writes to for a clean power-off (QEMU's isa-debug-exit convention: any value).
POWEROFF_PORT = 0x501
#: The 8042 keyboard controller's command port, and its command that pulses the CPU reset line
#: (Linux's default way to reboot without ACPI).  Reads of it float high: no controller.
I8042_COMMAND, I8042_RESET = 0x64, 0xFE


class GuestStopped(Exception):
    """The guest ended: cleanly (``error`` False) or with an error described in the message."""

    def __init__(self, message: str, error: bool = True):
        super().__init__(message)
        self.error = error


class ExitHandler:
    """Dispatches exits of any vCPU of ``machine``; device models are shared and thread-safe.
    ``mmio``: (base, size, model) of each MMIO device, whose ``read(offset, size)`` and
    ``write(offset, size, value)`` take the access."""

    def __init__(self, machine, mmio: list[tuple[int, int, object]]):
        self.machine = machine
        self._mmio = sorted(mmio, key=lambda d: d[0])
        self._mmio_bases = [base for base, _, _ in self._mmio]

    def handle(self, vcpu, reason: int) -> None:
        run = vcpu.run_area
        if reason == lib.KVM_EXIT_IO:
            self._io(vcpu, run.io)
        elif reason == lib.KVM_EXIT_MMIO:
            self._mmio_access(run.mmio)
        elif reason in (lib.KVM_EXIT_INTR, lib.KVM_EXIT_IRQ_WINDOW_OPEN):
            pass
        elif reason == lib.KVM_EXIT_HLT:
            raise GuestStopped(f"vCPU {vcpu.index} halted with interrupts off at {_where(vcpu)}")
        elif reason == lib.KVM_EXIT_SHUTDOWN:
            raise GuestStopped(f"vCPU {vcpu.index}: triple fault (KVM_EXIT_SHUTDOWN)" + (
                "; this host's KVM reset the vCPU (kvm_amd does), so its RIP is lost"
                if _rip_cs(vcpu) == RESET_VECTOR else f" at {_where(vcpu)}"))
        elif reason == lib.KVM_EXIT_FAIL_ENTRY:
            raise GuestStopped(f"vCPU {vcpu.index}: VM entry failed, hardware reason "
                               f"{run.fail_entry.hardware_entry_failure_reason:#x} at {_where(vcpu)}")
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            assist = self.machine.assist
            if not (assist and run.internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION
                    and assist.emulation_failure(vcpu)):
                raise GuestStopped(describe_internal_error(vcpu))
        elif reason in (lib.KVM_EXIT_X86_RDMSR, lib.KVM_EXIT_X86_WRMSR) and self.machine.assist:
            self.machine.assist.msr_access(vcpu, reason)
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            kind = SYSTEM_EVENTS.get(run.system_event.type, f"event {run.system_event.type}")
            raise GuestStopped(f"guest {kind}", error=run.system_event.type == lib.KVM_SYSTEM_EVENT_CRASH)
        else:
            raise GuestStopped(f"vCPU {vcpu.index}: unhandled exit {EXIT_NAMES.get(reason, reason)} "
                               f"at {_where(vcpu)}")

    def _mmio_access(self, mmio) -> None:
        """A load or store to an MMIO device; nothing there: loads float high, stores are dropped."""
        addr, size = mmio.phys_addr, mmio.len
        i = bisect.bisect_right(self._mmio_bases, addr) - 1
        device = None
        if i >= 0 and addr + size <= self._mmio[i][0] + self._mmio[i][1]:
            base, _, device = self._mmio[i]
        if mmio.is_write:
            if device is not None:
                device.write(addr - base, size, int.from_bytes(bytes(mmio.data[0:size]), "little"))
            return
        value = device.read(addr - base, size) if device is not None else (1 << 8 * size) - 1
        mmio.data[0:size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _io(self, vcpu, io) -> None:
        buf = vcpu.run_buffer
        size, port = io.size, io.port
        for i in range(io.count):
            off = io.data_offset + i * size
            if io.direction == lib.KVM_EXIT_IO_OUT:
                self._out(port, size, int.from_bytes(buf[off:off + size], "little"))
            else:
                buf[off:off + size] = (self._in(port, size) & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _out(self, port: int, size: int, value: int) -> None:
        m = self.machine
        if port in uart.PORTS:
            m.uart.write(port - uart.BASE, value & 0xFF)
        elif port in cmos.PORTS:
            m.device_models["cmos"].write(port - cmos.BASE, value & 0xFF)
        elif port in pci.PORTS:
            m.device_models["pci"].write(port, size, value)
        elif port == POWEROFF_PORT:
            raise GuestStopped("guest powered off", error=False)
        elif port == I8042_COMMAND and value & 0xFF == I8042_RESET:
            raise GuestStopped("guest reset itself (keyboard controller)", error=False)
        elif port in acpi_pm.PORTS:
            if (asked := m.device_models["acpi_pm"].write(port, size, value)) is not None:
                raise GuestStopped(f"guest asked for {asked} through ACPI", error=False)

    def _in(self, port: int, size: int) -> int:
        m = self.machine
        if port in uart.PORTS:
            return m.uart.read(port - uart.BASE)
        if port in cmos.PORTS:
            return m.device_models["cmos"].read(port - cmos.BASE)
        if port in pci.PORTS:
            return m.device_models["pci"].read(port, size)
        if port in acpi_pm.PORTS:
            return m.device_models["acpi_pm"].read(port, size)
        return 0xFFFFFFFF                       # nothing there: the bus floats high


def _rip_cs(vcpu) -> tuple[int, int] | None:
    """(RIP, CS base), or None for a vCPU whose state cannot be read (or is not x86's)."""
    if platform.machine() != "x86_64":
        return None
    try:
        return (struct.unpack_from("<Q", vcpu.get_regs(), _RIP_AT)[0],
                struct.unpack_from("<Q", vcpu.get_sregs(), _CS_BASE_AT)[0])
    except OSError:
        return None


def _where(vcpu) -> str:
    """'RIP 0x… (CS base 0x…)' (arm64: 'PC 0x…') for messages."""
    if platform.machine() == "aarch64":
        from kvmsnap.arch.aarch64.vcpu import where
        return where(vcpu)
    if (where := _rip_cs(vcpu)) is None:
        return "an unknown RIP"
    rip, cs_base = where
    return f"RIP {rip:#x}" + (f" (CS base {cs_base:#x})" if cs_base else "")


def fault_context(vcpu, uart, symbols=None) -> str:
    """What follows a fault's message: the kernel function at RIP (with ``symbols``, a
    :class:`kvmsnap.decode.symbols.KernelSymbols`) and the console's last line."""
    context = ""
    where = _rip_cs(vcpu)
    if symbols is not None and where is not None and (name := symbols.name(where[0])):
        context += f"; RIP is in {name}"
    if uart.last_line:
        context += f"; last console line: {uart.last_line!r}"
    return context


def describe_internal_error(vcpu) -> str:
    """KVM_EXIT_INTERNAL_ERROR in words: suberror, RIP and, for emulation failures, the instruction bytes."""
    internal = vcpu.run_area.internal
    what = INTERNAL_ERRORS.get(internal.suberror, f"suberror {internal.suberror}")
    msg = f"vCPU {vcpu.index}: KVM internal error: {what} at {_where(vcpu)}"
    fail = vcpu.run_area.emulation_failure
    if (internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION and internal.ndata >= 3
            and fail.flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES):
        n = min(fail.insn_size, 15)
        msg += ", instruction bytes " + " ".join(f"{fail.insn_bytes[i]:02x}" for i in range(n))
    elif internal.ndata:
        msg += ", data " + " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
    if internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION:
        msg += " (KVM's instruction emulator does not handle it; kvm_pvm hosts emulate all guest kernel code)"
    return msg
