"""The local APIC register page (kvm_lapic_state) decoded: ID, TPR, SVR, LVT entries, timer mode
and counts, ISR/IRR/TMR vectors set."""
import struct

from kvmsnap.decode.bits import bitreg, field
from kvmsnap.arch.x86_64 import layouts as x86

DELIVERY_MODES = {0: "fixed", 1: "lowest priority", 2: "SMI", 4: "NMI", 5: "INIT", 6: "SIPI",
                  7: "ExtINT"}
TIMER_MODES = {0: "one-shot", 1: "periodic", 2: "TSC-deadline", 3: "reserved"}
LVT = {"cmci": 0x2f0, "timer": 0x320, "thermal": 0x330, "perf": 0x340, "lint0": 0x350,
       "lint1": 0x360, "error": 0x370}
ESR = {0: "send checksum", 1: "receive checksum", 2: "send accept", 3: "receive accept",
       4: "redirectable IPI", 5: "send illegal vector", 6: "receive illegal vector",
       7: "illegal register address"}
TIMER_DIVIDE = {0: 2, 1: 4, 2: 8, 3: 16, 8: 32, 9: 64, 10: 128, 11: 1}


def _reg(page: bytes, offset: int) -> int:
    return struct.unpack_from("<I", page, offset)[0]


def _vectors(page: bytes, base: int) -> list[int]:
    """Vectors set in a 256-bit ISR/TMR/IRR (eight 32-bit registers, 16 bytes apart)."""
    return [32 * i + bit for i in range(8) for bit in range(32)
            if _reg(page, base + 16 * i) >> bit & 1]


def _lvt(value: int, name: str) -> dict:
    out = dict(value=value, vector=value & 0xff, masked=field(value, 16, 1),
               delivery_status="pending" if field(value, 12, 1) else "idle")
    if name == "timer":
        out["mode"] = TIMER_MODES[field(value, 17, 2)]
    elif name in ("lint0", "lint1"):
        out.update(delivery_mode=DELIVERY_MODES.get(field(value, 8, 3), "reserved"),
                   polarity="active low" if field(value, 13, 1) else "active high",
                   remote_irr=field(value, 14, 1),
                   trigger="level" if field(value, 15, 1) else "edge")
    else:
        out["delivery_mode"] = DELIVERY_MODES.get(field(value, 8, 3), "reserved")
    return out


def lapic(raw: bytes, x2apic: bool = False) -> dict:
    """The ``lapic`` section.  In x2APIC mode the ID is the whole register, else bits 24..31."""
    page = x86.kvm_lapic_state.parse(raw).regs
    ident, version, svr = _reg(page, 0x20), _reg(page, 0x30), _reg(page, 0xf0)
    divide = _reg(page, 0x3e0)
    icr_low, icr_high = _reg(page, 0x300), _reg(page, 0x310)
    return dict(
        id=ident if x2apic else ident >> 24,
        version=dict(value=version, version=version & 0xff, max_lvt=field(version, 16, 8) + 1),
        tpr=_reg(page, 0x80), apr=_reg(page, 0x90), ppr=_reg(page, 0xa0),
        ldr=_reg(page, 0xd0), dfr=_reg(page, 0xe0),
        svr=dict(value=svr, spurious_vector=svr & 0xff, enabled=field(svr, 8, 1),
                 focus_checking_disabled=field(svr, 9, 1), eoi_broadcast_suppression=field(svr, 12, 1)),
        isr=_vectors(page, 0x100), tmr=_vectors(page, 0x180), irr=_vectors(page, 0x200),
        esr=bitreg(_reg(page, 0x280), ESR),
        icr=dict(value=icr_high << 32 | icr_low, vector=icr_low & 0xff,
                 delivery_mode=DELIVERY_MODES.get(field(icr_low, 8, 3), "reserved"),
                 destination=icr_high if x2apic else icr_high >> 24),
        lvt={name: _lvt(_reg(page, offset), name) for name, offset in LVT.items()},
        timer=dict(mode=TIMER_MODES[field(_reg(page, 0x320), 17, 2)],
                   initial_count=_reg(page, 0x380), current_count=_reg(page, 0x390),
                   divide=TIMER_DIVIDE.get(divide & 0b1011, 1), divide_config=divide),
    )
