/* pio: PIO_COUNT port writes to 0x80 (each one a VM exit to the VMM), then power off through
 * port 0x501 (kvmsnap's power-off port; QEMU's isa-debug-exit at iobase 0x501). */
#include "guest.h"

	KVMSNAP_NOTE user_main, 3

	.text
	.globl	guest_main
guest_main:
	movq	$PIO_COUNT, %rcx
	movw	$0x80, %dx
1:	outb	%al, %dx
	decq	%rcx
	jnz	1b
	movw	$0x501, %dx
	outb	%al, %dx
	jmp	park
