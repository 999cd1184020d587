"""``Vm``: a VM file descriptor, created by ``Kvm.create_vm``."""
import os

from ._arch import VmArch
from ._ioctl import ffi, ioctl_int, ioctl_ptr
from .vcpu import Vcpu


class Vm(VmArch):
    """One KVM virtual machine; creates ``Vcpu`` objects."""

    def __init__(self, kvm, fd: int):
        self.kvm = kvm
        self.fd = fd

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        """See KVM_CHECK_EXTENSION on the VM fd (some answers, e.g. KVM_CAP_XSAVE2, are per VM)."""
        return ioctl_int(self.fd, "KVM_CHECK_EXTENSION", cap)

    def enable_cap(self, cap: int, *args: int) -> None:
        """See KVM_ENABLE_CAP on the VM fd, with up to four arguments."""
        ioctl_ptr(self.fd, "KVM_ENABLE_CAP", ffi.new("struct kvm_enable_cap *", {"cap": cap, "args": list(args)}))

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int, host_addr: int,
                               flags: int = 0) -> None:
        """See KVM_SET_USER_MEMORY_REGION."""
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": host_addr})
        ioctl_ptr(self.fd, "KVM_SET_USER_MEMORY_REGION", region)

    def create_irqchip(self) -> None:
        """See KVM_CREATE_IRQCHIP: the in-kernel interrupt controllers (x86: PIC, IOAPIC and LAPICs)."""
        ioctl_int(self.fd, "KVM_CREATE_IRQCHIP")

    def irq_line(self, irq: int, level: int) -> None:
        """See KVM_IRQ_LINE."""
        ioctl_ptr(self.fd, "KVM_IRQ_LINE", ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def get_dirty_log(self, slot: int, pages: int) -> bytes:
        """See KVM_GET_DIRTY_LOG: one bit per page of ``slot`` (needs KVM_MEM_LOG_DIRTY_PAGES)."""
        bitmap = ffi.new("char[]", ((pages + 63) // 64) * 8)
        log = ffi.new("struct kvm_dirty_log *", {"slot": slot, "dirty_bitmap": bitmap})
        ioctl_ptr(self.fd, "KVM_GET_DIRTY_LOG", log)
        return bytes(ffi.buffer(bitmap))

    def create_vcpu(self, index: int) -> Vcpu:
        """See KVM_CREATE_VCPU; maps the vCPU's ``kvm_run`` area."""
        fd = ioctl_int(self.fd, "KVM_CREATE_VCPU", index)
        return Vcpu(self, fd, index, self.kvm.get_vcpu_mmap_size())
