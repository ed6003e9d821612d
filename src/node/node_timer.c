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

static bool mp_timer_before(const mp_timer *a, const mp_timer *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void mp_heap_set(mp_timer_heap *h, size_t i, mp_timer *t) {
    h->items[i] = t;
    t->slot = i;
}

static void mp_heap_up(mp_timer_heap *h, size_t i) {
    mp_timer *t = h->items[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!mp_timer_before(t, h->items[parent])) {
            break;
        }
        mp_heap_set(h, i, h->items[parent]);
        i = parent;
    }
    mp_heap_set(h, i, t);
}

static void mp_heap_down(mp_timer_heap *h, size_t i) {
    mp_timer *t = h->items[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len) {
            break;
        }
        if (child + 1 < h->len && mp_timer_before(h->items[child + 1], h->items[child])) {
            child++;
        }
        if (!mp_timer_before(h->items[child], t)) {
            break;
        }
        mp_heap_set(h, i, h->items[child]);
        i = child;
    }
    mp_heap_set(h, i, t);
}

void mp_timer_cancel(mp_timer_heap *h, mp_timer *t) {
    if (!mp_timer_armed(t)) {
        return;
    }
    size_t i = t->slot;
    t->slot = SIZE_MAX;
    h->len--;
    if (i == h->len) {
        return;
    }
    /* The last timer takes the hole and moves whichever way it must. */
    mp_timer *moved = h->items[h->len];
    mp_heap_set(h, i, moved);
    mp_heap_up(h, i);
    mp_heap_down(h, moved->slot);
}

mpreg_err mp_timer_arm(mp_timer_heap *h, mp_timer *t, uint64_t due) {
    if (!mp_timer_armed(t) && h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        mp_timer **items = realloc(h->items, cap * sizeof *items);
        if (!items) {
            return MPREG_E_NOMEM;
        }
        h->items = items;
        h->cap = cap;
    }
    mp_timer_cancel(h, t);
    t->due = due;
    t->seq = h->seq++;
    mp_heap_set(h, h->len++, t);
    mp_heap_up(h, t->slot);
    return MPREG_OK;
}

void mp_timers_run(mp_timer_heap *h, mp_node *n, uint64_t now) {
    while (h->len > 0 && h->items[0]->due <= now) {
        mp_timer *t = h->items[0];
        mp_timer_cancel(h, t);
        t->fire(n, t);
    }
}

uint64_t mp_timers_next(const mp_timer_heap *h) {
    return h->len ? h->items[0]->due : UINT64_MAX;
}

void mp_timer_heap_free(mp_timer_heap *h) {
    for (size_t i = 0; i < h->len; i++) {
        h->items[i]->slot = SIZE_MAX;
    }
    free(h->items);
    h->items = NULL;
    h->len = h->cap = 0;
}
