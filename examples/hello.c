/* hello: both bridges in one small program.
 *
 * The loop runs on a background thread.  One coroutine hands a blocking
 * call (a stand-in for a legacy database driver) to a worker thread with
 * mm_run_sync, while another coroutine keeps ticking on the loop.  The main
 * thread, a plain thread, calls into the loop with mm_run_async and blocks
 * until the coroutine it asked for is done.
 */
#include <mixmode.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int slow_query(void *arg) {   /* blocking: runs on a worker thread */
  usleep(50 * 1000);
  return *(int *) arg * 2;
}

static int ticker(void *arg) {       /* keeps the loop busy meanwhile */
  int *ticks = arg;
  for (int i = 0; i < 5; i++) {
    if (mm_sleep(10) < 0)
      break;
    ++*ticks;
  }
  return 0;
}

static int handler(void *arg) {      /* a coroutine on the loop */
  mm_loop_t *loop = arg;
  int ticks = 0, input = 21;
  mm_coro_t *t;
  int err = mm_spawn(loop, ticker, &ticks, &t);
  if (err < 0)
    return err;
  int answer = mm_run_sync(slow_query, &input);   /* suspends only us */
  mm_join(t);
  printf("query answered %d; the loop ticked %d times meanwhile\n",
         answer, ticks);
  return answer;
}

int main(void) {
  mm_loop_t *loop;
  int err = mm_loop_new(&loop, NULL);
  if (err < 0 || (err = mm_loop_start(loop)) < 0) {
    fprintf(stderr, "hello: %s\n", mm_strerror(err));
    return EXIT_FAILURE;
  }
  int status = mm_run_async(loop, handler, loop);   /* blocks this thread */
  printf("mm_run_async returned %d (%s)\n", status,
         status < 0 ? mm_strerror(status) : "the handler's value");
  return mm_loop_free(loop) == 0 && status == 42 ? EXIT_SUCCESS
                                                  : EXIT_FAILURE;
}
