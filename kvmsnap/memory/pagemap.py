"""Which pages of a private mapping may differ from what it was created with, from
/proc/self/pagemap, so that a writer need not read the rest: a page of anonymous memory neither
present nor swapped out reads as zeros; a page of a private file mapping that was never written
(not copied on write) still holds the file's bytes.  RAM detached from its core mixes both kinds."""
import re

from kvmsnap.memory import PAGE_SIZE

# Byte 7 of a pagemap entry: bit 63 present (0x80), 62 swapped (0x40), 61 file page (0x20).
_TOUCHED = bytes(b & 0xc0 for b in range(256))                                    # present or swapped
_WRITTEN = bytes(1 if b & 0x40 or b & 0xa0 == 0x80 else 0 for b in range(256))    # anonymous: copied
_RUN = re.compile(rb"[^\x00]+")


def touched_runs(address: int, size: int) -> list[tuple[int, int]] | None:
    """``(start, end)`` byte offsets of the pages of the private mapping at host ``address`` that
    this process holds itself: in anonymous parts, every page present or swapped (the others read
    as zeros); in parts mapped from a file, the pages copied on write (the others hold the file's
    bytes).  None when that cannot be known (not page-aligned, shared, no /proc)."""
    return _runs(address, size, {True: _TOUCHED, False: _WRITTEN})


def written_runs(address: int, size: int) -> list[tuple[int, int]] | None:
    """``(start, end)`` byte offsets of the pages of the private file mapping at host ``address``
    that were written (copied on write, anonymous now); every other page holds the file's bytes.
    None when that cannot be known (or part of the range is not mapped from a file)."""
    return _runs(address, size, {False: _WRITTEN})


def _runs(address: int, size: int, tables: dict[bool, bytes]) -> list[tuple[int, int]] | None:
    """The runs of pages whose pagemap byte 7 maps to non-zero through the table for their
    mapping's kind (``tables[anonymous]``; a kind without a table: None)."""
    if address % PAGE_SIZE or size % PAGE_SIZE:
        return None
    end = address + size
    parts = []                                   # (first page, end page, table)
    try:
        with open("/proc/self/maps") as maps:
            covered = address
            for line in maps:
                fields = line.split()
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if hi <= covered or lo > covered:
                    continue
                table = tables.get(fields[4] == "0" and (len(fields) < 6 or fields[5] == "[heap]"))
                if fields[1][3] != "p" or table is None:
                    return None
                parts.append(((covered - address) // PAGE_SIZE, (min(hi, end) - address) // PAGE_SIZE, table))
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
    flags = entries[7::8]
    pages = b"".join(flags[first:last].translate(table) for first, last, table in parts)
    return [(m.start() * PAGE_SIZE, m.end() * PAGE_SIZE) for m in _RUN.finditer(pages)]
