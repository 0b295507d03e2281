/* The scheduler: running, parking and waking coroutines on their loop.
 *
 * Ready coroutines run from the loop's uv_idle callback, in FIFO order, up
 * to a budget of steps per callback so that libuv still polls regularly.
 * A coroutine always switches back to the scheduler context (the driver
 * thread's stack inside that callback), never directly to another one.
 * The sanitizer fiber annotations live only in the pair of functions
 * around mm__ctx_switch below.
 *
 * Loop thread only, except mm_cancel's flag (an atomic CAS) and what it
 * posts through remote.c.  Not done here: loop life cycle (loop.c), handles
 * and join (coro.c), memory (stack.c).
 */
#include "mm-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MM__ASAN
# include <sanitizer/common_interface_defs.h>
#endif
#ifdef MM__TSAN
# include <sanitizer/tsan_interface.h>
#endif

/* Coroutine steps per idle callback before libuv gets to poll again. */
#define STEP_BUDGET 4096

/* ---- the switch, with its sanitizer annotations -------------------------
 *
 * A step ends when the running coroutine suspends.  The thread then goes
 * straight to the next ready coroutine (one context switch per yield), or
 * back to the scheduler -- the driver's own stack inside the uv_idle
 * callback -- when nothing is ready, the budget is spent, or the coroutine
 * has ended (its block cannot be given back while we stand on it).
 * fiber_switch() is the one place that tells ASan and TSan about it.
 */

/* from, to: coroutines, or NULL for the scheduler.  final: from has ended
 * and will never be resumed. */
static void fiber_switch(mm_loop_t *loop, mm_coro_t *from, mm_coro_t *to,
                         bool final) {
  mm__ctx_t *from_ctx = from != NULL ? &from->ctx : &loop->sched_ctx;
  mm__ctx_t *to_ctx = to != NULL ? &to->ctx : &loop->sched_ctx;
#ifdef MM__ASAN
  void **fake = from != NULL ? &from->asan_fake_stack : &loop->asan_sched_fake;
  __sanitizer_start_switch_fiber(final ? NULL : fake,
                                 to != NULL ? to->stack_lo
                                            : loop->asan_sched_bottom,
                                 to != NULL ? to->stack_size
                                            : loop->asan_sched_size);
#endif
#ifdef MM__TSAN
  if (from == NULL)
    loop->tsan_sched_fiber = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(to != NULL ? to->tsan_fiber : loop->tsan_sched_fiber,
                         0);
#endif
  (void) final;
#ifdef MM__ASAN
  loop->switch_from = from;
#endif
  mm__ctx_switch(from_ctx, to_ctx);
#ifdef MM__ASAN
  /* Back on from's stack.  Whoever switched here set switch_from; when it
   * was the scheduler, ASan just told us the scheduler's stack bounds,
   * which the next switch back to it needs. */
  const void *bottom;
  size_t size;
  __sanitizer_finish_switch_fiber(*fake, &bottom, &size);
  if (loop->switch_from == NULL) {
    loop->asan_sched_bottom = (void *) bottom;
    loop->asan_sched_size = size;
  }
#endif
}

static void coro_main(void *arg) {
  mm_coro_t *c = arg;
#ifdef MM__ASAN
  const void *bottom;
  size_t size;
  __sanitizer_finish_switch_fiber(NULL, &bottom, &size);
  if (c->loop->switch_from == NULL) {
    c->loop->asan_sched_bottom = (void *) bottom;
    c->loop->asan_sched_size = size;
  }
#endif
  c->status = c->fn(c->arg);
  c->state = MM__CORO_DONE;
  mm__coro_suspend(c);
  mm__assert(!"a finished coroutine was resumed");
}

/* The port's "last word": entry functions never return. */
void mm__ctx_entry_returned(void *arg) {
  mm_coro_t *c = arg;
  fprintf(stderr, "mixmode: coroutine %" PRIu64 " '%s' returned from its "
          "context entry; the stack is corrupt\n",
          c->id, c->name != NULL ? c->name : "");
  abort();
}

/* ---- states ------------------------------------------------------------ */

int mm__coro_cancel_reason(const mm_coro_t *c) {
  /* Pairs with the CAS in mm_cancel / on_deadline: seeing the reason is
   * all that is needed, no data travels with it. */
  return atomic_load_explicit(&c->cancel_reason, memory_order_relaxed);
}

void mm__coro_make_ready(mm_coro_t *c) {
  mm_loop_t *loop = c->loop;
  c->state = MM__CORO_READY;
  mm__list_push_back(&loop->ready, &c->link);
  /* Inside a pass (budget > 0: this thread is in mm__sched_run_ready)
   * the pass either runs c or, at its end, starts the idle handle for
   * what is left: no libuv call per yield. */
  if (loop->budget == 0)
    mm__loop_wake_ready(loop);
}

void mm__coro_wake_local(mm_coro_t *c, int status) {
  mm__assert(c->state == MM__CORO_PARKED);
  c->wait = NULL;
  c->wake_status = status;
  mm__coro_make_ready(c);
}

/* Delivers a requested cancellation to the coroutine's current wait, if it
 * is parked in a cancellable one that has not seen it yet.  A coroutine
 * not parked sees the request at its next suspension. */
void mm__coro_interrupt(mm_coro_t *c) {
  int reason = mm__coro_cancel_reason(c);
  if (reason == 0 || c->state != MM__CORO_PARKED)
    return;
  mm__wait_t *w = c->wait;
  if (!w->cancellable || w->cancel_seen)
    return;
  w->cancel_seen = true;
  if (w->cancel != NULL)
    w->cancel(w, reason);
  else
    mm__wait_cancel(w, -reason);
}

static void on_deadline(mm__timer_t *t) {
  mm_coro_t *c = container_of(t, mm_coro_t, deadline);
  mm__set_reason(&c->cancel_reason, ETIMEDOUT);
  mm__coro_interrupt(c);
}

static void on_sleep_timer(mm__timer_t *t) {
  mm__wait_complete(container_of(t, mm_coro_t, sleep_timer)->wait, 0);
}

static void on_dl_timer(mm__timer_t *t);

void mm__coro_admit(mm_coro_t *c) {
  mm_loop_t *loop = c->loop;

  c->id = ++loop->next_id;
  /* The loop's cached time, not a clock read: only the age in diagnostics
   * uses it, and a spawn is too cheap to pay for clock_gettime. */
  c->born = uv_now(loop->uv);
  mm__timer_init(&c->sleep_timer, on_sleep_timer);
  mm__timer_init(&c->deadline, on_deadline);
  mm__timer_init(&c->dl_timer, on_dl_timer);
  mm__list_push_back(&loop->live, &c->all);
  mm__counter_add(&loop->nlive, 1);
  if (atomic_load_explicit(&loop->state, memory_order_relaxed) !=
      MM__LOOP_OPEN)
    mm__set_reason(&c->cancel_reason, ECANCELED);
  if (c->timeout_ms != 0 &&
      mm__timer_start(loop, &c->deadline, c->timeout_ms) != 0) {
    mm__log(MM_LOG_ERROR, "coroutine %" PRIu64 ": no memory for its "
            "deadline timer; it times out at once", c->id);
    on_deadline(&c->deadline);
  }
  mm__coro_make_ready(c);
  mm__loop_update_refs(loop);
}

/* The coroutine has ended (or was cancelled before it ran): publish its
 * status to the handle and wake a joiner.  Loop thread, scheduler side. */
static void finish(mm_loop_t *loop, mm_coro_t *c) {
  c->state = MM__CORO_DONE;
  mm__timer_stop(loop, &c->sleep_timer);
  mm__timer_stop(loop, &c->deadline);
  mm__deadlines_free(&c->deadlines);
  if (mm__coro_cancel_reason(c) == ETIMEDOUT)
    c->status = -ETIMEDOUT;
  mm__locals_free(&c->locals);
  if (c->caller != NULL) {
    mm__waiter_unref(c->caller);
    c->caller = NULL;
  }
  mm__list_remove(&c->all);
  mm__counter_add(&loop->nlive, -1);

  /* Pairs with the joiner's CAS (coro.c): status is written before. */
  uintptr_t prev = atomic_exchange_explicit(&c->join, MM__JOIN_ENDED,
                                            memory_order_acq_rel);
  if (prev == MM__JOIN_DETACHED) {
    /* Nobody will see the status: a failure is reported here.  Not a
     * cancellation that was asked for (the loop's stop or free, or an
     * mm_cancel before the detach), which is what -ECANCELED from a
     * cancelled coroutine is; a spawn deadline (-ETIMEDOUT) and every
     * other non-zero value of fn are. */
    if (c->status != 0 && !(c->status == -ECANCELED &&
                            mm__coro_cancel_reason(c) == ECANCELED))
      mm__log(MM_LOG_WARN, "detached coroutine %" PRIu64 " '%s' failed: "
              "status %d (%s)", c->id, c->name != NULL ? c->name : "",
              c->status, mm_strerror(c->status));
    atomic_store_explicit(&c->join, MM__JOIN_FREED, memory_order_relaxed);
    mm__handle_retire(c);
    mm__coro_release(c);
    return;
  }
  if (c->auto_release) {
    /* Spawned for a waiter that wants only the status (mm__spawn_for):
     * nobody holds a handle, so the block goes back at once.  The waiter
     * may not look at the loop after its wake (it may be freed by then),
     * so a coroutine the stop cancelled answers -ESHUTDOWN from here. */
    atomic_store_explicit(&c->join, MM__JOIN_FREED, memory_order_relaxed);
    int status = c->status;
    if (status == -ECANCELED && mm__loop_stopping(loop))
      status = -ESHUTDOWN;
    mm__handle_retire(c);
    mm__coro_release(c);
    mm__wait_complete((mm__wait_t *) prev, status);
    return;
  }
  mm__list_push_back(&loop->zombies, &c->all);
  if (prev != MM__JOIN_NONE) {
    loop->njoining++;
    c->joiner_woken = true;
    mm__wait_complete((mm__wait_t *) prev, c->status);
  }
}

/* Gives the coroutine's block back to the cache.  Its handle is gone. */
void mm__coro_release(mm_coro_t *c) {
  mm_loop_t *loop = c->loop;

  /* An event still queued for c (a racing mm_cancel) must be drained
   * before the block is reused: let the drain release it. */
  unsigned bits = atomic_load_explicit(&c->remote_bits, memory_order_acquire);
  if (bits & MM__REMOTE_QUEUED) {
    atomic_fetch_or_explicit(&c->remote_bits, MM__REMOTE_RELEASE,
                             memory_order_relaxed);
    return;
  }
  mm__list_remove(&c->all);  /* from zombies, if there */
  if (c->joiner_woken) {
    c->joiner_woken = false;
    loop->njoining--;
  }
  free(c->name);
  c->name = NULL;
  mm__coro_cache_put(loop, c);
  mm__loop_update_refs(loop);
}

/* ---- running ----------------------------------------------------------- */

/* Sets c up for its first step. */
static void first_run(mm_coro_t *c) {
  c->started = true;
  mm__guard_thread();
  mm__ctx_make(&c->ctx, c->stack_lo, c->stack_size, coro_main, c);
#ifdef MM__TSAN
  /* Kept with the block (stack.c): creating a TSan fiber is slow. */
  if (c->tsan_fiber == NULL)
    c->tsan_fiber = __tsan_create_fiber(0);
#endif
}

static void step_begin(mm_loop_t *loop, mm_coro_t *c) {
  c->state = MM__CORO_RUNNING;
  mm__tls.coro = c;
  if (loop->opt.slow_step_ms == 0)
    return;
  /* For the watchdog; the orderings are explained at the top of
   * watchdog.c.  The thread's id is stored only when another thread
   * starts running the loop's steps. */
  pthread_t self = pthread_self();
  if (!pthread_equal(self, loop->step_thread)) {
    loop->step_thread = self;
    atomic_store_explicit(&loop->step_tid, mm__thread_tid(),
                          memory_order_relaxed);
  }
  /* The signal handler, on this thread, trusts mm__tls.coro once it sees
   * the step's number and start: keep the compiler from moving them. */
  atomic_signal_fence(memory_order_seq_cst);
  uint64_t seq = atomic_load_explicit(&loop->step_seq, memory_order_relaxed);
  atomic_store_explicit(&loop->step_seq, seq + 1, memory_order_relaxed);
  atomic_store_explicit(&loop->step_start, uv_hrtime(), memory_order_relaxed);
}

/* A step of slow_step_ms or more is counted once (here or by the
 * watchdog's first report, see watchdog.c) and gets a closing line: a
 * warning if the watchdog did not report it while it ran (it ended
 * before the watchdog looked), else the total at INFO. */
static void step_end(mm_loop_t *loop, mm_coro_t *c) {
  if (loop->opt.slow_step_ms == 0)
    return;
  uint64_t now = uv_hrtime();
  uint64_t start = atomic_load_explicit(&loop->step_start,
                                        memory_order_relaxed);
  atomic_store_explicit(&loop->step_start, 0, memory_order_relaxed);
  atomic_signal_fence(memory_order_seq_cst);
  uint64_t ms = (now - start) / 1000000;
  if (ms < loop->opt.slow_step_ms)
    return;
  uint64_t seq = atomic_load_explicit(&loop->step_seq, memory_order_relaxed);
  bool reported = atomic_exchange_explicit(&loop->step_counted, seq,
                                           memory_order_acq_rel) == seq;
  if (!reported)
    atomic_fetch_add_explicit(&loop->slow_steps, 1, memory_order_relaxed);
  mm__log(reported ? MM_LOG_INFO : MM_LOG_WARN, "coroutine %" PRIu64 " '%s' "
          "held the loop for %" PRIu64 " ms without suspending "
          "(slow_step_ms = %u)", c->id, c->name != NULL ? c->name : "", ms,
          loop->opt.slow_step_ms);
}

/* The ready coroutine to hand the thread to directly, or NULL for "go back
 * to the scheduler".  One not yet started but already cancelled is left
 * to the scheduler, which ends it without running it. */
static mm_coro_t *next_direct(mm_loop_t *loop) {
  if (loop->budget == 0 || mm__list_empty(&loop->ready))
    return NULL;
  mm_coro_t *c = container_of(loop->ready.next, mm_coro_t, link);
  if (!c->started) {
    if (mm__coro_cancel_reason(c) != 0)
      return NULL;
    first_run(c);
  }
  mm__list_remove(&c->link);
  loop->budget--;
  return c;
}

/* The running coroutine c ends its step; its state already says why
 * (READY: yielded, PARKED, DONE).  Returns when c runs again. */
void mm__coro_suspend(mm_coro_t *c) {
  mm_loop_t *loop = c->loop;
  bool final = c->state == MM__CORO_DONE;

  step_end(loop, c);
  mm_coro_t *next = final ? NULL : next_direct(loop);
  if (next == c) {          /* yielded with nobody else ready */
    step_begin(loop, c);
    return;
  }
  if (next != NULL) {
    step_begin(loop, next);
  } else {
    loop->back = c;
    mm__tls.coro = NULL;
  }
  fiber_switch(loop, c, next, final);
}

/* Scheduler side: runs c for a step (and whatever it hands over to). */
static void resume(mm_loop_t *loop, mm_coro_t *c) {
  if (!c->started) {
    int reason = mm__coro_cancel_reason(c);
    if (reason != 0) {
      c->status = -reason;
      finish(loop, c);
      return;
    }
    first_run(c);
  }
  step_begin(loop, c);
  fiber_switch(loop, NULL, c, false);
  mm_coro_t *back = loop->back;
  if (back->state == MM__CORO_DONE)
    finish(loop, back);
}

/* Lets the bridge layer hand over the work the coroutines staged: at the
 * end of each pass and when a coroutine yields (it may wait for that
 * work). */
static void flush_bridge(mm_loop_t *loop) {
  /* Acquire pairs with the release store in mm__loop_set_bridge. */
  void *bridge = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (bridge != NULL)
    loop->bridge_ops->flush(loop, bridge);
}

void mm__sched_run_ready(mm_loop_t *loop) {
  loop->budget = STEP_BUDGET;
  while (loop->budget > 0) {
    mm__list_t *l = mm__list_pop_front(&loop->ready);
    if (l == NULL)
      break;
    loop->budget--;
    resume(loop, container_of(l, mm_coro_t, link));
  }
  loop->budget = 0;
  flush_bridge(loop);
  if (mm__list_empty(&loop->ready))
    uv_idle_stop(&loop->idle);
  else
    mm__loop_wake_ready(loop);   /* what the pass left (make_ready) */
  mm__loop_update_refs(loop);
}

/* ---- suspension -------------------------------------------------------- */

/* ---- deadlines (mm_deadline_push/pop) ------------------------------------
 *
 * A deadline bounds a stretch of waiting calls without cancelling the
 * coroutine.  Each coroutine (and plain thread) keeps a stack of them;
 * the earliest applies.  It reaches waits at one place, mm__park: a wait
 * that parks while the earliest deadline has passed, or that is still
 * parked when the deadline timer (dl_timer, armed for the earliest while
 * the coroutine is parked) fires, is ended as a cancel would end it, with
 * ETIMEDOUT and by_deadline set -- once, like a cancel (cancel_seen).
 * Its cancel callback tells the two apart where they differ: a join
 * leaves its child alone, a run_sync call is treated as on its own
 * deadline, an await runs on_cancel and goes on.  Calls that decide at
 * entry (mm_yield, mm_sleep, run_sync...) ask mm__coro_stop_reason.
 */

static uint64_t *dl_at(mm__deadlines_t *ds) {
  return ds->more != NULL ? ds->more : ds->small;
}

bool mm__deadline_passed(const mm__deadlines_t *ds) {
  return ds->n > 0 && ds->hold == 0 && uv_hrtime() >= ds->earliest;
}

bool mm__deadline_ms_left(const mm__deadlines_t *ds, uint64_t *ms) {
  if (ds->n == 0 || ds->hold != 0)
    return false;
  uint64_t now = uv_hrtime();
  *ms = ds->earliest > now ? (ds->earliest - now + 999999) / 1000000 : 0;
  return true;
}

int mm__thread_timeout(uint64_t *timeout_ms) {
  uint64_t left;
  if (!mm__deadline_ms_left(&mm__tls.deadlines, &left))
    return 0;
  if (left == 0)
    return -ETIMEDOUT;
  if (*timeout_ms == 0 || left < *timeout_ms)
    *timeout_ms = left;
  return 0;
}

int mm__coro_stop_reason(const mm_coro_t *c) {
  int reason = mm__coro_cancel_reason(c);
  if (reason == 0 && mm__deadline_passed(&c->deadlines))
    reason = ETIMEDOUT;
  return reason;
}

mm__deadlines_t *mm__deadlines_here(void) {
  if (mm__tls.coro != NULL)
    return &mm__tls.coro->deadlines;
  return mm__tls.loop != NULL ? NULL : &mm__tls.deadlines;
}

void mm__deadline_hold(void) {
  mm__deadlines_t *ds = mm__deadlines_here();
  if (ds != NULL)
    ds->hold++;
}

void mm__deadline_release(void) {
  mm__deadlines_t *ds = mm__deadlines_here();
  if (ds != NULL)
    ds->hold--;
}

void mm__deadlines_free(mm__deadlines_t *ds) {
  free(ds->more);
  memset(ds, 0, sizeof(*ds));
}

int mm_deadline_push(uint64_t timeout_ms) {
  mm__deadlines_t *ds = mm__deadlines_here();
  if (ds == NULL)
    return -EDEADLK;
  if (ds->n == (ds->cap != 0 ? ds->cap : 4)) {
    unsigned cap = ds->n * 2;
    uint64_t *more = malloc(cap * sizeof(*more));
    if (more == NULL)
      return -ENOMEM;
    memcpy(more, dl_at(ds), ds->n * sizeof(*more));
    free(ds->more);
    ds->more = more;
    ds->cap = cap;
  }
  uint64_t now = uv_hrtime();
  uint64_t at = timeout_ms > (UINT64_MAX - now) / 1000000
                    ? UINT64_MAX : now + timeout_ms * 1000000;
  dl_at(ds)[ds->n++] = at;
  if (ds->n == 1 || at < ds->earliest)
    ds->earliest = at;
  return 0;
}

int mm_deadline_pop(void) {
  mm__deadlines_t *ds = mm__deadlines_here();
  if (ds == NULL)
    return -EDEADLK;
  if (ds->n == 0)
    return -EINVAL;
  uint64_t *at = dl_at(ds);
  uint64_t mine = at[--ds->n];
  ds->earliest = UINT64_MAX;
  for (unsigned i = 0; i < ds->n; i++)
    if (at[i] < ds->earliest)
      ds->earliest = at[i];
  if (ds->n == 0 && ds->more != NULL) {
    free(ds->more);
    ds->more = NULL;
    ds->cap = 0;
  }
  return uv_hrtime() >= mine ? -ETIMEDOUT : 0;
}

/* The earliest deadline has passed while c is parked in w (loop thread):
 * ends w as a cancel would, with ETIMEDOUT, once. */
static void deadline_reached(mm_coro_t *c, mm__wait_t *w) {
  if (!w->cancellable || w->cancel_seen)
    return;
  w->cancel_seen = true;
  w->by_deadline = true;
  if (w->cancel != NULL)
    w->cancel(w, ETIMEDOUT);
  else
    mm__wait_cancel(w, -ETIMEDOUT);
}

/* Arms c's deadline timer for what is left of its earliest deadline. */
static bool dl_arm(mm_coro_t *c) {
  uint64_t ms = 1;
  mm__deadline_ms_left(&c->deadlines, &ms);
  return mm__timer_start(c->loop, &c->dl_timer, ms != 0 ? ms : 1) == 0;
}

static void on_dl_timer(mm__timer_t *t) {
  mm_coro_t *c = container_of(t, mm_coro_t, dl_timer);
  if (c->state != MM__CORO_PARKED)
    return;
  /* libuv's timers run on its cached clock, which may lag: a timer can
   * fire a little before the deadline, which every later check measures
   * with uv_hrtime().  Then wait for the rest. */
  if (!mm__deadline_passed(&c->deadlines)) {
    if (dl_arm(c))
      return;
  }
  deadline_reached(c, c->wait);
}

int mm__park(mm__wait_t *w) {
  mm_coro_t *c = w->coro;

  c->wait = w;
  c->state = MM__CORO_PARKED;
  bool timed = false;
  if (w->cancellable) {
    int reason = mm__coro_cancel_reason(c);
    bool passed = reason == 0 && mm__deadline_passed(&c->deadlines);
    if ((reason != 0 || passed) && w->cancel == NULL) {
      /* Nobody else can reach a wait without a cancel callback yet: the
       * claim is ours (wait.c, rule 4). */
      mm__end_claim(w->end, MM__END_CANCELLED);
      c->wait = NULL;
      c->state = MM__CORO_RUNNING;
      return reason != 0 ? -reason : -ETIMEDOUT;
    }
    /* A wait with its own cancel callback may already have handed work
     * to another thread (a run_sync request in a pool): deliver the
     * cancellation as if it came right after parking, and let the
     * callback decide when the wait ends. */
    if (reason != 0) {
      mm__coro_interrupt(c);
    } else if (passed) {
      deadline_reached(c, w);
    } else if (c->deadlines.n > 0 && c->deadlines.hold == 0) {
      timed = dl_arm(c);
    }
  }
  mm__coro_suspend(c);
  if (timed)
    mm__timer_stop(c->loop, &c->dl_timer);
  return c->wake_status;
}

void mm__sched_end_unstarted(mm_loop_t *loop) {
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->ready) {
    mm_coro_t *c = container_of(n, mm_coro_t, link);
    int reason = mm__coro_cancel_reason(c);
    if (c->started || reason == 0)
      continue;
    mm__list_remove(&c->link);
    c->status = -reason;
    finish(loop, c);
  }
  if (mm__list_empty(&loop->ready))
    uv_idle_stop(&loop->idle);
  mm__loop_update_refs(loop);
}

void mm__cancel_all(mm_loop_t *loop) {
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    mm__set_reason(&c->cancel_reason, ECANCELED);
    mm__coro_interrupt(c);
  }
}

/* ---- public calls of the running coroutine ----------------------------- */

mm_coro_t *mm_current(void) {
  if (mm__tls.coro != NULL)
    return mm__tls.coro->handle;
  return mm__tls.proxy != NULL ? mm__tls.proxy->handle : NULL;
}

int mm__cancel_reason_here(void) {
  if (mm__tls.coro != NULL)
    return mm__coro_cancel_reason(mm__tls.coro);
  const mm__proxy_t *p = mm__tls.proxy;
  if (p == NULL)
    return 0;
  /* In a blocking call run for a coroutine, the call itself may have been
   * cancelled (its deadline) without the coroutine being cancelled; an
   * abandonable call's snapshot has only the call's own (a cancel of the
   * coroutine reaches it there too).  Relaxed, as mm__coro_cancel_reason. */
  int reason = atomic_load_explicit(p->cancel, memory_order_relaxed);
  if (reason == 0 && p->coro_cancel != NULL)
    reason = atomic_load_explicit(p->coro_cancel, memory_order_relaxed);
  return reason;
}

bool mm_cancelled(void) {
  return mm__cancel_reason_here() != 0;
}

/* mm__coro_stop_reason without a call when no deadline is set: mm_yield
 * asks it twice per switch. */
static inline int stop_reason_fast(const mm_coro_t *c) {
  int reason = mm__coro_cancel_reason(c);
  if (reason == 0 && c->deadlines.n > 0)
    reason = mm__coro_stop_reason(c);
  return reason;
}

/* mm_yield's direct hand-over, for the common case: a pass is under way
 * (budget left), no slow-step watch (step_begin/step_end have nothing to
 * do), and the first ready coroutine has started.  It is what
 * mm__coro_make_ready + mm__coro_suspend would do then, without the
 * checks that cannot apply (final, next == c, a fresh or cancelled next):
 * a yield is the one suspension made back to back, so its few
 * instructions are the scheduler's share of the switch (bench/switch).
 * Counts the step (yield_rotate takes next off the queue); NULL: the
 * general path. */
static inline mm_coro_t *yield_next(mm_loop_t *loop) {
  if (loop->budget == 0 || loop->opt.slow_step_ms != 0 ||
      mm__list_empty(&loop->ready))
    return NULL;
  mm_coro_t *next = container_of(loop->ready.next, mm_coro_t, link);
  if (!next->started)
    return NULL;
  loop->budget--;
  return next;
}

/* Puts c behind the ready coroutines and takes next, their first, out.
 * With nobody else ready (the usual ping-pong) the queue goes from [next]
 * to [c] by stores alone, no pointer chased through next's neighbours. */
static inline void yield_rotate(mm_loop_t *loop, mm_coro_t *c,
                                mm_coro_t *next) {
  mm__list_t *h = &loop->ready;
  if (next->link.next == h) {
    h->next = h->prev = &c->link;
    c->link.next = c->link.prev = h;
    mm__list_init(&next->link);
  } else {
    mm__list_remove(&next->link);
    mm__list_push_back(h, &c->link);
  }
}

int mm_yield(void) {
  mm_coro_t *c = mm__tls.coro;

  if (c == NULL) {
    if (mm__tls.loop != NULL)
      return -EDEADLK;
    sched_yield();
    return 0;
  }
  int reason = stop_reason_fast(c);
  if (reason != 0)
    return -reason;
  mm_loop_t *loop = c->loop;
  flush_bridge(loop);
  mm_coro_t *next = yield_next(loop);
  if (next != NULL) {
    /* c goes behind whatever is ready; budget > 0, so no idle start. */
    c->state = MM__CORO_READY;
    yield_rotate(loop, c, next);
    next->state = MM__CORO_RUNNING;
    mm__tls.coro = next;
    fiber_switch(loop, c, next, false);
  } else {
    mm__coro_make_ready(c);
    mm__coro_suspend(c);
  }
  reason = stop_reason_fast(c);
  return reason != 0 ? -reason : 0;
}

/* The timer and the cancel both run on the loop's thread: whichever
 * comes first ends the sleep. */
static void sleep_cancel(mm__wait_t *w, int reason) {
  mm_coro_t *c = w->coro;
  mm__timer_stop(c->loop, &c->sleep_timer);
  mm__wait_cancel(w, -reason);
}

int mm_sleep(uint64_t ms) {
  mm_coro_t *c = mm__tls.coro;

  if (c == NULL) {
    if (mm__tls.loop != NULL)
      return -EDEADLK;
    /* A plain thread: nanosleep, cut short by its deadline if any. */
    int r = 0;
    uint64_t left;
    if (mm__deadline_ms_left(&mm__tls.deadlines, &left) && left <= ms) {
      ms = left;              /* the deadline passes first (or as it ends) */
      r = -ETIMEDOUT;
    }
    struct timespec ts = { (time_t) (ms / 1000), (long) (ms % 1000) * 1000000 };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
      ;
    return r;
  }

  mm__wait_t w;
  int r = mm__wait_init(&w);
  if (r != 0)
    return r;
  w.cancel = sleep_cancel;
  int reason = mm__coro_stop_reason(c);
  if (reason != 0)
    return -reason;
  r = mm__timer_start(c->loop, &c->sleep_timer, ms);
  if (r != 0)
    return r;
  return mm__wait_block(&w);
}
