/* Loops: options and life cycle -- new, from_uv, run, start, stop, free,
 * and the free of a loop inherited across fork.  Not here: the remote
 * queue through which other threads reach a loop (remote.c) and the
 * drive loop with its libuv callbacks and polling (drive.c).
 *
 * Locks: loop->mu protects driven, background and the state transitions;
 * see mm-internal.h for the order.
 */
#include "mm-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_STACK_SIZE (256 * 1024)
#define MAX_STACK_SIZE ((size_t) 1 << 30)

/* Gives every field left 0 ("default") its default value. */
static void fill_defaults(mm_loop_options_t *o) {
  if (o->stack_size == 0)
    o->stack_size = DEFAULT_STACK_SIZE;
  if (o->pool_max_threads == 0)
    o->pool_max_threads = 64;
  if (o->pool_idle_ms == 0)
    o->pool_idle_ms = 10000;
  const char *dbg = getenv("MIXMODE_DEBUG");
  if (o->slow_step_ms == 0 && dbg != NULL && strcmp(dbg, "1") == 0)
    o->slow_step_ms = 100;
}

void mm_loop_options_init(mm_loop_options_t *o) {
  if (o == NULL)
    return;
  memset(o, 0, sizeof(*o));
  fill_defaults(o);
}

/* Whether this thread may touch the loop's internals directly.  An owned
 * loop: this thread is inside drive() (or holds mu while nobody drives).
 * A borrowed loop: this is the thread that runs the user's uv_run. */
bool mm__on_loop_thread(const mm_loop_t *loop) {
  if (loop->borrowed)
    return pthread_equal(loop->owner, pthread_self());
  return mm__tls.loop == loop;
}

static bool stopping(const mm_loop_t *loop) {
  return atomic_load_explicit(&loop->state, memory_order_relaxed) !=
         MM__LOOP_OPEN;
}

/* ---- handles ------------------------------------------------------------ */


int mm__loop_check(const mm_loop_t *loop) {
  if (loop == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  return stopping(loop) ? -ESHUTDOWN : 0;
}

bool mm__loop_stopping(const mm_loop_t *loop) {
  return stopping(loop);
}

void *mm__loop_set_bridge(mm_loop_t *loop, void *bridge,
                          const mm__bridge_ops_t *ops) {
  pthread_mutex_lock(&loop->mu);
  void *cur = atomic_load_explicit(&loop->bridge, memory_order_relaxed);
  /* None is made once the loop stops: mm_loop_free reads the slot after
   * it has set STOPPING under mu, so a later one would never be freed. */
  if (cur == NULL && !stopping(loop)) {
    loop->bridge_ops = ops;
    /* Release: the bridge's fields are visible to whoever loads it with
     * acquire (the bridge layer's fast path). */
    atomic_store_explicit(&loop->bridge, bridge, memory_order_release);
    cur = bridge;
  }
  pthread_mutex_unlock(&loop->mu);
  return cur;
}

static void set_driven(mm_loop_t *loop, bool on) {
  /* Under mu.  Release pairs with the acquire load in mm__loop_post. */
  atomic_store_explicit(&loop->driven, on, memory_order_release);
  if (!on)
    pthread_cond_broadcast(&loop->cv);
}

static int loop_init(mm_loop_t *loop, const mm_loop_options_t *o) {
  if (o != NULL) {
    loop->opt = *o;
    fill_defaults(&loop->opt);
  } else {
    mm_loop_options_init(&loop->opt);
  }
  if (loop->opt.stack_size > MAX_STACK_SIZE ||
      loop->opt.pool_min_threads > loop->opt.pool_max_threads)
    return -EINVAL;
  if (loop->opt.slow_step_ms != 0) {
    int r = mm__watchdog_start(loop);
    if (r != 0)
      return r;
  }

  mm__guard_install();
  mm__fork_init();
  loop->fork_gen = mm__fork_generation();
  mm__list_init(&loop->ready);
  mm__list_init(&loop->live);
  mm__list_init(&loop->zombies);
  mm__list_init(&loop->cache);
  mm__timer_init(&loop->cache_timer, mm__coro_cache_on_timer);
  mm__list_init(&loop->spare);
  mm__list_init(&loop->fd_polls_all);
  mm__list_init(&loop->fd_sets);
  atomic_init(&loop->remote_head, NULL);
  atomic_init(&loop->tasks, NULL);
  atomic_init(&loop->pending, 0);
  atomic_init(&loop->posting, 0);
  atomic_init(&loop->state, MM__LOOP_OPEN);
  atomic_init(&loop->driven, false);

  int r = mm__loop_handles_init(loop);
  if (r != 0) {
    mm__watchdog_stop(loop);
    return r;
  }
  /* Until the loop first runs, every post wakes it. */
  atomic_init(&loop->asleep, 1);
  mm__timers_init(loop);
  pthread_mutex_init(&loop->mu, NULL);
  pthread_cond_init(&loop->cv, NULL);
  return 0;
}

int mm_loop_new(mm_loop_t **out, const mm_loop_options_t *o) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  mm_loop_t *loop = mm__aligned_zalloc(sizeof(*loop));
  if (loop == NULL)
    return -ENOMEM;
  int r = uv_loop_init(&loop->own_uv);
  if (r != 0)
    goto err_free;
  loop->uv = &loop->own_uv;
  r = loop_init(loop, o);
  if (r != 0)
    goto err_uv;
  *out = loop;
  return 0;

err_uv:
  /* loop_init fails before adding a handle or after adding all; in the
   * latter case it does not fail.  Only the uv loop remains. */
  uv_loop_close(&loop->own_uv);
err_free:
  free(loop);
  return r;
}

int mm_loop_from_uv(mm_loop_t **out, uv_loop_t *uv,
                    const mm_loop_options_t *o) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  if (uv == NULL)
    return -EINVAL;
  mm_loop_t *loop = mm__aligned_zalloc(sizeof(*loop));
  if (loop == NULL)
    return -ENOMEM;
  loop->uv = uv;
  loop->borrowed = true;
  int r = loop_init(loop, o);
  if (r != 0) {
    free(loop);
    return r;
  }
  /* The user's uv_run drives a borrowed loop; we cannot see it start or
   * end, so other threads always post to it.  This thread is taken to be
   * the one that runs uv. */
  atomic_store_explicit(&loop->driven, true, memory_order_relaxed);
  loop->owner = pthread_self();
  *out = loop;
  return 0;
}

uv_loop_t *mm_loop_uv(mm_loop_t *loop) {
  return loop != NULL ? loop->uv : NULL;
}

int mm_loop_run(mm_loop_t *loop) {
  if (loop == NULL || loop->borrowed)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  if (mm__tls.coro != NULL)
    return -EDEADLK;
  if (mm__tls.loop == loop)
    return -EBUSY;
  if (mm__tls.loop != NULL)
    return -EDEADLK;

  pthread_mutex_lock(&loop->mu);
  if (stopping(loop)) {
    pthread_mutex_unlock(&loop->mu);
    return -ESHUTDOWN;
  }
  if (atomic_load_explicit(&loop->driven, memory_order_relaxed) ||
      loop->background) {
    pthread_mutex_unlock(&loop->mu);
    return -EBUSY;
  }
  set_driven(loop, true);
  pthread_mutex_unlock(&loop->mu);

  mm__loop_drive(loop);

  pthread_mutex_lock(&loop->mu);
  set_driven(loop, false);
  pthread_mutex_unlock(&loop->mu);
  return 0;
}

static void *background_main(void *arg) {
  mm_loop_t *loop = arg;
  mm__thread_name("mm-loop");
  mm__loop_drive(loop);
  pthread_mutex_lock(&loop->mu);
  set_driven(loop, false);
  pthread_mutex_unlock(&loop->mu);
  return NULL;
}

int mm_loop_start(mm_loop_t *loop) {
  if (loop == NULL || loop->borrowed)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  pthread_mutex_lock(&loop->mu);
  int r = 0;
  if (stopping(loop))
    r = -ESHUTDOWN;
  else if (atomic_load_explicit(&loop->driven, memory_order_relaxed) ||
           loop->background)
    r = -EBUSY;
  if (r == 0) {
    loop->background = true;
    set_driven(loop, true);
    if (pthread_create(&loop->bg_thread, NULL, background_main, loop) != 0) {
      loop->background = false;
      set_driven(loop, false);
      r = -EAGAIN;
    }
  }
  pthread_mutex_unlock(&loop->mu);
  return r;
}

int mm_loop_stop(mm_loop_t *loop) {
  if (loop == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  pthread_mutex_lock(&loop->mu);
  atomic_store_explicit(&loop->state, MM__LOOP_STOPPING, memory_order_seq_cst);
  pthread_mutex_unlock(&loop->mu);
  if (mm__on_loop_thread(loop)) {
    mm__loop_process_stop(loop);
    mm__loop_update_refs(loop);
  } else {
    /* The driver, if any, carries out the stop in on_bell; nobody: here,
     * at once (serve_undriven answers every waiting caller). */
    mm__loop_ring(loop);
    mm__loop_kick(loop);
  }
  return 0;
}

static void on_closed(uv_handle_t *h) {
  mm_loop_t *loop = h->data;
  loop->handles_closed++;
}

/* Closes h unless it is closing or closed already: a borrowed loop shut
 * down the libuv way (uv_walk, uv_close of every handle) before
 * mm_loop_free.  Its close callback was then the user's, not on_closed.
 * Returns how many on_closed calls to wait for. */
static unsigned close_ours(uv_handle_t *h) {
  if (uv_is_closing(h))
    return 0;
  uv_close(h, on_closed);
  return 1;
}

/* Reports and frees the handles nobody joined. */
static void reap_zombies(mm_loop_t *loop) {
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->zombies) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    mm__log(MM_LOG_WARN, "mm_loop_free: coroutine %" PRIu64 " '%s' ended "
            "with status %d (%s) but was never joined or detached",
            c->id, c->name != NULL ? c->name : "", c->status,
            mm_strerror(c->status));
    mm__list_remove(&c->all);
    free(c->name);
    mm__coro_unmap(c);
  }
}

/* A warning per coroutine still alive when mm_loop_free is called: name,
 * state and age as mm_loop_dump gives them.  The live list belongs to the
 * loop's thread: walked there, or here with the loop undriven under mu. */
static void report_live_here(mm_loop_t *loop, void *arg) {
  (void) arg;
  /* Births are the loop's time (sched.c, admit): ages count on it. */
  uv_update_time(loop->uv);
  uint64_t now = uv_now(loop->uv);
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    mm__log(MM_LOG_WARN, "mm_loop_free: coroutine %" PRIu64 " '%s' is "
            "still alive (%s%s, age %" PRIu64 " ms); cancelling it", c->id,
            c->name != NULL ? c->name : "", mm__coro_state_name(c->state),
            mm__coro_cancel_reason(c) != 0 ? ", cancelled" : "",
            now - c->born);
  }
}

/* Closes the loop's handles and runs uv until they are closed. */
static void close_handles(mm_loop_t *loop) {
  unsigned closing = close_ours((uv_handle_t *) &loop->bell) +
                     close_ours((uv_handle_t *) &loop->idle) +
                     close_ours((uv_handle_t *) &loop->prepare) +
                     close_ours((uv_handle_t *) &loop->check);
  loop->uvtimer.data = loop;
  closing += mm__timers_close(loop, on_closed);
  closing += mm__fd_polls_close(loop, on_closed);
  /* At least one pass: it also ends the closes the user started and did
   * not run uv for, before the handles' memory goes with the loop. */
  do
    uv_run(loop->uv, UV_RUN_NOWAIT);
  while (loop->handles_closed < closing);
  mm__loop_bell_close(loop);
}

static void close_uv(mm_loop_t *loop) {
  if (loop->borrowed)
    return;
  int r = uv_loop_close(&loop->own_uv);
  if (r != 0)
    mm__log(MM_LOG_WARN, "mm_loop_free: the uv loop still has handles "
            "of the user's open (%s); they are leaked", uv_strerror(r));
}

/* ---- a loop inherited across fork ---------------------------------------- */

bool mm__loop_inherited(const mm_loop_t *loop) {
  return loop->fork_gen != mm__fork_generation();
}

/* Unmaps c's block; c never runs again. */
static void forget_coro(mm_coro_t *c) {
  mm__locals_free(&c->locals);
  if (c->caller != NULL)
    mm__waiter_unref(c->caller);
  free(c->name);
  mm__coro_unmap(c);
}

/* mm_loop_free in a forked child, of a loop its parent made.  The loop's
 * threads, and the locks they held, stayed with the parent: nothing is
 * stopped, driven or joined, and no coroutine runs here (they are the
 * parent's, and must not run twice).  An owned uv loop first gets its own
 * kernel state (uv_loop_fork: until then its epoll set is the parent's),
 * so that closing the handles leaves the parent's loop alone.  A borrowed
 * uv loop is the user's: libuv wants uv_loop_fork called on it before any
 * use in the child, which is theirs to do before this free.  The bridge
 * layer's state is forgotten the same way (its pools' threads are the
 * parent's: freeing it would join them). */
static int free_inherited(mm_loop_t *loop) {
  if (!loop->borrowed) {
    int r = uv_loop_fork(loop->uv);
    if (r != 0)
      return r;
  }
  close_handles(loop);
  /* First the remote queue, whose links run through blocks of the lists
   * below: spawns not admitted yet are on no list. */
  mm__mpsc_node_t *q = mm__mpsc_take(&loop->remote_head);
  while (q != NULL) {
    mm_coro_t *c = container_of(q, mm_coro_t, remote);
    q = q->next;
    if (atomic_load_explicit(&c->remote_bits, memory_order_relaxed) &
        MM__REMOTE_SPAWN)
      forget_coro(c);
  }
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live)
    forget_coro(container_of(n, mm_coro_t, all));
  mm__list_foreach_safe(n, tmp, &loop->zombies)
    forget_coro(container_of(n, mm_coro_t, all));
  void *bridge = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (bridge != NULL)
    loop->bridge_ops->forget(bridge);
  mm__cache_free(loop);
  mm__timers_free(loop);
  mm__fd_polls_free(loop);
  close_uv(loop);
  mm__watchdog_stop(loop);    /* its thread is the parent's: not joined */
  /* mu and cv are not destroyed: a thread left behind may hold mu. */
  free(loop);
  return 0;
}

/* Before mm_loop_free stops the loop, while the coroutines are as the
 * program left them: a driver on another thread (mm_loop_start's, or a
 * mm_loop_run) cancels them and waits for their end as soon as it sees
 * the stop.  A loop already stopping by then (mm_loop_stop) is being
 * emptied by its driver: nothing to report from here. */
static void report_live(mm_loop_t *loop) {
  mm__loop_call(loop, report_live_here);
}

int mm_loop_free(mm_loop_t *loop) {
  if (loop == NULL)
    return -EINVAL;
  /* A thread the loop would wait for: one of its workers, lanes or its
   * sensitive thread, or any thread running a call for one of its
   * coroutines (a caller thread serving it). */
  if (mm__tls.serves == loop ||
      (mm__tls.proxy != NULL && mm__tls.proxy->loop == loop))
    return -EDEADLK;
  if (mm__tls.coro != NULL && mm__tls.coro->loop == loop)
    return -EBUSY;
  if (mm__tls.loop == loop && !loop->borrowed)
    return -EBUSY;
  if (mm__loop_inherited(loop))
    return free_inherited(loop);
  if (loop->borrowed && !mm__on_loop_thread(loop))
    return -EBUSY;

  report_live(loop);
  pthread_mutex_lock(&loop->mu);
  atomic_store_explicit(&loop->state, MM__LOOP_STOPPING, memory_order_seq_cst);
  bool bg = loop->background;
  pthread_mutex_unlock(&loop->mu);

  if (bg) {
    mm__loop_ring(loop);
    pthread_join(loop->bg_thread, NULL);
    pthread_mutex_lock(&loop->mu);
    loop->background = false;
    set_driven(loop, true);
    pthread_mutex_unlock(&loop->mu);
  } else if (!loop->borrowed) {
    /* Wait for a mm_loop_run on another thread to see the stop and end. */
    mm__loop_ring(loop);
    pthread_mutex_lock(&loop->mu);
    while (atomic_load_explicit(&loop->driven, memory_order_relaxed))
      pthread_cond_wait(&loop->cv, &loop->mu);
    set_driven(loop, true);
    pthread_mutex_unlock(&loop->mu);
  }

  /* Finish what is left on this thread: cancelled coroutines run to their
   * end, owed releases arrive. */
  mm__loop_drive(loop);

  /* Posters still inside push_remote or mm__loop_submit touch
   * the loop's bell.  From CLOSING on, a submitter that finds the loop
   * stopping does not poke it; one that counted itself in posting before
   * (seq_cst, Dekker-style with this store) is waited for here. */
  atomic_store_explicit(&loop->state, MM__LOOP_CLOSING, memory_order_seq_cst);
  for (unsigned round = 0;
       atomic_load_explicit(&loop->posting, memory_order_seq_cst) != 0;)
    mm__backoff(&round);
  mm__tls.loop = loop;
  mm__loop_drain(loop);
  reap_zombies(loop);
  void *bridge = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (bridge != NULL)
    loop->bridge_ops->free(loop, bridge);

  close_handles(loop);
  mm__tls.loop = NULL;

  /* The watchdog reads the loop's step fields: joined before it goes. */
  mm__watchdog_stop(loop);
  mm__cache_free(loop);
  mm__timers_free(loop);
  mm__fd_polls_free(loop);
  close_uv(loop);
  pthread_mutex_destroy(&loop->mu);
  pthread_cond_destroy(&loop->cv);
  free(loop);
  return 0;
}
