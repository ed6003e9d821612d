/* test_selector.c - function endpoint selection: filters, reasons, ordering
 * and the seeded random tie-break. */
#include "core/rng.h"
#include "fabric/catalog.h"
#include "fabric/entry.h"
#include "fabric/selector.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

/* ---- catalog fixtures ------------------------------------------------------ */

static uint64_t g_counter;

static mp_catalog *cat_new(const char *local) {
    mp_catalog_config cfg = {.local_node = local, .local_cluster = "c1"};
    mp_catalog *c = mp_catalog_new(&cfg);
    cr_assert_not_null(c);
    return c;
}

typedef struct fn_spec {
    const char *node;
    const char *name;
    const char *function_id; /* NULL = none */
    const char *version;
    uint32_t load;
    const char *resources[4]; /* NULL-terminated */
} fn_spec;

static void apply(mp_catalog *c, mp_entry *e) {
    e->version = (mp_entry_version){1, ++g_counter};
    mp_apply_result res;
    cr_assert_eq(mp_catalog_apply_entry(c, e, 0, &res), MPREG_OK);
    mp_entry_free(e);
}

static void add_fn(mp_catalog *c, fn_spec s) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, s.node, "c1", s.name, s.function_id, s.version), MPREG_OK);
    e.u.function.load = s.load;
    for (int i = 0; i < 4 && s.resources[i]; i++) {
        cr_assert_eq(mp_strlist_push(&e.u.function.resources, s.resources[i]), MPREG_OK);
    }
    apply(c, &e);
}

static void withdraw_fn(mp_catalog *c, const char *node, const char *name, const char *version) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, node, "c1", name, NULL, version), MPREG_OK);
    e.withdrawn = true;
    apply(c, &e);
}

/* A strlist built from a NULL-terminated array (freed by the caller). */
static mp_strlist strlist(const char *const *items) {
    mp_strlist l = {0};
    for (; *items; items++) {
        cr_assert_eq(mp_strlist_push(&l, *items), MPREG_OK);
    }
    return l;
}

static mp_selection select_q(mp_catalog *c, const char *name, const char *fid, const char *version,
                             const mp_strlist *res, mp_rng *rng) {
    mp_function_query q = {.name = name, .function_id = fid, .version = version, .resources = res};
    return mp_select_function(c, &q, rng);
}

static void assert_version(mp_selection s, const char *version) {
    cr_assert_eq(s.error, MPREG_OK, "selection failed: %s", s.why);
    cr_assert_not_null(s.endpoint);
    cr_assert_str_eq(s.endpoint->key.version, version);
}

static void assert_fail(mp_selection s, mp_select_reason reason, mpreg_err err) {
    cr_assert_eq(s.reason, reason, "reason %s, want %s (%s)", mp_select_reason_name(s.reason),
                 mp_select_reason_name(reason), s.why);
    cr_assert_eq(s.error, err);
    cr_assert_null(s.endpoint);
    cr_assert_not_null(s.why);
}

/* ---- presence and invalid queries -------------------------------------------- */

Test(selector, no_such_function) {
    mp_catalog *c = cat_new("n1");
    assert_fail(select_q(c, "echo", NULL, NULL, NULL, NULL), MP_SELECT_NO_SUCH_FUNCTION,
                MPREG_E_NOT_FOUND);
    add_fn(c, (fn_spec){"n2", "other", NULL, "1.0.0", 0, {NULL}});
    mp_selection s = select_q(c, "echo", NULL, NULL, NULL, NULL);
    assert_fail(s, MP_SELECT_NO_SUCH_FUNCTION, MPREG_E_NOT_FOUND);
    cr_assert_eq(s.candidates, 0);
    mp_catalog_free(c);
}

Test(selector, invalid_query) {
    mp_catalog *c = cat_new("n1");
    assert_fail(mp_select_function(c, NULL, NULL), MP_SELECT_INVALID, MPREG_E_INVALID);
    assert_fail(select_q(c, NULL, NULL, NULL, NULL, NULL), MP_SELECT_INVALID, MPREG_E_INVALID);
    assert_fail(select_q(c, "", NULL, NULL, NULL, NULL), MP_SELECT_INVALID, MPREG_E_INVALID);
    mp_catalog_free(c);
}

Test(selector, withdrawn_endpoint_is_not_selected) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "2.0.0", 0, {NULL}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "1.0.0", 0, {NULL}});
    assert_version(select_q(c, "f", NULL, NULL, NULL, NULL), "2.0.0");
    withdraw_fn(c, "n2", "f", "2.0.0");
    assert_version(select_q(c, "f", NULL, NULL, NULL, NULL), "1.0.0");
    withdraw_fn(c, "n3", "f", "1.0.0");
    assert_fail(select_q(c, "f", NULL, NULL, NULL, NULL), MP_SELECT_NO_SUCH_FUNCTION,
                MPREG_E_NOT_FOUND);
    mp_catalog_free(c);
}

/* ---- versions ------------------------------------------------------------------ */

static mp_catalog *versions_catalog(void) {
    mp_catalog *c = cat_new("n1");
    const char *versions[] = {"1.0.0", "2.1.0", "1.5.0", "2.0.0", "2.2.0-rc.1", "0.9.9", "1.10.0"};
    char node[16];
    for (size_t i = 0; i < sizeof versions / sizeof *versions; i++) {
        snprintf(node, sizeof node, "n%zu", i + 2);
        add_fn(c, (fn_spec){node, "f", NULL, versions[i], 0, {NULL}});
    }
    return c;
}

Test(selector, highest_version_wins) {
    mp_catalog *c = versions_catalog();
    /* 2.2.0-rc.1 > 2.1.0 in semver precedence: with no constraint it wins. */
    mp_selection s = select_q(c, "f", NULL, NULL, NULL, NULL);
    assert_version(s, "2.2.0-rc.1");
    cr_assert_eq(s.candidates, 7);
    cr_assert_eq(s.ties, 1);
    assert_version(select_q(c, "f", NULL, "", NULL, NULL), "2.2.0-rc.1");
    assert_version(select_q(c, "f", NULL, "*", NULL, NULL), "2.2.0-rc.1");
    mp_catalog_free(c);
}

Test(selector, constraint_picks_highest_satisfying) {
    mp_catalog *c = versions_catalog();
    assert_version(select_q(c, "f", NULL, ">=1.0,<2.0", NULL, NULL), "1.10.0");
    assert_version(select_q(c, "f", NULL, "1", NULL, NULL), "1.10.0");
    assert_version(select_q(c, "f", NULL, "1.5", NULL, NULL), "1.5.0");
    assert_version(select_q(c, "f", NULL, "==1.0.0", NULL, NULL), "1.0.0");
    assert_version(select_q(c, "f", NULL, "<1", NULL, NULL), "0.9.9");
    /* A prerelease sorts below its release, so "<2.2" would admit 2.2.0-rc.1. */
    assert_version(select_q(c, "f", NULL, ">=2.0,<2.2", NULL, NULL), "2.2.0-rc.1");
    assert_version(select_q(c, "f", NULL, ">=2.0,<2.1.5", NULL, NULL), "2.1.0");
    assert_version(select_q(c, "f", NULL, ">=2.0,!=2.1.0,<2.1.5", NULL, NULL), "2.0.0");
    mp_selection s = select_q(c, "f", NULL, "~1.0", NULL, NULL);
    assert_version(s, "1.0.0");
    cr_assert_eq(s.candidates, 1);
    mp_catalog_free(c);
}

Test(selector, no_version) {
    mp_catalog *c = versions_catalog();
    mp_selection s = select_q(c, "f", NULL, ">=3.0", NULL, NULL);
    assert_fail(s, MP_SELECT_NO_VERSION, MPREG_E_NO_VERSION);
    cr_assert_eq(s.candidates, 0);
    mp_catalog_free(c);
}

Test(selector, bad_constraint) {
    mp_catalog *c = versions_catalog();
    assert_fail(select_q(c, "f", NULL, ">=2,<1", NULL, NULL), MP_SELECT_BAD_CONSTRAINT,
                MPREG_E_BAD_SEMVER);
    assert_fail(select_q(c, "f", NULL, "==1.0,!=1.0", NULL, NULL), MP_SELECT_BAD_CONSTRAINT,
                MPREG_E_BAD_SEMVER);
    assert_fail(select_q(c, "f", NULL, "not a version", NULL, NULL), MP_SELECT_BAD_CONSTRAINT,
                MPREG_E_BAD_SEMVER);
    /* Checked before the catalog: an unknown name with a bad constraint is
     * still a bad constraint. */
    assert_fail(select_q(c, "nope", NULL, ">>1", NULL, NULL), MP_SELECT_BAD_CONSTRAINT,
                MPREG_E_BAD_SEMVER);
    mp_catalog_free(c);
}

/* ---- function_id ------------------------------------------------------------------ */

Test(selector, function_id_filter) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", "alpha", "1.0.0", 0, {NULL}});
    add_fn(c, (fn_spec){"n3", "f", "beta", "2.0.0", 0, {NULL}});
    add_fn(c, (fn_spec){"n4", "f", NULL, "3.0.0", 0, {NULL}});

    assert_version(select_q(c, "f", NULL, NULL, NULL, NULL), "3.0.0");
    assert_version(select_q(c, "f", "", NULL, NULL, NULL), "3.0.0");
    mp_selection s = select_q(c, "f", "alpha", NULL, NULL, NULL);
    assert_version(s, "1.0.0");
    cr_assert_str_eq(s.endpoint->key.function_id, "alpha");
    assert_version(select_q(c, "f", "beta", NULL, NULL, NULL), "2.0.0");

    s = select_q(c, "f", "gamma", NULL, NULL, NULL);
    assert_fail(s, MP_SELECT_NO_FUNCTION_ID, MPREG_E_NOT_FOUND);
    cr_assert_str_eq(s.why, "no endpoint with function_id");
    /* The function_id exists but not at that version: the version is what failed. */
    assert_fail(select_q(c, "f", "alpha", ">=2", NULL, NULL), MP_SELECT_NO_VERSION,
                MPREG_E_NO_VERSION);
    mp_catalog_free(c);
}

/* ---- resources ---------------------------------------------------------------------- */

Test(selector, resources_must_be_a_subset) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "1.0.0", 0, {"gpu", "ssd", "eu"}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "1.0.0", 0, {"cpu"}});

    const char *gpu_ssd[] = {"ssd", "gpu", NULL};
    mp_strlist want = strlist(gpu_ssd);
    mp_selection s = select_q(c, "f", NULL, NULL, &want, NULL);
    cr_assert_eq(s.error, MPREG_OK);
    cr_assert_str_eq(s.endpoint->key.node, "n2");
    cr_assert_eq(s.candidates, 1);
    mp_strlist_free(&want);

    const char *gpu_tpu[] = {"gpu", "tpu", NULL};
    want = strlist(gpu_tpu);
    assert_fail(select_q(c, "f", NULL, NULL, &want, NULL), MP_SELECT_NO_RESOURCES,
                MPREG_E_NO_RESOURCES);
    mp_strlist_free(&want);

    const char *none[] = {NULL};
    want = strlist(none);
    s = select_q(c, "f", NULL, NULL, &want, NULL);
    cr_assert_eq(s.error, MPREG_OK);
    cr_assert_eq(s.candidates, 2, "an empty resource list filters nothing");
    mp_strlist_free(&want);
    mp_catalog_free(c);
}

Test(selector, highest_version_among_those_with_resources) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "1.0.0", 0, {"gpu"}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "2.0.0", 0, {NULL}});
    const char *gpu[] = {"gpu", NULL};
    mp_strlist want = strlist(gpu);
    assert_version(select_q(c, "f", NULL, NULL, &want, NULL), "1.0.0");
    mp_strlist_free(&want);
    mp_catalog_free(c);
}

Test(selector, most_specific_reason) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "1.0.0", 0, {"gpu"}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "2.0.0", 0, {NULL}});
    const char *gpu[] = {"gpu", NULL};
    mp_strlist want = strlist(gpu);
    /* Version >=2 exists (n3), but lacks gpu: resources are what failed. */
    assert_fail(select_q(c, "f", NULL, ">=2", &want, NULL), MP_SELECT_NO_RESOURCES,
                MPREG_E_NO_RESOURCES);
    /* No version matches: NO_VERSION, even though resources would fail too. */
    const char *tpu[] = {"tpu", NULL};
    mp_strlist want_tpu = strlist(tpu);
    assert_fail(select_q(c, "f", NULL, ">=3", &want_tpu, NULL), MP_SELECT_NO_VERSION,
                MPREG_E_NO_VERSION);
    /* No function_id: NO_FUNCTION_ID beats both. */
    assert_fail(select_q(c, "f", "x", ">=3", &want_tpu, NULL), MP_SELECT_NO_FUNCTION_ID,
                MPREG_E_NOT_FOUND);
    mp_strlist_free(&want);
    mp_strlist_free(&want_tpu);
    mp_catalog_free(c);
}

/* ---- ordering among equals ------------------------------------------------------------ */

Test(selector, least_loaded_among_highest_version) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "1.0.0", 5, {NULL}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "1.0.0", 2, {NULL}});
    add_fn(c, (fn_spec){"n4", "f", NULL, "1.0.0", 7, {NULL}});
    add_fn(c, (fn_spec){"n5", "f", NULL, "0.9.0", 0, {NULL}}); /* idle but older */
    mp_selection s = select_q(c, "f", NULL, NULL, NULL, NULL);
    cr_assert_eq(s.error, MPREG_OK);
    cr_assert_str_eq(s.endpoint->key.node, "n3");
    cr_assert_eq(s.reason, MP_SELECT_REMOTE);
    cr_assert_eq(s.ties, 1);
    cr_assert_eq(s.candidates, 4);
    /* A higher version beats a lower load. */
    add_fn(c, (fn_spec){"n6", "f", NULL, "1.0.1", 100, {NULL}});
    cr_assert_str_eq(select_q(c, "f", NULL, NULL, NULL, NULL).endpoint->key.node, "n6");
    mp_catalog_free(c);
}

Test(selector, local_then_load) {
    mp_catalog *c = cat_new("n5");
    add_fn(c, (fn_spec){"n2", "f", NULL, "1.0.0", 3, {NULL}});
    add_fn(c, (fn_spec){"n5", "f", NULL, "1.0.0", 3, {NULL}});
    add_fn(c, (fn_spec){"n9", "f", NULL, "1.0.0", 3, {NULL}});
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 1);
    for (int i = 0; i < 50; i++) {
        mp_selection s = select_q(c, "f", NULL, NULL, NULL, &x.rng);
        cr_assert_eq(s.reason, MP_SELECT_LOCAL);
        cr_assert_str_eq(s.endpoint->key.node, "n5");
        cr_assert_eq(s.ties, 1, "local breaks the tie before randomness");
    }
    /* A less loaded remote beats the local one. */
    add_fn(c, (fn_spec){"n7", "f", NULL, "1.0.0", 2, {NULL}});
    mp_selection s = select_q(c, "f", NULL, NULL, NULL, &x.rng);
    cr_assert_eq(s.reason, MP_SELECT_REMOTE);
    cr_assert_str_eq(s.endpoint->key.node, "n7");
    mp_catalog_free(c);
}

Test(selector, avoid_node_passes_over_its_endpoints) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "2.0.0", 0, {NULL}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "1.0.0", 0, {NULL}});
    mp_function_query q = {.name = "f"};
    mp_selection s = mp_select_function(c, &q, NULL);
    cr_assert_str_eq(s.endpoint->key.node, "n2", "the highest version first");
    /* n2 could not be reached: the retry goes to the next best. */
    q.avoid_node = "n2";
    s = mp_select_function(c, &q, NULL);
    cr_assert_eq(s.error, MPREG_OK);
    cr_assert_str_eq(s.endpoint->key.node, "n3");
    /* Nobody else has it: the selection fails. */
    q.avoid_node = "n3";
    add_fn(c, (fn_spec){"n4", "g", NULL, "1.0.0", 0, {NULL}});
    q.name = "g";
    q.avoid_node = "n4";
    s = mp_select_function(c, &q, NULL);
    cr_assert_neq(s.error, MPREG_OK);
    cr_assert_null(s.endpoint);
    mp_catalog_free(c);
}

/* ---- the random tie-break --------------------------------------------------------------- */

static mp_catalog *ties_catalog(int n, bool reversed) {
    mp_catalog *c = cat_new("local");
    char node[16];
    for (int k = 0; k < n; k++) {
        int i = reversed ? n - 1 - k : k;
        snprintf(node, sizeof node, "t%02d", i);
        add_fn(c, (fn_spec){node, "f", NULL, "1.0.0", 1, {NULL}});
    }
    add_fn(c, (fn_spec){"busy", "f", NULL, "1.0.0", 9, {NULL}});
    return c;
}

static int tie_index(mp_selection s) {
    cr_assert_eq(s.error, MPREG_OK);
    int i = -1;
    cr_assert_eq(sscanf(s.endpoint->key.node, "t%d", &i), 1, "picked %s", s.endpoint->key.node);
    return i;
}

static void check_spread(int n, int draws) {
    mp_catalog *c = ties_catalog(n, false);
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 42);
    int counts[64] = {0};
    for (int d = 0; d < draws; d++) {
        mp_selection s = select_q(c, "f", NULL, NULL, NULL, &x.rng);
        cr_assert_eq(s.ties, (uint32_t)n);
        cr_assert_eq(s.candidates, (uint32_t)n + 1);
        counts[tie_index(s)]++;
    }
    /* Each tie expects draws/n; allow 5 standard deviations either way. */
    double expect = (double)draws / n;
    double variance = expect * (1.0 - 1.0 / n); /* binomial */
    double sd = 1;
    while (sd * sd < variance) { /* no libm: a coarse square root is enough */
        sd += 0.25;
    }
    for (int i = 0; i < n; i++) {
        cr_assert(counts[i] > expect - 5 * sd && counts[i] < expect + 5 * sd,
                  "tie %d chosen %d times of %d (expected ~%.0f)", i, counts[i], draws, expect);
    }
    mp_catalog_free(c);
}

Test(selector, random_tie_break_spreads_over_ties) {
    check_spread(4, 8000);
}

Test(selector, random_tie_break_spreads_beyond_inline_storage) {
    check_spread(MP_SELECT_INLINE_TIES + 8, 20000);
}

Test(selector, random_tie_break_is_deterministic_per_seed) {
    mp_catalog *a = ties_catalog(6, false);
    mp_catalog *b = ties_catalog(6, true); /* same contents, other insertion order */
    mp_xoshiro xa, xb, xc;
    mp_xoshiro_seed(&xa, 7);
    mp_xoshiro_seed(&xb, 7);
    mp_xoshiro_seed(&xc, 8);
    int differs_from_other_seed = 0;
    for (int d = 0; d < 500; d++) {
        int ia = tie_index(select_q(a, "f", NULL, NULL, NULL, &xa.rng));
        int ib = tie_index(select_q(b, "f", NULL, NULL, NULL, &xb.rng));
        int ic = tie_index(select_q(a, "f", NULL, NULL, NULL, &xc.rng));
        cr_assert_eq(ia, ib, "draw %d: same seed, same catalog contents, same choice", d);
        differs_from_other_seed += ia != ic;
    }
    cr_assert_gt(differs_from_other_seed, 100, "another seed makes other choices");
    mp_catalog_free(a);
    mp_catalog_free(b);
}

Test(selector, no_rng_takes_canonical_first) {
    mp_catalog *c = ties_catalog(5, true);
    for (int d = 0; d < 10; d++) {
        cr_assert_eq(tie_index(select_q(c, "f", NULL, NULL, NULL, NULL)), 0);
    }
    mp_catalog_free(c);
}

Test(selector, rng_untouched_without_ties) {
    mp_catalog *c = cat_new("n1");
    add_fn(c, (fn_spec){"n2", "f", NULL, "1.0.0", 0, {NULL}});
    add_fn(c, (fn_spec){"n3", "f", NULL, "1.0.0", 1, {NULL}});
    mp_xoshiro x, ref;
    mp_xoshiro_seed(&x, 3);
    mp_xoshiro_seed(&ref, 3);
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(select_q(c, "f", NULL, NULL, NULL, &x.rng).error, MPREG_OK);
    }
    cr_assert_eq(mp_rng_u64(&x.rng), mp_rng_u64(&ref.rng));
    mp_catalog_free(c);
}

/* ---- names -------------------------------------------------------------------------------- */

Test(selector, reason_names) {
    struct {
        mp_select_reason r;
        const char *name;
    } cases[] = {
        {MP_SELECT_LOCAL, "local"},
        {MP_SELECT_REMOTE, "remote"},
        {MP_SELECT_NO_SUCH_FUNCTION, "no_such_function"},
        {MP_SELECT_NO_FUNCTION_ID, "no_function_id"},
        {MP_SELECT_NO_VERSION, "no_version"},
        {MP_SELECT_NO_RESOURCES, "no_resources"},
        {MP_SELECT_BAD_CONSTRAINT, "bad_constraint"},
        {MP_SELECT_INVALID, "invalid"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cr_assert_str_eq(mp_select_reason_name(cases[i].r), cases[i].name);
    }
    cr_assert_str_eq(mp_select_reason_name((mp_select_reason)999), "unknown");
}
