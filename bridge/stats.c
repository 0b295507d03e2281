/* mm_loop_stats: counters of the core and of the bridges, read from any
 * thread.  Each counter is read on its own (relaxed, or under the pool's
 * mutex for the pool's); the set is not one atomic snapshot. */
#include "bridge.h"

#include <errno.h>
#include <string.h>

int mm_loop_stats(mm_loop_t *loop, mm_stats_t *st) {
  if (loop == NULL || st == NULL)
    return -EINVAL;
  memset(st, 0, sizeof(*st));
  st->coros_live = mm__counter_get(&loop->nlive);
  st->coros_spawned = atomic_load_explicit(&loop->coros_spawned,
                                           memory_order_relaxed);
  st->slow_steps = mm__counter_get(&loop->slow_steps);
  mm__bridge_t *b = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (b != NULL) {
    st->async_calls = atomic_load_explicit(&b->async_calls,
                                           memory_order_relaxed);
    mm__pool_stats(b->pool, &st->pool_threads, &st->pool_idle,
                   &st->sync_queued, &st->sync_running, &st->sync_calls);
    mm__bridge_lane_stats(b, &st->lane_calls, &st->lane_queued);
  }
  return 0;
}
