/* Coroutines: spawn, join, detach, cancel, timeouts, names, current, yield,
 * sleep and cancelled; colour-blind joins from coroutines and plain threads;
 * spawns and joins from several threads at once; 10,000 live coroutines;
 * deep recursion on a coroutine stack and an overflow past it; rounding
 * modes kept per coroutine across switches.
 */
#include <fenv.h>

#include "helpers.h"

#define FOREVER_MS 100000000u

typedef struct {
  atomic_int ran;
  pthread_t  thread;
} ran_t;

static int mark_ran(void *arg) {
  ran_t *r = arg;
  r->thread = pthread_self();
  atomic_fetch_add_explicit(&r->ran, 1, memory_order_relaxed);
  return 0;
}

static int return_arg(void *arg) {
  return (int)(intptr_t)arg;
}

static int yield_then_return_arg(void *arg) {
  int r = mm_yield();
  if (r != 0)
    return r;
  return (int)(intptr_t)arg;
}

typedef struct {
  mm_test_latch_t *entered;
  int              result;
  int              cancelled;
  int              finished;
} sleeper_t;

static int sleep_forever(void *arg) {
  sleeper_t *s = arg;
  if (s->entered != NULL)
    mm_test_latch_add(s->entered, 1);
  s->result = mm_sleep(FOREVER_MS);
  s->cancelled = mm_cancelled();
  s->finished = 1;
  return s->result;
}


/* ---- Spawn and join --------------------------------------------------- */

static void test_spawn_runs_fn_with_its_arg(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  ran_t r = { 0 };
  mm_coro_t *c = NULL;
  assert_mm_ok(mm_spawn(loop, mark_ran, &r, &c));
  assert_non_null(c);
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&r.ran), 1);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_join_returns_the_value_fn_returned(void **state) {
  static const int values[] = { 0, 42, -EIO, -ECANCELED, 1 << 30, -1 };
  enum { N = sizeof values / sizeof values[0] };
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *c[N];
  for (int i = 0; i < N; i++)
    assert_mm_ok(mm_spawn(loop, i % 2 ? yield_then_return_arg : return_arg,
                          (void *)(intptr_t)values[i], &c[i]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < N; i++)
    assert_status(mm_join(c[i]), values[i]);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_join_of_ended_coroutine_does_not_wait(void **state) {
  /* From a plain thread: the loop has returned, nobody runs it, so a join
   * that waited would hang (and the watchdog would say so). */
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, return_arg, (void *)(intptr_t)42, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), 42);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  mm_loop_t *loop;
  atomic_int child_done;
  int        join_result;
  int        yields;
} late_joiner_t;

static int set_done_and_return_5(void *arg) {
  late_joiner_t *j = arg;
  atomic_store(&j->child_done, 1);
  return 5;
}

static int join_after_child_ended(void *arg) {
  late_joiner_t *j = arg;
  mm_coro_t *c;
  int r = mm_spawn(j->loop, set_done_and_return_5, j, &c);
  if (r != 0)
    return r;
  while (!atomic_load(&j->child_done) && j->yields < 1000) {
    mm_yield();
    j->yields++;
  }
  j->join_result = mm_join(c);
  return 0;
}

static void test_join_in_a_coroutine_of_an_ended_coroutine_returns_its_status(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  late_joiner_t j;
  memset(&j, 0, sizeof j);
  j.loop = loop;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, join_after_child_ended, &j, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_true(atomic_load(&j.child_done));
  assert_status(j.join_result, 5);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  atomic_int done;
} slow_t;

static int sleep_a_little_then_return_3(void *arg) {
  slow_t *s = arg;
  for (int i = 0; i < 5; i++)
    if (mm_sleep(2) != 0)
      return -1;
  atomic_store(&s->done, 1);
  return 3;
}

static void test_join_from_a_plain_thread_blocks_until_the_coroutine_ends(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  slow_t s = { 0 };
  mm_coro_t *c;
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn(loop, sleep_a_little_then_return_3, &s, &c));
  assert_status(mm_join(c), 3);
  assert_true(atomic_load(&s.done));
  assert_mm_ok(mm_loop_free(loop));
}

/* B waits for C's flag, A joins B: if A's join blocked the thread, neither
 * B nor C could run. */
typedef struct {
  mm_loop_t *loop;
  atomic_int flag;
  int        order[3];
  int        n;
  int        join_result;
} trio_t;

static int trio_b(void *arg) {
  trio_t *t = arg;
  while (!atomic_load(&t->flag))
    if (mm_yield() != 0)
      return -1;
  t->order[t->n++] = 'B';
  return 11;
}

static int trio_c(void *arg) {
  trio_t *t = arg;
  t->order[t->n++] = 'C';
  atomic_store(&t->flag, 1);
  return 0;
}

static int trio_a(void *arg) {
  trio_t *t = arg;
  mm_coro_t *b, *c;
  if (mm_spawn(t->loop, trio_b, t, &b) != 0)
    return -1;
  if (mm_spawn(t->loop, trio_c, t, &c) != 0)
    return -1;
  t->join_result = mm_join(b);
  t->order[t->n++] = 'A';
  return mm_join(c);
}

static void test_join_in_a_coroutine_suspends_only_that_coroutine(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  trio_t t;
  memset(&t, 0, sizeof t);
  t.loop = loop;
  mm_coro_t *a;
  assert_mm_ok(mm_spawn(loop, trio_a, &t, &a));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_status(t.join_result, 11);
  assert_int_equal(t.n, 3);
  assert_int_equal(t.order[0], 'C');
  assert_int_equal(t.order[1], 'B');
  assert_int_equal(t.order[2], 'A');
  assert_mm_ok(mm_loop_free(loop));
}

/* A coroutine of loop 1 (run on this thread) joins one of loop 2 (started
 * on its own thread). */
typedef struct {
  mm_loop_t *other;
  int        join_result;
  slow_t     slow;
} cross_t;

static int join_on_other_loop(void *arg) {
  cross_t *x = arg;
  mm_coro_t *c;
  int r = mm_spawn(x->other, sleep_a_little_then_return_3, &x->slow, &c);
  if (r != 0)
    return r;
  x->join_result = mm_join(c);
  return 0;
}

static void test_join_of_a_coroutine_of_another_loop(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  cross_t x;
  memset(&x, 0, sizeof x);
  x.other = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(x.other));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, join_on_other_loop, &x, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(x.join_result, 3);
  assert_true(atomic_load(&x.slow.done));
  assert_mm_ok(mm_loop_free(x.other));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_detach_lets_the_coroutine_run_to_its_end(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  ran_t r = { 0 };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, mark_ran, &r, &c));
  assert_mm_ok(mm_detach(c));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&r.ran), 1);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_spawn_without_a_handle_detaches(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  ran_t r = { 0 };
  assert_mm_ok(mm_spawn(loop, mark_ran, &r, NULL));
  assert_mm_ok(mm_spawn_ex(loop, mark_ran, &r, NULL, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&r.ran), 2);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Many threads ----------------------------------------------------- */

#define THREADS 4
#define PER_THREAD MM_TEST_SCALE(200, 50)

typedef struct {
  mm_loop_t         *loop;
  pthread_barrier_t *barrier;
  int                index;
  int                spawn_errors;
  int                wrong_results;
  int                first_error;
} spawner_t;

static void *spawn_and_join_many(void *arg) {
  spawner_t *s = arg;
  mm_coro_t *c[PER_THREAD];
  pthread_barrier_wait(s->barrier);
  for (int i = 0; i < PER_THREAD; i++) {
    intptr_t v = s->index * 1000 + i;
    int r = mm_spawn(s->loop, i % 2 ? yield_then_return_arg : return_arg,
                     (void *)v, &c[i]);
    if (r != 0) {
      s->spawn_errors++;
      s->first_error = s->first_error ? s->first_error : r;
      c[i] = NULL;
    }
  }
  for (int i = 0; i < PER_THREAD; i++) {
    if (c[i] == NULL)
      continue;
    int r = mm_join(c[i]);
    if (r != s->index * 1000 + i) {
      s->wrong_results++;
      s->first_error = s->first_error ? s->first_error : r;
    }
  }
  return NULL;
}

static void test_spawn_and_join_from_four_threads_at_once(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  pthread_barrier_t barrier;
  spawner_t s[THREADS];
  pthread_t t[THREADS];
  assert_mm_ok(mm_loop_start(loop));
  pthread_barrier_init(&barrier, NULL, THREADS);
  for (int i = 0; i < THREADS; i++) {
    s[i] = (spawner_t){ loop, &barrier, i + 1, 0, 0, 0 };
    assert_int_equal(pthread_create(&t[i], NULL, spawn_and_join_many, &s[i]),
                     0);
  }
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  pthread_barrier_destroy(&barrier);
  for (int i = 0; i < THREADS; i++) {
    if (s[i].spawn_errors || s[i].wrong_results)
      fail_msg("thread %d: %d spawns failed, %d wrong results, first %d (%s)",
               i, s[i].spawn_errors, s[i].wrong_results, s[i].first_error,
               mm_strerror(s[i].first_error));
  }
  assert_mm_ok(mm_loop_free(loop));
}

/* Threads spawn onto a loop that a fourth thread runs with mm_loop_run;
 * the spawns come in through the loop's inbox while it sleeps in uv. */
static void *run_loop_thread(void *arg) {
  return (void *)(intptr_t)mm_loop_run(arg);
}

static void test_spawn_from_another_thread_wakes_a_running_loop(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_latch_t entered;
  sleeper_t keeper = { 0 };
  mm_coro_t *kc;
  mm_test_latch_init(&entered);
  keeper.entered = &entered;
  /* The keeper holds mm_loop_run open until it is cancelled. */
  assert_mm_ok(mm_spawn(loop, sleep_forever, &keeper, &kc));
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, run_loop_thread, loop), 0);
  mm_test_latch_wait(&entered, 1);
  for (int i = 0; i < 50; i++) {
    mm_coro_t *c;
    assert_mm_ok(mm_spawn(loop, yield_then_return_arg, (void *)(intptr_t)i,
                          &c));
    assert_status(mm_join(c), i);
  }
  assert_mm_ok(mm_cancel(kc));
  assert_status(mm_join(kc), -ECANCELED);
  void *rc;
  assert_int_equal(pthread_join(t, &rc), 0);
  assert_mm_ok((int)(intptr_t)rc);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&entered);
}


/* ---- Cancel ----------------------------------------------------------- */

typedef struct {
  mm_test_latch_t *entered;
  int              before;        /* mm_cancelled() before sleeping */
  int              sleep_result;
  int              cancelled;     /* mm_cancelled() after */
  int              sleep_again;
  int              yield_again;
  int              join_again;
  int              spawn_again;
  mm_loop_t       *loop;
} cancelee_t;

static int sleep_then_check_stickiness(void *arg) {
  cancelee_t *c = arg;
  c->before = mm_cancelled();
  if (c->entered != NULL)
    mm_test_latch_add(c->entered, 1);
  c->sleep_result = mm_sleep(FOREVER_MS);
  c->cancelled = mm_cancelled();
  c->sleep_again = mm_sleep(1);
  c->yield_again = mm_yield();
  /* A join is a suspension too: a child that would return at once. */
  mm_coro_t *child;
  c->spawn_again = mm_spawn(c->loop, return_arg, (void *)(intptr_t)9, &child);
  if (c->spawn_again == 0)
    c->join_again = mm_join(child);
  return 5;   /* it did run: its value is what join returns */
}

static void test_cancel_of_a_sleeping_coroutine_returns_ecanceled_from_sleep(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_latch_t entered;
  cancelee_t ce;
  mm_coro_t *c;
  memset(&ce, 0, sizeof ce);
  mm_test_latch_init(&entered);
  ce.entered = &entered;
  ce.loop = loop;
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn(loop, sleep_then_check_stickiness, &ce, &c));
  mm_test_latch_wait(&entered, 1);
  assert_mm_ok(mm_cancel(c));   /* from a plain thread */
  assert_status(mm_join(c), 5);
  assert_false(ce.before);
  assert_status(ce.sleep_result, -ECANCELED);
  assert_true(ce.cancelled);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&entered);
}

static void test_cancellation_is_sticky_for_every_later_suspension(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_latch_t entered;
  cancelee_t ce;
  mm_coro_t *c;
  memset(&ce, 0, sizeof ce);
  mm_test_latch_init(&entered);
  ce.entered = &entered;
  ce.loop = loop;
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn(loop, sleep_then_check_stickiness, &ce, &c));
  mm_test_latch_wait(&entered, 1);
  assert_mm_ok(mm_cancel(c));
  assert_status(mm_join(c), 5);
  assert_status(ce.sleep_again, -ECANCELED);
  assert_status(ce.yield_again, -ECANCELED);
  /* Spawning is not a suspension; joining the child is: the child is
   * cancelled too and the join reports -ECANCELED. */
  assert_status(ce.spawn_again, 0);
  assert_status(ce.join_again, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&entered);
}

typedef struct {
  mm_coro_t *target;
  int        cancel_result;
} canceller_t;

static int cancel_target(void *arg) {
  canceller_t *k = arg;
  mm_yield();   /* the target, spawned first, is asleep after this */
  k->cancel_result = mm_cancel(k->target);
  return 0;
}

static void test_cancel_from_another_coroutine(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  cancelee_t ce;
  canceller_t k = { NULL, 1 };
  mm_coro_t *c, *kc;
  memset(&ce, 0, sizeof ce);
  ce.loop = loop;
  assert_mm_ok(mm_spawn(loop, sleep_then_check_stickiness, &ce, &c));
  k.target = c;
  assert_mm_ok(mm_spawn(loop, cancel_target, &k, &kc));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(kc));
  assert_mm_ok(k.cancel_result);
  assert_status(mm_join(c), 5);
  assert_status(ce.sleep_result, -ECANCELED);
  assert_true(ce.cancelled);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_cancel_before_first_run_means_it_never_runs(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  ran_t r = { 0 };
  mm_coro_t *c, *d;
  assert_mm_ok(mm_spawn(loop, mark_ran, &r, &c));
  assert_mm_ok(mm_spawn(loop, mark_ran, &r, &d));
  assert_mm_ok(mm_cancel(c));
  assert_mm_ok(mm_cancel(d));
  assert_mm_ok(mm_detach(d));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), -ECANCELED);
  assert_int_equal(atomic_load(&r.ran), 0);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_cancel_of_an_ended_coroutine_does_nothing(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, return_arg, (void *)(intptr_t)8, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_cancel(c));
  assert_mm_ok(mm_cancel(c));   /* twice: nothing either */
  assert_status(mm_join(c), 8);
  assert_mm_ok(mm_loop_free(loop));
}

/* Issue 8, instance 3: handles carry a generation.  After mm_join(a) a
 * new spawn reuses a's block; a late cancel, join, detach or name of a is
 * refused and never reaches the new coroutine. */
static void test_stale_handle_is_refused_and_never_acts_on_a_new_coroutine(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, return_arg, (void *)(intptr_t)3, &a));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(a), 3);
  assert_mm_ok(mm_spawn(loop, yield_then_return_arg, (void *)(intptr_t)7,
                        &b));                  /* a's block, from the cache */
  assert_mm_err(mm_cancel(a), -EINVAL);
  assert_mm_err(mm_join(a), -EINVAL);
  assert_mm_err(mm_detach(a), -EINVAL);
  assert_null(mm_coro_name(a));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(b), 7);
  assert_mm_err(mm_join(b), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

/* A detached coroutine's handle goes when it ends; handles of blocks that
 * were unmapped (more than the loop caches) are refused without a fault. */
static void test_handles_of_ended_detached_and_unmapped_coroutines_are_stale(
    void **state) {
  enum { N = 200 };
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *h[N];
  for (int i = 0; i < N; i++)
    assert_mm_ok(mm_spawn(loop, return_arg, (void *)(intptr_t)i, &h[i]));
  assert_mm_ok(mm_detach(h[0]));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_err(mm_cancel(h[0]), -EINVAL);     /* detached and ended */
  for (int i = 1; i < N; i++)
    assert_status(mm_join(h[i]), i);
  for (int i = 0; i < N; i++) {
    assert_mm_err(mm_cancel(h[i]), -EINVAL);
    assert_mm_err(mm_join(h[i]), -EINVAL);
  }
  assert_mm_ok(mm_loop_free(loop));
}

/* Round after round, a thread cancels the handle joined the round before
 * while the test spawns the next coroutine, which reuses its block, and
 * joins it: the stale cancel is refused every time and never reaches the
 * new coroutine. */
typedef struct {
  _Atomic(mm_coro_t *) target;
  mm_test_latch_t published;  /* rounds whose stale handle is out */
  int rounds;
  int refused;                /* read after the join of the thread */
} reuse_canceller_t;

static void *cancel_each_round(void *arg) {
  reuse_canceller_t *k = arg;
  for (int r = 1; r < k->rounds; r++) {
    mm_test_latch_wait(&k->published, r);
    if (mm_cancel(atomic_load(&k->target)) == -EINVAL)
      k->refused++;
  }
  return NULL;
}

static int block_briefly(void *arg) {
  (void) arg;
  for (int i = 0; i < 3; i++)
    if (mm_yield() != 0)
      return -ECANCELED;
  return 0;
}

static void test_cancel_racing_join_and_reuse_never_cancels_the_next(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  reuse_canceller_t k;
  atomic_init(&k.target, NULL);
  mm_test_latch_init(&k.published);
  k.rounds = MM_TEST_SCALE(3000, 300);
  k.refused = 0;
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, cancel_each_round, &k), 0);
  mm_coro_t *prev = NULL;
  for (int i = 0; i < k.rounds; i++) {
    mm_coro_t *c;
    assert_mm_ok(mm_spawn(loop, block_briefly, NULL, &c));
    if (prev != NULL) {
      atomic_store(&k.target, prev);   /* joined: stale */
      mm_test_latch_add(&k.published, 1);
    }
    assert_mm_ok(mm_join(c));          /* never cancelled */
    prev = c;
  }
  pthread_join(t, NULL);
  assert_int_equal(k.refused, k.rounds - 1);
  mm_test_latch_destroy(&k.published);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- Join cycles -------------------------------------------------------- */

/* Coroutines that join each other in a ring return -EDEADLK instead of
 * waiting forever: at least one of them, and whoever got it detaches the
 * handle it could not join, so that the ring unwinds and every coroutine
 * ends. */
#define RING_MAX 3

typedef struct {
  mm_coro_t *h[RING_MAX];
  int n;
  atomic_int ready;            /* handles published */
  int result[RING_MAX];
  mm_test_latch_t ended;
} ring_t;

typedef struct {
  ring_t *ring;
  int i;
} ring_member_t;

static int ring_join(void *arg) {
  ring_member_t *m = arg;
  ring_t *r = m->ring;
  while (!atomic_load_explicit(&r->ready, memory_order_acquire))
    if (mm_yield() != 0)
      return -1;
  mm_coro_t *next = r->h[(m->i + 1) % r->n];
  int status = 100 + m->i;     /* m and r are gone once ended is added */
  r->result[m->i] = mm_join(next);
  if (r->result[m->i] == -EDEADLK)
    mm_detach(next);
  mm_test_latch_add(&r->ended, 1);
  return status;
}

static void run_ring(mm_loop_t **loops, int nloops, int n, int rounds) {
  for (int round = 0; round < rounds; round++) {
    ring_t r;
    ring_member_t m[RING_MAX];
    memset(&r, 0, sizeof r);
    r.n = n;
    mm_test_latch_init(&r.ended);
    for (int i = 0; i < n; i++) {
      m[i] = (ring_member_t){ &r, i };
      assert_mm_ok(mm_spawn(loops[i % nloops], ring_join, &m[i], &r.h[i]));
    }
    atomic_store_explicit(&r.ready, 1, memory_order_release);
    mm_test_latch_wait(&r.ended, n);
    int deadlocks = 0;
    for (int i = 0; i < n; i++) {
      if (r.result[i] == -EDEADLK)
        deadlocks++;
      else
        assert_status(r.result[i], 100 + (i + 1) % n);
    }
    assert_true(deadlocks >= 1);
    mm_test_latch_destroy(&r.ended);
  }
}

static void test_two_coroutines_joining_each_other_get_edeadlk(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  run_ring(&loop, 1, 2, 20);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_join_rings_across_loops_get_edeadlk(void **state) {
  mm_loop_t *loops[2];
  for (int i = 0; i < 2; i++) {
    assert_mm_ok(mm_loop_new(&loops[i], NULL));
    assert_mm_ok(mm_loop_start(loops[i]));
  }
  run_ring(loops, 2, 2, MM_TEST_SCALE(300, 50));
  run_ring(loops, 2, 3, MM_TEST_SCALE(300, 50));
  for (int i = 0; i < 2; i++)
    assert_mm_ok(mm_loop_free(loops[i]));
}

/* A detached handle is refused as such (-EINVAL) even where joining it
 * would close a cycle. */
typedef struct {
  mm_coro_t *a, *b;
  int b_joined_a;
} detached_ring_t;

static int join_b(void *arg) {
  detached_ring_t *d = arg;
  return mm_join(d->b);
}

static int join_detached_a(void *arg) {
  detached_ring_t *d = arg;
  d->b_joined_a = mm_join(d->a);   /* a waits for us, and is detached */
  return 9;
}

static void test_a_detached_handle_in_a_join_cycle_gets_einval(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  detached_ring_t d = { NULL, NULL, 0 };
  mm_coro_t *a;
  assert_mm_ok(mm_spawn(loop, join_b, &d, &a));
  assert_mm_ok(mm_spawn(loop, join_detached_a, &d, &d.b));
  d.a = a;
  assert_mm_ok(mm_detach(a));   /* a runs first and parks joining b */
  assert_mm_ok(mm_loop_run(loop));
  assert_status(d.b_joined_a, -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

/* A coroutine joining its own handle: -EDEADLK, the handle kept; once
 * it is detached, -EINVAL (a detached handle is refused first, as for
 * any handle; fuzz-api found -EDEADLK there). */
typedef struct {
  int kept, detached;
} self_join_t;

static int join_self(void *arg) {
  self_join_t *j = arg;
  j->kept = mm_join(mm_current());
  j->detached = mm_detach(mm_current()) == 0 ? mm_join(mm_current()) : 1;
  return 0;
}

static void test_a_coroutine_joining_itself_gets_edeadlk_or_einval(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  self_join_t j = { 0, 0 };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, join_self, &j, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(j.kept, -EDEADLK);
  assert_status(j.detached, -EINVAL);
  assert_mm_err(mm_join(c), -EINVAL);      /* detached: not ours */
  assert_mm_ok(mm_loop_free(loop));
}

/* A blocking call run for a coroutine that joins that coroutine. */
static int join_my_coroutine(void *arg) {
  return mm_join(mm_current());
}

static int call_join_my_coroutine(void *arg) {
  return mm_run_sync(join_my_coroutine, NULL);
}

static void test_a_call_joining_the_coroutine_it_runs_for_gets_edeadlk(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_join_my_coroutine, NULL, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), -EDEADLK);
  assert_mm_ok(mm_loop_free(loop));
}

/* An abandonable call may join its own coroutine: once the coroutine is
 * cancelled it goes on without the call, so the join ends with the
 * coroutine's status. */
typedef struct {
  mm_coro_t *coro;
  atomic_int running;
  int joined;
  mm_test_latch_t cleaned;
} own_join_t;

static int join_own_coroutine(void *arg) {
  own_join_t *o = arg;
  atomic_store(&o->running, 1);
  o->joined = mm_join(mm_current());
  return 0;
}

static void own_join_cleanup(void *arg, int status) {
  own_join_t *o = arg;
  mm_test_latch_add(&o->cleaned, 1);
}

static int abandonable_join_of_self(void *arg) {
  mm_sync_options_t so;
  mm_sync_options_init(&so);
  so.abandon_on_cancel = true;
  so.cleanup = own_join_cleanup;
  int r = mm_run_sync_ex(join_own_coroutine, arg, &so);
  return r == -ECANCELED ? 5 : -1;
}

static int cancel_once_called(void *arg) {
  own_join_t *o = arg;
  while (!atomic_load(&o->running))
    if (mm_sleep(1) != 0)
      return -1;
  return mm_cancel(o->coro);
}

static void test_an_abandonable_call_may_join_its_coroutine(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  own_join_t o;
  memset(&o, 0, sizeof o);
  mm_test_latch_init(&o.cleaned);
  /* o.coro is joined by the call, not here. */
  assert_mm_ok(mm_spawn(loop, abandonable_join_of_self, &o, &o.coro));
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, cancel_once_called, &o, &k));
  mm_test_latch_wait(&o.cleaned, 1);
  assert_mm_ok(mm_join(k));
  assert_status(o.joined, 5);
  mm_test_latch_destroy(&o.cleaned);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_cancelled_is_false_until_a_cancel(void **state) {
  assert_false(mm_cancelled());   /* plain thread */
  mm_loop_t *loop = mm_test_loop_new(0);
  cancelee_t ce;
  memset(&ce, 0, sizeof ce);
  ce.loop = loop;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, sleep_then_check_stickiness, &ce, &c));
  canceller_t k = { c, 1 };
  assert_mm_ok(mm_spawn(loop, cancel_target, &k, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), 5);
  assert_false(ce.before);
  assert_true(ce.cancelled);
  assert_false(mm_cancelled());
  assert_mm_ok(mm_loop_free(loop));
}

/* A coroutine cancelled while it joins another: the joined one is
 * cancelled too, and waited for. */
typedef struct {
  mm_loop_t       *loop;
  sleeper_t        inner;
  int              join_result;
  int              inner_finished_when_join_returned;
} joiner_t;

static int join_a_sleeper(void *arg) {
  joiner_t *j = arg;
  mm_coro_t *c;
  int r = mm_spawn(j->loop, sleep_forever, &j->inner, &c);
  if (r != 0)
    return r;
  j->join_result = mm_join(c);
  j->inner_finished_when_join_returned = j->inner.finished;
  return j->join_result;
}

static void test_coroutine_cancelled_while_joining_cancels_the_joined_one(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_latch_t entered;
  joiner_t j;
  mm_coro_t *c;
  memset(&j, 0, sizeof j);
  mm_test_latch_init(&entered);
  j.loop = loop;
  j.inner.entered = &entered;
  j.inner.result = 1;
  j.join_result = 1;
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn(loop, join_a_sleeper, &j, &c));
  /* The inner one runs only once the joiner has suspended in its join. */
  mm_test_latch_wait(&entered, 1);
  assert_mm_ok(mm_cancel(c));
  assert_status(mm_join(c), -ECANCELED);
  assert_status(j.join_result, -ECANCELED);
  assert_status(j.inner.result, -ECANCELED);
  assert_true(j.inner.cancelled);
  assert_true(j.inner_finished_when_join_returned);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&entered);
}


/* ---- Timeouts --------------------------------------------------------- */

static void test_spawn_timeout_cancels_with_etimedout(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  sleeper_t s = { 0 };
  mm_spawn_options_t o;
  mm_coro_t *c;
  mm_spawn_options_init(&o);
  o.timeout_ms = 20;
  uint64_t t0 = mm_test_now_ms();
  assert_mm_ok(mm_spawn_ex(loop, sleep_forever, &s, &o, &c));
  assert_mm_ok(mm_loop_run(loop));
  uint64_t took = mm_test_now_ms() - t0;
  assert_status(s.result, -ETIMEDOUT);
  assert_true(s.cancelled);
  assert_status(mm_join(c), -ETIMEDOUT);
  assert_true(took >= 19);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_spawn_timeout_on_a_started_loop_answers_a_blocked_joiner(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  sleeper_t s = { 0 };
  mm_spawn_options_t o;
  mm_coro_t *c;
  mm_spawn_options_init(&o);
  o.timeout_ms = 10;
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn_ex(loop, sleep_forever, &s, &o, &c));
  assert_status(mm_join(c), -ETIMEDOUT);
  assert_status(s.result, -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_spawn_timeout_not_reached_changes_nothing(void **state) {
  /* The deadline timer must not keep mm_loop_run from returning (the
   * watchdog would fire long before it). */
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_spawn_options_t o;
  mm_coro_t *c;
  mm_spawn_options_init(&o);
  o.timeout_ms = 600000;
  assert_mm_ok(mm_spawn_ex(loop, yield_then_return_arg, (void *)(intptr_t)4,
                           &o, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), 4);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_spawn_timeout_before_first_run_means_it_never_runs(
    void **state) {
  /* The loop runs only after the deadline has passed. */
  mm_loop_t *loop = mm_test_loop_new(0);
  ran_t r = { 0 };
  mm_spawn_options_t o;
  mm_coro_t *c;
  mm_spawn_options_init(&o);
  o.timeout_ms = 1;
  assert_mm_ok(mm_spawn_ex(loop, mark_ran, &r, &o, &c));
  mm_sleep(5);   /* plain thread: just lets the deadline pass */
  assert_mm_ok(mm_loop_run(loop));
  int status = mm_join(c);
  if (atomic_load(&r.ran) == 0)
    assert_status(status, -ETIMEDOUT);
  else   /* a deadline counted from the first run is also acceptable */
    assert_status(status, 0);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Names, current --------------------------------------------------- */

typedef struct {
  char      name[64];
  uintptr_t self;
} namer_t;

static int record_name(void *arg) {
  namer_t *n = arg;
  const char *s = mm_coro_name(mm_current());
  snprintf(n->name, sizeof n->name, "%s", s != NULL ? s : "(null)");
  n->self = (uintptr_t)mm_current();
  return 0;
}

static void test_spawn_ex_copies_the_name(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  char buf[32];
  namer_t n;
  memset(&n, 0, sizeof n);
  mm_spawn_options_t o;
  mm_coro_t *c;
  mm_spawn_options_init(&o);
  snprintf(buf, sizeof buf, "worker-1");
  o.name = buf;
  assert_mm_ok(mm_spawn_ex(loop, record_name, &n, &o, &c));
  snprintf(buf, sizeof buf, "changed!");
  assert_string_equal(mm_coro_name(c), "worker-1");
  assert_mm_ok(mm_loop_run(loop));
  assert_string_equal(n.name, "worker-1");
  assert_string_equal(mm_coro_name(c), "worker-1");
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_coroutine_without_a_name_is_named_empty(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  namer_t n;
  memset(&n, 0, sizeof n);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, record_name, &n, &c));
  assert_string_equal(mm_coro_name(c), "");
  assert_mm_ok(mm_loop_run(loop));
  assert_string_equal(n.name, "");
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_current_is_the_coroutine_inside_one_and_null_outside(
    void **state) {
  assert_null(mm_current());
  mm_loop_t *loop = mm_test_loop_new(0);
  namer_t n[2];
  mm_coro_t *c[2];
  memset(n, 0, sizeof n);
  for (int i = 0; i < 2; i++)
    assert_mm_ok(mm_spawn(loop, record_name, &n[i], &c[i]));
  assert_mm_ok(mm_loop_run(loop));
  assert_null(mm_current());
  for (int i = 0; i < 2; i++)
    assert_true(n[i].self == (uintptr_t)c[i]);
  for (int i = 0; i < 2; i++)
    assert_mm_ok(mm_join(c[i]));
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Yield and sleep -------------------------------------------------- */

static void test_yield_and_sleep_on_a_plain_thread(void **state) {
  assert_mm_ok(mm_yield());
  uint64_t t0 = mm_test_now_ms();
  assert_mm_ok(mm_sleep(30));
  uint64_t took = mm_test_now_ms() - t0;
  if (took < 29)
    fail_msg("mm_sleep(30) on a plain thread returned after %llu ms",
             (unsigned long long)took);
  assert_mm_ok(mm_sleep(0));
  assert_false(mm_cancelled());
}

typedef struct {
  char log[64];
  int  n;
  int  errors;
} taps_t;

typedef struct {
  taps_t *taps;
  char    id;
} tapper_t;

static int tap_and_yield(void *arg) {
  tapper_t *t = arg;
  for (int i = 0; i < 4; i++) {
    t->taps->log[t->taps->n++] = t->id;
    if (mm_yield() != 0)
      t->taps->errors++;
  }
  return 0;
}

static void test_yield_lets_the_other_ready_coroutines_run(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  taps_t taps;
  memset(&taps, 0, sizeof taps);
  tapper_t t[3] = { { &taps, 'a' }, { &taps, 'b' }, { &taps, 'c' } };
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_spawn(loop, tap_and_yield, &t[i], NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(taps.errors, 0);
  assert_string_equal(taps.log, "abcabcabcabc");
  assert_mm_ok(mm_loop_free(loop));
}

/* Coroutines that only yield to each other hand the thread over directly
 * (sched.c, yield_next), but each hand-over counts against the pass's
 * budget: after it libuv polls, so a timer still fires and the sleeper
 * ends the ping-pong.  Without the budget the test would never end (its
 * watchdog fails it). */
typedef struct {
  bool     woke;
  int      slept;       /* mm_sleep's result */
  uint64_t yields;
  int      errors;
} pingpong_t;

static int yield_until_woken(void *arg) {
  pingpong_t *p = arg;
  while (!p->woke) {
    if (mm_yield() != 0)
      p->errors++;
    p->yields++;
  }
  return 0;
}

static int sleep_then_wake(void *arg) {
  pingpong_t *p = arg;
  p->slept = mm_sleep(1);
  p->woke = true;
  return 0;
}

static void test_coroutines_yielding_to_each_other_let_a_timer_fire(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  pingpong_t p;
  memset(&p, 0, sizeof p);
  assert_mm_ok(mm_spawn(loop, sleep_then_wake, &p, NULL));
  assert_mm_ok(mm_spawn(loop, yield_until_woken, &p, NULL));
  assert_mm_ok(mm_spawn(loop, yield_until_woken, &p, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(p.slept);
  assert_true(p.woke);
  assert_int_equal(p.errors, 0);
  assert_true(p.yields > 0);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  taps_t  *taps;
  uint64_t slept;
  int      result;
} napper_t;

static int nap_then_tap(void *arg) {
  napper_t *n = arg;
  uint64_t t0 = mm_test_now_ms();
  n->result = mm_sleep(30);
  n->slept = mm_test_now_ms() - t0;
  n->taps->log[n->taps->n++] = 's';
  return 0;
}

static int tap_now(void *arg) {
  taps_t *taps = arg;
  taps->log[taps->n++] = 'n';
  return 0;
}

static void test_sleep_in_a_coroutine_lets_others_run_meanwhile(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  taps_t taps;
  memset(&taps, 0, sizeof taps);
  napper_t n = { &taps, 0, 1 };
  assert_mm_ok(mm_spawn(loop, nap_then_tap, &n, NULL));
  assert_mm_ok(mm_spawn(loop, tap_now, &taps, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(n.result);
  assert_string_equal(taps.log, "ns");
  if (n.slept < 29)
    fail_msg("mm_sleep(30) in a coroutine returned after %llu ms",
             (unsigned long long)n.slept);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Floating-point control state ------------------------------------- */

typedef struct {
  int    mode;
  int    bad_mode;
  int    bad_value;
  int    rounds;
} fpco_t;

static double third(void) {
  volatile double one = 1.0, three = 3.0;
  return one / three;
}

static int keep_rounding_mode(void *arg) {
  fpco_t *f = arg;
  fesetround(f->mode);
  double expect = third();
  for (int i = 0; i < 2000; i++) {
    if (mm_yield() != 0)
      return -1;
    f->rounds++;
    if (fegetround() != f->mode)
      f->bad_mode++;
    if (third() != expect)
      f->bad_value++;
  }
  return 0;
}

static void test_rounding_mode_is_kept_per_coroutine_across_switches(
    void **state) {
  static const int modes[3] = { FE_UPWARD, FE_DOWNWARD, FE_TONEAREST };
  mm_loop_t *loop = mm_test_loop_new(0);
  fpco_t f[3];
  memset(f, 0, sizeof f);
  for (int i = 0; i < 3; i++) {
    f[i].mode = modes[i];
    assert_mm_ok(mm_spawn(loop, keep_rounding_mode, &f[i], NULL));
  }
  int saved = fegetround();
  fesetround(FE_TOWARDZERO);
  int rc = mm_loop_run(loop);
  int mine = fegetround();
  fesetround(saved);
  assert_mm_ok(rc);
  assert_int_equal(mine, FE_TOWARDZERO);   /* the loop's thread's own */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(f[i].rounds, 2000);
    assert_int_equal(f[i].bad_mode, 0);
    assert_int_equal(f[i].bad_value, 0);
  }
  /* The two directed modes really differ in their results. */
  assert_mm_ok(mm_loop_free(loop));
}

static void test_rounding_mode_is_kept_on_a_started_loop(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  fpco_t f[2];
  mm_coro_t *c[2];
  memset(f, 0, sizeof f);
  f[0].mode = FE_UPWARD;
  f[1].mode = FE_DOWNWARD;
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < 2; i++)
    assert_mm_ok(mm_spawn(loop, keep_rounding_mode, &f[i], &c[i]));
  for (int i = 0; i < 2; i++)
    assert_mm_ok(mm_join(c[i]));
  for (int i = 0; i < 2; i++) {
    assert_int_equal(f[i].bad_mode, 0);
    assert_int_equal(f[i].bad_value, 0);
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- 10,000 live coroutines ------------------------------------------- */

#define MANY MM_TEST_SCALE(10000, 200)   /* see helpers.h */
#define SMALL_STACK (16 * 1024)

/* Coroutine i joins coroutine i + 1; the last one waits until all have
 * started.  So all MANY are alive at once, each blocked in a join, and
 * the statuses add up on the way back: coroutine 0 returns MANY. */
typedef struct {
  mm_coro_t **handles;
  int         started;
  int         alive;
  int         max_alive;
  int         errors;
} chain_t;

typedef struct {
  chain_t *chain;
  int      index;
} link_t;

static int chain_link(void *arg) {
  link_t *l = arg;
  chain_t *ch = l->chain;
  ch->started++;
  if (++ch->alive > ch->max_alive)
    ch->max_alive = ch->alive;
  int r;
  if (l->index + 1 < MANY) {
    r = mm_join(ch->handles[l->index + 1]);
  } else {
    r = 0;
    while (ch->started < MANY && r == 0)
      r = mm_yield();
  }
  ch->alive--;
  return r < 0 ? r : r + 1;
}

static void test_10000_live_coroutines_wait_at_once(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  chain_t ch;
  memset(&ch, 0, sizeof ch);
  ch.handles = calloc(MANY, sizeof *ch.handles);
  link_t *links = calloc(MANY, sizeof *links);
  assert_non_null(ch.handles);
  assert_non_null(links);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = SMALL_STACK;
  for (int i = 0; i < MANY; i++) {
    links[i] = (link_t){ &ch, i };
    int r = mm_spawn_ex(loop, chain_link, &links[i], &o, &ch.handles[i]);
    if (r != 0)
      fail_msg("spawn %d: %s", i, mm_strerror(r));
  }
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(ch.started, MANY);
  assert_int_equal(ch.max_alive, MANY);
  assert_int_equal(ch.alive, 0);
  assert_status(mm_join(ch.handles[0]), MANY);
  assert_mm_ok(mm_loop_free(loop));
  free(links);
  free(ch.handles);
}

/* The same number asleep in timers at once, on a started loop, released
 * by cancelling each from this thread. */
static void test_10000_sleeping_coroutines_are_each_cancelled(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_latch_t entered;
  mm_test_latch_init(&entered);
  sleeper_t *s = calloc(MANY, sizeof *s);
  mm_coro_t **c = calloc(MANY, sizeof *c);
  assert_non_null(s);
  assert_non_null(c);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = SMALL_STACK;
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < MANY; i++) {
    s[i].entered = &entered;
    int r = mm_spawn_ex(loop, sleep_forever, &s[i], &o, &c[i]);
    if (r != 0)
      fail_msg("spawn %d: %s", i, mm_strerror(r));
  }
  mm_test_latch_wait(&entered, MANY);
  for (int i = 0; i < MANY; i++)
    assert_mm_ok(mm_cancel(c[i]));
  int bad = 0;
  for (int i = 0; i < MANY; i++)
    if (mm_join(c[i]) != -ECANCELED || s[i].result != -ECANCELED)
      bad++;
  assert_int_equal(bad, 0);
  assert_mm_ok(mm_loop_free(loop));
  free(c);
  free(s);
  mm_test_latch_destroy(&entered);
}


/* ---- Stacks ----------------------------------------------------------- */

#define FRAME_BYTES 1024

typedef struct {
  uintptr_t top;       /* address of the first frame's array */
  uintptr_t deepest;   /* address of the deepest frame's array */
  int       depth;
  int       result;
} deep_t;

static __attribute__((noinline)) int recurse(deep_t *d, int depth) {
  volatile char frame[FRAME_BYTES];
  frame[0] = (char)depth;
  frame[FRAME_BYTES - 1] = (char)(depth * 3);
  if (depth == d->depth)
    d->top = (uintptr_t)frame;
  if (depth == 0) {
    d->deepest = (uintptr_t)frame;
    return 1;
  }
  int r = recurse(d, depth - 1);
  /* Used after the call, so that the frame stays live (no tail call). */
  return r + (frame[0] == (char)depth) + (frame[FRAME_BYTES - 1] ==
                                          (char)(depth * 3)) - 2 + 1;
}

static int recurse_deep(void *arg) {
  deep_t *d = arg;
  d->result = recurse(d, d->depth);
  return 0;
}

static void test_deep_recursion_inside_the_stack_limit(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  deep_t d[2];
  memset(d, 0, sizeof d);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = 256 * 1024;
  d[0].depth = d[1].depth = 140;   /* ~150 KiB of 256 KiB */
  mm_coro_t *c[2];
  assert_mm_ok(mm_spawn_ex(loop, recurse_deep, &d[0], &o, &c[0]));
  assert_mm_ok(mm_spawn(loop, recurse_deep, &d[1], &c[1]));   /* default */
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 2; i++) {
    assert_mm_ok(mm_join(c[i]));
    assert_int_equal(d[i].result, d[i].depth + 1);
    uintptr_t used = d[i].top - d[i].deepest;
    if (used < 140 * 1024)
      fail_msg("the recursion used only %lu bytes", (unsigned long)used);
  }
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_stack_size_option_sets_its_coroutines_default(
    void **state) {
  mm_loop_options_t lo;
  mm_loop_options_init(&lo);
  lo.stack_size = 1024 * 1024;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &lo));
  deep_t d;
  memset(&d, 0, sizeof d);
  d.depth = 600;   /* ~620 KiB: past the 256 KiB default, inside 1 MiB */
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, recurse_deep, &d, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_int_equal(d.result, d.depth + 1);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_small_stacks_hold_modest_frames(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  deep_t d[8];
  mm_coro_t *c[8];
  memset(d, 0, sizeof d);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = SMALL_STACK;
  for (int i = 0; i < 8; i++) {
    d[i].depth = 6;   /* ~7 KiB of 16 */
    assert_mm_ok(mm_spawn_ex(loop, recurse_deep, &d[i], &o, &c[i]));
  }
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 8; i++) {
    assert_mm_ok(mm_join(c[i]));
    assert_int_equal(d[i].result, 7);
  }
  assert_mm_ok(mm_loop_free(loop));
}

static volatile int keep_recursing = 1;   /* volatile: no "infinite" */

static __attribute__((noinline)) int recurse_forever(int depth) {
  volatile char frame[FRAME_BYTES];
  frame[0] = (char)depth;
  int r = keep_recursing ? recurse_forever(depth + 1) : 0;
  return r + frame[0];
}

static int overflow(void *arg) {
  return recurse_forever(0);
}

static void overflow_in_child(void *arg) {
  mm_loop_t *loop;
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.name = "overflowing-one";
  o.stack_size = 64 * 1024;
  if (mm_loop_new(&loop, NULL) != 0)
    _exit(3);
  if (mm_spawn_ex(loop, overflow, NULL, &o, NULL) != 0)
    _exit(4);
  mm_loop_run(loop);
  _exit(5);   /* survived the overflow: the guard page did not stop it */
}

static void test_stack_overflow_is_stopped_by_the_guard_page(void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(overflow_in_child, NULL, &child), 0);
  if (child.exited && (child.code == 0 || child.code >= 3))
    fail_msg("child exited with %d; output:\n%s", child.code, child.out);
}

/* The report that names the coroutine is tested in test-process: the
 * handler is installed once per process, and in this program's children
 * cmocka's own SIGSEGV handler stands in front of it. */


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_spawn_runs_fn_with_its_arg),
    mm_test(test_join_returns_the_value_fn_returned),
    mm_test(test_join_of_ended_coroutine_does_not_wait),
    mm_test(test_a_coroutine_joining_itself_gets_edeadlk_or_einval),
    mm_test(test_join_in_a_coroutine_of_an_ended_coroutine_returns_its_status),
    mm_test(test_join_from_a_plain_thread_blocks_until_the_coroutine_ends),
    mm_test(test_join_in_a_coroutine_suspends_only_that_coroutine),
    mm_test(test_join_of_a_coroutine_of_another_loop),
    mm_test(test_detach_lets_the_coroutine_run_to_its_end),
    mm_test(test_spawn_without_a_handle_detaches),
    mm_test(test_spawn_and_join_from_four_threads_at_once),
    mm_test(test_spawn_from_another_thread_wakes_a_running_loop),
    mm_test(test_cancel_of_a_sleeping_coroutine_returns_ecanceled_from_sleep),
    mm_test(test_cancellation_is_sticky_for_every_later_suspension),
    mm_test(test_cancel_from_another_coroutine),
    mm_test(test_cancel_before_first_run_means_it_never_runs),
    mm_test(test_cancel_of_an_ended_coroutine_does_nothing),
    mm_test(test_stale_handle_is_refused_and_never_acts_on_a_new_coroutine),
    mm_test(test_handles_of_ended_detached_and_unmapped_coroutines_are_stale),
    mm_test(test_cancel_racing_join_and_reuse_never_cancels_the_next),
    mm_test(test_two_coroutines_joining_each_other_get_edeadlk),
    mm_test(test_join_rings_across_loops_get_edeadlk),
    mm_test(test_a_call_joining_the_coroutine_it_runs_for_gets_edeadlk),
    mm_test(test_a_detached_handle_in_a_join_cycle_gets_einval),
    mm_test(test_an_abandonable_call_may_join_its_coroutine),
    mm_test(test_cancelled_is_false_until_a_cancel),
    mm_test(test_coroutine_cancelled_while_joining_cancels_the_joined_one),
    mm_test(test_spawn_timeout_cancels_with_etimedout),
    mm_test(test_spawn_timeout_on_a_started_loop_answers_a_blocked_joiner),
    mm_test(test_spawn_timeout_not_reached_changes_nothing),
    mm_test(test_spawn_timeout_before_first_run_means_it_never_runs),
    mm_test(test_spawn_ex_copies_the_name),
    mm_test(test_coroutine_without_a_name_is_named_empty),
    mm_test(test_current_is_the_coroutine_inside_one_and_null_outside),
    mm_test(test_yield_and_sleep_on_a_plain_thread),
    mm_test(test_yield_lets_the_other_ready_coroutines_run),
    mm_test(test_coroutines_yielding_to_each_other_let_a_timer_fire),
    mm_test(test_sleep_in_a_coroutine_lets_others_run_meanwhile),
    mm_test(test_rounding_mode_is_kept_per_coroutine_across_switches),
    mm_test(test_rounding_mode_is_kept_on_a_started_loop),
    mm_test(test_10000_live_coroutines_wait_at_once),
    mm_test(test_10000_sleeping_coroutines_are_each_cancelled),
    mm_test(test_deep_recursion_inside_the_stack_limit),
    mm_test(test_loop_stack_size_option_sets_its_coroutines_default),
    mm_test(test_small_stacks_hold_modest_frames),
    mm_test(test_stack_overflow_is_stopped_by_the_guard_page),
  };
  return mm_run_tests(tests);
}
