/* Sleeping on a word: the one way a plain thread of the library sleeps
 * until another thread wakes it (a thread blocked in a waiting call,
 * waiter.c; an idle pool worker, bridge/pool.c).
 *
 *   sleeper                              waker
 *   seq = load(word)                     change what the sleeper checks
 *   check the condition; if not met:     word++                 (seq_cst)
 *   mm__futex_wait(word, seq, deadline)  mm__futex_wake(word, n)
 *
 * mm__futex_wait returns at once if the word no longer holds seq, so a
 * wake between the sleeper's check and its sleep is never lost: the waker
 * changed the word before waking.  Returns may be spurious: every caller
 * checks its condition again.
 *
 * Why not a condition variable: glibc's pthread_cond_wait takes its mutex
 * back marked "contended", so the unlock that follows every wake-up is a
 * futex system call whether or not anyone waits -- one of the three
 * system calls of each sleep/wake round trip (measured: 64 threads
 * calling mm_run_async made 3.0 futex calls per call; the third was
 * always that unlock).  A word needs no mutex at all: a sleep costs the
 * wait and the wake only.
 *
 * Linux: the futex system call, private, waiting with FUTEX_WAIT_BITSET
 * on an absolute CLOCK_MONOTONIC deadline -- the clock mm__cond_deadline
 * uses.  Elsewhere (or with -DMM_FUTEX_EMULATED, which CI's ucontext build
 * uses so that this path stays tested): a table of mutex + condition
 * variable buckets hashed by the word's address; the sleeper checks the
 * word under its bucket's mutex and the waker takes that mutex before it
 * broadcasts, so the same "never lost" holds.  A bucket shared by two
 * words only adds spurious returns.
 */
#include "mm-internal.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <time.h>

#if defined(HAVE_LINUX_FUTEX_H) && defined(HAVE_PTHREAD_CONDATTR_SETCLOCK) && \
    !defined(MM_FUTEX_EMULATED)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int mm__futex_wait(_Atomic uint32_t *word, uint32_t seq,
                   const struct timespec *deadline) {
  /* Absolute on CLOCK_MONOTONIC: FUTEX_WAIT_BITSET without
   * FUTEX_CLOCK_REALTIME. */
  long r = syscall(SYS_futex, word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG,
                   seq, deadline, NULL, FUTEX_BITSET_MATCH_ANY);
  if (r == 0)
    return 0;
  return errno == ETIMEDOUT ? -ETIMEDOUT : 0;   /* EAGAIN, EINTR: look again */
}

void mm__futex_wake(_Atomic uint32_t *word, int n) {
  syscall(SYS_futex, word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}

#else /* emulated */

#define BUCKETS 64

static struct bucket {
  pthread_mutex_t mu;
  pthread_cond_t cv;
} buckets[BUCKETS];

static pthread_once_t buckets_once = PTHREAD_ONCE_INIT;

static void buckets_make(void) {
  for (int i = 0; i < BUCKETS; i++) {
    pthread_mutex_init(&buckets[i].mu, NULL);
    mm__cond_init(&buckets[i].cv);   /* mm__cond_deadline's clock */
  }
}

/* fork: a bucket may be locked by a thread that did not come along. */
static void buckets_atfork_child(void) {
  buckets_make();
}

static void buckets_init(void) {
  buckets_make();
  pthread_atfork(NULL, NULL, buckets_atfork_child);
}

static struct bucket *bucket_of(const void *word) {
  pthread_once(&buckets_once, buckets_init);
  uintptr_t a = (uintptr_t) word;
  return &buckets[((a >> 2) ^ (a >> 9)) % BUCKETS];
}

int mm__futex_wait(_Atomic uint32_t *word, uint32_t seq,
                   const struct timespec *deadline) {
  struct bucket *b = bucket_of(word);
  int r = 0;
  pthread_mutex_lock(&b->mu);
  if (atomic_load_explicit(word, memory_order_seq_cst) == seq) {
    if (deadline == NULL)
      pthread_cond_wait(&b->cv, &b->mu);
    else if (pthread_cond_timedwait(&b->cv, &b->mu, deadline) == ETIMEDOUT)
      r = -ETIMEDOUT;
  }
  pthread_mutex_unlock(&b->mu);
  return r;
}

void mm__futex_wake(_Atomic uint32_t *word, int n) {
  (void) n;                   /* a bucket's sleepers may wait on other words */
  struct bucket *b = bucket_of(word);
  pthread_mutex_lock(&b->mu);
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

#endif
