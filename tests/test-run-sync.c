/* mm_run_sync and lanes: a call runs on a worker while the loop serves the
 * other coroutines; values and errors pass through; the pool grows to run
 * calls together, stays within pool_max_threads, names its threads and
 * lets idle ones exit; calls on plain threads and nested calls run inline;
 * -EDEADLK, -EINVAL and -ENOTSUP; cancellation and deadlines of queued and
 * running calls, waited for or abandoned; the awaiting coroutine's locals,
 * identity and cancellation seen inside the call; lanes (one thread, one
 * call at a time, in order); many calls at once; workers calling back into
 * the loop; a loop freed with a call still queued.
 *
 * Nothing here orders events with sleeps.  Functions run by workers wait
 * on latches and barriers; coroutines poll atomics with mm_sleep(1) as a
 * tick (bounded by TICK_GUARD), and the scheduler's FIFO order of ready
 * coroutines tells when a call has been queued: a coroutine spawned after
 * the caller runs only once the caller has parked in mm_run_sync.
 */
#define _GNU_SOURCE 1   /* pthread_getname_np */
#include <dirent.h>
#include <sched.h>

#include "helpers.h"

/* mm_sleep(1) ticks a polling coroutine waits before it gives up; the
 * watchdog (30 s) would fire a little later. */
#define TICK_GUARD 20000
/* Milliseconds a worker loops waiting for mm_cancelled() before it gives
 * up and returns GAVE_UP. */
#define CANCEL_GUARD_MS 20000
#define GAVE_UP (-9999)

static mm_loop_t *new_loop_with(unsigned min, unsigned max, unsigned idle_ms) {
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.pool_min_threads = min;
  o.pool_max_threads = max;
  o.pool_idle_ms = idle_ms;
  mm_loop_t *loop = NULL;
  int r = mm_loop_new(&loop, &o);
  if (r != 0)
    fail_msg("mm_loop_new returned %d (%s)", r, mm_strerror(r));
  return loop;
}

static mm_loop_t *new_loop(void) {
  return new_loop_with(0, 0, 0);
}

/* In a coroutine: waits, a tick at a time, until *flag is set.  False if
 * the guard ran out or a suspension failed. */
static bool tick_until(atomic_int *flag) {
  for (int i = 0; i < TICK_GUARD; i++) {
    /* Pairs with the release store of whoever sets the flag. */
    if (atomic_load_explicit(flag, memory_order_acquire))
      return true;
    if (mm_sleep(1) != 0)
      return false;
  }
  return atomic_load_explicit(flag, memory_order_acquire) != 0;
}

static void set_flag(atomic_int *flag) {
  atomic_store_explicit(flag, 1, memory_order_release);
}

/* Threads of this process whose name starts with prefix. */
static int count_threads_named(const char *prefix) {
  DIR *d = opendir("/proc/self/task");
  if (d == NULL)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], comm[32];
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
      continue;   /* the thread exited meanwhile */
    if (fgets(comm, sizeof comm, f) != NULL &&
        strncmp(comm, prefix, strlen(prefix)) == 0)
      n++;
    fclose(f);
  }
  closedir(d);
  return n;
}

/* Polls until count_threads_named(prefix) == want or timeout_ms passed;
 * returns the last count.  Also after a join: a joined thread's task
 * leaves /proc/self/task only just after the join returns. */
static int wait_for_thread_count(const char *prefix, int want,
                                 uint64_t timeout_ms) {
  uint64_t end = mm_test_now_ms() + timeout_ms;
  int n;
  while ((n = count_threads_named(prefix)) != want && mm_test_now_ms() < end) {
    struct timespec ts = { 0, 2 * 1000 * 1000 };
    nanosleep(&ts, NULL);
  }
  return n;
}

static int return_arg(void *arg) {
  return (int)(intptr_t)arg;
}

typedef struct {
  atomic_int ran;
} counter_t;

static int count_call(void *arg) {
  counter_t *c = arg;
  atomic_fetch_add_explicit(&c->ran, 1, memory_order_relaxed);
  return 0;
}


/* ---- Offload ---------------------------------------------------------- */

/* fn can only end once the other coroutine has run, and that one waits
 * for fn to have started: so the loop served it while the call ran. */
typedef struct {
  pthread_t       loop_thread;
  pthread_t       fn_thread;
  atomic_int      fn_started;
  atomic_int      fn_finished;
  mm_test_latch_t opened;
  int             call_result;
  int             other_saw_started;
  int             other_saw_finished;
  int             other_on_loop_thread;
} offload_t;

static int offload_fn(void *arg) {
  offload_t *o = arg;
  o->fn_thread = pthread_self();
  set_flag(&o->fn_started);
  mm_test_latch_wait(&o->opened, 1);
  set_flag(&o->fn_finished);
  return 0;
}

static int offload_caller(void *arg) {
  offload_t *o = arg;
  o->loop_thread = pthread_self();
  o->call_result = mm_run_sync(offload_fn, o);
  return 0;
}

static int offload_other(void *arg) {
  offload_t *o = arg;
  o->other_saw_started = tick_until(&o->fn_started);
  o->other_saw_finished = atomic_load(&o->fn_finished);
  o->other_on_loop_thread = pthread_equal(pthread_self(), o->loop_thread);
  mm_test_latch_add(&o->opened, 1);
  return 0;
}

static void test_run_sync_runs_fn_on_a_worker_while_the_loop_serves_others(
    void **state) {
  mm_loop_t *loop = new_loop();
  offload_t o;
  memset(&o, 0, sizeof o);
  mm_test_latch_init(&o.opened);
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, offload_caller, &o, &a));
  assert_mm_ok(mm_spawn(loop, offload_other, &o, &b));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(b));
  assert_mm_ok(o.call_result);
  assert_true(pthread_equal(o.loop_thread, pthread_self()));
  assert_false(pthread_equal(o.fn_thread, o.loop_thread));
  assert_true(o.other_saw_started);
  assert_false(o.other_saw_finished);
  assert_true(o.other_on_loop_thread);
  assert_true(atomic_load(&o.fn_finished));
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&o.opened);
}

static const int pass_values[] = { 42, -EIO, 0, -ECANCELED, 1 << 30, -1 };
enum { NPASS = sizeof pass_values / sizeof pass_values[0] };

typedef struct {
  int plain[NPASS];
  int ex[NPASS];
} passed_t;

static int call_with_each_value(void *arg) {
  passed_t *p = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  for (int i = 0; i < NPASS; i++) {
    p->plain[i] = mm_run_sync(return_arg, (void *)(intptr_t)pass_values[i]);
    p->ex[i] = mm_run_sync_ex(return_arg, (void *)(intptr_t)pass_values[i],
                              &o);
  }
  return 0;
}

static void test_run_sync_returns_fn_values_and_errors_unchanged(
    void **state) {
  mm_loop_t *loop = new_loop();
  passed_t p;
  memset(&p, 0x55, sizeof p);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_with_each_value, &p, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  for (int i = 0; i < NPASS; i++) {
    assert_status(p.plain[i], pass_values[i]);
    assert_status(p.ex[i], pass_values[i]);
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- The pool --------------------------------------------------------- */

/* n calls that wait for each other on a barrier of n: they end only if
 * they all run at once, each on a thread of its own. */
typedef struct {
  pthread_barrier_t barrier;
  pthread_t         threads[16];
  char              names[16][16];
  atomic_int        next;
  int               results[16];
} together_t;

typedef struct {
  together_t *t;
  int         i;
} together_arg_t;

static int wait_for_all(void *arg) {
  together_t *t = arg;
  int slot = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed);
  t->threads[slot] = pthread_self();
  if (pthread_getname_np(pthread_self(), t->names[slot],
                         sizeof t->names[slot]) != 0)
    strcpy(t->names[slot], "?");
  pthread_barrier_wait(&t->barrier);
  return 100 + slot;
}

static int call_wait_for_all(void *arg) {
  together_arg_t *a = arg;
  a->t->results[a->i] = mm_run_sync(wait_for_all, a->t);
  return 0;
}

static void run_together(mm_loop_t *loop, together_t *t, int n) {
  together_arg_t args[16];
  mm_coro_t *c[16];
  memset(t, 0, sizeof *t);
  pthread_barrier_init(&t->barrier, NULL, (unsigned)n);
  for (int i = 0; i < n; i++) {
    args[i].t = t;
    args[i].i = i;
    assert_mm_ok(mm_spawn(loop, call_wait_for_all, &args[i], &c[i]));
  }
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < n; i++)
    assert_mm_ok(mm_join(c[i]));
  pthread_barrier_destroy(&t->barrier);
}

static void test_eight_calls_that_only_end_together_all_complete(
    void **state) {
  mm_loop_t *loop = new_loop();
  together_t t;
  run_together(loop, &t, 8);
  bool seen[8] = { false };
  for (int i = 0; i < 8; i++) {
    int slot = t.results[i] - 100;
    assert_in_range(slot, 0, 7);
    assert_false(seen[slot]);
    seen[slot] = true;
    for (int j = 0; j < i; j++)
      assert_false(pthread_equal(t.threads[i], t.threads[j]));
  }
  assert_mm_ok(mm_loop_free(loop));
}

static void test_worker_threads_are_named_mm_worker_n(void **state) {
  mm_loop_t *loop = new_loop();
  together_t t;
  run_together(loop, &t, 3);
  unsigned ids[3];
  for (int i = 0; i < 3; i++) {
    char end = 0;
    if (sscanf(t.names[i], "mm-worker-%u%c", &ids[i], &end) != 1)
      fail_msg("worker %d is named '%s'", i, t.names[i]);
    assert_true(ids[i] >= 1);
    for (int j = 0; j < i; j++)
      assert_int_not_equal(ids[i], ids[j]);
  }
  assert_mm_ok(mm_loop_free(loop));
}

/* 12 calls on a pool of at most 3: the first three to start wait for each
 * other, so the bound is reached; none may ever make it four. */
typedef struct {
  pthread_barrier_t first_three;
  atomic_int        ticket;
  atomic_int        in_flight;
  atomic_int        max_in_flight;
  int               results[12];
} bounded_t;

typedef struct {
  bounded_t *b;
  int        i;
} bounded_arg_t;

static int bounded_fn(void *arg) {
  bounded_t *b = arg;
  int now = atomic_fetch_add_explicit(&b->in_flight, 1,
                                      memory_order_relaxed) + 1;
  int max = atomic_load_explicit(&b->max_in_flight, memory_order_relaxed);
  while (now > max &&
         !atomic_compare_exchange_weak_explicit(&b->max_in_flight, &max, now,
                                                memory_order_relaxed,
                                                memory_order_relaxed))
    ;
  if (atomic_fetch_add_explicit(&b->ticket, 1, memory_order_relaxed) < 3)
    pthread_barrier_wait(&b->first_three);
  else
    sched_yield();
  atomic_fetch_sub_explicit(&b->in_flight, 1, memory_order_relaxed);
  return 7;
}

static int call_bounded(void *arg) {
  bounded_arg_t *a = arg;
  a->b->results[a->i] = mm_run_sync(bounded_fn, a->b);
  return 0;
}

static void test_pool_max_threads_bounds_the_calls_running_at_once(
    void **state) {
  mm_loop_t *loop = new_loop_with(0, 3, 0);
  bounded_t b;
  memset(&b, 0, sizeof b);
  pthread_barrier_init(&b.first_three, NULL, 3);
  bounded_arg_t args[12];
  mm_coro_t *c[12];
  for (int i = 0; i < 12; i++) {
    args[i].b = &b;
    args[i].i = i;
    assert_mm_ok(mm_spawn(loop, call_bounded, &args[i], &c[i]));
  }
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 12; i++) {
    assert_mm_ok(mm_join(c[i]));
    assert_status(b.results[i], 7);
  }
  assert_int_equal(atomic_load(&b.ticket), 12);
  assert_int_equal(atomic_load(&b.max_in_flight), 3);
  assert_mm_ok(mm_loop_free(loop));
  pthread_barrier_destroy(&b.first_three);
}

/* Workers of other loops (none, unless a test failed before freeing its
 * loop) are counted in base and left out. */
static void test_idle_workers_exit_after_pool_idle_ms(void **state) {
  int base = count_threads_named("mm-worker-");
  mm_loop_t *loop = new_loop_with(0, 0, 50);
  together_t t;
  run_together(loop, &t, 3);
  assert_int_equal(wait_for_thread_count("mm-worker-", base, 5000), base);
  /* The pool starts workers again when calls come. */
  run_together(loop, &t, 2);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(wait_for_thread_count("mm-worker-", base, 5000), base);
}

static void test_pool_min_threads_keeps_workers_alive_when_idle(
    void **state) {
  int base = count_threads_named("mm-worker-");
  mm_loop_t *loop = new_loop_with(1, 0, 50);
  together_t t;
  run_together(loop, &t, 3);
  /* Those above the minimum leave... */
  assert_int_equal(wait_for_thread_count("mm-worker-", base + 1, 5000),
                   base + 1);
  /* ...and the last one stays well past the idle time: an upper-bound
   * check, so waiting out a generous span is the test itself. */
  uint64_t end = mm_test_now_ms() + 300;
  while (mm_test_now_ms() < end) {
    assert_int_equal(count_threads_named("mm-worker-"), base + 1);
    struct timespec ts = { 0, 10 * 1000 * 1000 };
    nanosleep(&ts, NULL);
  }
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(wait_for_thread_count("mm-worker-", base, 5000), base);
}


/* ---- Pool sizing ------------------------------------------------------ */

static unsigned cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned) n : 1;
}

/* The most workers quick calls may leave (API.md, "Pool sizing"): about
 * one awake per CPU, plus one. */
static unsigned cpu_budget(void) {
  return cpu_count() + 1;
}

/* About 2 us of work, without a system call. */
static int spin_2us(void *arg) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do
    clock_gettime(CLOCK_MONOTONIC, &t);
  while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec)
         < 2000);
  return 0;
}

enum { QUICK_CALLERS = 100 };

typedef struct {
  int calls;                  /* each caller's */
  atomic_int failed;
} quick_t;

static int call_quick_repeatedly(void *arg) {
  quick_t *q = arg;
  for (int i = 0; i < q->calls; i++)
    if (mm_run_sync(spin_2us, NULL) != 0)
      atomic_fetch_add(&q->failed, 1);
  return 0;
}

/* 100 callers of a 2 us function keep every worker busy all along: more
 * workers than CPUs would only take turns on them.  The pool's threads
 * exit only after pool_idle_ms (10 s), so the count afterwards is the
 * most it ever had.  Under Valgrind, which runs one thread at a time,
 * every worker waiting for its turn looks blocked: the bound is not
 * checked there. */
static void test_quick_calls_from_100_callers_leave_cpus_plus_one_threads(
    void **state) {
  mm_loop_t *loop = new_loop();
  quick_t q = { .calls = mm_test_under_valgrind() ? 5 : 300 };
  for (int i = 0; i < QUICK_CALLERS; i++)
    assert_mm_ok(mm_spawn(loop, call_quick_repeatedly, &q, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&q.failed), 0);
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.sync_calls, (uint64_t) QUICK_CALLERS * q.calls);
  if (!mm_test_under_valgrind() && st.pool_threads > cpu_budget())
    fail_msg("%u workers for 2 us calls on %u CPUs", st.pool_threads,
             cpu_budget() - 1);
  assert_mm_ok(mm_loop_free(loop));
}

/* About 10 ms of work, without a system call. */
static int spin_10ms(void *arg) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do
    clock_gettime(CLOCK_MONOTONIC, &t);
  while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec)
         < 10 * 1000000L);
  return 0;
}

static int call_long_computation(void *arg) {
  quick_t *q = arg;
  for (int i = 0; i < q->calls; i++)
    if (mm_run_sync(spin_10ms, NULL) != 0)
      atomic_fetch_add(&q->failed, 1);
  return 0;
}

/* Calls that run long but never block use their CPU all along: they are
 * not given a thread each (only what keeps the CPUs busy), however long
 * they take. */
static void test_calls_that_compute_for_long_leave_cpus_plus_one_threads(
    void **state) {
  mm_loop_t *loop = new_loop();
  quick_t q = { .calls = 2 };
  for (int i = 0; i < 16; i++)
    assert_mm_ok(mm_spawn(loop, call_long_computation, &q, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(atomic_load(&q.failed), 0);
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.sync_calls, 32);
  if (!mm_test_under_valgrind() && st.pool_threads > cpu_budget())
    fail_msg("%u workers for 10 ms computations on %u CPUs",
             st.pool_threads, cpu_budget() - 1);
  assert_mm_ok(mm_loop_free(loop));
}

/* Computations, one per CPU, that hold every thread the CPUs allow until
 * a quick call queued behind them has run: the queue that no longer moves
 * gets a thread for it (or the watchdog fires). */
typedef struct {
  atomic_int spinning;
  atomic_int quick_done;
  int        spin_results[16];
  int        quick_result;
} starve_t;

static int spin_until_quick_done(void *arg) {
  starve_t *s = arg;
  atomic_fetch_add(&s->spinning, 1);
  while (!atomic_load_explicit(&s->quick_done, memory_order_acquire))
    ;
  return 0;
}

typedef struct {
  starve_t *s;
  int       i;
} starve_arg_t;

static int call_spinner(void *arg) {
  starve_arg_t *a = arg;
  a->s->spin_results[a->i] = mm_run_sync(spin_until_quick_done, a->s);
  return 0;
}

static int mark_quick_done(void *arg) {
  set_flag(&((starve_t *) arg)->quick_done);
  return 0;
}

static int call_quick_once_all_spin(void *arg) {
  starve_t *s = arg;
  for (int i = 0; i < TICK_GUARD &&
                  atomic_load(&s->spinning) < (int) cpu_count(); i++)
    if (mm_sleep(1) != 0)
      return -1;
  s->quick_result = mm_run_sync(mark_quick_done, s);
  return 0;
}

static void test_a_call_behind_computations_holding_every_cpu_still_runs(
    void **state) {
  mm_loop_t *loop = new_loop();
  starve_t s;
  memset(&s, 0, sizeof s);
  unsigned n = cpu_count() < 16 ? cpu_count() : 16;
  starve_arg_t args[16];
  for (unsigned i = 0; i < n; i++) {
    args[i] = (starve_arg_t) { &s, (int) i };
    assert_mm_ok(mm_spawn(loop, call_spinner, &args[i], NULL));
  }
  mm_coro_t *q;
  assert_mm_ok(mm_spawn(loop, call_quick_once_all_spin, &s, &q));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(q));
  assert_status(s.quick_result, 0);
  for (unsigned i = 0; i < n; i++)
    assert_status(s.spin_results[i], 0);
  assert_mm_ok(mm_loop_free(loop));
}

enum { BLOCKED_CALLS = 20 };

typedef struct {
  mm_test_latch_t running;
  mm_test_latch_t gate;
  int             results[BLOCKED_CALLS];
} blocked_t;

static int wait_for_gate(void *arg) {
  blocked_t *b = arg;
  mm_test_latch_add(&b->running, 1);
  mm_test_latch_wait(&b->gate, 1);
  return 9;
}

typedef struct {
  blocked_t *b;
  int        i;
} blocked_arg_t;

static int call_blocking(void *arg) {
  blocked_arg_t *a = arg;
  a->b->results[a->i] = mm_run_sync(wait_for_gate, a->b);
  return 0;
}

/* 20 calls that only end together: each needs a thread of its own, at
 * the same time, far more than the CPUs. */
static void test_calls_that_block_get_a_thread_each_up_to_the_maximum(
    void **state) {
  mm_loop_t *loop = new_loop();
  blocked_t b;
  mm_test_latch_init(&b.running);
  mm_test_latch_init(&b.gate);
  blocked_arg_t args[BLOCKED_CALLS];
  mm_coro_t *c[BLOCKED_CALLS];
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < BLOCKED_CALLS; i++) {
    args[i] = (blocked_arg_t) { &b, i };
    assert_mm_ok(mm_spawn(loop, call_blocking, &args[i], &c[i]));
  }
  mm_test_latch_wait(&b.running, BLOCKED_CALLS);
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_true(st.pool_threads >= BLOCKED_CALLS);
  assert_int_equal(st.sync_running, BLOCKED_CALLS);
  mm_test_latch_add(&b.gate, 1);
  for (int i = 0; i < BLOCKED_CALLS; i++) {
    assert_mm_ok(mm_join(c[i]));
    assert_status(b.results[i], 9);
  }
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&b.gate);
  mm_test_latch_destroy(&b.running);
}

/* ---- Inline calls ----------------------------------------------------- */

typedef struct {
  pthread_t  thread;
  mm_coro_t *current;
  int        ran;
} where_t;

static int record_where(void *arg) {
  where_t *w = arg;
  w->thread = pthread_self();
  w->current = mm_current();
  w->ran++;
  return 31;
}

static void *plain_thread_calls_inline(void *arg) {
  where_t *w = arg;
  intptr_t r = mm_run_sync(record_where, w);
  return (void *)r;
}

static void test_run_sync_on_a_plain_thread_runs_fn_inline(void **state) {
  where_t w = { 0 };
  assert_status(mm_run_sync(record_where, &w), 31);
  assert_int_equal(w.ran, 1);
  assert_true(pthread_equal(w.thread, pthread_self()));
  assert_null(w.current);

  mm_sync_options_t o;
  mm_sync_options_init(&o);
  assert_status(mm_run_sync_ex(record_where, &w, &o), 31);
  assert_int_equal(w.ran, 2);
  assert_true(pthread_equal(w.thread, pthread_self()));

  /* Another plain thread, while a loop exists: inline there too. */
  mm_loop_t *loop = new_loop();
  where_t w2 = { 0 };
  pthread_t th;
  void *ret;
  assert_int_equal(pthread_create(&th, NULL, plain_thread_calls_inline, &w2),
                   0);
  assert_int_equal(pthread_join(th, &ret), 0);
  assert_int_equal((int)(intptr_t)ret, 31);
  assert_int_equal(w2.ran, 1);
  assert_true(pthread_equal(w2.thread, th));
  assert_null(w2.current);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  where_t    outer, inner;
  mm_coro_t *self;
  pthread_t  loop_thread;
  int        inner_result;
  int        result;
} nested_t;

static int nested_outer(void *arg) {
  nested_t *n = arg;
  record_where(&n->outer);
  n->inner_result = mm_run_sync(record_where, &n->inner);
  return 8;
}

static int call_nested(void *arg) {
  nested_t *n = arg;
  n->self = mm_current();
  n->loop_thread = pthread_self();
  n->result = mm_run_sync(nested_outer, n);
  return 0;
}

static void test_run_sync_inside_a_run_sync_call_runs_inline_on_the_worker(
    void **state) {
  mm_loop_t *loop = new_loop();
  nested_t n;
  memset(&n, 0, sizeof n);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_nested, &n, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(n.result, 8);
  assert_status(n.inner_result, 31);
  assert_int_equal(n.outer.ran, 1);
  assert_int_equal(n.inner.ran, 1);
  assert_false(pthread_equal(n.outer.thread, n.loop_thread));
  assert_true(pthread_equal(n.inner.thread, n.outer.thread));
  assert_ptr_equal(n.outer.current, n.self);
  assert_ptr_equal(n.inner.current, n.self);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Refused calls ---------------------------------------------------- */

typedef struct {
  mm_lane_t *lane;
  counter_t  runs;
  int        plain_result;
  int        lane_result;
  int        lane_free_result;
} raw_t;

static void call_from_raw_callback(void *arg) {
  raw_t *r = arg;
  r->plain_result = mm_run_sync(count_call, &r->runs);
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = r->lane;
  r->lane_result = mm_run_sync_ex(count_call, &r->runs, &o);
  r->lane_free_result = mm_lane_free(r->lane);
}

static void test_run_sync_from_raw_callback_returns_edeadlk(void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  raw_t r;
  memset(&r, 0, sizeof r);
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_ok(mm_lane_new(loop, "raw", &r.lane));
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, call_from_raw_callback,
                                       &r));
  assert_status(r.plain_result, -EDEADLK);
  assert_status(r.lane_result, -EDEADLK);
  assert_status(r.lane_free_result, -EDEADLK);
  assert_int_equal(atomic_load(&r.runs.ran), 0);
  assert_mm_ok(mm_lane_free(r.lane));   /* the loop is idle again */
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

typedef struct {
  counter_t runs;
  int       null_fn;
  int       null_fn_ex;
  int       bad_affinity;
  int       negative_affinity;
  int       lane_without_lane;
} refused_t;

static void call_refused(refused_t *r) {
  mm_sync_options_t o;
  r->null_fn = mm_run_sync(NULL, &r->runs);
  mm_sync_options_init(&o);
  r->null_fn_ex = mm_run_sync_ex(NULL, &r->runs, &o);
  o.affinity = 7;
  r->bad_affinity = mm_run_sync_ex(count_call, &r->runs, &o);
  o.affinity = -1;
  r->negative_affinity = mm_run_sync_ex(count_call, &r->runs, &o);
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  r->lane_without_lane = mm_run_sync_ex(count_call, &r->runs, &o);
}

static int call_refused_in_coroutine(void *arg) {
  call_refused(arg);
  return 0;
}

static void assert_refused(refused_t *r, int want) {
  assert_status(r->null_fn, want);
  assert_status(r->null_fn_ex, want);
  assert_status(r->bad_affinity, want);
  assert_status(r->negative_affinity, want);
  assert_status(r->lane_without_lane, want);
  assert_int_equal(atomic_load(&r->runs.ran), 0);
}

static void test_run_sync_with_null_fn_or_bad_options_returns_einval(
    void **state) {
  refused_t plain;
  memset(&plain, 0, sizeof plain);
  call_refused(&plain);
  assert_refused(&plain, -EINVAL);

  mm_loop_t *loop = new_loop();
  refused_t in_coro;
  memset(&in_coro, 0, sizeof in_coro);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_refused_in_coroutine, &in_coro, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_refused(&in_coro, -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- Cancellation ----------------------------------------------------- */

/* A call that holds the only worker until its gate opens. */
typedef struct {
  atomic_int      started;    /* for coroutines to poll */
  mm_test_latch_t running;    /* the same, for plain threads to wait on */
  mm_test_latch_t gate;
  int             value;
} blocker_t;

static int block_on_gate(void *arg) {
  blocker_t *b = arg;
  set_flag(&b->started);
  mm_test_latch_add(&b->running, 1);
  mm_test_latch_wait(&b->gate, 1);
  return b->value;
}

static void blocker_init(blocker_t *b, int value) {
  memset(b, 0, sizeof *b);
  mm_test_latch_init(&b->running);
  mm_test_latch_init(&b->gate);
  b->value = value;
}

static void blocker_destroy(blocker_t *b) {
  mm_test_latch_destroy(&b->gate);
  mm_test_latch_destroy(&b->running);
}

typedef struct {
  blocker_t  holder;        /* A's call */
  counter_t  queued_runs;   /* B's function */
  mm_coro_t *b;
  int        a_result;
  int        b_result;
  int        b_cancelled_after;
  int        cancel_result;
  bool       c_yields_first;
} queued_cancel_t;

static int qc_a(void *arg) {
  queued_cancel_t *q = arg;
  q->a_result = mm_run_sync(block_on_gate, &q->holder);
  return 0;
}

static int qc_b(void *arg) {
  queued_cancel_t *q = arg;
  q->b_result = mm_run_sync(count_call, &q->queued_runs);
  q->b_cancelled_after = mm_cancelled();
  return 0;
}

/* Runs after A and B have parked (FIFO): B's call is queued behind A's,
 * which holds the only worker until the gate opens.  Without the yield,
 * the calls of this pass have not gone to the pool yet: B's is cancelled
 * while still staged on the loop; with it, in the pool's queue. */
static int qc_c(void *arg) {
  queued_cancel_t *q = arg;
  if (q->c_yields_first)
    assert_mm_ok(mm_yield());
  q->cancel_result = mm_cancel(q->b);
  mm_test_latch_add(&q->holder.gate, 1);
  return 0;
}

static void check_cancel_of_a_queued_call(bool c_yields_first) {
  mm_loop_t *loop = new_loop_with(0, 1, 0);
  queued_cancel_t q;
  memset(&q, 0, sizeof q);
  q.c_yields_first = c_yields_first;
  blocker_init(&q.holder, 5);
  mm_coro_t *a, *c;
  assert_mm_ok(mm_spawn(loop, qc_a, &q, &a));
  assert_mm_ok(mm_spawn(loop, qc_b, &q, &q.b));
  assert_mm_ok(mm_spawn(loop, qc_c, &q, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(q.b));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(q.cancel_result);
  assert_status(q.a_result, 5);
  assert_status(q.b_result, -ECANCELED);
  assert_true(q.b_cancelled_after);
  assert_int_equal(atomic_load(&q.queued_runs.ran), 0);
  assert_mm_ok(mm_loop_free(loop));
  blocker_destroy(&q.holder);
}

static void test_cancel_of_a_queued_call_removes_it_and_it_never_runs(
    void **state) {
  check_cancel_of_a_queued_call(true);
}

static void test_cancel_in_the_pass_that_made_the_call_and_it_never_runs(
    void **state) {
  check_cancel_of_a_queued_call(false);
}

/* A coroutine makes quick calls back to back, so the loop polls for the
 * answers instead of sleeping; the loop must still give libuv its turn:
 * a sleeping coroutine wakes and stops the caller.  Starved timers would
 * hang here (the watchdog fails the test). */
typedef struct {
  atomic_bool stop;
  uint64_t calls;
  int sleep_result;
} busy_t;

static int quick_caller(void *arg) {
  busy_t *b = arg;
  while (!atomic_load_explicit(&b->stop, memory_order_relaxed)) {
    int r = mm_run_sync(return_arg, (void *) (intptr_t) 1);
    if (r != 1)
      return r;
    b->calls++;
  }
  return 0;
}

static int sleeper(void *arg) {
  busy_t *b = arg;
  b->sleep_result = mm_sleep(20);
  atomic_store_explicit(&b->stop, true, memory_order_relaxed);
  return 0;
}

static void test_timers_fire_while_quick_calls_keep_the_loop_polling(
    void **state) {
  for (int i = 0; i < 5; i++) {
    mm_loop_t *loop = new_loop();
    busy_t b;
    memset(&b, 0, sizeof b);
    mm_coro_t *caller, *s;
    assert_mm_ok(mm_spawn(loop, quick_caller, &b, &caller));
    assert_mm_ok(mm_spawn(loop, sleeper, &b, &s));
    assert_mm_ok(mm_loop_run(loop));
    assert_mm_ok(mm_join(caller));
    assert_mm_ok(mm_join(s));
    assert_mm_ok(b.sleep_result);
    assert_true(b.calls > 0);
    assert_mm_ok(mm_loop_free(loop));
  }
}

/* The classic deadlock of a bounded pool: its only worker runs a call
 * that waits (mm_run_async) for a coroutine whose own call waits in the
 * queue behind it.  It is reported after a second, once, and the outer
 * wait's timeout ends it: the inner call is taken out and never runs. */
typedef struct {
  mm_loop_t *loop;
  counter_t  inner_runs;
  int        inner;
  int        outer_async;
  int        result;
} pool_deadlock_t;

static int inner_coroutine(void *arg) {
  pool_deadlock_t *n = arg;
  n->inner = mm_run_sync(count_call, &n->inner_runs);
  return n->inner;
}

static int outer_call(void *arg) {
  pool_deadlock_t *n = arg;
  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = 3000;
  n->outer_async = mm_run_async_ex(n->loop, inner_coroutine, n, &o);
  return 0;
}

static int outer_coroutine(void *arg) {
  pool_deadlock_t *n = arg;
  n->result = mm_run_sync(outer_call, n);
  return 0;
}

static int count_in(const char *text, const char *what) {
  int n = 0;
  for (const char *p = text; (p = strstr(p, what)) != NULL; p++)
    n++;
  return n;
}

static void test_a_call_waiting_long_for_a_full_pool_is_reported_once(
    void **state) {
  pool_deadlock_t n;
  memset(&n, 0, sizeof n);
  n.loop = new_loop_with(0, 1, 0);
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(n.loop, outer_coroutine, &n, &c));
  int rc = mm_loop_run(n.loop);
  mm_set_log(NULL, NULL);
  assert_mm_ok(rc);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(n.result);
  assert_status(n.outer_async, -ETIMEDOUT);
  assert_status(n.inner, -ETIMEDOUT);
  assert_int_equal(atomic_load(&n.inner_runs.ran), 0);
  if (count_in(log.text, "waited") != 1 || log.max_level < MM_LOG_WARN)
    fail_msg("expected one warning about the waiting call:\n%s", log.text);
  if (strstr(log.text, "pool_max_threads") == NULL)
    fail_msg("the warning does not name the limit:\n%s", log.text);
  mm_test_log_destroy(&log);
  assert_mm_ok(mm_loop_free(n.loop));
}

/* Cancelled while its call runs: the call is waited for. */
typedef struct {
  blocker_t  call;
  mm_coro_t *caller;
  atomic_int fn_saw_cancel;
  int        result;
  int        next_sleep;
  int        next_yield;
  int        cancelled_after;
  int        canceller_saw_started;
} running_cancel_t;

static int block_then_check_cancel(void *arg) {
  running_cancel_t *rc = arg;
  int v = block_on_gate(&rc->call);
  atomic_store_explicit(&rc->fn_saw_cancel, mm_cancelled(),
                        memory_order_relaxed);
  return v;
}

static int rc_caller(void *arg) {
  running_cancel_t *rc = arg;
  rc->result = mm_run_sync(block_then_check_cancel, rc);
  rc->cancelled_after = mm_cancelled();
  rc->next_sleep = mm_sleep(0);
  rc->next_yield = mm_yield();
  return 0;
}

static int rc_canceller(void *arg) {
  running_cancel_t *rc = arg;
  rc->canceller_saw_started = tick_until(&rc->call.started);
  mm_cancel(rc->caller);
  mm_test_latch_add(&rc->call.gate, 1);
  return 0;
}

static void test_cancel_of_a_running_call_waits_for_it_and_returns_its_value(
    void **state) {
  mm_loop_t *loop = new_loop();
  running_cancel_t rc;
  memset(&rc, 0, sizeof rc);
  blocker_init(&rc.call, 7);
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, rc_caller, &rc, &rc.caller));
  assert_mm_ok(mm_spawn(loop, rc_canceller, &rc, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(rc.caller));
  assert_mm_ok(mm_join(k));
  assert_true(rc.canceller_saw_started);
  assert_status(rc.result, 7);
  assert_true(atomic_load(&rc.fn_saw_cancel));
  assert_true(rc.cancelled_after);
  assert_status(rc.next_sleep, -ECANCELED);
  assert_status(rc.next_yield, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  blocker_destroy(&rc.call);
}

/* abandon_on_cancel: the caller leaves at once; the gate of the function
 * opens only after the caller saw -ECANCELED; cleanup reports the
 * function's own value later. */
typedef struct {
  blocker_t       call;
  mm_coro_t      *caller;
  atomic_int      fn_finished;
  mm_test_latch_t cleaned;
  _Atomic(void *) cleanup_arg;
  atomic_int      cleanup_status;
  atomic_int      cleanups;
  int             result;
  int             fn_finished_at_return;
  int             canceller_saw_started;
  uint64_t        timeout_ms;   /* 0: cancelled by a coroutine instead */
} abandon_t;

static int abandonable_fn(void *arg) {
  abandon_t *a = arg;
  int v = block_on_gate(&a->call);
  set_flag(&a->fn_finished);
  return v;
}

static void record_cleanup(void *arg, int status) {
  abandon_t *a = arg;
  atomic_store_explicit(&a->cleanup_arg, arg, memory_order_relaxed);
  atomic_store_explicit(&a->cleanup_status, status, memory_order_relaxed);
  atomic_fetch_add_explicit(&a->cleanups, 1, memory_order_relaxed);
  mm_test_latch_add(&a->cleaned, 1);   /* its mutex publishes the above */
}

static int abandon_caller(void *arg) {
  abandon_t *a = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.abandon_on_cancel = true;
  o.cleanup = record_cleanup;
  o.timeout_ms = a->timeout_ms;
  a->result = mm_run_sync_ex(abandonable_fn, a, &o);
  a->fn_finished_at_return = atomic_load(&a->fn_finished);
  mm_test_latch_add(&a->call.gate, 1);
  return 0;
}

static int abandon_canceller(void *arg) {
  abandon_t *a = arg;
  a->canceller_saw_started = tick_until(&a->call.started);
  mm_cancel(a->caller);
  return 0;
}

static void abandon_init(abandon_t *a, uint64_t timeout_ms) {
  memset(a, 0, sizeof *a);
  blocker_init(&a->call, 13);
  mm_test_latch_init(&a->cleaned);
  a->timeout_ms = timeout_ms;
}

static void assert_abandoned_then_cleaned(abandon_t *a, int want) {
  assert_status(a->result, want);
  assert_false(a->fn_finished_at_return);
  mm_test_latch_wait(&a->cleaned, 1);
  assert_true(atomic_load(&a->fn_finished));
  assert_int_equal(atomic_load(&a->cleanups), 1);
  assert_ptr_equal(atomic_load(&a->cleanup_arg), a);
  assert_status(atomic_load(&a->cleanup_status), 13);
}

static void abandon_destroy(abandon_t *a) {
  mm_test_latch_destroy(&a->cleaned);
  blocker_destroy(&a->call);
}

static void test_abandon_on_cancel_returns_ecanceled_at_once_then_cleans_up(
    void **state) {
  mm_loop_t *loop = new_loop();
  abandon_t a;
  abandon_init(&a, 0);
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, abandon_caller, &a, &a.caller));
  assert_mm_ok(mm_spawn(loop, abandon_canceller, &a, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a.caller));
  assert_mm_ok(mm_join(k));
  assert_true(a.canceller_saw_started);
  assert_abandoned_then_cleaned(&a, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  abandon_destroy(&a);
}

/* Issue 8, instance 2: an abandoned call outlives its coroutine, whose
 * block the next coroutine of the loop reuses.  Inside the call,
 * mm_current(), locals, mm_spawn and mm_run_async keep seeing its own
 * coroutine's state (a snapshot), never the new coroutine's or freed
 * memory. */
static const char outlive_key;

typedef struct {
  mm_loop_t *loop;
  mm_chan_t *started;         /* fn tells the driver it runs */
  mm_chan_t *go;              /* the reuser tells fn to look */
  mm_chan_t *done;            /* fn tells the reuser it looked */
  mm_test_latch_t cleaned;
  int a_value, b_value;
  mm_coro_t *a_handle;
  int a_result;
  /* what fn saw */
  void *local_seen;
  void *child_local_seen;
  int current_is_a;
  int cancel_current;
  int spawn_result, join_result, async_result;
} outlive_t;

static int outlive_child(void *arg) {
  outlive_t *o = arg;
  o->child_local_seen = mm_local_get(&outlive_key);
  return 0;
}

static int outlive_async(void *arg) {
  return 5;
}

static int outlive_fn(void *arg) {
  outlive_t *o = arg;
  void *item;
  if (mm_chan_send(o->started, NULL) != 0 || mm_chan_recv(o->go, &item) != 0)
    return -1;
  o->local_seen = mm_local_get(&outlive_key);
  o->current_is_a = mm_current() == o->a_handle;
  o->cancel_current = mm_cancel(mm_current());
  mm_coro_t *child;
  o->spawn_result = mm_spawn(o->loop, outlive_child, o, &child);
  if (o->spawn_result == 0)
    o->join_result = mm_join(child);
  o->async_result = mm_run_async(o->loop, outlive_async, NULL);
  mm_chan_send(o->done, NULL);
  return 13;
}

static void outlive_cleanup(void *arg, int status) {
  outlive_t *o = arg;
  mm_test_latch_add(&o->cleaned, 1);
}

static int outlive_a(void *arg) {
  outlive_t *o = arg;
  mm_local_set(&outlive_key, &o->a_value);
  mm_sync_options_t so;
  mm_sync_options_init(&so);
  so.abandon_on_cancel = true;
  so.cleanup = outlive_cleanup;
  o->a_result = mm_run_sync_ex(outlive_fn, o, &so);
  return 0;
}

static int outlive_b(void *arg) {
  outlive_t *o = arg;
  mm_local_set(&outlive_key, &o->b_value);
  void *item;
  if (mm_chan_send(o->go, NULL) != 0 || mm_chan_recv(o->done, &item) != 0)
    return -1;
  return 0;
}

/* Runs a, cancels it once its call runs, joins it, then runs b on the
 * block a left in the cache. */
static int outlive_driver(void *arg) {
  outlive_t *o = arg;
  void *item;
  int r = mm_spawn(o->loop, outlive_a, o, &o->a_handle);
  if (r != 0 || (r = mm_chan_recv(o->started, &item)) != 0 ||
      (r = mm_cancel(o->a_handle)) != 0 || (r = mm_join(o->a_handle)) != 0)
    return r;
  mm_coro_t *b;
  if ((r = mm_spawn(o->loop, outlive_b, o, &b)) != 0)
    return r;
  return mm_join(b);
}

static void test_abandoned_call_sees_its_own_coroutine_after_it_ended(
    void **state) {
  outlive_t o;
  memset(&o, 0, sizeof o);
  mm_test_latch_init(&o.cleaned);
  assert_mm_ok(mm_chan_new(&o.started, 1));
  assert_mm_ok(mm_chan_new(&o.go, 1));
  assert_mm_ok(mm_chan_new(&o.done, 1));
  assert_mm_ok(mm_loop_new(&o.loop, NULL));
  assert_mm_ok(mm_loop_start(o.loop));
  assert_mm_ok(mm_run_async(o.loop, outlive_driver, &o));
  mm_test_latch_wait(&o.cleaned, 1);
  assert_status(o.a_result, -ECANCELED);
  assert_ptr_equal(o.local_seen, &o.a_value);
  assert_true(o.current_is_a);
  assert_mm_err(o.cancel_current, -EINVAL);    /* a was joined: stale */
  assert_mm_ok(o.spawn_result);
  assert_mm_ok(o.join_result);
  assert_ptr_equal(o.child_local_seen, &o.a_value);
  assert_status(o.async_result, 5);
  assert_mm_ok(mm_loop_free(o.loop));
  assert_mm_ok(mm_chan_free(o.started));
  assert_mm_ok(mm_chan_free(o.go));
  assert_mm_ok(mm_chan_free(o.done));
  mm_test_latch_destroy(&o.cleaned);
}

/* Issue 8, instance 5: mm_loop_free from a thread the loop would wait for
 * -- a worker, a lane (called from a coroutine or from a plain thread), the
 * sensitive thread -- returns -EDEADLK at once and leaves the loop usable,
 * instead of waiting for itself. */
static int free_own_loop(void *arg) {
  return mm_loop_free(arg);
}

typedef struct {
  mm_loop_t *loop;
  mm_lane_t *lane;
  int pool, lane_call, sensitive;
} free_inside_t;

static int free_from_calls(void *arg) {
  free_inside_t *f = arg;
  mm_sync_options_t o;
  f->pool = mm_run_sync(free_own_loop, f->loop);
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = f->lane;
  f->lane_call = mm_run_sync_ex(free_own_loop, f->loop, &o);
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_CALLER;   /* no caller: the sensitive thread */
  f->sensitive = mm_run_sync_ex(free_own_loop, f->loop, &o);
  return 0;
}

static void test_loop_free_from_its_own_worker_lane_or_sensitive_thread(
    void **state) {
  free_inside_t f;
  memset(&f, 0, sizeof f);
  f.loop = new_loop();
  assert_mm_ok(mm_loop_start(f.loop));
  assert_mm_ok(mm_lane_new(f.loop, "free", &f.lane));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(f.loop, free_from_calls, &f, &c));
  assert_mm_ok(mm_join(c));
  assert_status(f.pool, -EDEADLK);
  assert_status(f.lane_call, -EDEADLK);
  assert_status(f.sensitive, -EDEADLK);
  /* A lane call from a plain thread runs on the lane as well. */
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = f.lane;
  assert_mm_err(mm_run_sync_ex(free_own_loop, f.loop, &o), -EDEADLK);
  /* Still usable. */
  assert_status(mm_run_async(f.loop, return_arg, (void *)(intptr_t)7), 7);
  assert_mm_ok(mm_lane_free(f.lane));
  assert_mm_ok(mm_loop_free(f.loop));
}

/* The function polls mm_cancelled() until it turns true. */
typedef struct {
  atomic_int started;
  mm_coro_t *caller;
  int        cancelled_at_start;
  int        result;
  int        canceller_saw_started;
  int        cancelled_after;
  int        next_yield;
  uint64_t   timeout_ms;       /* of the call; 0 = cancelled instead */
} poll_cancel_t;

#define SAW_CANCEL 21

static int poll_until_cancelled(void *arg) {
  poll_cancel_t *p = arg;
  p->cancelled_at_start = mm_cancelled();
  set_flag(&p->started);
  uint64_t end = mm_test_now_ms() + CANCEL_GUARD_MS;
  while (mm_test_now_ms() < end) {
    if (mm_cancelled())
      return SAW_CANCEL;
    sched_yield();
  }
  return GAVE_UP;
}

static int pc_caller(void *arg) {
  poll_cancel_t *p = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.timeout_ms = p->timeout_ms;
  p->result = mm_run_sync_ex(poll_until_cancelled, p, &o);
  p->cancelled_after = mm_cancelled();
  p->next_yield = mm_yield();
  return 0;
}

static int pc_canceller(void *arg) {
  poll_cancel_t *p = arg;
  p->canceller_saw_started = tick_until(&p->started);
  mm_cancel(p->caller);
  return 0;
}

static void test_cancelled_turns_true_inside_fn_when_the_caller_is_cancelled(
    void **state) {
  mm_loop_t *loop = new_loop();
  poll_cancel_t p;
  memset(&p, 0, sizeof p);
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, pc_caller, &p, &p.caller));
  assert_mm_ok(mm_spawn(loop, pc_canceller, &p, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(p.caller));
  assert_mm_ok(mm_join(k));
  assert_true(p.canceller_saw_started);
  assert_false(p.cancelled_at_start);
  assert_status(p.result, SAW_CANCEL);
  assert_true(p.cancelled_after);
  assert_status(p.next_yield, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Timeouts --------------------------------------------------------- */

typedef struct {
  blocker_t holder;
  counter_t queued_runs;
  int       a_result;
  int       b_result;
  int       b_cancelled_after;
} queued_timeout_t;

static int qt_a(void *arg) {
  queued_timeout_t *q = arg;
  q->a_result = mm_run_sync(block_on_gate, &q->holder);
  return 0;
}

static int qt_b(void *arg) {
  queued_timeout_t *q = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.timeout_ms = 5;
  q->b_result = mm_run_sync_ex(count_call, &q->queued_runs, &o);
  q->b_cancelled_after = mm_cancelled();
  mm_test_latch_add(&q->holder.gate, 1);
  return 0;
}

static void test_timeout_of_a_queued_call_returns_etimedout_and_it_never_runs(
    void **state) {
  mm_loop_t *loop = new_loop_with(0, 1, 0);
  queued_timeout_t q;
  memset(&q, 0, sizeof q);
  blocker_init(&q.holder, 6);
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, qt_a, &q, &a));
  assert_mm_ok(mm_spawn(loop, qt_b, &q, &b));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(b));
  assert_status(q.a_result, 6);
  assert_status(q.b_result, -ETIMEDOUT);
  assert_false(q.b_cancelled_after);   /* the call timed out, not B */
  assert_int_equal(atomic_load(&q.queued_runs.ran), 0);
  assert_mm_ok(mm_loop_free(loop));
  blocker_destroy(&q.holder);
}

/* Keeps the loop's thread until the call has started, so that its
 * deadline cannot fire while it is still queued: blocking in a coroutine
 * on purpose, the loop's timers wait meanwhile.  The yield first hands
 * the call to the pool (calls made in a pass go there when it ends or a
 * coroutine yields). */
static int block_loop_until(atomic_int *flag) {
  uint64_t end = mm_test_now_ms() + CANCEL_GUARD_MS;
  while (!atomic_load_explicit(flag, memory_order_acquire) &&
         mm_test_now_ms() < end)
    sched_yield();
  return atomic_load(flag) ? 0 : -1;
}

static int hold_loop_until(void *arg) {
  assert_mm_ok(mm_yield());
  return block_loop_until(arg);
}

/* Many coroutines call in one pass: the first calls reach the pool
 * before the pass ends (the last coroutine of the pass blocks the loop's
 * thread until the first call has run, without yielding). */
static int flag_call(void *arg) {
  set_flag(arg);
  return 0;
}

static int call_set_flag(void *arg) {
  return mm_run_sync(flag_call, arg);
}

static int count_then_call(void *arg) {
  return mm_run_sync(count_call, arg);
}

static int block_until_flag(void *arg) {
  return block_loop_until(arg);
}

static void test_a_long_pass_hands_its_first_calls_over_before_it_ends(
    void **state) {
  enum { CALLERS = 200 };
  mm_loop_t *loop = new_loop();
  atomic_int first_ran = 0;
  counter_t others = { 0 };
  mm_coro_t *first, *c[CALLERS], *holder;
  assert_mm_ok(mm_spawn(loop, call_set_flag, &first_ran, &first));
  for (int i = 0; i < CALLERS; i++)
    assert_mm_ok(mm_spawn(loop, count_then_call, &others, &c[i]));
  assert_mm_ok(mm_spawn(loop, block_until_flag, &first_ran, &holder));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(first));
  for (int i = 0; i < CALLERS; i++)
    assert_mm_ok(mm_join(c[i]));
  assert_mm_ok(mm_join(holder));     /* -1: the first call never started */
  assert_int_equal(atomic_load(&others.ran), CALLERS);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_abandoned_running_call_times_out_etimedout_then_cleans_up(
    void **state) {
  mm_loop_t *loop = new_loop();
  abandon_t a;
  abandon_init(&a, 5);
  mm_coro_t *h;
  assert_mm_ok(mm_spawn(loop, abandon_caller, &a, &a.caller));
  assert_mm_ok(mm_spawn(loop, hold_loop_until, &a.call.started, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a.caller));
  assert_mm_ok(mm_join(h));
  assert_abandoned_then_cleaned(&a, -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
  abandon_destroy(&a);
}

/* Past its own deadline, a running call (no on_cancel here) sees
 * mm_cancelled() turn true; it returns -ETIMEDOUT once fn returns, fn's
 * value going to cleanup (tests/test-sync-cancel.c has the rest). */
static void test_timeout_of_a_running_call_sets_cancelled_then_etimedout(
    void **state) {
  mm_loop_t *loop = new_loop();
  poll_cancel_t p;
  memset(&p, 0, sizeof p);
  p.timeout_ms = 5;
  mm_coro_t *h;
  assert_mm_ok(mm_spawn(loop, pc_caller, &p, &p.caller));
  assert_mm_ok(mm_spawn(loop, hold_loop_until, &p.started, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(p.caller));
  assert_mm_ok(mm_join(h));
  assert_false(p.cancelled_at_start);
  assert_status(p.result, -ETIMEDOUT);
  /* The deadline was the call's: the coroutine goes on uncancelled. */
  assert_false(p.cancelled_after);
  assert_mm_ok(p.next_yield);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Locals and identity ---------------------------------------------- */

static char key_request, key_unset;   /* their addresses are the keys */

typedef struct {
  int        value;
  mm_coro_t *self;
  mm_coro_t *seen_current;
  void      *seen_local;
  void      *seen_unset;
  int        result;
} locals_t;

static int read_locals(void *arg) {
  locals_t *l = arg;
  l->seen_current = mm_current();
  l->seen_local = mm_local_get(&key_request);
  l->seen_unset = mm_local_get(&key_unset);
  return 0;
}

static int call_with_locals(void *arg) {
  locals_t *l = arg;
  l->self = mm_current();
  if (mm_local_set(&key_request, &l->value) != 0)
    return -1;
  l->result = mm_run_sync(read_locals, l);
  return 0;
}

static void test_fn_sees_the_awaiting_coroutine_as_current_and_its_locals(
    void **state) {
  mm_loop_t *loop = new_loop();
  locals_t l[3];
  mm_coro_t *c[3];
  memset(l, 0, sizeof l);
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_spawn(loop, call_with_locals, &l[i], &c[i]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 3; i++) {
    assert_mm_ok(mm_join(c[i]));
    assert_mm_ok(l[i].result);
    assert_non_null(l[i].self);
    assert_ptr_equal(l[i].seen_current, l[i].self);
    assert_ptr_equal(l[i].seen_local, &l[i].value);
    assert_null(l[i].seen_unset);
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Lanes ------------------------------------------------------------ */

enum { LANE_COROS = 10, LANE_CALLS = 10 };

typedef struct {
  mm_lane_t  *lane;
  int         tickets;        /* loop thread only: submission order */
  atomic_int  executed;       /* lane thread: execution order */
  atomic_int  out_of_order;
  atomic_int  in_flight;
  atomic_int  max_in_flight;
  atomic_int  other_thread;
  pthread_t   first_thread;
  atomic_int  have_first;
  int         errors[LANE_COROS];
} lane_run_t;

typedef struct {
  lane_run_t *l;
  int         ticket;
} lane_call_t;

static int lane_fn(void *arg) {
  lane_call_t *c = arg;
  lane_run_t *l = c->l;
  int now = atomic_fetch_add(&l->in_flight, 1) + 1;
  if (now > atomic_load(&l->max_in_flight))
    atomic_store(&l->max_in_flight, now);
  if (!atomic_load(&l->have_first)) {
    l->first_thread = pthread_self();
    atomic_store(&l->have_first, 1);
  } else if (!pthread_equal(l->first_thread, pthread_self())) {
    atomic_fetch_add(&l->other_thread, 1);
  }
  if (atomic_fetch_add(&l->executed, 1) != c->ticket)
    atomic_fetch_add(&l->out_of_order, 1);
  sched_yield();   /* a window for an overlapping call, if there were one */
  atomic_fetch_sub(&l->in_flight, 1);
  return c->ticket;
}

typedef struct {
  lane_run_t *l;
  int         i;
} lane_coro_t;

static int call_lane_repeatedly(void *arg) {
  lane_coro_t *lc = arg;
  lane_run_t *l = lc->l;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = l->lane;
  for (int k = 0; k < LANE_CALLS; k++) {
    /* Ticket and submission happen in one step of this coroutine. */
    lane_call_t c = { l, l->tickets++ };
    if (mm_run_sync_ex(lane_fn, &c, &o) != c.ticket)
      l->errors[lc->i]++;
    if (k % 3 == 0 && mm_yield() != 0)   /* mix the submission order */
      l->errors[lc->i]++;
  }
  return 0;
}

static void test_lane_runs_calls_on_one_thread_one_at_a_time_in_order(
    void **state) {
  mm_loop_t *loop = new_loop();
  lane_run_t l;
  memset(&l, 0, sizeof l);
  assert_mm_ok(mm_lane_new(loop, "order", &l.lane));
  lane_coro_t lc[LANE_COROS];
  mm_coro_t *c[LANE_COROS];
  for (int i = 0; i < LANE_COROS; i++) {
    lc[i].l = &l;
    lc[i].i = i;
    assert_mm_ok(mm_spawn(loop, call_lane_repeatedly, &lc[i], &c[i]));
  }
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < LANE_COROS; i++) {
    assert_mm_ok(mm_join(c[i]));
    assert_int_equal(l.errors[i], 0);
  }
  assert_int_equal(atomic_load(&l.executed), LANE_COROS * LANE_CALLS);
  assert_int_equal(atomic_load(&l.out_of_order), 0);
  assert_int_equal(atomic_load(&l.max_in_flight), 1);
  assert_int_equal(atomic_load(&l.other_thread), 0);
  assert_false(pthread_equal(l.first_thread, pthread_self()));
  assert_mm_ok(mm_lane_free(l.lane));
  assert_mm_ok(mm_loop_free(loop));
}

/* Calls queued behind a closed gate when mm_lane_free is called all run
 * before it returns. */
enum { LANE_QUEUED = 5 };

typedef struct {
  mm_lane_t *lane;
  blocker_t  first;
  counter_t  runs;
  int        results[LANE_QUEUED];
  int        gate_result;
  int        free_result;
  int        runs_when_freed;
} lane_free_t;

typedef struct {
  lane_free_t *f;
  int          i;
} lane_free_arg_t;

static int lf_caller(void *arg) {
  lane_free_arg_t *a = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = a->f->lane;
  if (a->i < 0)
    a->f->gate_result = mm_run_sync_ex(block_on_gate, &a->f->first, &o);
  else
    a->f->results[a->i] = mm_run_sync_ex(count_call, &a->f->runs, &o);
  return 0;
}

static int lf_freer(void *arg) {
  lane_free_t *f = arg;
  f->free_result = mm_lane_free(f->lane);
  f->runs_when_freed = atomic_load(&f->runs.ran);
  return 0;
}

/* Runs once the freer has parked in mm_lane_free (FIFO). */
static int lf_opener(void *arg) {
  lane_free_t *f = arg;
  mm_test_latch_add(&f->first.gate, 1);
  return 0;
}

static void test_lane_free_waits_for_the_queued_calls(void **state) {
  mm_loop_t *loop = new_loop();
  lane_free_t f;
  memset(&f, 0, sizeof f);
  memset(f.results, 0x55, sizeof f.results);
  blocker_init(&f.first, 9);
  assert_mm_ok(mm_lane_new(loop, "free", &f.lane));
  lane_free_arg_t args[LANE_QUEUED + 1];
  mm_coro_t *c[LANE_QUEUED + 3];
  for (int i = 0; i <= LANE_QUEUED; i++) {
    args[i].f = &f;
    args[i].i = i - 1;   /* the first holds the lane */
    assert_mm_ok(mm_spawn(loop, lf_caller, &args[i], &c[i]));
  }
  assert_mm_ok(mm_spawn(loop, lf_freer, &f, &c[LANE_QUEUED + 1]));
  assert_mm_ok(mm_spawn(loop, lf_opener, &f, &c[LANE_QUEUED + 2]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < LANE_QUEUED + 3; i++)
    assert_mm_ok(mm_join(c[i]));
  assert_mm_ok(f.free_result);
  assert_int_equal(f.runs_when_freed, LANE_QUEUED);
  assert_status(f.gate_result, 9);
  for (int i = 0; i < LANE_QUEUED; i++)
    assert_mm_ok(f.results[i]);
  assert_int_equal(wait_for_thread_count("mm-lane-free", 0, 5000), 0);
  assert_mm_ok(mm_loop_free(loop));
  blocker_destroy(&f.first);
}

typedef struct {
  mm_lane_t *lane;
  where_t    w;
  char       name[16];
  int        result;
} lane_plain_t;

static int record_lane_call(void *arg) {
  lane_plain_t *p = arg;
  if (pthread_getname_np(pthread_self(), p->name, sizeof p->name) != 0)
    strcpy(p->name, "?");
  return record_where(&p->w);
}

static void *plain_thread_calls_lane(void *arg) {
  lane_plain_t *p = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = p->lane;
  p->result = mm_run_sync_ex(record_lane_call, p, &o);
  return NULL;
}

static void test_lane_call_from_a_plain_thread_runs_on_the_lane_thread(
    void **state) {
  mm_loop_t *loop = new_loop();
  lane_plain_t p, q;
  memset(&p, 0, sizeof p);
  memset(&q, 0, sizeof q);
  assert_mm_ok(mm_lane_new(loop, "plain", &p.lane));
  q.lane = p.lane;
  plain_thread_calls_lane(&p);   /* from this thread */
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, plain_thread_calls_lane, &q), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_status(p.result, 31);
  assert_status(q.result, 31);
  assert_int_equal(p.w.ran, 1);
  assert_int_equal(q.w.ran, 1);
  assert_false(pthread_equal(p.w.thread, pthread_self()));
  assert_true(pthread_equal(q.w.thread, p.w.thread));
  assert_null(p.w.current);
  assert_string_equal(p.name, "mm-lane-plain");
  assert_mm_ok(mm_lane_free(p.lane));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_lane_thread_is_named_mm_lane_name_truncated_to_15_chars(
    void **state) {
  mm_loop_t *loop = new_loop();
  lane_plain_t s, l;
  memset(&s, 0, sizeof s);
  memset(&l, 0, sizeof l);
  assert_mm_ok(mm_lane_new(loop, "db", &s.lane));
  assert_mm_ok(mm_lane_new(loop, "a-very-long-lane-name", &l.lane));
  plain_thread_calls_lane(&s);
  plain_thread_calls_lane(&l);
  assert_string_equal(s.name, "mm-lane-db");
  assert_string_equal(l.name, "mm-lane-a-very-");
  assert_int_equal(strlen(l.name), 15);
  assert_false(pthread_equal(s.w.thread, l.w.thread));
  assert_mm_ok(mm_lane_free(s.lane));
  assert_mm_ok(mm_lane_free(l.lane));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_lane_new_and_free_with_null_arguments_return_einval(
    void **state) {
  int base = count_threads_named("mm-lane-");
  mm_loop_t *loop = new_loop();
  mm_lane_t *lane = (mm_lane_t *)&lane;   /* not NULL: must be cleared */
  assert_mm_err(mm_lane_new(NULL, "x", &lane), -EINVAL);
  assert_null(lane);
  assert_mm_err(mm_lane_new(loop, "x", NULL), -EINVAL);
  assert_mm_err(mm_lane_free(NULL), -EINVAL);
  assert_int_equal(wait_for_thread_count("mm-lane-", base, 5000), base);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Many calls ------------------------------------------------------- */

typedef struct {
  int in;
  int out;
} square_t;

static int square(void *arg) {
  square_t *s = arg;
  s->out = s->in * s->in;
  return s->in + 1;
}

typedef struct {
  int id;
  int calls;
  int wrong;
  int done;
} many_t;

static int call_many_times(void *arg) {
  many_t *m = arg;
  for (int k = 0; k < m->calls; k++) {
    square_t s = { m->id * 256 + k, -1 };   /* its square fits an int */
    int r = mm_run_sync(square, &s);
    if (r != s.in + 1 || s.out != s.in * s.in)
      m->wrong++;
    m->done++;
  }
  return m->id;
}

static void test_many_coroutines_make_many_calls_with_correct_results(
    void **state) {
  enum { CORO = 64 };
  int calls = mm_test_under_valgrind() ? 10 : MM_TEST_SCALE(200, 20);
  mm_loop_t *loop = new_loop();
  many_t m[CORO];
  mm_coro_t *c[CORO];
  for (int i = 0; i < CORO; i++) {
    m[i] = (many_t){ .id = i, .calls = calls };
    assert_mm_ok(mm_spawn(loop, call_many_times, &m[i], &c[i]));
  }
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < CORO; i++) {
    assert_status(mm_join(c[i]), i);
    assert_int_equal(m[i].wrong, 0);
    assert_int_equal(m[i].done, calls);
  }
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Workers calling back into the loop -------------------------------- */

typedef struct {
  mm_loop_t *loop;
  pthread_t  loop_thread;
  int        spawn_result;
  int        call_result;
  atomic_int child_ran;
  pthread_t  child_thread;
  mm_coro_t *child_current;
} spawner_t;

static int spawned_child(void *arg) {
  spawner_t *s = arg;
  s->child_thread = pthread_self();
  s->child_current = mm_current();
  set_flag(&s->child_ran);
  return 0;
}

static int spawn_from_worker(void *arg) {
  spawner_t *s = arg;
  s->spawn_result = mm_spawn(s->loop, spawned_child, s, NULL);
  return 4;
}

static int call_spawner(void *arg) {
  spawner_t *s = arg;
  s->loop_thread = pthread_self();
  s->call_result = mm_run_sync(spawn_from_worker, s);
  return 0;
}

static void test_fn_on_a_worker_can_spawn_a_coroutine_on_the_loop(
    void **state) {
  mm_loop_t *loop = new_loop();
  spawner_t s;
  memset(&s, 0, sizeof s);
  s.loop = loop;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_spawner, &s, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(s.spawn_result);
  assert_status(s.call_result, 4);
  assert_int_equal(atomic_load(&s.child_ran), 1);
  assert_true(pthread_equal(s.child_thread, s.loop_thread));
  assert_non_null(s.child_current);
  assert_ptr_not_equal(s.child_current, c);
  assert_mm_ok(mm_loop_free(loop));
}

/* J's call joins T from the worker; T ends only after O, which waits for
 * the join to be under way, has run: the loop serves T and O while the
 * worker blocks in mm_join. */
typedef struct {
  mm_coro_t *target;
  atomic_int joining;
  atomic_int released;
  int        target_saw_release;
  int        other_saw_joining;
  int        call_result;
} joiner_t;

static int join_target(void *arg) {
  joiner_t *j = arg;
  j->target_saw_release = tick_until(&j->released);
  return 99;
}

static int join_from_worker(void *arg) {
  joiner_t *j = arg;
  set_flag(&j->joining);
  return mm_join(j->target);
}

static int call_joiner(void *arg) {
  joiner_t *j = arg;
  j->call_result = mm_run_sync(join_from_worker, j);
  return 0;
}

static int join_other(void *arg) {
  joiner_t *j = arg;
  j->other_saw_joining = tick_until(&j->joining);
  set_flag(&j->released);
  return 0;
}

static void test_fn_on_a_worker_can_join_a_coroutine_of_the_loop(
    void **state) {
  mm_loop_t *loop = new_loop();
  joiner_t j;
  memset(&j, 0, sizeof j);
  mm_coro_t *jc, *oc;
  assert_mm_ok(mm_spawn(loop, join_target, &j, &j.target));
  assert_mm_ok(mm_spawn(loop, call_joiner, &j, &jc));
  assert_mm_ok(mm_spawn(loop, join_other, &j, &oc));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(jc));
  assert_mm_ok(mm_join(oc));
  assert_true(j.other_saw_joining);
  assert_true(j.target_saw_release);
  assert_status(j.call_result, 99);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Shutdown --------------------------------------------------------- */

/* A's call holds the only worker; B's is queued behind it; K, spawned
 * last, tells the test thread both have parked.  mm_loop_free cancels B,
 * whose queued call must never run; B then opens A's gate. */
typedef struct {
  blocker_t        holder;
  counter_t        queued_runs;
  mm_test_latch_t  parked;
  int              a_result;
  int              b_result;
} free_queued_t;

static int fq_a(void *arg) {
  free_queued_t *f = arg;
  f->a_result = mm_run_sync(block_on_gate, &f->holder);
  return 0;
}

static int fq_b(void *arg) {
  free_queued_t *f = arg;
  f->b_result = mm_run_sync(count_call, &f->queued_runs);
  mm_test_latch_add(&f->holder.gate, 1);
  return 0;
}

static int fq_k(void *arg) {
  free_queued_t *f = arg;
  mm_test_latch_add(&f->parked, 1);
  return 0;
}

static void test_loop_free_with_a_queued_call_cancels_it_and_it_never_runs(
    void **state) {
  mm_loop_t *loop = new_loop_with(0, 1, 0);
  free_queued_t f;
  memset(&f, 0, sizeof f);
  blocker_init(&f.holder, 3);
  mm_test_latch_init(&f.parked);
  f.a_result = f.b_result = 12345;
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);   /* it warns of the live coroutines */
  assert_mm_ok(mm_spawn(loop, fq_a, &f, NULL));
  assert_mm_ok(mm_spawn(loop, fq_b, &f, NULL));
  assert_mm_ok(mm_spawn(loop, fq_k, &f, NULL));
  assert_mm_ok(mm_loop_start(loop));
  mm_test_latch_wait(&f.parked, 1);        /* A and B have parked */
  mm_test_latch_wait(&f.holder.running, 1);  /* A's call holds the worker */
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  assert_status(f.a_result, 3);
  assert_status(f.b_result, -ECANCELED);
  assert_int_equal(atomic_load(&f.queued_runs.ran), 0);
  mm_test_log_destroy(&log);
  mm_test_latch_destroy(&f.parked);
  blocker_destroy(&f.holder);
}


/* ---- A cancel from another thread racing the call -------------------- */

/* mm_cancel from a plain thread lands anywhere in the call: before it
 * (-ECANCELED, fn never runs), while it is queued (the same), while it
 * runs or after (fn's value, fn ran before mm_run_sync returned).  Never
 * both, never fn after the return, and one answer only.  The canceller
 * spins on a flag the caller sets just before the call, so it lands
 * inside the call often; a fresh loop each round makes the call start a
 * worker, which widens the time between submit and park. */
typedef struct {
  mm_coro_t *c;
  atomic_int about_to_call;
  atomic_int fn_ran;
  atomic_int caller_returned;
  atomic_int fn_ran_after_return;
  int        result;
} racing_cancel_t;

static int racing_fn(void *arg) {
  racing_cancel_t *rc = arg;
  atomic_store(&rc->fn_ran, 1);
  if (atomic_load(&rc->caller_returned))
    atomic_store(&rc->fn_ran_after_return, 1);
  return 5;
}

static int racing_caller(void *arg) {
  racing_cancel_t *rc = arg;
  atomic_store_explicit(&rc->about_to_call, 1, memory_order_release);
  rc->result = mm_run_sync(racing_fn, rc);
  atomic_store(&rc->caller_returned, 1);
  return 0;
}

static void *racing_canceller(void *arg) {
  racing_cancel_t *rc = arg;
  while (!atomic_load_explicit(&rc->about_to_call, memory_order_acquire))
    ;
  mm_cancel(rc->c);
  return NULL;
}

/* Returns the number of rounds that broke the contract; prints the
 * first. */
static int race_cancel_rounds(int rounds) {
  int bad = 0;
  for (int i = 0; i < rounds; i++) {
    mm_loop_t *loop;
    if (mm_loop_new(&loop, NULL) != 0)
      return -1;
    racing_cancel_t *rc = calloc(1, sizeof *rc);
    pthread_t th;
    if (rc == NULL || mm_spawn(loop, racing_caller, rc, &rc->c) != 0 ||
        pthread_create(&th, NULL, racing_canceller, rc) != 0)
      return -1;
    mm_loop_run(loop);
    pthread_join(th, NULL);
    mm_join(rc->c);
    mm_loop_free(loop);   /* joins the workers: fn has run, if ever */
    int ran = atomic_load(&rc->fn_ran);
    bool ok = (rc->result == -ECANCELED && !ran) ||
              (rc->result == 5 && ran);
    if (!ok || atomic_load(&rc->fn_ran_after_return)) {
      if (bad++ == 0)
        printf("round %d: mm_run_sync returned %d (%s), fn ran: %d, "
               "fn ran after mm_run_sync returned: %d\n", i, rc->result,
               mm_strerror(rc->result), ran,
               atomic_load(&rc->fn_ran_after_return));
    }
    free(rc);
  }
  return bad;
}

static void race_cancel_in_child(void *arg) {
  int rounds = *(int *)arg;
  int bad = race_cancel_rounds(rounds);
  if (bad != 0) {
    printf("%d of %d rounds broke the contract\n", bad, rounds);
    fflush(stdout);
    _exit(1);
  }
}

static void test_cancel_from_another_thread_racing_the_call_answers_it_once(
    void **state) {
  mm_test_skip_fork_threads_if_emulated();
  int rounds = mm_test_under_valgrind() ? 30 : MM_TEST_SCALE(300, 50);
#ifdef MM_TEST_TSAN
  /* TSan does not let a forked child start threads: run here. */
  assert_int_equal(race_cancel_rounds(rounds), 0);
#else
  /* In a child: a broken round may crash the process. */
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(race_cancel_in_child, &rounds, &child), 0);
  if (!child.exited || child.code != 0)
    fail_msg("child %s %d; output:\n%s", child.exited ? "exited with"
             : "was killed by signal", child.code, child.out);
#endif
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_run_sync_runs_fn_on_a_worker_while_the_loop_serves_others),
    mm_test(test_run_sync_returns_fn_values_and_errors_unchanged),
    mm_test(test_eight_calls_that_only_end_together_all_complete),
    mm_test(test_worker_threads_are_named_mm_worker_n),
    mm_test(test_pool_max_threads_bounds_the_calls_running_at_once),
    mm_test(test_idle_workers_exit_after_pool_idle_ms),
    mm_test(test_pool_min_threads_keeps_workers_alive_when_idle),
    mm_test(test_quick_calls_from_100_callers_leave_cpus_plus_one_threads),
    mm_test(test_calls_that_compute_for_long_leave_cpus_plus_one_threads),
    mm_test(test_calls_that_block_get_a_thread_each_up_to_the_maximum),
    mm_test(test_a_call_behind_computations_holding_every_cpu_still_runs),
    mm_test(test_run_sync_on_a_plain_thread_runs_fn_inline),
    mm_test(test_run_sync_inside_a_run_sync_call_runs_inline_on_the_worker),
    mm_test(test_run_sync_from_raw_callback_returns_edeadlk),
    mm_test(test_run_sync_with_null_fn_or_bad_options_returns_einval),
    mm_test(test_cancel_of_a_queued_call_removes_it_and_it_never_runs),
    mm_test(test_cancel_in_the_pass_that_made_the_call_and_it_never_runs),
    mm_test(test_timers_fire_while_quick_calls_keep_the_loop_polling),
    mm_test(test_a_long_pass_hands_its_first_calls_over_before_it_ends),
    mm_test(test_a_call_waiting_long_for_a_full_pool_is_reported_once),
    mm_test(test_cancel_of_a_running_call_waits_for_it_and_returns_its_value),
    mm_test(test_abandon_on_cancel_returns_ecanceled_at_once_then_cleans_up),
    mm_test(test_cancelled_turns_true_inside_fn_when_the_caller_is_cancelled),
    mm_test(test_timeout_of_a_queued_call_returns_etimedout_and_it_never_runs),
    mm_test(test_abandoned_running_call_times_out_etimedout_then_cleans_up),
    mm_test(test_abandoned_call_sees_its_own_coroutine_after_it_ended),
    mm_test(test_loop_free_from_its_own_worker_lane_or_sensitive_thread),
    mm_test(test_timeout_of_a_running_call_sets_cancelled_then_etimedout),
    mm_test(test_fn_sees_the_awaiting_coroutine_as_current_and_its_locals),
    mm_test(test_lane_runs_calls_on_one_thread_one_at_a_time_in_order),
    mm_test(test_lane_free_waits_for_the_queued_calls),
    mm_test(test_lane_call_from_a_plain_thread_runs_on_the_lane_thread),
    mm_test(test_lane_thread_is_named_mm_lane_name_truncated_to_15_chars),
    mm_test(test_lane_new_and_free_with_null_arguments_return_einval),
    mm_test(test_many_coroutines_make_many_calls_with_correct_results),
    mm_test(test_fn_on_a_worker_can_spawn_a_coroutine_on_the_loop),
    mm_test(test_fn_on_a_worker_can_join_a_coroutine_of_the_loop),
    mm_test(test_loop_free_with_a_queued_call_cancels_it_and_it_never_runs),
    mm_test(test_cancel_from_another_thread_racing_the_call_answers_it_once),
  };
  return mm_run_tests(tests);
}
