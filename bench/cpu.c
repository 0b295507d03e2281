/* cpu: what the bridges cost in CPU, not only in time, at four loads, with
 * a busy neighbour, and with several loops in one process (issue 11).
 *
 * bench/run-sync measures time; a bridge can buy time by spinning, and
 * this program shows the bill.  Every figure takes getrusage(RUSAGE_SELF)
 * (user + sys, every thread of the process: callers, loops, workers) at
 * the start and end of its measured window, besides CLOCK_MONOTONIC, and
 * prints CPU per call (window's CPU / calls in the window) beside the
 * time.  Each is measured for mixmode and for libuv in the same run:
 *
 *   mm_run_sync (a coroutine calls noop on the loop's pool)
 *     against uv_queue_work(noop), the next request queued from the
 *     after-work callback (libuv's pool is process-global, 4 threads by
 *     default; nothing is set, libuv as a user gets it);
 *   mm_run_async (a plain thread runs a no-op coroutine on a loop started
 *     with mm_loop_start) against the floor of bench/run-sync: a raw uv
 *     loop on its own thread, woken by uv_async_send, answering on the
 *     caller's condition variable.
 *
 * The figures:
 *   1. back to back: one call outstanding, N calls in a row: ns per call
 *      and CPU per call.
 *   2. 64 outstanding: run_sync: 64 coroutines of one loop (64 requests
 *      for libuv) calling until N calls are done; run_async: 64 plain
 *      threads, N / 64 calls each.  Calls per second and CPU per call.
 *   3. sporadic: one call every 200 us for 2 s (10000 calls), paced on
 *      absolute times (call i waits for start + i * 200 us, or goes at
 *      once if late), so both sides make the same calls over about the
 *      same time.  run_sync: the coroutine waits on a timerfd armed at the
 *      next time with mm_wait_fd, libuv's loop on the same kind of timerfd
 *      with a uv_poll_t, whose callback queues the work: both loops sleep
 *      in epoll between calls, as a server waiting for its clients does
 *      (mm_sleep and uv timers count in ms, too coarse).  run_async: the
 *      thread waits with clock_nanosleep(TIMER_ABSTIME).  Latency from
 *      the call to its answer (median and p99 over the calls), and the
 *      whole process's CPU over the 2 s per call: a bridge that spins
 *      between calls pays here.
 *   4. idle after a burst: 10000 calls back to back, then nothing for
 *      100 ms (the caller waits on its loop with mm_sleep, or a uv timer,
 *      or, a plain thread, nanosleep): the process's CPU in those 100 ms,
 *      as % of one CPU: what workers and loops burn after the work ends.
 *   5. busy neighbour: figure 1 again while a child process spins on one
 *      CPU (pinned with sched_setaffinity to the first CPU this process
 *      may use, when allowed; said in the output).
 *   6. several loops (run_sync only): 1, 2 and 4 mixmode loops, each run
 *      by a thread of its own, each with 64 coroutines calling until N
 *      calls are done: calls per second in all and CPU per call.  libuv:
 *      1, 2 and 4 uv loops, each with 64 requests outstanding, sharing
 *      libuv's one pool.
 *
 * Each figure is measured RUNS times, mixmode and libuv alternating
 * within a run, after a warm-up (1/10 of the calls; 50 paced calls for
 * figure 3).  Before each measurement the process is let settle: it waits
 * (at most 500 ms) until it uses less than 2% of a CPU, so that threads
 * still spinning from the previous measurement are not billed to the next
 * one.  Medians over the runs are printed; ratios are per run, mixmode
 * over libuv.  The aims (issue 11) are printed, not asserted: the program
 * exits 0 whatever the numbers.
 *
 * Usage: bench/cpu [SCALE]  SCALE multiplies the calls and the durations
 *                           (default 1, about a minute; 0.1 for a look).
 *
 * Only <mixmode.h>, <uv.h> and libc: what a user of the library gets.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench/cpu"
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "floor.h"

enum { WIDTH = TP_WIDTH, MAX_LOOPS = 4, SP_WARM = 50 };
_Static_assert((int) WIDTH <= (int) FLOOR_CALLERS, "a floor request per caller");

static uint64_t rt_iters = 5000;        /* back to back, 1 and 5 */
static uint64_t tp_iters = 60000;       /* 64 outstanding, run_sync */
static uint64_t atp_iters = 20000;      /* 64 outstanding, run_async */
static uint64_t sp_calls = 10000;       /* sporadic: 2 s at 200 us */
static uint64_t burst_iters = 10000;    /* idle after a burst */
static uint64_t lp_iters = 30000;       /* several loops: calls per loop */

static const uint64_t sp_period_ns = 200000;
static const uint64_t idle_ms = 100;

/* ---- windows: wall time and the whole process's CPU --------------------- */

struct win {
  uint64_t t;                 /* CLOCK_MONOTONIC, ns */
  uint64_t cpu;               /* user + sys of every thread, ns */
};

static struct win win_now(void) {
  return (struct win) { .t = now_ns(), .cpu = cpu_ns() };
}

/* What one measurement gives: time (ns per call, or calls per second)
 * and CPU per call, in us. */
struct meas {
  double time;
  double cpu_us;
};

static struct meas per_call(struct win a, struct win b, uint64_t calls) {
  return (struct meas) { .time = (double) (b.t - a.t) / (double) calls,
                         .cpu_us = (double) (b.cpu - a.cpu) / 1e3 /
                                   (double) calls };
}

static struct meas rate(struct win a, struct win b, uint64_t calls) {
  return (struct meas) { .time = (double) calls * 1e9 / (double) (b.t - a.t),
                         .cpu_us = (double) (b.cpu - a.cpu) / 1e3 /
                                   (double) calls };
}

/* Waits until the process is quiet (under 2% of a CPU over 10 ms), at
 * most 500 ms: threads of the previous measurement still spinning would
 * otherwise be billed to the next. */
static void settle(void) {
  for (int i = 0; i < 50; i++) {
    struct win a = win_now();
    struct timespec ts = { 0, 10000000 };
    nanosleep(&ts, NULL);
    struct win b = win_now();
    if ((b.cpu - a.cpu) * 50 < b.t - a.t)
      return;
  }
}

static void sleep_until(uint64_t t) {
  struct timespec ts = { (time_t) (t / 1000000000u),
                         (long) (t % 1000000000u) };
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

/* ---- run_sync, mixmode: one coroutine, back to back or paced ------------ */

enum mode { BACK_TO_BACK, SPORADIC, BURST_THEN_IDLE };

struct mm_one {
  enum mode mode;
  uint64_t iters;
  int tfd;                    /* SPORADIC: the timerfd that paces */
  uint64_t *lat;              /* SPORADIC: ns per call, iters of them */
  struct win w0, w1;
  int err;
};

/* Arms tfd (CLOCK_MONOTONIC, like now_ns) to fire at t, at once if t
 * has passed. */
static void arm(int tfd, uint64_t t) {
  struct itimerspec its = {
    .it_value = { (time_t) (t / 1000000000u), (long) (t % 1000000000u) }
  };
  if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
    die("timerfd_settime", -errno);
}

static void disarm(int tfd) {
  uint64_t n;
  if (read(tfd, &n, sizeof n) != (ssize_t) sizeof n)
    die("read (timerfd)", -errno);
}

static int mm_one_body(void *arg) {
  struct mm_one *s = arg;
  int err = 0;
  if (s->mode == SPORADIC) {
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < SP_WARM + s->iters && err == 0; i++) {
      if (i == SP_WARM)
        s->w0 = win_now();
      arm(s->tfd, start + i * sp_period_ns);
      if ((err = mm_wait_fd(s->tfd, MM_READABLE, 0)) < 0)
        break;
      disarm(s->tfd);
      uint64_t t = now_ns();
      err = mm_run_sync(noop, NULL);
      if (i >= SP_WARM)
        s->lat[i - SP_WARM] = now_ns() - t;
    }
    s->w1 = win_now();
    s->err = err < 0 ? err : 0;
    return s->err;
  }
  for (uint64_t i = 0; i < warmup_of(s->iters) && err == 0; i++)
    err = mm_run_sync(noop, NULL);
  s->w0 = win_now();
  for (uint64_t i = 0; i < s->iters && err == 0; i++)
    err = mm_run_sync(noop, NULL);
  s->w1 = win_now();
  if (s->mode == BURST_THEN_IDLE && err == 0) {
    /* The window is now the idle time after the burst. */
    s->w0 = s->w1;
    err = mm_sleep(idle_ms);
    s->w1 = win_now();
  }
  s->err = err;
  return err;
}

static struct mm_one measure_mm_one(mm_loop_t *loop, enum mode mode,
                                    uint64_t iters, int tfd, uint64_t *lat) {
  struct mm_one s = { .mode = mode, .iters = iters, .tfd = tfd, .lat = lat };
  int err;
  settle();
  if ((err = mm_spawn(loop, mm_one_body, &s, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (s.err < 0)
    die("mm_run_sync", s.err);
  return s;
}

/* ---- run_sync, libuv: the same from after-work callbacks ---------------- */

struct uv_one {
  uv_work_t req;              /* first: the callbacks get &req */
  uv_poll_t poll;             /* SPORADIC: on tfd */
  uv_timer_t timer;           /* BURST_THEN_IDLE: the idle time */
  enum mode mode;
  uint64_t done, warm, total;
  int tfd;
  uint64_t *lat;
  uint64_t start, t;          /* SPORADIC: pacing origin, call start */
  struct win w0, w1;
};

static void uv_one_after(uv_work_t *req, int status);

static void uv_one_queue(struct uv_one *s, uv_loop_t *uv) {
  int err;
  s->t = now_ns();
  if ((err = uv_queue_work(uv, &s->req, uv_noop, uv_one_after)) < 0)
    die("uv_queue_work", err);
}

static void uv_one_poll_cb(uv_poll_t *h, int status, int events) {
  struct uv_one *s = h->data;
  (void) events;
  if (status < 0)
    die("uv_poll (timerfd)", status);
  disarm(s->tfd);
  uv_one_queue(s, h->loop);
}

static void uv_one_idle_cb(uv_timer_t *h) {
  struct uv_one *s = h->data;
  s->w1 = win_now();
  uv_close((uv_handle_t *) h, NULL);
}

static void uv_one_after(uv_work_t *req, int status) {
  struct uv_one *s = (struct uv_one *) req;
  int err;
  if (status < 0)
    die("uv_queue_work (after)", status);
  if (s->mode == SPORADIC && s->done >= s->warm)
    s->lat[s->done - s->warm] = now_ns() - s->t;
  s->done++;
  if (s->done == s->warm)
    s->w0 = win_now();
  if (s->done == s->total) {
    s->w1 = win_now();
    if (s->mode == SPORADIC) {
      uv_close((uv_handle_t *) &s->poll, NULL);
    } else if (s->mode == BURST_THEN_IDLE) {
      s->w0 = s->w1;
      if ((err = uv_timer_start(&s->timer, uv_one_idle_cb, idle_ms, 0)) < 0)
        die("uv_timer_start", err);
    }
    return;
  }
  if (s->mode == SPORADIC)
    arm(s->tfd, s->start + s->done * sp_period_ns);
  else
    uv_one_queue(s, req->loop);
}

static struct uv_one *measure_uv_one(uv_loop_t *uv, enum mode mode,
                                     uint64_t iters, int tfd, uint64_t *lat) {
  static struct uv_one s;
  int err;
  settle();
  memset(&s, 0, sizeof s);
  s.mode = mode;
  s.warm = mode == SPORADIC ? SP_WARM : warmup_of(iters);
  s.total = s.warm + iters;
  s.tfd = tfd;
  s.lat = lat;
  if (mode == SPORADIC) {
    if ((err = uv_poll_init(uv, &s.poll, tfd)) < 0)
      die("uv_poll_init", err);
    s.poll.data = &s;
    if ((err = uv_poll_start(&s.poll, UV_READABLE, uv_one_poll_cb)) < 0)
      die("uv_poll_start", err);
    s.start = now_ns();
    arm(tfd, s.start);
  } else {
    if (mode == BURST_THEN_IDLE) {
      if ((err = uv_timer_init(uv, &s.timer)) < 0)
        die("uv_timer_init", err);
      s.timer.data = &s;
    }
    uv_one_queue(&s, uv);
  }
  if ((err = uv_run(uv, UV_RUN_DEFAULT)) < 0)
    die("uv_run", err);
  if (s.done != s.total)
    die("uv_run returned early", -EINTR);
  return &s;
}

/* ---- run_sync, 64 outstanding, on 1 to MAX_LOOPS loops ------------------ */

/* total calls on one loop, TP_WIDTH in flight (floor.h); the window is
 * measured around the call. */
static void mm_tp_run(mm_loop_t *loop, uint64_t calls) {
  struct tp_mm s = { .fn = noop, .total = calls };
  tp_mm_run(&s, loop);
}

static void uv_tp_run(uv_loop_t *uv, uint64_t calls) {
  struct tp_uv *s = calloc(1, sizeof *s);
  if (s == NULL)
    die("calloc", -ENOMEM);
  s->work = uv_noop;
  s->total = calls;
  tp_uv_run(s, uv);
  free(s);
}

/* A thread driving one loop: warm-up, then both barriers (all warm; the
 * window opened), then the measured calls. */
struct driver {
  pthread_t thread;
  mm_loop_t *loop;            /* NULL: a uv loop of the thread's own */
  uint64_t iters;
  pthread_barrier_t *ready, *go;
};

static void *driver_main(void *arg) {
  struct driver *d = arg;
  uv_loop_t uv;
  int err;
  if (d->loop == NULL && (err = uv_loop_init(&uv)) < 0)
    die("uv_loop_init", err);
  if (d->loop != NULL)
    mm_tp_run(d->loop, warmup_of(d->iters));
  else
    uv_tp_run(&uv, warmup_of(d->iters));
  pthread_barrier_wait(d->ready);
  pthread_barrier_wait(d->go);
  if (d->loop != NULL)
    mm_tp_run(d->loop, d->iters);
  else
    uv_tp_run(&uv, d->iters);
  if (d->loop == NULL && (err = uv_loop_close(&uv)) < 0)
    die("uv_loop_close", err);
  return NULL;
}

/* n loops (mixmode's loops[0..n-1], or n uv loops if loops is NULL), each
 * with WIDTH calls outstanding until iters are done: calls per second in
 * all, and CPU per call. */
static struct meas measure_loops(mm_loop_t **loops, int n, uint64_t iters) {
  struct driver d[MAX_LOOPS];
  pthread_barrier_t ready, go;
  int err;
  settle();
  pthread_barrier_init(&ready, NULL, (unsigned) n + 1);
  pthread_barrier_init(&go, NULL, (unsigned) n + 1);
  for (int i = 0; i < n; i++) {
    d[i] = (struct driver) { .loop = loops != NULL ? loops[i] : NULL,
                             .iters = iters, .ready = &ready, .go = &go };
    if ((err = pthread_create(&d[i].thread, NULL, driver_main, &d[i])) != 0)
      die("pthread_create", -err);
  }
  pthread_barrier_wait(&ready);
  struct win w0 = win_now();
  pthread_barrier_wait(&go);
  for (int i = 0; i < n; i++)
    pthread_join(d[i].thread, NULL);
  struct win w1 = win_now();
  pthread_barrier_destroy(&ready);
  pthread_barrier_destroy(&go);
  return rate(w0, w1, (uint64_t) n * iters);
}

/* ---- run_async, and the floor ------------------------------------------- */

/* A plain thread's call: to mixmode's loop if it is set, else to the
 * floor with request q. */
struct target {
  mm_loop_t *loop;
  struct floor *floor;
};

static int noop_coroutine(void *arg) {
  return noop(arg);
}

static void call(struct target t, struct floor_req *q) {
  if (t.loop == NULL) {
    floor_call(t.floor, q);
    return;
  }
  int err = mm_run_async(t.loop, noop_coroutine, NULL);
  if (err < 0)
    die("mm_run_async", err);
}

struct caller {
  pthread_t thread;
  struct target t;
  struct floor_req *q;
  uint64_t iters;
  pthread_barrier_t *ready, *go;
};

static void *caller_main(void *arg) {
  struct caller *c = arg;
  for (uint64_t i = 0; i < warmup_of(c->iters); i++)
    call(c->t, c->q);
  pthread_barrier_wait(c->ready);
  pthread_barrier_wait(c->go);
  for (uint64_t i = 0; i < c->iters; i++)
    call(c->t, c->q);
  return NULL;
}

/* n plain threads (1: back to back; WIDTH: 64 outstanding), iters calls
 * in all: the time per call (n 1) or calls per second (n > 1), and CPU
 * per call. */
static struct meas measure_callers(struct target t, int n, uint64_t iters) {
  struct caller *c = calloc((size_t) n, sizeof *c);
  pthread_barrier_t ready, go;
  uint64_t each = iters / (uint64_t) n + 1;
  int err;
  if (c == NULL)
    die("calloc", -ENOMEM);
  settle();
  pthread_barrier_init(&ready, NULL, (unsigned) n + 1);
  pthread_barrier_init(&go, NULL, (unsigned) n + 1);
  for (int i = 0; i < n; i++) {
    c[i] = (struct caller) { .t = t, .q = &t.floor->req[i], .iters = each,
                             .ready = &ready, .go = &go };
    if ((err = pthread_create(&c[i].thread, NULL, caller_main, &c[i])) != 0)
      die("pthread_create", -err);
  }
  pthread_barrier_wait(&ready);
  struct win w0 = win_now();
  pthread_barrier_wait(&go);
  for (int i = 0; i < n; i++)
    pthread_join(c[i].thread, NULL);
  struct win w1 = win_now();
  pthread_barrier_destroy(&ready);
  pthread_barrier_destroy(&go);
  free(c);
  uint64_t calls = each * (uint64_t) n;
  return n == 1 ? per_call(w0, w1, calls) : rate(w0, w1, calls);
}

/* Sporadic calls from this thread, paced on absolute times: latencies in
 * lat, CPU per call. */
static struct meas measure_async_sporadic(struct target t, uint64_t *lat) {
  settle();
  struct win w0 = { 0 };
  uint64_t start = now_ns();
  for (uint64_t i = 0; i < SP_WARM + sp_calls; i++) {
    if (i == SP_WARM)
      w0 = win_now();
    sleep_until(start + i * sp_period_ns);
    uint64_t t0 = now_ns();
    call(t, &t.floor->req[0]);
    if (i >= SP_WARM)
      lat[i - SP_WARM] = now_ns() - t0;
  }
  return per_call(w0, win_now(), sp_calls);
}

/* A burst from this thread, then idle_ms of nothing: % of one CPU the
 * process used in the idle time. */
static double measure_async_idle(struct target t) {
  settle();
  for (uint64_t i = 0; i < burst_iters; i++)
    call(t, &t.floor->req[0]);
  struct win w0 = win_now();
  sleep_until(w0.t + idle_ms * 1000000u);
  struct win w1 = win_now();
  return (double) (w1.cpu - w0.cpu) * 100.0 / (double) (w1.t - w0.t);
}

/* ---- the busy neighbour ------------------------------------------------- */

struct neighbour {
  pid_t pid;
  bool pinned;
};

/* Forks a child that spins on the first CPU this process may use (pinned
 * there when sched_setaffinity allows) until it is killed (60 s at most);
 * returns once it spins. */
static struct neighbour neighbour_start(void) {
  int fds[2];
  cpu_set_t mine, one;
  int cpu = 0;
  if (pipe(fds) < 0)
    die("pipe", -errno);
  CPU_ZERO(&mine);
  if (sched_getaffinity(0, sizeof mine, &mine) == 0)
    while (cpu < CPU_SETSIZE - 1 && !CPU_ISSET(cpu, &mine))
      cpu++;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0)
    die("fork", -errno);
  if (pid == 0) {
    /* Only async-signal-safe calls in the child of a threaded process.
     * It must not outlive the benchmark on a shared machine: it dies with
     * its parent (killed mid-run, or crashed), and after 60 s in any
     * case. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
      _exit(1);
    char c = sched_setaffinity(0, sizeof one, &one) == 0 ? 'p' : 'u';
    if (write(fds[1], &c, 1) != 1)
      _exit(1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
      for (volatile unsigned x = 0; x < 1000000; x++)
        ;
      clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec - t0.tv_sec < 60);
    _exit(0);
  }
  close(fds[1]);
  char c = 'u';
  if (read(fds[0], &c, 1) != 1)
    die("read (neighbour)", -EPIPE);
  close(fds[0]);
  return (struct neighbour) { .pid = pid, .pinned = c == 'p' };
}

static void neighbour_stop(struct neighbour n) {
  kill(n.pid, SIGKILL);
  while (waitpid(n.pid, NULL, 0) < 0 && errno == EINTR)
    ;
}

/* ---- report ------------------------------------------------------------- */

static double pct(const uint64_t *sorted, uint64_t n, double p) {
  uint64_t i = (uint64_t) (p * (double) (n - 1) + 0.5);
  return (double) sorted[i];
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return (x > y) - (x < y);
}

/* One figure's RUNS values on each side and their per-run ratios. */
struct fig {
  double mm[RUNS], base[RUNS], q[RUNS];
};

static void put(struct fig *f, int r, double mm, double base) {
  f->mm[r] = mm;
  f->base[r] = base;
  f->q[r] = base > 0 ? mm / base : (mm > 0 ? 1e9 : 1.0);
}

static double median(const double *v) {
  double s[RUNS];
  memcpy(s, v, sizeof s);
  qsort(s, RUNS, sizeof *s, cmp_double);
  return s[RUNS / 2];
}

static double spread(const double *v, double *lo) {
  double s[RUNS];
  memcpy(s, v, sizeof s);
  qsort(s, RUNS, sizeof *s, cmp_double);
  *lo = s[0];
  return s[RUNS - 1];
}

/* aim: "<= X" or ">= X" on the median ratio, or "" for none.  on_mm:
 * judge mixmode's own median instead (a ratio already). */
static void line_on(const char *what, const struct fig *f, const char *aim,
                    bool on_mm) {
  double q = median(f->q), lo, hi = spread(f->q, &lo);
  char qs[48], verdict[32] = "";
  /* A ratio over a baseline of 0 is stored as 1e9: "inf". */
  char qv[16], hv[16];
  snprintf(qv, sizeof qv, q >= 1e8 ? "inf" : "%.2fx", q);
  snprintf(hv, sizeof hv, hi >= 1e8 ? "inf" : "%.2f", hi);
  snprintf(qs, sizeof qs, "%s (%.2f-%s)", qv, lo, hv);
  if (aim[0] != '\0') {
    double x = atof(aim + 3), v = on_mm ? median(f->mm) : q;
    bool met = aim[0] == '<' ? v <= x : v >= x;
    snprintf(verdict, sizeof verdict, "aim %s%s %s", on_mm ? "mixmode " : "",
             aim, met ? "met" : "MISSED");
  }
  printf("%-38s | %10.2f | %10.2f | %-21s | %s\n", what, median(f->mm),
         median(f->base), qs, verdict);
}

static void line(const char *what, const struct fig *f, const char *aim) {
  line_on(what, f, aim, false);
}

static void header(const char *title, const char *base) {
  printf("\n%s\n%-38s | %10s | %10s | %-21s | %s\n", title, "figure",
         "mixmode", base, "ratio (min-max)", "aim");
}

static void machine(void) {
  struct utsname u;
  char model[128] = "?";
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f != NULL) {
    char buf[256];
    while (fgets(buf, sizeof buf, f) != NULL)
      if (strncmp(buf, "model name", 10) == 0) {
        char *p = strchr(buf, ':');
        if (p != NULL) {
          snprintf(model, sizeof model, "%s", p + 2);
          model[strcspn(model, "\n")] = '\0';
        }
        break;
      }
    fclose(f);
  }
  cpu_set_t mine;
  int usable = -1;
  if (sched_getaffinity(0, sizeof mine, &mine) == 0)
    usable = CPU_COUNT(&mine);
  double load[3] = { -1, -1, -1 };
  getloadavg(load, 3);
  if (uname(&u) < 0)
    strcpy(u.release, "?");
  printf("machine: %ld CPUs online (%d usable here), %s; %s %s %s; "
         "load %.2f %.2f %.2f\n", sysconf(_SC_NPROCESSORS_ONLN), usable,
         model, u.sysname, u.release, u.machine, load[0], load[1], load[2]);
}

/* Figures 1 to 5 of one bridge. */
struct bridge_figs {
  struct fig t1, c1, t2, c2, m3, p3, c3, idle4, t5, c5;
};

/* What the two bridges' rows 1 to 5 differ in: the time aims of rows 1
 * and 5, what row 2's calls are (and its aim), the note under row 4. */
struct bridge_rows {
  const char *aim1, *what2, *aim2, *aim5;
  bool idle_note;
};

static void print_figs(const struct bridge_figs *f,
                       const struct bridge_rows *rows, uint64_t iters2,
                       bool pinned) {
  char t[64];
  snprintf(t, sizeof t, "1 back to back (%llu), ns/call",
           (unsigned long long) rt_iters);
  line(t, &f->t1, rows->aim1);
  line("  CPU us/call", &f->c1, "<= 1.0x");
  snprintf(t, sizeof t, "2 %d %s (%llu), k calls/s", WIDTH, rows->what2,
           (unsigned long long) iters2);
  line(t, &f->t2, rows->aim2);
  line("  CPU us/call", &f->c2, "<= 1.0x");
  snprintf(t, sizeof t, "3 sporadic (%llu, 200 us), median us",
           (unsigned long long) sp_calls);
  line(t, &f->m3, "");
  line("  p99 latency us", &f->p3, "");
  line("  CPU us/call (whole window)", &f->c3, "<= 1.0x");
  snprintf(t, sizeof t, "4 idle %llu ms after %llu: %% of a CPU",
           (unsigned long long) idle_ms, (unsigned long long) burst_iters);
  line(t, &f->idle4, "");
  if (rows->idle_note)
    printf("%-38s   (aim: about libuv's, ~0; a ratio of near-zeros is "
           "noise)\n", "");
  snprintf(t, sizeof t, "5 busy neighbour%s, ns/call",
           pinned ? " (pinned)" : " (NOT pinned)");
  line(t, &f->t5, rows->aim5);
  line("  CPU us/call", &f->c5, "<= 1.0x");
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  rt_iters = scaled(rt_iters, scale);
  tp_iters = scaled(tp_iters, scale);
  atp_iters = scaled(atp_iters, scale);
  sp_calls = scaled(sp_calls, scale);
  burst_iters = scaled(burst_iters, scale);
  lp_iters = scaled(lp_iters, scale);

  int err;
  mm_loop_t *loop, *loops[MAX_LOOPS], *aloop;
  if ((err = mm_loop_new(&loop, NULL)) < 0)
    die("mm_loop_new", err);
  for (int i = 0; i < MAX_LOOPS; i++)
    if ((err = mm_loop_new(&loops[i], NULL)) < 0)
      die("mm_loop_new", err);
  uv_loop_t uv;
  if ((err = uv_loop_init(&uv)) < 0)
    die("uv_loop_init", err);
  /* run_async's loop and the floor's: started once, idle (no CPU, once
   * settled) while the others are measured. */
  if ((err = mm_loop_new(&aloop, NULL)) < 0)
    die("mm_loop_new", err);
  if ((err = mm_loop_start(aloop)) < 0)
    die("mm_loop_start", err);
  static struct floor fl;
  floor_start(&fl);
  struct target amm = { .loop = aloop, .floor = &fl };
  struct target afl = { .loop = NULL, .floor = &fl };
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (tfd < 0)
    die("timerfd_create", -errno);
  uint64_t *lat = calloc(sp_calls, sizeof *lat);
  if (lat == NULL)
    die("calloc", -ENOMEM);

  /* sf: run_sync, af: run_async, figures 1 to 5; s6: figure 6. */
  struct bridge_figs sf, af;
  struct fig s6t[3], s6c[3], s6mm[3];
  static const int nloops[3] = { 1, 2, 4 };
  bool pinned = true;
  uint64_t t_start = now_ns();

  for (int r = 0; r < RUNS; r++) {
    struct mm_one m;
    struct uv_one *u;
    struct meas mm, b;

    m = measure_mm_one(loop, BACK_TO_BACK, rt_iters, -1, NULL);
    u = measure_uv_one(&uv, BACK_TO_BACK, rt_iters, -1, NULL);
    mm = per_call(m.w0, m.w1, rt_iters);
    b = per_call(u->w0, u->w1, rt_iters);
    put(&sf.t1, r, mm.time, b.time);
    put(&sf.c1, r, mm.cpu_us, b.cpu_us);

    mm = measure_loops(&loop, 1, tp_iters);
    b = measure_loops(NULL, 1, tp_iters);
    put(&sf.t2, r, mm.time / 1e3, b.time / 1e3);
    put(&sf.c2, r, mm.cpu_us, b.cpu_us);

    m = measure_mm_one(loop, SPORADIC, sp_calls, tfd, lat);
    qsort(lat, sp_calls, sizeof *lat, cmp_u64);
    double mm_med = pct(lat, sp_calls, 0.5) / 1e3;
    double mm_p99 = pct(lat, sp_calls, 0.99) / 1e3;
    u = measure_uv_one(&uv, SPORADIC, sp_calls, tfd, lat);
    qsort(lat, sp_calls, sizeof *lat, cmp_u64);
    put(&sf.m3, r, mm_med, pct(lat, sp_calls, 0.5) / 1e3);
    put(&sf.p3, r, mm_p99, pct(lat, sp_calls, 0.99) / 1e3);
    put(&sf.c3, r, per_call(m.w0, m.w1, sp_calls).cpu_us,
        per_call(u->w0, u->w1, sp_calls).cpu_us);

    m = measure_mm_one(loop, BURST_THEN_IDLE, burst_iters, -1, NULL);
    u = measure_uv_one(&uv, BURST_THEN_IDLE, burst_iters, -1, NULL);
    put(&sf.idle4, r, (double) (m.w1.cpu - m.w0.cpu) * 100.0 /
                (double) (m.w1.t - m.w0.t),
        (double) (u->w1.cpu - u->w0.cpu) * 100.0 /
        (double) (u->w1.t - u->w0.t));

    struct neighbour nb = neighbour_start();
    pinned = pinned && nb.pinned;
    m = measure_mm_one(loop, BACK_TO_BACK, rt_iters, -1, NULL);
    u = measure_uv_one(&uv, BACK_TO_BACK, rt_iters, -1, NULL);
    mm = per_call(m.w0, m.w1, rt_iters);
    b = per_call(u->w0, u->w1, rt_iters);
    put(&sf.t5, r, mm.time, b.time);
    put(&sf.c5, r, mm.cpu_us, b.cpu_us);
    mm = measure_callers(amm, 1, rt_iters);
    b = measure_callers(afl, 1, rt_iters);
    put(&af.t5, r, mm.time, b.time);
    put(&af.c5, r, mm.cpu_us, b.cpu_us);
    neighbour_stop(nb);

    for (int i = 0; i < 3; i++) {
      mm = measure_loops(loops, nloops[i], lp_iters);
      b = measure_loops(NULL, nloops[i], lp_iters);
      put(&s6t[i], r, mm.time / 1e3, b.time / 1e3);
      put(&s6c[i], r, mm.cpu_us, b.cpu_us);
      /* Scaling: N loops over 1 loop, this run. */
      put(&s6mm[i], r, mm.time / 1e3, s6t[0].mm[r]);
    }

    mm = measure_callers(amm, 1, rt_iters);
    b = measure_callers(afl, 1, rt_iters);
    put(&af.t1, r, mm.time, b.time);
    put(&af.c1, r, mm.cpu_us, b.cpu_us);

    mm = measure_callers(amm, WIDTH, atp_iters);
    b = measure_callers(afl, WIDTH, atp_iters);
    put(&af.t2, r, mm.time / 1e3, b.time / 1e3);
    put(&af.c2, r, mm.cpu_us, b.cpu_us);

    mm = measure_async_sporadic(amm, lat);
    qsort(lat, sp_calls, sizeof *lat, cmp_u64);
    mm_med = pct(lat, sp_calls, 0.5) / 1e3;
    mm_p99 = pct(lat, sp_calls, 0.99) / 1e3;
    b = measure_async_sporadic(afl, lat);
    qsort(lat, sp_calls, sizeof *lat, cmp_u64);
    put(&af.m3, r, mm_med, pct(lat, sp_calls, 0.5) / 1e3);
    put(&af.p3, r, mm_p99, pct(lat, sp_calls, 0.99) / 1e3);
    put(&af.c3, r, mm.cpu_us, b.cpu_us);

    put(&af.idle4, r, measure_async_idle(amm), measure_async_idle(afl));
  }
  double secs = (double) (now_ns() - t_start) / 1e9;

  /* Everything joined and freed before the report. */
  free(lat);
  close(tfd);
  if ((err = mm_loop_free(loop)) < 0)
    die("mm_loop_free", err);
  for (int i = 0; i < MAX_LOOPS; i++)
    if ((err = mm_loop_free(loops[i])) < 0)
      die("mm_loop_free", err);
  if ((err = uv_loop_close(&uv)) < 0)
    die("uv_loop_close", err);
  if ((err = mm_loop_free(aloop)) < 0)
    die("mm_loop_free", err);
  floor_stop(&fl);

  printf("mixmode %s, libuv %s, bench/cpu: %d runs of each, SCALE %g, "
         "%.0f s in all\n", mm_version(), uv_version_string(), RUNS, scale,
         secs);
  machine();
  printf("CPU: getrusage(RUSAGE_SELF) user + sys, the whole process, over "
         "each window;\nmedians over the runs; ratio: mixmode / baseline, "
         "per run, median (min-max)\n");

  char t[64];
  header("mm_run_sync (coroutine -> pool) vs libuv uv_queue_work",
         "libuv");
  static const struct bridge_rows sync_rows = {
    .aim1 = "<= 0.3x", .what2 = "outstanding", .aim2 = ">= 2.0x",
    .aim5 = "<= 1.0x", .idle_note = true
  };
  print_figs(&sf, &sync_rows, tp_iters, pinned);
  for (int i = 0; i < 3; i++) {
    snprintf(t, sizeof t, "6 %d loop%s x %d out (%llu each), k/s",
             nloops[i], nloops[i] > 1 ? "s" : "", WIDTH,
             (unsigned long long) lp_iters);
    line(t, &s6t[i], ">= 2.0x");
    line("  CPU us/call", &s6c[i], "<= 1.0x");
  }
  for (int i = 1; i < 3; i++) {
    snprintf(t, sizeof t, "  %d loops / 1 loop, mixmode | libuv",
             nloops[i]);
    struct fig sc;
    for (int r = 0; r < RUNS; r++)
      put(&sc, r, s6mm[i].q[r], s6t[i].base[r] / s6t[0].base[r]);
    line_on(t, &sc, ">= 1.0x", true);
  }

  header("mm_run_async (plain thread -> loop) vs uv_async_send + condvar "
         "floor", "floor");
  static const struct bridge_rows async_rows = {
    .aim1 = "<= 1.3x", .what2 = "threads", .aim2 = "", .aim5 = "<= 1.3x",
    .idle_note = false
  };
  print_figs(&af, &async_rows, atp_iters, pinned);
  printf("\n1: one call outstanding.  2: %d calls always in flight (run_async: "
         "%d plain\nthreads).  3: one call every 200 us, paced on absolute "
         "times; latency from\nthe call to its answer; CPU: the whole "
         "process over the whole 2 s, per call.\n4: the process's CPU in the "
         "%llu ms after a burst, as %% of one CPU.  5: 1 with a\nchild "
         "process spinning on one CPU.  6: N loops, each on its own thread "
         "with %d\nrun_sync calls in flight (libuv: N uv loops sharing "
         "its one pool).\nlibuv's pool: UV_THREADPOOL_SIZE as inherited "
         "(default 4 threads); mixmode's\npool: its loop's (up to 64 "
         "threads).  Verdicts use the median ratio.\n", WIDTH, WIDTH,
         (unsigned long long) idle_ms, WIDTH);
  return EXIT_SUCCESS;
}
