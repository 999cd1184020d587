"""The ACPI tables a Linux guest gets, only so that ``poweroff`` and ``reboot`` reach the VMM: RSDP,
XSDT, a FADT with a PM1a control block and a reset register, a DSDT holding nothing but ``\\_S5``,
and a MADT listing the LAPICs and the IOAPIC (docs/boot-protocol.md gives the layout).

Linux powers off by writing SLP_TYP (the ``\\_S5`` value) with SLP_EN to PM1a_CNT, and reboots by
writing RESET_VALUE to RESET_REG; the registers are kvmsnap.vmm.acpi_pm's.
"""
import struct

ACPI_ADDR = 0xE0000                 # RSDP, then the tables (Linux also finds the RSDP by scanning here)
ACPI_END = 0xF0000                  # the MP table follows
PM1A_EVT_PORT, PM1A_CNT_PORT, RESET_PORT = 0x600, 0x604, 0x606
PM1_EVT_LEN, PM1_CNT_LEN = 4, 2
RESET_VALUE = 0x01
SLP_TYP_S5 = 5
SLP_TYP_SHIFT, SLP_EN = 10, 1 << 13
SCI_EN = 1                          # PM1_CNT bit 0: ACPI mode (always: there is no SMI command port)
SCI_IRQ = 9
OEM_ID, OEM_TABLE_ID = b"KVMSNP", b"KVMSNAP "
# Flags: a reset register; no fixed-feature power or sleep button, no fixed RTC wake event.
FADT_RESET_REG_SUP, FADT_PWR_BUTTON, FADT_SLP_BUTTON, FADT_FIX_RTC = 1 << 10, 1 << 4, 1 << 5, 1 << 6
IAPC_VGA_NOT_PRESENT = 1 << 2       # and no 8042 (bit 1 clear): Linux skips probing for one
GAS_SYSTEM_IO = 1
MADT_LAPIC, MADT_IOAPIC = 0, 1
LAPIC_ADDR, IOAPIC_ADDR = 0xFEE00000, 0xFEC00000


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """An ACPI table: the 36-byte header, checksummed, then ``body``."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, OEM_ID, OEM_TABLE_ID,
                         1, b"KVMS", 1)
    table = bytearray(header + body)
    table[9] = _checksum(table)
    return bytes(table)


def _gas(port: int, width: int) -> bytes:
    """A generic address structure for an I/O port of ``width`` bytes."""
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, 8 * width, 0, width, port)


def _dsdt() -> bytes:
    # Name (_S5_, Package (1) { 5 }): NameOp, name, PackageOp, PkgLength 4, 1 element, BytePrefix 5
    return _table(b"DSDT", 2, bytes([0x08]) + b"_S5_" + bytes([0x12, 0x04, 0x01, 0x0A, SLP_TYP_S5]))


def _fadt(dsdt: int) -> bytes:
    body = bytearray(276 - 36)

    def put(offset, fmt, *values):
        struct.pack_into(fmt, body, offset - 36, *values)
    put(40, "<I", dsdt)
    put(46, "<H", SCI_IRQ)
    put(56, "<I", PM1A_EVT_PORT)
    put(64, "<I", PM1A_CNT_PORT)
    put(88, "<BB", PM1_EVT_LEN, PM1_CNT_LEN)
    put(109, "<H", IAPC_VGA_NOT_PRESENT)
    put(112, "<I", FADT_RESET_REG_SUP | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_FIX_RTC)
    put(116, "<12sB", _gas(RESET_PORT, 1), RESET_VALUE)
    put(131, "<B", 3)                                   # FADT minor version: ACPI 6.3
    put(140, "<Q", dsdt)                                # X_DSDT
    put(148, "<12s", _gas(PM1A_EVT_PORT, PM1_EVT_LEN))
    put(172, "<12s", _gas(PM1A_CNT_PORT, PM1_CNT_LEN))
    return _table(b"FACP", 6, bytes(body))


def _madt(vcpus: int) -> bytes:
    body = struct.pack("<II", LAPIC_ADDR, 1)            # PCAT_COMPAT: the 8259s exist (KVM's)
    for cpu in range(vcpus):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, cpu, cpu, 1)          # enabled
    body += struct.pack("<BBBBII", MADT_IOAPIC, 12, vcpus, 0, IOAPIC_ADDR, 0)
    return _table(b"APIC", 5, body)


def tables(vcpus: int) -> bytes:
    """The RSDP at ACPI_ADDR and every table after it, as one block for guest memory there."""
    rsdp_len = 36
    dsdt_at = ACPI_ADDR + rsdp_len
    dsdt = _dsdt()
    fadt_at = dsdt_at + len(dsdt)
    fadt = _fadt(dsdt_at)
    madt_at = fadt_at + len(fadt)
    madt = _madt(vcpus)
    xsdt_at = madt_at + len(madt)
    xsdt = _table(b"XSDT", 1, struct.pack("<QQ", fadt_at, madt_at))
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, rsdp_len, xsdt_at, 0, bytes(3)))
    rsdp[8] = _checksum(rsdp[:20])
    rsdp[32] = _checksum(rsdp)
    block = bytes(rsdp) + dsdt + fadt + madt + xsdt
    if ACPI_ADDR + len(block) > ACPI_END:
        raise ValueError(f"ACPI tables for {vcpus} vCPUs do not fit below {ACPI_END:#x}")
    return block
