/* A typed-enough intrusive doubly linked list, circular with a head node.
 *
 * Embed an mm__list_t in the element and get back with container_of.  The
 * head is an mm__list_t too; an empty list points at itself.  Not thread
 * safe: each list says in its owner struct who may touch it.
 */
#ifndef MM_LIST_H
#define MM_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct mm__list {
  struct mm__list *next;
  struct mm__list *prev;
} mm__list_t;

static inline void mm__list_init(mm__list_t *h) {
  h->next = h;
  h->prev = h;
}

static inline bool mm__list_empty(const mm__list_t *h) {
  return h->next == h;
}

/* Inserts n before h: at the tail when h is a head. */
static inline void mm__list_push_back(mm__list_t *h, mm__list_t *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}

/* Inserts n at the head of h. */
static inline void mm__list_push_front(mm__list_t *h, mm__list_t *n) {
  mm__list_push_back(h->next, n);
}

/* Moves every element of from to the tail of h, in order; from is left
 * empty. */
static inline void mm__list_splice_back(mm__list_t *h, mm__list_t *from) {
  if (from->next == from)
    return;
  from->next->prev = h->prev;
  h->prev->next = from->next;
  from->prev->next = h;
  h->prev = from->prev;
  from->next = from;
  from->prev = from;
}

static inline void mm__list_remove(mm__list_t *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n;
  n->prev = n;
}

/* Removes and returns the first element, or NULL. */
static inline mm__list_t *mm__list_pop_front(mm__list_t *h) {
  if (mm__list_empty(h))
    return NULL;
  mm__list_t *n = h->next;
  mm__list_remove(n);
  return n;
}

/* Iterates with n free to be removed inside the body. */
#define mm__list_foreach_safe(n, tmp, h) \
  for ((n) = (h)->next, (tmp) = (n)->next; (n) != (h); \
       (n) = (tmp), (tmp) = (n)->next)

#endif /* MM_LIST_H */
