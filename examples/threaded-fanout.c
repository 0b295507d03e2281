/* threaded-fanout: async code called from an existing threaded program.
 *
 * The program is the kind that already exists: a batch of jobs and a few
 * pthreads working through it, each job a plain blocking function.  Each
 * job needs 10 answers from sqlite-server.  Made one after another they
 * cost 10 round trips; made at once they cost about one.  So the job hands
 * the requests to one shared mixmode loop (started on its own thread with
 * mm_loop_start) with mm_run_async, which blocks only the calling thread:
 * a coroutine starts a group of 10 children, each an HTTP GET on mm_tcp,
 * and waits for the group.  To show what that buys, each job then makes
 * the same 10 requests one after another, and the program prints the
 * speed-up.
 *
 * Usage: threaded-fanout --port N [--host ADDR] [--threads 8] [--jobs 64]
 */
#include <mixmode.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http-client.h"

#define FANOUT 10

static const char *host = "127.0.0.1";
static int port;
static mm_loop_t *loop;         /* one loop shared by every thread */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* One request of a job: a new connection, GET /item?id=..., close. */
typedef struct fetch {
  int id;
  int status;                   /* out: the HTTP status */
} fetch_t;

static int fetch(void *arg) {   /* a coroutine */
  fetch_t *f = arg;
  http_conn_t *c = malloc(sizeof *c);   /* 16 KiB: not on the stack */
  if (c == NULL)
    return -ENOMEM;
  char path[64];
  snprintf(path, sizeof path, "/item?id=%d", f->id);
  int r = http_connect(c, host, port);
  if (r == 0)
    r = http_get(c, path, &f->status, NULL, 0);
  http_close(c);
  free(c);
  return r < 0 ? r : f->status == 200 ? 0 : -EPROTO;
}

typedef struct job {
  int    first_id;
  double parallel_ms, serial_ms;
  int    status;
} job_t;

/* The async half of a job, as a coroutine of the shared loop: the 10
 * requests at once in a group, then one after another. */
static int job_main(void *arg) {
  job_t *j = arg;
  fetch_t f[FANOUT];
  for (int i = 0; i < FANOUT; i++)
    f[i].id = j->first_id + i;

  double t0 = now_ms();
  mm_group_t *g;
  int r = mm_group_new(loop, &g);
  if (r < 0)
    return r;
  for (int i = 0; i < FANOUT && r == 0; i++)
    r = mm_group_spawn(g, fetch, &f[i]);
  int waited = mm_group_wait(g);        /* all of them, even after a failure */
  if (r == 0)
    r = waited;
  j->parallel_ms = now_ms() - t0;
  if (r < 0)
    return r;

  t0 = now_ms();
  for (int i = 0; i < FANOUT && r == 0; i++)
    r = fetch(&f[i]);
  j->serial_ms = now_ms() - t0;
  return r;
}

/* The threaded program: workers take jobs from a shared counter. */
static job_t *jobs;
static int njobs;
static atomic_int next_job;

static void *work(void *arg) {
  (void)arg;
  int i;
  while ((i = atomic_fetch_add(&next_job, 1)) < njobs)
    jobs[i].status = mm_run_async(loop, job_main, &jobs[i]);   /* blocks */
  return NULL;
}

int main(int argc, char **argv) {
  int nthreads = 8;
  bool bad = argc % 2 == 0;             /* options come in pairs */
  njobs = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--port") == 0)
      port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--host") == 0)
      host = argv[i + 1];
    else if (strcmp(argv[i], "--threads") == 0)
      nthreads = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--jobs") == 0)
      njobs = atoi(argv[i + 1]);
    else
      bad = true;
  }
  if (bad || port <= 0 || nthreads <= 0 || njobs <= 0) {
    fprintf(stderr, "usage: threaded-fanout --port N [--host ADDR] "
            "[--threads 8] [--jobs 64]\n");
    return 2;
  }

  int r = mm_loop_new(&loop, NULL);
  if (r == 0)
    r = mm_loop_start(loop);            /* the loop's own thread */
  if (r < 0) {
    fprintf(stderr, "threaded-fanout: %s\n", mm_strerror(r));
    return 1;
  }
  jobs = calloc((size_t)njobs, sizeof *jobs);
  pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
  if (jobs == NULL || threads == NULL)
    return 1;
  for (int i = 0; i < njobs; i++)
    jobs[i].first_id = 1 + i * FANOUT;

  double t0 = now_ms();
  int started = 0;
  for (; started < nthreads; started++)
    if (pthread_create(&threads[started], NULL, work, NULL) != 0)
      break;
  for (int i = 0; i < started; i++)
    pthread_join(threads[i], NULL);
  double wall = now_ms() - t0;

  double par = 0, ser = 0;
  int failed = 0;
  for (int i = 0; i < njobs; i++) {
    if (jobs[i].status != 0 && failed++ == 0)
      fprintf(stderr, "threaded-fanout: job %d: %s\n", i,
              mm_strerror(jobs[i].status));
    par += jobs[i].parallel_ms;
    ser += jobs[i].serial_ms;
  }
  printf("fanout: threads=%d jobs=%d requests=%d failed=%d wall_ms=%.0f "
         "parallel_ms_per_job=%.2f serial_ms_per_job=%.2f speedup=%.1f\n",
         started, njobs, njobs * FANOUT * 2, failed, wall, par / njobs,
         ser / njobs, par > 0 ? ser / par : 0);
  free(threads);
  free(jobs);
  r = mm_loop_free(loop);
  return failed == 0 && started == nthreads && r == 0 ? 0 : 1;
}
