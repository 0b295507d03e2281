/* Context switch for x86-64, System V ABI.
 *
 * mm__ctx_switch(from, to) saves what the ABI says a callee must preserve
 * -- rbx, rbp, r12-r15, the stack pointer, MXCSR's control bits and the x87
 * control word -- on the running stack, stores the stack pointer in
 * from->sp, loads to->sp and restores the same set from there.  Everything
 * else is caller-saved, so the C compiler has already dealt with it.
 *
 * Loading MXCSR and the x87 control word is slow (fldcw is microcoded),
 * and nearly always the two contexts hold the same values, so they are
 * compared as one 8-byte word and loaded only when they differ.
 *
 * A suspended stack, from the saved sp upwards (8-byte slots):
 *
 *     sp + 0   MXCSR (4 bytes) | x87 control word (2 bytes) | 0 (2 bytes)
 *     sp + 8   r15
 *     sp + 16  r14
 *     sp + 24  r13      (a fresh context: the entry's argument)
 *     sp + 32  r12      (a fresh context: the entry function)
 *     sp + 40  rbx
 *     sp + 48  rbp
 *     sp + 56  return address  (a fresh context: mm__ctx_trampoline)
 *
 * lib/context-asm.c builds that frame for a fresh context.
 *
 * The resume is `ret`, not a pop and an indirect jump.  Every switch of
 * the library is made from one call site (fiber_switch in sched.c), so
 * the return-stack predictor is right at this `ret`; a jump would be
 * predicted too, but would leave the return stack one entry off for each
 * return that follows (out of the scheduler, out of mm_yield, ...).
 * bench/switch, CPU per mm_yield in interleaved runs on one machine:
 * 11-13 ns with `ret`, 18-23 ns with the jump from one call site; 15-17
 * against 18-23 ns from two, where the user's own return mispredicts
 * either way.  The bare switch, with no returns after it, costs the same
 * either way from one site (the jump wins from two: 6.7 against 9.1 ns).
 * bench/switch shows why on the bare switch too: from two sites with a
 * return after each switch, `ret` costs 9.4-10.4 ns and the jump
 * 11.6-13.4, every return after it taking the entry its call left.
 *
 * The same source assembles for Mach-O (macOS): symbols take a leading
 * underscore there, visibility is .private_extern, and ELF's .type, .size
 * and .note.GNU-stack do not exist; the macros below hide the difference.
 */
#if defined(__APPLE__)
# define SYM(name) _##name
# define FUNC_BEGIN(name) \
        .globl SYM(name); .private_extern SYM(name); .p2align 4; SYM(name):
# define FUNC_END(name)
#else
# define SYM(name) name
# define FUNC_BEGIN(name) \
        .globl name; .hidden name; .type name, @function; .p2align 4; name:
# define FUNC_END(name) .size name, .-name
#endif

        .text

FUNC_BEGIN(mm__ctx_switch)
        .cfi_startproc
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        pushq   $0                      /* the FP slot, top bytes zero */
        stmxcsr (%rsp)
        fnstcw  4(%rsp)
        /* rax, rdx: caller-saved scratch.  Each half is read back at
         * the size it was stored with: one 8-byte load of the two
         * narrower stores cannot be forwarded from the store buffer and
         * waited for them to reach the cache, which made the switch
         * ~40% slower (bench/switch). */
        movl    (%rsp), %eax
        movzwl  4(%rsp), %edx
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rsp, (%rdi)
        movq    (%rsi), %rsp
        cmpq    (%rsp), %rax
        jne     2f
1:      addq    $8, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
2:      ldmxcsr (%rsp)
        fldcw   4(%rsp)
        jmp     1b
        .cfi_endproc
FUNC_END(mm__ctx_switch)

/* The first switch to a fresh context "returns" here with the stack
 * 16-byte aligned.  entry(arg) must never return; if it does, the C side
 * names the culprit and aborts. */
FUNC_BEGIN(mm__ctx_trampoline)
        .cfi_startproc
        .cfi_undefined rip
        movq    %r13, %rdi
        callq   *%r12
        movq    %r13, %rdi
        callq   SYM(mm__ctx_entry_returned)
        ud2
        .cfi_endproc
FUNC_END(mm__ctx_trampoline)

#if defined(__ELF__)
        .section .note.GNU-stack,"",@progbits
#endif
