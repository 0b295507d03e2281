/* The bridge layer's per-loop state (mm__bridge_t, bridge.h): made on the
 * loop's first bridge call, it holds the loop's worker pool, its sensitive
 * thread, its lanes and lane sets, and the run_sync calls staged during a
 * pass over the ready coroutines; lib/ calls flush after each pass and
 * free from mm_loop_free.  Not done here: the calls themselves
 * (run-sync.c, run-async.c) and the threads (pool.c).
 *
 * Lock order: b->mu (the lists of lanes and sets, the sensitive pool's
 * creation); under it a pool being made takes its own, still private, mu,
 * and the stats take each lane's pool mu (b->mu before pool->mu, never
 * the reverse).
 */
#include "bridge.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

/* A pool with as many threads awake as CPUs takes more only once some of
 * their calls have run long (pool.c), and a pool at its maximum reports
 * calls that wait long; nothing but time may show either, so while calls
 * wait the loop looks again (mm__pool_recheck says when). */
static void watch_pool(mm__bridge_t *b, unsigned ms) {
  if (b->pool_timer.idx == SIZE_MAX &&
      mm__timer_start(b->loop, &b->pool_timer, ms) != 0)
    mm__log(MM_LOG_ERROR, "no memory for the pool's timer: calls that "
            "block may wait for a thread until another call comes");
}

static void on_pool_timer(mm__timer_t *t) {
  mm__bridge_t *b = container_of(t, mm__bridge_t, pool_timer);
  unsigned next = mm__pool_recheck(b->pool);
  if (next != 0)
    watch_pool(b, next);
}

/* The loop's pool calls of a pass over the ready coroutines go to the
 * pool together, after the pass: one lock and at most one wake-up per
 * idle worker for the whole batch, instead of one each (MM__STAGE_MAX at
 * a time, bridge.h). */
void mm__bridge_flush(mm_loop_t *loop, void *p) {
  mm__bridge_t *b = p;
  (void) loop;
  if (mm__list_empty(&b->staged))
    return;
  b->nstaged = 0;
  unsigned recheck_ms;
  int r = mm__pool_submit_list(b->pool, &b->staged, &recheck_ms);
  if (r == 0) {
    /* Only while calls wait without a thread: a call that finds one arms
     * no timer (a timer at every flush woke the loop once more per call
     * at sporadic load). */
    if (recheck_ms != 0)
      watch_pool(b, recheck_ms);
    return;
  }
  mm__list_t *n;
  while ((n = mm__list_pop_front(&b->staged)) != NULL) {
    mm__sync_req_t *req = container_of(n, mm__sync_req_t, link);
    atomic_store_explicit(&req->state, MM__SYNC_CANCELLED,
                          memory_order_relaxed);
    /* Nobody else has seen a staged call: the claim is ours. */
    mm__wait_cancel(req->wait, r);
  }
}

/* Adds pool's calls and queued calls to *calls and *queued. */
static void add_stats(mm__pool_t *pool, uint64_t *calls, uint64_t *queued) {
  uint64_t q, running, c;
  unsigned threads, idle;
  mm__pool_stats(pool, &threads, &idle, &q, &running, &c);
  *calls += c;
  *queued += q;
}

void mm__bridge_lane_stats(mm__bridge_t *b, uint64_t *calls,
                           uint64_t *queued) {
  pthread_mutex_lock(&b->mu);
  *calls = b->lanes_gone_calls;
  *queued = 0;
  /* A lane (or set) in a list is not freed yet: its free takes it out
   * under mu first (mm__bridge_lane_gone). */
  mm__list_t *l;
  for (l = b->lanes.next; l != &b->lanes; l = l->next)
    add_stats(container_of(l, mm_lane_t, link)->pool, calls, queued);
  for (l = b->lanesets.next; l != &b->lanesets; l = l->next)
    add_stats(container_of(l, mm_laneset_t, link)->pool, calls, queued);
  pthread_mutex_unlock(&b->mu);
}

void mm__bridge_lane_gone(mm__bridge_t *b, mm__list_t *link,
                          mm__pool_t *pool) {
  uint64_t queued = 0;
  pthread_mutex_lock(&b->mu);
  mm__list_remove(link);
  add_stats(pool, &b->lanes_gone_calls, &queued);
  pthread_mutex_unlock(&b->mu);
}

/* Releases every pool of b -- its lanes and lane sets (warning about
 * each, if warn),
 * its pool and its sensitive thread -- with release, then b itself. */
static void release_all(mm__bridge_t *b, void (*release)(mm__pool_t *pool),
                        bool warn) {
  mm__list_t *n;
  while ((n = mm__list_pop_front(&b->lanes)) != NULL) {
    mm_lane_t *lane = container_of(n, mm_lane_t, link);
    if (warn)
      mm__log(MM_LOG_WARN, "mm_loop_free: a lane was never freed; "
              "freeing it");
    release(lane->pool);
    free(lane);
  }
  while ((n = mm__list_pop_front(&b->lanesets)) != NULL) {
    mm_laneset_t *set = container_of(n, mm_laneset_t, link);
    if (warn)
      mm__log(MM_LOG_WARN, "mm_loop_free: a lane set was never freed; "
              "freeing it (its lanes close)");
    release(set->pool);
    free(set);
  }
  release(b->pool);
  mm__pool_t *sensitive = atomic_load_explicit(&b->sensitive,
                                               memory_order_acquire);
  if (sensitive != NULL)
    release(sensitive);
  free(b);
}

static void bridge_free(mm_loop_t *loop, void *p) {
  mm__bridge_t *b = p;
  assert(mm__list_empty(&b->staged));
  mm__timer_stop(loop, &b->pool_timer);
  pthread_mutex_destroy(&b->mu);
  release_all(b, mm__pool_free, true);
}

/* A forked child's: the threads, and b->mu, are the parent's. */
static void bridge_forget(void *p) {
  release_all(p, mm__pool_forget, false);
}

mm__bridge_t *mm__bridge_of(mm_loop_t *loop) {
  mm__bridge_t *b = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (b != NULL)
    return b;
  b = mm__aligned_zalloc(sizeof(*b));
  if (b == NULL)
    return NULL;
  b->pool = mm__pool_new(loop, "", loop->opt.pool_min_threads,
                         loop->opt.pool_max_threads, loop->opt.pool_idle_ms,
                         false, NULL);
  if (b->pool == NULL) {
    free(b);
    return NULL;
  }
  pthread_mutex_init(&b->mu, NULL);
  mm__list_init(&b->lanes);
  mm__list_init(&b->lanesets);
  mm__list_init(&b->staged);
  b->loop = loop;
  mm__timer_init(&b->pool_timer, on_pool_timer);
  static const mm__bridge_ops_t ops = { mm__bridge_flush, bridge_free,
                                        bridge_forget };
  mm__bridge_t *cur = mm__loop_set_bridge(loop, b, &ops);
  if (cur != b)
    bridge_free(loop, b);   /* another thread was first */
  return cur;
}

/* The loop's one sensitive thread: MM_AFFINITY_CALLER calls of
 * coroutines that have no caller thread all run there, in order. */
mm__pool_t *mm__bridge_sensitive(mm__bridge_t *b) {
  mm__pool_t *p = atomic_load_explicit(&b->sensitive, memory_order_acquire);
  if (p != NULL)
    return p;
  pthread_mutex_lock(&b->mu);
  p = atomic_load_explicit(&b->sensitive, memory_order_relaxed);
  if (p == NULL) {
    p = mm__pool_new(b->loop, "sensitive", 1, 1, 0, true, "mm-sensitive");
    /* Release pairs with the acquire load above. */
    atomic_store_explicit(&b->sensitive, p, memory_order_release);
  }
  pthread_mutex_unlock(&b->mu);
  return p;
}
