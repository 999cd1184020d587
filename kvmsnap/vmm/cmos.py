"""The MC146818 real-time clock and its CMOS RAM at I/O ports 0x70 (index) and 0x71 (data): Linux
reads the time at boot and its rtc_cmos driver probes it.

The clock registers show the host's UTC time, in the format status register B asks for (BCD or
binary, 24- or 12-hour); the guest's writes to them are kept in the RAM but do not move the clock.
The rest of the 128 bytes is plain RAM, saved in the core with the index register.
"""
import threading
import time

from kvmsnap.arch.x86_64.layouts import CmosState

BASE = 0x70
PORTS = range(BASE, BASE + 2)
INDEX, DATA = 0, 1
SIZE = 128
SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
B_24H, B_BINARY = 0x02, 0x04
D_VALID = 0x80            # status D: the battery is good
PM = 0x80                 # 12-hour format: the hour's PM bit


def _reset_ram() -> bytearray:
    ram = bytearray(SIZE)
    ram[STATUS_A], ram[STATUS_B], ram[STATUS_D] = 0x26, B_24H, D_VALID   # 32.768 kHz, 1024 Hz
    return ram


class Cmos:
    """Register model of the RTC and CMOS RAM."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self.index = 0
        self.ram = _reset_ram()

    def state_bytes(self) -> bytes:
        """The index register and RAM as the device blob (layouts.CmosState, docs/core-format.md)."""
        return CmosState.build(dict(index=self.index, ram=bytes(self.ram)))

    def load_state_bytes(self, blob: bytes) -> None:
        state = CmosState.parse(blob)
        self.index, self.ram = state.index, bytearray(state.ram)

    def write(self, offset: int, value: int) -> None:
        with self._lock:
            if offset == INDEX:
                self.index = value & (SIZE - 1)        # bit 7 masks NMIs: nothing to mask here
            elif self.index not in (STATUS_C, STATUS_D):
                self.ram[self.index] = value

    def read(self, offset: int) -> int:
        with self._lock:
            if offset == INDEX:
                return 0xFF
            clock = self._time()
            if self.index in clock:
                return clock[self.index]
            value = self.ram[self.index]
            if self.index == STATUS_A:
                value &= 0x7F                          # never "update in progress"
            elif self.index == STATUS_C:
                self.ram[STATUS_C] = 0                 # reading C acknowledges its interrupt flags
            return value

    def _time(self) -> dict[int, int]:
        """The clock registers now, in the format status register B asks for."""
        t = time.gmtime(self._clock())
        binary, h24 = self.ram[STATUS_B] & B_BINARY, self.ram[STATUS_B] & B_24H

        def enc(n: int) -> int:
            return n if binary else (n // 10) << 4 | n % 10

        hour = enc(t.tm_hour) if h24 else enc((t.tm_hour + 11) % 12 + 1) | (PM if t.tm_hour >= 12 else 0)
        return {SECONDS: enc(t.tm_sec), MINUTES: enc(t.tm_min), HOURS: hour,
                WEEKDAY: enc((t.tm_wday + 1) % 7 + 1), DAY: enc(t.tm_mday), MONTH: enc(t.tm_mon),
                YEAR: enc(t.tm_year % 100), CENTURY: enc(t.tm_year // 100)}
