/* The context-switch port interface.
 *
 * A port provides three things: a context type, mm__ctx_make() to prepare a
 * fresh context that will call entry(arg) on a given stack, and
 * mm__ctx_switch() to save the running context and resume another.  Ports:
 * lib/switch-x86_64.S and lib/switch-aarch64.S (each + lib/context-asm.c),
 * and lib/switch-ucontext.c.  A new architecture is one more assembly
 * file, its frame in context-asm.c and a configure case.
 *
 * This layer knows nothing of coroutines, loops or sanitizers: the sanitizer
 * and Valgrind annotations live in the one pair of functions in sched.c that
 * wrap mm__ctx_switch().
 */
#ifndef MM_CONTEXT_H
#define MM_CONTEXT_H

#include <stddef.h>
#include "config.h"

#ifdef MM_CONTEXT_UCONTEXT
# include <ucontext.h>
typedef struct mm__ctx {
  ucontext_t uc;
} mm__ctx_t;
#else
/* Assembly ports keep everything on the suspended stack; the context is
 * the saved stack pointer. */
typedef struct mm__ctx {
  void *sp;
} mm__ctx_t;
#endif

/* entry must never return: it ends by switching away for the last time.
 * A port that sees it return stops the program with a message. */
typedef void (*mm__ctx_entry_fn)(void *arg);

/* Prepares ctx so that the first switch to it calls entry(arg) on the
 * stack [stack, stack + size).  size must leave room for one frame. */
void mm__ctx_make(mm__ctx_t *ctx, void *stack, size_t size,
                  mm__ctx_entry_fn entry, void *arg);

/* Saves the running context into from and resumes to.  Returns when some
 * later switch resumes from.  Preserves the callee-saved registers and the
 * floating-point control state (x86-64: MXCSR, x87 control word;
 * aarch64: FPCR) of each context separately. */
void mm__ctx_switch(mm__ctx_t *from, mm__ctx_t *to);

#endif /* MM_CONTEXT_H */
