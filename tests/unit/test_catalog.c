/* test_catalog.c - the routing catalog: merge rules, expiry, deaths, indexes,
 * digest and snapshots. The order-independence property is tested on its own
 * in test_catalog_convergence.c. */
#include "fabric/catalog.h"

#include "core/topic.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- helpers --------------------------------------------------------------- */

static mp_catalog *new_catalog(uint32_t tombstone_ttl_ms) {
    mp_catalog_config cfg = {"self", "c1", tombstone_ttl_ms};
    mp_catalog *c = mp_catalog_new(&cfg);
    cr_assert_not_null(c);
    return c;
}

static mp_entry_version ver(uint64_t inc, uint64_t ctr) {
    return (mp_entry_version){inc, ctr};
}

static mp_entry fn(const char *node, const char *name, const char *version, mp_entry_version v) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, node, "c1", name, "", version), MPREG_OK);
    e.version = v;
    return e;
}

static mp_entry topic(const char *node, const char *pattern, mp_entry_version v) {
    mp_entry e;
    cr_assert_eq(mp_entry_topic(&e, node, "c1", pattern), MPREG_OK);
    e.version = v;
    return e;
}

static mp_entry queue(const char *node, const char *name, mp_entry_version v) {
    mp_entry e;
    cr_assert_eq(mp_entry_queue(&e, node, "c1", name, MP_QUEUE_AT_LEAST_ONCE), MPREG_OK);
    e.version = v;
    return e;
}

static mp_entry node_desc(const char *node, mp_entry_version v) {
    mp_entry e;
    cr_assert_eq(mp_entry_node(&e, node, NULL, "c1", v.incarnation), MPREG_OK);
    e.version = v;
    return e;
}

static mp_entry cache(const char *node, const char *region, mp_entry_version v) {
    mp_entry e;
    cr_assert_eq(mp_entry_cache(&e, node, "c1", region), MPREG_OK);
    e.version = v;
    return e;
}

static mp_entry withdrawn(mp_entry e) {
    e.withdrawn = true;
    return e;
}

/* Applies e, frees it, returns the result. */
static mp_apply_result put(mp_catalog *c, mp_entry e, uint64_t now) {
    mp_apply_result res = 0;
    mpreg_err err = mp_catalog_apply_entry(c, &e, now, &res);
    mp_entry_free(&e);
    cr_assert_eq(err, MPREG_OK, "apply: %s", mpreg_err_name(err));
    return res;
}

static uint32_t die(mp_catalog *c, const char *node, uint64_t inc) {
    uint32_t removed = 99;
    cr_assert_eq(mp_catalog_apply_death(c, node, inc, 0, &removed), MPREG_OK);
    return removed;
}

static bool count_visit(void *ud, const mp_entry *e) {
    (void)e;
    (*(size_t *)ud)++;
    return true;
}

static size_t functions_named(const mp_catalog *c, const char *name) {
    size_t n = 0;
    mp_catalog_each_function(c, name, count_visit, &n);
    return n;
}

static size_t queues_named(const mp_catalog *c, const char *name) {
    size_t n = 0;
    mp_catalog_each_queue(c, name, count_visit, &n);
    return n;
}

/* The nodes a topic matches, as a sorted, comma-joined string. */
typedef struct match_set {
    char names[16][32];
    size_t count;
} match_set;

static void match_cb(void *ud, const char *node) {
    match_set *m = ud;
    cr_assert_lt(m->count, 16u);
    snprintf(m->names[m->count++], sizeof m->names[0], "%s", node);
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(a, b);
}

static const char *matches(mp_catalog *c, const char *t) {
    static char out[512];
    match_set m = {0};
    size_t n = mp_catalog_match_topic(c, t, strlen(t), match_cb, &m);
    cr_assert_eq(n, m.count);
    qsort(m.names, m.count, sizeof m.names[0], cmp_names);
    out[0] = 0;
    for (size_t i = 0; i < m.count; i++) {
        if (i) {
            strcat(out, ",");
        }
        strcat(out, m.names[i]);
    }
    return out;
}

static uint32_t load_of_first(const mp_catalog *c, const char *name);

/* --- merge rules ------------------------------------------------------------ */

Test(catalog, add_update_stale) {
    mp_catalog *c = new_catalog(0);
    cr_assert_str_eq(mp_catalog_local_node(c), "self");
    cr_assert_str_eq(mp_catalog_local_cluster(c), "c1");
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0), MP_APPLY_ADDED);
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0), MP_APPLY_STALE, "duplicate");
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 3)), 0), MP_APPLY_UPDATED);
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 2)), 0), MP_APPLY_STALE, "older");
    /* Other key parts make other entries. */
    cr_assert_eq(put(c, fn("a", "f", "2.0.0", ver(1, 1)), 0), MP_APPLY_ADDED);
    cr_assert_eq(put(c, fn("b", "f", "1.0.0", ver(1, 1)), 0), MP_APPLY_ADDED);
    cr_assert_eq(mp_catalog_count(c, 0), 3u);
    cr_assert_eq(mp_catalog_count(c, MP_ENTRY_FUNCTION), 3u);
    cr_assert_eq(mp_catalog_count(c, MP_ENTRY_TOPIC), 0u);
    cr_assert_eq(functions_named(c, "f"), 3u);
    mp_catalog_free(c);
}

Test(catalog, update_replaces_content) {
    mp_catalog *c = new_catalog(0);
    mp_entry e = fn("a", "f", "1.0.0", ver(1, 1));
    e.u.function.load = 5;
    put(c, e, 0);
    e = fn("a", "f", "1.0.0", ver(1, 2));
    e.u.function.load = 9;
    cr_assert_eq(put(c, e, 0), MP_APPLY_UPDATED);
    cr_assert_eq(load_of_first(c, "f"), 9u);
    cr_assert_eq(functions_named(c, "f"), 1u);
    mp_catalog_free(c);
}

Test(catalog, withdraw_and_tombstone_blocks_late_add) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    cr_assert_eq(put(c, withdrawn(fn("a", "f", "1.0.0", ver(1, 2))), 0), MP_APPLY_WITHDRAWN);
    cr_assert_eq(mp_catalog_count(c, 0), 0u);
    cr_assert_eq(mp_catalog_tombstones(c), 1u);
    cr_assert_eq(functions_named(c, "f"), 0u);
    /* The add that the withdrawal overtook arrives late: refused. */
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0), MP_APPLY_STALE);
    /* At the same version the withdrawal wins too. */
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 2)), 0), MP_APPLY_STALE);
    cr_assert_eq(mp_catalog_count(c, 0), 0u);
    /* A re-registration (newer version) brings it back. */
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 3)), 0), MP_APPLY_ADDED);
    cr_assert_eq(mp_catalog_tombstones(c), 0u);
    cr_assert_eq(functions_named(c, "f"), 1u);
    mp_catalog_free(c);
}

Test(catalog, withdrawal_of_unknown_key_is_kept) {
    mp_catalog *c = new_catalog(0);
    cr_assert_eq(put(c, withdrawn(fn("a", "f", "1.0.0", ver(1, 5))), 0), MP_APPLY_WITHDRAWN);
    cr_assert_eq(mp_catalog_tombstones(c), 1u);
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 4)), 0), MP_APPLY_STALE);
    cr_assert_eq(mp_catalog_count(c, 0), 0u);
    mp_catalog_free(c);
}

Test(catalog, same_version_conflicts_converge) {
    /* Two contents at one version (a buggy origin): both orders keep the same one. */
    mp_catalog *c1 = new_catalog(0);
    mp_catalog *c2 = new_catalog(0);
    mp_entry a = fn("a", "f", "1.0.0", ver(1, 1));
    a.u.function.load = 1;
    mp_entry b = fn("a", "f", "1.0.0", ver(1, 1));
    b.u.function.load = 2;
    mp_apply_result r1, r2;
    cr_assert_eq(mp_catalog_apply_entry(c1, &a, 0, &r1), MPREG_OK);
    cr_assert_eq(mp_catalog_apply_entry(c1, &b, 0, &r2), MPREG_OK);
    cr_assert_eq(mp_catalog_apply_entry(c2, &b, 0, &r1), MPREG_OK);
    cr_assert_eq(mp_catalog_apply_entry(c2, &a, 0, &r2), MPREG_OK);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    cr_assert_eq(load_of_first(c1, "f"), load_of_first(c2, "f"));
    /* Either way exactly one of the two orders saw an update. */
    cr_assert_eq(mp_catalog_count(c1, 0), 1u);

    /* A withdrawal at the same version beats either, in either order. */
    mp_entry w = withdrawn(fn("a", "f", "1.0.0", ver(1, 1)));
    cr_assert_eq(mp_catalog_apply_entry(c1, &w, 0, &r1), MPREG_OK);
    cr_assert_eq(r1, MP_APPLY_WITHDRAWN);
    mp_catalog *c3 = new_catalog(0);
    cr_assert_eq(mp_catalog_apply_entry(c3, &w, 0, &r1), MPREG_OK);
    cr_assert_eq(mp_catalog_apply_entry(c3, &a, 0, &r1), MPREG_OK);
    cr_assert_eq(r1, MP_APPLY_STALE);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c3));
    mp_entry_free(&a);
    mp_entry_free(&b);
    mp_entry_free(&w);
    mp_catalog_free(c1);
    mp_catalog_free(c2);
    mp_catalog_free(c3);
}

Test(catalog, tombstone_value_does_not_matter) {
    /* The wire drops a tombstone's value; a locally built one may carry it.
     * Both must count as the same tombstone. */
    mp_catalog *c1 = new_catalog(0);
    mp_catalog *c2 = new_catalog(0);
    mp_entry full = withdrawn(fn("a", "f", "1.0.0", ver(1, 2)));
    full.u.function.load = 7;
    mp_entry bare = withdrawn(fn("a", "f", "1.0.0", ver(1, 2)));
    free(bare.u.function.cluster);
    bare.u.function.cluster = NULL;
    cr_assert_eq(put(c1, full, 0), MP_APPLY_WITHDRAWN);
    cr_assert_eq(put(c2, bare, 0), MP_APPLY_WITHDRAWN);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    cr_assert_eq(put(c1, withdrawn(fn("a", "f", "1.0.0", ver(1, 2))), 0), MP_APPLY_STALE);
    mp_catalog_free(c1);
    mp_catalog_free(c2);
}

/* --- time ------------------------------------------------------------------- */

Test(catalog, tombstone_gc_after_ttl) {
    mp_catalog *c = new_catalog(1000);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    cr_assert_eq(mp_catalog_next_expiry(c), UINT64_MAX, "no TTL, no tombstone");
    put(c, withdrawn(fn("a", "f", "1.0.0", ver(1, 2))), 100);
    cr_assert_eq(mp_catalog_next_expiry(c), 1100u);
    cr_assert_eq(mp_catalog_expire(c, 1099), 0u);
    cr_assert_eq(mp_catalog_tombstones(c), 1u);
    cr_assert_eq(mp_catalog_expire(c, 1100), 0u, "tombstones are not live entries");
    cr_assert_eq(mp_catalog_tombstones(c), 0u);
    cr_assert_eq(mp_catalog_next_expiry(c), UINT64_MAX);
    /* Forgotten: a very late old add is news again (why the keep time is long). */
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 1)), 2000), MP_APPLY_ADDED);
    mp_catalog_free(c);
}

Test(catalog, default_tombstone_ttl) {
    mp_catalog *c = new_catalog(0);
    put(c, withdrawn(fn("a", "f", "1.0.0", ver(1, 2))), 10);
    cr_assert_eq(mp_catalog_next_expiry(c), 10u + MP_CATALOG_DEFAULT_TOMBSTONE_TTL_MS);
    mp_catalog_free(c);
}

Test(catalog, ttl_expiry_and_refresh) {
    mp_catalog *c = new_catalog(1000);
    mp_entry e = fn("a", "f", "1.0.0", ver(1, 1));
    e.ttl_ms = 500;
    cr_assert_eq(put(c, e, 0), MP_APPLY_ADDED);
    cr_assert_eq(mp_catalog_next_expiry(c), 500u);
    /* A duplicate does not extend the lease; a refresh does. */
    e = fn("a", "f", "1.0.0", ver(1, 1));
    e.ttl_ms = 500;
    cr_assert_eq(put(c, e, 300), MP_APPLY_STALE);
    cr_assert_eq(mp_catalog_next_expiry(c), 500u);
    e = fn("a", "f", "1.0.0", ver(1, 2));
    e.ttl_ms = 500;
    cr_assert_eq(put(c, e, 300), MP_APPLY_UPDATED);
    cr_assert_eq(mp_catalog_next_expiry(c), 800u);
    cr_assert_eq(mp_catalog_expire(c, 799), 0u);
    cr_assert_eq(functions_named(c, "f"), 1u);
    uint64_t before = mp_catalog_digest(c);
    cr_assert_eq(mp_catalog_expire(c, 800), 1u);
    cr_assert_eq(mp_catalog_count(c, 0), 0u);
    cr_assert_eq(functions_named(c, "f"), 0u);
    cr_assert_neq(mp_catalog_digest(c), before);
    cr_assert_eq(mp_catalog_digest(c), 0u, "an expired entry leaves the digest");
    /* A peer still holding the expired version cannot hand it back... */
    e = fn("a", "f", "1.0.0", ver(1, 2));
    e.ttl_ms = 500;
    cr_assert_eq(put(c, e, 900), MP_APPLY_STALE);
    cr_assert_eq(mp_catalog_count(c, 0), 0u);
    /* ...but the origin's next refresh revives it. */
    e = fn("a", "f", "1.0.0", ver(1, 3));
    e.ttl_ms = 500;
    cr_assert_eq(put(c, e, 900), MP_APPLY_ADDED);
    cr_assert_eq(functions_named(c, "f"), 1u);
    cr_assert_eq(mp_catalog_next_expiry(c), 1400u);
    mp_catalog_free(c);
}

Test(catalog, expired_marker_is_dropped_later) {
    mp_catalog *c = new_catalog(1000);
    mp_entry e = fn("a", "f", "1.0.0", ver(1, 1));
    e.ttl_ms = 100;
    put(c, e, 0);
    cr_assert_eq(mp_catalog_expire(c, 100), 1u);
    cr_assert_eq(mp_catalog_next_expiry(c), 1100u);
    cr_assert_eq(mp_catalog_expire(c, 1100), 0u);
    cr_assert_eq(mp_catalog_next_expiry(c), UINT64_MAX);
    /* Forgotten entirely: not a record any more. */
    size_t n = 0;
    mp_catalog_each_record(c, count_visit, &n);
    cr_assert_eq(n, 0u);
    mp_catalog_free(c);
}

Test(catalog, next_expiry_is_the_minimum) {
    mp_catalog *c = new_catalog(10000);
    cr_assert_eq(mp_catalog_next_expiry(c), UINT64_MAX);
    uint32_t ttls[] = {700, 300, 900, 500, 0, 100, 800};
    for (size_t i = 0; i < sizeof ttls / sizeof ttls[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "f%zu", i);
        mp_entry e = fn("a", name, "1.0.0", ver(1, 1));
        e.ttl_ms = ttls[i];
        put(c, e, 0);
    }
    cr_assert_eq(mp_catalog_next_expiry(c), 100u);
    /* Withdrawing the soonest moves the minimum to the next one. */
    put(c, withdrawn(fn("a", "f5", "1.0.0", ver(1, 2))), 0);
    cr_assert_eq(mp_catalog_next_expiry(c), 300u);
    cr_assert_eq(mp_catalog_expire(c, 650), 2u);
    cr_assert_eq(mp_catalog_next_expiry(c), 700u);
    cr_assert_eq(mp_catalog_expire(c, 900), 3u);
    cr_assert_eq(mp_catalog_count(c, 0), 1u, "the no-TTL one stays");
    mp_catalog_free(c);
}

/* --- deaths ----------------------------------------------------------------- */

Test(catalog, death_removes_only_that_origin_up_to_incarnation) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    put(c, fn("a", "g", "1.0.0", ver(1, 2)), 0);
    put(c, topic("a", "x.*", ver(1, 3)), 0);
    put(c, withdrawn(fn("a", "h", "1.0.0", ver(1, 4))), 0);
    put(c, fn("a", "k", "1.0.0", ver(2, 1)), 0); /* already the next incarnation */
    put(c, fn("b", "f", "1.0.0", ver(1, 1)), 0);
    put(c, topic("b", "x.y", ver(1, 1)), 0);
    cr_assert_eq(mp_catalog_death(c, "a"), 0u);
    uint64_t digest_before = mp_catalog_digest(c);
    cr_assert_eq(die(c, "a", 1), 3u, "three live entries of a@1");
    cr_assert_neq(mp_catalog_digest(c), digest_before);
    cr_assert_eq(mp_catalog_death(c, "a"), 1u);
    cr_assert_eq(mp_catalog_tombstones(c), 0u, "a@1's tombstone went too");
    cr_assert_eq(mp_catalog_count(c, 0), 3u);
    cr_assert_eq(functions_named(c, "f"), 1u);
    cr_assert_eq(functions_named(c, "g"), 0u);
    cr_assert_eq(functions_named(c, "k"), 1u);
    cr_assert_str_eq(matches(c, "x.y"), "b");
    /* Late arrivals of the dead incarnation are refused... */
    cr_assert_eq(put(c, fn("a", "f", "1.0.0", ver(1, 9)), 0), MP_APPLY_DEAD);
    cr_assert_eq(put(c, withdrawn(fn("a", "k", "1.0.0", ver(1, 9))), 0), MP_APPLY_DEAD);
    /* ...a repeated or older death changes nothing... */
    cr_assert_eq(die(c, "a", 1), 0u);
    cr_assert_eq(die(c, "a", 0), 0u);
    cr_assert_eq(mp_catalog_death(c, "a"), 1u);
    /* ...and a death of the next incarnation takes the rest. */
    cr_assert_eq(die(c, "a", 2), 1u);
    cr_assert_eq(functions_named(c, "k"), 0u);
    cr_assert_eq(mp_catalog_count(c, 0), 2u);
    cr_assert_eq(die(c, "nobody", 4), 0u);
    mp_catalog_free(c);
}

Test(catalog, restart_accepted_at_once) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 50)), 0);
    /* No death seen yet: the new incarnation still wins over a higher counter. */
    mp_entry e = fn("a", "f", "1.0.0", ver(2, 0));
    e.u.function.load = 3;
    cr_assert_eq(put(c, e, 0), MP_APPLY_UPDATED);
    cr_assert_eq(load_of_first(c, "f"), 3u);
    /* With the death first, the new incarnation is simply added. */
    put(c, fn("b", "f", "1.0.0", ver(1, 50)), 0);
    cr_assert_eq(die(c, "b", 1), 1u);
    cr_assert_eq(put(c, fn("b", "f", "1.0.0", ver(2, 0)), 0), MP_APPLY_ADDED);
    cr_assert_eq(functions_named(c, "f"), 2u);
    mp_catalog_free(c);
}

Test(catalog, bad_death_refused) {
    mp_catalog *c = new_catalog(0);
    cr_assert_eq(mp_catalog_apply_death(c, NULL, 1, 0, NULL), MPREG_E_INVALID);
    cr_assert_eq(mp_catalog_apply_death(c, "", 1, 0, NULL), MPREG_E_INVALID);
    char big[MP_ENTRY_MAX_STR + 2];
    memset(big, 'n', sizeof big - 1);
    big[sizeof big - 1] = 0;
    cr_assert_eq(mp_catalog_apply_death(c, big, 1, 0, NULL), MPREG_E_INVALID);
    cr_assert_eq(mp_catalog_digest(c), 0u);
    mp_catalog_free(c);
}

/* --- indexes ---------------------------------------------------------------- */

typedef struct first_load {
    uint32_t load;
    bool seen;
} first_load;

static bool first_load_visit(void *ud, const mp_entry *e) {
    first_load *f = ud;
    f->load = e->u.function.load;
    f->seen = true;
    return false; /* stop at the first */
}

static uint32_t load_of_first(const mp_catalog *c, const char *name) {
    first_load f = {0, false};
    mp_catalog_each_function(c, name, first_load_visit, &f);
    cr_assert(f.seen, "no function %s", name);
    return f.load;
}

Test(catalog, function_index_follows_changes) {
    mp_catalog *c = new_catalog(1000);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    put(c, fn("a", "f", "2.0.0", ver(1, 2)), 0);
    put(c, fn("b", "f", "1.0.0", ver(1, 1)), 0);
    mp_entry e = fn("c", "f", "1.0.0", ver(1, 1));
    e.ttl_ms = 50;
    put(c, e, 0);
    put(c, fn("a", "g", "1.0.0", ver(1, 3)), 0);
    cr_assert_eq(functions_named(c, "f"), 4u);
    cr_assert_eq(functions_named(c, "g"), 1u);
    cr_assert_eq(functions_named(c, "nope"), 0u);
    cr_assert_eq(functions_named(c, NULL), 0u);
    put(c, fn("a", "f", "1.0.0", ver(1, 4)), 0); /* update: still one entry */
    cr_assert_eq(functions_named(c, "f"), 4u);
    put(c, withdrawn(fn("a", "f", "2.0.0", ver(1, 5))), 0);
    cr_assert_eq(functions_named(c, "f"), 3u);
    cr_assert_eq(mp_catalog_expire(c, 50), 1u);
    cr_assert_eq(functions_named(c, "f"), 2u);
    die(c, "b", 1);
    cr_assert_eq(functions_named(c, "f"), 1u);
    die(c, "a", 1);
    cr_assert_eq(functions_named(c, "f"), 0u);
    cr_assert_eq(functions_named(c, "g"), 0u);
    /* Visitors can stop early. */
    put(c, fn("x", "f", "1.0.0", ver(1, 1)), 0);
    put(c, fn("y", "f", "1.0.0", ver(1, 1)), 0);
    cr_assert_eq(load_of_first(c, "f"), 0u);
    mp_catalog_free(c);
}

Test(catalog, topic_match_reports_each_node_once) {
    mp_catalog *c = new_catalog(1000);
    put(c, topic("a", "orders.#", ver(1, 1)), 0);
    put(c, topic("a", "orders.*.created", ver(1, 2)), 0);
    put(c, topic("a", "#", ver(1, 3)), 0);
    put(c, topic("b", "orders.eu.created", ver(1, 1)), 0);
    put(c, topic("c", "billing.#", ver(1, 1)), 0);
    mp_entry e = topic("d", "orders.eu.*", ver(1, 1));
    e.ttl_ms = 10;
    put(c, e, 0);
    cr_assert_str_eq(matches(c, "orders.eu.created"), "a,b,d");
    cr_assert_str_eq(matches(c, "billing.x"), "a,c");
    cr_assert_eq(mp_catalog_match_topic(c, "orders.eu.created", 17, NULL, NULL), 3u);
    /* Dropping one of a's three patterns leaves it matching through the others. */
    put(c, withdrawn(topic("a", "#", ver(1, 4))), 0);
    cr_assert_str_eq(matches(c, "orders.eu.created"), "a,b,d");
    cr_assert_str_eq(matches(c, "billing.x"), "c");
    put(c, withdrawn(topic("a", "orders.#", ver(1, 5))), 0);
    cr_assert_str_eq(matches(c, "orders.us"), "");
    cr_assert_str_eq(matches(c, "orders.us.created"), "a");
    cr_assert_eq(mp_catalog_expire(c, 10), 1u);
    cr_assert_str_eq(matches(c, "orders.eu.created"), "a,b");
    die(c, "a", 1);
    cr_assert_str_eq(matches(c, "orders.eu.created"), "b");
    /* A restarted a subscribes again under its new incarnation. */
    put(c, topic("a", "orders.#", ver(2, 0)), 0);
    cr_assert_str_eq(matches(c, "orders.eu.created"), "a,b");
    cr_assert_str_eq(matches(c, "not a topic"), "");
    cr_assert_eq(mp_catalog_count(c, MP_ENTRY_TOPIC), 3u);
    mp_catalog_free(c);
}

Test(catalog, queue_node_and_cache_lookups) {
    mp_catalog *c = new_catalog(1000);
    put(c, queue("a", "jobs", ver(1, 1)), 0);
    put(c, queue("b", "jobs", ver(1, 1)), 0);
    put(c, queue("a", "mail", ver(1, 2)), 0);
    put(c, node_desc("a", ver(1, 3)), 0);
    put(c, cache("a", "eu-west", ver(1, 4)), 0);
    put(c, node_desc("b", ver(1, 2)), 0);
    cr_assert_eq(queues_named(c, "jobs"), 2u);
    cr_assert_eq(queues_named(c, "mail"), 1u);
    cr_assert_eq(queues_named(c, "none"), 0u);
    const mp_node_descriptor *nd = mp_catalog_node(c, "a");
    cr_assert_not_null(nd);
    cr_assert_str_eq(nd->key.node, "a");
    cr_assert_eq(nd->incarnation, 1u);
    const mp_cache_profile *cp = mp_catalog_cache_profile(c, "a");
    cr_assert_not_null(cp);
    cr_assert_str_eq(cp->region, "eu-west");
    cr_assert_null(mp_catalog_cache_profile(c, "b"));
    cr_assert_null(mp_catalog_node(c, "zz"));
    cr_assert_null(mp_catalog_node(c, NULL));

    /* Updates are seen through the lookups. */
    mp_entry e = cache("a", "eu-central", ver(1, 5));
    e.u.cache.utilization = 0.5;
    cr_assert_eq(put(c, e, 0), MP_APPLY_UPDATED);
    cp = mp_catalog_cache_profile(c, "a");
    cr_assert_str_eq(cp->region, "eu-central");
    cr_assert_float_eq(cp->utilization, 0.5, 1e-9);

    put(c, withdrawn(queue("a", "jobs", ver(1, 6))), 0);
    cr_assert_eq(queues_named(c, "jobs"), 1u);
    put(c, withdrawn(cache("a", "", ver(1, 7))), 0);
    cr_assert_null(mp_catalog_cache_profile(c, "a"));
    cr_assert_not_null(mp_catalog_node(c, "a"));

    e = node_desc("b", ver(1, 3));
    e.ttl_ms = 20;
    put(c, e, 0);
    cr_assert_eq(mp_catalog_expire(c, 20), 1u);
    cr_assert_null(mp_catalog_node(c, "b"));
    cr_assert_eq(queues_named(c, "jobs"), 1u);

    die(c, "a", 1);
    cr_assert_null(mp_catalog_node(c, "a"));
    cr_assert_eq(queues_named(c, "mail"), 0u);
    cr_assert_eq(mp_catalog_count(c, MP_ENTRY_QUEUE), 1u);
    cr_assert_eq(mp_catalog_count(c, MP_ENTRY_NODE), 0u);
    cr_assert_eq(mp_catalog_count(c, 99), 0u);
    mp_catalog_free(c);
}

Test(catalog, each_filters_by_kind) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    put(c, topic("a", "t", ver(1, 2)), 0);
    put(c, queue("a", "q", ver(1, 3)), 0);
    put(c, withdrawn(queue("a", "r", ver(1, 4))), 0);
    size_t n = 0;
    mp_catalog_each(c, 0, count_visit, &n);
    cr_assert_eq(n, 3u);
    n = 0;
    mp_catalog_each(c, MP_ENTRY_QUEUE, count_visit, &n);
    cr_assert_eq(n, 1u);
    n = 0;
    mp_catalog_each_record(c, count_visit, &n);
    cr_assert_eq(n, 4u);
    mp_catalog_free(c);
}

/* --- validation -------------------------------------------------------------- */

Test(catalog, invalid_entry_changes_nothing) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    uint64_t digest = mp_catalog_digest(c);

    mp_entry bad = topic("a", "x", ver(1, 2));
    free(bad.u.topic.key.pattern);
    bad.u.topic.key.pattern = malloc(8);
    strcpy(bad.u.topic.key.pattern, "a..b");
    mp_apply_result res = MP_APPLY_ADDED;
    cr_assert_neq(mp_catalog_apply_entry(c, &bad, 0, &res), MPREG_OK);

    mp_entry bad2 = fn("a", "f", "1.0.0", ver(1, 5));
    bad2.u.function.semver.major = 7; /* does not match key.version */
    cr_assert_neq(mp_catalog_apply_entry(c, &bad2, 0, &res), MPREG_OK);
    cr_assert_eq(mp_catalog_digest(c), digest);
    cr_assert_eq(load_of_first(c, "f"), 0u);

    /* A delta with one bad entry is refused whole. */
    mp_delta d;
    mp_delta_init(&d);
    mp_entry good = fn("b", "g", "1.0.0", ver(1, 1));
    cr_assert_eq(mp_delta_add_entry(&d, &good), MPREG_OK);
    cr_assert_eq(mp_delta_add_death(&d, "a", 1), MPREG_OK);
    cr_assert_eq(mp_delta_add_entry(&d, &bad2), MPREG_OK);
    mp_apply_stats st;
    cr_assert_neq(mp_catalog_apply_delta(c, &d, 0, &st), MPREG_OK);
    cr_assert_eq(mp_catalog_digest(c), digest);
    cr_assert_eq(mp_catalog_count(c, 0), 1u);
    cr_assert_eq(mp_catalog_death(c, "a"), 0u);
    cr_assert_eq(res, MP_APPLY_ADDED, "result untouched on error");
    mp_delta_free(&d);
    mp_entry_free(&good);
    mp_entry_free(&bad);
    mp_entry_free(&bad2);
    mp_catalog_free(c);
}

/* --- deltas, digest, snapshot --------------------------------------------------- */

Test(catalog, delta_stats) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    put(c, fn("a", "g", "1.0.0", ver(1, 1)), 0);
    put(c, fn("z", "f", "1.0.0", ver(1, 1)), 0);
    mp_delta d;
    mp_delta_init(&d);
    mp_entry items[] = {
        fn("b", "f", "1.0.0", ver(1, 1)),            /* added */
        fn("z", "f", "1.0.0", ver(1, 2)),            /* updated */
        withdrawn(fn("z", "f", "2.0.0", ver(1, 3))), /* withdrawn */
        fn("z", "f", "1.0.0", ver(1, 1)),            /* stale */
        fn("a", "h", "1.0.0", ver(1, 9)),            /* dead */
    };
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        cr_assert_eq(mp_delta_take_entry(&d, &items[i]), MPREG_OK);
    }
    cr_assert_eq(mp_delta_add_death(&d, "a", 1), MPREG_OK);
    mp_apply_stats st;
    cr_assert_eq(mp_catalog_apply_delta(c, &d, 0, &st), MPREG_OK);
    cr_assert_eq(st.added, 1u);
    cr_assert_eq(st.updated, 1u);
    cr_assert_eq(st.withdrawn, 1u);
    cr_assert_eq(st.stale, 1u);
    cr_assert_eq(st.dead, 1u);
    cr_assert_eq(st.removed_by_death, 2u);
    cr_assert_eq(mp_catalog_apply_delta(c, &d, 0, NULL), MPREG_OK);
    mp_delta_free(&d);
    mp_catalog_free(c);
}

Test(catalog, digest_is_order_independent) {
    mp_catalog *c1 = new_catalog(0);
    mp_catalog *c2 = new_catalog(0);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    put(c1, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    put(c1, topic("b", "x.#", ver(1, 1)), 0);
    die(c1, "q", 3);
    die(c2, "q", 3);
    put(c2, topic("b", "x.#", ver(1, 1)), 0);
    cr_assert_neq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    put(c2, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    /* Version, tombstones and deaths are all part of it. */
    put(c1, fn("a", "f", "1.0.0", ver(1, 2)), 0);
    cr_assert_neq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    put(c2, fn("a", "f", "1.0.0", ver(1, 2)), 0);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    put(c1, withdrawn(fn("a", "f", "1.0.0", ver(1, 3))), 0);
    cr_assert_neq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    put(c2, withdrawn(fn("a", "f", "1.0.0", ver(1, 3))), 0);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    die(c1, "q", 4);
    cr_assert_neq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    die(c2, "q", 4);
    cr_assert_eq(mp_catalog_digest(c1), mp_catalog_digest(c2));
    mp_catalog_free(c1);
    mp_catalog_free(c2);
}

Test(catalog, snapshot_into_fresh_catalog_gives_same_digest) {
    mp_catalog *c = new_catalog(0);
    put(c, fn("a", "f", "1.0.0", ver(1, 1)), 0);
    put(c, fn("a", "f", "2.0.0", ver(1, 2)), 0);
    put(c, withdrawn(fn("a", "g", "1.0.0", ver(1, 3))), 0);
    put(c, topic("a", "x.*", ver(1, 4)), 0);
    put(c, queue("b", "jobs", ver(1, 1)), 0);
    put(c, node_desc("b", ver(1, 2)), 0);
    put(c, cache("b", "eu", ver(1, 3)), 0);
    put(c, fn("d", "f", "1.0.0", ver(3, 1)), 0);
    die(c, "d", 2);
    die(c, "e", 5);
    mp_delta snap;
    cr_assert_eq(mp_catalog_snapshot(c, &snap), MPREG_OK);
    cr_assert_eq(snap.entry_count, 8u);
    cr_assert_eq(snap.death_count, 2u);

    /* Through the wire form too, as anti-entropy would carry it. */
    mp_buf wire = MP_BUF_INIT;
    cr_assert_eq(mp_delta_encode(&snap, &wire), MPREG_OK);
    mp_delta back;
    cr_assert_eq(mp_delta_decode(wire.data, wire.len, &back, NULL), MPREG_OK);

    mp_catalog *fresh = new_catalog(0);
    mp_apply_stats st;
    cr_assert_eq(mp_catalog_apply_delta(fresh, &back, 0, &st), MPREG_OK);
    cr_assert_eq(st.added, 7u);
    cr_assert_eq(st.withdrawn, 1u);
    cr_assert_eq(mp_catalog_digest(fresh), mp_catalog_digest(c));
    cr_assert_eq(mp_catalog_count(fresh, 0), mp_catalog_count(c, 0));
    cr_assert_eq(mp_catalog_tombstones(fresh), 1u);
    cr_assert_eq(mp_catalog_death(fresh, "e"), 5u);
    cr_assert_str_eq(matches(fresh, "x.y"), "a");
    /* And applying it back changes nothing. */
    cr_assert_eq(mp_catalog_apply_delta(c, &snap, 0, &st), MPREG_OK);
    cr_assert_eq(st.stale, 8u);
    mp_buf_free(&wire);
    mp_delta_free(&back);
    mp_delta_free(&snap);
    mp_catalog_free(fresh);
    mp_catalog_free(c);
}

/* --- other nodes' topic interest --------------------------------------------- */

Test(catalog, remote_topic_nodes_counts_other_nodes_with_interest) {
    mp_catalog *c = new_catalog(1000);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 0u);
    put(c, topic("self", "a.#", ver(1, 1)), 0);
    put(c, topic("self", "b", ver(1, 2)), 0);
    put(c, fn("x", "f", "1.0.0", ver(1, 1)), 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 0u, "the local node's and functions: none");
    put(c, topic("a", "x.*", ver(1, 1)), 0);
    put(c, topic("a", "y", ver(1, 2)), 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 1u, "a node once, however many patterns");
    put(c, topic("b", "x.y", ver(1, 1)), 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 2u);
    put(c, withdrawn(topic("a", "x.*", ver(1, 3))), 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 2u, "a still has y");
    put(c, withdrawn(topic("a", "y", ver(1, 4))), 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 1u);
    die(c, "b", 1);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 0u, "a death takes its interest");
    mp_entry e = topic("c", "z", ver(1, 1));
    e.ttl_ms = 100;
    put(c, e, 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 1u);
    cr_assert_eq(mp_catalog_expire(c, 100), 1u);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 0u, "an expiry too");
    put(c, withdrawn(topic("self", "b", ver(1, 3))), 0);
    put(c, withdrawn(topic("self", "a.#", ver(1, 4))), 0);
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 0u);
    mp_catalog_free(c);
}

typedef struct remote_seen {
    char nodes[8][8];
    size_t n;
} remote_seen;

static bool remote_visit(void *ud, const mp_entry *e) {
    remote_seen *s = ud;
    const char *node = e->u.topic.key.node;
    if (strcmp(node, "self") == 0) {
        return true;
    }
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->nodes[i], node) == 0) {
            return true;
        }
    }
    snprintf(s->nodes[s->n++], sizeof s->nodes[0], "%s", node);
    return true;
}

/* The counter against a count of the live topic entries, through random
 * adds, withdrawals, deaths and expiries. */
Test(catalog, remote_topic_nodes_matches_the_entries) {
    mp_catalog *c = new_catalog(50);
    static const char *const nodes[] = {"self", "a", "b", "c"};
    static const char *const patterns[] = {"x", "x.*", "#", "y.z"};
    uint64_t counter[4] = {0}, inc[4] = {1, 1, 1, 1};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (uint64_t now = 0; now < 4000; now++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(seed >> 33);
        size_t k = r % 4, p = (r >> 2) % 4;
        if ((r >> 4) % 16 == 0 && k != 0) {
            die(c, nodes[k], inc[k]);
            inc[k]++;
            counter[k] = 0;
        } else {
            mp_entry e = topic(nodes[k], patterns[p], ver(inc[k], ++counter[k]));
            e.withdrawn = (r >> 8) % 3 == 0;
            e.ttl_ms = (r >> 10) % 4 == 0 ? 20 : 0;
            put(c, e, now);
        }
        mp_catalog_expire(c, now);
        remote_seen s = {0};
        mp_catalog_each(c, MP_ENTRY_TOPIC, remote_visit, &s);
        cr_assert_eq(mp_catalog_remote_topic_nodes(c), s.n, "step %llu", (unsigned long long)now);
    }
    mp_catalog_free(c);
}

/* --- queue groups' interest ---------------------------------------------------- */

static mp_entry topic_in(const char *node, const char *pattern, const char *group,
                         mp_entry_version v) {
    mp_entry e;
    cr_assert_eq(mp_entry_topic_group(&e, node, "c1", pattern, group), MPREG_OK);
    e.version = v;
    return e;
}

/* The (node, group) pairs a topic matches, as a sorted "node/group,..." string. */
static void group_match_cb(void *ud, const char *node, const char *group) {
    match_set *m = ud;
    cr_assert_lt(m->count, 16u);
    cr_assert_neq(group[0], '\0', "ungrouped interest is not a group");
    snprintf(m->names[m->count++], sizeof m->names[0], "%s/%s", node, group);
}

static const char *group_matches(mp_catalog *c, const char *t) {
    static char out[512];
    match_set m = {0};
    size_t n = mp_catalog_match_topic_groups(c, t, strlen(t), group_match_cb, &m);
    cr_assert_eq(n, m.count);
    qsort(m.names, m.count, sizeof m.names[0], cmp_names);
    out[0] = 0;
    for (size_t i = 0; i < m.count; i++) {
        if (i) {
            strcat(out, ",");
        }
        strcat(out, m.names[i]);
    }
    return out;
}

Test(catalog, group_interest_is_matched_apart_from_ungrouped) {
    mp_catalog *c = new_catalog(1000);
    cr_assert_str_eq(group_matches(c, "a.b"), "", "no group at all");
    put(c, topic("a", "a.*", ver(1, 1)), 0);
    put(c, topic_in("a", "a.#", "g", ver(1, 2)), 0);
    put(c, topic_in("a", "a.b", "g", ver(1, 3)), 0); /* a second pattern of (a, g) */
    put(c, topic_in("a", "#", "h", ver(1, 4)), 0);
    put(c, topic_in("b", "a.b", "g", ver(1, 1)), 0);
    put(c, topic_in("self", "*.b", "g", ver(1, 1)), 0);
    cr_assert_str_eq(matches(c, "a.b"), "a", "groups are not ungrouped interest");
    cr_assert_str_eq(group_matches(c, "a.b"), "a/g,a/h,b/g,self/g", "each pair once");
    cr_assert_str_eq(group_matches(c, "a.c"), "a/g,a/h");
    cr_assert_str_eq(group_matches(c, "x"), "a/h");
    cr_assert_str_eq(group_matches(c, "bad..topic"), "");
    cr_assert_eq(mp_catalog_match_topic_groups(c, "a.b", 3, NULL, NULL), 4u);
    cr_assert_eq(mp_catalog_count(c, MP_ENTRY_TOPIC), 6u);
    /* A node with groups only is a node with interest. */
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 2u);
    put(c, withdrawn(topic("a", "a.*", ver(1, 5))), 0);
    cr_assert_str_eq(matches(c, "a.b"), "");
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 2u, "a still has groups");
    put(c, withdrawn(topic_in("a", "a.b", "g", ver(1, 6))), 0);
    cr_assert_str_eq(group_matches(c, "a.b"), "a/g,a/h,b/g,self/g", "a.# still holds (a, g)");
    put(c, withdrawn(topic_in("a", "a.#", "g", ver(1, 7))), 0);
    cr_assert_str_eq(group_matches(c, "a.b"), "a/h,b/g,self/g");
    die(c, "a", 1);
    cr_assert_str_eq(group_matches(c, "a.b"), "b/g,self/g");
    cr_assert_eq(mp_catalog_remote_topic_nodes(c), 1u);
    /* The same pattern in the same group of one node is one entry. */
    cr_assert_eq(put(c, topic_in("b", "a.b", "g", ver(1, 2)), 0), MP_APPLY_UPDATED);
    cr_assert_str_eq(group_matches(c, "a.b"), "b/g,self/g");
    mp_catalog_free(c);
}

/* The naive answers, from every live topic entry and the direct matcher. */
typedef struct naive_walk {
    const char *topic;
    match_set plain;
    match_set groups;
} naive_walk;

static void naive_add(match_set *m, const char *name) {
    for (size_t i = 0; i < m->count; i++) {
        if (strcmp(m->names[i], name) == 0) {
            return;
        }
    }
    cr_assert_lt(m->count, 16u);
    snprintf(m->names[m->count++], sizeof m->names[0], "%s", name);
}

static bool naive_visit(void *ud, const mp_entry *e) {
    naive_walk *w = ud;
    const mp_topic_key *k = &e->u.topic.key;
    if (!mp_pattern_matches(k->pattern, strlen(k->pattern), w->topic, strlen(w->topic))) {
        return true;
    }
    if (k->group[0]) {
        char name[32];
        snprintf(name, sizeof name, "%s/%s", k->node, k->group);
        naive_add(&w->groups, name);
    } else {
        naive_add(&w->plain, k->node);
    }
    return true;
}

static void assert_same_set(match_set *got, match_set *want, const char *what, uint64_t step) {
    qsort(got->names, got->count, sizeof got->names[0], cmp_names);
    qsort(want->names, want->count, sizeof want->names[0], cmp_names);
    cr_assert_eq(got->count, want->count, "%s step %llu: %zu, naive %zu", what,
                 (unsigned long long)step, got->count, want->count);
    for (size_t i = 0; i < got->count; i++) {
        cr_assert_str_eq(got->names[i], want->names[i], "%s step %llu", what,
                         (unsigned long long)step);
    }
}

/* Both matches against a scan of the live entries, through random adds,
 * withdrawals, deaths and expiries of plain and grouped interest. */
Test(catalog, topic_matches_agree_with_a_naive_scan) {
    mp_catalog *c = new_catalog(50);
    static const char *const nodes[] = {"self", "a", "b", "c"};
    static const char *const patterns[] = {"x", "x.*", "#", "y.z", "*.z", "x.#"};
    static const char *const groups[] = {"", "g", "h"};
    static const char *const topics[] = {"x", "x.y", "y.z", "x.z", "q"};
    uint64_t counter[4] = {0}, inc[4] = {1, 1, 1, 1};
    uint64_t seed = 0x2545f4914f6cdd1dull;
    for (uint64_t now = 0; now < 3000; now++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t r = (uint32_t)(seed >> 33);
        size_t k = r % 4, p = (r >> 2) % 6, g = (r >> 5) % 3;
        if ((r >> 7) % 24 == 0 && k != 0) {
            die(c, nodes[k], inc[k]);
            inc[k]++;
            counter[k] = 0;
        } else {
            mp_entry e = topic_in(nodes[k], patterns[p], groups[g], ver(inc[k], ++counter[k]));
            e.withdrawn = (r >> 9) % 3 == 0;
            e.ttl_ms = (r >> 11) % 4 == 0 ? 20 : 0;
            put(c, e, now);
        }
        mp_catalog_expire(c, now);
        for (size_t t = 0; t < sizeof topics / sizeof topics[0]; t++) {
            naive_walk w = {.topic = topics[t]};
            mp_catalog_each(c, MP_ENTRY_TOPIC, naive_visit, &w);
            match_set plain = {0}, grouped = {0};
            mp_catalog_match_topic(c, topics[t], strlen(topics[t]), match_cb, &plain);
            mp_catalog_match_topic_groups(c, topics[t], strlen(topics[t]), group_match_cb,
                                          &grouped);
            assert_same_set(&plain, &w.plain, "plain", now);
            assert_same_set(&grouped, &w.groups, "groups", now);
        }
    }
    mp_catalog_free(c);
}
