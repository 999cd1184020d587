/* memtest: reads the RAM ranges (type 1) from the hvm_start_info memory map, keeps the parts
 * above the end of its own image (rounded up to 2 MiB) and below PVH_MAX_GIB GiB, and prints
 * each once as "memtest range 0x<begin>-0x<end>". Round N (0, 1, 2, ...) fills every range
 * with the 64-bit pattern addr ^ (N * 0x9e3779b97f4a7c15), then verifies it and prints
 * "memtest round N ok <MiB> MiB" or "memtest round N MISMATCH at 0x<addr>" (first bad
 * address only), then waits one tick. All CPL3; RAM above 4 GiB (past the 3-4 GiB hole) is
 * tested like the rest. A bad start_info prints "memtest BAD start_info" and stops. */
#include "guest.h"

	KVMSNAP_NOTE user_main, 3       /* pure user mode: enter user_main at CPL3 */

#define K          0x9e3779b97f4a7c15
#define MAX_RANGES 32

	.text
	.globl	guest_main
guest_main:
	cmpl	$SI_MAGIC, (%rdi)
	jne	.Lbad_si
	movq	SI_MEMMAP(%rdi), %rbx   /* memmap entry */
	movl	SI_NENTRIES(%rdi), %ecx
	leaq	_end(%rip), %r8
	addq	$0x1fffff, %r8
	andq	$-0x200000, %r8         /* lowest address tested */
	movabsq	$(PVH_MAX_GIB << 30), %r9       /* highest address tested (exclusive) */
	xorl	%r10d, %r10d            /* ranges kept */
	leaq	ranges(%rip), %r11
	testl	%ecx, %ecx
	jz	3f
1:	cmpl	$1, MM_TYPE(%rbx)
	jne	2f
	cmpl	$MAX_RANGES, %r10d
	jae	2f
	movq	MM_ADDR(%rbx), %rsi     /* begin = max(addr, r8) rounded up to 4 KiB */
	movq	MM_SIZE(%rbx), %rdi
	addq	%rsi, %rdi              /* end = min(addr + size, r9) rounded down to 4 KiB */
	cmpq	%r8, %rsi
	jae	4f
	movq	%r8, %rsi
4:	cmpq	%r9, %rdi
	jbe	5f
	movq	%r9, %rdi
5:	addq	$0xfff, %rsi
	andq	$-0x1000, %rsi
	andq	$-0x1000, %rdi
	cmpq	%rdi, %rsi
	jae	2f
	movq	%r10, %rax
	shlq	$4, %rax
	movq	%rsi, (%r11,%rax)
	movq	%rdi, 8(%r11,%rax)
	incl	%r10d
	PUTS	"memtest range 0x"
	PUTHEX	%rsi
	PUTS	"-0x"
	PUTHEX	%rdi
	PUTS	"\n"
2:	addq	$MM_ENTSZ, %rbx
	decl	%ecx
	jnz	1b
3:	movl	%r10d, nranges(%rip)

	movq	round(%rip), %r12       /* N */
.Lround:
	movq	%r12, %r15
	movabsq	$K, %rax
	imulq	%rax, %r15              /* key */
	/* fill */
	xorl	%ebx, %ebx
	jmp	7f
6:	movq	%rbx, %rax
	shlq	$4, %rax
	leaq	ranges(%rip), %rdx
	movq	(%rdx,%rax), %rdi
	movq	8(%rdx,%rax), %rsi
8:	movq	%rdi, %rax
	xorq	%r15, %rax
	movq	%rax, (%rdi)
	addq	$8, %rdi
	cmpq	%rsi, %rdi
	jb	8b
	incl	%ebx
7:	cmpl	nranges(%rip), %ebx
	jb	6b
	/* verify; r13 = bytes checked */
	xorl	%r13d, %r13d
	xorl	%ebx, %ebx
	jmp	10f
9:	movq	%rbx, %rax
	shlq	$4, %rax
	leaq	ranges(%rip), %rdx
	movq	(%rdx,%rax), %rdi
	movq	8(%rdx,%rax), %rsi
	addq	%rsi, %r13
	subq	%rdi, %r13
11:	movq	%rdi, %rax
	xorq	%r15, %rax
	cmpq	%rax, (%rdi)
	jne	.Lmismatch
	addq	$8, %rdi
	cmpq	%rsi, %rdi
	jb	11b
	incl	%ebx
10:	cmpl	nranges(%rip), %ebx
	jb	9b
	cmpq	round(%rip), %r12
	jne	.Lbad_round
	PUTS	"memtest round "
	PUTDEC	%r12
	PUTS	" ok "
	shrq	$20, %r13
	PUTDEC	%r13
	PUTS	" MiB\n"
.Lnext:	incq	%r12
	movq	%r12, round(%rip)
	call	tick_wait
	jmp	.Lround

.Lmismatch:
	PUTS	"memtest round "
	PUTDEC	%r12
	PUTS	" MISMATCH at 0x"
	PUTHEX	%rdi
	PUTS	"\n"
	jmp	.Lnext
.Lbad_round:
	PUTS	"memtest round "
	PUTDEC	%r12
	PUTS	" MISMATCH round counter\n"
	jmp	.Lnext
.Lbad_si:
	PUTS	"memtest BAD start_info\n"
	ret                             /* back to user_main, which parks */

	.data
	.balign	8
round:		.quad	0
nranges:	.long	0
	.balign	16
ranges:		.fill	2 * MAX_RANGES, 8, 0    /* {begin, end} */
