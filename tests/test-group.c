/* Groups: children on the group's loop, a colour-blind wait for all of
 * them, the first failure cancelling the others, cancellation from any
 * thread and of the waiter, and bad input.
 */
#include "helpers.h"

#include <pthread.h>

static mm_loop_t *started_loop(void) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  return loop;
}

/* ---- Children ----------------------------------------------------------- */

typedef struct {
  atomic_int ran;
  atomic_int cancelled;       /* children that saw -ECANCELED */
  mm_group_t *g;
  int spawn_results;          /* sum of nested spawn results */
} tally_t;

static int succeed(void *arg) {
  tally_t *t = arg;
  atomic_fetch_add(&t->ran, 1);
  return 0;
}

static int sleep_long(void *arg) {
  tally_t *t = arg;
  atomic_fetch_add(&t->ran, 1);
  int r = mm_sleep(60000);
  if (r == -ECANCELED)
    atomic_fetch_add(&t->cancelled, 1);
  return r;
}

static int fail_42(void *arg) {
  tally_t *t = arg;
  atomic_fetch_add(&t->ran, 1);
  return -42;
}

static int fail_7(void *arg) {
  tally_t *t = arg;
  atomic_fetch_add(&t->ran, 1);
  return 7;
}

/* A child that spawns three siblings into its own group. */
static int spawn_siblings(void *arg) {
  tally_t *t = arg;
  atomic_fetch_add(&t->ran, 1);
  for (int i = 0; i < 3; i++)
    t->spawn_results += mm_group_spawn(t->g, succeed, t);
  return 0;
}


/* ---- Bad input ---------------------------------------------------------- */

static void test_group_calls_with_bad_arguments_return_einval(void **state) {
  mm_loop_t *loop;
  mm_group_t *g = (mm_group_t *) &g;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_err(mm_group_new(NULL, &g), -EINVAL);
  assert_null(g);
  assert_mm_err(mm_group_new(loop, NULL), -EINVAL);
  assert_mm_err(mm_group_spawn(NULL, succeed, NULL), -EINVAL);
  assert_mm_err(mm_group_cancel(NULL), -EINVAL);
  assert_mm_err(mm_group_wait(NULL), -EINVAL);
  assert_mm_ok(mm_group_new(loop, &g));
  assert_mm_err(mm_group_spawn(g, NULL, NULL), -EINVAL);
  assert_mm_ok(mm_group_wait(g));          /* no child: 0 at once */
  assert_mm_ok(mm_loop_free(loop));
}

static void test_group_new_on_a_stopped_loop_returns_eshutdown(
    void **state) {
  mm_loop_t *loop = started_loop();
  mm_group_t *g;
  assert_mm_ok(mm_loop_stop(loop));
  assert_mm_err(mm_group_new(loop, &g), -ESHUTDOWN);
  assert_null(g);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Waiting ------------------------------------------------------------ */

static void test_group_wait_on_a_thread_waits_for_every_child(void **state) {
  mm_loop_t *loop = started_loop();
  for (int round = 0; round < 20; round++) {
    tally_t t;
    memset(&t, 0, sizeof t);
    assert_mm_ok(mm_group_new(loop, &t.g));
    for (int i = 0; i < 10; i++)
      assert_mm_ok(mm_group_spawn(t.g, succeed, &t));
    assert_mm_ok(mm_group_spawn(t.g, spawn_siblings, &t));
    assert_mm_ok(mm_group_wait(t.g));
    assert_int_equal(atomic_load(&t.ran), 14);   /* 10 + 1 + 3 */
    assert_int_equal(t.spawn_results, 0);
  }
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  tally_t t;
  mm_loop_t *loop;
  int result;
} in_coro_t;

static int wait_in_coroutine(void *arg) {
  in_coro_t *c = arg;
  int r = mm_group_new(c->loop, &c->t.g);
  if (r != 0)
    return r;
  for (int i = 0; i < 5; i++)
    mm_group_spawn(c->t.g, succeed, &c->t);
  mm_group_spawn(c->t.g, spawn_siblings, &c->t);
  c->result = mm_group_wait(c->t.g);
  return 0;
}

static void test_group_wait_in_a_coroutine_waits_for_every_child(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  in_coro_t c;
  memset(&c, 0, sizeof c);
  c.loop = loop;
  mm_test_run_one(loop, wait_in_coroutine, &c);
  assert_mm_ok(c.result);
  assert_int_equal(atomic_load(&c.t.ran), 9);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Failure and cancellation ------------------------------------------- */

/* Sleepers first, then two failures, all spawned by a coroutine of the
 * group's loop (they start once it waits, in spawn order): the first
 * failure is the group's; it cancels the sleepers, and the second failing
 * child, cancelled before it started, never runs. */
static int fail_among_sleepers(void *arg) {
  in_coro_t *c = arg;
  int r = mm_group_new(c->loop, &c->t.g);
  for (int i = 0; i < 4 && r == 0; i++)
    r = mm_group_spawn(c->t.g, sleep_long, &c->t);
  if (r == 0)
    r = mm_group_spawn(c->t.g, fail_42, &c->t);
  if (r == 0)
    r = mm_group_spawn(c->t.g, fail_7, &c->t);
  if (r != 0)
    return r;
  c->result = mm_group_wait(c->t.g);
  return 0;
}

static void test_group_first_failure_cancels_the_others_and_is_returned(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  in_coro_t c;
  memset(&c, 0, sizeof c);
  c.loop = loop;
  mm_test_run_one(loop, fail_among_sleepers, &c);
  assert_status(c.result, -42);
  assert_int_equal(atomic_load(&c.t.ran), 5);
  assert_int_equal(atomic_load(&c.t.cancelled), 4);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_group_cancel_from_a_thread_ends_it_without_failure(
    void **state) {
  mm_loop_t *loop = started_loop();
  tally_t t;
  memset(&t, 0, sizeof t);
  assert_mm_ok(mm_group_new(loop, &t.g));
  for (int i = 0; i < 4; i++)
    assert_mm_ok(mm_group_spawn(t.g, sleep_long, &t));
  assert_mm_ok(mm_group_cancel(t.g));
  assert_mm_err(mm_group_spawn(t.g, succeed, &t), -ECANCELED);
  assert_mm_ok(mm_group_cancel(t.g));      /* again: nothing more */
  assert_mm_ok(mm_group_wait(t.g));        /* cancelled is not failed */
  /* Each sleeper that started was cancelled in its sleep; the others
   * never ran. */
  assert_int_equal(atomic_load(&t.ran), atomic_load(&t.cancelled));
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  tally_t t;
  mm_coro_t *waiter;
  int result;
} waiter_t;

static int waiting_coroutine(void *arg) {
  waiter_t *w = arg;
  for (int i = 0; i < 3; i++)
    mm_group_spawn(w->t.g, sleep_long, &w->t);
  w->result = mm_group_wait(w->t.g);
  return 0;
}

/* Runs once the waiter and the sleepers have parked (one loop). */
static int cancel_the_waiter(void *arg) {
  waiter_t *w = arg;
  while (atomic_load(&w->t.ran) < 3)
    if (mm_yield() != 0)
      return -1;
  return mm_cancel(w->waiter);
}

static void test_group_waiter_cancelled_cancels_the_group(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  waiter_t w;
  memset(&w, 0, sizeof w);
  assert_mm_ok(mm_group_new(loop, &w.t.g));
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, waiting_coroutine, &w, &w.waiter));
  assert_mm_ok(mm_spawn(loop, cancel_the_waiter, &w, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(w.waiter));
  assert_mm_ok(mm_join(k));
  assert_status(w.result, -ECANCELED);
  assert_int_equal(atomic_load(&w.t.cancelled), 3);
  assert_mm_ok(mm_loop_free(loop));
}

/* Many rounds from a plain thread: children that end at different times,
 * some failing, a cancel from another thread racing them.  Whatever the
 * order: the wait returns (every child has ended), with 0 or the status
 * of a child that failed. */
static int fail_after_yields(void *arg) {
  tally_t *t = arg;
  int n = atomic_fetch_add(&t->ran, 1);
  for (int i = 0; i < n % 5; i++)
    if (mm_yield() != 0)
      return -ECANCELED;
  return n % 7 == 3 ? -(100 + n) : 0;
}

typedef struct {
  mm_group_t *g;
  mm_test_latch_t go;
} racer_t;

static void *cancel_racer(void *arg) {
  racer_t *r = arg;
  mm_test_latch_wait(&r->go, 1);
  return (void *) (intptr_t) mm_group_cancel(r->g);
}

static void test_group_failures_and_cancels_racing_end_every_child(
    void **state) {
  mm_loop_t *loop = started_loop();
  for (int round = 0; round < MM_TEST_SCALE(300, 60); round++) {
    tally_t t;
    memset(&t, 0, sizeof t);
    assert_mm_ok(mm_group_new(loop, &t.g));
    racer_t r = { .g = t.g };
    mm_test_latch_init(&r.go);
    pthread_t th;
    bool racing = round % 2 == 0;
    if (racing)
      assert_int_equal(pthread_create(&th, NULL, cancel_racer, &r), 0);
    int spawned = 0;
    for (int i = 0; i < 12; i++) {
      if (i == 6)
        mm_test_latch_add(&r.go, 1);
      int s = mm_group_spawn(t.g, fail_after_yields, &t);
      if (s == 0)
        spawned++;
      else
        assert_mm_err(s, -ECANCELED);
    }
    mm_test_latch_add(&r.go, 1);
    /* The cancel races the children, not the wait: the group is gone
     * once the wait returns. */
    if (racing) {
      void *rv;
      pthread_join(th, &rv);
      assert_mm_ok((int) (intptr_t) rv);
    }
    int status = mm_group_wait(t.g);
    /* A child cancelled before it started never ran. */
    assert_true(atomic_load(&t.ran) <= spawned);
    if (status != 0 && (status > -100 || status <= -100 - 12))
      fail_msg("round %d: the wait returned %d", round, status);
    mm_test_latch_destroy(&r.go);
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Where it may be called --------------------------------------------- */

typedef struct {
  mm_group_t *g;
  int wait;
} raw_t;

static int wait_for_own_group(void *arg) {
  raw_t *r = arg;
  r->wait = mm_group_wait(r->g);
  return 0;
}

/* Issue 8, instance 6: once the wait has begun, only the group's own
 * children may spawn into it; anyone else gets -EBUSY instead of racing
 * the wait's free. */
typedef struct {
  mm_group_t *g;
  mm_test_latch_t release;
  int sibling;                /* the child's own spawn during the wait */
  int wait_result;
} busy_t;

static int held_child(void *arg) {
  busy_t *b = arg;
  mm_test_latch_wait(&b->release, 1);     /* a plain wait: holds a thread */
  return 0;
}

static int quick_child(void *arg) {
  return 0;
}

static int spawning_child(void *arg) {
  busy_t *b = arg;
  int r = mm_run_sync(held_child, b);
  b->sibling = mm_group_spawn(b->g, quick_child, NULL);
  return r;
}

static void *wait_group(void *arg) {
  busy_t *b = arg;
  b->wait_result = mm_group_wait(b->g);
  return NULL;
}

static void test_group_spawn_from_outside_once_the_wait_began_returns_ebusy(
    void **state) {
  mm_loop_t *loop = started_loop();
  busy_t b;
  memset(&b, 0, sizeof b);
  mm_test_latch_init(&b.release);
  assert_mm_ok(mm_group_new(loop, &b.g));
  assert_mm_ok(mm_group_spawn(b.g, spawning_child, &b));
  pthread_t w;
  assert_int_equal(pthread_create(&w, NULL, wait_group, &b), 0);
  int r, tries = 0;
  while ((r = mm_group_spawn(b.g, quick_child, NULL)) == 0 &&
         ++tries < 100000)
    sched_yield();
  assert_mm_err(r, -EBUSY);
  mm_test_latch_add(&b.release, 1);
  assert_int_equal(pthread_join(w, NULL), 0);
  assert_mm_ok(b.wait_result);
  assert_mm_ok(b.sibling);                 /* a child still may */
  mm_test_latch_destroy(&b.release);
  assert_mm_ok(mm_loop_free(loop));
}

/* A grandchild waiting for its own group: its parent, a child of the
 * group, waits for it, so the wait would wait for itself. */
typedef struct {
  mm_loop_t *loop;
  mm_group_t *g;
  int grandchild_wait;
} grand_t;

static int grandchild(void *arg) {
  grand_t *gr = arg;
  gr->grandchild_wait = mm_group_wait(gr->g);
  return 0;
}

static int parent_child(void *arg) {
  grand_t *gr = arg;
  mm_coro_t *c;
  int r = mm_spawn(gr->loop, grandchild, gr, &c);
  return r != 0 ? r : mm_join(c);
}

static void test_group_wait_in_a_grandchild_returns_edeadlk(void **state) {
  grand_t gr;
  memset(&gr, 0, sizeof gr);
  gr.loop = started_loop();
  assert_mm_ok(mm_group_new(gr.loop, &gr.g));
  assert_mm_ok(mm_group_spawn(gr.g, parent_child, &gr));
  assert_mm_ok(mm_group_wait(gr.g));
  assert_status(gr.grandchild_wait, -EDEADLK);
  assert_mm_ok(mm_loop_free(gr.loop));
}

static void test_group_wait_in_its_own_child_returns_edeadlk(void **state) {
  mm_loop_t *loop = started_loop();
  raw_t r;
  memset(&r, 0, sizeof r);
  assert_mm_ok(mm_group_new(loop, &r.g));
  assert_mm_ok(mm_group_spawn(r.g, wait_for_own_group, &r));
  assert_mm_ok(mm_group_wait(r.g));
  assert_mm_err(r.wait, -EDEADLK);
  assert_mm_ok(mm_loop_free(loop));
}

static void wait_from_raw_callback(void *arg) {
  raw_t *r = arg;
  r->wait = mm_group_wait(r->g);
}

static void test_group_wait_from_a_raw_callback_returns_edeadlk(
    void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  raw_t r;
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_ok(mm_group_new(loop, &r.g));
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, wait_from_raw_callback,
                                       &r));
  assert_mm_err(r.wait, -EDEADLK);
  assert_mm_ok(mm_group_wait(r.g));        /* not freed: still usable */
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}


/* mm_group_spawn_ex: a child's name and its own deadline; past it the
 * child fails with -ETIMEDOUT, which cancels its sibling and is the
 * group's status. */
typedef struct {
  char name[32];
  int  sibling_sleep;
} ex_t;

static int record_name_then_sleep(void *arg) {
  ex_t *e = arg;
  snprintf(e->name, sizeof e->name, "%s", mm_coro_name(mm_current()));
  return mm_sleep(600000);
}

static int sibling_sleeps(void *arg) {
  ex_t *e = arg;
  e->sibling_sleep = mm_sleep(600000);
  return 0;
}

static int spawn_with_options_and_wait(void *arg) {
  ex_t *e = arg;
  mm_group_t *g;
  int r = mm_group_new(mm_loop_current(), &g);
  if (r != 0)
    return r;
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = "request-7";
  so.timeout_ms = 5;
  assert_mm_ok(mm_group_spawn_ex(g, record_name_then_sleep, e, &so));
  assert_mm_ok(mm_group_spawn_ex(g, sibling_sleeps, e, NULL));
  return mm_group_wait(g);
}

static void test_group_spawn_ex_names_a_child_and_bounds_it(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  ex_t e = { "", 0 };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, spawn_with_options_and_wait, &e, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), -ETIMEDOUT);
  assert_string_equal(e.name, "request-7");
  assert_status(e.sibling_sleep, -ECANCELED);
  mm_group_t *g;
  assert_mm_ok(mm_group_new(loop, &g));
  assert_mm_err(mm_group_spawn_ex(NULL, sibling_sleeps, &e, NULL), -EINVAL);
  assert_mm_err(mm_group_spawn_ex(g, NULL, &e, NULL), -EINVAL);
  assert_mm_ok(mm_group_wait(g));
  assert_mm_ok(mm_loop_free(loop));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_group_calls_with_bad_arguments_return_einval),
    mm_test(test_group_new_on_a_stopped_loop_returns_eshutdown),
    mm_test(test_group_wait_on_a_thread_waits_for_every_child),
    mm_test(test_group_wait_in_a_coroutine_waits_for_every_child),
    mm_test(test_group_first_failure_cancels_the_others_and_is_returned),
    mm_test(test_group_cancel_from_a_thread_ends_it_without_failure),
    mm_test(test_group_waiter_cancelled_cancels_the_group),
    mm_test(test_group_failures_and_cancels_racing_end_every_child),
    mm_test(test_group_wait_from_a_raw_callback_returns_edeadlk),
    mm_test(test_group_wait_in_its_own_child_returns_edeadlk),
    mm_test(test_group_spawn_from_outside_once_the_wait_began_returns_ebusy),
    mm_test(test_group_wait_in_a_grandchild_returns_edeadlk),
    mm_test(test_group_spawn_ex_names_a_child_and_bounds_it),
  };
  return mm_run_tests(tests);
}
