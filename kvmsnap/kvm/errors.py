"""The one exception type of the KVM layer, and the ioctl helpers that raise it."""
import errno
import os


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
