"""The sample guests built from samples/ at install time, and how to find their images."""
import os
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


SAMPLES = {s.name: s for s in [
    Sample("counter", "counter.elf", 1, "prints `tick N` forever (CPL3, long mode)"),
    Sample("smp", "smp.elf", 2, "one `cpuI tick N` stream per vCPU, own stack and counter each"),
    Sample("fpu", "fpu.elf", 1, "x87/SSE/AVX/AVX-512 and mask registers set from N and checked every tick"),
    Sample("timer", "timer.elf", 1, "CPL0 kernel with IDT and LAPIC timer; a CPL3 task prints `timer tick N`"),
    Sample("memtest", "memtest.elf", 1, "fills and verifies all RAM above its image, `memtest round N ok`"),
    Sample("realmode", "realmode.bin", 1, "16-bit real-mode guest printing `realmode tick N`", flat_addr=0x7C00),
]}
DEFAULT = "counter"
