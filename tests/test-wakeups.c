/* What wakes a loop, and what a call maps, counted: the loop's own epoll
 * waits (on its backend fd) while coroutines sleep and make calls one at
 * a time; the mmap calls of mm_run_async from a coroutine of another
 * loop.  Each wait of
 * a coroutine should cost the loop one wake-up -- the timer's, or the
 * answer's -- and nothing more: no non-blocking poll that finds nothing
 * (a pass begun with work ready), no timer of the pool's that fires with
 * nothing to do.  The program's own epoll_wait counts the calls on the
 * loop's fd and passes them on (libuv's calls reach it first).
 */
#define _GNU_SOURCE 1       /* RTLD_NEXT */
#include <dlfcn.h>
#include <sys/epoll.h>
#include <sys/mman.h>

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

static atomic_bool counting_maps;
static atomic_long maps;

/* Not under TSan: its runtime maps memory through the mmap it
 * intercepts, from its start, before dlsym can serve us. */
#if defined(__SANITIZE_THREAD__)
#define COUNT_MAPS 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COUNT_MAPS 0
#endif
#endif
#ifndef COUNT_MAPS
#define COUNT_MAPS 1
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  if (atomic_load(&counting_maps))
    atomic_fetch_add(&maps, 1);
  return ((void *(*)(void *, size_t, int, int, int, off_t)) dlsym(
      RTLD_NEXT, "mmap"))(addr, len, prot, flags, fd, off);
}
#endif

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

/* Calls from a coroutine of loop A to loop B (started in the background):
 * after the first few, B's stack cache serves each call's coroutine;
 * none maps a stack of its own. */
typedef struct {
  mm_loop_t *other;
  int rounds;
} cross_t;

static int cross_calls(void *arg) {
  cross_t *x = arg;
  for (int i = 0; i < 10; i++)          /* B's cache fills */
    assert_mm_ok(mm_run_async(x->other, noop, NULL));
  atomic_store(&maps, 0);
  atomic_store(&counting_maps, true);
  for (int i = 0; i < x->rounds; i++)
    assert_mm_ok(mm_run_async(x->other, noop, NULL));
  atomic_store(&counting_maps, false);
  return 0;
}

static void test_run_async_across_loops_maps_no_stack_per_call(
    void **state) {
  if (!COUNT_MAPS) {
    print_message("skipped: mmap cannot be counted under TSan\n");
    skip();
  }
  mm_loop_t *a, *b;
  assert_mm_ok(mm_loop_new(&a, NULL));
  assert_mm_ok(mm_loop_new(&b, NULL));
  assert_mm_ok(mm_loop_start(b));
  cross_t x = { b, MM_TEST_SCALE(500, 100) };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(a, cross_calls, &x, &c));
  assert_mm_ok(mm_loop_run(a));
  assert_mm_ok(mm_join(c));
  long n = atomic_load(&maps);
  print_message("%d calls across loops: %ld mmap\n", x.rounds, n);
  assert_in_range(n, 0, 4);
  assert_mm_ok(mm_loop_stop(b));
  assert_mm_ok(mm_loop_free(b));
  assert_mm_ok(mm_loop_free(a));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_a_sleep_wakes_the_loop_once),
    mm_test(test_a_call_then_a_sleep_wake_the_loop_twice_at_most),
    mm_test(test_run_async_across_loops_maps_no_stack_per_call),
  };
  return mm_run_tests(tests);
}
