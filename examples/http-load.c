/* http-load: a small HTTP load client for sqlite-server, itself a mixmode
 * program: every connection is a coroutine on one loop, run on the main
 * thread with mm_loop_run.  Used by the server's test and by `make demo`.
 *
 *   http-load --port N --get PATH [--expect CODE]
 *       one request; prints "status CODE", "ms T" and the body; exits 0 if
 *       the status is CODE (default 200)
 *   http-load --port N [--conns C] [--requests N | --duration MS]
 *             [--path PATH] [--slow K [--slow-timeout MS] [--slow-args A]]
 *             [--max-ms M]
 *       C connections send requests back to back (keep-alive): GET PATH,
 *       or by default /item?id= a random id, each expected to answer
 *       --expect CODE (200); prints one line
 *         load: requests= errors= seconds= rps= p50_ms= p99_ms= max_ms= ...
 *       With --slow K it first starts K requests /slow?timeout=MS&A, each
 *       on a connection of its own, waits until the server reports them
 *       running (/stats), runs the load meanwhile, then waits for their
 *       answers.  Exits non-zero if a request failed or took over M ms.
 *
 * Options common to both: --host ADDR (127.0.0.1).
 */
#include <mixmode.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http-client.h"

static struct {
  const char *host;
  int         port;
  const char *get;              /* --get: one request */
  int         expect;
  unsigned    conns;
  unsigned    requests;         /* total; 0 with --duration */
  unsigned    duration_ms;
  const char *path;             /* NULL: random items */
  unsigned    slow;
  unsigned    slow_timeout_ms;
  const char *slow_args;        /* appended to /slow?timeout=MS& */
  double      max_ms;           /* 0: no bound */
} opt = { "127.0.0.1", 0, NULL, 200, 8, 2000, 0, NULL, 0, 3000, "", 0 };

static mm_loop_t *loop;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* What the load's coroutines share.  They all run on the loop's thread:
 * no lock. */
static struct {
  double   start, stop;         /* stop: 0 until --duration ends it */
  unsigned started;             /* requests begun (for --requests) */
  unsigned errors, over_max;
  double  *lat;                 /* latencies, ms */
  size_t   n, cap;
} load;

static void record(double ms) {
  if (load.n == load.cap) {
    size_t cap = load.cap != 0 ? load.cap * 2 : 4096;
    double *p = realloc(load.lat, cap * sizeof *p);
    if (p == NULL) {
      load.errors++;
      return;
    }
    load.lat = p;
    load.cap = cap;
  }
  load.lat[load.n++] = ms;
  if (opt.max_ms > 0 && ms > opt.max_ms)
    load.over_max++;
}

static bool more(void) {
  if (opt.duration_ms > 0)
    return now_ms() - load.start < opt.duration_ms;
  return load.started < opt.requests;
}

/* One connection's coroutine: requests back to back until the load ends. */
static int worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  http_conn_t *c = malloc(sizeof *c);
  if (c == NULL || http_connect(c, opt.host, opt.port) < 0) {
    load.errors++;
    free(c);
    return 0;
  }
  while (more()) {
    load.started++;
    char path[512], body[256];
    if (opt.path != NULL)
      snprintf(path, sizeof path, "%s", opt.path);
    else
      snprintf(path, sizeof path, "/item?id=%d", rand_r(&seed) % 100000 + 1);
    int status;
    double t0 = now_ms();
    int r = http_get(c, path, &status, body, sizeof body);
    if (r < 0 || status != opt.expect) {
      if (load.errors++ < 5)
        fprintf(stderr, "http-load: GET %s: %s\n", path,
                r < 0 ? mm_strerror(r) : body);
      if (r < 0)
        break;
      continue;
    }
    record(now_ms() - t0);
  }
  http_close(c);
  free(c);
  return 0;
}

/* A slow query in flight during the load. */
typedef struct slow_req {
  int    status;                /* 0 until answered; < 0: failed */
  double ms;
} slow_req_t;

static int slow_worker(void *arg) {
  slow_req_t *s = arg;
  http_conn_t *c = malloc(sizeof *c);
  if (c == NULL) {
    s->status = -ENOMEM;
    return 0;
  }
  char path[512];
  snprintf(path, sizeof path, "/slow?timeout=%u&%s", opt.slow_timeout_ms,
           opt.slow_args);
  double t0 = now_ms();
  int r = http_connect(c, opt.host, opt.port);
  if (r == 0)
    r = http_get(c, path, &s->status, NULL, 0);
  if (r < 0)
    s->status = r;
  s->ms = now_ms() - t0;
  http_close(c);
  free(c);
  return 0;
}

/* The server's count of slow queries running now, or a negative error. */
static int slow_running(http_conn_t *c) {
  char body[2048];
  int status, r = http_get(c, "/stats", &status, body, sizeof body);
  if (r < 0)
    return r;
  const char *p = strstr(body, "\"slow_running\":");
  return status == 200 && p != NULL ? atoi(p + strlen("\"slow_running\":"))
                                    : -EPROTO;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  if (load.n == 0)
    return 0;
  size_t i = (size_t)ceil(p * (double)load.n) - 1;
  return load.lat[i < load.n ? i : load.n - 1];
}

static int run_load(void *arg) {
  (void)arg;
  http_conn_t *stats = calloc(1, sizeof *stats);     /* tcp NULL */
  slow_req_t *slow = calloc(opt.slow + 1, sizeof *slow);
  mm_coro_t **slow_coros = calloc(opt.slow + 1, sizeof *slow_coros);
  mm_coro_t **coros = calloc(opt.conns, sizeof *coros);
  int failed = 0, running_at_end = 0;
  if (stats == NULL || slow == NULL || slow_coros == NULL || coros == NULL ||
      http_connect(stats, opt.host, opt.port) < 0) {
    fprintf(stderr, "http-load: cannot reach %s:%d\n", opt.host, opt.port);
    failed = 1;
    goto out;
  }

  /* Slow queries first, and wait until the server runs them all. */
  for (unsigned i = 0; i < opt.slow; i++)
    if (mm_spawn(loop, slow_worker, &slow[i], &slow_coros[i]) < 0)
      slow[i].status = -ENOMEM;
  double waited = now_ms();
  for (;;) {
    int n = opt.slow > 0 ? slow_running(stats) : 0;
    if (n < 0 || n >= (int)opt.slow)
      break;
    bool answered = false;
    for (unsigned i = 0; i < opt.slow; i++)
      answered |= slow[i].status != 0;
    if (answered || now_ms() - waited > 10000) {
      fprintf(stderr, "http-load: the %u slow queries are not all running "
              "(%d are)\n", opt.slow, n);
      failed = 1;
      break;
    }
    mm_sleep(2);                /* poll the server's counter */
  }

  /* The load: conns coroutines, joined in turn. */
  load.start = now_ms();
  for (unsigned i = 0; i < opt.conns; i++)
    if (mm_spawn(loop, worker, (void *)(uintptr_t)(i * 7919 + 1),
                 &coros[i]) < 0)
      load.errors++;
  for (unsigned i = 0; i < opt.conns; i++)
    if (coros[i] != NULL)
      mm_join(coros[i]);
  load.stop = now_ms();
  if (opt.slow > 0)
    running_at_end = slow_running(stats);

  unsigned s504 = 0, sok = 0;
  double slow_max = 0;
  for (unsigned i = 0; i < opt.slow; i++) {
    if (slow_coros[i] != NULL)
      mm_join(slow_coros[i]);
    s504 += slow[i].status == 504;
    sok += slow[i].status == 200;
    if (slow[i].status < 0 || (slow[i].status != 504 && slow[i].status != 200))
      failed = 1;
    if (slow[i].ms > slow_max)
      slow_max = slow[i].ms;
  }

  qsort(load.lat, load.n, sizeof *load.lat, cmp_double);
  double secs = (load.stop - load.start) / 1e3;
  printf("load: requests=%zu errors=%u seconds=%.2f rps=%.0f p50_ms=%.3f "
         "p99_ms=%.3f max_ms=%.3f over_max=%u slow=%u slow_504=%u "
         "slow_200=%u slow_ms_max=%.0f slow_running_at_end=%d\n",
         load.n, load.errors, secs, secs > 0 ? (double)load.n / secs : 0,
         pct(0.50), pct(0.99), load.n > 0 ? load.lat[load.n - 1] : 0,
         load.over_max, opt.slow, s504, sok, slow_max, running_at_end);
  if (load.errors > 0 || load.over_max > 0 || load.n == 0)
    failed = 1;
out:
  if (stats != NULL)
    http_close(stats);
  free(stats);
  free(slow);
  free(slow_coros);
  free(coros);
  free(load.lat);
  return failed;
}

static int run_get(void *arg) {
  (void)arg;
  static char body[65536];
  http_conn_t *c = malloc(sizeof *c);
  if (c == NULL)
    return 1;
  int status = 0;
  double t0 = now_ms();
  int r = http_connect(c, opt.host, opt.port);
  if (r == 0)
    r = http_get(c, opt.get, &status, body, sizeof body);
  double ms = now_ms() - t0;
  http_close(c);
  free(c);
  if (r < 0) {
    fprintf(stderr, "http-load: GET %s: %s\n", opt.get, mm_strerror(r));
    return 1;
  }
  printf("status %d\nms %.1f\n%s\n", status, ms, body);
  return status == opt.expect ? 0 : 1;
}

static int usage(void) {
  fprintf(stderr, "usage: http-load --port N [--host ADDR] "
          "[--expect CODE] (--get PATH | [--conns C] [--requests N | "
          "--duration MS] [--path PATH] [--slow K] [--slow-timeout MS] "
          "[--slow-args ARGS] [--max-ms M])\n");
  return 2;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL)
      return usage();
    i++;
    if (strcmp(a, "--port") == 0)
      opt.port = atoi(v);
    else if (strcmp(a, "--host") == 0)
      opt.host = v;
    else if (strcmp(a, "--get") == 0)
      opt.get = v;
    else if (strcmp(a, "--expect") == 0)
      opt.expect = atoi(v);
    else if (strcmp(a, "--conns") == 0)
      opt.conns = (unsigned)atoi(v);
    else if (strcmp(a, "--requests") == 0)
      opt.requests = (unsigned)atoi(v);
    else if (strcmp(a, "--duration") == 0)
      opt.duration_ms = (unsigned)atoi(v);
    else if (strcmp(a, "--path") == 0)
      opt.path = v;
    else if (strcmp(a, "--slow") == 0)
      opt.slow = (unsigned)atoi(v);
    else if (strcmp(a, "--slow-timeout") == 0)
      opt.slow_timeout_ms = (unsigned)atoi(v);
    else if (strcmp(a, "--slow-args") == 0)
      opt.slow_args = v;
    else if (strcmp(a, "--max-ms") == 0)
      opt.max_ms = atof(v);
    else
      return usage();
  }
  if (opt.port <= 0 || opt.conns == 0)
    return usage();

  mm_loop_t *l;
  int r = mm_loop_new(&l, NULL);
  if (r < 0) {
    fprintf(stderr, "http-load: %s\n", mm_strerror(r));
    return 1;
  }
  loop = l;
  mm_coro_t *main_coro;
  r = mm_spawn(loop, opt.get != NULL ? run_get : run_load, NULL, &main_coro);
  if (r == 0) {
    mm_loop_run(loop);
    r = mm_join(main_coro);
  }
  mm_loop_free(loop);
  return r == 0 ? 0 : 1;
}
