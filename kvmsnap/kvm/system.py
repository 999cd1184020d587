"""``Kvm``: the /dev/kvm system file descriptor."""
import os

from ._ioctl import lib, ioctl_int
from .errors import KvmError
from .lists import cpuid_entries, get_msrs, index_list
from .vm import Vm


class Kvm:
    """An open /dev/kvm; creates ``Vm`` objects."""

    def __init__(self, path: str = "/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(f"open {path}", e.errno) from None
        version = self.get_api_version()
        if version != lib.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError("KVM_GET_API_VERSION", 22, f"version {version}, need {lib.KVM_API_VERSION}")

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

    def get_msr_index_list(self) -> list[int]:
        """See KVM_GET_MSR_INDEX_LIST: the MSRs saved/restored by KVM_GET/SET_MSRS."""
        return index_list(self.fd, "KVM_GET_MSR_INDEX_LIST")

    def get_msr_feature_index_list(self) -> list[int]:
        """See KVM_GET_MSR_FEATURE_INDEX_LIST: feature MSRs readable on the system fd."""
        return index_list(self.fd, "KVM_GET_MSR_FEATURE_INDEX_LIST")

    def get_supported_cpuid(self) -> bytes:
        """See KVM_GET_SUPPORTED_CPUID: raw ``kvm_cpuid_entry2`` array."""
        return cpuid_entries(self.fd, "KVM_GET_SUPPORTED_CPUID")

    def get_msrs(self, indices: list[int]) -> list[tuple[int, int]]:
        """See KVM_GET_MSRS on the system fd (feature MSRs)."""
        return get_msrs(self.fd, indices)

    def create_vm(self):
        """See KVM_CREATE_VM."""
        return Vm(self, ioctl_int(self.fd, "KVM_CREATE_VM", 0))
