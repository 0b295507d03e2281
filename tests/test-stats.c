/* mm_loop_stats: the counters of the core and the pool, and bad input. */
#define _GNU_SOURCE
#include "helpers.h"

#include <sched.h>
#include <sys/resource.h>
#include <time.h>

static int return_zero(void *arg) {
  return 0;
}

static int sleep_long(void *arg) {
  return mm_sleep(100000);
}

static void test_stats_with_null_arguments_return_einval(void **state) {
  mm_loop_t *loop;
  mm_stats_t st;
  assert_mm_err(mm_loop_stats(NULL, &st), -EINVAL);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_err(mm_loop_stats(loop, NULL), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_stats_of_a_new_loop_are_zero(void **state) {
  mm_loop_t *loop;
  mm_stats_t st;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  memset(&st, 0xff, sizeof st);
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.coros_live, 0);
  assert_int_equal(st.coros_spawned, 0);
  assert_int_equal(st.sync_calls, 0);
  assert_int_equal(st.lane_calls, 0);
  assert_int_equal(st.lane_queued, 0);
  assert_int_equal(st.pool_threads, 0);
  assert_int_equal(st.slow_steps, 0);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_stats_count_spawned_and_live_coroutines(void **state) {
  mm_loop_t *loop;
  mm_coro_t *c[3], *quick;
  mm_stats_t st;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_spawn(loop, sleep_long, NULL, &c[i]));
  assert_mm_ok(mm_spawn(loop, return_zero, NULL, &quick));
  assert_mm_ok(mm_join(quick));
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.coros_spawned, 4);
  assert_int_equal(st.coros_live, 3);   /* the sleepers */
  for (int i = 0; i < 3; i++)
    assert_mm_ok(mm_cancel(c[i]));
  for (int i = 0; i < 3; i++)
    assert_status(mm_join(c[i]), -ECANCELED);
  /* A joined coroutine has ended: it is no longer counted. */
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.coros_live, 0);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  mm_stats_t inside;
  mm_loop_t *loop;
} seen_t;

static int record_stats(void *arg) {
  seen_t *s = arg;
  return mm_loop_stats(s->loop, &s->inside);
}

static int call_and_record(void *arg) {
  return mm_run_sync(record_stats, arg);
}

static void test_stats_count_run_sync_calls_and_workers(void **state) {
  mm_loop_t *loop;
  mm_stats_t st;
  seen_t seen = { .loop = NULL };
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  seen.loop = loop;
  assert_mm_ok(mm_spawn(loop, call_and_record, &seen, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  /* Seen from inside the call: it is running, on a worker. */
  assert_int_equal(seen.inside.sync_running, 1);
  assert_true(seen.inside.pool_threads >= 1);
  assert_int_equal(seen.inside.coros_live, 1);
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.sync_calls, 1);
  assert_int_equal(st.sync_queued, 0);
  /* sync_running drops once the worker is back in the pool, which may be
   * just after the caller has already been resumed: not asserted here. */
  assert_mm_ok(mm_loop_free(loop));
}

/* Lane calls are counted apart: sync_calls and the pool's counters are
 * the worker pool's only. */
typedef struct {
  mm_lane_t *lane;
  int        results[5];
} lane_calls_t;

static int calls_on_lane_and_pool(void *arg) {
  lane_calls_t *l = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = l->lane;
  for (int i = 0; i < 3; i++)
    l->results[i] = mm_run_sync_ex(return_zero, NULL, &o);
  for (int i = 3; i < 5; i++)
    l->results[i] = mm_run_sync(return_zero, NULL);
  return 0;
}

static void test_stats_count_lane_calls_apart_from_the_pools(void **state) {
  mm_loop_t *loop;
  mm_stats_t st;
  lane_calls_t l;
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_lane_new(loop, "count", &l.lane));
  assert_mm_ok(mm_spawn(loop, calls_on_lane_and_pool, &l, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  for (int i = 0; i < 5; i++)
    assert_status(l.results[i], 0);
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.sync_calls, 2);
  assert_int_equal(st.lane_calls, 3);
  assert_int_equal(st.lane_queued, 0);
  assert_mm_ok(mm_lane_free(l.lane));
  assert_mm_ok(mm_loop_free(loop));
}

/* Plain threads call a lane that the first call holds: the two behind it
 * are lane_queued (the running one is not), and none is the pool's. */
typedef struct {
  mm_lane_t      *lane;
  mm_test_latch_t running;
  mm_test_latch_t gate;
  int             result;
} lane_queue_t;

static int hold_lane(void *arg) {
  lane_queue_t *q = arg;
  mm_test_latch_add(&q->running, 1);
  mm_test_latch_wait(&q->gate, 1);
  return 0;
}

static void *call_lane(void *arg) {
  lane_queue_t *q = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = q->lane;
  intptr_t r = mm_run_sync_ex(hold_lane, q, &o);
  return (void *) r;
}

static void test_stats_lane_queued_counts_calls_waiting_for_a_lane(
    void **state) {
  mm_loop_t *loop;
  mm_stats_t st;
  lane_queue_t q;
  pthread_t th[3];
  mm_test_latch_init(&q.running);
  mm_test_latch_init(&q.gate);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_lane_new(loop, "queue", &q.lane));
  assert_int_equal(pthread_create(&th[0], NULL, call_lane, &q), 0);
  mm_test_latch_wait(&q.running, 1);
  for (int i = 1; i < 3; i++)
    assert_int_equal(pthread_create(&th[i], NULL, call_lane, &q), 0);
  /* Their calls reach the queue when they do: waited for, not timed. */
  do
    assert_mm_ok(mm_loop_stats(loop, &st));
  while (st.lane_queued < 2 && sched_yield() == 0);
  assert_int_equal(st.lane_queued, 2);
  assert_int_equal(st.lane_calls, 3);
  assert_int_equal(st.sync_calls, 0);
  assert_int_equal(st.sync_queued, 0);
  assert_int_equal(st.sync_running, 0);
  mm_test_latch_add(&q.gate, 1);
  for (int i = 0; i < 3; i++) {
    void *r;
    pthread_join(th[i], &r);
    assert_int_equal((intptr_t) r, 0);
  }
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.lane_queued, 0);
  assert_int_equal(st.lane_calls, 3);
  assert_mm_ok(mm_lane_free(q.lane));
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&q.gate);
  mm_test_latch_destroy(&q.running);
}

static int hold_the_loop(void *arg) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do
    clock_gettime(CLOCK_MONOTONIC, &t);
  while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000
         < 30);
  return 0;
}

static void test_a_step_longer_than_slow_step_ms_is_counted_and_logged(
    void **state) {
  mm_loop_t *loop;
  mm_loop_options_t o;
  mm_stats_t st;
  mm_test_log_t log;
  mm_loop_options_init(&o);
  o.slow_step_ms = 5;
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = "hog";
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_spawn_ex(loop, hold_the_loop, NULL, &so, NULL));
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);
  int rc = mm_loop_run(loop);
  mm_set_log(NULL, NULL);
  assert_mm_ok(rc);
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.slow_steps, 1);
  assert_true(log.max_level >= MM_LOG_WARN);
  if (strstr(log.text, "hog") == NULL)
    fail_msg("the warning does not name the coroutine:\n%s", log.text);
  mm_test_log_destroy(&log);
  assert_mm_ok(mm_loop_free(loop));
}

static int nothing(void *arg) {
  return 0;
}

/* Many quick calls in a row: afterwards the workers' and the threads'
 * spins are at their longest and the loop polls first -- every one of
 * them must still end on its own. */
static int start_workers(void *arg) {
  for (int i = 0; i < 1000; i++) {
    int r = mm_run_sync(nothing, NULL);
    if (r != 0)
      return r;
  }
  return 0;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* DESIGN.md: every spin is bounded, so an idle loop (on its own thread)
 * and idle workers use no CPU, even right after quick round trips of
 * both bridges.  This measures what 300 ms of idleness costs the whole
 * process; it allows for the sanitizers' own threads. */
static void test_an_idle_loop_and_idle_workers_use_no_cpu(void **state) {
  mm_loop_t *loop;
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.pool_min_threads = 2;
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_loop_start(loop));
  for (int i = 0; i < 1000; i++)
    assert_mm_ok(mm_run_async(loop, nothing, NULL));
  assert_mm_ok(mm_run_async(loop, start_workers, NULL));
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_true(st.pool_threads >= 2);
  double before = cpu_seconds();
  struct timespec idle = { 0, 300 * 1000000 };
  nanosleep(&idle, NULL);
  double used = cpu_seconds() - before;
  if (used > 0.05)
    fail_msg("an idle loop with 2 idle workers used %.3f s of CPU in "
             "0.3 s", used);
  assert_mm_ok(mm_loop_free(loop));
}

/* Captures what mm_loop_dump writes. */
static char *dump_of(mm_loop_t *loop, int *rc) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  *rc = mm_loop_dump(loop, f);
  fclose(f);
  return text;
}

static int dump_from_inside(void *arg) {
  mm_loop_t *loop = arg;
  int rc;
  char *text = dump_of(loop, &rc);
  int found = rc == 0 && strstr(text, "'dumper' running") != NULL;
  free(text);
  return found ? 0 : -1;
}

static void test_dump_lists_live_coroutines_from_any_thread(void **state) {
  mm_loop_t *loop;
  mm_coro_t *c[2];
  mm_spawn_options_t o;
  int rc;
  assert_mm_err(mm_loop_dump(NULL, stdout), -EINVAL);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_err(mm_loop_dump(loop, NULL), -EINVAL);
  mm_spawn_options_init(&o);
  o.name = "sleeper-one";
  assert_mm_ok(mm_spawn_ex(loop, sleep_long, NULL, &o, &c[0]));
  /* Nobody drives the loop yet: dumped right here. */
  char *text = dump_of(loop, &rc);
  assert_mm_ok(rc);
  if (strstr(text, "'sleeper-one' ready") == NULL)
    fail_msg("undriven dump:\n%s", text);
  free(text);

  assert_mm_ok(mm_loop_start(loop));
  o.name = "sleeper-two";
  assert_mm_ok(mm_spawn_ex(loop, sleep_long, NULL, &o, &c[1]));
  assert_mm_ok(mm_cancel(c[0]));
  assert_status(mm_join(c[0]), -ECANCELED);
  /* From this plain thread, while the loop runs on its own: the second
   * sleeper has started (the cancel of the first was handled after it
   * was admitted), so it is waiting. */
  text = dump_of(loop, &rc);
  assert_mm_ok(rc);
  if (strstr(text, "'sleeper-two'") == NULL ||
      strstr(text, "sleeper-one") != NULL)
    fail_msg("dump from a plain thread:\n%s", text);
  free(text);

  /* From inside a coroutine of the loop: it sees itself running. */
  mm_coro_t *d;
  o.name = "dumper";
  assert_mm_ok(mm_spawn_ex(loop, dump_from_inside, loop, &o, &d));
  assert_mm_ok(mm_join(d));
  assert_mm_ok(mm_cancel(c[1]));
  assert_status(mm_join(c[1]), -ECANCELED);
  assert_mm_ok(mm_loop_stop(loop));
  assert_mm_err(mm_loop_dump(loop, stdout), -ESHUTDOWN);
  assert_mm_ok(mm_loop_free(loop));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_stats_with_null_arguments_return_einval),
    mm_test(test_stats_of_a_new_loop_are_zero),
    mm_test(test_stats_count_spawned_and_live_coroutines),
    mm_test(test_stats_count_run_sync_calls_and_workers),
    mm_test(test_stats_count_lane_calls_apart_from_the_pools),
    mm_test(test_stats_lane_queued_counts_calls_waiting_for_a_lane),
    mm_test(test_a_step_longer_than_slow_step_ms_is_counted_and_logged),
    mm_test(test_an_idle_loop_and_idle_workers_use_no_cpu),
    mm_test(test_dump_lists_live_coroutines_from_any_thread),
  };
  return mm_run_tests(tests);
}
