/* examples/pg-bridge against a real PostgreSQL server: a query past its
 * deadline is stopped on the server, both ways (a lane set with on_cancel
 * -> PQcancel; libpq's non-blocking API with mm_wait_fd's timeout), and
 * the connection answers right after; so is one whose coroutine is
 * cancelled; quick queries from many coroutines get their own answers.
 *
 * The server: PGHOST's if set (.ci/run starts one for every variant),
 * else a private cluster that scripts/pg-cluster starts in a temporary
 * directory and stops at the end -- even if this program dies: a shell
 * started first waits for the end of a pipe that only we hold open, then
 * stops the cluster.  When no server can be had the program says why and
 * exits 77 (skipped), before any test runs.  The connections are
 * tagged with an application_name of this process, so that the server's
 * pg_stat_activity tells our queries from anyone else's.
 */
#include "helpers.h"
#include "pg-bridge.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>

extern char **environ;

#ifndef MM_TOP_SRCDIR
# define MM_TOP_SRCDIR "."
#endif

/* The deadline tested, and the bound on how long a call given it may take:
 * the promise is "about the deadline"; the bound is generous to loaded CI
 * machines (and Valgrind), and the actual time is printed. */
enum { DEADLINE_MS = 500, BOUND_MS = 2000 };

static char conninfo[96];
static pid_t guard = -1;      /* stops our private cluster, if we have one */
static int guard_fd = -1;     /* the pipe it waits on: closed, it stops it */

/* ---- the server ---------------------------------------------------------- */

/* Sets the variables of pg-cluster's output, "A='x'; B=y; export A B". */
static void setenv_from(char *line) {
  for (char *tok = strtok(line, ";\n"); tok != NULL;
       tok = strtok(NULL, ";\n")) {
    tok += strspn(tok, " ");
    char *eq = strchr(tok, '=');
    if (eq == NULL || strncmp(tok, "export", 6) == 0)
      continue;
    *eq = '\0';
    char *value = eq + 1;
    size_t n = strlen(value);
    if (n >= 2 && value[0] == '\'' && value[n - 1] == '\'') {
      value[n - 1] = '\0';
      value++;
    }
    setenv(tok, value, 1);
  }
}

/* 0 with PG* set, or the exit status for main: 77 skipped, 1 failed. */
static int server_up(void) {
  const char *why = getenv("MM_PG_UNAVAILABLE");   /* set by .ci/run */
  if (why != NULL && why[0] != '\0') {
    printf("SKIP: test-pg-bridge: no PostgreSQL server: %s\n", why);
    return 77;
  }
  if (getenv("PGHOST") != NULL) {
    printf("test-pg-bridge: using the server at PGHOST=%s\n",
           getenv("PGHOST"));
    return 0;
  }
  /* The server runs as another user when we are root: every parent of its
   * directory must be searchable by it. */
  char tmp[] = "/tmp/test-pg-bridge.XXXXXX";
  int fds[2];
  if (mkdtemp(tmp) == NULL || chmod(tmp, 0755) != 0 || pipe(fds) != 0 ||
      fcntl(fds[1], F_SETFD, FD_CLOEXEC) != 0) {
    perror("test-pg-bridge: mkdtemp, pipe");
    return 1;
  }
  /* The guard: sh reads the pipe until its end, then stops the cluster and
   * removes the directory.  Started before the cluster, so that nothing
   * of it is left however we end.  Only this process holds the write end
   * (close-on-exec: neither the guard nor the server inherits it). */
  char script[512];
  snprintf(script, sizeof script, "%s/scripts/pg-cluster", MM_TOP_SRCDIR);
  char *argv[] = { "sh", "-c",
                   "cat >/dev/null; \"$0\" stop \"$1/pg\" 2>/dev/null;"
                   " rmdir \"$1\"",
                   script, tmp, NULL };
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[0], STDIN_FILENO);
  int r = posix_spawn(&guard, "/bin/sh", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[0]);
  guard_fd = fds[1];
  if (r != 0) {
    fprintf(stderr, "test-pg-bridge: posix_spawn: %s\n", strerror(r));
    guard = -1;
    return 1;
  }

  char cmd[600];
  snprintf(cmd, sizeof cmd, "'%s' start '%s/pg' 2>&1", script, tmp);
  FILE *p = popen(cmd, "r");
  char out[4096] = "";
  size_t n = p != NULL ? fread(out, 1, sizeof out - 1, p) : 0;
  while (n > 0 && out[n - 1] == '\n')
    n--;
  out[n] = '\0';
  int st = p != NULL ? pclose(p) : -1;
  int code = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  if (code != 0) {
    printf("%s: test-pg-bridge: scripts/pg-cluster start exited %d: %s\n",
           code == 77 ? "SKIP" : "FAIL", code, out);
    return code == 77 ? 77 : 1;
  }
  setenv_from(out);
  printf("test-pg-bridge: started a private cluster at PGHOST=%s\n",
         getenv("PGHOST"));
  return 0;
}

/* Stops our private cluster, if any, and waits until it is gone. */
static void server_down(void) {
  if (guard_fd >= 0)
    close(guard_fd);
  int st;
  if (guard > 0 && waitpid(guard, &st, 0) == guard &&
      !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
    fprintf(stderr, "test-pg-bridge: stopping the cluster failed\n");
}

/* ---- what a run saw ------------------------------------------------------ */

typedef struct deadline_run {
  int      open;            /* making the set or the connection */
  int      sleep;           /* select pg_sleep(5) with the deadline */
  uint64_t sleep_ms;        /* how long that call took */
  char     sleep_error[256];
  int      still;           /* pg_sleep queries of ours still active, or
                               a negative errno value */
  int      one;             /* select 1 right after */
  char     one_value[64];
  int      close;
} deadline_run_t;

/* On a pool worker (mm_run_sync), over a connection of its own: how many
 * pg_sleep queries of this process the server runs, into *(int *) arg. */
static int count_sleeps(void *arg) {
  int *still = arg;
  PGconn *conn = PQconnectdb(conninfo);
  PGresult *res = PQexec(conn,
      "select count(*) from pg_stat_activity where state = 'active'"
      " and application_name = current_setting('application_name')"
      " and query like '%pg_sleep%' and pid <> pg_backend_pid()");
  *still = PQresultStatus(res) == PGRES_TUPLES_OK
               ? atoi(PQgetvalue(res, 0, 0)) : -EIO;
  if (*still < 0)
    fprintf(stderr, "count_sleeps: %s", PQerrorMessage(conn));
  PQclear(res);
  PQfinish(conn);
  return 0;
}

static int lanes_deadline(void *arg) {
  deadline_run_t *d = arg;
  mm_laneset_t *set;
  /* One lane: the select 1 runs on the connection the deadline hit. */
  if ((d->open = pg_lanes_new(mm_loop_current(), 1, &set)) != 0)
    return 0;
  pg_query_t q = { .sql = "select pg_sleep(5)", .timeout_ms = DEADLINE_MS };
  uint64_t t0 = mm_test_now_ms();
  d->sleep = pg_query_lanes(set, &q);
  d->sleep_ms = mm_test_now_ms() - t0;
  memcpy(d->sleep_error, q.error, sizeof q.error);
  mm_run_sync(count_sleeps, &d->still);
  pg_query_t one = { .sql = "select 1" };
  d->one = pg_query_lanes(set, &one);
  memcpy(d->one_value, one.value, sizeof one.value);
  d->close = pg_lanes_free(set);
  return 0;
}

static int loop_deadline(void *arg) {
  deadline_run_t *d = arg;
  pg_async_t c;
  if ((d->open = pg_async_connect(&c, 10000)) != 0)
    return 0;
  pg_query_t q = { .sql = "select pg_sleep(5)", .timeout_ms = DEADLINE_MS };
  uint64_t t0 = mm_test_now_ms();
  d->sleep = pg_query_async(&c, &q);
  d->sleep_ms = mm_test_now_ms() - t0;
  memcpy(d->sleep_error, q.error, sizeof q.error);
  mm_run_sync(count_sleeps, &d->still);
  pg_query_t one = { .sql = "select 1" };
  d->one = pg_query_async(&c, &one);
  memcpy(d->one_value, one.value, sizeof one.value);
  pg_async_close(&c);
  return 0;
}

static void check_deadline_run(const char *way, const deadline_run_t *d) {
  printf("%s: select pg_sleep(5) with a %d ms deadline returned %d in"
         " %llu ms (the server: \"%s\"); pg_sleep still running: %d;"
         " then select 1 -> \"%s\"\n", way, DEADLINE_MS, d->sleep,
         (unsigned long long) d->sleep_ms, d->sleep_error, d->still,
         d->one_value);
  assert_status(d->open, 0);
  assert_status(d->sleep, -ETIMEDOUT);
  if (d->sleep_ms > BOUND_MS)
    fail_msg("%s: the call took %llu ms, beyond %d ms", way,
             (unsigned long long) d->sleep_ms, BOUND_MS);
  assert_int_equal(d->still, 0);
  assert_status(d->one, 0);
  assert_string_equal(d->one_value, "1");
  assert_status(d->close, 0);
}

static void run_on_new_loop(mm_fn fn, void *arg) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_test_run_one(loop, fn, arg);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_lanes_query_past_deadline_is_stopped_by_pqcancel(
    void **state) {
  deadline_run_t d = { .still = -1 };
  run_on_new_loop(lanes_deadline, &d);
  check_deadline_run("lanes", &d);
}

static void test_loop_query_past_deadline_is_cancelled_and_drained(
    void **state) {
  deadline_run_t d = { .still = -1 };
  run_on_new_loop(loop_deadline, &d);
  check_deadline_run("loop", &d);
}

/* ---- a coroutine cancelled during its query ------------------------------ */

typedef struct cancel_run {
  bool          lanes;      /* IN: the way */
  mm_laneset_t *set;
  pg_async_t    conn;
  int           open;
  int           query;      /* the victim's select pg_sleep(5), no deadline */
  uint64_t      query_ms;
  char          query_error[256];
  int           after;      /* the victim's next wait */
  bool          ended;      /* the victim is done (loop thread only) */
  int           still;
  int           one;        /* select 1 on the same connection, after */
  char          one_value[64];
  int           close;
} cancel_run_t;

static int run_query(cancel_run_t *d, pg_query_t *q) {
  return d->lanes ? pg_query_lanes(d->set, q) : pg_query_async(&d->conn, q);
}

static int cancel_victim(void *arg) {
  cancel_run_t *d = arg;
  pg_query_t q = { .sql = "select pg_sleep(5)" };
  uint64_t t0 = mm_test_now_ms();
  d->query = run_query(d, &q);
  d->query_ms = mm_test_now_ms() - t0;
  memcpy(d->query_error, q.error, sizeof q.error);
  d->after = mm_yield();
  d->ended = true;
  return 0;
}

static int cancel_driver(void *arg) {
  cancel_run_t *d = arg;
  d->open = d->lanes ? pg_lanes_new(mm_loop_current(), 1, &d->set)
                     : pg_async_connect(&d->conn, 10000);
  mm_coro_t *victim;
  if (d->open != 0 ||
      (d->open = mm_spawn(mm_loop_current(), cancel_victim, d, &victim)) != 0)
    return 0;
  /* A cancel that reaches the server before the query is ignored there:
   * cancel once the server shows the query running (or the victim failed
   * without it: the checks below say how). */
  int running = 0;
  while (!d->ended && mm_run_sync(count_sleeps, &running) == 0 &&
         running == 0 && mm_sleep(2) == 0)
    ;
  mm_cancel(victim);
  mm_join(victim);
  /* Way (b) reads the end of the cancelled query in this select 1: the
   * server's count is exact only after it. */
  pg_query_t one = { .sql = "select 1" };
  d->one = run_query(d, &one);
  memcpy(d->one_value, one.value, sizeof one.value);
  mm_run_sync(count_sleeps, &d->still);
  if (d->lanes)
    d->close = pg_lanes_free(d->set);
  else
    pg_async_close(&d->conn);
  return 0;
}

static void check_cancel_run(const char *way, const cancel_run_t *d,
                             int want) {
  printf("%s: select pg_sleep(5), its coroutine cancelled, returned %d in"
         " %llu ms (the server: \"%s\"); then select 1 -> \"%s\";"
         " pg_sleep still running: %d\n", way, d->query,
         (unsigned long long) d->query_ms, d->query_error, d->one_value,
         d->still);
  assert_status(d->open, 0);
  assert_status(d->query, want);
  if (d->query_ms > BOUND_MS)
    fail_msg("%s: the call took %llu ms, beyond %d ms", way,
             (unsigned long long) d->query_ms, BOUND_MS);
  assert_status(d->after, -ECANCELED);
  assert_int_equal(d->still, 0);
  assert_status(d->one, 0);
  assert_string_equal(d->one_value, "1");
  assert_status(d->close, 0);
}

/* The lane's query is interrupted (on_cancel -> PQcancel) and the call,
 * waited for, returns its value: -EINTR, SQLSTATE 57014 mapped. */
static void test_lanes_cancelled_coroutine_interrupts_query_with_eintr(
    void **state) {
  cancel_run_t d = { .lanes = true, .still = -1 };
  run_on_new_loop(cancel_driver, &d);
  check_cancel_run("lanes", &d, -EINTR);
}

/* The coroutine leaves at once; the next query on the connection reads
 * what is left of the cancelled one first. */
static void test_loop_cancelled_coroutine_leaves_connection_usable(
    void **state) {
  cancel_run_t d = { .lanes = false, .still = -1 };
  run_on_new_loop(cancel_driver, &d);
  check_cancel_run("loop", &d, -ECANCELED);
}

/* ---- many coroutines ----------------------------------------------------- */

typedef struct quick_run {
  mm_laneset_t *set;        /* NULL: each coroutine connects (way b) */
  unsigned      first, count;
  int           status;
  char          detail[400];
} quick_run_t;

static int quick_one(void *arg) {
  quick_run_t *j = arg;
  pg_async_t c;
  if (j->set == NULL && (j->status = pg_async_connect(&c, 10000)) != 0)
    return 0;
  for (unsigned i = j->first; i < j->first + j->count && j->status == 0;
       i++) {
    char n[16], want[16];
    snprintf(n, sizeof n, "%u", i);
    snprintf(want, sizeof want, "%u", 2 * i);
    pg_query_t q = { .sql = "select $1::int * 2", .param = n,
                     .timeout_ms = 10000 };
    j->status = j->set != NULL ? pg_query_lanes(j->set, &q)
                               : pg_query_async(&c, &q);
    if (j->status == 0 && strcmp(q.value, want) != 0)
      j->status = -EIO;
    if (j->status != 0)
      snprintf(j->detail, sizeof j->detail, "query %u: %s / %s", i,
               q.value, q.error);
  }
  if (j->set == NULL)
    pg_async_close(&c);
  return 0;
}

enum { QUICK_COROS = 12 };

typedef struct quick_all {
  bool        lanes;
  int         open, wait, close;
  quick_run_t runs[QUICK_COROS];
} quick_all_t;

static int quick_all(void *arg) {
  quick_all_t *a = arg;
  mm_laneset_t *set = NULL;
  if (a->lanes &&
      (a->open = pg_lanes_new(mm_loop_current(), 3, &set)) != 0)
    return 0;
  unsigned per = MM_TEST_SCALE(mm_test_under_valgrind() ? 5 : 50, 10);
  mm_group_t *g;
  if ((a->open = mm_group_new(mm_loop_current(), &g)) == 0) {
    for (unsigned i = 0; i < QUICK_COROS; i++) {
      a->runs[i] = (quick_run_t){ .set = set, .first = i * per,
                                  .count = per };
      if (a->open == 0)
        a->open = mm_group_spawn(g, quick_one, &a->runs[i]);
    }
    a->wait = mm_group_wait(g);
  }
  if (set != NULL)
    a->close = pg_lanes_free(set);
  return 0;
}

static void check_quick(quick_all_t *a) {
  run_on_new_loop(quick_all, a);
  assert_status(a->open, 0);
  assert_status(a->wait, 0);
  assert_status(a->close, 0);
  for (unsigned i = 0; i < QUICK_COROS; i++)
    if (a->runs[i].status != 0)
      fail_msg("coroutine %u: %s (%s)", i, mm_strerror(a->runs[i].status),
               a->runs[i].detail);
}

static void test_lanes_quick_queries_from_many_coroutines_get_their_answers(
    void **state) {
  quick_all_t a = { .lanes = true };
  check_quick(&a);
}

static void test_loop_quick_queries_from_many_coroutines_get_their_answers(
    void **state) {
  quick_all_t a = { .lanes = false };
  check_quick(&a);
}

int main(void) {
  int r = server_up();
  if (r != 0) {
    server_down();
    return r;
  }
  snprintf(conninfo, sizeof conninfo, "application_name=test-pg-bridge-%ld",
           (long) getpid());
  pg_conninfo = conninfo;
  const struct CMUnitTest tests[] = {
    mm_test(test_lanes_query_past_deadline_is_stopped_by_pqcancel),
    mm_test(test_loop_query_past_deadline_is_cancelled_and_drained),
    mm_test(test_lanes_cancelled_coroutine_interrupts_query_with_eintr),
    mm_test(test_loop_cancelled_coroutine_leaves_connection_usable),
    mm_test(test_lanes_quick_queries_from_many_coroutines_get_their_answers),
    mm_test(test_loop_quick_queries_from_many_coroutines_get_their_answers),
  };
  int failed = mm_run_tests(tests);
  server_down();
  return failed;
}
