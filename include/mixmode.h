/* mixmode: blocking and asynchronous code in one C program.
 *
 * An async core -- a libuv loop running stackful coroutines -- and, on top
 * of it, bridges between coroutines and plain threads.  This header is all
 * a user includes.  Conventions:
 *
 *   - Functions return 0 or a negative errno value (libuv's convention);
 *     mm_strerror() explains each, with the library's meaning.
 *   - Handles are opaque; out-parameters are set to NULL on failure.
 *   - Options structs have an _init() function; 0 means "default" or "none".
 *   - "Colour-blind" waiting calls (mm_join, mm_sleep) suspend only the
 *     calling coroutine when called from one, block the calling thread when
 *     called from a plain thread, and return -EDEADLK when called on a
 *     loop's own thread outside any coroutine (a raw libuv callback), where
 *     blocking would stall the loop they wait for.
 *   - Cancellation and deadlines: every waiting call a coroutine makes
 *     (mm_yield, mm_sleep, mm_join, mm_run_sync, mm_run_async,
 *     mm_lane_free, mm_chan_send, mm_chan_recv, mm_group_wait and the TCP
 *     calls) returns -ECANCELED once the coroutine is cancelled (mm_cancel,
 *     its loop's stop or free), and -ETIMEDOUT once it is past its spawn
 *     deadline (mm_spawn_options_t.timeout_ms) -- the same code whether the
 *     cancellation comes while the call waits or was already pending when
 *     it was made.  The first of the two to come is the coroutine's reason
 *     for good.  What a call completed before that stands (a channel
 *     transfer, a run_sync call that ran; see each call).
 */
#ifndef MIXMODE_H
#define MIXMODE_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
# define MM_EXTERN __attribute__((visibility("default")))
#else
# define MM_EXTERN /* nothing */
#endif

#include <uv.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define MM_VERSION_MAJOR 0
#define MM_VERSION_MINOR 1
#define MM_VERSION_PATCH 0
#define MM_VERSION_HEX ((MM_VERSION_MAJOR << 16) | (MM_VERSION_MINOR << 8) | \
                        (MM_VERSION_PATCH))

enum { MM_LOG_DEBUG, MM_LOG_INFO, MM_LOG_WARN, MM_LOG_ERROR };

enum { MM_AFFINITY_POOL = 0, MM_AFFINITY_CALLER = 1, MM_AFFINITY_LANE = 2,
       MM_AFFINITY_LANESET = 3 };

/* What mm_wait_fd waits for and reports (a bit set). */
enum { MM_READABLE = 1, MM_WRITABLE = 2 };

typedef struct mm_loop mm_loop_t;
typedef struct mm_coro mm_coro_t;
typedef struct mm_lane mm_lane_t;
typedef struct mm_laneset mm_laneset_t;

/* The one function type for coroutine bodies and blocking functions.
 * Returns 0 or a negative errno value. */
typedef int (*mm_fn)(void *arg);

/* Receives the library's diagnostics (see mm_set_log). */
typedef void (*mm_log_fn)(int level, const char *msg, void *data);


/* ---- Errors and version ------------------------------------------------ */

/* Explains err (a negative errno value, or 0) with the library's meaning
 * where it has one (-EDEADLK: the call would block the loop's own thread).
 * Never NULL; the string is static.  Any thread. */
MM_EXTERN const char *mm_strerror(int err);

/* "MAJOR.MINOR.PATCH" of the library actually linked.  Any thread. */
MM_EXTERN const char *mm_version(void);


/* ---- Loops ------------------------------------------------------------- */

typedef struct mm_loop_options {
  size_t   stack_size;        /* coroutine stack in bytes; 0 = 256 KiB */
  unsigned pool_min_threads;  /* workers kept alive; default 0 */
  unsigned pool_max_threads;  /* 0 = default: 64 */
  unsigned pool_idle_ms;      /* idle worker exits after this; 0 = 10000 */
  unsigned slow_step_ms;      /* report a coroutine step that holds the
                                 loop this long, while it holds it (below);
                                 0 = off, unless the environment has
                                 MIXMODE_DEBUG=1, which sets 100 */
} mm_loop_options_t;

/* slow_step_ms: a loop with it set has a watchdog thread, which wakes
 * about once per slow_step_ms and otherwise sleeps.  When one coroutine
 * has run for slow_step_ms without suspending, it logs a warning while
 * the coroutine still runs: the coroutine's id and name, the function it
 * was spawned with, how long so far, and the loop thread's backtrace;
 * again each time the same step has gone on for another 10 x slow_step_ms
 * (at least 1 s), and once more, with the total, when the step ends (at
 * INFO; a step that ended before the watchdog saw it gets that line as a
 * warning instead).  mm_stats_t.slow_steps counts each such step once.
 * Function names come from the dynamic symbol table: link the program
 * with -rdynamic to see its own (otherwise the module and offset are
 * given, for addr2line).
 *   The backtrace is taken by sending SIGURG to the loop thread, whose
 * handler records it.  The handler is installed only if SIGURG has no
 * handler when the first such loop is made (and MIXMODE_NO_SIGNALS is not
 * 1), and removed with the last one; if the program uses SIGURG, or
 * blocks it on the loop thread, the warning says so and has no name,
 * function or backtrace.  The signal interrupts a system call the step is
 * blocked in: most are restarted, but some (nanosleep, poll) return
 * EINTR. */

/* stack_size: each coroutine stack is mapped with a 64 KiB guard below
 * it that faults on any touch, so an overflow (even by a frame that holds
 * a large buffer) is reported, see mm_loop_new, and never writes into the
 * next stack.  Only the pages a coroutine touches take memory: about one
 * (4 KiB) for a connection parked in mm_tcp_read.  On Linux 6.13 and
 * later the guards are page-table markers and stacks take no mappings of
 * their own; on older kernels each coroutine takes two, and
 * vm.max_map_count (65530 by default) limits a process to about 32,700
 * live coroutines: mm_spawn returns -ENOMEM and the log says to raise
 * vm.max_map_count.  A loop keeps up to 64 stacks of the default size of
 * ended coroutines for its next spawns; those left unused for a second,
 * below the 8 cached last, give their touched pages back to the system. */

/* Fills o with the defaults.  Any thread. */
MM_EXTERN void mm_loop_options_init(mm_loop_options_t *o);

/* Creates a loop with its own libuv loop.  o may be NULL (defaults).
 * Any thread.  Errors: -EINVAL (loop NULL, bad options), -ENOMEM, -EAGAIN
 * (with slow_step_ms: no thread for its watchdog), or a libuv error when
 * the uv loop cannot be initialised.
 *
 * The first loop of the process (made by this or mm_loop_from_uv)
 * installs a SIGSEGV/SIGBUS handler that names a coroutine whose stack
 * overflowed.  It is installed once, in front of the handler there then,
 * and hands everything else to that one (a raised SIGSEGV still kills).
 * MIXMODE_NO_SIGNALS=1 in the environment leaves the signals alone (and
 * the slow-step watchdog's SIGURG, see slow_step_ms). */
MM_EXTERN int mm_loop_new(mm_loop_t **loop, const mm_loop_options_t *o);

/* Creates a loop on an existing libuv loop that the user keeps running with
 * uv_run().  mm_loop_free() then closes the handles it added and runs uv
 * until they are closed, so that uv_loop_close(uv) succeeds afterwards.
 * Call it on the thread that runs uv.  Errors: -EINVAL (loop or uv NULL,
 * bad options), -ENOMEM, -EAGAIN (as mm_loop_new). */
MM_EXTERN int mm_loop_from_uv(mm_loop_t **loop, uv_loop_t *uv,
                              const mm_loop_options_t *o);

/* The libuv loop under loop (owned or borrowed); NULL if loop is NULL. */
MM_EXTERN uv_loop_t *mm_loop_uv(mm_loop_t *loop);

/* Runs the loop on the calling thread until no coroutine is left and no
 * request is pending, or until mm_loop_stop().  May be called again later.
 * Returns 0.  Errors: -EINVAL (NULL, borrowed loop), -EBUSY (already
 * running on some thread, or started, or called from inside its own run),
 * -ESHUTDOWN (stopped), -EDEADLK (called from a coroutine or from inside
 * another loop's run), -ECHILD (a loop inherited across fork(), see
 * mm_loop_free). */
MM_EXTERN int mm_loop_run(mm_loop_t *loop);

/* Runs the loop on a new background thread until it is stopped or freed.
 * Errors: -EINVAL (NULL, borrowed loop), -EBUSY (already running),
 * -ESHUTDOWN, -EAGAIN (thread creation failed), -ECHILD (inherited across
 * fork()). */
MM_EXTERN int mm_loop_start(mm_loop_t *loop);

/* Stops the loop: final.  Any thread; asynchronous.  New requests (spawns)
 * get -ESHUTDOWN from now on, live coroutines are cancelled, and the loop's
 * run returns once they have finished.  On a loop nobody runs at the
 * moment (never started, or between two mm_loop_run calls) the stop is
 * carried out at once: every caller waiting in mm_run_async is answered
 * (-ESHUTDOWN) and the coroutines that never ran end cancelled.
 * Idempotent.  Errors: -EINVAL, -ECHILD (inherited across fork()). */
MM_EXTERN int mm_loop_stop(mm_loop_t *loop);

/* Shuts the loop down and frees it: stops it, cancels live coroutines and
 * lets them finish (running the loop on the calling thread when nobody else
 * does), joins the threads it started, and releases everything.  It logs a
 * warning for each coroutine still alive when it is called (id, name,
 * state as mm_loop_dump gives it, age in ms) and for each coroutine handle
 * never joined.  Not from the loop's own thread while it runs or from one
 * of its coroutines, nor, for a borrowed loop, from another thread than
 * the one that runs uv (-EBUSY; the loop is left untouched), nor from a
 * thread the loop would wait for -- its workers, lanes and sensitive
 * thread, or any thread running a blocking call for one of its
 * coroutines (-EDEADLK; the loop is left usable).
 * Handles of the loop's coroutines are invalid afterwards.
 * Errors: -EINVAL (NULL), -EBUSY, -EDEADLK (both as above), and for an
 * inherited loop (below) libuv's error if uv_loop_fork fails on its own
 * uv loop (nothing freed).
 *
 * In a child process forked after the loop was made, the loop is the
 * parent's: every call on it (run, start, stop, spawn, run_async, lanes,
 * groups, dump) or on its coroutines' handles (join, detach, cancel)
 * returns -ECHILD, and mm_loop_free releases
 * its memory at once without running its coroutines or joining its
 * threads (they stayed with the parent; an owned uv loop is given its own
 * kernel state first, so that the parent's loop is left alone; on a
 * borrowed one, call uv_loop_fork first, as libuv requires).  The child
 * may make and use new loops. */
MM_EXTERN int mm_loop_free(mm_loop_t *loop);


/* ---- Coroutines -------------------------------------------------------- */

typedef struct mm_spawn_options {
  const char *name;           /* copied; shown in diagnostics */
  size_t      stack_size;     /* 0 = the loop's */
  uint64_t    timeout_ms;     /* 0 = none; at the deadline the coroutine is
                                 cancelled with -ETIMEDOUT: its waiting
                                 calls return -ETIMEDOUT, and so does its
                                 join (see the conventions at the top) */
} mm_spawn_options_t;

/* Fills o with the defaults (all zero).  Any thread. */
MM_EXTERN void mm_spawn_options_init(mm_spawn_options_t *o);

/* Starts a coroutine running fn(arg) on loop.  Any thread.  If coro is not
 * NULL it receives a handle that must be given to mm_join() or mm_detach()
 * exactly once; if coro is NULL the coroutine is detached.  A handle is an
 * opaque value with a generation, not an address: once it is given back
 * (joined, or detached and ended) every call with it returns -EINVAL and
 * never reaches a later coroutine, even one that reuses its memory.  The coroutine
 * starts with a copy of the spawner's locals and inherits nothing else.
 * A coroutine cancelled before it first runs never runs; its status is
 * -ECANCELED (or -ETIMEDOUT).
 * Errors: -EINVAL (NULL loop or fn, bad options), -ESHUTDOWN (loop stopped
 * or being freed), -ENOMEM (no memory or no mapping for a stack: see
 * stack_size in mm_loop_options_t), -ECHILD (a loop inherited across
 * fork(), see mm_loop_free). */
MM_EXTERN int mm_spawn(mm_loop_t *loop, mm_fn fn, void *arg, mm_coro_t **coro);
MM_EXTERN int mm_spawn_ex(mm_loop_t *loop, mm_fn fn, void *arg,
                          const mm_spawn_options_t *o, mm_coro_t **coro);

/* Waits for the coroutine to end and returns its status: fn's value, or
 * -ECANCELED / -ETIMEDOUT if it was cancelled before it ran or timed out.
 * Frees the handle (except when it returns -EINVAL or -EDEADLK).
 * Colour-blind: suspends a calling coroutine (of any loop), blocks a
 * plain thread; a coroutine that has already ended is never waited for.
 * If the joining coroutine is cancelled, the joined one is cancelled too
 * and waited for, then -ECANCELED is returned (-ETIMEDOUT if the joining
 * coroutine is past its own spawn deadline).
 * Errors: -EINVAL (NULL, a detached or already joined handle: stale
 * handles are always recognised; or another caller is joining it),
 * -ENOMEM (a plain thread's waiter could not be allocated: the join could
 * not wait, and the handle was given up as by mm_detach), -ECHILD (the
 * coroutine's loop was inherited across fork()), -EDEADLK (a coroutine
 * joining itself
 * or one that waits for it through a chain of joins, even across loops --
 * of two joins that close a ring at once at least one gets it --, a
 * blocking call joining the coroutine it runs for, or a call on a loop's
 * thread outside a coroutine: the handle is left untouched and may be
 * joined later). */
MM_EXTERN int mm_join(mm_coro_t *coro);

/* Gives up the handle: the coroutine runs on and is freed when it ends.
 * Nobody sees its status then, so a failure is logged as a warning when it
 * ends (id, name, status and its mm_strerror text): any status but 0,
 * except -ECANCELED after a cancellation that was asked for (the loop's
 * stop or free, an mm_cancel before the detach).  The same holds for a
 * coroutine spawned without a handle.  Any thread.
 * Errors: -EINVAL (NULL, already detached or joined: a stale handle; or
 * another caller is joining it), -ECHILD (the coroutine's loop was
 * inherited across fork()). */
MM_EXTERN int mm_detach(mm_coro_t *coro);

/* Requests cancellation.  Any thread.  The coroutine's current suspension
 * (mm_sleep, mm_join, mm_yield, ...) and every later one returns
 * -ECANCELED at once (-ETIMEDOUT instead if its spawn deadline came
 * first); mm_cancelled() turns true.  Cancelling a coroutine
 * that has ended, or twice, does nothing.  Errors: -EINVAL (NULL, or a
 * stale handle: joined, or detached and ended; it never acts on a later
 * coroutine), -ECHILD (the coroutine's loop was inherited across
 * fork()). */
MM_EXTERN int mm_cancel(mm_coro_t *coro);

/* The calling coroutine, or NULL on a plain thread / outside coroutines.
 * In a run_sync call: the awaiting coroutine's handle (with
 * abandon_on_cancel, possibly stale by the time it is used). */
MM_EXTERN mm_coro_t *mm_current(void);

/* The name given at spawn, or "" if none; NULL if coro is NULL or stale.
 * Valid until the handle is given back. */
MM_EXTERN const char *mm_coro_name(const mm_coro_t *coro);

/* Lets the other ready coroutines of the loop run, then continues.
 * In a coroutine: 0, or -ECANCELED once cancelled, -ETIMEDOUT once past
 * its spawn deadline or a deadline of mm_deadline_push.  On a plain
 * thread: sched_yield(), 0.  On a loop's thread outside coroutines:
 * -EDEADLK. */
MM_EXTERN int mm_yield(void);

/* Waits ms milliseconds.  Colour-blind.  Returns 0, -ECANCELED or
 * -ETIMEDOUT (the coroutine was cancelled or is past its spawn deadline,
 * meanwhile or before the call; -ETIMEDOUT also past a deadline of
 * mm_deadline_push, on a plain thread too), -EDEADLK (on a loop's thread
 * outside a coroutine), -ENOMEM (in a coroutine: no memory for the loop's
 * timer). */
MM_EXTERN int mm_sleep(uint64_t ms);

/* In a coroutine: whether its cancellation was requested.  Elsewhere:
 * false. */
MM_EXTERN bool mm_cancelled(void);


/* ---- The bridges ------------------------------------------------------- */

typedef struct mm_sync_options {
  int        affinity;          /* MM_AFFINITY_*; default POOL */
  mm_lane_t *lane;              /* with MM_AFFINITY_LANE */
  uint64_t   timeout_ms;        /* 0 = none; this call's own deadline (it
                                   never cancels the coroutine) */
  bool       abandon_on_cancel; /* a running call cancelled or past its
                                   deadline: return at once, let fn finish
                                   on its own */
  void     (*cleanup)(void *arg, int status);  /* owner of arg when the
                                   call returns a bridge error (below);
                                   may be NULL */
  void     (*on_cancel)(void *arg);  /* asks a running fn to stop
                                   (sqlite3_interrupt, PQcancel); may be
                                   NULL */
  mm_laneset_t *laneset;        /* with MM_AFFINITY_LANESET */
} mm_sync_options_t;

/* Fills o with the defaults (all zero).  Any thread. */
MM_EXTERN void mm_sync_options_init(mm_sync_options_t *o);

/* Runs the blocking or CPU-bound fn(arg) off the loop and returns its
 * value.
 *
 * In a coroutine: the call goes to the loop's worker pool (or to a lane),
 * the coroutine is suspended and the loop serves the others meanwhile.
 * Pool calls made while the loop runs its ready coroutines reach the pool
 * together, in order, once they all have run or one of them yields (or
 * 64 at a time when many coroutines call).
 * No memory is allocated per call (except with abandon_on_cancel).
 * Inside fn, mm_current() is the awaiting coroutine, its locals are
 * visible, mm_cancelled() tells whether it (or this call) was cancelled,
 * and a nested mm_run_sync runs inline.  With abandon_on_cancel the
 * coroutine may end while fn runs, so fn sees a copy of its locals taken
 * when the call was made (never another coroutine's, never freed memory),
 * and its caller thread and handle as they were then; if the call is not
 * abandoned after all, the copy, with fn's changes, becomes the
 * coroutine's when the call returns.
 * On a plain thread (and in a worker): fn runs inline -- the thread may
 * block anyway -- except with MM_AFFINITY_LANE and MM_AFFINITY_LANESET,
 * where it runs on the lane (the set) and this thread waits.
 *
 * Cancellation of the coroutine, and the call's own deadline (timeout_ms):
 * - a call still queued is removed and never runs: -ECANCELED /
 *   -ETIMEDOUT (so is a call made while the coroutine's cancellation is
 *   already pending: it is accepted, then cancelled at once);
 * - a running call: on_cancel(arg) runs once, on the loop's thread, while
 *   fn still runs (it never runs for a queued call, never twice, never
 *   after the call returned fn's value or after cleanup).  Past its own
 *   deadline the call returns -ETIMEDOUT, at once with abandon_on_cancel,
 *   else when fn returns; the deadline does not cancel the coroutine.
 *   Cancelled, the call returns -ECANCELED at once with abandon_on_cancel;
 *   without it the call is waited for and returns fn's value, the
 *   coroutine's cancellation staying pending for its next suspension.
 *   "While fn runs" starts when a thread takes the call: on_cancel may
 *   come just before fn reaches its driver's query, and some drivers
 *   forget an interrupt asked before a statement starts (SQLite does).
 *   So fn should also stop at mm_cancelled(), which turns true before
 *   on_cancel runs (for the coroutine's cancel and for the call's own
 *   deadline): SQLite's progress handler returning mm_cancelled() does.
 *   on_cancel runs on the loop's thread: a blocking one (PQcancel, a
 *   round trip) holds the loop meanwhile.
 * - From a plain thread, a lane or lane-set call waits for fn however
 *   long: timeout_ms, on_cancel and abandon_on_cancel apply to calls from
 *   coroutines only.
 *
 * Who owns arg, one rule: cleanup(arg, status) is called exactly once for
 * every call that returns -ECANCELED, -ETIMEDOUT or -ESHUTDOWN, and never
 * for any other return.  A call that returns fn's value hands arg back; a
 * call refused at once (-EINVAL, -EDEADLK, -ENOMEM, -EAGAIN) never took
 * it.  status is fn's value if fn ran, else the bridge's code.  cleanup
 * runs, for a call whose fn never ran, on the calling thread before the
 * call returns; for one whose fn ran, on fn's thread after fn returns --
 * before the call returns, except with abandon_on_cancel, where the call
 * has already returned.  fn itself must not return -ECANCELED, -ETIMEDOUT
 * or -ESHUTDOWN (they are the bridge's: map a driver's "interrupted" to
 * another code, such as -EINTR).
 *
 * Pool sizing: the pool starts workers on demand, up to pool_max_threads.
 * Calls that return quickly (or compute without blocking) do not grow it
 * past what keeps the CPUs busy -- about one awake worker per CPU, the
 * loop's thread being the one more; calls that block (on a lock, a
 * sleep, I/O: the kernel is asked, on Linux through /proc) get a thread
 * each.  A queue that has not moved for 100 ms gets one more worker.
 *
 * When every worker is busy at pool_max_threads, calls wait in the queue
 * in order; one that has waited a second is reported through the log
 * (once while calls keep waiting): the workers' calls may be waiting for
 * the loop themselves (mm_run_async), a deadlock only a cancel or a
 * timeout ends.
 *
 * MM_AFFINITY_CALLER (thread-sensitive calls): fn runs on the plain thread
 * blocked in mm_run_async waiting -- directly, through joins of spawned
 * children, or through nested bridges -- for the calling coroutine, so
 * that thread-local state (a driver connection opened there) keeps being
 * seen.  A coroutine with no such thread runs these calls on the loop's
 * one sensitive thread ("mm-sensitive"), in order, one at a time.
 *
 * Errors of the bridge: -EINVAL (fn NULL, bad options: an unknown
 * affinity, MM_AFFINITY_LANE without lane, MM_AFFINITY_LANESET without
 * laneset), -EDEADLK (on a loop's thread outside a coroutine),
 * -ECANCELED, -ETIMEDOUT, -ESHUTDOWN (the loop, the lane or the set is
 * shutting down), -ENOMEM (the loop's bridge state at its first call, a
 * plain thread's waiter for a lane call, an abandon_on_cancel call's
 * request), -EAGAIN (no worker thread, or the loop's sensitive thread,
 * could be started). */
MM_EXTERN int mm_run_sync(mm_fn fn, void *arg);
MM_EXTERN int mm_run_sync_ex(mm_fn fn, void *arg, const mm_sync_options_t *o);

typedef struct mm_async_options {
  const char *name;             /* the coroutine's name, for diagnostics */
  uint64_t    timeout_ms;       /* 0 = none; bounds the caller's whole
                                   wait, from the call: a loop that has
                                   not taken the call by then never runs
                                   it; a coroutine that runs is cancelled
                                   at the deadline and waited for; either
                                   way -ETIMEDOUT */
} mm_async_options_t;

/* Fills o with the defaults (all zero).  Any thread. */
MM_EXTERN void mm_async_options_init(mm_async_options_t *o);

/* Runs fn(arg) as a coroutine of loop and returns its status.
 *
 * On a plain thread (a worker and a lane included): the call is posted to
 * the loop and this thread blocks until the coroutine ends; no memory is
 * allocated per call (one small block with a timeout).  If the loop has
 * not run for a second meanwhile, a warning is logged (the call keeps
 * waiting, until its timeout if it has one, even for a loop not started
 * yet).  The coroutine starts with
 * a copy of this thread's locals (in a worker: of the coroutine it runs
 * the call for).  While it waits, the thread runs the MM_AFFINITY_CALLER
 * calls of that coroutine and of the coroutines it spawns.
 * In a coroutine: spawn and join -- no thread hop on the same loop, a
 * suspension until the other loop's coroutine ends otherwise.
 * Errors: -EINVAL (NULL loop or fn), -EDEADLK (on a loop's thread outside
 * coroutines, and on the thread a borrowed loop belongs to for a call to
 * that loop, whether or not it has coroutines), -ESHUTDOWN (the loop is
 * stopping, was stopped or freed while the call waited: every waiting
 * caller is answered), -ETIMEDOUT (timeout_ms passed, or a calling
 * coroutine is past its spawn deadline), -ECANCELED (a calling coroutine
 * was cancelled), -ENOMEM, -ECHILD (a loop inherited across fork(), see
 * mm_loop_free).  A calling coroutine's cancellation or deadline cancels
 * fn's coroutine and waits for it, as mm_join does. */
MM_EXTERN int mm_run_async(mm_loop_t *loop, mm_fn fn, void *arg);
MM_EXTERN int mm_run_async_ex(mm_loop_t *loop, mm_fn fn, void *arg,
                              const mm_async_options_t *o);

/* A lane: one thread of its own that runs the calls sent to it
 * (MM_AFFINITY_LANE) one at a time, in order -- for resources that must
 * stay on one thread.  The thread is named "mm-lane-NAME".
 * Errors: -EINVAL (loop or lane NULL), -ESHUTDOWN (loop stopping),
 * -ENOMEM, -EAGAIN (the lane's thread could not be started), -ECHILD (a
 * loop inherited across fork()). */
MM_EXTERN int mm_lane_new(mm_loop_t *loop, const char *name, mm_lane_t **lane);

/* Waits for the lane's queued calls to finish, then ends its thread.
 * Colour-blind (in a coroutine the wait goes to the pool, as a run_sync
 * call).  Errors: -EINVAL (NULL), -EDEADLK (from the lane's own thread,
 * or a loop's thread outside coroutines), -ECANCELED or -ETIMEDOUT (the
 * calling coroutine was cancelled or is past a deadline before a worker
 * took the wait up; the lane is left as it was), and from a coroutine:
 * -ESHUTDOWN (its loop stops: the lane is left to mm_loop_free), -EAGAIN
 * (no worker could be started for the wait).  Once a worker has begun
 * the wait it finishes and the answer is 0, whatever came meanwhile. */
MM_EXTERN int mm_lane_free(mm_lane_t *lane);

/* Lane sets: count lanes that share one FIFO queue; a call
 * (MM_AFFINITY_LANESET with .laneset) goes to the first idle lane.  Each
 * lane opens a resource of its own on its own thread and keeps it (a
 * connection of a driver that must stay on the thread that opened it).
 * A set's calls are counted in mm_stats_t's lane_calls and lane_queued;
 * from a plain thread a call runs on the set and the thread waits, as
 * with MM_AFFINITY_LANE. */
typedef struct mm_laneset_options {
  const char *name;           /* threads "mm-NAME-1".."mm-NAME-count",
                                 NAME shortened to fit 15 characters
                                 (the index is kept); NULL: "laneset" */
  unsigned    count;          /* lanes, >= 1; _init() sets 1 */
  int       (*open)(void **state, void *arg);  /* may be NULL; runs on
                                 each lane's own thread before it takes
                                 calls; *state (NULL before) is what
                                 mm_lane_state() returns in its calls; a
                                 negative value fails mm_laneset_new */
  void      (*close)(void *state, void *arg);  /* may be NULL; runs on
                                 each lane's thread when the set is freed,
                                 after the calls */
  void       *arg;            /* given to open and close */
} mm_laneset_options_t;

/* Fills o with the defaults: count 1, the rest zero.  Any thread. */
MM_EXTERN void mm_laneset_options_init(mm_laneset_options_t *o);

/* Starts count lane threads for loop, runs open on each (at once, each on
 * its own thread), and returns once all have opened.  If an open fails,
 * the lanes already opened run close, every thread is joined, and its
 * value is returned (nothing is left).  Colour-blind: in a coroutine the
 * wait for the opens goes to the pool (a cancelled coroutine gets
 * -ECANCELED if it had not started); elsewhere, the calling thread waits
 * (a loop's thread outside coroutines included: keep open short there).
 * Errors: -EINVAL (loop, o or set NULL,
 * count 0), -ESHUTDOWN (the loop is stopping or stopped), -ENOMEM,
 * -EAGAIN (a thread could not be started), -ECHILD (a loop inherited
 * across fork()), -ECANCELED / -ETIMEDOUT (a coroutine cancelled or past
 * its spawn deadline before a worker took the wait up), or the failing
 * open's value.  *set is NULL on error. */
MM_EXTERN int mm_laneset_new(mm_loop_t *loop, const mm_laneset_options_t *o,
                             mm_laneset_t **set);

/* Waits for the set's queued calls to finish, runs close on each lane's
 * thread, and ends the threads; every close has run when it returns.
 * Colour-blind (in a coroutine the wait goes to the pool).  A set not
 * freed is freed by mm_loop_free, with a warning.  Errors: -EINVAL (NULL),
 * -EDEADLK (from one of the set's own threads, or a loop's thread
 * outside coroutines), -ECANCELED or -ETIMEDOUT (a cancelled coroutine,
 * or one past a deadline, before a worker took the wait up: the set is
 * left as it was; once begun, the free finishes and returns 0), and from
 * a coroutine: -ESHUTDOWN (its loop stops: the set is left to
 * mm_loop_free), -EAGAIN (no worker could be started for the wait). */
MM_EXTERN int mm_laneset_free(mm_laneset_t *set);

/* Inside a call running on a lane of a set: the state that lane's open
 * made (NULL if it has no open).  Anywhere else (a worker, a lane, a
 * coroutine, a plain thread): NULL.  Any thread. */
MM_EXTERN void *mm_lane_state(void);


/* ---- Locals ------------------------------------------------------------ */

/* Stores value under the address key for the calling coroutine (its own;
 * children spawned later start with a copy) or, on a plain thread, for that
 * thread.  Storing NULL removes the key.
 * Errors: -EINVAL (key NULL), -ENOMEM. */
MM_EXTERN int mm_local_set(const void *key, void *value);

/* The value stored under key, or NULL when unset. */
MM_EXTERN void *mm_local_get(const void *key);


/* ---- Groups (structured concurrency) ------------------------------------ */

/* Children spawned into a group run as coroutines of its loop; the group
 * ends with mm_group_wait, which waits for all of them. */
typedef struct mm_group mm_group_t;

/* Any thread.  Errors: -EINVAL (NULL), -ESHUTDOWN (loop stopping),
 * -ENOMEM, -ECHILD (a loop inherited across fork()). */
MM_EXTERN int mm_group_new(mm_loop_t *loop, mm_group_t **g);

/* Spawns fn(arg) as a child: from the group's own children (and the
 * blocking calls they make) until mm_group_wait returns; from anyone else
 * only before mm_group_wait is called (-EBUSY after: the wait may return
 * and free g meanwhile).  -ECANCELED once the group is cancelled (by
 * mm_group_cancel, a failure, or its waiter's cancellation); -EINVAL (g
 * or fn NULL), -ENOMEM; the errors of mm_spawn otherwise. */
MM_EXTERN int mm_group_spawn(mm_group_t *g, mm_fn fn, void *arg);

/* mm_group_spawn with spawn options (o may be NULL): the child's name,
 * stack size, and timeout_ms -- a child past it ends with -ETIMEDOUT, a
 * failure, which cancels the others and is what mm_group_wait returns
 * (a deadline for one request of a batch).  -EINVAL for bad options. */
MM_EXTERN int mm_group_spawn_ex(mm_group_t *g, mm_fn fn, void *arg,
                                const mm_spawn_options_t *o);

/* Cancels every child still running; later spawns are refused.  Any
 * thread.  The children's statuses after it are not failures.  -EINVAL
 * for NULL. */
MM_EXTERN int mm_group_cancel(mm_group_t *g);

/* Waits for every child (colour-blind, like mm_join), then frees g.  The
 * first child to end with a non-zero status while the group was not
 * cancelled is its failure: it cancels the others, and the wait returns
 * its status; else 0.  A waiting coroutine that is cancelled cancels the
 * group, still waits for the children, and returns -ECANCELED
 * (-ETIMEDOUT if it is past its spawn deadline; so does a blocking call
 * run for such a coroutine that waits for a group).  On a
 * loop's thread outside a coroutine, in a child of g, or in a coroutine a
 * child waits for (a grandchild joined by its parent): -EDEADLK, and
 * nothing is freed.  -EINVAL for NULL. */
MM_EXTERN int mm_group_wait(mm_group_t *g);


/* ---- Channels ---------------------------------------------------------- */

/* A bounded FIFO queue of pointers between coroutines of any loops and
 * plain threads.  Sends and receives are colour-blind: in a coroutine they
 * suspend only that coroutine, on a plain thread they block it; on a
 * loop's thread outside a coroutine they return -EDEADLK.  Waiting senders
 * and receivers are served in order.  A waiting coroutine that is
 * cancelled returns -ECANCELED (-ETIMEDOUT past its spawn deadline) and
 * nothing was sent or received; if the transfer won the race, it stands
 * and the cancellation stays pending.  A call that can complete at once
 * does, cancelled or not; one that would wait returns the code at once.
 * The channel holds pointers only: what they point to stays the user's. */
typedef struct mm_chan mm_chan_t;

/* Errors: -EINVAL (ch NULL, capacity 0 or too large), -ENOMEM. */
MM_EXTERN int mm_chan_new(mm_chan_t **ch, size_t capacity);

/* Queues item, waiting while the channel is full; hands it straight to a
 * waiting receiver if there is one.  -EPIPE once the channel is closed
 * (also for a sender waiting when it closes: the item was not sent).
 * -ECANCELED / -ETIMEDOUT: the waiting coroutine was cancelled or is past
 * its spawn deadline (above), or past a deadline of mm_deadline_push.
 * -EDEADLK on a loop's thread outside coroutines, -EINVAL for a NULL ch,
 * -ENOMEM (a plain thread's waiter could not be allocated). */
MM_EXTERN int mm_chan_send(mm_chan_t *ch, void *item);

/* Takes the oldest item, waiting while the channel is empty.  -EPIPE
 * once the channel is closed and drained.  -ECANCELED / -ETIMEDOUT, as
 * mm_chan_send; -EDEADLK, -EINVAL (ch or item NULL), -ENOMEM, as
 * mm_chan_send. */
MM_EXTERN int mm_chan_recv(mm_chan_t *ch, void **item);

/* mm_chan_send that never waits: queues item (or hands it to a waiting
 * receiver) if there is room, else -EAGAIN; -EPIPE once closed.  Any
 * thread, raw libuv callbacks included (where mm_chan_send is -EDEADLK):
 * the way to hand a callback's result to a coroutine.  -EINVAL for NULL. */
MM_EXTERN int mm_chan_try_send(mm_chan_t *ch, void *item);

/* mm_chan_recv that never waits: takes the oldest item if there is one,
 * else -EAGAIN; -EPIPE once closed and drained.  Any thread, raw libuv
 * callbacks included.  -EINVAL for NULL ch or item. */
MM_EXTERN int mm_chan_try_recv(mm_chan_t *ch, void **item);

/* Closes ch and wakes every waiter (with -EPIPE); receivers still drain
 * what is queued.  Any thread, raw loop callbacks included.  -EPIPE if
 * already closed, -EINVAL for NULL. */
MM_EXTERN int mm_chan_close(mm_chan_t *ch);

/* Frees ch; items still queued are dropped.  -EBUSY while anyone waits
 * in it (close it first), -EINVAL for NULL.  Any thread; nothing may use
 * ch afterwards. */
MM_EXTERN int mm_chan_free(mm_chan_t *ch);


/* ---- TCP ----------------------------------------------------------------- */

/* TCP streams for coroutines.  A handle belongs to the loop of the
 * coroutine that made it: only that loop's coroutines may use it.  From a
 * plain thread: -EPERM; on a loop's thread outside a coroutine: -EDEADLK.
 * One read and one accept at a time per handle (-EBUSY otherwise); writes
 * queue.  Cancelling a coroutine parked in a read or an accept returns
 * -ECANCELED and leaves the handle usable; a write or a connect cannot be
 * taken back, so cancelling one closes the connection (the call returns
 * -ECANCELED; close the handle still; a write that had gone out whole
 * returns 0).  A coroutine past its spawn deadline gets the same with
 * -ETIMEDOUT.  A call made once the cancellation is pending is cancelled
 * the same way as soon as it waits.  A call on a handle that is being
 * closed (mm_tcp_close, or a cancelled write's) returns -ECANCELED -- or,
 * in a coroutine past its spawn deadline, -ETIMEDOUT.  Names are looked
 * up by libuv's getaddrinfo off the loop while the coroutine waits; a
 * name that does not resolve gets libuv's UV_EAI_* code (UV_EAI_NONAME:
 * unknown host), which mm_strerror explains.  Other errors are libuv's
 * (negative errno values: -ECONNREFUSED, -EADDRINUSE...). */
typedef struct mm_tcp mm_tcp_t;

/* Listens on host:port (host NULL or "": every address; port 0: any free
 * one, see mm_tcp_port).  backlog <= 0: 128.  A name: the first of its
 * addresses that can be bound.  Connections wait in the kernel's queue
 * (backlog) until an mm_tcp_accept takes them.  A listener holds two
 * descriptors: its socket, and one kept for running out of them
 * (mm_tcp_accept).  Errors: -EINVAL (srv NULL, port outside 0..65535),
 * -ENOMEM, and those above (the context's, a name's UV_EAI_*, the
 * system's: -EADDRINUSE...). */
MM_EXTERN int mm_tcp_listen(mm_tcp_t **srv, const char *host, int port,
                            int backlog);

/* The port srv is bound to (> 0), or a negative error: -EINVAL for NULL,
 * or getsockname's.  Any thread. */
MM_EXTERN int mm_tcp_port(mm_tcp_t *srv);

/* Waits for the next connection to srv.  -ECANCELED / -ETIMEDOUT: the
 * coroutine was cancelled or is past its spawn deadline (srv stays
 * usable); -ECANCELED also when srv is closed meanwhile.
 *
 * Out of file descriptors (EMFILE, ENFILE), the connections waiting
 * cannot be taken, and their clients would wait for nothing: srv gives up
 * the descriptor it keeps for this, accepts and closes every waiting
 * connection, so that their clients learn at once, takes the descriptor
 * back, and the call goes on waiting (libuv's listeners do the same,
 * silently).  Each such connection is counted in the loop's
 * mm_stats_t.tcp_accept_dropped and reported by a warning in the log
 * that names the listener (address:port), the error and RLIMIT_NOFILE's
 * soft limit, with the count since its last line: at most one line a
 * second per listener, at once for its first drop; what is left
 * unreported when it closes gets a last line then.  If srv has no such
 * descriptor (it was made with none to spare, and none is free now), the
 * call returns -EMFILE (or -ENFILE) and the connections stay queued.
 * -EINVAL: srv or conn NULL, or srv a connection; -EBUSY: another
 * coroutine is accepting on srv. */
MM_EXTERN int mm_tcp_accept(mm_tcp_t *srv, mm_tcp_t **conn);

/* Connects to host:port (host NULL or "": the loopback).  A name: each
 * of its addresses in the resolver's order until one connects; the last
 * one's error if none does.  -ECANCELED / -ETIMEDOUT: the coroutine was
 * cancelled or is past a deadline (the new handle is closed and freed;
 * *conn is NULL).  -EINVAL: conn NULL, port outside 0..65535; -ENOMEM. */
MM_EXTERN int mm_tcp_connect(mm_tcp_t **conn, const char *host, int port);

/* Waits for data: returns how many bytes (> 0) were put in buf, 0 at the
 * end of the stream, or a negative error: -ECANCELED / -ETIMEDOUT when
 * the coroutine was cancelled or is past its spawn deadline (c stays
 * usable), -ECANCELED also when c is closed meanwhile; -EINVAL (c or buf
 * NULL, len 0, c a listener); -EBUSY (another coroutine is reading c). */
MM_EXTERN ssize_t mm_tcp_read(mm_tcp_t *c, void *buf, size_t len);

/* Writes all of buf: 0 once it is written, or a negative error:
 * -ECANCELED / -ETIMEDOUT when the coroutine was cancelled or is past its
 * spawn deadline before the write went out (the connection is closed;
 * close c still), -ECANCELED also when c is closed meanwhile; -EPIPE or
 * -ECONNRESET when the peer has gone; -EINVAL (c NULL, buf NULL with len
 * > 0, len over UINT_MAX, c a listener).  SIGPIPE: the write is libuv's
 * write(2), which also raises SIGPIPE on a connection the peer closed,
 * and that kills by default; the library leaves the signal alone (no
 * MSG_NOSIGNAL through libuv, and its disposition is the program's), so
 * a program that writes to sockets ignores it: signal(SIGPIPE, SIG_IGN). */
MM_EXTERN int mm_tcp_write(mm_tcp_t *c, const void *buf, size_t len);

/* Closes c (a connection or a listener) and frees it; whoever waits in it
 * gets -ECANCELED.  -EINVAL for NULL (and -EPERM, -EDEADLK, above). */
MM_EXTERN int mm_tcp_close(mm_tcp_t *c);

/* TCP_NODELAY on or off (Nagle's algorithm off or on) for a connection.
 * From its loop's coroutines; -EINVAL for NULL, a listener or a
 * connection being closed. */
MM_EXTERN int mm_tcp_nodelay(mm_tcp_t *c, bool on);

/* TCP keep-alive on (first probe after delay_s seconds idle, >= 1) or off
 * (delay_s ignored).  From its loop's coroutines; -EINVAL for NULL, a
 * listener, a connection being closed, or on with delay_s 0. */
MM_EXTERN int mm_tcp_keepalive(mm_tcp_t *c, bool on, unsigned delay_s);


/* ---- Diagnostics ------------------------------------------------------- */

typedef struct mm_stats {
  uint64_t coros_live, coros_spawned;
  uint64_t sync_calls;          /* mm_run_sync calls sent to the worker
                                   pool (not to lanes, lane sets or caller
                                   threads) */
  uint64_t sync_queued;         /* waiting in the pool's queue now */
  uint64_t sync_running;        /* running on a worker now */
  uint64_t async_calls;         /* mm_run_async calls made */
  uint64_t lane_calls;          /* calls sent to the loop's lanes and lane
                                   sets (MM_AFFINITY_LANE, _LANESET), from
                                   coroutines and plain threads */
  uint64_t lane_queued;         /* of those, waiting for a lane now (not
                                   the running ones) */
  uint64_t tcp_accept_dropped;  /* connections the loop's listeners took
                                   and closed at once: the process was out
                                   of file descriptors (mm_tcp_accept) */
  unsigned pool_threads, pool_idle;
  uint64_t slow_steps;          /* steps of slow_step_ms or more, each
                                   counted once: at the watchdog's first
                                   report, or at its end */
} mm_stats_t;

/* Fills st with the loop's counters.  Any thread.  Each counter is exact
 * when read, the set is not one snapshot.  Errors: -EINVAL. */
MM_EXTERN int mm_loop_stats(mm_loop_t *loop, mm_stats_t *st);

/* Writes a line per live coroutine of the loop to out: id, name, state
 * (ready, running, waiting), whether it was cancelled, and age.  Any
 * thread: from elsewhere than the loop's thread the lines are written by
 * the loop's thread while the caller waits (so a loop that is driven but
 * stuck in a long step delays the dump).  Errors: -EINVAL (NULL),
 * -ESHUTDOWN (the loop is stopping), -EDEADLK (on another loop's thread
 * outside coroutines), -ECHILD (a loop inherited across fork()), -ENOMEM
 * (from another thread: no memory for the thread's waiter). */
MM_EXTERN int mm_loop_dump(mm_loop_t *loop, FILE *out);

/* Sends the library's messages to fn (NULL restores the default: stderr,
 * WARN and above).  Any thread; applies to all loops. */
MM_EXTERN void mm_set_log(mm_log_fn fn, void *data);


/* ---- Waiting for anything ---------------------------------------------- */

/* In a coroutine: suspends until mm_wake(this coroutine, status) and
 * returns status -- always: nothing the waker produced is lost.  The way
 * to wrap a callback API: start the operation with a callback that calls
 * mm_wake(coro, result), then mm_await.  A wake that came before the
 * await is kept, and this await returns it at once.
 * If the coroutine is cancelled (mm_cancel, its spawn deadline, a stop or
 * mm_loop_free) while it waits, on_cancel(arg) runs once, on the loop's
 * thread, and the wait goes on until the wake: on_cancel asks the
 * operation to stop (uv_cancel, uv_close, curl_multi_remove_handle), and
 * its callback must still call mm_wake -- an await never woken keeps its
 * coroutine, and mm_loop_free, waiting.  The cancellation stays pending
 * for the coroutine's next wait.  on_cancel may be NULL; a cancellation
 * already pending at entry runs it at once.  on_cancel must not wait: it
 * runs inside the loop, possibly inside another coroutine's mm_cancel.
 * Errors: -EPERM (a plain thread), -EDEADLK (a loop's thread outside
 * coroutines). */
MM_EXTERN int mm_await(void (*on_cancel)(void *arg), void *arg);

/* Completes coro's mm_await with status, or its next one if it is not in
 * one now (the wake is kept; one still kept when the coroutine ends is
 * dropped).  Any thread, raw libuv callbacks and other coroutines
 * included; never waits.  Errors: -EBUSY (a wake is pending already),
 * -EINVAL (NULL, or a stale handle: joined, or detached and ended),
 * -ECHILD (a coroutine of a loop inherited across fork). */
MM_EXTERN int mm_wake(mm_coro_t *coro, int status);

/* Waits until fd is ready for the events asked (MM_READABLE, MM_WRITABLE
 * or both) -- a pipe, a socket, a device, libpq's PQsocket -- or until
 * timeout_ms has passed (0: no timeout).  Colour-blind.
 *
 * In a coroutine: the coroutine suspends while its loop polls fd, and the
 * other coroutines run meanwhile; an fd ready already answers at the
 * loop's next poll (where the loop has no epoll: at once, without
 * suspending).  A wait that suspends costs one system call besides the
 * loop's own poll (and one collect shared by the fds ready together).
 * fd may be closed, and its number reused, between two waits, but not
 * while a coroutine waits on it (the wait may never see it).  fd's flags
 * (O_NONBLOCK) are left as they are.  The loop keeps a small record per
 * fd number it has waited on, so that waiting on the same fd again
 * allocates nothing; they go with mm_loop_free.
 * On a plain thread (a pool worker or a lane included): poll(2), resumed
 * after a signal with the time left.
 *
 * Returns the events ready among those asked (> 0).  An error or a
 * hang-up on fd reports every event asked: the next read or write tells
 * what happened.  Errors:
 *   -ETIMEDOUT  timeout_ms passed; or, in a coroutine, its spawn deadline
 *               did (before or during the wait); or a deadline of
 *               mm_deadline_push did
 *   -ECANCELED  the coroutine was cancelled (before or during the wait;
 *               mm_loop_stop and mm_loop_free cancel)
 *   -EDEADLK    on a loop's thread outside a coroutine (a raw libuv
 *               callback)
 *   -EBADF      fd is negative or not open
 *   -EINVAL     events is 0 or has bits other than the two
 *   -EBUSY      another coroutine of the loop waits on fd, or a libuv
 *               handle of the loop watches it (an mm_tcp_t reading it)
 *   -ENOMEM     no memory for the loop's handle or timer
 *   or what libuv says when it cannot watch fd (at the first
 *   wait on an fd number in a loop that has to suspend). */
MM_EXTERN int mm_wait_fd(int fd, int events, uint64_t timeout_ms);

/* Deadlines that do not cancel (Trio's move_on_after, Go's
 * context.WithTimeout): after mm_deadline_push(timeout_ms), every waiting
 * call of this coroutine returns -ETIMEDOUT once timeout_ms has passed
 * (0: passed already), until the matching mm_deadline_pop -- mm_sleep,
 * mm_yield, channels, mm_wait_fd, TCP reads and accepts (the connection
 * stays usable; a write or connect is closed, as a cancel does), and:
 *   - mm_join returns -ETIMEDOUT and leaves the handle and the child
 *     untouched (join again later), as with -EDEADLK;
 *   - mm_run_sync treats it as the call's own timeout_ms (a queued call
 *     never runs; a running one gets on_cancel, cleanup as API.md says);
 *   - mm_run_async and mm_group_wait cancel what they wait for, wait for
 *     it, and return -ETIMEDOUT;
 *   - mm_await runs on_cancel and goes on until its wake.
 * Deadlines nest; the earliest applies.  The coroutine itself is not
 * cancelled: after the pop it carries on normally.  Not inherited by
 * spawned children.  On a plain thread: mm_sleep, mm_wait_fd, channels,
 * mm_join, mm_group_wait and mm_run_async honour it (not lane calls).
 * mm_deadline_push: 0, -ENOMEM, -EDEADLK (a loop's thread outside
 * coroutines).  mm_deadline_pop: -ETIMEDOUT if the deadline it removes
 * has passed, else 0; -EINVAL without a push; -EDEADLK as above. */
MM_EXTERN int mm_deadline_push(uint64_t timeout_ms);
MM_EXTERN int mm_deadline_pop(void);

/* The loop of the calling coroutine, or, in a blocking call a coroutine
 * made (mm_run_sync: on a pool worker, a lane, its caller thread), the
 * loop of that coroutine.  NULL elsewhere: on a plain thread, and on a
 * loop's thread outside coroutines (a raw libuv callback).  Any thread. */
MM_EXTERN mm_loop_t *mm_loop_current(void);

#ifdef __cplusplus
}
#endif
#endif /* MIXMODE_H */
