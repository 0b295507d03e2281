/* Worker pools: threads that run blocking calls, one FIFO queue each.
 *
 * The loop's pool starts min threads and grows on demand up to max.
 * Queued calls get threads in assign(): idle workers are woken, and a new
 * thread is started when none is idle -- one at a time: the new one, once
 * running, starts the next if calls still wait.  While calls are quick
 * (their moving average under LONG_CALL_NS), at most as many workers are
 * awake as there are CPUs, not counting those whose call has run for
 * LONG_CALL_NS so far: such a call blocks (or computes for long), and its
 * thread leaves its CPU to the others.  Once calls take long on average,
 * each waiting call gets a thread.  A burst of quick calls is thus
 * drained by a few threads instead of 64 threads fighting over 2 cores,
 * while calls that block get a thread each.  A call becomes long with time
 * alone, with nothing else happening, so while calls wait the loop's
 * bridge checks again from a timer (mm__pool_recheck).  Past max, calls
 * wait in the queue in order.  A thread idle for idle_ms exits while more
 * than min remain.  A lane is the same pool with exactly one thread that
 * never idles out: its calls run one at a time, in order, always on that
 * thread.  A lane set is a pool of exactly count such threads (its idle
 * threads take the queue's calls in order: the first idle lane gets the
 * next call), each of which runs the set's open hook before it takes
 * calls and its close hook when it ends; lanes and sets wake an idle
 * thread for every queued call, whatever the CPUs.
 *
 * Lock order: pool->mu alone.  It protects every field below "protected";
 * a request's QUEUED -> RUNNING transition happens under it.  Workers run
 * calls and complete them without it.  It is an adaptive mutex: every
 * section under it is a few list operations, and the loop's batches and
 * the workers meet on it often.
 *
 * Counters and their invariants, all protected by mu (checked at each
 * assign() by pool_ok()):
 *   queued      the length of queue; queued_hint mirrors it after every
 *               change (count_queued), for spins that read it unlocked.
 *   nthreads    workers started and not exited: the length of threads;
 *               at most max (1 for a lane).  Of them, each is in at most
 *               one of the states counted next, so
 *               nstarting + running + nspinning + nidle <= nthreads;
 *               a worker holding mu between two states is in none.
 *   nstarting   created, not yet past the first lock in worker_main;
 *               assign() starts a new thread only while it is 0.
 *   running     popped a call and not yet back under mu after it (exactly
 *               the workers whose call_start is not 0).
 *   nspinning   watching queued_hint before parking, mu released.
 *   nidle       blocked on work_cv.
 *   nwaking     signals sent (or about to be, after unlocking) to idle
 *               workers for queued calls, not yet taken by a waking one;
 *               nwaking <= nidle.  Awake workers: nthreads - (nidle -
 *               nwaking).  A worker that wakes for another reason (its
 *               idle timeout) takes one too, so that a lost signal is
 *               never counted as on its way.
 *   avg_call_ns a moving average (weight 1/8) of call durations.
 *   stopping    false -> true once, in mm__pool_free; no submit succeeds
 *               after it.
 *
 * Wake-ups (DESIGN.md, "Wake-ups cost more than the work").  A worker
 * that runs out of work spins on the queue's lock-free mirror before it
 * parks (lib/spin.c), so that a coroutine's next call, made once its loop
 * has taken the answer, finds it awake; spinning workers count as taking
 * the next calls, so no one is woken for them.  An idle worker is
 * signalled only when no spinning or already-woken worker will take the
 * call (nwaking), and the signal is sent after mu is released, so that
 * the woken thread does not run into the lock.
 */
#include "bridge.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct worker {
  mm__list_t link;            /* pool->threads or pool->dead */
  pthread_t thread;
  mm__pool_t *pool;
  unsigned id;
  uint64_t call_start;        /* uv_hrtime() when its call began, 0 when
                                 it runs none; protected by pool->mu */
  void *state;                /* a lane set's: what open made; own thread */
} worker_t;

struct mm__pool {
  pthread_mutex_t mu;
  pthread_cond_t work_cv;     /* idle workers wait here */
  pthread_cond_t exit_cv;     /* a worker exited */
  char name[32];
  char thread_name[16];       /* a lane's fixed thread name, or "" */
  mm_loop_t *loop;            /* the loop its threads serve */
  unsigned min, max, idle_ms;
  bool lane;                  /* exactly max threads, started at once,
                                 never idling out: a lane or a lane set */
  bool set;                   /* a lane set: threads "mm-NAME-<id>" */
  mm__pool_set_t hooks;       /* a lane set's open and close */
  /* protected by mu */
  mm__list_t queue;           /* mm__sync_req_t.link, FIFO */
  uint64_t queued;
  uint64_t running;
  uint64_t calls;             /* accepted by submit, ever */
  unsigned nthreads;          /* started and not exited */
  unsigned nidle;             /* waiting on work_cv */
  unsigned nwaking;           /* of those, signalled and not yet awake */
  unsigned nspinning;         /* looking at the queue before parking */
  uint64_t avg_call_ns;       /* moving average of how long calls take */
  mm__spin_t spin;            /* how long the next spin lasts (adaptive) */
  unsigned nstarting;         /* created, not yet in their loop */
  unsigned next_id;
  bool stopping;
  int open_err;               /* a lane set: the first failed open's value */
  bool warned;                /* the calls waiting now were reported */
  mm__list_t threads;         /* worker_t, alive */
  mm__list_t dead;            /* worker_t, exited, not yet joined */
  /* queued, readable without mu for the spin before parking; written
   * under mu (relaxed: a stale value only ends or prolongs a spin) */
  _Atomic uint64_t queued_hint;
};

/* A call that has run this long is taken to block: its thread does not
 * count against the CPUs. */
#define LONG_CALL_NS 100000

/* A call that waits this long for a pool at its maximum is reported, once
 * for as long as calls keep waiting.  Until then, and after, the loop
 * looks every SATURATED_CHECK_MS. */
#define QUEUE_WARN_MS 1000
#define SATURATED_CHECK_MS 100


static __thread const mm__pool_t *self_pool;
/* A lane set's thread, between its open and its close: its state. */
static __thread void *lane_state;

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

/* The counters' invariants (see the top of the file).  mu held. */
static bool pool_ok(const mm__pool_t *pool) {
  return pool->nwaking <= pool->nidle &&
         pool->nstarting + pool->running + pool->nspinning + pool->nidle <=
             pool->nthreads &&
         pool->nthreads <= pool->max &&
         atomic_load_explicit(&pool->queued_hint, memory_order_relaxed) ==
             pool->queued;
}

/* Workers whose call has run for LONG_CALL_NS so far.  mu held. */
static unsigned count_blocked(const mm__pool_t *pool) {
  uint64_t now = uv_hrtime();
  unsigned n = 0;
  const mm__list_t *l;
  for (l = pool->threads.next; l != &pool->threads; l = l->next) {
    const worker_t *w = container_of(l, worker_t, link);
    if (w->call_start != 0 && now - w->call_start >= LONG_CALL_NS)
      n++;
  }
  return n;
}

/* Sees that queued calls get threads: claims idle workers to wake and
 * starts a new one when none is left, for the calls beyond those that
 * spinning and already woken workers will take (and free more: the
 * caller itself, when it is a worker about to look for work).  At most
 * as many workers are awake as there are CPUs, those in long calls not
 * counted, unless calls take long on average: then every waiting call
 * gets a thread.  One thread starts at a time; once running it calls this
 * again for the next.  mu held.  Returns how many times the caller must
 * signal work_cv once it has released mu; *err is set only when an empty
 * pool cannot start a thread. */
static unsigned assign(mm__pool_t *pool, unsigned free, int *err) {
  mm__assert(pool_ok(pool));
  uint64_t taken = (uint64_t) pool->nspinning + pool->nwaking + free;
  if (pool->queued <= taken)
    return 0;
  uint64_t need = pool->queued - taken;
  unsigned idle = pool->nidle - pool->nwaking;   /* not yet signalled */
  unsigned awake = pool->nthreads - idle;
  unsigned room;
  if (pool->lane || pool->avg_call_ns >= LONG_CALL_NS) {
    room = pool->max;                      /* calls block: one thread each */
  } else {
    unsigned ncpu = mm__cpu_count();
    if (awake >= ncpu)
      awake -= count_blocked(pool);
    room = awake < ncpu ? ncpu - awake : 0;
  }
  if (need < room)
    room = (unsigned) need;
  unsigned n = idle < room ? idle : room;
  pool->nwaking += n;
  if (n < room && pool->nstarting == 0 && pool->nthreads < pool->max) {
    int r = start_worker(pool);
    if (r != 0 && pool->nthreads == 0)
      *err = r;
  }
  return n;
}

static void signal_n(mm__pool_t *pool, unsigned n) {
  while (n-- > 0)
    pthread_cond_signal(&pool->work_cv);
}

/* The spin's condition: calls are queued.  Relaxed: a stale value only
 * shortens or lengthens the spin; the queue itself is then read under
 * mu. */
static bool calls_queued(const void *arg) {
  const mm__pool_t *pool = arg;
  return atomic_load_explicit(&pool->queued_hint, memory_order_relaxed) != 0;
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  mm__pool_t *pool = w->pool;

#ifdef HAVE_PTHREAD_SETNAME_NP
  char name[16];
  if (pool->set) {
    /* "mm-NAME-<id>" in 15 characters: NAME gives way, never the id (the
     * same NAME for every thread, sized for the largest id). */
    int digits = snprintf(NULL, 0, "%u", pool->max);
    int keep = (int) sizeof name - 1 - (int) strlen("mm--") - digits;
    snprintf(name, sizeof name, "mm-%.*s-%u", keep > 0 ? keep : 0,
             pool->name, w->id);
  } else if (pool->thread_name[0] != '\0')
    snprintf(name, sizeof name, "%s", pool->thread_name);
  else if (pool->lane)
    snprintf(name, sizeof name, "mm-lane-%.7s", pool->name);
  else
    snprintf(name, sizeof name, "mm-worker-%u", w->id);
  pthread_setname_np(pthread_self(), name);
#endif
  self_pool = pool;
  mm__tls.serves = pool->loop;  /* mm_loop_free refuses to run here */
  int open_r = pool->hooks.open != NULL
                   ? pool->hooks.open(&w->state, pool->hooks.arg) : 0;
  if (open_r >= 0)
    lane_state = w->state;

  pthread_mutex_lock(&pool->mu);
  pool->nstarting--;
  if (pool->set)
    pthread_cond_broadcast(&pool->exit_cv);   /* mm__pool_new_set waits */
  if (open_r < 0) {
    if (pool->open_err == 0)
      pool->open_err = open_r;
    goto out;                 /* nothing to close */
  }
  int err = 0;
  unsigned wake = assign(pool, 1, &err);  /* the next thread, if needed */
  if (wake > 0) {
    pthread_mutex_unlock(&pool->mu);
    signal_n(pool, wake);
    pthread_mutex_lock(&pool->mu);
  }
  for (;;) {
    mm__list_t *n = mm__list_pop_front(&pool->queue);
    if (n != NULL) {
      mm__sync_req_t *req = container_of(n, mm__sync_req_t, link);
      count_queued(pool, -1);
      pool->running++;
      w->call_start = uv_hrtime();
      atomic_store_explicit(&req->state, MM__SYNC_RUNNING,
                            memory_order_relaxed);  /* mu orders it */
      pthread_mutex_unlock(&pool->mu);
      mm__sync_execute(req);
      pthread_mutex_lock(&pool->mu);
      pool->running--;
      /* Weight 1/8: a few long calls in a row make the pool take calls
       * as blocking, a few quick ones as quick again. */
      int64_t d = (int64_t) (uv_hrtime() - w->call_start) -
                  (int64_t) pool->avg_call_ns;
      pool->avg_call_ns = (uint64_t) ((int64_t) pool->avg_call_ns + d / 8);
      w->call_start = 0;
      continue;
    }
    if (pool->stopping)
      break;
    /* Before parking, watch the queue for a while: the next call may be
     * microseconds away, and a park plus a wake-up costs more. */
    if (mm__spin_begin()) {
      /* The pool's workers share one adaptive limit, under mu: spin
       * with a copy, and count a miss on the shared one. */
      pool->nspinning++;
      mm__spin_t spin = pool->spin;
      pthread_mutex_unlock(&pool->mu);
      bool came = mm__spin_wait(&spin, calls_queued, pool);
      pthread_mutex_lock(&pool->mu);
      if (!came)
        mm__spin_missed(&pool->spin);
      pool->nspinning--;
      if (!mm__list_empty(&pool->queue) || pool->stopping)
        continue;
    }
    pool->nidle++;
    uint64_t parked = mm__spin_sleep_begin();
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
    if (r == 0)
      mm__spin_woken(&pool->spin, parked);
    if (r == ETIMEDOUT && mm__list_empty(&pool->queue) &&
        pool->nthreads > pool->min)
      break;
  }
  if (pool->hooks.close != NULL) {
    /* Still counted in nthreads: mm__pool_free returns after this. */
    pthread_mutex_unlock(&pool->mu);
    lane_state = NULL;
    pool->hooks.close(w->state, pool->hooks.arg);
    pthread_mutex_lock(&pool->mu);
  }
out:
  lane_state = NULL;
  pool->nthreads--;
  mm__list_remove(&w->link);
  mm__list_push_back(&pool->dead, &w->link);
  pthread_cond_broadcast(&pool->exit_cv);
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

/* A pool with no thread yet. */
static mm__pool_t *pool_alloc(mm_loop_t *loop, const char *name,
                              unsigned min, unsigned max, unsigned idle_ms,
                              bool lane, const char *thread_name) {
  mm__pool_t *pool = calloc(1, sizeof(*pool));
  if (pool == NULL)
    return NULL;
  pool->loop = loop;
  /* Adaptive: the sections under mu are a few list operations, so a
   * thread that finds it taken spins briefly instead of sleeping in the
   * kernel. */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(&pool->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  pthread_cond_init(&pool->work_cv, NULL);
  pthread_cond_init(&pool->exit_cv, NULL);
  snprintf(pool->name, sizeof pool->name, "%s", name != NULL ? name : "");
  if (thread_name != NULL)
    snprintf(pool->thread_name, sizeof pool->thread_name, "%s", thread_name);
  pool->lane = lane;
  pool->min = min;
  pool->max = max;
  pool->idle_ms = idle_ms;
  mm__spin_init(&pool->spin);
  mm__list_init(&pool->queue);
  mm__list_init(&pool->threads);
  mm__list_init(&pool->dead);
  return pool;
}

mm__pool_t *mm__pool_new(mm_loop_t *loop, const char *name, unsigned min,
                         unsigned max, unsigned idle_ms, bool lane,
                         const char *thread_name) {
  mm__pool_t *pool = pool_alloc(loop, name, lane ? 1 : min, lane ? 1 : max,
                                idle_ms, lane, thread_name);
  if (pool == NULL)
    return NULL;
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

int mm__pool_new_set(mm_loop_t *loop, const char *name,
                     const mm__pool_set_t *set, mm__pool_t **out) {
  mm__pool_t *pool = pool_alloc(loop, name, set->count, set->count, 0, true,
                                NULL);
  if (pool == NULL)
    return -ENOMEM;
  pool->set = true;
  pool->hooks = *set;
  pthread_mutex_lock(&pool->mu);
  int r = 0;
  while (r == 0 && pool->nthreads < pool->max)
    r = start_worker(pool);
  /* Each thread counts itself out of nstarting once its open has run. */
  while (pool->nstarting > 0)
    pthread_cond_wait(&pool->exit_cv, &pool->mu);
  if (r == 0)
    r = pool->open_err;
  pthread_mutex_unlock(&pool->mu);
  if (r != 0) {
    mm__pool_free(pool);      /* the opened ones close, all are joined */
    return r;
  }
  *out = pool;
  return 0;
}

void *mm__pool_lane_state(void) {
  return lane_state;
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

void mm__pool_forget(mm__pool_t *pool) {
  mm__list_t *lists[] = { &pool->threads, &pool->dead };
  for (size_t i = 0; i < MM__ARRAY_SIZE(lists); i++) {
    mm__list_t *n;
    while ((n = mm__list_pop_front(lists[i])) != NULL)
      free(container_of(n, worker_t, link));
  }
  free(pool);
}

int mm__pool_submit_list(mm__pool_t *pool, mm__list_t *reqs) {
  pthread_mutex_lock(&pool->mu);
  if (pool->stopping) {
    pthread_mutex_unlock(&pool->mu);
    return -ESHUTDOWN;
  }
  int n = 0;
  uint64_t now = uv_hrtime();
  mm__list_t *l, *tmp;
  mm__list_foreach_safe(l, tmp, reqs) {
    mm__sync_req_t *req = container_of(l, mm__sync_req_t, link);
    atomic_store_explicit(&req->state, MM__SYNC_QUEUED,
                          memory_order_relaxed);  /* mu orders it */
    req->queued_at = now;
    n++;
  }
  if (pool->queued == 0)
    pool->warned = false;     /* nothing waited: a new episode */
  mm__list_splice_back(&pool->queue, reqs);
  count_queued(pool, n);
  int r = 0;
  unsigned wake = assign(pool, 0, &r);
  if (r != 0) {
    /* No thread at all: give the calls back, in order. */
    for (int i = 0; i < n; i++) {
      l = pool->queue.prev;
      mm__list_remove(l);
      mm__list_push_front(reqs, l);
    }
    count_queued(pool, -n);
    pthread_mutex_unlock(&pool->mu);
    return r;
  }
  pool->calls += (uint64_t) n;
  pthread_mutex_unlock(&pool->mu);
  signal_n(pool, wake);
  return 0;
}

int mm__pool_submit(mm__pool_t *pool, mm__sync_req_t *req) {
  mm__list_t one;
  mm__list_init(&one);
  mm__list_push_back(&one, &req->link);
  int r = mm__pool_submit_list(pool, &one);
  if (r != 0)
    mm__list_remove(&req->link);
  return r;
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

unsigned mm__pool_recheck(mm__pool_t *pool) {
  int err = 0;
  unsigned next = 0;
  uint64_t waiting = 0, waited_ms = 0;
  unsigned busy = 0;
  bool warn = false;
  pthread_mutex_lock(&pool->mu);
  unsigned wake = assign(pool, 0, &err);
  uint64_t taken = (uint64_t) pool->nspinning + pool->nwaking;
  if (!pool->stopping && pool->queued > taken) {
    /* Calls wait with no thread on its way. */
    if (pool->nidle > pool->nwaking || pool->nthreads < pool->max) {
      next = 1;               /* one may be woken or started soon */
    } else {
      next = SATURATED_CHECK_MS;
      const mm__sync_req_t *oldest =
          container_of(pool->queue.next, mm__sync_req_t, link);
      waited_ms = (uv_hrtime() - oldest->queued_at) / 1000000u;
      if (!pool->warned && waited_ms >= QUEUE_WARN_MS) {
        pool->warned = warn = true;
        waiting = pool->queued;
        busy = pool->nthreads;
      }
    }
  }
  pthread_mutex_unlock(&pool->mu);
  signal_n(pool, wake);
  if (warn)
    mm__log(MM_LOG_WARN, "mm_run_sync: %" PRIu64 " call(s) have waited %"
            PRIu64 " ms for a worker; the pool's %u workers "
            "(pool_max_threads) are all busy.  If their calls wait for "
            "this loop (mm_run_async), they wait for these calls: a "
            "deadlock that only a cancel or a timeout ends", waiting,
            waited_ms, busy);
  return next;
}

bool mm__pool_is_self(const mm__pool_t *pool) {
  return self_pool == pool;
}

void mm__pool_stats(mm__pool_t *pool, unsigned *threads, unsigned *idle,
                    uint64_t *queued, uint64_t *running, uint64_t *calls) {
  pthread_mutex_lock(&pool->mu);
  *threads = pool->nthreads;
  *idle = pool->nidle;
  *queued = pool->queued;
  *running = pool->running;
  *calls = pool->calls;
  pthread_mutex_unlock(&pool->mu);
}
