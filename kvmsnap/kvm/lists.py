"""Variable-length ioctl arguments: MSR index lists, MSR values, CPUID tables, arm64 register lists."""
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


def _growing(fd: int, name: str, ctype: str, count: str, array: str):
    """Run a list ioctl with a buffer that doubles on E2BIG (the kernel then also says how many
    entries it has, in ``count``) until the list fits."""
    n = _LIST_START
    while True:
        buf = ffi.new(ctype, {count: n, array: n})
        setattr(buf, count, n)
        try:
            ioctl_ptr(fd, name, buf)
            return buf
        except KvmError as e:
            if e.errno != errno.E2BIG or n >= _LIST_MAX:
                raise
            n = max(n * 2, getattr(buf, count))


def index_list(fd: int, name: str) -> list[int]:
    """An MSR-index-list ioctl (KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST)."""
    buf = _growing(fd, name, "struct kvm_msr_list *", "nmsrs", "indices")
    return [buf.indices[i] for i in range(buf.nmsrs)]


def cpuid_entries(fd: int, name: str) -> bytes:
    """A CPUID-list ioctl (KVM_GET_SUPPORTED_CPUID, KVM_GET_CPUID2): the raw entry array."""
    buf = _growing(fd, name, "struct kvm_cpuid2 *", "nent", "entries")
    return bytes(ffi.buffer(buf.entries, ffi.sizeof("struct kvm_cpuid_entry2") * buf.nent))


def reg_list(fd: int) -> list[int]:
    """KVM_GET_REG_LIST (arm64): every ONE_REG id of the vCPU."""
    buf = _growing(fd, "KVM_GET_REG_LIST", "struct kvm_reg_list *", "n", "reg")
    return [buf.reg[i] for i in range(buf.n)]
