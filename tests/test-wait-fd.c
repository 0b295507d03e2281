/* Waiting for file descriptors (mm_wait_fd) in coroutines and on plain
 * threads: readiness, timeouts, hang-ups, cancellation racing readiness,
 * the loop's free, bad input; and mm_loop_current in each place it may be
 * called from.
 */
#define _GNU_SOURCE 1       /* RTLD_NEXT */
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "helpers.h"

#define FOREVER_MS 0u       /* mm_wait_fd's "no timeout" */

/* ---- counting the system calls of waits ---------------------------------
 *
 * The program's own definitions of the calls a wait may make count them
 * (while `counting` is set) and pass them on: libuv's and the library's
 * calls reach these first.  The loop's own epoll_wait (on its backend fd)
 * is not counted: that poll serves every handle of the loop. */
static atomic_bool counting;
static atomic_int  backend_fd = -1;
static atomic_long wait_syscalls;

static void count_call(void) {
  if (atomic_load(&counting))
    atomic_fetch_add(&wait_syscalls, 1);
}

#define NEXT(name, type) ((type) dlsym(RTLD_NEXT, name))

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  count_call();
  return NEXT("epoll_ctl", int (*)(int, int, int, struct epoll_event *))(
      epfd, op, fd, ev);
}

int epoll_wait(int epfd, struct epoll_event *evs, int n, int ms) {
  if (epfd != atomic_load(&backend_fd))
    count_call();
  return NEXT("epoll_wait", int (*)(int, struct epoll_event *, int, int))(
      epfd, evs, n, ms);
}

int epoll_pwait(int epfd, struct epoll_event *evs, int n, int ms,
                const sigset_t *mask) {
  if (epfd != atomic_load(&backend_fd))
    count_call();
  return NEXT("epoll_pwait", int (*)(int, struct epoll_event *, int, int,
                                     const sigset_t *))(epfd, evs, n, ms,
                                                        mask);
}

int poll(struct pollfd *fds, nfds_t n, int ms) {
  count_call();
  return NEXT("poll", int (*)(struct pollfd *, nfds_t, int))(fds, n, ms);
}

int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  long arg = va_arg(ap, long);   /* every command used here takes an int */
  va_end(ap);
  count_call();
  return NEXT("fcntl", int (*)(int, int, ...))(fd, cmd, arg);
}

int ioctl(int fd, unsigned long req, ...) {
  va_list ap;
  va_start(ap, req);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  count_call();
  return NEXT("ioctl", int (*)(int, unsigned long, ...))(fd, req, arg);
}


/* ---- mm_loop_current --------------------------------------------------- */

typedef struct {
  mm_loop_t *seen;
  mm_loop_t *in_call;
  mm_loop_t *in_lane_call;
  mm_lane_t *lane;
} current_t;

static int record_current(void *arg) {
  ((current_t *)arg)->seen = mm_loop_current();
  return 0;
}

static int record_current_in_call(void *arg) {
  ((current_t *)arg)->in_call = mm_loop_current();
  return 0;
}

static int record_current_in_lane_call(void *arg) {
  ((current_t *)arg)->in_lane_call = mm_loop_current();
  return 0;
}

static void test_loop_current_in_a_coroutine_is_its_loop(void **state) {
  mm_loop_t *a = mm_test_loop_new(0), *b = mm_test_loop_new(0);
  current_t ca = { 0 }, cb = { 0 };
  mm_test_run_one(a, record_current, &ca);
  mm_test_run_one(b, record_current, &cb);
  assert_ptr_equal(ca.seen, a);
  assert_ptr_equal(cb.seen, b);
  assert_mm_ok(mm_loop_free(a));
  assert_mm_ok(mm_loop_free(b));
}

static int call_on_pool_and_lane(void *arg) {
  current_t *c = arg;
  int r = mm_run_sync(record_current_in_call, c);
  if (r != 0)
    return r;
  mm_sync_options_t o;
  memset(&o, 0, sizeof o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = c->lane;
  return mm_run_sync_ex(record_current_in_lane_call, c, &o);
}

static void test_loop_current_in_a_blocking_call_is_its_coroutines_loop(
    void **state) {
  mm_loop_t *loop = mm_test_loop_new(0);
  current_t c = { 0 };
  assert_mm_ok(mm_lane_new(loop, "current", &c.lane));
  mm_test_run_one(loop, call_on_pool_and_lane, &c);
  assert_ptr_equal(c.in_call, loop);
  assert_ptr_equal(c.in_lane_call, loop);
  assert_mm_ok(mm_lane_free(c.lane));
  assert_mm_ok(mm_loop_free(loop));
}

static int record_current_in_caller_call(void *arg) {
  current_t *c = arg;
  mm_sync_options_t o;
  memset(&o, 0, sizeof o);
  o.affinity = MM_AFFINITY_CALLER;
  return mm_run_sync_ex(record_current_in_call, c, &o);
}

static void test_loop_current_in_a_call_on_the_caller_thread_is_the_loop(
    void **state) {
  /* The call runs on this very thread, blocked in mm_run_async. */
  mm_loop_t *loop = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(loop));
  current_t c = { 0 };
  assert_mm_ok(mm_run_async(loop, record_current_in_caller_call, &c));
  assert_ptr_equal(c.in_call, loop);
  assert_null(mm_loop_current());
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_current_on_a_plain_thread_is_null(void **state) {
  assert_null(mm_loop_current());
  /* A blocking call made by a plain thread runs inline: no coroutine. */
  current_t c = { 0 };
  c.in_call = (mm_loop_t *)&c;
  assert_mm_ok(mm_run_sync(record_current_in_call, &c));
  assert_null(c.in_call);
}

static void record_current_raw(void *arg) {
  ((current_t *)arg)->seen = mm_loop_current();
}

static void test_loop_current_in_a_raw_callback_is_null(void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  current_t c = { 0 };
  c.seen = (mm_loop_t *)&c;
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, record_current_raw, &c));
  assert_null(c.seen);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}



/* ---- mm_wait_fd: helpers ------------------------------------------------- */

static mm_loop_t *started_loop(void) {
  mm_loop_t *loop = mm_test_loop_new(0);
  assert_mm_ok(mm_loop_start(loop));
  return loop;
}

static void make_pipe(int fds[2]) {
  assert_int_equal(pipe(fds), 0);
}

static void make_socketpair(int fds[2]) {
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
}

static void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  assert_true(fl >= 0);
  assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

/* Writes into fd (made non-blocking) until it is full. */
static void fill(int fd) {
  set_nonblocking(fd);
  static char buf[65536];
  while (write(fd, buf, sizeof buf) > 0)
    ;
  assert_int_equal(errno, EAGAIN);
}

static void close_pair(int fds[2]) {
  if (fds[0] >= 0)
    close(fds[0]);
  if (fds[1] >= 0)
    close(fds[1]);
}

/* A coroutine (or thread) that waits once and records what it got. */
typedef struct {
  int fd;
  int events;
  uint64_t timeout_ms;
  int result;
  int ended;                  /* how many times the wait returned */
  int others_ran;             /* a partner's step happened meanwhile */
  int after;                  /* a later suspension's result */
} waiter_t;

static int wait_once(void *arg) {
  waiter_t *w = arg;
  w->result = mm_wait_fd(w->fd, w->events, w->timeout_ms);
  w->ended++;
  return 0;
}

static void *wait_once_thread(void *arg) {
  wait_once(arg);
  return NULL;
}

/* A partner coroutine that acts on an fd once the waiter has suspended
 * (it is spawned after the waiter, so it runs after the waiter parked). */
typedef struct {
  waiter_t *w;
  int fd;
  int action;                 /* WRITE_BYTE, CLOSE_FD, DRAIN */
  int busy_result;            /* with TRY_WAIT: a second wait's result */
} partner_t;

enum { WRITE_BYTE, CLOSE_FD, DRAIN, TRY_WAIT_THEN_WRITE };

static int partner(void *arg) {
  partner_t *p = arg;
  p->w->others_ran = p->w->ended == 0;
  switch (p->action) {
  case WRITE_BYTE:
    return write(p->fd, "x", 1) == 1 ? 0 : -errno;
  case CLOSE_FD:
    return close(p->fd) == 0 ? 0 : -errno;
  case DRAIN: {
    static char buf[65536];
    set_nonblocking(p->fd);
    while (read(p->fd, buf, sizeof buf) > 0)
      ;
    return 0;
  }
  case TRY_WAIT_THEN_WRITE:
    p->busy_result = mm_wait_fd(p->w->fd, MM_READABLE | MM_WRITABLE, 1);
    return write(p->fd, "x", 1) == 1 ? 0 : -errno;
  }
  return -EINVAL;
}

/* Runs w's wait in a coroutine of a new loop with a partner acting while
 * it waits; both statuses must be 0. */
static void wait_with_partner(waiter_t *w, int action, int fd,
                              partner_t *pp) {
  mm_loop_t *loop = mm_test_loop_new(0);
  partner_t p = { w, fd, action, 0 };
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, wait_once, w, &a));
  assert_mm_ok(mm_spawn(loop, partner, &p, &b));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(b));
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(w->ended, 1);
  if (pp != NULL)
    *pp = p;
}


/* ---- readiness ----------------------------------------------------------- */

static void test_wait_fd_returns_readable_once_a_pipe_has_data(void **state) {
  int p[2];
  make_pipe(p);
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  wait_with_partner(&w, WRITE_BYTE, p[1], NULL);
  assert_status(w.result, MM_READABLE);
  assert_true(w.others_ran);    /* only the coroutine was suspended */
  close_pair(p);
}

static void test_wait_fd_reports_only_the_events_ready_among_those_asked(
    void **state) {
  /* A pipe's read end is never writable: asked both, it reports one. */
  int p[2];
  make_pipe(p);
  waiter_t w = { .fd = p[0], .events = MM_READABLE | MM_WRITABLE };
  wait_with_partner(&w, WRITE_BYTE, p[1], NULL);
  assert_status(w.result, MM_READABLE);
  close_pair(p);
}

static void test_wait_fd_returns_writable_once_a_full_socket_drains(
    void **state) {
  int s[2];
  make_socketpair(s);
  fill(s[0]);
  waiter_t w = { .fd = s[0], .events = MM_WRITABLE };
  wait_with_partner(&w, DRAIN, s[1], NULL);
  assert_status(w.result, MM_WRITABLE);
  assert_true(w.others_ran);
  close_pair(s);
}

static int wait_ready_at_once(void *arg) {
  waiter_t *w = arg;
  w->result = mm_wait_fd(w->fd, w->events, w->timeout_ms);
  w->ended++;
  return 0;
}

static void test_wait_fd_on_a_ready_fd_answers_at_once(void **state) {
  int s[2];
  make_socketpair(s);
  assert_int_equal(write(s[1], "x", 1), 1);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = s[0], .events = MM_READABLE | MM_WRITABLE };
  mm_test_run_one(loop, wait_ready_at_once, &w);
  assert_status(w.result, MM_READABLE | MM_WRITABLE);
  assert_mm_ok(mm_loop_free(loop));
  close_pair(s);
}

static void test_wait_fd_leaves_the_fds_flags_as_they_were(void **state) {
  int p[2];
  make_pipe(p);
  int before = fcntl(p[0], F_GETFL);
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  wait_with_partner(&w, WRITE_BYTE, p[1], NULL);
  assert_status(w.result, MM_READABLE);
  assert_int_equal(fcntl(p[0], F_GETFL), before);
  assert_false(before & O_NONBLOCK);
  close_pair(p);
}

/* A coroutine passing bytes back and forth with another through two
 * pipes: every wait suspends (the byte comes only after it).  Also the
 * program to count system calls per wait with strace -c. */
typedef struct {
  int in, out;
  int rounds;
  int failed;
} pong_t;

/* Waits for a byte on in, reads it, answers on out; ping serves first. */
static int pass_bytes(pong_t *p, bool serve) {
  char c;
  if (serve && write(p->out, "x", 1) != 1)
    return -errno;
  for (int i = 0; i < p->rounds; i++) {
    int r = mm_wait_fd(p->in, MM_READABLE, FOREVER_MS);
    if (r != MM_READABLE)
      return p->failed = r;
    if (read(p->in, &c, 1) != 1)
      return p->failed = -EIO;
    if ((!serve || i + 1 < p->rounds) && write(p->out, "x", 1) != 1)
      return -errno;
  }
  return 0;
}

static int ping_pong(void *arg) {
  return pass_bytes(arg, true);
}

static int pong_back(void *arg) {
  return pass_bytes(arg, false);
}

static void test_wait_fd_many_times_on_the_same_pipes(void **state) {
  int a[2], b[2];
  make_pipe(a);
  make_pipe(b);
  int rounds = getenv("MM_TEST_ROUNDS") != NULL
                   ? atoi(getenv("MM_TEST_ROUNDS"))
                   : MM_TEST_SCALE(1000, 200);
  pong_t ping = { b[0], a[1], rounds, 0 };
  pong_t pong = { a[0], b[1], rounds, 0 };
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_coro_t *x, *y;
  assert_mm_ok(mm_spawn(loop, pong_back, &pong, &y));
  assert_mm_ok(mm_spawn(loop, ping_pong, &ping, &x));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(x));
  assert_mm_ok(mm_join(y));
  assert_mm_ok(mm_loop_free(loop));
  close_pair(a);
  close_pair(b);
}


/* Waits on the same fd again and again make one system call each besides
 * the loop's poll: arm the fd (the loop's inner epoll, one-shot), and one
 * collect of what became ready.  Reads and writes of the test are not
 * counted (only the calls above are). */
static void test_wait_fd_again_on_the_same_fd_costs_no_syscall_pair(
    void **state) {
#if !defined(__linux__) || defined(MM_WAIT_FD_UV_POLL)
  print_message("skipped: waits poll with a uv_poll_t each in this build "
                "(not Linux's inner set)\n");
  skip();
#endif
  int a[2], b[2];
  make_pipe(a);
  make_pipe(b);
  int rounds = MM_TEST_SCALE(1000, 200);
  pong_t ping = { b[0], a[1], rounds, 0 };
  pong_t pong = { a[0], b[1], rounds, 0 };
  mm_loop_t *loop = mm_test_loop_new(0);
  atomic_store(&backend_fd, uv_backend_fd(mm_loop_uv(loop)));
  mm_coro_t *x, *y;
  assert_mm_ok(mm_spawn(loop, pong_back, &pong, &y));
  assert_mm_ok(mm_spawn(loop, ping_pong, &ping, &x));
  atomic_store(&wait_syscalls, 0);
  atomic_store(&counting, true);
  assert_mm_ok(mm_loop_run(loop));
  atomic_store(&counting, false);
  assert_mm_ok(mm_join(x));
  assert_mm_ok(mm_join(y));
  long waits = 2L * rounds;
  long calls = atomic_load(&wait_syscalls);
  print_message("%ld waits: %ld system calls besides the loop's poll\n",
                waits, calls);
  /* Two per wait, and a few once per fd and loop. */
  assert_in_range(calls, 0, 2 * waits + 16);
  assert_mm_ok(mm_loop_free(loop));
  atomic_store(&backend_fd, -1);
  close_pair(a);
  close_pair(b);
}

static void test_wait_fd_by_coroutines_of_two_loops_on_one_fd(void **state) {
  /* -EBUSY is per loop: each loop polls the fd with its own handle. */
  int p[2];
  make_pipe(p);
  mm_loop_t *a = started_loop(), *b = started_loop();
  waiter_t wa = { .fd = p[0], .events = MM_READABLE };
  waiter_t wb = { .fd = p[0], .events = MM_READABLE };
  mm_coro_t *ca, *cb;
  assert_mm_ok(mm_spawn(a, wait_once, &wa, &ca));
  assert_mm_ok(mm_spawn(b, wait_once, &wb, &cb));
  assert_int_equal(write(p[1], "x", 1), 1);
  assert_mm_ok(mm_join(ca));
  assert_mm_ok(mm_join(cb));
  assert_status(wa.result, MM_READABLE);
  assert_status(wb.result, MM_READABLE);
  assert_mm_ok(mm_loop_free(a));
  assert_mm_ok(mm_loop_free(b));
  close_pair(p);
}

static void test_wait_fd_in_a_borrowed_loop_leaves_uv_loop_closable(
    void **state) {
  /* The loop's poll handles live in the user's uv loop: mm_loop_free
   * closes them, so that uv_loop_close succeeds. */
  int p[2];
  make_pipe(p);
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  partner_t pa = { &w, p[1], WRITE_BYTE, 0 };
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, wait_once, &w, &a));
  assert_mm_ok(mm_spawn(loop, partner, &pa, &b));
  assert_int_equal(uv_run(&uv, UV_RUN_DEFAULT), 0);
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(b));
  assert_status(w.result, MM_READABLE);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
  close_pair(p);
}


/* ---- timeouts, hang-ups -------------------------------------------------- */

static void test_wait_fd_times_out_in_a_coroutine(void **state) {
  int p[2];
  make_pipe(p);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = p[0], .events = MM_READABLE, .timeout_ms = 5 };
  mm_test_run_one(loop, wait_once, &w);
  assert_status(w.result, -ETIMEDOUT);
  /* The fd is usable afterwards, in the same loop. */
  assert_int_equal(write(p[1], "x", 1), 1);
  waiter_t again = { .fd = p[0], .events = MM_READABLE, .timeout_ms = 5 };
  mm_test_run_one(loop, wait_once, &again);
  assert_status(again.result, MM_READABLE);
  assert_mm_ok(mm_loop_free(loop));
  close_pair(p);
}

static void test_wait_fd_times_out_on_a_plain_thread(void **state) {
  int p[2];
  make_pipe(p);
  assert_mm_err(mm_wait_fd(p[0], MM_READABLE, 5), -ETIMEDOUT);
  close_pair(p);
}

static void test_wait_fd_past_the_spawn_deadline_returns_etimedout(
    void **state) {
  int p[2];
  make_pipe(p);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  mm_spawn_options_t o;
  memset(&o, 0, sizeof o);
  o.timeout_ms = 5;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn_ex(loop, wait_once, &w, &o, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_err(mm_join(c), -ETIMEDOUT);
  assert_status(w.result, -ETIMEDOUT);
  assert_mm_ok(mm_loop_free(loop));
  close_pair(p);
}

static void test_wait_fd_reports_every_event_asked_on_a_hang_up(
    void **state) {
  /* The writer goes while the reader waits: a pipe's read end is never
   * writable, yet both events asked are reported. */
  int p[2];
  make_pipe(p);
  waiter_t w = { .fd = p[0], .events = MM_READABLE | MM_WRITABLE };
  wait_with_partner(&w, CLOSE_FD, p[1], NULL);
  assert_status(w.result, MM_READABLE | MM_WRITABLE);
  p[1] = -1;
  close_pair(p);

  /* The reader goes while a full pipe's writer waits (POLLERR). */
  make_pipe(p);
  fill(p[1]);
  waiter_t wr = { .fd = p[1], .events = MM_WRITABLE };
  wait_with_partner(&wr, CLOSE_FD, p[0], NULL);
  assert_status(wr.result, MM_WRITABLE);
  p[0] = -1;
  close_pair(p);

  /* A socket whose peer goes while it waits with a full buffer. */
  int s[2];
  make_socketpair(s);
  fill(s[0]);
  waiter_t ws = { .fd = s[0], .events = MM_READABLE | MM_WRITABLE };
  wait_with_partner(&ws, CLOSE_FD, s[1], NULL);
  assert_status(ws.result, MM_READABLE | MM_WRITABLE);
  s[1] = -1;
  close_pair(s);
}

static void test_wait_fd_reports_a_hang_up_that_came_before_the_wait(
    void **state) {
  int p[2];
  make_pipe(p);
  close(p[1]);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = p[0], .events = MM_READABLE | MM_WRITABLE };
  mm_test_run_one(loop, wait_once, &w);
  assert_status(w.result, MM_READABLE | MM_WRITABLE);
  assert_mm_ok(mm_loop_free(loop));
  /* The same on a plain thread. */
  assert_status(mm_wait_fd(p[0], MM_READABLE | MM_WRITABLE, 0),
                MM_READABLE | MM_WRITABLE);
  close(p[0]);
}


/* ---- plain threads ------------------------------------------------------- */

static void test_wait_fd_on_a_plain_thread_blocks_until_ready(void **state) {
  int p[2];
  make_pipe(p);
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, wait_once_thread, &w), 0);
  assert_int_equal(write(p[1], "x", 1), 1);
  pthread_join(t, NULL);
  assert_status(w.result, MM_READABLE);
  assert_int_equal(w.ended, 1);

  /* Writable at once; a closed writer is a hang-up. */
  assert_status(mm_wait_fd(p[1], MM_WRITABLE, 0), MM_WRITABLE);
  close(p[1]);
  char c;
  assert_int_equal(read(p[0], &c, 1), 1);
  assert_status(mm_wait_fd(p[0], MM_READABLE, 0), MM_READABLE);
  close(p[0]);
}

static int wait_in_call(void *arg) {
  return wait_once(arg);
}

static int call_that_waits(void *arg) {
  return mm_run_sync(wait_in_call, arg);
}

static void test_wait_fd_in_a_blocking_call_polls_on_the_worker(
    void **state) {
  /* The worker is a plain thread: poll(2), not the loop. */
  int p[2];
  make_pipe(p);
  assert_int_equal(write(p[1], "x", 1), 1);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = p[0], .events = MM_READABLE, .timeout_ms = 1000 };
  mm_test_run_one(loop, call_that_waits, &w);
  assert_status(w.result, MM_READABLE);
  assert_mm_ok(mm_loop_free(loop));
  close_pair(p);
}


/* ---- -EBUSY and bad input ------------------------------------------------ */

static void test_wait_fd_by_a_second_coroutine_on_the_same_fd_is_ebusy(
    void **state) {
  int p[2];
  make_pipe(p);
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  partner_t got;
  wait_with_partner(&w, TRY_WAIT_THEN_WRITE, p[1], &got);
  assert_status(got.busy_result, -EBUSY);
  assert_status(w.result, MM_READABLE);
  close_pair(p);
}

typedef struct {
  int einval_zero, einval_bits, einval_neg;
  int ebadf_neg, ebadf_closed;
  int ecanceled;
} bad_t;

static int try_bad_inputs(void *arg) {
  bad_t *b = arg;
  int p[2];
  if (pipe(p) != 0)
    return -errno;
  b->einval_zero = mm_wait_fd(p[0], 0, 0);
  b->einval_bits = mm_wait_fd(p[0], MM_READABLE | 4, 0);
  b->einval_neg = mm_wait_fd(p[0], -1, 0);
  b->ebadf_neg = mm_wait_fd(-1, MM_READABLE, 0);
  close(p[0]);
  close(p[1]);
  b->ebadf_closed = mm_wait_fd(p[0], MM_READABLE, 0);
  return 0;
}

static void raw_wait(void *arg) {
  int *p = arg;
  p[2] = mm_wait_fd(p[0], MM_READABLE, 0);
}

static void test_wait_fd_refuses_bad_input_everywhere(void **state) {
  /* In a coroutine. */
  mm_loop_t *loop = mm_test_loop_new(0);
  bad_t b;
  memset(&b, 0, sizeof b);
  mm_test_run_one(loop, try_bad_inputs, &b);
  assert_mm_ok(mm_loop_free(loop));
  assert_status(b.einval_zero, -EINVAL);
  assert_status(b.einval_bits, -EINVAL);
  assert_status(b.einval_neg, -EINVAL);
  assert_status(b.ebadf_neg, -EBADF);
  assert_status(b.ebadf_closed, -EBADF);

  /* On a plain thread. */
  memset(&b, 0, sizeof b);
  try_bad_inputs(&b);
  assert_status(b.einval_zero, -EINVAL);
  assert_status(b.einval_bits, -EINVAL);
  assert_status(b.einval_neg, -EINVAL);
  assert_status(b.ebadf_neg, -EBADF);
  assert_status(b.ebadf_closed, -EBADF);

  /* In a raw libuv callback on the loop's thread. */
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  int p[3];
  make_pipe(p);
  p[2] = 0;
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, raw_wait, p));
  assert_status(p[2], -EDEADLK);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
  close_pair(p);
}

static int wait_after_cancel(void *arg) {
  waiter_t *w = arg;
  mm_cancel(mm_current());
  return wait_once(w);
}

static void test_wait_fd_after_a_cancel_returns_ecanceled_at_once(
    void **state) {
  int s[2];
  make_socketpair(s);         /* writable: it would answer at once */
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = s[0], .events = MM_WRITABLE };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, wait_after_cancel, &w, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(w.result, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  close_pair(s);
}


/* ---- closing the fd between waits ---------------------------------------- */

typedef struct {
  int fd;                     /* the number waited on throughout */
  int old_dup;                /* a dup of the first file under fd */
  int first_writer, second_writer;
  int first, stale, second, closed, regular;
  const char *regular_path;
} reuse_t;

static int wait_then_write(void *arg) {
  /* Partner: writes once the waiter has parked. */
  return write(*(int *)arg, "x", 1) == 1 ? 0 : -errno;
}

static int reuse_number(void *arg) {
  reuse_t *r = arg;
  mm_loop_t *loop = mm_loop_current();
  char c;
  /* 1: a wait that parks, so that the loop makes its handle for fd. */
  mm_coro_t *h;
  int e = mm_spawn(loop, wait_then_write, &r->first_writer, &h);
  if (e != 0)
    return e;
  r->first = mm_wait_fd(r->fd, MM_READABLE, FOREVER_MS);
  mm_join(h);
  if (read(r->fd, &c, 1) != 1)
    return -EIO;

  /* 2: the number now names another pipe's read end, while the first one
   * lives on under old_dup with data in it: had its registration stayed
   * in the kernel, its readiness would wake this wait. */
  int p[2];
  if (pipe(p) != 0)
    return -errno;
  if (write(r->first_writer, "x", 1) != 1 || dup2(p[0], r->fd) != r->fd)
    return -errno;
  close(p[0]);
  r->second_writer = p[1];
  r->stale = mm_wait_fd(r->fd, MM_READABLE, 20);

  /* 3: and data on the new one wakes it. */
  e = mm_spawn(loop, wait_then_write, &r->second_writer, &h);
  if (e != 0)
    return e;
  r->second = mm_wait_fd(r->fd, MM_READABLE, FOREVER_MS);
  mm_join(h);

  /* 4: closed: -EBADF, not libuv's abort. */
  close(r->fd);
  r->closed = mm_wait_fd(r->fd, MM_READABLE, FOREVER_MS);

  /* 5: a regular file under the number, which epoll cannot watch: ready
   * at once, as poll(2) says. */
  int f = open(r->regular_path, O_RDONLY);
  if (f < 0)
    return -errno;
  if (f != r->fd) {
    if (dup2(f, r->fd) != r->fd)
      return -errno;
    close(f);
  }
  r->regular = mm_wait_fd(r->fd, MM_READABLE | MM_WRITABLE, FOREVER_MS);
  close(r->fd);
  close(r->second_writer);
  return 0;
}

static void test_wait_fd_after_its_fd_was_closed_and_its_number_reused(
    void **state) {
  int p[2];
  make_pipe(p);
  reuse_t r = { .fd = p[0], .first_writer = p[1] };
  r.old_dup = dup(p[0]);
  r.regular_path = "/proc/self/exe";
  assert_true(r.old_dup >= 0);
  mm_loop_t *loop = mm_test_loop_new(0);
  mm_test_run_one(loop, reuse_number, &r);
  assert_mm_ok(mm_loop_free(loop));
  assert_status(r.first, MM_READABLE);
  assert_status(r.stale, -ETIMEDOUT);
  assert_status(r.second, MM_READABLE);
  assert_status(r.closed, -EBADF);
  assert_status(r.regular, MM_READABLE | MM_WRITABLE);
  close(r.old_dup);
  close(p[1]);
}


/* ---- cancellation racing readiness, stop and free ------------------------ */

typedef struct {
  waiter_t w;
  mm_test_latch_t entered;
  mm_coro_t *c;
  int writer;
  pthread_barrier_t go;
} race_t;

static int racing_wait(void *arg) {
  race_t *r = arg;
  mm_test_latch_add(&r->entered, 1);
  r->w.result = mm_wait_fd(r->w.fd, MM_READABLE, FOREVER_MS);
  r->w.ended++;
  /* Whichever won, the cancellation stays for the next suspension (the
   * cancel may also come only after the wait returned). */
  r->w.after = mm_sleep(100000000u);
  return 0;
}

static void *racing_writer(void *arg) {
  race_t *r = arg;
  pthread_barrier_wait(&r->go);
  return (void *)(intptr_t)(write(r->writer, "x", 1) == 1 ? 0 : -errno);
}

static void *racing_canceller(void *arg) {
  race_t *r = arg;
  pthread_barrier_wait(&r->go);
  return (void *)(intptr_t)mm_cancel(r->c);
}

static void test_wait_fd_racing_a_cancel_ends_once_with_either(
    void **state) {
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);
  mm_loop_t *loop = started_loop();
  int rounds = mm_test_under_valgrind() ? 200 : MM_TEST_SCALE(2000, 300);
  int ready = 0, cancelled = 0;
  for (int i = 0; i < rounds; i++) {
    race_t r;
    memset(&r, 0, sizeof r);
    int p[2];
    make_pipe(p);
    r.w.fd = p[0];
    r.writer = p[1];
    mm_test_latch_init(&r.entered);
    pthread_barrier_init(&r.go, NULL, 2);
    assert_mm_ok(mm_spawn(loop, racing_wait, &r, &r.c));
    mm_test_latch_wait(&r.entered, 1);
    pthread_t tw, tc;
    assert_int_equal(pthread_create(&tw, NULL, racing_writer, &r), 0);
    assert_int_equal(pthread_create(&tc, NULL, racing_canceller, &r), 0);
    void *rw, *rc;
    pthread_join(tw, &rw);
    pthread_join(tc, &rc);
    assert_mm_ok((int)(intptr_t)rw);
    assert_mm_ok((int)(intptr_t)rc);
    assert_mm_ok(mm_join(r.c));
    assert_int_equal(r.w.ended, 1);
    assert_status(r.w.after, -ECANCELED);
    if (r.w.result == MM_READABLE) {
      ready++;
    } else {
      assert_status(r.w.result, -ECANCELED);
      cancelled++;
    }
    pthread_barrier_destroy(&r.go);
    mm_test_latch_destroy(&r.entered);
    close_pair(p);
  }
  assert_int_equal(ready + cancelled, rounds);
  print_message("    %d rounds: %d readable, %d cancelled\n", rounds, ready,
                cancelled);
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  assert_true(log.max_level < MM_LOG_WARN);
  mm_test_log_destroy(&log);
}

static int stop_the_loop(void *arg) {
  return mm_loop_stop(arg);
}

static void test_wait_fd_is_cancelled_by_the_loops_stop(void **state) {
  int p[2];
  make_pipe(p);
  mm_loop_t *loop = mm_test_loop_new(0);
  waiter_t w = { .fd = p[0], .events = MM_READABLE };
  mm_coro_t *a, *b;
  assert_mm_ok(mm_spawn(loop, wait_once, &w, &a));
  assert_mm_ok(mm_spawn(loop, stop_the_loop, loop, &b));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(a));
  assert_mm_ok(mm_join(b));
  assert_status(w.result, -ECANCELED);
  assert_int_equal(w.ended, 1);
  assert_mm_ok(mm_loop_free(loop));
  close_pair(p);
}

static int wait_announced(void *arg) {
  race_t *r = arg;
  mm_test_latch_add(&r->entered, 1);
  return wait_once(&r->w);
}

static void test_wait_fd_is_cancelled_by_the_loops_free(void **state) {
  mm_test_log_t log;
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);   /* free reports the live ones */
  enum { N = 8 };
  int p[N][2];
  race_t r[N];
  mm_loop_t *loop = started_loop();
  for (int i = 0; i < N; i++) {
    make_pipe(p[i]);
    memset(&r[i], 0, sizeof r[i]);
    mm_test_latch_init(&r[i].entered);
    r[i].w.fd = p[i][0];
    r[i].w.events = MM_READABLE;
    r[i].w.timeout_ms = i % 2 ? 100000 : FOREVER_MS;
    assert_mm_ok(mm_spawn(loop, wait_announced, &r[i], NULL));
    mm_test_latch_wait(&r[i].entered, 1);
  }
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  for (int i = 0; i < N; i++) {
    assert_status(r[i].w.result, -ECANCELED);
    assert_int_equal(r[i].w.ended, 1);
    mm_test_latch_destroy(&r[i].entered);
    close_pair(p[i]);
  }
  mm_test_log_destroy(&log);
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_loop_current_in_a_coroutine_is_its_loop),
    mm_test(test_loop_current_in_a_blocking_call_is_its_coroutines_loop),
    mm_test(test_loop_current_in_a_call_on_the_caller_thread_is_the_loop),
    mm_test(test_loop_current_on_a_plain_thread_is_null),
    mm_test(test_loop_current_in_a_raw_callback_is_null),
    mm_test(test_wait_fd_returns_readable_once_a_pipe_has_data),
    mm_test(test_wait_fd_reports_only_the_events_ready_among_those_asked),
    mm_test(test_wait_fd_returns_writable_once_a_full_socket_drains),
    mm_test(test_wait_fd_on_a_ready_fd_answers_at_once),
    mm_test(test_wait_fd_leaves_the_fds_flags_as_they_were),
    mm_test(test_wait_fd_many_times_on_the_same_pipes),
    mm_test(test_wait_fd_again_on_the_same_fd_costs_no_syscall_pair),
    mm_test(test_wait_fd_by_coroutines_of_two_loops_on_one_fd),
    mm_test(test_wait_fd_in_a_borrowed_loop_leaves_uv_loop_closable),
    mm_test(test_wait_fd_times_out_in_a_coroutine),
    mm_test(test_wait_fd_times_out_on_a_plain_thread),
    mm_test(test_wait_fd_past_the_spawn_deadline_returns_etimedout),
    mm_test(test_wait_fd_reports_every_event_asked_on_a_hang_up),
    mm_test(test_wait_fd_reports_a_hang_up_that_came_before_the_wait),
    mm_test(test_wait_fd_on_a_plain_thread_blocks_until_ready),
    mm_test(test_wait_fd_in_a_blocking_call_polls_on_the_worker),
    mm_test(test_wait_fd_by_a_second_coroutine_on_the_same_fd_is_ebusy),
    mm_test(test_wait_fd_refuses_bad_input_everywhere),
    mm_test(test_wait_fd_after_a_cancel_returns_ecanceled_at_once),
    mm_test(test_wait_fd_after_its_fd_was_closed_and_its_number_reused),
    mm_test(test_wait_fd_racing_a_cancel_ends_once_with_either),
    mm_test(test_wait_fd_is_cancelled_by_the_loops_stop),
    mm_test(test_wait_fd_is_cancelled_by_the_loops_free),
  };
  return mm_run_tests(tests);
}
