/* timer (arm64): a tiny EL1 kernel. kernel_init (run by el1_entry on vCPU 0 at EL1) sets up the
 * interrupt controller: on a GICv3 (ID_AA64PFR0_EL1.GIC != 0) the distributor (ARE and both groups
 * on), this vCPU's redistributor (awake; PPI 27 group 1, priority 0x80, enabled) and the CPU
 * interface (SRE, PMR 0xff, EOImode 0, group 1 on); on a GICv2 (no system-register interface) the
 * distributor (PPI 27 priority 0x80, enabled, in group 0 as Linux leaves it; group 0 on) and the
 * memory-mapped CPU interface (PMR 0xff, group 0 on), whose address it keeps in gicc. It then
 * starts the virtual timer (CNTV_TVAL_EL0 = CNTFRQ_EL0 / 35, CNTV_CTL_EL0.ENABLE). el1_entry then
 * erets to the EL0 task with IRQs unmasked (user_spsr 0x340).
 * The IRQ handler acknowledges (ICC_IAR1_EL1 or GICC_IAR), re-arms the timer (CNTV_TVAL_EL0 =
 * CNTFRQ_EL0 / 35), increments irq_count (64-bit, in memory) and ends the interrupt (ICC_EOIR1_EL1
 * or GICC_EOIR). INTIDs 1020-1023 (spurious) are ignored; any other INTID prints "timer EXCEPTION
 * intid <n>" and halts, as do the other exceptions ("timer EXCEPTION <vector> esr ...", common.S).
 * EL0 task rule: each time it sees irq_count change it prints "timer tick N" where N is its own
 * print index 1, 2, 3, ... (several interrupts between two looks count as one line). It checks that
 * irq_count never decreases ("timer MISMATCH irq count"), that its print index in x19 matches the
 * copy in memory ("timer MISMATCH print counter"), and that irq_count advances at least once every
 * 3 s of CNTVCT_EL0 ("timer STALLED", repeated every 3 s while stuck). */
	.include "macros.S"

	.equ	GICD_CTLR, 0x0000
	.equ	GICD_CTLR_RWP, 1 << 31
	.equ	GICR_WAKER, 0x0014              /* in RD_base */
	.equ	GICR_IGROUPR0, 0x0080           /* in SGI_base */
	.equ	GICR_ISENABLER0, 0x0100
	.equ	GICR_IPRIORITYR, 0x0400
	.equ	GICD_ISENABLER0, 0x0100         /* GICv2: INTIDs 0-31 banked per vCPU in the distributor */
	.equ	GICD_IPRIORITYR, 0x0400
	.equ	GICC_CTLR, 0x0000               /* GICv2 CPU interface */
	.equ	GICC_PMR, 0x0004
	.equ	GICC_IAR, 0x000c
	.equ	GICC_EOIR, 0x0010
	.equ	STALL_SECONDS, 3

/* ---------------------------------------------------------------- EL1 */
	.text
	.globl	kernel_init                     /* overrides the weak default in common.S */
kernel_init:                                    /* x0 = vCPU index; may clobber x0-x18 */
	cbnz	x0, 9f                          /* only vCPU 0 runs (no other vCPU is started) */
	mrs	x2, id_aa64pfr0_el1
	ubfx	x2, x2, #24, #4                 /* GIC: 0 = no system-register interface */
	cbz	x2, 5f
	/* distributor: off, then ARE | EnableGrp1 | EnableGrp0 (= ARE_NS | EnableGrp1A | EnableGrp1
	 * in the Non-secure view of a GIC with two security states): Linux's value */
	mov	x1, #GICD_BASE
	str	wzr, [x1, #GICD_CTLR]
1:	ldr	w2, [x1, #GICD_CTLR]
	tbnz	w2, #31, 1b                     /* RWP */
	mov	w2, #0x13
	str	w2, [x1, #GICD_CTLR]
2:	ldr	w2, [x1, #GICD_CTLR]
	tbnz	w2, #31, 2b

	/* this vCPU's redistributor (vCPU 0: the first one): wake it */
	MOV64	x1, GICR_BASE
	ldr	w2, [x1, #GICR_WAKER]
	and	w2, w2, #~(1 << 1)              /* ProcessorSleep = 0 */
	str	w2, [x1, #GICR_WAKER]
3:	ldr	w2, [x1, #GICR_WAKER]
	tbnz	w2, #2, 3b                      /* until ChildrenAsleep = 0 */
	/* SGI_base: INTID 27 in group 1, priority 0x80, enabled */
	add	x1, x1, #0x10000
	ldr	w2, [x1, #GICR_IGROUPR0]
	orr	w2, w2, #(1 << TIMER_INTID)
	str	w2, [x1, #GICR_IGROUPR0]
	ldr	w2, [x1, #(GICR_IPRIORITYR + (TIMER_INTID & ~3))]
	and	w2, w2, #~(0xff << (8 * (TIMER_INTID & 3)))
	orr	w2, w2, #(0x80 << (8 * (TIMER_INTID & 3)))
	str	w2, [x1, #(GICR_IPRIORITYR + (TIMER_INTID & ~3))]
	mov	w2, #(1 << TIMER_INTID)
	str	w2, [x1, #GICR_ISENABLER0]

	/* CPU interface (system registers) */
	mrs	x2, icc_sre_el1
	orr	x2, x2, #1                      /* SRE */
	msr	icc_sre_el1, x2
	isb
	mov	x2, #0xff
	msr	icc_pmr_el1, x2                 /* let every priority through */
	msr	icc_bpr1_el1, xzr
	msr	icc_ctlr_el1, xzr               /* EOImode 0: EOIR drops priority and deactivates */
	mov	x2, #1
	msr	icc_igrpen1_el1, x2
	isb
	b	6f

	/* GICv2: INTID 27 priority 0x80, enabled; the distributor and the CPU interface on (group 0) */
5:	mov	x1, #GICD_BASE
	ldr	w2, [x1, #(GICD_IPRIORITYR + (TIMER_INTID & ~3))]
	and	w2, w2, #~(0xff << (8 * (TIMER_INTID & 3)))
	orr	w2, w2, #(0x80 << (8 * (TIMER_INTID & 3)))
	str	w2, [x1, #(GICD_IPRIORITYR + (TIMER_INTID & ~3))]
	mov	w2, #(1 << TIMER_INTID)
	str	w2, [x1, #GICD_ISENABLER0]
	mov	w2, #1                          /* Enable (group 0) */
	str	w2, [x1, #GICD_CTLR]
	MOV64	x1, GICC_BASE
	mov	w2, #0xff
	str	w2, [x1, #GICC_PMR]
	mov	w2, #1                          /* EnableGrp0; EOImode 0 */
	str	w2, [x1, #GICC_CTLR]
	ADDR	x2, gicc
	str	x1, [x2]

	/* the virtual timer: first interrupt in 1/35 s */
6:	stp	x19, x30, [sp, #-16]!
	bl	tick_cycles
	msr	cntv_tval_el0, x0
	mov	x0, #1                          /* ENABLE, IMASK = 0 */
	msr	cntv_ctl_el0, x0
	isb
	ldp	x19, x30, [sp], #16
9:	ret

/* irq_handler(x0 = vector number): the entry (common.S) saved x0-x18, x29, x30. */
	.globl	irq_handler                     /* overrides the weak default in common.S */
irq_handler:
	stp	x19, x30, [sp, #-16]!
	ADDR	x1, gicc
	ldr	x1, [x1]
	cbnz	x1, 1f
	mrs	x19, icc_iar1_el1
	b	4f
1:	ldr	w19, [x1, #GICC_IAR]            /* INTID in bits 9:0 (a PPI's CPUID bits are 0) */
4:	cmp	x19, #1020
	b.hs	2f                              /* spurious: nothing to end */
	cmp	x19, #TIMER_INTID
	b.ne	3f
	bl	tick_cycles                     /* re-arm: the next interrupt in 1/35 s */
	msr	cntv_tval_el0, x0
	isb                                     /* the level drops before EOI */
	ADDR	x1, irq_count
	ldr	x2, [x1]
	add	x2, x2, #1
	str	x2, [x1]
	bl	end_irq
2:	ldp	x19, x30, [sp], #16
	ret
3:	bl	end_irq
	PUTS	"timer EXCEPTION intid "
	PUTDEC	x19
	PUTS	"\n"
	b	park_el1

/* end_irq(x19 = the acknowledged interrupt): its end of interrupt, to the GIC in use */
end_irq:
	ADDR	x1, gicc
	ldr	x1, [x1]
	cbnz	x1, 1f
	msr	icc_eoir1_el1, x19
	ret
1:	str	w19, [x1, #GICC_EOIR]
	ret

/* ---------------------------------------------------------------- EL0 task */
	.globl	guest_main
guest_main:
	ADDR	x22, irq_count
	ADDR	x23, printed
	ldr	x19, [x23]                      /* lines printed so far */
	ldr	x20, [x22]                      /* last interrupt count seen */
	mrs	x21, cntvct_el0                 /* counter when it last changed */
1:	ldr	x0, [x22]
	cmp	x0, x20
	b.eq	3f
	b.lo	.Lback
	mov	x20, x0
	mrs	x21, cntvct_el0
	ldr	x0, [x23]
	cmp	x0, x19
	b.ne	.Lbad_printed
2:	add	x19, x19, #1
	str	x19, [x23]
	PUTS	"timer tick "
	PUTDEC	x19
	PUTS	"\n"
	b	1b
3:	yield
	mrs	x0, cntvct_el0
	sub	x0, x0, x21
	mrs	x1, cntfrq_el0
	mov	x2, #STALL_SECONDS
	mul	x1, x1, x2
	cmp	x0, x1
	b.lo	1b
	PUTS	"timer STALLED\n"
	mrs	x21, cntvct_el0
	b	1b

.Lback:
	PUTS	"timer MISMATCH irq count\n"
	mov	x20, x0
	b	1b
.Lbad_printed:
	PUTS	"timer MISMATCH print counter\n"
	mov	x19, x0
	b	2b

	.section .rodata
	.globl	guest_name
guest_name:	.asciz	"timer"

/* ---------------------------------------------------------------- data */
	.data
	.balign	8
	.globl	user_spsr                       /* overrides the weak default: EL0t, IRQs unmasked */
user_spsr:	.quad	0x340
irq_count:	.quad	0
gicc:		.quad	0                       /* the GICv2 CPU interface's address; 0 on a GICv3 */
printed:	.quad	0
