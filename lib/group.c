/* Groups: structured concurrency.  Children spawned into a group run on
 * its loop; mm_group_wait waits for every one of them, the first child to
 * fail cancels the others, and the wait returns that failure's status.
 *
 * A group keeps a node per child (fn, arg, handle) in spawn order.  The
 * wait joins the children in that order with mm_join, which makes it
 * colour-blind and gives it mm_join's cancellation: a waiter that is
 * cancelled cancels the child it joins, and then the whole group.
 * Children may spawn siblings while they run (the wait cannot have passed
 * a child that is still running), and so may the blocking calls they
 * make; anyone else may spawn only until the wait begins (-EBUSY after:
 * the wait could return and free the group under that spawn).  Nothing
 * may spawn once the wait has returned, as the group is gone.
 *
 * A child's end (child_main, on the loop's thread) records its status
 * under mu: the first non-zero status of a child that ended while the
 * group was not cancelled is the group's failure, and it cancels every
 * other child not yet joined.  The wait marks a child joined under mu
 * once it has ended and before its handle goes (mm__join_hook), so no
 * cancel touches a handle that is gone.  A child cancelled before it
 * started never runs; it ends all the same.  Statuses after a
 * cancellation -- the group's own or a failure's -- are consequences,
 * not failures.
 *
 * Lock order: group->mu, then whatever mm_spawn_ex and mm_cancel take
 * (the loop's mu).  mu is held across the spawn so that a child cannot
 * end, and cancel its siblings, before its handle is stored.
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>

typedef struct child {
  struct child *next;
  mm_group_t *group;
  mm_fn fn;
  void *arg;
  mm_coro_t *coro;            /* joined by the wait */
  bool joined;                /* its handle is going: cancels skip it;
                                 protected by mu */
} child_t;

struct mm_group {
  pthread_mutex_t mu;
  mm_loop_t *loop;
  /* protected by mu */
  child_t *first, **tail;     /* spawn order */
  bool cancelled;
  bool waiting;               /* mm_group_wait has begun */
  int failure;                /* the first failure's status, or 0 */
};

int mm_group_new(mm_loop_t *loop, mm_group_t **out) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  int r = mm__loop_check(loop);
  if (r != 0)
    return r;
  mm_group_t *g = calloc(1, sizeof(*g));
  if (g == NULL)
    return -ENOMEM;
  pthread_mutex_init(&g->mu, NULL);
  g->loop = loop;
  g->tail = &g->first;
  *out = g;
  return 0;
}

/* Cancels every child not yet joined.  mu held. */
static void cancel_children(mm_group_t *g) {
  for (child_t *c = g->first; c != NULL; c = c->next)
    if (!c->joined)
      mm_cancel(c->coro);
}

/* Whether h is one of g's children (or a call run for one).  mu held. */
static bool is_child(const mm_group_t *g, const mm_coro_t *h) {
  if (h == NULL)
    return false;
  for (const child_t *c = g->first; c != NULL; c = c->next)
    if (c->coro == h)
      return true;
  return false;
}

static int child_main(void *arg) {
  child_t *c = arg;
  int status = c->fn(c->arg);
  mm_group_t *g = c->group;
  pthread_mutex_lock(&g->mu);
  if (status != 0 && !g->cancelled) {
    g->failure = status;
    g->cancelled = true;
    cancel_children(g);
  }
  pthread_mutex_unlock(&g->mu);
  return status;
}

int mm_group_spawn(mm_group_t *g, mm_fn fn, void *arg) {
  return mm_group_spawn_ex(g, fn, arg, NULL);
}

int mm_group_spawn_ex(mm_group_t *g, mm_fn fn, void *arg,
                      const mm_spawn_options_t *o) {
  if (g == NULL || fn == NULL)
    return -EINVAL;
  child_t *c = malloc(sizeof(*c));
  if (c == NULL)
    return -ENOMEM;
  c->next = NULL;
  c->joined = false;
  c->group = g;
  c->fn = fn;
  c->arg = arg;
  pthread_mutex_lock(&g->mu);
  int r;
  if (g->waiting && !is_child(g, mm_current()))
    r = -EBUSY;
  else if (g->cancelled)
    r = -ECANCELED;
  else
    r = mm_spawn_ex(g->loop, child_main, c, o, &c->coro);
  if (r == 0) {
    *g->tail = c;
    g->tail = &c->next;
  }
  pthread_mutex_unlock(&g->mu);
  if (r != 0)
    free(c);
  return r;
}

int mm_group_cancel(mm_group_t *g) {
  if (g == NULL)
    return -EINVAL;
  pthread_mutex_lock(&g->mu);
  g->cancelled = true;
  cancel_children(g);
  pthread_mutex_unlock(&g->mu);
  return 0;
}

/* The wait's join: c has ended and its handle is about to go. */
static void mark_joined(void *arg) {
  child_t *c = arg;
  pthread_mutex_lock(&c->group->mu);
  c->joined = true;
  pthread_mutex_unlock(&c->group->mu);
}

int mm_group_wait(mm_group_t *g) {
  if (g == NULL)
    return -EINVAL;
  if (mm__tls.coro == NULL && mm__tls.loop != NULL)
    return -EDEADLK;      /* nothing waited for, nothing freed */
  /* A child waiting for its own group would wait for itself. */
  pthread_mutex_lock(&g->mu);
  bool own = mm__tls.coro != NULL && is_child(g, mm_current());
  bool was_waiting = g->waiting;   /* a grandchild's wait inside ours */
  if (!own)
    g->waiting = true;
  pthread_mutex_unlock(&g->mu);
  if (own)
    return -EDEADLK;
  bool waiter_cancelled = false;
  child_t *c = NULL;      /* the child joined last */
  for (;;) {
    pthread_mutex_lock(&g->mu);
    child_t *next = c == NULL ? g->first : c->next;
    pthread_mutex_unlock(&g->mu);
    if (next == NULL)
      break;
    c = next;
    if (c->joined)
      continue;             /* by an earlier wait that returned -EDEADLK */
    if (mm__join_hook(c->coro, NULL, mark_joined, c) == -EDEADLK) {
      /* The child waits, through a chain of joins, for this waiter (a
       * grandchild waiting for its own group): nothing is freed. */
      pthread_mutex_lock(&g->mu);
      g->waiting = was_waiting;
      pthread_mutex_unlock(&g->mu);
      return -EDEADLK;
    }
    if (!waiter_cancelled && mm_cancelled()) {
      /* The waiter was cancelled: so is everything it waits for. */
      waiter_cancelled = true;
      mm_group_cancel(g);
    }
  }
  while ((c = g->first) != NULL) {
    g->first = c->next;
    free(c);
  }
  int failure = g->failure;
  pthread_mutex_destroy(&g->mu);
  free(g);
  return waiter_cancelled ? -ECANCELED : failure;
}
