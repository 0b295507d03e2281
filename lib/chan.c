/* Channels: bounded FIFO queues of pointers between coroutines of any
 * loops and plain threads, colour-blind like every waiting call.
 *
 * One mutex per channel protects everything in it.  A send or a receive
 * that can complete at once does so under the mutex; one that must wait
 * puts a chan_wait_t (on its own stack) at the tail of the channel's
 * senders or receivers and blocks on its mm__wait_t: a coroutine parks,
 * a thread blocks (after a short spin, lib/spin.c).  The peer that
 * completes it takes it off the list under the mutex, does its part of
 * the transfer there (a receiver's item is stored in the wait, a
 * sender's item moves into the buffer), and wakes it after unlocking.
 *
 *   send, a receiver waits:  hand the item straight to the first receiver
 *   send, room:              append to the ring buffer
 *   send, full:              wait in senders until a receiver makes room
 *   recv, items:             take the oldest; the first waiting sender's
 *                            item takes the freed place
 *   recv, empty:             wait in receivers (-EPIPE once closed)
 *   close:                   wake every waiter with -EPIPE; receivers
 *                            still drain what is buffered
 *
 * Who ends a wait is decided by the completion protocol (wait.c): a peer
 * claims WOKEN for a listed wait under mu before it unlinks it and
 * transfers its item; a cancel (the wait's callback, on its coroutine's
 * loop thread) claims CANCELLED first and only then takes mu to unlink
 * itself.  A peer that finds a wait already cancelled skips it and leaves
 * it listed: its cancel unlinks it.  So a cancel that lost never touches
 * the channel (which the winner's side may have closed and freed), and one
 * that won finds the channel alive, because mm_chan_free waits for every
 * listed wait to leave.  A cancelled wait returns -ECANCELED having
 * transferred nothing; if a peer claimed it first, the transfer stands and
 * the cancellation stays pending for the coroutine's next suspension (as
 * for a run_sync call that completed).
 *
 * Lifetime of a wait: its memory is valid while it is listed (the waiter
 * cannot return before its winner delivers, and a cancel winner unlinks
 * under mu before delivering); the winner's mm__wait_deliver, after
 * unlocking, is the last access.
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>

struct mm_chan {
  pthread_mutex_t mu;
  /* protected by mu */
  void **buf;                 /* ring of cap items */
  size_t cap, head, count;
  bool closed;
  mm__list_t senders;         /* chan_wait_t.link: waiting while full */
  mm__list_t receivers;       /* chan_wait_t.link: waiting while empty */
};

typedef struct chan_wait {
  mm__wait_t w;
  mm__list_t link;            /* in senders or receivers; self-linked once
                                 taken off; protected by ch->mu */
  mm_chan_t *ch;
  void *item;                 /* a sender's item, or the item received */
  struct chan_wait *next;     /* mm_chan_close's list of waits to wake */
} chan_wait_t;

int mm_chan_new(mm_chan_t **out, size_t capacity) {
  if (out == NULL)
    return -EINVAL;
  *out = NULL;
  if (capacity == 0 || capacity > SIZE_MAX / sizeof(void *))
    return -EINVAL;
  mm_chan_t *ch = calloc(1, sizeof(*ch));
  if (ch == NULL)
    return -ENOMEM;
  ch->buf = malloc(capacity * sizeof(void *));
  if (ch->buf == NULL) {
    free(ch);
    return -ENOMEM;
  }
  ch->cap = capacity;
  mm__list_init(&ch->senders);
  mm__list_init(&ch->receivers);
  pthread_mutex_init(&ch->mu, NULL);
  *out = ch;
  return 0;
}

/* Claims and takes off list the first wait still pending, or NULL.
 * Cancelled ones stay listed for their cancel to unlink.  mu held. */
static chan_wait_t *take_first(mm__list_t *list) {
  mm__list_t *n;
  for (n = list->next; n != list; n = n->next) {
    chan_wait_t *cw = container_of(n, chan_wait_t, link);
    if (mm__end_claim(cw->w.end, MM__END_WOKEN)) {
      mm__list_remove(n);
      return cw;
    }
  }
  return NULL;
}

/* The wait's cancel callback: on the waiting coroutine's loop thread.
 * Claims first: a loser must not touch ch, which may be freed. */
static void chan_cancel(mm__wait_t *w, int reason) {
  chan_wait_t *cw = container_of(w, chan_wait_t, w);
  if (!mm__end_claim(w->end, MM__END_CANCELLED))
    return;
  mm_chan_t *ch = cw->ch;
  pthread_mutex_lock(&ch->mu);
  mm__list_remove(&cw->link);
  pthread_mutex_unlock(&ch->mu);
  mm__coro_wake_local(w->coro, -reason);   /* last access: ch may go now */
}

/* A plain thread's channel wait at its deadline (mm__wait_block_deadline):
 * claims CANCELLED, as a coroutine's cancel does, and unlinks itself --
 * unless a peer claimed first: its transfer stands. */
static bool chan_take_back(mm__wait_t *w) {
  if (!mm__end_claim(w->end, MM__END_CANCELLED))
    return false;
  chan_wait_t *cw = container_of(w, chan_wait_t, w);
  mm_chan_t *ch = cw->ch;
  pthread_mutex_lock(&ch->mu);
  mm__list_remove(&cw->link);
  pthread_mutex_unlock(&ch->mu);
  return true;
}

/* Prepares a wait for the calling context.  Before taking mu: making a
 * thread's waiter may allocate. */
static int wait_init(chan_wait_t *cw, mm_chan_t *ch) {
  int r = mm__wait_init(&cw->w);
  if (r != 0)
    return r;
  cw->w.cancel = chan_cancel;
  cw->ch = ch;
  mm__list_init(&cw->link);
  return 0;
}

/* The part of a send that never waits, under ch->mu: hands item to the
 * first receiver (*woken: deliver to it after unlocking) or puts it in
 * the buffer; -EPIPE closed, -EAGAIN full. */
static int send_locked(mm_chan_t *ch, void *item, chan_wait_t **woken) {
  *woken = NULL;
  if (ch->closed)
    return -EPIPE;
  chan_wait_t *rx = take_first(&ch->receivers);
  if (rx != NULL) {               /* then the buffer is empty */
    rx->item = item;
    *woken = rx;
    return 0;
  }
  if (ch->count < ch->cap) {
    ch->buf[(ch->head + ch->count) % ch->cap] = item;
    ch->count++;
    return 0;
  }
  return -EAGAIN;
}

/* The part of a receive that never waits, under ch->mu: takes the oldest
 * item, whose place the first waiting sender's item takes (*woken:
 * deliver to that sender after unlocking); -EPIPE closed and drained,
 * -EAGAIN empty. */
static int recv_locked(mm_chan_t *ch, void **item, chan_wait_t **woken) {
  *woken = NULL;
  if (ch->count > 0) {
    *item = ch->buf[ch->head];
    ch->head = (ch->head + 1) % ch->cap;
    ch->count--;
    chan_wait_t *tx = take_first(&ch->senders);
    if (tx != NULL) {
      ch->buf[(ch->head + ch->count) % ch->cap] = tx->item;
      ch->count++;
      *woken = tx;
    }
    return 0;
  }
  return ch->closed ? -EPIPE : -EAGAIN;
}

/* Unlocks ch and completes the wait send_locked or recv_locked took. */
static int unlock_and_deliver(mm_chan_t *ch, chan_wait_t *woken, int r) {
  pthread_mutex_unlock(&ch->mu);
  if (woken != NULL)
    mm__wait_deliver(&woken->w, 0);
  return r;
}

int mm_chan_send(mm_chan_t *ch, void *item) {
  if (ch == NULL)
    return -EINVAL;
  chan_wait_t cw;
  int r = wait_init(&cw, ch);     /* -EDEADLK outside coroutines on a loop */
  if (r != 0)
    return r;

  chan_wait_t *woken;
  pthread_mutex_lock(&ch->mu);
  r = send_locked(ch, item, &woken);
  if (r != -EAGAIN)
    return unlock_and_deliver(ch, woken, r);
  cw.item = item;
  mm__list_push_back(&ch->senders, &cw.link);
  pthread_mutex_unlock(&ch->mu);
  return mm__wait_block_deadline(&cw.w, chan_take_back);         /* 0, -EPIPE, -ECANCELED, -ETIMEDOUT */
}

int mm_chan_try_send(mm_chan_t *ch, void *item) {
  if (ch == NULL)
    return -EINVAL;
  chan_wait_t *woken;
  pthread_mutex_lock(&ch->mu);
  int r = send_locked(ch, item, &woken);
  return unlock_and_deliver(ch, woken, r);
}

int mm_chan_recv(mm_chan_t *ch, void **item) {
  if (ch == NULL || item == NULL)
    return -EINVAL;
  chan_wait_t cw;
  int r = wait_init(&cw, ch);
  if (r != 0)
    return r;

  chan_wait_t *woken;
  pthread_mutex_lock(&ch->mu);
  r = recv_locked(ch, item, &woken);
  if (r != -EAGAIN)
    return unlock_and_deliver(ch, woken, r);
  mm__list_push_back(&ch->receivers, &cw.link);
  pthread_mutex_unlock(&ch->mu);
  r = mm__wait_block_deadline(&cw.w, chan_take_back);            /* 0, -EPIPE, -ECANCELED, -ETIMEDOUT */
  if (r == 0)
    *item = cw.item;
  return r;
}

int mm_chan_try_recv(mm_chan_t *ch, void **item) {
  if (ch == NULL || item == NULL)
    return -EINVAL;
  chan_wait_t *woken;
  pthread_mutex_lock(&ch->mu);
  int r = recv_locked(ch, item, &woken);
  return unlock_and_deliver(ch, woken, r);
}

int mm_chan_close(mm_chan_t *ch) {
  if (ch == NULL)
    return -EINVAL;
  pthread_mutex_lock(&ch->mu);
  if (ch->closed) {
    pthread_mutex_unlock(&ch->mu);
    return -EPIPE;
  }
  ch->closed = true;
  /* Every pending waiter claimed and off its list under mu, in order,
   * and woken after unlocking; cancelled ones leave by themselves. */
  chan_wait_t *first = NULL, **tail = &first, *cw;
  while ((cw = take_first(&ch->senders)) != NULL ||
         (cw = take_first(&ch->receivers)) != NULL) {
    *tail = cw;
    tail = &cw->next;
  }
  *tail = NULL;
  pthread_mutex_unlock(&ch->mu);
  while (first != NULL) {
    cw = first;
    first = cw->next;             /* before the wake: its last access */
    mm__wait_deliver(&cw->w, -EPIPE);
  }
  return 0;
}

/* Whether list holds a wait nobody has ended yet.  mu held. */
static bool any_pending(const mm__list_t *list) {
  for (const mm__list_t *n = list->next; n != list; n = n->next)
    if (atomic_load_explicit(container_of(n, chan_wait_t, link)->w.end,
                             memory_order_acquire) == MM__END_PENDING)
      return true;
  return false;
}

int mm_chan_free(mm_chan_t *ch) {
  if (ch == NULL)
    return -EINVAL;
  /* A listed wait that is cancelled is leaving: its cancel, on its loop's
   * thread between its claim and this mutex, unlinks it in a moment. */
  for (unsigned round = 0;; mm__backoff(&round)) {
    pthread_mutex_lock(&ch->mu);
    bool pending = any_pending(&ch->senders) || any_pending(&ch->receivers);
    bool leaving = !mm__list_empty(&ch->senders) ||
                   !mm__list_empty(&ch->receivers);
    pthread_mutex_unlock(&ch->mu);
    if (pending)
      return -EBUSY;
    if (!leaving)
      break;
  }
  pthread_mutex_destroy(&ch->mu);
  free(ch->buf);
  free(ch);
  return 0;
}
