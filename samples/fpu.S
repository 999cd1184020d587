/* fpu: each tick N loads values derived from N into x87 st0-st7 (fild N+i), the x87 control
 * word and MXCSR (rounding bits from N), xmm0-15 (SSE) or ymm0-15 (AVX) or zmm0-31 + k0-k7
 * (AVX-512F with XCR0 bits 5-7), waits one tick using only GPRs, stores everything back and
 * compares it with values recomputed from N. Prints "fpu tick N ok" or "fpu tick N MISMATCH
 * <reg>" (first bad register: st0-7, xmmI/ymmI/zmmI by the first differing 64-bit lane, kI,
 * fcw, mxcsr). Prints once at start "fpu features: x87 sse[ avx][ avx512]". */
#include "guest.h"

	KVMSNAP_NOTE user_main, 3       /* pure user mode: enter user_main at CPL3 */

#define F_AVX     1
#define F_AVX512  2
#define F_BW      4                     /* AVX512BW: k registers are 64-bit (kmovq) */

	.text
	.globl	guest_main
guest_main:
	/* features -> r13 */
	xorl	%r13d, %r13d
	movl	$1, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%ecx, %esi
	andl	$((1 << 27) | (1 << 28)), %esi  /* OSXSAVE and AVX */
	cmpl	$((1 << 27) | (1 << 28)), %esi
	jne	1f
	xorl	%ecx, %ecx
	xgetbv                          /* fine at CPL3 with CR4.OSXSAVE */
	movl	%eax, %esi              /* XCR0 */
	andl	$6, %eax
	cmpl	$6, %eax
	jne	1f
	orl	$F_AVX, %r13d
	movl	$7, %eax
	xorl	%ecx, %ecx
	cpuid
	testl	$(1 << 16), %ebx        /* AVX512F */
	jz	1f
	andl	$0xe0, %esi
	cmpl	$0xe0, %esi
	jne	1f
	orl	$F_AVX512, %r13d
	testl	$(1 << 30), %ebx        /* AVX512BW */
	jz	1f
	orl	$F_BW, %r13d
1:	PUTS	"fpu features: x87 sse"
	testl	$F_AVX, %r13d
	jz	2f
	PUTS	" avx"
2:	testl	$F_AVX512, %r13d
	jz	3f
	PUTS	" avx512"
3:	PUTS	"\n"
	movq	count(%rip), %r12       /* N */

.Ltick:
	/* expected values into pat[32][8] and kpat[8] */
	xorl	%ecx, %ecx
4:	xorl	%edx, %edx
5:	call	vec_expect
	movq	%rcx, %rdi
	shlq	$3, %rdi
	addq	%rdx, %rdi
	leaq	pat(%rip), %rsi
	movq	%rax, (%rsi,%rdi,8)
	incl	%edx
	cmpl	$8, %edx
	jb	5b
	incl	%ecx
	cmpl	$32, %ecx
	jb	4b
	xorl	%ecx, %ecx
6:	call	k_expect
	leaq	kpat(%rip), %rsi
	movq	%rax, (%rsi,%rcx,8)
	incl	%ecx
	cmpl	$8, %ecx
	jb	6b

	/* x87: control word, then st7..st0 = N+0..N+7 */
	fninit
	call	fcw_expect
	movw	%ax, tmp(%rip)
	fldcw	tmp(%rip)
	xorl	%ecx, %ecx
7:	leaq	(%r12,%rcx), %rax
	movq	%rax, tmp(%rip)
	fildq	tmp(%rip)
	incl	%ecx
	cmpl	$8, %ecx
	jb	7b
	call	mxcsr_expect
	movl	%eax, tmp(%rip)
	ldmxcsr	tmp(%rip)

	/* vector registers */
	testl	$F_AVX512, %r13d
	jnz	.Lload512
	testl	$F_AVX, %r13d
	jnz	.Lload256
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	movdqu	pat+64*\i(%rip), %xmm\i
	.endr
	jmp	.Lwait
.Lload256:
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu	pat+64*\i(%rip), %ymm\i
	.endr
	jmp	.Lwait
.Lload512:
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	vmovdqu64 pat+64*\i(%rip), %zmm\i
	.endr
	testl	$F_BW, %r13d
	jz	8f
	.irp	i, 0,1,2,3,4,5,6,7
	kmovq	kpat+8*\i(%rip), %k\i
	.endr
	jmp	.Lwait
8:	.irp	i, 0,1,2,3,4,5,6,7
	kmovw	kpat+8*\i(%rip), %k\i
	.endr

.Lwait:	call	tick_wait               /* GPRs only */

	/* store everything back */
	testl	$F_AVX512, %r13d
	jnz	.Lstore512
	testl	$F_AVX, %r13d
	jnz	.Lstore256
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	movdqu	%xmm\i, got+64*\i(%rip)
	.endr
	jmp	.Lstored
.Lstore256:
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	vmovdqu	%ymm\i, got+64*\i(%rip)
	.endr
	jmp	.Lstored
.Lstore512:
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	vmovdqu64 %zmm\i, got+64*\i(%rip)
	.endr
	testl	$F_BW, %r13d
	jz	9f
	.irp	i, 0,1,2,3,4,5,6,7
	kmovq	%k\i, kgot+8*\i(%rip)
	.endr
	jmp	.Lstored
9:	.irp	i, 0,1,2,3,4,5,6,7
	movq	$0, kgot+8*\i(%rip)
	kmovw	%k\i, kgot+8*\i(%rip)
	.endr
.Lstored:
	stmxcsr	mxcsr_got(%rip)
	fnstcw	fcw_got(%rip)
	.irp	i, 0,1,2,3,4,5,6,7
	fistpq	x87got+8*\i(%rip)       /* x87got[i] = st(i) */
	.endr

	/* verify: x87 */
	xorl	%ecx, %ecx
10:	leaq	7(%r12), %rax
	subq	%rcx, %rax              /* st(i) = N + 7 - i */
	leaq	x87got(%rip), %rsi
	cmpq	%rax, (%rsi,%rcx,8)
	jne	.Lbad_st
	incl	%ecx
	cmpl	$8, %ecx
	jb	10b
	/* vectors: 16 x 2 lanes (sse), 16 x 4 (avx), 32 x 8 (avx512) */
	movl	$16, %r14d
	movl	$2, %r15d
	testl	$F_AVX, %r13d
	jz	11f
	movl	$4, %r15d
	testl	$F_AVX512, %r13d
	jz	11f
	movl	$32, %r14d
	movl	$8, %r15d
11:	xorl	%ecx, %ecx
12:	xorl	%edx, %edx
13:	call	vec_expect
	movq	%rcx, %rdi
	shlq	$3, %rdi
	addq	%rdx, %rdi
	leaq	got(%rip), %rsi
	cmpq	%rax, (%rsi,%rdi,8)
	jne	.Lbad_vec
	incl	%edx
	cmpl	%r15d, %edx
	jb	13b
	incl	%ecx
	cmpl	%r14d, %ecx
	jb	12b
	/* opmask registers */
	testl	$F_AVX512, %r13d
	jz	15f
	xorl	%ecx, %ecx
14:	call	k_expect
	leaq	kgot(%rip), %rsi
	cmpq	%rax, (%rsi,%rcx,8)
	jne	.Lbad_k
	incl	%ecx
	cmpl	$8, %ecx
	jb	14b
	/* control words */
15:	call	fcw_expect
	cmpw	%ax, fcw_got(%rip)
	jne	.Lbad_fcw
	call	mxcsr_expect
	cmpl	%eax, mxcsr_got(%rip)
	jne	.Lbad_mxcsr
	cmpq	count(%rip), %r12
	jne	.Lbad_count

	PUTS	"fpu tick "
	PUTDEC	%r12
	PUTS	" ok\n"
.Lnext:	incq	%r12
	movq	%r12, count(%rip)
	jmp	.Ltick

.Lbad_st:
	call	bad_prefix
	PUTS	"st"
	jmp	.Lbad_idx
.Lbad_vec:
	call	bad_prefix
	cmpl	$2, %edx
	jae	16f
	PUTS	"xmm"
	jmp	.Lbad_idx
16:	cmpl	$4, %edx
	jae	17f
	PUTS	"ymm"
	jmp	.Lbad_idx
17:	PUTS	"zmm"
	jmp	.Lbad_idx
.Lbad_k:
	call	bad_prefix
	PUTS	"k"
.Lbad_idx:
	PUTDEC	%rcx
	PUTS	"\n"
	jmp	.Lnext
.Lbad_fcw:
	call	bad_prefix
	PUTS	"fcw\n"
	jmp	.Lnext
.Lbad_mxcsr:
	call	bad_prefix
	PUTS	"mxcsr\n"
	jmp	.Lnext
.Lbad_count:
	call	bad_prefix
	PUTS	"counter\n"
	jmp	.Lnext

bad_prefix:
	PUTS	"fpu tick "
	PUTDEC	%r12
	PUTS	" MISMATCH "
	ret

/* rax = expected 64-bit lane rdx (0-7) of vector register rcx (0-31) at tick r12 */
vec_expect:
	movq	%r12, %rax
	shlq	$12, %rax
	orq	%rcx, %rax
	shlq	$4, %rax
	orq	%rdx, %rax
	shlq	$4, %rax
	orq	$0xa, %rax
	btsq	$63, %rax               /* N<<20 | reg<<8 | lane<<4 | 0xa, top bit set */
	ret

/* rax = expected value of k<rcx> at tick r12 (16 bits without AVX512BW) */
k_expect:
	movq	%r12, %rax
	shlq	$4, %rax
	orq	%rcx, %rax
	shlq	$4, %rax
	orq	$0xb, %rax
	btsq	$62, %rax
	testl	$F_BW, %r13d
	jnz	1f
	movzwl	%ax, %eax
1:	ret

/* eax = x87 control word for tick r12: default 0x37f with rounding control = N & 3 */
fcw_expect:
	movl	%r12d, %eax
	andl	$3, %eax
	shll	$10, %eax
	orl	$0x37f, %eax
	ret

/* eax = MXCSR for tick r12: default 0x1f80 with rounding control = N & 3 */
mxcsr_expect:
	movl	%r12d, %eax
	andl	$3, %eax
	shll	$13, %eax
	orl	$0x1f80, %eax
	ret

	.data
	.balign	8
count:	.quad	0

	.bss
	.balign	64
pat:	.skip	32 * 64
got:	.skip	32 * 64
kpat:	.skip	8 * 8
kgot:	.skip	8 * 8
x87got:	.skip	8 * 8
tmp:	.skip	8
mxcsr_got: .skip 4
fcw_got: .skip	4
