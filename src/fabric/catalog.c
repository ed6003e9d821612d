/* catalog.c - the routing catalog: a CRDT of entries and node deaths, plus
 * the indexes routing reads.
 *
 * Storage. Every entry the catalog knows is an mp_cat_record in `records`,
 * keyed by mp_entry_key_bytes. A record is in one of three states:
 *   - LIVE: visible to queries, counted in the digest;
 *   - TOMBSTONE: a withdrawal. Invisible to queries but counted in the digest
 *     and sent in snapshots, so that an older add arriving late is refused
 *     everywhere alike. Dropped tombstone_ttl_ms after it was stored;
 *   - EXPIRED: a live entry whose TTL ran out. Local only (not in the digest,
 *     not in snapshots): it just remembers the version for tombstone_ttl_ms so
 *     that a peer still holding the same version cannot hand it back to us.
 *     Without it, an origin that went quiet would have its entries bounced
 *     around the cluster for ever, each node re-learning them from a peer
 *     whose copy had not expired yet. A refresh (newer version) revives it.
 * Deaths are kept per node as the highest dead incarnation, in `deaths`.
 *
 * Merge order. For one key the winner is the higher version; at equal
 * versions a withdrawal beats a live entry, and two different contents (which
 * honest origins never produce) are ordered by their canonical encoding, so
 * every replica keeps the same one whatever the arrival order. An entry whose
 * incarnation is at or below its origin's death is refused. Hence the stored
 * set is a function of the set of items applied: order and duplicates do not
 * matter.
 *
 * Indexes, kept in step with every state change of a record (only LIVE
 * records are indexed; the per-origin list holds every stored record):
 *   - origins:   node id -> list of the node's records (deaths walk only it);
 *   - functions: function name -> list of live function records;
 *   - queues:    queue name -> list of live queue records;
 *   - nodes, caches: node id -> the live descriptor / cache profile record;
 *   - topics: each (node, group) pair with live interests has a numeric
 *     handle; one matcher holds the (handle, pattern) bindings of group ""
 *     (ungrouped subscribers), another those of queue groups, so a match
 *     reports every node, or every (node, group) pair, once.
 * A record remembers its slot in each list it is on, so unlinking is a
 * swap-remove rather than a search. Because an entry's index position
 * depends only on its key, replacing a live entry by a newer live one
 * touches no index at all.
 *
 * Deadlines (TTL expiry, tombstone and expired-marker drops) sit in one
 * binary min-heap of records; each record knows its heap slot, so a refresh
 * re-sifts in place and a removal needs no lazy deletion. */
#include "fabric/catalog.h"

#include "core/check.h"
#include "core/heap.h"
#include "core/map.h"
#include "core/matcher.h"
#include "core/str.h"
#include "core/vec.h"

#include <stdlib.h>
#include <string.h>

#define MP_CAT_NO_POS SIZE_MAX
#define MP_CAT_KINDS 6 /* mp_entry_kind values are 1..5; slot 0 unused */

/* Domain tags for the canonical encodings, so a record can never hash like a
 * death. */
#define MP_CAT_TAG_RECORD 0x01u
#define MP_CAT_TAG_DEATH 0x02u

typedef enum mp_cat_state {
    MP_CAT_LIVE = 1,
    MP_CAT_TOMBSTONE,
    MP_CAT_EXPIRED,
} mp_cat_state;

/* The lists a record can be on at once, each with its own slot index. */
typedef enum mp_cat_slot {
    MP_CAT_SLOT_ORIGIN = 0, /* origins */
    MP_CAT_SLOT_INDEX = 1,  /* functions or queues */
    MP_CAT_SLOTS = 2,
} mp_cat_slot;

typedef struct mp_cat_record {
    mp_entry entry; /* owned clone */
    uint8_t *key;   /* mp_entry_key_bytes, to unlink from `records` */
    size_t klen;
    mp_cat_state state;
    uint64_t expires_at_ms;      /* LIVE with a TTL: when it expires; 0 = never */
    uint64_t tombstone_until_ms; /* TOMBSTONE / EXPIRED: when it is dropped */
    uint64_t hash;               /* of the canonical encoding; in the digest unless EXPIRED */
    size_t heap_pos;             /* slot in the deadline heap, or MP_CAT_NO_POS */
    size_t list_pos[MP_CAT_SLOTS];
} mp_cat_record;

typedef struct mp_cat_list {
    mp_cat_record **items;
    size_t count;
    size_t cap;
} mp_cat_list;

typedef struct mp_cat_death {
    uint64_t incarnation;
} mp_cat_death;

/* A node with live topic interests, of any group. */
typedef struct mp_cat_topic_node {
    char *node;
    size_t sets; /* its mp_cat_topic_sets */
} mp_cat_topic_node;

/* A (node, group) pair with live topic interests, as a matcher knows it. */
typedef struct mp_cat_topic_set {
    mp_cat_topic_node *tn;
    char *group; /* "" = ungrouped */
    uint64_t handle;
    size_t patterns; /* live topic records of the pair */
} mp_cat_topic_set;

struct mp_catalog {
    char *local_node;
    char *local_cluster;
    uint64_t tombstone_ttl_ms;

    mp_map records;       /* key bytes -> mp_cat_record */
    mp_map deaths;        /* node id -> mp_cat_death */
    mp_map origins;       /* node id -> mp_cat_list (every stored record) */
    mp_map functions;     /* function name -> mp_cat_list (live) */
    mp_map queues;        /* queue name -> mp_cat_list (live) */
    mp_map nodes;         /* node id -> live MP_ENTRY_NODE record */
    mp_map caches;        /* node id -> live MP_ENTRY_CACHE record */
    mp_map topic_nodes;   /* node id -> mp_cat_topic_node */
    mp_map topic_sets;    /* node id \0 group -> mp_cat_topic_set */
    mp_map topic_handles; /* handle -> the same mp_cat_topic_set */
    /* Of topic_nodes, those that are not the local node. */
    size_t remote_topic_nodes;
    mp_matcher *matcher;       /* the handles of group "" sets */
    mp_matcher *group_matcher; /* the handles of queue groups' sets */
    uint64_t next_handle;
    mp_heap heap; /* mp_cat_record * by due time (core/heap.h) */

    size_t live[MP_CAT_KINDS];
    size_t tombstones;
    uint64_t digest; /* sum of record and death hashes, mod 2^64 */

    /* Scratch space reused by every apply, so the hot path does not allocate
     * for keys and encodings. */
    mp_buf key_scratch;
    mp_buf enc_scratch;
    mp_buf old_scratch;
};

/* --- small helpers -------------------------------------------------------- */

static const char *mp_cat_str(const char *s) {
    return s ? s : "";
}

static uint64_t mp_cat_add_sat(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* --- canonical encoding ---------------------------------------------------
 * Every field of an entry, in a fixed order with fixed-width big-endian
 * integers and length-prefixed strings: equal contents give equal bytes and
 * different contents different bytes. It is what the digest hashes and what
 * breaks ties between same-version contents. Errors are sticky so the
 * encoders read as a plain list of fields. */

typedef struct mp_cat_enc {
    mp_buf *buf;
    mpreg_err err;
} mp_cat_enc;

static void mp_cat_put(mp_cat_enc *e, const void *p, size_t n) {
    if (!e->err) {
        e->err = mp_buf_append(e->buf, p, n);
    }
}

static void mp_cat_put_u8(mp_cat_enc *e, uint8_t v) {
    mp_cat_put(e, &v, 1);
}

static void mp_cat_put_u32(mp_cat_enc *e, uint32_t v) {
    uint8_t p[4];
    mp_put_u32be(p, v);
    mp_cat_put(e, p, 4);
}

static void mp_cat_put_u64(mp_cat_enc *e, uint64_t v) {
    mp_cat_put_u32(e, (uint32_t)(v >> 32));
    mp_cat_put_u32(e, (uint32_t)v);
}

static void mp_cat_put_double(mp_cat_enc *e, double d) {
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    mp_cat_put_u64(e, bits);
}

/* NULL and "" are different contents: NULL gets a length no string has. */
static void mp_cat_put_str(mp_cat_enc *e, const char *s) {
    if (!s) {
        mp_cat_put_u32(e, UINT32_MAX);
        return;
    }
    size_t n = strlen(s);
    mp_cat_put_u32(e, (uint32_t)n);
    mp_cat_put(e, s, n);
}

static void mp_cat_put_strlist(mp_cat_enc *e, const mp_strlist *l) {
    mp_cat_put_u32(e, l->count);
    for (uint32_t i = 0; i < l->count; i++) {
        mp_cat_put_str(e, l->items[i]);
    }
}

static void mp_cat_put_semver(mp_cat_enc *e, const mp_semver *v) {
    mp_cat_put_u64(e, v->major);
    mp_cat_put_u64(e, v->minor);
    mp_cat_put_u64(e, v->patch);
    size_t n = 0;
    while (n < sizeof v->pre && v->pre[n]) {
        n++;
    }
    mp_cat_put_u32(e, (uint32_t)n);
    mp_cat_put(e, v->pre, n);
}

static void mp_cat_put_value(mp_cat_enc *e, const mp_entry *en) {
    switch (en->kind) {
    case MP_ENTRY_FUNCTION: {
        const mp_function_endpoint *f = &en->u.function;
        mp_cat_put_str(e, f->cluster);
        mp_cat_put_semver(e, &f->semver);
        mp_cat_put_strlist(e, &f->resources);
        mp_cat_put_u32(e, f->load);
        break;
    }
    case MP_ENTRY_TOPIC:
        mp_cat_put_str(e, en->u.topic.cluster);
        break;
    case MP_ENTRY_QUEUE: {
        const mp_queue_endpoint *q = &en->u.queue;
        mp_cat_put_str(e, q->cluster);
        mp_cat_put_u32(e, q->modes);
        mp_cat_put_u8(e, q->healthy ? 1 : 0);
        break;
    }
    case MP_ENTRY_CACHE: {
        const mp_cache_profile *p = &en->u.cache;
        mp_cat_put_str(e, p->cluster);
        mp_cat_put_str(e, p->region);
        mp_cat_put_double(e, p->latitude);
        mp_cat_put_double(e, p->longitude);
        mp_cat_put_u64(e, p->capacity_bytes);
        mp_cat_put_double(e, p->utilization);
        mp_cat_put_double(e, p->latency_ms);
        mp_cat_put_double(e, p->reliability);
        break;
    }
    case MP_ENTRY_NODE: {
        const mp_node_descriptor *n = &en->u.node;
        mp_cat_put_str(e, n->name);
        mp_cat_put_str(e, n->cluster);
        mp_cat_put_strlist(e, &n->endpoints);
        mp_cat_put_strlist(e, &n->capabilities);
        mp_cat_put_strlist(e, &n->resources);
        mp_cat_put_u64(e, n->incarnation);
        break;
    }
    }
}

/* out = tag, key bytes, version, withdrawn, ttl, value (live entries only). `key` is the entry's
 * mp_entry_key_bytes, computed by the caller (it already has them). */
static mpreg_err mp_cat_encode(const mp_entry *en, const mp_buf *key, mp_buf *out) {
    mp_buf_clear(out);
    mp_cat_enc e = {out, MPREG_OK};
    mp_cat_put_u8(&e, MP_CAT_TAG_RECORD);
    mp_cat_put_u32(&e, (uint32_t)key->len);
    mp_cat_put(&e, key->data, key->len);
    mp_cat_put_u64(&e, en->version.incarnation);
    mp_cat_put_u64(&e, en->version.counter);
    mp_cat_put_u8(&e, en->withdrawn ? 1 : 0);
    mp_cat_put_u32(&e, en->ttl_ms);
    if (!en->withdrawn) {
        /* A tombstone's value is not content: it is not validated and the
         * wire does not carry it (delta.c), so it must not sway the digest. */
        mp_cat_put_value(&e, en);
    }
    return e.err;
}

static uint64_t mp_cat_death_hash(const char *node, uint64_t incarnation) {
    /* Small and bounded (node ids are at most MP_ENTRY_MAX_STR bytes), so a
     * stack buffer will do. */
    uint8_t buf[1 + 4 + MP_ENTRY_MAX_STR + 8];
    size_t n = strlen(node);
    if (n > MP_ENTRY_MAX_STR) {
        n = MP_ENTRY_MAX_STR;
    }
    size_t at = 0;
    buf[at++] = MP_CAT_TAG_DEATH;
    mp_put_u32be(buf + at, (uint32_t)n);
    at += 4;
    memcpy(buf + at, node, n);
    at += n;
    mp_put_u32be(buf + at, (uint32_t)(incarnation >> 32));
    mp_put_u32be(buf + at + 4, (uint32_t)incarnation);
    at += 8;
    return mp_hash_bytes(buf, at);
}

static int mp_cat_bytes_cmp(const mp_buf *a, const mp_buf *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->data, b->data, n) : 0;
    if (c) {
        return c;
    }
    return (a->len > b->len) - (a->len < b->len);
}

/* --- record lists --------------------------------------------------------- */

static mpreg_err mp_cat_list_push(mp_cat_list *l, mp_cat_record *r, mp_cat_slot slot) {
    if (MP_VEC_GROW(l->items, l->cap, l->count + 1, 4) != MPREG_OK) {
        return MPREG_E_NOMEM;
    }
    r->list_pos[slot] = l->count;
    l->items[l->count++] = r;
    return MPREG_OK;
}

static void mp_cat_list_remove(mp_cat_list *l, mp_cat_record *r, mp_cat_slot slot) {
    size_t i = r->list_pos[slot];
    mp_cat_record *last = l->items[--l->count];
    l->items[i] = last;
    last->list_pos[slot] = i;
    r->list_pos[slot] = MP_CAT_NO_POS;
}

static void mp_cat_list_free(void *p) {
    mp_cat_list *l = p;
    if (l) {
        free(l->items);
        free(l);
    }
}

/* A group is a map from a name to a list, created on the first member and
 * freed with the last, so names that come and go do not pile up. */
static mpreg_err mp_cat_group_add(mp_map *groups, const char *name, mp_cat_record *r,
                                  mp_cat_slot slot) {
    size_t len = strlen(name);
    mp_cat_list *l = mp_map_get(groups, name, len);
    bool created = false;
    if (!l) {
        l = calloc(1, sizeof *l);
        if (!l) {
            return MPREG_E_NOMEM;
        }
        mpreg_err err = mp_map_put(groups, name, len, l, NULL);
        if (err) {
            free(l);
            return err;
        }
        created = true;
    }
    mpreg_err err = mp_cat_list_push(l, r, slot);
    if (err && created) {
        mp_map_remove(groups, name, len);
        mp_cat_list_free(l);
    }
    return err;
}

/* Returns true when the group emptied and was freed. */
static bool mp_cat_group_remove(mp_map *groups, const char *name, mp_cat_record *r,
                                mp_cat_slot slot) {
    size_t len = strlen(name);
    mp_cat_list *l = mp_map_get(groups, name, len);
    if (!l) {
        return false;
    }
    mp_cat_list_remove(l, r, slot);
    if (l->count) {
        return false;
    }
    mp_map_remove(groups, name, len);
    mp_cat_list_free(l);
    return true;
}

/* --- deadline heap -------------------------------------------------------- */

/* The time at which mp_catalog_expire has something to do with r; 0 = never. */
static uint64_t mp_cat_due(const mp_cat_record *r) {
    return r->state == MP_CAT_LIVE ? r->expires_at_ms : r->tombstone_until_ms;
}

/* Heap elements are record pointers; each record knows its slot. */
static bool mp_cat_before(const void *pa, const void *pb) {
    return mp_cat_due(*(mp_cat_record *const *)pa) < mp_cat_due(*(mp_cat_record *const *)pb);
}

static void mp_cat_placed(void *elem, size_t slot) {
    (*(mp_cat_record **)elem)->heap_pos = slot;
}

static mp_cat_record *mp_cat_heap_at(const mp_heap *h, size_t slot) {
    return *(mp_cat_record **)mp_heap_at(h, slot);
}

/* Room for one more, taken before a change is committed so that scheduling
 * the changed record cannot fail half-way. */
static mpreg_err mp_cat_heap_reserve(mp_heap *h) {
    return mp_heap_reserve(h, 1);
}

static void mp_cat_heap_remove(mp_heap *h, mp_cat_record *r) {
    size_t i = r->heap_pos;
    if (i == MP_CAT_NO_POS) {
        return;
    }
    MP_ASSERT(i < mp_heap_len(h) && mp_cat_heap_at(h, i) == r);
    r->heap_pos = MP_CAT_NO_POS;
    mp_heap_remove_at(h, i);
}

/* Puts r where its current due time belongs (in, moved or out). The caller
 * has reserved room when r may be new to the heap. */
static void mp_cat_heap_update(mp_heap *h, mp_cat_record *r) {
    if (mp_cat_due(r) == 0) {
        mp_cat_heap_remove(h, r);
        return;
    }
    if (r->heap_pos == MP_CAT_NO_POS) {
        mpreg_err err = mp_heap_push(h, &r);
        MP_ASSERT(err == MPREG_OK); /* room was reserved */
        (void)err;
        return;
    }
    mp_heap_update_at(h, r->heap_pos);
}

/* --- topic interests ------------------------------------------------------ */

static void mp_cat_topic_node_free(void *p) {
    mp_cat_topic_node *tn = p;
    if (tn) {
        free(tn->node);
        free(tn);
    }
}

static void mp_cat_topic_set_free(void *p) {
    mp_cat_topic_set *set = p;
    if (set) {
        free(set->group);
        free(set);
    }
}

static bool mp_cat_is_local(const mp_catalog *c, const char *node) {
    return strcmp(node, c->local_node) == 0;
}

/* A set's map key: node id, NUL, group (neither holds a NUL). Entries are
 * validated, so both fit. */
#define MP_CAT_SET_KEY_MAX (2 * MP_ENTRY_MAX_STR + 1)

static size_t mp_cat_set_key(const mp_topic_key *k, char out[MP_CAT_SET_KEY_MAX]) {
    size_t n = strlen(mp_cat_str(k->node)), g = strlen(mp_cat_str(k->group));
    if (n > MP_ENTRY_MAX_STR || g > MP_ENTRY_MAX_STR) {
        return 0;
    }
    memcpy(out, mp_cat_str(k->node), n);
    out[n] = '\0';
    memcpy(out + n + 1, mp_cat_str(k->group), g);
    return n + 1 + g;
}

static mp_matcher *mp_cat_set_matcher(const mp_catalog *c, const mp_cat_topic_set *set) {
    return set->group[0] ? c->group_matcher : c->matcher;
}

/* One set of tn fewer; the node goes with its last. */
static void mp_cat_topic_node_release(mp_catalog *c, mp_cat_topic_node *tn) {
    if (--tn->sets > 0) {
        return;
    }
    if (!mp_cat_is_local(c, tn->node)) {
        c->remote_topic_nodes--;
    }
    mp_map_remove(&c->topic_nodes, tn->node, strlen(tn->node));
    mp_cat_topic_node_free(tn);
}

/* Drops a set that holds no pattern. */
static void mp_cat_topic_set_drop(mp_catalog *c, mp_cat_topic_set *set, const char *key,
                                  size_t klen) {
    mp_cat_topic_node *tn = set->tn;
    mp_map_remove(&c->topic_handles, &set->handle, sizeof set->handle);
    mp_map_remove(&c->topic_sets, key, klen);
    mp_cat_topic_set_free(set);
    mp_cat_topic_node_release(c, tn);
}

static mpreg_err mp_cat_topic_node_get(mp_catalog *c, const char *node, mp_cat_topic_node **out) {
    mp_cat_topic_node *tn = mp_map_get(&c->topic_nodes, node, strlen(node));
    if (tn) {
        *out = tn;
        return MPREG_OK;
    }
    tn = calloc(1, sizeof *tn);
    if (!tn || !(tn->node = mp_strdup(node ? node : ""))) {
        free(tn);
        return MPREG_E_NOMEM;
    }
    mpreg_err err = mp_map_put(&c->topic_nodes, tn->node, strlen(tn->node), tn, NULL);
    if (err) {
        mp_cat_topic_node_free(tn);
        return err;
    }
    if (!mp_cat_is_local(c, tn->node)) {
        c->remote_topic_nodes++;
    }
    *out = tn;
    return MPREG_OK;
}

/* The set of k's (node, group), created empty when there is none. */
static mpreg_err mp_cat_topic_set_get(mp_catalog *c, const mp_topic_key *k, const char *key,
                                      size_t klen, mp_cat_topic_set **out) {
    mp_cat_topic_set *set = mp_map_get(&c->topic_sets, key, klen);
    if (set) {
        *out = set;
        return MPREG_OK;
    }
    mp_cat_topic_node *tn;
    mpreg_err err = mp_cat_topic_node_get(c, mp_cat_str(k->node), &tn);
    if (err) {
        return err;
    }
    tn->sets++; /* now, so that undoing a half-made set releases a new node too */
    set = calloc(1, sizeof *set);
    err = set && (set->group = mp_strdup(k->group ? k->group : "")) ? MPREG_OK : MPREG_E_NOMEM;
    if (!err) {
        set->tn = tn;
        set->handle = ++c->next_handle;
        err = mp_map_put(&c->topic_sets, key, klen, set, NULL);
    }
    if (!err &&
        (err = mp_map_put(&c->topic_handles, &set->handle, sizeof set->handle, set, NULL))) {
        mp_map_remove(&c->topic_sets, key, klen);
    }
    if (err) {
        mp_cat_topic_set_free(set);
        mp_cat_topic_node_release(c, tn);
        return err;
    }
    *out = set;
    return MPREG_OK;
}

static mpreg_err mp_cat_topic_add(mp_catalog *c, const mp_topic_key *k) {
    char key[MP_CAT_SET_KEY_MAX];
    size_t klen = mp_cat_set_key(k, key);
    if (klen == 0) {
        return MPREG_E_INVALID;
    }
    const char *pattern = mp_cat_str(k->pattern);
    mp_cat_topic_set *set;
    mpreg_err err = mp_cat_topic_set_get(c, k, key, klen, &set);
    if (err) {
        return err;
    }
    err = mp_matcher_add(mp_cat_set_matcher(c, set), set->handle, pattern, strlen(pattern));
    if (err) {
        if (set->patterns == 0) {
            mp_cat_topic_set_drop(c, set, key, klen);
        }
        return err;
    }
    set->patterns++;
    return MPREG_OK;
}

static void mp_cat_topic_remove(mp_catalog *c, const mp_topic_key *k) {
    char key[MP_CAT_SET_KEY_MAX];
    size_t klen = mp_cat_set_key(k, key);
    mp_cat_topic_set *set = klen ? mp_map_get(&c->topic_sets, key, klen) : NULL;
    if (!set) {
        return;
    }
    const char *pattern = mp_cat_str(k->pattern);
    mp_matcher_remove(mp_cat_set_matcher(c, set), set->handle, pattern, strlen(pattern));
    if (--set->patterns == 0) {
        mp_cat_topic_set_drop(c, set, key, klen);
    }
}

/* --- live indexes --------------------------------------------------------- */

/* Links a record that just became LIVE into its kind's index. On failure
 * nothing is linked. */
static mpreg_err mp_cat_index_add(mp_catalog *c, mp_cat_record *r) {
    const mp_entry *e = &r->entry;
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        return mp_cat_group_add(&c->functions, mp_cat_str(e->u.function.key.name), r,
                                MP_CAT_SLOT_INDEX);
    case MP_ENTRY_QUEUE:
        return mp_cat_group_add(&c->queues, mp_cat_str(e->u.queue.key.queue), r, MP_CAT_SLOT_INDEX);
    case MP_ENTRY_TOPIC:
        return mp_cat_topic_add(c, &e->u.topic.key);
    case MP_ENTRY_NODE: {
        const char *node = mp_cat_str(e->u.node.key.node);
        return mp_map_put(&c->nodes, node, strlen(node), r, NULL);
    }
    case MP_ENTRY_CACHE: {
        const char *node = mp_cat_str(e->u.cache.key.node);
        return mp_map_put(&c->caches, node, strlen(node), r, NULL);
    }
    }
    return MPREG_E_INVALID;
}

/* Unlinks a record that stops being LIVE. Cannot fail. */
static void mp_cat_index_remove(mp_catalog *c, mp_cat_record *r) {
    const mp_entry *e = &r->entry;
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        mp_cat_group_remove(&c->functions, mp_cat_str(e->u.function.key.name), r,
                            MP_CAT_SLOT_INDEX);
        break;
    case MP_ENTRY_QUEUE:
        mp_cat_group_remove(&c->queues, mp_cat_str(e->u.queue.key.queue), r, MP_CAT_SLOT_INDEX);
        break;
    case MP_ENTRY_TOPIC:
        mp_cat_topic_remove(c, &e->u.topic.key);
        break;
    case MP_ENTRY_NODE: {
        const char *node = mp_cat_str(e->u.node.key.node);
        mp_map_remove(&c->nodes, node, strlen(node));
        break;
    }
    case MP_ENTRY_CACHE: {
        const char *node = mp_cat_str(e->u.cache.key.node);
        mp_map_remove(&c->caches, node, strlen(node));
        break;
    }
    }
}

/* --- counters and digest -------------------------------------------------- */

static void mp_cat_account_add(mp_catalog *c, const mp_cat_record *r) {
    if (r->state == MP_CAT_LIVE) {
        c->live[r->entry.kind]++;
        c->digest += r->hash;
    } else if (r->state == MP_CAT_TOMBSTONE) {
        c->tombstones++;
        c->digest += r->hash;
    }
}

static void mp_cat_account_remove(mp_catalog *c, const mp_cat_record *r) {
    if (r->state == MP_CAT_LIVE) {
        c->live[r->entry.kind]--;
        c->digest -= r->hash;
    } else if (r->state == MP_CAT_TOMBSTONE) {
        c->tombstones--;
        c->digest -= r->hash;
    }
}

/* Sets r's deadlines for its (new) state, as of now_ms, and re-sifts it. */
static void mp_cat_schedule(mp_catalog *c, mp_cat_record *r, uint64_t now_ms) {
    if (r->state == MP_CAT_LIVE) {
        r->expires_at_ms = r->entry.ttl_ms ? mp_cat_add_sat(now_ms, r->entry.ttl_ms) : 0;
        r->tombstone_until_ms = 0;
        /* now_ms = 0 and a TTL still expire, at ttl_ms > 0. */
    } else {
        r->expires_at_ms = 0;
        r->tombstone_until_ms = mp_cat_add_sat(now_ms, c->tombstone_ttl_ms);
    }
    mp_cat_heap_update(&c->heap, r);
}

/* --- records -------------------------------------------------------------- */

/* The copy a record keeps. A tombstone keeps its key and scalars only, just
 * what a tombstone received off the wire has, so that every replica stores
 * (and snapshots) the same thing, and an unvalidated value is never read. */
static mpreg_err mp_cat_clone(const mp_entry *e, mp_entry *dst) {
    if (!e->withdrawn) {
        return mp_entry_clone(e, dst);
    }
    mp_entry bare;
    memset(&bare, 0, sizeof bare);
    bare.kind = e->kind;
    bare.version = e->version;
    bare.ttl_ms = e->ttl_ms;
    bare.withdrawn = true;
    char **from[MP_ENTRY_MAX_KEY_FIELDS];
    char **to[MP_ENTRY_MAX_KEY_FIELDS];
    size_t n = mp_entry_key_slots((mp_entry *)e, from); /* read only */
    mp_entry_key_slots(&bare, to);
    for (size_t i = 0; i < n; i++) {
        *to[i] = *from[i]; /* borrowed for the clone below, never freed */
    }
    return mp_entry_clone(&bare, dst);
}

static void mp_cat_record_free(void *p) {
    mp_cat_record *r = p;
    if (r) {
        mp_entry_free(&r->entry);
        free(r->key);
        free(r);
    }
}

/* Removes r from everything and frees it. Returns true when that emptied its
 * origin's list (which is then freed: callers walking it must stop). */
static bool mp_cat_drop(mp_catalog *c, mp_cat_record *r) {
    if (r->state == MP_CAT_LIVE) {
        mp_cat_index_remove(c, r);
    }
    mp_cat_account_remove(c, r);
    mp_cat_heap_remove(&c->heap, r);
    bool emptied = mp_cat_group_remove(&c->origins, mp_cat_str(mp_entry_origin(&r->entry)), r,
                                       MP_CAT_SLOT_ORIGIN);
    mp_map_remove(&c->records, r->key, r->klen);
    mp_cat_record_free(r);
    return emptied;
}

/* Stores a key the catalog has never seen (or has forgotten). */
static mpreg_err mp_cat_insert(mp_catalog *c, const mp_entry *e, uint64_t hash, uint64_t now_ms,
                               mp_apply_result *res) {
    mp_cat_record *r = calloc(1, sizeof *r);
    if (!r) {
        return MPREG_E_NOMEM;
    }
    r->heap_pos = MP_CAT_NO_POS;
    r->list_pos[MP_CAT_SLOT_ORIGIN] = MP_CAT_NO_POS;
    r->list_pos[MP_CAT_SLOT_INDEX] = MP_CAT_NO_POS;
    mpreg_err err = mp_cat_clone(e, &r->entry);
    if (err) {
        free(r);
        return err;
    }
    r->klen = c->key_scratch.len;
    r->key = malloc(r->klen ? r->klen : 1);
    if (!r->key) {
        mp_cat_record_free(r);
        return MPREG_E_NOMEM;
    }
    memcpy(r->key, c->key_scratch.data, r->klen);
    if ((err = mp_cat_heap_reserve(&c->heap))) {
        mp_cat_record_free(r);
        return err;
    }
    const char *origin = mp_cat_str(mp_entry_origin(&r->entry));
    if ((err = mp_cat_group_add(&c->origins, origin, r, MP_CAT_SLOT_ORIGIN))) {
        mp_cat_record_free(r);
        return err;
    }
    if ((err = mp_map_put(&c->records, r->key, r->klen, r, NULL))) {
        mp_cat_group_remove(&c->origins, origin, r, MP_CAT_SLOT_ORIGIN);
        mp_cat_record_free(r);
        return err;
    }
    r->state = e->withdrawn ? MP_CAT_TOMBSTONE : MP_CAT_LIVE;
    if (r->state == MP_CAT_LIVE && (err = mp_cat_index_add(c, r))) {
        mp_map_remove(&c->records, r->key, r->klen);
        mp_cat_group_remove(&c->origins, origin, r, MP_CAT_SLOT_ORIGIN);
        mp_cat_record_free(r);
        return err;
    }
    r->hash = hash;
    mp_cat_account_add(c, r);
    mp_cat_schedule(c, r, now_ms);
    *res = r->state == MP_CAT_LIVE ? MP_APPLY_ADDED : MP_APPLY_WITHDRAWN;
    return MPREG_OK;
}

/* Replaces r's entry by a winning e. Index membership depends only on the
 * key, which is unchanged, so only a change of liveness touches indexes. */
static mpreg_err mp_cat_replace(mp_catalog *c, mp_cat_record *r, const mp_entry *e, uint64_t hash,
                                uint64_t now_ms, mp_apply_result *res) {
    mp_entry fresh;
    mpreg_err err = mp_cat_clone(e, &fresh);
    if (err) {
        return err;
    }
    if ((err = mp_cat_heap_reserve(&c->heap))) {
        mp_entry_free(&fresh);
        return err;
    }
    mp_cat_state was = r->state;
    mp_cat_state next = e->withdrawn ? MP_CAT_TOMBSTONE : MP_CAT_LIVE;
    mp_entry old = r->entry;
    r->entry = fresh;
    if (was != MP_CAT_LIVE && next == MP_CAT_LIVE) {
        if ((err = mp_cat_index_add(c, r))) {
            r->entry = old;
            mp_entry_free(&fresh);
            return err;
        }
    } else if (was == MP_CAT_LIVE && next != MP_CAT_LIVE) {
        mp_cat_index_remove(c, r);
    }
    mp_cat_account_remove(c, r);
    r->state = next;
    r->hash = hash;
    mp_cat_account_add(c, r);
    mp_entry_free(&old);
    mp_cat_schedule(c, r, now_ms);
    if (next == MP_CAT_TOMBSTONE) {
        *res = MP_APPLY_WITHDRAWN;
    } else {
        *res = was == MP_CAT_LIVE ? MP_APPLY_UPDATED : MP_APPLY_ADDED;
    }
    return MPREG_OK;
}

/* A live entry's TTL ran out: it leaves the indexes and the digest, and
 * stays behind as an EXPIRED marker (see the top of the file). */
static void mp_cat_expire_one(mp_catalog *c, mp_cat_record *r) {
    mp_cat_index_remove(c, r);
    mp_cat_account_remove(c, r);
    r->state = MP_CAT_EXPIRED;
    r->tombstone_until_ms = mp_cat_add_sat(r->expires_at_ms, c->tombstone_ttl_ms);
    r->expires_at_ms = 0;
    mp_cat_heap_update(&c->heap, r);
}

/* --- deaths --------------------------------------------------------------- */

static bool mp_cat_is_dead(const mp_catalog *c, const char *node, uint64_t incarnation) {
    const mp_cat_death *d = mp_map_get(&c->deaths, node, strlen(node));
    return d && incarnation <= d->incarnation;
}

static mpreg_err mp_cat_check_node(const char *node) {
    if (!node || !node[0] || strlen(node) > MP_ENTRY_MAX_STR) {
        return MPREG_E_INVALID;
    }
    return MPREG_OK;
}

/* Drops every record of node at incarnation <= inc; returns the live ones. */
static uint32_t mp_cat_drop_origin(mp_catalog *c, const char *node, uint64_t inc) {
    mp_cat_list *l = mp_map_get(&c->origins, node, strlen(node));
    if (!l) {
        return 0;
    }
    uint32_t removed = 0;
    /* Walk backwards: a swap-remove at i pulls in the last item, which has
     * already been looked at. */
    for (size_t i = l->count; i-- > 0;) {
        mp_cat_record *r = l->items[i];
        if (r->entry.version.incarnation > inc) {
            continue;
        }
        if (r->state == MP_CAT_LIVE) {
            removed++;
        }
        if (mp_cat_drop(c, r)) {
            break;
        }
    }
    return removed;
}

static mpreg_err mp_cat_note_death(mp_catalog *c, const char *node, uint64_t inc,
                                   uint32_t *removed) {
    *removed = 0;
    size_t len = strlen(node);
    mp_cat_death *d = mp_map_get(&c->deaths, node, len);
    if (d && d->incarnation >= inc) {
        return MPREG_OK; /* known already (or older news) */
    }
    if (!d) {
        d = calloc(1, sizeof *d);
        if (!d) {
            return MPREG_E_NOMEM;
        }
        mpreg_err err = mp_map_put(&c->deaths, node, len, d, NULL);
        if (err) {
            free(d);
            return err;
        }
    } else {
        c->digest -= mp_cat_death_hash(node, d->incarnation);
    }
    d->incarnation = inc;
    c->digest += mp_cat_death_hash(node, inc);
    *removed = mp_cat_drop_origin(c, node, inc);
    return MPREG_OK;
}

/* --- applying entries ------------------------------------------------------ */

/* Does e beat the stored r? On a version tie the two canonical encodings
 * decide; c->enc_scratch must already hold e's, and hash its hash. */
static bool mp_cat_wins(mp_catalog *c, const mp_cat_record *r, const mp_entry *e, uint64_t hash,
                        mpreg_err *err) {
    int cmp = mp_entry_version_cmp(e->version, r->entry.version);
    if (cmp != 0) {
        return cmp > 0;
    }
    if (e->withdrawn != r->entry.withdrawn) {
        return e->withdrawn;
    }
    if (hash == r->hash) {
        /* A duplicate, the usual case: no need to encode the stored entry.
         * (Two contents with one 64-bit hash would also share a digest, so
         * nothing could tell those replicas apart anyway.) */
        return false;
    }
    if ((*err = mp_cat_encode(&r->entry, &c->key_scratch, &c->old_scratch))) {
        return false;
    }
    return mp_cat_bytes_cmp(&c->enc_scratch, &c->old_scratch) > 0;
}

/* mp_catalog_apply_entry without validation (callers have validated). */
static mpreg_err mp_cat_apply(mp_catalog *c, const mp_entry *e, uint64_t now_ms,
                              mp_apply_result *res) {
    if (mp_cat_is_dead(c, mp_cat_str(mp_entry_origin(e)), e->version.incarnation)) {
        *res = MP_APPLY_DEAD;
        return MPREG_OK;
    }
    mp_buf_clear(&c->key_scratch);
    mpreg_err err = mp_entry_key_bytes(e, &c->key_scratch);
    if (err) {
        return err;
    }
    mp_cat_record *r = mp_map_get(&c->records, c->key_scratch.data, c->key_scratch.len);
    /* An old version, common in gossip, costs no encoding. */
    if (r && mp_entry_version_cmp(e->version, r->entry.version) < 0) {
        *res = MP_APPLY_STALE;
        return MPREG_OK;
    }
    if ((err = mp_cat_encode(e, &c->key_scratch, &c->enc_scratch))) {
        return err;
    }
    uint64_t hash = mp_hash_bytes(c->enc_scratch.data, c->enc_scratch.len);
    if (r) {
        bool wins = mp_cat_wins(c, r, e, hash, &err);
        if (err) {
            return err;
        }
        if (!wins) {
            *res = MP_APPLY_STALE;
            return MPREG_OK;
        }
    }
    if (!r) {
        return mp_cat_insert(c, e, hash, now_ms, res);
    }
    return mp_cat_replace(c, r, e, hash, now_ms, res);
}

/* --- public API ------------------------------------------------------------ */

mp_catalog *mp_catalog_new(const mp_catalog_config *cfg) {
    mp_catalog *c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    const char *node = cfg && cfg->local_node ? cfg->local_node : "";
    const char *cluster = cfg && cfg->local_cluster ? cfg->local_cluster : "";
    c->local_node = mp_strdup(node);
    c->local_cluster = mp_strdup(cluster);
    mp_heap_init(&c->heap, sizeof(mp_cat_record *), mp_cat_before, mp_cat_placed);
    c->matcher = mp_matcher_new();
    c->group_matcher = mp_matcher_new();
    if (!c->local_node || !c->local_cluster || !c->matcher || !c->group_matcher) {
        mp_catalog_free(c);
        return NULL;
    }
    uint32_t ttl = cfg ? cfg->tombstone_ttl_ms : 0;
    c->tombstone_ttl_ms = ttl ? ttl : MP_CATALOG_DEFAULT_TOMBSTONE_TTL_MS;
    mp_map_init(&c->records);
    mp_map_init(&c->deaths);
    mp_map_init(&c->origins);
    mp_map_init(&c->functions);
    mp_map_init(&c->queues);
    mp_map_init(&c->nodes);
    mp_map_init(&c->caches);
    mp_map_init(&c->topic_nodes);
    mp_map_init(&c->topic_sets);
    mp_map_init(&c->topic_handles);
    mp_buf_init(&c->key_scratch);
    mp_buf_init(&c->enc_scratch);
    mp_buf_init(&c->old_scratch);
    return c;
}

void mp_catalog_free(mp_catalog *c) {
    if (!c) {
        return;
    }
    mp_map_free(&c->records, mp_cat_record_free);
    mp_map_free(&c->deaths, free);
    mp_map_free(&c->origins, mp_cat_list_free);
    mp_map_free(&c->functions, mp_cat_list_free);
    mp_map_free(&c->queues, mp_cat_list_free);
    mp_map_free(&c->nodes, NULL);
    mp_map_free(&c->caches, NULL);
    mp_map_free(&c->topic_nodes, mp_cat_topic_node_free);
    mp_map_free(&c->topic_sets, mp_cat_topic_set_free);
    mp_map_free(&c->topic_handles, NULL);
    mp_matcher_free(c->matcher);
    mp_matcher_free(c->group_matcher);
    mp_heap_free(&c->heap);
    mp_buf_free(&c->key_scratch);
    mp_buf_free(&c->enc_scratch);
    mp_buf_free(&c->old_scratch);
    free(c->local_node);
    free(c->local_cluster);
    free(c);
}

const char *mp_catalog_local_node(const mp_catalog *c) {
    return c->local_node;
}

const char *mp_catalog_local_cluster(const mp_catalog *c) {
    return c->local_cluster;
}

mpreg_err mp_catalog_apply_entry(mp_catalog *c, const mp_entry *e, uint64_t now_ms,
                                 mp_apply_result *result) {
    if (!c || !e) {
        return MPREG_E_INVALID;
    }
    mpreg_err err = mp_entry_validate(e, NULL);
    if (err) {
        return err;
    }
    mp_apply_result res = MP_APPLY_STALE;
    err = mp_cat_apply(c, e, now_ms, &res);
    if (!err && result) {
        *result = res;
    }
    return err;
}

mpreg_err mp_catalog_apply_death(mp_catalog *c, const char *node, uint64_t incarnation,
                                 uint64_t now_ms, uint32_t *removed) {
    (void)now_ms; /* deaths do not age: they are kept as long as the catalog */
    if (!c) {
        return MPREG_E_INVALID;
    }
    mpreg_err err = mp_cat_check_node(node);
    if (err) {
        return err;
    }
    uint32_t n = 0;
    err = mp_cat_note_death(c, node, incarnation, &n);
    if (removed) {
        *removed = n;
    }
    return err;
}

static void mp_cat_tally(mp_apply_stats *s, mp_apply_result res) {
    switch (res) {
    case MP_APPLY_ADDED:
        s->added++;
        break;
    case MP_APPLY_UPDATED:
        s->updated++;
        break;
    case MP_APPLY_WITHDRAWN:
        s->withdrawn++;
        break;
    case MP_APPLY_STALE:
        s->stale++;
        break;
    case MP_APPLY_DEAD:
        s->dead++;
        break;
    }
}

/* Everything is validated before anything is applied, so a bad delta leaves
 * the catalog as it was. */
static mpreg_err mp_cat_validate_delta(const mp_delta *d) {
    for (uint32_t i = 0; i < d->death_count; i++) {
        mpreg_err err = mp_cat_check_node(d->deaths[i].node);
        if (err) {
            return err;
        }
    }
    for (uint32_t i = 0; i < d->entry_count; i++) {
        mpreg_err err = mp_entry_validate(&d->entries[i], NULL);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

mpreg_err mp_catalog_apply_delta(mp_catalog *c, const mp_delta *d, uint64_t now_ms,
                                 mp_apply_stats *stats) {
    if (!c || !d) {
        return MPREG_E_INVALID;
    }
    mp_apply_stats local = {0};
    mp_apply_stats *s = stats ? stats : &local;
    *s = (mp_apply_stats){0};
    mpreg_err err = mp_cat_validate_delta(d);
    if (err) {
        return err;
    }
    /* Deaths first: entries of a dead incarnation in the same delta are then
     * refused rather than added and dropped again. */
    for (uint32_t i = 0; i < d->death_count; i++) {
        uint32_t removed = 0;
        if ((err = mp_cat_note_death(c, d->deaths[i].node, d->deaths[i].incarnation, &removed))) {
            return err;
        }
        s->removed_by_death += removed;
    }
    for (uint32_t i = 0; i < d->entry_count; i++) {
        mp_apply_result res = MP_APPLY_STALE;
        if ((err = mp_cat_apply(c, &d->entries[i], now_ms, &res))) {
            return err;
        }
        mp_cat_tally(s, res);
    }
    return MPREG_OK;
}

size_t mp_catalog_expire(mp_catalog *c, uint64_t now_ms) {
    size_t expired = 0;
    while (mp_heap_len(&c->heap) && mp_cat_due(mp_cat_heap_at(&c->heap, 0)) <= now_ms) {
        mp_cat_record *r = mp_cat_heap_at(&c->heap, 0);
        if (r->state == MP_CAT_LIVE) {
            mp_cat_expire_one(c, r);
            expired++;
        } else {
            mp_cat_drop(c, r);
        }
    }
    return expired;
}

uint64_t mp_catalog_next_expiry(const mp_catalog *c) {
    return mp_heap_len(&c->heap) ? mp_cat_due(mp_cat_heap_at(&c->heap, 0)) : UINT64_MAX;
}

/* --- queries --------------------------------------------------------------- */

void mp_catalog_each(const mp_catalog *c, mp_entry_kind kind, mp_entry_visit visit, void *ud) {
    void *v;
    for (size_t it = 0; mp_map_next(&c->records, &it, NULL, NULL, &v);) {
        const mp_cat_record *r = v;
        if (r->state != MP_CAT_LIVE || (kind && r->entry.kind != kind)) {
            continue;
        }
        if (!visit(ud, &r->entry)) {
            return;
        }
    }
}

void mp_catalog_each_record(const mp_catalog *c, mp_entry_visit visit, void *ud) {
    void *v;
    for (size_t it = 0; mp_map_next(&c->records, &it, NULL, NULL, &v);) {
        const mp_cat_record *r = v;
        if (r->state == MP_CAT_EXPIRED) {
            continue; /* local bookkeeping, not catalog content */
        }
        if (!visit(ud, &r->entry)) {
            return;
        }
    }
}

static void mp_cat_visit_list(const mp_map *groups, const char *name, mp_entry_visit visit,
                              void *ud) {
    if (!name) {
        return;
    }
    const mp_cat_list *l = mp_map_get(groups, name, strlen(name));
    if (!l) {
        return;
    }
    for (size_t i = 0; i < l->count; i++) {
        if (!visit(ud, &l->items[i]->entry)) {
            return;
        }
    }
}

void mp_catalog_each_function(const mp_catalog *c, const char *name, mp_entry_visit visit,
                              void *ud) {
    mp_cat_visit_list(&c->functions, name, visit, ud);
}

void mp_catalog_each_queue(const mp_catalog *c, const char *queue, mp_entry_visit visit, void *ud) {
    mp_cat_visit_list(&c->queues, queue, visit, ud);
}

typedef struct mp_cat_match_ctx {
    const mp_catalog *c;
    void (*cb)(void *ud, const char *node);
    void (*group_cb)(void *ud, const char *node, const char *group);
    void *ud;
} mp_cat_match_ctx;

static void mp_cat_match_hit(void *ud, uint64_t handle) {
    mp_cat_match_ctx *m = ud;
    const mp_cat_topic_set *set = mp_map_get(&m->c->topic_handles, &handle, sizeof handle);
    if (!set) {
        return;
    }
    if (m->cb) {
        m->cb(m->ud, set->tn->node);
    } else if (m->group_cb) {
        m->group_cb(m->ud, set->tn->node, set->group);
    }
}

size_t mp_catalog_remote_topic_nodes(const mp_catalog *c) {
    return c->remote_topic_nodes;
}

size_t mp_catalog_match_topic(mp_catalog *c, const char *topic, size_t len,
                              void (*cb)(void *ud, const char *node), void *ud) {
    if (!topic) {
        return 0;
    }
    mp_cat_match_ctx m = {.c = c, .cb = cb, .ud = ud};
    return mp_matcher_match(c->matcher, topic, len, cb ? mp_cat_match_hit : NULL, &m);
}

size_t mp_catalog_match_topic_groups(mp_catalog *c, const char *topic, size_t len,
                                     void (*cb)(void *ud, const char *node, const char *group),
                                     void *ud) {
    /* Most catalogs have no group at all: no walk then. */
    if (!topic || mp_matcher_sub_count(c->group_matcher) == 0) {
        return 0;
    }
    mp_cat_match_ctx m = {.c = c, .group_cb = cb, .ud = ud};
    return mp_matcher_match(c->group_matcher, topic, len, cb ? mp_cat_match_hit : NULL, &m);
}

const mp_node_descriptor *mp_catalog_node(const mp_catalog *c, const char *node) {
    if (!node) {
        return NULL;
    }
    const mp_cat_record *r = mp_map_get(&c->nodes, node, strlen(node));
    return r ? &r->entry.u.node : NULL;
}

const mp_cache_profile *mp_catalog_cache_profile(const mp_catalog *c, const char *node) {
    if (!node) {
        return NULL;
    }
    const mp_cat_record *r = mp_map_get(&c->caches, node, strlen(node));
    return r ? &r->entry.u.cache : NULL;
}

size_t mp_catalog_count(const mp_catalog *c, mp_entry_kind kind) {
    if (kind == 0) {
        size_t n = 0;
        for (int k = MP_ENTRY_NODE; k <= MP_ENTRY_CACHE; k++) {
            n += c->live[k];
        }
        return n;
    }
    return mp_entry_kind_valid((int)kind) ? c->live[kind] : 0;
}

size_t mp_catalog_tombstones(const mp_catalog *c) {
    return c->tombstones;
}

uint64_t mp_catalog_death(const mp_catalog *c, const char *node) {
    if (!node) {
        return 0;
    }
    const mp_cat_death *d = mp_map_get(&c->deaths, node, strlen(node));
    return d ? d->incarnation : 0;
}

uint64_t mp_catalog_digest(const mp_catalog *c) {
    return c->digest;
}

mpreg_err mp_catalog_snapshot(const mp_catalog *c, mp_delta *out) {
    mp_delta_init(out);
    mpreg_err err = MPREG_OK;
    void *v;
    for (size_t it = 0; !err && mp_map_next(&c->records, &it, NULL, NULL, &v);) {
        const mp_cat_record *r = v;
        if (r->state != MP_CAT_EXPIRED) {
            err = mp_delta_add_entry(out, &r->entry);
        }
    }
    const void *k;
    size_t klen;
    for (size_t it = 0; !err && mp_map_next(&c->deaths, &it, &k, &klen, &v);) {
        /* Map keys are not NUL-terminated; node ids are short. */
        char node[MP_ENTRY_MAX_STR + 1];
        size_t n = klen > MP_ENTRY_MAX_STR ? MP_ENTRY_MAX_STR : klen;
        memcpy(node, k, n);
        node[n] = 0;
        err = mp_delta_add_death(out, node, ((const mp_cat_death *)v)->incarnation);
    }
    if (err) {
        mp_delta_free(out);
        mp_delta_init(out);
    }
    return err;
}
