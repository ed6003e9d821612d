/* membership.c - SWIM membership, dissemination and push-pull (sans-I/O).
 *
 * The file has five parts:
 *   - the wire codec (docs/PROTOCOL.md §12). Encoding goes through msgpack-c's
 *     packer into an mp_buf. Decoding never uses msgpack-c: mp_rd_scan first
 *     checks the shape of the whole message without allocating (truncation,
 *     depth, trailing bytes, counts that claim more elements than bytes are
 *     left), then a strict mp_rd cursor walk fills an mp_wmsg whose strings
 *     and byte strings view the input. A message is decoded and checked in
 *     full before anything is applied, so a bad one changes nothing.
 *   - the member table: a map from id to record for lookups, and a vector of
 *     the same records that doubles as the shuffled round-robin probe list
 *     (dead members stay in it for the reconnect timeout, skipped by probes).
 *   - the news queue: member updates and opaque items, each kept encoded
 *     (the bytes that go into a message) with a transmit count.
 *   - the member digest push-pull compares, and the outbox, drained by
 *     mp_swim_next_send.
 *   - message handlers and timers (probes, gossip rounds, push-pull,
 *     reconnection).
 *
 * Only now_ms arguments tell the time and only s->rng draws random numbers,
 * so a run is a function of its inputs and seed. */
#include "fabric/membership.h"
#include "fabric/membership_wire.h"

#include "core/check.h"

#include "core/map.h"
#include "core/mpread.h"
#include "core/str.h"
#include "core/vec.h"
#include "mpreg/value.h" /* mpreg_utf8_valid */

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* PING_REQs this node relays at once; the oldest is dropped beyond it. */
#define MP_SWIM_MAX_RELAYS 256
/* Seeds remembered for join retries. */
#define MP_SWIM_MAX_SEEDS 64
/* Push-pulls this node started and whose answer it has not used yet; the
 * oldest is forgotten beyond it (a join sends one per seed at once). */
#define MP_SWIM_MAX_SYNCS (MP_SWIM_MAX_SEEDS + 16)

/* --- small helpers ------------------------------------------------------------ */

static uint64_t mp_add_sat(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t mp_min_u64(uint64_t a, uint64_t b) {
    return a < b ? a : b;
}

static bool mp_gone(mp_member_state st) {
    return st == MP_MEMBER_DEAD || st == MP_MEMBER_LEFT;
}

/* Precedence at one (generation, incarnation): DEAD/LEFT > SUSPECT > ALIVE. */
static int mp_rank(mp_member_state st) {
    return st == MP_MEMBER_ALIVE ? 0 : st == MP_MEMBER_SUSPECT ? 1 : 2;
}

const char *mp_member_state_name(mp_member_state s) {
    switch (s) {
    case MP_MEMBER_ALIVE:
        return "alive";
    case MP_MEMBER_SUSPECT:
        return "suspect";
    case MP_MEMBER_DEAD:
        return "dead";
    case MP_MEMBER_LEFT:
        return "left";
    }
    return "unknown";
}

/* --- config ------------------------------------------------------------------- */

void mp_swim_config_default(mp_swim_config *cfg) {
    *cfg = (mp_swim_config){
        .probe_interval_ms = 1000,
        .probe_timeout_ms = 500,
        .indirect_checks = 3,
        .suspicion_mult = 4,
        .retransmit_mult = 6,
        .gossip_interval_ms = 200,
        .gossip_nodes = 3,
        .push_pull_interval_ms = 30000,
        .dead_keep_ms = 60000,
        .max_piggyback_bytes = 16384,
        .reconnect_timeout_ms = 6u * 3600000u,
        .reconnect_interval_ms = 10000,
    };
}

#define MP_HOUR_MS 3600000u
#define MP_DAY_MS 86400000u

mpreg_err mp_swim_config_explain(const mp_swim_config *cfg, const char **why, char *msg,
                                 size_t msg_len) {
    const char *dummy;
    why = why ? why : &dummy;
    *why = NULL;
    msg_len = msg ? msg_len : 0;
    static const struct {
        size_t off;
        uint32_t min, max;
        const char *name;
    } rules[] = {
#define MP_R(f, lo, hi) {offsetof(mp_swim_config, f), lo, hi, #f}
        MP_R(probe_interval_ms, 1, MP_HOUR_MS),
        MP_R(probe_timeout_ms, 1, MP_HOUR_MS),
        MP_R(indirect_checks, 0, 64),
        MP_R(suspicion_mult, 1, 1000),
        MP_R(retransmit_mult, 1, 1000),
        MP_R(gossip_interval_ms, 1, MP_HOUR_MS),
        MP_R(gossip_nodes, 1, 64),
        MP_R(push_pull_interval_ms, 1, MP_DAY_MS),
        MP_R(dead_keep_ms, 1, MP_DAY_MS),
        MP_R(max_piggyback_bytes, 64, 16u << 20),
        MP_R(reconnect_timeout_ms, 1, 30u * MP_DAY_MS),
        MP_R(reconnect_interval_ms, 1, MP_DAY_MS),
#undef MP_R
    };
    if (!cfg) {
        *why = "config";
        return MPREG_E_INVALID;
    }
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        uint32_t v = *(const uint32_t *)((const char *)cfg + rules[i].off);
        if (v < rules[i].min || v > rules[i].max) {
            *why = rules[i].name;
            if (msg_len) {
                snprintf(msg, msg_len, "%s=%u is out of range: it must be from %u to %u",
                         rules[i].name, (unsigned)v, (unsigned)rules[i].min,
                         (unsigned)rules[i].max);
            }
            return MPREG_E_RANGE;
        }
    }
    if (cfg->probe_timeout_ms >= cfg->probe_interval_ms) {
        /* The indirect probes need the rest of the interval. */
        *why = "probe_timeout_ms";
        if (msg_len) {
            snprintf(msg, msg_len,
                     "probe_timeout_ms=%u must be below probe_interval_ms=%u (the indirect "
                     "probes need the rest of the interval)",
                     (unsigned)cfg->probe_timeout_ms, (unsigned)cfg->probe_interval_ms);
        }
        return MPREG_E_RANGE;
    }
    return MPREG_OK;
}

mpreg_err mp_swim_config_check(const mp_swim_config *cfg, const char **why) {
    return mp_swim_config_explain(cfg, why, NULL, 0);
}

/* --- state ---------------------------------------------------------------------- */

/* One member as this node sees it (self included). */
typedef struct mp_swim_rec {
    char *id;
    char *addr;
    uint64_t generation;
    uint64_t incarnation;
    mp_member_state state;
    uint8_t key[MP_SWIM_MAX_KEY]; /* its identity key: the process that holds the id */
    uint8_t key_len;              /* 0: none known */
    uint64_t since_ms;
    uint64_t suspect_deadline_ms;
    uint64_t noticed_ms; /* when it was last told its bad standing here */
    bool noticed;
    uint64_t gossip_round; /* the last gossip round that sent to it */
    size_t pos;            /* in mp_swim.nodes */
} mp_swim_rec;

/* A queued member update or item, kept as the bytes that go in a message. */
typedef struct mp_news {
    bool is_item;
    bool selected; /* goes into the message being built */
    uint8_t *ikey; /* its key in news_index (NULL: not indexed) */
    size_t ilen;
    uint8_t *bytes;
    size_t len;
    uint32_t transmits;
    uint64_t order; /* larger = newer */
} mp_news;

typedef struct mp_out {
    char *to_id; /* NULL for a seed */
    char *to_addr;
    mp_buf payload;
} mp_out;

/* A PING this node sends for another's PING_REQ: its ACK is forwarded. */
typedef struct mp_relay {
    uint64_t seq;      /* of our PING */
    uint64_t orig_seq; /* of the requester's PING_REQ */
    uint64_t expires_ms;
    char *to_id;
    char *to_addr;
} mp_relay;

typedef struct mp_probe {
    bool active;
    bool indirect; /* PING_REQs sent */
    mp_swim_rec *target;
    uint64_t seq;
    uint64_t start_ms;
} mp_probe;

struct mp_swim {
    mp_swim_config cfg;
    mp_swim_delegate d;
    mp_rng *rng;
    mp_swim_rec self;
    bool left;

    mp_map index;        /* id -> mp_swim_rec* (others only) */
    mp_swim_rec **nodes; /* the same records, in probe order */
    size_t node_count, node_cap;
    size_t probe_pos;
    size_t alive_count, suspect_count, dead_count; /* dead: not left */

    mp_probe probe;
    uint64_t seq;
    /* seqs of SYNCs sent, answer not yet used (0 = free slot): a duplicated
     * or unsolicited SYNC_REPLY is not answered with a second follow-up. */
    uint64_t syncs[MP_SWIM_MAX_SYNCS];
    size_t sync_next; /* the slot the next SYNC takes (a ring) */
    uint64_t next_probe_ms, next_gossip_ms, next_push_pull_ms;
    uint64_t gossip_round;       /* gossip rounds so far (the first is 1) */
    uint64_t early_push_pull_ms; /* no push-pull is brought forward before */
    char *early_peer;            /* the next push-pull goes to this member (revived), if alive */
    uint64_t scan_ms;            /* the next suspicion deadline or dead expiry */

    mp_map news_index; /* kind byte + key -> mp_news* */
    mp_news **news;
    size_t news_count, news_cap;
    uint64_t news_dropped; /* news dropped at MP_SWIM_MAX_NEWS */
    uint64_t news_order;

    mp_out *out;
    size_t out_head, out_len, out_cap;
    mp_out cur; /* handed out by mp_swim_next_send */

    mp_relay *relays;
    size_t relay_count, relay_cap;

    char **seeds;
    size_t seed_count;
    bool joining;
    uint64_t join_retry_ms;
    /* The reconnect timer runs only while there is something to reconnect
     * to (a DEAD member, or seeds while no member is alive). */
    bool reconnect_armed;
    uint64_t next_reconnect_ms;

    mp_swim_rec **pick; /* scratch for random choices */
    size_t pick_cap;
    mp_buf scratch, keybuf;
    mp_swim_stats stats;
};

#define MP_GROW(arr, count, cap) (MP_VEC_GROW(arr, cap, (count) + 1, 8) == MPREG_OK)

/* The cluster size the formulas use: alive and suspect members, self included. */
static double mp_cluster_n(const mp_swim *s) {
    return (double)(s->alive_count + s->suspect_count + 1);
}

static uint64_t mp_suspicion_timeout(const mp_swim *s) {
    double scale = log10(mp_cluster_n(s));
    scale = scale < 1.0 ? 1.0 : scale;
    return (uint64_t)((double)s->cfg.suspicion_mult * scale * (double)s->cfg.probe_interval_ms);
}

static uint32_t mp_retransmit_limit(const mp_swim *s) {
    uint32_t l = s->cfg.retransmit_mult * (uint32_t)ceil(log10(mp_cluster_n(s) + 1.0));
    return l ? l : 1;
}

static void mp_rec_view(const mp_swim_rec *r, mp_member *m) {
    *m = (mp_member){r->id,
                     r->addr,
                     r->generation,
                     r->incarnation,
                     r->state,
                     r->since_ms,
                     r->key_len ? r->key : NULL,
                     r->key_len};
}

/* What a record on the wire says, as the delegate sees it (views into the
 * message; id and addr copied to NUL-terminated buffers by the caller). */
static void mp_wmember_view(const mp_wmember *u, const char *id, const char *addr, mp_member *m) {
    *m = (mp_member){
        id,        addr, u->generation, u->incarnation, u->state, 0, u->key.len ? u->key.ptr : NULL,
        u->key.len};
}

/* key.len is at most MP_SWIM_MAX_KEY: the decoder and mp_swim_new check it. */
static void mp_rec_set_key(mp_swim_rec *r, mp_bytes key) {
    if (key.len && key.len <= MP_SWIM_MAX_KEY) {
        memcpy(r->key, key.ptr, key.len);
        r->key_len = (uint8_t)key.len;
    }
}

/* Do the listed record and a claim name two different processes? Only
 * when both keys are known: a record without one is judged by the other
 * rules alone. */
static bool mp_key_differs(const mp_swim_rec *r, mp_bytes key) {
    return r->key_len && key.len && (r->key_len != key.len || memcmp(r->key, key.ptr, key.len));
}

static void mp_emit(mp_swim *s, mp_member_event_kind ev, const mp_swim_rec *r) {
    mp_member m;
    mp_rec_view(r, &m);
    s->d.on_member(s->d.ud, ev, &m);
}

static mp_swim_rec *mp_lookup(const mp_swim *s, mp_str id) {
    return mp_map_get(&s->index, id.ptr, id.len);
}

static void mp_count(mp_swim *s, mp_member_state st, int delta) {
    if (st == MP_MEMBER_ALIVE) {
        s->alive_count += (size_t)delta;
    } else if (st == MP_MEMBER_SUSPECT) {
        s->suspect_count += (size_t)delta;
    } else if (st == MP_MEMBER_DEAD) {
        s->dead_count += (size_t)delta;
    }
}

/* How long a gone member stays listed. A dead one may be a live process on
 * the far side of a partition: it is kept (and tried again) for the
 * reconnect timeout. One that left said so itself: dead_keep_ms is enough
 * to refuse its late ALIVEs. */
static uint64_t mp_keep_ms(const mp_swim *s, mp_member_state st) {
    return st == MP_MEMBER_DEAD ? s->cfg.reconnect_timeout_ms : s->cfg.dead_keep_ms;
}

/* Is there anything the reconnect timer would do? */
static bool mp_reconnect_needed(const mp_swim *s) {
    return !s->left &&
           (s->dead_count > 0 || (s->seed_count > 0 && !s->joining && s->alive_count == 0));
}

/* Starts the reconnect timer if it is not running: the first attempt
 * comes between half an interval and an interval later (random, so that
 * the nodes of one side of a partition do not all try at once). A timer
 * left armed while no tick came (a lone node) and overdue by more than an
 * interval counts as stopped. */
static void mp_reconnect_arm(mp_swim *s, uint64_t now) {
    if (!mp_reconnect_needed(s) ||
        (s->reconnect_armed &&
         now <= mp_add_sat(s->next_reconnect_ms, s->cfg.reconnect_interval_ms))) {
        return;
    }
    uint32_t iv = s->cfg.reconnect_interval_ms;
    s->reconnect_armed = true;
    s->next_reconnect_ms = mp_add_sat(now, iv / 2 + mp_rng_below(s->rng, iv / 2 + 1));
}

/* Moves r to state st as of now, arming the suspicion or expiry timer. */
static void mp_rec_set_state(mp_swim *s, mp_swim_rec *r, mp_member_state st, uint64_t now) {
    mp_count(s, r->state, -1);
    mp_count(s, st, +1);
    r->state = st;
    r->since_ms = now;
    if (st == MP_MEMBER_SUSPECT) {
        r->suspect_deadline_ms = mp_add_sat(now, mp_suspicion_timeout(s));
        s->scan_ms = mp_min_u64(s->scan_ms, r->suspect_deadline_ms);
    } else if (mp_gone(st)) {
        s->scan_ms = mp_min_u64(s->scan_ms, mp_add_sat(now, mp_keep_ms(s, st)));
    }
    mp_reconnect_arm(s, now);
}

static bool mp_rec_set_addr(mp_swim_rec *r, mp_str addr) {
    char *a = mp_strndup(addr.ptr, addr.len);
    if (!a) {
        return false;
    }
    free(r->addr);
    r->addr = a;
    return true;
}

static void mp_rec_free(mp_swim_rec *r) {
    free(r->id);
    free(r->addr);
    free(r);
}

static void mp_rec_remove(mp_swim *s, mp_swim_rec *r);

/* Others a node lists at most: with self, the member list must fit in one
 * message. */
#define MP_SWIM_MAX_OTHERS (MP_SWIM_MAX_MEMBERS - 1)

/* Makes room for one more member in a full table: the member gone longest
 * goes (O(n), but only at the bound). False when every member is alive or
 * suspect. */
static bool mp_evict_oldest_gone(mp_swim *s) {
    mp_swim_rec *oldest = NULL;
    for (size_t i = 0; i < s->node_count; i++) {
        mp_swim_rec *r = s->nodes[i];
        if (mp_gone(r->state) && (!oldest || r->since_ms < oldest->since_ms)) {
            oldest = r;
        }
    }
    if (oldest) {
        mp_rec_remove(s, oldest);
    }
    return oldest != NULL;
}

/* A new member, at a random place in the probe order so that members that
 * join together are not probed in the order they arrived. At the bound a
 * gone stranger is not recorded (recording it would only push out another
 * gone member), and an alive one takes the place of the longest gone. */
static mp_swim_rec *mp_rec_add(mp_swim *s, const mp_wmember *u, uint64_t now) {
    if (s->node_count >= MP_SWIM_MAX_OTHERS && (mp_gone(u->state) || !mp_evict_oldest_gone(s))) {
        return NULL;
    }
    if (!MP_GROW(s->nodes, s->node_count, s->node_cap)) {
        return NULL;
    }
    mp_swim_rec *r = calloc(1, sizeof *r);
    if (!r) {
        return NULL;
    }
    r->id = mp_strndup(u->id.ptr, u->id.len);
    r->addr = mp_strndup(u->addr.ptr, u->addr.len);
    if (!r->id || !r->addr || mp_map_put(&s->index, u->id.ptr, u->id.len, r, NULL) != MPREG_OK) {
        mp_rec_free(r);
        return NULL;
    }
    r->generation = u->generation;
    r->incarnation = u->incarnation;
    mp_rec_set_key(r, u->key);
    r->state = MP_MEMBER_LEFT; /* counted by neither; set properly below */
    size_t at = (size_t)mp_rng_below(s->rng, s->node_count + 1);
    if (at < s->node_count) {
        s->nodes[s->node_count] = s->nodes[at];
        s->nodes[s->node_count]->pos = s->node_count;
    }
    s->nodes[at] = r;
    r->pos = at;
    s->node_count++;
    mp_rec_set_state(s, r, u->state, now);
    return r;
}

static void mp_rec_remove(mp_swim *s, mp_swim_rec *r) {
    size_t at = r->pos;
    memmove(&s->nodes[at], &s->nodes[at + 1], (s->node_count - at - 1) * sizeof *s->nodes);
    s->node_count--;
    for (size_t i = at; i < s->node_count; i++) {
        s->nodes[i]->pos = i;
    }
    if (at < s->probe_pos) {
        s->probe_pos--;
    }
    if (s->probe.target == r) {
        s->probe.active = false;
        s->probe.target = NULL;
    }
    mp_count(s, r->state, -1);
    mp_map_remove(&s->index, r->id, strlen(r->id));
    mp_rec_free(r);
}

static void mp_shuffle(mp_swim *s) {
    for (size_t i = s->node_count; i > 1; i--) {
        size_t j = (size_t)mp_rng_below(s->rng, i);
        mp_swim_rec *t = s->nodes[i - 1];
        s->nodes[i - 1] = s->nodes[j];
        s->nodes[j] = t;
    }
    for (size_t i = 0; i < s->node_count; i++) {
        s->nodes[i]->pos = i;
    }
}

/* Shuffles the first k of pick[lo..hi) into place (a partial
 * Fisher-Yates). */
static void mp_pick_shuffle(mp_swim *s, size_t lo, size_t hi, size_t k) {
    for (size_t i = lo; i < lo + k; i++) {
        size_t j = i + (size_t)mp_rng_below(s->rng, hi - i);
        mp_swim_rec *t = s->pick[i];
        s->pick[i] = s->pick[j];
        s->pick[j] = t;
    }
}

/* Up to k distinct random members: alive ones, and suspect ones too when
 * suspect_ok, never `except`; members that were targets of gossip round
 * `avoid` (0: none) only when there are not enough others. Returns how
 * many are in s->pick. */
static size_t mp_pick(mp_swim *s, size_t k, bool suspect_ok, const mp_swim_rec *except,
                      uint64_t avoid) {
    if (s->pick_cap < s->node_count) {
        mp_swim_rec **p = realloc(s->pick, s->node_count * sizeof *p);
        if (!p) {
            return 0;
        }
        s->pick = p;
        s->pick_cap = s->node_count;
    }
    /* Preferred candidates go to the front, the avoided ones after. */
    size_t n = 0, pref = 0;
    for (size_t i = 0; i < s->node_count; i++) {
        mp_swim_rec *r = s->nodes[i];
        if (r == except ||
            !(r->state == MP_MEMBER_ALIVE || (suspect_ok && r->state == MP_MEMBER_SUSPECT))) {
            continue;
        }
        s->pick[n++] = r;
        if (avoid == 0 || r->gossip_round != avoid) {
            s->pick[n - 1] = s->pick[pref];
            s->pick[pref++] = r;
        }
    }
    k = k < n ? k : n;
    if (k <= pref) {
        mp_pick_shuffle(s, 0, pref, k);
    } else {
        mp_pick_shuffle(s, pref, n, k - pref);
    }
    return k;
}

/* --- the news queue ---------------------------------------------------------------- */

/* The index key of queued news: a kind byte, then the key: 'm' + member
 * id, 'i' + item key, or 'h' + the hash of an unkeyed item's bytes. */
static const mp_buf *mp_news_key(mp_swim *s, uint8_t kind, const void *key, size_t len) {
    mp_buf_clear(&s->keybuf);
    if (mp_buf_append(&s->keybuf, &kind, 1) || mp_buf_append(&s->keybuf, key, len)) {
        return NULL;
    }
    return &s->keybuf;
}

static void mp_news_free(mp_news *n) {
    free(n->ikey);
    free(n->bytes);
    free(n);
}

/* Queues encoded news. A queued one with the same kind and key is replaced
 * (newer news about the same thing makes the old one moot); an unkeyed item
 * whose very bytes are queued already is not queued twice. */
static void mp_news_drop(mp_swim *s, mp_news *n);

static int mp_news_age_cmp(const void *pa, const void *pb) {
    const mp_news *a = *(mp_news *const *)pa, *b = *(mp_news *const *)pb;
    if (a->is_item != b->is_item) {
        return a->is_item ? -1 : 1; /* catalog items go before membership news */
    }
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Makes room at MP_SWIM_MAX_NEWS: the oldest quarter of the catalog items
 * goes at once (one sort per MP_SWIM_MAX_NEWS / 4 puts, not a scan per
 * put); membership news is a few bytes per member and is what keeps
 * failure detection honest, so it goes only when there is nothing else.
 * What is dropped is not lost for good: push-pull compares digests and
 * sends what differs. */
static void mp_news_make_room(mp_swim *s) {
    qsort(s->news, s->news_count, sizeof *s->news, mp_news_age_cmp);
    size_t drop = s->news_count / 4 ? s->news_count / 4 : 1;
    for (size_t i = 0; i < drop; i++) {
        mp_news_drop(s, s->news[i]);
    }
    memmove(s->news, s->news + drop, (s->news_count - drop) * sizeof *s->news);
    s->news_count -= drop;
    s->news_dropped += drop;
}

static mpreg_err mp_news_put(mp_swim *s, bool is_item, const char *key, const uint8_t *bytes,
                             size_t len) {
    const mp_buf *k;
    uint64_t h = 0;
    if (key) {
        k = mp_news_key(s, is_item ? 'i' : 'm', key, strlen(key));
    } else {
        h = mp_hash_bytes(bytes, len);
        k = mp_news_key(s, 'h', &h, sizeof h);
    }
    if (!k) {
        return MPREG_E_NOMEM;
    }
    mp_news *old = mp_map_get(&s->news_index, k->data, k->len);
    if (old && !key) {
        if (old->len == len && memcmp(old->bytes, bytes, len) == 0) {
            return MPREG_OK;
        }
        k = NULL; /* a hash collision: queue it, unindexed */
    }
    uint8_t *copy = malloc(len);
    if (!copy) {
        return MPREG_E_NOMEM;
    }
    memcpy(copy, bytes, len);
    if (old) {
        free(old->bytes);
        old->bytes = copy;
        old->len = len;
        old->transmits = 0;
        old->order = ++s->news_order;
        return MPREG_OK;
    }
    if (s->news_count >= MP_SWIM_MAX_NEWS) {
        mp_news_make_room(s);
    }
    mp_news *n = calloc(1, sizeof *n);
    if (n && k) {
        /* Kept with the news so that dropping it never needs memory. */
        n->ikey = malloc(k->len);
        n->ilen = k->len;
        if (n->ikey) {
            memcpy(n->ikey, k->data, k->len);
        }
    }
    if (!n || (k && !n->ikey) || !MP_GROW(s->news, s->news_count, s->news_cap) ||
        (k && mp_map_put(&s->news_index, n->ikey, n->ilen, n, NULL) != MPREG_OK)) {
        if (n) {
            free(n->ikey);
        }
        free(n);
        free(copy);
        return MPREG_E_NOMEM;
    }
    n->is_item = is_item;
    n->bytes = copy;
    n->len = len;
    n->order = ++s->news_order;
    s->news[s->news_count++] = n;
    MP_ASSERT(s->news_count <= MP_SWIM_MAX_NEWS);
    return MPREG_OK;
}

static int mp_pack_key(msgpack_packer *pk, uint32_t key) {
    return msgpack_pack_uint8(pk, (uint8_t)key);
}

static int mp_pack_text(msgpack_packer *pk, const char *s) {
    size_t len = strlen(s);
    int rc = msgpack_pack_str(pk, len);
    rc |= msgpack_pack_str_body(pk, s, len);
    return rc;
}

/* A member record: id, addr, generation, incarnation, state (absent when
 * alive), key (absent when none). */
static int mp_pack_rec(msgpack_packer *pk, const mp_swim_rec *r) {
    bool alive = r->state == MP_MEMBER_ALIVE;
    int rc = msgpack_pack_map(pk, 4 + !alive + (r->key_len > 0));
    rc |= mp_pack_key(pk, MP_MK_ID);
    rc |= mp_pack_text(pk, r->id);
    rc |= mp_pack_key(pk, MP_MK_ADDR);
    rc |= mp_pack_text(pk, r->addr);
    rc |= mp_pack_key(pk, MP_MK_GENERATION);
    rc |= msgpack_pack_uint64(pk, r->generation);
    rc |= mp_pack_key(pk, MP_MK_INCARNATION);
    rc |= msgpack_pack_uint64(pk, r->incarnation);
    if (!alive) {
        rc |= mp_pack_key(pk, MP_MK_STATE);
        rc |= msgpack_pack_uint8(pk, (uint8_t)r->state);
    }
    if (r->key_len) {
        rc |= mp_pack_key(pk, MP_MK_KEY);
        rc |= msgpack_pack_bin(pk, r->key_len);
        rc |= msgpack_pack_bin_body(pk, r->key, r->key_len);
    }
    return rc;
}

/* Queues what this node now believes about r (self included). */
static void mp_news_rec(mp_swim *s, const mp_swim_rec *r) {
    msgpack_packer pk;
    mp_buf_clear(&s->scratch);
    msgpack_packer_init(&pk, &s->scratch, mp_buf_msgpack_write);
    if (mp_pack_rec(&pk, r) == 0) {
        /* Out of memory: the news is lost here, push-pull repairs it. */
        (void)mp_news_put(s, false, r->id, s->scratch.data, s->scratch.len);
    }
}

static mpreg_err mp_news_item(mp_swim *s, const char *key, const uint8_t *data, size_t len) {
    msgpack_packer pk;
    mp_buf_clear(&s->scratch);
    msgpack_packer_init(&pk, &s->scratch, mp_buf_msgpack_write);
    int rc = msgpack_pack_bin(&pk, len);
    rc |= msgpack_pack_bin_body(&pk, data, len);
    if (rc) {
        return MPREG_E_NOMEM;
    }
    return mp_news_put(s, true, key, s->scratch.data, s->scratch.len);
}

/* Fewest transmits first; among equals the newest. */
static int mp_news_cmp(const void *pa, const void *pb) {
    const mp_news *a = *(mp_news *const *)pa, *b = *(mp_news *const *)pb;
    if (a->transmits != b->transmits) {
        return a->transmits < b->transmits ? -1 : 1;
    }
    return a->order > b->order ? -1 : a->order < b->order;
}

/* Marks the news the next message carries: in queue order, each that fits
 * in what is left of max_piggyback_bytes. The first always goes, however
 * big, or an item larger than the budget would never leave. */
static void mp_news_select(mp_swim *s, size_t *updates, size_t *items) {
    *updates = *items = 0;
    qsort(s->news, s->news_count, sizeof *s->news, mp_news_cmp);
    size_t budget = s->cfg.max_piggyback_bytes;
    bool any = false;
    for (size_t i = 0; i < s->news_count; i++) {
        mp_news *n = s->news[i];
        n->selected = budget > 0 && (n->len <= budget || !any);
        if (n->selected) {
            budget -= n->len < budget ? n->len : budget;
            any = true;
            *(n->is_item ? items : updates) += 1;
        }
    }
}

static void mp_news_drop(mp_swim *s, mp_news *n) {
    if (n->ikey) {
        mp_map_remove(&s->news_index, n->ikey, n->ilen);
    }
    mp_news_free(n);
}

/* The selected news went out once more; what has gone out enough is done. */
static void mp_news_commit(mp_swim *s, bool sent) {
    uint32_t limit = mp_retransmit_limit(s);
    size_t keep = 0;
    for (size_t i = 0; i < s->news_count; i++) {
        mp_news *n = s->news[i];
        if (n->selected && sent && ++n->transmits >= limit) {
            mp_news_drop(s, n);
            continue;
        }
        n->selected = false;
        s->news[keep++] = n;
    }
    s->news_count = keep;
}

/* --- the member digest ------------------------------------------------------------ */

/* FNV-1a 64 over bytes, continuing from h. */
static uint64_t mp_fnv1a(uint64_t h, const void *data, size_t len) {
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t mp_fnv1a_u64(uint64_t h, uint64_t v) {
    uint8_t be[8];
    for (int i = 0; i < 8; i++) {
        be[i] = (uint8_t)(v >> (56 - 8 * i));
    }
    return mp_fnv1a(h, be, sizeof be);
}

/* One member's contribution (docs/PROTOCOL.md §12.9): FNV-1a 64 of id, NUL,
 * addr, NUL, generation and incarnation (8 bytes big-endian each) and the
 * state byte, then MurmurHash3's 64-bit finalizer so that the sum of many
 * spreads over all 64 bits. Only what every node that agrees says the
 * same: never since_ms or timers. Defined here, not with core/map.h's
 * hash, as the wire depends on it. */
static uint64_t mp_rec_hash(const mp_swim_rec *r) {
    uint64_t h = 0xcbf29ce484222325ull;
    h = mp_fnv1a(h, r->id, strlen(r->id) + 1);
    h = mp_fnv1a(h, r->addr, strlen(r->addr) + 1);
    h = mp_fnv1a_u64(h, r->generation);
    h = mp_fnv1a_u64(h, r->incarnation);
    uint8_t st = (uint8_t)r->state;
    h = mp_fnv1a(h, &st, 1);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* The sum (mod 2^64) over every member listed alive or suspect, self
 * included unless it left: independent of order. Computed when needed
 * (once per push-pull), O(n) hashes. Dead and left members do not count:
 * nodes forget them at different times (each a keep time after it heard of
 * the end), and one that joined later never lists them (a list does not
 * teach gone strangers, mp_apply_listed), so counting them would make two
 * tables that agree on every live member differ for hours, and every
 * push-pull between them ship whole lists. */
static uint64_t mp_members_digest(const mp_swim *s) {
    uint64_t d = s->left ? 0 : mp_rec_hash(&s->self);
    for (size_t i = 0; i < s->node_count; i++) {
        if (!mp_gone(s->nodes[i]->state)) {
            d += mp_rec_hash(s->nodes[i]);
        }
    }
    return d;
}

/* --- the outbox -------------------------------------------------------------------- */

static void mp_out_free(mp_out *o) {
    free(o->to_id);
    free(o->to_addr);
    mp_buf_free(&o->payload);
    memset(o, 0, sizeof *o);
}

static mp_out *mp_out_push(mp_swim *s, const char *to_id, const char *to_addr) {
    if (s->out_head > 0 && s->out_head == s->out_len) {
        s->out_head = s->out_len = 0;
    }
    if (!MP_GROW(s->out, s->out_len, s->out_cap)) {
        return NULL;
    }
    mp_out *o = &s->out[s->out_len];
    memset(o, 0, sizeof *o);
    o->to_id = to_id ? mp_strndup(to_id, strlen(to_id)) : NULL;
    o->to_addr = mp_strndup(to_addr, strlen(to_addr));
    if ((to_id && !o->to_id) || !o->to_addr) {
        mp_out_free(o);
        return NULL;
    }
    s->out_len++;
    return o;
}

/* What one outgoing message holds besides version, type and from. */
typedef struct mp_msg {
    mp_wtype type;
    uint64_t seq;
    const char *target;
    const char *target_addr;
    bool piggyback;            /* carry queued news */
    const mp_swim_rec *notice; /* an extra update, first: what we think of the receiver */
    bool members;              /* SYNC/SYNC_REPLY: the member list (else sent empty) */
    bool join;
    bool want_state;
    bool want_members;
    uint64_t digest;
    uint64_t members_digest; /* SYNC/SYNC_REPLY: always sent */
    const mp_buf *state;
} mp_msg;

static bool mp_is_sync(mp_wtype t) {
    return t == MP_W_SYNC || t == MP_W_SYNC_REPLY;
}

/* Probes always carry a seq; a SYNC carries one, and its answer echoes
 * it; the initiator's follow-up SYNC_REPLY carries none. */
static bool mp_has_seq(const mp_msg *m) {
    return m->type == MP_W_PING || m->type == MP_W_PING_REQ || m->type == MP_W_ACK ||
           (mp_is_sync(m->type) && m->seq != 0);
}

static int mp_pack_members(msgpack_packer *pk, const mp_swim *s, bool all) {
    if (!all) {
        return msgpack_pack_array(pk, 0);
    }
    int rc = msgpack_pack_array(pk, (uint32_t)(s->node_count + 1));
    rc |= mp_pack_rec(pk, &s->self);
    for (size_t i = 0; i < s->node_count && rc == 0; i++) {
        rc |= mp_pack_rec(pk, s->nodes[i]);
    }
    return rc;
}

static int mp_pack_news(msgpack_packer *pk, mp_buf *b, const mp_swim *s, const mp_msg *m,
                        size_t updates, size_t items) {
    int rc = 0;
    size_t all_updates = updates + (m->notice != NULL);
    if (all_updates) {
        rc |= mp_pack_key(pk, MP_K_UPDATES);
        rc |= msgpack_pack_array(pk, (uint32_t)all_updates);
        if (m->notice) {
            rc |= mp_pack_rec(pk, m->notice);
        }
        for (size_t i = 0; i < s->news_count && rc == 0; i++) {
            const mp_news *n = s->news[i];
            if (n->selected && !n->is_item) {
                rc |= mp_buf_append(b, n->bytes, n->len) != MPREG_OK;
            }
        }
    }
    if (items) {
        rc |= mp_pack_key(pk, MP_K_ITEMS);
        rc |= msgpack_pack_array(pk, (uint32_t)items);
        for (size_t i = 0; i < s->news_count && rc == 0; i++) {
            const mp_news *n = s->news[i];
            if (n->selected && n->is_item) {
                rc |= mp_buf_append(b, n->bytes, n->len) != MPREG_OK;
            }
        }
    }
    return rc;
}

/* Fields in ascending number order; optional ones only when they say
 * something. msgpack-c's packer writes each value at once through the
 * callback, so raw news bytes can be appended to the buffer in between. */
static int mp_pack_msg(msgpack_packer *pk, mp_buf *b, const mp_swim *s, const mp_msg *m,
                       size_t updates, size_t items) {
    bool sync = mp_is_sync(m->type);
    uint32_t fields = 3 + mp_has_seq(m) + (m->target != NULL) + (m->target_addr != NULL) +
                      (updates + (m->notice != NULL) > 0) + (items > 0) + m->join + 3 * sync +
                      (m->state != NULL) + m->want_state + m->want_members;
    int rc = msgpack_pack_map(pk, fields);
    rc |= mp_pack_key(pk, MP_K_VERSION);
    rc |= msgpack_pack_uint8(pk, MP_SWIM_WIRE_VERSION);
    rc |= mp_pack_key(pk, MP_K_TYPE);
    rc |= msgpack_pack_uint8(pk, (uint8_t)m->type);
    if (mp_has_seq(m)) {
        rc |= mp_pack_key(pk, MP_K_SEQ);
        rc |= msgpack_pack_uint64(pk, m->seq);
    }
    rc |= mp_pack_key(pk, MP_K_FROM);
    rc |= mp_pack_rec(pk, &s->self);
    if (m->target) {
        rc |= mp_pack_key(pk, MP_K_TARGET);
        rc |= mp_pack_text(pk, m->target);
    }
    if (m->target_addr) {
        rc |= mp_pack_key(pk, MP_K_TARGET_ADDR);
        rc |= mp_pack_text(pk, m->target_addr);
    }
    rc |= mp_pack_news(pk, b, s, m, updates, items);
    if (m->join) {
        rc |= mp_pack_key(pk, MP_K_JOIN);
        rc |= msgpack_pack_true(pk);
    }
    if (sync) {
        rc |= mp_pack_key(pk, MP_K_MEMBERS);
        rc |= mp_pack_members(pk, s, m->members);
        rc |= mp_pack_key(pk, MP_K_DIGEST);
        rc |= msgpack_pack_uint64(pk, m->digest);
    }
    if (m->state) {
        rc |= mp_pack_key(pk, MP_K_STATE);
        rc |= msgpack_pack_bin(pk, m->state->len);
        rc |= msgpack_pack_bin_body(pk, m->state->data, m->state->len);
    }
    if (m->want_state) {
        rc |= mp_pack_key(pk, MP_K_WANT_STATE);
        rc |= msgpack_pack_true(pk);
    }
    if (sync) {
        rc |= mp_pack_key(pk, MP_K_MEMBERS_DIGEST);
        rc |= msgpack_pack_uint64(pk, m->members_digest);
    }
    if (m->want_members) {
        rc |= mp_pack_key(pk, MP_K_WANT_MEMBERS);
        rc |= msgpack_pack_true(pk);
    }
    return rc;
}

/* Encodes m into the outbox for (to_id, to_addr). Out of memory loses the
 * message, as a lossy network would: SWIM copes with that by design. */
static void mp_send(mp_swim *s, const char *to_id, const char *to_addr, const mp_msg *m) {
    size_t updates = 0, items = 0;
    if (m->piggyback) {
        mp_news_select(s, &updates, &items);
    }
    mp_out *o = mp_out_push(s, to_id, to_addr);
    int rc = -1;
    if (o) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &o->payload, mp_buf_msgpack_write);
        rc = mp_pack_msg(&pk, &o->payload, s, m, updates, items);
        if (rc) {
            mp_out_free(o);
            s->out_len--;
        } else {
            s->stats.msgs_sent++;
            s->stats.bytes_sent += o->payload.len;
        }
    }
    mp_news_commit(s, rc == 0);
}

static void mp_send_to(mp_swim *s, const mp_swim_rec *r, const mp_msg *m) {
    mp_send(s, r->id, r->addr, m);
}

/* --- applying what others say --------------------------------------------------------- */

/* Does update u beat what r says? A newer generation always does; within a
 * generation a gone member only comes back alive at a higher incarnation;
 * otherwise the higher incarnation, then the stronger state, wins. */
static bool mp_update_wins(const mp_swim_rec *r, const mp_wmember *u) {
    if (u->generation != r->generation) {
        return u->generation > r->generation;
    }
    if (mp_gone(r->state)) {
        return u->state == MP_MEMBER_ALIVE && u->incarnation > r->incarnation;
    }
    if (u->incarnation != r->incarnation) {
        return u->incarnation > r->incarnation;
    }
    return mp_rank(u->state) > mp_rank(r->state);
}

/* Someone says something about this node. Older generations are a past
 * life; a newer one is not ours to argue with. Within ours, being suspected
 * or declared dead or left at our incarnation or above is refuted by
 * raising ours above it (and so is an ALIVE above ours: only we speak for
 * our incarnation). */
/* A member we held dead is alive again (peer), or we were held dead (peer
 * NULL). That is a partition healing (or a false death): every node on
 * both sides refutes at once, and the news of it, and the catalog changes
 * it causes, goes out while each node still lists the far side dead, so its
 * retransmissions are spent on the near side; a node that missed some would
 * wait a whole interval for push-pull. So the next push-pull is brought
 * forward to a few gossip rounds from now (at most once per push-pull
 * interval; the delay lets the burst settle so that the exchange is of what
 * gossip missed) and goes to a revived member: one from the far side,
 * which has the far side's news. Digest first, it costs two small messages
 * when nothing was missed. */
static void mp_push_pull_soon(mp_swim *s, uint64_t now, const mp_swim_rec *peer) {
    if (s->left) {
        return;
    }
    if (now >= s->early_push_pull_ms) {
        uint64_t settle = 10ull * s->cfg.gossip_interval_ms;
        uint64_t at = mp_add_sat(now, settle + mp_rng_below(s->rng, settle + 1));
        s->next_push_pull_ms = mp_min_u64(s->next_push_pull_ms, at);
        s->early_push_pull_ms = mp_add_sat(now, s->cfg.push_pull_interval_ms);
    } else if (s->next_push_pull_ms > mp_add_sat(now, 20ull * s->cfg.gossip_interval_ms)) {
        return; /* no push-pull soon: this revival is covered by the regular ones */
    }
    if (peer && !s->early_peer) {
        s->early_peer = mp_strndup(peer->id, strlen(peer->id)); /* NULL: a random one */
    }
}

/* A claim to be r (listed alive or suspect, or self) with another key was
 * refused: counted, and the delegate told. */
static void mp_conflict(mp_swim *s, const mp_swim_rec *r, const mp_wmember *u, bool by_itself) {
    s->stats.identity_conflicts++;
    if (!s->d.on_conflict) {
        return;
    }
    char id[MP_SWIM_MAX_ID + 1], addr[MP_SWIM_MAX_ID + 1];
    memcpy(id, u->id.ptr, u->id.len);
    id[u->id.len] = '\0';
    memcpy(addr, u->addr.ptr, u->addr.len);
    addr[u->addr.len] = '\0';
    mp_member listed, claimant;
    mp_rec_view(r, &listed);
    mp_wmember_view(u, id, addr, &claimant);
    s->d.on_conflict(s->d.ud, &listed, &claimant, by_itself);
}

/* Is u a claim on r's id by another process while r holds it (alive or
 * suspect; self always holds its own)? A gone claim (DEAD or LEFT of
 * another process) is old news about that one, not a claim: ignored
 * without a word. */
static bool mp_refused_claim(const mp_swim_rec *r, const mp_wmember *u, bool self) {
    return mp_key_differs(r, u->key) && (self || !mp_gone(r->state));
}

static void mp_apply_self(mp_swim *s, const mp_wmember *u, uint64_t now) {
    mp_swim_rec *me = &s->self;
    if (mp_key_differs(me, u->key)) {
        /* Another process says it is us: never ours to refute or accept. */
        if (!mp_gone(u->state)) {
            mp_conflict(s, me, u, false);
        }
        return;
    }
    if (s->left || u->generation != me->generation || u->incarnation == UINT64_MAX) {
        return;
    }
    bool accused = u->state != MP_MEMBER_ALIVE && u->incarnation >= me->incarnation;
    if (!accused && !(u->state == MP_MEMBER_ALIVE && u->incarnation > me->incarnation)) {
        return;
    }
    me->incarnation = u->incarnation + 1;
    if (accused) {
        s->stats.refutations++;
    }
    if (u->state == MP_MEMBER_DEAD) {
        mp_push_pull_soon(s, now, NULL);
    }
    mp_news_rec(s, me);
}

static void mp_apply_new(mp_swim *s, const mp_wmember *u, uint64_t now) {
    /* A suspicion of a member never seen says nothing usable. A death or
     * leave is kept (silently: it was never alive here) so that a late
     * ALIVE of that incarnation is refused. */
    if (u->state == MP_MEMBER_SUSPECT) {
        return;
    }
    mp_swim_rec *r = mp_rec_add(s, u, now);
    if (r && r->state == MP_MEMBER_ALIVE) {
        mp_news_rec(s, r);
        mp_emit(s, MP_MEMBER_JOINED, r);
    }
}

static void mp_apply_events(mp_swim *s, const mp_swim_rec *r, mp_member_state old, bool newgen,
                            bool moved) {
    switch (r->state) {
    case MP_MEMBER_ALIVE:
        if (newgen || mp_gone(old)) {
            mp_emit(s, MP_MEMBER_JOINED, r);
        } else if (old == MP_MEMBER_SUSPECT) {
            mp_emit(s, MP_MEMBER_RECOVERED, r);
        } else if (moved) {
            mp_emit(s, MP_MEMBER_UPDATED, r);
        }
        break;
    case MP_MEMBER_SUSPECT:
        if (newgen || mp_gone(old)) {
            mp_emit(s, MP_MEMBER_JOINED, r); /* a new process, suspected already */
        }
        if (newgen || old != MP_MEMBER_SUSPECT) {
            mp_emit(s, MP_MEMBER_SUSPECTED, r);
        } else if (moved) {
            mp_emit(s, MP_MEMBER_UPDATED, r);
        }
        break;
    case MP_MEMBER_DEAD:
        if (newgen || !mp_gone(old)) {
            mp_emit(s, MP_MEMBER_DIED, r);
        }
        break;
    case MP_MEMBER_LEFT:
        if (newgen || !mp_gone(old)) {
            mp_emit(s, MP_MEMBER_LEFT_EV, r);
        }
        break;
    }
}

/* Applies one member update; news is queued for retransmission here too,
 * which is what makes it epidemic. */
static void mp_apply(mp_swim *s, const mp_wmember *u, uint64_t now) {
    if (mp_str_eq_c(u->id, s->self.id)) {
        mp_apply_self(s, u, now);
        return;
    }
    mp_swim_rec *r = mp_lookup(s, u->id);
    if (!r) {
        mp_apply_new(s, u, now);
        return;
    }
    /* Another process under r's id (another key): refused while r holds
     * the id; once r is gone, a live one takes the id over as a new
     * process would, whatever its generation (the generation counts a
     * process's restarts, and this is not a restart of r). */
    bool newkey = mp_key_differs(r, u->key);
    if (newkey && !mp_gone(r->state)) {
        if (!mp_gone(u->state)) {
            mp_conflict(s, r, u, false);
        }
        return;
    }
    if (newkey ? mp_gone(u->state) : !mp_update_wins(r, u)) {
        return;
    }
    bool moved = !mp_str_eq_c(u->addr, r->addr);
    if (moved && !mp_rec_set_addr(r, u->addr)) {
        return;
    }
    mp_member_state old = r->state;
    bool newgen = newkey || u->generation > r->generation;
    r->generation = u->generation;
    r->incarnation = u->incarnation;
    if (newkey) {
        r->key_len = 0;
    }
    mp_rec_set_key(r, u->key);
    if (newgen || old != u->state) {
        mp_rec_set_state(s, r, u->state, now);
    }
    r->noticed = false;
    if ((newgen || moved) && s->probe.active && s->probe.target == r) {
        /* The probe in flight went to the previous process, or to the old
         * address: its silence says nothing of this one. */
        s->probe.active = false;
    }
    mp_news_rec(s, r);
    mp_apply_events(s, r, old, newgen, moved);
    if (!newgen && old == MP_MEMBER_DEAD && r->state == MP_MEMBER_ALIVE) {
        mp_push_pull_soon(s, now, r);
    }
}

/* A record from a push-pull member list. Such a list is a whole table that
 * may be old news from the far side of a partition: a DEAD in it about a
 * member listed here alive (or suspect) in the same generation is taken as
 * SUSPECT, as memberlist does, so that the member gets a suspicion timeout
 * to refute instead of being declared dead here at once (a partition's
 * verdicts would otherwise kill every member of the other side on heal).
 *
 * A DEAD or LEFT in a list about a member not listed here is ignored (as
 * memberlist does): this node never knew it, or has forgotten it already.
 * Each node forgets a gone member its keep time after it heard of the end,
 * and nodes hear of it at different times; recording it again from the
 * list of a node that heard later would restart the keep time here, and
 * that node would in turn be taught it back by this one once it forgot,
 * and so on for as long as push-pulls cross the gaps.
 *
 * Anything else is applied as gossip is. */
static void mp_apply_listed(mp_swim *s, const mp_wmember *u, uint64_t now) {
    if (mp_gone(u->state) && !mp_str_eq_c(u->id, s->self.id)) {
        const mp_swim_rec *r = mp_lookup(s, u->id);
        if (!r) {
            return;
        }
        if (u->state == MP_MEMBER_DEAD && !mp_gone(r->state) && r->generation == u->generation) {
            mp_wmember v = *u;
            v.state = MP_MEMBER_SUSPECT;
            mp_apply(s, &v, now);
            return;
        }
    }
    mp_apply(s, u, now);
}

/* A member that talks to us while we hold it suspect or dead at its own
 * incarnation is told so directly (at most once a gossip interval), so
 * that it refutes without waiting for the news to find it by chance. */
static void mp_maybe_notice(mp_swim *s, const mp_wmember *from, uint64_t now) {
    mp_swim_rec *r = mp_lookup(s, from->id);
    if (!r || r->generation != from->generation || from->state != MP_MEMBER_ALIVE ||
        (r->state != MP_MEMBER_SUSPECT && r->state != MP_MEMBER_DEAD) ||
        r->incarnation < from->incarnation) {
        return;
    }
    if (r->noticed && now < mp_add_sat(r->noticed_ms, s->cfg.gossip_interval_ms)) {
        return;
    }
    r->noticed = true;
    r->noticed_ms = now;
    mp_send_to(s, r, &(mp_msg){.type = MP_W_GOSSIP, .piggyback = true, .notice = r});
}

/* --- probing ---------------------------------------------------------------------------- */

/* The next member to probe, skipping dead and left ones; NULL when every
 * member is. The walk may reshuffle the list midway, so it takes up to two
 * passes to be sure to have seen everyone (many gone members are normal:
 * dead ones are kept for the reconnect timeout). */
static mp_swim_rec *mp_next_target(mp_swim *s) {
    for (size_t tries = 0; tries < 2 * s->node_count; tries++) {
        if (s->probe_pos >= s->node_count) {
            mp_shuffle(s);
            s->probe_pos = 0;
        }
        mp_swim_rec *r = s->nodes[s->probe_pos++];
        if (!mp_gone(r->state)) {
            return r;
        }
    }
    return NULL;
}

static void mp_probe_start(mp_swim *s, uint64_t now) {
    mp_swim_rec *t = mp_next_target(s);
    if (!t) {
        s->next_probe_ms = mp_add_sat(now, s->cfg.probe_interval_ms);
        return;
    }
    s->probe = (mp_probe){.active = true, .target = t, .seq = ++s->seq, .start_ms = now};
    s->stats.probes++;
    mp_send_to(
        s, t,
        &(mp_msg){.type = MP_W_PING, .seq = s->probe.seq, .target = t->id, .piggyback = true});
    s->next_probe_ms = mp_add_sat(s->next_probe_ms, s->cfg.probe_interval_ms);
    if (s->next_probe_ms <= now) {
        s->next_probe_ms = mp_add_sat(now, s->cfg.probe_interval_ms);
    }
}

/* The direct PING got no ACK in time: ask others to try. */
static void mp_probe_indirect(mp_swim *s) {
    mp_swim_rec *t = s->probe.target;
    s->probe.indirect = true;
    size_t k = mp_pick(s, s->cfg.indirect_checks, false, t, 0);
    for (size_t i = 0; i < k; i++) {
        s->stats.indirect_probes++;
        mp_send_to(s, s->pick[i],
                   &(mp_msg){.type = MP_W_PING_REQ,
                             .seq = s->probe.seq,
                             .target = t->id,
                             .target_addr = t->addr,
                             .piggyback = true});
    }
}

static void mp_suspect(mp_swim *s, mp_swim_rec *r, uint64_t now) {
    if (r->state != MP_MEMBER_ALIVE) {
        return; /* already suspect, or gone meanwhile */
    }
    s->stats.suspicions++;
    mp_rec_set_state(s, r, MP_MEMBER_SUSPECT, now);
    r->noticed = false;
    mp_news_rec(s, r);
    mp_emit(s, MP_MEMBER_SUSPECTED, r);
}

static void mp_probe_tick(mp_swim *s, uint64_t now) {
    mp_probe *p = &s->probe;
    if (p->active && !p->indirect && now >= mp_add_sat(p->start_ms, s->cfg.probe_timeout_ms)) {
        mp_probe_indirect(s);
    }
    if (p->active && now >= mp_add_sat(p->start_ms, s->cfg.probe_interval_ms)) {
        p->active = false;
        mp_suspect(s, p->target, now);
    }
    if (!p->active && !s->left && now >= s->next_probe_ms) {
        mp_probe_start(s, now);
    }
}

/* --- timers ------------------------------------------------------------------------------- */

/* Suspects past their deadline die; the dead past reconnect_timeout_ms and
 * the left past dead_keep_ms are forgotten. Runs only when the earliest of
 * those times has come. */
static void mp_scan(mp_swim *s, uint64_t now) {
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < s->node_count;) {
        mp_swim_rec *r = s->nodes[i];
        if (r->state == MP_MEMBER_SUSPECT) {
            if (now < r->suspect_deadline_ms) {
                next = mp_min_u64(next, r->suspect_deadline_ms);
                i++;
                continue;
            }
            mp_rec_set_state(s, r, MP_MEMBER_DEAD, now);
            r->noticed = false;
            mp_news_rec(s, r);
            mp_emit(s, MP_MEMBER_DIED, r);
        }
        if (mp_gone(r->state)) {
            uint64_t until = mp_add_sat(r->since_ms, mp_keep_ms(s, r->state));
            if (now >= until) {
                mp_rec_remove(s, r);
                continue;
            }
            next = mp_min_u64(next, until);
        }
        i++;
    }
    s->scan_ms = next;
}

static void mp_relays_expire(mp_swim *s, uint64_t now) {
    size_t keep = 0;
    for (size_t i = 0; i < s->relay_count; i++) {
        mp_relay *r = &s->relays[i];
        if (now >= r->expires_ms) {
            free(r->to_id);
            free(r->to_addr);
        } else {
            s->relays[keep++] = *r;
        }
    }
    s->relay_count = keep;
}

/* A gossip round: gossip_nodes random members, other than the last
 * round's when there are enough. News usually goes out in two rounds, so
 * this way its 2 * gossip_nodes messages reach that many distinct members
 * instead of overlapping by chance (with 8 members, a third of the time a
 * given member is missed by a node that tells 6 at random out of 7, 1 in 7
 * when its targets are distinct), for no extra message. */
static void mp_gossip_tick(mp_swim *s, uint64_t now) {
    if (s->news_count == 0 || now < s->next_gossip_ms) {
        return;
    }
    size_t k = mp_pick(s, s->cfg.gossip_nodes, true, NULL, s->gossip_round);
    if (k == 0) {
        return;
    }
    s->gossip_round++;
    for (size_t i = 0; i < k; i++) {
        s->pick[i]->gossip_round = s->gossip_round;
    }
    for (size_t i = 0; i < k && s->news_count > 0; i++) {
        mp_send_to(s, s->pick[i], &(mp_msg){.type = MP_W_GOSSIP, .piggyback = true});
    }
    s->next_gossip_ms = mp_add_sat(now, s->cfg.gossip_interval_ms);
}

/* A push-pull request: digests only, and the member list too on a join
 * (the seed answers a join with its list whatever the digests say). */
static mp_msg mp_sync_msg(mp_swim *s, bool join) {
    uint64_t seq = ++s->seq;
    seq = seq ? seq : ++s->seq; /* 0 means "none" on a SYNC */
    s->syncs[s->sync_next] = seq;
    s->sync_next = (s->sync_next + 1) % MP_SWIM_MAX_SYNCS;
    return (mp_msg){.type = MP_W_SYNC,
                    .seq = seq,
                    .members = join,
                    .join = join,
                    .digest = s->d.state_digest(s->d.ud),
                    .members_digest = mp_members_digest(s)};
}

static void mp_push_pull_tick(mp_swim *s, uint64_t now) {
    if (s->left || now < s->next_push_pull_ms) {
        return;
    }
    s->next_push_pull_ms = mp_add_sat(now, s->cfg.push_pull_interval_ms);
    mp_swim_rec *r = s->early_peer ? mp_lookup(s, mp_str_c(s->early_peer)) : NULL;
    free(s->early_peer);
    s->early_peer = NULL;
    if (!r || r->state != MP_MEMBER_ALIVE) {
        r = mp_pick(s, 1, false, NULL, 0) == 1 ? s->pick[0] : NULL;
    }
    if (r) {
        mp_msg m = mp_sync_msg(s, false);
        s->stats.push_pulls++;
        mp_send_to(s, r, &m);
    }
}

static void mp_join_send(mp_swim *s, const char *addr) {
    mp_msg m = mp_sync_msg(s, true);
    s->stats.push_pulls++;
    mp_send(s, NULL, addr, &m);
}

static void mp_join_tick(mp_swim *s, uint64_t now) {
    if (!s->joining || s->left || now < s->join_retry_ms) {
        return;
    }
    for (size_t i = 0; i < s->seed_count; i++) {
        mp_join_send(s, s->seeds[i]);
    }
    s->join_retry_ms = mp_add_sat(now, 2ull * s->cfg.probe_interval_ms);
}

/* A random DEAD member with an address to dial; NULL when none. */
static mp_swim_rec *mp_pick_dead(mp_swim *s) {
    size_t n = 0;
    for (size_t i = 0; i < s->node_count; i++) {
        n += s->nodes[i]->state == MP_MEMBER_DEAD && s->nodes[i]->addr[0] != '\0';
    }
    if (n == 0) {
        return NULL;
    }
    size_t k = (size_t)mp_rng_below(s->rng, n);
    for (size_t i = 0; i < s->node_count; i++) {
        mp_swim_rec *r = s->nodes[i];
        if (r->state == MP_MEMBER_DEAD && r->addr[0] != '\0' && k-- == 0) {
            return r;
        }
    }
    return NULL;
}

/* Every reconnect_interval_ms while there is reason to: a push-pull with
 * one random DEAD member (a partition that healed is found this way: the
 * member lists exchanged make both sides refute), and the seeds again when
 * no member is alive. A dead member that is really gone costs one message
 * the driver cannot deliver. */
static void mp_reconnect_tick(mp_swim *s, uint64_t now) {
    if (!mp_reconnect_needed(s)) {
        s->reconnect_armed = false;
        return;
    }
    if (!s->reconnect_armed) {
        mp_reconnect_arm(s, now);
        return;
    }
    if (now < s->next_reconnect_ms) {
        return;
    }
    s->next_reconnect_ms = mp_add_sat(now, s->cfg.reconnect_interval_ms);
    mp_swim_rec *r = mp_pick_dead(s);
    if (r) {
        mp_msg m = mp_sync_msg(s, false);
        s->stats.reconnects++;
        s->stats.push_pulls++;
        mp_send_to(s, r, &m);
    }
    if (s->alive_count == 0 && !s->joining) {
        for (size_t i = 0; i < s->seed_count; i++) {
            mp_join_send(s, s->seeds[i]);
        }
    }
}

void mp_swim_tick(mp_swim *s, uint64_t now_ms) {
    mp_join_tick(s, now_ms);
    mp_probe_tick(s, now_ms);
    if (now_ms >= s->scan_ms) {
        mp_scan(s, now_ms);
    }
    mp_relays_expire(s, now_ms);
    mp_gossip_tick(s, now_ms);
    mp_push_pull_tick(s, now_ms);
    mp_reconnect_tick(s, now_ms);
}

uint64_t mp_swim_next_wakeup(const mp_swim *s) {
    uint64_t t = s->scan_ms;
    bool others = s->alive_count + s->suspect_count > 0;
    const mp_probe *p = &s->probe;
    if (p->active) {
        if (!p->indirect) {
            t = mp_min_u64(t, mp_add_sat(p->start_ms, s->cfg.probe_timeout_ms));
        }
        t = mp_min_u64(t, mp_add_sat(p->start_ms, s->cfg.probe_interval_ms));
    }
    if (!s->left && others && !p->active) {
        /* While a probe runs its own deadlines stand for this one: a probe
         * started late (its target arrived after the time it was due) ends
         * after the next one is due, and that start time, already past,
         * would otherwise be a wakeup whose tick changes nothing. */
        t = mp_min_u64(t, s->next_probe_ms);
    }
    if (s->news_count > 0 && others) {
        t = mp_min_u64(t, s->next_gossip_ms);
    }
    if (!s->left && s->alive_count > 0) {
        t = mp_min_u64(t, s->next_push_pull_ms);
    }
    if (s->joining && !s->left) {
        t = mp_min_u64(t, s->join_retry_ms);
    }
    if (s->reconnect_armed && mp_reconnect_needed(s)) {
        t = mp_min_u64(t, s->next_reconnect_ms);
    }
    if (s->relay_count > 0) {
        t = mp_min_u64(t, s->relays[0].expires_ms); /* appended in time order */
    }
    return t;
}

/* --- message handlers ------------------------------------------------------------------- */

/* The sender, NUL-terminated (its id and address are at most
 * MP_SWIM_MAX_ID bytes). */
typedef struct mp_sender {
    char id[MP_SWIM_MAX_ID + 1];
    char addr[MP_SWIM_MAX_ID + 1];
} mp_sender;

static void mp_on_ping_req(mp_swim *s, const mp_wmsg *m, const mp_sender *from, uint64_t now) {
    if (mp_str_eq_c(m->target, s->self.id)) {
        /* Asked to ping ourselves: the ACK is the answer. */
        mp_send(s, from->id, from->addr,
                &(mp_msg){.type = MP_W_ACK, .seq = m->seq, .piggyback = true});
        return;
    }
    if (s->relay_count >= MP_SWIM_MAX_RELAYS) {
        free(s->relays[0].to_id);
        free(s->relays[0].to_addr);
        s->relay_count--;
        memmove(&s->relays[0], &s->relays[1], s->relay_count * sizeof *s->relays);
    }
    if (!MP_GROW(s->relays, s->relay_count, s->relay_cap)) {
        return;
    }
    mp_relay *r = &s->relays[s->relay_count];
    *r = (mp_relay){.seq = ++s->seq,
                    .orig_seq = m->seq,
                    .expires_ms = mp_add_sat(now, s->cfg.probe_interval_ms),
                    .to_id = mp_strndup(from->id, strlen(from->id)),
                    .to_addr = mp_strndup(from->addr, strlen(from->addr))};
    if (!r->to_id || !r->to_addr) {
        free(r->to_id);
        free(r->to_addr);
        return;
    }
    s->relay_count++;
    char target[MP_SWIM_MAX_ID + 1], addr[MP_SWIM_MAX_ID + 1];
    memcpy(target, m->target.ptr, m->target.len);
    target[m->target.len] = '\0';
    memcpy(addr, m->target_addr.ptr, m->target_addr.len);
    addr[m->target_addr.len] = '\0';
    mp_send(s, target, addr,
            &(mp_msg){.type = MP_W_PING, .seq = r->seq, .target = target, .piggyback = true});
}

static void mp_on_ack(mp_swim *s, const mp_wmsg *m) {
    if (s->probe.active && m->seq == s->probe.seq) {
        s->probe.active = false;
        return;
    }
    for (size_t i = 0; i < s->relay_count; i++) {
        mp_relay r = s->relays[i];
        if (r.seq == m->seq) {
            memmove(&s->relays[i], &s->relays[i + 1], (s->relay_count - i - 1) * sizeof r);
            s->relay_count--;
            mp_send(s, r.to_id, r.to_addr,
                    &(mp_msg){.type = MP_W_ACK, .seq = r.orig_seq, .piggyback = true});
            free(r.to_id);
            free(r.to_addr);
            return;
        }
    }
}

/* The node's full state, or NULL when it cannot be had or is too big to
 * send (the peer then only gets the digest; the next push-pull retries). */
static const mp_buf *mp_state_encode(mp_swim *s, mp_buf *b) {
    if (s->d.state_encode(s->d.ud, b) != MPREG_OK || b->len > MP_SWIM_MAX_STATE) {
        return NULL;
    }
    return b;
}

/* A push-pull request: answer with our digests, plus our member list when
 * the member digests differ (or it is a join), plus our state when the
 * state digests differ; for each that differed and the request did not
 * carry, ask for the initiator's. The member digest is taken after the
 * request's own `from` and list were applied, so only what is still
 * different is exchanged. A request without a member digest (an older
 * encoder) counts as different. */
static void mp_on_sync(mp_swim *s, const mp_wmsg *m, const mp_sender *from) {
    uint64_t mine = s->d.state_digest(s->d.ud);
    uint64_t members = mp_members_digest(s);
    bool state_differ = mine != m->digest;
    bool members_differ = !(m->seen & MP_BIT(MP_K_MEMBERS_DIGEST)) || members != m->members_digest;
    mp_buf st = MP_BUF_INIT;
    mp_msg reply = {.type = MP_W_SYNC_REPLY,
                    .seq = (m->seen & MP_BIT(MP_K_SEQ)) ? m->seq : 0,
                    .members = members_differ || m->join,
                    .want_members = members_differ && m->member_count == 0,
                    .digest = mine,
                    .members_digest = members};
    if (state_differ) {
        reply.state = mp_state_encode(s, &st);
        reply.want_state = true;
        s->stats.full_state_syncs++;
    }
    if (members_differ && !m->join) {
        s->stats.member_syncs++;
    }
    s->stats.push_pulls++;
    mp_send(s, from->id, from->addr, &reply);
    mp_buf_free(&st);
}

/* True (and forgets it) when seq is a SYNC of ours whose answer has not
 * been used yet. */
static bool mp_take_sync(mp_swim *s, uint64_t seq) {
    for (size_t i = 0; i < MP_SWIM_MAX_SYNCS; i++) {
        if (seq != 0 && s->syncs[i] == seq) {
            s->syncs[i] = 0;
            return true;
        }
    }
    return false;
}

/* The answer to our SYNC (or the initiator's follow-up to our answer): its
 * list was applied already; merge its state, then send what it asked for
 * in one follow-up SYNC_REPLY, which asks for nothing, so the exchange
 * ends there. An answer that echoes a SYNC whose answer was used already
 * (a duplicate), or none of ours, is not used again: its state was merged
 * once, and a second follow-up would send ours twice. (An answer without
 * a seq, and the follow-up, which has none, are always used.) */
static void mp_on_sync_reply(mp_swim *s, const mp_wmsg *m, const mp_sender *from) {
    if ((m->seen & MP_BIT(MP_K_SEQ)) && !mp_take_sync(s, m->seq)) {
        s->stats.stale_sync_replies++;
        return;
    }
    if (s->joining) {
        /* Someone answered: we are in. Our ALIVE goes out as news from us
         * too (as memberlist's node announces itself), not only from the
         * seed: in a burst of joins the seed's news about us is used up
         * while the others' tables are still filling, and one that missed
         * it would only learn of us when we first probe it. We know the
         * whole list now, the seed's included. */
        s->joining = false;
        mp_news_rec(s, &s->self);
    }
    if (m->seen & MP_BIT(MP_K_STATE)) {
        s->d.state_merge(s->d.ud, m->state.ptr, m->state.len, from->id);
    }
    if (!m->want_state && !m->want_members) {
        return;
    }
    mp_msg follow = {.type = MP_W_SYNC_REPLY,
                     .members = m->want_members,
                     .digest = s->d.state_digest(s->d.ud),
                     .members_digest = mp_members_digest(s)};
    mp_buf st = MP_BUF_INIT;
    /* After merging theirs ours may cover everything they have. */
    if (m->want_state && follow.digest != m->digest) {
        s->stats.full_state_syncs++;
        follow.state = mp_state_encode(s, &st);
    }
    if (follow.members || follow.state) {
        mp_send(s, from->id, from->addr, &follow);
    }
    mp_buf_free(&st);
}

/* A message whose sender claims the id of a member that holds it (or
 * ours) with another key is refused whole: nothing another process says
 * under that id is applied (its catalog items would pass for the
 * member's). MPREG_E_IDENTITY, and the delegate hears of it. */
static mpreg_err mp_handle(mp_swim *s, const mp_wmsg *m, uint64_t now) {
    bool self = mp_str_eq_c(m->from.id, s->self.id);
    const mp_swim_rec *held = self ? &s->self : mp_lookup(s, m->from.id);
    if (held && mp_refused_claim(held, &m->from, self)) {
        mp_conflict(s, held, &m->from, true);
        return MPREG_E_IDENTITY;
    }
    if (self) {
        return MPREG_OK; /* our own message came back (a seed that is us) */
    }
    if (m->type == MP_W_PING && !mp_str_eq_c(m->target, s->self.id)) {
        return MPREG_OK; /* meant for whoever had this address before */
    }
    mp_sender from;
    memcpy(from.id, m->from.id.ptr, m->from.id.len);
    from.id[m->from.id.len] = '\0';
    memcpy(from.addr, m->from.addr.ptr, m->from.addr.len);
    from.addr[m->from.addr.len] = '\0';

    /* The sender's word about itself first, then what it knows. */
    mp_apply(s, &m->from, now);
    for (uint32_t i = 0; i < m->member_count; i++) {
        mp_apply_listed(s, &m->members[i], now);
    }
    for (uint32_t i = 0; i < m->update_count; i++) {
        mp_apply(s, &m->updates[i], now);
    }
    for (uint32_t i = 0; i < m->item_count; i++) {
        const mp_bytes *it = &m->items[i];
        if (s->d.on_item(s->d.ud, it->ptr, it->len, from.id)) {
            (void)mp_news_item(s, NULL, it->ptr, it->len);
        }
    }
    mp_maybe_notice(s, &m->from, now);

    switch ((mp_wtype)m->type) {
    case MP_W_PING:
        mp_send(s, from.id, from.addr,
                &(mp_msg){.type = MP_W_ACK, .seq = m->seq, .piggyback = true});
        break;
    case MP_W_PING_REQ:
        mp_on_ping_req(s, m, &from, now);
        break;
    case MP_W_ACK:
        mp_on_ack(s, m);
        break;
    case MP_W_GOSSIP:
        break;
    case MP_W_SYNC:
        mp_on_sync(s, m, &from);
        break;
    case MP_W_SYNC_REPLY:
        mp_on_sync_reply(s, m, &from);
        break;
    }
    return MPREG_OK;
}

mpreg_err mp_swim_on_payload(mp_swim *s, const uint8_t *data, size_t len, uint64_t now_ms) {
    mp_wmsg m;
    mpreg_err err = mp_wmsg_decode(data, len, &m);
    if (err) {
        s->stats.bad_messages++;
        return err;
    }
    s->stats.msgs_received++;
    s->stats.bytes_received += len;
    err = mp_handle(s, &m, now_ms);
    mp_wmsg_free(&m);
    return err;
}

void mp_swim_unreachable(mp_swim *s, const char *id, uint64_t now_ms) {
    (void)now_ms;
    mp_probe *p = &s->probe;
    if (id && p->active && !p->indirect && strcmp(p->target->id, id) == 0) {
        mp_probe_indirect(s);
    }
}

/* --- lifecycle ------------------------------------------------------------------------------ */

mp_swim *mp_swim_new(const mp_swim_config *cfg, const mp_swim_self *self, const mp_swim_delegate *d,
                     mp_rng *rng, uint64_t now_ms) {
    if (mp_swim_config_check(cfg, NULL) != MPREG_OK || !self || !self->id || !d || !rng ||
        !d->on_item || !d->on_member || !d->state_digest || !d->state_encode || !d->state_merge) {
        return NULL;
    }
    const char *addr = self->addr ? self->addr : "";
    if (mp_swim_text_check(self->id, strlen(self->id), 1) != MPREG_OK ||
        mp_swim_text_check(addr, strlen(addr), 0) != MPREG_OK || self->key_len > MP_SWIM_MAX_KEY ||
        (self->key_len && !self->key)) {
        return NULL;
    }
    mp_swim *s = calloc(1, sizeof *s);
    if (!s) {
        return NULL;
    }
    s->cfg = *cfg;
    s->d = *d;
    s->rng = rng;
    s->self.id = mp_strndup(self->id, strlen(self->id));
    s->self.addr = mp_strndup(addr, strlen(addr));
    if (!s->self.id || !s->self.addr) {
        mp_swim_free(s);
        return NULL;
    }
    s->self.generation = self->generation;
    mp_rec_set_key(&s->self, (mp_bytes){self->key, self->key_len});
    s->self.state = MP_MEMBER_ALIVE;
    s->self.since_ms = now_ms;
    mp_map_init(&s->index);
    mp_map_init(&s->news_index);
    mp_buf_init(&s->scratch);
    mp_buf_init(&s->keybuf);
    /* Sequence numbers start at a random point so that ACKs meant for a
     * previous process on the same address do not match ours. */
    s->seq = mp_rng_below(rng, 1u << 30);
    /* Random phases: nodes started together do not probe in lockstep. */
    s->next_probe_ms = now_ms + 1 + mp_rng_below(rng, cfg->probe_interval_ms);
    s->next_gossip_ms = now_ms;
    s->next_push_pull_ms = now_ms + cfg->push_pull_interval_ms / 2 +
                           mp_rng_below(rng, cfg->push_pull_interval_ms / 2 + 1);
    s->scan_ms = UINT64_MAX;
    return s;
}

void mp_swim_free(mp_swim *s) {
    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->node_count; i++) {
        mp_rec_free(s->nodes[i]);
    }
    free(s->nodes);
    mp_map_free(&s->index, NULL);
    for (size_t i = 0; i < s->news_count; i++) {
        mp_news_free(s->news[i]);
    }
    free(s->news);
    mp_map_free(&s->news_index, NULL);
    for (size_t i = s->out_head; i < s->out_len; i++) {
        mp_out_free(&s->out[i]);
    }
    free(s->out);
    mp_out_free(&s->cur);
    for (size_t i = 0; i < s->relay_count; i++) {
        free(s->relays[i].to_id);
        free(s->relays[i].to_addr);
    }
    free(s->relays);
    for (size_t i = 0; i < s->seed_count; i++) {
        free(s->seeds[i]);
    }
    free(s->seeds);
    free(s->pick);
    free(s->early_peer);
    mp_buf_free(&s->scratch);
    mp_buf_free(&s->keybuf);
    free(s->self.id);
    free(s->self.addr);
    free(s);
}

mpreg_err mp_swim_join(mp_swim *s, const char *addr, uint64_t now_ms) {
    if (!addr || mp_swim_text_check(addr, strlen(addr), 1) != MPREG_OK) {
        return MPREG_E_INVALID;
    }
    if (s->left) {
        return MPREG_E_CLOSED;
    }
    if (strcmp(addr, s->self.addr) == 0) {
        return MPREG_OK; /* we are a seed of our own: nobody to ask */
    }
    bool known = false;
    for (size_t i = 0; i < s->seed_count && !known; i++) {
        known = strcmp(s->seeds[i], addr) == 0;
    }
    if (!known && s->seed_count < MP_SWIM_MAX_SEEDS) {
        char **seeds = realloc(s->seeds, (s->seed_count + 1) * sizeof *seeds);
        char *copy = mp_strndup(addr, strlen(addr));
        if (seeds) {
            s->seeds = seeds;
        }
        if (!seeds || !copy) {
            free(copy);
            return MPREG_E_NOMEM;
        }
        s->seeds[s->seed_count++] = copy;
    }
    s->joining = true;
    s->join_retry_ms = mp_add_sat(now_ms, 2ull * s->cfg.probe_interval_ms);
    mp_join_send(s, addr);
    return MPREG_OK;
}

void mp_swim_leave(mp_swim *s, uint64_t now_ms) {
    if (s->left) {
        return;
    }
    s->left = true;
    s->joining = false;
    s->probe.active = false;
    s->self.incarnation++;
    s->self.state = MP_MEMBER_LEFT;
    s->self.since_ms = now_ms;
    mp_news_rec(s, &s->self);
    size_t k = mp_pick(s, s->cfg.gossip_nodes, true, NULL, 0);
    for (size_t i = 0; i < k; i++) {
        mp_send_to(s, s->pick[i], &(mp_msg){.type = MP_W_GOSSIP, .piggyback = true});
    }
    s->next_gossip_ms = mp_add_sat(now_ms, s->cfg.gossip_interval_ms);
}

mpreg_err mp_swim_broadcast(mp_swim *s, const char *key, const uint8_t *data, size_t len) {
    if (!data || len == 0) {
        return MPREG_E_INVALID;
    }
    if (len > MP_SWIM_MAX_ITEM) {
        return MPREG_E_TOO_LARGE;
    }
    return mp_news_item(s, key, data, len);
}

bool mp_swim_next_send(mp_swim *s, mp_swim_send *out) {
    mp_out_free(&s->cur);
    if (s->out_head >= s->out_len) {
        s->out_head = s->out_len = 0;
        return false;
    }
    s->cur = s->out[s->out_head++];
    *out = (mp_swim_send){s->cur.to_id, s->cur.to_addr, s->cur.payload.data, s->cur.payload.len};
    return true;
}

/* --- introspection ----------------------------------------------------------------------- */

size_t mp_swim_member_count(const mp_swim *s, bool alive_only) {
    return alive_only ? s->alive_count : s->node_count;
}

static int mp_rec_cmp_id(const void *pa, const void *pb) {
    return strcmp((*(mp_swim_rec *const *)pa)->id, (*(mp_swim_rec *const *)pb)->id);
}

void mp_swim_each(const mp_swim *s, bool (*visit)(void *ud, const mp_member *m), void *ud) {
    mp_member m;
    mp_rec_view(&s->self, &m);
    if (!visit(ud, &m) || s->node_count == 0) {
        return;
    }
    mp_swim_rec **sorted = malloc(s->node_count * sizeof *sorted);
    if (sorted) {
        memcpy(sorted, s->nodes, s->node_count * sizeof *sorted);
        qsort(sorted, s->node_count, sizeof *sorted, mp_rec_cmp_id);
    }
    /* Out of memory: probe order rather than nothing. */
    mp_swim_rec *const *list = sorted ? sorted : s->nodes;
    for (size_t i = 0; i < s->node_count; i++) {
        mp_rec_view(list[i], &m);
        if (!visit(ud, &m)) {
            break;
        }
    }
    free(sorted);
}

bool mp_swim_find(const mp_swim *s, const char *id, mp_member *out) {
    if (!id) {
        return false;
    }
    const mp_swim_rec *r = strcmp(id, s->self.id) == 0 ? &s->self : mp_lookup(s, mp_str_c(id));
    if (r && out) {
        mp_rec_view(r, out);
    }
    return r != NULL;
}

bool mp_swim_identity_conflict(const mp_swim *s, const char *id, const uint8_t *key, size_t key_len,
                               mp_member *holder) {
    if (!id || key_len > MP_SWIM_MAX_KEY) {
        return false;
    }
    bool self = strcmp(id, s->self.id) == 0;
    const mp_swim_rec *r = self ? &s->self : mp_lookup(s, mp_str_c(id));
    if (!r || !mp_key_differs(r, (mp_bytes){key, key_len}) || (!self && mp_gone(r->state))) {
        return false;
    }
    if (holder) {
        mp_rec_view(r, holder);
    }
    return true;
}

uint64_t mp_swim_incarnation(const mp_swim *s) {
    return s->self.incarnation;
}

uint64_t mp_swim_members_digest(const mp_swim *s) {
    return mp_members_digest(s);
}

size_t mp_swim_queued(const mp_swim *s) {
    return s->news_count;
}

void mp_swim_get_stats(const mp_swim *s, mp_swim_stats *out) {
    *out = s->stats;
}
