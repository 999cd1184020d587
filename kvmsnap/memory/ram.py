"""Live guest RAM: page-aligned private mappings, one per KVM memory slot, fresh (anonymous), mapped
copy-on-write from a core file, or read from one."""
import contextlib
import errno
import fcntl
import mmap
import os
import signal
import threading

from kvmsnap.kvm import ffi, lib
from kvmsnap.errors import KvmsnapError
from kvmsnap.memory import PAGE_SIZE, AddressError, Extent, GuestMemory, Slot, file_data_runs, union
from kvmsnap.memory import userfault
from kvmsnap.memory.pagemap import touched_runs, written_runs


class GuestRam(GuestMemory):
    """The RAM slots of a running VM; ``Extent.backing`` is ``(buffer, host address, offset)``,
    ``offset`` being where a slot mapped from the file ``source`` starts in it (else None)."""

    def __init__(self, slots: list[tuple[Slot, object]], source: int | None = None,
                 offsets: list[int] | None = None):
        extents = []
        for i, (slot, buffer) in enumerate(slots):
            address = int(ffi.cast("uintptr_t", ffi.from_buffer(buffer)))
            offset = offsets[i] if offsets else None
            extents.append(Extent(slot.gpa, slot.end, slot.end, (buffer, address, offset), slot))
        super().__init__("guest RAM", extents)
        self._source = source
        self._written: set[int] = set()               # pages write() wrote, for the dirty log
        self.on_lease_break = None
        self._detaching: threading.Thread | None = None
        self._populating: threading.Thread | None = None
        self._collapsing: threading.Thread | None = None
        self._filler: userfault.Filler | None = None
        self.fill_error: str | None = None
        self._on_fill_failure = None            # called with the error, from the filler's thread
        self._closing = threading.Event()

    @classmethod
    def anonymous(cls, layout: list[tuple[int, int]]) -> "GuestRam":
        """Fresh zeroed RAM: one slot per ``(guest_phys_addr, size)`` of ``layout``, in transparent
        huge pages where the host offers them (as QEMU's RAM): KVM maps the guest with 2 MiB pages,
        and a background save's fork copies one entry per 2 MiB instead of 512."""
        slots = []
        for i, (gpa, size) in enumerate(layout):
            try:
                buffer = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | lib.MAP_NORESERVE)
            except OSError as e:
                raise KvmsnapError(f"cannot map {size >> 20} MiB of guest RAM: {e.strerror}") from None
            with contextlib.suppress(OSError, AttributeError):     # THP off, or not Linux
                buffer.madvise(mmap.MADV_HUGEPAGE)
            slots.append((Slot(i, gpa, size), buffer))
        return cls(slots)

    @classmethod
    def map_file(cls, fileno: int, slots: list[tuple[Slot, int]]) -> "GuestRam":
        """RAM mapped copy-on-write from a file, ``(slot, file offset)`` each: pages are read on
        first touch and guest writes never reach the file (MAP_PRIVATE).  The file stays open
        here: its holes tell which pages the guest has not written are zero.

        The file is held under a read lease (LeaseUnavailable if it cannot be): before another
        process may write or truncate it, ``on_lease_break(detach)`` is called from a new thread
        (default: ``detach()``), which must call ``detach`` with the guest's vCPUs parked."""
        source = _leased_copy(fileno)
        buffers = [(slot, mmap.mmap(fileno, slot.size, mmap.MAP_PRIVATE | lib.MAP_NORESERVE,
                                    mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)) for slot, offset in slots]
        ram = cls(buffers, source=source, offsets=[offset for _, offset in slots])
        _LEASED[source] = ram
        return ram

    def _lease_breaking(self) -> None:
        """SIGIO: the file RAM is mapped from is about to be written or truncated."""
        if self._detaching is None:
            callback = self.on_lease_break or (lambda detach: detach())
            self._detaching = threading.Thread(target=callback, args=(self.detach,), name="detach RAM", daemon=True)
            self._detaching.start()

    def detach(self, chunk: int = 2 << 20) -> None:
        """Stop reading RAM from the file (call with every vCPU parked): every range of a slot whose
        bytes matter (the file's data, the pages the guest wrote) is copied into anonymous memory
        put in its place, the rest becomes anonymous zero pages (no memory until written); then the
        lease is given up and the file closed.  (Pages copied on write in a file mapping are not
        enough: truncating the file unmaps those too.)"""
        self.wait_filled()
        source = self._source
        if source is None:
            return
        self._closing.set()                     # the threads that read RAM stop, for the moment
        for thread in (self._populating, self._collapsing):
            if thread is not None:
                thread.join()
        self._closing.clear()
        for i, extent in enumerate(self._extents):
            buffer, address, offset = extent.backing
            if offset is None:
                continue
            size = extent.end - extent.start
            written = written_runs(address, size)
            keep = [(0, size)] if written is None else union(
                [(a - offset, b - offset) for a, b in file_data_runs(source, offset, offset + size)], written)
            for start, end in _gaps(keep, size):
                _anonymous(address + start, end - start)
            for start, end in keep:
                for at in range(start, end, chunk):
                    n = min(chunk, end - at)
                    data = buffer[at:at + n]
                    _anonymous(address + at, n)
                    buffer[at:at + n] = data
            self._extents[i] = extent._replace(backing=(buffer, address, None))
        self._release_source()

    def _release_source(self) -> None:
        """Give up the file RAM was read from: its lease, then the descriptor."""
        source, self._source = self._source, None
        if source is not None:
            _LEASED.pop(source, None)
            with contextlib.suppress(OSError):
                fcntl.fcntl(source, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.close(source)

    @classmethod
    def load_file(cls, fileno: int, slots: list[tuple[Slot, int]], chunk: int = 64 << 20) -> "GuestRam":
        """Fresh RAM filled from a file now (same pairs as :meth:`map_file`): slower to start than
        a mapping, but the guest's first touch of a page costs no copy-on-write fault.  Holes of
        a sparse file are skipped (their RAM stays zero)."""
        ram = cls.anonymous([(slot.gpa, slot.size) for slot, _ in slots])
        for slot, offset in slots:
            for start, end in file_data_runs(fileno, offset, offset + slot.size):
                ram.read_file(fileno, start, slot.gpa + start - offset, end - start, chunk)
        return ram

    @classmethod
    def fill_file(cls, fileno: int, path: str, slots: list[tuple[Slot, int]]) -> "GuestRam":
        """Fresh RAM the guest may run on at once, filled from a file (same pairs as
        :meth:`map_file`) behind it by a :class:`userfault.Filler`, then put into huge pages.  The
        file is held under a read lease (LeaseUnavailable if it cannot be): a writer waits until
        the filling is done (:meth:`detach`, called as for :meth:`map_file`).  userfault.Unavailable where
        this process may not have a userfaultfd."""
        source = _leased_copy(fileno)
        ram = cls.anonymous([(slot.gpa, slot.size) for slot, _ in slots])
        ram._source = source
        _LEASED[source] = ram
        try:
            regions = [(address, slot.size) for (_, address), (slot, _) in zip(ram.buffers(), slots)]
            runs = sorted((address + start - offset, end - start, start)
                          for (address, _), (slot, offset) in zip(regions, slots)
                          for start, end in file_data_runs(fileno, offset, offset + slot.size))
            ram._filler = userfault.Filler(fileno, path, regions, runs, ram._filled)
        except BaseException:
            ram.close()
            raise
        return ram

    def _filled(self, error: str | None) -> None:
        """The filler ended (from its thread): huge pages again, or the error reported.  The lease
        stays until a writer breaks it (:meth:`detach`): restore's check of the file's digests may
        still be reading it."""
        self.fill_error = error
        if error is None:
            self.collapse_in_background()
        elif self._on_fill_failure is not None:
            self._on_fill_failure(error)

    def when_fill_fails(self, callback) -> None:
        """Call ``callback(error)`` if filling RAM from a file fails, at once if it already has."""
        self._on_fill_failure = callback
        if self.fill_error:
            callback(self.fill_error)

    def wait_filled(self) -> None:
        """Return once RAM filled from a file is all in (at once for other RAM)."""
        if self._filler is not None:
            self._filler.wait()

    def read_file(self, fileno: int, offset: int, gpa: int, length: int, chunk: int = 64 << 20) -> None:
        """Copy ``length`` bytes at ``offset`` of a file into RAM at ``gpa`` (inside one slot)."""
        extent = self._inside(gpa, length)
        with memoryview(extent.backing[0]) as view:
            done = 0
            while done < length:
                at = gpa - extent.start + done
                n = os.preadv(fileno, [view[at:at + min(chunk, length - done)]], offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, f"short read at file offset {offset + done:#x}")
                done += n

    def zero(self, gpa: int, length: int, chunk: int = 2 << 20) -> None:
        """Zero ``length`` bytes of RAM at ``gpa`` (inside one slot)."""
        extent = self._inside(gpa, length)
        zeros = bytes(min(chunk, length))
        for at in range(gpa - extent.start, gpa - extent.start + length, chunk):
            n = min(chunk, gpa - extent.start + length - at)
            extent.backing[0][at:at + n] = zeros[:n]

    def _inside(self, gpa: int, length: int) -> Extent:
        extent = self.extent_at(gpa)
        if extent is None or gpa + length > extent.end:
            raise AddressError(f"guest-physical range {gpa:#x}+{length:#x} is not in RAM")
        return extent

    def populate_in_background(self, chunk: int = 2 << 20) -> None:
        """Copy every page of RAM mapped from a file that holds data into this process's memory,
        from a thread, while the guest runs (MADV_POPULATE_WRITE, outside the GIL), so the guest's
        first write of such a page is no copy-on-write fault; the file's holes stay unallocated.
        Where the kernel cannot (before Linux 5.14), pages are copied on first write as before."""
        def run():
            for extent in self._extents:
                _, address, offset = extent.backing
                if offset is None:
                    continue
                for start, end in file_data_runs(self._source, offset, offset + extent.end - extent.start):
                    for at in range(start, end, chunk):
                        if self._closing.is_set() or lib.madvise(ffi.cast("void *", address + at - offset),
                                                                 min(chunk, end - at), lib.MADV_POPULATE_WRITE):
                            return
        self._populating = threading.Thread(target=run, name="populate RAM", daemon=True)
        self._populating.start()

    def collapse_in_background(self, chunk: int = 64 << 20) -> None:
        """Put anonymous RAM back into transparent huge pages from a thread (MADV_COLLAPSE, Linux
        6.1; elsewhere nothing): a background save's writer held it copy-on-write, and each page
        the guest wrote meanwhile split its huge page. Split, they would make the next save's fork
        copy 512 page-table entries per 2 MiB instead of one, and KVM map the guest with 4 KiB
        pages, which the fork's write-protection then takes down one by one."""
        def run():
            for extent in self._extents:
                _, address, offset = extent.backing
                size = extent.end - extent.start
                if offset is not None:          # mapped from a file: no anonymous huge pages
                    continue
                for at in range(0, size, chunk):
                    if self._closing.is_set():
                        return
                    # EINVAL where part of the chunk was never touched (the rest is collapsed
                    # all the same), or where the kernel has no MADV_COLLAPSE: go on either way
                    lib.madvise(ffi.cast("void *", address + at), min(chunk, size - at), lib.MADV_COLLAPSE)
        if self._collapsing is None or not self._collapsing.is_alive():
            self._collapsing = threading.Thread(target=run, name="collapse RAM", daemon=True)
            self._collapsing.start()

    def slots(self) -> list[Slot]:
        return [e.origin for e in self._extents]

    def buffers(self) -> list[tuple[object, int]]:
        """``(buffer, host address)`` of each slot, in slot order."""
        return [e.backing[:2] for e in self._extents]

    @property
    def top(self) -> int:
        """One past the highest guest-physical RAM address."""
        return self._extents[-1].end

    def write(self, gpa: int, data: bytes) -> None:
        """Copy ``data`` into RAM at ``gpa`` (inside one slot)."""
        extent = self._inside(gpa, len(data))
        buffer = extent.backing[0]
        buffer[gpa - extent.start:gpa - extent.start + len(data)] = data
        self.wrote(gpa, len(data))

    def wrote(self, gpa: int, length: int) -> None:
        """The VMM wrote ``length`` bytes at ``gpa`` itself (see :meth:`take_written`)."""
        self._written.update(range(gpa // PAGE_SIZE, -(-(gpa + length) // PAGE_SIZE)))

    def take_written(self) -> set[int]:
        """The guest-physical page numbers :meth:`write` wrote since the last call (KVM's dirty
        log does not see them); a set, so an assist writing one word again and again adds nothing."""
        written, self._written = self._written, set()
        return written

    def buffer_at(self, addr: int, length: int):
        extent = self.extent_at(addr)
        if extent is None or addr + length > extent.end:
            return None
        return extent.backing[0], addr - extent.start

    def _fetch(self, extent: Extent, addr: int, out: memoryview) -> None:
        offset = addr - extent.start
        out[:] = memoryview(extent.backing[0])[offset:offset + len(out)]

    def data_runs(self, start: int, end: int):
        """Pages of anonymous RAM never touched are zero without reading them (pagemap); so are the
        pages of RAM mapped from a file that the guest has not written where the file has holes,
        and, once detached from it, the pages neither copied in nor written.  RAM still being
        filled from a file is waited for (its pages not yet in would read as never touched), and
        RAM whose filling failed is refused."""
        self.wait_filled()
        if self.fill_error:
            raise KvmsnapError(f"guest RAM is not what the core held: {self.fill_error}")
        for extent in self.extents_in(start, end):
            lo, hi = max(start, extent.start), min(end, extent.end)
            _, address, offset = extent.backing
            size = extent.end - extent.start
            if offset is None:
                touched = touched_runs(address, size)
            else:
                touched = written_runs(address, size)
                if touched is not None:
                    touched = union(touched, [(a - offset, b - offset)
                                               for a, b in file_data_runs(self._source, offset, offset + size)])
            if touched is None:
                yield lo, hi
                continue
            for a, b in touched:
                a, b = max(lo, extent.start + a), min(hi, extent.start + b)
                if a < b:
                    yield a, b

    def close(self) -> None:
        self._closing.set()
        if self._filler is not None:
            self._filler.stop()
        for thread in (self._populating, self._collapsing):
            if thread is not None:
                thread.join()
        if self._detaching is not None:
            self._detaching.join()
        for buffer, _ in self.buffers():
            try:
                buffer.close()
            except BufferError:
                pass                    # a view is still alive (a caller's); the mapping goes with it
        self._release_source()


class LeaseUnavailable(KvmsnapError):
    """The file cannot be held under a read lease (it is open for writing, on a file system
    without leases, or another user's)."""


_LEASED: dict[int, GuestRam] = {}        # lease fd -> the RAM mapped from its file


def _leased_copy(fileno: int) -> int:
    """A new descriptor of ``fileno``'s file, held under a read lease (see :func:`_hold_lease`)."""
    source = os.dup(fileno)
    try:
        _hold_lease(source)
    except LeaseUnavailable:
        os.close(source)
        raise
    return source


def _hold_lease(fd: int) -> None:
    """A read lease on ``fd``'s file, with SIGIO (the kernel's signal when a lease must go) routed
    to the RAM mapped from it; needs the main thread (Python runs signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        raise LeaseUnavailable("leases are taken from the main thread only")
    if signal.getsignal(signal.SIGIO) is not _on_sigio:
        signal.signal(signal.SIGIO, _on_sigio)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        raise LeaseUnavailable(e.strerror) from None


def _on_sigio(_signum, _frame) -> None:
    for fd, ram in list(_LEASED.items()):
        with contextlib.suppress(OSError):
            if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:     # a break is pending
                ram._lease_breaking()


def _anonymous(address: int, length: int) -> None:
    """Fresh anonymous zero pages in place of ``[address, address + length)`` (mmap MAP_FIXED)."""
    if lib.mmap(ffi.cast("void *", address), length, lib.PROT_READ | lib.PROT_WRITE,
                lib.MAP_PRIVATE | lib.MAP_ANONYMOUS | lib.MAP_FIXED | lib.MAP_NORESERVE, -1, 0) \
            != ffi.cast("void *", address):
        raise OSError(ffi.errno, os.strerror(ffi.errno))


def _gaps(runs: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The parts of ``[0, size)`` outside the sorted, merged ``runs``."""
    gaps, at = [], 0
    for start, end in runs:
        if start > at:
            gaps.append((at, start))
        at = max(at, end)
    if at < size:
        gaps.append((at, size))
    return gaps

