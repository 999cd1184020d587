"""Restore benchmark against QEMU on the same guests, same memory, same machine, one run: time from
starting `kvmsnap restore` to the guest's first instruction and to its next console line, against
QEMU restoring the same guest from a migration file (`-incoming`), for `counter` and `memtest`.

    python3 benchmarks/bench_restore.py [--sizes 256M,1G,4G] [--guests counter,memtest] [--runs 3] [--dir DIR]

Making the saved state, once per guest and size and VMM:
  kvmsnap: `kvmsnap run GUEST --mem SIZE --control SOCK --console FILE`; wait until the guest is going
    (`tick 1`, or `memtest round 0 ok`), time two more console lines (line_ms: the guest's own interval
    between lines), then, as soon as a new line appears, the control request `save` with `quit: true`
    (what `kvmsnap save --quit` sends, but without the CLI's start-up delay).
  QEMU: the same image with `-kernel` (PVH), the same `-m`, `-serial file:`, and
    `-global migration.store-global-state=off` (so the restored side starts running by itself); the
    same readiness and line timing, then, as soon as a new line appears, QMP `stop` and
    `migrate` to `exec:cat > FILE` (QEMU 7.2 has no `file:` migration URI), `query-migrate` until
    `completed`, `quit`.
  Both states are taken right after a console line, so the "next line" after restoring needs
  (nearly) a whole line interval of guest work: a tick for counter, a full fill+verify pass over
  RAM for memtest.

Timing a restore (clock starts just before the process is spawned; every run a new process):
  kvmsnap: `kvmsnap restore CORE --memory MODE --console FILE --control SOCK`, for each of the three
    modes: background (the default: RAM mapped from the core, copied in by a thread), lazy, eager.
    first_instr_ms — PROXY: kvmsnap has no first-instruction hook; this is the time until the
    control socket answers `status` with state `running`. kvmsnap serves the socket only after
    it has started the vCPU threads, so this is an upper bound on "ready to enter KVM_RUN" plus one
    control round trip (polled every 2 ms).
  QEMU: `qemu-system-x86_64 ... -incoming "exec:cat FILE"` with `-serial file:` and QMP.
    first_instr_ms — PROXY: time until QMP `query-status` says `running` (polled every 2 ms; QEMU
    starts the vCPUs right after loading the stream, since the source ran without global state).
  next_line_ms (both): until the first complete new line appears in the console file (a thread
    polls the file every 1 ms).
Values are medians over the runs; files are in the page cache (just written). Results:
benchmarks/results/restore.json.
"""
import functools
import os
import subprocess
import sys
import threading
import time

from common import (READY, MiB, Qmp, complete_lines, file_sizes, kill_process, kvmsnap_cmd, median, qemu_cmd,
                    ratio, report, size_label, stop_process, sweep, sweep_arguments, wait_console_line, wait_until)

from kvmsnap import control
from kvmsnap.errors import KvmsnapError
from kvmsnap.samples import SAMPLES

LINE = {"counter": "tick ", "memtest": "memtest round "}
QEMU_MIGRATION = ("-global", "migration.store-global-state=off")


def ready_timeout(mem: int) -> float:
    return 60 + 30 * (mem >> 30)


def line_timeout(mem: int) -> float:
    return 60 + 60 * (mem >> 30)          # one memtest round, restored lazily, is the slowest here


def _line_interval_then(console: str, guest: str, mem: int, proc, action) -> float:
    """Wait for readiness, time two line intervals, then run ``action()`` right after the next new line
    appears; returns the median interval in ms."""
    i = wait_console_line(console, READY[guest], ready_timeout(mem), proc)
    stamps = []
    for _ in range(3):
        i = wait_console_line(console, LINE[guest], line_timeout(mem), proc, after=i + 1)
        stamps.append(time.perf_counter())
    action()
    return median([(b - a) * 1000 for a, b in zip(stamps, stamps[1:])])


class LineWatch(threading.Thread):
    """Records when the first complete line appears in a console file (polled every 1 ms)."""

    def __init__(self, path: str, t0: float):
        super().__init__(daemon=True)
        self.path, self.t0 = path, t0
        self.at = None
        self.line = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            lines = complete_lines(self.path)
            if lines:
                self.at = time.perf_counter() - self.t0
                self.line = lines[0]
                return
            time.sleep(0.001)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- kvmsnap -----------------------------------------------------------------------------------------
def make_kvmsnap_core(guest: str, mem: int, work: str) -> tuple[str, float]:
    tag = f"k-{guest}-{size_label(mem)}"
    sock, console, core = (os.path.join(work, f"{tag}.{ext}") for ext in ("sock", "console", "core"))
    proc = subprocess.Popen(kvmsnap_cmd("run", guest, "--mem", mem, "--control", sock, "--console", console),
                            stdout=subprocess.DEVNULL)
    try:
        line_ms = _line_interval_then(console, guest, mem, proc,
                                      lambda: control.request(sock, "save", path=core, quit=True, timeout=600))
        stop_process(proc, 60)
        if proc.returncode != 0:
            raise RuntimeError(f"kvmsnap run exited {proc.returncode} after save --quit")
    finally:
        kill_process(proc)
        _remove(console)
    return core, line_ms


def kvmsnap_status_running(sock: str):
    if not os.path.exists(sock):
        return False
    try:
        return control.request(sock, "status", timeout=60)["state"] == "running"
    except (KvmsnapError, OSError):
        return False


def time_kvmsnap_restore(core: str, guest: str, mem: int, work: str, memory: str) -> dict:
    sock, console = os.path.join(work, "kr.sock"), os.path.join(work, "kr.console")
    open(console, "wb").close()
    t0 = time.perf_counter()
    proc = subprocess.Popen(kvmsnap_cmd("restore", core, "--memory", memory, "--console", console,
                                        "--control", sock), stdout=subprocess.DEVNULL)
    watch = LineWatch(console, t0)
    watch.start()
    try:
        wait_until(lambda: kvmsnap_status_running(sock), 120, "kvmsnap restore: status running", proc)
        first = time.perf_counter() - t0
        wait_until(lambda: watch.at is not None, line_timeout(mem), "first console line after restore", proc)
        if not watch.line.lstrip().startswith(LINE[guest].strip()) or "MISMATCH" in watch.line:
            print(f"  note: kvmsnap restored {guest}: first line {watch.line!r}", file=sys.stderr)
        control.request(sock, "quit", timeout=60)
        stop_process(proc, 60)
        return {"first_instr_ms": first * 1000, "next_line_ms": watch.at * 1000, "line": watch.line}
    finally:
        watch.stop.set()
        kill_process(proc)
        _remove(console)


# --- QEMU --------------------------------------------------------------------------------------------
def _qemu(guest: str, mem: int, console: str, sock: str, err: str, *extra) -> subprocess.Popen:
    with open(err, "ab") as errf:
        return subprocess.Popen(qemu_cmd("-kernel", SAMPLES[guest].path, "-serial", f"file:{console}",
                                         "-qmp", f"unix:{sock},server=on,wait=off", *QEMU_MIGRATION, *extra,
                                         mem=f"{mem >> 20}M"),
                                stdout=subprocess.DEVNULL, stderr=errf)


def _qemu_quit(qmp: Qmp, proc) -> None:
    try:
        qmp.cmd("quit")
    except (OSError, ValueError):
        pass
    stop_process(proc, 30)


def _show_stderr(err: str) -> None:
    try:
        with open(err) as f:
            print(f"  QEMU stderr: {f.read().strip()}", file=sys.stderr)
    except OSError:
        pass


def make_qemu_migration(guest: str, mem: int, work: str) -> tuple[str, float]:
    tag = f"q-{guest}-{size_label(mem)}"
    sock, console, mig, err = (os.path.join(work, f"{tag}.{ext}") for ext in ("sock", "console", "mig", "stderr"))
    proc = _qemu(guest, mem, console, sock, err)
    try:
        wait_until(lambda: os.path.exists(sock), 30, "QMP socket", proc)
        qmp = Qmp(sock)
        qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})

        def save():
            qmp.cmd("stop")
            qmp.cmd("migrate", uri=f"exec:cat > {mig}")
        line_ms = _line_interval_then(console, guest, mem, proc, save)
        status = wait_until(lambda: (lambda s: s if s.get("status") in ("completed", "failed", "cancelled") else None)(
            qmp.cmd("query-migrate")), 600, "migration to complete", proc, interval=0.01)
        if status["status"] != "completed":
            raise RuntimeError(f"QEMU migration {status['status']}: {status.get('error-desc', '')}")
        _qemu_quit(qmp, proc)
    except BaseException:
        _show_stderr(err)
        raise
    finally:
        kill_process(proc)
        _remove(console)
    return mig, line_ms


def qemu_running(qmp: Qmp) -> bool:
    return qmp.cmd("query-status").get("status") == "running"


def time_qemu_restore(mig: str, guest: str, mem: int, work: str) -> dict:
    sock, console, err = (os.path.join(work, f"qr.{ext}") for ext in ("sock", "console", "stderr"))
    open(console, "wb").close()
    t0 = time.perf_counter()
    proc = _qemu(guest, mem, console, sock, err, "-incoming", f"exec:cat {mig}")
    watch = LineWatch(console, t0)
    watch.start()
    try:
        wait_until(lambda: os.path.exists(sock), 60, "QMP socket", proc)
        qmp = Qmp(sock)
        wait_until(lambda: qemu_running(qmp), 600, "QEMU -incoming: status running", proc)
        first = time.perf_counter() - t0
        wait_until(lambda: watch.at is not None, line_timeout(mem), "first console line after -incoming", proc)
        if not watch.line.lstrip().startswith(LINE[guest].strip()) or "MISMATCH" in watch.line:
            print(f"  note: QEMU restored {guest}: first line {watch.line!r}", file=sys.stderr)
        _qemu_quit(qmp, proc)
        return {"first_instr_ms": first * 1000, "next_line_ms": watch.at * 1000, "line": watch.line}
    except BaseException:
        _show_stderr(err)
        raise
    finally:
        watch.stop.set()
        kill_process(proc)
        _remove(console)


# --- driver ------------------------------------------------------------------------------------------
def bench(guest: str, mem: int, runs: int, work: str, use_qemu: bool) -> list[dict]:
    rows = []
    peers = [(make_kvmsnap_core, [(f"kvmsnap {memory}", functools.partial(time_kvmsnap_restore, memory=memory))
                                  for memory in ("background", "lazy", "eager")])]
    if use_qemu:
        peers.append((make_qemu_migration, [("qemu -incoming", time_qemu_restore)]))
    for make, restorers in peers:
        path, line_ms = make(guest, mem, work)
        try:
            apparent, on_disk = file_sizes(path)
            for vmm, restore in restorers:
                samples = [restore(path, guest, mem, work) for _ in range(runs)]
                rows.append({"guest": guest, "mem": size_label(mem), "vmm": vmm,
                             "first_instr_ms": median([s["first_instr_ms"] for s in samples]),
                             "next_line_ms": median([s["next_line_ms"] for s in samples]),
                             "line_ms": line_ms,
                             "file_MiB": apparent / MiB, "on_disk_MiB": on_disk / MiB, "runs": len(samples)})
        finally:
            os.unlink(path)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for k in (r for r in rows if r["vmm"].startswith("kvmsnap")):
        for q in (r for r in rows if r["vmm"].startswith("qemu") and (r["guest"], r["mem"]) == (k["guest"], k["mem"])):
            out.append({"guest": k["guest"], "mem": k["mem"], "kvmsnap": k["vmm"].split()[1],
                        "first_instr": ratio(k["first_instr_ms"], q["first_instr_ms"]),
                        "next_line": ratio(k["next_line_ms"], q["next_line_ms"])})
    return out


def main():
    args, guests, sizes, use_qemu = sweep_arguments(__doc__, "restores", "where cores and migration files go "
                                                    "(deleted) [a new directory under $TMPDIR]")
    rows, seconds = sweep("kvmsnap-bench-restore-", args.dir, guests, sizes,
                          lambda guest, mem, work: bench(guest, mem, args.runs, work, use_qemu))
    report(f"restore (median of {args.runs} runs; total {seconds:.0f} s; "
           "first_instr_ms is a proxy, see --help)", rows, "restore.json")
    if use_qemu:
        report("ratios kvmsnap / QEMU (below 1: kvmsnap is faster)", ratios(rows), "restore-ratios.json")

if __name__ == "__main__":
    main()
