/* echo: a mixmode TCP echo server (a coroutine per connection) against a
 * tuned libuv callback server, driven by the same client.
 *
 * Each measurement forks a server process and drives it from this one,
 * so that the server's CPU time and system calls are its own:
 *
 *   mixmode  mm_tcp_listen; one coroutine accepts and spawns a coroutine
 *            per connection that loops mm_tcp_read (a 16 KiB buffer on
 *            its stack), mm_tcp_write -- code as a user writes it
 *   libuv    the same with callbacks, tuned: one static 64 KiB read
 *            buffer for every connection, the echo written with
 *            uv_try_write at once from the read callback; only what it
 *            leaves goes through uv_write (a copy), so the common case
 *            has no request, no copy and no write callback
 *
 * Both set TCP_NODELAY on each connection, listen on 127.0.0.1 and run
 * on the process's main thread.  The client (this process, one thread,
 * epoll, no library) opens C connections (1, then 100), sends 64 bytes
 * on each and, whenever 64 bytes have come back on one, sends the next 64
 * on it: ping-pong, C messages always in flight.  It runs a warm-up
 * (1/10 of the window), then a window of 1 s (times SCALE), and
 * reports for the window:
 *
 *   echoes/s         64-byte round trips completed, over the window's
 *                    wall time; aim: mixmode at least 1.0x libuv
 *   CPU us/echo      the server process's user + sys time (getrusage,
 *                    all its threads, asked of the server at both ends
 *                    of the window over a control socket) per echo;
 *                    aim: mixmode at most libuv's
 *   syscalls/echo    system calls the server process made (all its
 *                    threads) per echo, counted by the kernel: a
 *                    perf_event_open counter on the tracepoint
 *                    raw_syscalls:sys_enter, attached to the server
 *                    before it starts and read at both ends of the
 *                    window; aim: mixmode at most libuv's.  Needs the
 *                    tracepoint's id (tracefs: /sys/kernel/tracing,
 *                    mounted here if it is not and we are root, as perf
 *                    does) and the right to count another process
 *                    (root, or perf_event_paranoid <= 1); without them
 *                    the column says n/a and the reason is printed
 *
 * The control exchange at each end of the window costs the server a few
 * system calls, against tens of thousands of echoes.  Each
 * measurement is repeated RUNS times, mixmode and libuv alternating
 * within a run (which goes first alternates too); medians of the runs,
 * ratios per run.  The aims are measured, not asserted: the program
 * exits 0 whatever the numbers are.
 *
 * Usage: bench/echo [SCALE]   SCALE multiplies the window (default 1 s).
 *
 * Only <mixmode.h>, <uv.h> and libc: what a user of the library gets.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench/echo"
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

enum { MSG = 64, BACKLOG = 1024, NCONFIGS = 2 };
static const int conns_of[NCONFIGS] = { 1, 100 };
static double window_s = 1.0;

enum server_kind { MIXMODE, LIBUV };
static const char *const kind_name[] = { "mixmode", "libuv" };

/* ---- the control socket between the client and a server ------------------
 *
 * The client sends one byte: 'S' asks the server for its CPU time so far
 * (user + sys of the whole process, in microseconds, one uint64_t back);
 * 'Q' asks it to stop once its connections are closed.  Before the
 * server starts it waits for a 'G' (go), so that the client can attach
 * its system-call counter first; once listening it sends its port (an
 * int). */

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      die("write", w < 0 ? -errno : -EIO);
    c += w;
    n -= (size_t) w;
  }
}

/* Reads exactly n bytes; false at the end of the stream. */
static bool read_all(int fd, void *p, size_t n) {
  char *c = p;
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      die("read", -errno);
    if (r == 0)
      return false;
    c += r;
    n -= (size_t) r;
  }
  return true;
}

/* One command from the client, on the server's side: false for 'Q' (or
 * the client gone). */
static bool serve_command(int ctl) {
  char cmd;
  if (!read_all(ctl, &cmd, 1) || cmd == 'Q')
    return false;
  uint64_t us = cpu_ns() / 1000u;
  write_all(ctl, &us, sizeof us);
  return true;
}

/* ---- the mixmode server --------------------------------------------------- */

struct mm_server {
  int ctl;
  mm_tcp_t *srv;
  int err;                    /* the first failure, or 0 */
};

static int mm_conn(void *arg) {
  mm_tcp_t *c = arg;
  char buf[16384];
  ssize_t n;
  mm_tcp_nodelay(c, true);
  while ((n = mm_tcp_read(c, buf, sizeof buf)) > 0)
    if (mm_tcp_write(c, buf, (size_t) n) < 0)
      break;
  mm_tcp_close(c);
  return 0;
}

static int mm_acceptor(void *arg) {
  struct mm_server *s = arg;
  for (;;) {
    mm_tcp_t *c;
    int err = mm_tcp_accept(s->srv, &c);
    if (err == -ECANCELED)
      return 0;               /* the listener was closed: 'Q' */
    if (err < 0)
      return s->err = err;
    mm_coro_t *co;
    if ((err = mm_spawn(mm_loop_current(), mm_conn, c, &co)) < 0 ||
        (err = mm_detach(co)) < 0)
      return s->err = err;
  }
}

/* The server's first coroutine: listens, then answers the control
 * socket until 'Q'. */
static int mm_main(void *arg) {
  struct mm_server *s = arg;
  int err = mm_tcp_listen(&s->srv, "127.0.0.1", 0, BACKLOG);
  if (err < 0)
    return s->err = err;
  int port = mm_tcp_port(s->srv);
  write_all(s->ctl, &port, sizeof port);
  mm_coro_t *acceptor;
  if ((err = mm_spawn(mm_loop_current(), mm_acceptor, s, &acceptor)) < 0)
    return s->err = err;
  for (;;) {
    err = mm_wait_fd(s->ctl, MM_READABLE, 0);
    if (err < 0) {
      s->err = err;
      break;
    }
    if (!serve_command(s->ctl))
      break;
  }
  mm_tcp_close(s->srv);       /* the acceptor gets -ECANCELED */
  mm_join(acceptor);
  return s->err;
}

static int run_mm_server(int ctl) {
  struct mm_server s = { .ctl = ctl };
  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  if (err < 0)
    die("mm_loop_new", err);
  if ((err = mm_spawn(loop, mm_main, &s, NULL)) < 0)
    die("mm_spawn", err);
  if ((err = mm_loop_run(loop)) < 0)
    die("mm_loop_run", err);
  if ((err = mm_loop_free(loop)) < 0)
    die("mm_loop_free", err);
  if (s.err < 0)
    die("mixmode server", s.err);
  return 0;
}

/* ---- the tuned libuv server ----------------------------------------------- */

struct uv_server {
  uv_tcp_t listener;
  uv_poll_t ctl_poll;
  int ctl;
};

/* The read buffer of every connection: the loop runs one callback at a
 * time and each echo is written (or copied) before the callback returns. */
static char uv_rbuf[65536];

/* What uv_try_write left: a request and the bytes, in one block. */
struct uv_leftover {
  uv_write_t req;
  char data[];
};

static void uv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void) h;
  (void) hint;
  *buf = uv_buf_init(uv_rbuf, sizeof uv_rbuf);
}

static void uv_conn_closed(uv_handle_t *h) {
  free(h);
}

static void uv_leftover_written(uv_write_t *req, int status) {
  (void) status;              /* a failed write: the read sees it too */
  free(req);
}

static void uv_conn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n < 0) {
    uv_close((uv_handle_t *) s, uv_conn_closed);
    return;
  }
  if (n == 0)
    return;
  uv_buf_t b = uv_buf_init(buf->base, (unsigned) n);
  int w = uv_try_write(s, &b, 1);
  if (w == n)
    return;
  if (w == UV_EAGAIN)
    w = 0;
  if (w < 0) {
    uv_close((uv_handle_t *) s, uv_conn_closed);
    return;
  }
  size_t left = (size_t) (n - w);
  struct uv_leftover *lo = malloc(sizeof *lo + left);
  if (lo == NULL)
    die("malloc", -ENOMEM);
  memcpy(lo->data, buf->base + w, left);
  b = uv_buf_init(lo->data, (unsigned) left);
  int err = uv_write(&lo->req, s, &b, 1, uv_leftover_written);
  if (err < 0) {
    free(lo);
    uv_close((uv_handle_t *) s, uv_conn_closed);
  }
}

static void uv_new_conn(uv_stream_t *l, int status) {
  if (status < 0)
    die("uv_listen (callback)", status);
  uv_tcp_t *c = malloc(sizeof *c);
  if (c == NULL)
    die("malloc", -ENOMEM);
  int err = uv_tcp_init(l->loop, c);
  if (err < 0)
    die("uv_tcp_init", err);
  if ((err = uv_accept(l, (uv_stream_t *) c)) < 0) {
    uv_close((uv_handle_t *) c, uv_conn_closed);
    return;
  }
  uv_tcp_nodelay(c, 1);
  if ((err = uv_read_start((uv_stream_t *) c, uv_alloc, uv_conn_read)) < 0)
    uv_close((uv_handle_t *) c, uv_conn_closed);
}

static void uv_ctl_ready(uv_poll_t *p, int status, int events) {
  struct uv_server *s = p->data;
  (void) events;
  if (status < 0 || !serve_command(s->ctl)) {
    uv_close((uv_handle_t *) &s->ctl_poll, NULL);
    uv_close((uv_handle_t *) &s->listener, NULL);
  }
}

static int run_uv_server(int ctl) {
  static struct uv_server s;
  uv_loop_t loop;
  int err = uv_loop_init(&loop);
  if (err < 0)
    die("uv_loop_init", err);
  s.ctl = ctl;
  struct sockaddr_in sin;
  uv_ip4_addr("127.0.0.1", 0, &sin);
  if ((err = uv_tcp_init(&loop, &s.listener)) < 0 ||
      (err = uv_tcp_bind(&s.listener, (struct sockaddr *) &sin, 0)) < 0 ||
      (err = uv_listen((uv_stream_t *) &s.listener, BACKLOG,
                       uv_new_conn)) < 0)
    die("libuv listen", err);
  struct sockaddr_storage a;
  int len = sizeof a;
  if ((err = uv_tcp_getsockname(&s.listener, (struct sockaddr *) &a,
                                &len)) < 0)
    die("uv_tcp_getsockname", err);
  int port = ntohs(((struct sockaddr_in *) &a)->sin_port);
  write_all(ctl, &port, sizeof port);
  if ((err = uv_poll_init(&loop, &s.ctl_poll, ctl)) < 0 ||
      (err = uv_poll_start(&s.ctl_poll, UV_READABLE, uv_ctl_ready)) < 0)
    die("uv_poll", err);
  s.ctl_poll.data = &s;
  if ((err = uv_run(&loop, UV_RUN_DEFAULT)) < 0)
    die("uv_run", err);
  if ((err = uv_loop_close(&loop)) < 0)
    die("uv_loop_close", err);
  return 0;
}

/* ---- counting the server's system calls ---------------------------------- */

static int sys_enter_id = -1;           /* the tracepoint's id, or -1 */
static char count_why[256];             /* why syscalls are not counted */

static int id_errno;                    /* why read_id last failed */

static int read_id(const char *tracefs) {
  char path[128];
  snprintf(path, sizeof path, "%s/events/raw_syscalls/sys_enter/id", tracefs);
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    id_errno = errno;
    return -1;
  }
  int id = -1;
  if (fscanf(f, "%d", &id) != 1) {
    id = -1;
    id_errno = EINVAL;
  }
  fclose(f);
  return id;
}

/* Finds raw_syscalls:sys_enter's id, or says why it cannot. */
static void find_sys_enter(void) {
  static const char *const dirs[] = { "/sys/kernel/tracing",
                                      "/sys/kernel/debug/tracing" };
  if ((sys_enter_id = read_id(dirs[1])) >= 0 ||
      (sys_enter_id = read_id(dirs[0])) >= 0)
    return;
  /* tracefs is not mounted (a machine without systemd's mount unit):
   * mount it where the kernel expects it, as perf does. */
  if (id_errno == ENOENT && geteuid() == 0 &&
      mount("nodev", dirs[0], "tracefs", 0, NULL) == 0 &&
      (sys_enter_id = read_id(dirs[0])) >= 0)
    return;
  snprintf(count_why, sizeof count_why,
           "no id for the tracepoint raw_syscalls:sys_enter: "
           "%s/events/raw_syscalls/sys_enter/id: %s (%s)", dirs[0],
           strerror(id_errno),
           id_errno == EACCES ? "tracefs is for root only"
           : geteuid() != 0   ? "tracefs not mounted, or a kernel without "
                                "tracepoints; not root, so not mounted here"
                              : "tracefs not mounted and mounting it "
                                "failed, or a kernel without tracepoints");
}

/* A counter of pid's system calls, its threads' included (inherit: it
 * must be attached before they are made); -1 if none can be had, and
 * count_why says why. */
static int open_counter(pid_t pid) {
  if (sys_enter_id < 0)
    return -1;
  struct perf_event_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.size = sizeof attr;
  attr.type = PERF_TYPE_TRACEPOINT;
  attr.config = (uint64_t) sys_enter_id;
  attr.inherit = 1;
  attr.sample_period = 0;
  int fd = (int) syscall(SYS_perf_event_open, &attr, pid, -1, -1,
                         PERF_FLAG_FD_CLOEXEC);
  if (fd < 0 && count_why[0] == '\0') {
    int e = errno;
    int paranoid = -99;
    FILE *f = fopen("/proc/sys/kernel/perf_event_paranoid", "r");
    if (f != NULL) {
      if (fscanf(f, "%d", &paranoid) != 1)
        paranoid = -99;
      fclose(f);
    }
    snprintf(count_why, sizeof count_why,
             "perf_event_open(raw_syscalls:sys_enter): %s (%s; "
             "kernel.perf_event_paranoid %d; counting another process's "
             "system calls needs root or a value <= 1)", strerror(e),
             geteuid() == 0 ? "root" : "not root", paranoid);
  }
  return fd;
}

/* The counter's value (its inherited children's included), or 0. */
static uint64_t read_counter(int fd) {
  uint64_t v = 0;
  if (fd >= 0 && read(fd, &v, sizeof v) != (ssize_t) sizeof v)
    die("read (perf counter)", -errno);
  return v;
}

/* ---- the client ------------------------------------------------------------ */

struct client {
  int ep;
  int n;
  int *fd;
  unsigned *got;              /* bytes of the current echo back, per fd */
  uint64_t echoes;
};

static const char msg[MSG] = "0123456789abcdef0123456789abcdef"
                             "0123456789abcdef0123456789abcde";

static void client_open(struct client *cl, int n, int port) {
  cl->n = n;
  cl->echoes = 0;
  cl->fd = calloc((size_t) n, sizeof *cl->fd);
  cl->got = calloc((size_t) n, sizeof *cl->got);
  if (cl->fd == NULL || cl->got == NULL)
    die("calloc", -ENOMEM);
  if ((cl->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
    die("epoll_create1", -errno);
  struct sockaddr_in sin = { .sin_family = AF_INET,
                             .sin_port = htons((uint16_t) port) };
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      die("socket", -errno);
    if (connect(fd, (struct sockaddr *) &sin, sizeof sin) != 0)
      die("connect", -errno);
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t) i };
    if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
      die("epoll_ctl", -errno);
    cl->fd[i] = fd;
  }
  /* Every connection is open (in the server's backlog at least) before
   * the first message goes out: all C are in play from the start. */
  for (int i = 0; i < n; i++)
    write_all(cl->fd[i], msg, MSG);
}

/* Ping-pong on every connection until the clock passes `until`. */
static void client_run(struct client *cl, uint64_t until) {
  struct epoll_event evs[128];
  char buf[MSG];
  while (now_ns() < until) {
    int k = epoll_wait(cl->ep, evs, 128, 1000);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      die("epoll_wait", -errno);
    if (k == 0)
      die("the server stopped answering", -ETIMEDOUT);
    for (int e = 0; e < k; e++) {
      int i = (int) evs[e].data.u32;
      ssize_t r = read(cl->fd[i], buf, MSG - cl->got[i]);
      if (r < 0 && (errno == EAGAIN || errno == EINTR))
        continue;
      if (r <= 0)
        die("read (client)", r < 0 ? -errno : -ECONNRESET);
      cl->got[i] += (unsigned) r;
      if (cl->got[i] == MSG) {
        cl->got[i] = 0;
        cl->echoes++;
        if (write(cl->fd[i], msg, MSG) != MSG)
          die("write (client)", -errno);
      }
    }
  }
}

static void client_close(struct client *cl) {
  for (int i = 0; i < cl->n; i++)
    close(cl->fd[i]);
  close(cl->ep);
  free(cl->fd);
  free(cl->got);
}

/* ---- one measurement -------------------------------------------------------- */

struct sample {
  double eps;                 /* echoes per second */
  double cpu_us;              /* server CPU per echo, us */
  double calls;               /* server syscalls per echo, or -1 */
};

static uint64_t ask_cpu(int ctl) {
  uint64_t us;
  write_all(ctl, "S", 1);
  if (!read_all(ctl, &us, sizeof us))
    die("the server ended early", -EPIPE);
  return us;
}

static struct sample measure(enum server_kind kind, int conns) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    die("socketpair", -errno);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    die("fork", -errno);
  if (pid == 0) {
    close(sv[0]);
    char go;
    if (!read_all(sv[1], &go, 1))
      _exit(EXIT_FAILURE);
    int r = kind == MIXMODE ? run_mm_server(sv[1]) : run_uv_server(sv[1]);
    _exit(r == 0 ? EXIT_SUCCESS : EXIT_FAILURE);
  }
  close(sv[1]);
  int ctl = sv[0];
  int counter = open_counter(pid);
  write_all(ctl, "G", 1);
  int port;
  if (!read_all(ctl, &port, sizeof port))
    die("the server did not start", -EPIPE);

  struct client cl;
  client_open(&cl, conns, port);
  uint64_t window_ns = (uint64_t) (window_s * 1e9);
  client_run(&cl, now_ns() + window_ns / 10);           /* warm-up */

  uint64_t cpu0 = ask_cpu(ctl);
  uint64_t calls0 = read_counter(counter);
  uint64_t e0 = cl.echoes, t0 = now_ns();
  client_run(&cl, t0 + window_ns);
  uint64_t e1 = cl.echoes, t1 = now_ns();
  uint64_t calls1 = read_counter(counter);
  uint64_t cpu1 = ask_cpu(ctl);

  client_close(&cl);
  write_all(ctl, "Q", 1);
  int status;
  if (waitpid(pid, &status, 0) != pid)
    die("waitpid", -errno);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    die(kind == MIXMODE ? "the mixmode server failed"
                        : "the libuv server failed", -EIO);
  close(ctl);
  if (counter >= 0)
    close(counter);

  double n = (double) (e1 - e0);
  if (n == 0)
    die("no echo in the window", -ETIMEDOUT);
  return (struct sample) {
    .eps = n * 1e9 / (double) (t1 - t0),
    .cpu_us = (double) (cpu1 - cpu0) / n,
    .calls = counter >= 0 ? (double) (calls1 - calls0) / n : -1,
  };
}

/* ---- report ------------------------------------------------------------------ */

static void row(const char *what, struct result r, int prec) {
  printf("%-36s %10.*f %10.*f\n", what, prec, r.median, prec, r.best);
}

/* higher: the aim is a floor (>= 1.0x), else a ceiling (<= 1.0x).  The
 * verdict reads the median as printed, to two decimals: the few system
 * calls of the control exchange must not turn an equal count into a
 * miss. */
static void ratio_row(const char *what, struct result r, bool higher) {
  bool met = higher ? r.median >= 0.995 : r.median < 1.005;
  printf("%-36s %9.2fx %9.2fx  %-8s %s\n", what, r.median, r.best,
         higher ? ">= 1.0x" : "<= 1.0x", met ? "met" : "MISSED");
}

int main(int argc, char **argv) {
  window_s *= bench_scale(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  find_sys_enter();

  double eps[2][NCONFIGS][RUNS], cpu[2][NCONFIGS][RUNS];
  double calls[2][NCONFIGS][RUNS];
  double eps_q[NCONFIGS][RUNS], cpu_q[NCONFIGS][RUNS];
  double calls_q[NCONFIGS][RUNS];
  bool counted = true;
  for (int r = 0; r < RUNS; r++)
    for (int c = 0; c < NCONFIGS; c++) {
      for (int i = 0; i < 2; i++) {
        enum server_kind k = (enum server_kind) ((i + r) % 2);
        struct sample s = measure(k, conns_of[c]);
        eps[k][c][r] = s.eps / 1000.0;
        cpu[k][c][r] = s.cpu_us;
        calls[k][c][r] = s.calls;
        if (s.calls < 0)
          counted = false;
      }
      eps_q[c][r] = eps[MIXMODE][c][r] / eps[LIBUV][c][r];
      cpu_q[c][r] = cpu[MIXMODE][c][r] / cpu[LIBUV][c][r];
      calls_q[c][r] = counted ? calls[MIXMODE][c][r] / calls[LIBUV][c][r]
                              : 0;
    }

  printf("mixmode %s, libuv %s, bench/echo: %d runs of each, a %.2f s "
         "window after a\n%.2f s warm-up; %d-byte messages, ping-pong\n\n",
         mm_version(), uv_version_string(), RUNS, window_s, window_s / 10,
         MSG);
  printf("%-36s %10s %10s  %-8s\n", "", "median", "best", "aim");
  for (int c = 0; c < NCONFIGS; c++) {
    printf("(%c) %d connection%s\n", 'a' + c, conns_of[c],
           conns_of[c] == 1 ? "" : "s");
    printf("  k echoes/s\n");
    for (int k = 0; k < 2; k++) {
      char what[64];
      snprintf(what, sizeof what, "    %s", kind_name[k]);
      row(what, summarize(eps[k][c], 1), 1);
    }
    struct result q = summarize(eps_q[c], 1);
    ratio_row("    ratio mixmode / libuv", q, true);
    printf("  server CPU us/echo (user + sys)\n");
    for (int k = 0; k < 2; k++) {
      char what[64];
      snprintf(what, sizeof what, "    %s", kind_name[k]);
      row(what, summarize(cpu[k][c], 0), 2);
    }
    q = summarize(cpu_q[c], 0);
    ratio_row("    ratio mixmode / libuv", q, false);
    printf("  server syscalls/echo\n");
    if (!counted) {
      printf("    n/a\n");
      continue;
    }
    for (int k = 0; k < 2; k++) {
      char what[64];
      snprintf(what, sizeof what, "    %s", kind_name[k]);
      row(what, summarize(calls[k][c], 0), 2);
    }
    q = summarize(calls_q[c], 0);
    ratio_row("    ratio mixmode / libuv", q, false);
  }
  if (!counted)
    printf("\nsyscalls not counted: %s\n", count_why);
  printf("\nOne echo: 64 bytes from the client to the server and back.  "
         "Client and server\nare separate processes; CPU and syscalls are "
         "the server process's alone\n(getrusage of all its threads; the "
         "raw_syscalls:sys_enter tracepoint).\nmixmode: a coroutine per "
         "connection, mm_tcp_read / mm_tcp_write.  libuv: tuned\ncallbacks, "
         "a static read buffer, uv_try_write (uv_write only for what it\n"
         "leaves).  Ratios are per run, mixmode over libuv; best is the "
         "highest rate,\nthe lowest cost or the best ratio.  Verdicts use "
         "the median,\nas printed.\n");
  return EXIT_SUCCESS;
}
