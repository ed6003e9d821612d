/* fuzz_delta.c - libFuzzer target for the catalog delta decoder.
 *
 * Any input: decode must not crash, hang, leak or read out of bounds, and
 * must fail with a known code and a reason. A decoded delta must hold only
 * valid entries, encode, and decode again to the same entries and deaths
 * (abort() otherwise), so the decoder never accepts what the encoder could
 * not write back. The second encoding must also equal the first: the
 * encoder's output is canonical. */
#include "fabric/delta.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool mp_deltas_equal(const mp_delta *a, const mp_delta *b) {
    if (a->entry_count != b->entry_count || a->death_count != b->death_count) {
        return false;
    }
    for (uint32_t i = 0; i < a->entry_count; i++) {
        if (!mp_entry_equal(&a->entries[i], &b->entries[i])) {
            return false;
        }
    }
    for (uint32_t i = 0; i < a->death_count; i++) {
        if (strcmp(a->deaths[i].node, b->deaths[i].node) != 0 ||
            a->deaths[i].incarnation != b->deaths[i].incarnation) {
            return false;
        }
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mp_buf first = MP_BUF_INIT, second = MP_BUF_INIT;
    mp_delta a, b;
    const char *why = NULL;

    mpreg_err err = mp_delta_decode(data, size, &a, &why);
    if (err != MPREG_OK) {
        if (why == NULL || strcmp(mpreg_err_name(err), "unknown") == 0 || a.entries || a.deaths ||
            a.entry_count || a.death_count) {
            abort();
        }
        return 0;
    }
    if (why != NULL) {
        abort();
    }
    for (uint32_t i = 0; i < a.entry_count; i++) {
        if (mp_entry_validate(&a.entries[i], NULL) != MPREG_OK) {
            abort();
        }
    }
    mp_buf_clear(&first);
    if (mp_delta_encode(&a, &first) != MPREG_OK) {
        abort();
    }
    if (mp_delta_decode(first.data, first.len, &b, &why) != MPREG_OK || !mp_deltas_equal(&a, &b)) {
        abort();
    }
    mp_buf_clear(&second);
    if (mp_delta_encode(&b, &second) != MPREG_OK || second.len != first.len ||
        memcmp(first.data, second.data, first.len) != 0) {
        abort();
    }
    mp_delta_free(&a);
    mp_delta_free(&b);
    return 0;
}
