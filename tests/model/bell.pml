/* A plain thread's sleep on its waiter's bell (lib/waiter.c,
 * mm__waiter_block and mm__waiter_ring; lib/futex.c): no wake-up is lost.
 *
 *   Sleeper  waits until done: looks at done; if not, stores sleeping,
 *            reads bell into seq, looks at done again, and sleeps on the
 *            bell unless it no longer holds seq (futex semantics: the
 *            kernel compares and queues the sleeper in one step); clears
 *            sleeping once back.
 *   Waker    (NW of them: a wait's completer, task posters) each makes
 *            true what the sleeper waits for, adds 1 to bell, and wakes
 *            a sleeper if it reads sleeping set.  A wake finds the
 *            sleeper in the kernel or is lost, as FUTEX_WAKE is.
 *   Spurious (-DSPURIOUS) returns the sleeper from the kernel at any time.
 *
 * Spin's interleavings are sequentially consistent: that is what the
 * seq_cst accesses of the code give (the Dekker pair: the sleeper stores
 * sleeping then reads bell, the waker adds to bell then reads sleeping).
 * The property: at quiescence (spin's timeout) the sleeper has returned --
 * it is never left asleep once every waker is done.
 *
 * Mutants, each must be rejected:
 *   -DREORDERED   the waker's read of sleeping goes before its stores (what
 *                 a weaker ordering lets a store buffer do);
 *   -DNO_RECHECK  the sleeper does not look at done again after reading
 *                 bell.
 */
#ifndef NW
#define NW 2
#endif

bit done = 0;
byte bell = 0;
bit sleeping = 0;
bit asleep = 0;         /* in the kernel, queued on the bell */
bit finished = 0;
byte wakers_done = 0;

active proctype Sleeper() {
  byte seq;
  do
  :: done -> break
  :: else ->
     sleeping = 1;
     seq = bell;
#ifndef NO_RECHECK
     if
     :: done -> sleeping = 0; break
     :: else -> skip
     fi;
#endif
     atomic {
       if
       :: bell == seq -> asleep = 1
       :: else -> skip            /* EAGAIN: rung meanwhile */
       fi
     };
     !asleep;                     /* woken (or never asleep) */
     sleeping = 0
  od;
  finished = 1
}

active [NW] proctype Waker() {
  bit s;
#ifdef REORDERED
  s = sleeping;
#endif
  done = 1;
  bell++;
#ifndef REORDERED
  s = sleeping;
#endif
  if
  :: s -> atomic { if :: asleep -> asleep = 0 :: else -> skip fi }
  :: else -> skip
  fi;
  wakers_done++
}

#ifdef SPURIOUS
active proctype Spurious() {
  do
  :: atomic { asleep -> asleep = 0 }
  :: finished -> break
  od
}
#endif

active proctype Watch() {
  timeout;
  assert(wakers_done == NW && finished)
}
