"""The arm64 ioctls, as mixins of ``Kvm``, ``Vm`` and ``Vcpu``: the IPA size, vCPU init and
finalize, the register list and ONE_REG access at every size KVM uses, vCPU events, the counter
offset, and the device-control API the vGIC and the vCPU's timer and PMU use."""
import errno
import os

from ._ioctl import ffi, lib, as_bytes, get_struct, ioctl_ptr, set_struct
from .lists import reg_list


def reg_size(reg_id: int) -> int:
    """The bytes of a ONE_REG register, from its id (KVM_REG_SIZE: 1 to 256)."""
    return 1 << ((reg_id & lib.KVM_REG_SIZE_MASK) >> lib.KVM_REG_SIZE_SHIFT)


def core_reg_id(*field, size_bits: int = 64) -> int:
    """The ONE_REG id of a ``struct kvm_regs`` field (``"regs", "pc"``; ``"regs", "regs", 3``;
    ``"fp_regs"`` with ``size_bits=128`` for v0): KVM_REG_ARM_CORE_REG of its offset."""
    size = {32: lib.KVM_REG_SIZE_U32, 64: lib.KVM_REG_SIZE_U64, 128: lib.KVM_REG_SIZE_U128}[size_bits]
    return lib.KVM_REG_ARM64 | size | lib.KVM_REG_ARM_CORE | (ffi.offsetof("struct kvm_regs", *field) // 4)


def _address(buf) -> int:
    """A cffi buffer's address, for the ``__u64 addr`` fields of kvm_device_attr and kvm_one_reg."""
    return int(ffi.cast("uintptr_t", buf))


def _device_attr(fd: int, name: str, group: int, attr: int, buf=ffi.NULL) -> None:
    ioctl_ptr(fd, name, ffi.new("struct kvm_device_attr *", {"group": group, "attr": attr, "addr": _address(buf)}))


def _one_reg(fd: int, name: str, reg_id: int, buf) -> None:
    ioctl_ptr(fd, name, ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": _address(buf)}))


class DeviceAttrs:
    """KVM_{HAS,GET,SET}_DEVICE_ATTR on this object's fd (a device, a vCPU, or the VM)."""

    def has_device_attr(self, group: int, attr: int) -> bool:
        """See KVM_HAS_DEVICE_ATTR: False where the kernel says the attribute or group is not there
        (ENXIO; EINVAL or ENOTTY from a kernel or fd without it)."""
        try:
            _device_attr(self.fd, "KVM_HAS_DEVICE_ATTR", group, attr)
            return True
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.EINVAL, errno.ENOTTY):
                return False
            raise

    def get_device_attr(self, group: int, attr: int, size: int = 8) -> bytes:
        """See KVM_GET_DEVICE_ATTR: ``size`` bytes (4 for vGIC registers, 8 for most)."""
        buf = ffi.new("char[]", size)
        _device_attr(self.fd, "KVM_GET_DEVICE_ATTR", group, attr, buf)
        return bytes(ffi.buffer(buf))

    def set_device_attr(self, group: int, attr: int, data: bytes | None = None) -> None:
        """See KVM_SET_DEVICE_ATTR; ``data`` None passes a NULL address (e.g. KVM_DEV_ARM_VGIC_CTRL_INIT)."""
        buf = ffi.NULL if data is None else ffi.from_buffer(bytearray(data))
        _device_attr(self.fd, "KVM_SET_DEVICE_ATTR", group, attr, buf)


class Device(DeviceAttrs):
    """A device made by KVM_CREATE_DEVICE (the vGIC), with its KVM_DEV_TYPE_*."""

    def __init__(self, fd: int, type_: int):
        self.fd = fd
        self.type = type_

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Arm64Kvm:
    """System-fd ioctls of KVM/arm64."""

    def ipa_size_limit(self) -> int:
        """KVM_CAP_ARM_VM_IPA_SIZE: the largest guest-physical address width (0: 40 bits only)."""
        return self.check_extension(lib.KVM_CAP_ARM_VM_IPA_SIZE)


class Arm64Vm(DeviceAttrs):
    """VM-fd ioctls of KVM/arm64."""

    def arm_preferred_target(self) -> tuple[int, list[int]]:
        """See KVM_ARM_PREFERRED_TARGET: (target, features) for KVM_ARM_VCPU_INIT."""
        init = get_struct(self.fd, "KVM_ARM_PREFERRED_TARGET", "struct kvm_vcpu_init")
        return init.target, list(init.features)

    def create_device(self, type_: int) -> Device:
        """See KVM_CREATE_DEVICE."""
        dev = ffi.new("struct kvm_create_device *", {"type": type_})
        ioctl_ptr(self.fd, "KVM_CREATE_DEVICE", dev)
        return Device(dev.fd, type_)

    def can_create_device(self, type_: int) -> bool:
        """KVM_CREATE_DEVICE with KVM_CREATE_DEVICE_TEST: whether this VM could have such a device."""
        dev = ffi.new("struct kvm_create_device *", {"type": type_, "flags": lib.KVM_CREATE_DEVICE_TEST})
        try:
            ioctl_ptr(self.fd, "KVM_CREATE_DEVICE", dev)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.EINVAL, errno.ENXIO):
                return False
            raise
        return True

    def arm_set_counter_offset(self, offset: int) -> None:
        """See KVM_ARM_SET_COUNTER_OFFSET (KVM_CAP_COUNTER_OFFSET, Linux 6.4): the VM's counter
        offset, before any vCPU runs."""
        if not lib.KVM_ARM_SET_COUNTER_OFFSET:
            raise OSError(errno.EOPNOTSUPP,
                          "KVM_ARM_SET_COUNTER_OFFSET is not in the <linux/kvm.h> kvmsnap was built with")
        ioctl_ptr(self.fd, "KVM_ARM_SET_COUNTER_OFFSET",
                  ffi.new("struct kvm_arm_counter_offset *", {"counter_offset": offset}))


class Arm64Vcpu(DeviceAttrs):
    """vCPU-fd ioctls of KVM/arm64."""

    def arm_vcpu_init(self, target: int, features: list[int]) -> None:
        """See KVM_ARM_VCPU_INIT: ``features`` are KVM_ARM_VCPU_* bit numbers, kept in
        ``init_features`` (KVM cannot be asked for them later)."""
        words = [0] * 7
        for bit in features:
            words[bit // 32] |= 1 << (bit % 32)
        ioctl_ptr(self.fd, "KVM_ARM_VCPU_INIT", ffi.new("struct kvm_vcpu_init *",
                                                        {"target": target, "features": words}))
        self.init_features = list(features)

    def arm_vcpu_finalize(self, feature: int) -> None:
        """See KVM_ARM_VCPU_FINALIZE (KVM_ARM_VCPU_SVE, after its vector lengths are set)."""
        ioctl_ptr(self.fd, "KVM_ARM_VCPU_FINALIZE", ffi.new("int *", feature))

    def get_reg_list(self) -> list[int]:
        """See KVM_GET_REG_LIST: the id of every register ONE_REG saves and restores."""
        return reg_list(self.fd)

    def get_one_reg(self, reg_id: int) -> bytes:
        """See KVM_GET_ONE_REG: the register's bytes (8 to 256, as its id says), little-endian."""
        buf = ffi.new("char[]", reg_size(reg_id))
        _one_reg(self.fd, "KVM_GET_ONE_REG", reg_id, buf)
        return bytes(ffi.buffer(buf))

    def set_one_reg(self, reg_id: int, value: bytes) -> None:
        """See KVM_SET_ONE_REG; ``value`` must have the size the id says."""
        if len(value) != reg_size(reg_id):
            raise ValueError(f"register 0x{reg_id:x} takes {reg_size(reg_id)} bytes, not {len(value)}")
        _one_reg(self.fd, "KVM_SET_ONE_REG", reg_id, ffi.from_buffer(bytearray(value)))

    def get_vcpu_events(self) -> bytes:
        """See KVM_GET_VCPU_EVENTS: raw ``struct kvm_vcpu_events`` (pending SError)."""
        return as_bytes(get_struct(self.fd, "KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events"))

    def set_vcpu_events(self, data: bytes) -> None:
        """See KVM_SET_VCPU_EVENTS."""
        set_struct(self.fd, "KVM_SET_VCPU_EVENTS", "struct kvm_vcpu_events", data)
