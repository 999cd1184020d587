/* counter (arm64): prints "tick N" for N = 0, 1, 2, ... (one line per tick, 64-bit decimal), at EL0.
 * Self-check: N is kept in x19 and in memory; x20-x28 and TPIDR_EL0 hold values derived from N
 * (see `expect` below). After each tick wait all of them must agree with N, else
 * "tick N MISMATCH <what>" for the first one that differs (then it resyncs and goes on). */
	.include "macros.S"

	.equ	K, 0x9e3779b97f4a7c15

	.text
	.globl	guest_main
guest_main:
	ADDR	x0, count
	ldr	x19, [x0]                       /* N */
1:	bl	set_state
	PUTS	"tick "
	PUTDEC	x19
	PUTS	"\n"
	bl	tick_wait
	ADDR	x0, count
	ldr	x1, [x0]
	cmp	x1, x19
	b.ne	.Lbad_mem
	.irp	r, 20,21,22,23,24,25,26,27,28
	mov	x0, #\r
	bl	expect
	cmp	x\r, x0
	b.ne	.Lbad_x\r
	.endr
	mov	x0, #29
	bl	expect
	mrs	x1, tpidr_el0
	cmp	x1, x0
	b.ne	.Lbad_tpidr
.Lnext:
	add	x19, x19, #1
	ADDR	x0, count
	str	x19, [x0]
	b	1b

.Lbad_mem:
	PUTS	"tick "
	PUTDEC	x19
	PUTS	" MISMATCH memory "
	PUTDEC	x1
	PUTS	"\n"
	b	.Lnext
	.irp	r, 20,21,22,23,24,25,26,27,28
.Lbad_x\r:
	PUTS	"tick "
	PUTDEC	x19
	PUTS	" MISMATCH x\r\n"
	b	.Lnext
	.endr
.Lbad_tpidr:
	PUTS	"tick "
	PUTDEC	x19
	PUTS	" MISMATCH tpidr_el0\n"
	b	.Lnext

/* x20-x28 and TPIDR_EL0 = their expected values for N = x19 (resyncs them after a mismatch). */
set_state:
	stp	x0, x30, [sp, #-16]!
	.irp	r, 20,21,22,23,24,25,26,27,28
	mov	x0, #\r
	bl	expect
	mov	x\r, x0
	.endr
	mov	x0, #29
	bl	expect
	msr	tpidr_el0, x0
	ldp	x0, x30, [sp], #16
	ret

/* x0 = expected value of register x0 (20-28; 29 = TPIDR_EL0) for N = x19; uses only x0, x1.
 *   x20 = ~N   x21 = N * K   x22 = K   x23-x28 = N * K rotated right by 8, 16, ... 48 bits
 *   TPIDR_EL0 = N ^ K */
expect:
	cmp	x0, #20
	b.ne	1f
	mvn	x0, x19
	ret
1:	cmp	x0, #22
	b.ne	2f
	MOV64	x0, K
	ret
2:	cmp	x0, #29
	b.ne	3f
	MOV64	x0, K
	eor	x0, x0, x19
	ret
3:	sub	x1, x0, #21                     /* x21: 0; x23-x28: 2-7 */
	cmp	x1, #2
	b.lo	4f
	sub	x1, x1, #1                      /* rotate by 8 * (1 .. 6) */
4:	lsl	x1, x1, #3
	MOV64	x0, K
	mul	x0, x0, x19
	ror	x0, x0, x1
	ret

	.section .rodata
	.globl	guest_name
guest_name:	.asciz	"counter"

	.data
	.balign	8
count:	.quad	0
