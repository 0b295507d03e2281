/* What a TCP echo costs the loop in system calls.  A coroutine echoes the
 * 64-byte messages of a client, a plain thread that sends the next one
 * when the last has come back; once reading is on, a message costs the
 * loop no epoll_ctl and one epoll wait (for its arrival): a write that
 * goes out whole at once neither parks nor leaves libuv a write callback
 * (whose clean-up re-arms the descriptor with an epoll_ctl), and a
 * coroutine woken by a read runs from that read's callback, not from the
 * next loop pass (whose poll would not block: one more epoll_wait per
 * message, which finds nothing).  Before those two a message cost one
 * epoll_ctl and two or three waits.
 *
 * The kernel counts, for this thread only (the loop runs here): a
 * perf_event_open counter per tracepoint syscalls:sys_enter_epoll_ctl,
 * _epoll_wait, _epoll_pwait and _epoll_pwait2, switched on by the server
 * coroutine for the messages after a warm-up.  Where they cannot be
 * had the program is skipped (exit 77) and says why: no tracefs (mounted
 * at /sys/kernel/tracing when we are root and it is not, as perf does),
 * a kernel without syscall tracepoints, or no right to count kernel
 * events (root, or kernel.perf_event_paranoid <= 1).
 */
#include "helpers.h"

#include <arpa/inet.h>
#include <linux/perf_event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>

enum { MSG = 64, WARMUP = 100, ROUNDS = 2000 };

enum { CTL, WAIT, PWAIT, PWAIT2, NCOUNTERS };
static const char *const tracepoint[NCOUNTERS] = {
  "sys_enter_epoll_ctl", "sys_enter_epoll_wait", "sys_enter_epoll_pwait",
  "sys_enter_epoll_pwait2",
};
/* A kernel may lack the newer waits (epoll_pwait2 is Linux 5.11): those
 * counters are -1 and count nothing, which is what such a kernel calls. */
static int counter[NCOUNTERS];
static char why[512];

static const char *const tracefs[] = { "/sys/kernel/tracing",
                                       "/sys/kernel/debug/tracing" };

static int id_errno;                    /* why tracepoint_id last failed */

/* The id of tracepoint syscalls:name; the debugfs path first, so that
 * id_errno ends with what the usual path said. */
static int tracepoint_id(const char *name) {
  for (int i = 1; i >= 0; i--) {
    char path[160];
    snprintf(path, sizeof path, "%s/events/syscalls/%s/id", tracefs[i], name);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
      id_errno = errno;
      continue;
    }
    int id = -1;
    if (fscanf(f, "%d", &id) != 1) {
      id = -1;
      id_errno = EINVAL;
    }
    fclose(f);
    if (id >= 0)
      return id;
  }
  return -1;
}

static int perf_paranoid(void) {
  int v = -99;
  FILE *f = fopen("/proc/sys/kernel/perf_event_paranoid", "r");
  if (f != NULL) {
    if (fscanf(f, "%d", &v) != 1)
      v = -99;
    fclose(f);
  }
  return v;
}

/* Opens the counters, disabled; false (and why) if they cannot be had. */
static bool open_counters(void) {
  int id = tracepoint_id(tracepoint[CTL]);
  if (id < 0 && id_errno == ENOENT && geteuid() == 0 &&
      mount("nodev", tracefs[0], "tracefs", 0, NULL) == 0)
    id = tracepoint_id(tracepoint[CTL]);
  if (id < 0) {
    snprintf(why, sizeof why, "no id for the tracepoint syscalls:%s: "
             "%s/events/syscalls/%s/id: %s (%s)", tracepoint[CTL],
             tracefs[0], tracepoint[CTL], strerror(id_errno),
             id_errno == EACCES ? "tracefs is for root only"
             : geteuid() != 0   ? "tracefs not mounted, or a kernel without "
                                  "syscall tracepoints; not root, so not "
                                  "mounted here"
                                : "tracefs not mounted and mounting it "
                                  "failed, or a kernel without syscall "
                                  "tracepoints");
    return false;
  }
  for (int i = 0; i < NCOUNTERS; i++) {
    counter[i] = -1;
    id = i == CTL ? id : tracepoint_id(tracepoint[i]);
    if (id < 0)
      continue;
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.config = (uint64_t) id;
    attr.disabled = 1;
    counter[i] = (int) syscall(SYS_perf_event_open, &attr, 0, -1, -1,
                               PERF_FLAG_FD_CLOEXEC);
    if (counter[i] < 0) {
      snprintf(why, sizeof why, "perf_event_open(syscalls:%s): %s (%s; "
               "kernel.perf_event_paranoid %d; counting kernel events "
               "needs root or a value <= 1)", tracepoint[i],
               strerror(errno), geteuid() == 0 ? "root" : "not root",
               perf_paranoid());
      return false;
    }
  }
  return true;
}

static void counters_switch(unsigned long request) {
  for (int i = 0; i < NCOUNTERS; i++)
    if (counter[i] >= 0)
      ioctl(counter[i], request, 0);
}

static uint64_t counted(int i) {
  uint64_t v = 0;
  if (counter[i] >= 0 && read(counter[i], &v, sizeof v) != sizeof v)
    v = UINT64_MAX;
  return v;
}

/* The server: a coroutine that echoes what it reads until the end of the
 * stream, and counts (counters on) for the messages after the warm-up. */
typedef struct {
  mm_tcp_t *srv;
  int port;
  int server_result;
  size_t counted_bytes;       /* echoed with the counters on */
  int client_result;          /* the client thread's: 0 or -errno */
} echo_t;

static int echo_listen(void *arg) {
  echo_t *e = arg;
  int r = mm_tcp_listen(&e->srv, "127.0.0.1", 0, 0);
  if (r == 0)
    e->port = mm_tcp_port(e->srv);
  return r;
}

static int echo_server(void *arg) {
  echo_t *e = arg;
  mm_tcp_t *c;
  int r = mm_tcp_accept(e->srv, &c);
  if (r != 0)
    return e->server_result = r;
  mm_tcp_nodelay(c, true);
  char buf[4096];
  size_t echoed = 0, from = 0;
  const size_t on_at = (size_t) WARMUP * MSG;
  const size_t off_at = (size_t) (WARMUP + ROUNDS) * MSG;
  bool on = false;
  ssize_t n;
  while (r == 0 && (n = mm_tcp_read(c, buf, sizeof buf)) > 0) {
    r = mm_tcp_write(c, buf, (size_t) n);
    echoed += (size_t) n;
    /* Each counted message costs its read's wait, the read, the wake
     * and the write: on after the warm-up's last, off after ours. */
    if (!on && echoed >= on_at && echoed < off_at) {
      counters_switch(PERF_EVENT_IOC_ENABLE);
      on = true;
      from = echoed;
    } else if (on && echoed >= off_at) {
      counters_switch(PERF_EVENT_IOC_DISABLE);
      on = false;
      e->counted_bytes = echoed - from;
    }
  }
  mm_tcp_close(c);
  mm_tcp_close(e->srv);
  return e->server_result = r != 0 ? r : (int) n;
}

/* The client: a plain thread with a blocking socket, so that the loop's
 * thread does nothing but serve: between two messages it has nothing to
 * do and waits in epoll. */
static void *echo_client(void *arg) {
  echo_t *e = arg;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t) e->port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int on = 1;
  if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof a) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) {
    e->client_result = -errno;
    if (fd >= 0)
      close(fd);
    return NULL;
  }
  char out[MSG], in[MSG];
  memset(out, 'x', sizeof out);
  for (int i = 0; i < WARMUP + ROUNDS && e->client_result == 0; i++) {
    if (write(fd, out, MSG) != MSG) {
      e->client_result = -EIO;
      break;
    }
    for (size_t got = 0; got < MSG;) {
      ssize_t n = read(fd, in + got, MSG - got);
      if (n <= 0) {
        e->client_result = n < 0 ? -errno : -EPROTO;
        break;
      }
      got += (size_t) n;
    }
  }
  close(fd);                  /* the server sees the end */
  return NULL;
}

/* Runs the echo; the counts of its counted messages. */
static void run_counted_echo(uint64_t *ctl, uint64_t *waits) {
  counters_switch(PERF_EVENT_IOC_RESET);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  echo_t e;
  memset(&e, 0, sizeof e);
  mm_test_run_one(loop, echo_listen, &e);
  pthread_t client;
  assert_int_equal(pthread_create(&client, NULL, echo_client, &e), 0);
  mm_test_run_one(loop, echo_server, &e);
  assert_int_equal(pthread_join(client, NULL), 0);
  assert_mm_ok(e.client_result);
  assert_mm_ok(e.server_result);
  assert_int_equal(e.counted_bytes, (size_t) ROUNDS * MSG);
  assert_mm_ok(mm_loop_free(loop));
  *ctl = counted(CTL);
  *waits = counted(WAIT) + counted(PWAIT) + counted(PWAIT2);
  printf("test-tcp-syscalls: %d messages: %llu epoll_ctl, %llu epoll "
         "waits\n", ROUNDS, (unsigned long long) *ctl,
         (unsigned long long) *waits);
}

static void test_tcp_echo_makes_no_epoll_ctl(void **state) {
  uint64_t ctl, waits;
  run_counted_echo(&ctl, &waits);
  assert_int_equal(ctl, 0);
}

static void test_tcp_echo_makes_one_epoll_wait_per_message(void **state) {
  uint64_t ctl, waits;
  run_counted_echo(&ctl, &waits);
  /* Its arrival's, and a few more for whatever else the loop might poll
   * for meanwhile. */
  assert_true(waits <= ROUNDS + 16);
}

int main(void) {
  if (!open_counters()) {
    printf("SKIP: test-tcp-syscalls: cannot count system calls: %s\n", why);
    return 77;
  }
  const struct CMUnitTest tests[] = {
    mm_test(test_tcp_echo_makes_no_epoll_ctl),
    mm_test(test_tcp_echo_makes_one_epoll_wait_per_message),
  };
  return mm_run_tests(tests);
}
