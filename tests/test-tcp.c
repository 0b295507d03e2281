/* TCP from coroutines: echo between coroutines, many clients, end of
 * stream, refused connections, names (every address tried in order, an
 * unknown name, a cancel while resolving), options, cancel and close of
 * waiting calls, and calls from the wrong place.  Everything on
 * 127.0.0.x, port 0.
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
#include <pthread.h>
#include <arpa/inet.h>

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

typedef struct {
  mm_tcp_t *srv, *client, *conn;
  mm_coro_t *writer;
  char *data;
  int write_result;
  int read_after;
} stuck_t;

static int stuck_setup(void *arg) {
  stuck_t *s = arg;
  int r = mm_tcp_listen(&s->srv, "127.0.0.1", 0, 0);
  if (r == 0)
    r = mm_tcp_connect(&s->client, "127.0.0.1", mm_tcp_port(s->srv));
  if (r == 0)
    r = mm_tcp_accept(s->srv, &s->conn);
  return r;
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
    mm_test(test_tcp_cancel_while_resolving_returns_ecanceled),
    mm_test(test_tcp_cancel_and_close_end_waiting_calls),
    mm_test(test_tcp_cancel_of_a_write_closes_the_connection),
    mm_test(test_tcp_from_a_thread_eperm_from_a_raw_callback_edeadlk),
    mm_test(test_tcp_calls_with_bad_arguments_return_einval),
  };
  return mm_run_tests(tests);
}
