/* test_vec.c - the one growable array (core/vec.h). */
#include "core/vec.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>

Test(vec, grows_by_doubling_and_keeps_the_items) {
    uint32_t *items = NULL;
    size_t cap = 0;
    for (uint32_t i = 0; i < 10000; i++) {
        size_t before = cap;
        cr_assert_eq(MP_VEC_GROW(items, cap, (size_t)i + 1, 4), MPREG_OK);
        cr_assert_geq(cap, (size_t)i + 1);
        if (before && cap != before) {
            cr_assert_eq(cap, before * 2, "grew from %zu to %zu", before, cap);
        }
        items[i] = i * 7u;
    }
    for (uint32_t i = 0; i < 10000; i++) {
        cr_assert_eq(items[i], i * 7u);
    }
    size_t cap_before = cap;
    cr_assert_eq(MP_VEC_GROW(items, cap, 5, 4), MPREG_OK);
    cr_assert_eq(cap, cap_before, "it never shrinks");
    free(items);
}

Test(vec, first_capacity_and_a_big_jump) {
    char *items = NULL;
    size_t cap = 0;
    cr_assert_eq(MP_VEC_GROW(items, cap, 1, 64), MPREG_OK);
    cr_assert_eq(cap, 64);
    cr_assert_eq(MP_VEC_GROW(items, cap, 1000, 64), MPREG_OK);
    cr_assert_eq(cap, 1024);
    free(items);
}

Test(vec, overflow_is_refused_and_changes_nothing) {
    uint64_t *items = NULL;
    size_t cap = 0;
    cr_assert_eq(MP_VEC_GROW(items, cap, 4, 4), MPREG_OK);
    uint64_t *kept = items;
    cr_assert_eq(MP_VEC_GROW(items, cap, SIZE_MAX / 4, 4), MPREG_E_NOMEM);
    cr_assert_eq(items, kept);
    cr_assert_eq(cap, 4);
    free(items);
}
