/* test_map.c - the open-addressing hash map, against a reference model. */
#include "core/map.h"
#include "core/rng.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *val_of(uintptr_t v) {
    return (void *)v;
}

/* ---- basics ---------------------------------------------------------------- */

Test(map, empty_map) {
    mp_map m = MP_MAP_INIT;
    cr_assert_eq(mp_map_count(&m), 0);
    cr_assert_null(mp_map_get(&m, "a", 1));
    cr_assert(!mp_map_contains(&m, "a", 1));
    cr_assert_null(mp_map_remove(&m, "a", 1));
    size_t it = 0;
    cr_assert(!mp_map_next(&m, &it, NULL, NULL, NULL));
    mp_map_free(&m, NULL);
    mp_map_init(&m);
    cr_assert_null(m.slots);
    cr_assert_eq(m.cap, 0);
}

Test(map, put_get_replace_remove) {
    mp_map m;
    mp_map_init(&m);
    void *old = val_of(99);
    cr_assert_eq(mp_map_put(&m, "alpha", 5, val_of(1), &old), MPREG_OK);
    cr_assert_null(old, "a new key reports no old value");
    cr_assert_eq(mp_map_put(&m, "beta", 4, val_of(2), NULL), MPREG_OK);
    cr_assert_eq(mp_map_count(&m), 2);
    cr_assert_eq(mp_map_get(&m, "alpha", 5), val_of(1));
    cr_assert_eq(mp_map_get(&m, "beta", 4), val_of(2));
    cr_assert(mp_map_contains(&m, "beta", 4));
    cr_assert(!mp_map_contains(&m, "gamma", 5));

    cr_assert_eq(mp_map_put(&m, "alpha", 5, val_of(10), &old), MPREG_OK);
    cr_assert_eq(old, val_of(1));
    cr_assert_eq(mp_map_count(&m), 2, "replace does not add");
    cr_assert_eq(mp_map_get(&m, "alpha", 5), val_of(10));

    cr_assert_eq(mp_map_remove(&m, "alpha", 5), val_of(10));
    cr_assert_null(mp_map_remove(&m, "alpha", 5));
    cr_assert_eq(mp_map_count(&m), 1);
    cr_assert_null(mp_map_get(&m, "alpha", 5));
    cr_assert_eq(mp_map_get(&m, "beta", 4), val_of(2));
    mp_map_free(&m, NULL);
}

Test(map, keys_are_copied_and_compared_by_bytes) {
    mp_map m = MP_MAP_INIT;
    char key[8] = "abc";
    cr_assert_eq(mp_map_put(&m, key, 3, val_of(1), NULL), MPREG_OK);
    memcpy(key, "xyz", 3);
    cr_assert_eq(mp_map_get(&m, "abc", 3), val_of(1), "the map owns a copy of the key");
    cr_assert_null(mp_map_get(&m, "xyz", 3));
    /* Prefixes, embedded NULs and the empty key are all distinct keys. */
    cr_assert_eq(mp_map_put(&m, "ab", 2, val_of(2), NULL), MPREG_OK);
    cr_assert_eq(mp_map_put(&m, "abc\0", 4, val_of(3), NULL), MPREG_OK);
    cr_assert_eq(mp_map_put(&m, "", 0, val_of(4), NULL), MPREG_OK);
    cr_assert_eq(mp_map_count(&m), 4);
    cr_assert_eq(mp_map_get(&m, "abc", 3), val_of(1));
    cr_assert_eq(mp_map_get(&m, "ab", 2), val_of(2));
    cr_assert_eq(mp_map_get(&m, "abc\0", 4), val_of(3));
    cr_assert_eq(mp_map_get(&m, "", 0), val_of(4));
    cr_assert_eq(mp_map_remove(&m, "", 0), val_of(4));
    cr_assert_null(mp_map_get(&m, "", 0));
    mp_map_free(&m, NULL);
}

/* An empty mp_str is {NULL, 0}: the empty key may come with a NULL pointer
 * and must be the same key as "" (and not hand NULL to memcmp/memcpy, which
 * UBSan rejects even for zero bytes). */
Test(map, empty_key_with_null_pointer) {
    mp_map m = MP_MAP_INIT;
    cr_assert_eq(mp_map_put(&m, NULL, 0, val_of(1), NULL), MPREG_OK);
    void *old = NULL;
    cr_assert_eq(mp_map_put(&m, NULL, 0, val_of(2), &old), MPREG_OK);
    cr_assert_eq(old, val_of(1));
    cr_assert_eq(mp_map_count(&m), 1);
    cr_assert_eq(mp_map_get(&m, NULL, 0), val_of(2));
    cr_assert_eq(mp_map_get(&m, "", 0), val_of(2));
    cr_assert(mp_map_contains(&m, NULL, 0));
    cr_assert_eq(mp_map_remove(&m, "", 0), val_of(2));
    cr_assert_eq(mp_map_count(&m), 0);
    mp_map_free(&m, NULL);
}

Test(map, integer_keys_and_growth) {
    mp_map m = MP_MAP_INIT;
    enum { N = 20000 };
    for (uint64_t k = 0; k < N; k++) {
        cr_assert_eq(mp_map_put(&m, &k, sizeof k, val_of(k + 1), NULL), MPREG_OK);
        /* Load factor stays at or under 3/4 and cap a power of two. */
        cr_assert_leq(m.count * 4, m.cap * 3);
        cr_assert_eq(m.cap & (m.cap - 1), 0);
    }
    cr_assert_eq(mp_map_count(&m), N);
    for (uint64_t k = 0; k < N; k++) {
        cr_assert_eq(mp_map_get(&m, &k, sizeof k), val_of(k + 1));
    }
    uint64_t absent = N;
    cr_assert_null(mp_map_get(&m, &absent, sizeof absent));
    mp_map_free(&m, NULL);
}

static size_t freed_count;
static void count_free(void *v) {
    freed_count++;
    free(v);
}

Test(map, free_calls_free_val_on_each_value) {
    mp_map m = MP_MAP_INIT;
    freed_count = 0;
    for (int k = 0; k < 100; k++) {
        int *v = malloc(sizeof *v);
        cr_assert_not_null(v);
        *v = k;
        cr_assert_eq(mp_map_put(&m, &k, sizeof k, v, NULL), MPREG_OK);
    }
    for (int k = 0; k < 100; k += 3) {
        free(mp_map_remove(&m, &k, sizeof k));
    }
    size_t left = mp_map_count(&m);
    mp_map_free(&m, count_free);
    cr_assert_eq(freed_count, left);
    cr_assert_eq(mp_map_count(&m), 0);
}

Test(map, iteration_visits_each_key_once_with_its_value) {
    mp_map m = MP_MAP_INIT;
    enum { N = 500 };
    for (uint32_t k = 0; k < N; k++) {
        cr_assert_eq(mp_map_put(&m, &k, sizeof k, val_of(k * 3 + 1), NULL), MPREG_OK);
    }
    unsigned seen[N] = {0};
    size_t visits = 0;
    const void *key;
    size_t klen;
    void *val;
    for (size_t it = 0; mp_map_next(&m, &it, &key, &klen, &val);) {
        cr_assert_eq(klen, sizeof(uint32_t));
        uint32_t k;
        memcpy(&k, key, sizeof k);
        cr_assert_lt(k, N);
        cr_assert_eq(val, val_of(k * 3 + 1));
        seen[k]++;
        visits++;
    }
    cr_assert_eq(visits, N);
    for (uint32_t k = 0; k < N; k++) {
        cr_assert_eq(seen[k], 1);
    }
    mp_map_free(&m, NULL);
}

Test(map, iteration_order_is_deterministic) {
    mp_map a = MP_MAP_INIT, b = MP_MAP_INIT;
    for (uint32_t k = 0; k < 300; k++) {
        uint32_t key = k * 2654435761u;
        cr_assert_eq(mp_map_put(&a, &key, sizeof key, val_of(k + 1), NULL), MPREG_OK);
        cr_assert_eq(mp_map_put(&b, &key, sizeof key, val_of(k + 1), NULL), MPREG_OK);
    }
    size_t ia = 0, ib = 0;
    void *va, *vb;
    bool more;
    do {
        more = mp_map_next(&a, &ia, NULL, NULL, &va);
        cr_assert_eq(mp_map_next(&b, &ib, NULL, NULL, &vb), more);
        if (more) {
            cr_assert_eq(va, vb);
        }
    } while (more);
    mp_map_free(&a, NULL);
    mp_map_free(&b, NULL);
}

/* ---- collisions and wrap-around at the table's end --------------------------- */

/* Keys (uint32) whose home slot in a 16-slot table is `home`. */
static size_t keys_with_home(size_t home, uint32_t *out, size_t want) {
    size_t n = 0;
    for (uint32_t k = 0; n < want; k++) {
        if ((mp_hash_bytes(&k, sizeof k) & 15) == home) {
            out[n++] = k;
        }
    }
    return n;
}

static void check_model(const mp_map *m, const uint32_t *keys, const bool *present, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        void *v = mp_map_get(m, &keys[i], sizeof keys[i]);
        if (present[i]) {
            cr_assert_eq(v, val_of(keys[i] + 1), "key %u lost", keys[i]);
            count++;
        } else {
            cr_assert_null(v, "key %u resurrected", keys[i]);
        }
    }
    cr_assert_eq(mp_map_count(m), count);
}

/* Probe runs that start at slots 14 and 15 wrap to 0, 1, 2...; keys whose
 * home is 0 or 1 then sit after wrapped ones. Deleting in every kind of order
 * exercises the backward shift's wrap-around branch. */
Test(map, collisions_wrapping_the_table_end) {
    uint32_t keys[12];
    size_t n = 0;
    n += keys_with_home(15, keys + n, 4);
    n += keys_with_home(14, keys + n, 2);
    n += keys_with_home(0, keys + n, 3);
    n += keys_with_home(1, keys + n, 2);
    n += keys_with_home(7, keys + n, 1);
    cr_assert_eq(n, 12);

    mp_xoshiro x;
    mp_xoshiro_seed(&x, 1234);
    for (int round = 0; round < 2000; round++) {
        mp_map m = MP_MAP_INIT;
        bool present[12] = {false};
        size_t order[12];
        for (size_t i = 0; i < n; i++) {
            order[i] = i;
        }
        /* Insert all 12 (the most a 16-slot table holds) in a random order. */
        for (size_t i = n - 1; i > 0; i--) {
            size_t j = (size_t)mp_rng_below(&x.rng, i + 1);
            size_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (size_t i = 0; i < n; i++) {
            uint32_t k = keys[order[i]];
            cr_assert_eq(mp_map_put(&m, &k, sizeof k, val_of(k + 1), NULL), MPREG_OK);
            present[order[i]] = true;
        }
        cr_assert_eq(m.cap, 16, "all probing happens in one 16-slot table");
        /* Six keys call slots 14 and 15 home: at least four wrapped past the end. */
        size_t wrapped = 0;
        for (size_t s = 0; s < 14; s++) {
            size_t home = m.slots[s].hash & 15;
            wrapped += m.slots[s].hash && home >= 14;
        }
        cr_assert_geq(wrapped, 4);
        check_model(&m, keys, present, n);
        /* Remove and re-add at random, checking everything after each step. */
        for (int step = 0; step < 40; step++) {
            size_t i = (size_t)mp_rng_below(&x.rng, n);
            uint32_t k = keys[i];
            if (present[i]) {
                cr_assert_eq(mp_map_remove(&m, &k, sizeof k), val_of(k + 1));
                present[i] = false;
            } else {
                cr_assert_eq(mp_map_put(&m, &k, sizeof k, val_of(k + 1), NULL), MPREG_OK);
                present[i] = true;
            }
            cr_assert_eq(m.cap, 16);
            check_model(&m, keys, present, n);
        }
        mp_map_free(&m, NULL);
    }
}

/* ---- property: random operations against a direct-indexed model ------------- */

enum { KEYSPACE = 700 };

/* Keys of varied lengths so that klen matters: key i is its decimal digits
 * repeated (1 + i % 5) times. */
static size_t make_key(uint32_t i, char *out) {
    char digits[16];
    int dl = snprintf(digits, sizeof digits, "%u", i);
    size_t len = 0;
    for (uint32_t r = 0; r <= i % 5; r++) {
        memcpy(out + len, digits, (size_t)dl);
        len += (size_t)dl;
    }
    return len;
}

static void check_iteration(const mp_map *m, const uintptr_t *model) {
    static unsigned seen[KEYSPACE];
    memset(seen, 0, sizeof seen);
    size_t visits = 0;
    const void *key;
    size_t klen;
    void *val;
    for (size_t it = 0; mp_map_next(m, &it, &key, &klen, &val);) {
        /* The value names the key it was stored under (v - 1 = i mod KEYSPACE). */
        uintptr_t v = (uintptr_t)val;
        cr_assert_geq(v, 1);
        uint32_t i = (uint32_t)((v - 1) % KEYSPACE);
        char expect[80];
        size_t elen = make_key(i, expect);
        cr_assert_eq(klen, elen);
        cr_assert(memcmp(key, expect, klen) == 0, "value stored under the wrong key");
        cr_assert_eq(model[i], v);
        seen[i]++;
        visits++;
    }
    cr_assert_eq(visits, mp_map_count(m));
    for (uint32_t i = 0; i < KEYSPACE; i++) {
        cr_assert_eq(seen[i], model[i] ? 1u : 0u, "key %u visited %u times", i, seen[i]);
    }
}

static void run_property(uint64_t seed, size_t ops) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, seed);
    mp_map m = MP_MAP_INIT;
    uintptr_t model[KEYSPACE] = {0}; /* 0 = absent, else the stored value */
    size_t count = 0;
    uintptr_t generation = 0;
    char key[80];
    for (size_t op = 0; op < ops; op++) {
        uint32_t i = (uint32_t)mp_rng_below(&x.rng, KEYSPACE);
        size_t klen = make_key(i, key);
        uint64_t what = mp_rng_below(&x.rng, 10);
        /* Bias towards puts early and removes in phases, so the table both
         * fills up (growing) and drains (long shifts over deleted runs). */
        bool draining = (op / 20000) % 2 == 1;
        if (what < (draining ? 3u : 5u)) {
            generation++;
            uintptr_t v = 1 + i + KEYSPACE * generation;
            void *old = val_of(12345);
            cr_assert_eq(mp_map_put(&m, key, klen, val_of(v), &old), MPREG_OK);
            cr_assert_eq(old, model[i] ? val_of(model[i]) : NULL);
            if (!model[i]) {
                count++;
            }
            model[i] = v;
        } else if (what < 8) {
            void *got = mp_map_remove(&m, key, klen);
            cr_assert_eq(got, model[i] ? val_of(model[i]) : NULL, "op %zu remove key %u", op, i);
            if (model[i]) {
                count--;
            }
            model[i] = 0;
        } else {
            cr_assert_eq(mp_map_get(&m, key, klen), model[i] ? val_of(model[i]) : NULL);
            cr_assert_eq(mp_map_contains(&m, key, klen), model[i] != 0);
        }
        cr_assert_eq(mp_map_count(&m), count);
        if (op % 4096 == 0) {
            check_iteration(&m, model);
            for (uint32_t j = 0; j < KEYSPACE; j++) {
                size_t jl = make_key(j, key);
                cr_assert_eq(mp_map_get(&m, key, jl), model[j] ? val_of(model[j]) : NULL);
            }
        }
    }
    check_iteration(&m, model);
    mp_map_free(&m, NULL);
}

Test(map, property_random_ops_against_model, .timeout = 120) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        run_property(0x6d61700000 + seed, 120000);
    }
}
