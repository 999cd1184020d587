/* counter: prints "tick N" for N = 0, 1, 2, ... (one line per tick, 64-bit decimal).
 * Self-check: N is kept in r12, in memory, and as ~N (r13) and N*K (r14); after each tick
 * wait all four must agree, else "tick N MISMATCH <what>" (then it resyncs and goes on). */
#include "guest.h"

	KVMSNAP_NOTE user_main, 3       /* pure user mode: enter user_main at CPL3 */

#define K 0x9e3779b97f4a7c15

	.text
	.globl	guest_main
guest_main:
	movq	count(%rip), %r12
	movabsq	$K, %r15
1:	movq	%r12, %r13
	notq	%r13
	movq	%r12, %r14
	imulq	%r15, %r14
	PUTS	"tick "
	PUTDEC	%r12
	PUTS	"\n"
	call	tick_wait
	cmpq	count(%rip), %r12
	jne	.Lbad_mem
	movq	%r12, %rax
	notq	%rax
	cmpq	%rax, %r13
	jne	.Lbad_r13
	movq	%r12, %rax
	imulq	%r15, %rax
	cmpq	%rax, %r14
	jne	.Lbad_r14
	movabsq	$K, %rax
	cmpq	%rax, %r15
	jne	.Lbad_r15
.Lnext:
	incq	%r12
	movq	%r12, count(%rip)
	jmp	1b

.Lbad_mem:
	PUTS	"tick "
	PUTDEC	%r12
	PUTS	" MISMATCH memory "
	PUTDEC	count(%rip)
	PUTS	"\n"
	jmp	.Lnext
.Lbad_r13:
	PUTS	"tick "
	PUTDEC	%r12
	PUTS	" MISMATCH r13\n"
	jmp	.Lnext
.Lbad_r14:
	PUTS	"tick "
	PUTDEC	%r12
	PUTS	" MISMATCH r14\n"
	jmp	.Lnext
.Lbad_r15:
	PUTS	"tick "
	PUTDEC	%r12
	PUTS	" MISMATCH r15\n"
	movabsq	$K, %r15
	jmp	.Lnext

	.data
	.balign	8
count:	.quad	0
