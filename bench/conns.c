/* conns: what an idle TCP connection costs a server in memory, and how
 * many a process can hold (issue 11): 100,000 by default.
 *
 * Two servers, each in a process of its own, are given N connections by
 * clients in other processes, one server after the other:
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
 *            uv_read_start, with one buffer per loop shared by its
 *            connections
 *
 * Descriptors.  RLIMIT_NOFILE bounds the descriptor numbers of one
 * descriptor table, and a process whose hard limit is under N + SPARE_FDS
 * cannot raise it without CAP_SYS_RESOURCE.  The limit is raised if it
 * can be: then each server is one loop and one table.  Otherwise each
 * server runs N / (limit - SPARE_FDS) loops, rounded up, on threads of
 * its own, and each thread first gives itself a table of its own
 * (unshare(CLONE_FILES): a copy of the process's), then makes its loop,
 * listens and serves -- one process, one address space, several tables
 * of up to the limit each.  A loop's descriptors (its epoll, its bell,
 * libuv's own) are numbers in the table of the thread that made it, and
 * a thread that reaches the loop from outside uses those numbers in its
 * own table: mm_spawn or mm_run_async from another thread rings the
 * bell, libuv's one thread pool per process (uv_getaddrinfo, uv_fs_*,
 * uv_queue_work) answers through the loop's eventfd.  So here nothing
 * reaches a loop from outside its thread, and every address is numeric
 * (mm_tcp_listen resolves a name in libuv's pool); a program that does
 * reach in must do it from threads that share the loop's table.  The
 * clients are as many processes as that takes.  The line that starts
 * with "descriptors:" says which way it went, and why; the one that
 * starts with "descriptors in each" how many each thread's table holds.
 *
 * Connection i goes to port i % nports; port k belongs to loop
 * k % nloops, and each port takes about PER_PORT connections: loopback
 * has about 28,000 ephemeral ports for a (source, destination) pair, and
 * a connect's search for a free one stays short far under that.  When
 * every loop has all its connections parked in their read, the server
 * says so on a pipe, and this process reads the server's /proc/PID/status
 * (VmRSS, plus VmPTE: the page tables) and counts the lines of
 * /proc/PID/maps (the mappings, against vm.max_map_count), before the
 * first connection and then.  Printed: bytes per connection for each
 * server, the ratio to libuv's, and the mappings.
 *
 * Then, with every connection still parked, a client sends one byte on
 * one connection, and the mixmode coroutine that reads it recurses until
 * its stack overflows: the server must die with the library's report
 * naming the overflow, not corrupt a neighbour's stack and go on.  The
 * run fails if it does not.
 *
 * Two more figures need no sockets:
 *
 *   parked   N coroutines parked in mm_chan_recv: bytes each and the
 *            mappings (2 per coroutine would stop at vm.max_map_count / 2)
 *   cache    DEEP coroutines that each used DEEP_BYTES of stack end: what
 *            the process keeps of it in the loop's stack cache right
 *            after and a second later, beside what it held while they
 *            were alive
 *
 * Usage: bench/conns [SCALE]   (N is 100,000 times SCALE)
 *
 * Only <mixmode.h>, <uv.h> and libc, as a user has them.
 */
#define _GNU_SOURCE
#define BENCH_NAME "bench/conns"
#include "bench.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
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
  PER_PORT = 4000,
  MAX_PORTS = 160,
  MAX_LOOPS = 64,
  MAX_CLIENTS = 64,
  SPARE_FDS = 256,           /* in each table beside the connections:
                                stdio, pipes, listeners (two descriptors
                                each for mm_tcp_listen), the loops' own */
  BUF_SIZE = 512,
  SMALL_STACK = 16 * 1024,
  DEEP = 64,
  DEEP_BYTES = 200 * 1024,
};

/* How the connections are spread: over loops (descriptor tables) in a
 * server, over processes on the client side. */
struct plan {
  size_t n;                  /* connections in all */
  int nloops;
  bool unshare;              /* each loop thread gets its own table */
  int nports;                /* a multiple of nloops */
  int nclients;
  size_t per_table;          /* connections one table may hold */
};

struct shard;

struct server {
  struct plan p;
  int ports[MAX_PORTS];
  size_t stack_size;         /* mixmode: 0 = the loop's default */
  int to_parent;             /* write end: ports, then one byte once
                                every connection is parked */
  void (*serve)(struct shard *);
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int listening;             /* loops whose ports are open; under mu */
  atomic_int parked;         /* loops whose connections are all parked */
};

/* One loop of a server, on a thread of its own. */
struct shard {
  struct server *s;
  int index;
  size_t want;               /* connections this loop is given */
  size_t got;                /* loop thread only */
  pthread_t thread;
  char *buf;                 /* libuv: the loop's one read buffer */
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

/* Connections that go to port k (connection i goes to port
 * i % nports). */
static size_t conns_of_port(const struct plan *p, int k) {
  size_t np = (size_t) p->nports;
  return p->n / np + ((size_t) k < p->n % np);
}

/* A loop has listened on its ports (ports[k] for k % nloops == index). */
static void shard_listening(struct shard *sh) {
  struct server *s = sh->s;
  pthread_mutex_lock(&s->mu);
  s->listening++;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* A loop has every connection it was given parked in its read; the last
 * loop to get there tells the parent. */
static void shard_parked(struct shard *sh) {
  struct server *s = sh->s;
  if (atomic_fetch_add_explicit(&s->parked, 1, memory_order_relaxed) + 1 ==
      s->p.nloops)
    write_all(s->to_parent, "!", 1);
}

static void *shard_main(void *arg) {
  struct shard *sh = arg;
  if (sh->s->p.unshare && unshare(CLONE_FILES) != 0)
    die("unshare(CLONE_FILES)", -errno);
  sh->s->serve(sh);
  return NULL;
}

/* The server process: its loops on threads of their own, the ports to
 * the parent once they all listen, then nothing until it is killed. */
static void run_server(struct server *s) {
  static struct shard shards[MAX_LOOPS];
  /* libuv makes a process-wide pipe (the lock of its signal handling) in
   * the first uv_loop_init, and uses it by number from any thread: made
   * here, every loop thread's table has a copy of it. */
  uv_loop_t warm;
  int r = uv_loop_init(&warm);
  if (r < 0)
    die("uv_loop_init", r);
  uv_loop_close(&warm);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  for (int i = 0; i < s->p.nloops; i++) {
    struct shard *sh = &shards[i];
    *sh = (struct shard) { .s = s, .index = i };
    for (int k = i; k < s->p.nports; k += s->p.nloops)
      sh->want += conns_of_port(&s->p, k);
    if ((r = pthread_create(&sh->thread, NULL, shard_main, sh)) != 0)
      die("pthread_create", -r);
  }
  pthread_mutex_lock(&s->mu);
  while (s->listening < s->p.nloops)
    pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  write_all(s->to_parent, s->ports, sizeof s->ports);
  for (;;)
    pause();
}

/* ---- the mixmode server ------------------------------------------------- */

static __thread struct shard *mshard;

static volatile int keep_recursing = 1;   /* volatile: not "infinite" */

/* What a coroutine with a bug in its recursion does: 1 KiB frames, one
 * under the other, until the stack's guard stops it. */
static __attribute__((noinline)) int recurse(int depth) {
  volatile char frame[1024];
  frame[0] = (char) depth;
  int r = keep_recursing ? recurse(depth + 1) : 0;
  return r + frame[0];
}

/* Spawned by the last connection of the loop: runs once that one, too,
 * is parked in its read. */
static int report_parked(void *arg) {
  shard_parked(arg);
  return 0;
}

static int serve_conn(void *arg) {
  mm_tcp_t *c = arg;
  char buf[BUF_SIZE];
  if (++mshard->got == mshard->want) {
    int r = mm_spawn(mm_loop_current(), report_parked, mshard, NULL);
    if (r < 0)
      die("mm_spawn (report)", r);
  }
  /* No client writes, but the one byte that asks for an overflow. */
  if (mm_tcp_read(c, buf, sizeof buf) > 0)
    return recurse(0);
  mm_tcp_close(c);
  return 0;
}

static int accept_loop(void *arg) {
  mm_tcp_t *l = arg;
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = mshard->s->stack_size;
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
  struct shard *sh = arg;
  struct server *s = sh->s;
  for (int k = sh->index; k < s->p.nports; k += s->p.nloops) {
    mm_tcp_t *l;
    int r = mm_tcp_listen(&l, "127.0.0.1", 0, 4096);
    if (r < 0)
      die("mm_tcp_listen", r);
    s->ports[k] = mm_tcp_port(l);
    if ((r = mm_spawn(mm_loop_current(), accept_loop, l, NULL)) < 0)
      die("mm_spawn (acceptor)", r);
  }
  shard_listening(sh);
  return 0;
}

/* On the shard's thread, in its table: the loop and everything it opens
 * are made here. */
static void serve_mixmode(struct shard *sh) {
  mm_loop_t *loop;
  mshard = sh;
  int r = mm_loop_new(&loop, NULL);
  if (r < 0)
    die("mm_loop_new", r);
  if ((r = mm_spawn(loop, mm_listen_all, sh, NULL)) < 0)
    die("mm_spawn", r);
  if ((r = mm_loop_run(loop)) < 0)
    die("mm_loop_run", r);
}

/* ---- the libuv callback server ------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct shard *sh = h->loop->data;
  (void) hint;
  *buf = uv_buf_init(sh->buf, 65536);
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
  struct shard *sh = l->loop->data;
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
  /* Reading: a callback server's connection is parked once it is. */
  if (++sh->got == sh->want)
    shard_parked(sh);
}

static void serve_libuv(struct shard *sh) {
  struct server *s = sh->s;
  uv_loop_t *loop = malloc(sizeof *loop);
  if (loop == NULL || (sh->buf = malloc(65536)) == NULL)
    die("malloc", -ENOMEM);
  int r = uv_loop_init(loop);
  if (r < 0)
    die("uv_loop_init", r);
  loop->data = sh;
  for (int k = sh->index; k < s->p.nports; k += s->p.nloops) {
    uv_tcp_t *l = malloc(sizeof *l);
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof got;
    if (l == NULL)
      die("malloc", -ENOMEM);
    uv_tcp_init(loop, l);
    uv_ip4_addr("127.0.0.1", 0, &a);
    r = uv_tcp_bind(l, (const struct sockaddr *) &a, 0);
    if (r == 0)
      r = uv_listen((uv_stream_t *) l, 4096, on_conn);
    if (r == 0)
      r = uv_tcp_getsockname(l, (struct sockaddr *) &got, &len);
    if (r < 0)
      die("libuv listen", r);
    s->ports[k] = ntohs(((struct sockaddr_in *) &got)->sin_port);
  }
  shard_listening(sh);
  uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- the clients -------------------------------------------------------- */

static int first_sock = -1;

/* SIGUSR1: one byte on the client's first connection (the overflow). */
static void on_usr1(int sig) {
  (void) sig;
  ssize_t w = write(first_sock, "x", 1);
  (void) w;
}

/* Opens connections lo..hi-1 and holds them until killed.  Says "ok" on
 * fd when done, or why it could not. */
static void run_client(const struct server *s, size_t lo, size_t hi,
                       int fd) {
  signal(SIGUSR1, on_usr1);
  for (size_t i = lo; i < hi; i++) {
    int sk = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_port = htons((uint16_t) s->ports[i % (size_t) s->p.nports]);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sk < 0 || connect(sk, (struct sockaddr *) &a, sizeof a) != 0) {
      char msg[128];
      int n = snprintf(msg, sizeof msg, "connection %zu: %s", i,
                       strerror(errno));
      write_all(fd, msg, (size_t) n);
      _exit(1);
    }
    if (i == lo)
      first_sock = sk;
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

/* Entries of a /proc directory. */
static unsigned entries_of(const char *path) {
  DIR *d = opendir(path);
  unsigned n = 0;
  if (d == NULL)
    die(path, -errno);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* Appends "count" or "count xRUN" to out (used bytes so far). */
static size_t put_run(char *out, size_t used, size_t len, unsigned count,
                      unsigned run) {
  if (run == 0 || used >= len)
    return used;
  int w = run == 1 ? snprintf(out + used, len - used, "%s%u",
                              used > 0 ? ", " : "", count)
                   : snprintf(out + used, len - used, "%s%u x%u",
                              used > 0 ? ", " : "", count, run);
  return used + (w > 0 ? (size_t) w : 0);
}

/* The descriptors each thread of pid sees (its table's), the main
 * thread first, equal neighbours as one "count xN": where the
 * connections are. */
static void fds_of_threads(pid_t pid, char *out, size_t len) {
  char path[64];
  size_t used = 0;
  unsigned prev = 0, run = 0;
  snprintf(path, sizeof path, "/proc/%d/task", (int) pid);
  DIR *d = opendir(path);
  if (d == NULL)
    die(path, -errno);
  out[0] = '\0';
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    char fd_dir[320];
    if (e->d_name[0] == '.')
      continue;
    snprintf(fd_dir, sizeof fd_dir, "/proc/%d/task/%s/fd", (int) pid,
             e->d_name);
    unsigned n = entries_of(fd_dir);
    if (run > 0 && n == prev) {
      run++;
      continue;
    }
    used = put_run(out, used, len, prev, run);
    prev = n;
    run = 1;
  }
  put_run(out, used, len, prev, run);
  closedir(d);
}

struct measure {
  double per_conn;            /* bytes */
  unsigned maps_before, maps_after;
  char fds[256];              /* descriptors per thread, once parked */
  char overflow[256];         /* mixmode: what the server said as it died */
};

static pid_t fork_or_die(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0)
    die("fork", -errno);
  return pid;
}

/* false: the writer ended first. */
static bool read_exact(int fd, void *p, size_t len) {
  char *s = p;
  while (len > 0) {
    ssize_t r = read(fd, s, len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return false;
    s += r;
    len -= (size_t) r;
  }
  return true;
}

/* The processes of one measurement. */
struct run {
  const char *name;
  pid_t server;               /* 0 once it has been waited for */
  pid_t clients[MAX_CLIENTS];
  int nclients;
  FILE *log;                  /* the server's stderr */
};

static void stop(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static void stop_all(struct run *r) {
  for (int c = 0; c < r->nclients; c++)
    stop(r->clients[c]);
  if (r->server > 0)
    stop(r->server);
  r->server = 0;
}

static void print_log(FILE *log) {
  char line[512];
  fflush(log);
  rewind(log);
  while (fgets(line, sizeof line, log) != NULL)
    fputs(line, stderr);
}

/* Says why the measurement stopped, with the server's log, and exits
 * once every process of it is gone. */
static void give_up(struct run *r, const char *why, const char *detail) {
  stop_all(r);
  fprintf(stderr, "bench/conns: %s: %s%s\n", r->name, why, detail);
  fprintf(stderr, "bench/conns: the server's log:\n");
  print_log(r->log);
  exit(EXIT_FAILURE);
}

/* After a byte asked one of the server's coroutines to overflow: how the
 * server ended, and the line of its log that names the overflow.  Gives
 * up if the overflow was not reported, or the server lived on. */
static void overflow_outcome(struct run *r, struct measure *m) {
  int st;
  if (waitpid(r->server, &st, 0) != r->server)
    die("waitpid", -errno);
  r->server = 0;
  char line[512];
  bool named = false;
  rewind(r->log);
  while (!named && fgets(line, sizeof line, r->log) != NULL)
    named = strstr(line, "overflowed its stack") != NULL;
  if (!named || !WIFSIGNALED(st)) {
    char how[64];
    snprintf(how, sizeof how, " (%s %d)",
             WIFSIGNALED(st) ? "killed by signal" : "exit status",
             WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    give_up(r, "a coroutine's stack overflow was not reported", how);
  }
  line[strcspn(line, "\n")] = '\0';
  snprintf(m->overflow, sizeof m->overflow, "%.*s; %s",
           (int) sizeof m->overflow - 32, line, strsignal(WTERMSIG(st)));
}

/* Runs one server with the plan's connections and measures it.
 * overflow: then asks one connection's coroutine to overflow its stack
 * (mixmode). */
static struct measure measure(const char *name,
                              void (*serve)(struct shard *),
                              const struct plan *p, size_t stack_size,
                              bool overflow) {
  static struct server s;
  s = (struct server) { .p = *p, .stack_size = stack_size,
                        .serve = serve };
  struct run r = { .name = name, .log = tmpfile() };
  int sp[2], cp[MAX_CLIENTS][2];
  if (r.log == NULL)
    die("tmpfile", -errno);
  if (pipe(sp) != 0)
    die("pipe", -errno);

  r.server = fork_or_die();
  if (r.server == 0) {
    /* A core of a server this size would take long to write. */
    struct rlimit no_core = { 0, 0 };
    setrlimit(RLIMIT_CORE, &no_core);
    dup2(fileno(r.log), STDERR_FILENO);
    close(sp[0]);
    s.to_parent = sp[1];
    run_server(&s);
  }
  close(sp[1]);
  if (!read_exact(sp[0], s.ports, sizeof s.ports))
    give_up(&r, "the server ended before it listened", "");
  uint64_t before = mem_of(r.server);
  struct measure m = { .maps_before = maps_of(r.server) };

  for (int c = 0; c < p->nclients; c++) {
    if (pipe(cp[c]) != 0)
      die("pipe", -errno);
    pid_t pid = fork_or_die();
    if (pid == 0) {
      for (int d = 0; d <= c; d++)
        close(cp[d][0]);
      close(sp[0]);
      run_client(&s, p->n * (size_t) c / (size_t) p->nclients,
                 p->n * (size_t) (c + 1) / (size_t) p->nclients, cp[c][1]);
    }
    r.clients[r.nclients++] = pid;
    close(cp[c][1]);
  }
  for (int c = 0; c < p->nclients; c++) {
    char msg[129] = "";
    ssize_t got = read(cp[c][0], msg, sizeof msg - 1);
    close(cp[c][0]);
    if (got != 2 || memcmp(msg, "ok", 2) != 0)
      give_up(&r, "a client failed: ", got > 0 ? msg : "it said nothing");
  }
  char bang;
  if (!read_exact(sp[0], &bang, 1))
    give_up(&r, "the server ended before its connections were parked",
            "");
  uint64_t after = mem_of(r.server);
  m.maps_after = maps_of(r.server);
  fds_of_threads(r.server, m.fds, sizeof m.fds);
  m.per_conn = ((double) after - (double) before) / (double) p->n;
  close(sp[0]);
  if (overflow) {
    kill(r.clients[0], SIGUSR1);
    overflow_outcome(&r, &m);
  }
  stop_all(&r);
  fclose(r.log);
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
  if (!read_exact(fd[0], out, 6 * sizeof *out)) {
    fprintf(stderr, "bench/conns: the coroutines' process ended early\n");
    exit(EXIT_FAILURE);
  }
  close(fd[0]);
  waitpid(pid, NULL, 0);
}

static void *probe_unshare(void *arg) {
  int *err = arg;
  *err = unshare(CLONE_FILES) == 0 ? 0 : -errno;
  return NULL;
}

/* Whether a thread may take a descriptor table of its own: 0 or
 * -errno (a seccomp filter may refuse). */
static int unshare_works(void) {
  pthread_t t;
  int err = -ENOSYS;
  int r = pthread_create(&t, NULL, probe_unshare, &err);
  if (r != 0)
    return -r;
  pthread_join(t, NULL);
  return err;
}

static size_t div_up(size_t a, size_t b) {
  return (a + b - 1) / b;
}

/* How n connections fit under RLIMIT_NOFILE: the limit raised (children
 * inherit it) if it may be, else one table per loop; as many as one
 * table holds if even that is refused.  Says which, and why. */
static struct plan plan_for(size_t n) {
  struct plan p = { .n = n, .nloops = 1, .nclients = 1, .per_table = n };
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    die("getrlimit", -errno);
  rlim_t need = (rlim_t) n + SPARE_FDS;
  struct rlimit up = { .rlim_cur = need,
                       .rlim_max = rl.rlim_max > need ? rl.rlim_max : need };
  if (setrlimit(RLIMIT_NOFILE, &up) == 0) {
    printf("descriptors: RLIMIT_NOFILE raised to %zu: one loop and one "
           "descriptor table per server, one client process\n",
           (size_t) need);
  } else {
    int why = errno;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    size_t hard = (size_t) rl.rlim_max;
    p.per_table = hard > 2 * SPARE_FDS ? hard - SPARE_FDS : 0;
    printf("descriptors: RLIMIT_NOFILE cannot be raised to %zu (%s; the "
           "hard limit is %zu, and raising it needs CAP_SYS_RESOURCE)",
           (size_t) need, strerror(why), hard);
    int err = unshare_works();
    if (p.per_table == 0) {
      p.n = 0;
      printf("\n");
    } else if (err < 0) {
      p.n = p.per_table < n ? p.per_table : n;
      printf(", and a thread cannot take a descriptor table of its own "
             "(unshare(CLONE_FILES): %s): %zu connections, one loop\n",
             strerror(-err), p.n);
    } else {
      size_t loops = div_up(n, p.per_table);
      if (loops > MAX_LOOPS) {
        loops = MAX_LOOPS;
        p.n = MAX_LOOPS * p.per_table;
      }
      p.nloops = (int) loops;
      p.unshare = true;
      p.nclients = p.nloops;
      printf(":\n  each server runs %d loops on threads of its own, each "
             "thread with a descriptor table of its own "
             "(unshare(CLONE_FILES)), %zu connections each at most; "
             "%d client processes\n", p.nloops, p.per_table, p.nclients);
    }
  }
  size_t ports = div_up(p.n, PER_PORT);
  p.nports = (int) (div_up(ports, (size_t) p.nloops) * (size_t) p.nloops);
  if (p.n == 0 || p.nloops > MAX_LOOPS || p.nports > MAX_PORTS ||
      p.nclients > MAX_CLIENTS) {
    fprintf(stderr, "bench/conns: cannot run %zu connections (%d loops, "
            "%d ports)\n", n, p.nloops, p.nports);
    exit(EXIT_FAILURE);
  }
  return p;
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  size_t want = (size_t) ((double) WANT * scale);
  struct plan p = plan_for(want);
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  unsigned max_maps = 0;
  if (f != NULL) {
    if (fscanf(f, "%u", &max_maps) != 1)
      max_maps = 0;
    fclose(f);
  }
  printf("%zu idle connections per server, %d loop(s), %d ports; "
         "vm.max_map_count %u\n", p.n, p.nloops, p.nports, max_maps);

  struct measure u = measure("libuv", serve_libuv, &p, 0, false);
  struct measure md = measure("mixmode", serve_mixmode, &p, 0, true);
  struct measure ms = measure("mixmode", serve_mixmode, &p, SMALL_STACK,
                              true);
  printf("server                         bytes/conn (RSS+PTE)  vs libuv  "
         "mappings before -> after\n");
  printf("libuv, callbacks               %10.0f            %6.2fx  "
         "%u -> %u\n", u.per_conn, 1.0, u.maps_before, u.maps_after);
  printf("mixmode, default stack         %10.0f            %6.2fx  "
         "%u -> %u\n", md.per_conn, md.per_conn / u.per_conn,
         md.maps_before, md.maps_after);
  printf("mixmode, %2d KiB stacks         %10.0f            %6.2fx  "
         "%u -> %u\n", SMALL_STACK / 1024, ms.per_conn,
         ms.per_conn / u.per_conn, ms.maps_before, ms.maps_after);
  printf("descriptors in each thread's table, main thread first: "
         "libuv %s; mixmode %s\n", u.fds, ms.fds);
  printf("then a connection's coroutine overflowed its stack, the others "
         "parked:\n  default stack: %s\n  %2d KiB stacks: %s\n",
         md.overflow, SMALL_STACK / 1024, ms.overflow);

  size_t parked = want;
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
