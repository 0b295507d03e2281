/* pg-bridge: PostgreSQL queries with a deadline, from coroutines, done two
 * ways (examples/pg-bridge.c explains both).  tests/test-pg-bridge.c links
 * the same code.
 *
 * Every function here is called from a coroutine.  They return 0, or:
 *   -ETIMEDOUT  the query's deadline passed: the query was stopped on the
 *               server and the connection is ready for the next one;
 *   -EINTR      the server cancelled the query (SQLSTATE 57014) for a
 *               reason of its own (someone else's cancel, a
 *               statement_timeout), or the coroutine was cancelled while
 *               the query ran (way a: the coroutine's next wait then
 *               returns -ECANCELED);
 *   -EIO        the query or the connection failed: q->error says why;
 *   -ECANCELED  the coroutine was cancelled before or during the query;
 *   another negative errno value from mixmode (mm_strerror explains it).
 */
#ifndef PG_BRIDGE_H
#define PG_BRIDGE_H

#include <mixmode.h>
#include <libpq-fe.h>

/* One query: a statement with at most one text parameter, and the first
 * column of the first row it returned. */
typedef struct pg_query {
  const char *sql;          /* IN: one statement; $1 is param */
  const char *param;        /* IN: $1's text, or NULL for no parameter */
  uint64_t    timeout_ms;   /* IN: the deadline, from the call; 0 = none */
  char        value[64];    /* OUT: first column of the first row, "" if
                               none (or NULL) */
  char        error[256];   /* OUT: the server's message when not 0 */
} pg_query_t;

/* The connection string given to libpq; empty fields come from the
 * environment (PGHOST, PGPORT, PGUSER, PGDATABASE, ...), as with psql.
 * Default: "application_name=pg-bridge". */
extern const char *pg_conninfo;

/* ---- (a) blocking libpq on a lane set ----------------------------------- */

/* Starts count lanes, each opening its own connection on its own thread.
 * Colour-blind.  -EIO if a connection could not be made (printed). */
int pg_lanes_new(mm_loop_t *loop, unsigned count, mm_laneset_t **set);
int pg_lanes_free(mm_laneset_t *set);

/* Runs q on the first idle lane with PQexecParams.  From a coroutine: a
 * plain thread may call it too (it then blocks), but mixmode does not
 * apply timeout_ms to a lane call from a plain thread. */
int pg_query_lanes(mm_laneset_t *set, pg_query_t *q);

/* ---- (b) non-blocking libpq on the loop --------------------------------- */

typedef struct pg_async {
  PGconn   *conn;           /* non-blocking mode */
  PGcancel *cancel;         /* made once, at connect */
  bool      busy;           /* a call is under way (loop thread only) */
  bool      stopping;       /* the query left under way was cancelled */
} pg_async_t;

/* Connects without blocking the loop (PQconnectStart, PQconnectPoll),
 * except to resolve a host name. */
int pg_async_connect(pg_async_t *c, uint64_t timeout_ms);
void pg_async_close(pg_async_t *c);

/* Runs q on c; one query at a time per connection (-EBUSY otherwise).
 * A coroutine cancelled during the query gets -ECANCELED at once: the
 * query is cancelled on the server, and the next call on c reads what is
 * left of it before it sends its own. */
int pg_query_async(pg_async_t *c, pg_query_t *q);

#endif /* PG_BRIDGE_H */
