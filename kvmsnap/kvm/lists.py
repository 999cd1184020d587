"""Variable-length ioctl arguments: MSR index lists, MSR values, CPUID tables."""
import errno

from ._ioctl import ffi, ioctl_ptr
from .errors import KvmError, MsrError

#: Entries asked for in list ioctls before growing the buffer on E2BIG.
_LIST_START = 256
_LIST_MAX = 1 << 16


def _msrs_buffer(entries: list[tuple[int, int]]):
    buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(entries), "entries": len(entries)})
    buf.nmsrs = len(entries)
    for i, (index, value) in enumerate(entries):
        buf.entries[i].index = index
        buf.entries[i].data = value
    return buf


def get_msrs(fd: int, indices: list[int]) -> list[tuple[int, int]]:
    """Read ``indices``; raises ``MsrError`` naming the first MSR KVM did not return."""
    buf = _msrs_buffer([(i, 0) for i in indices])
    done = ioctl_ptr(fd, "KVM_GET_MSRS", buf)
    if done != len(indices):
        raise MsrError("KVM_GET_MSRS", indices[done], done, len(indices))
    return [(buf.entries[i].index, buf.entries[i].data) for i in range(done)]


def set_msrs(fd: int, entries: list[tuple[int, int]]) -> None:
    """Write ``entries``; raises ``MsrError`` naming the first MSR KVM refused."""
    buf = _msrs_buffer(entries)
    done = ioctl_ptr(fd, "KVM_SET_MSRS", buf)
    if done != len(entries):
        raise MsrError("KVM_SET_MSRS", entries[done][0], done, len(entries))

def index_list(fd: int, name: str) -> list[int]:
    """An MSR-index-list ioctl (KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST)."""
    n = _LIST_START
    while True:
        buf = ffi.new("struct kvm_msr_list *", {"nmsrs": n, "indices": n})
        buf.nmsrs = n
        try:
            ioctl_ptr(fd, name, buf)
        except KvmError as e:
            if e.errno == errno.E2BIG and n < _LIST_MAX:  # E2BIG: nmsrs now says how many there are
                n = max(n * 2, buf.nmsrs)
                continue
            raise
        return [buf.indices[i] for i in range(buf.nmsrs)]


def cpuid_entries(fd: int, name: str) -> bytes:
    """A CPUID-list ioctl (KVM_GET_SUPPORTED_CPUID, KVM_GET_CPUID2): the raw entry array."""
    n = _LIST_START
    while True:
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        buf.nent = n
        try:
            ioctl_ptr(fd, name, buf)
        except KvmError as e:
            if e.errno == errno.E2BIG and n < _LIST_MAX:
                n *= 2
                continue
            raise
        size = ffi.sizeof("struct kvm_cpuid_entry2") * buf.nent
        return bytes(ffi.buffer(buf.entries, size))
