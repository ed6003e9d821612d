/* test_envelope.c - the UnifiedMessage codec: round trips, defaults,
 * validation, every decode error, forward compatibility, zero copy, and
 * seeded property tests (random envelopes, random byte mutations). */
#include "core/envelope.h"
#include "core/rng.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */

static const mp_kind all_kinds[] = {
    MP_KIND_HELLO,         MP_KIND_WELCOME,     MP_KIND_PING,        MP_KIND_PONG,
    MP_KIND_ERROR,         MP_KIND_OK,          MP_KIND_GOODBYE,     MP_KIND_RPC_REQUEST,
    MP_KIND_RPC_REPLY,     MP_KIND_RPC_INVOKE,  MP_KIND_RPC_RESULT,  MP_KIND_REGISTER,
    MP_KIND_UNREGISTER,    MP_KIND_PUBLISH,     MP_KIND_DELIVER,     MP_KIND_SUBSCRIBE,
    MP_KIND_UNSUBSCRIBE,   MP_KIND_QUEUE_OP,    MP_KIND_QUEUE_REPLY, MP_KIND_QUEUE_DELIVER,
    MP_KIND_CACHE_OP,      MP_KIND_CACHE_REPLY, MP_KIND_GOSSIP,      MP_KIND_CONTROL,
    MP_KIND_CONTROL_REPLY,
};
#define N_KINDS (sizeof all_kinds / sizeof all_kinds[0])

static const mp_kind reply_kinds[] = {
    MP_KIND_WELCOME,    MP_KIND_PONG,        MP_KIND_OK,          MP_KIND_RPC_REPLY,
    MP_KIND_RPC_RESULT, MP_KIND_QUEUE_REPLY, MP_KIND_CACHE_REPLY, MP_KIND_CONTROL_REPLY,
};

static mp_id id_of(uint8_t fill) {
    mp_id id;
    memset(id.bytes, fill, sizeof id.bytes);
    return id;
}

/* A valid envelope of `kind` with the fields its kind requires. */
static void make_valid(mp_envelope *e, mp_kind kind) {
    mp_envelope_init(e, kind);
    e->id = id_of(0x11);
    if (mp_kind_is_reply(kind)) {
        e->correlation_id = id_of(0x22);
    }
    if (kind == MP_KIND_PUBLISH || kind == MP_KIND_DELIVER) {
        e->topic = mp_str_c("a.b");
    }
}

static void assert_str_eq(mp_str a, mp_str b, const char *field) {
    cr_assert_eq(a.len, b.len, "%s: length %zu != %zu", field, a.len, b.len);
    if (a.len) {
        cr_assert(memcmp(a.ptr, b.ptr, a.len) == 0, "%s: bytes differ", field);
    }
}

/* Field-by-field comparison with a message naming the field that differs. */
static void assert_envelopes_equal(const mp_envelope *a, const mp_envelope *b) {
    cr_assert_eq(a->version, b->version);
    cr_assert_eq(a->kind, b->kind);
    cr_assert(mp_id_equal(&a->id, &b->id), "id differs");
    cr_assert(mp_id_equal(&a->correlation_id, &b->correlation_id), "correlation differs");
    assert_str_eq(a->topic, b->topic, "topic");
    assert_str_eq(a->source_node, b->source_node, "source_node");
    assert_str_eq(a->source_cluster, b->source_cluster, "source_cluster");
    assert_str_eq(a->target_cluster, b->target_cluster, "target_cluster");
    assert_str_eq(a->target_node, b->target_node, "target_node");
    cr_assert_eq(a->hop_budget, b->hop_budget);
    cr_assert_eq(a->routing_path_len, b->routing_path_len);
    for (uint32_t i = 0; i < a->routing_path_len; i++) {
        assert_str_eq(a->routing_path[i], b->routing_path[i], "routing_path[i]");
    }
    cr_assert_eq(a->federation_path_len, b->federation_path_len);
    for (uint32_t i = 0; i < a->federation_path_len; i++) {
        assert_str_eq(a->federation_path[i], b->federation_path[i], "federation_path[i]");
    }
    cr_assert_eq(a->deadline_ms, b->deadline_ms);
    cr_assert_eq(a->header_count, b->header_count);
    for (uint32_t i = 0; i < a->header_count; i++) {
        assert_str_eq(a->headers[i].key, b->headers[i].key, "header key");
        assert_str_eq(a->headers[i].value, b->headers[i].value, "header value");
    }
    cr_assert_eq(a->payload.len, b->payload.len);
    if (a->payload.len) {
        cr_assert(memcmp(a->payload.ptr, b->payload.ptr, a->payload.len) == 0);
    }
    cr_assert(mp_envelope_equal(a, b));
}

/* encode -> decode -> compare; returns the encoded size. */
static size_t round_trip(const mp_envelope *in) {
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(in, &buf), MPREG_OK);
    mp_envelope *out = malloc(sizeof *out);
    const char *why = "unset";
    mpreg_err err = mp_envelope_decode(buf.data, buf.len, out, &why);
    cr_assert_eq(err, MPREG_OK, "decode: %s (%s)", mpreg_err_name(err), why ? why : "");
    cr_assert_null(why);
    assert_envelopes_equal(in, out);
    size_t len = buf.len;
    free(out);
    mp_buf_free(&buf);
    return len;
}

/* Hand-built MessagePack: a packer over an sbuffer. */
typedef struct mb {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} mb;

static void mb_init(mb *m) {
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
}

static void mb_free(mb *m) {
    msgpack_sbuffer_destroy(&m->sb);
}

static void mb_str(mb *m, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(&m->pk, n);
    msgpack_pack_str_body(&m->pk, s, n);
}

static void mb_bin(mb *m, const void *p, size_t n) {
    msgpack_pack_bin(&m->pk, n);
    msgpack_pack_bin_body(&m->pk, p, n);
}

static void mb_id(mb *m, uint8_t fill) {
    uint8_t id[16];
    memset(id, fill, sizeof id);
    mb_bin(m, id, sizeof id);
}

/* Bits of the four fields every envelope carries, for mb_base. */
enum { B_VERSION = 1, B_KIND = 2, B_ID = 4, B_HOPS = 8, B_ALL = 15 };

/* Starts a map of the required fields selected by `which` plus `extra`
 * entries the caller writes next. Kind is PING unless `kind` says. */
static void mb_base(mb *m, unsigned which, uint32_t extra, uint32_t kind) {
    uint32_t n = extra;
    for (unsigned b = which; b; b &= b - 1) {
        n++;
    }
    msgpack_pack_map(&m->pk, n);
    if (which & B_VERSION) {
        msgpack_pack_uint8(&m->pk, MP_F_VERSION);
        msgpack_pack_uint8(&m->pk, MP_PROTOCOL_VERSION);
    }
    if (which & B_KIND) {
        msgpack_pack_uint8(&m->pk, MP_F_KIND);
        msgpack_pack_uint32(&m->pk, kind);
    }
    if (which & B_ID) {
        msgpack_pack_uint8(&m->pk, MP_F_ID);
        mb_id(m, 0x11);
    }
    if (which & B_HOPS) {
        msgpack_pack_uint8(&m->pk, MP_F_HOP_BUDGET);
        msgpack_pack_uint8(&m->pk, 8);
    }
}

static mpreg_err mb_decode(mb *m, mp_envelope *e, const char **why) {
    return mp_envelope_decode(m->sb.data, m->sb.size, e, why);
}

/* Decodes and checks the code; when `why_prefix` is given, that the why
 * text starts with it (the field name). */
static void expect_decode(mb *m, mpreg_err want, const char *why_prefix) {
    mp_envelope *e = malloc(sizeof *e);
    const char *why = NULL;
    mpreg_err err = mb_decode(m, e, &why);
    cr_assert_eq(err, want, "got %s (%s), want %s", mpreg_err_name(err), why ? why : "-",
                 mpreg_err_name(want));
    if (want != MPREG_OK) {
        cr_assert_not_null(why, "an error must come with a why");
    }
    if (why_prefix) {
        cr_assert(strncmp(why, why_prefix, strlen(why_prefix)) == 0, "why '%s' does not start '%s'",
                  why, why_prefix);
    }
    free(e);
}

/* ------------------------------------------------------------------------ */
/* Kinds and construction                                                    */

Test(envelope, kinds_known_and_named) {
    for (size_t i = 0; i < N_KINDS; i++) {
        cr_assert(mp_kind_is_known(all_kinds[i]), "kind %d", all_kinds[i]);
        cr_assert_str_neq(mp_kind_name(all_kinds[i]), "unknown");
    }
    const uint32_t unknown[] = {0,  8,  15, 22, 31, 36, 47,  51,
                                63, 66, 79, 81, 95, 98, 255, 1u << 31};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        cr_assert_not(mp_kind_is_known(unknown[i]), "kind %u", unknown[i]);
    }
    cr_assert_str_eq(mp_kind_name(MP_KIND_RPC_REQUEST), "rpc_request");
    cr_assert_str_eq(mp_kind_name(MP_KIND_QUEUE_DELIVER), "queue_deliver");
    cr_assert_str_eq(mp_kind_name(MP_KIND_NONE), "unknown");
    cr_assert_str_eq(mp_kind_name((mp_kind)99), "unknown");
}

Test(envelope, reply_kinds) {
    size_t replies = 0;
    for (size_t i = 0; i < N_KINDS; i++) {
        replies += mp_kind_is_reply(all_kinds[i]);
    }
    cr_assert_eq(replies, sizeof reply_kinds / sizeof reply_kinds[0]);
    for (size_t i = 0; i < sizeof reply_kinds / sizeof reply_kinds[0]; i++) {
        cr_assert(mp_kind_is_reply(reply_kinds[i]));
    }
    cr_assert_not(mp_kind_is_reply(MP_KIND_ERROR));
    cr_assert_not(mp_kind_is_reply(MP_KIND_RPC_REQUEST));
}

Test(envelope, init_defaults) {
    mp_envelope e;
    memset(&e, 0xab, sizeof e);
    mp_envelope_init(&e, MP_KIND_PING);
    cr_assert_eq(e.version, MP_PROTOCOL_VERSION);
    cr_assert_eq(e.kind, MP_KIND_PING);
    cr_assert_eq(e.hop_budget, MP_DEFAULT_HOPS);
    cr_assert(mp_id_is_zero(&e.id));
    cr_assert(mp_id_is_zero(&e.correlation_id));
    cr_assert_eq(e.topic.len, 0);
    cr_assert_eq(e.routing_path_len + e.federation_path_len + e.header_count, 0);
    cr_assert_eq(e.deadline_ms, 0);
    cr_assert_eq(e.payload.len, 0);
}

/* ------------------------------------------------------------------------ */
/* Round trips and encoding                                                  */

static const uint8_t full_payload[] = {0, 1, 2, 0xff, 0xc1, 'x'};

static void make_full(mp_envelope *e) {
    mp_envelope_init(e, MP_KIND_RPC_REPLY);
    e->id = id_of(0x5a);
    e->correlation_id = id_of(0xa5);
    e->topic = mp_str_c("orders.eu.created");
    e->source_node = mp_str_c("node-1");
    e->source_cluster = mp_str_c("eu-west");
    e->target_cluster = mp_str_c("us-east");
    e->target_node = mp_str_c("node-9");
    e->hop_budget = MP_MAX_HOPS;
    e->routing_path[0] = mp_str_c("node-1");
    e->routing_path[1] = mp_str_c("node-4");
    e->routing_path_len = 2;
    e->federation_path[0] = mp_str_c("eu-west");
    e->federation_path_len = 1;
    e->deadline_ms = 1732406400123ull;
    cr_assert_eq(mp_envelope_add_header(e, mp_str_c("trace"), mp_str_c("abc")), MPREG_OK);
    cr_assert_eq(mp_envelope_add_header(e, mp_str_c("empty"), mp_str_c("")), MPREG_OK);
    e->payload = (mp_bytes){full_payload, sizeof full_payload};
}

Test(envelope, round_trip_every_field) {
    mp_envelope e;
    make_full(&e);
    round_trip(&e);
}

Test(envelope, round_trip_every_kind) {
    for (size_t i = 0; i < N_KINDS; i++) {
        mp_envelope e;
        make_valid(&e, all_kinds[i]);
        e.correlation_id = id_of(0x33); /* allowed on any kind */
        e.topic = mp_str_c("t.x");
        round_trip(&e);
        make_valid(&e, all_kinds[i]); /* and with only what is required */
        round_trip(&e);
    }
}

Test(envelope, round_trip_extremes) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    e.hop_budget = 0; /* on the wire 0 is valid: the receiver drops with an error */
    e.deadline_ms = UINT64_MAX;
    round_trip(&e);

    static char name[MP_MAX_NAME_LEN + 1];
    static char topic[MP_MAX_TOPIC_LEN + 1];
    static char hkey[MP_MAX_HEADER_KEY];
    static char hval[MP_MAX_HEADER_VALUE];
    memset(name, 'n', sizeof name);
    memset(topic, 't', sizeof topic);
    memset(hkey, 'k', sizeof hkey);
    memset(hval, 'v', sizeof hval);
    make_valid(&e, MP_KIND_PUBLISH);
    e.topic = (mp_str){topic, MP_MAX_TOPIC_LEN};
    e.source_node = e.source_cluster = e.target_cluster = e.target_node =
        (mp_str){name, MP_MAX_NAME_LEN};
    for (int i = 0; i < MP_MAX_PATH; i++) {
        e.routing_path[i] = e.federation_path[i] = (mp_str){name, MP_MAX_NAME_LEN};
    }
    e.routing_path_len = e.federation_path_len = MP_MAX_PATH;
    for (int i = 0; i < MP_MAX_HEADERS; i++) {
        /* Unique keys: vary the length. */
        e.headers[i].key = (mp_str){hkey, MP_MAX_HEADER_KEY - (size_t)i};
        e.headers[i].value = (mp_str){hval, MP_MAX_HEADER_VALUE};
    }
    e.header_count = MP_MAX_HEADERS;
    static uint8_t big[100000];
    e.payload = (mp_bytes){big, sizeof big};
    round_trip(&e);
}

Test(envelope, defaults_omitted) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(&e, &buf), MPREG_OK);
    /* fixmap(4) + {1:1} + {2:3} + {3: bin8(16)} + {10:16}: 1 + 2 + 2 + 19 + 2 */
    cr_assert_eq(buf.len, 26, "minimal envelope is %zu bytes", buf.len);
    cr_assert_eq(buf.data[0], 0x84, "a map of exactly the four required fields");
    cr_assert_eq(buf.data[1], MP_F_VERSION);
    cr_assert_eq(buf.data[3], MP_F_KIND);
    cr_assert_eq(buf.data[5], MP_F_ID);
    cr_assert_eq(buf.data[24], MP_F_HOP_BUDGET);
    mp_buf_free(&buf);
}

Test(envelope, encoding_is_canonical) {
    mp_envelope e, d;
    make_full(&e);
    mp_buf a = MP_BUF_INIT, b = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(&e, &a), MPREG_OK);
    cr_assert_eq(mp_envelope_decode(a.data, a.len, &d, NULL), MPREG_OK);
    cr_assert_eq(mp_envelope_encode(&d, &b), MPREG_OK);
    cr_assert_eq(a.len, b.len);
    cr_assert(memcmp(a.data, b.data, a.len) == 0);
    /* Field numbers appear in increasing order. */
    cr_assert_eq(a.data[0], 0x80 | 15);
    mp_buf_free(&a);
    mp_buf_free(&b);
}

Test(envelope, encode_appends) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    mp_buf buf = MP_BUF_INIT;
    mp_buf_append(&buf, "xyz", 3);
    cr_assert_eq(mp_envelope_encode(&e, &buf), MPREG_OK);
    cr_assert_eq(memcmp(buf.data, "xyz", 3), 0);
    mp_envelope d;
    cr_assert_eq(mp_envelope_decode(buf.data + 3, buf.len - 3, &d, NULL), MPREG_OK);
    mp_buf_free(&buf);
}

Test(envelope, encode_frame) {
    mp_envelope e, d;
    make_full(&e);
    mp_buf plain = MP_BUF_INIT, frame = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(&e, &plain), MPREG_OK);
    mp_buf_append(&frame, "\x01", 1);
    cr_assert_eq(mp_envelope_encode_frame(&e, &frame), MPREG_OK);
    cr_assert_eq(frame.len, 1 + 4 + plain.len);
    cr_assert_eq(mp_get_u32be(frame.data + 1), plain.len);
    cr_assert(memcmp(frame.data + 5, plain.data, plain.len) == 0);
    cr_assert_eq(mp_envelope_decode(frame.data + 5, frame.len - 5, &d, NULL), MPREG_OK);
    mp_buf_free(&plain);
    mp_buf_free(&frame);
}

Test(envelope, invalid_is_never_encoded) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PUBLISH);
    e.topic = MP_STR_NULL;
    mp_buf buf = MP_BUF_INIT;
    mp_buf_append(&buf, "keep", 4);
    cr_assert_eq(mp_envelope_encode(&e, &buf), MPREG_E_MISSING_FIELD);
    cr_assert_eq(buf.len, 4);
    cr_assert_eq(mp_envelope_encode_frame(&e, &buf), MPREG_E_MISSING_FIELD);
    cr_assert_eq(buf.len, 4, "a failed frame leaves no length prefix behind");
    mp_buf_free(&buf);
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */

static void expect_invalid(const mp_envelope *e, mpreg_err want, const char *why_prefix) {
    const char *why = NULL;
    mpreg_err err = mp_envelope_validate(e, &why);
    cr_assert_eq(err, want, "got %s (%s), want %s", mpreg_err_name(err), why ? why : "-",
                 mpreg_err_name(want));
    if (want) {
        cr_assert_not_null(why);
        cr_assert(strncmp(why, why_prefix, strlen(why_prefix)) == 0, "why '%s'", why);
        mp_buf buf = MP_BUF_INIT;
        cr_assert_eq(mp_envelope_encode(e, &buf), want);
        cr_assert_eq(buf.len, 0);
        mp_buf_free(&buf);
    }
}

Test(validate, version_kind_id) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    expect_invalid(&e, MPREG_OK, NULL);
    e.version = 2;
    expect_invalid(&e, MPREG_E_VERSION, "version");
    e.version = 0;
    expect_invalid(&e, MPREG_E_VERSION, "version");
    make_valid(&e, MP_KIND_PING);
    e.kind = MP_KIND_NONE;
    expect_invalid(&e, MPREG_E_KIND, "kind");
    e.kind = (mp_kind)99;
    expect_invalid(&e, MPREG_E_KIND, "kind");
    make_valid(&e, MP_KIND_PING);
    e.id = id_of(0);
    expect_invalid(&e, MPREG_E_INVALID, "id");
}

Test(validate, replies_need_correlation) {
    for (size_t i = 0; i < sizeof reply_kinds / sizeof reply_kinds[0]; i++) {
        mp_envelope e;
        make_valid(&e, reply_kinds[i]);
        expect_invalid(&e, MPREG_OK, NULL);
        e.correlation_id = id_of(0);
        expect_invalid(&e, MPREG_E_MISSING_FIELD, "correlation");
    }
    mp_envelope e;
    make_valid(&e, MP_KIND_ERROR); /* an error may answer nothing in particular */
    expect_invalid(&e, MPREG_OK, NULL);
}

Test(validate, topic) {
    mp_envelope e;
    static char t[MP_MAX_TOPIC_LEN + 1];
    memset(t, 'a', sizeof t);
    mp_kind need[] = {MP_KIND_PUBLISH, MP_KIND_DELIVER};
    for (int i = 0; i < 2; i++) {
        make_valid(&e, need[i]);
        e.topic = MP_STR_NULL;
        expect_invalid(&e, MPREG_E_MISSING_FIELD, "topic");
        e.topic = (mp_str){t, MP_MAX_TOPIC_LEN};
        expect_invalid(&e, MPREG_OK, NULL);
        e.topic = (mp_str){t, MP_MAX_TOPIC_LEN + 1};
        expect_invalid(&e, MPREG_E_TOO_LARGE, "topic");
    }
    make_valid(&e, MP_KIND_SUBSCRIBE); /* topic optional here; syntax is topic.h's job */
    expect_invalid(&e, MPREG_OK, NULL);
    e.topic = (mp_str){t, MP_MAX_TOPIC_LEN + 1};
    expect_invalid(&e, MPREG_E_TOO_LARGE, "topic");
}

Test(validate, names) {
    static char n[MP_MAX_NAME_LEN + 1];
    memset(n, 'n', sizeof n);
    mp_str ok = {n, MP_MAX_NAME_LEN}, big = {n, MP_MAX_NAME_LEN + 1};
    struct {
        size_t off;
        const char *name;
    } fields[] = {
        {offsetof(mp_envelope, source_node), "source_node"},
        {offsetof(mp_envelope, source_cluster), "source_cluster"},
        {offsetof(mp_envelope, target_cluster), "target_cluster"},
        {offsetof(mp_envelope, target_node), "target_node"},
    };
    for (size_t i = 0; i < 4; i++) {
        mp_envelope e;
        make_valid(&e, MP_KIND_PING);
        mp_str *f = (mp_str *)((char *)&e + fields[i].off);
        *f = ok;
        expect_invalid(&e, MPREG_OK, NULL);
        *f = big;
        expect_invalid(&e, MPREG_E_TOO_LARGE, fields[i].name);
    }
}

Test(validate, paths) {
    static char n[MP_MAX_NAME_LEN + 1];
    memset(n, 'n', sizeof n);
    for (int which = 0; which < 2; which++) {
        const char *name = which ? "federation_path" : "routing_path";
        mp_envelope e;
        make_valid(&e, MP_KIND_PING);
        mp_str *path = which ? e.federation_path : e.routing_path;
        uint32_t *len = which ? &e.federation_path_len : &e.routing_path_len;
        for (int i = 0; i < MP_MAX_PATH; i++) {
            path[i] = mp_str_c("hop");
        }
        *len = MP_MAX_PATH;
        expect_invalid(&e, MPREG_OK, NULL);
        *len = MP_MAX_PATH + 1; /* the array cannot hold it: checked before any read */
        expect_invalid(&e, MPREG_E_PATH_TOO_LONG, name);
        *len = 3;
        path[1] = MP_STR_NULL;
        expect_invalid(&e, MPREG_E_INVALID, name);
        path[1] = (mp_str){n, MP_MAX_NAME_LEN + 1};
        expect_invalid(&e, MPREG_E_TOO_LARGE, name);
        path[1] = (mp_str){n, MP_MAX_NAME_LEN};
        expect_invalid(&e, MPREG_OK, NULL);
    }
}

Test(validate, headers) {
    static char k[MP_MAX_HEADER_KEY + 1], v[MP_MAX_HEADER_VALUE + 1];
    memset(k, 'k', sizeof k);
    memset(v, 'v', sizeof v);
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    for (int i = 0; i < MP_MAX_HEADERS; i++) {
        e.headers[i].key = (mp_str){k, (size_t)i + 1};
        e.headers[i].value = mp_str_c("x");
    }
    e.header_count = MP_MAX_HEADERS;
    expect_invalid(&e, MPREG_OK, NULL);
    e.header_count = MP_MAX_HEADERS + 1;
    expect_invalid(&e, MPREG_E_TOO_LARGE, "headers");

    make_valid(&e, MP_KIND_PING);
    e.header_count = 2;
    e.headers[0] = (mp_header){mp_str_c("a"), mp_str_c("1")};
    e.headers[1] = (mp_header){MP_STR_NULL, mp_str_c("2")};
    expect_invalid(&e, MPREG_E_INVALID, "headers");
    e.headers[1].key = (mp_str){k, MP_MAX_HEADER_KEY};
    expect_invalid(&e, MPREG_OK, NULL);
    e.headers[1].key = (mp_str){k, MP_MAX_HEADER_KEY + 1};
    expect_invalid(&e, MPREG_E_TOO_LARGE, "headers");
    e.headers[1].key = mp_str_c("b");
    e.headers[1].value = (mp_str){v, MP_MAX_HEADER_VALUE};
    expect_invalid(&e, MPREG_OK, NULL);
    e.headers[1].value = (mp_str){v, MP_MAX_HEADER_VALUE + 1};
    expect_invalid(&e, MPREG_E_TOO_LARGE, "headers");
    e.headers[1] = (mp_header){mp_str_c("a"), mp_str_c("again")};
    expect_invalid(&e, MPREG_E_DUPLICATE, "headers");
}

Test(validate, hop_budget) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    e.hop_budget = MP_MAX_HOPS;
    expect_invalid(&e, MPREG_OK, NULL);
    e.hop_budget = MP_MAX_HOPS + 1;
    expect_invalid(&e, MPREG_E_HOP_BUDGET, "hop_budget");
    e.hop_budget = UINT32_MAX;
    expect_invalid(&e, MPREG_E_HOP_BUDGET, "hop_budget");
}

Test(validate, utf8) {
    static const char *const bad[] = {"\xff", "a\xc3", "\xc0\xaf", "\xed\xa0\x80",
                                      "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mp_str s = mp_str_c(bad[i]);
        mp_envelope e;
        make_valid(&e, MP_KIND_PING);
        e.topic = s;
        expect_invalid(&e, MPREG_E_INVALID, "topic");
        make_valid(&e, MP_KIND_PING);
        e.target_node = s;
        expect_invalid(&e, MPREG_E_INVALID, "target_node");
        make_valid(&e, MP_KIND_PING);
        e.federation_path[0] = s;
        e.federation_path_len = 1;
        expect_invalid(&e, MPREG_E_INVALID, "federation_path");
        make_valid(&e, MP_KIND_PING);
        e.headers[0] = (mp_header){mp_str_c("k"), s};
        e.header_count = 1;
        expect_invalid(&e, MPREG_E_INVALID, "headers: value");
        e.headers[0] = (mp_header){s, mp_str_c("v")};
        expect_invalid(&e, MPREG_E_INVALID, "headers: key");
    }
    mp_envelope e; /* NUL and every width of character are fine */
    make_valid(&e, MP_KIND_PING);
    e.topic = (mp_str){"a\0\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 11};
    expect_invalid(&e, MPREG_OK, NULL);
    round_trip(&e);

    mb m; /* and the decoder applies the same rule */
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_SOURCE_CLUSTER);
    mb_str(&m, "eu\xff");
    expect_decode(&m, MPREG_E_INVALID, "source_cluster");
    mb_free(&m);
}

Test(validate, null_pointers_with_length) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    e.source_node = (mp_str){NULL, 3};
    expect_invalid(&e, MPREG_E_INVALID, "envelope");
    make_valid(&e, MP_KIND_PING);
    e.payload = (mp_bytes){NULL, 3};
    expect_invalid(&e, MPREG_E_TOO_LARGE, "payload");
}

/* ------------------------------------------------------------------------ */
/* Decoding: hand-built inputs                                               */

Test(decode, minimal_hand_built) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 0, MP_KIND_PING);
    mp_envelope e;
    const char *why = "unset";
    cr_assert_eq(mb_decode(&m, &e, &why), MPREG_OK);
    cr_assert_null(why);
    cr_assert_eq(e.kind, MP_KIND_PING);
    cr_assert_eq(e.hop_budget, 8);
    cr_assert(mp_id_equal(&e.id, &(mp_id){{0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
                                           0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11}}));
    cr_assert(mp_id_is_zero(&e.correlation_id));
    cr_assert_eq(e.topic.len + e.source_node.len + e.payload.len, 0);
    cr_assert_eq(e.routing_path_len + e.federation_path_len + e.header_count, 0);
    mb_free(&m);
}

Test(decode, any_integer_width_accepted) {
    /* Other languages' encoders may not pick the smallest form; keys and
     * unsigned fields accept every integer format holding the value. */
    mb m;
    mb_init(&m);
    msgpack_pack_map(&m.pk, 5);
    msgpack_pack_fix_uint16(&m.pk, MP_F_VERSION);
    msgpack_pack_fix_int64(&m.pk, 1);
    msgpack_pack_fix_int8(&m.pk, MP_F_KIND);
    msgpack_pack_fix_uint64(&m.pk, MP_KIND_PING);
    msgpack_pack_fix_uint32(&m.pk, MP_F_ID);
    mb_id(&m, 7);
    msgpack_pack_fix_int32(&m.pk, MP_F_HOP_BUDGET);
    msgpack_pack_fix_int16(&m.pk, 3);
    msgpack_pack_fix_uint8(&m.pk, MP_F_DEADLINE);
    msgpack_pack_fix_uint64(&m.pk, 0xfedcba9876543210ull);
    mp_envelope e;
    cr_assert_eq(mb_decode(&m, &e, NULL), MPREG_OK);
    cr_assert_eq(e.hop_budget, 3);
    cr_assert_eq(e.deadline_ms, 0xfedcba9876543210ull);
    mb_free(&m);
}

Test(decode, empty_and_null_input) {
    mp_envelope e;
    const char *why = NULL;
    cr_assert_eq(mp_envelope_decode("", 0, &e, &why), MPREG_E_TRUNCATED);
    cr_assert_not_null(why);
    cr_assert_eq(mp_envelope_decode(NULL, 0, &e, NULL), MPREG_E_TRUNCATED);
}

Test(decode, not_a_map) {
    mb m;
    mb_init(&m);
    msgpack_pack_array(&m.pk, 0);
    expect_decode(&m, MPREG_E_DECODE, "envelope");
    mb_free(&m);
    mb_init(&m);
    mb_str(&m, "hello");
    expect_decode(&m, MPREG_E_DECODE, "envelope");
    mb_free(&m);
    const uint8_t reserved[] = {0xc1};
    mp_envelope e;
    cr_assert_eq(mp_envelope_decode(reserved, 1, &e, NULL), MPREG_E_DECODE);
}

Test(decode, non_integer_keys) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    mb_str(&m, "topic");
    mb_str(&m, "a.b");
    expect_decode(&m, MPREG_E_DECODE, "envelope: field keys");
    mb_free(&m);
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_double(&m.pk, 5.0);
    mb_str(&m, "a.b");
    expect_decode(&m, MPREG_E_DECODE, "envelope: field keys");
    mb_free(&m);
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_nil(&m.pk);
    expect_decode(&m, MPREG_E_DECODE, "envelope: field keys");
    mb_free(&m);
}

Test(decode, duplicate_keys) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 2, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_TOPIC);
    mb_str(&m, "a");
    msgpack_pack_fix_uint16(&m.pk, MP_F_TOPIC); /* same key, other width */
    mb_str(&m, "b");
    expect_decode(&m, MPREG_E_DECODE, "envelope: duplicate");
    mb_free(&m);

    mb_init(&m); /* the required ones too */
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_VERSION);
    msgpack_pack_uint8(&m.pk, 1);
    expect_decode(&m, MPREG_E_DECODE, "envelope: duplicate");
    mb_free(&m);

    mb_init(&m); /* and unknown ones, negative keys in two widths */
    mb_base(&m, B_ALL, 2, MP_KIND_PING);
    msgpack_pack_int8(&m.pk, -1);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_fix_int32(&m.pk, -1);
    msgpack_pack_nil(&m.pk);
    expect_decode(&m, MPREG_E_DECODE, "envelope: duplicate");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL, 2, MP_KIND_PING);
    msgpack_pack_uint32(&m.pk, 1000);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_fix_uint64(&m.pk, 1000);
    msgpack_pack_true(&m.pk);
    expect_decode(&m, MPREG_E_DECODE, "envelope: duplicate");
    mb_free(&m);
}

Test(decode, missing_required) {
    static const struct {
        unsigned which;
        const char *why;
    } cases[] = {
        {B_ALL & ~B_VERSION, "version"},
        {B_ALL & ~B_KIND, "kind"},
        {B_ALL & ~B_ID, "id"},
        {B_ALL & ~B_HOPS, "hop_budget"},
    };
    for (size_t i = 0; i < 4; i++) {
        mb m;
        mb_init(&m);
        mb_base(&m, cases[i].which, 0, MP_KIND_PING);
        expect_decode(&m, MPREG_E_MISSING_FIELD, cases[i].why);
        mb_free(&m);
    }
    mb m; /* an empty map */
    mb_init(&m);
    msgpack_pack_map(&m.pk, 0);
    expect_decode(&m, MPREG_E_MISSING_FIELD, "version");
    mb_free(&m);
}

Test(decode, version) {
    uint64_t bad[] = {0, 2, 255, UINT64_MAX};
    for (size_t i = 0; i < 4; i++) {
        mb m;
        mb_init(&m);
        mb_base(&m, B_ALL & ~B_VERSION, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, MP_F_VERSION);
        msgpack_pack_uint64(&m.pk, bad[i]);
        expect_decode(&m, MPREG_E_VERSION, "version");
        mb_free(&m);
    }
    /* The version is judged as soon as it is read, before fields of a shape
     * this version does not know. */
    mb m;
    mb_init(&m);
    msgpack_pack_map(&m.pk, 2);
    msgpack_pack_uint8(&m.pk, MP_F_VERSION);
    msgpack_pack_uint8(&m.pk, 2);
    msgpack_pack_uint8(&m.pk, MP_F_ID);
    mb_str(&m, "a future id form");
    expect_decode(&m, MPREG_E_VERSION, "version");
    mb_free(&m);
}

Test(decode, kind) {
    uint64_t bad[] = {0, 8, 99, 1ull << 32 | MP_KIND_PING, UINT64_MAX};
    for (size_t i = 0; i < 5; i++) {
        mb m;
        mb_init(&m);
        mb_base(&m, B_ALL & ~B_KIND, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, MP_F_KIND);
        msgpack_pack_uint64(&m.pk, bad[i]);
        expect_decode(&m, MPREG_E_KIND, "kind");
        mb_free(&m);
    }
}

Test(decode, id_lengths) {
    size_t lens[] = {0, 8, 15, 17, 32};
    uint8_t bytes[32];
    memset(bytes, 9, sizeof bytes);
    for (size_t i = 0; i < 5; i++) {
        mb m;
        mb_init(&m);
        mb_base(&m, B_ALL & ~B_ID, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, MP_F_ID);
        mb_bin(&m, bytes, lens[i]);
        expect_decode(&m, MPREG_E_DECODE, "id");
        mb_free(&m);
        mb_init(&m);
        mb_base(&m, B_ALL, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, MP_F_CORRELATION);
        mb_bin(&m, bytes, lens[i]);
        expect_decode(&m, MPREG_E_DECODE, "correlation");
        mb_free(&m);
    }
    mb m; /* an all-zero id is well-formed but invalid */
    mb_init(&m);
    mb_base(&m, B_ALL & ~B_ID, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_ID);
    mb_id(&m, 0);
    expect_decode(&m, MPREG_E_INVALID, "id");
    mb_free(&m);
}

/* One wrongly-typed value per field; every one must name its field. */
typedef void (*mb_writer)(mb *);
static void w_str(mb *m) {
    mb_str(m, "x");
}
static void w_bin(mb *m) {
    mb_bin(m, "x", 1);
}
static void w_nil(mb *m) {
    msgpack_pack_nil(&m->pk);
}
static void w_neg(mb *m) {
    msgpack_pack_int8(&m->pk, -3);
}
static void w_float(mb *m) {
    msgpack_pack_double(&m->pk, 1.0);
}
static void w_uint(mb *m) {
    msgpack_pack_uint8(&m->pk, 1);
}
static void w_map(mb *m) {
    msgpack_pack_map(&m->pk, 0);
}
static void w_array_of_int(mb *m) {
    msgpack_pack_array(&m->pk, 1);
    msgpack_pack_uint8(&m->pk, 1);
}
static void w_map_int_val(mb *m) {
    msgpack_pack_map(&m->pk, 1);
    mb_str(m, "k");
    msgpack_pack_uint8(&m->pk, 1);
}
static void w_map_bin_key(mb *m) {
    msgpack_pack_map(&m->pk, 1);
    mb_bin(m, "k", 1);
    mb_str(m, "v");
}
static void w_ext(mb *m) {
    msgpack_pack_ext(&m->pk, 1, 1);
    msgpack_pack_ext_body(&m->pk, "e", 1);
}

Test(decode, wrong_types_name_the_field) {
    static const struct {
        mp_field f;
        mb_writer w;
        const char *why;
    } cases[] = {
        {MP_F_VERSION, w_str, "version: expected uint"},
        {MP_F_VERSION, w_neg, "version: expected uint"},
        {MP_F_KIND, w_float, "kind: expected uint"},
        {MP_F_ID, w_str, "id: expected bin"},
        {MP_F_CORRELATION, w_nil, "correlation: expected bin"},
        {MP_F_TOPIC, w_bin, "topic: expected str"},
        {MP_F_TOPIC, w_nil, "topic: expected str"},
        {MP_F_SOURCE_NODE, w_uint, "source_node: expected str"},
        {MP_F_SOURCE_CLUSTER, w_map, "source_cluster: expected str"},
        {MP_F_TARGET_CLUSTER, w_ext, "target_cluster: expected str"},
        {MP_F_TARGET_NODE, w_bin, "target_node: expected str"},
        {MP_F_HOP_BUDGET, w_neg, "hop_budget: expected uint"},
        {MP_F_ROUTING_PATH, w_str, "routing_path: expected array"},
        {MP_F_ROUTING_PATH, w_array_of_int, "routing_path: expected array"},
        {MP_F_FEDERATION_PATH, w_map, "federation_path: expected array"},
        {MP_F_FEDERATION_PATH, w_array_of_int, "federation_path: expected array"},
        {MP_F_DEADLINE, w_float, "deadline: expected uint"},
        {MP_F_DEADLINE, w_neg, "deadline: expected uint"},
        {MP_F_HEADERS, w_array_of_int, "headers: expected map"},
        {MP_F_HEADERS, w_map_int_val, "headers: expected map"},
        {MP_F_HEADERS, w_map_bin_key, "headers: expected map"},
        {MP_F_PAYLOAD, w_str, "payload: expected bin"},
        {MP_F_PAYLOAD, w_nil, "payload: expected bin"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mb m;
        mb_init(&m);
        /* Put the bad field first so nothing else can fail before it. */
        msgpack_pack_map(&m.pk, 5);
        msgpack_pack_uint8(&m.pk, cases[i].f);
        cases[i].w(&m);
        msgpack_pack_uint8(&m.pk, MP_F_VERSION);
        msgpack_pack_uint8(&m.pk, 1);
        msgpack_pack_uint8(&m.pk, MP_F_KIND);
        msgpack_pack_uint8(&m.pk, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, MP_F_ID);
        mb_id(&m, 1);
        msgpack_pack_uint8(&m.pk, MP_F_HOP_BUDGET);
        msgpack_pack_uint8(&m.pk, 1);
        expect_decode(&m, MPREG_E_DECODE, cases[i].why);
        mb_free(&m);
    }
}

Test(decode, trailing_bytes) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 0, MP_KIND_PING);
    msgpack_pack_nil(&m.pk);
    expect_decode(&m, MPREG_E_TRAILING, "envelope");
    mb_free(&m);
}

Test(decode, every_prefix_is_truncated) {
    mp_envelope e, d;
    make_full(&e);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(&e, &buf), MPREG_OK);
    for (size_t n = 0; n < buf.len; n++) {
        const char *why = NULL;
        /* A heap copy of exactly n bytes lets ASan catch any overread. */
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf.data, n);
        mpreg_err err = mp_envelope_decode(copy, n, &d, &why);
        cr_assert_eq(err, MPREG_E_TRUNCATED, "prefix %zu: %s (%s)", n, mpreg_err_name(err),
                     why ? why : "-");
        free(copy);
    }
    mp_buf_free(&buf);
}

Test(decode, limits_on_the_wire) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL & ~B_HOPS, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_HOP_BUDGET);
    msgpack_pack_uint8(&m.pk, MP_MAX_HOPS + 1);
    expect_decode(&m, MPREG_E_HOP_BUDGET, "hop_budget");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL & ~B_HOPS, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_HOP_BUDGET);
    msgpack_pack_uint64(&m.pk, 1ull << 32);
    expect_decode(&m, MPREG_E_HOP_BUDGET, "hop_budget");
    mb_free(&m);

    for (int f = MP_F_ROUTING_PATH; f <= MP_F_FEDERATION_PATH; f++) {
        mb_init(&m);
        mb_base(&m, B_ALL, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, (uint8_t)f);
        msgpack_pack_array(&m.pk, MP_MAX_PATH + 1);
        for (int i = 0; i < MP_MAX_PATH + 1; i++) {
            mb_str(&m, "n");
        }
        expect_decode(&m, MPREG_E_PATH_TOO_LONG,
                      f == MP_F_ROUTING_PATH ? "routing_path" : "federation_path");
        mb_free(&m);

        mb_init(&m);
        mb_base(&m, B_ALL, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, (uint8_t)f);
        msgpack_pack_array(&m.pk, 2);
        mb_str(&m, "n");
        mb_str(&m, "");
        expect_decode(&m, MPREG_E_INVALID,
                      f == MP_F_ROUTING_PATH ? "routing_path" : "federation_path");
        mb_free(&m);
    }

    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_HEADERS);
    msgpack_pack_map(&m.pk, MP_MAX_HEADERS + 1);
    for (int i = 0; i < MP_MAX_HEADERS + 1; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        mb_str(&m, key);
        mb_str(&m, "v");
    }
    expect_decode(&m, MPREG_E_TOO_LARGE, "headers");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_HEADERS);
    msgpack_pack_map(&m.pk, 2);
    mb_str(&m, "k");
    mb_str(&m, "1");
    mb_str(&m, "k");
    mb_str(&m, "2");
    expect_decode(&m, MPREG_E_DUPLICATE, "headers");
    mb_free(&m);

    char topic[MP_MAX_TOPIC_LEN + 2];
    memset(topic, 't', sizeof topic - 1);
    topic[sizeof topic - 1] = '\0';
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, MP_F_TOPIC);
    mb_str(&m, topic);
    expect_decode(&m, MPREG_E_TOO_LARGE, "topic");
    mb_free(&m);
}

Test(decode, kind_rules_on_the_wire) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 0, MP_KIND_PUBLISH);
    expect_decode(&m, MPREG_E_MISSING_FIELD, "topic");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_DELIVER);
    msgpack_pack_uint8(&m.pk, MP_F_TOPIC);
    mb_str(&m, "");
    expect_decode(&m, MPREG_E_MISSING_FIELD, "topic");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL, 0, MP_KIND_RPC_REPLY);
    expect_decode(&m, MPREG_E_MISSING_FIELD, "correlation");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_RPC_REPLY);
    msgpack_pack_uint8(&m.pk, MP_F_CORRELATION);
    mb_id(&m, 0);
    expect_decode(&m, MPREG_E_MISSING_FIELD, "correlation");
    mb_free(&m);

    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_RPC_REPLY);
    msgpack_pack_uint8(&m.pk, MP_F_CORRELATION);
    mb_id(&m, 4);
    expect_decode(&m, MPREG_OK, NULL);
    mb_free(&m);
}

/* Writes one value of every MessagePack type, nested. */
static void w_everything(mb *m) {
    msgpack_pack_array(&m->pk, 12);
    msgpack_pack_nil(&m->pk);
    msgpack_pack_true(&m->pk);
    msgpack_pack_false(&m->pk);
    msgpack_pack_int64(&m->pk, INT64_MIN);
    msgpack_pack_uint64(&m->pk, UINT64_MAX);
    msgpack_pack_float(&m->pk, 1.5f);
    msgpack_pack_double(&m->pk, -2.25);
    mb_str(m, "a string that is longer than thirty-one bytes");
    mb_bin(m, "\0\1\2", 3);
    msgpack_pack_ext(&m->pk, 300, -7); /* ext16 */
    msgpack_pack_ext_body(&m->pk, (char[300]){0}, 300);
    msgpack_pack_map(&m->pk, 2);
    mb_str(m, "k");
    msgpack_pack_array(&m->pk, 0);
    msgpack_pack_uint8(&m->pk, 5);
    msgpack_pack_ext(&m->pk, 16, 3); /* fixext16 */
    msgpack_pack_ext_body(&m->pk, (char[16]){0}, 16);
    msgpack_pack_array(&m->pk, 3);
    msgpack_pack_ext(&m->pk, 1, 1);
    msgpack_pack_ext_body(&m->pk, "x", 1);
    msgpack_pack_ext(&m->pk, 3, 1); /* ext8 */
    msgpack_pack_ext_body(&m->pk, "xyz", 3);
    msgpack_pack_map(&m->pk, 0);
}

Test(decode, unknown_fields_skipped) {
    mb m;
    mb_init(&m);
    /* Unknown keys between and after known ones, of every type and sign. */
    msgpack_pack_map(&m.pk, 11);
    msgpack_pack_uint8(&m.pk, 0);
    w_everything(&m);
    msgpack_pack_uint8(&m.pk, MP_F_VERSION);
    msgpack_pack_uint8(&m.pk, 1);
    msgpack_pack_uint8(&m.pk, 16);
    mb_str(&m, "future");
    msgpack_pack_uint8(&m.pk, MP_F_KIND);
    msgpack_pack_uint8(&m.pk, MP_KIND_PUBLISH);
    msgpack_pack_int32(&m.pk, -5);
    w_everything(&m);
    msgpack_pack_uint8(&m.pk, MP_F_ID);
    mb_id(&m, 3);
    msgpack_pack_uint64(&m.pk, UINT64_MAX);
    msgpack_pack_nil(&m.pk);
    msgpack_pack_uint8(&m.pk, MP_F_TOPIC);
    mb_str(&m, "x.y");
    msgpack_pack_uint32(&m.pk, 1000000);
    w_bin(&m);
    msgpack_pack_uint8(&m.pk, MP_F_HOP_BUDGET);
    msgpack_pack_uint8(&m.pk, 2);
    msgpack_pack_uint8(&m.pk, 127);
    w_everything(&m);
    mp_envelope e;
    const char *why = NULL;
    mpreg_err err = mb_decode(&m, &e, &why);
    cr_assert_eq(err, MPREG_OK, "%s (%s)", mpreg_err_name(err), why ? why : "-");
    cr_assert_eq(e.kind, MP_KIND_PUBLISH);
    cr_assert(mp_str_eq_c(e.topic, "x.y"));
    cr_assert_eq(e.hop_budget, 2);
    cr_assert_eq(e.id.bytes[15], 3);
    mb_free(&m);
}

Test(decode, unknown_field_deep_nesting) {
    /* Skipping uses a counter, not recursion: depth costs nothing. */
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, 99);
    for (int i = 0; i < 100000; i++) {
        msgpack_pack_array(&m.pk, 1);
    }
    msgpack_pack_map(&m.pk, 0);
    expect_decode(&m, MPREG_OK, NULL);
    mb_free(&m);
}

Test(decode, unknown_field_lying_counts) {
    const uint8_t heads[][5] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff}, /* array32 of 4G items */
        {0xdf, 0xff, 0xff, 0xff, 0xff}, /* map32 */
        {0xdb, 0xff, 0xff, 0xff, 0xff}, /* str32 of 4 GiB */
        {0xc6, 0xff, 0xff, 0xff, 0xff}, /* bin32 */
        {0xc9, 0xff, 0xff, 0xff, 0xff}, /* ext32 */
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        mb m;
        mb_init(&m);
        mb_base(&m, B_ALL, 1, MP_KIND_PING);
        msgpack_pack_uint8(&m.pk, 99);
        msgpack_sbuffer_write(&m.sb, (const char *)heads[i], 5);
        expect_decode(&m, MPREG_E_TRUNCATED, "envelope");
        mb_free(&m);
    }
    mb m; /* the envelope's own map lying */
    mb_init(&m);
    msgpack_sbuffer_write(&m.sb, "\xdf\xff\xff\xff\xff\x01\x01", 7);
    expect_decode(&m, MPREG_E_TRUNCATED, "envelope");
    mb_free(&m);
}

Test(decode, unknown_field_reserved_byte) {
    mb m;
    mb_init(&m);
    mb_base(&m, B_ALL, 1, MP_KIND_PING);
    msgpack_pack_uint8(&m.pk, 99);
    msgpack_pack_array(&m.pk, 2);
    msgpack_pack_nil(&m.pk);
    msgpack_sbuffer_write(&m.sb, "\xc1", 1);
    expect_decode(&m, MPREG_E_DECODE, "envelope");
    mb_free(&m);
}

Test(decode, too_many_unknown_fields) {
    for (int extra = 32; extra <= 33; extra++) {
        mb m;
        mb_init(&m);
        mb_base(&m, B_ALL, (uint32_t)extra, MP_KIND_PING);
        for (int i = 0; i < extra; i++) {
            msgpack_pack_uint16(&m.pk, (uint16_t)(100 + i));
            msgpack_pack_nil(&m.pk);
        }
        expect_decode(&m, extra == 32 ? MPREG_OK : MPREG_E_TOO_LARGE,
                      extra == 32 ? NULL : "envelope");
        mb_free(&m);
    }
}

Test(decode, zero_copy) {
    mp_envelope e, d;
    make_full(&e);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(&e, &buf), MPREG_OK);
    cr_assert_eq(mp_envelope_decode(buf.data, buf.len, &d, NULL), MPREG_OK);
    const char *lo = (const char *)buf.data, *hi = lo + buf.len;
    cr_assert(d.topic.ptr >= lo && d.topic.ptr + d.topic.len <= hi, "topic points into input");
    cr_assert(d.source_node.ptr >= lo && d.source_node.ptr < hi);
    cr_assert(d.routing_path[1].ptr >= lo && d.routing_path[1].ptr < hi);
    cr_assert(d.headers[0].value.ptr >= lo && d.headers[0].value.ptr < hi);
    cr_assert((const char *)d.payload.ptr >= lo &&
              (const char *)d.payload.ptr + d.payload.len <= hi);
    /* Changing the input changes the view: nothing was copied. */
    size_t at = (size_t)(d.topic.ptr - lo);
    buf.data[at] = 'O';
    cr_assert_eq(d.topic.ptr[0], 'O');
    mp_buf_free(&buf);
}

/* ------------------------------------------------------------------------ */
/* Headers                                                                   */

Test(headers, lookup_and_add) {
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    cr_assert_null(mp_envelope_header(&e, "trace").ptr);
    cr_assert_eq(mp_envelope_add_header(&e, mp_str_c("trace"), mp_str_c("t1")), MPREG_OK);
    cr_assert_eq(mp_envelope_add_header(&e, mp_str_c("reply-to"), mp_str_c("inbox.7")), MPREG_OK);
    cr_assert(mp_str_eq_c(mp_envelope_header(&e, "trace"), "t1"));
    cr_assert(mp_str_eq_c(mp_envelope_header(&e, "reply-to"), "inbox.7"));
    cr_assert_null(mp_envelope_header(&e, "trac").ptr);
    cr_assert_null(mp_envelope_header(&e, "tracer").ptr);

    /* Adding an existing key replaces its value; keys stay unique. */
    cr_assert_eq(mp_envelope_add_header(&e, mp_str_c("trace"), mp_str_c("t2")), MPREG_OK);
    cr_assert_eq(e.header_count, 2);
    cr_assert(mp_str_eq_c(mp_envelope_header(&e, "trace"), "t2"));
    cr_assert_eq(mp_envelope_validate(&e, NULL), MPREG_OK);
    round_trip(&e);
}

Test(headers, add_limits) {
    static char big[MP_MAX_HEADER_VALUE + 1];
    mp_envelope e;
    make_valid(&e, MP_KIND_PING);
    cr_assert_eq(mp_envelope_add_header(&e, MP_STR_NULL, mp_str_c("v")), MPREG_E_INVALID);
    cr_assert_eq(mp_envelope_add_header(&e, (mp_str){big, MP_MAX_HEADER_KEY + 1}, mp_str_c("v")),
                 MPREG_E_TOO_LARGE);
    cr_assert_eq(mp_envelope_add_header(&e, mp_str_c("k"), (mp_str){big, sizeof big}),
                 MPREG_E_TOO_LARGE);
    cr_assert_eq(e.header_count, 0);
    static char keys[MP_MAX_HEADERS + 1][8];
    for (int i = 0; i <= MP_MAX_HEADERS; i++) {
        snprintf(keys[i], sizeof keys[i], "h%d", i);
        mpreg_err want = i < MP_MAX_HEADERS ? MPREG_OK : MPREG_E_TOO_LARGE;
        cr_assert_eq(mp_envelope_add_header(&e, mp_str_c(keys[i]), mp_str_c("v")), want);
    }
    cr_assert_eq(e.header_count, MP_MAX_HEADERS);
    /* Full, but replacing is still possible. */
    cr_assert_eq(mp_envelope_add_header(&e, mp_str_c("h3"), mp_str_c("w")), MPREG_OK);
    cr_assert(mp_str_eq_c(mp_envelope_header(&e, "h3"), "w"));
    round_trip(&e);
}

/* ------------------------------------------------------------------------ */
/* Seeded property tests                                                     */

/* Backing store for one random envelope's strings. */
typedef struct arena {
    char bytes[256 * 1024];
    size_t used;
} arena;

static mp_str rand_str(mp_rng *r, arena *a, size_t min, size_t max) {
    size_t len = min + (size_t)mp_rng_below(r, max - min + 1);
    cr_assert(a->used + len <= sizeof a->bytes);
    char *p = a->bytes + a->used;
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789.-_*#";
    /* Now and then multi-byte characters (2, 3 and 4 bytes), whole only. */
    static const char *const wide[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\x00"};
    bool mixed = mp_rng_below(r, 8) == 0;
    size_t i = 0;
    while (i < len) {
        const char *w = mixed ? wide[mp_rng_below(r, 4)] : NULL;
        size_t wl = w ? (w[0] ? strlen(w) : 1) : 0;
        if (w && i + wl <= len) {
            memcpy(p + i, w, wl);
            i += wl;
        } else {
            p[i++] = alphabet[mp_rng_below(r, sizeof alphabet - 1)];
        }
    }
    a->used += len;
    return (mp_str){p, len};
}

/* Short lengths mostly, the limits sometimes. */
static size_t rand_max(mp_rng *r, size_t limit) {
    return mp_rng_below(r, 4) == 0 ? limit : (limit < 12 ? limit : 12);
}

static void rand_envelope(mp_rng *r, arena *a, mp_envelope *e) {
    a->used = 0;
    mp_kind kind = all_kinds[mp_rng_below(r, N_KINDS)];
    mp_envelope_init(e, kind);
    e->id = mp_id_new(r);
    if (mp_kind_is_reply(kind) || mp_rng_below(r, 2)) {
        e->correlation_id = mp_id_new(r);
    }
    bool need_topic = kind == MP_KIND_PUBLISH || kind == MP_KIND_DELIVER;
    if (need_topic || mp_rng_below(r, 2)) {
        e->topic = rand_str(r, a, need_topic ? 1 : 0, rand_max(r, MP_MAX_TOPIC_LEN));
    }
    mp_str *names[] = {&e->source_node, &e->source_cluster, &e->target_cluster, &e->target_node};
    for (int i = 0; i < 4; i++) {
        if (mp_rng_below(r, 2)) {
            *names[i] = rand_str(r, a, 0, rand_max(r, MP_MAX_NAME_LEN));
        }
    }
    e->hop_budget = (uint32_t)mp_rng_below(r, MP_MAX_HOPS + 1);
    e->routing_path_len = (uint32_t)mp_rng_below(r, rand_max(r, MP_MAX_PATH) + 1);
    for (uint32_t i = 0; i < e->routing_path_len; i++) {
        e->routing_path[i] = rand_str(r, a, 1, rand_max(r, MP_MAX_NAME_LEN));
    }
    e->federation_path_len = (uint32_t)mp_rng_below(r, rand_max(r, MP_MAX_PATH) + 1);
    for (uint32_t i = 0; i < e->federation_path_len; i++) {
        e->federation_path[i] = rand_str(r, a, 1, rand_max(r, MP_MAX_NAME_LEN));
    }
    static const uint64_t deadlines[] = {
        0, 1, 127, 128, 255, 65535, 65536, UINT32_MAX, 1732406400123ull, UINT64_MAX};
    e->deadline_ms = mp_rng_below(r, 2) ? deadlines[mp_rng_below(r, 10)] : mp_rng_u64(r);
    uint32_t headers = (uint32_t)mp_rng_below(r, rand_max(r, MP_MAX_HEADERS) + 1);
    for (uint32_t i = 0; i < headers; i++) {
        mp_str k = rand_str(r, a, 1, rand_max(r, MP_MAX_HEADER_KEY));
        mp_str v = rand_str(r, a, 0, rand_max(r, 300));
        cr_assert_eq(mp_envelope_add_header(e, k, v), MPREG_OK); /* replaces duplicates */
    }
    if (mp_rng_below(r, 4)) {
        size_t len = (size_t)mp_rng_below(r, mp_rng_below(r, 8) == 0 ? 70000 : 64);
        cr_assert(a->used + len <= sizeof a->bytes);
        mp_rng_fill(r, a->bytes + a->used, len);
        e->payload = (mp_bytes){(const uint8_t *)a->bytes + a->used, len};
        a->used += len;
    }
}

Test(property, random_round_trips, .timeout = 120) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0x5eed0001);
    mp_rng *r = &x.rng;
    arena *a = malloc(sizeof *a);
    mp_envelope *e = malloc(sizeof *e), *d = malloc(sizeof *d);
    mp_buf buf = MP_BUF_INIT;
    for (int n = 0; n < 5000; n++) {
        rand_envelope(r, a, e);
        const char *why = NULL;
        cr_assert_eq(mp_envelope_validate(e, &why), MPREG_OK, "#%d: %s", n, why);
        mp_buf_clear(&buf);
        cr_assert_eq(mp_envelope_encode(e, &buf), MPREG_OK, "#%d", n);
        mpreg_err err = mp_envelope_decode(buf.data, buf.len, d, &why);
        cr_assert_eq(err, MPREG_OK, "#%d: %s (%s)", n, mpreg_err_name(err), why ? why : "-");
        assert_envelopes_equal(e, d);
    }
    mp_buf_free(&buf);
    free(a);
    free(e);
    free(d);
}

static bool is_known_code(mpreg_err err) {
    switch (err) {
    case MPREG_OK:
    case MPREG_E_INVALID:
    case MPREG_E_DECODE:
    case MPREG_E_TRUNCATED:
    case MPREG_E_TOO_LARGE:
    case MPREG_E_TRAILING:
    case MPREG_E_VERSION:
    case MPREG_E_KIND:
    case MPREG_E_MISSING_FIELD:
    case MPREG_E_PATH_TOO_LONG:
    case MPREG_E_HOP_BUDGET:
    case MPREG_E_DUPLICATE:
        return true;
    default:
        return false;
    }
}

/* One random edit: overwrite, flip a bit, insert, delete, or cut. */
static size_t mutate(mp_rng *r, uint8_t *p, size_t len, size_t cap) {
    size_t at = len ? (size_t)mp_rng_below(r, len) : 0;
    switch (mp_rng_below(r, 6)) {
    case 0:
        if (len) {
            p[at] = (uint8_t)mp_rng_u64(r);
        }
        return len;
    case 1:
        if (len) {
            p[at] ^= (uint8_t)(1u << mp_rng_below(r, 8));
        }
        return len;
    case 2: { /* interesting bytes: format markers and boundary values */
        static const uint8_t marks[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0xa0, 0xc0, 0xc1, 0xc4,
                                        0xc6, 0xcf, 0xd3, 0xd9, 0xdb, 0xdd, 0xdf, 0xff};
        if (len) {
            p[at] = marks[mp_rng_below(r, sizeof marks)];
        }
        return len;
    }
    case 3:
        if (len < cap) {
            memmove(p + at + 1, p + at, len - at);
            p[at] = (uint8_t)mp_rng_u64(r);
            return len + 1;
        }
        return len;
    case 4:
        if (len) {
            memmove(p + at, p + at + 1, len - at - 1);
            return len - 1;
        }
        return len;
    default:
        return at;
    }
}

Test(property, random_mutations, .timeout = 120) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0x5eed0002);
    mp_rng *r = &x.rng;
    arena *a = malloc(sizeof *a);
    mp_envelope *e = malloc(sizeof *e), *d = malloc(sizeof *d), *d2 = malloc(sizeof *d2);
    mp_buf buf = MP_BUF_INIT, again = MP_BUF_INIT;
    int ok = 0, failed = 0;
    for (int n = 0; n < 3000; n++) {
        rand_envelope(r, a, e);
        mp_buf_clear(&buf);
        cr_assert_eq(mp_envelope_encode(e, &buf), MPREG_OK);
        for (int m = 0; m < 10; m++) {
            /* An exact-size heap copy so that ASan sees any overread. */
            size_t cap = buf.len + 8;
            uint8_t *p = malloc(cap);
            memcpy(p, buf.data, buf.len);
            size_t len = buf.len;
            int edits = 1 + (int)mp_rng_below(r, 4);
            for (int k = 0; k < edits; k++) {
                len = mutate(r, p, len, cap);
            }
            uint8_t *exact = malloc(len ? len : 1);
            memcpy(exact, p, len);
            free(p);
            const char *why = NULL;
            mpreg_err err = mp_envelope_decode(exact, len, d, &why);
            cr_assert(is_known_code(err), "unexpected code %d", err);
            if (err == MPREG_OK) {
                ok++;
                cr_assert_null(why);
                cr_assert_eq(mp_envelope_validate(d, NULL), MPREG_OK);
                mp_buf_clear(&again);
                cr_assert_eq(mp_envelope_encode(d, &again), MPREG_OK);
                cr_assert_eq(mp_envelope_decode(again.data, again.len, d2, NULL), MPREG_OK);
                assert_envelopes_equal(d, d2);
            } else {
                failed++;
                cr_assert_not_null(why);
            }
            free(exact);
        }
    }
    cr_assert_gt(ok, 0, "some mutants still decode (payload bytes, string bytes)");
    cr_assert_gt(failed, 0);
    mp_buf_free(&buf);
    mp_buf_free(&again);
    free(a);
    free(e);
    free(d);
    free(d2);
}

/* --- the encoder against msgpack-c ------------------------------------------------
 * The encoder writes MessagePack by hand. What it must produce is what
 * msgpack-c's packer produces for the same items (the smallest form of each
 * head), which this reference encoder does the slow, obvious way. */

static void ref_str(msgpack_packer *pk, mp_str s) {
    msgpack_pack_str(pk, s.len);
    msgpack_pack_str_body(pk, s.ptr, s.len);
}

static void ref_opt_str(msgpack_packer *pk, mp_field f, mp_str s) {
    if (s.len) {
        msgpack_pack_uint8(pk, (uint8_t)f);
        ref_str(pk, s);
    }
}

static void ref_id(msgpack_packer *pk, mp_field f, const mp_id *id) {
    msgpack_pack_uint8(pk, (uint8_t)f);
    msgpack_pack_bin(pk, MP_ID_LEN);
    msgpack_pack_bin_body(pk, id->bytes, MP_ID_LEN);
}

static void ref_path(msgpack_packer *pk, mp_field f, const mp_str *path, uint32_t len) {
    if (len) {
        msgpack_pack_uint8(pk, (uint8_t)f);
        msgpack_pack_array(pk, len);
        for (uint32_t i = 0; i < len; i++) {
            ref_str(pk, path[i]);
        }
    }
}

static void ref_encode(const mp_envelope *e, msgpack_sbuffer *sb) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    bool corr = !mp_id_is_zero(&e->correlation_id);
    size_t n = 4 + corr + (e->topic.len > 0) + (e->source_node.len > 0) +
               (e->source_cluster.len > 0) + (e->target_cluster.len > 0) +
               (e->target_node.len > 0) + (e->routing_path_len > 0) + (e->federation_path_len > 0) +
               (e->deadline_ms > 0) + (e->header_count > 0) + (e->payload.len > 0);
    msgpack_pack_map(&pk, n);
    msgpack_pack_uint8(&pk, MP_F_VERSION);
    msgpack_pack_uint64(&pk, e->version);
    msgpack_pack_uint8(&pk, MP_F_KIND);
    msgpack_pack_uint64(&pk, (uint64_t)e->kind);
    ref_id(&pk, MP_F_ID, &e->id);
    if (corr) {
        ref_id(&pk, MP_F_CORRELATION, &e->correlation_id);
    }
    ref_opt_str(&pk, MP_F_TOPIC, e->topic);
    ref_opt_str(&pk, MP_F_SOURCE_NODE, e->source_node);
    ref_opt_str(&pk, MP_F_SOURCE_CLUSTER, e->source_cluster);
    ref_opt_str(&pk, MP_F_TARGET_CLUSTER, e->target_cluster);
    ref_opt_str(&pk, MP_F_TARGET_NODE, e->target_node);
    msgpack_pack_uint8(&pk, MP_F_HOP_BUDGET);
    msgpack_pack_uint64(&pk, e->hop_budget);
    ref_path(&pk, MP_F_ROUTING_PATH, e->routing_path, e->routing_path_len);
    ref_path(&pk, MP_F_FEDERATION_PATH, e->federation_path, e->federation_path_len);
    if (e->deadline_ms) {
        msgpack_pack_uint8(&pk, MP_F_DEADLINE);
        msgpack_pack_uint64(&pk, e->deadline_ms);
    }
    if (e->header_count) {
        msgpack_pack_uint8(&pk, MP_F_HEADERS);
        msgpack_pack_map(&pk, e->header_count);
        for (uint32_t i = 0; i < e->header_count; i++) {
            ref_str(&pk, e->headers[i].key);
            ref_str(&pk, e->headers[i].value);
        }
    }
    if (e->payload.len) {
        msgpack_pack_uint8(&pk, MP_F_PAYLOAD);
        msgpack_pack_bin(&pk, e->payload.len);
        msgpack_pack_bin_body(&pk, e->payload.ptr, e->payload.len);
    }
}

static void expect_same_as_msgpack_c(const mp_envelope *e, const char *what, int n) {
    mp_buf buf = MP_BUF_INIT;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    cr_assert_eq(mp_envelope_encode(e, &buf), MPREG_OK, "%s #%d", what, n);
    ref_encode(e, &sb);
    cr_assert_eq(buf.len, sb.size, "%s #%d: %zu bytes, msgpack-c %zu", what, n, buf.len, sb.size);
    cr_assert(memcmp(buf.data, sb.data, sb.size) == 0, "%s #%d: bytes differ", what, n);
    msgpack_sbuffer_destroy(&sb);
    mp_buf_free(&buf);
}

Test(property, encoder_matches_msgpack_c, .timeout = 120) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0x5eed0003);
    arena *a = malloc(sizeof *a);
    mp_envelope *e = malloc(sizeof *e);
    for (int n = 0; n < 3000; n++) {
        rand_envelope(&x.rng, a, e);
        expect_same_as_msgpack_c(e, "random", n);
    }
    /* Every head width: fixstr/str8/str16 and bin8/bin16/bin32 at their
     * edges, fixmap/map16 and fixarray/array16, each uint form. */
    static char text[MP_MAX_HEADER_VALUE];
    static uint8_t bytes[70000];
    memset(text, 'x', sizeof text);
    static const size_t str_lens[] = {0, 1, 31, 32, 255, 256, MP_MAX_HEADER_VALUE};
    static const size_t bin_lens[] = {1, 255, 256, 65535, 65536, sizeof bytes};
    static const uint64_t uints[] = {1,     127,   128,        255,        256,
                                     65535, 65536, UINT32_MAX, 1ull << 32, UINT64_MAX};
    for (size_t i = 0; i < sizeof str_lens / sizeof *str_lens; i++) {
        make_valid(e, MP_KIND_RPC_REQUEST);
        e->headers[0] = (mp_header){mp_str_c("k"), (mp_str){text, str_lens[i]}};
        e->header_count = 1;
        expect_same_as_msgpack_c(e, "header value length", (int)i);
    }
    for (size_t i = 0; i < sizeof bin_lens / sizeof *bin_lens; i++) {
        make_valid(e, MP_KIND_RPC_REQUEST);
        e->payload = (mp_bytes){bytes, bin_lens[i]};
        expect_same_as_msgpack_c(e, "payload length", (int)i);
    }
    for (size_t i = 0; i < sizeof uints / sizeof *uints; i++) {
        make_valid(e, MP_KIND_RPC_REQUEST);
        e->deadline_ms = uints[i];
        expect_same_as_msgpack_c(e, "deadline", (int)i);
    }
    static const uint32_t counts[] = {1, 15, 16, MP_MAX_PATH};
    static char keys[MP_MAX_HEADERS][12];
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        make_valid(e, MP_KIND_RPC_REQUEST);
        for (uint32_t j = 0; j < counts[i]; j++) {
            snprintf(keys[j], sizeof keys[j], "k%u", j);
            e->headers[j] = (mp_header){mp_str_c(keys[j]), mp_str_c("v")};
            e->routing_path[j] = e->federation_path[j] = mp_str_c("node");
        }
        e->header_count = e->routing_path_len = e->federation_path_len = counts[i];
        expect_same_as_msgpack_c(e, "counts", (int)i);
    }
    free(a);
    free(e);
}

/* --- the trusted split encoding ------------------------------------------------------ */

/* Appends one header entry the way the caller of mp_envelope_encode_split does. */
static void pack_header(mp_buf *out, mp_header h) {
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, mp_buf_msgpack_write);
    ref_str(&pk, h.key);
    ref_str(&pk, h.value);
}

/* e with its last `extra` headers left out, encoded split, then put back
 * together with them: it must be e's own encoding. */
static void expect_split_reassembles(const mp_envelope *e, uint32_t extra, int n) {
    mp_envelope *cut = malloc(sizeof *cut);
    *cut = *e;
    cut->header_count = e->header_count - extra;
    mp_buf whole = MP_BUF_INIT, part = MP_BUF_INIT, copy = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(e, &whole), MPREG_OK);
    cr_assert_eq(mp_buf_append(&part, "prefix", 6), MPREG_OK); /* it appends */
    size_t split = 0;
    cr_assert_eq(mp_envelope_encode_split(cut, extra, &part, &split), MPREG_OK, "#%d", n);
    cr_assert(split >= 6 && split <= part.len, "#%d: split %zu of %zu", n, split, part.len);
    cr_assert_eq(mp_buf_append(&copy, part.data + 6, split - 6), MPREG_OK);
    for (uint32_t i = 0; i < extra; i++) {
        pack_header(&copy, e->headers[e->header_count - extra + i]);
    }
    cr_assert_eq(mp_buf_append(&copy, part.data + split, part.len - split), MPREG_OK);
    if (e->payload.len) {
        cr_assert_eq(mp_buf_append(&copy, e->payload.ptr, e->payload.len), MPREG_OK);
    }
    cr_assert_eq(copy.len, whole.len, "#%d: %zu bytes, want %zu", n, copy.len, whole.len);
    cr_assert(memcmp(copy.data, whole.data, whole.len) == 0, "#%d: bytes differ", n);
    mp_buf_free(&whole);
    mp_buf_free(&part);
    mp_buf_free(&copy);
    free(cut);
}

Test(property, split_encoding_reassembles, .timeout = 120) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0x5eed0004);
    arena *a = malloc(sizeof *a);
    mp_envelope *e = malloc(sizeof *e);
    for (int n = 0; n < 3000; n++) {
        rand_envelope(&x.rng, a, e);
        uint32_t most = e->header_count < 4 ? e->header_count : 4;
        expect_split_reassembles(e, (uint32_t)mp_rng_below(&x.rng, most + 1), n);
    }
    /* The headers map appears for the extra entries alone, and grows from
     * fixmap to map16 across them. */
    static char keys[16][12];
    make_valid(e, MP_KIND_DELIVER);
    for (int i = 0; i < 16; i++) {
        snprintf(keys[i], sizeof keys[i], "h%d", i);
        e->headers[i] = (mp_header){mp_str_c(keys[i]), mp_str_c("v")};
    }
    for (uint32_t count = 1; count <= 16; count++) {
        e->header_count = count;
        expect_split_reassembles(e, count < 3 ? count : 3, (int)count);
    }
    free(a);
    free(e);
}

Test(envelope, split_refuses_impossible_counts) {
    mp_envelope e;
    make_valid(&e, MP_KIND_DELIVER);
    mp_buf out = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&out, "x", 1), MPREG_OK);
    size_t split = 0;
    e.header_count = MP_MAX_HEADERS + 1;
    cr_expect_eq(mp_envelope_encode_split(&e, 2, &out, &split), MPREG_E_TOO_LARGE);
    e.header_count = 0;
    e.routing_path_len = MP_MAX_PATH + 1;
    cr_expect_eq(mp_envelope_encode_split(&e, 2, &out, &split), MPREG_E_TOO_LARGE);
    cr_expect_eq(out.len, 1, "out left as it was");
    mp_buf_free(&out);
}

Test(envelope, init_fields_is_init_for_every_use) {
    mp_envelope *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    memset(b, 0xab, sizeof *b); /* garbage in the arrays it leaves alone */
    mp_envelope_init(a, MP_KIND_DELIVER);
    mp_envelope_init_fields(b, MP_KIND_DELIVER);
    cr_expect(mp_envelope_equal(a, b));
    a->id = b->id = id_of(7);
    a->topic = b->topic = mp_str_c("a.b");
    mp_buf x = MP_BUF_INIT, y = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(a, &x), MPREG_OK);
    cr_assert_eq(mp_envelope_encode(b, &y), MPREG_OK);
    cr_expect(x.len == y.len && memcmp(x.data, y.data, x.len) == 0);
    mp_buf_free(&x);
    mp_buf_free(&y);
    free(a);
    free(b);
}

Test(validate, headers_alone_as_in_validate) {
    static char big[MP_MAX_HEADER_VALUE + 1];
    memset(big, 'v', sizeof big);
    struct {
        mp_header h[2];
        uint32_t n;
        mpreg_err want;
    } cases[] = {
        {{{mp_str_c("a"), mp_str_c("1")}, {mp_str_c("b"), mp_str_c("")}}, 2, MPREG_OK},
        {{{mp_str_c("a"), mp_str_c("1")}, {mp_str_c("a"), mp_str_c("2")}}, 2, MPREG_E_DUPLICATE},
        {{{mp_str_c(""), mp_str_c("1")}}, 1, MPREG_E_INVALID},
        {{{mp_str_c("a"), (mp_str){"\xff", 1}}}, 1, MPREG_E_INVALID},
        {{{mp_str_c("a"), (mp_str){big, sizeof big}}}, 1, MPREG_E_TOO_LARGE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mp_envelope e;
        make_valid(&e, MP_KIND_DELIVER);
        e.header_count = cases[i].n;
        memcpy(e.headers, cases[i].h, cases[i].n * sizeof(mp_header));
        const char *why = NULL, *why_all = NULL;
        cr_expect_eq(mp_envelope_validate_headers(&e, &why), cases[i].want, "case %zu", i);
        cr_expect_eq(mp_envelope_validate(&e, &why_all), cases[i].want, "case %zu", i);
        cr_expect(why == why_all, "case %zu: the same reason", i);
    }
    mp_envelope e;
    make_valid(&e, MP_KIND_DELIVER);
    e.header_count = MP_MAX_HEADERS + 1;
    cr_expect_eq(mp_envelope_validate_headers(&e, NULL), MPREG_E_TOO_LARGE);
}
