/* delta.c - catalog deltas: building them and their MessagePack codec.
 *
 * Wire form (docs/PROTOCOL.md "Catalog deltas"): maps from small integer
 * field numbers to values, at three levels: the delta, each entry, and each
 * entry's value. The per-kind value maps are described by tables (mp_fields)
 * that the encoder and the decoder both walk, so the two cannot drift apart.
 *
 * Decoding untrusted bytes happens in two passes. mp_rd_scan (core/mpread.h)
 * walks the bytes once without allocating and checks the shape: truncation,
 * trailing bytes, the reserved byte 0xc1, nesting depth, and that no
 * container announces more elements than there are bytes left to hold them.
 * Only then does msgpack-c unpack, because it allocates for whatever element
 * count a 5-byte header claims. The second pass converts msgpack-c's objects
 * into entries, checking types strictly, rejecting duplicate keys, and
 * validating every entry. */
#include "fabric/delta.h"

#include "core/mpread.h"
#include "core/vec.h"

#include <msgpack.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* --- building deltas --------------------------------------------------------- */

void mp_delta_init(mp_delta *d) {
    memset(d, 0, sizeof *d);
}

void mp_delta_free(mp_delta *d) {
    for (uint32_t i = 0; i < d->entry_count; i++) {
        mp_entry_free(&d->entries[i]);
    }
    for (uint32_t i = 0; i < d->death_count; i++) {
        free(d->deaths[i].node);
    }
    free(d->entries);
    free(d->deaths);
    mp_delta_init(d);
}

static mpreg_err mp_grow_entries(mp_delta *d) {
    void *items = d->entries;
    mpreg_err err =
        d->entry_count >= UINT32_MAX / 2
            ? MPREG_E_TOO_LARGE
            : mp_vec_grow(&items, &d->entry_cap, d->entry_count + 1, sizeof *d->entries, 8);
    d->entries = items;
    return err;
}

mpreg_err mp_delta_add_entry(mp_delta *d, const mp_entry *e) {
    mpreg_err err = mp_grow_entries(d);
    if (!err) {
        err = mp_entry_clone(e, &d->entries[d->entry_count]);
    }
    if (!err) {
        d->entry_count++;
    }
    return err;
}

mpreg_err mp_delta_take_entry(mp_delta *d, mp_entry *e) {
    mpreg_err err = mp_grow_entries(d);
    if (err) {
        return err; /* e stays the caller's */
    }
    d->entries[d->entry_count++] = *e;
    memset(e, 0, sizeof *e);
    return MPREG_OK;
}

mpreg_err mp_delta_add_death(mp_delta *d, const char *node, uint64_t incarnation) {
    if (!node) {
        return MPREG_E_INVALID;
    }
    void *items = d->deaths;
    mpreg_err err =
        d->death_count >= UINT32_MAX / 2
            ? MPREG_E_TOO_LARGE
            : mp_vec_grow(&items, &d->death_cap, d->death_count + 1, sizeof *d->deaths, 8);
    d->deaths = items;
    if (err) {
        return err;
    }
    size_t n = strlen(node) + 1;
    char *copy = malloc(n);
    if (!copy) {
        return MPREG_E_NOMEM;
    }
    memcpy(copy, node, n);
    d->deaths[d->death_count++] = (mp_node_death){copy, incarnation};
    return MPREG_OK;
}

/* --- wire numbers and value tables ------------------------------------------- */

enum {
    MP_D_ENTRIES = 1,
    MP_D_DEATHS = 2,
};

enum {
    MP_E_KIND = 1,
    MP_E_INCARNATION = 2,
    MP_E_COUNTER = 3,
    MP_E_TTL = 4,
    MP_E_WITHDRAWN = 5,
    MP_E_KEY = 6,
    MP_E_VALUE = 7,
    MP_E_GROUP = 8, /* a topic key's group, outside the key array (see mp_wire_key) */
};

/* The highest field number any of our maps uses; larger keys are unknown. */
#define MP_MAX_FIELD 15

typedef enum mp_ftype {
    MP_FT_STR,  /* char *, required */
    MP_FT_LIST, /* mp_strlist, optional (absent = empty; empty is not sent) */
    MP_FT_U32,  /* uint32_t, required */
    MP_FT_U64,  /* uint64_t, required */
    MP_FT_BOOL, /* bool, required */
    MP_FT_F64,  /* double, required; float 32 or 64 on the wire */
} mp_ftype;

typedef struct mp_field {
    uint8_t num;
    mp_ftype type;
    size_t offset; /* of the field within mp_entry */
    uint32_t max;  /* MP_FT_LIST: most items */
    const char *name;
} mp_field;

#define MP_F(num, type, member, max, name)                                                         \
    { num, type, offsetof(mp_entry, u.member), max, name }

static const mp_field mp_function_fields[] = {
    MP_F(1, MP_FT_STR, function.cluster, 0, "value.cluster"),
    MP_F(2, MP_FT_LIST, function.resources, MP_ENTRY_MAX_RESOURCES, "value.resources"),
    MP_F(3, MP_FT_U32, function.load, 0, "value.load"),
};

static const mp_field mp_topic_fields[] = {
    MP_F(1, MP_FT_STR, topic.cluster, 0, "value.cluster"),
};

static const mp_field mp_queue_fields[] = {
    MP_F(1, MP_FT_STR, queue.cluster, 0, "value.cluster"),
    MP_F(2, MP_FT_U32, queue.modes, 0, "value.modes"),
    MP_F(3, MP_FT_BOOL, queue.healthy, 0, "value.healthy"),
};

static const mp_field mp_cache_fields[] = {
    MP_F(1, MP_FT_STR, cache.cluster, 0, "value.cluster"),
    MP_F(2, MP_FT_STR, cache.region, 0, "value.region"),
    MP_F(3, MP_FT_F64, cache.latitude, 0, "value.latitude"),
    MP_F(4, MP_FT_F64, cache.longitude, 0, "value.longitude"),
    MP_F(5, MP_FT_U64, cache.capacity_bytes, 0, "value.capacity_bytes"),
    MP_F(6, MP_FT_F64, cache.utilization, 0, "value.utilization"),
    MP_F(7, MP_FT_F64, cache.latency_ms, 0, "value.latency_ms"),
    MP_F(8, MP_FT_F64, cache.reliability, 0, "value.reliability"),
};

static const mp_field mp_node_fields[] = {
    MP_F(1, MP_FT_STR, node.name, 0, "value.name"),
    MP_F(2, MP_FT_STR, node.cluster, 0, "value.cluster"),
    MP_F(3, MP_FT_LIST, node.endpoints, MP_ENTRY_MAX_ENDPOINTS, "value.endpoints"),
    MP_F(4, MP_FT_LIST, node.capabilities, MP_ENTRY_MAX_CAPABILITIES, "value.capabilities"),
    MP_F(5, MP_FT_LIST, node.resources, MP_ENTRY_MAX_RESOURCES, "value.resources"),
    MP_F(6, MP_FT_U64, node.incarnation, 0, "value.incarnation"),
};

#define MP_TABLE(t) t, sizeof t / sizeof t[0]

static const mp_field *mp_fields(mp_entry_kind kind, size_t *n) {
    static const struct {
        const mp_field *fields;
        size_t n;
    } tables[] = {
        [MP_ENTRY_NODE] = {MP_TABLE(mp_node_fields)},
        [MP_ENTRY_FUNCTION] = {MP_TABLE(mp_function_fields)},
        [MP_ENTRY_TOPIC] = {MP_TABLE(mp_topic_fields)},
        [MP_ENTRY_QUEUE] = {MP_TABLE(mp_queue_fields)},
        [MP_ENTRY_CACHE] = {MP_TABLE(mp_cache_fields)},
    };
    if (!mp_entry_kind_valid((int)kind)) {
        *n = 0;
        return NULL;
    }
    *n = tables[kind].n;
    return tables[kind].fields;
}

static void *mp_field_ptr(mp_entry *e, const mp_field *f) {
    return (char *)e + f->offset;
}

/* --- encoding -------------------------------------------------------------- */

static int mp_pack_cstr(msgpack_packer *pk, const char *s) {
    s = s ? s : "";
    size_t len = strlen(s);
    int rc = msgpack_pack_str(pk, len);
    rc |= msgpack_pack_str_body(pk, s, len);
    return rc;
}

static int mp_pack_list(msgpack_packer *pk, const mp_strlist *l) {
    int rc = msgpack_pack_array(pk, l->count);
    for (uint32_t i = 0; i < l->count; i++) {
        rc |= mp_pack_cstr(pk, l->items[i]);
    }
    return rc;
}

static bool mp_field_sent(const mp_entry *e, const mp_field *f) {
    if (f->type != MP_FT_LIST) {
        return true;
    }
    return ((const mp_strlist *)mp_field_ptr((mp_entry *)e, f))->count > 0;
}

static int mp_pack_field(msgpack_packer *pk, const mp_entry *e, const mp_field *f) {
    const void *p = mp_field_ptr((mp_entry *)e, f);
    int rc = msgpack_pack_uint8(pk, f->num);
    switch (f->type) {
    case MP_FT_STR:
        return rc | mp_pack_cstr(pk, *(char *const *)p);
    case MP_FT_LIST:
        return rc | mp_pack_list(pk, p);
    case MP_FT_U32:
        return rc | msgpack_pack_uint32(pk, *(const uint32_t *)p);
    case MP_FT_U64:
        return rc | msgpack_pack_uint64(pk, *(const uint64_t *)p);
    case MP_FT_BOOL:
        return rc | (*(const bool *)p ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
    case MP_FT_F64:
        return rc | msgpack_pack_double(pk, *(const double *)p);
    }
    return -1;
}

static int mp_pack_value(msgpack_packer *pk, const mp_entry *e) {
    size_t n;
    const mp_field *fields = mp_fields(e->kind, &n);
    uint32_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        sent += mp_field_sent(e, &fields[i]);
    }
    int rc = msgpack_pack_map(pk, sent);
    for (size_t i = 0; i < n; i++) {
        if (mp_field_sent(e, &fields[i])) {
            rc |= mp_pack_field(pk, e, &fields[i]);
        }
    }
    return rc;
}

/* Field number, then value: two calls, in two statements, because the
 * operands of | are unsequenced and the bytes must come out in order. */
static int mp_pack_key_u64(msgpack_packer *pk, uint8_t num, uint64_t v) {
    int rc = msgpack_pack_uint8(pk, num);
    rc |= msgpack_pack_uint64(pk, v);
    return rc;
}

/* The key strings that travel in the key array (field 6), and in *group the
 * topic key's group (NULL for other kinds). The group came after the key
 * array was fixed at two strings for topics: as field 8, absent meaning "",
 * an ungrouped entry encodes as it always did, and a decoder that predates
 * groups still reads a grouped one (as its pattern's interest) instead of
 * refusing the whole delta over a key array of an unexpected length. */
static size_t mp_wire_key(mp_entry *e, char **slots[MP_ENTRY_MAX_KEY_FIELDS], char ***group) {
    size_t n = mp_entry_key_slots(e, slots);
    *group = NULL;
    if (e->kind == MP_ENTRY_TOPIC) {
        *group = slots[--n];
    }
    return n;
}

static bool mp_group_sent(char **group) {
    return group && *group && **group;
}

static int mp_pack_entry(msgpack_packer *pk, const mp_entry *e) {
    char **keys[MP_ENTRY_MAX_KEY_FIELDS], **group;
    size_t nkeys = mp_wire_key((mp_entry *)e, keys, &group);
    if (nkeys == 0) {
        return -1; /* unknown kind: nothing the peer could decode */
    }
    /* kind, incarnation, counter, key, [ttl], withdrawn or value, [group] */
    int rc = msgpack_pack_map(pk, 4u + (e->ttl_ms != 0) + 1u + mp_group_sent(group));
    rc |= mp_pack_key_u64(pk, MP_E_KIND, (uint64_t)e->kind);
    rc |= mp_pack_key_u64(pk, MP_E_INCARNATION, e->version.incarnation);
    rc |= mp_pack_key_u64(pk, MP_E_COUNTER, e->version.counter);
    if (e->ttl_ms != 0) {
        rc |= mp_pack_key_u64(pk, MP_E_TTL, e->ttl_ms);
    }
    if (e->withdrawn) {
        rc |= msgpack_pack_uint8(pk, MP_E_WITHDRAWN);
        rc |= msgpack_pack_true(pk);
    }
    rc |= msgpack_pack_uint8(pk, MP_E_KEY);
    rc |= msgpack_pack_array(pk, nkeys);
    for (size_t i = 0; i < nkeys; i++) {
        rc |= mp_pack_cstr(pk, *keys[i]);
    }
    if (!e->withdrawn) {
        rc |= msgpack_pack_uint8(pk, MP_E_VALUE);
        rc |= mp_pack_value(pk, e);
    }
    if (mp_group_sent(group)) {
        rc |= msgpack_pack_uint8(pk, MP_E_GROUP);
        rc |= mp_pack_cstr(pk, *group);
    }
    return rc;
}

static int mp_pack_delta(msgpack_packer *pk, const mp_delta *d) {
    int rc = msgpack_pack_map(pk, (d->entry_count > 0) + (d->death_count > 0));
    if (d->entry_count > 0) {
        rc |= msgpack_pack_uint8(pk, MP_D_ENTRIES);
        rc |= msgpack_pack_array(pk, d->entry_count);
        for (uint32_t i = 0; i < d->entry_count && rc == 0; i++) {
            rc |= mp_pack_entry(pk, &d->entries[i]);
        }
    }
    if (d->death_count > 0) {
        rc |= msgpack_pack_uint8(pk, MP_D_DEATHS);
        rc |= msgpack_pack_array(pk, d->death_count);
        for (uint32_t i = 0; i < d->death_count && rc == 0; i++) {
            rc |= msgpack_pack_array(pk, 2);
            rc |= mp_pack_cstr(pk, d->deaths[i].node);
            rc |= msgpack_pack_uint64(pk, d->deaths[i].incarnation);
        }
    }
    return rc;
}

mpreg_err mp_delta_encode(const mp_delta *d, mp_buf *out) {
    /* The decoder refuses what is over its limits; better to fail here. */
    if (d->entry_count > MP_DELTA_MAX_ENTRIES || d->death_count > MP_DELTA_MAX_DEATHS) {
        return MPREG_E_TOO_LARGE;
    }
    for (uint32_t i = 0; i < d->entry_count; i++) {
        if (!mp_entry_kind_valid((int)d->entries[i].kind)) {
            return MPREG_E_INVALID;
        }
    }
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_buf_msgpack_write);
    if (mp_pack_delta(&pk, d) != 0) {
        out->len = start; /* the only way packing fails is running out of memory */
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

/* --- decoding, pass 1: shape scan ------------------------------------------ */

/* Deltas have no item or byte limits of their own beyond the frame's; ext
 * may sit in unknown fields, which are skipped. The depth of 16 is deeper
 * than any delta needs (delta > entries > entry > value > list is 5), with
 * room for unknown fields, and well inside msgpack-c's 32-level stack. A
 * lying count fails at its head, and empty containers, which need no level
 * of msgpack-c's stack, do not count toward the depth. */
static const mp_rd_limits mp_delta_scan_limits = {
    .max_depth = 16,
    .max_items = SIZE_MAX,
    .max_bytes = SIZE_MAX,
    .allow_ext = true,
    .early_counts = true,
    .depth_ignores_empty = true,
};

/* --- decoding, pass 2: objects to entries ---------------------------------- */

typedef struct mp_intkey {
    bool neg;
    uint64_t v;
} mp_intkey;

static int mp_intkey_cmp(const void *pa, const void *pb) {
    const mp_intkey *a = pa, *b = pb;
    if (a->neg != b->neg) {
        return a->neg ? -1 : 1;
    }
    return a->v < b->v ? -1 : a->v > b->v;
}

static bool mp_intkey_of(const msgpack_object *o, mp_intkey *k) {
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *k = (mp_intkey){false, o->via.u64};
        return true;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *k = (mp_intkey){true, (uint64_t)o->via.i64};
        return true;
    }
    return false;
}

/* Every key an integer, none twice. Small maps (all of ours) compare pairs;
 * big ones, which only padding with unknown keys makes, are sorted. */
static mpreg_err mp_check_keys(const msgpack_object_map *m) {
    mp_intkey small[16];
    mp_intkey *keys = m->size <= 16 ? small : malloc(m->size * sizeof *keys);
    if (!keys) {
        return MPREG_E_NOMEM;
    }
    mpreg_err err = MPREG_OK;
    for (uint32_t i = 0; i < m->size && !err; i++) {
        if (!mp_intkey_of(&m->ptr[i].key, &keys[i])) {
            err = MPREG_E_TYPE;
        }
    }
    if (!err && m->size > 1) {
        qsort(keys, m->size, sizeof *keys, mp_intkey_cmp);
        for (uint32_t i = 1; i < m->size && !err; i++) {
            if (mp_intkey_cmp(&keys[i - 1], &keys[i]) == 0) {
                err = MPREG_E_DUPLICATE;
            }
        }
    }
    if (keys != small) {
        free(keys);
    }
    return err;
}

/* Checks o is a map with unique integer keys and points f[n] at the value of
 * each known key n (1..MP_MAX_FIELD); other keys are skipped. */
static mpreg_err mp_collect(const msgpack_object *o, const msgpack_object *f[MP_MAX_FIELD + 1]) {
    memset(f, 0, (MP_MAX_FIELD + 1) * sizeof *f);
    if (o->type != MSGPACK_OBJECT_MAP) {
        return MPREG_E_TYPE;
    }
    mpreg_err err = mp_check_keys(&o->via.map);
    if (err) {
        return err;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_POSITIVE_INTEGER && kv->key.via.u64 >= 1 &&
            kv->key.via.u64 <= MP_MAX_FIELD) {
            f[kv->key.via.u64] = &kv->val;
        }
    }
    return MPREG_OK;
}

/* Copies a MessagePack str into a new NUL-terminated string. */
static mpreg_err mp_obj_str(const msgpack_object *o, char **out) {
    if (o->type != MSGPACK_OBJECT_STR) {
        return MPREG_E_TYPE;
    }
    size_t n = o->via.str.size;
    if (n > MP_ENTRY_MAX_STR) {
        return MPREG_E_TOO_LARGE;
    }
    if (n > 0 && memchr(o->via.str.ptr, '\0', n)) {
        return MPREG_E_INVALID; /* would silently cut the C string short */
    }
    char *s = malloc(n + 1);
    if (!s) {
        return MPREG_E_NOMEM;
    }
    if (n > 0) {
        memcpy(s, o->via.str.ptr, n);
    }
    s[n] = '\0';
    *out = s;
    return MPREG_OK;
}

static mpreg_err mp_obj_u64(const msgpack_object *o, uint64_t max, uint64_t *out) {
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return MPREG_E_TYPE;
    }
    if (o->via.u64 > max) {
        return MPREG_E_RANGE;
    }
    *out = o->via.u64;
    return MPREG_OK;
}

static mpreg_err mp_obj_list(const msgpack_object *o, uint32_t max, mp_strlist *l) {
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return MPREG_E_TYPE;
    }
    if (o->via.array.size > max) {
        return MPREG_E_TOO_LARGE;
    }
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        char *s = NULL;
        mpreg_err err = mp_obj_str(&o->via.array.ptr[i], &s);
        if (!err) {
            err = mp_strlist_push(l, s);
        }
        free(s); /* push copies; one extra copy of a short string is simpler */
        if (err) {
            return err; /* the entry's free releases what was pushed */
        }
    }
    return MPREG_OK;
}

static mpreg_err mp_decode_field(const msgpack_object *o, mp_entry *e, const mp_field *f) {
    void *p = mp_field_ptr(e, f);
    uint64_t u;
    mpreg_err err;
    switch (f->type) {
    case MP_FT_STR:
        return mp_obj_str(o, (char **)p);
    case MP_FT_LIST:
        return mp_obj_list(o, f->max, p);
    case MP_FT_U32:
        err = mp_obj_u64(o, UINT32_MAX, &u);
        if (!err) {
            *(uint32_t *)p = (uint32_t)u;
        }
        return err;
    case MP_FT_U64:
        return mp_obj_u64(o, UINT64_MAX, p);
    case MP_FT_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN) {
            return MPREG_E_TYPE;
        }
        *(bool *)p = o->via.boolean;
        return MPREG_OK;
    case MP_FT_F64:
        if (o->type != MSGPACK_OBJECT_FLOAT32 && o->type != MSGPACK_OBJECT_FLOAT64) {
            return MPREG_E_TYPE;
        }
        *(double *)p = o->via.f64;
        return MPREG_OK;
    }
    return MPREG_E_INTERNAL;
}

static mpreg_err mp_decode_value(const msgpack_object *o, mp_entry *e, const char **why) {
    const msgpack_object *f[MP_MAX_FIELD + 1];
    *why = "entry.value";
    mpreg_err err = mp_collect(o, f);
    size_t n;
    const mp_field *fields = mp_fields(e->kind, &n);
    for (size_t i = 0; i < n && !err; i++) {
        *why = fields[i].name;
        if (f[fields[i].num]) {
            err = mp_decode_field(f[fields[i].num], e, &fields[i]);
        } else if (fields[i].type != MP_FT_LIST) {
            err = MPREG_E_MISSING_FIELD;
        }
    }
    if (!err && e->kind == MP_ENTRY_FUNCTION) {
        /* The semver is not sent: it is the parsed key.version. */
        *why = "key.version";
        const char *v = e->u.function.key.version;
        err = mp_semver_parse(v, strlen(v), &e->u.function.semver, NULL);
    }
    return err;
}

/* The key array (field 6) and, for a topic, its group (field 8, may be NULL:
 * absent = ""). */
static mpreg_err mp_decode_key(const msgpack_object *o, const msgpack_object *group_obj,
                               mp_entry *e, const char **why) {
    *why = "entry.key";
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return MPREG_E_TYPE;
    }
    char **slots[MP_ENTRY_MAX_KEY_FIELDS], **group;
    size_t n = mp_wire_key(e, slots, &group);
    if (o->via.array.size != n) {
        return MPREG_E_INVALID;
    }
    for (size_t i = 0; i < n; i++) {
        mpreg_err err = mp_obj_str(&o->via.array.ptr[i], slots[i]);
        if (err) {
            return err;
        }
    }
    *why = "entry.group";
    if (!group) {
        /* Only a topic key has a group: one elsewhere is a confused peer. */
        return group_obj ? MPREG_E_INVALID : MPREG_OK;
    }
    if (group_obj) {
        return mp_obj_str(group_obj, group);
    }
    *group = calloc(1, 1);
    return *group ? MPREG_OK : MPREG_E_NOMEM;
}

/* Required unsigned field f of an entry map. */
static mpreg_err mp_entry_u64(const msgpack_object *f, uint64_t max, uint64_t *out,
                              const char *name, const char **why) {
    *why = name;
    return f ? mp_obj_u64(f, max, out) : MPREG_E_MISSING_FIELD;
}

static mpreg_err mp_decode_header(const msgpack_object *f[], mp_entry *e, const char **why) {
    uint64_t kind;
    mpreg_err err = mp_entry_u64(f[MP_E_KIND], UINT64_MAX, &kind, "entry.kind", why);
    if (!err && !mp_entry_kind_valid(kind > 255 ? 0 : (int)kind)) {
        err = MPREG_E_INVALID;
    }
    if (err) {
        return err;
    }
    e->kind = (mp_entry_kind)kind;
    err = mp_entry_u64(f[MP_E_INCARNATION], UINT64_MAX, &e->version.incarnation,
                       "entry.incarnation", why);
    if (!err) {
        err = mp_entry_u64(f[MP_E_COUNTER], UINT64_MAX, &e->version.counter, "entry.counter", why);
    }
    if (!err && f[MP_E_TTL]) {
        uint64_t ttl = 0;
        err = mp_entry_u64(f[MP_E_TTL], UINT32_MAX, &ttl, "entry.ttl_ms", why);
        e->ttl_ms = (uint32_t)ttl;
    }
    if (!err && f[MP_E_WITHDRAWN]) {
        *why = "entry.withdrawn";
        if (f[MP_E_WITHDRAWN]->type != MSGPACK_OBJECT_BOOLEAN) {
            return MPREG_E_TYPE;
        }
        e->withdrawn = f[MP_E_WITHDRAWN]->via.boolean;
    }
    return err;
}

static mpreg_err mp_decode_entry_fields(const msgpack_object *o, mp_entry *e, const char **why) {
    const msgpack_object *f[MP_MAX_FIELD + 1];
    *why = "entry";
    mpreg_err err = mp_collect(o, f);
    if (!err) {
        err = mp_decode_header(f, e, why);
    }
    if (err) {
        return err;
    }
    *why = "entry.key";
    if (!f[MP_E_KEY]) {
        return MPREG_E_MISSING_FIELD;
    }
    err = mp_decode_key(f[MP_E_KEY], f[MP_E_GROUP], e, why);
    if (err) {
        return err;
    }
    *why = "entry.value";
    if (e->withdrawn) {
        /* A tombstone has no value; one being sent means a confused peer. */
        return f[MP_E_VALUE] ? MPREG_E_INVALID : MPREG_OK;
    }
    if (!f[MP_E_VALUE]) {
        return MPREG_E_MISSING_FIELD;
    }
    return mp_decode_value(f[MP_E_VALUE], e, why);
}

static mpreg_err mp_decode_entry(const msgpack_object *o, mp_entry *e, const char **why) {
    memset(e, 0, sizeof *e);
    mpreg_err err = mp_decode_entry_fields(o, e, why);
    if (!err) {
        err = mp_entry_validate(e, why);
    }
    if (err) {
        mp_entry_free(e);
    }
    return err;
}

static mpreg_err mp_decode_entries(const msgpack_object *o, mp_delta *d, const char **why) {
    *why = "entries";
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return MPREG_E_TYPE;
    }
    uint32_t n = o->via.array.size;
    if (n > MP_DELTA_MAX_ENTRIES) {
        return MPREG_E_TOO_LARGE;
    }
    if (n == 0) {
        return MPREG_OK;
    }
    d->entries = calloc(n, sizeof *d->entries);
    if (!d->entries) {
        return MPREG_E_NOMEM;
    }
    d->entry_cap = n;
    for (uint32_t i = 0; i < n; i++) {
        mpreg_err err = mp_decode_entry(&o->via.array.ptr[i], &d->entries[i], why);
        if (err) {
            return err;
        }
        d->entry_count++;
    }
    return MPREG_OK;
}

static mpreg_err mp_decode_death(const msgpack_object *o, mp_delta *d, const char **why) {
    *why = "death";
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return MPREG_E_TYPE;
    }
    if (o->via.array.size != 2) {
        return MPREG_E_INVALID;
    }
    mp_node_death *death = &d->deaths[d->death_count];
    *why = "death.incarnation";
    mpreg_err err = mp_obj_u64(&o->via.array.ptr[1], UINT64_MAX, &death->incarnation);
    if (err) {
        return err;
    }
    *why = "death.node";
    err = mp_obj_str(&o->via.array.ptr[0], &death->node);
    if (!err && death->node[0] == '\0') {
        free(death->node);
        death->node = NULL;
        err = MPREG_E_INVALID;
    }
    if (!err) {
        d->death_count++;
    }
    return err;
}

static mpreg_err mp_decode_deaths(const msgpack_object *o, mp_delta *d, const char **why) {
    *why = "deaths";
    if (o->type != MSGPACK_OBJECT_ARRAY) {
        return MPREG_E_TYPE;
    }
    uint32_t n = o->via.array.size;
    if (n > MP_DELTA_MAX_DEATHS) {
        return MPREG_E_TOO_LARGE;
    }
    if (n == 0) {
        return MPREG_OK;
    }
    d->deaths = calloc(n, sizeof *d->deaths);
    if (!d->deaths) {
        return MPREG_E_NOMEM;
    }
    d->death_cap = n;
    for (uint32_t i = 0; i < n; i++) {
        mpreg_err err = mp_decode_death(&o->via.array.ptr[i], d, why);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

static mpreg_err mp_decode_delta(const msgpack_object *o, mp_delta *d, const char **why) {
    const msgpack_object *f[MP_MAX_FIELD + 1];
    *why = "delta";
    mpreg_err err = mp_collect(o, f);
    if (!err && f[MP_D_ENTRIES]) {
        err = mp_decode_entries(f[MP_D_ENTRIES], d, why);
    }
    if (!err && f[MP_D_DEATHS]) {
        err = mp_decode_deaths(f[MP_D_DEATHS], d, why);
    }
    return err;
}

mpreg_err mp_delta_decode(const void *data, size_t len, mp_delta *out, const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    *why = NULL;
    mp_delta_init(out);
    if (!data && len) {
        return MPREG_E_INVALID;
    }
    *why = "delta";
    mpreg_err err = mp_rd_scan(data, len, &mp_delta_scan_limits, NULL);
    if (err) {
        return err;
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack_next(&up, data, len, &off);
    if (ret == MSGPACK_UNPACK_SUCCESS && off == len) {
        err = mp_decode_delta(&up.data, out, why);
    } else {
        /* The scan accepted the bytes, so only memory can fail here. */
        err = ret == MSGPACK_UNPACK_NOMEM_ERROR ? MPREG_E_NOMEM : MPREG_E_INTERNAL;
    }
    msgpack_unpacked_destroy(&up);
    if (err) {
        mp_delta_free(out);
    } else {
        *why = NULL;
    }
    return err;
}
