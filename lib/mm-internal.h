/* Internal declarations shared by lib/ and bridge/ (the role of libuv's
 * uv-common.h): helpers, the loop and coroutine structs, and the few
 * primitives every waiting call is built from.
 *
 * Threads.  A loop is driven by one thread at a time: the thread inside
 * mm_loop_run(), the loop's background thread (mm_loop_start), or, for a
 * borrowed uv loop, the thread that runs uv_run().  Fields marked "loop
 * thread" are touched only by that driver.  Other threads reach a loop
 * through its remote queue (lock-free, see remote.c) or, for the few
 * life-cycle fields, under loop->mu.
 *
 * Lock order: loop->mu, then a thread waiter's mu (waiter.c).  Nothing is
 * called with either held that could take another.
 */
#ifndef MM_INTERNAL_H
#define MM_INTERNAL_H

#include "config.h"

#include <mixmode.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "list.h"

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof(type, member)))
#define MM__STATIC_ASSERT(e) _Static_assert(e, #e)
#define MM__ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Always on.  Prints the condition, file:line and the current coroutine. */
__attribute__((noreturn)) void mm__assert_fail(const char *expr,
                                               const char *file, int line);
#define mm__assert(e) \
  ((e) ? (void) 0 : mm__assert_fail(#e, __FILE__, __LINE__))

#if defined(__SANITIZE_ADDRESS__)
# define MM__ASAN 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer)
#  define MM__ASAN 1
# endif
#endif
#if defined(__SANITIZE_THREAD__)
# define MM__TSAN 1
#elif defined(__has_feature)
# if __has_feature(thread_sanitizer)
#  define MM__TSAN 1
# endif
#endif

/* ---- a multi-producer, single-consumer stack ----------------------------
 *
 * Intrusive.  Producers push with a CAS on the head (release: what they
 * wrote into the node before is visible to the consumer); the one consumer
 * takes everything at once with an exchange (acquire) and gets it back in
 * push order.  Only the consumer removes nodes, and it removes them all,
 * so ABA cannot occur.  Used by the loop's remote queue and task inbox. */
typedef struct mm__mpsc_node {
  struct mm__mpsc_node *next;
} mm__mpsc_node_t;

static inline void mm__mpsc_push(_Atomic(mm__mpsc_node_t *) *head,
                                 mm__mpsc_node_t *n) {
  mm__mpsc_node_t *h = atomic_load_explicit(head, memory_order_relaxed);
  do {
    n->next = h;
  } while (!atomic_compare_exchange_weak_explicit(
      head, &h, n, memory_order_release, memory_order_relaxed));
}

/* Takes every node, oldest first (linked through next). */
static inline mm__mpsc_node_t *mm__mpsc_take(
    _Atomic(mm__mpsc_node_t *) *head) {
  mm__mpsc_node_t *n = atomic_exchange_explicit(head, NULL,
                                                memory_order_acquire);
  mm__mpsc_node_t *fifo = NULL;
  while (n != NULL) {
    mm__mpsc_node_t *next = n->next;
    n->next = fifo;
    fifo = n;
    n = next;
  }
  return fifo;
}

/* One step of a spin: tells the core that this is a wait loop.  On
 * aarch64, `yield` hands an SMT core's pipeline to its sibling but is a
 * no-op on most cores, so an `isb` follows: it drains the pipeline, which
 * makes the step take some time, as x86's `pause` does, instead of
 * hammering the watched cache line. */
static inline void mm__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield\n\tisb" ::: "memory");
#endif
}

/* What two threads that write apart should not share (x86-64 and the
 * usual aarch64 cores: 64 bytes), and a zeroed block aligned to it for
 * structs that set _Alignas(MM__CACHE_LINE) on a member (malloc only
 * promises 16); freed with free().  NULL if out of memory. */
#define MM__CACHE_LINE 64
void *mm__aligned_zalloc(size_t size);

/* Spinning before sleeping (spin.c).  The owner of an mm__spin_t (one
 * thread, or whoever holds the lock it lives under) keeps its adaptive
 * limit.  To spin: mm__spin_begin(s) claims one of the process's spinner
 * places (false: sleep at once -- also when s's limit is 0, spins having
 * missed lately); mm__spin_wait() then watches ready(arg) until it holds
 * or the limit passes, and gives the place back; after a miss or a late
 * arrival, mm__spin_missed() halves the next limit, down to 0.  Around a
 * wait: t = mm__spin_mark() as it begins (before any spin), and
 * mm__spin_woken(s, t, p) after a wake-up from the sleep (not a timeout),
 * p being the waker's mm__spin_mark() when it posted what woke us (at 0:
 * unknown): one posted within a full spin's time of t, on another CPU
 * than the one we waited on, restores the full limit. */
typedef struct mm__spin {
  uint64_t limit_ns;
} mm__spin_t;

/* When (uv_hrtime()) and on which CPU (-1: unknown) a wait began or an
 * answer was posted. */
typedef struct mm__spin_mark {
  uint64_t at;
  int cpu;
} mm__spin_mark_t;

/* One step of waiting for another thread to leave a short section it
 * cannot be blocked in (a pin, a post in flight): pauses, then yields,
 * then sleeps briefly.  *round starts at 0. */
void mm__backoff(unsigned *round);

/* CPUs online (at least 1), read once. */
unsigned mm__cpu_count(void);
void     mm__spin_init(mm__spin_t *s);
bool     mm__spin_begin(const mm__spin_t *s);
/* Yields the CPU; true if another thread took it meanwhile (the CPUs are
 * busy: a spin then delays whoever it waits for). */
bool     mm__yield_cpu(void);
/* mm__spin_wait's answers: nothing came; it came; it came only after the
 * spin gave its CPU away (count it as a miss: spin.c). */
enum { MM__SPIN_MISSED, MM__SPIN_CAME, MM__SPIN_CAME_LATE };
int      mm__spin_wait(const mm__spin_t *s, bool (*ready)(const void *arg),
                       const void *arg);
void     mm__spin_missed(mm__spin_t *s);
mm__spin_mark_t mm__spin_mark(void);
void     mm__spin_woken(mm__spin_t *s, mm__spin_mark_t began,
                        mm__spin_mark_t posted);

/* Records reason (ECANCELED, ETIMEDOUT) in *r unless one is there
 * already: the first cancellation wins.  Relaxed: the reason carries no
 * data; whatever must follow it is ordered by the queue or the thread
 * that delivers it.  True if this call recorded it. */
static inline bool mm__set_reason(_Atomic int *r, int reason) {
  int expected = 0;
  return atomic_compare_exchange_strong_explicit(
      r, &expected, reason, memory_order_relaxed, memory_order_relaxed);
}

/* ---- log.c --------------------------------------------------------------- */
__attribute__((format(printf, 2, 3))) void mm__log(int level,
                                                   const char *fmt, ...);
/* A message of any length, as it is (mm__log truncates at 511 bytes). */
void mm__log_str(int level, const char *msg);

/* ---- timer.c: a per-loop heap of timers driven by one uv_timer ---------- */
typedef struct mm__timer mm__timer_t;
typedef void (*mm__timer_fn)(mm__timer_t *t);
struct mm__timer {
  uint64_t due;       /* uv_now() milliseconds */
  uint64_t seq;       /* equal deadlines fire in start order */
  size_t idx;         /* slot in the heap; SIZE_MAX while not armed */
  mm__timer_fn cb;    /* runs on the loop thread, timer already disarmed */
};

void mm__timer_init(mm__timer_t *t, mm__timer_fn cb);
int  mm__timer_start(mm_loop_t *loop, mm__timer_t *t, uint64_t ms);
void mm__timer_stop(mm_loop_t *loop, mm__timer_t *t);
int  mm__timers_init(mm_loop_t *loop);
/* Closes the uv timer unless it is closing already; returns how many
 * calls of cb to wait for (0 or 1). */
unsigned mm__timers_close(mm_loop_t *loop, uv_close_cb cb);
void mm__timers_free(mm_loop_t *loop);

/* ---- wait-fd.c: mm_wait_fd's records, one per fd number, and handles ---- */
/* Closes the loop's poll handles that are not closing already (the user
 * may have closed them with uv_walk); returns how many calls of cb to
 * wait for.  Their data is set to loop for cb.  No wait may be under way. */
unsigned mm__fd_polls_close(mm_loop_t *loop, uv_close_cb cb);
/* Frees them, once every close has completed. */
void mm__fd_polls_free(mm_loop_t *loop);

/* ---- local.c ------------------------------------------------------------- */
typedef struct mm__local {
  const void *key;
  void *value;
} mm__local_t;

typedef struct mm__locals {
  mm__local_t *v;     /* malloc'ed on first set; NULL while empty */
  size_t n;
  size_t cap;
} mm__locals_t;

int  mm__locals_copy(mm__locals_t *dst, const mm__locals_t *src);
void mm__locals_free(mm__locals_t *l);
/* The table mm_local_get/set use here: the running coroutine's, the one a
 * blocking call runs for, or this plain thread's. */
mm__locals_t *mm__locals_here(void);

/* ---- waiter.c: blocking a plain thread ----------------------------------- */

/* Work handed to a thread while it waits (thread-sensitive calls).  Lives
 * wherever its poster keeps it; run() is the waiter's last access. */
typedef struct mm__task {
  mm__list_t link;
  void (*run)(struct mm__task *t);
} mm__task_t;

/* One per thread that ever waits, created on first use, freed at thread
 * exit.  mu protects tasks and the done flags of the waits blocked on it. */
typedef struct mm__waiter {
  pthread_mutex_t mu;
  mm__list_t tasks;   /* mm__task_t, FIFO; protected by mu */
  /* The thread sleeps on bell (mm__futex_wait); a waker makes what it
   * sleeps for true (a wait's done, task_hint), then adds 1 to bell
   * (seq_cst) and, if sleeping (seq_cst), wakes it: the sleeper stores
   * sleeping before it reads bell, so either the waker sees it asleep or
   * the sleeper sees the new bell (and what came with it).  sleeping is
   * written by the thread only; a stale true costs one needless wake. */
  _Atomic uint32_t bell;
  _Atomic bool sleeping;
  unsigned serving;   /* protected by mu: > 0 while the thread blocks in
                         mm_run_async and so serves its coroutines' calls */
  _Atomic unsigned refs;  /* the thread's own, plus one per coroutine
                             that names the thread as its caller */
  _Atomic bool task_hint; /* tasks is not empty; written under mu, read
                             without it by the thread's spin (a stale
                             value only ends or prolongs the spin) */
  mm__spin_t spin;        /* the thread's own */
  /* mm__spin_mark() of the last wake or task posted to it
   * (mm__spin_woken); relaxed: a stale value only misjudges one spin. */
  _Atomic uint64_t posted_at;
  _Atomic int posted_cpu;
} mm__waiter_t;

mm__waiter_t *mm__waiter_self(void);  /* NULL only if out of memory */
void mm__waiter_ref(mm__waiter_t *w);
void mm__waiter_unref(mm__waiter_t *w);
/* After making true what w's thread waits for (a wait's done, a task):
 * wakes the thread if it sleeps (see mm__waiter_t). */
void mm__waiter_ring(mm__waiter_t *w);
/* Posts t only if the thread is serving (blocked in mm_run_async). */
bool mm__waiter_post_serving(mm__waiter_t *w, mm__task_t *t);
/* Takes t out if it is still queued (then it never runs). */
bool mm__waiter_unqueue(mm__waiter_t *w, mm__task_t *t);
/* Around a thread's mm_run_async wait; the end runs what is left. */
void mm__waiter_serve_begin(mm__waiter_t *w);
void mm__waiter_serve_end(mm__waiter_t *w);
struct mm__wait;
struct timespec;
/* Every condition variable that is given a deadline (the watchdog's, the
 * emulated futex's buckets) is made by mm__cond_init, and every deadline
 * of a timed wait (those, and mm__futex_wait's: the waiters', the pools')
 * comes from mm__cond_deadline: both on CLOCK_MONOTONIC (where
 * pthread_condattr_setclock exists; CLOCK_REALTIME elsewhere), so that a
 * step of the wall clock moves no deadline.  mm__cond_init returns 0 or a
 * positive error number, as pthread_cond_init does. */
int mm__cond_init(pthread_cond_t *cv);
/* *ts = now + ms on mm__cond_init's clock: the absolute deadline that
 * pthread_cond_timedwait takes. */
void mm__cond_deadline(struct timespec *ts, uint64_t ms);
/* Sleeping on a word (futex.c): returns when *word no longer holds seq,
 * when woken, at the deadline (mm__cond_deadline's clock; -ETIMEDOUT;
 * NULL: none), or spuriously (0); the caller checks its condition again.
 * The waker changes the word (seq_cst) before mm__futex_wake, which
 * wakes up to n of its sleepers. */
int mm__futex_wait(_Atomic uint32_t *word, uint32_t seq,
                   const struct timespec *deadline);
void mm__futex_wake(_Atomic uint32_t *word, int n);
/* Names the calling thread in whichever of the forms configure found;
 * where none exists the thread stays unnamed.  The name is cut to 15
 * characters: glibc refuses a longer one (ERANGE) and leaves the old. */
#ifdef MM_THREAD_NAME_BSD
# include <pthread_np.h>
#endif
static inline void mm__thread_name(const char *full) {
  char name[16];
  size_t i = 0;
  for (; i < sizeof name - 1 && full[i] != '\0'; i++)
    name[i] = full[i];
  name[i] = '\0';
#if defined(MM_THREAD_NAME_GLIBC)
  pthread_setname_np(pthread_self(), name);
#elif defined(MM_THREAD_NAME_MACOS)
  pthread_setname_np(name);
#elif defined(MM_THREAD_NAME_NETBSD)
  pthread_setname_np(pthread_self(), "%s", (void *) name);
#elif defined(MM_THREAD_NAME_BSD)
  pthread_set_name_np(pthread_self(), name);
#else
  (void) name;
#endif
}

/* Blocks the calling thread, w's, until w is delivered (0, *status) or
 * the deadline (mm__cond_deadline) passes (-ETIMEDOUT; NULL: none),
 * running posted tasks meanwhile. */
int mm__waiter_block(struct mm__wait *w, const struct timespec *deadline,
                     int *status);

/* ---- the one completion protocol (wait.c) ---------------------------------
 *
 * mm__wait_t describes one wait of a coroutine (parked) or of a plain thread
 * (blocked on its waiter).  It lives on the waiting side's stack.  Its
 * ending is one atomic word (*end) that moves once, by compare-and-swap:
 *
 *     PENDING --mm__end_claim(WOKEN): the completer----> WOKEN
 *     PENDING --mm__end_claim(CANCELLED): a cancel, a --> CANCELLED
 *               deadline or a stop that ends the wait
 *
 * Whoever wins owns the ending: it alone calls mm__wait_deliver(w, status),
 * which is its last access to w.  The loser does nothing more with the wait
 * and nothing with what the winner may free.  The full rules -- where the
 * word may live, orderings, who frees what when -- are written once at the
 * top of wait.c.
 *
 * cancel (coroutine waits only, loop thread): called at most once when the
 * coroutine is cancelled or reaches its deadline while parked here, with
 * the reason (ECANCELED or ETIMEDOUT).  It must claim CANCELLED before it
 * touches anything a completer may free, and may instead leave the wait
 * pending (a running blocking call is waited for).  NULL means "claim
 * CANCELLED and wake me with -reason": only for waits whose every
 * completer runs on the loop's thread (a sleep's timer).
 */
enum mm__end {
  MM__END_PENDING = 0,
  MM__END_WOKEN,
  MM__END_CANCELLED
};

/* The one transition of the protocol.  acq_rel: the winner sees what was
 * written before the wait was published, and its own writes before the
 * claim are visible to whoever later reads the word (acquire). */
static inline bool mm__end_claim(_Atomic int *end, int to) {
  int expected = MM__END_PENDING;
  return atomic_compare_exchange_strong_explicit(
      end, &expected, to, memory_order_acq_rel, memory_order_acquire);
}

typedef struct mm__wait mm__wait_t;
struct mm__wait {
  mm_coro_t *coro;            /* the parked coroutine, or NULL */
  mm__waiter_t *thread;       /* the blocked thread's waiter, else NULL */
  void (*cancel)(mm__wait_t *w, int reason);
  bool cancellable;           /* false: cancellation never interrupts it */
  bool cancel_seen;           /* cancel already called for this wait */
  bool by_deadline;           /* that call came from a deadline of
                                 mm_deadline_push, not a cancel: join and
                                 run_sync act differently (sched.c) */
  _Atomic int own_end;        /* enum mm__end, unless end points elsewhere */
  _Atomic int *end;           /* the ending word: &own_end, or one that
                                 outlives the waiter (an abandonable
                                 run_sync request's, on the heap) */
  _Atomic bool done;          /* thread waits: delivered; written under
                                 thread->mu (release), read under it or,
                                 spinning, without it (acquire) */
  int status;                 /* the value given to mm__wait_deliver */
};

/* Prepares w for the calling context: the current coroutine (running on
 * this thread) or this thread's waiter.  -ENOMEM if a waiter cannot be
 * made, -EDEADLK on a loop's thread outside coroutines. */
int  mm__wait_init(mm__wait_t *w);
/* Suspends until delivered; returns the status delivered.  A coroutine
 * whose cancellation is already requested returns -reason at once from a
 * cancellable wait without a cancel callback; with one, the callback runs
 * first thing and decides. */
int  mm__wait_block(mm__wait_t *w);
/* A thread wait that gives up after ms: 0 and *status once delivered, or
 * -ETIMEDOUT with w still pending (block on it again). */
int  mm__wait_block_for(mm__wait_t *w, uint64_t ms, int *status);
/* mm__wait_block, where a plain thread's deadline (mm_deadline_push)
 * applies: at the deadline take_back(w) tries to withdraw w from where it
 * is listed, as a cancel would (true: nobody can reach w any more, and
 * the call returns -ETIMEDOUT); if it cannot, a completer has w and its
 * delivery is waited for.  A coroutine's deadlines reach its waits in
 * mm__park instead. */
int  mm__wait_block_deadline(mm__wait_t *w, bool (*take_back)(mm__wait_t *w));
/* Any thread, by the winner of w's ending only.  Ends w with status. */
void mm__wait_deliver(mm__wait_t *w, int status);
/* Any thread: claims WOKEN and delivers; false if the ending was taken. */
bool mm__wait_complete(mm__wait_t *w, int status);
/* Loop thread, w a coroutine's: claims CANCELLED and delivers status;
 * false if the ending was taken. */
bool mm__wait_cancel(mm__wait_t *w, int status);

/* ---- coroutines ---------------------------------------------------------- */

enum mm__coro_state {
  MM__CORO_READY,     /* in the loop's ready queue (or not yet admitted) */
  MM__CORO_RUNNING,
  MM__CORO_PARKED,    /* suspended in mm__wait_block */
  MM__CORO_DONE
};

/* Handle states, c->join.  Any other value is the mm__wait_t of a joiner. */
#define MM__JOIN_NONE     ((uintptr_t) 0)   /* nobody has claimed the handle */
#define MM__JOIN_DETACHED ((uintptr_t) 1)
#define MM__JOIN_ENDED    ((uintptr_t) 2)   /* ended; status readable */
#define MM__JOIN_FREED    ((uintptr_t) 3)   /* handle given back */

/* Events other threads post to a coroutine (c->remote_bits). */
#define MM__REMOTE_QUEUED  1u   /* c is in (or being pushed on) remote queue */
#define MM__REMOTE_SPAWN   2u   /* admit a coroutine spawned elsewhere */
#define MM__REMOTE_CANCEL  4u   /* interrupt its current wait */
#define MM__REMOTE_WAKE    8u   /* complete its wait with remote_status */
#define MM__REMOTE_RELEASE 16u  /* its handle was given back: free it */
#define MM__REMOTE_AWAKE   32u  /* mm_wake filled its slot (await.c) */

/* A coroutine and its stack are one mmap'ed block (stack.c):
 *
 *     map                                             map + map_size
 *     | guard      | stack, growing down <-------- | struct mm_coro |
 *       64 KiB of    stack_lo        stack_lo + stack_size
 *       markers or
 *       PROT_NONE
 */
/* A stack of deadlines (mm_deadline_push/pop; sched.c), of a coroutine
 * or a plain thread.  Touched only by its own thread of control. */
typedef struct mm__deadlines {
  uint64_t small[4];          /* uv_hrtime() values, innermost last ... */
  uint64_t *more;             /* ... or here, malloc'ed, past 4 */
  unsigned n, cap;            /* cap 0: small */
  uint64_t earliest;          /* min of the n values; valid while n > 0 */
  unsigned hold;              /* > 0: suspended (a wait that must finish) */
} mm__deadlines_t;

struct mm_coro {
  mm__ctx_t ctx;              /* saved context while not running */
  mm_loop_t *loop;
  mm_fn fn;
  void *arg;
  uint64_t id;                /* per loop, from 1 */
  char *name;                 /* malloc'ed copy, or NULL */
  int status;                 /* fn's value once DONE; written before the
                                 release exchange on join */
  enum mm__coro_state state;  /* loop thread */
  bool started;               /* loop thread: fn has been entered */
  bool joiner_woken;          /* loop thread: counted in loop->njoining */
  bool auto_release;          /* made by mm__spawn_for: no handle */
  uint64_t born;              /* uv_now() when admitted (sched.c): ms,
                                 as old as the loop's time then */
  mm_coro_t *handle;          /* the public handle of this spawn (handle.c) */
  uint32_t slot;              /* the block's slot in the handle table */

  /* memory (stack.c) */
  void *map;
  size_t map_size;
  char *stack_lo;
  size_t stack_size;
  unsigned vg_stack_id;
  void *tsan_fiber;
  void *asan_fake_stack;
  uint64_t cached_at;         /* loop thread: uv_now() when cached */
  bool emptied;               /* loop thread: cached, its stack given back */

  mm__list_t link;            /* loop thread: ready queue or stack cache */
  mm__list_t all;             /* loop thread: loop->live or loop->zombies */
  mm__wait_t *wait;           /* loop thread: current wait while PARKED */
  int wake_status;            /* loop thread: status for the next resume */

  _Atomic int cancel_reason;  /* 0, ECANCELED or ETIMEDOUT; first CAS wins */
  mm__timer_t sleep_timer;    /* loop thread */
  mm__timer_t deadline;       /* loop thread: spawn timeout_ms */
  uint64_t timeout_ms;
  mm__deadlines_t deadlines;  /* its own thread of control: push/pop */
  mm__timer_t dl_timer;       /* loop thread: the earliest, while parked */

  /* Handle state: MM__JOIN_* or a joiner's mm__wait_t.  The end of the
   * coroutine exchanges in MM__JOIN_ENDED (acq_rel) after writing status;
   * a joiner CASes NONE -> its wait (acq_rel), and the failure load
   * (acquire) of ENDED makes status visible.  See coro.c. */
  _Atomic uintptr_t join;
  /* The handle of the coroutine this one waits for in mm_join, or NULL;
   * seq_cst, read by other joiners through pins (coro.c, join cycles). */
  _Atomic(mm_coro_t *) joining;

  /* mm_wake's slot (await.c): MM__SLOT_*; the value is written between
   * BUSY and FULL and read after an acquire load of FULL. */
  _Atomic int await_slot;
  int await_value;
  bool awaiting;              /* loop thread: parked in mm_await */

  /* Remote queue link and events (remote.c). */
  _Atomic unsigned remote_bits;
  _Atomic int remote_status;  /* with MM__REMOTE_WAKE */
  mm__mpsc_node_t remote;     /* in loop->remote_head */

  mm__locals_t locals;        /* own; touched by its own thread of control */
  mm__waiter_t *caller;       /* the plain thread blocked in mm_run_async
                                 for this coroutine (inherited), with a
                                 reference; NULL if none */
};

typedef struct mm__loop_task mm__loop_task_t;

/* What lib/ calls of the bridge layer's per-loop state, on the loop's
 * thread.  flush: after each pass over the ready coroutines, before the
 * loop may block (hands over what those coroutines staged, in one go).
 * free: from mm_loop_free, once no coroutine is left.  forget: from
 * mm_loop_free in a forked child, of a loop inherited from the parent:
 * releases the memory, joining and destroying nothing (the threads, and
 * the locks they may hold, stayed with the parent). */
typedef struct mm__bridge_ops {
  void (*flush)(mm_loop_t *loop, void *bridge);
  void (*free)(mm_loop_t *loop, void *bridge);
  void (*forget)(void *bridge);
} mm__bridge_ops_t;

/* ---- loops --------------------------------------------------------------- */

enum mm__loop_state {
  MM__LOOP_OPEN,
  MM__LOOP_STOPPING,          /* mm_loop_stop/free called: final */
  MM__LOOP_CLOSING,           /* mm_loop_free is closing the handles */
};

struct mm_loop {
  uv_loop_t *uv;              /* own_uv or the borrowed one */
  uv_loop_t own_uv;
  bool borrowed;
  pthread_t owner;            /* borrowed: the thread that runs uv_run */
  unsigned fork_gen;          /* mm__fork_generation() when made: another
                                 value means inherited across fork */
  mm_loop_options_t opt;

  /* handles; the bell is ref'd only while the loop has work (drive.c) */
  uv_poll_t bell;             /* other threads wake the loop: drive.c */
  int bell_r, bell_w;         /* its fds (one eventfd, or a pipe)*/
  uv_idle_t idle;             /* active while coroutines are ready */
  uv_prepare_t prepare;       /* drains posts before libuv blocks */
  uv_check_t check;
  _Atomic int asleep;         /* 1 from the prepare's last check until the
                                 poll returns: posters must ring the bell */
  bool poll_first;            /* loop thread: poll the queues a while
                                 before sleeping (answers came quickly) */
  uint64_t sleep_start;       /* loop thread: uv_hrtime() at asleep = 1 */
  _Atomic uint64_t woken_at;  /* uv_hrtime() of the first post that found
                                 the loop asleep (remote.c), 0: none;
                                 a hint for poll_first, relaxed */
  uv_timer_t uvtimer;         /* drives the timer heap (timer.c) */
  unsigned handles_closed;

  /* scheduler, loop thread */
  mm__ctx_t sched_ctx;        /* the driver's context while a coroutine runs */
  mm_coro_t *back;            /* the coroutine that last switched to sched */
  mm_coro_t *switch_from;     /* who made the latest switch (NULL: sched) */
  unsigned budget;            /* steps left before libuv polls again */
  /* With slow_step_ms: published for the watchdog (watchdog.c, "What the
   * loop thread publishes"); stored by the loop thread only, relaxed. */
  _Atomic uint64_t step_seq;    /* the current or last step's number */
  _Atomic uint64_t step_start;  /* uv_hrtime() at its start; 0 between */
  _Atomic int step_tid;         /* kernel id of the thread running steps */
  pthread_t step_thread;        /* loop thread: who stored step_tid */
  _Atomic uint64_t step_counted; /* the last slow step counted: exchanged
                                    by step_end and the watchdog (acq_rel),
                                    whoever gets another number counts */
  struct mm__watchdog *watchdog; /* NULL unless slow_step_ms; set before
                                    the loop is used, freed by free */
  mm__list_t ready;           /* mm_coro_t.link */
  mm__list_t live;            /* mm_coro_t.all: admitted, not ended */
  mm__list_t zombies;         /* mm_coro_t.all: ended, handle not given back */
  _Atomic uint64_t nlive;     /* written by the loop thread only; read
                                 anywhere (mm_loop_stats) */
  uint64_t njoining;          /* zombies whose joiner was woken, not yet
                                 released */
  uint64_t next_id;
  bool stop_done;             /* the stop has been carried out */
  void *asan_sched_fake;
  void *asan_sched_bottom;
  size_t asan_sched_size;
  void *tsan_sched_fiber;

  /* timer heap, loop thread */
  mm__timer_t **heap;
  size_t heap_n;
  size_t heap_cap;
  uint64_t timer_seq;

  /* mm_wait_fd's poll handles (wait-fd.c), loop thread */
  struct mm__fd_poll **fd_polls;  /* by fd number, NULL where none; grows */
  size_t fd_polls_cap;
  mm__list_t fd_polls_all;    /* every one made: mm__fd_poll.link */
  mm__list_t fd_sets;         /* the inner epoll sets (the last is in use)
                                 with their handles: mm__fd_set.link */

  /* stack cache, loop thread (or the thread holding mu while undriven) */
  mm__list_t cache;           /* mm_coro_t.link, the latest first */
  size_t ncache;
  mm__timer_t cache_timer;    /* empties blocks cached long (stack.c) */
  /* spare blocks for spawns from other threads (stack.c); mu */
  mm__list_t spare;           /* mm_coro_t.link */
  unsigned nspare;
  _Atomic bool spare_wanted;  /* a foreign spawn took one: refill;
                                 written under mu, read without it by
                                 the loop's prepare (relaxed: a stale
                                 value only delays a refill by a pass) */

  /* remote queue: a Treiber stack of coroutines, see remote.c.  Its four
   * words are written by every posting thread: a cache line of their own
   * (mm__aligned_zalloc), so that posts do not take from the loop's
   * thread the line holding what it writes at every pass (the cache's
   * count above), nor the reverse. */
  _Alignas(MM__CACHE_LINE)
  _Atomic(mm__mpsc_node_t *) remote_head;  /* mm_coro_t.remote */
  _Atomic uint64_t pending;   /* foreign spawns accepted, not yet admitted;
                                 incremented under mu */
  _Atomic unsigned posting;   /* posters inside push_remote */
  _Atomic(mm__mpsc_node_t *) tasks;  /* mm__loop_task_t.node */

  /* life cycle; protected by mu */
  _Alignas(MM__CACHE_LINE) pthread_mutex_t mu;
  pthread_cond_t cv;          /* signalled when driven turns false */
  _Atomic bool driven;        /* some thread drives the loop; written
                                 under mu; always true when borrowed */
  bool background;            /* mm_loop_start's thread exists */
  pthread_t bg_thread;
  _Atomic int state;          /* enum mm__loop_state; written under mu */

  /* The bridge layer's per-loop state (bridge/), made on first use and
   * torn down by ops->free from mm_loop_free once no coroutine is left.
   * lib/ only stores and calls them.  Set with mm__loop_set_bridge. */
  _Atomic(void *) bridge;
  const mm__bridge_ops_t *bridge_ops;

  /* statistics */
  _Atomic uint64_t coros_spawned;
  _Atomic uint64_t slow_steps;  /* added to by the loop thread and the
                                   watchdog (fetch_add), read anywhere */
  _Atomic uint64_t tcp_accept_dropped;  /* connections its listeners took
                                   and closed out of descriptors (tcp.c);
                                   loop thread writes (mm__counter_add) */
};

/* What a blocking call run for a coroutine (bridge/) sees of it: the
 * coroutine's own state while the coroutine surely waits for the call, or
 * a snapshot taken when the call may be abandoned, since the coroutine may
 * then end (and its block be reused) while the call still runs. */
typedef struct mm__proxy {
  mm_coro_t *handle;          /* the coroutine's handle (may go stale) */
  mm_loop_t *loop;
  mm__locals_t *locals;       /* the coroutine's, or the snapshot's */
  mm__waiter_t *caller;       /* its caller thread, or NULL */
  _Atomic int *cancel;        /* the call's own cancellation */
  const _Atomic int *coro_cancel;  /* the coroutine's, or NULL: snapshot */
  bool waited;                /* the coroutine cannot go on before the call
                                 returns (not abandonable): a wait of the
                                 call for it would wait for itself */
} mm__proxy_t;

/* Thread-local state of the calling thread. */
typedef struct mm__tls {
  mm_loop_t *loop;            /* loop this thread drives right now (an
                                 owned loop: inside drive(); a borrowed
                                 one: while it has work, see drive.c) */
  mm_coro_t *coro;            /* coroutine running on this thread */
  const mm__proxy_t *proxy;   /* the coroutine on whose behalf this thread
                                 runs a blocking call (bridge/), or NULL */
  mm_loop_t *serves;          /* the loop whose worker, lane or sensitive
                                 thread this is (bridge/), or NULL */
  mm__locals_t locals;        /* plain-thread locals */
  mm__deadlines_t deadlines;  /* plain-thread deadlines */
} mm__tls_t;

/* initial-exec: a plain %fs-relative access, no __tls_get_addr call on
 * every switch (the library is not meant to be dlopen'ed late; glibc keeps
 * static TLS room for such libraries if it is). */
extern __thread mm__tls_t mm__tls __attribute__((tls_model("initial-exec")));

/* loop.c, remote.c */
void mm__loop_post(mm_coro_t *c, unsigned bits);   /* any thread */
/* mm__loop_post in two steps: push queues the bits (lock-free) and
 * returns c's loop, which stays valid until poke (posting counted);
 * poke sees them handled: by the driver, woken if asleep, or here under
 * loop->mu if nobody drives the loop.  Not on the loop's thread. */
mm_loop_t *mm__loop_push(mm_coro_t *c, unsigned bits);
void mm__loop_poke(mm_loop_t *loop);
void mm__loop_post_spawn(mm_coro_t *c);            /* pending counted */
void mm__loop_update_refs(mm_loop_t *loop);
void mm__loop_wake_ready(mm_loop_t *loop);         /* start idle */
/* remote.c: handles what other threads queued (mu held when nobody
 * drives the loop); sees queued events handled now (mm__loop_poke without
 * the posting count). */
void mm__loop_drain(mm_loop_t *loop);
void mm__loop_kick(mm_loop_t *loop);
/* drive.c: the loop's own libuv handles (bell, idle, prepare, check);
 * runs the loop on this thread until it has nothing left; cancels every
 * live coroutine once the loop is stopping (once). */
int  mm__loop_handles_init(mm_loop_t *loop);
/* Wakes the loop's thread: any thread, async-signal-safe (a write). */
void mm__loop_ring(mm_loop_t *loop);
/* Closes the bell's fds, once its handle has closed. */
void mm__loop_bell_close(mm_loop_t *loop);
void mm__loop_drive(mm_loop_t *loop);
void mm__loop_process_stop(mm_loop_t *loop);
bool mm__on_loop_thread(const mm_loop_t *loop);
/* Made by another process: this is a child forked since.  A system call:
 * for life-cycle calls, not per request. */
bool mm__loop_inherited(const mm_loop_t *loop);

/* Work for the loop's thread posted from anywhere (the run_async inbox).
 * run is called on the loop's thread; with shutdown set, the loop is
 * stopping and the task must only answer its poster.  The task lives
 * wherever the poster keeps it; run is the loop's last access. */
struct mm__loop_task {
  mm__mpsc_node_t node;       /* in loop->tasks */
  void (*run)(mm__loop_task_t *t, mm_loop_t *loop, bool shutdown);
};
/* Any thread.  -ESHUTDOWN once the loop is stopping (then run is never
 * called).  Runs t->run on the loop's thread in posting order. */
int mm__loop_submit(mm_loop_t *loop, mm__loop_task_t *t);
/* Runs fn(loop, arg) on the loop's thread and waits for it: right here on
 * that thread, or under mu if nobody drives the loop, else as a task.
 * Colour-blind.  -ESHUTDOWN (then fn never runs) once the loop stops, or
 * mm__wait_init's errors. */
int mm__loop_call_arg(mm_loop_t *loop, void (*fn)(mm_loop_t *, void *),
                      void *arg);
#define mm__loop_call(loop, fn) mm__loop_call_arg((loop), (fn), NULL)

/* Loop thread.  Spawns fn(arg) for w, which is woken with the status when
 * it ends; no handle exists, so nobody else can cancel or join it (the
 * loop's stop or free still cancels it).  The coroutine starts with a copy
 * of locals (the blocked caller's). */
int mm__spawn_for(mm_loop_t *loop, mm_fn fn, void *arg,
                  const mm_spawn_options_t *o, mm__wait_t *w,
                  const mm__locals_t *locals, mm__waiter_t *caller);

/* mm_join that also tells whether the coroutine's loop was stopping when
 * the coroutine's status was taken (read while the loop surely exists). */
int mm__join(mm_coro_t *c, bool *loop_stopping);
/* The same, calling before_release(arg) once c has ended and before its
 * handle goes: the last moment anyone may still use the handle (groups
 * stop cancelling it there). */
int mm__join_hook(mm_coro_t *c, bool *loop_stopping,
                  void (*before_release)(void *arg), void *arg);

/* Installs the bridge state if none is there yet and the loop is not
 * stopping; returns the one in place (ours or an earlier one), or NULL.
 * Any thread. */
void *mm__loop_set_bridge(mm_loop_t *loop, void *bridge,
                          const mm__bridge_ops_t *ops);
bool mm__loop_stopping(const mm_loop_t *loop);
/* Whether new work may be given to loop: -EINVAL (NULL), -ECHILD
 * (inherited across fork), -ESHUTDOWN (stopping), else 0. */
int mm__loop_check(const mm_loop_t *loop);

/* A counter with one writer (the loop thread) and readers anywhere: a
 * relaxed load and store, no locked instruction. */
static inline void mm__counter_add(_Atomic uint64_t *c, int64_t d) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) +
                               (uint64_t) d, memory_order_relaxed);
}
static inline uint64_t mm__counter_get(_Atomic uint64_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

/* stack.c */
/* The stack cache: a block cached MM__STACK_CACHE_IDLE_MS ago or more,
 * below the MM__STACK_CACHE_WARM most recent, has its stack emptied
 * (MADV_DONTNEED). */
#define MM__STACK_CACHE_WARM 8
#define MM__STACK_CACHE_IDLE_MS 1000
mm_coro_t *mm__coro_alloc(mm_loop_t *loop, size_t stack_size, bool cached);
/* Tests: make guards by mprotect from now on, as on kernels before 6.13;
 * and whether guards are page-table markers (known after a first block). */
void mm__stack_guard_mprotect(void);
/* Tests: forget which guards work, as a new process has (white box). */
void mm__stack_guard_unknown(void);
bool mm__stack_guard_is_marker(void);
/* vm.max_map_count, and the mappings this process holds now (lines of
 * /proc/self/maps); 0 where /proc cannot tell. */
unsigned mm__max_map_count(void);
unsigned mm__maps_in_use(void);
void mm__coro_unmap(mm_coro_t *c);
void mm__coro_cache_put(mm_loop_t *loop, mm_coro_t *c);
/* Spawns from threads that do not drive the loop take a block kept for
 * them (mu held; NULL: none, or not the default size), and the loop's
 * thread refills those from its cache (takes mu). */
mm_coro_t *mm__coro_spare_take(mm_loop_t *loop, size_t stack_size);
void mm__coro_spare_refill(mm_loop_t *loop);
void mm__coro_cache_sweep(mm_loop_t *loop, uint64_t now);   /* uv_now() */
void mm__coro_cache_on_timer(mm__timer_t *t);
void mm__cache_free(mm_loop_t *loop);
size_t mm__page_size(void);

/* handle.c: public handles with a generation.  A block owns a slot while
 * it is mapped.  pin: the block of a handle that is not stale, pinned
 * (not reused until unpinned), or NULL; a pinned section never blocks.
 * retire: the handle goes (any later pin fails); waits for pinners. */
int  mm__slot_new(mm_coro_t *c, mm_loop_t *loop);
/* Registers handle.c's and log.c's fork handlers (once); forks counted
 * since, as a child sees them: a loop made before a fork is inherited. */
void mm__fork_init(void);
unsigned mm__fork_generation(void);
void mm__log_before_fork(void);
void mm__log_after_fork(bool child);
void mm__slot_free(mm_coro_t *c);
mm_coro_t *mm__handle_make(mm_coro_t *c);
mm_coro_t *mm__handle_pin(const mm_coro_t *h);
void mm__handle_unpin(mm_coro_t *c);
/* The block of a handle that is not stale, without a pin on the thread
 * that drives its loop (*pinned false: only that thread reuses blocks of
 * the loop), else pinned as by mm__handle_pin; NULL if stale. */
mm_coro_t *mm__handle_get(const mm_coro_t *h, bool *pinned);
void mm__handle_retire(mm_coro_t *c);
/* dump.c: "ready", "running", "waiting", "ended", as mm_loop_dump says */
const char *mm__coro_state_name(enum mm__coro_state s);

/* watchdog.c: the slow-step watchdog */
typedef struct mm__watchdog mm__watchdog_t;
int  mm__watchdog_start(mm_loop_t *loop);  /* sets loop->watchdog */
void mm__watchdog_stop(mm_loop_t *loop);   /* joins it; NULL: nothing */
int  mm__thread_tid(void);                 /* the kernel's id of this thread */
/* The kernel's state of thread tid of this process ('R' running or
 * waiting for a CPU, 'S' asleep, 'D' in I/O...), or 0 if /proc cannot
 * tell (tid <= 0: no kernel id known). */
char mm__thread_state(int tid);

/* guard.c */
void mm__guard_install(void);   /* once per process */
void mm__guard_thread(void);    /* once per thread that runs coroutines */

/* sched.c */
void mm__sched_run_ready(mm_loop_t *loop);
void mm__coro_make_ready(mm_coro_t *c);            /* loop thread */
void mm__coro_admit(mm_coro_t *c);                 /* loop thread */
void mm__coro_interrupt(mm_coro_t *c);             /* loop thread */
/* Why c's waits must stop now: its cancellation reason, else ETIMEDOUT
 * once the earliest of its deadlines has passed, else 0.  Its own thread
 * of control. */
int  mm__coro_stop_reason(const mm_coro_t *c);
/* The deadlines of the calling context (coroutine or plain thread), or
 * NULL on a loop's thread outside coroutines. */
mm__deadlines_t *mm__deadlines_here(void);
/* Whether ds's earliest deadline has passed (and is not held). */
bool mm__deadline_passed(const mm__deadlines_t *ds);
/* Whether a deadline of ds applies now (one pushed, not held); then *ms
 * is what is left of the earliest, rounded up, 0 once it has passed. */
bool mm__deadline_ms_left(const mm__deadlines_t *ds, uint64_t *ms);
/* A plain thread's wait with *timeout_ms (0: none): its deadline, if one
 * applies, shortens it to what is left; -ETIMEDOUT if that has passed. */
int mm__thread_timeout(uint64_t *timeout_ms);
/* Suspends the deadlines of the calling context around a wait that must
 * finish whatever the time (a cancelled child waited for). */
void mm__deadline_hold(void);
void mm__deadline_release(void);
/* Frees a deadline stack's memory. */
void mm__deadlines_free(mm__deadlines_t *ds);
/* await.c: mm_wake's slot.  EMPTY -> BUSY (one waker, CAS) -> FULL
 * (release) -> EMPTY (the await that takes it, loop thread). */
enum { MM__SLOT_EMPTY, MM__SLOT_BUSY, MM__SLOT_FULL };
/* Loop thread: completes c's mm_await if it is parked in one and its
 * slot is full; else leaves the slot for the next await. */
void mm__await_check(mm_coro_t *c);
void mm__coro_wake_local(mm_coro_t *c, int status);
void mm__coro_release(mm_coro_t *c);               /* loop thread */
int  mm__coro_cancel_reason(const mm_coro_t *c);
/* The cancellation of the calling context, as mm_cancelled() sees it:
 * the running coroutine's, or in a blocking call run for one the call's
 * own or its coroutine's; ECANCELED, ETIMEDOUT, or 0. */
int  mm__cancel_reason_here(void);
int  mm__park(mm__wait_t *w);                      /* coroutine */
void mm__coro_suspend(mm_coro_t *c);               /* coroutine */
void mm__cancel_all(mm_loop_t *loop);
/* Ends the ready coroutines that never ran and are cancelled (a stop of a
 * loop nobody drives: none has started).  Loop thread or mu holder. */
void mm__sched_end_unstarted(mm_loop_t *loop);

#endif /* MM_INTERNAL_H */
