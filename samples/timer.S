/* timer: a tiny CPL0 kernel. kernel_init (run by start64 at CPL0) masks the 8259 PICs, installs
 * an IDT (every vector has a stub; 0x40 = LAPIC timer, 0xff = spurious, anything else prints
 * "timer EXCEPTION <vec> rip 0x<rip>" and halts), enables the LAPIC (SVR = 0x1ff) and its timer
 * in periodic mode (vector 0x40, divide by 16, initial count TIMER_COUNT: ~30 Hz with a 1 GHz
 * APIC bus). start64 then iretqs to the user task with IF=1, IOPL=3.
 * The interrupt handler only increments irq_count (64-bit, in memory), writes EOI and iretqs.
 * User task rule: each time it sees irq_count change it prints "timer tick N" where N is its own
 * print index 1, 2, 3, ... (several interrupts between two looks count as one line). It checks
 * that irq_count never decreases ("timer MISMATCH irq count") and that it advances at least once
 * every STALL_CYCLES TSC cycles ("timer STALLED", repeated every STALL_CYCLES while stuck). */
#include "guest.h"

	KVMSNAP_NOTE start64, 0         /* kernel: kvmsnap enters start64 at CPL0 */

#define LAPIC           0xfee00000
#define TIMER_VECTOR    0x40
#define TIMER_COUNT     0x200000        /* / (1 GHz / 16) = ~33.5 ms */
#define STALL_CYCLES    (1 << 33)       /* ~3 s of TSC */

/* ---------------------------------------------------------------- CPL0 */
	.text
	.globl	kernel_init             /* overrides the weak default in common.S */
kernel_init:
	movb	$0xff, %al              /* mask both 8259s (QEMU's BIOS leaves the PIT on IRQ0) */
	outb	%al, $0x21
	outb	%al, $0xa1

	leaq	idt(%rip), %rdi
	leaq	isr_stubs(%rip), %rsi
	movl	$256, %ecx
1:	call	set_gate
	addq	$16, %rdi
	addq	$16, %rsi
	decl	%ecx
	jnz	1b
	leaq	idt+16*TIMER_VECTOR(%rip), %rdi
	leaq	timer_isr(%rip), %rsi
	call	set_gate
	leaq	idt+16*0xff(%rip), %rdi
	leaq	spurious_isr(%rip), %rsi
	call	set_gate
	lidt	idt_ptr(%rip)

	movl	$LAPIC, %eax
	movl	$0x1ff, 0xf0(%rax)      /* SVR: software enable, spurious vector 0xff */
	movl	$0x3, 0x3e0(%rax)       /* divide configuration: by 16 */
	movl	$(0x20000 | TIMER_VECTOR), 0x320(%rax)  /* LVT timer: periodic */
	movl	$TIMER_COUNT, 0x380(%rax)               /* initial count: starts the timer */
	ret

/* 64-bit interrupt gate at rdi -> handler rsi (CS 0x08, DPL0, no IST) */
set_gate:
	pushq	%rax
	pushq	%rdx
	movq	%rsi, %rax
	andl	$0xffff, %eax
	movabsq	$0x00008e0000000000 + (SEL_KCODE << 16), %rdx
	orq	%rdx, %rax
	movq	%rsi, %rdx
	andl	$0xffff0000, %edx
	shlq	$32, %rdx
	orq	%rdx, %rax
	movq	%rax, (%rdi)
	movq	%rsi, %rax
	shrq	$32, %rax
	movq	%rax, 8(%rdi)
	popq	%rdx
	popq	%rax
	ret

timer_isr:
	pushq	%rax
	incq	irq_count(%rip)
	movl	$(LAPIC + 0xb0), %eax
	movl	$0, (%rax)              /* EOI */
	popq	%rax
	iretq

spurious_isr:
	iretq

/* one 16-byte stub per vector: push a dummy error code where the CPU pushes none, then
 * the vector number */
	.balign	16
isr_stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	.if !((vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30))
	pushq	$0
	.endif
	pushq	$vec
	jmp	exc_common
	.set	vec, vec + 1
	.endr

exc_common:                             /* stack: vec, error code, rip, cs, rflags, rsp, ss */
	movq	(%rsp), %rbx
	movq	16(%rsp), %rcx
	PUTS	"timer EXCEPTION "
	PUTDEC	%rbx
	PUTS	" rip 0x"
	PUTHEX	%rcx
	PUTS	"\n"
	jmp	halt_forever

/* ---------------------------------------------------------------- CPL3 user task */
	.globl	guest_main
guest_main:
	movq	printed(%rip), %r12     /* lines printed so far */
	movq	irq_count(%rip), %r13   /* last interrupt count seen */
	RDTSC64
	movq	%rax, %r14              /* TSC when it last changed */
1:	movq	irq_count(%rip), %rax
	cmpq	%r13, %rax
	je	3f
	jb	.Lback
	movq	%rax, %r13
	RDTSC64
	movq	%rax, %r14
	cmpq	printed(%rip), %r12
	jne	.Lbad_printed
2:	incq	%r12
	movq	%r12, printed(%rip)
	PUTS	"timer tick "
	PUTDEC	%r12
	PUTS	"\n"
	jmp	1b
3:	pause
	RDTSC64
	subq	%r14, %rax
	movabsq	$STALL_CYCLES, %rdx
	cmpq	%rdx, %rax
	jb	1b
	PUTS	"timer STALLED\n"
	RDTSC64
	movq	%rax, %r14
	jmp	1b

.Lback:
	PUTS	"timer MISMATCH irq count\n"
	movq	%rax, %r13
	jmp	1b
.Lbad_printed:
	PUTS	"timer MISMATCH print counter\n"
	movq	printed(%rip), %r12
	jmp	2b

/* ---------------------------------------------------------------- data */
	.data
	.balign	8
	.globl	user_rflags             /* overrides the weak default: IF=1, IOPL=3 */
user_rflags:	.quad	0x3202
irq_count:	.quad	0
printed:	.quad	0
	.balign	8
idt_ptr:	.word	256 * 16 - 1
		.quad	idt

	.bss
	.balign	4096
idt:		.skip	256 * 16
