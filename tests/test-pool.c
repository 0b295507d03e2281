/* White-box: the loops' pools share the CPUs (bridge/pool.c, pools_busy).
 * A pool with calls queued or running counts itself busy once, and quick
 * calls get at most CPUs / busy pools awake workers each (at least one):
 * four loops on two CPUs no longer wake two workers each for calls that
 * only need one between them.  Shown here is the count the share is made
 * from: each loop with a call under way counts once, however many calls
 * it has, and every count is taken back when the calls end. */
#include "config.h"

#include "helpers.h"
#include "bridge.h"

enum { LOOPS = 3, CALLS = 2 };

/* The calls wait here until the test lets them go. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int entered;
  bool open;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false };

static int wait_at_gate(void *arg) {
  (void) arg;
  pthread_mutex_lock(&gate.mu);
  gate.entered++;
  pthread_cond_broadcast(&gate.cv);
  while (!gate.open)
    pthread_cond_wait(&gate.cv, &gate.mu);
  pthread_mutex_unlock(&gate.mu);
  return 0;
}

static int call_through_gate(void *arg) {
  return mm_run_sync(wait_at_gate, arg);
}

static void wait_entered(int n) {
  pthread_mutex_lock(&gate.mu);
  while (gate.entered < n)
    pthread_cond_wait(&gate.cv, &gate.mu);
  pthread_mutex_unlock(&gate.mu);
}

static void open_gate(bool open) {
  pthread_mutex_lock(&gate.mu);
  gate.open = open;
  gate.entered = 0;
  pthread_cond_broadcast(&gate.cv);
  pthread_mutex_unlock(&gate.mu);
}

static void test_a_pool_with_calls_under_way_counts_once(void **state) {
  assert_int_equal(mm__pools_busy(), 0);
  open_gate(false);
  mm_loop_t *loop[LOOPS];
  mm_coro_t *c[LOOPS][CALLS];
  for (int i = 0; i < LOOPS; i++) {
    loop[i] = mm_test_loop_new(0);
    assert_mm_ok(mm_loop_start(loop[i]));
  }
  for (int i = 0; i < LOOPS; i++) {
    for (int j = 0; j < CALLS; j++)
      assert_mm_ok(mm_spawn(loop[i], call_through_gate, NULL, &c[i][j]));
    /* Every call of this loop runs (the gate holds them). */
    wait_entered((i + 1) * CALLS);
    assert_int_equal(mm__pools_busy(), (unsigned) i + 1);
  }
  open_gate(true);
  for (int i = 0; i < LOOPS; i++)
    for (int j = 0; j < CALLS; j++)
      assert_mm_ok(mm_join(c[i][j]));
  /* A worker counts its call out once it is back under the pool's lock,
   * after the call's answer: freeing the loop joins it. */
  for (int i = 0; i < LOOPS; i++)
    assert_mm_ok(mm_loop_free(loop[i]));
  assert_int_equal(mm__pools_busy(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_a_pool_with_calls_under_way_counts_once),
  };
  return mm_run_tests(tests);
}
