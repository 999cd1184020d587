"""Writing a kvmsnap core: :func:`write` puts a :class:`~kvmsnap.formats.layout.Layout` and the
memory it places into an open file, sparsely, calling nothing back but ``progress`` (so a forked
child can run it); :func:`write_core` does it atomically at a path."""
import contextlib
import os
import stat
from dataclasses import dataclass, field

import blake3

from kvmsnap.formats import digest
from kvmsnap.formats.kvmsnap import check
from kvmsnap.formats.layout import MAX_VIRTUAL_SEGMENTS, Layout, plan
from kvmsnap.memory import PAGE_SIZE, GuestMemory
from kvmsnap.state import Snapshot

ZERO_CHUNK = 2 << 20                 # sparse writing: test 2 MiB chunks, then 4 KiB pages
_ZEROS = bytes(ZERO_CHUNK)
_ZERO_PAGE = _ZEROS[:PAGE_SIZE]


@dataclass
class WriteResult:
    path: str
    bytes_written: int           # bytes actually written (headers, notes, non-zero pages)
    size_on_disk: int            # st_blocks * 512 of the final file
    apparent_size: int = 0       # st_size
    virtual_segments: int = 0    # guest-virtual PT_LOADs written
    virtual_truncated: bool = False   # more than the limit, or the page walk ran out
    leftovers_removed: list = field(default_factory=list)   # temporary files of saves whose writer died
    state_blake3: str = ""       # hex BLAKE3 of the headers and notes (what an increment names its base by)


def _pwrite_all(fd: int, data, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def write(layout: Layout, memory: GuestMemory, fd: int, progress=None) -> tuple[int, bytes]:
    """Headers, notes and every non-zero page of ``memory`` into ``fd``; zero pages stay holes.
    Only the runs ``memory.data_runs`` names are read, 2 MiB at a time: straight from where the
    memory holds them when it can say (``buffer_at``: live RAM), else through a copy; a chunk
    with no zero page in it is one write, any other is written page by page.  Each chunk is
    hashed as it is written, and the digest note written last.
    ``progress(done, total)`` is called after each 2 MiB of the slots.  Returns the bytes
    written and the headers and notes as written."""
    written = _pwrite_all(fd, layout.header, 0)
    total = sum(s.size for s, _ in layout.placements)
    done = 0
    hasher = digest.ChunkHasher(layout.memory_offset, layout.total_size,
                                digest.chunk_shift(layout.total_size - layout.memory_offset))
    try:
        for slot, file_offset in layout.placements:
            runs, i = list(memory.data_runs(slot.gpa, slot.end)), 0
            for start in range(slot.gpa, slot.end, ZERO_CHUNK):
                end = min(start + ZERO_CHUNK, slot.end)
                while i < len(runs) and runs[i][1] <= start:
                    i += 1
                for run_start, run_end in runs[i:]:
                    if run_start >= end:
                        break
                    lo, hi = max(start, run_start), min(end, run_end)
                    place = memory.buffer_at(lo, hi - lo)
                    if place is None:               # a copy of its own: the hasher holds it a while
                        place = bytearray(hi - lo), 0
                        memory.read_into(lo, memoryview(place[0]))
                    at = file_offset + lo - slot.gpa
                    written += _write_nonzero(fd, *place, hi - lo, at)
                    hasher.feed(at, memoryview(place[0])[place[1]:place[1] + hi - lo])
                if progress is not None:
                    progress(done + end - slot.gpa, total)
            done += slot.size
        header = digest.seal(layout.header, layout.note_offsets, hasher.finish())
    finally:
        hasher.close()
    os.ftruncate(fd, layout.total_size)
    _pwrite_all(fd, header[layout.note_offsets[-1]:], layout.note_offsets[-1])
    return written, header


def _write_nonzero(fd: int, buffer, at: int, length: int, offset: int) -> int:
    """The non-zero pages of ``buffer[at:at + length]`` to ``offset`` of ``fd``."""
    with memoryview(buffer) as view:
        data = view[at:at + length]
        if buffer.find(_ZERO_PAGE, at, at + length) < 0:       # not a zero page in it, aligned or not
            return _pwrite_all(fd, data, offset)
        return _write_nonzero_pages(fd, data, offset) if data != _ZEROS[:length] else 0


def _write_nonzero_pages(fd: int, data: memoryview, offset: int) -> int:
    written, run_start = 0, None
    for page in range(0, len(data) + PAGE_SIZE, PAGE_SIZE):
        zero = page >= len(data) or data[page:page + PAGE_SIZE] == _ZEROS[:min(PAGE_SIZE,
                                                                               len(data) - page)]
        if not zero and run_start is None:
            run_start = page
        elif zero and run_start is not None:
            written += _pwrite_all(fd, data[run_start:page], offset + run_start)
            run_start = None
    return written


def temp_path(path, pid: int | str) -> str:
    """Where process ``pid`` writes the core bound for ``path`` before renaming it there."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{pid}")


def remove_leftovers(path) -> list[str]:
    """Remove the temporary files earlier saves to ``path`` left when their process was killed:
    only this user's regular files named as :func:`temp_path` names them, and only when no
    process has that pid any more.  Returns their paths."""
    directory, prefix = os.path.split(temp_path(path, ""))
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed                  # the save itself will name the problem
    for entry in entries:
        pid = entry.name[len(prefix):]
        if not entry.name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                    # its writer may still be at work
        except ProcessLookupError:
            pass
        except OSError:
            continue                    # a process of another user has that pid
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def write_core(snapshot: Snapshot, path, *, producer: str, host_kernel: str, progress=None,
               max_virtual_segments: int = MAX_VIRTUAL_SEGMENTS) -> WriteResult:
    """Write ``snapshot`` as a kvmsnap core at ``path``, atomically.

    The file is written as ``<dir>/.<name>.tmp-<pid>``, fsynced, renamed over ``path`` and the
    directory fsynced.  On any exception (including one raised by ``progress(done, total)``) the
    temporary file is removed and the exception re-raised: ``path`` is never left partial.
    """
    path = os.fspath(path)
    check(snapshot)
    removed = remove_leftovers(path)
    layout = plan(snapshot, producer=producer, host_kernel=host_kernel,
                  max_virtual=max_virtual_segments)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            written, header = write(layout, snapshot.memory, fd, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    st = os.stat(path)
    return WriteResult(path=path, bytes_written=written, size_on_disk=st.st_blocks * 512,
                       apparent_size=st.st_size, virtual_segments=layout.virtual_segments,
                       virtual_truncated=layout.virtual_truncated, leftovers_removed=removed,
                       state_blake3=blake3.blake3(header).hexdigest())
