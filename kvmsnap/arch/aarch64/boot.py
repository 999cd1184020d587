"""Booting arm64 guests: an ELF64 executable at its entry point, or a Linux kernel ``Image`` (the
arm64 boot protocol, Documentation/arch/arm64/booting.rst) with a command line and an initrd, each
with a device tree describing the machine (docs/boot-protocol.md, "arm64"). vCPU 0 starts at EL1h
with the MMU off and x0 holding the device tree's address; the others are powered off until the
guest starts them with PSCI CPU_ON."""
import struct

from kvmsnap.arch.aarch64 import fdt, vcpu as arm_vcpu, vgic
from kvmsnap.arch.aarch64.layouts import RAM_BASE
from kvmsnap.formats import elf
from kvmsnap.kvm.aarch64 import core_reg_id
from kvmsnap.vmm.loader import LoadError, load_elf, require_ram

X0 = core_reg_id("regs", "regs", 0)
PSTATE = core_reg_id("regs", "pstate")
PSTATE_EL1H_DAIF = 0x3C5               # EL1h (SPSel 1), D, A, I, F masked
FDT_ALIGN = 2 << 20                    # the device tree: in the last 2 MiB of RAM, as QEMU puts it
IMAGE_MAGIC, IMAGE_MAGIC_AT = b"ARM\x64", 56      # the Image header's magic


def boot_machine(machine, image: bytes, name: str, flat_addr: int | None = None, cmdline: str = "",
                 initrd: bytes | None = None) -> list[str]:
    """Load ``image`` (an ELF64 executable, or a Linux ``Image`` with ``cmdline`` and ``initrd``)
    and put vCPU 0 at its entry; returns notes for the user (none)."""
    memory, mem_size = machine.memory, machine.config.mem_size
    dtb_at = RAM_BASE + mem_size - FDT_ALIGN
    initrd_range = None
    if image[IMAGE_MAGIC_AT:IMAGE_MAGIC_AT + 4] == IMAGE_MAGIC:
        entry, image_end = _load_linux(image, name, memory)
        if initrd is not None:
            start = (dtb_at - len(initrd)) & ~0xFFF
            if start < image_end:
                raise LoadError(f"{name}: the kernel (up to {image_end:#x}) and the initrd ({len(initrd)} bytes) do "
                                f"not fit below {dtb_at:#x}: give the guest more memory", setting="mem_size")
            memory.write(start, initrd)
            initrd_range = (start, start + len(initrd))
    elif flat_addr is not None or cmdline or initrd is not None:
        raise LoadError(f"{name}: arm64 guests are ELF64 executables or Linux Images (a command line and an "
                        "initrd are for an Image)")
    else:
        entry = load_elf(image, name, memory, elf.EM_AARCH64, "arm64", RAM_BASE)[0].e_entry
    mpidrs = [arm_vcpu.mpidr(v) & fdt.MPIDR_AFFINITY for v in machine.vcpus]
    blob = fdt.build(fdt.machine_tree(len(machine.vcpus), mpidrs, mem_size, vgic.describe(machine.irqchip, len(mpidrs)),
                                      cmdline, initrd_range))
    if len(blob) > FDT_ALIGN:
        raise LoadError(f"{name}: the device tree is {len(blob)} bytes (the command line is too long)")
    memory.write(dtb_at, blob)
    vcpu = machine.vcpus[0]
    vcpu.set_one_reg(PSTATE, PSTATE_EL1H_DAIF.to_bytes(8, "little"))
    vcpu.set_one_reg(arm_vcpu.PC, entry.to_bytes(8, "little"))
    vcpu.set_one_reg(X0, dtb_at.to_bytes(8, "little"))
    return []


def _load_linux(image: bytes, name: str, memory) -> tuple[int, int]:
    """An ``Image`` copied text_offset past RAM's start: (its entry, the end of the memory it may use)."""
    if len(image) < 64:
        raise LoadError(f"{name}: truncated Image header")
    text_offset, image_size = struct.unpack_from("<QQ", image, 8)
    load = RAM_BASE + text_offset
    size = max(image_size, len(image))
    require_ram(memory, name, load, size)
    memory.write(load, image)
    return load, load + size
