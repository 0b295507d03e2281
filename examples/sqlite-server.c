/* sqlite-server: an HTTP/1.1 server in front of SQLite's ordinary blocking
 * API -- the job mixmode exists for.
 *
 *   - The network side is asynchronous: one coroutine per connection on
 *     mm_tcp, with keep-alive, all on one loop thread.
 *   - The database side is the plain blocking sqlite3_* API, run on a
 *     lane set: N threads that each open their own connection (a legacy
 *     driver's connection often has to stay on the thread that opened
 *     it) and share one queue, so a query goes to the first idle lane.
 *   - A slow query can be stopped: the call has a deadline (timeout_ms)
 *     and an on_cancel hook that calls sqlite3_interrupt() on the lane's
 *     connection, so the query stops using CPU as soon as the client's
 *     timeout passes (HTTP 504).
 *
 * At start it generates a database of 100000 items (in a temporary file,
 * or in --db PATH, kept and reused).  Endpoints:
 *
 *   GET /item?id=N                 one item as JSON (404 if none)
 *   GET /search?q=TEXT             up to 20 items whose name is LIKE %TEXT%
 *   GET /slow?timeout=MS[&n=ROWS][&yield=0]
 *                                  counts ROWS rows of a recursive CTE
 *                                  (default 100 million: tens of seconds);
 *                                  504 once MS has passed (0: no timeout);
 *                                  yield=0: never gives up the CPU
 *   GET /stats                     mm_loop_stats and the server's counters
 *
 * Options: --port N (0: any free one; the first line on stdout is always
 * "port N"), --host ADDR (127.0.0.1), --lanes N (8), --db PATH, --pool
 * (slow queries on the loop's plain worker pool, each opening its own
 * connection, instead of on the lane set: the baseline `make demo`
 * compares against).  SIGTERM or SIGINT shut it down cleanly.
 *
 * What it does not do: request bodies, chunked encoding, TLS, or noticing
 * that a client went away while its query runs (its timeout still ends
 * the query).
 */
#define _GNU_SOURCE             /* memmem */
#include <mixmode.h>
#include <sqlite3.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define ITEMS 100000

/* ---- Configuration and counters ------------------------------------------ */

static struct {
  const char *host;
  int         port;
  unsigned    lanes;
  bool        pool;
  const char *db_path;
} opt = { "127.0.0.1", 0, 8, false, NULL };

static mm_loop_t    *loop;
static mm_laneset_t *lanes;     /* the database's lanes */
static char          db_file[256];

/* The server's counters.  Only coroutines touch them, and they all run on
 * the loop's thread, so no lock is needed -- except slow_running, which
 * the lanes update while a slow query runs. */
static struct {
  uint64_t connections;         /* open now */
  uint64_t requests;
  uint64_t slow_started;
  uint64_t slow_finished;       /* counted to the end */
  uint64_t slow_timed_out;      /* answered 504 */
  uint64_t slow_interrupted;    /* stopped by sqlite3_interrupt */
  uint64_t slow_stop_ms_max;    /* longest time from on_cancel to fn's end */
  uint64_t slow_cpu_ms;         /* CPU the slow queries used, in total */
} count;
static atomic_uint slow_running;

static uint64_t now_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}


/* ---- A small output buffer ----------------------------------------------- */

typedef struct buf {
  char  *p;
  size_t cap, len;              /* len stops growing once cap is reached */
} buf_t;

static void put(buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n > 0)
    b->len += (size_t)n < b->cap - b->len ? (size_t)n : b->cap - b->len - 1;
}

/* A JSON string, quoted and escaped. */
static void put_json(buf_t *b, const char *s) {
  put(b, "\"");
  for (; s != NULL && *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      put(b, "\\%c", ch);
    else if (ch < 0x20)
      put(b, "\\u%04x", ch);
    else
      put(b, "%c", ch);
  }
  put(b, "\"");
}


/* ---- The database -------------------------------------------------------- */

/* Fills the items table, unless it is there already.  Plain blocking code,
 * run by main before there is any loop: old code stays old code. */
static int generate(const char *path) {
  static const char *words[] = {
    "amber", "birch", "cobalt", "dune", "ember", "fjord", "granite", "harbor",
    "indigo", "juniper", "kelp", "lichen", "marble", "nickel", "opal", "pine",
  };
  static const char *categories[] = {
    "tools", "garden", "kitchen", "books", "toys", "music", "sport", "office",
  };
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_open(path, &db);
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS items(id INTEGER "
                      "PRIMARY KEY, name TEXT, category TEXT, price REAL)",
                      NULL, NULL, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM items", -1, &st, NULL);
  if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
      sqlite3_column_int(st, 0) == ITEMS) {
    sqlite3_finalize(st);
    return sqlite3_close(db) == SQLITE_OK ? 0 : -EIO;   /* reuse it */
  }
  sqlite3_finalize(st);
  st = NULL;
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(db, "BEGIN; DELETE FROM items", NULL, NULL, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(db, "INSERT INTO items VALUES(?1, ?2, ?3, ?4)",
                            -1, &st, NULL);
  for (int id = 1; rc == SQLITE_OK && id <= ITEMS; id++) {
    char name[64];
    snprintf(name, sizeof name, "%s %s %d", words[id % 16],
             words[(id / 16) % 16], id);
    sqlite3_bind_int(st, 1, id);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, categories[(id / 256) % 8], -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, (double)(id * 7919 % 100000) / 100);
    rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  if (rc == SQLITE_OK)
    rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  if (rc != SQLITE_OK)
    fprintf(stderr, "sqlite-server: %s: %s\n", path, sqlite3_errmsg(db));
  sqlite3_close(db);
  return rc == SQLITE_OK ? 0 : -EIO;
}

/* What each lane keeps: its own connection and prepared statements.  Made
 * by lane_open on the lane's own thread, used only there (and by
 * sqlite3_interrupt, which SQLite allows from any thread). */
typedef struct lane_db {
  sqlite3      *db;
  sqlite3_stmt *item, *search;
} lane_db_t;

static void lane_close(void *state, void *arg) {
  (void)arg;
  lane_db_t *l = state;
  if (l == NULL)
    return;
  sqlite3_finalize(l->item);
  sqlite3_finalize(l->search);
  sqlite3_close(l->db);
  free(l);
}

static int lane_open(void **state, void *arg) {
  lane_db_t *l = calloc(1, sizeof *l);
  if (l == NULL)
    return -ENOMEM;
  int rc = sqlite3_open_v2(db_file, &l->db, SQLITE_OPEN_READONLY, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(l->db, "SELECT id, name, category, price "
                            "FROM items WHERE id = ?1", -1, &l->item, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_prepare_v2(l->db, "SELECT id, name, category, price "
                            "FROM items WHERE name LIKE '%' || ?1 || '%' "
                            "LIMIT 20", -1, &l->search, NULL);
  if (rc != SQLITE_OK) {
    fprintf(stderr, "sqlite-server: opening %s: %s\n", db_file,
            sqlite3_errmsg(l->db));
    lane_close(l, arg);
    return -EIO;
  }
  *state = l;
  return 0;
}


/* ---- Queries: blocking functions that run on a lane ---------------------- */

/* One request's query, on the calling coroutine's stack: the lane reads
 * the input and writes the JSON answer into out, which the coroutine
 * reads after mm_run_sync_ex has returned. */
typedef struct query {
  int64_t     id;               /* /item */
  const char *text;             /* /search */
  buf_t      *out;
} query_t;

static void put_row(buf_t *b, sqlite3_stmt *st) {
  put(b, "{\"id\":%lld,\"name\":", (long long)sqlite3_column_int64(st, 0));
  put_json(b, (const char *)sqlite3_column_text(st, 1));
  put(b, ",\"category\":");
  put_json(b, (const char *)sqlite3_column_text(st, 2));
  put(b, ",\"price\":%.2f}", sqlite3_column_double(st, 3));
}

static int item_query(void *arg) {
  query_t *q = arg;
  lane_db_t *l = mm_lane_state();       /* this lane's connection */
  sqlite3_bind_int64(l->item, 1, q->id);
  int rc = sqlite3_step(l->item);
  if (rc == SQLITE_ROW)
    put_row(q->out, l->item);
  sqlite3_reset(l->item);
  return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

static int search_query(void *arg) {
  query_t *q = arg;
  lane_db_t *l = mm_lane_state();
  sqlite3_bind_text(l->search, 1, q->text, -1, SQLITE_STATIC);
  put(q->out, "[");
  int rc, rows = 0;
  while ((rc = sqlite3_step(l->search)) == SQLITE_ROW) {
    if (rows++ > 0)
      put(q->out, ",");
    put_row(q->out, l->search);
  }
  put(q->out, "]");
  sqlite3_reset(l->search);
  return rc == SQLITE_DONE ? 0 : -EIO;
}

/* A slow query, and what stops it.  on_cancel (slow_interrupt) runs on the
 * loop's thread while slow_query runs on a lane, so the two share the
 * connection under mu: slow_interrupt never touches a connection that
 * slow_query has stopped using (in --pool mode it is closed right after).
 * sqlite3_interrupt stops the running statement at once, but it is lost
 * if it comes while no statement of the connection runs yet (SQLite
 * clears it when the first one starts); so the progress handler, which
 * SQLite calls every PROGRESS_STEPS steps, also asks mm_cancelled(),
 * which inside a blocking call tells that the call's deadline passed or
 * its coroutine was cancelled. */
#define PROGRESS_STEPS 1000

typedef struct slow {
  int64_t         rows;         /* in: how many rows to count */
  bool            yield;        /* in: give the CPU up now and then */
  pthread_mutex_t mu;
  sqlite3        *db;           /* protected by mu: set while the query runs */
  bool            asked;        /* protected by mu: on_cancel ran */
  uint64_t        asked_ns;     /* protected by mu: when (CLOCK_MONOTONIC) */
  uint64_t        ended_ns;     /* out: when slow_query returned */
  uint64_t        cpu_ns;       /* out: the CPU the query used */
  int64_t         counted;      /* out: the answer */
} slow_t;

static void slow_interrupt(void *arg) {          /* on the loop's thread */
  slow_t *s = arg;
  pthread_mutex_lock(&s->mu);
  s->asked = true;
  s->asked_ns = now_ns(CLOCK_MONOTONIC);
  if (s->db != NULL)
    sqlite3_interrupt(s->db);
  pthread_mutex_unlock(&s->mu);
}

/* SQLite's progress handler: non-zero stops the query (SQLITE_INTERRUPT).
 * It also gives the CPU up: on a machine with fewer CPUs than slow
 * queries, the short queries of the other lanes then wait for a yield
 * (microseconds) rather than for the end of a time slice (milliseconds);
 * make demo shows both. */
static int slow_progress(void *arg) {
  slow_t *s = arg;
  if (s->yield)
    sched_yield();
  return mm_cancelled();
}

static int slow_query(void *arg) {              /* on a lane, or a worker */
  slow_t *s = arg;
  uint64_t cpu0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
  lane_db_t *l = mm_lane_state();       /* NULL on the plain pool */
  sqlite3 *db = l != NULL ? l->db : NULL;
  if (db == NULL &&
      sqlite3_open_v2(db_file, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    sqlite3_close(db);
    return -EIO;
  }
  pthread_mutex_lock(&s->mu);
  s->db = db;
  pthread_mutex_unlock(&s->mu);

  atomic_fetch_add_explicit(&slow_running, 1, memory_order_relaxed);
  sqlite3_progress_handler(db, PROGRESS_STEPS, slow_progress, s);
  sqlite3_stmt *st;
  int rc = sqlite3_prepare_v2(db, "WITH RECURSIVE c(x) AS (SELECT 1 "
                              "UNION ALL SELECT x + 1 FROM c WHERE x < ?1) "
                              "SELECT count(*) FROM c", -1, &st, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, s->rows);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
      s->counted = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  sqlite3_progress_handler(db, 0, NULL, NULL);  /* the lane's next query */
  atomic_fetch_sub_explicit(&slow_running, 1, memory_order_relaxed);

  pthread_mutex_lock(&s->mu);
  s->db = NULL;
  pthread_mutex_unlock(&s->mu);
  if (l == NULL)
    sqlite3_close(db);
  s->cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
  s->ended_ns = now_ns(CLOCK_MONOTONIC);
  /* SQLite's "interrupted" becomes -EINTR: -ETIMEDOUT and -ECANCELED are
   * the bridge's own answers, never fn's (API.md, "The bridges"). */
  return rc == SQLITE_ROW ? 0 : rc == SQLITE_INTERRUPT ? -EINTR : -EIO;
}


/* ---- HTTP ---------------------------------------------------------------- */

typedef struct conn {
  mm_tcp_t *tcp;
  size_t    len;                /* bytes of in not yet handled */
  char      in[8192];
} conn_t;

typedef struct request {
  char path[1024];              /* without the query string */
  char query[1024];             /* after '?', or "" */
  int  minor;                   /* HTTP/1.minor */
  bool keep_alive;
  bool bad;                     /* not a GET we can answer */
} request_t;

/* Reads the next request's head.  1: got one; 0: the client closed or
 * failed (or we were cancelled); the connection is then done. */
static int read_request(conn_t *c, request_t *rq) {
  char *end;
  while ((end = memmem(c->in, c->len, "\r\n\r\n", 4)) == NULL) {
    if (c->len == sizeof c->in)
      return 0;                         /* a head this long: give up */
    ssize_t n = mm_tcp_read(c->tcp, c->in + c->len, sizeof c->in - c->len);
    if (n <= 0)
      return 0;
    c->len += (size_t)n;
  }
  *end = '\0';
  char method[8], target[1024];
  rq->minor = 1;
  rq->bad = sscanf(c->in, "%7s %1023s HTTP/1.%d", method, target,
                   &rq->minor) != 3 || strcmp(method, "GET") != 0;
  /* HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes
   * unless told to keep it (ab -k). */
  const char *conn_hdr = strcasestr(c->in, "\r\nConnection:");
  rq->keep_alive = rq->minor >= 1;
  if (conn_hdr != NULL) {
    conn_hdr += strlen("\r\nConnection:");
    conn_hdr += strspn(conn_hdr, " ");
    if (strncasecmp(conn_hdr, "close", 5) == 0)
      rq->keep_alive = false;
    else if (strncasecmp(conn_hdr, "keep-alive", 10) == 0)
      rq->keep_alive = true;
  }
  if (strcasestr(c->in, "\r\nContent-Length:") != NULL ||
      strcasestr(c->in, "\r\nTransfer-Encoding:") != NULL)
    rq->bad = true;                     /* no bodies here */
  if (rq->bad)
    rq->keep_alive = false;
  char *qs = rq->bad ? NULL : strchr(target, '?');
  if (qs != NULL)
    *qs++ = '\0';
  snprintf(rq->path, sizeof rq->path, "%s", rq->bad ? "" : target);
  snprintf(rq->query, sizeof rq->query, "%s", qs != NULL ? qs : "");
  size_t used = (size_t)(end - c->in) + 4;      /* pipelined bytes stay */
  memmove(c->in, c->in + used, c->len - used);
  c->len -= used;
  return 1;
}

static int hex(char ch) {
  return ch >= '0' && ch <= '9' ? ch - '0'
       : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
       : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* The URL-decoded value of name in the query string q, or NULL. */
static const char *param(const char *q, const char *name, char *out,
                         size_t cap) {
  size_t nlen = strlen(name);
  for (const char *p = q; *p != '\0'; p += strcspn(p, "&"), p += *p == '&') {
    if (strncmp(p, name, nlen) != 0 || p[nlen] != '=')
      continue;
    size_t n = 0;
    for (p += nlen + 1; *p != '\0' && *p != '&' && n + 1 < cap; p++) {
      if (*p == '%' && hex(p[1]) >= 0 && hex(p[2]) >= 0) {
        out[n++] = (char)(hex(p[1]) * 16 + hex(p[2]));
        p += 2;
      } else {
        out[n++] = *p == '+' ? ' ' : *p;
      }
    }
    out[n] = '\0';
    return out;
  }
  return NULL;
}

/* Room left in front of a response's body for its head: the two go out
 * in one write (two small writes would meet Nagle and delayed ACKs). */
#define HEAD_ROOM 160

static int respond(conn_t *c, const request_t *rq, int code, buf_t *body) {
  const char *reason = code == 200 ? "OK" : code == 400 ? "Bad Request"
                     : code == 404 ? "Not Found" : code == 503
                     ? "Service Unavailable" : code == 504
                     ? "Gateway Timeout" : "Internal Server Error";
  char head[HEAD_ROOM];
  int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                   "%s\r\n", code, reason, body->len,
                   !rq->keep_alive ? "Connection: close\r\n"
                   : rq->minor == 0 ? "Connection: keep-alive\r\n" : "");
  char *start = body->p - n;            /* body->p is HEAD_ROOM into a buffer */
  memcpy(start, head, (size_t)n);
  return mm_tcp_write(c->tcp, start, (size_t)n + body->len);
}

static int stats_json(buf_t *b) {
  mm_stats_t st;
  int r = mm_loop_stats(loop, &st);
  if (r < 0)
    return r;
  put(b, "{\"requests\":%llu,\"connections\":%llu,\"lanes\":%u,"
      "\"slow_on\":\"%s\",\"slow_started\":%llu,\"slow_running\":%u,"
      "\"slow_finished\":%llu,\"slow_timed_out\":%llu,"
      "\"slow_interrupted\":%llu,\"slow_stop_ms_max\":%llu,"
      "\"slow_cpu_ms\":%llu,", (unsigned long long)count.requests,
      (unsigned long long)count.connections, opt.lanes,
      opt.pool ? "pool" : "laneset", (unsigned long long)count.slow_started,
      atomic_load_explicit(&slow_running, memory_order_relaxed),
      (unsigned long long)count.slow_finished,
      (unsigned long long)count.slow_timed_out,
      (unsigned long long)count.slow_interrupted,
      (unsigned long long)count.slow_stop_ms_max,
      (unsigned long long)count.slow_cpu_ms);
  put(b, "\"loop\":{\"coros_live\":%llu,\"coros_spawned\":%llu,"
      "\"sync_calls\":%llu,\"sync_queued\":%llu,\"sync_running\":%llu,"
      "\"async_calls\":%llu,\"lane_calls\":%llu,\"lane_queued\":%llu,"
      "\"pool_threads\":%u,\"pool_idle\":%u,\"slow_steps\":%llu}}",
      (unsigned long long)st.coros_live, (unsigned long long)st.coros_spawned,
      (unsigned long long)st.sync_calls, (unsigned long long)st.sync_queued,
      (unsigned long long)st.sync_running, (unsigned long long)st.async_calls,
      (unsigned long long)st.lane_calls, (unsigned long long)st.lane_queued,
      st.pool_threads, st.pool_idle, (unsigned long long)st.slow_steps);
  return 0;
}

/* /slow: the query runs with its own deadline and on_cancel.  The call's
 * options say everything: where it runs, how long it may take, and how to
 * stop it. */
static int slow(const request_t *rq, buf_t *body) {
  char v[32];
  slow_t s = { .rows = 100000000, .yield = true };
  if (param(rq->query, "n", v, sizeof v) != NULL)
    s.rows = atoll(v);
  if (param(rq->query, "yield", v, sizeof v) != NULL)
    s.yield = atoi(v) != 0;
  uint64_t timeout = param(rq->query, "timeout", v, sizeof v) != NULL
                     ? strtoull(v, NULL, 10) : 0;
  pthread_mutex_init(&s.mu, NULL);
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  if (!opt.pool) {
    o.affinity = MM_AFFINITY_LANESET;
    o.laneset = lanes;
  }
  o.timeout_ms = timeout;               /* 0: none */
  o.on_cancel = slow_interrupt;         /* deadline or cancel: interrupt */
  /* No cleanup and no abandon_on_cancel: the call returns only once
   * slow_query has returned, so s can live on this stack. */
  count.slow_started++;
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  int r = mm_run_sync_ex(slow_query, &s, &o);
  uint64_t ms = (now_ns(CLOCK_MONOTONIC) - t0) / 1000000;
  pthread_mutex_destroy(&s.mu);
  count.slow_cpu_ms += s.cpu_ns / 1000000;
  if (s.asked && s.ended_ns != 0) {     /* it ran and was asked to stop */
    uint64_t stop_ms = (s.ended_ns - s.asked_ns) / 1000000;
    count.slow_interrupted++;
    if (stop_ms > count.slow_stop_ms_max)
      count.slow_stop_ms_max = stop_ms;
  }
  if (r == 0) {
    count.slow_finished++;
    put(body, "{\"count\":%lld,\"ms\":%llu}", (long long)s.counted,
        (unsigned long long)ms);
    return 200;
  }
  if (r == -ETIMEDOUT) {                /* queued or running past timeout */
    count.slow_timed_out++;
    put(body, "{\"error\":\"timed out\",\"timeout_ms\":%llu,\"ms\":%llu}",
        (unsigned long long)timeout, (unsigned long long)ms);
    return 504;
  }
  put(body, "{\"error\":\"%s\"}", mm_strerror(r));
  return r == -EINTR || r == -ECANCELED || r == -ESHUTDOWN ? 503 : 500;
}

/* Answers one request.  Returns the status code; body gets the JSON. */
static int route(const request_t *rq, buf_t *body) {
  char v[256];
  query_t q = { .out = body };
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_LANESET;
  o.laneset = lanes;
  int r;
  if (rq->bad) {
    put(body, "{\"error\":\"only GET without a body\"}");
    return 400;
  }
  if (strcmp(rq->path, "/item") == 0) {
    if (param(rq->query, "id", v, sizeof v) == NULL) {
      put(body, "{\"error\":\"id missing\"}");
      return 400;
    }
    q.id = atoll(v);
    r = mm_run_sync_ex(item_query, &q, &o);    /* suspends this coroutine */
  } else if (strcmp(rq->path, "/search") == 0) {
    q.text = param(rq->query, "q", v, sizeof v) != NULL ? v : "";
    r = mm_run_sync_ex(search_query, &q, &o);
  } else if (strcmp(rq->path, "/slow") == 0) {
    return slow(rq, body);
  } else if (strcmp(rq->path, "/stats") == 0) {
    r = stats_json(body);
  } else {
    r = -ENOENT;
  }
  if (r == 0)
    return 200;
  body->len = 0;
  put(body, "{\"error\":\"%s\"}", r == -ENOENT ? "not found" : mm_strerror(r));
  return r == -ENOENT ? 404 : r == -ECANCELED || r == -ESHUTDOWN ? 503 : 500;
}

/* One connection's coroutine: requests one after another (keep-alive). */
static int serve(void *arg) {
  conn_t *c = arg;
  count.connections++;
  request_t rq;
  while (read_request(c, &rq) == 1) {
    count.requests++;
    char out[HEAD_ROOM + 16384];        /* on this coroutine's stack */
    buf_t body = { out + HEAD_ROOM, sizeof out - HEAD_ROOM, 0 };
    int code = route(&rq, &body);
    if (respond(c, &rq, code, &body) < 0 || !rq.keep_alive)
      break;
  }
  count.connections--;
  mm_tcp_close(c->tcp);
  free(c);
  return 0;     /* detached: a failure here would only be logged */
}

/* The listener's coroutine: a coroutine per connection, until the loop is
 * stopped (then the accept returns -ECANCELED). */
static int listener(void *arg) {
  (void)arg;
  mm_tcp_t *srv;
  int r = mm_tcp_listen(&srv, opt.host, opt.port, 0);
  if (r < 0) {
    fprintf(stderr, "sqlite-server: listen on %s:%d: %s\n", opt.host,
            opt.port, mm_strerror(r));
    return r;
  }
  printf("port %d\n", mm_tcp_port(srv));
  fflush(stdout);
  for (;;) {
    mm_tcp_t *tcp;
    r = mm_tcp_accept(srv, &tcp);
    if (r == -ECANCELED)
      break;
    if (r < 0)
      continue;                 /* that connection failed, not the server */
    mm_tcp_nodelay(tcp, true);  /* answers go out at once */
    conn_t *c = malloc(sizeof *c);
    if (c != NULL) {
      c->tcp = tcp;
      c->len = 0;
    }
    if (c == NULL || mm_spawn(loop, serve, c, NULL) < 0) {  /* detached */
      free(c);
      mm_tcp_close(tcp);
    }
  }
  mm_tcp_close(srv);
  return 0;
}


/* ---- Signals, start and shutdown ----------------------------------------- */

/* SIGTERM and SIGINT are blocked in every thread and taken here, by a
 * plain thread, which asks the loop to stop: the loop cancels every
 * coroutine (a slow query's on_cancel interrupts it), they finish, and
 * mm_loop_run returns in main. */
static void *signal_thread(void *arg) {
  sigset_t *set = arg;
  int sig;
  sigwait(set, &sig);
  mm_loop_stop(loop);
  return NULL;
}

static int usage(void) {
  fprintf(stderr, "usage: sqlite-server [--port N] [--host ADDR] "
          "[--lanes N] [--pool] [--db PATH]\n");
  return 2;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    bool more = i + 1 < argc;
    if (strcmp(argv[i], "--port") == 0 && more)
      opt.port = atoi(argv[++i]);
    else if (strcmp(argv[i], "--host") == 0 && more)
      opt.host = argv[++i];
    else if (strcmp(argv[i], "--lanes") == 0 && more)
      opt.lanes = (unsigned)atoi(argv[++i]);
    else if (strcmp(argv[i], "--db") == 0 && more)
      opt.db_path = argv[++i];
    else if (strcmp(argv[i], "--pool") == 0)
      opt.pool = true;
    else
      return usage();
  }
  if (opt.lanes == 0)
    return usage();

  /* The database: a temporary file unless --db names one. */
  if (opt.db_path != NULL) {
    snprintf(db_file, sizeof db_file, "%s", opt.db_path);
  } else {
    const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    snprintf(db_file, sizeof db_file, "%s/sqlite-server-XXXXXX", tmp);
    int fd = mkstemp(db_file);
    if (fd < 0) {
      perror("sqlite-server: mkstemp");
      return 1;
    }
    close(fd);
  }
  int status = 1;
  if (generate(db_file) < 0)
    goto out_db;

  /* A client that left before its answer must cost a failed write, not
   * the server: mm_tcp_write writes with write(2), which raises SIGPIPE
   * on a connection the peer has reset, and that kills by default. */
  signal(SIGPIPE, SIG_IGN);

  /* Before any thread starts, so that every thread inherits the mask. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  int r = mm_loop_new(&loop, NULL);
  if (r < 0) {
    fprintf(stderr, "sqlite-server: %s\n", mm_strerror(r));
    goto out_db;
  }
  /* The lanes: each opens its own connection on its own thread. */
  mm_laneset_options_t lo;
  mm_laneset_options_init(&lo);
  lo.name = "sqlite";
  lo.count = opt.lanes;
  lo.open = lane_open;
  lo.close = lane_close;
  r = mm_laneset_new(loop, &lo, &lanes);
  if (r < 0) {
    fprintf(stderr, "sqlite-server: lanes: %s\n", mm_strerror(r));
    goto out_loop;
  }
  pthread_t sig_thread;
  if (pthread_create(&sig_thread, NULL, signal_thread, &set) != 0)
    goto out_lanes;

  mm_coro_t *listening;
  r = mm_spawn(loop, listener, NULL, &listening);
  if (r == 0) {
    r = mm_loop_run(loop);      /* until SIGTERM, or the listener fails */
    int joined = mm_join(listening);    /* it has ended: no wait */
    r = r < 0 ? r : joined;
  }
  status = r == 0 || r == -ECANCELED ? 0 : 1;

  pthread_kill(sig_thread, SIGTERM);    /* if no signal came: let it end */
  pthread_join(sig_thread, NULL);
out_lanes:
  mm_laneset_free(lanes);       /* each lane closes its own connection */
out_loop:
  mm_loop_free(loop);
out_db:
  if (opt.db_path == NULL)
    unlink(db_file);
  return status;
}
