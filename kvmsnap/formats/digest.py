"""Integrity digests of a kvmsnap core (``KVMSNAP_DIGEST``, format 1.4, docs/core-format.md): BLAKE3
of the ELF and program headers, of each note before it, and of each chunk of the file from the page
after the notes to its end (all the guest memory the file stores).  The writer hashes chunks as it
writes them (:class:`ChunkHasher`) and fills the note in last (:func:`seal`); :func:`check_state`
and :func:`check_memory` name each damaged part of a file."""
import collections
import concurrent.futures
import functools
import os
from dataclasses import dataclass

import blake3

from kvmsnap import notes as N
from kvmsnap.formats import elf
from kvmsnap.formats.reader import CoreFormatError, ElfCore, Note, payload
from kvmsnap.memory import file_data_runs

CHUNK_SHIFT = 21                 # memory chunks of 2 MiB...
MAX_CHUNKS = 1 << 16             # ...doubled until there are at most this many (128 GiB: 4 MiB chunks)
SIZE = N.BLAKE3_SIZE
_IN_FLIGHT = 8                   # chunks queued for the hashing thread at most
_ZEROS = bytes(1 << 20)


def chunk_shift(memory_size: int) -> int:
    """log2 of the chunk size for ``memory_size`` bytes of memory."""
    shift = CHUNK_SHIFT
    while memory_size > MAX_CHUNKS << shift:
        shift += 1
    return shift


def placeholder(nr_notes: int, memory_offset: int, memory_size: int) -> bytes:
    """The note's descriptor with every digest zero, as long as :func:`seal` will make it."""
    shift = chunk_shift(memory_size)
    nr_chunks = -(-memory_size >> shift)
    return N.KvmsnapDigest.build(dict(chunk_shift=shift, memory_offset=memory_offset, reserved=0,
                                      headers=bytes(SIZE), notes=bytes(SIZE * nr_notes),
                                      chunks=bytes(SIZE * nr_chunks), own=bytes(SIZE)))


def seal(header: bytes, note_offsets: list[int], chunks: list[bytes]) -> bytes:
    """``header`` (ELF header, program headers, notes, the last note a :func:`placeholder`) with
    that note filled in: the digests of the headers, of each other note and of each chunk."""
    at = note_offsets[-1]
    desc_at = at + elf.Elf64_Nhdr.sizeof() + elf.align(int.from_bytes(header[at:at + 4], "little"), 4)
    d = N.KvmsnapDigest.parse(header[desc_at:])
    notes = b"".join(blake3.blake3(header[a:b]).digest() for a, b in zip(note_offsets, note_offsets[1:]))
    desc = N.KvmsnapDigest.build(dict(chunk_shift=d.chunk_shift, memory_offset=d.memory_offset, reserved=0,
                                      headers=blake3.blake3(header[:note_offsets[0]]).digest(), notes=notes,
                                      chunks=b"".join(chunks), own=bytes(SIZE)))
    return header[:desc_at] + desc[:-SIZE] + blake3.blake3(desc[:-SIZE]).digest()


class ChunkHasher:
    """The BLAKE3 of each ``1 << shift``-byte chunk of the file range ``[start, end)``, fed as
    pieces in ascending file order; bytes never fed are zero (holes).  A thread hashes while the
    feeder writes; a piece's buffer must not change until its chunk is hashed (:meth:`finish`)."""

    def __init__(self, start: int, end: int, shift: int):
        self._start, self._end, self._shift = start, end, shift
        self._digests: list = []            # a digest, or the future of one, per chunk so far
        self._pieces: list = []             # (offset, memoryview) of the chunk being fed
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="digest")
        self._in_flight = collections.deque()

    def feed(self, offset: int, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            index = (offset - self._start) >> self._shift
            self._close_chunks(index)
            take = min(len(view), self._chunk_start(index + 1) - offset)
            self._pieces.append((offset, view[:take]))
            offset, view = offset + take, view[take:]

    def finish(self) -> list[bytes]:
        """Every chunk's digest, in file order."""
        self._close_chunks(-(-(self._end - self._start) >> self._shift))
        self._pool.shutdown()
        return [d if isinstance(d, bytes) else d.result() for d in self._digests]

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def _chunk_start(self, index: int) -> int:
        return min(self._start + (index << self._shift), self._end)

    def _close_chunks(self, upto: int) -> None:
        """Hash (or queue) every chunk before ``upto``."""
        while len(self._digests) < upto:
            index = len(self._digests)
            lo, hi = self._chunk_start(index), self._chunk_start(index + 1)
            if not self._pieces:
                self._digests.append(zero_digest(hi - lo))
                continue
            if len(self._in_flight) >= _IN_FLIGHT:
                self._in_flight.popleft().result()
            future = self._pool.submit(_hash_pieces, lo, hi, self._pieces)
            self._in_flight.append(future)
            self._digests.append(future)
            self._pieces = []


def _hash_pieces(lo: int, hi: int, pieces) -> bytes:
    h = blake3.blake3()
    at = lo
    for offset, view in pieces:
        _update_zeros(h, offset - at)
        h.update(view)
        at = offset + len(view)
    _update_zeros(h, hi - at)
    return h.digest()


def _update_zeros(h, n: int) -> None:
    while n > 0:
        h.update(_ZEROS[:min(n, len(_ZEROS))])
        n -= len(_ZEROS)


@functools.lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    h = blake3.blake3()
    _update_zeros(h, length)
    return h.digest()


# -- checking -------------------------------------------------------------------------------------

@dataclass
class Digest:
    """A core's KVMSNAP_DIGEST, its file range, and the notes it covers."""
    note: Note
    chunk_shift: int
    memory_offset: int
    headers: bytes
    notes: list[bytes]
    chunks: list[bytes]


@dataclass
class Damage:
    """A part of a file whose bytes are not those its digest was made from."""
    part: str              # "digest", "headers", "note" or "memory"
    offset: int            # its file range
    end: int
    what: str              # in words, e.g. "vCPU 1 KVMSNAP_MSRS" or "guest-physical 0x200000..0x400000"

    def __str__(self) -> str:
        return f"{self.what} (file offset 0x{self.offset:x}..0x{self.end:x}) does not match its digest"


def find(image: ElfCore) -> Digest | None:
    """The core's digest note (its last), decoded and checked against its own digest; None if the
    last note is not one.  CoreFormatError if it is malformed or damaged."""
    note = image.notes[-1] if image.notes else None
    if note is None or (note.owner, note.type) != (N.OWNER_KVMSNAP, N.KVMSNAP_DIGEST):
        return None
    d = payload(image.path, note, N.KvmsnapDigest)
    own_at = note.desc_offset + d.size - SIZE
    if blake3.blake3(note.desc[:d.size - SIZE]).digest() != d.own:
        raise CoreFormatError(image.path, own_at, "KVMSNAP_DIGEST is damaged: its own BLAKE3 does not match, so "
                                                  "nothing in the file can be checked")
    if not 12 <= d.chunk_shift <= 40 or d.memory_offset > image.file_size:
        raise CoreFormatError(image.path, note.desc_offset, f"KVMSNAP_DIGEST: chunk shift {d.chunk_shift} or memory "
                                                            f"offset 0x{d.memory_offset:x} out of range")
    if -(-(image.file_size - d.memory_offset) >> d.chunk_shift) != d.nr_chunks:
        raise CoreFormatError(image.path, note.desc_offset, f"KVMSNAP_DIGEST covers {d.nr_chunks} chunks of memory, "
                                                            f"but the file holds {image.file_size - d.memory_offset} "
                                                            "bytes after its notes (truncated or extended?)")
    return Digest(note, d.chunk_shift, d.memory_offset, bytes(d.headers), _split(d.notes), _split(d.chunks))


def _split(data: bytes) -> list[bytes]:
    return [bytes(data[i:i + SIZE]) for i in range(0, len(data), SIZE)]


def check_state(image: ElfCore, digest: Digest) -> list[Damage]:
    """Every damaged part among the headers and the notes the digest covers."""
    notes = image.notes[:-1]
    with open(image.path, "rb") as f:
        fd = f.fileno()
        first = notes[0].offset if notes else digest.note.offset
        damage = [] if blake3.blake3(os.pread(fd, first, 0)).digest() == digest.headers else [
            Damage("headers", 0, first, "the ELF header and program headers")]
        if len(notes) != len(digest.notes):
            end = digest.note.offset
            return damage + [Damage("note", first, end, f"the notes ({len(notes)} found, {len(digest.notes)} "
                                                        "written)")]
        bounds = [n.offset for n in notes] + [digest.note.offset]
        vcpu = -1                                   # each NT_PRSTATUS opens a vCPU's notes
        for note, expected, lo, hi in zip(notes, digest.notes, bounds, bounds[1:]):
            vcpu += (note.owner, note.type) == (N.OWNER_CORE, N.NT_PRSTATUS)
            if blake3.blake3(os.pread(fd, hi - lo, lo)).digest() != expected:
                who = f"vCPU {vcpu} " if vcpu >= 0 else ""
                damage.append(Damage("note", lo, hi, f"{who}{note.type_name} note"))
    return damage


def check_memory(image: ElfCore, digest: Digest, fd: int, progress=None, stop=None):
    """Yield a Damage for each chunk of memory whose bytes differ from the digest; chunks that are
    holes in the file are compared without reading.  ``progress(done, total)`` after each chunk;
    ``stop()`` true ends the check early."""
    total = image.file_size - digest.memory_offset
    size = 1 << digest.chunk_shift
    buffer = bytearray(size)
    for index, expected in enumerate(digest.chunks):
        if stop is not None and stop():
            return
        lo = digest.memory_offset + (index << digest.chunk_shift)
        hi = min(lo + size, image.file_size)
        h = blake3.blake3()
        at = lo
        with memoryview(buffer) as view:
            for start, end in file_data_runs(fd, lo, hi):
                _update_zeros(h, start - at)
                n = os.preadv(fd, [view[:end - start]], start)
                h.update(view[:n])
                at = start + n
        _update_zeros(h, hi - at)
        if h.digest() != expected:
            yield Damage("memory", lo, hi, _memory_words(image, lo, hi))
        if progress is not None:
            progress(hi - digest.memory_offset, total)


def _memory_words(image: ElfCore, lo: int, hi: int) -> str:
    """Which guest addresses a file range holds, by the physical PT_LOADs (any, if none is marked)."""
    loads = [s for s in image.loads if s.physical] or image.loads
    held = [f"{s.paddr + max(lo, s.offset) - s.offset:#x}..{s.paddr + min(hi, s.offset + s.filesz) - s.offset:#x}"
            for s in loads if s.offset < hi and lo < s.offset + s.filesz]
    return "memory" + (f" at guest-physical {', '.join(held[:4])}" if held else " (between segments)")
