/* heap.h - the one binary min-heap of the project.
 *
 * Elements are stored by value, `size` bytes each (a pointer, for heaps of
 * records that live elsewhere; a whole event, for the simulator's queue).
 * `before(a, b)` is a strict order on elements (a, b point at stored
 * elements): equal elements are never swapped, so a caller that breaks
 * ties itself (a sequence number) gets a total, repeatable order, and the
 * simulator its bit-for-bit replays.
 *
 * Indexed use: when elements must be removed or re-sifted from the middle
 * (a cancelled timer, a refreshed deadline), `placed(elem, slot)` is told
 * every time an element lands in a slot, so that its owner can remember
 * where it is (mp_heap_remove_at, mp_heap_update_at take that slot).
 *
 * Invariant (checked by MP_ASSERT where it is cheap): for every slot i > 0,
 * !before(items[i], items[(i - 1) / 2]). */
#ifndef MP_HEAP_H
#define MP_HEAP_H

#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct mp_heap {
    unsigned char *items;
    size_t len;
    size_t cap;
    size_t size; /* bytes of one element */
    bool (*before)(const void *a, const void *b);
    void (*placed)(void *elem, size_t slot); /* optional */
    unsigned char *tmp;                      /* one element of scratch */
} mp_heap;

/* An empty heap of elements of `size` bytes (1..256). Allocates nothing
 * until the first push. */
void mp_heap_init(mp_heap *h, size_t size, bool (*before)(const void *a, const void *b),
                  void (*placed)(void *elem, size_t slot));
void mp_heap_free(mp_heap *h);

static inline size_t mp_heap_len(const mp_heap *h) {
    return h->len;
}
/* The least element, or NULL when empty; valid until the heap changes. */
static inline void *mp_heap_peek(const mp_heap *h) {
    return h->len ? h->items : NULL;
}
static inline void *mp_heap_at(const mp_heap *h, size_t slot) {
    return h->items + slot * h->size;
}

/* Room for `extra` more elements, so that pushes after it cannot fail. */
mpreg_err mp_heap_reserve(mp_heap *h, size_t extra);
/* Copies elem in. MPREG_E_NOMEM (nothing changed) when it cannot grow. */
mpreg_err mp_heap_push(mp_heap *h, const void *elem);
/* Copies the least element to out (may be NULL) and removes it. false
 * when empty. */
bool mp_heap_pop(mp_heap *h, void *out);
/* Removes the element in slot (the last element takes its place and moves
 * whichever way it must). */
void mp_heap_remove_at(mp_heap *h, size_t slot);
/* The element in slot changed its key: moves it where it now belongs. */
void mp_heap_update_at(mp_heap *h, size_t slot);

#endif
