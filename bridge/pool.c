/* Worker pools: threads that run blocking calls, one FIFO queue each.
 *
 * The loop's pool starts min threads and grows on demand: a call queued
 * while more calls wait than threads are idle starts a thread, up to max --
 * one at a time: while a new thread is starting no other is started, and
 * the new one, once running, starts the next if calls still wait.  Past
 * as many threads as CPUs, more threads only help calls that block, so
 * the pool grows further only when it is stalled: calls wait and none has
 * completed for STALL_MS.  Nothing else may happen then to notice it, so
 * the loop's bridge checks again from a timer (mm__pool_recheck).  A burst
 * of quick calls is thus drained by a few threads instead of 64 threads
 * fighting over 2 cores, while calls that block still get a thread each.
 * Past max, calls wait in the queue in order.  A thread idle for idle_ms
 * exits while more than min remain.  A lane is the same pool with exactly
 * one thread that never idles out: its calls run one at a time, in order,
 * always on that thread.
 *
 * Lock order: pool->mu alone.  It protects every field below "protected";
 * a request's QUEUED -> RUNNING transition happens under it.  Workers run
 * calls and complete them without it.
 *
 * Wake-ups: a worker is signalled only for an idle worker not already
 * signalled (nwaking), and the signal is sent after mu is released, so
 * that the woken thread does not run into the lock the submitter holds.
 * A worker that runs out of work spins briefly (bounded, pausing) on the
 * queue length before it parks, saving the wake-up when calls come back
 * to back (DESIGN.md, "Wake-ups cost more than the work").
 */
#include "bridge.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct worker {
  mm__list_t link;            /* pool->threads or pool->dead */
  pthread_t thread;
  mm__pool_t *pool;
  unsigned id;
} worker_t;

struct mm__pool {
  pthread_mutex_t mu;
  pthread_cond_t work_cv;     /* idle workers wait here */
  pthread_cond_t exit_cv;     /* a worker exited */
  char name[32];
  char thread_name[16];       /* a lane's fixed thread name, or "" */
  unsigned min, max, idle_ms;
  bool lane;
  /* protected by mu */
  mm__list_t queue;           /* mm__sync_req_t.link, FIFO */
  uint64_t queued;
  uint64_t running;
  unsigned nthreads;          /* started and not exited */
  unsigned nidle;             /* waiting on work_cv */
  unsigned nwaking;           /* of those, signalled and not yet awake */
  unsigned ncpu;              /* threads that can run at once */
  uint64_t progress_ns;       /* uv_hrtime() of the latest completion or
                                 growth */
  unsigned nstarting;         /* created, not yet in their loop */
  unsigned next_id;
  bool stopping;
  mm__list_t threads;         /* worker_t, alive */
  mm__list_t dead;            /* worker_t, exited, not yet joined */
  /* queued, readable without mu for the spin before parking; written
   * under mu (relaxed: a stale value only ends or prolongs a spin) */
  _Atomic uint64_t queued_hint;
};

/* A pool past its CPU count grows only after this long without progress. */
#define STALL_MS 1

/* Pause iterations a worker spins on an empty queue before it parks. */
#define SPIN_PAUSES 200

static __thread const mm__pool_t *self_pool;

/* Changes the queue length and its lock-free mirror together.  mu held. */
static void count_queued(mm__pool_t *pool, int delta) {
  pool->queued += (uint64_t) (int64_t) delta;
  atomic_store_explicit(&pool->queued_hint, pool->queued,
                        memory_order_relaxed);
}

static void *worker_main(void *arg);

/* Joins the workers that have exited.  Called with mu held; they no
 * longer touch the pool. */
static void reap(mm__pool_t *pool) {
  mm__list_t *n;
  while ((n = mm__list_pop_front(&pool->dead)) != NULL) {
    worker_t *w = container_of(n, worker_t, link);
    pthread_join(w->thread, NULL);
    free(w);
  }
}

/* Starts one worker.  mu held. */
static int start_worker(mm__pool_t *pool) {
  reap(pool);
  worker_t *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return -ENOMEM;
  w->pool = pool;
  w->id = ++pool->next_id;
  if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
    free(w);
    return -EAGAIN;
  }
  mm__list_push_back(&pool->threads, &w->link);
  pool->nthreads++;
  pool->nstarting++;
  return 0;
}

/* Starts a thread if calls wait beyond the threads free to take them
 * (the idle ones not yet woken, plus free: the caller itself, when it is
 * a worker about to look for work) and none is starting already.  mu
 * held.  A failure is only an error when the pool has no thread at all. */
static int maybe_grow(mm__pool_t *pool, unsigned free) {
  if (pool->queued > pool->nidle - pool->nwaking + free &&
      pool->nstarting == 0 && pool->nthreads < pool->max &&
      (pool->nthreads < pool->ncpu ||
       uv_hrtime() - pool->progress_ns >= STALL_MS * 1000000u)) {
    pool->progress_ns = uv_hrtime();
    int r = start_worker(pool);
    if (r != 0 && pool->nthreads == 0)
      return r;
  }
  return 0;
}

/* Wakes one idle worker not already being woken.  mu held; returns
 * whether the caller must signal work_cv once it has released mu. */
static bool claim_wake(mm__pool_t *pool) {
  if (pool->queued == 0 || pool->nidle <= pool->nwaking)
    return false;
  pool->nwaking++;
  return true;
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  mm__pool_t *pool = w->pool;

#ifdef HAVE_PTHREAD_SETNAME_NP
  char name[16];
  if (pool->thread_name[0] != '\0')
    snprintf(name, sizeof name, "%s", pool->thread_name);
  else if (pool->lane)
    snprintf(name, sizeof name, "mm-lane-%.7s", pool->name);
  else
    snprintf(name, sizeof name, "mm-worker-%u", w->id);
  pthread_setname_np(pthread_self(), name);
#endif
  self_pool = pool;

  pthread_mutex_lock(&pool->mu);
  pool->nstarting--;
  maybe_grow(pool, 1);       /* the next thread of a growing pool */
  for (;;) {
    mm__list_t *n = mm__list_pop_front(&pool->queue);
    if (n != NULL) {
      mm__sync_req_t *req = container_of(n, mm__sync_req_t, link);
      count_queued(pool, -1);
      pool->running++;
      atomic_store_explicit(&req->state, MM__SYNC_RUNNING,
                            memory_order_relaxed);  /* mu orders it */
      pthread_mutex_unlock(&pool->mu);
      mm__sync_execute(req);
      pthread_mutex_lock(&pool->mu);
      pool->running--;
      pool->progress_ns = uv_hrtime();
      continue;
    }
    if (pool->stopping)
      break;
    /* Spin a little before parking: the next call may be microseconds
     * away, and a park plus a wake-up costs more than that. */
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < SPIN_PAUSES &&
         atomic_load_explicit(&pool->queued_hint, memory_order_relaxed) == 0;
         i++)
      mm__cpu_relax();
    pthread_mutex_lock(&pool->mu);
    if (!mm__list_empty(&pool->queue) || pool->stopping)
      continue;
    pool->nidle++;
    int r = 0;
    if (pool->lane || pool->nthreads <= pool->min) {
      pthread_cond_wait(&pool->work_cv, &pool->mu);
    } else {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_sec += pool->idle_ms / 1000;
      ts.tv_nsec += (long) (pool->idle_ms % 1000) * 1000000;
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
      r = pthread_cond_timedwait(&pool->work_cv, &pool->mu, &ts);
    }
    pool->nidle--;
    if (pool->nwaking > 0)
      pool->nwaking--;
    if (r == ETIMEDOUT && mm__list_empty(&pool->queue) &&
        pool->nthreads > pool->min)
      break;
  }
  pool->nthreads--;
  mm__list_remove(&w->link);
  mm__list_push_back(&pool->dead, &w->link);
  pthread_cond_broadcast(&pool->exit_cv);
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

mm__pool_t *mm__pool_new(const char *name, unsigned min, unsigned max,
                         unsigned idle_ms, bool lane,
                         const char *thread_name) {
  mm__pool_t *pool = calloc(1, sizeof(*pool));
  if (pool == NULL)
    return NULL;
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->work_cv, NULL);
  pthread_cond_init(&pool->exit_cv, NULL);
  snprintf(pool->name, sizeof pool->name, "%s", name != NULL ? name : "");
  if (thread_name != NULL)
    snprintf(pool->thread_name, sizeof pool->thread_name, "%s", thread_name);
  pool->lane = lane;
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  pool->ncpu = ncpu > 0 ? (unsigned) ncpu : 1;
  pool->min = lane ? 1 : min;
  pool->max = lane ? 1 : max;
  pool->idle_ms = idle_ms;
  mm__list_init(&pool->queue);
  mm__list_init(&pool->threads);
  mm__list_init(&pool->dead);

  pthread_mutex_lock(&pool->mu);
  int r = 0;
  while (r == 0 && pool->nthreads < pool->min)
    r = start_worker(pool);
  pthread_mutex_unlock(&pool->mu);
  if (r != 0) {
    mm__pool_free(pool);
    return NULL;
  }
  return pool;
}

void mm__pool_free(mm__pool_t *pool) {
  pthread_mutex_lock(&pool->mu);
  pool->stopping = true;
  pthread_cond_broadcast(&pool->work_cv);
  while (pool->nthreads > 0)
    pthread_cond_wait(&pool->exit_cv, &pool->mu);
  reap(pool);
  pthread_mutex_unlock(&pool->mu);
  pthread_mutex_destroy(&pool->mu);
  pthread_cond_destroy(&pool->work_cv);
  pthread_cond_destroy(&pool->exit_cv);
  free(pool);
}

int mm__pool_submit(mm__pool_t *pool, mm__sync_req_t *req) {
  atomic_store_explicit(&req->state, MM__SYNC_QUEUED, memory_order_relaxed);
  pthread_mutex_lock(&pool->mu);
  if (pool->stopping) {
    pthread_mutex_unlock(&pool->mu);
    return -ESHUTDOWN;
  }
  mm__list_push_back(&pool->queue, &req->link);
  count_queued(pool, 1);
  int r = maybe_grow(pool, 0);
  if (r != 0) {
    mm__list_remove(&req->link);
    count_queued(pool, -1);
    pthread_mutex_unlock(&pool->mu);
    return r;
  }
  bool wake = claim_wake(pool);
  pthread_mutex_unlock(&pool->mu);
  if (wake)
    pthread_cond_signal(&pool->work_cv);
  return 0;
}

bool mm__pool_unqueue(mm__pool_t *pool, mm__sync_req_t *req) {
  bool removed = false;
  pthread_mutex_lock(&pool->mu);
  if (atomic_load_explicit(&req->state, memory_order_relaxed) ==
      MM__SYNC_QUEUED) {
    mm__list_remove(&req->link);
    count_queued(pool, -1);
    atomic_store_explicit(&req->state, MM__SYNC_CANCELLED,
                          memory_order_relaxed);
    removed = true;
  }
  pthread_mutex_unlock(&pool->mu);
  return removed;
}

bool mm__pool_recheck(mm__pool_t *pool) {
  pthread_mutex_lock(&pool->mu);
  maybe_grow(pool, 0);
  bool backlog = pool->queued > pool->nidle - pool->nwaking &&
                 pool->nthreads < pool->max && !pool->stopping;
  pthread_mutex_unlock(&pool->mu);
  return backlog;
}

bool mm__pool_is_self(const mm__pool_t *pool) {
  return self_pool == pool;
}

void mm__pool_stats(mm__pool_t *pool, unsigned *threads, unsigned *idle,
                    uint64_t *queued, uint64_t *running) {
  pthread_mutex_lock(&pool->mu);
  *threads = pool->nthreads;
  *idle = pool->nidle;
  *queued = pool->queued;
  *running = pool->running;
  pthread_mutex_unlock(&pool->mu);
}
