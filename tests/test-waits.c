/* Every waiting call of a coroutine that is cancelled or passes its spawn
 * deadline (mm_spawn_ex's timeout_ms): mm_yield, mm_sleep, mm_join,
 * mm_run_sync, mm_run_async (same loop and another loop), mm_chan_send,
 * mm_chan_recv, mm_group_wait, mm_tcp_accept, mm_tcp_read, mm_tcp_write
 * and mm_tcp_connect, and mm_lane_free.  A table of cases: each call is
 * made twice by one coroutine, the subject -- first while the
 * cancellation or the deadline comes (the call is waiting then), and
 * again once it is pending.  Both return -ECANCELED in a cancelled
 * coroutine and -ETIMEDOUT in one past its deadline.  (mm_lane_free only
 * once pending: a running one is waited for, as a run_sync call.)
 *
 * Order without sleeps: a driver coroutine makes what the call waits on,
 * then spawns the subject (and, for a cancel, a canceller after it) and
 * joins it.  The subject runs first and waits for ever in its call; the
 * canceller runs once it waits.  A deadline of 1 ms cannot fire before the
 * subject waits: timers fire in libuv's timer phase, never inside the pass
 * over the ready coroutines that runs the subject up to its call.
 */
#include "helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#define FOREVER_MS 100000000u

enum { HUGE_WRITE = 32 * 1024 * 1024 };   /* beyond any socket buffers */

typedef struct wait_case wait_case_t;

/* One case's run.  Fields below "made by setup" belong to the driver
 * coroutine and to the subject, which runs while the driver waits. */
typedef struct {
  const wait_case_t *wc;
  bool deadline;              /* else a cancel */
  mm_loop_t *loop;
  mm_loop_t *other;           /* started; run_async goes there */
  int stuck_port;             /* a listener whose queue is full: a connect
                                 to it waits (SYNs are dropped) */
  mm_coro_t *subject;
  /* results */
  int setup, cleanup;         /* of the driver's steps */
  int first, again;           /* the subject's two calls */
  int subject_status;         /* the driver's join of the subject */
  int canceller_status;
  /* made by setup, released by cleanup */
  mm_coro_t *children[2];
  mm_group_t *groups[2];
  mm_lane_t *lane;
  mm_chan_t *chan;
  mm_tcp_t *srv, *conns[2];
  char *data;
  mm_test_latch_t release;    /* the run_sync function waits for it */
} waits_t;

struct wait_case {
  const char *name;
  int (*setup)(waits_t *t);           /* in the driver; may be NULL */
  int (*call)(waits_t *t, int i);     /* in the subject: i = 0, then 1 */
  int (*cleanup)(waits_t *t);         /* in the driver; may be NULL */
};


/* ---- The calls ----------------------------------------------------------- */

static int sleep_forever(void *arg) {
  (void) arg;
  return mm_sleep(FOREVER_MS);
}

static int call_yield(waits_t *t, int i) {
  int r;
  while ((r = mm_yield()) == 0)
    ;
  return r;
}

static int call_sleep(waits_t *t, int i) {
  return mm_sleep(FOREVER_MS);
}

static int setup_join(waits_t *t) {
  for (int i = 0; i < 2; i++) {
    int r = mm_spawn(t->loop, sleep_forever, NULL, &t->children[i]);
    if (r != 0)
      return r;
  }
  return 0;
}

static int call_join(waits_t *t, int i) {
  return mm_join(t->children[i]);   /* cancels the child and waits */
}

/* Blocks its worker until the driver lets it go (after both calls). */
static int wait_for_release(void *arg) {
  waits_t *t = arg;
  mm_test_latch_wait(&t->release, 1);
  return 0;
}

static int release_run_sync(waits_t *t) {
  mm_test_latch_add(&t->release, 1);
  return 0;
}

/* abandon_on_cancel: a running call is left at once, one still queued is
 * removed; either way the call returns the coroutine's reason. */
static int call_run_sync(waits_t *t, int i) {
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.abandon_on_cancel = true;
  return mm_run_sync_ex(wait_for_release, t, &o);
}

static int call_run_async_here(waits_t *t, int i) {
  return mm_run_async(t->loop, sleep_forever, NULL);
}

static int call_run_async_other(waits_t *t, int i) {
  return mm_run_async(t->other, sleep_forever, NULL);
}

static int setup_send(waits_t *t) {
  int r = mm_chan_new(&t->chan, 1);
  return r != 0 ? r : mm_chan_send(t->chan, t);    /* now full */
}

static int call_send(waits_t *t, int i) {
  return mm_chan_send(t->chan, t);
}

static int setup_recv(waits_t *t) {
  return mm_chan_new(&t->chan, 1);
}

static int call_recv(waits_t *t, int i) {
  void *item;
  return mm_chan_recv(t->chan, &item);
}

static int free_chan(waits_t *t) {
  return mm_chan_free(t->chan);
}

static int setup_group(waits_t *t) {
  for (int i = 0; i < 2; i++) {
    int r = mm_group_new(t->loop, &t->groups[i]);
    if (r == 0)
      r = mm_group_spawn(t->groups[i], sleep_forever, NULL);
    if (r != 0)
      return r;
  }
  return 0;
}

static int call_group_wait(waits_t *t, int i) {
  return mm_group_wait(t->groups[i]);
}

/* A listener, and n connections to it (never accepted). */
static int setup_tcp(waits_t *t, int n) {
  int r = mm_tcp_listen(&t->srv, "127.0.0.1", 0, 0);
  for (int i = 0; r == 0 && i < n; i++)
    r = mm_tcp_connect(&t->conns[i], "127.0.0.1", mm_tcp_port(t->srv));
  return r;
}

static int close_tcp(waits_t *t) {
  for (int i = 0; i < 2; i++)
    if (t->conns[i] != NULL)
      mm_tcp_close(t->conns[i]);
  free(t->data);
  return mm_tcp_close(t->srv);
}

static int setup_accept(waits_t *t) {
  return setup_tcp(t, 0);
}

static int call_accept(waits_t *t, int i) {
  mm_tcp_t *c;
  return mm_tcp_accept(t->srv, &c);
}

static int setup_read(waits_t *t) {
  return setup_tcp(t, 1);
}

static int call_read(waits_t *t, int i) {
  char buf[16];
  return (int) mm_tcp_read(t->conns[0], buf, sizeof buf);
}

static int setup_write(waits_t *t) {
  if ((t->data = calloc(1, HUGE_WRITE)) == NULL)
    return -ENOMEM;
  return setup_tcp(t, 2);
}

/* Nobody reads: the write waits once the socket buffers are full.  Its
 * cancel closes the connection, so the second call uses another one. */
static int call_write(waits_t *t, int i) {
  return mm_tcp_write(t->conns[i], t->data, HUGE_WRITE);
}

/* The write waits for the cancellation, which closes the connection; a
 * read on it then returns the same reason. */
static int call_write_then_read(waits_t *t, int i) {
  char buf[16];
  return i == 0 ? mm_tcp_write(t->conns[0], t->data, HUGE_WRITE)
                : (int) mm_tcp_read(t->conns[0], buf, sizeof buf);
}

static int call_connect(waits_t *t, int i) {
  mm_tcp_t *c;
  return mm_tcp_connect(&c, "127.0.0.1", t->stuck_port);
}

static int setup_lane(waits_t *t) {
  return mm_lane_new(t->loop, "waits", &t->lane);
}

/* The sleep waits for the cancellation; the lane's free comes after. */
static int call_lane_free(waits_t *t, int i) {
  return i == 0 ? mm_sleep(FOREVER_MS) : mm_lane_free(t->lane);
}

static int free_lane(waits_t *t) {
  return mm_lane_free(t->lane);      /* left as it was */
}

static const wait_case_t cases[] = {
  { "mm_yield", NULL, call_yield, NULL },
  { "mm_sleep", NULL, call_sleep, NULL },
  { "mm_join", setup_join, call_join, NULL },
  { "mm_run_sync", NULL, call_run_sync, release_run_sync },
  { "mm_run_async (same loop)", NULL, call_run_async_here, NULL },
  { "mm_run_async (other loop)", NULL, call_run_async_other, NULL },
  { "mm_chan_send", setup_send, call_send, free_chan },
  { "mm_chan_recv", setup_recv, call_recv, free_chan },
  { "mm_group_wait", setup_group, call_group_wait, NULL },
  { "mm_tcp_accept", setup_accept, call_accept, close_tcp },
  { "mm_tcp_read", setup_read, call_read, close_tcp },
  { "mm_tcp_write", setup_write, call_write, close_tcp },
  { "mm_tcp_connect", NULL, call_connect, NULL },
  { "mm_tcp_read (after its write closed)", setup_write, call_write_then_read,
    close_tcp },
  { "mm_lane_free (once pending)", setup_lane, call_lane_free, free_lane },
};


/* ---- Running a case ------------------------------------------------------ */

static int subject(void *arg) {
  waits_t *t = arg;
  t->first = t->wc->call(t, 0);
  t->again = t->wc->call(t, 1);
  return 0;
}

static int canceller(void *arg) {
  waits_t *t = arg;
  return mm_cancel(t->subject);
}

static int driver(void *arg) {
  waits_t *t = arg;
  if (t->wc->setup != NULL && (t->setup = t->wc->setup(t)) != 0)
    return t->setup;
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.name = t->wc->name;
  o.timeout_ms = t->deadline ? 1 : 0;
  int r = mm_spawn_ex(t->loop, subject, t, &o, &t->subject);
  if (r != 0)
    return t->setup = r;
  mm_coro_t *k = NULL;
  if (!t->deadline && (r = mm_spawn(t->loop, canceller, t, &k)) != 0)
    return t->setup = r;
  t->subject_status = mm_join(t->subject);
  if (k != NULL)
    t->canceller_status = mm_join(k);
  if (t->wc->cleanup != NULL)
    t->cleanup = t->wc->cleanup(t);
  return 0;
}

/* A listener on the loopback whose accept queue (backlog 0: one
 * connection) is full, so that a connect to it waits. */
static void stuck_listener(int *lfd, int *cfd, int *port) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  *lfd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(*lfd >= 0);
  assert_int_equal(bind(*lfd, (struct sockaddr *) &a, sizeof a), 0);
  assert_int_equal(getsockname(*lfd, (struct sockaddr *) &a, &len), 0);
  assert_int_equal(listen(*lfd, 0), 0);
  *port = ntohs(a.sin_port);
  *cfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  assert_true(*cfd >= 0);
  if (connect(*cfd, (struct sockaddr *) &a, sizeof a) != 0)
    assert_int_equal(errno, EINPROGRESS);
  struct pollfd p = { .fd = *cfd, .events = POLLOUT };
  assert_int_equal(poll(&p, 1, -1), 1);   /* connected: the queue is full */
}

/* What went wrong in the cases run so far: every case runs, then the
 * test fails with the whole list. */
static char wrong[4096];
static size_t wrong_len;

static void check(const char *what, const wait_case_t *wc, int got,
                  int want) {
  if (got != want && wrong_len < sizeof wrong)
    wrong_len += (size_t) snprintf(wrong + wrong_len, sizeof wrong -
                                   wrong_len, "\n  %s: %s returned %d (%s), "
                                   "expected %d (%s)", wc->name, what, got,
                                   mm_strerror(got), want, mm_strerror(want));
}

static void run_case(const wait_case_t *wc, bool deadline) {
  waits_t t;
  memset(&t, 0, sizeof t);
  t.wc = wc;
  t.deadline = deadline;
  mm_test_latch_init(&t.release);
  int lfd, cfd;
  stuck_listener(&lfd, &cfd, &t.stuck_port);
  assert_mm_ok(mm_loop_new(&t.loop, NULL));
  assert_mm_ok(mm_loop_new(&t.other, NULL));
  assert_mm_ok(mm_loop_start(t.other));

  mm_test_run_one(t.loop, driver, &t);

  int want = deadline ? -ETIMEDOUT : -ECANCELED;
  check("the driver's setup", wc, t.setup, 0);
  check("the call waiting", wc, t.first, want);
  check("the call made once pending", wc, t.again, want);
  /* The subject's status: fn's value, or -ETIMEDOUT past its deadline. */
  check("the subject's join", wc, t.subject_status, deadline ? want : 0);
  check("the cancel", wc, t.canceller_status, 0);
  check("the driver's cleanup", wc, t.cleanup, 0);
  assert_mm_ok(mm_loop_free(t.loop));
  assert_mm_ok(mm_loop_free(t.other));
  close(cfd);
  close(lfd);
  mm_test_latch_destroy(&t.release);
}

static void run_cases(bool deadline) {
  wrong_len = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i], deadline);
  if (wrong_len != 0)
    fail_msg("%s", wrong);
}

static void test_every_waiting_call_of_a_cancelled_coroutine_returns_ecanceled(
    void **state) {
  run_cases(false);
}

static void test_every_waiting_call_past_the_spawn_deadline_returns_etimedout(
    void **state) {
  run_cases(true);
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_every_waiting_call_of_a_cancelled_coroutine_returns_ecanceled),
    mm_test(test_every_waiting_call_past_the_spawn_deadline_returns_etimedout),
  };
  return mm_run_tests(tests);
}
