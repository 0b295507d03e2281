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

enum { MM_AFFINITY_POOL = 0, MM_AFFINITY_CALLER = 1, MM_AFFINITY_LANE = 2 };

typedef struct mm_loop mm_loop_t;
typedef struct mm_coro mm_coro_t;
typedef struct mm_lane mm_lane_t;

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
 * Call it on the thread that runs uv.  Errors: -EINVAL, -ENOMEM, -EAGAIN
 * (as mm_loop_new). */
MM_EXTERN int mm_loop_from_uv(mm_loop_t **loop, uv_loop_t *uv,
                              const mm_loop_options_t *o);

/* The libuv loop under loop (owned or borrowed); NULL if loop is NULL. */
MM_EXTERN uv_loop_t *mm_loop_uv(mm_loop_t *loop);

/* Runs the loop on the calling thread until no coroutine is left and no
 * request is pending, or until mm_loop_stop().  May be called again later.
 * Returns 0.  Errors: -EINVAL (NULL, borrowed loop), -EBUSY (already
 * running on some thread, or started), -ESHUTDOWN (stopped), -EDEADLK
 * (called from a coroutine or from inside another loop's run), -ECHILD
 * (a loop inherited across fork(), see mm_loop_free). */
MM_EXTERN int mm_loop_run(mm_loop_t *loop);

/* Runs the loop on a new background thread until it is stopped or freed.
 * Errors: -EINVAL, -EBUSY (already running), -ESHUTDOWN, -EAGAIN (thread
 * creation failed), -ECHILD (inherited across fork()). */
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
 * never joined.  Not from the loop's own thread while it runs (-EBUSY; the
 * loop is left untouched), nor from a thread the loop would wait for --
 * its workers, lanes and sensitive thread, or any thread running a
 * blocking call for one of its coroutines (-EDEADLK; the loop is left
 * usable).
 * Handles of the loop's coroutines are invalid afterwards.
 * Errors: -EINVAL, -EBUSY, -EDEADLK.
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
 * or being freed), -ENOMEM (no memory for a stack). */
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
 * handles are always recognised), -EDEADLK (a coroutine joining itself
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
 * Errors: -EINVAL (NULL, already detached or joined: a stale handle). */
MM_EXTERN int mm_detach(mm_coro_t *coro);

/* Requests cancellation.  Any thread.  The coroutine's current suspension
 * (mm_sleep, mm_join, mm_yield, ...) and every later one returns
 * -ECANCELED at once (-ETIMEDOUT instead if its spawn deadline came
 * first); mm_cancelled() turns true.  Cancelling a coroutine
 * that has ended, or twice, does nothing.  Errors: -EINVAL (NULL, or a
 * stale handle: joined, or detached and ended; it never acts on a later
 * coroutine). */
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
 * its spawn deadline.  On a plain thread: sched_yield(), 0.  On a loop's
 * thread outside coroutines: -EDEADLK. */
MM_EXTERN int mm_yield(void);

/* Waits ms milliseconds.  Colour-blind.  Returns 0, -ECANCELED or
 * -ETIMEDOUT (the coroutine was cancelled or is past its spawn deadline,
 * meanwhile or before the call), -EDEADLK (on a loop's thread outside a
 * coroutine). */
MM_EXTERN int mm_sleep(uint64_t ms);

/* In a coroutine: whether its cancellation was requested.  Elsewhere:
 * false. */
MM_EXTERN bool mm_cancelled(void);


/* ---- The bridges ------------------------------------------------------- */

typedef struct mm_sync_options {
  int        affinity;          /* MM_AFFINITY_*; default POOL */
  mm_lane_t *lane;              /* with MM_AFFINITY_LANE */
  uint64_t   timeout_ms;        /* 0 = none; acts as a cancel of this call
                                   with -ETIMEDOUT at the deadline */
  bool       abandon_on_cancel; /* a running call cancelled: return at once,
                                   let it finish on its own */
  void     (*cleanup)(void *arg, int status);  /* runs when an abandoned
                                   call ends, on its thread; may be NULL */
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
 * block anyway -- except with MM_AFFINITY_LANE, where it runs on the lane
 * and this thread waits.
 *
 * Cancellation of the coroutine (-ECANCELED; -ETIMEDOUT past its spawn
 * deadline) or the call's own deadline (timeout_ms, -ETIMEDOUT): a call
 * made while the coroutine's cancellation is pending never runs and
 * returns that code, and so does a call still queued (it is removed); a
 * call running is waited for and its value returned, the coroutine's
 * cancellation staying pending -- unless abandon_on_cancel, which returns
 * the code at once and calls cleanup(arg, status) when fn ends.
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
 * Errors of the bridge: -EINVAL (fn NULL, bad options), -EDEADLK (on a
 * loop's thread outside a coroutine), -ECANCELED, -ETIMEDOUT, -ENOMEM,
 * -EAGAIN (no worker thread could be started). */
MM_EXTERN int mm_run_sync(mm_fn fn, void *arg);
MM_EXTERN int mm_run_sync_ex(mm_fn fn, void *arg, const mm_sync_options_t *o);

typedef struct mm_async_options {
  const char *name;             /* the coroutine's name, for diagnostics */
  uint64_t    timeout_ms;       /* 0 = none; then the coroutine is
                                   cancelled, waited for, -ETIMEDOUT */
} mm_async_options_t;

/* Fills o with the defaults (all zero).  Any thread. */
MM_EXTERN void mm_async_options_init(mm_async_options_t *o);

/* Runs fn(arg) as a coroutine of loop and returns its status.
 *
 * On a plain thread (a worker and a lane included): the call is posted to
 * the loop and this thread blocks until the coroutine ends; no memory is
 * allocated per call.  If the loop has not run for a second meanwhile, a
 * warning is logged (the call keeps waiting).  The coroutine starts with
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
 * was cancelled), -ENOMEM.  A calling coroutine's cancellation or
 * deadline cancels fn's coroutine and waits for it, as mm_join does. */
MM_EXTERN int mm_run_async(mm_loop_t *loop, mm_fn fn, void *arg);
MM_EXTERN int mm_run_async_ex(mm_loop_t *loop, mm_fn fn, void *arg,
                              const mm_async_options_t *o);

/* A lane: one thread of its own that runs the calls sent to it
 * (MM_AFFINITY_LANE) one at a time, in order -- for resources that must
 * stay on one thread.  The thread is named "mm-lane-NAME".
 * Errors: -EINVAL, -ESHUTDOWN (loop stopping), -ENOMEM, -EAGAIN. */
MM_EXTERN int mm_lane_new(mm_loop_t *loop, const char *name, mm_lane_t **lane);

/* Waits for the lane's queued calls to finish, then ends its thread.
 * Colour-blind (in a coroutine the wait goes to the pool, as a run_sync
 * call).  Errors: -EINVAL, -EDEADLK (from the lane's own thread, or a
 * loop's thread outside coroutines), -ECANCELED or -ETIMEDOUT (the
 * calling coroutine was cancelled or is past its spawn deadline before a
 * worker took the wait up; the lane is left as it was). */
MM_EXTERN int mm_lane_free(mm_lane_t *lane);


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
 * -ENOMEM. */
MM_EXTERN int mm_group_new(mm_loop_t *loop, mm_group_t **g);

/* Spawns fn(arg) as a child: from the group's own children (and the
 * blocking calls they make) until mm_group_wait returns; from anyone else
 * only before mm_group_wait is called (-EBUSY after: the wait may return
 * and free g meanwhile).  -ECANCELED once the group is cancelled (by
 * mm_group_cancel, a failure, or its waiter's cancellation); the errors
 * of mm_spawn otherwise. */
MM_EXTERN int mm_group_spawn(mm_group_t *g, mm_fn fn, void *arg);

/* Cancels every child still running; later spawns are refused.  Any
 * thread.  The children's statuses after it are not failures. */
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
 * nothing is freed. */
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
 * its spawn deadline (above).  -EDEADLK on a loop's thread outside
 * coroutines, -EINVAL for a NULL ch. */
MM_EXTERN int mm_chan_send(mm_chan_t *ch, void *item);

/* Takes the oldest item, waiting while the channel is empty.  -EPIPE
 * once the channel is closed and drained.  -ECANCELED / -ETIMEDOUT, as
 * mm_chan_send; -EDEADLK, -EINVAL (ch or item NULL). */
MM_EXTERN int mm_chan_recv(mm_chan_t *ch, void **item);

/* Closes ch and wakes every waiter (with -EPIPE); receivers still drain
 * what is queued.  Any thread, raw loop callbacks included.  -EPIPE if
 * already closed. */
MM_EXTERN int mm_chan_close(mm_chan_t *ch);

/* Frees ch; items still queued are dropped.  -EBUSY while anyone waits
 * in it (close it first).  Any thread; nothing may use ch afterwards. */
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
 * in a coroutine past its spawn deadline, -ETIMEDOUT.  A name that does
 * not resolve: -EHOSTUNREACH.  Other errors are libuv's (negative errno
 * values: -ECONNREFUSED, -EADDRINUSE...). */
typedef struct mm_tcp mm_tcp_t;

/* Listens on host:port (host NULL or "": every address; port 0: any free
 * one, see mm_tcp_port).  backlog <= 0: 128.  Names are resolved on a
 * worker thread.  Connections wait in the kernel's queue (backlog) until
 * an mm_tcp_accept takes them.  A listener holds two descriptors: its
 * socket, and one kept for running out of them (mm_tcp_accept). */
MM_EXTERN int mm_tcp_listen(mm_tcp_t **srv, const char *host, int port,
                            int backlog);

/* The port srv is bound to (> 0), or a negative error.  Any thread. */
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
 * call returns -EMFILE (or -ENFILE) and the connections stay queued. */
MM_EXTERN int mm_tcp_accept(mm_tcp_t *srv, mm_tcp_t **conn);

/* Connects to host:port (host NULL or "": the loopback).  -ECANCELED /
 * -ETIMEDOUT: the coroutine was cancelled or is past its spawn deadline
 * (the new handle is closed and freed; *conn is NULL). */
MM_EXTERN int mm_tcp_connect(mm_tcp_t **conn, const char *host, int port);

/* Waits for data: returns how many bytes (> 0) were put in buf, 0 at the
 * end of the stream, or a negative error: -ECANCELED / -ETIMEDOUT when
 * the coroutine was cancelled or is past its spawn deadline (c stays
 * usable), -ECANCELED also when c is closed meanwhile. */
MM_EXTERN ssize_t mm_tcp_read(mm_tcp_t *c, void *buf, size_t len);

/* Writes all of buf: 0 once it is written, or a negative error:
 * -ECANCELED / -ETIMEDOUT when the coroutine was cancelled or is past its
 * spawn deadline before the write went out (the connection is closed;
 * close c still), -ECANCELED also when c is closed meanwhile. */
MM_EXTERN int mm_tcp_write(mm_tcp_t *c, const void *buf, size_t len);

/* Closes c (a connection or a listener) and frees it; whoever waits in it
 * gets -ECANCELED. */
MM_EXTERN int mm_tcp_close(mm_tcp_t *c);


/* ---- Diagnostics ------------------------------------------------------- */

typedef struct mm_stats {
  uint64_t coros_live, coros_spawned;
  uint64_t sync_calls;          /* mm_run_sync calls sent to the pool */
  uint64_t sync_queued;         /* waiting in the pool's queue now */
  uint64_t sync_running;        /* running on a worker now */
  uint64_t async_calls;         /* mm_run_async calls made */
  /* API.md, "Diagnostics": lane_calls and lane_queued come here, before
   * tcp_accept_dropped. */
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
 * outside coroutines). */
MM_EXTERN int mm_loop_dump(mm_loop_t *loop, FILE *out);

/* Sends the library's messages to fn (NULL restores the default: stderr,
 * WARN and above).  Any thread; applies to all loops. */
MM_EXTERN void mm_set_log(mm_log_fn fn, void *data);

#ifdef __cplusplus
}
#endif
#endif /* MIXMODE_H */
