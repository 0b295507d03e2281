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
 * The poll handles.  Each loop keeps one uv_poll_t per fd number it has
 * waited on, in an array indexed by the number (loop thread only), made
 * at the first wait that has to park and kept until mm_loop_free: later
 * waits on that number allocate nothing and skip the first wait's system
 * calls (uv_poll_init's epoll_ctl pair that tests the fd and its ioctl
 * that makes it non-blocking, our fcntl pair that undoes that).  Like
 * libuv's own table of watchers, the array grows to the highest number
 * waited on; fd numbers are small and reused, so it stays small.
 *
 * A handle is registered with the kernel only while a wait is under way:
 * uv_poll_start at the start of each wait, uv_poll_stop at its end.  That
 * is what lets the user close fd and reuse its number between two waits
 * without telling us, which libuv's own contract forbids (uv_poll_stop
 * before close).  epoll registers a file description, not a number: a
 * registration left in place while fd is closed would either vanish (the
 * description's last reference went: a later wait on the reused number
 * would never be woken) or outlive the number (a dup elsewhere, a forked
 * child: its events would arrive under the number for good, waking waits
 * on whatever the number now is, and, level-triggered, spinning the loop
 * while nobody waits; no epoll_ctl can remove it once the number names
 * another file).  Stopped, a handle holds only the number, good for any
 * later file under it.  The price: libuv 1.44's uv_poll_start always
 * begins with an EPOLL_CTL_DEL (uv__poll_stop, uv__platform_invalidate_fd)
 * and uv_poll_stop ends with one, so a wait that parks costs DEL, ADD (at
 * the next poll) and DEL besides the poll itself.
 *
 * Before it parks, a wait looks at fd once with poll(2) and no timeout: a
 * ready fd answers at once (one system call in all), a closed one is
 * -EBADF, and a file epoll cannot watch (a regular file, which poll always
 * reports ready) never reaches libuv, whose epoll backend aborts when it
 * cannot add an fd.  That look stands in for the check that fd is still
 * open, which a cached handle needs anyway.
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

typedef struct fd_wait fd_wait_t;

/* A loop's poll handle for one fd number.  Loop thread only. */
typedef struct mm__fd_poll {
  uv_poll_t h;                /* h.data = this, until closed */
  mm_loop_t *loop;
  int fd;
  fd_wait_t *waiter;          /* the wait under way on it, or NULL; the
                                 handle is started exactly while set */
  mm__list_t link;            /* loop->fd_polls_all */
} mm__fd_poll_t;

/* A coroutine's wait on fd.  Lives on the waiting coroutine's stack; it is
 * reached only through its handle's waiter slot, its timer and its cancel
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

/* ---- the loop's poll handles --------------------------------------------- */

/* The handle kept for fd, or NULL.  One the user closed behind our back (a
 * borrowed loop shut down with uv_walk) is dropped from the array once no
 * wait is under way on it; it stays listed, to be freed with the others. */
static mm__fd_poll_t *poll_find(mm_loop_t *loop, int fd) {
  if ((size_t) fd >= loop->fd_polls_cap)
    return NULL;
  mm__fd_poll_t *p = loop->fd_polls[fd];
  if (p != NULL && p->waiter == NULL &&
      uv_is_closing((uv_handle_t *) &p->h)) {
    loop->fd_polls[fd] = NULL;
    p = NULL;
  }
  return p;
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

/* Makes and keeps the handle for fd.  uv_poll_init makes fd non-blocking;
 * its flags are put back as they were (the description may be shared with
 * code that reads it blocking, and later files under the number are never
 * touched either). */
static int poll_new(mm_loop_t *loop, int fd, mm__fd_poll_t **out) {
  int r = slots_reserve(loop, fd);
  if (r != 0)
    return r;
  mm__fd_poll_t *p = malloc(sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    r = -errno;
    goto err_free;
  }
  r = uv_poll_init(loop->uv, &p->h, fd);
  if (r != 0)
    goto err_free;
  if (!(flags & O_NONBLOCK))
    fcntl(fd, F_SETFL, flags);
  /* The loop's async reference alone keeps uv_run going (drive.c). */
  uv_unref((uv_handle_t *) &p->h);
  p->h.data = p;
  p->loop = loop;
  p->fd = fd;
  p->waiter = NULL;
  mm__list_push_back(&loop->fd_polls_all, &p->link);
  loop->fd_polls[fd] = p;
  *out = p;
  return 0;

err_free:
  free(p);
  return r == UV_EEXIST ? -EBUSY : r;
}

unsigned mm__fd_polls_close(mm_loop_t *loop, uv_close_cb cb) {
  unsigned n = 0;
  mm__list_t *l, *tmp;
  mm__list_foreach_safe(l, tmp, &loop->fd_polls_all) {
    mm__fd_poll_t *p = container_of(l, mm__fd_poll_t, link);
    mm__assert(p->waiter == NULL);
    if (uv_is_closing((uv_handle_t *) &p->h))
      continue;
    p->h.data = loop;
    uv_close((uv_handle_t *) &p->h, cb);
    n++;
  }
  return n;
}

void mm__fd_polls_free(mm_loop_t *loop) {
  mm__list_t *l;
  while ((l = mm__list_pop_front(&loop->fd_polls_all)) != NULL)
    free(container_of(l, mm__fd_poll_t, link));
  free(loop->fd_polls);
  loop->fd_polls = NULL;
  loop->fd_polls_cap = 0;
}

/* ---- a coroutine's wait -------------------------------------------------- */

/* Ends fw with status if `to` (WOKEN, CANCELLED) wins its ending; false,
 * touching nothing, if the ending was taken. */
static bool end_wait(fd_wait_t *fw, int to, int status) {
  if (!mm__end_claim(fw->w.end, to))
    return false;
  mm__fd_poll_t *p = fw->poll;
  if (!uv_is_closing((uv_handle_t *) &p->h))   /* closing: stopped */
    uv_poll_stop(&p->h);
  p->waiter = NULL;
  mm__timer_stop(p->loop, &fw->timer);
  mm__wait_deliver(&fw->w, status);
  return true;
}

static void on_poll(uv_poll_t *h, int status, int uv_events) {
  mm__fd_poll_t *p = h->data;
  fd_wait_t *fw = p->waiter;
  mm__assert(fw != NULL);     /* started only while a wait is under way */
  int ready = ((uv_events & UV_READABLE) ? MM_READABLE : 0) |
              ((uv_events & UV_WRITABLE) ? MM_WRITABLE : 0);
  ready &= fw->events;
  /* status < 0: libuv saw POLLERR.  A hang-up alone comes with the events
   * asked merged in by libuv. */
  if (status < 0 || ready == 0)
    ready = fw->events;
  end_wait(fw, MM__END_WOKEN, ready);
}

static void on_timeout(mm__timer_t *t) {
  end_wait(container_of(t, fd_wait_t, timer), MM__END_WOKEN, -ETIMEDOUT);
}

static void fd_cancel(mm__wait_t *w, int reason) {
  end_wait(container_of(w, fd_wait_t, w), MM__END_CANCELLED, -reason);
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
  do
    r = poll_once(fd, events, 0);
  while (r == -EINTR);
  if (r != 0)
    return r;
  if (p == NULL && (r = poll_new(loop, fd, &p)) != 0)
    return r;

  fd_wait_t fw;
  mm__wait_init(&fw.w);       /* a coroutine's: cannot fail */
  fw.w.cancel = fd_cancel;
  fw.poll = p;
  fw.events = events;
  mm__timer_init(&fw.timer, on_timeout);
  if (timeout_ms != 0 &&
      (r = mm__timer_start(loop, &fw.timer, timeout_ms)) != 0)
    return r;
  r = uv_poll_start(&p->h, ((events & MM_READABLE) ? UV_READABLE : 0) |
                           ((events & MM_WRITABLE) ? UV_WRITABLE : 0),
                    on_poll);
  if (r != 0) {
    mm__timer_stop(loop, &fw.timer);
    return r == UV_EEXIST ? -EBUSY : r;
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
  uint64_t left;
  if (mm__deadline_ms_left(&mm__tls.deadlines, &left)) {
    if (left == 0)
      return -ETIMEDOUT;
    if (timeout_ms == 0 || left < timeout_ms)
      timeout_ms = left;
  }
  return wait_thread(fd, events, timeout_ms);
}
