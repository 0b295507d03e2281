/* Diagnostics: one process-wide sink, stderr at WARN and above by default,
 * and the always-on assertion that names the current coroutine. */
#include "mm-internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* The sink is a pair; both halves are read under sink_mu so that a message
 * never goes to one function with another's data. */
static pthread_mutex_t sink_mu = PTHREAD_MUTEX_INITIALIZER;
static mm_log_fn sink_fn;
static void *sink_data;

/* Around fork() (handle.c registers the handlers): a child never finds
 * sink_mu held by a thread it does not have. */
void mm__log_before_fork(void) {
  pthread_mutex_lock(&sink_mu);
}

void mm__log_after_fork(bool child) {
  (void) child;
  pthread_mutex_unlock(&sink_mu);
}

void mm_set_log(mm_log_fn fn, void *data) {
  pthread_mutex_lock(&sink_mu);
  sink_fn = fn;
  sink_data = fn != NULL ? data : NULL;
  pthread_mutex_unlock(&sink_mu);
}

static const char *level_name(int level) {
  switch (level) {
  case MM_LOG_DEBUG: return "debug";
  case MM_LOG_INFO:  return "info";
  case MM_LOG_WARN:  return "warning";
  default:           return "error";
  }
}

void mm__log(int level, const char *fmt, ...) {
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  mm__log_str(level, msg);
}

void mm__log_str(int level, const char *msg) {
  pthread_mutex_lock(&sink_mu);
  mm_log_fn fn = sink_fn;
  void *data = sink_data;
  pthread_mutex_unlock(&sink_mu);

  if (fn != NULL)
    fn(level, msg, data);
  else if (level >= MM_LOG_WARN)
    fprintf(stderr, "mixmode: %s: %s\n", level_name(level), msg);
}

void mm__assert_fail(const char *expr, const char *file, int line) {
  mm_coro_t *c = mm__tls.coro;
  fprintf(stderr, "mixmode: %s:%d: assertion failed: %s (coroutine %s)\n",
          file, line, expr,
          c == NULL ? "none" : c->name != NULL ? c->name : "unnamed");
  abort();
}
