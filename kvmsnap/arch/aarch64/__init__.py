"""aarch64: ``layouts`` (byte layouts, KVM one-reg ids) and ``decode`` (inspect). The KVM layer
runs on arm64 hosts (kvmsnap/kvm/aarch64.py); the live half here (vm, vcpu, host, boot) is not
written yet, so ``kvmsnap.arch.live`` names it unsupported."""
from kvmsnap.formats import elf

NAME = "aarch64"
E_MACHINE = elf.EM_AARCH64
ARCH_ID = 2                  # KVMSNAP_HEADER.arch
paging = None                # guest-virtual translation: not yet for aarch64
notes = None                 # saving and restoring aarch64 cores: not yet
