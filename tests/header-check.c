/* The public header as users compile it: tests/check-installed.sh builds
 * this file against an installed mixmode, as C99 and as C++11, with
 * -Wall -Wextra -Wpedantic -Werror and pkg-config's flags, links it and
 * runs it.  So mixmode.h is valid in both languages, its functions link
 * from C++ (extern "C"), and the installed library loads and works.
 * Written in the common part of C99 and C++11: no designated initialisers,
 * no compound literals, no conversion from void * without a cast. */
#include <mixmode.h>
#include <stdio.h>
#include <string.h>

/* The version macros are preprocessor constants. */
#if !defined(MM_VERSION_HEX) || MM_VERSION_HEX < 0x000100
# error "MM_VERSION_HEX is missing or below 0.1.0"
#endif

#ifdef __cplusplus
# define LANGUAGE "C++"
#else
# define LANGUAGE "C"
#endif

static int doubled(void *arg) {         /* on a worker thread */
  return 2 * *(int *) arg;
}

static int coroutine(void *arg) {       /* on the loop */
  mm_sync_options_t o;
  mm_sync_options_init(&o);
  o.affinity = MM_AFFINITY_POOL;
  return mm_run_sync_ex(doubled, arg, &o);
}

int main(void) {
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", MM_VERSION_MAJOR, MM_VERSION_MINOR,
           MM_VERSION_PATCH);
  if (strcmp(mm_version(), want) != 0) {
    fprintf(stderr, "header-check: mm_version() %s, the header %s\n",
            mm_version(), want);
    return 1;
  }
  mm_loop_options_t lo;
  mm_spawn_options_t so;
  mm_async_options_t ao;
  mm_laneset_options_t lso;
  mm_loop_options_init(&lo);
  mm_spawn_options_init(&so);
  mm_async_options_init(&ao);
  mm_laneset_options_init(&lso);
  so.name = "header-check";
  ao.timeout_ms = 60 * 1000;

  mm_loop_t *loop = NULL;
  int err = mm_loop_new(&loop, &lo);
  if (err < 0) {
    fprintf(stderr, "header-check: mm_loop_new: %s\n", mm_strerror(err));
    return 1;
  }
  int value = 21;
  mm_coro_t *c = NULL;
  err = mm_spawn_ex(loop, coroutine, &value, &so, &c);
  if (err == 0)
    err = mm_loop_run(loop);
  int joined = err == 0 ? mm_join(c) : err;
  int started = mm_loop_start(loop);
  int async = started == 0 ? mm_run_async_ex(loop, coroutine, &value, &ao)
                           : started;
  int freed = mm_loop_free(loop);
  if (joined != 42 || async != 42 || freed != 0) {
    fprintf(stderr, "header-check: join %d, run_async %d, free %d\n",
            joined, async, freed);
    return 1;
  }
  printf("header-check: mixmode %s from %s, both bridges answered\n",
         mm_version(), LANGUAGE);
  return 0;
}
