"""The host architecture's ioctl mixins for ``Kvm``, ``Vm`` and ``Vcpu``, chosen like the cffi build
(``build_ffi.ARCHES``) by ``platform.machine()``."""
import platform

if platform.machine() == "x86_64":
    from .x86_64 import X86Kvm as KvmArch, X86Vcpu as VcpuArch, X86Vm as VmArch
else:                   # aarch64: kvm/aarch64.py (vcpu_init, preferred_target, device attributes), a later issue
    KvmArch = VmArch = VcpuArch = object

__all__ = ["KvmArch", "VmArch", "VcpuArch"]
