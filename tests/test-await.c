/* mm_await / mm_wake: the status is never lost (a wake from another
 * thread, many rounds racing the await; a wake before the await is kept;
 * a second wake is -EBUSY; a kept wake never completes another wait);
 * cancellation runs on_cancel once and the wait goes on until the wake;
 * wrappers of uv_timer, uv_fs_stat and uv_getaddrinfo, with and without
 * cancellation; bad input; a wake left when the coroutine ends is
 * dropped; mm_loop_free of a loop with a coroutine in mm_await.
 */
#include "helpers.h"

/* ---- the status is never lost ------------------------------------------ */

typedef struct {
  mm_coro_t      *coro;
  mm_test_latch_t ready;     /* the coroutine is about to await */
  int             rounds;
  int             mismatches;
} pingpong_t;

static int await_each_round(void *arg) {
  pingpong_t *p = arg;
  for (int i = 0; i < p->rounds; i++) {
    mm_test_latch_add(&p->ready, 1);
    int r = mm_await(NULL, NULL);
    if (r != i)
      p->mismatches++;
  }
  return 0;
}

static void *wake_each_round(void *arg) {
  pingpong_t *p = arg;
  for (int i = 0; i < p->rounds; i++) {
    mm_test_latch_wait(&p->ready, i + 1);
    assert_mm_ok(mm_wake(p->coro, i));
  }
  return NULL;
}

/* The thread's wake lands before, while or after the coroutine parks. */
static void test_wakes_from_another_thread_are_each_returned_once(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  pingpong_t p = { .rounds = mm_test_under_valgrind() ? 300 : 5000 };
  mm_test_latch_init(&p.ready);
  assert_mm_ok(mm_spawn(loop, await_each_round, &p, &p.coro));
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, wake_each_round, &p), 0);
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_mm_ok(mm_join(p.coro));
  assert_int_equal(p.mismatches, 0);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&p.ready);
}

static int wake_self_then_await(void *arg) {
  int *second = arg;
  assert_mm_ok(mm_wake(mm_current(), 7));
  *second = mm_wake(mm_current(), 8);    /* one is pending: refused */
  assert_mm_ok(mm_yield());
  return mm_await(NULL, NULL);
}

static void test_a_wake_before_the_await_is_kept_and_a_second_is_ebusy(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  int second = 0;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, wake_self_then_await, &second, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(mm_join(c), 7);
  assert_status(second, -EBUSY);
  assert_mm_ok(mm_loop_free(loop));
}

/* A wake for the next await, sent while the coroutine sleeps, leaves the
 * sleep alone. */
typedef struct {
  mm_coro_t *sleeper;
  int        slept, awaited;
} kept_t;

static int sleep_then_await(void *arg) {
  kept_t *k = arg;
  k->slept = mm_sleep(20);
  k->awaited = mm_await(NULL, NULL);
  return 0;
}

static int wake_the_sleeper(void *arg) {
  kept_t *k = arg;
  return mm_wake(k->sleeper, 5);
}

static void test_a_kept_wake_never_completes_another_wait(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  kept_t k = { 0 };
  mm_coro_t *w;
  assert_mm_ok(mm_spawn(loop, sleep_then_await, &k, &k.sleeper));
  assert_mm_ok(mm_spawn(loop, wake_the_sleeper, &k, &w));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(w));
  assert_mm_ok(mm_join(k.sleeper));
  assert_mm_ok(k.slept);
  assert_int_equal(k.awaited, 5);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- cancellation -------------------------------------------------------- */

typedef struct {
  mm_coro_t *coro;
  pthread_t  loop_thread;
  int        on_cancels;
  bool       on_loop;
  bool       wake_in_on_cancel;
  int        result, cancelled_after, next_yield;
} cancel_t;

static void stop_it(void *arg) {
  cancel_t *c = arg;
  c->on_cancels++;
  c->on_loop = pthread_equal(pthread_self(), c->loop_thread);
  if (c->wake_in_on_cancel)
    assert_mm_ok(mm_wake(c->coro, -EINTR));  /* as the callback would */
}

static int await_cancellable(void *arg) {
  cancel_t *c = arg;
  c->loop_thread = pthread_self();
  c->result = mm_await(stop_it, c);
  c->cancelled_after = mm_cancelled();
  c->next_yield = mm_yield();
  return 0;
}

static int cancel_then_wake(void *arg) {
  cancel_t *c = arg;
  assert_mm_ok(mm_cancel(c->coro));
  /* on_cancel ran; the await still waits for its wake. */
  assert_int_equal(c->on_cancels, 1);
  assert_mm_ok(mm_yield());
  assert_int_equal(c->result, 0);
  assert_mm_ok(mm_cancel(c->coro));          /* twice: still once */
  return mm_wake(c->coro, 99);
}

static void test_cancel_runs_on_cancel_once_and_the_wait_goes_on(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  cancel_t c = { 0 };
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, await_cancellable, &c, &c.coro));
  assert_mm_ok(mm_spawn(loop, cancel_then_wake, &c, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(k));
  assert_mm_ok(mm_join(c.coro));                /* fn's own value */
  assert_int_equal(c.on_cancels, 1);
  assert_true(c.on_loop);
  assert_int_equal(c.result, 99);               /* the wake's status */
  assert_true(c.cancelled_after);
  assert_status(c.next_yield, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
}

static int cancel_self_then_await(void *arg) {
  cancel_t *c = arg;
  assert_mm_ok(mm_cancel(mm_current()));
  return await_cancellable(c);
}

static void test_a_pending_cancellation_runs_on_cancel_at_once(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  cancel_t c = { .wake_in_on_cancel = true };
  assert_mm_ok(mm_spawn(loop, cancel_self_then_await, &c, &c.coro));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c.coro));
  assert_int_equal(c.on_cancels, 1);
  assert_status(c.result, -EINTR);
  assert_status(c.next_yield, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
}

static int await_under_spawn_deadline(void *arg) {
  cancel_t *c = arg;
  c->coro = mm_current();
  return await_cancellable(c);
}

static void test_a_spawn_deadline_runs_on_cancel_and_the_wake_ends_it(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  cancel_t c = { .wake_in_on_cancel = true };
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.timeout_ms = 5;
  mm_coro_t *h;
  assert_mm_ok(mm_spawn_ex(loop, await_under_spawn_deadline, &c, &so, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(h), -ETIMEDOUT);
  assert_int_equal(c.on_cancels, 1);
  assert_status(c.result, -EINTR);
  assert_status(c.next_yield, -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
}

/* mm_loop_free cancels: on_cancel wakes, the coroutine ends, free
 * returns. */
typedef struct {
  cancel_t        c;
  mm_test_latch_t awaiting;
} free_t;

static int say_then_await(void *arg) {
  free_t *f = arg;
  /* The free's cancel reaches the loop's thread only once this
   * coroutine has parked in mm_await. */
  mm_test_latch_add(&f->awaiting, 1);
  return await_cancellable(&f->c);
}

static void test_loop_free_ends_an_await_through_on_cancel(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(loop));
  free_t f = { .c = { .wake_in_on_cancel = true } };
  cancel_t *cp = &f.c;
  mm_test_latch_init(&f.awaiting);
  assert_mm_ok(mm_spawn(loop, say_then_await, &f, &f.c.coro));
  assert_mm_ok(mm_detach(f.c.coro));
  mm_test_latch_wait(&f.awaiting, 1);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&f.awaiting);
  cancel_t c = *cp;
  assert_int_equal(c.on_cancels, 1);
  assert_status(c.result, -EINTR);
}

/* ---- wrapping libuv ------------------------------------------------------- */

/* uv_timer */
typedef struct {
  uv_timer_t timer;
  mm_coro_t *coro;
} sleep_op_t;

static void timer_fired(uv_timer_t *t) {
  sleep_op_t *op = t->data;
  mm_wake(op->coro, 0);
}

static void timer_closed(uv_handle_t *h) {
  sleep_op_t *op = h->data;
  mm_wake(op->coro, 0);
}

static void stop_timer(void *arg) {
  sleep_op_t *op = arg;
  uv_timer_stop(&op->timer);
  mm_wake(op->coro, -ECANCELED);   /* stopped: the callback never comes */
}

/* A sleep built from a uv_timer and mm_await. */
static int timer_sleep(uint64_t ms) {
  sleep_op_t op;
  op.coro = mm_current();
  uv_timer_init(mm_loop_uv(mm_loop_current()), &op.timer);
  op.timer.data = &op;
  uv_timer_start(&op.timer, timer_fired, ms, 0);
  int r = mm_await(stop_timer, &op);
  /* The handle is libuv's until its close callback: wait for that too
   * (no on_cancel: a close always calls back). */
  uv_close((uv_handle_t *) &op.timer, timer_closed);
  mm_await(NULL, NULL);
  return r;
}

static int sleep_with_uv_timer(void *arg) {
  return timer_sleep(*(uint64_t *) arg);
}

static void test_a_uv_timer_wrapped_with_await_and_cancelled(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  uint64_t short_ms = 1, long_ms = 600000;
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, sleep_with_uv_timer, &short_ms, &a));
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.timeout_ms = 5;              /* cancels the long one */
  assert_mm_ok(mm_spawn_ex(loop, sleep_with_uv_timer, &long_ms, &so, &b));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_status(mm_join(b), -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
}

/* uv_fs_stat */
typedef struct {
  uv_fs_t    req;
  mm_coro_t *coro;
} stat_op_t;

static void stat_done(uv_fs_t *req) {
  stat_op_t *op = req->data;
  mm_wake(op->coro, (int) req->result);
}

static void cancel_stat(void *arg) {
  stat_op_t *op = arg;
  uv_cancel((uv_req_t *) &op->req);  /* if still queued, done gets
                                        UV_ECANCELED; else it finishes */
}

static int stat_path(void *arg) {
  stat_op_t op;
  op.coro = mm_current();
  op.req.data = &op;
  int r = uv_fs_stat(mm_loop_uv(mm_loop_current()), &op.req, arg, stat_done);
  if (r == 0)
    r = mm_await(cancel_stat, &op);
  uv_fs_req_cleanup(&op.req);
  return r;
}

static int cancel_self_then_stat(void *arg) {
  assert_mm_ok(mm_cancel(mm_current()));
  int r = stat_path(arg);
  return r == 0 || r == UV_ECANCELED ? 0 : r;   /* either is an answer */
}

static void test_uv_fs_stat_wrapped_with_await(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *a, *b, *c;
  assert_mm_ok(mm_spawn(loop, stat_path, "/", &a));
  assert_mm_ok(mm_spawn(loop, stat_path, "/no/such/path", &b));
  assert_mm_ok(mm_spawn(loop, cancel_self_then_stat, "/", &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_status(mm_join(b), UV_ENOENT);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}

/* uv_getaddrinfo */
typedef struct {
  uv_getaddrinfo_t req;
  mm_coro_t       *coro;
  struct addrinfo *res;
} resolve_op_t;

static void resolved(uv_getaddrinfo_t *req, int status,
                     struct addrinfo *res) {
  resolve_op_t *op = req->data;
  op->res = res;
  mm_wake(op->coro, status);
}

static void cancel_resolve(void *arg) {
  resolve_op_t *op = arg;
  uv_cancel((uv_req_t *) &op->req);
}

static int resolve_localhost(void *arg) {
  resolve_op_t op = { .coro = mm_current() };
  op.req.data = &op;
  int r = uv_getaddrinfo(mm_loop_uv(mm_loop_current()), &op.req, resolved,
                         "localhost", NULL, NULL);
  if (r == 0)
    r = mm_await(cancel_resolve, &op);
  if (r == 0 && op.res == NULL)
    r = -1;
  uv_freeaddrinfo(op.res);
  return r;
}

static void test_uv_getaddrinfo_wrapped_with_await(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_run_one(loop, resolve_localhost, NULL);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- bad input ------------------------------------------------------------ */

static void await_in_raw_callback(void *arg) {
  *(int *) arg = mm_await(NULL, NULL);
}

static int wake_a_stale_handle(void *arg) {
  return mm_wake(arg, 1);
}

static int return_zero(void *arg) {
  return 0;
}

static void test_bad_input_and_wrong_places(void **state) {
  /* A plain thread. */
  assert_status(mm_await(NULL, NULL), -EPERM);
  assert_status(mm_wake(NULL, 0), -EINVAL);
  /* A raw libuv callback of a loop. */
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *borrowed;
  assert_mm_ok(mm_loop_from_uv(&borrowed, &uv, NULL));
  int in_raw = 0;
  assert_int_equal(mm_test_in_raw_callback(&uv, borrowed,
                                           await_in_raw_callback, &in_raw),
                   0);
  assert_status(in_raw, -EDEADLK);
  assert_mm_ok(mm_loop_free(borrowed));
  assert_int_equal(uv_loop_close(&uv), 0);
  /* A stale handle: joined. */
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *gone;
  assert_mm_ok(mm_spawn(loop, return_zero, NULL, &gone));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(gone));
  assert_status(mm_wake(gone, 1), -EINVAL);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, wake_a_stale_handle, gone, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_status(mm_join(c), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

/* A wake left when the coroutine ends is dropped: the next coroutine,
 * which reuses the block, starts with an empty slot. */
static int wake_self_and_end(void *arg) {
  return mm_wake(mm_current(), 3);
}

static int wake_self_twice(void *arg) {
  int first = mm_wake(mm_current(), 4);
  int second = mm_wake(mm_current(), 5);
  int got = mm_await(NULL, NULL);
  return first == 0 && second == -EBUSY && got == 4 ? 0 : -1;
}

static void test_a_wake_left_at_the_end_is_dropped(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  for (int i = 0; i < 10; i++) {
    mm_test_run_one(loop, wake_self_and_end, NULL);
    mm_test_run_one(loop, wake_self_twice, NULL);
  }
  assert_mm_ok(mm_loop_free(loop));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_wakes_from_another_thread_are_each_returned_once),
    mm_test(test_a_wake_before_the_await_is_kept_and_a_second_is_ebusy),
    mm_test(test_a_kept_wake_never_completes_another_wait),
    mm_test(test_cancel_runs_on_cancel_once_and_the_wait_goes_on),
    mm_test(test_a_pending_cancellation_runs_on_cancel_at_once),
    mm_test(test_a_spawn_deadline_runs_on_cancel_and_the_wake_ends_it),
    mm_test(test_loop_free_ends_an_await_through_on_cancel),
    mm_test(test_a_uv_timer_wrapped_with_await_and_cancelled),
    mm_test(test_uv_fs_stat_wrapped_with_await),
    mm_test(test_uv_getaddrinfo_wrapped_with_await),
    mm_test(test_bad_input_and_wrong_places),
    mm_test(test_a_wake_left_at_the_end_is_dropped),
  };
  return mm_run_tests(tests);
}
