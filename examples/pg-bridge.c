/* pg-bridge: PostgreSQL queries with a deadline, from coroutines, done two
 * ways side by side.
 *
 * (a) libpq's ordinary blocking API, PQexecParams, on a lane set: each
 *     lane is a thread with a connection of its own, opened there by the
 *     set's open and closed there by its close.  A query goes to the first
 *     idle lane; the coroutine waits, the loop serves the others.  The
 *     deadline is the call's timeout_ms: when it passes, mixmode runs our
 *     on_cancel, which sends PQcancel; the server stops the query, the lane
 *     gets its error back at once, and the call returns -ETIMEDOUT.
 *
 * (b) libpq's non-blocking API, driven by the coroutine itself on the
 *     loop, with no thread at all: PQsendQueryParams, then wait for the
 *     socket with mm_wait_fd and read with PQconsumeInput until PQisBusy
 *     says a result is there.  The deadline is mm_wait_fd's timeout: when
 *     it passes, we send PQcancel and read the rest, so that the
 *     connection is ready for the next query.
 *
 * (a) is what a legacy driver allows (any blocking client library); (b)
 * needs a library with a non-blocking mode, and then costs no thread.
 * Both keep the query's own error (SQLSTATE 57014, "canceling statement
 * due to user request") apart from mixmode's codes: -EINTR.
 *
 * The program (main, at the end) shows both: `select pg_sleep(5)` with a
 * 500 ms deadline on every connection, then quick queries from many
 * coroutines at once.  Run it against any server libpq can reach from the
 * environment (PGHOST, PGPORT, PGUSER, PGDATABASE), such as a private one
 * from scripts/pg-cluster; `pg-bridge -h` lists its options.
 */
#include "pg-bridge.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *pg_conninfo = "application_name=pg-bridge";

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* Keeps a message, without libpq's trailing newline. */
static void set_error(pg_query_t *q, const char *msg) {
  snprintf(q->error, sizeof q->error, "%s", msg != NULL ? msg : "?");
  size_t n = strlen(q->error);
  while (n > 0 && q->error[n - 1] == '\n')
    q->error[--n] = '\0';
}

/* Reads one result into q and frees it: 0, -EINTR if the server cancelled
 * the query, else -EIO. */
static int take_result(PGresult *res, pg_query_t *q) {
  int r = 0;
  switch (PQresultStatus(res)) {
  case PGRES_TUPLES_OK:
    if (PQntuples(res) > 0 && PQnfields(res) > 0)
      snprintf(q->value, sizeof q->value, "%s", PQgetvalue(res, 0, 0));
    break;
  case PGRES_COMMAND_OK:
    break;
  default: {
    /* 57014 is query_canceled: our cancel, or a statement_timeout.  Never
     * -ETIMEDOUT or -ECANCELED here: those are mixmode's (API.md). */
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    r = state != NULL && strcmp(state, "57014") == 0 ? -EINTR : -EIO;
    set_error(q, PQresultErrorMessage(res));
  }
  }
  PQclear(res);
  return r;
}

/* ---- (a) blocking libpq on a lane set ------------------------------------ */

/* A lane's state: its connection, and what on_cancel needs to stop a query
 * on it from another thread. */
typedef struct pg_lane {
  PGconn   *conn;
  PGcancel *cancel;         /* PQgetCancel, once: PQcancel needs only this */
} pg_lane_t;

/* The set's open: on the lane's own thread, before it takes calls. */
static int lane_open(void **state, void *arg) {
  pg_lane_t *lane = calloc(1, sizeof *lane);
  if (lane == NULL)
    return -ENOMEM;
  lane->conn = PQconnectdb(pg_conninfo);
  if (PQstatus(lane->conn) != CONNECTION_OK ||
      (lane->cancel = PQgetCancel(lane->conn)) == NULL) {
    fprintf(stderr, "pg-bridge: connect: %s", PQerrorMessage(lane->conn));
    PQfinish(lane->conn);
    free(lane);
    return -EIO;
  }
  *state = lane;
  return 0;
}

/* The set's close: on the same thread, at the end. */
static void lane_close(void *state, void *arg) {
  pg_lane_t *lane = state;
  PQfreeCancel(lane->cancel);
  PQfinish(lane->conn);
  free(lane);
}

int pg_lanes_new(mm_loop_t *loop, unsigned count, mm_laneset_t **set) {
  mm_laneset_options_t o;
  mm_laneset_options_init(&o);
  o.name = "pg";
  o.count = count;
  o.open = lane_open;
  o.close = lane_close;
  return mm_laneset_new(loop, &o, set);
}

int pg_lanes_free(mm_laneset_t *set) {
  return mm_laneset_free(set);
}

/* One call: lives on the calling coroutine's stack, which waits for fn
 * (no abandon_on_cancel), so nothing needs freeing and cleanup is NULL.
 * on_cancel, on the loop's thread, may run as soon as a lane has taken
 * the call -- possibly before fn has said which lane that is: the two
 * meet on running and stop, each storing its own before loading the
 * other's (sequentially consistent), so at least one sees the other. */
typedef struct lane_call {
  pg_query_t *q;
  pg_lane_t *_Atomic running;   /* set by fn before it sends the query */
  atomic_bool stop;             /* set by on_cancel */
} lane_call_t;

/* fn: on the lane's thread. */
static int lane_query(void *arg) {
  lane_call_t *call = arg;
  pg_query_t *q = call->q;
  pg_lane_t *lane = mm_lane_state();
  if (PQstatus(lane->conn) == CONNECTION_BAD) {
    /* The server dropped the connection (a restart): make it again, on
     * this thread, before running hands lane->cancel to on_cancel. */
    PQreset(lane->conn);
    PQfreeCancel(lane->cancel);
    lane->cancel = PQgetCancel(lane->conn);   /* NULL if that failed */
  }
  atomic_store(&call->running, lane);
  if (atomic_load(&call->stop)) {
    set_error(q, "stopped before it was sent");
    return -EINTR;
  }
  const char *params[1] = { q->param };
  PGresult *res = PQexecParams(lane->conn, q->sql, q->param != NULL ? 1 : 0,
                               NULL, params, NULL, NULL, 0);
  if (res == NULL) {
    set_error(q, PQerrorMessage(lane->conn));
    return -EIO;
  }
  return take_result(res, q);
}

/* on_cancel: on the loop's thread, while lane_query runs, once.
 *
 * PQcancel is thread-safe (it uses only the PGcancel, not the connection
 * the lane is using) but blocking: it opens a connection to the server,
 * sends the request and waits for the server to close it.  It runs here,
 * on the loop's thread, so the loop stalls for that round trip: on a local
 * socket a few milliseconds, most of it the server forking a process to
 * read the request (PostgreSQL 15), and once per query stopped -- four
 * deadlines passing together stall the loop four times over.  Over a
 * network, or with many queries to stop, spawn a coroutine (mm_spawn works
 * from here) that sends it with mm_run_sync instead.  A cancel that reaches
 * the server before the query does is ignored there, and the query runs
 * to its end: only a deadline that passes in the microseconds between
 * lane_query's look at stop and the query's arrival is missed so. */
static void lane_cancel(void *arg) {
  lane_call_t *call = arg;
  atomic_store(&call->stop, true);
  pg_lane_t *lane = atomic_load(&call->running);
  if (lane == NULL)
    return;                     /* fn will see stop before it sends */
  char err[256];
  if (!PQcancel(lane->cancel, err, sizeof err))
    fprintf(stderr, "pg-bridge: PQcancel: %s\n", err);
}

int pg_query_lanes(mm_laneset_t *set, pg_query_t *q) {
  q->value[0] = q->error[0] = '\0';
  lane_call_t call = { .q = q };
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANESET;
  o.laneset = set;
  o.timeout_ms = q->timeout_ms;   /* passed while queued: never runs;
                                     while fn runs: lane_cancel, then
                                     -ETIMEDOUT when lane_query returns */
  o.on_cancel = lane_cancel;
  return mm_run_sync_ex(lane_query, &call, &o);
}

/* ---- (b) non-blocking libpq on the loop ---------------------------------- */

/* mm_wait_fd until deadline (in µs of now_us(); 0: none).  A timeout of 0
 * means "none" to mm_wait_fd, so a deadline already passed is answered
 * here; the rest is rounded up to the millisecond. */
static int wait_until(int fd, int events, uint64_t deadline) {
  uint64_t left_ms = 0;
  if (deadline != 0) {
    uint64_t now = now_us();
    if (now >= deadline)
      return -ETIMEDOUT;
    left_ms = (deadline - now + 999) / 1000;
  }
  return mm_wait_fd(fd, events, left_ms);
}

static uint64_t deadline_after(uint64_t timeout_ms) {
  return timeout_ms != 0 ? now_us() + timeout_ms * 1000 : 0;
}

/* PQconnectStart blocks only to resolve a host name (give a Unix socket
 * directory or hostaddr to avoid it); the rest is PQconnectPoll's. */
int pg_async_connect(pg_async_t *c, uint64_t timeout_ms) {
  memset(c, 0, sizeof *c);
  uint64_t deadline = deadline_after(timeout_ms);
  c->conn = PQconnectStart(pg_conninfo);
  if (c->conn == NULL)
    return -ENOMEM;
  /* libpq's loop: wait for what the last poll asked, poll again. */
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  int r = 0;
  while (r == 0 && PQstatus(c->conn) != CONNECTION_BAD &&
         st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
    r = wait_until(PQsocket(c->conn), st == PGRES_POLLING_READING
                                          ? MM_READABLE : MM_WRITABLE,
                   deadline);
    if (r > 0) {
      r = 0;
      st = PQconnectPoll(c->conn);
    }
  }
  if (r == 0 && (st != PGRES_POLLING_OK ||
                 PQsetnonblocking(c->conn, 1) != 0 ||
                 (c->cancel = PQgetCancel(c->conn)) == NULL)) {
    fprintf(stderr, "pg-bridge: connect: %s", PQerrorMessage(c->conn));
    r = -EIO;
  }
  if (r != 0)
    pg_async_close(c);
  return r;
}

void pg_async_close(pg_async_t *c) {
  PQfreeCancel(c->cancel);
  PQfinish(c->conn);
  memset(c, 0, sizeof *c);
}

/* Sends what libpq holds, reads what the server sends, and takes every
 * result of the query until PQgetResult says there is no more (the
 * connection is then ready for the next one).  Returns the first
 * result's code (0, -EINTR, -EIO), or mm_wait_fd's error (-ETIMEDOUT at
 * deadline, -ECANCELED) with the query still under way. */
static int pump(pg_async_t *c, pg_query_t *q, uint64_t deadline) {
  int status = 0;
  for (;;) {
    /* PQflush: 0 when all is sent, 1 when some is left (the socket was
     * full): then wait for room as well as for an answer. */
    int flushed = PQflush(c->conn);
    if (flushed < 0)
      goto err_conn;
    int events = MM_READABLE | (flushed == 1 ? MM_WRITABLE : 0);
    /* Not busy: PQgetResult has a result (or NULL) without waiting. */
    while (!PQisBusy(c->conn)) {
      PGresult *res = PQgetResult(c->conn);
      if (res == NULL)
        return status;
      int r = take_result(res, q);
      if (status == 0)
        status = r;
    }
    int r = wait_until(PQsocket(c->conn), events, deadline);
    if (r < 0)
      return r;
    if ((r & MM_READABLE) && !PQconsumeInput(c->conn))
      goto err_conn;
  }

err_conn:
  set_error(q, PQerrorMessage(c->conn));
  return -EIO;
}

/* How long a cancelled query may take to answer before we give up on the
 * connection. */
enum { DRAIN_MS = 5000 };

/* Asks the server to stop the query under way (once), and reads what is
 * left. */
static int stop_query(pg_async_t *c, pg_query_t *q) {
  /* PQcancel, here on the loop's thread, blocks it for one round trip to
   * the server (a few milliseconds on a local socket): see lane_cancel
   * above. */
  char err[256];
  if (!c->stopping && !PQcancel(c->cancel, err, sizeof err)) {
    set_error(q, err);
    return -EIO;
  }
  c->stopping = true;
  int r = pump(c, q, deadline_after(DRAIN_MS));
  if (r != -ECANCELED)
    c->stopping = false;
  if (r == -ETIMEDOUT) {
    set_error(q, "the server did not answer the cancel");
    return -EIO;
  }
  return r;
}

int pg_query_async(pg_async_t *c, pg_query_t *q) {
  if (c->busy)
    return -EBUSY;
  q->value[0] = q->error[0] = '\0';
  uint64_t deadline = deadline_after(q->timeout_ms);
  c->busy = true;
  int r = 0;
  /* A query left under way by a cancelled coroutine (below): drain it. */
  if (PQtransactionStatus(c->conn) == PQTRANS_ACTIVE) {
    r = stop_query(c, q);
    if (r != -EIO && r != -ECANCELED) {
      r = 0;                    /* its answer is not this query's */
      q->value[0] = q->error[0] = '\0';
    }
  }
  const char *params[1] = { q->param };
  if (r == 0 &&
      !PQsendQueryParams(c->conn, q->sql, q->param != NULL ? 1 : 0, NULL,
                         params, NULL, NULL, 0)) {
    set_error(q, PQerrorMessage(c->conn));
    r = -EIO;
  }
  if (r == 0)
    r = pump(c, q, deadline);
  if (r == -ETIMEDOUT) {
    /* The deadline passed with the query running: stop it and read its
     * error (or its result, if it ended meanwhile).  The call timed out
     * either way -- unless the connection failed. */
    int s = stop_query(c, q);
    if (s == -EIO || s == -ECANCELED)
      r = s;
  } else if (r == -ECANCELED && !c->stopping) {
    /* The coroutine is cancelled: its waits return at once from now on, so
     * the rest is read by the next query on this connection. */
    char err[256];
    c->stopping = PQcancel(c->cancel, err, sizeof err) != 0;
  }
  c->busy = false;
  return r;
}

/* ---- the demonstration --------------------------------------------------- */
#ifndef PG_BRIDGE_NO_MAIN

#include <getopt.h>

typedef struct options {
  bool     lanes, loop;          /* the ways to show */
  bool     deadline, quick;      /* the parts to show */
  unsigned conns;                /* connections per way */
  unsigned coros;                /* coroutines making the quick queries */
  unsigned queries;              /* quick queries per way */
  uint64_t deadline_ms;
} options_t;

/* One way, behind one function: the lane set, or a pool of non-blocking
 * connections passed around in a channel (a coroutine takes one, runs
 * its query, gives it back). */
typedef struct way {
  const char   *name;
  mm_laneset_t *set;             /* (a) */
  mm_chan_t    *idle;            /* (b): pg_async_t * */
  pg_async_t   *conns;
  unsigned      nconns;
} way_t;

static int way_query(way_t *w, pg_query_t *q) {
  if (w->set != NULL)
    return pg_query_lanes(w->set, q);
  void *item;
  int r = mm_chan_recv(w->idle, &item);
  if (r != 0)
    return r;
  r = pg_query_async(item, q);
  /* Never waits (the slot was ours), even for a cancelled coroutine. */
  mm_chan_try_send(w->idle, item);
  return r;
}

typedef struct job {
  way_t     *way;
  options_t *opt;
  unsigned   first, count;       /* quick queries first..first+count-1 */
  uint64_t  *latency_us;         /* per query, indexed from 0 */
  int        status;             /* 0, or the first failure */
  uint64_t   took_us;
} job_t;

static int sleeper(void *arg) {
  job_t *j = arg;
  pg_query_t q = { .sql = "select pg_sleep(5)",
                   .timeout_ms = j->opt->deadline_ms };
  uint64_t t0 = now_us();
  j->status = way_query(j->way, &q);
  j->took_us = now_us() - t0;
  return 0;
}

static int quick(void *arg) {
  job_t *j = arg;
  for (unsigned i = j->first; i < j->first + j->count; i++) {
    char n[16], want[16];
    snprintf(n, sizeof n, "%u", i);
    snprintf(want, sizeof want, "%u", 2 * i);
    pg_query_t q = { .sql = "select $1::int * 2", .param = n,
                     .timeout_ms = 5000 };
    uint64_t t0 = now_us();
    int r = way_query(j->way, &q);
    j->latency_us[i] = now_us() - t0;
    if (r == 0 && strcmp(q.value, want) != 0) {
      fprintf(stderr, "%s: select %u * 2 answered %s\n", j->way->name, i,
              q.value);
      r = -EIO;
    } else if (r != 0) {
      fprintf(stderr, "%s: %s (%s)\n", j->way->name, mm_strerror(r), q.error);
    }
    if (r != 0) {
      j->status = r;
      return 0;
    }
  }
  return 0;
}

/* Spawns n coroutines fn(jobs[i]) and waits for them all. */
static int run_jobs(mm_fn fn, job_t *jobs, unsigned n) {
  mm_group_t *g;
  int r = mm_group_new(mm_loop_current(), &g);
  for (unsigned i = 0; r == 0 && i < n; i++)
    r = mm_group_spawn(g, fn, &jobs[i]);
  int w = mm_group_wait(g);
  return r != 0 ? r : w;
}

/* One `select pg_sleep(5)` per connection at once, each with the
 * deadline: all must time out in time, and then the connections answer. */
static int show_deadline(way_t *w, options_t *opt) {
  job_t *jobs = calloc(w->nconns, sizeof *jobs);
  if (jobs == NULL)
    return -ENOMEM;
  for (unsigned i = 0; i < w->nconns; i++)
    jobs[i] = (job_t){ .way = w, .opt = opt };
  int failed = run_jobs(sleeper, jobs, w->nconns) != 0;
  printf("%-6s %u x select pg_sleep(5) at once, deadline %llu ms: "
         "timed out in", w->name, w->nconns,
         (unsigned long long) opt->deadline_ms);
  /* The promise shown: each returns within 100 ms of its deadline. */
  for (unsigned i = 0; i < w->nconns; i++) {
    bool late = jobs[i].took_us > (opt->deadline_ms + 100) * 1000;
    printf(" %.1f", jobs[i].took_us / 1000.0);
    if (jobs[i].status != -ETIMEDOUT)
      printf(" (no: %s)", mm_strerror(jobs[i].status));
    else if (late)
      printf(" (late!)");
    printf(i + 1 < w->nconns ? "," : " ms\n");
    failed |= jobs[i].status != -ETIMEDOUT || late;
  }
  free(jobs);
  /* The query really stopped: the server runs none of ours any more. */
  pg_query_t q = { .sql = "select count(*) from pg_stat_activity where "
                          "state = 'active' and query like '%pg_sleep(5)%' "
                          "and application_name = "
                          "current_setting('application_name') "
                          "and pid <> pg_backend_pid()" };
  uint64_t t0 = now_us();
  int r = way_query(w, &q);
  printf("%-6s then: pg_sleep queries still running on the server: %s"
         " (%.1f ms)\n",
         w->name, r == 0 ? q.value : mm_strerror(r),
         (now_us() - t0) / 1000.0);
  failed |= r != 0 || strcmp(q.value, "0") != 0;
  q = (pg_query_t){ .sql = "select 1" };
  t0 = now_us();
  r = way_query(w, &q);
  printf("%-6s then: select 1 -> %s (%.1f ms)\n", w->name,
         r == 0 ? q.value : mm_strerror(r), (now_us() - t0) / 1000.0);
  failed |= r != 0 || strcmp(q.value, "1") != 0;
  return failed ? -EIO : 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* opt->queries quick queries, shared among opt->coros coroutines. */
static int show_quick(way_t *w, options_t *opt) {
  uint64_t *lat = calloc(opt->queries, sizeof *lat);
  job_t *jobs = calloc(opt->coros, sizeof *jobs);
  if (lat == NULL || jobs == NULL) {
    free(lat);
    free(jobs);
    return -ENOMEM;
  }
  unsigned per = opt->queries / opt->coros, extra = opt->queries % opt->coros;
  for (unsigned i = 0, first = 0; i < opt->coros; i++) {
    jobs[i] = (job_t){ .way = w, .opt = opt, .first = first,
                       .count = per + (i < extra), .latency_us = lat };
    first += jobs[i].count;
  }
  uint64_t t0 = now_us();
  int r = run_jobs(quick, jobs, opt->coros);
  double secs = (now_us() - t0) / 1e6;
  for (unsigned i = 0; r == 0 && i < opt->coros; i++)
    r = jobs[i].status;
  if (r == 0) {
    qsort(lat, opt->queries, sizeof *lat, cmp_u64);
    printf("%-6s %u x select $1::int * 2 from %u coroutines: %.0f ms, "
           "%.0f queries/s, latency p50 %.2f ms, p99 %.2f ms\n",
           w->name, opt->queries, opt->coros, secs * 1000,
           opt->queries / secs, lat[opt->queries / 2] / 1000.0,
           lat[opt->queries * 99 / 100] / 1000.0);
  } else {
    printf("%-6s quick queries failed: %s\n", w->name, mm_strerror(r));
  }
  free(lat);
  free(jobs);
  return r;
}

static int way_open(way_t *w, bool lanes, unsigned n) {
  memset(w, 0, sizeof *w);
  w->nconns = n;
  if (lanes) {
    w->name = "lanes:";
    return pg_lanes_new(mm_loop_current(), n, &w->set);
  }
  w->name = "loop:";
  int r = mm_chan_new(&w->idle, n);
  if (r == 0 && (w->conns = calloc(n, sizeof *w->conns)) == NULL)
    r = -ENOMEM;
  for (unsigned i = 0; r == 0 && i < n; i++)
    if ((r = pg_async_connect(&w->conns[i], 10000)) == 0)
      r = mm_chan_send(w->idle, &w->conns[i]);
  return r;
}

static void way_close(way_t *w) {
  if (w->set != NULL)
    pg_lanes_free(w->set);
  for (unsigned i = 0; w->conns != NULL && i < w->nconns; i++)
    if (w->conns[i].conn != NULL)
      pg_async_close(&w->conns[i]);
  free(w->conns);
  if (w->idle != NULL)
    mm_chan_free(w->idle);
}

static int demo(void *arg) {
  options_t *opt = arg;
  int failed = 0;
  const char *host = getenv("PGHOST");
  printf("pg-bridge: PostgreSQL at %s, %u connections per way\n",
         host != NULL ? host : "libpq's default", opt->conns);
  for (int lanes = 1; lanes >= 0; lanes--) {
    if (lanes ? !opt->lanes : !opt->loop)
      continue;
    way_t w;
    int r = way_open(&w, lanes, opt->conns);
    if (r != 0) {
      printf("%s cannot start: %s\n", lanes ? "lanes:" : "loop:",
             mm_strerror(r));
      failed = 1;
    }
    if (r == 0 && opt->deadline)
      failed |= show_deadline(&w, opt) != 0;
    if (r == 0 && opt->quick)
      failed |= show_quick(&w, opt) != 0;
    way_close(&w);
  }
  return failed ? -EIO : 0;
}

static void usage(FILE *f) {
  fprintf(f,
    "usage: pg-bridge [-w lanes|loop] [-d|-q] [-c CONNS] [-k COROS]\n"
    "                 [-n QUERIES] [-t MS]\n"
    "Queries PostgreSQL (from PGHOST, PGPORT, PGUSER, PGDATABASE) two ways:\n"
    "  lanes  blocking PQexecParams on a lane set, a connection per lane\n"
    "  loop   non-blocking libpq driven on the loop with mm_wait_fd\n"
    "  -w WAY  only that way (default: both)\n"
    "  -d      only the deadline demo (select pg_sleep(5) per connection)\n"
    "  -q      only the quick queries\n"
    "  -c N    connections per way (default 4)\n"
    "  -k N    coroutines making the quick queries (default 32)\n"
    "  -n N    quick queries per way (default 2000)\n"
    "  -t MS   the deadline (default 500)\n");
}

int main(int argc, char **argv) {
  options_t opt = { .lanes = true, .loop = true, .deadline = true,
                    .quick = true, .conns = 4, .coros = 32,
                    .queries = 2000, .deadline_ms = 500 };
  int c;
  while ((c = getopt(argc, argv, "w:dqc:k:n:t:h")) != -1) {
    switch (c) {
    case 'w':
      opt.lanes = strcmp(optarg, "lanes") == 0;
      opt.loop = strcmp(optarg, "loop") == 0;
      if (!opt.lanes && !opt.loop) {
        usage(stderr);
        return 2;
      }
      break;
    case 'd': opt.quick = false; break;
    case 'q': opt.deadline = false; break;
    case 'c': opt.conns = (unsigned) atoi(optarg); break;
    case 'k': opt.coros = (unsigned) atoi(optarg); break;
    case 'n': opt.queries = (unsigned) atoi(optarg); break;
    case 't': opt.deadline_ms = (uint64_t) atoll(optarg); break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (opt.conns == 0 || opt.coros == 0 || opt.queries == 0 ||
      opt.deadline_ms == 0 || optind != argc) {
    usage(stderr);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);     /* a server gone: an error, not a death */

  mm_loop_t *loop;
  mm_coro_t *h;
  int r = mm_loop_new(&loop, NULL);
  if (r == 0 && (r = mm_spawn(loop, demo, &opt, &h)) == 0 &&
      (r = mm_loop_run(loop)) == 0)
    r = mm_join(h);
  int f = loop != NULL ? mm_loop_free(loop) : 0;
  if (r == 0)
    r = f;
  if (r != 0)
    fprintf(stderr, "pg-bridge: failed (%s)\n", mm_strerror(r));
  else
    printf("pg-bridge: all good\n");
  return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif /* PG_BRIDGE_NO_MAIN */
