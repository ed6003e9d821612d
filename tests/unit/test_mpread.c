/* test_mpread.c - strict MessagePack reading: every head form of the spec,
 * truncation at every byte, lying lengths and counts, the depth cap of skip
 * and scan, the scan's limits, trailing bytes, and typed reads. */
#include "core/mpread.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Every head form                                                           */

#define NO_BODY SIZE_MAX

/* One item of each form. For containers the bytes are the head alone and
 * `elems` is how many single-byte items complete it. */
typedef struct form {
    const char *name;
    const uint8_t *bytes;
    size_t len;
    mp_rd_type type;
    uint64_t n;
    size_t body; /* offset it->ptr points at, or NO_BODY */
    size_t elems;
} form;

#define FORM(name, lit, type, n, body, elems)                                                      \
    { name, (const uint8_t *)(lit), sizeof(lit) - 1, type, (uint64_t)(n), body, elems }
#define NEG(v) ((uint64_t)(int64_t)(v))

static const form forms[] = {
    FORM("positive fixint 0", "\x00", MP_RD_UINT, 0, NO_BODY, 0),
    FORM("positive fixint 127", "\x7f", MP_RD_UINT, 127, NO_BODY, 0),
    FORM("negative fixint -32", "\xe0", MP_RD_NINT, NEG(-32), NO_BODY, 0),
    FORM("negative fixint -1", "\xff", MP_RD_NINT, NEG(-1), NO_BODY, 0),
    FORM("uint8", "\xcc\xff", MP_RD_UINT, 255, NO_BODY, 0),
    FORM("uint16", "\xcd\x01\x00", MP_RD_UINT, 256, NO_BODY, 0),
    FORM("uint32", "\xce\x00\x01\x00\x00", MP_RD_UINT, 65536, NO_BODY, 0),
    FORM("uint64", "\xcf\x00\x00\x00\x01\x00\x00\x00\x00", MP_RD_UINT, 1ull << 32, NO_BODY, 0),
    FORM("uint64 max", "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", MP_RD_UINT, UINT64_MAX, NO_BODY, 0),
    FORM("int8 negative", "\xd0\x80", MP_RD_NINT, NEG(-128), NO_BODY, 0),
    FORM("int8 positive", "\xd0\x7f", MP_RD_UINT, 127, NO_BODY, 0),
    FORM("int16 negative", "\xd1\xff\x7f", MP_RD_NINT, NEG(-129), NO_BODY, 0),
    FORM("int16 positive", "\xd1\x00\x05", MP_RD_UINT, 5, NO_BODY, 0),
    FORM("int32 min", "\xd2\x80\x00\x00\x00", MP_RD_NINT, NEG(INT32_MIN), NO_BODY, 0),
    FORM("int32 positive", "\xd2\x7f\xff\xff\xff", MP_RD_UINT, INT32_MAX, NO_BODY, 0),
    FORM("int64 min", "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", MP_RD_NINT, NEG(INT64_MIN), NO_BODY,
         0),
    FORM("int64 -1", "\xd3\xff\xff\xff\xff\xff\xff\xff\xff", MP_RD_NINT, NEG(-1), NO_BODY, 0),
    FORM("int64 positive", "\xd3\x00\x00\x00\x00\x00\x00\x01\x00", MP_RD_UINT, 256, NO_BODY, 0),
    FORM("nil", "\xc0", MP_RD_NIL, 0, NO_BODY, 0),
    FORM("false", "\xc2", MP_RD_BOOL, 0, NO_BODY, 0),
    FORM("true", "\xc3", MP_RD_BOOL, 1, NO_BODY, 0),
    FORM("float32", "\xca\x3f\xc0\x00\x00", MP_RD_F32, 4, 1, 0),
    FORM("float64", "\xcb\xbf\xd0\x00\x00\x00\x00\x00\x00", MP_RD_F64, 8, 1, 0),
    FORM("fixstr empty", "\xa0", MP_RD_STR, 0, 1, 0),
    FORM("fixstr",
         "\xa3"
         "abc",
         MP_RD_STR, 3, 1, 0),
    FORM("fixstr 31",
         "\xbf"
         "0123456789abcdef0123456789abcde",
         MP_RD_STR, 31, 1, 0),
    FORM("str8",
         "\xd9\x03"
         "abc",
         MP_RD_STR, 3, 2, 0),
    FORM("str16",
         "\xda\x00\x03"
         "abc",
         MP_RD_STR, 3, 3, 0),
    FORM("str32",
         "\xdb\x00\x00\x00\x03"
         "abc",
         MP_RD_STR, 3, 5, 0),
    FORM("bin8", "\xc4\x02xy", MP_RD_BIN, 2, 2, 0),
    FORM("bin8 empty", "\xc4\x00", MP_RD_BIN, 0, 2, 0),
    FORM("bin16", "\xc5\x00\x02xy", MP_RD_BIN, 2, 3, 0),
    FORM("bin32", "\xc6\x00\x00\x00\x02xy", MP_RD_BIN, 2, 5, 0),
    FORM("fixarray empty", "\x90", MP_RD_ARRAY, 0, NO_BODY, 0),
    FORM("fixarray", "\x92", MP_RD_ARRAY, 2, NO_BODY, 2),
    FORM("fixarray 15", "\x9f", MP_RD_ARRAY, 15, NO_BODY, 15),
    FORM("array16", "\xdc\x00\x02", MP_RD_ARRAY, 2, NO_BODY, 2),
    FORM("array32", "\xdd\x00\x00\x00\x02", MP_RD_ARRAY, 2, NO_BODY, 2),
    FORM("fixmap empty", "\x80", MP_RD_MAP, 0, NO_BODY, 0),
    FORM("fixmap", "\x81", MP_RD_MAP, 1, NO_BODY, 2),
    FORM("fixmap 15", "\x8f", MP_RD_MAP, 15, NO_BODY, 30),
    FORM("map16", "\xde\x00\x02", MP_RD_MAP, 2, NO_BODY, 4),
    FORM("map32", "\xdf\x00\x00\x00\x02", MP_RD_MAP, 2, NO_BODY, 4),
    FORM("fixext1", "\xd4\x05\xaa", MP_RD_EXT, 1, 2, 0),
    FORM("fixext2", "\xd5\x05\xaa\xbb", MP_RD_EXT, 2, 2, 0),
    FORM("fixext4", "\xd6\xff\x00\x00\x00\x00", MP_RD_EXT, 4, 2, 0),
    FORM("fixext8",
         "\xd7\x05"
         "01234567",
         MP_RD_EXT, 8, 2, 0),
    FORM("fixext16",
         "\xd8\x05"
         "0123456789abcdef",
         MP_RD_EXT, 16, 2, 0),
    FORM("ext8",
         "\xc7\x03\x05"
         "abc",
         MP_RD_EXT, 3, 3, 0),
    FORM("ext8 empty", "\xc7\x00\x05", MP_RD_EXT, 0, 3, 0),
    FORM("ext16",
         "\xc8\x00\x03\x05"
         "abc",
         MP_RD_EXT, 3, 4, 0),
    FORM("ext32",
         "\xc9\x00\x00\x00\x03\x05"
         "abc",
         MP_RD_EXT, 3, 6, 0),
};
#define N_FORMS (sizeof forms / sizeof forms[0])

/* Limits that refuse nothing a skip would accept. */
static const mp_rd_limits open_limits = {
    .max_depth = MP_RD_MAX_DEPTH,
    .max_items = SIZE_MAX,
    .max_bytes = SIZE_MAX,
    .allow_ext = true,
};

/* The form followed by `elems` nils (a complete item), then `extra` bytes
 * of 0xc0. Caller frees. */
static uint8_t *complete(const form *f, size_t extra, size_t *len) {
    *len = f->len + f->elems;
    uint8_t *p = malloc(*len + extra + 1);
    cr_assert_not_null(p);
    memcpy(p, f->bytes, f->len);
    memset(p + f->len, 0xc0, f->elems + extra);
    return p;
}

static mp_rd_limits limits(uint32_t depth, size_t items, size_t bytes) {
    mp_rd_limits l = open_limits;
    l.max_depth = depth;
    l.max_items = items;
    l.max_bytes = bytes;
    return l;
}

static mpreg_err scan_lit(const char *bytes, size_t len, const mp_rd_limits *l) {
    return mp_rd_scan(bytes, len, l, NULL);
}
#define SCAN(lit, l) scan_lit(lit, sizeof(lit) - 1, l)

static mpreg_err skip_lit(const char *bytes, size_t len, uint32_t depth, size_t *used) {
    mp_rd c = mp_rd_init(bytes, len);
    mpreg_err err = mp_rd_skip(&c, depth);
    *used = (size_t)((const char *)c.p - bytes);
    return err;
}

Test(forms, every_head_reads) {
    for (size_t i = 0; i < N_FORMS; i++) {
        const form *f = &forms[i];
        mp_rd c = mp_rd_init(f->bytes, f->len);
        mp_rd_item it;
        memset(&it, 0xa5, sizeof it);
        cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK, "%s", f->name);
        cr_assert_eq(it.type, f->type, "%s: type %d", f->name, it.type);
        cr_assert_eq(it.n, f->n, "%s: n %llu", f->name, (unsigned long long)it.n);
        if (f->body != NO_BODY) {
            cr_assert_eq(it.ptr, f->bytes + f->body, "%s: body", f->name);
        }
        cr_assert_eq(c.p, c.end, "%s: the whole head (and body) is read", f->name);
    }
}

Test(forms, every_head_goes_the_slow_way_too) {
    for (size_t i = 0; i < N_FORMS; i++) {
        const form *f = &forms[i];
        mp_rd c = mp_rd_init(f->bytes, f->len);
        mp_rd_item it;
        cr_assert_eq(mp_rd_next_slow(&c, &it), MPREG_OK, "%s", f->name);
        cr_assert_eq(it.type, f->type, "%s", f->name);
        cr_assert_eq(it.n, f->n, "%s", f->name);
        cr_assert_eq(c.p, c.end, "%s", f->name);
    }
}

Test(forms, float_values) {
    mp_rd c = mp_rd_init("\xca\x3f\xc0\x00\x00", 5);
    mp_rd_item it;
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK);
    cr_assert_eq(it.f, 1.5);
    c = mp_rd_init("\xcb\xbf\xd0\x00\x00\x00\x00\x00\x00", 9);
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK);
    cr_assert_eq(it.f, -0.25);
    c = mp_rd_init("\xca\x7f\xc0\x00\x00", 5);
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK);
    cr_assert(isnan(it.f), "float32 NaN");
}

Test(forms, ext_type_byte) {
    mp_rd c = mp_rd_init("\xd6\xff\x00\x00\x00\x00", 6); /* a timestamp */
    mp_rd_item it;
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK);
    cr_assert_eq(it.ext_type, -1);
    c = mp_rd_init("\xc8\x00\x01\x7f"
                   "x",
                   5);
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK);
    cr_assert_eq(it.ext_type, 127);
    cr_assert_eq(it.n, 1);
    cr_assert_eq(it.ptr[0], 'x');
}

Test(forms, every_type_byte_is_classified) {
    /* Whatever follows, every type byte but 0xc1 reads as something. */
    uint8_t buf[64] = {0};
    for (int b = 0; b <= 0xff; b++) {
        buf[0] = (uint8_t)b;
        mp_rd c = mp_rd_init(buf, sizeof buf);
        mp_rd_item it;
        mpreg_err want = b == 0xc1 ? MPREG_E_DECODE : MPREG_OK;
        cr_assert_eq(mp_rd_next(&c, &it), want, "type byte 0x%02x", b);
    }
}

Test(forms, reserved_byte) {
    mp_rd c = mp_rd_init("\xc1", 1);
    mp_rd_item it;
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_E_DECODE);
    cr_assert_eq(c.p, c.end - 1, "a failed read does not move");
    size_t used;
    cr_assert_eq(skip_lit("\xc1", 1, MP_RD_ANY_DEPTH, &used), MPREG_E_DECODE);
    cr_assert_eq(skip_lit("\x92\xc0\xc1", 3, 4, &used), MPREG_E_DECODE);
    cr_assert_eq(used, 0);
    cr_assert_eq(SCAN("\xc1", &open_limits), MPREG_E_DECODE);
    cr_assert_eq(SCAN("\x81\xa1k\xc1", &open_limits), MPREG_E_DECODE);
}

/* ------------------------------------------------------------------------ */
/* Truncation and lying lengths                                              */

Test(truncation, every_cut_of_every_head) {
    for (size_t i = 0; i < N_FORMS; i++) {
        const form *f = &forms[i];
        for (size_t cut = 0; cut < f->len; cut++) {
            mp_rd c = mp_rd_init(f->bytes, cut);
            mp_rd_item it;
            cr_assert_eq(mp_rd_next(&c, &it), MPREG_E_TRUNCATED, "%s cut at %zu", f->name, cut);
            cr_assert_eq(c.p, f->bytes, "%s cut at %zu: the cursor stays", f->name, cut);
        }
    }
}

Test(truncation, every_cut_of_every_item_for_skip_and_scan) {
    for (size_t i = 0; i < N_FORMS; i++) {
        size_t len;
        uint8_t *item = complete(&forms[i], 0, &len);
        for (size_t cut = 0; cut < len; cut++) {
            const char *name = forms[i].name;
            mp_rd c = mp_rd_init(item, cut);
            cr_assert_eq(mp_rd_skip(&c, MP_RD_ANY_DEPTH), MPREG_E_TRUNCATED, "%s/%zu", name, cut);
            cr_assert_eq(c.p, item, "%s/%zu: the cursor stays", name, cut);
            cr_assert_eq(mp_rd_skip(&c, 8), MPREG_E_TRUNCATED, "%s/%zu capped", name, cut);
            cr_assert_eq(c.p, item);
            cr_assert_eq(mp_rd_scan(item, cut, &open_limits, NULL), MPREG_E_TRUNCATED, "%s/%zu",
                         name, cut);
        }
        free(item);
    }
}

Test(truncation, empty_input) {
    mp_rd c = mp_rd_init(NULL, 0);
    mp_rd_item it;
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_E_TRUNCATED);
    cr_assert_eq(mp_rd_skip(&c, MP_RD_ANY_DEPTH), MPREG_E_TRUNCATED);
    cr_assert_eq(mp_rd_scan(NULL, 0, &open_limits, NULL), MPREG_E_TRUNCATED);
    cr_assert_eq(mp_rd_scan("", 0, &open_limits, NULL), MPREG_E_TRUNCATED);
    c = mp_rd_init(NULL, 5);
    cr_assert_eq(mp_rd_left(&c), 0, "NULL data is an empty input, whatever the length");
}

Test(truncation, lengths_beyond_the_input) {
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\xdb\xff\xff\xff\xff"
         "a",
         6},
        {"\xda\x00\x05"
         "ab",
         5},
        {"\xd9\x05"
         "ab",
         4},
        {"\xa5"
         "ab",
         3},
        {"\xc6\xff\xff\xff\xff"
         "a",
         6},
        {"\xc5\x01\x00"
         "a",
         4},
        {"\xc4\x02"
         "a",
         3},
        {"\xc9\xff\xff\xff\xff\x01"
         "a",
         7},
        {"\xc7\x02\x01"
         "a",
         4},
        {"\xd8\x01"
         "a",
         3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp_rd c = mp_rd_init(cases[i].bytes, cases[i].len);
        mp_rd_item it;
        cr_assert_eq(mp_rd_next(&c, &it), MPREG_E_TRUNCATED, "case %zu", i);
        size_t used;
        cr_assert_eq(skip_lit(cases[i].bytes, cases[i].len, MP_RD_ANY_DEPTH, &used),
                     MPREG_E_TRUNCATED, "case %zu", i);
        cr_assert_eq(scan_lit(cases[i].bytes, cases[i].len, &open_limits), MPREG_E_TRUNCATED,
                     "case %zu", i);
    }
}

Test(truncation, counts_beyond_the_input) {
    /* A count is a claim: the head reads, the walk over it runs out. */
    mp_rd c = mp_rd_init("\xdd\xff\xff\xff\xff", 5);
    mp_rd_item it;
    cr_assert_eq(mp_rd_next(&c, &it), MPREG_OK);
    cr_assert_eq(it.n, UINT32_MAX);
    size_t used;
    cr_assert_eq(skip_lit("\xdd\xff\xff\xff\xff\x01", 6, MP_RD_ANY_DEPTH, &used),
                 MPREG_E_TRUNCATED);
    cr_assert_eq(skip_lit("\xdf\xff\xff\xff\xff\x01\x01", 7, MP_RD_ANY_DEPTH, &used),
                 MPREG_E_TRUNCATED);
    cr_assert_eq(skip_lit("\xdf\xff\xff\xff\xff\x01\x01", 7, 4, &used), MPREG_E_TRUNCATED);
    cr_assert_eq(used, 0);
    cr_assert_eq(SCAN("\xdd\xff\xff\xff\xff\x01", &open_limits), MPREG_E_TRUNCATED);
    cr_assert_eq(SCAN("\x93\x01\x02", &open_limits), MPREG_E_TRUNCATED);
}

/* ------------------------------------------------------------------------ */
/* Skip                                                                      */

Test(skip, every_complete_item) {
    for (size_t i = 0; i < N_FORMS; i++) {
        size_t len;
        uint8_t *item = complete(&forms[i], 3, &len);
        mp_rd c = mp_rd_init(item, len + 3);
        cr_assert_eq(mp_rd_skip(&c, MP_RD_ANY_DEPTH), MPREG_OK, "%s", forms[i].name);
        cr_assert_eq(c.p, item + len, "%s: stops after the item", forms[i].name);
        c = mp_rd_init(item, len + 3);
        cr_assert_eq(mp_rd_skip(&c, 1), MPREG_OK, "%s capped", forms[i].name);
        cr_assert_eq(c.p, item + len, "%s capped", forms[i].name);
        free(item);
    }
}

Test(skip, nested_values) {
    /* {"a": [1, {"b": "xy"}, bin], "c": ext} then a trailing byte */
    static const char v[] = "\x82\xa1"
                            "a\x93\x01\x81\xa1"
                            "b\xa2"
                            "xy\xc4\x01z\xa1"
                            "c\xd4\x01\x02\xc0";
    size_t used;
    cr_assert_eq(skip_lit(v, sizeof v - 1, MP_RD_ANY_DEPTH, &used), MPREG_OK);
    cr_assert_eq(used, sizeof v - 2);
    cr_assert_eq(skip_lit(v, sizeof v - 1, 3, &used), MPREG_OK, "three levels of containers");
    cr_assert_eq(used, sizeof v - 2);
    cr_assert_eq(skip_lit(v, sizeof v - 1, 2, &used), MPREG_E_TOO_DEEP);
    cr_assert_eq(used, 0, "a failed skip does not move");
}

/* n arrays nested in each other around nil. Caller frees. */
static char *nested(size_t n, size_t *len) {
    char *p = malloc(n + 1);
    cr_assert_not_null(p);
    memset(p, 0x91, n);
    p[n] = (char)0xc0;
    *len = n + 1;
    return p;
}

Test(skip, depth_cap) {
    for (uint32_t cap = 0; cap <= 6; cap++) {
        for (size_t n = 0; n <= 8; n++) {
            size_t len, used;
            char *p = nested(n, &len);
            mpreg_err want = n <= cap ? MPREG_OK : MPREG_E_TOO_DEEP;
            cr_assert_eq(skip_lit(p, len, cap, &used), want, "cap %u, depth %zu", cap, n);
            cr_assert_eq(used, want == MPREG_OK ? len : 0);
            free(p);
        }
    }
}

Test(skip, cap_above_the_stack_is_the_stack) {
    size_t len, used;
    char *p = nested(MP_RD_MAX_DEPTH, &len);
    cr_assert_eq(skip_lit(p, len, 1000, &used), MPREG_OK);
    free(p);
    p = nested(MP_RD_MAX_DEPTH + 1, &len);
    cr_assert_eq(skip_lit(p, len, 1000, &used), MPREG_E_TOO_DEEP);
    free(p);
}

Test(skip, any_depth_costs_nothing) {
    size_t len, used;
    char *p = nested(100000, &len);
    cr_assert_eq(skip_lit(p, len, MP_RD_ANY_DEPTH, &used), MPREG_OK);
    cr_assert_eq(used, len);
    cr_assert_eq(skip_lit(p, len - 1, MP_RD_ANY_DEPTH, &used), MPREG_E_TRUNCATED);
    free(p);
}

/* ------------------------------------------------------------------------ */
/* Scan                                                                      */

Test(scan, every_complete_item) {
    for (size_t i = 0; i < N_FORMS; i++) {
        size_t len, used = 0;
        uint8_t *item = complete(&forms[i], 1, &len);
        cr_assert_eq(mp_rd_scan(item, len, &open_limits, &used), MPREG_OK, "%s", forms[i].name);
        cr_assert_eq(used, len);
        used = 0;
        cr_assert_eq(mp_rd_scan(item, len + 1, &open_limits, &used), MPREG_E_TRAILING, "%s",
                     forms[i].name);
        cr_assert_eq(used, len, "%s: the item's length, trailing or not", forms[i].name);
        free(item);
    }
}

Test(scan, trailing) {
    cr_assert_eq(SCAN("\xc0\xc0", &open_limits), MPREG_E_TRAILING);
    cr_assert_eq(SCAN("\x91\x01\x02", &open_limits), MPREG_E_TRAILING);
    cr_assert_eq(SCAN("\xa1x\xff", &open_limits), MPREG_E_TRAILING);
    cr_assert_eq(SCAN("\x80\x00", &open_limits), MPREG_E_TRAILING);
    /* Whatever trails is not looked at: the item ends first. */
    cr_assert_eq(SCAN("\x01\xc1", &open_limits), MPREG_E_TRAILING);
    size_t used = 0;
    cr_assert_eq(mp_rd_scan("\x92\x01\x02\x03", 4, &open_limits, &used), MPREG_E_TRAILING);
    cr_assert_eq(used, 3);
}

Test(scan, depth) {
    for (uint32_t cap = 0; cap <= 6; cap++) {
        for (size_t n = 0; n <= 8; n++) {
            size_t len;
            char *p = nested(n, &len);
            mp_rd_limits l = limits(cap, SIZE_MAX, SIZE_MAX);
            mpreg_err want = n <= cap ? MPREG_OK : MPREG_E_TOO_DEEP;
            cr_assert_eq(scan_lit(p, len, &l), want, "cap %u, depth %zu", cap, n);
            free(p);
        }
    }
    mp_rd_limits three = limits(3, SIZE_MAX, SIZE_MAX);
    /* Maps count the same; an empty innermost container counts too. */
    cr_assert_eq(SCAN("\x81\xa1k\x81\xa1k\x90", &three), MPREG_OK);
    cr_assert_eq(SCAN("\x81\xa1k\x81\xa1k\x91\x90", &three), MPREG_E_TOO_DEEP);
    mp_rd_limits one = limits(1, SIZE_MAX, SIZE_MAX);
    cr_assert_eq(SCAN("\x93\x01\x02\x03", &one), MPREG_OK);
    cr_assert_eq(SCAN("\x93\x01\x90\x03", &one), MPREG_E_TOO_DEEP);
    /* ... unless empty containers are exempt. */
    three.depth_ignores_empty = true;
    cr_assert_eq(SCAN("\x81\xa1k\x81\xa1k\x91\x90", &three), MPREG_OK);
    cr_assert_eq(SCAN("\x81\xa1k\x81\xa1k\x91\x91\xc0", &three), MPREG_E_TOO_DEEP);
    /* A cap above the stack is the stack. */
    mp_rd_limits huge = limits(UINT32_MAX, SIZE_MAX, SIZE_MAX);
    size_t len;
    char *p = nested(MP_RD_MAX_DEPTH + 1, &len);
    cr_assert_eq(scan_lit(p, len, &huge), MPREG_E_TOO_DEEP);
    cr_assert_eq(scan_lit(p + 1, len - 1, &huge), MPREG_OK);
    free(p);
}

Test(scan, items) {
    mp_rd_limits five = limits(8, 5, SIZE_MAX);
    cr_assert_eq(SCAN("\x95\x01\x02\x03\x04\x05", &five), MPREG_OK);
    cr_assert_eq(SCAN("\x96\x01\x02\x03\x04\x05\x06", &five), MPREG_E_TOO_LARGE);
    /* Totals over the whole item: 2 + 2 + 2 = 6. */
    cr_assert_eq(SCAN("\x92\x92\x01\x02\x92\x03\x04", &five), MPREG_E_TOO_LARGE);
    /* A map entry counts once. */
    cr_assert_eq(SCAN("\x85\x01\x01\x02\x01\x03\x01\x04\x01\x05\x01", &five), MPREG_OK);
    cr_assert_eq(SCAN("\x83\x01\x01\x02\x01\x03\x83\x01\x01\x02\x01\x03\x01", &five),
                 MPREG_E_TOO_LARGE);
    /* Refused at the head, before the input could run out. */
    cr_assert_eq(SCAN("\xdd\xff\xff\xff\xff\x01", &five), MPREG_E_TOO_LARGE);
    cr_assert_eq(SCAN("\xdf\xff\xff\xff\xff\x01", &five), MPREG_E_TOO_LARGE);
    /* Zero items: only empty containers. */
    mp_rd_limits none = limits(8, 0, SIZE_MAX);
    cr_assert_eq(SCAN("\x90", &none), MPREG_OK);
    cr_assert_eq(SCAN("\x80", &none), MPREG_OK);
    cr_assert_eq(SCAN("\x91\x01", &none), MPREG_E_TOO_LARGE);
}

Test(scan, bytes) {
    mp_rd_limits four = limits(8, SIZE_MAX, 4);
    cr_assert_eq(SCAN("\xa4"
                      "abcd",
                      &four),
                 MPREG_OK);
    cr_assert_eq(SCAN("\xa5"
                      "abcde",
                      &four),
                 MPREG_E_TOO_LARGE);
    cr_assert_eq(SCAN("\xc4\x05"
                      "abcde",
                      &four),
                 MPREG_E_TOO_LARGE, "bin counts");
    cr_assert_eq(SCAN("\xc7\x05\x01"
                      "abcde",
                      &four),
                 MPREG_E_TOO_LARGE, "ext counts");
    cr_assert_eq(SCAN("\xd8\x01"
                      "0123456789abcdef",
                      &four),
                 MPREG_E_TOO_LARGE, "fixext counts");
    cr_assert_eq(SCAN("\x92\xa2"
                      "ab\xc4\x03"
                      "abc",
                      &four),
                 MPREG_E_TOO_LARGE, "totals");
    cr_assert_eq(SCAN("\x81\xa3"
                      "key\xa2"
                      "va",
                      &four),
                 MPREG_E_TOO_LARGE, "keys count");
    cr_assert_eq(SCAN("\xcb\x00\x00\x00\x00\x00\x00\x00\x00", &four), MPREG_OK,
                 "floats are not data");
    /* Too large before truncated: the claim alone is refused. */
    cr_assert_eq(SCAN("\xdb\xff\xff\xff\xff"
                      "a",
                      &four),
                 MPREG_E_TOO_LARGE);
    cr_assert_eq(SCAN("\xdb\xff\xff\xff\xff"
                      "a",
                      &open_limits),
                 MPREG_E_TRUNCATED);
}

Test(scan, ext) {
    mp_rd_limits no_ext = open_limits;
    no_ext.allow_ext = false;
    for (size_t i = 0; i < N_FORMS; i++) {
        const form *f = &forms[i];
        if (f->type != MP_RD_EXT) {
            continue;
        }
        cr_assert_eq(mp_rd_scan(f->bytes, f->len, &open_limits, NULL), MPREG_OK, "%s", f->name);
        cr_assert_eq(mp_rd_scan(f->bytes, f->len, &no_ext, NULL), MPREG_E_DECODE, "%s", f->name);
        /* Refused on the type byte, before its length is even there. */
        cr_assert_eq(mp_rd_scan(f->bytes, 1, &no_ext, NULL), MPREG_E_DECODE, "%s", f->name);
    }
    cr_assert_eq(SCAN("\x91\xc7\x01\x05x", &no_ext), MPREG_E_DECODE, "nested ext");
}

Test(scan, first_problem_wins) {
    cr_assert_eq(SCAN("\x92\xc1\x01", &open_limits), MPREG_E_DECODE);
    cr_assert_eq(SCAN("\x92\x01", &open_limits), MPREG_E_TRUNCATED);
    cr_assert_eq(SCAN("\x92\x01\xc1", &open_limits), MPREG_E_DECODE);
    cr_assert_eq(SCAN("\x93\x01\xa5"
                      "ab",
                      &open_limits),
                 MPREG_E_TRUNCATED);
    cr_assert_eq(SCAN("\x92\xc1", &open_limits), MPREG_E_DECODE);
}

Test(scan, early_counts) {
    mp_rd_limits early = open_limits;
    early.early_counts = true;
    /* A count the bytes left cannot hold fails at its head... */
    cr_assert_eq(SCAN("\x92\xc1", &early), MPREG_E_TRUNCATED);
    cr_assert_eq(SCAN("\x81\x01", &early), MPREG_E_TRUNCATED, "maps need two per entry");
    /* ... before its depth is looked at. */
    early.max_depth = 1;
    cr_assert_eq(SCAN("\x91\x92\x01", &early), MPREG_E_TRUNCATED);
    cr_assert_eq(SCAN("\x91\x92\x01\x02", &early), MPREG_E_TOO_DEEP);
    /* Counts that fit are walked as usual. */
    cr_assert_eq(SCAN("\x92\xc1\x01", &early), MPREG_E_DECODE);
}

Test(scan, zero_depth_takes_scalars_only) {
    mp_rd_limits flat = limits(0, SIZE_MAX, SIZE_MAX);
    cr_assert_eq(SCAN("\x01", &flat), MPREG_OK);
    cr_assert_eq(SCAN("\xa1x", &flat), MPREG_OK);
    cr_assert_eq(SCAN("\x90", &flat), MPREG_E_TOO_DEEP);
}

/* ------------------------------------------------------------------------ */
/* Typed reads                                                               */

Test(typed, uint) {
    uint64_t v = 0;
    mp_rd c = mp_rd_init("\x05\xd0\x07\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 12);
    cr_assert_eq(mp_rd_uint(&c, &v), MPREG_OK);
    cr_assert_eq(v, 5);
    cr_assert_eq(mp_rd_uint(&c, &v), MPREG_OK, "a non-negative int8 is a uint");
    cr_assert_eq(v, 7);
    cr_assert_eq(mp_rd_uint(&c, &v), MPREG_OK);
    cr_assert_eq(v, UINT64_MAX);
    cr_assert_eq(mp_rd_left(&c), 0);
    c = mp_rd_init("\xff", 1);
    cr_assert_eq(mp_rd_uint(&c, &v), MPREG_E_DECODE, "negative");
    cr_assert_eq(mp_rd_left(&c), 1, "a type mismatch does not move");
    c = mp_rd_init("\xcd\x01", 2);
    cr_assert_eq(mp_rd_uint(&c, &v), MPREG_E_TRUNCATED);
}

Test(typed, str_and_bin) {
    mp_str s = MP_STR_NULL;
    mp_bytes b = {NULL, 0};
    mp_rd c = mp_rd_init("\xa2hi\xd9\x01x\xc4\x02\x00\x01", 10);
    cr_assert_eq(mp_rd_str(&c, &s), MPREG_OK);
    cr_assert(mp_str_eq_c(s, "hi"));
    cr_assert_eq(mp_rd_bin(&c, &b), MPREG_E_DECODE, "str is not bin");
    cr_assert_eq(mp_rd_str(&c, &s), MPREG_OK);
    cr_assert(mp_str_eq_c(s, "x"));
    cr_assert_eq(mp_rd_str(&c, &s), MPREG_E_DECODE, "bin is not str");
    cr_assert_eq(mp_rd_bin(&c, &b), MPREG_OK);
    cr_assert_eq(b.len, 2);
    cr_assert_eq(b.ptr[1], 1);
    /* A short item is truncated whatever its type: not a type error. */
    c = mp_rd_init("\xc4\x05"
                   "ab",
                   4);
    cr_assert_eq(mp_rd_str(&c, &s), MPREG_E_TRUNCATED);
    c = mp_rd_init("\xc5\x01\x00"
                   "ab",
                   5);
    cr_assert_eq(mp_rd_bin(&c, &b), MPREG_E_TRUNCATED, "bin16 claiming 256 bytes");
    cr_assert_eq(mp_rd_left(&c), 5);
    c = mp_rd_init("\xa5"
                   "ab",
                   3);
    cr_assert_eq(mp_rd_str(&c, &s), MPREG_E_TRUNCATED, "fixstr cut short takes the slow path");
    cr_assert_eq(mp_rd_left(&c), 3);
}

Test(typed, every_bin_form) {
    static const struct {
        const char *bytes;
        size_t len, head;
    } bins[] = {
        {"\xc4\x00", 2, 2},          /* bin8 at the very end */
        {"\xc4\x00\xc0", 3, 2},      /* bin8, empty */
        {"\xc4\x01z\xc0", 4, 2},     /* bin8 */
        {"\xc5\x00\x01z\xc0", 5, 3}, /* bin16 */
        {"\xc5\x00\x00", 3, 3},      /* bin16, empty, at the end */
        {"\xc6\x00\x00\x00\x01z", 6, 5},
    };
    for (size_t i = 0; i < sizeof bins / sizeof bins[0]; i++) {
        mp_rd c = mp_rd_init(bins[i].bytes, bins[i].len);
        mp_bytes b = {NULL, 0};
        cr_assert_eq(mp_rd_bin(&c, &b), MPREG_OK, "case %zu", i);
        cr_assert_eq(b.ptr, (const uint8_t *)bins[i].bytes + bins[i].head, "case %zu", i);
        size_t body = bins[i].head < bins[i].len && bins[i].bytes[bins[i].head] == 'z';
        cr_assert_eq(b.len, body, "case %zu", i);
        cr_assert_eq(c.p, b.ptr + b.len, "case %zu", i);
        for (size_t cut = 0; cut < bins[i].head + body; cut++) {
            c = mp_rd_init(bins[i].bytes, cut);
            cr_assert_eq(mp_rd_bin(&c, &b), MPREG_E_TRUNCATED, "case %zu cut at %zu", i, cut);
            cr_assert_eq(mp_rd_left(&c), cut);
        }
    }
}

Test(typed, array_and_map) {
    uint32_t n = 0;
    mp_rd c = mp_rd_init("\x93\xde\x01\x00\xdd\xff\xff\xff\xff\x80", 10);
    cr_assert_eq(mp_rd_map(&c, &n), MPREG_E_DECODE);
    cr_assert_eq(mp_rd_array(&c, &n), MPREG_OK);
    cr_assert_eq(n, 3);
    cr_assert_eq(mp_rd_array(&c, &n), MPREG_E_DECODE);
    cr_assert_eq(mp_rd_map(&c, &n), MPREG_OK);
    cr_assert_eq(n, 256);
    cr_assert_eq(mp_rd_array(&c, &n), MPREG_OK, "a count is a claim, not checked");
    cr_assert_eq(n, UINT32_MAX);
    cr_assert_eq(mp_rd_map(&c, &n), MPREG_OK);
    cr_assert_eq(n, 0);
    cr_assert_eq(mp_rd_map(&c, &n), MPREG_E_TRUNCATED);
}
