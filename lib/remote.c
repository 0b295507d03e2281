/* The remote queue: how other threads reach a loop -- events for its
 * coroutines (spawn, cancel, wake, release), tasks for its thread (the
 * run_async inbox, mm__loop_call), and the wake-up that makes it look.
 *
 * The remote queue is an mm__mpsc stack of coroutines (mm-internal.h) with
 * the event bits kept on each coroutine:
 *
 *   post:  fetch_or(c->remote_bits, bits | QUEUED, acq_rel); only the
 *          poster that set QUEUED pushes c, with a CAS on remote_head
 *          (release: c's fields and bits written before are visible to the
 *          drain), then wakes the loop if it may be asleep.
 *   drain: exchange(remote_head, NULL, acquire) takes the whole stack at
 *          once; it is reversed into posting order; for each c the drain
 *          reads remote.next first and then exchanges remote_bits to 0
 *          (acq_rel).  After that exchange another poster may push c again,
 *          which is why remote.next was read before.
 *
 * Only the drain pops, so ABA cannot occur.  A poster touches the loop
 * after its push (its bell rung, or a drain under mu when nobody
 * drives the loop), so loop->posting counts posters in flight, from
 * mm__loop_push to the end of mm__loop_poke, and mm_loop_free waits for
 * it to drop to zero before the loop's memory goes.  The push and the
 * poke are apart so that mm_cancel can push while its handle's block is
 * pinned (handle.c: a pinned section takes no lock) and poke after.
 *
 * Not here: when the loop drains (drive.c: at each prepare, after its
 * bell rang, and in the drive loop).
 */
#include "mm-internal.h"

#include <errno.h>

/* Wakes the loop after a push onto one of its MPSC stacks, if it may be
 * asleep.  Dekker-style with on_prepare (drive.c): we push (release CAS) and then
 * load asleep, the loop stores asleep = 1 and then loads the heads, with
 * a seq_cst fence on each side; so either we see asleep and send, or the
 * loop sees our node before it lets libuv block.  While the loop is awake
 * it drains at its next prepare without any system call from us. */
static void wake_if_asleep(mm_loop_t *loop) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&loop->asleep, memory_order_relaxed)) {
    /* When the first post came, for the loop's choice to poll first
     * (drive.c, on_bell).  Relaxed: a hint, nothing is published. */
    uint64_t none = 0;
    atomic_compare_exchange_strong_explicit(&loop->woken_at, &none,
                                            uv_hrtime(),
                                            memory_order_relaxed,
                                            memory_order_relaxed);
    mm__loop_ring(loop);
  }
}

static void handle_bits(mm_loop_t *loop, mm_coro_t *c, unsigned bits) {
  if (bits & MM__REMOTE_SPAWN) {
    mm__coro_admit(c);
    /* After admit: nlive already counts c when pending drops. */
    atomic_fetch_sub_explicit(&loop->pending, 1, memory_order_relaxed);
  }
  if (bits & MM__REMOTE_CANCEL)
    mm__coro_interrupt(c);
  if (bits & MM__REMOTE_WAKE)
    mm__coro_wake_local(c, atomic_load_explicit(&c->remote_status,
                                                memory_order_relaxed));
  if (bits & MM__REMOTE_AWAKE)
    mm__await_check(c);
  if (bits & MM__REMOTE_RELEASE)
    mm__coro_release(c);
}

mm_loop_t *mm__loop_push(mm_coro_t *c, unsigned bits) {
  mm_loop_t *loop = c->loop;
  /* Counted until mm__loop_poke is done with the loop; see
   * the posting wait in mm_loop_free. */
  atomic_fetch_add_explicit(&loop->posting, 1, memory_order_acquire);
  unsigned prev = atomic_fetch_or_explicit(&c->remote_bits,
                                           bits | MM__REMOTE_QUEUED,
                                           memory_order_acq_rel);
  if (!(prev & MM__REMOTE_QUEUED))
    mm__mpsc_push(&loop->remote_head, &c->remote);
  return loop;
}

static void serve_undriven(mm_loop_t *loop, void *arg);

/* If nobody drives the loop, runs fn(loop, arg) right here as its driver,
 * under mu, and returns true.  driven only turns false once the loop has
 * nothing left that could be waiting for an event, or under mu; reading
 * it without the lock can only send us to the slower path. */
static bool run_undriven(mm_loop_t *loop, void (*fn)(mm_loop_t *, void *),
                         void *arg) {
  if (atomic_load_explicit(&loop->driven, memory_order_acquire))
    return false;
  pthread_mutex_lock(&loop->mu);
  bool undriven = !atomic_load_explicit(&loop->driven, memory_order_relaxed);
  if (undriven) {
    mm_loop_t *saved = mm__tls.loop;
    mm__tls.loop = loop;
    fn(loop, arg);
    mm__tls.loop = saved;
  }
  pthread_mutex_unlock(&loop->mu);
  return undriven;
}

/* Sees that what was just queued for the loop is handled: by its driver,
 * woken if it may be asleep, or, if nobody drives the loop, right here
 * under mu (serve_undriven). */
void mm__loop_kick(mm_loop_t *loop) {
  if (!run_undriven(loop, serve_undriven, NULL))
    wake_if_asleep(loop);
}

void mm__loop_poke(mm_loop_t *loop) {
  mm__loop_kick(loop);
  /* Pairs with the acquire load in mm_loop_free: our last access to the
   * loop happened before. */
  atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
}

static void run_tasks(mm_loop_t *loop, mm__mpsc_node_t *fifo) {
  bool shutdown = mm__loop_stopping(loop);
  while (fifo != NULL) {
    mm__loop_task_t *t = container_of(fifo, mm__loop_task_t, node);
    fifo = fifo->next;          /* before run: it may be the last access */
    t->run(t, loop, shutdown);
    atomic_fetch_sub_explicit(&loop->pending, 1, memory_order_relaxed);
  }
}

int mm__loop_submit(mm_loop_t *loop, mm__loop_task_t *t) {
  /* No lock: count the task first, then look at the state, both seq_cst.
   * mm_loop_free stores the state (under mu, seq_cst) and then keeps
   * driving while pending is not 0 (run_done).  Of the two orders, either
   * we see STOPPING and take our count back, or free sees our count and
   * waits for the task, which then runs with shutdown set. */
  atomic_fetch_add_explicit(&loop->posting, 1, memory_order_seq_cst);
  atomic_fetch_add_explicit(&loop->pending, 1, memory_order_seq_cst);
  int state = atomic_load_explicit(&loop->state, memory_order_seq_cst);
  if (state != MM__LOOP_OPEN) {
    atomic_fetch_sub_explicit(&loop->pending, 1, memory_order_seq_cst);
    if (state != MM__LOOP_CLOSING)  /* a driver may wait for pending */
      mm__loop_ring(loop);
    atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
    return -ESHUTDOWN;
  }
  mm__mpsc_push(&loop->tasks, &t->node);
  mm__loop_kick(loop);   /* a loop stopped while nobody drives it answers here */
  atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
  return 0;
}

static void handle_coros(mm_loop_t *loop, mm__mpsc_node_t *fifo) {
  while (fifo != NULL) {
    mm_coro_t *c = container_of(fifo, mm_coro_t, remote);
    fifo = fifo->next;        /* before the exchange: c may be pushed again */
    unsigned bits = atomic_exchange_explicit(&c->remote_bits, 0,
                                             memory_order_acq_rel);
    handle_bits(loop, c, bits);
  }
}

static void drain_coros(mm_loop_t *loop) {
  handle_coros(loop, mm__mpsc_take(&loop->remote_head));
}


/* Nobody drives the loop, and this thread holds mu: act as its driver for
 * what cannot wait.  Events for coroutines are handled.  Once the loop is
 * stopping, every waiting caller is answered: requests in the inbox get
 * -ESHUTDOWN and the coroutines admitted meanwhile -- none has run, as
 * mm_loop_run and the background thread only stop driving once no
 * coroutine is left -- end cancelled, which answers their joiners and
 * run_async callers.  Requests for a loop that is open wait for its run. */
static void serve_undriven(mm_loop_t *loop, void *arg) {
  (void) arg;
  if (mm__loop_stopping(loop)) {
    mm__loop_drain(loop);
    mm__loop_process_stop(loop);
    mm__sched_end_unstarted(loop);
  } else {
    drain_coros(loop);
  }
}

/* mm__loop_call's request, on the caller's stack until its wait ends. */
typedef struct call_req {
  mm__loop_task_t task;
  void (*fn)(mm_loop_t *loop, void *arg);
  void *arg;
  mm__wait_t w;
} call_req_t;

static void call_task(mm__loop_task_t *t, mm_loop_t *loop, bool shutdown) {
  call_req_t *q = container_of(t, call_req_t, task);
  q->fn(loop, q->arg);
  mm__wait_complete(&q->w, 0);   /* last access to q */
}

int mm__loop_call_arg(mm_loop_t *loop, void (*fn)(mm_loop_t *, void *),
                      void *arg) {
  if (mm__on_loop_thread(loop)) {
    fn(loop, arg);
    return 0;
  }
  if (run_undriven(loop, fn, arg))
    return 0;
  call_req_t q;
  q.task.run = call_task;
  q.fn = fn;
  q.arg = arg;
  int r = mm__wait_init(&q.w);
  if (r != 0)
    return r;
  q.w.cancellable = false;   /* the task will end the wait: wait for it */
  r = mm__loop_submit(loop, &q.task);
  return r != 0 ? r : mm__wait_block(&q.w);
}

/* Tasks are taken before the remote queue and run after it: whatever a
 * thread posted before a task (a spawn, a cancel) has then been handled
 * when the task runs (a dump lists that spawn). */
void mm__loop_drain(mm_loop_t *loop) {
  mm__mpsc_node_t *tasks = mm__mpsc_take(&loop->tasks);
  handle_coros(loop, mm__mpsc_take(&loop->remote_head));
  run_tasks(loop, tasks);
}

/* Hands bits for c to its loop: handled here if this thread drives the
 * loop, else queued, and then handled by its driver or, if nobody drives
 * it, right away by this thread under mu (mm__loop_poke). */
void mm__loop_post(mm_coro_t *c, unsigned bits) {
  if (mm__on_loop_thread(c->loop)) {
    handle_bits(c->loop, c, bits);
    return;
  }
  mm__loop_poke(mm__loop_push(c, bits));
}

void mm__loop_post_spawn(mm_coro_t *c) {
  mm_loop_t *loop = mm__loop_push(c, MM__REMOTE_SPAWN);
  wake_if_asleep(loop);
  atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
}
