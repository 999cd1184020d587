"""A 16550 UART at I/O port 0x3f8 (IRQ 4): the guest console. Output goes to a sink a line at a
time; input (``receive``) waits in a receive buffer the guest reads byte by byte."""
from kvmsnap.arch.x86_64.layouts import UartState
from kvmsnap.vmm.console import ConsoleUart

BASE = 0x3F8
PORTS = range(BASE, BASE + 8)
IRQ = 4

# Register offsets
THR_RBR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_DR = 0x01             # data ready: the receive buffer holds a byte
LSR_THRE_TEMT = 0x60      # transmitter empty: output is consumed at once
IIR_NONE, IIR_THRE, IIR_RDA = 0x01, 0x02, 0x04
IER_RDA, IER_THRE = 0x01, 0x02


class Uart(ConsoleUart):
    """Register model of a 16550; transmitted bytes go to ``sink`` (a binary file), a line at a time."""

    def __init__(self, sink, raise_irq=None):
        super().__init__(sink)
        self.raise_irq = raise_irq          # callable(irq) pulsing the IRQ line, or None
        self.dll, self.dlm, self.ier, self.iir, self.fcr = 0x0C, 0, 0, IIR_NONE, 0
        self.lcr, self.mcr, self.lsr, self.msr, self.scr = 0x03, 0x08, LSR_THRE_TEMT, 0xB0, 0

    def state_bytes(self) -> bytes:
        """The register file as its device blob (layouts.UartState, docs/core-format.md)."""
        return UartState.build({sub.name: getattr(self, sub.name) for sub in UartState.subcons})

    def load_state_bytes(self, blob: bytes) -> None:
        """Restore the register file from :meth:`state_bytes`."""
        state = UartState.parse(blob)
        for sub in UartState.subcons:
            setattr(self, sub.name, state[sub.name])

    def load_unread_input(self, data: bytes) -> None:
        """Restore the input from :meth:`unread_input`; the guest finds it with LSR.DR set."""
        with self._lock:
            self._rx.load(data)

    def write(self, offset: int, value: int) -> None:
        """Guest ``out`` to BASE + offset."""
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == THR_RBR_DLL and not dlab:
                self._transmit(value)
            elif offset == THR_RBR_DLL:
                self.dll = value
            elif offset == IER_DLM and dlab:
                self.dlm = value
            elif offset == IER_DLM:
                self.ier = value & 0x0F
                self._update_irq()
            elif offset == IIR_FCR:
                self.fcr = value
            elif offset == LCR:
                self.lcr = value
            elif offset == MCR:
                self.mcr = value & 0x1F
            elif offset == SCR:
                self.scr = value

    def read(self, offset: int) -> int:
        """Guest ``in`` from BASE + offset."""
        with self._lock:
            dlab = self.lcr & LCR_DLAB
            if offset == THR_RBR_DLL:
                if dlab:
                    return self.dll
                return self._rx.take()                  # the driver reads while LSR.DR
            if offset == IER_DLM:
                return self.dlm if dlab else self.ier
            if offset == IIR_FCR:
                fifo = 0xC0 if self.fcr & 1 else 0
                if self.ier & IER_RDA and self._rx:   # received data outranks THRE
                    return IIR_RDA | fifo
                iir = self.iir
                if iir == IIR_THRE:                  # reading IIR acknowledges THRE
                    self.iir = IIR_NONE
                return iir | fifo
            if offset == LSR:
                return self.lsr | (LSR_DR if self._rx else 0)
            return {LCR: self.lcr, MCR: self.mcr, MSR: self.msr, SCR: self.scr}[offset]

    def receive(self, data: bytes) -> int:
        """Input for the guest (keyboard, ``type`` over --control); returns the bytes taken."""
        with self._lock:
            taken = self._rx.receive(data)
            if taken and self.ier & IER_RDA and self.raise_irq:
                self.raise_irq(IRQ)
            return taken

    def _transmit(self, value: int) -> None:
        self._out.transmit(value)
        self._update_irq()

    def _update_irq(self) -> None:
        self.iir = IIR_THRE if self.ier & IER_THRE else IIR_NONE
        if self.raise_irq and (self.iir == IIR_THRE or self.ier & IER_RDA and self._rx):
            self.raise_irq(IRQ)



class UartInput:
    """The UART's unread input as a device of its own (Machine.device_models: "uart_input")."""

    def __init__(self, uart: Uart):
        self.state_bytes = uart.unread_input
        self.load_state_bytes = uart.load_unread_input
