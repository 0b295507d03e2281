/* switch: what a coroutine switch and a spawn + join cost.
 *
 * Three measurements, each repeated RUNS times after a warm-up, timed with
 * clock_gettime(CLOCK_MONOTONIC) around many iterations:
 *
 *   (a) mm_yield ping-pong.  Two coroutines of one loop call mm_yield() in
 *       a loop, N times each, with nothing else ready, so every call hands
 *       the CPU to the other coroutine.  "switch" is the time of one
 *       mm_yield() as a user sees it: from one coroutine running to the
 *       other one running, whatever the scheduler does in between (it may
 *       be one or two machine-level context switches).  A "round trip" is
 *       A -> B -> A, two switches.
 *   (b) mm_spawn + mm_join from inside a coroutine, of a coroutine that
 *       returns at once, N times in a row, so that the loop's stack cache is
 *       warm: one iteration is spawn, switch to the child, child ends,
 *       switch back, join returns.
 *   (c) the baseline, measured in the same run: glibc's swapcontext()
 *       ping-pong between two ucontexts; "switch" is one swapcontext() call
 *       (which also saves and restores the signal mask: a system call).
 *
 * The aims (issue 3): a switch under 10 ns and at least 20 times faster
 * than swapcontext on x86-64; spawn + join under 200 ns.  They are
 * measured, not asserted: the program exits 0 whatever the numbers are.
 *
 * Usage: bench/switch [SCALE]   SCALE multiplies the iteration counts
 *                               (default 1; 0.1 for a quick look).
 *
 * Only <mixmode.h> and libc: this is what a user of the library gets.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>

static uint64_t yield_iters = 1000000;    /* per coroutine */
static uint64_t spawn_iters = 200000;
static uint64_t swap_iters = 100000;      /* round trips */

static void die(const char *what, int err) {
  fprintf(stderr, "bench/switch: %s: %s\n", what, mm_strerror(err));
  exit(EXIT_FAILURE);
}

/* ---- (a) mm_yield ping-pong --------------------------------------------- */

struct pingpong {
  uint64_t iters;
  uint64_t t0, t1;    /* set by the pinger around its timed yields */
  int err;            /* first error seen by either side */
};

/* Between t0 and t1 the pinger yields N times and, since each of its yields
 * runs the ponger up to the ponger's next yield, so does the ponger: 2N
 * switches in all. */
static int pinger(void *arg) {
  struct pingpong *p = arg;
  int err = 0;
  for (uint64_t i = 0; i < warmup_of(p->iters) && err == 0; i++)
    err = mm_yield();
  p->t0 = now_ns();
  for (uint64_t i = 0; i < p->iters && err == 0; i++)
    err = mm_yield();
  p->t1 = now_ns();
  if (err < 0)
    p->err = err;
  return err;
}

static int ponger(void *arg) {
  struct pingpong *p = arg;
  uint64_t n = warmup_of(p->iters) + p->iters;
  int err = 0;
  for (uint64_t i = 0; i < n && err == 0; i++)
    err = mm_yield();
  if (err < 0)
    p->err = err;
  return err;
}

/* Returns ns per switch (one mm_yield). */
static double measure_yield(mm_loop_t *loop) {
  struct pingpong p = { .iters = yield_iters };
  int err;
  if ((err = mm_spawn(loop, pinger, &p, NULL)) < 0 ||
      (err = mm_spawn(loop, ponger, &p, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (p.err < 0)
    die("mm_yield", p.err);
  return (double) (p.t1 - p.t0) / (2.0 * (double) p.iters);
}

/* ---- (b) spawn + join ------------------------------------------------------ */

struct spawner {
  mm_loop_t *loop;
  uint64_t iters;
  uint64_t t0, t1;
  int err;
};

static int trivial(void *arg) {
  return 0;
}

static int spawn_join_once(mm_loop_t *loop) {
  mm_coro_t *c;
  int err = mm_spawn(loop, trivial, NULL, &c);
  return err < 0 ? err : mm_join(c);
}

static int spawner(void *arg) {
  struct spawner *s = arg;
  int err = 0;
  for (uint64_t i = 0; i < warmup_of(s->iters) && err == 0; i++)
    err = spawn_join_once(s->loop);
  s->t0 = now_ns();
  for (uint64_t i = 0; i < s->iters && err == 0; i++)
    err = spawn_join_once(s->loop);
  s->t1 = now_ns();
  s->err = err;
  return err;
}

/* Returns ns per spawn + join. */
static double measure_spawn_join(mm_loop_t *loop) {
  struct spawner s = { .loop = loop, .iters = spawn_iters };
  int err;
  if ((err = mm_spawn(loop, spawner, &s, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (s.err < 0)
    die("mm_spawn + mm_join", s.err);
  return (double) (s.t1 - s.t0) / (double) s.iters;
}

/* ---- (c) swapcontext ping-pong --------------------------------------------- */

static ucontext_t uc_main, uc_other;

static void other_side(void) {
  for (;;)
    swapcontext(&uc_other, &uc_main);
}

/* Returns ns per swapcontext() call.  Each round trip is two calls. */
static double measure_swapcontext(void) {
  static char *stack;
  enum { STACK_SIZE = 64 * 1024 };
  if (stack == NULL && (stack = malloc(STACK_SIZE)) == NULL)
    die("malloc", -ENOMEM);
  getcontext(&uc_other);
  uc_other.uc_stack.ss_sp = stack;
  uc_other.uc_stack.ss_size = STACK_SIZE;
  uc_other.uc_link = &uc_main;
  makecontext(&uc_other, other_side, 0);
  for (uint64_t i = 0; i < warmup_of(swap_iters); i++)
    swapcontext(&uc_main, &uc_other);
  uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < swap_iters; i++)
    swapcontext(&uc_main, &uc_other);
  uint64_t t1 = now_ns();
  return (double) (t1 - t0) / (2.0 * (double) swap_iters);
}

/* ---- report ------------------------------------------------------------------ */

static void row(const char *what, const char *iters, struct result r,
                double factor, const char *aim, int met) {
  printf("%-34s %14s %9.1f %9.1f  %-8s %s\n", what, iters,
         r.median * factor, r.best * factor, aim,
         met < 0 ? "" : met ? "met" : "MISSED");
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  yield_iters = scaled(yield_iters, scale);
  spawn_iters = scaled(spawn_iters, scale);
  swap_iters = scaled(swap_iters, scale);

  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  if (err < 0)
    die("mm_loop_new", err);

  double yield_ns[RUNS], spawn_ns[RUNS], swap_ns[RUNS], ratio[RUNS];
  for (int r = 0; r < RUNS; r++) {
    yield_ns[r] = measure_yield(loop);
    spawn_ns[r] = measure_spawn_join(loop);
    swap_ns[r] = measure_swapcontext();
    ratio[r] = swap_ns[r] / yield_ns[r];
  }
  if ((err = mm_loop_free(loop)) < 0)
    die("mm_loop_free", err);

  struct result y = summarize(yield_ns, 0), s = summarize(spawn_ns, 0);
  struct result w = summarize(swap_ns, 0), q = summarize(ratio, 1);
  char yi[32], si[32], wi[32];
  snprintf(yi, sizeof yi, "2 x %llu", (unsigned long long) yield_iters);
  snprintf(si, sizeof si, "%llu", (unsigned long long) spawn_iters);
  snprintf(wi, sizeof wi, "2 x %llu", (unsigned long long) swap_iters);

  printf("mixmode %s, bench/switch: %d runs of each, after a warm-up of "
         "1/10 the iterations\n\n", mm_version(), RUNS);
  printf("%-34s %14s %9s %9s  %-8s %s\n", "ns per", "iterations", "median",
         "best", "aim", "");
  row("mixmode switch (one mm_yield)", yi, y, 1, "< 10", y.median < 10);
  row("mixmode yield round trip A->B->A", "", y, 2, "", -1);
  row("swapcontext switch (one call)", wi, w, 1, "", -1);
  row("swapcontext round trip", "", w, 2, "", -1);
  row("mixmode spawn + join (warm cache)", si, s, 1, "< 200",
      s.median < 200);
  printf("%-34s %14s %8.1fx %8.1fx  %-8s %s\n",
         "ratio swapcontext / mixmode switch", "", q.median, q.best,
         ">= 20x", q.median >= 20 ? "met" : "MISSED");
  printf("\nswitch: one mm_yield() from one coroutine running to the other "
         "running\n(two coroutines ping-pong, nothing else ready); round "
         "trip = 2 switches.\nspawn + join: from inside a coroutine, of a "
         "coroutine that returns at once.\nswapcontext: glibc, two ucontexts, "
         "one call = one switch (includes a\nsigprocmask system call).  "
         "Verdicts use the median.\n");
  return EXIT_SUCCESS;
}
