"""The KVM layer on real /dev/kvm: capabilities, state round trips, and errors carrying the errno."""
import errno
import inspect

import pytest

from conftest import needs_kvm
from kvmsnap.kvm import Cap, Kvm, KvmError, MsrError, Vcpu, Vm, ffi, lib, max_vcpus, xsave2_size

pytestmark = needs_kvm


@pytest.fixture
def vcpu():
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    cpu = vm.create_vcpu(0)
    cpu.set_cpuid2(kvm.get_supported_cpuid())
    yield cpu
    cpu.close()
    vm.close()
    kvm.close()


def test_system_queries():
    kvm = Kvm()
    assert kvm.get_api_version() == 12
    assert kvm.check_extension(lib.KVM_CAP_IRQCHIP)
    msrs = kvm.get_msr_index_list()
    assert 0x10 in msrs and 0xC0000081 in msrs          # TSC and STAR are always listed
    cpuid = kvm.get_supported_cpuid()
    assert len(cpuid) % ffi.sizeof("struct kvm_cpuid_entry2") == 0 and len(cpuid) > 0
    assert kvm.get_vcpu_mmap_size() >= ffi.sizeof("struct kvm_run")
    features = kvm.get_msr_feature_index_list()
    assert features and all(index == i for (index, _), i in zip(kvm.get_msrs(features), features))
    kvm.close()


def test_register_round_trips(vcpu):
    regs = ffi.new("struct kvm_regs *")
    regs.rax, regs.rip, regs.rflags = 0x1122334455667788, 0x7C00, 0x2
    vcpu.set_regs(bytes(ffi.buffer(regs)))
    assert vcpu.get_regs() == bytes(ffi.buffer(regs))
    for get, put in [(vcpu.get_sregs2, vcpu.set_sregs2), (vcpu.get_lapic, vcpu.set_lapic),
                     (vcpu.get_vcpu_events, vcpu.set_vcpu_events), (vcpu.get_debugregs, vcpu.set_debugregs),
                     (vcpu.get_xcrs, vcpu.set_xcrs), (vcpu.get_fpu, vcpu.set_fpu)]:
        before = get()
        put(before)
        assert get() == before, get.__name__
    xsave = vcpu.get_xsave2(4096)
    vcpu.set_xsave(xsave)
    assert vcpu.get_xsave2(4096) == xsave == vcpu.get_xsave()     # the legacy ioctl gives the same 4 KiB
    vcpu.set_msrs([(0xC0000102, 0xDEAD0000)])      # KERNEL_GS_BASE
    assert vcpu.get_msrs([0xC0000102]) == [(0xC0000102, 0xDEAD0000)]
    assert vcpu.get_mp_state() == lib.KVM_MP_STATE_RUNNABLE
    assert vcpu.get_tsc_khz() > 0
    assert len(vcpu.get_cpuid2()) > 0


def test_partial_set_msrs_names_first_refused(vcpu):
    with pytest.raises(MsrError) as e:
        vcpu.set_msrs([(0xC0000102, 1), (0xDEADBEEF, 0), (0xC0000102, 2)])
    assert e.value.index == 0xDEADBEEF and e.value.done == 1
    assert "0xdeadbeef" in str(e.value) and "KVM_SET_MSRS" in str(e.value)


def test_vm_wide_state():
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)
    for chip in (lib.KVM_IRQCHIP_PIC_MASTER, lib.KVM_IRQCHIP_PIC_SLAVE, lib.KVM_IRQCHIP_IOAPIC):
        data = vm.get_irqchip(chip)
        vm.set_irqchip(data)
        assert vm.get_irqchip(chip) == data
    pit = vm.get_pit2()
    vm.set_pit2(pit)
    assert len(vm.get_clock()) == ffi.sizeof("struct kvm_clock_data")
    vm.close()
    kvm.close()


def _wrappers(cls):
    skip = {"close"}
    return [(name, fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name not in skip]


def _dummy_args(fn):
    args = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.default is not inspect.Parameter.empty:
            break
        ann = str(p.annotation)
        args.append(b"\0" * 4096 if "bytes" in ann else [(0x10, 0)] if "tuple" in ann else [0x10] if "list" in ann
                    else 1)
    return args


@pytest.mark.parametrize("cls", [Kvm, Vm, Vcpu])
def test_bad_fd_sweep(cls):
    """Every ioctl wrapper on a closed fd raises KvmError(EBADF) naming its ioctl."""
    obj = cls.__new__(cls)
    obj.fd = 9999
    obj.kvm = Kvm()
    checked = 0
    for name, fn in _wrappers(cls):
        with pytest.raises(KvmError) as e:
            fn(obj, *_dummy_args(fn))
        assert e.value.errno == errno.EBADF, name
        assert e.value.ioctl.startswith("KVM_"), name
        checked += 1
    assert checked >= {Kvm: 7, Vm: 14, Vcpu: 29}[cls]


def test_dirty_log_marks_the_page_a_guest_wrote():
    """A real-mode store to 0x8000 marks page 8 dirty in KVM_GET_DIRTY_LOG."""
    import mmap
    kvm = Kvm()
    vm = kvm.create_vm()
    mem = mmap.mmap(-1, 1 << 20, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = ffi.from_buffer(mem)
    vm.set_user_memory_region(0, 0, 1 << 20, int(ffi.cast("uintptr_t", view)), lib.KVM_MEM_LOG_DIRTY_PAGES)
    mem[0x7C00:0x7C07] = bytes([0xC6, 0x06, 0x00, 0x80, 0x01,    # mov byte [0x8000], 1
                                0xE6, 0x80])                     # out 0x80, al
    cpu = vm.create_vcpu(0)
    sregs = ffi.new("struct kvm_sregs *")
    ffi.memmove(sregs, cpu.get_sregs(), ffi.sizeof(sregs[0]))
    sregs.cs.base, sregs.cs.selector = 0, 0
    cpu.set_sregs(bytes(ffi.buffer(sregs)))
    regs = ffi.new("struct kvm_regs *", {"rip": 0x7C00, "rflags": 2})
    cpu.set_regs(bytes(ffi.buffer(regs)))
    vm.get_dirty_log(0, 256)                                     # clear what set-up touched
    assert cpu.run() == lib.KVM_EXIT_IO and cpu.run_area.io.port == 0x80
    bitmap = int.from_bytes(vm.get_dirty_log(0, 256), "little")
    assert bitmap >> 8 & 1 and mem[0x8000] == 1
    assert not bitmap & ~(1 << 8 | 1 << 7)                       # nothing else written (7: the code page)
    cpu.close()
    del view
    vm.close()
    kvm.close()


def test_list_ioctls_grow_their_buffer_on_e2big(monkeypatch):
    from kvmsnap.kvm import lists
    kvm = Kvm()
    full_msrs, full_cpuid = kvm.get_msr_index_list(), kvm.get_supported_cpuid()
    monkeypatch.setattr(lists, "_LIST_START", 2)          # KVM answers E2BIG until the buffer fits
    assert kvm.get_msr_index_list() == full_msrs
    assert kvm.get_supported_cpuid() == full_cpuid
    kvm.close()


def test_capability_fallbacks():
    """api.rst: no KVM_CAP_MAX_VCPUS → KVM_CAP_NR_VCPUS → 4; no KVM_CAP_XSAVE2 → the 4096-byte kvm_xsave."""
    class Fd:
        def __init__(self, **caps):
            self.caps = {Cap[name]: value for name, value in caps.items()}

        def check_extension(self, cap):
            return self.caps.get(cap, 0)

    assert Cap.IRQCHIP == lib.KVM_CAP_IRQCHIP and Cap(lib.KVM_CAP_XSAVE2) is Cap.XSAVE2
    assert [max_vcpus(Fd(MAX_VCPUS=710, NR_VCPUS=8)), max_vcpus(Fd(NR_VCPUS=8)), max_vcpus(Fd())] == [710, 8, 4]
    assert [xsave2_size(Fd(XSAVE2=11008)), xsave2_size(Fd())] == [11008, 4096]
    kvm = Kvm()
    assert max_vcpus(kvm) >= 1 and xsave2_size(kvm.create_vm()) >= 4096
    kvm.close()
