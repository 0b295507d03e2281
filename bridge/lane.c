/* Lanes: one thread each that runs the calls sent to it one at a time, in
 * order, always on that thread (a driver connection that must stay on the
 * thread that opened it).  A lane is a pool of exactly one thread that
 * never idles out (pool.c); its calls are ordinary run_sync requests
 * (run-sync.c).  Lanes a user did not free are freed, with a warning, by
 * mm_loop_free (bridge.c).
 */
#include "bridge.h"

#include <errno.h>
#include <stdlib.h>

int mm_lane_new(mm_loop_t *loop, const char *name, mm_lane_t **out) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  int r = mm__loop_check(loop);
  if (r != 0)
    return r;
  mm__bridge_t *b = mm__bridge_of(loop);
  if (b == NULL)
    return mm__bridge_error(loop);
  mm_lane_t *lane = calloc(1, sizeof(*lane));
  if (lane == NULL)
    return -ENOMEM;
  lane->loop = loop;
  lane->pool = mm__pool_new(loop, name, 1, 1, 0, true, NULL);
  if (lane->pool == NULL) {
    free(lane);
    return -EAGAIN;
  }
  pthread_mutex_lock(&b->mu);
  mm__list_push_back(&b->lanes, &lane->link);
  pthread_mutex_unlock(&b->mu);
  *out = lane;
  return 0;
}

/* What mm_lane_free and mm_laneset_free share: a lane or a set is a pool
 * on one of the bridge's lists, in a block of its own that goes with it. */
typedef struct lanes_close {
  mm_loop_t *loop;
  mm__list_t *link;
  mm__pool_t *pool;
  void *block;
  bool closed;                /* the worker began the close */
} lanes_close_t;

static int lanes_close(void *arg) {
  lanes_close_t *l = arg;
  l->closed = true;
  mm__bridge_t *b = atomic_load_explicit(&l->loop->bridge,
                                         memory_order_acquire);
  mm__bridge_lane_gone(b, l->link, l->pool);
  mm__pool_free(l->pool);     /* runs what is queued, closes, joins */
  free(l->block);
  return 0;
}

int mm__lanes_free(mm_loop_t *loop, mm__list_t *link, mm__pool_t *pool,
                   void *block) {
  if (mm__pool_is_self(pool))
    return -EDEADLK;             /* the lane would join itself */
  if (mm__tls.coro == NULL && mm__tls.loop != NULL)
    return -EDEADLK;
  /* Waiting for the queue is blocking work: in a coroutine it goes to the
   * pool like any other, on a plain thread it runs here.  A cancelled
   * coroutine gets -ECANCELED and the lane (or set) stays (mm_loop_free
   * frees it with a warning).  Once a worker has begun the close it
   * cannot be undone: a cancel or deadline arriving then waits for it
   * (the call has no on_cancel and is not abandonable), and the answer is
   * 0 -- never -ETIMEDOUT for a lane that is gone.  closed is read after
   * the call's delivery, which orders the worker's write before it. */
  lanes_close_t l = { loop, link, pool, block, false };
  int r = mm_run_sync(lanes_close, &l);
  return l.closed ? 0 : r;
}

int mm_lane_free(mm_lane_t *lane) {
  if (lane == NULL)
    return -EINVAL;
  return mm__lanes_free(lane->loop, &lane->link, lane->pool, lane);
}
