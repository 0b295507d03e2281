/* White-box: the library names its threads whatever form of
 * pthread_setname_np configure found (mm__thread_name), and cuts a name
 * to the 15 characters the kernel keeps instead of losing it (glibc
 * refuses a longer one).  The names are read back from the kernel,
 * /proc/thread-self/comm: Linux only; elsewhere, and where configure
 * found no way to name a thread, the program is skipped and says why. */
#include "config.h"

#include <stdio.h>

#include "helpers.h"
#include "mm-internal.h"

/* The calling thread's name as the kernel has it; "" if unreadable. */
static void own_name(char *buf, size_t cap) {
  buf[0] = '\0';
  FILE *f = fopen("/proc/thread-self/comm", "r");
  if (f == NULL)
    return;
  if (fgets(buf, (int) cap, f) == NULL)
    buf[0] = '\0';
  fclose(f);
  buf[strcspn(buf, "\n")] = '\0';
}

typedef struct {
  const char *set;            /* given to mm__thread_name */
  char seen[64];              /* read back */
} naming_t;

static void *name_myself(void *arg) {
  naming_t *n = arg;
  mm__thread_name(n->set);
  own_name(n->seen, sizeof n->seen);
  return NULL;
}

static void name_a_thread(naming_t *n) {
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, name_myself, n), 0);
  pthread_join(t, NULL);
}

static void test_thread_name_is_set(void **state) {
  naming_t n = { "mm-probe", "" };
  name_a_thread(&n);
  assert_string_equal(n.seen, "mm-probe");
}

static void test_thread_name_of_exactly_15_characters_is_kept(void **state) {
  naming_t n = { "mm-fifteen-char", "" };
  name_a_thread(&n);
  assert_string_equal(n.seen, "mm-fifteen-char");
}

static void test_long_thread_name_is_cut_to_15_characters(void **state) {
  naming_t n = { "mm-a-name-far-too-long-for-the-kernel", "" };
  name_a_thread(&n);
  assert_string_equal(n.seen, "mm-a-name-far-t");
}

static int loop_thread_name(void *arg) {
  own_name(arg, 64);
  return 0;
}

static void test_background_loop_thread_is_named_mm_loop(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  char seen[64];
  assert_mm_ok(mm_run_async(loop, loop_thread_name, seen));
  assert_mm_ok(mm_loop_free(loop));
  assert_string_equal(seen, "mm-loop");
}

int main(void) {
#if !defined(__linux__)
  printf("SKIP: test-thread-name reads names from /proc: Linux only\n");
  return 77;
#elif !defined(MM_THREAD_NAME_GLIBC) && !defined(MM_THREAD_NAME_MACOS) && \
    !defined(MM_THREAD_NAME_NETBSD) && !defined(MM_THREAD_NAME_BSD)
  printf("SKIP: test-thread-name: configure found no way to name a thread"
         " (config.h defines no MM_THREAD_NAME_*)\n");
  return 77;
#else
  const struct CMUnitTest tests[] = {
    mm_test(test_thread_name_is_set),
    mm_test(test_thread_name_of_exactly_15_characters_is_kept),
    mm_test(test_long_thread_name_is_cut_to_15_characters),
    mm_test(test_background_loop_thread_is_named_mm_loop),
  };
  return mm_run_tests(tests);
#endif
}
