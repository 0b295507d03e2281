/* run-sync: coroutines hand blocking calls to threads (mm_run_sync_ex).
 *
 * run_query stands in for a legacy driver's blocking query: it sleeps in
 * small steps and stops early when asked.  Three coroutines run one query
 * each on the loop's worker pool, at once, while the loop goes on serving
 * the others.  Each call has a 100 ms deadline of its own: the slow query
 * is still running then, so its on_cancel asks it to stop (as
 * sqlite3_interrupt or PQcancel would) and the call returns -ETIMEDOUT.
 */
#include <mixmode.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
  int         ms;           /* how long the query takes */
  atomic_bool interrupted;  /* set by on_cancel, read by the query */
  int         result;       /* what mm_run_sync_ex returned */
} query_t;

/* Blocking, on a worker thread. */
static int run_query(void *arg) {
  query_t *q = arg;
  for (int t = 0; t < q->ms; t += 5) {
    /* mm_cancelled() turns true before on_cancel runs: checking both
     * also stops a query asked before it reached its first step. */
    if (atomic_load(&q->interrupted) || mm_cancelled())
      return -EINTR;
    struct timespec step = { 0, 5 * 1000000 };
    nanosleep(&step, NULL);
  }
  return q->ms;
}

/* On the loop's thread, while run_query runs: asks it to stop. */
static void interrupt_query(void *arg) {
  query_t *q = arg;
  atomic_store(&q->interrupted, true);
}

static int client(void *arg) {          /* a coroutine per query */
  query_t *q = arg;
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.timeout_ms = 100;
  o.on_cancel = interrupt_query;
  q->result = mm_run_sync_ex(run_query, q, &o);   /* suspends only us */
  return 0;
}

int main(void) {
  query_t q[3] = { { .ms = 20 }, { .ms = 40 }, { .ms = 5000 } };
  mm_coro_t *c[3];
  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  for (int i = 0; i < 3 && err >= 0; i++)
    err = mm_spawn(loop, client, &q[i], &c[i]);
  if (err < 0) {
    fprintf(stderr, "run-sync: %s\n", mm_strerror(err));
    return EXIT_FAILURE;
  }
  mm_loop_run(loop);           /* returns when no coroutine is left */
  for (int i = 0; i < 3; i++) {
    mm_join(c[i]);
    printf("query of %d ms: %d%s%s\n", q[i].ms, q[i].result,
           q[i].result < 0 ? ", " : "",
           q[i].result < 0 ? mm_strerror(q[i].result) : "");
  }
  bool ok = q[0].result == 20 && q[1].result == 40 &&
            q[2].result == -ETIMEDOUT;
  return mm_loop_free(loop) == 0 && ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
