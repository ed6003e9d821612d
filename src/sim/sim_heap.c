/* sim_heap.c - the event queue's order: earliest (time, seq) first.
 *
 * seq is unique and grows with every scheduled event, so the order is total
 * and events of one instant run in the order they were scheduled: that is
 * what makes a run replay bit for bit. Events are stored by value in the
 * project's one heap (core/heap.h); a run of a thousand nodes keeps some
 * ten thousand pending. */
#include "sim/sim_internal.h"

static bool mp_ev_before(const void *pa, const void *pb) {
    const mp_sim_event *a = pa, *b = pb;
    return a->time < b->time || (a->time == b->time && a->seq < b->seq);
}

void mp_sim_heap_init(mp_heap *h) {
    mp_heap_init(h, sizeof(mp_sim_event), mp_ev_before, NULL);
}
