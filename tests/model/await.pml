/* mm_await / mm_wake (lib/await.c; API.md "Waiting for anything") under
 * the completion protocol, next to an ordinary wait of the same coroutine.
 *
 * Processes:
 *   Coro       first an ordinary cancellable wait G (mm_sleep, a channel
 *              wait: its completer wins PENDING -> WOKEN, a cancel wins
 *              PENDING -> CANCELLED), then mm_await(on_cancel, arg): a wake
 *              kept from before is taken at once; else it parks in the
 *              await's wait until the wake.
 *   GDone      G's completer, on another thread: CAS, then a remote WAKE
 *              with c->remote_status.
 *   Waker      mm_wake(coro, W) from another thread, once, at any time: the
 *              coroutine's wake slot EMPTY -> FULL (else -EBUSY), then a
 *              remote AWAKE bit of its own.
 *   Canceller  mm_cancel from another thread (reason, remote CANCEL).
 *   Loop       drains WAKE, AWAKE and CANCEL in any order, fires the
 *              coroutine's deadline (-DDEADLINE), stops (-DSTOP).  AWAKE
 *              completes the await if the coroutine is parked in it, else
 *              leaves the slot full for the next await.  A cancel of the
 *              await only runs on_cancel(arg), once; the wait goes on.
 *   Watch      at quiescence: G ended once with its own completer's or a
 *              cancel's status, the await returned W exactly once, on_cancel
 *              at most once and only while parked in the await, the
 *              coroutine not left blocked, the slot empty.
 *
 * -DSHARED_SLOT: mm_wake reuses the ordinary remote wake (MM__REMOTE_WAKE
 * and c->remote_status, lib/loop.c) instead of a slot of its own.  Spin must
 * reject it: a wake for the next await completes G, with W.
 * -DSTRICT_ONCANCEL: also asserts that on_cancel never runs after mm_wake
 * returned.  The design does not give that (a cancel drained before an
 * earlier wake runs on_cancel late), so spin must reject it: on_cancel's
 * arg must live until mm_await returns, not until mm_wake.
 * -DNO_WAKE -DSTOP: the wake never comes (its source was shut down with
 * the loop).  Spin must reject it: a stop cancels the coroutine, the
 * await only runs on_cancel and goes on waiting, so the stop (and
 * mm_loop_free, which waits for cancelled coroutines to end) never ends.
 */
#include "completion.pml"

#define ST_W 7            /* the status given to mm_wake */

#define IN_NONE  0
#define IN_G     1
#define IN_AWAIT 2

byte cstate = C_RUN;
byte cur = IN_NONE;       /* which wait the coroutine is parked in */
byte reason = 0;
bit  cancel_seen = 0;

/* G */
bit  g_alive = 0;
byte gstate = PENDING;
byte gends = 0;
byte gresult = ST_NONE;
bit  gdone_may = 0;       /* G is listed: its completer may run */

/* the await */
bit  a_alive = 0;
byte astate = PENDING;
byte aends = 0;
byte aresult = ST_NONE;
bit  arg_alive = 0;
byte oc_runs = 0;
bit  wake_returned = 0;

/* the coroutine's remote bits and slots */
bit  pend_wake = 0;       /* MM__REMOTE_WAKE */
byte remote_status = ST_NONE;
bit  pend_awake = 0;      /* the await's wake */
byte slot = ST_NONE;      /* mm_wake's slot: ST_NONE = empty */
bit  pend_cancel = 0;
bit  dl_fired = 0;
bit  stop_done = 0;
bit  coro_done = 0;

inline on_cancel() {
  atomic {
    assert(arg_alive && cur == IN_AWAIT);
#ifdef STRICT_ONCANCEL
    assert(!wake_returned);
#endif
    oc_runs++
  }
}

/* Ends the wait the coroutine is parked in: local wake. */
inline resume_with_g(st) {
  atomic {
    assert(g_alive && cstate == C_PARKED && cur == IN_G);
    gresult = st; gends++; cstate = C_READY
  }
}

/* mm__coro_interrupt */
inline interrupt() {
  if
  :: cstate == C_PARKED && !cancel_seen && reason != 0 ->
     cancel_seen = 1;
     if
     :: cur == IN_G ->
        atomic {
          assert(g_alive);
          if
          :: gstate == PENDING -> gstate = CANCELLED; won = 1
          :: else -> won = 0
          fi
        }
        if
        :: won -> gdone_may = 0; resume_with_g(reason)   /* unlink */
        :: else -> skip
        fi
     :: cur == IN_AWAIT -> on_cancel()     /* the wait goes on */
     fi
  :: else -> skip
  fi
}

/* The loop's handling of a wake of the await (AWAKE, or a slot found
 * full at the await's entry is handled by the coroutine itself). */
inline complete_await() {
  atomic {
    assert(a_alive && cstate == C_PARKED && cur == IN_AWAIT);
    assert(astate == PENDING);
    astate = WOKEN;
    aresult = slot; slot = ST_NONE; aends++;
    cstate = C_READY
  }
}

proctype Coro() {
  bit won;
  loop_enter(CORO);
  /* G: e.g. mm_chan_recv. */
  atomic { g_alive = 1; gstate = PENDING; cur = IN_G; cancel_seen = 0;
           cstate = C_PARKED; gdone_may = 1 }
  interrupt();
  loop_leave(CORO);
  atomic { cstate == C_READY && lt == NOBODY -> lt = CORO; cstate = C_RUN };
  atomic { assert(g_alive); g_alive = 0; cur = IN_NONE };

  /* mm_await(on_cancel, arg) */
  atomic { arg_alive = 1; a_alive = 1; astate = PENDING };
  if
  :: slot != ST_NONE ->               /* a wake came first: kept */
     atomic { astate = WOKEN; aresult = slot; slot = ST_NONE; aends++ }
  :: else ->
     atomic { cur = IN_AWAIT; cancel_seen = 0; cstate = C_PARKED };
     interrupt();                     /* pending cancellation: at once */
     loop_leave(CORO);
     atomic { cstate == C_READY && lt == NOBODY -> lt = CORO; cstate = C_RUN }
  fi;
  atomic { assert(a_alive); a_alive = 0; arg_alive = 0; cur = IN_NONE;
           cstate = C_DONE; coro_done = 1 };
  loop_leave(CORO)
}

proctype GDone() {
  bit won;
  /* Finds G on its list (gdone_may) under the list's lock; a cancel that
   * won unlinks it, and then this completer never sees it. */
end_g:
  atomic {
    gdone_may ->
    assert(g_alive);
    if
    :: gstate == PENDING -> gstate = WOKEN; won = 1; gdone_may = 0
    :: else -> won = 0            /* cancelled: skipped */
    fi
  }
  if
  :: won ->
     atomic {
       assert(g_alive);
       remote_status = ST_VALUE;
       pend_wake = 1
     }
  :: else -> skip
  fi
}

proctype Waker() {
#ifdef NO_WAKE
  skip
#else
  atomic {
#ifndef SHARED_SLOT
    assert(slot == ST_NONE);          /* one mm_wake: never -EBUSY */
    slot = ST_W;
    pend_awake = 1;
#else
    slot = ST_W;                      /* the await reads it at entry */
    remote_status = ST_W;
    pend_wake = 1;
#endif
    wake_returned = 1
  }
#endif
}

proctype Canceller() {
  if
  :: atomic { set_reason(reason, ST_ECANCELED); pend_cancel = 1 }
  :: skip
  fi
}

proctype Loop() {
  bit won;
end_loop:
  do
  :: atomic { lt == NOBODY && pend_wake -> lt = LOOPTHR; pend_wake = 0 }
#ifndef SHARED_SLOT
     resume_with_g(remote_status);
#else
     if
     :: cstate == C_PARKED && cur == IN_G -> resume_with_g(remote_status)
     :: cstate == C_PARKED && cur == IN_AWAIT -> complete_await()
     :: else -> skip
     fi;
#endif
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && pend_awake -> lt = LOOPTHR; pend_awake = 0 }
     if
     :: cstate == C_PARKED && cur == IN_AWAIT && slot != ST_NONE ->
        complete_await()
     :: else -> skip                  /* kept for the next await */
     fi;
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && pend_cancel -> lt = LOOPTHR; pend_cancel = 0 }
     interrupt();
     loop_leave(LOOPTHR)
#ifdef DEADLINE
  :: atomic { lt == NOBODY && !dl_fired && !coro_done ->
              lt = LOOPTHR; dl_fired = 1 }
     set_reason(reason, ST_ETIMEDOUT);
     interrupt();
     loop_leave(LOOPTHR)
#endif
#ifdef STOP
  :: atomic { lt == NOBODY && !stop_done -> lt = LOOPTHR; stop_done = 1 }
     set_reason(reason, ST_ECANCELED);
     interrupt();
     loop_leave(LOOPTHR)
#endif
  od
}

#ifdef LIVE
ltl ends { <> coro_done }
#endif

proctype Watch() {
  timeout ->
  atomic {
    assert(coro_done);                       /* nobody left blocked */
    assert(gends == 1 && aends == 1);        /* each wait ended once */
    assert(gresult == ST_VALUE || gresult == ST_ECANCELED ||
           gresult == ST_ETIMEDOUT);         /* never the await's wake */
    assert(aresult == ST_W);                 /* the await: the wake, always */
    assert(oc_runs <= 1);
    assert(slot == ST_NONE && !pend_wake && !pend_awake && !pend_cancel)
  }
}

init {
  atomic {
    run Coro();
    run GDone();
    run Waker();
    run Canceller();
    run Loop();
    run Watch()
  }
}
