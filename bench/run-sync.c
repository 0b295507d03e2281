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
 *       ns per round trip.  Aim: mixmode at most 0.7x libuv.
 *   (b) Throughput, 64 calls outstanding.  64 coroutines of one loop each
 *       call mm_run_sync(noop) in a loop until N calls have completed in
 *       all: calls per second.  Baseline: 64 uv_queue_work requests
 *       outstanding, each after-work callback queueing the next one.
 *       Aim: mixmode at least 1.5x libuv.
 *   (c) Reference only, when built with GLib: a GThreadPool running a
 *       no-op that pushes to a GAsyncQueue, the main thread popping it,
 *       one call outstanding: ns per round trip.
 *
 * mm_run_async is not measured: it does not exist yet.  Its numbers
 * (issue 4) are to be added here when it does.
 *
 * libuv's worker pool is process-global and sized from UV_THREADPOOL_SIZE
 * (default 4); this program sets nothing, so the baseline is libuv as a
 * user gets it.  mixmode's pool belongs to its loop (defaults: grows on
 * demand up to 64 threads).  The aims are measured, not asserted: the
 * program exits 0 whatever the numbers are.
 *
 * Usage: bench/run-sync [SCALE]  SCALE multiplies the iteration counts
 *                                (default 1; 0.1 for a quick look).
 *
 * Only <mixmode.h>, <uv.h>, libc (and GLib): what a user of the library
 * gets.
 */
#define _GNU_SOURCE
#include <mixmode.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#ifdef HAVE_GLIB
# include <glib.h>
#endif

enum { RUNS = 5, WIDTH = 64 };

static uint64_t rt_iters = 5000;        /* round trips, (a) and (c) */
static uint64_t tp_iters = 60000;       /* calls in all, (b) */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t warmup_of(uint64_t iters) {
  return iters / 10 + 1;
}

static void die(const char *what, int err) {
  fprintf(stderr, "bench/run-sync: %s: %s\n", what, mm_strerror(err));
  exit(EXIT_FAILURE);
}

/* The work: nothing.  noinline so that the call is really made. */
__attribute__((noinline)) static int noop(void *arg) {
  (void) arg;
  __asm__ volatile("" ::: "memory");
  return 0;
}

static void uv_noop(uv_work_t *req) {
  (void) noop(req);
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

/* Shared by the WIDTH callers; they all run on the loop's thread, so plain
 * counters do.  A caller starts a call only while fewer than total have
 * been started; t0 is taken when the warm-up's calls have completed, t1
 * when the last call has: exactly `iters` completions lie in between. */
struct mm_tp {
  uint64_t started, done, warm, total;
  uint64_t t0, t1;
  int err;
};

static int mm_tp_body(void *arg) {
  struct mm_tp *s = arg;
  while (s->started < s->total && s->err == 0) {
    s->started++;
    int err = mm_run_sync(noop, NULL);
    if (err < 0) {
      s->err = err;
      return err;
    }
    s->done++;
    if (s->done == s->warm)
      s->t0 = now_ns();
    if (s->done == s->total)
      s->t1 = now_ns();
  }
  return 0;
}

/* Returns calls per second. */
static double measure_mm_tp(mm_loop_t *loop) {
  struct mm_tp s = { .warm = warmup_of(tp_iters) };
  int err;
  s.total = s.warm + tp_iters;
  for (int i = 0; i < WIDTH; i++)
    if ((err = mm_spawn(loop, mm_tp_body, &s, NULL)) < 0)
      die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (s.err < 0)
    die("mm_run_sync", s.err);
  return (double) tp_iters * 1e9 / (double) (s.t1 - s.t0);
}

struct uv_tp {
  uv_work_t req[WIDTH];
  uint64_t started, done, warm, total;
  uint64_t t0, t1;
};

static struct uv_tp *uv_tp_state;   /* after-work callbacks find it here */

static void uv_tp_after(uv_work_t *req, int status) {
  struct uv_tp *s = uv_tp_state;
  int err;
  if (status < 0)
    die("uv_queue_work (after)", status);
  s->done++;
  if (s->done == s->warm)
    s->t0 = now_ns();
  if (s->done == s->total)
    s->t1 = now_ns();
  if (s->started < s->total) {
    s->started++;
    if ((err = uv_queue_work(req->loop, req, uv_noop, uv_tp_after)) < 0)
      die("uv_queue_work", err);
  }
}

/* Returns calls per second. */
static double measure_uv_tp(uv_loop_t *uv) {
  static struct uv_tp s;
  int err;
  memset(&s, 0, sizeof s);
  s.warm = warmup_of(tp_iters);
  s.total = s.warm + tp_iters;
  uv_tp_state = &s;
  for (int i = 0; i < WIDTH && s.started < s.total; i++) {
    s.started++;
    if ((err = uv_queue_work(uv, &s.req[i], uv_noop, uv_tp_after)) < 0)
      die("uv_queue_work", err);
  }
  if ((err = uv_run(uv, UV_RUN_DEFAULT)) < 0)
    die("uv_run", err);
  if (s.done != s.total)
    die("uv_run returned early", -EINTR);
  return (double) tp_iters * 1e9 / (double) (s.t1 - s.t0);
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

/* ---- report ------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

struct result {
  double median, best;
};

/* higher: whether a higher value is better (then "best" is the highest). */
static struct result summarize(double *v, int higher) {
  qsort(v, RUNS, sizeof *v, cmp_double);
  return (struct result) { .median = v[RUNS / 2],
                           .best = higher ? v[RUNS - 1] : v[0] };
}

static void row(const char *what, const char *iters, struct result r,
                const char *aim, int met) {
  printf("%-38s %12s %10.1f %10.1f  %-8s %s\n", what, iters, r.median,
         r.best, aim, met < 0 ? "" : met ? "met" : "MISSED");
}

static void ratio_row(const char *what, struct result r, const char *aim,
                      int met) {
  printf("%-38s %12s %9.2fx %9.2fx  %-8s %s\n", what, "", r.median, r.best,
         aim, met ? "met" : "MISSED");
}

int main(int argc, char **argv) {
  if (argc > 1) {
    char *end;
    double scale = strtod(argv[1], &end);
    if (*end != '\0' || scale <= 0 || argc > 2) {
      fprintf(stderr, "usage: %s [SCALE]  (SCALE > 0 multiplies the "
              "iteration counts)\n", argv[0]);
      return 2;
    }
    rt_iters = (uint64_t) (rt_iters * scale) + 1;
    tp_iters = (uint64_t) (tp_iters * scale) + 1;
  }

  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  if (err < 0)
    die("mm_loop_new", err);
  uv_loop_t uv;
  if ((err = uv_loop_init(&uv)) < 0)
    die("uv_loop_init", err);
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
  for (int r = 0; r < RUNS; r++) {
    mm_rt_ns[r] = measure_mm_rt(loop);
    uv_rt_ns[r] = measure_uv_rt(&uv);
    rt_ratio[r] = mm_rt_ns[r] / uv_rt_ns[r];
    mm_tp_cps[r] = measure_mm_tp(loop) / 1000.0;
    uv_tp_cps[r] = measure_uv_tp(&uv) / 1000.0;
    tp_ratio[r] = mm_tp_cps[r] / uv_tp_cps[r];
#ifdef HAVE_GLIB
    glib_ns[r] = measure_glib_rt(gpool, q);
#endif
  }

  /* Everything joined and freed before the report. */
  if ((err = mm_loop_free(loop)) < 0)
    die("mm_loop_free", err);
  if ((err = uv_loop_close(&uv)) < 0)
    die("uv_loop_close", err);
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
  char ri[32], ti[32];
  snprintf(ri, sizeof ri, "%llu", (unsigned long long) rt_iters);
  snprintf(ti, sizeof ti, "%llu", (unsigned long long) tp_iters);

  printf("mixmode %s, libuv %s, bench/run-sync: %d runs of each, after a "
         "warm-up of\n1/10 the iterations\n\n", mm_version(),
         uv_version_string(), RUNS);
  printf("%-38s %12s %10s %10s  %-8s %s\n", "", "iterations", "median",
         "best", "aim", "");
  printf("(a) round trip, 1 outstanding, ns/call\n");
  row("  mixmode mm_run_sync(noop)", ri, a_mm, "", -1);
  row("  libuv uv_queue_work(noop)", ri, a_uv, "", -1);
  ratio_row("  ratio mixmode / libuv", a_q, "<= 0.7x", a_q.median <= 0.7);
  printf("(b) throughput, %d outstanding, k calls/s\n", WIDTH);
  row("  mixmode, 64 coroutines", ti, b_mm, "", -1);
  row("  libuv, 64 requests", ti, b_uv, "", -1);
  ratio_row("  ratio mixmode / libuv", b_q, ">= 1.5x", b_q.median >= 1.5);
#ifdef HAVE_GLIB
  struct result c_g = summarize(glib_ns, 0);
  printf("(c) reference, round trip, 1 outstanding, ns/call\n");
  row("  GLib GThreadPool + GAsyncQueue", ri, c_g, "", -1);
#else
  printf("(c) GLib reference: not built (no GLib)\n");
#endif
  printf("\nround trip: one call of a no-op function from the caller asking "
         "to the caller\nrunning again with its result (mixmode: a coroutine "
         "suspended and resumed;\nlibuv: queue_work to after_work callback; "
         "GLib: push to pop).  throughput:\ncalls completed per second with "
         "%d calls always in flight, counted between\nthe end of the warm-up "
         "and the last completion.  Ratios are per run, mixmode\nover libuv; "
         "best is the lowest time, the highest rate or the best ratio.\n"
         "libuv's pool is process-global, UV_THREADPOOL_SIZE as inherited "
         "(default 4\nthreads); mixmode's pool is its loop's (up to 64 "
         "threads).  Verdicts use the\nmedian.\n", WIDTH);
  return EXIT_SUCCESS;
}
