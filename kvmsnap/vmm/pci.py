"""PCI configuration mechanism #1 (address register at I/O port 0xcf8, data at 0xcfc-0xcff) with
one device: a host bridge at 00:00.0, so that Linux finds a working configuration space (its
sanity check wants a host bridge) and a bus with nothing else on it.  Every other function reads
as absent (all ones); writes to the configuration space are ignored.  The address register is
saved in the core.
"""
import struct
import threading

from kvmsnap.arch.x86_64.layouts import PciState

ADDRESS, DATA = 0xCF8, 0xCFC
PORTS = range(ADDRESS, DATA + 4)
ENABLE = 1 << 31
#: 00:00.0: Red Hat's "QEMU PCIe host bridge" IDs, class 06/00/00 (host bridge), header type 0.
HOST_BRIDGE = struct.pack("<HHHHIBBBB", 0x1B36, 0x0008, 0x0000, 0x0000, 0x06000000, 0, 0, 0, 0).ljust(256, b"\0")


class PciConfig:
    """The address register and the host bridge's read-only configuration space."""

    def __init__(self):
        self._lock = threading.Lock()
        self.address = 0

    def state_bytes(self) -> bytes:
        return PciState.build(dict(address=self.address))

    def load_state_bytes(self, blob: bytes) -> None:
        self.address = PciState.parse(blob).address

    def write(self, port: int, size: int, value: int) -> None:
        if port == ADDRESS and size == 4:      # byte writes to 0xcf8-0xcfb are other chipsets' registers
            with self._lock:
                self.address = value

    def read(self, port: int, size: int) -> int:
        with self._lock:
            if port == ADDRESS:
                return self.address if size == 4 else (1 << 8 * size) - 1
            if not self.address & ENABLE or port < DATA or self.address & 0x00FFFF00:
                return (1 << 8 * size) - 1     # disabled, or not bus 0 device 0 function 0
            offset = (self.address & 0xFC) + port - DATA
            return int.from_bytes(HOST_BRIDGE[offset:offset + size].ljust(size, b"\xff"), "little")
