"""The x86-64 ioctls, as mixins of ``Kvm``, ``Vm`` and ``Vcpu``: MSR and CPUID lists, the in-kernel
PIC/IOAPIC and PIT, kvmclock, TSS and identity map, and every vCPU register set."""
from ._ioctl import ffi, lib, as_bytes, get_struct, ioctl_int, ioctl_ptr, set_struct
from .lists import cpuid_entries, get_msrs, index_list, set_msrs


class X86Kvm:
    """System-fd ioctls of x86 KVM."""

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


class X86Vm:
    """VM-fd ioctls of x86 KVM."""

    def set_tss_addr(self, addr: int) -> None:
        """See KVM_SET_TSS_ADDR (three pages inside the 32-bit hole)."""
        ioctl_int(self.fd, "KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """See KVM_SET_IDENTITY_MAP_ADDR."""
        ioctl_ptr(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", ffi.new("__u64 *", addr))

    def get_irqchip(self, chip_id: int) -> bytes:
        """See KVM_GET_IRQCHIP: raw ``struct kvm_irqchip``."""
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        ioctl_ptr(self.fd, "KVM_GET_IRQCHIP", chip)
        return as_bytes(chip)

    def set_irqchip(self, data: bytes) -> None:
        """See KVM_SET_IRQCHIP (``chip_id`` is inside ``data``)."""
        set_struct(self.fd, "KVM_SET_IRQCHIP", "struct kvm_irqchip", data)

    def create_pit2(self, flags: int = 0) -> None:
        """See KVM_CREATE_PIT2."""
        ioctl_ptr(self.fd, "KVM_CREATE_PIT2", ffi.new("struct kvm_pit_config *", {"flags": flags}))

    def get_pit2(self) -> bytes:
        """See KVM_GET_PIT2: raw ``struct kvm_pit_state2``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_PIT2", "struct kvm_pit_state2"))

    def set_pit2(self, data: bytes) -> None:
        """See KVM_SET_PIT2."""
        set_struct(self.fd, "KVM_SET_PIT2", "struct kvm_pit_state2", data)

    def set_msr_filter(self, denied: list[tuple[int, int]]) -> None:
        """See KVM_X86_SET_MSR_FILTER: each ``(msr, flags)`` of ``denied`` refuses the guest's
        accesses named by ``flags`` (KVM_MSR_FILTER_READ/WRITE) to that MSR (with
        KVM_CAP_X86_USER_SPACE_MSR: sends them to user space); all others are allowed.  A later
        call replaces the filter."""
        bitmaps = [ffi.new("__u8[1]") for _ in denied]          # one MSR per range, its bit clear
        ranges = [{"flags": flags, "nmsrs": 1, "base": index, "bitmap": bitmap}
                  for (index, flags), bitmap in zip(denied, bitmaps)]
        ioctl_ptr(self.fd, "KVM_X86_SET_MSR_FILTER", ffi.new("struct kvm_msr_filter *", {
            "flags": lib.KVM_MSR_FILTER_DEFAULT_ALLOW, "ranges": ranges}))

    def get_clock(self) -> bytes:
        """See KVM_GET_CLOCK: raw ``struct kvm_clock_data``."""
        return as_bytes(get_struct(self.fd, "KVM_GET_CLOCK", "struct kvm_clock_data"))

    def set_clock(self, data: bytes) -> None:
        """See KVM_SET_CLOCK."""
        set_struct(self.fd, "KVM_SET_CLOCK", "struct kvm_clock_data", data)


class X86Vcpu:
    """vCPU-fd ioctls of x86 KVM: every register set, MSRs, CPUID, LAPIC, events, TSC."""

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
