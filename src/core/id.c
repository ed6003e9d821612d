/* id.c - 128-bit random identifiers. */
#include "core/id.h"

#include <string.h>

mp_id mp_id_new(mp_rng *rng) {
    mp_id id;
    do {
        mp_rng_fill(rng, id.bytes, sizeof id.bytes);
    } while (mp_id_is_zero(&id));
    return id;
}

bool mp_id_is_zero(const mp_id *id) {
    static const mp_id zero = {{0}};
    return memcmp(id->bytes, zero.bytes, MP_ID_LEN) == 0;
}

bool mp_id_equal(const mp_id *a, const mp_id *b) {
    return memcmp(a->bytes, b->bytes, MP_ID_LEN) == 0;
}

int mp_id_cmp(const mp_id *a, const mp_id *b) {
    return memcmp(a->bytes, b->bytes, MP_ID_LEN);
}

void mp_id_to_hex(const mp_id *id, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < MP_ID_LEN; i++) {
        out[2 * i] = digits[id->bytes[i] >> 4];
        out[2 * i + 1] = digits[id->bytes[i] & 15];
    }
    out[MP_ID_HEX_LEN] = '\0';
}

static int mp_hex_digit(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

mpreg_err mp_id_from_hex(const char *hex, size_t len, mp_id *out) {
    if (len != MP_ID_HEX_LEN) {
        return MPREG_E_INVALID;
    }
    for (int i = 0; i < MP_ID_LEN; i++) {
        int hi = mp_hex_digit(hex[2 * i]);
        int lo = mp_hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return MPREG_E_INVALID;
        }
        out->bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    return MPREG_OK;
}
