"""Test helpers for real cores: gdb and readelf runs, console sequences, rewriting a saved core."""
import re
import struct
import subprocess

from kvmsnap import notes
from kvmsnap.arch.x86_64.msrs import COUNTER_MSRS
from kvmsnap.formats.kvmsnap import read_core
from kvmsnap.formats.writer import write_core


def gdb_for(core) -> str:
    """The gdb that reads ``core``: gdb-multiarch for an aarch64 one (e_machine 183)."""
    return "gdb-multiarch" if b"\xb7\x00" == open(core, "rb").read(20)[18:20] else "gdb"


def gdb(core, *commands, timeout=60, program=None) -> str:
    """gdb's batch output for ``commands`` run against ``core`` (and the ELF ``program``: a vmlinux)."""
    args = [gdb_for(core), "-batch", "-nx"] + ([str(program)] if program else []) + ["-c", str(core)]
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


def assert_debuggers_read(core, vmlinux, cpus, logged):
    """What a crash analyst runs on a Linux guest's core: gdb's backtrace of every vCPU names kernel
    functions, crash opens it (log, bt -a, ps) and drgn reads init_task and the kernel log; both
    logs hold ``logged``, a line the guest printed before the save."""
    text = gdb(core, "info threads", "thread apply all bt", program=vmlinux, timeout=600)
    stacks = re.split(r"^Thread \d+ .*\n", text, flags=re.M)[1:]
    assert len(stacks) == cpus, text
    for stack in stacks:    # kernel functions from the PC down (gdb stops at the IRQ stack's edge)
        frames = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", stack, re.M)
        assert frames and frames[0] != "??", text
        # A vCPU saved inside the entry code (arch/x86/entry/*.S: no DWARF call frame information)
        # gives gdb nothing to unwind by: the function at the PC is all it can name.
        in_entry_code = re.search(r"^#0 .* at \S*/arch/x86/entry/\S+\.S:\d+$", stack, re.M)
        assert in_entry_code or len([f for f in frames if f != "??"]) >= 2, text
    r = subprocess.run(["crash", "-s", vmlinux, str(core)], input="log\nbt -a\nps\nq\n", capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and logged in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    assert len(re.findall(r"^PID: \d+ .* CPU: \d+ ", r.stdout, re.M)) >= cpus, r.stdout[-4000:]
    assert re.search(r"^>?\s+0\s+0\s+0\s+ffffffff[0-9a-f]{8}\s+RU .*\[swapper/0\]", r.stdout, re.M), r.stdout
    script = ("import drgn, sys\n"
              "from drgn.helpers.linux.printk import get_printk_records\n"
              "prog = drgn.Program()\n"
              "prog.set_core_dump(sys.argv[1])\n"
              "prog.load_debug_info([sys.argv[2]])\n"
              "print(prog['init_task'].comm.string_().decode())\n"
              "for record in get_printk_records(prog):\n"
              "    print(record.text.decode(errors='replace'))\n")
    r = subprocess.run(["python3", "-c", script, str(core), vmlinux], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    first, *log = r.stdout.splitlines()
    assert first == "swapper/0" and any(logged in line for line in log), r.stdout[-2000:]


def notes_by_key(core):
    """The notes of ``core`` by (owner, type, vCPU), and the core."""
    with read_core(core) as c:
        return {(n.owner, n.type, n.vcpu): n.desc for n in c.info.elf.notes}, c


def mask_volatile(key, desc: bytes) -> bytes:
    """A note with the fields that move on by themselves (clocks, counters; docs/restore.md) zeroed."""
    from kvmsnap.arch.x86_64.vcpu import LAPIC_TMCCT       # a live module: tests with KVM only
    owner, ntype, _vcpu = key
    d = bytearray(desc)
    if ntype == notes.KVMSNAP_LAPIC:
        d[8 + LAPIC_TMCCT:8 + LAPIC_TMCCT + 4] = bytes(4)
    elif ntype == notes.KVMSNAP_MSRS:
        count = struct.unpack_from("<I", d, 8)[0]
        for i in range(count):
            off = 16 + 16 * i
            if struct.unpack_from("<I", d, off)[0] in COUNTER_MSRS:   # count on by themselves
                d[off + 8:off + 16] = bytes(8)
    elif ntype in (notes.KVMSNAP_CLOCK, notes.KVMSNAP_PIT, notes.KVMSNAP_HEADER, notes.KVMSNAP_DIGEST):
        return b""            # kvmclock and PIT load time are clocks; the header names the producer run;
        #                       the digests change with any of these
    return bytes(d)
