"""Start-up benchmark: whole-process time of `kvmsnap --help` and `kvmsnap inspect CORE` (a 1-vCPU kvmsnap
core) against `python3 -c 'import click, construct'` in the same environment. Target: ratio <= 1.3.

    python3 benchmarks/bench_startup.py [--runs 20] [--core CORE]

Each command is a new process, timed from spawn to exit (wall) and by its user+system CPU; the three
commands take turns, and the median of --runs is reported. kvmsnap's bytecode is compiled first, as
pip does for click and construct when it installs them (an editable install, or a shell with
PYTHONDONTWRITEBYTECODE=1, would otherwise compile every module in every run). Without --core, the core is a synthetic
1-vCPU, 8 MiB one made by tests/synthetic.py (no KVM needed).
"""
import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from common import HERE

ROOT = os.path.dirname(HERE)


def run_once(cmd) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``cmd`` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def synthetic_core(path: str) -> str:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from synthetic import make_state, write
    write(make_state(nvcpus=1), path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--core", help="a 1-vCPU kvmsnap core (default: a synthetic one)")
    args = ap.parse_args()
    compileall.compile_dir(os.path.join(ROOT, "kvmsnap"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        core = args.core or synthetic_core(os.path.join(tmp, "one.core"))
        commands = {"import click, construct": [sys.executable, "-c", "import click, construct"],
                    "kvmsnap --help": [sys.executable, "-m", "kvmsnap", "--help"],
                    "kvmsnap inspect CORE": [sys.executable, "-m", "kvmsnap", "inspect", core]}
        times = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(run_once(cmd))
    base_wall, base_cpu = (statistics.median(t[i] for t in times["import click, construct"]) for i in (0, 1))
    print(f"{'command':<26}{'wall ms':>9}{'ratio':>7}{'cpu ms':>9}{'ratio':>7}   (median of {args.runs})")
    for name, samples in times.items():
        wall, cpu = (statistics.median(t[i] for t in samples) for i in (0, 1))
        print(f"{name:<26}{wall * 1e3:>9.1f}{wall / base_wall:>7.2f}{cpu * 1e3:>9.1f}{cpu / base_cpu:>7.2f}")


if __name__ == "__main__":
    main()
