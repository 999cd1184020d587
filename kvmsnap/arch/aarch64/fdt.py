"""A flattened device tree (DTB, devicetree specification v0.4, chapter 5) describing kvmsnap's
arm64 machine: memory, the vCPUs (enabled through PSCI), the GICv3 or GICv2, the generic timer and
the PL011 console, and /chosen with the kernel's command line and initrd."""
import struct

from kvmsnap.arch.aarch64.layouts import GICD_BASE, RAM_BASE, UART_BASE, UART_SIZE, UART_SPI, VGIC_V3

FDT_MAGIC, FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_END = 0xD00DFEED, 1, 2, 3, 9
MPIDR_AFFINITY = 0xFF_00FF_FFFF          # MPIDR_EL1's Aff3 and Aff2-0: a cpu node's reg
GIC_PHANDLE, CLOCK_PHANDLE = 1, 2
GIC_SPI, GIC_PPI, IRQ_LEVEL_HIGH, IRQ_LEVEL_LOW = 0, 1, 4, 8
#: The generic timer's PPIs, as INTID - 16: secure and non-secure physical, virtual, hypervisor.
TIMER_PPIS = (13, 14, 11, 10)


def _cells(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _pairs(*values: int) -> bytes:
    """64-bit values as two cells each (#address-cells = #size-cells = 2)."""
    return b"".join(_cells(v >> 32, v & 0xFFFFFFFF) for v in values)


def _value(v) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode() + b"\0"
    if isinstance(v, (list, tuple)):          # a string list
        return b"".join(s.encode() + b"\0" for s in v)
    return _cells(v)


def _gic(gic_type: int, frames: list[tuple[int, int]], nvcpus: int) -> tuple[dict, int]:
    """The interrupt controller's node properties, and the flag bits of a PPI routed to every vCPU."""
    node = {"#interrupt-cells": 3, "interrupt-controller": b"", "phandle": GIC_PHANDLE,
            "reg": b"".join(_pairs(base, size) for base, size in frames)}
    if gic_type == VGIC_V3:
        node.update({"compatible": "arm,gic-v3", "#address-cells": 2, "#size-cells": 2, "ranges": b""})
        return node, 0
    node["compatible"] = "arm,cortex-a15-gic"
    return node, ((1 << nvcpus) - 1) << 8          # GICv2: a PPI's CPU mask in the flags' bits 15:8


def machine_tree(nvcpus: int, mpidrs: list[int], mem_size: int, gic: tuple[int, list[tuple[int, int]]],
                 cmdline: str = "", initrd: tuple[int, int] | None = None) -> tuple:
    """(name, properties, children) of the root node; ``gic``: its type (VGIC_V3 or VGIC_V2) and
    its frames' (base, size) (vgic.describe)."""
    cpus = [(f"cpu@{m:x}", {"device_type": "cpu", "compatible": "arm,arm-v8", "reg": _pairs(m),
                            "enable-method": "psci"}, []) for m in mpidrs[:nvcpus]]
    chosen = {"bootargs": cmdline, "stdout-path": f"/pl011@{UART_BASE:x}"}
    if initrd:
        chosen.update({"linux,initrd-start": _pairs(initrd[0]), "linux,initrd-end": _pairs(initrd[1])})
    gic, ppi_cpus = _gic(*gic, nvcpus)
    return ("", {"#address-cells": 2, "#size-cells": 2, "compatible": "linux,dummy-virt",
                 "interrupt-parent": GIC_PHANDLE}, [
        ("chosen", chosen, []),
        (f"memory@{RAM_BASE:x}", {"device_type": "memory", "reg": _pairs(RAM_BASE, mem_size)}, []),
        ("cpus", {"#address-cells": 2, "#size-cells": 0}, cpus),
        ("psci", {"compatible": ["arm,psci-1.0", "arm,psci-0.2"], "method": "hvc"}, []),
        (f"intc@{GICD_BASE:x}", gic, []),
        ("timer", {"compatible": "arm,armv8-timer", "always-on": b"", "interrupts": b"".join(
            _cells(GIC_PPI, ppi, ppi_cpus | IRQ_LEVEL_LOW) for ppi in TIMER_PPIS)}, []),
        ("apb-pclk", {"compatible": "fixed-clock", "#clock-cells": 0, "clock-frequency": 24_000_000,
                      "phandle": CLOCK_PHANDLE}, []),
        (f"pl011@{UART_BASE:x}", {"compatible": ["arm,pl011", "arm,primecell"],
                                  "reg": _pairs(UART_BASE, UART_SIZE),
                                  "interrupts": _cells(GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH),
                                  "clocks": _cells(CLOCK_PHANDLE, CLOCK_PHANDLE),
                                  "clock-names": ["uartclk", "apb_pclk"]}, []),
    ])


def build(tree: tuple) -> bytes:
    """The DTB of ``tree`` ((name, properties, children), the root's name empty)."""
    structure, strings, offsets = bytearray(), bytearray(), {}

    def node(name, props, children):
        structure.extend(_cells(FDT_BEGIN_NODE) + name.encode() + b"\0")
        structure.extend(bytes(-len(structure) % 4))
        for key, value in props.items():
            if key not in offsets:
                offsets[key] = len(strings)
                strings.extend(key.encode() + b"\0")
            data = _value(value)
            structure.extend(_cells(FDT_PROP, len(data), offsets[key]) + data + bytes(-len(data) % 4))
        for child in children:
            node(*child)
        structure.extend(_cells(FDT_END_NODE))

    node(*tree)
    structure.extend(_cells(FDT_END))
    header_size, rsvmap = 40, bytes(16)             # one empty memory-reservation entry ends the map
    off_struct = header_size + len(rsvmap)
    off_strings = off_struct + len(structure)
    total = off_strings + len(strings)
    header = struct.pack(">10I", FDT_MAGIC, total, off_struct, off_strings, header_size, 17, 16, 0,
                         len(strings), len(structure))
    return header + rsvmap + bytes(structure) + bytes(strings)
