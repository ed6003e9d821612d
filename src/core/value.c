/* value.c - the dynamic value model: construction, equality, MessagePack.
 *
 * Values are plain trees of malloc'd nodes; nothing is shared, so free and
 * clone are simple recursions. Maps are small vectors of (key, value) in
 * insertion order: RPC payloads carry a handful of fields, where a linear
 * scan beats any hash table. Only the decoder, which must reject duplicate
 * keys in maps of any size from strangers, builds a temporary hash index.
 *
 * Decoding untrusted MessagePack happens in two passes. mp_rd_scan
 * (mpread.h) walks the bytes once without allocating and checks the shape:
 * truncation, trailing bytes, reserved and ext types, and the depth/item/byte
 * limits. Only input that passes is handed to msgpack-c's unpacker, which
 * would otherwise allocate for whatever element count a 5-byte header
 * claims, and whose fixed 32-level stack turns deep input into an anonymous
 * parse error. The
 * second pass converts msgpack-c's objects into mpreg_values and checks
 * what needs the decoded data: key types, duplicate keys, integer range and
 * UTF-8. */
#include "mpreg/value.h"

#include "core/buf.h"
#include "core/map.h"
#include "core/mpread.h"
#include "core/vec.h"

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* --- construction -------------------------------------------------------- */

mpreg_value mpreg_nil(void) {
    return (mpreg_value){.type = MPREG_NIL};
}

mpreg_value mpreg_bool(bool b) {
    return (mpreg_value){.type = MPREG_BOOL, .u.b = b};
}

mpreg_value mpreg_int(int64_t i) {
    return (mpreg_value){.type = MPREG_INT, .u.i = i};
}

mpreg_value mpreg_float(double f) {
    return (mpreg_value){.type = MPREG_FLOAT, .u.f = f};
}

mpreg_value mpreg_strn(const char *s, size_t len) {
    if (!s && len) {
        return mpreg_nil();
    }
    if (len == SIZE_MAX) {
        return mpreg_nil();
    }
    /* One extra byte so that str.ptr is always a valid C string too. */
    char *p = malloc(len + 1);
    if (!p) {
        return mpreg_nil();
    }
    if (len) {
        memcpy(p, s, len);
    }
    p[len] = '\0';
    return (mpreg_value){.type = MPREG_STR, .u.str = {p, len}};
}

mpreg_value mpreg_str(const char *s) {
    return mpreg_strn(s ? s : "", s ? strlen(s) : 0);
}

mpreg_value mpreg_bin(const void *data, size_t len) {
    if (len == 0) {
        return (mpreg_value){.type = MPREG_BIN, .u.bin = {NULL, 0}};
    }
    if (!data) {
        return mpreg_nil();
    }
    uint8_t *p = malloc(len);
    if (!p) {
        return mpreg_nil();
    }
    memcpy(p, data, len);
    return (mpreg_value){.type = MPREG_BIN, .u.bin = {p, len}};
}

mpreg_value mpreg_array(void) {
    return (mpreg_value){.type = MPREG_ARRAY};
}

mpreg_value mpreg_map(void) {
    return (mpreg_value){.type = MPREG_MAP};
}

/* Makes room for one more element of `size` bytes in a vector. */
mpreg_err mpreg_array_push(mpreg_value *arr, mpreg_value item) {
    mpreg_err err = MPREG_E_TYPE;
    if (arr && arr->type == MPREG_ARRAY) {
        err = mp_vec_grow((void **)&arr->u.arr.items, &arr->u.arr.cap, arr->u.arr.len + 1,
                          sizeof(mpreg_value), 4);
    }
    if (err) {
        /* We were given the item: on failure it is ours to drop. */
        mpreg_value_free(&item);
        return err;
    }
    arr->u.arr.items[arr->u.arr.len++] = item;
    return MPREG_OK;
}

static bool mp_key_is(const mpreg_value *key, const char *s, size_t len) {
    return key->u.str.len == len && (len == 0 || memcmp(key->u.str.ptr, s, len) == 0);
}

static mpreg_kv *mp_map_find_kv(const mpreg_value *map, const char *key, size_t klen) {
    for (size_t i = 0; i < map->u.map.len; i++) {
        mpreg_kv *kv = &map->u.map.items[i];
        if (mp_key_is(&kv->key, key, klen)) {
            return kv;
        }
    }
    return NULL;
}

mpreg_err mpreg_map_setn(mpreg_value *map, const char *key, size_t klen, mpreg_value val) {
    if (!map || map->type != MPREG_MAP || (!key && klen)) {
        mpreg_value_free(&val);
        return map && map->type == MPREG_MAP ? MPREG_E_INVALID : MPREG_E_TYPE;
    }
    if (!key) {
        key = "";
    }
    mpreg_kv *kv = mp_map_find_kv(map, key, klen);
    if (kv) {
        /* Replacing keeps the entry's original position. */
        mpreg_value_free(&kv->val);
        kv->val = val;
        return MPREG_OK;
    }
    mpreg_value k = mpreg_strn(key, klen);
    mpreg_err err = MPREG_E_NOMEM;
    if (k.type == MPREG_STR) {
        err = mp_vec_grow((void **)&map->u.map.items, &map->u.map.cap, map->u.map.len + 1,
                          sizeof(mpreg_kv), 4);
    }
    if (err) {
        mpreg_value_free(&k);
        mpreg_value_free(&val);
        return err;
    }
    map->u.map.items[map->u.map.len++] = (mpreg_kv){k, val};
    return MPREG_OK;
}

mpreg_err mpreg_map_set(mpreg_value *map, const char *key, mpreg_value val) {
    return mpreg_map_setn(map, key, key ? strlen(key) : 0, val);
}

const mpreg_value *mpreg_map_getn(const mpreg_value *map, const char *key, size_t klen) {
    if (!map || map->type != MPREG_MAP || (!key && klen)) {
        return NULL;
    }
    mpreg_kv *kv = mp_map_find_kv(map, key ? key : "", klen);
    return kv ? &kv->val : NULL;
}

const mpreg_value *mpreg_map_get(const mpreg_value *map, const char *key) {
    return mpreg_map_getn(map, key, key ? strlen(key) : 0);
}

/* --- lifetime and comparison --------------------------------------------- */

void mpreg_value_free(mpreg_value *v) {
    if (!v) {
        return;
    }
    switch (v->type) {
    case MPREG_STR:
        free(v->u.str.ptr);
        break;
    case MPREG_BIN:
        free(v->u.bin.ptr);
        break;
    case MPREG_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++) {
            mpreg_value_free(&v->u.arr.items[i]);
        }
        free(v->u.arr.items);
        break;
    case MPREG_MAP:
        for (size_t i = 0; i < v->u.map.len; i++) {
            mpreg_value_free(&v->u.map.items[i].key);
            mpreg_value_free(&v->u.map.items[i].val);
        }
        free(v->u.map.items);
        break;
    default:
        break;
    }
    *v = mpreg_nil();
}

mpreg_err mpreg_value_clone(const mpreg_value *src, mpreg_value *dst) {
    mpreg_value out = mpreg_nil();
    mpreg_err err = MPREG_OK;
    switch (src->type) {
    case MPREG_STR:
        out = mpreg_strn(src->u.str.ptr, src->u.str.len);
        err = out.type == MPREG_STR ? MPREG_OK : MPREG_E_NOMEM;
        break;
    case MPREG_BIN:
        out = mpreg_bin(src->u.bin.ptr, src->u.bin.len);
        err = out.type == MPREG_BIN ? MPREG_OK : MPREG_E_NOMEM;
        break;
    case MPREG_ARRAY: {
        size_t n = src->u.arr.len;
        out = mpreg_array();
        if (n == 0) {
            break;
        }
        out.u.arr.items = calloc(n, sizeof(mpreg_value));
        if (!out.u.arr.items) {
            err = MPREG_E_NOMEM;
            break;
        }
        out.u.arr.cap = n;
        for (size_t i = 0; i < n && !err; i++) {
            err = mpreg_value_clone(&src->u.arr.items[i], &out.u.arr.items[i]);
            out.u.arr.len = i + 1; /* a failed clone leaves NIL: still freeable */
        }
        break;
    }
    case MPREG_MAP: {
        size_t n = src->u.map.len;
        out = mpreg_map();
        if (n == 0) {
            break;
        }
        out.u.map.items = calloc(n, sizeof(mpreg_kv));
        if (!out.u.map.items) {
            err = MPREG_E_NOMEM;
            break;
        }
        out.u.map.cap = n;
        for (size_t i = 0; i < n && !err; i++) {
            const mpreg_kv *kv = &src->u.map.items[i];
            out.u.map.len = i + 1;
            err = mpreg_value_clone(&kv->key, &out.u.map.items[i].key);
            if (!err) {
                err = mpreg_value_clone(&kv->val, &out.u.map.items[i].val);
            }
        }
        break;
    }
    default:
        out = *src; /* scalars */
        break;
    }
    if (err) {
        mpreg_value_free(&out);
    }
    *dst = out;
    return err;
}

static bool mp_bytes_equal(const void *a, size_t alen, const void *b, size_t blen) {
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* Maps are equal when they hold the same keys with equal values, in any
 * order. A decoded copy keeps the sender's order, so walk both in step
 * first and only look keys up from the first difference on; past a few
 * entries the lookups go through a hash index of the rest of b. */
static bool mp_map_equal(const mpreg_value *a, const mpreg_value *b) {
    size_t n = a->u.map.len;
    if (n != b->u.map.len) {
        return false;
    }
    const mpreg_kv *ka = a->u.map.items;
    const mpreg_kv *kb = b->u.map.items;
    size_t i = 0;
    while (i < n && mp_bytes_equal(ka[i].key.u.str.ptr, ka[i].key.u.str.len, kb[i].key.u.str.ptr,
                                   kb[i].key.u.str.len)) {
        if (!mpreg_value_equal(&ka[i].val, &kb[i].val)) {
            return false;
        }
        i++;
    }
    if (i == n) {
        return true;
    }
    mp_map index = MP_MAP_INIT;
    bool indexed = n - i > 8;
    for (size_t j = i; indexed && j < n; j++) {
        if (mp_map_put(&index, kb[j].key.u.str.ptr, kb[j].key.u.str.len, (void *)&kb[j], NULL)) {
            indexed = false; /* out of memory: fall back to scanning */
        }
    }
    bool eq = true;
    for (size_t j = i; eq && j < n; j++) {
        const mpreg_kv *other = NULL;
        if (indexed) {
            other = mp_map_get(&index, ka[j].key.u.str.ptr, ka[j].key.u.str.len);
        } else {
            for (size_t k = i; k < n && !other; k++) {
                if (mp_bytes_equal(ka[j].key.u.str.ptr, ka[j].key.u.str.len, kb[k].key.u.str.ptr,
                                   kb[k].key.u.str.len)) {
                    other = &kb[k];
                }
            }
        }
        eq = other && mpreg_value_equal(&ka[j].val, &other->val);
    }
    mp_map_free(&index, NULL);
    return eq;
}

bool mpreg_value_equal(const mpreg_value *a, const mpreg_value *b) {
    if (a->type != b->type) {
        return false;
    }
    switch (a->type) {
    case MPREG_NIL:
        return true;
    case MPREG_BOOL:
        return a->u.b == b->u.b;
    case MPREG_INT:
        return a->u.i == b->u.i;
    case MPREG_FLOAT:
        /* NaN == NaN so that a value always equals its own round trip. */
        return a->u.f == b->u.f || (isnan(a->u.f) && isnan(b->u.f));
    case MPREG_STR:
        return mp_bytes_equal(a->u.str.ptr, a->u.str.len, b->u.str.ptr, b->u.str.len);
    case MPREG_BIN:
        return mp_bytes_equal(a->u.bin.ptr, a->u.bin.len, b->u.bin.ptr, b->u.bin.len);
    case MPREG_ARRAY:
        if (a->u.arr.len != b->u.arr.len) {
            return false;
        }
        for (size_t i = 0; i < a->u.arr.len; i++) {
            if (!mpreg_value_equal(&a->u.arr.items[i], &b->u.arr.items[i])) {
                return false;
            }
        }
        return true;
    case MPREG_MAP:
        return mp_map_equal(a, b);
    }
    return false;
}

const char *mpreg_type_name(mpreg_type t) {
    switch (t) {
    case MPREG_NIL:
        return "nil";
    case MPREG_BOOL:
        return "bool";
    case MPREG_INT:
        return "int";
    case MPREG_FLOAT:
        return "float";
    case MPREG_STR:
        return "str";
    case MPREG_BIN:
        return "bin";
    case MPREG_ARRAY:
        return "array";
    case MPREG_MAP:
        return "map";
    }
    return "unknown";
}

/* Well-formed UTF-8 per Unicode table 3-7: no overlong forms, no
 * surrogates, nothing above U+10FFFF. */
bool mpreg_utf8_valid(const char *s, size_t len) {
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;                     /* continuation bytes */
        uint8_t lo = 0x80, hi = 0xbf; /* range of the first continuation byte */
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            lo = c == 0xe0 ? 0xa0 : 0x80; /* overlong */
            hi = c == 0xed ? 0x9f : 0xbf; /* surrogates */
        } else if (c == 0xf0 || c == 0xf4) {
            n = 3;
            lo = c == 0xf0 ? 0x90 : 0x80; /* overlong */
            hi = c == 0xf4 ? 0x8f : 0xbf; /* above U+10FFFF */
        } else if (c >= 0xf1 && c <= 0xf3) {
            n = 3;
        } else {
            return false;
        }
        if (len - i <= n || p[i + 1] < lo || p[i + 1] > hi) {
            return false;
        }
        for (size_t k = 2; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return false;
            }
        }
        i += n + 1;
    }
    return true;
}

/* --- MessagePack encoding ------------------------------------------------ */

/* Every msgpack-c pack call fails only when our write callback runs out of
 * memory. */
#define MP_PACK(call)                                                                              \
    do {                                                                                           \
        if ((call) != 0) {                                                                         \
            return MPREG_E_NOMEM;                                                                  \
        }                                                                                          \
    } while (0)

static mpreg_err mp_pack_value(msgpack_packer *pk, const mpreg_value *v, uint32_t depth);

static mpreg_err mp_pack_str(msgpack_packer *pk, const mpreg_value *v) {
    if (v->type != MPREG_STR) {
        return MPREG_E_TYPE;
    }
    if (v->u.str.len > UINT32_MAX) {
        return MPREG_E_TOO_LARGE;
    }
    /* Peers decode str as text (the Python original does too): never send
     * bytes they would refuse. Arbitrary bytes belong in BIN. */
    if (!mpreg_utf8_valid(v->u.str.ptr, v->u.str.len)) {
        return MPREG_E_INVALID;
    }
    MP_PACK(msgpack_pack_str(pk, v->u.str.len));
    MP_PACK(msgpack_pack_str_body(pk, v->u.str.ptr, v->u.str.len));
    return MPREG_OK;
}

static mpreg_err mp_pack_container(msgpack_packer *pk, const mpreg_value *v, uint32_t depth) {
    /* Depth is the one limit every peer shares (it is capped at the
     * default), so refuse here what any receiver would refuse. */
    if (depth >= MPREG_VALUE_DEFAULT_DEPTH) {
        return MPREG_E_TOO_DEEP;
    }
    mpreg_err err = MPREG_OK;
    if (v->type == MPREG_ARRAY) {
        if (v->u.arr.len > UINT32_MAX) {
            return MPREG_E_TOO_LARGE;
        }
        MP_PACK(msgpack_pack_array(pk, v->u.arr.len));
        for (size_t i = 0; i < v->u.arr.len && !err; i++) {
            err = mp_pack_value(pk, &v->u.arr.items[i], depth + 1);
        }
        return err;
    }
    if (v->u.map.len > UINT32_MAX) {
        return MPREG_E_TOO_LARGE;
    }
    MP_PACK(msgpack_pack_map(pk, v->u.map.len));
    for (size_t i = 0; i < v->u.map.len && !err; i++) {
        err = mp_pack_str(pk, &v->u.map.items[i].key);
        if (!err) {
            err = mp_pack_value(pk, &v->u.map.items[i].val, depth + 1);
        }
    }
    return err;
}

/* depth = number of containers around v. */
static mpreg_err mp_pack_value(msgpack_packer *pk, const mpreg_value *v, uint32_t depth) {
    switch (v->type) {
    case MPREG_NIL:
        MP_PACK(msgpack_pack_nil(pk));
        return MPREG_OK;
    case MPREG_BOOL:
        MP_PACK(v->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
        return MPREG_OK;
    case MPREG_INT:
        MP_PACK(msgpack_pack_int64(pk, v->u.i));
        return MPREG_OK;
    case MPREG_FLOAT:
        /* Always float64: float32 would silently lose precision. */
        MP_PACK(msgpack_pack_double(pk, v->u.f));
        return MPREG_OK;
    case MPREG_STR:
        return mp_pack_str(pk, v);
    case MPREG_BIN:
        if (v->u.bin.len > UINT32_MAX) {
            return MPREG_E_TOO_LARGE;
        }
        MP_PACK(msgpack_pack_bin(pk, v->u.bin.len));
        MP_PACK(msgpack_pack_bin_body(pk, v->u.bin.ptr, v->u.bin.len));
        return MPREG_OK;
    case MPREG_ARRAY:
    case MPREG_MAP:
        return mp_pack_container(pk, v, depth);
    }
    return MPREG_E_TYPE;
}

mpreg_err mpreg_value_encode(const mpreg_value *v, mpreg_bytes *out) {
    if (!v || !out) {
        return MPREG_E_INVALID;
    }
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_buf_msgpack_write);
    mpreg_err err = mp_pack_value(&pk, v, 0);
    if (err) {
        out->len = start; /* no half-written value left behind */
    }
    return err;
}

/* --- MessagePack decoding, pass 1: shape and limits ------------------------ */

/* The caller's limits, with zeros read as the defaults and the depth capped
 * at the default, which every peer shares and msgpack-c's 32-level stack
 * can hold. */
static mp_rd_limits mp_limits_resolve(const mpreg_value_limits *l) {
    mp_rd_limits r = {
        .max_depth = MPREG_VALUE_DEFAULT_DEPTH,
        .max_items = MPREG_VALUE_DEFAULT_ITEMS,
        .max_bytes = MPREG_VALUE_DEFAULT_BYTES,
        .allow_ext = false, /* values have no ext type */
    };
    if (l) {
        if (l->max_depth && l->max_depth < r.max_depth) {
            r.max_depth = l->max_depth;
        }
        r.max_items = l->max_items ? l->max_items : r.max_items;
        r.max_bytes = l->max_bytes ? l->max_bytes : r.max_bytes;
    }
    return r;
}

/* --- MessagePack decoding, pass 2: msgpack-c objects to values ------------ */

static mpreg_err mp_from_obj(const msgpack_object *o, mpreg_value *out);

static mpreg_err mp_str_from_obj(const msgpack_object *o, mpreg_value *out) {
    if (!mpreg_utf8_valid(o->via.str.ptr, o->via.str.size)) {
        return MPREG_E_DECODE;
    }
    *out = mpreg_strn(o->via.str.ptr, o->via.str.size);
    return out->type == MPREG_STR ? MPREG_OK : MPREG_E_NOMEM;
}

/* Small maps check for a duplicate by scanning the keys before it; large
 * ones through a hash set, so that a hostile map stays linear. */
static mpreg_err mp_check_dup(const mpreg_value *map, mp_map *seen) {
    size_t last = map->u.map.len - 1;
    const mpreg_value *key = &map->u.map.items[last].key;
    if (map->u.map.cap <= 16) {
        for (size_t i = 0; i < last; i++) {
            const mpreg_value *k = &map->u.map.items[i].key;
            if (mp_bytes_equal(k->u.str.ptr, k->u.str.len, key->u.str.ptr, key->u.str.len)) {
                return MPREG_E_DECODE;
            }
        }
        return MPREG_OK;
    }
    if (mp_map_contains(seen, key->u.str.ptr, key->u.str.len)) {
        return MPREG_E_DECODE;
    }
    return mp_map_put(seen, key->u.str.ptr, key->u.str.len, NULL, NULL) ? MPREG_E_NOMEM : MPREG_OK;
}

static mpreg_err mp_map_from_obj(const msgpack_object_map *m, mpreg_value *out) {
    *out = mpreg_map();
    if (m->size == 0) {
        return MPREG_OK;
    }
    out->u.map.items = calloc(m->size, sizeof(mpreg_kv));
    if (!out->u.map.items) {
        return MPREG_E_NOMEM;
    }
    out->u.map.cap = m->size;
    mp_map seen = MP_MAP_INIT;
    mpreg_err err = MPREG_OK;
    for (uint32_t i = 0; i < m->size && !err; i++) {
        const msgpack_object_kv *kv = &m->ptr[i];
        mpreg_kv *dst = &out->u.map.items[i];
        out->u.map.len = i + 1; /* calloc'd entries are NIL: safe to free */
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            err = MPREG_E_DECODE;
            break;
        }
        err = mp_str_from_obj(&kv->key, &dst->key);
        if (!err) {
            err = mp_check_dup(out, &seen);
        }
        if (!err) {
            err = mp_from_obj(&kv->val, &dst->val);
        }
    }
    mp_map_free(&seen, NULL);
    return err;
}

static mpreg_err mp_array_from_obj(const msgpack_object_array *a, mpreg_value *out) {
    *out = mpreg_array();
    if (a->size == 0) {
        return MPREG_OK;
    }
    out->u.arr.items = calloc(a->size, sizeof(mpreg_value));
    if (!out->u.arr.items) {
        return MPREG_E_NOMEM;
    }
    out->u.arr.cap = a->size;
    mpreg_err err = MPREG_OK;
    for (uint32_t i = 0; i < a->size && !err; i++) {
        out->u.arr.len = i + 1;
        err = mp_from_obj(&a->ptr[i], &out->u.arr.items[i]);
    }
    return err;
}

/* On error *out may be partly built; the caller frees it. */
static mpreg_err mp_from_obj(const msgpack_object *o, mpreg_value *out) {
    *out = mpreg_nil();
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return MPREG_OK;
    case MSGPACK_OBJECT_BOOLEAN:
        *out = mpreg_bool(o->via.boolean);
        return MPREG_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX) {
            return MPREG_E_RANGE;
        }
        *out = mpreg_int((int64_t)o->via.u64);
        return MPREG_OK;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = mpreg_int(o->via.i64);
        return MPREG_OK;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        *out = mpreg_float(o->via.f64);
        return MPREG_OK;
    case MSGPACK_OBJECT_STR:
        return mp_str_from_obj(o, out);
    case MSGPACK_OBJECT_BIN:
        *out = mpreg_bin(o->via.bin.ptr, o->via.bin.size);
        return out->type == MPREG_BIN ? MPREG_OK : MPREG_E_NOMEM;
    case MSGPACK_OBJECT_ARRAY:
        return mp_array_from_obj(&o->via.array, out);
    case MSGPACK_OBJECT_MAP:
        return mp_map_from_obj(&o->via.map, out);
    default:
        return MPREG_E_DECODE; /* ext: the scan already refuses it */
    }
}

mpreg_err mpreg_value_decode(const void *data, size_t len, const mpreg_value_limits *limits,
                             mpreg_value *out) {
    *out = mpreg_nil();
    if (!data && len) {
        return MPREG_E_INVALID;
    }
    mp_rd_limits lim = mp_limits_resolve(limits);
    mpreg_err err = mp_rd_scan(data, len, &lim, NULL);
    if (err) {
        return err;
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack_next(&up, data, len, &off);
    if (ret == MSGPACK_UNPACK_SUCCESS && off == len) {
        err = mp_from_obj(&up.data, out);
    } else {
        /* The scan accepted the bytes, so only memory can fail here. */
        err = ret == MSGPACK_UNPACK_NOMEM_ERROR ? MPREG_E_NOMEM : MPREG_E_INTERNAL;
    }
    msgpack_unpacked_destroy(&up);
    if (err) {
        mpreg_value_free(out);
    }
    return err;
}
