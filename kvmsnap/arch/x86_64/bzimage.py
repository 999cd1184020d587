"""Linux's x86 bzImage (Documentation/arch/x86/boot.rst): its setup header, and the ELF vmlinux
compressed inside it (which kvmsnap can boot at its PVH entry instead of running the
decompressor, and scripts/lab does)."""
import gzip
import io
import lzma
import struct
from dataclasses import dataclass

HEADER_MAGIC = b"HdrS"
SETUP_HEADER_START = 0x1F1
XLF_KERNEL_64 = 1 << 0            # xloadflags: the 64-bit entry at load address + 0x200 exists
MIN_VERSION = 0x020C              # boot protocol 2.12: xloadflags
ENTRY_64_OFFSET = 0x200


class NotBootable(ValueError):
    """A bzImage kvmsnap cannot boot; the message says why."""


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header the loader uses."""
    header: bytes              # the setup header as in the image: copied into the zero page at 0x1f1
    kernel: bytes              # the protected-mode kernel (everything after the setup sectors)
    relocatable: bool
    kernel_alignment: int
    pref_address: int
    init_size: int
    initrd_addr_max: int
    cmdline_size: int


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x264 and data[0x202:0x206] == HEADER_MAGIC


def parse(data: bytes) -> SetupHeader:
    """The setup header of the bzImage ``data`` (``is_bzimage``); NotBootable unless it has the
    64-bit entry."""
    version, = struct.unpack_from("<H", data, 0x206)
    if version < MIN_VERSION:
        raise NotBootable(f"boot protocol {version >> 8}.{version & 0xFF}: kvmsnap needs 2.12 or later "
                          "(the 64-bit entry)")
    xloadflags, = struct.unpack_from("<H", data, 0x236)
    if not xloadflags & XLF_KERNEL_64:
        raise NotBootable("no 64-bit entry point (xloadflags bit 0 clear): a 32-bit kernel")
    setup_sects = data[0x1F1] or 4
    kernel_start = (setup_sects + 1) * 512
    header_end = 0x202 + data[0x201]
    if kernel_start >= len(data) or header_end > kernel_start:
        raise NotBootable(f"{setup_sects} setup sectors, but the file has {len(data)} bytes")
    initrd_addr_max, kernel_alignment, relocatable = struct.unpack_from("<IIB", data, 0x22C)
    cmdline_size, = struct.unpack_from("<I", data, 0x238)
    pref_address, init_size = struct.unpack_from("<QI", data, 0x258)
    return SetupHeader(data[SETUP_HEADER_START:header_end], data[kernel_start:], bool(relocatable),
                       kernel_alignment, pref_address, init_size, initrd_addr_max, cmdline_size)


def embedded_vmlinux(data: bytes, limit: int = 512 << 20) -> bytes | None:
    """The ELF vmlinux compressed inside a bzImage, when it is compressed with a method Python's
    standard library has (xz, gzip) and decompresses to at most ``limit`` bytes; else None."""
    if not is_bzimage(data):
        return None
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start:start + payload_length]
    try:
        if payload[:6] == b"\xfd7zXZ\x00":
            out = lzma.LZMADecompressor().decompress(payload, max_length=limit)
        elif payload[:2] == b"\x1f\x8b":
            out = gzip.GzipFile(fileobj=io.BytesIO(payload)).read(limit)
        else:
            return None
    except (lzma.LZMAError, OSError, EOFError):
        return None
    return out if out[:4] == b"\x7fELF" else None
