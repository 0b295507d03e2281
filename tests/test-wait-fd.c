/* Waiting for file descriptors (mm_wait_fd) in coroutines and on plain
 * threads: readiness, timeouts, hang-ups, cancellation racing readiness,
 * the loop's free, bad input; and mm_loop_current in each place it may be
 * called from.
 */
#include "helpers.h"

static mm_loop_t *new_loop(void) {
  mm_loop_t *loop = NULL;
  if (mm_loop_new(&loop, NULL) != 0)
    fail_msg("mm_loop_new failed");
  return loop;
}


/* ---- mm_loop_current --------------------------------------------------- */

typedef struct {
  mm_loop_t *seen;
  mm_loop_t *in_call;
  mm_loop_t *in_lane_call;
  mm_lane_t *lane;
} current_t;

static int record_current(void *arg) {
  ((current_t *)arg)->seen = mm_loop_current();
  return 0;
}

static int record_current_in_call(void *arg) {
  ((current_t *)arg)->in_call = mm_loop_current();
  return 0;
}

static int record_current_in_lane_call(void *arg) {
  ((current_t *)arg)->in_lane_call = mm_loop_current();
  return 0;
}

static void test_loop_current_in_a_coroutine_is_its_loop(void **state) {
  mm_loop_t *a = new_loop(), *b = new_loop();
  current_t ca = { 0 }, cb = { 0 };
  mm_test_run_one(a, record_current, &ca);
  mm_test_run_one(b, record_current, &cb);
  assert_ptr_equal(ca.seen, a);
  assert_ptr_equal(cb.seen, b);
  assert_mm_ok(mm_loop_free(a));
  assert_mm_ok(mm_loop_free(b));
}

static int call_on_pool_and_lane(void *arg) {
  current_t *c = arg;
  int r = mm_run_sync(record_current_in_call, c);
  if (r != 0)
    return r;
  mm_sync_options_t o;
  memset(&o, 0, sizeof o);
  o.affinity = MM_AFFINITY_LANE;
  o.lane = c->lane;
  return mm_run_sync_ex(record_current_in_lane_call, c, &o);
}

static void test_loop_current_in_a_blocking_call_is_its_coroutines_loop(
    void **state) {
  mm_loop_t *loop = new_loop();
  current_t c = { 0 };
  assert_mm_ok(mm_lane_new(loop, "current", &c.lane));
  mm_test_run_one(loop, call_on_pool_and_lane, &c);
  assert_ptr_equal(c.in_call, loop);
  assert_ptr_equal(c.in_lane_call, loop);
  assert_mm_ok(mm_lane_free(c.lane));
  assert_mm_ok(mm_loop_free(loop));
}

static int record_current_in_caller_call(void *arg) {
  current_t *c = arg;
  mm_sync_options_t o;
  memset(&o, 0, sizeof o);
  o.affinity = MM_AFFINITY_CALLER;
  return mm_run_sync_ex(record_current_in_call, c, &o);
}

static void test_loop_current_in_a_call_on_the_caller_thread_is_the_loop(
    void **state) {
  /* The call runs on this very thread, blocked in mm_run_async. */
  mm_loop_t *loop = new_loop();
  assert_mm_ok(mm_loop_start(loop));
  current_t c = { 0 };
  assert_mm_ok(mm_run_async(loop, record_current_in_caller_call, &c));
  assert_ptr_equal(c.in_call, loop);
  assert_null(mm_loop_current());
  assert_mm_ok(mm_loop_free(loop));
}

static void test_loop_current_on_a_plain_thread_is_null(void **state) {
  assert_null(mm_loop_current());
  /* A blocking call made by a plain thread runs inline: no coroutine. */
  current_t c = { 0 };
  c.in_call = (mm_loop_t *)&c;
  assert_mm_ok(mm_run_sync(record_current_in_call, &c));
  assert_null(c.in_call);
}

static void record_current_raw(void *arg) {
  ((current_t *)arg)->seen = mm_loop_current();
}

static void test_loop_current_in_a_raw_callback_is_null(void **state) {
  uv_loop_t uv;
  assert_int_equal(uv_loop_init(&uv), 0);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_from_uv(&loop, &uv, NULL));
  current_t c = { 0 };
  c.seen = (mm_loop_t *)&c;
  assert_mm_ok(mm_test_in_raw_callback(&uv, loop, record_current_raw, &c));
  assert_null(c.seen);
  assert_mm_ok(mm_loop_free(loop));
  assert_int_equal(uv_loop_close(&uv), 0);
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_loop_current_in_a_coroutine_is_its_loop),
    mm_test(test_loop_current_in_a_blocking_call_is_its_coroutines_loop),
    mm_test(test_loop_current_in_a_call_on_the_caller_thread_is_the_loop),
    mm_test(test_loop_current_on_a_plain_thread_is_null),
    mm_test(test_loop_current_in_a_raw_callback_is_null),
  };
  return mm_run_tests(tests);
}
