"""VMM benchmarks against QEMU on the same guests, same machine, one run:
port-I/O exit round trips per second, and pause latency (request until every vCPU is out).

    python3 benchmarks/bench_vmm.py [--runs 5] [--pauses 50]
"""
import argparse
import os
import subprocess
import tempfile
import time

from common import QEMU, Qmp, build_guests, kvmsnap_cmd, median, qemu_cmd, report, timed

from kvmsnap import control

LOW, HIGH = 20000, 220000


def pio_rate(runs: int, guests: str) -> list[dict]:
    """Exits/s from the time difference of two guests that differ only in their exit count."""
    rows = []
    peers = {"kvmsnap": lambda n: kvmsnap_cmd("run", f"{guests}/pio-{n}.elf", "--mem", "64M")}
    if QEMU:
        peers["qemu"] = lambda n: qemu_cmd("-device", "isa-debug-exit,iobase=0x501,iosize=1",
                                           "-kernel", f"{guests}/pio-{n}.elf")
    for name, cmd in peers.items():
        low = median([timed(cmd(LOW)) for _ in range(runs)])
        high = median([timed(cmd(HIGH)) for _ in range(runs)])
        rows.append({"vmm": name, "exits_per_s": (HIGH - LOW) / (high - low), "us_per_exit": (high - low) / (HIGH - LOW) * 1e6})
    return rows


def pause_latency(pauses: int) -> list[dict]:
    """Median round trip of pause requests on a running `counter` over one control connection, against
    QMP `stop` on QEMU running the same image; `pause_ms` is measured inside kvmsnap's VMM."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "k.sock")
        proc = subprocess.Popen(kvmsnap_cmd("run", "counter", "--mem", "64M", "--console", os.devnull,
                                            "--control", sock))
        try:
            while not os.path.exists(sock):
                time.sleep(0.02)
            inside, round_trip = [], []
            with control.ControlClient(sock) as client:      # one connection, as QMP below
                for _ in range(pauses):
                    t0 = time.perf_counter()
                    inside.append(client.request("pause")["paused_ms"])
                    round_trip.append((time.perf_counter() - t0) * 1000)
                    client.request("resume")
                    time.sleep(0.01)
            rows.append({"vmm": "kvmsnap", "pause_ms": median(inside), "round_trip_ms": median(round_trip)})
        finally:
            control.request(sock, "quit")
            proc.wait()
        if QEMU:
            from kvmsnap.samples import SAMPLES
            qsock = os.path.join(tmp, "q.sock")
            proc = subprocess.Popen(qemu_cmd("-kernel", SAMPLES["counter"].path, "-qmp", f"unix:{qsock},server=on,wait=off"))
            try:
                qmp = Qmp(qsock)
                time.sleep(2)
                trips = []
                for _ in range(pauses):
                    t0 = time.perf_counter()
                    qmp.cmd("stop")
                    trips.append((time.perf_counter() - t0) * 1000)
                    qmp.cmd("cont")
                    time.sleep(0.01)
                rows.append({"vmm": "qemu", "pause_ms": float("nan"), "round_trip_ms": median(trips)})
            finally:
                proc.kill()
                proc.wait()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pauses", type=int, default=50)
    args = ap.parse_args()
    guests = build_guests()
    pio = pio_rate(args.runs, guests)
    report("port-I/O exits (median of %d runs each)" % args.runs, pio, "vmm-pio.json")
    if len(pio) == 2:
        print(f"kvmsnap/qemu exit rate ratio: {pio[0]['exits_per_s'] / pio[1]['exits_per_s']:.2f}")
    pause = pause_latency(args.pauses)
    report("pause latency (median of %d)" % args.pauses, pause, "vmm-pause.json")
    if len(pause) == 2:
        print(f"kvmsnap/qemu pause round-trip ratio: {pause[0]['round_trip_ms'] / pause[1]['round_trip_ms']:.2f}")


if __name__ == "__main__":
    main()
