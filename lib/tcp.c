/* TCP streams for coroutines: libuv's uv_tcp_t, one coroutine call at a
 * time per direction, each a park until libuv's callback answers.
 *
 * A handle belongs to the loop of the coroutine that made it; only that
 * loop's coroutines may use it (-EPERM elsewhere, -EDEADLK in a raw
 * callback on the loop's thread).  Everything here runs on that thread,
 * so no lock is needed.
 *
 *   read:    uv_read_start with the caller's own buffer; the first read
 *            callback stops reading and wakes the reader: no copy, and
 *            nothing is read while no coroutine asks
 *   write:   a uv_write_t on the caller's stack; parked until written
 *   accept:  connections that come while nobody accepts are counted and
 *            accepted by the next mm_tcp_accept
 *   connect: a uv_connect_t on the caller's stack
 *   names:   uv_getaddrinfo (libuv's thread pool) and mm_await: lib/
 *            needs nothing of bridge/ (DESIGN.md, Layout); connect tries
 *            every address in order, listen binds the first that works
 *
 * Cancelling a coroutine parked in read or accept ends the call with
 * -ECANCELED and leaves the handle usable.  A write or a connect cannot be
 * taken back: cancelling one closes the connection (the call returns
 * -ECANCELED; the handle must still be closed with mm_tcp_close).
 * Closing a handle wakes whoever waits in it with -ECANCELED and frees it
 * once libuv's close callback has run.
 */
#include "mm-internal.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mm_tcp {
  uv_tcp_t h;                 /* h.data = this */
  mm_loop_t *loop;
  bool listening;
  bool closing;               /* uv_close called */
  bool closed;                /* its close callback ran */
  bool eof;
  int error;                  /* a read or listen error, kept */
  unsigned pending;           /* connections not yet accepted */
  mm__wait_t *reader;         /* parked in read */
  char *rbuf;
  size_t rlen;
  mm__wait_t *acceptor;       /* parked in accept */
  mm_tcp_t *accepted;
  mm__wait_t *closer;         /* parked in close */
  unsigned inflight;          /* writes and connects not yet answered */
};

/* A coroutine's wait on a handle: cancel callbacks find the handle. */
typedef struct tcp_wait {
  mm__wait_t w;
  mm_tcp_t *t;
} tcp_wait_t;

static void tcp_wait_init(tcp_wait_t *tw, mm_tcp_t *t,
                          void (*cancel)(mm__wait_t *, int)) {
  mm__wait_init(&tw->w);      /* a coroutine's: cannot fail */
  tw->w.cancel = cancel;
  tw->t = t;
}

static mm_tcp_t *tcp_of(mm__wait_t *w) {
  return container_of(w, tcp_wait_t, w)->t;
}

/* The calling coroutine's loop, if it may use t (NULL: make one). */
static int check_context(const mm_tcp_t *t, mm_loop_t **loop) {
  mm_coro_t *c = mm__tls.coro;
  if (c == NULL)
    return mm__tls.loop != NULL ? -EDEADLK : -EPERM;
  if (t != NULL && t->loop != c->loop)
    return -EPERM;
  *loop = c->loop;
  return 0;
}

static mm_tcp_t *tcp_new(mm_loop_t *loop, int *err) {
  mm_tcp_t *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  *err = uv_tcp_init(loop->uv, &t->h);
  if (*err != 0) {
    free(t);
    return NULL;
  }
  t->h.data = t;
  t->loop = loop;
  return t;
}

/* Waits on a handle are kept in its slots (reader, acceptor, closer) and
 * ended on the loop's thread by whoever takes them out of the slot first:
 * a libuv callback completes one (WOKEN), its cancel callback cancels it
 * (CANCELLED) -- lib/wait.c's protocol, with the slot as the one way to
 * reach the wait. */
static void wake(mm__wait_t **slot, int status) {
  mm__wait_t *w = *slot;
  if (w != NULL) {
    *slot = NULL;
    mm__wait_complete(w, status);
  }
}

/* w's cancel: ends it if it still is in its slot. */
static void cancel_slot(mm__wait_t **slot, mm__wait_t *w, int reason) {
  if (*slot == w) {
    *slot = NULL;
    mm__wait_cancel(w, -reason);
  }
}

static void on_closed(uv_handle_t *h) {
  mm_tcp_t *t = h->data;
  t->closed = true;
  wake(&t->closer, 0);
}

/* Starts closing t (once); whoever waits in it gets -ECANCELED. */
static void start_close(mm_tcp_t *t) {
  if (t->closing)
    return;
  t->closing = true;
  wake(&t->reader, -ECANCELED);
  wake(&t->acceptor, -ECANCELED);
  uv_close((uv_handle_t *) &t->h, on_closed);
}

/* Closes t and frees it once libuv is done with it: parks until its close
 * callback has run and no write or connect is left to answer. */
static void close_and_free(mm_tcp_t *t) {
  start_close(t);
  while (!t->closed || t->inflight != 0) {
    mm__wait_t w;
    mm__wait_init(&w);
    w.cancellable = false;    /* freeing must finish */
    t->closer = &w;
    mm__wait_block(&w);
  }
  free(t);
}

/* ---- names -------------------------------------------------------------- */

/* A name's addresses: one parsed numeric address (no list), or what
 * getaddrinfo gave, in its order. */
typedef struct addrs {
  struct sockaddr_storage numeric;
  struct addrinfo *list;      /* uv_freeaddrinfo; NULL for numeric */
} addrs_t;

typedef struct resolve_op {
  uv_getaddrinfo_t req;
  mm_coro_t *coro;
  struct addrinfo *res;
} resolve_op_t;

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  resolve_op_t *op = req->data;
  op->res = res;
  mm_wake(op->coro, status);
}

/* A cancel of the resolving coroutine: a request still queued in libuv's
 * pool is dropped (its callback comes with UV_EAI_CANCELED); one running
 * finishes, and its callback wakes the await either way. */
static void resolve_cancel(void *arg) {
  resolve_op_t *op = arg;
  uv_cancel((uv_req_t *) &op->req);
}

/* host NULL or "": any address (listen) or the loopback (connect).
 * Numeric addresses are parsed here; a name is looked up off the loop by
 * libuv's own pool while the coroutine waits.  A name that does not
 * resolve: libuv's UV_EAI_* code, which mm_strerror explains. */
static int resolve(const char *host, int port, bool passive, addrs_t *out) {
  if (port < 0 || port > 65535)
    return -EINVAL;
  if (host == NULL || host[0] == '\0')
    host = passive ? "0.0.0.0" : "127.0.0.1";
  memset(out, 0, sizeof *out);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *) &out->numeric) == 0 ||
      uv_ip6_addr(host, port, (struct sockaddr_in6 *) &out->numeric) == 0)
    return 0;
  char service[8];
  snprintf(service, sizeof service, "%d", port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : AI_ADDRCONFIG;
  resolve_op_t op = { .coro = mm_current() };
  op.req.data = &op;
  int r = uv_getaddrinfo(mm__tls.coro->loop->uv, &op.req, on_resolved, host,
                         service, &hints);
  if (r != 0)
    return r;
  r = mm_await(resolve_cancel, &op);
  if (r == 0 && op.res == NULL)
    r = UV_EAI_NONAME;
  if (r != 0) {
    uv_freeaddrinfo(op.res);
    /* Cancelled meanwhile: say so, not what the lookup became. */
    int reason = mm__coro_cancel_reason(mm__tls.coro);
    return reason != 0 ? -reason : r;
  }
  out->list = op.res;
  return 0;
}

/* The i-th address of a (NULL past the last). */
static const struct sockaddr *addr_at(const addrs_t *a, int i) {
  if (a->list == NULL)
    return i == 0 ? (const struct sockaddr *) &a->numeric : NULL;
  const struct addrinfo *ai = a->list;
  while (ai != NULL && i-- > 0)
    ai = ai->ai_next;
  return ai != NULL ? ai->ai_addr : NULL;
}

static void addrs_free(addrs_t *a) {
  uv_freeaddrinfo(a->list);
  a->list = NULL;
}

/* ---- listening ---------------------------------------------------------- */

static mm_tcp_t *accept_one(mm_tcp_t *srv, int *err) {
  mm_tcp_t *c = tcp_new(srv->loop, err);
  if (c == NULL)
    return NULL;
  *err = uv_accept((uv_stream_t *) &srv->h, (uv_stream_t *) &c->h);
  if (*err != 0) {
    close_and_free(c);
    return NULL;
  }
  return c;
}

static void on_connection(uv_stream_t *s, int status) {
  mm_tcp_t *srv = s->data;
  if (status < 0) {
    srv->error = status;
    wake(&srv->acceptor, status);
    return;
  }
  srv->pending++;
  wake(&srv->acceptor, 0);    /* it accepts the connection itself */
}

/* What listen and connect share: checks, the addresses. */
static int open_addrs(mm_tcp_t **out, const char *host, int port,
                      bool passive, addrs_t *addrs, mm_loop_t **loop) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  int r = check_context(NULL, loop);
  if (r == 0)
    r = resolve(host, port, passive, addrs);
  return r;
}

int mm_tcp_listen(mm_tcp_t **out, const char *host, int port, int backlog) {
  addrs_t addrs;
  mm_loop_t *loop;
  int r = open_addrs(out, host, port, true, &addrs, &loop);
  if (r != 0)
    return r;
  /* The first address that can be bound and listened on. */
  const struct sockaddr *sa;
  mm_tcp_t *t = NULL;
  r = UV_EAI_NONAME;
  for (int i = 0; (sa = addr_at(&addrs, i)) != NULL; i++) {
    if ((t = tcp_new(loop, &r)) == NULL)
      break;
    r = uv_tcp_bind(&t->h, sa, 0);
    if (r == 0)
      r = uv_listen((uv_stream_t *) &t->h, backlog > 0 ? backlog : 128,
                    on_connection);
    if (r == 0)
      break;
    close_and_free(t);
    t = NULL;
  }
  addrs_free(&addrs);
  if (t == NULL)
    return r;
  t->listening = true;
  *out = t;
  return 0;
}

int mm_tcp_port(mm_tcp_t *srv) {
  if (srv == NULL)
    return -EINVAL;
  struct sockaddr_storage addr;
  int len = sizeof addr;
  int r = uv_tcp_getsockname(&srv->h, (struct sockaddr *) &addr, &len);
  if (r != 0)
    return r;
  if (addr.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *) &addr)->sin_port);
  return ntohs(((struct sockaddr_in6 *) &addr)->sin6_port);
}

static void accept_cancel(mm__wait_t *w, int reason) {
  cancel_slot(&tcp_of(w)->acceptor, w, reason);
}

int mm_tcp_accept(mm_tcp_t *srv, mm_tcp_t **conn) {
  if (conn == NULL)
    return -EINVAL;
  *conn = NULL;
  if (srv == NULL || !srv->listening)
    return -EINVAL;
  mm_loop_t *loop;
  int r = check_context(srv, &loop);
  if (r != 0)
    return r;
  if (srv->acceptor != NULL)
    return -EBUSY;
  while (srv->pending == 0) {
    if (srv->closing)
      return -ECANCELED;
    if (srv->error != 0)
      return srv->error;
    tcp_wait_t tw;
    tcp_wait_init(&tw, srv, accept_cancel);
    srv->acceptor = &tw.w;
    r = mm__wait_block(&tw.w);
    if (r != 0)
      return r;
  }
  srv->pending--;
  mm_tcp_t *c = accept_one(srv, &r);
  if (c == NULL)
    return r;
  *conn = c;
  return 0;
}

/* ---- connecting --------------------------------------------------------- */

/* A write or a connect: a request and its caller's wait. */
typedef struct stream_op {
  union {
    uv_connect_t connect;
    uv_write_t write;
  } req;
  tcp_wait_t tw;
} stream_op_t;

/* The answer to a write or a connect; the last one lets a close finish. */
static void op_done(stream_op_t *op, int status) {
  mm_tcp_t *t = op->tw.t;
  t->inflight--;
  if (t->closed && t->inflight == 0)
    wake(&t->closer, 0);
  mm__wait_complete(&op->tw.w, status);
}

static void on_connect(uv_connect_t *req, int status) {
  op_done(container_of(req, stream_op_t, req.connect), status);
}

static void on_write(uv_write_t *req, int status) {
  op_done(container_of(req, stream_op_t, req.write), status);
}

/* A write or connect cannot be taken back: close the connection; its
 * callback then comes with UV_ECANCELED. */
static void stream_op_cancel(mm__wait_t *w, int reason) {
  (void) reason;
  start_close(tcp_of(w));
}

/* One connection attempt to sa: 0 and *out, or an error (t closed). */
static int connect_one(mm_loop_t *loop, const struct sockaddr *sa,
                       mm_tcp_t **out) {
  int r;
  mm_tcp_t *t = tcp_new(loop, &r);
  if (t == NULL)
    return r;
  stream_op_t op;
  tcp_wait_init(&op.tw, t, stream_op_cancel);
  r = uv_tcp_connect(&op.req.connect, &t->h, sa, on_connect);
  if (r == 0) {
    t->inflight++;
    r = mm__wait_block(&op.tw.w);
  }
  if (r != 0) {
    close_and_free(t);
    return r;
  }
  *out = t;
  return 0;
}

int mm_tcp_connect(mm_tcp_t **out, const char *host, int port) {
  addrs_t addrs;
  mm_loop_t *loop;
  int r = open_addrs(out, host, port, false, &addrs, &loop);
  if (r != 0)
    return r;
  /* Every address in order (a name with an IPv6 and an IPv4 address
   * whose server listens on one only); the last one's error if none
   * answers.  A cancel ends the attempts. */
  const struct sockaddr *sa;
  r = UV_EAI_NONAME;
  for (int i = 0; (sa = addr_at(&addrs, i)) != NULL; i++) {
    r = connect_one(loop, sa, out);
    if (r == 0 || r == -ECANCELED || r == -ETIMEDOUT)
      break;
  }
  addrs_free(&addrs);
  return r;
}

/* ---- reading and writing ------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  mm_tcp_t *t = h->data;
  (void) hint;
  *buf = uv_buf_init(t->rbuf, (unsigned) t->rlen);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mm_tcp_t *t = s->data;
  (void) buf;
  if (n == 0)
    return;                   /* nothing this time (EAGAIN) */
  uv_read_stop(s);
  if (n == UV_EOF) {
    t->eof = true;
    n = 0;
  } else if (n < 0) {
    t->error = (int) n;
  }
  wake(&t->reader, (int) n);
}

static void read_cancel(mm__wait_t *w, int reason) {
  mm_tcp_t *t = tcp_of(w);
  uv_read_stop((uv_stream_t *) &t->h);
  cancel_slot(&t->reader, w, reason);
}

ssize_t mm_tcp_read(mm_tcp_t *c, void *buf, size_t len) {
  if (c == NULL || buf == NULL || len == 0 || c->listening)
    return -EINVAL;
  mm_loop_t *loop;
  int r = check_context(c, &loop);
  if (r != 0)
    return r;
  if (c->reader != NULL)
    return -EBUSY;
  if (c->closing)
    return -ECANCELED;
  if (c->eof)
    return 0;
  if (c->error != 0)
    return c->error;
  tcp_wait_t tw;
  tcp_wait_init(&tw, c, read_cancel);
  c->rbuf = buf;
  c->rlen = len > INT_MAX ? INT_MAX : len;
  r = uv_read_start((uv_stream_t *) &c->h, on_alloc, on_read);
  if (r != 0)
    return r;
  c->reader = &tw.w;
  return mm__wait_block(&tw.w);
}

int mm_tcp_write(mm_tcp_t *c, const void *buf, size_t len) {
  if (c == NULL || (buf == NULL && len != 0) || c->listening)
    return -EINVAL;
  mm_loop_t *loop;
  int r = check_context(c, &loop);
  if (r != 0)
    return r;
  if (c->closing)
    return -ECANCELED;
  if (len == 0)
    return 0;
  if (len > UINT_MAX)
    return -EINVAL;
  stream_op_t op;
  tcp_wait_init(&op.tw, c, stream_op_cancel);
  uv_buf_t b = uv_buf_init((char *) buf, (unsigned) len);
  r = uv_write(&op.req.write, (uv_stream_t *) &c->h, &b, 1, on_write);
  if (r != 0)
    return r;
  c->inflight++;
  return mm__wait_block(&op.tw.w);
}

int mm_tcp_close(mm_tcp_t *c) {
  if (c == NULL)
    return -EINVAL;
  mm_loop_t *loop;
  int r = check_context(c, &loop);
  if (r != 0)
    return r;
  close_and_free(c);
  return 0;
}

/* ---- options ------------------------------------------------------------ */

/* A connection the calling coroutine may use: 0, or the error. */
static int check_conn(mm_tcp_t *c) {
  if (c == NULL)
    return -EINVAL;
  mm_loop_t *loop;
  int r = check_context(c, &loop);
  if (r != 0)
    return r;
  return c->listening || c->closing ? -EINVAL : 0;
}

int mm_tcp_nodelay(mm_tcp_t *c, bool on) {
  int r = check_conn(c);
  return r != 0 ? r : uv_tcp_nodelay(&c->h, on);
}

int mm_tcp_keepalive(mm_tcp_t *c, bool on, unsigned delay_s) {
  int r = check_conn(c);
  if (r != 0)
    return r;
  if (on && delay_s == 0)
    return -EINVAL;
  return uv_tcp_keepalive(&c->h, on, delay_s);
}
