"""The vGIC through KVM's device API: a GICv3 where the host's KVM offers one, else a GICv2, created
with its frames placed, its state read as a list of (group, attribute, value) in the order it is
written back (docs/restore.md; after QEMU's ``kvm_arm_gicv3_put`` and ``kvm_arm_gic_put``). GICv3:
each vCPU's redistributor, the distributor, the line levels, each vCPU's CPU interface (system
registers). GICv2: the distributor (its first INTIDs banked per vCPU), each vCPU's CPU interface
(MMIO registers). A register this KVM does not have is left out at save and so never written."""
import errno

from kvmsnap.arch.aarch64 import vcpu as arm_vcpu
from kvmsnap.arch.aarch64.layouts import (GICC_BASE, GICC_REGS, GICD_BASE, GICD_CTLR, GICD_IIDR, GICD_IROUTER,
                                           GICD_SIZE, GICD_SPENDSGIR, GICR_BASE, GICR_SGI_BASE, GICR_STRIDE,
                                           GICV2_BANKS, GICV2_SGIS, ICC_REGS, VGIC_BANKS, VGIC_V2, VGIC_V3, VgicState,
                                           sysreg_index)
from kvmsnap.kvm import lib

NR_IRQS = 128                                       # 32 private (SGIs, PPIs) + 96 SPIs
GICD_ISPENDR0 = next(offset for name, offset, _ in VGIC_BANKS if name == "ISPENDR")
NAMES = {VGIC_V2: "vGICv2", VGIC_V3: "vGICv3"}


def host_type(vm) -> int | None:
    """The vGIC this host's KVM makes for ``vm``: v3 where it can, else v2 (None: neither)."""
    return next((t for t in (VGIC_V3, VGIC_V2) if vm.can_create_device(t)), None)


def create(vm, type_: int):
    """A vGIC of ``type_`` (VGIC_V2 or VGIC_V3) with its frames placed and initialized (after every
    vCPU is created and initialized, before any runs)."""
    gic = vm.create_device(type_)
    try:
        for kind, base, _ in _frames(type_, 0):
            gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_ADDR, kind, base.to_bytes(8, "little"))
        gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, NR_IRQS.to_bytes(4, "little"))
        gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_CTRL, lib.KVM_DEV_ARM_VGIC_CTRL_INIT)
    except BaseException:
        gic.close()
        raise
    return gic


def _frames(type_: int, nvcpus: int) -> list[tuple[int, int, int]]:
    """(KVM_VGIC_*_ADDR_TYPE_*, base, size) of each MMIO frame of a vGIC of ``type_`` for ``nvcpus``."""
    if type_ == VGIC_V3:
        return [(lib.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE, GICD_SIZE),
                (lib.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE, GICR_STRIDE * nvcpus)]
    return [(lib.KVM_VGIC_V2_ADDR_TYPE_DIST, GICD_BASE, lib.KVM_VGIC_V2_DIST_SIZE),
            (lib.KVM_VGIC_V2_ADDR_TYPE_CPU, GICC_BASE, lib.KVM_VGIC_V2_CPU_SIZE)]


def describe(gic, nvcpus: int) -> tuple[int, list[tuple[int, int]]]:
    """``gic``'s type and its frames' (base, size), for the device tree."""
    return gic.type, [(base, size) for _, base, size in _frames(gic.type, nvcpus)]


def _words(offset: int, bits: int, private: bool):
    """The register offsets of a bank's words: for INTIDs 0-31 (``private``) or for the SPIs."""
    first, end = (0, bits) if private else (bits, NR_IRQS * bits // 32)
    return (offset + 4 * word for word in range(first, end))


def _v3_registers(mpidrs: list[int]):
    """(group, attr, size) of every GICv3 register saved, in restore order; ``mpidrs``: each vCPU's
    affinity as KVM's attributes take it."""
    redist, dist = lib.KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, lib.KVM_DEV_ARM_VGIC_GRP_DIST_REGS
    for mpidr in mpidrs:
        for _, offset, bits in VGIC_BANKS:
            for reg in _words(GICR_SGI_BASE + offset, bits, private=True):
                yield redist, mpidr << 32 | reg, 4
    yield dist, GICD_CTLR, 4
    for intid in range(32, NR_IRQS):
        yield dist, GICD_IROUTER + 8 * intid, 4             # Aff0-2 in the low half (Aff3: none)
    for _, offset, bits in VGIC_BANKS:
        yield from ((dist, reg, 4) for reg in _words(offset, bits, private=False))
    level, line_levels = (lib.KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                          lib.VGIC_LEVEL_INFO_LINE_LEVEL << lib.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT)
    for mpidr in mpidrs:                                   # each vCPU's PPIs, then the SPIs
        yield level, mpidr << 32 | line_levels, 4
    for base in range(32, NR_IRQS, 32):
        yield level, mpidrs[0] << 32 | line_levels | base, 4
    for mpidr in mpidrs:
        for encoding in ICC_REGS.values():
            yield lib.KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr << 32 | sysreg_index(*encoding), 8


def _v2_registers(nvcpus: int):
    """(group, attr, size) of every GICv2 register saved, in restore order (attributes name a vCPU
    by its index). The IIDR comes first: its revision is what lets KVM take the interrupt groups."""
    dist, banks = lib.KVM_DEV_ARM_VGIC_GRP_DIST_REGS, VGIC_BANKS + GICV2_BANKS
    yield dist, GICD_IIDR, 4
    yield dist, GICD_CTLR, 4
    for cpu in range(nvcpus):
        for _, offset, bits in banks:
            yield from ((dist, cpu << 32 | reg, 4) for reg in _words(offset, bits, private=True))
        for word in range(GICV2_SGIS * 8 // 32):
            yield dist, cpu << 32 | GICD_SPENDSGIR + 4 * word, 4
    for _, offset, bits in banks:
        yield from ((dist, reg, 4) for reg in _words(offset, bits, private=False))
    for cpu in range(nvcpus):
        for offset in GICC_REGS.values():
            yield lib.KVM_DEV_ARM_VGIC_GRP_CPU_REGS, cpu << 32 | offset, 4


def save(gic, vcpus) -> bytes:
    """The vGIC's state (layouts.VgicState). Every vCPU must be out of KVM_RUN."""
    if gic.type == VGIC_V3:
        wanted = _v3_registers([affinity(arm_vcpu.mpidr(v)) for v in vcpus])
    else:
        wanted = _v2_registers(len(vcpus))
    regs = []
    for group, attr, size in wanted:
        try:
            value = int.from_bytes(gic.get_device_attr(group, attr, size), "little")
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.EINVAL):      # not a register this vGIC has
                continue
            raise
        if gic.type == VGIC_V2 and group == lib.KVM_DEV_ARM_VGIC_GRP_DIST_REGS and attr & 0xFFFF_FFFF == GICD_ISPENDR0:
            value &= ~0xFFFF     # SGIs: SPENDSGIR holds them by source (KVM takes an ISPENDR0 bit as from the vCPU itself)
        regs.append(dict(group=group, size=size, attr=attr, value=value))
    return VgicState.build(dict(type=gic.type, nr_irqs=NR_IRQS, reserved=0, regs=regs))


def saved_type(blob: bytes) -> int:
    """The vGIC type (VGIC_V2 or VGIC_V3) of saved state."""
    return VgicState.parse(blob).type


def restore(gic, blob: bytes) -> None:
    """Write back every register :func:`save` read, in its order."""
    for r in VgicState.parse(blob).regs:
        gic.set_device_attr(r.group, r.attr, r.value.to_bytes(r.size, "little"))


def affinity(mpidr_el1: int) -> int:
    """MPIDR_EL1's Aff3..Aff0 as KVM's vGIC attributes take them (bits 39..32 and 23..0)."""
    return (mpidr_el1 >> 32 & 0xFF) << 24 | mpidr_el1 & 0xFF_FFFF
