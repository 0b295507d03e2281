/* Coroutine memory: one mmap'ed block holds a coroutine's struct at the top
 * and its stack below, over a PROT_NONE guard page (the picture is beside
 * struct mm_coro in mm-internal.h).  Blocks of the loop's default size are
 * kept in a per-loop cache when their coroutine is released, so that a
 * spawn usually touches neither mmap nor malloc.
 *
 * Not done here: anything about scheduling.  The cache belongs to the
 * loop's driver thread (or to a thread holding loop->mu while nobody drives
 * the loop); other threads get fresh blocks.
 */
#include "mm-internal.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef HAVE_VALGRIND_VALGRIND_H
# include <valgrind/valgrind.h>
#else
# define VALGRIND_STACK_REGISTER(lo, hi) 0u
# define VALGRIND_STACK_DEREGISTER(id) ((void) (id))
#endif
#ifdef MM__ASAN
# include <sanitizer/asan_interface.h>
#endif
#ifdef MM__TSAN
# include <sanitizer/tsan_interface.h>
#endif

/* At most this many free blocks are kept per loop. */
#define CACHE_MAX 64

/* Spawns on any thread, loop threads and plain ones, may be the first to
 * ask.  Whoever finds 0 reads sysconf and stores what it got: every
 * writer stores the same value, so racing stores are harmless once they
 * are atomic.  Relaxed: the value is all there is, nothing is published
 * with it (as mm__cpu_count in spin.c). */
size_t mm__page_size(void) {
  static _Atomic size_t page;   /* 0 until read */
  size_t v = atomic_load_explicit(&page, memory_order_relaxed);
  if (v == 0) {
    v = (size_t) sysconf(_SC_PAGESIZE);
    atomic_store_explicit(&page, v, memory_order_relaxed);
  }
  return v;
}

static size_t round_up(size_t n, size_t to) {
  return (n + to - 1) / to * to;
}

/* Resets the parts of a (possibly recycled) block that a spawn does not
 * set itself. */
static void coro_reset(mm_coro_t *c) {
  void *map = c->map;
  size_t map_size = c->map_size;
  char *stack_lo = c->stack_lo;
  size_t stack_size = c->stack_size;
  unsigned vg = c->vg_stack_id;
  void *fiber = c->tsan_fiber;
  uint32_t slot = c->slot;

  memset(c, 0, sizeof(*c));
  c->map = map;
  c->map_size = map_size;
  c->stack_lo = stack_lo;
  c->stack_size = stack_size;
  c->vg_stack_id = vg;
  c->tsan_fiber = fiber;
  c->slot = slot;
  mm__list_init(&c->link);
  mm__list_init(&c->all);
#ifdef MM__ASAN
  /* Frames of the previous coroutine may still be poisoned. */
  ASAN_UNPOISON_MEMORY_REGION(stack_lo, stack_size);
#endif
}

mm_coro_t *mm__coro_alloc(mm_loop_t *loop, size_t stack_size, bool cached) {
  size_t page = mm__page_size();

  if (stack_size == 0)
    stack_size = loop->opt.stack_size;
  if (cached && stack_size == loop->opt.stack_size) {
    mm__list_t *n = mm__list_pop_front(&loop->cache);
    if (n != NULL) {
      mm_coro_t *c = container_of(n, mm_coro_t, link);
      loop->ncache--;
      coro_reset(c);
      return c;
    }
  }

  if (stack_size < 4 * page)
    stack_size = 4 * page;
  size_t body = round_up(stack_size + sizeof(mm_coro_t), page);
  size_t map_size = page + body;
  char *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED)
    return NULL;
  if (mprotect(map, page, PROT_NONE) != 0) {
    munmap(map, map_size);
    return NULL;
  }

  /* The struct sits at the very top, 64-byte aligned; the stack is all the
   * room between the guard page and the struct. */
  uintptr_t top = (uintptr_t) map + map_size;
  mm_coro_t *c = (mm_coro_t *) ((top - sizeof(mm_coro_t)) & ~(uintptr_t) 63);
  c->map = map;
  c->map_size = map_size;
  c->stack_lo = map + page;
  c->stack_size = (size_t) ((char *) c - c->stack_lo);
  if (mm__slot_new(c, loop) != 0) {
    munmap(map, map_size);
    return NULL;
  }
  c->vg_stack_id = VALGRIND_STACK_REGISTER(c->stack_lo,
                                           c->stack_lo + c->stack_size);
  coro_reset(c);
  return c;
}

void mm__coro_unmap(mm_coro_t *c) {
#ifdef MM__TSAN
  if (c->tsan_fiber != NULL)
    __tsan_destroy_fiber(c->tsan_fiber);
#endif
  VALGRIND_STACK_DEREGISTER(c->vg_stack_id);
  mm__slot_free(c);
  munmap(c->map, c->map_size);
}

/* Keeps c's block for a later spawn if it has the default size and the
 * cache has room; unmaps it otherwise. */
void mm__coro_cache_put(mm_loop_t *loop, mm_coro_t *c) {
  size_t page = mm__page_size();
  size_t want = round_up(loop->opt.stack_size < 4 * page
                             ? 4 * page : loop->opt.stack_size,
                         page);
  size_t have = c->map_size - page;

  if (loop->ncache < CACHE_MAX &&
      have == round_up(want + sizeof(mm_coro_t), page)) {
    mm__list_push_back(&loop->cache, &c->link);
    loop->ncache++;
    return;
  }
  mm__coro_unmap(c);
}

void mm__cache_free(mm_loop_t *loop) {
  mm__list_t *n;
  while ((n = mm__list_pop_front(&loop->cache)) != NULL)
    mm__coro_unmap(container_of(n, mm_coro_t, link));
  loop->ncache = 0;
}
