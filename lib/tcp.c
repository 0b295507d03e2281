/* TCP streams for coroutines: libuv's uv_tcp_t, one coroutine call at a
 * time per direction, each a park until libuv's callback answers.
 *
 * A handle belongs to the loop of the coroutine that made it; only that
 * loop's coroutines may use it (-EPERM elsewhere, -EDEADLK in a raw
 * callback on the loop's thread).  Everything here runs on that thread,
 * so no lock is needed.
 *
 *   read:    reading stays on between reads (below, "Reading and
 *            writing"): libuv reads into the parked reader's own buffer,
 *            and the reader runs from the read callback
 *   write:   uv_try_write; what it leaves, a uv_write_t on the caller's
 *            stack, parked until written
 *   accept:  accept(2) is done here, not by libuv (below, "Out of
 *            descriptors"); the listener's socket is watched (a uv_poll)
 *            only while a coroutine waits in accept, and connections that
 *            come meanwhile wait in the kernel's queue
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
 * once libuv's close callbacks have run.
 *
 * Out of descriptors.  When accept(2) fails with EMFILE or ENFILE, the
 * waiting connections stay queued and the socket stays readable: a wait
 * for it would spin, and the clients would wait for nothing.  libuv's own
 * listener then gives up a descriptor it keeps for this, accepts and
 * closes every waiting connection and takes the descriptor back -- and
 * tells nobody, not even its connection callback (uv__emfile_trick,
 * src/unix/stream.c).  A listener here does the same with a descriptor of
 * its own (reserve), and in addition counts what it dropped
 * (mm_stats_t.tcp_accept_dropped) and says so in the log: at most one
 * line a second per listener, naming it and RLIMIT_NOFILE, with the count
 * since its last line; drops still unreported when it closes get a last
 * line then.
 */
#include "mm-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* A listener's drop reports: at most one line per this many ms. */
#define DROP_REPORT_MS 1000

struct mm_tcp {
  uv_tcp_t h;                 /* h.data = this */
  mm_loop_t *loop;
  bool listening;
  bool closing;               /* uv_close called */
  bool closed;                /* its close callbacks ran */
  bool eof;
  int error;                  /* a read or listen error, kept */
  unsigned handles;           /* libuv handles not yet closed: h, and a
                                 listener's poll */
  mm__wait_t *reader;         /* parked in read */
  char *rbuf;                 /* the parked reader's buffer */
  size_t rlen;
  bool reading;               /* uv_read_start in force */
  char *pend;                 /* data read while no reader was parked */
  size_t pend_len, pend_off;  /* (malloc'ed, PEND_SIZE; freed drained) */
  mm__wait_t *acceptor;       /* parked in accept */
  mm__wait_t *closer;         /* parked in close */
  unsigned inflight;          /* writes and connects not yet answered */
  unsigned quick_writes;      /* writes done at once since one of its
                                 calls last parked (QUICK_WRITES_MAX) */

  /* Listeners only (see "Out of descriptors" above). */
  uv_poll_t poll;             /* the socket, while an acceptor waits;
                                 poll.data = this */
  int reserve;                /* a descriptor kept for running out, or -1 */
  char name[INET6_ADDRSTRLEN + 8];  /* "address:port", for the log */
  uint64_t unreported;        /* connections dropped since the last line */
  uint64_t reported_at;       /* uv_now() at the last line */
  bool reported;              /* a line was written */
  int drop_err;               /* EMFILE or ENFILE, at the last drop */
  char drop_limit[24];        /* RLIMIT_NOFILE's soft value then */
};

/* A coroutine's wait on a handle: cancel callbacks find the handle. */
typedef struct tcp_wait {
  mm__wait_t w;
  mm_tcp_t *t;
  int reason;                 /* the cancellation that closed the handle
                                 under a write or connect (ECANCELED,
                                 ETIMEDOUT), or 0 */
} tcp_wait_t;

static void tcp_wait_init(tcp_wait_t *tw, mm_tcp_t *t,
                          void (*cancel)(mm__wait_t *, int)) {
  mm__wait_init(&tw->w);      /* a coroutine's: cannot fail */
  tw->w.cancel = cancel;
  tw->t = t;
  tw->reason = 0;
}

static mm_tcp_t *tcp_of(mm__wait_t *w) {
  return container_of(w, tcp_wait_t, w)->t;
}

/* A call on a handle that is closing: -ECANCELED, or the calling
 * coroutine's own reason when it is cancelled or past its deadline (its
 * cancelled write or connect may be what closed the handle). */
static int closing_code(void) {
  int reason = mm__coro_cancel_reason(mm__tls.coro);
  return reason != 0 ? -reason : -ECANCELED;
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
  t->handles = 1;
  t->reserve = -1;
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

/* Runs the coroutines that a libuv callback of ours has just made ready,
 * from that callback, rather than in the idle phase of the next loop pass:
 * the drive loop runs uv_run(UV_RUN_ONCE), whose poll does not block when
 * an idle handle was active as the pass began, so waking through the idle
 * costs one more epoll_wait per wake, which finds nothing when the peer
 * is another process (on_async in drive.c does the same for the same
 * reason).  libuv allows what a coroutine may do here: a read of the same
 * stream (libuv goes on reading into its buffer), a write, a close
 * (libuv stops reading and checks for it after the callback). */
static void run_now(mm_loop_t *loop) {
  mm__tls.loop = loop;
  mm__sched_run_ready(loop);
}

/* w's cancel: ends it if it still is in its slot. */
static void cancel_slot(mm__wait_t **slot, mm__wait_t *w, int reason) {
  if (*slot == w) {
    *slot = NULL;
    mm__wait_cancel(w, -reason);
  }
}

/* The close callback of h and of a listener's poll (data: t). */
static void on_closed(uv_handle_t *h) {
  mm_tcp_t *t = h->data;
  if (--t->handles == 0) {
    t->closed = true;
    wake(&t->closer, 0);
  }
}

static void report_drops(mm_tcp_t *srv, bool closing);

/* Starts closing t (once); whoever waits in it gets -ECANCELED.  A
 * listener's poll goes first: it watches the socket h owns. */
static void start_close(mm_tcp_t *t) {
  if (t->closing)
    return;
  t->closing = true;
  wake(&t->reader, -ECANCELED);
  wake(&t->acceptor, -ECANCELED);
  if (t->handles == 2)
    uv_close((uv_handle_t *) &t->poll, on_closed);
  uv_close((uv_handle_t *) &t->h, on_closed);
  if (t->listening)
    report_drops(t, true);
  if (t->reserve >= 0) {
    close(t->reserve);
    t->reserve = -1;
  }
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
  free(t->pend);
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
    int reason = mm__coro_stop_reason(mm__tls.coro);
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

static int reserve_open(void) {
  return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* A line for the drops since the last one: at once for a listener's first
 * drop, then at most one line per DROP_REPORT_MS; a listener that closes
 * writes what it has not reported yet. */
static void report_drops(mm_tcp_t *srv, bool closing) {
  uint64_t now = uv_now(srv->loop->uv);
  if (srv->unreported == 0 ||
      (!closing && srv->reported && now - srv->reported_at < DROP_REPORT_MS))
    return;
  mm__log(MM_LOG_WARN, "tcp listener %s dropped %" PRIu64 " connection%s%s: "
          "out of file descriptors (%s: %s; RLIMIT_NOFILE %s): each was "
          "accepted and closed at once", srv->name, srv->unreported,
          srv->unreported == 1 ? "" : "s",
          srv->reported ? " since its last report" : "",
          srv->drop_err == ENFILE ? "ENFILE" : "EMFILE",
          mm_strerror(-srv->drop_err), srv->drop_limit);
  srv->reported = true;
  srv->reported_at = now;
  srv->unreported = 0;
}

/* accept(2) on fd failed with err (EMFILE, ENFILE): frees the reserve,
 * accepts and closes every waiting connection, and takes the reserve
 * back.  True once the queue is empty; false if it could not be emptied
 * (no reserve to be had, or another thread took the descriptor freed). */
static bool drop_waiting(mm_tcp_t *srv, int fd, int err) {
  if (srv->reserve < 0 && (srv->reserve = reserve_open()) < 0)
    return false;
  close(srv->reserve);
  uint64_t n = 0;
  int e;
  for (;;) {
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c >= 0) {
      close(c);
      n++;
    } else if ((e = errno) != EINTR && e != ECONNABORTED) {
      break;
    }
  }
  srv->reserve = reserve_open();
  bool emptied = e == EAGAIN || e == EWOULDBLOCK;
  if (n == 0)
    return emptied;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    snprintf(srv->drop_limit, sizeof srv->drop_limit, "unknown");
  else if (rl.rlim_cur == RLIM_INFINITY)
    snprintf(srv->drop_limit, sizeof srv->drop_limit, "unlimited");
  else
    snprintf(srv->drop_limit, sizeof srv->drop_limit, "%llu",
             (unsigned long long) rl.rlim_cur);
  srv->drop_err = err;
  srv->unreported += n;
  mm__counter_add(&srv->loop->tcp_accept_dropped, (int64_t) n);
  report_drops(srv, false);
  return emptied;
}

/* The next connection of srv's queue as a handle: 0 and *conn, -EAGAIN
 * when the queue is empty, or an error. */
static int accept_one(mm_tcp_t *srv, mm_tcp_t **conn) {
  int lfd, r = uv_fileno((uv_handle_t *) &srv->h, &lfd);
  if (r != 0)
    return r;
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EINTR || e == ECONNABORTED)
        continue;
      /* Linux looks for a free descriptor before it looks at the queue:
       * out of them, accept fails whether a connection waits or not. */
      if ((e == EMFILE || e == ENFILE) && drop_waiting(srv, lfd, e))
        return -EAGAIN;       /* emptied: wait for the next one */
      return e == EWOULDBLOCK ? -EAGAIN : -e;
    }
    mm_tcp_t *c = tcp_new(srv->loop, &r);
    if (c != NULL && (r = uv_tcp_open(&c->h, fd)) != 0)
      close_and_free(c);
    if (r != 0) {
      close(fd);
      return r;
    }
    *conn = c;
    return 0;
  }
}

/* The listener's socket is readable (or failed): wake the acceptor, which
 * accepts itself.  Watched only while it waits. */
static void on_listener_ready(uv_poll_t *p, int status, int events) {
  mm_tcp_t *srv = p->data;
  (void) events;
  uv_poll_stop(p);
  if (status < 0)
    srv->error = status;
  wake(&srv->acceptor, status < 0 ? status : 0);
  run_now(srv->loop);
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

/* "address:port" of the socket fd is bound to, for the log. */
static void listener_name(mm_tcp_t *t, int fd) {
  struct sockaddr_storage a;
  socklen_t len = sizeof a;
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (getsockname(fd, (struct sockaddr *) &a, &len) == 0) {
    if (a.ss_family == AF_INET6) {
      const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *) &a;
      uv_ip6_name(a6, host, sizeof host);
      port = ntohs(a6->sin6_port);
    } else {
      const struct sockaddr_in *a4 = (const struct sockaddr_in *) &a;
      uv_ip4_name(a4, host, sizeof host);
      port = ntohs(a4->sin_port);
    }
  }
  snprintf(t->name, sizeof t->name,
           a.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
}

/* A listening socket: made, bound and listening here (accept is ours,
 * see "Out of descriptors"), then handed to t->h, which owns it. */
static int listen_socket(mm_tcp_t *t, const struct sockaddr *addr,
                         int backlog, int *fd_out) {
  socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                  0);
  if (fd < 0)
    return -errno;
  int on = 1;
  int r = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
      bind(fd, (const struct sockaddr *) addr, len) != 0 ||
      listen(fd, backlog > 0 ? backlog : 128) != 0)
    r = -errno;
  if (r == 0)
    r = uv_tcp_open(&t->h, fd);
  if (r != 0) {
    close(fd);
    return r;
  }
  *fd_out = fd;
  return 0;
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
  int fd = -1;
  r = UV_EAI_NONAME;
  for (int i = 0; (sa = addr_at(&addrs, i)) != NULL; i++) {
    if ((t = tcp_new(loop, &r)) == NULL)
      break;
    r = listen_socket(t, sa, backlog, &fd);
    if (r == 0)
      r = uv_poll_init(t->loop->uv, &t->poll, fd);
    if (r == 0)
      break;
    close_and_free(t);
    t = NULL;
  }
  addrs_free(&addrs);
  if (t == NULL)
    return r;
  t->poll.data = t;
  t->handles = 2;
  t->listening = true;
  /* Without a reserve (none to be had now) an accept out of descriptors
   * tries again to make one, and returns -EMFILE if it cannot. */
  t->reserve = reserve_open();
  listener_name(t, fd);
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
  mm_tcp_t *srv = tcp_of(w);
  if (!srv->closing)
    uv_poll_stop(&srv->poll);
  cancel_slot(&srv->acceptor, w, reason);
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
  for (;;) {
    if (srv->closing)
      return closing_code();
    if (srv->error != 0)
      return srv->error;
    r = accept_one(srv, conn);
    if (r != -EAGAIN)
      return r;
    r = uv_poll_start(&srv->poll, UV_READABLE, on_listener_ready);
    if (r != 0)
      return r;
    tcp_wait_t tw;
    tcp_wait_init(&tw, srv, accept_cancel);
    srv->acceptor = &tw.w;
    r = mm__wait_block(&tw.w);
    if (r != 0)
      return r;
  }
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
 * callback then comes with UV_ECANCELED, which stream_op_wait turns into
 * the coroutine's reason. */
static void stream_op_cancel(mm__wait_t *w, int reason) {
  container_of(w, tcp_wait_t, w)->reason = reason;
  start_close(tcp_of(w));
}

/* Waits for op's callback.  A write or connect that the coroutine's
 * cancellation or deadline cut short returns -ECANCELED or -ETIMEDOUT, as
 * every waiting call does; one that completed first keeps its status. */
static int stream_op_wait(stream_op_t *op) {
  int r = mm__wait_block(&op->tw.w);
  if (r == UV_ECANCELED && op->tw.reason != 0)
    r = -op->tw.reason;
  return r;
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
    r = stream_op_wait(&op);
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

/* Reading stays on between reads, so that a connection read again and
 * again costs no epoll_ctl pair per read: once started by the first
 * mm_tcp_read it runs until data comes while nobody reads.  libuv reads
 * into the parked reader's own buffer (no copy) when there is one; when
 * there is none (between two reads, or after a read that gave up at a
 * deadline), into pend, once, and then reading stops -- back-pressure:
 * the peer is held by TCP's window until a read takes what is in pend
 * (a copy) and starts reading again. */
#define PEND_SIZE 65536

/* Writes done at once, in a row, on one handle, before one goes through
 * uv_write and parks until libuv's next pass. */
#define QUICK_WRITES_MAX 64

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  mm_tcp_t *t = h->data;
  (void) hint;
  if (t->reader != NULL) {
    *buf = uv_buf_init(t->rbuf, (unsigned) t->rlen);
    return;
  }
  if (t->pend == NULL && (t->pend = malloc(PEND_SIZE)) == NULL) {
    *buf = uv_buf_init(NULL, 0);        /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(t->pend, t->pend_len == 0 ? PEND_SIZE : 0);
}

static void stop_reading(mm_tcp_t *t) {
  if (t->reading) {
    uv_read_stop((uv_stream_t *) &t->h);
    t->reading = false;
  }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mm_tcp_t *t = s->data;
  if (n == 0) {               /* nothing this time (EAGAIN) */
    if (buf->base == t->pend && t->pend_len == 0) {
      free(t->pend);          /* an idle connection keeps no buffer */
      t->pend = NULL;
    }
    return;
  }
  if (n > 0 && buf->base != t->pend) {
    wake(&t->reader, (int) n);          /* into the reader's buffer */
    run_now(t->loop);
    return;
  }
  if (n > 0) {
    t->pend_len = (size_t) n;           /* kept for the next read */
    t->pend_off = 0;
    stop_reading(t);
    return;
  }
  stop_reading(t);
  if (t->pend_len == 0) {
    free(t->pend);              /* allocated for a read that had nothing */
    t->pend = NULL;
  }
  if (n == UV_EOF) {
    t->eof = true;
    n = 0;
  } else {
    t->error = (int) n;
  }
  wake(&t->reader, (int) n);
  run_now(t->loop);
}

static void read_cancel(mm__wait_t *w, int reason) {
  mm_tcp_t *t = tcp_of(w);
  /* Reading goes on: what comes meanwhile waits in pend. */
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
    return closing_code();
  if (c->pend_len > 0) {
    /* Data that came while nobody read: a copy, then reading again. */
    size_t n = c->pend_len < len ? c->pend_len : len;
    memcpy(buf, c->pend + c->pend_off, n);
    c->pend_off += n;
    c->pend_len -= n;
    if (c->pend_len == 0) {
      free(c->pend);
      c->pend = NULL;
    }
    return (ssize_t) n;
  }
  if (c->eof)
    return 0;
  if (c->error != 0)
    return c->error;
  int reason = mm__coro_stop_reason(mm__tls.coro);
  if (reason != 0)
    return -reason;
  tcp_wait_t tw;
  tcp_wait_init(&tw, c, read_cancel);
  c->rbuf = buf;
  c->rlen = len > INT_MAX ? INT_MAX : len;
  if (!c->reading) {
    r = uv_read_start((uv_stream_t *) &c->h, on_alloc, on_read);
    if (r != 0)
      return r;
    c->reading = true;
  }
  c->reader = &tw.w;
  c->quick_writes = 0;
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
    return closing_code();
  if (len == 0)
    return 0;
  if (len > UINT_MAX)
    return -EINVAL;
  /* Most writes go out whole at once: uv_try_write, and no request, no
   * park and no write callback (whose uv__drain costs libuv an epoll_ctl
   * on the next poll).  uv_write takes what it leaves, and every write
   * while another is queued (try_write says EAGAIN then: order is kept).
   * A coroutine with a cancel or deadline pending takes uv_write's way,
   * which ends its write as any cancelled write ends.  So does every
   * QUICK_WRITES_MAX-th write in a row that did not park: a coroutine
   * writing to a peer that keeps up would otherwise never let the loop
   * run anything else. */
  uv_buf_t b = uv_buf_init((char *) buf, (unsigned) len);
  if (c->quick_writes < QUICK_WRITES_MAX &&
      mm__coro_stop_reason(mm__tls.coro) == 0) {
    int w = uv_try_write((uv_stream_t *) &c->h, &b, 1);
    if (w >= 0 && (size_t) w == len) {
      c->quick_writes++;
      return 0;
    }
    if (w < 0 && w != UV_EAGAIN)
      return w;
    if (w > 0)
      b = uv_buf_init((char *) buf + w, (unsigned) (len - (size_t) w));
  }
  c->quick_writes = 0;
  stream_op_t op;
  tcp_wait_init(&op.tw, c, stream_op_cancel);
  r = uv_write(&op.req.write, (uv_stream_t *) &c->h, &b, 1, on_write);
  if (r != 0)
    return r;
  c->inflight++;
  return stream_op_wait(&op);
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
