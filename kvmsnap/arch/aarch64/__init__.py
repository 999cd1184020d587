"""aarch64: ``layouts`` (byte layouts, KVM one-reg ids, the machine's addresses), ``decode``
(inspect), and the live half, on arm64 hosts: ``vm`` (with ``vgic``), ``vcpu``, ``boot`` (with
``fdt``), ``host`` (restore's checks)."""
import importlib

from kvmsnap.formats import elf

NAME = "aarch64"
E_MACHINE = elf.EM_AARCH64
ARCH_ID = 2                  # KVMSNAP_HEADER.arch
ASSISTED = False
paging = None                # guest-virtual translation: not yet for aarch64


def __getattr__(name):
    """``notes`` on first use: it imports kvmsnap.notes, which imports layouts."""
    if name == "notes":
        return importlib.import_module(f"{__name__}.notes")
    raise AttributeError(name)
