/* mm_run_async from a plain thread (bridge/run-async.c, lib/loop.c's task
 * inbox and mm_loop_stop/mm_loop_free, lib/sched.c's finish) under the
 * completion protocol.
 *
 * Processes:
 *   Thr    the calling thread: request Q (with its wait) on its stack;
 *          mm__loop_submit counts itself in posting and pending (seq_cst),
 *          then reads the loop's state: not OPEN -> takes its count back,
 *          -ESHUTDOWN at once; else pushes Q on the inbox.  Then it blocks
 *          on Q's wait (thread_block) and returns the status.
 *   Loop   the loop thread: drains the inbox (async_start: spawn K, or,
 *          stopping, answer -ESHUTDOWN), runs K (which may park in an
 *          inner wait), fires K's spawn timeout (timeout_ms), processes a
 *          stop (mm__cancel_all), and with a stop goes on as mm_loop_free:
 *          waits for pending to reach 0 and K to end, CLOSING, waits for
 *          posting to reach 0, drains what is left, frees the loop.
 *   Stopper  (-DSTOP) mm_loop_stop from another thread.
 *   Watch  at quiescence: every accepted request answered once, nobody
 *          left blocked, the loop freed only after every poster left.
 *
 * The wait of Q moves once: PENDING -> WOKEN by K's end (finish) or by the
 * stop's -ESHUTDOWN for a request still in the inbox.  The winner's wake
 * (its release store of done; then only the ref-held waiter is rung:
 * bell.pml) is its last access to Q.
 *
 * -DTHREAD_DEADLINE: the calling thread enforces the timeout itself, as
 * DESIGN.md promises for a loop that has not started ("bounds the calling
 * thread's whole wait"): at the deadline it CASes PENDING -> CANCELLED and
 * returns -ETIMEDOUT.  With Q on its stack spin must reject it: the loop
 * later drains Q from the inbox, or K's end reads Q's ending word, after
 * the thread returned.
 * -DTHREAD_DEADLINE -DHEAP_Q: the fix: Q on the heap with two references
 * (thread, loop); its word moves PENDING -> SPAWNED when the loop takes it,
 * and the thread's deadline may only CAS PENDING -> CANCELLED (a spawned
 * K is cancelled and waited for, as API.md says); the last reference
 * frees Q.
 */
#include "completion.pml"

#define OPEN     0
#define STOPPING 1
#define CLOSING  2
#define SPAWNED  3   /* (HEAP_Q) the loop took Q and runs K */

#define K_NONE   0
#define K_RUN    1
#define K_PARKED 2
#define K_DONE   3

bit  loop_alive = 1;
byte lstate = OPEN;
byte posting = 0;
byte pending = 0;
bit  inbox = 0;          /* Q is in the loop's inbox */
bit  stop_done = 0;      /* mm__cancel_all ran */

bit  q_alive = 0;        /* Q (stack frame of Thr, or heap with HEAP_Q) */
byte qrefs = 0;          /* HEAP_Q */
byte wstate = PENDING;   /* Q's ending word */
byte wstatus = ST_NONE;
bit  done = 0;           /* Q.w.done */
byte ends = 0;
bit  accepted = 0;
bit  thr_done = 0;
byte result = ST_NONE;

byte kstate = K_NONE;
byte kreason = 0;        /* K's cancel_reason */
bit  kstop = 0;          /* K was cancelled by the stop */
bit  kdl = 0;            /* K's spawn timeout fired */
bit  ksaw = 0;           /* K's wait saw its cancellation */
bit  kwaited = 0;        /* K parked once already */

/* Q's memory, as the thread's frame or the heap. */
inline q_touch() { assert(q_alive) }

inline q_unref() {
#ifdef HEAP_Q
  atomic {
    assert(q_alive && qrefs > 0);
    qrefs--;
    if
    :: qrefs == 0 -> q_alive = 0
    :: else -> skip
    fi
  }
#else
  skip
#endif
}

/* The answer to Q: CAS, status, done (thread wake).  Loop thread. */
inline answer(st) {
  atomic {
    q_touch();
    if
    :: wstate == PENDING || wstate == SPAWNED -> wstate = WOKEN; won = 1
    :: else -> won = 0
    fi
  }
  if
  :: won -> atomic { q_touch(); wstatus = st; ends++; done = 1 }
  :: else -> skip
  fi;
  q_unref()
}

proctype Thr() {
  byte st;
  bit won;
  atomic {
    if
    :: lstate == CLOSING || !loop_alive ->
       /* A call that overlaps the end of mm_loop_free (from CLOSING on)
        * reads a loop that is about to be freed: the user's race, which
        * no protocol can answer.  Calls made before are modelled. */
       result = ST_ESHUTDOWN; thr_done = 1; goto gone
    :: else -> skip
    fi;
    q_alive = 1;
#ifdef HEAP_Q
    qrefs = 2;
#endif
    wstate = PENDING;
    posting++;
    pending++
  }
  atomic { assert(loop_alive); st = lstate };
  if
  :: st != OPEN ->
     atomic { assert(loop_alive); pending-- };
     if
     :: st != CLOSING -> assert(loop_alive)    /* uv_async_send */
     :: else -> skip
     fi;
     atomic { assert(loop_alive); posting-- };
     result = ST_ESHUTDOWN;
#ifdef HEAP_Q
     q_unref();                   /* the loop never saw it */
     q_unref();
#endif
     goto out
  :: else -> skip
  fi;
  atomic { assert(loop_alive); q_touch(); inbox = 1; accepted = 1 };
  atomic { assert(loop_alive) };  /* wake_if_asleep */
  atomic { assert(loop_alive); posting-- };
#ifndef THREAD_DEADLINE
  done;
#else
  if
  :: done -> skip
  :: atomic {
       !done ->                   /* the call's deadline, on this thread */
       q_touch();
       if
       :: wstate == PENDING -> wstate = CANCELLED; won = 1
       :: else -> won = 0
       fi
     }
     if
     :: won -> wstatus = ST_ETIMEDOUT; ends++
     :: else -> done              /* K runs: it is waited for */
     fi
  fi;
#endif
  atomic { q_touch(); result = wstatus };
  q_unref();
out:
  atomic {
#ifndef HEAP_Q
    q_alive = 0;                  /* mm_run_async returns: frame gone */
#endif
    thr_done = 1
  }
gone:
  skip
}

#ifdef STOP
proctype Stopper() {
  atomic { lstate == OPEN -> lstate = STOPPING }
}
#endif

/* K's end (finish): its status goes to Q's wait. */
inline k_end() {
  kstate = K_DONE;
  if
  :: ksaw && kstop -> answer(ST_ESHUTDOWN)
  :: ksaw && !kstop -> answer(kreason)
  :: else -> answer(ST_VALUE)
  fi
}

/* mm__coro_interrupt for K. */
inline k_interrupt() {
  if
  :: kstate == K_PARKED && !ksaw -> ksaw = 1; kstate = K_RUN
  :: else -> skip
  fi
}

/* async_start: the inbox's task.  shutdown: the loop is stopping. */
inline drain_inbox() {
  atomic { q_touch(); inbox = 0 };
#ifdef HEAP_Q
  atomic {
    q_touch();
    if
    :: wstate == PENDING && lstate == OPEN -> wstate = SPAWNED; won = 1
    :: else -> won = 0
    fi
  }
  if
  :: won -> kstate = K_RUN
  :: else -> answer(ST_ESHUTDOWN)  /* stopping, or already given up */
  fi;
#else
  if
  :: lstate != OPEN -> answer(ST_ESHUTDOWN)
  :: else -> q_touch(); kstate = K_RUN      /* spawn K, joiner Q.w */
  fi;
#endif
  pending--
}

proctype Loop() {
  bit won;
end_loop:
  do
  :: atomic { lt == NOBODY && inbox -> lt = LOOPTHR }
     drain_inbox();
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && kstate == K_RUN -> lt = LOOPTHR }
     if
     :: !kwaited && kreason == 0 ->                 /* an inner wait */
        kstate = K_PARKED; kwaited = 1
     :: else -> k_end()
     fi;
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && kstate == K_PARKED -> lt = LOOPTHR }
     kstate = K_RUN;              /* its inner wait completes */
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && !kdl && (kstate == K_RUN || kstate == K_PARKED) ->
              lt = LOOPTHR; kdl = 1 }
     set_reason(kreason, ST_ETIMEDOUT);     /* K's timeout_ms */
     k_interrupt();
     loop_leave(LOOPTHR)
#ifdef STOP
  :: atomic { lt == NOBODY && lstate != OPEN && !stop_done ->
              lt = LOOPTHR; stop_done = 1 }
     if                           /* mm__cancel_all */
     :: kstate == K_RUN || kstate == K_PARKED ->
        if
        :: kreason == 0 -> kreason = ST_ECANCELED; kstop = 1
        :: else -> skip
        fi;
        k_interrupt()
     :: else -> skip
     fi;
     loop_leave(LOOPTHR)
  :: atomic { lt == NOBODY && stop_done && pending == 0 &&
              (kstate == K_NONE || kstate == K_DONE) -> lt = LOOPTHR }
     /* mm_loop_free's end */
     lstate = CLOSING;
     posting == 0;
     if
     :: inbox -> drain_inbox()
     :: else -> skip
     fi;
     loop_alive = 0;
     loop_leave(LOOPTHR);
     break
#endif
  od
}

#ifdef LIVE
/* Every run ends: no cycle that leaves a waiter waiting (weak fairness). */
ltl ends { <> (thr_done) }
#endif

proctype Watch() {
  timeout ->
  atomic {
    assert(thr_done);                        /* nobody left blocked */
    assert(accepted -> ends == 1 : ends == 0);
    assert(!inbox && !q_alive);
    assert(kstate != K_RUN && kstate != K_PARKED || lstate == OPEN);
    assert(result != ST_NONE)
  }
}

init {
  atomic {
    run Thr();
#ifdef STOP
    run Stopper();
#endif
    run Loop();
    run Watch()
  }
}
