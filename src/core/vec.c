/* vec.c - growing arrays (vec.h). */
#include "core/vec.h"

#include <stdint.h>
#include <stdlib.h>

mpreg_err mp_vec_grow(void **items, size_t *cap, size_t need, size_t size, size_t first) {
    if (need <= *cap) {
        return MPREG_OK;
    }
    size_t ncap = *cap ? *cap : (first ? first : 1);
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2) {
            return MPREG_E_NOMEM;
        }
        ncap *= 2;
    }
    if (ncap > SIZE_MAX / size) {
        return MPREG_E_NOMEM;
    }
    void *p = realloc(*items, ncap * size);
    if (!p) {
        return MPREG_E_NOMEM;
    }
    *items = p;
    *cap = ncap;
    return MPREG_OK;
}
