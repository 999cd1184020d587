"""Run inside gdb (``gdb -batch -c CORE -x gdb_registers.py``): prints one JSON object
``{lwp: {register: value}}`` for every thread and every register ``info all-registers`` lists.
Integers up to 64 bits are ints; vectors and x87 registers are hex strings of their bytes."""
import json

import gdb


def _int64_array(value):
    """The value's bytes read through its widest array of 64-bit integers (vector unions)."""
    t = value.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_ARRAY and t.target().strip_typedefs().code == gdb.TYPE_CODE_INT \
            and t.target().sizeof == 8:
        n = t.sizeof // 8
        return b"".join((int(value[i]) & (1 << 64) - 1).to_bytes(8, "little") for i in range(n))
    if t.code == gdb.TYPE_CODE_UNION:
        for f in t.fields():
            if f.type.sizeof == t.sizeof:
                raw = _int64_array(value[f.name])
                if raw is not None:
                    return raw
    return None


def _value(name, value):
    t = value.type.strip_typedefs()
    if t.code == gdb.TYPE_CODE_FLT:
        text = gdb.execute(f"p/x ${name}", to_string=True)
        return "0x%0*x" % (2 * t.sizeof if t.sizeof != 16 else 20, int(text.split("=")[1], 16))
    if t.code in (gdb.TYPE_CODE_UNION, gdb.TYPE_CODE_ARRAY):
        raw = _int64_array(value)
        return None if raw is None else "0x" + raw[::-1].hex()
    return int(value) & ((1 << 8 * t.sizeof) - 1)


out = {}
for thread in sorted(gdb.selected_inferior().threads(), key=lambda t: t.num):
    thread.switch()
    frame = gdb.selected_frame()
    regs = {}
    listing = gdb.execute("info all-registers", to_string=True)
    names = [line.split()[0] for line in listing.splitlines() if line[:1].isalnum()]
    for name in names:
        try:
            value = frame.read_register(name)
            if value.is_optimized_out:
                continue
            regs[name] = _value(name, value)
        except (gdb.error, ValueError):     # <unavailable>: the core does not hold it
            continue
    out[thread.ptid[1]] = regs
print("REGISTERS " + json.dumps(out))
