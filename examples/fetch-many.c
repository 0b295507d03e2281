/* fetch-many: ten HTTP GETs at once with libcurl's multi interface, each
 * one written as a plain blocking call in a coroutine.
 *
 *   - fetch(url, &res) makes one curl transfer look like a blocking call:
 *     it returns when the body is in, or with the error that cut it.  In a
 *     coroutine it suspends only that coroutine while the loop serves the
 *     others; it honours the caller's cancellation and deadlines
 *     (mm_deadline_push) and cleans up its curl handles whatever ended it.
 *     On a plain thread it blocks that thread in poll(2): mm_wait_fd is
 *     colour-blind, so fetch is too.
 *   - The main coroutine fetches N URLs (10) in parallel, one child of a
 *     group each (mm_group_spawn, mm_group_wait), under one deadline for
 *     the whole batch (mm_deadline_push); then the same N one after
 *     another; and prints both times and their ratio.
 *   - --serve is the local server it fetches from, on mixmode's TCP: each
 *     answer is delayed (100 ms), so that parallel and sequential differ.
 *
 * How a transfer is driven, and why this way.  Each fetch has its own
 * multi handle, served by the coroutine that called fetch: curl's socket
 * callback puts the transfer's sockets in an epoll set of its own, its
 * timer callback arms a timerfd in the same set, and the coroutine waits
 * for the epoll descriptor with mm_wait_fd, then tells curl what is ready
 * (curl_multi_socket_action).  The other way -- one multi per loop,
 * driven by libuv handles, each fetch parked in mm_await until a curl
 * callback wakes it -- shares connections between fetches, but puts the
 * transfer's life on the loop's callbacks: a cancel has to reach the
 * transfer through an on_cancel that must not remove a handle from
 * inside curl, and the fetch has to wait for a wake that reports the
 * removal.  Here the whole transfer is straight-line code on the caller's
 * stack: whatever ends the wait (a cancel, a deadline, the group's
 * cancellation) the code after it removes the handle and frees it, and
 * -ECANCELED or -ETIMEDOUT comes out of mm_wait_fd as from any waiting
 * call.  The epoll set is there because curl may watch several sockets
 * for one transfer (the threaded resolver's socketpair, happy eyeballs'
 * two connects) while a coroutine waits for one descriptor; the timerfd,
 * so that mm_wait_fd needs no timeout of its own and every -ETIMEDOUT it
 * returns is the caller's.  The price: no connection reuse between
 * fetches (a multi keeps its own cache) and three descriptors per
 * transfer; epoll and timerfd are Linux's.
 *
 *   fetch-many --serve [--port N] [--host ADDR] [--delay MS]
 *       serves GET /item/I (I < 1000): a body of 32768 + 4099 * I bytes
 *       made from I, after MS ms (100).  The first line on stdout is
 *       "port N"; it serves until its stdin ends, then prints "served R
 *       requests" and exits 0.
 *   fetch-many --port N [--host ADDR] [--count N] [--deadline MS]
 *       fetches /item/0 .. /item/N-1 (10; at most 100) from the server,
 *       in parallel under a deadline of MS ms (10000), then one after
 *       another (no deadline); a line per fetch, then per batch
 *         parallel: K of N intact in X ms, cpu Y ms
 *         sequential: K of N intact in X ms, cpu Y ms
 *         ratio: sequential / parallel = R
 *       Every body is checked against the one the server makes.  Exits 0
 *       when all 2N arrived intact; 3 when the deadline cut the parallel
 *       batch, every fetch it cut said ETIMEDOUT and every other arrived
 *       intact; 1 on any other failure; 2 on bad arguments.
 *
 * What it does not do: HTTPS, keep-alive on the server, request bodies.
 */
#define _GNU_SOURCE             /* memmem, strerrorname_np */
#include <mixmode.h>
#include <curl/curl.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_COUNT 100           /* URLs a batch may fetch */
#define MAX_ITEM  1000          /* the server's items: /item/0 .. 999 */
#define MAX_BODY  (8u << 20)    /* fetch refuses a bigger body */

static struct {
  bool        serve;
  const char *host;
  int         port;             /* -1: not given */
  unsigned    delay_ms;
  unsigned    count;
  unsigned    deadline_ms;
} opt = { false, "127.0.0.1", -1, 100, 10, 10000 };

static mm_loop_t *loop;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* CPU time of the whole process so far (user + system), in ms. */
static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

/* ---- The bodies: made from the item's number, by both sides ------------ */

static size_t body_len(unsigned item) {
  return 32768 + 4099 * (size_t)item;
}

/* Fills p with item's body: lowercase letters from a xorshift generator
 * seeded by the item, a newline every 64 bytes. */
static void body_make(unsigned item, char *p) {
  uint32_t x = 2463534242u ^ (item * 2654435761u);
  size_t n = body_len(item);
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = i % 64 == 63 ? '\n' : (char)('a' + x % 26);
  }
}

/* ---- fetch: one transfer as a blocking call ---------------------------- */

typedef struct fetch_result {
  long   status;                /* the HTTP status code */
  char  *body;                  /* malloc'd, NUL-terminated; free() it */
  size_t len;                   /* bytes of body, without the NUL */
  char   error[CURL_ERROR_SIZE];  /* curl's words when it failed, or "" */
} fetch_result_t;

/* A transfer under way: on the stack of the coroutine in fetch.  Only
 * that coroutine touches it, in fetch and in the callbacks curl makes
 * from the calls fetch makes. */
typedef struct transfer {
  CURLM          *multi;
  CURL           *easy;
  int             epfd;         /* curl's sockets and tfd */
  int             tfd;          /* curl's timer */
  int             error;        /* a callback's failure, for fetch */
  fetch_result_t *res;
  size_t          cap;          /* bytes allocated at res->body */
} transfer_t;

/* CURLMOPT_SOCKETFUNCTION: curl says which events it wants on socket s
 * (or that it is done with s); the epoll set follows. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp,
                     void *socketp) {
  (void)easy;
  (void)socketp;
  transfer_t *t = userp;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, s, NULL);   /* closed already: gone */
    return 0;
  }
  struct epoll_event ev = {
    .events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
              ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u),
    .data.fd = s,
  };
  if (epoll_ctl(t->epfd, EPOLL_CTL_MOD, s, &ev) == 0)
    return 0;
  if (errno == ENOENT && epoll_ctl(t->epfd, EPOLL_CTL_ADD, s, &ev) == 0)
    return 0;
  t->error = -errno;
  return -1;                    /* curl fails the call that got here */
}

/* CURLMOPT_TIMERFUNCTION: curl wants a curl_multi_socket_action with
 * CURL_SOCKET_TIMEOUT in ms ms (0: at once; -1: never).  A timerfd, so
 * that its expiry is one more descriptor of the set. */
static int on_timer(CURLM *multi, long ms, void *userp) {
  (void)multi;
  transfer_t *t = userp;
  struct itimerspec its = { { 0, 0 }, { 0, 0 } };      /* -1: disarmed */
  if (ms >= 0) {
    its.it_value.tv_sec = ms / 1000;
    its.it_value.tv_nsec = ms % 1000 * 1000000L;
    if (ms == 0)
      its.it_value.tv_nsec = 1;         /* all zero would disarm it */
  }
  if (timerfd_settime(t->tfd, 0, &its, NULL) == 0)
    return 0;
  t->error = -errno;
  return -1;
}

/* CURLOPT_WRITEFUNCTION: the body, appended to res->body. */
static size_t on_data(char *data, size_t size, size_t n, void *userp) {
  transfer_t *t = userp;
  fetch_result_t *res = t->res;
  size_t len = size * n;
  if (len > MAX_BODY - res->len) {
    t->error = -EMSGSIZE;
    return 0;                           /* curl stops: CURLE_WRITE_ERROR */
  }
  if (res->len + len + 1 > t->cap) {
    size_t cap = t->cap > 0 ? t->cap : 16384;
    while (cap < res->len + len + 1)
      cap *= 2;
    char *p = realloc(res->body, cap);
    if (p == NULL) {
      t->error = -ENOMEM;
      return 0;
    }
    res->body = p;
    t->cap = cap;
  }
  memcpy(res->body + res->len, data, len);
  res->len += len;
  res->body[res->len] = '\0';
  return len;
}

/* What a failed transfer's curl code means, as a negative errno value. */
static int from_curl(CURLcode c) {
  switch (c) {
  case CURLE_OK:                   return 0;
  case CURLE_OUT_OF_MEMORY:        return -ENOMEM;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL: return -EINVAL;
  case CURLE_COULDNT_RESOLVE_HOST: return -EHOSTUNREACH;
  case CURLE_COULDNT_CONNECT:      return -ECONNREFUSED;
  case CURLE_OPERATION_TIMEDOUT:   return -ETIMEDOUT;
  case CURLE_WEIRD_SERVER_REPLY:   return -EPROTO;
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:           return -ECONNRESET;
  default:                         return -EIO;
  }
}

/* Tells curl what the epoll set found ready.  0, or a negative errno
 * value; *running gets the number of transfers still going (0 or 1). */
static int drive(transfer_t *t, int *running) {
  struct epoll_event evs[8];
  int n = epoll_wait(t->epfd, evs, 8, 0);
  if (n < 0)
    return errno == EINTR ? 0 : -errno;
  for (int i = 0; i < n; i++) {
    CURLMcode mc;
    if (evs[i].data.fd == t->tfd) {
      /* Read first: a timer curl sets in the action below must stay
       * armed.  EAGAIN (a socket's action above re-armed it) is fine:
       * an extra timeout action only makes curl look at its timers. */
      uint64_t expirations;
      if (read(t->tfd, &expirations, sizeof expirations) < 0 &&
          errno != EAGAIN)
        return -errno;
      mc = curl_multi_socket_action(t->multi, CURL_SOCKET_TIMEOUT, 0,
                                    running);
    } else {
      uint32_t e = evs[i].events;
      int flags = ((e & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                  ((e & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                  ((e & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
      mc = curl_multi_socket_action(t->multi, evs[i].data.fd, flags,
                                    running);
    }
    if (mc != CURLM_OK)
      return t->error < 0 ? t->error
           : mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO;
  }
  return 0;
}

/* GETs url.  Returns 0 with res->status and res->body set (any status:
 * the caller judges it), or a negative errno value with res->body NULL:
 * -ECANCELED or -ETIMEDOUT when the caller was cancelled or its deadline
 * passed (mm_wait_fd's errors), -ECONNREFUSED, -EHOSTUNREACH, -ECONNRESET,
 * -EPROTO, -EMSGSIZE (a body over MAX_BODY), -ENOMEM, -EIO (res->error
 * then has curl's words).  In a coroutine, or on a plain thread (it then
 * blocks); -EDEADLK on a loop's thread outside coroutines.  curl_global_init
 * must have been called. */
static int fetch(const char *url, fetch_result_t *res) {
  memset(res, 0, sizeof *res);
  transfer_t t = { .epfd = -1, .tfd = -1, .res = res };
  int r = 0;
  if ((t.epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
      (t.tfd = timerfd_create(CLOCK_MONOTONIC,
                              TFD_NONBLOCK | TFD_CLOEXEC)) < 0) {
    r = -errno;
    goto err_fds;
  }
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = t.tfd };
  if (epoll_ctl(t.epfd, EPOLL_CTL_ADD, t.tfd, &ev) < 0) {
    r = -errno;
    goto err_fds;
  }
  if ((t.multi = curl_multi_init()) == NULL ||
      (t.easy = curl_easy_init()) == NULL) {
    r = -ENOMEM;
    goto err_curl;
  }
  curl_multi_setopt(t.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(t.multi, CURLMOPT_SOCKETDATA, &t);
  curl_multi_setopt(t.multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(t.multi, CURLMOPT_TIMERDATA, &t);
  curl_easy_setopt(t.easy, CURLOPT_URL, url);
  curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(t.easy, CURLOPT_ERRORBUFFER, res->error);
  curl_easy_setopt(t.easy, CURLOPT_NOSIGNAL, 1L);    /* no SIGALRM */
  /* Adding calls on_timer(0): the first wait answers at once. */
  if (curl_multi_add_handle(t.multi, t.easy) != CURLM_OK) {
    r = t.error < 0 ? t.error : -ENOMEM;
    goto err_curl;
  }

  int running = 1;
  while (running > 0) {
    r = mm_wait_fd(t.epfd, MM_READABLE, 0);
    if (r < 0)
      break;                    /* cancelled, or past a deadline: give up */
    if ((r = drive(&t, &running)) < 0)
      break;
  }
  if (r == 0) {
    int left;
    CURLMsg *m = curl_multi_info_read(t.multi, &left);
    CURLcode c = m != NULL && m->msg == CURLMSG_DONE ? m->data.result
                                                     : CURLE_RECV_ERROR;
    /* A refusal of on_data ends as CURLE_WRITE_ERROR: its reason wins. */
    r = c == CURLE_OK ? 0 : t.error < 0 ? t.error : from_curl(c);
    if (r == 0)
      curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &res->status);
  }
  curl_multi_remove_handle(t.multi, t.easy);

err_curl:
  /* Whatever ended the transfer: the easy handle, then the multi, which
   * closes the connection (telling on_socket, while epfd is still open). */
  if (t.easy != NULL)
    curl_easy_cleanup(t.easy);
  if (t.multi != NULL)
    curl_multi_cleanup(t.multi);
err_fds:
  if (t.tfd >= 0)
    close(t.tfd);
  if (t.epfd >= 0)
    close(t.epfd);
  if (r < 0) {
    free(res->body);
    res->body = NULL;
    res->len = 0;
  } else if (res->body == NULL && (res->body = strdup("")) == NULL) {
    r = -ENOMEM;                /* an empty body: still a string */
  }
  return r;
}

/* ---- The batches ------------------------------------------------------- */

typedef struct slot {
  unsigned       item;
  char           url[128];
  int            r;             /* fetch's value */
  fetch_result_t res;
} slot_t;

/* A group's child: one fetch.  Its status is the group's: the first
 * fetch to fail cancels the others. */
static int fetch_child(void *arg) {
  slot_t *s = arg;
  s->r = fetch(s->url, &s->res);
  return s->r;
}

/* "NAME: text" for a negative errno value r, in buf. */
static const char *err_text(int r, char *buf, size_t cap) {
  const char *name = strerrorname_np(-r), *text = mm_strerror(r);
  if (name == NULL || strncmp(text, name, strlen(name)) == 0)
    snprintf(buf, cap, "%s", text);     /* the library's text names it */
  else
    snprintf(buf, cap, "%s: %s", name, text);
  return buf;
}

/* Prints the slot's line; true if its body arrived intact. */
static bool report(const char *batch, slot_t *s, char *expected) {
  printf("%s /item/%u: ", batch, s->item);
  bool intact = false;
  if (s->r < 0) {
    char why[256];
    printf("failed: %s%s%s\n", err_text(s->r, why, sizeof why),
           s->res.error[0] != '\0' ? "; curl: " : "", s->res.error);
  } else if (s->res.status != 200) {
    printf("HTTP %ld\n", s->res.status);
  } else {
    body_make(s->item, expected);
    intact = s->res.len == body_len(s->item) &&
             memcmp(s->res.body, expected, s->res.len) == 0;
    printf("200, %zu bytes, %s\n", s->res.len, intact ? "intact" : "CORRUPT");
  }
  free(s->res.body);
  s->res.body = NULL;
  return intact;
}

/* expected: room for the largest body. */
static unsigned report_all(const char *batch, slot_t *slots, unsigned n,
                           double ms, double cpu, char *expected) {
  unsigned intact = 0;
  for (unsigned i = 0; i < n; i++)
    if (report(batch, &slots[i], expected))
      intact++;
  printf("%s: %u of %u intact in %.1f ms, cpu %.1f ms\n", batch, intact, n,
         ms, cpu);
  return intact;
}

/* The parallel batch: a child per URL, under one deadline for all.
 * Returns mm_group_wait's value: -ETIMEDOUT if the deadline cut it. */
static int parallel(slot_t *slots, unsigned n) {
  int r = mm_deadline_push(opt.deadline_ms);
  if (r < 0)
    return r;
  mm_group_t *g;
  r = mm_group_new(loop, &g);
  if (r == 0) {
    for (unsigned i = 0; i < n && r == 0; i++)
      r = mm_group_spawn(g, fetch_child, &slots[i]);
    int waited = mm_group_wait(g);      /* all that started, in any case */
    r = r < 0 ? r : waited;
  }
  mm_deadline_pop();
  /* A deadline is not inherited: it reaches the children as the group's
   * cancellation, so a fetch it cut says -ECANCELED.  Say what cut it. */
  if (r == -ETIMEDOUT)
    for (unsigned i = 0; i < n; i++)
      if (slots[i].r == -ECANCELED)
        slots[i].r = -ETIMEDOUT;
  return r;
}

static int client(void *arg) {
  (void)arg;
  unsigned n = opt.count;
  slot_t *slots = calloc(n, sizeof *slots);
  char *expected = malloc(body_len(MAX_ITEM));
  if (slots == NULL || expected == NULL) {
    free(slots);
    free(expected);
    return -ENOMEM;
  }
  for (unsigned i = 0; i < n; i++) {
    slots[i].item = i;
    snprintf(slots[i].url, sizeof slots[i].url, "http://%s:%d/item/%u",
             opt.host, opt.port, i);
    slots[i].r = -ECANCELED;    /* a child that never ran */
  }

  double t0 = now_ms(), c0 = cpu_ms();
  int pr = parallel(slots, n);
  double par_ms = now_ms() - t0, par_cpu = cpu_ms() - c0;
  if (pr < 0 && pr != -ETIMEDOUT)
    printf("parallel: the batch failed: %s\n",
           err_text(pr, (char[256]){ 0 }, 256));
  else if (pr == -ETIMEDOUT)
    printf("parallel: cut by its deadline of %u ms\n", opt.deadline_ms);
  unsigned par_ok = report_all("parallel", slots, n, par_ms, par_cpu,
                               expected);
  bool cut_clean = true;       /* every fetch the deadline cut said so */
  for (unsigned i = 0; i < n; i++)
    if (slots[i].r < 0 && slots[i].r != -ETIMEDOUT)
      cut_clean = false;

  t0 = now_ms();
  c0 = cpu_ms();
  for (unsigned i = 0; i < n; i++)
    slots[i].r = fetch(slots[i].url, &slots[i].res);
  double seq_ms = now_ms() - t0, seq_cpu = cpu_ms() - c0;
  unsigned seq_ok = report_all("sequential", slots, n, seq_ms, seq_cpu,
                               expected);
  free(slots);
  free(expected);

  if (par_ok == n && seq_ok == n) {
    printf("ratio: sequential / parallel = %.2f\n", seq_ms / par_ms);
    return 0;
  }
  printf("ratio: none (not every fetch arrived intact)\n");
  if (pr == -ETIMEDOUT && cut_clean && seq_ok == n)
    return 3;
  return 1;
}

/* ---- The server -------------------------------------------------------- */

static unsigned served;         /* requests answered; loop thread only */

static void answer(mm_tcp_t *c, const char *status, const char *text) {
  char buf[256];
  int n = snprintf(buf, sizeof buf, "HTTP/1.1 %s\r\nContent-Type: "
                   "text/plain\r\nContent-Length: %zu\r\nConnection: close"
                   "\r\n\r\n%s", status, strlen(text), text);
  mm_tcp_write(c, buf, (size_t)n);
}

/* One connection: a request, the delay, the answer, close. */
static int serve_conn(void *arg) {
  mm_tcp_t *c = arg;
  char req[4096];
  size_t len = 0;
  while (memmem(req, len, "\r\n\r\n", 4) == NULL) {
    size_t room = sizeof req - 1 - len;         /* one byte for the NUL */
    ssize_t n = room > 0 ? mm_tcp_read(c, req + len, room) : -EMSGSIZE;
    if (n <= 0) {
      mm_tcp_close(c);
      return 0;
    }
    len += (size_t)n;
  }
  req[len] = '\0';                              /* for sscanf */
  unsigned item;
  char end;
  if (sscanf(req, "GET /item/%u%c", &item, &end) != 2 || end != ' ' ||
      item >= MAX_ITEM) {
    answer(c, "404 Not Found", "GET /item/N, N < 1000\n");
    mm_tcp_close(c);
    return 0;
  }
  if (mm_sleep(opt.delay_ms) < 0) {     /* the server is stopping */
    mm_tcp_close(c);
    return 0;
  }
  /* The head and the body in one write. */
  size_t blen = body_len(item);
  char *out = malloc(128 + blen);
  if (out == NULL) {
    answer(c, "500 Internal Server Error", "out of memory\n");
  } else {
    int n = snprintf(out, 128, "HTTP/1.1 200 OK\r\nContent-Type: text/plain"
                     "\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                     blen);
    body_make(item, out + n);
    if (mm_tcp_write(c, out, (size_t)n + blen) == 0)
      served++;
    free(out);
  }
  mm_tcp_close(c);
  return 0;
}

/* Ends the server at the end of stdin: the loop's stop cancels every
 * coroutine, the accept included. */
static int watch_stdin(void *arg) {
  (void)arg;
  for (;;) {
    if (mm_wait_fd(STDIN_FILENO, MM_READABLE, 0) < 0)
      break;                    /* cancelled: stopping anyway */
    char buf[256];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      break;
  }
  mm_loop_stop(loop);
  return 0;
}

static int server(void *arg) {
  (void)arg;
  mm_tcp_t *srv;
  int r = mm_tcp_listen(&srv, opt.host, opt.port, 128);
  if (r < 0) {
    fprintf(stderr, "fetch-many: listen on %s:%d: %s\n", opt.host,
            opt.port, mm_strerror(r));
    return r;
  }
  printf("port %d\n", mm_tcp_port(srv));
  fflush(stdout);
  r = mm_spawn(loop, watch_stdin, NULL, NULL);
  while (r == 0) {
    mm_tcp_t *c;
    r = mm_tcp_accept(srv, &c);
    if (r == -ECANCELED)
      break;                    /* stopped: stdin ended */
    if (r < 0) {
      r = 0;                    /* that connection failed, not the server */
      continue;
    }
    mm_tcp_nodelay(c, true);
    if (mm_spawn(loop, serve_conn, c, NULL) < 0)     /* detached */
      mm_tcp_close(c);
  }
  mm_tcp_close(srv);
  printf("served %u requests\n", served);
  return r == -ECANCELED ? 0 : r;
}

/* ---- Start ------------------------------------------------------------- */

static int usage(void) {
  fprintf(stderr,
          "usage: fetch-many --serve [--port N] [--host ADDR] [--delay MS]\n"
          "       fetch-many --port N [--host ADDR] [--count N] "
          "[--deadline MS]\n");
  return 2;
}

/* s as a number in [min, max], or -1. */
static long number(const char *s, long min, long max) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  return errno == 0 && end != s && *end == '\0' && v >= min && v <= max
             ? v : -1;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long x = 0;
    if (strcmp(a, "--serve") == 0) {
      opt.serve = true;
      continue;
    }
    if (v == NULL)
      return usage();
    i++;
    if (strcmp(a, "--host") == 0)
      opt.host = v;
    else if (strcmp(a, "--port") == 0 && (x = number(v, 0, 65535)) >= 0)
      opt.port = (int)x;
    else if (strcmp(a, "--delay") == 0 &&
             (x = number(v, 0, 60000)) >= 0)
      opt.delay_ms = (unsigned)x;
    else if (strcmp(a, "--count") == 0 &&
             (x = number(v, 1, MAX_COUNT)) >= 0)
      opt.count = (unsigned)x;
    else if (strcmp(a, "--deadline") == 0 &&
             (x = number(v, 1, INT_MAX)) >= 0)
      opt.deadline_ms = (unsigned)x;
    else
      return usage();
  }
  if (opt.serve && opt.port < 0)
    opt.port = 0;               /* any free port */
  if (!opt.serve && opt.port <= 0)
    return usage();             /* the client needs the server's port */

  signal(SIGPIPE, SIG_IGN);     /* a peer gone: a write error, not a death */
  if (!opt.serve && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "fetch-many: curl_global_init failed\n");
    return 1;
  }
  int r = mm_loop_new(&loop, NULL);
  mm_coro_t *main_coro = NULL;
  if (r == 0)
    r = mm_spawn(loop, opt.serve ? server : client, NULL, &main_coro);
  if (r == 0) {
    mm_loop_run(loop);
    r = mm_join(main_coro);
  }
  if (r < 0)
    fprintf(stderr, "fetch-many: %s\n", mm_strerror(r));
  if (loop != NULL)
    mm_loop_free(loop);
  if (!opt.serve)
    curl_global_cleanup();
  return r == 0 || r == 3 ? r : 1;
}
