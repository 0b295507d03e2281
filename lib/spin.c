/* Spinning before sleeping: the one mechanism behind every bounded spin
 * of the library (DESIGN.md, "Wake-ups cost more than the work").
 *
 * A thread about to sleep until another thread answers may instead watch
 * for the answer a while: a sleep plus a wake-up costs tens of
 * microseconds here, and the answer is often microseconds away.  Every
 * spin is bounded by its owner's adaptive limit (mm__spin_t), pauses the
 * CPU, yields it after SPIN_YIELD_NS (the thread it waits for may need
 * this very CPU), and at most half the CPUs spin at once, process-wide
 * (none on one CPU), so that spinners never take the CPUs that the
 * threads they wait for need.
 *
 * A forked child starts with every place free: the threads that held
 * places in the parent did not come along, and the one that forked was
 * not spinning.
 */
#include "mm-internal.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The longest spin: it must outlast a loop's or a thread's wake-up (tens
 * of microseconds on a VM) so that the next request, made once the other
 * side has woken to the previous answer, finds the spinner awake. */
#define SPIN_MAX_NS 50000

/* The shortest spin; past it, none (mm__spin_missed). */
#define SPIN_MIN_NS 2000

/* Past this much spinning, each turn also yields the CPU. */
#define SPIN_YIELD_NS 3000

/* A sched_yield that took this long gave the CPU to another thread (two
 * context switches); one that found nobody waiting returns in well under
 * a microsecond. */
#define YIELDED_AWAY_NS 5000

/* Threads spinning now.  Relaxed: the count orders nothing, it only
 * bounds how many threads spin. */
static _Atomic unsigned spinners;

unsigned mm__cpu_count(void) {
  static _Atomic unsigned n;    /* 0 until read; relaxed: every thread
                                   finds the same value */
  unsigned v = atomic_load_explicit(&n, memory_order_relaxed);
  if (v == 0) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    v = ncpu > 0 ? (unsigned) ncpu : 1;
    atomic_store_explicit(&n, v, memory_order_relaxed);
  }
  return v;
}

void *mm__aligned_zalloc(size_t size) {
  size_t n = (size + MM__CACHE_LINE - 1) / MM__CACHE_LINE * MM__CACHE_LINE;
  void *p = aligned_alloc(MM__CACHE_LINE, n);
  if (p != NULL)
    memset(p, 0, n);
  return p;
}

static void atfork_child(void) {
  atomic_store_explicit(&spinners, 0, memory_order_relaxed);
}

static void atfork_register(void) {
  pthread_atfork(NULL, NULL, atfork_child);
}

void mm__spin_init(mm__spin_t *s) {
  /* Every spinner's limit is made here first: before any place is
   * taken, the child handler is in place. */
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, atfork_register);
  s->limit_ns = SPIN_MAX_NS;
}

bool mm__spin_begin(const mm__spin_t *s) {
  if (s->limit_ns == 0)
    return false;             /* spins have not paid lately: sleep */
  unsigned max = mm__cpu_count() / 2;
  unsigned n = atomic_load_explicit(&spinners, memory_order_relaxed);
  do {
    if (n >= max)
      return false;
  } while (!atomic_compare_exchange_weak_explicit(&spinners, &n, n + 1,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed));
  return true;
}

/* mm__backoff: pauses first, then yields, then short sleeps.  The sleeps
 * matter where a scheduler may hand the CPU straight back to a thread
 * that yields (Valgrind's, a busy one), so that the thread it waits for,
 * preempted inside a few instructions, gets to finish them. */
#define BACKOFF_PAUSES 64
#define BACKOFF_YIELDS 16
#define BACKOFF_SLEEP_NS 20000

bool mm__yield_cpu(void) {
  uint64_t t0 = uv_hrtime();
  sched_yield();
  return uv_hrtime() - t0 >= YIELDED_AWAY_NS;
}

/* An answer that came only after one of the spin's yields gave its CPU
 * away came late: the CPUs are busy (another process), the thread that
 * answers needed this spinner's CPU, and the spin delayed the answer it
 * waited for.  The caller counts it as a miss (mm__spin_missed): spins
 * shorten until they no longer yield, then stop, until a wake-up shows
 * again that answers come quickly.  A yield that comes straight back (no
 * other thread wanted the CPU) says nothing. */
int mm__spin_wait(const mm__spin_t *s, bool (*ready)(const void *arg),
                  const void *arg) {
  uint64_t limit = s->limit_ns;
  uint64_t t0 = uv_hrtime(), dt = 0;
  bool came, gave_away = false;
  while (!(came = ready(arg)) && dt < limit) {
    for (int i = 0; i < 16; i++)
      mm__cpu_relax();
    if (dt >= SPIN_YIELD_NS && mm__yield_cpu())
      gave_away = true;
    dt = uv_hrtime() - t0;
  }
  atomic_fetch_sub_explicit(&spinners, 1, memory_order_relaxed);
  if (!came)
    return MM__SPIN_MISSED;
  return gave_away ? MM__SPIN_CAME_LATE : MM__SPIN_CAME;
}

void mm__backoff(unsigned *round) {
  unsigned n = (*round)++;
  if (n < BACKOFF_PAUSES) {
    for (int i = 0; i < 16; i++)
      mm__cpu_relax();
  } else if (n < BACKOFF_PAUSES + BACKOFF_YIELDS) {
    sched_yield();
  } else {
    struct timespec ts = { 0, BACKOFF_SLEEP_NS };
    nanosleep(&ts, NULL);
  }
}

/* Each miss halves the limit; below SPIN_MIN_NS the owner stops spinning
 * altogether and sleeps at once, until a quick wake-up (mm__spin_woken)
 * shows that answers come back soon again.  So calls that come seldom
 * (one every 200 us) cost no spinning at all after a few misses, while
 * calls back to back keep their spin: their wake-ups are quick. */
void mm__spin_missed(mm__spin_t *s) {
  s->limit_ns = s->limit_ns / 2 >= SPIN_MIN_NS ? s->limit_ns / 2 : 0;
}

mm__spin_mark_t mm__spin_mark(void) {
#ifdef HAVE_SCHED_GETCPU
  int cpu = sched_getcpu();   /* glibc: read from rseq, no system call */
#else
  int cpu = -1;
#endif
  return (mm__spin_mark_t) { uv_hrtime(), cpu };
}

/* Whether a spin of window_ns from began would have seen what was
 * posted: it came within the window, and its poster ran on another CPU. */
static bool would_catch(mm__spin_mark_t began, mm__spin_mark_t posted,
                        uint64_t window_ns) {
  /* A poster on the CPU we waited on ran because we slept: a spin there
   * would have held it off, and the answer would have come late.  (With
   * another process busy on the other CPU, caller and loop share one,
   * and every answer looked quick: each sleep re-armed a full spin that
   * then yielded to the very thread it waited for.) */
  if (posted.at == 0 ||
      (posted.cpu >= 0 && posted.cpu == began.cpu))
    return false;
  return (int64_t) (posted.at - began.at) < (int64_t) window_ns;
}

void mm__spin_woken(mm__spin_t *s, mm__spin_mark_t began,
                    mm__spin_mark_t posted) {
  /* What woke us was posted sooner after the wait began than a full spin
   * lasts, by a thread on another CPU: a full spin would have caught it.
   * From the wait's start, not the sleep's: answers 60 us away after a
   * 50 us spin looked quick, and every call spun in full and missed.  The
   * poster's time, not ours now: ours adds the wake-up's own latency
   * (tens of us on a VM). */
  if (would_catch(began, posted, SPIN_MAX_NS))
    s->limit_ns = SPIN_MAX_NS;
}
