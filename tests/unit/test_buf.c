/* test_buf.c - the growable byte buffer. */
#include "core/buf.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdint.h>
#include <string.h>

Test(buf, init_and_free) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    cr_assert_eq(mp_buf_append(&b, "x", 1), MPREG_OK);
    mp_buf_free(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
    mp_buf_free(&b); /* freeing twice is harmless */
    mp_buf_init(&b);
    cr_assert_null(b.data);
}

Test(buf, append_keeps_order_and_contents) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "hello", 5), MPREG_OK);
    cr_assert_eq(mp_buf_append(&b, ", ", 2), MPREG_OK);
    cr_assert_eq(mp_buf_append(&b, "world", 5), MPREG_OK);
    cr_assert_eq(b.len, 12);
    cr_assert_geq(b.cap, b.len);
    cr_assert(memcmp(b.data, "hello, world", 12) == 0);
    mp_buf_free(&b);
}

Test(buf, append_nothing) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, NULL, 0), MPREG_OK);
    cr_assert_eq(b.len, 0);
    cr_assert_null(b.data, "an empty append allocates nothing");
    mp_buf_free(&b);
}

Test(buf, large_appends_grow_geometrically) {
    mp_buf b = MP_BUF_INIT;
    uint8_t chunk[1000];
    size_t reallocs = 0;
    size_t last_cap = 0;
    for (int i = 0; i < 2000; i++) {
        memset(chunk, i & 0xff, sizeof chunk);
        cr_assert_eq(mp_buf_append(&b, chunk, sizeof chunk), MPREG_OK);
        if (b.cap != last_cap) {
            reallocs++;
            last_cap = b.cap;
        }
    }
    cr_assert_eq(b.len, 2000 * sizeof chunk);
    cr_assert_leq(reallocs, 20, "amortised O(1) appends: %zu reallocations", reallocs);
    for (int i = 0; i < 2000; i++) {
        cr_assert_eq(b.data[(size_t)i * sizeof chunk], (uint8_t)(i & 0xff));
        cr_assert_eq(b.data[(size_t)i * sizeof chunk + sizeof chunk - 1], (uint8_t)(i & 0xff));
    }
    mp_buf_free(&b);
}

Test(buf, reserve_makes_room_without_changing_len) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "abc", 3), MPREG_OK);
    cr_assert_eq(mp_buf_reserve(&b, 1000), MPREG_OK);
    cr_assert_eq(b.len, 3);
    cr_assert_geq(b.cap, 1003);
    uint8_t *data = b.data;
    cr_assert_eq(mp_buf_append(&b, data, 0), MPREG_OK);
    char fill[1000];
    memset(fill, 'q', sizeof fill);
    cr_assert_eq(mp_buf_append(&b, fill, sizeof fill), MPREG_OK);
    cr_assert_eq(b.data, data, "reserved room is used without reallocating");
    cr_assert(memcmp(b.data, "abcqqq", 6) == 0);
    cr_assert_eq(mp_buf_reserve(&b, 0), MPREG_OK);
    mp_buf_free(&b);
}

Test(buf, reserve_overflow_is_refused) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "abc", 3), MPREG_OK);
    cr_assert_eq(mp_buf_reserve(&b, SIZE_MAX), MPREG_E_TOO_LARGE);
    cr_assert_eq(mp_buf_reserve(&b, SIZE_MAX - 2), MPREG_E_TOO_LARGE);
    cr_assert_eq(mp_buf_append(&b, "d", SIZE_MAX - 1), MPREG_E_TOO_LARGE);
    cr_assert_eq(b.len, 3, "a refused reserve changes nothing");
    cr_assert(memcmp(b.data, "abc", 3) == 0);
    mp_buf_free(&b);
}

Test(buf, u32be) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append_u32be(&b, 0x01020304u), MPREG_OK);
    cr_assert_eq(mp_buf_append_u32be(&b, 0xffffffffu), MPREG_OK);
    cr_assert_eq(mp_buf_append_u32be(&b, 0), MPREG_OK);
    const uint8_t want[] = {1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
    cr_assert_eq(b.len, sizeof want);
    cr_assert_arr_eq(b.data, want, sizeof want);
    cr_assert_eq(mp_get_u32be(b.data), 0x01020304u);
    cr_assert_eq(mp_get_u32be(b.data + 4), 0xffffffffu);
    cr_assert_eq(mp_get_u32be(b.data + 8), 0);
    uint8_t p[4];
    const uint32_t samples[] = {0, 1, 0x80, 0xff, 0x100, 0x800000, 0x80000000u, 0xdeadbeefu};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        mp_put_u32be(p, samples[i]);
        cr_assert_eq(mp_get_u32be(p), samples[i]);
        cr_assert_eq(p[0], (uint8_t)(samples[i] >> 24), "most significant byte first");
    }
    mp_buf_free(&b);
}

Test(buf, consume) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "0123456789", 10), MPREG_OK);
    size_t cap = b.cap;
    mp_buf_consume(&b, 0);
    cr_assert_eq(b.len, 10);
    mp_buf_consume(&b, 3);
    cr_assert_eq(b.len, 7);
    cr_assert(memcmp(b.data, "3456789", 7) == 0);
    mp_buf_consume(&b, 6);
    cr_assert_eq(b.len, 1);
    cr_assert_eq(b.data[0], '9');
    mp_buf_consume(&b, 1);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(mp_buf_append(&b, "ab", 2), MPREG_OK);
    mp_buf_consume(&b, 5); /* more than len: everything goes */
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, cap, "consuming keeps the allocation");
    mp_buf_consume(&b, 1); /* on an empty buffer: nothing to do */
    cr_assert_eq(b.len, 0);
    mp_buf_free(&b);
    mp_buf_consume(&b, 0); /* never allocated */
}

Test(buf, clear_keeps_allocation) {
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "abc", 3), MPREG_OK);
    uint8_t *data = b.data;
    size_t cap = b.cap;
    mp_buf_clear(&b);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.data, data);
    cr_assert_eq(b.cap, cap);
    cr_assert_eq(mp_buf_append(&b, "xy", 2), MPREG_OK);
    cr_assert(memcmp(b.data, "xy", 2) == 0);
    mp_buf_free(&b);
}

Test(buf, msgpack_write_target) {
    mp_buf b = MP_BUF_INIT;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, mp_buf_msgpack_write);
    cr_assert_eq(msgpack_pack_array(&pk, 2), 0);
    cr_assert_eq(msgpack_pack_int(&pk, 1), 0);
    cr_assert_eq(msgpack_pack_str_with_body(&pk, "hi", 2), 0);
    const uint8_t want[] = {0x92, 0x01, 0xa2, 'h', 'i'};
    cr_assert_eq(b.len, sizeof want);
    cr_assert_arr_eq(b.data, want, sizeof want);
    cr_assert_eq(mp_buf_msgpack_write(&b, "", 0), 0);
    mp_buf_free(&b);
}

Test(buf, bytes_free_is_buf_free) {
    mpreg_bytes b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "abc", 3), MPREG_OK);
    mpreg_bytes_free(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.cap, 0);
}
