/* Stack overflow reports.  Every coroutine stack sits above a PROT_NONE
 * guard page (stack.c).  A SIGSEGV handler, running on a per-thread
 * alternate signal stack, checks whether the fault hit the guard page of
 * (or just below) the coroutine running on this thread; if so it writes
 * one line naming that coroutine and lets the default action end the
 * program.  Any other fault goes to the handler that was there before.
 *
 * Installed when a loop is made, in front of whatever handler is there then
 * (which still gets every fault that is not an overflow; a handler set up
 * later by the program replaces ours until the next loop is made).  The
 * alternate stack is set up once per thread before it first resumes a
 * coroutine.
 * Not done here: recovery.  A coroutine that overflowed cannot continue.
 */
#include "mm-internal.h"

#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALTSTACK_SIZE (64 * 1024)
/* A fault this far below the stack still counts as its overflow: a frame
 * larger than the guard page can step over it. */
#define OVERFLOW_REACH (256 * 1024)

static pthread_mutex_t install_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static struct sigaction old_segv, old_bus;
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

static void chain(int sig, siginfo_t *si, void *uc) {
  struct sigaction *old = sig == SIGBUS ? &old_bus : &old_segv;
  if (old->sa_flags & SA_SIGINFO) {
    old->sa_sigaction(sig, si, uc);
  } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
    old->sa_handler(sig);
  } else {
    /* Default action: returning re-executes the fault, which now kills. */
    signal(sig, SIG_DFL);
  }
}

static void on_fault(int sig, siginfo_t *si, void *uc) {
  mm_coro_t *c = mm__tls.coro;
  char *addr = si->si_addr;

  if (c == NULL || addr >= c->stack_lo ||
      addr + OVERFLOW_REACH < (char *) c->map) {
    chain(sig, si, uc);
    return;
  }
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
  signal(sig, SIG_DFL);
}

static void altstack_free(void *p) {
  stack_t ss = { .ss_flags = SS_DISABLE };
  sigaltstack(&ss, NULL);
  munmap(p, ALTSTACK_SIZE);
}

static void key_init(void) {
  pthread_key_create(&altstack_key, altstack_free);
}

static void install(int sig, struct sigaction *old) {
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

void mm__guard_install(void) {
  pthread_once(&key_once, key_init);
  pthread_mutex_lock(&install_mu);
  install(SIGSEGV, &old_segv);
  install(SIGBUS, &old_bus);
  pthread_mutex_unlock(&install_mu);
}

void mm__guard_thread(void) {
  if (altstack != NULL)
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
