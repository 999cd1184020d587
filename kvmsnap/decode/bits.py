"""Helpers shared by the decoders: bit-flag registers, wide values, construct containers."""
import construct


class DecodeError(ValueError):
    """A note's bytes do not fit its layout (the caller names the note and its offset)."""


def flag_names(value: int, names: dict[int, str]) -> list[str]:
    """Names of the bits of ``value`` that are set, lowest bit first."""
    return [name for bit, name in sorted(names.items()) if value >> bit & 1]


def bitreg(value: int, names: dict[int, str], **fields) -> dict:
    """A register with named bits: ``{"value", "flags": [set bits], **fields}``."""
    return dict(value=value, flags=flag_names(value, names), **fields)


def field(value: int, shift: int, width: int) -> int:
    return value >> shift & ((1 << width) - 1)


def wide(data: bytes) -> str:
    """A value wider than 64 bits (little-endian bytes) as a fixed-width hex string."""
    return "0x" + bytes(reversed(data)).hex()


def u64s(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 8], "little") for i in range(0, len(data) - 7, 8)]


def plain(obj):
    """A parsed construct value as plain dicts, lists and ints (private and padding keys dropped)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()
                if not k.startswith("_") and k not in ("pad", "padding", "reserved")}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    return obj


def parse(layout: construct.Construct, data: bytes, what: str):
    """``layout.parse(data)``, with DecodeError when ``data`` is shorter than the layout."""
    size = layout.sizeof()
    if len(data) < size:
        raise DecodeError(f"{what}: {len(data)} bytes, expected at least {size}")
    return layout.parse(data[:size])
