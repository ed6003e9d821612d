/* test_id.c - 128-bit identifiers. */
#include "core/id.h"
#include "core/rng.h"

#include <criterion/criterion.h>
#include <string.h>

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

Test(id, new_ids_are_deterministic_and_distinct) {
    mp_xoshiro a, b;
    mp_xoshiro_seed(&a, 11);
    mp_xoshiro_seed(&b, 11);
    mp_id prev = {{0}};
    for (int i = 0; i < 1000; i++) {
        mp_id x = mp_id_new(&a.rng);
        mp_id y = mp_id_new(&b.rng);
        cr_assert(mp_id_equal(&x, &y), "same seed, same ids");
        cr_assert(!mp_id_is_zero(&x));
        cr_assert(!mp_id_equal(&x, &prev));
        prev = x;
    }
}

Test(id, new_never_returns_zero) {
    /* A source whose first two draws (one id's worth) are zero: the zero id
     * means "none", so mp_id_new must draw again. */
    const uint64_t vals[] = {0, 0, 0, 1};
    script_rng s = {{script_next}, vals, 4, 0};
    mp_id id = mp_id_new(&s.rng);
    cr_assert(!mp_id_is_zero(&id));
    cr_assert_eq(s.next, 4);
    /* Zero in one half only is a valid id. */
    mp_id want = {{0}};
    uint64_t one = 1;
    memcpy(want.bytes + 8, &one, 8);
    cr_assert(mp_id_equal(&id, &want));
}

Test(id, zero_and_equal) {
    mp_id z = {{0}};
    cr_assert(mp_id_is_zero(&z));
    mp_id a = z;
    a.bytes[15] = 1;
    cr_assert(!mp_id_is_zero(&a));
    mp_id b = z;
    b.bytes[0] = 1;
    cr_assert(!mp_id_is_zero(&b));
    cr_assert(mp_id_equal(&z, &z));
    cr_assert(!mp_id_equal(&a, &b));
}

Test(id, cmp_orders_bytewise) {
    mp_id a = {{0}}, b = {{0}};
    cr_assert_eq(mp_id_cmp(&a, &b), 0);
    b.bytes[15] = 1;
    cr_assert_lt(mp_id_cmp(&a, &b), 0);
    cr_assert_gt(mp_id_cmp(&b, &a), 0);
    /* The first byte outranks all later ones (big-endian order, like hex). */
    a.bytes[0] = 1;
    cr_assert_gt(mp_id_cmp(&a, &b), 0);
    /* Bytes compare unsigned. */
    mp_id hi = {{0}}, lo = {{0}};
    hi.bytes[3] = 0x80;
    lo.bytes[3] = 0x7f;
    cr_assert_gt(mp_id_cmp(&hi, &lo), 0);
    /* Consistent with the hex text order. */
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 3);
    for (int i = 0; i < 500; i++) {
        mp_id p = mp_id_new(&x.rng), q = mp_id_new(&x.rng);
        char hp[MP_ID_HEX_LEN + 1], hq[MP_ID_HEX_LEN + 1];
        mp_id_to_hex(&p, hp);
        mp_id_to_hex(&q, hq);
        int c = mp_id_cmp(&p, &q), t = strcmp(hp, hq);
        cr_assert((c < 0) == (t < 0) && (c > 0) == (t > 0));
    }
}

Test(id, hex_format) {
    mp_id id;
    for (int i = 0; i < MP_ID_LEN; i++) {
        id.bytes[i] = (uint8_t)(i * 17);
    }
    char hex[MP_ID_HEX_LEN + 2];
    memset(hex, 'X', sizeof hex);
    mp_id_to_hex(&id, hex);
    cr_assert_str_eq(hex, "00112233445566778899aabbccddeeff");
    cr_assert_eq(hex[MP_ID_HEX_LEN], '\0');
    cr_assert_eq(hex[MP_ID_HEX_LEN + 1], 'X', "writes exactly 33 bytes");
}

Test(id, hex_round_trip) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 17);
    for (int i = 0; i < 1000; i++) {
        mp_id id = mp_id_new(&x.rng);
        char hex[MP_ID_HEX_LEN + 1];
        mp_id_to_hex(&id, hex);
        cr_assert_eq(strlen(hex), MP_ID_HEX_LEN);
        mp_id back;
        cr_assert_eq(mp_id_from_hex(hex, MP_ID_HEX_LEN, &back), MPREG_OK);
        cr_assert(mp_id_equal(&id, &back));
    }
}

Test(id, hex_accepts_upper_case) {
    mp_id lower, upper;
    cr_assert_eq(mp_id_from_hex("00112233445566778899aabbccddeeff", 32, &lower), MPREG_OK);
    cr_assert_eq(mp_id_from_hex("00112233445566778899AABBCCDDEEFF", 32, &upper), MPREG_OK);
    cr_assert(mp_id_equal(&lower, &upper));
    cr_assert_eq(upper.bytes[15], 0xff);
    /* The length argument rules, not a NUL: trailing text is not read. */
    cr_assert_eq(mp_id_from_hex("00112233445566778899aabbccddeeffTRAILING", 32, &upper), MPREG_OK);
    cr_assert(mp_id_equal(&lower, &upper));
}

Test(id, bad_hex_rejected) {
    mp_id out;
    const char *good = "00112233445566778899aabbccddeeff";
    cr_assert_eq(mp_id_from_hex(good, 31, &out), MPREG_E_INVALID);
    cr_assert_eq(mp_id_from_hex(good, 0, &out), MPREG_E_INVALID);
    cr_assert_eq(mp_id_from_hex("00112233445566778899aabbccddeeff0", 33, &out), MPREG_E_INVALID);
    /* Every non-hex character, at every position. */
    const char bad_chars[] = {'g', 'G', 'z', ' ',  '-',    'x',   '/',
                              ':', '@', '`', '\0', '\xff', '\x80'};
    for (size_t c = 0; c < sizeof bad_chars; c++) {
        for (size_t pos = 0; pos < MP_ID_HEX_LEN; pos++) {
            char hex[MP_ID_HEX_LEN];
            memcpy(hex, good, MP_ID_HEX_LEN);
            hex[pos] = bad_chars[c];
            cr_assert_eq(mp_id_from_hex(hex, MP_ID_HEX_LEN, &out), MPREG_E_INVALID,
                         "char 0x%02x at %zu", (unsigned char)bad_chars[c], pos);
        }
    }
    cr_assert_eq(mp_id_from_hex("0x112233445566778899aabbccddeeff", 32, &out), MPREG_E_INVALID);
}
