"""``Vcpu``: a vCPU file descriptor and its mapped ``kvm_run`` area."""
import mmap
import os

from ._ioctl import ffi, as_bytes, get_struct, ioctl_int, ioctl_ptr, set_struct
from .lists import cpuid_entries, get_msrs, set_msrs


class Vcpu:
    """One vCPU of a ``Vm``: register-state GET/SET ioctls and KVM_RUN."""

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

    def get_regs(self) -> bytes:
        """See KVM_GET_REGS: raw ``struct kvm_regs``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_REGS", "struct kvm_regs"))

    def set_regs(self, data: bytes) -> None:
        """See KVM_SET_REGS."""
        set_struct(self.fd, "KVM_SET_REGS", "struct kvm_regs", data)

    def get_sregs(self) -> bytes:
        """See KVM_GET_SREGS: raw ``struct kvm_sregs``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_SREGS", "struct kvm_sregs"))

    def set_sregs(self, data: bytes) -> None:
        """See KVM_SET_SREGS."""
        set_struct(self.fd, "KVM_SET_SREGS", "struct kvm_sregs", data)

    def get_sregs2(self) -> bytes:
        """See KVM_GET_SREGS2 (KVM_CAP_SREGS2): raw ``struct kvm_sregs2``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_SREGS2", "struct kvm_sregs2"))

    def set_sregs2(self, data: bytes) -> None:
        """See KVM_SET_SREGS2."""
        set_struct(self.fd, "KVM_SET_SREGS2", "struct kvm_sregs2", data)

    def get_fpu(self) -> bytes:
        """See KVM_GET_FPU: raw ``struct kvm_fpu``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_FPU", "struct kvm_fpu"))

    def set_fpu(self, data: bytes) -> None:
        """See KVM_SET_FPU."""
        set_struct(self.fd, "KVM_SET_FPU", "struct kvm_fpu", data)

    def get_xsave(self) -> bytes:
        """See KVM_GET_XSAVE: the legacy 4096-byte XSAVE area."""
        return as_bytes(get_struct(self.fd, "KVM_GET_XSAVE", "struct kvm_xsave"))

    def get_xsave2(self, size: int) -> bytes:
        """See KVM_GET_XSAVE2: ``size`` = KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM fd."""
        buf = ffi.new("char[]", max(size, ffi.sizeof("struct kvm_xsave")))
        ioctl_ptr(self.fd, "KVM_GET_XSAVE2", buf)
        return bytes(ffi.buffer(buf, size))

    def set_xsave(self, data: bytes) -> None:
        """See KVM_SET_XSAVE (reads as many bytes as KVM_CAP_XSAVE2 says)."""
        buf = ffi.new("char[]", max(len(data), ffi.sizeof("struct kvm_xsave")))
        ffi.memmove(buf, data, len(data))
        ioctl_ptr(self.fd, "KVM_SET_XSAVE", buf)

    def get_xcrs(self) -> bytes:
        """See KVM_GET_XCRS: raw ``struct kvm_xcrs``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_XCRS", "struct kvm_xcrs"))

    def set_xcrs(self, data: bytes) -> None:
        """See KVM_SET_XCRS."""
        set_struct(self.fd, "KVM_SET_XCRS", "struct kvm_xcrs", data)

    def get_msrs(self, indices: list[int]) -> list[tuple[int, int]]:
        """See KVM_GET_MSRS; ``MsrError`` names the first MSR not read."""
        return get_msrs(self.fd, indices)

    def set_msrs(self, entries: list[tuple[int, int]]) -> None:
        """See KVM_SET_MSRS; ``MsrError`` names the first MSR refused."""
        set_msrs(self.fd, entries)

    def get_lapic(self) -> bytes:
        """See KVM_GET_LAPIC: raw ``struct kvm_lapic_state``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_LAPIC", "struct kvm_lapic_state"))

    def set_lapic(self, data: bytes) -> None:
        """See KVM_SET_LAPIC."""
        set_struct(self.fd, "KVM_SET_LAPIC", "struct kvm_lapic_state", data)

    def get_vcpu_events(self) -> bytes:
        """See KVM_GET_VCPU_EVENTS: raw ``struct kvm_vcpu_events``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events"))

    def set_vcpu_events(self, data: bytes) -> None:
        """See KVM_SET_VCPU_EVENTS."""
        set_struct(self.fd, "KVM_SET_VCPU_EVENTS", "struct kvm_vcpu_events", data)

    def get_debugregs(self) -> bytes:
        """See KVM_GET_DEBUGREGS: raw ``struct kvm_debugregs``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_DEBUGREGS", "struct kvm_debugregs"))

    def set_debugregs(self, data: bytes) -> None:
        """See KVM_SET_DEBUGREGS."""
        set_struct(self.fd, "KVM_SET_DEBUGREGS", "struct kvm_debugregs", data)

    def get_mp_state(self) -> int:
        """See KVM_GET_MP_STATE."""
        return get_struct(self.fd, "KVM_GET_MP_STATE", "struct kvm_mp_state").mp_state

    def set_mp_state(self, state: int) -> None:
        """See KVM_SET_MP_STATE."""
        ioctl_ptr(self.fd, "KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    def get_cpuid2(self) -> bytes:
        """See KVM_GET_CPUID2: the raw ``kvm_cpuid_entry2`` array last set."""
        return cpuid_entries(self.fd, "KVM_GET_CPUID2")

    def set_cpuid2(self, entries: bytes) -> None:
        """See KVM_SET_CPUID2 with a raw ``kvm_cpuid_entry2`` array."""
        esize = ffi.sizeof("struct kvm_cpuid_entry2")
        n = len(entries) // esize
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
        buf.nent = n
        ffi.memmove(buf.entries, entries[:n * esize], n * esize)
        ioctl_ptr(self.fd, "KVM_SET_CPUID2", buf)

    def get_tsc_khz(self) -> int:
        """See KVM_GET_TSC_KHZ."""
        return ioctl_int(self.fd, "KVM_GET_TSC_KHZ")

    def set_tsc_khz(self, khz: int) -> None:
        """See KVM_SET_TSC_KHZ."""
        ioctl_int(self.fd, "KVM_SET_TSC_KHZ", khz)

    def kvmclock_ctrl(self) -> None:
        """See KVM_KVMCLOCK_CTRL: tell the guest it was paused (no soft-lockup warnings)."""
        ioctl_int(self.fd, "KVM_KVMCLOCK_CTRL")
