/* The slow-step watchdog: one thread per loop whose slow_step_ms is set,
 * which reports a coroutine that holds the loop while it still holds it --
 * its id and name, the function it was spawned with, how long so far, and
 * the loop thread's backtrace -- and counts each slow step once.
 *
 * Not done here: measuring steps (sched.c's step_begin and step_end
 * publish two numbers, see "What the loop thread publishes"), the line
 * that closes a slow step when it ends (step_end), or stopping a stuck
 * coroutine: the watchdog only reports.
 *
 * What the loop thread publishes.  For every step, step_begin stores
 * loop->step_seq (the step's number, from 1) and then loop->step_start
 * (uv_hrtime() at its start, never 0); step_end stores step_start = 0.
 * When the thread that runs steps changes, step_begin first stores its
 * kernel thread id in loop->step_tid.  All three are relaxed stores: a
 * plain mov, no fence, no lock, no system call on the step path.  Relaxed
 * is enough because the watchdog never dereferences anything through
 * them; it reads numbers (each coherent on its own) only to decide *when
 * to look*.  Relaxed gives no order between the two numbers, so the pair
 * the watchdog reads may mix two steps; what it reports comes from the
 * signal handler instead, which reads the same fields on the loop thread
 * itself, where program order holds (an atomic_signal_fence in step_begin
 * keeps the compiler from moving mm__tls.coro past them), and the
 * watchdog reports only what the handler confirmed: that step is running
 * on that thread, since this start.  A stale step_tid sends the signal to
 * the wrong thread, whose handler answers "not here"; the report then
 * says so.
 *
 * The watchdog sleeps on a CLOCK_MONOTONIC condition variable for
 * slow_step_ms at a time, or less when the step it saw running will
 * become slow (or is due for its next report) sooner.  So it wakes about
 * once per slow_step_ms and uses no CPU beyond that, and a step is seen
 * within the wake-up latency of crossing slow_step_ms.
 *
 * Rate limit: a step is reported when it has lasted slow_step_ms, then
 * again each time it has lasted REPEAT_FACTOR x slow_step_ms more (and at
 * least REPEAT_MIN_MS more), for as long as the same step goes on.
 *
 * Counting: a slow step is counted once in loop->slow_steps by whoever
 * claims it first, the watchdog at its first report or step_end at the
 * step's end, each by an exchange of the step's number into
 * loop->step_counted (acq_rel): the side that gets the number back has
 * lost.  The watchdog does not report a step that step_end has claimed
 * (it has ended and step_end's line says so).
 *
 * The backtrace.  The watchdog sends SAMPLE_SIGNAL (SIGURG) to the loop
 * thread with tgkill(2).  SIGURG's default action is to ignore it, and the
 * kernel sends it only to processes that asked for out-of-band TCP data
 * (F_SETOWN), so a stray one is harmless.  Our handler is installed when
 * the first watchdog starts, only if SIGURG's disposition is SIG_DFL then
 * (nobody uses it) and MIXMODE_NO_SIGNALS is not 1; it is removed when the
 * last watchdog stops, if it is still ours.  Before each request the
 * watchdog checks that the handler in place is still ours: if the program
 * has installed its own, no signal is sent and the report says so.  The
 * handler makes only async-signal-safe calls -- atomics, plain copies,
 * backtrace() into a preallocated buffer (its first call loads libgcc_s,
 * which is not safe in a handler, so the first watchdog calls it once
 * beforehand) and sem_post(3) -- and the watchdog formats the frames with
 * backtrace_symbols(3) afterwards, outside the handler.  (The unwinder
 * finds frames through _dl_find_object, lock-free, with glibc >= 2.35 and
 * libgcc >= 12; older ones take the loader's lock in dl_iterate_phdr, and
 * a step interrupted inside dlopen would then hang the handler.)
 *   The signal interrupts a blocking system call the step is making; with
 * SA_RESTART most resume, but some (nanosleep, poll with a timeout) return
 * EINTR: a step that sleeps on the loop thread is what is being reported.
 *
 * The request (struct sample, one per process): its state moves
 *
 *     IDLE --watchdog: ask--> ASKED --handler: claim--> TAKING
 *      ^ ^                      |                           |
 *      | +--watchdog: take back-+ (no answer in time)       | handler:
 *      |                                                    v answer
 *      +--------------- watchdog: read the answer ------- DONE
 *
 * The watchdog writes the question (loop, step) and then stores ASKED
 * (release); the handler claims it by CAS ASKED -> TAKING (acquire), so
 * a late or stray signal finds nothing to answer, writes the answer and
 * stores DONE (release), then posts sample_sem.  A watchdog that has
 * waited SAMPLE_WAIT_MS in vain takes the question back by CAS ASKED ->
 * IDLE; if that fails the handler is running and the watchdog waits for
 * its post, which comes without delay.  Each post thus follows a claim,
 * and the watchdog that asked consumes it: the semaphore never holds a
 * stale post.  The loop the question names is alive while the handler
 * can claim it: its watchdog waits in the request, and mm_loop_free joins
 * the watchdog before the loop goes.
 *
 * Locks: sample_mu (one request at a time, held across it), then sig_mu
 * (the handler's installation and users); a watchdog's own mu (quit)
 * is never held with either.
 */
#include "mm-internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#ifdef HAVE_EXECINFO_H
# include <execinfo.h>
#else
/* No backtrace() (musl without libexecinfo): a report names the
 * coroutine and its function, and gives no frames. */
static int backtrace(void **frames, int n) {
  (void) frames;
  (void) n;
  return 0;
}
static char **backtrace_symbols(void *const *frames, int n) {
  (void) frames;
  (void) n;
  return NULL;
}
#endif
#include <inttypes.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
# include <sys/syscall.h>
#endif

#define SAMPLE_SIGNAL SIGURG
#define SAMPLE_SIGNAL_NAME "SIGURG"
/* How long the watchdog waits for the handler's answer. */
#define SAMPLE_WAIT_MS 1000
#define SAMPLE_FRAMES 64
#define SAMPLE_NAME 64
/* Repeats of a report while the same step goes on (see the top). */
#define REPEAT_FACTOR 10
#define REPEAT_MIN_MS 1000
/* Room for one report: a line and the frames. */
#define REPORT_SIZE 8192

/* The handler reads 64-bit atomics: they must be lock-free to be
 * async-signal-safe. */
MM__STATIC_ASSERT(ATOMIC_LLONG_LOCK_FREE == 2);
MM__STATIC_ASSERT(ATOMIC_INT_LOCK_FREE == 2);

struct mm__watchdog {
  mm_loop_t *loop;
  pid_t pid;                  /* the process that started the thread */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;          /* CLOCK_MONOTONIC; signalled to quit */
  bool quit;                  /* protected by mu */
};

/* ---- the request to the loop thread ------------------------------------ */

enum sample_state { SAMPLE_IDLE, SAMPLE_ASKED, SAMPLE_TAKING, SAMPLE_DONE };

enum sample_answer {
  ANSWER_RUNNING,             /* this thread runs that step: all filled */
  ANSWER_ENDED,               /* the step is over */
  ANSWER_ELSEWHERE            /* the step runs, but not on this thread */
};

/* Protected by state (see the top): the question is the watchdog's until
 * ASKED, the answer the handler's from TAKING until DONE. */
static struct {
  _Atomic int state;          /* enum sample_state */
  mm_loop_t *loop;            /* question */
  uint64_t seq;
  int answer;                 /* enum sample_answer */
  uint64_t id;                /* with ANSWER_RUNNING: */
  mm_fn fn;
  uint64_t start;             /* step_start as the loop thread sees it */
  char name[SAMPLE_NAME];
  void *frames[SAMPLE_FRAMES];
  int nframes;
} sample;

static sem_t sample_sem;
static pthread_mutex_t sample_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t sample_once = PTHREAD_ONCE_INIT;
static bool sample_ready;     /* sem_init worked; set once under the once */

static pthread_mutex_t sig_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned sig_users;    /* protected by sig_mu: running watchdogs */
static bool sig_installed;    /* protected by sig_mu: we installed it */

static void on_sample(int sig, siginfo_t *si, void *uc) {
  int saved_errno = errno;
  int expected = SAMPLE_ASKED;
  /* Acquire pairs with the watchdog's release store of ASKED. */
  if (!atomic_compare_exchange_strong_explicit(
          &sample.state, &expected, SAMPLE_TAKING, memory_order_acquire,
          memory_order_relaxed)) {
    errno = saved_errno;
    return;                   /* stray, or a request already taken back */
  }
  mm_loop_t *loop = sample.loop;
  uint64_t seq = atomic_load_explicit(&loop->step_seq, memory_order_relaxed);
  uint64_t start = atomic_load_explicit(&loop->step_start,
                                        memory_order_relaxed);
  mm_coro_t *c = mm__tls.coro;
  if (seq != sample.seq || start == 0) {
    sample.answer = ANSWER_ENDED;
  } else if (c == NULL || c->loop != loop) {
    sample.answer = ANSWER_ELSEWHERE;
  } else {
    /* This thread runs the step: c cannot end or change under us. */
    sample.answer = ANSWER_RUNNING;
    sample.id = c->id;
    sample.fn = c->fn;
    sample.start = start;
    size_t i = 0;
    if (c->name != NULL)
      for (; i < SAMPLE_NAME - 1 && c->name[i] != '\0'; i++)
        sample.name[i] = c->name[i];
    sample.name[i] = '\0';
    sample.nframes = backtrace(sample.frames, SAMPLE_FRAMES);
  }
  /* Release: the answer is visible to the watchdog's acquire load. */
  atomic_store_explicit(&sample.state, SAMPLE_DONE, memory_order_release);
  sem_post(&sample_sem);
  errno = saved_errno;
}

/* In a child of fork(), no watchdog runs: the process-wide state starts
 * afresh (a request may have been in flight, a lock held).  A loop the
 * child inherited stops its watchdog without joining it (see
 * mm__watchdog_stop). */
static void sample_atfork_child(void) {
  pthread_mutex_init(&sample_mu, NULL);
  pthread_mutex_init(&sig_mu, NULL);
  sig_users = 0;
  atomic_store_explicit(&sample.state, SAMPLE_IDLE, memory_order_relaxed);
  if (sample_ready)
    sample_ready = sem_init(&sample_sem, 0, 0) == 0;
}

static void sample_init(void) {
  /* Loads libgcc_s now, outside any handler. */
  void *warm[2];
  backtrace(warm, 2);
  sample_ready = sem_init(&sample_sem, 0, 0) == 0 &&
                 pthread_atfork(NULL, NULL, sample_atfork_child) == 0;
}

static bool handler_is_ours(void) {
  struct sigaction cur;
  if (sigaction(SAMPLE_SIGNAL, NULL, &cur) != 0)
    return false;
  return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sample;
}

static bool signals_disabled(void) {
  const char *v = getenv("MIXMODE_NO_SIGNALS");
  return v != NULL && strcmp(v, "1") == 0;
}

/* A watchdog starts: install the handler if nobody uses the signal. */
static void sig_acquire(void) {
  pthread_once(&sample_once, sample_init);
  pthread_mutex_lock(&sig_mu);
  sig_users++;
  if (!sig_installed && sample_ready && !signals_disabled()) {
    struct sigaction cur;
    if (sigaction(SAMPLE_SIGNAL, NULL, &cur) == 0 &&
        !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL) {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_sigaction = on_sample;
      sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
      sigemptyset(&sa.sa_mask);
      sig_installed = sigaction(SAMPLE_SIGNAL, &sa, NULL) == 0;
    }
  }
  pthread_mutex_unlock(&sig_mu);
}

/* A watchdog has stopped: the last one gives the signal back. */
static void sig_release(void) {
  pthread_mutex_lock(&sig_mu);
  if (--sig_users == 0 && sig_installed) {
    if (handler_is_ours()) {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = SIG_DFL;
      sigemptyset(&sa.sa_mask);
      sigaction(SAMPLE_SIGNAL, &sa, NULL);
    }
    sig_installed = false;
  }
  pthread_mutex_unlock(&sig_mu);
}

int mm__thread_tid(void) {
#ifdef __linux__
  return (int) syscall(SYS_gettid);
#else
  return 0;
#endif
}

char mm__thread_state(int tid) {
  if (tid <= 0)
    return 0;                 /* no kernel id known (not Linux) */
  char path[64], buf[128];
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  /* "tid (comm) S ...": comm may hold ')' but the fields after it not. */
  const char *paren = strrchr(buf, ')');
  return paren != NULL && paren[1] == ' ' ? paren[2] : 0;
}

/* ---- asking ------------------------------------------------------------ */

/* What a request brought back, or why there is none. */
typedef struct {
  bool asked;                 /* the handler answered */
  int answer;                 /* with asked */
  char why[160];              /* without a backtrace: the reason */
  uint64_t id, start;
  mm_fn fn;
  char name[SAMPLE_NAME];
  void *frames[SAMPLE_FRAMES];
  int nframes;
} probe_t;

static void add_ms(struct timespec *ts, unsigned ms) {
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long) (ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

/* Waits for the handler's post, SAMPLE_WAIT_MS at most; true if it came. */
static bool wait_answer(void) {
  struct timespec until;
#ifdef HAVE_SEM_CLOCKWAIT
  clock_gettime(CLOCK_MONOTONIC, &until);
  add_ms(&until, SAMPLE_WAIT_MS);
  while (sem_clockwait(&sample_sem, CLOCK_MONOTONIC, &until) != 0)
    if (errno != EINTR)
      return false;
#else
  /* A step of the wall clock lengthens or shortens this one wait. */
  clock_gettime(CLOCK_REALTIME, &until);
  add_ms(&until, SAMPLE_WAIT_MS);
  while (sem_timedwait(&sample_sem, &until) != 0)
    if (errno != EINTR)
      return false;
#endif
  return true;
}

/* Asks the thread running loop's step seq what it is doing. */
static void probe(mm_loop_t *loop, uint64_t seq, probe_t *p) {
  memset(p, 0, sizeof *p);
#ifndef __linux__
  snprintf(p->why, sizeof p->why, "backtraces of the loop thread are only "
           "taken on Linux");
  return;
#else
  if (!sample_ready) {
    snprintf(p->why, sizeof p->why, "no semaphore for the %s handler",
             SAMPLE_SIGNAL_NAME);
    return;
  }
  pthread_mutex_lock(&sample_mu);
  pthread_mutex_lock(&sig_mu);
  bool ours = sig_installed && handler_is_ours();
  pthread_mutex_unlock(&sig_mu);
  if (!ours) {
    pthread_mutex_unlock(&sample_mu);
    if (signals_disabled())
      snprintf(p->why, sizeof p->why, "MIXMODE_NO_SIGNALS=1 forbids the %s "
               "handler that takes it", SAMPLE_SIGNAL_NAME);
    else
      snprintf(p->why, sizeof p->why, "%s has a handler of the program's, "
               "so the watchdog does not signal the loop thread",
               SAMPLE_SIGNAL_NAME);
    return;
  }
  sample.loop = loop;
  sample.seq = seq;
  /* Release: the question is visible to the handler's acquire CAS. */
  atomic_store_explicit(&sample.state, SAMPLE_ASKED, memory_order_release);
  int tid = atomic_load_explicit(&loop->step_tid, memory_order_relaxed);
  bool answered = false;
  if (syscall(SYS_tgkill, (int) getpid(), tid, SAMPLE_SIGNAL) != 0) {
    snprintf(p->why, sizeof p->why, "sending %s to the loop thread (%d) "
             "failed: %s", SAMPLE_SIGNAL_NAME, tid, strerror(errno));
  } else if (wait_answer()) {
    answered = true;
  } else {
    snprintf(p->why, sizeof p->why, "the loop thread did not answer %s "
             "within %d ms (blocked in its signal mask?)",
             SAMPLE_SIGNAL_NAME, SAMPLE_WAIT_MS);
  }
  if (!answered) {
    int expected = SAMPLE_ASKED;
    if (!atomic_compare_exchange_strong_explicit(
            &sample.state, &expected, SAMPLE_IDLE, memory_order_relaxed,
            memory_order_relaxed)) {
      /* The handler has claimed it and is running: its post comes. */
      while (sem_wait(&sample_sem) != 0 && errno == EINTR)
        ;
      answered = true;
    }
  }
  if (answered) {
    /* Acquire pairs with the handler's release store of DONE. */
    mm__assert(atomic_load_explicit(&sample.state, memory_order_acquire) ==
               SAMPLE_DONE);
    p->asked = true;
    p->answer = sample.answer;
    if (p->answer == ANSWER_RUNNING) {
      p->id = sample.id;
      p->fn = sample.fn;
      p->start = sample.start;
      memcpy(p->name, sample.name, sizeof p->name);
      memcpy(p->frames, sample.frames, sizeof p->frames);
      p->nframes = sample.nframes;
    } else if (p->answer == ANSWER_ELSEWHERE) {
      snprintf(p->why, sizeof p->why, "%s reached thread %d, which was not "
               "running the step", SAMPLE_SIGNAL_NAME, tid);
    }
    atomic_store_explicit(&sample.state, SAMPLE_IDLE, memory_order_relaxed);
  }
  pthread_mutex_unlock(&sample_mu);
#endif
}

/* ---- reporting ---------------------------------------------------------- */

/* fn's symbol name; else its module and offset (for addr2line); else its
 * address.  dladdr sees only dynamic symbols: a static function, or one
 * of a program linked without -rdynamic, gets the second form. */
static void fn_name(mm_fn fn, char *buf, size_t cap) {
  void *addr = (void *) (uintptr_t) fn;
  Dl_info info;
  if (dladdr(addr, &info) == 0) {
    snprintf(buf, cap, "%p", addr);
    return;
  }
  if (info.dli_sname != NULL && info.dli_saddr == addr) {
    snprintf(buf, cap, "%s", info.dli_sname);
    return;
  }
  const char *file = info.dli_fname != NULL ? info.dli_fname : "?";
  const char *base = strrchr(file, '/');
  snprintf(buf, cap, "%p (%s+0x%" PRIxPTR ")", addr,
           base != NULL ? base + 1 : file,
           (uintptr_t) addr - (uintptr_t) info.dli_fbase);
}

/* Appends to a report buffer, truncating. */
static size_t put(char *buf, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static size_t put(char *buf, size_t at, const char *fmt, ...) {
  if (at >= REPORT_SIZE - 1)
    return at;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf + at, REPORT_SIZE - at, fmt, ap);
  va_end(ap);
  if (n < 0)
    return at;
  at += (size_t) n;
  return at < REPORT_SIZE - 1 ? at : REPORT_SIZE - 1;
}

/* The frames of the handler itself (backtrace's caller, then the signal
 * return trampoline) are left out. */
#define HANDLER_FRAMES 2

static void report(mm_loop_t *loop, uint64_t seq, uint64_t ms,
                   const probe_t *p) {
  char *buf = malloc(REPORT_SIZE);
  if (buf == NULL) {
    mm__log(MM_LOG_WARN, "a coroutine has held the loop for %" PRIu64
            " ms so far without suspending (slow_step_ms = %u)", ms,
            loop->opt.slow_step_ms);
    return;
  }
  size_t n = 0;
  if (p->asked && p->answer == ANSWER_RUNNING) {
    char fn[256];
    fn_name(p->fn, fn, sizeof fn);
    n = put(buf, n, "coroutine %" PRIu64 " '%s', spawned with %s, has held "
            "the loop for %" PRIu64 " ms so far without suspending "
            "(slow_step_ms = %u); the loop thread's backtrace:", p->id,
            p->name, fn, ms, loop->opt.slow_step_ms);
    char **sym = backtrace_symbols(p->frames, p->nframes);
    for (int i = HANDLER_FRAMES; i < p->nframes; i++) {
      if (sym != NULL)
        n = put(buf, n, "\n  #%d %s", i - HANDLER_FRAMES, sym[i]);
      else
        n = put(buf, n, "\n  #%d %p", i - HANDLER_FRAMES, p->frames[i]);
    }
    free(sym);
  } else {
    n = put(buf, n, "a coroutine (step %" PRIu64 " of the loop) has held the "
            "loop for %" PRIu64 " ms so far without suspending (slow_step_ms "
            "= %u); no name, function or backtrace: %s", seq, ms,
            loop->opt.slow_step_ms, p->why);
  }
  mm__log_str(MM_LOG_WARN, buf);
  free(buf);
}

/* Looks at step seq, which started at start (as read here) and has been
 * found due for a report at now; first: it has not been reported yet.
 * Returns when to look at it next (UINT64_MAX: never, it is over) and
 * sets *reported if it reported it now. */
static uint64_t check_step(mm_loop_t *loop, uint64_t seq, uint64_t start,
                           bool first, uint64_t now, bool *reported) {
  uint64_t slow_ns = (uint64_t) loop->opt.slow_step_ms * 1000000;
  uint64_t repeat_ns = slow_ns * REPEAT_FACTOR;
  if (repeat_ns < (uint64_t) REPEAT_MIN_MS * 1000000)
    repeat_ns = (uint64_t) REPEAT_MIN_MS * 1000000;

  probe_t *p = malloc(sizeof *p);
  if (p == NULL)
    return now + repeat_ns;
  probe(loop, seq, p);
  uint64_t next;
  if (p->asked && p->answer == ANSWER_ENDED) {
    /* Over, most likely (step_end sees to it); or the handler came in
     * between step_begin's two stores and the step has just begun: in
     * case, look again as at a new step. */
    next = uv_hrtime() + slow_ns;
  } else {
    if (p->asked && p->answer == ANSWER_RUNNING)
      start = p->start;       /* the loop thread's own reading */
    now = uv_hrtime();
    if (start > now || now - start < slow_ns) {
      next = start + slow_ns; /* the two numbers read here mixed steps */
    } else if (first && atomic_exchange_explicit(&loop->step_counted, seq,
                                                 memory_order_acq_rel) ==
                        seq) {
      next = UINT64_MAX;      /* step_end claimed it: it has ended */
    } else {
      if (first)
        atomic_fetch_add_explicit(&loop->slow_steps, 1,
                                  memory_order_relaxed);
      report(loop, seq, (now - start) / 1000000, p);
      *reported = true;
      next = now + repeat_ns;
    }
  }
  free(p);
  return next;
}

static void *watchdog_main(void *arg) {
  mm__watchdog_t *wd = arg;
  mm_loop_t *loop = wd->loop;
  uint64_t slow_ns = (uint64_t) loop->opt.slow_step_ms * 1000000;
  uint64_t watched = 0;       /* the step last seen running */
  uint64_t due = 0;           /* when to look at it next */
  bool reported = false;      /* watched has been reported */
  mm__thread_name("mm-watchdog");

  pthread_mutex_lock(&wd->mu);
  while (!wd->quit) {
    uint64_t now = uv_hrtime();
    uint64_t seq = atomic_load_explicit(&loop->step_seq,
                                        memory_order_relaxed);
    uint64_t start = atomic_load_explicit(&loop->step_start,
                                          memory_order_relaxed);
    if (start != 0) {
      if (seq != watched) {
        watched = seq;
        due = start + slow_ns;
        reported = false;
      }
      if (now >= due) {
        pthread_mutex_unlock(&wd->mu);
        due = check_step(loop, seq, start, !reported, now, &reported);
        pthread_mutex_lock(&wd->mu);
        now = uv_hrtime();
      }
    }
    /* Never longer than slow_step_ms: a step that begins meanwhile must
     * be seen before it has run twice that long, even while an earlier
     * one waits for its next report or has been found over (due is then
     * UINT64_MAX: the next step has another number). */
    uint64_t wake = now + slow_ns;
    if (start != 0 && due < wake)
      wake = due;
    struct timespec ts;
    mm__cond_deadline(&ts, wake > now ? (wake - now + 999999) / 1000000 : 0);
    if (!wd->quit)
      pthread_cond_timedwait(&wd->cv, &wd->mu, &ts);
  }
  pthread_mutex_unlock(&wd->mu);
  return NULL;
}

/* ---- life cycle --------------------------------------------------------- */

int mm__watchdog_start(mm_loop_t *loop) {
  mm__watchdog_t *wd = calloc(1, sizeof *wd);
  if (wd == NULL)
    return -ENOMEM;
  wd->loop = loop;
  wd->pid = getpid();
  int r = mm__cond_init(&wd->cv);
  if (r != 0)
    goto err_free;
  pthread_mutex_init(&wd->mu, NULL);
  sig_acquire();
  /* The thread takes no signal of the program's (nor a stray SIGURG):
   * it starts with all blocked. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  r = pthread_create(&wd->thread, NULL, watchdog_main, wd);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r != 0) {
    r = EAGAIN;
    goto err_sig;
  }
  loop->watchdog = wd;
  return 0;

err_sig:
  sig_release();
  pthread_mutex_destroy(&wd->mu);
  pthread_cond_destroy(&wd->cv);
err_free:
  free(wd);
  return -r;
}

void mm__watchdog_stop(mm_loop_t *loop) {
  mm__watchdog_t *wd = loop->watchdog;
  if (wd == NULL)
    return;
  loop->watchdog = NULL;
  if (wd->pid != getpid()) {
    /* Inherited through fork(): the thread is the parent's, and its
     * mutex may have been held at the fork. */
    free(wd);
    return;
  }
  pthread_mutex_lock(&wd->mu);
  wd->quit = true;
  pthread_cond_signal(&wd->cv);
  pthread_mutex_unlock(&wd->mu);
  pthread_join(wd->thread, NULL);
  sig_release();
  pthread_mutex_destroy(&wd->mu);
  pthread_cond_destroy(&wd->cv);
  free(wd);
}
