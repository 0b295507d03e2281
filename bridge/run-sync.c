/* mm_run_sync: a coroutine hands a blocking call to a worker thread and is
 * resumed when it returns; the loop serves other coroutines meanwhile.
 *
 *   coroutine C                          worker W
 *   request R (C's stack), push ──────►  pop R (QUEUED -> RUNNING, pool mu)
 *   park C                               proxy = C; status = fn(arg)
 *   ◄── C's loop: remote WAKE(status) ── claim R's end WOKEN, deliver
 *
 * Cancellation and deadlines reach the call through the wait's cancel
 * callback, on the loop thread: a queued call is taken out of the queue
 * and never runs; a running one is waited for (its value is returned, the
 * cancellation stays pending on the coroutine), unless abandon_on_cancel:
 * then the caller leaves at once and the worker runs cleanup(arg, status)
 * when the function ends.  The request's lifetime rules are beside
 * mm__sync_req_t in bridge.h.
 *
 * Also here: the per-loop bridge state and lanes.
 */
#include "bridge.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- per-loop state ------------------------------------------------- */

/* A pool with as many threads awake as CPUs takes more only once some of
 * their calls have run long (pool.c), and a pool at its maximum reports
 * calls that wait long; nothing but time may show either, so while calls
 * wait the loop looks again (mm__pool_recheck says when). */
static void watch_pool(mm__bridge_t *b, unsigned ms) {
  if (b->pool_timer.idx == SIZE_MAX &&
      mm__timer_start(b->loop, &b->pool_timer, ms) != 0)
    mm__log(MM_LOG_ERROR, "no memory for the pool's timer: calls that "
            "block may wait for a thread until another call comes");
}

static void on_pool_timer(mm__timer_t *t) {
  mm__bridge_t *b = container_of(t, mm__bridge_t, pool_timer);
  unsigned next = mm__pool_recheck(b->pool);
  if (next != 0)
    watch_pool(b, next);
}

/* The loop's pool calls of a pass over the ready coroutines go to the
 * pool together, after the pass: one lock and at most one wake-up per
 * idle worker for the whole batch, instead of one each.  A pass of many
 * coroutines hands them over every STAGE_MAX calls, so that workers need
 * not wait for the whole pass. */
#define STAGE_MAX 64

static void bridge_flush(mm_loop_t *loop, void *p) {
  mm__bridge_t *b = p;
  (void) loop;
  if (mm__list_empty(&b->staged))
    return;
  b->nstaged = 0;
  int r = mm__pool_submit_list(b->pool, &b->staged);
  if (r == 0) {
    watch_pool(b, 1);
    return;
  }
  mm__list_t *n;
  while ((n = mm__list_pop_front(&b->staged)) != NULL) {
    mm__sync_req_t *req = container_of(n, mm__sync_req_t, link);
    atomic_store_explicit(&req->state, MM__SYNC_CANCELLED,
                          memory_order_relaxed);
    /* Nobody else has seen a staged call: the claim is ours. */
    mm__wait_cancel(req->wait, r);
  }
}

static void bridge_free(mm_loop_t *loop, void *p) {
  mm__bridge_t *b = p;
  assert(mm__list_empty(&b->staged));
  mm__timer_stop(loop, &b->pool_timer);
  mm__list_t *n;
  while ((n = mm__list_pop_front(&b->lanes)) != NULL) {
    mm_lane_t *lane = container_of(n, mm_lane_t, link);
    mm__log(MM_LOG_WARN, "mm_loop_free: a lane was never freed; freeing it");
    mm__pool_free(lane->pool);
    free(lane);
  }
  mm__pool_free(b->pool);
  mm__pool_t *sensitive = atomic_load_explicit(&b->sensitive,
                                               memory_order_acquire);
  if (sensitive != NULL)
    mm__pool_free(sensitive);
  pthread_mutex_destroy(&b->mu);
  free(b);
}

mm__bridge_t *mm__bridge_of(mm_loop_t *loop) {
  mm__bridge_t *b = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (b != NULL)
    return b;
  b = calloc(1, sizeof(*b));
  if (b == NULL)
    return NULL;
  b->pool = mm__pool_new(loop, "", loop->opt.pool_min_threads,
                         loop->opt.pool_max_threads, loop->opt.pool_idle_ms,
                         false, NULL);
  if (b->pool == NULL) {
    free(b);
    return NULL;
  }
  pthread_mutex_init(&b->mu, NULL);
  mm__list_init(&b->lanes);
  mm__list_init(&b->staged);
  b->loop = loop;
  mm__timer_init(&b->pool_timer, on_pool_timer);
  static const mm__bridge_ops_t ops = { bridge_flush, bridge_free };
  mm__bridge_t *cur = mm__loop_set_bridge(loop, b, &ops);
  if (cur != b)
    bridge_free(loop, b);   /* another thread was first */
  return cur;
}

/* The loop's one sensitive thread: MM_AFFINITY_CALLER calls of
 * coroutines that have no caller thread all run there, in order. */
static mm__pool_t *sensitive_of(mm__bridge_t *b) {
  mm__pool_t *p = atomic_load_explicit(&b->sensitive, memory_order_acquire);
  if (p != NULL)
    return p;
  pthread_mutex_lock(&b->mu);
  p = atomic_load_explicit(&b->sensitive, memory_order_relaxed);
  if (p == NULL) {
    p = mm__pool_new(b->loop, "sensitive", 1, 1, 0, true, "mm-sensitive");
    /* Release pairs with the acquire load above. */
    atomic_store_explicit(&b->sensitive, p, memory_order_release);
  }
  pthread_mutex_unlock(&b->mu);
  return p;
}

/* ---- the worker side --------------------------------------------------- */

/* Frees a heap request, with its snapshot. */
static void req_free(mm__sync_req_t *req) {
  mm__locals_free(&req->snapshot);
  if (req->proxy.caller != NULL)
    mm__waiter_unref(req->proxy.caller);
  free(req);
}

void mm__sync_execute(mm__sync_req_t *req) {
  const mm__proxy_t *saved = mm__tls.proxy;

  mm__tls.proxy = req->as;
  int status = req->fn(req->arg);
  mm__tls.proxy = saved;

  mm__wait_t *w = req->wait;
  if (mm__end_claim(&req->end, MM__END_WOKEN)) {
    mm__wait_deliver(w, status);   /* last access to req and w */
    return;
  }
  /* Abandoned: the caller is gone; the request is ours. */
  if (req->cleanup != NULL)
    req->cleanup(req->arg, status);
  req_free(req);
}

/* A caller thread runs a MM_AFFINITY_CALLER call it was posted; the
 * waiter took it off its tasks under its mutex (waiter.c), so a cancel's
 * mm__waiter_unqueue finds it gone. */
static void caller_task_run(mm__task_t *t) {
  mm__sync_execute(container_of(t, mm__sync_req_t, task));
}

/* ---- the caller side --------------------------------------------------- */

/* The caller's part of a call: its wait and deadline live on its stack
 * even when the request itself is on the heap, so that nothing of the
 * caller is touched after an abandon. */
typedef struct sync_wait {
  mm__wait_t w;
  mm__timer_t deadline;
  mm__sync_req_t *req;
  mm__bridge_t *bridge;
  mm__pool_t *pool;
  bool abandonable;
  bool abandoned;
  bool armed;
} sync_wait_t;

/* Loop thread, the caller parked.  reason: ECANCELED or ETIMEDOUT. */
static void sync_cancel(sync_wait_t *sw, int reason) {
  mm__sync_req_t *req = sw->req;

  if (sw->armed) {
    mm__timer_stop(sw->w.coro->loop, &sw->deadline);
    sw->armed = false;
  }
  mm__set_reason(&req->cancel, reason);
  if (atomic_load_explicit(&req->state, memory_order_relaxed) ==
      MM__SYNC_STAGED) {
    /* Still in this loop's staged list: nobody else has seen it. */
    mm__list_remove(&req->link);
    sw->bridge->nstaged--;
    atomic_store_explicit(&req->state, MM__SYNC_CANCELLED,
                          memory_order_relaxed);
    mm__wait_cancel(&sw->w, -reason);
    return;
  }
  bool unqueued = req->waiter != NULL ? mm__waiter_unqueue(req->waiter,
                                                          &req->task)
                                       : mm__pool_unqueue(sw->pool, req);
  if (unqueued) {
    mm__wait_cancel(&sw->w, -reason);   /* it never runs: ours to end */
    return;
  }
  if (!sw->abandonable)
    return;                             /* waited for: the worker ends it */
  if (mm__wait_cancel(&sw->w, -reason))
    sw->abandoned = true;
  /* else the worker won: its delivery is on its way. */
}

static void on_cancel(mm__wait_t *w, int reason) {
  sync_cancel(container_of(w, sync_wait_t, w), reason);
}

static void on_deadline(mm__timer_t *t) {
  sync_wait_t *sw = container_of(t, sync_wait_t, deadline);
  sw->armed = false;
  sync_cancel(sw, ETIMEDOUT);
}

static int check_options(const mm_sync_options_t *o) {
  if (o == NULL)
    return 0;
  switch (o->affinity) {
  case MM_AFFINITY_POOL:
  case MM_AFFINITY_CALLER:
    return 0;
  case MM_AFFINITY_LANE:
    return o->lane != NULL ? 0 : -EINVAL;
  default:
    return -EINVAL;
  }
}

/* A lane call from a plain thread: the lane's thread is the point, so the
 * call goes there and this thread blocks (inline if it is that thread). */
static int lane_from_thread(mm_lane_t *lane, mm_fn fn, void *arg) {
  if (mm__pool_is_self(lane->pool))
    return fn(arg);
  mm__wait_t w;
  int r = mm__wait_init(&w);
  if (r != 0)
    return r;
  mm__sync_req_t req = { .fn = fn, .arg = arg, .wait = &w };
  atomic_init(&req.cancel, 0);
  atomic_init(&req.end, MM__END_PENDING);
  w.end = &req.end;
  r = mm__pool_submit(lane->pool, &req);
  if (r != 0)
    return r;
  return mm__wait_block(&w);
}

int mm_run_sync_ex(mm_fn fn, void *arg, const mm_sync_options_t *o) {
  if (fn == NULL)
    return -EINVAL;
  int r = check_options(o);
  if (r != 0)
    return r;

  mm_coro_t *c = mm__tls.coro;
  if (c == NULL) {
    if (mm__tls.loop != NULL)
      return -EDEADLK;            /* would block the loop's own thread */
    if (o != NULL && o->affinity == MM_AFFINITY_LANE)
      return lane_from_thread(o->lane, fn, arg);
    return fn(arg);               /* a plain thread may block: inline */
  }

  int reason = mm__coro_cancel_reason(c);
  if (reason != 0)
    return -reason;
  mm__bridge_t *b = mm__bridge_of(c->loop);
  if (b == NULL)
    return mm__bridge_error(c->loop);

  sync_wait_t sw;
  r = mm__wait_init(&sw.w);
  if (r != 0)
    return r;
  sw.w.cancel = on_cancel;
  sw.bridge = b;
  int affinity = o != NULL ? o->affinity : MM_AFFINITY_POOL;
  sw.pool = affinity == MM_AFFINITY_LANE ? o->lane->pool : b->pool;
  if (affinity == MM_AFFINITY_CALLER && c->caller == NULL &&
      (sw.pool = sensitive_of(b)) == NULL)
    return -EAGAIN;
  sw.abandonable = o != NULL && o->abandon_on_cancel;
  sw.abandoned = false;
  sw.armed = false;

  mm__sync_req_t local;
  mm__sync_req_t *req = &local;
  if (sw.abandonable && (req = malloc(sizeof(*req))) == NULL)
    return -ENOMEM;
  memset(req, 0, sizeof(*req));
  req->fn = fn;
  req->arg = arg;
  req->wait = &sw.w;
  req->as = &req->proxy;
  req->proxy.handle = c->handle;
  req->proxy.loop = c->loop;
  req->proxy.cancel = &req->cancel;
  if (sw.abandonable) {
    /* The coroutine may end while fn runs: fn gets a copy of what it
     * would read of it (API.md, "The bridges"). */
    if (mm__locals_copy(&req->snapshot, &c->locals) != 0) {
      free(req);
      return -ENOMEM;
    }
    req->proxy.locals = &req->snapshot;
    req->proxy.caller = c->caller;
    if (c->caller != NULL)
      mm__waiter_ref(c->caller);
  } else {
    req->proxy.locals = &c->locals;
    req->proxy.coro_cancel = &c->cancel_reason;
  }
  req->on_heap = sw.abandonable;
  req->cleanup = o != NULL ? o->cleanup : NULL;
  atomic_init(&req->cancel, 0);
  atomic_init(&req->end, MM__END_PENDING);
  sw.w.end = &req->end;
  sw.req = req;

  if (o != NULL && o->timeout_ms != 0) {
    mm__timer_init(&sw.deadline, on_deadline);
    r = mm__timer_start(c->loop, &sw.deadline, o->timeout_ms);
    if (r != 0)
      goto err_req;
    sw.armed = true;
  }
  if (affinity == MM_AFFINITY_CALLER && c->caller != NULL) {
    /* The caller thread, if it still waits for us; else the sensitive
     * thread, like a coroutine without a caller. */
    req->task.run = caller_task_run;
    mm__list_init(&req->task.link);
    atomic_store_explicit(&req->state, MM__SYNC_QUEUED, memory_order_relaxed);
    if (mm__waiter_post_serving(c->caller, &req->task)) {
      req->waiter = c->caller;
      r = 0;
    } else if ((sw.pool = sensitive_of(b)) == NULL) {
      r = -EAGAIN;
    } else {
      r = mm__pool_submit(sw.pool, req);
    }
  } else if (sw.pool == b->pool) {
    /* Handed to the pool with the others after this pass (bridge_flush);
     * the calls staged before, all of parked coroutines, go now if they
     * are many. */
    if (b->nstaged >= STAGE_MAX)
      bridge_flush(c->loop, b);
    atomic_store_explicit(&req->state, MM__SYNC_STAGED, memory_order_relaxed);
    mm__list_push_back(&b->staged, &req->link);
    b->nstaged++;
  } else {
    r = mm__pool_submit(sw.pool, req);
  }
  if (r != 0)
    goto err_timer;
  atomic_fetch_add_explicit(&b->sync_calls, 1, memory_order_relaxed);

  int status = mm__wait_block(&sw.w);
  if (sw.armed)
    mm__timer_stop(c->loop, &sw.deadline);
  if (!sw.abandoned && req->on_heap)
    req_free(req);
  return status;

err_timer:
  if (sw.armed)
    mm__timer_stop(c->loop, &sw.deadline);
err_req:
  if (req != &local)
    req_free(req);
  return r;
}

void mm_sync_options_init(mm_sync_options_t *o) {
  if (o != NULL)
    memset(o, 0, sizeof(*o));
}

int mm_run_sync(mm_fn fn, void *arg) {
  return mm_run_sync_ex(fn, arg, NULL);
}

/* ---- lanes ------------------------------------------------------------- */

int mm_lane_new(mm_loop_t *loop, const char *name, mm_lane_t **out) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  if (loop == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  if (mm__loop_stopping(loop))
    return -ESHUTDOWN;
  mm__bridge_t *b = mm__bridge_of(loop);
  if (b == NULL)
    return mm__bridge_error(loop);
  mm_lane_t *lane = calloc(1, sizeof(*lane));
  if (lane == NULL)
    return -ENOMEM;
  lane->loop = loop;
  lane->pool = mm__pool_new(loop, name, 1, 1, 0, true, NULL);
  if (lane->pool == NULL) {
    free(lane);
    return -EAGAIN;
  }
  pthread_mutex_lock(&b->mu);
  mm__list_push_back(&b->lanes, &lane->link);
  pthread_mutex_unlock(&b->mu);
  *out = lane;
  return 0;
}

static int lane_close(void *arg) {
  mm_lane_t *lane = arg;
  mm__bridge_t *b = atomic_load_explicit(&lane->loop->bridge,
                                         memory_order_acquire);
  pthread_mutex_lock(&b->mu);
  mm__list_remove(&lane->link);
  pthread_mutex_unlock(&b->mu);
  mm__pool_free(lane->pool);   /* runs what is queued, joins the thread */
  free(lane);
  return 0;
}

int mm_lane_free(mm_lane_t *lane) {
  if (lane == NULL)
    return -EINVAL;
  if (mm__pool_is_self(lane->pool))
    return -EDEADLK;             /* the lane would join itself */
  if (mm__tls.coro == NULL && mm__tls.loop != NULL)
    return -EDEADLK;
  /* Waiting for the lane's queue is blocking work: in a coroutine it goes
   * to the pool like any other, on a plain thread it runs here.  A
   * cancelled coroutine gets -ECANCELED and the lane stays (mm_loop_free
   * frees it with a warning). */
  return mm_run_sync(lane_close, lane);
}
