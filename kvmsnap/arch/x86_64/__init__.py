"""x86-64: ``layouts`` (byte layouts), ``xsave``, ``cpuid``, ``msrs`` (facts), ``state`` (vCPU
state), ``notes`` (core notes, encode and decode), ``paging``, ``decode``/``lapic``/``devices``
(inspect), and the live half: ``vcpu``, ``vm``, ``host``, ``boot``, ``exits``."""
import importlib

from kvmsnap.formats import elf

NAME = "x86_64"
E_MACHINE = elf.EM_X86_64
ARCH_ID = 1                  # KVMSNAP_HEADER.arch
ASSISTED = True              # live: the VMM completes what a KVM that emulates kernel mode cannot (assist)


def __getattr__(name):
    """``notes`` and ``paging`` on first use: they import kvmsnap.notes, which imports layouts."""
    if name in ("notes", "paging"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
