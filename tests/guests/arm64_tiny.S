/* arm64_tiny: a bare-metal aarch64 guest for QEMU `-M virt -cpu cortex-a57` (TCG), loaded with
 * `-kernel arm64_tiny.elf` at EL1 with the MMU off.  It gives every general register, the stack
 * pointer, FPCR, FPSR and v0-v31 known values, then counts in x0 forever; the tests dump it with
 * QMP dump-guest-memory and compare `kvmsnap inspect` with gdb-multiarch.
 * Build: aarch64-linux-gnu-as -o arm64_tiny.o arm64_tiny.S
 *        aarch64-linux-gnu-ld -Ttext=0x40080000 -o arm64_tiny.elf arm64_tiny.o */
	.text
	.globl	_start
_start:
	mov	x1, #(3 << 20)		/* CPACR_EL1.FPEN: no FP/SIMD traps at EL1 */
	msr	cpacr_el1, x1
	isb
	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	mov	w2, #(0x40 + \n)
	dup	v\n\().16b, w2
	mov	w2, #(0x11 * (\n + 1))
	mov	v\n\().b[3], w2
	.endr
	mov	x1, #(1 << 22)		/* FPCR.RMode = toward +inf */
	msr	fpcr, x1
	mov	x1, #0x11		/* FPSR.IOC | FPSR.IXC */
	msr	fpsr, x1
	ldr	x1, =stack_top
	mov	sp, x1
	.irp	n, 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30
	movz	x\n, #(0x100 + \n)
	movk	x\n, #0xa64, lsl #48
	.endr
	mov	x0, #0
1:	add	x0, x0, #1
	b	1b

	.bss
	.balign	16
	.space	4096
stack_top:
