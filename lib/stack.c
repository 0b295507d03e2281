/* Coroutine memory: one mmap'ed block holds a coroutine's struct at the top
 * and its stack below, over a guard of GUARD_BYTES (the picture is beside
 * struct mm_coro in mm-internal.h).  Blocks of the loop's default size are
 * kept in a per-loop cache when their coroutine is released, so that a
 * spawn usually touches neither mmap nor malloc.
 *
 * Guards and vm.max_map_count.  A PROT_NONE range made by mprotect is
 * a mapping (VMA) of its own, and it splits its block's in two: two
 * mappings per coroutine, so the default vm.max_map_count (65530) stops
 * a process at about 32,700 live coroutines.  Since Linux 6.13 a guard can
 * instead be a marker in the page table (MADV_GUARD_INSTALL): a touch
 * faults as on PROT_NONE, the block stays one mapping, and blocks that
 * the kernel places side by side merge into one, so coroutines cost no
 * mappings at all.  The first block made finds out which kind the kernel
 * has.  When mappings run out all the same (an older kernel), the error
 * in the log names vm.max_map_count.  Carving stacks out of larger slabs
 * gains nothing over this: with mprotect'ed guards a slab is split as
 * much, and with markers separate blocks merge anyway.
 *
 * The cache is a stack (the block cached last is reused first), and a
 * block that has stayed in it for MM__STACK_CACHE_IDLE_MS below the
 * MM__STACK_CACHE_WARM most recent ones gives back its stack's pages
 * (MADV_DONTNEED), all but the top page, which holds the struct and the
 * frames of a shallow coroutine: a burst of deep coroutines does not
 * leave its memory behind.  Emptying a block when it is cached would be
 * simpler, but then a loop that spawns 64 at a time pays a madvise per
 * coroutine and faults every touched page in again (measured: spawn + join
 * of 64 coroutines using 64 KiB each, 0.9 -> 29 us a coroutine); a
 * one-shot timer (loop->cache_timer) finds the idle ones instead.
 *
 * Not done here: anything about scheduling.  The cache belongs to the
 * loop's driver thread (or to a thread holding loop->mu while nobody drives
 * the loop); other threads get fresh blocks.
 */
#include "mm-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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

/* The guard under each stack.  More than a page: a frame larger than the
 * guard steps over it, and below it lies the top of the next block (a
 * coroutine's struct), so a big stack buffer would write there unseen.
 * Address space is all it costs (and a share of a page table). */
#define GUARD_BYTES (64 * 1024)

/* Linux 6.13's guard markers (<linux/mman.h> of older headers lacks it). */
#ifndef MADV_GUARD_INSTALL
# define MADV_GUARD_INSTALL 102
#endif

enum guard_kind { GUARD_UNKNOWN, GUARD_MARKER, GUARD_MPROTECT };

/* Which guard this kernel gives: found by the first block made, on any
 * thread; racing finders store the same answer.  Relaxed: the value is
 * all there is. */
static _Atomic int guard_kind;
/* The log has said that mappings ran out. */
static _Atomic bool maps_reported;

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

static size_t guard_size(size_t page) {
  return GUARD_BYTES > page ? round_up(GUARD_BYTES, page) : page;
}

void mm__stack_guard_mprotect(void) {
  atomic_store_explicit(&guard_kind, GUARD_MPROTECT, memory_order_relaxed);
}

void mm__stack_guard_unknown(void) {
  atomic_store_explicit(&guard_kind, GUARD_UNKNOWN, memory_order_relaxed);
}

bool mm__stack_guard_is_marker(void) {
  return atomic_load_explicit(&guard_kind, memory_order_relaxed) ==
         GUARD_MARKER;
}

/* Whether the marker just installed at p guards: the kernel refuses to
 * copy from it (EFAULT).  An emulator (qemu-user) may take the advice
 * and do nothing, answering 0: the first block asks once, with a pipe.
 * 1: it guards, 0: it does not, -1: cannot tell now (no descriptor free:
 * a server making its first coroutine at its descriptor limit). */
static int marker_guards(const char *p) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    return -1;
  bool guards = write(fds[1], p, 1) < 0 && errno == EFAULT;
  close(fds[0]);
  close(fds[1]);
  return guards;
}

/* Makes the len bytes at p a guard: markers if the kernel has them, else
 * PROT_NONE.  0 or -errno.  A first try that fails in any way (EINVAL
 * from a kernel without markers, EPERM from a seccomp filter that does
 * not know the advice, a marker that does not guard) settles on mprotect
 * for good.  A marker that cannot be checked now is backed by mprotect
 * for this block only, and the next block asks again: settling on
 * mprotect for want of a descriptor would cost every later coroutine a
 * mapping more. */
static int guard(char *p, size_t len) {
  int kind = atomic_load_explicit(&guard_kind, memory_order_relaxed);
  if (kind != GUARD_MPROTECT) {
    if (madvise(p, len, MADV_GUARD_INSTALL) == 0) {
      int works = kind == GUARD_MARKER ? 1 : marker_guards(p);
      if (works == 1) {
        if (kind == GUARD_UNKNOWN)
          atomic_store_explicit(&guard_kind, GUARD_MARKER,
                                memory_order_relaxed);
        return 0;
      }
      if (works < 0)
        return mprotect(p, len, PROT_NONE) == 0 ? 0 : -errno;
    } else if (kind == GUARD_MARKER) {
      return -errno;
    }
    atomic_store_explicit(&guard_kind, GUARD_MPROTECT, memory_order_relaxed);
  }
  return mprotect(p, len, PROT_NONE) == 0 ? 0 : -errno;
}

unsigned mm__max_map_count(void) {
  unsigned max = 0;
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  if (f == NULL)
    return 0;
  if (fscanf(f, "%u", &max) != 1)
    max = 0;
  fclose(f);
  return max;
}

unsigned mm__maps_in_use(void) {
  unsigned n = 0;
  int ch;
  FILE *f = fopen("/proc/self/maps", "r");
  if (f == NULL)
    return 0;
  while ((ch = getc(f)) != EOF)
    n += ch == '\n';
  fclose(f);
  return n;
}

/* mmap or mprotect said ENOMEM: if that is the mapping limit, says so in
 * the log, once per process -- a plain -ENOMEM from mm_spawn would send
 * the user looking for memory that is there. */
static void report_if_out_of_maps(void) {
  unsigned max = mm__max_map_count(), used = mm__maps_in_use();
  if (max == 0 || used + 16 < max ||
      atomic_exchange_explicit(&maps_reported, true, memory_order_relaxed))
    return;
  mm__log(MM_LOG_ERROR, "coroutine stack: out of mappings (%u in use, "
          "vm.max_map_count is %u)%s; raise vm.max_map_count (sysctl) for "
          "more live coroutines", used, max,
          mm__stack_guard_is_marker() ? ""
              : ": this kernel's stack guards (no MADV_GUARD_INSTALL, "
                "Linux < 6.13) take two mappings per coroutine");
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
  size_t gsize = guard_size(page);
  size_t map_size = gsize + body;
  char *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) {
    if (errno == ENOMEM)
      report_if_out_of_maps();
    return NULL;
  }
  int r = guard(map, gsize);
  if (r != 0) {
    munmap(map, map_size);
    if (r == -ENOMEM)
      report_if_out_of_maps();
    return NULL;
  }

  /* The struct sits at the very top, 64-byte aligned; the stack is all the
   * room between the guard and the struct. */
  uintptr_t top = (uintptr_t) map + map_size;
  mm_coro_t *c = (mm_coro_t *) ((top - sizeof(mm_coro_t)) & ~(uintptr_t) 63);
  c->map = map;
  c->map_size = map_size;
  c->stack_lo = map + gsize;
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

/* Gives back the pages of c's stack below the top page (the struct's).
 * They read as zeros when touched again, which a stack does not mind.  A
 * failure only leaves the pages where they are. */
static void empty_stack(mm_coro_t *c, size_t page) {
  char *top = (char *) ((uintptr_t) c & ~(uintptr_t) (page - 1));
  if (top > c->stack_lo)
    madvise(c->stack_lo, (size_t) (top - c->stack_lo), MADV_DONTNEED);
  c->emptied = true;
}

/* Empties the blocks below the MM__STACK_CACHE_WARM most recent that
 * were cached at least MM__STACK_CACHE_IDLE_MS before now, oldest first
 * (at the back: the cache is a stack), and arms the timer for the next
 * one still too young, if any. */
void mm__coro_cache_sweep(mm_loop_t *loop, uint64_t now) {
  size_t page = mm__page_size();
  size_t pos = loop->ncache;      /* of n, counted from the most recent */
  for (mm__list_t *n = loop->cache.prev;
       n != &loop->cache && pos > MM__STACK_CACHE_WARM;
       n = n->prev, pos--) {
    mm_coro_t *c = container_of(n, mm_coro_t, link);
    if (c->emptied)
      continue;
    if (now < c->cached_at + MM__STACK_CACHE_IDLE_MS) {
      /* If the timer cannot be armed (no memory for its heap), the blocks
       * stay as they are until the next block cached arms it. */
      mm__timer_start(loop, &loop->cache_timer,
                      c->cached_at + MM__STACK_CACHE_IDLE_MS - now);
      return;
    }
    empty_stack(c, page);
  }
}

void mm__coro_cache_on_timer(mm__timer_t *t) {
  mm_loop_t *loop = container_of(t, mm_loop_t, cache_timer);
  mm__coro_cache_sweep(loop, uv_now(loop->uv));
}

/* Keeps c's block for a later spawn if it has the default size and the
 * cache has room; unmaps it otherwise. */
void mm__coro_cache_put(mm_loop_t *loop, mm_coro_t *c) {
  size_t page = mm__page_size();
  size_t want = round_up(loop->opt.stack_size < 4 * page
                             ? 4 * page : loop->opt.stack_size,
                         page);
  size_t have = c->map_size - guard_size(page);

  if (loop->ncache < CACHE_MAX &&
      have == round_up(want + sizeof(mm_coro_t), page)) {
    c->cached_at = uv_now(loop->uv);
    mm__list_push_front(&loop->cache, &c->link);
    loop->ncache++;
    /* Armed once for many blocks: the sweep re-arms itself. */
    if (loop->ncache > MM__STACK_CACHE_WARM &&
        loop->cache_timer.idx == SIZE_MAX)
      mm__timer_start(loop, &loop->cache_timer, MM__STACK_CACHE_IDLE_MS);
    return;
  }
  mm__coro_unmap(c);
}

/* ---- spare blocks for spawns from other threads ---------------------------
 *
 * The cache belongs to the loop's thread; a spawn from elsewhere (a
 * coroutine of another loop calling mm_run_async, a plain thread's
 * mm_spawn) used to map a block of its own each time: an mmap, a guard
 * and an munmap per call.  So the loop keeps a few blocks for them under
 * mu, which such a spawn holds anyway to look at the loop's state: it
 * takes one, and marks that it did; the loop's thread, before it sleeps
 * (drive.c, on_prepare), moves blocks from its cache back up to
 * SPARE_TARGET.  A
 * loop that is never spawned on from elsewhere never takes mu for this. */
#define SPARE_TARGET 4

mm_coro_t *mm__coro_spare_take(mm_loop_t *loop, size_t stack_size) {
  atomic_store_explicit(&loop->spare_wanted, true, memory_order_relaxed);
  if (stack_size != 0 && stack_size != loop->opt.stack_size)
    return NULL;
  mm__list_t *n = mm__list_pop_front(&loop->spare);
  if (n == NULL)
    return NULL;
  loop->nspare--;
  mm_coro_t *c = container_of(n, mm_coro_t, link);
  coro_reset(c);
  return c;
}

void mm__coro_spare_refill(mm_loop_t *loop) {
  pthread_mutex_lock(&loop->mu);
  while (loop->nspare < SPARE_TARGET) {
    mm__list_t *n = mm__list_pop_front(&loop->cache);
    if (n == NULL)
      break;
    loop->ncache--;
    mm__list_push_back(&loop->spare, n);
    loop->nspare++;
  }
  atomic_store_explicit(&loop->spare_wanted, false, memory_order_relaxed);
  pthread_mutex_unlock(&loop->mu);
}

void mm__cache_free(mm_loop_t *loop) {
  mm__list_t *n;
  while ((n = mm__list_pop_front(&loop->cache)) != NULL)
    mm__coro_unmap(container_of(n, mm_coro_t, link));
  loop->ncache = 0;
  while ((n = mm__list_pop_front(&loop->spare)) != NULL)
    mm__coro_unmap(container_of(n, mm_coro_t, link));
  loop->nspare = 0;
}
