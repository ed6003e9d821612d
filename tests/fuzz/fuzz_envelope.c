/* fuzz_envelope.c - libFuzzer target for the envelope decoder.
 *
 * Any input: decode must not crash, hang or read out of bounds, and must
 * return a known code. A decoded envelope must validate, encode, and decode
 * again to the same fields (abort() otherwise), so the decoder never accepts
 * what the encoder could not have written. */
#include "core/envelope.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The struct is 3 KiB; static keeps the fuzzer's stack small and fast. */
    static mp_envelope first, second;
    static mp_buf buf = MP_BUF_INIT;
    const char *why = NULL;

    mpreg_err err = mp_envelope_decode(data, size, &first, &why);
    if (err != MPREG_OK) {
        if (why == NULL || strcmp(mpreg_err_name(err), "unknown") == 0) {
            abort();
        }
        return 0;
    }
    if (why != NULL || mp_envelope_validate(&first, NULL) != MPREG_OK) {
        abort();
    }
    mp_buf_clear(&buf);
    if (mp_envelope_encode(&first, &buf) != MPREG_OK) {
        abort();
    }
    if (buf.len > size) {
        /* The encoding is canonical (smallest forms, defaults omitted) and
         * every field it always writes was required in the input, so it is
         * never longer than any input that decodes to the same envelope. */
        abort();
    }
    if (mp_envelope_decode(buf.data, buf.len, &second, NULL) != MPREG_OK) {
        abort();
    }
    if (!mp_envelope_equal(&first, &second)) {
        abort();
    }
    return 0;
}
