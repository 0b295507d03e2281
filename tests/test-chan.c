/* Channels: bounded FIFO queues of pointers, colour-blind, between
 * coroutines of any loops and plain threads; close, cancel and bad input.
 */
#include "helpers.h"

#include <pthread.h>

#define ITEM(i) ((void *) (intptr_t) (i))
#define INDEX(p) ((intptr_t) (p))

static mm_loop_t *started_loop(void) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  return loop;
}


/* ---- Bad input -------------------------------------------------------- */

static void test_chan_calls_with_bad_arguments_return_einval(void **state) {
  mm_chan_t *ch = (mm_chan_t *) &ch;
  void *item;
  assert_mm_err(mm_chan_new(NULL, 1), -EINVAL);
  assert_mm_err(mm_chan_new(&ch, 0), -EINVAL);
  assert_null(ch);                                /* cleared on error */
  assert_mm_err(mm_chan_new(&ch, SIZE_MAX), -EINVAL);
  assert_mm_err(mm_chan_send(NULL, ITEM(1)), -EINVAL);
  assert_mm_err(mm_chan_recv(NULL, &item), -EINVAL);
  assert_mm_err(mm_chan_close(NULL), -EINVAL);
  assert_mm_err(mm_chan_free(NULL), -EINVAL);
  assert_mm_ok(mm_chan_new(&ch, 1));
  assert_mm_err(mm_chan_recv(ch, NULL), -EINVAL);
  assert_mm_ok(mm_chan_free(ch));
}


/* ---- Plain threads ---------------------------------------------------- */

static void test_chan_keeps_order_within_its_capacity(void **state) {
  mm_chan_t *ch;
  void *item;
  assert_mm_ok(mm_chan_new(&ch, 4));
  for (int round = 0; round < 3; round++) {    /* the ring wraps around */
    for (int i = 1; i <= 3; i++)
      assert_mm_ok(mm_chan_send(ch, ITEM(i + 10 * round)));
    for (int i = 1; i <= 3; i++) {
      assert_mm_ok(mm_chan_recv(ch, &item));
      assert_int_equal(INDEX(item), i + 10 * round);
    }
  }
  assert_mm_ok(mm_chan_send(ch, NULL));          /* NULL is an item too */
  assert_mm_ok(mm_chan_recv(ch, &item));
  assert_null(item);
  assert_mm_ok(mm_chan_free(ch));
}

enum { PRODUCERS = 4, CONSUMERS = 4 };

typedef struct {
  mm_chan_t *ch;
  int per_producer;
  atomic_int next_producer;
  atomic_int received;
  atomic_uchar *seen;         /* one per item */
  atomic_int duplicates;
} traffic_t;

/* Items are 1 + producer * per_producer + i, so 0 means "none". */
static int produce(traffic_t *t, int p) {
  for (int i = 0; i < t->per_producer; i++) {
    int r = mm_chan_send(t->ch, ITEM(1 + p * t->per_producer + i));
    if (r != 0)
      return r;
  }
  return 0;
}

/* Receives until the channel is closed and drained; per producer, the
 * items of one consumer must come in the order they were sent. */
static int consume(traffic_t *t) {
  int last[PRODUCERS + 1];
  for (int p = 0; p <= PRODUCERS; p++)
    last[p] = -1;
  for (;;) {
    void *item;
    int r = mm_chan_recv(t->ch, &item);
    if (r == -EPIPE)
      return 0;
    if (r != 0)
      return r;
    intptr_t v = INDEX(item) - 1;
    int p = (int) (v / t->per_producer), i = (int) (v % t->per_producer);
    if (p < 0 || p >= PRODUCERS || i <= last[p])
      return -EPROTO;                           /* out of order or bogus */
    last[p] = i;
    if (atomic_fetch_add(&t->seen[v], 1) != 0)
      atomic_fetch_add(&t->duplicates, 1);
    atomic_fetch_add(&t->received, 1);
  }
}

static void traffic_init(traffic_t *t, size_t cap, int per_producer) {
  memset(t, 0, sizeof *t);
  assert_mm_ok(mm_chan_new(&t->ch, cap));
  t->per_producer = per_producer;
  t->seen = calloc((size_t) (PRODUCERS * per_producer), sizeof *t->seen);
  assert_non_null(t->seen);
}

static void traffic_check_and_free(traffic_t *t) {
  assert_int_equal(atomic_load(&t->received), PRODUCERS * t->per_producer);
  assert_int_equal(atomic_load(&t->duplicates), 0);
  assert_mm_ok(mm_chan_free(t->ch));
  free(t->seen);
}

static void *producer_thread(void *arg) {
  traffic_t *t = arg;
  int p = atomic_fetch_add(&t->next_producer, 1);
  return (void *) (intptr_t) produce(t, p);
}

static void *consumer_thread(void *arg) {
  return (void *) (intptr_t) consume(arg);
}

static void run_threads(traffic_t *t) {
  pthread_t prod[PRODUCERS], cons[CONSUMERS];
  for (int i = 0; i < CONSUMERS; i++)
    assert_int_equal(pthread_create(&cons[i], NULL, consumer_thread, t), 0);
  for (int i = 0; i < PRODUCERS; i++)
    assert_int_equal(pthread_create(&prod[i], NULL, producer_thread, t), 0);
  for (int i = 0; i < PRODUCERS; i++) {
    void *rv;
    pthread_join(prod[i], &rv);
    assert_mm_ok((int) (intptr_t) rv);
  }
  assert_mm_ok(mm_chan_close(t->ch));
  for (int i = 0; i < CONSUMERS; i++) {
    void *rv;
    pthread_join(cons[i], &rv);
    assert_mm_ok((int) (intptr_t) rv);
  }
}

static void test_chan_between_threads_delivers_each_item_once_in_order(
    void **state) {
  static const size_t caps[] = { 1, 3, 64 };
  for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
    traffic_t t;
    traffic_init(&t, caps[c], MM_TEST_SCALE(5000, 500));
    run_threads(&t);
    traffic_check_and_free(&t);
  }
}


/* ---- Coroutines and threads together ---------------------------------- */

static int producer_coroutine(void *arg) {
  traffic_t *t = arg;
  return produce(t, atomic_fetch_add(&t->next_producer, 1));
}

static int consumer_coroutine(void *arg) {
  return consume(arg);
}

/* Producers: coroutines of loop A; consumers: coroutines of loop B and
 * plain threads. */
static void test_chan_between_loops_and_threads_delivers_each_item_once(
    void **state) {
  traffic_t t;
  traffic_init(&t, 2, MM_TEST_SCALE(5000, 500));
  mm_loop_t *a = started_loop(), *b = started_loop();
  mm_coro_t *prod[PRODUCERS], *cons[CONSUMERS / 2];
  pthread_t threads[CONSUMERS - CONSUMERS / 2];
  for (int i = 0; i < CONSUMERS / 2; i++)
    assert_mm_ok(mm_spawn(b, consumer_coroutine, &t, &cons[i]));
  for (int i = 0; i < CONSUMERS - CONSUMERS / 2; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, consumer_thread, &t),
                     0);
  for (int i = 0; i < PRODUCERS; i++)
    assert_mm_ok(mm_spawn(a, producer_coroutine, &t, &prod[i]));
  for (int i = 0; i < PRODUCERS; i++)
    assert_mm_ok(mm_join(prod[i]));
  assert_mm_ok(mm_chan_close(t.ch));
  for (int i = 0; i < CONSUMERS / 2; i++)
    assert_mm_ok(mm_join(cons[i]));
  for (int i = 0; i < CONSUMERS - CONSUMERS / 2; i++) {
    void *rv;
    pthread_join(threads[i], &rv);
    assert_mm_ok((int) (intptr_t) rv);
  }
  traffic_check_and_free(&t);
  assert_mm_ok(mm_loop_free(a));
  assert_mm_ok(mm_loop_free(b));
}

/* Two coroutines of one loop through a channel of one place: each send
 * waits for the receive of the one before. */
typedef struct {
  mm_chan_t *ch;
  int n;
  int bad;
} pingpong_t;

static int pp_send(void *arg) {
  pingpong_t *p = arg;
  for (int i = 1; i <= p->n; i++)
    if (mm_chan_send(p->ch, ITEM(i)) != 0)
      return -1;
  return mm_chan_close(p->ch);
}

static int pp_recv(void *arg) {
  pingpong_t *p = arg;
  void *item;
  int want = 1, r;
  while ((r = mm_chan_recv(p->ch, &item)) == 0)
    if (INDEX(item) != want++)
      p->bad++;
  return r == -EPIPE && want == p->n + 1 ? 0 : -1;
}

static void test_chan_between_coroutines_of_one_loop(void **state) {
  pingpong_t p = { .n = 10000 };
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_chan_new(&p.ch, 1));
  mm_coro_t *s, *r;
  assert_mm_ok(mm_spawn(loop, pp_send, &p, &s));
  assert_mm_ok(mm_spawn(loop, pp_recv, &p, &r));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(s));
  assert_mm_ok(mm_join(r));
  assert_int_equal(p.bad, 0);
  assert_mm_ok(mm_chan_free(p.ch));
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Close -------------------------------------------------------------- */

typedef struct {
  mm_chan_t *full;            /* its one place taken: sends wait */
  mm_chan_t *empty;           /* receives wait */
  int send_result[3];
  int recv_result[3];
  int close_result[2];
  int busy_result;
} closing_t;

static int wait_to_send(void *arg) {
  closing_t *c = arg;
  static atomic_int k;
  int i = atomic_fetch_add(&k, 1) % 3;
  c->send_result[i] = mm_chan_send(c->full, ITEM(100 + i));
  return 0;
}

static int wait_to_recv(void *arg) {
  closing_t *c = arg;
  static atomic_int k;
  int i = atomic_fetch_add(&k, 1) % 3;
  void *item = ITEM(-1);
  c->recv_result[i] = mm_chan_recv(c->empty, &item);
  return item == ITEM(-1) ? 0 : -1;      /* untouched on error */
}

/* Runs after the six above have parked (one loop, spawn order). */
static int closer(void *arg) {
  closing_t *c = arg;
  c->busy_result = mm_chan_free(c->empty);   /* waiters: refused */
  c->close_result[0] = mm_chan_close(c->full);
  c->close_result[1] = mm_chan_close(c->empty);
  return 0;
}

static void test_chan_close_wakes_every_waiter_with_epipe(void **state) {
  closing_t c;
  memset(&c, 0, sizeof c);
  assert_mm_ok(mm_chan_new(&c.full, 1));
  assert_mm_ok(mm_chan_new(&c.empty, 1));
  assert_mm_ok(mm_chan_send(c.full, ITEM(7)));
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_coro_t *h[7];
  for (int i = 0; i < 3; i++) {
    assert_mm_ok(mm_spawn(loop, wait_to_send, &c, &h[2 * i]));
    assert_mm_ok(mm_spawn(loop, wait_to_recv, &c, &h[2 * i + 1]));
  }
  assert_mm_ok(mm_spawn(loop, closer, &c, &h[6]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 7; i++)
    assert_mm_ok(mm_join(h[i]));
  assert_mm_err(c.busy_result, -EBUSY);
  assert_mm_ok(c.close_result[0]);
  assert_mm_ok(c.close_result[1]);
  for (int i = 0; i < 3; i++) {
    assert_mm_err(c.send_result[i], -EPIPE);
    assert_mm_err(c.recv_result[i], -EPIPE);
  }
  /* Closed: no more sends, the queued item still drains, then EPIPE. */
  void *item;
  assert_mm_err(mm_chan_send(c.full, ITEM(8)), -EPIPE);
  assert_mm_ok(mm_chan_recv(c.full, &item));
  assert_int_equal(INDEX(item), 7);
  assert_mm_err(mm_chan_recv(c.full, &item), -EPIPE);
  assert_mm_err(mm_chan_close(c.full), -EPIPE);   /* twice */
  assert_mm_ok(mm_chan_free(c.full));
  assert_mm_ok(mm_chan_free(c.empty));
  assert_mm_ok(mm_loop_free(loop));
}

/* Threads blocked in a receive are woken by a close from another thread;
 * many rounds, with the close landing before, during or after the
 * receivers start to wait: every one of them gets -EPIPE. */
static void *recv_expect_epipe(void *arg) {
  void *item;
  return (void *) (intptr_t) mm_chan_recv(arg, &item);
}

static void test_chan_close_from_a_thread_wakes_blocked_threads(
    void **state) {
  for (int round = 0; round < MM_TEST_SCALE(200, 50); round++) {
    mm_chan_t *ch;
    assert_mm_ok(mm_chan_new(&ch, 1));
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
      assert_int_equal(pthread_create(&t[i], NULL, recv_expect_epipe, ch),
                       0);
    assert_mm_ok(mm_chan_close(ch));
    for (int i = 0; i < 3; i++) {
      void *rv;
      pthread_join(t[i], &rv);
      assert_mm_err((int) (intptr_t) rv, -EPIPE);
    }
    assert_mm_ok(mm_chan_free(ch));
  }
}


/* ---- Cancel ------------------------------------------------------------- */

typedef struct {
  mm_chan_t *ch;
  mm_coro_t *waiter;
  int result;
  int after;
} cancel_t;

static int cancelled_recv(void *arg) {
  cancel_t *c = arg;
  void *item = ITEM(-1);
  c->result = mm_chan_recv(c->ch, &item);
  c->after = item == ITEM(-1);
  return 0;
}

static int cancelled_send(void *arg) {
  cancel_t *c = arg;
  c->result = mm_chan_send(c->ch, ITEM(2));
  c->after = mm_cancelled();
  return 0;
}

static int canceller(void *arg) {
  cancel_t *c = arg;
  return mm_cancel(c->waiter);
}

static void run_cancel(cancel_t *c, mm_fn waiter) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, waiter, c, &c->waiter));
  assert_mm_ok(mm_spawn(loop, canceller, c, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c->waiter));
  assert_mm_ok(mm_join(k));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_chan_cancel_of_a_waiting_coroutine_transfers_nothing(
    void **state) {
  cancel_t c;
  void *item;
  /* A receiver: cancelled, nothing received; the next item is kept. */
  memset(&c, 0, sizeof c);
  assert_mm_ok(mm_chan_new(&c.ch, 1));
  run_cancel(&c, cancelled_recv);
  assert_mm_err(c.result, -ECANCELED);
  assert_true(c.after);
  assert_mm_ok(mm_chan_send(c.ch, ITEM(5)));
  assert_mm_ok(mm_chan_recv(c.ch, &item));
  assert_int_equal(INDEX(item), 5);
  assert_mm_ok(mm_chan_free(c.ch));
  /* A sender on a full channel: cancelled, its item never arrives. */
  memset(&c, 0, sizeof c);
  assert_mm_ok(mm_chan_new(&c.ch, 1));
  assert_mm_ok(mm_chan_send(c.ch, ITEM(1)));
  run_cancel(&c, cancelled_send);
  assert_mm_err(c.result, -ECANCELED);
  assert_true(c.after);
  assert_mm_ok(mm_chan_recv(c.ch, &item));
  assert_int_equal(INDEX(item), 1);
  assert_mm_ok(mm_chan_close(c.ch));
  assert_mm_err(mm_chan_recv(c.ch, &item), -EPIPE);
  assert_mm_ok(mm_chan_free(c.ch));
}

/* A send from a thread races the cancel of the coroutine waiting to
 * receive: the item is received, or the cancel wins and the item stays
 * in the channel -- never both, never neither. */
typedef struct {
  mm_chan_t *ch;
  mm_coro_t *waiter;
  mm_test_latch_t waiting;
  int result;
  void *item;
} race_t;

static int racing_recv(void *arg) {
  race_t *r = arg;
  mm_test_latch_add(&r->waiting, 1);
  r->result = mm_chan_recv(r->ch, &r->item);
  return 0;
}

static void *racing_send(void *arg) {
  race_t *r = arg;
  mm_test_latch_wait(&r->waiting, 1);
  return (void *) (intptr_t) mm_chan_send(r->ch, ITEM(9));
}

static void test_chan_send_racing_a_cancel_delivers_exactly_once(
    void **state) {
  mm_loop_t *loop = started_loop();
  int received = 0, kept = 0;
  for (int round = 0; round < MM_TEST_SCALE(500, 100); round++) {
    race_t r;
    memset(&r, 0, sizeof r);
    mm_test_latch_init(&r.waiting);
    assert_mm_ok(mm_chan_new(&r.ch, 1));
    assert_mm_ok(mm_spawn(loop, racing_recv, &r, &r.waiter));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, racing_send, &r), 0);
    mm_test_latch_wait(&r.waiting, 1);
    assert_mm_ok(mm_cancel(r.waiter));
    void *rv;
    pthread_join(t, &rv);
    assert_mm_ok((int) (intptr_t) rv);
    assert_mm_ok(mm_join(r.waiter));
    void *item = NULL;
    assert_mm_ok(mm_chan_close(r.ch));
    int left = mm_chan_recv(r.ch, &item);
    if (r.result == 0) {
      assert_int_equal(INDEX(r.item), 9);
      assert_mm_err(left, -EPIPE);
      received++;
    } else {
      assert_mm_err(r.result, -ECANCELED);
      assert_mm_ok(left);
      assert_int_equal(INDEX(item), 9);
      kept++;
    }
    assert_mm_ok(mm_chan_free(r.ch));
    mm_test_latch_destroy(&r.waiting);
  }
  assert_int_equal(received + kept, MM_TEST_SCALE(500, 100));
  assert_mm_ok(mm_loop_free(loop));
}

/* Issue 8, instance 1: a receiver waits; another thread closes the
 * channel, frees it (no waiter is listed any more) and then cancels the
 * receiver, while a second coroutine holds the loop so that the loop
 * takes the wake and the cancel in one drain.  The close won the wait:
 * the receiver gets -EPIPE and the cancel never touches the freed
 * channel (ASan and Valgrind saw its mutex locked after free). */
typedef struct {
  mm_chan_t *ch;
  mm_test_latch_t parked;     /* 1: the receiver's step is under way */
  mm_test_latch_t holding;    /* 1: the holder holds the loop */
  atomic_int release;         /* the test lets the holder go */
  int result;
} freed_t;

static int freed_recv(void *arg) {
  freed_t *f = arg;
  void *item;
  mm_test_latch_add(&f->parked, 1);
  f->result = mm_chan_recv(f->ch, &item);  /* parks in this same step */
  return 0;
}

static int freed_hold(void *arg) {
  freed_t *f = arg;
  mm_test_latch_add(&f->holding, 1);
  while (!atomic_load_explicit(&f->release, memory_order_acquire))
    ;
  return 0;
}

static void test_chan_cancel_after_close_and_free_leaves_the_channel_alone(
    void **state) {
  mm_loop_t *loop = started_loop();
  for (int round = 0; round < MM_TEST_SCALE(200, 50); round++) {
    freed_t f;
    memset(&f, 0, sizeof f);
    mm_test_latch_init(&f.parked);
    mm_test_latch_init(&f.holding);
    assert_mm_ok(mm_chan_new(&f.ch, 1));
    mm_coro_t *rx, *holder;
    assert_mm_ok(mm_spawn(loop, freed_recv, &f, &rx));
    mm_test_latch_wait(&f.parked, 1);
    /* The loop runs the holder only after the receiver's step parked. */
    assert_mm_ok(mm_spawn(loop, freed_hold, &f, &holder));
    mm_test_latch_wait(&f.holding, 1);
    assert_mm_ok(mm_chan_close(f.ch));
    assert_mm_ok(mm_chan_free(f.ch));
    assert_mm_ok(mm_cancel(rx));
    atomic_store_explicit(&f.release, 1, memory_order_release);
    assert_mm_ok(mm_join(holder));
    assert_mm_ok(mm_join(rx));
    assert_status(f.result, -EPIPE);
    mm_test_latch_destroy(&f.parked);
    mm_test_latch_destroy(&f.holding);
  }
  assert_mm_ok(mm_loop_free(loop));
}

/* mm_loop_free cancels a coroutine waiting in a receive; the channel is
 * then free of waiters. */
static int forever_recv(void *arg) {
  void *item;
  return mm_chan_recv(arg, &item);
}

static void test_loop_free_cancels_a_coroutine_waiting_in_a_channel(
    void **state) {
  mm_chan_t *ch;
  assert_mm_ok(mm_chan_new(&ch, 1));
  mm_loop_t *loop = started_loop();
  assert_mm_ok(mm_spawn(loop, forever_recv, ch, NULL));
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);      /* free reports the live one */
  int rc = mm_loop_free(loop);
  mm_set_log(NULL, NULL);
  mm_test_log_destroy(&log);
  assert_mm_ok(rc);
  assert_mm_ok(mm_chan_free(ch));
}


/* ---- Where they may be called ------------------------------------------ */

typedef struct {
  mm_chan_t *ch;
  int send, recv, close;
} raw_t;

static void chan_from_raw_callback(void *arg) {
  raw_t *r = arg;
  void *item;
  r->send = mm_chan_send(r->ch, ITEM(1));
  r->recv = mm_chan_recv(r->ch, &item);
  r->close = mm_chan_close(r->ch);       /* never waits: allowed */
}

static void test_chan_send_and_recv_from_a_raw_callback_return_edeadlk(
    void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  raw_t r;
  memset(&r, 0, sizeof r);
  assert_mm_ok(mm_chan_new(&r.ch, 1));
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, chan_from_raw_callback,
                                       &r));
  assert_mm_err(r.send, -EDEADLK);
  assert_mm_err(r.recv, -EDEADLK);
  assert_mm_ok(r.close);
  void *item;
  assert_mm_err(mm_chan_recv(r.ch, &item), -EPIPE);   /* nothing was sent */
  assert_mm_ok(mm_chan_free(r.ch));
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}


/* The try calls never wait: from a raw callback they work where the
 * waiting calls are -EDEADLK. */
typedef struct {
  mm_chan_t *ch;
  int send1, send2, recv1, recv2, send_closed, recv_closed;
  void *got;
} try_raw_t;

static void try_from_raw_callback(void *arg) {
  try_raw_t *r = arg;
  void *item = NULL;
  r->send1 = mm_chan_try_send(r->ch, ITEM(1));
  r->send2 = mm_chan_try_send(r->ch, ITEM(2));    /* full */
  r->recv1 = mm_chan_try_recv(r->ch, &r->got);
  r->recv2 = mm_chan_try_recv(r->ch, &item);      /* empty */
  assert_mm_ok(mm_chan_close(r->ch));
  r->send_closed = mm_chan_try_send(r->ch, ITEM(3));
  r->recv_closed = mm_chan_try_recv(r->ch, &item);
}

static void test_chan_try_calls_never_wait_even_in_a_raw_callback(
    void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  try_raw_t r;
  memset(&r, 0, sizeof r);
  assert_mm_ok(mm_chan_new(&r.ch, 1));
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, try_from_raw_callback,
                                       &r));
  assert_mm_ok(r.send1);
  assert_mm_err(r.send2, -EAGAIN);
  assert_mm_ok(r.recv1);
  assert_ptr_equal(r.got, ITEM(1));
  assert_mm_err(r.recv2, -EAGAIN);
  assert_mm_err(r.send_closed, -EPIPE);
  assert_mm_err(r.recv_closed, -EPIPE);
  assert_mm_ok(mm_chan_free(r.ch));
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

/* A libuv callback hands its result to a coroutine parked in
 * mm_chan_recv. */
typedef struct {
  mm_chan_t *ch;
  void      *got;
  int        sent;
} handoff_t;

static int recv_one(void *arg) {
  handoff_t *h = arg;
  return mm_chan_recv(h->ch, &h->got);
}

static void send_from_callback(void *arg) {
  handoff_t *h = arg;
  h->sent = mm_chan_try_send(h->ch, ITEM(5));
}

static void test_chan_try_send_from_a_callback_wakes_a_receiver(
    void **state) {
  uv_loop_t uv;
  mm_loop_t *loop;
  handoff_t h = { 0 };
  assert_mm_ok(mm_chan_new(&h.ch, 1));
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, recv_one, &h, &c));
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, send_from_callback, &h));
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(h.sent);
  assert_ptr_equal(h.got, ITEM(5));
  assert_mm_ok(mm_chan_free(h.ch));
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

/* try_recv makes room for a sender blocked on a full channel. */
typedef struct {
  mm_chan_t *ch;
  int first, second;
} blocked_sender_t;

static void *send_two(void *arg) {
  blocked_sender_t *b = arg;
  b->first = mm_chan_send(b->ch, ITEM(1));
  b->second = mm_chan_send(b->ch, ITEM(2));     /* waits for room */
  return NULL;
}

static void test_chan_try_recv_lets_a_blocked_sender_in(void **state) {
  blocked_sender_t b = { 0 };
  assert_mm_ok(mm_chan_new(&b.ch, 1));
  for (int round = 0; round < 200; round++) {
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, send_two, &b), 0);
    void *item = NULL;
    int r;
    while ((r = mm_chan_try_recv(b.ch, &item)) == -EAGAIN)
      sched_yield();                 /* until the first item is in */
    assert_mm_ok(r);
    assert_ptr_equal(item, ITEM(1));
    assert_mm_ok(mm_chan_recv(b.ch, &item));
    assert_ptr_equal(item, ITEM(2));
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_mm_ok(b.first);
    assert_mm_ok(b.second);
  }
  void *item;
  assert_mm_err(mm_chan_try_recv(b.ch, &item), -EAGAIN);
  assert_mm_err(mm_chan_try_send(NULL, ITEM(1)), -EINVAL);
  assert_mm_err(mm_chan_try_recv(NULL, &item), -EINVAL);
  assert_mm_err(mm_chan_try_recv(b.ch, NULL), -EINVAL);
  assert_mm_ok(mm_chan_free(b.ch));
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_chan_calls_with_bad_arguments_return_einval),
    mm_test(test_chan_keeps_order_within_its_capacity),
    mm_test(test_chan_between_threads_delivers_each_item_once_in_order),
    mm_test(test_chan_between_loops_and_threads_delivers_each_item_once),
    mm_test(test_chan_between_coroutines_of_one_loop),
    mm_test(test_chan_close_wakes_every_waiter_with_epipe),
    mm_test(test_chan_close_from_a_thread_wakes_blocked_threads),
    mm_test(test_chan_cancel_of_a_waiting_coroutine_transfers_nothing),
    mm_test(test_chan_send_racing_a_cancel_delivers_exactly_once),
    mm_test(test_chan_cancel_after_close_and_free_leaves_the_channel_alone),
    mm_test(test_loop_free_cancels_a_coroutine_waiting_in_a_channel),
    mm_test(test_chan_send_and_recv_from_a_raw_callback_return_edeadlk),
    mm_test(test_chan_try_calls_never_wait_even_in_a_raw_callback),
    mm_test(test_chan_try_send_from_a_callback_wakes_a_receiver),
    mm_test(test_chan_try_recv_lets_a_blocked_sender_in),
  };
  return mm_run_tests(tests);
}
