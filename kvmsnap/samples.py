"""The sample guests built from samples/ at install time, and how to find their images: this host's
architecture's (SAMPLES), and each architecture's (BY_ARCH)."""
import os
import platform
from dataclasses import dataclass

GUEST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guests")


@dataclass(frozen=True)
class Sample:
    name: str
    filename: str
    vcpus: int            # default vCPU count
    description: str
    flat_addr: int | None = None     # load address of a flat (non-ELF) image

    @property
    def path(self) -> str:
        return os.path.join(GUEST_DIR, self.filename)


X86_64_SAMPLES = {s.name: s for s in [
    Sample("counter", "counter.elf", 1, "prints `tick N` forever (CPL3, long mode)"),
    Sample("smp", "smp.elf", 2, "one `cpuI tick N` stream per vCPU, own stack and counter each"),
    Sample("fpu", "fpu.elf", 1, "x87/SSE/AVX/AVX-512 and mask registers set from N and checked every tick"),
    Sample("timer", "timer.elf", 1, "CPL0 kernel with IDT and LAPIC timer; a CPL3 task prints `timer tick N`"),
    Sample("memtest", "memtest.elf", 1, "fills and verifies all RAM above its image, `memtest round N ok`"),
    Sample("realmode", "realmode.bin", 1, "16-bit real-mode guest printing `realmode tick N`", flat_addr=0x7C00),
]}
AARCH64_SAMPLES = {s.name: s for s in [
    Sample("counter", "aarch64/counter.elf", 1, "prints `tick N` forever (EL0)"),
    Sample("smp", "aarch64/smp.elf", 2, "one `cpuI tick N` stream per vCPU, started with PSCI CPU_ON"),
    Sample("fpu", "aarch64/fpu.elf", 1, "V0-V31 (and SVE Z/P registers where present) set from N and checked"),
    Sample("timer", "aarch64/timer.elf", 1, "EL1 kernel with the GICv3 and the virtual timer; EL0 prints "
                                            "`timer tick N`"),
]}
BY_ARCH = {"x86_64": X86_64_SAMPLES, "aarch64": AARCH64_SAMPLES}
SAMPLES = AARCH64_SAMPLES if platform.machine() in ("aarch64", "arm64") else X86_64_SAMPLES
DEFAULT = "counter"
