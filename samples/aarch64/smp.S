/* smp (arm64): vCPU 0 starts the other vCPUs with PSCI CPU_ON, then every vCPU runs its own EL0
 * loop on its own stack with its own counter and prints "cpu<I> tick N" (I = vCPU index,
 * N = 0, 1, 2, ...). A lock taken at EL0 around each whole line keeps lines from interleaving.
 * Self-check: N is kept in x19 and in counts[I]; I in x20 and as ~I in x21; after each tick wait
 * they must agree. Inside the lock, lock_owner must stay I+1 for the whole line (mutual
 * exclusion). Failures print "cpu<I> tick N MISMATCH <what>" and the loop resyncs. */
	.include "macros.S"

/* ---------------------------------------------------------------- EL1 */
/* kernel_init(x0 = vCPU index), on every vCPU before it enters EL0. vCPU 0 starts vCPUs
 * 1 .. MAX_CPUS-1 (MPIDR Aff0 = index) at secondary_entry with context = index, and stops at the
 * first CPU_ON that fails with anything but ALREADY_ON: that vCPU does not exist. */
	.text
	.globl	kernel_init                     /* overrides the weak default in common.S */
kernel_init:
	cbnz	x0, 3f
	stp	x19, x20, [sp, #-16]!
	mov	x19, #1
1:	MOV64	x0, PSCI_CPU_ON
	mov	x1, x19                         /* target MPIDR: Aff0 = index */
	ADDR	x2, secondary_entry
	mov	x3, x19                         /* context: x0 of the new vCPU */
	hvc	#0
	cbz	x0, 2f
	cmn	x0, #-PSCI_ALREADY_ON
	b.ne	4f
2:	add	x19, x19, #1
	cmp	x19, #MAX_CPUS
	b.lo	1b
4:	ldp	x19, x20, [sp], #16
3:	ret

/* ---------------------------------------------------------------- EL0 */
	.globl	guest_main
guest_main:
	mov	x20, x0                         /* I */
	mvn	x21, x0                         /* ~I */
	ADDR	x22, counts
	add	x22, x22, x20, lsl #3           /* &counts[I] */
	ldr	x19, [x22]                      /* N */
1:	bl	lock_acquire
	PUTS	"cpu"
	PUTDEC	x20
	PUTS	" tick "
	PUTDEC	x19
	PUTS	"\n"
	bl	lock_release
	bl	tick_wait
	ldr	x0, [x22]
	cmp	x0, x19
	b.ne	.Lbad_mem
	mvn	x0, x20
	cmp	x0, x21
	b.ne	.Lbad_idx
.Lnext:	add	x19, x19, #1
	str	x19, [x22]
	b	1b

.Lbad_mem:
	ADDR	x23, s_mem
	b	.Lbad
.Lbad_idx:
	ADDR	x23, s_idx
.Lbad:	bl	lock_acquire
	PUTS	"cpu"
	PUTDEC	x20
	PUTS	" tick "
	PUTDEC	x19
	PUTS	" MISMATCH "
	mov	x0, x23
	bl	print_str
	bl	lock_release
	mvn	x21, x20
	b	.Lnext

/* Lamport's bakery lock for MAX_CPUS vCPUs, around one whole line; x20 = I. Preserves all
 * registers (flags excepted).
 * Why this and not a spinlock: with the MMU off all data accesses are Device-nGnRnE, where
 * exclusives (ldxr/stxr) are not guaranteed to work, and the guest has no atomics to rely on
 * either. The bakery lock needs only plain loads and stores: each vCPU writes only its own
 * choosing[I] and number[I] (aligned 64-bit words, single-copy atomic) and reads the others'. It
 * needs every store to be visible to the other vCPUs before the loads that follow it (store ->
 * load order, which Arm does not give by itself), so a dmb sy follows every store, and one
 * separates the wait on choosing[j] from the read of number[j]. Arm is other-multi-copy atomic,
 * so with those barriers every vCPU sees the lock words in one order, which is what Lamport's
 * proof needs. number[] only grows while the lock is continuously contended, and 64 bits do
 * not wrap in practice. A dmb sy before the release orders the line's UART writes before it. */
lock_acquire:
	stp	x0, x1, [sp, #-48]!
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	ADDR	x1, choosing
	ADDR	x2, number
	mov	x0, #1
	str	x0, [x1, x20, lsl #3]           /* choosing[I] = 1 */
	dmb	sy
	mov	x3, #0                          /* x3 = max(number[]) */
	mov	x4, #0
1:	ldr	x0, [x2, x4, lsl #3]
	cmp	x0, x3
	csel	x3, x0, x3, hi
	add	x4, x4, #1
	cmp	x4, #MAX_CPUS
	b.lo	1b
	add	x3, x3, #1
	str	x3, [x2, x20, lsl #3]           /* number[I] = max + 1 */
	dmb	sy
	str	xzr, [x1, x20, lsl #3]          /* choosing[I] = 0 */
	dmb	sy
	mov	x4, #0                          /* for each j != I */
2:	cmp	x4, x20
	b.eq	6f
3:	ldr	x0, [x1, x4, lsl #3]            /* wait while choosing[j] */
	cbz	x0, 4f
	yield
	b	3b
4:	dmb	sy
	ldr	x0, [x2, x4, lsl #3]            /* wait while number[j] != 0 and */
	cbz	x0, 6f                          /*   (number[j], j) < (number[I], I) */
	cmp	x0, x3
	b.hi	6f
	b.lo	5f
	cmp	x4, x20
	b.hi	6f
5:	yield
	b	4b
6:	add	x4, x4, #1
	cmp	x4, #MAX_CPUS
	b.lo	2b
	dmb	sy
	add	x0, x20, #1
	ADDR	x1, lock_owner
	str	x0, [x1]
	dmb	sy
	ldp	x4, x5, [sp, #32]
	ldp	x2, x3, [sp, #16]
	ldp	x0, x1, [sp], #48
	ret

lock_release:
	stp	x0, x1, [sp, #-32]!
	stp	x2, x30, [sp, #16]
	dmb	sy
	ADDR	x1, lock_owner
	ldr	x2, [x1]
	add	x0, x20, #1
	cmp	x2, x0
	b.eq	1f
	PUTS	"cpu"
	PUTDEC	x20
	PUTS	" MISMATCH lock\n"
1:	str	xzr, [x1]                       /* lock_owner = 0 */
	dmb	sy
	ADDR	x1, number
	str	xzr, [x1, x20, lsl #3]          /* number[I] = 0: released */
	dmb	sy
	ldp	x2, x30, [sp, #16]
	ldp	x0, x1, [sp], #32
	ret

	.section .rodata
	.globl	guest_name
guest_name:	.asciz	"smp"
s_mem:	.asciz	"counter\n"
s_idx:	.asciz	"index\n"

	.data
	.balign	64
choosing:	.fill	MAX_CPUS, 8, 0
number:		.fill	MAX_CPUS, 8, 0
lock_owner:	.quad	0
	.balign	64
counts:		.fill	MAX_CPUS, 8, 0
