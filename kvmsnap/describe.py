"""Text for humans from :func:`kvmsnap.summary.summarize`, guest-memory reads and
:func:`kvmsnap.diff.diff` results.  Only layout lives here; every value comes decoded."""
WIDTH = 120                  # no line of render_text is longer
NBSP = "\xa0"                # joins the words of one item so that _fill never breaks inside it
PIT_CHANNELS = ("system timer, IRQ0", "DRAM refresh, legacy", "PC speaker")
IOAPIC_DEFAULT = dict(vector=0, delivery_mode="fixed", dest_mode="physical", delivery_status=0,
                      polarity="active high", remote_irr=0, trigger="edge", masked=1, dest_id=0)
PROCESS_ONLY = ("ppid", "pgrp", "sid", "signal", "cursig", "sigpend", "sighold", "pr_utime",
                "pr_stime")          # NT_PRSTATUS fields that a VM's vCPU leaves zero


def _hex(value) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"0x{value:x}"


def _bits(reg: dict | None, *extra: str) -> str:
    """``0x80050033 [PE MP ET NE WP AM PG]`` plus named fields; ``-`` for null."""
    if reg is None:
        return "-"
    text = f"{_hex(reg['value'])} [{' '.join(reg['flags'])}]"
    fields = [f"{k}={_hex(reg[k]) if isinstance(reg[k], int) and reg[k] > 9 else reg[k]}"
              for k in extra if k in reg]
    return text + (" " + " ".join(fields) if fields else "")


def _fill(head: str, text: str) -> list[str]:
    """``head`` then ``text``, broken at spaces to stay within WIDTH, continued under the text;
    a word longer than what is left of a line is broken.  Greedy, as textwrap, without its
    import-time regular expressions."""
    indent = " " * min(len(head), WIDTH // 2)
    lines, line, empty = [], head, True
    for word in text.split(" "):
        if not empty and word and len(line) + 1 + len(word) > WIDTH:
            lines.append(line)
            line, empty = indent, True
        line, empty = (line + word if empty else f"{line} {word}"), empty and not word
        while len(line) > WIDTH:
            lines.append(line[:WIDTH])
            line = indent + line[WIDTH:]
    lines.append(line)
    return [line.replace(NBSP, " ").rstrip() for line in lines]


def _items(items, sep=", ") -> str:
    """``items`` joined by ``sep`` for :func:`_fill`, which then breaks only between items."""
    return sep.join(str(item).replace(" ", NBSP) for item in items)


def _grid(items, width=3) -> list[str]:
    items = list(items)
    return ["  " + "  ".join(f"{name:<9}{_hex(value):>18}" for name, value in items[i:i + width])
            for i in range(0, len(items), width)]


def _wide(name: str, value: str) -> list[str]:
    """A register wider than 64 bits; one too long for a line (zmm) in 256-bit parts, high first."""
    head = f"  {name:<10}"
    if len(head) + len(value) <= WIDTH:
        return [head + value]
    digits = value[2:]
    return [(head + "0x" if i == 0 else " " * (len(head) + 2)) + digits[i:i + 64]
            for i in range(0, len(digits), 64)]


def _nonzero(value) -> bool:
    return (int(value, 16) if isinstance(value, str) else value) != 0


def hexdump(data: bytes, base: int = 0) -> str:
    """Classic 16-bytes-a-line hex dump with an ASCII column."""
    return "".join(hexdump_blocks(data, base))


def hexdump_blocks(data: bytes, base: int = 0, block: int = 64 << 10):
    """:func:`hexdump` as text blocks of ``block`` bytes each, for output too large to build at once."""
    for at in range(0, len(data), block):
        lines = []
        for i in range(at, min(at + block, len(data)), 16):
            chunk = data[i:i + 16]
            hexes = " ".join(f"{b:02x}" for b in chunk)
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{base + i:016x}  {hexes:<47}  |{text}|\n")
        yield "".join(lines)


# ---------------------------------------------------------------------------------------------
# inspect

def render_text(summary: dict, show_all: bool = False) -> str:
    """The summary as text (:func:`render_blocks` joined)."""
    return "".join(render_blocks(summary, show_all))


def render_blocks(summary: dict, show_all: bool = False):
    """The summary as text, a block at a time (the header, each vCPU, the rest): header, memory,
    notes, then every vCPU section and device.

    Lines stay within WIDTH columns.  Unless ``show_all``, all-zero vector registers and CPUID
    leaves, zero process-only thread fields and IOAPIC pins at their reset value are left out
    (and counted)."""
    wanted = set(summary.get("selected", {}).get("sections") or ())
    show = (lambda name: not wanted or name in wanted)
    selected = summary.get("selected", {}).get("vcpu")
    total = summary.get("vcpu_count")
    of = f" of {total}" if selected is not None and total is not None else ""
    lines = _fill("file:         ", summary["file"]) + [
        f"kind:         {summary['kind']}",
        f"architecture: {summary['arch']}",
        f"producer:     {summary['producer'] or 'unknown'}"]
    if summary.get("format"):
        lines.append(f"format:       {summary['format']['major']}.{summary['format']['minor']}")
    if summary.get("host_kernel"):
        lines.append(f"host kernel:  {summary['host_kernel']}")
    if summary.get("config"):
        c = summary["config"]
        lines += _fill("guest:        ", f"{c['guest']}  ({c['mem_size'] // (1 << 20)} MiB, "
                                         f"{c['vcpus']} vCPUs)")
    if summary.get("base"):
        b = summary["base"]
        lines += _fill("increment of: ", f"{b['path']}  ({b['changed_bytes'] >> 10} KiB changed in "
                                         f"{b['changed_runs']} runs; every other page is the base's)")
    if summary.get("digest"):
        d = summary["digest"]
        lines += _fill("digests:      ", f"BLAKE3 of the headers, {d['notes']} notes and {d['chunks']} memory chunks "
                                         f"of {d['chunk_size'] >> 20} MiB (kvmsnap verify checks them)")
    lines.append(f"vCPUs:        {len(summary['vcpus'])}" if selected is None
                 else f"vCPU:         {selected}{of}")
    if show("memory"):
        lines += _memory(summary)
    if show("notes"):
        lines += _notes(summary["notes"])
    for v in summary["vcpus"]:
        yield "\n".join(lines) + "\n"
        lines = _vcpu(v, show, show_all, of)
    if summary.get("devices") and show("devices"):
        lines += _devices(summary["devices"], show_all)
    if summary.get("process") and show("process"):
        lines += _process(summary["process"])
    if summary.get("xsave_layout") and show("xsave_layout"):
        lines += [""] + _fill("XSAVE layout of NT_X86_XSTATE (NT_X86_XSAVE_LAYOUT): ", _items(
            f"{c['name'] or c['component']} {c['offset']}+{c['size']}" for c in summary["xsave_layout"]))
    if summary.get("vmcoreinfo") and show("vmcoreinfo"):
        lines += ["", "VMCOREINFO:"]
        for k, v in summary["vmcoreinfo"]["fields"].items():
            lines += _fill(f"  {k} = ", v)
    yield "\n".join(lines) + "\n"


def _memory(summary) -> list[str]:
    lines = []
    if summary.get("memory_map"):
        lines += ["", "Memory slots:", f"  {'slot':>4}  {'guest-physical':>18}  {'size':>12}"]
        for m in summary["memory_map"]:
            lines.append(f"  {m['slot']:>4}  {m['gpa']:#18x}  {m['size']:#12x}")
    lines += ["", "Memory segments (PT_LOAD):",
              f"  {'paddr':>18}  {'vaddr':>18}  {'size':>12}  {'offset':>12}  kind"]
    for m in summary["memory"]:
        kind = ["physical"] if m["physical"] else ["virtual"] * (summary["kind"] == "kvmsnap")
        if m["beyond_eof"]:
            kind.append("(past end of file)")
        if m["filesz"] < m["size"]:
            kind.append(f"(0x{m['filesz']:x} bytes in file)")
        lines += _fill(f"  {m['paddr']:#18x}  {m['vaddr']:#18x}  {m['size']:#12x}  "
                       f"{m['offset']:#12x}  ", _items(kind, " "))
    return lines


def _notes(notes) -> list[str]:
    lines = ["", "Notes:", f"  {'owner':<12} {'type':>10}  {'name':<22} {'size':>8}  vcpu"]
    for n in notes:
        vcpu = "" if n["vcpu"] is None else str(n["vcpu"])
        unknown = "" if n.get("decoded", True) else "  (not decoded)"
        lines.append(f"  {n['owner'][:12]:<12} {n['type']:#10x}  {n['type_name']:<22} "
                     f"{n['size']:>8}  {vcpu:<4}{unknown}".rstrip())
    return lines


def _vcpu(v, show, show_all, of) -> list[str]:
    header = f"vCPU {v['id']}{of}"
    if v.get("pid") is not None:
        header += f" (pid {v['pid']})"
    lines = ["", header + ":"]
    sections = v.get("sections", {})
    if "regs" not in sections and show("regs"):       # i386 and short NT_PRSTATUS: flat only
        lines += [" regs:"] + _grid(v["regs"].items())
    for name, data in sections.items():
        if name in _FILTERED_RENDERERS:
            body = _FILTERED_RENDERERS[name](data, show_all)
        else:
            body = _SECTION_RENDERERS.get(name, _generic)(data)
        lines += [f" {name}:"] + body
    return lines


def _thread(t, show_all) -> list[str]:
    """pid, fpvalid, and the process-only fields that are not zero (all with ``show_all``)."""
    words = []
    for k, v in t.items():
        times = isinstance(v, dict)          # pr_utime, pr_stime
        if show_all or k not in PROCESS_ONLY or (any(v.values()) if times else v):
            words.append(f"{k} {v['tv_sec']}.{v['tv_usec']:06d} s" if times else
                         f"{k} {_hex(v) if k in ('sigpend', 'sighold') else v}")
    return _fill("  ", _items(words))


def _regs(r) -> list[str]:
    flat = [(k, v) for k, v in r.items() if not isinstance(v, dict)]
    lines = _grid(flat)
    for name in ("rflags", "pstate"):
        if name in r:
            lines += _fill(f"  {name:<8}", _bits(r[name], "iopl", "mode", "btype"))
    return lines


def _segments(s) -> list[str]:
    lines = []
    for name, seg in s.items():
        if name in ("gdt", "idt"):
            lines.append(f"  {name:<4} base {_hex(seg['base'])} limit {_hex(seg['limit'])} "
                         f"({seg['entries']} entries)")
        elif "attributes" in seg:
            lines += _fill(f"  {name:<4} {seg['selector']:#06x} (index {seg['index']}, "
                           f"{'LDT' if seg['ti'] else 'GDT'}, RPL {seg['rpl']}) base "
                           f"{_hex(seg['base'])} limit {_hex(seg['limit'])}: ",
                           _items(seg["attributes"]))
        else:
            base = f" base {_hex(seg['base'])}" if "base" in seg else ""
            lines.append(f"  {name:<4} {seg['selector']:#06x}{base}")
    return lines


def _control(c) -> list[str]:
    lines = []
    for name, value in c.items():
        if isinstance(value, dict) and "flags" in value:
            lines += _fill(f"  {name:<10}", _bits(value, "address"))
        elif isinstance(value, dict):
            lines.append(f"  {name:<10}{_hex(value['value'])} (table {_hex(value['table'])}, "
                         f"PCID {value['pcid']})")
        else:
            lines.append(f"  {name:<10}{_hex(value)}")
    return lines


def _debug(d) -> list[str]:
    lines = _grid((f"dr{n}", d[f"dr{n}"]) for n in range(4))
    lines += _fill("  dr6     ", _bits(d["dr6"])) + _fill("  dr7     ", _bits(d["dr7"]))
    for b in d["dr7"]["breakpoints"]:
        scope = "+".join(k for k in ("local", "global") if b[k])
        lines.append(f"    breakpoint {b['n']}: {b['condition']} {b['length']} bytes at "
                     f"{_hex(b['address'])} ({scope})")
    return lines


def _fpu(f, show_all) -> list[str]:
    """x87, SSE/AVX/AVX-512 (x86) or FP/SIMD (aarch64); all-zero registers counted, not shown."""
    if "x87" in f:
        x = f["x87"]
        lines = (_fill("  xcr0      ", _bits(f["xcr0"]))
                 + _fill("  xstate_bv ", _bits(f["xstate_bv"]))
                 + _fill("  fcw       ", _bits(x["fcw"], "precision", "rounding"))
                 + _fill("  fsw       ", _bits(x["fsw"], "top"))
                 + [f"  ftw       {_hex(x['ftw'])} (tag word {_hex(x['tag'])})  fop "
                    f"{_hex(x['fop'])}  fip {_hex(x['fip'])}  fdp {_hex(x['fdp'])}"]
                 + _fill("  mxcsr     ", f"{_bits(f['mxcsr'], 'rounding')}  mask "
                                         f"{_hex(f['mxcsr_mask'])}"))
        wide = [(f"st{i}", r) for i, r in enumerate(x["st"])]
        kind = next((k for k in ("zmm", "ymm", "xmm") if k in f), None)  # widest holds the rest
        wide += [(f"{kind}{i}", v) for i, v in enumerate(f[kind])] if kind else []
        opmask = [(f"k{i}", v) for i, v in enumerate(f.get("k", ()))]
    else:                                          # aarch64
        lines = _fill("  fpsr      ", _bits(f["fpsr"])) + _fill("  fpcr      ",
                                                               _bits(f["fpcr"], "rounding"))
        wide, opmask = [(f"v{i}", v) for i, v in enumerate(f["v"])], []
    wide_shown, opmask_shown = ([(n, v) for n, v in regs if show_all or _nonzero(v)]
                                for regs in (wide, opmask))
    lines += [line for n, v in wide_shown for line in _wide(n, v)] + _grid(opmask_shown)
    if "pkru" in f:
        lines.append(f"  pkru      {_hex(f['pkru'])}")
    hidden = len(wide) + len(opmask) - len(wide_shown) - len(opmask_shown)
    if hidden:
        lines.append(f"  {hidden} all-zero registers not shown; --all shows them")
    return lines


def _msrs(msrs) -> list[str]:
    return [f"  {m['index']:#010x}  {m['name'] or '(unknown)':<28} {_hex(m['value'])}"
            for m in msrs]


def _lapic(a) -> list[str]:
    lines = [f"  id {a['id']}  version {_hex(a['version']['version'])} (max LVT "
             f"{a['version']['max_lvt']})  TPR {_hex(a['tpr'])}  PPR {_hex(a['ppr'])}  "
             f"LDR {_hex(a['ldr'])}  DFR {_hex(a['dfr'])}",
             f"  SVR {_hex(a['svr']['value'])}: spurious vector {_hex(a['svr']['spurious_vector'])}"
             f", APIC {'enabled' if a['svr']['enabled'] else 'disabled'}"]
    for name in ("isr", "irr", "tmr"):
        lines += _fill(f"  {name.upper()} ", _items(map(_hex, a[name])) or "none")
    lines += _fill("  ESR ", f"{_bits(a['esr'])}  ICR {_hex(a['icr']['value'])}")
    for name, lvt in a["lvt"].items():
        words = [f"vector {_hex(lvt['vector'])}", "masked" if lvt["masked"] else "unmasked"]
        words += [str(lvt[k]) for k in ("mode", "delivery_mode", "trigger", "polarity") if k in lvt]
        lines.append(f"  LVT {name:<8} {_hex(lvt['value']):>10}: {', '.join(words)}")
    t = a["timer"]
    lines.append(f"  timer: {t['mode']}, initial count {t['initial_count']}, current count "
                 f"{t['current_count']}, divide by {t['divide']}")
    return lines


def _cpuid(rows, show_all) -> list[str]:
    shown = [r for r in rows if show_all or any(r[k] for k in ("eax", "ebx", "ecx", "edx"))]
    lines = [line for r in shown for line in _fill(
        f"  {r['function']:#010x}.{r['index']:<3} eax {r['eax']:08x} ebx {r['ebx']:08x} "
        f"ecx {r['ecx']:08x} edx {r['edx']:08x}  ", " ".join(r["features"]))]
    if len(rows) > len(shown):
        lines.append(f"  {len(rows) - len(shown)} all-zero CPUID leaves not shown; --all shows "
                     "them")
    return lines


def _sysregs(rows) -> list[str]:
    return [f"  {r['id']}  {r['group']:<8} {r['name'] or '?':<36} {_hex(r['value'])}"
            for r in rows]


def _generic(data, indent=2) -> list[str]:
    """Nested dicts and lists, one ``key: value`` per line."""
    pad = " " * indent
    if isinstance(data, dict):
        if "value" in data and "flags" in data:
            return _fill(pad, _bits(data))
        lines = []
        for k, v in data.items():
            if isinstance(v, (dict, list)) and v and not _flat_list(v):
                lines += [f"{pad}{k}:"] + _generic(v, indent + 2)
            else:
                lines += _fill(f"{pad}{k}: ", _scalar(v))
        return lines
    if isinstance(data, list) and not _flat_list(data):
        return [line for item in data for line in _generic(item, indent)]
    return _fill(pad, _scalar(data))


def _flat_list(v) -> bool:
    return isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)


def _scalar(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int):
        return str(v) if 0 <= v < 10 else f"{v}{NBSP}({v:#x})"
    if isinstance(v, list):
        return "[" + _items(map(_scalar, v)) + "]"
    if isinstance(v, dict):
        return "{}"
    return str(v)


_SECTION_RENDERERS = dict(regs=_regs, segments=_segments, control=_control, debug=_debug,
                          msrs=_msrs, lapic=_lapic, sysregs=_sysregs)
_FILTERED_RENDERERS = dict(thread=_thread, fpu=_fpu, cpuid=_cpuid)    # these take show_all


def _devices(d, show_all) -> list[str]:
    lines = ["", "Devices:"]
    for name, state in d.items():
        if name == "ioapic":
            lines += _ioapic(state, show_all)
        elif name == "pit":
            lines.append(f"  pit: flags {_hex(state['flags'])}")
            for n, c in enumerate(state["channels"]):
                words = [f"mode {c['mode']} ({c['mode_name']})", f"access {c['access']}"]
                words += [f"{k} {c[k]}" for k in c if k not in ("mode", "mode_name", "access",
                                                                 "rw_mode")]
                lines += _fill(f"    channel {n} ({PIT_CHANNELS[n]}): ", _items(words))
        elif name == "uart_input":      # escaped: a core's bytes never reach the terminal raw
            lines.append(f"  uart_input: {state['length']} bytes the guest has not read: {state['text']!r}")
        else:
            lines += [f"  {name}:"] + _generic(state, 4)
    return lines


def _ioapic(state, show_all) -> list[str]:
    """Base, ID, IRR, and the redirection table without the pins still at their reset value."""
    lines = [f"  ioapic: base {_hex(state['base_address'])}, id {state['id']}, "
             f"ioregsel {_hex(state['ioregsel'])}, irr {_hex(state['irr'])}"]
    pins = state["redirtbl"]
    shown = [p for p in pins
             if show_all or any(p[k] != v for k, v in IOAPIC_DEFAULT.items())]
    for p in shown:
        flags = ["masked" if p["masked"] else "unmasked"] + ["remote IRR"] * p["remote_irr"] \
            + ["delivery pending"] * p["delivery_status"]
        lines.append(f"    pin {p['pin']:>2}: vector {_hex(p['vector'])}, {p['delivery_mode']}, "
                     f"{p['dest_mode']} destination {p['dest_id']}, {p['trigger']}, "
                     f"{p['polarity']}, {', '.join(flags)}")
    hidden = len(pins) - len(shown)
    if hidden:
        count = f"{hidden} of {len(pins)}" if shown else f"all {len(pins)}"
        lines.append(f"    {count} pins masked with default settings, not shown; --all shows them")
    return lines


def _process(p) -> list[str]:
    lines = ["", "Process:"]
    if "prpsinfo" in p:
        i = p["prpsinfo"]
        lines += _fill(f"  {i['fname']} (pid {i['pid']}, ppid {i['ppid']}, uid {i['uid']}, "
                       f"state {i['sname']}): ", i["psargs"])
    if "auxv" in p:
        lines += [f"  {a['name'] or a['type']:<22} {_hex(a['value'])}" for a in p["auxv"]]
    if "files" in p:
        for m in p["files"]["mappings"]:
            lines += _fill(f"  {m['start']:#018x}-{m['end']:#018x} {m['offset']:#10x}  ",
                           m["path"] if m["path"] is not None else "(no name in NT_FILE)")
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
