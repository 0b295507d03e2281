/* mm_run_async: a plain thread or a coroutine gets the status of a
 * coroutine that a loop runs for it.  Values returned unchanged, fn on the
 * loop's thread, many callers at once, callers that are coroutines of the
 * same or of another loop, -EDEADLK from raw libuv callbacks, -EINVAL,
 * timeouts, stopped and freed loops answering every caller, the warning
 * about a loop nobody runs, locals copied from the caller, pool workers
 * calling back into their loop, and the async_calls counter.
 */
#include <sched.h>

#include "helpers.h"

#define FOREVER_MS 1000000u

static mm_loop_t *new_started_loop(void) {
  mm_loop_t *loop = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(loop));
  return loop;
}

/* Fewer repetitions under TSan (a fiber per coroutine) and Valgrind (one
 * thread at a time, tens of times slower). */
static int scaled(int n, int small) {
  if (MM_TEST_SCALE(1, 0) == 0 || mm_test_under_valgrind())
    return small;
  return n;
}

static int return_arg(void *arg) {
  return (int)(intptr_t)arg;
}

/* Yields once, so that a stop can catch it suspended. */
static int yield_then_return_arg(void *arg) {
  int r = mm_yield();
  return r != 0 ? r : (int)(intptr_t)arg;
}

typedef struct {
  pthread_t thread;
  int       current_non_null;
  int       value;
} where_t;

static int record_where(void *arg) {
  where_t *w = arg;
  w->thread = pthread_self();
  w->current_non_null = mm_current() != NULL;
  return w->value;
}

/* The loop's thread, as a coroutine spawned on it sees it. */
static pthread_t loop_thread_of(mm_loop_t *loop) {
  where_t w;
  memset(&w, 0, sizeof w);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, record_where, &w, &c));
  assert_mm_ok(mm_join(c));
  return w.thread;
}


/* ---- From a plain thread ---------------------------------------------- */

static void test_run_async_from_a_thread_returns_fns_value_unchanged(
    void **state) {
  mm_loop_t *loop = new_started_loop();
  assert_status(mm_run_async(loop, return_arg, (void *)(intptr_t)42), 42);
  assert_status(mm_run_async(loop, return_arg, (void *)(intptr_t)-EIO), -EIO);
  assert_status(mm_run_async(loop, return_arg, (void *)(intptr_t)0), 0);
  assert_status(mm_run_async(loop, yield_then_return_arg,
                             (void *)(intptr_t)-ENOENT), -ENOENT);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_run_async_runs_fn_as_a_coroutine_on_the_loops_thread(
    void **state) {
  mm_loop_t *loop = new_started_loop();
  pthread_t loop_thread = loop_thread_of(loop);
  where_t w;
  memset(&w, 0, sizeof w);
  w.value = 7;
  assert_status(mm_run_async(loop, record_where, &w), 7);
  assert_true(pthread_equal(w.thread, loop_thread));
  assert_false(pthread_equal(w.thread, pthread_self()));
  assert_true(w.current_non_null);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  mm_loop_t *loop;
  int        id;
  int        calls;
  int        wrong;        /* answers that were not the caller's value */
  int        first_wrong;
} caller_t;

static void *call_many_times(void *arg) {
  caller_t *c = arg;
  for (int i = 0; i < c->calls; i++) {
    int want = c->id * 100000 + i;
    int got = mm_run_async(c->loop, i % 2 ? yield_then_return_arg : return_arg,
                           (void *)(intptr_t)want);
    if (got != want && c->wrong++ == 0)
      c->first_wrong = got;
  }
  return NULL;
}

static void test_run_async_from_8_threads_answers_each_call_with_its_value(
    void **state) {
  enum { THREADS = 8 };
  mm_loop_t *loop = new_started_loop();
  caller_t c[THREADS];
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) {
    c[i] = (caller_t){ loop, i + 1, scaled(500, 50), 0, 0 };
    assert_int_equal(pthread_create(&t[i], NULL, call_many_times, &c[i]), 0);
  }
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_join(t[i], NULL), 0);
  for (int i = 0; i < THREADS; i++)
    if (c[i].wrong != 0)
      fail_msg("thread %d: %d wrong answers, the first %d (%s)", i,
               c[i].wrong, c[i].first_wrong, mm_strerror(c[i].first_wrong));
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.coros_live, 0);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- From a coroutine ------------------------------------------------- */

typedef struct {
  mm_loop_t *target;
  pthread_t  caller_thread;
  where_t    inner;
  mm_coro_t *caller_coro;
  mm_coro_t *inner_coro;
  int        result;
} nested_t;

static int record_where_and_coro(void *arg) {
  nested_t *n = arg;
  n->inner_coro = mm_current();
  return record_where(&n->inner);
}

static int call_run_async_from_a_coroutine(void *arg) {
  nested_t *n = arg;
  n->caller_thread = pthread_self();
  n->caller_coro = mm_current();
  n->result = mm_run_async(n->target, record_where_and_coro, n);
  return 0;
}

static void test_run_async_in_a_coroutine_of_the_same_loop_stays_on_its_thread(
    void **state) {
  mm_loop_t *loop = new_started_loop();
  nested_t n;
  memset(&n, 0, sizeof n);
  n.target = loop;
  n.inner.value = 42;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_run_async_from_a_coroutine, &n, &c));
  assert_mm_ok(mm_join(c));
  assert_status(n.result, 42);
  assert_true(pthread_equal(n.inner.thread, n.caller_thread));
  assert_true(n.inner.current_non_null);
  /* fn ran as a coroutine of its own, not inline in the caller. */
  assert_non_null(n.inner_coro);
  assert_ptr_not_equal(n.inner_coro, n.caller_coro);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_run_async_in_a_coroutine_on_a_run_loop_stays_on_its_thread(
    void **state) {
  /* The same through mm_loop_run on the test's thread. */
  mm_loop_t *loop = mm_test_loop_new(0);
  nested_t n;
  memset(&n, 0, sizeof n);
  n.target = loop;
  n.inner.value = -EIO;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_run_async_from_a_coroutine, &n, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(n.result, -EIO);
  assert_true(pthread_equal(n.caller_thread, pthread_self()));
  assert_true(pthread_equal(n.inner.thread, pthread_self()));
  assert_mm_ok(mm_loop_free(loop));
}

/* The caller C, a coroutine of loop A, calls mm_run_async(B, on_b).  on_b
 * joins R, a coroutine of A that ends only after on_b has started: if C's
 * call blocked A's thread, R could never run and on_b would never return. */
typedef struct {
  mm_loop_t *a, *b;
  mm_coro_t *releaser;     /* R, on A */
  atomic_int on_b_started;
  int        releaser_ticks;
  int        releaser_saw_started;
  pthread_t  a_thread_in_caller, a_thread_in_releaser, b_thread_in_fn;
  int        join_in_fn;
  int        result;
  int        spawn_result;
} cross_t;

static int releaser(void *arg) {
  cross_t *x = arg;
  x->a_thread_in_releaser = pthread_self();
  while (!atomic_load_explicit(&x->on_b_started, memory_order_acquire)) {
    if (mm_yield() != 0)
      return -ECANCELED;
    x->releaser_ticks++;
  }
  x->releaser_saw_started = 1;
  return 35;
}

static int on_b(void *arg) {
  cross_t *x = arg;
  x->b_thread_in_fn = pthread_self();
  atomic_store_explicit(&x->on_b_started, 1, memory_order_release);
  x->join_in_fn = mm_join(x->releaser);
  return x->join_in_fn < 0 ? x->join_in_fn : x->join_in_fn + 7;
}

static int cross_caller(void *arg) {
  cross_t *x = arg;
  x->a_thread_in_caller = pthread_self();
  x->spawn_result = mm_spawn(x->a, releaser, x, &x->releaser);
  if (x->spawn_result != 0)
    return x->spawn_result;
  x->result = mm_run_async(x->b, on_b, x);
  return 0;
}

static void test_run_async_in_a_coroutine_of_another_loop_lets_its_loop_run(
    void **state) {
  mm_loop_t *a = new_started_loop();
  mm_loop_t *b = new_started_loop();
  cross_t x;
  memset(&x, 0, sizeof x);
  x.a = a;
  x.b = b;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(a, cross_caller, &x, &c));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(x.spawn_result);
  assert_status(x.join_in_fn, 35);
  assert_status(x.result, 42);
  assert_true(x.releaser_saw_started);
  assert_true(pthread_equal(x.a_thread_in_caller, x.a_thread_in_releaser));
  assert_false(pthread_equal(x.a_thread_in_caller, x.b_thread_in_fn));
  assert_mm_ok(mm_loop_free(a));
  assert_mm_ok(mm_loop_free(b));
}


/* ---- Refused calls ---------------------------------------------------- */

/* What a raw libuv callback on a borrowed loop's thread got. */
typedef struct {
  mm_loop_t *self;
  mm_loop_t *other;
  int        same_loop_result;
  int        other_loop_result;
  int        fn_ran;
} raw_t;

static int mark_fn_ran(void *arg) {
  raw_t *r = arg;
  r->fn_ran = 1;
  return 0;
}

static void call_from_raw_callback(void *arg) {
  raw_t *r = arg;
  r->same_loop_result = mm_run_async(r->self, mark_fn_ran, r);
  r->other_loop_result = mm_run_async(r->other, mark_fn_ran, r);
}

static void test_run_async_from_a_raw_uv_callback_returns_edeadlk(
    void **state) {
  uv_loop_t uv;
  raw_t r;
  memset(&r, 0, sizeof r);
  r.other = new_started_loop();
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&r.self, &uv, NULL));
  assert_mm_ok(mm_test_in_raw_callback(&uv, r.self, call_from_raw_callback,
                                       &r));
  assert_status(r.same_loop_result, -EDEADLK);
  assert_status(r.other_loop_result, -EDEADLK);
  assert_false(r.fn_ran);
  assert_mm_ok(mm_loop_free(r.self));
  assert_int_equal(uv_loop_close(&uv), 0);
  assert_mm_ok(mm_loop_free(r.other));
}

/* Issue 8, instance 5: the thread a borrowed loop belongs to, in a raw
 * callback with no coroutine alive (or outside uv_run altogether), gets
 * -EDEADLK from mm_run_async on that loop instead of hanging: nobody else
 * runs it. */
typedef struct {
  mm_loop_t *loop;
  int result;
} idle_raw_t;

static void idle_raw_cb(uv_timer_t *t) {
  idle_raw_t *r = t->data;
  r->result = mm_run_async(r->loop, return_arg, (void *)(intptr_t)1);
  uv_close((uv_handle_t *)t, NULL);
}

static void test_run_async_on_the_thread_of_an_idle_borrowed_loop_gets_edeadlk(
    void **state) {
  uv_loop_t uv;
  uv_timer_t timer;
  idle_raw_t r = { NULL, 0 };
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&r.loop, &uv, NULL));
  assert_mm_err(mm_run_async(r.loop, return_arg, NULL), -EDEADLK);
  assert_int_equal(uv_timer_init(&uv, &timer), 0);
  timer.data = &r;
  assert_int_equal(uv_timer_start(&timer, idle_raw_cb, 0, 0), 0);
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_status(r.result, -EDEADLK);
  assert_mm_ok(mm_loop_free(r.loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void test_run_async_with_null_loop_or_fn_returns_einval(void **state) {
  mm_loop_t *loop = new_started_loop();
  mm_async_options_t o;
  mm_async_options_init(&o);
  assert_mm_err(mm_run_async(NULL, return_arg, NULL), -EINVAL);
  assert_mm_err(mm_run_async(loop, NULL, NULL), -EINVAL);
  assert_mm_err(mm_run_async_ex(NULL, return_arg, NULL, &o), -EINVAL);
  assert_mm_err(mm_run_async_ex(loop, NULL, NULL, &o), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Timeouts --------------------------------------------------------- */

typedef struct {
  mm_test_latch_t *entered;
  int              sleep_result;
  int              cancelled;
  atomic_int       finished;
} sleeper_t;

static int sleep_forever(void *arg) {
  sleeper_t *s = arg;
  if (s->entered != NULL)
    mm_test_latch_add(s->entered, 1);
  s->sleep_result = mm_sleep(FOREVER_MS);
  s->cancelled = mm_cancelled();
  atomic_store_explicit(&s->finished, 1, memory_order_release);
  return s->sleep_result;
}

static void test_run_async_timeout_cancels_fn_and_returns_etimedout(
    void **state) {
  mm_loop_t *loop = new_started_loop();
  sleeper_t s;
  memset(&s, 0, sizeof s);
  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = 20;
  o.name = "sleeps-forever";
  uint64_t t0 = mm_test_now_ms();
  assert_mm_err(mm_run_async_ex(loop, sleep_forever, &s, &o), -ETIMEDOUT);
  uint64_t took = mm_test_now_ms() - t0;
  /* fn was waited for: it has ended, having seen the deadline. */
  assert_true(atomic_load(&s.finished));
  assert_status(s.sleep_result, -ETIMEDOUT);
  assert_true(s.cancelled);
  if (took < 15)
    fail_msg("returned after %llu ms, before the 20 ms deadline",
             (unsigned long long)took);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  mm_loop_t *loop;
  sleeper_t  s;
  int        result;
} timeout_in_coro_t;

static int call_with_timeout(void *arg) {
  timeout_in_coro_t *t = arg;
  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = 20;
  t->result = mm_run_async_ex(t->loop, sleep_forever, &t->s, &o);
  return 0;
}

static void test_run_async_timeout_from_a_coroutine_returns_etimedout(
    void **state) {
  mm_loop_t *loop = new_started_loop();
  timeout_in_coro_t t;
  memset(&t, 0, sizeof t);
  t.loop = loop;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_with_timeout, &t, &c));
  assert_mm_ok(mm_join(c));
  assert_status(t.result, -ETIMEDOUT);
  assert_true(atomic_load(&t.s.finished));
  assert_status(t.s.sleep_result, -ETIMEDOUT);
  assert_true(t.s.cancelled);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Stop and free ---------------------------------------------------- */

static int count_ran(void *arg) {
  atomic_fetch_add_explicit((atomic_int *)arg, 1, memory_order_relaxed);
  return 0;
}

static void test_run_async_on_a_stopped_loop_returns_eshutdown(void **state) {
  atomic_int ran = 0;
  mm_loop_t *started = new_started_loop();
  assert_mm_ok(mm_loop_stop(started));
  assert_mm_err(mm_run_async(started, count_ran, &ran), -ESHUTDOWN);
  assert_mm_err(mm_run_async(started, count_ran, &ran), -ESHUTDOWN);

  mm_loop_t *idle = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_stop(idle));
  assert_mm_err(mm_run_async(idle, count_ran, &ran), -ESHUTDOWN);
  assert_int_equal(atomic_load(&ran), 0);
  assert_mm_ok(mm_loop_free(started));
  assert_mm_ok(mm_loop_free(idle));
}

typedef struct {
  mm_loop_t *target;
  atomic_int *ran;
  int         result;
} stopped_from_coro_t;

static int call_stopped_loop(void *arg) {
  stopped_from_coro_t *s = arg;
  s->result = mm_run_async(s->target, count_ran, s->ran);
  return 0;
}

static void test_run_async_in_a_coroutine_on_a_stopped_loop_returns_eshutdown(
    void **state) {
  atomic_int ran = 0;
  mm_loop_t *stopped = new_started_loop();
  mm_loop_t *caller = new_started_loop();
  assert_mm_ok(mm_loop_stop(stopped));
  stopped_from_coro_t s = { stopped, &ran, 0 };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(caller, call_stopped_loop, &s, &c));
  assert_mm_ok(mm_join(c));
  assert_status(s.result, -ESHUTDOWN);
  assert_int_equal(atomic_load(&ran), 0);
  assert_mm_ok(mm_loop_free(caller));
  assert_mm_ok(mm_loop_free(stopped));
}

typedef struct {
  mm_loop_t *loop;
  sleeper_t  s;
  int        result;
} blocked_caller_t;

static void *call_sleep_forever(void *arg) {
  blocked_caller_t *b = arg;
  b->result = mm_run_async(b->loop, sleep_forever, &b->s);
  return NULL;
}

/* Rounds: the callers wake while the free finishes, and a caller that
 * touched the loop after its wake-up would do so only now and then. */
static void test_loop_free_answers_callers_blocked_in_run_async_with_eshutdown(
    void **state) {
  enum { CALLERS = 4, ROUNDS = 10 };
  for (int round = 0; round < ROUNDS; round++) {
    mm_loop_t *loop = new_started_loop();
    mm_test_latch_t entered;
    mm_test_latch_init(&entered);
    blocked_caller_t b[CALLERS];
    pthread_t t[CALLERS];
    memset(b, 0, sizeof b);
    for (int i = 0; i < CALLERS; i++) {
      b[i].loop = loop;
      b[i].s.entered = &entered;
      b[i].result = 1;
      assert_int_equal(pthread_create(&t[i], NULL, call_sleep_forever,
                                      &b[i]), 0);
    }
    mm_test_latch_wait(&entered, CALLERS);   /* every fn is asleep */
    mm_stats_t st;
    assert_mm_ok(mm_loop_stats(loop, &st));
    assert_int_equal(st.coros_live, CALLERS);
    assert_mm_ok(mm_loop_free(loop));
    for (int i = 0; i < CALLERS; i++)
      assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < CALLERS; i++) {
      assert_true(atomic_load(&b[i].s.finished));
      assert_status(b[i].s.sleep_result, -ECANCELED);
      if (b[i].result != -ESHUTDOWN)
        fail_msg("round %d, caller %d got %d (%s), expected -ESHUTDOWN",
                 round, i, b[i].result, mm_strerror(b[i].result));
    }
    mm_test_latch_destroy(&entered);
  }
}

typedef struct {
  mm_loop_t  *loop;
  mm_test_latch_t *answered;   /* one count per successful call */
  int         id;
  int         max_calls;
  int         values;       /* calls answered with their value */
  int         shutdowns;    /* calls answered -ESHUTDOWN */
  int         wrong;
  int         first_wrong;
  int         after_shutdown;  /* a call made after the first -ESHUTDOWN */
} hammer_t;

static void *hammer(void *arg) {
  hammer_t *h = arg;
  for (int i = 0; i < h->max_calls; i++) {
    int want = h->id * 1000000 + i;
    int got = mm_run_async(h->loop, i % 2 ? yield_then_return_arg : return_arg,
                           (void *)(intptr_t)want);
    if (got == want) {
      h->values++;
      if (h->values == 1)
        mm_test_latch_add(h->answered, 1);
    } else if (got == -ESHUTDOWN) {
      h->shutdowns++;
      /* The stop is final: the next call is refused too. */
      h->after_shutdown = mm_run_async(h->loop, return_arg,
                                       (void *)(intptr_t)want);
      break;
    } else if (h->wrong++ == 0) {
      h->first_wrong = got;
    }
  }
  return NULL;
}

static void test_loop_stop_while_4_threads_call_run_async_answers_every_call(
    void **state) {
  enum { THREADS = 4 };
  int rounds = scaled(20, 5);
  for (int round = 0; round < rounds; round++) {
    mm_loop_t *loop = new_started_loop();
    mm_test_latch_t answered;
    mm_test_latch_init(&answered);
    hammer_t h[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
      h[i] = (hammer_t){ .loop = loop, .answered = &answered, .id = i + 1,
                         .max_calls = 1000000 };
      assert_int_equal(pthread_create(&t[i], NULL, hammer, &h[i]), 0);
    }
    /* Every thread is in full swing before the stop lands. */
    mm_test_latch_wait(&answered, THREADS);
    assert_mm_ok(mm_loop_stop(loop));
    for (int i = 0; i < THREADS; i++)
      assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < THREADS; i++) {
      if (h[i].wrong != 0)
        fail_msg("round %d, thread %d: %d calls answered neither their value "
                 "nor -ESHUTDOWN; the first %d (%s)", round, i, h[i].wrong,
                 h[i].first_wrong, mm_strerror(h[i].first_wrong));
      assert_true(h[i].values >= 1);
      assert_int_equal(h[i].shutdowns, 1);
      assert_status(h[i].after_shutdown, -ESHUTDOWN);
    }
    assert_mm_ok(mm_loop_free(loop));
    mm_test_latch_destroy(&answered);
  }
}


/* ---- A loop nobody runs ----------------------------------------------- */

typedef struct {
  mm_test_log_t    log;
  mm_test_latch_t  warned;   /* counts "has not run" warnings */
} warn_watch_t;

static void watch_for_not_run(int level, const char *msg, void *data) {
  warn_watch_t *w = data;
  mm_test_log_fn(level, msg, &w->log);
  if (level == MM_LOG_WARN && msg != NULL && strstr(msg, "has not run"))
    mm_test_latch_add(&w->warned, 1);
}

/* Issue 8, instance 5: mm_loop_stop answers a thread blocked in
 * mm_run_async on a loop nobody drives at that moment -- never started,
 * or between two mm_loop_run calls -- with -ESHUTDOWN, at once. */
typedef struct {
  mm_loop_t *loop;
  int        result;
  uint64_t   took_ms;
} waiting_caller_t;

static void *call_loop_not_running(void *arg) {
  waiting_caller_t *w = arg;
  uint64_t t0 = mm_test_now_ms();
  w->result = mm_run_async(w->loop, return_arg, (void *)(intptr_t)42);
  w->took_ms = mm_test_now_ms() - t0;
  return NULL;
}

/* Blocks a thread in mm_run_async on loop until it has warned that the
 * loop does not run (so it surely waits), stops the loop, and checks the
 * answer. */
static void stop_answers_blocked_caller(mm_loop_t *loop) {
  warn_watch_t watch;
  mm_test_log_init(&watch.log);
  mm_test_latch_init(&watch.warned);
  mm_set_log(watch_for_not_run, &watch);
  waiting_caller_t b = { loop, 0, 0 };
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, call_loop_not_running, &b), 0);
  mm_test_latch_wait(&watch.warned, 1);
  assert_mm_ok(mm_loop_stop(loop));
  assert_int_equal(pthread_join(t, NULL), 0);
  mm_set_log(NULL, NULL);
  assert_status(b.result, -ESHUTDOWN);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&watch.warned);
  mm_test_log_destroy(&watch.log);
}

static void test_loop_stop_answers_a_caller_of_a_loop_never_run(void **state) {
  stop_answers_blocked_caller(mm_test_loop_new(0));
}

static void test_loop_stop_answers_a_caller_between_two_runs(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, return_arg, NULL, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  stop_answers_blocked_caller(loop);
}

/* Threads and a coroutine of another loop call a loop nobody runs while
 * it is stopped: each is answered, with -ESHUTDOWN, whether its call came
 * before the stop or after. */
static int call_undriven(void *arg) {
  return mm_run_async(arg, return_arg, (void *)(intptr_t)42);
}

static void test_loop_stop_racing_callers_of_a_loop_nobody_runs(void **state) {
  enum { THREADS = 3 };
  mm_loop_t *other = new_started_loop();
  int rounds = scaled(200, 20);
  for (int round = 0; round < rounds; round++) {
    mm_loop_t *loop = mm_test_loop_new(0);
    waiting_caller_t b[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
      b[i] = (waiting_caller_t){ loop, 0, 0 };
      assert_int_equal(
          pthread_create(&t[i], NULL, call_loop_not_running, &b[i]), 0);
    }
    mm_coro_t *k;
    assert_mm_ok(mm_spawn(other, call_undriven, loop, &k));
    assert_mm_ok(mm_loop_stop(loop));
    for (int i = 0; i < THREADS; i++) {
      assert_int_equal(pthread_join(t[i], NULL), 0);
      assert_status(b[i].result, -ESHUTDOWN);
    }
    assert_status(mm_join(k), -ESHUTDOWN);
    assert_mm_ok(mm_loop_free(loop));
  }
  assert_mm_ok(mm_loop_free(other));
}

/* Issue 8, instance 6: a stopping loop makes no pool (mm_loop_free would
 * already have looked for it and never free it). */
static void test_run_async_on_a_stopping_loop_makes_no_pool(void **state) {
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.pool_min_threads = 2;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_loop_stop(loop));
  assert_mm_err(mm_run_async(loop, return_arg, NULL), -ESHUTDOWN);
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.pool_threads, 0);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_run_async_on_a_loop_not_running_warns_then_completes_once_run(
    void **state) {
  warn_watch_t watch;
  mm_test_log_init(&watch.log);
  mm_test_latch_init(&watch.warned);
  mm_set_log(watch_for_not_run, &watch);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiting_caller_t w = { loop, 0, 0 };
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, call_loop_not_running, &w), 0);
  mm_test_latch_wait(&watch.warned, 1);
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(pthread_join(t, NULL), 0);
  mm_set_log(NULL, NULL);
  assert_status(w.result, 42);
  if (w.took_ms < 900)
    fail_msg("the call returned after %llu ms; the warning comes after "
             "about a second", (unsigned long long)w.took_ms);
  assert_int_equal(watch.log.max_level, MM_LOG_WARN);
  assert_int_equal(watch.warned.count, 1);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&watch.warned);
  mm_test_log_destroy(&watch.log);
}


/* The timeout bounds the caller's whole wait, from the call: a loop that
 * has not started yet included (it used to wait until the loop ran). */
typedef struct {
  mm_loop_t *loop;
  uint64_t   timeout_ms;
  atomic_int runs;
  int        result;
} bounded_t;

static int count_run(void *arg) {
  bounded_t *b = arg;
  atomic_fetch_add(&b->runs, 1);
  return 42;
}

static void *call_bounded(void *arg) {
  bounded_t *b = arg;
  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = b->timeout_ms;
  b->result = mm_run_async_ex(b->loop, count_run, b, &o);
  return NULL;
}

static void test_run_async_timeout_bounds_the_wait_for_a_loop_not_started(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  bounded_t b = { .loop = loop, .timeout_ms = 20 };
  call_bounded(&b);
  assert_status(b.result, -ETIMEDOUT);
  /* The request the caller left is dropped when the loop drains it: fn
   * never runs, nothing leaks, the loop serves the next call. */
  assert_mm_ok(mm_loop_start(loop));
  b.timeout_ms = 0;
  call_bounded(&b);
  assert_status(b.result, 42);
  assert_int_equal(atomic_load(&b.runs), 1);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_run_async_timeout_left_in_an_inbox_is_freed_with_the_loop(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  bounded_t b = { .loop = loop, .timeout_ms = 1 };
  call_bounded(&b);
  assert_status(b.result, -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));     /* never run: drained by the free */
  assert_int_equal(atomic_load(&b.runs), 0);
}

/* The loop starts around the caller's deadline: every call is answered
 * once, with fn's value (fn ran once) or -ETIMEDOUT (fn ran at most once,
 * then its coroutine was cancelled or it never started). */
static int sleep_then_count(void *arg) {
  bounded_t *b = arg;
  atomic_fetch_add(&b->runs, 1);
  int r = mm_sleep(1);
  return r == 0 ? 42 : r;
}

static void *call_bounded_sleeper(void *arg) {
  bounded_t *b = arg;
  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = b->timeout_ms;
  b->result = mm_run_async_ex(b->loop, sleep_then_count, b, &o);
  return NULL;
}

static void test_run_async_timeout_racing_the_loop_s_start_answers_once(
    void **state) {
  int rounds = mm_test_under_valgrind() ? 30 : 300;
  int values = 0, timeouts = 0;
  for (int i = 0; i < rounds; i++) {
    mm_loop_t *loop = mm_test_loop_new(0);
    bounded_t b = { .loop = loop, .timeout_ms = 1 + i % 3 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, call_bounded_sleeper, &b), 0);
    struct timespec ts = { 0, (long) (i % 7) * 400000 };
    nanosleep(&ts, NULL);            /* where the start lands: any order */
    assert_mm_ok(mm_loop_start(loop));
    assert_int_equal(pthread_join(t, NULL), 0);
    if (b.result == 42) {
      values++;
      assert_int_equal(atomic_load(&b.runs), 1);
    } else {
      timeouts++;
      assert_status(b.result, -ETIMEDOUT);
      assert_true(atomic_load(&b.runs) <= 1);
    }
    assert_mm_ok(mm_loop_free(loop));
  }
  print_message("%d rounds: %d values, %d timeouts\n", rounds, values,
                timeouts);
}


/* ---- Locals ----------------------------------------------------------- */

static const int key = 0;
static int thread_value, coro_value;

typedef struct {
  void *seen_inside;
  void *seen_after_set;
} locals_seen_t;

static int read_then_overwrite_local(void *arg) {
  locals_seen_t *s = arg;
  s->seen_inside = mm_local_get(&key);
  if (mm_local_set(&key, &coro_value) != 0)
    return -ENOMEM;
  s->seen_after_set = mm_local_get(&key);
  return 0;
}

typedef struct {
  mm_loop_t    *loop;
  locals_seen_t inner;
  int           set_result;
  int           result;
  void         *after_return;
} locals_caller_t;

static void *set_local_then_call(void *arg) {
  locals_caller_t *l = arg;
  l->set_result = mm_local_set(&key, &thread_value);
  l->result = mm_run_async(l->loop, read_then_overwrite_local, &l->inner);
  l->after_return = mm_local_get(&key);
  return NULL;
}

static void test_run_async_coroutine_starts_with_a_copy_of_the_threads_locals(
    void **state) {
  mm_loop_t *loop = new_started_loop();
  locals_caller_t l;
  memset(&l, 0, sizeof l);
  l.loop = loop;
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, set_local_then_call, &l), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_mm_ok(l.set_result);
  assert_mm_ok(l.result);
  assert_ptr_equal(l.inner.seen_inside, &thread_value);
  assert_ptr_equal(l.inner.seen_after_set, &coro_value);
  /* The coroutine's set changed its own copy only. */
  assert_ptr_equal(l.after_return, &thread_value);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Pool workers calling back into their loop ------------------------- */

typedef struct {
  mm_loop_t *loop;
  int        want;
  pthread_t  worker;
  int        worker_current_non_null;
} callback_t;

static int call_back_into_the_loop(void *arg) {
  callback_t *cb = arg;
  cb->worker = pthread_self();
  cb->worker_current_non_null = mm_current() != NULL;
  return mm_run_async(cb->loop, yield_then_return_arg,
                      (void *)(intptr_t)cb->want);
}

typedef struct {
  mm_loop_t *loop;
  int        id;
  int        calls;
  int        wrong;
  int        first_wrong;
  int        on_loop_thread;   /* worker calls that ran on the loop thread */
  int        no_current;       /* worker calls that did not see mm_current */
} sync_caller_t;

static int run_sync_many_times(void *arg) {
  sync_caller_t *s = arg;
  pthread_t me = pthread_self();
  for (int i = 0; i < s->calls; i++) {
    callback_t cb = { s->loop, s->id * 10000 + i, 0, 0 };
    int got = mm_run_sync(call_back_into_the_loop, &cb);
    if (got != cb.want && s->wrong++ == 0)
      s->first_wrong = got;
    if (pthread_equal(cb.worker, me))
      s->on_loop_thread++;
    if (!cb.worker_current_non_null)
      s->no_current++;
  }
  return 0;
}

static void test_workers_calling_run_async_back_into_their_loop_get_values(
    void **state) {
  enum { COROS = 8 };
  mm_loop_t *loop = new_started_loop();
  sync_caller_t s[COROS];
  mm_coro_t *c[COROS];
  for (int i = 0; i < COROS; i++) {
    s[i] = (sync_caller_t){ .loop = loop, .id = i + 1,
                            .calls = scaled(50, 10) };
    assert_mm_ok(mm_spawn(loop, run_sync_many_times, &s[i], &c[i]));
  }
  for (int i = 0; i < COROS; i++)
    assert_mm_ok(mm_join(c[i]));
  for (int i = 0; i < COROS; i++) {
    if (s[i].wrong != 0)
      fail_msg("coroutine %d: %d wrong answers, the first %d (%s)", i,
               s[i].wrong, s[i].first_wrong, mm_strerror(s[i].first_wrong));
    assert_int_equal(s[i].on_loop_thread, 0);
    assert_int_equal(s[i].no_current, 0);
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Stats ------------------------------------------------------------ */

static int call_same_loop_twice(void *arg) {
  mm_loop_t *loop = arg;
  int r = mm_run_async(loop, return_arg, (void *)(intptr_t)1);
  int r2 = mm_run_async(loop, return_arg, (void *)(intptr_t)2);
  return r == 1 && r2 == 2 ? 0 : -EPROTO;
}

static void test_loop_stats_count_run_async_calls(void **state) {
  mm_loop_t *loop = new_started_loop();
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  uint64_t before = st.async_calls;
  for (int i = 0; i < 5; i++)
    assert_status(mm_run_async(loop, return_arg, (void *)(intptr_t)i), i);
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.async_calls - before, 5);

  mm_coro_t *c;   /* two more from a coroutine of the loop */
  assert_mm_ok(mm_spawn(loop, call_same_loop_twice, loop, &c));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.async_calls - before, 7);
  assert_mm_ok(mm_loop_free(loop));
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_run_async_from_a_thread_returns_fns_value_unchanged),
    mm_test(test_run_async_runs_fn_as_a_coroutine_on_the_loops_thread),
    mm_test(test_run_async_from_8_threads_answers_each_call_with_its_value),
    mm_test(
        test_run_async_in_a_coroutine_of_the_same_loop_stays_on_its_thread),
    mm_test(test_run_async_in_a_coroutine_on_a_run_loop_stays_on_its_thread),
    mm_test(test_run_async_in_a_coroutine_of_another_loop_lets_its_loop_run),
    mm_test(test_run_async_from_a_raw_uv_callback_returns_edeadlk),
    mm_test(test_run_async_with_null_loop_or_fn_returns_einval),
    mm_test(test_run_async_timeout_cancels_fn_and_returns_etimedout),
    mm_test(test_run_async_timeout_from_a_coroutine_returns_etimedout),
    mm_test(test_run_async_timeout_bounds_the_wait_for_a_loop_not_started),
    mm_test(test_run_async_timeout_left_in_an_inbox_is_freed_with_the_loop),
    mm_test(test_run_async_timeout_racing_the_loop_s_start_answers_once),
    mm_test(test_run_async_on_a_stopped_loop_returns_eshutdown),
    mm_test(
        test_run_async_in_a_coroutine_on_a_stopped_loop_returns_eshutdown),
    mm_test(
        test_loop_free_answers_callers_blocked_in_run_async_with_eshutdown),
    mm_test(test_loop_stop_while_4_threads_call_run_async_answers_every_call),
    mm_test(
        test_run_async_on_a_loop_not_running_warns_then_completes_once_run),
    mm_test(
        test_run_async_coroutine_starts_with_a_copy_of_the_threads_locals),
    mm_test(test_workers_calling_run_async_back_into_their_loop_get_values),
    mm_test(test_loop_stats_count_run_async_calls),
    mm_test(test_run_async_on_the_thread_of_an_idle_borrowed_loop_gets_edeadlk),
    mm_test(test_loop_stop_answers_a_caller_of_a_loop_never_run),
    mm_test(test_loop_stop_answers_a_caller_between_two_runs),
    mm_test(test_loop_stop_racing_callers_of_a_loop_nobody_runs),
    mm_test(test_run_async_on_a_stopping_loop_makes_no_pool),
  };
  return mm_run_tests(tests);
}
