/* The reports that keep failures from passing silently: a coroutine that
 * holds the loop (reported by the slow-step watchdog while it holds it),
 * a detached coroutine that fails, coroutines still alive when the loop
 * is freed.  Each report is made to happen and its text is checked.
 *
 * The program is linked with -export-dynamic so that dladdr, and so the
 * reports, can name its non-static functions. */
#define _GNU_SOURCE
#include "helpers.h"

#include <inttypes.h>
#include <sched.h>

/* ---- a log sink the test thread can wait on ---------------------------- */

#define SINK_MAX 64

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;          /* broadcast at each message */
  int n;                      /* protected by mu */
  int level[SINK_MAX];
  char *msg[SINK_MAX];        /* malloc'ed copies */
} sink_t;

static void sink_fn(int level, const char *msg, void *data) {
  sink_t *s = data;
  pthread_mutex_lock(&s->mu);
  if (s->n < SINK_MAX) {
    s->level[s->n] = level;
    s->msg[s->n] = strdup(msg);
    s->n++;
  }
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void sink_start(sink_t *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  mm_set_log(sink_fn, s);
}

/* After mm_set_log(NULL, NULL): nobody writes any more. */
static void sink_free(sink_t *s) {
  for (int i = 0; i < s->n; i++)
    free(s->msg[i]);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
}

/* Messages containing part so far.  Caller holds mu. */
static int count_locked(sink_t *s, const char *part) {
  int k = 0;
  for (int i = 0; i < s->n; i++)
    if (s->msg[i] != NULL && strstr(s->msg[i], part) != NULL)
      k++;
  return k;
}

static int sink_count(sink_t *s, const char *part) {
  pthread_mutex_lock(&s->mu);
  int k = count_locked(s, part);
  pthread_mutex_unlock(&s->mu);
  return k;
}

/* Blocks until k messages contain part (the per-test watchdog bounds it). */
static void sink_wait(sink_t *s, const char *part, int k) {
  pthread_mutex_lock(&s->mu);
  while (count_locked(s, part) < k)
    pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

/* The i-th message (from 0) containing part, or NULL; *level its level. */
static const char *sink_find(sink_t *s, const char *part, int i, int *level) {
  for (int j = 0; j < s->n; j++)
    if (s->msg[j] != NULL && strstr(s->msg[j], part) != NULL && i-- == 0) {
      if (level != NULL)
        *level = s->level[j];
      return s->msg[j];
    }
  return NULL;
}

static void sink_print(sink_t *s) {
  for (int i = 0; i < s->n; i++)
    fprintf(stderr, "  [%d] %s\n", s->level[i], s->msg[i]);
}


/* ---- a coroutine that holds the loop until the test lets it go -------- */

typedef struct {
  atomic_int release;
} hold_t;

/* Busy-waits without suspending until the test sets release.  Not static:
 * the report names it.  sched_yield() gives the CPU away, not the loop:
 * the watchdog and the test thread may need it (two CPUs, or Valgrind,
 * which runs one thread at a time). */
int hold_until_released(void *arg) {
  hold_t *h = arg;
  while (!atomic_load_explicit(&h->release, memory_order_acquire))
    sched_yield();
  return 0;
}

/* The same, static: dladdr cannot name it. */
static int hold_anonymously(void *arg) {
  return hold_until_released(arg);
}

static mm_loop_t *watched_loop(unsigned slow_step_ms) {
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.slow_step_ms = slow_step_ms;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_loop_start(loop));
  return loop;
}

static mm_coro_t *spawn_named(mm_loop_t *loop, mm_fn fn, void *arg,
                              const char *name) {
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = name;
  mm_coro_t *c;
  assert_mm_ok(mm_spawn_ex(loop, fn, arg, &so, &c));
  return c;
}

#define LIVE_REPORT "has held the loop for "

/* Starts capturing the log in s, runs fn as a coroutine named name on a
 * watched loop (slow_step_ms = 20) until it has been reported once, lets
 * it go, and frees the loop; the log is captured no more. */
static void hog_reported(sink_t *s, mm_fn fn, const char *name) {
  sink_start(s);
  mm_loop_t *loop = watched_loop(20);
  hold_t h = { 0 };
  mm_coro_t *c = spawn_named(loop, fn, &h, name);
  sink_wait(s, LIVE_REPORT, 1);
  atomic_store_explicit(&h.release, 1, memory_order_release);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
}

/* Checks the live report's first line and returns its ms. */
static unsigned check_live_line(const char *msg, const char *head,
                                unsigned slow_step_ms) {
  if (strncmp(msg, head, strlen(head)) != 0)
    fail_msg("the report does not start with \"%s\":\n%s", head, msg);
  unsigned ms;
  char tail[160];
  if (sscanf(msg + strlen(head), "%u ms so far without suspending "
             "(slow_step_ms = %159[^)])", &ms, tail) != 2)
    fail_msg("the report's first line is not as expected:\n%s", msg);
  char want[32];
  snprintf(want, sizeof want, "%u", slow_step_ms);
  assert_string_equal(tail, want);
  assert_true(ms >= slow_step_ms);
  return ms;
}

static void test_a_coroutine_holding_the_loop_is_reported_while_it_holds_it(
    void **state) {
  sink_t s;
  sink_start(&s);
  mm_loop_t *loop = watched_loop(20);
  hold_t h = { 0 };
  mm_coro_t *c = spawn_named(loop, hold_until_released, &h, "hog");

  sink_wait(&s, LIVE_REPORT, 1);   /* it is still holding the loop */
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  atomic_store_explicit(&h.release, 1, memory_order_release);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);

  /* Counted at the first report, while it still ran; once in all. */
  assert_int_equal(st.slow_steps, 1);
  int level;
  const char *r = sink_find(&s, LIVE_REPORT, 0, &level);
  assert_int_equal(level, MM_LOG_WARN);
  check_live_line(r, "coroutine 1 'hog', spawned with hold_until_released, "
                  LIVE_REPORT, 20);
  const char *bt = strstr(r, "); the loop thread's backtrace:\n  #0 ");
  if (bt == NULL)
    fail_msg("no backtrace in the report:\n%s", r);
  /* The interrupted frame, then its callers, on the coroutine's stack. */
  if (strstr(bt, "(hold_until_released+0x") == NULL)
    fail_msg("the backtrace does not show the coroutine's function:\n%s", r);
  /* The step's end: the total, at INFO since it was reported already. */
  const char *end = sink_find(&s, "coroutine 1 'hog' held the loop for ", 0,
                              &level);
  if (end == NULL) {
    sink_print(&s);
    fail_msg("no line at the step's end");
  }
  assert_int_equal(level, MM_LOG_INFO);
  assert_non_null(strstr(end, " ms without suspending (slow_step_ms = 20)"));
  sink_free(&s);
}

static void test_a_function_without_a_dynamic_symbol_is_given_by_module(
    void **state) {
  sink_t s;
  hog_reported(&s, hold_anonymously, "anon");

  const char *r = sink_find(&s, LIVE_REPORT, 0, NULL);
  char head[128];
  snprintf(head, sizeof head, "coroutine 1 'anon', spawned with %p "
           "(test-reports+0x", (void *) (uintptr_t) hold_anonymously);
  if (strncmp(r, head, strlen(head)) != 0)
    fail_msg("expected \"%s...\", got:\n%s", head, r);
  const char *rest = strstr(r, "), " LIVE_REPORT);
  assert_non_null(rest);
  sink_free(&s);
}

static void test_a_step_that_goes_on_is_reported_again_after_a_second(
    void **state) {
  sink_t s;
  sink_start(&s);
  /* Repeats come every 10 x slow_step_ms, at least 1 s apart. */
  mm_loop_t *loop = watched_loop(20);
  hold_t h = { 0 };
  mm_coro_t *c = spawn_named(loop, hold_until_released, &h, "stuck");
  sink_wait(&s, LIVE_REPORT, 2);
  int reports = sink_count(&s, LIVE_REPORT);
  atomic_store_explicit(&h.release, 1, memory_order_release);
  assert_mm_ok(mm_join(c));
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);

  assert_int_equal(reports, 2);
  assert_int_equal(st.slow_steps, 1);
  const char *head = "coroutine 1 'stuck', spawned with hold_until_released, "
                     LIVE_REPORT;
  unsigned first = check_live_line(sink_find(&s, LIVE_REPORT, 0, NULL), head,
                                   20);
  unsigned second = check_live_line(sink_find(&s, LIVE_REPORT, 1, NULL), head,
                                    20);
  assert_true(second >= first + 1000);
  sink_free(&s);
}

static int yield_many(void *arg) {
  for (int i = 0; i < 10000; i++)
    if (mm_yield() != 0)
      return -1;
  return 0;
}

static void test_short_steps_are_neither_reported_nor_counted(void **state) {
  sink_t s;
  sink_start(&s);
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.slow_step_ms = 1000;
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &o));
  mm_coro_t *c[4];
  for (int i = 0; i < 4; i++)
    assert_mm_ok(mm_spawn(loop, yield_many, NULL, &c[i]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 4; i++)
    assert_mm_ok(mm_join(c[i]));
  mm_stats_t st;
  assert_mm_ok(mm_loop_stats(loop, &st));
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  assert_int_equal(st.slow_steps, 0);
  if (s.n != 0) {
    sink_print(&s);
    fail_msg("short steps were reported");
  }
  sink_free(&s);
}

static void programs_own(int sig) {
}

static void test_the_program_s_own_sigurg_handler_is_left_alone(
    void **state) {
  struct sigaction sa, old, now;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = programs_own;
  sigemptyset(&sa.sa_mask);
  assert_int_equal(sigaction(SIGURG, &sa, &old), 0);

  sink_t s;
  hog_reported(&s, hold_until_released, "hog");

  assert_int_equal(sigaction(SIGURG, &old, &now), 0);
  assert_ptr_equal(now.sa_handler, programs_own);
  const char *r = sink_find(&s, LIVE_REPORT, 0, NULL);
  check_live_line(r, "a coroutine (step 1 of the loop) " LIVE_REPORT, 20);
  assert_non_null(strstr(r, "(slow_step_ms = 20); no name, function or "
                         "backtrace: SIGURG has a handler of the program's, "
                         "so the watchdog does not signal the loop thread"));
  /* The step's end names it. */
  assert_non_null(sink_find(&s, "coroutine 1 'hog' held the loop for ", 0,
                            NULL));
  sink_free(&s);
}

static void test_a_loop_thread_blocking_sigurg_is_reported_without_backtrace(
    void **state) {
  /* The loop's thread inherits this thread's mask: SIGURG stays pending
   * there, and the watchdog gives up its request after 1 s. */
  sigset_t urg, old;
  sigemptyset(&urg);
  sigaddset(&urg, SIGURG);
  assert_int_equal(pthread_sigmask(SIG_BLOCK, &urg, &old), 0);
  sink_t s;
  sink_start(&s);
  mm_loop_t *loop = watched_loop(20);
  assert_int_equal(pthread_sigmask(SIG_SETMASK, &old, NULL), 0);
  hold_t h = { 0 };
  mm_coro_t *c = spawn_named(loop, hold_until_released, &h, "masked");
  sink_wait(&s, LIVE_REPORT, 1);
  atomic_store_explicit(&h.release, 1, memory_order_release);
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);

  const char *r = sink_find(&s, LIVE_REPORT, 0, NULL);
  unsigned ms = check_live_line(r, "a coroutine (step 1 of the loop) "
                                LIVE_REPORT, 20);
  assert_true(ms >= 1000);   /* measured after the wait */
  assert_non_null(strstr(r, "(slow_step_ms = 20); no name, function or "
                         "backtrace: the loop thread did not answer SIGURG "
                         "within 1000 ms (blocked in its signal mask?)"));
  sink_free(&s);
}

/* In a forked child: frees the loop it inherited (whose watchdog thread
 * stayed with the parent), then has its own loop's watchdog report. */
static void child_watches_its_own_loop(void *arg) {
  mm_loop_t *inherited = arg;
  if (mm_loop_free(inherited) != 0)
    _exit(2);
#ifdef MM_TEST_TSAN
  /* TSan does not let a forked child start threads. */
  _exit(0);
#endif
  sink_t s;
  sink_start(&s);
  mm_loop_t *loop;
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.slow_step_ms = 20;
  if (mm_loop_new(&loop, &o) != 0 || mm_loop_start(loop) != 0)
    _exit(3);
  hold_t h = { 0 };
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = "child-hog";
  mm_coro_t *c;
  if (mm_spawn_ex(loop, hold_until_released, &h, &so, &c) != 0)
    _exit(4);
  sink_wait(&s, LIVE_REPORT, 1);
  atomic_store_explicit(&h.release, 1, memory_order_release);
  if (mm_join(c) != 0 || mm_loop_free(loop) != 0)
    _exit(5);
  mm_set_log(NULL, NULL);
  int reports = sink_count(&s, "coroutine 1 'child-hog', spawned with "
                           "hold_until_released, " LIVE_REPORT);
  sink_free(&s);
  if (reports != 1)
    _exit(6);
}

static void test_a_forked_child_frees_a_watched_loop_and_watches_its_own(
    void **state) {
  mm_test_skip_fork_threads_if_emulated();
  mm_loop_t *loop = watched_loop(20);
  mm_test_child_t *res = malloc(sizeof *res);
  assert_non_null(res);
  int forked = mm_test_fork(child_watches_its_own_loop, loop, res);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(forked, 0);
  if (!res->exited || res->code != 0)
    fail_msg("the child %s %d:\n%s", res->exited ? "exited with" :
             "was killed by signal", res->code, res->out);
  free(res);
}

static void test_the_sigurg_handler_goes_with_the_last_watchdog(
    void **state) {
  struct sigaction now;
  mm_loop_t *a = watched_loop(50), *b = watched_loop(50);
  assert_int_equal(sigaction(SIGURG, NULL, &now), 0);
  assert_true(now.sa_flags & SA_SIGINFO);   /* ours */
  assert_mm_ok(mm_loop_free(a));
  assert_int_equal(sigaction(SIGURG, NULL, &now), 0);
  assert_true(now.sa_flags & SA_SIGINFO);   /* b still has a watchdog */
  assert_mm_ok(mm_loop_free(b));
  assert_int_equal(sigaction(SIGURG, NULL, &now), 0);
  assert_false(now.sa_flags & SA_SIGINFO);
  assert_ptr_equal(now.sa_handler, SIG_DFL);
}


/* ---- detached coroutines that fail ------------------------------------ */

static int fail_with_eio(void *arg) {
  return -EIO;
}

static int return_zero(void *arg) {
  return 0;
}

static int sleep_long(void *arg) {
  return mm_sleep(100000);
}

static void spawn_detached(mm_loop_t *loop, mm_fn fn, const char *name,
                           uint64_t timeout_ms) {
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = name;
  so.timeout_ms = timeout_ms;
  assert_mm_ok(mm_spawn_ex(loop, fn, NULL, &so, NULL));
}

static void test_a_detached_coroutine_that_fails_is_reported_when_it_ends(
    void **state) {
  sink_t s;
  sink_start(&s);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  spawn_detached(loop, return_zero, "fine", 0);
  spawn_detached(loop, fail_with_eio, "broken", 0);
  spawn_detached(loop, sleep_long, "late", 1);
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);

  char want[256];
  snprintf(want, sizeof want, "detached coroutine 2 'broken' failed: "
           "status %d (%s)", -EIO, mm_strerror(-EIO));
  int level;
  const char *r = sink_find(&s, "'broken'", 0, &level);
  assert_non_null(r);
  assert_string_equal(r, want);
  assert_int_equal(level, MM_LOG_WARN);
  snprintf(want, sizeof want, "detached coroutine 3 'late' failed: "
           "status %d (%s)", -ETIMEDOUT, mm_strerror(-ETIMEDOUT));
  r = sink_find(&s, "'late'", 0, &level);
  assert_non_null(r);
  assert_string_equal(r, want);
  assert_int_equal(level, MM_LOG_WARN);
  assert_int_equal(sink_count(&s, "'fine'"), 0);
  assert_int_equal(s.n, 2);
  sink_free(&s);
}

static void test_a_detached_coroutine_cancelled_by_loop_free_is_not_a_failure(
    void **state) {
  sink_t s;
  sink_start(&s);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  spawn_detached(loop, sleep_long, "sleeper", 0);
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  /* Reported as alive at the free, not as failed at its end. */
  assert_int_equal(sink_count(&s, "failed"), 0);
  assert_int_equal(sink_count(&s, "'sleeper' is still alive"), 1);
  sink_free(&s);
}


/* ---- coroutines alive at mm_loop_free ---------------------------------- */

typedef struct {
  mm_test_latch_t parked;
  mm_chan_t *ch;
} alive_t;

static int sleep_after_latch(void *arg) {
  alive_t *a = arg;
  mm_test_latch_add(&a->parked, 1);   /* the sleep parks in this step */
  return mm_sleep(100000);
}

static int recv_after_latch(void *arg) {
  alive_t *a = arg;
  mm_test_latch_add(&a->parked, 1);
  void *item;
  return mm_chan_recv(a->ch, &item);
}

/* "mm_loop_free: coroutine ID 'NAME' is still alive (STATE, age N ms);
 * cancelling it" */
static void check_alive_line(sink_t *s, const char *name, const char *state,
                             int id) {
  char part[64];
  snprintf(part, sizeof part, "'%s' is still alive", name);
  int level;
  const char *r = sink_find(s, part, 0, &level);
  if (r == NULL) {
    sink_print(s);
    fail_msg("%s was not reported", name);
  }
  assert_int_equal(level, MM_LOG_WARN);
  assert_int_equal(sink_count(s, part), 1);
  char head[128];
  snprintf(head, sizeof head, "mm_loop_free: coroutine %d '%s' is still "
           "alive (%s, age ", id, name, state);
  if (strncmp(r, head, strlen(head)) != 0)
    fail_msg("expected \"%s...\", got:\n%s", head, r);
  unsigned ms;
  char tail[64];
  if (sscanf(r + strlen(head), "%u ms); %63[^\n]", &ms, tail) != 2)
    fail_msg("no age in ms:\n%s", r);
  assert_string_equal(tail, "cancelling it");
}

static void test_loop_free_reports_each_live_coroutine_of_a_started_loop(
    void **state) {
  alive_t a;
  mm_test_latch_init(&a.parked);
  assert_mm_ok(mm_chan_new(&a.ch, 1));
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = "sleeper";
  assert_mm_ok(mm_spawn_ex(loop, sleep_after_latch, &a, &so, NULL));
  so.name = "receiver";
  assert_mm_ok(mm_spawn_ex(loop, recv_after_latch, &a, &so, NULL));
  mm_test_latch_wait(&a.parked, 2);

  sink_t s;
  sink_start(&s);
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  check_alive_line(&s, "sleeper", "waiting", 1);
  check_alive_line(&s, "receiver", "waiting", 2);
  assert_int_equal(s.n, 2);
  sink_free(&s);
  assert_mm_ok(mm_chan_free(a.ch));
  mm_test_latch_destroy(&a.parked);
}

static void test_loop_free_reports_a_coroutine_that_never_ran(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_spawn_options_t so;
  mm_spawn_options_init(&so);
  so.name = "never-ran";
  mm_coro_t *c;
  assert_mm_ok(mm_spawn_ex(loop, return_zero, NULL, &so, &c));
  assert_mm_ok(mm_detach(c));
  sink_t s;
  sink_start(&s);
  assert_mm_ok(mm_loop_free(loop));
  mm_set_log(NULL, NULL);
  check_alive_line(&s, "never-ran", "ready", 1);
  assert_int_equal(s.n, 1);
  sink_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_a_coroutine_holding_the_loop_is_reported_while_it_holds_it),
    mm_test(test_a_function_without_a_dynamic_symbol_is_given_by_module),
    mm_test(test_a_step_that_goes_on_is_reported_again_after_a_second),
    mm_test(test_short_steps_are_neither_reported_nor_counted),
    mm_test(test_the_program_s_own_sigurg_handler_is_left_alone),
    mm_test(test_a_loop_thread_blocking_sigurg_is_reported_without_backtrace),
    mm_test(test_a_forked_child_frees_a_watched_loop_and_watches_its_own),
    mm_test(test_the_sigurg_handler_goes_with_the_last_watchdog),
    mm_test(test_a_detached_coroutine_that_fails_is_reported_when_it_ends),
    mm_test(test_a_detached_coroutine_cancelled_by_loop_free_is_not_a_failure),
    mm_test(test_loop_free_reports_each_live_coroutine_of_a_started_loop),
    mm_test(test_loop_free_reports_a_coroutine_that_never_ran),
  };
  return mm_run_tests(tests);
}
