"""``Kvm``: the /dev/kvm system file descriptor."""
import errno
import os

from ._arch import KvmArch
from ._ioctl import lib, ioctl_int
from .errors import KvmError
from .vm import Vm


class Kvm(KvmArch):
    """An open /dev/kvm; creates ``Vm`` objects."""

    def __init__(self, path: str = "/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(f"open {path}", e.errno) from None
        version = self.get_api_version()
        if version != lib.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError("KVM_GET_API_VERSION", errno.EINVAL, f"version {version}, need {lib.KVM_API_VERSION}")

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def get_api_version(self) -> int:
        """See KVM_GET_API_VERSION."""
        return ioctl_int(self.fd, "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """See KVM_CHECK_EXTENSION: 0 when the capability is absent, else its value."""
        return ioctl_int(self.fd, "KVM_CHECK_EXTENSION", cap)

    def get_vcpu_mmap_size(self) -> int:
        """See KVM_GET_VCPU_MMAP_SIZE."""
        return ioctl_int(self.fd, "KVM_GET_VCPU_MMAP_SIZE")

    def create_vm(self, machine_type: int = 0):
        """See KVM_CREATE_VM (arm64: ``machine_type`` holds the IPA size, KVM_VM_TYPE_ARM_IPA_SIZE)."""
        return Vm(self, ioctl_int(self.fd, "KVM_CREATE_VM", machine_type))
