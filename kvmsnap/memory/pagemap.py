"""Which pages of an anonymous private mapping were ever touched, from /proc/self/pagemap: a page
neither present nor swapped out reads as zeros, so a writer need not read it at all."""
import re

from kvmsnap.memory import PAGE_SIZE

_PRESENT_OR_SWAPPED = bytes((b & 0xc0) for b in range(256))   # pagemap bits 62, 63 (byte 7)
_TOUCHED_RUN = re.compile(rb"[^\x00]+")


def touched_runs(address: int, size: int) -> list[tuple[int, int]] | None:
    """``(start, end)`` byte offsets of the touched page runs of the mapping at host ``address``;
    None when that cannot be known (not page-aligned, not anonymous and private, no /proc)."""
    if address % PAGE_SIZE or size % PAGE_SIZE:
        return None
    end = address + size
    try:
        with open("/proc/self/maps") as maps:
            covered = address
            for line in maps:
                fields = line.split()
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if hi <= covered or lo > covered:
                    continue
                anonymous = fields[4] == "0" and (len(fields) < 6 or fields[5] == "[heap]")
                if fields[1][3] != "p" or not anonymous:
                    return None
                covered = hi
                if covered >= end:
                    break
            if covered < end:
                return None
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(address // PAGE_SIZE * 8)
            entries = pagemap.read(size // PAGE_SIZE * 8)
    except OSError:
        return None
    if len(entries) != size // PAGE_SIZE * 8:
        return None
    touched = entries[7::8].translate(_PRESENT_OR_SWAPPED)
    return [(m.start() * PAGE_SIZE, m.end() * PAGE_SIZE) for m in _TOUCHED_RUN.finditer(touched)]
