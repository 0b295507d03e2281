/* Waiting for a file descriptor, colour-blind (mm_wait_fd), and the
 * calling context's loop (mm_loop_current), which code that drives a
 * descriptor's library from a coroutine uses to reach the loop.
 */
#include "mm-internal.h"

mm_loop_t *mm_loop_current(void) {
  if (mm__tls.coro != NULL)
    return mm__tls.coro->loop;
  /* A blocking call run for a coroutine: its loop, also in an abandoned
   * call's snapshot (the loop outlives its calls: mm_loop_free waits for
   * them). */
  return mm__tls.proxy != NULL ? mm__tls.proxy->loop : NULL;
}
