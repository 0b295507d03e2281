/* Thread-sensitive calls: mm_run_sync_ex with MM_AFFINITY_CALLER runs on
 * the plain thread blocked in mm_run_async for the calling coroutine
 * (through nested bridges and spawned children), else on the loop's one
 * sensitive thread. */
#define _GNU_SOURCE
#include "helpers.h"

#include <string.h>

static mm_sync_options_t caller_opts(void) {
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_CALLER;
  return o;
}

/* ---- without a caller: the sensitive thread ---------------------------- */

typedef struct {
  atomic_int in_flight;
  atomic_int max_in_flight;
  atomic_int calls;
  pthread_mutex_t mu;
  pthread_t thread;         /* the first call's thread; protected by mu */
  int have_thread;
  int other_threads;        /* calls on another thread */
  char name[16];
} sensitive_t;

static int on_sensitive(void *arg) {
  sensitive_t *s = arg;
  int now = atomic_fetch_add(&s->in_flight, 1) + 1;
  int max = atomic_load(&s->max_in_flight);
  while (now > max && !atomic_compare_exchange_weak(&s->max_in_flight, &max,
                                                    now))
    ;
  pthread_mutex_lock(&s->mu);
  if (!s->have_thread) {
    s->have_thread = 1;
    s->thread = pthread_self();
    pthread_getname_np(pthread_self(), s->name, sizeof s->name);
  } else if (!pthread_equal(s->thread, pthread_self())) {
    s->other_threads++;
  }
  pthread_mutex_unlock(&s->mu);
  sched_yield();
  atomic_fetch_add(&s->calls, 1);
  atomic_fetch_sub(&s->in_flight, 1);
  return 3;
}

static int ten_sensitive_calls(void *arg) {
  mm_sync_options_t o = caller_opts();
  for (int i = 0; i < 10; i++) {
    int r = mm_run_sync_ex(on_sensitive, arg, &o);
    if (r != 3)
      return r < 0 ? r : -1000;
  }
  return 0;
}

static void test_caller_calls_without_a_caller_run_on_one_sensitive_thread(
    void **state) {
  mm_loop_t *loop;
  sensitive_t s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);
  mm_coro_t *c[8];
  assert_mm_ok(mm_loop_new(&loop, NULL));
  for (int i = 0; i < 8; i++)
    assert_mm_ok(mm_spawn(loop, ten_sensitive_calls, &s, &c[i]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 8; i++)
    assert_mm_ok(mm_join(c[i]));
  assert_int_equal(atomic_load(&s.calls), 80);
  assert_int_equal(atomic_load(&s.max_in_flight), 1);
  assert_int_equal(s.other_threads, 0);
  assert_string_equal(s.name, "mm-sensitive");
  assert_mm_ok(mm_loop_free(loop));
  pthread_mutex_destroy(&s.mu);
}

static int record_thread(void *arg) {
  *(pthread_t *) arg = pthread_self();
  return mm_current() != NULL ? 1 : 0;
}

static void test_caller_call_on_a_plain_thread_runs_inline(void **state) {
  pthread_t seen;
  mm_sync_options_t o = caller_opts();
  assert_status(mm_run_sync_ex(record_thread, &seen, &o), 0);
  assert_true(pthread_equal(seen, pthread_self()));
}

/* ---- with a caller: the thread blocked in mm_run_async ------------------ */

typedef struct {
  mm_loop_t *loop;
  pthread_t inner_seen;       /* the nested CALLER call's thread */
  pthread_t outer_seen;
  pthread_t child_seen;
  int outer_current_ok;       /* mm_current() was the awaiting coroutine */
  void *local_seen;
  int inner_result;
} nest_t;

static int key;

static int inner_coroutine(void *arg) {
  nest_t *n = arg;
  mm_sync_options_t o = caller_opts();
  return mm_run_sync_ex(record_thread, &n->inner_seen, &o);
}

/* Runs on the caller thread T, for outer_coroutine. */
static int outer_call(void *arg) {
  nest_t *n = arg;
  n->outer_seen = pthread_self();
  n->local_seen = mm_local_get(&key);
  /* Nested bridge: T calls into the loop again; the new coroutine's
   * CALLER call must come back to T. */
  n->inner_result = mm_run_async(n->loop, inner_coroutine, n);
  return 11;
}

static int child_call(void *arg) {
  nest_t *n = arg;
  mm_sync_options_t o = caller_opts();
  return mm_run_sync_ex(record_thread, &n->child_seen, &o);
}

static mm_coro_t *outer_self;

static int outer_current(void *arg) {
  nest_t *n = arg;
  n->outer_current_ok = mm_current() == outer_self;
  return 0;
}

static int outer_coroutine(void *arg) {
  nest_t *n = arg;
  mm_local_set(&key, (void *) n);
  outer_self = mm_current();
  mm_sync_options_t o = caller_opts();
  int r = mm_run_sync_ex(outer_call, n, &o);
  if (r != 11)
    return r < 0 ? r : -1000;
  r = mm_run_sync_ex(outer_current, n, &o);
  if (r != 0)
    return r;
  /* A child inherits the caller thread. */
  mm_coro_t *child;
  r = mm_spawn(n->loop, child_call, n, &child);
  if (r != 0)
    return r;
  r = mm_join(child);
  return r == 1 ? 5 : (r < 0 ? r : -1001);
}

static void test_caller_calls_run_on_the_thread_blocked_in_run_async(
    void **state) {
  nest_t n;
  memset(&n, 0, sizeof n);
  assert_mm_ok(mm_loop_new(&n.loop, NULL));
  assert_mm_ok(mm_loop_start(n.loop));
  for (int round = 0; round < 20; round++) {
    memset(&n.inner_seen, 0, sizeof n.inner_seen);
    assert_status(mm_run_async(n.loop, outer_coroutine, &n), 5);
    /* T -> run_async -> CALLER on T -> run_async -> CALLER still on T */
    assert_true(pthread_equal(n.outer_seen, pthread_self()));
    assert_status(n.inner_result, 1);
    assert_true(pthread_equal(n.inner_seen, pthread_self()));
    assert_true(pthread_equal(n.child_seen, pthread_self()));
    assert_true(n.outer_current_ok);
    assert_ptr_equal(n.local_seen, &n);
  }
  assert_mm_ok(mm_loop_free(n.loop));
}

/* ---- cancelling a queued CALLER call ------------------------------------ */

typedef struct {
  mm_loop_t *loop;
  mm_test_latch_t running;    /* the first call runs on T */
  mm_test_latch_t release;    /* let it end */
  atomic_int second_ran;
  mm_coro_t *second;
  int second_result;
} queued_t;

static int hold_caller(void *arg) {
  queued_t *q = arg;
  mm_test_latch_add(&q->running, 1);
  mm_test_latch_wait(&q->release, 1);
  return 21;
}

static int mark_second(void *arg) {
  queued_t *q = arg;
  atomic_store(&q->second_ran, 1);
  return 0;
}

static int second_call(void *arg) {
  queued_t *q = arg;
  mm_sync_options_t o = caller_opts();
  q->second_result = mm_run_sync_ex(mark_second, q, &o);
  return 0;
}

/* Runs after second_call has parked (the loop runs ready coroutines in
 * order): cancels it while its call waits in T's queue behind the first,
 * then lets the first end. */
static int canceller(void *arg) {
  queued_t *q = arg;
  mm_cancel(q->second);
  mm_test_latch_add(&q->release, 1);
  return 0;
}

static int first_coroutine(void *arg) {
  queued_t *q = arg;
  int r = mm_spawn(q->loop, second_call, q, &q->second);
  if (r != 0)
    return r;
  mm_coro_t *cancel;
  if ((r = mm_spawn(q->loop, canceller, q, &cancel)) != 0)
    return r;
  mm_sync_options_t o = caller_opts();
  int first = mm_run_sync_ex(hold_caller, q, &o);
  mm_join(cancel);
  mm_join(q->second);
  return first;
}

static void test_a_queued_caller_call_cancelled_never_runs(void **state) {
  queued_t q;
  memset(&q, 0, sizeof q);
  mm_test_latch_init(&q.running);
  mm_test_latch_init(&q.release);
  assert_mm_ok(mm_loop_new(&q.loop, NULL));
  assert_mm_ok(mm_loop_start(q.loop));
  assert_status(mm_run_async(q.loop, first_coroutine, &q), 21);
  assert_status(q.second_result, -ECANCELED);
  assert_int_equal(atomic_load(&q.second_ran), 0);
  assert_mm_ok(mm_loop_free(q.loop));
  mm_test_latch_destroy(&q.running);
  mm_test_latch_destroy(&q.release);
}

/* ---- calls left behind when the caller thread leaves ------------------- */

/* Issue 8, instance 4: a thread leaves mm_run_async with MM_AFFINITY_CALLER
 * calls still queued for it; it runs them on its way out while their
 * deadlines (1 ms) take some out of its queue.  Every call answers once:
 * fn's value after running once, or -ETIMEDOUT having never run -- or,
 * abandoned, -ETIMEDOUT with exactly one cleanup after its one run. */
#define LEFT_CALLS 8

typedef struct {
  mm_loop_t *loop;
  mm_test_latch_t ended;       /* children that returned */
  atomic_int parked;           /* children whose call is queued */
  atomic_int ran[LEFT_CALLS];
  atomic_int cleanups[LEFT_CALLS];
  int result[LEFT_CALLS];
} left_t;

typedef struct {
  left_t *l;
  int i;
} left_call_t;

static int left_fn(void *arg) {
  left_call_t *c = arg;
  atomic_fetch_add(&c->l->ran[c->i], 1);
  struct timespec ts = { 0, 300 * 1000 };   /* the call's own work */
  nanosleep(&ts, NULL);
  return 42;
}

static void left_cleanup(void *arg, int status) {
  left_call_t *c = arg;
  atomic_fetch_add(&c->l->cleanups[c->i], 1);
}

static left_call_t left_calls[LEFT_CALLS];

static int left_child(void *arg) {
  left_call_t *c = arg;
  mm_sync_options_t o = caller_opts();
  o.timeout_ms = 1;
  o.abandon_on_cancel = c->i % 2 == 1;
  o.cleanup = left_cleanup;
  atomic_fetch_add(&c->l->parked, 1);
  c->l->result[c->i] = mm_run_sync_ex(left_fn, c, &o);
  mm_test_latch_add(&c->l->ended, 1);
  return 0;
}

/* Spawns the children (they inherit this thread as their caller), lets
 * each queue its call, and returns while they wait. */
static int leave_with_calls_queued(void *arg) {
  left_t *l = arg;
  for (int i = 0; i < LEFT_CALLS; i++) {
    left_calls[i].l = l;
    left_calls[i].i = i;
    int r = mm_spawn(l->loop, left_child, &left_calls[i], NULL);
    if (r != 0)
      return r;
  }
  while (atomic_load(&l->parked) < LEFT_CALLS)
    if (mm_yield() != 0)
      return -1;
  return 7;
}

static void test_calls_left_for_a_leaving_caller_answer_once_under_deadlines(
    void **state) {
  left_t l;
  memset(&l, 0, sizeof l);
  assert_mm_ok(mm_loop_new(&l.loop, NULL));
  assert_mm_ok(mm_loop_start(l.loop));
  int rounds = MM_TEST_SCALE(300, 60);
  for (int round = 0; round < rounds; round++) {
    mm_test_latch_init(&l.ended);
    atomic_store(&l.parked, 0);
    for (int i = 0; i < LEFT_CALLS; i++) {
      atomic_store(&l.ran[i], 0);
      atomic_store(&l.cleanups[i], 0);
    }
    assert_status(mm_run_async(l.loop, leave_with_calls_queued, &l), 7);
    mm_test_latch_wait(&l.ended, LEFT_CALLS);
    /* Every call ran on this thread, before mm_run_async returned, and
     * so did the cleanup of each one abandoned while it ran; a call that
     * returned -ETIMEDOUT was cleaned up once, run or not (API.md). */
    for (int i = 0; i < LEFT_CALLS; i++) {
      int ran = atomic_load(&l.ran[i]);
      int cleanups = atomic_load(&l.cleanups[i]);
      if (l.result[i] == 42) {
        assert_int_equal(ran, 1);
        assert_int_equal(cleanups, 0);
      } else {
        assert_status(l.result[i], -ETIMEDOUT);
        assert_true(ran <= 1);
        assert_int_equal(cleanups, 1);
      }
    }
    mm_test_latch_destroy(&l.ended);
  }
  assert_mm_ok(mm_loop_free(l.loop));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_caller_calls_without_a_caller_run_on_one_sensitive_thread),
    mm_test(test_caller_call_on_a_plain_thread_runs_inline),
    mm_test(test_caller_calls_run_on_the_thread_blocked_in_run_async),
    mm_test(test_a_queued_caller_call_cancelled_never_runs),
    mm_test(test_calls_left_for_a_leaving_caller_answer_once_under_deadlines),
  };
  return mm_run_tests(tests);
}
