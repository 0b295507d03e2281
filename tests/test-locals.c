/* Locals: values stored under address keys, a coroutine's own, copied (not
 * shared) into coroutines it spawns, per thread on plain threads.
 */
#include "helpers.h"

static char key_a, key_b, key_c;   /* their addresses are the keys */
static int value_1 = 1, value_2 = 2, value_3 = 3;


/* ---- Plain threads ---------------------------------------------------- */

static void test_local_set_then_get_on_a_plain_thread(void **state) {
  assert_null(mm_local_get(&key_a));
  assert_mm_ok(mm_local_set(&key_a, &value_1));
  assert_mm_ok(mm_local_set(&key_b, &value_2));
  assert_ptr_equal(mm_local_get(&key_a), &value_1);
  assert_ptr_equal(mm_local_get(&key_b), &value_2);
  assert_null(mm_local_get(&key_c));
  assert_mm_ok(mm_local_set(&key_a, &value_3));   /* overwrite */
  assert_ptr_equal(mm_local_get(&key_a), &value_3);
  assert_mm_ok(mm_local_set(&key_a, NULL));
  assert_mm_ok(mm_local_set(&key_b, NULL));
  assert_null(mm_local_get(&key_a));
  assert_null(mm_local_get(&key_b));
}

static void test_local_set_with_a_null_key_returns_einval(void **state) {
  assert_mm_err(mm_local_set(NULL, &value_1), -EINVAL);
  assert_mm_err(mm_local_set(NULL, NULL), -EINVAL);
  assert_null(mm_local_get(NULL));
}

static void test_local_set_null_removes_the_key(void **state) {
  assert_mm_ok(mm_local_set(&key_c, &value_1));
  assert_mm_ok(mm_local_set(&key_c, NULL));
  assert_null(mm_local_get(&key_c));
  assert_mm_ok(mm_local_set(&key_c, NULL));   /* removing twice is fine */
  assert_null(mm_local_get(&key_c));
}

static void test_many_locals_can_be_stored_and_removed(void **state) {
  enum { N = 300 };
  static char keys[N];
  for (int i = 0; i < N; i++)
    assert_mm_ok(mm_local_set(&keys[i], &keys[(i + 1) % N]));
  for (int i = 0; i < N; i++)
    assert_ptr_equal(mm_local_get(&keys[i]), &keys[(i + 1) % N]);
  for (int i = 0; i < N; i += 2)
    assert_mm_ok(mm_local_set(&keys[i], NULL));
  for (int i = 0; i < N; i++) {
    if (i % 2 == 0)
      assert_null(mm_local_get(&keys[i]));
    else
      assert_ptr_equal(mm_local_get(&keys[i]), &keys[(i + 1) % N]);
  }
  for (int i = 1; i < N; i += 2)
    assert_mm_ok(mm_local_set(&keys[i], NULL));
  for (int i = 0; i < N; i++)
    assert_null(mm_local_get(&keys[i]));
}

typedef struct {
  void *seen_before;
  int   set_result;
  void *seen_after;
} thread_locals_t;

static void *other_thread(void *arg) {
  thread_locals_t *t = arg;
  t->seen_before = mm_local_get(&key_a);
  t->set_result = mm_local_set(&key_a, &value_2);
  t->seen_after = mm_local_get(&key_a);
  /* Left set on purpose: the thread's locals go away with it (Valgrind
   * checks they are freed). */
  return NULL;
}

static void test_locals_are_per_thread(void **state) {
  assert_mm_ok(mm_local_set(&key_a, &value_1));
  thread_locals_t t = { &value_3, 1, NULL };
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, other_thread, &t), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_null(t.seen_before);
  assert_mm_ok(t.set_result);
  assert_ptr_equal(t.seen_after, &value_2);
  assert_ptr_equal(mm_local_get(&key_a), &value_1);
  assert_mm_ok(mm_local_set(&key_a, NULL));
}


/* ---- Coroutines ------------------------------------------------------- */

/* What one coroutine saw of key_a, step by step. */
typedef struct {
  mm_loop_t *loop;
  void      *at_start;
  void      *mine;           /* what it stores */
  void      *after_yield;
  void      *after_child;
  int        set_result;
  int        errors;
} seer_t;

static int set_yield_and_look(void *arg) {
  seer_t *s = arg;
  s->at_start = mm_local_get(&key_a);
  s->set_result = mm_local_set(&key_a, s->mine);
  for (int i = 0; i < 5; i++) {
    if (mm_yield() != 0)
      s->errors++;
    if (mm_local_get(&key_a) != s->mine)
      s->errors++;
  }
  s->after_yield = mm_local_get(&key_a);
  return 0;
}

static void test_coroutine_locals_are_its_own(void **state) {
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  seer_t s[2];
  memset(s, 0, sizeof s);
  s[0].mine = &value_1;
  s[1].mine = &value_2;
  for (int i = 0; i < 2; i++) {
    s[i].at_start = &value_3;
    assert_mm_ok(mm_spawn(loop, set_yield_and_look, &s[i], NULL));
  }
  assert_mm_ok(mm_loop_run(loop));
  for (int i = 0; i < 2; i++) {
    assert_null(s[i].at_start);   /* this thread had nothing set */
    assert_mm_ok(s[i].set_result);
    assert_int_equal(s[i].errors, 0);
    assert_ptr_equal(s[i].after_yield, s[i].mine);
  }
  /* The thread that ran the loop kept its own (none). */
  assert_null(mm_local_get(&key_a));
  assert_mm_ok(mm_loop_free(loop));
}

/* Parent stores 1, spawns the child, then stores 3 before the child runs;
 * the child sees 1 (a copy taken at spawn), stores 2; the parent still
 * sees 3 after joining it. */
typedef struct {
  void *child_saw;
  void *child_saw_b;
  int   child_set;
  void *child_after_set;
  void *parent_after_join;
  void *parent_b_after_join;
  int   join_result;
} family_t;

typedef struct {
  mm_loop_t *loop;
  family_t  *f;
} parent_arg_t;

static int child_body(void *arg) {
  family_t *f = arg;
  f->child_saw = mm_local_get(&key_a);
  f->child_saw_b = mm_local_get(&key_b);
  f->child_set = mm_local_set(&key_a, &value_2);
  mm_local_set(&key_b, NULL);
  mm_yield();
  f->child_after_set = mm_local_get(&key_a);
  return 0;
}

static int parent_body(void *arg) {
  parent_arg_t *p = arg;
  family_t *f = p->f;
  mm_coro_t *c;
  mm_local_set(&key_a, &value_1);
  mm_local_set(&key_b, &value_2);
  int r = mm_spawn(p->loop, child_body, f, &c);
  if (r != 0)
    return r;
  mm_local_set(&key_a, &value_3);
  f->join_result = mm_join(c);
  f->parent_after_join = mm_local_get(&key_a);
  f->parent_b_after_join = mm_local_get(&key_b);
  return 0;
}

static void test_spawned_child_starts_with_a_copy_of_the_spawners_locals(
    void **state) {
  mm_loop_t *loop;
  family_t f;
  memset(&f, 0, sizeof f);
  assert_mm_ok(mm_loop_new(&loop, NULL));
  parent_arg_t p = { loop, &f };
  mm_coro_t *c;
  assert_mm_ok(mm_spawn(loop, parent_body, &p, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(f.join_result);
  assert_ptr_equal(f.child_saw, &value_1);
  assert_ptr_equal(f.child_saw_b, &value_2);
  assert_mm_ok(f.child_set);
  assert_ptr_equal(f.child_after_set, &value_2);
  assert_ptr_equal(f.parent_after_join, &value_3);
  assert_ptr_equal(f.parent_b_after_join, &value_2);
  assert_null(mm_local_get(&key_a));
  assert_mm_ok(mm_loop_free(loop));
}

typedef struct {
  void *saw;
  void *saw_after;
  void *saw_late;
} plain_child_t;

static int look_then_overwrite(void *arg) {
  plain_child_t *c = arg;
  c->saw = mm_local_get(&key_a);
  mm_local_set(&key_a, &value_2);
  c->saw_after = mm_local_get(&key_a);
  c->saw_late = mm_local_get(&key_c);
  return 0;
}

static void test_coroutine_spawned_from_a_plain_thread_copies_its_locals(
    void **state) {
  mm_loop_t *loop;
  plain_child_t pc = { NULL, NULL, &value_3 };
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_local_set(&key_a, &value_1));
  assert_mm_ok(mm_spawn(loop, look_then_overwrite, &pc, &c));
  /* Stored after the spawn: not in the child's copy. */
  assert_mm_ok(mm_local_set(&key_c, &value_3));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_ptr_equal(pc.saw, &value_1);
  assert_ptr_equal(pc.saw_after, &value_2);
  assert_null(pc.saw_late);
  assert_ptr_equal(mm_local_get(&key_a), &value_1);
  assert_ptr_equal(mm_local_get(&key_c), &value_3);
  assert_mm_ok(mm_local_set(&key_a, NULL));
  assert_mm_ok(mm_local_set(&key_c, NULL));
  assert_mm_ok(mm_loop_free(loop));
}

static void *spawn_from_thread(void *arg) {
  void **args = arg;
  mm_loop_t *loop = args[0];
  plain_child_t *pc = args[1];
  mm_local_set(&key_a, &value_3);
  mm_coro_t *c;
  if (mm_spawn(loop, look_then_overwrite, pc, &c) != 0)
    return (void *)1;
  if (mm_join(c) != 0)
    return (void *)2;
  if (mm_local_get(&key_a) != &value_3)
    return (void *)3;
  mm_local_set(&key_a, NULL);
  return NULL;
}

static void test_coroutine_spawned_from_another_thread_copies_that_threads(
    void **state) {
  mm_loop_t *loop;
  plain_child_t pc = { NULL, NULL, NULL };
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_loop_start(loop));
  assert_mm_ok(mm_local_set(&key_a, &value_1));
  void *args[2] = { loop, &pc };
  pthread_t t;
  void *rc;
  assert_int_equal(pthread_create(&t, NULL, spawn_from_thread, args), 0);
  assert_int_equal(pthread_join(t, &rc), 0);
  assert_null(rc);
  assert_ptr_equal(pc.saw, &value_3);
  assert_ptr_equal(mm_local_get(&key_a), &value_1);
  assert_mm_ok(mm_local_set(&key_a, NULL));
  assert_mm_ok(mm_loop_free(loop));
}

/* A coroutine that ends with locals set, and many children each with a
 * copy: Valgrind checks they are all freed. */
static int set_many_and_spawn(void *arg) {
  mm_loop_t *loop = arg;
  static char keys[64];
  static plain_child_t pcs[20];   /* outlives this coroutine's stack */
  for (int i = 0; i < 64; i++)
    if (mm_local_set(&keys[i], &keys[i]) != 0)
      return -1;
  for (int i = 0; i < 20; i++)
    if (mm_spawn(loop, look_then_overwrite, &pcs[i], NULL) != 0)
      return -2;
  /* The children run after this one ends: their copies must not depend on
   * the parent's. */
  return 0;
}

static int set_many_and_spawn_joined(void *arg) {
  mm_loop_t *loop = arg;
  static char keys[64];
  plain_child_t pcs[20];
  mm_coro_t *c[20];
  for (int i = 0; i < 64; i++)
    if (mm_local_set(&keys[i], &keys[i]) != 0)
      return -1;
  for (int i = 0; i < 20; i++)
    if (mm_spawn(loop, look_then_overwrite, &pcs[i], &c[i]) != 0)
      return -2;
  for (int i = 0; i < 20; i++)
    if (mm_join(c[i]) != 0)
      return -3;
  return 0;
}

static void test_locals_of_ended_coroutines_are_released(void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, set_many_and_spawn_joined, loop, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}

static void test_detached_children_keep_their_copy_after_the_parent_ends(
    void **state) {
  mm_loop_t *loop;
  mm_coro_t *c;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, set_many_and_spawn, loop, &c));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(c));
  assert_mm_ok(mm_loop_free(loop));
}


/* A run_sync call that may be abandoned works on a copy of its coroutine's
 * locals.  Completed, its changes are the coroutine's, as for any call;
 * abandoned, they stay with the call. */
typedef struct {
  mm_test_latch_t gate;       /* abandoned call: set once the caller left */
  int abandon;                /* cancel the caller while fn runs */
  mm_coro_t *caller;
  atomic_int running;
  void *seen_in_fn;           /* key_a inside fn */
  void *after_a, *after_b;    /* key_a, key_b in the coroutine after */
  int result;
  mm_test_latch_t done;       /* fn has set key_b */
} snapshot_t;

static int set_b_in_fn(void *arg) {
  snapshot_t *s = arg;
  s->seen_in_fn = mm_local_get(&key_a);
  atomic_store(&s->running, 1);
  if (s->abandon)
    mm_test_latch_wait(&s->gate, 1);
  mm_local_set(&key_b, &value_2);
  mm_test_latch_add(&s->done, 1);
  return 7;
}

static int call_abandonable(void *arg) {
  snapshot_t *s = arg;
  mm_local_set(&key_a, &value_1);
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.abandon_on_cancel = true;
  s->result = mm_run_sync_ex(set_b_in_fn, s, &o);
  s->after_a = mm_local_get(&key_a);
  s->after_b = mm_local_get(&key_b);
  mm_test_latch_add(&s->gate, 1);
  return 0;
}

static int cancel_when_running(void *arg) {
  snapshot_t *s = arg;
  while (!atomic_load(&s->running))
    if (mm_sleep(1) != 0)
      return -1;
  return mm_cancel(s->caller);
}

static void run_snapshot(snapshot_t *s) {
  mm_test_latch_init(&s->gate);
  mm_test_latch_init(&s->done);
  mm_loop_t *loop;
  assert_mm_ok(mm_loop_new(&loop, NULL));
  assert_mm_ok(mm_spawn(loop, call_abandonable, s, &s->caller));
  mm_coro_t *k = NULL;
  if (s->abandon)
    assert_mm_ok(mm_spawn(loop, cancel_when_running, s, &k));
  assert_mm_ok(mm_loop_run(loop));
  assert_mm_ok(mm_join(s->caller));
  if (k != NULL)
    assert_mm_ok(mm_join(k));
  mm_test_latch_wait(&s->done, 1);
  assert_mm_ok(mm_loop_free(loop));
  mm_test_latch_destroy(&s->gate);
  mm_test_latch_destroy(&s->done);
}

static void test_an_abandonable_call_that_completes_shares_its_locals(
    void **state) {
  snapshot_t s;
  memset(&s, 0, sizeof s);
  run_snapshot(&s);
  assert_int_equal(s.result, 7);
  assert_ptr_equal(s.seen_in_fn, &value_1);
  assert_ptr_equal(s.after_a, &value_1);
  assert_ptr_equal(s.after_b, &value_2);
}

static void test_an_abandoned_call_keeps_its_locals_to_itself(void **state) {
  snapshot_t s;
  memset(&s, 0, sizeof s);
  s.abandon = 1;
  run_snapshot(&s);
  assert_int_equal(s.result, -ECANCELED);
  assert_ptr_equal(s.seen_in_fn, &value_1);
  assert_ptr_equal(s.after_a, &value_1);
  assert_null(s.after_b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_local_set_then_get_on_a_plain_thread),
    mm_test(test_local_set_with_a_null_key_returns_einval),
    mm_test(test_local_set_null_removes_the_key),
    mm_test(test_many_locals_can_be_stored_and_removed),
    mm_test(test_locals_are_per_thread),
    mm_test(test_coroutine_locals_are_its_own),
    mm_test(test_spawned_child_starts_with_a_copy_of_the_spawners_locals),
    mm_test(test_coroutine_spawned_from_a_plain_thread_copies_its_locals),
    mm_test(test_coroutine_spawned_from_another_thread_copies_that_threads),
    mm_test(test_locals_of_ended_coroutines_are_released),
    mm_test(test_detached_children_keep_their_copy_after_the_parent_ends),
    mm_test(test_an_abandonable_call_that_completes_shares_its_locals),
    mm_test(test_an_abandoned_call_keeps_its_locals_to_itself),
  };
  return mm_run_tests(tests);
}
