/* Lane sets: count lanes that share one FIFO queue, a call going to the
 * first idle lane, each lane with a resource of its own that it opens and
 * closes on its own thread (a connection per lane, for a driver whose
 * connections must stay on the thread that opened them).  A set is one
 * pool (pool.c) of exactly count threads that never idle out and run the
 * set's open and close hooks; its queue and its idle threads are the
 * dispatch, and its calls are ordinary run_sync requests (run-sync.c).
 * Sets a user did not free are freed, with a warning, by mm_loop_free
 * (bridge.c).
 */
#include "bridge.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void mm_laneset_options_init(mm_laneset_options_t *o) {
  if (o == NULL)
    return;
  memset(o, 0, sizeof(*o));
  o->count = 1;
}

/* The arguments and result of a set's creation, on its creator's stack. */
typedef struct new_set {
  mm_loop_t *loop;
  const mm_laneset_options_t *o;
  mm_laneset_t *set;
} new_set_t;

static int new_set(void *arg);

int mm_laneset_new(mm_loop_t *loop, const mm_laneset_options_t *o,
                   mm_laneset_t **out) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  if (loop == NULL || o == NULL || o->count == 0)
    return -EINVAL;
  int r = mm__loop_check(loop);
  if (r != 0)
    return r;
  /* Waiting for the opens is blocking work: from a coroutine it goes to
   * the pool, elsewhere it runs here. */
  new_set_t n = { loop, o, NULL };
  r = mm__tls.coro != NULL ? mm_run_sync(new_set, &n) : new_set(&n);
  if (r == 0)
    *out = n.set;
  return r;
}

static int new_set(void *arg) {
  new_set_t *n = arg;
  mm_loop_t *loop = n->loop;
  const mm_laneset_options_t *o = n->o;
  int r = mm__loop_check(loop);
  if (r != 0)
    return r;
  mm__bridge_t *b = mm__bridge_of(loop);
  if (b == NULL)
    return mm__bridge_error(loop);
  mm_laneset_t *set = calloc(1, sizeof(*set));
  if (set == NULL)
    return -ENOMEM;
  set->loop = loop;
  mm__pool_set_t hooks = {
    .count = o->count,
    .open = o->open,
    .close = o->close,
    .arg = o->arg,
  };
  /* Every lane has opened (or the set is gone again) when this returns. */
  r = mm__pool_new_set(loop, o->name != NULL ? o->name : "laneset", &hooks,
                       &set->pool);
  if (r != 0) {
    free(set);
    return r;
  }
  pthread_mutex_lock(&b->mu);
  mm__list_push_back(&b->lanesets, &set->link);
  pthread_mutex_unlock(&b->mu);
  n->set = set;
  return 0;
}

int mm_laneset_free(mm_laneset_t *set) {
  if (set == NULL)
    return -EINVAL;
  return mm__lanes_free(set->loop, &set->link, set->pool, set);
}

void *mm_lane_state(void) {
  return mm__pool_lane_state();
}
