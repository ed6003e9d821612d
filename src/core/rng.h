/* rng.h - the random source interface.
 *
 * Core modules never call rand() or read /dev/urandom: whoever drives them
 * passes an mp_rng. The simulator passes a seeded mp_xoshiro so a run replays
 * bit for bit; the runtime seeds one from the OS's secure random source. */
#ifndef MP_RNG_H
#define MP_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct mp_rng mp_rng;
struct mp_rng {
    uint64_t (*next_u64)(mp_rng *self);
};

static inline uint64_t mp_rng_u64(mp_rng *r) {
    return r->next_u64(r);
}
/* Uniform in [0, n); n = 0 gives 0. Unbiased (rejection on the rare tail). */
uint64_t mp_rng_below(mp_rng *r, uint64_t n);
/* Uniform in [0, 1). */
double mp_rng_double(mp_rng *r);
void mp_rng_fill(mp_rng *r, void *out, size_t len);

/* xoshiro256**: small, fast, and good enough for ids and protocol jitter.
 * Not for keys or tokens: those come from libsodium in the runtime. */
typedef struct mp_xoshiro {
    mp_rng rng; /* first member: (mp_rng *)&x works */
    uint64_t s[4];
} mp_xoshiro;

void mp_xoshiro_seed(mp_xoshiro *x, uint64_t seed);

#endif
