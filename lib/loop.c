/* Loops: life cycle (new, run, start, stop, free), the drive loop, and the
 * remote queue through which other threads reach a loop.
 *
 * The remote queue is an mm__mpsc stack of coroutines (mm-internal.h) with
 * the event bits kept on each coroutine:
 *
 *   post:  fetch_or(c->remote_bits, bits | QUEUED, acq_rel); only the
 *          poster that set QUEUED pushes c, with a CAS on remote_head
 *          (release: c's fields and bits written before are visible to the
 *          drain), then sends the loop's uv_async (libuv coalesces sends).
 *   drain: exchange(remote_head, NULL, acquire) takes the whole stack at
 *          once; it is reversed into posting order; for each c the drain
 *          reads remote.next first and then exchanges remote_bits to 0
 *          (acq_rel).  After that exchange another poster may push c again,
 *          which is why remote.next was read before.
 *
 * Only the drain pops, so ABA cannot occur.  A poster touches the loop
 * after its push (the uv_async_send, or a drain under mu when nobody
 * drives the loop), so loop->posting counts posters in flight, from
 * mm__loop_push to the end of mm__loop_poke, and mm_loop_free waits for
 * it to drop to zero before the loop's memory goes.  The push and the
 * poke are apart so that mm_cancel can push while its handle's block is
 * pinned (handle.c: a pinned section takes no lock) and poke after.
 *
 * Locks: loop->mu protects driven, background and the state transitions;
 * see mm-internal.h for the order.
 */
#include "mm-internal.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_STACK_SIZE (256 * 1024)
#define MAX_STACK_SIZE ((size_t) 1 << 30)

/* Gives every field left 0 ("default") its default value. */
static void fill_defaults(mm_loop_options_t *o) {
  if (o->stack_size == 0)
    o->stack_size = DEFAULT_STACK_SIZE;
  if (o->pool_max_threads == 0)
    o->pool_max_threads = 64;
  if (o->pool_idle_ms == 0)
    o->pool_idle_ms = 10000;
  const char *dbg = getenv("MIXMODE_DEBUG");
  if (o->slow_step_ms == 0 && dbg != NULL && strcmp(dbg, "1") == 0)
    o->slow_step_ms = 100;
}

void mm_loop_options_init(mm_loop_options_t *o) {
  if (o == NULL)
    return;
  memset(o, 0, sizeof(*o));
  fill_defaults(o);
}

/* Whether this thread may touch the loop's internals directly.  An owned
 * loop: this thread is inside drive() (or holds mu while nobody drives).
 * A borrowed loop: this is the thread that runs the user's uv_run. */
bool mm__on_loop_thread(const mm_loop_t *loop) {
  if (loop->borrowed)
    return pthread_equal(loop->owner, pthread_self());
  return mm__tls.loop == loop;
}

static bool stopping(const mm_loop_t *loop) {
  return atomic_load_explicit(&loop->state, memory_order_relaxed) !=
         MM__LOOP_OPEN;
}

/* ---- remote queue -------------------------------------------------------- */

/* Wakes the loop after a push onto one of its MPSC stacks, if it may be
 * asleep.  Dekker-style with on_prepare: we push (release CAS) and then
 * load asleep, the loop stores asleep = 1 and then loads the heads, with
 * a seq_cst fence on each side; so either we see asleep and send, or the
 * loop sees our node before it lets libuv block.  While the loop is awake
 * it drains at its next prepare without any system call from us. */
static void wake_if_asleep(mm_loop_t *loop) {
  atomic_thread_fence(memory_order_seq_cst);
  if (atomic_load_explicit(&loop->asleep, memory_order_relaxed))
    uv_async_send(&loop->async);
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
  if (bits & MM__REMOTE_RELEASE)
    mm__coro_release(c);
}

mm_loop_t *mm__loop_push(mm_coro_t *c, unsigned bits) {
  mm_loop_t *loop = c->loop;
  /* Counted until mm__loop_poke is done with the loop; see
   * wait_posters() in mm_loop_free. */
  atomic_fetch_add_explicit(&loop->posting, 1, memory_order_acquire);
  unsigned prev = atomic_fetch_or_explicit(&c->remote_bits,
                                           bits | MM__REMOTE_QUEUED,
                                           memory_order_acq_rel);
  if (!(prev & MM__REMOTE_QUEUED))
    mm__mpsc_push(&loop->remote_head, &c->remote);
  return loop;
}

static void serve_undriven(mm_loop_t *loop);

/* Sees that what was just queued for the loop is handled: by its driver,
 * woken if it may be asleep, or, if nobody drives the loop, right here
 * under mu (serve_undriven). */
static void kick(mm_loop_t *loop) {
  /* driven only turns false once the loop has nothing left that could be
   * waiting for an event, or under mu below; reading it without the lock
   * can only send us to the slower path. */
  if (!atomic_load_explicit(&loop->driven, memory_order_acquire)) {
    pthread_mutex_lock(&loop->mu);
    bool undriven = !atomic_load_explicit(&loop->driven,
                                          memory_order_relaxed);
    if (undriven)
      serve_undriven(loop);
    pthread_mutex_unlock(&loop->mu);
    if (undriven)
      return;
  }
  wake_if_asleep(loop);
}

void mm__loop_poke(mm_loop_t *loop) {
  kick(loop);
  /* Pairs with the acquire load in mm_loop_free: our last access to the
   * loop happened before. */
  atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
}

static void run_tasks(mm_loop_t *loop, mm__mpsc_node_t *fifo) {
  bool shutdown = stopping(loop);
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
      uv_async_send(&loop->async);
    atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
    return -ESHUTDOWN;
  }
  mm__mpsc_push(&loop->tasks, &t->node);
  kick(loop);   /* a loop stopped while nobody drives it answers here */
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

static void process_stop(mm_loop_t *loop);
static void drain_remote(mm_loop_t *loop);

/* Nobody drives the loop, and this thread holds mu: act as its driver for
 * what cannot wait.  Events for coroutines are handled.  Once the loop is
 * stopping, every waiting caller is answered: requests in the inbox get
 * -ESHUTDOWN and the coroutines admitted meanwhile -- none has run, as
 * mm_loop_run and the background thread only stop driving once no
 * coroutine is left -- end cancelled, which answers their joiners and
 * run_async callers.  Requests for a loop that is open wait for its run. */
static void serve_undriven(mm_loop_t *loop) {
  mm_loop_t *saved = mm__tls.loop;
  mm__tls.loop = loop;
  if (stopping(loop)) {
    drain_remote(loop);
    process_stop(loop);
    mm__sched_end_unstarted(loop);
  } else {
    drain_coros(loop);
  }
  mm__tls.loop = saved;
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
  if (!atomic_load_explicit(&loop->driven, memory_order_acquire)) {
    pthread_mutex_lock(&loop->mu);
    if (!atomic_load_explicit(&loop->driven, memory_order_relaxed)) {
      mm_loop_t *saved = mm__tls.loop;
      mm__tls.loop = loop;
      fn(loop, arg);
      mm__tls.loop = saved;
      pthread_mutex_unlock(&loop->mu);
      return 0;
    }
    pthread_mutex_unlock(&loop->mu);
  }
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
static void drain_remote(mm_loop_t *loop) {
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

/* ---- handles ------------------------------------------------------------ */


bool mm__loop_stopping(const mm_loop_t *loop) {
  return stopping(loop);
}

void *mm__loop_set_bridge(mm_loop_t *loop, void *bridge,
                          const mm__bridge_ops_t *ops) {
  pthread_mutex_lock(&loop->mu);
  void *cur = atomic_load_explicit(&loop->bridge, memory_order_relaxed);
  /* None is made once the loop stops: mm_loop_free reads the slot after
   * it has set STOPPING under mu, so a later one would never be freed. */
  if (cur == NULL && !stopping(loop)) {
    loop->bridge_ops = ops;
    /* Release: the bridge's fields are visible to whoever loads it with
     * acquire (the bridge layer's fast path). */
    atomic_store_explicit(&loop->bridge, bridge, memory_order_release);
    cur = bridge;
  }
  pthread_mutex_unlock(&loop->mu);
  return cur;
}

/* The async handle keeps uv_run going exactly while the loop has work:
 * live coroutines, released handles owed, spawns in flight, or a
 * background loop that has not been stopped. */
void mm__loop_update_refs(mm_loop_t *loop) {
  bool need = mm__counter_get(&loop->nlive) != 0 || loop->njoining != 0 ||
              atomic_load_explicit(&loop->pending, memory_order_relaxed) ||
              (loop->background && !stopping(loop));
  if (need)
    uv_ref((uv_handle_t *) &loop->async);
  else
    uv_unref((uv_handle_t *) &loop->async);
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

static void process_stop(mm_loop_t *loop) {
  if (!stopping(loop) || loop->stop_done)
    return;
  loop->stop_done = true;
  mm__cancel_all(loop);
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

/* A wake-up that came this soon after the loop went to sleep says that
 * answers come quickly: the next time, poll first.  Larger than POLL_NS
 * because the time measured includes the wake-up itself. */
#define POLL_WORTH_NS 50000

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
  while (heads_empty(loop) && dt < POLL_NS) {
    for (int i = 0; i < 32; i++)
      mm__cpu_relax();
    if (dt >= POLL_YIELD_NS)
      sched_yield();
    dt = uv_hrtime() - t0;
  }
  return !heads_empty(loop);
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
      drain_remote(loop);
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
    atomic_store_explicit(&loop->asleep, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (heads_empty(loop))
      break;
    atomic_store_explicit(&loop->asleep, 0, memory_order_relaxed);
  }
  loop->sleep_start = uv_hrtime();
  mm__loop_update_refs(loop);
}

/* Right after libuv polled: awake again. */
static void on_check(uv_check_t *h) {
  mm_loop_t *loop = h->data;
  atomic_store_explicit(&loop->asleep, 0, memory_order_relaxed);
}

static void on_async(uv_async_t *h) {
  mm_loop_t *loop = h->data;
  mm__tls.loop = loop;
  /* Woken by a post within the polling window: poll first next time. */
  if (atomic_load_explicit(&loop->asleep, memory_order_relaxed))
    loop->poll_first = uv_hrtime() - loop->sleep_start < POLL_WORTH_NS;
  drain_remote(loop);
  process_stop(loop);
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
         (!loop->background || stopping(loop));
}

/* Runs the loop on this thread until run_done().  loop->driven is set. */
static void drive(mm_loop_t *loop) {
  mm_loop_t *saved = mm__tls.loop;
  mm__tls.loop = loop;
  for (;;) {
    drain_remote(loop);
    process_stop(loop);
    mm__loop_update_refs(loop);
    if (run_done(loop))
      break;
    uv_run(loop->uv, UV_RUN_ONCE);
  }
  mm__tls.loop = saved;
}

static void set_driven(mm_loop_t *loop, bool on) {
  /* Under mu.  Release pairs with the acquire load in mm__loop_post. */
  atomic_store_explicit(&loop->driven, on, memory_order_release);
  if (!on)
    pthread_cond_broadcast(&loop->cv);
}

static int loop_init(mm_loop_t *loop, const mm_loop_options_t *o) {
  if (o != NULL) {
    loop->opt = *o;
    fill_defaults(&loop->opt);
  } else {
    mm_loop_options_init(&loop->opt);
  }
  if (loop->opt.stack_size > MAX_STACK_SIZE ||
      loop->opt.pool_min_threads > loop->opt.pool_max_threads)
    return -EINVAL;
  if (loop->opt.slow_step_ms != 0) {
    int r = mm__watchdog_start(loop);
    if (r != 0)
      return r;
  }

  mm__guard_install();
  mm__fork_init();
  loop->fork_gen = mm__fork_generation();
  mm__list_init(&loop->ready);
  mm__list_init(&loop->live);
  mm__list_init(&loop->zombies);
  mm__list_init(&loop->cache);
  atomic_init(&loop->remote_head, NULL);
  atomic_init(&loop->tasks, NULL);
  atomic_init(&loop->pending, 0);
  atomic_init(&loop->posting, 0);
  atomic_init(&loop->state, MM__LOOP_OPEN);
  atomic_init(&loop->driven, false);

  int r = uv_async_init(loop->uv, &loop->async, on_async);
  if (r != 0) {
    mm__watchdog_stop(loop);
    return r;
  }
  loop->async.data = loop;
  uv_unref((uv_handle_t *) &loop->async);
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
  /* Until the loop first runs, every post wakes it. */
  atomic_init(&loop->asleep, 1);
  mm__timers_init(loop);
  pthread_mutex_init(&loop->mu, NULL);
  pthread_cond_init(&loop->cv, NULL);
  return 0;
}

int mm_loop_new(mm_loop_t **out, const mm_loop_options_t *o) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  mm_loop_t *loop = calloc(1, sizeof(*loop));
  if (loop == NULL)
    return -ENOMEM;
  int r = uv_loop_init(&loop->own_uv);
  if (r != 0)
    goto err_free;
  loop->uv = &loop->own_uv;
  r = loop_init(loop, o);
  if (r != 0)
    goto err_uv;
  *out = loop;
  return 0;

err_uv:
  /* loop_init fails before adding a handle or after adding all; in the
   * latter case it does not fail.  Only the uv loop remains. */
  uv_loop_close(&loop->own_uv);
err_free:
  free(loop);
  return r;
}

int mm_loop_from_uv(mm_loop_t **out, uv_loop_t *uv,
                    const mm_loop_options_t *o) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  if (uv == NULL)
    return -EINVAL;
  mm_loop_t *loop = calloc(1, sizeof(*loop));
  if (loop == NULL)
    return -ENOMEM;
  loop->uv = uv;
  loop->borrowed = true;
  int r = loop_init(loop, o);
  if (r != 0) {
    free(loop);
    return r;
  }
  /* The user's uv_run drives a borrowed loop; we cannot see it start or
   * end, so other threads always post to it.  This thread is taken to be
   * the one that runs uv. */
  atomic_store_explicit(&loop->driven, true, memory_order_relaxed);
  loop->owner = pthread_self();
  *out = loop;
  return 0;
}

uv_loop_t *mm_loop_uv(mm_loop_t *loop) {
  return loop != NULL ? loop->uv : NULL;
}

int mm_loop_run(mm_loop_t *loop) {
  if (loop == NULL || loop->borrowed)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  if (mm__tls.coro != NULL)
    return -EDEADLK;
  if (mm__tls.loop == loop)
    return -EBUSY;
  if (mm__tls.loop != NULL)
    return -EDEADLK;

  pthread_mutex_lock(&loop->mu);
  if (stopping(loop)) {
    pthread_mutex_unlock(&loop->mu);
    return -ESHUTDOWN;
  }
  if (atomic_load_explicit(&loop->driven, memory_order_relaxed) ||
      loop->background) {
    pthread_mutex_unlock(&loop->mu);
    return -EBUSY;
  }
  set_driven(loop, true);
  pthread_mutex_unlock(&loop->mu);

  drive(loop);

  pthread_mutex_lock(&loop->mu);
  set_driven(loop, false);
  pthread_mutex_unlock(&loop->mu);
  return 0;
}

static void *background_main(void *arg) {
  mm_loop_t *loop = arg;
#ifdef HAVE_PTHREAD_SETNAME_NP
  pthread_setname_np(pthread_self(), "mm-loop");
#endif
  drive(loop);
  pthread_mutex_lock(&loop->mu);
  set_driven(loop, false);
  pthread_mutex_unlock(&loop->mu);
  return NULL;
}

int mm_loop_start(mm_loop_t *loop) {
  if (loop == NULL || loop->borrowed)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  pthread_mutex_lock(&loop->mu);
  int r = 0;
  if (stopping(loop))
    r = -ESHUTDOWN;
  else if (atomic_load_explicit(&loop->driven, memory_order_relaxed) ||
           loop->background)
    r = -EBUSY;
  if (r == 0) {
    loop->background = true;
    set_driven(loop, true);
    if (pthread_create(&loop->bg_thread, NULL, background_main, loop) != 0) {
      loop->background = false;
      set_driven(loop, false);
      r = -EAGAIN;
    }
  }
  pthread_mutex_unlock(&loop->mu);
  return r;
}

int mm_loop_stop(mm_loop_t *loop) {
  if (loop == NULL)
    return -EINVAL;
  if (mm__loop_inherited(loop))
    return -ECHILD;
  pthread_mutex_lock(&loop->mu);
  atomic_store_explicit(&loop->state, MM__LOOP_STOPPING, memory_order_seq_cst);
  pthread_mutex_unlock(&loop->mu);
  if (mm__on_loop_thread(loop)) {
    process_stop(loop);
    mm__loop_update_refs(loop);
  } else {
    /* The driver, if any, carries out the stop in on_async; nobody: here,
     * at once (serve_undriven answers every waiting caller). */
    uv_async_send(&loop->async);
    kick(loop);
  }
  return 0;
}

static void on_closed(uv_handle_t *h) {
  mm_loop_t *loop = h->data;
  loop->handles_closed++;
}

/* Closes h unless it is closing or closed already: a borrowed loop shut
 * down the libuv way (uv_walk, uv_close of every handle) before
 * mm_loop_free.  Its close callback was then the user's, not on_closed.
 * Returns how many on_closed calls to wait for. */
static unsigned close_ours(uv_handle_t *h) {
  if (uv_is_closing(h))
    return 0;
  uv_close(h, on_closed);
  return 1;
}

/* Reports and frees the handles nobody joined. */
static void reap_zombies(mm_loop_t *loop) {
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->zombies) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    mm__log(MM_LOG_WARN, "mm_loop_free: coroutine %" PRIu64 " '%s' ended "
            "with status %d (%s) but was never joined or detached",
            c->id, c->name != NULL ? c->name : "", c->status,
            mm_strerror(c->status));
    mm__list_remove(&c->all);
    free(c->name);
    mm__coro_unmap(c);
  }
}

/* A warning per coroutine still alive when mm_loop_free is called: name,
 * state and age as mm_loop_dump gives them.  The live list belongs to the
 * loop's thread: walked there, or here with the loop undriven under mu. */
static void report_live_here(mm_loop_t *loop, void *arg) {
  (void) arg;
  uint64_t now = uv_hrtime();
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live) {
    mm_coro_t *c = container_of(n, mm_coro_t, all);
    mm__log(MM_LOG_WARN, "mm_loop_free: coroutine %" PRIu64 " '%s' is "
            "still alive (%s%s, age %" PRIu64 " ms); cancelling it", c->id,
            c->name != NULL ? c->name : "", mm__coro_state_name(c->state),
            mm__coro_cancel_reason(c) != 0 ? ", cancelled" : "",
            (now - c->born) / 1000000);
  }
}

/* Closes the loop's handles and runs uv until they are closed. */
static void close_handles(mm_loop_t *loop) {
  unsigned closing = close_ours((uv_handle_t *) &loop->async) +
                     close_ours((uv_handle_t *) &loop->idle) +
                     close_ours((uv_handle_t *) &loop->prepare) +
                     close_ours((uv_handle_t *) &loop->check);
  loop->uvtimer.data = loop;
  closing += mm__timers_close(loop, on_closed);
  /* At least one pass: it also ends the closes the user started and did
   * not run uv for, before the handles' memory goes with the loop. */
  do
    uv_run(loop->uv, UV_RUN_NOWAIT);
  while (loop->handles_closed < closing);
}

static void close_uv(mm_loop_t *loop) {
  if (loop->borrowed)
    return;
  int r = uv_loop_close(&loop->own_uv);
  if (r != 0)
    mm__log(MM_LOG_WARN, "mm_loop_free: the uv loop still has handles "
            "of the user's open (%s); they are leaked", uv_strerror(r));
}

/* ---- a loop inherited across fork ---------------------------------------- */

bool mm__loop_inherited(const mm_loop_t *loop) {
  return loop->fork_gen != mm__fork_generation();
}

/* Unmaps c's block; c never runs again. */
static void forget_coro(mm_coro_t *c) {
  mm__locals_free(&c->locals);
  if (c->caller != NULL)
    mm__waiter_unref(c->caller);
  free(c->name);
  mm__coro_unmap(c);
}

/* mm_loop_free in a forked child, of a loop its parent made.  The loop's
 * threads, and the locks they held, stayed with the parent: nothing is
 * stopped, driven or joined, and no coroutine runs here (they are the
 * parent's, and must not run twice).  An owned uv loop first gets its own
 * kernel state (uv_loop_fork: until then its epoll set is the parent's),
 * so that closing the handles leaves the parent's loop alone.  A borrowed
 * uv loop is the user's: libuv wants uv_loop_fork called on it before any
 * use in the child, which is theirs to do before this free.
 * TODO(#8): the bridge layer's state is left (its pools' threads are the
 * parent's: freeing it would join them); it needs a bridge op that
 * forgets threads. */
static int free_inherited(mm_loop_t *loop) {
  if (!loop->borrowed) {
    int r = uv_loop_fork(loop->uv);
    if (r != 0)
      return r;
  }
  close_handles(loop);
  /* First the remote queue, whose links run through blocks of the lists
   * below: spawns not admitted yet are on no list. */
  mm__mpsc_node_t *q = mm__mpsc_take(&loop->remote_head);
  while (q != NULL) {
    mm_coro_t *c = container_of(q, mm_coro_t, remote);
    q = q->next;
    if (atomic_load_explicit(&c->remote_bits, memory_order_relaxed) &
        MM__REMOTE_SPAWN)
      forget_coro(c);
  }
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->live)
    forget_coro(container_of(n, mm_coro_t, all));
  mm__list_foreach_safe(n, tmp, &loop->zombies)
    forget_coro(container_of(n, mm_coro_t, all));
  mm__cache_free(loop);
  mm__timers_free(loop);
  close_uv(loop);
  mm__watchdog_stop(loop);    /* its thread is the parent's: not joined */
  /* mu and cv are not destroyed: a thread left behind may hold mu. */
  free(loop);
  return 0;
}

/* Before mm_loop_free stops the loop, while the coroutines are as the
 * program left them: a driver on another thread (mm_loop_start's, or a
 * mm_loop_run) cancels them and waits for their end as soon as it sees
 * the stop.  A loop already stopping by then (mm_loop_stop) is being
 * emptied by its driver: nothing to report from here. */
static void report_live(mm_loop_t *loop) {
  mm__loop_call(loop, report_live_here);
}

int mm_loop_free(mm_loop_t *loop) {
  if (loop == NULL)
    return -EINVAL;
  /* A thread the loop would wait for: one of its workers, lanes or its
   * sensitive thread, or any thread running a call for one of its
   * coroutines (a caller thread serving it). */
  if (mm__tls.serves == loop ||
      (mm__tls.proxy != NULL && mm__tls.proxy->loop == loop))
    return -EDEADLK;
  if (mm__tls.coro != NULL && mm__tls.coro->loop == loop)
    return -EBUSY;
  if (mm__tls.loop == loop && !loop->borrowed)
    return -EBUSY;
  if (mm__loop_inherited(loop))
    return free_inherited(loop);
  if (loop->borrowed && !mm__on_loop_thread(loop))
    return -EBUSY;

  report_live(loop);
  pthread_mutex_lock(&loop->mu);
  atomic_store_explicit(&loop->state, MM__LOOP_STOPPING, memory_order_seq_cst);
  bool bg = loop->background;
  pthread_mutex_unlock(&loop->mu);

  if (bg) {
    uv_async_send(&loop->async);
    pthread_join(loop->bg_thread, NULL);
    pthread_mutex_lock(&loop->mu);
    loop->background = false;
    set_driven(loop, true);
    pthread_mutex_unlock(&loop->mu);
  } else if (!loop->borrowed) {
    /* Wait for a mm_loop_run on another thread to see the stop and end. */
    uv_async_send(&loop->async);
    pthread_mutex_lock(&loop->mu);
    while (atomic_load_explicit(&loop->driven, memory_order_relaxed))
      pthread_cond_wait(&loop->cv, &loop->mu);
    set_driven(loop, true);
    pthread_mutex_unlock(&loop->mu);
  }

  /* Finish what is left on this thread: cancelled coroutines run to their
   * end, owed releases arrive. */
  drive(loop);

  /* Posters still inside push_remote or mm__loop_submit touch
   * loop->async.  From CLOSING on, a submitter that finds the loop
   * stopping does not poke it; one that counted itself in posting before
   * (seq_cst, Dekker-style with this store) is waited for here. */
  atomic_store_explicit(&loop->state, MM__LOOP_CLOSING, memory_order_seq_cst);
  while (atomic_load_explicit(&loop->posting, memory_order_seq_cst) != 0)
    sched_yield();
  mm__tls.loop = loop;
  drain_remote(loop);
  reap_zombies(loop);
  void *bridge = atomic_load_explicit(&loop->bridge, memory_order_acquire);
  if (bridge != NULL)
    loop->bridge_ops->free(loop, bridge);

  close_handles(loop);
  mm__tls.loop = NULL;

  /* The watchdog reads the loop's step fields: joined before it goes. */
  mm__watchdog_stop(loop);
  mm__cache_free(loop);
  mm__timers_free(loop);
  close_uv(loop);
  pthread_mutex_destroy(&loop->mu);
  pthread_cond_destroy(&loop->cv);
  free(loop);
  return 0;
}
