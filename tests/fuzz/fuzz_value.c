/* fuzz_value.c - libFuzzer target for the value decoders.
 *
 * The input is tried as MessagePack and as JSON text. Whatever decodes must
 * survive a round trip unchanged: msgpack -> value -> msgpack -> value, and
 * JSON -> value -> JSON -> value. Any mismatch aborts. */
#include "mpreg/value.h"

#include "core/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void mp_check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_value: %s\n", what);
        abort();
    }
}

/* v came from a decoder: it must re-encode, decode to an equal value, and
 * render as JSON. */
static void mp_check_msgpack_leg(const mpreg_value *v) {
    mp_buf buf = MP_BUF_INIT;
    mp_check(mpreg_value_encode(v, &buf) == MPREG_OK, "re-encode failed");
    mpreg_value again;
    mp_check(mpreg_value_decode(buf.data, buf.len, NULL, &again) == MPREG_OK,
             "decode of our own encoding failed");
    mp_check(mpreg_value_equal(v, &again), "msgpack round trip changed the value");
    mpreg_value_free(&again);
    mp_buf_free(&buf);
}

static void mp_fuzz_msgpack(const uint8_t *data, size_t size) {
    mpreg_value v;
    if (mpreg_value_decode(data, size, NULL, &v) != MPREG_OK) {
        mp_check(v.type == MPREG_NIL, "error left a value behind");
        return;
    }
    mp_check_msgpack_leg(&v);
    for (int pretty = 0; pretty < 2; pretty++) {
        char *text = mpreg_value_to_json(&v, pretty);
        mp_check(text != NULL, "to_json failed");
        /* Not necessarily equal (NaN becomes null, a lone "$bin" key
         * becomes binary), but it must parse without harm. */
        mpreg_value j;
        (void)mpreg_value_from_json(text, strlen(text), &j, NULL, 0);
        mpreg_value_free(&j);
        free(text);
    }
    mpreg_value_free(&v);
}

static void mp_fuzz_json(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) {
        return;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    mpreg_value v;
    char err[128];
    if (mpreg_value_from_json(text, size, &v, err, sizeof err) == MPREG_OK) {
        /* JSON gives no NaN, no NUL in keys and no lone "$bin" maps, so it
         * must come back exactly. */
        char *out = mpreg_value_to_json(&v, size % 2);
        mp_check(out != NULL, "to_json of parsed JSON failed");
        mpreg_value again;
        mp_check(mpreg_value_from_json(out, strlen(out), &again, err, sizeof err) == MPREG_OK,
                 "our own JSON did not parse");
        mp_check(mpreg_value_equal(&v, &again), "JSON round trip changed the value");
        mpreg_value_free(&again);
        free(out);
        mp_check_msgpack_leg(&v);
        mpreg_value_free(&v);
    } else {
        mp_check(v.type == MPREG_NIL, "error left a value behind");
        mp_check(err[0] != '\0', "error without a message");
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mp_fuzz_msgpack(data, size);
    mp_fuzz_json(data, size);
    return 0;
}
