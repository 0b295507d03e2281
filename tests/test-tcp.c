/* TCP from coroutines: echo between coroutines, many clients, end of
 * stream, refused connections, names (every address tried in order, an
 * unknown name, a cancel while resolving), options, cancel and close of
 * waiting calls, a listener out of file descriptors, and calls from the
 * wrong place.  Everything on 127.0.0.x, port 0.
 *
 * Names: this program defines getaddrinfo, which libuv's lookups reach
 * first (an executable's symbols come before libc's), so that names under
 * .mm-test resolve the same on every machine; others go to libc's.
 */
#define _GNU_SOURCE 1       /* RTLD_NEXT */
#include "helpers.h"

#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* ---- A resolver of our own for *.mm-test ---------------------------------- */

static mm_test_latch_t slow_started, slow_gate;
static atomic_int lookups;

/* One node of a list that glibc's freeaddrinfo frees: the address is in
 * the same block. */
static struct addrinfo *fake_node(const char *ip, const char *service) {
  struct node {
    struct addrinfo ai;
    struct sockaddr_in sin;
  } *n = calloc(1, sizeof *n);
  if (n == NULL)
    return NULL;
  n->sin.sin_family = AF_INET;
  n->sin.sin_port = htons((uint16_t) atoi(service != NULL ? service : "0"));
  inet_pton(AF_INET, ip, &n->sin.sin_addr);
  n->ai.ai_family = AF_INET;
  n->ai.ai_socktype = SOCK_STREAM;
  n->ai.ai_protocol = IPPROTO_TCP;
  n->ai.ai_addrlen = sizeof n->sin;
  n->ai.ai_addr = (struct sockaddr *) &n->sin;
  return &n->ai;
}

int getaddrinfo(const char *node, const char *service,
                const struct addrinfo *hints, struct addrinfo **res) {
  if (node != NULL && strstr(node, ".mm-test") != NULL) {
    atomic_fetch_add(&lookups, 1);
    if (strcmp(node, "two.mm-test") == 0) {
      /* Nobody listens on the first (127.0.0.2): refused, then the
       * second (127.0.0.1) answers. */
      struct addrinfo *a = fake_node("127.0.0.2", service);
      struct addrinfo *b = fake_node("127.0.0.1", service);
      if (a == NULL || b == NULL)
        return EAI_MEMORY;
      a->ai_next = b;
      *res = a;
      return 0;
    }
    if (strcmp(node, "slow.mm-test") == 0) {
      mm_test_latch_add(&slow_started, 1);
      mm_test_latch_wait(&slow_gate, 1);
    }
    return EAI_NONAME;
  }
  int (*real)(const char *, const char *, const struct addrinfo *,
              struct addrinfo **) =
      (int (*)(const char *, const char *, const struct addrinfo *,
               struct addrinfo **)) dlsym(RTLD_NEXT, "getaddrinfo");
  return real(node, service, hints, res);
}

/* ---- An echo server ----------------------------------------------------- */

typedef struct {
  mm_loop_t *loop;
  mm_tcp_t *srv;
  int port;
  int conns;                  /* connections to serve before stopping */
  int served;
  int errors;
} server_t;

static int echo_conn(void *arg) {
  mm_tcp_t *c = arg;
  char buf[4096];
  ssize_t n;
  int r = 0;
  while ((n = mm_tcp_read(c, buf, sizeof buf)) > 0)
    if ((r = mm_tcp_write(c, buf, (size_t) n)) != 0)
      break;
  mm_tcp_close(c);
  return n < 0 ? (int) n : r;
}

static int echo_server(void *arg) {
  server_t *s = arg;
  mm_coro_t *h[64];
  int n = 0;
  while (s->served < s->conns && n < 64) {
    mm_tcp_t *c;
    int r = mm_tcp_accept(s->srv, &c);
    if (r != 0)
      return r;
    s->served++;
    if ((r = mm_spawn(s->loop, echo_conn, c, &h[n])) != 0)
      return r;
    n++;
  }
  for (int i = 0; i < n; i++)
    if (mm_join(h[i]) != 0)
      s->errors++;
  return mm_tcp_close(s->srv);
}

/* Listens (in a coroutine: TCP handles are made there). */
static int listen_here(void *arg) {
  server_t *s = arg;
  int r = mm_tcp_listen(&s->srv, "127.0.0.1", 0, 0);
  if (r != 0)
    return r;
  s->port = mm_tcp_port(s->srv);
  return s->port > 0 ? 0 : -1;
}

typedef struct {
  server_t *s;
  size_t len;
  int result;
} client_t;

static int echo_client(void *arg) {
  client_t *c = arg;
  mm_tcp_t *t;
  int r = mm_tcp_connect(&t, "127.0.0.1", c->s->port);
  if (r != 0)
    return c->result = r;
  unsigned char *out = malloc(c->len), *in = malloc(c->len);
  for (size_t i = 0; i < c->len; i++)
    out[i] = (unsigned char) (i * 7 + c->len);
  r = mm_tcp_write(t, out, c->len);
  size_t got = 0;
  while (r == 0 && got < c->len) {
    ssize_t n = mm_tcp_read(t, in + got, c->len - got);
    if (n <= 0)
      r = n < 0 ? (int) n : -EPROTO;   /* early end of stream */
    else
      got += (size_t) n;
  }
  if (r == 0 && memcmp(in, out, c->len) != 0)
    r = -EPROTO;
  free(out);
  free(in);
  mm_tcp_close(t);
  return c->result = r;
}

static void run_echo(int clients, size_t len) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  server_t s = { .loop = loop, .conns = clients };
  mm_test_run_one(loop, listen_here, &s);
  client_t c[16];
  mm_coro_t *ch[16], *sh;
  assert_mm_ok(mm_spawn(loop, echo_server, &s, &sh));
  for (int i = 0; i < clients; i++) {
    c[i] = (client_t) { .s = &s, .len = len + (size_t) i * 1000 };
    assert_mm_ok(mm_spawn(loop, echo_client, &c[i], &ch[i]));
  }
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(sh));
  for (int i = 0; i < clients; i++) {
    assert_mm_ok(mm_join(ch[i]));
    assert_mm_ok(c[i].result);
  }
  assert_int_equal(s.served, clients);
  assert_int_equal(s.errors, 0);
  assert_mm_ok(mm_loop_free(loop));
}

static void test_tcp_echo_between_two_coroutines(void **state) {
  run_echo(1, 300 * 1000);     /* larger than the socket buffers */
}

static void test_tcp_echo_with_many_clients_at_once(void **state) {
  run_echo(16, 20 * 1000);
}


/* ---- End of stream, refusal, names ------------------------------------- */

typedef struct {
  ssize_t read_at_end;
  ssize_t read_again;
  int refused;
  int named;
} misc_t;

static int end_of_stream(void *arg) {
  misc_t *m = arg;
  mm_tcp_t *srv, *t, *c;
  int r = mm_tcp_listen(&srv, "127.0.0.1", 0, 0);
  if (r != 0)
    return r;
  int port = mm_tcp_port(srv);
  /* A name, resolved by libc's resolver. */
  if ((r = mm_tcp_connect(&t, "localhost", port)) != 0)
    return r;
  if ((r = mm_tcp_accept(srv, &c)) != 0)
    return r;
  m->named = 1;
  mm_tcp_close(c);                       /* the server side ends it */
  char buf[16];
  m->read_at_end = mm_tcp_read(t, buf, sizeof buf);
  m->read_again = mm_tcp_read(t, buf, sizeof buf);
  mm_tcp_close(t);
  mm_tcp_close(srv);
  /* Nobody listens there any more. */
  mm_tcp_t *none = (mm_tcp_t *) &none;
  m->refused = mm_tcp_connect(&none, "127.0.0.1", port);
  return none == NULL ? 0 : -1;
}

static void test_tcp_end_of_stream_refusal_and_names(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  misc_t m;
  memset(&m, 0, sizeof m);
  mm_test_run_one(loop, end_of_stream, &m);
  assert_true(m.named);
  assert_int_equal(m.read_at_end, 0);
  assert_int_equal(m.read_again, 0);
  assert_mm_err(m.refused, -ECONNREFUSED);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Names ----------------------------------------------------------------- */

typedef struct {
  int two, nowhere;
  int nodelay, nodelay_srv, keepalive, keepalive_0, keepalive_off;
} names_t;

static int resolve_names(void *arg) {
  names_t *n = arg;
  mm_tcp_t *srv, *t, *c;
  int r = mm_tcp_listen(&srv, "127.0.0.1", 0, 0);
  if (r != 0)
    return r;
  int port = mm_tcp_port(srv);
  n->two = mm_tcp_connect(&t, "two.mm-test", port);
  if (n->two == 0) {
    if ((r = mm_tcp_accept(srv, &c)) != 0)
      return r;
    n->nodelay = mm_tcp_nodelay(t, true);
    n->keepalive = mm_tcp_keepalive(t, true, 30);
    n->keepalive_0 = mm_tcp_keepalive(t, true, 0);
    n->keepalive_off = mm_tcp_keepalive(t, false, 0);
    mm_tcp_close(c);
    mm_tcp_close(t);
  }
  n->nodelay_srv = mm_tcp_nodelay(srv, true);
  mm_tcp_t *none = (mm_tcp_t *) &none;
  n->nowhere = mm_tcp_connect(&none, "nowhere.mm-test", port);
  mm_tcp_close(srv);
  return none == NULL ? 0 : -1;
}

static void test_tcp_names_try_every_address_and_unknown_ones_say_so(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  names_t n;
  memset(&n, 0, sizeof n);
  atomic_store(&lookups, 0);
  mm_test_run_one(loop, resolve_names, &n);
  assert_int_equal(atomic_load(&lookups), 2);   /* ours were asked */
  assert_mm_ok(n.two);                 /* the second address answered */
  assert_int_equal(n.nowhere, UV_EAI_NONAME);
  assert_non_null(strstr(mm_strerror(n.nowhere), "not known"));
  assert_mm_ok(n.nodelay);
  assert_mm_ok(n.keepalive);
  assert_mm_err(n.keepalive_0, -EINVAL);
  assert_mm_ok(n.keepalive_off);
  assert_mm_err(n.nodelay_srv, -EINVAL);
  assert_mm_err(mm_tcp_nodelay(NULL, true), -EINVAL);
  assert_mm_err(mm_tcp_keepalive(NULL, true, 1), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

/* A cancel while the lookup runs: the call waits for libuv's answer (it
 * cannot be taken back once running) and returns -ECANCELED. */
typedef struct {
  mm_coro_t *connector;
  int result;
} slow_t;

static int connect_slow(void *arg) {
  slow_t *s = arg;
  mm_tcp_t *t = (mm_tcp_t *) &t;
  s->result = mm_tcp_connect(&t, "slow.mm-test", 1);
  return t == NULL ? 0 : -1;
}

static int wait_slow_started(void *arg) {
  mm_test_latch_wait(&slow_started, 1);
  return 0;
}

static int cancel_then_release(void *arg) {
  slow_t *s = arg;
  assert_mm_ok(mm_run_sync(wait_slow_started, NULL));   /* a worker waits */
  assert_mm_ok(mm_cancel(s->connector));
  mm_test_latch_add(&slow_gate, 1);
  return 0;
}

static void test_tcp_cancel_while_resolving_returns_ecanceled(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_test_latch_init(&slow_started);
  mm_test_latch_init(&slow_gate);
  slow_t s = { 0 };
  mm_coro_t *k;
  assert_mm_ok(mm_spawn(loop, connect_slow, &s, &s.connector));
  assert_mm_ok(mm_spawn(loop, cancel_then_release, &s, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(s.connector));
  assert_mm_ok(mm_join(k));
  assert_mm_err(s.result, -ECANCELED);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&slow_started);
  mm_test_latch_destroy(&slow_gate);
}

/* ---- Reading stays on, with back-pressure ---------------------------------- */

/* A writer sends 1 MiB at once while the reader takes it in small reads
 * with yields between (data comes while nobody reads: it waits in the
 * connection's buffer, reading stops, then starts again): every byte
 * arrives once, in order. */
#define BULK (1 << 20)

typedef struct {
  mm_tcp_t *srv, *conn;
  unsigned char *out;
  size_t got;
  int bad;
} bulk_t;

static int bulk_listen(void *arg) {
  bulk_t *b = arg;
  return mm_tcp_listen(&b->srv, "127.0.0.1", 0, 0);
}

static int bulk_writer(void *arg) {
  bulk_t *b = arg;
  mm_tcp_t *t;
  int r = mm_tcp_connect(&t, "127.0.0.1", mm_tcp_port(b->srv));
  if (r != 0)
    return r;
  r = mm_tcp_write(t, b->out, BULK);
  mm_tcp_close(t);
  return r;
}

static int bulk_reader(void *arg) {
  bulk_t *b = arg;
  int r = mm_tcp_accept(b->srv, &b->conn);
  if (r != 0)
    return r;
  unsigned char buf[1000];
  ssize_t n;
  unsigned i = 0;
  while ((n = mm_tcp_read(b->conn, buf, (i++ % 7) * 100 + 100)) > 0) {
    if (memcmp(buf, b->out + b->got, (size_t) n) != 0)
      b->bad++;
    b->got += (size_t) n;
    if (i % 3 == 0 && (r = mm_yield()) != 0)
      return r;
  }
  mm_tcp_close(b->conn);
  mm_tcp_close(b->srv);
  return (int) n;
}

static void test_tcp_bulk_read_in_small_pieces_loses_nothing(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  bulk_t b;
  memset(&b, 0, sizeof b);
  b.out = malloc(BULK);
  assert_non_null(b.out);
  for (size_t i = 0; i < BULK; i++)
    b.out[i] = (unsigned char) (i * 7 + i / 251);
  mm_coro_t *w, *r;
  assert_mm_ok(mm_spawn(loop, bulk_listen, &b, &r));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(r));
  assert_mm_ok(mm_spawn(loop, bulk_reader, &b, &r));
  assert_mm_ok(mm_spawn(loop, bulk_writer, &b, &w));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(w));
  assert_mm_ok(mm_join(r));
  assert_int_equal(b.got, BULK);
  assert_int_equal(b.bad, 0);
  free(b.out);
  assert_mm_ok(mm_loop_free(loop));
}

/* ---- Cancel and close of waiting calls --------------------------------- */

typedef struct {
  mm_tcp_t *srv, *client, *conn;
  mm_coro_t *waiter;
  int accept_result;
  ssize_t read_result;
  ssize_t read_after;
  int closer_result;
} waits_t;

static int wait_in_accept(void *arg) {
  waits_t *w = arg;
  mm_tcp_t *c;
  w->accept_result = mm_tcp_accept(w->srv, &c);
  return 0;
}

static int wait_in_read(void *arg) {
  waits_t *w = arg;
  char buf[8];
  w->read_result = mm_tcp_read(w->conn, buf, sizeof buf);
  return 0;
}

static int cancel_it(void *arg) {
  waits_t *w = arg;
  return mm_cancel(w->waiter);
}

static int waits_body(void *arg) {
  waits_t *w = arg;
  return mm_tcp_listen(&w->srv, "127.0.0.1", 0, 0);
}

/* Spawns a and then b on loop and runs both (b runs once a has parked). */
static void run_pair(mm_loop_t *loop, mm_fn a, mm_fn b, waits_t *w) {
  mm_coro_t *hb;
  assert_mm_ok(mm_spawn(loop, a, w, &w->waiter));
  assert_mm_ok(mm_spawn(loop, b, w, &hb));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(w->waiter));
  assert_mm_ok(mm_join(hb));
}

static int connect_pair(void *arg) {
  waits_t *w = arg;
  int r = mm_tcp_connect(&w->client, "127.0.0.1", mm_tcp_port(w->srv));
  if (r == 0)
    r = mm_tcp_accept(w->srv, &w->conn);
  return r;
}

static int write_then_read(void *arg) {
  waits_t *w = arg;
  int r = mm_tcp_write(w->client, "hello", 5);
  char buf[8];
  w->read_after = r == 0 ? mm_tcp_read(w->conn, buf, sizeof buf) : r;
  return 0;
}

static int close_conn(void *arg) {
  waits_t *w = arg;
  w->closer_result = mm_tcp_close(w->conn);
  return 0;
}

static int close_rest(void *arg) {
  waits_t *w = arg;
  mm_tcp_close(w->client);
  return mm_tcp_close(w->srv);
}

static void test_tcp_cancel_and_close_end_waiting_calls(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  waits_t w;
  memset(&w, 0, sizeof w);
  mm_test_run_one(loop, waits_body, &w);
  /* A cancelled accept: -ECANCELED; the listener still works. */
  run_pair(loop, wait_in_accept, cancel_it, &w);
  assert_mm_err(w.accept_result, -ECANCELED);
  mm_test_run_one(loop, connect_pair, &w);
  /* A cancelled read: -ECANCELED; the connection still works. */
  run_pair(loop, wait_in_read, cancel_it, &w);
  assert_mm_err(w.read_result, -ECANCELED);
  mm_test_run_one(loop, write_then_read, &w);
  assert_int_equal(w.read_after, 5);
  /* A read while another coroutine closes the connection. */
  run_pair(loop, wait_in_read, close_conn, &w);
  assert_mm_ok(w.closer_result);
  assert_mm_err(w.read_result, -ECANCELED);
  mm_test_run_one(loop, close_rest, &w);
  assert_mm_ok(mm_loop_free(loop));
}


/* A write the peer never reads cannot finish; cancelling the writer
 * closes the connection and the write returns -ECANCELED. */
enum { HUGE_WRITE = 32 * 1024 * 1024 };   /* beyond any socket buffers */

/* A connected pair on loopback: a listener, a client connected to it and
 * the listener's end of the connection. */
static int pair_open(mm_tcp_t **srv, mm_tcp_t **client, mm_tcp_t **conn) {
  int r = mm_tcp_listen(srv, "127.0.0.1", 0, 0);
  if (r == 0)
    r = mm_tcp_connect(client, "127.0.0.1", mm_tcp_port(*srv));
  if (r == 0)
    r = mm_tcp_accept(*srv, conn);
  return r;
}

typedef struct {
  mm_tcp_t *srv, *client, *conn;
  mm_coro_t *writer;
  char *data;
  int write_result;
  int read_after;
} stuck_t;

static int stuck_setup(void *arg) {
  stuck_t *s = arg;
  return pair_open(&s->srv, &s->client, &s->conn);
}

static int stuck_write(void *arg) {
  stuck_t *s = arg;
  s->write_result = mm_tcp_write(s->client, s->data, HUGE_WRITE);
  char buf[1];
  s->read_after = (int) mm_tcp_read(s->client, buf, 1);   /* closing */
  return mm_tcp_close(s->client);
}

static int cancel_writer(void *arg) {
  stuck_t *s = arg;
  return mm_cancel(s->writer);
}

static int stuck_cleanup(void *arg) {
  stuck_t *s = arg;
  mm_tcp_close(s->conn);
  return mm_tcp_close(s->srv);
}

static void test_tcp_cancel_of_a_write_closes_the_connection(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  stuck_t s;
  memset(&s, 0, sizeof s);
  s.data = calloc(1, HUGE_WRITE);
  assert_non_null(s.data);
  mm_coro_t *h;
  mm_test_run_one(loop, stuck_setup, &s);
  /* The writer parks in its write before the canceller runs. */
  assert_mm_ok(mm_spawn(loop, stuck_write, &s, &s.writer));
  assert_mm_ok(mm_spawn(loop, cancel_writer, &s, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(s.writer));
  assert_mm_ok(mm_join(h));
  assert_mm_err(s.write_result, -ECANCELED);
  assert_mm_err(s.read_after, -ECANCELED);
  mm_test_run_one(loop, stuck_cleanup, &s);
  free(s.data);
  assert_mm_ok(mm_loop_free(loop));
}


/* A write that the socket cannot take whole parks with the rest queued;
 * a write made meanwhile goes out after that rest, never before it (a
 * write is tried at once only when nothing is queued). */
typedef struct {
  mm_tcp_t *srv, *client, *conn;
  unsigned char *big, *in;
  int big_result, tail_result;
  int done;                   /* writes answered so far */
  int big_rank, tail_rank;    /* 1 + writes answered before each */
  size_t got;
} queued_t;

static const char queued_tail[] = "TAIL";

static int queued_setup(void *arg) {
  queued_t *q = arg;
  return pair_open(&q->srv, &q->client, &q->conn);
}

static int queued_big(void *arg) {
  queued_t *q = arg;
  q->big_result = mm_tcp_write(q->client, q->big, HUGE_WRITE);
  q->big_rank = ++q->done;
  return 0;
}

static int queued_small(void *arg) {
  queued_t *q = arg;
  q->tail_result = mm_tcp_write(q->client, queued_tail, 4);
  q->tail_rank = ++q->done;
  return 0;
}

/* Reads everything.  Once it has read enough to leave the writer's socket
 * room, it starts the small write and lets it run at once: the socket
 * would take those bytes now, ahead of the rest of the big write that
 * libuv still holds. */
static int queued_reader(void *arg) {
  queued_t *q = arg;
  mm_coro_t *small = NULL;
  int r = 0;
  while (q->got < HUGE_WRITE + 4) {
    ssize_t n = mm_tcp_read(q->conn, q->in + q->got,
                            HUGE_WRITE + 4 - q->got);
    if (n <= 0) {
      r = n < 0 ? (int) n : -EPROTO;
      break;
    }
    q->got += (size_t) n;
    if (small == NULL && q->got >= HUGE_WRITE / 8) {
      if ((r = mm_spawn(mm_loop_current(), queued_small, q, &small)) != 0 ||
          (r = mm_yield()) != 0)
        break;
    }
  }
  if (small != NULL && mm_join(small) != 0 && r == 0)
    r = -EPROTO;
  return r;
}

static int queued_cleanup(void *arg) {
  queued_t *q = arg;
  mm_tcp_close(q->client);
  mm_tcp_close(q->conn);
  return mm_tcp_close(q->srv);
}

static void test_tcp_a_write_behind_a_parked_one_goes_out_after_it(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  queued_t q;
  memset(&q, 0, sizeof q);
  q.big = malloc(HUGE_WRITE);
  q.in = malloc(HUGE_WRITE + 4);
  assert_non_null(q.big);
  assert_non_null(q.in);
  for (size_t i = 0; i < HUGE_WRITE; i++)
    q.big[i] = (unsigned char) (i * 7 + i / 251);
  mm_test_run_one(loop, queued_setup, &q);
  /* The big write parks (nobody reads yet); the reader starts the small
   * one while it is parked. */
  mm_coro_t *h[2];
  assert_mm_ok(mm_spawn(loop, queued_big, &q, &h[0]));
  assert_mm_ok(mm_spawn(loop, queued_reader, &q, &h[1]));
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 2; i++)
    assert_mm_ok(mm_join(h[i]));
  assert_mm_ok(q.big_result);
  assert_mm_ok(q.tail_result);
  assert_int_equal(q.big_rank, 1);
  assert_int_equal(q.tail_rank, 2);
  assert_int_equal(q.got, HUGE_WRITE + 4);
  assert_true(memcmp(q.in, q.big, HUGE_WRITE) == 0);
  assert_true(memcmp(q.in + HUGE_WRITE, queued_tail, 4) == 0);
  mm_test_run_one(loop, queued_cleanup, &q);
  free(q.big);
  free(q.in);
  assert_mm_ok(mm_loop_free(loop));
}

/* A coroutine whose writes all go out at once (the peer's buffers take
 * them) still lets the others run now and then: every so many writes in
 * a row on a handle, one parks until the loop's next pass. */
enum { QUICK_WRITES = 1000 };

typedef struct {
  mm_tcp_t *srv, *client, *conn;
  int write_result;
  bool done;
  long ticks;                 /* the other coroutine's turns */
  long ticks_when_done;
} quick_t;

static int quick_setup(void *arg) {
  quick_t *q = arg;
  return pair_open(&q->srv, &q->client, &q->conn);
}

static int quick_writer(void *arg) {
  quick_t *q = arg;
  for (int i = 0; i < QUICK_WRITES && q->write_result == 0; i++)
    q->write_result = mm_tcp_write(q->client, "x", 1);
  q->ticks_when_done = q->ticks;
  q->done = true;
  return 0;
}

static int quick_ticker(void *arg) {
  quick_t *q = arg;
  while (!q->done) {
    q->ticks++;
    int r = mm_yield();
    if (r != 0)
      return r;
  }
  return 0;
}

static int quick_cleanup(void *arg) {
  quick_t *q = arg;
  mm_tcp_close(q->client);
  mm_tcp_close(q->conn);
  return mm_tcp_close(q->srv);
}

static void test_tcp_writes_that_never_wait_still_let_others_run(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  quick_t q;
  memset(&q, 0, sizeof q);
  mm_test_run_one(loop, quick_setup, &q);
  mm_coro_t *w, *t;
  assert_mm_ok(mm_spawn(loop, quick_writer, &q, &w));
  assert_mm_ok(mm_spawn(loop, quick_ticker, &q, &t));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(w));
  assert_mm_ok(mm_join(t));
  assert_mm_ok(q.write_result);
  assert_true(q.ticks_when_done > 0);
  mm_test_run_one(loop, quick_cleanup, &q);
  assert_mm_ok(mm_loop_free(loop));
}

/* A write made with a cancellation already pending is cancelled as one
 * that waits is: the connection is closed (its bytes, gone out whole,
 * reach the peer, then the end of the stream; the write returns 0) --
 * not written at once as if nothing were pending. */
typedef struct {
  mm_tcp_t *srv, *client, *conn;
  int write_result;
  int nodelay_after;
  char in[8];
  ssize_t read1, read2;
} pending_t;

static int pending_setup(void *arg) {
  pending_t *p = arg;
  return pair_open(&p->srv, &p->client, &p->conn);
}

static int pending_writer(void *arg) {
  pending_t *p = arg;
  int r = mm_cancel(mm_current());
  if (r != 0)
    return r;
  p->write_result = mm_tcp_write(p->client, "late", 4);
  p->nodelay_after = mm_tcp_nodelay(p->client, true);   /* closing? */
  return 0;
}

static int pending_peer(void *arg) {
  pending_t *p = arg;
  p->read1 = mm_tcp_read(p->conn, p->in, sizeof p->in);
  p->read2 = mm_tcp_read(p->conn, p->in + 4, sizeof p->in - 4);
  mm_tcp_close(p->client);
  mm_tcp_close(p->conn);
  return mm_tcp_close(p->srv);
}

static void test_tcp_a_write_with_a_cancel_pending_closes_the_connection(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  pending_t p;
  memset(&p, 0, sizeof p);
  mm_test_run_one(loop, pending_setup, &p);
  mm_coro_t *w;
  assert_mm_ok(mm_spawn(loop, pending_writer, &p, &w));
  assert_mm_ok(mm_loop_run(loop));
  mm_join(w);                 /* a cancelled coroutine: its status aside */
  assert_mm_ok(p.write_result);
  assert_mm_err(p.nodelay_after, -EINVAL);
  mm_test_run_one(loop, pending_peer, &p);
  assert_int_equal(p.read1, 4);
  assert_true(memcmp(p.in, "late", 4) == 0);
  assert_int_equal(p.read2, 0);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Out of file descriptors ---------------------------------------------
 *
 * A listener that cannot accept for want of a descriptor (EMFILE) takes
 * the waiting connections and closes them, so that its clients learn at
 * once instead of waiting in the queue; it says so in the log, at most
 * once a second, with the count since its last line, and counts them in
 * mm_loop_stats.  In a forked child, whose descriptor limit the test
 * lowers; the child prints what it saw and the parent checks it.
 *
 * Not under Valgrind: it keeps the kernel's limit and applies a lowered
 * one itself, by closing a descriptor a call returns past it and failing
 * the call with EMFILE -- an accept then loses its connection before the
 * library sees it.
 */
enum { FIRST_BURST = 5, SECOND_BURST = 3 };

typedef struct {
  mm_loop_t *loop;
  mm_tcp_t *srv;
  int port;
  int limit[2];               /* RLIMIT_NOFILE, lowered for each burst */
  int accept_result;
  uint64_t dropped[2];        /* the stat after each burst */
  int clients_closed;         /* clients that saw their connection end */
  int failed_line;            /* a step of the body that failed, or 0 */
} emfile_t;

/* Connects the non-blocking socket fd to port on the loopback: it waits
 * in the listener's queue, not accepted.  Needs no new descriptor. */
static int connect_fd(int fd, int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t) port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *) &a, sizeof a) != 0 &&
      errno != EINPROGRESS)
    return -1;
  struct pollfd p = { .fd = fd, .events = POLLOUT };
  return poll(&p, 1, -1) == 1 ? 0 : -1;   /* the kernel completes it */
}

/* n clients connected to port; made while descriptors are to be had. */
static int connect_clients(int port, int *fds, int n) {
  for (int i = 0; i < n; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fds[i] < 0 || connect_fd(fds[i], port) != 0)
      return -1;
  }
  return 0;
}

/* Whether every client's connection has ended (EOF or reset), without
 * waiting. */
static bool all_ended(const int *fds, int n) {
  for (int i = 0; i < n; i++) {
    struct pollfd p = { .fd = fds[i], .events = POLLIN };
    if (poll(&p, 1, 0) != 1)
      return false;
    char c;
    ssize_t r = recv(fds[i], &c, 1, 0);
    if (r != 0 && !(r < 0 && errno == ECONNRESET))
      return false;
  }
  return true;
}

/* Lowers RLIMIT_NOFILE so that no descriptor is left: to the lowest free
 * one.  Returns the old limit in *old. */
static int no_more_fds(struct rlimit *old, int *limit) {
  int lowest = dup(0);
  if (lowest < 0 || getrlimit(RLIMIT_NOFILE, old) != 0)
    return -1;
  close(lowest);
  struct rlimit r = *old;
  r.rlim_cur = (rlim_t) lowest;
  *limit = lowest;
  return setrlimit(RLIMIT_NOFILE, &r);
}

static int accept_one_conn(void *arg) {
  emfile_t *e = arg;
  mm_tcp_t *c;
  e->accept_result = mm_tcp_accept(e->srv, &c);
  if (e->accept_result == 0)
    mm_tcp_close(c);
  return 0;
}

/* A step of a child's coroutine: on failure, record the line and go to
 * out (cmocka's asserts are for the parent). */
#define CHILD_STEP(failed_line, expr)                                         \
  do {                                                                        \
    if (!(expr)) {                                                            \
      (failed_line) = __LINE__;                                               \
      goto out;                                                               \
    }                                                                         \
  } while (0)
#define EMFILE_STEP(expr) CHILD_STEP(e->failed_line, expr)

static int emfile_body(void *arg) {
  emfile_t *e = arg;
  int first[FIRST_BURST], second[SECOND_BURST];
  struct rlimit old;
  mm_stats_t st;
  mm_coro_t *acceptor = NULL;
  EMFILE_STEP(mm_tcp_listen(&e->srv, "127.0.0.1", 0, 0) == 0);
  e->port = mm_tcp_port(e->srv);
  /* Clients wait in the queue; then the descriptors run out, and the
   * acceptor (run by the yield) finds none for them. */
  EMFILE_STEP(connect_clients(e->port, first, FIRST_BURST) == 0);
  EMFILE_STEP(no_more_fds(&old, &e->limit[0]) == 0);
  EMFILE_STEP(mm_spawn(e->loop, accept_one_conn, e, &acceptor) == 0);
  while (!all_ended(first, FIRST_BURST))
    EMFILE_STEP(mm_yield() == 0);
  e->clients_closed += FIRST_BURST;
  EMFILE_STEP(mm_loop_stats(e->loop, &st) == 0);
  e->dropped[0] = st.tcp_accept_dropped;
  /* Again, while the acceptor still waits: these come within the second,
   * so their line waits, and closing the listener writes it. */
  EMFILE_STEP(setrlimit(RLIMIT_NOFILE, &old) == 0);
  EMFILE_STEP(connect_clients(e->port, second, SECOND_BURST) == 0);
  EMFILE_STEP(no_more_fds(&old, &e->limit[1]) == 0);
  while (!all_ended(second, SECOND_BURST))
    EMFILE_STEP(mm_yield() == 0);
  e->clients_closed += SECOND_BURST;
  EMFILE_STEP(mm_loop_stats(e->loop, &st) == 0);
  e->dropped[1] = st.tcp_accept_dropped;
  EMFILE_STEP(setrlimit(RLIMIT_NOFILE, &old) == 0);
out:
  if (e->srv != NULL)
    mm_tcp_close(e->srv);    /* the acceptor gets -ECANCELED */
  if (acceptor != NULL)
    mm_join(acceptor);
  return 0;
}

/* The child: runs the body, prints what it saw and the log. */
static void emfile_child(void *arg) {
  static mm_test_log_t log;
  emfile_t e;
  memset(&e, 0, sizeof e);
  mm_test_log_init(&log);
  mm_set_log(mm_test_log_fn, &log);
  if (mm_loop_new(&e.loop, NULL) != 0)
    _exit(3);
  mm_coro_t *h;
  if (mm_spawn(e.loop, emfile_body, &e, &h) != 0 ||
      mm_loop_run(e.loop) != 0 || mm_join(h) != 0)
    _exit(4);
  mm_loop_free(e.loop);
  mm_set_log(NULL, NULL);
  printf("failed_line %d\nport %d\nlimits %d %d\naccept %d\n"
         "dropped %llu %llu\nclosed %d\nlog\n%s", e.failed_line, e.port,
         e.limit[0], e.limit[1], e.accept_result,
         (unsigned long long) e.dropped[0],
         (unsigned long long) e.dropped[1], e.clients_closed, log.text);
}

static void test_tcp_accept_out_of_fds_is_logged_and_counted(void **state) {
  static mm_test_child_t child;
  if (mm_test_under_valgrind())
    skip();
  assert_int_equal(mm_test_fork(emfile_child, NULL, &child), 0);
  if (!child.exited || child.code != 0)
    fail_msg("the child ended with %s %d:\n%s",
             child.exited ? "code" : "signal", child.code, child.out);
  int failed_line, port, limit[2], accept, closed;
  unsigned long long dropped0, dropped1;
  if (sscanf(child.out, "failed_line %d port %d limits %d %d accept %d "
             "dropped %llu %llu closed %d", &failed_line, &port, &limit[0],
             &limit[1], &accept, &dropped0, &dropped1, &closed) != 8)
    fail_msg("unexpected output:\n%s", child.out);
  if (failed_line != 0)
    fail_msg("step at line %d failed:\n%s", failed_line, child.out);
  /* The clients learnt at once; the acceptor still waited, until the
   * listener was closed. */
  assert_int_equal(closed, FIRST_BURST + SECOND_BURST);
  assert_mm_err(accept, -ECANCELED);
  assert_int_equal(dropped0, FIRST_BURST);
  assert_int_equal(dropped1, FIRST_BURST + SECOND_BURST);
  /* The lines: the first at once, naming the listener and the limit of
   * the time, with the first burst's count; each drop in exactly one
   * line; at most one line a second (the second burst is one more line,
   * or two if it came in two wake-ups more than a second after the
   * first: whatever a line holds back, the close writes). */
  char name[64], lim[64];
  snprintf(name, sizeof name, "127.0.0.1:%d", port);
  const char *line = strstr(child.out, "\nlog\n");
  assert_non_null(line);
  unsigned long long total = 0;
  int lines = 0;
  for (line += 5; *line != '\0'; lines++) {
    snprintf(lim, sizeof lim, "RLIMIT_NOFILE %d", limit[lines == 0 ? 0 : 1]);
    const char *end = strchr(line, '\n');
    const char *n = strstr(line, " dropped ");
    unsigned long long count;
    if (end == NULL || n == NULL || n > end ||
        sscanf(n, " dropped %llu", &count) != 1 ||
        strstr(line, name) == NULL || strstr(line, name) > end ||
        strstr(line, lim) == NULL || strstr(line, lim) > end ||
        line[0] != '0' + MM_LOG_WARN)
      fail_msg("unexpected log line in:\n%s", child.out);
    if (lines == 0 && count != FIRST_BURST)
      fail_msg("the first line does not count the first burst:\n%s",
               child.out);
    total += count;
    line = end + 1;
  }
  if (lines < 2 || lines > 3 || total != FIRST_BURST + SECOND_BURST)
    fail_msg("%d lines, %llu connections reported:\n%s", lines, total,
             child.out);
}


/* A listener made when no descriptor was left for its reserve cannot drop
 * what waits: its accept returns -EMFILE and the connection stays queued,
 * for an accept once descriptors are back. */
typedef struct {
  mm_loop_t *loop;
  int first, second;          /* the two accepts */
  uint64_t dropped;
  int failed_line;
} no_reserve_t;

static int listen_and_close(void *arg) {
  mm_tcp_t *srv;
  int r = mm_tcp_listen(&srv, "127.0.0.1", 0, 0);
  return r != 0 ? r : mm_tcp_close(srv);
}

static int no_reserve_body(void *arg) {
  no_reserve_t *n = arg;
  mm_tcp_t *srv = NULL, *c = NULL;
  struct rlimit old;
  int limit, fd = -1;
  /* libuv's own reserve (its first TCP handle of the loop makes it) and
   * the client's socket first; then room for one descriptor only, the
   * listener's socket. */
  CHILD_STEP(n->failed_line, listen_and_close(NULL) == 0);
  fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  CHILD_STEP(n->failed_line, fd >= 0);
  CHILD_STEP(n->failed_line, no_more_fds(&old, &limit) == 0);
  struct rlimit one = old;
  one.rlim_cur = (rlim_t) limit + 1;
  CHILD_STEP(n->failed_line, setrlimit(RLIMIT_NOFILE, &one) == 0);
  CHILD_STEP(n->failed_line, mm_tcp_listen(&srv, "127.0.0.1", 0, 0) == 0);
  CHILD_STEP(n->failed_line, connect_fd(fd, mm_tcp_port(srv)) == 0);
  n->first = mm_tcp_accept(srv, &c);
  CHILD_STEP(n->failed_line, setrlimit(RLIMIT_NOFILE, &old) == 0);
  n->second = mm_tcp_accept(srv, &c);
  mm_stats_t st;
  CHILD_STEP(n->failed_line, mm_loop_stats(n->loop, &st) == 0);
  n->dropped = st.tcp_accept_dropped;
out:
  if (c != NULL)
    mm_tcp_close(c);
  if (srv != NULL)
    mm_tcp_close(srv);
  if (fd >= 0)
    close(fd);
  return 0;
}

static void no_reserve_child(void *arg) {
  no_reserve_t n;
  memset(&n, 0, sizeof n);
  if (mm_loop_new(&n.loop, NULL) != 0)
    _exit(3);
  mm_coro_t *h;
  if (mm_spawn(n.loop, no_reserve_body, &n, &h) != 0 ||
      mm_loop_run(n.loop) != 0 || mm_join(h) != 0)
    _exit(4);
  mm_loop_free(n.loop);
  printf("failed_line %d first %d second %d dropped %llu\n", n.failed_line,
         n.first, n.second, (unsigned long long) n.dropped);
}

static void test_tcp_accept_out_of_fds_without_a_reserve_returns_emfile(
    void **state) {
  static mm_test_child_t child;
  if (mm_test_under_valgrind())
    skip();
  assert_int_equal(mm_test_fork(no_reserve_child, NULL, &child), 0);
  int failed_line, first, second;
  unsigned long long dropped;
  if (!child.exited || child.code != 0 ||
      sscanf(child.out, "failed_line %d first %d second %d dropped %llu",
             &failed_line, &first, &second, &dropped) != 4 ||
      failed_line != 0)
    fail_msg("the child ended with %s %d:\n%s",
             child.exited ? "code" : "signal", child.code, child.out);
  assert_mm_err(first, -EMFILE);
  assert_mm_ok(second);           /* it waited in the queue */
  assert_int_equal(dropped, 0);
}

/* ---- A peer that left: -EPIPE, and SIGPIPE left to the program ----------- */

/* The client closes; once the server's end has read the end of the
 * stream, its first write goes out and draws the client's RST, and a
 * write after that fails.  libuv writes with write(2), so the kernel
 * also raises SIGPIPE: the library leaves that signal to the program
 * (mm_tcp.3, "SIGPIPE"), which ignores it to get -EPIPE instead of its
 * end. */
typedef struct {
  mm_tcp_t *srv, *client, *conn;
  ssize_t eof;                /* the server end's read: 0 */
  int write_result;           /* the first write that did not return 0 */
  int writes;                 /* writes that returned 0 before it */
} left_t;

enum { LEFT_WRITES_MAX = 100 };   /* loopback answers the first one */

static int write_after_peer_left(void *arg) {
  left_t *l = arg;
  int r = pair_open(&l->srv, &l->client, &l->conn);
  if (r != 0)
    return r;
  mm_tcp_close(l->client);
  char buf[16];
  l->eof = mm_tcp_read(l->conn, buf, sizeof buf);
  for (l->writes = 0; l->writes < LEFT_WRITES_MAX; l->writes++)
    if ((l->write_result = mm_tcp_write(l->conn, "x", 1)) != 0)
      break;
  mm_tcp_close(l->conn);
  return mm_tcp_close(l->srv);
}

/* In a child with SIGPIPE's default action: it must die of it. */
static void write_after_peer_left_by_default(void *arg) {
  signal(SIGPIPE, SIG_DFL);
  mm_loop_t *loop;
  if (mm_loop_new(&loop, NULL) != 0)
    _exit(3);
  left_t l;
  memset(&l, 0, sizeof l);
  mm_coro_t *h;
  if (mm_spawn(loop, write_after_peer_left, &l, &h) != 0 ||
      mm_loop_run(loop) != 0 || mm_join(h) != 0)
    _exit(4);
  printf("not killed: read %zd, write %d (%s) after %d writes\n", l.eof,
         l.write_result, mm_strerror(l.write_result), l.writes);
  _exit(5);
}

static void test_tcp_write_to_a_peer_gone_is_epipe_and_sigpipe_left_alone(
    void **state) {
  /* Ignored, as a program that serves on mm_tcp does: the write fails. */
  struct sigaction ign = { .sa_handler = SIG_IGN }, old;
  assert_int_equal(sigaction(SIGPIPE, &ign, &old), 0);
  mm_loop_t *loop = mm_test_loop_new(0);
  left_t l;
  memset(&l, 0, sizeof l);
  mm_test_run_one(loop, write_after_peer_left, &l);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
  assert_int_equal(l.eof, 0);
  if (l.write_result != -EPIPE && l.write_result != -ECONNRESET)
    fail_msg("the write after the peer left returned %d (%s) after %d "
             "writes, not -EPIPE", l.write_result,
             mm_strerror(l.write_result), l.writes);
  assert_in_range(l.writes, 1, LEFT_WRITES_MAX - 1);

  /* Not ignored: the library has not changed the disposition, and the
   * same write kills. */
  mm_test_skip_fork_threads_if_emulated();
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(write_after_peer_left_by_default, NULL,
                                &child), 0);
  if (child.exited || child.code != SIGPIPE)
    fail_msg("the child ended with %s %d, not SIGPIPE:\n%s",
             child.exited ? "code" : "signal", child.code, child.out);
}

/* ---- Where they may be called ------------------------------------------- */

typedef struct {
  mm_tcp_t *srv;
  int listen, connect, accept, read, write, close;
} places_t;

static void tcp_from_here(places_t *p) {
  mm_tcp_t *t = (mm_tcp_t *) p;
  char buf[4];
  p->listen = mm_tcp_listen(&t, NULL, 0, 0);
  p->connect = mm_tcp_connect(&t, NULL, 1);
  p->accept = p->srv != NULL ? mm_tcp_accept(p->srv, &t) : 0;
  p->read = p->srv != NULL ? (int) mm_tcp_read(p->srv, buf, 1) : 0;
  p->write = p->srv != NULL ? mm_tcp_write(p->srv, buf, 1) : 0;
  p->close = p->srv != NULL ? mm_tcp_close(p->srv) : 0;
}

static void *from_thread(void *arg) {
  tcp_from_here(arg);
  return NULL;
}

static void from_raw(void *arg) {
  tcp_from_here(arg);
}

static int listen_for(void *arg) {
  places_t *p = arg;
  return mm_tcp_listen(&p->srv, "127.0.0.1", 0, 0);
}

static int close_for(void *arg) {
  places_t *p = arg;
  return mm_tcp_close(p->srv);
}

/* The listener belongs to loop a: a coroutine of loop b may not use it. */
static int use_from_other_loop(void *arg) {
  places_t *p = arg;
  mm_tcp_t *t;
  p->accept = mm_tcp_accept(p->srv, &t);
  p->close = mm_tcp_close(p->srv);
  return 0;
}

static void test_tcp_from_a_thread_eperm_from_a_raw_callback_edeadlk(
    void **state) {
  places_t p;
  memset(&p, 0, sizeof p);
  /* A plain thread: TCP handles belong to a loop. */
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, from_thread, &p), 0);
  pthread_join(t, NULL);
  assert_mm_err(p.listen, -EPERM);
  assert_mm_err(p.connect, -EPERM);
  /* A raw callback on a loop's thread. */
  uv_loop_t uv;
  mm_loop_t *loop;
  memset(&p, 0, sizeof p);
  assert_int_equal(uv_loop_init(&uv), 0);
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, from_raw, &p));
  assert_mm_err(p.listen, -EDEADLK);
  assert_mm_err(p.connect, -EDEADLK);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
  /* Another loop's coroutine. */
  mm_loop_t *a, *b;
  memset(&p, 0, sizeof p);
  assert_mm_ok(mm_loop_new(&a, NULL));
  assert_mm_ok(mm_loop_new(&b, NULL));
  mm_coro_t *h;
  assert_mm_ok(mm_spawn(a, listen_for, &p, &h));
  assert_mm_ok(mm_loop_run(a));
  assert_mm_ok(mm_join(h));
  assert_mm_ok(mm_spawn(b, use_from_other_loop, &p, &h));
  assert_mm_ok(mm_loop_run(b));
  assert_mm_ok(mm_join(h));
  assert_mm_err(p.accept, -EPERM);
  assert_mm_err(p.close, -EPERM);
  assert_mm_ok(mm_spawn(a, close_for, &p, &h));
  assert_mm_ok(mm_loop_run(a));
  assert_mm_ok(mm_join(h));
  assert_mm_ok(mm_loop_free(a));
  assert_mm_ok(mm_loop_free(b));
}

static int bad_arguments(void *arg) {
  int *bad = arg;
  mm_tcp_t *srv, *t;
  char buf[1];
  *bad = 0;
  *bad += mm_tcp_listen(NULL, NULL, 0, 0) != -EINVAL;
  *bad += mm_tcp_listen(&t, NULL, -1, 0) != -EINVAL;
  *bad += mm_tcp_listen(&t, NULL, 65536, 0) != -EINVAL;
  *bad += mm_tcp_connect(NULL, NULL, 1) != -EINVAL;
  *bad += mm_tcp_connect(&t, NULL, 70000) != -EINVAL;
  *bad += mm_tcp_port(NULL) != -EINVAL;
  *bad += mm_tcp_accept(NULL, &t) != -EINVAL;
  *bad += mm_tcp_read(NULL, buf, 1) != -EINVAL;
  *bad += mm_tcp_write(NULL, buf, 1) != -EINVAL;
  *bad += mm_tcp_close(NULL) != -EINVAL;
  int r = mm_tcp_listen(&srv, "127.0.0.1", 0, 0);
  if (r != 0)
    return r;
  *bad += mm_tcp_accept(srv, NULL) != -EINVAL;
  *bad += mm_tcp_read(srv, buf, 1) != -EINVAL;      /* a listener */
  *bad += mm_tcp_write(srv, buf, 1) != -EINVAL;
  r = mm_tcp_connect(&t, "127.0.0.1", mm_tcp_port(srv));
  if (r != 0)
    return r;
  *bad += mm_tcp_read(t, NULL, 1) != -EINVAL;
  *bad += mm_tcp_read(t, buf, 0) != -EINVAL;
  *bad += mm_tcp_write(t, NULL, 1) != -EINVAL;
  *bad += mm_tcp_write(t, buf, 0) != 0;              /* nothing to write */
  mm_tcp_close(t);
  return mm_tcp_close(srv);
}

static void test_tcp_calls_with_bad_arguments_return_einval(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  int bad = -1;
  mm_test_run_one(loop, bad_arguments, &bad);
  assert_int_equal(bad, 0);
  assert_mm_ok(mm_loop_free(loop));
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_tcp_echo_between_two_coroutines),
    mm_test(test_tcp_echo_with_many_clients_at_once),
    mm_test(test_tcp_end_of_stream_refusal_and_names),
    mm_test(test_tcp_names_try_every_address_and_unknown_ones_say_so),
    mm_test(test_tcp_bulk_read_in_small_pieces_loses_nothing),
    mm_test(test_tcp_cancel_while_resolving_returns_ecanceled),
    mm_test(test_tcp_cancel_and_close_end_waiting_calls),
    mm_test(test_tcp_cancel_of_a_write_closes_the_connection),
    mm_test(test_tcp_a_write_behind_a_parked_one_goes_out_after_it),
    mm_test(test_tcp_a_write_with_a_cancel_pending_closes_the_connection),
    mm_test(test_tcp_writes_that_never_wait_still_let_others_run),
    mm_test(test_tcp_accept_out_of_fds_is_logged_and_counted),
    mm_test(test_tcp_accept_out_of_fds_without_a_reserve_returns_emfile),
    mm_test(test_tcp_write_to_a_peer_gone_is_epipe_and_sigpipe_left_alone),
    mm_test(test_tcp_from_a_thread_eperm_from_a_raw_callback_edeadlk),
    mm_test(test_tcp_calls_with_bad_arguments_return_einval),
  };
  return mm_run_tests(tests);
}
