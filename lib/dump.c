/* mm_loop_dump: a line per live coroutine, written on the loop's thread
 * (the live list belongs to it).  From another thread the dump is posted
 * to the loop as a task and the caller waits for it; a loop nobody drives
 * is dumped right here under its mutex. */
#include "mm-internal.h"

#include <errno.h>
#include <inttypes.h>

const char *mm__coro_state_name(enum mm__coro_state s) {
  switch (s) {
  case MM__CORO_READY:   return "ready";
  case MM__CORO_RUNNING: return "running";
  case MM__CORO_PARKED:  return "waiting";
  default:               return "ended";
  }
}

static void dump_here(mm_loop_t *loop, void *arg) {
  FILE *out = arg;
  /* Births are the loop's time (sched.c, admit): ages count on it. */
  uv_update_time(loop->uv);
  uint64_t now = uv_now(loop->uv);
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    fprintf(out, "coroutine %" PRIu64 " '%s' %s%s, age %" PRIu64 " ms\n",
            c->id, c->name != NULL ? c->name : "",
            mm__coro_state_name(c->state),
            mm__coro_cancel_reason(c) != 0 ? " (cancelled)" : "",
            now - c->born);
  }
  fflush(out);
}

int mm_loop_dump(mm_loop_t *loop, FILE *out) {
  if (out == NULL)
    return -EINVAL;
  int r = mm__loop_check(loop);
  if (r != 0)
    return r;
  return mm__loop_call_arg(loop, dump_here, out);
}
