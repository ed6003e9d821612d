/* id.h - 128-bit identifiers for messages, requests and subscriptions.
 *
 * Random, drawn from an injected mp_rng, so the simulator reproduces them.
 * On the wire an id is 16 raw bytes (msgpack bin 16); in text, 32 lower-case
 * hex digits. The all-zero id means "none". */
#ifndef MP_ID_H
#define MP_ID_H

#include "core/rng.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stdint.h>

#define MP_ID_LEN 16
#define MP_ID_HEX_LEN 32

typedef struct mp_id {
    uint8_t bytes[MP_ID_LEN];
} mp_id;

/* A fresh random id; never the zero id. */
mp_id mp_id_new(mp_rng *rng);
bool mp_id_is_zero(const mp_id *id);
bool mp_id_equal(const mp_id *a, const mp_id *b);
int mp_id_cmp(const mp_id *a, const mp_id *b);
/* Writes 32 hex digits and a NUL into out (at least 33 bytes). */
void mp_id_to_hex(const mp_id *id, char *out);
/* Parses exactly 32 hex digits (either case); MPREG_E_INVALID otherwise. */
mpreg_err mp_id_from_hex(const char *hex, size_t len, mp_id *out);

#endif
