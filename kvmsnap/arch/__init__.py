"""What differs per architecture, chosen once: per core by its ``e_machine``, live by the host.

Each architecture package (``x86_64``, ``aarch64``) names itself (``NAME``, ``E_MACHINE``,
``ARCH_ID`` in KVMSNAP_HEADER) and holds its layouts, note encoding and decoding, decoders and,
where it has them, page walking (``paging``) and the live half (save, restore, host checks,
boot), which alone imports the KVM layer.  Importing this package imports neither.
"""
import importlib
import platform

from kvmsnap.errors import KvmsnapError
from kvmsnap.formats import elf

_BY_MACHINE = {elf.EM_X86_64: "x86_64", elf.EM_AARCH64: "aarch64",
               elf.EM_386: "x86_64"}     # i386 dumps: x86_64's decoders and QEMU-note paging
_BY_HOST = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class UnsupportedArch(KvmsnapError):
    """An architecture kvmsnap has no (or not this) support for."""


class RegisterRefused(KvmsnapError):
    """The host's KVM refused to set a saved register; the message names it."""


#: What each module of an architecture's live half does, for the message when it has none yet.
LIVE_ROLES = {"vm": "run", "vcpu": "run", "boot": "run", "host": "restore", "assist": "run"}


def live(package, module: str):
    """A module of the live half of ``package`` (``vm``, ``vcpu``, ``boot``, ``host``; x86 also
    ``assist``): these import the KVM layer, so they are imported only when asked for."""
    name = f"{package.__name__}.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise UnsupportedArch(f"{package.NAME}: kvmsnap cannot {LIVE_ROLES[module]} {package.NAME} guests "
                              "yet") from None


def _package(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def for_machine(e_machine: int):
    """The architecture package for an ELF ``e_machine``."""
    if e_machine not in _BY_MACHINE:
        raise UnsupportedArch(f"{elf.MACHINE_NAMES.get(e_machine, f'e_machine {e_machine}')}: "
                              "not an architecture kvmsnap knows")
    return _package(_BY_MACHINE[e_machine])


def by_name(name: str):
    """The architecture package called ``name`` (``Snapshot.arch``)."""
    if name not in ("x86_64", "aarch64"):
        raise UnsupportedArch(f"architecture {name!r} is not one kvmsnap knows")
    return _package(name)


def for_id(arch_id: int):
    """The architecture package for KVMSNAP_HEADER's ``arch``."""
    for name in ("x86_64", "aarch64"):
        package = _package(name)
        if package.ARCH_ID == arch_id:
            return package
    raise UnsupportedArch(f"architecture {arch_id} is not one kvmsnap knows")


def host():
    """The architecture package of this machine (for the live commands)."""
    machine = platform.machine()
    if machine not in _BY_HOST:
        raise UnsupportedArch(f"this host is {machine}: kvmsnap runs x86_64 and aarch64 guests")
    return _package(_BY_HOST[machine])


def foreign_paging(image) -> list:
    """Per-vCPU paging state from the notes of another tool's machine dump (QEMU's), for
    :meth:`kvmsnap.memory.core.CoreMemory.translate`; empty where the architecture has none."""
    try:
        package = for_machine(image.ehdr.e_machine)
    except UnsupportedArch:
        return []
    return package.paging.from_notes(image)
