/* What bench/run-sync and bench/cpu measure the bridges with: the work of
 * every call (nothing); the hand-off floor that mm_run_async is measured
 * against -- a plain thread posts a request to a raw uv loop's thread and
 * waits for its answer, what any thread-to-loop call costs at least; and
 * the throughput load, TP_WIDTH calls always in flight on one loop, for
 * mm_run_sync and for uv_queue_work.  Included after bench.h (die,
 * now_ns). */
#ifndef MM_BENCH_FLOOR_H
#define MM_BENCH_FLOOR_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <mixmode.h>
#include <uv.h>

enum { FLOOR_CALLERS = 64, TP_WIDTH = 64 };

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

/* ---- TP_WIDTH calls in flight ------------------------------------------
 *
 * A load of total calls, TP_WIDTH of them outstanding at every moment: a
 * call is started only while fewer than total have been; t0 is taken
 * when the first warm have completed (warm 0: never), t1 when the last
 * one has, so exactly total - warm completions lie in between.  All of
 * it runs on the loop's thread: plain counters do. */

struct tp_mm {
  mm_fn fn;
  uint64_t started, done, warm, total;
  uint64_t t0, t1;
  int err;
};

static int tp_mm_body(void *arg) {
  struct tp_mm *s = arg;
  while (s->started < s->total && s->err == 0) {
    s->started++;
    int err = mm_run_sync(s->fn, NULL);
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

/* s->fn, warm and total set: TP_WIDTH coroutines of loop call until
 * total calls are done. */
__attribute__((unused)) static void tp_mm_run(struct tp_mm *s,
                                              mm_loop_t *loop) {
  int err;
  for (int i = 0; i < TP_WIDTH; i++)
    if ((err = mm_spawn(loop, tp_mm_body, s, NULL)) < 0)
      die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if (s->err < 0)
    die("mm_run_sync", s->err);
}

struct tp_uv {
  uv_work_t req[TP_WIDTH];
  uv_work_cb work;
  uint64_t started, done, warm, total;
  uint64_t t0, t1;
};

static void tp_uv_after(uv_work_t *req, int status) {
  struct tp_uv *s = req->loop->data;
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
    if ((err = uv_queue_work(req->loop, req, s->work, tp_uv_after)) < 0)
      die("uv_queue_work", err);
  }
}

/* s->work, warm and total set: TP_WIDTH requests queued on uv, each
 * queued again from its after-work callback, until total are done.  The
 * loop's data points at s meanwhile. */
__attribute__((unused)) static void tp_uv_run(struct tp_uv *s,
                                              uv_loop_t *uv) {
  int err;
  uv->data = s;
  for (int i = 0; i < TP_WIDTH && s->started < s->total; i++) {
    s->started++;
    if ((err = uv_queue_work(uv, &s->req[i], s->work, tp_uv_after)) < 0)
      die("uv_queue_work", err);
  }
  if ((err = uv_run(uv, UV_RUN_DEFAULT)) < 0)
    die("uv_run", err);
  if (s->done != s->total)
    die("uv_run returned early", -EINTR);
}

#endif /* MM_BENCH_FLOOR_H */
