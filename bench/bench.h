/* What every benchmark shares: the clock and the process's CPU time,
 * fatal errors, warm-ups, the SCALE argument, and medians over RUNS runs.
 * Header-only: each benchmark is one translation unit, and defines
 * BENCH_NAME ("bench/cpu") before it includes this. */
#ifndef MM_BENCH_H
#define MM_BENCH_H

#include <mixmode.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

enum { RUNS = 5 };

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* CPU time of the whole process so far, user + sys of every thread, in
 * ns. */
static inline uint64_t cpu_ns(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ((uint64_t) ru.ru_utime.tv_sec + (uint64_t) ru.ru_stime.tv_sec) *
             1000000000u +
         ((uint64_t) ru.ru_utime.tv_usec + (uint64_t) ru.ru_stime.tv_usec) *
             1000u;
}

/* Reports what failed (err: a negative errno or libuv error) and exits. */
static inline void die(const char *what, int err) {
  fprintf(stderr, BENCH_NAME ": %s: %s\n", what, mm_strerror(err));
  exit(EXIT_FAILURE);
}

/* Iterations run untimed before a measurement. */
static inline uint64_t warmup_of(uint64_t iters) {
  return iters / 10 + 1;
}

/* The optional SCALE argument (> 0) that multiplies iteration counts;
 * exits with a usage message if it is malformed. */
static inline double bench_scale(int argc, char **argv) {
  if (argc <= 1)
    return 1.0;
  char *end;
  double scale = strtod(argv[1], &end);
  if (*end != '\0' || scale <= 0 || argc > 2) {
    fprintf(stderr, "usage: %s [SCALE]  (SCALE > 0 multiplies the "
            "iteration counts)\n", argv[0]);
    exit(2);
  }
  return scale;
}

static inline uint64_t scaled(uint64_t iters, double scale) {
  return (uint64_t) ((double) iters * scale) + 1;
}

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

struct result {
  double median, best;
};

/* Sorts v (RUNS values).  higher: a higher value is better (a rate, a
 * ratio), so the best run is the highest. */
static inline struct result summarize(double *v, int higher) {
  qsort(v, RUNS, sizeof *v, cmp_double);
  return (struct result) { .median = v[RUNS / 2],
                           .best = higher ? v[RUNS - 1] : v[0] };
}

#endif /* MM_BENCH_H */
