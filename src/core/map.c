/* map.c - open-addressing hash map with backward-shift deletion. */
#include "core/map.h"

#include <stdlib.h>
#include <string.h>

void mp_map_init(mp_map *m) {
    m->slots = NULL;
    m->cap = 0;
    m->count = 0;
}

void mp_map_free(mp_map *m, void (*free_val)(void *val)) {
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].hash) {
            free(m->slots[i].key);
            if (free_val) {
                free_val(m->slots[i].val);
            }
        }
    }
    free(m->slots);
    mp_map_init(m);
}

/* FNV-1a over the bytes, then a murmur3 finaliser so that keys differing only
 * in their last byte still spread over the table's low bits. */
uint64_t mp_hash_bytes(const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h ? h : 1;
}

static size_t mp_map_find(const mp_map *m, uint64_t h, const void *key, size_t klen, bool *found) {
    size_t mask = m->cap - 1;
    size_t i = h & mask;
    for (;;) {
        const mp_map_slot *s = &m->slots[i];
        if (!s->hash) {
            *found = false;
            return i;
        }
        /* klen == 0 may come with key == NULL (an empty mp_str): memcmp must
         * not see a NULL pointer even for zero bytes. */
        if (s->hash == h && s->klen == klen && (klen == 0 || memcmp(s->key, key, klen) == 0)) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
}

void *mp_map_get(const mp_map *m, const void *key, size_t klen) {
    if (!m->count) {
        return NULL;
    }
    bool found;
    size_t i = mp_map_find(m, mp_hash_bytes(key, klen), key, klen, &found);
    return found ? m->slots[i].val : NULL;
}

bool mp_map_contains(const mp_map *m, const void *key, size_t klen) {
    if (!m->count) {
        return false;
    }
    bool found;
    mp_map_find(m, mp_hash_bytes(key, klen), key, klen, &found);
    return found;
}

static mpreg_err mp_map_grow(mp_map *m) {
    size_t cap = m->cap ? m->cap * 2 : 16;
    mp_map_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) {
        return MPREG_E_NOMEM;
    }
    mp_map old = *m;
    m->slots = slots;
    m->cap = cap;
    for (size_t i = 0; i < old.cap; i++) {
        if (old.slots[i].hash) {
            bool found;
            size_t j =
                mp_map_find(m, old.slots[i].hash, old.slots[i].key, old.slots[i].klen, &found);
            m->slots[j] = old.slots[i];
        }
    }
    free(old.slots);
    return MPREG_OK;
}

mpreg_err mp_map_put(mp_map *m, const void *key, size_t klen, void *val, void **old) {
    /* Keep the load factor at or under 3/4 so probe runs stay short. */
    if ((m->count + 1) * 4 > m->cap * 3) {
        mpreg_err err = mp_map_grow(m);
        if (err) {
            return err;
        }
    }
    uint64_t h = mp_hash_bytes(key, klen);
    bool found;
    size_t i = mp_map_find(m, h, key, klen, &found);
    if (found) {
        if (old) {
            *old = m->slots[i].val;
        }
        m->slots[i].val = val;
        return MPREG_OK;
    }
    void *kcopy = malloc(klen ? klen : 1);
    if (!kcopy) {
        return MPREG_E_NOMEM;
    }
    if (klen) {
        memcpy(kcopy, key, klen);
    }
    m->slots[i] = (mp_map_slot){h, kcopy, klen, val};
    m->count++;
    if (old) {
        *old = NULL;
    }
    return MPREG_OK;
}

void *mp_map_remove(mp_map *m, const void *key, size_t klen) {
    if (!m->count) {
        return NULL;
    }
    bool found;
    size_t i = mp_map_find(m, mp_hash_bytes(key, klen), key, klen, &found);
    if (!found) {
        return NULL;
    }
    void *val = m->slots[i].val;
    free(m->slots[i].key);
    m->count--;
    /* Backward-shift: pull later members of the probe run into the hole so
     * that lookups never stop early at a gap. */
    size_t mask = m->cap - 1;
    size_t hole = i;
    size_t j = (i + 1) & mask;
    while (m->slots[j].hash) {
        size_t home = m->slots[j].hash & mask;
        /* Move j into the hole if its home is not in the (hole, j] range. */
        bool between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
        j = (j + 1) & mask;
    }
    m->slots[hole] = (mp_map_slot){0};
    return val;
}

bool mp_map_next(const mp_map *m, size_t *iter, const void **key, size_t *klen, void **val) {
    for (size_t i = *iter; i < m->cap; i++) {
        if (m->slots[i].hash) {
            if (key) {
                *key = m->slots[i].key;
            }
            if (klen) {
                *klen = m->slots[i].klen;
            }
            if (val) {
                *val = m->slots[i].val;
            }
            *iter = i + 1;
            return true;
        }
    }
    *iter = m->cap;
    return false;
}
