/* Stopping a blocking call, and who owns its argument (API.md, "The
 * bridges"): on_cancel runs once, on the loop's thread, while fn runs,
 * for a cancel of the coroutine and for the call's own deadline, never
 * for a queued call, never after cleanup or after the call returned fn's
 * value; cleanup runs exactly once for every call that returns
 * -ECANCELED, -ETIMEDOUT or -ESHUTDOWN (fn's value if fn ran, else that
 * code), on the calling thread if fn never ran, on fn's thread if it did,
 * and never for any other return.  A running call past its own deadline
 * returns -ETIMEDOUT, at once with abandon_on_cancel, else when fn
 * returns, and the coroutine goes on uncancelled.
 *
 * Ordering without sleeps: a coroutine that must act once fn runs first
 * yields (the calls of the pass reach the pool), then blocks the loop's
 * thread on a latch fn opens -- timers and cancels wait meanwhile, so a
 * 1 ms deadline fires only once fn runs.
 */
#include "helpers.h"

#define VALUE 5                 /* what fn returns */

typedef struct {
  /* set by the test */
  bool             abandon;
  uint64_t         timeout_ms;
  bool             cancel;          /* a coroutine cancels the caller */
  bool             cancel_first;    /* the caller cancels itself first */
  bool             gate_by_holder;  /* the holder, not on_cancel, opens */
  mm_lane_t       *lane;            /* NULL: the pool (or laneset) */
  mm_laneset_t    *laneset;         /* NULL: the pool (or lane) */
  /* fn */
  mm_test_latch_t  started;
  mm_test_latch_t  gate;            /* opened by on_cancel */
  atomic_int       fn_runs;
  /* on_cancel */
  atomic_int       on_cancels;
  atomic_int       on_cancel_on_loop;     /* 1: on the loop's thread */
  atomic_int       on_cancel_too_late;    /* after cleanup or return */
  /* cleanup */
  mm_test_latch_t  cleaned;
  atomic_int       cleanups;
  atomic_int       cleanup_status;
  atomic_int       cleanup_on_loop;
  /* the caller */
  pthread_t        loop_thread;
  atomic_int       returned;
  int              result;
  int              cleanups_at_return;
  int              next_yield;
  mm_coro_t       *caller;
} call_t;

static void call_init(call_t *c) {
  memset(c, 0, sizeof *c);
  mm_test_latch_init(&c->started);
  mm_test_latch_init(&c->gate);
  mm_test_latch_init(&c->cleaned);
}

static void call_destroy(call_t *c) {
  mm_test_latch_destroy(&c->started);
  mm_test_latch_destroy(&c->gate);
  mm_test_latch_destroy(&c->cleaned);
}

static int gated_fn(void *arg) {
  call_t *c = arg;
  atomic_fetch_add(&c->fn_runs, 1);
  mm_test_latch_add(&c->started, 1);
  mm_test_latch_wait(&c->gate, 1);
  return VALUE;
}

static void interrupt(void *arg) {
  call_t *c = arg;
  atomic_fetch_add(&c->on_cancels, 1);
  atomic_store(&c->on_cancel_on_loop,
               pthread_equal(pthread_self(), c->loop_thread));
  if (atomic_load(&c->cleanups) != 0 || atomic_load(&c->returned) != 0)
    atomic_store(&c->on_cancel_too_late, 1);
  if (!c->gate_by_holder)
    mm_test_latch_add(&c->gate, 1);   /* as sqlite3_interrupt would */
}

static void clean(void *arg, int status) {
  call_t *c = arg;
  atomic_store(&c->cleanup_status, status);
  atomic_store(&c->cleanup_on_loop,
               pthread_equal(pthread_self(), c->loop_thread));
  atomic_fetch_add(&c->cleanups, 1);
  mm_test_latch_add(&c->cleaned, 1);
}

static int caller(void *arg) {
  call_t *c = arg;
  c->loop_thread = pthread_self();
  if (c->cancel_first)
    assert_mm_ok(mm_cancel(mm_current()));
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.abandon_on_cancel = c->abandon;
  o.timeout_ms = c->timeout_ms;
  o.cleanup = clean;
  o.on_cancel = interrupt;
  if (c->lane != NULL) {
    o.affinity = MM_AFFINITY_LANE;
    o.lane = c->lane;
  }
  if (c->laneset != NULL) {
    o.affinity = MM_AFFINITY_LANESET;
    o.laneset = c->laneset;
  }
  c->result = mm_run_sync_ex(gated_fn, c, &o);
  c->cleanups_at_return = atomic_load(&c->cleanups);
  atomic_store(&c->returned, 1);
  c->next_yield = mm_yield();
  return 0;
}

/* Spawned after the caller: lets its call reach the pool, holds the loop
 * until fn runs, then cancels the caller if asked. */
static int hold_until_started(void *arg) {
  call_t *c = arg;
  assert_mm_ok(mm_yield());
  mm_test_latch_wait(&c->started, 1);
  if (c->cancel)
    assert_mm_ok(mm_cancel(c->caller));
  if (c->gate_by_holder) {
    /* The loop's timers run in the order they are due: the call's
     * deadline, armed earlier and shorter, passes before this sleep. */
    assert_mm_ok(mm_sleep(c->timeout_ms + 1));
    mm_test_latch_add(&c->gate, 1);
  }
  return 0;
}

static void run_call(mm_loop_t *loop, call_t *c) {
  mm_coro_t *h;
  assert_mm_ok(mm_spawn(loop, caller, c, &c->caller));
  assert_mm_ok(mm_spawn(loop, hold_until_started, c, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c->caller));
  assert_mm_ok(mm_join(h));
}

/* The call was asked to stop once, on the loop's thread, in time. */
static void assert_interrupted_once(call_t *c) {
  assert_int_equal(atomic_load(&c->fn_runs), 1);
  assert_int_equal(atomic_load(&c->on_cancels), 1);
  assert_true(atomic_load(&c->on_cancel_on_loop));
  assert_false(atomic_load(&c->on_cancel_too_late));
}

/* ---- a running call ----------------------------------------------------- */

static void test_cancel_of_a_running_call_asks_it_to_stop_and_waits(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.cancel = true;
  run_call(loop, &c);
  assert_interrupted_once(&c);
  assert_int_equal(c.result, VALUE);          /* it completed */
  assert_int_equal(atomic_load(&c.cleanups), 0);
  assert_status(c.next_yield, -ECANCELED);    /* still pending */
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

static void test_cancel_of_a_running_abandonable_call_returns_at_once(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.cancel = true;
  c.abandon = true;
  run_call(loop, &c);
  assert_status(c.result, -ECANCELED);
  mm_test_latch_wait(&c.cleaned, 1);
  assert_interrupted_once(&c);
  assert_int_equal(atomic_load(&c.cleanups), 1);
  assert_int_equal(atomic_load(&c.cleanup_status), VALUE);
  assert_false(atomic_load(&c.cleanup_on_loop));
  assert_status(c.next_yield, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

/* A 500 ms deadline was answered after the whole query: now the call is
 * asked to stop at the deadline and returns -ETIMEDOUT, its value going
 * to cleanup on fn's thread before the call returns. */
static void test_deadline_of_a_running_call_stops_it_and_returns_etimedout(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.timeout_ms = 1;
  run_call(loop, &c);
  assert_interrupted_once(&c);
  assert_status(c.result, -ETIMEDOUT);
  assert_int_equal(c.cleanups_at_return, 1);
  assert_int_equal(atomic_load(&c.cleanup_status), VALUE);
  assert_false(atomic_load(&c.cleanup_on_loop));
  assert_mm_ok(c.next_yield);                 /* not cancelled */
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

static void test_deadline_of_a_running_abandonable_call_returns_at_once(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.timeout_ms = 1;
  c.abandon = true;
  run_call(loop, &c);
  assert_status(c.result, -ETIMEDOUT);
  mm_test_latch_wait(&c.cleaned, 1);
  assert_interrupted_once(&c);
  assert_int_equal(atomic_load(&c.cleanups), 1);
  assert_int_equal(atomic_load(&c.cleanup_status), VALUE);
  assert_mm_ok(c.next_yield);
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

/* Cancelled first, then past its deadline while fn still runs: asked to
 * stop once; the deadline decides the return. */
static void test_cancel_then_deadline_asks_once_and_returns_etimedout(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.cancel = true;
  c.timeout_ms = 1;
  c.gate_by_holder = true;
  run_call(loop, &c);
  assert_interrupted_once(&c);
  assert_status(c.result, -ETIMEDOUT);
  assert_int_equal(c.cleanups_at_return, 1);
  assert_int_equal(atomic_load(&c.cleanup_status), VALUE);
  assert_status(c.next_yield, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

static void test_deadline_of_a_running_lane_call_stops_it(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.timeout_ms = 1;
  assert_mm_ok(mm_lane_new(loop, "db", &c.lane));
  run_call(loop, &c);
  assert_interrupted_once(&c);
  assert_status(c.result, -ETIMEDOUT);
  assert_int_equal(c.cleanups_at_return, 1);
  assert_int_equal(atomic_load(&c.cleanup_status), VALUE);
  assert_mm_ok(mm_lane_free(c.lane));
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

static void test_cancel_of_a_running_laneset_call_stops_it(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  c.cancel = true;
  c.abandon = true;
  mm_laneset_options_t lo;
  mm_laneset_options_init(&lo);
  lo.name = "db";
  lo.count = 2;
  assert_mm_ok(mm_laneset_new(loop, &lo, &c.laneset));
  run_call(loop, &c);
  assert_status(c.result, -ECANCELED);
  mm_test_latch_wait(&c.cleaned, 1);
  assert_interrupted_once(&c);
  assert_int_equal(atomic_load(&c.cleanup_status), VALUE);
  assert_mm_ok(mm_laneset_free(c.laneset));
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

/* ---- a call that never runs ----------------------------------------------- */

/* The only worker is held by another call while the caller's call waits
 * in the queue; the holder's coroutine cancels the caller, or the
 * caller's deadline passes, once the worker is held. */
typedef struct {
  call_t  *c;
  call_t   holder;
} queued_t;

static int hold_worker(void *arg) {
  queued_t *q = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  return mm_run_sync_ex(gated_fn, &q->holder, &o);
}

static int cancel_when_worker_held(void *arg) {
  queued_t *q = arg;
  assert_mm_ok(mm_yield());
  mm_test_latch_wait(&q->holder.started, 1);
  if (q->c->cancel)
    assert_mm_ok(mm_cancel(q->c->caller));
  return 0;
}

static int caller_then_release(void *arg) {
  queued_t *q = arg;
  caller(q->c);
  mm_test_latch_add(&q->holder.gate, 1);
  return 0;
}

static void check_queued_call_removed(bool abandon, bool by_deadline) {
  mm_loop_t *loop = mm_test_loop_new(1);
  call_t c;
  queued_t q = { .c = &c };
  call_init(&c);
  call_init(&q.holder);
  c.abandon = abandon;
  c.cancel = !by_deadline;
  c.timeout_ms = by_deadline ? 1 : 0;
  mm_coro_t *hw, *k;
  assert_mm_ok(mm_spawn(loop, hold_worker, &q, &hw));
  assert_mm_ok(mm_spawn(loop, caller_then_release, &q, &c.caller));
  assert_mm_ok(mm_spawn(loop, cancel_when_worker_held, &q, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(mm_join(hw), VALUE);
  assert_mm_ok(mm_join(c.caller));
  assert_mm_ok(mm_join(k));

  int want = by_deadline ? -ETIMEDOUT : -ECANCELED;
  assert_status(c.result, want);
  assert_int_equal(atomic_load(&c.fn_runs), 0);
  assert_int_equal(atomic_load(&c.on_cancels), 0);
  assert_int_equal(c.cleanups_at_return, 1);   /* before it returned */
  assert_status(atomic_load(&c.cleanup_status), want);
  assert_true(atomic_load(&c.cleanup_on_loop));  /* the calling thread */
  assert_status(c.next_yield, by_deadline ? 0 : -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&q.holder);
  call_destroy(&c);
}

static void test_cancelled_queued_call_is_cleaned_up_on_the_caller(
    void **state) {
  check_queued_call_removed(false, false);
}

static void test_cancelled_queued_abandonable_call_is_cleaned_up_once(
    void **state) {
  check_queued_call_removed(true, false);
}

static void test_queued_call_past_its_deadline_is_cleaned_up(void **state) {
  check_queued_call_removed(false, true);
}

static void test_queued_abandonable_call_past_its_deadline_is_cleaned_up(
    void **state) {
  check_queued_call_removed(true, true);
}

/* A call made while the coroutine's cancellation is pending is accepted,
 * then cancelled at once: cleanup owns arg. */
static void test_call_made_while_cancelled_is_cleaned_up(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  for (int abandon = 0; abandon < 2; abandon++) {
    call_t c;
    call_init(&c);
    c.cancel_first = true;
    c.abandon = abandon;
    mm_test_run_one(loop, caller, &c);
    assert_status(c.result, -ECANCELED);
    assert_int_equal(atomic_load(&c.fn_runs), 0);
    assert_int_equal(atomic_load(&c.on_cancels), 0);
    assert_int_equal(c.cleanups_at_return, 1);
    assert_status(atomic_load(&c.cleanup_status), -ECANCELED);
    call_destroy(&c);
  }
  assert_mm_ok(mm_loop_free(loop));
}

static int sleep_past_deadline_then_call(void *arg) {
  assert_status(mm_sleep(60000), -ETIMEDOUT);
  return caller(arg);
}

static void test_call_made_past_the_spawn_deadline_is_cleaned_up(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  /* Long enough for the coroutine to take its first step before (a
   * coroutine past its deadline before that never runs), far shorter
   * than its sleep. */
  so.timeout_ms = mm_test_under_valgrind() ? 1000 : 50;
  mm_coro_t *h;
  assert_mm_ok(mm_spawn_ex(loop, sleep_past_deadline_then_call, &c, &so, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(h), -ETIMEDOUT);   /* its status, past it */
  assert_status(c.result, -ETIMEDOUT);
  assert_int_equal(atomic_load(&c.fn_runs), 0);
  assert_int_equal(c.cleanups_at_return, 1);
  assert_status(atomic_load(&c.cleanup_status), -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

/* A call refused before it was accepted never took arg. */
static int call_with_bad_affinity(void *arg) {
  call_t *c = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = 99;
  o.cleanup = clean;
  o.on_cancel = interrupt;
  c->result = mm_run_sync_ex(gated_fn, c, &o);
  return 0;
}

static void test_a_refused_call_never_cleans_up(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  call_init(&c);
  mm_test_run_one(loop, call_with_bad_affinity, &c);
  assert_status(c.result, -EINVAL);
  assert_int_equal(atomic_load(&c.cleanups), 0);
  assert_int_equal(atomic_load(&c.fn_runs), 0);
  assert_mm_ok(mm_loop_free(loop));
  call_destroy(&c);
}

/* ---- on_cancel racing fn's end ---------------------------------------------- */

/* fn runs a few microseconds, or until on_cancel tells it to stop; a
 * coroutine cancels the caller (or the call's 1 ms deadline passes) after
 * a few microseconds of its own.  Whatever the interleaving: on_cancel at
 * most once, never after cleanup or after the call returned fn's value;
 * cleanup exactly once iff the call returned a bridge error. */
typedef struct {
  atomic_int      stop;
  atomic_int      fn_runs, fn_done;
  atomic_int      on_cancels, too_late;
  atomic_int      cleanups, cleanup_status;
  mm_test_latch_t cleaned;
  atomic_int      returned;
  uint64_t        fn_ns, cancel_ns;   /* how long each runs first */
  bool            abandon, by_deadline;
  int             result;
  mm_coro_t      *caller;
} race_t;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Busy for ns, or until *stop (NULL: never). */
static void busy(uint64_t ns, atomic_int *stop) {
  uint64_t end = now_ns() + ns;
  while (now_ns() < end && (stop == NULL || !atomic_load(stop)))
    ;
}

static int race_fn(void *arg) {
  race_t *r = arg;
  atomic_fetch_add(&r->fn_runs, 1);
  busy(r->fn_ns, &r->stop);
  atomic_store(&r->fn_done, 1);
  return VALUE;
}

static void race_on_cancel(void *arg) {
  race_t *r = arg;
  if (atomic_load(&r->cleanups) != 0 || atomic_load(&r->returned) != 0)
    atomic_store(&r->too_late, 1);
  atomic_fetch_add(&r->on_cancels, 1);
  atomic_store(&r->stop, 1);
}

static void race_cleanup(void *arg, int status) {
  race_t *r = arg;
  atomic_store(&r->cleanup_status, status);
  atomic_fetch_add(&r->cleanups, 1);
  mm_test_latch_add(&r->cleaned, 1);
}

static int race_caller(void *arg) {
  race_t *r = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.abandon_on_cancel = r->abandon;
  o.timeout_ms = r->by_deadline ? 1 : 0;
  o.cleanup = race_cleanup;
  o.on_cancel = race_on_cancel;
  r->result = mm_run_sync_ex(race_fn, r, &o);
  atomic_store(&r->returned, 1);
  return 0;
}

static int race_canceller(void *arg) {
  race_t *r = arg;
  assert_mm_ok(mm_yield());
  busy(r->cancel_ns, NULL);
  if (!r->by_deadline)
    assert_mm_ok(mm_cancel(r->caller));
  return 0;
}

static void test_on_cancel_races_fn_s_end_and_cleanup_stays_exact(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  int rounds = mm_test_under_valgrind() ? 200 : 3000;
  unsigned seed = 12345;
  int asked[4] = { 0 }, cleaned = 0, values = 0;
  for (int i = 0; i < rounds; i++) {
    race_t r;
    memset(&r, 0, sizeof r);
    mm_test_latch_init(&r.cleaned);
    r.abandon = i & 1;
    r.by_deadline = (i & 2) != 0;
    seed = seed * 1103515245u + 12345u;
    /* Around the moment the ask comes: a 1 ms deadline, or a cancel a
     * few microseconds after the call reached the pool. */
    r.fn_ns = (seed >> 8) % (r.by_deadline ? 2500000 : 100000);
    r.cancel_ns = (seed >> 4) % 100000;
    mm_coro_t *k;
    assert_mm_ok(mm_spawn(loop, race_caller, &r, &r.caller));
    assert_mm_ok(mm_spawn(loop, race_canceller, &r, &k));
    assert_mm_ok(mm_loop_run(loop));
    assert_mm_ok(mm_join(r.caller));
    assert_mm_ok(mm_join(k));

    int bridge = r.by_deadline ? -ETIMEDOUT : -ECANCELED;
    if (r.result == VALUE) {
      values++;
      assert_int_equal(atomic_load(&r.cleanups), 0);
    } else {
      assert_status(r.result, bridge);
      mm_test_latch_wait(&r.cleaned, 1);    /* exactly once, below */
      assert_int_equal(atomic_load(&r.cleanup_status),
                       atomic_load(&r.fn_runs) ? VALUE : bridge);
      cleaned++;
    }
    assert_true(atomic_load(&r.on_cancels) <= 1);
    assert_false(atomic_load(&r.too_late));
    if (atomic_load(&r.on_cancels) == 1) {
      asked[i & 3]++;
      assert_int_equal(atomic_load(&r.fn_runs), 1);
    }
    assert_int_equal(atomic_load(&r.cleanups), r.result == VALUE ? 0 : 1);
    mm_test_latch_destroy(&r.cleaned);
  }
  print_message("%d rounds: asked to stop %d (cancel), %d (cancel, "
                "abandon), %d (deadline), %d (deadline, abandon); %d cleaned "
                "up, %d values\n", rounds, asked[0], asked[1], asked[2],
                asked[3], cleaned, values);
  assert_mm_ok(mm_loop_free(loop));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_cancel_of_a_running_call_asks_it_to_stop_and_waits),
    mm_test(test_cancel_of_a_running_abandonable_call_returns_at_once),
    mm_test(test_deadline_of_a_running_call_stops_it_and_returns_etimedout),
    mm_test(test_deadline_of_a_running_abandonable_call_returns_at_once),
    mm_test(test_cancel_then_deadline_asks_once_and_returns_etimedout),
    mm_test(test_deadline_of_a_running_lane_call_stops_it),
    mm_test(test_cancel_of_a_running_laneset_call_stops_it),
    mm_test(test_cancelled_queued_call_is_cleaned_up_on_the_caller),
    mm_test(test_cancelled_queued_abandonable_call_is_cleaned_up_once),
    mm_test(test_queued_call_past_its_deadline_is_cleaned_up),
    mm_test(test_queued_abandonable_call_past_its_deadline_is_cleaned_up),
    mm_test(test_call_made_while_cancelled_is_cleaned_up),
    mm_test(test_call_made_past_the_spawn_deadline_is_cleaned_up),
    mm_test(test_a_refused_call_never_cleans_up),
    mm_test(test_on_cancel_races_fn_s_end_and_cleanup_stays_exact),
  };
  return mm_run_tests(tests);
}
