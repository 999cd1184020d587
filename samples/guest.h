/* Shared definitions for the long-mode sample guests (GNU as, AT&T syntax).
 * See docs/boot-protocol.md for the contract and samples/README.md for the guests. */

#define MAX_CPUS        64          /* per-vCPU stacks/TSSs; higher indexes park */
#define KSTACK_SHIFT    12          /* 4 KiB CPL0 stack per vCPU */
#define USTACK_SHIFT    13          /* 8 KiB CPL3 stack per vCPU */
#define TICK_CYCLES     (1 << 26)   /* TSC cycles per tick (~30-50 ticks/s) */
#define PVH_MAX_GIB     64          /* PVH path identity-maps at most this much */

#define SEL_KCODE       0x08
#define SEL_KDATA       0x10
#define SEL_UDATA       0x1b
#define SEL_UCODE       0x23
#define SEL_TSS0        0x28        /* vCPU i uses SEL_TSS0 + 16*i */

#define COM1            0x3f8

/* hvm_start_info (PVH, version 1) */
#define SI_MAGIC        0x336ec578
#define SI_MEMMAP       40          /* u64 memmap_paddr */
#define SI_NENTRIES     48          /* u32 memmap_entries */
#define MM_ADDR         0           /* memmap entry: u64 addr, u64 size, u32 type, u32 pad */
#define MM_SIZE         8
#define MM_TYPE         16
#define MM_ENTSZ        24

/* Print a literal string on COM1 (CPL0 or CPL3); preserves all registers. */
.macro PUTS s
	.pushsection .rodata.str1.1, "aMS", @progbits, 1
.Lstr\@: .asciz "\s"
	.popsection
	pushq	%rsi
	leaq	.Lstr\@(%rip), %rsi
	call	print_str
	popq	%rsi
.endm

/* Print a number in decimal / hex (no prefix); preserves all registers. */
.macro PUTDEC reg
	pushq	%rax
	movq	\reg, %rax                 /* \reg must not be %rsp-relative */
	call	print_dec
	popq	%rax
.endm
.macro PUTHEX reg
	pushq	%rax
	movq	\reg, %rax                 /* \reg must not be %rsp-relative */
	call	print_hex
	popq	%rax
.endm

/* The kvmsnap boot note: u64 entry; u32 cpl; u32 flags (docs/boot-protocol.md). */
.macro KVMSNAP_NOTE entry, cpl
	.pushsection .note.kvmsnap, "a", @note
	.balign	4
	.long	8                       /* namesz: "kvmsnap\0" */
	.long	16                      /* descsz */
	.long	1                       /* KVMSNAP_BOOT */
	.asciz	"kvmsnap"
	.balign	4
	.quad	\entry
	.long	\cpl
	.long	0                       /* flags */
	.popsection
.endm

/* rax = 64-bit TSC (clobbers rdx); rdtsc works at CPL3 (CR4.TSD = 0). */
.macro RDTSC64
	rdtsc
	shlq	$32, %rdx
	orq	%rdx, %rax
.endm

/* No executable stack (silences ld). */
	.pushsection .note.GNU-stack, "", @progbits
	.popsection
