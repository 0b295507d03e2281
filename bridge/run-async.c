/* mm_run_async: a plain thread blocks on a coroutine that the loop runs
 * for it, and gets its status.
 *
 *   thread T                              loop L
 *   request Q on T's stack, submit ──────► drain tasks: spawn K(fn, arg)
 *   block on T's waiter                    from L's stack cache; K's joiner
 *                                          is Q's wait, K has no handle
 *   ◄──────────── K ends: L releases K's block and wakes Q's wait
 *
 * No malloc and no mmap per call: Q is on T's stack and K's block comes
 * from the loop's cache.  From a coroutine the call is a spawn and a join
 * (no thread hop on the same loop; across loops the joiner is parked).
 *
 * While T waits it serves MM_AFFINITY_CALLER calls of K and of the
 * coroutines K spawns (they inherit T as their caller): run-sync.c posts
 * them to T's waiter, which runs them between wake-ups.
 */
#include "bridge.h"

#include <errno.h>
#include <string.h>

/* How long a caller waits for a loop nobody runs before it says so. */
#define NOT_RUNNING_WARN_MS 1000

typedef struct async_req {
  mm__loop_task_t task;       /* in the loop's task inbox */
  mm_fn fn;
  void *arg;
  mm_spawn_options_t so;
  const mm__locals_t *locals; /* the caller's, read while it blocks */
  mm__wait_t w;               /* the caller's wait; K's joiner */
  _Atomic bool taken;         /* the loop has run the task (relaxed: only
                                 a warning depends on it) */
} async_req_t;

/* Loop thread.  Every path ends in exactly one wake of q->w: here, or at
 * K's end (sched.c, finish). */
static void async_start(mm__loop_task_t *t, mm_loop_t *loop, bool shutdown) {
  async_req_t *q = container_of(t, async_req_t, task);
  atomic_store_explicit(&q->taken, true, memory_order_relaxed);
  if (shutdown) {
    mm__wait_complete(&q->w, -ESHUTDOWN);
    return;
  }
  int r = mm__spawn_for(loop, q->fn, q->arg, &q->so, &q->w, q->locals,
                        q->w.thread);
  if (r != 0)
    mm__wait_complete(&q->w, r);
}

void mm_async_options_init(mm_async_options_t *o) {
  if (o != NULL)
    memset(o, 0, sizeof(*o));
}


int mm_run_async_ex(mm_loop_t *loop, mm_fn fn, void *arg,
                    const mm_async_options_t *o) {
  if (loop == NULL || fn == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  /* A loop's thread outside coroutines; also the thread a borrowed loop
   * belongs to, whether or not it has work: nobody else runs that loop. */
  if (mm__tls.coro == NULL &&
      (mm__tls.loop != NULL || mm__on_loop_thread(loop)))
    return -EDEADLK;
  mm__bridge_t *b = mm__bridge_of(loop);
  if (b == NULL)
    return mm__bridge_error(loop);
  atomic_fetch_add_explicit(&b->async_calls, 1, memory_order_relaxed);

  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  if (o != NULL) {
    so.name = o->name;
    so.timeout_ms = o->timeout_ms;
  }

  if (mm__tls.coro != NULL) {
    mm_coro_t *k;
    int r = mm_spawn_ex(loop, fn, arg, &so, &k);
    if (r != 0)
      return r;
    /* A coroutine the stop cancelled: the caller learns why.  The loop's
     * state is read inside the join, while the loop surely exists. */
    bool stopping;
    int status = mm__join(k, &stopping);
    if (status == -ECANCELED && stopping && !mm_cancelled())
      status = -ESHUTDOWN;
    return status;
  }

  async_req_t q;
  q.task.run = async_start;
  q.fn = fn;
  q.arg = arg;
  q.so = so;
  /* The caller's locals: a worker running a call for a coroutine sees
   * that coroutine's (DESIGN.md, "Locals"), so its coroutine does too. */
  q.locals = mm__locals_here();
  atomic_init(&q.taken, false);
  int r = mm__wait_init(&q.w);
  if (r != 0)
    return r;
  /* While it waits, this thread serves the thread-sensitive calls of the
   * coroutine (and of the coroutines it spawns): MM_AFFINITY_CALLER. */
  mm__waiter_serve_begin(q.w.thread);
  r = mm__loop_submit(loop, &q.task);
  if (r != 0) {
    mm__waiter_serve_end(q.w.thread);
    return r;
  }
  int status;
  if (mm__wait_block_for(&q.w, NOT_RUNNING_WARN_MS, &status) != 0) {
    /* Not the loop's state: once our task has run, the loop may end and
     * be freed at any moment; the task is ours until we are answered. */
    if (!atomic_load_explicit(&q.taken, memory_order_relaxed))
      mm__log(MM_LOG_WARN, "mm_run_async: the loop has not run for %d ms; "
              "the call waits until it does (mm_loop_run, mm_loop_start)",
              NOT_RUNNING_WARN_MS);
    status = mm__wait_block(&q.w);
  }
  mm__waiter_serve_end(q.w.thread);
  return status;   /* -ESHUTDOWN for a stop: decided on the loop's side */
}

int mm_run_async(mm_loop_t *loop, mm_fn fn, void *arg) {
  return mm_run_async_ex(loop, fn, arg, NULL);
}
