/* A spin model of mixmode's completion protocol: this file states the
 * protocol, maps the models onto the C code, and holds what they share.
 * Each model includes it; tests/model/check.sh runs them all.
 *
 * THE PROTOCOL (DESIGN.md, "One completion protocol under every wait";
 * "Cancellation, timeouts, shutdown").  Every wait -- a coroutine parked
 * or a plain thread blocked -- has one atomic word that moves once:
 * PENDING -> WOKEN (a completer won) or PENDING -> CANCELLED (a cancel, a
 * deadline or a stop won), by compare-and-swap.  Only the winner acts: it
 * writes the status and wakes the waiter, and that wake is its last access
 * to the wait.  The loser touches nothing the winner may free.  Cancel
 * callbacks run on the loop thread and CAS first; only if they won may
 * they touch the resource.  The first cancellation reason wins.
 *
 * WHAT IS CHECKED, in every model:
 *   - every wait ends exactly once (one winner; its status delivered once,
 *     and a wake only ever reaches a wait that is still parked);
 *   - no access after free: each access to a channel, a heap request, a
 *     waiter's stack frame or a call's arg asserts that it exists;
 *   - no waiter left blocked: a Watch process asserts at `timeout` (the
 *     whole system quiescent) that every call returned, and spin's
 *     invalid-end-state check holds (the only end label is the loop's
 *     idle wait for events);
 *   - cleanup exactly once for a run_sync call that returns -ECANCELED /
 *     -ETIMEDOUT / -ESHUTDOWN, never for one that returns fn's value;
 *   - with -DLIVE, `ltl ends`: every run ends with the waiters' calls
 *     returned (checked with pan -a -f).
 * and each model has broken variants that spin must reject (check.sh
 * checks the violation it reports), so that the checks are not vacuous.
 *
 * MODELS AND THE C CODE THEY STAND FOR
 * Every model: lib/wait.c (mm__end_claim, mm__wait_complete,
 * mm__wait_cancel, mm__wait_deliver), lib/sched.c (mm__park,
 * mm__coro_interrupt, mm__coro_wake_local), lib/loop.c (mm__loop_post,
 * drain_remote, handle_bits).
 *   chan.pml      lib/chan.c (mm_chan_send/recv/close/free, chan_cancel,
 *                 take_first, any_pending), lib/waiter.c
 *                 (mm__waiter_block).
 *     Coro        a coroutine in mm_chan_recv, or mm_chan_send on a full
 *                 channel (-DWAIT_SEND)
 *     Thr         a plain thread in mm_chan_recv with its own deadline
 *                 (-DNW=2): thread_block, and its own canceller
 *     Peer        a plain thread: mm_chan_send / _recv, _close, _free,
 *                 mm_cancel
 *     Loop        the loop thread: drain_remote (WAKE, CANCEL, any order),
 *                 the coroutine's deadline, mm__cancel_all (stop)
 *   runsync.pml   bridge/run-sync.c (mm_run_sync_ex, sync_cancel,
 *                 on_deadline, mm__sync_execute), bridge/pool.c
 *                 (mm__pool_submit, mm__pool_unqueue, the worker loop).
 *     Caller      the coroutine in mm_run_sync_ex, request on its stack or
 *                 on the heap (-DABANDON)
 *     Worker      a pool worker: take (QUEUED -> RUNNING), fn, end
 *     Canceller   mm_cancel from another thread
 *     Loop        drain_remote, on_deadline (-DDEADLINE), stop (-DSTOP)
 *   runasync.pml  bridge/run-async.c (mm_run_async_ex, async_start),
 *                 lib/loop.c (mm__loop_submit, run_tasks, mm_loop_stop,
 *                 mm_loop_free's CLOSING and final drain), lib/sched.c
 *                 (finish: K's end wakes the caller's wait).
 *     Thr         the calling plain thread
 *     Loop        inbox drain, K's steps, K's timeout_ms, the stop and the
 *                 end of mm_loop_free
 *     Stopper     mm_loop_stop from another thread (-DSTOP)
 *   await.pml     the planned mm_await / mm_wake (API.md "Waiting for
 *                 anything"), with lib/sched.c's park and interrupt.
 *     Coro        an ordinary wait G, then mm_await
 *     GDone       G's completer on another thread
 *     Waker       mm_wake from another thread
 *     Canceller   mm_cancel from another thread
 *     Loop        drain_remote, the deadline, the stop
 *
 * THE LOOP THREAD is not one proctype but a token (lt): the Loop process
 * takes it for each event it handles (a drained remote bit, a timer, a
 * stop) and a coroutine takes it while it runs, so everything on the loop
 * thread is serialized, as in the C code, while other threads interleave
 * with it freely.  The remote queue is a set of pending bits handled in
 * any order: a cancel may be drained before a wake posted earlier.
 *
 * ABSTRACTIONS: one wait per call; a channel of capacity 1; mutexes are
 * atomic acquire/release; C11 orderings are not modelled (every step is
 * sequentially consistent: the model checks the protocol, TSan and the
 * stress tests check the orderings).
 */

#define PENDING    0
#define WOKEN      1
#define CANCELLED  2

#define ST_NONE      0
#define ST_VALUE     1   /* 0 / fn's value / the item */
#define ST_EPIPE     2
#define ST_ECANCELED 3
#define ST_ETIMEDOUT 4
#define ST_ESHUTDOWN 5

/* Who holds the loop thread (lt): the loop thread runs one thing at a
 * time -- a drain step, a timer, a cancel callback, or a coroutine. */
#define NOBODY   0
#define LOOPTHR  1
#define CORO     2
#define PEER     3
#define THREAD   4
#define WORKER   5

/* Coroutine states, as c->state in lib/sched.c. */
#define C_RUN    0
#define C_PARKED 1
#define C_READY  2
#define C_DONE   3

#define is_bridge_code(s) ((s) == ST_ECANCELED || (s) == ST_ETIMEDOUT || \
                           (s) == ST_ESHUTDOWN)

byte lt = NOBODY;

/* Take / leave the loop thread. */
#define loop_enter(who)   atomic { lt == NOBODY -> lt = who }
#define loop_leave(who)   atomic { assert(lt == who); lt = NOBODY }

/* First cancellation reason wins (mm__set_reason). */
inline set_reason(word, code) {
  atomic {
    if
    :: word == 0 -> word = code
    :: else -> skip
    fi
  }
}
