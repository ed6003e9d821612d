/* rng.c - xoshiro256** and helpers over the mp_rng interface. */
#include "core/rng.h"

#include <string.h>

static uint64_t mp_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t mp_xoshiro_next(mp_rng *self) {
    mp_xoshiro *x = (mp_xoshiro *)self;
    uint64_t *s = x->s;
    uint64_t result = mp_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = mp_rotl(s[3], 45);
    return result;
}

/* splitmix64 spreads one 64-bit seed over the 256-bit state, as the
 * xoshiro authors recommend; it never yields the all-zero state. */
static uint64_t mp_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void mp_xoshiro_seed(mp_xoshiro *x, uint64_t seed) {
    x->rng.next_u64 = mp_xoshiro_next;
    for (int i = 0; i < 4; i++) {
        x->s[i] = mp_splitmix64(&seed);
    }
}

uint64_t mp_rng_below(mp_rng *r, uint64_t n) {
    if (n == 0) {
        return 0;
    }
    /* Reject the top partial block of 2^64 so every residue is equally likely. */
    uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
    uint64_t v;
    do {
        v = mp_rng_u64(r);
    } while (v >= limit);
    return v % n;
}

double mp_rng_double(mp_rng *r) {
    return (double)(mp_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

void mp_rng_fill(mp_rng *r, void *out, size_t len) {
    uint8_t *p = out;
    while (len >= 8) {
        uint64_t v = mp_rng_u64(r);
        memcpy(p, &v, 8);
        p += 8;
        len -= 8;
    }
    if (len) {
        uint64_t v = mp_rng_u64(r);
        memcpy(p, &v, len);
    }
}
