/* Internal declarations of the bridge layer: worker pools (pool.c) and the
 * run_sync request that travels between a coroutine and a worker
 * (run-sync.c).  Built on lib/'s primitives: mm__wait_t to park and wake,
 * the loop's bridge slot for per-loop state.
 *
 * Lock order: b->mu (bridge.c) before a lane's pool->mu; a pool's mu is
 * otherwise taken alone; nothing else is locked while it is held, except
 * that lib/ may take a thread waiter's mu inside a wake (never done here
 * under pool->mu).
 */
#ifndef MM_BRIDGE_H
#define MM_BRIDGE_H

#include "mm-internal.h"

#include <errno.h>

/* Where a run_sync request is.  Only a request's queue owner changes it:
 * the loop thread while STAGED, pool->mu (or the caller thread's waiter
 * mu) for QUEUED -> RUNNING and QUEUED -> CANCELLED. */
enum mm__sync_state {
  MM__SYNC_STAGED,            /* in the loop's staged list (loop thread) */
  MM__SYNC_QUEUED,            /* in a pool's queue or a caller's tasks */
  MM__SYNC_RUNNING,           /* taken by the thread that runs fn */
  MM__SYNC_CANCELLED          /* removed from its queue before it ran */
};

/* One run_sync call, shared by the caller and the worker that runs it.
 *
 * Its ending is end, the completion protocol's word (lib/wait.c): the
 * caller's wait points at it.  The worker claims WOKEN when fn returns; a
 * cancel or the call's deadline claims CANCELLED when it takes the call
 * out of its queue (it never runs), or, with abandon_on_cancel, while fn
 * runs.  Asking a running fn to stop (on_cancel) is a second, smaller
 * handshake on stop, described in run-sync.c.
 *
 * Lifetime.  It lives on the calling coroutine's stack, unless the call
 * may be abandoned (abandon_on_cancel): then it is malloc'ed, because the
 * caller may return before the function does, and end must outlive it.
 * The worker that wins WOKEN calls mm__wait_deliver as its last access to
 * the request and to the caller; the caller then frees a heap request.  A
 * worker that loses (the call was abandoned) alone owns the request: it
 * calls cleanup(arg, status) and frees it. */
typedef struct mm__sync_req {
  mm__list_t link;            /* pool queue; protected by pool->mu */
  uint64_t queued_at;         /* uv_hrtime() when queued; pool->mu */
  mm__task_t task;            /* MM_AFFINITY_CALLER: in the caller
                                 thread's waiter; protected by its mu */
  mm__waiter_t *waiter;       /* that waiter, or NULL: in a pool */
  mm_fn fn;
  void *arg;
  mm__proxy_t proxy;          /* what fn sees of the awaiting coroutine */
  mm__proxy_t *as;            /* &proxy, or NULL: a plain thread's call */
  mm__locals_t snapshot;      /* abandonable: a copy of its locals */
  mm__wait_t *wait;           /* the waiter's wait (on the waiter's stack) */
  _Atomic int state;          /* enum mm__sync_state */
  _Atomic int end;            /* enum mm__end: the ending, see above */
  _Atomic int cancel;         /* this call's own cancellation reason;
                                 mm_cancelled() reads it in the worker */
  _Atomic unsigned stop;      /* MM__STOP_*: asking a running fn to stop
                                 (run-sync.c, "Stopping a running call") */
  bool on_heap;
  void (*cleanup)(void *arg, int status);
  void (*on_cancel)(void *arg);
} mm__sync_req_t;

/* The bits of mm__sync_req_t.stop. */
enum {
  MM__STOP_CANCEL = 1,        /* the coroutine was cancelled while fn ran */
  MM__STOP_DEADLINE = 2,      /* the call's deadline passed while fn ran */
  MM__STOP_ASKING = 4,        /* on_cancel runs on the loop's thread */
  MM__STOP_OVER = 8           /* fn has returned: too late to ask */
};

/* A pool of worker threads with one FIFO queue.  The loop's pool grows on
 * demand up to max and shrinks to min after idle_ms; a lane is a pool of
 * exactly one thread that never idles out. */
typedef struct mm__pool mm__pool_t;

/* thread_name: the name of a lane's thread (NULL: mm-lane-NAME).  Its
 * threads serve loop (mm__tls.serves). */
mm__pool_t *mm__pool_new(mm_loop_t *loop, const char *name, unsigned min,
                         unsigned max, unsigned idle_ms, bool lane,
                         const char *thread_name);
/* A lane set's pool: count threads named "mm-NAME-1".."mm-NAME-count"
 * (NAME shortened to fit 15 characters), each running open(&state, arg)
 * before it takes calls and close(state, arg) when it ends (either may be
 * NULL). */
typedef struct mm__pool_set {
  unsigned count;
  int (*open)(void **state, void *arg);
  void (*close)(void *state, void *arg);
  void *arg;
} mm__pool_set_t;
/* Starts the set's threads and waits until each has run open.  If one
 * fails (its negative value), or a thread cannot be started (-EAGAIN,
 * -ENOMEM), those that opened run close, all are joined, and that error
 * is returned with *out untouched. */
int mm__pool_new_set(mm_loop_t *loop, const char *name,
                     const mm__pool_set_t *set, mm__pool_t **out);
/* On a thread of a lane set, between its open and its close: the state
 * its open made; else NULL. */
void *mm__pool_lane_state(void);
/* Runs every queued call, stops and joins the threads, frees the pool. */
void mm__pool_free(mm__pool_t *pool);
/* Pools (not lanes) with calls queued or running, process-wide: they
 * share the CPUs' budget for quick calls (white box: tests). */
unsigned mm__pools_busy(void);
/* In a forked child, a pool of the parent's: frees its memory only. */
void mm__pool_forget(mm__pool_t *pool);
/* Queues req (state QUEUED).  -ESHUTDOWN once the pool stops, -EAGAIN if
 * no thread could be started for an empty pool. */
int  mm__pool_submit(mm__pool_t *pool, mm__sync_req_t *req);
/* Queues every request of reqs (linked by link), in order, under one
 * lock; reqs is left empty.  On error reqs is left as it was.  If
 * recheck_ms is not NULL it is set as mm__pool_recheck's answer: when the
 * loop must look again because calls wait without a thread (0: never). */
int  mm__pool_submit_list(mm__pool_t *pool, mm__list_t *reqs,
                          unsigned *recheck_ms);
/* Removes req if it is still queued; true if it was. */
bool mm__pool_unqueue(mm__pool_t *pool, mm__sync_req_t *req);
/* Gives waiting calls the threads that calls grown long have freed, and
 * reports calls that have waited long for a pool at its maximum.  Returns
 * in how many ms to check again, 0 when no call waits. */
unsigned mm__pool_recheck(mm__pool_t *pool);
/* Whether the calling thread is one of pool's threads. */
bool mm__pool_is_self(const mm__pool_t *pool);
/* calls: every call the pool has accepted. */
void mm__pool_stats(mm__pool_t *pool, unsigned *threads, unsigned *idle,
                    uint64_t *queued, uint64_t *running, uint64_t *calls);

/* Runs req on this thread (a worker) and completes it. */
void mm__sync_execute(mm__sync_req_t *req);

/* Per-loop bridge state, made on first use (bridge.c). */
typedef struct mm__bridge {
  mm__pool_t *pool;
  _Atomic(mm__pool_t *) sensitive;  /* made on first use; see run-sync.c */
  mm_loop_t *loop;
  mm__timer_t pool_timer;     /* loop thread: mm__pool_recheck while armed */
  mm__list_t staged;          /* loop thread: calls for pool made during
                                 this pass over the ready coroutines */
  unsigned nstaged;           /* loop thread: how many */
  pthread_mutex_t mu;
  mm__list_t lanes;           /* mm_lane_t.link; protected by mu */
  mm__list_t lanesets;        /* mm_laneset_t.link; protected by mu */
  uint64_t lanes_gone_calls;  /* calls the lanes and sets already freed
                                 took; protected by mu */
  /* Added to by every thread that calls mm_run_async: a line of its own,
   * apart from staged, which the loop's thread writes at every call. */
  _Alignas(MM__CACHE_LINE) _Atomic uint64_t async_calls;
} mm__bridge_t;

/* NULL: out of memory, or the loop is stopping (mm__bridge_error). */
mm__bridge_t *mm__bridge_of(mm_loop_t *loop);
/* The calls b's lanes and lane sets have taken, freed ones included,
 * and those waiting in their queues now. */
void mm__bridge_lane_stats(mm__bridge_t *b, uint64_t *calls,
                           uint64_t *queued);
/* mm_lane_free and mm_laneset_free (lane.c): waits for the pool's queue,
 * frees the pool and block, the lane or set whose link and pool they
 * are.  -EDEADLK from one of the pool's threads or a loop's thread
 * outside coroutines. */
int mm__lanes_free(mm_loop_t *loop, mm__list_t *link, mm__pool_t *pool,
                   void *block);
/* Takes a lane's (or set's) link out of b's lists and keeps its count of
 * calls, before its pool is freed. */
void mm__bridge_lane_gone(mm__bridge_t *b, mm__list_t *link,
                          mm__pool_t *pool);
/* Hands the staged calls to the pool (the flush op; loop thread). */
void mm__bridge_flush(mm_loop_t *loop, void *b);
/* A long pass hands its staged calls over every MM__STAGE_MAX calls, so
 * that workers need not wait for the whole pass. */
#define MM__STAGE_MAX 64
/* The loop's one sensitive thread, made on first use: MM_AFFINITY_CALLER
 * calls of coroutines without a caller thread all run there, in order.
 * NULL if it cannot be started. */
mm__pool_t *mm__bridge_sensitive(mm__bridge_t *b);
static inline int mm__bridge_error(const mm_loop_t *loop) {
  return mm__loop_stopping(loop) ? -ESHUTDOWN : -ENOMEM;
}

struct mm_lane {
  mm__list_t link;            /* bridge->lanes */
  mm_loop_t *loop;
  mm__pool_t *pool;
};

struct mm_laneset {
  mm__list_t link;            /* bridge->lanesets */
  mm_loop_t *loop;
  mm__pool_t *pool;           /* count threads, one queue (laneset.c) */
};

#endif /* MM_BRIDGE_H */
