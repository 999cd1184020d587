"""CPUID tables as raw ``kvm_cpuid_entry2`` arrays: look-ups and the per-vCPU patches we apply."""
import struct

ENTRY_SIZE = 40            # sizeof(struct kvm_cpuid_entry2)
_ENTRY = struct.Struct("<10I")   # function index flags eax ebx ecx edx padding[3]

#: XSAVE components a sample guest may enable: x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM (no AMX).
GUEST_XCR0_MASK = 0b1110_0111


def entries(table: bytes) -> list[list[int]]:
    """The table as mutable [function, index, flags, eax, ebx, ecx, edx, pad, pad, pad] lists."""
    return [list(_ENTRY.unpack_from(table, off)) for off in range(0, len(table) - ENTRY_SIZE + 1, ENTRY_SIZE)]


def pack(rows: list[list[int]]) -> bytes:
    """Inverse of ``entries``."""
    return b"".join(_ENTRY.pack(*row) for row in rows)


def lookup(table: bytes, function: int, index: int = 0):
    """(eax, ebx, ecx, edx) of a leaf, or None."""
    for row in entries(table):
        if row[0] == function and row[1] == index:
            return tuple(row[3:7])
    for row in entries(table):       # leaves without a significant index
        if row[0] == function:
            return tuple(row[3:7])
    return None


def supported_xcr0(table: bytes) -> int:
    """XCR0 bits the table offers (leaf 0xD subleaf 0: EDX:EAX)."""
    leaf = lookup(table, 0xD, 0)
    return (leaf[3] << 32 | leaf[0]) if leaf else 0x3


def for_vcpu(table: bytes, apic_id: int) -> bytes:
    """``table`` with this vCPU's APIC ID in leaf 1 EBX[31:24] and the x2APIC ID in leaves 0xB/0x1F."""
    rows = entries(table)
    for row in rows:
        if row[0] == 1:
            row[4] = (row[4] & 0x00FFFFFF) | (apic_id & 0xFF) << 24
        elif row[0] in (0xB, 0x1F):
            row[6] = apic_id
    return pack(rows)
