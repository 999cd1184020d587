"""Text for humans from :func:`kvmsnap.inspect.summarize`, :mod:`kvmsnap.memaccess` reads and
:func:`kvmsnap.diff.diff` results.  Only layout lives here; every value comes decoded."""


def _hex(value) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"0x{value:x}"


def _bits(reg: dict, *extra: str) -> str:
    """``0x80050033 [PE MP ET NE WP AM PG]`` plus named fields."""
    text = f"{_hex(reg['value'])} [{' '.join(reg['flags'])}]"
    fields = [f"{k}={_hex(reg[k]) if isinstance(reg[k], int) and reg[k] > 9 else reg[k]}"
              for k in extra if k in reg]
    return text + (" " + " ".join(fields) if fields else "")


def _grid(items, width=3) -> list[str]:
    items = list(items)
    return ["  " + "  ".join(f"{name:<9}{_hex(value):>18}" for name, value in items[i:i + width])
            for i in range(0, len(items), width)]


def hexdump(data: bytes, base: int = 0) -> str:
    """Classic 16-bytes-a-line hex dump with an ASCII column."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{base + i:016x}  {hexes:<47}  |{text}|")
    return "\n".join(lines) + ("\n" if lines else "")


# ---------------------------------------------------------------------------------------------
# inspect

def render_text(summary: dict) -> str:
    """The summary as text: header, memory, notes, then every vCPU section and device."""
    wanted = set(summary.get("selected", {}).get("sections") or ())
    show = (lambda name: not wanted or name in wanted)
    lines = [f"file:         {summary['file']}",
             f"kind:         {summary['kind']}",
             f"architecture: {summary['arch']}",
             f"producer:     {summary['producer'] or 'unknown'}"]
    if summary.get("format"):
        lines.append(f"format:       {summary['format']['major']}.{summary['format']['minor']}")
    if summary.get("host_kernel"):
        lines.append(f"host kernel:  {summary['host_kernel']}")
    if summary.get("config"):
        c = summary["config"]
        lines.append(f"guest:        {c['guest']}  ({c['mem_size'] // (1 << 20)} MiB, "
                     f"{c['vcpus']} vCPUs)")
    lines.append(f"vCPUs:        {len(summary['vcpus'])}")
    if show("memory"):
        lines += _memory(summary)
    if show("notes"):
        lines += _notes(summary["notes"])
    for v in summary["vcpus"]:
        lines += _vcpu(v, show)
    if summary.get("devices") and show("devices"):
        lines += _devices(summary["devices"])
    if summary.get("process") and show("process"):
        lines += _process(summary["process"])
    if summary.get("vmcoreinfo") and show("vmcoreinfo"):
        lines += ["", "VMCOREINFO:"] + [f"  {k} = {v}" for k, v in
                                        summary["vmcoreinfo"]["fields"].items()]
    return "\n".join(lines) + "\n"


def _memory(summary) -> list[str]:
    lines = []
    if summary.get("memory_map"):
        lines += ["", "Memory slots:", f"  {'slot':>4}  {'guest-physical':>18}  {'size':>12}"]
        for m in summary["memory_map"]:
            lines.append(f"  {m['slot']:>4}  {m['gpa']:#18x}  {m['size']:#12x}")
    lines += ["", "Memory segments (PT_LOAD):",
              f"  {'paddr':>18}  {'vaddr':>18}  {'size':>12}  {'offset':>12}  kind"]
    for m in summary["memory"]:
        kind = "physical" if m["physical"] else ("virtual" if summary["kind"] == "kvmsnap"
                                                 else "")
        if m["beyond_eof"]:
            kind += " (past end of file)"
        if m["filesz"] < m["size"]:
            kind += f" (0x{m['filesz']:x} bytes in file)"
        lines.append(f"  {m['paddr']:#18x}  {m['vaddr']:#18x}  {m['size']:#12x}  "
                     f"{m['offset']:#12x}  {kind}".rstrip())
    return lines


def _notes(notes) -> list[str]:
    lines = ["", "Notes:", f"  {'owner':<12} {'type':>10}  {'name':<22} {'size':>8}  vcpu"]
    for n in notes:
        vcpu = "" if n["vcpu"] is None else str(n["vcpu"])
        unknown = "" if n.get("decoded", True) else "  (not decoded)"
        lines.append(f"  {n['owner'][:12]:<12} {n['type']:#10x}  {n['type_name']:<22} "
                     f"{n['size']:>8}  {vcpu:<4}{unknown}".rstrip())
    return lines


def _vcpu(v, show) -> list[str]:
    header = f"vCPU {v['id']}"
    if v.get("pid") is not None:
        header += f" (pid {v['pid']})"
    lines = ["", header + ":"]
    sections = v.get("sections", {})
    if not sections and show("regs"):
        lines += _grid(v["regs"].items())
    for name, data in sections.items():
        render = _SECTION_RENDERERS.get(name, _generic)
        lines += [f" {name}:"] + render(data)
    return lines


def _regs(r) -> list[str]:
    flat = [(k, v) for k, v in r.items() if not isinstance(v, dict)]
    lines = _grid(flat)
    for name in ("rflags", "pstate"):
        if name in r:
            lines.append(f"  {name:<8}{_bits(r[name], 'iopl', 'mode', 'btype')}")
    return lines


def _segments(s) -> list[str]:
    lines = []
    for name, seg in s.items():
        if name in ("gdt", "idt"):
            lines.append(f"  {name:<4} base {_hex(seg['base'])} limit {_hex(seg['limit'])} "
                         f"({seg['entries']} entries)")
        elif "attributes" in seg:
            lines.append(f"  {name:<4} {seg['selector']:#06x} (index {seg['index']}, "
                         f"{'LDT' if seg['ti'] else 'GDT'}, RPL {seg['rpl']}) base "
                         f"{_hex(seg['base'])} limit {_hex(seg['limit'])}: "
                         f"{', '.join(seg['attributes'])}")
        else:
            base = f" base {_hex(seg['base'])}" if "base" in seg else ""
            lines.append(f"  {name:<4} {seg['selector']:#06x}{base}")
    return lines


def _control(c) -> list[str]:
    lines = []
    for name, value in c.items():
        if isinstance(value, dict) and "flags" in value:
            lines.append(f"  {name:<10}{_bits(value, 'address')}")
        elif isinstance(value, dict):
            lines.append(f"  {name:<10}{_hex(value['value'])} (table {_hex(value['table'])}, "
                         f"PCID {value['pcid']})")
        else:
            lines.append(f"  {name:<10}{_hex(value)}")
    return lines


def _debug(d) -> list[str]:
    lines = _grid((f"dr{n}", d[f"dr{n}"]) for n in range(4))
    lines.append(f"  dr6     {_bits(d['dr6'])}")
    lines.append(f"  dr7     {_bits(d['dr7'])}")
    for b in d["dr7"]["breakpoints"]:
        scope = "+".join(k for k in ("local", "global") if b[k])
        lines.append(f"    breakpoint {b['n']}: {b['condition']} {b['length']} bytes at "
                     f"{_hex(b['address'])} ({scope})")
    return lines


def _fpu(f) -> list[str]:
    lines = []
    if "x87" in f:
        x = f["x87"]
        lines += [f"  xcr0      {_bits(f['xcr0'])}", f"  xstate_bv {_bits(f['xstate_bv'])}",
                  f"  fcw       {_bits(x['fcw'], 'precision', 'rounding')}",
                  f"  fsw       {_bits(x['fsw'], 'top')}",
                  f"  ftw       {_hex(x['ftw'])} (tag word {_hex(x['tag'])})  fop "
                  f"{_hex(x['fop'])}  fip {_hex(x['fip'])}  fdp {_hex(x['fdp'])}"]
        lines += [f"  st{i}       {r}" for i, r in enumerate(x["st"])]
        lines.append(f"  mxcsr     {_bits(f['mxcsr'], 'rounding')}  mask {_hex(f['mxcsr_mask'])}")
        for kind in ("zmm", "ymm", "xmm"):       # the widest set holds the narrower ones
            if kind in f:
                lines += [f"  {kind}{i:<6}{v}" for i, v in enumerate(f[kind])]
                break
        if "k" in f:
            lines += _grid((f"k{i}", v) for i, v in enumerate(f["k"]))
        if "pkru" in f:
            lines.append(f"  pkru      {_hex(f['pkru'])}")
    else:                                          # aarch64
        lines += [f"  v{i:<8}{v}" for i, v in enumerate(f["v"])]
        lines += [f"  fpsr     {_bits(f['fpsr'])}", f"  fpcr     {_bits(f['fpcr'], 'rounding')}"]
    return lines


def _msrs(msrs) -> list[str]:
    return [f"  {m['index']:#010x}  {m['name'] or '(unknown)':<28} {_hex(m['value'])}"
            for m in msrs]


def _lapic(a) -> list[str]:
    lines = [f"  id {a['id']}  version {_hex(a['version']['version'])} (max LVT "
             f"{a['version']['max_lvt']})  TPR {_hex(a['tpr'])}  PPR {_hex(a['ppr'])}  "
             f"LDR {_hex(a['ldr'])}  DFR {_hex(a['dfr'])}",
             f"  SVR {_hex(a['svr']['value'])}: spurious vector {_hex(a['svr']['spurious_vector'])}"
             f", APIC {'enabled' if a['svr']['enabled'] else 'disabled'}",
             f"  ISR {a['isr']}  IRR {a['irr']}  TMR {a['tmr']}",
             f"  ESR {_bits(a['esr'])}  ICR {_hex(a['icr']['value'])}"]
    for name, lvt in a["lvt"].items():
        words = [f"vector {_hex(lvt['vector'])}", "masked" if lvt["masked"] else "unmasked"]
        words += [str(lvt[k]) for k in ("mode", "delivery_mode", "trigger", "polarity") if k in lvt]
        lines.append(f"  LVT {name:<8} {_hex(lvt['value']):>10}: {', '.join(words)}")
    t = a["timer"]
    lines.append(f"  timer: {t['mode']}, initial count {t['initial_count']}, current count "
                 f"{t['current_count']}, divide by {t['divide']}")
    return lines


def _cpuid(rows) -> list[str]:
    return [f"  {r['function']:#010x}.{r['index']:<3} eax {r['eax']:08x} ebx {r['ebx']:08x} "
            f"ecx {r['ecx']:08x} edx {r['edx']:08x}  {' '.join(r['features'])}".rstrip()
            for r in rows]


def _sysregs(rows) -> list[str]:
    return [f"  {r['id']}  {r['group']:<8} {r['name'] or '?':<36} {_hex(r['value'])}"
            for r in rows]


def _generic(data, indent=2) -> list[str]:
    """Nested dicts and lists, one ``key: value`` per line."""
    pad = " " * indent
    if isinstance(data, dict):
        if "value" in data and "flags" in data:
            return [pad + _bits(data)]
        lines = []
        for k, v in data.items():
            if isinstance(v, (dict, list)) and v and not _flat_list(v):
                lines += [f"{pad}{k}:"] + _generic(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
        return lines
    if isinstance(data, list):
        return [line for item in data for line in _generic(item, indent)] \
            if not _flat_list(data) else [pad + _scalar(data)]
    return [pad + _scalar(data)]


def _flat_list(v) -> bool:
    return isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)


def _scalar(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int):
        return str(v) if 0 <= v < 10 else f"{v} ({v:#x})"
    if isinstance(v, list):
        return "[" + ", ".join(map(_scalar, v)) + "]"
    if isinstance(v, dict):
        return "{}"
    return str(v)


_SECTION_RENDERERS = dict(regs=_regs, segments=_segments, control=_control, debug=_debug,
                          fpu=_fpu, msrs=_msrs, lapic=_lapic, cpuid=_cpuid, sysregs=_sysregs)


def _devices(d) -> list[str]:
    lines = ["", "Devices:"]
    for name, state in d.items():
        if name == "ioapic":
            lines.append(f"  ioapic: base {_hex(state['base_address'])}, id {state['id']}, "
                         f"irr {_hex(state['irr'])}")
            for p in state["redirtbl"]:
                if not p["masked"] or p["vector"]:
                    lines.append(f"    pin {p['pin']:>2}: vector {_hex(p['vector'])}, "
                                 f"{p['delivery_mode']}, {p['dest_mode']} {p['dest_id']}, "
                                 f"{p['trigger']}, {p['polarity']}"
                                 + (", masked" if p["masked"] else ""))
        else:
            lines += [f"  {name}:"] + _generic(state, 4)
    return lines


def _process(p) -> list[str]:
    lines = ["", "Process:"]
    if "prpsinfo" in p:
        i = p["prpsinfo"]
        lines.append(f"  {i['fname']} (pid {i['pid']}, ppid {i['ppid']}, uid {i['uid']}, "
                     f"state {i['sname']}): {i['psargs']}")
    if "auxv" in p:
        lines += [f"  {a['name'] or a['type']:<22} {_hex(a['value'])}" for a in p["auxv"]]
    if "files" in p:
        lines += [f"  {m['start']:#018x}-{m['end']:#018x} {m['offset']:#10x}  {m['path']}"
                  for m in p["files"]["mappings"]]
    return lines


def render_raw(note: dict) -> str:
    """``inspect --raw``: the note's header and a hex dump of its descriptor."""
    vcpu = "" if note["vcpu"] is None else f", vCPU {note['vcpu']}"
    return (f"{note['owner']}/{note['type_name']} (type {note['type']:#x}, {note['size']} bytes "
            f"at offset {note['offset']:#x}{vcpu})\n" + hexdump(note["data"]))


# ---------------------------------------------------------------------------------------------
# diff

def render_diff(d: dict) -> str:
    """``kvmsnap diff``: changed registers, notes, and memory as page ranges."""
    lines = [f"a: {d['a']}", f"b: {d['b']}"]
    if d["identical"]:
        return "\n".join(lines + ["identical"]) + "\n"
    if d["vcpus"]["a"] != d["vcpus"]["b"]:
        lines.append(f"vCPUs: {d['vcpus']['a']} in a, {d['vcpus']['b']} in b")
    lines += ["", f"Registers and device state ({len(d['registers'])} differ):"]
    for r in d["registers"]:
        where = "vm" if r["vcpu"] is None else f"vCPU {r['vcpu']}"
        lines.append(f"  {where:<7} {r['name']:<32} {_hex(r['a']):>18} -> {_hex(r['b'])}")
    lines += ["", f"Notes ({len(d['notes'])} differ):"]
    for n in d["notes"]:
        where = "" if n["vcpu"] is None else f" (vCPU {n['vcpu']})"
        lines.append(f"  {n['owner']}/{n['type_name']}{where}: {n['status']}")
    m = d["memory"]
    lines += ["", f"Memory ({m['address_space']}, {m['compared_bytes'] >> 20} MiB compared): "
                  f"{m['changed_pages']} pages differ in {len(m['ranges'])} ranges"]
    for r in m["ranges"]:
        lines.append(f"  {r['start']:#014x}-{r['end']:#014x}  {r['pages']} page"
                     + ("s" if r["pages"] > 1 else ""))
    return "\n".join(lines) + "\n"
