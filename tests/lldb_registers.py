"""Run inside lldb (``lldb --batch -c CORE -o "command script import lldb_registers.py"``): prints one
JSON object ``{tid: {register: value}}`` for every thread and every register lldb lists. Registers
up to 64 bits are ints; wider ones (vectors, x87) are hex strings of their bytes, most significant first."""
import json

import lldb


def __lldb_init_module(debugger, _internal):
    process = debugger.GetSelectedTarget().GetProcess()
    out = {}
    for thread in process:
        regs = {}
        for regset in thread.GetFrameAtIndex(0).GetRegisters():
            for reg in regset:
                error = lldb.SBError()
                raw = bytes(reg.GetData().ReadRawData(error, 0, reg.GetByteSize()) or b"")
                if not reg.IsValid() or error.Fail() or len(raw) != reg.GetByteSize():
                    continue        # unavailable: the core does not hold it
                value = int.from_bytes(raw, "little")
                regs[reg.GetName()] = value if len(raw) <= 8 else "0x" + raw[::-1].hex()
        out[thread.GetThreadID()] = regs
    print("REGISTERS " + json.dumps(out))
