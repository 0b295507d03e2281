/* Blocking a plain thread: the colour-blind half of every waiting call.
 *
 * Each thread that ever waits gets one mm__waiter_t (created on first use,
 * freed by a pthread key destructor at thread exit).  A wait of that thread
 * is an mm__wait_t on its stack whose done flag is protected by the
 * waiter's mu.  While it waits, the thread also runs the tasks other threads
 * post to it (thread-sensitive calls, bridge/), in order.
 *
 * Lock order: loop->mu may be held when a waiter's mu is taken, never the
 * reverse.  Tasks and wakes are called without the mutex held.
 *
 * fork: in the child only the forking thread goes on, and its waiter may
 * be locked by a thread that did not come along (a waker between lock and
 * unlock in mm__wait_wake) and hold tasks of coroutines that will never
 * run there.  A pthread_atfork child handler makes it new, keeping its
 * references and its serving count (the thread may have forked from a
 * task it runs while it serves).
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

__thread mm__tls_t mm__tls __attribute__((tls_model("initial-exec")));
static __thread mm__waiter_t *self_waiter;
static pthread_key_t waiter_key;
static pthread_once_t waiter_once = PTHREAD_ONCE_INIT;

void mm__waiter_ref(mm__waiter_t *w) {
  atomic_fetch_add_explicit(&w->refs, 1, memory_order_relaxed);
}

void mm__waiter_unref(mm__waiter_t *w) {
  /* acq_rel: every use by other holders happens before the free. */
  if (atomic_fetch_sub_explicit(&w->refs, 1, memory_order_acq_rel) != 1)
    return;
  pthread_mutex_destroy(&w->mu);
  free(w);
}

/* Thread exit: the thread's own reference goes; coroutines that name
 * this thread as their caller may hold others a while longer. */
static void waiter_destroy(void *p) {
  self_waiter = NULL;
  mm__waiter_unref(p);
  mm__locals_free(&mm__tls.locals);
}

static void waiter_atfork_child(void) {
  mm__waiter_t *w = self_waiter;
  if (w == NULL)
    return;
  pthread_mutex_init(&w->mu, NULL);
  mm__list_init(&w->tasks);
  atomic_store_explicit(&w->task_hint, false, memory_order_relaxed);
  atomic_store_explicit(&w->sleeping, false, memory_order_relaxed);
}

/* Once, before the first waiter exists. */
static void waiter_key_init(void) {
  pthread_key_create(&waiter_key, waiter_destroy);
  pthread_atfork(NULL, NULL, waiter_atfork_child);
}

#ifdef HAVE_PTHREAD_CONDATTR_SETCLOCK
# define COND_CLOCK CLOCK_MONOTONIC
#else
/* No way to choose (macOS): a step of the wall clock lengthens or
 * shortens a wait under way; the loops around the waits recompute what is
 * left from uv_hrtime(), so none ends late for good or early unnoticed. */
# define COND_CLOCK CLOCK_REALTIME
#endif

int mm__cond_init(pthread_cond_t *cv) {
#ifdef HAVE_PTHREAD_CONDATTR_SETCLOCK
  pthread_condattr_t ca;
  int r = pthread_condattr_init(&ca);
  if (r != 0)
    return r;
  r = pthread_condattr_setclock(&ca, COND_CLOCK);
  if (r == 0)
    r = pthread_cond_init(cv, &ca);
  pthread_condattr_destroy(&ca);
  return r;
#else
  return pthread_cond_init(cv, NULL);
#endif
}

/* A deadline past ~30 years is cut there: no time_t overflows, and every
 * caller waits again for what is left after a timed-out wait. */
#define DEADLINE_MAX_MS ((uint64_t) 1000 * 1000000000)

void mm__cond_deadline(struct timespec *ts, uint64_t ms) {
  if (ms > DEADLINE_MAX_MS)
    ms = DEADLINE_MAX_MS;
  clock_gettime(COND_CLOCK, ts);
  ts->tv_sec += (time_t) (ms / 1000);
  ts->tv_nsec += (long) (ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

mm__waiter_t *mm__waiter_self(void) {
  if (self_waiter != NULL)
    return self_waiter;
  pthread_once(&waiter_once, waiter_key_init);
  mm__waiter_t *w = malloc(sizeof(*w));
  if (w == NULL)
    return NULL;
  pthread_mutex_init(&w->mu, NULL);
  atomic_init(&w->bell, 0);
  atomic_init(&w->sleeping, false);
  atomic_init(&w->posted_at, 0);
  atomic_init(&w->posted_cpu, -1);
  mm__list_init(&w->tasks);
  atomic_init(&w->refs, 1);
  atomic_init(&w->task_hint, false);
  mm__spin_init(&w->spin);
  w->serving = 0;
  pthread_setspecific(waiter_key, w);
  self_waiter = w;
  return w;
}

void mm__waiter_ring(mm__waiter_t *w) {
  mm__spin_mark_t now = mm__spin_mark();
  atomic_store_explicit(&w->posted_at, now.at, memory_order_relaxed);
  atomic_store_explicit(&w->posted_cpu, now.cpu, memory_order_relaxed);
  /* seq_cst, both: Dekker with the sleeper's store of sleeping and its
   * read of bell (see mm__waiter_t). */
  atomic_fetch_add_explicit(&w->bell, 1, memory_order_seq_cst);
  if (atomic_load_explicit(&w->sleeping, memory_order_seq_cst))
    mm__futex_wake(&w->bell, 1);
}

bool mm__waiter_post_serving(mm__waiter_t *w, mm__task_t *t) {
  pthread_mutex_lock(&w->mu);
  bool ok = w->serving > 0;
  if (ok) {
    mm__list_push_back(&w->tasks, &t->link);
    atomic_store_explicit(&w->task_hint, true, memory_order_relaxed);
  }
  pthread_mutex_unlock(&w->mu);
  /* After unlocking, so that the woken thread does not run into mu; the
   * poster's coroutine holds a reference to w (its caller). */
  if (ok)
    mm__waiter_ring(w);
  return ok;
}

bool mm__waiter_unqueue(mm__waiter_t *w, mm__task_t *t) {
  pthread_mutex_lock(&w->mu);
  /* A popped task is self-linked (mm__list_remove). */
  bool queued = t->link.next != &t->link;
  if (queued)
    mm__list_remove(&t->link);
  pthread_mutex_unlock(&w->mu);
  return queued;
}

void mm__waiter_serve_begin(mm__waiter_t *w) {
  pthread_mutex_lock(&w->mu);
  w->serving++;
  pthread_mutex_unlock(&w->mu);
}

void mm__waiter_serve_end(mm__waiter_t *w) {
  pthread_mutex_lock(&w->mu);
  if (--w->serving == 0) {
    /* No new task can come now; run those already here, on this thread,
     * where their callers asked for them to run.  Each is taken off under
     * mu, as in mm__waiter_block: a cancel that unqueues under mu finds a
     * task either still queued (it never runs) or gone (it runs here). */
    mm__list_t *n;
    while ((n = mm__list_pop_front(&w->tasks)) != NULL) {
      pthread_mutex_unlock(&w->mu);
      mm__task_t *t = container_of(n, mm__task_t, link);
      t->run(t);
      pthread_mutex_lock(&w->mu);
    }
    atomic_store_explicit(&w->task_hint, false, memory_order_relaxed);
  }
  pthread_mutex_unlock(&w->mu);
}

/* The spin's condition: w is done, or tasks came for this thread. */
static bool wait_ready(const void *arg) {
  const mm__wait_t *w = arg;
  /* Acquire pairs with the waker's release store: status is visible. */
  return atomic_load_explicit(&w->done, memory_order_acquire) ||
         atomic_load_explicit(&w->thread->task_hint, memory_order_relaxed);
}

/* Blocks until w is done (or, with a deadline from mm__cond_deadline,
 * until then), running
 * posted tasks meanwhile.  Spins a while first (lib/spin.c): the answer
 * may be microseconds away. */
int mm__waiter_block(mm__wait_t *w, const struct timespec *deadline,
                     int *status) {
  mm__waiter_t *me = w->thread;
  mm__spin_mark_t began = mm__spin_mark();

  if (mm__spin_begin(&me->spin)) {
    int got = mm__spin_wait(&me->spin, wait_ready, w);
    if (got != MM__SPIN_CAME)
      mm__spin_missed(&me->spin);
    if (got != MM__SPIN_MISSED &&
        atomic_load_explicit(&w->done, memory_order_acquire)) {
      *status = w->status;
      return 0;
    }
  }
  for (;;) {
    if (atomic_load_explicit(&w->done, memory_order_acquire))
      break;
    if (atomic_load_explicit(&me->task_hint, memory_order_relaxed)) {
      pthread_mutex_lock(&me->mu);
      mm__list_t *n = mm__list_pop_front(&me->tasks);
      if (mm__list_empty(&me->tasks))
        atomic_store_explicit(&me->task_hint, false, memory_order_relaxed);
      pthread_mutex_unlock(&me->mu);
      if (n != NULL) {
        mm__task_t *t = container_of(n, mm__task_t, link);
        t->run(t);
      }
      continue;
    }
    /* Announce the sleep, then read bell, then look once more: a waker
     * that made done or task_hint true after our look above either sees
     * sleeping and wakes us, or rang before our read of bell, and then
     * the look below sees what it made true (see mm__waiter_t). */
    atomic_store_explicit(&me->sleeping, true, memory_order_seq_cst);
    uint32_t seq = atomic_load_explicit(&me->bell, memory_order_seq_cst);
    int r = 0;
    if (!atomic_load_explicit(&w->done, memory_order_acquire) &&
        !atomic_load_explicit(&me->task_hint, memory_order_relaxed))
      r = mm__futex_wait(&me->bell, seq, deadline);
    atomic_store_explicit(&me->sleeping, false, memory_order_relaxed);
    if (r == -ETIMEDOUT) {
      if (atomic_load_explicit(&w->done, memory_order_acquire))
        break;
      return -ETIMEDOUT;
    }
    mm__spin_mark_t posted = {
      atomic_load_explicit(&me->posted_at, memory_order_relaxed),
      atomic_load_explicit(&me->posted_cpu, memory_order_relaxed)
    };
    mm__spin_woken(&me->spin, began, posted);
  }
  *status = w->status;
  return 0;
}
