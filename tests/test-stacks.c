/* White-box tests of coroutine memory (lib/stack.c): guards that cost no
 * mapping where the kernel has page-table guards, and the error that
 * names vm.max_map_count where mappings run out.  Overflows themselves are
 * tested in test-process (the fault handler) and test-coro. */
#include "config.h"

#include <sys/mman.h>

#include "helpers.h"
#include "mm-internal.h"

static unsigned maps_now(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  unsigned n = 0;
  int ch;
  if (f == NULL)
    return 0;
  while ((ch = getc(f)) != EOF)
    n += ch == '\n';
  fclose(f);
  return n;
}

static unsigned max_map_count(void) {
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  unsigned n = 0;
  if (f == NULL)
    return 0;
  if (fscanf(f, "%u", &n) != 1)
    n = 0;
  fclose(f);
  return n;
}

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
  cr->maps = maps_now();
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
  unsigned max = max_map_count();
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
  unsigned before = maps_now();
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
  if (mm_test_under_valgrind()) {
    /* Valgrind's own table of the client's mappings runs out first. */
    print_message("under Valgrind: 32,000 mappings are more than it "
                  "tracks\n");
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

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_more_live_coroutines_than_two_mappings_each_allow),
    mm_test(test_running_out_of_mappings_names_vm_max_map_count),
  };
  return mm_run_tests(tests);
}
