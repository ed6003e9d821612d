/* test_rng.c - xoshiro256** and the mp_rng helpers. */
#include "core/rng.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

/* Known answers, computed independently from the xoshiro256** and splitmix64
 * reference algorithms: they pin the generator, so a seed replays the same
 * simulation on every build and platform. */
Test(rng, known_answers) {
    static const uint64_t seed0[] = {0x99ec5f36cb75f2b4ULL, 0xbf6e1f784956452aULL,
                                     0x1a5f849d4933e6e0ULL, 0x6aa594f1262d2d2cULL};
    static const uint64_t seed42[] = {0x15780b2e0c2ec716ULL, 0x6104d9866d113a7eULL,
                                      0xae17533239e499a1ULL, 0xecb8ad4703b360a1ULL};
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(mp_rng_u64(&x.rng), seed0[i], "seed 0 output %d", i);
    }
    mp_xoshiro_seed(&x, 42);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(mp_rng_u64(&x.rng), seed42[i], "seed 42 output %d", i);
    }
}

Test(rng, same_seed_same_sequence) {
    mp_xoshiro a, b;
    mp_xoshiro_seed(&a, 0x1234abcd);
    mp_xoshiro_seed(&b, 0x1234abcd);
    for (int i = 0; i < 10000; i++) {
        cr_assert_eq(mp_rng_u64(&a.rng), mp_rng_u64(&b.rng));
    }
    /* Reseeding restarts the sequence. */
    mp_xoshiro_seed(&a, 7);
    uint64_t first = mp_rng_u64(&a.rng);
    mp_rng_u64(&a.rng);
    mp_xoshiro_seed(&a, 7);
    cr_assert_eq(mp_rng_u64(&a.rng), first);
}

Test(rng, different_seeds_differ) {
    uint64_t firsts[64];
    for (uint64_t s = 0; s < 64; s++) {
        mp_xoshiro x;
        mp_xoshiro_seed(&x, s);
        cr_assert(x.s[0] | x.s[1] | x.s[2] | x.s[3], "never the all-zero state");
        firsts[s] = mp_rng_u64(&x.rng);
        for (uint64_t t = 0; t < s; t++) {
            cr_assert_neq(firsts[s], firsts[t], "seeds %llu and %llu", (unsigned long long)s,
                          (unsigned long long)t);
        }
    }
    /* Seeds one bit apart give unrelated streams. */
    mp_xoshiro a, b;
    mp_xoshiro_seed(&a, 1000);
    mp_xoshiro_seed(&b, 1001);
    int same = 0;
    for (int i = 0; i < 1000; i++) {
        same += mp_rng_u64(&a.rng) == mp_rng_u64(&b.rng);
    }
    cr_assert_eq(same, 0);
}

Test(rng, outputs_look_random) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 99);
    /* Each bit position is set about half the time. */
    unsigned ones[64] = {0};
    enum { N = 20000 };
    for (int i = 0; i < N; i++) {
        uint64_t v = mp_rng_u64(&x.rng);
        for (int bit = 0; bit < 64; bit++) {
            ones[bit] += (v >> bit) & 1;
        }
    }
    for (int bit = 0; bit < 64; bit++) {
        cr_assert(ones[bit] > N * 45 / 100 && ones[bit] < N * 55 / 100, "bit %d: %u ones", bit,
                  ones[bit]);
    }
}

Test(rng, below_bounds) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 5);
    cr_assert_eq(mp_rng_below(&x.rng, 0), 0);
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(mp_rng_below(&x.rng, 1), 0);
    }
    const uint64_t bounds[] = {
        2, 3, 7, 10, 1000, 1ULL << 32, (1ULL << 63) + 1, UINT64_MAX - 1, UINT64_MAX};
    for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
        uint64_t max_seen = 0;
        for (int i = 0; i < 5000; i++) {
            uint64_t v = mp_rng_below(&x.rng, bounds[b]);
            cr_assert_lt(v, bounds[b]);
            max_seen = v > max_seen ? v : max_seen;
        }
        if (bounds[b] <= 1000) {
            cr_assert_eq(max_seen, bounds[b] - 1, "the top value is reachable");
        }
    }
}

Test(rng, below_is_roughly_uniform) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 2024);
    enum { K = 10, N = 200000 };
    unsigned counts[K] = {0};
    for (int i = 0; i < N; i++) {
        counts[mp_rng_below(&x.rng, K)]++;
    }
    /* Chi-square with 9 degrees of freedom: 27.9 is the p = 0.001 point. */
    double chi2 = 0;
    for (int k = 0; k < K; k++) {
        double d = (double)counts[k] - (double)N / K;
        chi2 += d * d / ((double)N / K);
    }
    cr_assert_lt(chi2, 27.9, "chi2 = %f", chi2);

    /* A bound just over half the range is the worst case for modulo bias:
     * without rejection the low half would come up twice as often. */
    uint64_t n = (UINT64_MAX / 3) * 2;
    unsigned low = 0;
    for (int i = 0; i < 30000; i++) {
        low += mp_rng_below(&x.rng, n) < n / 2;
    }
    cr_assert(low > 14000 && low < 16000, "low half %u of 30000", low);
}

/* A scripted source: returns the values given, in order. */
typedef struct script_rng {
    mp_rng rng;
    const uint64_t *vals;
    size_t n, next;
} script_rng;

static uint64_t script_next(mp_rng *self) {
    script_rng *s = (script_rng *)self;
    cr_assert_lt(s->next, s->n, "script ran out");
    return s->vals[s->next++];
}

Test(rng, below_rejects_the_biased_tail) {
    /* 2^64 - 1 is divisible by 3, so the only biased draw is UINT64_MAX. */
    const uint64_t vals[] = {UINT64_MAX, 5};
    script_rng s = {{script_next}, vals, 2, 0};
    cr_assert_eq(mp_rng_below(&s.rng, 3), 2);
    cr_assert_eq(s.next, 2, "the tail value was drawn and rejected");

    /* n = 2^63 + 1: every draw from n*1 up is in the partial block. */
    const uint64_t n = (1ULL << 63) + 1;
    const uint64_t vals2[] = {n, UINT64_MAX, n - 1};
    script_rng s2 = {{script_next}, vals2, 3, 0};
    cr_assert_eq(mp_rng_below(&s2.rng, n), n - 1);
    cr_assert_eq(s2.next, 3);
}

Test(rng, double_in_unit_interval) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 77);
    double sum = 0;
    enum { N = 100000 };
    for (int i = 0; i < N; i++) {
        double d = mp_rng_double(&x.rng);
        cr_assert(d >= 0.0 && d < 1.0);
        sum += d;
    }
    cr_assert(sum / N > 0.49 && sum / N < 0.51, "mean %f", sum / N);
    const uint64_t extremes[] = {0, UINT64_MAX};
    script_rng s = {{script_next}, extremes, 2, 0};
    cr_assert_eq(mp_rng_double(&s.rng), 0.0);
    cr_assert_lt(mp_rng_double(&s.rng), 1.0, "the largest draw stays below 1");
}

Test(rng, fill_odd_lengths) {
    for (size_t len = 0; len <= 33; len++) {
        uint8_t a[48], b[48];
        memset(a, 0xa5, sizeof a);
        memset(b, 0xa5, sizeof b);
        mp_xoshiro x, y;
        mp_xoshiro_seed(&x, 31337);
        mp_xoshiro_seed(&y, 31337);
        mp_rng_fill(&x.rng, a, len);
        mp_rng_fill(&y.rng, b, len);
        cr_assert(memcmp(a, b, sizeof a) == 0, "same seed, same bytes (len %zu)", len);
        for (size_t i = len; i < sizeof a; i++) {
            cr_assert_eq(a[i], 0xa5, "len %zu: byte %zu past the end was written", len, i);
        }
        /* Whole words first, then one more word for the tail. */
        mp_xoshiro_seed(&y, 31337);
        size_t words = (len + 7) / 8;
        uint8_t expect[48];
        for (size_t w = 0; w < words; w++) {
            uint64_t v = mp_rng_u64(&y.rng);
            memcpy(expect + 8 * w, &v, 8);
        }
        cr_assert(len == 0 || memcmp(a, expect, len) == 0, "len %zu", len);
        cr_assert_eq(mp_rng_u64(&x.rng), mp_rng_u64(&y.rng), "len %zu consumed %zu words", len,
                     words);
    }
}

Test(rng, fill_covers_all_byte_values) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 8);
    uint8_t buf[4099];
    mp_rng_fill(&x.rng, buf, sizeof buf);
    unsigned seen[256] = {0};
    for (size_t i = 0; i < sizeof buf; i++) {
        seen[buf[i]]++;
    }
    for (int v = 0; v < 256; v++) {
        cr_assert_gt(seen[v], 0, "byte %d never produced", v);
    }
}
