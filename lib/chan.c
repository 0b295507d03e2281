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
 * Cancelling a waiting coroutine (its cancel callback, on its loop's
 * thread) takes its wait off the list if it is still there: it returns
 * -ECANCELED and nothing was transferred.  If a peer took it first, the
 * transfer stands and the cancellation stays pending for the coroutine's
 * next suspension (as for a run_sync call that completed).
 *
 * Lifetime of a wait: only the thread that takes it off a list touches it
 * afterwards, and its mm__wait_wake is the last access; the waiter cannot
 * return before that wake (a cancel finds it off the list and does
 * nothing).
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

/* Takes the first wait off list, or NULL.  mu held. */
static chan_wait_t *take_first(mm__list_t *list) {
  mm__list_t *n = mm__list_pop_front(list);
  return n != NULL ? container_of(n, chan_wait_t, link) : NULL;
}

/* The wait's cancel callback: on the waiting coroutine's loop thread. */
static void chan_cancel(mm__wait_t *w, int reason) {
  chan_wait_t *cw = container_of(w, chan_wait_t, w);
  mm_chan_t *ch = cw->ch;
  pthread_mutex_lock(&ch->mu);
  bool waiting = cw->link.next != &cw->link;
  if (waiting)
    mm__list_remove(&cw->link);
  pthread_mutex_unlock(&ch->mu);
  if (waiting)
    mm__coro_wake_local(w->coro, -reason);
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

int mm_chan_send(mm_chan_t *ch, void *item) {
  if (ch == NULL)
    return -EINVAL;
  chan_wait_t cw;
  int r = wait_init(&cw, ch);     /* -EDEADLK outside coroutines on a loop */
  if (r != 0)
    return r;

  pthread_mutex_lock(&ch->mu);
  if (ch->closed) {
    pthread_mutex_unlock(&ch->mu);
    return -EPIPE;
  }
  chan_wait_t *rx = take_first(&ch->receivers);
  if (rx != NULL) {               /* then the buffer is empty */
    rx->item = item;
    pthread_mutex_unlock(&ch->mu);
    mm__wait_wake(&rx->w, 0);
    return 0;
  }
  if (ch->count < ch->cap) {
    ch->buf[(ch->head + ch->count) % ch->cap] = item;
    ch->count++;
    pthread_mutex_unlock(&ch->mu);
    return 0;
  }
  cw.item = item;
  mm__list_push_back(&ch->senders, &cw.link);
  pthread_mutex_unlock(&ch->mu);
  return mm__wait_block(&cw.w);   /* 0, -EPIPE, -ECANCELED */
}

int mm_chan_recv(mm_chan_t *ch, void **item) {
  if (ch == NULL || item == NULL)
    return -EINVAL;
  chan_wait_t cw;
  int r = wait_init(&cw, ch);
  if (r != 0)
    return r;

  pthread_mutex_lock(&ch->mu);
  if (ch->count > 0) {
    *item = ch->buf[ch->head];
    ch->head = (ch->head + 1) % ch->cap;
    ch->count--;
    /* The first waiting sender's item takes the freed place. */
    chan_wait_t *tx = take_first(&ch->senders);
    if (tx != NULL) {
      ch->buf[(ch->head + ch->count) % ch->cap] = tx->item;
      ch->count++;
    }
    pthread_mutex_unlock(&ch->mu);
    if (tx != NULL)
      mm__wait_wake(&tx->w, 0);
    return 0;
  }
  if (ch->closed) {
    pthread_mutex_unlock(&ch->mu);
    return -EPIPE;
  }
  mm__list_push_back(&ch->receivers, &cw.link);
  pthread_mutex_unlock(&ch->mu);
  r = mm__wait_block(&cw.w);      /* 0, -EPIPE, -ECANCELED */
  if (r == 0)
    *item = cw.item;
  return r;
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
  /* Every waiter off its list under mu (a cancel then finds it gone), in
   * order, and woken after unlocking. */
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
    mm__wait_wake(&cw->w, -EPIPE);
  }
  return 0;
}

int mm_chan_free(mm_chan_t *ch) {
  if (ch == NULL)
    return -EINVAL;
  pthread_mutex_lock(&ch->mu);
  bool waiters = !mm__list_empty(&ch->senders) ||
                 !mm__list_empty(&ch->receivers);
  pthread_mutex_unlock(&ch->mu);
  if (waiters)
    return -EBUSY;
  pthread_mutex_destroy(&ch->mu);
  free(ch->buf);
  free(ch);
  return 0;
}
