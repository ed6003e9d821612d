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

/* Limits applied when decoding untrusted input (and when encoding, so that
 * we never send what a peer would refuse). Zero fields mean "default". */
typedef struct mpreg_value_limits {
    uint32_t max_depth;  /* containers nested deeper fail with MPREG_E_TOO_DEEP; default 32 (max 32) */
    size_t max_items;    /* total array elements + map entries; default 1,000,000 */
    size_t max_bytes;    /* total string + binary bytes; default 64 MiB */
} mpreg_value_limits;

#define MPREG_VALUE_DEFAULT_DEPTH 32
#define MPREG_VALUE_DEFAULT_ITEMS 1000000
#define MPREG_VALUE_DEFAULT_BYTES (64u * 1024u * 1024u)

/* --- construction (scalars never fail; heap ones are NIL on out-of-memory) */
mpreg_value mpreg_nil(void);
mpreg_value mpreg_bool(bool b);
mpreg_value mpreg_int(int64_t i);
mpreg_value mpreg_float(double f);
mpreg_value mpreg_str(const char *s);                  /* copies a C string */
mpreg_value mpreg_strn(const char *s, size_t len);     /* copies len bytes */
mpreg_value mpreg_bin(const void *data, size_t len);   /* copies */
mpreg_value mpreg_array(void);
mpreg_value mpreg_map(void);

/* Appends to an array; takes `item`. MPREG_E_TYPE if arr is not an array. */
mpreg_err mpreg_array_push(mpreg_value *arr, mpreg_value item);
/* Sets key -> val in a map, replacing (and freeing) an existing value; takes val. */
mpreg_err mpreg_map_set(mpreg_value *map, const char *key, mpreg_value val);
mpreg_err mpreg_map_setn(mpreg_value *map, const char *key, size_t klen, mpreg_value val);
/* Borrowed pointer to the value under key, or NULL (also NULL if not a map). */
const mpreg_value *mpreg_map_get(const mpreg_value *map, const char *key);
const mpreg_value *mpreg_map_getn(const mpreg_value *map, const char *key, size_t klen);

/* --- lifetime and comparison */
void mpreg_value_free(mpreg_value *v);  /* frees contents; leaves *v as NIL */
mpreg_err mpreg_value_clone(const mpreg_value *src, mpreg_value *dst);
/* Deep structural equality. Int and float are different types (1 != 1.0);
 * floats compare by value except that NaN equals NaN; map equality ignores
 * entry order. */
bool mpreg_value_equal(const mpreg_value *a, const mpreg_value *b);
const char *mpreg_type_name(mpreg_type t); /* "nil", "bool", ... */

/* --- MessagePack. Encoding appends to a caller buffer managed through
 * mpreg_bytes (a plain growable byte array, freed with mpreg_bytes_free). */
typedef struct mpreg_bytes {
    uint8_t *data;
    size_t len;
    size_t cap;
} mpreg_bytes;
void mpreg_bytes_free(mpreg_bytes *b);

mpreg_err mpreg_value_encode(const mpreg_value *v, mpreg_bytes *out);
/* Decodes exactly one value that must span all of data[0..len): leftovers are
 * MPREG_E_TRAILING. limits may be NULL for the defaults. On error *out is NIL
 * and nothing leaks. */
mpreg_err mpreg_value_decode(const void *data, size_t len, const mpreg_value_limits *limits,
                             mpreg_value *out);

/* --- JSON (for the CLI and config). Binary renders as {"$bin": "<base64>"};
 * non-finite floats render as null. Returns a malloc'd NUL-terminated string
 * (free with free()), or NULL on out-of-memory. `pretty` indents by 2. */
char *mpreg_value_to_json(const mpreg_value *v, bool pretty);
/* Parses JSON text into a value: integers that fit int64 become INT, other
 * numbers FLOAT; {"$bin": "<base64>"} becomes BIN. MPREG_E_JSON on bad text;
 * when errbuf is non-NULL a message with line/column goes there. */
mpreg_err mpreg_value_from_json(const char *text, size_t len, mpreg_value *out, char *errbuf,
                                size_t errbuf_len);

#ifdef __cplusplus
}
#endif
#endif
