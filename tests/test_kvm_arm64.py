"""The arm64 KVM layer on real KVM/arm64 (in the lab: scripts/lab aarch64 -- python3 -m pytest
tests/test_kvm_arm64.py; tests/test_lab.py runs it there): the IPA size, vCPU init, the register
list and ONE_REG at 32, 64, 128 and (with SVE) 2048 bits, the firmware pseudo-registers, vCPU
events, the host's vGIC (v3, or v2 on a GICv2 host) through the device API, the timer interrupts, and a guest's first MMIO write."""
import errno
import mmap
import os
import platform
import shutil
import struct
import subprocess

import pytest

from conftest import KVM
from kvmsnap.arch.aarch64.layouts import GICC_BASE, VGIC_V2, VGIC_V3
from kvmsnap.kvm import Kvm, KvmError, ffi, lib
from kvmsnap.kvm.aarch64 import core_reg_id, reg_size

pytestmark = pytest.mark.skipif(
    platform.machine() != "aarch64" or not KVM,
    reason="needs KVM/arm64: run it in the arm64 lab (scripts/lab aarch64 -- python3 -m pytest "
           "tests/test_kvm_arm64.py), as tests/test_lab.py does")

RAM = 0x40000000                # where the virt board and kvmsnap's arm64 machine put RAM
RAM_SIZE = 2 << 20
UART = 0x09000000               # a PL011's data register: no memslot there, so an MMIO exit
GICD = 0x08000000


def sysreg(op0, op1, crn, crm, op2) -> int:
    """The ONE_REG id of a 64-bit system register (the arm64 <asm/kvm.h> ARM64_SYS_REG)."""
    return (lib.KVM_REG_ARM64 | lib.KVM_REG_SIZE_U64 | lib.KVM_REG_ARM64_SYSREG
            | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)


MIDR_EL1 = (3, 0, 0, 0, 0)
TPIDR_EL0 = (3, 3, 13, 0, 2)


@pytest.fixture
def machine():
    """A VM with 2 MiB of RAM at RAM and one vCPU initialised with PSCI 0.2: (kvm, vm, vcpu, ram)."""
    kvm = Kvm()
    limit = kvm.ipa_size_limit()
    vm = kvm.create_vm(min(limit, 40) if limit else 0)
    ram = mmap.mmap(-1, RAM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    vm.set_user_memory_region(0, RAM, RAM_SIZE, int(ffi.cast("uintptr_t", ffi.from_buffer(ram))))
    cpu = vm.create_vcpu(0)
    target, _ = vm.arm_preferred_target()
    cpu.arm_vcpu_init(target, [lib.KVM_ARM_VCPU_PSCI_0_2])
    yield kvm, vm, cpu, ram
    cpu.close()
    vm.close()
    kvm.close()


def test_the_register_list_names_core_system_and_firmware_registers(machine):
    _, _, cpu, _ = machine
    ids = cpu.get_reg_list()
    assert len(ids) == len(set(ids)) > 100, len(ids)
    assert all(i & lib.KVM_REG_ARCH_MASK == lib.KVM_REG_ARM64 for i in ids)
    families = {i & lib.KVM_REG_ARM_COPROC_MASK for i in ids}
    assert {lib.KVM_REG_ARM_CORE, lib.KVM_REG_ARM64_SYSREG, lib.KVM_REG_ARM_FW} <= families, families
    # api.rst's own examples of core register ids: pc, and v0 (128 bits)
    assert core_reg_id("regs", "pc") == 0x6030000000100040
    assert core_reg_id("fp_regs", size_bits=128) == 0x6040000000100054
    assert {core_reg_id("regs", "pc"), core_reg_id("fp_regs", size_bits=128), sysreg(*MIDR_EL1),
            lib.KVM_REG_ARM_PSCI_VERSION} <= set(ids)
    for i in ids:               # every listed register reads, at the size its id gives
        assert len(cpu.get_one_reg(i)) == reg_size(i)
    psci = int.from_bytes(cpu.get_one_reg(lib.KVM_REG_ARM_PSCI_VERSION), "little")
    assert psci >= 0x00010000, hex(psci)            # PSCI 1.0 or later with KVM_ARM_VCPU_PSCI_0_2


def test_one_reg_round_trips_at_every_size(machine):
    _, _, cpu, _ = machine
    cases = [(core_reg_id("regs", "regs", 7), (0x0123456789ABCDEF).to_bytes(8, "little")),
             (core_reg_id("fp_regs", size_bits=128), bytes(range(16))),
             (core_reg_id("fp_regs", "fpsr", size_bits=32), (0x08000000).to_bytes(4, "little")),   # QC
             (sysreg(*TPIDR_EL0), (0xFEEDFACECAFEBEEF).to_bytes(8, "little"))]
    for reg, value in cases:
        cpu.set_one_reg(reg, value)
        assert cpu.get_one_reg(reg) == value, hex(reg)
    with pytest.raises(ValueError):
        cpu.set_one_reg(cases[0][0], b"\0" * 4)      # the id says 8 bytes
    with pytest.raises(KvmError) as e:               # an id no vCPU has
        cpu.get_one_reg(sysreg(3, 7, 15, 15, 7))
    assert e.value.errno in (errno.ENOENT, errno.EINVAL) and "KVM_GET_ONE_REG" in str(e.value)


def test_sve_vectors_are_2048_bit_registers_where_offered():
    """With SVE (QEMU's -cpu max has it): the vector lengths are set before KVM_ARM_VCPU_FINALIZE,
    and Z0 reads as a 2048-bit register that round-trips."""
    kvm = Kvm()
    try:
        if not kvm.check_extension(lib.KVM_CAP_ARM_SVE):
            pytest.skip("this KVM/arm64 offers no SVE (KVM_CAP_ARM_SVE is 0)")
        vm = kvm.create_vm()
        cpu = vm.create_vcpu(0)
        target, _ = vm.arm_preferred_target()
        cpu.arm_vcpu_init(target, [lib.KVM_ARM_VCPU_PSCI_0_2, lib.KVM_ARM_VCPU_SVE])
        vls = cpu.get_one_reg(lib.KVM_REG_ARM64_SVE_VLS)
        assert len(vls) == 64 and vls[0] & 1                  # 128-bit vectors are always offered
        cpu.set_one_reg(lib.KVM_REG_ARM64_SVE_VLS, vls)
        z0 = lib.KVM_REG_ARM64 | lib.KVM_REG_ARM64_SVE | lib.KVM_REG_SIZE_U2048
        with pytest.raises(KvmError):                         # Z registers need FINALIZE first
            cpu.get_one_reg(z0)
        cpu.arm_vcpu_finalize(lib.KVM_ARM_VCPU_SVE)
        assert z0 in cpu.get_reg_list()
        value = bytes(range(256))
        cpu.set_one_reg(z0, value)
        vq = max(i for i in range(512) if vls[i // 8] >> (i % 8) & 1) + 1      # the longest, in quadwords
        assert cpu.get_one_reg(z0)[:16 * vq] == value[:16 * vq]
        cpu.close()
        vm.close()
    finally:
        kvm.close()


def test_vcpu_events_and_timer_interrupts_round_trip(machine):
    _, _, cpu, _ = machine
    events = cpu.get_vcpu_events()
    assert len(events) == 64 and events[0] == 0      # no SError pending
    cpu.set_vcpu_events(events)
    group, vtimer = lib.KVM_ARM_VCPU_TIMER_CTRL, lib.KVM_ARM_VCPU_TIMER_IRQ_VTIMER
    assert cpu.has_device_attr(group, vtimer)
    assert struct.unpack("<I", cpu.get_device_attr(group, vtimer, 4))[0] == 27    # the virt board's PPI


def test_the_hosts_vgic_is_created_placed_initialised_and_read(machine):
    """A vGICv3; on a GICv2 host (the lab with --gic-version 2) a vGICv2, whose CPU interface is
    placed too."""
    from kvmsnap.arch.aarch64 import vgic            # the live half: it imports only on arm64
    _, vm, _, _ = machine
    expected = VGIC_V2 if os.environ.get("KVMSNAP_LAB_GIC") == "2" else VGIC_V3
    assert vgic.host_type(vm) == expected
    frames = ({lib.KVM_VGIC_V2_ADDR_TYPE_DIST: GICD, lib.KVM_VGIC_V2_ADDR_TYPE_CPU: GICC_BASE}
              if expected == VGIC_V2 else {lib.KVM_VGIC_V3_ADDR_TYPE_DIST: GICD})
    gic = vgic.create(vm, expected)
    try:
        for frame, address in frames.items():
            assert struct.unpack("<Q", gic.get_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_ADDR, frame))[0] == address
        typer = struct.unpack("<I", gic.get_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0x4, 4))[0]
        assert (typer & 0x1F) + 1 == 128 // 32, hex(typer)    # GICD_TYPER.ITLinesNumber: 128 interrupts
    finally:
        gic.close()


@pytest.mark.skipif(not shutil.which("as"), reason="needs binutils (the arm64 lab has gcc)")
def test_a_guest_writes_to_the_uart_through_an_mmio_exit(machine, tmp_path):
    _, _, cpu, ram = machine
    (tmp_path / "g.S").write_text(f"mov x2, #{UART:#x}\nmov w1, #'K'\nstrb w1, [x2]\nmov w1, #'\\n'\n"
                                  "strb w1, [x2]\n1: wfi\nb 1b\n")
    subprocess.run(["as", "-o", tmp_path / "g.o", tmp_path / "g.S"], check=True)
    subprocess.run(["objcopy", "-O", "binary", tmp_path / "g.o", tmp_path / "g.bin"], check=True)
    code = (tmp_path / "g.bin").read_bytes()
    ram[0:len(code)] = code
    cpu.set_one_reg(core_reg_id("regs", "pc"), RAM.to_bytes(8, "little"))
    written = []
    for _ in range(2):
        assert cpu.run() == lib.KVM_EXIT_MMIO
        mmio = cpu.run_area.mmio
        assert mmio.phys_addr == UART and mmio.is_write and mmio.len == 1
        written.append(mmio.data[0])
    assert bytes(written) == b"K\n"
    pc = int.from_bytes(cpu.get_one_reg(core_reg_id("regs", "pc")), "little")
    assert pc in (RAM + 16, RAM + 20), hex(pc)      # at the second store, or past it (the kernel's choice)
