/* The one completion protocol under every wait (DESIGN.md, "One completion
 * protocol under every wait").  Every waiting call of lib/ and bridge/ --
 * join, sleep, channels, run_sync, lane calls, run_async, dump -- is a thin
 * user of what is here.  Not done here: blocking a plain thread (waiter.c)
 * and parking a coroutine (sched.c); this file decides who ends a wait.
 *
 * States.  A wait's ending is one atomic int that moves once:
 *
 *                 mm__end_claim(WOKEN)          the completer: a worker
 *       PENDING ---------------------------> WOKEN   that ran the call, a
 *          |                                         channel peer, the end
 *          |                                         of a joined coroutine
 *          |      mm__end_claim(CANCELLED)
 *          +---------------------------------> CANCELLED   a cancel, a
 *                                                    deadline, a stop
 *
 * Rules.
 * 1. Only the winner of the claim acts on the ending: it writes the status
 *    and calls mm__wait_deliver(), its last access to the wait (for a
 *    thread, the store of done, after which it touches only the thread's
 *    waiter, whose reference it holds; for a coroutine the wake makes
 *    it ready, and it cannot run -- and pop the wait -- before its loop
 *    resumes it, after the winner is done).
 * 2. The loser touches nothing more: not the wait, not what the winner may
 *    free (a channel, a request, a stack frame).  A cancel callback claims
 *    CANCELLED *before* it touches the resource it would unlink itself
 *    from; if it loses, the completion stands and the cancellation stays
 *    pending for the coroutine's next suspension.
 * 3. A cancel that does not end the wait (a running blocking call without
 *    abandon_on_cancel, an await) claims nothing: it only asks the work to
 *    stop, and the completer's claim still wins.
 * 4. Where the word lives: somewhere every party that may still claim it
 *    keeps alive until it has claimed.  By default that is the wait itself
 *    (own_end) -- safe when each would-be claimer reaches the wait under a
 *    lock that the winner also takes before delivering (a channel's mutex:
 *    a cancelled wait stays listed until its winner unlinks it, so a peer
 *    that finds it still finds live memory), or runs on the loop's thread
 *    like the waiter (a sleep's timer).  A wait whose completer reaches it
 *    without such a lock and may lose (an abandoned run_sync call's
 *    worker) points end at a word in an object that outlives the waiter:
 *    the heap request, freed by whoever is last (bridge/run-sync.c).
 *
 * Orderings.  The claim is an acq_rel CAS: the winner sees everything
 * written before the wait was published (the request, the item slot), and
 * a party that finds the word taken (acquire) sees what the winner wrote
 * before claiming.  Delivery to a coroutine of another thread goes through
 * the loop's remote queue (release push, acquire drain: remote.c); delivery
 * to a thread through a release store of done that the waiter reads with
 * acquire, then its bell (waiter.c, mm__waiter_t).
 */
#include "mm-internal.h"

#include <errno.h>
#include <time.h>

int mm__wait_init(mm__wait_t *w) {
  w->coro = mm__tls.coro;
  w->thread = NULL;
  w->cancel = NULL;
  w->cancellable = true;
  w->cancel_seen = false;
  w->by_deadline = false;
  atomic_init(&w->own_end, MM__END_PENDING);
  w->end = &w->own_end;
  atomic_init(&w->done, false);
  w->status = 0;
  if (w->coro != NULL)
    return 0;
  if (mm__tls.loop != NULL)
    return -EDEADLK;
  w->thread = mm__waiter_self();
  return w->thread != NULL ? 0 : -ENOMEM;
}

int mm__wait_block(mm__wait_t *w) {
  if (w->coro != NULL)
    return mm__park(w);
  int status;
  mm__waiter_block(w, NULL, &status);
  return status;
}

int mm__wait_block_for(mm__wait_t *w, uint64_t ms, int *status) {
  struct timespec ts;
  mm__cond_deadline(&ts, ms);
  return mm__waiter_block(w, &ts, status);
}

int mm__wait_block_deadline(mm__wait_t *w, bool (*take_back)(mm__wait_t *w)) {
  if (w->coro != NULL)
    return mm__wait_block(w);
  for (;;) {
    uint64_t ms;
    int status;
    if (!mm__deadline_ms_left(&mm__tls.deadlines, &ms))
      return mm__wait_block(w);
    if (ms == 0)
      return take_back(w) ? -ETIMEDOUT : mm__wait_block(w);
    if (mm__wait_block_for(w, ms, &status) == 0)
      return status;
  }
}

void mm__wait_deliver(mm__wait_t *w, int status) {
  mm__assert(atomic_load_explicit(w->end, memory_order_relaxed) !=
             MM__END_PENDING);
  mm_coro_t *c = w->coro;

  if (c != NULL) {
    /* The coroutine stays parked until its loop resumes it, so w is still
     * valid while we look at it here. */
    if (mm__on_loop_thread(c->loop)) {
      mm__coro_wake_local(c, status);
    } else {
      /* Pairs with the acquire exchange of remote_bits in the drain. */
      atomic_store_explicit(&c->remote_status, status, memory_order_relaxed);
      mm__loop_post(c, MM__REMOTE_WAKE);
    }
    return;
  }

  mm__waiter_t *t = w->thread;
  /* The reference keeps t alive after done is set: its thread may return
   * and exit as soon as it sees done. */
  mm__waiter_ref(t);
  w->status = status;
  /* Last access to w: the waiter returns once it sees done (acquire). */
  atomic_store_explicit(&w->done, true, memory_order_release);
  mm__waiter_ring(t);
  mm__waiter_unref(t);
}

bool mm__wait_complete(mm__wait_t *w, int status) {
  if (!mm__end_claim(w->end, MM__END_WOKEN))
    return false;
  mm__wait_deliver(w, status);
  return true;
}

bool mm__wait_cancel(mm__wait_t *w, int status) {
  mm__assert(w->coro != NULL && mm__on_loop_thread(w->coro->loop));
  if (!mm__end_claim(w->end, MM__END_CANCELLED))
    return false;
  mm__coro_wake_local(w->coro, status);
  return true;
}
