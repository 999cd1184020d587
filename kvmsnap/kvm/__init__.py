"""The KVM layer: one class per file descriptor (``Kvm`` → ``Vm`` → ``Vcpu``), one method per ioctl.

Numbers and struct layouts come from ``<linux/kvm.h>`` through the cffi module ``_kvm``, compiled at
install time by ``build_ffi.py``.
"""
from .errors import KvmError, MsrError
from .system import Kvm
from .vm import Vm
from .vcpu import Vcpu

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "MsrError"]
