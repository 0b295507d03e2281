/* White-box tests of coroutine memory (lib/stack.c): guards that cost no
 * mapping where the kernel has page-table guards, the error that names
 * vm.max_map_count where mappings run out, and cached stacks that give
 * their pages back when they stay unused.  Overflows themselves are tested
 * in test-process (the fault handler) and test-coro. */
#include "config.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "helpers.h"
#include "mm-internal.h"

/* ---- many coroutines, few mappings ------------------------------------- */

struct crowd {
  mm_chan_t *ch;
  unsigned parked;            /* loop thread */
  unsigned maps;              /* counted while every one is parked */
  int err;                    /* the first unexpected result */
};

static int wait_on_channel(void *arg) {
  struct crowd *cr = arg;
  void *item;
  cr->parked++;
  int r = mm_chan_recv(cr->ch, &item);
  if (r != -EPIPE && cr->err == 0)
    cr->err = r != 0 ? r : -EPROTO;
  return 0;
}

/* Spawned last: runs once all the others are parked. */
static int count_and_close(void *arg) {
  struct crowd *cr = arg;
  cr->maps = mm__maps_in_use();
  return mm_chan_close(cr->ch);
}

static void test_more_live_coroutines_than_two_mappings_each_allow(
    void **state) {
#ifdef MM__TSAN
  /* Measured: TSan fails to allocate its own state for a fiber (ENOMEM)
   * long before 33,000 coroutines have run. */
  print_message("under TSan: its state for each coroutine's fiber runs "
                "out first\n");
  skip();
#endif
  unsigned max = mm__max_map_count();
  if (max == 0) {
    print_message("no /proc/sys/vm/max_map_count to measure against\n");
    skip();
  }
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  struct crowd cr = { .parked = 0 };
  assert_mm_ok(mm_chan_new(&cr.ch, 1));
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = 16 * 1024;
  assert_mm_ok(mm_spawn_ex(loop, wait_on_channel, &cr, &o, NULL));
  if (!mm__stack_guard_is_marker()) {
    assert_mm_ok(mm_chan_close(cr.ch));
    assert_mm_ok(mm_loop_run(loop));
    assert_mm_ok(mm_loop_free(loop));
    assert_mm_ok(mm_chan_free(cr.ch));
    print_message("this kernel has no page-table guards "
                  "(MADV_GUARD_INSTALL, Linux 6.13): two mappings per "
                  "coroutine\n");
    skip();
  }
  unsigned before = mm__maps_in_use();
  unsigned n = max / 2 + 1000;
  for (unsigned i = 1; i < n; i++)
    assert_mm_ok(mm_spawn_ex(loop, wait_on_channel, &cr, &o, NULL));
  assert_mm_ok(mm_spawn(loop, count_and_close, &cr, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(cr.err, 0);
  assert_int_equal(cr.parked, n);
  print_message("%u coroutines parked: %u -> %u mappings (limit %u)\n", n,
                before, cr.maps, max);
  assert_true(cr.maps < before + 100);
  assert_mm_ok(mm_loop_free(loop));
  assert_mm_ok(mm_chan_free(cr.ch));
}

/* ---- out of mappings ----------------------------------------------------- */

static void log_to_stdout(int level, const char *msg, void *data) {
  (void) data;
  printf("log %d: %s\n", level, msg);
}

static int never_runs(void *arg) {
  (void) arg;
  return 0;
}

/* With mprotect'ed guards (two mappings a coroutine), spawns until one
 * fails; nothing runs. */
static void spawn_until_out_of_maps(void *arg) {
  (void) arg;
  mm__stack_guard_mprotect();
  mm_set_log(log_to_stdout, NULL);
  mm_loop_t *loop;
  if (mm_loop_new(&loop, NULL) != 0)
    _exit(3);
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = 16 * 1024;
  int r = 0;
  unsigned n = 0;
  while ((r = mm_spawn_ex(loop, never_runs, NULL, &o, NULL)) == 0)
    n++;
  printf("spawn %u: %d\n", n, r);
  fflush(stdout);
  _exit(0);                  /* the loop is left as it is */
}

static void test_running_out_of_mappings_names_vm_max_map_count(
    void **state) {
#ifdef MM__TSAN
  /* Measured: TSan's allocator needs mappings too, and dies first. */
  print_message("under TSan: its allocator runs out of mappings first\n");
  skip();
#endif
  if (mm_test_emulator() != NULL) {
    /* The library reads /proc/self/maps to tell the mapping limit from a
     * lack of memory: under qemu-user that file is the emulator's view of
     * the guest's mappings, not what the kernel counts against the
     * limit: -ENOMEM came after 32681 spawns, unexplained by it. */
    print_message("under %s: /proc/self/maps is the emulator's view, not "
                  "the kernel's count\n", mm_test_emulator());
    skip();
  }
  if (mm_test_under_valgrind()) {
    /* Valgrind's own table of the client's mappings runs out first. */
    print_message("under Valgrind: its table of mappings (VG_N_SEGMENTS) "
                  "is smaller than vm.max_map_count\n");
    skip();
  }
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(spawn_until_out_of_maps, NULL, &child), 0);
  if (!child.exited || child.code != 0)
    fail_msg("child %s %d; output:\n%s",
             child.exited ? "exited with" : "was killed by signal",
             child.code, child.out);
  char want[32];
  snprintf(want, sizeof want, ": %d\n", -ENOMEM);
  if (strstr(child.out, want) == NULL ||
      strstr(child.out, "vm.max_map_count") == NULL)
    fail_msg("no -ENOMEM with vm.max_map_count named; output:\n%s",
             child.out);
}

/* ---- the first guard, made with no descriptor free ------------------------ */

/* A new process (guards not yet tried) whose descriptor table is full
 * when its first coroutine's stack is made -- a server spawning its first
 * connection's coroutine at its descriptor limit: the library cannot ask
 * the kernel (through a pipe) whether its marker guards, which says
 * nothing about the markers.  Prints whether the guards it settled on are
 * markers once a descriptor is free again. */
static void first_guard_at_the_descriptor_limit(void *arg) {
  (void) arg;
  mm__stack_guard_unknown();
  mm_loop_t *loop;
  if (mm_loop_new(&loop, NULL) != 0)
    _exit(3);
  /* A small table fills fast; where the limit cannot be lowered
   * (Valgrind keeps its own), the table is filled to what it is. */
  struct rlimit rl = { 256, 256 };
  (void) setrlimit(RLIMIT_NOFILE, &rl);
  int fd, last = -1;
  while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    last = fd;
  if (errno != EMFILE)
    _exit(5);
  int r1 = mm_spawn(loop, never_runs, NULL, NULL);
  for (fd = 3; fd <= last; fd++)
    if (fd != STDOUT_FILENO && fd != STDERR_FILENO)
      close(fd);                 /* the loop's too: it is not used again */
  int r2 = mm_spawn(loop, never_runs, NULL, NULL);
  printf("spawns %d %d, marker guards %d\n", r1, r2,
         mm__stack_guard_is_marker());
  fflush(stdout);
  _exit(0);
}

static void test_first_guard_made_at_the_descriptor_limit_is_a_marker(
    void **state) {
  /* This process's own guards: markers if the kernel has them. */
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, never_runs, NULL, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_loop_free(loop));
  if (!mm__stack_guard_is_marker()) {
    print_message("no page-table guards here (MADV_GUARD_INSTALL, Linux "
                  "6.13; not under an emulator): nothing to keep\n");
    skip();
  }
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(first_guard_at_the_descriptor_limit, NULL,
                                &child), 0);
  if (!child.exited || child.code != 0)
    fail_msg("child %s %d; output:\n%s",
             child.exited ? "exited with" : "was killed by signal",
             child.code, child.out);
  if (strstr(child.out, "spawns 0 0, marker guards 1\n") == NULL)
    fail_msg("the guards should stay markers; child said:\n%s", child.out);
}

/* ---- cached stacks give their pages back ------------------------------ */

enum { DEEP = 64, TOUCHED = 128 * 1024 };

/* Resident pages of c's stack below its top page (the struct's). */
static size_t resident_below_top(const mm_coro_t *c) {
  size_t page = mm__page_size();
  char *top = (char *)((uintptr_t)c & ~(uintptr_t)(page - 1));
  size_t len = (size_t)(top - c->stack_lo), n = 0;
  unsigned char *v = malloc(len / page);
  assert_non_null(v);
  assert_int_equal(mincore(c->stack_lo, len, v), 0);
  for (size_t i = 0; i < len / page; i++)
    n += v[i] & 1;
  free(v);
  return n;
}

/* Checks the loop's cache (the loop not driven): DEEP blocks; the first
 * kept ones, from the most recent, still hold what they touched, the
 * others hold nothing below their top page. */
static void check_cache(mm_loop_t *loop, unsigned kept) {
  size_t page = mm__page_size();
  assert_int_equal(loop->ncache, DEEP);
  unsigned i = 0;
  mm__list_t *n, *tmp;
  mm__list_foreach_safe(n, tmp, &loop->cache) {
    const mm_coro_t *c = container_of(n, mm_coro_t, link);
    size_t res = resident_below_top(c);
    if (i < kept)
      assert_true(res >= TOUCHED / page);
    else
      assert_int_equal(res, 0);
    i++;
  }
}

struct deep {
  mm_chan_t *ch;
  unsigned ended;
  bool sleeper;               /* the last one spawns one */
  int err;
};

static int sleep_past_idle(void *arg) {
  struct deep *d = arg;
  int r = mm_sleep(MM__STACK_CACHE_IDLE_MS + 1);
  if (r != 0 && d->err == 0)
    d->err = r;
  return 0;
}

/* Touches the lowest TOUCHED bytes of its own stack (far below its
 * frames: the compiler's frame sizes do not matter), then waits until
 * every one has done so. */
static int go_deep(void *arg) {
  struct deep *d = arg;
  volatile char *lo = mm__tls.coro->stack_lo;
  for (size_t i = 0; i < TOUCHED; i += 512)
    lo[i] = 1;
  void *item;
  int r = mm_chan_recv(d->ch, &item);
  if (r != -EPIPE && d->err == 0)
    d->err = r != 0 ? r : -EPROTO;
  /* The sleeper starts once every block is cached (at this one's end),
   * so the sweep is due before its sleep ends. */
  if (++d->ended == DEEP && d->sleeper) {
    mm_spawn_options_t o;
    mm_spawn_options_init(&o);
    o.stack_size = 64 * 1024;
    r = mm_spawn_ex(mm_loop_current(), sleep_past_idle, d, &o, NULL);
    if (r != 0 && d->err == 0)
      d->err = r;
  }
  return 0;
}

static int close_deep(void *arg) {
  return mm_chan_close(((struct deep *)arg)->ch);
}

/* DEEP coroutines touch TOUCHED bytes of stack each and end. */
static mm_loop_t *run_deep_ones(struct deep *d) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_chan_new(&d->ch, 1));
  for (int i = 0; i < DEEP; i++)
    assert_mm_ok(mm_spawn(loop, go_deep, d, NULL));
  /* Another stack size: the closer is not cached. */
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = 64 * 1024;
  assert_mm_ok(mm_spawn_ex(loop, close_deep, d, &o, NULL));
  assert_mm_ok(mm_loop_run(loop));
  assert_int_equal(d->err, 0);
  assert_int_equal(d->ended, DEEP);
  return loop;
}

static void test_cached_stacks_idle_past_the_warm_ones_are_emptied(
    void **state) {
  struct deep d = { .sleeper = false };
  mm_loop_t *loop = run_deep_ones(&d);
  /* Just cached: all keep their pages, however many. */
  check_cache(loop, DEEP);
  mm__coro_cache_sweep(loop, uv_now(mm_loop_uv(loop)));
  check_cache(loop, DEEP);
  /* Idle long enough: all but the most recent ones give them back. */
  mm__coro_cache_sweep(loop,
                       uv_now(mm_loop_uv(loop)) + MM__STACK_CACHE_IDLE_MS);
  check_cache(loop, MM__STACK_CACHE_WARM);
  /* A block taken from the cache and given back is one of the warm. */
  assert_mm_ok(mm_spawn(loop, go_deep, &d, NULL));   /* the closed channel */
  assert_mm_ok(mm_loop_run(loop));
  check_cache(loop, MM__STACK_CACHE_WARM);
  assert_mm_ok(mm_loop_free(loop));
  assert_mm_ok(mm_chan_free(d.ch));
}

static void test_a_loop_empties_idle_cached_stacks_by_itself(void **state) {
  struct deep d = { .sleeper = true };
  mm_loop_t *loop = run_deep_ones(&d);
  check_cache(loop, MM__STACK_CACHE_WARM);
  assert_mm_ok(mm_loop_free(loop));
  assert_mm_ok(mm_chan_free(d.ch));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_more_live_coroutines_than_two_mappings_each_allow),
    mm_test(test_running_out_of_mappings_names_vm_max_map_count),
    mm_test(test_first_guard_made_at_the_descriptor_limit_is_a_marker),
    mm_test(test_cached_stacks_idle_past_the_warm_ones_are_emptied),
    mm_test(test_a_loop_empties_idle_cached_stacks_by_itself),
  };
  return mm_run_tests(tests);
}
