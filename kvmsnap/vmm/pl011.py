"""An Arm PL011 UART (MMIO, 4 KiB of registers): the arm64 guest console. Output goes to a sink a
line at a time; input (``receive``) waits in a receive FIFO the guest reads byte by byte. Its
interrupt is a level: (raw status & mask) != 0, given to ``set_irq`` whenever it may change."""
from kvmsnap.arch.aarch64.layouts import PL011_REGS, Pl011State
from kvmsnap.vmm.console import ConsoleUart

# Register offsets (PL011 TRM, table 3-1)
DR, RSR, FR, ILPR, IBRD, FBRD, LCR_H, CR, IFLS, IMSC, RIS, MIS, ICR, DMACR = (
    0x000, 0x004, 0x018, 0x020, 0x024, 0x028, 0x02C, 0x030, 0x034, 0x038, 0x03C, 0x040, 0x044, 0x048)
FR_RXFE, FR_TXFE = 1 << 4, 1 << 7          # receive FIFO empty; transmit FIFO empty (always)
INT_RX, INT_TX, INT_RT = 1 << 4, 1 << 5, 1 << 6
#: PeriphID0-3 and PCellID0-3 at 0xFE0..0xFFC: a PL011 r1p5, as QEMU's (Linux's AMBA bus matches them).
ID_REGS = dict(zip(range(0xFE0, 0x1000, 4), (0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1)))
_WRITABLE = {IBRD: "ibrd", FBRD: "fbrd", LCR_H: "lcr_h", CR: "cr", IFLS: "ifls", DMACR: "dmacr",
             ILPR: "ilpr"}


class Pl011(ConsoleUart):
    """Register model of a PL011 whose FIFOs never fill: transmitted bytes go to ``sink`` at once."""

    def __init__(self, sink, set_irq=None):
        super().__init__(sink)
        self.set_irq = set_irq              # callable(level) for the interrupt line, or None
        self.ibrd, self.fbrd, self.lcr_h, self.cr, self.ifls = 0, 0, 0, 0x300, 0x12
        self.imsc, self.dmacr, self.ilpr, self.rsr = 0, 0, 0, 0
        self.tx_ris = INT_TX                # the transmit interrupt until cleared (ICR) or a byte is sent
        self._level = False

    def state_bytes(self) -> bytes:
        """The registers as their device blob (layouts.Pl011State, docs/core-format.md)."""
        return Pl011State.build({name: getattr(self, name) for name in PL011_REGS})

    def load_state_bytes(self, blob: bytes) -> None:
        """Restore the registers from :meth:`state_bytes`."""
        state = Pl011State.parse(blob)
        with self._lock:
            for name in PL011_REGS:
                setattr(self, name, state[name])
            self._update_irq()

    def load_unread_input(self, data: bytes) -> None:
        with self._lock:
            self._rx.load(data)
            self._update_irq()

    def _ris(self) -> int:
        return self.tx_ris | (INT_RX if self._rx else 0)

    def read(self, offset: int, size: int) -> int:
        """A guest load from BASE + offset."""
        with self._lock:
            if offset == DR:
                value = self._rx.take()
                self._update_irq()
                return value
            if offset == FR:
                return FR_TXFE | (0 if self._rx else FR_RXFE)
            if offset == RIS:
                return self._ris()
            if offset == MIS:
                return self._ris() & self.imsc
            if offset == IMSC:
                return self.imsc
            if offset == RSR:
                return self.rsr
            if offset in _WRITABLE:
                return getattr(self, _WRITABLE[offset])
            return ID_REGS.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest store to BASE + offset."""
        with self._lock:
            if offset == DR:
                self._out.transmit(value & 0xFF)
                self.tx_ris = INT_TX        # the FIFO drained at once: below its trigger level again
            elif offset == IMSC:
                self.imsc = value & 0x7FF
            elif offset == ICR:
                self.tx_ris &= ~value
            elif offset == RSR:
                self.rsr = 0
            elif offset in _WRITABLE:
                setattr(self, _WRITABLE[offset], value & 0xFFFF)
            self._update_irq()

    def receive(self, data: bytes) -> int:
        """Input for the guest (keyboard, ``type`` over --control); returns the bytes taken."""
        with self._lock:
            taken = self._rx.receive(data)
            self._update_irq()
            return taken

    def _update_irq(self) -> None:
        level = bool(self._ris() & self.imsc)
        if level != self._level and self.set_irq:
            self._level = level
            self.set_irq(level)
