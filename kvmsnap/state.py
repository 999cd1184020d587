"""One snapshot type: what capture produces, the core writer consumes, the core reader produces and
restore consumes.  vCPU state is the architecture's (``kvmsnap.arch.<arch>.state``), raw kernel
structs as KVM returns them; devices carry their state as named blobs (docs/core-format.md)."""
from dataclasses import dataclass, field
from typing import NamedTuple

from kvmsnap.memory import GuestMemory


class MachineConfig(NamedTuple):
    """How the machine was started, so restore can build the same one."""
    guest: str          # sample name or image path
    mem_size: int       # bytes of RAM requested
    vcpus: int


class CoreInfo(NamedTuple):
    """Where a snapshot read from a file came from (KVMSNAP_HEADER)."""
    path: str
    format_major: int
    format_minor: int
    host_kernel: str     # uname -r of the host that saved
    producer: str        # e.g. "kvmsnap 0.1.0"
    elf: object          # the parsed file (kvmsnap.formats.reader.ElfCore): notes, segments


class Base(NamedTuple):
    """The core an increment builds on (KVMSNAP_BASE): where it was, its size, and the BLAKE3 of
    its headers and notes (which hold every vCPU's and device's state at its instant)."""
    path: str
    size: int
    state_blake3: bytes


@dataclass
class Snapshot:
    """A whole VM at one instant."""
    arch: str                        # architecture package name: "x86_64", "aarch64"
    config: MachineConfig
    vcpus: list                      # the architecture's vCPU states, in index order
    devices: dict[str, bytes]        # device name -> state blob (names per architecture)
    memory: GuestMemory              # guest RAM: live, or one core's
    info: CoreInfo | None = None     # set when read from a core
    base: Base | None = None         # an increment's base: its memory holds only ``changed``
    changed: list | None = None      # an increment's (start, end) guest-physical runs: pages
    #                                  written since the base; every other page is the base's
    chain: list = field(default_factory=list)   # an increment's bases read through, whole core first

    def close(self) -> None:
        self.memory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
