"""Raw ioctl calls through the compiled helpers: -1/errno becomes ``KvmError``."""
from ._kvm import ffi, lib
from .errors import KvmError


def ioctl_ptr(fd: int, name: str, arg) -> int:
    """ioctl with a pointer argument (a cffi ``struct *`` or ``NULL``)."""
    ret = lib.kvmsnap_ioctl_ptr(fd, getattr(lib, name), arg)
    if ret < 0:
        raise KvmError(name, ffi.errno)
    return ret


def ioctl_int(fd: int, name: str, arg: int = 0) -> int:
    """ioctl with an integer argument."""
    ret = lib.kvmsnap_ioctl_int(fd, getattr(lib, name), arg)
    if ret < 0:
        raise KvmError(name, ffi.errno)
    return ret


def get_struct(fd: int, name: str, ctype: str):
    """Run a GET ioctl into a new zeroed ``ctype`` and return it."""
    buf = ffi.new(ctype + " *")
    ioctl_ptr(fd, name, buf)
    return buf


def set_struct(fd: int, name: str, ctype: str, data: bytes) -> None:
    """Run a SET ioctl from raw struct bytes (copied, zero-padded or truncated to the struct size)."""
    buf = ffi.new(ctype + " *")
    size = ffi.sizeof(ctype)
    ffi.memmove(buf, data[:size], min(len(data), size))
    ioctl_ptr(fd, name, buf)


def as_bytes(cdata) -> bytes:
    """The raw bytes of a cffi struct pointer."""
    return bytes(ffi.buffer(cdata))
