"""XSAVE facts: where each state component lives (CPUID leaf 0xD of the vCPU, else the Intel
defaults), XCR0 in kvm_xcrs and in Linux's NT_X86_XSTATE, and the standard-format size."""
import struct

from kvmsnap.arch.x86_64 import cpuid as cpuid_table
from kvmsnap.arch.x86_64.layouts import (KVM_MAX_XCRS, XFEATURES, XSAVE_HDR_OFFSET, XSAVE_HDR_SIZE,
                                         XSAVE_LEGACY_SIZE, XSAVE_RESERVED_OFFSET, XSAVE_XCR0_OFFSET, kvm_xcrs)

XCR0_LEGACY = 0x3            # x87 | SSE: what every x86-64 CPU has, and a bare FXSAVE image holds


def components(xcr0: int, cpuid: bytes | None) -> dict[int, tuple[int, int]]:
    """bit -> (standard-format offset, size) of each extended component (bit >= 2) in ``xcr0``:
    from the vCPU's CPUID leaf 0xD sub-leaves when the table has them (AMD and Intel differ),
    else from the Intel defaults in :data:`~kvmsnap.arch.x86_64.layouts.XFEATURES`."""
    leaf_d = {}
    for row in cpuid_table.entries(cpuid or b""):
        if row[0] == 0xd and row[1] >= 2 and row[3]:
            leaf_d[row[1]] = (row[4], row[3])            # (EBX offset, EAX size)
    out = {}
    for bit in range(2, 64):
        if xcr0 >> bit & 1:
            offset, size = leaf_d.get(bit) or XFEATURES.get(bit, ("", 0, 0))[1:]
            if size:
                out[bit] = (offset, size)
    return out


def xstate_size(xcr0: int, cpuid: bytes | None, limit: int) -> int:
    """Standard-format XSAVE size for the components in ``xcr0`` (what Linux writes in
    NT_X86_XSTATE and what gdb >= 14 matches against its known layouts), capped at ``limit``."""
    end = XSAVE_LEGACY_SIZE + XSAVE_HDR_SIZE
    for offset, size in components(xcr0, cpuid).values():
        end = max(end, offset + size)
    return min(end, limit)


def without_reserved(area: bytes) -> bytes:
    """``area`` with bytes 416..511 of its legacy region zeroed: reserved, and filled in by the
    kernel that reads the state (Linux puts its own XSAVE description at 464), so hosts differ."""
    return (area[:XSAVE_RESERVED_OFFSET] + bytes(XSAVE_LEGACY_SIZE - XSAVE_RESERVED_OFFSET)
            + area[XSAVE_LEGACY_SIZE:])


def xstate_bv(area: bytes) -> int:
    """XSTATE_BV of an XSAVE area: the components whose state it holds."""
    return int.from_bytes(area[XSAVE_HDR_OFFSET:XSAVE_HDR_OFFSET + 8], "little")


def without_components(area: bytes, mask: int) -> bytes:
    """``area`` holding no state of the components in ``mask`` (cleared from XSTATE_BV: their
    initial state, as if the guest had never used them)."""
    return area[:XSAVE_HDR_OFFSET] + (xstate_bv(area) & ~mask).to_bytes(8, "little") + area[XSAVE_HDR_OFFSET + 8:]


def xcr0_of(xcrs: bytes) -> int | None:
    """XCR0 from raw kvm_xcrs, or None when KVM reported no XCR0."""
    parsed = kvm_xcrs.parse(xcrs)
    for entry in parsed.xcrs[:min(parsed.nr_xcrs, KVM_MAX_XCRS)]:
        if entry.xcr == 0:
            return entry.value
    return None


def debugger_xcr0(xcr0: int) -> int:
    """The components of ``xcr0`` a debugger can be shown: those with a standard (Intel) place."""
    return xcr0 & (XCR0_LEGACY | sum(1 << bit for bit in XFEATURES if bit >= 2))


def linux_xstate(xsave: bytes, xcr0: int, cpuid: bytes) -> bytes:
    """The NT_X86_XSTATE descriptor, in the layout every gdb reads: the legacy area and header as
    KVM gave them, each component of ``xcr0`` moved from where this vCPU's CPUID puts it (AMD and
    Intel differ) to its Intel standard offset, XCR0 in the software-reserved bytes 464..471 and
    zeros in 472..511, as Linux writes it.  gdb 13 knows only Intel offsets and refuses other
    sizes (".reg-xstate too small"); gdb 14 and later, and NT_X86_XSAVE_LAYOUT readers, agree."""
    xcr0 = debugger_xcr0(xcr0)
    placed = components(xcr0, cpuid)
    area = bytearray(xstate_size(xcr0, None, 1 << 20))
    area[:XSAVE_LEGACY_SIZE + XSAVE_HDR_SIZE] = xsave[:XSAVE_LEGACY_SIZE + XSAVE_HDR_SIZE]
    for bit, (offset, size) in components(xcr0, None).items():
        source = placed[bit][0]
        area[offset:offset + size] = xsave[source:source + size].ljust(size, b"\0")
    area[XSAVE_XCR0_OFFSET:XSAVE_LEGACY_SIZE] = struct.pack("<Q", xcr0) + bytes(40)
    return bytes(area)


def linux_layout(xcr0: int) -> list[tuple[int, int, int]]:
    """``(component, size, offset)`` of each extended component :func:`linux_xstate` writes, for
    NT_X86_XSAVE_LAYOUT."""
    return [(bit, size, offset) for bit, (offset, size)
            in components(debugger_xcr0(xcr0), None).items()]


def xcr0_from_linux_xstate(area: bytes) -> int:
    """XCR0 as Linux (and gdb's gcore) store it in NT_X86_XSTATE bytes 464..471."""
    raw = area[XSAVE_XCR0_OFFSET:XSAVE_XCR0_OFFSET + 8]
    return int.from_bytes(raw, "little") if len(raw) == 8 else XCR0_LEGACY
