/* realmode: 16-bit real-mode boot sector, loaded and entered at 0000:7c00.
 * Prints "realmode tick N" for N = 0, 1, 2, ... (32-bit decimal), one per 2^26 TSC cycles.
 * Self-check: N lives in ebx and in memory, and DS/ES/SS must stay 0; else it prints
 * "realmode tick N MISMATCH <what>" and resyncs. */
#define COM1 0x3f8
#define TICK_CYCLES (1 << 26)

	.code16
	.text
	.globl	start
start:
	cli
	cld
	xorw	%ax, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	$0x7c00, %sp
	ljmp	$0, $1f                 /* normalise CS:IP to 0000:7cxx */
1:	movl	count, %ebx

tick:	movw	$s_tick, %si
	call	puts
	movl	%ebx, %eax
	call	putdec
	movw	$s_nl, %si
	call	puts

	/* wait until (rdtsc - start) >= TICK_CYCLES, unsigned 64-bit (start in edi:esi) */
	rdtsc
	movl	%eax, %esi
	movl	%edx, %edi
2:	pause
	rdtsc
	subl	%esi, %eax
	sbbl	%edi, %edx
	jnz	3f
	cmpl	$TICK_CYCLES, %eax
	jb	2b
3:
	cmpl	count, %ebx
	movw	$s_mem, %si
	jne	bad
	movw	%ds, %ax
	movw	%es, %cx
	orw	%cx, %ax
	movw	%ss, %cx
	orw	%cx, %ax
	movw	$s_seg, %si
	jnz	bad
next:	incl	%ebx
	movl	%ebx, count
	jmp	tick

bad:	pushw	%si
	movw	$s_tick, %si
	call	puts
	movl	%ebx, %eax
	call	putdec
	movw	$s_mis, %si
	call	puts
	popw	%si
	call	puts
	xorw	%ax, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	$0x7c00, %sp
	jmp	next

/* print NUL-terminated string at ds:si */
puts:	pushw	%ax
	pushw	%dx
	movw	$COM1, %dx
1:	lodsb
	testb	%al, %al
	jz	2f
	outb	%al, %dx
	jmp	1b
2:	popw	%dx
	popw	%ax
	ret

/* print eax in decimal */
putdec:	pushl	%ecx
	pushl	%edx
	pushw	%si
	movw	$numbuf_end, %si
	movl	$10, %ecx
1:	xorl	%edx, %edx
	divl	%ecx
	addb	$'0', %dl
	decw	%si
	movb	%dl, (%si)
	testl	%eax, %eax
	jnz	1b
	call	puts
	popw	%si
	popl	%edx
	popl	%ecx
	ret

s_tick:	.asciz	"realmode tick "
s_nl:	.asciz	"\n"
s_mis:	.asciz	" MISMATCH "
s_mem:	.asciz	"memory\n"
s_seg:	.asciz	"segments\n"
	.balign	4
count:	.long	0
numbuf:	.fill	11, 1, 0
numbuf_end:
	.byte	0

	.org	510
	.byte	0x55, 0xaa

	.pushsection .note.GNU-stack, "", @progbits
	.popsection
