"""What a Linux guest's memory tells about it: the VMCOREINFO that crash, drgn and makedumpfile
read (kernel release, page size, symbol addresses, structure offsets).

Linux keeps VMCOREINFO as a complete ELF note at the start of a page of its own
(``vmcoreinfo_note``, kernel/crash_core.c): name "VMCOREINFO", type 0, text beginning
"OSRELEASE=". A save looks for that page in the guest's RAM and copies the note into the core, as
the kernel's own vmcores and QEMU's dump-guest-memory carry it (docs/core-format.md)."""
import struct

PAGE = 4096
NAME = b"VMCOREINFO\0\0"                # namesz 11, padded to 4 bytes
MARK = NAME + b"OSRELEASE="             # at page offset 12: after namesz, descsz, type
CHUNK = 64 << 20                        # bytes searched per read


def find_vmcoreinfo(memory) -> bytes | None:
    """The VMCOREINFO text found in ``memory`` (a GuestMemory), or None: no Linux guest, or one
    too early in its boot to have written it."""
    for slot in memory.slots():
        for start, end in memory.data_runs(slot.gpa, slot.end):
            at = start
            while at < end:
                size = min(CHUNK + len(MARK), end - at)
                chunk = memory.read(at, size)
                hit = chunk.find(MARK)
                while hit >= 0:
                    text = _note_text(memory, at + hit - 12)
                    if text is not None:
                        return text
                    hit = chunk.find(MARK, hit + 1)
                at += CHUNK
    return None


def _note_text(memory, addr: int) -> bytes | None:
    if addr % PAGE or not memory.contains(addr, PAGE):
        return None
    page = memory.read(addr, PAGE)
    namesz, descsz, n_type = struct.unpack_from("<III", page)
    if namesz != len(b"VMCOREINFO\0") or n_type != 0 or not 0 < descsz <= PAGE - 24:
        return None
    return page[24:24 + descsz].rstrip(b"\0")
