"""The user's keyboard as the guest's serial input, for ``--console stdio``: a thread passes what
stdin gives to the UART. On a terminal, lines are still edited locally and Ctrl-C still ends
kvmsnap, but local echo is off while the guest runs (the guest echoes what it reads)."""
import os
import termios
import threading


class Keyboard:
    """Forwards stdin to ``receive(bytes)`` until EOF or ``close``."""

    def __init__(self, receive, fd: int = 0):
        self.fd, self.receive = fd, receive
        self._saved = None
        self._thread = None

    def start(self) -> None:
        if not _readable_now(self.fd):
            return
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            quiet = termios.tcgetattr(self.fd)
            quiet[3] &= ~(termios.ECHO | termios.ECHONL)
            termios.tcsetattr(self.fd, termios.TCSANOW, quiet)
        self._thread = threading.Thread(target=self._forward, name="keyboard", daemon=True)
        self._thread.start()

    def _forward(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            if not data:
                return
            self.receive(data)

    def close(self) -> None:
        """Give the terminal its settings back (the reader thread dies with the process)."""
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
            self._saved = None


def _readable_now(fd: int) -> bool:
    """stdin is open, and reading it will not stop us: not a terminal, or one we are the
    foreground of (a background job reading its terminal gets SIGTTIN)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    if not os.isatty(fd):
        return True
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
