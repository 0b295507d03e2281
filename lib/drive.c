/* Driving a loop: the drive loop of mm_loop_run and the background
 * thread, the libuv callbacks that run ready coroutines (idle), drain the
 * remote queue before libuv blocks (prepare), mark the loop awake (check)
 * and answer a wake-up (the bell), the bounded polling of the queues while
 * answers come quickly (DESIGN.md, "Wake-ups cost more than the work"),
 * and the reference that keeps uv_run going while the loop has work.
 * Loop thread only.  Not here: the queues themselves (remote.c), the
 * scheduler (sched.c), life cycle (loop.c).
 */
#include "mm-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>
#ifdef HAVE_SYS_EVENTFD_H
#include <sys/eventfd.h>
#endif

/* The bell's handle keeps uv_run going exactly while the loop has work:
 * live coroutines, released handles owed, spawns in flight, or a
 * background loop that has not been stopped. */
void mm__loop_update_refs(mm_loop_t *loop) {
  bool need = mm__counter_get(&loop->nlive) != 0 || loop->njoining != 0 ||
              atomic_load_explicit(&loop->pending, memory_order_relaxed) ||
              (loop->background && !mm__loop_stopping(loop));
  if (need)
    uv_ref((uv_handle_t *) &loop->bell);
  else
    uv_unref((uv_handle_t *) &loop->bell);
  /* A borrowed loop's thread counts as "the loop's thread" for -EDEADLK
   * exactly while the loop has work: then a blocking wait there could
   * only end through the loop it blocks.  We cannot see the user's uv_run
   * begin or end, so this is the sound approximation: once the work is
   * done the thread may block again (join an ended coroutine, sleep). */
  if (loop->borrowed) {
    if (need)
      mm__tls.loop = loop;
    else if (mm__tls.loop == loop)
      mm__tls.loop = NULL;
  }
}

static void on_idle(uv_idle_t *h) {
  mm_loop_t *loop = h->data;
  mm__tls.loop = loop;
  mm__sched_run_ready(loop);
}

void mm__loop_wake_ready(mm_loop_t *loop) {
  uv_idle_start(&loop->idle, on_idle);
}

void mm__loop_process_stop(mm_loop_t *loop) {
  if (!mm__loop_stopping(loop) || loop->stop_done)
    return;
  loop->stop_done = true;
  mm__cancel_all(loop);
}

/* What other threads posted, taken in; and the blocks kept for their
 * spawns refilled once one was taken (stack.c): here, on the loop's
 * thread and without mu, right after the drain that may have ended the
 * coroutines whose blocks refill it. */
static void drain(mm_loop_t *loop) {
  mm__loop_drain(loop);
  if (atomic_load_explicit(&loop->spare_wanted, memory_order_relaxed))
    mm__coro_spare_refill(loop);
}

static bool heads_empty(mm_loop_t *loop) {
  return atomic_load_explicit(&loop->remote_head, memory_order_relaxed) ==
             NULL &&
         atomic_load_explicit(&loop->tasks, memory_order_relaxed) == NULL;
}

/* How long the loop polls its queues before it lets libuv block, when
 * answers have lately come back that quickly (DESIGN.md, "Wake-ups cost
 * more than the work"). */
#define POLL_NS 10000


/* Polling only pays when the thread that answers can run meanwhile: not
 * on one CPU. */
static bool poll_cpus_ok(void) {
  return mm__cpu_count() >= 2;
}

/* Past this much polling, the poll also yields the CPU at each turn: the
 * thread that will answer may be waiting for this very CPU. */
#define POLL_YIELD_NS 3000

/* Polls the loop's queues for up to POLL_NS, pausing the CPU; returns
 * whether something came. */
static bool poll_heads(mm_loop_t *loop) {
  uint64_t t0 = uv_hrtime();
  uint64_t dt = 0;
  bool gave_away = false;
  while (heads_empty(loop) && dt < POLL_NS) {
    for (int i = 0; i < 32; i++)
      mm__cpu_relax();
    if (dt >= POLL_YIELD_NS && mm__yield_cpu())
      gave_away = true;
    dt = uv_hrtime() - t0;
  }
  /* What came only once the poll gave its CPU away came late (spin.c,
   * mm__spin_wait): its poster needed this CPU.  It is run all the same
   * (the prepare drains it); the next time the loop sleeps instead. */
  return !heads_empty(loop) && !gave_away;
}

/* Passes of poll-and-run one prepare makes at most before libuv gets its
 * turn (timers, I/O): about POLL_ROUNDS * POLL_NS at worst. */
#define POLL_ROUNDS 64

/* Right before libuv polls for I/O.  Drains what other threads posted;
 * then announces that the loop may sleep and checks once more (see
 * wake_if_asleep).  While answers to calls in flight come back quickly,
 * it first polls the queues for a bounded time, pausing the CPU, and
 * runs what comes, again and again while answers keep coming that way. */
static void on_prepare(uv_prepare_t *h) {
  mm_loop_t *loop = h->data;
  mm__tls.loop = loop;
  for (unsigned round = 0;; round++) {
    if (!heads_empty(loop)) {
      drain(loop);
      if (!mm__list_empty(&loop->ready))
        mm__sched_run_ready(loop);
    }
    if (!mm__list_empty(&loop->ready))
      break;              /* the idle handle keeps libuv from blocking */
    if (loop->poll_first && poll_cpus_ok()) {
      if (round == POLL_ROUNDS) {
        /* libuv's turn, without sleeping: an active idle handle makes
         * its poll return at once, and we come back here after. */
        uv_idle_start(&loop->idle, on_idle);
        break;
      }
      loop->poll_first = poll_heads(loop);
      continue;
    }
    loop->sleep_start = uv_hrtime();
    atomic_store_explicit(&loop->woken_at, 0, memory_order_relaxed);
    atomic_store_explicit(&loop->asleep, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (heads_empty(loop))
      break;
    atomic_store_explicit(&loop->asleep, 0, memory_order_relaxed);
  }
  mm__loop_update_refs(loop);
}

/* Right after libuv polled: awake again. */
static void on_check(uv_check_t *h) {
  mm_loop_t *loop = h->data;
  atomic_store_explicit(&loop->asleep, 0, memory_order_relaxed);
}

/* ---- the doorbell -------------------------------------------------------
 *
 * Other threads wake the loop by writing to an eventfd (a pipe where there
 * is none) that a uv_poll_t of the loop watches -- not through a
 * uv_async_t: libuv 1.44's async callback spins (997 pauses, then a
 * yield, again and again) until the sender's uv_async_send has come back
 * from its write(2), and a sender that the wake-up itself took off its
 * CPU (the woken loop thread preempting it) left the loop thread spinning:
 * 37% of the process's CPU, in a profile of a plain thread's mm_run_async
 * every 200 us.  The bell needs no such handshake: its fd stays readable
 * until the loop reads it, and the loop reads it before it drains its
 * queues, so a post after the drain rings again. */

void mm__loop_ring(mm_loop_t *loop) {
#ifdef HAVE_SYS_EVENTFD_H
  uint64_t one = 1;
  while (write(loop->bell_w, &one, sizeof one) < 0 && errno == EINTR)
    ;
#else
  char one = 1;               /* a full pipe has rung already */
  while (write(loop->bell_w, &one, 1) < 0 && errno == EINTR)
    ;
#endif
}

static void bell_clear(mm_loop_t *loop) {
#ifdef HAVE_SYS_EVENTFD_H
  uint64_t n;
  while (read(loop->bell_r, &n, sizeof n) < 0 && errno == EINTR)
    ;
#else
  char buf[64];
  while (read(loop->bell_r, buf, sizeof buf) == (ssize_t) sizeof buf)
    ;
#endif
}

static int bell_open(mm_loop_t *loop) {
#ifdef HAVE_SYS_EVENTFD_H
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0)
    return -errno;
  loop->bell_r = loop->bell_w = fd;
#else
  int fds[2];
  if (pipe(fds) != 0)
    return -errno;
  for (int i = 0; i < 2; i++) {
    fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
  }
  loop->bell_r = fds[0];
  loop->bell_w = fds[1];
#endif
  return 0;
}

void mm__loop_bell_close(mm_loop_t *loop) {
  if (loop->bell_r < 0)
    return;
  close(loop->bell_r);
  if (loop->bell_w != loop->bell_r)
    close(loop->bell_w);
  loop->bell_r = loop->bell_w = -1;
}

static void on_bell(uv_poll_t *h, int status, int events) {
  mm_loop_t *loop = h->data;
  (void) status;
  (void) events;
  mm__tls.loop = loop;
  bell_clear(loop);
  /* Poll first next time if the post that woke us came within the
   * polling window: a poll would have caught it, and saved the sleep and
   * the wake-up -- even from a thread on the loop's own CPU, unlike the
   * threads' spins (spin.c, mm__spin_woken): the poll yields that CPU at
   * each turn past POLL_YIELD_NS, and a loop and its workers sharing a
   * CPU (several loops on two CPUs) hand it to each other through those
   * yields for less than a sleep and a wake-up each (measured: two loops
   * x 64 calls, 1.6M calls/s when the loop judged by CPU, 3.6M when
   * not).  The poster's own time (remote.c), not ours now: ours
   * adds the wake-up's latency (tens of us on a VM), and answers that
   * come 20-40 us after the loop sleeps -- a worker woken from its own
   * sleep -- made every poll a miss, burning POLL_NS per call. */
  if (atomic_load_explicit(&loop->asleep, memory_order_relaxed)) {
    uint64_t at = atomic_load_explicit(&loop->woken_at,
                                       memory_order_relaxed);
    loop->poll_first = at != 0 &&
                       (int64_t) (at - loop->sleep_start) < POLL_NS;
  }
  drain(loop);
  mm__loop_process_stop(loop);
  /* Run what the drain made ready now rather than in the idle phase of
   * the next loop pass: that would cost one more epoll_wait per wake. */
  if (!mm__list_empty(&loop->ready))
    mm__sched_run_ready(loop);
  else
    mm__loop_update_refs(loop);
}

/* ---- driving ------------------------------------------------------------ */

static bool run_done(mm_loop_t *loop) {
  return mm__counter_get(&loop->nlive) == 0 && loop->njoining == 0 &&
         atomic_load_explicit(&loop->pending, memory_order_seq_cst) == 0 &&
         (!loop->background || mm__loop_stopping(loop));
}

/* Runs the loop on this thread until run_done().  loop->driven is set. */
void mm__loop_drive(mm_loop_t *loop) {
  mm_loop_t *saved = mm__tls.loop;
  mm__tls.loop = loop;
  bool ran = false;
  for (;;) {
    drain(loop);
    mm__loop_process_stop(loop);
    mm__loop_update_refs(loop);
    if (run_done(loop))
      break;
    /* What the last pass made ready (its I/O callbacks, and the timers
     * that UV_RUN_ONCE runs after the poll) runs here, not in the next
     * pass's idle phase: libuv 1.44 decides whether a UV_RUN_ONCE pass may
     * block before its idle callbacks run, so a pass that begins with the
     * idle handle active polls without blocking and finds nothing -- one
     * more epoll_wait per wake-up by a timer.  Then the checks above
     * again (all may have ended), and libuv's pass next whatever is
     * ready then: one budget's worth (sched.c) between two passes. */
    if (!ran && !mm__list_empty(&loop->ready)) {
      mm__sched_run_ready(loop);
      ran = true;
      continue;
    }
    ran = false;
    uv_run(loop->uv, UV_RUN_ONCE);
  }
  mm__tls.loop = saved;
}

int mm__loop_handles_init(mm_loop_t *loop) {
  loop->bell_r = loop->bell_w = -1;
  int r = bell_open(loop);
  if (r != 0)
    return r;
  r = uv_poll_init(loop->uv, &loop->bell, loop->bell_r);
  if (r != 0) {
    mm__loop_bell_close(loop);
    return r;
  }
  r = uv_poll_start(&loop->bell, UV_READABLE, on_bell);
  if (r != 0) {
    /* Nothing else is made yet: one pass finishes the close, before the
     * fd goes. */
    uv_close((uv_handle_t *) &loop->bell, NULL);
    uv_run(loop->uv, UV_RUN_NOWAIT);
    mm__loop_bell_close(loop);
    return r;
  }
  loop->bell.data = loop;
  uv_unref((uv_handle_t *) &loop->bell);
  uv_idle_init(loop->uv, &loop->idle);
  loop->idle.data = loop;
  uv_unref((uv_handle_t *) &loop->idle);
  uv_prepare_init(loop->uv, &loop->prepare);
  loop->prepare.data = loop;
  uv_prepare_start(&loop->prepare, on_prepare);
  uv_unref((uv_handle_t *) &loop->prepare);
  uv_check_init(loop->uv, &loop->check);
  loop->check.data = loop;
  uv_check_start(&loop->check, on_check);
  uv_unref((uv_handle_t *) &loop->check);
  return 0;
}
