/* value.h - the dynamic value model of mpreg.
 *
 * RPC arguments and results, kwargs and structured errors are mpreg_values:
 * nil, bool, int (int64), float (double), string (UTF-8 bytes, may hold NUL),
 * binary, array, map. Map keys are strings (so every value has a JSON form);
 * map entries keep insertion order and keys are unique.
 *
 * Ownership: an mpreg_value is a small tagged struct passed by value; strings,
 * binaries and containers own heap memory released by mpreg_value_free.
 * Functions that "take" a value take ownership of its memory (the caller must
 * not free it afterwards); functions that "borrow" do not.
 *
 * On the wire a value is MessagePack (see docs/PROTOCOL.md "Values"). */
#ifndef MPREG_VALUE_H
#define MPREG_VALUE_H

#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mpreg_type {
    MPREG_NIL = 0,
    MPREG_BOOL,
    MPREG_INT,
    MPREG_FLOAT,
    MPREG_STR,
    MPREG_BIN,
    MPREG_ARRAY,
    MPREG_MAP,
} mpreg_type;

typedef struct mpreg_value mpreg_value;
typedef struct mpreg_kv mpreg_kv;

struct mpreg_value {
    mpreg_type type;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            char *ptr; /* always NUL-terminated after len bytes, for convenience */
            size_t len;
        } str;
        struct {
            uint8_t *ptr;
            size_t len;
        } bin;
        struct {
            mpreg_value *items;
            size_t len;
            size_t cap;
        } arr;
        struct {
            mpreg_kv *items;
            size_t len;
            size_t cap;
        } map;
    } u;
};

struct mpreg_kv {
    mpreg_value key; /* always MPREG_STR */
    mpreg_value val;
};

/* Limits applied when decoding untrusted input. Zero fields mean "default".
 * Depth counts containers: a scalar is depth 0, [] is 1, [[1]] is 2; a
 * max_depth above 32 is treated as 32. Items are array elements plus map
 * entries over the whole value; bytes are string and binary payload bytes,
 * map keys included. Encoding enforces the default depth (the one limit
 * every peer shares, since it cannot be raised), so we never send what a
 * peer would refuse; item and byte totals are the receiver's policy. */
typedef struct mpreg_value_limits {
    uint32_t max_depth; /* deeper fails with MPREG_E_TOO_DEEP; default 32 (max 32) */
    size_t max_items;   /* total array elements + map entries; default 1,000,000 */
    size_t max_bytes;   /* total string + binary bytes; default 64 MiB */
} mpreg_value_limits;

#define MPREG_VALUE_DEFAULT_DEPTH 32
#define MPREG_VALUE_DEFAULT_ITEMS 1000000
#define MPREG_VALUE_DEFAULT_BYTES (64u * 1024u * 1024u)

/* --- construction (scalars never fail; heap ones are NIL on out-of-memory) */
mpreg_value mpreg_nil(void);
mpreg_value mpreg_bool(bool b);
mpreg_value mpreg_int(int64_t i);
mpreg_value mpreg_float(double f);
mpreg_value mpreg_str(const char *s);                /* copies a C string */
mpreg_value mpreg_strn(const char *s, size_t len);   /* copies len bytes */
mpreg_value mpreg_bin(const void *data, size_t len); /* copies */
mpreg_value mpreg_array(void);
mpreg_value mpreg_map(void);

/* Appends to an array; takes `item` (on any error it is freed).
 * MPREG_E_TYPE if arr is not an array. */
mpreg_err mpreg_array_push(mpreg_value *arr, mpreg_value item);
/* Sets key -> val in a map, replacing (and freeing) an existing value in
 * place, so the entry keeps its position; takes val (on any error it is
 * freed). Lookups are linear scans: maps are small vectors in insertion
 * order, sized for RPC payloads rather than for use as big dictionaries. */
mpreg_err mpreg_map_set(mpreg_value *map, const char *key, mpreg_value val);
mpreg_err mpreg_map_setn(mpreg_value *map, const char *key, size_t klen, mpreg_value val);
/* Borrowed pointer to the value under key, or NULL (also NULL if not a map). */
const mpreg_value *mpreg_map_get(const mpreg_value *map, const char *key);
const mpreg_value *mpreg_map_getn(const mpreg_value *map, const char *key, size_t klen);

/* --- lifetime and comparison */
void mpreg_value_free(mpreg_value *v); /* frees contents; leaves *v as NIL; NULL is fine */
/* Deep copy into *dst (overwritten, not freed). On error *dst is NIL. */
mpreg_err mpreg_value_clone(const mpreg_value *src, mpreg_value *dst);
/* Deep structural equality. Int and float are different types (1 != 1.0);
 * floats compare by value except that NaN equals NaN; map equality ignores
 * entry order. */
bool mpreg_value_equal(const mpreg_value *a, const mpreg_value *b);
/* "nil", "bool", "int", "float", "str", "bin", "array", "map"; else "unknown". */
const char *mpreg_type_name(mpreg_type t);
/* True when s[0..len) is well-formed UTF-8 (no overlong forms, surrogates
 * or code points above U+10FFFF). */
bool mpreg_utf8_valid(const char *s, size_t len);

/* --- MessagePack. Encoding appends to a caller buffer managed through
 * mpreg_bytes (a plain growable byte array, freed with mpreg_bytes_free). */
typedef struct mpreg_bytes {
    uint8_t *data;
    size_t len;
    size_t cap;
} mpreg_bytes;
void mpreg_bytes_free(mpreg_bytes *b);

/* Appends v to out. Floats are always float64. Fails with MPREG_E_TOO_DEEP
 * past the default depth, MPREG_E_INVALID for a string (or key) that is not
 * valid UTF-8, MPREG_E_TOO_LARGE for a string, binary or container over
 * 2^32-1; on error out is left as it was. */
mpreg_err mpreg_value_encode(const mpreg_value *v, mpreg_bytes *out);
/* Decodes exactly one value that must span all of data[0..len): leftovers are
 * MPREG_E_TRAILING, a cut-off item MPREG_E_TRUNCATED. MPREG_E_DECODE for
 * malformed bytes, ext types, non-string or duplicate map keys and strings
 * that are not valid UTF-8; MPREG_E_RANGE for a uint64 above INT64_MAX;
 * MPREG_E_TOO_DEEP / MPREG_E_TOO_LARGE past the limits. float32 decodes to
 * FLOAT. When bytes break several rules, problems of shape (truncation,
 * trailing bytes, malformed or ext types, limits) are reported before
 * problems of content (keys, range, UTF-8), each kind in input order.
 * limits may be NULL for the defaults. On error *out is NIL and nothing
 * leaks. */
mpreg_err mpreg_value_decode(const void *data, size_t len, const mpreg_value_limits *limits,
                             mpreg_value *out);

/* --- JSON (for the CLI and config). Binary renders as {"$bin": "<base64>"}
 * (standard alphabet, padded); non-finite floats render as null; map order is
 * kept; a string with NUL renders it as \u0000; bytes that are not valid
 * UTF-8 render as U+FFFD. Returns a malloc'd NUL-terminated string (free with
 * free()), or NULL on out-of-memory. `pretty` indents by 2. */
char *mpreg_value_to_json(const mpreg_value *v, bool pretty);
/* Parses JSON text (any value at the top, nothing after it) into a value:
 * integers that fit int64 become INT, other numbers FLOAT (a number beyond
 * double range is an error); an object whose only key is "$bin" must hold
 * canonical padded base64 and becomes BIN. MPREG_E_JSON on bad text,
 * duplicate object keys (or a NUL in a key), bad base64; MPREG_E_TOO_DEEP
 * past the default depth. When errbuf is non-NULL a message goes there:
 * "line L column C: ..." for syntax errors, "$bin: ..." style otherwise. */
mpreg_err mpreg_value_from_json(const char *text, size_t len, mpreg_value *out, char *errbuf,
                                size_t errbuf_len);

#ifdef __cplusplus
}
#endif
#endif
