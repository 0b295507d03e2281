/* Context switch for aarch64, AAPCS64 (Linux, ELF).
 *
 * mm__ctx_switch(from, to) saves what the procedure call standard says a
 * callee must preserve -- x19-x28, the frame pointer x29, the link
 * register x30, the stack pointer, the low 64 bits of v8-v15 (d8-d15) --
 * and the floating-point control register FPCR (rounding mode, flush to
 * zero, default NaN), on the running stack; stores the stack pointer in
 * from->sp, loads to->sp and restores the same set from there.  x18 is the
 * platform register and is left alone; everything else is caller-saved, so
 * the C compiler has already dealt with it.  FPSR, the sticky exception
 * flags, is not switched: a flag raised before a suspension may be seen
 * by another coroutine (the x86-64 port carries MXCSR's flags along with
 * its control bits only because they share one register).
 *
 * Writing FPCR may synchronise the pipeline, and nearly always the two
 * contexts hold the same value, so it is written only when they differ
 * (the same shortcut as lib/switch-x86_64.S).
 *
 * A suspended stack, from the saved sp upwards (176 bytes, 16-aligned):
 *
 *     sp + 0    x19      (a fresh context: the entry function)
 *     sp + 8    x20      (a fresh context: the entry's argument)
 *     sp + 16   x21, x22
 *     sp + 32   x23, x24
 *     sp + 48   x25, x26
 *     sp + 64   x27, x28
 *     sp + 80   x29      (a fresh context: 0, ends frame-pointer walks)
 *     sp + 88   x30      (a fresh context: mm__ctx_trampoline)
 *     sp + 96   d8, d9
 *     sp + 112  d10, d11
 *     sp + 128  d12, d13
 *     sp + 144  d14, d15
 *     sp + 160  FPCR
 *     sp + 168  0 (padding)
 *
 * The resume is `ret` through x30: every switch of the library is made
 * from one call site (fiber_switch in sched.c), so the return predictor
 * is right, and a `br` would leave it one entry off for every return
 * that follows.  lib/context-asm.c builds the frame of a fresh context.
 */
        .text

        .globl  mm__ctx_switch
        .hidden mm__ctx_switch
        .type   mm__ctx_switch, %function
        .p2align 4
mm__ctx_switch:
        .cfi_startproc
        sub     sp, sp, #176
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        stp     d8, d9, [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        mrs     x9, fpcr                /* x9, x10: caller-saved scratch */
        str     x9, [sp, #160]
        mov     x10, sp
        str     x10, [x0]
        ldr     x10, [x1]
        mov     sp, x10
        ldr     x10, [sp, #160]
        cmp     x9, x10
        b.ne    2f
1:      ldp     x19, x20, [sp, #0]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        ldp     d8, d9, [sp, #96]
        ldp     d10, d11, [sp, #112]
        ldp     d12, d13, [sp, #128]
        ldp     d14, d15, [sp, #144]
        add     sp, sp, #176
        ret
2:      msr     fpcr, x10
        b       1b
        .cfi_endproc
        .size   mm__ctx_switch, .-mm__ctx_switch

/* The first switch to a fresh context "returns" here with sp at the top
 * of its stack, 16-byte aligned.  entry(arg) must never return; if it
 * does, the C side names the culprit and aborts. */
        .globl  mm__ctx_trampoline
        .hidden mm__ctx_trampoline
        .type   mm__ctx_trampoline, %function
        .p2align 4
mm__ctx_trampoline:
        .cfi_startproc
        .cfi_undefined x30
        mov     x0, x20
        blr     x19
        mov     x0, x20
        bl      mm__ctx_entry_returned
        brk     #0
        .cfi_endproc
        .size   mm__ctx_trampoline, .-mm__ctx_trampoline

        .section .note.GNU-stack,"",%progbits
