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
 *   (d) the floor, measured in the same run: a bare switch of the same
 *       registers as the library's (callee-saved registers, stack pointer,
 *       floating-point control state, compared before it is loaded), with
 *       no scheduler, two contexts ping-ponging; in two shapes of resume:
 *       `ret`, and pop + indirect jump.  The floor of a shape is the
 *       faster of the two.  From two sites, also with each switch made
 *       from a function that returns after it, as mm_yield returns to its
 *       caller: what the jump's resume costs once a return follows it
 *       (for information, beside the ratio against the floor with
 *       returns; the aim stays against the floor without).
 *
 * (a) and (d) are each measured in two shapes: every switch made from one
 * call site, and from two call sites taken in turn.  A resume by `ret` is
 * predicted from the return stack, right when the context resumed was
 * suspended at the call site that is returning, wrong otherwise; an
 * indirect jump is predicted from the branch's history instead, but leaves
 * the return stack one entry off for the returns that follow it.
 *
 * The aims: a switch under 10 ns and at least 20 times faster than
 * swapcontext on x86-64, spawn + join under 200 ns (issue 3); mm_yield's
 * switch at most 2x the floor, in both shapes (issue 11).  They are
 * measured, not asserted: the program exits 0 whatever the numbers are.
 * Beside each time, CPU per operation (getrusage, user + sys, the whole
 * process) tells whether a figure was taken on a busy machine.
 *
 * Usage: bench/switch [SCALE]   SCALE multiplies the iteration counts
 *                               (default 1; 0.1 for a quick look).
 *
 * Only <mixmode.h> and libc: this is what a user of the library gets.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench/switch"
#include "bench.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <ucontext.h>

static uint64_t yield_iters = 1000000;    /* per coroutine */
static uint64_t spawn_iters = 200000;
static uint64_t swap_iters = 100000;      /* round trips */

/* One measurement: wall time and CPU time per operation. */
struct sample {
  double ns, cpu;
};

/* ---- (a) mm_yield ping-pong --------------------------------------------- */

struct pingpong {
  uint64_t iters;     /* yields of each side, even */
  int sites;          /* 1 or 2: call sites of mm_yield taken in turn */
  uint64_t t0, t1;    /* set by the pinger around its timed yields */
  uint64_t c0, c1;    /* the same in CPU time */
  int err;            /* first error seen by either side */
};

/* n yields from one call site, or from two in turn: the two calls below
 * are distinct call instructions, each returning to its own place. */
static int yields(uint64_t n, int sites) {
  int err = 0;
  if (sites == 1) {
    for (uint64_t i = 0; i < n && err == 0; i++)
      err = mm_yield();
  } else {
    for (uint64_t i = 0; i < n && err == 0; i += 2) {
      err = mm_yield();
      if (err == 0)
        err = mm_yield();
    }
  }
  return err;
}

/* Between t0 and t1 the pinger yields N times and, since each of its yields
 * runs the ponger up to the ponger's next yield, so does the ponger: 2N
 * switches in all. */
static int pinger(void *arg) {
  struct pingpong *p = arg;
  int err = yields(warmup_of(p->iters) & ~(uint64_t) 1, p->sites);
  p->c0 = cpu_ns();
  p->t0 = now_ns();
  if (err == 0)
    err = yields(p->iters, p->sites);
  p->t1 = now_ns();
  p->c1 = cpu_ns();
  if (err < 0)
    p->err = err;
  return err;
}

static int ponger(void *arg) {
  struct pingpong *p = arg;
  int err = yields((warmup_of(p->iters) & ~(uint64_t) 1) + p->iters,
                   p->sites);
  if (err < 0)
    p->err = err;
  return err;
}

/* Per switch (one mm_yield). */
static struct sample measure_yield(mm_loop_t *loop, int sites) {
  struct pingpong p = { .iters = yield_iters, .sites = sites };
  int err;
  if ((err = mm_spawn(loop, pinger, &p, NULL)) < 0 ||
      (err = mm_spawn(loop, ponger, &p, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (p.err < 0)
    die("mm_yield", p.err);
  double n = 2.0 * (double) p.iters;
  return (struct sample) { (double) (p.t1 - p.t0) / n,
                           (double) (p.c1 - p.c0) / n };
}

/* ---- (b) spawn + join ------------------------------------------------------ */

struct spawner {
  mm_loop_t *loop;
  uint64_t iters;
  uint64_t t0, t1, c0, c1;
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
  s->c0 = cpu_ns();
  s->t0 = now_ns();
  for (uint64_t i = 0; i < s->iters && err == 0; i++)
    err = spawn_join_once(s->loop);
  s->t1 = now_ns();
  s->c1 = cpu_ns();
  s->err = err;
  return err;
}

/* Per spawn + join. */
static struct sample measure_spawn_join(mm_loop_t *loop) {
  struct spawner s = { .loop = loop, .iters = spawn_iters };
  int err;
  if ((err = mm_spawn(loop, spawner, &s, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (s.err < 0)
    die("mm_spawn + mm_join", s.err);
  double n = (double) s.iters;
  return (struct sample) { (double) (s.t1 - s.t0) / n,
                           (double) (s.c1 - s.c0) / n };
}

/* ---- (c) swapcontext ping-pong --------------------------------------------- */

static ucontext_t uc_main, uc_other;

static void other_side(void) {
  for (;;)
    swapcontext(&uc_other, &uc_main);
}

/* Per swapcontext() call.  Each round trip is two calls. */
static struct sample measure_swapcontext(void) {
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
  uint64_t c0 = cpu_ns(), t0 = now_ns();
  for (uint64_t i = 0; i < swap_iters; i++)
    swapcontext(&uc_main, &uc_other);
  uint64_t t1 = now_ns(), c1 = cpu_ns();
  double n = 2.0 * (double) swap_iters;
  return (struct sample) { (double) (t1 - t0) / n, (double) (c1 - c0) / n };
}

/* ---- (d) the floor: a bare switch ------------------------------------------
 *
 * floor_ret(from, to) and floor_jmp(from, to) save and restore what
 * mm__ctx_switch does, in the same order, and differ only in the resume:
 * `ret`, or the return address popped and jumped to.  floor_start(from,
 * top, fn) saves the running context the same way, then calls fn on the
 * stack whose top is top.  Written here rather than taken from the
 * library: the floor must not move when the library's switch does.
 */
#if defined(__x86_64__)
# define HAVE_FLOOR 1
# define FLOOR_SAVE                                                         \
  "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n"                \
  "  pushq %r14\n  pushq %r15\n  pushq $0\n"                                \
  "  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n  movl (%rsp), %eax\n"               \
  "  movzwl 4(%rsp), %edx\n  shlq $32, %rdx\n  orq %rdx, %rax\n"           \
  "  movq %rsp, (%rdi)\n"
# define FLOOR_LOAD()                                                       \
  "  movq (%rsi), %rsp\n  cmpq (%rsp), %rax\n  jne 2f\n"                    \
  "1: addq $8, %rsp\n  popq %r15\n  popq %r14\n  popq %r13\n"               \
  "  popq %r12\n  popq %rbx\n  popq %rbp\n"
# define FLOOR_FP "2: ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  jmp 1b\n"
# define FLOOR_FN(name) "  .text\n  .p2align 4\n  .type " #name             \
  ", @function\n" #name ":\n"
__asm__(
  FLOOR_FN(floor_ret) FLOOR_SAVE FLOOR_LOAD() "  ret\n" FLOOR_FP
  "  .size floor_ret, .-floor_ret\n"
  FLOOR_FN(floor_jmp) FLOOR_SAVE FLOOR_LOAD() "  popq %rcx\n  jmpq *%rcx\n"
  FLOOR_FP "  .size floor_jmp, .-floor_jmp\n"
  FLOOR_FN(floor_start) "  movq %rdx, %r8\n" FLOOR_SAVE
  "  movq %rsi, %rsp\n  callq *%r8\n"
  "  ud2\n  .size floor_start, .-floor_start\n");
#elif defined(__aarch64__)
# define HAVE_FLOOR 1
# define FLOOR_SAVE                                                         \
  "  sub sp, sp, #176\n"                                                    \
  "  stp x19, x20, [sp, #0]\n  stp x21, x22, [sp, #16]\n"                   \
  "  stp x23, x24, [sp, #32]\n  stp x25, x26, [sp, #48]\n"                  \
  "  stp x27, x28, [sp, #64]\n  stp x29, x30, [sp, #80]\n"                  \
  "  stp d8, d9, [sp, #96]\n  stp d10, d11, [sp, #112]\n"                   \
  "  stp d12, d13, [sp, #128]\n  stp d14, d15, [sp, #144]\n"                \
  "  mrs x9, fpcr\n  str x9, [sp, #160]\n  mov x10, sp\n  str x10, [x0]\n"
# define FLOOR_LOAD()                                                       \
  "  ldr x10, [x1]\n  mov sp, x10\n  ldr x10, [sp, #160]\n"                 \
  "  cmp x9, x10\n  b.ne 2f\n"                                              \
  "1: ldp x19, x20, [sp, #0]\n  ldp x21, x22, [sp, #16]\n"                  \
  "  ldp x23, x24, [sp, #32]\n  ldp x25, x26, [sp, #48]\n"                  \
  "  ldp x27, x28, [sp, #64]\n  ldp x29, x30, [sp, #80]\n"                  \
  "  ldp d8, d9, [sp, #96]\n  ldp d10, d11, [sp, #112]\n"                   \
  "  ldp d12, d13, [sp, #128]\n  ldp d14, d15, [sp, #144]\n"                \
  "  add sp, sp, #176\n"
# define FLOOR_FP "2: msr fpcr, x10\n  b 1b\n"
# define FLOOR_FN(name) "  .text\n  .p2align 4\n  .type " #name             \
  ", %function\n" #name ":\n"
__asm__(
  FLOOR_FN(floor_ret) FLOOR_SAVE FLOOR_LOAD() "  ret\n" FLOOR_FP
  "  .size floor_ret, .-floor_ret\n"
  FLOOR_FN(floor_jmp) FLOOR_SAVE FLOOR_LOAD() "  br x30\n" FLOOR_FP
  "  .size floor_jmp, .-floor_jmp\n"
  FLOOR_FN(floor_start) FLOOR_SAVE "  mov sp, x1\n  blr x2\n"
  "  brk #0\n  .size floor_start, .-floor_start\n");
#endif

#ifdef HAVE_FLOOR
void floor_ret(void **from, void **to);
void floor_jmp(void **from, void **to);
void floor_start(void **from, void *top, void (*fn)(void));

static void *floor_main, *floor_co;

/* Both contexts run the same loop, so that with one site every switch is
 * made from, and resumes at, one call instruction; with two, the two calls
 * are taken in turn.  The other context never returns: its stack is
 * dropped with whatever it holds. */
# define FLOOR_LOOP(name, sw, sites)                                        \
  __attribute__((noinline)) static void name(void **self, void **other,     \
                                             uint64_t n) {                  \
    for (uint64_t i = 0; i < n; i += sites) {                               \
      sw(self, other);                                                      \
      if (sites == 2)                                                       \
        sw(self, other);                                                    \
    }                                                                       \
  }                                                                         \
  static void name##_co(void) {                                             \
    name(&floor_co, &floor_main, UINT64_MAX);                               \
  }
FLOOR_LOOP(floor_ret_1, floor_ret, 1)
FLOOR_LOOP(floor_ret_2, floor_ret, 2)
FLOOR_LOOP(floor_jmp_1, floor_jmp, 1)
FLOOR_LOOP(floor_jmp_2, floor_jmp, 2)

/* The same switches, each made from inside a function that returns to the
 * loop afterwards, as mm_yield returns to its caller: there the two
 * resumes part.  `ret` pops the return stack as the calls pushed it, so
 * the return that follows is predicted (from one site; from two, the
 * resume's own `ret` mispredicts half the time).  The jump leaves the
 * entry its call pushed, so every return after it takes the entry of the
 * one before and mispredicts.  The loops above have no such return, and
 * so hide that cost. */
# define FLOOR_HOP(name, sw)                                                 \
  __attribute__((noinline)) static void name(void **self, void **other) {  \
    sw(self, other);                                                        \
    __asm__ volatile("" ::: "memory");  /* a call, not a tail jump */       \
  }
FLOOR_HOP(hop_ret, floor_ret)
FLOOR_HOP(hop_jmp, floor_jmp)
FLOOR_LOOP(floor_hop_ret_2, hop_ret, 2)
FLOOR_LOOP(floor_hop_jmp_2, hop_jmp, 2)

/* Per switch: n calls by this context, each two switches. */
static struct sample measure_floor(void (*loop)(void **, void **, uint64_t),
                                   void (*co)(void)) {
  enum { STACK_SIZE = 64 * 1024 };
  static char *stack;
  if (stack == NULL && (stack = malloc(STACK_SIZE)) == NULL)
    die("malloc", -ENOMEM);
  uintptr_t top = ((uintptr_t) stack + STACK_SIZE) & ~(uintptr_t) 15;
  uint64_t n = swap_iters * 10;   /* as many switches as mm_yield's */
  floor_start(&floor_main, (void *) top, co);
  loop(&floor_main, &floor_co, warmup_of(n) & ~(uint64_t) 1);
  uint64_t c0 = cpu_ns(), t0 = now_ns();
  loop(&floor_main, &floor_co, n);
  uint64_t t1 = now_ns(), c1 = cpu_ns();
  return (struct sample) { (double) (t1 - t0) / (2.0 * (double) n),
                           (double) (c1 - c0) / (2.0 * (double) n) };
}
#endif

/* ---- report ------------------------------------------------------------------ */

/* Sorts v (RUNS values) and returns the median. */
static double median(double *v) {
  return summarize(v, 0).median;
}

struct series {
  double ns[RUNS], cpu[RUNS];
};

static void put(struct series *s, int r, struct sample x) {
  s->ns[r] = x.ns;
  s->cpu[r] = x.cpu;
}

/* One line: median and best time, median CPU, times factor. */
static void row(const char *what, const char *iters, struct series *s,
                double factor, const char *aim, int met) {
  double cpu = median(s->cpu);
  struct result r = summarize(s->ns, 0);
  printf("%-36s %12s %8.1f %8.1f %8.1f  %-7s %s\n", what, iters,
         r.median * factor, r.best * factor, cpu * factor, aim,
         met < 0 ? "" : met ? "met" : "MISSED");
}

static void ratio_row(const char *what, double *v, int higher,
                      const char *aim, int met) {
  struct result q = summarize(v, higher);
  printf("%-36s %12s %7.2fx %7.2fx %8s  %-7s %s\n", what, "", q.median,
         q.best, "", aim, met < 0 ? "" : met ? "met" : "MISSED");
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  yield_iters = scaled(yield_iters, scale) & ~(uint64_t) 1;
  spawn_iters = scaled(spawn_iters, scale);
  swap_iters = scaled(swap_iters, scale);

  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  if (err < 0)
    die("mm_loop_new", err);

  static struct series y1, y2, sj, sw;
  double vs_swap[RUNS];
#ifdef HAVE_FLOOR
  static struct series fr1, fr2, fj1, fj2, hr2, hj2;
  double vs_floor1[RUNS], vs_floor2[RUNS], vs_hop2[RUNS];
#endif
  for (int r = 0; r < RUNS; r++) {
    put(&y1, r, measure_yield(loop, 1));
    put(&y2, r, measure_yield(loop, 2));
    put(&sj, r, measure_spawn_join(loop));
    put(&sw, r, measure_swapcontext());
    vs_swap[r] = sw.ns[r] / y1.ns[r];
#ifdef HAVE_FLOOR
    put(&fr1, r, measure_floor(floor_ret_1, floor_ret_1_co));
    put(&fr2, r, measure_floor(floor_ret_2, floor_ret_2_co));
    put(&fj1, r, measure_floor(floor_jmp_1, floor_jmp_1_co));
    put(&fj2, r, measure_floor(floor_jmp_2, floor_jmp_2_co));
    put(&hr2, r, measure_floor(floor_hop_ret_2, floor_hop_ret_2_co));
    put(&hj2, r, measure_floor(floor_hop_jmp_2, floor_hop_jmp_2_co));
    /* Each run against the floor of the same run, the faster resume, in
     * CPU time: both sides run on one thread, so CPU time is their wall
     * time less the time the thread was not running -- on a shared
     * machine, far steadier than the wall time. */
    vs_floor1[r] = y1.cpu[r] / (fr1.cpu[r] < fj1.cpu[r] ? fr1.cpu[r]
                                                        : fj1.cpu[r]);
    vs_floor2[r] = y2.cpu[r] / (fr2.cpu[r] < fj2.cpu[r] ? fr2.cpu[r]
                                                        : fj2.cpu[r]);
    vs_hop2[r] = y2.cpu[r] / (hr2.cpu[r] < hj2.cpu[r] ? hr2.cpu[r]
                                                    : hj2.cpu[r]);
#endif
  }
  if ((err = mm_loop_free(loop)) < 0)
    die("mm_loop_free", err);

  char yi[32], si[32], wi[32], fi[32];
  snprintf(yi, sizeof yi, "2 x %llu", (unsigned long long) yield_iters);
  snprintf(si, sizeof si, "%llu", (unsigned long long) spawn_iters);
  snprintf(wi, sizeof wi, "2 x %llu", (unsigned long long) swap_iters);
  snprintf(fi, sizeof fi, "2 x %llu", (unsigned long long) swap_iters * 10);

  printf("mixmode %s, bench/switch: %d runs of each, after a warm-up of "
         "1/10 the iterations\n\n", mm_version(), RUNS);
  printf("%-36s %12s %8s %8s %8s  %-7s %s\n", "ns per", "iterations",
         "median", "best", "cpu", "aim", "");
  double y1_median = median(y1.ns);
  row("mixmode switch (one mm_yield)", yi, &y1, 1, "< 10", y1_median < 10);
  row("mixmode yield round trip A->B->A", "", &y1, 2, "", -1);
  row("mixmode switch, two call sites", yi, &y2, 1, "", -1);
#ifdef HAVE_FLOOR
  row("floor: bare switch, ret", fi, &fr1, 1, "", -1);
  row("floor: bare switch, ret, 2 sites", fi, &fr2, 1, "", -1);
  row("floor: bare switch, jmp", fi, &fj1, 1, "", -1);
  row("floor: bare switch, jmp, 2 sites", fi, &fj2, 1, "", -1);
  row("floor: ret, 2 sites, returns after", fi, &hr2, 1, "", -1);
  row("floor: jmp, 2 sites, returns after", fi, &hj2, 1, "", -1);
#endif
  row("swapcontext switch (one call)", wi, &sw, 1, "", -1);
  row("swapcontext round trip", "", &sw, 2, "", -1);
  double sj_median = median(sj.ns);
  row("mixmode spawn + join (warm cache)", si, &sj, 1, "< 200",
      sj_median < 200);
  ratio_row("ratio swapcontext / mixmode switch", vs_swap, 1, ">= 20x",
            summarize(vs_swap, 1).median >= 20);
#ifdef HAVE_FLOOR
  /* Lower is better: the best run is the lowest. */
  double q1 = median(vs_floor1), q2 = median(vs_floor2);
  ratio_row("ratio mixmode switch / floor (cpu)", vs_floor1, 0, "<= 2x",
            q1 <= 2);
  ratio_row("ratio, two call sites (cpu)", vs_floor2, 0, "<= 2x", q2 <= 2);
  ratio_row("ratio, two sites / floor w/ returns", vs_hop2, 0, "", -1);
#else
  printf("(no bare-switch floor for this CPU)\n");
#endif
  printf("\nswitch: one mm_yield() from one coroutine running to the other "
         "running\n(two coroutines ping-pong, nothing else ready); round "
         "trip = 2 switches.\ntwo call sites: each coroutine yields from two "
         "places in turn.\nfloor: two contexts ping-pong through a bare "
         "switch of the same registers,\nno scheduler; resumed by ret or by "
         "an indirect jmp; the ratio takes the\nfaster of the two, run by "
         "run, and compares CPU times (steadier than wall\ntime on a shared "
         "machine).  returns after: each switch made from a\nfunction that "
         "returns after it, as mm_yield returns to its caller.\nspawn + join: from inside a coroutine, of a "
         "coroutine that returns at once.\nswapcontext: glibc, two ucontexts, "
         "one call = one switch (includes a\nsigprocmask system call).  "
         "cpu: getrusage user + sys per operation, median.\nVerdicts use "
         "the median.\n");
  return EXIT_SUCCESS;
}
