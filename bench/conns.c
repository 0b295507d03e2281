/* conns: what an idle TCP connection costs a server in memory, and how
 * many a process can hold (issue 11).
 *
 * Two servers, each in a process of its own, are given N connections by
 * a client in a third process, one after the other:
 *
 *   mixmode  a coroutine per connection, parked in mm_tcp_read with a
 *            buffer of BUF_SIZE bytes on its stack -- the way a
 *            coroutine server is written; once with the loop's default
 *            stack, once with SMALL_STACK bytes (mm_spawn_options_t).
 *            What a parked coroutine costs is the stack pages above its
 *            deepest frame: with BUF_SIZE 512 one page; a 4 KiB buffer
 *            on the stack pushes the frames under it onto a second page
 *            (measured: 9.5 KiB a connection instead of 5.4)
 *   libuv    the baseline: a uv_tcp_t per connection reading through
 *            uv_read_start, with one buffer shared by every connection
 *
 * The client opens the connections with blocking connect(2) calls and
 * holds them, idle, until it is killed.  Loopback has about 28,000
 * ephemeral ports per (source, destination) pair, so each server listens
 * on one port per PER_PORT connections.  When every connection has
 * reached its server's read, the server says so on a pipe, and this
 * process reads the server's /proc/PID/status (VmRSS, plus VmPTE: the
 * page tables) and counts the lines of /proc/PID/maps (the mappings,
 * against vm.max_map_count), before and after.  Printed: bytes per
 * connection for each server, the ratio to libuv's, and the mappings.
 *
 * Two more figures need no sockets, so they reach 100,000 whatever
 * RLIMIT_NOFILE is:
 *
 *   parked   N coroutines parked in mm_chan_recv: bytes each and the
 *            mappings (2 per coroutine would stop at vm.max_map_count / 2)
 *   cache    DEEP coroutines that each used DEEP_BYTES of stack end: what
 *            the process keeps of it in the loop's stack cache right
 *            after and a second later, beside what it held while they
 *            were alive
 *
 * N is 100,000 (times SCALE) if RLIMIT_NOFILE can be raised that far
 * (setrlimit: a hard limit above the current one needs CAP_SYS_RESOURCE);
 * otherwise as many as the limit allows, and the line says so.
 *
 * Usage: bench/conns [SCALE]
 *
 * Only <mixmode.h>, <uv.h> and libc, as a user has them.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench/conns"
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

enum {
  WANT = 100000,
  PER_PORT = 4000,           /* far under the 28,232 ephemeral ports: a
                                connect's search for a free one stays
                                short */
  MAX_PORTS = 64,
  SPARE_FDS = 64,            /* listeners, pipes, stdio, libuv's own */
  BUF_SIZE = 512,
  SMALL_STACK = 16 * 1024,
  DEEP = 64,
  DEEP_BYTES = 200 * 1024,
};

struct server {
  size_t n;                  /* connections to wait for */
  int nports;
  int ports[MAX_PORTS];
  size_t stack_size;         /* mixmode: 0 = the loop's default */
  int to_parent;             /* write end: ports, then one byte at n */
};

static void write_all(int fd, const void *p, size_t len) {
  const char *s = p;
  while (len > 0) {
    ssize_t w = write(fd, s, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      die("write to the parent", -errno);
    s += w;
    len -= (size_t) w;
  }
}

/* ---- the mixmode server ------------------------------------------------- */

static struct server *msrv;
static size_t mcount;          /* loop thread only */

static int serve_conn(void *arg) {
  mm_tcp_t *c = arg;
  char buf[BUF_SIZE];
  if (++mcount == msrv->n)
    write_all(msrv->to_parent, "!", 1);
  while (mm_tcp_read(c, buf, sizeof buf) > 0)
    ;
  mm_tcp_close(c);
  return 0;
}

static int accept_loop(void *arg) {
  mm_tcp_t *l = arg;
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = msrv->stack_size;
  for (;;) {
    mm_tcp_t *c;
    int r = mm_tcp_accept(l, &c);
    if (r < 0)
      die("mm_tcp_accept", r);
    if ((r = mm_spawn_ex(mm_loop_current(), serve_conn, c, &o, NULL)) < 0)
      die("mm_spawn_ex (connection)", r);
  }
  return 0;
}

static int mm_listen_all(void *arg) {
  mm_loop_t *loop = arg;
  for (int i = 0; i < msrv->nports; i++) {
    mm_tcp_t *l;
    int r = mm_tcp_listen(&l, "127.0.0.1", 0, 4096);
    if (r < 0)
      die("mm_tcp_listen", r);
    msrv->ports[i] = mm_tcp_port(l);
    if ((r = mm_spawn(loop, accept_loop, l, NULL)) < 0)
      die("mm_spawn (acceptor)", r);
  }
  write_all(msrv->to_parent, msrv->ports, sizeof msrv->ports);
  return 0;
}

static void run_mixmode(struct server *s) {
  mm_loop_t *loop;
  msrv = s;
  int r = mm_loop_new(&loop, NULL);
  if (r < 0)
    die("mm_loop_new", r);
  if ((r = mm_spawn(loop, mm_listen_all, loop, NULL)) < 0)
    die("mm_spawn", r);
  mm_loop_run(loop);
}

/* ---- the libuv callback server ------------------------------------------ */

static struct server *usrv;
static size_t ucount;
static char shared_buf[65536];

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void) h;
  (void) hint;
  *buf = uv_buf_init(shared_buf, sizeof shared_buf);
}

static void on_closed(uv_handle_t *h) {
  free(h);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void) buf;
  if (n < 0)
    uv_close((uv_handle_t *) s, on_closed);
}

static void on_conn(uv_stream_t *l, int status) {
  if (status < 0)
    die("uv listen", status);
  uv_tcp_t *c = malloc(sizeof *c);
  if (c == NULL)
    die("malloc", -ENOMEM);
  uv_tcp_init(l->loop, c);
  int r = uv_accept(l, (uv_stream_t *) c);
  if (r < 0)
    die("uv_accept", r);
  if ((r = uv_read_start((uv_stream_t *) c, on_alloc, on_read)) < 0)
    die("uv_read_start", r);
  if (++ucount == usrv->n)
    write_all(usrv->to_parent, "!", 1);
}

static void run_libuv(struct server *s) {
  uv_loop_t *loop = uv_default_loop();
  usrv = s;
  for (int i = 0; i < s->nports; i++) {
    uv_tcp_t *l = malloc(sizeof *l);
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof got;
    if (l == NULL)
      die("malloc", -ENOMEM);
    uv_tcp_init(loop, l);
    uv_ip4_addr("127.0.0.1", 0, &a);
    int r = uv_tcp_bind(l, (const struct sockaddr *) &a, 0);
    if (r == 0)
      r = uv_listen((uv_stream_t *) l, 4096, on_conn);
    if (r == 0)
      r = uv_tcp_getsockname(l, (struct sockaddr *) &got, &len);
    if (r < 0)
      die("libuv listen", r);
    s->ports[i] = ntohs(((struct sockaddr_in *) &got)->sin_port);
  }
  write_all(s->to_parent, s->ports, sizeof s->ports);
  uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- the client --------------------------------------------------------- */

/* Opens n connections, round robin over the ports, and holds them until
 * killed.  Says "ok" on fd when done, or why it could not. */
static void run_client(const struct server *s, int fd) {
  for (size_t i = 0; i < s->n; i++) {
    int sk = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_port = htons((uint16_t) s->ports[i % (size_t) s->nports]);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sk < 0 || connect(sk, (struct sockaddr *) &a, sizeof a) != 0) {
      char msg[128];
      int n = snprintf(msg, sizeof msg, "connection %zu: %s", i,
                       strerror(errno));
      write_all(fd, msg, (size_t) n);
      _exit(1);
    }
  }
  write_all(fd, "ok", 2);
  for (;;)
    pause();
}

/* ---- measuring ---------------------------------------------------------- */

/* VmRSS + VmPTE of pid, in bytes. */
static uint64_t mem_of(pid_t pid) {
  char path[64], line[256];
  uint64_t kb = 0, v;
  snprintf(path, sizeof path, "/proc/%d/status", (int) pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    die(path, -errno);
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmRSS: %" SCNu64, &v) == 1 ||
        sscanf(line, "VmPTE: %" SCNu64, &v) == 1)
      kb += v;
  fclose(f);
  return kb * 1024;
}

static unsigned maps_of(pid_t pid) {
  char path[64];
  unsigned n = 0;
  int ch;
  snprintf(path, sizeof path, "/proc/%d/maps", (int) pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    die(path, -errno);
  while ((ch = fgetc(f)) != EOF)
    n += ch == '\n';
  fclose(f);
  return n;
}

struct measure {
  double per_conn;            /* bytes */
  unsigned maps_before, maps_after;
};

static pid_t fork_or_die(void) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0)
    die("fork", -errno);
  return pid;
}

static void read_exact(int fd, void *p, size_t len, const char *what) {
  char *s = p;
  while (len > 0) {
    ssize_t r = read(fd, s, len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      fprintf(stderr, "bench/conns: %s: the process ended early\n", what);
      exit(EXIT_FAILURE);
    }
    s += r;
    len -= (size_t) r;
  }
}

static void stop(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* Runs one server with n connections and measures it. */
static struct measure measure(const char *name, void (*run)(struct server *),
                              size_t n, size_t stack_size) {
  struct server s = { .n = n, .stack_size = stack_size };
  s.nports = (int) ((n + PER_PORT - 1) / PER_PORT);
  int sp[2], cp[2];
  if (pipe(sp) != 0 || pipe(cp) != 0)
    die("pipe", -errno);

  pid_t server = fork_or_die();
  if (server == 0) {
    close(sp[0]);
    s.to_parent = sp[1];
    run(&s);
    _exit(0);
  }
  close(sp[1]);
  read_exact(sp[0], s.ports, sizeof s.ports, name);
  uint64_t before = mem_of(server);
  struct measure m = { .maps_before = maps_of(server) };

  pid_t client = fork_or_die();
  if (client == 0) {
    close(cp[0]);
    run_client(&s, cp[1]);
  }
  close(cp[1]);
  char msg[129] = "";
  ssize_t got = read(cp[0], msg, sizeof msg - 1);
  if (got != 2 || memcmp(msg, "ok", 2) != 0) {
    fprintf(stderr, "bench/conns: %s: the client failed: %s\n", name,
            got > 0 ? msg : "no word");
    stop(server);
    stop(client);
    exit(EXIT_FAILURE);
  }
  char bang;
  read_exact(sp[0], &bang, 1, name);
  uint64_t after = mem_of(server);
  m.maps_after = maps_of(server);
  m.per_conn = ((double) after - (double) before) / (double) n;
  stop(client);
  stop(server);
  close(sp[0]);
  close(cp[0]);
  return m;
}

/* ---- without sockets ---------------------------------------------------- */

struct inproc {
  mm_chan_t *ch;
  size_t n, ended;
  int to_parent;
  uint64_t base;              /* mem_of(self) before the first spawn */
};

static void send_mem(struct inproc *p) {
  uint64_t v[2] = { mem_of(getpid()) - p->base, maps_of(getpid()) };
  write_all(p->to_parent, v, sizeof v);
}

/* Measures once every block has been cached, then again after the time
 * a loop leaves an unused cached stack alone. */
static int measure_later(void *arg) {
  struct inproc *p = arg;
  send_mem(p);
  mm_sleep(1100);
  send_mem(p);
  return 0;
}

static int park_on_channel(void *arg) {
  struct inproc *p = arg;
  void *item;
  mm_chan_recv(p->ch, &item);
  /* The last one to end: every other block is cached (detached ones are
   * given back as they end). */
  if (++p->ended == p->n)
    mm_spawn(mm_loop_current(), measure_later, p, NULL);
  return 0;
}

/* Spawned after the others: runs once they are all parked. */
static int report_and_close(void *arg) {
  struct inproc *p = arg;
  send_mem(p);
  return mm_chan_close(p->ch);
}

static __attribute__((noinline)) void use_stack(size_t n) {
  volatile char buf[DEEP_BYTES];
  for (size_t i = 0; i < n && i < sizeof buf; i += 64)
    buf[i] = 1;
}

static int deep_then_park(void *arg) {
  use_stack(DEEP_BYTES);
  return park_on_channel(arg);
}

/* In a child process: n coroutines of fn, parked, then ended.  out:
 * bytes and mappings while they were parked, once they had ended, and a
 * little more than a second later. */
static void inproc(size_t n, mm_fn fn, size_t stack_size, uint64_t out[6]) {
  int fd[2];
  if (pipe(fd) != 0)
    die("pipe", -errno);
  pid_t pid = fork_or_die();
  if (pid == 0) {
    struct inproc p = { .to_parent = fd[1], .n = n };
    mm_loop_t *loop;
    int r = mm_loop_new(&loop, NULL);
    if (r == 0)
      r = mm_chan_new(&p.ch, 1);
    if (r < 0)
      die("mm_loop_new", r);
    mm_spawn_options_t o;
    mm_spawn_options_init(&o);
    o.stack_size = stack_size;
    p.base = mem_of(getpid());
    for (size_t i = 0; i < n; i++)
      if ((r = mm_spawn_ex(loop, fn, &p, &o, NULL)) < 0)
        die("mm_spawn_ex", r);
    if ((r = mm_spawn(loop, report_and_close, &p, NULL)) < 0)
      die("mm_spawn", r);
    mm_loop_run(loop);
    _exit(0);
  }
  close(fd[1]);
  read_exact(fd[0], out, 6 * sizeof *out, "coroutines");
  close(fd[0]);
  waitpid(pid, NULL, 0);
}

/* As many connections as RLIMIT_NOFILE lets each process hold, up to
 * want; the limit is raised as far as allowed (children inherit it). */
static size_t fds_for(size_t want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    die("getrlimit", -errno);
  rlim_t need = (rlim_t) want + SPARE_FDS;
  struct rlimit up = { .rlim_cur = need,
                       .rlim_max = rl.rlim_max > need ? rl.rlim_max : need };
  if (setrlimit(RLIMIT_NOFILE, &up) == 0)
    return want;
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  size_t can = rl.rlim_max > SPARE_FDS ? (size_t) rl.rlim_max - SPARE_FDS
                                        : 0;
  printf("RLIMIT_NOFILE could not be raised to %zu (%s; hard limit %zu): "
         "%zu connections\n", (size_t) need, strerror(errno),
         (size_t) rl.rlim_max, can);
  return can < want ? can : want;
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  size_t n = fds_for((size_t) ((double) WANT * scale));
  if (n == 0 || n > (size_t) PER_PORT * MAX_PORTS) {
    fprintf(stderr, "bench/conns: cannot run %zu connections\n", n);
    return EXIT_FAILURE;
  }
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  unsigned max_maps = 0;
  if (f != NULL) {
    if (fscanf(f, "%u", &max_maps) != 1)
      max_maps = 0;
    fclose(f);
  }
  printf("%zu idle connections per server; vm.max_map_count %u\n", n,
         max_maps);
  printf("server                         bytes/conn (RSS+PTE)  vs libuv  "
         "mappings before -> after\n");

  struct measure u = measure("libuv", run_libuv, n, 0);
  struct measure md = measure("mixmode", run_mixmode, n, 0);
  struct measure ms = measure("mixmode", run_mixmode, n, SMALL_STACK);
  printf("libuv, callbacks               %10.0f            %6.2fx  "
         "%u -> %u\n", u.per_conn, 1.0, u.maps_before, u.maps_after);
  printf("mixmode, default stack         %10.0f            %6.2fx  "
         "%u -> %u\n", md.per_conn, md.per_conn / u.per_conn,
         md.maps_before, md.maps_after);
  printf("mixmode, %2d KiB stacks         %10.0f            %6.2fx  "
         "%u -> %u\n", SMALL_STACK / 1024, ms.per_conn,
         ms.per_conn / u.per_conn, ms.maps_before, ms.maps_after);

  size_t parked = (size_t) ((double) WANT * scale);
  uint64_t pd[6], ps[6], dc[6];
  inproc(parked, park_on_channel, 0, pd);
  inproc(parked, park_on_channel, SMALL_STACK, ps);
  printf("\n%zu coroutines parked in mm_chan_recv, no sockets:\n", parked);
  printf("  default stack: %6.0f bytes each, %" PRIu64 " mappings\n",
         (double) pd[0] / (double) parked, pd[1]);
  printf("  %2d KiB stacks: %6.0f bytes each, %" PRIu64 " mappings\n",
         SMALL_STACK / 1024, (double) ps[0] / (double) parked, ps[1]);

  inproc(DEEP, deep_then_park, 0, dc);
  printf("\n%d coroutines that used %d KiB of stack each: %.1f MiB while "
         "alive; kept once they ended: %.1f MiB, 1.1 s later: %.1f MiB\n",
         DEEP, DEEP_BYTES / 1024, (double) dc[0] / 1048576.0,
         (double) dc[2] / 1048576.0, (double) dc[4] / 1048576.0);
  return 0;
}
