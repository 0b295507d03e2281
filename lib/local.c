/* Locals: values stored under address keys, per coroutine or per plain
 * thread.  A spawned coroutine starts with a copy of its spawner's table
 * (values are copied, not what they point to).  Inside a blocking call run
 * on a coroutine's behalf (bridge/), the table is that coroutine's: it is
 * parked meanwhile, so only one thread touches it at a time -- except for
 * a call that may be abandoned, which works on a copy taken when it was
 * made (the coroutine may end while it runs).
 *
 * A small unsorted array: programs keep a handful of locals, and a linear
 * scan of a few entries beats any hashing.  No malloc until the first set.
 */
#include "mm-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

mm__locals_t *mm__locals_here(void) {
  if (mm__tls.coro != NULL)
    return &mm__tls.coro->locals;
  if (mm__tls.proxy != NULL)
    return mm__tls.proxy->locals;
  return &mm__tls.locals;
}

/* A plain thread's table is freed with its waiter at thread exit. */
static bool table_owned(mm__locals_t *l) {
  return l != &mm__tls.locals || mm__waiter_self() != NULL;
}

int mm_local_set(const void *key, void *value) {
  if (key == NULL)
    return -EINVAL;
  mm__locals_t *l = mm__locals_here();
  for (size_t i = 0; i < l->n; i++) {
    if (l->v[i].key != key)
      continue;
    if (value != NULL) {
      l->v[i].value = value;
    } else {
      l->v[i] = l->v[--l->n];
    }
    return 0;
  }
  if (value == NULL)
    return 0;
  if (l->n == l->cap) {
    if (!table_owned(l))
      return -ENOMEM;
    size_t cap = l->cap ? 2 * l->cap : 4;
    mm__local_t *v = realloc(l->v, cap * sizeof(*v));
    if (v == NULL)
      return -ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n].key = key;
  l->v[l->n].value = value;
  l->n++;
  return 0;
}

void *mm_local_get(const void *key) {
  mm__locals_t *l = mm__locals_here();
  for (size_t i = 0; i < l->n; i++)
    if (l->v[i].key == key)
      return l->v[i].value;
  return NULL;
}

int mm__locals_copy(mm__locals_t *dst, const mm__locals_t *src) {
  dst->v = NULL;
  dst->n = dst->cap = 0;
  if (src->n == 0)
    return 0;
  dst->v = malloc(src->n * sizeof(*dst->v));
  if (dst->v == NULL)
    return -ENOMEM;
  memcpy(dst->v, src->v, src->n * sizeof(*dst->v));
  dst->n = dst->cap = src->n;
  return 0;
}

void mm__locals_free(mm__locals_t *l) {
  free(l->v);
  l->v = NULL;
  l->n = l->cap = 0;
}
