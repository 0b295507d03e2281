/* The reports that keep failures from passing silently: a detached
 * coroutine that fails, coroutines still alive when the loop is freed.
 * Each report is made to happen and its text is checked. */
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
__attribute__((unused))
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
    mm_test(test_a_detached_coroutine_that_fails_is_reported_when_it_ends),
    mm_test(test_a_detached_coroutine_cancelled_by_loop_free_is_not_a_failure),
    mm_test(test_loop_free_reports_each_live_coroutine_of_a_started_loop),
    mm_test(test_loop_free_reports_a_coroutine_that_never_ran),
  };
  return mm_run_tests(tests);
}
