"""Byte layouts: parse/build round trips, sizes against the compiled cffi module, note registry
(the offline half's imports: tests/test_imports.py)."""
import struct

import construct
import pytest

from conftest import ROOT
from kvmsnap import notes as N
from kvmsnap.arch.x86_64.notes import VCPU_NOTES
from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.arch.x86_64 import layouts as x86
from kvmsnap.formats import elf


# construct struct -> the C struct it mirrors in kvmsnap/kvm/build_ffi.py
CFFI_STRUCTS = {
    "kvm_regs": x86.kvm_regs, "kvm_segment": x86.kvm_segment, "kvm_dtable": x86.kvm_dtable,
    "kvm_sregs": x86.kvm_sregs, "kvm_sregs2": x86.kvm_sregs2, "kvm_xcrs": x86.kvm_xcrs,
    "kvm_lapic_state": x86.kvm_lapic_state, "kvm_debugregs": x86.kvm_debugregs,
    "kvm_msr_entry": x86.kvm_msr_entry, "kvm_cpuid_entry2": x86.kvm_cpuid_entry2,
    "kvm_mp_state": x86.kvm_mp_state, "kvm_vcpu_events": x86.kvm_vcpu_events,
    "kvm_irqchip": x86.kvm_irqchip, "kvm_pit_channel_state": x86.kvm_pit_channel_state,
    "kvm_pit_state2": x86.kvm_pit_state2, "kvm_clock_data": x86.kvm_clock_data,
}


def _ffi():
    try:
        from kvmsnap.kvm._kvm import ffi
    except ImportError:
        pytest.skip("kvmsnap.kvm._kvm not built (python3 kvmsnap/kvm/build_ffi.py)")
    return ffi


@pytest.mark.parametrize("name", sorted(CFFI_STRUCTS))
def test_size_matches_cffi(name):
    ffi = _ffi()
    assert CFFI_STRUCTS[name].sizeof() == ffi.sizeof(f"struct {name}")


@pytest.mark.parametrize("name,field", [("kvm_sregs", "efer"), ("kvm_sregs2", "flags"),
                                        ("kvm_sregs2", "pdptrs"), ("kvm_vcpu_events", "flags"),
                                        ("kvm_vcpu_events", "exception_payload"),
                                        ("kvm_pit_state2", "flags"), ("kvm_clock_data", "host_tsc"),
                                        ("kvm_xcrs", "padding"), ("kvm_debugregs", "dr7")])
def test_field_offsets_match_cffi(name, field):
    ffi = _ffi()
    offset = 0
    for sub in CFFI_STRUCTS[name].subcons:
        if sub.name == field:
            break
        offset += sub.sizeof()
    assert offset == ffi.offsetof(f"struct {name}", field)


@pytest.mark.parametrize("layouts", [x86, arm64], ids=["x86_64", "aarch64"])
def test_declared_sizes(layouts):
    assert {s: s.sizeof() for s in layouts.SIZES} == layouts.SIZES


def test_paging_registers_sit_alike_in_sregs_and_sregs2():
    from kvmsnap.arch.x86_64.paging import PagingState
    a, b = elf.offsets(x86.kvm_sregs), elf.offsets(x86.kvm_sregs2)
    assert [a[n] for n in PagingState._fields] == [b[n] for n in PagingState._fields]


def test_numbers_typed_in_offline_modules_match_the_header():
    """The offline modules cannot import the compiled module, so the few <linux/kvm.h> numbers they
    need are written there; each must be the header's."""
    _ffi()
    from kvmsnap.arch.x86_64 import decode, devices
    from kvmsnap.kvm import lib
    assert x86.KVM_MAX_XCRS == lib.KVM_MAX_XCRS and x86.KVM_APIC_REG_SIZE == lib.KVM_APIC_REG_SIZE
    assert x86.KVM_IOAPIC_NUM_PINS == lib.KVM_IOAPIC_NUM_PINS
    assert (x86.KVM_IRQCHIP_PIC_MASTER, x86.KVM_IRQCHIP_PIC_SLAVE, x86.KVM_IRQCHIP_IOAPIC) == \
        (lib.KVM_IRQCHIP_PIC_MASTER, lib.KVM_IRQCHIP_PIC_SLAVE, lib.KVM_IRQCHIP_IOAPIC)
    declared = {name: value for value, name in decode.MP_STATES.items()
                if hasattr(lib, f"KVM_MP_STATE_{name}")}          # the build declares five of them
    assert len(declared) == 5
    assert all(getattr(lib, f"KVM_MP_STATE_{name}") == value for name, value in declared.items())
    assert {bit: getattr(lib, f"KVM_CLOCK_{name}") for bit, name in devices.KVM_CLOCK_FLAGS.items()} == \
        {bit: bit for bit in devices.KVM_CLOCK_FLAGS}


def _round_trip(layout, data: bytes):
    """parse -> build gives the same bytes, and the size is the declared one."""
    assert len(data) == layout.sizeof()
    parsed = layout.parse(data)
    assert layout.build(parsed) == data
    return parsed


def _pattern(size, seed=1):
    return bytes((seed * 7 + i * 13) & 0xff for i in range(size))


@pytest.mark.parametrize("layout", [
    x86.kvm_regs, x86.kvm_segment, x86.kvm_dtable, x86.kvm_sregs, x86.kvm_sregs2, x86.kvm_xcrs,
    x86.kvm_lapic_state, x86.kvm_debugregs, x86.kvm_msr_entry, x86.kvm_cpuid_entry2,
    x86.kvm_mp_state, x86.kvm_vcpu_events, x86.kvm_pic_state, x86.kvm_ioapic_state,
    x86.kvm_pit_channel_state, x86.kvm_pit_state2, x86.kvm_clock_data, x86.user_regs_struct,
    x86.user_fpregs_struct, x86.QEMUCPUSegment, x86.QEMUCPUState, x86.UartState,
    elf.Elf64_Ehdr, elf.Elf64_Phdr, elf.Elf64_Shdr, elf.Elf64_Nhdr, elf.Elf32_Ehdr, elf.Elf32_Phdr,
], ids=lambda layout: str(layout.sizeof()))
def test_round_trip(layout):
    _round_trip(layout, _pattern(layout.sizeof()))


def test_prstatus_layout():
    data = bytearray(336)
    struct.pack_into("<i", data, 32, 7)                       # pr_pid
    struct.pack_into("<27Q", data, 112, *range(100, 127))     # pr_reg
    struct.pack_into("<i", data, 328, 1)                      # pr_fpvalid
    pr = x86.elf_prstatus.parse(bytes(data))
    assert pr.pr_pid == 7 and pr.pr_fpvalid == 1
    assert pr.pr_reg.r15 == 100 and pr.pr_reg.rip == 116 and pr.pr_reg.gs == 126
    assert x86.elf_prstatus.build(pr) == bytes(data)
    assert x86.USER_REGS.index("orig_rax") == 15 and x86.USER_REGS.index("fs_base") == 21


def test_irqchip_decodes_pic_and_ioapic():
    pic = bytes([1, 2, 0xfb, 4, 5, 0x20, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    raw = struct.pack("<II", x86.KVM_IRQCHIP_PIC_SLAVE, 0) + pic + bytes(496)
    chip = _round_trip(x86.kvm_irqchip, raw)
    assert chip.chip.imr == 0xfb and chip.chip.irq_base == 0x20 and chip.chip.elcr_mask == 16

    entry = 0x31 | (1 << 8) | (1 << 11) | (1 << 13) | (1 << 15) | (1 << 16) | (0x5a << 56)
    ioapic = struct.pack("<QIIII", 0xfec00000, 3, 0x01000000, 5, 0) + struct.pack("<Q", entry) * 24
    raw = struct.pack("<II", x86.KVM_IRQCHIP_IOAPIC, 0) + ioapic + bytes(512 - len(ioapic))
    chip = _round_trip(x86.kvm_irqchip, raw)
    r = chip.chip.redirtbl[7]
    assert (r.vector, r.delivery_mode, r.dest_mode, r.polarity, r.trig_mode, r.mask, r.dest_id) \
        == (0x31, 1, 1, 1, 1, 1, 0x5a)
    assert chip.chip.base_address == 0xfec00000

    raw = struct.pack("<II", 9, 0) + _pattern(512)
    assert _round_trip(x86.kvm_irqchip, raw).chip == _pattern(512)


def test_qemu_segment_flags():
    seg = x86.kvm_segment.parse(x86.kvm_segment.build(dict(
        base=0, limit=0xffffffff, selector=8, type=11, present=1, dpl=0, db=0, s=1, l=1, g=1,
        avl=0, unusable=0, padding=0)))
    assert x86.qemu_segment_flags(seg) == 0xa09b00       # what QEMU shows for a 64-bit CS


# ---------------------------------------------------------------------------------------------
# Private notes

PRIVATE_SAMPLES = {
    N.KVMSNAP_HEADER: dict(magic=N.KVMSNAP_MAGIC, format_major=1, format_minor=0, arch=1,
                           nr_vcpus=2, reserved=0, host_kernel="6.1.0-é", producer="kvmsnap 0.1"),
    N.KVMSNAP_CONFIG: dict(mem_size=1 << 30, vcpus=2, reserved=0, guest="samples/hello.elf"),
    N.KVMSNAP_MEMORY_MAP: dict(reserved=0, regions=[dict(slot=0, flags=0, guest_phys_addr=0,
                                                         memory_size=1 << 20, phdr_index=3,
                                                         reserved=0)]),
    N.KVMSNAP_IRQCHIP: dict(pic_master=bytes(520), pic_slave=bytes(520), ioapic=_pattern(520)),
    N.KVMSNAP_PIT: dict(pit=_pattern(112)),
    N.KVMSNAP_CLOCK: dict(clock=_pattern(48)),
    N.KVMSNAP_UART: dict(uart=_pattern(10)),
    N.KVMSNAP_CMOS: dict(cmos=_pattern(129)),
    N.KVMSNAP_PCI: dict(pci=_pattern(4)),
    N.KVMSNAP_ACPI_PM: dict(acpi_pm=_pattern(4)),
    N.KVMSNAP_UART_INPUT: dict(reserved=0, input=b"typed\n"),
    N.KVMSNAP_BASE: dict(base_size=1 << 30, state_blake3=bytes(range(32)), path="/var/lib/vm/base.core"),
    N.KVMSNAP_DIGEST: dict(chunk_shift=21, memory_offset=0x6000, reserved=0, headers=_pattern(32),
                           notes=_pattern(64), chunks=_pattern(96), own=_pattern(32)),
    N.KVMSNAP_SREGS: dict(flags=1, reserved=0, sregs=_pattern(320)),
    N.KVMSNAP_XSAVE: dict(reserved=0, xsave=_pattern(4096)),
    N.KVMSNAP_XCRS: dict(xcrs=_pattern(392)),
    N.KVMSNAP_LAPIC: dict(lapic=_pattern(1024)),
    N.KVMSNAP_MSRS: dict(pad=0, entries=[dict(index=0x10, reserved=0, data=5),
                                         dict(index=0xc0000080, reserved=0, data=0xd01)]),
    N.KVMSNAP_VCPU_EVENTS: dict(events=_pattern(64)),
    N.KVMSNAP_DEBUGREGS: dict(debugregs=_pattern(128)),
    N.KVMSNAP_MP_STATE: dict(mp_state=3, reserved=0),
    N.KVMSNAP_CPUID: dict(padding=0, entries=_pattern(120)),
    N.KVMSNAP_TSC_KHZ: dict(tsc_khz=2_500_000, reserved=0),
    N.KVMSNAP_ARM64_REGS: dict(reserved=0, regs=[dict(id=0x6030000000100040, value=_pattern(8)),
                                                 dict(id=0x6040000000100054, value=_pattern(16)),
                                                 dict(id=0x6020000000140000, value=_pattern(4))]),
    N.KVMSNAP_ARM64_VCPU: dict(features=[0x74, 0, 0, 0, 0, 0, 0], mp_state=5, reserved=0, events=_pattern(64)),
    N.KVMSNAP_VGIC: dict(reserved=0, vgic=_pattern(16 + 24)),
    N.KVMSNAP_PL011: dict(pl011=_pattern(40)),
}


@pytest.mark.parametrize("n_type", sorted(PRIVATE_SAMPLES), ids=hex)
def test_private_payload_round_trip(n_type):
    entry = N.lookup(N.OWNER_KVMSNAP, n_type)
    built = entry.payload.build(PRIVATE_SAMPLES[n_type])
    version, size = struct.unpack_from("<II", built)
    assert version == 0x10000 and size == len(built)
    assert size >= N.MIN_SIZES.get(n_type, 8)
    assert entry.payload.build(entry.payload.parse(built)) == built


def test_sregs_payload_follows_flag():
    built = N.KvmsnapSregs.build(dict(flags=0, reserved=0, sregs=_pattern(312)))
    assert len(built) == 16 + 312
    with pytest.raises(construct.ConstructError):
        N.KvmsnapSregs.build(dict(flags=1, reserved=0, sregs=_pattern(312)))


def test_registry_dispatches_on_owner_and_type():
    assert N.type_name("CORE", 1) == "NT_PRSTATUS"
    assert N.type_name("KVMSNAP", 1) == "0x1"                 # not NT_PRSTATUS
    assert N.type_name("QEMU", 0) == "QEMU_CPUSTATE"
    assert N.type_name("VMCOREINFO", 0) == "VMCOREINFO"
    assert N.type_name("LINUX", 0x202) == "NT_X86_XSTATE"
    assert N.type_name("CORE", 0x46494c45) == "NT_FILE"
    assert N.type_name("Foo", 1) == "0x1"
    assert N.lookup("LINUX", 1) is None


def test_private_types_do_not_collide():
    private = [t for (o, t) in N.REGISTRY if o == N.OWNER_KVMSNAP]
    assert len(private) == len(set(private)) == len(PRIVATE_SAMPLES)
    assert not set(private) & set(N._LINUX_TYPES)
    assert all(t >> 16 == 0x4b53 for t in private)
    # pyelftools names ET_CORE notes by type alone: ours must stay unnamed there
    from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE
    assert not set(private) & set(ENUM_CORE_NOTE_N_TYPE.values())
    assert VCPU_NOTES[0] == ("CORE", N.NT_PRSTATUS)
    assert N.FORMAT_NOTES[0] == N.KVMSNAP_HEADER


def test_mp_table_checksums_and_lists_every_vcpu_the_ioapic_and_isa_irqs():
    from kvmsnap.arch.x86_64.mptable import MPTABLE_ADDR, mptable
    table = mptable(3)
    pointer, config = table[:16], table[16:]
    assert pointer[:4] == b"_MP_" and sum(pointer) % 256 == 0
    assert struct.unpack_from("<I", pointer, 4)[0] == MPTABLE_ADDR + 16 and pointer[8] == 1   # 16-byte units
    assert config[:4] == b"PCMP" and struct.unpack_from("<H", config, 4)[0] == len(config)
    assert sum(config) % 256 == 0
    count, = struct.unpack_from("<H", config, 34)
    sizes, at, kinds = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}, 44, []
    for _ in range(count):
        kinds.append(config[at])
        at += sizes[config[at]]
    assert at == len(config)
    assert kinds == [0] * 3 + [1, 2] + [3] * 16 + [4, 4]
    cpus = [config[44 + 20 * i: 64 + 20 * i] for i in range(3)]
    assert [c[1] for c in cpus] == [0, 1, 2] and [c[3] for c in cpus] == [3, 1, 1]    # enabled; vCPU 0 BSP
