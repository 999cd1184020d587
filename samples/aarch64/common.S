/* Shared part of every arm64 sample guest: the EL1 entry (_start, and secondary_entry for PSCI
 * CPU_ON), the EL1 exception vectors, user_main (EL0), the console and the tick wait.
 *
 * A guest object provides `guest_main` (EL0; x0 = vCPU index, own stack already set) and
 * `guest_name` (NUL-terminated, for EXCEPTION lines). It may override the weak `kernel_init`
 * (EL1 hook, x0 = vCPU index, may clobber x0-x18), `irq_handler` (EL1, x0 = vector number; the
 * entry has saved x0-x18, x29 and x30) and `user_spsr` (SPSR for the eret to EL0).
 *
 * MMU off throughout (Device-nGnRnE data accesses: aligned, no exclusives). .bss is not assumed
 * to be zeroed: anything that must start at zero lives in .data. */
	.include "macros.S"

	/* SCTLR_EL1: the ARMv8.0 RES1 bits (29 28 23 22 20 11), I (12), nTWI and nTWE (16, 18: EL0 may
	 * wfi/wfe), SA and SA0 (3, 4: stack alignment), and A (1): every access must be aligned to its
	 * size, which Device memory requires anyway, but QEMU (7.2) only checks with A set. M = C = 0
	 * (MMU and data cache off), little-endian, EL0 cannot touch DAIF. */
	.equ	SCTLR_VALUE, 0x30d00800 | (1 << 12) | (1 << 16) | (1 << 18) | (1 << 3) | (1 << 4) | (1 << 1)

/* ---------------------------------------------------------------- EL1 entry */
/* vCPU 0 (e_entry): EL1h, MMU off, DAIF masked, x0 = FDT (unused). */
	.section .text.boot, "ax"
	.globl	_start
_start:
	msr	daifset, #0xf
	mrs	x1, mpidr_el1
	MOV64	x2, 0xff00ffffff                /* Aff3..Aff0 */
	and	x1, x1, x2
	cbnz	x1, park_el1                    /* only vCPU 0 boots here; the others come through CPU_ON */
	mov	x0, #0
	b	el1_entry

/* PSCI CPU_ON target: EL1h, MMU off, x0 = context = vCPU index (smp passes it). */
	.globl	secondary_entry
secondary_entry:
	msr	daifset, #0xf
	b	el1_entry

	.text
/* x0 = vCPU index. Sets up this vCPU's EL1 state, runs kernel_init, erets to user_main at EL0. */
el1_entry:
	msr	spsel, #1
	mov	x19, x0
	mrs	x1, CurrentEL
	cmp	x1, #(1 << 2)
	b.ne	bad_el
	cmp	x19, #MAX_CPUS
	b.hs	park_el1
	MOV64	x1, SCTLR_VALUE
	msr	sctlr_el1, x1
	isb
	ADDR	x1, kstacks                     /* top of this vCPU's EL1 stack */
	add	x2, x19, #1
	add	x1, x1, x2, lsl #KSTACK_SHIFT
	mov	sp, x1
	ADDR	x1, vectors
	msr	vbar_el1, x1
	/* CPACR_EL1: FP/SIMD for EL0 and EL1 (FPEN), and SVE (ZEN) when ID_AA64PFR0_EL1.SVE != 0 */
	mrs	x1, id_aa64pfr0_el1
	ubfx	x1, x1, #32, #4
	mov	x2, #(3 << 20)
	cbz	x1, 1f
	orr	x2, x2, #(3 << 16)
1:	msr	cpacr_el1, x2
	isb
	mov	x2, #0                          /* SVE vector length in bytes, 0 = no SVE */
	cbz	x1, 2f
	mov	x2, #0x1ff                      /* ZCR_EL1.LEN: the largest length the CPU offers */
	msr	zcr_el1, x2
	isb
	rdvl	x2, #1
2:	ADDR	x1, sve_vl
	str	x2, [x1]
	mov	x1, #(1 << 1)                   /* CNTKCTL_EL1.EL0VCTEN: EL0 reads CNTVCT_EL0, CNTFRQ_EL0 */
	msr	cntkctl_el1, x1
	msr	tpidr_el1, x19                  /* vCPU index, for the exception handlers */

	mov	x0, x19
	bl	kernel_init

	/* to EL0: user_main(x0 = vCPU index); it sets its own stack */
	ADDR	x1, user_spsr
	ldr	x1, [x1]
	msr	spsr_el1, x1
	ADDR	x1, user_main
	msr	elr_el1, x1
	msr	sp_el0, xzr
	mov	x0, x19
	eret

bad_el:                                         /* not EL1 (QEMU -M virt,virtualization=on: EL2) */
	lsr	x19, x1, #2
	ADDR	x1, kstacks + (1 << KSTACK_SHIFT)     /* vCPU 0's stack, good enough to print */
	mov	sp, x1
	ADDR	x0, guest_name
	bl	print_str
	PUTS	" EXCEPTION entered at EL"
	PUTDEC	x19
	PUTS	", not EL1\n"
	.globl	park_el1
park_el1:
	msr	daifset, #0xf
	wfi
	b	park_el1

/* Default EL1 hook (smp and timer override it). */
	.weak	kernel_init
kernel_init:
	ret

/* ---------------------------------------------------------------- EL1 exception vectors */
/* Vector number = offset / 0x80: 0-3 current EL with SP_EL0, 4-7 current EL with SP_ELx,
 * 8-11 lower EL AArch64, 12-15 lower EL AArch32; within each group sync, IRQ, FIQ, SError.
 * IRQs (5, 9) go to irq_handler; an SVC #0 from EL0 (8) is PSCI SYSTEM_OFF; anything else prints
 * "<guest> EXCEPTION <vector> esr 0x<ESR_EL1> elr 0x<ELR_EL1> far 0x<FAR_EL1>" and halts the vCPU. */
	.balign	2048
vectors:
	.set	vec, 0
	.rept	16
	.balign	128
	.if	vec == 5
	b	irq_entry_5
	.elseif	vec == 9
	b	irq_entry_9
	.elseif	vec == 8
	b	el0_sync
	.else
	mov	x0, #vec
	b	exc_report
	.endif
	.set	vec, vec + 1
	.endr

/* The IRQ entries, one per vector number (5, 9): save the caller-saved registers, call
 * irq_handler(x0 = vector number), restore, eret. */
.macro IRQ_ENTRY n
irq_entry_\n:
	sub	sp, sp, #(12 * 16)
	stp	x0, x1, [sp, #0]
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x29, [sp, #144]
	str	x30, [sp, #160]
	mov	x0, #\n
	bl	irq_handler
	ldp	x0, x1, [sp, #0]
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldp	x6, x7, [sp, #48]
	ldp	x8, x9, [sp, #64]
	ldp	x10, x11, [sp, #80]
	ldp	x12, x13, [sp, #96]
	ldp	x14, x15, [sp, #112]
	ldp	x16, x17, [sp, #128]
	ldp	x18, x29, [sp, #144]
	ldr	x30, [sp, #160]
	add	sp, sp, #(12 * 16)
	eret
.endm
	IRQ_ENTRY 5
	IRQ_ENTRY 9

/* Synchronous exception from EL0: SVC #0 powers off (PSCI SYSTEM_OFF), anything else is fatal. */
el0_sync:
	mrs	x0, esr_el1
	lsr	x1, x0, #26                     /* EC */
	cmp	x1, #0x15                       /* SVC from AArch64 */
	b.ne	1f
	tst	x0, #0xffff                     /* imm16 */
	b.ne	1f
	MOV64	x0, PSCI_SYSTEM_OFF
	hvc	#0
1:	mov	x0, #8
	/* fall through */

/* Unexpected exception, x0 = vector number: report it and halt this vCPU (EL1, all masked). */
	.globl	exc_report
exc_report:
	mov	x19, x0
	mrs	x20, esr_el1
	mrs	x21, elr_el1
	mrs	x22, far_el1
	mrs	x1, tpidr_el1                   /* vCPU index: report on this vCPU's own EL1 stack */
	and	x1, x1, #(MAX_CPUS - 1)
	add	x1, x1, #1
	ADDR	x2, kstacks
	add	x1, x2, x1, lsl #KSTACK_SHIFT
	mov	sp, x1
	ADDR	x0, guest_name
	bl	print_str
	PUTS	" EXCEPTION "
	PUTDEC	x19
	PUTS	" esr 0x"
	PUTHEX	x20
	PUTS	" elr 0x"
	PUTHEX	x21
	PUTS	" far 0x"
	PUTHEX	x22
	PUTS	"\n"
	b	park_el1

/* Default IRQ handler (timer overrides it): no guest expects an interrupt. */
	.weak	irq_handler
irq_handler:
	b	exc_report

/* ---------------------------------------------------------------- user_main (EL0) */
/* eret target of el1_entry. x0 = vCPU index, SP_EL0 = anything: switch to this vCPU's own stack
 * first, then call guest_main(x0 = vCPU index). */
	.globl	user_main
user_main:
	cmp	x0, #MAX_CPUS
	b.hs	park
	ADDR	x1, ustacks
	add	x2, x0, #1
	add	x1, x1, x2, lsl #USTACK_SHIFT
	mov	sp, x1
	mov	x29, #0
	mov	x30, #0
	bl	guest_main
	.globl	park
park:	yield                           /* EL0 spins; it does not need wfi */
	b	park

/* ---------------------------------------------------------------- console (EL0 or EL1) */
/* PL011 UARTDR at UART_BASE. TXFF is not polled (the contract's UART is always ready). All print
 * routines preserve every register (flags excepted). */
	.globl	print_char                      /* w0 */
print_char:
	stp	x1, x2, [sp, #-16]!
	mov	x1, #UART_BASE
	strb	w0, [x1]
	ldp	x1, x2, [sp], #16
	ret

	.globl	print_str                       /* x0 = NUL-terminated string */
print_str:
	stp	x0, x1, [sp, #-32]!
	stp	x2, x30, [sp, #16]
	mov	x1, x0
	mov	x2, #UART_BASE
1:	ldrb	w0, [x1], #1
	cbz	w0, 2f
	strb	w0, [x2]
	b	1b
2:	ldp	x2, x30, [sp, #16]
	ldp	x0, x1, [sp], #32
	ret

	.globl	print_dec                       /* x0, unsigned decimal */
print_dec:
	stp	x0, x1, [sp, #-64]!
	stp	x2, x3, [sp, #16]
	stp	x4, x30, [sp, #32]
	sub	sp, sp, #32                     /* digit buffer */
	add	x1, sp, #31
	strb	wzr, [x1]
	mov	x2, #10
1:	udiv	x3, x0, x2
	msub	x4, x3, x2, x0                  /* x4 = x0 % 10 */
	add	w4, w4, #'0'
	sub	x1, x1, #1
	strb	w4, [x1]
	mov	x0, x3
	cbnz	x0, 1b
	mov	x0, x1
	bl	print_str
	add	sp, sp, #32
	ldp	x4, x30, [sp, #32]
	ldp	x2, x3, [sp, #16]
	ldp	x0, x1, [sp], #64
	ret

	.globl	print_hex                       /* x0, lower-case hex without leading zeros or 0x */
print_hex:
	stp	x0, x1, [sp, #-48]!
	stp	x2, x30, [sp, #16]
	sub	sp, sp, #32                     /* digit buffer */
	add	x1, sp, #31
	strb	wzr, [x1]
1:	and	x2, x0, #15
	cmp	x2, #10
	b.lo	2f
	add	x2, x2, #('a' - '0' - 10)
2:	add	x2, x2, #'0'
	sub	x1, x1, #1
	strb	w2, [x1]
	lsr	x0, x0, #4
	cbnz	x0, 1b
	mov	x0, x1
	bl	print_str
	add	sp, sp, #32
	ldp	x2, x30, [sp, #16]
	ldp	x0, x1, [sp], #48
	ret

/* ---------------------------------------------------------------- pacing (EL0) */
/* Wait until CNTFRQ_EL0 / TICKS_PER_SEC counts of CNTVCT_EL0 have passed since the call. Only
 * GPRs; all preserved (flags excepted). Snapshot-safe: the start lives in a register and
 * (now - start) is unsigned, so a counter that jumps forward or backward ends the wait instead of
 * hanging it; CNTFRQ_EL0 is read on every call. */
	.globl	tick_wait
tick_wait:
	stp	x0, x1, [sp, #-32]!
	stp	x2, x30, [sp, #16]
	bl	tick_cycles
	isb
	mrs	x1, cntvct_el0
1:	yield
	isb
	mrs	x2, cntvct_el0
	sub	x2, x2, x1
	cmp	x2, x0
	b.lo	1b
	ldp	x2, x30, [sp, #16]
	ldp	x0, x1, [sp], #32
	ret

/* x0 = counter ticks per guest tick: CNTFRQ_EL0 / TICKS_PER_SEC (EL0 or EL1; only x0, x1). */
	.globl	tick_cycles
tick_cycles:
	mrs	x0, cntfrq_el0
	cbnz	x0, 1f
	MOV64	x0, DEFAULT_CNTFRQ
1:	mov	x1, #TICKS_PER_SEC
	udiv	x0, x0, x1
	ret

/* ---------------------------------------------------------------- data */
	.data
	.balign	8
	.weak	user_spsr
user_spsr:
	.quad	0x3c0                   /* EL0t, DAIF all masked (timer: 0x340, IRQs unmasked) */
	.globl	sve_vl
sve_vl:
	.quad	0                       /* SVE vector length in bytes (0 = no SVE), set by el1_entry */

	.bss
	.balign	4096
kstacks:	.skip	MAX_CPUS << KSTACK_SHIFT
ustacks:	.skip	MAX_CPUS << USTACK_SHIFT
