/* What every test program shares: cmocka, error asserts that explain
 * themselves, a per-test watchdog, small synchronisation helpers that let
 * threads and coroutines report to the test thread, and a fork helper for
 * death tests.
 *
 * cmocka's asserts longjmp, so they are only called on the test's own
 * thread.  Coroutines and helper threads record what they saw into structs
 * the test owns; the test asserts after joining them.  Events are ordered
 * with joins, latches and barriers, never with sleeps.
 *
 * Header-only and static: each test program is one translation unit.
 */
#ifndef MM_TEST_HELPERS_H
#define MM_TEST_HELPERS_H

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <mixmode.h>

/* ---- Asserts on library results --------------------------------------- */

/* Fails unless expr returns 0, naming the error it returned. */
#define assert_mm_ok(expr)                                                    \
  do {                                                                        \
    int mm_t_r_ = (expr);                                                     \
    if (mm_t_r_ != 0)                                                         \
      fail_msg("%s returned %d (%s), expected 0", #expr, mm_t_r_,             \
               mm_strerror(mm_t_r_));                                         \
  } while (0)

/* Fails unless expr returns exactly want (a negative errno value). */
#define assert_mm_err(expr, want)                                             \
  do {                                                                        \
    int mm_t_r_ = (expr);                                                     \
    int mm_t_w_ = (want);                                                     \
    if (mm_t_r_ != mm_t_w_)                                                   \
      fail_msg("%s returned %d (%s), expected %d (%s)", #expr, mm_t_r_,       \
               mm_strerror(mm_t_r_), mm_t_w_, mm_strerror(mm_t_w_));          \
  } while (0)

/* Same for a status recorded earlier (by a coroutine or thread). */
#define assert_status(got, want)                                              \
  do {                                                                        \
    int mm_t_g_ = (got);                                                      \
    int mm_t_w_ = (want);                                                     \
    if (mm_t_g_ != mm_t_w_)                                                   \
      fail_msg("%s is %d (%s), expected %d (%s)", #got, mm_t_g_,              \
               mm_strerror(mm_t_g_), mm_t_w_, mm_strerror(mm_t_w_));          \
  } while (0)


/* ---- Sanitizers ------------------------------------------------------- */

/* TSan makes each coroutine a fiber that costs milliseconds to create and
 * counts against its limit of 8128 threads: tests that spawn by the
 * thousand scale down under it (the races they look for need no crowd). */
#if defined(__SANITIZE_THREAD__)
# define MM_TEST_TSAN 1
#elif defined(__has_feature)
# if __has_feature(thread_sanitizer)
#  define MM_TEST_TSAN 1
# endif
#endif
#ifdef MM_TEST_TSAN
# define MM_TEST_SCALE(n, under_tsan) (under_tsan)
#else
# define MM_TEST_SCALE(n, under_tsan) (n)
#endif


/* A new loop, with the default options except pool_max_threads (0: the
 * default); the test fails if it cannot be made. */
static inline mm_loop_t *mm_test_loop_new(unsigned pool_max_threads) {
  mm_loop_options_t o;
  mm_loop_options_init(&o);
  o.pool_max_threads = pool_max_threads;
  mm_loop_t *loop = NULL;
  assert_mm_ok(mm_loop_new(&loop, &o));
  return loop;
}

/* ---- One coroutine ---------------------------------------------------- */

/* Spawns fn(arg) on loop, runs the loop on this thread until no coroutine
 * is left, and checks that the spawn, the run and fn's status (joined)
 * are all 0. */
static inline void mm_test_run_one(mm_loop_t *loop, mm_fn fn, void *arg) {
  mm_coro_t *h;
  assert_mm_ok(mm_spawn(loop, fn, arg, &h));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(h));
}


/* ---- Time ------------------------------------------------------------- */

static inline uint64_t mm_test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Under Valgrind everything runs tens of times slower. */
static inline int mm_test_under_valgrind(void) {
  const char *p = getenv("LD_PRELOAD");
  return p != NULL && strstr(p, "vgpreload") != NULL;
}


/* The emulator a cross build's tests run under (tests/cross-run.sh exports
 * MM_TEST_EMULATOR, e.g. qemu-aarch64), or NULL on the machine itself. */
static inline const char *mm_test_emulator(void) {
  const char *e = getenv("MM_TEST_EMULATOR");
  return e != NULL && *e != '\0' ? e : NULL;
}

/* For a test whose forked child starts threads: qemu-user 7.2 (Debian 12)
 * aborts such a child inside the emulator (assertions in its cpu_exec and
 * plugin hooks) whatever the program does, so under an emulator the test
 * is skipped, saying why, instead of failing on qemu's bug. */
#define mm_test_skip_fork_threads_if_emulated()                               \
  do {                                                                        \
    if (mm_test_emulator() != NULL) {                                         \
      printf("SKIP: under %s, a forked child cannot start threads "          \
             "(qemu-user aborts it)\n", mm_test_emulator());                 \
      skip();                                                                 \
    }                                                                         \
  } while (0)


/* ---- Per-test watchdog ------------------------------------------------ */

/* A thread started by each test's setup waits for the teardown; if the test
 * has not finished by the deadline (30 s, MM_TEST_TIMEOUT seconds if set,
 * ten times longer under Valgrind) it names the test and aborts the
 * program, so that a deadlock fails the run instead of hanging it. */
typedef struct {
  pthread_mutex_t mutex;
  pthread_cond_t  cond;     /* signalled by the teardown */
  int             done;     /* protected by mutex */
  const char     *name;
  unsigned        seconds;
  pthread_t       thread;
} mm_test_watchdog_t;

static mm_test_watchdog_t mm_test_watchdog_ = {
  PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, 0, 0
};

static void *mm_test_watchdog_main_(void *arg) {
  mm_test_watchdog_t *w = arg;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += w->seconds;
  pthread_mutex_lock(&w->mutex);
  int rc = 0;
  while (!w->done && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&w->cond, &w->mutex, &deadline);
  int fired = !w->done;
  pthread_mutex_unlock(&w->mutex);
  if (fired) {
    fprintf(stderr, "watchdog: %s did not finish within %u s; aborting\n",
            w->name, w->seconds);
    fflush(stderr);
    abort();
  }
  return NULL;
}

/* cmocka setup: *state is the test's name (see mm_test()). */
static int mm_test_watchdog_start(void **state) {
  mm_test_watchdog_t *w = &mm_test_watchdog_;
  unsigned seconds = 30;
  const char *env = getenv("MM_TEST_TIMEOUT");
  if (env != NULL && atoi(env) > 0)
    seconds = (unsigned)atoi(env);
  else if (mm_test_under_valgrind())
    seconds *= 10;
  w->name = *state != NULL ? (const char *)*state : "?";
  w->seconds = seconds;
  w->done = 0;
  if (pthread_create(&w->thread, NULL, mm_test_watchdog_main_, w) != 0)
    return -1;
  return 0;
}

/* cmocka teardown, also run after a failed test. */
static int mm_test_watchdog_stop(void **state) {
  mm_test_watchdog_t *w = &mm_test_watchdog_;
  pthread_mutex_lock(&w->mutex);
  w->done = 1;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->mutex);
  pthread_join(w->thread, NULL);
  return 0;
}

/* A test under the watchdog.  The test's state argument is its name. */
#define mm_test(f)                                                            \
  cmocka_unit_test_prestate_setup_teardown(f, mm_test_watchdog_start,         \
                                           mm_test_watchdog_stop, (void *)#f)


/* Runs a program's tests; MM_TEST_FILTER=pattern (cmocka's '*' and '?')
 * runs only the matching ones. */
#define mm_run_tests(tests)                                                   \
  (getenv("MM_TEST_FILTER") != NULL                                           \
       ? cmocka_set_test_filter(getenv("MM_TEST_FILTER"))                     \
       : (void)0,                                                             \
   cmocka_run_group_tests(tests, NULL, NULL))


/* ---- Latch: counts events, lets the test thread wait for a count ------ */

/* Safe to bump from coroutines (it holds its mutex for a few instructions,
 * never while waiting) and from any thread. */
typedef struct {
  pthread_mutex_t mutex;
  pthread_cond_t  cond;
  int             count;    /* protected by mutex */
} mm_test_latch_t;

static inline void mm_test_latch_init(mm_test_latch_t *l) {
  pthread_mutex_init(&l->mutex, NULL);
  pthread_cond_init(&l->cond, NULL);
  l->count = 0;
}

static inline void mm_test_latch_destroy(mm_test_latch_t *l) {
  pthread_cond_destroy(&l->cond);
  pthread_mutex_destroy(&l->mutex);
}

static inline void mm_test_latch_add(mm_test_latch_t *l, int n) {
  pthread_mutex_lock(&l->mutex);
  l->count += n;
  pthread_cond_broadcast(&l->cond);
  pthread_mutex_unlock(&l->mutex);
}

/* Blocks a plain thread until the count reaches n.  Never from a
 * coroutine: it would block the loop. */
static inline void mm_test_latch_wait(mm_test_latch_t *l, int n) {
  pthread_mutex_lock(&l->mutex);
  while (l->count < n)
    pthread_cond_wait(&l->cond, &l->mutex);
  pthread_mutex_unlock(&l->mutex);
}


/* ---- Raw libuv callbacks ------------------------------------------------ */

/* Runs fn(arg) from a raw libuv timer callback on the borrowed loop
 * (uv, loop) -- the loop's thread outside any coroutine -- while a
 * coroutine keeps the loop busy, so that the thread counts as the loop's.
 * Runs uv until all is done.  Returns 0, or -1 if something in the set-up
 * failed (the test then asserts on it). */
typedef struct {
  uv_timer_t timer;
  void     (*fn)(void *arg);
  void      *arg;
  atomic_int fired;
} mm_test_raw_t;

static void mm_test_raw_timer_cb(uv_timer_t *t) {
  mm_test_raw_t *r = t->data;
  r->fn(r->arg);
  atomic_store_explicit(&r->fired, 1, memory_order_release);
  uv_close((uv_handle_t *)t, NULL);
}

static int mm_test_raw_keeper(void *arg) {
  mm_test_raw_t *r = arg;
  while (!atomic_load_explicit(&r->fired, memory_order_acquire))
    if (mm_sleep(1) != 0)
      return -1;
  return 0;
}

__attribute__((unused))
static int mm_test_in_raw_callback(uv_loop_t *uv, mm_loop_t *loop,
                                   void (*fn)(void *), void *arg) {
  mm_test_raw_t r;
  memset(&r, 0, sizeof r);
  r.fn = fn;
  r.arg = arg;
  mm_coro_t *keeper;
  if (mm_spawn(loop, mm_test_raw_keeper, &r, &keeper) != 0 ||
      uv_timer_init(uv, &r.timer) != 0)
    return -1;
  r.timer.data = &r;
  if (uv_timer_start(&r.timer, mm_test_raw_timer_cb, 0, 0) != 0 ||
      uv_run(uv, UV_RUN_DEFAULT) != 0 || !atomic_load(&r.fired))
    return -1;
  return mm_join(keeper);
}


/* ---- Log capture ------------------------------------------------------ */

/* Collects what the library logs; install with
 * mm_set_log(mm_test_log_fn, &log), restore with mm_set_log(NULL, NULL). */
typedef struct {
  pthread_mutex_t mutex;
  int             count;           /* messages received */
  int             max_level;       /* highest level seen, -1 when none */
  char            text[8192];      /* "LEVEL msg\n" lines, truncated */
  size_t          len;
} mm_test_log_t;

static inline void mm_test_log_init(mm_test_log_t *log) {
  memset(log, 0, sizeof *log);
  pthread_mutex_init(&log->mutex, NULL);
  log->max_level = -1;
}

static inline void mm_test_log_destroy(mm_test_log_t *log) {
  pthread_mutex_destroy(&log->mutex);
}

__attribute__((unused))
static void mm_test_log_fn(int level, const char *msg, void *data) {
  mm_test_log_t *log = data;
  pthread_mutex_lock(&log->mutex);
  log->count++;
  if (level > log->max_level)
    log->max_level = level;
  if (log->len < sizeof log->text - 1) {
    int n = snprintf(log->text + log->len, sizeof log->text - log->len,
                     "%d %s\n", level, msg != NULL ? msg : "(null)");
    if (n > 0)
      log->len += (size_t)n;
    if (log->len > sizeof log->text - 1)
      log->len = sizeof log->text - 1;
  }
  pthread_mutex_unlock(&log->mutex);
}


/* ---- Death tests ------------------------------------------------------ */

/* How a child ended, and what it wrote to stdout and stderr. */
typedef struct {
  int  exited;        /* 1: exit code in code; 0: killed by signal */
  int  code;          /* exit status or signal number */
  char out[16384];    /* its output, NUL-terminated, truncated */
} mm_test_child_t;

#if defined(__SANITIZE_ADDRESS__)
# define MM_TEST_ASAN 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer)
#  define MM_TEST_ASAN 1
# endif
#endif

#ifdef MM_TEST_ASAN
/* ASan's allocator before LLVM 18 (GCC 12's libasan among them) takes no
 * lock around fork (llvm/llvm-project#75290 added it): a child forked
 * while another thread is inside malloc or free -- a thread just created
 * is, in ASan's own start-up -- inherits the sanitizer's lock taken and
 * blocks for ever at its first allocation.  That is the sanitizer's
 * limit, not the library's, and the tests fork from busy parents on
 * purpose; so under ASan the fork waits until every other thread sleeps in
 * a system call (state S in /proc), which no thread does mid-allocation.
 * Gives up after 5 s (the child may then hang: its alarm reports it). */
static void mm_test_wait_until_other_threads_sleep(void) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%ld/stat",
           (long) syscall(SYS_gettid));
  for (int round = 0; round < 5000; round++) {
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
      return;
    bool asleep = true;
    struct dirent *e;
    while (asleep && (e = readdir(d)) != NULL) {
      char stat[64 + sizeof e->d_name], buf[512];
      if (e->d_name[0] == '.')
        continue;
      snprintf(stat, sizeof stat, "/proc/self/task/%s/stat", e->d_name);
      if (strcmp(stat, path) == 0)
        continue;
      FILE *f = fopen(stat, "r");
      if (f == NULL)
        continue;                       /* the thread has ended */
      size_t n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      buf[n] = '\0';
      const char *paren = strrchr(buf, ')');   /* "tid (comm) S ..." */
      asleep = paren == NULL || paren[1] != ' ' || paren[2] == 'S';
    }
    closedir(d);
    if (asleep)
      return;
    struct timespec ms = { 0, 1000000 };
    nanosleep(&ms, NULL);
  }
}
#else
static inline void mm_test_wait_until_other_threads_sleep(void) {
}
#endif

/* Runs fn(arg) in a forked child with stdout and stderr captured; the child
 * exits 0 if fn returns, and is killed by SIGALRM if it runs over 60 s.
 * Returns 0, or -1 if the child could not be started. */
__attribute__((unused))
static int mm_test_fork(void (*fn)(void *), void *arg, mm_test_child_t *res) {
  int fds[2];
  memset(res, 0, sizeof *res);
  if (pipe(fds) != 0)
    return -1;
  mm_test_wait_until_other_threads_sleep();
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    alarm(mm_test_under_valgrind() ? 300 : 60);
    fn(arg);
    fflush(stdout);
    fflush(stderr);
    _exit(0);
  }
  close(fds[1]);
  size_t len = 0;
  for (;;) {
    char buf[4096];
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    size_t room = sizeof res->out - 1 - len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(res->out + len, buf, take);
    len += take;
  }
  res->out[len] = '\0';
  close(fds[0]);
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return -1;
  if (WIFEXITED(status)) {
    res->exited = 1;
    res->code = WEXITSTATUS(status);
  } else {
    res->exited = 0;
    res->code = WIFSIGNALED(status) ? WTERMSIG(status) : -1;
  }
  return 0;
}

#endif /* MM_TEST_HELPERS_H */
