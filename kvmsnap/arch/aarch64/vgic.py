"""The vGICv3 through KVM's device API: created with its frames placed, its state read as a list of
(group, attribute, value) in the order it is written back (docs/restore.md; after QEMU's
``kvm_arm_gicv3_put``): each vCPU's redistributor, the distributor, the line levels, each vCPU's
CPU interface. A register this KVM does not have is left out at save and so never written."""
import errno

from kvmsnap.arch.aarch64.layouts import (GICD_BASE, GICD_CTLR, GICD_IROUTER, GICR_BASE, GICR_SGI_BASE, ICC_REGS,
                                           VGIC_BANKS, VgicState, sysreg_index)
from kvmsnap.kvm import lib

NR_IRQS = 128                                       # 32 private (SGIs, PPIs) + 96 SPIs


def create(vm, nvcpus: int):
    """A vGICv3 with its distributor and redistributors placed and initialized (after every vCPU
    is created and initialized, before any runs)."""
    gic = vm.create_device(lib.KVM_DEV_TYPE_ARM_VGIC_V3)
    try:
        gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_ADDR, lib.KVM_VGIC_V3_ADDR_TYPE_DIST,
                            GICD_BASE.to_bytes(8, "little"))
        gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_ADDR, lib.KVM_VGIC_V3_ADDR_TYPE_REDIST,
                            GICR_BASE.to_bytes(8, "little"))
        gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, NR_IRQS.to_bytes(4, "little"))
        gic.set_device_attr(lib.KVM_DEV_ARM_VGIC_GRP_CTRL, lib.KVM_DEV_ARM_VGIC_CTRL_INIT)
    except BaseException:
        gic.close()
        raise
    return gic


def _registers(mpidrs: list[int]):
    """(group, attr, size) of every register saved, in restore order."""
    redist, dist = lib.KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, lib.KVM_DEV_ARM_VGIC_GRP_DIST_REGS
    for mpidr in mpidrs:       # each bank holds ``bits`` u32 words per 32 INTIDs
        for _, offset, bits in VGIC_BANKS:
            for word in range(bits):
                yield redist, mpidr << 32 | GICR_SGI_BASE + offset + 4 * word, 4
    yield dist, GICD_CTLR, 4
    for intid in range(32, NR_IRQS):
        yield dist, GICD_IROUTER + 8 * intid, 4             # Aff0-2 in the low half (Aff3: none)
    for _, offset, bits in VGIC_BANKS:
        for word in range(bits, NR_IRQS * bits // 32):
            yield dist, offset + 4 * word, 4
    level, line_levels = (lib.KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                          lib.VGIC_LEVEL_INFO_LINE_LEVEL << lib.KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT)
    for mpidr in mpidrs:                                   # each vCPU's PPIs, then the SPIs
        yield level, mpidr << 32 | line_levels, 4
    for base in range(32, NR_IRQS, 32):
        yield level, mpidrs[0] << 32 | line_levels | base, 4
    for mpidr in mpidrs:
        for encoding in ICC_REGS.values():
            yield lib.KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr << 32 | sysreg_index(*encoding), 8


def save(gic, mpidrs: list[int]) -> bytes:
    """The vGIC's state (layouts.VgicState); ``mpidrs``: each vCPU's affinity (MPIDR_EL1 Aff3-0 as
    KVM's attributes take it). Every vCPU must be out of KVM_RUN."""
    regs = []
    for group, attr, size in _registers(mpidrs):
        try:
            value = int.from_bytes(gic.get_device_attr(group, attr, size), "little")
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.EINVAL):      # not a register this vGIC has
                continue
            raise
        regs.append(dict(group=group, size=size, attr=attr, value=value))
    return VgicState.build(dict(type=lib.KVM_DEV_TYPE_ARM_VGIC_V3, nr_irqs=NR_IRQS, reserved=0, regs=regs))


def restore(gic, blob: bytes) -> None:
    """Write back every register :func:`save` read, in its order."""
    for r in VgicState.parse(blob).regs:
        gic.set_device_attr(r.group, r.attr, r.value.to_bytes(r.size, "little"))


def affinity(mpidr_el1: int) -> int:
    """MPIDR_EL1's Aff3..Aff0 as KVM's vGIC attributes take them (bits 39..32 and 23..0)."""
    return (mpidr_el1 >> 32 & 0xFF) << 24 | mpidr_el1 & 0xFF_FFFF
