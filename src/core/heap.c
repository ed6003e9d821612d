/* heap.c - a binary min-heap of fixed-size elements (heap.h). The sifts
 * carry the moving element in scratch and shift the others over it, one
 * copy per level, as the three heaps this one replaced did. */
#include "core/heap.h"

#include "core/check.h"

#include <stdlib.h>
#include <string.h>

void mp_heap_init(mp_heap *h, size_t size, bool (*before)(const void *a, const void *b),
                  void (*placed)(void *elem, size_t slot)) {
    MP_ASSERT(size >= 1 && size <= 256 && before != NULL);
    *h = (mp_heap){.size = size, .before = before, .placed = placed};
}

void mp_heap_free(mp_heap *h) {
    free(h->items);
    free(h->tmp);
    h->items = h->tmp = NULL;
    h->len = h->cap = 0;
}

/* Puts the element at src into slot i and tells its owner. */
static void mp_heap_put(mp_heap *h, size_t i, const void *src) {
    void *dst = mp_heap_at(h, i);
    memcpy(dst, src, h->size);
    if (h->placed) {
        h->placed(dst, i);
    }
}

/* The element in h->tmp goes up from hole i to where it belongs. */
static void mp_heap_up_from(mp_heap *h, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!h->before(h->tmp, mp_heap_at(h, parent))) {
            break;
        }
        mp_heap_put(h, i, mp_heap_at(h, parent));
        i = parent;
    }
    mp_heap_put(h, i, h->tmp);
}

/* The element in h->tmp goes down from hole i to where it belongs. */
static void mp_heap_down_from(mp_heap *h, size_t i) {
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len) {
            break;
        }
        if (child + 1 < h->len && h->before(mp_heap_at(h, child + 1), mp_heap_at(h, child))) {
            child++;
        }
        if (!h->before(mp_heap_at(h, child), h->tmp)) {
            break;
        }
        mp_heap_put(h, i, mp_heap_at(h, child));
        i = child;
    }
    mp_heap_put(h, i, h->tmp);
}

mpreg_err mp_heap_reserve(mp_heap *h, size_t extra) {
    if (!h->tmp && !(h->tmp = malloc(h->size))) {
        return MPREG_E_NOMEM;
    }
    if (h->cap - h->len >= extra) {
        return MPREG_OK;
    }
    size_t cap = h->cap ? h->cap : 16;
    while (cap - h->len < extra) {
        cap *= 2;
    }
    unsigned char *items = realloc(h->items, cap * h->size);
    if (!items) {
        return MPREG_E_NOMEM;
    }
    h->items = items;
    h->cap = cap;
    return MPREG_OK;
}

mpreg_err mp_heap_push(mp_heap *h, const void *elem) {
    mpreg_err err = mp_heap_reserve(h, 1);
    if (err) {
        return err;
    }
    memcpy(h->tmp, elem, h->size);
    mp_heap_up_from(h, h->len++);
    return MPREG_OK;
}

bool mp_heap_pop(mp_heap *h, void *out) {
    if (h->len == 0) {
        return false;
    }
    if (out) {
        memcpy(out, h->items, h->size);
    }
    mp_heap_remove_at(h, 0);
    return true;
}

void mp_heap_remove_at(mp_heap *h, size_t slot) {
    MP_ASSERT(slot < h->len);
    h->len--;
    if (slot == h->len) {
        return;
    }
    /* The last element takes the hole and moves whichever way it must. */
    memcpy(h->tmp, mp_heap_at(h, h->len), h->size);
    if (slot > 0 && h->before(h->tmp, mp_heap_at(h, (slot - 1) / 2))) {
        mp_heap_up_from(h, slot);
    } else {
        mp_heap_down_from(h, slot);
    }
}

void mp_heap_update_at(mp_heap *h, size_t slot) {
    MP_ASSERT(slot < h->len);
    memcpy(h->tmp, mp_heap_at(h, slot), h->size);
    if (slot > 0 && h->before(h->tmp, mp_heap_at(h, (slot - 1) / 2))) {
        mp_heap_up_from(h, slot);
    } else {
        mp_heap_down_from(h, slot);
    }
}
