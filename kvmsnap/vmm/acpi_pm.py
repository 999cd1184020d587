"""The ACPI power-management registers the FADT points Linux at (kvmsnap.arch.x86_64.acpi): PM1a
status and enable (ports 0x600-0x603) and PM1a control (0x604-0x605), plus the reset register
(0x606).  No event ever becomes pending, but the enable and control registers keep what Linux
writes (ACPICA reads them back), and are saved in the core.  Writing SLP_TYP 5 with SLP_EN to
PM1a control is the guest's power-off, writing RESET_VALUE to the reset register its reset."""
import threading

from kvmsnap.arch.x86_64 import acpi
from kvmsnap.arch.x86_64.layouts import AcpiPmState

PORTS = range(acpi.PM1A_EVT_PORT, acpi.RESET_PORT + 1)
STATUS, ENABLE, CONTROL = 0, 2, 4       # byte offsets of the three 16-bit registers


class AcpiPm:
    """PM1a status/enable/control, as a 6-byte register file."""

    def __init__(self):
        self._lock = threading.Lock()
        self.enable = 0
        self.control = acpi.SCI_EN      # always in ACPI mode: there is no SMI command port

    def state_bytes(self) -> bytes:
        return AcpiPmState.build(dict(pm1_enable=self.enable, pm1_control=self.control))

    def load_state_bytes(self, blob: bytes) -> None:
        state = AcpiPmState.parse(blob)
        self.enable, self.control = state.pm1_enable, state.pm1_control

    def _registers(self) -> bytearray:
        return bytearray(bytes(2) + self.enable.to_bytes(2, "little") + self.control.to_bytes(2, "little"))

    def read(self, port: int, size: int) -> int:
        with self._lock:
            regs = self._registers()
            offset = port - acpi.PM1A_EVT_PORT
            return int.from_bytes(regs[offset:offset + size].ljust(size, b"\xff"), "little")

    def write(self, port: int, size: int, value: int) -> str | None:
        """A guest write; returns "poweroff" or "reset" when it asks for that, else None."""
        if port == acpi.RESET_PORT:
            return "reset" if value & 0xFF == acpi.RESET_VALUE else None
        with self._lock:
            regs = self._registers()
            offset = port - acpi.PM1A_EVT_PORT
            end = min(offset + size, len(regs))
            regs[offset:end] = value.to_bytes(size, "little")[:end - offset]
            self.enable = int.from_bytes(regs[ENABLE:ENABLE + 2], "little")
            control = int.from_bytes(regs[CONTROL:CONTROL + 2], "little")
            self.control = (control & ~acpi.SLP_EN) | acpi.SCI_EN     # SLP_EN reads as 0
        if control & acpi.SLP_EN and control >> acpi.SLP_TYP_SHIFT & 7 == acpi.SLP_TYP_S5:
            return "poweroff"
        return None
