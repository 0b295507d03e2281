/* Coroutine handles: spawn, join, detach, cancel.
 *
 * The handle's life is the atomic word c->join (states in mm-internal.h):
 *
 *   NONE --CAS by mm_join----> &wait --exchange at the end--> ENDED
 *   NONE --CAS by mm_detach--> DETACHED --exchange at the end: freed
 *   NONE --exchange at the end--> ENDED --CAS by join/detach--> FREED
 *
 * The end of the coroutine (sched.c, finish) writes c->status and then
 * exchanges ENDED in with acq_rel; a joiner that finds ENDED read it with
 * acquire, so status is visible to it.  The first CAS on a state wins; a
 * loser learns that the handle was already claimed (-EINVAL).  The
 * coroutine's block is given back on its loop's thread (mm__loop_post with
 * MM__REMOTE_RELEASE), never by a joiner on another thread.
 *
 * The handles users hold are not block addresses but handle.c's values
 * with a generation: every public call here pins the handle's block for
 * the few atomic steps that check and claim the join word, and the
 * generation moves on (mm__handle_retire) at the transition to FREED, so
 * that a handle used after it was given back is refused (-EINVAL).
 *
 * Colour-blindness comes from mm__wait_t: a join parks a coroutine or
 * blocks a thread, and the end wakes either the same way.
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void mm_spawn_options_init(mm_spawn_options_t *o) {
  if (o != NULL)
    memset(o, 0, sizeof(*o));
}

/* The caller thread a spawn made here inherits: the running coroutine's,
 * or the one of the coroutine a blocking call runs for. */
static mm__waiter_t *caller_here(void) {
  if (mm__tls.coro != NULL)
    return mm__tls.coro->caller;
  return mm__tls.proxy != NULL ? mm__tls.proxy->caller : NULL;
}

/* w: spawned for that wait (mm__spawn_for), no handle; else out. */
static int spawn(mm_loop_t *loop, mm_fn fn, void *arg,
                 const mm_spawn_options_t *o, mm_coro_t **out,
                 mm__wait_t *w, const mm__locals_t *locals,
                 mm__waiter_t *caller) {
  mm_spawn_options_t opt;

  if (out != NULL)
    *out = NULL;
  if (loop == NULL || fn == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  if (o != NULL)
    opt = *o;
  else
    mm_spawn_options_init(&opt);
  if (opt.stack_size > ((size_t) 1 << 30))
    return -EINVAL;

  /* Where the new coroutine is admitted: here if this thread drives the
   * loop or nobody does (then holding mu throughout), else by the driver
   * through the remote queue. */
  bool local = mm__on_loop_thread(loop);
  bool locked = false;
  mm_coro_t *c = NULL;
  if (!local) {
    pthread_mutex_lock(&loop->mu);
    locked = true;
    if (atomic_load_explicit(&loop->state, memory_order_relaxed) !=
        MM__LOOP_OPEN) {
      pthread_mutex_unlock(&loop->mu);
      return -ESHUTDOWN;
    }
    if (!atomic_load_explicit(&loop->driven, memory_order_relaxed)) {
      local = true;
    } else {
      /* Counted before mu is released so that a free cannot finish
       * before the spawn lands; see run_done() in drive.c. */
      atomic_fetch_add_explicit(&loop->pending, 1, memory_order_relaxed);
      c = mm__coro_spare_take(loop, opt.stack_size);   /* no mmap */
      pthread_mutex_unlock(&loop->mu);
      locked = false;
    }
  } else if (atomic_load_explicit(&loop->state, memory_order_relaxed) !=
             MM__LOOP_OPEN) {
    return -ESHUTDOWN;
  }

  int r = -ENOMEM;
  if (c == NULL)
    c = mm__coro_alloc(loop, opt.stack_size, local);
  if (c == NULL)
    goto err_undo;
  c->loop = loop;
  c->fn = fn;
  c->arg = arg;
  c->timeout_ms = opt.timeout_ms;
  if (opt.name != NULL && (c->name = strdup(opt.name)) == NULL)
    goto err_block;
  if (mm__locals_copy(&c->locals,
                      locals != NULL ? locals : mm__locals_here()) != 0)
    goto err_name;
  /* The caller thread is inherited from the spawning coroutine (or the
   * one a worker runs a call for), or given by mm_run_async. */
  if (caller == NULL)
    caller = caller_here();
  c->caller = caller;
  if (caller != NULL)
    mm__waiter_ref(caller);
  atomic_init(&c->cancel_reason, 0);
  atomic_init(&c->await_slot, MM__SLOT_EMPTY);
  memset(&c->deadlines, 0, sizeof(c->deadlines));   /* not inherited */
  c->awaiting = false;
  atomic_init(&c->remote_bits, 0);
  atomic_init(&c->joining, NULL);
  if (w != NULL) {
    atomic_init(&c->join, (uintptr_t) w);
    c->auto_release = true;
  } else {
    atomic_init(&c->join, out != NULL ? MM__JOIN_NONE : MM__JOIN_DETACHED);
  }
  atomic_fetch_add_explicit(&loop->coros_spawned, 1, memory_order_relaxed);
  c->handle = mm__handle_make(c);

  if (out != NULL)
    *out = c->handle;
  if (locked && local) {
    /* Nobody drives the loop: act as its driver while holding mu. */
    mm_loop_t *saved = mm__tls.loop;
    mm__tls.loop = loop;
    /* The loop's time has stood still since it was last run, and admit
     * takes the birth time from it. */
    uv_update_time(loop->uv);
    mm__coro_admit(c);
    mm__tls.loop = saved;
    pthread_mutex_unlock(&loop->mu);
  } else if (local) {
    mm__coro_admit(c);
  } else {
    mm__loop_post_spawn(c);
  }
  return 0;

err_name:
  free(c->name);
err_block:
  if (local)
    mm__coro_cache_put(loop, c);
  else
    mm__coro_unmap(c);
err_undo:
  if (locked)
    pthread_mutex_unlock(&loop->mu);
  if (!local) {
    /* pending was counted for a spawn that will not come: undo, and poke
     * the driver in case it waits for pending to drop. */
    atomic_fetch_sub_explicit(&loop->pending, 1, memory_order_relaxed);
    mm__loop_ring(loop);
  }
  return r;
}

int mm_spawn_ex(mm_loop_t *loop, mm_fn fn, void *arg,
                const mm_spawn_options_t *o, mm_coro_t **out) {
  return spawn(loop, fn, arg, o, out, NULL, NULL, NULL);
}

int mm__spawn_for(mm_loop_t *loop, mm_fn fn, void *arg,
                  const mm_spawn_options_t *o, mm__wait_t *w,
                  const mm__locals_t *locals, mm__waiter_t *caller) {
  mm__assert(mm__on_loop_thread(loop));
  return spawn(loop, fn, arg, o, NULL, w, locals, caller);
}

int mm_spawn(mm_loop_t *loop, mm_fn fn, void *arg, mm_coro_t **coro) {
  return mm_spawn_ex(loop, fn, arg, NULL, coro);
}

/* A join that is itself cancelled cancels the joined coroutine and keeps
 * waiting for it. */
typedef struct join_wait {
  mm__wait_t w;
  mm_coro_t *target;        /* the block: the joiner owns its handle */
  int reason;               /* the joiner's cancellation, once seen */
  bool left;                /* given up at a deadline: handle kept */
} join_wait_t;

/* Records reason as c's cancellation and interrupts its wait.  c's block
 * stays valid throughout: the caller owns its handle or has it pinned. */
static void cancel_block(mm_coro_t *c, int reason) {
  /* The interrupt is ordered by the remote queue (or happens right here
   * on the loop's thread). */
  if (mm__set_reason(&c->cancel_reason, reason))
    mm__loop_post(c, MM__REMOTE_CANCEL);
}

/* A deadline (mm_deadline_push) of the joiner: the join gives up and
 * leaves the child and the handle as they are, as -EDEADLK does.  The
 * wait is taken back from the child's join word first (CAS wait ->
 * NONE): won, the child's end will never see it, and the ending is ours;
 * lost, the child has ended and its delivery is on its way (the join
 * then returns the child's status after all).  Loop thread of the joiner;
 * the block stays valid: the joiner owns its handle. */
static void join_leave(join_wait_t *jw) {
  uintptr_t mine = (uintptr_t) &jw->w;
  if (!atomic_compare_exchange_strong_explicit(&jw->target->join, &mine,
                                               MM__JOIN_NONE,
                                               memory_order_acq_rel,
                                               memory_order_acquire))
    return;
  jw->left = true;
  mm__wait_cancel(&jw->w, -ETIMEDOUT);
}

/* A plain thread's join at its deadline (mm__wait_block_deadline): takes
 * its wait back from the child's join word, as join_leave does -- unless
 * the child's end has it already. */
static bool join_take_back(mm__wait_t *w) {
  join_wait_t *jw = container_of(w, join_wait_t, w);
  uintptr_t mine = (uintptr_t) w;
  if (!atomic_compare_exchange_strong_explicit(&jw->target->join, &mine,
                                               MM__JOIN_NONE,
                                               memory_order_acq_rel,
                                               memory_order_acquire))
    return false;
  jw->left = true;            /* nobody can reach the wait any more */
  return true;
}

static void join_cancel(mm__wait_t *w, int reason) {
  join_wait_t *jw = container_of(w, join_wait_t, w);
  if (w->by_deadline) {
    join_leave(jw);
    return;
  }
  jw->reason = reason;
  cancel_block(jw->target, ECANCELED);
}

/* The handle is ours and the coroutine has ended: give the block back.
 * Until the release is posted the loop cannot be freed (it waits for
 * owed releases), so this is the last moment its state may be read. */
static void give_back(mm_coro_t *c, bool *loop_stopping) {
  if (loop_stopping != NULL)
    *loop_stopping = mm__loop_stopping(c->loop);
  mm__handle_retire(c);
  mm__loop_post(c, MM__REMOTE_RELEASE);
}

/* Join cycles.  A coroutine that joins publishes whom it joins (joining,
 * seq_cst) before it looks down the chain of joins from there: if the
 * chain comes back to it, the join would wait for itself and returns
 * -EDEADLK instead (the handle untouched).  Two joins that close a cycle
 * at the same moment each store, then load the other's: with seq_cst at
 * least one of them sees the other, so they cannot both wait (both may
 * refuse).  The chain is followed through pins, so an ending coroutine's
 * block is never read after its reuse.  A blocking call run for a
 * coroutine (a worker) looks for that coroutine in the chain, unless the
 * call may be abandoned: then the coroutine need not wait for it. */
#define JOIN_CHAIN_MAX 4096

static bool joins_back(mm_coro_t *h, const mm_coro_t *self) {
  for (int i = 0; i < JOIN_CHAIN_MAX && h != NULL; i++) {
    if (h == self)
      return true;
    mm_coro_t *c = mm__handle_pin(h);
    if (c == NULL)
      return false;
    h = atomic_load_explicit(&c->joining, memory_order_seq_cst);
    mm__handle_unpin(c);
  }
  return false;
}

int mm_join(mm_coro_t *c) {
  return mm__join(c, NULL);
}

int mm__join(mm_coro_t *c, bool *loop_stopping) {
  return mm__join_hook(c, loop_stopping, NULL, NULL);
}

static int join_handle(mm_coro_t *h, mm_coro_t *self, bool *loop_stopping,
                        void (*before_release)(void *arg), void *arg);

/* Lets go of a block from get(). */
static inline void put(mm_coro_t *c, bool pinned) {
  if (pinned)
    mm__handle_unpin(c);
}

/* The block of handle h for a call on it (mm__handle_get), or NULL and
 * *err: -EINVAL (stale: joined, detached and ended, or freed), -ECHILD
 * (its loop was inherited across fork). */
static mm_coro_t *get(const mm_coro_t *h, bool *pinned, int *err) {
  mm_coro_t *c = mm__handle_get(h, pinned);
  if (c == NULL) {
    *err = -EINVAL;
    return NULL;
  }
  if (mm__loop_inherited(c->loop)) {
    put(c, *pinned);
    *err = -ECHILD;
    return NULL;
  }
  return c;
}

int mm__join_hook(mm_coro_t *h, bool *loop_stopping,
                  void (*before_release)(void *arg), void *arg) {
  if (h == NULL)
    return -EINVAL;
  /* A join of its own handle is a cycle join_handle finds (-EDEADLK),
   * after a detached handle is refused (-EINVAL), as for any handle. */
  mm_coro_t *self = mm__tls.coro;
  int r = join_handle(h, self, loop_stopping, before_release, arg);
  if (self != NULL)
    atomic_store_explicit(&self->joining, NULL, memory_order_relaxed);
  return r;
}

/* Whether a join of c (pinned, handle h) by the calling coroutine, or by
 * a call its coroutine waits for, would wait for itself.  Publishes the
 * join first (see above); the caller clears it. */
static bool join_cycle(mm_coro_t *h, const mm_coro_t *c, mm_coro_t *self) {
  const mm__proxy_t *p = mm__tls.proxy;
  const mm_coro_t *me = self != NULL ? self->handle
                        : p != NULL && p->waited ? p->handle : NULL;
  if (me == NULL)
    return false;
  if (self != NULL)
    atomic_store_explicit(&self->joining, h, memory_order_seq_cst);
  return h == me ||
         joins_back(atomic_load_explicit(&c->joining, memory_order_seq_cst),
                    me);
}

static int join_handle(mm_coro_t *h, mm_coro_t *self, bool *loop_stopping,
                        void (*before_release)(void *arg), void *arg) {
  join_wait_t jw;
  int r = mm__wait_init(&jw.w);
  if (r == -ENOMEM) {
    /* No waiter for this thread: the join cannot wait, and the handle
     * goes all the same (only -EDEADLK leaves it). */
    mm_detach(h);
    return r;
  }
  if (r != 0)
    return r;
  jw.reason = 0;
  jw.left = false;
  jw.w.cancel = join_cancel;

  bool pinned;
  int err;
  mm_coro_t *c = get(h, &pinned, &err);
  if (c == NULL)
    return err;
  if (atomic_load_explicit(&c->join, memory_order_relaxed) ==
      MM__JOIN_DETACHED) {
    put(c, pinned);
    return -EINVAL;   /* refused as detached, cycle or not */
  }
  if (join_cycle(h, c, self)) {
    put(c, pinned);
    return -EDEADLK;  /* the handle untouched */
  }
  jw.target = c;
  uintptr_t expected = MM__JOIN_NONE;
  if (!atomic_compare_exchange_strong_explicit(&c->join, &expected,
                                               (uintptr_t) &jw.w,
                                               memory_order_acq_rel,
                                               memory_order_acquire)) {
    if (expected == MM__JOIN_ENDED &&
        atomic_compare_exchange_strong_explicit(
            &c->join, &expected, MM__JOIN_FREED, memory_order_acquire,
            memory_order_relaxed)) {
      put(c, pinned);    /* the handle is ours now */
      int status = c->status;
      if (before_release != NULL)
        before_release(arg);
      give_back(c, loop_stopping);
      return status;
    }
    put(c, pinned);
    return -EINVAL;  /* detached, or another joiner */
  }
  put(c, pinned);        /* the handle is ours now */

  if (self != NULL && mm__coro_cancel_reason(self) != 0) {
    /* Already cancelled: cancel the target and wait for it regardless. */
    jw.reason = mm__coro_cancel_reason(self);
    jw.w.cancellable = false;
    cancel_block(c, ECANCELED);
  }
  int status = mm__wait_block_deadline(&jw.w, join_take_back);
  if (jw.left)
    return -ETIMEDOUT;     /* the handle is the caller's still */
  if (before_release != NULL)
    before_release(arg);
  give_back(c, loop_stopping);
  return jw.reason != 0 ? -jw.reason : status;
}

int mm_detach(mm_coro_t *h) {
  bool pinned;
  int err;
  mm_coro_t *c = get(h, &pinned, &err);
  if (c == NULL)
    return err;
  uintptr_t expected = MM__JOIN_NONE;
  bool detached = atomic_compare_exchange_strong_explicit(
      &c->join, &expected, MM__JOIN_DETACHED, memory_order_acq_rel,
      memory_order_acquire);
  bool ended = !detached && expected == MM__JOIN_ENDED &&
               atomic_compare_exchange_strong_explicit(
                   &c->join, &expected, MM__JOIN_FREED,
                   memory_order_acquire, memory_order_relaxed);
  put(c, pinned);
  if (ended)
    give_back(c, NULL);
  return detached || ended ? 0 : -EINVAL;
}

int mm_cancel(mm_coro_t *h) {
  bool pinned;
  int err;
  mm_coro_t *c = get(h, &pinned, &err);
  if (c == NULL)
    return err;
  if (!mm__set_reason(&c->cancel_reason, ECANCELED)) {
    put(c, pinned);
    return 0;
  }
  if (mm__on_loop_thread(c->loop)) {
    /* Nobody but this thread releases blocks of this loop now. */
    put(c, pinned);
    mm__coro_interrupt(c);
    return 0;
  }
  /* Queued while pinned (lock-free), so that the block cannot be reused
   * before the event is in; the loop is poked once the pin is gone. */
  mm_loop_t *loop = mm__loop_push(c, MM__REMOTE_CANCEL);
  put(c, pinned);
  mm__loop_poke(loop);
  return 0;
}

const char *mm_coro_name(const mm_coro_t *h) {
  mm_coro_t *c = mm__handle_pin(h);
  if (c == NULL)
    return NULL;
  const char *name = c->name != NULL ? c->name : "";
  mm__handle_unpin(c);
  return name;
}
