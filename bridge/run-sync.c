/* mm_run_sync: a coroutine hands a blocking call to a worker thread and is
 * resumed when it returns; the loop serves other coroutines meanwhile.
 *
 *   coroutine C                          worker W
 *   request R (C's stack), push ──────►  pop R (QUEUED -> RUNNING, pool mu)
 *   park C                               proxy = C; status = fn(arg)
 *   ◄── C's loop: remote WAKE(status) ── claim R's end WOKEN, deliver
 *
 * Cancellation and deadlines reach the call through the wait's cancel
 * callback and the call's deadline timer, both on the loop thread: a
 * queued call is taken out of its queue and never runs; a running one is
 * asked to stop (on_cancel, below) and waited for -- unless
 * abandon_on_cancel: then the caller leaves at once and the worker runs
 * cleanup(arg, status) when the function ends.  Who owns arg is one rule
 * (API.md, "The bridges"): cleanup runs exactly once for every call that
 * returns -ECANCELED, -ETIMEDOUT or -ESHUTDOWN -- on the calling thread if
 * fn never ran (give_back), on fn's thread if it did (mm__sync_execute).
 * The request's lifetime rules are beside mm__sync_req_t in bridge.h.
 * Not here: the per-loop state (bridge.c), the pools (pool.c), lanes
 * (lane.c).
 *
 * ---- Stopping a running call ------------------------------------------
 *
 * A cancel or the call's deadline that cannot take the call out of its
 * queue (a thread took it) asks fn to stop: on_cancel(arg), at most once,
 * on the loop's thread.  The loop thread and fn's thread meet on
 * req->stop (MM__STOP_*, bridge.h):
 *
 *   loop thread: ask                         fn's thread: over
 *   CAS stop: unless OVER, add the reason    fn returns
 *     bit, and ASKING if it is the first     s = fetch_or(stop, OVER)
 *   if ASKING was added:                     while s has ASKING: back off,
 *     abandonable: claim end CANCELLED         s = load(stop) (acquire)
 *     on_cancel(arg)                         DEADLINE in s: cleanup(arg,
 *     fetch_and(stop, ~ASKING) (release)       value), return -ETIMEDOUT
 *
 * - The ask happens only if fn's thread has not yet closed stop with
 *   OVER: on_cancel never runs for a queued call (the ask comes after the
 *   unqueue failed, i.e. a thread holds the call), nor after fn's thread
 *   has decided what the call returns.
 * - fn's thread waits while ASKING before it claims, cleans up, delivers
 *   or frees: on_cancel never runs after cleanup or after the call
 *   returned, and the request outlives on_cancel even when the call was
 *   abandoned meanwhile.  Clearing ASKING is the asker's last access.
 * - Reason bits are added before OVER or never (the CAS fails once OVER
 *   is set), so the bits fn's thread holds once ASKING is clear are
 *   final: DEADLINE means the call returns -ETIMEDOUT.
 * - An abandonable call is claimed (CANCELLED) before on_cancel runs, so
 *   that its caller leaves whatever fn does next; fn's thread, held by
 *   ASKING, finds the claim taken and cleans up.
 * - Both askers (the cancel callback and the deadline timer) run on the
 *   loop thread, so one ask is over before the next begins; the cancel
 *   callback runs at most once per wait (sched.c), the timer once.  The
 *   cost on the worker's side is one atomic RMW per call.
 */
#include "bridge.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- the worker side --------------------------------------------------- */

/* Frees a heap request, with its snapshot. */
static void req_free(mm__sync_req_t *req) {
  mm__locals_free(&req->snapshot);
  if (req->proxy.caller != NULL)
    mm__waiter_unref(req->proxy.caller);
  free(req);
}

/* fn has returned: closes stop to askers and waits for an on_cancel under
 * way.  Returns the bits asked before. */
static unsigned sync_over(mm__sync_req_t *req) {
  unsigned s = atomic_fetch_or_explicit(&req->stop, MM__STOP_OVER,
                                        memory_order_acq_rel);
  unsigned round = 0;
  while (s & MM__STOP_ASKING) {
    mm__backoff(&round);
    /* Pairs with the release fetch_and that ends the ask. */
    s = atomic_load_explicit(&req->stop, memory_order_acquire);
  }
  return s;
}

void mm__sync_execute(mm__sync_req_t *req) {
  const mm__proxy_t *saved = mm__tls.proxy;

  mm__tls.proxy = req->as;
  int status = req->fn(req->arg);
  mm__tls.proxy = saved;

  unsigned stop = sync_over(req);
  mm__wait_t *w = req->wait;
  if (mm__end_claim(&req->end, MM__END_WOKEN)) {
    if (stop & MM__STOP_DEADLINE) {
      /* Past its own deadline: fn's value goes to cleanup, here, before
       * the caller resumes. */
      if (req->cleanup != NULL)
        req->cleanup(req->arg, status);
      status = -ETIMEDOUT;
    }
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
  bool abandoned;             /* ended by an ask: fn's thread cleans up */
  bool unqueued;              /* ended before fn ran: the caller cleans up */
  bool armed;
} sync_wait_t;

/* Loop thread: asks a running fn to stop ("Stopping a running call"). */
static void sync_ask(sync_wait_t *sw, int reason, unsigned bit) {
  mm__sync_req_t *req = sw->req;
  unsigned s = atomic_load_explicit(&req->stop, memory_order_relaxed);
  unsigned n;
  do {
    if (s & MM__STOP_OVER)
      return;                 /* fn returned: its thread decides */
    n = s | bit;
    if (!(s & (MM__STOP_CANCEL | MM__STOP_DEADLINE)))
      n |= MM__STOP_ASKING;
  } while (!atomic_compare_exchange_weak_explicit(&req->stop, &s, n,
                                                  memory_order_acq_rel,
                                                  memory_order_relaxed));
  /* mm_cancelled() turns true in fn only now, after the bit: a fn that
   * stops because of it still returns into a call that knows why. */
  mm__set_reason(&req->cancel, reason);
  if (!(n & MM__STOP_ASKING))
    return;                   /* asked before: once is the rule */
  if (sw->abandonable && mm__wait_cancel(&sw->w, -reason))
    sw->abandoned = true;
  if (req->on_cancel != NULL)
    req->on_cancel(req->arg);
  /* Last access to req: fn's thread may go on (and free it). */
  atomic_fetch_and_explicit(&req->stop, ~(unsigned) MM__STOP_ASKING,
                            memory_order_release);
}

/* Loop thread, the caller parked.  reason: ECANCELED or ETIMEDOUT;
 * deadline: the call's own deadline, not a cancel of the coroutine. */
static void sync_cancel(sync_wait_t *sw, int reason, bool deadline) {
  mm__sync_req_t *req = sw->req;

  if (atomic_load_explicit(&req->state, memory_order_relaxed) ==
      MM__SYNC_STAGED) {
    /* Still in this loop's staged list: nobody else has seen it. */
    mm__list_remove(&req->link);
    sw->bridge->nstaged--;
    atomic_store_explicit(&req->state, MM__SYNC_CANCELLED,
                          memory_order_relaxed);
    sw->unqueued = true;
    mm__wait_cancel(&sw->w, -reason);
    return;
  }
  bool unqueued = req->waiter != NULL ? mm__waiter_unqueue(req->waiter,
                                                          &req->task)
                                       : mm__pool_unqueue(sw->pool, req);
  if (unqueued) {
    sw->unqueued = true;
    mm__wait_cancel(&sw->w, -reason);   /* it never runs: ours to end */
    return;
  }
  sync_ask(sw, reason, deadline ? MM__STOP_DEADLINE : MM__STOP_CANCEL);
}

static void on_cancel(mm__wait_t *w, int reason) {
  sync_cancel(container_of(w, sync_wait_t, w), reason, false);
}

static void on_deadline(mm__timer_t *t) {
  sync_wait_t *sw = container_of(t, sync_wait_t, deadline);
  sw->armed = false;
  /* Ended already (taken out, abandoned or woken): the coroutine, ready,
   * will stop nothing more. */
  if (sw->w.coro->wait != &sw->w)
    return;
  sync_cancel(sw, ETIMEDOUT, true);
}

/* A call accepted, then refused before fn could run: cleanup owns arg if
 * the refusal is one of the three codes of the ownership rule. */
static int give_back(const mm_sync_options_t *o, void *arg, int r) {
  if ((r == -ECANCELED || r == -ETIMEDOUT || r == -ESHUTDOWN) && o != NULL &&
      o->cleanup != NULL)
    o->cleanup(arg, r);
  return r;
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
  case MM_AFFINITY_LANESET:
    return o->laneset != NULL ? 0 : -EINVAL;
  default:
    return -EINVAL;
  }
}

/* A lane (or lane set) call from a plain thread: the lane's thread is the
 * point, so the call goes to pool and this thread blocks (inline if it is
 * one of pool's threads). */
static int lane_from_thread(mm__pool_t *pool, mm_fn fn, void *arg,
                            const mm_sync_options_t *o) {
  if (mm__pool_is_self(pool))
    return fn(arg);
  mm__wait_t w;
  int r = mm__wait_init(&w);
  if (r != 0)
    return r;
  mm__sync_req_t req = { .fn = fn, .arg = arg, .wait = &w };
  atomic_init(&req.cancel, 0);
  atomic_init(&req.stop, 0);
  atomic_init(&req.end, MM__END_PENDING);
  w.end = &req.end;
  r = mm__pool_submit(pool, &req);
  if (r != 0)
    return give_back(o, arg, r);
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
      return lane_from_thread(o->lane->pool, fn, arg, o);
    if (o != NULL && o->affinity == MM_AFFINITY_LANESET)
      return lane_from_thread(o->laneset->pool, fn, arg, o);
    return fn(arg);               /* a plain thread may block: inline */
  }

  /* Accepted from here: every refusal goes through give_back. */
  int reason = mm__coro_cancel_reason(c);
  if (reason != 0)
    return give_back(o, arg, -reason);
  mm__bridge_t *b = mm__bridge_of(c->loop);
  if (b == NULL)
    return give_back(o, arg, mm__bridge_error(c->loop));

  sync_wait_t sw;
  r = mm__wait_init(&sw.w);
  if (r != 0)
    return r;
  sw.w.cancel = on_cancel;
  sw.bridge = b;
  int affinity = o != NULL ? o->affinity : MM_AFFINITY_POOL;
  sw.pool = affinity == MM_AFFINITY_LANE      ? o->lane->pool
            : affinity == MM_AFFINITY_LANESET ? o->laneset->pool
                                              : b->pool;
  if (affinity == MM_AFFINITY_CALLER && c->caller == NULL &&
      (sw.pool = mm__bridge_sensitive(b)) == NULL)
    return -EAGAIN;
  sw.abandonable = o != NULL && o->abandon_on_cancel;
  sw.abandoned = false;
  sw.unqueued = false;
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
    req->proxy.waited = true;
  }
  req->on_heap = sw.abandonable;
  req->cleanup = o != NULL ? o->cleanup : NULL;
  req->on_cancel = o != NULL ? o->on_cancel : NULL;
  atomic_init(&req->cancel, 0);
  atomic_init(&req->stop, 0);
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
    } else if ((sw.pool = mm__bridge_sensitive(b)) == NULL) {
      r = -EAGAIN;
    } else {
      r = mm__pool_submit(sw.pool, req);
    }
  } else if (sw.pool == b->pool) {
    /* Handed to the pool with the others after this pass (bridge_flush);
     * the calls staged before, all of parked coroutines, go now if they
     * are many. */
    if (b->nstaged >= MM__STAGE_MAX)
      mm__bridge_flush(c->loop, b);
    atomic_store_explicit(&req->state, MM__SYNC_STAGED, memory_order_relaxed);
    mm__list_push_back(&b->staged, &req->link);
    b->nstaged++;
  } else {
    r = mm__pool_submit(sw.pool, req);
  }
  if (r != 0)
    goto err_timer;

  int status = mm__wait_block(&sw.w);
  if (sw.armed)
    mm__timer_stop(c->loop, &sw.deadline);
  if (sw.unqueued)
    give_back(o, arg, status);     /* fn never ran: arg is cleanup's */
  if (!sw.abandoned && req->on_heap) {
    /* Not abandoned after all: fn worked on a copy of the locals, which
     * become the coroutine's, as if fn had shared them (it returned, and
     * the coroutine was parked meanwhile). */
    if (atomic_load_explicit(&req->end, memory_order_relaxed) ==
        MM__END_WOKEN) {
      mm__locals_free(&c->locals);
      c->locals = req->snapshot;
      memset(&req->snapshot, 0, sizeof(req->snapshot));
    }
    req_free(req);
  }
  return status;

err_timer:
  if (sw.armed)
    mm__timer_stop(c->loop, &sw.deadline);
err_req:
  if (req != &local)
    req_free(req);
  return give_back(o, arg, r);
}

void mm_sync_options_init(mm_sync_options_t *o) {
  if (o != NULL)
    memset(o, 0, sizeof(*o));
}

int mm_run_sync(mm_fn fn, void *arg) {
  return mm_run_sync_ex(fn, arg, NULL);
}
