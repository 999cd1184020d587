"""Guest RAM filled from a file behind the running guest, through a userfaultfd: the regions are
registered for missing-page faults, and a thread running C code (``kvmsnap_uffd_fill`` in
kvmsnap/kvm/build_ffi.py) brings the file's data in a chunk at a time: read into a staging mapping,
then moved into place whole (mremap), or copied with UFFDIO_COPY where it cannot be.  A chunk
somebody touches first (a vCPU through KVM, or a thread of this process) comes before the others,
zeros where the file has none.  When every chunk holding data is in, the regions are unregistered:
what was never touched is then plain anonymous memory (docs/restore.md).

The thread needs no GIL, so a Python thread that faults while holding it is served all the same."""
import os
import threading
import time

from kvmsnap.errors import KvmsnapError
from kvmsnap.kvm import ffi, lib

CHUNK = 2 << 20
NOT_READ = (1 << 64) - 1        # the C code's failed_at when the failure was not a read


class Unavailable(KvmsnapError):
    """This process cannot have a userfaultfd for its RAM (the message says why)."""


class Filler:
    """Fills ``regions`` (``(host address, length)``, anonymous, not yet touched) from the file
    ``fileno``: ``runs`` are ``(host address, length, file offset)`` of its data, sorted; the rest
    of the regions is zeros.  ``on_done(error)`` is called from the filler's thread when it ends:
    ``error`` is None, or one line saying what could not be read."""

    def __init__(self, fileno: int, path: str, regions: list[tuple[int, int]],
                 runs: list[tuple[int, int, int]], on_done, chunk: int = CHUNK):
        uffd = lib.kvmsnap_userfaultfd()
        if uffd < 0:
            raise Unavailable(f"userfaultfd: {os.strerror(-uffd)}")
        for start, length in regions:
            if (rc := lib.kvmsnap_uffd_register(uffd, start, length)) < 0:
                os.close(uffd)
                raise Unavailable(f"UFFDIO_REGISTER: {os.strerror(-rc)}")
        try:
            self._uffd, self._fd, self._path = uffd, os.dup(fileno), path
            self._regions = ffi.new("__u64[]", [v for region in regions for v in region])
            self._runs = ffi.new("__u64[]", [v for run in runs for v in run] or [0])
            self._counts = (len(regions), len(runs))
            self._chunk = chunk
            self._stop, self._started = ffi.new("int *"), ffi.new("int *")
            self._failed_at = ffi.new("__u64 *", NOT_READ)
            self._on_done = on_done
            self._thread = threading.Thread(target=self._run, name="fill RAM", daemon=True)
            self._thread.start()
        except BaseException:
            os.close(uffd)                  # which unregisters the regions
            raise
        # Until the thread is in the C code, it needs the GIL: a caller that touched RAM holding it
        # would wait for a filler that waits for it.
        while not self._started[0] and self._thread.is_alive():
            time.sleep(0.0002)

    def _run(self) -> None:
        rc = lib.kvmsnap_uffd_fill(self._uffd, self._fd, self._regions, self._counts[0], self._runs,
                                   self._counts[1], self._chunk, self._stop, self._started, self._failed_at)
        os.close(self._uffd)
        os.close(self._fd)
        if self._stop[0]:
            return
        error = None
        if rc < 0 and self._failed_at[0] != NOT_READ:
            error = f"{self._path}: guest RAM could not be read at offset {self._failed_at[0]:#x}: {os.strerror(-rc)}"
        elif rc < 0:
            error = f"{self._path}: guest RAM could not be filled in: {os.strerror(-rc)}"
        self._on_done(error)

    def wait(self) -> None:
        """Return once every chunk holding data is in (or the filling ended early)."""
        self._thread.join()

    def stop(self) -> None:
        """End the filling now (the RAM is going away); what is not in stays zero."""
        self._stop[0] = 1
        self._thread.join()
