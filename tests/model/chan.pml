/* Channels (lib/chan.c) under the completion protocol.
 *
 * Processes:
 *   Coro   a coroutine of the loop in mm_chan_recv (or, with WAIT_SEND,
 *          mm_chan_send on a full channel): chan_wait_t on its stack, put
 *          on the channel's list under ch->mu, then mm__park.
 *   Thr    (NW == 2) a plain thread in mm_chan_recv with a deadline of its
 *          own (mm_deadline_push on a plain thread): it blocks in
 *          thread_block (lib/waiter.c) and, when the deadline passes, is
 *          its own canceller.
 *   Peer   a plain thread that does, in any order, a send (recv with
 *          WAIT_SEND), a close, up to two mm_chan_free and mm_cancel of
 *          the coroutine; at the end it closes the channel if it has not
 *          (so that the waits can end without a stop).
 *   Loop   the loop thread: drains the remote queue (WAKE and CANCEL
 *          bits, in any order), fires the coroutine's deadline, stops
 *          (mm__cancel_all).  A cancel reaches the wait through
 *          mm__coro_interrupt -> chan_cancel.
 *   Watch  at quiescence (timeout): every wait ended once, nobody blocked,
 *          items conserved, nothing listed.
 *
 * Protocol (the design): a peer, under ch->mu, walks the listed waits in
 * order and CASes PENDING -> WOKEN; the winner is unlinked, gets the item,
 * and is woken after the unlock; a loser (cancelled) is skipped and left
 * listed.  chan_cancel CASes PENDING -> CANCELLED first and only if it won
 * locks ch->mu, unlinks, unlocks and wakes with -reason.  mm_chan_free is
 * -EBUSY while any wait is listed.
 *
 * -DOLD_CANCEL: the cancel callback of 5877a2a (lock, look at list
 * membership, no CAS).  Spin must reject it: the user of the bug report
 * (close, free, then cancel; the cancel drained before the close's wake)
 * makes it lock a freed mutex.
 *
 * -DSTRICT_FREE: also asserts that mm_chan_free after mm_chan_close never
 * returns -EBUSY.  The design does not give that, so spin must reject it:
 * a cancel that won its CAS and waits for ch->mu to unlink its wait leaves
 * that wait listed while close skips it, so the user's close-then-free
 * gets -EBUSY with no call left waiting, and must retry.
 * -DFREE_WAITS: mm_chan_free as lib/chan.c implements it since b71a3bf
 * (-EBUSY only for a wait still pending; a cancelled one still listed is
 * waited for, yielding between looks); with -DSTRICT_FREE too, it must
 * hold.  With -DLIVE it is rejected: under weak fairness only, the free's
 * lock-look-unlock-yield round can starve the cancel it waits for, which
 * is blocked on ch->mu and never continuously enabled; its end rests on
 * the mutex and the scheduler letting the blocked cancel in.
 */
#include "completion.pml"

#ifndef NW
#define NW 1
#endif
#define NONE 9

/* The channel: capacity 1. */
bit  ch_alive = 1;
byte mu = NOBODY;          /* ch->mu: holder */
byte count = 0;            /* items in the buffer */
bit  closed = 0;
byte lst[2];               /* the senders or receivers list, in order */
byte nl = 0;
bit  freed = 0;
byte dropped = 0;          /* items in the buffer when it was freed */

/* The waits (chan_wait_t on the waiters' stacks); 0: Coro, 1: Thr. */
bit  w_alive[2];
byte wstate[2];
byte wstatus[2];
byte ends[2];              /* statuses delivered to the wait */
bit  waited[2];            /* the call had to wait */
bit  done[2];              /* the call returned */
byte result[2];

/* The coroutine. */
byte cstate = C_RUN;
byte reason = 0;           /* c->cancel_reason: ST_ECANCELED/ST_ETIMEDOUT */
bit  cancel_seen = 0;      /* w->cancel_seen */
bit  pend_wake = 0;        /* remote queue: MM__REMOTE_WAKE */
bit  pend_cancel = 0;      /* remote queue: MM__REMOTE_CANCEL */
bit  dl_fired = 0;
bit  stop_done = 0;

bit  tdone = 0;            /* Thr's w->done */
bit  peer_done = 0;
byte entered = 0;          /* waiters past their first critical section */

/* Items. */
byte items_in = 0;         /* sent with success (plus the initial one) */
byte items_out = 0;        /* received with success */

inline lock(me) {
  atomic { mu == NOBODY -> assert(ch_alive); mu = me }
}
inline unlock(me) {
  atomic { assert(ch_alive && mu == me); mu = NOBODY }
}
inline list_add(i) {
  assert(mu != NOBODY && nl < 2);
  lst[nl] = i;
  nl++
}
inline list_del(i) {
  assert(mu != NOBODY);
  if
  :: nl > 0 && lst[0] == i -> lst[0] = lst[1]; nl--
  :: nl > 1 && lst[1] == i -> nl--
  :: else -> assert(false)      /* unlinking a wait that is not listed */
  fi
}

/* The completer's wake, after the unlock: its last access to the wait.
 * A coroutine's goes through the remote queue; a thread's sets done. */
inline wake(j, st) {
  atomic {
    assert(w_alive[j] && wstate[j] == WOKEN);
    wstatus[j] = st;
    ends[j]++;
    if
    :: j == 0 -> pend_wake = 1
    :: else -> tdone = 1
    fi
  }
}

/* Peer side, mu held: the first listed wait whose CAS it wins, unlinked;
 * NONE if there is none.  Cancelled waits are skipped and stay listed. */
inline take_first(res) {
  res = NONE;
  k = 0;
  do
  :: k < nl ->
     atomic {
       j = lst[k];
       assert(w_alive[j]);
       if
       :: wstate[j] == PENDING -> wstate[j] = WOKEN; res = j
       :: else -> skip
       fi
     }
     if
     :: res != NONE -> list_del(res); break
     :: else -> k++
     fi
  :: else -> break
  od
}

/* chan_cancel: loop thread, reason in `reason`. */
inline chan_cancel() {
#ifndef OLD_CANCEL
  atomic {
    assert(w_alive[0]);
    if
    :: wstate[0] == PENDING -> wstate[0] = CANCELLED; won = 1
    :: else -> won = 0
    fi
  }
  if
  :: won ->
     lock(LOOPTHR);
     list_del(0);
     unlock(LOOPTHR);
     atomic {
       assert(w_alive[0] && cstate == C_PARKED);
       wstatus[0] = reason;
       ends[0]++;
       cstate = C_READY           /* mm__coro_wake_local */
     }
  :: else -> skip                 /* the completer's wake is on its way */
  fi
#else
  lock(LOOPTHR);
  won = (nl > 0 && lst[0] == 0) || (nl > 1 && lst[1] == 0);
  if
  :: won -> list_del(0)
  :: else -> skip
  fi;
  unlock(LOOPTHR);
  if
  :: won ->
     atomic {
       assert(w_alive[0] && cstate == C_PARKED);
       wstatus[0] = reason;
       ends[0]++;
       cstate = C_READY
     }
  :: else -> skip
  fi
#endif
}

/* mm__coro_interrupt: the current wait's cancel callback, once. */
inline interrupt() {
  if
  :: cstate == C_PARKED && !cancel_seen && reason != 0 ->
     cancel_seen = 1;
     chan_cancel()
  :: else -> skip
  fi
}

proctype Coro() {
  bit won;
  loop_enter(CORO);
  w_alive[0] = 1;
  wstate[0] = PENDING;
  lock(CORO);
#ifndef WAIT_SEND
  if
  :: count > 0 -> count--; items_out++; result[0] = ST_VALUE; unlock(CORO)
  :: else ->
     if
     :: closed -> result[0] = ST_EPIPE; unlock(CORO)
     :: else -> list_add(0); waited[0] = 1
     fi
  fi;
#else
  if
  :: closed -> result[0] = ST_EPIPE; unlock(CORO)
  :: !closed && count < 1 -> count++; items_in++; result[0] = ST_VALUE;
     unlock(CORO)
  :: else -> list_add(0); waited[0] = 1
  fi;
#endif
  if
  :: waited[0] ->
     cstate = C_PARKED;
     unlock(CORO);
     entered++;
     /* mm__park: a cancellation already pending acts as if it came
      * right after parking. */
     interrupt();
     loop_leave(CORO);
     atomic { cstate == C_READY && lt == NOBODY -> lt = CORO; cstate = C_RUN };
     assert(w_alive[0]);
     result[0] = wstatus[0];
     if
     :: result[0] == ST_VALUE ->
#ifndef WAIT_SEND
        items_out++
#else
        items_in++
#endif
     :: else -> skip
     fi
  :: else -> entered++
  fi;
  /* mm_chan_* returns: the chan_wait_t is gone. */
  atomic { w_alive[0] = 0; done[0] = 1; cstate = C_DONE }
  loop_leave(CORO)
}

#if NW == 2
/* A plain thread in mm_chan_recv, with its own deadline. */
proctype Thr() {
  bit won;
  w_alive[1] = 1;
  wstate[1] = PENDING;
  lock(THREAD);
  if
  :: count > 0 -> count--; items_out++; result[1] = ST_VALUE; unlock(THREAD)
  :: else ->
     if
     :: closed -> result[1] = ST_EPIPE; unlock(THREAD)
     :: else -> list_add(1); waited[1] = 1; unlock(THREAD)
     fi
  fi;
  entered++;
  if
  :: waited[1] ->
     if
     :: tdone -> skip
     :: atomic {
          !tdone ->               /* the deadline passes: its own cancel */
          assert(w_alive[1]);
          if
          :: wstate[1] == PENDING -> wstate[1] = CANCELLED; won = 1
          :: else -> won = 0
          fi
        }
        if
        :: won ->
           lock(THREAD); list_del(1); unlock(THREAD);
           wstatus[1] = ST_ETIMEDOUT;
           ends[1]++;
           tdone = 1
        :: else -> tdone        /* lost: wait for the winner's wake */
        fi
     fi;
     result[1] = wstatus[1];
     if
     :: result[1] == ST_VALUE -> items_out++
     :: else -> skip
     fi
  :: else -> skip
  fi;
  atomic { w_alive[1] = 0; done[1] = 1 }
}
#endif

/* The peer's operations. */
inline peer_send() {
  lock(PEER);
  if
  :: closed -> unlock(PEER)
  :: else ->
     take_first(res);
     if
     :: res != NONE -> items_in++; unlock(PEER); wake(res, ST_VALUE)
     :: else ->
        assert(count < 1);        /* one send: never full here */
        count++; items_in++; unlock(PEER)
     fi
  fi
}

inline peer_recv() {
  lock(PEER);
  if
  :: count > 0 ->
     count--; items_out++;
     take_first(res);             /* the first sender's item moves in */
     if
     :: res != NONE -> count++; unlock(PEER); wake(res, ST_VALUE)
     :: else -> unlock(PEER)
     fi
  :: else -> unlock(PEER)         /* never waits in this model */
  fi
}

inline peer_close() {
  lock(PEER);
  closed = 1;
  /* Every listed wait whose CAS it wins, unlinked, woken after unlock. */
  wmask = 0;
  do
  :: take_first(res);
     if
     :: res != NONE -> wmask = wmask | (1 << res)
     :: else -> break
     fi
  od;
  unlock(PEER);
  if
  :: wmask & 1 -> wake(0, ST_EPIPE)
  :: else -> skip
  fi;
  if
  :: wmask & 2 -> wake(1, ST_EPIPE)
  :: else -> skip
  fi
}

#ifndef FREE_WAITS
inline peer_free() {
  lock(PEER);
  busy = nl > 0;
#ifdef STRICT_FREE
  assert(!(closed && busy));      /* "free after close always succeeds" */
#endif
  unlock(PEER);
  if
  :: !busy -> atomic { ch_alive = 0; freed = 1; dropped = count; count = 0 }
  :: else -> skip                 /* -EBUSY */
  fi
}
#else
/* mm_chan_free as lib/chan.c has it since b71a3bf: -EBUSY only for a
 * listed wait still PENDING; a listed wait that is no longer pending is
 * a cancel that won and is about to unlink it: wait (sched_yield) and
 * look again. */
inline peer_free() {
  do
  :: lock(PEER);
     busy = 0;
     k = 0;
     do
     :: k < nl ->
        atomic {
          j = lst[k];
          assert(w_alive[j]);
          busy = busy || wstate[j] == PENDING
        };
        k++
     :: else -> break
     od;
#ifdef STRICT_FREE
     assert(!(closed && busy));
#endif
     leaving = nl > 0;
     unlock(PEER);
     if
     :: busy -> break             /* -EBUSY */
     :: !busy && !leaving ->
        atomic { ch_alive = 0; freed = 1; dropped = count; count = 0 };
        break
     :: else -> skip              /* sched_yield, look again */
     fi
  od
}
#endif

proctype Peer() {
  byte res, k, j, wmask, frees = 0;
  byte sent = 0;
  bit cancelled = 0, busy, leaving;
  do
#ifndef WAIT_SEND
  :: !sent && !freed -> sent = 1; peer_send()
#else
  :: !sent && !freed -> sent = 1; peer_recv()
  :: sent == 1 && !freed -> sent = 2; peer_recv()
#endif
  :: !closed && !freed -> peer_close()
  :: entered == NW && frees < 2 && !freed -> frees++; peer_free()
  :: !cancelled ->                /* mm_cancel: any thread */
     cancelled = 1;
     atomic {
       set_reason(reason, ST_ECANCELED);
       pend_cancel = 1
     }
  :: break
  od;
  if
  :: !closed && !freed -> peer_close()
  :: else -> skip
  fi;
  peer_done = 1
}

proctype Loop() {
  bit won;
end_loop:
  do
  :: atomic { lt == NOBODY && pend_wake -> lt = LOOPTHR; pend_wake = 0 }
     /* mm__coro_wake_local: the coroutine must still be parked. */
     assert(cstate == C_PARKED);
     cstate = C_READY;
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && pend_cancel -> lt = LOOPTHR; pend_cancel = 0 }
     interrupt();
     loop_leave(LOOPTHR)
#ifdef DEADLINE
  :: atomic { lt == NOBODY && !dl_fired && cstate != C_DONE ->
              lt = LOOPTHR; dl_fired = 1 }
     set_reason(reason, ST_ETIMEDOUT);
     interrupt();
     loop_leave(LOOPTHR)
#endif
#ifdef STOP
  :: atomic { lt == NOBODY && !stop_done -> lt = LOOPTHR; stop_done = 1 }
     set_reason(reason, ST_ECANCELED);    /* mm__cancel_all */
     interrupt();
     loop_leave(LOOPTHR)
#endif
  od
}

#ifdef LIVE
/* Every run ends: no cycle that leaves a waiter waiting (weak fairness). */
ltl ends { <> (done[0] && done[NW - 1] && peer_done) }
#endif

proctype Watch() {
  byte i;
  timeout ->
  atomic {
    for (i : 0 .. NW - 1) {
      assert(done[i]);                       /* nobody left blocked */
      assert(ends[i] == waited[i]);          /* ended exactly once */
      assert(!waited[i] || wstate[i] != PENDING)
    }
    assert(peer_done && !pend_wake && !pend_cancel && mu == NOBODY);
    assert(nl == 0);                         /* no wait left listed */
#ifndef WAIT_SEND
    assert(items_in == items_out + count + dropped)
#else
    assert(items_in == items_out + count + dropped)
#endif
  }
}

init {
  atomic {
#ifdef WAIT_SEND
    count = 1; items_in = 1;      /* full: the coroutine's send waits */
#endif
    run Coro();
#if NW == 2
    run Thr();
#endif
    run Peer();
    run Loop();
    run Watch()
  }
}
