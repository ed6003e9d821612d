/* matcher.c - the subscription trie.
 *
 * Three kinds of record:
 *   - mp_mnode: a trie node. Its literal children, the '*' and '#' children
 *     apart, and the bindings whose pattern ends here (as mp_mentry: the
 *     subscription pointer sits next to the binding so reporting a hit
 *     does not read the binding).
 *   - mp_msub: a subscription: its id, its bindings, and `seen_epoch`, the
 *     number of the last match that reported it. Each match takes a fresh
 *     epoch, so "already reported?" is one compare, and nothing needs to be
 *     cleared between matches.
 *   - mp_mbind: one (subscription, pattern). It remembers its slot in its
 *     node's entries and in its subscription's list, so unbinding is a
 *     swap-remove, not a search.
 *
 * The matcher owns an mp_map from (sub id, pattern) to binding, for
 * idempotent adds and O(1) removes, and one from sub id to subscription.
 *
 * Literal children are not an mp_map per node, though that was the first
 * design. Once the trie outgrows the cache, matching costs what it reads:
 * bench_matcher had 100k subscriptions matching at under a third of the
 * speed of 1k, although a topic visited only 1.6 times as many nodes. A
 * per-node map took 512 bytes for even one child (1.3 KB per subscription
 * all told), and a found lookup read the slot, the separately allocated
 * key, then the child. Now (cachegrind with a 512 KB last level, per match
 * at 100k subscriptions: 16.4 misses before, 5.0 after; the process went
 * from 157 MB to 73 MB):
 *   - a node is one cache line, line-aligned, and holds the first 15 bytes
 *     of its word, so checking a found child and visiting it read one line;
 *   - children are held by count (see "literal children" below): one
 *     inline, a few in an array, many in a table of one-word tagged slots,
 *     and up to 24 behind a signature in the node that turns most lookups
 *     for absent words away without reading anything else;
 *   - a node with one entry holds the subscription pointer itself;
 *   - the topic's word hashes and keys are computed once per match.
 * Prefetching the branches of a node ahead of the walk was tried as well
 * and made matching no faster (a little slower), so it is not here. */
#include "core/matcher.h"

#include "core/map.h"
#include "core/topic.h"
#include "core/vec.h"

#include <stdlib.h>
#include <string.h>

typedef struct mp_msub mp_msub;
typedef struct mp_mbind mp_mbind;
typedef struct mp_mnode mp_mnode;

struct mp_msub {
    uint64_t id;
    uint64_t seen_epoch;
    mp_mbind **binds;
    size_t nbinds;
    size_t cap;
};

struct mp_mbind {
    mp_msub *sub;
    mp_mnode *node;
    size_t node_idx; /* index in node->entries.many */
    size_t sub_idx;  /* index in sub->binds */
    size_t plen;
    char pattern[]; /* the pattern's bytes, to rebuild keys and the trie path */
};

typedef struct mp_mentry {
    mp_msub *sub;
    mp_mbind *bind;
} mp_mentry;

/* A literal child in a small array. */
typedef struct mp_mkid {
    uint64_t hash; /* mp_hash_bytes of the child's word */
    mp_mnode *node;
} mp_mkid;

#define MP_MNODE_WORD_INLINE 15

/* A word's length and first MP_MNODE_WORD_INLINE bytes, zero padded: two
 * 8-byte compares tell whether a node's word is a topic's word (all of it,
 * for words that short). Compared as integers on purpose: memcmp may read
 * a whole vector and so touch the next cache line. */
typedef struct mp_wkey {
    uint64_t half[2];
} mp_wkey;

/* What a '#' node keeps instead of a word: the topic positions at which the
 * current match has entered it (bit i = position i), valid while `epoch` is
 * the match's. */
typedef struct mp_mvisit {
    uint64_t epoch;
    uint64_t mask;
} mp_mvisit;

/* A word being looked up: its bytes, its hash and its key, computed once. */
typedef struct mp_mword {
    mp_str str;
    uint64_t hash;
    mp_wkey key;
} mp_mword;

/* One cache line, allocated on a line boundary, so that a visit, including
 * the comparison of a word of up to MP_MNODE_WORD_INLINE bytes, reads one
 * line. Only longer words spill into a tail. */
struct mp_mnode {
    union {
        mp_mnode *one;    /* kidcap == 0: the only literal child, or NULL */
        mp_mkid *many;    /* kidcap <= MP_KIDS_SMALL: an array */
        uintptr_t *table; /* kidcap > MP_KIDS_SMALL: a table of tagged slots */
    } kids;
    mp_mnode *star;
    mp_mnode *hash;
    union {
        mp_msub *one;    /* nentries <= 1: the subscription, or NULL */
        mp_mentry *many; /* nentries >= 2 */
    } entries;
    uint32_t nkids;
    uint32_t kidcap;
    uint32_t nentries;
    /* A signature of the literal children, so that most lookups for a
     * word that is not there fail without reading the children: with one
     * child, the low half of its word's hash; with up to MP_SIG_KIDS, a
     * 32-bit Bloom filter (one bit per child, chosen by the hash's top
     * bits); with more, all ones (it would be anyway). */
    uint32_t sig;
    union {
        mp_wkey key;     /* literal nodes: the edge word's length and first bytes */
        mp_mvisit visit; /* '#' nodes */
    } edge;
    char tail[]; /* literal nodes: the rest of a longer word */
};

#define MP_CACHE_LINE 64
_Static_assert(sizeof(mp_mnode) <= MP_CACHE_LINE, "a trie node fits a cache line");

struct mp_matcher {
    mp_mnode *root; /* never freed while the matcher lives */
    mp_map subs;    /* sub id bytes -> mp_msub* */
    mp_map binds;   /* sub id bytes + pattern -> mp_mbind* */
    uint64_t epoch;
    size_t nodes; /* excluding the root */
};

/* The (sub, pattern) key: the id's bytes then the pattern. */
typedef struct mp_bind_key {
    size_t len;
    char bytes[sizeof(uint64_t) + MP_TOPIC_MAX_LEN];
} mp_bind_key;

static void mp_bind_key_make(mp_bind_key *k, uint64_t sub, const char *pattern, size_t len) {
    memcpy(k->bytes, &sub, sizeof sub);
    memcpy(k->bytes + sizeof sub, pattern, len);
    k->len = sizeof sub + len;
}

/* A valid-and-split pattern, plus the trie nodes along it: path[0] is the
 * root, path[i + 1] the node for words[0..i]. */
typedef struct mp_mpath {
    mp_topic_words words;
    mp_mnode *path[MP_TOPIC_MAX_WORDS + 1];
    size_t depth; /* nodes in path beyond the root */
} mp_mpath;

static size_t mp_word_head(size_t len) {
    return len < MP_MNODE_WORD_INLINE ? len : MP_MNODE_WORD_INLINE;
}

static mp_wkey mp_wkey_make(mp_str w) {
    unsigned char bytes[sizeof(mp_wkey)] = {0};
    bytes[0] = (unsigned char)w.len;
    memcpy(bytes + 1, w.ptr, mp_word_head(w.len));
    mp_wkey k;
    memcpy(&k, bytes, sizeof k);
    return k;
}

static mp_mword mp_mword_make(mp_str w) {
    return (mp_mword){w, mp_hash_bytes(w.ptr, w.len), mp_wkey_make(w)};
}

static size_t mp_mnode_wlen(const mp_mnode *n) {
    unsigned char len;
    memcpy(&len, &n->edge.key, 1);
    return len;
}

static bool mp_mnode_has_word(const mp_mnode *n, const mp_mword *w) {
    if (n->edge.key.half[0] != w->key.half[0] || n->edge.key.half[1] != w->key.half[1]) {
        return false;
    }
    return w->str.len <= MP_MNODE_WORD_INLINE || memcmp(n->tail, w->str.ptr + MP_MNODE_WORD_INLINE,
                                                        w->str.len - MP_MNODE_WORD_INLINE) == 0;
}

/* A literal node's whole word, copied out (for rehashing). */
static mp_str mp_mnode_word(const mp_mnode *n, char buf[MP_TOPIC_MAX_LEN]) {
    size_t len = mp_mnode_wlen(n), head = mp_word_head(len);
    unsigned char bytes[sizeof(mp_wkey)];
    memcpy(bytes, &n->edge.key, sizeof bytes);
    memcpy(buf, bytes + 1, head);
    memcpy(buf + head, n->tail, len - head);
    return (mp_str){buf, len};
}

static uint64_t mp_mnode_word_hash(const mp_mnode *n) {
    char buf[MP_TOPIC_MAX_LEN];
    mp_str w = mp_mnode_word(n, buf);
    return mp_hash_bytes(w.ptr, w.len);
}

/* --- literal children --------------------------------------------------
 * Held according to their number, so that the many small nodes of a big
 * trie stay small and a lookup reads as little as possible:
 *   kidcap == 0: at most one child, pointed to directly (kids.one), with
 *                its hash in sig;
 *   kidcap <= MP_KIDS_SMALL: an unordered array of (hash, child);
 *   otherwise: an open-addressing table, kidcap a power of two, linear
 *                probing, at most 3/4 full, backward-shift deletion (no
 *                tombstones) as in map.c. A slot is one word: the child's
 *                address, whose low 6 bits are free because nodes are
 *                cache-line aligned, holding the hash's top 6 bits. Only 1
 *                probe in 64 for another word reads that word's node, and
 *                the root's table for 10k words is 128 KB, not 256.
 * With 2 to MP_SIG_KIDS children, array or table, sig is a Bloom filter of
 * their hashes. */

#define MP_KIDS_SMALL 8
#define MP_SIG_KIDS 24
#define MP_KIDS_TABLE_MIN 16
#define MP_SLOT_TAG ((uintptr_t)MP_CACHE_LINE - 1)

static bool mp_kids_is_table(const mp_mnode *n) {
    return n->kidcap > MP_KIDS_SMALL;
}

static uintptr_t mp_slot_make(const mp_mnode *c, uint64_t h) {
    return (uintptr_t)c | (uintptr_t)(h >> 58); /* the top 6 bits: not the index bits */
}

static mp_mnode *mp_slot_node(uintptr_t slot) {
    return (mp_mnode *)(slot & ~MP_SLOT_TAG);
}

static bool mp_slot_tag_is(uintptr_t slot, uint64_t h) {
    return (slot & MP_SLOT_TAG) == (uintptr_t)(h >> 58);
}

static uint32_t mp_sig_bit(uint64_t h) {
    return (uint32_t)1 << (h >> 59);
}

/* The same bit from a table slot, whose tag is the hash's top 6 bits. */
static uint32_t mp_slot_sig_bit(uintptr_t slot) {
    return (uint32_t)1 << ((slot & MP_SLOT_TAG) >> 1);
}

/* Recomputes n->sig after its children changed. */
static void mp_kids_resign(mp_mnode *n) {
    if (n->kidcap == 0) {
        n->sig = n->kids.one ? (uint32_t)mp_mnode_word_hash(n->kids.one) : 0;
    } else if (n->nkids > MP_SIG_KIDS) {
        n->sig = UINT32_MAX;
    } else if (!mp_kids_is_table(n)) {
        n->sig = 0;
        for (uint32_t i = 0; i < n->nkids; i++) {
            n->sig |= mp_sig_bit(n->kids.many[i].hash);
        }
    } else {
        n->sig = 0;
        for (uint32_t i = 0; i < n->kidcap; i++) {
            n->sig |= n->kids.table[i] ? mp_slot_sig_bit(n->kids.table[i]) : 0;
        }
    }
}

static mp_mnode *mp_kids_get(const mp_mnode *n, const mp_mword *w) {
    uint64_t h = w->hash;
    if (n->kidcap == 0) {
        mp_mnode *c = n->kids.one;
        return c && n->sig == (uint32_t)h && mp_mnode_has_word(c, w) ? c : NULL;
    }
    if (!(n->sig & mp_sig_bit(h))) {
        return NULL;
    }
    if (!mp_kids_is_table(n)) {
        for (uint32_t i = 0; i < n->nkids; i++) {
            if (n->kids.many[i].hash == h && mp_mnode_has_word(n->kids.many[i].node, w)) {
                return n->kids.many[i].node;
            }
        }
        return NULL;
    }
    uint32_t mask = n->kidcap - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        uintptr_t slot = n->kids.table[i];
        if (!slot) {
            return NULL;
        }
        if (mp_slot_tag_is(slot, h) && mp_mnode_has_word(mp_slot_node(slot), w)) {
            return mp_slot_node(slot);
        }
    }
}

/* Iterates the children: for (uint32_t it = 0; (c = mp_kids_next(n, &it));) */
static mp_mnode *mp_kids_next(const mp_mnode *n, uint32_t *it) {
    if (n->kidcap == 0) {
        return (*it)++ == 0 ? n->kids.one : NULL;
    }
    if (!mp_kids_is_table(n)) {
        return *it < n->nkids ? n->kids.many[(*it)++].node : NULL;
    }
    while (*it < n->kidcap) {
        uintptr_t slot = n->kids.table[(*it)++];
        if (slot) {
            return mp_slot_node(slot);
        }
    }
    return NULL;
}

/* Frees the array or table (not the children). */
static void mp_kids_free(mp_mnode *n) {
    if (mp_kids_is_table(n)) {
        free(n->kids.table);
    } else if (n->kidcap) {
        free(n->kids.many);
    }
}

static void mp_table_place(uintptr_t *table, uint32_t cap, const mp_mnode *c, uint64_t h) {
    uint32_t mask = cap - 1;
    uint32_t i = (uint32_t)h & mask;
    while (table[i]) {
        i = (i + 1) & mask;
    }
    table[i] = mp_slot_make(c, h);
}

/* Moves the children into fresh storage of capacity cap (> 0): an array or
 * a table, by cap. */
static mpreg_err mp_kids_rebuild(mp_mnode *n, uint32_t cap) {
    bool table = cap > MP_KIDS_SMALL;
    void *fresh = calloc(cap, table ? sizeof(uintptr_t) : sizeof(mp_mkid));
    if (!fresh) {
        return MPREG_E_NOMEM;
    }
    uint32_t placed = 0;
    mp_mnode *c;
    for (uint32_t it = 0; (c = mp_kids_next(n, &it));) {
        uint64_t h = mp_mnode_word_hash(c);
        if (table) {
            mp_table_place(fresh, cap, c, h);
        } else {
            ((mp_mkid *)fresh)[placed++] = (mp_mkid){h, c};
        }
    }
    mp_kids_free(n);
    if (table) {
        n->kids.table = fresh;
    } else {
        n->kids.many = fresh;
    }
    n->kidcap = cap;
    return MPREG_OK;
}

static mpreg_err mp_kids_add(mp_mnode *n, mp_mnode *c, uint64_t h) {
    uint32_t need = n->nkids + 1;
    if (need == 1) {
        n->kids.one = c;
        n->sig = (uint32_t)h;
        n->nkids = 1;
        return MPREG_OK;
    }
    uint32_t cap = n->kidcap;
    if (cap == 0 || (!mp_kids_is_table(n) && need > cap) ||
        (mp_kids_is_table(n) && (uint64_t)need * 4 > (uint64_t)cap * 3)) {
        uint32_t ncap = need <= 4               ? 4
                        : need <= MP_KIDS_SMALL ? MP_KIDS_SMALL
                        : cap > MP_KIDS_SMALL   ? cap * 2
                                                : MP_KIDS_TABLE_MIN;
        mpreg_err err = mp_kids_rebuild(n, ncap);
        if (err) {
            return err;
        }
    }
    if (mp_kids_is_table(n)) {
        mp_table_place(n->kids.table, n->kidcap, c, h);
    } else {
        n->kids.many[n->nkids] = (mp_mkid){h, c};
    }
    n->nkids++;
    mp_kids_resign(n);
    return MPREG_OK;
}

static void mp_kids_table_remove(mp_mnode *n, const mp_mnode *c, uint64_t h) {
    uintptr_t *t = n->kids.table;
    uint32_t mask = n->kidcap - 1;
    uint32_t hole = (uint32_t)h & mask;
    while (mp_slot_node(t[hole]) != c) {
        hole = (hole + 1) & mask;
    }
    /* Backward shift: pull later members of the probe run into the hole so
     * that lookups never stop early at a gap. */
    for (uint32_t j = (hole + 1) & mask; t[j]; j = (j + 1) & mask) {
        uint32_t home = (uint32_t)mp_mnode_word_hash(mp_slot_node(t[j])) & mask;
        bool between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            t[hole] = t[j];
            hole = j;
        }
    }
    t[hole] = 0;
}

static void mp_kids_remove(mp_mnode *n, mp_mnode *c) {
    if (n->kidcap == 0) {
        n->kids.one = NULL;
        n->nkids = 0;
        n->sig = 0;
        return;
    }
    if (mp_kids_is_table(n)) {
        mp_kids_table_remove(n, c, mp_mnode_word_hash(c));
    } else {
        for (uint32_t i = 0; i < n->nkids; i++) {
            if (n->kids.many[i].node == c) {
                n->kids.many[i] = n->kids.many[n->nkids - 1];
                break;
            }
        }
    }
    n->nkids--;
    if (n->nkids == 1) {
        uint32_t it = 0;
        mp_mnode *last = mp_kids_next(n, &it);
        mp_kids_free(n);
        n->kids.one = last;
        n->kidcap = 0;
    } else if (mp_kids_is_table(n) && n->nkids * 8 <= n->kidcap) {
        /* Shrink a table that emptied out; if that fails it still works. */
        uint32_t cap = n->nkids <= MP_KIDS_SMALL ? MP_KIDS_SMALL : n->kidcap / 4;
        (void)mp_kids_rebuild(n, cap);
    }
    mp_kids_resign(n);
}

/* --- nodes ------------------------------------------------------------------ */

/* A node for the edge word w (the root: an empty word). */
static mp_mnode *mp_mnode_new(mp_str w) {
    bool literal = !mp_word_is_star(w) && !mp_word_is_hash(w);
    size_t tail = literal ? w.len - mp_word_head(w.len) : 0;
    size_t size = (sizeof(mp_mnode) + tail + MP_CACHE_LINE - 1) / MP_CACHE_LINE * MP_CACHE_LINE;
    mp_mnode *n = aligned_alloc(MP_CACHE_LINE, size);
    if (!n) {
        return NULL;
    }
    memset(n, 0, size);
    if (literal && w.len) {
        size_t head = mp_word_head(w.len);
        n->edge.key = mp_wkey_make(w);
        memcpy(n->tail, w.ptr + head, w.len - head);
    }
    return n;
}

static mp_mnode *mp_mnode_child(const mp_mnode *n, mp_str w) {
    if (mp_word_is_star(w)) {
        return n->star;
    }
    if (mp_word_is_hash(w)) {
        return n->hash;
    }
    if (!n->nkids) {
        return NULL;
    }
    mp_mword mw = mp_mword_make(w);
    return mp_kids_get(n, &mw);
}

static bool mp_mnode_is_empty(const mp_mnode *n) {
    return n->nentries == 0 && n->nkids == 0 && !n->star && !n->hash;
}

static void mp_mnode_free(mp_matcher *m, mp_mnode *n) {
    if (n != m->root) {
        m->nodes--;
    }
    mp_kids_free(n);
    if (n->nentries >= 2) {
        free(n->entries.many);
    }
    free(n);
}

static mpreg_err mp_mnode_child_make(mp_matcher *m, mp_mnode *n, mp_str w, mp_mnode **out) {
    mp_mnode *c = mp_mnode_child(n, w);
    if (c) {
        *out = c;
        return MPREG_OK;
    }
    c = mp_mnode_new(w);
    if (!c) {
        return MPREG_E_NOMEM;
    }
    if (mp_word_is_star(w)) {
        n->star = c;
    } else if (mp_word_is_hash(w)) {
        n->hash = c;
    } else if (mp_kids_add(n, c, mp_hash_bytes(w.ptr, w.len))) {
        free(c);
        return MPREG_E_NOMEM;
    }
    m->nodes++;
    *out = c;
    return MPREG_OK;
}

static void mp_mnode_detach(mp_mnode *parent, mp_mnode *c) {
    if (parent->star == c) {
        parent->star = NULL;
    } else if (parent->hash == c) {
        parent->hash = NULL;
    } else {
        mp_kids_remove(parent, c);
    }
}

/* Frees the empty nodes at the bottom of p, deepest first, so that a trie
 * with nothing bound holds no nodes but the root. */
static void mp_matcher_prune(mp_matcher *m, mp_mpath *p) {
    while (p->depth > 0) {
        mp_mnode *n = p->path[p->depth];
        if (!mp_mnode_is_empty(n)) {
            return;
        }
        mp_mnode_detach(p->path[p->depth - 1], n);
        mp_mnode_free(m, n);
        p->depth--;
    }
}

/* Follows existing nodes along p->words; depth stops where the trie does. */
static void mp_matcher_find_path(mp_matcher *m, mp_mpath *p) {
    p->path[0] = m->root;
    p->depth = 0;
    while (p->depth < p->words.count) {
        mp_mnode *c = mp_mnode_child(p->path[p->depth], p->words.words[p->depth]);
        if (!c) {
            return;
        }
        p->path[++p->depth] = c;
    }
}

static void mp_mnode_free_tree(mp_matcher *m, mp_mnode *n) {
    mp_mnode *c;
    for (uint32_t it = 0; (c = mp_kids_next(n, &it));) {
        mp_mnode_free_tree(m, c);
    }
    if (n->star) {
        mp_mnode_free_tree(m, n->star);
    }
    if (n->hash) {
        mp_mnode_free_tree(m, n->hash);
    }
    mp_mnode_free(m, n);
}

/* --- growable arrays ------------------------------------------------------ */

/* --- a node's entries -----------------------------------------------------
 * Most nodes end one pattern of one subscription, so a single entry is just
 * the subscription pointer (a hit reads one line less, and there is no
 * array to allocate). From two entries on, an array of (sub, bind) whose
 * capacity is not stored: it is nentries rounded up to a power of two. */

/* The binding of s whose pattern ends at n (there is exactly one). */
static mp_mbind *mp_msub_bind_at(const mp_msub *s, const mp_mnode *n) {
    for (size_t i = 0; i < s->nbinds; i++) {
        if (s->binds[i]->node == n) {
            return s->binds[i];
        }
    }
    return NULL; /* not reached */
}

/* Makes room for one more entry, so that mp_mnode_entries_push cannot
 * fail. Going from one entry to two needs a new array, which is returned in
 * *spare rather than installed: until the push, the node must stay as it
 * is (the caller may still fail and back out). */
static mpreg_err mp_mnode_entries_reserve(mp_mnode *n, mp_mentry **spare) {
    uint32_t used = n->nentries;
    *spare = NULL;
    if (used == 1) {
        *spare = malloc(2 * sizeof **spare);
        return *spare ? MPREG_OK : MPREG_E_NOMEM;
    }
    if (used < 2 || (used & (used - 1))) {
        return MPREG_OK;
    }
    mp_mentry *e = realloc(n->entries.many, (size_t)used * 2 * sizeof *e);
    if (!e) {
        return MPREG_E_NOMEM;
    }
    n->entries.many = e;
    return MPREG_OK;
}

static void mp_mnode_entries_push(mp_mnode *n, mp_mbind *b, mp_mentry *spare) {
    uint32_t used = n->nentries;
    if (used == 0) {
        n->entries.one = b->sub;
    } else if (used == 1) {
        mp_msub *first = n->entries.one;
        spare[0] = (mp_mentry){first, mp_msub_bind_at(first, n)};
        spare[1] = (mp_mentry){b->sub, b};
        n->entries.many = spare;
    } else {
        n->entries.many[used] = (mp_mentry){b->sub, b};
    }
    b->node_idx = used;
    n->nentries++;
}

static void mp_mnode_entries_remove(mp_mnode *n, const mp_mbind *b) {
    if (n->nentries == 1) {
        n->entries.one = NULL;
        n->nentries = 0;
        return;
    }
    mp_mentry last = n->entries.many[--n->nentries];
    if (b->node_idx != n->nentries) {
        n->entries.many[b->node_idx] = last;
        last.bind->node_idx = b->node_idx;
    }
    if (n->nentries == 1) {
        mp_msub *rest = n->entries.many[0].sub;
        free(n->entries.many);
        n->entries.one = rest;
    }
}

/* --- lifecycle ------------------------------------------------------------ */

mp_matcher *mp_matcher_new(void) {
    mp_matcher *m = calloc(1, sizeof *m);
    if (!m) {
        return NULL;
    }
    m->root = mp_mnode_new(MP_STR_NULL);
    if (!m->root) {
        free(m);
        return NULL;
    }
    mp_map_init(&m->subs);
    mp_map_init(&m->binds);
    return m;
}

static void mp_msub_free(void *v) {
    mp_msub *s = v;
    free(s->binds);
    free(s);
}

void mp_matcher_free(mp_matcher *m) {
    if (!m) {
        return;
    }
    mp_mnode_free_tree(m, m->root);
    mp_map_free(&m->binds, free);
    mp_map_free(&m->subs, mp_msub_free);
    free(m);
}

/* --- add / remove --------------------------------------------------------- */

static mp_msub *mp_matcher_sub_get(const mp_matcher *m, uint64_t sub) {
    return mp_map_get(&m->subs, &sub, sizeof sub);
}

static void mp_matcher_sub_drop(mp_matcher *m, mp_msub *s) {
    mp_map_remove(&m->subs, &s->id, sizeof s->id);
    mp_msub_free(s);
}

/* Creates the nodes along p->words that are missing; on failure the ones
 * made are pruned again. */
static mpreg_err mp_matcher_make_path(mp_matcher *m, mp_mpath *p) {
    p->path[0] = m->root;
    p->depth = 0;
    while (p->depth < p->words.count) {
        mp_mnode *c;
        mpreg_err err = mp_mnode_child_make(m, p->path[p->depth], p->words.words[p->depth], &c);
        if (err) {
            mp_matcher_prune(m, p);
            return err;
        }
        p->path[++p->depth] = c;
    }
    return MPREG_OK;
}

/* Everything that can fail happens before the binding is linked anywhere. */
static mpreg_err mp_matcher_link(mp_matcher *m, mp_msub *s, mp_mnode *n, const mp_bind_key *k,
                                 const char *pattern, size_t len) {
    mp_mentry *spare;
    if (mp_mnode_entries_reserve(n, &spare)) {
        return MPREG_E_NOMEM;
    }
    mp_mbind *b = malloc(sizeof *b + len);
    if (!b || MP_VEC_GROW(s->binds, s->cap, s->nbinds + 1, 1) ||
        mp_map_put(&m->binds, k->bytes, k->len, b, NULL)) {
        free(b);
        free(spare);
        return MPREG_E_NOMEM;
    }
    b->sub = s;
    b->node = n;
    b->sub_idx = s->nbinds;
    b->plen = len;
    memcpy(b->pattern, pattern, len);
    s->binds[s->nbinds++] = b;
    mp_mnode_entries_push(n, b, spare);
    return MPREG_OK;
}

mpreg_err mp_matcher_add(mp_matcher *m, uint64_t sub, const char *pattern, size_t len) {
    mp_mpath p;
    mpreg_err err = mp_pattern_split(pattern, len, &p.words, NULL);
    if (err) {
        return err;
    }
    mp_bind_key k;
    mp_bind_key_make(&k, sub, pattern, len);
    if (mp_map_contains(&m->binds, k.bytes, k.len)) {
        return MPREG_OK;
    }
    mp_msub *s = mp_matcher_sub_get(m, sub);
    bool new_sub = !s;
    if (new_sub) {
        s = calloc(1, sizeof *s);
        if (!s) {
            return MPREG_E_NOMEM;
        }
        s->id = sub;
        if (mp_map_put(&m->subs, &sub, sizeof sub, s, NULL)) {
            free(s);
            return MPREG_E_NOMEM;
        }
    }
    err = mp_matcher_make_path(m, &p);
    if (!err) {
        err = mp_matcher_link(m, s, p.path[p.depth], &k, pattern, len);
        if (err) {
            mp_matcher_prune(m, &p);
        }
    }
    if (err && new_sub) {
        mp_matcher_sub_drop(m, s);
    }
    return err;
}

/* Unlinks and frees b, prunes its trie path, and drops its subscription when
 * that was its last binding. */
static void mp_matcher_unbind(mp_matcher *m, mp_mbind *b) {
    mp_msub *s = b->sub;
    mp_mnode *n = b->node;

    mp_bind_key k;
    mp_bind_key_make(&k, s->id, b->pattern, b->plen);
    mp_map_remove(&m->binds, k.bytes, k.len);

    mp_mnode_entries_remove(n, b);
    mp_mbind *lastb = s->binds[--s->nbinds];
    if (b->sub_idx != s->nbinds) {
        s->binds[b->sub_idx] = lastb;
        lastb->sub_idx = b->sub_idx;
    }

    mp_mpath p;
    mpreg_err err = mp_pattern_split(b->pattern, b->plen, &p.words, NULL);
    (void)err; /* it was validated when bound */
    mp_matcher_find_path(m, &p);
    mp_matcher_prune(m, &p);

    free(b);
    if (s->nbinds == 0) {
        mp_matcher_sub_drop(m, s);
    }
}

mpreg_err mp_matcher_remove(mp_matcher *m, uint64_t sub, const char *pattern, size_t len) {
    if (len > MP_TOPIC_MAX_LEN) {
        return MPREG_E_NOT_FOUND;
    }
    mp_bind_key k;
    mp_bind_key_make(&k, sub, pattern, len);
    mp_mbind *b = mp_map_get(&m->binds, k.bytes, k.len);
    if (!b) {
        return MPREG_E_NOT_FOUND;
    }
    mp_matcher_unbind(m, b);
    return MPREG_OK;
}

void mp_matcher_remove_sub(mp_matcher *m, uint64_t sub) {
    mp_msub *s = mp_matcher_sub_get(m, sub);
    if (!s) {
        return;
    }
    /* Unbind from the end: no swaps, and the last unbind frees s, after
     * which the loop reads nothing more from it. */
    for (size_t left = s->nbinds; left-- > 0;) {
        mp_matcher_unbind(m, s->binds[left]);
    }
}

/* --- match ---------------------------------------------------------------- */

typedef struct mp_mwalk {
    mp_topic_words words;
    mp_mword look[MP_TOPIC_MAX_WORDS]; /* the words, ready for lookups */
    uint64_t epoch;
    mp_matcher_cb cb;
    void *ud;
    size_t hits;
} mp_mwalk;

static void mp_mwalk_hit(mp_mwalk *w, mp_msub *s) {
    if (s->seen_epoch != w->epoch) {
        s->seen_epoch = w->epoch;
        w->hits++;
        if (w->cb) {
            w->cb(w->ud, s->id);
        }
    }
}

static void mp_mwalk_report(mp_mwalk *w, const mp_mnode *n) {
    if (n->nentries == 1) {
        mp_mwalk_hit(w, n->entries.one);
        return;
    }
    for (size_t i = 0; i < n->nentries; i++) {
        mp_mwalk_hit(w, n->entries.many[i].sub);
    }
}

/* Marks '#' node h as entered at pos; false if it already was this match. */
static bool mp_mwalk_mark(const mp_mwalk *w, mp_mnode *h, size_t pos) {
    mp_mvisit *v = &h->edge.visit;
    if (v->epoch != w->epoch) {
        v->epoch = w->epoch;
        v->mask = 0;
    }
    uint64_t bit = (uint64_t)1 << pos;
    if (v->mask & bit) {
        return false;
    }
    v->mask |= bit;
    return true;
}

/* n has matched topic words [0, pos). */
static void mp_mwalk_node(mp_mwalk *w, const mp_mnode *n, size_t pos) {
    size_t count = w->words.count;
    if (pos < count) {
        if (n->nkids) {
            mp_mnode *c = mp_kids_get(n, &w->look[pos]);
            if (c) {
                mp_mwalk_node(w, c, pos + 1);
            }
        }
        if (n->star) {
            mp_mwalk_node(w, n->star, pos + 1);
        }
    } else {
        mp_mwalk_report(w, n);
    }
    if (n->hash) {
        /* '#' swallows words [pos, i) for every i up to the end. Only '#'
         * nodes can be reached twice at one position (from different entry
         * points of an earlier '#'), so only they keep a visited mask. The
         * positions a '#' node was entered at always form a suffix
         * [p0, count] (each entry loop runs to the end), so the first
         * already-visited position means all later ones were too. */
        for (size_t i = pos; i <= count; i++) {
            if (!mp_mwalk_mark(w, n->hash, i)) {
                break;
            }
            mp_mwalk_node(w, n->hash, i);
        }
    }
}

size_t mp_matcher_match(mp_matcher *m, const char *topic, size_t len, mp_matcher_cb cb, void *ud) {
    mp_mwalk w;
    if (mp_topic_split(topic, len, &w.words, NULL)) {
        return 0;
    }
    for (size_t i = 0; i < w.words.count; i++) {
        w.look[i] = mp_mword_make(w.words.words[i]);
    }
    w.epoch = ++m->epoch;
    w.cb = cb;
    w.ud = ud;
    w.hits = 0;
    mp_mwalk_node(&w, m->root, 0);
    return w.hits;
}

size_t mp_matcher_sub_count(const mp_matcher *m) {
    return mp_map_count(&m->subs);
}

size_t mp_matcher_pattern_count(const mp_matcher *m) {
    return mp_map_count(&m->binds);
}

size_t mp_matcher_node_count(const mp_matcher *m) {
    return m->nodes;
}
