"""KVM capabilities, and the fallbacks api.rst documents for the ones a kernel does not report."""
import enum

from ._ioctl import ffi, lib

#: Every ``KVM_CAP_*`` the build declares, without the prefix (``Cap.XSAVE2 == lib.KVM_CAP_XSAVE2``).
Cap = enum.IntEnum("Cap", {name.removeprefix("KVM_CAP_"): getattr(lib, name)
                           for name in dir(lib) if name.startswith("KVM_CAP_")})


def max_vcpus(kvm) -> int:
    """KVM_CAP_MAX_VCPUS; without it KVM_CAP_NR_VCPUS; without that 4 (api.rst: "assume that max_vcpus is 4")."""
    return kvm.check_extension(Cap.MAX_VCPUS) or kvm.check_extension(Cap.NR_VCPUS) or 4


def xsave2_size(vm) -> int:
    """The KVM_GET_XSAVE2 buffer size: KVM_CAP_XSAVE2 on the VM fd, at least the legacy ``struct kvm_xsave``
    (4096 bytes, also what a kernel without KVM_CAP_XSAVE2 uses)."""
    return max(vm.check_extension(Cap.XSAVE2), ffi.sizeof("struct kvm_xsave"))
