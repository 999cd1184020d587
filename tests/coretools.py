"""Test helpers for real cores: gdb and readelf runs, console sequences, rewriting a saved core."""
import re
import subprocess

from kvmsnap.formats.kvmsnap import read_core
from kvmsnap.formats.writer import write_core


def gdb(core, *commands, timeout=60, program=None) -> str:
    """gdb's batch output for ``commands`` run against ``core`` (and the ELF ``program``: a vmlinux)."""
    args = ["gdb", "-batch", "-nx"] + ([str(program)] if program else []) + ["-c", str(core)]
    for c in commands:
        args += ["-ex", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def gdb_values(output: str) -> list[int]:
    """The integers of each ``$N = …`` line (scalars and ``{a, b, …}`` vectors), in order."""
    values = []
    for line in output.splitlines():
        m = re.match(r"\$\d+ = (.*)", line)
        if m:
            values.append([int(x, 0) for x in re.findall(r"-?0x[0-9a-f]+|-?\d+", m.group(1))])
    return values


def sequence(lines: list[str], regex: str) -> list[int]:
    """The N of every line matching ``regex`` (one group)."""
    return [int(m.group(1)) for m in (re.fullmatch(regex, l) for l in lines) if m]


def assert_continuous(values: list[int], start: int | None = 0):
    """One uninterrupted count: no gap, no repeat."""
    assert values, "no lines"
    first = values[0] if start is None else start
    assert values == list(range(first, first + len(values))), values


def console_lines(*paths) -> list[str]:
    """Complete lines of several console files read as one stream (a partial last line of one
    file is continued by the next)."""
    data = b"".join(open(p, "rb").read() for p in paths)
    return data.decode(errors="replace").split("\n")[:-1]


def rewrite_core(src, dst, change):
    """Read the core ``src``, let ``change(snapshot)`` edit it, write the result to ``dst``."""
    with read_core(src) as snapshot:
        change(snapshot)
        write_core(snapshot, str(dst), producer="test rewrite", host_kernel="test")
