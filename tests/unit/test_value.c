/* test_value.c - the dynamic value model: construction, equality, clone,
 * MessagePack and JSON, plus a seeded round-trip property test. */
#include "mpreg/value.h"

#include "core/buf.h"
#include "core/rng.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- helpers ---------------------------------------------------------------- */

/* Encodes v, decodes it back and checks it equals v. */
static void roundtrip(const mpreg_value *v) {
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mpreg_value_encode(v, &buf), MPREG_OK);
    mpreg_value back;
    mpreg_err err = mpreg_value_decode(buf.data, buf.len, NULL, &back);
    cr_assert_eq(err, MPREG_OK, "decode failed: %d", err);
    cr_assert(mpreg_value_equal(v, &back), "round trip changed a %s", mpreg_type_name(v->type));
    mpreg_value_free(&back);
    mp_buf_free(&buf);
}

static mpreg_err decode_bytes(const char *bytes, size_t len, const mpreg_value_limits *lim) {
    mpreg_value v = mpreg_int(42);
    mpreg_err err = mpreg_value_decode(bytes, len, lim, &v);
    if (err) {
        cr_assert_eq(v.type, MPREG_NIL, "out must be NIL on error");
    }
    mpreg_value_free(&v);
    return err;
}

#define DECODE_LIT(lit, lim) decode_bytes(lit, sizeof(lit) - 1, lim)

/* n arrays nested in each other around a 1. */
static mpreg_value nested_arrays(int n) {
    mpreg_value v = mpreg_int(1);
    for (int i = 0; i < n; i++) {
        mpreg_value a = mpreg_array();
        cr_assert_eq(mpreg_array_push(&a, v), MPREG_OK);
        v = a;
    }
    return v;
}

static mpreg_value from_json_ok(const char *text) {
    mpreg_value v;
    char err[128];
    mpreg_err rc = mpreg_value_from_json(text, strlen(text), &v, err, sizeof err);
    cr_assert_eq(rc, MPREG_OK, "from_json(%s): %d %s", text, rc, err);
    return v;
}

static void json_is(const mpreg_value *v, bool pretty, const char *want) {
    char *got = mpreg_value_to_json(v, pretty);
    cr_assert_not_null(got);
    cr_assert_str_eq(got, want);
    free(got);
}

static void json_roundtrip(const mpreg_value *v) {
    char *text = mpreg_value_to_json(v, false);
    cr_assert_not_null(text);
    mpreg_value back;
    char err[128];
    mpreg_err rc = mpreg_value_from_json(text, strlen(text), &back, err, sizeof err);
    cr_assert_eq(rc, MPREG_OK, "from_json(%s): %s", text, err);
    cr_assert(mpreg_value_equal(v, &back), "JSON round trip changed %s", text);
    mpreg_value_free(&back);
    free(text);
}

/* --- construction and maps ------------------------------------------------------ */

Test(value, scalars_construct) {
    cr_assert_eq(mpreg_nil().type, MPREG_NIL);
    cr_assert(mpreg_bool(true).u.b);
    cr_assert_eq(mpreg_int(-7).u.i, -7);
    cr_assert_eq(mpreg_float(2.5).u.f, 2.5);

    mpreg_value s = mpreg_str("hello");
    cr_assert_eq(s.type, MPREG_STR);
    cr_assert_eq(s.u.str.len, 5);
    cr_assert_str_eq(s.u.str.ptr, "hello");
    mpreg_value_free(&s);
    cr_assert_eq(s.type, MPREG_NIL, "free leaves NIL");

    mpreg_value n = mpreg_strn("a\0b", 3);
    cr_assert_eq(n.u.str.len, 3);
    cr_assert_eq(memcmp(n.u.str.ptr, "a\0b", 4), 0, "copied and NUL-terminated");
    mpreg_value_free(&n);

    mpreg_value e = mpreg_str("");
    cr_assert_not_null(e.u.str.ptr);
    cr_assert_eq(e.u.str.ptr[0], '\0');
    mpreg_value_free(&e);

    mpreg_value b = mpreg_bin("\x00\xff", 2);
    cr_assert_eq(b.type, MPREG_BIN);
    cr_assert_eq(b.u.bin.len, 2);
    cr_assert_eq(b.u.bin.ptr[1], 0xff);
    mpreg_value_free(&b);
    mpreg_value_free(NULL);
}

Test(value, type_names) {
    cr_assert_str_eq(mpreg_type_name(MPREG_NIL), "nil");
    cr_assert_str_eq(mpreg_type_name(MPREG_BOOL), "bool");
    cr_assert_str_eq(mpreg_type_name(MPREG_INT), "int");
    cr_assert_str_eq(mpreg_type_name(MPREG_FLOAT), "float");
    cr_assert_str_eq(mpreg_type_name(MPREG_STR), "str");
    cr_assert_str_eq(mpreg_type_name(MPREG_BIN), "bin");
    cr_assert_str_eq(mpreg_type_name(MPREG_ARRAY), "array");
    cr_assert_str_eq(mpreg_type_name(MPREG_MAP), "map");
    cr_assert_str_eq(mpreg_type_name((mpreg_type)99), "unknown");
}

Test(value, map_set_replaces_in_place) {
    mpreg_value m = mpreg_map();
    cr_assert_eq(mpreg_map_set(&m, "a", mpreg_int(1)), MPREG_OK);
    cr_assert_eq(mpreg_map_set(&m, "b", mpreg_str("two")), MPREG_OK);
    cr_assert_eq(mpreg_map_set(&m, "a", mpreg_str("three")), MPREG_OK); /* old freed */
    cr_assert_eq(m.u.map.len, 2);
    cr_assert_str_eq(m.u.map.items[0].key.u.str.ptr, "a", "replaced entry keeps its place");
    const mpreg_value *a = mpreg_map_get(&m, "a");
    cr_assert_not_null(a);
    cr_assert_eq(a->type, MPREG_STR);
    cr_assert_str_eq(a->u.str.ptr, "three");
    cr_assert_null(mpreg_map_get(&m, "zz"));

    cr_assert_eq(mpreg_map_setn(&m, "k\0x", 3, mpreg_int(9)), MPREG_OK);
    cr_assert_null(mpreg_map_get(&m, "k"), "keys are compared with their length");
    cr_assert_eq(mpreg_map_getn(&m, "k\0x", 3)->u.i, 9);

    mpreg_value notmap = mpreg_int(3);
    cr_assert_null(mpreg_map_get(&notmap, "a"));
    cr_assert_eq(mpreg_map_set(&notmap, "a", mpreg_str("taken and freed")), MPREG_E_TYPE);
    mpreg_value_free(&m);
}

Test(value, array_push) {
    mpreg_value a = mpreg_array();
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(mpreg_array_push(&a, mpreg_int(i)), MPREG_OK);
    }
    cr_assert_eq(a.u.arr.len, 100);
    cr_assert_eq(a.u.arr.items[57].u.i, 57);
    mpreg_value notarr = mpreg_map();
    cr_assert_eq(mpreg_array_push(&notarr, mpreg_str("freed on error")), MPREG_E_TYPE);
    mpreg_value_free(&a);
    mpreg_value_free(&notarr);
}

Test(value, utf8_validation) {
    cr_assert(mpreg_utf8_valid("", 0));
    cr_assert(mpreg_utf8_valid("a\0b", 3), "NUL is a code point");
    cr_assert(mpreg_utf8_valid("\xc3\xa9\xe2\x9c\x93\xf0\x9f\x98\x80", 9));
    cr_assert(mpreg_utf8_valid("\xed\x9f\xbf\xee\x80\x80", 6), "around the surrogates");
    cr_assert_not(mpreg_utf8_valid("\xc3", 1), "cut short");
    cr_assert_not(mpreg_utf8_valid("\xc1\xbf", 2), "overlong 2-byte");
    cr_assert_not(mpreg_utf8_valid("\xe0\x9f\xbf", 3), "overlong 3-byte");
    cr_assert_not(mpreg_utf8_valid("\xf0\x8f\xbf\xbf", 4), "overlong 4-byte");
    cr_assert_not(mpreg_utf8_valid("\xed\xa0\x80", 3), "surrogate");
    cr_assert_not(mpreg_utf8_valid("\xf4\x90\x80\x80", 4), "above U+10FFFF");
    cr_assert_not(mpreg_utf8_valid("\xe2\x28\xa1", 3), "bad continuation");
    cr_assert_not(mpreg_utf8_valid("\x80", 1), "lone continuation");
}

/* --- equality and clone ----------------------------------------------------- */

Test(value, equality_semantics) {
    mpreg_value i1 = mpreg_int(1), f1 = mpreg_float(1.0);
    cr_assert_not(mpreg_value_equal(&i1, &f1), "int and float are different types");

    mpreg_value nan1 = mpreg_float(NAN), nan2 = mpreg_float(-NAN);
    cr_assert(mpreg_value_equal(&nan1, &nan2), "NaN equals NaN");
    cr_assert_not(mpreg_value_equal(&nan1, &f1));
    mpreg_value z = mpreg_float(0.0), nz = mpreg_float(-0.0);
    cr_assert(mpreg_value_equal(&z, &nz), "floats compare by value");

    mpreg_value s = mpreg_strn("ab", 2), b = mpreg_bin("ab", 2);
    cr_assert_not(mpreg_value_equal(&s, &b), "str and bin are different types");
    mpreg_value s2 = mpreg_strn("ab\0", 3);
    cr_assert_not(mpreg_value_equal(&s, &s2), "length matters");

    /* Maps: order does not matter, small or large. */
    for (int n = 3; n <= 40; n += 37) {
        mpreg_value m1 = mpreg_map(), m2 = mpreg_map();
        char key[16];
        for (int i = 0; i < n; i++) {
            snprintf(key, sizeof key, "k%d", i);
            mpreg_map_set(&m1, key, mpreg_int(i));
            snprintf(key, sizeof key, "k%d", n - 1 - i);
            mpreg_map_set(&m2, key, mpreg_int(n - 1 - i));
        }
        cr_assert(mpreg_value_equal(&m1, &m2), "maps of %d in reverse order", n);
        mpreg_map_set(&m2, "k1", mpreg_int(-1));
        cr_assert_not(mpreg_value_equal(&m1, &m2), "a changed value is seen");
        mpreg_map_set(&m2, "k1", mpreg_int(1));
        mpreg_map_set(&m2, "extra", mpreg_nil());
        cr_assert_not(mpreg_value_equal(&m1, &m2), "an extra key is seen");
        mpreg_map_set(&m1, "other", mpreg_nil());
        cr_assert_not(mpreg_value_equal(&m1, &m2), "same size, different keys");
        mpreg_value_free(&m1);
        mpreg_value_free(&m2);
    }

    /* Arrays: order matters. */
    mpreg_value a1 = mpreg_array(), a2 = mpreg_array();
    mpreg_array_push(&a1, mpreg_int(1));
    mpreg_array_push(&a1, mpreg_int(2));
    mpreg_array_push(&a2, mpreg_int(2));
    mpreg_array_push(&a2, mpreg_int(1));
    cr_assert_not(mpreg_value_equal(&a1, &a2));
    mpreg_value_free(&a1);
    mpreg_value_free(&a2);
    mpreg_value_free(&s);
    mpreg_value_free(&s2);
    mpreg_value_free(&b);
}

Test(value, clone_is_independent) {
    mpreg_value m = mpreg_map();
    mpreg_value inner = mpreg_array();
    mpreg_array_push(&inner, mpreg_str("x"));
    mpreg_array_push(&inner, mpreg_bin("\x01\x02", 2));
    mpreg_map_set(&m, "list", inner);
    mpreg_map_set(&m, "n", mpreg_int(5));

    mpreg_value c;
    cr_assert_eq(mpreg_value_clone(&m, &c), MPREG_OK);
    cr_assert(mpreg_value_equal(&m, &c));
    cr_assert_neq(c.u.map.items, m.u.map.items, "containers are copied");

    /* Changing the clone must not reach the original. */
    mpreg_value *clist = &c.u.map.items[0].val;
    clist->u.arr.items[0].u.str.ptr[0] = 'y';
    mpreg_array_push(clist, mpreg_nil());
    mpreg_map_set(&c, "n", mpreg_int(6));
    const mpreg_value *olist = mpreg_map_get(&m, "list");
    cr_assert_eq(olist->u.arr.len, 2);
    cr_assert_str_eq(olist->u.arr.items[0].u.str.ptr, "x");
    cr_assert_eq(mpreg_map_get(&m, "n")->u.i, 5);
    cr_assert_not(mpreg_value_equal(&m, &c));

    mpreg_value_free(&m);
    cr_assert_eq(mpreg_map_get(&c, "n")->u.i, 6, "the clone survives the original");
    mpreg_value_free(&c);
}

/* --- MessagePack round trips ------------------------------------------------ */

Test(msgpack, every_scalar_roundtrips) {
    const int64_t ints[] = {0,      1,      -1,      31,           -32,       127,      128,
                            -33,    -128,   -129,    255,          256,       65535,    65536,
                            -32768, -32769, 1 << 30, -(1LL << 40), INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        mpreg_value v = mpreg_int(ints[i]);
        roundtrip(&v);
    }
    const double floats[] = {0.0, -0.0, 1.5, -2.25e-300, 1e300, 5e-324, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) {
        mpreg_value v = mpreg_float(floats[i]);
        roundtrip(&v);
    }
    mpreg_value v = mpreg_nil();
    roundtrip(&v);
    v = mpreg_bool(true);
    roundtrip(&v);
    v = mpreg_bool(false);
    roundtrip(&v);

    /* Strings and binaries across the fix/8/16/32 length classes. */
    const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536, 70000};
    char *big = malloc(70000);
    for (size_t i = 0; i < 70000; i++) {
        big[i] = (char)('a' + i % 26);
    }
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        mpreg_value s = mpreg_strn(big, lens[i]);
        roundtrip(&s);
        mpreg_value_free(&s);
        mpreg_value b = mpreg_bin(big, lens[i]);
        roundtrip(&b);
        mpreg_value_free(&b);
    }
    free(big);
    mpreg_value u = mpreg_str("h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80");
    roundtrip(&u);
    mpreg_value_free(&u);
    mpreg_value nul = mpreg_strn("a\0b\0", 4);
    roundtrip(&nul);
    mpreg_value_free(&nul);
}

Test(msgpack, nested_containers_roundtrip) {
    mpreg_value root = mpreg_map();
    mpreg_value args = mpreg_array();
    for (int i = 0; i < 20; i++) { /* past fixarray */
        mpreg_array_push(&args, mpreg_int(i * 1000));
    }
    mpreg_value kw = mpreg_map();
    for (int i = 0; i < 20; i++) { /* past fixmap */
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        mpreg_value inner = mpreg_map();
        mpreg_map_set(&inner, "bin", mpreg_bin(key, strlen(key)));
        mpreg_map_set(&inner, "f", mpreg_float(i / 3.0));
        mpreg_map_set(&kw, key, inner);
    }
    mpreg_map_set(&root, "args", args);
    mpreg_map_set(&root, "kwargs", kw);
    mpreg_map_set(&root, "empty_a", mpreg_array());
    mpreg_map_set(&root, "empty_m", mpreg_map());
    mpreg_map_set(&root, "", mpreg_nil());
    roundtrip(&root);

    /* The deepest nesting every peer accepts. */
    mpreg_value deep = nested_arrays(MPREG_VALUE_DEFAULT_DEPTH);
    roundtrip(&deep);
    mpreg_value_free(&deep);
    mpreg_value_free(&root);
}

Test(msgpack, wire_forms) {
    /* Encoding is canonical msgpack: smallest int form, float64 always. */
    mp_buf buf = MP_BUF_INIT;
    mpreg_value m = mpreg_map();
    mpreg_map_set(&m, "a", mpreg_int(-1));
    mpreg_map_set(&m, "b", mpreg_float(1.5));
    cr_assert_eq(mpreg_value_encode(&m, &buf), MPREG_OK);
    const uint8_t want[] = {0x82, 0xa1, 'a', 0xff, 0xa1, 'b', 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(buf.len, sizeof want);
    cr_assert_arr_eq(buf.data, want, sizeof want);

    /* Encoding appends. */
    mpreg_value n = mpreg_nil();
    cr_assert_eq(mpreg_value_encode(&n, &buf), MPREG_OK);
    cr_assert_eq(buf.len, sizeof want + 1);
    cr_assert_eq(buf.data[sizeof want], 0xc0);
    mpreg_value_free(&m);
    mp_buf_free(&buf);

    /* Other peers' forms decode too: float32, positive int8, str8 for short. */
    mpreg_value v;
    cr_assert_eq(mpreg_value_decode("\xca\x3f\xc0\x00\x00", 5, NULL, &v), MPREG_OK);
    cr_assert_eq(v.type, MPREG_FLOAT, "float32 decodes to FLOAT");
    cr_assert_eq(v.u.f, 1.5);
    cr_assert_eq(mpreg_value_decode("\xd0\x05", 2, NULL, &v), MPREG_OK);
    cr_assert_eq(v.type, MPREG_INT);
    cr_assert_eq(v.u.i, 5);
    cr_assert_eq(mpreg_value_decode("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9, NULL, &v), MPREG_OK);
    cr_assert_eq(v.u.i, INT64_MAX);
    cr_assert_eq(mpreg_value_decode("\xd9\x02hi", 4, NULL, &v), MPREG_OK);
    cr_assert_eq(v.type, MPREG_STR);
    cr_assert_str_eq(v.u.str.ptr, "hi");
    mpreg_value_free(&v);
}

/* --- MessagePack decode errors ------------------------------------------------ */

Test(msgpack_errors, truncated_at_every_cut) {
    mpreg_value root = mpreg_map();
    mpreg_value arr = mpreg_array();
    mpreg_array_push(&arr, mpreg_str("some text"));
    mpreg_array_push(&arr, mpreg_bin("\x01\x02\x03", 3));
    mpreg_array_push(&arr, mpreg_float(3.25));
    mpreg_array_push(&arr, mpreg_int(-100000));
    mpreg_map_set(&root, "a", arr);
    mpreg_map_set(&root, "b", mpreg_int(INT64_MAX));
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mpreg_value_encode(&root, &buf), MPREG_OK);
    for (size_t cut = 0; cut < buf.len; cut++) {
        cr_assert_eq(decode_bytes((const char *)buf.data, cut, NULL), MPREG_E_TRUNCATED,
                     "cut at %zu of %zu", cut, buf.len);
    }
    cr_assert_eq(decode_bytes((const char *)buf.data, buf.len, NULL), MPREG_OK);
    mp_buf_free(&buf);
    mpreg_value_free(&root);
    cr_assert_eq(decode_bytes(NULL, 0, NULL), MPREG_E_TRUNCATED, "empty input");
}

Test(msgpack_errors, trailing) {
    cr_assert_eq(DECODE_LIT("\xc0\xc0", NULL), MPREG_E_TRAILING);
    cr_assert_eq(DECODE_LIT("\x91\x01\x02", NULL), MPREG_E_TRAILING);
    cr_assert_eq(DECODE_LIT("\xa1x\xff", NULL), MPREG_E_TRAILING);
}

Test(msgpack_errors, bad_map_keys) {
    cr_assert_eq(DECODE_LIT("\x81\x01\x02", NULL), MPREG_E_DECODE, "int key");
    cr_assert_eq(DECODE_LIT("\x81\xc4\x01k\x02", NULL), MPREG_E_DECODE, "bin key");
    cr_assert_eq(DECODE_LIT("\x81\xc0\x02", NULL), MPREG_E_DECODE, "nil key");
    cr_assert_eq(DECODE_LIT("\x82\xa1"
                            "a\x01\xa1"
                            "a\x02",
                            NULL),
                 MPREG_E_DECODE, "dup key");
    cr_assert_eq(DECODE_LIT("\x82\xa1"
                            "a\x01\xa1"
                            "b\x02",
                            NULL),
                 MPREG_OK);

    /* A large map checks duplicates through its hash index. */
    mp_buf buf = MP_BUF_INIT;
    uint8_t head[] = {0xde, 0x00, 40};
    mp_buf_append(&buf, head, sizeof head);
    for (int i = 0; i < 40; i++) {
        char entry[16];
        int n = snprintf(entry + 1, sizeof entry - 1, "k%02d", i == 39 ? 7 : i);
        entry[0] = (char)(0xa0 | n);
        entry[n + 1] = (char)0xc0;
        mp_buf_append(&buf, entry, (size_t)n + 2);
    }
    cr_assert_eq(decode_bytes((const char *)buf.data, buf.len, NULL), MPREG_E_DECODE);
    /* The last entry is a3 'k' '0' '7' c0: make its key "k99". */
    buf.data[buf.len - 3] = '9';
    buf.data[buf.len - 2] = '9';
    cr_assert_eq(decode_bytes((const char *)buf.data, buf.len, NULL), MPREG_OK);
    mp_buf_free(&buf);
}

Test(msgpack_errors, too_deep_on_decode) {
    char bytes[200];
    /* n nested arrays around nil: 0x91 x n-1, then 0x91 0xc0. */
    for (int n = 30; n < (int)sizeof bytes; n++) {
        memset(bytes, 0x91, (size_t)n);
        bytes[n] = (char)0xc0;
        mpreg_err want = n <= MPREG_VALUE_DEFAULT_DEPTH ? MPREG_OK : MPREG_E_TOO_DEEP;
        cr_assert_eq(decode_bytes(bytes, (size_t)n + 1, NULL), want, "depth %d", n);
    }
    /* Maps count the same; an empty innermost container counts too. */
    cr_assert_eq(DECODE_LIT("\x81\xa1k\x81\xa1k\x90", &((mpreg_value_limits){.max_depth = 3})),
                 MPREG_OK);
    cr_assert_eq(DECODE_LIT("\x81\xa1k\x81\xa1k\x91\x90", &((mpreg_value_limits){.max_depth = 3})),
                 MPREG_E_TOO_DEEP);
    cr_assert_eq(DECODE_LIT("\x01", &((mpreg_value_limits){.max_depth = 1})), MPREG_OK);
    /* A limit above the hard cap is the hard cap. */
    memset(bytes, 0x91, 33);
    bytes[33] = (char)0xc0;
    cr_assert_eq(decode_bytes(bytes, 34, &((mpreg_value_limits){.max_depth = 1000})),
                 MPREG_E_TOO_DEEP);
}

Test(msgpack_errors, too_deep_on_encode) {
    mpreg_value ok = nested_arrays(MPREG_VALUE_DEFAULT_DEPTH);
    mpreg_value deep = nested_arrays(MPREG_VALUE_DEFAULT_DEPTH + 1);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mpreg_value_encode(&ok, &buf), MPREG_OK);
    size_t len = buf.len;
    cr_assert_eq(mpreg_value_encode(&deep, &buf), MPREG_E_TOO_DEEP);
    cr_assert_eq(buf.len, len, "a failed encode leaves the buffer as it was");

    mpreg_value m = mpreg_map();
    mpreg_map_set(&m, "x", deep);
    cr_assert_eq(mpreg_value_encode(&m, &buf), MPREG_E_TOO_DEEP, "maps count too");
    mpreg_value_free(&m);
    mpreg_value_free(&ok);
    mp_buf_free(&buf);
}

Test(msgpack_errors, too_many_items) {
    mpreg_value_limits lim = {.max_items = 5};
    cr_assert_eq(DECODE_LIT("\x95\x01\x02\x03\x04\x05", &lim), MPREG_OK);
    cr_assert_eq(DECODE_LIT("\x96\x01\x02\x03\x04\x05\x06", &lim), MPREG_E_TOO_LARGE);
    /* Totals over the whole value: 2 + 2 + 2 = 6 items. */
    cr_assert_eq(DECODE_LIT("\x92\x92\x01\x02\x92\x03\x04", &lim), MPREG_E_TOO_LARGE);
    /* Map entries count once each. */
    cr_assert_eq(DECODE_LIT("\x85\xa1"
                            "a\x01\xa1"
                            "b\x01\xa1"
                            "c\x01\xa1"
                            "d\x01\xa1"
                            "e\x01",
                            &lim),
                 MPREG_OK);
    /* A header claiming 4 billion elements is refused before anything is
     * allocated, under the default limit. */
    cr_assert_eq(DECODE_LIT("\xdd\xff\xff\xff\xff\x01", NULL), MPREG_E_TOO_LARGE);
    cr_assert_eq(DECODE_LIT("\xdf\xff\xff\xff\xff\x01", NULL), MPREG_E_TOO_LARGE);
    /* Within the limit but cut short: truncated, not a huge allocation. */
    cr_assert_eq(DECODE_LIT("\xdd\x00\x0f\x42\x40\x01", NULL), MPREG_E_TRUNCATED);
}

Test(msgpack_errors, too_many_bytes) {
    mpreg_value_limits lim = {.max_bytes = 4};
    cr_assert_eq(DECODE_LIT("\xa4"
                            "abcd",
                            &lim),
                 MPREG_OK);
    cr_assert_eq(DECODE_LIT("\xa5"
                            "abcde",
                            &lim),
                 MPREG_E_TOO_LARGE);
    cr_assert_eq(DECODE_LIT("\xc4\x05"
                            "abcde",
                            &lim),
                 MPREG_E_TOO_LARGE, "bin counts");
    cr_assert_eq(DECODE_LIT("\x92\xa2"
                            "ab\xc4\x03"
                            "abc",
                            &lim),
                 MPREG_E_TOO_LARGE, "totals");
    cr_assert_eq(DECODE_LIT("\x81\xa3"
                            "key\xa2"
                            "va",
                            &lim),
                 MPREG_E_TOO_LARGE, "keys count");
    cr_assert_eq(DECODE_LIT("\xdb\xff\xff\xff\xff"
                            "a",
                            NULL),
                 MPREG_E_TOO_LARGE);
    cr_assert_eq(DECODE_LIT("\xc6\x00\x00\x10\x00"
                            "a",
                            NULL),
                 MPREG_E_TRUNCATED);
}

Test(msgpack_errors, uint64_overflow) {
    cr_assert_eq(DECODE_LIT("\xcf\x80\x00\x00\x00\x00\x00\x00\x00", NULL), MPREG_E_RANGE);
    cr_assert_eq(DECODE_LIT("\xcf\xff\xff\xff\xff\xff\xff\xff\xff", NULL), MPREG_E_RANGE);
    cr_assert_eq(DECODE_LIT("\x91\xcf\xff\xff\xff\xff\xff\xff\xff\xff", NULL), MPREG_E_RANGE);
    cr_assert_eq(DECODE_LIT("\xd3\x80\x00\x00\x00\x00\x00\x00\x00", NULL), MPREG_OK, "INT64_MIN");
}

Test(msgpack_errors, ext_and_reserved) {
    cr_assert_eq(DECODE_LIT("\xd4\x01\x00", NULL), MPREG_E_DECODE, "fixext1");
    cr_assert_eq(DECODE_LIT("\xd8\x01"
                            "0123456789abcdef",
                            NULL),
                 MPREG_E_DECODE, "fixext16");
    cr_assert_eq(DECODE_LIT("\xc7\x01\x05x", NULL), MPREG_E_DECODE, "ext8");
    cr_assert_eq(DECODE_LIT("\xd6\xff\x00\x00\x00\x00", NULL), MPREG_E_DECODE, "timestamp");
    cr_assert_eq(DECODE_LIT("\x91\xc7\x01\x05x", NULL), MPREG_E_DECODE, "nested ext");
    cr_assert_eq(DECODE_LIT("\xc1", NULL), MPREG_E_DECODE, "never-used byte");
}

Test(msgpack_errors, bad_utf8) {
    cr_assert_eq(DECODE_LIT("\xa1\xff", NULL), MPREG_E_DECODE);
    cr_assert_eq(DECODE_LIT("\xa2\xc0\x80", NULL), MPREG_E_DECODE, "overlong NUL");
    cr_assert_eq(DECODE_LIT("\xa3\xed\xa0\x80", NULL), MPREG_E_DECODE, "surrogate");
    cr_assert_eq(DECODE_LIT("\x81\xa1\x80\x01", NULL), MPREG_E_DECODE, "key");
    cr_assert_eq(DECODE_LIT("\xa4\xf4\x8f\xbf\xbf", NULL), MPREG_OK, "U+10FFFF");

    mpreg_value bad = mpreg_strn("\xff", 1);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mpreg_value_encode(&bad, &buf), MPREG_E_INVALID);
    cr_assert_eq(buf.len, 0);
    mpreg_value_free(&bad);
    mp_buf_free(&buf);
}

Test(msgpack_errors, first_problem_wins) {
    /* Reported in input order: garbage before a cut is garbage, a cut
     * before garbage is a cut. */
    cr_assert_eq(DECODE_LIT("\x92\xc1\x01", NULL), MPREG_E_DECODE);
    cr_assert_eq(DECODE_LIT("\x92\x01", NULL), MPREG_E_TRUNCATED);
    cr_assert_eq(DECODE_LIT("\x92\x01\xc1", NULL), MPREG_E_DECODE);
    cr_assert_eq(DECODE_LIT("\x93\x01\xa5"
                            "ab",
                            NULL),
                 MPREG_E_TRUNCATED);
}

/* --- JSON ------------------------------------------------------------------- */

Test(json, every_type_renders) {
    json_is(&(mpreg_value){.type = MPREG_NIL}, false, "null");
    mpreg_value v = mpreg_bool(true);
    json_is(&v, false, "true");
    v = mpreg_int(INT64_MIN);
    json_is(&v, false, "-9223372036854775808");
    v = mpreg_float(1.5);
    json_is(&v, false, "1.5");
    v = mpreg_float(2.0);
    json_is(&v, false, "2.0");
    v = mpreg_float(NAN);
    json_is(&v, false, "null");
    v = mpreg_float(-INFINITY);
    json_is(&v, false, "null");
    v = mpreg_strn("a\0\"\n", 4);
    json_is(&v, false, "\"a\\u0000\\\"\\n\"");
    mpreg_value_free(&v);
    v = mpreg_bin("\x00\x01\x02\xff", 4);
    json_is(&v, false, "{\"$bin\":\"AAEC/w==\"}");
    mpreg_value_free(&v);
    v = mpreg_bin(NULL, 0);
    json_is(&v, false, "{\"$bin\":\"\"}");
    v = mpreg_strn("ok\xff!", 4);
    json_is(&v, false, "\"ok\xef\xbf\xbd!\"");
    mpreg_value_free(&v);

    mpreg_value m = mpreg_map();
    mpreg_map_set(&m, "z", mpreg_int(1));
    mpreg_value arr = mpreg_array();
    mpreg_array_push(&arr, mpreg_bool(false));
    mpreg_array_push(&arr, mpreg_nil());
    mpreg_map_set(&m, "a", arr);
    mpreg_map_set(&m, "e", mpreg_map());
    json_is(&m, false, "{\"z\":1,\"a\":[false,null],\"e\":{}}");
    json_is(&m, true, "{\n  \"z\": 1,\n  \"a\": [\n    false,\n    null\n  ],\n  \"e\": {}\n}");
    mpreg_value_free(&m);
}

Test(json, every_type_roundtrips) {
    mpreg_value m = mpreg_map();
    mpreg_map_set(&m, "nil", mpreg_nil());
    mpreg_map_set(&m, "t", mpreg_bool(true));
    mpreg_map_set(&m, "f", mpreg_bool(false));
    mpreg_map_set(&m, "i", mpreg_int(INT64_MAX));
    mpreg_map_set(&m, "neg", mpreg_int(INT64_MIN));
    mpreg_map_set(&m, "float", mpreg_float(0.1));
    mpreg_map_set(&m, "whole float", mpreg_float(3.0));
    mpreg_map_set(&m, "tiny", mpreg_float(5e-324));
    mpreg_map_set(&m, "nul", mpreg_strn("a\0b", 3));
    mpreg_map_set(&m, "unicode \xc3\xa9", mpreg_str("h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80"));
    mpreg_map_set(&m, "bin", mpreg_bin("\x00\xff\x10\x80\x7f", 5));
    mpreg_map_set(&m, "bin1", mpreg_bin("\xfe", 1));
    mpreg_map_set(&m, "bin0", mpreg_bin(NULL, 0));
    mpreg_value arr = mpreg_array();
    mpreg_array_push(&arr, mpreg_array());
    mpreg_array_push(&arr, mpreg_map());
    mpreg_map_set(&m, "arr", arr);
    json_roundtrip(&m);
    for (size_t i = 0; i < m.u.map.len; i++) {
        json_roundtrip(&m.u.map.items[i].val); /* each type at the top level too */
    }
    mpreg_value deep = nested_arrays(MPREG_VALUE_DEFAULT_DEPTH);
    json_roundtrip(&deep);
    mpreg_value_free(&deep);
    mpreg_value_free(&m);
}

Test(json, parse_numbers_and_order) {
    mpreg_value v = from_json_ok("1");
    cr_assert_eq(v.type, MPREG_INT);
    v = from_json_ok("1.0");
    cr_assert_eq(v.type, MPREG_FLOAT);
    v = from_json_ok("1e2");
    cr_assert_eq(v.type, MPREG_FLOAT);
    cr_assert_eq(v.u.f, 100.0);
    v = from_json_ok("-9223372036854775808");
    cr_assert_eq(v.type, MPREG_INT);
    cr_assert_eq(v.u.i, INT64_MIN);
    /* Integers beyond int64 become floats, wherever they are. */
    v = from_json_ok("9223372036854775808");
    cr_assert_eq(v.type, MPREG_FLOAT);
    cr_assert_eq(v.u.f, 9223372036854775808.0);

    v = from_json_ok("[\"99999999999999999999\", -99999999999999999999, 7]");
    cr_assert_eq(v.u.arr.items[0].type, MPREG_STR, "digits in strings are left alone");
    cr_assert_str_eq(v.u.arr.items[0].u.str.ptr, "99999999999999999999");
    cr_assert_eq(v.u.arr.items[1].type, MPREG_FLOAT);
    cr_assert_eq(v.u.arr.items[1].u.f, -1e20);
    cr_assert_eq(v.u.arr.items[2].type, MPREG_INT);
    mpreg_value_free(&v);

    v = from_json_ok("  {\"b\": 1, \"a\": 2, \"c\": \"x\\u0000y\"}  ");
    cr_assert_eq(v.u.map.len, 3);
    cr_assert_str_eq(v.u.map.items[0].key.u.str.ptr, "b", "document order is kept");
    cr_assert_str_eq(v.u.map.items[1].key.u.str.ptr, "a");
    cr_assert_eq(mpreg_map_get(&v, "c")->u.str.len, 3);
    json_is(&v, false, "{\"b\":1,\"a\":2,\"c\":\"x\\u0000y\"}");
    mpreg_value_free(&v);

    v = from_json_ok("\"\\ud83d\\ude00\"");
    cr_assert_str_eq(v.u.str.ptr, "\xf0\x9f\x98\x80", "surrogate pairs decode");
    mpreg_value_free(&v);

    /* Not NUL-terminated: len rules. */
    mpreg_value w;
    cr_assert_eq(mpreg_value_from_json("[1]garbage", 3, &w, NULL, 0), MPREG_OK);
    cr_assert_eq(w.u.arr.len, 1);
    mpreg_value_free(&w);
}

Test(json, bin_objects) {
    mpreg_value v = from_json_ok("{\"$bin\": \"aGk=\"}");
    cr_assert_eq(v.type, MPREG_BIN);
    cr_assert_eq(v.u.bin.len, 2);
    cr_assert_eq(memcmp(v.u.bin.ptr, "hi", 2), 0);
    mpreg_value_free(&v);
    v = from_json_ok("{\"$bin\": \"\"}");
    cr_assert_eq(v.type, MPREG_BIN);
    cr_assert_eq(v.u.bin.len, 0);
    /* With another key it is just a map. */
    v = from_json_ok("{\"$bin\": \"!!\", \"x\": 1}");
    cr_assert_eq(v.type, MPREG_MAP);
    mpreg_value_free(&v);

    const char *bad[] = {"{\"$bin\": \"aGk\"}",  "{\"$bin\": \"aG=k\"}", "{\"$bin\": \"a===\"}",
                         "{\"$bin\": \"aGl=\"}", "{\"$bin\": \"aR==\"}", "{\"$bin\": \"aG k\"}",
                         "{\"$bin\": 5}",        "{\"$bin\": null}",     "[{\"$bin\": \"====\"}]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[128];
        mpreg_value out = mpreg_int(1);
        cr_assert_eq(mpreg_value_from_json(bad[i], strlen(bad[i]), &out, err, sizeof err),
                     MPREG_E_JSON, "%s", bad[i]);
        cr_assert_eq(out.type, MPREG_NIL);
        cr_assert_not_null(strstr(err, "$bin"), "%s", err);
    }
}

static void json_fails(const char *text, mpreg_err want, const char *msg_prefix) {
    char err[160];
    mpreg_value out = mpreg_int(1);
    mpreg_err rc = mpreg_value_from_json(text, strlen(text), &out, err, sizeof err);
    cr_assert_eq(rc, want, "%s -> %d (%s)", text, rc, err);
    cr_assert_eq(out.type, MPREG_NIL);
    cr_assert_eq(strncmp(err, msg_prefix, strlen(msg_prefix)), 0, "%s: got \"%s\"", text, err);
}

Test(json, errors_with_position) {
    json_fails("[1,\n  x]", MPREG_E_JSON, "line 2 column 3: invalid token");
    json_fails("[1] 2", MPREG_E_JSON, "line 1 column 5: end of file expected");
    json_fails("", MPREG_E_JSON, "line 1 column 0:");
    json_fails("{\"a\": 1, \"a\": 2}", MPREG_E_JSON, "line 1 column 12: duplicate object key");
    json_fails("{\"a\\u0000\": 1}", MPREG_E_JSON, "line 1 column ");
    json_fails("[1e400]", MPREG_E_JSON, "line 1 column 6: real number overflow");
    json_fails("\"\\ud800\"", MPREG_E_JSON, "line 1 column ");
    /* After a widened big integer, positions still point into our text. */
    json_fails("[99999999999999999999,\n 1, x]", MPREG_E_JSON, "line 2 column 5: invalid token");
    json_fails("[99999999999999999999, 99999999999999999999, x]", MPREG_E_JSON,
               "line 1 column 46: invalid token");
    json_fails("[1.000000000000000000, 1.000000000000000000, x]", MPREG_E_JSON,
               "line 1 column 46: invalid token");

    char deep[80];
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    deep[66] = '\0';
    json_fails(deep, MPREG_E_TOO_DEEP, "nesting deeper");
    deep[65] = '\0';
    memmove(deep, deep + 1, 65); /* 32 levels are fine */
    mpreg_value v = from_json_ok(deep);
    mpreg_value_free(&v);

    mpreg_value out;
    cr_assert_eq(mpreg_value_from_json("nul", 3, &out, NULL, 0), MPREG_E_JSON, "no errbuf");
}

/* --- seeded property test ------------------------------------------------------ */

typedef struct gen {
    mp_xoshiro rng;
    bool finite; /* does the value hold only finite floats */
} gen;

static uint64_t below(gen *g, uint64_t n) {
    return mp_rng_below(&g->rng.rng, n);
}

/* Appends one random code point as UTF-8; NUL only when allowed. */
static void gen_utf8(gen *g, mp_buf *b, bool allow_nul) {
    uint32_t cp;
    switch (below(g, 4)) {
    case 0:
    case 1:
        cp = (uint32_t)below(g, 0x80);
        break;
    case 2:
        cp = 0x80 + (uint32_t)below(g, 0x800 - 0x80);
        break;
    default:
        cp = below(g, 2) ? 0x800 + (uint32_t)below(g, 0xd800 - 0x800)
                         : 0x10000 + (uint32_t)below(g, 0x110000 - 0x10000);
        break;
    }
    if (cp == 0 && !allow_nul) {
        cp = 'n';
    }
    if (cp == '$') {
        cp = 'd'; /* a lone "$bin" key would read back as binary */
    }
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (uint8_t)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = (uint8_t)(0xc0 | cp >> 6), u[1] = (uint8_t)(0x80 | (cp & 63)), n = 2;
    } else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xe0 | cp >> 12), u[1] = (uint8_t)(0x80 | ((cp >> 6) & 63));
        u[2] = (uint8_t)(0x80 | (cp & 63)), n = 3;
    } else {
        u[0] = (uint8_t)(0xf0 | cp >> 18), u[1] = (uint8_t)(0x80 | ((cp >> 12) & 63));
        u[2] = (uint8_t)(0x80 | ((cp >> 6) & 63)), u[3] = (uint8_t)(0x80 | (cp & 63)), n = 4;
    }
    mp_buf_append(b, u, n);
}

static mpreg_value gen_str(gen *g, bool allow_nul) {
    mp_buf b = MP_BUF_INIT;
    size_t n = below(g, 4) ? below(g, 12) : below(g, 300);
    for (size_t i = 0; i < n; i++) {
        gen_utf8(g, &b, allow_nul);
    }
    mpreg_value v = mpreg_strn((const char *)b.data, b.len);
    mp_buf_free(&b);
    return v;
}

static mpreg_value gen_value(gen *g, int depth) {
    uint64_t kind = below(g, depth < 4 ? 9 : 7);
    switch (kind) {
    case 0:
        return mpreg_nil();
    case 1:
        return mpreg_bool(below(g, 2));
    case 2: {
        uint64_t r = mp_rng_u64(&g->rng.rng);
        /* Mostly small numbers, where the msgpack encodings change. */
        return mpreg_int(below(g, 2) ? (int64_t)r : (int64_t)(r % 70000) - 35000);
    }
    case 3: {
        double f;
        if (below(g, 2)) {
            uint64_t bits = mp_rng_u64(&g->rng.rng);
            memcpy(&f, &bits, sizeof f);
        } else {
            f = (double)((int64_t)below(g, 2000) - 1000) / 8.0;
        }
        g->finite = g->finite && isfinite(f);
        return mpreg_float(f);
    }
    case 4:
        return gen_str(g, true);
    case 5: {
        uint8_t data[64];
        size_t n = below(g, sizeof data);
        mp_rng_fill(&g->rng.rng, data, n);
        return mpreg_bin(data, n);
    }
    case 6:
    case 7: {
        mpreg_value a = mpreg_array();
        size_t n = below(g, 6);
        for (size_t i = 0; i < n; i++) {
            mpreg_array_push(&a, gen_value(g, depth + 1));
        }
        return a;
    }
    default: {
        mpreg_value m = mpreg_map();
        size_t n = below(g, 20);
        for (size_t i = 0; i < n; i++) {
            mpreg_value k = gen_str(g, false);
            mpreg_map_setn(&m, k.u.str.ptr, k.u.str.len, gen_value(g, depth + 1));
            mpreg_value_free(&k);
        }
        return m;
    }
    }
}

/* Same entries, reversed: equal under map semantics. */
static void reverse_maps(mpreg_value *v) {
    if (v->type == MPREG_ARRAY) {
        for (size_t i = 0; i < v->u.arr.len; i++) {
            reverse_maps(&v->u.arr.items[i]);
        }
    } else if (v->type == MPREG_MAP) {
        size_t n = v->u.map.len;
        for (size_t i = 0; i < n / 2; i++) {
            mpreg_kv t = v->u.map.items[i];
            v->u.map.items[i] = v->u.map.items[n - 1 - i];
            v->u.map.items[n - 1 - i] = t;
        }
        for (size_t i = 0; i < n; i++) {
            reverse_maps(&v->u.map.items[i].val);
        }
    }
}

Test(property, random_values_roundtrip) {
    gen g;
    mp_xoshiro_seed(&g.rng, 0x5eed2024);
    int json_legs = 0;
    mp_buf buf = MP_BUF_INIT;
    for (int i = 0; i < 2000; i++) {
        g.finite = true;
        mpreg_value v = gen_value(&g, 0);

        mp_buf_clear(&buf);
        cr_assert_eq(mpreg_value_encode(&v, &buf), MPREG_OK, "value %d", i);
        mpreg_value back;
        cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &back), MPREG_OK, "value %d", i);
        cr_assert(mpreg_value_equal(&v, &back), "msgpack round trip of value %d", i);

        mpreg_value copy;
        cr_assert_eq(mpreg_value_clone(&back, &copy), MPREG_OK);
        reverse_maps(&copy);
        cr_assert(mpreg_value_equal(&v, &copy), "map order ignored, value %d", i);

        if (g.finite) {
            json_legs++;
            char *text = mpreg_value_to_json(&v, i % 2);
            cr_assert_not_null(text);
            mpreg_value j;
            char err[128];
            mpreg_err rc = mpreg_value_from_json(text, strlen(text), &j, err, sizeof err);
            cr_assert_eq(rc, MPREG_OK, "value %d: %s in %s", i, err, text);
            cr_assert(mpreg_value_equal(&v, &j), "JSON round trip of value %d: %s", i, text);
            mpreg_value_free(&j);
            free(text);
        }
        mpreg_value_free(&copy);
        mpreg_value_free(&back);
        mpreg_value_free(&v);
    }
    mp_buf_free(&buf);
    cr_assert_gt(json_legs, 1000, "the JSON leg ran for most values (%d)", json_legs);
}
