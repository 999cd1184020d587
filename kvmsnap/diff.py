"""``kvmsnap diff``: what differs between two cores: registers and device state (decoded, by
name), notes (by owner, type and vCPU), and memory pages (4 KiB, merged into ranges).

Memory is compared in 1 MiB chunks; a chunk that is a hole in both sparse files is equal without
being read, so two saves of a mostly empty 4 GiB guest compare in a fraction of a second.  Only
bytes the files hold are chunked: a range that either core lacks or does not hold in its file
(a foreign core's ``p_memsz`` may say 2^62) is one changed range, its pages counted, not listed."""
from kvmsnap import notes as N
from kvmsnap import summary
from kvmsnap.memory import PAGE_SIZE, GuestMemory
from kvmsnap.memory.core import CoreMemory

CHUNK = 1 << 20


def diff(a_path, b_path) -> dict:
    """The differences between the cores at ``a_path`` and ``b_path`` as plain data.  Each file is
    read (and validated) in turn, memory first: what is held between two reads stays small."""
    with CoreMemory.open(a_path) as ma, CoreMemory.open(b_path) as mb:
        memory = _memory(ma, mb)
    sa, sb = summary.summarize(a_path), summary.summarize(b_path)
    notes = _notes(sa.pop("notes"), sb.pop("notes"))         # and let go of both lists
    registers = []
    vcpus_b = sb["vcpus"]
    for i, va in enumerate(sa["vcpus"]):            # one vCPU of each at a time: thousands fit
        vb = vcpus_b[i] if i < len(vcpus_b) else None
        if vb is None or vb["id"] != va["id"]:
            vb = next((v for v in vcpus_b if v["id"] == va["id"]), None)
        if vb is not None:
            registers += _compare(va["id"], _flatten(va["sections"]), _flatten(vb["sections"]))
    registers += _compare(None, _flatten(sa.get("devices") or {}, "devices"),
                          _flatten(sb.get("devices") or {}, "devices"))
    return dict(a=sa["file"], b=sb["file"],
                vcpus=dict(a=len(sa["vcpus"]), b=len(sb["vcpus"])),
                registers=registers, notes=notes, memory=memory,
                identical=not registers and not notes and not memory["changed_pages"]
                and len(sa["vcpus"]) == len(sb["vcpus"]))


# ---------------------------------------------------------------------------------------------
# Registers and device state

def _label(item: dict, position: int) -> str:
    if "function" in item:
        return f"{item['function']:#x}.{item['index']}"
    if "name" in item and item["name"] and ("index" in item or "id" in item):
        return item["name"]
    if "index" in item:
        return f"{item['index']:#x}"
    return str(position)


def _flatten(data, path: str = "") -> dict:
    """``{"regs.rip": 0x100342, "fpu.xmm[3]": "0x…", "msrs[IA32_TSC]": …}``; a register with named
    bits contributes its value only (the rest is derived from it)."""
    out = {}
    if isinstance(data, dict):
        if "value" in data and path:
            out[path] = data["value"]
            return out
        for k, v in data.items():
            out.update(_flatten(v, f"{path}.{k}" if path else k))
    elif isinstance(data, list) and any(isinstance(x, dict) for x in data):
        for i, item in enumerate(data):
            out.update(_flatten(item, f"{path}[{_label(item, i)}]"))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            out[f"{path}[{i}]"] = item
    else:
        out[path] = data
    return out


def _compare(vcpu, a: dict, b: dict) -> list[dict]:
    return [dict(vcpu=vcpu, name=name, a=a.get(name), b=b.get(name))
            for name in list(a) + [n for n in b if n not in a] if a.get(name) != b.get(name)]


# ---------------------------------------------------------------------------------------------
# Notes

def _notes(a_list, b_list) -> list[dict]:
    """Notes changed, added or removed; not the digest note, which changes whenever anything does."""
    def keyed(entries):
        out, seen = {}, {}
        for entry in entries:
            if (entry["owner"], entry["type"]) == (N.OWNER_KVMSNAP, N.KVMSNAP_DIGEST):
                continue
            key = (entry["vcpu"], entry["owner"], entry["type"])
            seen[key] = seen.get(key, -1) + 1
            out[key + (seen[key],)] = (entry["blake3"], entry["type_name"], entry["size"])   # not the whole dict
        return out
    a, b = keyed(a_list), keyed(b_list)
    changes = []
    for key in list(a) + [k for k in b if k not in a]:
        ea, eb = a.get(key), b.get(key)
        if ea and eb and ea[0] == eb[0]:
            continue
        status = "changed" if ea and eb else ("only in a" if ea else "only in b")
        changes.append(dict(vcpu=key[0], owner=key[1], type=key[2], type_name=(ea or eb)[1], status=status,
                            size_a=ea[2] if ea else None, size_b=eb[2] if eb else None))
    return changes


# ---------------------------------------------------------------------------------------------
# Memory

def _bytes(mem: GuestMemory, lo: int, hi: int) -> tuple[bytes, bool]:
    """The bytes of [lo, hi) (held in the file), and whether they are known zero (a hole)."""
    if next(iter(mem.data_runs(lo, hi)), None) is None:
        return b"", True
    return mem.read(lo, hi - lo), False


def _cuts(extents) -> set[int]:
    """Where the comparison of ``extents`` must cut: every extent's start, end and end of the
    bytes held, and CHUNK steps inside the held part only (the rest, however large a foreign
    core's p_memsz says it is, is one range)."""
    cuts = set()
    for e in extents:
        cuts.update((e.start, e.end, e.held))
        cuts.update(range(e.start + CHUNK, e.held, CHUNK))
    return cuts


def _memory(ma: GuestMemory, mb: GuestMemory) -> dict:
    ea, eb = ma.extents(), mb.extents()
    cuts = sorted(_cuts(ea) | _cuts(eb))
    changed: list[list[int]] = []        # [start, end) of changed pages, ascending, merged
    compared = 0

    def mark(lo, hi):
        lo, hi = lo - lo % PAGE_SIZE, -(-hi // PAGE_SIZE) * PAGE_SIZE
        if changed and changed[-1][1] >= lo:
            changed[-1][1] = max(changed[-1][1], hi)
        else:
            changed.append([lo, hi])

    ia = ib = 0
    for lo, hi in zip(cuts, cuts[1:]):
        while ia < len(ea) and ea[ia].end <= lo:
            ia += 1
        while ib < len(eb) and eb[ib].end <= lo:
            ib += 1
        xa = ea[ia] if ia < len(ea) and ea[ia].start <= lo else None
        xb = eb[ib] if ib < len(eb) and eb[ib].start <= lo else None
        if xa is None and xb is None:
            continue
        compared += hi - lo
        if xa is None or xb is None or lo >= xa.held or lo >= xb.held:
            mark(lo, hi)                 # in one core only, or not held in the file: unknown
            continue
        da, hole_a = _bytes(ma, lo, hi)
        db, hole_b = _bytes(mb, lo, hi)
        if hole_a and hole_b:
            continue
        da, db = da or bytes(hi - lo), db or bytes(hi - lo)
        if da == db:
            continue
        for page in range(lo - lo % PAGE_SIZE, hi, PAGE_SIZE):
            x, y = max(page, lo) - lo, min(page + PAGE_SIZE, hi) - lo
            if da[x:y] != db[x:y]:
                mark(page, page + PAGE_SIZE)
    ranges = [dict(start=a, end=b, pages=(b - a) // PAGE_SIZE) for a, b in changed]
    return dict(address_space=ma.address_space, compared_bytes=compared,
                changed_pages=sum(r["pages"] for r in ranges), ranges=ranges)
