/* map.h - a hash map from byte-string keys to pointers.
 *
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones). The map copies keys and owns the copies; values are the
 * caller's. Iteration order depends only on the keys inserted and their
 * order, never on addresses or time, so the simulator stays deterministic.
 * Integer keys: pass the integer's bytes (mp_map_get(&m, &id, sizeof id)). */
#ifndef MP_MAP_H
#define MP_MAP_H

#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mp_map_slot {
    uint64_t hash; /* 0 marks an empty slot (real hashes are forced non-zero) */
    void *key;
    size_t klen;
    void *val;
} mp_map_slot;

typedef struct mp_map {
    mp_map_slot *slots;
    size_t cap; /* a power of two, or 0 before the first insert */
    size_t count;
} mp_map;

#define MP_MAP_INIT                                                                                \
    { NULL, 0, 0 }

void mp_map_init(mp_map *m);
/* Frees the map's storage; calls free_val(val) on each value when non-NULL. */
void mp_map_free(mp_map *m, void (*free_val)(void *val));

uint64_t mp_hash_bytes(const void *data, size_t len);

void *mp_map_get(const mp_map *m, const void *key, size_t klen);
bool mp_map_contains(const mp_map *m, const void *key, size_t klen);
/* Inserts or replaces. When the key existed, its old value goes to *old (if
 * old is non-NULL) and the stored key is kept. */
mpreg_err mp_map_put(mp_map *m, const void *key, size_t klen, void *val, void **old);
/* Removes the key; returns its value, or NULL when absent. */
void *mp_map_remove(mp_map *m, const void *key, size_t klen);

static inline size_t mp_map_count(const mp_map *m) {
    return m->count;
}

/* Iteration: for (size_t it = 0; mp_map_next(&m, &it, &k, &kl, &v);) {...}
 * The map must not be changed during iteration. */
bool mp_map_next(const mp_map *m, size_t *iter, const void **key, size_t *klen, void **val);

#endif
