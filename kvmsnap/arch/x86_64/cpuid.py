"""CPUID tables as raw ``kvm_cpuid_entry2`` arrays: look-ups and the per-vCPU patches we apply."""
import struct

from kvmsnap.arch.x86_64.layouts import kvm_cpuid_entry2

ENTRY_SIZE = kvm_cpuid_entry2.sizeof()
_ENTRY = struct.Struct(f"<{ENTRY_SIZE // 4}I")   # kvm_cpuid_entry2 is all u32: function index
                                                 # flags eax ebx ecx edx padding[3]

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


#: CPU features checked on restore: (leaf, subleaf, register) → {bit: name}. Bits the OS sets
#: (OSXSAVE, OSPKE) and topology fields are not features and are left out.
FEATURES = {
    (1, 0, "ecx"): {0: "sse3", 1: "pclmulqdq", 9: "ssse3", 12: "fma", 13: "cx16", 17: "pcid", 19: "sse4_1",
                    20: "sse4_2", 21: "x2apic", 22: "movbe", 23: "popcnt", 24: "tsc_deadline_timer", 25: "aes",
                    26: "xsave", 28: "avx", 29: "f16c", 30: "rdrand"},
    (1, 0, "edx"): {0: "fpu", 4: "tsc", 5: "msr", 6: "pae", 8: "cx8", 9: "apic", 11: "sep", 13: "pge",
                    15: "cmov", 16: "pat", 19: "clflush", 23: "mmx", 24: "fxsr", 25: "sse", 26: "sse2"},
    (7, 0, "ebx"): {0: "fsgsbase", 3: "bmi1", 4: "hle", 5: "avx2", 7: "smep", 8: "bmi2", 9: "erms",
                    10: "invpcid", 11: "rtm", 16: "avx512f", 17: "avx512dq", 18: "rdseed", 19: "adx",
                    20: "smap", 21: "avx512ifma", 23: "clflushopt", 24: "clwb", 28: "avx512cd", 29: "sha_ni",
                    30: "avx512bw", 31: "avx512vl"},
    (7, 0, "ecx"): {1: "avx512vbmi", 2: "umip", 3: "pku", 6: "avx512_vbmi2", 8: "gfni", 9: "vaes",
                    10: "vpclmulqdq", 11: "avx512_vnni", 12: "avx512_bitalg", 14: "avx512_vpopcntdq",
                    16: "la57", 22: "rdpid", 25: "cldemote", 27: "movdiri", 28: "movdir64b"},
    (7, 0, "edx"): {4: "fsrm", 14: "serialize", 16: "tsxldtrk", 22: "amx_bf16", 23: "avx512_fp16",
                    24: "amx_tile", 25: "amx_int8"},
    (0xD, 1, "eax"): {0: "xsaveopt", 1: "xsavec", 2: "xgetbv1", 3: "xsaves"},
    (0x80000001, 0, "ecx"): {0: "lahf_lm", 5: "abm", 8: "3dnowprefetch"},
    (0x80000001, 0, "edx"): {11: "syscall", 20: "nx", 26: "pdpe1gb", 27: "rdtscp", 29: "lm"},
}
_REG = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}


def missing_features(guest: bytes, host: bytes) -> list[tuple[int, int, str, int, str]]:
    """Features the guest's CPUID table claims and the host's supported table lacks:
    (leaf, subleaf, register, bit, name)."""
    missing = []
    for (leaf, sub, reg), bits in FEATURES.items():
        g, h = lookup(guest, leaf, sub), lookup(host, leaf, sub)
        if g is None:
            continue
        host_bits = h[_REG[reg]] if h else 0
        for bit, name in bits.items():
            if g[_REG[reg]] >> bit & 1 and not host_bits >> bit & 1:
                missing.append((leaf, sub, reg, bit, name))
    return missing


def without_features(table: bytes, features) -> bytes:
    """``table`` with the given (leaf, subleaf, register, bit, …) feature bits cleared."""
    return _with_bits(table, features, False)


def with_features(table: bytes, features) -> bytes:
    """``table`` with the given (leaf, subleaf, register, bit, …) feature bits set."""
    return _with_bits(table, features, True)


def _with_bits(table: bytes, features, value: bool) -> bytes:
    rows = entries(table)
    for leaf, sub, reg, bit, *_ in features:
        for row in rows:
            if row[0] == leaf and (row[1] == sub or not row[2] & 1):   # flags bit 0: index significant
                row[3 + _REG[reg]] = row[3 + _REG[reg]] & ~(1 << bit) | value << bit
    return pack(rows)
