/* fuzz_mpread.c - libFuzzer target for strict MessagePack reading.
 *
 * Any input, three independent walks over one item: mp_rd_skip at any
 * depth (a counter), mp_rd_scan (a stack of levels, under limits), and a
 * walk made of mp_rd_next calls (the inline heads included). Wherever they
 * both succeed they must agree on the item's length, and where one fails
 * the other must fail the same way, unless a limit only one of them has
 * explains it. Any disagreement aborts. */
#include "core/mpread.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void mp_check(int ok, const char *what, mpreg_err a, mpreg_err b) {
    if (!ok) {
        fprintf(stderr, "fuzz_mpread: %s (%s / %s)\n", what, mpreg_err_name(a), mpreg_err_name(b));
        abort();
    }
}

/* The result of one walk: its error, and on success where it stopped. */
typedef struct mp_walk {
    mpreg_err err;
    size_t used;
} mp_walk;

static mp_walk mp_by_skip(const uint8_t *data, size_t size, uint32_t depth) {
    mp_rd c = mp_rd_init(data, size);
    const uint8_t *start = c.p;
    mpreg_err err = mp_rd_skip(&c, depth);
    size_t used = (size_t)(c.p - start);
    mp_check(err == MPREG_OK || used == 0, "a failed skip moved the cursor", err, err);
    return (mp_walk){err, used};
}

static mp_walk mp_by_scan(const uint8_t *data, size_t size, const mp_rd_limits *lim) {
    size_t used = SIZE_MAX;
    mpreg_err err = mp_rd_scan(data, size, lim, &used);
    if (err == MPREG_E_TRAILING) {
        mp_check(used < size, "trailing, yet the item fills the input", err, err);
        err = MPREG_OK;
    } else if (err == MPREG_OK) {
        mp_check(used == size, "a complete scan that did not use the input", err, err);
    }
    return (mp_walk){err, used};
}

/* Items owed, as mp_rd_skip counts them, but head by head with mp_rd_next. */
static mp_walk mp_by_next(const uint8_t *data, size_t size) {
    mp_rd c = mp_rd_init(data, size);
    const uint8_t *start = c.p;
    uint64_t owed = 1;
    while (owed > 0) {
        const uint8_t *at = c.p;
        mp_rd_item it;
        mpreg_err err = mp_rd_next(&c, &it);
        if (err) {
            mp_check(c.p == at, "a failed read moved the cursor", err, err);
            return (mp_walk){err, 0};
        }
        mp_check(c.p > at && c.p <= c.end, "a read went nowhere or past the end", err, err);
        owed--;
        if (it.type == MP_RD_ARRAY) {
            owed += it.n;
        } else if (it.type == MP_RD_MAP) {
            owed += 2 * it.n;
        }
    }
    return (mp_walk){MPREG_OK, (size_t)(c.p - start)};
}

/* One typed read from the start of the input: its error, and where it
 * left the cursor. */
static mp_walk mp_typed(const uint8_t *data, size_t size, mp_rd_type type) {
    mp_rd c = mp_rd_init(data, size);
    const uint8_t *start = c.p;
    mp_str s;
    mp_bytes b;
    uint64_t v;
    uint32_t n;
    mpreg_err err = MPREG_E_INTERNAL;
    switch (type) {
    case MP_RD_UINT:
        err = mp_rd_uint(&c, &v);
        break;
    case MP_RD_STR:
        err = mp_rd_str(&c, &s);
        break;
    case MP_RD_BIN:
        err = mp_rd_bin(&c, &b);
        break;
    case MP_RD_ARRAY:
        err = mp_rd_array(&c, &n);
        break;
    default:
        err = mp_rd_map(&c, &n);
        break;
    }
    mp_check(err == MPREG_OK || c.p == start, "a failed typed read moved the cursor", err, err);
    return (mp_walk){err, (size_t)(c.p - start)};
}

/* A typed read (inline fast paths included) succeeds exactly when the
 * head is of its type, and reads as much as mp_rd_next_slow. */
static void mp_check_typed(const uint8_t *data, size_t size) {
    mp_rd c = mp_rd_init(data, size);
    const uint8_t *start = c.p;
    mp_rd_item it;
    mpreg_err err = mp_rd_next_slow(&c, &it);
    size_t used = (size_t)(c.p - start);
    mp_rd_type types[] = {MP_RD_UINT, MP_RD_STR, MP_RD_BIN, MP_RD_ARRAY, MP_RD_MAP};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        mp_walk t = mp_typed(data, size, types[i]);
        mpreg_err want = err ? err : it.type == types[i] ? MPREG_OK : MPREG_E_DECODE;
        mp_check(t.err == want, "typed read", t.err, want);
        mp_check(t.err != MPREG_OK || t.used == used, "typed read length", t.err, want);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mp_walk flat = mp_by_skip(data, size, MP_RD_ANY_DEPTH);
    mp_walk next = mp_by_next(data, size);
    mp_check(flat.err == next.err && flat.used == next.used, "skip and next walk disagree",
             flat.err, next.err);

    const mp_rd_limits open = {
        .max_depth = MP_RD_MAX_DEPTH,
        .max_items = SIZE_MAX,
        .max_bytes = SIZE_MAX,
        .allow_ext = true,
    };
    mp_walk scan = mp_by_scan(data, size, &open);
    if (scan.err == MPREG_OK) {
        mp_check(flat.err == MPREG_OK && flat.used == scan.used, "scan and skip disagree", scan.err,
                 flat.err);
    } else if (flat.err == MPREG_OK) {
        /* Only the scan has a depth cap. */
        mp_check(scan.err == MPREG_E_TOO_DEEP, "skip passed what scan refused", scan.err, flat.err);
    } else {
        mp_check(scan.err == flat.err || scan.err == MPREG_E_TOO_DEEP, "different failures",
                 scan.err, flat.err);
    }

    /* The depth-capped skip is the scan without a trailing check. */
    uint32_t depth = size ? data[size - 1] % (MP_RD_MAX_DEPTH + 2) : 0;
    mp_walk capped = mp_by_skip(data, size, depth);
    mp_rd_limits at_depth = open;
    at_depth.max_depth = depth;
    scan = mp_by_scan(data, size, &at_depth);
    mp_check(capped.err == scan.err && (capped.err || capped.used == scan.used),
             "capped skip and scan disagree", capped.err, scan.err);

    /* Stricter limits only ever refuse more, never read differently. */
    const mp_rd_limits strict[] = {
        /* like value.c, with smaller item and byte limits */
        {.max_depth = 32, .max_items = 1000, .max_bytes = 4096},
        /* like delta.c */
        {.max_depth = 16,
         .max_items = SIZE_MAX,
         .max_bytes = SIZE_MAX,
         .allow_ext = true,
         .early_counts = true,
         .depth_ignores_empty = true},
        {.max_depth = 4, .max_items = 8, .max_bytes = 16, .early_counts = true},
    };
    for (size_t i = 0; i < sizeof strict / sizeof strict[0]; i++) {
        mp_walk s = mp_by_scan(data, size, &strict[i]);
        mp_check(s.err != MPREG_OK || (flat.err == MPREG_OK && flat.used == s.used),
                 "a strict scan passed what skip did not", s.err, flat.err);
    }
    mp_check_typed(data, size);
    return 0;
}
