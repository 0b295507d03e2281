/* Stack overflow reports: the one SIGSEGV/SIGBUS handler of the library.
 * Every coroutine stack sits above a guard (stack.c: 64 KiB that fault on
 * any touch, page-table markers or PROT_NONE).  The handler, running on
 * a per-thread alternate signal stack, owns exactly
 * one kind of signal: a fault (si_code > 0, not a kill, tgkill or
 * sigqueue) whose address hits the guard of, or lies just below, the
 * coroutine running on the faulting thread.  For that one it writes a line
 * naming the coroutine and lets the default action end the program.
 * Everything else goes to the handler that was there before, as the
 * kernel would have delivered it: an SA_SIGINFO or plain handler is
 * called (with its mask, once if it was SA_RESETHAND); SIG_IGN ignores a
 * sent signal (a fault cannot be ignored: it kills, as without us);
 * SIG_DFL kills with the same signal -- a fault by returning to the
 * faulting instruction, a sent signal (raise(SIGSEGV)) by raising it again
 * under the default action.
 *
 * Installed once per process, by the first loop made, in front of what is
 * there then; never re-installed, so a handler the program sets up later
 * (a crash reporter that chains to its predecessor) stays in front of ours
 * and reaches us once.  MIXMODE_NO_SIGNALS=1 in the environment at that
 * first loop leaves both dispositions and the threads' alternate stacks
 * alone (an overflow is then a bare SIGSEGV).  The alternate stack is set
 * up once per thread before it first resumes a coroutine.  A forked child
 * keeps the handler, the saved predecessors and the calling thread's
 * alternate stack, all inherited as they are: nothing here needs resetting.
 *
 * Not done here: recovery (a coroutine that overflowed cannot continue),
 * other signals, and restoring the predecessors (a library cannot know
 * whether someone installed in front of it since).
 */
#include "mm-internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALTSTACK_SIZE (64 * 1024)
/* A fault this far below the stack still counts as its overflow: a frame
 * larger than the guard can step over it. */
#define OVERFLOW_REACH (256 * 1024)

/* glibc's pthread_once is fork-safe: an install cut short by a fork in
 * another thread runs again in the child, where install() finds ours in
 * place and keeps the predecessor it saved. */
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
/* The predecessors: written by install() as ours goes in (sigaction's
 * old action), afterwards only by chain() for an SA_RESETHAND one. */
static struct sigaction old_segv, old_bus;
/* Whether install() installed: set in install_once; release/acquire, read
 * by threads about to run coroutines. */
static _Atomic bool installed;
static pthread_key_t altstack_key;
static __thread void *altstack;

static size_t put(char *buf, size_t at, size_t cap, const char *s) {
  while (*s != '\0' && at < cap)
    buf[at++] = *s++;
  return at;
}

static size_t put_u64(char *buf, size_t at, size_t cap, uint64_t v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = (char) ('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0 && at < cap)
    buf[at++] = digits[--n];
  return at;
}

/* Sent by a process (kill, raise, tgkill, sigqueue: si_code <= 0), not
 * raised by the kernel for a fault of this thread. */
static bool sent(const siginfo_t *si) {
  return si->si_code <= 0;
}

/* The default action, from inside the handler: the signal is blocked
 * here, so the one raised again is delivered, and kills, on return. */
static void die(int sig, const siginfo_t *si) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  /* A fault comes back by itself when the instruction runs again (and
   * the core shows the fault); a sent signal must be sent again. */
  if (sent(si))
    raise(sig);
}

/* Hands a signal that is not ours to the predecessor, as the kernel would
 * have delivered it. */
static void chain(int sig, siginfo_t *si, void *uc) {
  struct sigaction *old = sig == SIGBUS ? &old_bus : &old_segv;
  struct sigaction prev = *old;

  if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_DFL) {
    die(sig, si);
    return;
  }
  if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler == SIG_IGN) {
    if (!sent(si))
      die(sig, si);   /* the kernel does not let a fault be ignored */
    return;
  }
  if (prev.sa_flags & SA_RESETHAND) {
    memset(old, 0, sizeof *old);
    old->sa_handler = SIG_DFL;
  }
  sigset_t saved;
  pthread_sigmask(SIG_BLOCK, &prev.sa_mask, &saved);
  if (prev.sa_flags & SA_SIGINFO)
    prev.sa_sigaction(sig, si, uc);
  else
    prev.sa_handler(sig);
  pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

/* A fault on the guard of (or just below) the coroutine running on
 * this thread. */
static bool ours(int sig, const siginfo_t *si) {
  const mm_coro_t *c = mm__tls.coro;
  if (sig != SIGSEGV || sent(si) || c == NULL)
    return false;
  uintptr_t addr = (uintptr_t) si->si_addr;
  uintptr_t map = (uintptr_t) c->map;
  return addr < (uintptr_t) c->stack_lo &&
         addr >= (map > OVERFLOW_REACH ? map - OVERFLOW_REACH : 0);
}

static void on_fault(int sig, siginfo_t *si, void *uc) {
  if (!ours(sig, si)) {
    chain(sig, si, uc);
    return;
  }
  const mm_coro_t *c = mm__tls.coro;
  char msg[256];
  size_t n = 0;
  n = put(msg, n, sizeof msg, "mixmode: coroutine ");
  n = put_u64(msg, n, sizeof msg, c->id);
  n = put(msg, n, sizeof msg, " '");
  n = put(msg, n, sizeof msg, c->name != NULL ? c->name : "");
  n = put(msg, n, sizeof msg, "' overflowed its stack of ");
  n = put_u64(msg, n, sizeof msg, c->stack_size);
  n = put(msg, n, sizeof msg, " bytes (raise stack_size)\n");
  ssize_t w = write(STDERR_FILENO, msg, n);
  (void) w;
  die(sig, si);
}

static void altstack_free(void *p) {
  stack_t ss = { .ss_flags = SS_DISABLE };
  sigaltstack(&ss, NULL);
  munmap(p, ALTSTACK_SIZE);
}

static void key_init(void) {
  pthread_key_create(&altstack_key, altstack_free);
}

static void install_one(int sig, struct sigaction *old) {
  struct sigaction cur, sa;
  if (sigaction(sig, NULL, &cur) != 0 ||
      ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_fault))
    return;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, old);
}

static void install(void) {
  const char *off = getenv("MIXMODE_NO_SIGNALS");
  if (off != NULL && strcmp(off, "1") == 0)
    return;
  pthread_once(&key_once, key_init);
  install_one(SIGSEGV, &old_segv);
  install_one(SIGBUS, &old_bus);
  atomic_store_explicit(&installed, true, memory_order_release);
}

void mm__guard_install(void) {
  pthread_once(&install_once, install);
}

void mm__guard_thread(void) {
  if (altstack != NULL)
    return;
  /* Acquire pairs with install()'s release: the key exists. */
  if (!atomic_load_explicit(&installed, memory_order_acquire))
    return;
  stack_t old;
  if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE)) {
    altstack = (void *) 1;  /* the thread has one already: use it */
    return;
  }
  void *p = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return;  /* no report on overflow, the fault still stops the program */
  stack_t ss = { .ss_sp = p, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
  if (sigaltstack(&ss, NULL) != 0) {
    munmap(p, ALTSTACK_SIZE);
    return;
  }
  altstack = p;
  pthread_setspecific(altstack_key, p);
}
