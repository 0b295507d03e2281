/* Waiting for a file descriptor, colour-blind (mm_wait_fd), and the
 * calling context's loop (mm_loop_current), which code that drives a
 * descriptor's library from a coroutine uses to reach the loop.
 *
 * On a plain thread a wait is poll(2).  In a coroutine it is a park while
 * the loop polls fd with a uv_poll_t, ended through lib/wait.c's protocol
 * by whichever comes first of the poll callback, the timeout, and a cancel
 * (mm_cancel, the spawn deadline, the loop's stop or free).  All three run
 * on the loop's thread, so the ending word lives in the wait itself
 * (wait.c, rule 4).  Each claims it before anything else; the winner
 * disarms the other two -- stops the poll and the timer, empties the
 * handle's waiter slot -- and then delivers, its last access to the wait.
 *
 * How the loop polls fd.  On Linux each loop has an epoll set of its
 * own, "the inner set", which the loop's libuv polls through one uv_poll_t
 * on the set's fd; a wait adds fd to it one-shot (EPOLLONESHOT) with
 * EPOLL_CTL_MOD, or EPOLL_CTL_ADD when MOD says the set holds no entry for
 * the file now under that number; when the inner set turns readable the
 * loop collects what fired with one epoll_wait and wakes those waits.  So
 * a wait that parks costs one system call to arm and its share of one
 * collect, whatever the fd: the first wait on a file adds it (MOD fails,
 * ADD), later waits only re-arm it.  A wait ended otherwise (timeout,
 * cancel) removes its entry (one DEL) so that no entry is armed without a
 * wait under way.
 *
 * Why one-shot entries in a set of our own, not a uv_poll_t per fd kept
 * started: the user may close fd and reuse its number between two waits
 * without telling us (libuv's contract forbids that: uv_poll_stop before
 * close).  epoll registers a file description, not a number.  An entry
 * whose description died vanishes with it, and MOD on the reused number
 * finds no entry (ENOENT: we ADD the new file); an entry whose description
 * lives on elsewhere (a dup, a forked child) stays, but disarmed: it never
 * fires, and MOD and ADD for the number address the new file's entry, not
 * it.  A handle kept started in libuv's own set would instead either stop
 * waking anyone (libuv believes the number registered) or report the old
 * file's events under the number for good, spinning the loop while nobody
 * waits.  libuv's uv_poll_start/stop per wait would be safe but costs an
 * EPOLL_CTL_DEL, ADD and DEL per wait (libuv 1.44 begins every start with
 * a DEL).
 *
 * A file epoll cannot watch (a regular file: EPERM on ADD) is ready as
 * poll(2) would say it is, at once; a closed fd is -EBADF (MOD and ADD
 * tell).  The flags of fd are never touched.
 *
 * Elsewhere than Linux, or built with -DMM_WAIT_FD_UV_POLL (CI builds
 * the ucontext variant so, to keep that path tested), a wait polls fd
 * with a uv_poll_t per fd number, started for the wait and stopped at its
 * end, with a poll(2) first that answers a ready fd, tells a closed one
 * (-EBADF) and keeps a regular file away from libuv, whose epoll backend
 * aborts on it.  uv_poll_init makes fd non-blocking: its flags are put
 * back as they were.
 *
 * The per-number records.  Each loop keeps a record per fd number it has
 * waited on, in an array indexed by the number (loop thread only), made at
 * the first wait and kept until mm_loop_free: it holds the wait under way
 * (-EBUSY for a second one) and is what an inner-set entry points to.
 * Like libuv's table of watchers, the array grows to the highest number
 * waited on; fd numbers are small and reused, so it stays small.
 *
 * Not done here: a wait on an fd closed *during* the wait (the user's
 * error, as with libuv), or edge-triggered readiness.
 */
#include "mm-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__linux__) && !defined(MM_WAIT_FD_UV_POLL)
#define INNER_SET 1
#include <sys/epoll.h>
#include <unistd.h>
#else
#define INNER_SET 0
#endif

typedef struct fd_wait fd_wait_t;

/* A loop's record for one fd number.  Loop thread only. */
typedef struct mm__fd_poll {
  mm_loop_t *loop;
  int fd;
  fd_wait_t *waiter;          /* the wait under way on it, or NULL; armed
                                 (in the inner set) or started (its
                                 uv_poll_t) exactly while set */
  mm__list_t link;            /* loop->fd_polls_all */
#if !INNER_SET
  uv_poll_t h;                /* h.data = this, until closed */
  bool h_made;
#endif
} mm__fd_poll_t;

#if INNER_SET
/* The loop's inner set and the handle that polls it.  Replaced if the user
 * closes the handle (uv_walk on a borrowed loop); the old one stays listed
 * until mm_loop_free. */
typedef struct mm__fd_set {
  uv_poll_t h;                /* h.data = this, until closed */
  int epfd;
  mm__list_t link;            /* loop->fd_sets */
} mm__fd_set_t;
#endif

/* A coroutine's wait on fd.  Lives on the waiting coroutine's stack; it is
 * reached only through its record's waiter slot, its timer and its cancel
 * callback, all on the loop's thread, and the winner of its ending clears
 * or stops all three before mm__wait_deliver, its last access. */
struct fd_wait {
  mm__wait_t w;
  mm__fd_poll_t *poll;
  mm__timer_t timer;          /* armed with a timeout only */
  int events;                 /* asked: MM_READABLE | MM_WRITABLE */
};

/* ---- where a wait may be called ----------------------------------------- */

mm_loop_t *mm_loop_current(void) {
  if (mm__tls.coro != NULL)
    return mm__tls.coro->loop;
  /* A blocking call run for a coroutine: its loop, also in an abandoned
   * call's snapshot (the loop outlives its calls: mm_loop_free waits for
   * them). */
  return mm__tls.proxy != NULL ? mm__tls.proxy->loop : NULL;
}

/* ---- poll(2) ------------------------------------------------------------- */

static short to_poll(int events) {
  return (short) (((events & MM_READABLE) ? POLLIN : 0) |
                  ((events & MM_WRITABLE) ? POLLOUT : 0));
}

/* The answer to a wait for events that poll(2) reported as revents. */
static int from_revents(short revents, int events) {
  if (revents & POLLNVAL)
    return -EBADF;
  int ready = ((revents & POLLIN) ? MM_READABLE : 0) |
              ((revents & POLLOUT) ? MM_WRITABLE : 0);
  ready &= events;
  /* An error or a hang-up: every event asked, the next read or write
   * tells what happened. */
  if ((revents & (POLLERR | POLLHUP)) || ready == 0)
    return events;
  return ready;
}

/* One poll(2) of fd: the events ready (> 0), 0 when ms passed first, or a
 * negative errno (-EINTR included). */
static int poll_once(int fd, int events, int ms) {
  struct pollfd p = { .fd = fd, .events = to_poll(events) };
  int n = poll(&p, 1, ms);
  if (n < 0)
    return -errno;
  return n == 0 ? 0 : from_revents(p.revents, events);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* A plain thread's wait: poll(2), resumed after a signal with the time
 * left (rounded up to the millisecond, so that it never returns early). */
static int wait_thread(int fd, int events, uint64_t timeout_ms) {
  uint64_t deadline = 0;
  if (timeout_ms != 0) {
    uint64_t now = now_ns();
    deadline = timeout_ms > (UINT64_MAX - now) / 1000000u
                   ? UINT64_MAX
                   : now + timeout_ms * 1000000u;
  }
  for (;;) {
    int ms = -1;
    if (timeout_ms != 0) {
      uint64_t now = now_ns();
      if (now >= deadline)
        return -ETIMEDOUT;
      uint64_t left = (deadline - now + 999999u) / 1000000u;
      ms = left > INT_MAX ? INT_MAX : (int) left;
    }
    int r = poll_once(fd, events, ms);
    if (r != 0 && r != -EINTR)
      return r;
  }
}

/* ---- the per-number records -------------------------------------------- */

/* The record kept for fd, or NULL. */
static mm__fd_poll_t *poll_find(mm_loop_t *loop, int fd) {
  if ((size_t) fd >= loop->fd_polls_cap)
    return NULL;
  return loop->fd_polls[fd];
}

static int slots_reserve(mm_loop_t *loop, int fd) {
  size_t need = (size_t) fd + 1;
  if (need <= loop->fd_polls_cap)
    return 0;
  size_t cap = loop->fd_polls_cap != 0 ? loop->fd_polls_cap : 64;
  while (cap < need)
    cap *= 2;
  mm__fd_poll_t **a = realloc(loop->fd_polls, cap * sizeof(*a));
  if (a == NULL)
    return -ENOMEM;
  memset(a + loop->fd_polls_cap, 0,
         (cap - loop->fd_polls_cap) * sizeof(*a));
  loop->fd_polls = a;
  loop->fd_polls_cap = cap;
  return 0;
}

static int poll_new(mm_loop_t *loop, int fd, mm__fd_poll_t **out) {
  int r = slots_reserve(loop, fd);
  if (r != 0)
    return r;
  mm__fd_poll_t *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  p->loop = loop;
  p->fd = fd;
  mm__list_push_back(&loop->fd_polls_all, &p->link);
  loop->fd_polls[fd] = p;
  *out = p;
  return 0;
}

static bool end_wait(fd_wait_t *fw, int to, int status, bool fired);

/* What a wait on fd answers for readiness `status` (< 0: an error libuv
 * or epoll saw) and the events that fired. */
static int ready_of(const fd_wait_t *fw, int status, int fired) {
  int ready = fired & fw->events;
  /* An error or a hang-up alone: every event asked, the next read or
   * write tells what happened. */
  return status < 0 || ready == 0 ? fw->events : ready;
}

#if INNER_SET
/* ---- the inner set (Linux) ---------------------------------------------- */

static void on_set(uv_poll_t *h, int status, int uv_events) {
  mm__fd_set_t *set = h->data;
  struct epoll_event evs[64];
  int n;
  (void) status;
  (void) uv_events;
  do {
    n = epoll_wait(set->epfd, evs, 64, 0);
    for (int i = 0; i < n; i++) {
      mm__fd_poll_t *p = evs[i].data.ptr;
      fd_wait_t *fw = p->waiter;
      /* Entries are armed only under a wait, and a wait ended otherwise
       * disarms its entry before anything else, so this is the wait the
       * entry was armed for. */
      if (fw == NULL)
        continue;
      uint32_t e = evs[i].events;
      int fired = ((e & EPOLLIN) ? MM_READABLE : 0) |
                  ((e & EPOLLOUT) ? MM_WRITABLE : 0);
      end_wait(fw, MM__END_WOKEN,
               ready_of(fw, (e & EPOLLERR) ? -EIO : 0, fired), true);
    }
  } while (n == 64);
}

static mm__fd_set_t *set_of(mm_loop_t *loop) {
  if (!mm__list_empty(&loop->fd_sets)) {
    mm__fd_set_t *set = container_of(loop->fd_sets.prev, mm__fd_set_t,
                                     link);
    if (!uv_is_closing((uv_handle_t *) &set->h))
      return set;
  }
  return NULL;
}

/* The loop's inner set, made at its first wait (or after the user closed
 * the last one's handle). */
static int set_get(mm_loop_t *loop, mm__fd_set_t **out) {
  mm__fd_set_t *set = set_of(loop);
  if (set != NULL) {
    *out = set;
    return 0;
  }
  set = malloc(sizeof(*set));
  if (set == NULL)
    return -ENOMEM;
  set->epfd = epoll_create1(EPOLL_CLOEXEC);
  int r = set->epfd < 0 ? -errno : uv_poll_init(loop->uv, &set->h,
                                                set->epfd);
  if (r != 0) {
    if (set->epfd >= 0)
      close(set->epfd);
    free(set);
    return r;
  }
  set->h.data = set;
  mm__list_push_back(&loop->fd_sets, &set->link);
  r = uv_poll_start(&set->h, UV_READABLE, on_set);
  if (r != 0) {
    uv_close((uv_handle_t *) &set->h, NULL);   /* freed with the loop */
    return r;
  }
  /* The loop's async reference alone keeps uv_run going (drive.c). */
  uv_unref((uv_handle_t *) &set->h);
  *out = set;
  return 0;
}

static uint32_t to_epoll(int events) {
  return ((events & MM_READABLE) ? EPOLLIN : 0u) |
         ((events & MM_WRITABLE) ? EPOLLOUT : 0u) | EPOLLONESHOT;
}

/* Arms p's entry for events: 0, a readiness to answer at once (a file
 * epoll cannot watch), or a negative errno. */
static int arm(mm__fd_poll_t *p, int events) {
  mm__fd_set_t *set;
  int r = set_get(p->loop, &set);
  if (r != 0)
    return r;
  if (p->fd == set->epfd)
    return -EBADF;            /* the user's closed number, now our set's */
  struct epoll_event ev = { .events = to_epoll(events), .data.ptr = p };
  if (epoll_ctl(set->epfd, EPOLL_CTL_MOD, p->fd, &ev) == 0)
    return 0;
  if (errno == ENOENT && epoll_ctl(set->epfd, EPOLL_CTL_ADD, p->fd, &ev) == 0)
    return 0;
  if (errno == EPERM)
    return events;            /* a regular file: always ready, as poll says */
  return -errno;
}

/* A wait ended otherwise than by its entry firing: its entry goes, so
 * that none is armed without a wait.  Not a MOD to no events: epoll adds
 * EPOLLHUP and EPOLLERR to every MOD, and such an entry would still fire on
 * a hang-up -- into a later wait on another file under the number, if the
 * user closed fd while the old description lives on.  The next wait on
 * fd pays an ADD after its MOD.  A failure means the file is gone from the
 * set already (the user closed fd during the wait). */
static void disarm(mm__fd_poll_t *p) {
  mm__fd_set_t *set = set_of(p->loop);
  if (set != NULL)
    epoll_ctl(set->epfd, EPOLL_CTL_DEL, p->fd, NULL);
}

unsigned mm__fd_polls_close(mm_loop_t *loop, uv_close_cb cb) {
  unsigned n = 0;
  mm__list_t *l, *tmp;
  mm__list_foreach_safe(l, tmp, &loop->fd_sets) {
    mm__fd_set_t *set = container_of(l, mm__fd_set_t, link);
    if (uv_is_closing((uv_handle_t *) &set->h))
      continue;
    set->h.data = loop;
    uv_close((uv_handle_t *) &set->h, cb);
    n++;
  }
  return n;
}

static void sets_free(mm_loop_t *loop) {
  mm__list_t *l;
  while ((l = mm__list_pop_front(&loop->fd_sets)) != NULL) {
    mm__fd_set_t *set = container_of(l, mm__fd_set_t, link);
    close(set->epfd);
    free(set);
  }
}

#else
/* ---- a uv_poll_t per number (elsewhere) --------------------------------- */

static void on_poll(uv_poll_t *h, int status, int uv_events) {
  mm__fd_poll_t *p = h->data;
  fd_wait_t *fw = p->waiter;
  mm__assert(fw != NULL);     /* started only while a wait is under way */
  int fired = ((uv_events & UV_READABLE) ? MM_READABLE : 0) |
              ((uv_events & UV_WRITABLE) ? MM_WRITABLE : 0);
  end_wait(fw, MM__END_WOKEN, ready_of(fw, status, fired), true);
}

/* Makes p's handle, or a new one if the user closed it behind our back (a
 * borrowed loop shut down with uv_walk): the old one stays listed, to be
 * freed with the others. */
static int handle_get(mm__fd_poll_t *p) {
  if (p->h_made && !uv_is_closing((uv_handle_t *) &p->h))
    return 0;
  if (p->h_made) {
    mm__fd_poll_t *q;
    int r = poll_new(p->loop, p->fd, &q);   /* replaces p in the array */
    if (r != 0)
      return r;
    return -EAGAIN;           /* the caller starts again with q */
  }
  int flags = fcntl(p->fd, F_GETFL);
  if (flags < 0)
    return -errno;
  int r = uv_poll_init(p->loop->uv, &p->h, p->fd);
  if (r != 0)
    return r == UV_EEXIST ? -EBUSY : r;
  if (!(flags & O_NONBLOCK))
    fcntl(p->fd, F_SETFL, flags);
  /* The loop's async reference alone keeps uv_run going (drive.c). */
  uv_unref((uv_handle_t *) &p->h);
  p->h.data = p;
  p->h_made = true;
  return 0;
}

static int arm(mm__fd_poll_t *p, int events) {
  /* A ready fd answers at once; a closed one is -EBADF; a regular file
   * (always ready) never reaches libuv. */
  int r;
  do
    r = poll_once(p->fd, events, 0);
  while (r == -EINTR);
  if (r != 0)
    return r;
  r = handle_get(p);
  if (r != 0)
    return r;
  r = uv_poll_start(&p->h, ((events & MM_READABLE) ? UV_READABLE : 0) |
                           ((events & MM_WRITABLE) ? UV_WRITABLE : 0),
                    on_poll);
  return r == UV_EEXIST ? -EBUSY : r;
}

static void disarm(mm__fd_poll_t *p) {
  if (!uv_is_closing((uv_handle_t *) &p->h))   /* closing: stopped */
    uv_poll_stop(&p->h);
}

unsigned mm__fd_polls_close(mm_loop_t *loop, uv_close_cb cb) {
  unsigned n = 0;
  mm__list_t *l, *tmp;
  mm__list_foreach_safe(l, tmp, &loop->fd_polls_all) {
    mm__fd_poll_t *p = container_of(l, mm__fd_poll_t, link);
    mm__assert(p->waiter == NULL);
    if (!p->h_made || uv_is_closing((uv_handle_t *) &p->h))
      continue;
    p->h.data = loop;
    uv_close((uv_handle_t *) &p->h, cb);
    n++;
  }
  return n;
}

static void sets_free(mm_loop_t *loop) {
  (void) loop;
}
#endif

void mm__fd_polls_free(mm_loop_t *loop) {
  mm__list_t *l;
  sets_free(loop);
  while ((l = mm__list_pop_front(&loop->fd_polls_all)) != NULL)
    free(container_of(l, mm__fd_poll_t, link));
  free(loop->fd_polls);
  loop->fd_polls = NULL;
  loop->fd_polls_cap = 0;
}

/* ---- a coroutine's wait -------------------------------------------------- */

/* Ends fw with status if `to` (WOKEN, CANCELLED) wins its ending; false,
 * touching nothing, if the ending was taken.  fired: its entry fired (a
 * one-shot entry is disarmed by then). */
static bool end_wait(fd_wait_t *fw, int to, int status, bool fired) {
  if (!mm__end_claim(fw->w.end, to))
    return false;
  mm__fd_poll_t *p = fw->poll;
  if (!fired || !INNER_SET)
    disarm(p);
  p->waiter = NULL;
  mm__timer_stop(p->loop, &fw->timer);
  mm__wait_deliver(&fw->w, status);
  return true;
}

static void on_timeout(mm__timer_t *t) {
  end_wait(container_of(t, fd_wait_t, timer), MM__END_WOKEN, -ETIMEDOUT,
           false);
}

static void fd_cancel(mm__wait_t *w, int reason) {
  end_wait(container_of(w, fd_wait_t, w), MM__END_CANCELLED, -reason,
           false);
}

static int wait_coro(mm_coro_t *c, int fd, int events, uint64_t timeout_ms) {
  int reason = mm__coro_stop_reason(c);
  if (reason != 0)
    return -reason;
  mm_loop_t *loop = c->loop;
  mm__fd_poll_t *p = poll_find(loop, fd);
  if (p != NULL && p->waiter != NULL)
    return -EBUSY;
  int r;
  if (p == NULL && (r = poll_new(loop, fd, &p)) != 0)
    return r;

  fd_wait_t fw;
  mm__wait_init(&fw.w);       /* a coroutine's: cannot fail */
  fw.w.cancel = fd_cancel;
  fw.poll = p;
  fw.events = events;
  mm__timer_init(&fw.timer, on_timeout);
  while ((r = arm(p, events)) == -EAGAIN)
    fw.poll = p = poll_find(loop, fd);     /* a handle the user closed */
  if (r != 0)
    return r;                 /* ready at once, or an error */
  if (timeout_ms != 0 &&
      (r = mm__timer_start(loop, &fw.timer, timeout_ms)) != 0) {
    disarm(p);
    return r;
  }
  p->waiter = &fw;
  return mm__wait_block(&fw.w);
}

int mm_wait_fd(int fd, int events, uint64_t timeout_ms) {
  if (events == 0 || (events & ~(MM_READABLE | MM_WRITABLE)) != 0)
    return -EINVAL;
  if (fd < 0)
    return -EBADF;
  mm_coro_t *c = mm__tls.coro;
  if (c != NULL)
    return wait_coro(c, fd, events, timeout_ms);
  if (mm__tls.loop != NULL)
    return -EDEADLK;
  /* A plain thread's deadline (mm_deadline_push) shortens the timeout;
   * either way the answer at the end is -ETIMEDOUT. */
  int r = mm__thread_timeout(&timeout_ms);
  return r != 0 ? r : wait_thread(fd, events, timeout_ms);
}
