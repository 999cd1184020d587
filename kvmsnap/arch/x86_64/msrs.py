"""Names of the architectural and common KVM model-specific registers, by index."""

MSR_NAMES = {
    0x00000010: "IA32_TSC",
    0x0000001B: "IA32_APIC_BASE",
    0x0000003A: "IA32_FEATURE_CONTROL",
    0x0000003B: "IA32_TSC_ADJUST",
    0x00000048: "IA32_SPEC_CTRL",
    0x00000049: "IA32_PRED_CMD",
    0x0000008B: "IA32_BIOS_SIGN_ID",
    0x0000010A: "IA32_ARCH_CAPABILITIES",
    0x0000010B: "IA32_FLUSH_CMD",
    0x00000011: "KVM_WALL_CLOCK (old)",
    0x00000012: "KVM_SYSTEM_TIME (old)",
    0x00000034: "MSR_SMI_COUNT",
    0x000000CE: "MSR_PLATFORM_INFO",
    0x00000140: "MSR_MISC_FEATURES_ENABLES",
    0x00000174: "IA32_SYSENTER_CS",
    0x00000175: "IA32_SYSENTER_ESP",
    0x00000176: "IA32_SYSENTER_EIP",
    0x00000179: "IA32_MCG_CAP",
    0x0000017A: "IA32_MCG_STATUS",
    0x0000017B: "IA32_MCG_CTL",
    0x000001A0: "IA32_MISC_ENABLE",
    0x000001D9: "IA32_DEBUGCTL",
    0x000001DB: "LASTBRANCHFROMIP",
    0x000001DC: "LASTBRANCHTOIP",
    0x000001DD: "LASTINTFROMIP",
    0x000001DE: "LASTINTTOIP",
    0x000001FC: "MSR_POWER_CTL",
    0x00000277: "IA32_PAT",
    0x00000345: "IA32_PERF_CAPABILITIES",
    0x000006E0: "IA32_TSC_DEADLINE",
    0x00000DA0: "IA32_XSS",
    0xC0000080: "IA32_EFER",
    0xC0000081: "STAR",
    0xC0000082: "LSTAR",
    0xC0000083: "CSTAR",
    0xC0000084: "SYSCALL_MASK (FMASK)",
    0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE",
    0xC0000102: "KERNEL_GS_BASE",
    0xC0000103: "TSC_AUX",
    0xC0010015: "AMD64_HWCR",
    0xC0010117: "VM_HSAVE_PA",
    0xC001011F: "AMD64_DE_CFG",
    0x4B564D00: "KVM_WALL_CLOCK_NEW",
    0x4B564D01: "KVM_SYSTEM_TIME_NEW",
    0x4B564D02: "KVM_ASYNC_PF_EN",
    0x4B564D03: "KVM_STEAL_TIME",
    0x4B564D04: "KVM_PV_EOI_EN",
    0x4B564D05: "KVM_POLL_CONTROL",
    0x4B564D06: "KVM_ASYNC_PF_INT",
    0x4B564D07: "KVM_ASYNC_PF_ACK",
    0x4B564D08: "KVM_MIGRATION_CONTROL",
}
for _i in range(8):
    MSR_NAMES[0x200 + 2 * _i] = f"IA32_MTRR_PHYSBASE{_i}"
    MSR_NAMES[0x201 + 2 * _i] = f"IA32_MTRR_PHYSMASK{_i}"
MSR_NAMES.update({0x250: "IA32_MTRR_FIX64K_00000", 0x258: "IA32_MTRR_FIX16K_80000", 0x259: "IA32_MTRR_FIX16K_A0000",
                  0x2FF: "IA32_MTRR_DEF_TYPE", 0xFE: "IA32_MTRRCAP"})
for _i in range(8):
    MSR_NAMES[0x268 + _i] = f"IA32_MTRR_FIX4K_{0xC0000 + _i * 0x8000:05X}"
del _i


def msr_name(index: int) -> str:
    """The MSR's name, or ``unknown`` for an index not in the table."""
    return MSR_NAMES.get(index, "unknown")

MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_KERNEL_GS_BASE = 0xC0000102
#: MSRs whose value moves on by itself between setting and reading back (compared as "not less").
VOLATILE_MSRS = {MSR_IA32_TSC}


def restore_order(msrs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``msrs`` in the order KVM_SET_MSRS needs: IA32_TSC first and IA32_TSC_DEADLINE last, so
    the deadline is relative to the restored TSC."""
    return sorted(msrs, key=lambda e: (e[0] == MSR_IA32_TSC_DEADLINE, e[0] != MSR_IA32_TSC))
