"""cffi build script: compiles ``kvmsnap.kvm._kvm`` against the system's ``<linux/kvm.h>``.

Every ioctl number and struct layout comes from the kernel header at build time; the
declarations below name fields, and cffi checks each one against the compiler's layout.
Only the host architecture's declarations are compiled: the common part, plus one entry of
``ARCHES`` chosen by ``platform.machine()``.
"""
import os
import platform
import shutil
import sys

from cffi import FFI

HEADER = "/usr/include/linux/kvm.h"

# Constants resolved by the C compiler (``...`` = value taken from the header).
COMMON_CONSTANTS = """
KVM_API_VERSION KVM_GET_API_VERSION KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE
KVM_SET_USER_MEMORY_REGION KVM_CREATE_IRQCHIP KVM_IRQ_LINE KVM_CREATE_VCPU KVM_RUN KVM_GET_MP_STATE
KVM_SET_MP_STATE KVM_GET_DIRTY_LOG KVM_ENABLE_CAP
KVM_CAP_IRQCHIP KVM_CAP_IMMEDIATE_EXIT KVM_CAP_XSAVE2
KVM_CAP_SREGS2 KVM_CAP_VCPU_EVENTS KVM_CAP_MP_STATE KVM_CAP_ADJUST_CLOCK
KVM_CAP_TSC_CONTROL KVM_CAP_GET_TSC_KHZ KVM_CAP_NR_VCPUS KVM_CAP_MAX_VCPUS KVM_CAP_NR_MEMSLOTS
KVM_CAP_USER_MEMORY KVM_CAP_SET_TSS_ADDR KVM_CAP_SET_IDENTITY_MAP_ADDR KVM_CAP_EXT_CPUID
KVM_CAP_GET_MSR_FEATURES KVM_CAP_KVMCLOCK_CTRL KVM_CAP_INTERNAL_ERROR_DATA
KVM_CAP_IOAPIC_POLARITY_IGNORED KVM_CAP_TSC_DEADLINE_TIMER KVM_CAP_X86_ROBUST_SINGLESTEP
KVM_CAP_EXIT_ON_EMULATION_FAILURE
MADV_POPULATE_WRITE MADV_COLLAPSE MAP_NORESERVE MAP_FIXED MAP_PRIVATE MAP_ANONYMOUS PROT_READ PROT_WRITE
KVM_EXIT_UNKNOWN KVM_EXIT_EXCEPTION KVM_EXIT_IO KVM_EXIT_HYPERCALL KVM_EXIT_DEBUG KVM_EXIT_HLT
KVM_EXIT_MMIO KVM_EXIT_IRQ_WINDOW_OPEN KVM_EXIT_SHUTDOWN KVM_EXIT_FAIL_ENTRY KVM_EXIT_INTR
KVM_EXIT_SET_TPR KVM_EXIT_TPR_ACCESS KVM_EXIT_NMI KVM_EXIT_INTERNAL_ERROR KVM_EXIT_SYSTEM_EVENT
KVM_EXIT_IOAPIC_EOI KVM_EXIT_X86_RDMSR KVM_EXIT_X86_WRMSR KVM_EXIT_X86_BUS_LOCK KVM_EXIT_NOTIFY
KVM_EXIT_IO_IN KVM_EXIT_IO_OUT
KVM_INTERNAL_ERROR_EMULATION KVM_INTERNAL_ERROR_SIMUL_EX KVM_INTERNAL_ERROR_DELIVERY_EV
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
KVM_SYSTEM_EVENT_SHUTDOWN KVM_SYSTEM_EVENT_RESET KVM_SYSTEM_EVENT_CRASH
KVM_MP_STATE_RUNNABLE KVM_MP_STATE_UNINITIALIZED KVM_MP_STATE_INIT_RECEIVED KVM_MP_STATE_HALTED
KVM_MP_STATE_SIPI_RECEIVED KVM_MEM_LOG_DIRTY_PAGES
"""

COMMON_CDEF = r"""
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef unsigned long long __u64;
typedef long long __s64; typedef int32_t __s32;

struct kvm_mp_state { __u32 mp_state; };
struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr;
};
struct kvm_irq_level { __u32 irq; __u32 level; };
struct kvm_dirty_log { __u32 slot; __u32 padding1; void *dirty_bitmap; };
struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4]; __u8 pad[64]; };
struct kvm_run {
    __u8 request_interrupt_window; __u8 immediate_exit;
    __u32 exit_reason; __u8 ready_for_interrupt_injection; __u8 if_flag; __u16 flags;
    __u64 cr8; __u64 apic_base;
    union {
        struct { __u64 hardware_exit_reason; } hw;
        struct { __u64 hardware_entry_failure_reason; __u32 cpu; } fail_entry;
        struct { __u32 exception; __u32 error_code; } ex;
        struct { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; } io;
        struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; } mmio;
        struct { __u32 suberror; __u32 ndata; __u64 data[16]; } internal;
        struct { __u32 suberror; __u32 ndata; __u64 flags; __u8 insn_size; __u8 insn_bytes[15]; }
            emulation_failure;
        struct { __u32 type; __u32 ndata; __u64 data[16]; } system_event;
        struct { __u8 error; __u8 pad[7]; __u32 reason; __u32 index; __u64 data; } msr;
        ...;
    };
    ...;
};

int kvmsnap_ioctl_ptr(int fd, unsigned long request, void *arg);
int kvmsnap_ioctl_int(int fd, unsigned long request, unsigned long arg);
int kvmsnap_install_kick_handler(int signo);
int madvise(void *addr, size_t length, int advice);   /* guest RAM: populated without the GIL */
typedef long... off_t;
void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);   /* MAP_FIXED over guest RAM */
int kvmsnap_userfaultfd(void);
int kvmsnap_uffd_register(int uffd, __u64 start, __u64 length);
int kvmsnap_uffd_fill(int uffd, int fd, const __u64 *regions, int nregions, const __u64 *runs, int nruns,
                      __u64 chunk, volatile int *stop, volatile int *started, __u64 *failed_at);
"""

#: x86's part of ``<linux/kvm.h>`` too: the capabilities it defines under __KVM_HAVE_PIT, _XSAVE, _XCRS, _DEBUGREGS
X86_64_CONSTANTS = """
KVM_CAP_PIT2 KVM_CAP_PIT_STATE2 KVM_CAP_XSAVE KVM_CAP_XCRS KVM_CAP_DEBUGREGS
KVM_GET_MSR_INDEX_LIST KVM_GET_MSR_FEATURE_INDEX_LIST KVM_GET_SUPPORTED_CPUID KVM_GET_MSRS KVM_SET_MSRS
KVM_SET_TSS_ADDR KVM_SET_IDENTITY_MAP_ADDR KVM_GET_IRQCHIP KVM_SET_IRQCHIP KVM_CREATE_PIT2 KVM_GET_PIT2
KVM_SET_PIT2 KVM_GET_CLOCK KVM_SET_CLOCK KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS KVM_SET_SREGS
KVM_GET_SREGS2 KVM_SET_SREGS2 KVM_GET_FPU KVM_SET_FPU KVM_GET_XSAVE KVM_GET_XSAVE2 KVM_SET_XSAVE
KVM_GET_XCRS KVM_SET_XCRS KVM_GET_LAPIC KVM_SET_LAPIC KVM_GET_VCPU_EVENTS KVM_SET_VCPU_EVENTS
KVM_GET_DEBUGREGS KVM_SET_DEBUGREGS KVM_SET_CPUID2 KVM_GET_CPUID2 KVM_GET_TSC_KHZ KVM_SET_TSC_KHZ
KVM_KVMCLOCK_CTRL
KVM_IRQCHIP_PIC_MASTER KVM_IRQCHIP_PIC_SLAVE KVM_IRQCHIP_IOAPIC KVM_IOAPIC_NUM_PINS
KVM_PIT_SPEAKER_DUMMY KVM_APIC_REG_SIZE KVM_MAX_XCRS KVM_NR_INTERRUPTS
KVM_CPUID_FLAG_SIGNIFCANT_INDEX KVM_SREGS2_FLAGS_PDPTRS_VALID
KVM_VCPUEVENT_VALID_NMI_PENDING KVM_VCPUEVENT_VALID_SIPI_VECTOR KVM_VCPUEVENT_VALID_SHADOW
KVM_VCPUEVENT_VALID_SMM KVM_VCPUEVENT_VALID_PAYLOAD KVM_VCPUEVENT_VALID_TRIPLE_FAULT
KVM_CLOCK_TSC_STABLE KVM_CLOCK_REALTIME KVM_CLOCK_HOST_TSC
KVM_CAP_X86_USER_SPACE_MSR KVM_CAP_X86_MSR_FILTER KVM_X86_SET_MSR_FILTER KVM_MSR_EXIT_REASON_FILTER
KVM_MSR_FILTER_READ KVM_MSR_FILTER_WRITE KVM_MSR_FILTER_DEFAULT_ALLOW KVM_MSR_FILTER_MAX_RANGES
"""

X86_64_CDEF = r"""
struct kvm_regs {
    __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11, r12, r13, r14, r15;
    __u64 rip, rflags;
};
struct kvm_segment {
    __u64 base; __u32 limit; __u16 selector; __u8 type;
    __u8 present, dpl, db, s, l, g, avl; __u8 unusable; __u8 padding;
};
struct kvm_dtable { __u64 base; __u16 limit; __u16 padding[3]; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    __u64 interrupt_bitmap[4];
};
struct kvm_sregs2 {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base, flags;
    __u64 pdptrs[4];
};
struct kvm_fpu {
    __u8 fpr[8][16]; __u16 fcw; __u16 fsw; __u8 ftwx; __u8 pad1; __u16 last_opcode;
    __u64 last_ip; __u64 last_dp; __u8 xmm[16][16]; __u32 mxcsr; __u32 pad2;
};
struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };
struct kvm_msrs { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[]; };
struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; };
struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags; __u32 eax; __u32 ebx; __u32 ecx; __u32 edx;
    __u32 padding[3];
};
struct kvm_cpuid2 { __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_lapic_state { char regs[1024]; };
struct kvm_xsave { __u32 region[1024]; __u32 extra[]; };
struct kvm_xcr { __u32 xcr; __u32 reserved; __u64 value; };
struct kvm_xcrs { __u32 nr_xcrs; __u32 flags; struct kvm_xcr xcrs[16]; __u64 padding[16]; };
struct kvm_debugregs { __u64 db[4]; __u64 dr6; __u64 dr7; __u64 flags; __u64 reserved[9]; };
struct kvm_vcpu_events {
    struct { __u8 injected; __u8 nr; __u8 has_error_code; __u8 pending; __u32 error_code; } exception;
    struct { __u8 injected; __u8 nr; __u8 soft; __u8 shadow; } interrupt;
    struct { __u8 injected; __u8 pending; __u8 masked; __u8 pad; } nmi;
    __u32 sipi_vector; __u32 flags;
    struct { __u8 smm; __u8 pending; __u8 smm_inside_nmi; __u8 latched_init; } smi;
    struct { __u8 pending; } triple_fault;
    __u8 reserved[26]; __u8 exception_has_payload; __u64 exception_payload;
};
struct kvm_irqchip { __u32 chip_id; __u32 pad; union { char dummy[512]; __u64 _align; } chip; };
struct kvm_pit_config { __u32 flags; __u32 pad[15]; };
struct kvm_pit_channel_state {
    __u32 count; __u16 latched_count; __u8 count_latched; __u8 status_latched; __u8 status;
    __u8 read_state; __u8 write_state; __u8 write_latch; __u8 rw_mode; __u8 mode; __u8 bcd;
    __u8 gate; __s64 count_load_time;
};
struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3]; __u32 flags; __u32 reserved[9]; };
struct kvm_msr_filter_range { __u32 flags; __u32 nmsrs; __u32 base; __u8 *bitmap; };
struct kvm_msr_filter { __u32 flags; struct kvm_msr_filter_range ranges[16]; };
struct kvm_clock_data {
    __u64 clock; __u32 flags; __u32 pad0; __u64 realtime; __u64 host_tsc; __u32 pad[4];
};
int kvmsnap_cmpxchg16b(void *at, __u64 *expected, const __u64 *desired);
"""

AARCH64_CONSTANTS = """
KVM_ARM_PREFERRED_TARGET KVM_ARM_VCPU_INIT KVM_ARM_VCPU_FINALIZE KVM_GET_REG_LIST KVM_GET_ONE_REG
KVM_SET_ONE_REG KVM_CREATE_DEVICE KVM_SET_DEVICE_ATTR KVM_GET_DEVICE_ATTR KVM_HAS_DEVICE_ATTR
KVM_GET_VCPU_EVENTS KVM_SET_VCPU_EVENTS
KVM_CAP_ARM_PSCI KVM_CAP_ARM_PSCI_0_2 KVM_CAP_ARM_PMU_V3 KVM_CAP_ARM_SVE KVM_CAP_ARM_VM_IPA_SIZE
KVM_CAP_ARM_PTRAUTH_ADDRESS KVM_CAP_ARM_PTRAUTH_GENERIC KVM_CAP_ARM_EL1_32BIT KVM_CAP_ONE_REG
KVM_CAP_DEVICE_CTRL KVM_CAP_ARM_INJECT_SERROR_ESR KVM_CAP_ARM_IRQ_LINE_LAYOUT_2
KVM_VM_TYPE_ARM_IPA_SIZE_MASK
KVM_ARM_VCPU_POWER_OFF KVM_ARM_VCPU_EL1_32BIT KVM_ARM_VCPU_PSCI_0_2 KVM_ARM_VCPU_PMU_V3 KVM_ARM_VCPU_SVE
KVM_ARM_VCPU_PTRAUTH_ADDRESS KVM_ARM_VCPU_PTRAUTH_GENERIC
KVM_REG_ARCH_MASK KVM_REG_ARM64 KVM_REG_SIZE_MASK KVM_REG_SIZE_SHIFT KVM_REG_SIZE_U32 KVM_REG_SIZE_U64
KVM_REG_SIZE_U128 KVM_REG_SIZE_U2048 KVM_REG_ARM_COPROC_MASK
KVM_REG_ARM_COPROC_SHIFT KVM_REG_ARM_CORE KVM_REG_ARM_DEMUX KVM_REG_ARM64_SYSREG KVM_REG_ARM_FW
KVM_REG_ARM64_SVE KVM_REG_ARM64_SVE_VLS KVM_REG_ARM_PSCI_VERSION
KVM_REG_ARM_TIMER_CTL KVM_REG_ARM_TIMER_CNT KVM_REG_ARM_TIMER_CVAL KVM_REG_ARM_PTIMER_CNT
KVM_DEV_TYPE_ARM_VGIC_V2 KVM_DEV_TYPE_ARM_VGIC_V3 KVM_DEV_TYPE_ARM_VGIC_ITS
KVM_DEV_ARM_VGIC_GRP_ADDR KVM_DEV_ARM_VGIC_GRP_DIST_REGS KVM_DEV_ARM_VGIC_GRP_CPU_REGS
KVM_DEV_ARM_VGIC_GRP_NR_IRQS KVM_DEV_ARM_VGIC_GRP_CTRL KVM_DEV_ARM_VGIC_GRP_REDIST_REGS
KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO KVM_DEV_ARM_VGIC_CTRL_INIT
KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT KVM_DEV_ARM_VGIC_CPUID_SHIFT
VGIC_LEVEL_INFO_LINE_LEVEL KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT
KVM_VGIC_V2_ADDR_TYPE_DIST KVM_VGIC_V2_ADDR_TYPE_CPU KVM_VGIC_V3_ADDR_TYPE_DIST KVM_VGIC_V3_ADDR_TYPE_REDIST
KVM_VGIC_V2_DIST_SIZE KVM_VGIC_V2_CPU_SIZE KVM_CREATE_DEVICE_TEST
KVM_ARM_VCPU_PMU_V3_CTRL KVM_ARM_VCPU_PMU_V3_IRQ KVM_ARM_VCPU_PMU_V3_INIT KVM_ARM_VCPU_TIMER_CTRL
KVM_ARM_VCPU_TIMER_IRQ_VTIMER KVM_ARM_VCPU_TIMER_IRQ_PTIMER
KVM_ARM_IRQ_TYPE_SHIFT KVM_ARM_IRQ_TYPE_SPI KVM_ARM_IRQ_TYPE_PPI KVM_ARM_IRQ_VCPU_SHIFT
KVM_EXIT_ARM_NISV KVM_CAP_COUNTER_OFFSET KVM_ARM_SET_COUNTER_OFFSET
"""

AARCH64_CDEF = r"""
struct user_pt_regs { __u64 regs[31]; __u64 sp; __u64 pc; __u64 pstate; };
struct user_fpsimd_state { ...; __u32 fpsr; __u32 fpcr; };   /* first: __uint128_t vregs[32] */
struct kvm_regs {
    struct user_pt_regs regs; __u64 sp_el1; __u64 elr_el1; __u64 spsr[5]; struct user_fpsimd_state fp_regs;
};
struct kvm_vcpu_init { __u32 target; __u32 features[7]; };
struct kvm_one_reg { __u64 id; __u64 addr; };
struct kvm_reg_list { __u64 n; __u64 reg[]; };
struct kvm_device_attr { __u32 flags; __u32 group; __u64 attr; __u64 addr; };
struct kvm_create_device { __u32 type; __u32 fd; __u32 flags; };
struct kvm_vcpu_events {
    struct { __u8 serror_pending; __u8 serror_has_esr; __u8 ext_dabt_pending; __u8 pad[5]; __u64 serror_esr; }
        exception;
    __u32 reserved[12];
};
struct kvm_arm_counter_offset { __u64 counter_offset; __u64 reserved; };
"""

#: What an older ``<linux/kvm.h>`` may lack (KVM_ARM_SET_COUNTER_OFFSET came with Linux 6.4): 0
#: there, which no ioctl, capability or exit reason is; the callers check for it.
AARCH64_SOURCE = r"""
#ifndef KVM_CAP_COUNTER_OFFSET
#define KVM_CAP_COUNTER_OFFSET 0
#define KVM_ARM_SET_COUNTER_OFFSET 0
struct kvm_arm_counter_offset { __u64 counter_offset; __u64 reserved; };
#endif
"""

#: The kernel-mode assist's atomic 16-byte compare-exchange on guest RAM (kvmsnap/arch/x86_64/assist.py):
#: ``expected`` (RAX, RDX) takes the memory's value when they differ; returns ZF.
X86_64_SOURCE = r"""
static int kvmsnap_cmpxchg16b(void *at, __u64 *expected, const __u64 *desired)
{
    unsigned char zf;
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsetz %0"
                         : "=q"(zf), "+m"(*(volatile unsigned __int128 *)at), "+a"(expected[0]), "+d"(expected[1])
                         : "b"(desired[0]), "c"(desired[1]) : "memory", "cc");
    return zf;
}
"""

#: ``platform.machine()`` → (constants, declarations, C source) of that architecture's
#: ``<asm/kvm.h>`` part.
ARCHES = {"x86_64": (X86_64_CONSTANTS, X86_64_CDEF, X86_64_SOURCE),
          "aarch64": (AARCH64_CONSTANTS, AARCH64_CDEF, AARCH64_SOURCE)}

SOURCE = r"""
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#ifndef MADV_COLLAPSE               /* glibc before 2.37: the kernel's header has it (Linux 6.1) */
#include <linux/mman.h>
#endif
#include <linux/userfaultfd.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ioctl(2) is variadic: fixed-signature wrappers keep the argument passing exact. */
static int kvmsnap_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
static int kvmsnap_ioctl_int(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }

/* Guest RAM filled from a file through a userfaultfd (kvmsnap/memory/userfault.py): see there. */
static int kvmsnap_userfaultfd(void)
{
    int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    if (fd < 0)
        return -errno;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static int kvmsnap_uffd_register(int uffd, __u64 start, __u64 length)
{
    struct uffdio_register reg = { .range = { start, length }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    return ioctl(uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

struct kvmsnap_fill {
    int uffd, fd;
    const __u64 *regions, *runs;     /* (start, length) pairs; (address, length, file offset) triples, sorted */
    int nregions, nruns;
    __u64 chunk;
    __u64 *failed_at;
    unsigned char **staging;         /* per region: where its chunks are read (at the same offsets), a
                                        mapping of its size; a chunk moved out leaves a hole the kernel
                                        may give to others */
};

/* Read [start, end) of region r's contents into its staging area: the file's bytes where a run
 * covers it, zeros elsewhere.  0 or -errno. */
static int kvmsnap_read_range(struct kvmsnap_fill *f, int r, __u64 start, __u64 end)
{
    unsigned char *stage = f->staging[r] + (start - f->regions[2 * r]);
    int lo = 0, hi = f->nruns;
    while (lo < hi) {                           /* the first run that ends after start */
        int mid = (lo + hi) / 2;
        if (f->runs[3 * mid] + f->runs[3 * mid + 1] <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    memset(stage, 0, end - start);
    for (int i = lo; i < f->nruns && f->runs[3 * i] < end; i++) {
        __u64 a = f->runs[3 * i], b = a + f->runs[3 * i + 1], offset = f->runs[3 * i + 2];
        if (b <= start)
            continue;
        a = a > start ? a : start;
        b = b < end ? b : end;
        for (__u64 done = 0; done < b - a;) {
            ssize_t n = pread(f->fd, stage + (a - start) + done, b - a - done, offset + (a - f->runs[3 * i]) + done);
            if (n <= 0) {
                *f->failed_at = offset + (a - f->runs[3 * i]) + done;
                return n < 0 ? -errno : -EIO;
            }
            done += n;
        }
    }
    return 0;
}

/* Copy [start, end) in from src with UFFDIO_COPY (4 KiB pages).  0 or -errno. */
static int kvmsnap_copy_range(struct kvmsnap_fill *f, __u64 start, __u64 end, const unsigned char *src)
{
    int retries = 0;
    for (__u64 at = start; at < end;) {
        struct uffdio_copy copy = { .dst = at, .src = (__u64)(uintptr_t)(src + (at - start)), .len = end - at };
        if (ioctl(f->uffd, UFFDIO_COPY, &copy) == 0)
            break;
        if (errno == EEXIST)                    /* already there: the next page */
            at += 4096;
        else if (errno == EAGAIN && copy.copy > 0)      /* part copied */
            at += (__u64)copy.copy;
        else if (errno == EAGAIN && ++retries < 1000)   /* the address space was changing */
            continue;
        else
            return -errno;
    }
    return 0;
}

/* Chunk i of region r: [*start, *end), chunks aligned on multiples of their size (a whole one is
 * a transparent huge page, when the size is 2 MiB). */
static void kvmsnap_chunk(const struct kvmsnap_fill *f, int r, __u64 i, __u64 *start, __u64 *end)
{
    __u64 base = f->regions[2 * r], top = base + f->regions[2 * r + 1], at = base / f->chunk * f->chunk + i * f->chunk;
    *start = at > base ? at : base;
    *end = at + f->chunk < top ? at + f->chunk : top;
}

enum { TO_COPY, NO_DATA, COPIED, MOVED };   /* what became of a chunk */

/* Chunk i of region r in: read into its staging area (a huge page where the host gives them), then
 * moved into place whole (mremap: the page tables move, nothing is copied) and its waiters woken;
 * a part chunk, or where the move fails, copied with UFFDIO_COPY and made one huge page again
 * (MADV_COLLAPSE, Linux 6.1; elsewhere it stays in 4 KiB pages).  MOVED, COPIED or -errno. */
static int kvmsnap_fill_chunk(struct kvmsnap_fill *f, int r, __u64 i)
{
    __u64 start, end;
    unsigned char *stage;
    int rc;
    kvmsnap_chunk(f, r, i, &start, &end);
    stage = f->staging[r] + (start - f->regions[2 * r]);
    if ((rc = kvmsnap_read_range(f, r, start, end)) != 0)
        return rc;
    if (end - start == f->chunk &&
            mremap(stage, f->chunk, f->chunk, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(uintptr_t)start) != MAP_FAILED) {
        struct uffdio_range range = { start, f->chunk };
        ioctl(f->uffd, UFFDIO_WAKE, &range);
        return MOVED;
    }
    rc = kvmsnap_copy_range(f, start, end, stage);
    madvise(stage, end - start, MADV_DONTNEED);
    if (rc == 0 && end - start == f->chunk)
        madvise((void *)(uintptr_t)start, f->chunk, MADV_COLLAPSE);
    return rc < 0 ? rc : COPIED;
}

/* The regions no longer reported to uffd: what was never filled becomes fresh anonymous memory. */
static void kvmsnap_uffd_unregister(int uffd, const __u64 *regions, int nregions)
{
    for (int r = 0; r < nregions; r++) {
        struct uffdio_range range = { regions[2 * r], regions[2 * r + 1] };
        ioctl(uffd, UFFDIO_UNREGISTER, &range);
    }
}

/* Fill every chunk of the regions that holds file data, serving the faults userfaultfd reports
 * first (the faulting chunk, data or zeros), then unregister the regions: the rest is fresh
 * anonymous memory.  Sets *started on entry; stops early when *stop is set.  0, or -errno
 * (*failed_at: the file offset of a failed read); the regions are unregistered either way. */
static int kvmsnap_uffd_fill(int uffd, int fd, const __u64 *regions, int nregions, const __u64 *runs, int nruns,
                             __u64 chunk, volatile int *stop, volatile int *started, __u64 *failed_at)
{
    struct kvmsnap_fill f = { uffd, fd, regions, runs, nregions, nruns, chunk, failed_at,
                              calloc(nregions, sizeof(*f.staging)) };
    __u64 total = 0, *first = calloc(nregions + 1, sizeof(__u64));
    unsigned char *state = NULL;             /* per chunk: TO_COPY, NO_DATA, COPIED or MOVED */
    int rc = 0;
    *started = 1;
    for (int r = 0; first && f.staging && r < nregions; r++) {
        /* one mapping per region (the pieces moved out of it can merge again), congruent with it
         * modulo the chunk size (so that huge pages line up) */
        unsigned char *raw = mmap(NULL, regions[2 * r + 1] + chunk, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (raw == MAP_FAILED) {
            rc = -errno;
            goto out;
        }
        f.staging[r] = raw + (regions[2 * r] - (__u64)(uintptr_t)raw) % chunk;
        munmap(raw, f.staging[r] - raw);   /* exactly the region's size is kept */
        munmap(f.staging[r] + regions[2 * r + 1], raw + chunk - f.staging[r]);
        madvise(f.staging[r], regions[2 * r + 1], MADV_HUGEPAGE);
        first[r] = total;
        total += (regions[2 * r] + regions[2 * r + 1] - 1) / chunk - regions[2 * r] / chunk + 1;
    }
    state = calloc(total ? total : 1, 1);
    if (!first || !state || !f.staging) {
        rc = -ENOMEM;
        goto out;
    }
    first[nregions] = total;
    memset(state, NO_DATA, total);
    for (int i = 0; i < nruns; i++)
        for (int r = 0; r < nregions; r++) {
            __u64 base = regions[2 * r], top = base + regions[2 * r + 1], a = runs[3 * i], b = a + runs[3 * i + 1];
            a = a > base ? a : base;
            b = b < top ? b : top;
            if (a < b)
                memset(state + first[r] + a / chunk - base / chunk, TO_COPY, (b - 1) / chunk - a / chunk + 1);
        }
    for (__u64 next = 0; !*stop && rc >= 0;) {
        struct uffd_msg msgs[16];
        ssize_t n = read(uffd, msgs, sizeof(msgs));
        if (n < 0 && errno != EAGAIN) {
            rc = -errno;
            break;
        }
        for (int m = 0; m < n / (ssize_t)sizeof(msgs[0]) && rc >= 0; m++) {
            __u64 address = msgs[m].arg.pagefault.address & ~(__u64)4095;
            for (int r = 0; r < nregions && msgs[m].event == UFFD_EVENT_PAGEFAULT; r++) {
                __u64 base = regions[2 * r], i = address / chunk - base / chunk;
                if (address < base || address >= base + regions[2 * r + 1])
                    continue;
                if (state[first[r] + i] < COPIED) {
                    rc = kvmsnap_fill_chunk(&f, r, i);
                    state[first[r] + i] = rc < 0 ? COPIED : rc;
                } else {                         /* copied since the fault: wake who waits */
                    struct uffdio_range range = { address, 4096 };
                    ioctl(uffd, UFFDIO_WAKE, &range);
                }
            }
        }
        while (next < total && state[next])
            next++;
        if (next == total || rc < 0)
            break;
        for (int r = 0; r < nregions; r++)
            if (next < first[r + 1]) {
                rc = kvmsnap_fill_chunk(&f, r, next - first[r]);
                state[next] = rc < 0 ? COPIED : rc;
                break;
            }
    }
out:
    kvmsnap_uffd_unregister(uffd, regions, nregions);
    for (int r = 0; f.staging && r < nregions; r++) {  /* staging, but for the chunks moved out */
        if (f.staging[r] && !state)
            munmap(f.staging[r], regions[2 * r + 1]);
        for (__u64 i = 0; f.staging[r] && state && i < first[r + 1] - first[r]; i++)
            if (state[first[r] + i] != MOVED) {
                __u64 start, end;
                kvmsnap_chunk(&f, r, i, &start, &end);
                munmap(f.staging[r] + (start - regions[2 * r]), end - start);
            }
    }
    free(first);
    free(state);
    free(f.staging);
    return rc < 0 ? rc : 0;
}

/* A do-nothing handler without SA_RESTART: the signal only makes KVM_RUN return EINTR. */
static void kvmsnap_kick(int signo) { (void)signo; }
static int kvmsnap_install_kick_handler(int signo)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kvmsnap_kick;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL);
}
"""


def missing() -> str | None:
    """Why the module cannot be built here, in one line naming what to install; None when it can."""
    if os.environ.get("KVMSNAP_OFFLINE") == "1":
        return "KVMSNAP_OFFLINE=1 is set"
    if platform.machine() not in ARCHES:
        return f"no KVM declarations for {platform.machine()} yet"
    if not os.path.exists(HEADER):
        return f"{HEADER} not found: install the Debian package linux-libc-dev"
    if not (shutil.which(os.environ.get("CC", "cc").split()[0]) or shutil.which("gcc")):
        return "no C compiler found: install the Debian package gcc"
    return None


def ffibuilder() -> FFI:
    """The cffi builder for this host's architecture (``cffi_modules`` calls it)."""
    constants, cdef, source = ARCHES[platform.machine()]
    builder = FFI()
    builder.cdef("\n".join(f"#define {name} ..." for name in (COMMON_CONSTANTS + constants).split())
                 + COMMON_CDEF + cdef)
    builder.set_source("kvmsnap.kvm._kvm", SOURCE + source)
    return builder


def _inputs_digest() -> str:
    """SHA-256 of what the module is built from: this file, <linux/kvm.h> and this machine's
    <asm/kvm.h> (a lab with a newer kernel's headers shares the tree, with older file times)."""
    import hashlib
    import sysconfig
    asm = os.path.join("/usr/include", sysconfig.get_config_var("MULTIARCH") or "", "asm", "kvm.h")
    digest = hashlib.sha256()
    for path in (__file__, HEADER, asm):
        if os.path.exists(path):
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def build_in_tree() -> str:
    """Compile in a temporary directory and put the module beside this file under this
    interpreter's own extension suffix (``_kvm.cpython-311-aarch64-linux-gnu.so``), which Python
    tries before ``.abi3.so``: builds for several architectures share one tree (the arm64 lab
    shares the host's). Skipped while the module was built from the same inputs (the digest in
    ``<module>.inputs``)."""
    import importlib.machinery
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.path.join(here, "_kvm" + importlib.machinery.EXTENSION_SUFFIXES[0])
    digest, stamp = _inputs_digest(), target + ".inputs"
    if os.path.exists(target) and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == digest:
                return target
    with tempfile.TemporaryDirectory() as tmp:
        built = ffibuilder().compile(tmpdir=tmp, verbose=False)
        shutil.copy(built, target + ".tmp")
        os.replace(target + ".tmp", target)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return target


if __name__ == "__main__":
    if reason := missing():
        sys.exit(f"kvmsnap: cannot build kvmsnap.kvm._kvm: {reason}")
    print(build_in_tree())
