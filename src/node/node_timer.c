/* node_timer.c - the node's timers: a binary min-heap of embedded timers.
 *
 * Handshake timeouts, request deadlines and sleeping built-ins all wait on
 * the same heap. Timers are embedded in their owners and know their slot,
 * so cancelling one is O(log n) instead of leaving a corpse for the heap to
 * step over later; equal due times fire in arming order (seq), which keeps
 * the simulator's runs identical. */
#include "node/node_internal.h"

#include <stdlib.h>

void mp_timer_init(mp_timer *t, mp_timer_fn fire) {
    t->due = 0;
    t->seq = 0;
    t->slot = SIZE_MAX;
    t->fire = fire;
}

/* Heap elements are mp_timer pointers. */
static bool mp_timer_before(const void *pa, const void *pb) {
    const mp_timer *a = *(mp_timer *const *)pa, *b = *(mp_timer *const *)pb;
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void mp_timer_placed(void *elem, size_t slot) {
    (*(mp_timer **)elem)->slot = slot;
}

static mp_timer *mp_timer_at(const mp_timer_heap *h, size_t slot) {
    return *(mp_timer **)mp_heap_at(&h->heap, slot);
}

void mp_timer_cancel(mp_timer_heap *h, mp_timer *t) {
    if (!mp_timer_armed(t)) {
        return;
    }
    MP_ASSERT(t->slot < mp_heap_len(&h->heap) && mp_timer_at(h, t->slot) == t);
    size_t i = t->slot;
    t->slot = SIZE_MAX;
    mp_heap_remove_at(&h->heap, i);
}

mpreg_err mp_timer_arm(mp_timer_heap *h, mp_timer *t, uint64_t due) {
    if (h->heap.size == 0) {
        mp_heap_init(&h->heap, sizeof(mp_timer *), mp_timer_before, mp_timer_placed);
    }
    if (!mp_timer_armed(t) && mp_heap_reserve(&h->heap, 1)) {
        return MPREG_E_NOMEM;
    }
    mp_timer_cancel(h, t);
    t->due = due;
    t->seq = h->seq++;
    return mp_heap_push(&h->heap, &t); /* room was reserved: cannot fail */
}

void mp_timers_run(mp_timer_heap *h, mp_node *n, uint64_t now) {
    while (mp_heap_len(&h->heap) > 0 && mp_timer_at(h, 0)->due <= now) {
        mp_timer *t = mp_timer_at(h, 0);
        mp_timer_cancel(h, t);
        t->fire(n, t);
    }
}

uint64_t mp_timers_next(const mp_timer_heap *h) {
    return mp_heap_len(&h->heap) ? mp_timer_at(h, 0)->due : UINT64_MAX;
}

void mp_timer_heap_free(mp_timer_heap *h) {
    for (size_t i = 0; i < mp_heap_len(&h->heap); i++) {
        mp_timer_at(h, i)->slot = SIZE_MAX;
    }
    mp_heap_free(&h->heap);
}
