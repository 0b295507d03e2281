/* Errors and version: mm_strerror explains every code, mm_version names
 * the library, and every bad input to the core gets its error (NULL loop,
 * NULL fn, NULL handle, double join, calls after stop) without leaking:
 * Valgrind runs this program with a full leak check.
 */
#include <limits.h>

#include "helpers.h"

static int return_zero(void *arg) {
  return 0;
}


/* ---- mm_strerror, mm_version ------------------------------------------ */

static void test_strerror_never_returns_null(void **state) {
  for (int e = -4200; e <= 200; e++) {
    const char *s = mm_strerror(e);
    if (s == NULL)
      fail_msg("mm_strerror(%d) is NULL", e);
  }
  assert_non_null(mm_strerror(INT_MIN));
  assert_non_null(mm_strerror(INT_MAX));
  assert_non_null(mm_strerror(0));
}

static void test_strerror_explains_the_library_errors_specifically(
    void **state) {
  static const int codes[] = {
    -EDEADLK, -ESHUTDOWN, -ECANCELED, -ETIMEDOUT, -EINVAL, -EBUSY, -ENOMEM,
    -EAGAIN, -EPIPE,
  };
  size_t n = sizeof codes / sizeof codes[0];
  const char *unknown = mm_strerror(-4099);   /* no errno has this value */
  for (size_t i = 0; i < n; i++) {
    const char *s = mm_strerror(codes[i]);
    assert_non_null(s);
    if (strlen(s) < 5)
      fail_msg("mm_strerror(%d) = \"%s\" says little", codes[i], s);
    if (strcmp(s, unknown) == 0)
      fail_msg("mm_strerror(%d) = \"%s\", the same as for an unknown code",
               codes[i], s);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s, mm_strerror(codes[j])) == 0)
        fail_msg("%d and %d share the text \"%s\"", codes[i], codes[j], s);
  }
  /* The library's meaning, not just the libc's. */
  const char *deadlk = mm_strerror(-EDEADLK);
  if (strstr(deadlk, "loop") == NULL)
    fail_msg("mm_strerror(-EDEADLK) = \"%s\" does not mention the loop",
             deadlk);
  const char *pipe = mm_strerror(-EPIPE);
  if (strstr(pipe, "channel") == NULL)
    fail_msg("mm_strerror(-EPIPE) = \"%s\" does not mention the channel",
             pipe);
  /* -EAGAIN has two meanings: a thread that could not be started (a
   * loop's, a worker's, a lane's) and a try_ call of a channel that
   * would have had to wait.  The text names both. */
  const char *again = mm_strerror(-EAGAIN);
  static const char *const again_words[] = {
    "thread", "mm_chan_try_send", "full", "mm_chan_try_recv", "empty",
  };
  for (size_t i = 0; i < sizeof again_words / sizeof again_words[0]; i++)
    if (strstr(again, again_words[i]) == NULL)
      fail_msg("mm_strerror(-EAGAIN) = \"%s\" does not say \"%s\"", again,
               again_words[i]);
}

static void test_strerror_passes_system_errors_through(void **state) {
  /* Codes the library has no special meaning for still get their
   * system text. */
  static const int codes[] = { -ENOENT, -EACCES, -ECONNREFUSED };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    int e = codes[i];
    const char *s = mm_strerror(e);
    if (strcmp(s, strerror(-e)) != 0 && strcmp(s, uv_strerror(e)) != 0)
      fail_msg("mm_strerror(%d) = \"%s\", neither libc's \"%s\" nor "
               "libuv's \"%s\"", e, s, strerror(-e), uv_strerror(e));
  }
}

static void test_version_is_built_from_the_version_macros(void **state) {
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", MM_VERSION_MAJOR, MM_VERSION_MINOR,
           MM_VERSION_PATCH);
  assert_non_null(mm_version());
  assert_string_equal(mm_version(), want);
  assert_string_equal(mm_version(), "0.1.0");
  assert_int_equal(MM_VERSION_HEX, 0x000100);
}


/* ---- NULL loops ------------------------------------------------------- */

static void test_loop_functions_reject_a_null_loop(void **state) {
  assert_mm_err(mm_loop_new(NULL, NULL), -EINVAL);
  assert_mm_err(mm_loop_run(NULL), -EINVAL);
  assert_mm_err(mm_loop_start(NULL), -EINVAL);
  assert_mm_err(mm_loop_stop(NULL), -EINVAL);
  assert_mm_err(mm_loop_free(NULL), -EINVAL);
  assert_null(mm_loop_uv(NULL));
}

static void test_loop_from_uv_rejects_null_arguments(void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *loop = (mm_loop_t *)&uv;   /* garbage the call must clear */
  assert_mm_err(mm_loop_from_uv(NULL, &uv, NULL), -EINVAL);
  assert_mm_err(mm_loop_from_uv(&loop, NULL, NULL), -EINVAL);
  assert_null(loop);
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void test_spawn_with_a_null_loop_returns_einval_and_no_handle(
    void **state) {
  mm_coro_t *c = (mm_coro_t *)&c;
  assert_mm_err(mm_spawn(NULL, return_zero, NULL, &c), -EINVAL);
  assert_null(c);
  c = (mm_coro_t *)&c;
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  assert_mm_err(mm_spawn_ex(NULL, return_zero, NULL, &o, &c), -EINVAL);
  assert_null(c);
  assert_mm_err(mm_spawn(NULL, return_zero, NULL, NULL), -EINVAL);
}

static void test_spawn_with_a_null_fn_returns_einval_and_no_handle(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_coro_t *c = (mm_coro_t *)&c;
  assert_mm_err(mm_spawn(loop, NULL, NULL, &c), -EINVAL);
  assert_null(c);
  c = (mm_coro_t *)&c;
  assert_mm_err(mm_spawn_ex(loop, NULL, NULL, NULL, &c), -EINVAL);
  assert_null(c);
  assert_mm_err(mm_spawn(loop, NULL, NULL, NULL), -EINVAL);
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_spawn_options_init_fills_zeros(void **state) {
  mm_spawn_options_t o;
  memset(&o, 0xa5, sizeof o);
  mm_spawn_options_init(&o);
  assert_null(o.name);
  assert_int_equal(o.stack_size, 0);
  assert_int_equal(o.timeout_ms, 0);
}

static void test_loop_options_init_fills_defaults(void **state) {
  mm_loop_options_t o;
  memset(&o, 0xa5, sizeof o);
  mm_loop_options_init(&o);
  /* 0 means "default" everywhere; a default may also be spelled out. */
  assert_true(o.stack_size == 0 || o.stack_size == 256 * 1024);
  assert_int_equal(o.pool_min_threads, 0);
  assert_true(o.pool_max_threads == 0 || o.pool_max_threads == 64);
  assert_true(o.pool_idle_ms == 0 || o.pool_idle_ms == 10000);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, &o));
  assert_mm_ok(mm_loop_free(loop));
}


static void test_loop_new_with_bad_options_returns_einval_and_no_loop(
    void **state) {
  mm_loop_options_t o;
  mm_loop_t *loop = (mm_loop_t *)&loop;
  mm_loop_options_init(&o);
  o.stack_size = (size_t)1 << 40;   /* over the 1 GiB limit */
  assert_mm_err(mm_loop_new(&loop, &o), -EINVAL);
  assert_null(loop);

  mm_loop_options_init(&o);
  o.pool_min_threads = 8;           /* more kept than allowed */
  o.pool_max_threads = 4;
  loop = (mm_loop_t *)&loop;
  assert_mm_err(mm_loop_new(&loop, &o), -EINVAL);
  assert_null(loop);

  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  o.stack_size = (size_t)1 << 40;
  o.pool_min_threads = 0;
  loop = (mm_loop_t *)&loop;
  assert_mm_err(mm_loop_from_uv(&loop, &uv, &o), -EINVAL);
  assert_null(loop);
  assert_int_equal(uv_loop_close(&uv), 0);
}

static void test_spawn_with_a_stack_over_1_gib_returns_einval(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  mm_spawn_options_t o;
  mm_spawn_options_init(&o);
  o.stack_size = (size_t)1 << 40;
  mm_coro_t *c = (mm_coro_t *)&c;
  assert_mm_err(mm_spawn_ex(loop, return_zero, NULL, &o, &c), -EINVAL);
  assert_null(c);
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- NULL handles ----------------------------------------------------- */

static void test_handle_functions_reject_a_null_handle(void **state) {
  assert_mm_err(mm_join(NULL), -EINVAL);
  assert_mm_err(mm_detach(NULL), -EINVAL);
  assert_mm_err(mm_cancel(NULL), -EINVAL);
  assert_null(mm_coro_name(NULL));
}


/* ---- Double join, joining itself -------------------------------------- */

static void test_double_join_returns_einval(void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, return_zero, NULL, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_err(mm_join(c), -EINVAL);
  assert_mm_ok(mm_loop_free(loop));
}

static int join_self(void *arg) {
  *(int *)arg = mm_join(mm_current());
  return 0;
}

static void test_coroutine_joining_itself_returns_edeadlk(void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  int got = 1;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, join_self, &got, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_status(got, -EDEADLK);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- After stop ------------------------------------------------------- */

static void test_calls_after_stop_return_eshutdown(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_stop(loop));
  mm_coro_t *c = (mm_coro_t *)&c;
  assert_mm_err(mm_spawn(loop, return_zero, NULL, &c), -ESHUTDOWN);
  assert_null(c);
  c = (mm_coro_t *)&c;
  assert_mm_err(mm_spawn_ex(loop, return_zero, NULL, NULL, &c), -ESHUTDOWN);
  assert_null(c);
  assert_mm_err(mm_spawn(loop, return_zero, NULL, NULL), -ESHUTDOWN);
  assert_mm_err(mm_loop_run(loop), -ESHUTDOWN);
  assert_mm_err(mm_loop_start(loop), -ESHUTDOWN);
  assert_mm_ok(mm_loop_stop(loop));   /* idempotent */
  assert_mm_ok(mm_loop_free(loop));
}

static void test_calls_after_stop_of_a_started_loop_return_eshutdown(
    void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_loop_stop(loop));
  assert_mm_err(mm_spawn(loop, return_zero, NULL, NULL), -ESHUTDOWN);
  assert_mm_err(mm_loop_run(loop), -ESHUTDOWN);
  assert_mm_err(mm_loop_start(loop), -ESHUTDOWN);
  assert_mm_ok(mm_loop_free(loop));
}


/* ---- Options ---------------------------------------------------------- */

static void test_spawn_with_null_options_uses_defaults(void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn_ex(loop, return_zero, NULL, NULL, &c));
  assert_string_equal(mm_coro_name(c), "");
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_strerror_never_returns_null),
    mm_test(test_strerror_explains_the_library_errors_specifically),
    mm_test(test_strerror_passes_system_errors_through),
    mm_test(test_version_is_built_from_the_version_macros),
    mm_test(test_loop_functions_reject_a_null_loop),
    mm_test(test_loop_from_uv_rejects_null_arguments),
    mm_test(test_spawn_with_a_null_loop_returns_einval_and_no_handle),
    mm_test(test_spawn_with_a_null_fn_returns_einval_and_no_handle),
    mm_test(test_spawn_options_init_fills_zeros),
    mm_test(test_loop_options_init_fills_defaults),
    mm_test(test_loop_new_with_bad_options_returns_einval_and_no_loop),
    mm_test(test_spawn_with_a_stack_over_1_gib_returns_einval),
    mm_test(test_handle_functions_reject_a_null_handle),
    mm_test(test_double_join_returns_einval),
    mm_test(test_coroutine_joining_itself_returns_edeadlk),
    mm_test(test_calls_after_stop_return_eshutdown),
    mm_test(test_calls_after_stop_of_a_started_loop_return_eshutdown),
    mm_test(test_spawn_with_null_options_uses_defaults),
  };
  return mm_run_tests(tests);
}
