/* The portable context-switch port: glibc's makecontext/swapcontext.
 * Selected by configure on CPUs without an assembly port, or with
 * --with-context=ucontext.  swapcontext also saves the signal mask (a system
 * call per switch), so this port is correct everywhere and slow. */
#include "mm-internal.h"

#include <stdint.h>
#include <stdlib.h>

void mm__ctx_entry_returned(void *arg);

/* makecontext passes int arguments only: a pointer travels as two halves. */
static void trampoline(unsigned ehi, unsigned elo, unsigned ahi, unsigned alo) {
  mm__ctx_entry_fn entry =
      (mm__ctx_entry_fn) (uintptr_t) (((uint64_t) ehi << 32) | (uint64_t) elo);
  void *arg = (void *) (uintptr_t) (((uint64_t) ahi << 32) | (uint64_t) alo);
  entry(arg);
  mm__ctx_entry_returned(arg);
}

void mm__ctx_make(mm__ctx_t *ctx, void *stack, size_t size,
                  mm__ctx_entry_fn entry, void *arg) {
  uint64_t e = (uintptr_t) entry;
  uint64_t a = (uintptr_t) arg;

  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = NULL;
  makecontext(&ctx->uc, (void (*)(void)) trampoline, 4,
              (unsigned) (e >> 32), (unsigned) e,
              (unsigned) (a >> 32), (unsigned) a);
}

void mm__ctx_switch(mm__ctx_t *from, mm__ctx_t *to) {
  swapcontext(&from->uc, &to->uc);
}
