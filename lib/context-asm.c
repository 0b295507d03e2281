/* The C half of the assembly ports: building a fresh context's first frame.
 * The frame layouts are drawn at the top of lib/switch-x86_64.S and
 * lib/switch-aarch64.S. */
#include "mm-internal.h"

#include <stdint.h>

void mm__ctx_trampoline(void);

#if defined(__x86_64__)

/* MXCSR with every exception masked and round-to-nearest, and the x87
 * control word of a freshly initialised FPU: the states a new thread gets. */
#define MXCSR_DEFAULT 0x1F80u
#define X87CW_DEFAULT 0x037Fu

void mm__ctx_make(mm__ctx_t *ctx, void *stack, size_t size,
                  mm__ctx_entry_fn entry, void *arg) {
  uintptr_t top = ((uintptr_t) stack + size) & ~(uintptr_t) 15;
  uint64_t *sp = (uint64_t *) (top - 80);

  sp[0] = MXCSR_DEFAULT | ((uint64_t) X87CW_DEFAULT << 32);
  sp[1] = 0;                           /* r15 */
  sp[2] = 0;                           /* r14 */
  sp[3] = (uint64_t) (uintptr_t) arg;  /* r13 */
  sp[4] = (uint64_t) (uintptr_t) entry;  /* r12 */
  sp[5] = 0;                           /* rbx */
  sp[6] = 0;                           /* rbp: ends frame-pointer walks */
  sp[7] = (uint64_t) (uintptr_t) mm__ctx_trampoline;
  sp[8] = 0;                           /* after the return: rsp = top - 16 */
  sp[9] = 0;
  ctx->sp = sp;
}

#elif defined(__aarch64__)

/* FPCR as Linux starts a process: round to nearest, no flush to zero, no
 * default NaN, no trapped exceptions (as x86-64's defaults above). */
#define FPCR_DEFAULT 0u

void mm__ctx_make(mm__ctx_t *ctx, void *stack, size_t size,
                  mm__ctx_entry_fn entry, void *arg) {
  uintptr_t top = ((uintptr_t) stack + size) & ~(uintptr_t) 15;
  uint64_t *sp = (uint64_t *) (top - 176);

  for (int i = 0; i < 22; i++)
    sp[i] = 0;                         /* x21-x28, d8-d15, padding */
  sp[0] = (uint64_t) (uintptr_t) entry;  /* x19 */
  sp[1] = (uint64_t) (uintptr_t) arg;  /* x20 */
  sp[10] = 0;                          /* x29: ends frame-pointer walks */
  sp[11] = (uint64_t) (uintptr_t) mm__ctx_trampoline;  /* x30 */
  sp[20] = FPCR_DEFAULT;
  ctx->sp = sp;                        /* after the restore: sp = top */
}

#else
# error "no assembly context switch for this CPU: use --with-context=ucontext"
#endif
