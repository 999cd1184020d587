"""What the guest wrote since the last core this VMM saved or restored (its *base*): KVM's dirty
log (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG) on every RAM slot, plus the VMM's own writes
to guest RAM, which KVM does not see.  An increment holds exactly these pages.

Logging starts at the first save (in its pause, before the guest runs again) or at restore;
saves are one at a time, so one running union since the base suffices."""
from kvmsnap.formats.layout import MAX_CHANGED_RUNS
from kvmsnap.kvm import lib
from kvmsnap.memory import PAGE_SIZE
from kvmsnap.state import Base

FULL_WORD = (1 << 64) - 1


class DirtyLog:
    def __init__(self, vm, ram):
        self.vm, self.ram = vm, ram
        self.base: Base | None = None
        self._logging = False
        self._since_base: dict[int, int] = {}     # slot -> bitmap (bit n: page n) up to the last take

    def start(self, base: Base | None = None) -> None:
        """Log every slot from now on (vCPUs parked or not yet run); ``base``: the core RAM equals now."""
        for slot, (_, address) in zip(self.ram.slots(), self.ram.buffers()):
            self.vm.set_user_memory_region(slot.slot, slot.gpa, slot.size, address, lib.KVM_MEM_LOG_DIRTY_PAGES)
        self.ram.take_written()
        self._logging, self.base, self._since_base = True, base, {}

    def take(self) -> None:
        """With every vCPU parked: empty KVM's log into the running union since the base (then
        :meth:`changed` says what it holds).  The first call starts logging."""
        if not self._logging:
            self.start()
            return
        for slot in self.ram.slots():
            fresh = int.from_bytes(self.vm.get_dirty_log(slot.slot, slot.size // PAGE_SIZE), "little")
            self._since_base[slot.slot] = self._since_base.get(slot.slot, 0) | fresh
        for page in self.ram.take_written():
            slot = self.ram.extent_at(page * PAGE_SIZE).origin
            self._since_base[slot.slot] = self._since_base.get(slot.slot, 0) | 1 << (page - slot.gpa // PAGE_SIZE)

    def changed(self) -> list[tuple[int, int]]:
        """The guest-physical page runs written from the base to the last :meth:`take`."""
        runs = []
        for slot in sorted(self.ram.slots(), key=lambda s: s.gpa):
            gpa = slot.gpa
            runs += [(gpa + a * PAGE_SIZE, gpa + b * PAGE_SIZE, slot.slot)
                     for a, b in bit_runs(self._since_base.get(slot.slot, 0), slot.size // PAGE_SIZE)]
        return [(a, b) for a, b, _ in coalesce(runs, MAX_CHANGED_RUNS)]

    def saved(self, base: Base) -> None:
        """The save of the last :meth:`take` is complete at ``base``: count from it."""
        self.base, self._since_base = base, {}


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
