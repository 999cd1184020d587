"""Process-core and vmcore notes decoded: NT_PRPSINFO, NT_SIGINFO, NT_AUXV, NT_FILE (64-bit Linux
layouts, the same on x86-64 and arm64) and the VMCOREINFO text."""
import struct

from kvmsnap.decode.bits import DecodeError

PRPSINFO = struct.Struct("<bcbb4xQII4i16s80s")   # struct elf_prpsinfo, 136 bytes
SIGINFO_HEAD = struct.Struct("<3i4xQ")           # si_signo, si_errno, si_code, union's first word
AUXV_NAMES = {0: "AT_NULL", 1: "AT_IGNORE", 2: "AT_EXECFD", 3: "AT_PHDR", 4: "AT_PHENT",
              5: "AT_PHNUM", 6: "AT_PAGESZ", 7: "AT_BASE", 8: "AT_FLAGS", 9: "AT_ENTRY",
              10: "AT_NOTELF", 11: "AT_UID", 12: "AT_EUID", 13: "AT_GID", 14: "AT_EGID",
              15: "AT_PLATFORM", 16: "AT_HWCAP", 17: "AT_CLKTCK", 23: "AT_SECURE",
              24: "AT_BASE_PLATFORM", 25: "AT_RANDOM", 26: "AT_HWCAP2", 27: "AT_RSEQ_FEATURE_SIZE",
              28: "AT_RSEQ_ALIGN", 31: "AT_EXECFN", 32: "AT_SYSINFO", 33: "AT_SYSINFO_EHDR",
              51: "AT_MINSIGSTKSZ"}
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
           7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
           13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 17: "SIGCHLD", 19: "SIGSTOP",
           31: "SIGSYS"}
FAULT_SIGNALS = {4, 7, 8, 11}     # si_addr is the first union word


def _need(desc: bytes, size: int, what: str):
    if len(desc) < size:
        raise DecodeError(f"{what}: {len(desc)} bytes, expected at least {size}")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def prpsinfo(desc: bytes) -> dict:
    _need(desc, PRPSINFO.size, "NT_PRPSINFO")
    (state, sname, zomb, nice, flag, uid, gid, pid, ppid, pgrp, sid, fname,
     psargs) = PRPSINFO.unpack_from(desc)
    return dict(state=state, sname=sname.decode("latin-1"), zombie=zomb, nice=nice, flag=flag,
                uid=uid, gid=gid, pid=pid, ppid=ppid, pgrp=pgrp, sid=sid, fname=_text(fname),
                psargs=_text(psargs))


def siginfo(desc: bytes) -> dict:
    _need(desc, SIGINFO_HEAD.size, "NT_SIGINFO")
    signo, errno, code, first = SIGINFO_HEAD.unpack_from(desc)
    out = dict(signo=signo, name=SIGNALS.get(signo), errno=errno, code=code)
    if signo in FAULT_SIGNALS:
        out["addr"] = first
    return out


def auxv(desc: bytes) -> list[dict]:
    out = []
    for i in range(0, len(desc) - 15, 16):
        key, value = struct.unpack_from("<QQ", desc, i)
        out.append(dict(type=key, name=AUXV_NAMES.get(key), value=value))
        if key == 0:
            break
    return out


def files(desc: bytes) -> dict:
    """NT_FILE: the mapped files (start, end, file offset in bytes, path)."""
    _need(desc, 16, "NT_FILE")
    count, page_size = struct.unpack_from("<QQ", desc)
    if 16 + 24 * count > len(desc):
        raise DecodeError(f"NT_FILE: {count} entries do not fit in {len(desc)} bytes")
    names = desc[16 + 24 * count:].split(b"\0")
    mappings = []
    for i in range(count):
        start, end, pgoff = struct.unpack_from("<QQQ", desc, 16 + 24 * i)
        path = names[i].decode("utf-8", "replace") if i < len(names) else None
        mappings.append(dict(start=start, end=end, offset=pgoff * page_size, path=path))
    return dict(page_size=page_size, mappings=mappings)


def vmcoreinfo(desc: bytes) -> dict:
    """VMCOREINFO: ``KEY=VALUE`` lines, e.g. OSRELEASE, PAGESIZE, SYMBOL(name), OFFSET(a.b)."""
    text = _text(desc)
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return dict(text=text, fields=fields)
