/* test_pubsub.c - the node-local pub/sub service: matching, queue groups,
 * flow control, replay, dedupe, interest, the wire payloads, and a seeded
 * property test against a naive reference model. */
#include "services/pubsub.h"

#include "core/frame.h"
#include "core/rng.h"
#include "core/topic.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- recording what the service emits --------------------------------------- */

typedef struct rec_delivery {
    uint64_t owner;
    uint64_t sub;
    char tag[MP_PUBSUB_MAX_TAG + 1];
    char topic[MP_TOPIC_MAX_LEN + 1];
    mp_id id;
    size_t payload_len;
    uint8_t payload[64];
    size_t header_count;
    const mp_header *headers;
    uint64_t published_ms;
    bool replay;
    uint64_t missed;
} rec_delivery;

typedef struct rec_interest {
    char pattern[MP_TOPIC_MAX_LEN + 1];
    char group[MP_PUBSUB_MAX_GROUP + 1];
    bool added;
} rec_interest;

typedef struct recorder {
    rec_delivery *d;
    size_t n;
    size_t cap;
    rec_interest ev[256];
    size_t nev;
    uint64_t refuse_owner; /* the hook says no to this owner's deliveries (0 = none) */
    size_t refused;
} recorder;

static void copy_str(char *dst, size_t cap, mp_str s) {
    cr_assert_lt(s.len, cap);
    if (s.len) {
        memcpy(dst, s.ptr, s.len);
    }
    dst[s.len] = '\0';
}

static bool on_deliver(void *ud, const mp_pubsub_delivery *d) {
    recorder *r = ud;
    if (r->refuse_owner && d->owner == r->refuse_owner) {
        r->refused++;
        return false;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->d = realloc(r->d, r->cap * sizeof *r->d);
        cr_assert_not_null(r->d);
    }
    rec_delivery *x = &r->d[r->n++];
    memset(x, 0, sizeof *x);
    x->owner = d->owner;
    x->sub = d->sub;
    copy_str(x->tag, sizeof x->tag, d->tag);
    copy_str(x->topic, sizeof x->topic, d->msg->topic);
    x->id = d->msg->id;
    x->payload_len = d->msg->payload.len;
    if (d->msg->payload.len <= sizeof x->payload && d->msg->payload.len) {
        memcpy(x->payload, d->msg->payload.ptr, d->msg->payload.len);
    }
    x->header_count = d->msg->header_count;
    x->headers = d->msg->headers;
    x->published_ms = d->published_ms;
    x->replay = d->replay;
    x->missed = d->missed;
    return true;
}

static void on_interest(void *ud, mp_str pattern, mp_str group, bool added) {
    recorder *r = ud;
    cr_assert_lt(r->nev, sizeof r->ev / sizeof r->ev[0]);
    copy_str(r->ev[r->nev].pattern, sizeof r->ev[r->nev].pattern, pattern);
    copy_str(r->ev[r->nev].group, sizeof r->ev[r->nev].group, group);
    r->ev[r->nev].added = added;
    r->nev++;
}

static void rec_clear(recorder *r) {
    r->n = 0;
    r->nev = 0;
}

static void rec_free(recorder *r) {
    free(r->d);
    memset(r, 0, sizeof *r);
}

static mp_pubsub *new_ps(const mp_pubsub_config *cfg, recorder *r) {
    mp_pubsub_hooks hooks = {r, on_deliver, on_interest};
    mp_pubsub *ps = mp_pubsub_new(cfg, &hooks);
    cr_assert_not_null(ps);
    return ps;
}

/* A config with everything off but what a test turns on. */
static mp_pubsub_config plain_config(void) {
    mp_pubsub_config cfg;
    mp_pubsub_config_default(&cfg);
    cfg.dedupe_max_ids = 0;
    cfg.dedupe_window_ms = 0;
    return cfg;
}

/* --- DELIVER frames --------------------------------------------------------- */

/* mp_pubsub_deliver_frame for d must write what the envelope path writes:
 * mp_pubsub_deliver_envelope with the source names, encoded as a frame. A
 * message without id is the envelope path's (each DELIVER needs its own). */
static void expect_frame_as_envelope(mp_pubsub *ps, const mp_pubsub_delivery *d, const char *node,
                                     const char *cluster) {
    mp_buf got = MP_BUF_INIT, want = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&got, "pre", 3), MPREG_OK);
    mpreg_err err = mp_pubsub_deliver_frame(ps, d, mp_str_c(node), mp_str_c(cluster), 0, &got);
    if (mp_id_is_zero(&d->msg->id) || d->missed) {
        cr_assert_eq(err, MPREG_E_INVALID, "zero id or a missed count: the envelope path's");
        cr_assert_eq(got.len, 3, "out left alone");
    } else {
        char sub_text[MP_PUBSUB_SUB_TEXT], missed_text[MP_PUBSUB_SUB_TEXT];
        mp_envelope env;
        cr_assert_eq(mp_pubsub_deliver_envelope(d, sub_text, missed_text, &env), MPREG_OK);
        env.source_node = mp_str_c(node);
        env.source_cluster = mp_str_c(cluster);
        cr_assert_eq(mp_envelope_encode_frame(&env, &want), MPREG_OK);
        cr_assert_eq(err, MPREG_OK, "frame: %s", mpreg_err_name(err));
        cr_assert_eq(got.len - 3, want.len, "sub %" PRIu64 ": %zu bytes, want %zu", d->sub,
                     got.len - 3, want.len);
        cr_assert(memcmp(got.data, "pre", 3) == 0 && memcmp(got.data + 3, want.data, want.len) == 0,
                  "sub %" PRIu64 ": bytes differ", d->sub);
    }
    mp_buf_free(&got);
    mp_buf_free(&want);
}

/* --- building subscriptions and messages ------------------------------------ */

static mp_id idn(uint64_t n) {
    mp_id id;
    memset(&id, 0, sizeof id);
    for (int i = 0; i < 8; i++) {
        id.bytes[15 - i] = (uint8_t)(n >> (8 * i));
    }
    return id;
}

static uint64_t id_num(const mp_id *id) {
    uint64_t n = 0;
    for (int i = 8; i < 16; i++) {
        n = (n << 8) | id->bytes[i];
    }
    return n;
}

typedef struct sub_args {
    uint64_t owner;
    const char *tag;
    const char *group;
    mp_pubsub_replay_opts replay;
} sub_args;

/* Subscribes with the NULL-terminated pattern list; returns the error. */
static mpreg_err try_sub(mp_pubsub *ps, sub_args a, const char *const *patterns, uint64_t *id) {
    mp_str ps_[MP_PUBSUB_MAX_PATTERNS + 8];
    size_t n = 0;
    while (patterns[n]) {
        cr_assert_lt(n, sizeof ps_ / sizeof ps_[0]);
        ps_[n] = mp_str_c(patterns[n]);
        n++;
    }
    mp_pubsub_sub_spec spec = {
        .owner = a.owner,
        .tag = mp_str_c(a.tag ? a.tag : ""),
        .group = mp_str_c(a.group ? a.group : ""),
        .patterns = ps_,
        .pattern_count = n,
        .replay = a.replay,
    };
    uint64_t dummy;
    return mp_pubsub_subscribe(ps, &spec, id ? id : &dummy);
}

static uint64_t sub_of(mp_pubsub *ps, sub_args a, const char *const *patterns) {
    uint64_t id = 0;
    mpreg_err err = try_sub(ps, a, patterns, &id);
    cr_assert_eq(err, MPREG_OK, "subscribe: %s", mpreg_err_name(err));
    cr_assert_neq(id, 0);
    return id;
}

#define PATS(...) ((const char *const[]){__VA_ARGS__, NULL})
/* SUB(ps, owner, group, patterns...): tag "t<owner>", no replay. */
#define SUB(ps_, owner_, group_, ...)                                                              \
    sub_of(ps_, (sub_args){.owner = (owner_), .tag = "t", .group = (group_)}, PATS(__VA_ARGS__))

static mpreg_err pub_full(mp_pubsub *ps, const char *topic, uint64_t id, uint64_t now,
                          const char *payload, mp_pubsub_result *res) {
    mp_pubsub_message msg = {
        .id = idn(id),
        .topic = mp_str_c(topic),
        .payload = {(const uint8_t *)payload, payload ? strlen(payload) : 0},
    };
    return mp_pubsub_publish(ps, &msg, now, res);
}

/* Publishes and returns how many deliveries it made. */
static size_t pub(mp_pubsub *ps, const char *topic, uint64_t id, uint64_t now) {
    mp_pubsub_result res;
    mpreg_err err = pub_full(ps, topic, id, now, "x", &res);
    cr_assert_eq(err, MPREG_OK, "publish %s: %s", topic, mpreg_err_name(err));
    return res.delivered;
}

static mp_pubsub_stats stats(const mp_pubsub *ps) {
    mp_pubsub_stats s;
    mp_pubsub_stats_get(ps, &s);
    return s;
}

static mp_pubsub_sub_stats sub_stats(const mp_pubsub *ps, uint64_t sub) {
    mp_pubsub_sub_stats s;
    cr_assert_eq(mp_pubsub_sub_stats_get(ps, sub, &s), MPREG_OK);
    return s;
}

/* --- matching ------------------------------------------------------------------ */

Test(pubsub, wildcard_delivery) {
    static const struct {
        const char *pattern, *topic;
        bool match;
    } cases[] = {
        {"a.b.c", "a.b.c", true},
        {"a.b.c", "a.b", false},
        {"a.*.c", "a.x.c", true},
        {"a.*.c", "a.c", false},
        {"a.*", "a.b.c", false},
        {"*", "a", true},
        {"*", "a.b", false},
        {"#", "a", true},
        {"#", "a.b.c.d", true},
        {"a.#", "a", true},
        {"a.#", "a.b.c", true},
        {"a.#", "b.a", false},
        {"#.c", "c", true},
        {"#.c", "a.b.c", true},
        {"#.c", "a.c.d", false},
        {"a.#.d", "a.d", true},
        {"a.#.d", "a.b.c.d", true},
        {"*.#", "a", true},
        {"*.*.#", "a", false},
        {"#.a.#", "x.a.y.a", true},
        {"orders.*.created", "orders.eu.created", true},
        {"A.b", "a.b", false},
        {"a.b", "a.b.c", false},
        {"#.#", "q", true},
    };
    recorder r = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp_pubsub_config cfg = plain_config();
        mp_pubsub *ps = new_ps(&cfg, &r);
        rec_clear(&r);
        uint64_t s = SUB(ps, 1, NULL, cases[i].pattern);
        size_t n = pub(ps, cases[i].topic, i + 1, 10);
        cr_expect_eq(n, cases[i].match ? 1u : 0u, "%s vs %s", cases[i].pattern, cases[i].topic);
        cr_expect_eq(r.n, n);
        if (n) {
            cr_expect_eq(r.d[0].sub, s);
            cr_expect_str_eq(r.d[0].topic, cases[i].topic);
        }
        mp_pubsub_free(ps);
    }
    rec_free(&r);
}

Test(pubsub, once_per_subscription_with_overlapping_patterns) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t s = SUB(ps, 1, NULL, "a.*", "a.b", "#", "a.#", "#.b", "*.*");
    cr_expect_eq(pub(ps, "a.b", 1, 0), 1);
    cr_expect_eq(r.n, 1);
    cr_expect_eq(r.d[0].sub, s);
    cr_expect_eq(pub(ps, "z", 2, 0), 1); /* only "#" */
    cr_expect_eq(sub_stats(ps, s).delivered, 2);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, identical_patterns_collapse) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "a.b", "a.b", "a.b");
    cr_expect_eq(stats(ps).patterns, 1);
    cr_expect_eq(r.nev, 1);
    cr_expect_eq(pub(ps, "a.b", 1, 0), 1);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, delivery_fields_and_order) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t s1 = sub_of(ps, (sub_args){.owner = 7, .tag = "first"}, PATS("#"));
    uint64_t s2 = sub_of(ps, (sub_args){.owner = 9, .tag = "second"}, PATS("a.b"));
    uint64_t s3 = sub_of(ps, (sub_args){.owner = 7, .tag = ""}, PATS("a.*"));
    cr_expect(s1 < s2 && s2 < s3);

    mp_header hdr[2] = {{mp_str_c("trace"), mp_str_c("abc")}, {mp_str_c("ct"), mp_str_c("json")}};
    mp_pubsub_message msg = {
        .id = idn(42),
        .topic = mp_str_c("a.b"),
        .payload = {(const uint8_t *)"body", 4},
        .headers = hdr,
        .header_count = 2,
    };
    mp_pubsub_result res;
    cr_assert_eq(mp_pubsub_publish(ps, &msg, 1234, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 3);
    cr_expect_eq(res.dropped, 0);
    cr_expect_not(res.duplicate);
    cr_expect_not(res.retained);
    cr_assert_eq(r.n, 3);
    uint64_t want_sub[3] = {s1, s2, s3}, want_owner[3] = {7, 9, 7};
    const char *want_tag[3] = {"first", "second", ""};
    for (size_t i = 0; i < 3; i++) {
        cr_expect_eq(r.d[i].sub, want_sub[i]);
        cr_expect_eq(r.d[i].owner, want_owner[i]);
        cr_expect_str_eq(r.d[i].tag, want_tag[i]);
        cr_expect_str_eq(r.d[i].topic, "a.b");
        cr_expect_eq(id_num(&r.d[i].id), 42);
        cr_expect_eq(r.d[i].payload_len, 4);
        cr_expect_eq(memcmp(r.d[i].payload, "body", 4), 0);
        cr_expect_eq(r.d[i].headers, hdr, "headers are borrowed, not copied");
        cr_expect_eq(r.d[i].header_count, 2);
        cr_expect_eq(r.d[i].published_ms, 1234);
        cr_expect_not(r.d[i].replay);
    }
    mp_pubsub_stats st = stats(ps);
    cr_expect_eq(st.published, 1);
    cr_expect_eq(st.delivered, 3);
    cr_expect_eq(st.subscriptions, 3);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, hooks_may_be_null) {
    mp_pubsub *ps = mp_pubsub_new(NULL, NULL);
    cr_assert_not_null(ps);
    uint64_t s = SUB(ps, 1, NULL, "#");
    cr_expect_eq(pub(ps, "a", 1, 0), 1);
    cr_expect_eq(sub_stats(ps, s).delivered, 1);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 1), 1);
    mp_pubsub_free(ps);
    mp_pubsub_free(NULL);
}

/* --- queue groups ---------------------------------------------------------------- */

static size_t count_sub(const recorder *r, uint64_t sub) {
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++) {
        n += r->d[i].sub == sub;
    }
    return n;
}

Test(pubsub, group_one_member_per_message_round_robin) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = SUB(ps, (uint64_t)i + 1, "workers", "jobs.*");
    }
    for (uint64_t k = 0; k < 1000; k++) {
        cr_assert_eq(pub(ps, "jobs.run", k + 1, k), 1);
        /* In turn, in subscription order. */
        cr_assert_eq(r.d[k].sub, m[k % 3]);
    }
    cr_expect_eq(count_sub(&r, m[0]), 334);
    cr_expect_eq(count_sub(&r, m[1]), 333);
    cr_expect_eq(count_sub(&r, m[2]), 333);
    cr_expect_eq(stats(ps).groups, 1);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, group_mixed_with_ungrouped_and_two_groups) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t a1 = SUB(ps, 1, "A", "x.#");
    uint64_t u1 = SUB(ps, 2, NULL, "x.*");
    uint64_t b1 = SUB(ps, 3, "B", "#");
    uint64_t a2 = SUB(ps, 4, "A", "x.y");
    uint64_t b2 = SUB(ps, 5, "B", "x.*");
    uint64_t u2 = SUB(ps, 6, NULL, "#");
    for (uint64_t k = 0; k < 100; k++) {
        rec_clear(&r);
        /* Two ungrouped + one of A + one of B. */
        cr_assert_eq(pub(ps, "x.y", k + 1, 0), 4);
        cr_assert_eq(count_sub(&r, u1) + count_sub(&r, u2), 2);
        cr_assert_eq(count_sub(&r, a1) + count_sub(&r, a2), 1);
        cr_assert_eq(count_sub(&r, b1) + count_sub(&r, b2), 1);
        /* Ascending ids: the delivery list is sorted. */
        for (size_t i = 1; i < r.n; i++) {
            cr_assert_lt(r.d[i - 1].sub, r.d[i].sub);
        }
    }
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, group_competes_across_patterns) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t wide = SUB(ps, 1, "g", "a.*");
    uint64_t narrow = SUB(ps, 2, "g", "a.b");
    /* "a.c" matches only the wide member: it always gets it. */
    for (uint64_t k = 0; k < 5; k++) {
        rec_clear(&r);
        cr_assert_eq(pub(ps, "a.c", k + 1, 0), 1);
        cr_assert_eq(r.d[0].sub, wide);
    }
    /* "a.b" matches both: they alternate (the cursor is at `wide`). */
    rec_clear(&r);
    for (uint64_t k = 0; k < 4; k++) {
        cr_assert_eq(pub(ps, "a.b", k + 100, 0), 1);
    }
    cr_expect_eq(r.d[0].sub, narrow);
    cr_expect_eq(r.d[1].sub, wide);
    cr_expect_eq(r.d[2].sub, narrow);
    cr_expect_eq(r.d[3].sub, wide);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, group_member_leaves_and_group_dies) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t m1 = SUB(ps, 1, "g", "t");
    uint64_t m2 = SUB(ps, 2, "g", "t");
    pub(ps, "t", 1, 0);
    cr_expect_eq(r.d[0].sub, m1);
    cr_assert_eq(mp_pubsub_unsubscribe(ps, 1, m1), MPREG_OK);
    for (uint64_t k = 0; k < 3; k++) {
        pub(ps, "t", k + 2, 0);
    }
    cr_expect_eq(count_sub(&r, m2), 3);
    cr_assert_eq(mp_pubsub_unsubscribe(ps, 2, m2), MPREG_OK);
    cr_expect_eq(stats(ps).groups, 0);
    cr_expect_eq(pub(ps, "t", 9, 0), 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* --- filtered publishing (queue groups across nodes) ------------------------------ */

static mpreg_err pub_filtered(mp_pubsub *ps, const char *topic, uint64_t id,
                              const mp_pubsub_filter *f, mp_pubsub_result *res) {
    mp_pubsub_message msg = {.id = idn(id), .topic = mp_str_c(topic)};
    return mp_pubsub_publish_filtered(ps, &msg, 0, f, res);
}

Test(pubsub, filter_selects_plain_part_and_groups) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t plain = SUB(ps, 1, NULL, "a.*");
    uint64_t g1 = SUB(ps, 2, "g", "a.*");
    uint64_t g2 = SUB(ps, 3, "g", "a.*");
    uint64_t h1 = SUB(ps, 4, "h", "a.b");
    mp_str only_g[] = {mp_str_c("g")};
    mp_str h_twice_and_unknown[] = {mp_str_c("h"), mp_str_c("nobody"), mp_str_c("h")};
    mp_pubsub_result res;

    /* The plain part only: no group member, and no group's turn used up. */
    mp_pubsub_filter f = {.plain = true};
    cr_assert_eq(pub_filtered(ps, "a.b", 1, &f, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 1);
    cr_expect_eq(r.d[0].sub, plain);
    /* Group g only: its first member, as if nothing had been skipped. */
    f = (mp_pubsub_filter){.groups = only_g, .group_count = 1};
    cr_assert_eq(pub_filtered(ps, "a.b", 2, &f, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 1);
    cr_expect_eq(r.d[1].sub, g1);
    /* h, named twice among a name nobody has, and the plain part. */
    f = (mp_pubsub_filter){.plain = true, .groups = h_twice_and_unknown, .group_count = 3};
    cr_assert_eq(pub_filtered(ps, "a.b", 3, &f, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 2);
    cr_expect_eq(r.d[2].sub, plain);
    cr_expect_eq(r.d[3].sub, h1);
    /* Every group, no plain part: g's next member and h. */
    f = (mp_pubsub_filter){.all_groups = true};
    cr_assert_eq(pub_filtered(ps, "a.b", 4, &f, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 2);
    cr_expect_eq(r.d[4].sub, g2);
    cr_expect_eq(r.d[5].sub, h1);
    /* NULL: everything, as mp_pubsub_publish. */
    cr_assert_eq(pub_filtered(ps, "a.b", 5, NULL, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 3);
    cr_expect_eq(r.d[6].sub, plain);
    cr_expect_eq(r.d[7].sub, g1);
    cr_expect_eq(r.d[8].sub, h1);
    /* Nothing named: nothing delivered, but the message counts as seen. */
    f = (mp_pubsub_filter){0};
    cr_assert_eq(pub_filtered(ps, "a.b", 6, &f, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 0);
    cr_expect_eq(stats(ps).published, 6);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, filter_dedupes_by_id_whatever_the_parts) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.dedupe_max_ids = 100;
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "a");
    SUB(ps, 2, "g", "a");
    mp_str only_g[] = {mp_str_c("g")};
    mp_pubsub_filter groups = {.groups = only_g, .group_count = 1};
    mp_pubsub_result res;
    cr_assert_eq(pub_filtered(ps, "a", 7, &groups, &res), MPREG_OK);
    cr_expect_eq(res.delivered, 1);
    /* The same message again, another part of it: one id is one message. */
    mp_pubsub_filter plain = {.plain = true};
    cr_assert_eq(pub_filtered(ps, "a", 7, &plain, &res), MPREG_OK);
    cr_expect(res.duplicate);
    cr_expect_eq(res.delivered, 0);
    cr_expect_eq(r.n, 1);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, filter_text_examples_and_round_trips) {
    mp_str groups[8];
    mp_pubsub_filter f;
    const char *why = "x";
    /* The examples of pubsub.h and PROTOCOL §9.8. */
    cr_assert_eq(mp_pubsub_filter_decode(mp_str_c("0:1:g7:workers"), groups, 8, &f, &why),
                 MPREG_OK);
    cr_expect_null(why);
    cr_expect(f.plain && !f.all_groups);
    cr_assert_eq(f.group_count, 2);
    cr_expect(mp_str_eq_c(f.groups[0], "g") && mp_str_eq_c(f.groups[1], "workers"));
    cr_assert_eq(mp_pubsub_filter_decode(mp_str_c("3:a:b"), groups, 8, &f, NULL), MPREG_OK);
    cr_expect(!f.plain && f.group_count == 1 && mp_str_eq_c(f.groups[0], "a:b"));
    cr_assert_eq(mp_pubsub_filter_decode(mp_str_c("0:"), groups, 8, &f, NULL), MPREG_OK);
    cr_expect(f.plain && f.group_count == 0);
    /* Names with separators, digits, multi-byte UTF-8 and the longest
     * allowed one survive a round trip. */
    char longest[MP_PUBSUB_MAX_GROUP];
    memset(longest, 'z', sizeof longest);
    mp_str names[] = {mp_str_c("0:"), mp_str_c("12"), mp_str_c("caf\xc3\xa9"),
                      (mp_str){longest, sizeof longest}, mp_str_c("a")};
    for (int plain = 0; plain <= 1; plain++) {
        mp_pubsub_filter in = {.plain = plain, .groups = names, .group_count = 5};
        char text[1024];
        size_t len = 0;
        cr_assert_eq(mp_pubsub_filter_encode(&in, text, sizeof text, &len), MPREG_OK);
        cr_expect_eq(len, (plain ? 2u : 0u) + 4 + 4 + 7 + 4 + sizeof longest + 3);
        cr_assert_eq(mp_pubsub_filter_decode((mp_str){text, len}, groups, 8, &f, NULL), MPREG_OK);
        cr_expect_eq(f.plain, plain);
        cr_assert_eq(f.group_count, 5);
        for (size_t i = 0; i < 5; i++) {
            cr_expect(mp_str_eq(f.groups[i], names[i]), "name %zu", i);
        }
        /* One byte short of room: too large, not a cut. */
        cr_expect_eq(mp_pubsub_filter_encode(&in, text, len - 1, &len), MPREG_E_TOO_LARGE);
    }
}

Test(pubsub, filter_text_errors) {
    static const struct {
        const char *text;
        size_t len; /* 0: strlen */
        mpreg_err err;
    } bad[] = {
        {"", 0, MPREG_E_INVALID},            /* nothing to deliver */
        {"g", 0, MPREG_E_INVALID},           /* no length */
        {"1g", 0, MPREG_E_INVALID},          /* no colon */
        {"01:g", 0, MPREG_E_INVALID},        /* leading zero */
        {"2:g", 0, MPREG_E_INVALID},         /* cut short */
        {"256:", 0, MPREG_E_INVALID},        /* longer than a group may be */
        {"1000:", 0, MPREG_E_INVALID},       /* four digits */
        {"0:0:", 0, MPREG_E_INVALID},        /* the plain part twice */
        {"1:g1:", 0, MPREG_E_INVALID},       /* a trailing item cut short */
        {"2:\xc3", 0, MPREG_E_INVALID},      /* a name cut mid-character */
        {"3:a\0b", 5, MPREG_E_INVALID},      /* NUL in a name */
        {"1:a1:b1:c", 0, MPREG_E_TOO_LARGE}, /* more groups than room */
    };
    mp_str groups[2];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mp_pubsub_filter f;
        const char *why = NULL;
        mp_str text = {bad[i].text, bad[i].len ? bad[i].len : strlen(bad[i].text)};
        cr_expect_eq(mp_pubsub_filter_decode(text, groups, 2, &f, &why), bad[i].err, "case %zu", i);
        cr_expect_not_null(why, "case %zu names the problem", i);
    }
    char out[16];
    size_t len;
    mp_str empty[] = {mp_str_c("")};
    mp_pubsub_filter f = {.plain = true, .groups = empty, .group_count = 1};
    cr_expect_eq(mp_pubsub_filter_encode(&f, out, sizeof out, &len), MPREG_E_INVALID);
    f = (mp_pubsub_filter){.all_groups = true};
    cr_expect_eq(mp_pubsub_filter_encode(&f, out, sizeof out, &len), MPREG_E_INVALID);
    f = (mp_pubsub_filter){0};
    cr_expect_eq(mp_pubsub_filter_encode(&f, out, sizeof out, &len), MPREG_E_INVALID);
}

Test(pubsub, publish_encoded_refuses_a_bad_text_and_delivers_nothing) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.dedupe_max_ids = 100;
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "a");
    uint64_t m = SUB(ps, 2, "g", "a");
    mp_pubsub_message msg = {.id = idn(1), .topic = mp_str_c("a")};
    mp_pubsub_result res;
    const char *why = NULL;
    cr_expect_eq(mp_pubsub_publish_encoded(ps, &msg, 0, mp_str_c("2:g"), &res, &why),
                 MPREG_E_INVALID);
    cr_expect_not_null(why);
    cr_expect_eq(r.n, 0);
    cr_expect_eq(stats(ps).dedupe_ids, 0, "a refused message is not remembered");
    cr_assert_eq(mp_pubsub_publish_encoded(ps, &msg, 0, mp_str_c("1:g"), &res, &why), MPREG_OK);
    cr_expect_null(why);
    cr_expect_eq(res.delivered, 1);
    cr_expect_eq(r.d[0].sub, m);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, node_header_prefix) {
    cr_expect(mp_pubsub_node_header(mp_str_c("mp-deliver")));
    cr_expect(mp_pubsub_node_header(mp_str_c("mp-")));
    cr_expect_not(mp_pubsub_node_header(mp_str_c("mp")));
    cr_expect_not(mp_pubsub_node_header(mp_str_c("Mp-x")));
    cr_expect_not(mp_pubsub_node_header(mp_str_c("x-mp-")));
}

/* --- unsubscribe and owners ------------------------------------------------------- */

Test(pubsub, unsubscribe) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t s1 = SUB(ps, 1, NULL, "a.*");
    uint64_t s2 = SUB(ps, 1, NULL, "a.b");
    cr_expect_eq(pub(ps, "a.b", 1, 0), 2);
    cr_expect_eq(mp_pubsub_unsubscribe(ps, 2, s1), MPREG_E_NOT_FOUND, "not the owner's");
    cr_expect_eq(mp_pubsub_unsubscribe(ps, 1, 999), MPREG_E_NOT_FOUND);
    cr_assert_eq(mp_pubsub_unsubscribe(ps, 1, s1), MPREG_OK);
    cr_expect_eq(mp_pubsub_unsubscribe(ps, 1, s1), MPREG_E_NOT_FOUND, "only once");
    rec_clear(&r);
    cr_expect_eq(pub(ps, "a.b", 2, 0), 1);
    cr_expect_eq(r.d[0].sub, s2);
    cr_expect_eq(pub(ps, "a.c", 3, 0), 0);
    mp_pubsub_sub_stats st;
    cr_expect_eq(mp_pubsub_sub_stats_get(ps, s1, &st), MPREG_E_NOT_FOUND);
    cr_expect_eq(stats(ps).subscriptions, 1);
    /* Ids are never reused. */
    uint64_t s3 = SUB(ps, 1, NULL, "a.*");
    cr_expect_gt(s3, s2);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, remove_owner) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "a");
    SUB(ps, 1, "g", "a");
    SUB(ps, 1, NULL, "b.#");
    uint64_t other = SUB(ps, 2, "g", "a");
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, false), MPREG_OK);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 1), 3);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 1), 0);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 77), 0);
    cr_expect(mp_pubsub_is_accepting(ps, 1), "the flag dies with the owner");
    rec_clear(&r);
    cr_expect_eq(pub(ps, "a", 1, 0), 1);
    cr_expect_eq(r.d[0].sub, other);
    cr_expect_eq(pub(ps, "b.c", 2, 0), 0);
    mp_pubsub_stats st = stats(ps);
    cr_expect_eq(st.subscriptions, 1);
    cr_expect_eq(st.patterns, 1);
    cr_expect_eq(st.groups, 1);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* --- flow control ----------------------------------------------------------------- */

Test(pubsub, slow_consumer_drops_are_counted) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t slow = SUB(ps, 1, NULL, "#");
    uint64_t fast = SUB(ps, 2, NULL, "#");
    cr_expect(mp_pubsub_is_accepting(ps, 1));
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, false), MPREG_OK);
    cr_expect_not(mp_pubsub_is_accepting(ps, 1));
    mp_pubsub_result res;
    for (uint64_t k = 0; k < 5; k++) {
        cr_assert_eq(pub_full(ps, "a", k + 1, 0, "x", &res), MPREG_OK);
        cr_expect_eq(res.delivered, 1);
        cr_expect_eq(res.dropped, 1);
    }
    cr_expect_eq(count_sub(&r, slow), 0);
    cr_expect_eq(sub_stats(ps, slow).dropped, 5);
    cr_expect_eq(sub_stats(ps, slow).delivered, 0);
    cr_expect_eq(sub_stats(ps, fast).delivered, 5);
    cr_expect_eq(stats(ps).dropped, 5);
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, true), MPREG_OK);
    cr_expect_eq(pub(ps, "a", 10, 0), 2);
    cr_expect_eq(sub_stats(ps, slow).delivered, 1);
    /* The flag outlives the owner's last subscription until remove_owner. */
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, false), MPREG_OK);
    cr_assert_eq(mp_pubsub_unsubscribe(ps, 1, slow), MPREG_OK);
    cr_expect_not(mp_pubsub_is_accepting(ps, 1));
    /* An owner unknown so far can be marked too. */
    cr_assert_eq(mp_pubsub_set_accepting(ps, 50, false), MPREG_OK);
    uint64_t later = SUB(ps, 50, NULL, "#");
    pub(ps, "a", 11, 0);
    cr_expect_eq(sub_stats(ps, later).dropped, 1);
    cr_assert_eq(mp_pubsub_set_accepting(ps, 60, true), MPREG_OK);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* The last delivery recorded for sub. */
static const rec_delivery *last_for(const recorder *r, uint64_t sub) {
    for (size_t i = r->n; i-- > 0;) {
        if (r->d[i].sub == sub) {
            return &r->d[i];
        }
    }
    return NULL;
}

Test(pubsub, the_delivery_after_drops_says_how_many_were_missed) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t slow = SUB(ps, 1, NULL, "#");
    uint64_t fast = SUB(ps, 2, NULL, "#");
    pub(ps, "a", 1, 0);
    cr_expect_eq(last_for(&r, slow)->missed, 0);
    /* Not accepting: 3 dropped by the service. */
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, false), MPREG_OK);
    for (uint64_t k = 2; k <= 4; k++) {
        pub(ps, "a", k, 0);
    }
    cr_expect_eq(sub_stats(ps, slow).missed, 3);
    /* Accepting again, but the hook drops 2 more (the connection filled
     * as the node wrote): dropped, not delivered, and still owed. */
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, true), MPREG_OK);
    r.refuse_owner = 1;
    mp_pubsub_result res;
    cr_assert_eq(pub_full(ps, "a", 5, 0, "x", &res), MPREG_OK);
    cr_expect_eq(res.delivered, 1);
    cr_expect_eq(res.dropped, 1);
    pub(ps, "a", 6, 0);
    cr_expect_eq(r.refused, 2);
    cr_expect_eq(sub_stats(ps, slow).dropped, 5);
    cr_expect_eq(sub_stats(ps, slow).delivered, 1);
    cr_expect_eq(stats(ps).dropped, 5);
    cr_expect_eq(stats(ps).delivered, 7);
    /* The next delivery made carries all 5, once. */
    r.refuse_owner = 0;
    pub(ps, "a", 7, 0);
    const rec_delivery *d = last_for(&r, slow);
    cr_assert_not_null(d);
    cr_expect_eq(d->missed, 5);
    cr_expect_eq(sub_stats(ps, slow).missed, 0);
    cr_expect_eq(sub_stats(ps, slow).delivered, 2);
    cr_expect_eq(last_for(&r, fast)->missed, 0, "the fast subscriber missed nothing");
    pub(ps, "a", 8, 0);
    cr_expect_eq(last_for(&r, slow)->missed, 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, a_replay_carries_what_was_missed_too) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.retain_per_topic = 4;
    mp_pubsub *ps = new_ps(&cfg, &r);
    pub(ps, "a", 1, 0);
    pub(ps, "a", 2, 0);
    /* A subscription made while its owner is not accepting: its replay is
     * dropped; the first message it then gets says so. */
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, false), MPREG_OK);
    mp_str pat = mp_str_c("#");
    mp_pubsub_sub_spec spec = {
        .owner = 1, .patterns = &pat, .pattern_count = 1, .replay = {.has_last = true, .last = 2}};
    uint64_t sub = 0;
    cr_assert_eq(mp_pubsub_subscribe(ps, &spec, &sub), MPREG_OK);
    cr_expect_eq(mp_pubsub_replay(ps, sub), 0);
    cr_expect_eq(sub_stats(ps, sub).missed, 2);
    cr_assert_eq(mp_pubsub_set_accepting(ps, 1, true), MPREG_OK);
    pub(ps, "a", 3, 0);
    cr_expect_eq(last_for(&r, sub)->missed, 2);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, group_skips_members_not_accepting) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t m1 = SUB(ps, 1, "g", "q");
    uint64_t m2 = SUB(ps, 2, "g", "q");
    uint64_t m3 = SUB(ps, 3, "g", "q");
    cr_assert_eq(mp_pubsub_set_accepting(ps, 2, false), MPREG_OK);
    for (uint64_t k = 0; k < 100; k++) {
        cr_assert_eq(pub(ps, "q", k + 1, 0), 1);
    }
    cr_expect_eq(count_sub(&r, m1), 50);
    cr_expect_eq(count_sub(&r, m2), 0);
    cr_expect_eq(count_sub(&r, m3), 50);
    cr_expect_eq(sub_stats(ps, m2).dropped, 0, "skipped, not dropped");

    /* Nobody accepting: the round robin goes on and the chosen one drops. */
    mp_pubsub_set_accepting(ps, 1, false);
    mp_pubsub_set_accepting(ps, 3, false);
    rec_clear(&r);
    mp_pubsub_result res;
    for (uint64_t k = 0; k < 30; k++) {
        cr_assert_eq(pub_full(ps, "q", k + 200, 0, NULL, &res), MPREG_OK);
        cr_expect_eq(res.delivered, 0);
        cr_expect_eq(res.dropped, 1);
    }
    cr_expect_eq(r.n, 0);
    cr_expect_eq(sub_stats(ps, m1).dropped, 10);
    cr_expect_eq(sub_stats(ps, m2).dropped, 10);
    cr_expect_eq(sub_stats(ps, m3).dropped, 10);
    cr_expect_eq(stats(ps).dropped, 30);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* --- interest ------------------------------------------------------------------------ */

typedef struct pattern_list {
    size_t n;
    char pattern[16][32];
    char group[16][32];
    size_t subs[16];
} pattern_list;

static void collect_pattern(void *ud, mp_str pattern, mp_str group, size_t subscribers) {
    pattern_list *l = ud;
    cr_assert_lt(l->n, 16);
    copy_str(l->pattern[l->n], sizeof l->pattern[l->n], pattern);
    copy_str(l->group[l->n], sizeof l->group[l->n], group);
    l->subs[l->n++] = subscribers;
}

static size_t pattern_subs(const pattern_list *l, const char *p, const char *g) {
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->pattern[i], p) == 0 && strcmp(l->group[i], g) == 0) {
            return l->subs[i];
        }
    }
    return 0;
}

static void expect_event(const recorder *r, size_t i, const char *pattern, const char *group,
                         bool added) {
    cr_assert_lt(i, r->nev);
    cr_expect_str_eq(r->ev[i].pattern, pattern);
    cr_expect_str_eq(r->ev[i].group, group, "event %zu on %s", i, pattern);
    cr_expect_eq(r->ev[i].added, added, "event %zu on %s", i, pattern);
}

/* Interest is per (pattern, group): the catalog has an entry for each, so
 * that queue groups can be placed across nodes. */
Test(pubsub, interest_first_and_last_subscriber) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    uint64_t s1 = SUB(ps, 1, NULL, "a.*", "b");
    cr_expect_eq(r.nev, 2);
    expect_event(&r, 0, "a.*", "", true);
    expect_event(&r, 1, "b", "", true);
    uint64_t s2 = SUB(ps, 2, "g", "a.*", "c.#"); /* a.* in a group is new interest */
    cr_expect_eq(r.nev, 4);
    expect_event(&r, 2, "a.*", "g", true);
    expect_event(&r, 3, "c.#", "g", true);
    uint64_t s3 = SUB(ps, 3, NULL, "a.*"); /* a.* ungrouped is held already */
    uint64_t s4 = SUB(ps, 3, "g", "c.#");  /* and c.# in g */
    cr_expect_eq(r.nev, 4);

    pattern_list l = {0};
    cr_expect_eq(mp_pubsub_each_pattern(ps, collect_pattern, &l), 4);
    cr_expect_eq(l.n, 4);
    cr_expect_eq(pattern_subs(&l, "a.*", ""), 2);
    cr_expect_eq(pattern_subs(&l, "a.*", "g"), 1);
    cr_expect_eq(pattern_subs(&l, "b", ""), 1);
    cr_expect_eq(pattern_subs(&l, "c.#", "g"), 2);
    cr_expect_eq(mp_pubsub_each_pattern(ps, NULL, NULL), 4);
    cr_expect_eq(stats(ps).patterns, 4);

    cr_assert_eq(mp_pubsub_unsubscribe(ps, 1, s1), MPREG_OK);
    cr_expect_eq(r.nev, 5); /* b lost its last; a.* still held by s3 */
    expect_event(&r, 4, "b", "", false);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 2), 1);
    (void)s2;
    cr_expect_eq(r.nev, 6); /* (a.*, g) went; (c.#, g) is still s4's */
    expect_event(&r, 5, "a.*", "g", false);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 3), 2);
    (void)s3;
    (void)s4;
    cr_expect_eq(r.nev, 8);
    bool saw_plain = false, saw_group = false;
    for (size_t i = 6; i < 8; i++) {
        cr_expect_not(r.ev[i].added);
        saw_plain |= strcmp(r.ev[i].pattern, "a.*") == 0 && r.ev[i].group[0] == '\0';
        saw_group |= strcmp(r.ev[i].pattern, "c.#") == 0 && strcmp(r.ev[i].group, "g") == 0;
    }
    cr_expect(saw_plain && saw_group);
    l.n = 0;
    cr_expect_eq(mp_pubsub_each_pattern(ps, collect_pattern, &l), 0);
    cr_expect_eq(stats(ps).patterns, 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* --- invalid input ------------------------------------------------------------------- */

Test(pubsub, invalid_topic_and_pattern) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.retain_per_topic = 5;
    cfg.dedupe_max_ids = 10;
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "#");
    static const char *bad_topics[] = {"", "a..b", "a.*", "a.#", ".a", "a.", "a b"};
    for (size_t i = 0; i < sizeof bad_topics / sizeof bad_topics[0]; i++) {
        mp_pubsub_result res = {.delivered = 99};
        cr_expect_eq(pub_full(ps, bad_topics[i], i + 1, 0, "x", &res), MPREG_E_TOPIC, "%s",
                     bad_topics[i]);
        cr_expect_eq(res.delivered, 0);
    }
    static const char *bad_patterns[] = {"", "a..b", "a*", "#b", "a.", "a b"};
    for (size_t i = 0; i < sizeof bad_patterns / sizeof bad_patterns[0]; i++) {
        cr_expect_eq(try_sub(ps, (sub_args){.owner = 1}, PATS("ok", bad_patterns[i]), NULL),
                     MPREG_E_TOPIC, "%s", bad_patterns[i]);
    }
    mp_pubsub_stats st = stats(ps);
    cr_expect_eq(st.published, 0);
    cr_expect_eq(st.retained_messages, 0);
    cr_expect_eq(st.dedupe_ids, 0);
    cr_expect_eq(st.subscriptions, 1);
    cr_expect_eq(st.patterns, 1, "a refused subscribe leaves no interest");
    cr_expect_eq(r.nev, 1);
    cr_expect_eq(r.n, 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, invalid_subscription_specs) {
    mp_pubsub *ps = mp_pubsub_new(NULL, NULL);
    const char *none[] = {NULL};
    cr_expect_eq(try_sub(ps, (sub_args){.owner = 1}, none, NULL), MPREG_E_INVALID);
    const char *many[MP_PUBSUB_MAX_PATTERNS + 2];
    for (size_t i = 0; i <= MP_PUBSUB_MAX_PATTERNS; i++) {
        many[i] = "a";
    }
    many[MP_PUBSUB_MAX_PATTERNS + 1] = NULL;
    cr_expect_eq(try_sub(ps, (sub_args){.owner = 1}, many, NULL), MPREG_E_TOO_LARGE);
    many[MP_PUBSUB_MAX_PATTERNS] = NULL;
    cr_expect_eq(try_sub(ps, (sub_args){.owner = 1}, many, NULL), MPREG_OK, "64 is fine");

    char long_tag[MP_PUBSUB_MAX_TAG + 2];
    memset(long_tag, 't', sizeof long_tag - 1);
    long_tag[sizeof long_tag - 1] = '\0';
    cr_expect_eq(try_sub(ps, (sub_args){.owner = 1, .tag = long_tag}, PATS("a"), NULL),
                 MPREG_E_TOO_LARGE);
    cr_expect_eq(try_sub(ps, (sub_args){.owner = 1, .group = long_tag}, PATS("a"), NULL),
                 MPREG_E_TOO_LARGE);
    long_tag[MP_PUBSUB_MAX_TAG] = '\0';
    cr_expect_eq(try_sub(ps, (sub_args){.owner = 1, .tag = long_tag}, PATS("a"), NULL), MPREG_OK);

    mp_str pat = mp_str_c("a");
    mp_pubsub_sub_spec spec = {
        .owner = 1, .tag = {"x\0y", 3}, .patterns = &pat, .pattern_count = 1};
    uint64_t id;
    cr_expect_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_E_INVALID, "NUL in tag");
    spec.tag = (mp_str){"\xff", 1};
    cr_expect_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_E_INVALID, "bad UTF-8 in tag");
    spec.tag = mp_str_c("ok");
    spec.group = (mp_str){"g\0", 2};
    cr_expect_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_E_INVALID, "NUL in group");
    spec.group = MP_STR_NULL;
    spec.patterns = NULL;
    cr_expect_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_E_INVALID);
    cr_expect_eq(stats(ps).subscriptions, 2);

    /* Too many headers on a message. */
    mp_header hdr[MP_PUBSUB_MAX_MSG_HEADERS + 1];
    for (size_t i = 0; i < MP_PUBSUB_MAX_MSG_HEADERS + 1; i++) {
        hdr[i] = (mp_header){mp_str_c("k"), mp_str_c("v")};
    }
    mp_pubsub_message msg = {.id = idn(1), .topic = mp_str_c("a"), .headers = hdr};
    msg.header_count = MP_PUBSUB_MAX_MSG_HEADERS + 1;
    cr_expect_eq(mp_pubsub_publish(ps, &msg, 0, NULL), MPREG_E_TOO_LARGE);
    msg.header_count = MP_PUBSUB_MAX_MSG_HEADERS;
    cr_expect_eq(mp_pubsub_publish(ps, &msg, 0, NULL), MPREG_OK);
    mp_pubsub_free(ps);
}

/* --- replay ------------------------------------------------------------------------ */

static mp_pubsub_config retain_config(uint32_t per_topic, size_t budget) {
    mp_pubsub_config cfg = plain_config();
    cfg.retain_per_topic = per_topic;
    cfg.retain_max_bytes = budget;
    return cfg;
}

static uint64_t replay_sub(mp_pubsub *ps, uint64_t owner, mp_pubsub_replay_opts replay,
                           const char *const *patterns) {
    return sub_of(ps, (sub_args){.owner = owner, .tag = "r", .replay = replay}, patterns);
}

#define LAST(n) ((mp_pubsub_replay_opts){.has_last = true, .last = (n)})
#define SINCE(t) ((mp_pubsub_replay_opts){.has_since = true, .since_ms = (t)})

Test(pubsub, replay_last_n) {
    recorder r = {0};
    mp_pubsub_config cfg = retain_config(10, 1 << 20);
    mp_pubsub *ps = new_ps(&cfg, &r);
    for (uint64_t k = 1; k <= 6; k++) {
        mp_pubsub_result res;
        char topic[8];
        snprintf(topic, sizeof topic, "a.%" PRIu64, k);
        cr_assert_eq(pub_full(ps, topic, k, k * 10, "payload", &res), MPREG_OK);
        cr_expect(res.retained);
    }
    pub(ps, "b.1", 7, 70); /* not matching */
    cr_expect_eq(stats(ps).retained_messages, 7);

    uint64_t s = replay_sub(ps, 1, LAST(3), PATS("a.*"));
    cr_expect_eq(r.n, 0, "replay waits for mp_pubsub_replay");
    cr_expect_eq(mp_pubsub_replay(ps, s), 3);
    cr_assert_eq(r.n, 3);
    for (size_t i = 0; i < 3; i++) {
        cr_expect_eq(id_num(&r.d[i].id), 4 + i, "oldest first");
        cr_expect(r.d[i].replay);
        cr_expect_eq(r.d[i].sub, s);
        cr_expect_eq(r.d[i].published_ms, (4 + i) * 10);
        cr_expect_eq(r.d[i].payload_len, 7);
        cr_expect_eq(memcmp(r.d[i].payload, "payload", 7), 0);
        cr_expect_eq(r.d[i].header_count, 0);
    }
    cr_expect_str_eq(r.d[0].topic, "a.4");
    cr_expect_eq(mp_pubsub_replay(ps, s), 0, "at most once");
    cr_expect_eq(mp_pubsub_replay(ps, 12345), 0);
    cr_expect_eq(stats(ps).replayed, 3);
    cr_expect_eq(sub_stats(ps, s).delivered, 3);

    /* More than retained: all matching ones. Zero: none. */
    rec_clear(&r);
    uint64_t all = replay_sub(ps, 1, LAST(100), PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, all), 7);
    uint64_t zero = replay_sub(ps, 1, LAST(0), PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, zero), 0);
    /* No replay asked: nothing. */
    uint64_t plain = SUB(ps, 1, NULL, "#");
    cr_expect_eq(mp_pubsub_replay(ps, plain), 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, replay_since_and_both) {
    recorder r = {0};
    mp_pubsub_config cfg = retain_config(100, 1 << 20);
    mp_pubsub *ps = new_ps(&cfg, &r);
    for (uint64_t k = 1; k <= 10; k++) {
        pub(ps, k % 2 ? "odd.x" : "even.x", k, k * 100);
    }
    uint64_t s = replay_sub(ps, 1, SINCE(500), PATS("odd.*"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 3); /* 5, 7, 9 */
    cr_expect_eq(id_num(&r.d[0].id), 5);
    cr_expect_eq(id_num(&r.d[1].id), 7);
    cr_expect_eq(id_num(&r.d[2].id), 9);

    rec_clear(&r);
    mp_pubsub_replay_opts both = {.has_last = true, .last = 2, .has_since = true, .since_ms = 300};
    s = replay_sub(ps, 1, both, PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 2);
    cr_expect_eq(id_num(&r.d[0].id), 9);
    cr_expect_eq(id_num(&r.d[1].id), 10);

    rec_clear(&r);
    both.last = 100; /* the last 100 of those since 300: 3..10 */
    s = replay_sub(ps, 1, both, PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 8);
    cr_expect_eq(id_num(&r.d[0].id), 3);

    rec_clear(&r);
    s = replay_sub(ps, 1, SINCE(0), PATS("even.x", "odd.x"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 10, "one per message with overlapping patterns");
    s = replay_sub(ps, 1, SINCE(5000), PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, replay_bounded_per_topic) {
    recorder r = {0};
    mp_pubsub_config cfg = retain_config(2, 1 << 20);
    mp_pubsub *ps = new_ps(&cfg, &r);
    for (uint64_t k = 1; k <= 5; k++) {
        pub(ps, "x", k, k);
        pub(ps, "y", k + 100, k);
    }
    mp_pubsub_stats st = stats(ps);
    cr_expect_eq(st.retained_messages, 4);
    cr_expect_eq(st.retained_topics, 2);
    cr_expect_eq(st.evicted, 6);
    cr_expect_eq(st.retained_bytes, 4 * 2); /* topic "x" + payload "x" */
    uint64_t s = replay_sub(ps, 1, SINCE(0), PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 4);
    uint64_t want[4] = {4, 104, 5, 105};
    for (size_t i = 0; i < 4; i++) {
        cr_expect_eq(id_num(&r.d[i].id), want[i]);
    }
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, replay_bounded_by_byte_budget) {
    recorder r = {0};
    /* Each message costs 2 (topic) + 30 (payload) = 32 bytes; 100 holds 3. */
    mp_pubsub_config cfg = retain_config(100, 100);
    mp_pubsub *ps = new_ps(&cfg, &r);
    const char *p30 = "012345678901234567890123456789";
    mp_pubsub_result res;
    const char *topics[5] = {"t1", "t2", "t1", "t3", "t2"};
    for (uint64_t k = 0; k < 5; k++) {
        cr_assert_eq(pub_full(ps, topics[k], k + 1, k, p30, &res), MPREG_OK);
        cr_expect(res.retained);
    }
    mp_pubsub_stats st = stats(ps);
    cr_expect_eq(st.retained_messages, 3);
    cr_expect_eq(st.retained_bytes, 96);
    cr_expect_eq(st.evicted, 2);
    uint64_t s = replay_sub(ps, 1, SINCE(0), PATS("#"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 3);
    cr_expect_eq(id_num(&r.d[0].id), 3, "oldest first out, across topics");
    cr_expect_eq(id_num(&r.d[1].id), 4);
    cr_expect_eq(id_num(&r.d[2].id), 5);

    /* A message over the whole budget is delivered but not retained, and
     * evicts nothing. */
    char big[120];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cr_assert_eq(pub_full(ps, "t9", 50, 9, big, &res), MPREG_OK);
    cr_expect_not(res.retained);
    cr_expect_eq(res.delivered, 1);
    cr_expect_eq(stats(ps).retained_messages, 3);
    /* Exactly the budget: kept, alone. */
    char exact[99];
    memset(exact, 'e', sizeof exact - 1);
    exact[sizeof exact - 1] = '\0';
    cr_assert_eq(pub_full(ps, "t9", 51, 10, exact, &res), MPREG_OK);
    cr_expect(res.retained);
    st = stats(ps);
    cr_expect_eq(st.retained_messages, 1);
    cr_expect_eq(st.retained_bytes, 100);
    cr_expect_eq(st.retained_topics, 1);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, replay_comes_before_live_messages) {
    recorder r = {0};
    mp_pubsub_config cfg = retain_config(10, 1 << 20);
    mp_pubsub *ps = new_ps(&cfg, &r);
    pub(ps, "a", 1, 1);
    pub(ps, "a", 2, 2);
    uint64_t s = replay_sub(ps, 1, LAST(10), PATS("a"));
    uint64_t s2 = replay_sub(ps, 2, LAST(1), PATS("#"));
    /* The node did not call mp_pubsub_replay before the next publish: the
     * pending replays go first, oldest subscription first, and do not
     * include the new message. */
    cr_expect_eq(pub(ps, "a", 3, 3), 2);
    cr_assert_eq(r.n, 5);
    cr_expect(r.d[0].replay && r.d[0].sub == s && id_num(&r.d[0].id) == 1);
    cr_expect(r.d[1].replay && r.d[1].sub == s && id_num(&r.d[1].id) == 2);
    cr_expect(r.d[2].replay && r.d[2].sub == s2 && id_num(&r.d[2].id) == 2);
    cr_expect(!r.d[3].replay && r.d[3].sub == s && id_num(&r.d[3].id) == 3);
    cr_expect(!r.d[4].replay && r.d[4].sub == s2 && id_num(&r.d[4].id) == 3);
    cr_expect_eq(mp_pubsub_replay(ps, s), 0, "already flushed");
    /* A pending replay dies with its subscription. */
    uint64_t s3 = replay_sub(ps, 3, LAST(10), PATS("a"));
    cr_assert_eq(mp_pubsub_unsubscribe(ps, 3, s3), MPREG_OK);
    rec_clear(&r);
    cr_expect_eq(pub(ps, "a", 4, 4), 2);
    cr_expect_eq(r.n, 2);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, replay_to_slow_consumer_is_dropped_and_groups_do_not_apply) {
    recorder r = {0};
    mp_pubsub_config cfg = retain_config(10, 1 << 20);
    mp_pubsub *ps = new_ps(&cfg, &r);
    pub(ps, "a", 1, 1);
    pub(ps, "a", 2, 2);
    mp_pubsub_set_accepting(ps, 1, false);
    uint64_t s = replay_sub(ps, 1, LAST(5), PATS("a"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 0);
    cr_expect_eq(sub_stats(ps, s).dropped, 2);

    uint64_t g1 = sub_of(ps, (sub_args){.owner = 2, .group = "g", .replay = LAST(5)}, PATS("a"));
    uint64_t g2 = sub_of(ps, (sub_args){.owner = 3, .group = "g", .replay = LAST(5)}, PATS("a"));
    cr_expect_eq(mp_pubsub_replay(ps, g1), 2);
    cr_expect_eq(mp_pubsub_replay(ps, g2), 2);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, retention_off_by_default) {
    recorder r = {0};
    mp_pubsub *ps = new_ps(NULL, &r);
    pub(ps, "a", 1, 1);
    cr_expect_eq(stats(ps).retained_messages, 0);
    uint64_t s = replay_sub(ps, 1, LAST(5), PATS("a"));
    cr_expect_eq(mp_pubsub_replay(ps, s), 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* --- dedupe ------------------------------------------------------------------------- */

Test(pubsub, duplicate_ignored_within_window) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.dedupe_max_ids = 1000;
    cfg.dedupe_window_ms = 100;
    cfg.retain_per_topic = 5;
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "#");
    mp_pubsub_result res;
    cr_assert_eq(pub_full(ps, "a", 7, 1000, "x", &res), MPREG_OK);
    cr_expect_eq(res.delivered, 1);
    cr_expect_not(res.duplicate);
    cr_assert_eq(pub_full(ps, "other.topic", 7, 1050, "x", &res), MPREG_OK);
    cr_expect(res.duplicate);
    cr_expect_eq(res.delivered, 0);
    cr_expect_not(res.retained);
    cr_assert_eq(pub_full(ps, "a", 7, 1099, "x", &res), MPREG_OK);
    cr_expect(res.duplicate, "first-seen time counts, not the last");
    mp_pubsub_stats st = stats(ps);
    cr_expect_eq(st.duplicates, 2);
    cr_expect_eq(st.published, 1);
    cr_expect_eq(st.retained_messages, 1);
    cr_expect_eq(st.dedupe_ids, 1);
    /* Window over: forgotten, so accepted again. */
    cr_assert_eq(pub_full(ps, "a", 7, 1100, "x", &res), MPREG_OK);
    cr_expect_not(res.duplicate);
    cr_expect_eq(res.delivered, 1);

    /* mp_pubsub_expire forgets without a publish. */
    pub(ps, "a", 8, 1150);
    cr_expect_eq(stats(ps).dedupe_ids, 2);
    mp_pubsub_expire(ps, 1199);
    cr_expect_eq(stats(ps).dedupe_ids, 2);
    mp_pubsub_expire(ps, 1200);
    cr_expect_eq(stats(ps).dedupe_ids, 1);
    mp_pubsub_expire(ps, 1250);
    cr_expect_eq(stats(ps).dedupe_ids, 0);
    /* A clock going back forgets nothing. */
    pub(ps, "a", 9, 2000);
    mp_pubsub_expire(ps, 10);
    cr_expect_eq(stats(ps).dedupe_ids, 1);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, dedupe_count_window) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.dedupe_max_ids = 100;
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "#");
    for (uint64_t k = 1; k <= 250; k++) {
        cr_assert_eq(pub(ps, "a", k, 0), 1);
    }
    cr_expect_eq(stats(ps).dedupe_ids, 100);
    cr_expect_eq(pub(ps, "a", 250, 0), 0, "recent: duplicate");
    cr_expect_eq(pub(ps, "a", 151, 0), 0, "oldest remembered");
    cr_expect_eq(pub(ps, "a", 150, 0), 1, "pushed out: forgotten");
    cr_expect_eq(stats(ps).duplicates, 2);
    cr_expect_eq(stats(ps).dedupe_ids, 100);
    mp_pubsub_free(ps);
    rec_free(&r);
}

Test(pubsub, zero_id_and_dedupe_off) {
    recorder r = {0};
    mp_pubsub_config cfg;
    mp_pubsub_config_default(&cfg);
    cr_expect_eq(cfg.retain_per_topic, 0);
    cr_expect_gt(cfg.dedupe_max_ids, 0);
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "#");
    cr_expect_eq(pub(ps, "a", 0, 0), 1);
    cr_expect_eq(pub(ps, "a", 0, 0), 1, "the zero id is never a duplicate");
    cr_expect_eq(pub(ps, "a", 5, 0), 1);
    cr_expect_eq(pub(ps, "a", 5, 0), 0, "on by default");
    mp_pubsub_free(ps);

    cfg = plain_config();
    ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "#");
    cr_expect_eq(pub(ps, "a", 5, 0), 1);
    cr_expect_eq(pub(ps, "a", 5, 0), 1, "off");
    cr_expect_eq(stats(ps).dedupe_ids, 0);
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* A long window against the model's plain list of (id, first seen), with
 * many repeats, structured and random ids, clock jumps (back included) and
 * bursts: the table's ring and number bits wrap many times over, it grows
 * and rebuilds, and its slots go stale and are reused. */
typedef struct dd_model {
    mp_id *ids;
    uint64_t *at;
    size_t head, len, cap;
} dd_model;

static void dd_expire(dd_model *m, uint64_t window, uint64_t now) {
    while (window && m->len && now >= m->at[m->head] && now - m->at[m->head] >= window) {
        m->head = (m->head + 1) % m->cap;
        m->len--;
    }
}

static bool dd_has(const dd_model *m, const mp_id *id) {
    for (size_t i = 0; i < m->len; i++) {
        if (mp_id_equal(&m->ids[(m->head + i) % m->cap], id)) {
            return true;
        }
    }
    return false;
}

static void dd_run(size_t max_ids, uint64_t window, size_t steps, bool random_ids, uint64_t seed) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    cfg.dedupe_max_ids = max_ids;
    cfg.dedupe_window_ms = window;
    mp_pubsub *ps = new_ps(&cfg, &r);
    SUB(ps, 1, NULL, "#");
    mp_xoshiro x;
    mp_xoshiro_seed(&x, seed);
    dd_model m = {.cap = steps + 1};
    m.ids = calloc(m.cap, sizeof *m.ids);
    m.at = calloc(m.cap, sizeof *m.at);
    mp_id *hist = calloc(steps, sizeof *hist);
    cr_assert(m.ids && m.at && hist);
    uint64_t now = 1000000;
    size_t burst = 0;
    for (size_t step = 0; step < steps; step++) {
        uint64_t roll = mp_rng_below(&x.rng, 100);
        if (burst) {
            burst--; /* many ids in the same millisecond */
        } else if (roll == 0) {
            burst = (size_t)mp_rng_below(&x.rng, 3000);
        } else if (roll == 1) {
            now -= mp_rng_below(&x.rng, 30); /* the clock goes back */
        } else if (roll == 2) {
            now += window * 3 + 1; /* everything expires */
        } else {
            now += mp_rng_below(&x.rng, 3);
        }
        mp_id id;
        if (step && mp_rng_below(&x.rng, 3) == 0) {
            /* A repeat, mostly of a recent id. */
            size_t back =
                (size_t)mp_rng_below(&x.rng, mp_rng_below(&x.rng, 4) ? 2 * max_ids + 50 : step);
            id = hist[step - 1 - (back < step ? back : step - 1)];
        } else {
            id = random_ids ? mp_id_new(&x.rng) : idn(step + 1);
        }
        hist[step] = id;
        mp_pubsub_message msg = {
            .id = id, .topic = mp_str_c("a"), .payload = {(const uint8_t *)"x", 1}};
        mp_pubsub_result res;
        cr_assert_eq(mp_pubsub_publish(ps, &msg, now, &res), MPREG_OK);
        dd_expire(&m, window, now);
        bool want = dd_has(&m, &id);
        cr_assert_eq(res.duplicate, want, "max %zu window %llu step %zu: duplicate %d, want %d",
                     max_ids, (unsigned long long)window, step, res.duplicate, want);
        if (!want) {
            if (max_ids && m.len >= max_ids) {
                m.head = (m.head + 1) % m.cap;
                m.len--;
            }
            m.ids[(m.head + m.len) % m.cap] = id;
            m.at[(m.head + m.len) % m.cap] = now;
            m.len++;
        }
        if (step % 97 == 0) {
            uint64_t later = now + mp_rng_below(&x.rng, window + 2);
            mp_pubsub_expire(ps, later);
            dd_expire(&m, window, later);
        }
        cr_assert_eq(stats(ps).dedupe_ids, m.len, "step %zu", step);
        rec_clear(&r);
    }
    mp_pubsub_free(ps);
    rec_free(&r);
    free(m.ids);
    free(m.at);
    free(hist);
}

Test(pubsub_property, dedupe_window_matches_model) {
    dd_run(1, 0, 2000, false, 1);
    dd_run(100, 0, 120000, false, 2);
    dd_run(100, 0, 120000, true, 3);
    dd_run(0, 40, 120000, true, 4);
    dd_run(0, 40, 120000, false, 5);
    dd_run(300, 25, 120000, true, 6);
    dd_run(2000, 0, 40000, true, 7);
}

typedef struct ud_seen {
    void *got[8];
    size_t n;
} ud_seen;

static bool ud_deliver(void *ud, const mp_pubsub_delivery *d) {
    ud_seen *u = ud;
    cr_assert_lt(u->n, 8);
    u->got[u->n++] = d->owner_ud;
    return true;
}

Test(pubsub, owner_ud_comes_back_with_each_delivery) {
    ud_seen u = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub_hooks hooks = {&u, ud_deliver, NULL};
    mp_pubsub *ps = mp_pubsub_new(&cfg, &hooks);
    int conn_a, conn_b;
    mp_str pat = mp_str_c("#");
    mp_pubsub_sub_spec spec = {
        .owner = 1, .patterns = &pat, .pattern_count = 1, .owner_ud = &conn_a};
    uint64_t id;
    cr_assert_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_OK);
    spec.owner = 2;
    spec.owner_ud = &conn_b;
    cr_assert_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_OK);
    spec.owner = 3;
    spec.owner_ud = NULL;
    cr_assert_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_OK);
    cr_assert_eq(pub(ps, "x", 1, 0), 3);
    cr_expect(u.got[0] == &conn_a && u.got[1] == &conn_b && u.got[2] == NULL);
    mp_pubsub_free(ps);
}

/* --- the match cache ------------------------------------------------------------- */

Test(pubsub, match_cache_follows_subscriptions) {
    recorder r = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub *ps = new_ps(&cfg, &r);
    cr_expect_not(mp_pubsub_matches(ps, mp_str_c("a.b")));
    uint64_t s1 = SUB(ps, 1, NULL, "a.*");
    cr_expect(mp_pubsub_matches(ps, mp_str_c("a.b")));
    cr_expect_not(mp_pubsub_matches(ps, mp_str_c("b.b")));
    cr_expect_not(mp_pubsub_matches(ps, MP_STR_NULL));
    cr_expect_eq(pub(ps, "a.b", 0, 0), 1);
    uint64_t s2 = SUB(ps, 2, NULL, "#");
    cr_expect_eq(pub(ps, "a.b", 0, 0), 2, "a new subscription is seen at once");
    cr_expect(mp_pubsub_matches(ps, mp_str_c("b.b")));
    cr_assert_eq(mp_pubsub_unsubscribe(ps, 1, s1), MPREG_OK);
    rec_clear(&r);
    cr_expect_eq(pub(ps, "a.b", 0, 0), 1, "and an ended one is gone");
    cr_expect_eq(r.d[0].sub, s2);
    cr_expect_eq(mp_pubsub_remove_owner(ps, 2), 1);
    cr_expect_eq(pub(ps, "a.b", 0, 0), 0);
    cr_expect_not(mp_pubsub_matches(ps, mp_str_c("a.b")));

    /* More topics than the cache has slots, over and over, with the
     * subscriptions changing in between. */
    SUB(ps, 1, NULL, "t.*");
    uint64_t seven = SUB(ps, 2, NULL, "t.7");
    char topic[16];
    for (int round = 0; round < 4; round++) {
        if (round == 2) {
            cr_assert_eq(mp_pubsub_unsubscribe(ps, 2, seven), MPREG_OK);
        }
        for (int i = 0; i < 300; i++) {
            snprintf(topic, sizeof topic, "t.%d", i);
            size_t want = i == 7 && round < 2 ? 2 : 1;
            cr_assert_eq(pub(ps, topic, 0, 0), want, "round %d, %s", round, topic);
            cr_assert_eq(pub(ps, "u", 0, 0), 0);
        }
    }
    mp_pubsub_free(ps);
    rec_free(&r);
}

/* --- DELIVER frames ------------------------------------------------------------- */

typedef struct frame_ud {
    mp_pubsub *ps;
    const char *node;
    const char *cluster;
    size_t checked;
} frame_ud;

static bool frame_deliver(void *ud, const mp_pubsub_delivery *d) {
    frame_ud *f = ud;
    expect_frame_as_envelope(f->ps, d, f->node, f->cluster);
    f->checked++;
    return true;
}

Test(pubsub_frame, same_bytes_as_the_envelope_path) {
    frame_ud f = {.node = "node-1", .cluster = "c1"};
    mp_pubsub_config cfg = plain_config();
    cfg.retain_per_topic = 2;
    mp_pubsub_hooks hooks = {&f, frame_deliver, NULL};
    mp_pubsub *ps = mp_pubsub_new(&cfg, &hooks);
    f.ps = ps;
    /* Tags at every str head width, and ids from 1 to 3 digits. */
    static char tag255[MP_PUBSUB_MAX_TAG + 1];
    memset(tag255, 'g', MP_PUBSUB_MAX_TAG);
    const char *tags[] = {"", "t", "0123456789012345678901234567890", /* 31 */
                          "01234567890123456789012345678901", /* 32 */ tag255};
    for (size_t i = 0; i < 5; i++) {
        sub_of(ps, (sub_args){.owner = 1 + i, .tag = tags[i]}, PATS("#"));
    }
    for (int i = 0; i < 100; i++) {
        uint64_t id = SUB(ps, 9, NULL, "never");
        cr_assert_eq(mp_pubsub_unsubscribe(ps, 9, id), MPREG_OK);
    }
    SUB(ps, 7, NULL, "orders.#");
    SUB(ps, 8, "g", "#"); /* a group member too */

    static char long_topic[MP_TOPIC_MAX_LEN + 1];
    memset(long_topic, 'w', MP_TOPIC_MAX_LEN);
    static uint8_t big[70000];
    memset(big, 0xa5, sizeof big);
    mp_header hdr[3] = {
        {mp_str_c("trace"), mp_str_c("t-1")},
        {mp_str_c("sub"), mp_str_c("forged")},
        {mp_str_c("replay"), mp_str_c("forged")},
    };
    mp_header many[MP_PUBSUB_MAX_MSG_HEADERS];
    char keys[MP_PUBSUB_MAX_MSG_HEADERS][8];
    for (size_t i = 0; i < MP_PUBSUB_MAX_MSG_HEADERS; i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        many[i] = (mp_header){mp_str_c(keys[i]), mp_str_c("v")};
    }
    struct {
        const char *topic;
        size_t payload;
        const mp_header *headers;
        size_t header_count;
    } msgs[] = {
        {"a", 0, NULL, 0},
        {"orders.eu.created", 5, hdr, 3},
        {long_topic, 300, NULL, 0},
        {"orders.x", sizeof big, many, 13},
        {"b", 70, many, MP_PUBSUB_MAX_MSG_HEADERS},
    };
    uint64_t id = 1;
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            f.node = "another-node-with-a-longer-name";
            f.cluster = "c2"; /* new names: the shared part is built again */
        }
        for (size_t i = 0; i < sizeof msgs / sizeof *msgs; i++) {
            mp_pubsub_message msg = {
                .id = idn(id++),
                .topic = mp_str_c(msgs[i].topic),
                .payload = {big, msgs[i].payload},
                .headers = msgs[i].headers,
                .header_count = msgs[i].header_count,
            };
            cr_assert_eq(mp_pubsub_publish(ps, &msg, 1000 + id, NULL), MPREG_OK);
        }
    }
    /* Per message: the five "#", the group, and "orders.#" for two of them. */
    cr_expect_eq(f.checked, 2 * (5 * 6 + 2), "every delivery checked");
    /* Messages shaped alike one after the other (the shared part is patched,
     * not built again), the payload's head changing width and coming and
     * going. */
    static const size_t sizes[] = {0, 5, 0, 300, 300, 70000, 1, 255, 256, 65535, 65536, 0};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        mp_pubsub_message msg = {
            .id = idn(id++), .topic = mp_str_c("orders.same"), .payload = {big, sizes[i]}};
        cr_assert_eq(mp_pubsub_publish(ps, &msg, 5000, NULL), MPREG_OK);
    }
    cr_expect_eq(f.checked, 2 * (5 * 6 + 2) + 12 * 7);
    /* Replayed messages: "replay" = "1" after the subscription's headers. */
    size_t before = f.checked;
    uint64_t s =
        sub_of(ps, (sub_args){.owner = 3, .tag = "r", .replay = {.has_last = true, .last = 10}},
               PATS("#"));
    cr_expect_gt(mp_pubsub_replay(ps, s), 0);
    cr_expect_gt(f.checked, before);
    mp_pubsub_free(ps);
}

typedef struct frame_err_ud {
    mp_pubsub *ps;
    mp_buf out;
    mpreg_err (*check)(struct frame_err_ud *f, const mp_pubsub_delivery *d);
    size_t calls;
} frame_err_ud;

static bool frame_err_deliver(void *ud, const mp_pubsub_delivery *d) {
    frame_err_ud *f = ud;
    f->calls++;
    f->check(f, d);
    return true;
}

static mpreg_err frame_try(frame_err_ud *f, const mp_pubsub_delivery *d, const char *node,
                           const char *cluster, uint32_t max_frame) {
    size_t before = f->out.len;
    mpreg_err err =
        mp_pubsub_deliver_frame(f->ps, d, mp_str_c(node), mp_str_c(cluster), max_frame, &f->out);
    if (err) {
        cr_assert_eq(f->out.len, before, "out left as it was");
    }
    return err;
}

static mpreg_err check_zero_id(frame_err_ud *f, const mp_pubsub_delivery *d) {
    cr_expect_eq(frame_try(f, d, "n", "c", 0), MPREG_E_INVALID);
    return MPREG_OK;
}

static mpreg_err check_bad_headers(frame_err_ud *f, const mp_pubsub_delivery *d) {
    mpreg_err err = frame_try(f, d, "n", "c", 0);
    cr_expect(err == MPREG_E_DUPLICATE || err == MPREG_E_INVALID, "got %s", mpreg_err_name(err));
    return MPREG_OK;
}

static mpreg_err check_names_and_size(frame_err_ud *f, const mp_pubsub_delivery *d) {
    static char long_name[MP_MAX_NAME_LEN + 2];
    memset(long_name, 'n', MP_MAX_NAME_LEN + 1);
    cr_expect_eq(frame_try(f, d, long_name, "c", 0), MPREG_E_TOO_LARGE);
    cr_expect_eq(frame_try(f, d, "n", "\xff", 0), MPREG_E_INVALID);
    /* The frame's exact size is allowed, a byte less is not. */
    cr_assert_eq(frame_try(f, d, "n", "c", 0), MPREG_OK);
    uint32_t body = (uint32_t)f->out.len - MP_FRAME_HEADER;
    cr_expect_eq(frame_try(f, d, "n", "c", body - 1), MPREG_E_FRAME_TOO_LARGE);
    cr_expect_eq(frame_try(f, d, "n", "c", body), MPREG_OK);
    mp_pubsub_delivery hand = *d; /* one not made by the service */
    hand.sub_headers = (mp_bytes){NULL, 0};
    cr_expect_eq(frame_try(f, &hand, "n", "c", 0), MPREG_E_INVALID);
    return MPREG_OK;
}

Test(pubsub_frame, what_it_leaves_to_the_envelope_path) {
    frame_err_ud f = {0};
    mp_pubsub_config cfg = plain_config();
    mp_pubsub_hooks hooks = {&f, frame_err_deliver, NULL};
    mp_pubsub *ps = mp_pubsub_new(&cfg, &hooks);
    f.ps = ps;
    SUB(ps, 1, NULL, "#");
    f.check = check_zero_id;
    cr_assert_eq(pub_full(ps, "a", 0, 0, "x", NULL), MPREG_OK);

    f.check = check_bad_headers;
    mp_header dup[2] = {{mp_str_c("a"), mp_str_c("1")}, {mp_str_c("a"), mp_str_c("2")}};
    mp_header bad[1] = {{mp_str_c("a"), (mp_str){"\xc3", 1}}};
    mp_pubsub_message msg = {
        .id = idn(1), .topic = mp_str_c("a"), .headers = dup, .header_count = 2};
    cr_assert_eq(mp_pubsub_publish(ps, &msg, 0, NULL), MPREG_OK);
    msg = (mp_pubsub_message){
        .id = idn(2), .topic = mp_str_c("a"), .headers = bad, .header_count = 1};
    cr_assert_eq(mp_pubsub_publish(ps, &msg, 0, NULL), MPREG_OK);

    f.check = check_names_and_size;
    cr_assert_eq(pub_full(ps, "a", 3, 0, "payload", NULL), MPREG_OK);
    cr_expect_eq(f.calls, 4);
    mp_buf_free(&f.out);
    mp_pubsub_free(ps);
}

/* --- the SUBSCRIBE / UNSUBSCRIBE payloads ----------------------------------------- */

typedef struct packer {
    mp_buf buf;
    msgpack_packer pk;
} packer;

static void pk_init(packer *p) {
    mp_buf_init(&p->buf);
    msgpack_packer_init(&p->pk, &p->buf, mp_buf_msgpack_write);
}

static void pk_str(packer *p, const char *s) {
    msgpack_pack_str(&p->pk, strlen(s));
    msgpack_pack_str_body(&p->pk, s, strlen(s));
}

static void pk_strn(packer *p, const char *s, size_t n) {
    msgpack_pack_str(&p->pk, n);
    msgpack_pack_str_body(&p->pk, s, n);
}

/* {"patterns": [pattern], "tag": "t"} plus `extra` more entries the caller
 * packs next. */
static void pk_base(packer *p, size_t extra, const char *pattern) {
    msgpack_pack_map(&p->pk, 2 + extra);
    pk_str(p, "patterns");
    msgpack_pack_array(&p->pk, 1);
    pk_str(p, pattern);
    pk_str(p, "tag");
    pk_str(p, "t");
}

static mpreg_err decode_sub(packer *p, const char **why) {
    mp_pubsub_subscribe_payload out;
    mpreg_err err = mp_pubsub_subscribe_decode(p->buf.data, p->buf.len, &out, why);
    if (err) {
        cr_expect_eq(out.storage.type, MPREG_NIL);
        cr_expect_eq(out.pattern_count, 0);
        cr_expect_not_null(*why);
    } else {
        cr_expect_null(*why);
    }
    mp_pubsub_subscribe_payload_free(&out);
    mp_buf_free(&p->buf);
    return err;
}

#define EXPECT_SUB_ERR(p, code)                                                                    \
    do {                                                                                           \
        const char *why_ = NULL;                                                                   \
        mpreg_err e_ = decode_sub(p, &why_);                                                       \
        cr_expect_eq(e_, code, "line %d: got %s (%s)", __LINE__, mpreg_err_name(e_),               \
                     why_ ? why_ : "-");                                                           \
    } while (0)

Test(pubsub_codec, subscribe_round_trip) {
    mp_pubsub_subscribe_payload in = {.storage = mpreg_nil()};
    in.patterns[0] = mp_str_c("orders.*.created");
    in.patterns[1] = mp_str_c("#");
    in.pattern_count = 2;
    in.tag = mp_str_c("cb-1");
    in.group = mp_str_c("workers");
    in.replay = (mp_pubsub_replay_opts){true, 5, true, 1700000000000ull};
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_OK);
    mp_pubsub_subscribe_payload out;
    const char *why = "x";
    cr_assert_eq(mp_pubsub_subscribe_decode(buf.data, buf.len, &out, &why), MPREG_OK);
    cr_expect_null(why);
    cr_assert_eq(out.pattern_count, 2);
    cr_expect(mp_str_eq_c(out.patterns[0], "orders.*.created"));
    cr_expect(mp_str_eq_c(out.patterns[1], "#"));
    cr_expect(mp_str_eq_c(out.tag, "cb-1"));
    cr_expect(mp_str_eq_c(out.group, "workers"));
    cr_expect(out.replay.has_last && out.replay.last == 5);
    cr_expect(out.replay.has_since && out.replay.since_ms == 1700000000000ull);

    /* Decode, encode again: the same bytes. */
    mp_buf again = MP_BUF_INIT;
    cr_assert_eq(mp_pubsub_subscribe_encode(&out, &again), MPREG_OK);
    cr_expect_eq(again.len, buf.len);
    cr_expect_eq(memcmp(again.data, buf.data, buf.len), 0);

    /* The spec a node builds from it subscribes. */
    mp_pubsub *ps = mp_pubsub_new(NULL, NULL);
    mp_pubsub_sub_spec spec = mp_pubsub_spec_from_payload(&out, 99);
    uint64_t id;
    cr_expect_eq(spec.owner, 99);
    cr_expect_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_OK);
    mp_pubsub_free(ps);
    mp_pubsub_subscribe_payload_free(&out);
    mp_buf_free(&again);
    mp_buf_free(&buf);
}

Test(pubsub_codec, subscribe_minimal_bytes) {
    mp_pubsub_subscribe_payload in = {.storage = mpreg_nil()};
    in.patterns[0] = mp_str_c("a.*");
    in.pattern_count = 1;
    in.tag = mp_str_c("t");
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_OK);
    /* The example in docs/PROTOCOL.md. */
    static const uint8_t want[] = {0x82, 0xa8, 'p', 'a', 't',  't', 'e', 'r', 'n',  's', 0x91,
                                   0xa3, 'a',  '.', '*', 0xa3, 't', 'a', 'g', 0xa1, 't'};
    cr_assert_eq(buf.len, sizeof want);
    cr_expect_eq(memcmp(buf.data, want, sizeof want), 0);
    mp_pubsub_subscribe_payload out;
    cr_assert_eq(mp_pubsub_subscribe_decode(buf.data, buf.len, &out, NULL), MPREG_OK);
    cr_expect(mp_str_empty(out.group));
    cr_expect_not(out.replay.has_last);
    cr_expect_not(out.replay.has_since);
    mp_pubsub_subscribe_payload_free(&out);
    mp_buf_free(&buf);
}

Test(pubsub_codec, subscribe_accepts_any_int_form) {
    packer p;
    pk_init(&p);
    pk_base(&p, 2, "a");
    pk_str(&p, "replay_last");
    msgpack_pack_int64(&p.pk, 3); /* written as a signed int: still a uint field */
    pk_str(&p, "replay_since_ms");
    msgpack_pack_uint64(&p.pk, 0);
    mp_pubsub_subscribe_payload out;
    cr_assert_eq(mp_pubsub_subscribe_decode(p.buf.data, p.buf.len, &out, NULL), MPREG_OK);
    cr_expect(out.replay.has_last && out.replay.last == 3);
    cr_expect(out.replay.has_since && out.replay.since_ms == 0);
    mp_pubsub_subscribe_payload_free(&out);
    mp_buf_free(&p.buf);
}

Test(pubsub_codec, subscribe_errors) {
    packer p;

    pk_init(&p); /* not a map */
    msgpack_pack_array(&p.pk, 0);
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* nothing at all */
    EXPECT_SUB_ERR(&p, MPREG_E_TRUNCATED);

    pk_init(&p); /* cut short */
    pk_base(&p, 0, "a");
    p.buf.len--;
    EXPECT_SUB_ERR(&p, MPREG_E_TRUNCATED);

    pk_init(&p); /* bytes after the map */
    pk_base(&p, 0, "a");
    msgpack_pack_nil(&p.pk);
    EXPECT_SUB_ERR(&p, MPREG_E_TRAILING);

    pk_init(&p); /* duplicate key */
    pk_base(&p, 1, "a");
    pk_str(&p, "tag");
    pk_str(&p, "u");
    EXPECT_SUB_ERR(&p, MPREG_E_DECODE);

    pk_init(&p); /* non-str key */
    pk_base(&p, 1, "a");
    msgpack_pack_int(&p.pk, 1);
    msgpack_pack_nil(&p.pk);
    EXPECT_SUB_ERR(&p, MPREG_E_DECODE);

    pk_init(&p); /* ext type */
    pk_base(&p, 1, "a");
    pk_str(&p, "x");
    msgpack_pack_ext(&p.pk, 1, 1);
    msgpack_pack_ext_body(&p.pk, "z", 1);
    EXPECT_SUB_ERR(&p, MPREG_E_DECODE);

    pk_init(&p); /* missing patterns */
    msgpack_pack_map(&p.pk, 1);
    pk_str(&p, "tag");
    pk_str(&p, "t");
    EXPECT_SUB_ERR(&p, MPREG_E_MISSING_FIELD);

    pk_init(&p); /* missing tag */
    msgpack_pack_map(&p.pk, 1);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 1);
    pk_str(&p, "a");
    EXPECT_SUB_ERR(&p, MPREG_E_MISSING_FIELD);

    pk_init(&p); /* patterns: not an array */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    pk_str(&p, "a");
    pk_str(&p, "tag");
    pk_str(&p, "t");
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* patterns: an item that is not a str */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 2);
    pk_str(&p, "a");
    msgpack_pack_bin(&p.pk, 1);
    msgpack_pack_bin_body(&p.pk, "b", 1);
    pk_str(&p, "tag");
    pk_str(&p, "t");
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* patterns: none */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 0);
    pk_str(&p, "tag");
    pk_str(&p, "t");
    EXPECT_SUB_ERR(&p, MPREG_E_INVALID);

    pk_init(&p); /* patterns: 65 */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, MP_PUBSUB_MAX_PATTERNS + 1);
    for (int i = 0; i <= MP_PUBSUB_MAX_PATTERNS; i++) {
        pk_str(&p, "a");
    }
    pk_str(&p, "tag");
    pk_str(&p, "t");
    EXPECT_SUB_ERR(&p, MPREG_E_TOO_LARGE);

    pk_init(&p); /* a bad pattern */
    pk_base(&p, 0, "a..b");
    EXPECT_SUB_ERR(&p, MPREG_E_TOPIC);
    pk_init(&p);
    pk_base(&p, 0, "a#");
    EXPECT_SUB_ERR(&p, MPREG_E_TOPIC);

    pk_init(&p); /* invalid UTF-8 in a pattern */
    pk_base(&p, 0, "a.\xc3");
    EXPECT_SUB_ERR(&p, MPREG_E_DECODE);

    pk_init(&p); /* tag: wrong type */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 1);
    pk_str(&p, "a");
    pk_str(&p, "tag");
    msgpack_pack_int(&p.pk, 7);
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    char long_str[MP_PUBSUB_MAX_TAG + 1];
    memset(long_str, 'x', sizeof long_str);
    pk_init(&p); /* tag: too long */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 1);
    pk_str(&p, "a");
    pk_str(&p, "tag");
    pk_strn(&p, long_str, sizeof long_str);
    EXPECT_SUB_ERR(&p, MPREG_E_TOO_LARGE);

    pk_init(&p); /* tag: NUL */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 1);
    pk_str(&p, "a");
    pk_str(&p, "tag");
    pk_strn(&p, "a\0b", 3);
    EXPECT_SUB_ERR(&p, MPREG_E_INVALID);

    pk_init(&p); /* group: empty */
    pk_base(&p, 1, "a");
    pk_str(&p, "group");
    pk_str(&p, "");
    EXPECT_SUB_ERR(&p, MPREG_E_INVALID);

    pk_init(&p); /* group: wrong type */
    pk_base(&p, 1, "a");
    pk_str(&p, "group");
    msgpack_pack_true(&p.pk);
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* group: too long */
    pk_base(&p, 1, "a");
    pk_str(&p, "group");
    pk_strn(&p, long_str, sizeof long_str);
    EXPECT_SUB_ERR(&p, MPREG_E_TOO_LARGE);

    pk_init(&p); /* replay_last: negative */
    pk_base(&p, 1, "a");
    pk_str(&p, "replay_last");
    msgpack_pack_int(&p.pk, -1);
    EXPECT_SUB_ERR(&p, MPREG_E_RANGE);

    pk_init(&p); /* replay_last: a float */
    pk_base(&p, 1, "a");
    pk_str(&p, "replay_last");
    msgpack_pack_double(&p.pk, 2.0);
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* replay_since_ms: above 2^63-1 */
    pk_base(&p, 1, "a");
    pk_str(&p, "replay_since_ms");
    msgpack_pack_uint64(&p.pk, UINT64_MAX);
    EXPECT_SUB_ERR(&p, MPREG_E_RANGE);

    pk_init(&p); /* replay_since_ms: a str */
    pk_base(&p, 1, "a");
    pk_str(&p, "replay_since_ms");
    pk_str(&p, "10");
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* an unknown key */
    pk_base(&p, 1, "a");
    pk_str(&p, "replay_lats");
    msgpack_pack_uint64(&p.pk, 3);
    EXPECT_SUB_ERR(&p, MPREG_E_INVALID);

    pk_init(&p); /* nil does not mean absent */
    pk_base(&p, 1, "a");
    pk_str(&p, "group");
    msgpack_pack_nil(&p.pk);
    EXPECT_SUB_ERR(&p, MPREG_E_TYPE);

    pk_init(&p); /* a field nested too deep */
    pk_base(&p, 1, "a");
    pk_str(&p, "deep");
    for (int i = 0; i < 8; i++) {
        msgpack_pack_array(&p.pk, 1);
    }
    msgpack_pack_nil(&p.pk);
    EXPECT_SUB_ERR(&p, MPREG_E_TOO_DEEP);

    pk_init(&p); /* a field with too many items */
    pk_base(&p, 1, "a");
    pk_str(&p, "big");
    msgpack_pack_array(&p.pk, 2000);
    for (int i = 0; i < 2000; i++) {
        msgpack_pack_nil(&p.pk);
    }
    EXPECT_SUB_ERR(&p, MPREG_E_TOO_LARGE);

    pk_init(&p); /* a container announcing more than the bytes hold */
    msgpack_pack_map(&p.pk, 2);
    pk_str(&p, "patterns");
    msgpack_pack_array(&p.pk, 60);
    EXPECT_SUB_ERR(&p, MPREG_E_TRUNCATED);
}

Test(pubsub_codec, subscribe_encode_refuses_what_decode_would) {
    mp_buf buf = MP_BUF_INIT;
    mp_pubsub_subscribe_payload in = {.storage = mpreg_nil()};
    in.tag = mp_str_c("t");
    cr_expect_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_E_INVALID, "no patterns");
    in.patterns[0] = mp_str_c("a..b");
    in.pattern_count = 1;
    cr_expect_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_E_TOPIC);
    in.patterns[0] = mp_str_c("a");
    in.tag = (mp_str){"\xc3", 1};
    cr_expect_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_E_INVALID, "bad UTF-8");
    in.tag = mp_str_c("t");
    in.replay = (mp_pubsub_replay_opts){.has_last = true, .last = (uint64_t)INT64_MAX + 1};
    cr_expect_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_E_RANGE);
    in.replay = (mp_pubsub_replay_opts){.has_since = true, .since_ms = UINT64_MAX};
    cr_expect_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_E_RANGE);
    cr_expect_eq(buf.len, 0, "nothing written on error");
    in.replay = (mp_pubsub_replay_opts){.has_last = true, .last = INT64_MAX};
    cr_expect_eq(mp_pubsub_subscribe_encode(&in, &buf), MPREG_OK);
    mp_buf_free(&buf);
}

Test(pubsub_codec, subscription_round_trip_and_errors) {
    static const uint64_t ids[] = {1, 127, 128, 65536, 1ull << 32, INT64_MAX};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        mp_buf buf = MP_BUF_INIT;
        cr_assert_eq(mp_pubsub_subscription_encode(ids[i], &buf), MPREG_OK);
        uint64_t got = 0;
        const char *why = "x";
        cr_assert_eq(mp_pubsub_subscription_decode(buf.data, buf.len, &got, &why), MPREG_OK);
        cr_expect_eq(got, ids[i]);
        cr_expect_null(why);
        mp_buf_free(&buf);
    }
    mp_buf buf = MP_BUF_INIT;
    cr_expect_eq(mp_pubsub_subscription_encode(0, &buf), MPREG_E_INVALID);
    cr_expect_eq(mp_pubsub_subscription_encode((uint64_t)INT64_MAX + 1, &buf), MPREG_E_RANGE);
    cr_expect_eq(buf.len, 0);
    cr_assert_eq(mp_pubsub_subscription_encode(1, &buf), MPREG_OK);
    static const uint8_t want[] = {0x81, 0xac, 's', 'u', 'b', 's', 'c', 'r',
                                   'i',  'p',  't', 'i', 'o', 'n', 0x01};
    cr_expect_eq(buf.len, sizeof want);
    cr_expect_eq(memcmp(buf.data, want, sizeof want), 0);
    mp_buf_free(&buf);

    struct {
        int shape; /* 0 map with value, 1 not a map, 2 other key, 3 trailing, 4 empty, 5 extra */
        int vtype; /* 0 uint, 1 negative, 2 str, 3 huge */
        uint64_t v;
        mpreg_err want;
    } cases[] = {
        {1, 0, 0, MPREG_E_TYPE},    {2, 0, 0, MPREG_E_INVALID}, {4, 0, 0, MPREG_E_MISSING_FIELD},
        {5, 0, 5, MPREG_E_INVALID}, {0, 2, 0, MPREG_E_TYPE},    {0, 1, 0, MPREG_E_RANGE},
        {0, 0, 0, MPREG_E_INVALID}, {0, 3, 0, MPREG_E_RANGE},   {3, 0, 5, MPREG_E_TRAILING},
        {0, 0, 5, MPREG_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        packer p;
        pk_init(&p);
        if (cases[i].shape == 1) {
            msgpack_pack_uint64(&p.pk, 5);
        } else if (cases[i].shape == 2) {
            msgpack_pack_map(&p.pk, 1);
            pk_str(&p, "other");
            msgpack_pack_uint64(&p.pk, 5);
        } else if (cases[i].shape == 4) {
            msgpack_pack_map(&p.pk, 0);
        } else {
            msgpack_pack_map(&p.pk, cases[i].shape == 5 ? 2 : 1);
            if (cases[i].shape == 5) {
                pk_str(&p, "tag");
                pk_str(&p, "t");
            }
            pk_str(&p, "subscription");
            if (cases[i].vtype == 0) {
                msgpack_pack_uint64(&p.pk, cases[i].v);
            } else if (cases[i].vtype == 1) {
                msgpack_pack_int64(&p.pk, -5);
            } else if (cases[i].vtype == 2) {
                pk_str(&p, "5");
            } else {
                msgpack_pack_uint64(&p.pk, UINT64_MAX);
            }
            if (cases[i].shape == 3) {
                msgpack_pack_nil(&p.pk);
            }
        }
        uint64_t got = 77;
        const char *why = NULL;
        mpreg_err err = mp_pubsub_subscription_decode(p.buf.data, p.buf.len, &got, &why);
        cr_expect_eq(err, cases[i].want, "case %zu: %s", i, mpreg_err_name(err));
        cr_expect_eq(got, err ? 0 : 5);
        cr_expect(err ? why != NULL : why == NULL);
        mp_buf_free(&p.buf);
    }
}

/* --- DELIVER envelopes ------------------------------------------------------------- */

Test(pubsub_codec, deliver_envelope_round_trip) {
    mp_header hdr[3] = {
        {mp_str_c("trace"), mp_str_c("t-1")},
        {mp_str_c("sub"), mp_str_c("forged")},
        {mp_str_c("replay"), mp_str_c("forged")},
    };
    mp_pubsub_message msg = {
        .id = idn(9),
        .topic = mp_str_c("orders.eu"),
        .payload = {(const uint8_t *)"hi", 2},
        .headers = hdr,
        .header_count = 3,
    };
    mp_pubsub_delivery d = {.owner = 1, .sub = 1234567, .tag = mp_str_c("cb"), .msg = &msg};
    char sub_text[MP_PUBSUB_SUB_TEXT], missed_text[MP_PUBSUB_SUB_TEXT];
    mp_envelope env;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_OK);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(&env, &buf), MPREG_OK);
    mp_envelope got;
    cr_assert_eq(mp_envelope_decode(buf.data, buf.len, &got, NULL), MPREG_OK);
    cr_expect_eq(got.kind, MP_KIND_DELIVER);
    cr_expect(mp_id_equal(&got.id, &msg.id));
    cr_expect(mp_str_eq_c(got.topic, "orders.eu"));
    cr_expect(got.payload.len == 2 && memcmp(got.payload.ptr, "hi", 2) == 0);
    cr_expect_eq(got.header_count, 3); /* trace, sub, tag */
    cr_expect(mp_str_eq_c(mp_envelope_header(&got, "trace"), "t-1"));
    cr_expect(mp_str_eq_c(mp_envelope_header(&got, "sub"), "1234567"));
    cr_expect_null(mp_envelope_header(&got, "replay").ptr);
    uint64_t sub = 0;
    mp_str tag = MP_STR_NULL;
    cr_assert_eq(mp_pubsub_deliver_parse(&got, &sub, &tag), MPREG_OK);
    cr_expect_eq(sub, 1234567);
    cr_expect(mp_str_eq_c(tag, "cb"));
    mp_buf_free(&buf);

    /* A replay, with an empty tag. */
    d.replay = true;
    d.tag = MP_STR_NULL;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_OK);
    cr_expect(mp_str_eq_c(mp_envelope_header(&env, "replay"), "1"));
    cr_assert_eq(mp_envelope_encode(&env, &buf), MPREG_OK);
    cr_assert_eq(mp_envelope_decode(buf.data, buf.len, &got, NULL), MPREG_OK);
    cr_assert_eq(mp_pubsub_deliver_parse(&got, &sub, &tag), MPREG_OK);
    cr_expect_eq(tag.len, 0);
    mp_buf_free(&buf);

    /* The most headers a message may have still fit. */
    mp_header many[MP_PUBSUB_MAX_MSG_HEADERS + 1];
    char keys[MP_PUBSUB_MAX_MSG_HEADERS + 1][8];
    for (size_t i = 0; i <= MP_PUBSUB_MAX_MSG_HEADERS; i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        many[i] = (mp_header){mp_str_c(keys[i]), mp_str_c("v")};
    }
    msg.headers = many;
    msg.header_count = MP_PUBSUB_MAX_MSG_HEADERS;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_OK);
    cr_expect_eq(env.header_count, MP_MAX_HEADERS);
    cr_expect_eq(mp_envelope_encode(&env, &buf), MPREG_OK);
    msg.header_count = MP_PUBSUB_MAX_MSG_HEADERS + 1;
    cr_expect_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_E_TOO_LARGE);
    mp_buf_free(&buf);

    /* A live message with the most headers and a "missed" count fits too;
     * so does a replay (no message headers) with one. */
    d.replay = false;
    d.missed = 1234;
    msg.header_count = MP_PUBSUB_MAX_MSG_HEADERS;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_OK);
    cr_expect_eq(env.header_count, MP_MAX_HEADERS);
    cr_expect(mp_str_eq_c(mp_envelope_header(&env, "missed"), "1234"));
    cr_expect_eq(mp_envelope_encode(&env, &buf), MPREG_OK);
    mp_buf_free(&buf);
    mp_pubsub_message bare = {.id = idn(9), .topic = mp_str_c("orders.eu")};
    d.msg = &bare;
    d.replay = true;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_OK);
    cr_expect_eq(env.header_count, 4); /* sub, tag, replay, missed */
    uint64_t missed = 0;
    cr_expect_eq(mp_pubsub_deliver_missed(&env, &missed), MPREG_OK);
    cr_expect_eq(missed, 1234);
}

Test(pubsub_codec, missed_header_is_the_nodes_own) {
    /* A publisher's "missed" never reaches a subscriber as if the node
     * had said it. */
    mp_header hdr[] = {{mp_str_c("missed"), mp_str_c("99")}, {mp_str_c("k"), mp_str_c("v")}};
    mp_pubsub_message msg = {
        .id = idn(3), .topic = mp_str_c("a"), .headers = hdr, .header_count = 2};
    mp_pubsub_delivery d = {.owner = 1, .sub = 5, .tag = mp_str_c("t"), .msg = &msg};
    char sub_text[MP_PUBSUB_SUB_TEXT], missed_text[MP_PUBSUB_SUB_TEXT];
    mp_envelope env;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &env), MPREG_OK);
    cr_expect_null(mp_envelope_header(&env, "missed").ptr);
    cr_expect(mp_str_eq_c(mp_envelope_header(&env, "k"), "v"));
    /* Reading it: absent is 0; a count must be canonical decimal. */
    uint64_t missed = 7;
    cr_expect_eq(mp_pubsub_deliver_missed(&env, &missed), MPREG_OK);
    cr_expect_eq(missed, 0);
    static const struct {
        const char *value;
        mpreg_err err;
        uint64_t want;
    } cases[] = {{"0", MPREG_OK, 0},
                 {"1", MPREG_OK, 1},
                 {"9223372036854775807", MPREG_OK, INT64_MAX},
                 {"9223372036854775808", MPREG_E_INVALID, 0},
                 {"01", MPREG_E_INVALID, 0},
                 {"-1", MPREG_E_INVALID, 0},
                 {"", MPREG_E_INVALID, 0},
                 {"1x", MPREG_E_INVALID, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp_envelope e;
        mp_envelope_init(&e, MP_KIND_DELIVER);
        cr_assert_eq(mp_envelope_add_header(&e, mp_str_c("missed"), mp_str_c(cases[i].value)),
                     MPREG_OK);
        missed = 7;
        cr_expect_eq(mp_pubsub_deliver_missed(&e, &missed), cases[i].err, "%s", cases[i].value);
        cr_expect_eq(missed, cases[i].want, "%s", cases[i].value);
    }
}

Test(pubsub_codec, deliver_parse_errors) {
    static const struct {
        const char *sub; /* NULL: no header */
        const char *tag;
        mpreg_err want;
    } cases[] = {
        {NULL, "t", MPREG_E_MISSING_FIELD},
        {"1", NULL, MPREG_E_MISSING_FIELD},
        {"", "t", MPREG_E_INVALID},
        {"0", "t", MPREG_E_INVALID},
        {"012", "t", MPREG_E_INVALID},
        {"+1", "t", MPREG_E_INVALID},
        {"1a", "t", MPREG_E_INVALID},
        {"9223372036854775808", "t", MPREG_E_INVALID},
        {"99999999999999999999", "t", MPREG_E_INVALID},
        {"9223372036854775807", "t", MPREG_OK},
        {"42", "", MPREG_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp_envelope e;
        mp_envelope_init(&e, MP_KIND_DELIVER);
        if (cases[i].sub) {
            mp_envelope_add_header(&e, mp_str_c("sub"), mp_str_c(cases[i].sub));
        }
        if (cases[i].tag) {
            mp_envelope_add_header(&e, mp_str_c("tag"), mp_str_c(cases[i].tag));
        }
        uint64_t sub;
        mp_str tag;
        cr_expect_eq(mp_pubsub_deliver_parse(&e, &sub, &tag), cases[i].want, "case %zu", i);
    }
}

/* --- property test: the service against a naive reference model ----------------------
 *
 * The model knows nothing of tries, maps or rings: subscriptions are an
 * array in id order, matching is mp_pattern_matches over every pattern,
 * retention is an array of every message ever retained with a "still
 * there" flag, the dedupe window an array of (id, time). Random sequences of
 * subscribe (with groups and replay), unsubscribe, remove_owner,
 * set_accepting, replay, expire and publish (with repeated and zero ids,
 * and with filters: given directly and as "mp-deliver" text) must produce
 * the same deliveries in the same order, the same results and the same
 * counters. */

#define P_SEEDS 120
#define P_STEPS 400
#define P_OWNERS 4
#define P_GROUPS 2
#define P_MAX_SUBS 512
#define P_PAT_LEN 16

typedef struct m_sub {
    uint64_t id;
    uint64_t owner;
    size_t npat;
    char pat[3][P_PAT_LEN];
    int group; /* -1: none */
    mp_pubsub_replay_opts replay;
    bool pending;
    bool live;
    mp_pubsub_sub_stats st;
} m_sub;

typedef struct m_msg {
    char topic[P_PAT_LEN];
    mp_id id;
    uint64_t t;
    size_t plen;
    bool live;
} m_msg;

typedef struct m_seen {
    mp_id id;
    uint64_t at;
} m_seen;

typedef struct model {
    mp_pubsub_config cfg;
    m_sub subs[P_MAX_SUBS];
    size_t nsubs;
    bool accepting[P_OWNERS + 1];
    uint64_t group_last[P_GROUPS];
    m_msg msgs[P_STEPS];
    size_t nmsgs;
    size_t retained_bytes;
    m_seen seen[P_STEPS];
    size_t nseen;
    recorder exp;
    mp_pubsub_stats st;
} model;

static bool m_matches(const m_sub *s, const char *topic) {
    for (size_t i = 0; i < s->npat; i++) {
        if (mp_pattern_matches(s->pat[i], strlen(s->pat[i]), topic, strlen(topic))) {
            return true;
        }
    }
    return false;
}

static void m_emit(model *m, m_sub *s, const m_msg *msg, uint64_t t, bool replay) {
    if (!m->accepting[s->owner]) {
        s->st.dropped++;
        m->st.dropped++;
        return;
    }
    s->st.delivered++;
    m->st.delivered++;
    m->st.replayed += replay;
    mp_pubsub_message pm = {.id = msg->id, .topic = mp_str_c(msg->topic)};
    static const uint8_t body[32] = {0};
    pm.payload = (mp_bytes){body, msg->plen};
    mp_pubsub_delivery d = {s->owner, s->id, mp_str_c("s"), &pm, t, replay};
    on_deliver(&m->exp, &d);
}

static bool m_wants(const m_sub *s, const m_msg *msg) {
    return msg->live && (!s->replay.has_since || msg->t >= s->replay.since_ms) &&
           m_matches(s, msg->topic);
}

static void m_replay(model *m, m_sub *s) {
    s->pending = false;
    size_t start = 0;
    if (s->replay.has_last) {
        uint64_t n = 0;
        start = m->nmsgs;
        for (size_t i = m->nmsgs; i-- > 0 && n < s->replay.last;) {
            if (m_wants(s, &m->msgs[i])) {
                start = i;
                n++;
            }
        }
    }
    for (size_t i = start; i < m->nmsgs; i++) {
        if (m_wants(s, &m->msgs[i])) {
            m_emit(m, s, &m->msgs[i], m->msgs[i].t, true);
        }
    }
}

static void m_seen_expire(model *m, uint64_t now) {
    uint64_t w = m->cfg.dedupe_window_ms;
    while (w && m->nseen && now >= m->seen[0].at && now - m->seen[0].at >= w) {
        memmove(&m->seen[0], &m->seen[1], (m->nseen - 1) * sizeof m->seen[0]);
        m->nseen--;
    }
}

static bool m_seen_has(const model *m, const mp_id *id) {
    for (size_t i = 0; i < m->nseen; i++) {
        if (mp_id_equal(&m->seen[i].id, id)) {
            return true;
        }
    }
    return false;
}

static void m_evict(model *m, m_msg *msg) {
    msg->live = false;
    m->retained_bytes -= strlen(msg->topic) + msg->plen;
    m->st.retained_messages--;
    m->st.evicted++;
}

static void m_retain(model *m, const m_msg *msg) {
    m->msgs[m->nmsgs++] = *msg;
    m->retained_bytes += strlen(msg->topic) + msg->plen;
    m->st.retained_messages++;
    size_t same = 0;
    for (size_t i = 0; i < m->nmsgs; i++) {
        same += m->msgs[i].live && strcmp(m->msgs[i].topic, msg->topic) == 0;
    }
    for (size_t i = 0; same > m->cfg.retain_per_topic; i++) {
        if (m->msgs[i].live && strcmp(m->msgs[i].topic, msg->topic) == 0) {
            m_evict(m, &m->msgs[i]);
            same--;
        }
    }
    for (size_t i = 0; m->retained_bytes > m->cfg.retain_max_bytes; i++) {
        if (m->msgs[i].live) {
            m_evict(m, &m->msgs[i]);
        }
    }
}

/* The round-robin rule, spelled out: among the group's matching members,
 * prefer accepting ones; take the first with an id above the last chosen,
 * else the first. */
static m_sub *m_group_choose(model *m, int g, m_sub **matched, size_t n) {
    for (int pass = 0; pass < 2; pass++) {
        m_sub *first = NULL, *next = NULL;
        for (size_t i = 0; i < n; i++) {
            m_sub *s = matched[i];
            if (s->group != g || (pass == 0 && !m->accepting[s->owner])) {
                continue;
            }
            if (!first) {
                first = s;
            }
            if (!next && s->id > m->group_last[g]) {
                next = s;
            }
        }
        if (first) {
            m_sub *c = next ? next : first;
            m->group_last[g] = c->id;
            return c;
        }
    }
    return NULL;
}

/* What a publish delivers: the ungrouped subscriptions or not, and which
 * groups (the model of mp_pubsub_filter). */
typedef struct m_filter {
    bool plain;
    bool group[P_GROUPS];
} m_filter;

static mp_pubsub_result m_publish(model *m, const m_msg *msg, const m_filter *f) {
    mp_pubsub_result r = {0};
    bool dedupe = (m->cfg.dedupe_max_ids || m->cfg.dedupe_window_ms) && !mp_id_is_zero(&msg->id);
    if (dedupe) {
        m_seen_expire(m, msg->t);
        if (m_seen_has(m, &msg->id)) {
            m->st.duplicates++;
            r.duplicate = true;
            return r;
        }
        if (m->cfg.dedupe_max_ids && m->nseen >= m->cfg.dedupe_max_ids) {
            memmove(&m->seen[0], &m->seen[1], (m->nseen - 1) * sizeof m->seen[0]);
            m->nseen--;
        }
        m->seen[m->nseen++] = (m_seen){msg->id, msg->t};
    }
    for (size_t i = 0; i < m->nsubs; i++) {
        if (m->subs[i].live && m->subs[i].pending) {
            m_replay(m, &m->subs[i]);
        }
    }
    size_t cost = strlen(msg->topic) + msg->plen;
    if (m->cfg.retain_per_topic && cost <= m->cfg.retain_max_bytes) {
        m_retain(m, msg);
        r.retained = true;
    }
    m->st.published++;
    m_sub *matched[P_MAX_SUBS];
    size_t n = 0;
    for (size_t i = 0; i < m->nsubs; i++) {
        if (m->subs[i].live && m_matches(&m->subs[i], msg->topic)) {
            matched[n++] = &m->subs[i];
        }
    }
    m_sub *chosen[P_GROUPS];
    for (int g = 0; g < P_GROUPS; g++) {
        /* A group left out does not choose, so its rotation stays put. */
        chosen[g] = f->group[g] ? m_group_choose(m, g, matched, n) : NULL;
    }
    for (size_t i = 0; i < n; i++) {
        m_sub *s = matched[i];
        if (s->group >= 0 ? chosen[s->group] != s : !f->plain) {
            continue;
        }
        if (m->accepting[s->owner]) {
            r.delivered++;
        } else {
            r.dropped++;
        }
        m_emit(m, s, msg, msg->t, false);
    }
    return r;
}

/* A group that lost its last member starts its rotation afresh. */
static void m_groups_gc(model *m) {
    for (int g = 0; g < P_GROUPS; g++) {
        bool any = false;
        for (size_t i = 0; i < m->nsubs; i++) {
            any |= m->subs[i].live && m->subs[i].group == g;
        }
        if (!any) {
            m->group_last[g] = 0;
        }
    }
}

static void rand_words(mp_xoshiro *x, char *out, bool wildcards) {
    static const char *words[] = {"a", "b", "c", "*", "#"};
    size_t n = 1 + mp_rng_below(&x->rng, 3);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (i) {
            strcat(out, ".");
        }
        strcat(out, words[mp_rng_below(&x->rng, wildcards ? 5 : 3)]);
    }
}

static void compare_deliveries(recorder *got, recorder *want, uint64_t seed, size_t step) {
    cr_assert_eq(got->n, want->n, "seed %" PRIu64 " step %zu: %zu deliveries, model %zu", seed,
                 step, got->n, want->n);
    for (size_t i = 0; i < got->n; i++) {
        const rec_delivery *a = &got->d[i], *b = &want->d[i];
        cr_assert(a->sub == b->sub && a->owner == b->owner && mp_id_equal(&a->id, &b->id) &&
                      a->replay == b->replay && a->published_ms == b->published_ms &&
                      a->payload_len == b->payload_len && strcmp(a->topic, b->topic) == 0 &&
                      strcmp(a->tag, b->tag) == 0,
                  "seed %" PRIu64 " step %zu delivery %zu: sub %" PRIu64 " id %" PRIu64
                  " replay %d, model sub %" PRIu64 " id %" PRIu64 " replay %d",
                  seed, step, i, a->sub, id_num(&a->id), a->replay, b->sub, id_num(&b->id),
                  b->replay);
    }
    got->n = 0;
    want->n = 0;
}

/* The interest hook's view: the live (group, pattern) pairs as "group/pattern"
 * ("/pattern" ungrouped), checked for consistency as events arrive. */
#define P_KEY_LEN (P_PAT_LEN + 8)

typedef struct interest_set {
    char pat[P_MAX_SUBS][P_KEY_LEN];
    size_t n;
} interest_set;

static const char *const p_groups[P_GROUPS] = {"g0", "g1"};

static void p_interest_key(char out[P_KEY_LEN], int group, const char *pattern) {
    snprintf(out, P_KEY_LEN, "%s/%s", group >= 0 ? p_groups[group] : "", pattern);
}

typedef struct prop_ud {
    recorder got;
    interest_set interest;
    mp_pubsub *ps;
} prop_ud;

static bool prop_deliver(void *ud, const mp_pubsub_delivery *d) {
    prop_ud *u = ud;
    on_deliver(&u->got, d);
    /* Every delivery, live or replayed, framed as the envelope path would. */
    expect_frame_as_envelope(u->ps, d, "node-1", "c1");
    return true;
}

static void prop_interest(void *ud, mp_str pattern, mp_str group, bool added) {
    interest_set *set = &((prop_ud *)ud)->interest;
    char p[P_PAT_LEN], g[8], key[P_KEY_LEN];
    copy_str(p, sizeof p, pattern);
    copy_str(g, sizeof g, group);
    snprintf(key, sizeof key, "%s/%s", g, p);
    for (size_t i = 0; i < set->n; i++) {
        if (strcmp(set->pat[i], key) == 0) {
            cr_assert_not(added, "interest %s added twice", key);
            memcpy(set->pat[i], set->pat[--set->n], P_KEY_LEN);
            return;
        }
    }
    cr_assert(added, "interest %s removed but not present", key);
    cr_assert_lt(set->n, P_MAX_SUBS);
    memcpy(set->pat[set->n++], key, P_KEY_LEN);
}

/* Each distinct (group, pattern) of the live subscriptions with its holder
 * count must be what the service lists, and what the hook saw. */
static void compare_interest(mp_pubsub *ps, const model *m, const interest_set *set) {
    interest_set want = {0};
    for (size_t i = 0; i < m->nsubs; i++) {
        const m_sub *s = &m->subs[i];
        for (size_t k = 0; s->live && k < s->npat; k++) {
            char key[P_KEY_LEN];
            p_interest_key(key, s->group, s->pat[k]);
            size_t j = 0;
            while (j < want.n && strcmp(want.pat[j], key) != 0) {
                j++;
            }
            if (j == want.n) {
                memcpy(want.pat[want.n++], key, P_KEY_LEN);
            }
        }
    }
    cr_assert_eq(set->n, want.n);
    cr_assert_eq(mp_pubsub_each_pattern(ps, NULL, NULL), want.n);
    for (size_t j = 0; j < want.n; j++) {
        size_t found = 0;
        for (size_t i = 0; i < set->n; i++) {
            found += strcmp(set->pat[i], want.pat[j]) == 0;
        }
        cr_assert_eq(found, 1, "pattern %s", want.pat[j]);
    }
}

static void check_pattern_count(void *ud, mp_str pattern, mp_str group, size_t subscribers) {
    const model *m = ud;
    char p[P_PAT_LEN], g[8], want[P_KEY_LEN], key[P_KEY_LEN];
    copy_str(p, sizeof p, pattern);
    copy_str(g, sizeof g, group);
    snprintf(want, sizeof want, "%s/%s", g, p);
    size_t n = 0;
    for (size_t i = 0; i < m->nsubs; i++) {
        for (size_t k = 0; m->subs[i].live && k < m->subs[i].npat; k++) {
            p_interest_key(key, m->subs[i].group, m->subs[i].pat[k]);
            n += strcmp(key, want) == 0;
        }
    }
    cr_assert_eq(subscribers, n, "interest %s", want);
}

static void compare_totals(mp_pubsub *ps, const model *m, uint64_t seed) {
    mp_pubsub_stats a = stats(ps);
    const mp_pubsub_stats *b = &m->st;
    cr_assert(a.published == b->published && a.delivered == b->delivered &&
                  a.replayed == b->replayed && a.dropped == b->dropped &&
                  a.duplicates == b->duplicates && a.evicted == b->evicted &&
                  a.retained_messages == b->retained_messages,
              "seed %" PRIu64 ": counters differ", seed);
    cr_assert_eq(a.retained_bytes, m->retained_bytes);
    cr_assert_eq(a.dedupe_ids, m->nseen);
    size_t live = 0;
    for (size_t i = 0; i < m->nsubs; i++) {
        const m_sub *s = &m->subs[i];
        if (!s->live) {
            continue;
        }
        live++;
        mp_pubsub_sub_stats st = sub_stats(ps, s->id);
        cr_assert(st.delivered == s->st.delivered && st.dropped == s->st.dropped,
                  "seed %" PRIu64 " sub %" PRIu64, seed, s->id);
    }
    cr_assert_eq(a.subscriptions, live);
    mp_pubsub_each_pattern(ps, check_pattern_count, (void *)m);
}

static void prop_subscribe(mp_pubsub *ps, model *m, mp_xoshiro *x) {
    m_sub *s = &m->subs[m->nsubs];
    memset(s, 0, sizeof *s);
    s->owner = 1 + mp_rng_below(&x->rng, P_OWNERS);
    size_t n = 1 + mp_rng_below(&x->rng, 3);
    mp_str pats[3];
    for (size_t i = 0; i < n; i++) {
        rand_words(x, s->pat[i], true); /* repeats happen, and must collapse */
        pats[i] = mp_str_c(s->pat[i]);
    }
    mp_pubsub_sub_spec spec = {.owner = s->owner, .tag = mp_str_c("s"), .patterns = pats};
    spec.pattern_count = n;
    s->group = (int)mp_rng_below(&x->rng, 3) - 1;
    if (s->group >= 0) {
        spec.group = mp_str_c(p_groups[s->group]);
    }
    if (mp_rng_below(&x->rng, 3) == 0) {
        s->replay.has_last = mp_rng_below(&x->rng, 2);
        s->replay.last = mp_rng_below(&x->rng, 6);
        s->replay.has_since = !s->replay.has_last || mp_rng_below(&x->rng, 2);
        s->replay.since_ms = mp_rng_below(&x->rng, 2000);
        spec.replay = s->replay;
    }
    uint64_t id;
    cr_assert_eq(mp_pubsub_subscribe(ps, &spec, &id), MPREG_OK);
    /* The model keeps each distinct pattern once, as the service does. */
    char uniq[3][P_PAT_LEN];
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t k = 0; k < u; k++) {
            seen |= strcmp(uniq[k], s->pat[i]) == 0;
        }
        if (!seen) {
            memcpy(uniq[u++], s->pat[i], P_PAT_LEN);
        }
    }
    memcpy(s->pat, uniq, sizeof uniq);
    s->npat = u;
    s->id = id;
    s->live = true;
    s->pending = s->replay.has_last || s->replay.has_since;
    m->nsubs++;
    cr_assert_eq(id, m->nsubs, "ids are 1, 2, 3, ...");
    if (s->pending && mp_rng_below(&x->rng, 2)) {
        m_replay(m, s);
        mp_pubsub_replay(ps, id);
    }
}

static void prop_publish(mp_pubsub *ps, model *m, mp_xoshiro *x, uint64_t now, uint64_t *next_id,
                         uint64_t seed, size_t step) {
    m_msg msg = {.t = now, .live = true};
    rand_words(x, msg.topic, false);
    uint64_t roll = mp_rng_below(&x->rng, 20);
    uint64_t idv = roll == 0                   ? 0
                   : roll <= 3 && *next_id > 1 ? 1 + mp_rng_below(&x->rng, *next_id - 1)
                                               : (*next_id)++;
    msg.id = idn(idv);
    msg.plen = mp_rng_below(&x->rng, 30);
    static const uint8_t body[32] = {0};
    mp_pubsub_message pm = {
        .id = msg.id, .topic = mp_str_c(msg.topic), .payload = {body, msg.plen}};
    mp_pubsub_result got;
    m_filter mf = {.plain = true, .group = {true, true}};
    uint64_t how = mp_rng_below(&x->rng, 4);
    if (how == 0) {
        cr_assert_eq(mp_pubsub_publish(ps, &pm, now, &got), MPREG_OK);
    } else {
        /* A filter: all groups, or some (a name twice, and one nobody has,
         * change nothing), with or without the plain part. */
        mp_str names[P_GROUPS + 2];
        mp_pubsub_filter f = {.plain = mp_rng_below(&x->rng, 2), .groups = names};
        f.all_groups = how == 1;
        for (int g = 0; g < P_GROUPS; g++) {
            mf.group[g] = f.all_groups || mp_rng_below(&x->rng, 2);
            if (!f.all_groups && mf.group[g]) {
                names[f.group_count++] = mp_str_c(p_groups[g]);
            }
        }
        if (f.group_count && mp_rng_below(&x->rng, 2)) {
            names[f.group_count] = names[f.group_count - 1];
            f.group_count++;
        }
        names[f.group_count++] = mp_str_c("g9");
        mf.plain = f.plain;
        if (how == 3 && !f.all_groups) {
            /* The same filter through its text, as another node sends it. */
            char text[64];
            size_t len = 0;
            mpreg_err err = mp_pubsub_filter_encode(&f, text, sizeof text, &len);
            cr_assert_eq(err, MPREG_OK);
            cr_assert_eq(mp_pubsub_publish_encoded(ps, &pm, now, (mp_str){text, len}, &got, NULL),
                         MPREG_OK);
        } else {
            cr_assert_eq(mp_pubsub_publish_filtered(ps, &pm, now, &f, &got), MPREG_OK);
        }
    }
    mp_pubsub_result want = m_publish(m, &msg, &mf);
    cr_assert(got.delivered == want.delivered && got.dropped == want.dropped &&
                  got.duplicate == want.duplicate && got.retained == want.retained,
              "seed %" PRIu64 " step %zu: result differs", seed, step);
}

static void prop_run(uint64_t seed) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, seed);
    model *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    mp_pubsub_config cfg = plain_config();
    static const uint32_t per_topic[] = {0, 1, 3};
    static const size_t budget[] = {40, 120, 1 << 20};
    static const size_t max_ids[] = {0, 4, 16};
    static const uint64_t window[] = {0, 25};
    cfg.retain_per_topic = per_topic[mp_rng_below(&x.rng, 3)];
    cfg.retain_max_bytes = budget[mp_rng_below(&x.rng, 3)];
    cfg.dedupe_max_ids = max_ids[mp_rng_below(&x.rng, 3)];
    cfg.dedupe_window_ms = window[mp_rng_below(&x.rng, 2)];
    m->cfg = cfg;
    for (int o = 0; o <= P_OWNERS; o++) {
        m->accepting[o] = true;
    }
    prop_ud *ud = calloc(1, sizeof *ud);
    cr_assert_not_null(ud);
    mp_pubsub_hooks hooks = {ud, prop_deliver, prop_interest};
    mp_pubsub *ps = mp_pubsub_new(&cfg, &hooks);
    ud->ps = ps;
    uint64_t now = 1000, next_id = 1;

    for (size_t step = 0; step < P_STEPS; step++) {
        uint64_t op = mp_rng_below(&x.rng, 100);
        now += mp_rng_below(&x.rng, 8);
        if (op < 20) {
            if (m->nsubs < P_MAX_SUBS) {
                prop_subscribe(ps, m, &x);
            }
        } else if (op < 30 && m->nsubs) {
            m_sub *s = &m->subs[mp_rng_below(&x.rng, m->nsubs)];
            uint64_t owner =
                mp_rng_below(&x.rng, 5) ? s->owner : 1 + mp_rng_below(&x.rng, P_OWNERS);
            bool ok = s->live && owner == s->owner;
            cr_assert_eq(mp_pubsub_unsubscribe(ps, owner, s->id),
                         ok ? MPREG_OK : MPREG_E_NOT_FOUND);
            s->live = s->live && !ok;
            m_groups_gc(m);
        } else if (op < 33) {
            uint64_t owner = 1 + mp_rng_below(&x.rng, P_OWNERS);
            size_t n = 0;
            for (size_t i = 0; i < m->nsubs; i++) {
                if (m->subs[i].live && m->subs[i].owner == owner) {
                    m->subs[i].live = false;
                    n++;
                }
            }
            m->accepting[owner] = true;
            cr_assert_eq(mp_pubsub_remove_owner(ps, owner), n);
            m_groups_gc(m);
        } else if (op < 40) {
            uint64_t owner = 1 + mp_rng_below(&x.rng, P_OWNERS);
            bool acc = mp_rng_below(&x.rng, 3) != 0;
            cr_assert_eq(mp_pubsub_set_accepting(ps, owner, acc), MPREG_OK);
            m->accepting[owner] = acc;
        } else if (op < 44 && m->nsubs) {
            m_sub *s = &m->subs[mp_rng_below(&x.rng, m->nsubs)];
            if (s->live && s->pending) {
                m_replay(m, s);
            }
            mp_pubsub_replay(ps, s->id);
        } else if (op < 46) {
            mp_pubsub_expire(ps, now);
            m_seen_expire(m, now);
        } else {
            prop_publish(ps, m, &x, now, &next_id, seed, step);
        }
        compare_deliveries(&ud->got, &m->exp, seed, step);
        if (step % 50 == 0 || step == P_STEPS - 1) {
            compare_totals(ps, m, seed);
            compare_interest(ps, m, &ud->interest);
        }
    }
    mp_pubsub_free(ps);
    rec_free(&ud->got);
    rec_free(&m->exp);
    free(ud);
    free(m);
}

Test(pubsub_property, matches_reference_model, .timeout = 120) {
    for (uint64_t seed = 1; seed <= P_SEEDS; seed++) {
        prop_run(seed);
    }
}
