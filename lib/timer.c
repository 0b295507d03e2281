/* Timers of the coroutine core: a binary min-heap per loop, ordered by
 * deadline then start order, driven by one uv_timer armed for the earliest
 * deadline.  A sleep or a spawn deadline therefore costs no libuv handle
 * and no malloc (the heap array grows by doubling and is kept).
 *
 * Loop thread only.  Not done here: wall-clock time; deadlines are in
 * uv_now() milliseconds, like libuv's own timers.
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>

static bool before(const mm__timer_t *a, const mm__timer_t *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void place(mm_loop_t *loop, size_t i, mm__timer_t *t) {
  loop->heap[i] = t;
  t->idx = i;
}

static void sift_up(mm_loop_t *loop, size_t i) {
  mm__timer_t *t = loop->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(t, loop->heap[parent]))
      break;
    place(loop, i, loop->heap[parent]);
    i = parent;
  }
  place(loop, i, t);
}

static void sift_down(mm_loop_t *loop, size_t i) {
  mm__timer_t *t = loop->heap[i];
  for (;;) {
    size_t l = 2 * i + 1;
    if (l >= loop->heap_n)
      break;
    size_t m = l;
    if (l + 1 < loop->heap_n && before(loop->heap[l + 1], loop->heap[l]))
      m = l + 1;
    if (!before(loop->heap[m], t))
      break;
    place(loop, i, loop->heap[m]);
    i = m;
  }
  place(loop, i, t);
}

static void on_uvtimer(uv_timer_t *h);

/* Arms the uv timer for the earliest deadline, or stops it. */
static void rearm(mm_loop_t *loop) {
  if (loop->heap_n == 0) {
    uv_timer_stop(&loop->uvtimer);
    return;
  }
  uint64_t now = uv_now(loop->uv);
  uint64_t due = loop->heap[0]->due;
  uv_timer_start(&loop->uvtimer, on_uvtimer, due > now ? due - now : 0, 0);
}

static void heap_remove(mm_loop_t *loop, mm__timer_t *t) {
  size_t i = t->idx;
  mm__timer_t *last = loop->heap[--loop->heap_n];
  t->idx = SIZE_MAX;
  if (last == t)
    return;
  place(loop, i, last);
  if (i > 0 && before(last, loop->heap[(i - 1) / 2]))
    sift_up(loop, i);
  else
    sift_down(loop, i);
}

static void on_uvtimer(uv_timer_t *h) {
  mm_loop_t *loop = h->data;
  uint64_t now = uv_now(loop->uv);

  mm__tls.loop = loop;
  while (loop->heap_n > 0 && loop->heap[0]->due <= now) {
    mm__timer_t *t = loop->heap[0];
    heap_remove(loop, t);
    t->cb(t);
  }
  rearm(loop);
}

void mm__timer_init(mm__timer_t *t, mm__timer_fn cb) {
  t->due = 0;
  t->seq = 0;
  t->idx = SIZE_MAX;
  t->cb = cb;
}

int mm__timer_start(mm_loop_t *loop, mm__timer_t *t, uint64_t ms) {
  if (t->idx != SIZE_MAX)
    heap_remove(loop, t);
  if (loop->heap_n == loop->heap_cap) {
    size_t cap = loop->heap_cap ? 2 * loop->heap_cap : 64;
    mm__timer_t **h = realloc(loop->heap, cap * sizeof(*h));
    if (h == NULL)
      return -ENOMEM;
    loop->heap = h;
    loop->heap_cap = cap;
  }
  /* uv_now() is the time the current loop iteration began; coroutines
   * may have run for a while since.  Deadlines count from the real now. */
  uv_update_time(loop->uv);
  uint64_t now = uv_now(loop->uv);
  t->due = ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
  t->seq = loop->timer_seq++;
  place(loop, loop->heap_n++, t);
  sift_up(loop, t->idx);
  if (loop->heap[0] == t)
    rearm(loop);
  return 0;
}

void mm__timer_stop(mm_loop_t *loop, mm__timer_t *t) {
  if (t->idx == SIZE_MAX)
    return;
  bool was_first = t->idx == 0;
  heap_remove(loop, t);
  if (was_first)
    rearm(loop);
}

int mm__timers_init(mm_loop_t *loop) {
  int r = uv_timer_init(loop->uv, &loop->uvtimer);
  if (r != 0)
    return r;
  loop->uvtimer.data = loop;
  uv_unref((uv_handle_t *) &loop->uvtimer);
  return 0;
}

unsigned mm__timers_close(mm_loop_t *loop, uv_close_cb cb) {
  /* The user may have closed it (uv_walk on a borrowed loop). */
  if (uv_is_closing((uv_handle_t *) &loop->uvtimer))
    return 0;
  uv_close((uv_handle_t *) &loop->uvtimer, cb);
  return 1;
}

void mm__timers_free(mm_loop_t *loop) {
  free(loop->heap);
  loop->heap = NULL;
  loop->heap_n = loop->heap_cap = 0;
}
