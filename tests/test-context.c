/* White-box tests of the context-switch port (lib/context.h): whichever
 * backend configure chose, mm__ctx_make/mm__ctx_switch must start a
 * context on its own stack, bounce between contexts, and keep each
 * context's callee-saved registers and floating-point control state its
 * own.  No loops, no coroutines: just the port, on stacks mmap'ed here.
 *
 * The sanitizer and Valgrind annotations that sched.c wraps around every
 * switch are repeated here in switch_to(), so that the suite runs clean
 * under memcheck, ASan and TSan too.
 */
#include "config.h"

#include <fenv.h>
#include <stdint.h>
#include <sys/mman.h>

#include "helpers.h"
#include "context.h"
#include "mm-internal.h"   /* the port's last word names an mm_coro_t */

#ifdef HAVE_VALGRIND_VALGRIND_H
# include <valgrind/valgrind.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
# define TEST_ASAN 1
#elif defined(__has_feature)
# if __has_feature(address_sanitizer)
#  define TEST_ASAN 1
# endif
#endif
#if defined(__SANITIZE_THREAD__)
# define TEST_TSAN 1
#elif defined(__has_feature)
# if __has_feature(thread_sanitizer)
#  define TEST_TSAN 1
# endif
#endif
#ifdef TEST_ASAN
# include <sanitizer/asan_interface.h>
# include <sanitizer/common_interface_defs.h>
#endif
#ifdef TEST_TSAN
# include <sanitizer/tsan_interface.h>
#endif

#define STACK_SIZE (64 * 1024)

/* A context with its own stack, or the test thread's own (stack NULL). */
typedef struct {
  mm__ctx_t ctx;
  void     *stack;
  size_t    size;
  unsigned  vg_id;
  const void *asan_bottom;   /* the stack ASan is told about */
  size_t      asan_size;
#ifdef TEST_TSAN
  void     *fiber;
#endif
} tctx_t;

static void tctx_init_main(tctx_t *t) {
  memset(t, 0, sizeof *t);
#ifdef TEST_TSAN
  t->fiber = __tsan_get_current_fiber();
#endif
}

static int tctx_init(tctx_t *t, mm__ctx_entry_fn entry, void *arg) {
  memset(t, 0, sizeof *t);
  t->size = STACK_SIZE;
  t->stack = mmap(NULL, t->size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (t->stack == MAP_FAILED)
    return -1;
#ifdef HAVE_VALGRIND_VALGRIND_H
  t->vg_id = VALGRIND_STACK_REGISTER(t->stack, (char *)t->stack + t->size);
#endif
#ifdef TEST_TSAN
  t->fiber = __tsan_create_fiber(0);
#endif
  mm__ctx_make(&t->ctx, t->stack, t->size, entry, arg);
  return 0;
}

static void tctx_destroy(tctx_t *t) {
  if (t->stack == NULL)
    return;
#ifdef TEST_ASAN
  /* The frames left on it were never returned from: clear their poison
   * before the next mmap hands out the same addresses. */
  ASAN_UNPOISON_MEMORY_REGION(t->stack, t->size);
#endif
#ifdef TEST_TSAN
  __tsan_destroy_fiber(t->fiber);
#endif
#ifdef HAVE_VALGRIND_VALGRIND_H
  VALGRIND_STACK_DEREGISTER(t->vg_id);
#endif
  munmap(t->stack, t->size);
  t->stack = NULL;
}

/* mm__ctx_switch with the annotations a sanitizer needs (as in sched.c).
 * ASan wants the bounds of the stack being switched to; the test thread's
 * own are learnt from the first switch away from it (entered()). */
#ifdef TEST_ASAN
static tctx_t *asan_from;
#endif

static void switch_to(tctx_t *from, tctx_t *to) {
#ifdef TEST_ASAN
  void *fake = NULL;
  asan_from = from;
  __sanitizer_start_switch_fiber(&fake, to->stack ? to->stack
                                                  : to->asan_bottom,
                                 to->stack ? to->size : to->asan_size);
#endif
#ifdef TEST_TSAN
  __tsan_switch_to_fiber(to->fiber, 0);
#endif
  mm__ctx_switch(&from->ctx, &to->ctx);
#ifdef TEST_ASAN
  __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

/* First thing in every entry function: completes the switch that
 * started it. */
static void entered(void) {
#ifdef TEST_ASAN
  tctx_t *from = asan_from;
  __sanitizer_finish_switch_fiber(NULL, &from->asan_bottom, &from->asan_size);
#endif
}


/* ---- Start and bounce ------------------------------------------------- */

typedef struct {
  tctx_t    main;
  tctx_t    co;
  void     *arg_seen;
  uintptr_t local_addr;     /* address of a local of entry */
  int       steps;
} bounce_t;

static void bounce_entry(void *arg) {
  entered();
  bounce_t *b = arg;
  int local = 0;
  b->arg_seen = arg;
  b->local_addr = (uintptr_t)&local;
  for (;;) {
    b->steps++;
    switch_to(&b->co, &b->main);
  }
}

static void test_ctx_make_runs_entry_with_its_arg_on_the_given_stack(
    void **state) {
  bounce_t b;
  memset(&b, 0, sizeof b);
  tctx_init_main(&b.main);
  assert_int_equal(tctx_init(&b.co, bounce_entry, &b), 0);
  switch_to(&b.main, &b.co);
  assert_ptr_equal(b.arg_seen, &b);
  assert_true(b.local_addr >= (uintptr_t)b.co.stack);
  assert_true(b.local_addr < (uintptr_t)b.co.stack + b.co.size);
  assert_int_equal(b.steps, 1);
  tctx_destroy(&b.co);
}

static void test_ctx_switch_resumes_where_each_context_left_off(void **state) {
  bounce_t b;
  memset(&b, 0, sizeof b);
  tctx_init_main(&b.main);
  assert_int_equal(tctx_init(&b.co, bounce_entry, &b), 0);
  for (int i = 1; i <= 10000; i++) {
    switch_to(&b.main, &b.co);
    if (b.steps != i)
      fail_msg("after switch %d the context made %d steps", i, b.steps);
  }
  tctx_destroy(&b.co);
}


/* ---- A ring of contexts ----------------------------------------------- */

#define RING 8
#define ROUNDS 500

typedef struct ring ring_t;
typedef struct {
  ring_t *ring;
  int     index;
} ring_member_t;

struct ring {
  tctx_t        main;
  tctx_t        co[RING];
  ring_member_t member[RING];
  int           order[RING * ROUNDS];   /* who ran, in order */
  int           n;
};

static void ring_entry(void *arg) {
  entered();
  ring_member_t *m = arg;
  ring_t *r = m->ring;
  for (int round = 0; round < ROUNDS; round++) {
    r->order[r->n++] = m->index;
    /* Each context passes control to the next one; the last one of a
     * round goes back to the test for a check, which restarts at 0. */
    if (m->index + 1 < RING)
      switch_to(&r->co[m->index], &r->co[m->index + 1]);
    else
      switch_to(&r->co[m->index], &r->main);
  }
  switch_to(&r->co[m->index], &r->main);
  abort();  /* never resumed */
}

static void test_ctx_switch_passes_control_around_a_ring_of_contexts(
    void **state) {
  ring_t *r = calloc(1, sizeof *r);
  assert_non_null(r);
  tctx_init_main(&r->main);
  for (int i = 0; i < RING; i++) {
    r->member[i].ring = r;
    r->member[i].index = i;
    assert_int_equal(tctx_init(&r->co[i], ring_entry, &r->member[i]), 0);
  }
  for (int round = 0; round < ROUNDS; round++)
    switch_to(&r->main, &r->co[0]);
  assert_int_equal(r->n, RING * ROUNDS);
  for (int i = 0; i < RING * ROUNDS; i++)
    if (r->order[i] != i % RING)
      fail_msg("step %d ran context %d, expected %d", i, r->order[i],
               i % RING);
  for (int i = 0; i < RING; i++)
    tctx_destroy(&r->co[i]);
  free(r);
}


/* ---- Callee-saved registers ------------------------------------------- */

#ifdef __x86_64__

typedef struct {
  tctx_t main;
  tctx_t co;
} clobber_t;

/* Overwrites every callee-saved register the port must preserve, then
 * switches back with the garbage still in them. */
static void clobber_entry(void *arg) {
  entered();
  clobber_t *c = arg;
  for (;;) {
    __asm__ volatile(
        "movabs $0xdeaddeaddeaddead, %%rbx\n\t"
        "movabs $0xdeaddeaddeaddead, %%r12\n\t"
        "movabs $0xdeaddeaddeaddead, %%r13\n\t"
        "movabs $0xdeaddeaddeaddead, %%r14\n\t"
        "movabs $0xdeaddeaddeaddead, %%r15\n\t"
        ::: "rbx", "r12", "r13", "r14", "r15", "memory");
    switch_to(&c->co, &c->main);
  }
}

static void test_ctx_switch_preserves_callee_saved_registers(void **state) {
  static clobber_t c;
  memset(&c, 0, sizeof c);
  tctx_init_main(&c.main);
  assert_int_equal(tctx_init(&c.co, clobber_entry, &c), 0);
  uint64_t got[5];
  for (int round = 0; round < 3; round++) {
    register uint64_t rbx __asm__("rbx") = 0x1111111111111111u + round;
    register uint64_t r12 __asm__("r12") = 0x1212121212121212u + round;
    register uint64_t r13 __asm__("r13") = 0x1313131313131313u + round;
    register uint64_t r14 __asm__("r14") = 0x1414141414141414u + round;
    register uint64_t r15 __asm__("r15") = 0x1515151515151515u + round;
    /* The empty asm pins the values in their registers up to the call;
     * the second one reads them from the same registers after it. */
    __asm__ volatile("" : "+r"(rbx), "+r"(r12), "+r"(r13), "+r"(r14),
                          "+r"(r15));
    switch_to(&c.main, &c.co);
    __asm__ volatile("" : "+r"(rbx), "+r"(r12), "+r"(r13), "+r"(r14),
                          "+r"(r15));
    got[0] = rbx;
    got[1] = r12;
    got[2] = r13;
    got[3] = r14;
    got[4] = r15;
    static const char *names[5] = { "rbx", "r12", "r13", "r14", "r15" };
    static const uint64_t base[5] = {
      0x1111111111111111u, 0x1212121212121212u, 0x1313131313131313u,
      0x1414141414141414u, 0x1515151515151515u,
    };
    for (int i = 0; i < 5; i++)
      if (got[i] != base[i] + (uint64_t)round)
        fail_msg("round %d: %s is %#llx after the switch, expected %#llx",
                 round, names[i], (unsigned long long)got[i],
                 (unsigned long long)(base[i] + (uint64_t)round));
  }
  tctx_destroy(&c.co);
}

#elif defined(__aarch64__)

typedef struct {
  tctx_t main;
  tctx_t co;
} clobber_t;

/* Overwrites x19-x28 and d8-d15, then switches back with the garbage
 * still in them (x29, x30 and sp are the frame the switch itself uses). */
static void clobber_entry(void *arg) {
  entered();
  clobber_t *c = arg;
  for (;;) {
    __asm__ volatile(
        "mov x19, #0xdead\n\tmov x20, #0xdead\n\tmov x21, #0xdead\n\t"
        "mov x22, #0xdead\n\tmov x23, #0xdead\n\tmov x24, #0xdead\n\t"
        "mov x25, #0xdead\n\tmov x26, #0xdead\n\tmov x27, #0xdead\n\t"
        "mov x28, #0xdead\n\t"
        "fmov d8, x19\n\tfmov d9, x19\n\tfmov d10, x19\n\t"
        "fmov d11, x19\n\tfmov d12, x19\n\tfmov d13, x19\n\t"
        "fmov d14, x19\n\tfmov d15, x19\n\t"
        ::: "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27",
            "x28", "d8", "d9", "d10", "d11", "d12", "d13", "d14", "d15",
            "memory");
    switch_to(&c->co, &c->main);
  }
}

/* What the asm block below reads and writes, through one pointer. */
typedef struct {
  uint64_t want[18];      /* x19-x28, d8-d15 before the switch */
  uint64_t got[18];       /* the same after it */
  tctx_t  *from, *to;
  void   (*fn)(tctx_t *, tctx_t *);
} regs_t;

/* Each register gets a value of its own, different in each round; the
 * d registers carry their bits through ldp/stp, not as doubles. */
static void test_ctx_switch_preserves_callee_saved_registers(void **state) {
  static clobber_t c;
  memset(&c, 0, sizeof c);
  tctx_init_main(&c.main);
  assert_int_equal(tctx_init(&c.co, clobber_entry, &c), 0);
  static const char *names[18] = {
    "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28",
    "d8", "d9", "d10", "d11", "d12", "d13", "d14", "d15",
  };
  static regs_t r;
  for (int round = 0; round < 3; round++) {
    memset(&r, 0, sizeof r);
    for (int i = 0; i < 18; i++)
      r.want[i] = 0x0101010101010101u * (uint64_t) (i + 1) + (uint64_t) round;
    r.from = &c.main;
    r.to = &c.co;
    r.fn = switch_to;
    /* Loads every register from want[], switches away and back, then
     * stores every register into got[], in one asm block so that the
     * compiler cannot touch them in between: the call is made from
     * inside it, with everything it may change declared clobbered.  x0
     * holds &r, kept on the stack across the call. */
    register regs_t *x0 __asm__("x0") = &r;
    __asm__ volatile(
        "ldp x19, x20, [x0, #0]\n\t"
        "ldp x21, x22, [x0, #16]\n\t"
        "ldp x23, x24, [x0, #32]\n\t"
        "ldp x25, x26, [x0, #48]\n\t"
        "ldp x27, x28, [x0, #64]\n\t"
        "ldp d8, d9, [x0, #80]\n\t"
        "ldp d10, d11, [x0, #96]\n\t"
        "ldp d12, d13, [x0, #112]\n\t"
        "ldp d14, d15, [x0, #128]\n\t"
        "str x0, [sp, #-16]!\n\t"
        "ldr x2, [x0, #304]\n\t"
        "ldr x1, [x0, #296]\n\t"
        "ldr x0, [x0, #288]\n\t"
        "blr x2\n\t"
        "ldr x0, [sp], #16\n\t"
        "stp x19, x20, [x0, #144]\n\t"
        "stp x21, x22, [x0, #160]\n\t"
        "stp x23, x24, [x0, #176]\n\t"
        "stp x25, x26, [x0, #192]\n\t"
        "stp x27, x28, [x0, #208]\n\t"
        "stp d8, d9, [x0, #224]\n\t"
        "stp d10, d11, [x0, #240]\n\t"
        "stp d12, d13, [x0, #256]\n\t"
        "stp d14, d15, [x0, #272]\n\t"
        : "+r"(x0)
        :
        : "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10",
          "x11", "x12", "x13", "x14", "x15", "x16", "x17", "x19", "x20",
          "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28", "x30",
          "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9",
          "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18",
          "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27",
          "v28", "v29", "v30", "v31", "cc", "memory");
    for (int i = 0; i < 18; i++)
      if (r.got[i] != r.want[i])
        fail_msg("round %d: %s is %#llx after the switch, expected %#llx",
                 round, names[i], (unsigned long long) r.got[i],
                 (unsigned long long) r.want[i]);
  }
  tctx_destroy(&c.co);
}
_Static_assert(offsetof(regs_t, got) == 144 && offsetof(regs_t, from) == 288 &&
               offsetof(regs_t, to) == 296 && offsetof(regs_t, fn) == 304,
               "the asm block's offsets into regs_t");

#else

static void test_ctx_switch_preserves_callee_saved_registers(void **state) {
  skip();
}

#endif


/* ---- Floating-point control state ------------------------------------- */

#ifdef __x86_64__
static unsigned get_mxcsr(void) {
  unsigned v;
  __asm__ volatile("stmxcsr %0" : "=m"(v));
  return v;
}

static void set_mxcsr(unsigned v) {
  __asm__ volatile("ldmxcsr %0" :: "m"(v));
}

static unsigned short get_x87_cw(void) {
  unsigned short v;
  __asm__ volatile("fnstcw %0" : "=m"(v));
  return v;
}

static void set_x87_cw(unsigned short v) {
  __asm__ volatile("fldcw %0" :: "m"(v));
}
#endif

/* The main context runs with rounding DOWNWARD everywhere; the other one
 * with MXCSR rounding UP and, on x86-64, the x87 unit rounding toward zero,
 * so that the two units' control state is seen to be saved separately.
 * (Precision control and FTZ/DAZ are left alone: Valgrind does not model
 * them.) */
typedef struct {
  tctx_t   main;
  tctx_t   co;
  int      co_bad;           /* times the context found another mode */
  int      rounds;
} fpctx_t;

#ifdef __x86_64__
# define MXCSR_RC_MASK 0x6000u
# define MXCSR_RC_DOWN 0x2000u
# define MXCSR_RC_UP   0x4000u
# define X87_RC_MASK   0x0c00u
# define X87_RC_DOWN   0x0400u
# define X87_RC_ZERO   0x0c00u

static void set_co_mode(void) {
  set_mxcsr((get_mxcsr() & ~MXCSR_RC_MASK) | MXCSR_RC_UP);
  set_x87_cw((unsigned short)((get_x87_cw() & ~X87_RC_MASK) | X87_RC_ZERO));
}

static int co_mode_ok(void) {
  return (get_mxcsr() & MXCSR_RC_MASK) == MXCSR_RC_UP &&
         (get_x87_cw() & X87_RC_MASK) == X87_RC_ZERO;
}

static int main_mode_ok(void) {
  return fegetround() == FE_DOWNWARD &&
         (get_mxcsr() & MXCSR_RC_MASK) == MXCSR_RC_DOWN &&
         (get_x87_cw() & X87_RC_MASK) == X87_RC_DOWN;
}
#else
static void set_co_mode(void) { fesetround(FE_UPWARD); }
static int co_mode_ok(void) { return fegetround() == FE_UPWARD; }
static int main_mode_ok(void) { return fegetround() == FE_DOWNWARD; }
#endif

/* Rounds 1/3 with the current SSE mode: tells UP from DOWN in practice. */
static double third(void) {
  volatile double one = 1.0, three = 3.0;
  return one / three;
}

static void fp_entry(void *arg) {
  entered();
  fpctx_t *f = arg;
  set_co_mode();
  for (;;) {
    switch_to(&f->co, &f->main);
    f->rounds++;
    if (!co_mode_ok())
      f->co_bad++;
  }
}

static void test_ctx_switch_keeps_each_contexts_rounding_mode(void **state) {
  static fpctx_t f;
  memset(&f, 0, sizeof f);
  int saved = fegetround();
  fesetround(FE_DOWNWARD);
  double down = third();
  tctx_init_main(&f.main);
  assert_int_equal(tctx_init(&f.co, fp_entry, &f), 0);
  int main_bad = 0, main_value_bad = 0;
  for (int i = 0; i < 1000; i++) {
    switch_to(&f.main, &f.co);
    if (!main_mode_ok())
      main_bad++;
    if (third() != down)
      main_value_bad++;
  }
  /* Restore the test thread's mode before any assert can longjmp. */
  fesetround(saved);
  tctx_destroy(&f.co);

  assert_int_equal(f.rounds, 999);
  assert_int_equal(main_bad, 0);
  assert_int_equal(main_value_bad, 0);
  assert_int_equal(f.co_bad, 0);
}


#ifdef __x86_64__
/* The port compares the two contexts' control state before it loads any:
 * a context whose x87 control word alone differs (MXCSR the same) must
 * still get its own back, and the other context its own. */
static void x87_entry(void *arg) {
  entered();
  fpctx_t *f = arg;
  set_x87_cw((unsigned short)((get_x87_cw() & ~X87_RC_MASK) | X87_RC_ZERO));
  for (;;) {
    switch_to(&f->co, &f->main);
    f->rounds++;
    if ((get_x87_cw() & X87_RC_MASK) != X87_RC_ZERO)
      f->co_bad++;
  }
}

static void test_ctx_switch_keeps_an_x87_control_word_that_alone_differs(
    void **state) {
  static fpctx_t f;
  memset(&f, 0, sizeof f);
  unsigned short saved = get_x87_cw();
  unsigned mxcsr = get_mxcsr();
  set_x87_cw((unsigned short)((saved & ~X87_RC_MASK) | X87_RC_DOWN));
  tctx_init_main(&f.main);
  assert_int_equal(tctx_init(&f.co, x87_entry, &f), 0);
  /* The fresh context starts from the default MXCSR: make both equal. */
  set_mxcsr(0x1F80u);
  int main_bad = 0;
  for (int i = 0; i < 1000; i++) {
    switch_to(&f.main, &f.co);
    if ((get_x87_cw() & X87_RC_MASK) != X87_RC_DOWN)
      main_bad++;
  }
  set_x87_cw(saved);
  set_mxcsr(mxcsr);
  tctx_destroy(&f.co);

  assert_int_equal(f.rounds, 999);
  assert_int_equal(main_bad, 0);
  assert_int_equal(f.co_bad, 0);
}
#else
static void test_ctx_switch_keeps_an_x87_control_word_that_alone_differs(
    void **state) {
  skip();   /* no x87 unit */
}
#endif


/* ---- An entry that returns -------------------------------------------- */

static tctx_t ret_main, ret_co;

static void returning_entry(void *arg) {
  entered();
  /* Returns: the port must stop the program with a message. */
}

/* The assembly port hands the entry's argument to the library's last-word
 * handler, which takes it for the coroutine that owns the context; give it
 * one to name. */
static void run_returning_entry(void *arg) {
  mm_coro_t *c = calloc(1, sizeof *c);
  if (c == NULL)
    _exit(3);
  c->name = "ctx-test-entry";
  tctx_init_main(&ret_main);
  if (tctx_init(&ret_co, returning_entry, c) != 0)
    _exit(3);
  switch_to(&ret_main, &ret_co);
  _exit(4);   /* resumed after the entry returned: the port failed */
}

static void test_ctx_entry_that_returns_stops_the_program(void **state) {
  static mm_test_child_t child;
  assert_int_equal(mm_test_fork(run_returning_entry, NULL, &child), 0);
  if (child.exited && (child.code == 0 || child.code == 3 || child.code == 4))
    fail_msg("child exited with %d instead of being stopped; output:\n%s",
             child.code, child.out);
  /* Stopped with a message naming the culprit, not by whatever the
   * garbage return address happened to do. */
  if (strstr(child.out, "ctx-test-entry") == NULL)
    fail_msg("the message does not name the context; output:\n%s",
             child.out);
}


int main(void) {
  const struct CMUnitTest tests[] = {
    mm_test(test_ctx_make_runs_entry_with_its_arg_on_the_given_stack),
    mm_test(test_ctx_switch_resumes_where_each_context_left_off),
    mm_test(test_ctx_switch_passes_control_around_a_ring_of_contexts),
    mm_test(test_ctx_switch_preserves_callee_saved_registers),
    mm_test(test_ctx_switch_keeps_each_contexts_rounding_mode),
    mm_test(test_ctx_switch_keeps_an_x87_control_word_that_alone_differs),
    mm_test(test_ctx_entry_that_returns_stops_the_program),
  };
  return mm_run_tests(tests);
}
