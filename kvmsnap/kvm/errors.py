"""The exceptions of the KVM layer: ``KvmError`` for a failed ioctl, ``KvmUnavailable`` for a missing build."""
import errno
import os

from ..errors import KvmsnapError


class KvmError(OSError):
    """An ioctl failed: names the ioctl and carries the errno."""

    def __init__(self, ioctl: str, err: int, detail: str = ""):
        self.ioctl = ioctl
        msg = f"{ioctl} failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})"
        super().__init__(err, msg + (f": {detail}" if detail else ""))

    def __str__(self):
        return self.strerror


class MsrError(KvmError):
    """KVM_GET_MSRS/KVM_SET_MSRS handled only part of the list; ``index`` is the first refused MSR."""

    def __init__(self, ioctl: str, index: int, done: int, total: int):
        self.index = index
        self.done = done
        super().__init__(ioctl, errno.EINVAL,
                         f"MSR {index:#x} refused (handled {done} of {total})")


class KvmUnavailable(KvmsnapError, ImportError):
    """This installation has no compiled KVM module (or no cffi backend): live commands cannot run."""

    def __init__(self, cause: ImportError):
        super().__init__(f"no KVM support in this installation ({cause}): reinstall kvmsnap where "
                         "<linux/kvm.h> (Debian: linux-libc-dev) and a C compiler (gcc) are present", name=cause.name)
