/* value_json.h - JSON typed by people, read exactly or not at all.
 *
 * mpreg_value_from_json (value.h) is lenient where a file written by a
 * program needs it to be: an integer too big for int64 becomes a float.
 * A command-line argument is different: "9223372036854775808" silently
 * sent as 9.2233720368547758e18, or '{"a":1,"a":2}' silently sent as a
 * string because it did not parse, is a value the user did not type. This
 * reader keeps what it accepts exact and says why it refuses the rest. */
#ifndef MP_VALUE_JSON_H
#define MP_VALUE_JSON_H

#include "mpreg/value.h"

#include <stdbool.h>
#include <stddef.h>

/* Parses text[0..len) as one JSON value. MPREG_OK: *out is the value, exact
 * (integers are INT, and only within int64; other numbers FLOAT). On error
 * *out is NIL and *is_json says whose fault it is:
 *   false: the text is not JSON at all (a syntax error: "hi", "{", "a b");
 *          the caller may take it as plain text (code MPREG_E_JSON);
 *   true:  it is JSON that has no exact value: MPREG_E_RANGE for a number
 *          outside int64 (integers) or double (the rest), MPREG_E_JSON for a
 *          duplicate object key or a NUL in a key, MPREG_E_TOO_DEEP past
 *          MPREG_VALUE_DEFAULT_DEPTH levels, MPREG_E_NOMEM.
 * errbuf (may be NULL) gets a one-line reason either way. */
mpreg_err mp_value_from_json_exact(const char *text, size_t len, mpreg_value *out, bool *is_json,
                                   char *errbuf, size_t errbuf_len);

#endif
