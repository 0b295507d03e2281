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

static void dump_here(mm_loop_t *loop, FILE *out) {
  uint64_t now = uv_hrtime();
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    fprintf(out, "coroutine %" PRIu64 " '%s' %s%s, age %" PRIu64 " ms\n",
            c->id, c->name != NULL ? c->name : "",
            mm__coro_state_name(c->state),
            mm__coro_cancel_reason(c) != 0 ? " (cancelled)" : "",
            (now - c->born) / 1000000);
  }
  fflush(out);
}

typedef struct dump_req {
  mm__loop_task_t task;
  FILE *out;
  mm__wait_t w;
} dump_req_t;

static void dump_task(mm__loop_task_t *t, mm_loop_t *loop, bool shutdown) {
  dump_req_t *d = container_of(t, dump_req_t, task);
  dump_here(loop, d->out);
  mm__wait_complete(&d->w, 0);   /* last access to d */
}

int mm_loop_dump(mm_loop_t *loop, FILE *out) {
  if (loop == NULL || out == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  if (mm__loop_stopping(loop))
    return -ESHUTDOWN;
  if (mm__on_loop_thread(loop) ||
      (mm__tls.coro != NULL && mm__tls.coro->loop == loop)) {
    dump_here(loop, out);
    return 0;
  }
  if (!atomic_load_explicit(&loop->driven, memory_order_acquire)) {
    pthread_mutex_lock(&loop->mu);
    if (!atomic_load_explicit(&loop->driven, memory_order_relaxed)) {
      dump_here(loop, out);
      pthread_mutex_unlock(&loop->mu);
      return 0;
    }
    pthread_mutex_unlock(&loop->mu);
  }
  dump_req_t d;
  d.task.run = dump_task;
  d.out = out;
  int r = mm__wait_init(&d.w);
  if (r != 0)
    return r;
  d.w.cancellable = false;   /* the task will wake us; wait for it */
  r = mm__loop_submit(loop, &d.task);
  if (r != 0)
    return r;
  return mm__wait_block(&d.w);
}
