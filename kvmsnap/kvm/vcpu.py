"""``Vcpu``: a vCPU file descriptor and its mapped ``kvm_run`` area."""
import mmap
import os

from ._arch import VcpuArch
from ._ioctl import ffi, get_struct, ioctl_int, ioctl_ptr


class Vcpu(VcpuArch):
    """One vCPU of a ``Vm``: KVM_RUN, the MP state, and the architecture's register-state ioctls."""

    def __init__(self, vm, fd: int, index: int, mmap_size: int):
        self.vm = vm
        self.fd = fd
        self.index = index
        self._run_map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_area = ffi.cast("struct kvm_run *", ffi.from_buffer(self._run_map))
        self.run_buffer = ffi.buffer(self.run_area, mmap_size)

    def close(self):
        if self.fd >= 0:
            self.run_area = None
            self.run_buffer = None
            try:
                self._run_map.close()
            except BufferError:
                pass  # a view is still alive; the mapping goes with the process
            os.close(self.fd)
            self.fd = -1

    def run(self) -> int:
        """See KVM_RUN: enter the guest; returns the exit reason (EINTR raises ``KvmError``)."""
        ioctl_int(self.fd, "KVM_RUN")
        return self.run_area.exit_reason

    def get_mp_state(self) -> int:
        """See KVM_GET_MP_STATE."""
        return get_struct(self.fd, "KVM_GET_MP_STATE", "struct kvm_mp_state").mp_state

    def set_mp_state(self, state: int) -> None:
        """See KVM_SET_MP_STATE."""
        ioctl_ptr(self.fd, "KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": state}))
