/* envelope.c - the UnifiedMessage and its MessagePack codec.
 *
 * Encoding writes MessagePack straight into an mp_buf (see "Encoding").
 * Decoding does not use msgpack-c either: its object tree costs a zone
 * allocation per container and a hostile array32 header makes it try to
 * allocate gigabytes before it notices the input is short. Instead a strict
 * cursor (mp_rd, core/mpread.h) walks the bytes once, checks every length
 * against the end of the input before trusting it, and points the
 * envelope's strings straight into the input. No allocation, no copy, no
 * recursion (unknown values are skipped with a counter, not a stack).
 *
 * The wire format is documented in docs/PROTOCOL.md; keep the two in step. */
#include "core/envelope.h"
#include "core/mpread.h"
#include "mpreg/value.h" /* mpreg_utf8_valid */

#include <string.h>

/* ------------------------------------------------------------------------ */
/* Kinds                                                                     */

bool mp_kind_is_known(uint32_t kind) {
    switch (kind) {
    case MP_KIND_HELLO:
    case MP_KIND_WELCOME:
    case MP_KIND_PING:
    case MP_KIND_PONG:
    case MP_KIND_ERROR:
    case MP_KIND_OK:
    case MP_KIND_GOODBYE:
    case MP_KIND_RPC_REQUEST:
    case MP_KIND_RPC_REPLY:
    case MP_KIND_RPC_INVOKE:
    case MP_KIND_RPC_RESULT:
    case MP_KIND_REGISTER:
    case MP_KIND_UNREGISTER:
    case MP_KIND_PUBLISH:
    case MP_KIND_DELIVER:
    case MP_KIND_SUBSCRIBE:
    case MP_KIND_UNSUBSCRIBE:
    case MP_KIND_QUEUE_OP:
    case MP_KIND_QUEUE_REPLY:
    case MP_KIND_QUEUE_DELIVER:
    case MP_KIND_CACHE_OP:
    case MP_KIND_CACHE_REPLY:
    case MP_KIND_GOSSIP:
    case MP_KIND_CONTROL:
    case MP_KIND_CONTROL_REPLY:
        return true;
    default:
        return false;
    }
}

bool mp_kind_is_reply(mp_kind kind) {
    switch (kind) {
    case MP_KIND_WELCOME:
    case MP_KIND_PONG:
    case MP_KIND_OK:
    case MP_KIND_RPC_REPLY:
    case MP_KIND_RPC_RESULT:
    case MP_KIND_QUEUE_REPLY:
    case MP_KIND_CACHE_REPLY:
    case MP_KIND_CONTROL_REPLY:
        return true;
    default:
        return false;
    }
}

const char *mp_kind_name(mp_kind kind) {
    switch (kind) {
    case MP_KIND_HELLO:
        return "hello";
    case MP_KIND_WELCOME:
        return "welcome";
    case MP_KIND_PING:
        return "ping";
    case MP_KIND_PONG:
        return "pong";
    case MP_KIND_ERROR:
        return "error";
    case MP_KIND_OK:
        return "ok";
    case MP_KIND_GOODBYE:
        return "goodbye";
    case MP_KIND_RPC_REQUEST:
        return "rpc_request";
    case MP_KIND_RPC_REPLY:
        return "rpc_reply";
    case MP_KIND_RPC_INVOKE:
        return "rpc_invoke";
    case MP_KIND_RPC_RESULT:
        return "rpc_result";
    case MP_KIND_REGISTER:
        return "register";
    case MP_KIND_UNREGISTER:
        return "unregister";
    case MP_KIND_PUBLISH:
        return "publish";
    case MP_KIND_DELIVER:
        return "deliver";
    case MP_KIND_SUBSCRIBE:
        return "subscribe";
    case MP_KIND_UNSUBSCRIBE:
        return "unsubscribe";
    case MP_KIND_QUEUE_OP:
        return "queue_op";
    case MP_KIND_QUEUE_REPLY:
        return "queue_reply";
    case MP_KIND_QUEUE_DELIVER:
        return "queue_deliver";
    case MP_KIND_CACHE_OP:
        return "cache_op";
    case MP_KIND_CACHE_REPLY:
        return "cache_reply";
    case MP_KIND_GOSSIP:
        return "gossip";
    case MP_KIND_CONTROL:
        return "control";
    case MP_KIND_CONTROL_REPLY:
        return "control_reply";
    default:
        return "unknown";
    }
}

/* ------------------------------------------------------------------------ */
/* Construction, headers, comparison                                         */

void mp_envelope_init(mp_envelope *e, mp_kind kind) {
    memset(e, 0, sizeof *e);
    e->version = MP_PROTOCOL_VERSION;
    e->kind = kind;
    e->hop_budget = MP_DEFAULT_HOPS;
}

static void mp_envelope_reset(mp_envelope *e);

void mp_envelope_init_fields(mp_envelope *e, mp_kind kind) {
    mp_envelope_reset(e);
    e->version = MP_PROTOCOL_VERSION;
    e->kind = kind;
    e->hop_budget = MP_DEFAULT_HOPS;
}

mp_str mp_envelope_header(const mp_envelope *e, const char *key) {
    mp_str k = mp_str_c(key);
    uint32_t n = e->header_count < MP_MAX_HEADERS ? e->header_count : MP_MAX_HEADERS;
    for (uint32_t i = 0; i < n; i++) {
        if (mp_str_eq(e->headers[i].key, k)) {
            return e->headers[i].value;
        }
    }
    return MP_STR_NULL;
}

mpreg_err mp_envelope_add_header(mp_envelope *e, mp_str key, mp_str value) {
    if (key.len == 0 || (value.len > 0 && value.ptr == NULL)) {
        return MPREG_E_INVALID;
    }
    if (key.len > MP_MAX_HEADER_KEY || value.len > MP_MAX_HEADER_VALUE) {
        return MPREG_E_TOO_LARGE;
    }
    /* Keys are unique on the wire (clients in other languages read headers
     * into a dictionary), so adding an existing key replaces its value. */
    for (uint32_t i = 0; i < e->header_count && i < MP_MAX_HEADERS; i++) {
        if (mp_str_eq(e->headers[i].key, key)) {
            e->headers[i].value = value;
            return MPREG_OK;
        }
    }
    if (e->header_count >= MP_MAX_HEADERS) {
        return MPREG_E_TOO_LARGE;
    }
    e->headers[e->header_count].key = key;
    e->headers[e->header_count].value = value;
    e->header_count++;
    return MPREG_OK;
}

static bool mp_paths_equal(const mp_str *a, uint32_t alen, const mp_str *b, uint32_t blen) {
    if (alen != blen || alen > MP_MAX_PATH) {
        return false;
    }
    for (uint32_t i = 0; i < alen; i++) {
        if (!mp_str_eq(a[i], b[i])) {
            return false;
        }
    }
    return true;
}

bool mp_envelope_equal(const mp_envelope *a, const mp_envelope *b) {
    if (a->version != b->version || a->kind != b->kind || !mp_id_equal(&a->id, &b->id) ||
        !mp_id_equal(&a->correlation_id, &b->correlation_id) || a->hop_budget != b->hop_budget ||
        a->deadline_ms != b->deadline_ms) {
        return false;
    }
    if (!mp_str_eq(a->topic, b->topic) || !mp_str_eq(a->source_node, b->source_node) ||
        !mp_str_eq(a->source_cluster, b->source_cluster) ||
        !mp_str_eq(a->target_cluster, b->target_cluster) ||
        !mp_str_eq(a->target_node, b->target_node)) {
        return false;
    }
    if (!mp_paths_equal(a->routing_path, a->routing_path_len, b->routing_path,
                        b->routing_path_len) ||
        !mp_paths_equal(a->federation_path, a->federation_path_len, b->federation_path,
                        b->federation_path_len)) {
        return false;
    }
    if (a->header_count != b->header_count || a->header_count > MP_MAX_HEADERS) {
        return false;
    }
    for (uint32_t i = 0; i < a->header_count; i++) {
        if (!mp_str_eq(a->headers[i].key, b->headers[i].key) ||
            !mp_str_eq(a->headers[i].value, b->headers[i].value)) {
            return false;
        }
    }
    return a->payload.len == b->payload.len &&
           (a->payload.len == 0 || memcmp(a->payload.ptr, b->payload.ptr, a->payload.len) == 0);
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */

#define MP_FAIL(code, text)                                                                        \
    do {                                                                                           \
        if (why) {                                                                                 \
            *why = (text);                                                                         \
        }                                                                                          \
        return (code);                                                                             \
    } while (0)

/* mp_id_is_zero, inlined: validation asks it of every envelope. */
static inline bool mp_id_zero(const mp_id *id) {
    uint64_t a, b;
    memcpy(&a, id->bytes, 8);
    memcpy(&b, id->bytes + 8, 8);
    return (a | b) == 0;
}

/* A view that claims bytes must have somewhere to point. */
static bool mp_str_sane(mp_str s) {
    return s.len == 0 || s.ptr != NULL;
}

/* The rules every string field shares: a length limit, and UTF-8, because
 * MessagePack str means text and clients in other languages decode it as
 * such (one bad byte in a forwarded source_node would break them, not us).
 * The static why texts come in as arguments so that they name the field. */
typedef struct mp_str_rule {
    size_t max;
    const char *too_long;
    const char *not_utf8;
} mp_str_rule;

/* UTF-8 check with an ASCII fast path: names, topics and headers are
 * nearly always ASCII, tested here eight bytes per step (the last, partial
 * step re-reads a few bytes rather than looping over them). Anything else
 * gets the full check. */
static bool mp_utf8_ok(const char *s, size_t len) {
    const uint64_t high = 0x8080808080808080ull;
    uint64_t w;
    if (len < 8) {
        for (size_t i = 0; i < len; i++) {
            if ((unsigned char)s[i] & 0x80) {
                return mpreg_utf8_valid(s, len);
            }
        }
        return true;
    }
    for (size_t i = 0; i + 8 <= len; i += 8) {
        memcpy(&w, s + i, sizeof w);
        if (w & high) {
            return mpreg_utf8_valid(s, len);
        }
    }
    memcpy(&w, s + len - 8, sizeof w);
    return !(w & high) || mpreg_utf8_valid(s, len);
}

static mpreg_err mp_check_str(mp_str s, const mp_str_rule *rule, const char **why) {
    if (s.len > rule->max) {
        MP_FAIL(MPREG_E_TOO_LARGE, rule->too_long);
    }
    if (s.len && !mp_utf8_ok(s.ptr, s.len)) {
        MP_FAIL(MPREG_E_INVALID, rule->not_utf8);
    }
    return MPREG_OK;
}

static const mp_str_rule mp_rule_topic = {MP_MAX_TOPIC_LEN, "topic: longer than MP_MAX_TOPIC_LEN",
                                          "topic: not valid UTF-8"};
static const mp_str_rule mp_rule_names[4] = {
    {MP_MAX_NAME_LEN, "source_node: longer than MP_MAX_NAME_LEN", "source_node: not valid UTF-8"},
    {MP_MAX_NAME_LEN, "source_cluster: longer than MP_MAX_NAME_LEN",
     "source_cluster: not valid UTF-8"},
    {MP_MAX_NAME_LEN, "target_cluster: longer than MP_MAX_NAME_LEN",
     "target_cluster: not valid UTF-8"},
    {MP_MAX_NAME_LEN, "target_node: longer than MP_MAX_NAME_LEN", "target_node: not valid UTF-8"},
};
static const mp_str_rule mp_rule_path[2] = {
    {MP_MAX_NAME_LEN, "federation_path: entry longer than MP_MAX_NAME_LEN",
     "federation_path: entry not valid UTF-8"},
    {MP_MAX_NAME_LEN, "routing_path: entry longer than MP_MAX_NAME_LEN",
     "routing_path: entry not valid UTF-8"},
};
static const mp_str_rule mp_rule_hkey = {MP_MAX_HEADER_KEY,
                                         "headers: key longer than MP_MAX_HEADER_KEY",
                                         "headers: key not valid UTF-8"};
static const mp_str_rule mp_rule_hvalue = {MP_MAX_HEADER_VALUE,
                                           "headers: value longer than MP_MAX_HEADER_VALUE",
                                           "headers: value not valid UTF-8"};

static mpreg_err mp_validate_names(const mp_envelope *e, const char **why) {
    const mp_str names[4] = {e->source_node, e->source_cluster, e->target_cluster, e->target_node};
    if (!mp_str_sane(e->topic) || !mp_str_sane(names[0]) || !mp_str_sane(names[1]) ||
        !mp_str_sane(names[2]) || !mp_str_sane(names[3])) {
        MP_FAIL(MPREG_E_INVALID, "envelope: string field with NULL pointer");
    }
    if ((e->kind == MP_KIND_PUBLISH || e->kind == MP_KIND_DELIVER) && e->topic.len == 0) {
        MP_FAIL(MPREG_E_MISSING_FIELD, "topic: required for publish and deliver");
    }
    mpreg_err err = mp_check_str(e->topic, &mp_rule_topic, why);
    for (int i = 0; i < 4 && !err; i++) {
        err = mp_check_str(names[i], &mp_rule_names[i], why);
    }
    return err;
}

static mpreg_err mp_validate_path(const mp_str *path, uint32_t len, bool routing,
                                  const char **why) {
    if (len > MP_MAX_PATH) {
        MP_FAIL(MPREG_E_PATH_TOO_LONG, routing ? "routing_path: more than MP_MAX_PATH entries"
                                               : "federation_path: more than MP_MAX_PATH entries");
    }
    for (uint32_t i = 0; i < len; i++) {
        if (path[i].len == 0 || path[i].ptr == NULL) {
            MP_FAIL(MPREG_E_INVALID,
                    routing ? "routing_path: empty entry" : "federation_path: empty entry");
        }
        mpreg_err err = mp_check_str(path[i], &mp_rule_path[routing], why);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

static mpreg_err mp_validate_headers(const mp_envelope *e, const char **why) {
    if (e->header_count > MP_MAX_HEADERS) {
        MP_FAIL(MPREG_E_TOO_LARGE, "headers: more than MP_MAX_HEADERS entries");
    }
    for (uint32_t i = 0; i < e->header_count; i++) {
        mp_str k = e->headers[i].key;
        mp_str v = e->headers[i].value;
        if (k.len == 0 || k.ptr == NULL) {
            MP_FAIL(MPREG_E_INVALID, "headers: empty key");
        }
        if (!mp_str_sane(v)) {
            MP_FAIL(MPREG_E_INVALID, "headers: value with NULL pointer");
        }
        mpreg_err err = mp_check_str(k, &mp_rule_hkey, why);
        if (!err) {
            err = mp_check_str(v, &mp_rule_hvalue, why);
        }
        if (err) {
            return err;
        }
        /* Quadratic, but n <= 64 and usually 0-3; a hash would cost more. */
        for (uint32_t j = 0; j < i; j++) {
            if (mp_str_eq(e->headers[j].key, k)) {
                MP_FAIL(MPREG_E_DUPLICATE, "headers: duplicate key");
            }
        }
    }
    return MPREG_OK;
}

mpreg_err mp_envelope_validate_headers(const mp_envelope *e, const char **why) {
    return mp_validate_headers(e, why);
}

mpreg_err mp_envelope_validate(const mp_envelope *e, const char **why) {
    if (e->version != MP_PROTOCOL_VERSION) {
        MP_FAIL(MPREG_E_VERSION, "version: unsupported protocol version");
    }
    if (!mp_kind_is_known((uint32_t)e->kind)) {
        MP_FAIL(MPREG_E_KIND, "kind: unknown kind");
    }
    if (mp_id_zero(&e->id)) {
        MP_FAIL(MPREG_E_INVALID, "id: must not be zero");
    }
    if (mp_kind_is_reply(e->kind) && mp_id_zero(&e->correlation_id)) {
        MP_FAIL(MPREG_E_MISSING_FIELD, "correlation: required for reply kinds");
    }
    mpreg_err err = mp_validate_names(e, why);
    if (err) {
        return err;
    }
    /* Most envelopes have no paths and no headers: no calls for them. */
    if (e->routing_path_len || e->federation_path_len) {
        err = mp_validate_path(e->routing_path, e->routing_path_len, true, why);
        if (err) {
            return err;
        }
        err = mp_validate_path(e->federation_path, e->federation_path_len, false, why);
        if (err) {
            return err;
        }
    }
    if (e->header_count) {
        err = mp_validate_headers(e, why);
        if (err) {
            return err;
        }
    }
    if (e->payload.len > UINT32_MAX || !(e->payload.len == 0 || e->payload.ptr != NULL)) {
        MP_FAIL(MPREG_E_TOO_LARGE, "payload: NULL or larger than a msgpack bin32");
    }
    if (e->hop_budget > MP_MAX_HOPS) {
        MP_FAIL(MPREG_E_HOP_BUDGET, "hop_budget: over MP_MAX_HOPS");
    }
    return MPREG_OK;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                  */

/* Worst-case encoded size: every item header at its widest (9 bytes for a
 * uint64, 5 for a str/bin/array/map 32) plus the bodies. Reserving it once
 * means the packer's appends never reallocate halfway through. */
static size_t mp_encoded_bound(const mp_envelope *e) {
    size_t n = 5 + 15 * (1 + 9) + 2 * MP_ID_LEN;
    n += e->topic.len + e->source_node.len + e->source_cluster.len + e->target_cluster.len +
         e->target_node.len;
    for (uint32_t i = 0; i < e->routing_path_len; i++) {
        n += 5 + e->routing_path[i].len;
    }
    for (uint32_t i = 0; i < e->federation_path_len; i++) {
        n += 5 + e->federation_path[i].len;
    }
    for (uint32_t i = 0; i < e->header_count; i++) {
        n += 10 + e->headers[i].key.len + e->headers[i].value.len;
    }
    /* Validation capped every term above far below SIZE_MAX; only the
     * payload can be big, and it is at most UINT32_MAX. */
    return n + e->payload.len;
}

/* The writer. After reserving the bound, every item is written straight
 * into the buffer, choosing the forms msgpack-c's packer chooses (the
 * smallest that holds the value), so encodings stay canonical and equal to
 * what other msgpack-c users produce. It replaced msgpack-c's packer here:
 * a callback per item head was half the cost of an encode, and an encode
 * runs for nearly every frame the node sends. */

static inline uint8_t *mp_w_be16(uint8_t *p, uint8_t tag, uint16_t v) {
    p[0] = tag;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)v;
    return p + 3;
}

static inline uint8_t *mp_w_be32(uint8_t *p, uint8_t tag, uint32_t v) {
    p[0] = tag;
    mp_put_u32be(p + 1, v);
    return p + 5;
}

static inline uint8_t *mp_w_uint(uint8_t *p, uint64_t v) {
    if (v < 0x80) {
        *p = (uint8_t)v;
        return p + 1;
    }
    if (v <= UINT8_MAX) {
        p[0] = 0xcc;
        p[1] = (uint8_t)v;
        return p + 2;
    }
    if (v <= UINT16_MAX) {
        return mp_w_be16(p, 0xcd, (uint16_t)v);
    }
    if (v <= UINT32_MAX) {
        return mp_w_be32(p, 0xce, (uint32_t)v);
    }
    p[0] = 0xcf;
    mp_put_u32be(p + 1, (uint32_t)(v >> 32));
    mp_put_u32be(p + 5, (uint32_t)v);
    return p + 9;
}

/* Heads of str, bin, array and map: fix form, then 8 (str and bin only),
 * 16 and 32 bits. */
static inline uint8_t *mp_w_str_head(uint8_t *p, size_t n) {
    if (n < 32) {
        *p = (uint8_t)(0xa0u | n);
        return p + 1;
    }
    if (n <= UINT8_MAX) {
        p[0] = 0xd9;
        p[1] = (uint8_t)n;
        return p + 2;
    }
    return n <= UINT16_MAX ? mp_w_be16(p, 0xda, (uint16_t)n) : mp_w_be32(p, 0xdb, (uint32_t)n);
}

static inline uint8_t *mp_w_bin_head(uint8_t *p, size_t n) {
    if (n <= UINT8_MAX) {
        p[0] = 0xc4;
        p[1] = (uint8_t)n;
        return p + 2;
    }
    return n <= UINT16_MAX ? mp_w_be16(p, 0xc5, (uint16_t)n) : mp_w_be32(p, 0xc6, (uint32_t)n);
}

static inline uint8_t *mp_w_array_head(uint8_t *p, size_t n) {
    if (n < 16) {
        *p = (uint8_t)(0x90u | n);
        return p + 1;
    }
    return n <= UINT16_MAX ? mp_w_be16(p, 0xdc, (uint16_t)n) : mp_w_be32(p, 0xdd, (uint32_t)n);
}

static inline uint8_t *mp_w_map_head(uint8_t *p, size_t n) {
    if (n < 16) {
        *p = (uint8_t)(0x80u | n);
        return p + 1;
    }
    return n <= UINT16_MAX ? mp_w_be16(p, 0xde, (uint16_t)n) : mp_w_be32(p, 0xdf, (uint32_t)n);
}

static inline uint8_t *mp_w_bytes(uint8_t *p, const void *src, size_t n) {
    if (n) {
        memcpy(p, src, n);
    }
    return p + n;
}

static inline uint8_t *mp_w_str(uint8_t *p, mp_str s) {
    return mp_w_bytes(mp_w_str_head(p, s.len), s.ptr, s.len);
}

/* Field keys are small positive fixints: one byte. */
static inline uint8_t *mp_w_opt_str(uint8_t *p, mp_field f, mp_str s) {
    if (s.len == 0) {
        return p;
    }
    *p = (uint8_t)f;
    return mp_w_str(p + 1, s);
}

static inline uint8_t *mp_w_uint_field(uint8_t *p, mp_field f, uint64_t v) {
    *p = (uint8_t)f;
    return mp_w_uint(p + 1, v);
}

static inline uint8_t *mp_w_id_field(uint8_t *p, mp_field f, const mp_id *id) {
    p[0] = (uint8_t)f;
    p[1] = 0xc4; /* bin 8 */
    p[2] = MP_ID_LEN;
    memcpy(p + 3, id->bytes, MP_ID_LEN);
    return p + 3 + MP_ID_LEN;
}

static uint8_t *mp_w_path(uint8_t *p, mp_field f, const mp_str *path, uint32_t len) {
    if (len == 0) {
        return p;
    }
    *p = (uint8_t)f;
    p = mp_w_array_head(p + 1, len);
    for (uint32_t i = 0; i < len; i++) {
        p = mp_w_str(p, path[i]);
    }
    return p;
}

/* extra: entries the caller appends after e's own (mp_envelope_encode_split). */
static uint8_t *mp_w_headers(uint8_t *p, const mp_envelope *e, uint32_t extra) {
    if (e->header_count + extra == 0) {
        return p;
    }
    *p = MP_F_HEADERS;
    p = mp_w_map_head(p + 1, e->header_count + extra);
    for (uint32_t i = 0; i < e->header_count; i++) {
        p = mp_w_str(p, e->headers[i].key);
        p = mp_w_str(p, e->headers[i].value);
    }
    return p;
}

/* Fields whose value differs from the default, plus the four always sent. */
static uint32_t mp_field_count(const mp_envelope *e, uint32_t extra_headers) {
    uint32_t n = 4; /* version, kind, id, hop_budget */
    n += !mp_id_zero(&e->correlation_id);
    n += e->topic.len > 0;
    n += e->source_node.len > 0;
    n += e->source_cluster.len > 0;
    n += e->target_cluster.len > 0;
    n += e->target_node.len > 0;
    n += e->routing_path_len > 0;
    n += e->federation_path_len > 0;
    n += e->deadline_ms > 0;
    n += e->header_count + extra_headers > 0;
    n += e->payload.len > 0;
    return n;
}

/* Fields go out in field-number order: not required by decoders, but it
 * makes encodings canonical (equal envelopes, equal bytes) and puts the
 * version first, where a peer of another version looks for it. Writes
 * everything up to the payload's bytes (the payload is the last field) and
 * returns the end. */
static uint8_t *mp_w_fields(uint8_t *p, const mp_envelope *e, uint32_t extra_headers, size_t *split,
                            const uint8_t *base) {
    p = mp_w_map_head(p, mp_field_count(e, extra_headers));
    p = mp_w_uint_field(p, MP_F_VERSION, e->version);
    p = mp_w_uint_field(p, MP_F_KIND, (uint32_t)e->kind);
    p = mp_w_id_field(p, MP_F_ID, &e->id);
    if (!mp_id_zero(&e->correlation_id)) {
        p = mp_w_id_field(p, MP_F_CORRELATION, &e->correlation_id);
    }
    p = mp_w_opt_str(p, MP_F_TOPIC, e->topic);
    p = mp_w_opt_str(p, MP_F_SOURCE_NODE, e->source_node);
    p = mp_w_opt_str(p, MP_F_SOURCE_CLUSTER, e->source_cluster);
    p = mp_w_opt_str(p, MP_F_TARGET_CLUSTER, e->target_cluster);
    p = mp_w_opt_str(p, MP_F_TARGET_NODE, e->target_node);
    p = mp_w_uint_field(p, MP_F_HOP_BUDGET, e->hop_budget);
    p = mp_w_path(p, MP_F_ROUTING_PATH, e->routing_path, e->routing_path_len);
    p = mp_w_path(p, MP_F_FEDERATION_PATH, e->federation_path, e->federation_path_len);
    if (e->deadline_ms) {
        p = mp_w_uint_field(p, MP_F_DEADLINE, e->deadline_ms);
    }
    p = mp_w_headers(p, e, extra_headers);
    if (split) {
        *split = (size_t)(p - base);
    }
    if (e->payload.len) {
        *p = MP_F_PAYLOAD;
        p = mp_w_bin_head(p + 1, e->payload.len);
    }
    return p;
}

mpreg_err mp_envelope_encode(const mp_envelope *e, mp_buf *out) {
    mpreg_err err = mp_envelope_validate(e, NULL);
    if (err) {
        return err;
    }
    err = mp_buf_reserve(out, mp_encoded_bound(e));
    if (err) {
        return err;
    }
    uint8_t *p = mp_w_fields(out->data + out->len, e, 0, NULL, out->data);
    p = mp_w_bytes(p, e->payload.ptr, e->payload.len);
    out->len = (size_t)(p - out->data);
    return MPREG_OK;
}

mpreg_err mp_envelope_encode_split(const mp_envelope *e, uint32_t extra_headers, mp_buf *out,
                                   size_t *split) {
    /* The bound walks the headers and paths: their counts must be sane. */
    if (e->header_count > MP_MAX_HEADERS || e->routing_path_len > MP_MAX_PATH ||
        e->federation_path_len > MP_MAX_PATH || e->payload.len > UINT32_MAX) {
        return MPREG_E_TOO_LARGE;
    }
    mpreg_err err = mp_buf_reserve(out, mp_encoded_bound(e) - e->payload.len);
    if (err) {
        return err;
    }
    uint8_t *p = mp_w_fields(out->data + out->len, e, extra_headers, split, out->data);
    out->len = (size_t)(p - out->data);
    return MPREG_OK;
}

mpreg_err mp_envelope_encode_frame(const mp_envelope *e, mp_buf *out) {
    size_t start = out->len;
    mpreg_err err = mp_buf_append_u32be(out, 0); /* length patched below */
    if (err) {
        return err;
    }
    err = mp_envelope_encode(e, out);
    if (err == MPREG_OK && out->len - start - 4 > UINT32_MAX) {
        err = MPREG_E_TOO_LARGE;
    }
    if (err) {
        out->len = start;
        return err;
    }
    mp_put_u32be(out->data + start, (uint32_t)(out->len - start - 4));
    return MPREG_OK;
}

/* ------------------------------------------------------------------------ */
/* Decoding: a strict cursor over MessagePack bytes (mpread.h)               */

/* Unknown fields an envelope may carry. Bounded so that the duplicate
 * check needs no allocation; 32 is far more than any future version needs. */
#define MP_MAX_UNKNOWN_FIELDS 32

/* An integer key as read: negative keys are as legal as positive ones. */
typedef struct mp_key {
    uint64_t n;
    bool negative;
} mp_key;

/* Decoder state beyond the cursor: what has been seen, and the why text of
 * the first failure. */
typedef struct mp_decoder {
    mp_rd c;
    const char *why;
    uint32_t seen;        /* bit f set when field f was read */
    uint32_t unknown_len; /* keys of unknown fields, for the duplicate check */
    mp_key unknown[MP_MAX_UNKNOWN_FIELDS];
} mp_decoder;

#define MP_DFAIL(d, code, text)                                                                    \
    do {                                                                                           \
        (d)->why = (text);                                                                         \
        return (code);                                                                             \
    } while (0)

/* A typed read failed: a truncation inside the item is reported as such
 * (a short frame is not a type error), anything else as the field's type
 * error. */
static mpreg_err mp_read_failed(mp_decoder *d, mpreg_err err, const char *why) {
    if (err == MPREG_E_TRUNCATED) {
        MP_DFAIL(d, err, "envelope: input ends inside an item");
    }
    MP_DFAIL(d, MPREG_E_DECODE, why);
}

static mpreg_err mp_read_str(mp_decoder *d, mp_str *s, const char *why) {
    mpreg_err err = mp_rd_str(&d->c, s);
    return err ? mp_read_failed(d, err, why) : MPREG_OK;
}

static mpreg_err mp_read_id(mp_decoder *d, mp_id *id, const char *why) {
    mp_bytes b;
    mpreg_err err = mp_rd_bin(&d->c, &b);
    if (err) {
        return mp_read_failed(d, err, why);
    }
    if (b.len != MP_ID_LEN) {
        MP_DFAIL(d, MPREG_E_DECODE, why);
    }
    memcpy(id->bytes, b.ptr, MP_ID_LEN);
    return MPREG_OK;
}

static mpreg_err mp_read_path(mp_decoder *d, mp_str *path, uint32_t *len, bool routing) {
    const char *why =
        routing ? "routing_path: expected array of str" : "federation_path: expected array of str";
    uint32_t n;
    mpreg_err err = mp_rd_array(&d->c, &n);
    if (err) {
        return mp_read_failed(d, err, why);
    }
    if (n > MP_MAX_PATH) {
        MP_DFAIL(d, MPREG_E_PATH_TOO_LONG,
                 routing ? "routing_path: more than MP_MAX_PATH entries"
                         : "federation_path: more than MP_MAX_PATH entries");
    }
    for (uint32_t i = 0; i < n; i++) {
        err = mp_read_str(d, &path[i], why);
        if (err) {
            return err;
        }
    }
    *len = n;
    return MPREG_OK;
}

static mpreg_err mp_read_headers(mp_decoder *d, mp_envelope *e) {
    const char *why = "headers: expected map of str to str";
    uint32_t n;
    mpreg_err err = mp_rd_map(&d->c, &n);
    if (err) {
        return mp_read_failed(d, err, why);
    }
    if (n > MP_MAX_HEADERS) {
        MP_DFAIL(d, MPREG_E_TOO_LARGE, "headers: more than MP_MAX_HEADERS entries");
    }
    for (uint32_t i = 0; i < n; i++) {
        err = mp_read_str(d, &e->headers[i].key, why);
        if (err == MPREG_OK) {
            err = mp_read_str(d, &e->headers[i].value, why);
        }
        if (err) {
            return err;
        }
    }
    e->header_count = n;
    return MPREG_OK;
}

/* An unsigned field: any integer format, but not a negative value. */
static mpreg_err mp_read_uint(mp_decoder *d, uint64_t *v, const char *why) {
    mpreg_err err = mp_rd_uint(&d->c, v);
    return err ? mp_read_failed(d, err, why) : MPREG_OK;
}

static mpreg_err mp_read_number_field(mp_decoder *d, mp_field f, mp_envelope *e) {
    uint64_t v;
    mpreg_err err = mp_read_uint(d, &v,
                                 f == MP_F_VERSION      ? "version: expected uint"
                                 : f == MP_F_KIND       ? "kind: expected uint"
                                 : f == MP_F_HOP_BUDGET ? "hop_budget: expected uint"
                                                        : "deadline: expected uint");
    if (err) {
        return err;
    }
    switch (f) {
    case MP_F_VERSION:
        /* Checked at once: a peer of another version may shape later fields
         * differently, and "wrong version" is the error it needs to hear. */
        if (v != MP_PROTOCOL_VERSION) {
            MP_DFAIL(d, MPREG_E_VERSION, "version: unsupported protocol version");
        }
        e->version = (uint32_t)v;
        return MPREG_OK;
    case MP_F_KIND:
        if (v > UINT32_MAX || !mp_kind_is_known((uint32_t)v)) {
            MP_DFAIL(d, MPREG_E_KIND, "kind: unknown kind");
        }
        e->kind = (mp_kind)v;
        return MPREG_OK;
    case MP_F_HOP_BUDGET:
        if (v > MP_MAX_HOPS) {
            MP_DFAIL(d, MPREG_E_HOP_BUDGET, "hop_budget: over MP_MAX_HOPS");
        }
        e->hop_budget = (uint32_t)v;
        return MPREG_OK;
    default:
        e->deadline_ms = v;
        return MPREG_OK;
    }
}

static mpreg_err mp_read_field(mp_decoder *d, mp_field f, mp_envelope *e) {
    switch (f) {
    case MP_F_VERSION:
    case MP_F_KIND:
    case MP_F_HOP_BUDGET:
    case MP_F_DEADLINE:
        return mp_read_number_field(d, f, e);
    case MP_F_ID:
        return mp_read_id(d, &e->id, "id: expected bin of 16 bytes");
    case MP_F_CORRELATION:
        return mp_read_id(d, &e->correlation_id, "correlation: expected bin of 16 bytes");
    case MP_F_TOPIC:
        return mp_read_str(d, &e->topic, "topic: expected str");
    case MP_F_SOURCE_NODE:
        return mp_read_str(d, &e->source_node, "source_node: expected str");
    case MP_F_SOURCE_CLUSTER:
        return mp_read_str(d, &e->source_cluster, "source_cluster: expected str");
    case MP_F_TARGET_CLUSTER:
        return mp_read_str(d, &e->target_cluster, "target_cluster: expected str");
    case MP_F_TARGET_NODE:
        return mp_read_str(d, &e->target_node, "target_node: expected str");
    case MP_F_ROUTING_PATH:
        return mp_read_path(d, e->routing_path, &e->routing_path_len, true);
    case MP_F_FEDERATION_PATH:
        return mp_read_path(d, e->federation_path, &e->federation_path_len, false);
    case MP_F_HEADERS:
        return mp_read_headers(d, e);
    case MP_F_PAYLOAD: {
        mpreg_err err = mp_rd_bin(&d->c, &e->payload);
        return err ? mp_read_failed(d, err, "payload: expected bin") : MPREG_OK;
    }
    }
    return MPREG_E_INTERNAL;
}

/* A key we do not know: remember it (duplicates are malformed even when we
 * cannot read them) and step over its value. */
static mpreg_err mp_skip_unknown(mp_decoder *d, mp_key key) {
    for (uint32_t i = 0; i < d->unknown_len; i++) {
        if (d->unknown[i].n == key.n && d->unknown[i].negative == key.negative) {
            MP_DFAIL(d, MPREG_E_DECODE, "envelope: duplicate field");
        }
    }
    if (d->unknown_len >= MP_MAX_UNKNOWN_FIELDS) {
        MP_DFAIL(d, MPREG_E_TOO_LARGE, "envelope: too many unknown fields");
    }
    d->unknown[d->unknown_len++] = key;
    /* Any depth: skipping counts the items owed, so nesting costs nothing. */
    mpreg_err err = mp_rd_skip(&d->c, MP_RD_ANY_DEPTH);
    if (err == MPREG_E_TRUNCATED) {
        MP_DFAIL(d, err, "envelope: input ends inside an item");
    }
    if (err) {
        MP_DFAIL(d, err, "envelope: malformed value of an unknown field");
    }
    return MPREG_OK;
}

static mpreg_err mp_decode_entry(mp_decoder *d, mp_envelope *e) {
    mp_rd_item key;
    mpreg_err err = mp_rd_next(&d->c, &key);
    if (err == MPREG_E_TRUNCATED) {
        MP_DFAIL(d, err, "envelope: input ends inside the map");
    }
    if (err || (key.type != MP_RD_UINT && key.type != MP_RD_NINT)) {
        MP_DFAIL(d, MPREG_E_DECODE, "envelope: field keys must be integers");
    }
    if (key.type == MP_RD_NINT || key.n < MP_F_VERSION || key.n > MP_F_PAYLOAD) {
        return mp_skip_unknown(d, (mp_key){key.n, key.type == MP_RD_NINT});
    }
    uint32_t bit = 1u << key.n;
    if (d->seen & bit) {
        MP_DFAIL(d, MPREG_E_DECODE, "envelope: duplicate field");
    }
    d->seen |= bit;
    return mp_read_field(d, (mp_field)key.n, e);
}

static mpreg_err mp_check_required(mp_decoder *d) {
    if (!(d->seen & (1u << MP_F_VERSION))) {
        MP_DFAIL(d, MPREG_E_MISSING_FIELD, "version: missing");
    }
    if (!(d->seen & (1u << MP_F_KIND))) {
        MP_DFAIL(d, MPREG_E_MISSING_FIELD, "kind: missing");
    }
    if (!(d->seen & (1u << MP_F_ID))) {
        MP_DFAIL(d, MPREG_E_MISSING_FIELD, "id: missing");
    }
    if (!(d->seen & (1u << MP_F_HOP_BUDGET))) {
        MP_DFAIL(d, MPREG_E_MISSING_FIELD, "hop_budget: missing");
    }
    return MPREG_OK;
}

/* Sets the fields decode may not see to their defaults. Cheaper than
 * mp_envelope_init: the path and header arrays (3 KiB) are left alone, as
 * only the entries below their counts are meaningful. */
static void mp_envelope_reset(mp_envelope *e) {
    e->version = 0;
    e->kind = MP_KIND_NONE;
    memset(&e->id, 0, sizeof e->id);
    memset(&e->correlation_id, 0, sizeof e->correlation_id);
    e->topic = MP_STR_NULL;
    e->source_node = MP_STR_NULL;
    e->source_cluster = MP_STR_NULL;
    e->target_cluster = MP_STR_NULL;
    e->target_node = MP_STR_NULL;
    e->hop_budget = 0;
    e->routing_path_len = 0;
    e->federation_path_len = 0;
    e->deadline_ms = 0;
    e->header_count = 0;
    e->payload = (mp_bytes){NULL, 0};
}

static mpreg_err mp_decode_map(mp_decoder *d, mp_envelope *e) {
    uint32_t n;
    mpreg_err err = mp_rd_map(&d->c, &n);
    if (err) {
        return mp_read_failed(d, err, "envelope: expected a map");
    }
    /* A lying count ends in TRUNCATED: each entry consumes bytes. */
    for (uint32_t i = 0; i < n; i++) {
        err = mp_decode_entry(d, e);
        if (err) {
            return err;
        }
    }
    if (d->c.p != d->c.end) {
        MP_DFAIL(d, MPREG_E_TRAILING, "envelope: bytes after the map");
    }
    return mp_check_required(d);
}

mpreg_err mp_envelope_decode(const void *data, size_t len, mp_envelope *out, const char **why) {
    mp_decoder d;
    d.c = mp_rd_init(data, len);
    d.why = NULL;
    d.seen = 0;
    d.unknown_len = 0;
    mp_envelope_reset(out);
    mpreg_err err = mp_decode_map(&d, out);
    if (err == MPREG_OK) {
        err = mp_envelope_validate(out, &d.why);
    }
    if (why) {
        *why = err ? d.why : NULL;
    }
    return err;
}
