/* run-async: a threaded program calls asynchronous code (mm_run_async).
 *
 * Four plain threads of an existing program each need ten slow requests
 * (mm_sleep stands in for a network round trip).  Each thread calls
 * mm_run_async on one shared loop, which runs on its own thread: the
 * coroutine it gets makes the ten requests at once in a group, and the
 * thread blocks until they are all answered -- one round trip, not ten.
 * A fifth call has a 5 ms timeout: its requests are cancelled and the
 * thread gets -ETIMEDOUT.
 */
#include <mixmode.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#define REQUESTS 10

typedef struct {
  int id;
  int answer;
} request_t;

static int request(void *arg) {         /* a coroutine per request */
  request_t *r = arg;
  int err = mm_sleep(20);               /* the round trip */
  if (err < 0)
    return err;
  r->answer = r->id * 2;
  return 0;
}

typedef struct {
  int first;                            /* the first request's id */
  int sum;                              /* of the answers */
  int status;                           /* what mm_run_async returned */
} job_t;

static int fan_out(void *arg) {         /* a coroutine on the loop */
  job_t *job = arg;
  request_t req[REQUESTS];
  mm_group_t *g;
  int err = mm_group_new(mm_loop_current(), &g);
  if (err < 0)
    return err;
  for (int i = 0; i < REQUESTS && err >= 0; i++) {
    req[i] = (request_t) { job->first + i, 0 };
    err = mm_group_spawn(g, request, &req[i]);
  }
  if (err < 0)
    mm_group_cancel(g);
  int waited = mm_group_wait(g);        /* all of them, whatever happened */
  if (err < 0 || waited < 0)
    return err < 0 ? err : waited;
  for (int i = 0; i < REQUESTS; i++)
    job->sum += req[i].answer;
  return 0;
}

static mm_loop_t *loop;

static void *program_thread(void *arg) {  /* the program's own thread */
  job_t *job = arg;
  job->status = mm_run_async(loop, fan_out, job);  /* blocks this thread */
  return NULL;
}

int main(void) {
  int err = mm_loop_new(&loop, NULL);
  if (err < 0 || (err = mm_loop_start(loop)) < 0) {
    fprintf(stderr, "run-async: %s\n", mm_strerror(err));
    return EXIT_FAILURE;
  }
  job_t jobs[4];
  pthread_t threads[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (job_t) { i * REQUESTS, 0, 0 };
    if (pthread_create(&threads[i], NULL, program_thread, &jobs[i]) != 0)
      return EXIT_FAILURE;
  }
  bool ok = true;
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    /* The answers are 2 x the ids first .. first + 9. */
    int want = 2 * (REQUESTS * jobs[i].first + REQUESTS * (REQUESTS - 1) / 2);
    printf("thread %d: status %d, sum %d\n", i, jobs[i].status, jobs[i].sum);
    ok = ok && jobs[i].status == 0 && jobs[i].sum == want;
  }

  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = 5;
  job_t late = { 0, 0, 0 };
  late.status = mm_run_async_ex(loop, fan_out, &late, &o);
  printf("with a 5 ms timeout: %s\n", mm_strerror(late.status));
  ok = ok && late.status == -ETIMEDOUT;
  return mm_loop_free(loop) == 0 && ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
