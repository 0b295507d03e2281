/* Worker pools: threads that run blocking calls, one FIFO queue each.
 *
 * The loop's pool starts min threads and grows on demand up to max.
 * Queued calls get threads in assign(): idle workers are woken, and a new
 * thread is started when none is idle -- one at a time: the new one, once
 * running, starts the next if calls still wait.  Past max, calls wait in
 * the queue in order.  A thread idle for idle_ms exits while more than
 * min remain.  A lane is the same pool with exactly one thread that never
 * idles out: its calls run one at a time, in order, always on that
 * thread.  A lane set is a pool of exactly count such threads (its idle
 * threads take the queue's calls in order: the first idle lane gets the
 * next call), each of which runs the set's open hook before it takes
 * calls and its close hook when it ends; lanes and sets wake an idle
 * thread for every queued call, whatever the CPUs.
 *
 * Sizing (API.md, "Pool sizing").  Quick calls must not grow the pool
 * past what keeps the CPUs busy, calls that block must get a thread each.
 * The rule, in assign():
 *
 *   a queued call gets a worker (an idle one woken, or a new one) only
 *   while the workers awake and not blocked number fewer than
 *   BUDGET = CPUs / the pools busy now (at least 1) -- or at once, up
 *   to max, while calls have mostly been blocking lately (blocking >=
 *   BLOCKING_HALF).
 *
 * The pools of several loops share the CPUs: each counts itself busy
 * while it has calls queued or running (pools_busy).  Four loops on two
 * CPUs woke two workers each for quick calls -- eight workers and four
 * loop threads taking turns on two CPUs; sharing, they wake one each
 * (bench/cpu's several loops: 4 loops x 64 calls, 0.91x the time and
 * 0.89x the CPU, medians of 20 runs paired with the unshared budget).
 *
 * With the loop's own thread, that is one busy thread per CPU plus one;
 * one more worker may exist, idle or on its way out.  (BUDGET = CPUs + 1
 * workers measured slower: with 64 calls in flight on 2 CPUs, 4 busy
 * threads took turns where 3 kept up.)
 *
 * "Blocked" must not be guessed from time alone: on a busy machine a
 * worker taken off its CPU in the middle of a 2 us call looks like one
 * that waits for a disk, and counting it as blocked starts a thread that
 * only makes the CPUs busier -- so more calls look long, and the pool ran
 * away to its maximum for 2 us calls.  So a call that has run
 * LONG_CALL_NS is asked about: the kernel's state of its thread
 * (/proc/self/task/TID/stat).  'R' (running, or runnable and waiting for
 * a CPU) is a call that uses a CPU -- it counts against BUDGET however
 * long it runs; anything else (asleep in a lock, a sleep, I/O) is a
 * blocked call, whose thread leaves its CPU to the others.  (So calls
 * that compute for long keep the pool at BUDGET: if they hold every
 * thread, the queue's oldest call gets one more after STARVE_NS, and so
 * on every STARVE_NS while the queue does not move.)  Asking costs a
 * few system calls, so it is done only when calls wait that BUDGET keeps
 * waiting (probe_due()), outside mu, for at most MAX_PROBES calls at a
 * time and at most once per PROBE_EVERY_NS per call: from the loop's
 * submit and from its recheck timer (mm__pool_recheck), which runs every
 * ms while calls wait (a call becomes long with time alone).  When /proc
 * cannot tell, a long call counts as blocked (time alone, as before).  A
 * wrong answer -- a call that blocks only later, or a thread asleep on mu
 * just after its function, which in_fn tells apart unless the look races
 * its return -- costs at most a thread too many or a ms of waiting, never
 * a lost call.  Each call's end moves
 * blocking, the share of recent calls seen blocked (weight 1/8; quick
 * calls count as not blocked, long ones only if they were asked about):
 * a burst of calls that block then gets its threads at once instead of
 * BUDGET more per ms (no probes are needed then, so the pool stays in
 * that mode while its calls stay long), and quick calls bring it back
 * down within a few calls.
 *
 * Lock order: pool->mu alone.  It protects every field below "protected";
 * a request's QUEUED -> RUNNING transition happens under it.  Workers run
 * calls and complete them without it.  It is an adaptive mutex where the
 * C library has one (glibc): every section under it is a few list
 * operations, and the loop's batches and the workers meet on it often.
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
 *   nidle       asleep on work_bell (or about to be: counted under mu
 *               before the sleep).
 *   nwaking     signals sent (or about to be, after unlocking) to idle
 *               workers for queued calls, not yet taken by a waking one;
 *               nwaking <= nidle.  Awake workers: nthreads - (nidle -
 *               nwaking).  A worker that wakes for another reason (its
 *               idle timeout) takes one too, so that a lost signal is
 *               never counted as on its way.
 *   nblocked    workers whose current call was seen blocked (worker
 *               .blocked); each is running a call, so nblocked <= running.
 *               Counted awake, but not against BUDGET.
 *   blocking    0..BLOCKING_ONE: moving average (weight 1/8) over ended
 *               calls of "it was seen blocked".
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
#include <limits.h>
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
  pid_t tid;                  /* the kernel's id, for probes; set before
                                 the thread first takes mu */
  uint64_t ncalls;            /* calls it took; protected by pool->mu */
  uint64_t probed_at;         /* uv_hrtime() of the last probe of its
                                 current call, 0: none; pool->mu */
  bool blocked;               /* its current call was seen blocked
                                 (pool->nblocked); pool->mu */
  _Atomic uint64_t in_fn;     /* ncalls while inside fn, else 0: written
                                 by its own thread only, read by probes */
} worker_t;

struct mm__pool {
  pthread_mutex_t mu;
  pthread_cond_t exit_cv;     /* a worker exited, or a set's one ran
                                 its open */
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
  unsigned nidle;             /* asleep on work_bell */
  unsigned nwaking;           /* of those, signalled and not yet awake */
  unsigned nspinning;         /* looking at the queue before parking */
  unsigned nblocked;          /* workers in a call seen blocked */
  uint64_t last_pop;          /* uv_hrtime() when a call last left queue
                                 for a worker */
  mm__spin_mark_t signalled;  /* when and where submit last signalled
                                 idle workers (mm__spin_woken) */
  unsigned blocking;          /* share of recent calls seen blocked */
  mm__spin_t spin;            /* how long the next spin lasts (adaptive) */
  unsigned nstarting;         /* created, not yet in their loop */
  unsigned next_id;
  bool stopping;
  bool counted_busy;          /* counted in pools_busy */
  int open_err;               /* a lane set: the first failed open's value */
  bool warned;                /* the calls waiting now were reported */
  mm__list_t threads;         /* worker_t, alive */
  mm__list_t dead;            /* worker_t, exited, not yet joined */
  /* queued, readable without mu for the spin before parking; written
   * under mu (relaxed: a stale value only ends or prolongs a spin) */
  _Atomic uint64_t queued_hint;
  /* Idle workers sleep on it (mm__futex_wait); signal_n and
   * mm__pool_free change it before they wake them. */
  _Atomic uint32_t work_bell;
};

/* A call that has run this long is probed: does its thread block? */
#define LONG_CALL_NS 100000
/* A queue that has not moved for this long gets one more thread. */
#define STARVE_NS (100 * 1000000ull)
/* A call found running is probed again after this long at the soonest. */
#define PROBE_EVERY_NS 1000000
/* Calls probed at a time, outside mu. */
#define MAX_PROBES 8
/* blocking's scale, and the share from which calls count as blocking. */
#define BLOCKING_ONE 1024
#define BLOCKING_HALF (BLOCKING_ONE / 2)

/* A call that waits this long for a pool at its maximum is reported, once
 * for as long as calls keep waiting.  Until then, and after, the loop
 * looks every SATURATED_CHECK_MS. */
#define QUEUE_WARN_MS 1000
#define SATURATED_CHECK_MS 100


static __thread const mm__pool_t *self_pool;
/* A lane set's thread, between its open and its close: its state. */
static __thread void *lane_state;

/* Pools (not lanes) with calls queued or running, process-wide: they
 * share the CPUs' budget (budget_room).  Each pool adds itself once
 * (counted_busy, under its mu) when its first call comes and takes
 * itself out when its last one ends.  Relaxed: a count a moment stale
 * only sizes one assign() by the old share.  A forked child starts at 0:
 * its inherited pools are never used (mm__pool_forget). */
static _Atomic unsigned pools_busy;

static void pools_busy_atfork_child(void) {
  atomic_store_explicit(&pools_busy, 0, memory_order_relaxed);
}

static void pools_busy_init(void) {
  pthread_atfork(NULL, NULL, pools_busy_atfork_child);
}

unsigned mm__pools_busy(void) {
  return atomic_load_explicit(&pools_busy, memory_order_relaxed);
}

/* Keeps pools_busy in step with this pool's calls.  mu held. */
static void note_busy(mm__pool_t *pool) {
  bool busy = !pool->lane && pool->queued + pool->running > 0;
  if (busy == pool->counted_busy)
    return;
  pool->counted_busy = busy;
  if (busy)
    atomic_fetch_add_explicit(&pools_busy, 1, memory_order_relaxed);
  else
    atomic_fetch_sub_explicit(&pools_busy, 1, memory_order_relaxed);
}

/* Changes the queue length and its lock-free mirror together.  mu held. */
static void count_queued(mm__pool_t *pool, int delta) {
  pool->queued += (uint64_t) (int64_t) delta;
  atomic_store_explicit(&pool->queued_hint, pool->queued,
                        memory_order_relaxed);
  note_busy(pool);
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
         pool->nblocked <= pool->running &&
         pool->blocking <= BLOCKING_ONE &&
         pool->nstarting + pool->running + pool->nspinning + pool->nidle <=
             pool->nthreads &&
         pool->nthreads <= pool->max &&
         atomic_load_explicit(&pool->queued_hint, memory_order_relaxed) ==
             pool->queued;
}

/* How many more workers may be awake for queued calls: BUDGET less the
 * awake ones that are not blocked (see the top of the file).  mu held. */
static unsigned budget_room(const mm__pool_t *pool, unsigned awake) {
  if (pool->lane || pool->blocking >= BLOCKING_HALF)
    return pool->max;
  unsigned budget = mm__cpu_count();
  unsigned busy = atomic_load_explicit(&pools_busy, memory_order_relaxed);
  if (busy > 1)
    budget = budget / busy > 0 ? budget / busy : 1;
  unsigned using = awake - pool->nblocked;
  if (using < budget)
    return budget - using;
  /* Calls that compute for long hold the budget as long as they run: a
   * queue that has not moved for STARVE_NS -- nothing taken from it since
   * its oldest call came -- gets one more thread, unless one is on its
   * way already. */
  if (pool->queued > 0 && pool->nwaking == 0 && pool->nstarting == 0) {
    const mm__sync_req_t *oldest =
        container_of(pool->queue.next, mm__sync_req_t, link);
    uint64_t since = oldest->queued_at > pool->last_pop ? oldest->queued_at
                                                        : pool->last_pop;
    if (uv_hrtime() - since >= STARVE_NS)
      return 1;
  }
  return 0;
}

/* Sees that queued calls get threads: claims idle workers to wake and
 * starts a new one when none is left, for the calls beyond those that
 * spinning and already woken workers will take (and free more: the
 * caller itself, when it is a worker about to look for work), within
 * budget_room().  One thread starts at a time; once running it calls this
 * again for the next.  mu held.  Returns how many of work_bell's
 * sleepers the caller must wake (signal_n) once it has released mu; *err
 * is set only when an empty pool cannot start a thread. */
static unsigned assign(mm__pool_t *pool, unsigned free, int *err) {
  mm__assert(pool_ok(pool));
  uint64_t taken = (uint64_t) pool->nspinning + pool->nwaking + free;
  if (pool->queued <= taken)
    return 0;
  uint64_t need = pool->queued - taken;
  unsigned idle = pool->nidle - pool->nwaking;   /* not yet signalled */
  unsigned awake = pool->nthreads - idle;
  unsigned room = budget_room(pool, awake);
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

/* Wakes n idle workers (assign() counted them in nwaking).  The bell
 * changes first: a worker that read it under mu before sleeping (it was
 * counted idle then, so before the assign() that chose it) finds it
 * changed and does not sleep, or is asleep and woken. */
static void signal_n(mm__pool_t *pool, unsigned n) {
  if (n == 0)
    return;
  atomic_fetch_add_explicit(&pool->work_bell, 1, memory_order_seq_cst);
  mm__futex_wake(&pool->work_bell, (int) n);
}

/* A call to ask the kernel about: its worker and which of its calls. */
typedef struct probe {
  unsigned id;
  pid_t tid;
  uint64_t call;
} probe_t;

/* Whether a probe could change anything: calls wait with no thread on its
 * way, and the budget holds them back.  mu held. */
static bool budget_holds_calls(const mm__pool_t *pool) {
  uint64_t taken = (uint64_t) pool->nspinning + pool->nwaking;
  unsigned idle = pool->nidle - pool->nwaking;
  return !pool->lane && !pool->stopping && pool->queued > taken &&
         (idle > 0 || pool->nthreads < pool->max) &&
         budget_room(pool, pool->nthreads - idle) == 0;
}

/* Picks the calls to probe now: run LONG_CALL_NS, not seen blocked, not
 * probed in the last PROBE_EVERY_NS.  mu held.  Returns how many. */
static unsigned probe_due(mm__pool_t *pool, probe_t *p) {
  if (!budget_holds_calls(pool))
    return 0;
  uint64_t now = uv_hrtime();
  unsigned n = 0;
  mm__list_t *l;
  for (l = pool->threads.next; l != &pool->threads && n < MAX_PROBES;
       l = l->next) {
    worker_t *w = container_of(l, worker_t, link);
    if (w->call_start == 0 || w->blocked ||
        now - w->call_start < LONG_CALL_NS ||
        (w->probed_at != 0 && now - w->probed_at < PROBE_EVERY_NS))
      continue;
    w->probed_at = now;
    p[n++] = (probe_t) { w->id, w->tid, w->ncalls };
  }
  return n;
}

/* Asks about the n calls of p, then has assign() act on the answers.
 * Called without mu: the looks use tids only, and a worker may exit
 * meanwhile, so each is found again by its id under mu. */
static void probe(mm__pool_t *pool, probe_t *p, unsigned n) {
  bool blocked[MAX_PROBES];
  for (unsigned i = 0; i < n; i++)
    blocked[i] = mm__thread_state(p[i].tid) != 'R';
  pthread_mutex_lock(&pool->mu);
  for (unsigned i = 0; i < n; i++) {
    if (!blocked[i])
      continue;
    mm__list_t *l;
    for (l = pool->threads.next; l != &pool->threads; l = l->next) {
      worker_t *w = container_of(l, worker_t, link);
      /* The same call, and the thread still inside fn: not one blocked
       * on mu on its way back (relaxed: a stale value only misjudges
       * one call, see the top of the file). */
      if (w->id == p[i].id && w->ncalls == p[i].call && !w->blocked &&
          w->call_start != 0 &&
          atomic_load_explicit(&w->in_fn, memory_order_relaxed) ==
              p[i].call) {
        w->blocked = true;
        pool->nblocked++;
      }
    }
  }
  int err = 0;
  unsigned wake = assign(pool, 0, &err);
  pthread_mutex_unlock(&pool->mu);
  signal_n(pool, wake);
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
  mm__thread_name(name);
  self_pool = pool;
  mm__tls.serves = pool->loop;  /* mm_loop_free refuses to run here */
  w->tid = (pid_t) mm__thread_tid();
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
      pool->last_pop = w->call_start;
      w->probed_at = 0;
      uint64_t call = ++w->ncalls;
      atomic_store_explicit(&req->state, MM__SYNC_RUNNING,
                            memory_order_relaxed);  /* mu orders it */
      pthread_mutex_unlock(&pool->mu);
      atomic_store_explicit(&w->in_fn, call, memory_order_relaxed);
      mm__sync_execute(req);
      atomic_store_explicit(&w->in_fn, 0, memory_order_relaxed);
      pthread_mutex_lock(&pool->mu);
      pool->running--;
      note_busy(pool);
      /* Weight 1/8: a few blocked calls in a row make the pool give
       * calls a thread each, a few quick ones (or long ones seen using
       * their CPU) make it count CPUs again.  A long call nobody asked
       * about says nothing. */
      bool quick = uv_hrtime() - w->call_start < LONG_CALL_NS;
      if (quick || w->probed_at != 0) {
        int sample = w->blocked ? BLOCKING_ONE : 0;
        pool->blocking = (unsigned) ((int) pool->blocking +
                                     (sample - (int) pool->blocking) / 8);
      }
      if (w->blocked) {
        w->blocked = false;
        pool->nblocked--;
      }
      w->call_start = 0;
      continue;
    }
    if (pool->stopping)
      break;
    /* Before parking, watch the queue for a while: the next call may be
     * microseconds away, and a park plus a wake-up costs more. */
    mm__spin_mark_t began = mm__spin_mark();
    if (mm__spin_begin(&pool->spin)) {
      /* The pool's workers share one adaptive limit, under mu: spin
       * with a copy, and count a miss on the shared one. */
      pool->nspinning++;
      mm__spin_t spin = pool->spin;
      pthread_mutex_unlock(&pool->mu);
      int got = mm__spin_wait(&spin, calls_queued, pool);
      pthread_mutex_lock(&pool->mu);
      if (got != MM__SPIN_CAME)
        mm__spin_missed(&pool->spin);
      pool->nspinning--;
      if (!mm__list_empty(&pool->queue) || pool->stopping)
        continue;
    }
    /* Asleep on the bell, not a condition variable: no mutex to take
     * back marked contended, so waking costs one system call, not two
     * (lib/futex.c).  Relaxed: mu orders this read before any assign()
     * that counts this worker woken. */
    pool->nidle++;
    uint32_t seq = atomic_load_explicit(&pool->work_bell,
                                        memory_order_relaxed);
    struct timespec ts, *deadline = NULL;
    if (!pool->lane && pool->nthreads > pool->min) {
      mm__cond_deadline(&ts, pool->idle_ms);
      deadline = &ts;
    }
    pthread_mutex_unlock(&pool->mu);
    int r = mm__futex_wait(&pool->work_bell, seq, deadline);
    pthread_mutex_lock(&pool->mu);
    pool->nidle--;
    if (pool->nwaking > 0)
      pool->nwaking--;
    if (r == 0)
      mm__spin_woken(&pool->spin, began, pool->signalled);
    if (r == -ETIMEDOUT && mm__list_empty(&pool->queue) &&
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
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, pools_busy_init);
  mm__pool_t *pool = calloc(1, sizeof(*pool));
  if (pool == NULL)
    return NULL;
  pool->loop = loop;
  /* Adaptive: the sections under mu are a few list operations, so a
   * thread that finds it taken spins briefly instead of sleeping in the
   * kernel. */
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
#if HAVE_DECL_PTHREAD_MUTEX_ADAPTIVE_NP
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
  pthread_mutex_init(&pool->mu, &ma);
  pthread_mutexattr_destroy(&ma);
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
  atomic_fetch_add_explicit(&pool->work_bell, 1, memory_order_seq_cst);
  mm__futex_wake(&pool->work_bell, INT_MAX);
  while (pool->nthreads > 0)
    pthread_cond_wait(&pool->exit_cv, &pool->mu);
  reap(pool);
  if (pool->counted_busy)     /* calls left queued: the pool no longer is */
    atomic_fetch_sub_explicit(&pools_busy, 1, memory_order_relaxed);
  pthread_mutex_unlock(&pool->mu);
  pthread_mutex_destroy(&pool->mu);
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

/* In how many ms the loop should look at the pool again (its recheck
 * timer): never (0) while every queued call has a thread on its way -- a
 * spinning worker, a woken one -- so that calls that find threads arm no
 * timer; 1 while calls wait that a woken or new thread may take soon, or
 * that the budget holds back until a probe shows their threads blocked
 * (time alone makes a call long); SATURATED_CHECK_MS for a pool at its
 * maximum.  mu held. */
static unsigned recheck_in(const mm__pool_t *pool) {
  uint64_t taken = (uint64_t) pool->nspinning + pool->nwaking;
  if (pool->stopping || pool->queued <= taken)
    return 0;
  if (pool->nidle > pool->nwaking || pool->nthreads < pool->max)
    return 1;
  return SATURATED_CHECK_MS;
}

int mm__pool_submit_list(mm__pool_t *pool, mm__list_t *reqs,
                         unsigned *recheck_ms) {
  if (recheck_ms != NULL)
    *recheck_ms = 0;
  pthread_mutex_lock(&pool->mu);
  if (pool->stopping) {
    pthread_mutex_unlock(&pool->mu);
    return -ESHUTDOWN;
  }
  int n = 0;
  /* One clock read: the calls' queueing time, and the mark a woken
   * worker's spin is judged by. */
  mm__spin_mark_t now = mm__spin_mark();
  mm__list_t *l, *tmp;
  mm__list_foreach_safe(l, tmp, reqs) {
    mm__sync_req_t *req = container_of(l, mm__sync_req_t, link);
    atomic_store_explicit(&req->state, MM__SYNC_QUEUED,
                          memory_order_relaxed);  /* mu orders it */
    req->queued_at = now.at;
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
  if (wake > 0)
    pool->signalled = now;   /* for the woken one's mm__spin_woken */
  probe_t p[MAX_PROBES];
  unsigned np = probe_due(pool, p);
  if (recheck_ms != NULL)
    *recheck_ms = recheck_in(pool);
  pthread_mutex_unlock(&pool->mu);
  signal_n(pool, wake);
  if (np > 0)
    probe(pool, p, np);
  return 0;
}

int mm__pool_submit(mm__pool_t *pool, mm__sync_req_t *req) {
  mm__list_t one;
  mm__list_init(&one);
  mm__list_push_back(&one, &req->link);
  int r = mm__pool_submit_list(pool, &one, NULL);
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
  probe_t p[MAX_PROBES];
  unsigned np = probe_due(pool, p);
  next = recheck_in(pool);
  if (next == SATURATED_CHECK_MS) {
    /* Calls wait for a pool at its maximum. */
    const mm__sync_req_t *oldest =
        container_of(pool->queue.next, mm__sync_req_t, link);
    waited_ms = (uv_hrtime() - oldest->queued_at) / 1000000u;
    if (!pool->warned && waited_ms >= QUEUE_WARN_MS) {
      pool->warned = warn = true;
      waiting = pool->queued;
      busy = pool->nthreads;
    }
  }
  pthread_mutex_unlock(&pool->mu);
  signal_n(pool, wake);
  if (np > 0)
    probe(pool, p, np);
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
