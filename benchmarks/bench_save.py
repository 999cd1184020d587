"""Save benchmark against QEMU on the same guests, same memory, same machine, one run:
save time, guest paused time, and core size (apparent and on disk) of `kvmsnap save` against
QEMU's `dump-guest-memory` with paging off and on, for `counter` and `memtest`.

    python3 benchmarks/bench_save.py [--sizes 256M,1G,4G] [--guests counter,memtest] [--runs 3] [--dir DIR]

kvmsnap: `kvmsnap run GUEST --mem SIZE --control SOCK --console FILE`, wait until the guest is going
(`tick 1` for counter; `memtest round 0 ok` for memtest, so all of its RAM has been written), then
`kvmsnap save --control SOCK OUT --json` (guest resumed afterwards) and `kvmsnap save --background`,
in alternating order, N times each. save_ms and paused_ms are the VMM's own `wall_ms` and `paused_ms`
from the JSON reply (with --background, paused_ms is the guest's downtime and save_ms runs until the
file is complete). Then a whole save and N increments, each `--incremental-from` the one before it
(the guest runs ~0.2 s between saves: the increment holds what it wrote in that time); cli_ms is the wall time of the whole `kvmsnap save` process (Python start-up and
the control round trip included). kvmsnap fsyncs the core before it answers. Then the last core is
restored (`kvmsnap restore`, lazy memory: RAM mapped from the core) and that guest saved N times
("kvmsnap restored": a restored guest should save as fast as a freshly booted one).

dd: `dd if=/dev/zero bs=1M conv=fsync` of as many bytes as the stopped save put on disk, into the same
directory, N times: the pace of the disk itself.

QEMU: the same image booted with `-kernel` (PVH) and the same `-m`, the same readiness line, then QMP
`dump-guest-memory` (synchronous, `protocol: file:OUT`) with `paging: false` and `paging: true`, in
alternating order. QEMU keeps the guest stopped for the whole command, so save_ms = paused_ms = wall time
of the QMP command. QEMU does not fsync the dump: fsync_ms is the time of an fsync issued by this script
right after the command returned (not part of save_ms; it also keeps one run's dirty pages from slowing
the next).

Sizes are os.stat of the written file: apparent = st_size, on_disk = st_blocks * 512. Every core is
deleted right after it is measured. Values are medians over the runs. Results: benchmarks/results/save.json.
"""
import json
import os
import subprocess
import sys
import time

from common import (READY, MiB, Qmp, file_sizes, fsync_path, kill_process, kvmsnap_cmd, median, qemu_cmd, ratio,
                    report, size_label, stop_process, sweep, sweep_arguments, wait_console_line, wait_until)

from kvmsnap import control
from kvmsnap.samples import SAMPLES



def ready_timeout(mem: int) -> float:
    return 60 + 30 * (mem >> 30)          # memtest round 0 at 4 GiB takes ~10-20 s here


def kvmsnap_save(sock: str, core: str, tag: str, *flags, keep=False) -> dict:
    """One `kvmsnap save` of the guest behind ``sock``: its sample (the core deleted unless ``keep``)."""
    t0 = time.perf_counter()
    out = subprocess.run(kvmsnap_cmd("save", "--control", sock, core, "--json", *flags), capture_output=True, text=True)
    cli_ms = (time.perf_counter() - t0) * 1000
    if out.returncode != 0:
        raise RuntimeError(f"kvmsnap save {' '.join(flags)} failed ({out.returncode}): {out.stderr.strip()}")
    reply = json.loads(out.stdout)
    apparent, on_disk = file_sizes(core)
    if not keep:
        os.unlink(core)
    if (apparent, on_disk) != (reply["apparent_size"], reply["size_on_disk"]):
        print(f"  note: {tag}: os.stat says {apparent}/{on_disk} bytes, the reply said "
              f"{reply['apparent_size']}/{reply['size_on_disk']}", file=sys.stderr)
    time.sleep(0.2)
    return {"save_ms": reply["wall_ms"], "paused_ms": reply["paused_ms"], "cli_ms": cli_ms,
            "apparent": apparent, "on_disk": on_disk, "fsync_ms": 0.0}


def bench_kvmsnap(guest: str, mem: int, runs: int, work: str) -> dict:
    tag = f"k-{guest}-{size_label(mem)}"
    sock, console, core, source = (os.path.join(work, f"{tag}.{ext}") for ext in ("sock", "console", "core", "src"))
    samples = {"kvmsnap": [], "kvmsnap --background": [], "kvmsnap --incremental-from": [], "kvmsnap restored": []}
    increments = [os.path.join(work, f"{tag}.inc{i}") for i in range(runs + 1)]
    procs = []
    try:
        procs.append(subprocess.Popen(kvmsnap_cmd("run", guest, "--mem", mem, "--control", sock, "--console",
                                                  console), stdout=subprocess.DEVNULL))
        wait_console_line(console, READY[guest], ready_timeout(mem), procs[-1])
        for i in range(runs):
            for flags in (((), ("--background",)) if i % 2 == 0 else (("--background",), ())):
                samples["kvmsnap " + flags[0] if flags else "kvmsnap"].append(kvmsnap_save(sock, core, tag, *flags))
        kvmsnap_save(sock, increments[0], tag, keep=True)
        for base, increment in zip(increments, increments[1:]):     # each of the last, ~0.2 s of guest time later
            samples["kvmsnap --incremental-from"].append(kvmsnap_save(sock, increment, tag, "--incremental-from", base,
                                                                      keep=True))
            os.unlink(base)
        kvmsnap_save(sock, source, tag, keep=True)       # the core the restored guest is mapped from
        control.request(sock, "quit", timeout=60)
        stop_process(procs[-1])
        if procs[-1].returncode != 0:
            raise RuntimeError(f"kvmsnap run exited {procs[-1].returncode}")
        lines = len(open(console, "rb").read().splitlines())
        procs.append(subprocess.Popen(kvmsnap_cmd("restore", source, "--memory", "lazy", "--control", sock,
                                                  "--console", console),
                                      stdout=subprocess.DEVNULL))
        wait_console_line(console, READY[guest].split()[0], ready_timeout(mem), procs[-1], after=lines)
        for _ in range(runs):
            samples["kvmsnap restored"].append(kvmsnap_save(sock, core, tag))
        control.request(sock, "quit", timeout=60)
        stop_process(procs[-1])
    finally:
        for proc in procs:
            kill_process(proc)
        for path in (core, source, *increments):
            if os.path.exists(path):
                os.unlink(path)
    return samples


def bench_dd(nbytes: int, runs: int, work: str) -> dict:
    """`dd if=/dev/zero bs=1M conv=fsync` of ``nbytes`` (rounded up to MiB) into ``work``: the disk's own pace."""
    out, samples = os.path.join(work, "dd.out"), []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={-(-nbytes // MiB)}", "conv=fsync",
                            "status=none"], check=True)
            ms = (time.perf_counter() - t0) * 1000
            apparent, on_disk = file_sizes(out)
            os.unlink(out)
            samples.append({"save_ms": ms, "paused_ms": ms, "cli_ms": None, "apparent": apparent, "on_disk": on_disk,
                            "fsync_ms": 0.0})
            time.sleep(0.2)
    finally:
        if os.path.exists(out):
            os.unlink(out)
    return {"dd conv=fsync": samples}


def bench_qemu(guest: str, mem: int, runs: int, work: str) -> dict:
    tag = f"q-{guest}-{size_label(mem)}"
    sock, console, core, err = (os.path.join(work, f"{tag}.{ext}") for ext in ("sock", "console", "core", "stderr"))
    with open(err, "wb") as errf:
        proc = subprocess.Popen(qemu_cmd("-kernel", SAMPLES[guest].path, "-serial", f"file:{console}",
                                         "-qmp", f"unix:{sock},server=on,wait=off", mem=f"{mem >> 20}M"),
                                stdout=subprocess.DEVNULL, stderr=errf)
    samples = {"qemu paging=off": [], "qemu paging=on": []}
    try:
        wait_until(lambda: os.path.exists(sock), 30, "QMP socket", proc)
        qmp = Qmp(sock)
        wait_console_line(console, READY[guest], ready_timeout(mem), proc)
        for i in range(runs):
            for paging in ((False, True) if i % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                qmp.cmd("dump-guest-memory", paging=paging, protocol=f"file:{core}")
                ms = (time.perf_counter() - t0) * 1000
                fsync_ms = fsync_path(core) * 1000
                apparent, on_disk = file_sizes(core)
                os.unlink(core)
                samples["qemu paging=on" if paging else "qemu paging=off"].append(
                    {"save_ms": ms, "paused_ms": ms, "cli_ms": None, "apparent": apparent,
                     "on_disk": on_disk, "fsync_ms": fsync_ms})
                time.sleep(0.2)
        if qmp.cmd("query-status").get("status") != "running":
            raise RuntimeError("QEMU's guest is not running after the dumps")
        try:
            qmp.cmd("quit")
        except (OSError, ValueError):
            pass                            # the reply may be lost when QEMU closes the socket
        stop_process(proc)
    except BaseException:
        try:
            with open(err) as f:
                print(f"  QEMU stderr: {f.read().strip()}", file=sys.stderr)
        except OSError:
            pass
        raise
    finally:
        kill_process(proc)
        if os.path.exists(core):
            os.unlink(core)
    return samples


def summarise(guest: str, mem: int, per_vmm: dict) -> list[dict]:
    rows = []
    for vmm, samples in per_vmm.items():
        rows.append({"guest": guest, "mem": size_label(mem), "vmm": vmm,
                     "save_ms": median([s["save_ms"] for s in samples]),
                     "paused_ms": median([s["paused_ms"] for s in samples]),
                     "apparent_MiB": median([s["apparent"] for s in samples]) / MiB,
                     "on_disk_MiB": median([s["on_disk"] for s in samples]) / MiB,
                     "cli_ms": median([s["cli_ms"] for s in samples]) if samples[0]["cli_ms"] is not None else None,
                     "fsync_ms": median([s["fsync_ms"] for s in samples]),
                     "runs": len(samples)})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for k in (r for r in rows if r["vmm"].startswith("kvmsnap")):
        for q in (r for r in rows if r["vmm"].startswith("qemu") and (r["guest"], r["mem"]) == (k["guest"], k["mem"])):
            out.append({"guest": k["guest"], "mem": k["mem"], "kvmsnap": k["vmm"], "/": q["vmm"],
                        "save": ratio(k["save_ms"], q["save_ms"]),
                        "paused": ratio(k["paused_ms"], q["paused_ms"]),
                        "apparent": ratio(k["apparent_MiB"], q["apparent_MiB"]),
                        "on_disk": ratio(k["on_disk_MiB"], q["on_disk_MiB"])})
    return out


def main():
    args, guests, sizes, use_qemu = sweep_arguments(__doc__, "saves", "where cores are written (and deleted) "
                                                    "[a new directory under $TMPDIR]")

    def one(guest, mem, work):
        per_vmm = bench_kvmsnap(guest, mem, args.runs, work)
        per_vmm.update(bench_dd(int(median([s["on_disk"] for s in per_vmm["kvmsnap"]])), args.runs, work))
        if use_qemu:
            per_vmm.update(bench_qemu(guest, mem, args.runs, work))
        return summarise(guest, mem, per_vmm)
    rows, seconds = sweep("kvmsnap-bench-save-", args.dir, guests, sizes, one)
    report(f"save (median of {args.runs} runs; total {seconds:.0f} s)", rows, "save.json")
    if use_qemu:
        report("ratios kvmsnap / QEMU (below 1: kvmsnap is faster or smaller)", ratios(rows), "save-ratios.json")
    def against(peer):
        return {(r["guest"], r["mem"]): r["save_ms"] for r in rows if r["vmm"] == peer}
    fresh, dd = against("kvmsnap"), against("dd conv=fsync")
    report("a restored guest's save / the freshly booted guest's (target: at most 1.5); the stopped save / dd "
           "writing its bytes on disk (target for memtest: at most 1.5)",
           [{"guest": g, "mem": m, "restored/fresh": ratio(ms, fresh[g, m]), "stopped/dd": ratio(fresh[g, m], dd[g, m])}
            for (g, m), ms in against("kvmsnap restored").items()], "save-restored.json")

if __name__ == "__main__":
    main()
