/* test_delta.c - catalog deltas: building, the MessagePack codec, and the
 * decoder's behaviour on hostile bytes. */
#include "core/rng.h"
#include "fabric/delta.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- fixtures ----------------------------------------------------------------- */

static void mk_function(mp_entry *e) {
    cr_assert_eq(mp_entry_function(e, "n1", "c1", "fn", "id-1", "1.2.3-rc.1"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.function.resources, "gpu"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.function.resources, "cpu"), MPREG_OK);
    e->u.function.load = 3;
    e->version = (mp_entry_version){1, 2};
    e->ttl_ms = 1000;
}

static void mk_topic(mp_entry *e) {
    cr_assert_eq(mp_entry_topic(e, "n1", "c1", "orders.*.créé.#"), MPREG_OK);
    e->version = (mp_entry_version){1, 3};
}

static void mk_topic_group(mp_entry *e) {
    cr_assert_eq(mp_entry_topic_group(e, "n1", "c1", "orders.*.créé.#", "wörkers:1"), MPREG_OK);
    e->version = (mp_entry_version){1, 5};
    e->ttl_ms = 30000;
}

static void mk_queue(mp_entry *e) {
    cr_assert_eq(mp_entry_queue(e, "n1", "c1", "jobs", MP_QUEUE_QUORUM), MPREG_OK);
    e->u.queue.healthy = false;
    e->version = (mp_entry_version){1, 4};
}

static void mk_cache(mp_entry *e) {
    cr_assert_eq(mp_entry_cache(e, "n1", "c1", "eu-west"), MPREG_OK);
    e->u.cache.latitude = -33.8688;
    e->u.cache.longitude = 151.2093;
    e->u.cache.capacity_bytes = UINT64_MAX;
    e->u.cache.utilization = 0.1;
    e->u.cache.latency_ms = 1e-9;
    e->u.cache.reliability = 1.0;
    e->version = (mp_entry_version){UINT64_MAX, UINT64_MAX};
    e->ttl_ms = UINT32_MAX;
}

static void mk_node(mp_entry *e) {
    cr_assert_eq(mp_entry_node(e, "n1", "Node One", "c1", 7), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.endpoints, "10.0.0.1:7000"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.endpoints, "[::1]:7000"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.capabilities, "rpc"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.resources, "gpu"), MPREG_OK);
    e->version = (mp_entry_version){7, 0};
}

typedef void (*mk_fn)(mp_entry *e);
static const mk_fn makers[] = {mk_function, mk_topic, mk_topic_group, mk_queue, mk_cache, mk_node};
#define NMAKERS (sizeof makers / sizeof makers[0])

static void assert_delta_equal(const mp_delta *a, const mp_delta *b) {
    cr_assert_eq(a->entry_count, b->entry_count);
    for (uint32_t i = 0; i < a->entry_count; i++) {
        cr_assert(mp_entry_equal(&a->entries[i], &b->entries[i]), "entry %u differs", i);
    }
    cr_assert_eq(a->death_count, b->death_count);
    for (uint32_t i = 0; i < a->death_count; i++) {
        cr_assert_str_eq(a->deaths[i].node, b->deaths[i].node);
        cr_assert_eq(a->deaths[i].incarnation, b->deaths[i].incarnation);
    }
}

/* Encodes d, decodes it, checks the result equals d, and that encoding the
 * decoded delta gives the same bytes (the encoding is canonical). */
static void round_trip(const mp_delta *d) {
    mp_buf b = MP_BUF_INIT, b2 = MP_BUF_INIT;
    cr_assert_eq(mp_delta_encode(d, &b), MPREG_OK);
    mp_delta out;
    const char *why = NULL;
    mpreg_err err = mp_delta_decode(b.data, b.len, &out, &why);
    cr_assert_eq(err, MPREG_OK, "decode: %d %s", err, why ? why : "");
    assert_delta_equal(d, &out);
    cr_assert_eq(mp_delta_encode(&out, &b2), MPREG_OK);
    cr_assert_eq(b.len, b2.len);
    cr_assert_eq(memcmp(b.data, b2.data, b.len), 0);
    mp_delta_free(&out);
    mp_buf_free(&b);
    mp_buf_free(&b2);
}

/* Decodes and, on failure, checks the contract: *out is empty. */
static mpreg_err decode(const void *data, size_t len, const char **why) {
    mp_delta out;
    memset(&out, 0xab, sizeof out); /* garbage in: decode must reset it */
    mpreg_err err = mp_delta_decode(data, len, &out, why);
    if (err) {
        cr_assert_eq(out.entry_count, 0);
        cr_assert_eq(out.death_count, 0);
        cr_assert_null(out.entries);
        cr_assert_null(out.deaths);
    }
    mp_delta_free(&out);
    return err;
}

/* --- building ---------------------------------------------------------------- */

Test(delta, add_copies_and_take_moves) {
    mp_delta d;
    mp_delta_init(&d);
    mp_entry e;
    mk_node(&e);
    cr_assert_eq(mp_delta_add_entry(&d, &e), MPREG_OK);
    cr_assert(mp_entry_equal(&d.entries[0], &e));
    cr_assert_neq(d.entries[0].u.node.name, e.u.node.name);
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
    cr_assert_null(e.u.node.name); /* moved: e is zeroed */
    cr_assert_eq(d.entry_count, 2);
    cr_assert(mp_entry_equal(&d.entries[0], &d.entries[1]));
    cr_assert_eq(mp_delta_add_death(&d, "n9", 4), MPREG_OK);
    cr_assert_eq(mp_delta_add_death(&d, NULL, 4), MPREG_E_INVALID);
    cr_assert_eq(d.death_count, 1);
    cr_assert_str_eq(d.deaths[0].node, "n9");
    for (int i = 0; i < 100; i++) {
        mk_topic(&e);
        cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
        cr_assert_eq(mp_delta_add_death(&d, "n", (uint64_t)i), MPREG_OK);
    }
    cr_assert_eq(d.entry_count, 102);
    cr_assert_eq(d.death_count, 101);
    mp_delta_free(&d);
    cr_assert_eq(d.entry_count, 0);
    mp_delta_free(&d);
}

/* --- round trips ---------------------------------------------------------------- */

Test(delta, empty_delta_is_an_empty_map) {
    mp_delta d;
    mp_delta_init(&d);
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_delta_encode(&d, &b), MPREG_OK);
    cr_assert_eq(b.len, 1);
    cr_assert_eq(b.data[0], 0x80);
    mp_buf_free(&b);
    round_trip(&d);
}

Test(delta, round_trips_every_kind) {
    for (size_t i = 0; i < NMAKERS; i++) {
        mp_delta d;
        mp_delta_init(&d);
        mp_entry e;
        makers[i](&e);
        cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
        round_trip(&d);
        mp_delta_free(&d);
    }
}

Test(delta, round_trips_withdrawn_entries_and_deaths) {
    mp_delta d;
    mp_delta_init(&d);
    for (size_t i = 0; i < NMAKERS; i++) {
        mp_entry e;
        makers[i](&e);
        cr_assert_eq(mp_delta_add_entry(&d, &e), MPREG_OK);
        e.withdrawn = true;
        e.version.counter++;
        cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
    }
    cr_assert_eq(mp_delta_add_death(&d, "n2", 0), MPREG_OK);
    cr_assert_eq(mp_delta_add_death(&d, "n3", UINT64_MAX), MPREG_OK);
    round_trip(&d);
    mp_delta_free(&d);

    mp_delta_init(&d); /* deaths only */
    cr_assert_eq(mp_delta_add_death(&d, "n2", 5), MPREG_OK);
    round_trip(&d);
    mp_delta_free(&d);
}

Test(delta, round_trips_empty_lists_and_long_strings) {
    char max[MP_ENTRY_MAX_STR + 1];
    memset(max, 'z', MP_ENTRY_MAX_STR);
    max[MP_ENTRY_MAX_STR] = '\0';
    mp_delta d;
    mp_delta_init(&d);
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, max, max, max, "", "0.0.0"), MPREG_OK);
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK); /* no resources: not sent */
    cr_assert_eq(mp_entry_node(&e, "n", "n", "c", 0), MPREG_OK);
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK); /* three empty lists */
    cr_assert_eq(mp_entry_cache(&e, "n", "c", ""), MPREG_OK);
    e.u.cache.latitude = -0.0;
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
    round_trip(&d);
    mp_delta_free(&d);
}

Test(delta, encode_refuses_what_decode_would) {
    mp_delta d;
    mp_delta_init(&d);
    mp_entry e;
    memset(&e, 0, sizeof e);
    e.kind = (mp_entry_kind)0;
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "x", 1), MPREG_OK);
    cr_assert_eq(mp_delta_encode(&d, &b), MPREG_E_INVALID);
    cr_assert_eq(b.len, 1);
    mp_delta_free(&d);
    mp_buf_free(&b);
}

/* --- hand-built encodings for the decoder's error paths ------------------------- */

typedef struct pk {
    mp_buf buf;
    msgpack_packer p;
} pk;

static void pk_init(pk *k) {
    mp_buf_init(&k->buf);
    msgpack_packer_init(&k->p, &k->buf, mp_buf_msgpack_write);
}
static void pu(pk *k, uint64_t v) {
    msgpack_pack_uint64(&k->p, v);
}
static void pi(pk *k, int64_t v) {
    msgpack_pack_int64(&k->p, v);
}
static void ps(pk *k, const char *str) {
    msgpack_pack_str(&k->p, strlen(str));
    msgpack_pack_str_body(&k->p, str, strlen(str));
}
static void psn(pk *k, const char *str, size_t n) {
    msgpack_pack_str(&k->p, n);
    msgpack_pack_str_body(&k->p, str, n);
}
static void pm(pk *k, uint32_t n) {
    msgpack_pack_map(&k->p, n);
}
static void pa(pk *k, uint32_t n) {
    msgpack_pack_array(&k->p, n);
}
static void pf(pk *k, double v) {
    msgpack_pack_double(&k->p, v);
}
static void pb(pk *k, bool v) {
    v ? msgpack_pack_true(&k->p) : msgpack_pack_false(&k->p);
}

/* {1: [ <entry map of n fields> ]} */
static void one_entry(pk *k, uint32_t nfields) {
    pm(k, 1);
    pu(k, 1);
    pa(k, 1);
    pm(k, nfields);
}
/* kind, incarnation, counter: three fields */
static void hdr(pk *k, uint64_t kind) {
    pu(k, 1);
    pu(k, kind);
    pu(k, 2);
    pu(k, 1);
    pu(k, 3);
    pu(k, 1);
}
static void topic_key(pk *k) {
    pu(k, 6);
    pa(k, 2);
    ps(k, "n1");
    ps(k, "a.b");
}
static void topic_value(pk *k) {
    pu(k, 7);
    pm(k, 1);
    pu(k, 1);
    ps(k, "c1");
}

/* Decodes what k holds, frees it, and returns the error. */
static mpreg_err run(pk *k, const char **why) {
    mpreg_err err = decode(k->buf.data, k->buf.len, why);
    mp_buf_free(&k->buf);
    return err;
}

#define EXPECT(k, code, field)                                                                     \
    do {                                                                                           \
        const char *why_ = NULL;                                                                   \
        mpreg_err err_ = run(k, &why_);                                                            \
        cr_assert_eq(err_, code, "got %d (%s)", err_, why_ ? why_ : "-");                          \
        cr_assert_not_null(why_);                                                                  \
        cr_assert_str_eq(why_, field);                                                             \
    } while (0)

Test(delta, decode_accepts_a_minimal_hand_built_entry) {
    pk k;
    pk_init(&k);
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    topic_value(&k);
    mp_delta d;
    cr_assert_eq(mp_delta_decode(k.buf.data, k.buf.len, &d, NULL), MPREG_OK);
    cr_assert_eq(d.entry_count, 1);
    cr_assert_str_eq(d.entries[0].u.topic.key.pattern, "a.b");
    cr_assert_str_eq(d.entries[0].u.topic.cluster, "c1");
    cr_assert_eq(d.entries[0].ttl_ms, 0);
    cr_assert_not(d.entries[0].withdrawn);
    mp_delta_free(&d);
    mp_buf_free(&k.buf);
}

/* The topic key's group is field 8 of the entry: absent (every encoding
 * from before groups) is "", and the encoder leaves it out then. */
static mp_entry decode_one(pk *k) {
    mp_delta d;
    const char *why = NULL;
    mpreg_err err = mp_delta_decode(k->buf.data, k->buf.len, &d, &why);
    cr_assert_eq(err, MPREG_OK, "%d %s", err, why ? why : "");
    cr_assert_eq(d.entry_count, 1);
    mp_entry e;
    cr_assert_eq(mp_entry_clone(&d.entries[0], &e), MPREG_OK);
    mp_delta_free(&d);
    mp_buf_free(&k->buf);
    return e;
}

static size_t encoded_len(const mp_entry *e) {
    mp_delta d;
    mp_delta_init(&d);
    cr_assert_eq(mp_delta_add_entry(&d, e), MPREG_OK);
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_delta_encode(&d, &b), MPREG_OK);
    size_t n = b.len;
    mp_buf_free(&b);
    mp_delta_free(&d);
    return n;
}

Test(delta, topic_group_field) {
    pk k;
    /* Without field 8: ungrouped, and encoded back without it. */
    pk_init(&k);
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    topic_value(&k);
    size_t old_len = k.buf.len;
    mp_entry e = decode_one(&k);
    cr_assert_str_eq(e.u.topic.key.group, "");
    cr_assert_eq(encoded_len(&e), old_len);
    mp_entry_free(&e);
    /* With it: grouped, and the same bytes back. */
    pk_init(&k);
    one_entry(&k, 6);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    topic_value(&k);
    pu(&k, 8);
    ps(&k, "g");
    size_t grouped_len = k.buf.len;
    e = decode_one(&k);
    cr_assert_str_eq(e.u.topic.key.group, "g");
    cr_assert_str_eq(e.u.topic.key.pattern, "a.b");
    cr_assert_eq(encoded_len(&e), grouped_len);
    mp_entry_free(&e);
    /* Field 8 first, and "" spelled out: accepted, not canonical. */
    pk_init(&k);
    one_entry(&k, 6);
    pu(&k, 8);
    ps(&k, "");
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    topic_value(&k);
    e = decode_one(&k);
    cr_assert_str_eq(e.u.topic.key.group, "");
    cr_assert_eq(encoded_len(&e), old_len);
    mp_entry_free(&e);
    /* A grouped withdrawal keeps its group: it is part of the key. */
    pk_init(&k);
    one_entry(&k, 6);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    pu(&k, 5);
    pb(&k, true);
    pu(&k, 8);
    ps(&k, "g");
    e = decode_one(&k);
    cr_assert(e.withdrawn);
    cr_assert_str_eq(e.u.topic.key.group, "g");
    mp_entry_free(&e);
}

Test(delta, topic_group_field_errors) {
    pk k;
    static const char *q_key[] = {"n1", "jobs"};
    /* Only a topic has a group. */
    pk_init(&k);
    one_entry(&k, 6);
    hdr(&k, MP_ENTRY_QUEUE);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, q_key[0]);
    ps(&k, q_key[1]);
    pu(&k, 5);
    pb(&k, true);
    pu(&k, 8);
    ps(&k, "g");
    EXPECT(&k, MPREG_E_INVALID, "entry.group");
    /* The key array stays two strings: the group is not a third. */
    pk_init(&k);
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 3);
    ps(&k, "n1");
    ps(&k, "a.b");
    ps(&k, "g");
    topic_value(&k);
    EXPECT(&k, MPREG_E_INVALID, "entry.key");
    /* Type, length, NUL, UTF-8. */
    char long_group[MP_ENTRY_MAX_STR + 1];
    memset(long_group, 'g', sizeof long_group);
    static const struct {
        int how;
        mpreg_err err;
        const char *why;
    } bad[] = {
        {0, MPREG_E_TYPE, "entry.group"},
        {1, MPREG_E_TOO_LARGE, "entry.group"},
        {2, MPREG_E_INVALID, "entry.group"},
        {3, MPREG_E_INVALID, "key.group"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pk_init(&k);
        one_entry(&k, 6);
        hdr(&k, MP_ENTRY_TOPIC);
        topic_key(&k);
        topic_value(&k);
        pu(&k, 8);
        switch (bad[i].how) {
        case 0:
            pu(&k, 7);
            break;
        case 1:
            psn(&k, long_group, sizeof long_group);
            break;
        case 2:
            psn(&k, "g\0h", 3);
            break;
        default:
            psn(&k, "g\xff", 2);
        }
        EXPECT(&k, bad[i].err, bad[i].why);
    }
}

Test(delta, decode_rejects_malformed_messagepack) {
    const char *why;
    cr_assert_eq(decode(NULL, 0, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("", 0, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81", 1, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81\x01", 2, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\xc1", 1, &why), MPREG_E_DECODE);
    cr_assert_eq(decode("\x81\x09\xc1", 3, &why), MPREG_E_DECODE);
    cr_assert_eq(decode("\x80\x80", 2, &why), MPREG_E_TRAILING);
    cr_assert_eq(decode("\x80\x00", 2, &why), MPREG_E_TRAILING);
    cr_assert_eq(decode(NULL, 3, &why), MPREG_E_INVALID);
    /* Containers claiming more elements than there are bytes. */
    cr_assert_eq(decode("\xdd\xff\xff\xff\xff", 5, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\xdf\xff\xff\xff\xff\x01", 6, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81\x01\xdc\x00\x03\xc0\xc0", 7, &why), MPREG_E_TRUNCATED);
    /* Strings, bins and exts longer than the input. */
    cr_assert_eq(decode("\x81\x09\xdb\x7f\xff\xff\xff", 7, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81\x09\xc6\x00\x00\x00\x02\x00", 8, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81\x09\xc9\x00\x00\x00\x01\x05", 8, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81\x09\xd8\x05", 4, &why), MPREG_E_TRUNCATED);
    cr_assert_eq(decode("\x81\x09\xcb\x00", 4, &why), MPREG_E_TRUNCATED);
}

Test(delta, decode_limits_nesting) {
    /* {9: [[[[...]]]]} nested deeper than the scan allows. */
    unsigned char buf[64];
    size_t n = 0;
    buf[n++] = 0x81;
    buf[n++] = 0x09;
    for (int i = 0; i < 40; i++) {
        buf[n++] = 0x91;
    }
    buf[n++] = 0xc0;
    const char *why;
    cr_assert_eq(decode(buf, n, &why), MPREG_E_TOO_DEEP);
    /* Nesting of 10 in an unknown field is fine, and skipped. */
    n = 2;
    for (int i = 0; i < 10; i++) {
        buf[n++] = 0x91;
    }
    buf[n++] = 0xc0;
    cr_assert_eq(decode(buf, n, &why), MPREG_OK);
}

Test(delta, decode_rejects_bad_top_level_shapes) {
    pk k;
    pk_init(&k);
    pa(&k, 0);
    EXPECT(&k, MPREG_E_TYPE, "delta");
    pk_init(&k);
    pm(&k, 1);
    ps(&k, "entries");
    pa(&k, 0);
    EXPECT(&k, MPREG_E_TYPE, "delta");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 1);
    pm(&k, 0);
    EXPECT(&k, MPREG_E_TYPE, "entries");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    ps(&k, "x");
    EXPECT(&k, MPREG_E_TYPE, "deaths");
    pk_init(&k); /* the same key twice, once as uint8 and once as int64 */
    pm(&k, 2);
    pu(&k, 2);
    pa(&k, 0);
    msgpack_pack_int64(&k.p, 2);
    pa(&k, 0);
    EXPECT(&k, MPREG_E_DUPLICATE, "delta");
    pk_init(&k); /* unknown keys repeated are duplicates too */
    pm(&k, 2);
    pu(&k, 99);
    pb(&k, true);
    pu(&k, 99);
    pb(&k, false);
    EXPECT(&k, MPREG_E_DUPLICATE, "delta");
    pk_init(&k);
    pm(&k, 2);
    pi(&k, -5);
    pb(&k, true);
    pi(&k, -5);
    pb(&k, false);
    EXPECT(&k, MPREG_E_DUPLICATE, "delta");
}

Test(delta, decode_checks_duplicates_in_big_maps) {
    pk k;
    pk_init(&k);
    pm(&k, 40);
    for (int i = 0; i < 40; i++) {
        pu(&k, 100 + (uint64_t)(i == 39 ? 3 : i)); /* the last repeats 103 */
        pb(&k, true);
    }
    EXPECT(&k, MPREG_E_DUPLICATE, "delta");
    pk_init(&k);
    pm(&k, 40);
    for (int i = 0; i < 40; i++) {
        pi(&k, i % 2 ? -i : 100 + i); /* all unknown */
        pb(&k, true);
    }
    mp_delta d;
    cr_assert_eq(mp_delta_decode(k.buf.data, k.buf.len, &d, NULL), MPREG_OK);
    mp_delta_free(&d);
    mp_buf_free(&k.buf);
}

Test(delta, decode_rejects_over_limit_counts) {
    /* MP_DELTA_MAX_ENTRIES + 1 nils: refused on the count, before any entry. */
    size_t n = MP_DELTA_MAX_ENTRIES + 1;
    unsigned char *buf = malloc(n + 8);
    cr_assert_not_null(buf);
    size_t off = 0;
    buf[off++] = 0x81;
    buf[off++] = 0x01;
    buf[off++] = 0xdd;
    mp_put_u32be(buf + off, (uint32_t)n);
    off += 4;
    memset(buf + off, 0xc0, n);
    const char *why;
    cr_assert_eq(decode(buf, off + n, &why), MPREG_E_TOO_LARGE);
    cr_assert_str_eq(why, "entries");
    buf[1] = 0x02;
    cr_assert_eq(decode(buf, off + n, &why), MPREG_E_TOO_LARGE);
    cr_assert_str_eq(why, "deaths");
    mp_put_u32be(buf + 3, MP_DELTA_MAX_DEATHS + 1);
    cr_assert_eq(decode(buf, off + MP_DELTA_MAX_DEATHS + 1, &why), MPREG_E_TOO_LARGE);
    free(buf);
}

Test(delta, decode_rejects_bad_deaths) {
    pk k;
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    pa(&k, 1);
    ps(&k, "n1");
    EXPECT(&k, MPREG_E_TYPE, "death");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    pa(&k, 1);
    pa(&k, 3);
    ps(&k, "n1");
    pu(&k, 1);
    pu(&k, 1);
    EXPECT(&k, MPREG_E_INVALID, "death");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    pa(&k, 2);
    pa(&k, 2);
    ps(&k, "n1");
    pu(&k, 1);
    pa(&k, 2);
    ps(&k, "");
    pu(&k, 1);
    EXPECT(&k, MPREG_E_INVALID, "death.node");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    pa(&k, 1);
    pa(&k, 2);
    ps(&k, "n1");
    pi(&k, -1);
    EXPECT(&k, MPREG_E_TYPE, "death.incarnation");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    pa(&k, 1);
    pa(&k, 2);
    pu(&k, 1);
    pu(&k, 1);
    EXPECT(&k, MPREG_E_TYPE, "death.node");
    pk_init(&k);
    pm(&k, 1);
    pu(&k, 2);
    pa(&k, 1);
    pa(&k, 2);
    psn(&k, "n\0x", 3);
    pu(&k, 1);
    EXPECT(&k, MPREG_E_INVALID, "death.node");
}

Test(delta, decode_rejects_bad_entry_headers) {
    pk k;
    pk_init(&k); /* not a map */
    pm(&k, 1);
    pu(&k, 1);
    pa(&k, 1);
    pa(&k, 0);
    EXPECT(&k, MPREG_E_TYPE, "entry");
    pk_init(&k); /* no kind */
    one_entry(&k, 4);
    pu(&k, 2);
    pu(&k, 1);
    pu(&k, 3);
    pu(&k, 1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "entry.kind");
    for (uint64_t kind = 0; kind < 1000; kind += 6) { /* 0, 6, ...: unknown kinds */
        pk_init(&k);
        one_entry(&k, 5);
        hdr(&k, kind);
        topic_key(&k);
        topic_value(&k);
        EXPECT(&k, MPREG_E_INVALID, "entry.kind");
    }
    pk_init(&k);
    one_entry(&k, 5);
    pu(&k, 1);
    ps(&k, "topic");
    pu(&k, 2);
    pu(&k, 1);
    pu(&k, 3);
    pu(&k, 1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_TYPE, "entry.kind");
    pk_init(&k); /* no incarnation */
    one_entry(&k, 4);
    pu(&k, 1);
    pu(&k, MP_ENTRY_TOPIC);
    pu(&k, 3);
    pu(&k, 1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "entry.incarnation");
    pk_init(&k); /* no counter */
    one_entry(&k, 4);
    pu(&k, 1);
    pu(&k, MP_ENTRY_TOPIC);
    pu(&k, 2);
    pu(&k, 1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "entry.counter");
    pk_init(&k); /* negative counter */
    one_entry(&k, 5);
    pu(&k, 1);
    pu(&k, MP_ENTRY_TOPIC);
    pu(&k, 2);
    pu(&k, 1);
    pu(&k, 3);
    pi(&k, -1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_TYPE, "entry.counter");
    pk_init(&k); /* ttl over 32 bits */
    one_entry(&k, 6);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 4);
    pu(&k, (uint64_t)UINT32_MAX + 1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_RANGE, "entry.ttl_ms");
    pk_init(&k); /* withdrawn not a bool */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 5);
    pu(&k, 1);
    topic_key(&k);
    EXPECT(&k, MPREG_E_TYPE, "entry.withdrawn");
    pk_init(&k); /* duplicate field in an entry */
    one_entry(&k, 6);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 2);
    pu(&k, 1);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_DUPLICATE, "entry");
}

Test(delta, decode_rejects_bad_keys_and_values) {
    pk k;
    pk_init(&k); /* no key */
    one_entry(&k, 4);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_value(&k);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "entry.key");
    pk_init(&k); /* key of the wrong length */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 3);
    ps(&k, "n1");
    ps(&k, "a");
    ps(&k, "b");
    topic_value(&k);
    EXPECT(&k, MPREG_E_INVALID, "entry.key");
    pk_init(&k); /* key not an array */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    ps(&k, "n1");
    topic_value(&k);
    EXPECT(&k, MPREG_E_TYPE, "entry.key");
    pk_init(&k); /* key string as bin */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, "n1");
    msgpack_pack_bin(&k.p, 1);
    msgpack_pack_bin_body(&k.p, "a", 1);
    topic_value(&k);
    EXPECT(&k, MPREG_E_TYPE, "entry.key");
    pk_init(&k); /* key string with a NUL */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 2);
    psn(&k, "n1\0evil", 7);
    ps(&k, "a");
    topic_value(&k);
    EXPECT(&k, MPREG_E_INVALID, "entry.key");
    pk_init(&k); /* key string not UTF-8: caught by validation */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_QUEUE);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, "n1");
    ps(&k, "q\xed\xa0\x80"); /* a surrogate */
    pu(&k, 7);
    pm(&k, 3);
    pu(&k, 1);
    ps(&k, "c1");
    pu(&k, 2);
    pu(&k, 1);
    pu(&k, 3);
    pb(&k, true);
    EXPECT(&k, MPREG_E_INVALID, "key.queue");
    pk_init(&k); /* key string too long */
    char big[MP_ENTRY_MAX_STR + 1];
    memset(big, 'q', sizeof big);
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, "n1");
    psn(&k, big, sizeof big);
    topic_value(&k);
    EXPECT(&k, MPREG_E_TOO_LARGE, "entry.key");
    pk_init(&k); /* bad pattern: caught by validation */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, "n1");
    ps(&k, "a.*b");
    topic_value(&k);
    EXPECT(&k, MPREG_E_TOPIC, "key.pattern");
    pk_init(&k); /* live entry with no value */
    one_entry(&k, 4);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "entry.value");
    pk_init(&k); /* tombstone with a value */
    one_entry(&k, 6);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 5);
    pb(&k, true);
    topic_key(&k);
    topic_value(&k);
    EXPECT(&k, MPREG_E_INVALID, "entry.value");
    pk_init(&k); /* value not a map */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    pu(&k, 7);
    pa(&k, 0);
    EXPECT(&k, MPREG_E_TYPE, "entry.value");
    pk_init(&k); /* value without its cluster */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    pu(&k, 7);
    pm(&k, 0);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "value.cluster");
    pk_init(&k); /* value with a duplicate field */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    pu(&k, 7);
    pm(&k, 2);
    pu(&k, 1);
    ps(&k, "c1");
    pu(&k, 1);
    ps(&k, "c2");
    EXPECT(&k, MPREG_E_DUPLICATE, "entry.value");
    pk_init(&k); /* value with a string key */
    one_entry(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    pu(&k, 7);
    pm(&k, 1);
    ps(&k, "cluster");
    ps(&k, "c1");
    EXPECT(&k, MPREG_E_TYPE, "entry.value");
}

/* An entry of kind `kind` with `key` strings and a value map written by fill. */
static void entry_with(pk *k, uint64_t kind, const char **keys, uint32_t nkeys, uint32_t nvalue,
                       void (*fill)(pk *k)) {
    one_entry(k, 5);
    hdr(k, kind);
    pu(k, 6);
    pa(k, nkeys);
    for (uint32_t i = 0; i < nkeys; i++) {
        ps(k, keys[i]);
    }
    pu(k, 7);
    pm(k, nvalue);
    fill(k);
}

static const char *fn_key[] = {"n1", "fn", "", "1.0.0"};
static const char *q_key[] = {"n1", "jobs"};
static const char *node_key[] = {"n1"};

static void fn_load_big(pk *k) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 3);
    pu(k, (uint64_t)UINT32_MAX + 1);
}
static void fn_too_many_resources(pk *k) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 3);
    pu(k, 0);
    pu(k, 2);
    pa(k, MP_ENTRY_MAX_RESOURCES + 1);
    for (int i = 0; i < MP_ENTRY_MAX_RESOURCES + 1; i++) {
        ps(k, "r");
    }
}
static void fn_resource_not_str(pk *k) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 3);
    pu(k, 0);
    pu(k, 2);
    pa(k, 2);
    ps(k, "r");
    pu(k, 7);
}
static void fn_ok(pk *k) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 3);
    pu(k, 0);
}
static void fn_no_load(pk *k) {
    pu(k, 1);
    ps(k, "c1");
}
static void q_modes_zero(pk *k) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 2);
    pu(k, 0);
    pu(k, 3);
    pb(k, true);
}
static void q_healthy_int(pk *k) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 2);
    pu(k, 1);
    pu(k, 3);
    pu(k, 1);
}
static void cache_fields(pk *k, double lat, bool lat_as_int) {
    pu(k, 1);
    ps(k, "c1");
    pu(k, 2);
    ps(k, "r");
    pu(k, 3);
    if (lat_as_int) {
        pu(k, 10);
    } else {
        pf(k, lat);
    }
    pu(k, 4);
    msgpack_pack_float(&k->p, 2.5f); /* float 32 is a float too */
    pu(k, 5);
    pu(k, 1);
    pu(k, 6);
    pf(k, 0.5);
    pu(k, 7);
    pf(k, 1);
    pu(k, 8);
    pf(k, 1);
}
static void cache_lat_big(pk *k) {
    cache_fields(k, 91, false);
}
static void cache_lat_int(pk *k) {
    cache_fields(k, 0, true);
}
static void cache_ok(pk *k) {
    cache_fields(k, 45, false);
}
static void node_no_name(pk *k) {
    pu(k, 2);
    ps(k, "c1");
    pu(k, 6);
    pu(k, 1);
}
static void node_endpoints_map(pk *k) {
    pu(k, 1);
    ps(k, "n");
    pu(k, 2);
    ps(k, "c1");
    pu(k, 6);
    pu(k, 1);
    pu(k, 3);
    pm(k, 0);
}

Test(delta, decode_checks_value_fields_strictly) {
    pk k;
    pk_init(&k);
    entry_with(&k, MP_ENTRY_FUNCTION, fn_key, 4, 2, fn_load_big);
    EXPECT(&k, MPREG_E_RANGE, "value.load");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_FUNCTION, fn_key, 4, 3, fn_too_many_resources);
    EXPECT(&k, MPREG_E_TOO_LARGE, "value.resources");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_FUNCTION, fn_key, 4, 3, fn_resource_not_str);
    EXPECT(&k, MPREG_E_TYPE, "value.resources");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_FUNCTION, fn_key, 4, 1, fn_no_load);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "value.load");
    const char *bad_version[] = {"n1", "fn", "", "1.0.x"};
    pk_init(&k);
    entry_with(&k, MP_ENTRY_FUNCTION, bad_version, 4, 2, fn_ok);
    EXPECT(&k, MPREG_E_BAD_SEMVER, "key.version");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_QUEUE, q_key, 2, 3, q_modes_zero);
    EXPECT(&k, MPREG_E_INVALID, "modes");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_QUEUE, q_key, 2, 3, q_healthy_int);
    EXPECT(&k, MPREG_E_TYPE, "value.healthy");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_CACHE, node_key, 1, 8, cache_lat_big);
    EXPECT(&k, MPREG_E_RANGE, "latitude");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_CACHE, node_key, 1, 8, cache_lat_int);
    EXPECT(&k, MPREG_E_TYPE, "value.latitude");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_NODE, node_key, 1, 2, node_no_name);
    EXPECT(&k, MPREG_E_MISSING_FIELD, "value.name");
    pk_init(&k);
    entry_with(&k, MP_ENTRY_NODE, node_key, 1, 4, node_endpoints_map);
    EXPECT(&k, MPREG_E_TYPE, "value.endpoints");

    pk_init(&k);
    entry_with(&k, MP_ENTRY_CACHE, node_key, 1, 8, cache_ok);
    mp_delta d;
    cr_assert_eq(mp_delta_decode(k.buf.data, k.buf.len, &d, NULL), MPREG_OK);
    cr_assert_eq(d.entries[0].u.cache.longitude, 2.5);
    mp_delta_free(&d);
    mp_buf_free(&k.buf);
}

Test(delta, decode_validates_after_an_earlier_good_entry) {
    /* The first entry decodes; the second fails: nothing may leak and the
     * output must still come back empty. */
    pk k;
    pk_init(&k);
    pm(&k, 2);
    pu(&k, 2);
    pa(&k, 1);
    pa(&k, 2);
    ps(&k, "dead");
    pu(&k, 1);
    pu(&k, 1);
    pa(&k, 2);
    pm(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    topic_key(&k);
    topic_value(&k);
    pm(&k, 5);
    hdr(&k, MP_ENTRY_TOPIC);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, "");
    ps(&k, "a");
    topic_value(&k);
    EXPECT(&k, MPREG_E_INVALID, "key.node");
}

Test(delta, decode_skips_unknown_fields_at_every_level) {
    pk k;
    pk_init(&k);
    pm(&k, 3);
    pu(&k, 42); /* unknown delta field with a nested value */
    pm(&k, 1);
    ps(&k, "future");
    pa(&k, 2);
    pf(&k, 1.5);
    msgpack_pack_ext(&k.p, 3, 7);
    msgpack_pack_ext_body(&k.p, "abc", 3);
    pu(&k, 1);
    pa(&k, 1);
    pm(&k, 8);
    hdr(&k, MP_ENTRY_QUEUE);
    pu(&k, 15); /* unknown entry fields: the largest tracked number, */
    ps(&k, "x");
    pu(&k, 1000); /* a big one, */
    pm(&k, 0);
    pi(&k, -3); /* and a negative one */
    msgpack_pack_nil(&k.p);
    pu(&k, 6);
    pa(&k, 2);
    ps(&k, "n1");
    ps(&k, "jobs");
    pu(&k, 7);
    pm(&k, 4);
    pu(&k, 1);
    ps(&k, "c1");
    pu(&k, 2);
    pu(&k, MP_QUEUE_BROADCAST);
    pu(&k, 12); /* unknown value field */
    msgpack_pack_bin(&k.p, 2);
    msgpack_pack_bin_body(&k.p, "\0\1", 2);
    pu(&k, 3);
    pb(&k, true);
    pu(&k, 2);
    pa(&k, 0);
    mp_delta d;
    const char *why = NULL;
    mpreg_err err = mp_delta_decode(k.buf.data, k.buf.len, &d, &why);
    cr_assert_eq(err, MPREG_OK, "%d %s", err, why ? why : "");
    cr_assert_null(why);
    cr_assert_eq(d.entry_count, 1);
    cr_assert_eq(d.death_count, 0);
    mp_entry want;
    cr_assert_eq(mp_entry_queue(&want, "n1", "c1", "jobs", MP_QUEUE_BROADCAST), MPREG_OK);
    want.version = (mp_entry_version){1, 1};
    cr_assert(mp_entry_equal(&d.entries[0], &want));
    mp_entry_free(&want);
    mp_delta_free(&d);
    mp_buf_free(&k.buf);
}

/* --- random deltas --------------------------------------------------------------- */

static uint64_t below(mp_xoshiro *x, uint64_t n) {
    return mp_rng_below(&x->rng, n);
}

/* A random string of 1..max bytes from an alphabet that includes multibyte
 * UTF-8 and punctuation, so no byte is special to the codec. */
static void rand_word(mp_xoshiro *x, char *out, size_t max) {
    static const char *pieces[] = {"a", "b", "z", "0", "9", "-", "_", ":", "é", "ß", "日", "🙂"};
    size_t np = sizeof pieces / sizeof pieces[0];
    size_t n = 1 + below(x, max);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *p = pieces[below(x, np)];
        if (strlen(out) + strlen(p) >= max + 1) {
            break;
        }
        strcat(out, p);
    }
    if (out[0] == '\0') {
        strcpy(out, "a");
    }
}

static void rand_pattern(mp_xoshiro *x, char *out) {
    size_t words = 1 + below(x, 4);
    out[0] = '\0';
    for (size_t i = 0; i < words; i++) {
        char w[24];
        uint64_t r = below(x, 6);
        if (r == 0) {
            strcpy(w, "*");
        } else if (r == 1) {
            strcpy(w, "#");
        } else {
            rand_word(x, w, 8);
        }
        if (i) {
            strcat(out, ".");
        }
        strcat(out, w);
    }
}

static void rand_version(mp_xoshiro *x, char *out, size_t len) {
    unsigned maj = (unsigned)below(x, 20), min = (unsigned)below(x, 20),
             pat = (unsigned)below(x, 99);
    if (below(x, 3) == 0) {
        snprintf(out, len, "%u.%u.%u-rc.%u", maj, min, pat, (unsigned)below(x, 9));
    } else if (below(x, 4) == 0) {
        snprintf(out, len, "v%u.%u", maj, min);
    } else {
        snprintf(out, len, "%u.%u.%u", maj, min, pat);
    }
}

static double rand_in(mp_xoshiro *x, double lo, double hi) {
    return lo + (hi - lo) * mp_rng_double(&x->rng);
}

static void rand_list(mp_xoshiro *x, mp_strlist *l, uint32_t max) {
    uint32_t n = (uint32_t)below(x, max + 1);
    for (uint32_t i = 0; i < n; i++) {
        char w[40];
        rand_word(x, w, 30);
        cr_assert_eq(mp_strlist_push(l, w), MPREG_OK);
    }
}

static void rand_entry(mp_xoshiro *x, mp_entry *e) {
    char node[40], cluster[40], a1[40], a2[40], ver[40], pat[160];
    rand_word(x, node, 30);
    rand_word(x, cluster, 30);
    switch (1 + below(x, 5)) {
    case MP_ENTRY_FUNCTION:
        rand_word(x, a1, 30);
        rand_word(x, a2, 30);
        rand_version(x, ver, sizeof ver);
        cr_assert_eq(mp_entry_function(e, node, cluster, a1, below(x, 2) ? a2 : "", ver), MPREG_OK,
                     "version %s", ver);
        rand_list(x, &e->u.function.resources, 4);
        e->u.function.load = (uint32_t)mp_rng_u64(&x->rng);
        break;
    case MP_ENTRY_TOPIC:
        rand_pattern(x, pat);
        rand_word(x, a1, 30);
        cr_assert_eq(mp_entry_topic_group(e, node, cluster, pat, below(x, 2) ? a1 : ""), MPREG_OK,
                     "pattern %s", pat);
        break;
    case MP_ENTRY_QUEUE:
        rand_word(x, a1, 30);
        cr_assert_eq(mp_entry_queue(e, node, cluster, a1, 1 + (uint32_t)below(x, 15)), MPREG_OK);
        e->u.queue.healthy = below(x, 2);
        break;
    case MP_ENTRY_CACHE:
        rand_word(x, a1, 30);
        cr_assert_eq(mp_entry_cache(e, node, cluster, below(x, 3) ? a1 : ""), MPREG_OK);
        e->u.cache.latitude = rand_in(x, -90, 90);
        e->u.cache.longitude = rand_in(x, -180, 180);
        e->u.cache.capacity_bytes = mp_rng_u64(&x->rng);
        e->u.cache.utilization = mp_rng_double(&x->rng);
        e->u.cache.latency_ms = rand_in(x, 0, 1e6);
        e->u.cache.reliability = mp_rng_double(&x->rng);
        break;
    case MP_ENTRY_NODE:
        rand_word(x, a1, 30);
        cr_assert_eq(mp_entry_node(e, node, a1, cluster, mp_rng_u64(&x->rng)), MPREG_OK);
        rand_list(x, &e->u.node.endpoints, MP_ENTRY_MAX_ENDPOINTS);
        rand_list(x, &e->u.node.capabilities, 5);
        rand_list(x, &e->u.node.resources, 5);
        break;
    }
    e->version.incarnation = below(x, 2) ? below(x, 10) : mp_rng_u64(&x->rng);
    e->version.counter = below(x, 2) ? below(x, 1000) : mp_rng_u64(&x->rng);
    e->ttl_ms = below(x, 2) ? 0 : (uint32_t)mp_rng_u64(&x->rng);
    e->withdrawn = below(x, 4) == 0;
    const char *why = NULL;
    cr_assert_eq(mp_entry_validate(e, &why), MPREG_OK, "generated entry invalid: %s",
                 why ? why : "");
}

static void rand_delta(mp_xoshiro *x, mp_delta *d) {
    mp_delta_init(d);
    uint64_t n = below(x, 8);
    for (uint64_t i = 0; i < n; i++) {
        mp_entry e;
        rand_entry(x, &e);
        cr_assert_eq(mp_delta_take_entry(d, &e), MPREG_OK);
    }
    uint64_t nd = below(x, 3);
    for (uint64_t i = 0; i < nd; i++) {
        char node[40];
        rand_word(x, node, 30);
        cr_assert_eq(mp_delta_add_death(d, node, mp_rng_u64(&x->rng)), MPREG_OK);
    }
}

Test(delta, random_deltas_round_trip) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0x5eed1234);
    for (int i = 0; i < 2000; i++) {
        mp_delta d;
        rand_delta(&x, &d);
        round_trip(&d);
        mp_delta_free(&d);
    }
}

/* Decodes mutated bytes; whatever decodes must survive a round trip. Under
 * the sanitizer build this also shows that no error path leaks. */
static void decode_mutant(const uint8_t *data, size_t len) {
    mp_delta d;
    if (mp_delta_decode(data, len, &d, NULL) != MPREG_OK) {
        cr_assert_eq(d.entry_count + d.death_count, 0);
        return;
    }
    for (uint32_t i = 0; i < d.entry_count; i++) {
        cr_assert_eq(mp_entry_validate(&d.entries[i], NULL), MPREG_OK);
    }
    round_trip(&d);
    mp_delta_free(&d);
}

Test(delta, random_mutations_never_crash_or_leak) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 77);
    size_t accepted = 0, total = 0;
    for (int i = 0; i < 300; i++) {
        mp_delta d;
        rand_delta(&x, &d);
        mp_buf b = MP_BUF_INIT;
        cr_assert_eq(mp_delta_encode(&d, &b), MPREG_OK);
        mp_delta_free(&d);
        for (int j = 0; j < 40; j++) {
            size_t len = b.len;
            uint8_t *mut = malloc(len + 8);
            cr_assert_not_null(mut);
            memcpy(mut, b.data, len);
            int edits = 1 + (int)below(&x, 3);
            for (int e = 0; e < edits && len > 0; e++) {
                size_t at = below(&x, len);
                switch (below(&x, 5)) {
                case 0: /* flip a bit */
                    mut[at] ^= (uint8_t)(1u << below(&x, 8));
                    break;
                case 1: /* a random byte */
                    mut[at] = (uint8_t)below(&x, 256);
                    break;
                case 2: /* an interesting byte */
                {
                    static const uint8_t hot[] = {0x00, 0x7f, 0x80, 0xc0, 0xc1, 0xc2,
                                                  0xcf, 0xdd, 0xdf, 0xff, 0x91, 0xa0};
                    mut[at] = hot[below(&x, sizeof hot)];
                    break;
                }
                case 3: /* truncate */
                    len = at;
                    break;
                case 4: /* insert a byte */
                    if (len < b.len + 8) {
                        memmove(mut + at + 1, mut + at, len - at);
                        mut[at] = (uint8_t)below(&x, 256);
                        len++;
                    }
                    break;
                }
            }
            mp_delta out;
            accepted += mp_delta_decode(mut, len, &out, NULL) == MPREG_OK;
            mp_delta_free(&out);
            decode_mutant(mut, len);
            total++;
            free(mut);
        }
        mp_buf_free(&b);
    }
    cr_assert_lt(accepted, total); /* the mutations did hit something */
}

/* The example in docs/PROTOCOL.md "Catalog deltas", byte for byte. */
Test(delta, protocol_doc_example) {
    static const uint8_t doc[] = {0x81, 0x01, 0x91, 0x85, 0x01, 0x03, 0x02, 0x01, 0x03,
                                  0x03, 0x06, 0x92, 0xa2, 0x6e, 0x31, 0xa3, 0x61, 0x2e,
                                  0x62, 0x07, 0x81, 0x01, 0xa2, 0x63, 0x31};
    mp_delta d;
    mp_delta_init(&d);
    mp_entry e;
    cr_assert_eq(mp_entry_topic(&e, "n1", "c1", "a.b"), MPREG_OK);
    e.version = (mp_entry_version){1, 3};
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_delta_encode(&d, &b), MPREG_OK);
    cr_assert_eq(b.len, sizeof doc);
    cr_assert_eq(memcmp(b.data, doc, sizeof doc), 0);
    mp_delta out;
    cr_assert_eq(mp_delta_decode(doc, sizeof doc, &out, NULL), MPREG_OK);
    assert_delta_equal(&d, &out);
    mp_delta_free(&out);
    mp_delta_free(&d);
    mp_buf_free(&b);

    /* The grouped example of §14.7: the same with group "g", field 8 last. */
    static const uint8_t grouped[] = {0x81, 0x01, 0x91, 0x86, 0x01, 0x03, 0x02, 0x01, 0x03, 0x03,
                                      0x06, 0x92, 0xa2, 0x6e, 0x31, 0xa3, 0x61, 0x2e, 0x62, 0x07,
                                      0x81, 0x01, 0xa2, 0x63, 0x31, 0x08, 0xa1, 0x67};
    mp_delta_init(&d);
    cr_assert_eq(mp_entry_topic_group(&e, "n1", "c1", "a.b", "g"), MPREG_OK);
    e.version = (mp_entry_version){1, 3};
    cr_assert_eq(mp_delta_take_entry(&d, &e), MPREG_OK);
    mp_buf_init(&b);
    cr_assert_eq(mp_delta_encode(&d, &b), MPREG_OK);
    cr_assert_eq(b.len, sizeof grouped);
    cr_assert_eq(memcmp(b.data, grouped, sizeof grouped), 0);
    mp_delta_free(&d);
    mp_buf_free(&b);
}
