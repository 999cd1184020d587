"""The Intel MultiProcessor Specification (1.4) table a Linux guest finds its vCPUs and interrupt
routing in: a floating pointer and a configuration table in the BIOS area (0xf0000), listing each
vCPU's LAPIC, the ISA bus, the in-kernel IOAPIC and how ISA IRQs 0-15 reach its pins (one to one,
as KVM's default GSI routing has them)."""
import struct

MPTABLE_ADDR = 0xF0000          # the floating pointer; the configuration table follows it
LAPIC_ADDR, IOAPIC_ADDR = 0xFEE00000, 0xFEC00000
LAPIC_VERSION, IOAPIC_VERSION = 0x14, 0x11
SPEC_REV = 4                    # MP spec 1.4
CPU_ENABLED, CPU_BSP = 1, 2
INT, NMI, EXTINT = 0, 1, 3      # interrupt types
ISA_BUS = 0


def _checksummed(data: bytearray, at: int) -> bytes:
    """``data`` with the byte at ``at`` set so that all bytes sum to 0 (mod 256)."""
    data[at] = -sum(data) & 0xFF
    return bytes(data)


def mptable(vcpus: int, addr: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer at ``addr`` followed by the configuration table, for ``vcpus`` vCPUs
    with APIC IDs 0..vcpus-1 (vCPU 0 the bootstrap processor) and the IOAPIC after them."""
    ioapic_id = vcpus
    entries = [struct.pack("<BBBBIIQ", 0, i, LAPIC_VERSION, CPU_ENABLED | (CPU_BSP if i == 0 else 0), 0, 0, 0)
               for i in range(vcpus)]
    entries.append(struct.pack("<BB6s", 1, ISA_BUS, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, ioapic_id, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    entries += [struct.pack("<BBHBBBB", 3, INT, 0, ISA_BUS, irq, ioapic_id, irq) for irq in range(16)]
    entries.append(struct.pack("<BBHBBBB", 4, EXTINT, 0, ISA_BUS, 0, 0xFF, 0))   # LINT0 of every LAPIC
    entries.append(struct.pack("<BBHBBBB", 4, NMI, 0, ISA_BUS, 0, 0xFF, 1))      # LINT1
    body = b"".join(entries)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), SPEC_REV, 0, b"KVMSNAP ",
                                   b"KVMSNAP VM  ", 0, 0, len(entries), LAPIC_ADDR, 0, 0, 0))
    table = _checksummed(header + body, 7)
    pointer = bytearray(struct.pack("<4sIBBBB4s", b"_MP_", addr + 16, 1, SPEC_REV, 0, 0, bytes(4)))
    return _checksummed(pointer, 10) + table
