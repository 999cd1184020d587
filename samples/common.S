/* Shared part of every long-mode sample guest: PVH 32-bit entry (QEMU), start64 (CPL0 setup,
 * then iretq to CPL3), user_main (per-vCPU stack, then guest_main), console and delay helpers.
 *
 * A guest object provides `guest_main` (CPL3; rdi = hvm_start_info, rsi = vCPU index, own
 * stack already set) and its KVMSNAP_NOTE; it may override the weak `kernel_init` (CPL0 hook
 * run by start64) and `user_rflags` (RFLAGS for the iretq to user mode).
 *
 * CPL0 code here uses only plain instructions (the nested KVM backend emulates CPL0).
 * .bss is not assumed to be zeroed: anything that must start at zero lives in .data. */
#include "guest.h"

#define TSS_LIMIT 232                   /* 104 + 128 bitmap bytes (ports 0-0x3ff) */

/* ---------------------------------------------------------------- notes */
	.section .note.Xen, "a", @note
	.balign	4
	.long	4                       /* namesz: "Xen\0" */
	.long	8                       /* descsz */
	.long	18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign	4
	.quad	pvh_entry               /* 64-bit desc like Linux: QEMU reads a size_t here */

/* ---------------------------------------------------------------- PVH entry (QEMU only) */
/* 32-bit protected mode, paging off, CPL0, ebx = hvm_start_info. No stack is used. */
	.section .text.pvh, "ax"
	.code32
	.globl	pvh_entry
pvh_entry:
	cli
	cld
	movl	%ebx, %edi              /* start_info, becomes rdi for start64 */

	/* ecx = GiB to identity-map = max(4, ceil(top of RAM / 1 GiB)), at most PVH_MAX_GIB */
	movl	$4, %ecx
	cmpl	$SI_MAGIC, (%edi)
	jne	.Lmapped_size
	movl	SI_MEMMAP(%edi), %esi
	movl	SI_NENTRIES(%edi), %ebp
	testl	%ebp, %ebp
	jz	.Lmapped_size
.Lmm_loop:
	cmpl	$1, MM_TYPE(%esi)
	jne	.Lmm_next
	movl	MM_ADDR(%esi), %eax
	movl	MM_ADDR+4(%esi), %edx
	addl	MM_SIZE(%esi), %eax
	adcl	MM_SIZE+4(%esi), %edx
	addl	$0x3fffffff, %eax       /* round the end up to 1 GiB */
	adcl	$0, %edx
	cmpl	$(PVH_MAX_GIB / 4), %edx
	jae	.Lmm_cap
	shrl	$30, %eax
	shll	$2, %edx
	orl	%edx, %eax              /* eax = end in GiB */
	cmpl	%ecx, %eax
	jbe	.Lmm_next
	movl	%eax, %ecx
.Lmm_next:
	addl	$MM_ENTSZ, %esi
	decl	%ebp
	jnz	.Lmm_loop
	cmpl	$PVH_MAX_GIB, %ecx
	jbe	.Lmapped_size
.Lmm_cap:
	movl	$PVH_MAX_GIB, %ecx
.Lmapped_size:

	/* zero PML4 + PDPT (adjacent pages) */
	movl	$pvh_pml4, %ebx
	xorl	%eax, %eax
	movl	$2048, %edx
1:	movl	%eax, (%ebx)
	addl	$4, %ebx
	decl	%edx
	jnz	1b
	movl	$(pvh_pdpt + 7), %eax   /* present | writable | user */
	movl	%eax, pvh_pml4
	/* PDPT[i] -> i-th page directory, i < ecx */
	movl	$pvh_pdpt, %ebx
	movl	$(pvh_pd + 7), %eax
	movl	%ecx, %edx
2:	movl	%eax, (%ebx)
	addl	$4096, %eax
	addl	$8, %ebx
	decl	%edx
	jnz	2b
	/* page directories: 2 MiB pages, identity, P|RW|US|PS */
	movl	$pvh_pd, %ebx
	shll	$9, %ecx
	movl	$0x87, %eax
	xorl	%edx, %edx
3:	movl	%eax, (%ebx)
	movl	%edx, 4(%ebx)
	addl	$0x200000, %eax
	adcl	$0, %edx
	addl	$8, %ebx
	decl	%ecx
	jnz	3b

	lgdt	gdt_ptr                 /* 32-bit form reads limit + low 32 bits of base */
	movl	%cr4, %eax
	orl	$0x20, %eax             /* PAE */
	movl	%eax, %cr4
	movl	$pvh_pml4, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx       /* EFER.LME */
	movl	$0x100, %eax
	xorl	%edx, %edx
	wrmsr
	movl	$0x80010033, %eax       /* PG|WP|NE|ET|MP|PE */
	movl	%eax, %cr0
	ljmp	$SEL_KCODE, $pvh_long

	.code64
pvh_long:
	movl	$SEL_KDATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%edi, %edi              /* rdi = start_info (zero-extended) */
	xorl	%esi, %esi              /* vCPU 0: QEMU starts only the BSP here */
	jmp	start64

/* ---------------------------------------------------------------- start64 (CPL0, long mode) */
/* rdi = start_info, rsi = vCPU index, RSP = anything. Sets up GDT/TSS/CR0/CR4/XCR0, runs
 * kernel_init, then iretq to user_main at CPL3 with rdi/rsi preserved. */
	.text
	.globl	start64
start64:
	cli
	cld
	cmpq	$MAX_CPUS, %rsi
	jae	halt_forever
	movq	%rsi, %rax
	incq	%rax
	shlq	$KSTACK_SHIFT, %rax
	leaq	kstacks(%rip), %rsp
	addq	%rax, %rsp              /* top of this vCPU's kernel stack */
	movq	%rdi, %r12
	movq	%rsi, %r13

	lgdt	gdt_ptr(%rip)           /* same selectors as the loader's GDT */
	movl	$SEL_KDATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss

	/* this vCPU's TSS: rsp0 = top of its kernel stack, and an I/O permission bitmap that
	 * opens ports 0-0x3ff to CPL3. The bitmap is needed because this machine's CPL0
	 * emulator drops IOPL from the iretq frame (IOPL=3 alone is not enough here). */
	movq	%r13, %rbx
	shlq	$8, %rbx
	leaq	tss(%rip), %rax
	addq	%rax, %rbx
	xorl	%eax, %eax
	movl	$(TSS_LIMIT / 8), %ecx  /* 104-byte TSS + 128-byte bitmap, all zero */
1:	movq	%rax, -8(%rbx,%rcx,8)
	decl	%ecx
	jnz	1b
	movb	$0xff, TSS_LIMIT(%rbx)  /* bitmap terminator */
	movq	%rsp, 4(%rbx)
	movw	$104, 102(%rbx)
	/* its descriptor at SEL_TSS0 + 16*i: type 0x89 (available 64-bit TSS) */
	movq	%r13, %rdi
	shlq	$4, %rdi
	leaq	gdt_tss(%rip), %rax
	addq	%rax, %rdi
	movq	%rbx, %rax
	andl	$0xffffff, %eax
	shlq	$16, %rax               /* base[23:0] -> bits 16..39 */
	movq	%rbx, %rcx
	shrq	$24, %rcx
	andl	$0xff, %ecx
	shlq	$56, %rcx               /* base[31:24] -> bits 56..63 */
	orq	%rcx, %rax
	movabsq	$(0x0000890000000000 + TSS_LIMIT), %rcx
	orq	%rcx, %rax
	movq	%rax, (%rdi)
	movq	%rbx, %rax
	shrq	$32, %rax
	movq	%rax, 8(%rdi)
	movq	%r13, %rax
	shlq	$4, %rax
	addl	$SEL_TSS0, %eax
	ltr	%ax

	movq	%r12, %rdi
	movq	%r13, %rsi
	call	kernel_init

	/* CR0: MP|NE set, EM|TS clear */
	movq	%cr0, %rax
	andq	$~0xc, %rax
	orq	$0x22, %rax
	movq	%rax, %cr0
	/* CR4: OSFXSR|OSXMMEXCPT, plus OSXSAVE when the CPU has XSAVE */
	movl	$1, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%ecx, %r14d             /* CPUID.1:ECX */
	movq	%cr4, %rax
	orq	$0x600, %rax
	testl	$(1 << 26), %r14d
	jz	2f
	orq	$(1 << 18), %rax
2:	movq	%rax, %cr4
	testl	$(1 << 26), %r14d
	jz	4f
	/* XCR0 = x87|SSE [|AVX] [|opmask|ZMM_Hi256|Hi16_ZMM], limited to CPUID.0xD.0:EAX */
	movl	$3, %r15d
	testl	$(1 << 28), %r14d
	jz	3f
	orl	$4, %r15d
	movl	$7, %eax
	xorl	%ecx, %ecx
	cpuid
	testl	$(1 << 16), %ebx        /* AVX512F */
	jz	3f
	orl	$0xe0, %r15d
3:	movl	$0xd, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%eax, %ecx
	andl	$0xe0, %ecx
	cmpl	$0xe0, %ecx
	je	5f
	andl	$~0xe0, %r15d           /* no full AVX-512 state: none of it */
5:	andl	%eax, %r15d
	orl	$3, %r15d
	movl	%r15d, %eax
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	xsetbv
4:
	/* to user mode */
	pushq	$SEL_UDATA
	pushq	$0                      /* user_main sets its own stack */
	pushq	user_rflags(%rip)
	pushq	$SEL_UCODE
	leaq	user_main(%rip), %rax
	pushq	%rax
	movq	%r12, %rdi
	movq	%r13, %rsi
	iretq

	.globl	halt_forever
halt_forever:
	cli
	hlt
	jmp	halt_forever

/* Default CPL0 hook (timer overrides it). */
	.weak	kernel_init
kernel_init:
	ret

/* ---------------------------------------------------------------- user_main (CPL3) */
/* The kvmsnap CPL3 entry and start64's iretq target. rdi = start_info, rsi = vCPU index,
 * RSP = garbage: switch to this vCPU's own stack first, then call guest_main. */
	.globl	user_main
user_main:
	cmpq	guest_cpus(%rip), %rsi          /* vCPUs beyond what the guest uses park */
	jae	park
	movq	%rsi, %rax
	incq	%rax
	shlq	$USTACK_SHIFT, %rax
	leaq	ustacks(%rip), %rsp
	addq	%rax, %rsp
	xorl	%ebp, %ebp
	call	guest_main
	.globl	park
park:	pause                           /* CPL3 cannot hlt: spin quietly */
	jmp	park

/* ---------------------------------------------------------------- console (CPL0 or CPL3) */
/* All print routines preserve every register (flags excepted). */
	.globl	print_char              /* al */
print_char:
	pushq	%rdx
	movl	$COM1, %edx
	outb	%al, %dx
	popq	%rdx
	ret

	.globl	print_str               /* rsi = NUL-terminated string */
print_str:
	pushq	%rax
	pushq	%rsi
1:	movb	(%rsi), %al
	testb	%al, %al
	jz	2f
	call	print_char
	incq	%rsi
	jmp	1b
2:	popq	%rsi
	popq	%rax
	ret

	.globl	print_dec               /* rax, unsigned decimal */
print_dec:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	subq	$32, %rsp
	leaq	31(%rsp), %rsi
	movb	$0, (%rsi)
	movl	$10, %ecx
1:	xorl	%edx, %edx
	divq	%rcx
	addb	$'0', %dl
	decq	%rsi
	movb	%dl, (%rsi)
	testq	%rax, %rax
	jnz	1b
	call	print_str
	addq	$32, %rsp
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	ret

	.globl	print_hex               /* rax, lower-case hex without leading zeros or 0x */
print_hex:
	pushq	%rax
	pushq	%rdx
	pushq	%rsi
	subq	$32, %rsp
	leaq	31(%rsp), %rsi
	movb	$0, (%rsi)
1:	movl	%eax, %edx
	andl	$15, %edx
	cmpl	$10, %edx
	jb	2f
	addl	$('a' - '0' - 10), %edx
2:	addl	$'0', %edx
	decq	%rsi
	movb	%dl, (%rsi)
	shrq	$4, %rax
	jnz	1b
	call	print_str
	addq	$32, %rsp
	popq	%rsi
	popq	%rdx
	popq	%rax
	ret

/* ---------------------------------------------------------------- pacing (CPL3) */
/* Wait until TICK_CYCLES TSC cycles have passed since the call. Only GPRs; all preserved.
 * Snapshot-safe: the start time lives in a register, and (now - start) is unsigned, so a
 * TSC that jumps forward or backward ends the wait instead of hanging it. */
	.globl	tick_wait
tick_wait:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	RDTSC64
	movq	%rax, %rcx
1:	pause
	RDTSC64
	subq	%rcx, %rax
	cmpq	$TICK_CYCLES, %rax
	jb	1b
	popq	%rdx
	popq	%rcx
	popq	%rax
	ret

/* ---------------------------------------------------------------- data */
	.data
	.balign	16
	.globl	gdt
gdt:
	.quad	0
	.quad	0x00af9b000000ffff      /* 0x08 kernel code64 */
	.quad	0x00cf93000000ffff      /* 0x10 kernel data */
	.quad	0x00cff3000000ffff      /* 0x18 user data, DPL3 */
	.quad	0x00affb000000ffff      /* 0x20 user code64, DPL3 */
gdt_tss:
	.fill	2 * MAX_CPUS, 8, 0      /* 0x28 + 16*i: TSS of vCPU i, filled by start64 */
gdt_end:
	.balign	8
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.weak	user_rflags
user_rflags:
	.quad	0x3002                  /* IOPL 3, IF 0 (timer: 0x3202) */

	.weak	guest_cpus
guest_cpus:
	.quad	1                       /* vCPUs the guest uses; the others park (smp: MAX_CPUS) */

	.bss
	.balign	4096
pvh_pml4:	.skip	4096
pvh_pdpt:	.skip	4096
pvh_pd:		.skip	4096 * PVH_MAX_GIB
kstacks:	.skip	MAX_CPUS << KSTACK_SHIFT
ustacks:	.skip	MAX_CPUS << USTACK_SHIFT
tss:		.skip	MAX_CPUS * 256
