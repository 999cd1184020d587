"""Booting arm64 guests: an ELF64 executable at its entry point, with a device tree describing the
machine (docs/boot-protocol.md, "arm64"). vCPU 0 starts at EL1h with the MMU off and x0 holding the
device tree's address; the others are powered off until the guest starts them with PSCI CPU_ON."""
from kvmsnap.arch.aarch64 import fdt, vcpu as arm_vcpu
from kvmsnap.arch.aarch64.layouts import RAM_BASE
from kvmsnap.formats import elf
from kvmsnap.kvm.aarch64 import core_reg_id
from kvmsnap.vmm.loader import LoadError, load_elf

X0 = core_reg_id("regs", "regs", 0)
PSTATE = core_reg_id("regs", "pstate")
PSTATE_EL1H_DAIF = 0x3C5               # EL1h (SPSel 1), D, A, I, F masked
FDT_ALIGN = 2 << 20                    # the device tree: in the last 2 MiB of RAM, as QEMU puts it


def boot_machine(machine, image: bytes, name: str, flat_addr: int | None = None, cmdline: str = "",
                 initrd: bytes | None = None) -> list[str]:
    """Load ``image`` and put vCPU 0 at its entry; returns notes for the user (none)."""
    if flat_addr is not None or cmdline or initrd is not None:
        raise LoadError(f"{name}: arm64 guests are ELF64 executables (no flat images, command line or "
                        "initrd yet)")
    memory = machine.memory
    ehdr, _, _ = load_elf(image, name, memory, elf.EM_AARCH64, "arm64", RAM_BASE)
    mpidrs = [arm_vcpu.mpidr(v) & fdt.MPIDR_AFFINITY for v in machine.vcpus]
    blob = fdt.build(fdt.machine_tree(len(machine.vcpus), mpidrs, machine.config.mem_size))
    dtb_at = RAM_BASE + machine.config.mem_size - FDT_ALIGN
    memory.write(dtb_at, blob)
    vcpu = machine.vcpus[0]
    vcpu.set_one_reg(PSTATE, PSTATE_EL1H_DAIF.to_bytes(8, "little"))
    vcpu.set_one_reg(arm_vcpu.PC, ehdr.e_entry.to_bytes(8, "little"))
    vcpu.set_one_reg(X0, dtb_at.to_bytes(8, "little"))
    return []
