/* Loops: new/free, run on the calling thread, start on a background thread,
 * stop (final), free with live coroutines, loops borrowed from a user's uv
 * loop, raw libuv callbacks on the loop's thread (-EDEADLK), and the log
 * report of coroutines never joined.
 */
#include "helpers.h"

/* Long enough never to end by itself within a test. */
#define FOREVER_MS 100000000u


/* ---- Coroutine bodies ------------------------------------------------- */

/* Counts that it ran and on which thread. */
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

static int sleep_then_mark(void *arg) {
  ran_t *r = arg;
  mm_sleep(2);
  mm_yield();
  return mark_ran(r);
}

/* Tells the test it is about to sleep, sleeps "forever", and records what
 * the sleep returned and whether it then saw itself cancelled. */
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


/* ---- New, free, uv ---------------------------------------------------- */

static void test_loop_new_and_free_without_coroutines(void **state) {
  mm_loop_t *loop = NULL;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_non_null(loop);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_uv_returns_the_loops_uv_loop(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_non_null(mm_loop_uv(loop));
  assert_mm_ok(mm_loop_free(loop));

  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_ptr_equal(mm_loop_uv(loop), &uv);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void test_many_loops_can_be_created_started_and_freed(void **state) {
  for (int i = 0; i < 20; i++) {
    mm_loop_t *loop;
    ran_t r = { 0 };
    assert_mm_ok(mm_loop_new(&loop, NULL));
    if (i % 2 == 0)
      assert_mm_ok(mm_loop_start(loop));
    mm_coro_t *c;
    assert_mm_ok(mm_spawn(loop, mark_ran, &r, &c));
    if (i % 2 != 0)
      assert_mm_ok(mm_loop_run(loop));
    assert_mm_ok(mm_join(c));
    assert_int_equal(atomic_load(&r.ran), 1);
    assert_mm_ok(mm_loop_free(loop));
  }
}


/* ---- Run -------------------------------------------------------------- */

static void test_loop_run_with_nothing_to_do_returns_at_once(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_run_returns_when_no_coroutine_is_left(void **state) {
  mm_loop_t *loop;
  ran_t r[5];
  memset(r, 0, sizeof r);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  for (int i = 0; i < 5; i++)
    assert_mm_ok(mm_spawn(loop, i % 2 ? sleep_then_mark : mark_ran, &r[i],
                          NULL));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 5; i++) {
    assert_int_equal(atomic_load(&r[i].ran), 1);
    /* On the thread that called mm_loop_run. */
    assert_true(pthread_equal(r[i].thread, pthread_self()));
  }
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_run_can_be_called_again_after_more_spawns(void **state) {
  mm_loop_t *loop;
  ran_t a = { 0 }, b = { 0 };
  mm_coro_t *ca, *cb;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, sleep_then_mark, &a, &ca));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&a.ran), 1);
  assert_mm_ok(mm_spawn(loop, sleep_then_mark, &b, &cb));
  assert_int_equal(atomic_load(&b.ran), 0);
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&b.ran), 1);
  assert_mm_ok(mm_join(ca));
  assert_mm_ok(mm_join(cb));
  assert_mm_ok(mm_loop_free(loop));
}

/* A coroutine of one loop may not run another loop on its thread. */
typedef struct {
  mm_loop_t *other;
  int        result;
} run_other_t;

static int run_other_loop(void *arg) {
  run_other_t *r = arg;
  r->result = mm_loop_run(r->other);
  return 0;
}

static void test_loop_run_from_a_coroutine_returns_edeadlk(void **state) {
  mm_loop_t *loop;
  run_other_t r = { NULL, 1 };
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_new(&r.other, NULL));
  assert_mm_ok(mm_spawn(loop, run_other_loop, &r, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(r.result, -EDEADLK);
  assert_mm_ok(mm_loop_free(r.other));
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Start ------------------------------------------------------------ */

static void test_loop_start_runs_coroutines_on_a_background_thread(
    void **state) {
  mm_loop_t *loop;
  ran_t r[3];
  mm_coro_t *c[3];
  memset(r, 0, sizeof r);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_spawn(loop, sleep_then_mark, &r[i], &c[i]));
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_join(c[i]));   /* blocks this plain thread */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(atomic_load(&r[i].ran), 1);
    assert_false(pthread_equal(r[i].thread, pthread_self()));
    assert_true(pthread_equal(r[i].thread, r[0].thread));
  }
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_run_or_start_while_started_returns_ebusy(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_err(mm_loop_run(loop), -EBUSY);
  assert_mm_err(mm_loop_start(loop), -EBUSY);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_started_loop_keeps_running_when_idle(void **state) {
  /* A started loop waits for work instead of returning when it has no
   * coroutine: spawns after an idle spell still run. */
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < 5; i++) {
    ran_t r = { 0 };
    mm_coro_t *c;
    assert_mm_ok(mm_spawn(loop, mark_ran, &r, &c));
    assert_mm_ok(mm_join(c));
    assert_int_equal(atomic_load(&r.ran), 1);
    mm_sleep(2);   /* let the loop go idle; nothing waits on this */
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Stop ------------------------------------------------------------- */

typedef struct {
  mm_loop_t *loop;
  int        stop_result;
  int        spawn_result;
  int        sleep_result;
  ran_t      late;           /* must never run */
} stopper_t;

static int stop_own_loop(void *arg) {
  stopper_t *s = arg;
  mm_yield();   /* the sleeper, spawned first, is asleep after this */
  s->stop_result = mm_loop_stop(s->loop);
  s->spawn_result = mm_spawn(s->loop, mark_ran, &s->late, NULL);
  s->sleep_result = mm_sleep(FOREVER_MS);
  return 0;
}

static void test_loop_stop_from_a_coroutine_cancels_live_coroutines(
    void **state) {
  mm_loop_t *loop;
  sleeper_t sl = { 0 };
  stopper_t st = { 0 };
  mm_coro_t *csl, *cst;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  st.loop = loop;
  assert_mm_ok(mm_spawn(loop, sleep_forever, &sl, &csl));
  assert_mm_ok(mm_spawn(loop, stop_own_loop, &st, &cst));
  assert_mm_ok(mm_loop_run(loop));   /* returns: all finished */
  assert_status(st.stop_result, 0);
  assert_status(st.spawn_result, -ESHUTDOWN);
  assert_status(st.sleep_result, -ECANCELED);
  assert_int_equal(atomic_load(&st.late.ran), 0);
  assert_status(sl.result, -ECANCELED);
  assert_true(sl.cancelled);
  assert_status(mm_join(csl), -ECANCELED);
  assert_mm_ok(mm_join(cst));
  assert_mm_err(mm_loop_run(loop), -ESHUTDOWN);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_stop_of_a_started_loop_cancels_live_coroutines(
    void **state) {
  mm_loop_t *loop;
  mm_test_latch_t entered;
  sleeper_t sl[3];
  mm_coro_t *c[3];
  mm_test_latch_init(&entered);
  memset(sl, 0, sizeof sl);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < 3; i++) {
    sl[i].entered = &entered;
    assert_mm_ok(mm_spawn(loop, sleep_forever, &sl[i], &c[i]));
  }
  mm_test_latch_wait(&entered, 3);
  assert_mm_ok(mm_loop_stop(loop));
  ran_t late = { 0 };
  assert_mm_err(mm_spawn(loop, mark_ran, &late, NULL), -ESHUTDOWN);
  for (int i = 0; i < 3; i++)
    assert_mm_err(mm_join(c[i]), -ECANCELED);
  assert_int_equal(atomic_load(&late.ran), 0);
  for (int i = 0; i < 3; i++) {
    assert_status(sl[i].result, -ECANCELED);
    assert_true(sl[i].finished);
  }
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&entered);
}


/* ---- Free ------------------------------------------------------------- */

static void test_loop_free_cancels_a_sleeping_coroutine_quickly(void **state) {
  mm_loop_t *loop;
  mm_test_latch_t entered;
  sleeper_t sl = { 0 };
  mm_test_latch_init(&entered);
  sl.entered = &entered;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn(loop, sleep_forever, &sl, NULL));
  mm_test_latch_wait(&entered, 1);
  uint64_t t0 = mm_test_now_ms();
  assert_mm_ok(mm_loop_free(loop));
  uint64_t took = mm_test_now_ms() - t0;
  assert_status(sl.result, -ECANCELED);
  assert_true(sl.cancelled);
  assert_true(sl.finished);
  if (took > (mm_test_under_valgrind() ? 20000u : 2000u))
    fail_msg("mm_loop_free took %llu ms", (unsigned long long)took);
  mm_test_latch_destroy(&entered);
}

#define LIVE 100

static void test_loop_free_with_100_live_coroutines_cancels_them_all(
    void **state) {
  mm_loop_t *loop;
  mm_test_latch_t entered;
  static sleeper_t sl[LIVE];
  memset(sl, 0, sizeof sl);
  mm_test_latch_init(&entered);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < LIVE; i++) {
    sl[i].entered = &entered;
    sl[i].result = 1;
    assert_mm_ok(mm_spawn(loop, sleep_forever, &sl[i], NULL));
  }
  mm_test_latch_wait(&entered, LIVE);
  assert_mm_ok(mm_loop_free(loop));
  for (int i = 0; i < LIVE; i++) {
    if (sl[i].result != -ECANCELED || !sl[i].finished)
      fail_msg("coroutine %d: sleep returned %d (%s), finished %d", i,
               sl[i].result, mm_strerror(sl[i].result), sl[i].finished);
  }
  mm_test_latch_destroy(&entered);
}

static void test_loop_free_of_a_borrowed_loop_finishes_its_live_coroutines(
    void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  mm_test_latch_t entered;
  static sleeper_t sl[LIVE];
  memset(sl, 0, sizeof sl);
  mm_test_latch_init(&entered);
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  for (int i = 0; i < LIVE; i++) {
    sl[i].entered = &entered;
    sl[i].result = 1;
    assert_mm_ok(mm_spawn(loop, sleep_forever, &sl[i], NULL));
  }
  /* Turn the user's loop until every coroutine is asleep (this thread
   * runs the loop, so reading the count needs no lock). */
  for (int spins = 0; entered.count < LIVE && spins < 100000; spins++)
    uv_run(&uv, UV_RUN_NOWAIT);
  assert_int_equal(entered.count, LIVE);
  assert_mm_ok(mm_loop_free(loop));
  for (int i = 0; i < LIVE; i++)
    if (sl[i].result != -ECANCELED || !sl[i].finished)
      fail_msg("coroutine %d: sleep returned %d (%s), finished %d", i,
               sl[i].result, mm_strerror(sl[i].result), sl[i].finished);
  assert_int_equal(uv_loop_close(&uv), 0);
  mm_test_latch_destroy(&entered);
}

static void test_loop_free_never_runs_coroutines_that_never_started(
    void **state) {
  mm_loop_t *loop;
  ran_t r = { 0 };
  assert_mm_ok(mm_loop_new(&loop, NULL));
  for (int i = 0; i < 10; i++)
    assert_mm_ok(mm_spawn(loop, mark_ran, &r, NULL));
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(atomic_load(&r.ran), 0);
}

typedef struct {
  mm_loop_t *loop;
  int        result;
} freer_t;

static int free_own_loop(void *arg) {
  freer_t *f = arg;
  f->result = mm_loop_free(f->loop);
  return 0;
}

static void test_loop_free_from_inside_a_coroutine_returns_ebusy(
    void **state) {
  mm_loop_t *loop;
  freer_t f = { NULL, 1 };
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  f.loop = loop;
  assert_mm_ok(mm_spawn(loop, free_own_loop, &f, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(f.result, -EBUSY);
  /* The loop was left untouched. */
  assert_mm_ok(mm_join(c));
  ran_t r = { 0 };
  assert_mm_ok(mm_spawn(loop, mark_ran, &r, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&r.ran), 1);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_free_from_inside_a_started_loops_coroutine_returns_ebusy(
    void **state) {
  mm_loop_t *loop;
  freer_t f = { NULL, 1 };
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  f.loop = loop;
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_spawn(loop, free_own_loop, &f, &c));
  assert_mm_ok(mm_join(c));
  assert_status(f.result, -EBUSY);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_free_reports_a_finished_coroutine_never_joined(
    void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.name = "forgotten-coroutine";
  ran_t ran = { 0 };
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn_ex(loop, mark_ran, &ran, &o, &c));
  assert_mm_ok(mm_loop_run(loop));
  mm_set_log(mm_test_log_fn, &log);
  int rc = mm_loop_free(loop);
  mm_set_log(NULL, NULL);
  assert_mm_ok(rc);
  assert_true(log.count >= 1);
  assert_true(log.max_level >= MM_LOG_WARN);
  if (strstr(log.text, "forgotten-coroutine") == NULL)
    fail_msg("the log does not name the coroutine:\n%s", log.text);
  mm_test_log_destroy(&log);
}

static void test_loop_free_is_silent_when_every_coroutine_was_joined(
    void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  mm_test_log_t log;
  mm_test_log_init(&log);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  ran_t ran[2] = { { 0 }, { 0 } };
  assert_mm_ok(mm_spawn(loop, mark_ran, &ran[0], &c));
  assert_mm_ok(mm_spawn(loop, mark_ran, &ran[1], NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  mm_set_log(mm_test_log_fn, &log);
  int rc = mm_loop_free(loop);
  mm_set_log(NULL, NULL);
  assert_mm_ok(rc);
  if (log.max_level >= MM_LOG_WARN)
    fail_msg("unexpected warning:\n%s", log.text);
  mm_test_log_destroy(&log);
}


/* ---- Borrowed uv loops and raw callbacks ------------------------------ */

static void test_loop_from_uv_runs_coroutines_under_uv_run(void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  ran_t r[3];
  mm_coro_t *c[3];
  memset(r, 0, sizeof r);
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_spawn(loop, sleep_then_mark, &r[i], &c[i]));
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);   /* returns when done */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(atomic_load(&r[i].ran), 1);
    assert_true(pthread_equal(r[i].thread, pthread_self()));
    assert_mm_ok(mm_join(c[i]));
  }
  /* More work later, under the user's loop again. */
  ran_t more = { 0 };
  assert_mm_ok(mm_spawn(loop, sleep_then_mark, &more, NULL));
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_int_equal(atomic_load(&more.ran), 1);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void test_loop_run_on_a_borrowed_loop_returns_einval(void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_err(mm_loop_run(loop), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

/* What a raw libuv callback on the loop's thread saw. */
typedef struct {
  uv_timer_t timer;
  mm_coro_t *joinable;
  int        sleep_result;
  int        join_result;
  int        yield_result;
  int        current_was_null;
  int        cancelled;
  atomic_int fired;
} raw_t;

static void raw_timer_cb(uv_timer_t *t) {
  raw_t *r = t->data;
  r->sleep_result = mm_sleep(1);
  r->join_result = mm_join(r->joinable);
  r->yield_result = mm_yield();
  r->current_was_null = mm_current() == NULL;
  r->cancelled = mm_cancelled();
  atomic_store_explicit(&r->fired, 1, memory_order_release);
  uv_close((uv_handle_t *)t, NULL);
}

/* Stays alive until the raw callback has run, so that the join there is a
 * join of a live coroutine. */
static int wait_for_raw_callback(void *arg) {
  raw_t *r = arg;
  while (!atomic_load_explicit(&r->fired, memory_order_acquire))
    if (mm_sleep(1) != 0)
      return -1;
  return 7;
}

static void test_raw_uv_callback_on_a_borrowed_loop_gets_edeadlk(
    void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  raw_t r;
  memset(&r, 0, sizeof r);
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_ok(mm_spawn(loop, wait_for_raw_callback, &r, &r.joinable));
  assert_int_equal(uv_timer_init(&uv, &r.timer), 0);
  r.timer.data = &r;
  assert_int_equal(uv_timer_start(&r.timer, raw_timer_cb, 0, 0), 0);
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_int_equal(atomic_load(&r.fired), 1);
  assert_status(r.sleep_result, -EDEADLK);
  assert_status(r.join_result, -EDEADLK);
  assert_status(r.yield_result, -EDEADLK);
  assert_true(r.current_was_null);
  assert_false(r.cancelled);
  /* The handle was left untouched by the refused join. */
  assert_status(mm_join(r.joinable), 7);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

/* On a loop of its own, the timer is added by a coroutine (on the loop's
 * thread) and fires outside any coroutine. */
typedef struct {
  mm_loop_t *loop;
  raw_t     *raw;
} arm_t;

static int arm_and_wait(void *arg) {
  arm_t *a = arg;
  raw_t *r = a->raw;
  if (uv_timer_init(mm_loop_uv(a->loop), &r->timer) != 0)
    return -100;
  r->timer.data = r;
  if (uv_timer_start(&r->timer, raw_timer_cb, 0, 0) != 0)
    return -101;
  return wait_for_raw_callback(r);
}

static void test_raw_uv_callback_on_an_owned_loop_gets_edeadlk(void **state) {
  mm_loop_t *loop;
  raw_t r;
  memset(&r, 0, sizeof r);
  arm_t a = { NULL, &r };
  mm_coro_t *armer;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  a.loop = loop;
  assert_mm_ok(mm_spawn(loop, wait_for_raw_callback, &r, &r.joinable));
  assert_mm_ok(mm_spawn(loop, arm_and_wait, &a, &armer));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&r.fired), 1);
  assert_status(r.sleep_result, -EDEADLK);
  assert_status(r.join_result, -EDEADLK);
  assert_status(r.yield_result, -EDEADLK);
  assert_true(r.current_was_null);
  assert_status(mm_join(armer), 7);
  assert_status(mm_join(r.joinable), 7);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Two loops -------------------------------------------------------- */

static void *run_loop_thread(void *arg) {
  return (void *)(intptr_t)mm_loop_run(arg);
}

static void test_two_loops_run_on_two_threads_independently(void **state) {
  mm_loop_t *loop[2];
  ran_t r[2][4];
  pthread_t t[2];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 2; i++) {
    assert_mm_ok(mm_loop_new(&loop[i], NULL));
    for (int j = 0; j < 4; j++)
      assert_mm_ok(mm_spawn(loop[i], sleep_then_mark, &r[i][j], NULL));
  }
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, run_loop_thread, loop[i]),
                     0);
  for (int i = 0; i < 2; i++) {
    void *rc;
    assert_int_equal(pthread_join(t[i], &rc), 0);
    assert_mm_ok((int)(intptr_t)rc);
  }
  for (int i = 0; i < 2; i++) {
    for (int j = 0; j < 4; j++) {
      assert_int_equal(atomic_load(&r[i][j].ran), 1);
      assert_true(pthread_equal(r[i][j].thread, t[i]));
    }
    assert_mm_ok(mm_loop_free(loop[i]));
  }
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_loop_new_and_free_without_coroutines),
    mm_test(test_loop_uv_returns_the_loops_uv_loop),
    mm_test(test_many_loops_can_be_created_started_and_freed),
    mm_test(test_loop_run_with_nothing_to_do_returns_at_once),
    mm_test(test_loop_run_returns_when_no_coroutine_is_left),
    mm_test(test_loop_run_can_be_called_again_after_more_spawns),
    mm_test(test_loop_run_from_a_coroutine_returns_edeadlk),
    mm_test(test_loop_start_runs_coroutines_on_a_background_thread),
    mm_test(test_loop_run_or_start_while_started_returns_ebusy),
    mm_test(test_started_loop_keeps_running_when_idle),
    mm_test(test_loop_stop_from_a_coroutine_cancels_live_coroutines),
    mm_test(test_loop_stop_of_a_started_loop_cancels_live_coroutines),
    mm_test(test_loop_free_cancels_a_sleeping_coroutine_quickly),
    mm_test(test_loop_free_with_100_live_coroutines_cancels_them_all),
    mm_test(test_loop_free_of_a_borrowed_loop_finishes_its_live_coroutines),
    mm_test(test_loop_free_never_runs_coroutines_that_never_started),
    mm_test(test_loop_free_from_inside_a_coroutine_returns_ebusy),
    mm_test(test_loop_free_from_inside_a_started_loops_coroutine_returns_ebusy),
    mm_test(test_loop_free_reports_a_finished_coroutine_never_joined),
    mm_test(test_loop_free_is_silent_when_every_coroutine_was_joined),
    mm_test(test_loop_from_uv_runs_coroutines_under_uv_run),
    mm_test(test_loop_run_on_a_borrowed_loop_returns_einval),
    mm_test(test_raw_uv_callback_on_a_borrowed_loop_gets_edeadlk),
    mm_test(test_raw_uv_callback_on_an_owned_loop_gets_edeadlk),
    mm_test(test_two_loops_run_on_two_threads_independently),
  };
  return mm_run_tests(tests);
}
