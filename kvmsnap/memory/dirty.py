"""What the guest wrote since the last core this VMM saved or restored (its *base*), for an
increment: KVM's dirty log (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG) on every RAM slot plus the
VMM's own writes to guest RAM, which KVM does not see; or, where the log was not on since the
base, RAM compared with the base's memory (:func:`compare`).

KVM logs only while increments are being made: from an incremental save's pause until the next
full save. Logging maps the guest with 4 KiB pages and write-protects every page it reports, which
a background save's pause pays for (docs/performance.md); a VMM that never makes increments never
logs. Saves are one at a time, so one running union since the base suffices."""
from kvmsnap.formats.layout import MAX_CHANGED_RUNS
from kvmsnap.kvm import lib
from kvmsnap.memory import PAGE_SIZE, union
from kvmsnap.state import Base

FULL_WORD = (1 << 64) - 1
COMPARE_CHUNK = 2 << 20


class DirtyLog:
    def __init__(self, vm, ram):
        self.vm, self.ram = vm, ram
        self.base: Base | None = None
        self._logging = False
        self._since_base: dict[int, int] | None = None     # slot -> bitmap (bit n: page n); None: unknown

    def _log(self, on: bool) -> None:
        """KVM's logging on or off for every slot (vCPUs parked or not yet run); off, what the
        guest writes from now on is known only by comparing (even if the save that turned it off
        fails and the base stays)."""
        for slot, (_, address) in zip(self.ram.slots(), self.ram.buffers()):
            self.vm.set_user_memory_region(slot.slot, slot.gpa, slot.size, address,
                                           lib.KVM_MEM_LOG_DIRTY_PAGES if on else 0)
        self._logging = on
        if not on:
            self._since_base = None

    def take(self) -> None:
        """With every vCPU parked: empty KVM's log into the running union since the base (then
        :meth:`changed` says what it holds)."""
        if not self._logging or self._since_base is None:
            return
        for slot in self.ram.slots():
            fresh = int.from_bytes(self.vm.get_dirty_log(slot.slot, slot.size // PAGE_SIZE), "little")
            self._since_base[slot.slot] = self._since_base.get(slot.slot, 0) | fresh
        for page in self.ram.take_written():
            slot = self.ram.extent_at(page * PAGE_SIZE).origin
            self._since_base[slot.slot] = self._since_base.get(slot.slot, 0) | 1 << (page - slot.gpa // PAGE_SIZE)

    def changed(self) -> list[tuple[int, int]] | None:
        """The guest-physical page runs written from the base to the last :meth:`take`; None when
        KVM did not log all that time (the save compares RAM with the base instead)."""
        if self._since_base is None:
            return None
        runs = []
        for slot in sorted(self.ram.slots(), key=lambda s: s.gpa):
            gpa = slot.gpa
            runs += [(gpa + a * PAGE_SIZE, gpa + b * PAGE_SIZE, slot.slot)
                     for a, b in bit_runs(self._since_base.get(slot.slot, 0), slot.size // PAGE_SIZE)]
        return [(a, b) for a, b, _ in coalesce(runs, MAX_CHANGED_RUNS)]

    def saving(self, incremental: bool) -> None:
        """In a save's pause, after :meth:`changed`: an increment starts (or keeps) KVM logging, so
        that the next increment need not compare; a full save ends it."""
        if incremental != self._logging:
            self._log(incremental)
        if incremental:
            self.ram.take_written()

    def saved(self, base: Base) -> None:
        """A save (of the state in its pause) or a restore is complete at ``base``: count from it."""
        self.base, self._since_base = base, {} if self._logging else None


def compare(ram, base, slots) -> list[tuple[int, int]]:
    """The guest-physical page runs where ``ram`` differs from ``base`` (another memory of the
    same ``slots``: a core's), read 2 MiB at a time where either may hold data (``data_runs``);
    elsewhere both are zero."""
    runs = []
    for slot in sorted(slots, key=lambda s: s.gpa):
        lo, hi = slot.gpa, slot.gpa + slot.size
        spans = union(*([(a - a % PAGE_SIZE, -(-b // PAGE_SIZE) * PAGE_SIZE) for a, b in memory.data_runs(lo, hi)]
                        for memory in (ram, base)))
        for a, b in spans:
            for at in range(a, b, COMPARE_CHUNK):
                n = min(COMPARE_CHUNK, b - at)
                mine, theirs = ram.read(at, n), base.read(at, n)
                if mine == theirs:
                    continue
                for page in range(0, n, PAGE_SIZE):
                    if mine[page:page + PAGE_SIZE] != theirs[page:page + PAGE_SIZE]:
                        if runs and runs[-1][1] == at + page:
                            runs[-1][1] += PAGE_SIZE
                        else:
                            runs.append([at + page, at + page + PAGE_SIZE, slot.slot])
    return [(a, b) for a, b, _ in coalesce([tuple(r) for r in runs], MAX_CHANGED_RUNS)]


def bit_runs(bitmap: int, nbits: int) -> list[tuple[int, int]]:
    """``(first, end)`` of each run of set bits in ``bitmap``'s low ``nbits``: 64 bits at a time,
    so an all-dirty 4 GiB slot costs 16,384 steps."""
    runs: list[list[int]] = []
    data = bitmap.to_bytes((nbits + 63) // 64 * 8, "little")
    for i, word in enumerate(memoryview(data).cast("Q")):
        if not word:
            continue
        base = i * 64
        if word == FULL_WORD:
            if runs and runs[-1][1] == base:
                runs[-1][1] = base + 64
            else:
                runs.append([base, base + 64])
            continue
        for bit in range(64):
            if word >> bit & 1:
                page = base + bit
                if runs and runs[-1][1] == page:
                    runs[-1][1] = page + 1
                else:
                    runs.append([page, page + 1])
    return [(a, min(b, nbits)) for a, b in runs if a < nbits]


def coalesce(runs: list[tuple[int, int, int]], limit: int) -> list[tuple[int, int, int]]:
    """At most ``limit`` ``(start, end, slot)`` runs (or one per slot): the smallest gaps inside a
    slot are filled (their pages are unchanged, so an increment may hold them too)."""
    if len(runs) <= limit:
        return runs
    gaps = sorted((i for i in range(1, len(runs)) if runs[i][2] == runs[i - 1][2]),
                  key=lambda i: runs[i][0] - runs[i - 1][1])
    fill = set(gaps[:len(runs) - limit])
    out = [list(runs[0])]
    for i in range(1, len(runs)):
        if i in fill:
            out[-1][1] = runs[i][1]
        else:
            out.append(list(runs[i]))
    return [tuple(run) for run in out]
