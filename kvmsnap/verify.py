"""Is a core what was written?  Each file of a chain against its KVMSNAP_DIGEST (headers, notes and
memory chunks), and the standard notes debuggers read against the private notes restore loads:
for ``kvmsnap verify`` (:func:`verify`), and for restore, which checks the state before it creates
anything and the memory at once or while the guest runs (:class:`MemoryCheck`)."""
import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

from kvmsnap.formats import digest
from kvmsnap.formats.digest import Damage, Digest
from kvmsnap.formats.kvmsnap import decode, header, standard_notes_disagree, with_base
from kvmsnap.formats.reader import CoreFormatError, ElfCore, parse_elf

DIGESTS_SINCE = (1, 4)          # the format version from which every core carries KVMSNAP_DIGEST


@dataclass
class FileCheck:
    """One file's state (headers and notes) checked against its digest."""
    image: ElfCore
    digest: Digest | None
    damage: list[Damage] = field(default_factory=list)
    unchecked: str = ""         # why the file has no digests to be checked against

    @property
    def path(self) -> str:
        return self.image.path


def check_file(image: ElfCore) -> FileCheck:
    """The headers and notes of one kvmsnap core against its digest note; CoreFormatError if it is
    not a core of a format this kvmsnap reads (and its digests do not say it was damaged)."""
    try:
        h = header(image)
    except CoreFormatError:             # a damaged header is named as such, if the digests say so
        found = digest.find(image)
        damage = digest.check_state(image, found) if found else []
        if damage:
            return FileCheck(image, found, damage)
        raise
    last = image.notes[-1]
    try:
        found = digest.find(image)
    except CoreFormatError as e:
        return FileCheck(image, None, [Damage("digest", last.offset, last.desc_offset + last.size,
                                              e.what.rstrip("."))])
    if found is not None:
        return FileCheck(image, found, digest.check_state(image, found))
    version = (h.format_major, h.format_minor)
    if version >= DIGESTS_SINCE:
        return FileCheck(image, None, [Damage("digest", last.offset, last.desc_offset + last.size,
                                              f"the last note, {last.type_name}: a format {version[0]}."
                                              f"{version[1]} core ends with KVMSNAP_DIGEST")])
    return FileCheck(image, None, unchecked=f"format {version[0]}.{version[1]}: written before cores carried "
                                            "digests, so only its structure is checked")


def check_state(snapshot, top: FileCheck | None = None) -> tuple[list[FileCheck], list[str]]:
    """Every file of the snapshot's chain checked (base first; ``top``: the snapshot's own file,
    already checked), and the standard notes that disagree with the private ones (in a core with
    digests: an older kvmsnap may have written its standard notes otherwise)."""
    checks = [check_file(info.elf) for info in snapshot.chain] + [top if top is not None else check_file(snapshot.info.elf)]
    return checks, standard_notes_disagree(snapshot) if checks[-1].digest is not None else []


def problems(checks: list[FileCheck], disagree: list[str]) -> list[str]:
    """Everything wrong, each item naming its file."""
    return [f"{c.path}: {d}" for c in checks for d in c.damage] + [
        f"{checks[-1].path}: {d}" for d in disagree]


class MemoryCheck:
    """The memory chunks of each file of a restored chain against their digests, now (:meth:`run`)
    or from a thread while the guest runs (:meth:`start`).  Holds its own descriptors: duplicates
    of ``filenos`` (one per check, the files as read), else the paths opened again."""

    def __init__(self, checks: list[FileCheck], filenos: list[int] | None = None):
        if filenos is None:
            fds = [os.open(c.path, os.O_RDONLY | os.O_CLOEXEC) for c in checks]
        else:
            fds = [os.dup(fd) for _, fd in zip(checks, filenos)]
        self._files = [(c.image, c.digest, fd) for c, fd in zip(checks, fds)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.damage: list[tuple[str, Damage]] = []     # (file, damaged chunk)
        self.seconds = 0.0
        self._done = threading.Event()

    def run(self, progress=None) -> list[str]:
        """Check every chunk; the damage found, one item per chunk, naming the file."""
        t0 = time.monotonic()
        for image, found, fd in self._files:
            if found is None:
                continue
            self.damage += [(image.path, d) for d in digest.check_memory(image, found, fd, progress, self._stop.is_set)]
        self.seconds = time.monotonic() - t0
        self._done.set()
        return self.messages()

    def status(self) -> dict:
        """How far the check is, for the control socket's ``status``."""
        return {"done": self._done.is_set(), "damaged": len(self.damage), "seconds": round(self.seconds, 3)}

    def messages(self) -> list[str]:
        return [f"{path}: {damage}" for path, damage in self.damage]

    def start(self, on_damage) -> None:
        """:meth:`run` from a thread; ``on_damage(message)`` when it found any."""
        def check():
            if self.run():
                on_damage("; ".join(self.messages()))
        self._thread = threading.Thread(target=check, name="check memory", daemon=True)
        self._thread.start()

    def wait(self) -> list[str]:
        """The damage found, once the thread has checked everything."""
        if self._thread is not None:
            self._thread.join()
        return self.messages()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for _, _, fd in self._files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files = []


def verify(path, progress=None) -> dict:
    """Check the core at ``path`` and every base it reads through: its structure (CoreFormatError
    if that fails), each file's digests, and the standard notes against the private ones."""
    image = parse_elf(path)
    top = check_file(image)
    if top.damage:                  # its notes cannot be trusted to find a base: this file alone
        return _check_memory([top], [], progress)
    with with_base(decode(image)) as snapshot:
        return _check_memory(*check_state(snapshot, top), progress, [m.fileno() for m in snapshot.memory.layers()])


def _check_memory(checks: list[FileCheck], disagree: list[str], progress, filenos=None) -> dict:
    memory = MemoryCheck(checks, filenos)
    try:
        memory.run(progress)
    finally:
        memory.close()
    for check in checks:
        check.damage += [d for p, d in memory.damage if p == check.path]
    return _report(checks, disagree, memory.seconds)


def _report(checks: list[FileCheck], disagree: list[str], seconds: float) -> dict:
    files = [dict(path=c.path, covered=c.digest is not None, unchecked=c.unchecked or None,
                  notes=len(c.digest.notes) if c.digest else 0, chunks=len(c.digest.chunks) if c.digest else 0,
                  chunk_size=1 << c.digest.chunk_shift if c.digest else None,
                  damaged=[dict(part=d.part, offset=d.offset, end=d.end, what=str(d)) for d in c.damage])
             for c in checks]
    return dict(path=checks[-1].path, files=files, standard_notes=disagree, memory_seconds=round(seconds, 3),
                intact=not disagree and all(f["covered"] and not f["damaged"] for f in files))
