/* White-box tests of what a process shares with the library: the fault
 * handler (lib/guard.c), fork (spinner places, a thread's waiter, loops
 * inherited from the parent) and borrowed loops shut down the libuv way.
 *
 * Every test of the signal handler runs in a forked child (mm_test_fork)
 * and needs a child in which no loop was ever made: the handler is
 * installed once per process, and a child inherits it.  They therefore
 * come first in main(); a child of a parent that made a loop exits 77 and
 * says so.  The child first drops cmocka's own SIGSEGV and SIGBUS
 * handlers, to start as a plain program does.
 */
#include "config.h"

#include <sys/mman.h>

#include "helpers.h"
#include "mm-internal.h"

/* ---- helpers of the signal tests -------------------------------------- */

/* Writes s to stderr from anywhere, signal handlers included. */
static void say(const char *s) {
  ssize_t w = write(STDERR_FILENO, s, strlen(s));
  (void) w;
}

/* Set by every test that makes a loop in this (the parent) process. */
static bool parent_made_a_loop;

/* Valgrind cannot grow a forked child's main stack while it delivers a
 * signal there ("can't extend stack"): grow it before. */
static __attribute__((noinline)) void grow_stack(void) {
  volatile char pad[64 * 1024];
  for (size_t i = 0; i < sizeof pad; i += 1024)
    pad[i] = 0;
}

/* The child starts as a program that never made a loop: default actions
 * for SIGSEGV and SIGBUS. */
static void require_pristine_child(void) {
  grow_stack();
  if (parent_made_a_loop) {
    say("the parent made a loop: run the signal tests before any test "
        "that does\n");
    _exit(77);
  }
  signal(SIGSEGV, SIG_DFL);
  signal(SIGBUS, SIG_DFL);
}

/* The child's loops stay reachable until it dies. */
static mm_loop_t *child_loops[2];

static mm_loop_t *new_loop_or_exit(void) {
  mm_loop_t **loop = &child_loops[child_loops[0] != NULL];
  if (mm_loop_new(loop, NULL) != 0)
    _exit(3);
  return *loop;
}

/* A page nobody may touch: a real fault that is no coroutine's overflow. */
static volatile int *forbidden_page(void) {
  void *p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    _exit(4);
  return p;
}

/* A crash reporter installed in front of the library: reports, then hands
 * the signal on to the handler it replaced, calling it directly.  On the
 * alternate stack, as any handler that wants to see an overflow must be. */
static struct sigaction reporter_prev;
static volatile sig_atomic_t reporter_calls;

static void reporter(int sig, siginfo_t *si, void *uc) {
  reporter_calls++;
  say(reporter_calls == 1 ? "reporter: call 1\n" : "reporter: called again\n");
  if (reporter_calls > 1)
    _exit(42);            /* it recurses: it would go on until the stack ends */
  if (reporter_prev.sa_flags & SA_SIGINFO) {
    reporter_prev.sa_sigaction(sig, si, uc);
  } else if (reporter_prev.sa_handler == SIG_DFL) {
    signal(sig, SIG_DFL);
  } else if (reporter_prev.sa_handler != SIG_IGN) {
    reporter_prev.sa_handler(sig);
  }
}

static void install_reporter(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = reporter;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &reporter_prev) != 0)
    _exit(5);
}

/* Fails unless the child was killed by SIGSEGV. */
static void assert_killed_by_sigsegv(const mm_test_child_t *child) {
  if (child->exited || child->code != SIGSEGV)
    fail_msg("child %s %d, expected to be killed by SIGSEGV; output:\n%s",
             child->exited ? "exited with" : "was killed by signal",
             child->code, child->out);
}

static bool always_ready(const void *arg) {
  return true;
}

static int nothing(void *arg) {
  return 0;
}

static int raise_segv(void *arg) {
  raise(SIGSEGV);
  return 0;
}

static int touch_forbidden_page(void *arg) {
  *forbidden_page() = 1;
  return 0;
}

static volatile int keep_recursing = 1;   /* volatile: no "infinite" */

static __attribute__((noinline)) int recurse_forever(int depth) {
  volatile char frame[1024];
  frame[0] = (char)depth;
  int r = keep_recursing ? recurse_forever(depth + 1) : 0;
  return r + frame[0];
}

static int overflow(void *arg) {
  return recurse_forever(0);
}

/* Runs fn in a coroutine named "overflowing-one" with a 64 KiB stack. */
static void run_in_coroutine(mm_loop_t *loop, mm_fn fn) {
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.name = "overflowing-one";
  o.stack_size = 64 * 1024;
  if (mm_spawn_ex(loop, fn, NULL, &o, NULL) != 0)
    _exit(6);
  mm_loop_run(loop);
}

/* ---- the fault handler --------------------------------------------------- */

static void raise_on_plain_thread(void *arg) {
  require_pristine_child();
  new_loop_or_exit();
  raise(SIGSEGV);
  _exit(9);               /* the signal was swallowed */
}

static void test_raise_sigsegv_kills_with_sigsegv(void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(raise_on_plain_thread, NULL, &child), 0);
  assert_killed_by_sigsegv(&child);
}

static void raise_in_coroutine(void *arg) {
  require_pristine_child();
  run_in_coroutine(new_loop_or_exit(), raise_segv);
  _exit(9);
}

static void test_raise_sigsegv_in_a_coroutine_kills_with_sigsegv(
    void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(raise_in_coroutine, NULL, &child), 0);
  assert_killed_by_sigsegv(&child);
  if (strstr(child.out, "overflowed") != NULL)
    fail_msg("a raised signal was reported as an overflow:\n%s", child.out);
}

/* arg: non-NULL to fault inside a coroutine (on its stack, not its guard
 * page), NULL to fault on the main thread. */
static void fault_behind_a_later_reporter(void *arg) {
  require_pristine_child();
  new_loop_or_exit();
  install_reporter();
  mm_loop_t *second = new_loop_or_exit();
  if (arg != NULL)
    run_in_coroutine(second, touch_forbidden_page);
  else
    touch_forbidden_page(NULL);
  _exit(9);
}

static void check_reporter_called_once(const mm_test_child_t *child) {
  assert_killed_by_sigsegv(child);
  if (strstr(child->out, "reporter: call 1") == NULL ||
      strstr(child->out, "called again") != NULL)
    fail_msg("the reporter was not called exactly once; output:\n%s",
             child->out);
}

static void test_handler_set_between_two_loops_gets_a_fault_once(
    void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(fault_behind_a_later_reporter, NULL, &child),
                   0);
  check_reporter_called_once(&child);
}

static void test_handler_set_between_two_loops_gets_a_coroutine_fault_once(
    void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(fault_behind_a_later_reporter, "coro",
                                &child), 0);
  check_reporter_called_once(&child);
}

static void overflow_behind_a_later_reporter(void *arg) {
  require_pristine_child();
  new_loop_or_exit();
  install_reporter();
  run_in_coroutine(new_loop_or_exit(), overflow);
  _exit(9);
}

static void test_stack_overflow_is_reported_with_the_coroutine_name(
    void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(overflow_behind_a_later_reporter, NULL,
                                &child), 0);
  check_reporter_called_once(&child);
  if (strstr(child.out, "'overflowing-one' overflowed") == NULL)
    fail_msg("the overflow was not reported by name; output:\n%s",
             child.out);
}

/* An overflow whose frames are larger than a page, in a coroutine whose
 * block lies right above another coroutine's: the guard stops it before
 * it reaches the neighbour's struct and top frames, and the overflow is
 * reported.  Run with the kernel's guard (page-table markers where
 * Linux has them) and with mprotect'ed ones. */
enum { BIG_FRAME = 16 * 1024, PAD = 48 * 1024 };

static mm_coro_t *parked[2];                  /* blocks, once they ran */
static volatile char *pads[2];                /* their PAD bytes of 0xa5 */
static volatile char *neighbour_pad;          /* of the one right below */

/* Parks with PAD bytes of a pattern in its frame, near the top of its
 * stack: live data of a parked coroutine, which an overflow from the
 * block above would reach first. */
static int park(void *arg) {
  volatile char pad[PAD];
  for (size_t i = 0; i < PAD; i++)
    pad[i] = (char)0xa5;
  parked[(intptr_t)arg] = mm__tls.coro;
  pads[(intptr_t)arg] = pad;
  return mm_sleep(600000) + pad[0];
}

static void neighbour_intact_or_exit(void) {
  for (size_t i = 0; i < PAD; i++)
    if (neighbour_pad[i] != (char)0xa5) {
      say("the overflow wrote into the neighbour's block\n");
      _exit(8);
    }
}

static __attribute__((noinline)) int recurse_in_big_frames(int depth) {
  volatile char frame[BIG_FRAME];
  frame[0] = (char)depth;     /* the lowest byte: steps over a small guard */
  neighbour_intact_or_exit();
  int r = keep_recursing ? recurse_in_big_frames(depth + 1) : 0;
  return r + frame[0];
}

static int overflow_above_neighbour(void *arg) {
  mm_yield();                 /* the others run and park */
  const mm_coro_t *me = mm__tls.coro;
  for (int i = 0; i < 2; i++)
    if (parked[i] != NULL &&
        (char *)parked[i]->map + parked[i]->map_size == (char *)me->map)
      neighbour_pad = pads[i];
  if (neighbour_pad == NULL) {
    say("the kernel put no other block right below this one\n");
    _exit(77);
  }
  return recurse_in_big_frames(0);
}

/* arg: non-NULL for mprotect'ed guards.  The first spawn of a loop maps
 * more than its block (the handle table): the overflowing one comes
 * second, and the neighbour, mapped next, lies right below it. */
static void overflow_next_to_a_neighbour(void *arg) {
  require_pristine_child();
  if (arg != NULL)
    mm__stack_guard_mprotect();
  mm_loop_t *loop = new_loop_or_exit();
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = 64 * 1024;
  o.name = "first";
  if (mm_spawn_ex(loop, park, (void *)0, &o, NULL) != 0)
    _exit(6);
  o.name = "overflowing-one";
  if (mm_spawn_ex(loop, overflow_above_neighbour, NULL, &o, NULL) != 0)
    _exit(6);
  o.name = "neighbour";
  if (mm_spawn_ex(loop, park, (void *)1, &o, NULL) != 0)
    _exit(6);
  mm_loop_run(loop);
  _exit(9);
}

static void check_overflow_next_to_a_neighbour(const char *guard) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(overflow_next_to_a_neighbour, (void *)guard,
                                &child), 0);
  if (child.exited && child.code == 77) {
    print_message("%s", child.out);
    skip();
  }
  assert_killed_by_sigsegv(&child);
  if (strstr(child.out, "'overflowing-one' overflowed") == NULL)
    fail_msg("the overflow was not reported by name; output:\n%s",
             child.out);
}

static void test_overflow_in_big_frames_stops_before_the_neighbour_block(
    void **state) {
  check_overflow_next_to_a_neighbour(NULL);
}

static void test_overflow_in_big_frames_stops_with_mprotect_guards_too(
    void **state) {
  check_overflow_next_to_a_neighbour("mprotect");
}

/* SIG_IGN before the first loop: a raised SIGSEGV is ignored, as without
 * the library, and the overflow report stays in place afterwards. */
static void ignored_raise_then_overflow(void *arg) {
  require_pristine_child();
  signal(SIGSEGV, SIG_IGN);
  mm_loop_t *loop = new_loop_or_exit();
  raise(SIGSEGV);
  say("the raised SIGSEGV was ignored\n");
  run_in_coroutine(loop, overflow);
  _exit(9);
}

static void test_ignored_sigsegv_stays_ignored_and_overflows_are_reported(
    void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(ignored_raise_then_overflow, NULL, &child),
                   0);
  assert_killed_by_sigsegv(&child);
  if (strstr(child.out, "was ignored") == NULL ||
      strstr(child.out, "'overflowing-one' overflowed") == NULL)
    fail_msg("expected the raise ignored, then the overflow reported; "
             "output:\n%s", child.out);
}

static void no_signals_child(void *arg) {
  require_pristine_child();
  setenv("MIXMODE_NO_SIGNALS", "1", 1);
  struct sigaction before[2], after[2];
  stack_t ss_before, ss_after;    /* ASan gives threads one of its own */
  sigaltstack(NULL, &ss_before);
  sigaction(SIGSEGV, NULL, &before[0]);
  sigaction(SIGBUS, NULL, &before[1]);
  mm_loop_t *loop = new_loop_or_exit();
  mm_coro_t *c;
  if (mm_spawn(loop, nothing, NULL, &c) != 0 || mm_loop_run(loop) != 0 ||
      mm_join(c) != 0)
    _exit(7);
  sigaction(SIGSEGV, NULL, &after[0]);
  sigaction(SIGBUS, NULL, &after[1]);
  for (int i = 0; i < 2; i++)
    if (after[i].sa_handler != before[i].sa_handler ||
        after[i].sa_flags != before[i].sa_flags) {
      say("the disposition changed\n");
      _exit(10);
    }
  if (sigaltstack(NULL, &ss_after) != 0 ||
      ss_after.ss_flags != ss_before.ss_flags ||
      ss_after.ss_sp != ss_before.ss_sp) {
    say("an alternate signal stack was set up\n");
    _exit(11);
  }
  run_in_coroutine(loop, overflow);
  _exit(9);
}

static void test_no_signals_env_leaves_the_disposition_alone(void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(no_signals_child, NULL, &child), 0);
  assert_killed_by_sigsegv(&child);
  if (strstr(child.out, "overflowed") != NULL)
    fail_msg("the library reported with MIXMODE_NO_SIGNALS=1:\n%s",
             child.out);
}

/* ---- borrowed loops shut down the libuv way ------------------------------ */

static int sleep_a_little(void *arg) {
  return mm_sleep(1);
}

typedef struct {
  int closes;               /* the user's close callbacks that ran */
  bool with_callback;
} walk_t;

static void on_user_close(uv_handle_t *h) {
  walk_t *w = h->loop->data;
  w->closes++;
}

/* The usual libuv shutdown: close every handle not closing yet. */
static void close_every_handle(uv_handle_t *h, void *arg) {
  walk_t *w = arg;
  if (!uv_is_closing(h))
    uv_close(h, w->with_callback ? on_user_close : NULL);
}

/* arg: whether the user's uv_close passes a callback; run_after: whether
 * the user runs uv until the closes are done before mm_loop_free. */
static void shut_down_borrowed_loop_the_libuv_way(bool with_callback,
                                                  bool run_after) {
  parent_made_a_loop = true;
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  walk_t w = { 0, with_callback };
  uv.data = &w;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, sleep_a_little, NULL, &c));  /* a timer too */
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_mm_ok(mm_join(c));

  uv_walk(&uv, close_every_handle, &w);
  if (run_after)
    assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_mm_ok(mm_loop_free(loop));
  if (with_callback)
    assert_int_equal(w.closes, 5);   /* async, idle, prepare, check, timer */
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void test_borrowed_loop_closed_by_uv_walk_and_run_is_freed(
    void **state) {
  shut_down_borrowed_loop_the_libuv_way(false, true);
}

static void test_borrowed_loop_closed_by_uv_walk_with_callbacks_is_freed(
    void **state) {
  shut_down_borrowed_loop_the_libuv_way(true, true);
}

static void test_borrowed_loop_closed_by_uv_walk_not_yet_run_is_freed(
    void **state) {
  shut_down_borrowed_loop_the_libuv_way(true, false);
}

/* ---- fork ---------------------------------------------------------------- */

static int seven(void *arg) {
  return 7;
}

static int sync_seven(void *arg) {
  return mm_run_sync(seven, NULL);
}

/* What the parent's threads hold while it forks; a helper thread takes
 * it, says so, and keeps it until the parent has its child's verdict. */
typedef struct {
  mm__waiter_t *waiter;     /* lock this waiter's mutex, or */
  bool spinner_places;      /* claim every spinner place */
  mm_test_latch_t held;     /* 1: taken */
  mm_test_latch_t release;  /* 1: the child is done: give it back */
} holder_t;

static void *hold(void *arg) {
  holder_t *h = arg;
  unsigned places = 0;
  mm__spin_t s;             /* made first, as every spinner's is */
  mm__spin_init(&s);
  if (h->waiter != NULL)
    pthread_mutex_lock(&h->waiter->mu);   /* as a waker in mm__wait_wake */
  if (h->spinner_places)
    while (mm__spin_begin(&s))            /* as workers in a spin */
      places++;
  mm_test_latch_add(&h->held, 1);
  mm_test_latch_wait(&h->release, 1);
  if (h->waiter != NULL)
    pthread_mutex_unlock(&h->waiter->mu);
  while (places-- > 0)
    mm__spin_wait(&s, always_ready, NULL);   /* gives a place back */
  return NULL;
}

/* The child of a parent that used the bridges: a new loop, mm_run_sync in
 * a coroutine (the loop run on this thread), then mm_run_async from this
 * thread to the loop started in the background; and, where half the CPUs
 * are at least one, a spinner place.  A hang is the failure the alarm
 * turns into SIGALRM. */
static void child_uses_a_new_loop(void *arg) {
  alarm(mm_test_under_valgrind() ? 120 : 10);
  if (mm__cpu_count() / 2 >= 1) {
    mm__spin_t s;
    mm__spin_init(&s);
    if (!mm__spin_begin(&s)) {
      say("no spinner place is free in the child\n");
      _exit(8);
    }
    mm__spin_wait(&s, always_ready, NULL);
  }
#ifdef MM_TEST_TSAN
  /* TSan does not let a forked child start threads: check only that this
   * thread's waiter is free, which is what the waits below need. */
  mm__waiter_t *w = mm__waiter_self();
  if (w == NULL || pthread_mutex_trylock(&w->mu) != 0)
    _exit(9);
  pthread_mutex_unlock(&w->mu);
  _exit(0);
#endif
  mm_loop_t *loop;
  if (mm_loop_new(&loop, NULL) != 0)
    _exit(3);
  mm_coro_t *c;
  if (mm_spawn(loop, sync_seven, NULL, &c) != 0 || mm_loop_run(loop) != 0 ||
      mm_join(c) != 7)
    _exit(4);
  if (mm_loop_start(loop) != 0)
    _exit(5);
  if (mm_run_async(loop, sync_seven, NULL) != 7)
    _exit(6);
  if (mm_loop_free(loop) != 0)
    _exit(7);
  _exit(0);
}

static void assert_child_exited_0(const mm_test_child_t *child) {
  if (!child->exited || child->code != 0)
    fail_msg("child %s %d%s; output:\n%s",
             child->exited ? "exited with" : "was killed by signal",
             child->code,
             !child->exited && child->code == SIGALRM ? " (it hung)" : "",
             child->out);
}

/* Forks while a helper thread holds what h says, runs
 * child_uses_a_new_loop in the child and checks it. */
static void fork_while_held(holder_t *h) {
  mm_test_latch_init(&h->held);
  mm_test_latch_init(&h->release);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, hold, h), 0);
  mm_test_latch_wait(&h->held, 1);
  static mm_test_child_t child;
  int r = mm_test_fork(child_uses_a_new_loop, NULL, &child);
  mm_test_latch_add(&h->release, 1);
  pthread_join(t, NULL);
  mm_test_latch_destroy(&h->held);
  mm_test_latch_destroy(&h->release);
  assert_int_equal(r, 0);
  assert_child_exited_0(&child);
}

static void test_fork_child_spins_though_parent_threads_held_every_place(
    void **state) {
  mm_test_skip_fork_threads_if_emulated();
  holder_t h = { .spinner_places = true };
  fork_while_held(&h);
}

/* The parent's thread forked right after its mm_run_async returned, while
 * the loop's thread that woke it still held its waiter's mutex. */
static void test_fork_child_waits_though_a_waker_held_its_waiter(
    void **state) {
  mm_test_skip_fork_threads_if_emulated();
  holder_t h = { .waiter = mm__waiter_self() };
  assert_non_null(h.waiter);
  fork_while_held(&h);
}

typedef struct {
  mm_loop_t *loop;
  mm_test_latch_t in_call;  /* the run_sync call has started */
  mm_test_latch_t release;  /* it may return */
  int status;
} busy_t;

static int block_until_released(void *arg) {
  busy_t *b = arg;
  mm_test_latch_add(&b->in_call, 1);
  mm_test_latch_wait(&b->release, 1);
  return 7;
}

static int sync_block(void *arg) {
  return mm_run_sync(block_until_released, arg);
}

static void *run_async_thread(void *arg) {
  busy_t *b = arg;
  b->status = mm_run_async(b->loop, sync_block, b);
  return NULL;
}

/* The parent's loop runs in the background, a thread waits in
 * mm_run_async for a coroutine whose mm_run_sync call a worker is running,
 * quick calls of both bridges went before. */
static void test_fork_child_uses_a_new_loop_while_the_parent_is_busy(
    void **state) {
  mm_test_skip_fork_threads_if_emulated();
  parent_made_a_loop = true;
  busy_t b;
  mm_test_latch_init(&b.in_call);
  mm_test_latch_init(&b.release);
  assert_mm_ok(mm_loop_new(&b.loop, NULL));
  assert_mm_ok(mm_loop_start(b.loop));
  for (int i = 0; i < 100; i++)
    assert_int_equal(mm_run_async(b.loop, sync_seven, NULL), 7);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, run_async_thread, &b), 0);
  mm_test_latch_wait(&b.in_call, 1);

  static mm_test_child_t child;
  int r = mm_test_fork(child_uses_a_new_loop, NULL, &child);
  mm_test_latch_add(&b.release, 1);
  pthread_join(t, NULL);
  assert_int_equal(r, 0);
  assert_child_exited_0(&child);
  assert_int_equal(b.status, 7);
  assert_mm_ok(mm_loop_free(b.loop));
  mm_test_latch_destroy(&b.in_call);
  mm_test_latch_destroy(&b.release);
}

/* ---- a loop inherited across fork ---------------------------------------- */

static pid_t test_pid;

/* Sleeps until cancelled; says so if that happens in another process
 * than the test's: the parent's coroutines must not run in a child. */
static int sleep_long(void *arg) {
  int r = mm_sleep(600000);
  if (getpid() != test_pid)
    say("the parent's coroutine ran on in the child\n");
  return r;
}

typedef struct {
  mm_loop_t *loop;
  mm_coro_t *sleeper;
} inherited_t;

static int never_runs(void *arg) {
  return 0;
}

/* In the child: every call on the parent's loop or its coroutines' handles
 * is refused with -ECHILD, and the loop is freed at once (its threads are
 * the parent's). */
static void child_frees_the_inherited_loop(void *arg) {
  inherited_t *in = arg;
  mm_loop_t *inherited = in->loop;
  alarm(mm_test_under_valgrind() ? 120 : 10);
  int r;
  mm_coro_t *c;
  mm_lane_t *lane;
  mm_group_t *g;
  if ((r = mm_loop_run(inherited)) != -ECHILD ||
      (r = mm_loop_start(inherited)) != -ECHILD ||
      (r = mm_loop_stop(inherited)) != -ECHILD ||
      (r = mm_spawn(inherited, never_runs, NULL, &c)) != -ECHILD ||
      (r = mm_run_async(inherited, never_runs, NULL)) != -ECHILD ||
      (r = mm_lane_new(inherited, "x", &lane)) != -ECHILD ||
      (r = mm_group_new(inherited, &g)) != -ECHILD ||
      (r = mm_loop_dump(inherited, stderr)) != -ECHILD ||
      (r = mm_cancel(in->sleeper)) != -ECHILD ||
      (r = mm_detach(in->sleeper)) != -ECHILD ||
      (r = mm_join(in->sleeper)) != -ECHILD) {
    fprintf(stderr, "a call on the inherited loop returned %d (%s)\n", r,
            mm_strerror(r));
    _exit(20);
  }
  if ((r = mm_loop_free(inherited)) != 0) {
    fprintf(stderr, "mm_loop_free returned %d (%s)\n", r, mm_strerror(r));
    _exit(21);
  }
  child_uses_a_new_loop(NULL);
}

static int calls_a_worker_and_a_lane(void *arg) {
  mm_lane_t *lane = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = lane;
  int r = mm_run_sync(seven, NULL);
  return r != 7 ? r : mm_run_sync_ex(seven, NULL, &o);
}

/* The parent's loop runs in the background with a coroutine asleep, one
 * ended and not joined, a block in its cache, and bridge state: a worker
 * pool and a lane, with their threads (which the child does not have:
 * its free releases their memory, as Valgrind checks in the child). */
static void test_fork_child_frees_the_loop_it_inherited(void **state) {
  mm_test_skip_fork_threads_if_emulated();
  parent_made_a_loop = true;
  test_pid = getpid();
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  mm_coro_t *sleeper, *ended, *quick;
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.name = "sleeper";
  assert_mm_ok(mm_spawn_ex(loop, sleep_long, NULL, &o, &sleeper));
  assert_mm_ok(mm_spawn(loop, seven, NULL, &quick));
  assert_int_equal(mm_join(quick), 7);
  assert_mm_ok(mm_spawn(loop, nothing, NULL, &ended));
  mm_lane_t *lane;
  assert_mm_ok(mm_lane_new(loop, "inherited", &lane));
  assert_int_equal(mm_run_async(loop, calls_a_worker_and_a_lane, lane), 7);

  static mm_test_child_t child;
  inherited_t in = { loop, sleeper };
  assert_int_equal(mm_test_fork(child_frees_the_inherited_loop, &in,
                                &child), 0);
  assert_child_exited_0(&child);
  if (strstr(child.out, "ran on in the child") != NULL ||
      strstr(child.out, "mixmode:") != NULL)
    fail_msg("the child ran or reported the parent's coroutines:\n%s",
             child.out);

  /* The child's free left the parent's loop alone: it still wakes. */
  assert_mm_ok(mm_spawn(loop, seven, NULL, &quick));
  assert_int_equal(mm_join(quick), 7);
  assert_mm_ok(mm_cancel(sleeper));
  assert_mm_err(mm_join(sleeper), -ECANCELED);
  assert_mm_ok(mm_join(ended));
  assert_mm_ok(mm_lane_free(lane));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_inherited_loop_error_explains_itself(void **state) {
  if (strstr(mm_strerror(-ECHILD), "fork") == NULL)
    fail_msg("mm_strerror(-ECHILD) is \"%s\"", mm_strerror(-ECHILD));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    /* First: they need children of a process that made no loop. */
    mm_test(test_raise_sigsegv_kills_with_sigsegv),
    mm_test(test_raise_sigsegv_in_a_coroutine_kills_with_sigsegv),
    mm_test(test_handler_set_between_two_loops_gets_a_fault_once),
    mm_test(test_handler_set_between_two_loops_gets_a_coroutine_fault_once),
    mm_test(test_stack_overflow_is_reported_with_the_coroutine_name),
    mm_test(test_overflow_in_big_frames_stops_before_the_neighbour_block),
    mm_test(test_overflow_in_big_frames_stops_with_mprotect_guards_too),
    mm_test(test_ignored_sigsegv_stays_ignored_and_overflows_are_reported),
    mm_test(test_no_signals_env_leaves_the_disposition_alone),
    mm_test(test_borrowed_loop_closed_by_uv_walk_and_run_is_freed),
    mm_test(test_borrowed_loop_closed_by_uv_walk_with_callbacks_is_freed),
    mm_test(test_borrowed_loop_closed_by_uv_walk_not_yet_run_is_freed),
    mm_test(test_fork_child_spins_though_parent_threads_held_every_place),
    mm_test(test_fork_child_waits_though_a_waker_held_its_waiter),
    mm_test(test_fork_child_uses_a_new_loop_while_the_parent_is_busy),
    mm_test(test_fork_child_frees_the_loop_it_inherited),
    mm_test(test_inherited_loop_error_explains_itself),
  };
  return mm_run_tests(tests);
}
