/* Lane sets: each lane opens and closes its state on its own thread, and
 * its calls see that state; a failing open fails mm_laneset_new and
 * leaves nothing behind; threads are named mm-NAME-i; a call goes to the
 * first idle lane, so one slow call stalls no other; calls from plain
 * threads run on the set; queued calls are cancelled like the pool's;
 * mm_laneset_free waits for queued calls and closes every lane; a set
 * never freed is freed by mm_loop_free with a warning; the stats; bad
 * input and -EDEADLK (mm_laneset_free on its own lane or a raw loop
 * callback, mm_loop_free on a lane).
 *
 * Nothing here orders events with sleeps: functions on lanes wait on
 * latches, and the test thread waits for counts.
 */
#define _GNU_SOURCE 1   /* pthread_getname_np */
#include <dirent.h>
#include <sched.h>

#include "helpers.h"

/* Threads of this process whose name starts with prefix. */
static int count_threads_named(const char *prefix) {
  DIR *d = opendir("/proc/self/task");
  if (d == NULL)
    return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], comm[32];
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
      continue;   /* the thread exited meanwhile */
    if (fgets(comm, sizeof comm, f) != NULL &&
        strncmp(comm, prefix, strlen(prefix)) == 0)
      n++;
    fclose(f);
  }
  closedir(d);
  return n;
}

/* Threads named prefix once the joined ones are gone from /proc: a
 * thread is joined when it has exited, and its task leaves the list just
 * after.  Polls until none is left, for at most 5 s; returns the count. */
static int threads_left(const char *prefix) {
  int n;
  for (int i = 0; i < 2500 && (n = count_threads_named(prefix)) != 0; i++) {
    struct timespec ts = { 0, 2 * 1000 * 1000 };
    nanosleep(&ts, NULL);
  }
  return n;
}

static mm_sync_options_t on_set(mm_laneset_t *set) {
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANESET;
  o.laneset = set;
  return o;
}


/* ---- A lane's state: opened and closed on its own thread --------------- */

enum { MAX_LANES = 16 };

/* What one lane's open made: it lives until that lane's close. */
typedef struct lane_rec {
  pthread_t opened_on;
  char      name[16];
  int       index;
  int       calls;            /* calls this lane ran (its own thread) */
} lane_rec_t;

typedef struct {
  pthread_mutex_t mu;
  atomic_int      tickets;    /* opens started */
  int             fail_ticket;  /* the open that fails, -1: none */
  int             fail_with;
  lane_rec_t      recs[MAX_LANES];  /* one per open that succeeded */
  int             opens;      /* protected by mu */
  int             closes;     /* protected by mu */
  int             close_on_other_thread;  /* protected by mu */
  int             close_with_state_seen;  /* mm_lane_state() != NULL */
} hooks_t;

static void hooks_init(hooks_t *h) {
  memset(h, 0, sizeof *h);
  pthread_mutex_init(&h->mu, NULL);
  h->fail_ticket = -1;
}

static int open_lane(void **state, void *arg) {
  hooks_t *h = arg;
  int ticket = atomic_fetch_add_explicit(&h->tickets, 1,
                                         memory_order_relaxed);
  if (ticket == h->fail_ticket)
    return h->fail_with;
  pthread_mutex_lock(&h->mu);
  lane_rec_t *rec = &h->recs[h->opens++];
  pthread_mutex_unlock(&h->mu);
  rec->opened_on = pthread_self();
  pthread_getname_np(pthread_self(), rec->name, sizeof rec->name);
  rec->index = ticket;
  *state = rec;
  return 0;
}

static void close_lane(void *state, void *arg) {
  hooks_t *h = arg;
  lane_rec_t *rec = state;
  pthread_mutex_lock(&h->mu);
  h->closes++;
  if (!pthread_equal(rec->opened_on, pthread_self()))
    h->close_on_other_thread++;
  if (mm_lane_state() != NULL)
    h->close_with_state_seen++;
  pthread_mutex_unlock(&h->mu);
}

static mm_laneset_options_t set_options(const char *name, unsigned count,
                                        hooks_t *h) {
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = name;
  o.count = count;
  o.open = open_lane;
  o.close = close_lane;
  o.arg = h;
  return o;
}

/* A call that checks it runs on the thread that opened its lane's
 * state; returns 0 if so. */
static int on_own_lane(void *arg) {
  lane_rec_t *rec = mm_lane_state();
  if (rec == NULL)
    return -ENOENT;
  if (!pthread_equal(rec->opened_on, pthread_self()))
    return -EXDEV;
  rec->calls++;
  return 0;
}

static void test_laneset_options_init_sets_count_1_and_nothing_else(
    void **state) {
  mm_laneset_options_t o;
  memset(&o, 0xff, sizeof o);
  mm_laneset_options_init(&o);
  assert_null(o.name);
  assert_int_equal(o.count, 1);
  assert_null(o.open);
  assert_null(o.close);
  assert_null(o.arg);
  mm_laneset_options_init(NULL);    /* does nothing */
}

typedef struct {
  mm_laneset_t *set;
  int           results[20];
} calls_t;

static int call_twenty_times(void *arg) {
  calls_t *c = arg;
  mm_sync_options_t o = on_set(c->set);
  for (int i = 0; i < 20; i++)
    c->results[i] = mm_run_sync_ex(on_own_lane, NULL, &o);
  return 0;
}

static void test_each_lane_opens_and_closes_its_state_on_its_own_thread(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  mm_laneset_options_t o = set_options("own", 3, &h);
  calls_t c;
  assert_mm_ok(mm_laneset_new(loop, &o, &c.set));
  /* Every lane has opened by the time new returns. */
  pthread_mutex_lock(&h.mu);
  int opens = h.opens;
  pthread_mutex_unlock(&h.mu);
  assert_int_equal(opens, 3);
  assert_int_equal(count_threads_named("mm-own-"), 3);
  mm_coro_t *co;
  assert_mm_ok(mm_spawn(loop, call_twenty_times, &c, &co));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(co));
  for (int i = 0; i < 20; i++)
    assert_status(c.results[i], 0);
  /* From a plain thread too: the call runs on a lane, this thread waits. */
  mm_sync_options_t so = on_set(c.set);
  assert_mm_ok(mm_run_sync_ex(on_own_lane, NULL, &so));
  assert_mm_ok(mm_laneset_free(c.set));
  assert_int_equal(h.closes, 3);
  assert_int_equal(h.close_on_other_thread, 0);
  assert_int_equal(h.close_with_state_seen, 0);
  assert_int_equal(threads_left("mm-own-"), 0);
  int calls = 0;
  for (int i = 0; i < 3; i++)
    calls += h.recs[i].calls;
  assert_int_equal(calls, 21);
  assert_mm_ok(mm_loop_free(loop));
  pthread_mutex_destroy(&h.mu);
}

static void test_laneset_threads_are_named_mm_name_1_to_count(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  mm_laneset_options_t o = set_options("db", 3, &h);
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  bool seen[3] = { false, false, false };
  for (int i = 0; i < 3; i++) {
    int n = 0;
    char end = 0;
    if (sscanf(h.recs[i].name, "mm-db-%d%c", &n, &end) != 1 || n < 1 ||
        n > 3 || seen[n - 1])
      fail_msg("lane thread named '%s'", h.recs[i].name);
    seen[n - 1] = true;
  }
  assert_mm_ok(mm_laneset_free(set));
  assert_mm_ok(mm_loop_free(loop));
  pthread_mutex_destroy(&h.mu);
}

static void test_long_laneset_names_are_shortened_keeping_the_index(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  mm_laneset_options_t o = set_options("a-very-long-set-name", 2, &h);
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  for (int i = 0; i < 2; i++) {
    assert_int_equal(strlen(h.recs[i].name), 15);
    if (strcmp(h.recs[i].name, "mm-a-very-lon-1") != 0 &&
        strcmp(h.recs[i].name, "mm-a-very-lon-2") != 0)
      fail_msg("lane thread named '%s'", h.recs[i].name);
  }
  assert_mm_ok(mm_laneset_free(set));
  /* Ten lanes and more: every name keeps its whole index. */
  hooks_init(&h);
  o = set_options("a-very-long-set-name", 10, &h);
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  int ten = 0;
  for (int i = 0; i < 10; i++)
    if (strcmp(h.recs[i].name, "mm-a-very-lo-10") == 0)
      ten++;
  assert_int_equal(ten, 1);
  assert_mm_ok(mm_laneset_free(set));
  /* Without a name: "laneset". */
  hooks_init(&h);
  o = set_options(NULL, 1, &h);
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  assert_string_equal(h.recs[0].name, "mm-laneset-1");
  assert_mm_ok(mm_laneset_free(set));
  assert_mm_ok(mm_loop_free(loop));
  pthread_mutex_destroy(&h.mu);
}

static void test_a_failing_open_fails_new_after_closing_the_opened_lanes(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  h.fail_ticket = 2;
  h.fail_with = -ECONNREFUSED;
  mm_laneset_options_t o = set_options("fail", 4, &h);
  mm_laneset_t *set = (mm_laneset_t *) &set;   /* must be cleared */
  assert_mm_err(mm_laneset_new(loop, &o, &set), -ECONNREFUSED);
  assert_null(set);
  /* The three lanes that opened have closed, on their own threads, and
   * every thread has been joined. */
  assert_int_equal(atomic_load(&h.tickets), 4);
  assert_int_equal(h.opens, 3);
  assert_int_equal(h.closes, 3);
  assert_int_equal(h.close_on_other_thread, 0);
  assert_int_equal(threads_left("mm-fail-"), 0);
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.lane_calls, 0);
  /* mm_loop_free has nothing to warn about. */
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);
  int r = mm_loop_free(loop);
  mm_set_log(NULL, NULL);
  assert_mm_ok(r);
  assert_int_equal(log.count, 0);
  mm_test_log_destroy(&log);
  pthread_mutex_destroy(&h.mu);
}

static int open_fails_at_once(void **state, void *arg) {
  return -EACCES;
}

static void test_a_set_whose_only_open_fails_leaves_no_thread(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "only";
  o.open = open_fails_at_once;
  mm_laneset_t *set;
  assert_mm_err(mm_laneset_new(loop, &o, &set), -EACCES);
  assert_null(set);
  assert_int_equal(threads_left("mm-only-"), 0);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Dispatch: the first idle lane ------------------------------------ */

typedef struct {
  mm_laneset_t   *set;
  mm_test_latch_t held;       /* the slow call has started */
  mm_test_latch_t gate;       /* opened once the quick calls are done */
  pthread_t       slow_thread;
  pthread_t       quick_threads[10];
  int             slow_result;
  int             quick_results[10];
} dispatch_t;

static int slow_call(void *arg) {
  dispatch_t *d = arg;
  d->slow_thread = pthread_self();
  mm_test_latch_add(&d->held, 1);
  mm_test_latch_wait(&d->gate, 1);
  return 3;
}

typedef struct {
  dispatch_t *d;
  int         i;
} quick_arg_t;

static int quick_call(void *arg) {
  quick_arg_t *q = arg;
  q->d->quick_threads[q->i] = pthread_self();
  return 4;
}

static void *slow_caller(void *arg) {
  dispatch_t *d = arg;
  mm_sync_options_t o = on_set(d->set);
  d->slow_result = mm_run_sync_ex(slow_call, d, &o);
  return NULL;
}

static int quick_caller(void *arg) {
  dispatch_t *d = arg;
  mm_sync_options_t o = on_set(d->set);
  for (int i = 0; i < 10; i++) {
    quick_arg_t q = { d, i };
    d->quick_results[i] = mm_run_sync_ex(quick_call, &q, &o);
  }
  return 0;
}

/* The slow call holds one lane until the quick calls are all done: they
 * can only finish on the other lane, never queued behind it. */
static void test_a_call_goes_to_the_first_idle_lane_not_behind_a_slow_one(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  dispatch_t d;
  memset(&d, 0, sizeof d);
  mm_test_latch_init(&d.held);
  mm_test_latch_init(&d.gate);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "first";
  o.count = 2;
  assert_mm_ok(mm_laneset_new(loop, &o, &d.set));
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, slow_caller, &d), 0);
  mm_test_latch_wait(&d.held, 1);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, quick_caller, &d, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  mm_test_latch_add(&d.gate, 1);
  pthread_join(th, NULL);
  assert_status(d.slow_result, 3);
  for (int i = 0; i < 10; i++) {
    assert_status(d.quick_results[i], 4);
    assert_false(pthread_equal(d.quick_threads[i], d.slow_thread));
    assert_true(pthread_equal(d.quick_threads[i], d.quick_threads[0]));
  }
  assert_mm_ok(mm_laneset_free(d.set));
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&d.gate);
  mm_test_latch_destroy(&d.held);
}


/* ---- Queued calls: stats, cancel, free --------------------------------- */

typedef struct {
  mm_laneset_t   *set;
  mm_test_latch_t running;
  mm_test_latch_t gate;
  atomic_int      ran;
  mm_coro_t      *queued;
  int             holder_result;
  int             queued_result;
  int             free_result;
} queue_t;

static int hold(void *arg) {
  queue_t *q = arg;
  mm_test_latch_add(&q->running, 1);
  mm_test_latch_wait(&q->gate, 1);
  atomic_fetch_add(&q->ran, 1);
  return 0;
}

static int count_run(void *arg) {
  queue_t *q = arg;
  atomic_fetch_add(&q->ran, 1);
  return 0;
}

static void *hold_from_thread(void *arg) {
  queue_t *q = arg;
  mm_sync_options_t o = on_set(q->set);
  q->holder_result = mm_run_sync_ex(hold, q, &o);
  return NULL;
}

static void *count_from_thread(void *arg) {
  queue_t *q = arg;
  mm_sync_options_t o = on_set(q->set);
  intptr_t r = mm_run_sync_ex(count_run, q, &o);
  return (void *) r;
}

static mm_stats_t stats_when_queued(mm_loop_t *loop, uint64_t want) {
  mm_stats_t st;
  do
    assert_mm_ok(mm_loop_stats(loop, &st));
  while (st.lane_queued < want && sched_yield() == 0);
  return st;
}

static void test_stats_count_laneset_calls_and_those_waiting_for_a_lane(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  queue_t q;
  memset(&q, 0, sizeof q);
  mm_test_latch_init(&q.running);
  mm_test_latch_init(&q.gate);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "stats";
  assert_mm_ok(mm_laneset_new(loop, &o, &q.set));
  pthread_t th[3];
  assert_int_equal(pthread_create(&th[0], NULL, hold_from_thread, &q), 0);
  mm_test_latch_wait(&q.running, 1);
  for (int i = 1; i < 3; i++)
    assert_int_equal(pthread_create(&th[i], NULL, count_from_thread, &q), 0);
  mm_stats_t st = stats_when_queued(loop, 2);
  assert_int_equal(st.lane_queued, 2);    /* not the running one */
  assert_int_equal(st.lane_calls, 3);
  assert_int_equal(st.sync_calls, 0);
  assert_int_equal(st.sync_queued, 0);
  assert_int_equal(st.sync_running, 0);
  mm_test_latch_add(&q.gate, 1);
  for (int i = 0; i < 3; i++) {
    void *r;
    pthread_join(th[i], &r);
    if (i > 0)
      assert_int_equal((intptr_t) r, 0);
  }
  assert_status(q.holder_result, 0);
  assert_int_equal(atomic_load(&q.ran), 3);
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_int_equal(st.lane_queued, 0);
  assert_mm_ok(mm_laneset_free(q.set));
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&q.gate);
  mm_test_latch_destroy(&q.running);
}

static int holder_coro(void *arg) {
  queue_t *q = arg;
  mm_sync_options_t o = on_set(q->set);
  q->holder_result = mm_run_sync_ex(hold, q, &o);
  return 0;
}

static int queued_coro(void *arg) {
  queue_t *q = arg;
  mm_sync_options_t o = on_set(q->set);
  q->queued_result = mm_run_sync_ex(count_run, q, &o);
  return 0;
}

/* Runs after the holder and the queued caller have parked (FIFO). */
static int cancel_queued_then_open(void *arg) {
  queue_t *q = arg;
  int r = mm_cancel(q->queued);
  mm_test_latch_add(&q->gate, 1);
  return r;
}

static void test_cancel_of_a_queued_laneset_call_removes_it(void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  queue_t q;
  memset(&q, 0, sizeof q);
  mm_test_latch_init(&q.running);
  mm_test_latch_init(&q.gate);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "cancel";
  assert_mm_ok(mm_laneset_new(loop, &o, &q.set));
  mm_coro_t *a, *c;
  assert_mm_ok(mm_spawn(loop, holder_coro, &q, &a));
  assert_mm_ok(mm_spawn(loop, queued_coro, &q, &q.queued));
  assert_mm_ok(mm_spawn(loop, cancel_queued_then_open, &q, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(q.queued));
  assert_mm_ok(mm_join(c));
  assert_status(q.holder_result, 0);
  assert_status(q.queued_result, -ECANCELED);
  assert_int_equal(atomic_load(&q.ran), 1);   /* the holder only */
  assert_mm_ok(mm_laneset_free(q.set));
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&q.gate);
  mm_test_latch_destroy(&q.running);
}

static int free_set(void *arg) {
  queue_t *q = arg;
  q->free_result = mm_laneset_free(q->set);
  return 0;
}

/* Two calls wait behind the holder when the free starts: a coroutine's
 * free runs on a worker (sync_running), and the set leaves the stats'
 * lists first (lane_queued drops to 0 while its calls still wait).  Only
 * then is the holder let go, so the free must wait for all three. */
static void test_laneset_free_waits_for_queued_calls_then_closes(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  queue_t q;
  memset(&q, 0, sizeof q);
  mm_test_latch_init(&q.running);
  mm_test_latch_init(&q.gate);
  hooks_t h;
  hooks_init(&h);
  mm_laneset_options_t o = set_options("drain", 1, &h);
  assert_mm_ok(mm_laneset_new(loop, &o, &q.set));
  pthread_t th[3];
  assert_int_equal(pthread_create(&th[0], NULL, hold_from_thread, &q), 0);
  mm_test_latch_wait(&q.running, 1);
  for (int i = 1; i < 3; i++)
    assert_int_equal(pthread_create(&th[i], NULL, count_from_thread, &q), 0);
  stats_when_queued(loop, 2);
  assert_mm_ok(mm_loop_start(loop));
  mm_coro_t *freer;
  assert_mm_ok(mm_spawn(loop, free_set, &q, &freer));
  mm_stats_t st;
  do
    assert_mm_ok(mm_loop_stats(loop, &st));
  while ((st.sync_running != 1 || st.lane_queued != 0) && sched_yield() == 0);
  assert_int_equal(atomic_load(&q.ran), 0);
  mm_test_latch_add(&q.gate, 1);
  assert_mm_ok(mm_join(freer));
  assert_mm_ok(q.free_result);
  /* By the time the free returned, every call had run and the lane had
   * closed. */
  assert_int_equal(atomic_load(&q.ran), 3);
  assert_int_equal(h.closes, 1);
  assert_int_equal(threads_left("mm-drain-"), 0);
  for (int i = 0; i < 3; i++)
    pthread_join(th[i], NULL);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&q.gate);
  mm_test_latch_destroy(&q.running);
  pthread_mutex_destroy(&h.mu);
}

static int free_in_coroutine(void *arg) {
  return mm_laneset_free(arg);
}

static void test_laneset_free_in_a_coroutine_waits_on_the_pool(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  mm_laneset_options_t o = set_options("coro", 2, &h);
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, free_in_coroutine, set, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_int_equal(h.closes, 2);
  assert_int_equal(threads_left("mm-coro-"), 0);
  assert_mm_ok(mm_loop_free(loop));
  pthread_mutex_destroy(&h.mu);
}

typedef struct {
  mm_loop_t         *loop;
  hooks_t           *h;
  mm_laneset_t      *set;
  int                result;
} new_in_coro_t;

static int new_in_coroutine(void *arg) {
  new_in_coro_t *n = arg;
  mm_laneset_options_t o = set_options("made", 2, n->h);
  n->result = mm_laneset_new(n->loop, &o, &n->set);
  return 0;
}

static void test_laneset_new_in_a_coroutine_makes_a_usable_set(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  new_in_coro_t n = { loop, &h, NULL, -1 };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, new_in_coroutine, &n, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(n.result);
  assert_non_null(n.set);
  assert_int_equal(h.opens, 2);
  mm_sync_options_t so = on_set(n.set);
  assert_mm_ok(mm_run_sync_ex(on_own_lane, NULL, &so));
  assert_mm_ok(mm_laneset_free(n.set));
  assert_int_equal(h.closes, 2);
  assert_mm_ok(mm_loop_free(loop));
  pthread_mutex_destroy(&h.mu);
}

static void test_a_laneset_never_freed_is_freed_by_loop_free_with_a_warning(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  hooks_t h;
  hooks_init(&h);
  mm_laneset_options_t o = set_options("left", 2, &h);
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);
  int r = mm_loop_free(loop);
  mm_set_log(NULL, NULL);
  assert_mm_ok(r);
  assert_int_equal(log.max_level, MM_LOG_WARN);
  if (strstr(log.text, "lane set") == NULL)
    fail_msg("the warning does not name a lane set:\n%s", log.text);
  assert_int_equal(h.closes, 2);
  assert_int_equal(threads_left("mm-left-"), 0);
  mm_test_log_destroy(&log);
  pthread_mutex_destroy(&h.mu);
}


/* ---- mm_lane_state elsewhere ------------------------------------------ */

static int state_is_null(void *arg) {
  return mm_lane_state() == NULL ? 0 : -EEXIST;
}

typedef struct {
  mm_lane_t *lane;
  int        in_coroutine, on_worker, on_lane;
} elsewhere_t;

static int state_elsewhere(void *arg) {
  elsewhere_t *e = arg;
  e->in_coroutine = state_is_null(NULL);
  e->on_worker = mm_run_sync(state_is_null, NULL);
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = e->lane;
  e->on_lane = mm_run_sync_ex(state_is_null, NULL, &o);
  return 0;
}

static void test_lane_state_is_null_outside_a_laneset_call(void **state) {
  assert_mm_ok(state_is_null(NULL));           /* a plain thread */
  mm_loop_t *loop = mm_test_loop_new(0);
  elsewhere_t e;
  memset(&e, 0, sizeof e);
  assert_mm_ok(mm_lane_new(loop, "plain", &e.lane));
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, state_elsewhere, &e, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(e.in_coroutine, 0);
  assert_status(e.on_worker, 0);
  assert_status(e.on_lane, 0);
  /* A set without open: its calls see NULL too. */
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  mm_sync_options_t so = on_set(set);
  assert_mm_ok(mm_run_sync_ex(state_is_null, NULL, &so));
  assert_mm_ok(mm_laneset_free(set));
  assert_mm_ok(mm_lane_free(e.lane));
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Bad input, -EDEADLK, -ESHUTDOWN ---------------------------------- */

static void test_laneset_new_and_free_with_bad_arguments_return_einval(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "bad";
  mm_laneset_t *set = (mm_laneset_t *) &set;
  assert_mm_err(mm_laneset_new(NULL, &o, &set), -EINVAL);
  assert_null(set);
  set = (mm_laneset_t *) &set;
  assert_mm_err(mm_laneset_new(loop, NULL, &set), -EINVAL);
  assert_null(set);
  assert_mm_err(mm_laneset_new(loop, &o, NULL), -EINVAL);
  o.count = 0;
  set = (mm_laneset_t *) &set;
  assert_mm_err(mm_laneset_new(loop, &o, &set), -EINVAL);
  assert_null(set);
  assert_mm_err(mm_laneset_free(NULL), -EINVAL);
  assert_int_equal(threads_left("mm-bad-"), 0);
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  int runs;
  int plain, in_coroutine;
} no_set_t;

static int count_runs(void *arg) {
  ((no_set_t *) arg)->runs++;
  return 0;
}

static int call_without_set(void *arg) {
  no_set_t *n = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANESET;
  n->in_coroutine = mm_run_sync_ex(count_runs, n, &o);
  return 0;
}

static void test_run_sync_with_laneset_affinity_and_no_set_returns_einval(
    void **state) {
  no_set_t n;
  memset(&n, 0, sizeof n);
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANESET;
  n.plain = mm_run_sync_ex(count_runs, &n, &o);
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, call_without_set, &n, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(n.plain, -EINVAL);
  assert_status(n.in_coroutine, -EINVAL);
  assert_int_equal(n.runs, 0);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_laneset_new_after_the_loop_stopped_returns_eshutdown(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "late";
  assert_mm_ok(mm_loop_stop(loop));
  mm_laneset_t *set = (mm_laneset_t *) &set;
  assert_mm_err(mm_laneset_new(loop, &o, &set), -ESHUTDOWN);
  assert_null(set);
  assert_int_equal(threads_left("mm-late-"), 0);
  assert_mm_ok(mm_loop_free(loop));
}

static int free_own_set(void *arg) {
  return mm_laneset_free(arg);
}

typedef struct {
  mm_laneset_t *set;
  int           result;
} raw_free_t;

static void free_in_raw_callback(void *arg) {
  raw_free_t *r = arg;
  r->result = mm_laneset_free(r->set);
}

static void test_laneset_free_from_its_own_lane_or_raw_callback_is_edeadlk(
    void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "self";
  o.count = 2;
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  /* From one of its own lanes: it would join itself. */
  mm_sync_options_t so = on_set(set);
  assert_mm_err(mm_run_sync_ex(free_own_set, set, &so), -EDEADLK);
  /* From the loop's thread outside coroutines. */
  raw_free_t raw = { set, 0 };
  assert_int_equal(mm_test_in_raw_callback(&uv, loop, free_in_raw_callback,
                                           &raw), 0);
  assert_status(raw.result, -EDEADLK);
  /* Both left the set usable. */
  assert_mm_ok(mm_run_sync_ex(state_is_null, NULL, &so));
  assert_mm_ok(mm_laneset_free(set));
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}

static int free_loop(void *arg) {
  return mm_loop_free(arg);
}

/* A lane's thread is one the loop waits for when it is freed. */
static void test_loop_free_from_a_laneset_call_returns_edeadlk(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "loopfree";
  mm_laneset_t *set;
  assert_mm_ok(mm_laneset_new(loop, &o, &set));
  mm_sync_options_t so = on_set(set);
  assert_mm_err(mm_run_sync_ex(free_loop, loop, &so), -EDEADLK);
  assert_mm_ok(mm_laneset_free(set));
  assert_mm_ok(mm_loop_free(loop));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_laneset_options_init_sets_count_1_and_nothing_else),
    mm_test(test_each_lane_opens_and_closes_its_state_on_its_own_thread),
    mm_test(test_laneset_threads_are_named_mm_name_1_to_count),
    mm_test(test_long_laneset_names_are_shortened_keeping_the_index),
    mm_test(test_a_failing_open_fails_new_after_closing_the_opened_lanes),
    mm_test(test_a_set_whose_only_open_fails_leaves_no_thread),
    mm_test(test_a_call_goes_to_the_first_idle_lane_not_behind_a_slow_one),
    mm_test(test_stats_count_laneset_calls_and_those_waiting_for_a_lane),
    mm_test(test_cancel_of_a_queued_laneset_call_removes_it),
    mm_test(test_laneset_free_waits_for_queued_calls_then_closes),
    mm_test(test_laneset_free_in_a_coroutine_waits_on_the_pool),
    mm_test(test_laneset_new_in_a_coroutine_makes_a_usable_set),
    mm_test(test_a_laneset_never_freed_is_freed_by_loop_free_with_a_warning),
    mm_test(test_lane_state_is_null_outside_a_laneset_call),
    mm_test(test_laneset_new_and_free_with_bad_arguments_return_einval),
    mm_test(test_run_sync_with_laneset_affinity_and_no_set_returns_einval),
    mm_test(test_laneset_new_after_the_loop_stopped_returns_eshutdown),
    mm_test(test_laneset_free_from_its_own_lane_or_raw_callback_is_edeadlk),
    mm_test(test_loop_free_from_a_laneset_call_returns_edeadlk),
  };
  return mm_run_tests(tests);
}
