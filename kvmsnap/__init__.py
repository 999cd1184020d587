"""kvmsnap: KVM guests to ELF core files and back."""
__version__ = "0.1.0"
