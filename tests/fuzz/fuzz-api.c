/* fuzz-api: a libFuzzer harness that reads its input as a program of public
 * API operations over 2 loops and 4 plain threads, runs it, and checks the
 * library's promises afterwards (issue 8, "Proof that keeps them out").
 *
 * Input.  Byte 0 configures the run: bit 0, loop 1 starts undriven (it is
 * then driven only by the START and RUN operations, by a stop, or by its
 * free); bits 1 and 2, loop 0's and loop 1's pools have at most 2 threads
 * (else 8); bit 3, idle workers exit after 1 ms; bit 4, slow_step_ms is 1;
 * bit 5, each pool keeps 1 thread.  Every operation after it takes 4
 * bytes:
 *
 *   code   which operation (op_names below), modulo OP_COUNT
 *   where  top level, bits 0-2 modulo 6: who runs it (0-3: plain thread
 *          T0..T3, 4-5: a fresh coroutine of loop 0 or 1); bits 3-4: how
 *          many of the following operations form its body (SPAWN,
 *          RUN_SYNC, RUN_ASYNC, GSPAWN)
 *   a, b   the operation's parameters (slot, loop, options; see decode)
 *
 * A body is a sub-program run by the coroutine (SPAWN, RUN_ASYNC, GSPAWN)
 * or by the blocking function (RUN_SYNC) the operation starts; bodies nest
 * up to MAX_DEPTH.  The decoded program is a tree in which every node runs
 * at most once, so every node can record what its call returned.
 *
 * Order.  The main thread hands the top-level operations out in input
 * order: to a thread's FIFO mailbox, or as a new coroutine of a loop.  When
 * the executor is idle it waits until the operation has ended (quick ones:
 * spawn, cancel, close, stop...) or begun (those that may block), so the
 * order in which calls enter the library is the input's, except behind a
 * call that blocks (the next operations of that thread queue behind it).
 * Before the teardown it lets what runs go on while that makes progress.
 * Bodies run on their own.  The races inside the library stay real.
 *
 * Handles.  The harness never calls the library with a handle it may not
 * use: slots (8 coroutine handles, 3 channels, 2 groups) are claimed under
 * one harness mutex; a join or detach claims a handle for good and waits
 * for cancels in flight on it; a loop being freed takes no new users and
 * waits for those in flight (each holds a reference) after its stop.
 * Waits are kept acyclic by ranks: a coroutine in slot k (and what it
 * runs) waits only for slots above k and for groups; a group's children
 * wait for nothing of lower rank; a function running on lane N makes lane
 * calls only to higher lanes.  Channel waits end at the latest when the
 * channel is closed: the end of the program closes every channel,
 * cancels every handle and group, and stops the loops (a mid-program free
 * closes the channels, drives the other loop and stops its own), so that
 * a correct library lets everything return.
 *
 * Checks, after each input: every call returned once, with a code the
 * header documents for the function (allowed[] below) and consistent with
 * what happened (fn's value only if fn ran, -ETIMEDOUT only under a
 * deadline, no -EDEADLK where no wait is for itself, a group's failure
 * is a child's status...); cleanup ran as the ownership rule says; every
 * channel item sent was received or drained exactly once, no item whose
 * send failed was delivered, and items from one sender reach one
 * receiver in order; locals read what DESIGN.md says they hold; no
 * thread stayed blocked (a watchdog dumps the loops and aborts with
 * "hang" after FUZZ_HANG_S seconds, default 10); ASan/LSan and TSan see
 * the rest.  A violation prints the decoded program
 * with each node's result and aborts.  FUZZ_PRINT=1 in the environment
 * prints the decoded program of every input.
 *
 * Compile-time switches (-D..., see tests/fuzz/build.sh).  Each of the
 * first six turns on a pattern that main got wrong until f61cbe1 (issue
 * 8), and the seventh a check that it failed until issue 13; they are on,
 * and =0 keeps a pattern or check out should it break again:
 *   FUZZ_STALE            operations on handles already joined or
 *                         detached, expecting -EINVAL (8.3).
 *   FUZZ_STOP_UNDRIVEN    stop a loop nobody drives as it is; =0: the
 *                         harness starts it first (8.5: a thread in
 *                         mm_run_async on it was never answered).
 *   FUZZ_ABANDONED_BODY   a run_sync function that may be abandoned
 *                         (abandon_on_cancel) runs its body; =0: it only
 *                         sleeps, without asking mm_cancelled() (8.2: an
 *                         abandoned call's mm_spawn, mm_run_async,
 *                         mm_cancelled, mm_current and locals acted for a
 *                         coroutine that had ended).
 *   FUZZ_CALLER_ORPHANS   a coroutine that inherited a caller thread
 *                         without being waited for by it (spawned inside
 *                         a run_async body) makes MM_AFFINITY_CALLER
 *                         calls; =0: they go to the pool (8.4: the thread
 *                         leaving mm_run_async ran its queue from a list
 *                         that a deadline or cancel edited at once).
 *   FUZZ_CHAN_FREE_EARLY  a CHAN_FREE on a plain thread frees the channel
 *                         once its coroutine users are parked in it and
 *                         it is closed, without waiting for them to
 *                         return (nobody waits in a closed channel); =0:
 *                         it waits for every user (8.1: the cancel of a
 *                         coroutine woken by the close locked the freed
 *                         channel).
 *   FUZZ_FREE_IN_CALL     a FREE in a body run by one of a loop's own
 *                         threads (its pool, lane or sensitive thread)
 *                         frees that loop, expecting -EDEADLK; =0: such a
 *                         FREE is skipped (8.5: it hung).
 *   FUZZ_CLEANUP_API      API.md's ownership rule: every -ECANCELED,
 *                         -ETIMEDOUT and -ESHUTDOWN return of run_sync
 *                         called cleanup once, no other return did, and
 *                         on_cancel (set with cleanup) ran at most once,
 *                         never after cleanup or the call's return; =0:
 *                         the older rule (cleanup only for a call abandoned
 *                         while fn ran) that main followed until issue 9.
 *   FUZZ_STRICT_DOC       -ETIMEDOUT from mm_yield, the channel waits and
 *                         mm_group_wait only where a deadline applies: a
 *                         coroutine past its spawn deadline (run_async's
 *                         included), or a run_sync function whose call or
 *                         coroutine has one (issue 13: the header lists it
 *                         for every waiting call since; before, mm_yield
 *                         and the channel waits returned it undocumented
 *                         and mm_group_wait returned -ECANCELED instead);
 *                         =0: those calls may return it anywhere.
 * These stay off, as main still differs:
 *   FUZZ_GROUP_LATE_SPAWN=1 anyone may spawn into a group until its wait
 *                         returns, as the header said before f61cbe1; off:
 *                         only before the wait (or its own children), as
 *                         the header says now (a late spawn may touch the
 *                         group the wait frees).
 *   FUZZ_SLOW_STEP        config bit 4 sets slow_step_ms = 1 (the library's
 *                         watchdog thread, with SIGURG backtraces); on, but
 *                         off under TSan (TODO(#8): found/unconfirmed-tsan-
 *                         hang-slow-step).
 *   FUZZ_MAX_OPS=N        operations decoded at most (48; 12 under TSan,
 *                         where every new coroutine costs milliseconds).
 */
#include <mixmode.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_feature)
# if __has_feature(thread_sanitizer)
#  define FUZZ_TSAN 1
# endif
#endif

#ifndef FUZZ_STALE
# define FUZZ_STALE 1
#endif
#ifndef FUZZ_CLEANUP_API
# define FUZZ_CLEANUP_API 1
#endif
#ifndef FUZZ_STOP_UNDRIVEN
# define FUZZ_STOP_UNDRIVEN 1
#endif
#ifndef FUZZ_ABANDONED_BODY
# define FUZZ_ABANDONED_BODY 1
#endif
#ifndef FUZZ_CALLER_ORPHANS
# define FUZZ_CALLER_ORPHANS 1
#endif
#ifndef FUZZ_CHAN_FREE_EARLY
# define FUZZ_CHAN_FREE_EARLY 1
#endif
#ifndef FUZZ_FREE_IN_CALL
# define FUZZ_FREE_IN_CALL 1
#endif
#ifndef FUZZ_GROUP_LATE_SPAWN
# define FUZZ_GROUP_LATE_SPAWN 0
#endif
#ifndef FUZZ_STRICT_DOC
# define FUZZ_STRICT_DOC 1
#endif
#ifndef FUZZ_SLOW_STEP
# ifdef FUZZ_TSAN
#  define FUZZ_SLOW_STEP 0
# else
#  define FUZZ_SLOW_STEP 1
# endif
#endif
#ifndef FUZZ_MAX_OPS
# ifdef FUZZ_TSAN
#  define FUZZ_MAX_OPS 12
# else
#  define FUZZ_MAX_OPS 48
# endif
#endif

#define MAX_DEPTH 3
#define NTHREADS 4
#define NLOOPS 2
#define NSLOTS 8
#define NCHANS 3
#define NGRP 2
#define RANK_GROUP(g) (NSLOTS + (g))

/* ---- operations ------------------------------------------------------ */

enum op_code {
  OP_SPAWN, OP_JOIN, OP_DETACH, OP_CANCEL, OP_YIELD, OP_SLEEP, OP_RUN_SYNC,
  OP_RUN_ASYNC, OP_SEND, OP_RECV, OP_CLOSE, OP_CHAN_FREE, OP_GSPAWN,
  OP_GCANCEL, OP_GWAIT, OP_STOP, OP_FREE, OP_START, OP_RUN, OP_STALE,
  OP_LOCAL, OP_DUMP, OP_COUNT
};

static const char *const op_names[OP_COUNT] = {
  "SPAWN", "JOIN", "DETACH", "CANCEL", "YIELD", "SLEEP", "RUN_SYNC",
  "RUN_ASYNC", "SEND", "RECV", "CLOSE", "CHAN_FREE", "GSPAWN", "GCANCEL",
  "GWAIT", "STOP", "FREE", "START", "RUN", "STALE", "LOCAL", "DUMP"
};

/* Who runs a top-level operation: 0-3 threads, 4-5 loop coroutines. */
static int where_of(const uint8_t where) {
  return (where & 7) % 6;
}

static bool has_body(int code) {
  return code == OP_SPAWN || code == OP_RUN_SYNC || code == OP_RUN_ASYNC ||
         code == OP_GSPAWN;
}

typedef struct op op_t;

/* Where an operation (or a body) runs, for the rules on what it may wait
 * for and on which codes its calls may return. */
typedef struct ctx {
  int id;         /* who runs: 0 main, 1-4 T0..T3, 100 + op: the op's
                     coroutine, 1000 + op: the op's body */
  int rank;       /* waits only for ranks above this; -1: anything */
  int loop;       /* the coroutine's loop, or -1 on a plain thread */
  bool coro;      /* in a coroutine */
  bool timed;     /* the coroutine has a deadline (spawn or run_async) */
  bool call_timed; /* a run_sync function whose call or coroutine has a
                      deadline: it may see the coroutine's cancellation
                      reason as -ETIMEDOUT (mm_group_wait) */
  int group;      /* a child of this group (or runs for one), or -1 */
  int lane_min;   /* a plain thread that is lane N - 1 makes LANE calls
                     only to lanes >= N: two lanes waiting for each other
                     would wait for ever, and nothing cancels a thread */
  void **locals;  /* the two values its locals table must hold (keys
                     local_keys[0..1]), or NULL: not known (a lane's
                     thread keeps a table of its own) */
  bool any_ok;    /* locals may also read as NULL (an abandoned call) */
  int thread_of;  /* 1 + the loop whose pool, lane or sensitive thread
                     runs this (a run_sync function), or 0 */
  int caller;     /* the thread its MM_AFFINITY_CALLER calls go to: 0
                     none (the sensitive thread), 1 a thread blocked in
                     mm_run_async for it, 2 one it inherited from its
                     spawner, which may leave mm_run_async meanwhile */
  const char *who;
} ctx_t;

struct op {
  int id;
  uint8_t code, where, a, b;
  int depth;
  int kid0, nkid;             /* body: kids[kid0 .. kid0 + nkid) */
  int value;                  /* what a body returns */
  uint64_t timeout;           /* SPAWN, RUN_SYNC, RUN_ASYNC */
  bool abandon, cleanup;      /* RUN_SYNC */
  int sleep_ms;
  ctx_t body_ctx;             /* set when the body is started */
  void *own_locals[2];        /* the body's table, when it has its own */
  void *exec_locals[2];       /* a top-level op's coroutine's table */
  const char *fname;          /* the library function called */
  op_t *target;               /* JOIN: the SPAWN of the joined handle */

  _Atomic int begun, done;    /* the harness ran / finished the node */
  _Atomic int nret;           /* library calls of this node that returned */
  _Atomic int ret;
  _Atomic int skipped;
  const char *note;
  _Atomic int calling;        /* RUN_ASYNC: the library call was made */
  _Atomic int body_started, body_done;
  _Atomic int fn_runs, fn_done, cleanups, cleanup_status;
  _Atomic int on_cancels;     /* RUN_SYNC: on_cancel calls */
  _Atomic int stop_asked;     /* RUN_SYNC: on_cancel asked fn to stop */
  int ctx_id;                 /* SEND, RECV: the ctx_t id that ran it */
  void *chan;                 /* SEND, RECV: the hchan_t used */
  int got;                    /* RECV: the SEND whose item came, or -1 */
  int ginst;                  /* GSPAWN, GWAIT: the group's incarnation */
  _Atomic int deliveries;     /* SEND: how often its item was received */
  _Atomic int send_state;     /* SEND: 0 not sent, 1 ok, 2 failed */
};

static const int values[] = { 0, -EIO, -ENOENT };
static const uint64_t spawn_timeouts[] = { 0, 0, 1, 3 };
static const uint64_t sync_timeouts[] = { 0, 0, 1, 2 };

/* ---- harness state --------------------------------------------------- */

enum { CS_EMPTY, CS_SPAWNING, CS_LIVE, CS_CLAIMED };
enum { GS_EMPTY, GS_OPEN, GS_WAITING };

typedef struct hchan {
  struct hchan *next;         /* every channel of the input */
  mm_chan_t *ch;
  int users;                  /* calls in flight */
  int users_coro[NLOOPS];     /* of which by coroutines of each loop */
  bool closed, freed;
} hchan_t;

typedef struct hloop {
  mm_loop_t *l;
  mm_lane_t *lane;
  int refs;                   /* calls in flight that use the loop */
  bool dying;                 /* being freed: no new users */
  bool started;               /* mm_loop_start succeeded */
  _Atomic bool stopped;       /* a stop was asked (set before the call) */
} hloop_t;

typedef struct exec {
  pthread_t th;
  int q[FUZZ_MAX_OPS];
  int qh, qt;
  bool busy, quit;
  int idx;
  void *locals[2];            /* the thread's locals table */
} exec_t;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  op_t ops[FUZZ_MAX_OPS];
  int nops;
  int kids[FUZZ_MAX_OPS];     /* bodies, each a run of entries */
  int nkids;
  int top[FUZZ_MAX_OPS];
  int ntop;
  uint8_t config;

  hloop_t loops[NLOOPS];
  struct { mm_coro_t *h; int loop; int state; int uses; op_t *spawn;
           mm_coro_t *stale;          /* the handle last given back */
           int stale_loop;            /* its loop */
           op_t *stale_spawn;         /* its SPAWN */
           bool stale_detached;       /* given back by a detach */
         } slots[NSLOTS];
  hchan_t *chans[NCHANS];
  hchan_t *all_chans;
  struct { mm_group_t *g; int loop; int state; int uses; int inst; }
    groups[NGRP];
  exec_t ex[NTHREADS];
  bool teardown;
  int closing;                /* FREEs closing every channel: none made */
  _Atomic int fns_running;
  _Atomic uint64_t deadline_ns;  /* watchdog; 0 while idle */
  _Atomic(const char *) phase;
} S = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static const uint8_t *in_data;
static size_t in_size, in_pos;

/* ---- reporting ------------------------------------------------------- */

static const char *errname(int r) {
  switch (r) {
  case 0: return "0";
  case -EINVAL: return "-EINVAL";
  case -EDEADLK: return "-EDEADLK";
  case -ECANCELED: return "-ECANCELED";
  case -ETIMEDOUT: return "-ETIMEDOUT";
  case -ESHUTDOWN: return "-ESHUTDOWN";
  case -ENOMEM: return "-ENOMEM";
  case -EAGAIN: return "-EAGAIN";
  case -EPIPE: return "-EPIPE";
  case -EBUSY: return "-EBUSY";
  case -EIO: return "-EIO";
  case -ENOENT: return "-ENOENT";
  default: return "?";
  }
}

static void print_op(FILE *f, const op_t *op, int indent) {
  static const char *const wh[] = { "T0", "T1", "T2", "T3", "C0", "C1" };
  fprintf(f, "%*s#%d %s", indent, "", op->id, op_names[op->code]);
  if (op->depth == 0)
    fprintf(f, " @%s", op->code == OP_FREE || op->code == OP_START
                           ? "main" : wh[where_of(op->where)]);
  switch (op->code) {
  case OP_SPAWN:
    fprintf(f, " slot=%d loop=%d timeout=%llu%s value=%s", op->a % NSLOTS,
            (op->a >> 3) & 1, (unsigned long long) op->timeout,
            op->b & 4 ? " named" : "", errname(op->value));
    break;
  case OP_JOIN: case OP_DETACH: case OP_CANCEL:
    fprintf(f, " slot=%d", op->a % NSLOTS);
    break;
  case OP_SLEEP:
    fprintf(f, " ms=%d", op->a % 4);
    break;
  case OP_RUN_SYNC:
    fprintf(f, " %s timeout=%llu%s%s value=%s fn_sleep=%d",
            (const char *[]) { "POOL", "CALLER", "LANE" }[op->a % 3],
            (unsigned long long) op->timeout, op->abandon ? " abandon" : "",
            op->cleanup ? " cleanup" : "", errname(op->value), op->sleep_ms);
    if (op->a % 3 == 2)
      fprintf(f, " lane-of-loop=%d(threads)", (op->a >> 2) & 1);
    break;
  case OP_RUN_ASYNC:
    fprintf(f, " loop=%d timeout=%llu value=%s", op->a & 1,
            (unsigned long long) op->timeout, errname(op->value));
    break;
  case OP_SEND: case OP_RECV: case OP_CLOSE: case OP_CHAN_FREE:
    fprintf(f, " ch=%d", op->a % NCHANS);
    if (op->code == OP_SEND)
      fprintf(f, " item=%d", op->id + 1);
    break;
  case OP_GSPAWN:
    fprintf(f, " group=%d value=%s", op->a & 1, errname(op->value));
    break;
  case OP_GCANCEL: case OP_GWAIT:
    fprintf(f, " group=%d", op->a & 1);
    break;
  case OP_STOP: case OP_FREE: case OP_START: case OP_RUN:
    fprintf(f, " loop=%d", op->a & 1);
    break;
  case OP_STALE:
    fprintf(f, " slot=%d %s", op->a % NSLOTS,
            (const char *[]) { "join", "detach", "cancel" }[op->b % 3]);
    break;
  case OP_LOCAL:
    fprintf(f, " key=%d", op->a & 1);
    break;
  case OP_DUMP:
    fprintf(f, " loop=%d %s", op->a & 1, op->b & 1 ? "stats" : "dump");
    break;
  }
  if (!atomic_load(&op->begun))
    fprintf(f, "  [not run]");
  else if (atomic_load(&op->skipped))
    fprintf(f, "  [skipped: %s]", op->note != NULL ? op->note : "");
  else if (atomic_load(&op->nret) > 0)
    fprintf(f, "  [%s -> %d %s]", op->fname != NULL ? op->fname : "",
            atomic_load(&op->ret), errname(atomic_load(&op->ret)));
  else if (op->fname != NULL)
    fprintf(f, "  [in %s]", op->fname);
  else if (atomic_load(&op->calling))
    fprintf(f, "  [in mm_run_async_ex]");
  if (!atomic_load(&op->skipped) && op->note != NULL)
    fprintf(f, " (%s)", op->note);
  if (!atomic_load(&op->done) && atomic_load(&op->begun))
    fprintf(f, " (not finished)");
  if (op->code == OP_RUN_SYNC && atomic_load(&op->begun))
    fprintf(f, " fn_runs=%d fn_done=%d cleanups=%d",
            atomic_load(&op->fn_runs), atomic_load(&op->fn_done),
            atomic_load(&op->cleanups));
  if (op->code == OP_SEND && atomic_load(&op->begun))
    fprintf(f, " deliveries=%d", atomic_load(&op->deliveries));
  if (has_body(op->code) && op->code != OP_RUN_SYNC && atomic_load(&op->begun))
    fprintf(f, " body:%s%s", atomic_load(&op->body_started) ? "started" : "-",
            atomic_load(&op->body_done) ? ",done" : "");
  fputc('\n', f);
  for (int i = 0; i < op->nkid; i++)
    print_op(f, &S.ops[S.kids[op->kid0 + i]], indent + 4);
}

/* The watchdog prints the program while other threads may still write
 * it: under TSan those reads are not to be reported (a report would wait
 * for locks the hang may hold). */
#ifdef FUZZ_TSAN
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
# define IGNORE_READS_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
# define IGNORE_READS_END() AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
#else
# define IGNORE_READS_BEGIN() ((void) 0)
# define IGNORE_READS_END() ((void) 0)
#endif

static void print_program(FILE *f) {
  IGNORE_READS_BEGIN();
  fprintf(f, "program: config=0x%02x (loop 1 %s%s%s%s%s%s), %d ops\n",
          S.config, S.config & 1 ? "undriven" : "started",
          S.config & 2 ? ", pool 0 max 2" : "",
          S.config & 4 ? ", pool 1 max 2" : "",
          S.config & 8 ? ", idle 1 ms" : "",
          S.config & 16 ? ", slow_step 1 ms" : "",
          S.config & 32 ? ", pool min 1" : "", S.nops);
  for (int i = 0; i < S.ntop; i++)
    print_op(f, &S.ops[S.top[i]], 2);
  fflush(f);
  IGNORE_READS_END();
}

__attribute__((noreturn, format(printf, 1, 2)))
static void violation(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "fuzz-api: violation: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  print_program(stderr);
  abort();
}

/* ---- what each function may return (the header's documented codes) -- */

/* VAL: fn's (or the body's) value, checked per call. */
enum { C_OK = 1 << 0, C_INVAL = 1 << 1, C_DEADLK = 1 << 2,
       C_CANCELED = 1 << 3, C_TIMEDOUT = 1 << 4, C_SHUTDOWN = 1 << 5,
       C_NOMEM = 1 << 6, C_AGAIN = 1 << 7, C_PIPE = 1 << 8, C_BUSY = 1 << 9,
       C_VAL = 1 << 10 };

static const struct { const char *fn; int codes; } allowed[] = {
  { "mm_spawn_ex", C_OK | C_INVAL | C_SHUTDOWN | C_NOMEM },
  { "mm_join", C_VAL | C_CANCELED | C_TIMEDOUT | C_INVAL | C_DEADLK },
  { "mm_detach", C_OK | C_INVAL },
  { "mm_cancel", C_OK | C_INVAL },
  { "mm_yield", C_OK | C_CANCELED | C_TIMEDOUT },
  { "mm_sleep", C_OK | C_CANCELED | C_TIMEDOUT | C_DEADLK },
  { "mm_run_sync_ex", C_VAL | C_INVAL | C_DEADLK | C_CANCELED | C_TIMEDOUT |
                      C_NOMEM | C_AGAIN | C_SHUTDOWN },
  { "mm_run_async_ex", C_VAL | C_INVAL | C_DEADLK | C_SHUTDOWN | C_TIMEDOUT |
                       C_CANCELED | C_NOMEM },
  { "mm_chan_new", C_OK | C_INVAL | C_NOMEM },
  { "mm_chan_send", C_OK | C_PIPE | C_CANCELED | C_TIMEDOUT | C_INVAL |
                    C_DEADLK },
  { "mm_chan_recv", C_OK | C_PIPE | C_CANCELED | C_TIMEDOUT | C_INVAL |
                    C_DEADLK },
  { "mm_chan_close", C_OK | C_PIPE | C_INVAL },
  { "mm_chan_free", C_OK | C_BUSY | C_INVAL },
  { "mm_group_new", C_OK | C_INVAL | C_SHUTDOWN | C_NOMEM },
  /* -EBUSY: from a non-child once the wait was called (FUZZ_GROUP_LATE_SPAWN
   * only; the harness does not otherwise). */
  { "mm_group_spawn", C_OK | C_CANCELED | C_INVAL | C_SHUTDOWN | C_NOMEM |
                      C_BUSY },
  { "mm_group_cancel", C_OK | C_INVAL },
  { "mm_group_wait", C_OK | C_VAL | C_CANCELED | C_TIMEDOUT | C_DEADLK |
                     C_INVAL },
  { "mm_loop_stop", C_OK | C_INVAL },
  { "mm_loop_free", C_OK | C_INVAL | C_BUSY | C_DEADLK },
  { "mm_loop_start", C_OK | C_INVAL | C_BUSY | C_SHUTDOWN | C_AGAIN },
  { "mm_loop_run", C_OK | C_INVAL | C_BUSY | C_SHUTDOWN | C_DEADLK },
  { "mm_lane_new", C_OK | C_INVAL | C_SHUTDOWN | C_NOMEM | C_AGAIN },
  { "mm_lane_free", C_OK | C_INVAL | C_DEADLK | C_CANCELED | C_TIMEDOUT },
  { "mm_local_set", C_OK | C_INVAL | C_NOMEM },
  { "mm_loop_dump", C_OK | C_INVAL | C_SHUTDOWN | C_DEADLK },
  { "mm_loop_stats", C_OK | C_INVAL },
};

static int code_bit(int r) {
  switch (r) {
  case 0: return C_OK;
  case -EINVAL: return C_INVAL;
  case -EDEADLK: return C_DEADLK;
  case -ECANCELED: return C_CANCELED;
  case -ETIMEDOUT: return C_TIMEDOUT;
  case -ESHUTDOWN: return C_SHUTDOWN;
  case -ENOMEM: return C_NOMEM;
  case -EAGAIN: return C_AGAIN;
  case -EPIPE: return C_PIPE;
  case -EBUSY: return C_BUSY;
  default: return 0;
  }
}

/* A call outside any node (setup, teardown): documented code, or die. */
static void check_code(const char *fn, int r, bool is_value) {
  for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
    if (strcmp(allowed[i].fn, fn) != 0)
      continue;
    if (is_value && (allowed[i].codes & C_VAL))
      return;
    if (code_bit(r) & allowed[i].codes)
      return;
    violation("%s returned %d (%s), which its documentation does not "
              "list", fn, r, mm_strerror(r));
  }
  violation("no table entry for %s", fn);
}

/* Records the return of node op's call of fn.  value: fn's (the body's)
 * value when the call may return one, else INT_MIN. */
static void record(op_t *op, const char *fn, int r, int value) {
  op->fname = fn;
  /* The harness calls nothing on a loop's thread outside its coroutines,
   * and its waits never wait for themselves (ranks): -EDEADLK, where
   * documented, is never due here. */
  if (r == -EDEADLK && r != value)
    violation("#%d: %s returned -EDEADLK, in a context where no wait is "
              "for itself and no loop thread runs outside a coroutine",
              op->id, fn);
  atomic_store(&op->ret, r);
  if (atomic_fetch_add(&op->nret, 1) != 0)
    violation("#%d: %s returned twice (now %d)", op->id, fn, r);
  check_code(fn, r, value != INT32_MIN && r == value);
}

/* -ETIMEDOUT from a waiting call that has no deadline of its own: only
 * where the caller's cancellation reason may be a deadline (the header's
 * conventions).  op may be NULL (teardown). */
static void check_timedout(const op_t *op, const ctx_t *ctx, const char *fn,
                           int r) {
#if FUZZ_STRICT_DOC
  if (r == -ETIMEDOUT && !(ctx->coro ? ctx->timed : ctx->call_timed))
    violation("#%d: %s returned -ETIMEDOUT in a %s without any deadline",
              op != NULL ? op->id : -1, fn, ctx->who);
#else
  (void) op, (void) ctx, (void) fn, (void) r;
#endif
}

static void skip(op_t *op, const char *why) {
  op->note = why;
  atomic_store(&op->skipped, 1);
}

/* ---- small helpers ---------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void lock(void) { pthread_mutex_lock(&S.mu); }
static void unlock(void) { pthread_mutex_unlock(&S.mu); }
static void broadcast(void) { pthread_cond_broadcast(&S.cv); }

/* Waits on the harness condition for up to 1 ms; S.mu held. */
static void wait_a_bit(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_cond_timedwait(&S.cv, &S.mu, &ts);
}

/* A reference on loop i for a call that uses it; false if it is gone or
 * going.  S.mu held. */
static bool loop_ref_locked(int i) {
  if (S.loops[i].l == NULL || S.loops[i].dying)
    return false;
  S.loops[i].refs++;
  return true;
}

static bool loop_ref(int i) {
  lock();
  bool ok = loop_ref_locked(i);
  unlock();
  return ok;
}

static void loop_unref(int i) {
  lock();
  S.loops[i].refs--;
  broadcast();
  unlock();
}

/* ---- locals ------------------------------------------------------------ */

static char local_keys[2];
static void *main_locals[2];

/* What a new table copied from ctx's must hold: in dst, or NULL. */
static void **inherit(void **dst, const ctx_t *ctx) {
  if (ctx->locals == NULL)
    return NULL;
  dst[0] = ctx->locals[0];
  dst[1] = ctx->locals[1];
  return dst;
}

/* DESIGN.md, "Locals": a coroutine's are its own, copied from its
 * spawner's; a run_async coroutine's are a copy of the calling thread's;
 * in a run_sync call they are the awaiting coroutine's; an abandoned call
 * sees a snapshot or NULL (API.md), never another request's. */
static void check_locals(const op_t *op, const ctx_t *ctx, const char *at) {
  if (ctx->locals == NULL)
    return;
  for (int k = 0; k < 2; k++) {
    void *v = mm_local_get(&local_keys[k]);
    if (v == ctx->locals[k] || (v == NULL && ctx->any_ok))
      continue;
    const op_t *by = v;
    bool known = v != NULL && by >= S.ops && by < S.ops + S.nops;
    violation("#%d: %s in a %s: local %d reads %s%d, expected %s%d", op->id,
              at, ctx->who, k, known ? "LOCAL #" : "?",
              known ? by->id : -1, ctx->locals[k] != NULL ? "LOCAL #" : "",
              ctx->locals[k] != NULL ? ((op_t *) ctx->locals[k])->id : 0);
  }
}

/* ---- bodies ----------------------------------------------------------- */

static void exec_op(op_t *op, const ctx_t *ctx);

static void run_kids(op_t *op, const ctx_t *ctx) {
  for (int i = 0; i < op->nkid; i++)
    exec_op(&S.ops[S.kids[op->kid0 + i]], ctx);
}

/* A coroutine body: SPAWN, RUN_ASYNC, GSPAWN. */
static int coro_body(void *arg) {
  op_t *op = arg;
  if (atomic_fetch_add(&op->body_started, 1) != 0)
    violation("#%d: the body of %s ran twice", op->id, op_names[op->code]);
  if (mm_current() == NULL)
    violation("#%d: body of %s runs outside a coroutine", op->id,
              op_names[op->code]);
  check_locals(op, &op->body_ctx, "at the start of the body");
  run_kids(op, &op->body_ctx);
  atomic_store(&op->body_done, 1);
  return op->value;
}

/* The blocking function of RUN_SYNC. */
static int sync_fn(void *arg) {
  op_t *op = arg;
  atomic_fetch_add(&S.fns_running, 1);
  if (atomic_fetch_add(&op->fn_runs, 1) != 0)
    violation("#%d: a run_sync function ran twice", op->id);
  /* Sleeps in steps, stopping early once cancelled (a long loop would).
   * With FUZZ_ABANDONED_BODY=0 an abandonable one asks nothing of the
   * library: mm_cancelled() reads the awaiting coroutine, which may have
   * ended. */
  bool ask = !op->abandon || FUZZ_ABANDONED_BODY;
  for (int i = 0; i < op->sleep_ms * 4 && !(ask && mm_cancelled()) &&
                  !atomic_load(&op->stop_asked); i++) {
    struct timespec ts = { 0, 250000 };
    nanosleep(&ts, NULL);
  }
  if (ask) {
    check_locals(op, &op->body_ctx, "in the run_sync function");
    run_kids(op, &op->body_ctx);
  }
  atomic_store(&op->fn_done, 1);
  atomic_fetch_sub(&S.fns_running, 1);
  return op->value;
}

/* on_cancel of RUN_SYNC: asks sync_fn to stop, as sqlite3_interrupt
 * would.  Never twice, never after cleanup, never once the call has
 * returned. */
static void sync_on_cancel(void *arg) {
  op_t *op = arg;
  if (atomic_fetch_add(&op->on_cancels, 1) != 0)
    violation("#%d: on_cancel ran twice", op->id);
  if (atomic_load(&op->cleanups) != 0)
    violation("#%d: on_cancel ran after cleanup", op->id);
  if (atomic_load(&op->nret) != 0)
    violation("#%d: on_cancel ran after the call returned %d", op->id,
              atomic_load(&op->ret));
  atomic_store(&op->stop_asked, 1);
}

static void sync_cleanup(void *arg, int status) {
  op_t *op = arg;
  atomic_store(&op->cleanup_status, status);
  if (atomic_fetch_add(&op->cleanups, 1) != 0)
    violation("#%d: cleanup ran twice (status %d)", op->id, status);
}

/* ---- the operations ---------------------------------------------------- */

static bool may_wait_for(const ctx_t *ctx, int rank) {
  return rank > ctx->rank;
}

static void do_spawn(op_t *op, const ctx_t *ctx) {
  int s = op->a % NSLOTS, l = (op->a >> 3) & 1;
  lock();
  if (!loop_ref_locked(l)) {
    unlock();
    return skip(op, "loop gone");
  }
  bool slotted = S.slots[s].state == CS_EMPTY;
  if (slotted)
    S.slots[s].state = CS_SPAWNING;
  unlock();

  op->body_ctx = (ctx_t) { .id = 1000 + op->id,
                           .rank = slotted ? s : ctx->rank, .loop = l,
                           .coro = true, .timed = op->timeout != 0,
                           .group = -1, .caller = ctx->caller ? 2 : 0,
                           .locals = inherit(op->own_locals, ctx),
                           .any_ok = ctx->any_ok, .who = "coroutine" };
  char name[16];
  snprintf(name, sizeof(name), "fz-%d", op->id);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.timeout_ms = op->timeout;
  o.name = op->b & 4 ? name : NULL;
  mm_coro_t *h = NULL;
  int r = mm_spawn_ex(S.loops[l].l, coro_body, op, &o, slotted ? &h : NULL);
  record(op, "mm_spawn_ex", r, INT32_MIN);
  if (r != 0 && h != NULL)
    violation("#%d: mm_spawn_ex failed (%d) but set the handle", op->id, r);
  lock();
  if (slotted) {
    if (r == 0) {
      S.slots[s].h = h;
      S.slots[s].loop = l;
      S.slots[s].spawn = op;
      S.slots[s].uses = 0;
      S.slots[s].state = CS_LIVE;
    } else {
      S.slots[s].state = CS_EMPTY;
    }
  }
  S.loops[l].refs--;
  broadcast();
  unlock();
}

/* JOIN, DETACH, STALE: claims slot s for good.  Returns its handle (the
 * loop referenced), or NULL. */
static mm_coro_t *claim(op_t *op, const ctx_t *ctx, int s, bool for_join) {
  lock();
  if (S.slots[s].state != CS_LIVE) {
    unlock();
    skip(op, "no handle in the slot");
    return NULL;
  }
  if (for_join && !may_wait_for(ctx, s)) {
    unlock();
    skip(op, "rank: would allow a wait cycle");
    return NULL;
  }
  int l = S.slots[s].loop;
  if (!loop_ref_locked(l)) {
    unlock();
    skip(op, "loop gone");
    return NULL;
  }
  S.slots[s].state = CS_CLAIMED;
  while (S.slots[s].uses > 0)   /* cancels in flight on this handle */
    wait_a_bit();
  mm_coro_t *h = S.slots[s].h;
  op->target = S.slots[s].spawn;
  unlock();
  return h;
}

static void release_slot(int s, mm_coro_t *h, bool keep, bool detached) {
  lock();
  int l = S.slots[s].loop;
  if (keep) {
    S.slots[s].state = CS_LIVE;
  } else {
    S.slots[s].state = CS_EMPTY;
    S.slots[s].h = NULL;
    S.slots[s].stale = h;
    S.slots[s].stale_loop = l;
    S.slots[s].stale_spawn = S.slots[s].spawn;
    S.slots[s].stale_detached = detached;
  }
  S.loops[l].refs--;
  broadcast();
  unlock();
}

/* What a join of target may return, given who joins. */
static void check_join(op_t *op, const ctx_t *ctx, int r) {
  op_t *t = op->target;
  if (r == t->value && atomic_load(&t->body_done))
    return;
  if (r == -ETIMEDOUT && (t->timeout != 0 || (ctx->coro && ctx->timed)))
    return;
  if (r == -ECANCELED && (!atomic_load(&t->body_started) || ctx->coro))
    return;
  if (r == -EDEADLK && ctx->coro)
    return;
  violation("#%d: mm_join of #%d's coroutine returned %d (%s) from a %s; "
            "its body %s, value %d, timeout %llu", op->id, t->id, r,
            mm_strerror(r), ctx->who,
            atomic_load(&t->body_done) ? "ended"
            : atomic_load(&t->body_started) ? "started" : "never ran",
            t->value, (unsigned long long) t->timeout);
}

static void do_join(op_t *op, const ctx_t *ctx) {
  int s = op->a % NSLOTS;
  mm_coro_t *h = claim(op, ctx, s, true);
  if (h == NULL)
    return;
  int r = mm_join(h);
  record(op, "mm_join", r, op->target->value);
  check_join(op, ctx, r);
  release_slot(s, h, r == -EDEADLK || r == -EINVAL, false);
}

static void do_detach(op_t *op, const ctx_t *ctx) {
  int s = op->a % NSLOTS;
  mm_coro_t *h = claim(op, ctx, s, false);
  if (h == NULL)
    return;
  int r = mm_detach(h);
  record(op, "mm_detach", r, INT32_MIN);
  if (r != 0)
    violation("#%d: mm_detach of a live handle returned %d", op->id, r);
  release_slot(s, h, false, true);
}

static void do_cancel(op_t *op) {
  int s = op->a % NSLOTS;
  lock();
  if (S.slots[s].state != CS_LIVE) {
    unlock();
    return skip(op, "no handle in the slot");
  }
  int l = S.slots[s].loop;
  if (!loop_ref_locked(l)) {
    unlock();
    return skip(op, "loop gone");
  }
  S.slots[s].uses++;
  mm_coro_t *h = S.slots[s].h;
  unlock();
  int r = mm_cancel(h);
  record(op, "mm_cancel", r, INT32_MIN);
  if (r != 0)
    violation("#%d: mm_cancel of a live handle returned %d", op->id, r);
  lock();
  S.slots[s].uses--;
  S.loops[l].refs--;
  broadcast();
  unlock();
}

#if FUZZ_STALE
static void do_stale(op_t *op) {
  int s = op->a % NSLOTS;
  lock();
  mm_coro_t *h = S.slots[s].stale;
  int l = S.slots[s].stale_loop;
  op_t *sp = S.slots[s].stale_spawn;
  bool detached = S.slots[s].stale_detached;
  /* A handle of a freed loop is forgotten (free_loop); this one's loop
   * stays while the call is made. */
  bool ok = h != NULL && loop_ref_locked(l);
  unlock();
  if (!ok)
    return skip(op, h == NULL ? "no stale handle" : "loop gone");
  int r;
  const char *fn;
  switch (op->b % 3) {
  case 0: fn = "mm_join"; r = mm_join(h); break;
  case 1: fn = "mm_detach"; r = mm_detach(h); break;
  default: fn = "mm_cancel"; r = mm_cancel(h); break;
  }
  /* A detached handle's join is -EINVAL even where the coroutine waits
   * for the joiner (main 3d81cc4; it used to be -EDEADLK). */
  record(op, fn, r, INT32_MIN);
  /* A detached handle is stale once its coroutine has ended: until then
   * a cancel reaches the coroutine (0).  Its body running after the call
   * means it had not ended. */
  bool running = atomic_load(&sp->body_started) &&
                 !atomic_load(&sp->body_done);
  bool cancel_detached = detached && op->b % 3 == 2;
  if (r != -EINVAL && !(cancel_detached && r == 0))
    violation("#%d: %s of a stale handle returned %d, not -EINVAL", op->id,
              fn, r);
  if (r == -EINVAL && cancel_detached && running)
    violation("#%d: mm_cancel of a detached coroutine still running "
              "returned -EINVAL", op->id);
  loop_unref(l);
}
#endif

static void do_run_sync(op_t *op, const ctx_t *ctx) {
  int aff = op->a % 3;
  if (aff == 1 && ctx->caller == 2 && !FUZZ_CALLER_ORPHANS) {
    op->note = "CALLER sent to the pool: FUZZ_CALLER_ORPHANS=0";
    aff = 0;
  }
  int lane_loop = ctx->coro ? ctx->loop : (op->a >> 2) & 1;
  if (aff == 2 && !ctx->coro && lane_loop < ctx->lane_min) {
    op->note = "LANE sent to the pool: a lane waiting for a lower one";
    aff = 0;
  }
  bool ref = false;
  mm_lane_t *lane = NULL;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = aff == 0 ? MM_AFFINITY_POOL
             : aff == 1 ? MM_AFFINITY_CALLER : MM_AFFINITY_LANE;
  if (aff == 2) {
    /* The lane goes before its loop (free_loop): a reference on the loop
     * keeps it. */
    lock();
    ref = loop_ref_locked(lane_loop);
    lane = S.loops[lane_loop].lane;
    unlock();
    if (!ref)
      return skip(op, "loop gone");
    o.lane = lane;
  }
  o.timeout_ms = op->timeout;
  o.abandon_on_cancel = op->abandon;
  o.cleanup = op->cleanup ? sync_cleanup : NULL;
#if FUZZ_CLEANUP_API
  o.on_cancel = op->cleanup ? sync_on_cancel : NULL;
#endif
  /* The function runs on a plain thread for this context; an abandoned one
   * may outlive the caller, so it spawns into no group. */
  op->body_ctx = (ctx_t) { .id = 1000 + op->id,
                           .rank = ctx->rank, .loop = -1, .coro = false,
                           .timed = false,
                           .call_timed = ctx->coro
                                         ? op->timeout != 0 || ctx->timed
                                         : aff != 2 && ctx->call_timed,
                           .group = op->abandon ? -1 : ctx->group,
                           .lane_min = aff == 2 && lane_loop + 1 >
                                       ctx->lane_min ? lane_loop + 1
                                                     : ctx->lane_min,
                           .who = "run_sync function" };
  /* Its locals: the awaiting coroutine's (or, inline, the thread's), the
   * same table; a snapshot or NULL once it may be abandoned; a lane's
   * own for a plain thread's lane call. */
  if (op->abandon && ctx->coro) {
    op->body_ctx.locals = inherit(op->own_locals, ctx);
    op->body_ctx.any_ok = true;
  } else if (aff == 2 && !ctx->coro) {
    op->body_ctx.locals = NULL;
  } else {
    op->body_ctx.locals = ctx->locals;
    op->body_ctx.any_ok = ctx->any_ok;
  }
  /* Whose thread runs the function: a coroutine's pool, lane or (no
   * caller thread) sensitive thread; inline, the caller's own. */
  if (!ctx->coro)
    op->body_ctx.thread_of = aff == 2 ? 1 + lane_loop : ctx->thread_of;
  else if (aff != 1 || ctx->caller == 0)
    op->body_ctx.thread_of = 1 + ctx->loop;
  int r = mm_run_sync_ex(sync_fn, op, &o);
  record(op, "mm_run_sync_ex", r, op->value);
  /* An abandonable call's function works on a copy of the coroutine's
   * locals taken when the call was made (include/mixmode.h, mm_run_sync);
   * a call that completes hands the copy, with fn's stores, back to the
   * coroutine; an abandoned one keeps it. */
  if (op->abandon && ctx->coro && ctx->locals != NULL && r == op->value &&
      atomic_load(&op->fn_runs)) {
    ctx->locals[0] = op->own_locals[0];
    ctx->locals[1] = op->own_locals[1];
  }
  if (ref)
    loop_unref(lane_loop);
  if (r == op->value)
    return;
  /* A bridge code: which ones fit where the call was made. */
  if (!ctx->coro && r != -EINVAL && r != -ENOMEM && r != -EAGAIN)
    violation("#%d: run_sync on a plain thread returned %d (%s)", op->id, r,
              mm_strerror(r));
  if (r == -ETIMEDOUT && op->timeout == 0 && !ctx->timed)
    violation("#%d: run_sync without any deadline returned -ETIMEDOUT",
              op->id);
  if (r == -ESHUTDOWN && !atomic_load(&S.loops[ctx->loop].stopped))
    violation("#%d: run_sync returned -ESHUTDOWN, loop %d not stopped",
              op->id, ctx->loop);
}

static void do_run_async(op_t *op, const ctx_t *ctx) {
  int l = op->a & 1;
  if (!loop_ref(l))
    return skip(op, "loop gone");
  op->body_ctx = (ctx_t) { .id = 1000 + op->id,
                           .rank = ctx->rank, .loop = l, .coro = true,
                           .timed = op->timeout != 0, .group = ctx->group,
                           .caller = ctx->coro ? ctx->caller : 1,
                           .locals = inherit(op->own_locals, ctx),
                           .any_ok = ctx->any_ok,
                           .who = "run_async coroutine" };
  char name[16];
  snprintf(name, sizeof(name), "fa-%d", op->id);
  mm_async_options_t o;
  mm_async_options_init(&o);
  o.timeout_ms = op->timeout;
  o.name = op->b & 4 ? name : NULL;
  atomic_store(&op->calling, 1);
  int r = mm_run_async_ex(S.loops[l].l, coro_body, op, &o);
  record(op, "mm_run_async_ex", r, op->value);
  bool stopped = atomic_load(&S.loops[l].stopped);
  loop_unref(l);
  if (r == op->value && atomic_load(&op->body_done))
    return;
  if (r == op->value)
    violation("#%d: run_async returned the body's value, body not done",
              op->id);
  if (r == -ETIMEDOUT && op->timeout == 0 && !(ctx->coro && ctx->timed))
    violation("#%d: run_async without any deadline returned -ETIMEDOUT",
              op->id);
  if (r == -ECANCELED && !ctx->coro && atomic_load(&op->body_started))
    violation("#%d: run_async from a thread returned -ECANCELED after its "
              "body ran", op->id);
  if (r == -ESHUTDOWN && !stopped)
    violation("#%d: run_async returned -ESHUTDOWN, loop %d not stopped",
              op->id, l);
}

/* A channel slot's channel for one call, counted as a user; NULL if the
 * slot is empty and none may be made. */
static hchan_t *chan_use(int c, const ctx_t *ctx, bool create, int cap) {
  lock();
  hchan_t *hc = S.chans[c];
  if (hc == NULL && create && !S.teardown && S.closing == 0) {
    hc = calloc(1, sizeof(*hc));
    if (hc == NULL)
      abort();
    int r = mm_chan_new(&hc->ch, (size_t) cap);
    check_code("mm_chan_new", r, false);
    if (r != 0) {
      free(hc);
      unlock();
      return NULL;
    }
    hc->next = S.all_chans;
    S.all_chans = hc;
    S.chans[c] = hc;
  }
  if (hc != NULL) {
    hc->users++;
    if (ctx->coro)
      hc->users_coro[ctx->loop]++;
  }
  unlock();
  return hc;
}

static void chan_unuse(hchan_t *hc, const ctx_t *ctx) {
  lock();
  hc->users--;
  if (ctx->coro)
    hc->users_coro[ctx->loop]--;
  broadcast();
  unlock();
}

static void deliver(op_t *by, void *item) {
  uintptr_t tok = (uintptr_t) item;
  if (tok == 0 || tok > (uintptr_t) S.nops ||
      S.ops[tok - 1].code != OP_SEND)
    violation("#%d: received %p, which no SEND sent", by->id, item);
  op_t *s = &S.ops[tok - 1];
  atomic_fetch_add(&s->deliveries, 1);
}

static void do_send(op_t *op, const ctx_t *ctx) {
  hchan_t *hc = chan_use(op->a % NCHANS, ctx, true, 1 + ((op->a >> 2) & 1));
  if (hc == NULL)
    return skip(op, "no channel");
  op->ctx_id = ctx->id;
  op->chan = hc;
  int r = mm_chan_send(hc->ch, (void *) (uintptr_t) (op->id + 1));
  atomic_store(&op->send_state, r == 0 ? 1 : 2);
  record(op, "mm_chan_send", r, INT32_MIN);
  check_timedout(op, ctx, "mm_chan_send", r);
  chan_unuse(hc, ctx);
}

static void do_recv(op_t *op, const ctx_t *ctx) {
  hchan_t *hc = chan_use(op->a % NCHANS, ctx, true, 1 + ((op->a >> 2) & 1));
  if (hc == NULL)
    return skip(op, "no channel");
  void *item = NULL;
  op->ctx_id = ctx->id;
  op->chan = hc;
  op->got = -1;
  int r = mm_chan_recv(hc->ch, &item);
  record(op, "mm_chan_recv", r, INT32_MIN);
  check_timedout(op, ctx, "mm_chan_recv", r);
  if (r == 0) {
    deliver(op, item);
    op->got = (int) (uintptr_t) item - 1;
  }
  chan_unuse(hc, ctx);
}

static void do_close(op_t *op, const ctx_t *ctx) {
  hchan_t *hc = chan_use(op->a % NCHANS, ctx, false, 1);
  if (hc == NULL)
    return skip(op, "no channel");
  int r = mm_chan_close(hc->ch);
  record(op, "mm_chan_close", r, INT32_MIN);
  lock();
  hc->closed = true;
  unlock();
  chan_unuse(hc, ctx);
}

/* Receives what is left in a closed channel (each item delivered once),
 * then frees it; mm_chan_free's value. */
static int drain_and_free(hchan_t *hc, op_t *by) {
  void *item;
  int r;
  while ((r = mm_chan_recv(hc->ch, &item)) == 0)
    deliver(by, item);
  if (r != -EPIPE)
    violation("#%d: draining a closed channel: mm_chan_recv returned %d",
              by->id, r);
  return mm_chan_free(hc->ch);
}

/* Closes hc, waits for the calls in flight that may still be on their way
 * into the library, drains what is queued (as delivered to by) and frees
 * the channel.  A coroutine of loop L that frees needs not wait for the
 * other coroutines of L: while it runs, each of them is either parked
 * inside its call or not in one (the harness counts a user and enters the
 * call without suspending).  Plain threads and other loops are waited for;
 * after the close none of their calls blocks. */
static int chan_free_now(hchan_t *hc, op_t *by, const ctx_t *ctx) {
  int r = mm_chan_close(hc->ch);
  if (by != NULL)
    check_code("mm_chan_close", r, false);
  lock();
  hc->closed = true;
  for (;;) {
    int others = hc->users - (ctx->coro ? hc->users_coro[ctx->loop] : 0);
    if (others == 0)
      break;
    if (ctx->coro) {
      /* Another loop's coroutines or threads: they do not need ours. */
      unlock();
      sched_yield();
      lock();
    } else {
      wait_a_bit();
    }
  }
  unlock();
  return drain_and_free(hc, by);
}

#if FUZZ_CHAN_FREE_EARLY
static int barrier_fn(void *arg) {
  (void) arg;
  return 0;
}

/* A plain thread frees a channel whose coroutine users may still be on
 * their way out: no new user can find it (its slot is empty); a coroutine
 * of each loop with users runs first (mm_run_async), after which every
 * counted coroutine user of that loop is parked inside its call or done
 * with it; then the close wakes them -- the wake-ups may still be in
 * their loops' queues when the channel is freed, as in issue 8, instance
 * 1.  Threads are waited for.  False if a loop cannot run the barrier
 * (stopped, or nobody drives it): then the caller waits for everyone. */
static bool chan_free_early(hchan_t *hc, op_t *by, int *rp) {
  for (int l = 0; l < NLOOPS; l++) {
    lock();
    bool users = hc->users_coro[l] > 0;
    bool ok = !users || (S.loops[l].started &&
                         !atomic_load(&S.loops[l].stopped) &&
                         loop_ref_locked(l));
    unlock();
    if (!ok)
      return false;
    if (!users)
      continue;
    int r = mm_run_async(S.loops[l].l, barrier_fn, NULL);
    loop_unref(l);
    if (r != 0)
      return false;
  }
  int r = mm_chan_close(hc->ch);
  check_code("mm_chan_close", r, false);
  lock();
  hc->closed = true;
  while (hc->users - hc->users_coro[0] - hc->users_coro[1] > 0)
    wait_a_bit();
  unlock();
  *rp = drain_and_free(hc, by);
  return true;
}
#endif

static void do_chan_free(op_t *op, const ctx_t *ctx) {
  int c = op->a % NCHANS;
  lock();
  hchan_t *hc = S.chans[c];
  if (hc == NULL) {
    unlock();
    return skip(op, "no channel");
  }
  S.chans[c] = NULL;            /* later users make a new one */
  unlock();
  int r;
#if FUZZ_CHAN_FREE_EARLY
  if (ctx->coro || !chan_free_early(hc, op, &r))
#endif
    r = chan_free_now(hc, op, ctx);
  record(op, "mm_chan_free", r, INT32_MIN);
  if (r != 0)
    violation("#%d: mm_chan_free of a closed channel with no listed "
              "waiter returned %d", op->id, r);
  lock();
  hc->freed = true;
  unlock();
}

static void do_gspawn(op_t *op, const ctx_t *ctx) {
  int g = op->a & 1;
  lock();
  if (S.groups[g].state == GS_EMPTY && !S.teardown && ctx->group < 0) {
    /* With FUZZ_STOP_UNDRIVEN a group on a stopped undriven loop could
     * not be waited for: groups live on loop 0 then. */
    int l = FUZZ_STOP_UNDRIVEN ? 0 : (op->a >> 1) & 1;
    if (S.loops[l].l != NULL && !S.loops[l].dying) {
      int r = mm_group_new(S.loops[l].l, &S.groups[g].g);
      check_code("mm_group_new", r, false);
      if (r == 0) {
        S.groups[g].state = GS_OPEN;
        S.groups[g].loop = l;
        S.groups[g].uses = 0;
        S.groups[g].inst++;
      }
    }
  }
  /* Anyone before the wait; the group's own children until it returns. */
  bool ok = S.groups[g].state == GS_OPEN ||
            (S.groups[g].state == GS_WAITING &&
             (ctx->group == g || FUZZ_GROUP_LATE_SPAWN));
  int l = S.groups[g].loop;
  if (ok && !loop_ref_locked(l))
    ok = false;
  if (!ok) {
    unlock();
    return skip(op, "group not open to this spawner");
  }
  S.groups[g].uses++;
  op->ginst = S.groups[g].inst;
  mm_group_t *grp = S.groups[g].g;
  unlock();
  op->body_ctx = (ctx_t) { .id = 1000 + op->id,
                           .rank = RANK_GROUP(g), .loop = l, .coro = true,
                           .timed = false, .group = g,
                           .caller = ctx->caller ? 2 : 0,
                           .locals = inherit(op->own_locals, ctx),
                           .any_ok = ctx->any_ok, .who = "group child" };
  int r = mm_group_spawn(grp, coro_body, op);
  record(op, "mm_group_spawn", r, INT32_MIN);
  lock();
  S.groups[g].uses--;
  S.loops[l].refs--;
  broadcast();
  unlock();
}

static void do_gcancel(op_t *op) {
  int g = op->a & 1;
  lock();
  int l = S.groups[g].loop;
  if (S.groups[g].state != GS_OPEN || !loop_ref_locked(l)) {
    unlock();
    return skip(op, "group not open");
  }
  S.groups[g].uses++;
  mm_group_t *grp = S.groups[g].g;
  unlock();
  int r = mm_group_cancel(grp);
  record(op, "mm_group_cancel", r, INT32_MIN);
  lock();
  S.groups[g].uses--;
  S.loops[l].refs--;
  broadcast();
  unlock();
}

/* Waits for group g (S.mu not held).  op NULL: free_loop's wait, on a
 * loop that takes no new users (no reference then). */
static void group_wait(op_t *op, const ctx_t *ctx, int g) {
  lock();
  int l = S.groups[g].loop;
  if (op == NULL)
    S.loops[l].refs++;
  if (S.groups[g].state != GS_OPEN || (op != NULL && !loop_ref_locked(l))) {
    if (op == NULL)
      S.loops[l].refs--;
    unlock();
    if (op != NULL)
      skip(op, "group not open");
    return;
  }
  if (!may_wait_for(ctx, RANK_GROUP(g))) {
    S.loops[l].refs--;
    unlock();
    if (op != NULL)
      skip(op, "rank: would allow a wait cycle");
    return;
  }
  S.groups[g].state = GS_WAITING;
  while (S.groups[g].uses > 0)
    wait_a_bit();
  mm_group_t *grp = S.groups[g].g;
  int inst = S.groups[g].inst;
  unlock();
  int r = mm_group_wait(grp);
  /* A failure is the status of a child of this group: its value, or
   * -ECANCELED for one cancelled before it ran.  -ETIMEDOUT: the waiter's
   * own deadline (the children of a group have none). */
  check_timedout(op, ctx, "mm_group_wait", r);
  bool reason = r == -ECANCELED || r == -ETIMEDOUT;
  bool child_failed = false;
  lock();                       /* ginst is written under S.mu */
  for (int i = 0; i < S.nops && r != 0 && !reason; i++)
    child_failed |= S.ops[i].code == OP_GSPAWN && (S.ops[i].a & 1) == g &&
                    S.ops[i].ginst == inst && atomic_load(&S.ops[i].nret) &&
                    atomic_load(&S.ops[i].ret) == 0 && S.ops[i].value == r;
  unlock();
  if (r != 0 && !reason && !child_failed)
    violation("#%d: mm_group_wait returned %d (%s), the value of none of "
              "the group's children", op != NULL ? op->id : -1, r,
              mm_strerror(r));
  bool child_value = r == -EIO || r == -ENOENT || r == -ECANCELED;
  if (op != NULL)
    record(op, "mm_group_wait", r, child_value ? r : INT32_MIN);
  else
    check_code("mm_group_wait", r, child_value);
  lock();
  if (r == -EDEADLK || r == -EINVAL) {
    S.groups[g].state = GS_OPEN;
  } else {
    S.groups[g].state = GS_EMPTY;
    S.groups[g].g = NULL;
  }
  S.loops[l].refs--;
  broadcast();
  unlock();
}

static void do_stop(op_t *op) {
  int l = op->a & 1;
  if (!loop_ref(l))
    return skip(op, "loop gone");
#if !FUZZ_STOP_UNDRIVEN
  lock();
  bool undriven = !S.loops[l].started;
  unlock();
  if (undriven) {
    /* With FUZZ_STOP_UNDRIVEN=0: drive it first. */
    int r = mm_loop_start(S.loops[l].l);
    check_code("mm_loop_start", r, false);
    if (r == 0) {
      lock();
      S.loops[l].started = true;
      unlock();
    }
  }
#endif
  atomic_store(&S.loops[l].stopped, true);
  int r = mm_loop_stop(S.loops[l].l);
  record(op, "mm_loop_stop", r, INT32_MIN);
  loop_unref(l);
}

static void do_start(op_t *op) {
  int l = op->a & 1;
  if (!loop_ref(l))
    return skip(op, "loop gone");
  int r = mm_loop_start(S.loops[l].l);
  record(op, "mm_loop_start", r, INT32_MIN);
  if (r == 0) {
    lock();
    S.loops[l].started = true;
    unlock();
  }
  loop_unref(l);
}

static void do_run(op_t *op, const ctx_t *ctx) {
  int l = op->a & 1;
  if (ctx->coro)
    return skip(op, "mm_loop_run from a coroutine");
  if (!loop_ref(l))
    return skip(op, "loop gone");
  int r = mm_loop_run(S.loops[l].l);
  record(op, "mm_loop_run", r, INT32_MIN);
  loop_unref(l);
}

static void close_all_channels(void) {
  lock();
  for (int c = 0; c < NCHANS; c++) {
    hchan_t *hc = S.chans[c];
    if (hc == NULL || hc->closed)
      continue;
    hc->closed = true;
    int r = mm_chan_close(hc->ch);  /* never blocks */
    check_code("mm_chan_close", r, false);
  }
  unlock();
}

/* Joins (from this plain thread) what is left of loop l: its groups and
 * its handles; then frees its lane and the loop.  The loop is stopped and
 * has no user left. */
static void free_loop(int l, bool undriven) {
  const ctx_t main_ctx = { .rank = -1, .loop = -1, .group = -1,
                           .locals = main_locals, .who = "main thread" };
  /* A stopped loop nobody drives runs none of its coroutines before its
   * free: their handles go with it, unjoined. */
  for (int g = 0; g < NGRP && !undriven; g++) {
    lock();
    bool mine = S.groups[g].state == GS_OPEN && S.groups[g].loop == l;
    mm_group_t *grp = S.groups[g].g;
    unlock();
    if (mine) {
      check_code("mm_group_cancel", mm_group_cancel(grp), false);
      group_wait(NULL, &main_ctx, g);
    }
  }
  for (int s = 0; s < NSLOTS; s++) {
    lock();
    bool mine = S.slots[s].state == CS_LIVE && S.slots[s].loop == l;
    mm_coro_t *h = S.slots[s].h;
    op_t *sp = S.slots[s].spawn;
    if (mine)
      S.slots[s].state = undriven ? CS_EMPTY : CS_CLAIMED;
    unlock();
    if (!mine || undriven)
      continue;
    int r = mm_join(h);
    check_code("mm_join", r, r == sp->value);
    lock();
    S.slots[s].state = CS_EMPTY;
    S.slots[s].h = NULL;
    S.slots[s].stale = NULL;
    unlock();
  }
  if (S.loops[l].lane != NULL) {
    int r = mm_lane_free(S.loops[l].lane);
    check_code("mm_lane_free", r, false);
    if (r != 0)
      violation("mm_lane_free from the main thread returned %d", r);
  }
  S.phase = l == 0 ? "mm_loop_free of loop 0" : "mm_loop_free of loop 1";
  int r = mm_loop_free(S.loops[l].l);
  check_code("mm_loop_free", r, false);
  if (r != 0)
    violation("mm_loop_free of loop %d from the main thread returned %d",
              l, r);
  lock();
  S.loops[l].l = NULL;
  S.loops[l].lane = NULL;
  for (int s = 0; s < NSLOTS; s++)
    if (S.slots[s].stale != NULL && S.slots[s].stale_loop == l)
      S.slots[s].stale = NULL;
  unlock();
}

static bool quiet_now(void);

#if FUZZ_STOP_UNDRIVEN
/* A loop stopped while nobody drove it cannot be started again and runs
 * nothing until its free.  What waits for it gets a while to be answered:
 * the header promises that a stop answers every mm_run_async caller. */
static void check_answered(int l) {
  uint64_t until = now_ns() + 200000000;
  lock();
  while (!quiet_now() && now_ns() < until)
    wait_a_bit();
  unlock();
  for (int i = 0; i < S.nops; i++) {
    op_t *op = &S.ops[i];
    if (op->code == OP_RUN_ASYNC && (op->a & 1) == l &&
        atomic_load(&op->begun) && !atomic_load(&op->done) &&
        atomic_load(&op->calling))
      violation("#%d: mm_run_async on loop %d was not answered 200 ms "
                "after mm_loop_stop of that loop, which nobody drives "
                "(issue 8, instance 5)", op->id, l);
  }
}

/* The teardown frees such a loop first.  What still waits (a join of its
 * coroutine) is answered by the free, which drives the loop. */
static void stopped_undriven(void) {
  for (int l = 0; l < NLOOPS; l++) {
    lock();
    bool stuck = S.loops[l].l != NULL && !S.loops[l].dying &&
                 !S.loops[l].started && atomic_load(&S.loops[l].stopped);
    unlock();
    if (!stuck)
      continue;
    S.phase = "teardown: a stopped loop nobody drives";
    check_answered(l);
    lock();
    S.loops[l].dying = true;
    unlock();
    free_loop(l, true);
  }
}
#endif

/* Locals: each LOCAL stores its own address under one of two keys and
 * reads it back; what is stored is copied into the coroutines spawned
 * afterwards (and read by run_sync functions and run_async coroutines),
 * so that the library's copies have something on the heap to copy. */
static void do_local(op_t *op, const ctx_t *ctx) {
  check_locals(op, ctx, "before mm_local_set");
  const void *key = &local_keys[op->a & 1];
  int r = mm_local_set(key, op);
  record(op, "mm_local_set", r, INT32_MIN);
  if (r == 0 && ctx->locals != NULL)
    ctx->locals[op->a & 1] = op;
  check_locals(op, ctx, "after mm_local_set");
}

static FILE *dump_sink;

static void do_dump(op_t *op, const ctx_t *ctx) {
  int l = op->a & 1;
  if (!loop_ref(l))
    return skip(op, "loop gone");
  if (op->b & 1) {
    mm_stats_t st;
    int r = mm_loop_stats(S.loops[l].l, &st);
    record(op, "mm_loop_stats", r, INT32_MIN);
  } else {
    /* From another loop's coroutine the dump waits for loop l's thread
     * to write it: it suspends nothing, so only on a loop that runs. */
    lock();
    bool driven = S.loops[l].started;
    unlock();
    if (!driven && ctx->coro && ctx->loop != l) {
      loop_unref(l);
      return skip(op, "dump of a loop nobody drives from a coroutine");
    }
    int r = mm_loop_dump(S.loops[l].l, dump_sink);
    record(op, "mm_loop_dump", r, INT32_MIN);
  }
  loop_unref(l);
}

#if FUZZ_FREE_IN_CALL
/* mm_loop_free from one of the loop's own threads: -EDEADLK, the loop
 * left usable (API.md, "Loops"). */
static void free_in_call(op_t *op, int l) {
  if (!loop_ref(l))
    return skip(op, "loop gone");
  op->fname = "mm_loop_free";
  int r = mm_loop_free(S.loops[l].l);
  record(op, "mm_loop_free", r, -EDEADLK);
  if (r != -EDEADLK)
    violation("#%d: mm_loop_free from a thread of the loop returned %d, "
              "not -EDEADLK", op->id, r);
  loop_unref(l);
}
#endif

/* Starts loop m if nobody drives it and it is not stopped. */
static void drive_loop(int m) {
  lock();
  bool go = !S.loops[m].started && !atomic_load(&S.loops[m].stopped) &&
            loop_ref_locked(m);
  unlock();
  if (!go)
    return;
  int r = mm_loop_start(S.loops[m].l);
  check_code("mm_loop_start", r, false);
  lock();
  if (r == 0)
    S.loops[m].started = true;
  S.loops[m].refs--;
  broadcast();
  unlock();
}

/* FREE at any point: the loop's later operations are skipped.  The other
 * loop is driven first if nobody drives it: the freed loop's coroutines
 * may wait for its coroutines (run_async, join), which a loop nobody
 * drives never ends. */
static void do_free(op_t *op) {
  int l = op->a & 1;
  lock();
  if (S.loops[l].l == NULL || S.loops[l].dying) {
    unlock();
    return skip(op, "loop gone");
  }
  S.loops[l].dying = true;
  S.closing++;
  bool undriven = !S.loops[l].started;
  unlock();
  S.phase = "FREE: stop";
  if (undriven && !FUZZ_STOP_UNDRIVEN) {
    int r = mm_loop_start(S.loops[l].l);
    check_code("mm_loop_start", r, false);
  }
  drive_loop(1 - l);
  atomic_store(&S.loops[l].stopped, true);
  check_code("mm_loop_stop", mm_loop_stop(S.loops[l].l), false);
  /* Threads blocked in channels could keep users of the loop (a pool
   * function that waits for an item) alive: close them all. */
  close_all_channels();
#if FUZZ_STOP_UNDRIVEN
  if (undriven)
    check_answered(l);
#endif
  S.phase = "FREE: waiting for the loop's users";
  lock();
  while (S.loops[l].refs > 0)
    wait_a_bit();
  unlock();
  free_loop(l, undriven && FUZZ_STOP_UNDRIVEN);
  lock();
  S.closing--;
  unlock();
  op->fname = "mm_loop_free";
  atomic_store(&op->ret, 0);
  atomic_store(&op->nret, 1);
}

static void exec_op(op_t *op, const ctx_t *ctx) {
  if (atomic_fetch_add(&op->begun, 1) != 0)
    violation("#%d ran twice", op->id);
  lock();
  broadcast();
  unlock();
  switch (op->code) {
  case OP_SPAWN: do_spawn(op, ctx); break;
  case OP_JOIN: do_join(op, ctx); break;
  case OP_DETACH: do_detach(op, ctx); break;
  case OP_CANCEL: do_cancel(op); break;
  case OP_YIELD: {
    int r = mm_yield();
    record(op, "mm_yield", r, INT32_MIN);
    if (r != 0 && !ctx->coro)
      violation("#%d: mm_yield on a plain thread returned %d", op->id, r);
    check_timedout(op, ctx, "mm_yield", r);
    break;
  }
  case OP_SLEEP: {
    int r = mm_sleep((uint64_t) (op->a % 4));
    record(op, "mm_sleep", r, INT32_MIN);
    if (r != 0 && !ctx->coro)
      violation("#%d: mm_sleep on a plain thread returned %d", op->id, r);
    if (r == -ETIMEDOUT && !ctx->timed)
      violation("#%d: mm_sleep of a coroutine without a deadline returned "
                "-ETIMEDOUT", op->id);
    break;
  }
  case OP_RUN_SYNC: do_run_sync(op, ctx); break;
  case OP_RUN_ASYNC: do_run_async(op, ctx); break;
  case OP_SEND: do_send(op, ctx); break;
  case OP_RECV: do_recv(op, ctx); break;
  case OP_CLOSE: do_close(op, ctx); break;
  case OP_CHAN_FREE: do_chan_free(op, ctx); break;
  case OP_GSPAWN: do_gspawn(op, ctx); break;
  case OP_GCANCEL: do_gcancel(op); break;
  case OP_GWAIT: group_wait(op, ctx, op->a & 1); break;
  case OP_STOP: do_stop(op); break;
  case OP_FREE:
    if (ctx->id == 0)
      do_free(op);
#if FUZZ_FREE_IN_CALL
    else if (ctx->thread_of != 0)
      free_in_call(op, ctx->thread_of - 1);
#endif
    else
      skip(op, "FREE in a body: only on a loop's own thread (with "
               "FUZZ_FREE_IN_CALL)");
    break;
  case OP_START: do_start(op); break;
  case OP_RUN: do_run(op, ctx); break;
  case OP_LOCAL: do_local(op, ctx); break;
  case OP_DUMP: do_dump(op, ctx); break;
  case OP_STALE:
#if FUZZ_STALE
    do_stale(op);
#else
    skip(op, "FUZZ_STALE=0");
#endif
    break;
  }
  atomic_store(&op->done, 1);
  lock();
  broadcast();
  unlock();
}

/* ---- executors ---------------------------------------------------------- */

static void *exec_main(void *arg) {
  exec_t *e = arg;
  static const char *const names[] = { "thread T0", "thread T1", "thread T2",
                                       "thread T3" };
  const ctx_t ctx = { .id = 1 + e->idx, .rank = -1, .loop = -1,
                      .coro = false, .group = -1, .locals = e->locals,
                      .who = names[e->idx] };
  lock();
  for (;;) {
    while (e->qh == e->qt && !e->quit)
      pthread_cond_wait(&S.cv, &S.mu);
    if (e->qh == e->qt)
      break;
    op_t *op = &S.ops[e->q[e->qh++]];
    e->busy = true;
    unlock();
    exec_op(op, &ctx);
    lock();
    e->busy = false;
    broadcast();
  }
  unlock();
  return NULL;
}

/* A top-level operation run by a fresh coroutine of a loop. */
static int opcoro_main(void *arg) {
  op_t *op = arg;
  int l = where_of(op->where) - 4;
  const ctx_t ctx = { .id = 100 + op->id, .rank = -1, .loop = l,
                      .coro = true, .group = -1, .locals = op->exec_locals,
                      .who = l == 0 ? "coroutine of loop 0"
                                    : "coroutine of loop 1" };
  exec_op(op, &ctx);
  return 0;
}

/* Operations that return promptly (or after a bounded sleep): the main
 * thread waits for them to end, not only to begin. */
static bool quick(int code) {
  switch (code) {
  case OP_SPAWN: case OP_DETACH: case OP_CANCEL: case OP_YIELD:
  case OP_SLEEP: case OP_CLOSE: case OP_GSPAWN: case OP_GCANCEL:
  case OP_STOP: case OP_START:
    return true;
  default:
    return false;
  }
}

static bool dispatched(const op_t *op) {
  return quick(op->code) ? atomic_load(&op->done) : atomic_load(&op->begun);
}

static void dispatch(op_t *op) {
  if (op->code == OP_FREE || op->code == OP_START) {
    const ctx_t ctx = { .rank = -1, .loop = -1, .group = -1,
                        .locals = main_locals, .who = "main thread" };
    exec_op(op, &ctx);
    return;
  }
  int w = where_of(op->where);
  if (w < NTHREADS) {
    exec_t *e = &S.ex[w];
    lock();
    bool idle = !e->busy && e->qh == e->qt;
    e->q[e->qt++] = op->id;
    broadcast();
    while (idle && !dispatched(op))
      pthread_cond_wait(&S.cv, &S.mu);
    unlock();
    return;
  }
  int l = w - 4;
  lock();
  bool ok = loop_ref_locked(l);
  bool driven = S.loops[l].started;
  unlock();
  if (!ok) {
    atomic_store(&op->begun, 1);
    skip(op, "loop gone");
    atomic_store(&op->done, 1);
    return;
  }
  int r = mm_spawn(S.loops[l].l, opcoro_main, op, NULL);
  check_code("mm_spawn_ex", r, false);
  if (r != 0) {
    atomic_store(&op->begun, 1);
    skip(op, "its coroutine could not be spawned");
    atomic_store(&op->done, 1);
  }
  loop_unref(l);
  if (r != 0 || !driven)
    return;
  lock();
  while (!dispatched(op) && !atomic_load(&S.loops[l].stopped))
    wait_a_bit();
  unlock();
}

/* ---- decoding ------------------------------------------------------------ */

static int decode_op(int depth) {
  if (in_pos + 4 > in_size || S.nops == FUZZ_MAX_OPS)
    return -1;
  op_t *op = &S.ops[S.nops];
  memset(op, 0, sizeof(*op));
  op->id = S.nops++;
  op->code = in_data[in_pos] % OP_COUNT;
  op->where = in_data[in_pos + 1];
  op->a = in_data[in_pos + 2];
  op->b = in_data[in_pos + 3];
  in_pos += 4;
  op->depth = depth;
  if (depth > 0 && op->code == OP_START)
    op->code = OP_YIELD;        /* the main thread's alone */
  switch (op->code) {
  case OP_SPAWN:
    op->timeout = spawn_timeouts[op->b & 3];
    op->value = values[(op->b >> 3) % 3];
    break;
  case OP_RUN_SYNC:
    op->timeout = sync_timeouts[op->b & 3];
    op->abandon = (op->b & 4) != 0;
    op->cleanup = (op->b & 8) == 0;
    op->value = values[(op->b >> 4) % 3];
    op->sleep_ms = op->b >> 6;
    break;
  case OP_RUN_ASYNC:
    op->timeout = spawn_timeouts[op->b & 3];
    op->value = values[(op->b >> 3) % 3];
    break;
  case OP_GSPAWN:
    op->value = values[(op->b >> 3) % 3];
    break;
  }
  if (has_body(op->code) && depth < MAX_DEPTH) {
    int n = (op->where >> 3) & 3;
    /* No more entries than operations left to decode: kids[] holds each
     * decoded operation at most once. */
    if (n > FUZZ_MAX_OPS - S.nkids)
      n = FUZZ_MAX_OPS - S.nkids;
    op->kid0 = S.nkids;
    S.nkids += n;
    int got = 0;
    for (int i = 0; i < n; i++) {
      int k = decode_op(depth + 1);
      if (k < 0)
        break;
      S.kids[op->kid0 + got++] = k;
    }
    op->nkid = got;
  }
  return op->id;
}

static void decode(const uint8_t *data, size_t size) {
  in_data = data;
  in_size = size;
  in_pos = 1;
  S.nops = S.nkids = S.ntop = 0;
  S.config = size > 0 ? data[0] : 0;
  int k;
  while ((k = decode_op(0)) >= 0)
    S.top[S.ntop++] = k;
}

/* ---- the watchdog ---------------------------------------------------- */

static int hang_s(void) {
  const char *e = getenv("FUZZ_HANG_S");
  int s = e != NULL ? atoi(e) : 0;
  return s > 0 ? s : 10;
}

static void *dump_main(void *arg) {
  mm_loop_dump(arg, stderr);
  return NULL;
}

static void *watchdog_main(void *arg) {
  (void) arg;
  for (;;) {
    struct timespec ts = { 0, 100000000 };
    nanosleep(&ts, NULL);
    uint64_t d = atomic_load(&S.deadline_ns);
    if (d == 0 || now_ns() < d)
      continue;
    fprintf(stderr, "fuzz-api: hang: the input has not finished after %d s "
            "(phase: %s)\n", hang_s(), atomic_load(&S.phase));
    print_program(stderr);
    /* A dump from here waits for the loop's thread: give each 2 s. */
    for (int l = 0; l < NLOOPS; l++) {
      mm_loop_t *loop = S.loops[l].l;
      if (loop == NULL || S.loops[l].dying)
        continue;
      fprintf(stderr, "fuzz-api: loop %d:\n", l);
      pthread_t th;
      if (pthread_create(&th, NULL, dump_main, loop) == 0) {
        pthread_detach(th);
        struct timespec two = { 2, 0 };
        nanosleep(&two, NULL);
      }
    }
    fprintf(stderr, "fuzz-api: hang\n");
    abort();
  }
  return NULL;
}

static void quiet_log(int level, const char *msg, void *data) {
  (void) data;
  if (level >= MM_LOG_ERROR || getenv("FUZZ_VERBOSE") != NULL)
    fprintf(stderr, "mixmode: %s\n", msg);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void) argc;
  (void) argv;
  mm_set_log(quiet_log, NULL);
  dump_sink = fopen("/dev/null", "w");
  if (dump_sink == NULL)
    abort();
  pthread_t th;
  if (pthread_create(&th, NULL, watchdog_main, NULL) != 0)
    abort();
  pthread_detach(th);
  return 0;
}

/* ---- one input ----------------------------------------------------------- */

static void setup(void) {
  memset(S.loops, 0, sizeof(S.loops));
  memset(S.slots, 0, sizeof(S.slots));
  memset(S.chans, 0, sizeof(S.chans));
  memset(S.groups, 0, sizeof(S.groups));
  memset(S.ex, 0, sizeof(S.ex));
  S.all_chans = NULL;
  S.teardown = false;
  S.closing = 0;
  atomic_store(&S.fns_running, 0);
  for (int l = 0; l < NLOOPS; l++) {
    mm_loop_options_t o;
    mm_loop_options_init(&o);
    o.stack_size = 256 * 1024;   /* nested bodies, sanitizers' frames */
    o.pool_max_threads = S.config & (2 << l) ? 2 : 8;
    if (S.config & 8)
      o.pool_idle_ms = 1;
    if ((S.config & 16) && FUZZ_SLOW_STEP)
      o.slow_step_ms = 1;
    if (S.config & 32)
      o.pool_min_threads = 1;
    int r = mm_loop_new(&S.loops[l].l, &o);
    if (r != 0)
      violation("mm_loop_new: %d", r);
    char name[8];
    snprintf(name, sizeof(name), "fz%d", l);
    r = mm_lane_new(S.loops[l].l, name, &S.loops[l].lane);
    check_code("mm_lane_new", r, false);
    if (l == 0 || !(S.config & 1)) {
      r = mm_loop_start(S.loops[l].l);
      if (r != 0)
        violation("mm_loop_start: %d", r);
      S.loops[l].started = true;
    }
  }
  for (int i = 0; i < NTHREADS; i++) {
    S.ex[i].idx = i;
    if (pthread_create(&S.ex[i].th, NULL, exec_main, &S.ex[i]) != 0)
      abort();
  }
}

static bool quiet_now(void) {
  for (int i = 0; i < NTHREADS; i++)
    if (S.ex[i].busy || S.ex[i].qh != S.ex[i].qt)
      return false;
  for (int i = 0; i < S.nops; i++) {
    op_t *op = &S.ops[i];
    if (atomic_load(&op->begun) && !atomic_load(&op->done))
      return false;
    if (atomic_load(&op->fn_runs) && !atomic_load(&op->fn_done))
      return false;
    if (op->code != OP_RUN_SYNC && atomic_load(&op->body_started) &&
        !atomic_load(&op->body_done))
      return false;
  }
  return true;
}

/* Before the teardown: lets what was started run on, while that makes
 * progress (some of it waits for the teardown itself). */
static void settle(void) {
  lock();
  int last = -1;
  uint64_t since = now_ns();
  for (;;) {
    int progress = 0;
    bool pending = !quiet_now();
    for (int i = 0; i < S.nops; i++) {
      op_t *op = &S.ops[i];
      progress += atomic_load(&op->done) + atomic_load(&op->body_started) +
                  atomic_load(&op->body_done) + atomic_load(&op->fn_done);
      if ((op->code == OP_SPAWN || op->code == OP_GSPAWN) &&
          atomic_load(&op->nret) && atomic_load(&op->ret) == 0 &&
          !atomic_load(&op->body_started))
        pending = true;
    }
    if (!pending)
      break;
    if (progress != last) {
      last = progress;
      since = now_ns();
    } else if (now_ns() - since > 5000000) {
      break;
    }
    wait_a_bit();
  }
  unlock();
}

static void teardown(void) {
  const ctx_t main_ctx = { .rank = -1, .loop = -1, .group = -1,
                           .locals = main_locals, .who = "main thread" };
  S.phase = "teardown: close, cancel, stop";
  lock();
  S.teardown = true;
  unlock();
  close_all_channels();
  for (int g = 0; g < NGRP; g++) {
    lock();
    int l = S.groups[g].loop;
    bool open = S.groups[g].state == GS_OPEN && loop_ref_locked(l);
    if (open)
      S.groups[g].uses++;
    mm_group_t *grp = S.groups[g].g;
    unlock();
    if (!open)
      continue;
    check_code("mm_group_cancel", mm_group_cancel(grp), false);
    lock();
    S.groups[g].uses--;
    S.loops[l].refs--;
    broadcast();
    unlock();
  }
  for (int s = 0; s < NSLOTS; s++) {
    op_t fake = { .id = -1 };
    fake.a = (uint8_t) s;
    do_cancel(&fake);
  }
  for (int l = 0; l < NLOOPS; l++) {
    lock();
    bool here = loop_ref_locked(l);
    bool undriven = here && !S.loops[l].started &&
                    !atomic_load(&S.loops[l].stopped);
    unlock();
    if (!here)
      continue;
    if (undriven) {
      int r = mm_loop_start(S.loops[l].l);
      check_code("mm_loop_start", r, false);
    }
    atomic_store(&S.loops[l].stopped, true);
    check_code("mm_loop_stop", mm_loop_stop(S.loops[l].l), false);
    loop_unref(l);
  }
#if FUZZ_STOP_UNDRIVEN
  stopped_undriven();
#endif
  /* Now everything must come back: a stop answers every waiter. */
  S.phase = "teardown: waiting for every call to return after the stop";
  lock();
  while (!quiet_now())
    wait_a_bit();
  unlock();
  for (int l = 0; l < NLOOPS; l++) {
    lock();
    bool here = S.loops[l].l != NULL;
    if (here)
      S.loops[l].dying = true;
    S.phase = "teardown: waiting for the users of a loop";
    while (here && S.loops[l].refs > 0)
      wait_a_bit();
    unlock();
    if (here)
      free_loop(l, false);
  }
  (void) main_ctx;
  lock();
  for (int i = 0; i < NTHREADS; i++)
    S.ex[i].quit = true;
  broadcast();
  unlock();
  for (int i = 0; i < NTHREADS; i++)
    pthread_join(S.ex[i].th, NULL);
  S.phase = "teardown: channels";
  op_t drain = { .id = -1 };
  for (hchan_t *hc = S.all_chans; hc != NULL; hc = hc->next)
    if (!hc->freed) {
      int r = chan_free_now(hc, &drain, &main_ctx);
      if (r != 0)
        violation("mm_chan_free at the end returned %d", r);
      hc->freed = true;
    }
  while (S.all_chans != NULL) {
    hchan_t *hc = S.all_chans;
    S.all_chans = hc->next;
    free(hc);
  }
}

/* A channel is FIFO: a context that received two items one context sent
 * into the same channel got them in the order they were sent (the sends
 * of one context happen in op order, and so do its receives). */
static void check_fifo(void) {
  for (int i = 0; i < S.nops; i++) {
    const op_t *r1 = &S.ops[i];
    if (r1->code != OP_RECV || !atomic_load(&r1->nret) || r1->got < 0)
      continue;
    for (int j = i + 1; j < S.nops; j++) {
      const op_t *r2 = &S.ops[j];
      if (r2->code != OP_RECV || !atomic_load(&r2->nret) || r2->got < 0 ||
          r2->ctx_id != r1->ctx_id || r2->chan != r1->chan)
        continue;
      const op_t *s1 = &S.ops[r1->got], *s2 = &S.ops[r2->got];
      if (s1->ctx_id == s2->ctx_id && s1->id > s2->id)
        violation("#%d and #%d received item %d before item %d, which "
                  "one context sent in the other order into one channel",
                  r1->id, r2->id, s1->id + 1, s2->id + 1);
    }
  }
}

/* Checks every node once everything has ended. */
static void final_checks(void) {
  check_fifo();
  for (int i = 0; i < S.nops; i++) {
    op_t *op = &S.ops[i];
    if (atomic_load(&op->begun) && !atomic_load(&op->done))
      violation("#%d never finished", op->id);
    if (!atomic_load(&op->begun) || atomic_load(&op->skipped))
      continue;
    int r = atomic_load(&op->ret);
    if (op->code == OP_SEND) {
      int d = atomic_load(&op->deliveries);
      int st = atomic_load(&op->send_state);
      if (st == 1 && d != 1)
        violation("#%d: item %d was sent (0) and delivered %d times",
                  op->id, op->id + 1, d);
      if (st == 2 && d != 0)
        violation("#%d: item %d was not sent (%d) but delivered %d times",
                  op->id, op->id + 1, r, d);
    }
    if (op->code == OP_RUN_SYNC) {
      int runs = atomic_load(&op->fn_runs);
      int cl = atomic_load(&op->cleanups);
      bool bridge = r != op->value;
      if (!bridge && runs != 1)
        violation("#%d: run_sync returned fn's value %d but fn ran %d "
                  "times", op->id, r, runs);
      bool gave_up = r == -ECANCELED || r == -ETIMEDOUT || r == -ESHUTDOWN;
#if FUZZ_CLEANUP_API
      int want = gave_up && op->cleanup ? 1 : 0;
      if (cl != want)
        violation("#%d: run_sync returned %d; cleanup ran %d times, the "
                  "ownership rule says %d", op->id, r, cl, want);
      if (cl == 1 && runs == 1 && atomic_load(&op->cleanup_status) !=
          op->value)
        violation("#%d: cleanup got %d, fn returned %d", op->id,
                  atomic_load(&op->cleanup_status), op->value);
      if (bridge && gave_up && runs == 1 && !op->abandon &&
          r == -ECANCELED)
        violation("#%d: a running call without abandon returned "
                  "-ECANCELED", op->id);
#else
      /* The header's rule: cleanup only for a call abandoned while fn ran,
       * and fn never runs after a call returned a bridge code unless the
       * call was abandoned. */
      int want = gave_up && op->abandon && op->cleanup && runs == 1 ? 1 : 0;
      if (cl != want)
        violation("#%d: run_sync returned %d (fn ran %d times, abandon %d); "
                  "cleanup ran %d times, expected %d", op->id, r, runs,
                  op->abandon, cl, want);
      if (bridge && runs != 0 && !(op->abandon && gave_up))
        violation("#%d: run_sync returned %d (%s) but fn ran", op->id, r,
                  mm_strerror(r));
      if (cl == 1 && atomic_load(&op->cleanup_status) != op->value)
        violation("#%d: cleanup got %d, fn returned %d", op->id,
                  atomic_load(&op->cleanup_status), op->value);
#endif
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 5)
    return 0;
  decode(data, size);
  if (getenv("FUZZ_PRINT") != NULL)
    print_program(stderr);
  atomic_store(&S.deadline_ns, now_ns() + (uint64_t) hang_s() * 1000000000u);
  S.phase = "setup";
  setup();
  S.phase = "running the program";
  for (int i = 0; i < S.ntop; i++)
    dispatch(&S.ops[S.top[i]]);
  S.phase = "settling";
  settle();
  teardown();
  S.phase = "checks";
  final_checks();
  if (getenv("FUZZ_PRINT") != NULL) {
    fprintf(stderr, "results:\n");
    print_program(stderr);
  }
  atomic_store(&S.deadline_ns, 0);
  return 0;
}
