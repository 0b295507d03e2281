/* long-poll: an HTTP long-poll server, one coroutine per waiting client,
 * fed by a plain thread.
 *
 *   - Each connection is a coroutine on mm_tcp.  It reads a request,
 *     "GET /wait", then parks until a notification comes, answers 200 with
 *     its text and closes.  A thousand parked clients cost a thousand
 *     small stacks and no thread.
 *   - Notifications come from a plain thread (a pthread that is not the
 *     loop's) through a channel: mm_chan_send blocks that thread only if
 *     the channel is full.  One coroutine on the loop, the fan-out,
 *     receives them with mm_chan_recv and hands each one to every client
 *     parked at that moment.
 *
 * The design of the fan-out, the simplest correct one found: the parked
 * clients are a list of waiter records, each on its coroutine's stack.
 * Everything that touches the list -- the clients, the fan-out, the
 * listener -- runs on the loop's one thread, so it needs no lock.  A
 * client links its record, then mm_await()s; the fan-out takes the whole
 * list, copies the text into each record, unlinks it and mm_wake()s its
 * coroutine.  A wake that lands before the client reached mm_await is
 * kept by the library, so none is lost; a record is unlinked before its
 * wake, so the fan-out never wakes a coroutine that has ended.  A client
 * cancelled while parked (its on_cancel wakes itself) unlinks its own
 * record.  When the channel is closed, the fan-out answers whoever is
 * left with 503 and closes the listener, and the loop runs out of work.
 *
 *   long-poll [--port N] [--host ADDR]
 *       serves; the first line on stdout is "port N".  Each line read
 *       from stdin (by the plain thread) is a notification; at the end of
 *       stdin the clients still parked get 503 and the server exits.
 *   long-poll --self-test [N]
 *       the server on 127.0.0.1, a free port, and N clients (1000) as
 *       coroutines of the same loop.  Once the server reports all N
 *       parked (through a channel the plain thread waits on), the plain
 *       thread posts one notification; every client must get exactly one
 *       200 answer with its text.  Prints
 *         long-poll: N clients answered once each in X ms
 *       and exits 0, or exits 1 saying what failed.
 *
 * Each client needs a descriptor on each side: at start the soft
 * RLIMIT_NOFILE is raised as far as the hard one allows, and N lowered
 * (saying so) if that is not enough.
 *
 * What it does not do: keep-alive, request bodies, noticing that a parked
 * client went away before its answer (the write then fails, harmlessly:
 * SIGPIPE is ignored).
 */
#define _GNU_SOURCE             /* memmem */
#include <mixmode.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define TEXT_MAX 256            /* a notification's text, at most */

static struct {
  const char *host;
  int         port;
  unsigned    self_test;        /* clients; 0: serve */
} opt = { "127.0.0.1", 0, 0 };

static mm_loop_t *loop;
static mm_chan_t *notify_ch;    /* thread -> fan-out: malloc'd strings */
static mm_chan_t *ready_ch;     /* server -> thread: all parked, or failed */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- The server ------------------------------------------------------------ */

/* A parked client, on its coroutine's stack. */
typedef struct waiter {
  struct waiter *prev, *next;
  mm_coro_t     *coro;
  bool           linked;
  char           text[TEXT_MAX];        /* set by the fan-out */
} waiter_t;

/* The server's state: touched only on the loop's thread. */
static struct {
  mm_tcp_t *srv;
  waiter_t *head;               /* parked clients */
  unsigned  parked;             /* how many are in the list now */
  unsigned  ready_at;           /* report on ready_ch when parked reaches it */
  bool      reported;
} server;

static const char ready_all[] = "all parked", ready_failed[] = "failed";

/* Tells the thread (once): all are parked, or the self-test failed. */
static void report(const char *what) {
  if (!server.reported && mm_chan_try_send(ready_ch, (void *)what) == 0)
    server.reported = true;
}

static void park(waiter_t *w) {
  w->prev = NULL;
  w->next = server.head;
  if (server.head != NULL)
    server.head->prev = w;
  server.head = w;
  w->linked = true;
  if (++server.parked == server.ready_at)
    report(ready_all);
}

static void unpark(waiter_t *w) {
  if (w->prev != NULL)
    w->prev->next = w->next;
  else
    server.head = w->next;
  if (w->next != NULL)
    w->next->prev = w->prev;
  w->linked = false;
  server.parked--;
}

/* mm_await's on_cancel: a cancelled client wakes itself (-EBUSY if the
 * fan-out got there first: that wake stands). */
static void wake_self(void *arg) {
  waiter_t *w = arg;
  mm_wake(w->coro, -ECANCELED);
}

/* Wakes every parked client with status; text NULL leaves theirs unset. */
static void wake_all(const char *text, int status) {
  while (server.head != NULL) {
    waiter_t *w = server.head;
    unpark(w);
    if (text != NULL)
      snprintf(w->text, sizeof w->text, "%s", text);
    mm_wake(w->coro, status);
  }
}

static int fan_out(void *arg) {
  (void)arg;
  void *item;
  while (mm_chan_recv(notify_ch, &item) == 0) {
    wake_all(item, 0);
    free(item);
  }
  wake_all(NULL, -EPIPE);       /* closed: no more notifications */
  mm_tcp_t *srv = server.srv;
  server.srv = NULL;            /* first: mm_tcp_close may wait, and the */
  if (srv != NULL)              /* accept returns -ECANCELED meanwhile */
    mm_tcp_close(srv);
  return 0;
}

static void answer(mm_tcp_t *c, const char *status, const char *body) {
  char buf[TEXT_MAX + 256];
  int n = snprintf(buf, sizeof buf, "HTTP/1.1 %s\r\nContent-Type: text/plain"
                   "\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                   status, strlen(body), body);
  mm_tcp_write(c, buf, (size_t)n);
}

/* One connection: a request, a wait, an answer. */
static int serve_conn(void *arg) {
  mm_tcp_t *c = arg;
  char req[2048];
  size_t len = 0;
  while (memmem(req, len, "\r\n\r\n", 4) == NULL) {
    ssize_t n = len < sizeof req ? mm_tcp_read(c, req + len, sizeof req - len)
                                 : -EMSGSIZE;
    if (n <= 0) {
      if (server.ready_at > 0)  /* the self-test's clients never do this */
        report(ready_failed);
      mm_tcp_close(c);
      return 0;
    }
    len += (size_t)n;
  }
  if (len < 10 || memcmp(req, "GET /wait", 9) != 0 ||
      (req[9] != ' ' && req[9] != '?')) {
    answer(c, "404 Not Found", "GET /wait\n");
    mm_tcp_close(c);
    return 0;
  }

  waiter_t w = { .coro = mm_current() };
  park(&w);
  int r = mm_await(wake_self, &w);
  if (w.linked)
    unpark(&w);
  if (r == 0)
    answer(c, "200 OK", w.text);
  else if (r == -EPIPE)
    answer(c, "503 Service Unavailable", "shutting down\n");
  mm_tcp_close(c);
  return 0;
}

static int accept_loop(void) {
  for (;;) {
    mm_tcp_t *c;
    int r = mm_tcp_accept(server.srv, &c);
    if (r < 0) {
      if (server.srv != NULL) {         /* not closed by the fan-out */
        fprintf(stderr, "long-poll: accept: %s\n", mm_strerror(r));
        report(ready_failed);
      }
      return r == -ECANCELED && server.srv == NULL ? 0 : 1;
    }
    if (mm_spawn(loop, serve_conn, c, NULL) < 0) {
      mm_tcp_close(c);
      report(ready_failed);
    }
  }
}

static int accept_coro(void *arg) {
  (void)arg;
  return accept_loop();
}

/* ---- The plain thread ------------------------------------------------------- */

static double posted_at;        /* written before the send: the channel orders it */

static void *notifier(void *arg) {
  (void)arg;
  if (opt.self_test > 0) {
    void *what;
    if (mm_chan_recv(ready_ch, &what) == 0 && what == ready_all) {
      char *text = strdup("hello from a plain thread");
      posted_at = now_ms();
      if (text != NULL && mm_chan_send(notify_ch, text) < 0)
        free(text);
    } /* else: failed; closing makes every parked client answer 503 */
  } else {
    char line[TEXT_MAX];
    while (fgets(line, sizeof line, stdin) != NULL) {
      char *text = strdup(line);
      if (text != NULL && mm_chan_send(notify_ch, text) < 0)
        free(text);
    }
  }
  mm_chan_close(notify_ch);
  return NULL;
}

/* ---- The self-test's clients ----------------------------------------------- */

static const char expected[] = "hello from a plain thread";

static struct {
  unsigned answered, failed;
  double   last;                /* when the last answer came */
} clients;

static void client_failed(unsigned i, const char *why, const char *detail) {
  if (clients.failed++ < 5)
    fprintf(stderr, "long-poll: client %u: %s%s%s\n", i, why,
            detail != NULL ? ": " : "", detail != NULL ? detail : "");
  report(ready_failed);
}

static int client(void *arg) {
  unsigned i = (unsigned)(uintptr_t)arg;
  mm_tcp_t *c;
  int r = mm_tcp_connect(&c, opt.host, opt.port);
  if (r < 0) {
    client_failed(i, "connect", mm_strerror(r));
    return 0;
  }
  mm_tcp_nodelay(c, true);
  static const char req[] = "GET /wait HTTP/1.1\r\nHost: localhost\r\n\r\n";
  r = mm_tcp_write(c, req, sizeof req - 1);
  if (r < 0) {
    client_failed(i, "write", mm_strerror(r));
    mm_tcp_close(c);
    return 0;
  }
  /* Everything up to the end of the stream: exactly one answer. */
  char buf[2048];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof buf - 1 &&
         (n = mm_tcp_read(c, buf + len, sizeof buf - 1 - len)) > 0)
    len += (size_t)n;
  mm_tcp_close(c);
  buf[len] = '\0';
  const char *body = strstr(buf, "\r\n\r\n");
  if (strncmp(buf, "HTTP/1.1 200 ", 13) != 0 || body == NULL)
    client_failed(i, "not a 200 answer", buf);
  else if (strcmp(body + 4, expected) != 0 ||
           memmem(buf + 1, len - 1, "HTTP/1.", 7) != NULL)
    client_failed(i, "not exactly one answer with the text", buf);
  else {
    clients.answered++;
    clients.last = now_ms();
  }
  return 0;
}

static int self_test(void *arg) {
  (void)arg;
  unsigned n = opt.self_test;
  mm_coro_t **coros = calloc(n, sizeof *coros);
  int r = coros == NULL ? -ENOMEM : 0;
  if (r == 0)
    r = mm_tcp_listen(&server.srv, opt.host, 0, 4096);
  if (r < 0) {
    fprintf(stderr, "long-poll: listen: %s\n", mm_strerror(r));
    free(coros);
    report(ready_failed);       /* the thread closes the channel */
    return 1;
  }
  opt.port = mm_tcp_port(server.srv);
  server.ready_at = n;
  int failed = 0;
  if (mm_spawn(loop, fan_out, NULL, NULL) < 0 ||
      mm_spawn(loop, accept_coro, NULL, NULL) < 0) {
    fprintf(stderr, "long-poll: cannot spawn the server\n");
    report(ready_failed);
    failed = 1;                 /* fan_out may be missing: close here */
    mm_tcp_t *srv = server.srv;
    server.srv = NULL;
    mm_tcp_close(srv);
  }
  for (unsigned i = 0; i < n && !failed; i++)
    if (mm_spawn(loop, client, (void *)(uintptr_t)i, &coros[i]) < 0)
      client_failed(i, "spawn", NULL);
  for (unsigned i = 0; i < n; i++)
    if (coros[i] != NULL)
      mm_join(coros[i]);
  free(coros);
  if (failed || clients.failed > 0 || clients.answered != n) {
    fprintf(stderr, "long-poll: %u of %u clients answered correctly\n",
            clients.answered, n);
    return 1;
  }
  printf("long-poll: %u clients answered once each in %.1f ms\n", n,
         clients.last - posted_at);
  return 0;
}

static int serve(void *arg) {
  (void)arg;
  int r = mm_tcp_listen(&server.srv, opt.host, opt.port, 4096);
  if (r < 0) {
    fprintf(stderr, "long-poll: listen on %s:%d: %s\n", opt.host, opt.port,
            mm_strerror(r));
    mm_chan_close(notify_ch);   /* the thread's next send fails */
    return 1;
  }
  printf("port %d\n", mm_tcp_port(server.srv));
  fflush(stdout);
  r = mm_spawn(loop, fan_out, NULL, NULL);
  if (r < 0) {
    mm_tcp_close(server.srv);
    return 1;
  }
  return accept_loop();
}

/* ---- Start -------------------------------------------------------------------- */

/* Two descriptors a client (its two ends), and a margin. */
static void fit_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
    return;
  rlim_t need = (rlim_t)opt.self_test * 2 + 64;
  if (rl.rlim_cur >= need)
    return;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
    getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need) {
    unsigned n = rl.rlim_cur > 64 + 2 ? (unsigned)((rl.rlim_cur - 64) / 2) : 1;
    fprintf(stderr, "long-poll: RLIMIT_NOFILE is %llu: %u clients, not %u\n",
            (unsigned long long)rl.rlim_cur, n, opt.self_test);
    opt.self_test = n;
  }
}

static int usage(void) {
  fprintf(stderr, "usage: long-poll [--port N] [--host ADDR] | "
          "long-poll --self-test [N]\n");
  return 2;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--self-test") == 0) {
      opt.self_test = 1000;
      if (v != NULL && v[0] != '-') {
        opt.self_test = (unsigned)atoi(v);
        i++;
      }
      if (opt.self_test == 0)
        return usage();
    } else if (strcmp(a, "--port") == 0 && v != NULL) {
      opt.port = atoi(v);
      i++;
    } else if (strcmp(a, "--host") == 0 && v != NULL) {
      opt.host = v;
      i++;
    } else
      return usage();
  }
  if (opt.self_test > 0)
    fit_fd_limit();
  /* A client that left before its answer must cost a failed write, not
   * the server: mm_tcp_write writes with write(2), which raises SIGPIPE
   * on a connection the peer has reset, and that kills by default. */
  signal(SIGPIPE, SIG_IGN);

  int r = mm_loop_new(&loop, NULL);
  if (r == 0)
    r = mm_chan_new(&notify_ch, 16);
  if (r == 0)
    r = mm_chan_new(&ready_ch, 1);
  if (r < 0) {
    fprintf(stderr, "long-poll: %s\n", mm_strerror(r));
    return 1;
  }
  mm_coro_t *main_coro;
  r = mm_spawn(loop, opt.self_test > 0 ? self_test : serve, NULL, &main_coro);
  if (r < 0) {
    fprintf(stderr, "long-poll: spawn: %s\n", mm_strerror(r));
    return 1;
  }
  pthread_t thread;
  bool threaded = pthread_create(&thread, NULL, notifier, NULL) == 0;
  if (!threaded) {
    fprintf(stderr, "long-poll: cannot start the notifier thread\n");
    mm_chan_close(notify_ch);
  } else if (opt.self_test == 0) {
    /* Serving, it may still block reading stdin when the server ends:
     * never joined, so detached (a thread sanitizer counts a finished,
     * unjoined thread as leaked). */
    pthread_detach(thread);
  }
  mm_loop_run(loop);
  r = mm_join(main_coro);
  if (threaded && opt.self_test > 0)
    pthread_join(thread, NULL);
  mm_loop_free(loop);
  if (threaded && opt.self_test > 0) {
    mm_chan_free(notify_ch);
    mm_chan_free(ready_ch);
  }
  return r == 0 && threaded ? 0 : 1;
}
