"""The host architecture's ioctl mixins for ``Kvm``, ``Vm`` and ``Vcpu``, chosen like the cffi build
(``build_ffi.ARCHES``) by ``platform.machine()``."""
import platform

if platform.machine() == "x86_64":
    from .x86_64 import X86Kvm as KvmArch, X86Vcpu as VcpuArch, X86Vm as VmArch
else:
    from .aarch64 import Arm64Kvm as KvmArch, Arm64Vcpu as VcpuArch, Arm64Vm as VmArch

__all__ = ["KvmArch", "VmArch", "VcpuArch"]
