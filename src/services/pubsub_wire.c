/* pubsub_wire.c - pub/sub's wire payloads (docs/PROTOCOL.md §9.2, §9.3):
 * SUBSCRIBE and the subscription id, decoded strictly (tight value limits,
 * exact types, no unknown keys) and encoded so that an encoding always
 * decodes. Split from pubsub.c, which owns subscriptions, groups, retention,
 * the dedupe window and delivery. */
#include "services/pubsub.h"

#include "core/buf.h"
#include "mpreg/value.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* Payloads are small: 64 patterns of 255 bytes fit with room to spare. The
 * limits bound what a hostile payload can make the decoder allocate before
 * its shape is looked at. */
static const mpreg_value_limits mp_payload_limits = {
    .max_depth = 8,
    .max_items = 1024,
    .max_bytes = 64 * 1024,
};

#define MP_KEY_PATTERNS "patterns"
#define MP_KEY_TAG "tag"
#define MP_KEY_GROUP "group"
#define MP_KEY_REPLAY_LAST "replay_last"
#define MP_KEY_REPLAY_SINCE "replay_since_ms"
#define MP_KEY_SUBSCRIPTION "subscription"

static bool mp_key_is(const mpreg_value *key, const char *name) {
    return mp_str_eq((mp_str){key->u.str.ptr, key->u.str.len}, mp_str_c(name));
}

static mp_str mp_value_str(const mpreg_value *v) {
    return (mp_str){v->u.str.ptr, v->u.str.len};
}

/* A uint field: an int >= 0 (the value decoder already refused a uint
 * above INT64_MAX with MPREG_E_RANGE). */
static mpreg_err mp_uint_field(const mpreg_value *v, uint64_t *out, const char *type_why,
                               const char *range_why, const char **why) {
    if (v->type != MPREG_INT) {
        *why = type_why;
        return MPREG_E_TYPE;
    }
    if (v->u.i < 0) {
        *why = range_why;
        return MPREG_E_RANGE;
    }
    *out = (uint64_t)v->u.i;
    return MPREG_OK;
}

static mpreg_err mp_patterns_field(const mpreg_value *v, mp_pubsub_subscribe_payload *out,
                                   const char **why) {
    if (v->type != MPREG_ARRAY) {
        *why = "patterns: expected array";
        return MPREG_E_TYPE;
    }
    if (v->u.arr.len > MP_PUBSUB_MAX_PATTERNS) {
        *why = "patterns: more than 64";
        return MPREG_E_TOO_LARGE;
    }
    for (size_t i = 0; i < v->u.arr.len; i++) {
        if (v->u.arr.items[i].type != MPREG_STR) {
            *why = "patterns: expected str items";
            return MPREG_E_TYPE;
        }
        out->patterns[i] = mp_value_str(&v->u.arr.items[i]);
    }
    out->pattern_count = v->u.arr.len;
    return MPREG_OK;
}

static mpreg_err mp_str_field(const mpreg_value *v, mp_str *out, const char *type_why,
                              const char **why) {
    if (v->type != MPREG_STR) {
        *why = type_why;
        return MPREG_E_TYPE;
    }
    *out = mp_value_str(v);
    return MPREG_OK;
}

/* One entry of the SUBSCRIBE map. An unknown key is an error, as in every
 * string-keyed payload (docs/PROTOCOL.md §8.1): a misspelt "replay_lats"
 * must not silently subscribe without replay. */
static mpreg_err mp_subscribe_entry(const mpreg_kv *kv, mp_pubsub_subscribe_payload *out,
                                    bool *has_patterns, bool *has_tag, const char **why) {
    const mpreg_value *v = &kv->val;
    if (mp_key_is(&kv->key, MP_KEY_PATTERNS)) {
        *has_patterns = true;
        return mp_patterns_field(v, out, why);
    }
    if (mp_key_is(&kv->key, MP_KEY_TAG)) {
        *has_tag = true;
        return mp_str_field(v, &out->tag, "tag: expected str", why);
    }
    if (mp_key_is(&kv->key, MP_KEY_GROUP)) {
        mpreg_err err = mp_str_field(v, &out->group, "group: expected str", why);
        if (!err && out->group.len == 0) {
            *why = "group: empty (omit the key instead)";
            err = MPREG_E_INVALID;
        }
        return err;
    }
    if (mp_key_is(&kv->key, MP_KEY_REPLAY_LAST)) {
        out->replay.has_last = true;
        return mp_uint_field(v, &out->replay.last, "replay_last: expected uint",
                             "replay_last: negative", why);
    }
    if (mp_key_is(&kv->key, MP_KEY_REPLAY_SINCE)) {
        out->replay.has_since = true;
        return mp_uint_field(v, &out->replay.since_ms, "replay_since_ms: expected uint",
                             "replay_since_ms: negative", why);
    }
    *why = "unknown key";
    return MPREG_E_INVALID;
}

static mpreg_err mp_subscribe_from_value(mp_pubsub_subscribe_payload *out, const char **why) {
    const mpreg_value *root = &out->storage;
    if (root->type != MPREG_MAP) {
        *why = "payload: expected map";
        return MPREG_E_TYPE;
    }
    bool has_patterns = false, has_tag = false;
    for (size_t i = 0; i < root->u.map.len; i++) {
        mpreg_err err =
            mp_subscribe_entry(&root->u.map.items[i], out, &has_patterns, &has_tag, why);
        if (err) {
            return err;
        }
    }
    if (!has_patterns || !has_tag) {
        *why = has_patterns ? "tag: missing" : "patterns: missing";
        return MPREG_E_MISSING_FIELD;
    }
    return mp_pubsub_parts_check(out->tag, out->group, out->patterns, out->pattern_count, why);
}

static void mp_subscribe_payload_clear(mp_pubsub_subscribe_payload *p) {
    memset(p, 0, sizeof *p);
    p->storage = mpreg_nil();
}

void mp_pubsub_subscribe_payload_free(mp_pubsub_subscribe_payload *p) {
    mpreg_value_free(&p->storage);
    mp_subscribe_payload_clear(p);
}

mpreg_err mp_pubsub_subscribe_decode(const void *data, size_t len, mp_pubsub_subscribe_payload *out,
                                     const char **why) {
    const char *w = NULL;
    mp_subscribe_payload_clear(out);
    mpreg_err err = mpreg_value_decode(data, len, &mp_payload_limits, &out->storage);
    if (err) {
        w = "payload: not a well-formed MessagePack value within the limits";
    } else {
        err = mp_subscribe_from_value(out, &w);
    }
    if (err) {
        mp_pubsub_subscribe_payload_free(out);
    } else {
        w = NULL;
    }
    if (why) {
        *why = w;
    }
    return err;
}

mp_pubsub_sub_spec mp_pubsub_spec_from_payload(const mp_pubsub_subscribe_payload *p,
                                               uint64_t owner) {
    return (mp_pubsub_sub_spec){
        .owner = owner,
        .tag = p->tag,
        .group = p->group,
        .patterns = p->patterns,
        .pattern_count = p->pattern_count,
        .replay = p->replay,
    };
}

static int mp_pack_cstr(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

static int mp_pack_mpstr(msgpack_packer *pk, mp_str s) {
    return msgpack_pack_str(pk, s.len) || (s.len && msgpack_pack_str_body(pk, s.ptr, s.len));
}

static int mp_subscribe_pack(msgpack_packer *pk, const mp_pubsub_subscribe_payload *p) {
    size_t fields = 2 + (p->group.len > 0) + p->replay.has_last + p->replay.has_since;
    int rc = msgpack_pack_map(pk, fields) || mp_pack_cstr(pk, MP_KEY_PATTERNS) ||
             msgpack_pack_array(pk, p->pattern_count);
    for (size_t i = 0; i < p->pattern_count && !rc; i++) {
        rc = mp_pack_mpstr(pk, p->patterns[i]);
    }
    rc = rc || mp_pack_cstr(pk, MP_KEY_TAG) || mp_pack_mpstr(pk, p->tag);
    if (p->group.len) {
        rc = rc || mp_pack_cstr(pk, MP_KEY_GROUP) || mp_pack_mpstr(pk, p->group);
    }
    if (p->replay.has_last) {
        rc = rc || mp_pack_cstr(pk, MP_KEY_REPLAY_LAST) || msgpack_pack_uint64(pk, p->replay.last);
    }
    if (p->replay.has_since) {
        rc = rc || mp_pack_cstr(pk, MP_KEY_REPLAY_SINCE) ||
             msgpack_pack_uint64(pk, p->replay.since_ms);
    }
    return rc;
}

mpreg_err mp_pubsub_subscribe_encode(const mp_pubsub_subscribe_payload *p, mp_buf *out) {
    const char *why = NULL;
    mpreg_err err = mp_pubsub_parts_check(p->tag, p->group, p->patterns, p->pattern_count, &why);
    if (err) {
        return err;
    }
    /* The decoder reads uints as int64. */
    if ((p->replay.has_last && p->replay.last > INT64_MAX) ||
        (p->replay.has_since && p->replay.since_ms > INT64_MAX)) {
        return MPREG_E_RANGE;
    }
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_buf_msgpack_write);
    if (mp_subscribe_pack(&pk, p)) {
        out->len = start;
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

mpreg_err mp_pubsub_subscription_encode(uint64_t sub, mp_buf *out) {
    if (sub == 0) {
        return MPREG_E_INVALID;
    }
    if (sub > INT64_MAX) {
        return MPREG_E_RANGE;
    }
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_buf_msgpack_write);
    if (msgpack_pack_map(&pk, 1) || mp_pack_cstr(&pk, MP_KEY_SUBSCRIPTION) ||
        msgpack_pack_uint64(&pk, sub)) {
        out->len = start;
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

static mpreg_err mp_subscription_from_value(const mpreg_value *root, uint64_t *sub,
                                            const char **why) {
    if (root->type != MPREG_MAP) {
        *why = "payload: expected map";
        return MPREG_E_TYPE;
    }
    for (size_t i = 0; i < root->u.map.len; i++) {
        if (!mp_key_is(&root->u.map.items[i].key, MP_KEY_SUBSCRIPTION)) {
            *why = "unknown key";
            return MPREG_E_INVALID;
        }
    }
    const mpreg_value *v = mpreg_map_get(root, MP_KEY_SUBSCRIPTION);
    if (!v) {
        *why = "subscription: missing";
        return MPREG_E_MISSING_FIELD;
    }
    mpreg_err err =
        mp_uint_field(v, sub, "subscription: expected uint", "subscription: negative", why);
    if (!err && *sub == 0) {
        *why = "subscription: zero";
        err = MPREG_E_INVALID;
    }
    return err;
}

mpreg_err mp_pubsub_subscription_decode(const void *data, size_t len, uint64_t *sub,
                                        const char **why) {
    const char *w = NULL;
    mpreg_value root;
    uint64_t id = 0;
    mpreg_err err = mpreg_value_decode(data, len, &mp_payload_limits, &root);
    if (err) {
        w = "payload: not a well-formed MessagePack value within the limits";
    } else {
        err = mp_subscription_from_value(&root, &id, &w);
    }
    mpreg_value_free(&root);
    *sub = err ? 0 : id;
    if (why) {
        *why = err ? w : NULL;
    }
    return err;
}
