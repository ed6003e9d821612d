/* pubsub.c - the node-local pub/sub service.
 *
 * Records:
 *   - mp_sub: one subscription, in one allocation with its tag and pattern
 *     bytes. Indexed by id in `subs`, linked into its owner's list.
 *   - mp_owner: a connection's accepting flag and subscriptions. It exists
 *     while the owner has subscriptions or is marked not accepting.
 *   - mp_group: a queue group's round-robin cursor (the id of the member it
 *     chose last) and a per-publish scratch pick, stamped with the publish's
 *     epoch so nothing needs clearing between publishes.
 *   - mp_interest: how many subscriptions hold a (pattern, group) pair.
 *   - mp_rtopic / mp_rmsg: retained messages, on one list in publish order
 *     (for the byte budget and for replay) and on one list per topic (for
 *     the per-topic count). The oldest message overall is also the oldest of
 *     its topic, so both evictions take a topic list's head, and the topic
 *     list can be singly linked.
 *   - the dedupe window (mp_dedupe): a ring of (id, first seen) in arrival
 *     order and a compact lookup table over it; see "the dedupe window".
 *   - the match cache: the sorted matches of recently published topics.
 *   - the DELIVER template: the encoding the deliveries of the latest
 *     message share (mp_pubsub_deliver_frame).
 *
 * Matching goes through the trie (matcher.h), which reports each matching
 * subscription once; the matches are then sorted by id, so delivery order
 * does not depend on the trie's shape. The match buffer is kept at least as
 * large as the number of subscriptions, so publishing allocates only what
 * it retains and remembers. Most traffic goes to a few topics, so the
 * sorted matches of the last topics published are cached (as nats-server
 * caches its sublist results): a subscription that comes or goes clears
 * the cache by bumping a generation number. */
#include "services/pubsub.h"

#include "core/frame.h"
#include "core/map.h"
#include "core/matcher.h"
#include "core/topic.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

typedef struct mp_sub mp_sub;
typedef struct mp_owner mp_owner;
typedef struct mp_group mp_group;
typedef struct mp_rtopic mp_rtopic;
typedef struct mp_rmsg mp_rmsg;

struct mp_owner {
    uint64_t id;
    bool accepting;
    size_t sub_count;
    mp_sub *subs; /* doubly linked through mp_sub.owner_prev/next */
};

/* The choice of one publish, built while the sorted matches are scanned:
 * the first matching member after the cursor and the first overall, among
 * accepting members and among all. */
typedef struct mp_group_pick {
    uint64_t epoch;
    mp_sub *accepting_next;
    mp_sub *accepting_first;
    mp_sub *any_next;
    mp_sub *any_first;
    mp_sub *chosen; /* set once per epoch by mp_group_choose */
    bool decided;
    bool excluded; /* the publish's filter leaves the group out */
} mp_group_pick;

struct mp_group {
    uint64_t last; /* id of the member chosen last; 0 before the first */
    size_t members;
    mp_group_pick pick;
    size_t name_len;
    char name[];
};

typedef struct mp_interest {
    size_t subs;
} mp_interest;

struct mp_sub {
    uint64_t id;
    mp_owner *owner;
    void *owner_ud;
    mp_group *group;
    mp_sub *owner_prev;
    mp_sub *owner_next;
    mp_pubsub_replay_opts replay;
    bool replay_pending;
    mp_pubsub_sub_stats stats;
    mp_str tag;
    mp_bytes headers; /* "sub" and "tag" as DELIVER headers, MessagePack */
    size_t pattern_count;
    mp_str patterns[]; /* then the tag, pattern and header bytes */
};

struct mp_rtopic {
    mp_rmsg *head; /* oldest */
    mp_rmsg *tail;
    size_t count;
    size_t topic_len;
    char topic[];
};

struct mp_rmsg {
    mp_rmsg *prev; /* all retained messages, oldest first */
    mp_rmsg *next;
    mp_rmsg *topic_next; /* same topic, oldest first */
    mp_rtopic *topic;
    mp_id id;
    uint64_t published_ms;
    size_t payload_len;
    uint8_t payload[];
};

typedef struct mp_seen {
    mp_id id;
    uint64_t at_ms;
} mp_seen;

/* A dedupe bucket: one 64-byte cache line of 16 words. Word 0 is `over`
 * (MP_DEDUPE_OVER | number bits of the newest id sent on to the next
 * bucket; 0 = none), words 1..15 the slots (tag << seq_bits | number bits;
 * 0 = never used). */
#define MP_DEDUPE_WORDS 16

typedef struct mp_dbucket {
    uint32_t w[MP_DEDUPE_WORDS];
} mp_dbucket;

_Static_assert(sizeof(mp_dbucket) == 64, "a dedupe bucket is one cache line");

/* See "the dedupe window" below. Sequence numbers count every id ever
 * remembered, mod 2^32. */
typedef struct mp_dedupe {
    mp_seen *ring;     /* id number s at ring[s & ring_mask] */
    uint32_t ring_cap; /* a power of two, or 0 before the first id */
    uint32_t head;     /* number of the oldest id */
    uint32_t count;    /* ids remembered */
    mp_dbucket *buckets;
    uint32_t bucket_count; /* a power of two, or 0 */
    uint32_t sweep;        /* the next bucket to tidy */
    uint32_t seq_bits;     /* low bits of a number kept in a slot */
    uint32_t seq_mask;
} mp_dedupe;

/* The subscriptions one publish matched, sorted by id before delivery. */
typedef struct mp_matches {
    mp_sub **subs;
    size_t len;
    size_t cap;
} mp_matches;

/* The match cache: direct-mapped on a hash of the topic. */
#define MP_MCACHE_SLOTS 64
#define MP_MCACHE_MAX_MATCHES 1024 /* larger results are not kept */

typedef struct mp_mcache_entry {
    uint64_t gen; /* the subscriptions' generation it was filled at; 0 = empty */
    size_t topic_len;
    char topic[MP_TOPIC_MAX_LEN];
    size_t len;
    size_t cap;
    mp_sub **subs; /* in ascending id */
} mp_mcache_entry;

/* The DELIVER encoding every delivery of one message shares, but for the
 * payload's bytes (copied from the message itself): the envelope with room
 * for the subscription's headers at split, after the message's own headers
 * (for a replay, "replay" = "1" follows them). */
typedef struct mp_dtmpl {
    uint64_t seq; /* the message it was built for; 0 = none */
    bool replay;
    mp_buf body;
    size_t split;
    /* A message without headers: the next one like it (same topic, replay
     * flag and payload presence) differs only in its id, at id_at, and
     * its payload's head, from tail on. */
    bool plain;
    bool has_payload;
    size_t id_at;
    size_t tail;
    size_t topic_len;
    char topic[MP_TOPIC_MAX_LEN];
    /* The source names last checked, and the ones body holds. */
    size_t node_len;
    size_t cluster_len;
    char node[MP_MAX_NAME_LEN];
    char cluster[MP_MAX_NAME_LEN];
} mp_dtmpl;

struct mp_pubsub {
    mp_pubsub_config cfg;
    mp_pubsub_hooks hooks;
    mp_matcher *matcher;
    mp_map subs;     /* id -> mp_sub */
    mp_map owners;   /* owner id -> mp_owner */
    mp_map groups;   /* name -> mp_group */
    mp_map interest; /* group \0 pattern -> mp_interest */
    mp_map topics;   /* topic -> mp_rtopic */
    mp_rmsg *oldest;
    mp_rmsg *newest;
    size_t retained_messages;
    size_t retained_bytes;
    mp_dedupe seen;
    mp_matches matches;
    mp_mcache_entry *mcache; /* MP_MCACHE_SLOTS, allocated at the first publish */
    mp_mcache_entry *mlast;  /* the entry looked at last */
    uint64_t subs_gen;       /* bumped whenever a subscription comes or goes */
    mp_dtmpl tmpl;
    uint64_t msg_seq; /* messages delivered (live or replayed): mp_pubsub_delivery.seq */
    uint64_t next_sub;
    uint64_t epoch; /* publishes delivered so far: stamps group picks */
    /* The filter of the publish under way (NULL = none): a field rather
     * than a parameter, so that a plain publish, the hot path of a node
     * alone, carries nothing more through its dedupe and retention steps. */
    const mp_pubsub_filter *filter;
    mp_str *filter_groups; /* mp_pubsub_publish_encoded's decoded names */
    size_t filter_cap;
    size_t pending_replays;
    mp_pubsub_stats counters; /* the uint64 counters; sizes are computed */
};

void mp_pubsub_config_default(mp_pubsub_config *cfg) {
    cfg->retain_per_topic = 0;
    cfg->retain_max_bytes = MP_PUBSUB_DEFAULT_RETAIN_BYTES;
    cfg->dedupe_max_ids = MP_PUBSUB_DEFAULT_DEDUPE_IDS;
    cfg->dedupe_window_ms = MP_PUBSUB_DEFAULT_DEDUPE_WINDOW_MS;
}

mp_pubsub *mp_pubsub_new(const mp_pubsub_config *cfg, const mp_pubsub_hooks *hooks) {
    mp_pubsub *ps = calloc(1, sizeof *ps);
    if (!ps) {
        return NULL;
    }
    if (cfg) {
        ps->cfg = *cfg;
    } else {
        mp_pubsub_config_default(&ps->cfg);
    }
    if (hooks) {
        ps->hooks = *hooks;
    }
    ps->matcher = mp_matcher_new();
    if (!ps->matcher) {
        free(ps);
        return NULL;
    }
    mp_map_init(&ps->subs);
    mp_map_init(&ps->owners);
    mp_map_init(&ps->groups);
    mp_map_init(&ps->interest);
    mp_map_init(&ps->topics);
    mp_buf_init(&ps->tmpl.body);
    ps->next_sub = 1;
    ps->subs_gen = 1;
    return ps;
}

static void mp_mcache_free(mp_pubsub *ps) {
    if (ps->mcache) {
        for (size_t i = 0; i < MP_MCACHE_SLOTS; i++) {
            free(ps->mcache[i].subs);
        }
        free(ps->mcache);
    }
}

void mp_pubsub_free(mp_pubsub *ps) {
    if (!ps) {
        return;
    }
    for (mp_rmsg *m = ps->oldest, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    mp_map_free(&ps->subs, free);
    mp_map_free(&ps->owners, free);
    mp_map_free(&ps->groups, free);
    mp_map_free(&ps->interest, free);
    mp_map_free(&ps->topics, free);
    mp_matcher_free(ps->matcher);
    free(ps->seen.ring);
    free(ps->seen.buckets);
    free(ps->matches.subs);
    free(ps->filter_groups);
    mp_mcache_free(ps);
    mp_buf_free(&ps->tmpl.body);
    free(ps);
}

/* --- owners, groups, interest --------------------------------------------- */

static mp_owner *mp_owner_get(const mp_pubsub *ps, uint64_t id) {
    return mp_map_get(&ps->owners, &id, sizeof id);
}

static mp_owner *mp_owner_create(mp_pubsub *ps, uint64_t id) {
    mp_owner *o = calloc(1, sizeof *o);
    if (!o) {
        return NULL;
    }
    o->id = id;
    o->accepting = true;
    if (mp_map_put(&ps->owners, &id, sizeof id, o, NULL) != MPREG_OK) {
        free(o);
        return NULL;
    }
    return o;
}

/* An owner record with nothing to remember is dropped, so that a node
 * serving many short connections does not accumulate them. */
static void mp_owner_maybe_drop(mp_pubsub *ps, mp_owner *o) {
    if (o->sub_count == 0 && o->accepting) {
        mp_map_remove(&ps->owners, &o->id, sizeof o->id);
        free(o);
    }
}

static mp_group *mp_group_get_or_create(mp_pubsub *ps, mp_str name) {
    mp_group *g = mp_map_get(&ps->groups, name.ptr, name.len);
    if (g) {
        return g;
    }
    g = calloc(1, sizeof *g + name.len);
    if (!g) {
        return NULL;
    }
    memcpy(g->name, name.ptr, name.len);
    g->name_len = name.len;
    if (mp_map_put(&ps->groups, name.ptr, name.len, g, NULL) != MPREG_OK) {
        free(g);
        return NULL;
    }
    return g;
}

static void mp_group_maybe_drop(mp_pubsub *ps, mp_group *g) {
    if (g->members == 0) {
        mp_map_remove(&ps->groups, g->name, g->name_len);
        free(g);
    }
}

/* An interest record's key: the group's name (empty when ungrouped), a NUL,
 * the pattern. Names hold no NUL, so the key splits back unambiguously. */
#define MP_INTEREST_KEY_MAX (MP_PUBSUB_MAX_GROUP + 1 + MP_TOPIC_MAX_LEN)

static size_t mp_interest_key(const mp_sub *s, mp_str pattern, char out[MP_INTEREST_KEY_MAX]) {
    size_t g = s->group ? s->group->name_len : 0;
    if (g) {
        memcpy(out, s->group->name, g);
    }
    out[g] = '\0';
    memcpy(out + g + 1, pattern.ptr, pattern.len);
    return g + 1 + pattern.len;
}

/* Splits a key made by mp_interest_key into pattern and group. */
static void mp_interest_key_split(const void *key, size_t klen, mp_str *pattern, mp_str *group) {
    const char *k = key;
    size_t g = strlen(k); /* the NUL is always there */
    *group = (mp_str){k, g};
    *pattern = (mp_str){k + g + 1, klen - g - 1};
}

static void mp_interest_notify(mp_pubsub *ps, const char *key, size_t klen, bool added) {
    if (ps->hooks.on_interest) {
        mp_str pattern, group;
        mp_interest_key_split(key, klen, &pattern, &group);
        ps->hooks.on_interest(ps->hooks.ud, pattern, group, added);
    }
}

/* Makes sure every pattern of s has an interest record in its group. New
 * ones start at zero subscriptions and are counted only when the
 * subscription commits. */
static mpreg_err mp_interest_reserve(mp_pubsub *ps, const mp_sub *s) {
    char key[MP_INTEREST_KEY_MAX];
    for (size_t i = 0; i < s->pattern_count; i++) {
        size_t klen = mp_interest_key(s, s->patterns[i], key);
        if (mp_map_contains(&ps->interest, key, klen)) {
            continue;
        }
        mp_interest *in = calloc(1, sizeof *in);
        if (!in) {
            return MPREG_E_NOMEM;
        }
        if (mp_map_put(&ps->interest, key, klen, in, NULL) != MPREG_OK) {
            free(in);
            return MPREG_E_NOMEM;
        }
    }
    return MPREG_OK;
}

/* Undoes mp_interest_reserve: drops the records nobody holds. */
static void mp_interest_unreserve(mp_pubsub *ps, const mp_sub *s) {
    char key[MP_INTEREST_KEY_MAX];
    for (size_t i = 0; i < s->pattern_count; i++) {
        size_t klen = mp_interest_key(s, s->patterns[i], key);
        mp_interest *in = mp_map_get(&ps->interest, key, klen);
        if (in && in->subs == 0) {
            free(mp_map_remove(&ps->interest, key, klen));
        }
    }
}

static void mp_interest_hold(mp_pubsub *ps, const mp_sub *s) {
    char key[MP_INTEREST_KEY_MAX];
    for (size_t i = 0; i < s->pattern_count; i++) {
        size_t klen = mp_interest_key(s, s->patterns[i], key);
        mp_interest *in = mp_map_get(&ps->interest, key, klen);
        if (++in->subs == 1) {
            mp_interest_notify(ps, key, klen, true);
        }
    }
}

static void mp_interest_release(mp_pubsub *ps, const mp_sub *s) {
    char key[MP_INTEREST_KEY_MAX];
    for (size_t i = 0; i < s->pattern_count; i++) {
        size_t klen = mp_interest_key(s, s->patterns[i], key);
        mp_interest *in = mp_map_get(&ps->interest, key, klen);
        if (--in->subs == 0) {
            free(mp_map_remove(&ps->interest, key, klen));
            mp_interest_notify(ps, key, klen, false);
        }
    }
}

/* --- subscribing ------------------------------------------------------------ */

/* The rules shared by mp_pubsub_subscribe and the SUBSCRIBE codec. */
static mpreg_err mp_name_check(mp_str s, size_t max, const char *too_long, const char *bad,
                               const char **why) {
    if (s.len > max) {
        *why = too_long;
        return MPREG_E_TOO_LARGE;
    }
    if (s.len > 0 && (!s.ptr || memchr(s.ptr, '\0', s.len) || !mpreg_utf8_valid(s.ptr, s.len))) {
        *why = bad;
        return MPREG_E_INVALID;
    }
    return MPREG_OK;
}

mpreg_err mp_pubsub_parts_check(mp_str tag, mp_str group, const mp_str *patterns, size_t count,
                                const char **why) {
    if (count == 0 || !patterns) {
        *why = "patterns: empty";
        return MPREG_E_INVALID;
    }
    if (count > MP_PUBSUB_MAX_PATTERNS) {
        *why = "patterns: more than 64";
        return MPREG_E_TOO_LARGE;
    }
    mpreg_err err = mp_name_check(tag, MP_PUBSUB_MAX_TAG, "tag: too long",
                                  "tag: NUL byte or invalid UTF-8", why);
    if (!err) {
        err = mp_name_check(group, MP_PUBSUB_MAX_GROUP, "group: too long",
                            "group: NUL byte or invalid UTF-8", why);
    }
    for (size_t i = 0; i < count && !err; i++) {
        err = mp_pattern_validate(patterns[i].ptr, patterns[i].len, why);
    }
    return err;
}

static bool mp_seen_before(const mp_str *patterns, size_t i) {
    for (size_t j = 0; j < i; j++) {
        if (mp_str_eq(patterns[j], patterns[i])) {
            return true;
        }
    }
    return false;
}

static size_t mp_u64_text(uint64_t v, char *out);

/* A MessagePack str of at most 255 bytes, as msgpack-c packs it (fixstr,
 * else str8); returns the end. */
static uint8_t *mp_put_small_str(uint8_t *p, const char *s, size_t len) {
    if (len < 32) {
        *p++ = (uint8_t)(0xa0u | len);
    } else {
        *p++ = 0xd9;
        *p++ = (uint8_t)len;
    }
    if (len) {
        memcpy(p, s, len);
    }
    return p + len;
}

/* The most the "sub" and "tag" headers take: two keys of 3 bytes, an id of
 * up to 20 digits and a tag, each behind a 1- or 2-byte str head. */
#define MP_SUB_HEADERS_MAX (2 * (1 + 3) + (1 + 20) + (2 + MP_PUBSUB_MAX_TAG))

/* "sub" = id in decimal, "tag" = tag: the entries every DELIVER to the
 * subscription ends its headers with. Returns their length. */
static size_t mp_sub_headers_encode(uint64_t id, mp_str tag, uint8_t *out) {
    char text[MP_PUBSUB_SUB_TEXT];
    size_t n = mp_u64_text(id, text);
    uint8_t *p = mp_put_small_str(out, "sub", 3);
    p = mp_put_small_str(p, text, n);
    p = mp_put_small_str(p, "tag", 3);
    p = mp_put_small_str(p, tag.ptr, tag.len);
    return (size_t)(p - out);
}

/* One allocation: the record, the pattern views, then the tag and pattern
 * bytes they view and the encoded DELIVER headers. Identical patterns are
 * kept once. */
static mp_sub *mp_sub_alloc(const mp_pubsub_sub_spec *spec, uint64_t id) {
    size_t unique = 0, bytes = spec->tag.len + MP_SUB_HEADERS_MAX;
    for (size_t i = 0; i < spec->pattern_count; i++) {
        if (!mp_seen_before(spec->patterns, i)) {
            unique++;
            bytes += spec->patterns[i].len;
        }
    }
    mp_sub *s = calloc(1, sizeof *s + unique * sizeof(mp_str) + bytes);
    if (!s) {
        return NULL;
    }
    char *p = (char *)&s->patterns[unique];
    s->id = id;
    s->owner_ud = spec->owner_ud;
    s->replay = spec->replay;
    if (spec->tag.len) {
        memcpy(p, spec->tag.ptr, spec->tag.len);
    }
    s->tag = (mp_str){p, spec->tag.len};
    p += spec->tag.len;
    for (size_t i = 0; i < spec->pattern_count; i++) {
        if (mp_seen_before(spec->patterns, i)) {
            continue;
        }
        memcpy(p, spec->patterns[i].ptr, spec->patterns[i].len);
        s->patterns[s->pattern_count++] = (mp_str){p, spec->patterns[i].len};
        p += spec->patterns[i].len;
    }
    s->headers = (mp_bytes){(const uint8_t *)p, mp_sub_headers_encode(id, s->tag, (uint8_t *)p)};
    return s;
}

/* The match buffer holds one slot per subscription, so matching never
 * allocates. */
static mpreg_err mp_matches_reserve(mp_matches *m, size_t n) {
    if (n <= m->cap) {
        return MPREG_OK;
    }
    size_t cap = m->cap ? m->cap : 16;
    while (cap < n) {
        cap *= 2;
    }
    mp_sub **subs = realloc(m->subs, cap * sizeof *subs);
    if (!subs) {
        return MPREG_E_NOMEM;
    }
    m->subs = subs;
    m->cap = cap;
    return MPREG_OK;
}

/* Everything that can fail, in an order that mp_sub_attach_undo can undo. */
static mpreg_err mp_sub_attach(mp_pubsub *ps, mp_sub *s, uint64_t owner, mp_str group) {
    if (mp_matches_reserve(&ps->matches, mp_map_count(&ps->subs) + 1)) {
        return MPREG_E_NOMEM;
    }
    s->owner = mp_owner_get(ps, owner);
    if (!s->owner && !(s->owner = mp_owner_create(ps, owner))) {
        return MPREG_E_NOMEM;
    }
    if (group.len && !(s->group = mp_group_get_or_create(ps, group))) {
        return MPREG_E_NOMEM;
    }
    if (mp_interest_reserve(ps, s)) {
        return MPREG_E_NOMEM;
    }
    for (size_t i = 0; i < s->pattern_count; i++) {
        mpreg_err err = mp_matcher_add(ps->matcher, s->id, s->patterns[i].ptr, s->patterns[i].len);
        if (err) {
            return err;
        }
    }
    return mp_map_put(&ps->subs, &s->id, sizeof s->id, s, NULL);
}

static void mp_sub_attach_undo(mp_pubsub *ps, mp_sub *s) {
    mp_matcher_remove_sub(ps->matcher, s->id);
    mp_interest_unreserve(ps, s);
    if (s->group) {
        mp_group_maybe_drop(ps, s->group);
    }
    if (s->owner) {
        mp_owner_maybe_drop(ps, s->owner);
    }
}

/* The part that cannot fail: links, counts and notifications. */
static void mp_sub_commit(mp_pubsub *ps, mp_sub *s) {
    mp_owner *o = s->owner;
    ps->subs_gen++; /* cached matches may miss it */
    s->owner_next = o->subs;
    if (o->subs) {
        o->subs->owner_prev = s;
    }
    o->subs = s;
    o->sub_count++;
    if (s->group) {
        s->group->members++;
    }
    if (s->replay.has_last || s->replay.has_since) {
        s->replay_pending = true;
        ps->pending_replays++;
    }
    mp_interest_hold(ps, s);
}

mpreg_err mp_pubsub_subscribe(mp_pubsub *ps, const mp_pubsub_sub_spec *spec, uint64_t *sub) {
    const char *why = NULL;
    mpreg_err err =
        mp_pubsub_parts_check(spec->tag, spec->group, spec->patterns, spec->pattern_count, &why);
    if (err) {
        return err;
    }
    mp_sub *s = mp_sub_alloc(spec, ps->next_sub);
    if (!s) {
        return MPREG_E_NOMEM;
    }
    err = mp_sub_attach(ps, s, spec->owner, spec->group);
    if (err) {
        mp_sub_attach_undo(ps, s);
        free(s);
        return err;
    }
    ps->next_sub++;
    mp_sub_commit(ps, s);
    *sub = s->id;
    return MPREG_OK;
}

/* Detaches and frees s; its owner record is the caller's business. */
static void mp_sub_remove(mp_pubsub *ps, mp_sub *s) {
    ps->subs_gen++; /* cached matches may point at it */
    mp_map_remove(&ps->subs, &s->id, sizeof s->id);
    mp_matcher_remove_sub(ps->matcher, s->id);
    mp_owner *o = s->owner;
    if (s->owner_prev) {
        s->owner_prev->owner_next = s->owner_next;
    } else {
        o->subs = s->owner_next;
    }
    if (s->owner_next) {
        s->owner_next->owner_prev = s->owner_prev;
    }
    o->sub_count--;
    if (s->replay_pending) {
        ps->pending_replays--;
    }
    mp_interest_release(ps, s); /* before the group goes: its key names the group */
    if (s->group) {
        s->group->members--;
        mp_group_maybe_drop(ps, s->group);
    }
    free(s);
}

mpreg_err mp_pubsub_unsubscribe(mp_pubsub *ps, uint64_t owner, uint64_t sub) {
    mp_sub *s = mp_map_get(&ps->subs, &sub, sizeof sub);
    if (!s || s->owner->id != owner) {
        return MPREG_E_NOT_FOUND;
    }
    mp_owner *o = s->owner;
    mp_sub_remove(ps, s);
    mp_owner_maybe_drop(ps, o);
    return MPREG_OK;
}

size_t mp_pubsub_remove_owner(mp_pubsub *ps, uint64_t owner) {
    mp_owner *o = mp_map_remove(&ps->owners, &owner, sizeof owner);
    if (!o) {
        return 0;
    }
    size_t n = 0;
    while (o->subs) {
        mp_sub_remove(ps, o->subs);
        n++;
    }
    free(o);
    return n;
}

mpreg_err mp_pubsub_set_accepting(mp_pubsub *ps, uint64_t owner, bool accepting) {
    mp_owner *o = mp_owner_get(ps, owner);
    if (!o) {
        if (accepting) {
            return MPREG_OK; /* the default: nothing to remember */
        }
        if (!(o = mp_owner_create(ps, owner))) {
            return MPREG_E_NOMEM;
        }
    }
    o->accepting = accepting;
    mp_owner_maybe_drop(ps, o);
    return MPREG_OK;
}

bool mp_pubsub_is_accepting(const mp_pubsub *ps, uint64_t owner) {
    const mp_owner *o = mp_owner_get(ps, owner);
    return o ? o->accepting : true;
}

/* --- delivering ------------------------------------------------------------- */

static bool mp_drop(mp_pubsub *ps, mp_sub *s) {
    s->stats.dropped++;
    s->stats.missed++;
    ps->counters.dropped++;
    return false;
}

/* Hands one message to s, or drops it when s's owner is not accepting or
 * the hook could not make the delivery. Returns whether it was delivered.
 * What s missed since its last delivery goes with the next one. */
static bool mp_emit(mp_pubsub *ps, mp_sub *s, const mp_pubsub_message *msg, uint64_t published_ms,
                    bool replay, uint64_t seq) {
    if (!s->owner->accepting) {
        return mp_drop(ps, s);
    }
    if (ps->hooks.deliver) {
        mp_pubsub_delivery d = {
            .owner = s->owner->id,
            .owner_ud = s->owner_ud,
            .sub = s->id,
            .tag = s->tag,
            .msg = msg,
            .published_ms = published_ms,
            .replay = replay,
            .seq = seq,
            .sub_headers = s->headers,
            .missed = s->stats.missed,
        };
        if (!ps->hooks.deliver(ps->hooks.ud, &d)) {
            return mp_drop(ps, s);
        }
    }
    s->stats.missed = 0;
    s->stats.delivered++;
    ps->counters.delivered++;
    if (replay) {
        ps->counters.replayed++;
    }
    return true;
}

static bool mp_sub_matches(const mp_sub *s, const char *topic, size_t len) {
    for (size_t i = 0; i < s->pattern_count; i++) {
        if (mp_pattern_matches(s->patterns[i].ptr, s->patterns[i].len, topic, len)) {
            return true;
        }
    }
    return false;
}

static bool mp_replay_wants(const mp_sub *s, const mp_rmsg *m) {
    if (s->replay.has_since && m->published_ms < s->replay.since_ms) {
        return false;
    }
    return mp_sub_matches(s, m->topic->topic, m->topic->topic_len);
}

static size_t mp_replay_run(mp_pubsub *ps, mp_sub *s) {
    s->replay_pending = false;
    ps->pending_replays--;
    mp_rmsg *start = ps->oldest;
    if (s->replay.has_last) {
        /* Walk back to the last-th wanted message from the newest. */
        uint64_t n = 0;
        start = NULL;
        for (mp_rmsg *m = ps->newest; m && n < s->replay.last; m = m->prev) {
            if (mp_replay_wants(s, m)) {
                start = m;
                n++;
            }
        }
    }
    size_t delivered = 0;
    for (mp_rmsg *m = start; m; m = m->next) {
        if (!mp_replay_wants(s, m)) {
            continue;
        }
        mp_pubsub_message msg = {
            .id = m->id,
            .topic = {m->topic->topic, m->topic->topic_len},
            .payload = {m->payload, m->payload_len},
        };
        delivered += mp_emit(ps, s, &msg, m->published_ms, true, ++ps->msg_seq);
    }
    return delivered;
}

size_t mp_pubsub_replay(mp_pubsub *ps, uint64_t sub) {
    mp_sub *s = mp_map_get(&ps->subs, &sub, sizeof sub);
    return s && s->replay_pending ? mp_replay_run(ps, s) : 0;
}

static int mp_sub_cmp(const void *a, const void *b) {
    uint64_t x = (*(mp_sub *const *)a)->id, y = (*(mp_sub *const *)b)->id;
    return (x > y) - (x < y);
}

/* Oldest subscription first. (qsort may not be given the NULL buffer of a
 * service that never had a subscription.) */
static void mp_matches_sort(mp_matches *m) {
    if (m->len > 1) {
        qsort(m->subs, m->len, sizeof *m->subs, mp_sub_cmp);
    }
}

/* Runs every pending replay, oldest subscription first, so that no live
 * message overtakes one. */
static void mp_replay_flush(mp_pubsub *ps) {
    if (ps->pending_replays == 0) {
        return;
    }
    mp_matches *m = &ps->matches;
    m->len = 0;
    void *val;
    for (size_t it = 0; mp_map_next(&ps->subs, &it, NULL, NULL, &val);) {
        mp_sub *s = val;
        if (s->replay_pending) {
            m->subs[m->len++] = s;
        }
    }
    mp_matches_sort(m);
    for (size_t i = 0; i < m->len; i++) {
        mp_replay_run(ps, m->subs[i]);
    }
    m->len = 0;
}

static void mp_on_match(void *ud, uint64_t id) {
    mp_pubsub *ps = ud;
    mp_sub *s = mp_map_get(&ps->subs, &id, sizeof id);
    if (s && ps->matches.len < ps->matches.cap) {
        ps->matches.subs[ps->matches.len++] = s;
    }
}

static bool mp_filter_wants(const mp_pubsub_filter *f, const mp_group *g) {
    if (f->all_groups) {
        return true;
    }
    for (size_t i = 0; i < f->group_count; i++) {
        if (mp_str_eq(f->groups[i], (mp_str){g->name, g->name_len})) {
            return true;
        }
    }
    return false;
}

/* Called with the matches in ascending id: records, for s's group, the
 * first candidates after the cursor and overall, unless the filter f (NULL
 * = none) leaves the group out. */
static void mp_group_consider(mp_group *g, mp_sub *s, uint64_t epoch, const mp_pubsub_filter *f) {
    mp_group_pick *p = &g->pick;
    if (p->epoch != epoch) {
        *p = (mp_group_pick){.epoch = epoch, .excluded = f && !mp_filter_wants(f, g)};
    }
    if (p->excluded) {
        return;
    }
    bool after = s->id > g->last;
    if (!p->any_first) {
        p->any_first = s;
    }
    if (after && !p->any_next) {
        p->any_next = s;
    }
    if (s->owner->accepting) {
        if (!p->accepting_first) {
            p->accepting_first = s;
        }
        if (after && !p->accepting_next) {
            p->accepting_next = s;
        }
    }
}

/* The round-robin rule of pubsub.h, decided once per publish. */
static mp_sub *mp_group_choose(mp_group *g) {
    mp_group_pick *p = &g->pick;
    if (!p->decided) {
        p->chosen = p->accepting_next    ? p->accepting_next
                    : p->accepting_first ? p->accepting_first
                    : p->any_next        ? p->any_next
                                         : p->any_first;
        p->decided = true;
        g->last = p->chosen->id;
    }
    return p->chosen;
}

/* --- the match cache ----------------------------------------------------------- */

/* Equality of short byte strings (topics, names), eight bytes per step and
 * inlined: a libc call per compare was a visible share of a delivery. */
static inline bool mp_same_bytes(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    uint64_t u, v, diff = 0;
    for (; n >= 8; x += 8, y += 8, n -= 8) {
        memcpy(&u, x, 8);
        memcpy(&v, y, 8);
        diff |= u ^ v;
    }
    for (; n; x++, y++, n--) {
        diff |= (uint64_t)(*x ^ *y);
    }
    return diff == 0;
}

/* Topics are short: eight bytes per step. */
static uint64_t mp_topic_hash(const char *t, size_t len) {
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ len, w;
    for (; len >= 8; t += 8, len -= 8) {
        memcpy(&w, t, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
    }
    w = 0;
    if (len) {
        memcpy(&w, t, len);
    }
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 32);
}

/* Keeps the sorted matches in m for topic, when they are small enough;
 * failing to (no memory) only costs the next publish a match. */
static void mp_mcache_fill(mp_pubsub *ps, mp_mcache_entry *e, mp_str topic, const mp_matches *m) {
    if (m->len > MP_MCACHE_MAX_MATCHES || topic.len > MP_TOPIC_MAX_LEN) {
        return;
    }
    if (m->len > e->cap) {
        size_t cap = e->cap ? e->cap : 4;
        while (cap < m->len) {
            cap *= 2;
        }
        mp_sub **subs = realloc(e->subs, cap * sizeof *subs);
        if (!subs) {
            e->gen = 0;
            return;
        }
        e->subs = subs;
        e->cap = cap;
    }
    if (m->len) {
        memcpy(e->subs, m->subs, m->len * sizeof *m->subs);
    }
    e->len = m->len;
    e->topic_len = topic.len;
    memcpy(e->topic, topic.ptr, topic.len);
    e->gen = ps->subs_gen;
}

/* The subscriptions matching topic, oldest first, from the cache or the
 * trie. The list is valid until the next match or subscription change. */
static mp_sub *const *mp_match(mp_pubsub *ps, mp_str topic, size_t *len) {
    mp_mcache_entry *e = ps->mlast; /* asked twice in a row: the node, then publish */
    if (e && e->gen == ps->subs_gen && e->topic_len == topic.len &&
        mp_same_bytes(e->topic, topic.ptr, topic.len)) {
        *len = e->len;
        return e->subs;
    }
    e = NULL;
    if (!ps->mcache) {
        ps->mcache = calloc(MP_MCACHE_SLOTS, sizeof *ps->mcache);
    }
    if (ps->mcache) {
        e = &ps->mcache[mp_topic_hash(topic.ptr, topic.len) & (MP_MCACHE_SLOTS - 1)];
        ps->mlast = e;
        if (e->gen == ps->subs_gen && e->topic_len == topic.len &&
            mp_same_bytes(e->topic, topic.ptr, topic.len)) {
            *len = e->len;
            return e->subs;
        }
    }
    mp_matches *m = &ps->matches;
    m->len = 0;
    mp_matcher_match(ps->matcher, topic.ptr, topic.len, mp_on_match, ps);
    mp_matches_sort(m);
    if (e) {
        mp_mcache_fill(ps, e, topic, m);
    }
    *len = m->len;
    return m->subs;
}

bool mp_pubsub_matches(mp_pubsub *ps, mp_str topic) {
    size_t len = 0;
    if (topic.len == 0 || !topic.ptr) {
        return false;
    }
    mp_match(ps, topic, &len);
    return len > 0;
}

/* Delivers msg to its matching subscriptions, or to the parts of them the
 * publish's filter names. */
static void mp_deliver_live(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                            mp_pubsub_result *r) {
    const mp_pubsub_filter *f = ps->filter;
    size_t len = 0;
    mp_sub *const *subs = mp_match(ps, msg->topic, &len);
    uint64_t epoch = ++ps->epoch;
    uint64_t seq = ++ps->msg_seq;
    for (size_t i = 0; i < len; i++) {
        if (subs[i]->group) {
            mp_group_consider(subs[i]->group, subs[i], epoch, f);
        }
    }
    for (size_t i = 0; i < len; i++) {
        mp_sub *s = subs[i];
        if (s->group ? s->group->pick.excluded || mp_group_choose(s->group) != s : f && !f->plain) {
            continue;
        }
        if (mp_emit(ps, s, msg, now_ms, false, seq)) {
            r->delivered++;
        } else {
            r->dropped++;
        }
    }
    ps->matches.len = 0;
}

/* --- retention -------------------------------------------------------------- */

static size_t mp_rmsg_cost(const mp_rmsg *m) {
    return m->topic->topic_len + m->payload_len;
}

/* Allocates the retained copy of msg and, if needed, its topic record (with
 * count 0 until mp_retain_commit). */
static mpreg_err mp_retain_prepare(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                                   mp_rmsg **out) {
    mp_rtopic *t = mp_map_get(&ps->topics, msg->topic.ptr, msg->topic.len);
    if (!t) {
        t = calloc(1, sizeof *t + msg->topic.len);
        if (!t) {
            return MPREG_E_NOMEM;
        }
        memcpy(t->topic, msg->topic.ptr, msg->topic.len);
        t->topic_len = msg->topic.len;
        if (mp_map_put(&ps->topics, msg->topic.ptr, msg->topic.len, t, NULL) != MPREG_OK) {
            free(t);
            return MPREG_E_NOMEM;
        }
    }
    mp_rmsg *m = calloc(1, sizeof *m + msg->payload.len);
    if (!m) {
        if (t->count == 0) {
            free(mp_map_remove(&ps->topics, t->topic, t->topic_len));
        }
        return MPREG_E_NOMEM;
    }
    m->topic = t;
    m->id = msg->id;
    m->published_ms = now_ms;
    m->payload_len = msg->payload.len;
    if (msg->payload.len) {
        memcpy(m->payload, msg->payload.ptr, msg->payload.len);
    }
    *out = m;
    return MPREG_OK;
}

static void mp_retain_abort(mp_pubsub *ps, mp_rmsg *m) {
    mp_rtopic *t = m->topic;
    free(m);
    if (t->count == 0) {
        free(mp_map_remove(&ps->topics, t->topic, t->topic_len));
    }
}

/* Removes m, which is the oldest of its topic. */
static void mp_retain_evict(mp_pubsub *ps, mp_rmsg *m) {
    mp_rtopic *t = m->topic;
    if (m->prev) {
        m->prev->next = m->next;
    } else {
        ps->oldest = m->next;
    }
    if (m->next) {
        m->next->prev = m->prev;
    } else {
        ps->newest = m->prev;
    }
    t->head = m->topic_next;
    if (!t->head) {
        t->tail = NULL;
    }
    t->count--;
    ps->retained_messages--;
    ps->retained_bytes -= mp_rmsg_cost(m);
    ps->counters.evicted++;
    free(m);
    if (t->count == 0) {
        free(mp_map_remove(&ps->topics, t->topic, t->topic_len));
    }
}

static void mp_retain_commit(mp_pubsub *ps, mp_rmsg *m) {
    mp_rtopic *t = m->topic;
    m->prev = ps->newest;
    if (ps->newest) {
        ps->newest->next = m;
    } else {
        ps->oldest = m;
    }
    ps->newest = m;
    if (t->tail) {
        t->tail->topic_next = m;
    } else {
        t->head = m;
    }
    t->tail = m;
    t->count++;
    ps->retained_messages++;
    ps->retained_bytes += mp_rmsg_cost(m);
    if (t->count > ps->cfg.retain_per_topic) {
        mp_retain_evict(ps, t->head);
    }
    /* m itself fits the budget (mp_pubsub_publish checked), so this stops
     * before reaching it. */
    while (ps->retained_bytes > ps->cfg.retain_max_bytes) {
        mp_retain_evict(ps, ps->oldest);
    }
}

/* --- the dedupe window ------------------------------------------------------- */

/* The ids of the window are kept in a ring, oldest first: the id numbered s
 * (ids are numbered as they are remembered, mod 2^32) at ring[s & (cap-1)].
 * A table finds them by hash. Every publish looks at it in a random place,
 * so it is made small, and each publish touches it once:
 *
 *   - A bucket is one cache line: a header word and 15 slots of 32 bits. A
 *     slot holds a tag (high bits of the id's hash) above the low seq_bits
 *     bits of the id's number. An id has a home bucket (low bits of the
 *     hash); a lookup reads that line and, rarely, the next.
 *   - Nothing is ever deleted from it. Whether a slot is live is read off its
 *     number bits against the ring's head and count (the window only ever
 *     forgets its oldest ids), so forgetting costs nothing: no second random
 *     line per publish for the id the window lets go. A slot that is not live
 *     is free for the next id homed there.
 *   - A tag match is confirmed against the full id in the ring; the tag only
 *     spares that access. So the set is exact, whatever the tag's width.
 *   - A bucket whose slots are all live sends a new id on to the next, and
 *     keeps in `over` the number of the newest it sent on: a lookup goes on to
 *     the next bucket only while that id is live (those sent on before it are
 *     older, so they are gone when it is).
 *
 * seq_bits is log2(ring capacity) + 3: live numbers are at most an eighth of
 * that space, so a slot left behind by the window reads stale until 7 ring
 * capacities of ids later. Before then a sweep, one bucket every few new
 * ids, has come by and renumbered it to just behind the head (and cleared a
 * stale `over`), so a stale slot never reads live again. The table has a
 * bucket per 8 remembered ids at least (MP_DEDUPE_LOAD), 1 MiB for the
 * default 100 000, where it was 4 MiB of 16-byte slots and two random lines
 * per publish before. */

#define MP_DEDUPE_OVER 0x80000000u
/* New ids per bucket swept. A table has fewer than ring capacity / 4
 * buckets (MP_DEDUPE_LOAD is 8), so the sweep comes round every 2 ring
 * capacities, well within the 7 a stale slot has. */
#define MP_DEDUPE_SWEEP_EVERY 8u
#define MP_DEDUPE_LOAD 8u             /* live ids per bucket, at most */
#define MP_DEDUPE_MIN_RING 64u        /* first ring capacity */
#define MP_DEDUPE_MAX_RING (1u << 28) /* seq_bits <= 31, below MP_DEDUPE_OVER */

static inline uint64_t mp_fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

static inline uint64_t mp_dedupe_hash(const mp_id *id) {
    uint64_t a, b;
    memcpy(&a, id->bytes, 8);
    memcpy(&b, id->bytes + 8, 8);
    return mp_fmix64(b ^ (a * 0x9e3779b97f4a7c15ULL));
}

/* Inline word compare: it runs in the lookup of every publish. */
static inline bool mp_id_same(const mp_id *x, const mp_id *y) {
    uint64_t a, b, c, d;
    memcpy(&a, x->bytes, 8);
    memcpy(&b, x->bytes + 8, 8);
    memcpy(&c, y->bytes, 8);
    memcpy(&d, y->bytes + 8, 8);
    return ((a ^ c) | (b ^ d)) == 0;
}

/* The slot for an id of hash h and number seq; never 0 (the tag is not). */
static inline uint32_t mp_dedupe_slot(const mp_dedupe *d, uint64_t h, uint32_t seq) {
    uint32_t tag = (uint32_t)(h >> 32) >> d->seq_bits;
    tag += tag == 0;
    return tag << d->seq_bits | (seq & d->seq_mask);
}

/* Whether a slot's (or an `over`'s) number bits name a remembered id. */
static inline bool mp_dedupe_live(const mp_dedupe *d, uint32_t v) {
    return ((v - d->head) & d->seq_mask) < d->count;
}

static inline mp_dbucket *mp_dedupe_home(const mp_dedupe *d, uint64_t h) {
    return &d->buckets[(uint32_t)h & (d->bucket_count - 1)];
}

/* Two scans of a bucket, one bit per word, word 0 (`over`) never set: the
 * slots whose tag is want's (want: a tag in place, number bits 0), and the
 * free slots (never used, or not live). With SSE2 a bucket is four
 * compares: scanning 15 slots one by one was most of a lookup's time once
 * the buckets filled with stale slots. */
#if defined(__SSE2__)
#include <emmintrin.h>

static inline uint32_t mp_dedupe_tag_hits(const mp_dedupe *d, const mp_dbucket *k, uint32_t want) {
    const __m128i *p = (const __m128i *)(const void *)k->w;
    __m128i mask = _mm_set1_epi32((int)~d->seq_mask), wv = _mm_set1_epi32((int)want);
    uint32_t bits = 0;
    for (int i = 0; i < MP_DEDUPE_WORDS / 4; i++) {
        __m128i eq = _mm_cmpeq_epi32(_mm_and_si128(_mm_load_si128(p + i), mask), wv);
        bits |= (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(eq)) << (4 * i);
    }
    return bits & ~1u;
}

static inline uint32_t mp_dedupe_free(const mp_dedupe *d, const mp_dbucket *k) {
    const __m128i *p = (const __m128i *)(const void *)k->w;
    __m128i head = _mm_set1_epi32((int)d->head), mask = _mm_set1_epi32((int)d->seq_mask);
    __m128i count = _mm_set1_epi32((int)d->count), zero = _mm_setzero_si128();
    uint32_t bits = 0;
    for (int i = 0; i < MP_DEDUPE_WORDS / 4; i++) {
        __m128i v = _mm_load_si128(p + i);
        /* Distances are below 2^31 and count at most 2^28: a signed
         * compare does. */
        __m128i live = _mm_cmplt_epi32(_mm_and_si128(_mm_sub_epi32(v, head), mask), count);
        __m128i used = _mm_andnot_si128(_mm_cmpeq_epi32(v, zero), live);
        bits |= (uint32_t)(~_mm_movemask_ps(_mm_castsi128_ps(used)) & 0xf) << (4 * i);
    }
    return bits & ~1u;
}
#else
static inline uint32_t mp_dedupe_tag_hits(const mp_dedupe *d, const mp_dbucket *k, uint32_t want) {
    uint32_t bits = 0;
    for (int i = 1; i < MP_DEDUPE_WORDS; i++) {
        bits |= (uint32_t)((k->w[i] & ~d->seq_mask) == want) << i;
    }
    return bits;
}

static inline uint32_t mp_dedupe_free(const mp_dedupe *d, const mp_dbucket *k) {
    uint32_t bits = 0;
    for (int i = 1; i < MP_DEDUPE_WORDS; i++) {
        bits |= (uint32_t)(k->w[i] == 0 || !mp_dedupe_live(d, k->w[i])) << i;
    }
    return bits;
}
#endif

static bool mp_dedupe_contains(const mp_dedupe *d, const mp_id *id, uint64_t h) {
    if (d->count == 0) {
        return false;
    }
    uint32_t want = mp_dedupe_slot(d, h, 0) & ~d->seq_mask;
    uint32_t b = (uint32_t)h & (d->bucket_count - 1);
    for (uint32_t n = 0; n < d->bucket_count; n++) {
        const mp_dbucket *k = &d->buckets[b];
        for (uint32_t hits = mp_dedupe_tag_hits(d, k, want); hits; hits &= hits - 1) {
            uint32_t v = k->w[__builtin_ctz(hits)];
            if (mp_dedupe_live(d, v) && mp_id_same(&d->ring[v & (d->ring_cap - 1)].id, id)) {
                return true;
            }
        }
        if (!k->w[0] || !mp_dedupe_live(d, k->w[0])) {
            return false;
        }
        b = (b + 1) & (d->bucket_count - 1);
    }
    return false;
}

/* Puts the id numbered seq in the first free slot from its home on. There
 * is one: at most MP_DEDUPE_LOAD of 15 slots per bucket are live, and the
 * sweep leaves no stale slot reading live. */
static void mp_dedupe_place(mp_dedupe *d, uint64_t h, uint32_t seq) {
    uint32_t v = mp_dedupe_slot(d, h, seq);
    uint32_t b = (uint32_t)h & (d->bucket_count - 1);
    for (uint32_t n = 0; n < d->bucket_count; n++) {
        mp_dbucket *k = &d->buckets[b];
        uint32_t free = mp_dedupe_free(d, k);
        if (free) {
            k->w[__builtin_ctz(free)] = v;
            return;
        }
        k->w[0] = MP_DEDUPE_OVER | (seq & d->seq_mask);
        b = (b + 1) & (d->bucket_count - 1);
    }
}

/* Renumbers the stale slots of one bucket to just behind the head, where
 * they read stale for the longest, and drops a stale `over`. */
static void mp_dedupe_sweep(mp_dedupe *d) {
    mp_dbucket *k = &d->buckets[d->sweep];
    uint32_t behind = (d->head - 1) & d->seq_mask;
    for (int i = 1; i < MP_DEDUPE_WORDS; i++) {
        if (k->w[i] && !mp_dedupe_live(d, k->w[i])) {
            k->w[i] = (k->w[i] & ~d->seq_mask) | behind;
        }
    }
    if (k->w[0] && !mp_dedupe_live(d, k->w[0])) {
        k->w[0] = 0;
    }
    d->sweep = (d->sweep + 1) & (d->bucket_count - 1);
}

/* A new table of bucket_count buckets for the ring as it is. */
static mpreg_err mp_dedupe_rebuild(mp_dedupe *d, uint32_t bucket_count) {
    size_t bytes = (size_t)bucket_count * sizeof(mp_dbucket);
    mp_dbucket *buckets = aligned_alloc(sizeof(mp_dbucket), bytes);
    if (!buckets) {
        return MPREG_E_NOMEM;
    }
    memset(buckets, 0, bytes);
    free(d->buckets);
    d->buckets = buckets;
    d->bucket_count = bucket_count;
    d->sweep = 0;
    d->seq_bits = (uint32_t)__builtin_ctz(d->ring_cap) + 3;
    d->seq_mask = (1u << d->seq_bits) - 1;
    for (uint32_t i = 0; i < d->count; i++) {
        uint32_t seq = d->head + i;
        mp_dedupe_place(d, mp_dedupe_hash(&d->ring[seq & (d->ring_cap - 1)].id), seq);
    }
    return MPREG_OK;
}

/* Doubles the ring, keeping each id at its number's index. With a count
 * limit it stops at the smallest power of two that holds it. */
static mpreg_err mp_dedupe_grow_ring(mp_dedupe *d) {
    if (d->ring_cap >= MP_DEDUPE_MAX_RING) {
        return MPREG_E_NOMEM;
    }
    uint32_t cap = d->ring_cap ? d->ring_cap * 2 : MP_DEDUPE_MIN_RING;
    mp_seen *ring = malloc((size_t)cap * sizeof *ring);
    if (!ring) {
        return MPREG_E_NOMEM;
    }
    for (uint32_t i = 0; i < d->count; i++) {
        uint32_t seq = d->head + i;
        ring[seq & (cap - 1)] = d->ring[seq & (d->ring_cap - 1)];
    }
    free(d->ring);
    d->ring = ring;
    d->ring_cap = cap;
    return MPREG_OK;
}

/* Makes room for `after` ids: the ring holds them, the table has at most
 * MP_DEDUPE_LOAD per bucket, and its numbers fit the ring. A table that
 * could not be rebuilt after the ring grew keeps working with its old
 * numbers (the ring still holds every id where they say) until this
 * succeeds. */
static mpreg_err mp_dedupe_reserve(mp_dedupe *d, uint32_t after) {
    if (after > d->ring_cap && mp_dedupe_grow_ring(d)) {
        return MPREG_E_NOMEM;
    }
    uint32_t buckets = d->bucket_count ? d->bucket_count : 1;
    while ((uint64_t)buckets * MP_DEDUPE_LOAD < after) {
        buckets *= 2;
    }
    uint32_t bits = (uint32_t)__builtin_ctz(d->ring_cap) + 3;
    if (buckets != d->bucket_count || bits != d->seq_bits) {
        return mp_dedupe_rebuild(d, buckets);
    }
    return MPREG_OK;
}

/* Forgets the oldest id. */
static inline void mp_dedupe_pop(mp_dedupe *d) {
    d->head++;
    d->count--;
}

static bool mp_dedupe_on(const mp_pubsub *ps) {
    return ps->cfg.dedupe_max_ids > 0 || ps->cfg.dedupe_window_ms > 0;
}

/* The dedupe table outgrows the caches; asking for the line a publish will
 * read ahead of time hides some of the miss. */
void mp_pubsub_prefetch(const mp_pubsub *ps, const mp_id *id) {
    if (ps->seen.bucket_count) {
        __builtin_prefetch(mp_dedupe_home(&ps->seen, mp_dedupe_hash(id)));
    }
}

void mp_pubsub_expire(mp_pubsub *ps, uint64_t now_ms) {
    uint64_t window = ps->cfg.dedupe_window_ms;
    mp_dedupe *d = &ps->seen;
    if (window == 0) {
        return;
    }
    /* A clock that went back leaves ids in place rather than forgetting
     * them early. */
    while (d->count) {
        uint64_t at = d->ring[d->head & (d->ring_cap - 1)].at_ms;
        if (now_ms < at || now_ms - at < window) {
            break;
        }
        mp_dedupe_pop(d);
    }
}

/* Remembers id (not remembered yet, hash h), forgetting the oldest when the
 * window is full. MPREG_E_NOMEM changes nothing. */
static mpreg_err mp_seen_add(mp_pubsub *ps, const mp_id *id, uint64_t h, uint64_t now_ms) {
    mp_dedupe *d = &ps->seen;
    size_t max = ps->cfg.dedupe_max_ids;
    bool full = max && d->count >= max;
    if (!full && d->count == UINT32_MAX) {
        return MPREG_E_NOMEM;
    }
    if (mp_dedupe_reserve(d, full ? d->count : d->count + 1)) {
        return MPREG_E_NOMEM;
    }
    if (full) {
        mp_dedupe_pop(d);
    }
    uint32_t seq = d->head + d->count;
    d->ring[seq & (d->ring_cap - 1)] = (mp_seen){*id, now_ms};
    d->count++;
    mp_dedupe_place(d, h, seq);
    if ((seq & (MP_DEDUPE_SWEEP_EVERY - 1)) == 0) {
        mp_dedupe_sweep(d);
    }
    return MPREG_OK;
}

/* --- publishing --------------------------------------------------------------- */

/* A topic that matched a subscription is valid (an invalid topic matches
 * nothing), so one the node has just asked mp_pubsub_matches about, and
 * found subscribers for, need not be scanned again. */
static bool mp_topic_known_valid(const mp_pubsub *ps, mp_str topic) {
    const mp_mcache_entry *e = ps->mlast;
    return e && e->gen && e->len > 0 && e->topic_len == topic.len && topic.len &&
           mp_same_bytes(e->topic, topic.ptr, topic.len);
}

static mpreg_err mp_message_check(const mp_pubsub *ps, const mp_pubsub_message *msg) {
    if (!mp_topic_known_valid(ps, msg->topic) &&
        mp_topic_validate(msg->topic.ptr, msg->topic.len, NULL)) {
        return MPREG_E_TOPIC;
    }
    if (msg->header_count > MP_PUBSUB_MAX_MSG_HEADERS) {
        return MPREG_E_TOO_LARGE;
    }
    if ((msg->header_count && !msg->headers) || (msg->payload.len && !msg->payload.ptr)) {
        return MPREG_E_INVALID;
    }
    return MPREG_OK;
}

mpreg_err mp_pubsub_publish(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                            mp_pubsub_result *res) {
    mp_pubsub_result r = {0};
    if (res) {
        *res = r;
    }
    bool dedupe = mp_dedupe_on(ps) && !mp_id_is_zero(&msg->id);
    uint64_t h = 0;
    if (dedupe) {
        h = mp_dedupe_hash(&msg->id);
        if (ps->seen.bucket_count) {
            __builtin_prefetch(mp_dedupe_home(&ps->seen, h));
        }
    }
    mpreg_err err = mp_message_check(ps, msg);
    if (err) {
        return err;
    }
    if (dedupe) {
        mp_pubsub_expire(ps, now_ms);
        if (mp_dedupe_contains(&ps->seen, &msg->id, h)) {
            ps->counters.duplicates++;
            r.duplicate = true;
            goto out;
        }
    }
    mp_rmsg *kept = NULL;
    size_t cost = msg->topic.len + msg->payload.len;
    if (ps->cfg.retain_per_topic > 0 && cost <= ps->cfg.retain_max_bytes &&
        (err = mp_retain_prepare(ps, msg, now_ms, &kept))) {
        return err;
    }
    if (dedupe && (err = mp_seen_add(ps, &msg->id, h, now_ms))) {
        if (kept) {
            mp_retain_abort(ps, kept);
        }
        return err;
    }
    /* Pending replays go before the new message is retained (so they do not
     * include it) and before it is delivered (so it does not overtake them). */
    mp_replay_flush(ps);
    if (kept) {
        mp_retain_commit(ps, kept);
        r.retained = true;
    }
    ps->counters.published++;
    mp_deliver_live(ps, msg, now_ms, &r);
out:
    if (res) {
        *res = r;
    }
    return MPREG_OK;
}

mpreg_err mp_pubsub_publish_filtered(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                                     const mp_pubsub_filter *f, mp_pubsub_result *res) {
    ps->filter = f;
    mpreg_err err = mp_pubsub_publish(ps, msg, now_ms, res);
    ps->filter = NULL;
    return err;
}

/* --- statistics and interest ---------------------------------------------------- */

void mp_pubsub_stats_get(const mp_pubsub *ps, mp_pubsub_stats *out) {
    *out = ps->counters;
    out->retained_messages = ps->retained_messages;
    out->retained_bytes = ps->retained_bytes;
    out->retained_topics = mp_map_count(&ps->topics);
    out->subscriptions = mp_map_count(&ps->subs);
    out->patterns = mp_map_count(&ps->interest);
    out->groups = mp_map_count(&ps->groups);
    out->dedupe_ids = ps->seen.count;
}

mpreg_err mp_pubsub_sub_stats_get(const mp_pubsub *ps, uint64_t sub, mp_pubsub_sub_stats *out) {
    const mp_sub *s = mp_map_get(&ps->subs, &sub, sizeof sub);
    if (!s) {
        return MPREG_E_NOT_FOUND;
    }
    *out = s->stats;
    out->patterns = (uint32_t)s->pattern_count;
    return MPREG_OK;
}

size_t mp_pubsub_each_pattern(const mp_pubsub *ps,
                              void (*cb)(void *ud, mp_str pattern, mp_str group,
                                         size_t subscribers),
                              void *ud) {
    const void *key;
    size_t klen;
    void *val;
    size_t n = 0;
    for (size_t it = 0; mp_map_next(&ps->interest, &it, &key, &klen, &val); n++) {
        if (cb) {
            mp_str pattern, group;
            mp_interest_key_split(key, klen, &pattern, &group);
            cb(ud, pattern, group, ((const mp_interest *)val)->subs);
        }
    }
    return n;
}

/* --- the filter between nodes ---------------------------------------------------- */

bool mp_pubsub_node_header(mp_str key) {
    size_t n = sizeof MP_PUBSUB_NODE_HEADER_PREFIX - 1;
    return key.len >= n && memcmp(key.ptr, MP_PUBSUB_NODE_HEADER_PREFIX, n) == 0;
}

/* Appends one item (length, ':', name) to out[*at..cap). */
static mpreg_err mp_filter_item(mp_str name, char *out, size_t cap, size_t *at) {
    char digits[4];
    size_t n = mp_u64_text(name.len, digits);
    if (cap - *at < n + 1 + name.len) {
        return MPREG_E_TOO_LARGE;
    }
    memcpy(out + *at, digits, n);
    out[*at + n] = ':';
    if (name.len) {
        memcpy(out + *at + n + 1, name.ptr, name.len);
    }
    *at += n + 1 + name.len;
    return MPREG_OK;
}

mpreg_err mp_pubsub_filter_encode(const mp_pubsub_filter *f, char *out, size_t cap, size_t *len) {
    if (f->all_groups || (!f->plain && f->group_count == 0)) {
        return MPREG_E_INVALID;
    }
    size_t at = 0;
    mpreg_err err = f->plain ? mp_filter_item(MP_STR_NULL, out, cap, &at) : MPREG_OK;
    for (size_t i = 0; i < f->group_count && !err; i++) {
        mp_str g = f->groups[i];
        if (g.len == 0 || g.len > MP_PUBSUB_MAX_GROUP) {
            return MPREG_E_INVALID;
        }
        err = mp_filter_item(g, out, cap, &at);
    }
    if (!err) {
        *len = at;
    }
    return err;
}

/* One item's length: 1..3 digits, no leading zero, at most a group's; then
 * ':'. Advances *at past the colon. */
static bool mp_filter_len(mp_str text, size_t *at, size_t *len) {
    size_t i = *at, v = 0, digits = 0;
    while (i < text.len && text.ptr[i] >= '0' && text.ptr[i] <= '9' && digits < 4) {
        v = v * 10 + (size_t)(text.ptr[i++] - '0');
        digits++;
    }
    if (digits == 0 || (digits > 1 && text.ptr[*at] == '0') || v > MP_PUBSUB_MAX_GROUP ||
        i >= text.len || text.ptr[i] != ':') {
        return false;
    }
    *at = i + 1;
    *len = v;
    return true;
}

mpreg_err mp_pubsub_filter_decode(mp_str text, mp_str *groups, size_t cap, mp_pubsub_filter *f,
                                  const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    *f = (mp_pubsub_filter){.groups = groups};
    *why = "empty";
    if (text.len == 0 || !text.ptr) {
        return MPREG_E_INVALID;
    }
    for (size_t at = 0, len; at < text.len;) {
        *why = "bad length";
        if (!mp_filter_len(text, &at, &len)) {
            return MPREG_E_INVALID;
        }
        *why = "name cut short";
        if (text.len - at < len) {
            return MPREG_E_INVALID;
        }
        mp_str name = {text.ptr + at, len};
        at += len;
        if (len == 0) {
            *why = "plain part twice";
            if (f->plain) {
                return MPREG_E_INVALID;
            }
            f->plain = true;
            continue;
        }
        *why = "group: NUL byte or invalid UTF-8";
        if (memchr(name.ptr, '\0', name.len) || !mpreg_utf8_valid(name.ptr, name.len)) {
            return MPREG_E_INVALID;
        }
        *why = "too many groups";
        if (f->group_count == cap) {
            return MPREG_E_TOO_LARGE;
        }
        groups[f->group_count++] = name;
    }
    *why = NULL;
    return MPREG_OK;
}

mpreg_err mp_pubsub_publish_encoded(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                                    mp_str text, mp_pubsub_result *res, const char **why) {
    /* Each group takes at least three bytes ("1:g"). */
    size_t need = text.len / 3 + 1;
    if (need > ps->filter_cap) {
        mp_str *g = realloc(ps->filter_groups, need * sizeof *g);
        if (!g) {
            return MPREG_E_NOMEM;
        }
        ps->filter_groups = g;
        ps->filter_cap = need;
    }
    mp_pubsub_filter f;
    mpreg_err err = mp_pubsub_filter_decode(text, ps->filter_groups, ps->filter_cap, &f, why);
    return err ? err : mp_pubsub_publish_filtered(ps, msg, now_ms, &f, res);
}

/* --- DELIVER envelopes ----------------------------------------------------------- */

static bool mp_header_reserved(mp_str key) {
    return mp_str_eq_c(key, "sub") || mp_str_eq_c(key, "tag") || mp_str_eq_c(key, "replay") ||
           mp_str_eq_c(key, "missed");
}

/* v in decimal into out (at least MP_PUBSUB_SUB_TEXT bytes), NUL-terminated;
 * returns the digits' count.
 * By hand: it runs once per delivery, and snprintf's format machinery was a
 * visible share of the node's time at a million deliveries a second. */
static size_t mp_u64_text(uint64_t v, char *out) {
    char tmp[MP_PUBSUB_SUB_TEXT];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }
    out[n] = '\0';
    return n;
}

mpreg_err mp_pubsub_deliver_envelope(const mp_pubsub_delivery *d, char sub_text[MP_PUBSUB_SUB_TEXT],
                                     char missed_text[MP_PUBSUB_SUB_TEXT], mp_envelope *out) {
    const mp_pubsub_message *msg = d->msg;
    mp_envelope_init(out, MP_KIND_DELIVER);
    out->id = msg->id;
    out->topic = msg->topic;
    out->payload = msg->payload;
    if (msg->header_count > MP_PUBSUB_MAX_MSG_HEADERS) {
        return MPREG_E_TOO_LARGE;
    }
    for (size_t i = 0; i < msg->header_count; i++) {
        if (mp_header_reserved(msg->headers[i].key)) {
            continue;
        }
        mpreg_err err = mp_envelope_add_header(out, msg->headers[i].key, msg->headers[i].value);
        if (err) {
            return err;
        }
    }
    mp_str sub = {sub_text, mp_u64_text(d->sub, sub_text)};
    mp_str tag = d->tag.len ? d->tag : mp_str_c("");
    mpreg_err err = mp_envelope_add_header(out, mp_str_c("sub"), sub);
    if (!err) {
        err = mp_envelope_add_header(out, mp_str_c("tag"), tag);
    }
    if (!err && d->replay) {
        err = mp_envelope_add_header(out, mp_str_c("replay"), mp_str_c("1"));
    }
    if (!err && d->missed) {
        mp_str missed = {missed_text, mp_u64_text(d->missed, missed_text)};
        err = mp_envelope_add_header(out, mp_str_c("missed"), missed);
    }
    return err;
}

/* "replay" = "1", the entry a replayed message's DELIVER ends with. */
static const uint8_t mp_replay_header[] = {0xa6, 'r', 'e', 'p', 'l', 'a', 'y', 0xa1, '1'};

/* The rules mp_envelope_validate has for a source name. */
static mpreg_err mp_source_name_check(mp_str s) {
    if (s.len > MP_MAX_NAME_LEN) {
        return MPREG_E_TOO_LARGE;
    }
    if (s.len && (!s.ptr || !mpreg_utf8_valid(s.ptr, s.len))) {
        return MPREG_E_INVALID;
    }
    return MPREG_OK;
}

/* The source names are the node's own, the same for every message: they
 * are checked when they differ from the last ones checked. */
static mpreg_err mp_dtmpl_names(mp_dtmpl *t, mp_str node, mp_str cluster) {
    if (t->node_len == node.len && t->cluster_len == cluster.len &&
        mp_same_bytes(t->node, node.ptr, node.len) &&
        mp_same_bytes(t->cluster, cluster.ptr, cluster.len)) {
        return MPREG_OK;
    }
    t->seq = 0; /* the body holds the old names */
    t->plain = false;
    mpreg_err err = mp_source_name_check(node);
    err = err ? err : mp_source_name_check(cluster);
    if (err) {
        t->node_len = t->cluster_len = 0;
        return err;
    }
    if (node.len) {
        memcpy(t->node, node.ptr, node.len);
    }
    if (cluster.len) {
        memcpy(t->cluster, cluster.ptr, cluster.len);
    }
    t->node_len = node.len;
    t->cluster_len = cluster.len;
    return MPREG_OK;
}

/* Encodes the part of d's DELIVER every delivery of its message shares.
 * What the envelope would be checked for and the service has not checked
 * already (its message headers, its topic when the delivery was not made
 * here) is checked here, once per message; so the trusted encoder gets
 * only valid envelopes. */
/* The payload's field head (key, bin head) at the end of the body. */
static mpreg_err mp_dtmpl_payload_head(mp_dtmpl *t, size_t len) {
    if (mp_buf_reserve(&t->body, 6)) {
        return MPREG_E_NOMEM;
    }
    uint8_t *p = t->body.data + t->body.len;
    p[0] = MP_F_PAYLOAD;
    if (len <= UINT8_MAX) {
        p[1] = 0xc4;
        p[2] = (uint8_t)len;
        t->body.len += 3;
    } else if (len <= UINT16_MAX) {
        p[1] = 0xc5;
        p[2] = (uint8_t)(len >> 8);
        p[3] = (uint8_t)len;
        t->body.len += 4;
    } else {
        p[1] = 0xc6;
        mp_put_u32be(p + 2, (uint32_t)len);
        t->body.len += 6;
    }
    return MPREG_OK;
}

/* The cheap way to the next message's template, when it is shaped like the
 * last one: a new id and payload head in place, the rest as it is. */
static bool mp_dtmpl_patch(mp_dtmpl *t, const mp_pubsub_delivery *d) {
    const mp_pubsub_message *msg = d->msg;
    if (!t->plain || msg->header_count || t->replay != d->replay ||
        t->has_payload != (msg->payload.len > 0) || t->topic_len != msg->topic.len ||
        (msg->payload.len && !msg->payload.ptr) || msg->payload.len > UINT32_MAX ||
        mp_id_is_zero(&msg->id) || !mp_same_bytes(t->topic, msg->topic.ptr, msg->topic.len)) {
        return false;
    }
    memcpy(t->body.data + t->id_at, msg->id.bytes, MP_ID_LEN);
    t->body.len = t->tail;
    if (msg->payload.len && mp_dtmpl_payload_head(t, msg->payload.len)) {
        t->plain = false;
        return false;
    }
    t->seq = d->seq;
    return true;
}

static mpreg_err mp_dtmpl_build(mp_dtmpl *t, const mp_pubsub_delivery *d) {
    const mp_pubsub_message *msg = d->msg;
    if (mp_dtmpl_patch(t, d)) {
        return MPREG_OK;
    }
    t->seq = 0;
    t->plain = false;
    if (mp_id_is_zero(&msg->id)) {
        return MPREG_E_INVALID;
    }
    if (msg->topic.len == 0 || msg->topic.len > MP_MAX_TOPIC_LEN || !msg->topic.ptr ||
        !mpreg_utf8_valid(msg->topic.ptr, msg->topic.len) ||
        (msg->payload.len && !msg->payload.ptr)) {
        return MPREG_E_INVALID;
    }
    if (msg->header_count > MP_PUBSUB_MAX_MSG_HEADERS || (msg->header_count && !msg->headers)) {
        return MPREG_E_TOO_LARGE;
    }
    mp_envelope env;
    mp_envelope_init_fields(&env, MP_KIND_DELIVER);
    env.id = msg->id;
    env.topic = msg->topic;
    env.payload = msg->payload;
    env.source_node = (mp_str){t->node, t->node_len};
    env.source_cluster = (mp_str){t->cluster, t->cluster_len};
    for (size_t i = 0; i < msg->header_count; i++) {
        if (!mp_header_reserved(msg->headers[i].key)) {
            env.headers[env.header_count++] = msg->headers[i];
        }
    }
    mpreg_err err = env.header_count ? mp_envelope_validate_headers(&env, NULL) : MPREG_OK;
    if (err) {
        return err;
    }
    t->body.len = 0;
    err = mp_envelope_encode_split(&env, d->replay ? 3 : 2, &t->body, &t->split);
    if (!err && d->replay) {
        /* Its entry goes after the subscription's: keep it after the split. */
        err = mp_buf_reserve(&t->body, sizeof mp_replay_header);
        if (!err) {
            uint8_t *at = t->body.data + t->split;
            memmove(at + sizeof mp_replay_header, at, t->body.len - t->split);
            memcpy(at, mp_replay_header, sizeof mp_replay_header);
            t->body.len += sizeof mp_replay_header;
        }
    }
    if (err) {
        return err;
    }
    t->seq = d->seq;
    t->replay = d->replay;
    /* Remember where the id is (right after the map head and the version
     * and kind fields, but the check costs nothing) for mp_dtmpl_patch. */
    t->id_at = 8;
    t->tail = t->split + (d->replay ? sizeof mp_replay_header : 0);
    t->plain = env.header_count == 0 && msg->header_count == 0 &&
               t->body.len > t->id_at + MP_ID_LEN &&
               memcmp(t->body.data + t->id_at, msg->id.bytes, MP_ID_LEN) == 0;
    if (t->plain) {
        t->has_payload = msg->payload.len > 0;
        t->topic_len = msg->topic.len;
        memcpy(t->topic, msg->topic.ptr, msg->topic.len);
    }
    return MPREG_OK;
}

mpreg_err mp_pubsub_deliver_frame(mp_pubsub *ps, const mp_pubsub_delivery *d, mp_str source_node,
                                  mp_str source_cluster, uint32_t max_frame, mp_buf *out) {
    mp_dtmpl *t = &ps->tmpl;
    if (d->sub_headers.len == 0 || d->seq == 0 || d->missed) {
        return MPREG_E_INVALID;
    }
    mpreg_err err = mp_dtmpl_names(t, source_node, source_cluster);
    if (!err && (t->seq != d->seq || t->replay != d->replay)) {
        err = mp_dtmpl_build(t, d);
    }
    if (err) {
        return err;
    }
    size_t limit = max_frame ? max_frame : MP_FRAME_DEFAULT_MAX;
    size_t payload = d->msg->payload.len;
    size_t body = t->body.len + d->sub_headers.len + payload;
    if (payload > UINT32_MAX || body > limit || body > UINT32_MAX) {
        return MPREG_E_FRAME_TOO_LARGE;
    }
    if (mp_buf_reserve(out, MP_FRAME_HEADER + body)) {
        return MPREG_E_NOMEM;
    }
    uint8_t *p = out->data + out->len;
    mp_put_u32be(p, (uint32_t)body);
    p += MP_FRAME_HEADER;
    memcpy(p, t->body.data, t->split);
    p += t->split;
    memcpy(p, d->sub_headers.ptr, d->sub_headers.len);
    p += d->sub_headers.len;
    memcpy(p, t->body.data + t->split, t->body.len - t->split);
    p += t->body.len - t->split;
    if (payload) {
        memcpy(p, d->msg->payload.ptr, payload);
    }
    out->len += MP_FRAME_HEADER + body;
    return MPREG_OK;
}

static const mp_header *mp_header_find(const mp_envelope *e, const char *key) {
    for (uint32_t i = 0; i < e->header_count && i < MP_MAX_HEADERS; i++) {
        if (mp_str_eq_c(e->headers[i].key, key)) {
            return &e->headers[i];
        }
    }
    return NULL;
}

/* Canonical decimal: 1 .. INT64_MAX, digits only, no leading zero. */
static mpreg_err mp_parse_sub(mp_str s, uint64_t *out) {
    if (s.len == 0 || s.len > 19 || s.ptr[0] == '0') {
        return MPREG_E_INVALID;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9') {
            return MPREG_E_INVALID;
        }
        v = v * 10 + (uint64_t)(s.ptr[i] - '0'); /* 19 digits fit in uint64 */
    }
    if (v > INT64_MAX) {
        return MPREG_E_INVALID;
    }
    *out = v;
    return MPREG_OK;
}

mpreg_err mp_pubsub_deliver_missed(const mp_envelope *e, uint64_t *missed) {
    *missed = 0;
    const mp_header *h = mp_header_find(e, "missed");
    if (!h) {
        return MPREG_OK;
    }
    if (h->value.len == 1 && h->value.ptr[0] == '0') {
        return MPREG_OK;
    }
    return mp_parse_sub(h->value, missed);
}

mpreg_err mp_pubsub_deliver_parse(const mp_envelope *e, uint64_t *sub, mp_str *tag) {
    const mp_header *hs = mp_header_find(e, "sub");
    const mp_header *ht = mp_header_find(e, "tag");
    if (!hs || !ht) {
        return MPREG_E_MISSING_FIELD;
    }
    mpreg_err err = mp_parse_sub(hs->value, sub);
    if (!err) {
        *tag = ht->value;
    }
    return err;
}
