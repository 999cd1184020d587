"""The KVM layer: one class per file descriptor (``Kvm`` → ``Vm`` → ``Vcpu``), one method per ioctl.

Numbers and struct layouts come from ``<linux/kvm.h>`` through the cffi module ``_kvm``, compiled at
install time by ``build_ffi.py``; ``ffi`` and ``lib`` are exported here for the rest of kvmsnap.
Without that module, importing this package raises ``KvmUnavailable`` (one line saying what is missing).
"""
from .errors import KvmError, KvmUnavailable, MsrError

try:
    from ._kvm import ffi, lib
except ImportError as e:
    raise KvmUnavailable(e) from None

from .cap import Cap, max_vcpus, xsave2_size  # noqa: E402
from .system import Kvm  # noqa: E402
from .vm import Vm  # noqa: E402
from .vcpu import Vcpu  # noqa: E402

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "KvmUnavailable", "MsrError", "Cap", "max_vcpus", "xsave2_size",
           "ffi", "lib"]
