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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* How long a caller waits for a loop nobody runs before it says so. */
#define NOT_RUNNING_WARN_MS 1000

/* Whether the loop has taken the request (async_start), or the calling
 * thread gave up on it first (its deadline): one CAS from QUEUED decides,
 * so that exactly one of them acts. */
enum { Q_QUEUED, Q_TAKEN, Q_GIVEN_UP };

/* One call from a plain thread.  Without a timeout it lives on the
 * caller's stack: the caller waits until the loop answers, after which
 * nobody touches it.  With a timeout the caller may leave while the
 * request still sits in the loop's inbox (a loop not started yet), so it
 * is malloc'ed with two references, the caller's and the inbox's, and the
 * last one frees it (tests/model/runasync.pml, -DHEAP_Q). */
typedef struct async_req {
  mm__loop_task_t task;       /* in the loop's task inbox */
  mm_fn fn;
  void *arg;
  mm_spawn_options_t so;
  uint64_t deadline;          /* uv_hrtime() the whole wait ends; 0: none */
  const mm__locals_t *locals; /* the caller's, read while it blocks */
  mm__wait_t w;               /* the caller's wait; K's joiner */
  _Atomic int taken;          /* Q_*; acq_rel CAS, see above */
  _Atomic int refs;           /* heap requests: 2, then 1, then freed */
  bool on_heap;
} async_req_t;

/* Drops a reference to a heap request.  Never for a stack request: its
 * caller may return the moment it is answered, so the loop reads nothing
 * of it after answering (on_heap is read before). */
static void async_unref(async_req_t *q) {
  if (atomic_fetch_sub_explicit(&q->refs, 1, memory_order_acq_rel) == 1)
    free(q);
}

/* Loop thread.  Every path ends in exactly one wake of q->w: here, or at
 * K's end (sched.c, finish) -- unless the caller gave up first, then
 * nothing is answered (nobody waits). */
static void async_start(mm__loop_task_t *t, mm_loop_t *loop, bool shutdown) {
  async_req_t *q = container_of(t, async_req_t, task);
  bool on_heap = q->on_heap;
  int queued = Q_QUEUED;
  if (!atomic_compare_exchange_strong_explicit(&q->taken, &queued, Q_TAKEN,
                                               memory_order_acq_rel,
                                               memory_order_acquire)) {
    async_unref(q);                   /* the caller left: ours to drop */
    return;
  }
  if (shutdown) {
    mm__wait_complete(&q->w, -ESHUTDOWN);
  } else {
    if (q->deadline != 0) {
      /* K's own deadline is what is left of the caller's: the whole
       * wait, from the call, is bounded (at least 1 ms: the caller did
       * not give up, so K gets its chance to be cancelled). */
      uint64_t now = uv_hrtime();
      q->so.timeout_ms = q->deadline > now
                             ? (q->deadline - now + 999999) / 1000000 : 1;
    }
    int r = mm__spawn_for(loop, q->fn, q->arg, &q->so, &q->w, q->locals,
                          q->w.thread);
    if (r != 0)
      mm__wait_complete(&q->w, r);
  }
  /* A heap request: the caller holds its reference until it is
   * answered, so q is alive here.  A stack one may be gone already. */
  if (on_heap)
    async_unref(q);
}

/* The calling thread's wait: warns once if the loop has not taken the
 * request after NOT_RUNNING_WARN_MS, gives up at the deadline if the loop
 * still has not, else waits for K, which carries the same deadline. */
static int async_wait(async_req_t *q, bool driven) {
  /* A loop driven when the call was made runs it: no warning to time,
   * and so no timer in the kernel for each sleep of a call that has
   * none (a timed futex wait arms and cancels one). */
  bool warned = driven;
  uint64_t deadline = q->deadline;
  for (;;) {
    uint64_t ms = UINT64_MAX;
    if (!warned)
      ms = NOT_RUNNING_WARN_MS;
    if (deadline != 0) {
      uint64_t now = uv_hrtime();
      uint64_t left = deadline > now ? (deadline - now + 999999) / 1000000
                                     : 0;
      if (left < ms)
        ms = left;
    }
    int status;
    if (ms == UINT64_MAX)
      return mm__wait_block(&q->w);
    if (mm__wait_block_for(&q->w, ms, &status) == 0)
      return status;
    int taken = atomic_load_explicit(&q->taken, memory_order_acquire);
    if (deadline != 0 && uv_hrtime() >= deadline) {
      int queued = Q_QUEUED;
      if (atomic_compare_exchange_strong_explicit(
              &q->taken, &queued, Q_GIVEN_UP, memory_order_acq_rel,
              memory_order_acquire))
        return -ETIMEDOUT;            /* the loop never saw it */
      deadline = 0;                   /* K runs under it: wait for K */
      taken = Q_TAKEN;
    }
    if (!warned && taken == Q_QUEUED)
      mm__log(MM_LOG_WARN, "mm_run_async: the loop has not run for %d ms; "
              "the call waits until it does (mm_loop_run, mm_loop_start)%s",
              NOT_RUNNING_WARN_MS, deadline != 0 ? " or its timeout" : "");
    /* Not the loop's state: once our task has run, the loop may end and
     * be freed at any moment; the task is ours until we are answered. */
    warned = true;
  }
}

static void set_true(void *arg) {
  *(bool *) arg = true;
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
    bool stopping, joined = false;
    int status = mm__join_hook(k, &stopping, set_true, &joined);
    if (status == -ETIMEDOUT && !joined) {
      /* The caller's deadline (mm_deadline_push): like the call's own
       * timeout, the coroutine is cancelled and waited for. */
      mm__deadline_hold();
      mm_cancel(k);
      mm__join_hook(k, &stopping, NULL, NULL);
      mm__deadline_release();
      return -ETIMEDOUT;
    }
    if (status == -ECANCELED && stopping && !mm_cancelled())
      status = -ESHUTDOWN;
    return status;
  }

  /* Heap only with a timeout (see async_req_t): no malloc per call
   * otherwise. */
  /* A plain thread's deadline (mm_deadline_push) acts as a timeout of
   * the call: the earlier of the two. */
  uint64_t timeout_ms = o != NULL ? o->timeout_ms : 0;
  int r = mm__thread_timeout(&timeout_ms);
  if (r != 0)
    return r;
  so.timeout_ms = timeout_ms;
  async_req_t local;
  async_req_t *q = &local;
  bool timed = timeout_ms != 0;
  if (timed && (q = malloc(sizeof(*q))) == NULL)
    return -ENOMEM;
  q->task.run = async_start;
  q->fn = fn;
  q->arg = arg;
  q->so = so;
  q->deadline = timed ? uv_hrtime() + timeout_ms * 1000000 : 0;
  /* The caller's locals: a worker running a call for a coroutine sees
   * that coroutine's (DESIGN.md, "Locals"), so its coroutine does too. */
  q->locals = mm__locals_here();
  q->on_heap = timed;
  atomic_init(&q->taken, Q_QUEUED);
  atomic_init(&q->refs, 2);
  r = mm__wait_init(&q->w);
  if (r != 0) {
    if (timed)
      free(q);
    return r;
  }
  /* While it waits, this thread serves the thread-sensitive calls of the
   * coroutine (and of the coroutines it spawns): MM_AFFINITY_CALLER. */
  mm__waiter_t *self = q->w.thread;
  mm__waiter_serve_begin(self);
  /* Read while the loop surely exists: before the task is handed over. */
  bool driven = !loop->borrowed &&
                atomic_load_explicit(&loop->driven, memory_order_relaxed);
  r = mm__loop_submit(loop, &q->task);
  if (r == 0) {
    r = async_wait(q, driven);   /* -ESHUTDOWN for a stop: the loop's */
  } else if (timed) {
    /* The inbox never had it: both references are ours. */
    atomic_store_explicit(&q->refs, 1, memory_order_relaxed);
  }
  mm__waiter_serve_end(self);
  if (timed)
    async_unref(q);      /* ours: last access */
  return r;
}

int mm_run_async(mm_loop_t *loop, mm_fn fn, void *arg) {
  return mm_run_async_ex(loop, fn, arg, NULL);
}
