/* Shared definitions for the arm64 sample guests (GNU as; no C preprocessor: `.include "macros.S"`).
 * See docs/boot-protocol.md (arm64) for the machine and samples/README.md for the guests.
 *
 * The stage-1 MMU stays off at EL1 and EL0, so every data access is to Device-nGnRnE memory: all
 * accesses are aligned to their size, and no exclusives (ldxr/stxr), DC ZVA or unaligned loads. */

	.ifndef	MACROS_INCLUDED
	.set	MACROS_INCLUDED, 1

	.arch	armv8-a
	.arch_extension sve             /* only executed where ID_AA64PFR0_EL1.SVE says so */

	.equ	MAX_CPUS, 8                     /* per-vCPU stacks; smp starts vCPUs 1..MAX_CPUS-1 */
	.equ	KSTACK_SHIFT, 12                /* 4 KiB EL1 stack per vCPU */
	.equ	USTACK_SHIFT, 13                /* 8 KiB EL0 stack per vCPU */
	.equ	TICKS_PER_SEC, 35               /* tick_wait and timer: CNTFRQ_EL0 / 35 per tick */
	.equ	DEFAULT_CNTFRQ, 62500000        /* used only if CNTFRQ_EL0 reads 0 */

	.equ	UART_BASE, 0x09000000           /* PL011: UARTDR at +0, UARTFR at +0x18 */
	.equ	GICD_BASE, 0x08000000
	.equ	GICR_BASE, 0x080a0000           /* RD_base of vCPU i at GICR_BASE + i * GICR_STRIDE */
	.equ	GICR_STRIDE, 0x20000            /* RD_base frame, then SGI_base frame (+0x10000) */
	.equ	GICC_BASE, 0x08010000           /* GICv2 only: the CPU interface */
	.equ	TIMER_INTID, 27                 /* virtual timer PPI */

	.equ	PSCI_VERSION, 0x84000000
	.equ	PSCI_CPU_ON, 0xc4000003         /* SMC64: x1 = MPIDR, x2 = entry, x3 = context */
	.equ	PSCI_SYSTEM_OFF, 0x84000008
	.equ	PSCI_ALREADY_ON, -4

/* reg = 64-bit constant (movz/movk: no literal pool) */
.macro MOV64 reg, imm
	movz	\reg, #((\imm) & 0xffff)
	movk	\reg, #(((\imm) >> 16) & 0xffff), lsl #16
	movk	\reg, #(((\imm) >> 32) & 0xffff), lsl #32
	movk	\reg, #(((\imm) >> 48) & 0xffff), lsl #48
.endm

/* reg = address of sym (physical == virtual: the MMU is off) */
.macro ADDR reg, sym
	adrp	\reg, \sym
	add	\reg, \reg, #:lo12:\sym
.endm

/* Print a literal string on the UART (EL0 or EL1); preserves all registers, flags excepted. */
.macro PUTS s
	.pushsection .rodata.str, "aMS", @progbits, 1
.Lstr\@: .asciz "\s"
	.popsection
	stp	x0, x30, [sp, #-16]!
	ADDR	x0, .Lstr\@
	bl	print_str
	ldp	x0, x30, [sp], #16
.endm

/* Print a register in decimal / hex (no prefix); preserves all registers, flags excepted.
 * \reg must not be sp. */
.macro PUTNUM reg, print
	stp	x0, x30, [sp, #-16]!
	mov	x0, \reg
	bl	\print
	ldp	x0, x30, [sp], #16
.endm
.macro PUTDEC reg
	PUTNUM	\reg, print_dec
.endm
.macro PUTHEX reg
	PUTNUM	\reg, print_hex
.endm

/* No executable stack (silences ld). */
	.pushsection .note.GNU-stack, "", @progbits
	.popsection

	.endif
