/* Coroutine handles that carry a generation (DESIGN.md, "One completion
 * protocol under every wait": a stale handle is recognised and never acts
 * on whichever coroutine reuses its memory).
 *
 * Every coroutine block (stack.c) owns one slot of a process-wide table
 * for as long as it is mapped, cached blocks included.  A slot holds the
 * block's address and one atomic word, gen << 32 | pins.  A public handle
 * is not the block's address but (gen << 32 | slot index + 1), taken when
 * the coroutine is spawned; the generation moves on (mm__handle_retire)
 * the moment the handle is given back -- joined, detached and ended, or
 * freed with its loop -- and when the block is unmapped.  A handle whose
 * generation is not the slot's is stale: -EINVAL, with no access to the
 * block, which may be unmapped by then (the table never is).
 *
 * Pins.  A call on a handle from any thread (mm_cancel, mm_join, ...)
 * pins the slot while it checks the generation and acts: one fetch_add
 * on the word both counts the pin and reads the generation, and retire is
 * one fetch_add on the same word, so of a pin and a retire one comes
 * first in the word's modification order: either the pin sees the old
 * generation and the retire then waits for the pin to go (the block is
 * not reused under the pinner), or the pin sees the new one and backs
 * out.  A pinned section is a few atomic operations and a lock-free push;
 * it never blocks and never takes a lock, so retire's wait, which may run
 * under loop->mu, is short and cannot deadlock.
 *
 * The table grows by segments under table_mu and never shrinks; segments
 * are published with a release store and read with acquire.  Not done
 * here: the handle's life cycle (the join word, coro.c).
 *
 * fork: table_mu is taken around fork() (a child never finds it held by a
 * thread it does not have), and the child drops every pin, each one left
 * by a thread that stayed with the parent, so that unmapping an inherited
 * loop's blocks does not wait for it forever.  The fork generation counts
 * the forks this process descends from, so that a loop can tell it was
 * inherited without a getpid() on every call.
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>

#define SEG_SLOTS 4096u
#define SEG_MAX   1024u     /* 4M blocks mapped at once */
#define PINS_MASK UINT64_C(0xffffffff)
#define GEN_ONE   (UINT64_C(1) << 32)

typedef struct slot {
  _Atomic uint64_t word;      /* gen << 32 | pins */
  _Atomic(mm_coro_t *) coro;  /* the block owning the slot, or NULL */
  _Atomic(mm_loop_t *) loop;  /* its loop (a block never changes loops) */
  uint32_t next_free;         /* free list (index + 1); table_mu */
} slot_t;

static _Atomic(slot_t *) segs[SEG_MAX];
static pthread_mutex_t table_mu = PTHREAD_MUTEX_INITIALIZER;
static uint32_t nslots;       /* table_mu */
static uint32_t free_head;    /* index + 1 of a free slot, or 0; table_mu */

static _Atomic unsigned fork_gen;

unsigned mm__fork_generation(void) {
  return atomic_load_explicit(&fork_gen, memory_order_relaxed);
}

static void before_fork(void) {
  mm__log_before_fork();
  pthread_mutex_lock(&table_mu);
}

static void after_fork_parent(void) {
  pthread_mutex_unlock(&table_mu);
  mm__log_after_fork(false);
}

static void after_fork_child(void) {
  mm__log_after_fork(true);
  atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
  for (uint32_t seg = 0; seg * SEG_SLOTS < nslots; seg++) {
    slot_t *s = atomic_load_explicit(&segs[seg], memory_order_relaxed);
    for (uint32_t i = 0; i < SEG_SLOTS; i++)
      atomic_fetch_and_explicit(&s[i].word, ~PINS_MASK,
                                memory_order_relaxed);
  }
  pthread_mutex_unlock(&table_mu);
}

static void register_fork(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

void mm__fork_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_fork);
}

static slot_t *slot_at(uint32_t idx) {
  slot_t *seg = atomic_load_explicit(&segs[idx / SEG_SLOTS],
                                     memory_order_acquire);
  return seg != NULL ? &seg[idx % SEG_SLOTS] : NULL;
}

int mm__slot_new(mm_coro_t *c, mm_loop_t *loop) {
  mm__fork_init();
  pthread_mutex_lock(&table_mu);
  uint32_t idx;
  if (free_head != 0) {
    idx = free_head - 1;
    free_head = slot_at(idx)->next_free;
  } else {
    if (nslots == SEG_MAX * SEG_SLOTS) {
      pthread_mutex_unlock(&table_mu);
      return -ENOMEM;
    }
    idx = nslots;
    if (idx % SEG_SLOTS == 0) {
      slot_t *seg = calloc(SEG_SLOTS, sizeof(*seg));
      if (seg == NULL) {
        pthread_mutex_unlock(&table_mu);
        return -ENOMEM;
      }
      for (uint32_t i = 0; i < SEG_SLOTS; i++)
        atomic_init(&seg[i].word, GEN_ONE);
      /* Release: the slots' initial words are seen by slot_at. */
      atomic_store_explicit(&segs[idx / SEG_SLOTS], seg,
                            memory_order_release);
    }
    nslots++;
  }
  atomic_store_explicit(&slot_at(idx)->coro, c, memory_order_relaxed);
  atomic_store_explicit(&slot_at(idx)->loop, loop, memory_order_relaxed);
  pthread_mutex_unlock(&table_mu);
  c->slot = idx;
  return 0;
}

void mm__slot_free(mm_coro_t *c) {
  slot_t *s = slot_at(c->slot);
  mm__handle_retire(c);
  pthread_mutex_lock(&table_mu);
  atomic_store_explicit(&s->coro, NULL, memory_order_relaxed);
  s->next_free = free_head;
  free_head = c->slot + 1;
  pthread_mutex_unlock(&table_mu);
}

/* Handle encoding: the generation above, the index + 1 below, so that no
 * handle is NULL. */
#if UINTPTR_MAX > UINT32_MAX
# define IDX_BITS 32
#else
# define IDX_BITS 22
#endif
#define IDX_MASK (((uintptr_t) 1 << IDX_BITS) - 1)

mm_coro_t *mm__handle_make(mm_coro_t *c) {
  uint64_t gen = atomic_load_explicit(&slot_at(c->slot)->word,
                                      memory_order_relaxed) >> 32;
  return (mm_coro_t *) (((uintptr_t) gen << IDX_BITS) |
                        ((uintptr_t) c->slot + 1));
}

/* The slot a handle names, or NULL. */
static slot_t *slot_of(const mm_coro_t *h) {
  uintptr_t v = (uintptr_t) h;
  if ((v & IDX_MASK) == 0)
    return NULL;
  uint32_t idx = (uint32_t) ((v & IDX_MASK) - 1);
  if (idx >= SEG_MAX * SEG_SLOTS)
    return NULL;
  return slot_at(idx);
}

static bool same_gen(uint64_t word, const mm_coro_t *h) {
  uintptr_t gen = (uintptr_t) (word >> 32);
  return (gen & (UINTPTR_MAX >> IDX_BITS)) == (uintptr_t) h >> IDX_BITS;
}

mm_coro_t *mm__handle_get(const mm_coro_t *h, bool *pinned) {
  slot_t *s = slot_of(h);
  if (s == NULL)
    return NULL;
  /* Driving the block's loop, this thread is the only one that reuses
   * or unmaps its blocks: a plain load of the generation is enough, and
   * stays true for as long as this thread does not release the block.
   * (A joiner elsewhere may retire the handle meanwhile: it then owns it,
   * and whatever this thread tries on the join word fails.)  tls.loop is
   * compared, never dereferenced: the loop may be any loop. */
  if (mm__tls.loop != NULL &&
      atomic_load_explicit(&s->loop, memory_order_relaxed) == mm__tls.loop) {
    *pinned = false;
    if (!same_gen(atomic_load_explicit(&s->word, memory_order_acquire), h))
      return NULL;
    return atomic_load_explicit(&s->coro, memory_order_relaxed);
  }
  *pinned = true;
  return mm__handle_pin(h);
}

mm_coro_t *mm__handle_pin(const mm_coro_t *h) {
  slot_t *s = slot_of(h);
  if (s == NULL)
    return NULL;
  /* acq_rel: pairs with retire's RMW on the same word (see above) and
   * with the unpin's release of an earlier pinner. */
  uint64_t w = atomic_fetch_add_explicit(&s->word, 1, memory_order_acq_rel);
  if (!same_gen(w, h)) {
    atomic_fetch_sub_explicit(&s->word, 1, memory_order_release);
    return NULL;
  }
  return atomic_load_explicit(&s->coro, memory_order_relaxed);
}

void mm__handle_unpin(mm_coro_t *c) {
  /* Release: the pinner's accesses to the block happen before a retire's
   * acquire load sees the count drop. */
  atomic_fetch_sub_explicit(&slot_at(c->slot)->word, 1,
                            memory_order_release);
}

void mm__handle_retire(mm_coro_t *c) {
  slot_t *s = slot_at(c->slot);
  uint64_t w = atomic_fetch_add_explicit(&s->word, GEN_ONE,
                                         memory_order_acq_rel);
  for (unsigned round = 0; (w & PINS_MASK) != 0;) {
    mm__backoff(&round);
    w = atomic_load_explicit(&s->word, memory_order_acquire);
  }
}
