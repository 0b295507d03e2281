/* mm_await / mm_wake: a coroutine parks until someone -- a raw libuv
 * callback, another thread, another coroutine -- hands it a status.  The
 * primitive under wrappers of callback APIs (uv_fs_*, uv_getaddrinfo,
 * curl multi, hiredis): start the operation with a callback that calls
 * mm_wake(coro, status), then mm_await.
 *
 * The slot.  Each coroutine has one slot for a wake (await_slot,
 * await_value), apart from the wake of its ordinary waits
 * (MM__REMOTE_WAKE and remote_status): a wake meant for the next await
 * must never complete a sleep or a channel wait the coroutine is in now
 * (tests/model/await.pml -DSHARED_SLOT shows how).  mm_wake moves it
 *
 *   EMPTY --CAS--> BUSY --(value written)--> FULL (release)
 *
 * (a second waker finds it taken: -EBUSY) and tells the loop with a
 * remote AWAKE bit of its own, or, on the loop's thread, looks at once.
 * The loop (mm__await_check) takes a FULL slot (acquire; then EMPTY) only
 * for a coroutine parked in mm_await, and completes that wait; otherwise
 * the slot stays full and the next mm_await takes it without parking.  A
 * slot still full when the coroutine ends is dropped; a block reused by
 * a later spawn starts EMPTY (coro.c).  The waker holds the handle's pin
 * (handle.c) across its steps, so the block is not reused under it.
 *
 * Ending.  Only the wake ends an await: a cancel, a deadline or a stop
 * runs on_cancel(arg) once, on the loop thread, and claims nothing
 * (wait.c, rule 3); the cancellation stays pending for the next wait.
 * on_cancel is how the operation is told to stop (uv_cancel, uv_close,
 * curl_multi_remove_handle), after which its callback must still call
 * mm_wake: an await whose waker never comes keeps its coroutine -- and a
 * stop or mm_loop_free waiting for it -- waiting (await.pml -DNO_WAKE).
 */
#include "mm-internal.h"

#include <errno.h>

typedef struct await_wait {
  mm__wait_t w;
  void (*on_cancel)(void *arg);
  void *arg;
} await_wait_t;

/* Takes a full slot's value; false if it is not full.  The coroutine's
 * loop thread only (the one taker). */
static bool slot_take(mm_coro_t *c, int *value) {
  if (atomic_load_explicit(&c->await_slot, memory_order_acquire) !=
      MM__SLOT_FULL)
    return false;
  *value = c->await_value;
  /* The next waker may write the value again only after this. */
  atomic_store_explicit(&c->await_slot, MM__SLOT_EMPTY,
                        memory_order_release);
  return true;
}

void mm__await_check(mm_coro_t *c) {
  int value;
  if (c->state != MM__CORO_PARKED || !c->awaiting)
    return;                   /* kept for the next await, or dropped */
  if (slot_take(c, &value))
    mm__wait_complete(c->wait, value);
}

/* A cancel, a deadline or a stop while parked: asks the operation to stop
 * and lets the wait go on (rule 3: no claim). */
static void await_cancel(mm__wait_t *w, int reason) {
  await_wait_t *aw = container_of(w, await_wait_t, w);
  (void) reason;
  if (aw->on_cancel != NULL)
    aw->on_cancel(aw->arg);
}

int mm_await(void (*on_cancel)(void *arg), void *arg) {
  mm_coro_t *c = mm__tls.coro;
  if (c == NULL)
    return mm__tls.loop != NULL ? -EDEADLK : -EPERM;
  int value;
  if (slot_take(c, &value))
    return value;             /* the wake came first */
  await_wait_t aw;
  mm__wait_init(&aw.w);       /* a coroutine's: cannot fail */
  aw.w.cancel = await_cancel;
  aw.on_cancel = on_cancel;
  aw.arg = arg;
  /* A waker on another thread that fills the slot from here on posts
   * AWAKE, which the loop drains only once we are parked (this thread is
   * the loop's); one that filled it between the look above and here did
   * too.  A pending cancellation runs on_cancel at once (mm__park). */
  c->awaiting = true;
  int r = mm__wait_block(&aw.w);
  c->awaiting = false;
  return r;
}

int mm_wake(mm_coro_t *h, int status) {
  mm_coro_t *c = mm__handle_pin(h);
  if (c == NULL)
    return -EINVAL;
  if (mm__loop_inherited(c->loop)) {
    mm__handle_unpin(c);
    return -ECHILD;
  }
  int empty = MM__SLOT_EMPTY;
  if (!atomic_compare_exchange_strong_explicit(&c->await_slot, &empty,
                                               MM__SLOT_BUSY,
                                               memory_order_acquire,
                                               memory_order_relaxed)) {
    mm__handle_unpin(c);
    return -EBUSY;            /* a wake is pending already */
  }
  c->await_value = status;
  atomic_store_explicit(&c->await_slot, MM__SLOT_FULL,
                        memory_order_release);
  if (mm__on_loop_thread(c->loop)) {
    /* A raw callback or another coroutine of the loop: look now. */
    mm__handle_unpin(c);
    mm__await_check(c);
    return 0;
  }
  /* Pushed while pinned (the block cannot be reused before the bit is
   * in); the loop is poked once the pin is gone. */
  mm_loop_t *loop = mm__loop_push(c, MM__REMOTE_AWAKE);
  mm__handle_unpin(c);
  mm__loop_poke(loop);
  return 0;
}
