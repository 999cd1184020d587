"""aarch64 device state decoded for inspect: the vGIC's (v3 or v2) saved registers by name, the
PL011's registers and its unread input."""
from kvmsnap.arch.aarch64 import layouts as arm64
from kvmsnap.decode.bits import DecodeError

_ICC_NAMES = {arm64.sysreg_index(*enc): name for name, enc in arm64.ICC_REGS.items()}
_GICC_NAMES = {offset: name for name, offset in arm64.GICC_REGS.items()}


def _bank(offset: int, private: bool) -> tuple[str, bool]:
    """The name of a distributor or SGI-frame register at ``offset`` (GICD_CTLR, ISENABLER<n>, ...),
    and whether it is banked per vCPU (a GICv2 distributor's words for INTIDs 0-31)."""
    if not private and offset == arm64.GICD_CTLR:
        return "GICD_CTLR", False
    if not private and offset == arm64.GICD_IIDR:
        return "GICD_IIDR", False
    if not private and offset >= arm64.GICD_IROUTER:
        return f"GICD_IROUTER{(offset - arm64.GICD_IROUTER) // 8}", False
    if not private and 0 <= offset - arm64.GICD_SPENDSGIR < arm64.GICV2_SGIS:       # a byte per SGI
        return f"GICD_SPENDSGIR{(offset - arm64.GICD_SPENDSGIR) // 4}", True
    for name, base, bits in arm64.VGIC_BANKS + arm64.GICV2_BANKS:
        if base <= offset < base + 4 * bits * 1024 // 32:
            return f"{'GICR' if private else 'GICD'}_{name}{(offset - base) // 4}", offset < base + 4 * bits
    return f"{'GICR' if private else 'GICD'} {offset:#x}", False


def vgic_reg(group: int, attr: int) -> str:
    """A saved vGIC attribute in words: its register (and the vCPU affinity, or on a GICv2 the
    vCPU index, it belongs to)."""
    kind, affinity, low = arm64.VGIC_GROUPS.get(group), attr >> 32, attr & 0xFFFF_FFFF
    if kind == "dist":
        name, banked = _bank(low, private=False)
        return f"{name} (vCPU {affinity})" if banked else name
    if kind == "redist":
        return f"{_bank(low - arm64.GICR_SGI_BASE, private=True)[0]} (affinity {affinity:#x})"
    if kind == "cpu_sysregs":
        return f"{_ICC_NAMES.get(low & 0xFFFF, f'sysreg {low:#x}')} (affinity {affinity:#x})"
    if kind == "cpu_regs":
        return f"{_GICC_NAMES.get(low, f'GICC {low:#x}')} (vCPU {affinity})"
    if kind == "level_info":
        base = low & 0x3FF
        return f"line levels of INTID {base}-{base + 31}" + (f" (affinity {affinity:#x})" if base < 32 else "")
    return f"group {group} attribute {attr:#x}"


def summary(devices: dict[str, bytes]) -> dict:
    """inspect's ``devices`` of an aarch64 core: the vGIC (its non-zero registers by name, with the
    count of zero ones), the PL011's registers, the UART's unread input."""
    try:
        vgic = arm64.VgicState.parse(devices["vgic"])
        pl011 = arm64.Pl011State.parse(devices["uart"])
    except Exception as e:              # construct's errors: too few bytes
        raise DecodeError(f"device state: {str(e).splitlines()[-1]}") from None
    regs = {vgic_reg(r.group, r.attr): r.value for r in vgic.regs if r.value}
    text = devices.get("uart_input", b"")
    return dict(vgic=dict(type=vgic.type, nr_irqs=vgic.nr_irqs, saved=len(vgic.regs),
                          zero=len(vgic.regs) - len(regs), registers=regs),
                uart={name: pl011[name] for name in arm64.PL011_REGS},
                uart_input=dict(length=len(text), text=text.decode("latin-1")))
