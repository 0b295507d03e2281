/* White-box: every deadline the library hands pthread_cond_timedwait is on
 * CLOCK_MONOTONIC, on a condition variable made for that clock, and so is
 * every deadline it hands mm__futex_wait (lib/futex.c: the futex system
 * call's absolute CLOCK_MONOTONIC wait, or a condition variable of
 * mm__cond_init where there is none), so that a step of the wall clock
 * moves none of them.
 *
 * Shown without touching the wall clock: the program is linked with
 * --wrap=pthread_cond_init,--wrap=pthread_cond_timedwait and
 * --wrap=mm__futex_wait, and libmm.la is a static archive, so the
 * library's own calls come to the wrappers below.
 * They note each condition variable's clock (from its attributes) and,
 * for each timed wait, the deadline against CLOCK_MONOTONIC's time at the
 * call, then call the real functions.  A deadline taken from the wall
 * clock lies decades away on the monotonic one, and a condition variable
 * made without attributes is on the wall clock: either fails a check.
 * Each test sets a far deadline (an hour) where the library takes one --
 * a plain thread's mm_deadline_push, a pool worker's idle time, the slow
 * step watchdog's period -- and ends the wait by waking it, not by time. */
#include "config.h"

#include <sched.h>
#include <time.h>

#include "helpers.h"
#include "mm-internal.h"

#define HOUR_MS ((uint64_t) 3600 * 1000)
#define NS_PER_S INT64_C(1000000000)

int __real_pthread_cond_init(pthread_cond_t *cv, const pthread_condattr_t *a);
int __real_mm__futex_wait(_Atomic uint32_t *word, uint32_t seq,
                          const struct timespec *deadline);
int __real_pthread_cond_timedwait(pthread_cond_t *cv, pthread_mutex_t *mu,
                                  const struct timespec *abstime);

/* What the wrappers saw; protected by seen.mu (a mutex, not wrapped).
 * The test thread waits on seen.cv (pthread_cond_wait: not wrapped) for
 * a timed wait to start. */
#define MAX_CONDS 512
#define MAX_WAITS 4096
typedef struct {
  const pthread_cond_t *cv;
  clockid_t clock;
} cond_seen_t;
typedef struct {
  clockid_t clock;            /* the condition variable's; -1: unknown */
  int64_t left_ns;            /* deadline - CLOCK_MONOTONIC now */
} wait_seen_t;
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  cond_seen_t conds[MAX_CONDS];
  int nconds;                 /* may wrap: the oldest are reused */
  wait_seen_t waits[MAX_WAITS];
  int nwaits;
  int lost;                   /* waits past MAX_WAITS */
} seen = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static int64_t ts_ns(const struct timespec *ts) {
  return (int64_t) ts->tv_sec * NS_PER_S + ts->tv_nsec;
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts_ns(&ts);
}

int __wrap_pthread_cond_init(pthread_cond_t *cv, const pthread_condattr_t *a) {
  int r = __real_pthread_cond_init(cv, a);
  if (r != 0)
    return r;
  clockid_t clock = CLOCK_REALTIME;   /* POSIX's default */
  if (a != NULL)
    pthread_condattr_getclock(a, &clock);
  pthread_mutex_lock(&seen.mu);
  /* The newest entry for an address wins: memory is reused. */
  int i;
  for (i = 0; i < seen.nconds && seen.conds[i].cv != cv; i++)
    ;
  if (i == seen.nconds) {
    if (seen.nconds < MAX_CONDS)
      seen.nconds++;
    else
      i = 0;
  }
  seen.conds[i] = (cond_seen_t) { cv, clock };
  pthread_mutex_unlock(&seen.mu);
  return 0;
}

/* Notes a timed wait that is about to start. */
static void note_wait(clockid_t clock, int64_t left_ns) {
  pthread_mutex_lock(&seen.mu);
  if (seen.nwaits < MAX_WAITS)
    seen.waits[seen.nwaits++] = (wait_seen_t) { clock, left_ns };
  else
    seen.lost++;
  pthread_cond_broadcast(&seen.cv);
  pthread_mutex_unlock(&seen.mu);
}

int __wrap_pthread_cond_timedwait(pthread_cond_t *cv, pthread_mutex_t *mu,
                                  const struct timespec *abstime) {
  /* The per-test watchdog of helpers.h is the test's own, not ours. */
  if (cv == &mm_test_watchdog_.cond)
    return __real_pthread_cond_timedwait(cv, mu, abstime);
  int64_t now = mono_ns();
  pthread_mutex_lock(&seen.mu);
  clockid_t clock = (clockid_t) -1;
  for (int i = 0; i < seen.nconds; i++)
    if (seen.conds[i].cv == cv)
      clock = seen.conds[i].clock;
  pthread_mutex_unlock(&seen.mu);
  note_wait(clock, ts_ns(abstime) - now);
  return __real_pthread_cond_timedwait(cv, mu, abstime);
}

/* A sleep on a word: its deadline is on CLOCK_MONOTONIC by construction
 * (test_futex_deadline_is_on_the_monotonic_clock shows it); what is noted
 * is how far ahead on that clock each deadline lies. */
int __wrap_mm__futex_wait(_Atomic uint32_t *word, uint32_t seq,
                          const struct timespec *deadline) {
  if (deadline != NULL)
    note_wait(CLOCK_MONOTONIC, ts_ns(deadline) - mono_ns());
  return __real_mm__futex_wait(word, seq, deadline);
}

static int reset_seen(void **state) {
  pthread_mutex_lock(&seen.mu);
  seen.nwaits = 0;
  seen.lost = 0;
  pthread_mutex_unlock(&seen.mu);
  return mm_test_watchdog_start(state);
}

#define clock_test(f)                                                         \
  cmocka_unit_test_prestate_setup_teardown(f, reset_seen,                     \
                                           mm_test_watchdog_stop, (void *)#f)

/* Blocks until a timed wait with a deadline at least min_left_ns away has
 * started.  Nothing ends such a wait but the wake the test then sends. */
static void wait_for_far_wait(int64_t min_left_ns) {
  pthread_mutex_lock(&seen.mu);
  for (;;) {
    bool found = false;
    for (int i = 0; i < seen.nwaits && !found; i++)
      found = seen.waits[i].left_ns >= min_left_ns;
    if (found)
      break;
    pthread_cond_wait(&seen.cv, &seen.mu);
  }
  pthread_mutex_unlock(&seen.mu);
}

/* Every timed wait noted so far: a condition variable on CLOCK_MONOTONIC,
 * and a deadline no further than max_left_ns ahead on that clock, give or
 * take a second (rounding to ms; a deadline that passed while the thread
 * was on its way).  Returns how many there were. */
static int check_waits(int64_t max_left_ns) {
  pthread_mutex_lock(&seen.mu);
  int n = seen.nwaits, lost = seen.lost;
  wait_seen_t waits[MAX_WAITS];
  memcpy(waits, seen.waits, sizeof(wait_seen_t) * (size_t) n);
  pthread_mutex_unlock(&seen.mu);
  assert_int_equal(lost, 0);
  for (int i = 0; i < n; i++) {
    if (waits[i].clock != CLOCK_MONOTONIC ||
        waits[i].left_ns > max_left_ns + NS_PER_S ||
        waits[i].left_ns < -NS_PER_S)
      fail_msg("timed wait %d: condition variable clock %d (CLOCK_MONOTONIC "
               "is %d, -1: not made by pthread_cond_init), deadline %.3f s "
               "ahead on the monotonic clock (at most %.3f s + 1 s expected)",
               i, (int) waits[i].clock, (int) CLOCK_MONOTONIC,
               (double) waits[i].left_ns / 1e9, (double) max_left_ns / 1e9);
  }
  return n;
}

/* ---- the helpers themselves ---------------------------------------------- */

static void test_cond_deadline_is_on_the_monotonic_clock(void **state) {
  int64_t before = mono_ns();
  struct timespec ts;
  mm__cond_deadline(&ts, HOUR_MS);
  int64_t after = mono_ns();
  assert_true(ts.tv_nsec >= 0 && ts.tv_nsec < NS_PER_S);
  assert_true(ts_ns(&ts) >= before + (int64_t) HOUR_MS * 1000000);
  assert_true(ts_ns(&ts) <= after + (int64_t) HOUR_MS * 1000000);
}

static void test_cond_deadline_of_zero_is_now(void **state) {
  int64_t before = mono_ns();
  struct timespec ts;
  mm__cond_deadline(&ts, 0);
  int64_t after = mono_ns();
  assert_true(ts_ns(&ts) >= before && ts_ns(&ts) <= after);
}

/* A deadline no wait will see (UINT64_MAX ms) neither overflows time_t
 * nor lands in the past: it is cut to decades ahead. */
static void test_cond_deadline_of_forever_is_far_and_valid(void **state) {
  int64_t before = mono_ns();
  struct timespec ts;
  mm__cond_deadline(&ts, UINT64_MAX);
  assert_true(ts.tv_nsec >= 0 && ts.tv_nsec < NS_PER_S);
  assert_true(ts.tv_sec > before / NS_PER_S + 10 * 365 * 24 * 3600);
}

static void test_cond_init_makes_a_monotonic_condvar(void **state) {
  pthread_cond_t cv;
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  assert_int_equal(mm__cond_init(&cv), 0);
  /* A deadline already passed on the monotonic clock ends the wait at
   * once; the wrapper notes the clock the condition variable was made
   * with. */
  struct timespec ts;
  mm__cond_deadline(&ts, 0);
  pthread_mutex_lock(&mu);
  assert_int_equal(pthread_cond_timedwait(&cv, &mu, &ts), ETIMEDOUT);
  pthread_mutex_unlock(&mu);
  pthread_cond_destroy(&cv);
  assert_int_equal(check_waits(0), 1);
}

/* mm__futex_wait: a word that no longer holds seq returns at once; a
 * deadline already passed on the monotonic clock ends the sleep. */
static void test_futex_returns_at_once_when_it_must(void **state) {
  _Atomic uint32_t word = 5;
  assert_int_equal(mm__futex_wait(&word, 4, NULL), 0);
  struct timespec ts;
  mm__cond_deadline(&ts, 0);
  assert_int_equal(mm__futex_wait(&word, 5, &ts), -ETIMEDOUT);
  assert_true(check_waits(0) >= 1);    /* 2 where emulated: its condvar's */
}

typedef struct {
  _Atomic uint32_t word;
  _Atomic pid_t tid;
  int r;
} sleeper_t;

static void *sleep_an_hour(void *arg) {
  sleeper_t *s = arg;
  atomic_store(&s->tid, (pid_t) mm__thread_tid());
  struct timespec ts;
  mm__cond_deadline(&ts, HOUR_MS);
  do
    s->r = mm__futex_wait(&s->word, 0, &ts);
  while (s->r == 0 && atomic_load(&s->word) == 0);   /* spurious */
  return NULL;
}

/* A deadline an hour ahead on CLOCK_MONOTONIC is an hour ahead to the
 * sleep: were it read on the wall clock, it would lie decades in the past
 * and the sleep would end at once with -ETIMEDOUT.  The sleeper is woken
 * only once the kernel shows it asleep, and must say it was woken. */
static void test_futex_deadline_is_on_the_monotonic_clock(void **state) {
  sleeper_t s = { .r = 1 };
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, sleep_an_hour, &s), 0);
  wait_for_far_wait((int64_t) (HOUR_MS - 60 * 1000) * 1000000);
  pid_t tid;
  while ((tid = atomic_load(&s.tid)) == 0)
    sched_yield();
  unsigned round = 0;
  while (mm__thread_state(tid) != 'S')   /* asleep in the kernel */
    mm__backoff(&round);
  atomic_store(&s.word, 1);
  mm__futex_wake(&s.word, 1);
  pthread_join(t, NULL);
  assert_int_equal(s.r, 0);
  assert_true(check_waits((int64_t) HOUR_MS * 1000000) >= 1);
}

/* ---- the library's timed waits ------------------------------------------ */

typedef struct {
  mm_chan_t *ch;
  int err;
} sender_t;

/* Sends once the receiver is in its timed wait. */
static void *send_when_waiting(void *arg) {
  sender_t *s = arg;
  wait_for_far_wait((int64_t) (HOUR_MS - 60 * 1000) * 1000000);
  static int item;
  s->err = mm_chan_send(s->ch, &item);
  return NULL;
}

static void test_plain_thread_deadline_waits_on_the_monotonic_clock(
    void **state) {
  mm_chan_t *ch;
  assert_mm_ok(mm_chan_new(&ch, 1));
  sender_t s = { ch, 1 };
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, send_when_waiting, &s), 0);
  assert_mm_ok(mm_deadline_push(HOUR_MS));
  void *item = NULL;
  int err = mm_chan_recv(ch, &item);
  assert_mm_ok(mm_deadline_pop());
  pthread_join(t, NULL);
  assert_mm_ok(err);
  assert_mm_ok(s.err);
  assert_non_null(item);
  assert_true(check_waits((int64_t) HOUR_MS * 1000000) >= 1);
  assert_mm_ok(mm_chan_free(ch));
}

static int noop(void *arg) {
  return 7;
}

static int one_sync_call(void *arg) {
  return mm_run_sync(noop, NULL);
}

static void test_idle_worker_waits_on_the_monotonic_clock(void **state) {
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.pool_min_threads = 0;
  o.pool_idle_ms = (unsigned) HOUR_MS;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_loop_start(loop));
  assert_int_equal(mm_run_async(loop, one_sync_call, NULL), 7);
  /* The worker, idle, waits for the next call or its idle hour. */
  wait_for_far_wait((int64_t) (HOUR_MS - 60 * 1000) * 1000000);
  assert_mm_ok(mm_loop_free(loop));
  assert_true(check_waits((int64_t) HOUR_MS * 1000000) >= 1);
}

static void test_slow_step_watchdog_waits_on_the_monotonic_clock(
    void **state) {
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.slow_step_ms = 60 * 1000;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_loop_start(loop));
  /* Its first wait is a slow_step_ms (a minute) away. */
  wait_for_far_wait((int64_t) 50 * NS_PER_S);
  assert_mm_ok(mm_loop_free(loop));
  assert_true(check_waits((int64_t) 60 * NS_PER_S) >= 1);
}

int main(void) {
#ifndef HAVE_PTHREAD_CONDATTR_SETCLOCK
  printf("SKIP: test-clock: this C library has no pthread_condattr_setclock,"
         " so deadlines are on the wall clock (lib/waiter.c)\n");
  return 77;
#endif
  const struct CMUnitTest tests[] = {
    clock_test(test_cond_deadline_is_on_the_monotonic_clock),
    clock_test(test_cond_deadline_of_zero_is_now),
    clock_test(test_cond_deadline_of_forever_is_far_and_valid),
    clock_test(test_cond_init_makes_a_monotonic_condvar),
    clock_test(test_futex_returns_at_once_when_it_must),
    clock_test(test_futex_deadline_is_on_the_monotonic_clock),
    clock_test(test_plain_thread_deadline_waits_on_the_monotonic_clock),
    clock_test(test_idle_worker_waits_on_the_monotonic_clock),
    clock_test(test_slow_step_watchdog_waits_on_the_monotonic_clock),
  };
  return mm_run_tests(tests);
}
