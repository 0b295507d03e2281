/* mm_deadline_push / mm_deadline_pop: every waiting call of a coroutine
 * (or plain thread) returns -ETIMEDOUT once its earliest deadline has
 * passed, without cancelling it; nesting; a deadline that passes between
 * two waits; pop of a fired deadline; join leaves the child; run_sync is
 * treated as on its own timeout; run_async and group waits cancel what
 * they wait for; await runs on_cancel and goes on; wait_fd and TCP reads
 * leave their fd and connection usable; children do not inherit; plain
 * threads; a thread's channel wait racing a sender; bad input.
 *
 * Timers order events here, never sleeps meant to make a race unlikely:
 * a 5 ms deadline passes before a 60 s sleep ends.
 */
#include "helpers.h"

#include <fcntl.h>
#include <unistd.h>

#define LONG_MS 60000

/* ---- the stack of deadlines ---------------------------------------------- */

static int nest(void *arg) {
  mm_chan_t *ch = arg;
  void *item;
  assert_mm_ok(mm_deadline_push(LONG_MS));
  assert_mm_ok(mm_deadline_push(5));             /* the earliest applies */
  assert_status(mm_sleep(LONG_MS), -ETIMEDOUT);
  /* Passed: every later wait says so at once, until the pop. */
  assert_status(mm_yield(), -ETIMEDOUT);
  assert_status(mm_chan_recv(ch, &item), -ETIMEDOUT);
  assert_status(mm_sleep(1), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);  /* its own had passed */
  /* The outer one still runs: waits work again, nothing was cancelled. */
  assert_false(mm_cancelled());
  assert_mm_ok(mm_yield());
  assert_mm_ok(mm_sleep(1));
  assert_mm_ok(mm_deadline_pop());
  assert_status(mm_deadline_pop(), -EINVAL);     /* no push left */
  /* 0: passed already. */
  assert_mm_ok(mm_deadline_push(0));
  assert_status(mm_yield(), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  /* More than fit inline. */
  for (int i = 0; i < 20; i++)
    assert_mm_ok(mm_deadline_push(LONG_MS - (uint64_t) i));
  assert_mm_ok(mm_deadline_push(1));
  assert_status(mm_sleep(LONG_MS), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  for (int i = 0; i < 20; i++)
    assert_mm_ok(mm_deadline_pop());
  return mm_sleep(1);
}

static void test_deadlines_nest_the_earliest_applies_and_pop_carries_on(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_chan_t *ch;
  assert_mm_ok(mm_chan_new(&ch, 1));
  mm_test_run_one(loop, nest, ch);
  assert_mm_ok(mm_chan_free(ch));
  assert_mm_ok(mm_loop_free(loop));
}

/* Children do not inherit a deadline. */
static int child_sleeps(void *arg) {
  return mm_sleep(20);
}

static int parent_with_deadline(void *arg) {
  assert_mm_ok(mm_deadline_push(1));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(mm_loop_current(), child_sleeps, NULL, &c));
  assert_status(mm_sleep(LONG_MS), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  return mm_join(c);                   /* its sleep was whole: 0 */
}

static void test_spawned_children_do_not_inherit_a_deadline(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_run_one(loop, parent_with_deadline, NULL);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- join leaves the child ------------------------------------------------- */

static int wait_for_item(void *arg) {
  void *item;
  int r = mm_chan_recv(arg, &item);
  return r == 0 ? (int) (intptr_t) item : r;
}

static int join_under_deadline(void *arg) {
  mm_chan_t *ch = arg;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(mm_loop_current(), wait_for_item, ch, &c));
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_join(c), -ETIMEDOUT);        /* the handle is kept */
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  assert_mm_ok(mm_chan_send(ch, (void *) (intptr_t) 7));  /* not cancelled */
  return mm_join(c);
}

static void test_join_under_a_deadline_leaves_the_child_and_its_handle(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_chan_t *ch;
  assert_mm_ok(mm_chan_new(&ch, 1));
  mm_coro_t *h;
  assert_mm_ok(mm_spawn(loop, join_under_deadline, ch, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(mm_join(h), 7);
  assert_mm_ok(mm_chan_free(ch));
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- run_sync, run_async, groups, await ------------------------------------ */

typedef struct {
  mm_test_latch_t gate;     /* fn returns once opened (by on_cancel) */
  mm_test_latch_t started;
  atomic_int      fn_runs, on_cancels, cleanups, cleanup_status;
  int             result, after;
} call_t;

static int gated(void *arg) {
  call_t *c = arg;
  atomic_fetch_add(&c->fn_runs, 1);
  mm_test_latch_add(&c->started, 1);
  mm_test_latch_wait(&c->gate, 1);
  return 5;
}

static void interrupt(void *arg) {
  call_t *c = arg;
  atomic_fetch_add(&c->on_cancels, 1);
  mm_test_latch_add(&c->gate, 1);
}

static void clean(void *arg, int status) {
  call_t *c = arg;
  atomic_store(&c->cleanup_status, status);
  atomic_fetch_add(&c->cleanups, 1);
}

static int call_under_deadline(void *arg) {
  call_t *c = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.on_cancel = interrupt;
  o.cleanup = clean;
  /* Short, but not so short that it passes before the call is made (the
   * holder below keeps it from passing before fn runs). */
  assert_mm_ok(mm_deadline_push(mm_test_under_valgrind() ? 200 : 5));
  c->result = mm_run_sync_ex(gated, c, &o);
  mm_test_latch_add(&c->started, 1);   /* the holder never hangs */
  mm_deadline_pop();
  c->after = mm_yield();
  return 0;
}

/* Lets the call reach the pool, then holds the loop (and its timers)
 * until fn runs: the deadline finds the call running. */
static int hold_until_started(void *arg) {
  call_t *c = arg;
  assert_mm_ok(mm_yield());
  mm_test_latch_wait(&c->started, 1);
  return 0;
}

static void test_run_sync_under_a_deadline_is_on_its_own_timeout(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  call_t c;
  memset(&c, 0, sizeof c);
  mm_test_latch_init(&c.gate);
  mm_test_latch_init(&c.started);
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, call_under_deadline, &c, &a));
  assert_mm_ok(mm_spawn(loop, hold_until_started, &c, &b));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(b));
  assert_status(c.result, -ETIMEDOUT);
  assert_int_equal(atomic_load(&c.on_cancels), 1);
  assert_int_equal(atomic_load(&c.cleanups), 1);
  assert_int_equal(atomic_load(&c.cleanup_status), 5);
  assert_mm_ok(c.after);                   /* the coroutine goes on */
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&c.gate);
  mm_test_latch_destroy(&c.started);
}

/* A call queued behind the only worker: removed at the deadline. */
static int hold_worker(void *arg) {
  return mm_run_sync(gated, arg);
}

static int queued_under_deadline(void *arg) {
  call_t *c = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.cleanup = clean;
  assert_mm_ok(mm_deadline_push(5));
  c->result = mm_run_sync_ex(gated, c, &o);
  mm_deadline_pop();
  return 0;
}

static void test_a_queued_call_under_a_deadline_never_runs(void **state) {
  mm_loop_t *loop = mm_test_loop_new(1);
  call_t holder, c;
  memset(&holder, 0, sizeof holder);
  memset(&c, 0, sizeof c);
  mm_test_latch_init(&holder.gate);
  mm_test_latch_init(&holder.started);
  mm_test_latch_init(&c.gate);
  mm_test_latch_init(&c.started);
  mm_coro_t *h, *q;
  assert_mm_ok(mm_spawn(loop, hold_worker, &holder, &h));
  assert_mm_ok(mm_spawn(loop, queued_under_deadline, &c, &q));
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_join(q));            /* ends at its deadline */
  mm_test_latch_add(&holder.gate, 1);
  assert_int_equal(mm_join(h), 5);
  assert_status(c.result, -ETIMEDOUT);
  assert_int_equal(atomic_load(&c.fn_runs), 0);
  assert_int_equal(atomic_load(&c.cleanups), 1);
  assert_status(atomic_load(&c.cleanup_status), -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
}

/* mm_lane_free under a deadline that passes while the lane drains: the
 * close has begun and cannot be undone, so it finishes and says so (0),
 * never -ETIMEDOUT for a lane that is gone. */
typedef struct {
  mm_loop_t *loop;
  mm_lane_t *lane;
  call_t     c;              /* the lane's call, held by its gate */
  int        free_result;
} lane_close_t;

static int lane_call(void *arg) {
  lane_close_t *t = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = t->lane;
  return mm_run_sync_ex(gated, &t->c, &o);
}

/* Opens the gate long after the 5 ms deadline: timers order it. */
static int open_gate_later(void *arg) {
  lane_close_t *t = arg;
  assert_mm_ok(mm_sleep(500));
  mm_test_latch_add(&t->c.gate, 1);
  return 0;
}

/* Holds the loop (and so the deadline's timer) until a worker runs the
 * close: the deadline finds it running. */
static int hold_until_closing(void *arg) {
  lane_close_t *t = arg;
  mm_stats_t st;
  assert_mm_ok(mm_yield());               /* the close leaves the loop */
  do {
    assert_mm_ok(mm_loop_stats(t->loop, &st));
    sched_yield();
  } while (st.sync_running == 0);
  return 0;
}

static int free_lane_under_deadline(void *arg) {
  lane_close_t *t = arg;
  while (atomic_load(&t->c.fn_runs) == 0)   /* the lane runs its call */
    assert_mm_ok(mm_sleep(1));
  mm_coro_t *d, *h;
  assert_mm_ok(mm_deadline_push(5));
  assert_mm_ok(mm_spawn(t->loop, open_gate_later, t, &d));
  assert_mm_ok(mm_spawn(t->loop, hold_until_closing, t, &h));
  t->free_result = mm_lane_free(t->lane);
  mm_deadline_pop();
  assert_mm_ok(mm_join(d));
  assert_mm_ok(mm_join(h));
  return 0;
}

static void test_lane_free_under_a_deadline_that_passes_while_closing(
    void **state) {
  lane_close_t t;
  memset(&t, 0, sizeof t);
  t.loop = mm_test_loop_new(0);
  mm_test_latch_init(&t.c.gate);
  mm_test_latch_init(&t.c.started);
  assert_mm_ok(mm_lane_new(t.loop, "closing", &t.lane));
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(t.loop, lane_call, &t, &a));
  assert_mm_ok(mm_spawn(t.loop, free_lane_under_deadline, &t, &b));
  assert_mm_ok(mm_loop_run(t.loop));
  assert_int_equal(mm_join(a), 5);
  assert_mm_ok(mm_join(b));
  assert_mm_ok(t.free_result);            /* freed, and told so */
  assert_mm_ok(mm_loop_free(t.loop));
  mm_test_latch_destroy(&t.c.gate);
  mm_test_latch_destroy(&t.c.started);
}

typedef struct {
  bool ran;
  int sleep_result;
  bool cancelled;
} sleeper_t;

static int sleep_long(void *arg) {
  sleeper_t *s = arg;
  s->ran = true;
  s->sleep_result = mm_sleep(LONG_MS);
  s->cancelled = mm_cancelled();
  return 0;
}

typedef struct {
  mm_loop_t *other;
  sleeper_t  s1, s2, s3;
  int        async_result, group_result;
} waits_t;

static int run_async_and_group_under_deadline(void *arg) {
  waits_t *w = arg;
  assert_mm_ok(mm_deadline_push(5));
  w->async_result = mm_run_async(w->other, sleep_long, &w->s1);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  mm_group_t *g;
  assert_mm_ok(mm_group_new(mm_loop_current(), &g));
  assert_mm_ok(mm_group_spawn(g, sleep_long, &w->s2));
  assert_mm_ok(mm_group_spawn(g, sleep_long, &w->s3));
  assert_mm_ok(mm_deadline_push(5));
  w->group_result = mm_group_wait(g);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  return 0;
}

static void test_run_async_and_group_wait_cancel_what_they_wait_for(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  waits_t w;
  memset(&w, 0, sizeof w);
  w.other = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(w.other));
  mm_test_run_one(loop, run_async_and_group_under_deadline, &w);
  assert_status(w.async_result, -ETIMEDOUT);
  assert_status(w.group_result, -ETIMEDOUT);
  /* Each was cancelled and waited for: it ended in its sleep, or (a slow
   * machine: 5 ms) was cancelled before its first step and never ran. */
  sleeper_t *all[] = { &w.s1, &w.s2, &w.s3 };
  for (int i = 0; i < 3; i++)
    if (all[i]->ran)
      assert_status(all[i]->sleep_result, -ECANCELED);
  assert_mm_ok(mm_loop_free(w.other));
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  mm_coro_t *self;
  int on_cancels, result, after;
} awaiting_t;

static void wake_on_cancel(void *arg) {
  awaiting_t *a = arg;
  a->on_cancels++;
  assert_mm_ok(mm_wake(a->self, -EINTR));
}

static int await_under_deadline(void *arg) {
  awaiting_t *a = arg;
  a->self = mm_current();
  assert_mm_ok(mm_deadline_push(5));
  a->result = mm_await(wake_on_cancel, a);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  a->after = mm_yield();
  return 0;
}

static void test_await_under_a_deadline_runs_on_cancel_and_waits_for_wake(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  awaiting_t a = { 0 };
  mm_test_run_one(loop, await_under_deadline, &a);
  assert_int_equal(a.on_cancels, 1);
  assert_status(a.result, -EINTR);            /* the wake's status */
  assert_mm_ok(a.after);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- file descriptors and TCP stay usable ------------------------------- */

static int fd_and_tcp_under_deadline(void *arg) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_wait_fd(fds[0], MM_READABLE, 0), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  assert_int_equal(write(fds[1], "x", 1), 1);
  assert_int_equal(mm_wait_fd(fds[0], MM_READABLE, 0), MM_READABLE);
  close(fds[0]);
  close(fds[1]);

  mm_tcp_t *srv, *client, *conn;
  assert_mm_ok(mm_tcp_listen(&srv, "127.0.0.1", 0, 0));
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_tcp_accept(srv, &conn), -ETIMEDOUT);   /* nobody came */
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  assert_mm_ok(mm_tcp_connect(&client, "127.0.0.1", mm_tcp_port(srv)));
  assert_mm_ok(mm_tcp_accept(srv, &conn));                /* still usable */
  char buf[8];
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_tcp_read(conn, buf, sizeof buf), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  assert_mm_ok(mm_tcp_write(client, "hi", 2));
  assert_int_equal(mm_tcp_read(conn, buf, sizeof buf), 2); /* usable */
  assert_memory_equal(buf, "hi", 2);
  mm_tcp_close(conn);
  mm_tcp_close(client);
  mm_tcp_close(srv);
  return 0;
}

static void test_wait_fd_and_tcp_reads_time_out_and_stay_usable(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_run_one(loop, fd_and_tcp_under_deadline, NULL);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- plain threads -------------------------------------------------------- */

static int never_runs(void *arg) {
  atomic_fetch_add((atomic_int *) arg, 1);
  return 0;
}

static void test_a_plain_thread_s_waits_honour_its_deadline(void **state) {
  mm_chan_t *ch;
  assert_mm_ok(mm_chan_new(&ch, 1));
  void *item;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  mm_loop_t *idle = mm_test_loop_new(0);           /* never started */
  atomic_int runs = 0;

  assert_mm_ok(mm_deadline_push(LONG_MS));
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_sleep(LONG_MS), -ETIMEDOUT);
  assert_status(mm_chan_recv(ch, &item), -ETIMEDOUT);
  assert_status(mm_wait_fd(fds[0], MM_READABLE, 0), -ETIMEDOUT);
  assert_status(mm_run_async(idle, never_runs, &runs), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  assert_mm_ok(mm_chan_send(ch, &runs));   /* room: works */
  assert_mm_ok(mm_chan_recv(ch, &item));
  assert_mm_ok(mm_sleep(1));
  assert_mm_ok(mm_deadline_pop());
  assert_status(mm_deadline_pop(), -EINVAL);

  assert_mm_ok(mm_loop_free(idle));
  assert_int_equal(atomic_load(&runs), 0);
  close(fds[0]);
  close(fds[1]);
  assert_mm_ok(mm_chan_free(ch));
}

/* A plain thread's join under a deadline keeps the handle; its group
 * wait cancels the children and waits for them. */
static void test_a_plain_thread_s_join_and_group_wait_honour_its_deadline(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(loop));
  mm_chan_t *ch;
  assert_mm_ok(mm_chan_new(&ch, 1));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, wait_for_item, ch, &c));
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_join(c), -ETIMEDOUT);          /* handle kept */
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  assert_mm_ok(mm_chan_send(ch, (void *) (intptr_t) 9));
  assert_int_equal(mm_join(c), 9);

  sleeper_t s1, s2;
  memset(&s1, 0, sizeof s1);
  memset(&s2, 0, sizeof s2);
  mm_group_t *g;
  assert_mm_ok(mm_group_new(loop, &g));
  assert_mm_ok(mm_group_spawn(g, sleep_long, &s1));
  assert_mm_ok(mm_group_spawn(g, sleep_long, &s2));
  assert_mm_ok(mm_deadline_push(5));
  assert_status(mm_group_wait(g), -ETIMEDOUT);
  assert_status(mm_deadline_pop(), -ETIMEDOUT);
  if (s1.ran)
    assert_status(s1.sleep_result, -ECANCELED);
  if (s2.ran)
    assert_status(s2.sleep_result, -ECANCELED);
  assert_mm_ok(mm_chan_free(ch));
  assert_mm_ok(mm_loop_free(loop));
}

/* A thread receives under 1 ms deadlines, again and again, while another
 * sends N items: each item arrives exactly once, in order, whichever of
 * the deadline and the transfer wins each time. */
typedef struct {
  mm_chan_t *ch;
  int n;
} feed_t;

static void *feed(void *arg) {
  feed_t *f = arg;
  unsigned seed = 7;
  for (int i = 1; i <= f->n; i++) {
    /* Busy for 0..2 ms: sends land before, at and after the receiver's
     * 1 ms deadlines. */
    seed = seed * 1103515245u + 12345u;
    uint64_t until = mm_test_now_ms() + (seed >> 16) % 3;
    while (mm_test_now_ms() < until)
      ;
    assert_mm_ok(mm_chan_send(f->ch, (void *) (intptr_t) i));
  }
  return NULL;
}

static void test_a_thread_s_channel_deadline_racing_a_sender_loses_nothing(
    void **state) {
  feed_t f = { .n = mm_test_under_valgrind() ? 100 : 1500 };
  assert_mm_ok(mm_chan_new(&f.ch, 1));
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, feed, &f), 0);
  int next = 1, timeouts = 0;
  while (next <= f.n) {
    void *item;
    /* Mostly 1 ms; now and then one passed already (it still takes an
     * item that is there). */
    assert_mm_ok(mm_deadline_push(next % 50 == 0 && timeouts % 2 == 0 ? 0
                                                                    : 1));
    int r = mm_chan_recv(f.ch, &item);
    mm_deadline_pop();
    if (r == -ETIMEDOUT) {
      timeouts++;
      continue;
    }
    assert_mm_ok(r);
    assert_int_equal((intptr_t) item, next);
    next++;
  }
  assert_int_equal(pthread_join(t, NULL), 0);
  print_message("%d items, %d timeouts\n", f.n, timeouts);
  assert_mm_ok(mm_chan_free(f.ch));
}

/* ---- bad input -------------------------------------------------------------- */

typedef struct {
  int push, pop;
} raw_t;

static void deadline_in_raw_callback(void *arg) {
  raw_t *r = arg;
  r->push = mm_deadline_push(5);
  r->pop = mm_deadline_pop();
}

static void test_deadlines_on_a_loop_thread_outside_coroutines_edeadlk(
    void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  raw_t r = { 0, 0 };
  assert_int_equal(mm_test_in_raw_callback(&uv, loop,
                                           deadline_in_raw_callback, &r), 0);
  assert_status(r.push, -EDEADLK);
  assert_status(r.pop, -EDEADLK);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
  assert_status(mm_deadline_pop(), -EINVAL);   /* a plain thread, none */
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_deadlines_nest_the_earliest_applies_and_pop_carries_on),
    mm_test(test_spawned_children_do_not_inherit_a_deadline),
    mm_test(test_join_under_a_deadline_leaves_the_child_and_its_handle),
    mm_test(test_run_sync_under_a_deadline_is_on_its_own_timeout),
    mm_test(test_a_queued_call_under_a_deadline_never_runs),
    mm_test(test_lane_free_under_a_deadline_that_passes_while_closing),
    mm_test(test_run_async_and_group_wait_cancel_what_they_wait_for),
    mm_test(test_await_under_a_deadline_runs_on_cancel_and_waits_for_wake),
    mm_test(test_wait_fd_and_tcp_reads_time_out_and_stay_usable),
    mm_test(test_a_plain_thread_s_waits_honour_its_deadline),
    mm_test(test_a_plain_thread_s_join_and_group_wait_honour_its_deadline),
    mm_test(test_a_thread_s_channel_deadline_racing_a_sender_loses_nothing),
    mm_test(test_deadlines_on_a_loop_thread_outside_coroutines_edeadlk),
  };
  return mm_run_tests(tests);
}
