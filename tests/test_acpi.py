"""The ACPI tables a Linux guest gets (offline): every checksum holds, the pointers lead from the RSDP
to each table, and the FADT and DSDT say what the VMM answers (poweroff, reset). Booted by Linux in
test_linux.py (poweroff ends the run)."""
import struct

from kvmsnap.arch.x86_64 import acpi


def tables(vcpus=2):
    block = acpi.tables(vcpus)

    def at(addr, size):
        return block[addr - acpi.ACPI_ADDR:addr - acpi.ACPI_ADDR + size]

    def table(addr):
        signature, length = struct.unpack("<4sI", at(addr, 8))
        data = at(addr, length)
        assert sum(data) & 0xFF == 0, signature
        return signature, data
    return block, at, table


def test_rsdp_leads_to_every_table_and_checksums_hold():
    _, at, table = tables()
    rsdp = at(acpi.ACPI_ADDR, 36)
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    assert rsdp[15] == 2                                        # revision: the XSDT is used
    signature, xsdt = table(struct.unpack_from("<Q", rsdp, 24)[0])
    assert signature == b"XSDT"
    found = dict(table(addr) for addr in struct.unpack_from("<2Q", xsdt, 36))
    assert set(found) == {b"FACP", b"APIC"}
    fadt = found[b"FACP"]
    dsdt_addr, = struct.unpack_from("<Q", fadt, 140)
    assert struct.unpack_from("<I", fadt, 40)[0] == dsdt_addr
    signature, dsdt = table(dsdt_addr)
    assert signature == b"DSDT" and dsdt[36:] == b"\x08_S5_\x12\x04\x01\x0a\x05"


def test_fadt_points_linux_at_the_vmm_ports():
    _, at, table = tables()
    xsdt_addr = struct.unpack_from("<Q", at(acpi.ACPI_ADDR, 36), 24)[0]
    fadt_addr = struct.unpack_from("<Q", table(xsdt_addr)[1], 36)[0]
    fadt = table(fadt_addr)[1]
    assert struct.unpack_from("<H", fadt, 46)[0] == acpi.SCI_IRQ
    assert struct.unpack_from("<II", fadt, 56) == (acpi.PM1A_EVT_PORT, 0)
    assert struct.unpack_from("<I", fadt, 64)[0] == acpi.PM1A_CNT_PORT
    flags, = struct.unpack_from("<I", fadt, 112)
    assert flags & acpi.FADT_RESET_REG_SUP and not flags & (1 << 20)           # not hardware-reduced
    assert struct.unpack_from("<BBBBQB", fadt, 116) == (1, 8, 0, 1, acpi.RESET_PORT, acpi.RESET_VALUE)


def test_madt_lists_each_vcpu_and_the_ioapic():
    _, at, table = tables(vcpus=3)
    xsdt_addr = struct.unpack_from("<Q", at(acpi.ACPI_ADDR, 36), 24)[0]
    madt = table(struct.unpack_from("<2Q", table(xsdt_addr)[1], 36)[1])[1]
    entries, pos = [], 44
    while pos < len(madt):
        kind, length = madt[pos], madt[pos + 1]
        entries.append((kind, madt[pos:pos + length]))
        pos += length
    lapics = [e for k, e in entries if k == acpi.MADT_LAPIC]
    assert [e[3] for e in lapics] == [0, 1, 2] and all(struct.unpack_from("<I", e, 4)[0] == 1 for e in lapics)
    (ioapic,) = [e for k, e in entries if k == acpi.MADT_IOAPIC]
    assert ioapic[2] == 3 and struct.unpack_from("<II", ioapic, 4) == (acpi.IOAPIC_ADDR, 0)
