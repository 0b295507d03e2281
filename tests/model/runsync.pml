/* mm_run_sync (bridge/run-sync.c, bridge/pool.c) under the completion
 * protocol.
 *
 * Processes:
 *   Caller  a coroutine in mm_run_sync_ex: its sync_wait_t (the wait, the
 *           deadline timer) on its stack; the request on its stack, or on
 *           the heap with -DABANDON (abandon_on_cancel); queued in the pool
 *           under the pool mutex; then it parks.  When it resumes it frees
 *           the heap request unless the call was abandoned, runs cleanup for
 *           a call that never ran and ended with a bridge code, and frees
 *           arg itself when the call returned fn's value (it is handed back).
 *   Worker  a pool worker (mm__sync_execute): takes the request if still
 *           queued (QUEUED -> RUNNING under the pool mutex), runs fn, then
 *           closes req->stop with OVER and waits while ASKING (an
 *           on_cancel under way), then claims PENDING -> WOKEN.  Won: if
 *           the call's deadline asked before OVER, cleanup(arg) and
 *           -ETIMEDOUT, else fn's value; a wake, its last access.  Lost
 *           (ABANDON): it owns the heap request: cleanup(arg) once, free.
 *   Canceller  mm_cancel from another thread: reason, then a remote CANCEL.
 *   Loop    drains the remote queue (the worker's WAKE and the CANCEL, in
 *           any order), fires the call's own deadline (-DDEADLINE), stops
 *           (-DSTOP: mm__cancel_all).  A coroutine cancel reaches the call
 *           through mm__coro_interrupt -> on_cancel -> sync_cancel; the
 *           deadline through on_deadline -> sync_cancel.
 *   Watch   at quiescence: one ending, cleanup exactly once iff a bridge
 *           code was returned, arg and the heap request freed once,
 *           on_cancel at most once and only for a call that was taken,
 *           never after cleanup or the call's return; a deadline that
 *           asked a running call to stop makes it return -ETIMEDOUT.
 *
 * sync_cancel (loop thread): under the pool mutex, a queued request is
 * removed (never runs) and the wait ends CANCELLED.  Else the call runs
 * and is asked to stop (run-sync.c, "Stopping a running call"): one CAS
 * on req->stop adds the reason bit (CANCEL or DEADLINE) unless OVER is
 * set, and ASKING with the first bit.  If it added ASKING: ABANDON claims
 * PENDING -> CANCELLED (the caller leaves at once), then on_cancel(arg),
 * then ASKING is cleared -- the asker's last access to the request.
 *
 * The call's deadline is a second asker: it acts only while the caller
 * is still parked in the wait (what mm__coro_interrupt checks for a
 * coroutine cancel), never on the request alone.
 *
 * -DNO_ASK_WAIT: the worker does not wait while ASKING.  Spin must reject
 * it: the worker, having lost (ABANDON) or seen DEADLINE (without), runs
 * cleanup(arg) while on_cancel(arg) runs.
 * -DDEADLINE_UNGATED (with ABANDON): the deadline fires after a cancel
 * won and before the caller resumed, and goes straight to the request.
 * Spin must reject it: the worker lost, cleaned up and freed the heap
 * request, so the deadline's CAS reads freed memory.
 */
#include "completion.pml"

#define NOTYET   0
#define QUEUED   1
#define RUNNING  2
#define REMOVED  3

#ifdef ABANDON
#define REQ_ALIVE req_alive
#else
#define REQ_ALIVE frame_alive
#endif

bit  frame_alive = 0;  /* the caller's frame: sync_wait_t (and the request) */
bit  req_alive = 0;    /* the heap request (ABANDON) */
bit  arg_alive = 0;    /* the call's arg */

byte pmu = NOBODY;     /* the pool mutex */
byte rq = NOTYET;      /* req->state as far as the pool is concerned */
byte wstate = PENDING; /* the ending word: on the request */
byte wstatus = ST_NONE;/* the status given to the wait (in the frame) */
bit  s_cancel = 0;     /* req->stop: CANCEL */
bit  s_deadline = 0;   /* DEADLINE */
bit  s_asking = 0;     /* ASKING */
bit  s_over = 0;       /* OVER */
bit  dl_asked = 0;     /* the deadline added its bit */
byte ends = 0;

byte cstate = C_RUN;
byte reason = 0;
bit  cancel_seen = 0;
bit  pend_wake = 0;
bit  pend_cancel = 0;
bit  dl_armed = 0;
bit  stop_done = 0;
bit  abandoned = 0;    /* sw.abandoned, in the frame */

bit  took = 0;         /* a worker took the request */
bit  fn_ran = 0;
byte oc_runs = 0;      /* on_cancel calls */
bit  oc_active = 0;    /* on_cancel is running */
bit  oc_ran = 0;       /* the loop thread called on_cancel (loop only) */
byte cleanups = 0;
bit  caller_done = 0;
bit  worker_done = 0;
byte result = ST_NONE;

inline plock(me) { atomic { pmu == NOBODY -> pmu = me } }
inline punlock(me) { atomic { assert(pmu == me); pmu = NOBODY } }

inline cleanup() {
  atomic {
    assert(arg_alive && !oc_active);  /* never with or before on_cancel */
    arg_alive = 0;
    cleanups++
  }
}

inline on_cancel_call() {
  atomic {
    assert(arg_alive && took && result == ST_NONE);  /* not returned */
    oc_active = 1; oc_runs++
  };
  atomic { assert(arg_alive); oc_active = 0 }
}

/* The winner of a cancel ends the wait: a local wake on the loop thread. */
inline end_cancelled(r) {
  atomic {
    assert(frame_alive && cstate == C_PARKED);
    wstatus = r;
    ends++;
    cstate = C_READY
  }
}

/* sync_ask: the call runs; r is the reason, dl whether it is the call's
 * own deadline. */
inline sync_ask(r, dl) {
  atomic {
    assert(REQ_ALIVE);
    if
    :: s_over -> ask = 0                    /* fn returned: too late */
    :: else ->
       ask = !s_cancel && !s_deadline;      /* the first reason asks */
       if
       :: dl -> s_deadline = 1; dl_asked = 1
       :: else -> s_cancel = 1
       fi;
       if
       :: ask -> s_asking = 1
       :: else -> skip
       fi
    fi
  }
  if
  :: ask ->
#ifdef ABANDON
     atomic {
       assert(REQ_ALIVE);
       if
       :: wstate == PENDING -> wstate = CANCELLED; won = 1
       :: else -> won = 0
       fi
     }
     if
     :: won -> abandoned = 1; end_cancelled(r)
     :: else -> skip                       /* the worker's wake is coming */
     fi;
#endif
     oc_ran = 1;
     on_cancel_call();
     atomic { assert(REQ_ALIVE); s_asking = 0 }   /* last access */
  :: else -> skip
  fi
}

/* sync_cancel: loop thread, the caller parked; r is the reason. */
inline sync_cancel(r, dl) {
  assert(frame_alive);
  plock(LOOPTHR);
  assert(REQ_ALIVE);
  if
  :: rq == QUEUED ->
     rq = REMOVED;
     punlock(LOOPTHR);
     atomic {
       assert(REQ_ALIVE && wstate == PENDING);
       wstate = CANCELLED
     }
     end_cancelled(r)
  :: else ->
     punlock(LOOPTHR);
     sync_ask(r, dl)
  fi
}

inline interrupt() {
  if
  :: cstate == C_PARKED && !cancel_seen && reason != 0 ->
     cancel_seen = 1;
     sync_cancel(reason, 0)
  :: else -> skip
  fi
}

proctype Caller() {
  bit won, ask;
  loop_enter(CORO);
  atomic {
    frame_alive = 1;
    arg_alive = 1;
#ifdef ABANDON
    req_alive = 1;
#endif
    wstate = PENDING
  }
  plock(CORO);
  rq = QUEUED;
  punlock(CORO);
#ifdef DEADLINE
  dl_armed = 1;
#endif
  cstate = C_PARKED;
  interrupt();                    /* a cancellation pending at entry */
  loop_leave(CORO);
  atomic { cstate == C_READY && lt == NOBODY -> lt = CORO; cstate = C_RUN };
  assert(frame_alive);
  result = wstatus;
  dl_armed = 0;                   /* mm__timer_stop */
#ifdef ABANDON
  if
  :: !abandoned -> atomic { assert(req_alive); req_alive = 0 }
  :: else -> skip                 /* the worker owns it now */
  fi;
#endif
  if
  :: is_bridge_code(result) ->
     if
     :: !took -> cleanup()        /* fn never ran: here, before returning */
     :: else -> skip              /* fn's thread runs it */
     fi;
#ifndef ABANDON
     assert(cleanups == 1)        /* before the call returns */
#endif
  :: else ->
     assert(result == ST_VALUE && cleanups == 0);
     atomic { assert(arg_alive); arg_alive = 0 }   /* arg handed back */
  fi;
  atomic { frame_alive = 0; cstate = C_DONE; caller_done = 1 }
  loop_leave(CORO)
}

proctype Worker() {
  bit won, tout;
  byte st;
  rq != NOTYET;
  plock(WORKER);
  if
  :: rq == QUEUED -> assert(REQ_ALIVE); rq = RUNNING; took = 1; punlock(WORKER)
  :: else -> punlock(WORKER); goto out    /* removed: never runs */
  fi;
  /* fn(arg) */
  atomic { assert(arg_alive); fn_ran = 1 };
  atomic { assert(arg_alive) };
  /* sync_over: close stop, wait for an on_cancel under way. */
  atomic { assert(REQ_ALIVE); s_over = 1; tout = s_deadline };
#ifndef NO_ASK_WAIT
  atomic { assert(REQ_ALIVE); !s_asking -> tout = s_deadline };
#endif
  atomic {
    assert(REQ_ALIVE);
    if
    :: wstate == PENDING -> wstate = WOKEN; won = 1
    :: else -> won = 0
    fi
  }
  if
  :: won ->
     if
     :: tout -> cleanup(); st = ST_ETIMEDOUT  /* its own deadline passed */
     :: else -> st = ST_VALUE                 /* incl. a coroutine cancel */
     fi;
     atomic {                                 /* the wake: last access */
       assert(REQ_ALIVE && frame_alive);
       wstatus = st; ends++; pend_wake = 1
     }
  :: else ->                      /* abandoned: the request is ours */
#ifndef ABANDON
     assert(0);                   /* only an abandonable call is claimed */
#endif
     cleanup();
     atomic { assert(req_alive); req_alive = 0 }
  fi;
out:
  worker_done = 1
}

proctype Canceller() {
  if
  :: atomic { set_reason(reason, ST_ECANCELED); pend_cancel = 1 }
  :: skip
  fi
}

proctype Loop() {
  bit won, ask;
end_loop:
  do
  :: atomic { lt == NOBODY && pend_wake -> lt = LOOPTHR; pend_wake = 0 }
     assert(cstate == C_PARKED);          /* one wake, to a parked wait */
     cstate = C_READY;
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && pend_cancel -> lt = LOOPTHR; pend_cancel = 0 }
     interrupt();
     loop_leave(LOOPTHR)
#ifdef DEADLINE
  :: atomic { lt == NOBODY && dl_armed -> lt = LOOPTHR; dl_armed = 0 }
#ifndef DEADLINE_UNGATED
     /* Like mm__coro_interrupt: only a wait that is still parked.  Once
      * a cancel won (ABANDON), the worker may have freed the request that
      * holds the ending word: not even its CAS may touch it. */
     if
     :: cstate == C_PARKED -> sync_cancel(ST_ETIMEDOUT, 1)
     :: else -> skip
     fi;
#else
     sync_cancel(ST_ETIMEDOUT, 1);
#endif
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
/* Every run ends: no cycle that leaves a waiter waiting (weak fairness). */
ltl ends { <> (caller_done && worker_done) }
#endif

proctype Watch() {
  timeout ->
  atomic {
    assert(caller_done && worker_done);      /* nobody left blocked */
    assert(ends == 1);                       /* one ending */
    assert(!arg_alive && !req_alive && !frame_alive);
    assert(is_bridge_code(result) -> cleanups == 1 : cleanups == 0);
    assert(result != ST_VALUE || fn_ran);
    assert(oc_runs <= 1);
    assert(!dl_asked || result == ST_ETIMEDOUT);  /* the deadline decides */
    assert(!pend_wake && !pend_cancel)
  }
}

init {
  atomic {
    run Caller();
    run Worker();
    run Canceller();
    run Loop();
    run Watch()
  }
}
