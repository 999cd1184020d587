"""aarch64: ``layouts`` (byte layouts, KVM one-reg ids, the machine's addresses), ``decode``
(inspect), ``paging`` (stage-1 translation), and the live half, on arm64 hosts: ``vm`` (with ``vgic``), ``vcpu``, ``boot`` (with
``fdt``), ``host`` (restore's checks)."""
import importlib

from kvmsnap.formats import elf

NAME = "aarch64"
E_MACHINE = elf.EM_AARCH64
ARCH_ID = 2                  # KVMSNAP_HEADER.arch
ASSISTED = False


def __getattr__(name):
    """``notes`` and ``paging`` on first use (``notes`` imports kvmsnap.notes, which imports layouts)."""
    if name in ("notes", "paging"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
