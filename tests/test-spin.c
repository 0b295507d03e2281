/* White-box tests of the spin-before-sleeping mechanism (lib/spin.c):
 * the process-wide cap on spinners, and the adaptive limit that a spin
 * finding nothing halves and a quick wake-up restores.  No loops and no
 * pools run here, so this program's spinner places are all free. */
#include "config.h"

#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "mm-internal.h"

static bool always(const void *arg) {
  (void) arg;
  return true;
}

static bool never(const void *arg) {
  (void) arg;
  return false;
}

static unsigned half_the_cpus(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 1 ? (unsigned) (n / 2) : 0;
}

static void test_at_most_half_the_cpus_spin_at_once(void **state) {
  unsigned max = half_the_cpus();
  mm__spin_t s;
  mm__spin_init(&s);
  for (int round = 0; round < 3; round++) {
    for (unsigned i = 0; i < max; i++)
      assert_true(mm__spin_begin(&s));
    assert_false(mm__spin_begin(&s));   /* no place left (none on 1 CPU) */
    /* Each wait gives its place back, whatever it finds. */
    for (unsigned i = 0; i < max; i++)
      assert_int_equal(mm__spin_wait(&s, always, NULL), MM__SPIN_CAME);
  }
}

static void test_spins_that_miss_halve_the_next_then_stop(void **state) {
  if (half_the_cpus() == 0)
    skip();
  mm__spin_t s;
  mm__spin_init(&s);
  uint64_t first = s.limit_ns;
  assert_true(first >= 10000);          /* outlasts a wake-up */
  uint64_t prev = first;
  int spins = 0;
  while (mm__spin_begin(&s)) {
    assert_true(++spins <= 20);
    uint64_t t0 = uv_hrtime();
    assert_int_equal(mm__spin_wait(&s, never, NULL), MM__SPIN_MISSED);
    mm__spin_missed(&s);
    /* It lasted its limit (a clock read later at most: no upper bound
     * is checked, a preempted thread may come back late). */
    assert_true(uv_hrtime() - t0 >= prev);
    if (s.limit_ns != 0) {
      assert_true(s.limit_ns == prev / 2);
      assert_true(s.limit_ns >= 2000);  /* the shortest spin */
    } else {
      assert_true(prev / 2 < 2000);     /* below it: none at all */
    }
    prev = s.limit_ns;
  }
  assert_true(spins >= 2);
  assert_true(s.limit_ns == 0);         /* sleeps at once now */
  assert_false(mm__spin_begin(&s));     /* and took no place */
  for (unsigned i = 0; i < half_the_cpus(); i++) {
    mm__spin_t any;
    mm__spin_init(&any);
    assert_true(mm__spin_begin(&any));  /* every place is free */
  }
  mm__spin_t any;
  mm__spin_init(&any);
  for (unsigned i = 0; i < half_the_cpus(); i++)
    assert_int_equal(mm__spin_wait(&any, always, NULL), MM__SPIN_CAME);
}

/* A mark at time at on CPU cpu. */
static mm__spin_mark_t mark(uint64_t at, int cpu) {
  return (mm__spin_mark_t) { at, cpu };
}

static void test_a_wake_posted_soon_restores_the_full_spin(void **state) {
  mm__spin_t s;
  mm__spin_init(&s);
  uint64_t full = s.limit_ns;
  uint64_t t = 1000000000;
  mm__spin_mark_t slept = mark(t, 0);   /* the wait began, on CPU 0 */
  s.limit_ns = 0;                       /* stopped spinning */
  /* Posted long after the wait began (a wake-up's latency does not
   * count: the poster's time is what is compared): it stays stopped. */
  mm__spin_woken(&s, slept, mark(t + full, 1));
  assert_true(s.limit_ns == 0);
  mm__spin_woken(&s, slept, mark(0, 1));        /* unknown: no change */
  assert_true(s.limit_ns == 0);
  assert_false(mm__spin_begin(&s));
  /* Posted within a full spin's time from another CPU: a spin would
   * have caught it. */
  mm__spin_woken(&s, slept, mark(t + full - 1, 1));
  assert_true(s.limit_ns == full);
  /* Posted before the wait began (the waiter had not seen it yet). */
  s.limit_ns = 0;
  mm__spin_woken(&s, slept, mark(t - 10, 1));
  assert_true(s.limit_ns == full);
  /* Which CPU the poster ran on is not known: time alone decides. */
  s.limit_ns = 0;
  mm__spin_woken(&s, slept, mark(t + 10, -1));
  assert_true(s.limit_ns == full);
}

/* An answer posted soon, but from the CPU the waiter slept on, came
 * because the waiter gave that CPU up: a spin there would have kept its
 * poster off it (caller and loop sharing one CPU beside a busy process).
 * It restores nothing. */
static void test_a_wake_posted_soon_on_the_waiters_cpu_restores_nothing(
    void **state) {
  mm__spin_t s;
  mm__spin_init(&s);
  uint64_t t = 1000000000;
  s.limit_ns = 0;
  mm__spin_woken(&s, mark(t, 1), mark(t + 10, 1));
  assert_true(s.limit_ns == 0);
  assert_false(mm__spin_begin(&s));
}

/* A mark reads the clock and, where the C library tells, the CPU. */
static void test_a_mark_is_now_and_here(void **state) {
  uint64_t before = uv_hrtime();
  mm__spin_mark_t m = mm__spin_mark();
  assert_true(m.at >= before && m.at <= uv_hrtime());
#ifdef HAVE_SCHED_GETCPU
  assert_true(m.cpu >= 0);
#else
  assert_int_equal(m.cpu, -1);
#endif
}

/* The program's sched_yield: as if another thread took the CPU for a
 * while (it sleeps 20 us), counted, so that a spin's yields are seen. */
static atomic_int yields;

int sched_yield(void) {
  atomic_fetch_add(&yields, 1);
  struct timespec ts = { 0, 20000 };
  nanosleep(&ts, NULL);
  return 0;
}

static bool yielded(const void *arg) {
  (void) arg;
  return atomic_load(&yields) > 0;
}

static void test_an_answer_after_the_cpu_was_given_away_came_late(
    void **state) {
  if (half_the_cpus() == 0)
    skip();
  mm__spin_t s;
  mm__spin_init(&s);
  s.limit_ns = 1000000000;              /* it ends by the answer */
  atomic_store(&yields, 0);
  assert_true(mm__spin_begin(&s));
  /* Ready only once the spin has yielded, and the yield gave the CPU
   * away: the answer needed this CPU. */
  assert_int_equal(mm__spin_wait(&s, yielded, NULL), MM__SPIN_CAME_LATE);
  assert_true(atomic_load(&yields) >= 1);
  assert_true(mm__yield_cpu());         /* 20 us away: seen as given */
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_at_most_half_the_cpus_spin_at_once),
    mm_test(test_spins_that_miss_halve_the_next_then_stop),
    mm_test(test_a_wake_posted_soon_restores_the_full_spin),
    mm_test(test_a_wake_posted_soon_on_the_waiters_cpu_restores_nothing),
    mm_test(test_a_mark_is_now_and_here),
    mm_test(test_an_answer_after_the_cpu_was_given_away_came_late),
  };
  return mm_run_tests(tests);
}
