/* What wakes a loop, counted: the loop's own epoll waits (on its backend
 * fd) while coroutines sleep and make calls one at a time.  Each wait of
 * a coroutine should cost the loop one wake-up -- the timer's, or the
 * answer's -- and nothing more: no non-blocking poll that finds nothing
 * (a pass begun with work ready), no timer of the pool's that fires with
 * nothing to do.  The program's own epoll_wait counts the calls on the
 * loop's fd and passes them on (libuv's calls reach it first).
 */
#define _GNU_SOURCE 1       /* RTLD_NEXT */
#include <dlfcn.h>
#include <sys/epoll.h>

#include "helpers.h"

static atomic_int  backend_fd = -1;
static atomic_long loop_polls;

int epoll_wait(int epfd, struct epoll_event *evs, int n, int ms) {
  if (epfd == atomic_load(&backend_fd))
    atomic_fetch_add(&loop_polls, 1);
  return ((int (*)(int, struct epoll_event *, int, int)) dlsym(
      RTLD_NEXT, "epoll_wait"))(epfd, evs, n, ms);
}

int epoll_pwait(int epfd, struct epoll_event *evs, int n, int ms,
                const sigset_t *mask) {
  if (epfd == atomic_load(&backend_fd))
    atomic_fetch_add(&loop_polls, 1);
  return ((int (*)(int, struct epoll_event *, int, int, const sigset_t *))
              dlsym(RTLD_NEXT, "epoll_pwait"))(epfd, evs, n, ms, mask);
}

static int noop(void *arg) {
  (void) arg;
  return 0;
}

typedef struct {
  int rounds;
  bool calls;               /* a run_sync call before each sleep */
} pace_t;

static int pace(void *arg) {
  pace_t *p = arg;
  for (int i = 0; i < p->rounds; i++) {
    if (p->calls)
      assert_mm_ok(mm_run_sync(noop, NULL));
    assert_mm_ok(mm_sleep(2));
  }
  return 0;
}

/* Runs pace on a loop of its own; returns the loop's polls. */
static long count_polls(pace_t *p) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  atomic_store(&backend_fd, uv_backend_fd(mm_loop_uv(loop)));
  atomic_store(&loop_polls, 0);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, pace, p, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  long polls = atomic_load(&loop_polls);
  atomic_store(&backend_fd, -1);
  assert_mm_ok(mm_loop_free(loop));
  return polls;
}

static void test_a_sleep_wakes_the_loop_once(void **state) {
  pace_t p = { MM_TEST_SCALE(200, 50), false };
  long polls = count_polls(&p);
  print_message("%d sleeps: %ld polls of the loop\n", p.rounds, polls);
  /* One per sleep (its timer) at most -- fewer when a pass ran long
   * enough (Valgrind) that the next timer was due at its end -- and a
   * few to start and end. */
  assert_in_range(polls, 0, p.rounds + 4);
}

static void test_a_call_then_a_sleep_wake_the_loop_twice_at_most(
    void **state) {
  pace_t p = { MM_TEST_SCALE(200, 50), true };
  long polls = count_polls(&p);
  print_message("%d calls and sleeps: %ld polls of the loop\n", p.rounds,
                polls);
  /* The answer's (none when the loop's polling of its queues caught it)
   * and the timer's: not a pool timer armed by every call, which fired
   * during the sleep. */
  assert_in_range(polls, 0, 2 * p.rounds + 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_a_sleep_wakes_the_loop_once),
    mm_test(test_a_call_then_a_sleep_wake_the_loop_twice_at_most),
  };
  return mm_run_tests(tests);
}
