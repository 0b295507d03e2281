/* hello: three coroutines on a mixmode loop.
 *
 * The loop runs on a background thread.  Each coroutine naps a few times,
 * yielding to the others in between, and prints as it goes.  The main
 * thread is a plain thread: mm_join() blocks it until a coroutine ends,
 * while inside a coroutine the same call would suspend only that coroutine.
 */
#include <mixmode.h>
#include <stdio.h>
#include <stdlib.h>

struct greeter {
  const char *name;
  int naps;           /* how many naps to take */
  uint64_t nap_ms;    /* how long each one is */
  int naps_taken;     /* the result, read after the join */
};

static int greet(void *arg) {
  struct greeter *g = arg;
  for (int i = 1; i <= g->naps; i++) {
    int err = mm_sleep(g->nap_ms);   /* suspends this coroutine only */
    if (err < 0)
      return err;                    /* -ECANCELED, for instance */
    printf("%-8s nap %d of %d (%s)\n", g->name, i, g->naps,
           mm_coro_name(mm_current()));
    g->naps_taken++;
    mm_yield();                      /* let the others run */
  }
  return 0;
}

int main(void) {
  struct greeter greeters[] = {
    { "hello", 3, 10, 0 }, { "world", 2, 20, 0 }, { "mixmode", 1, 40, 0 },
  };
  enum { N = sizeof greeters / sizeof greeters[0] };
  mm_coro_t *coros[N];
  mm_loop_t *loop = NULL;
  int err;

  if ((err = mm_loop_new(&loop, NULL)) < 0 || (err = mm_loop_start(loop)) < 0)
    goto fail;
  for (int i = 0; i < N; i++) {
    mm_spawn_options_t o;
    mm_spawn_options_init(&o);
    o.name = greeters[i].name;       /* shown in diagnostics */
    if ((err = mm_spawn_ex(loop, greet, &greeters[i], &o, &coros[i])) < 0)
      goto fail;
  }
  for (int i = 0; i < N; i++) {
    int status = mm_join(coros[i]);  /* blocks this plain thread */
    printf("%-8s status %d (%s), naps taken: %d\n", greeters[i].name, status,
           mm_strerror(status), greeters[i].naps_taken);
  }
  return mm_loop_free(loop) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;

fail:
  fprintf(stderr, "hello: %s\n", mm_strerror(err));
  if (loop != NULL)
    mm_loop_free(loop);
  return EXIT_FAILURE;
}
