"""aarch64: ``layouts`` (byte layouts, KVM one-reg ids) and ``decode`` (inspect); the live half
is a later issue's."""
from kvmsnap.formats import elf

NAME = "aarch64"
E_MACHINE = elf.EM_AARCH64
ARCH_ID = 2                  # KVMSNAP_HEADER.arch
paging = None                # guest-virtual translation: not yet for aarch64
notes = None                 # saving and restoring aarch64 cores: not yet
