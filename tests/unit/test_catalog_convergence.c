/* test_catalog_convergence.c - the catalog is a CRDT: whatever order and
 * duplication its inputs arrive in, replicas end up alike.
 *
 * For each seed, a few simulated origins produce a random history of adds,
 * refreshes (new version, same content), changes, withdrawals and restarts
 * (the old incarnation is declared dead, then the node advertises afresh
 * under a new incarnation with its counter back at zero). Every item of that
 * history (entries and deaths) is then fed to several replicas, each in its
 * own shuffled order, with random duplicates, partly one by one and partly
 * batched into deltas. All replicas must agree with each other (digest,
 * tombstones, live entries) and with a reference model that knows nothing
 * of the catalog's internals: per key, the highest-version item wins, unless
 * its incarnation is dead or it is a withdrawal. */
#include "core/rng.h"
#include "fabric/catalog.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEEDS 50
#define EVENTS 300
#define ORIGINS 5
#define REPLICAS 4
#define NKEYS 13   /* per origin: 6 functions, 3 topics, 2 queues, node, cache */
#define VARIANTS 4 /* distinct contents a key can take */
#define DESC_LEN 160
#define KEY_LEN 64

/* --- the history ---------------------------------------------------------- */

typedef struct item {
    bool death;
    char node[8];         /* the dead node, or the entry's origin */
    uint64_t incarnation; /* death: the dead incarnation */
    mp_entry entry;       /* otherwise: the entry */
    char key[KEY_LEN];    /* entry: the test's own name for its key */
} item;

typedef struct history {
    item *items;
    size_t count;
    size_t cap;
} history;

typedef struct origin {
    char name[8];
    uint64_t incarnation;
    uint64_t counter;
    bool live[NKEYS];
    uint32_t variant[NKEYS];
} origin;

static item *history_push(history *h) {
    if (h->count == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 256;
        h->items = realloc(h->items, h->cap * sizeof *h->items);
        cr_assert_not_null(h->items);
    }
    item *it = &h->items[h->count++];
    memset(it, 0, sizeof *it);
    return it;
}

static void history_free(history *h) {
    for (size_t i = 0; i < h->count; i++) {
        if (!h->items[i].death) {
            mp_entry_free(&h->items[i].entry);
        }
    }
    free(h->items);
}

static const char *const fn_names[] = {"f0", "f1", "f2"};
static const char *const fn_versions[] = {"1.0.0", "2.0.0"};
static const char *const patterns[] = {"a.*", "a.#", "b.c"};
static const char *const queues[] = {"q0", "q1"};

/* The test's own key naming, independent of mp_entry_key_bytes. */
static void key_name(const mp_entry *e, char *out, size_t n) {
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        snprintf(out, n, "F|%s|%s|%s", e->u.function.key.node, e->u.function.key.name,
                 e->u.function.key.version);
        break;
    case MP_ENTRY_TOPIC:
        snprintf(out, n, "T|%s|%s", e->u.topic.key.node, e->u.topic.key.pattern);
        break;
    case MP_ENTRY_QUEUE:
        snprintf(out, n, "Q|%s|%s", e->u.queue.key.node, e->u.queue.key.queue);
        break;
    case MP_ENTRY_NODE:
        snprintf(out, n, "N|%s", e->u.node.key.node);
        break;
    case MP_ENTRY_CACHE:
        snprintf(out, n, "C|%s", e->u.cache.key.node);
        break;
    }
}

/* Key, version and a content fingerprint of a live entry. */
static void describe(const mp_entry *e, char *out, size_t n) {
    char key[KEY_LEN];
    key_name(e, key, sizeof key);
    char content[32] = "";
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        snprintf(content, sizeof content, "load=%" PRIu32, e->u.function.load);
        break;
    case MP_ENTRY_TOPIC:
        snprintf(content, sizeof content, "%s", e->u.topic.cluster);
        break;
    case MP_ENTRY_QUEUE:
        snprintf(content, sizeof content, "m=%" PRIu32 ",h=%d", e->u.queue.modes,
                 e->u.queue.healthy);
        break;
    case MP_ENTRY_NODE:
        snprintf(content, sizeof content, "%s,ep=%" PRIu32, e->u.node.name,
                 e->u.node.endpoints.count);
        break;
    case MP_ENTRY_CACHE:
        snprintf(content, sizeof content, "u=%.2f", e->u.cache.utilization);
        break;
    }
    snprintf(out, n, "%s@%" PRIu64 ".%" PRIu64 "|%s", key, e->version.incarnation,
             e->version.counter, content);
}

/* Builds key k of origin o with content variant v. */
static void build(const origin *o, int k, uint32_t v, mp_entry *e) {
    mpreg_err err;
    if (k < 6) {
        err = mp_entry_function(e, o->name, "c1", fn_names[k / 2], "", fn_versions[k % 2]);
        e->u.function.load = v;
    } else if (k < 9) {
        err = mp_entry_topic(e, o->name, v % 2 ? "c2" : "c1", patterns[k - 6]);
    } else if (k < 11) {
        err = mp_entry_queue(e, o->name, "c1", queues[k - 9], 1u << v);
        e->u.queue.healthy = v % 2 == 0;
    } else if (k == 11) {
        char name[24];
        snprintf(name, sizeof name, "%s-v%" PRIu32, o->name, v);
        err = mp_entry_node(e, o->name, name, "c1", o->incarnation);
        for (uint32_t i = 0; i < v && !err; i++) {
            char ep[48];
            snprintf(ep, sizeof ep, "10.0.0.%" PRIu32 ":70%02" PRIu32, i + 1, i);
            err = mp_strlist_push(&e->u.node.endpoints, ep);
        }
    } else {
        err = mp_entry_cache(e, o->name, "c1", "eu");
        e->u.cache.utilization = v / 4.0;
    }
    cr_assert_eq(err, MPREG_OK);
}

/* The origin changes key k: a new version, live or withdrawn. */
static void emit(history *h, origin *o, int k, uint32_t v, bool withdraw) {
    item *it = history_push(h);
    build(o, k, v, &it->entry);
    it->entry.version = (mp_entry_version){o->incarnation, ++o->counter};
    it->entry.withdrawn = withdraw;
    key_name(&it->entry, it->key, sizeof it->key);
    snprintf(it->node, sizeof it->node, "%s", o->name);
    o->live[k] = !withdraw;
    o->variant[k] = v;
}

static int pick_live(mp_rng *r, const origin *o) {
    int live[NKEYS];
    int n = 0;
    for (int k = 0; k < NKEYS; k++) {
        if (o->live[k]) {
            live[n++] = k;
        }
    }
    return n ? live[mp_rng_below(r, (uint64_t)n)] : -1;
}

static void restart(history *h, mp_rng *r, origin *o) {
    /* Someone (SWIM) declares the old incarnation dead; the node comes back. */
    item *it = history_push(h);
    it->death = true;
    snprintf(it->node, sizeof it->node, "%s", o->name);
    it->incarnation = o->incarnation;
    o->incarnation++;
    o->counter = 0;
    memset(o->live, 0, sizeof o->live);
    for (int k = 0; k < NKEYS; k++) {
        if (mp_rng_below(r, 2)) {
            emit(h, o, k, (uint32_t)mp_rng_below(r, VARIANTS), false);
        }
    }
}

static void generate(history *h, mp_rng *r) {
    origin origins[ORIGINS];
    memset(origins, 0, sizeof origins);
    for (int i = 0; i < ORIGINS; i++) {
        snprintf(origins[i].name, sizeof origins[i].name, "n%d", i);
        origins[i].incarnation = 1 + mp_rng_below(r, 3);
    }
    for (int ev = 0; ev < EVENTS; ev++) {
        origin *o = &origins[mp_rng_below(r, ORIGINS)];
        uint64_t roll = mp_rng_below(r, 100);
        int k = pick_live(r, o);
        if (roll < 4) {
            restart(h, r, o);
        } else if (roll < 50 || k < 0) { /* add, or change a live one */
            k = (int)mp_rng_below(r, NKEYS);
            emit(h, o, k, (uint32_t)mp_rng_below(r, VARIANTS), false);
        } else if (roll < 75) { /* refresh: same content, new version */
            emit(h, o, k, o->variant[k], false);
        } else {
            emit(h, o, k, o->variant[k], true);
        }
    }
}

/* --- the reference model -------------------------------------------------- */

typedef struct desc_list {
    char (*items)[DESC_LEN];
    size_t count;
    size_t cap;
} desc_list;

static char *desc_push(desc_list *l) {
    if (l->count == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->items = realloc(l->items, l->cap * sizeof *l->items);
        cr_assert_not_null(l->items);
    }
    return l->items[l->count++];
}

static int desc_cmp(const void *a, const void *b) {
    return strcmp(a, b);
}

static void desc_sort(desc_list *l) {
    qsort(l->items, l->count, sizeof *l->items, desc_cmp);
}

static uint64_t max_death(const history *h, const char *node) {
    uint64_t inc = 0;
    for (size_t i = 0; i < h->count; i++) {
        const item *it = &h->items[i];
        if (it->death && strcmp(it->node, node) == 0 && it->incarnation > inc) {
            inc = it->incarnation;
        }
    }
    return inc;
}

static bool newer(mp_entry_version a, mp_entry_version b) {
    return a.incarnation != b.incarnation ? a.incarnation > b.incarnation : a.counter > b.counter;
}

/* Quadratic on purpose: as plain as it gets. */
static void reference(const history *h, desc_list *out) {
    for (size_t i = 0; i < h->count; i++) {
        const item *it = &h->items[i];
        if (it->death) {
            continue;
        }
        bool is_max = true;
        for (size_t j = 0; j < h->count && is_max; j++) {
            const item *other = &h->items[j];
            if (!other->death && strcmp(other->key, it->key) == 0 &&
                newer(other->entry.version, it->entry.version)) {
                is_max = false;
            }
        }
        if (!is_max || it->entry.withdrawn) {
            continue;
        }
        if (it->entry.version.incarnation <= max_death(h, it->node)) {
            continue;
        }
        describe(&it->entry, desc_push(out), DESC_LEN);
    }
    desc_sort(out);
}

/* --- replicas ------------------------------------------------------------- */

static bool collect(void *ud, const mp_entry *e) {
    describe(e, desc_push(ud), DESC_LEN);
    return true;
}

static void live_set(const mp_catalog *c, desc_list *out) {
    mp_catalog_each(c, 0, collect, out);
    desc_sort(out);
}

static void apply_one(mp_catalog *c, const item *it, uint64_t seed) {
    mpreg_err err;
    if (it->death) {
        err = mp_catalog_apply_death(c, it->node, it->incarnation, 1000, NULL);
    } else {
        mp_apply_result res;
        err = mp_catalog_apply_entry(c, &it->entry, 1000, &res);
    }
    cr_assert_eq(err, MPREG_OK, "seed %" PRIu64 ": apply: %s", seed, mpreg_err_name(err));
}

static void apply_batch(mp_catalog *c, const history *h, const size_t *order, size_t n,
                        uint64_t seed) {
    mp_delta d;
    mp_delta_init(&d);
    for (size_t i = 0; i < n; i++) {
        const item *it = &h->items[order[i]];
        mpreg_err err = it->death ? mp_delta_add_death(&d, it->node, it->incarnation)
                                  : mp_delta_add_entry(&d, &it->entry);
        cr_assert_eq(err, MPREG_OK);
    }
    mpreg_err err = mp_catalog_apply_delta(c, &d, 1000, NULL);
    cr_assert_eq(err, MPREG_OK, "seed %" PRIu64 ": apply_delta: %s", seed, mpreg_err_name(err));
    mp_delta_free(&d);
}

/* Every item at least once, a fifth of them again, shuffled; then fed in
 * runs, each run either item by item or as one delta. */
static mp_catalog *replay(const history *h, mp_rng *r, uint64_t seed) {
    size_t n = h->count + h->count / 5;
    size_t *order = malloc(n * sizeof *order);
    cr_assert_not_null(order);
    for (size_t i = 0; i < n; i++) {
        order[i] = i < h->count ? i : mp_rng_below(r, h->count);
    }
    for (size_t i = n; i > 1; i--) {
        size_t j = mp_rng_below(r, i);
        size_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    mp_catalog_config cfg = {"observer", "c1", 0};
    mp_catalog *c = mp_catalog_new(&cfg);
    cr_assert_not_null(c);
    for (size_t at = 0; at < n;) {
        size_t run = 1 + mp_rng_below(r, 24);
        if (run > n - at) {
            run = n - at;
        }
        if (mp_rng_below(r, 2)) {
            apply_batch(c, h, order + at, run, seed);
        } else {
            for (size_t i = 0; i < run; i++) {
                apply_one(c, &h->items[order[at + i]], seed);
            }
        }
        at += run;
    }
    free(order);
    return c;
}

static void expect_same(const desc_list *want, const desc_list *got, uint64_t seed, int replica) {
    size_t n = want->count < got->count ? want->count : got->count;
    for (size_t i = 0; i < n; i++) {
        cr_assert_str_eq(got->items[i], want->items[i], "seed %" PRIu64 " replica %d: entry %zu",
                         seed, replica, i);
    }
    cr_assert_eq(got->count, want->count, "seed %" PRIu64 " replica %d: %zu live, want %zu", seed,
                 replica, got->count, want->count);
}

static void run_seed(uint64_t seed) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, seed);
    mp_rng *r = &x.rng;
    history h = {0};
    generate(&h, r);

    desc_list want = {0};
    reference(&h, &want);

    mp_catalog *replicas[REPLICAS];
    for (int i = 0; i < REPLICAS; i++) {
        replicas[i] = replay(&h, r, seed);
        desc_list got = {0};
        live_set(replicas[i], &got);
        expect_same(&want, &got, seed, i);
        free(got.items);
        cr_assert_eq(mp_catalog_digest(replicas[i]), mp_catalog_digest(replicas[0]),
                     "seed %" PRIu64 " replica %d: digest", seed, i);
        cr_assert_eq(mp_catalog_tombstones(replicas[i]), mp_catalog_tombstones(replicas[0]),
                     "seed %" PRIu64 " replica %d: tombstones", seed, i);
        cr_assert_eq(mp_catalog_count(replicas[i], 0), want.count);
    }

    /* Anti-entropy: a snapshot carries the whole state to a fresh catalog. */
    mp_delta snap;
    cr_assert_eq(mp_catalog_snapshot(replicas[0], &snap), MPREG_OK);
    mp_catalog_config cfg = {"fresh", "c1", 0};
    mp_catalog *fresh = mp_catalog_new(&cfg);
    cr_assert_eq(mp_catalog_apply_delta(fresh, &snap, 1000, NULL), MPREG_OK);
    cr_assert_eq(mp_catalog_digest(fresh), mp_catalog_digest(replicas[0]),
                 "seed %" PRIu64 ": snapshot digest", seed);
    mp_catalog_free(fresh);
    mp_delta_free(&snap);

    for (int i = 0; i < REPLICAS; i++) {
        mp_catalog_free(replicas[i]);
    }
    free(want.items);
    history_free(&h);
}

Test(catalog_convergence, shuffled_duplicated_batched) {
    for (uint64_t seed = 1; seed <= SEEDS; seed++) {
        run_seed(seed);
    }
}

/* The history must actually exercise what the test claims to. */
Test(catalog_convergence, histories_cover_every_case) {
    size_t deaths = 0, withdrawals = 0, entries = 0;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        mp_xoshiro x;
        mp_xoshiro_seed(&x, seed);
        history h = {0};
        generate(&h, &x.rng);
        for (size_t i = 0; i < h.count; i++) {
            if (h.items[i].death) {
                deaths++;
            } else if (h.items[i].entry.withdrawn) {
                withdrawals++;
            } else {
                entries++;
            }
        }
        desc_list want = {0};
        reference(&h, &want);
        cr_assert_gt(want.count, 0u);
        free(want.items);
        history_free(&h);
    }
    cr_assert_gt(deaths, 10u);
    cr_assert_gt(withdrawals, 50u);
    cr_assert_gt(entries, 500u);
}
