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
 *   - mp_interest: how many subscriptions hold a pattern.
 *   - mp_rtopic / mp_rmsg: retained messages, on one list in publish order
 *     (for the byte budget and for replay) and on one list per topic (for
 *     the per-topic count). The oldest message overall is also the oldest of
 *     its topic, so both evictions take a topic list's head, and the topic
 *     list can be singly linked.
 *   - the dedupe window: a ring of (id, first seen) in arrival order, the
 *     oldest at the head, and a set of the same ids for lookups (mp_idset:
 *     the ids stored inline, since every publish looks one up, adds one
 *     and, once the window is full, removes one).
 *
 * Matching goes through the trie (matcher.h), which reports each matching
 * subscription once; the matches are then sorted by id, so delivery order
 * does not depend on the trie's shape. The match buffer is kept at least as
 * large as the number of subscriptions, so publishing allocates only what
 * it retains and remembers. */
#include "services/pubsub.h"

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
    mp_group *group;
    mp_sub *owner_prev;
    mp_sub *owner_next;
    mp_pubsub_replay_opts replay;
    bool replay_pending;
    mp_pubsub_sub_stats stats;
    mp_str tag;
    size_t pattern_count;
    mp_str patterns[]; /* then the tag and pattern bytes */
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

typedef struct mp_seen_ring {
    mp_seen *items;
    size_t cap;
    size_t head; /* index of the oldest */
    size_t count;
} mp_seen_ring;

/* A set of non-zero message ids: open addressing with linear probing and
 * backward-shift deletion, like core/map.h, but with the 16 id bytes in the
 * slot (no key allocation, no pointer to follow) and a hash of two 64-bit
 * words rather than a byte loop. A zero slot is empty: the zero id is never
 * deduplicated, so it is never stored. */
typedef struct mp_idset {
    mp_id *slots;
    size_t cap; /* a power of two, or 0 before the first insert */
    size_t count;
} mp_idset;

/* The subscriptions one publish matched, sorted by id before delivery. */
typedef struct mp_matches {
    mp_sub **subs;
    size_t len;
    size_t cap;
} mp_matches;

struct mp_pubsub {
    mp_pubsub_config cfg;
    mp_pubsub_hooks hooks;
    mp_matcher *matcher;
    mp_map subs;     /* id -> mp_sub */
    mp_map owners;   /* owner id -> mp_owner */
    mp_map groups;   /* name -> mp_group */
    mp_map interest; /* pattern -> mp_interest */
    mp_map topics;   /* topic -> mp_rtopic */
    mp_rmsg *oldest;
    mp_rmsg *newest;
    size_t retained_messages;
    size_t retained_bytes;
    mp_idset seen_ids;
    mp_seen_ring seen;
    mp_matches matches;
    uint64_t next_sub;
    uint64_t epoch; /* publishes delivered so far: stamps group picks */
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
    ps->next_sub = 1;
    return ps;
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
    free(ps->seen_ids.slots);
    mp_matcher_free(ps->matcher);
    free(ps->seen.items);
    free(ps->matches.subs);
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

/* Makes sure every pattern of s has an interest record. New ones start at
 * zero subscriptions and are counted only when the subscription commits. */
static mpreg_err mp_interest_reserve(mp_pubsub *ps, const mp_sub *s) {
    for (size_t i = 0; i < s->pattern_count; i++) {
        mp_str p = s->patterns[i];
        if (mp_map_contains(&ps->interest, p.ptr, p.len)) {
            continue;
        }
        mp_interest *in = calloc(1, sizeof *in);
        if (!in) {
            return MPREG_E_NOMEM;
        }
        if (mp_map_put(&ps->interest, p.ptr, p.len, in, NULL) != MPREG_OK) {
            free(in);
            return MPREG_E_NOMEM;
        }
    }
    return MPREG_OK;
}

/* Undoes mp_interest_reserve: drops the records nobody holds. */
static void mp_interest_unreserve(mp_pubsub *ps, const mp_sub *s) {
    for (size_t i = 0; i < s->pattern_count; i++) {
        mp_str p = s->patterns[i];
        mp_interest *in = mp_map_get(&ps->interest, p.ptr, p.len);
        if (in && in->subs == 0) {
            free(mp_map_remove(&ps->interest, p.ptr, p.len));
        }
    }
}

static void mp_interest_hold(mp_pubsub *ps, const mp_sub *s) {
    for (size_t i = 0; i < s->pattern_count; i++) {
        mp_str p = s->patterns[i];
        mp_interest *in = mp_map_get(&ps->interest, p.ptr, p.len);
        if (++in->subs == 1 && ps->hooks.on_interest) {
            ps->hooks.on_interest(ps->hooks.ud, p, true);
        }
    }
}

static void mp_interest_release(mp_pubsub *ps, const mp_sub *s) {
    for (size_t i = 0; i < s->pattern_count; i++) {
        mp_str p = s->patterns[i];
        mp_interest *in = mp_map_get(&ps->interest, p.ptr, p.len);
        if (--in->subs == 0) {
            free(mp_map_remove(&ps->interest, p.ptr, p.len));
            if (ps->hooks.on_interest) {
                ps->hooks.on_interest(ps->hooks.ud, p, false);
            }
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

static mpreg_err mp_parts_check(mp_str tag, mp_str group, const mp_str *patterns, size_t count,
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

/* One allocation: the record, the pattern views, then the tag and pattern
 * bytes they view. Identical patterns are kept once. */
static mp_sub *mp_sub_alloc(const mp_pubsub_sub_spec *spec, uint64_t id) {
    size_t unique = 0, bytes = spec->tag.len;
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
        mp_parts_check(spec->tag, spec->group, spec->patterns, spec->pattern_count, &why);
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
    if (s->group) {
        s->group->members--;
        mp_group_maybe_drop(ps, s->group);
    }
    if (s->replay_pending) {
        ps->pending_replays--;
    }
    mp_interest_release(ps, s);
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

/* Hands one message to s, or drops it when s's owner is not accepting.
 * Returns whether it was delivered. */
static bool mp_emit(mp_pubsub *ps, mp_sub *s, const mp_pubsub_message *msg, uint64_t published_ms,
                    bool replay) {
    if (!s->owner->accepting) {
        s->stats.dropped++;
        ps->counters.dropped++;
        return false;
    }
    s->stats.delivered++;
    ps->counters.delivered++;
    if (replay) {
        ps->counters.replayed++;
    }
    if (ps->hooks.deliver) {
        mp_pubsub_delivery d = {s->owner->id, s->id, s->tag, msg, published_ms, replay};
        ps->hooks.deliver(ps->hooks.ud, &d);
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
        delivered += mp_emit(ps, s, &msg, m->published_ms, true);
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

/* Called with the matches in ascending id: records, for s's group, the
 * first candidates after the cursor and overall. */
static void mp_group_consider(mp_group *g, mp_sub *s, uint64_t epoch) {
    mp_group_pick *p = &g->pick;
    if (p->epoch != epoch) {
        *p = (mp_group_pick){.epoch = epoch};
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

static void mp_deliver_live(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                            mp_pubsub_result *r) {
    mp_matches *m = &ps->matches;
    m->len = 0;
    mp_matcher_match(ps->matcher, msg->topic.ptr, msg->topic.len, mp_on_match, ps);
    mp_matches_sort(m);
    uint64_t epoch = ++ps->epoch;
    for (size_t i = 0; i < m->len; i++) {
        if (m->subs[i]->group) {
            mp_group_consider(m->subs[i]->group, m->subs[i], epoch);
        }
    }
    for (size_t i = 0; i < m->len; i++) {
        mp_sub *s = m->subs[i];
        if (s->group && mp_group_choose(s->group) != s) {
            continue;
        }
        if (mp_emit(ps, s, msg, now_ms, false)) {
            r->delivered++;
        } else {
            r->dropped++;
        }
    }
    m->len = 0;
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

static uint64_t mp_idset_hash(const mp_id *id) {
    uint64_t a, b;
    memcpy(&a, id->bytes, 8);
    memcpy(&b, id->bytes + 8, 8);
    uint64_t h = (a ^ (b * 0x9e3779b97f4a7c15ULL)) * 0xff51afd7ed558ccdULL;
    return h ^ (h >> 32);
}

/* Inline word compares: these run in the probe loop of every publish. */
static inline bool mp_idset_empty(const mp_id *id) {
    uint64_t a, b;
    memcpy(&a, id->bytes, 8);
    memcpy(&b, id->bytes + 8, 8);
    return (a | b) == 0;
}

static inline bool mp_idset_same(const mp_id *x, const mp_id *y) {
    uint64_t a, b, c, d;
    memcpy(&a, x->bytes, 8);
    memcpy(&b, x->bytes + 8, 8);
    memcpy(&c, y->bytes, 8);
    memcpy(&d, y->bytes + 8, 8);
    return ((a ^ c) | (b ^ d)) == 0;
}

/* The slot holding id, or the empty slot where it would go. */
static size_t mp_idset_find(const mp_idset *s, const mp_id *id, bool *found) {
    size_t mask = s->cap - 1;
    for (size_t i = mp_idset_hash(id) & mask;; i = (i + 1) & mask) {
        if (mp_idset_empty(&s->slots[i])) {
            *found = false;
            return i;
        }
        if (mp_idset_same(&s->slots[i], id)) {
            *found = true;
            return i;
        }
    }
}

/* The set outgrows the caches (100 000 ids by default: 4 MiB of slots) and
 * each publish touches two unrelated slots, the new id's and the evicted
 * one's; asking for a slot's line ahead hides most of that miss. */
static inline void mp_idset_prefetch(const mp_idset *s, const mp_id *id) {
    if (s->cap) {
        __builtin_prefetch(&s->slots[mp_idset_hash(id) & (s->cap - 1)]);
    }
}

void mp_pubsub_prefetch(const mp_pubsub *ps, const mp_id *id) {
    mp_idset_prefetch(&ps->seen_ids, id);
}

static bool mp_idset_contains(const mp_idset *s, const mp_id *id) {
    bool found = false;
    if (s->count) {
        mp_idset_find(s, id, &found);
    }
    return found;
}

/* Keeps the load at or under 1/2: probe runs stay short even though the
 * window keeps the set full all the time. */
static mpreg_err mp_idset_grow(mp_idset *s) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    mp_id *slots = calloc(cap, sizeof *slots);
    if (!slots) {
        return MPREG_E_NOMEM;
    }
    mp_idset old = *s;
    s->slots = slots;
    s->cap = cap;
    for (size_t i = 0; i < old.cap; i++) {
        if (!mp_idset_empty(&old.slots[i])) {
            bool found;
            s->slots[mp_idset_find(s, &old.slots[i], &found)] = old.slots[i];
        }
    }
    free(old.slots);
    return MPREG_OK;
}

static mpreg_err mp_idset_add(mp_idset *s, const mp_id *id) {
    if ((s->count + 1) * 2 > s->cap && mp_idset_grow(s)) {
        return MPREG_E_NOMEM;
    }
    bool found;
    size_t i = mp_idset_find(s, id, &found);
    if (!found) {
        s->slots[i] = *id;
        s->count++;
    }
    return MPREG_OK;
}

static void mp_idset_remove(mp_idset *s, const mp_id *id) {
    bool found = false;
    size_t i = s->count ? mp_idset_find(s, id, &found) : 0;
    if (!found) {
        return;
    }
    s->count--;
    /* Backward shift: pull later members of the probe run into the hole so
     * that lookups never stop early at a gap. */
    size_t mask = s->cap - 1, hole = i;
    for (size_t j = (i + 1) & mask; !mp_idset_empty(&s->slots[j]); j = (j + 1) & mask) {
        size_t home = mp_idset_hash(&s->slots[j]) & mask;
        bool between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            s->slots[hole] = s->slots[j];
            hole = j;
        }
    }
    memset(&s->slots[hole], 0, sizeof s->slots[hole]);
}

static bool mp_dedupe_on(const mp_pubsub *ps) {
    return ps->cfg.dedupe_max_ids > 0 || ps->cfg.dedupe_window_ms > 0;
}

static void mp_seen_pop(mp_pubsub *ps) {
    mp_seen_ring *r = &ps->seen;
    mp_idset_remove(&ps->seen_ids, &r->items[r->head].id);
    r->head = (r->head + 1) % r->cap;
    r->count--;
    if (r->count) {
        mp_idset_prefetch(&ps->seen_ids, &r->items[r->head].id); /* the next to go */
    }
}

void mp_pubsub_expire(mp_pubsub *ps, uint64_t now_ms) {
    uint64_t window = ps->cfg.dedupe_window_ms;
    mp_seen_ring *r = &ps->seen;
    if (window == 0) {
        return;
    }
    /* A clock that went back leaves ids in place rather than forgetting
     * them early. */
    while (r->count && now_ms >= r->items[r->head].at_ms &&
           now_ms - r->items[r->head].at_ms >= window) {
        mp_seen_pop(ps);
    }
}

/* Doubles the ring (up to the id limit), unwrapping it. */
static mpreg_err mp_seen_grow(mp_seen_ring *r, size_t max) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    if (max && cap > max) {
        cap = max;
    }
    mp_seen *items = malloc(cap * sizeof *items);
    if (!items) {
        return MPREG_E_NOMEM;
    }
    for (size_t i = 0; i < r->count; i++) {
        items[i] = r->items[(r->head + i) % r->cap];
    }
    free(r->items);
    r->items = items;
    r->cap = cap;
    r->head = 0;
    return MPREG_OK;
}

static mpreg_err mp_seen_add(mp_pubsub *ps, const mp_id *id, uint64_t now_ms) {
    mp_seen_ring *r = &ps->seen;
    size_t max = ps->cfg.dedupe_max_ids;
    bool full = max && r->count >= max;
    if (!full && r->count == r->cap && mp_seen_grow(r, max)) {
        return MPREG_E_NOMEM;
    }
    if (mp_idset_add(&ps->seen_ids, id)) {
        return MPREG_E_NOMEM;
    }
    if (full) {
        mp_seen_pop(ps);
    }
    r->items[(r->head + r->count) % r->cap] = (mp_seen){*id, now_ms};
    r->count++;
    return MPREG_OK;
}

/* --- publishing --------------------------------------------------------------- */

static mpreg_err mp_message_check(const mp_pubsub_message *msg) {
    if (mp_topic_validate(msg->topic.ptr, msg->topic.len, NULL)) {
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
    if (dedupe) {
        mp_idset_prefetch(&ps->seen_ids, &msg->id);
    }
    mpreg_err err = mp_message_check(msg);
    if (err) {
        return err;
    }
    if (dedupe) {
        mp_pubsub_expire(ps, now_ms);
        if (mp_idset_contains(&ps->seen_ids, &msg->id)) {
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
    if (dedupe && (err = mp_seen_add(ps, &msg->id, now_ms))) {
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
    return MPREG_OK;
}

size_t mp_pubsub_each_pattern(const mp_pubsub *ps,
                              void (*cb)(void *ud, mp_str pattern, size_t subscribers), void *ud) {
    const void *key;
    size_t klen;
    void *val;
    size_t n = 0;
    for (size_t it = 0; mp_map_next(&ps->interest, &it, &key, &klen, &val); n++) {
        if (cb) {
            cb(ud, (mp_str){key, klen}, ((const mp_interest *)val)->subs);
        }
    }
    return n;
}

/* --- wire payloads ------------------------------------------------------------- */

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
    return mp_parts_check(out->tag, out->group, out->patterns, out->pattern_count, why);
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
    mpreg_err err = mp_parts_check(p->tag, p->group, p->patterns, p->pattern_count, &why);
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

/* --- DELIVER envelopes ----------------------------------------------------------- */

static bool mp_header_reserved(mp_str key) {
    return mp_str_eq_c(key, "sub") || mp_str_eq_c(key, "tag") || mp_str_eq_c(key, "replay");
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
                                     mp_envelope *out) {
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
    return err;
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
