"""Guest memory, one interface for every source: live RAM (:mod:`.ram`) and one core file
(:mod:`.core`); a chain of cores is a third implementation of the same class.

A :class:`GuestMemory` is a sorted list of non-overlapping :class:`Extent` s of one address space
(guest-physical, or a process's addresses for process cores).  Its users (the core writer, the
page walker, restore, ``mem``, ``diff`` and ``inspect``) see ``slots()``, ``read(addr, n)`` and
``data_runs(start, end)``; a subclass only says how to fetch the bytes of one extent.
"""
import bisect
import errno
import os
from typing import NamedTuple

from kvmsnap.errors import KvmsnapError

PAGE_SIZE = 4096


class AddressError(KvmsnapError, LookupError):
    """An address the memory does not hold: not RAM, not mapped, or not in the file."""


class Slot(NamedTuple):
    """One KVM memory slot: guest-physical ``[gpa, gpa + size)``."""
    slot: int
    gpa: int
    size: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


class Extent(NamedTuple):
    """``[start, end)`` of the address space, whose bytes below ``held`` can be fetched through
    ``backing`` (a buffer, or a file offset of ``start``); ``origin`` is what it came from (a slot
    or a segment), for messages."""
    start: int
    end: int
    held: int
    backing: object
    origin: object


class GuestMemory:
    """Memory of one guest (or process): ``name`` labels errors, ``space`` names the addresses."""
    space = "guest-physical"

    def __init__(self, name: str, extents: list[Extent]):
        self.name = name
        self._extents = sorted(extents, key=lambda e: e.start)
        self._starts = [e.start for e in self._extents]

    # -- what subclasses provide ----------------------------------------------------------------
    def slots(self) -> list[Slot]:
        """The KVM memory slots this memory holds (none for foreign and process cores)."""
        return []

    def _fetch(self, extent: Extent, addr: int, out: memoryview) -> None:
        """Copy the bytes at ``addr`` (inside ``extent``, below ``held``) into ``out``."""
        raise NotImplementedError

    def data_runs(self, start: int, end: int):
        """``(start, end)`` ranges within ``[start, end)`` that may hold non-zero bytes; every
        byte outside them is known to be zero.  Default: all of it."""
        yield start, end

    def buffer_at(self, addr: int, length: int):
        """``(buffer, offset)``: where ``[addr, addr + length)`` lies in place, in a buffer with
        ``find``, for a reader that needs no copy; None (the default) when it must be fetched."""
        return None

    # -- one read loop for all ------------------------------------------------------------------
    def extents(self) -> list[Extent]:
        return list(self._extents)

    def extents_in(self, start: int, end: int):
        """The extents overlapping ``[start, end)``, in address order."""
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i < len(self._extents) and self._extents[i].start < end:
            if self._extents[i].end > start:
                yield self._extents[i]
            i += 1

    def extent_at(self, addr: int) -> Extent | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._extents[i].end:
            return self._extents[i]
        return None

    def contains(self, addr: int, length: int) -> bool:
        """True when every byte of ``[addr, addr + length)`` can be read."""
        end = addr + length
        while addr < end:
            extent = self.extent_at(addr)
            if extent is None or addr >= extent.held:
                return False
            addr = extent.held
        return True

    def read(self, addr: int, length: int) -> bytes:
        """``length`` bytes at ``addr``; :class:`AddressError` naming the first byte not held."""
        out = bytearray(length)
        self.read_into(addr, memoryview(out))
        return bytes(out)

    def read_into(self, addr: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes at ``addr``."""
        pos = 0
        while pos < len(out):
            here = addr + pos
            extent = self.extent_at(here)
            if extent is None:
                raise AddressError(f"{self.name}: {self.space} 0x{here:x} is not "
                                   f"{self._where()}")
            if here >= extent.held:
                raise AddressError(self._not_held(here, extent))
            n = min(len(out) - pos, extent.held - here)
            self._fetch(extent, here, out[pos:pos + n])
            pos += n

    def _where(self) -> str:
        return "in guest RAM"

    def _not_held(self, addr: int, extent: Extent) -> str:
        return f"{self.name}: {self.space} 0x{addr:x} is not held"

    def close(self) -> None:
        """Release what the memory holds open (files, mappings)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def file_data_runs(fileno: int, start: int, end: int):
    """(start, end) file ranges holding data within [start, end); all of it if the file system
    cannot tell holes (SEEK_DATA/SEEK_HOLE)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fileno, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:           # only a hole remains
                return
            yield pos, end
            return
        if data >= end:
            return
        hole = min(os.lseek(fileno, data, os.SEEK_HOLE), end)
        yield data, hole
        pos = hole


def union(*lists: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The sorted, merged union of lists of ``(start, end)`` runs."""
    merged: list[list[int]] = []
    for start, end in sorted(run for runs in lists for run in runs):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]
