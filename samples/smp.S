/* smp: every vCPU runs its own loop on its own stack with its own counter and prints
 * "cpu<I> tick N" (I = vCPU index from rsi, N = 0, 1, 2, ...). A spinlock taken at CPL3 around
 * each whole line keeps lines from interleaving.
 * Self-check: N is kept in r12 and in counts[I]; I in r13 and as ~I in r14; after each tick
 * wait they must agree. Inside the lock, lock_owner must stay I+1 for the whole line (mutual
 * exclusion). Failures print "cpu<I> tick N MISMATCH <what>" and the loop resyncs. */
#include "guest.h"

	KVMSNAP_NOTE user_main, 3       /* pure user mode: every vCPU enters user_main at CPL3 */

	.text
	.globl	guest_main
guest_main:
	movq	%rsi, %r13              /* I */
	movq	%rsi, %r14
	notq	%r14                    /* ~I */
	leaq	counts(%rip), %r15
	leaq	(%r15,%r13,8), %r15     /* &counts[I] */
	movq	(%r15), %r12            /* N */
1:	call	lock_acquire
	PUTS	"cpu"
	PUTDEC	%r13
	PUTS	" tick "
	PUTDEC	%r12
	PUTS	"\n"
	call	lock_release
	call	tick_wait
	cmpq	(%r15), %r12
	jne	.Lbad_mem
	movq	%r13, %rax
	notq	%rax
	cmpq	%rax, %r14
	jne	.Lbad_idx
.Lnext:	incq	%r12
	movq	%r12, (%r15)
	jmp	1b

.Lbad_mem:
	leaq	s_mem(%rip), %rbx
	jmp	.Lbad
.Lbad_idx:
	leaq	s_idx(%rip), %rbx
.Lbad:	call	lock_acquire
	PUTS	"cpu"
	PUTDEC	%r13
	PUTS	" tick "
	PUTDEC	%r12
	PUTS	" MISMATCH "
	movq	%rbx, %rsi
	call	print_str
	call	lock_release
	movq	%r13, %r14
	notq	%r14
	jmp	.Lnext

/* Spinlock around one whole line (CPL3: lock xchg + pause). Preserves all registers. */
lock_acquire:
	pushq	%rax
1:	movl	$1, %eax
	xchgl	%eax, print_lock(%rip)  /* xchg with memory is implicitly locked */
	testl	%eax, %eax
	jz	3f
2:	pause
	cmpl	$0, print_lock(%rip)
	jne	2b
	jmp	1b
3:	leaq	1(%r13), %rax
	movq	%rax, lock_owner(%rip)
	popq	%rax
	ret

lock_release:
	pushq	%rax
	leaq	1(%r13), %rax
	cmpq	%rax, lock_owner(%rip)
	je	1f
	PUTS	"cpu"
	PUTDEC	%r13
	PUTS	" MISMATCH lock\n"
1:	movq	$0, lock_owner(%rip)
	movl	$0, print_lock(%rip)
	popq	%rax
	ret

	.section .rodata
s_mem:	.asciz	"counter\n"
s_idx:	.asciz	"index\n"

	.data
	.balign	64
print_lock:	.long	0
	.balign	8
lock_owner:	.quad	0
	.balign	64
counts:		.fill	MAX_CPUS, 8, 0

	.section .rodata
	.globl	guest_cpus
	.balign	8
guest_cpus:	.quad	MAX_CPUS        /* every vCPU runs (overrides common.S's 1) */
