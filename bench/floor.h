/* What bench/run-sync and bench/cpu measure the bridges with: the work of
 * every call (nothing), and the hand-off floor that mm_run_async is
 * measured against -- a plain thread posts a request to a raw uv loop's
 * thread and waits for its answer, what any thread-to-loop call costs at
 * least.  Included after bench.h (die). */
#ifndef MM_BENCH_FLOOR_H
#define MM_BENCH_FLOOR_H

#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <uv.h>

enum { FLOOR_CALLERS = 64 };

/* The work of the calls measured against libuv's: nothing.  noinline so
 * that the call is really made. */
__attribute__((noinline, unused)) static int noop(void *arg) {
  (void) arg;
  __asm__ volatile("" ::: "memory");
  return 0;
}

static inline void uv_noop(uv_work_t *req) {
  (void) noop(req);
}

/* The floor: a raw uv loop on a thread of its own, woken by a uv_async_t,
 * for up to FLOOR_CALLERS caller threads.  Each caller has one request,
 * kept here for the program's life: the callback signals a condition
 * variable after unlocking, when the caller may already have gone on, so
 * the condition variables must outlive every callback (they are destroyed
 * after the loop's thread is joined). */
struct floor_req {
  struct floor_req *next;
  pthread_cond_t cv;
  bool done;
};

struct floor {
  uv_loop_t uv;
  uv_async_t async;
  pthread_t thread;
  pthread_mutex_t mu;
  struct floor_req *head;     /* requests posted, not yet answered */
  bool stop;
  struct floor_req req[FLOOR_CALLERS];
};

static void floor_cb(uv_async_t *h) {
  struct floor *f = h->data;
  pthread_cond_t *wake[FLOOR_CALLERS];
  int n = 0;
  pthread_mutex_lock(&f->mu);
  for (struct floor_req *r = f->head; r != NULL; r = r->next) {
    r->done = true;
    wake[n++] = &r->cv;       /* at most one request per caller */
  }
  f->head = NULL;
  bool stop = f->stop;
  pthread_mutex_unlock(&f->mu);
  for (int i = 0; i < n; i++)
    pthread_cond_signal(wake[i]);
  if (stop)
    uv_close((uv_handle_t *) h, NULL);
}

static void *floor_main(void *arg) {
  struct floor *f = arg;
  int err = uv_run(&f->uv, UV_RUN_DEFAULT);
  if (err < 0)
    die("uv_run (floor)", err);
  return NULL;
}

static void floor_start(struct floor *f) {
  int err;
  memset(f, 0, sizeof *f);
  pthread_mutex_init(&f->mu, NULL);
  for (int i = 0; i < FLOOR_CALLERS; i++)
    pthread_cond_init(&f->req[i].cv, NULL);
  if ((err = uv_loop_init(&f->uv)) < 0)
    die("uv_loop_init", err);
  if ((err = uv_async_init(&f->uv, &f->async, floor_cb)) < 0)
    die("uv_async_init", err);
  f->async.data = f;
  if ((err = pthread_create(&f->thread, NULL, floor_main, f)) != 0)
    die("pthread_create", -err);
}

static void floor_stop(struct floor *f) {
  int err;
  pthread_mutex_lock(&f->mu);
  f->stop = true;
  pthread_mutex_unlock(&f->mu);
  if ((err = uv_async_send(&f->async)) < 0)
    die("uv_async_send", err);
  pthread_join(f->thread, NULL);
  if ((err = uv_loop_close(&f->uv)) < 0)
    die("uv_loop_close (floor)", err);
  for (int i = 0; i < FLOOR_CALLERS; i++)
    pthread_cond_destroy(&f->req[i].cv);
  pthread_mutex_destroy(&f->mu);
}

/* One round trip through the floor. */
static void floor_call(struct floor *f, struct floor_req *q) {
  int err;
  pthread_mutex_lock(&f->mu);
  q->done = false;
  q->next = f->head;
  f->head = q;
  pthread_mutex_unlock(&f->mu);
  if ((err = uv_async_send(&f->async)) < 0)
    die("uv_async_send", err);
  pthread_mutex_lock(&f->mu);
  while (!q->done)
    pthread_cond_wait(&q->cv, &f->mu);
  pthread_mutex_unlock(&f->mu);
}

#endif /* MM_BENCH_FLOOR_H */
