/* test_heap.c - the one binary heap (core/heap.h) against a simple model:
 * random pushes, pops, removals from the middle and key changes, checking
 * every pop against the least of a plain array, and every slot the heap
 * reports against where the element really is. */
#include "core/heap.h"
#include "core/rng.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct item {
    uint64_t key;
    uint64_t seq; /* ties broken by arrival, as the node's timers do */
    size_t slot;  /* SIZE_MAX when not in the heap */
    bool in;
} item;

static bool item_before(const void *pa, const void *pb) {
    const item *a = *(item *const *)pa, *b = *(item *const *)pb;
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

static void item_placed(void *elem, size_t slot) {
    (*(item **)elem)->slot = slot;
}

/* The least item the model holds. */
static item *model_min(item *items, size_t n) {
    item *best = NULL;
    for (size_t i = 0; i < n; i++) {
        if (items[i].in && (!best || items[i].key < best->key ||
                            (items[i].key == best->key && items[i].seq < best->seq))) {
            best = &items[i];
        }
    }
    return best;
}

Test(heap, property_against_a_model) {
    enum { N = 400, OPS = 20000 };
    for (uint64_t seed = 1; seed <= 5; seed++) {
        mp_xoshiro x;
        mp_xoshiro_seed(&x, 0x4ea9000 + seed);
        item *items = calloc(N, sizeof *items);
        mp_heap h;
        mp_heap_init(&h, sizeof(item *), item_before, item_placed);
        uint64_t seq = 0;
        for (int op = 0; op < OPS; op++) {
            item *it = &items[mp_rng_below(&x.rng, N)];
            uint64_t what = mp_rng_below(&x.rng, 4);
            if (!it->in && what < 2) {
                it->key = mp_rng_below(&x.rng, 50); /* many ties */
                it->seq = seq++;
                it->in = true;
                cr_assert_eq(mp_heap_push(&h, &it), MPREG_OK);
            } else if (it->in && what == 2) {
                mp_heap_remove_at(&h, it->slot);
                it->in = false;
                it->slot = SIZE_MAX;
            } else if (it->in && what == 3) {
                it->key = mp_rng_below(&x.rng, 50);
                it->seq = seq++;
                mp_heap_update_at(&h, it->slot);
            } else {
                item *want = model_min(items, N);
                item *got = NULL;
                bool popped = mp_heap_pop(&h, &got);
                cr_assert_eq(popped, want != NULL);
                if (want) {
                    cr_assert_eq(got, want, "seed %llu op %d: popped the wrong item",
                                 (unsigned long long)seed, op);
                    got->in = false;
                    got->slot = SIZE_MAX;
                }
            }
            if (op % 97 == 0) {
                for (size_t i = 0; i < mp_heap_len(&h); i++) {
                    item *at = *(item **)mp_heap_at(&h, i);
                    cr_assert_eq(at->slot, i, "an element does not know its slot");
                    if (i > 0) {
                        cr_assert_not(item_before(mp_heap_at(&h, i), mp_heap_at(&h, (i - 1) / 2)),
                                      "heap order broken at %zu", i);
                    }
                }
            }
        }
        mp_heap_free(&h);
        free(items);
    }
}

typedef struct ev {
    uint64_t time, seq;
} ev;

static bool ev_before(const void *pa, const void *pb) {
    const ev *a = pa, *b = pb;
    return a->time < b->time || (a->time == b->time && a->seq < b->seq);
}

/* By value, as the simulator's event queue uses it: pops come out sorted
 * by (time, seq), ties in push order. */
Test(heap, by_value_elements_come_out_in_order) {
    mp_heap h;
    mp_heap_init(&h, sizeof(ev), ev_before, NULL);
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 77);
    for (uint64_t i = 0; i < 5000; i++) {
        ev e = {mp_rng_below(&x.rng, 100), i};
        cr_assert_eq(mp_heap_push(&h, &e), MPREG_OK);
    }
    ev last = {0, 0}, e;
    size_t n = 0;
    while (mp_heap_pop(&h, &e)) {
        cr_assert(n == 0 || ev_before(&last, &e), "out of order at %zu", n);
        last = e;
        n++;
    }
    cr_assert_eq(n, 5000);
    cr_assert_null(mp_heap_peek(&h));
    cr_assert_not(mp_heap_pop(&h, NULL));
    mp_heap_free(&h);
}
