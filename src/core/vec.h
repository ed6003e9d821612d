/* vec.h - the one growable array of the project.
 *
 * An array is three fields of its owner's (items, a count, a capacity);
 * mp_vec_grow makes room for `need` items, doubling from `first`, so that
 * pushing is amortised O(1). It never shrinks (owners free the whole array
 * when they are done with it). On failure nothing changes: the old array
 * is still valid and still the owner's. */
#ifndef MP_VEC_H
#define MP_VEC_H

#include "mpreg/error.h"

#include <stddef.h>

/* Room for `need` items of `size` bytes in *items (capacity *cap, in
 * items). MPREG_E_NOMEM when memory runs out or the size would overflow. */
mpreg_err mp_vec_grow(void **items, size_t *cap, size_t need, size_t size, size_t first);

/* mp_vec_grow for a typed array `arr` (a pointer lvalue) with a size_t
 * capacity `cap` (an lvalue): room for `need` items. */
#define MP_VEC_GROW(arr, cap, need, first)                                                         \
    mp_vec_grow((void **)&(arr), &(cap), (need), sizeof *(arr), (first))

#endif
