/* run-sync: what handing a call to a worker thread costs, mm_run_sync
 * against libuv's uv_queue_work (and GLib's GThreadPool when available).
 *
 * All the work is a no-op, so what is measured is the bridge itself: the
 * hand-off to a worker, the wake-ups, and the resumption of the caller.
 * Each measurement is repeated RUNS times; within a run the mixmode and
 * baseline measurements alternate, so that a slow patch of the machine
 * hits both.  Every measurement first does 1/10 of its iterations untimed
 * (warm-up: worker threads started, caches and stacks warm), then times
 * the rest with clock_gettime(CLOCK_MONOTONIC).
 *
 *   (a) Round trip, one call outstanding.  One coroutine calls
 *       mm_run_sync(noop, NULL) N times in a row: ns per call, from the
 *       coroutine asking to the coroutine running again with the result.
 *       Baseline: uv_queue_work(noop) on a uv loop of its own, the next
 *       request queued from the after-work callback of the previous one:
 *       ns per round trip.  Aim: mixmode at most 0.3x libuv.
 *   (b) Throughput, 64 calls outstanding.  64 coroutines of one loop each
 *       call mm_run_sync(noop) in a loop until N calls have completed in
 *       all: calls per second.  Baseline: 64 uv_queue_work requests
 *       outstanding, each after-work callback queueing the next one.
 *       Aim: mixmode at least 2x libuv.
 *   (c) Reference only, when built with GLib: a GThreadPool running a
 *       no-op that pushes to a GAsyncQueue, the main thread popping it,
 *       one call outstanding: ns per round trip.
 *   (d) mm_run_async round trip from 1 plain thread.  A loop started
 *       with mm_loop_start; a thread of the program's own calls
 *       mm_run_async(loop, noop_coroutine, NULL) N times: ns per call,
 *       from the thread posting the call to it running again with the
 *       coroutine's status.  Baseline, the floor of a bare hand-off: a
 *       raw libuv loop on its own thread with a uv_async_t; the caller
 *       pushes a request on a mutex-protected list, calls uv_async_send
 *       and waits on its own condition variable; the async callback
 *       drains the list and signals each request's condition variable.
 *       Aim: mixmode within 1.3x of the floor.
 *   (e) The same from 4 threads at once, each making N calls (4 callers
 *       of the floor too): ns per call per thread (each thread's time
 *       over its calls, median over the threads) and calls per second in
 *       all (4 N over first start to last end).  The threads start timing
 *       together, after their warm-ups (a barrier).  Aim: mixmode within
 *       1.3x of the floor, per thread.
 *   (f) Reference, no aim: calls that block, as a database driver's do.
 *       64 coroutines call mm_run_sync(sleep 1 ms) until 640 calls have
 *       completed: ms in all (ideal: 10 ms, every call with a thread).
 *       Baseline: the same with uv_queue_work, 64 outstanding.
 *
 * libuv's worker pool is process-global and sized from UV_THREADPOOL_SIZE
 * (default 4); this program sets nothing, so the baseline is libuv as a
 * user gets it.  mixmode's pool belongs to its loop (defaults: grows on
 * demand up to 64 threads).  The aims are issue 11's, as bench/cpu's
 * (which adds CPU per call); they are measured, not asserted: the program
 * exits 0 whatever the numbers are.
 *
 * Usage: bench/run-sync [SCALE]  SCALE multiplies the iteration counts
 *                                (default 1; 0.1 for a quick look).
 *
 * Only <mixmode.h>, <uv.h>, libc (and GLib): what a user of the library
 * gets.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench/run-sync"
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "floor.h"

#ifdef HAVE_GLIB
# include <glib.h>
#endif

enum { WIDTH = TP_WIDTH, CALLERS = 4 };
_Static_assert((int) CALLERS <= (int) FLOOR_CALLERS, "a floor request per caller");

static uint64_t rt_iters = 5000;        /* round trips, (a) and (c) */
static uint64_t tp_iters = 60000;       /* calls in all, (b) */
static uint64_t bl_iters = 640;         /* blocking calls in all, (f) */
static uint64_t as_iters = 5000;        /* round trips, (d) */
static uint64_t mt_iters = 2000;        /* round trips per thread, (e) */

/* The work of (f): a call that blocks for 1 ms, like a query. */
static int sleep_1ms(void *arg) {
  (void) arg;
  struct timespec ts = { 0, 1000000 };
  nanosleep(&ts, NULL);
  return 0;
}

static void uv_sleep_1ms(uv_work_t *req) {
  (void) sleep_1ms(req);
}

/* The coroutine of (d) and (e): nothing either. */
static int noop_coroutine(void *arg) {
  return noop(arg);
}

/* ---- (a) round trip, one call outstanding ---------------------------------- */

struct mm_rt {
  uint64_t iters;
  uint64_t t0, t1;
  int err;
};

static int mm_rt_body(void *arg) {
  struct mm_rt *s = arg;
  int err = 0;
  for (uint64_t i = 0; i < warmup_of(s->iters) && err == 0; i++)
    err = mm_run_sync(noop, NULL);
  s->t0 = now_ns();
  for (uint64_t i = 0; i < s->iters && err == 0; i++)
    err = mm_run_sync(noop, NULL);
  s->t1 = now_ns();
  s->err = err;
  return err;
}

/* Returns ns per call. */
static double measure_mm_rt(mm_loop_t *loop) {
  struct mm_rt s = { .iters = rt_iters };
  int err;
  if ((err = mm_spawn(loop, mm_rt_body, &s, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (s.err < 0)
    die("mm_run_sync", s.err);
  return (double) (s.t1 - s.t0) / (double) s.iters;
}

struct uv_rt {
  uv_work_t req;
  uint64_t done, warm, total;
  uint64_t t0, t1;
};

static void uv_rt_after(uv_work_t *req, int status) {
  struct uv_rt *s = (struct uv_rt *) req;   /* req is the first member */
  int err;
  if (status < 0)
    die("uv_queue_work (after)", status);
  s->done++;
  if (s->done == s->warm)
    s->t0 = now_ns();
  if (s->done == s->total) {
    s->t1 = now_ns();
    return;
  }
  if ((err = uv_queue_work(req->loop, req, uv_noop, uv_rt_after)) < 0)
    die("uv_queue_work", err);
}

/* Returns ns per round trip. */
static double measure_uv_rt(uv_loop_t *uv) {
  struct uv_rt s = { .warm = warmup_of(rt_iters) };
  int err;
  s.total = s.warm + rt_iters;
  if ((err = uv_queue_work(uv, &s.req, uv_noop, uv_rt_after)) < 0)
    die("uv_queue_work", err);
  if ((err = uv_run(uv, UV_RUN_DEFAULT)) < 0)
    die("uv_run", err);
  if (s.done != s.total)
    die("uv_run returned early", -EINTR);
  return (double) (s.t1 - s.t0) / (double) rt_iters;
}

/* ---- (b) throughput, WIDTH calls outstanding ------------------------------- */

/* Returns calls per second: iters calls of fn after the warm-up, WIDTH
 * in flight (floor.h). */
static double measure_mm_tp(mm_loop_t *loop, mm_fn fn, uint64_t iters) {
  struct tp_mm s = { .fn = fn, .warm = warmup_of(iters) };
  s.total = s.warm + iters;
  tp_mm_run(&s, loop);
  return (double) iters * 1e9 / (double) (s.t1 - s.t0);
}

/* Returns calls per second: iters calls of work after the warm-up. */
static double measure_uv_tp(uv_loop_t *uv, uv_work_cb work, uint64_t iters) {
  static struct tp_uv s;
  memset(&s, 0, sizeof s);
  s.work = work;
  s.warm = warmup_of(iters);
  s.total = s.warm + iters;
  tp_uv_run(&s, uv);
  return (double) iters * 1e9 / (double) (s.t1 - s.t0);
}

/* ---- (c) GLib: GThreadPool + GAsyncQueue ----------------------------------- */

#ifdef HAVE_GLIB
static void glib_work(gpointer data, gpointer user_data) {
  (void) noop(data);
  g_async_queue_push((GAsyncQueue *) user_data, data);
}

/* Returns ns per round trip. */
static double measure_glib_rt(GThreadPool *pool, GAsyncQueue *q) {
  GError *gerr = NULL;
  uint64_t warm = warmup_of(rt_iters), t0 = 0;
  for (uint64_t i = 0; i < warm + rt_iters; i++) {
    if (i == warm)
      t0 = now_ns();
    /* The data must not be NULL. */
    if (!g_thread_pool_push(pool, GINT_TO_POINTER(1), &gerr)) {
      fprintf(stderr, "bench/run-sync: g_thread_pool_push: %s\n",
              gerr->message);
      exit(EXIT_FAILURE);
    }
    (void) g_async_queue_pop(q);
  }
  return (double) (now_ns() - t0) / (double) rt_iters;
}
#endif


/* ---- (d), (e) run_async from plain threads, and the floor ------------------ */

/* A caller thread of (d) or (e): to mixmode's loop if loop is set, else
 * to the floor with request q. */
struct caller {
  pthread_t thread;
  mm_loop_t *loop;
  struct floor *floor;
  struct floor_req *q;
  pthread_barrier_t *start;
  uint64_t iters;
  uint64_t t0, t1;
  int err;
};

static void *caller_main(void *arg) {
  struct caller *c = arg;
  uint64_t warm = warmup_of(c->iters);
  int err = 0;
  for (uint64_t i = 0; i < warm && err == 0; i++) {
    if (c->loop != NULL)
      err = mm_run_async(c->loop, noop_coroutine, NULL);
    else
      floor_call(c->floor, c->q);
  }
  pthread_barrier_wait(c->start);
  c->t0 = now_ns();
  for (uint64_t i = 0; i < c->iters && err == 0; i++) {
    if (c->loop != NULL)
      err = mm_run_async(c->loop, noop_coroutine, NULL);
    else
      floor_call(c->floor, c->q);
  }
  c->t1 = now_ns();
  c->err = err;
  return NULL;
}

struct mt_result {
  double ns;                  /* per call per thread, median over threads */
  double kcps;                /* k calls/s in all */
};

/* n threads, each making iters round trips to loop (or, loop NULL, to f). */
static struct mt_result measure_callers(mm_loop_t *loop, struct floor *f,
                                        int n, uint64_t iters) {
  struct caller c[CALLERS];
  pthread_barrier_t start;
  double ns[CALLERS];
  int err;
  pthread_barrier_init(&start, NULL, (unsigned) n);
  for (int i = 0; i < n; i++) {
    c[i] = (struct caller) { .loop = loop, .floor = f, .q = &f->req[i],
                             .start = &start, .iters = iters };
    if ((err = pthread_create(&c[i].thread, NULL, caller_main, &c[i])) != 0)
      die("pthread_create", -err);
  }
  uint64_t first = UINT64_MAX, last = 0;
  for (int i = 0; i < n; i++) {
    pthread_join(c[i].thread, NULL);
    if (c[i].err < 0)
      die("mm_run_async", c[i].err);
    ns[i] = (double) (c[i].t1 - c[i].t0) / (double) iters;
    if (c[i].t0 < first)
      first = c[i].t0;
    if (c[i].t1 > last)
      last = c[i].t1;
  }
  pthread_barrier_destroy(&start);
  qsort(ns, (size_t) n, sizeof *ns, cmp_double);
  double med = n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2;
  return (struct mt_result) {
    .ns = med, .kcps = (double) n * (double) iters * 1e6 / (double) (last - first)
  };
}

/* ---- report ------------------------------------------------------------------ */

static void row(const char *what, const char *iters, struct result r,
                const char *aim, int met) {
  printf("%-38s %12s %10.1f %10.1f  %-8s %s\n", what, iters, r.median,
         r.best, aim, met < 0 ? "" : met ? "met" : "MISSED");
}

static void ratio_row(const char *what, struct result r, const char *aim,
                      int met) {
  printf("%-38s %12s %9.2fx %9.2fx  %-8s %s\n", what, "", r.median, r.best,
         aim, aim[0] == '\0' ? "" : met ? "met" : "MISSED");
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  rt_iters = scaled(rt_iters, scale);
  tp_iters = scaled(tp_iters, scale);
  bl_iters = scaled(bl_iters, scale);
  as_iters = scaled(as_iters, scale);
  mt_iters = scaled(mt_iters, scale);

  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  if (err < 0)
    die("mm_loop_new", err);
  uv_loop_t uv;
  if ((err = uv_loop_init(&uv)) < 0)
    die("uv_loop_init", err);
  /* (d), (e): a loop of its own, started once and idle (no CPU) while the
   * others are measured; likewise the floor's loop. */
  mm_loop_t *aloop;
  if ((err = mm_loop_new(&aloop, NULL)) < 0)
    die("mm_loop_new", err);
  if ((err = mm_loop_start(aloop)) < 0)
    die("mm_loop_start", err);
  static struct floor fl;
  floor_start(&fl);
#ifdef HAVE_GLIB
  GError *gerr = NULL;
  GAsyncQueue *q = g_async_queue_new();
  /* Exclusive: 4 threads of its own, like libuv's default pool, that end
   * when it is freed (shared GLib threads would outlive it). */
  GThreadPool *gpool = g_thread_pool_new(glib_work, q, 4, TRUE, &gerr);
  if (gpool == NULL) {
    fprintf(stderr, "bench/run-sync: g_thread_pool_new: %s\n",
            gerr->message);
    return EXIT_FAILURE;
  }
  double glib_ns[RUNS];
#endif

  double mm_rt_ns[RUNS], uv_rt_ns[RUNS], rt_ratio[RUNS];
  double mm_tp_cps[RUNS], uv_tp_cps[RUNS], tp_ratio[RUNS];
  double mm_bl_ms[RUNS], uv_bl_ms[RUNS], bl_ratio[RUNS];
  double mm_as_ns[RUNS], fl_as_ns[RUNS], as_ratio[RUNS];
  double mm_mt_ns[RUNS], fl_mt_ns[RUNS], mt_ratio[RUNS];
  double mm_mt_cps[RUNS], fl_mt_cps[RUNS];
  for (int r = 0; r < RUNS; r++) {
    mm_rt_ns[r] = measure_mm_rt(loop);
    uv_rt_ns[r] = measure_uv_rt(&uv);
    rt_ratio[r] = mm_rt_ns[r] / uv_rt_ns[r];
    mm_tp_cps[r] = measure_mm_tp(loop, noop, tp_iters) / 1000.0;
    uv_tp_cps[r] = measure_uv_tp(&uv, uv_noop, tp_iters) / 1000.0;
    mm_bl_ms[r] = (double) bl_iters * 1000.0 /
                  measure_mm_tp(loop, sleep_1ms, bl_iters);
    uv_bl_ms[r] = (double) bl_iters * 1000.0 /
                  measure_uv_tp(&uv, uv_sleep_1ms, bl_iters);
    bl_ratio[r] = mm_bl_ms[r] / uv_bl_ms[r];
    tp_ratio[r] = mm_tp_cps[r] / uv_tp_cps[r];
#ifdef HAVE_GLIB
    glib_ns[r] = measure_glib_rt(gpool, q);
#endif
    mm_as_ns[r] = measure_callers(aloop, &fl, 1, as_iters).ns;
    fl_as_ns[r] = measure_callers(NULL, &fl, 1, as_iters).ns;
    as_ratio[r] = mm_as_ns[r] / fl_as_ns[r];
    struct mt_result m = measure_callers(aloop, &fl, CALLERS, mt_iters);
    struct mt_result b = measure_callers(NULL, &fl, CALLERS, mt_iters);
    mm_mt_ns[r] = m.ns;
    fl_mt_ns[r] = b.ns;
    mt_ratio[r] = m.ns / b.ns;
    mm_mt_cps[r] = m.kcps;
    fl_mt_cps[r] = b.kcps;
  }

  /* Everything joined and freed before the report. */
  if ((err = mm_loop_free(loop)) < 0)
    die("mm_loop_free", err);
  if ((err = uv_loop_close(&uv)) < 0)
    die("uv_loop_close", err);
  if ((err = mm_loop_free(aloop)) < 0)
    die("mm_loop_free", err);
  floor_stop(&fl);
#ifdef HAVE_GLIB
  /* Waits for its tasks and stops its threads; GLib detaches them rather
   * than joining them, so they end on their own, at once. */
  g_thread_pool_free(gpool, FALSE, TRUE);
  g_async_queue_unref(q);
#endif

  struct result a_mm = summarize(mm_rt_ns, 0), a_uv = summarize(uv_rt_ns, 0);
  struct result a_q = summarize(rt_ratio, 0);
  struct result b_mm = summarize(mm_tp_cps, 1), b_uv = summarize(uv_tp_cps, 1);
  struct result b_q = summarize(tp_ratio, 1);
  struct result d_mm = summarize(mm_as_ns, 0), d_fl = summarize(fl_as_ns, 0);
  struct result d_q = summarize(as_ratio, 0);
  struct result e_mm = summarize(mm_mt_ns, 0), e_fl = summarize(fl_mt_ns, 0);
  struct result e_q = summarize(mt_ratio, 0);
  struct result e_mmc = summarize(mm_mt_cps, 1);
  struct result e_flc = summarize(fl_mt_cps, 1);
  struct result f_mm = summarize(mm_bl_ms, 0), f_uv = summarize(uv_bl_ms, 0);
  struct result f_q = summarize(bl_ratio, 0);
  char ri[32], ti[32], ai[32], mi[32], bi[32];
  snprintf(bi, sizeof bi, "%llu", (unsigned long long) bl_iters);
  snprintf(ri, sizeof ri, "%llu", (unsigned long long) rt_iters);
  snprintf(ti, sizeof ti, "%llu", (unsigned long long) tp_iters);
  snprintf(ai, sizeof ai, "%llu", (unsigned long long) as_iters);
  snprintf(mi, sizeof mi, "%d x %llu", CALLERS, (unsigned long long) mt_iters);

  printf("mixmode %s, libuv %s, bench/run-sync: %d runs of each, after a "
         "warm-up of\n1/10 the iterations\n\n", mm_version(),
         uv_version_string(), RUNS);
  printf("%-38s %12s %10s %10s  %-8s %s\n", "", "iterations", "median",
         "best", "aim", "");
  printf("(a) round trip, 1 outstanding, ns/call\n");
  row("  mixmode mm_run_sync(noop)", ri, a_mm, "", -1);
  row("  libuv uv_queue_work(noop)", ri, a_uv, "", -1);
  ratio_row("  ratio mixmode / libuv", a_q, "<= 0.3x", a_q.median <= 0.3);
  printf("(b) throughput, %d outstanding, k calls/s\n", WIDTH);
  row("  mixmode, 64 coroutines", ti, b_mm, "", -1);
  row("  libuv, 64 requests", ti, b_uv, "", -1);
  ratio_row("  ratio mixmode / libuv", b_q, ">= 2.0x", b_q.median >= 2.0);
#ifdef HAVE_GLIB
  struct result c_g = summarize(glib_ns, 0);
  printf("(c) reference, round trip, 1 outstanding, ns/call\n");
  row("  GLib GThreadPool + GAsyncQueue", ri, c_g, "", -1);
#else
  printf("(c) GLib reference: not built (no GLib)\n");
#endif
  printf("(d) run_async round trip, 1 thread, ns/call\n");
  row("  mixmode mm_run_async(noop coroutine)", ai, d_mm, "", -1);
  row("  floor: uv_async_send + condvar", ai, d_fl, "", -1);
  ratio_row("  ratio mixmode / floor", d_q, "<= 1.3x", d_q.median <= 1.3);
  printf("(e) run_async round trip, %d threads at once, ns/call per "
         "thread\n", CALLERS);
  row("  mixmode mm_run_async(noop coroutine)", mi, e_mm, "", -1);
  row("  floor: uv_async_send + condvar", mi, e_fl, "", -1);
  ratio_row("  ratio mixmode / floor", e_q, "<= 1.3x", e_q.median <= 1.3);
  printf("    in all, k calls/s\n");
  row("  mixmode", mi, e_mmc, "", -1);
  row("  floor", mi, e_flc, "", -1);
  printf("(f) reference, calls that block 1 ms, %d outstanding, ms in "
         "all (ideal %.1f)\n", WIDTH, (double) bl_iters / WIDTH);
  row("  mixmode mm_run_sync(sleep 1 ms)", bi, f_mm, "", -1);
  row("  libuv uv_queue_work(sleep 1 ms)", bi, f_uv, "", -1);
  ratio_row("  ratio mixmode / libuv", f_q, "", true);
  printf("\nround trip: one call of a no-op function from the caller asking "
         "to the caller\nrunning again with its result (mixmode: a coroutine "
         "suspended and resumed;\nlibuv: queue_work to after_work callback; "
         "GLib: push to pop).  throughput:\ncalls completed per second with "
         "%d calls always in flight, counted between\nthe end of the warm-up "
         "and the last completion.  Ratios are per run, mixmode\nover libuv "
         "(or the floor); best is the lowest time, the highest rate or the\n"
         "best ratio.  libuv's pool is process-global, UV_THREADPOOL_SIZE as "
         "inherited\n(default 4 threads); mixmode's pool is its loop's (up "
         "to 64 threads).\nrun_async round trip: from a plain thread calling "
         "mm_run_async to it running\nagain with the coroutine's status, "
         "on a loop started with mm_loop_start.  The\nfloor is a bare "
         "hand-off to a raw uv loop's thread and back (request on a\n"
         "mutex-protected list, uv_async_send; the async callback signals "
         "the caller's\ncondition variable): two wake-ups, what any "
         "thread-to-loop call costs at least.\n(e) per thread: each "
         "thread's time over its calls, median over the %d threads;\n"
         "in all: %d N calls over first start to last end.  Verdicts use "
         "the median.\n(f) blocking: the pool must give each waiting call "
         "a thread, up to its\nmaximum; libuv's 4 threads run 4 at a "
         "time.\n", WIDTH, CALLERS, CALLERS);
  return EXIT_SUCCESS;
}
