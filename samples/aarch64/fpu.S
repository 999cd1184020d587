/* fpu (arm64): each tick N, at EL0, loads values derived from N into FPCR and FPSR, V0-V31 (no
 * SVE) or Z0-Z31 at the full vector length, P0-P15 and FFR (SVE), waits one tick using only GPRs,
 * stores everything back and compares it with values recomputed from N. Prints "fpu tick N ok" or
 * "fpu tick N MISMATCH <what>": the first bad one of vl (SVE vector length changed), vI / zI (by
 * the first differing 64-bit lane: lanes 0-1 are the V register, higher lanes only Z), pI, ffr,
 * fpcr, fpsr, counter. Prints once at start "fpu features: fp asimd sve <bits>-bit" or
 * "fpu features: fp asimd, no sve".
 *
 * Values, for tick N:
 *   64-bit lane l of vector register r: 1<<63 | N<<20 | r<<12 | l<<4 | 0xa
 *   byte k of Pi: byte k of the lanes of "vector register" 32+i (so lane k>>3, byte k&7)
 *   FFR (byte elements): the first N mod (VL+1) elements true, the rest false (WRFFR needs a
 *     monotonic value)
 *   FPCR: AHP|DN|FZ|RMode (bits 26:22) = N & 0x1f; the rest 0
 *   FPSR: IOC..IXC (bits 4:0) = N & 0x1f, IDC (bit 7) = N>>5 & 1, QC (bit 27) = N>>6 & 1
 * EL1 (common.S) has set CPACR_EL1.FPEN (and ZEN, ZCR_EL1.LEN max, sve_vl) already.
 *
 * Registers: x19 = N, x20 = SVE VL in bytes (0 = none), x21 = vector stride in bytes (VL, or 16),
 * x22 = predicate length in bytes (VL/8), x23 = 64-bit lanes per vector (x21/8). */
	.include "macros.S"

	.text
	.globl	guest_main
guest_main:
	ADDR	x0, sve_vl
	ldr	x20, [x0]
	mov	x21, #16
	cbz	x20, 1f
	mov	x21, x20
1:	lsr	x22, x20, #3
	lsr	x23, x21, #3
	cbz	x20, 2f
	PUTS	"fpu features: fp asimd sve "
	lsl	x0, x20, #3
	PUTDEC	x0
	PUTS	"-bit\n"
	b	3f
2:	PUTS	"fpu features: fp asimd, no sve\n"
3:	ADDR	x0, count
	ldr	x19, [x0]                       /* N */

.Ltick:
	/* expected vectors into pat[32][lanes] */
	ADDR	x24, pat
	mov	x25, #0
4:	mov	x26, #0
5:	mov	x0, x25
	mov	x1, x26
	bl	vec_expect
	madd	x2, x25, x23, x26
	str	x0, [x24, x2, lsl #3]
	add	x26, x26, #1
	cmp	x26, x23
	b.lo	5b
	add	x25, x25, #1
	cmp	x25, #32
	b.lo	4b
	cbz	x20, .Lnopred
	/* expected predicates into ppat[17][PL]: P0-P15, then FFR */
	ADDR	x24, ppat
	mov	x25, #0
6:	mov	x26, #0
7:	mov	x0, x25
	mov	x1, x26
	bl	pred_expect
	madd	x2, x25, x22, x26
	strb	w0, [x24, x2]
	add	x26, x26, #1
	cmp	x26, x22
	b.lo	7b
	add	x25, x25, #1
	cmp	x25, #17                        /* 16 = FFR */
	b.lo	6b
.Lnopred:

	/* load: FPCR, FPSR, then FFR, P0-P15, Z0-Z31 (SVE) or V0-V31 */
	bl	fpcr_expect
	msr	fpcr, x0
	bl	fpsr_expect
	msr	fpsr, x0
	cbz	x20, .Lload_v
	ADDR	x0, ppat
	ldr	p0, [x0, #16, mul vl]
	wrffr	p0.b
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	ldr	p\i, [x0, #\i, mul vl]
	.endr
	ADDR	x0, pat
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	ldr	z\i, [x0, #\i, mul vl]
	.endr
	b	.Lwait
.Lload_v:
	ADDR	x0, pat
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	ldr	q\i, [x0, #(\i * 16)]
	.endr

.Lwait:	bl	tick_wait                       /* GPRs only */

	/* store everything back */
	mrs	x27, fpcr
	mrs	x28, fpsr
	cbz	x20, .Lstore_v
	ADDR	x0, got
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	str	z\i, [x0, #\i, mul vl]
	.endr
	ADDR	x0, pgot
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	str	p\i, [x0, #\i, mul vl]
	.endr
	rdffr	p0.b
	str	p0, [x0, #16, mul vl]
	b	.Lstored
.Lstore_v:
	ADDR	x0, got
	.irp	i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	str	q\i, [x0, #(\i * 16)]
	.endr
.Lstored:

	/* verify: vector length */
	cbz	x20, 8f
	rdvl	x0, #1
	cmp	x0, x20
	b.ne	.Lbad_vl
	/* vectors */
8:	ADDR	x24, got
	mov	x25, #0
9:	mov	x26, #0
10:	mov	x0, x25
	mov	x1, x26
	bl	vec_expect
	madd	x2, x25, x23, x26
	ldr	x1, [x24, x2, lsl #3]
	cmp	x1, x0
	b.ne	.Lbad_vec
	add	x26, x26, #1
	cmp	x26, x23
	b.lo	10b
	add	x25, x25, #1
	cmp	x25, #32
	b.lo	9b
	/* predicates and FFR */
	cbz	x20, .Lctl
	ADDR	x24, pgot
	mov	x25, #0
11:	mov	x26, #0
12:	mov	x0, x25
	mov	x1, x26
	bl	pred_expect
	madd	x2, x25, x22, x26
	ldrb	w1, [x24, x2]
	cmp	w1, w0
	b.ne	.Lbad_pred
	add	x26, x26, #1
	cmp	x26, x22
	b.lo	12b
	add	x25, x25, #1
	cmp	x25, #17
	b.lo	11b
	/* control registers, counter */
.Lctl:	bl	fpcr_expect
	cmp	x27, x0
	b.ne	.Lbad_fpcr
	bl	fpsr_expect
	cmp	x28, x0
	b.ne	.Lbad_fpsr
	ADDR	x0, count
	ldr	x0, [x0]
	cmp	x0, x19
	b.ne	.Lbad_count

	PUTS	"fpu tick "
	PUTDEC	x19
	PUTS	" ok\n"
.Lnext:	add	x19, x19, #1
	ADDR	x0, count
	str	x19, [x0]
	b	.Ltick

.Lbad_vl:
	bl	bad_prefix
	PUTS	"vl "
	mov	x20, x0                         /* carry on at the new length (at most 2048 bits) */
	mov	x21, x0
	lsr	x22, x0, #3
	lsr	x23, x0, #3
	lsl	x0, x0, #3
	PUTDEC	x0
	PUTS	"-bit\n"
	b	.Lnext
.Lbad_vec:
	bl	bad_prefix
	cmp	x26, #2
	b.hs	13f
	PUTS	"v"
	b	.Lbad_idx
13:	PUTS	"z"
	b	.Lbad_idx
.Lbad_pred:
	bl	bad_prefix
	cmp	x25, #16
	b.eq	14f
	PUTS	"p"
.Lbad_idx:
	PUTDEC	x25
	PUTS	"\n"
	b	.Lnext
14:	PUTS	"ffr\n"
	b	.Lnext
.Lbad_fpcr:
	bl	bad_prefix
	PUTS	"fpcr\n"
	b	.Lnext
.Lbad_fpsr:
	bl	bad_prefix
	PUTS	"fpsr\n"
	b	.Lnext
.Lbad_count:
	bl	bad_prefix
	PUTS	"counter\n"
	b	.Lnext

bad_prefix:
	stp	x0, x30, [sp, #-16]!
	PUTS	"fpu tick "
	PUTDEC	x19
	PUTS	" MISMATCH "
	ldp	x0, x30, [sp], #16
	ret

/* The expected-value helpers are leaves and use only x0-x3. */

/* x0 = expected 64-bit lane x1 of vector register x0 (0-31; 32-48 for the predicates) at tick x19 */
vec_expect:
	lsl	x2, x19, #20
	orr	x2, x2, x0, lsl #12
	orr	x2, x2, x1, lsl #4
	add	x2, x2, #0xa                   /* bits 3:0 are clear */
	orr	x0, x2, #(1 << 63)
	ret

/* w0 = expected byte x1 of predicate x0 (0-15 = P0-P15, 16 = FFR) at tick x19 */
pred_expect:
	cmp	x0, #16
	b.eq	1f
	stp	x1, x30, [sp, #-16]!
	add	x0, x0, #32
	lsr	x1, x1, #3
	bl	vec_expect                      /* the lane holding byte k */
	ldp	x1, x30, [sp], #16
	and	x2, x1, #7
	lsl	x2, x2, #3
	lsr	x0, x0, x2
	and	x0, x0, #0xff
	ret
1:	add	x2, x20, #1                     /* FFR: K = N mod (VL + 1) elements true */
	udiv	x3, x19, x2
	msub	x2, x3, x2, x19                 /* x2 = K */
	subs	x2, x2, x1, lsl #3              /* true elements in byte k: clamp(K - 8k, 0, 8) */
	b.le	2f
	cmp	x2, #8
	b.hs	3f
	mov	x0, #1
	lsl	x0, x0, x2
	sub	x0, x0, #1
	ret
2:	mov	x0, #0
	ret
3:	mov	x0, #0xff
	ret

/* x0 = FPCR for tick x19: AHP|DN|FZ|RMode (bits 26:22) = N & 0x1f */
fpcr_expect:
	and	x0, x19, #0x1f
	lsl	x0, x0, #22
	ret

/* x0 = FPSR for tick x19: IOC..IXC = N & 0x1f, IDC = N>>5 & 1, QC = N>>6 & 1 */
fpsr_expect:
	and	x0, x19, #0x1f
	ubfx	x1, x19, #5, #1
	orr	x0, x0, x1, lsl #7
	ubfx	x1, x19, #6, #1
	orr	x0, x0, x1, lsl #27
	ret

	.section .rodata
	.globl	guest_name
guest_name:	.asciz	"fpu"

	.data
	.balign	8
count:	.quad	0

	.bss
	.balign	256
pat:	.skip	32 * 256                /* Z0-Z31 at up to 2048 bits (stride: VL, or 16) */
got:	.skip	32 * 256
ppat:	.skip	17 * 32                 /* P0-P15, FFR at up to 256 bits (stride: PL) */
	.balign	64
pgot:	.skip	17 * 32
