/* The C half of the assembly ports: building a fresh context's first frame.
 * The frame layout is drawn at the top of lib/switch-x86_64.S. */
#include "mm-internal.h"

#include <stdint.h>

void mm__ctx_trampoline(void);

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
