"""VM-wide device state decoded: the two 8259 PICs, the IOAPIC, the 8254 PIT, kvmclock, the UART."""
from kvmsnap.decode.bits import plain
from kvmsnap.arch.x86_64.lapic import DELIVERY_MODES
from kvmsnap.arch.x86_64 import layouts as x86

PIT_MODES = {0: "interrupt on terminal count", 1: "hardware one-shot", 2: "rate generator",
             3: "square wave", 4: "software strobe", 5: "hardware strobe",
             6: "rate generator (alias of 2)", 7: "square wave (alias of 3)",
             0xff: "not programmed"}     # KVM's reset value for a channel never programmed
PIT_ACCESS = {0: "latch", 1: "lsb", 2: "msb", 3: "lsb then msb"}
KVM_CLOCK_FLAGS = {2: "TSC_STABLE", 4: "REALTIME", 8: "HOST_TSC"}  # KVM_CLOCK_* bits


def _irq_lines(mask: int) -> list[int]:
    return [i for i in range(8) if mask >> i & 1]


def pic(raw: bytes) -> dict:
    """One 8259 (kvm_irqchip holding kvm_pic_state): registers plus the IRQ lines set in each."""
    state = plain(x86.kvm_irqchip.parse(raw).chip)
    state.update(irr_lines=_irq_lines(state["irr"]), isr_lines=_irq_lines(state["isr"]),
                 masked_lines=_irq_lines(state["imr"]))
    return state


def ioapic(raw: bytes) -> dict:
    """The IOAPIC: base, ID, IRR and the 24 redirection entries in words."""
    state = x86.kvm_irqchip.parse(raw).chip
    pins = []
    for pin, e in enumerate(state.redirtbl):
        pins.append(dict(pin=pin, vector=e.vector,
                         delivery_mode=DELIVERY_MODES.get(e.delivery_mode, "reserved"),
                         dest_mode="logical" if e.dest_mode else "physical",
                         delivery_status=e.delivery_status,
                         polarity="active low" if e.polarity else "active high",
                         remote_irr=e.remote_irr, trigger="level" if e.trig_mode else "edge",
                         masked=e.mask, dest_id=e.dest_id))
    return dict(base_address=state.base_address, id=state.id, ioregsel=state.ioregsel,
                irr=state.irr, redirtbl=pins)


def pit(raw: bytes) -> dict:
    """The 8254: per channel count, mode in words, gate and latch state."""
    state = x86.kvm_pit_state2.parse(raw)
    channels = []
    for c in state.channels:
        ch = plain(c)
        ch.update(mode_name=PIT_MODES.get(c.mode, "reserved"),
                  access=PIT_ACCESS.get(c.rw_mode, "reserved"))
        channels.append(ch)
    return dict(channels=channels, flags=state.flags)


def clock(raw: bytes) -> dict:
    """kvmclock (kvm_clock_data): guest clock in ns, flags, host realtime and TSC when valid."""
    c = x86.kvm_clock_data.parse(raw)
    return dict(clock=c.clock, flags=c.flags,
                flag_names=[n for bit, n in KVM_CLOCK_FLAGS.items() if c.flags & bit],
                realtime=c.realtime, host_tsc=c.host_tsc)


def uart(raw: bytes) -> dict:
    """kvmsnap's 16550 registers."""
    return plain(x86.UartState.parse(raw))


def uart_input(raw: bytes) -> dict:
    """Input the guest has not read yet: its length and the bytes as text."""
    return dict(length=len(raw), text=raw.decode(errors="replace"))


def cmos(raw: bytes) -> dict:
    """kvmsnap's RTC/CMOS: the index register, status registers A-D and the whole RAM (hex)."""
    state = x86.CmosState.parse(raw)
    return dict(index=state.index, status_a=state.ram[0x0A], status_b=state.ram[0x0B],
                status_c=state.ram[0x0C], status_d=state.ram[0x0D], ram=state.ram.hex())


def pci(raw: bytes) -> dict:
    """kvmsnap's PCI configuration address register (0xcf8), with its fields."""
    address = x86.PciState.parse(raw).address
    return dict(address=address, enabled=bool(address >> 31), bus=address >> 16 & 0xFF,
                device=address >> 11 & 0x1F, function=address >> 8 & 7, register=address & 0xFC)


def acpi_pm(raw: bytes) -> dict:
    """kvmsnap's ACPI PM1a enable and control registers."""
    state = x86.AcpiPmState.parse(raw)
    return dict(pm1_enable=state.pm1_enable, pm1_control=state.pm1_control)


_DECODERS = dict(uart=uart, uart_input=uart_input, pic_master=pic, pic_slave=pic, ioapic=ioapic, pit=pit, clock=clock,
                 cmos=cmos, pci=pci, acpi_pm=acpi_pm)


def summary(devices: dict[str, bytes]) -> dict:
    """Every device blob of an x86 snapshot, decoded (older cores lack some: see notes.OPTIONAL_DEVICE_NOTES)."""
    return {name: decode(devices[name]) for name, decode in _DECODERS.items() if name in devices}
