/* The first spawns of a process, from several plain threads and loop
 * threads at once.  Process-wide state that spawns set up lazily (the page
 * size, read once) must be set up race-free: under TSan this program
 * reports a data race if it is not.  Its own program, and nothing spawns
 * before this test: a state already set up by an earlier spawn would hide
 * the race.
 */
#include "helpers.h"

enum { NTHREADS = 4, NSPAWNS = 8 };

static int return_zero(void *arg) {
  (void) arg;
  return 0;
}

typedef struct {
  pthread_barrier_t *start;
  mm_loop_t *loop;
  bool via_loop;              /* run_async: the loop's thread spawns */
  int failures;
} spawner_t;

/* After the barrier every thread spawns at once: on a plain thread
 * (mm_spawn of a loop another thread drives takes a fresh block here), or
 * on the loop's thread (mm_run_async: the loop spawns the coroutine). */
static void *spawner(void *arg) {
  spawner_t *s = arg;
  pthread_barrier_wait(s->start);
  for (int i = 0; i < NSPAWNS; i++) {
    if (s->via_loop) {
      s->failures += mm_run_async(s->loop, return_zero, NULL) != 0;
    } else {
      mm_coro_t *c;
      s->failures += mm_spawn(s->loop, return_zero, NULL, &c) != 0 ||
                     mm_join(c) != 0;
    }
  }
  return NULL;
}

static void test_first_spawns_from_plain_and_loop_threads_at_once(
    void **state) {
  /* Two loops, each spawned into from a plain thread and, through
   * run_async, by its own thread: no two first spawns are ordered. */
  mm_loop_t *loops[2];
  for (int l = 0; l < 2; l++) {
    assert_mm_ok(mm_loop_new(&loops[l], NULL));
    assert_mm_ok(mm_loop_start(loops[l]));
  }
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, NTHREADS);
  spawner_t s[NTHREADS];
  pthread_t t[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    s[i] = (spawner_t) { .start = &start, .loop = loops[i % 2],
                         .via_loop = i / 2 == 1 };
    assert_int_equal(pthread_create(&t[i], NULL, spawner, &s[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) {
    pthread_join(t[i], NULL);
    assert_int_equal(s[i].failures, 0);
  }
  pthread_barrier_destroy(&start);
  for (int l = 0; l < 2; l++)
    assert_mm_ok(mm_loop_free(loops[l]));
}


int main(void) {
  const struct CMUnitTest tests[] = {
    /* First: see the top of the file. */
    mm_test(test_first_spawns_from_plain_and_loop_threads_at_once),
  };
  return mm_run_tests(tests);
}
