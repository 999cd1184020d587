"""What a UART transmits, as the console: written to a sink a line at a time, the last line kept for
fault messages; and what the guest is typed, queued for it to read. Shared by the UART models
(``uart``: 16550, ``pl011``) through ``ConsoleUart``; they hold its lock around these."""
import collections
import threading

from kvmsnap.notes import UART_INPUT_LIMIT as INPUT_LIMIT


class ConsoleOutput:
    """Transmitted bytes, buffered to the end of a line (or 4 KiB), then written to ``sink``."""

    def __init__(self, sink):
        self.sink = sink
        self._line = bytearray()
        self._last = b""                    # the last line written out, for fault messages

    def transmit(self, value: int) -> None:
        self._line.append(value)
        if value == 0x0A or len(self._line) >= 4096:
            self.flush()

    def flush(self) -> None:
        """Write out a partial line (on pause, save and exit)."""
        if self._line:
            if self._line.strip():
                self._last = bytes(self._line[-400:])
            self.sink.write(bytes(self._line))
            self.sink.flush()
            self._line.clear()

    @property
    def last_line(self) -> str:
        """The last non-blank line the guest wrote (decoded only when asked: a fault message)."""
        return self._last.decode(errors="replace").strip()[-200:]


class ConsoleInput:
    """Bytes for the guest to read (keyboard, ``type`` over --control), oldest first, at most
    INPUT_LIMIT; what the guest has not read is saved as KVMSNAP_UART_INPUT."""

    def __init__(self):
        self._rx = collections.deque()

    def receive(self, data: bytes) -> int:
        """Queue ``data``; returns the bytes taken (the rest is dropped)."""
        taken = data[:max(0, INPUT_LIMIT - len(self._rx))]
        self._rx.extend(taken)
        return len(taken)

    def take(self) -> int:
        """The next byte, or 0 when there is none."""
        return self._rx.popleft() if self._rx else 0

    def __bool__(self) -> bool:
        return bool(self._rx)

    def unread(self) -> bytes:
        return bytes(self._rx)

    def load(self, data: bytes) -> None:
        self._rx = collections.deque(data[:INPUT_LIMIT])


class ConsoleUart:
    """What the UART models share: their console output and input, and the lock that guards the
    model (vCPUs may access it concurrently, and the control socket types into it)."""

    def __init__(self, sink):
        self.sink = sink
        self._out = ConsoleOutput(sink)
        self._rx = ConsoleInput()
        self._lock = threading.Lock()

    def unread_input(self) -> bytes:
        """Input the guest has not read yet (the device blob of KVMSNAP_UART_INPUT)."""
        with self._lock:
            return self._rx.unread()

    @property
    def last_line(self) -> str:
        return self._out.last_line

    def flush(self) -> None:
        """Write out a partial line (on pause, save and exit)."""
        with self._lock:
            self._out.flush()
