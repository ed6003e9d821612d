/* sim_heap.c - the event queue: a binary min-heap ordered by (time, seq).
 *
 * seq is unique and grows with every scheduled event, so the order is total
 * and events of one instant run in the order they were scheduled: that is
 * what makes a run replay bit for bit. Events are stored by value; a run of
 * a thousand nodes keeps some ten thousand pending. */
#include "sim/sim_internal.h"

#include <stdlib.h>

static bool mp_ev_before(const mp_sim_event *a, const mp_sim_event *b) {
    return a->time < b->time || (a->time == b->time && a->seq < b->seq);
}

mpreg_err mp_sim_heap_push(mp_sim_heap *h, const mp_sim_event *ev) {
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        mp_sim_event *items = realloc(h->items, cap * sizeof *items);
        if (!items) {
            return MPREG_E_NOMEM;
        }
        h->items = items;
        h->cap = cap;
    }
    size_t i = h->len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!mp_ev_before(ev, &h->items[parent])) {
            break;
        }
        h->items[i] = h->items[parent];
        i = parent;
    }
    h->items[i] = *ev;
    return MPREG_OK;
}

bool mp_sim_heap_pop(mp_sim_heap *h, mp_sim_event *out) {
    if (h->len == 0) {
        return false;
    }
    *out = h->items[0];
    mp_sim_event last = h->items[--h->len];
    size_t n = h->len;
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) {
            break;
        }
        if (child + 1 < n && mp_ev_before(&h->items[child + 1], &h->items[child])) {
            child++;
        }
        if (!mp_ev_before(&h->items[child], &last)) {
            break;
        }
        h->items[i] = h->items[child];
        i = child;
    }
    if (n > 0) {
        h->items[i] = last;
    }
    return true;
}

void mp_sim_heap_free(mp_sim_heap *h) {
    free(h->items);
    h->items = NULL;
    h->len = h->cap = 0;
}
