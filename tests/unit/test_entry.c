/* test_entry.c - catalog entries: versions, key bytes, validation, copies. */
#include "fabric/entry.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- fixtures: one fully populated, valid entry of each kind --------------- */

static void mk_function(mp_entry *e) {
    cr_assert_eq(mp_entry_function(e, "n1", "c1", "fn", "id-1", "1.2.3-rc.1"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.function.resources, "gpu"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.function.resources, "cpu"), MPREG_OK);
    e->u.function.load = 3;
    e->version = (mp_entry_version){1, 2};
    e->ttl_ms = 1000;
}

static void mk_topic(mp_entry *e) {
    cr_assert_eq(mp_entry_topic(e, "n1", "c1", "orders.*.created"), MPREG_OK);
    e->version = (mp_entry_version){1, 3};
}

/* A queue group's interest: the same pattern as mk_topic, another key. */
static void mk_topic_group(mp_entry *e) {
    cr_assert_eq(mp_entry_topic_group(e, "n1", "c1", "orders.*.created", "workers"), MPREG_OK);
    e->version = (mp_entry_version){1, 4};
}

static void mk_queue(mp_entry *e) {
    cr_assert_eq(
        mp_entry_queue(e, "n1", "c1", "jobs", MP_QUEUE_FIRE_AND_FORGET | MP_QUEUE_AT_LEAST_ONCE),
        MPREG_OK);
    e->version = (mp_entry_version){1, 4};
}

static void mk_cache(mp_entry *e) {
    cr_assert_eq(mp_entry_cache(e, "n1", "c1", "eu-west"), MPREG_OK);
    e->u.cache.latitude = 48.85;
    e->u.cache.longitude = 2.35;
    e->u.cache.capacity_bytes = 1ull << 30;
    e->u.cache.utilization = 0.5;
    e->u.cache.latency_ms = 3.5;
    e->u.cache.reliability = 0.99;
    e->version = (mp_entry_version){1, 5};
}

static void mk_node(mp_entry *e) {
    cr_assert_eq(mp_entry_node(e, "n1", "Node One", "c1", 7), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.endpoints, "10.0.0.1:7000"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.capabilities, "rpc"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.capabilities, "pubsub"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e->u.node.resources, "gpu"), MPREG_OK);
    e->version = (mp_entry_version){7, 1};
}

typedef void (*mk_fn)(mp_entry *e);
static const mk_fn makers[] = {mk_function, mk_topic, mk_topic_group, mk_queue, mk_cache, mk_node};
#define NMAKERS (sizeof makers / sizeof makers[0])

static char *dup(const char *s) {
    char *p = malloc(strlen(s) + 1);
    cr_assert_not_null(p);
    strcpy(p, s);
    return p;
}

/* Replaces an owned string field. */
static void set(char **slot, const char *s) {
    free(*slot);
    *slot = s ? dup(s) : NULL;
}

/* --- versions --------------------------------------------------------------- */

static int vcmp(uint64_t ai, uint64_t ac, uint64_t bi, uint64_t bc) {
    return mp_entry_version_cmp((mp_entry_version){ai, ac}, (mp_entry_version){bi, bc});
}

Test(entry, version_orders_by_incarnation_then_counter) {
    cr_assert_eq(vcmp(1, 1, 1, 1), 0);
    cr_assert_lt(vcmp(1, 1, 1, 2), 0);
    cr_assert_gt(vcmp(1, 2, 1, 1), 0);
    /* A restarted node starts its counter again; its new entries still win. */
    cr_assert_gt(vcmp(2, 0, 1, 999), 0);
    cr_assert_lt(vcmp(1, 999, 2, 0), 0);
    cr_assert_gt(vcmp(UINT64_MAX, 0, UINT64_MAX - 1, UINT64_MAX), 0);
    cr_assert_lt(vcmp(0, 0, 0, UINT64_MAX), 0);
}

/* --- keys and origin --------------------------------------------------------- */

Test(entry, origin_is_the_key_node_for_every_kind) {
    for (size_t i = 0; i < NMAKERS; i++) {
        mp_entry e;
        makers[i](&e);
        cr_assert_str_eq(mp_entry_origin(&e), "n1");
        mp_entry_free(&e);
    }
}

static bool key_bytes_equal(const mp_entry *a, const mp_entry *b) {
    mp_buf ba = MP_BUF_INIT, bb = MP_BUF_INIT;
    cr_assert_eq(mp_entry_key_bytes(a, &ba), MPREG_OK);
    cr_assert_eq(mp_entry_key_bytes(b, &bb), MPREG_OK);
    bool eq = ba.len == bb.len && memcmp(ba.data, bb.data, ba.len) == 0;
    mp_buf_free(&ba);
    mp_buf_free(&bb);
    return eq;
}

Test(entry, key_bytes_do_not_collide_on_string_boundaries) {
    mp_entry a, b;
    cr_assert_eq(mp_entry_queue(&a, "ab", "c1", "c", MP_QUEUE_BROADCAST), MPREG_OK);
    cr_assert_eq(mp_entry_queue(&b, "a", "c1", "bc", MP_QUEUE_BROADCAST), MPREG_OK);
    cr_assert_not(key_bytes_equal(&a, &b));
    cr_assert_not(mp_entry_key_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);

    cr_assert_eq(mp_entry_function(&a, "n", "c1", "ab", "", "1.0.0"), MPREG_OK);
    cr_assert_eq(mp_entry_function(&b, "n", "c1", "a", "b", "1.0.0"), MPREG_OK);
    cr_assert_not(key_bytes_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);

    cr_assert_eq(mp_entry_topic(&a, "ab", "c1", "c"), MPREG_OK);
    cr_assert_eq(mp_entry_topic(&b, "a", "c1", "bc"), MPREG_OK);
    cr_assert_not(key_bytes_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);

    /* The group is a key string like the others. */
    cr_assert_eq(mp_entry_topic_group(&a, "n", "c1", "a", "bc"), MPREG_OK);
    cr_assert_eq(mp_entry_topic_group(&b, "n", "c1", "ab", "c"), MPREG_OK);
    cr_assert_not(key_bytes_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);
}

/* Ungrouped interest is group "": mp_entry_topic and mp_entry_topic_group
 * with NULL or "" make the same entry; a group makes another. */
Test(entry, topic_group_is_part_of_the_key) {
    mp_entry plain, null_group, empty_group, grouped, other;
    cr_assert_eq(mp_entry_topic(&plain, "n1", "c1", "a.*"), MPREG_OK);
    cr_assert_eq(mp_entry_topic_group(&null_group, "n1", "c1", "a.*", NULL), MPREG_OK);
    cr_assert_eq(mp_entry_topic_group(&empty_group, "n1", "c1", "a.*", ""), MPREG_OK);
    cr_assert_eq(mp_entry_topic_group(&grouped, "n1", "c1", "a.*", "g"), MPREG_OK);
    cr_assert_eq(mp_entry_topic_group(&other, "n1", "c1", "a.*", "h"), MPREG_OK);
    cr_assert_str_eq(plain.u.topic.key.group, "");
    cr_assert_str_eq(grouped.u.topic.key.group, "g");
    cr_assert(mp_entry_equal(&plain, &null_group));
    cr_assert(mp_entry_equal(&plain, &empty_group));
    cr_assert(key_bytes_equal(&plain, &empty_group));
    cr_assert_not(mp_entry_key_equal(&plain, &grouped));
    cr_assert_not(key_bytes_equal(&plain, &grouped));
    cr_assert_not(mp_entry_key_equal(&grouped, &other));
    cr_assert_str_eq(mp_entry_origin(&grouped), "n1");
    char **slots[MP_ENTRY_MAX_KEY_FIELDS];
    cr_assert_eq(mp_entry_key_slots(&grouped, slots), 3);
    cr_assert_str_eq(*slots[2], "g");
    mp_entry clone;
    cr_assert_eq(mp_entry_clone(&grouped, &clone), MPREG_OK);
    cr_assert(mp_entry_equal(&clone, &grouped));
    cr_assert_neq(clone.u.topic.key.group, grouped.u.topic.key.group, "a deep copy");
    mp_entry *all[] = {&plain, &null_group, &empty_group, &grouped, &other, &clone};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        cr_assert_eq(mp_entry_validate(all[i], NULL), MPREG_OK);
        mp_entry_free(all[i]);
    }
    cr_assert_eq(mp_entry_topic_group(&grouped, NULL, "c1", "a.*", "g"), MPREG_E_INVALID);
}

Test(entry, key_bytes_separate_kinds_with_the_same_strings) {
    mp_entry a, b;
    cr_assert_eq(mp_entry_node(&a, "n1", "n1", "c1", 1), MPREG_OK);
    cr_assert_eq(mp_entry_cache(&b, "n1", "c1", ""), MPREG_OK);
    cr_assert_not(key_bytes_equal(&a, &b));
    cr_assert_not(mp_entry_key_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);
    cr_assert_eq(mp_entry_topic(&a, "n1", "c1", "q"), MPREG_OK);
    cr_assert_eq(mp_entry_queue(&b, "n1", "c1", "q", MP_QUEUE_BROADCAST), MPREG_OK);
    cr_assert_not(key_bytes_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);
}

Test(entry, key_bytes_ignore_value_and_version) {
    mp_entry a, b;
    mk_function(&a);
    cr_assert_eq(mp_entry_function(&b, "n1", "other", "fn", "id-1", "1.2.3-rc.1"), MPREG_OK);
    b.version = (mp_entry_version){9, 9};
    b.withdrawn = true;
    cr_assert(key_bytes_equal(&a, &b));
    cr_assert(mp_entry_key_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);
}

Test(entry, key_bytes_append_and_reject_unknown_kinds) {
    mp_entry e;
    mk_topic(&e);
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&b, "xy", 2), MPREG_OK);
    cr_assert_eq(mp_entry_key_bytes(&e, &b), MPREG_OK);
    /* "xy", kind, len "n1", "n1", len pattern, pattern, len group "" */
    cr_assert_eq(b.len, 2 + 1 + 4 + 2 + 4 + strlen("orders.*.created") + 4);
    cr_assert_eq(memcmp(b.data, "xy", 2), 0);
    cr_assert_eq(b.data[2], MP_ENTRY_TOPIC);
    mp_entry_free(&e);
    mp_entry bad;
    memset(&bad, 0, sizeof bad);
    bad.kind = (mp_entry_kind)9;
    size_t len = b.len;
    cr_assert_eq(mp_entry_key_bytes(&bad, &b), MPREG_E_INVALID);
    cr_assert_eq(b.len, len);
    mp_buf_free(&b);
}

/* Keys drawn from a tiny alphabet collide often: key bytes must be equal
 * exactly when the keys are. */
Test(entry, key_bytes_equal_iff_keys_equal_exhaustive) {
    const char *parts[] = {"a", "b", "ab", "ba", "a.b", "aa"};
    size_t np = sizeof parts / sizeof parts[0];
    enum { N = 6 * 6 * 6 };
    static mp_entry es[N];
    size_t n = 0;
    for (size_t i = 0; i < np; i++) {
        for (size_t j = 0; j < np; j++) {
            for (size_t k = 0; k < np; k++) {
                /* Alternate kinds (and grouped topics) so that cross-kind
                 * pairs are compared too. */
                if (k % 3 == 0) {
                    cr_assert_eq(
                        mp_entry_function(&es[n], parts[i], "c", parts[j], parts[k], "1.0.0"),
                        MPREG_OK);
                } else if (k % 3 == 2) {
                    cr_assert_eq(mp_entry_topic_group(&es[n], parts[i], "c", parts[j], parts[k]),
                                 MPREG_OK);
                } else {
                    char pat[16];
                    snprintf(pat, sizeof pat, "%s%s", parts[j], parts[k]);
                    cr_assert_eq(mp_entry_topic(&es[n], parts[i], "c", pat), MPREG_OK);
                }
                n++;
            }
        }
    }
    for (size_t x = 0; x < n; x++) {
        for (size_t y = 0; y < n; y++) {
            cr_assert_eq(key_bytes_equal(&es[x], &es[y]), mp_entry_key_equal(&es[x], &es[y]),
                         "pair %zu %zu", x, y);
            cr_assert_eq(mp_entry_key_equal(&es[x], &es[y]), x == y);
        }
    }
    for (size_t x = 0; x < n; x++) {
        mp_entry_free(&es[x]);
    }
}

/* --- validation -------------------------------------------------------------- */

Test(entry, validate_accepts_every_fixture) {
    for (size_t i = 0; i < NMAKERS; i++) {
        mp_entry e;
        makers[i](&e);
        const char *why = "unset";
        cr_assert_eq(mp_entry_validate(&e, &why), MPREG_OK, "kind %d: %s", e.kind, why ? why : "");
        cr_assert_null(why);
        mp_entry_free(&e);
    }
}

Test(entry, validate_accepts_limits) {
    char max[MP_ENTRY_MAX_STR + 1];
    memset(max, 'x', MP_ENTRY_MAX_STR);
    max[MP_ENTRY_MAX_STR] = '\0';
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, max, max, max, max, "1.0.0"), MPREG_OK);
    for (int i = 0; i < MP_ENTRY_MAX_RESOURCES; i++) {
        cr_assert_eq(mp_strlist_push(&e.u.function.resources, max), MPREG_OK);
    }
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);

    cr_assert_eq(mp_entry_topic_group(&e, max, "c1", "a", max), MPREG_OK);
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);

    mk_cache(&e);
    e.u.cache.latitude = -90;
    e.u.cache.longitude = 180;
    e.u.cache.utilization = 1;
    e.u.cache.reliability = 0;
    e.u.cache.latency_ms = 0;
    set(&e.u.cache.region, ""); /* a region is optional */
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);

    mk_queue(&e);
    e.u.queue.modes =
        MP_QUEUE_FIRE_AND_FORGET | MP_QUEUE_AT_LEAST_ONCE | MP_QUEUE_BROADCAST | MP_QUEUE_QUORUM;
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);
}

typedef struct bad_case {
    mk_fn make;
    void (*spoil)(mp_entry *e);
    mpreg_err err;
    const char *why;
} bad_case;

static char long_str[MP_ENTRY_MAX_STR + 2];
static const char *too_long(void) {
    memset(long_str, 'x', MP_ENTRY_MAX_STR + 1);
    long_str[MP_ENTRY_MAX_STR + 1] = '\0';
    return long_str;
}

static void fill_list(mp_strlist *l, int n) {
    mp_strlist_free(l);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(mp_strlist_push(l, "r"), MPREG_OK);
    }
}

static void sp_kind(mp_entry *e) {
    mp_entry_free(e);
    e->kind = (mp_entry_kind)42;
}
static void sp_fn_node_empty(mp_entry *e) {
    set(&e->u.function.key.node, "");
}
static void sp_fn_node_null(mp_entry *e) {
    set(&e->u.function.key.node, NULL);
}
static void sp_fn_node_long(mp_entry *e) {
    set(&e->u.function.key.node, too_long());
}
static void sp_fn_name_empty(mp_entry *e) {
    set(&e->u.function.key.name, "");
}
static void sp_fn_id_long(mp_entry *e) {
    set(&e->u.function.key.function_id, too_long());
}
static void sp_fn_version_bad(mp_entry *e) {
    set(&e->u.function.key.version, "1.x");
}
static void sp_fn_version_empty(mp_entry *e) {
    set(&e->u.function.key.version, "");
}
static void sp_fn_semver_mismatch(mp_entry *e) {
    e->u.function.semver.patch = 4;
}
static void sp_fn_semver_pre(mp_entry *e) {
    strcpy(e->u.function.semver.pre, "rc.2");
}
static void sp_fn_cluster_utf8(mp_entry *e) {
    set(&e->u.function.cluster, "c\xff");
}
static void sp_node_cap_utf8(mp_entry *e) {
    cr_assert_eq(mp_strlist_push(&e->u.node.capabilities, "\xc0\xaf"), MPREG_OK); /* overlong */
}
static void sp_fn_cluster_empty(mp_entry *e) {
    set(&e->u.function.cluster, "");
}
static void sp_fn_resources_many(mp_entry *e) {
    fill_list(&e->u.function.resources, MP_ENTRY_MAX_RESOURCES + 1);
}
static void sp_fn_resource_empty(mp_entry *e) {
    cr_assert_eq(mp_strlist_push(&e->u.function.resources, ""), MPREG_OK);
}
static void sp_fn_resource_long(mp_entry *e) {
    cr_assert_eq(mp_strlist_push(&e->u.function.resources, too_long()), MPREG_OK);
}
static void sp_topic_pattern(mp_entry *e) {
    set(&e->u.topic.key.pattern, "a.b*");
}
static void sp_topic_pattern_empty_word(mp_entry *e) {
    set(&e->u.topic.key.pattern, "a..b");
}
static void sp_topic_node(mp_entry *e) {
    set(&e->u.topic.key.node, "");
}
static void sp_topic_cluster(mp_entry *e) {
    set(&e->u.topic.cluster, NULL);
}
static void sp_topic_group_long(mp_entry *e) {
    set(&e->u.topic.key.group, too_long());
}
static void sp_topic_group_utf8(mp_entry *e) {
    set(&e->u.topic.key.group, "g\xff");
}
static void sp_topic_group_null(mp_entry *e) {
    set(&e->u.topic.key.group, NULL);
}
static void sp_queue_name(mp_entry *e) {
    set(&e->u.queue.key.queue, "");
}
static void sp_queue_cluster(mp_entry *e) {
    set(&e->u.queue.cluster, too_long());
}
static void sp_queue_modes_zero(mp_entry *e) {
    e->u.queue.modes = 0;
}
static void sp_queue_modes_unknown(mp_entry *e) {
    e->u.queue.modes |= 1u << 4;
}
static void sp_cache_lat_hi(mp_entry *e) {
    e->u.cache.latitude = 90.0001;
}
static void sp_cache_lat_nan(mp_entry *e) {
    e->u.cache.latitude = NAN;
}
static void sp_cache_lon_lo(mp_entry *e) {
    e->u.cache.longitude = -180.5;
}
static void sp_cache_util(mp_entry *e) {
    e->u.cache.utilization = 1.5;
}
static void sp_cache_util_neg(mp_entry *e) {
    e->u.cache.utilization = -0.1;
}
static void sp_cache_rel(mp_entry *e) {
    e->u.cache.reliability = NAN;
}
static void sp_cache_latency_neg(mp_entry *e) {
    e->u.cache.latency_ms = -1;
}
static void sp_cache_latency_inf(mp_entry *e) {
    e->u.cache.latency_ms = INFINITY;
}
static void sp_cache_region_long(mp_entry *e) {
    set(&e->u.cache.region, too_long());
}
static void sp_cache_region_null(mp_entry *e) {
    set(&e->u.cache.region, NULL);
}
static void sp_cache_cluster(mp_entry *e) {
    set(&e->u.cache.cluster, "");
}
static void sp_cache_node(mp_entry *e) {
    set(&e->u.cache.key.node, "");
}
static void sp_node_name(mp_entry *e) {
    set(&e->u.node.name, "");
}
static void sp_node_cluster(mp_entry *e) {
    set(&e->u.node.cluster, "");
}
static void sp_node_endpoints(mp_entry *e) {
    fill_list(&e->u.node.endpoints, MP_ENTRY_MAX_ENDPOINTS + 1);
}
static void sp_node_endpoint_empty(mp_entry *e) {
    cr_assert_eq(mp_strlist_push(&e->u.node.endpoints, ""), MPREG_OK);
}
static void sp_node_caps(mp_entry *e) {
    fill_list(&e->u.node.capabilities, MP_ENTRY_MAX_CAPABILITIES + 1);
}
static void sp_node_resources(mp_entry *e) {
    fill_list(&e->u.node.resources, MP_ENTRY_MAX_RESOURCES + 1);
}
static void sp_node_key(mp_entry *e) {
    set(&e->u.node.key.node, too_long());
}

static const bad_case bad_cases[] = {
    {mk_function, sp_kind, MPREG_E_INVALID, "kind"},
    {mk_function, sp_fn_node_empty, MPREG_E_INVALID, "key.node"},
    {mk_function, sp_fn_node_null, MPREG_E_INVALID, "key.node"},
    {mk_function, sp_fn_node_long, MPREG_E_TOO_LARGE, "key.node"},
    {mk_function, sp_fn_name_empty, MPREG_E_INVALID, "key.name"},
    {mk_function, sp_fn_id_long, MPREG_E_TOO_LARGE, "key.function_id"},
    {mk_function, sp_fn_version_bad, MPREG_E_BAD_SEMVER, "key.version"},
    {mk_function, sp_fn_version_empty, MPREG_E_INVALID, "key.version"},
    {mk_function, sp_fn_semver_mismatch, MPREG_E_BAD_SEMVER, "semver"},
    {mk_function, sp_fn_semver_pre, MPREG_E_BAD_SEMVER, "semver"},
    {mk_function, sp_fn_cluster_empty, MPREG_E_INVALID, "cluster"},
    {mk_function, sp_fn_cluster_utf8, MPREG_E_INVALID, "cluster"},
    {mk_node, sp_node_cap_utf8, MPREG_E_INVALID, "capabilities"},
    {mk_function, sp_fn_resources_many, MPREG_E_TOO_LARGE, "resources"},
    {mk_function, sp_fn_resource_empty, MPREG_E_INVALID, "resources"},
    {mk_function, sp_fn_resource_long, MPREG_E_TOO_LARGE, "resources"},
    {mk_topic, sp_topic_pattern, MPREG_E_TOPIC, "key.pattern"},
    {mk_topic, sp_topic_pattern_empty_word, MPREG_E_TOPIC, "key.pattern"},
    {mk_topic, sp_topic_node, MPREG_E_INVALID, "key.node"},
    {mk_topic, sp_topic_cluster, MPREG_E_INVALID, "cluster"},
    {mk_topic_group, sp_topic_group_long, MPREG_E_TOO_LARGE, "key.group"},
    {mk_topic_group, sp_topic_group_utf8, MPREG_E_INVALID, "key.group"},
    {mk_topic, sp_topic_group_null, MPREG_E_INVALID, "key.group"},
    {mk_queue, sp_queue_name, MPREG_E_INVALID, "key.queue"},
    {mk_queue, sp_queue_cluster, MPREG_E_TOO_LARGE, "cluster"},
    {mk_queue, sp_queue_modes_zero, MPREG_E_INVALID, "modes"},
    {mk_queue, sp_queue_modes_unknown, MPREG_E_INVALID, "modes"},
    {mk_cache, sp_cache_lat_hi, MPREG_E_RANGE, "latitude"},
    {mk_cache, sp_cache_lat_nan, MPREG_E_RANGE, "latitude"},
    {mk_cache, sp_cache_lon_lo, MPREG_E_RANGE, "longitude"},
    {mk_cache, sp_cache_util, MPREG_E_RANGE, "utilization"},
    {mk_cache, sp_cache_util_neg, MPREG_E_RANGE, "utilization"},
    {mk_cache, sp_cache_rel, MPREG_E_RANGE, "reliability"},
    {mk_cache, sp_cache_latency_neg, MPREG_E_RANGE, "latency_ms"},
    {mk_cache, sp_cache_latency_inf, MPREG_E_RANGE, "latency_ms"},
    {mk_cache, sp_cache_region_long, MPREG_E_TOO_LARGE, "region"},
    {mk_cache, sp_cache_region_null, MPREG_E_INVALID, "region"},
    {mk_cache, sp_cache_cluster, MPREG_E_INVALID, "cluster"},
    {mk_cache, sp_cache_node, MPREG_E_INVALID, "key.node"},
    {mk_node, sp_node_name, MPREG_E_INVALID, "name"},
    {mk_node, sp_node_cluster, MPREG_E_INVALID, "cluster"},
    {mk_node, sp_node_endpoints, MPREG_E_TOO_LARGE, "endpoints"},
    {mk_node, sp_node_endpoint_empty, MPREG_E_INVALID, "endpoints"},
    {mk_node, sp_node_caps, MPREG_E_TOO_LARGE, "capabilities"},
    {mk_node, sp_node_resources, MPREG_E_TOO_LARGE, "resources"},
    {mk_node, sp_node_key, MPREG_E_TOO_LARGE, "key.node"},
};

Test(entry, validate_rejects_each_bad_field_and_names_it) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        mp_entry e;
        c->make(&e);
        c->spoil(&e);
        const char *why = NULL;
        mpreg_err err = mp_entry_validate(&e, &why);
        cr_assert_eq(err, c->err, "case %zu (%s): got %d", i, c->why, err);
        cr_assert_not_null(why, "case %zu", i);
        cr_assert_str_eq(why, c->why, "case %zu", i);
        cr_assert_eq(mp_entry_validate(&e, NULL), c->err); /* why is optional */
        mp_entry_free(&e);
    }
}

Test(entry, withdrawn_entries_need_only_a_valid_key) {
    mp_entry e;
    mk_cache(&e);
    e.withdrawn = true;
    e.u.cache.latitude = 500; /* the value of a tombstone is never looked at */
    set(&e.u.cache.cluster, NULL);
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    set(&e.u.cache.key.node, "");
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_E_INVALID);
    mp_entry_free(&e);

    mk_topic(&e);
    e.withdrawn = true;
    set(&e.u.topic.key.pattern, "#x");
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_E_TOPIC);
    mp_entry_free(&e);

    mk_function(&e);
    e.withdrawn = true;
    e.u.function.semver.major = 99; /* value only */
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    set(&e.u.function.key.version, "one");
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_E_BAD_SEMVER);
    mp_entry_free(&e);
}

/* --- clone, equal, free ------------------------------------------------------- */

Test(entry, clone_is_deep_and_equal) {
    for (size_t i = 0; i < NMAKERS; i++) {
        mp_entry a, b;
        makers[i](&a);
        cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
        cr_assert(mp_entry_equal(&a, &b));
        cr_assert(mp_entry_equal(&b, &a));
        cr_assert_neq((void *)mp_entry_origin(&a), (void *)mp_entry_origin(&b));
        mp_entry_free(&a); /* b must not share anything with a */
        cr_assert_str_eq(mp_entry_origin(&b), "n1");
        cr_assert_eq(mp_entry_validate(&b, NULL), MPREG_OK);
        mp_entry_free(&b);
    }
}

Test(entry, clone_copies_lists) {
    mp_entry a, b;
    mk_node(&a);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    cr_assert_neq(a.u.node.capabilities.items, b.u.node.capabilities.items);
    cr_assert_neq(a.u.node.capabilities.items[0], b.u.node.capabilities.items[0]);
    cr_assert_eq(b.u.node.capabilities.count, 2);
    cr_assert_str_eq(b.u.node.capabilities.items[1], "pubsub");
    mp_entry_free(&a);
    mp_entry_free(&b);
}

Test(entry, clone_of_a_partial_entry_keeps_nulls) {
    mp_entry a, b;
    memset(&a, 0, sizeof a);
    a.kind = MP_ENTRY_QUEUE;
    a.withdrawn = true;
    a.u.queue.key.node = dup("n1");
    a.u.queue.key.queue = dup("q");
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    cr_assert_null(b.u.queue.cluster);
    cr_assert(mp_entry_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);
}

typedef void (*tweak_fn)(mp_entry *e);
static void tw_version(mp_entry *e) {
    e->version.counter++;
}
static void tw_incarnation(mp_entry *e) {
    e->version.incarnation++;
}
static void tw_ttl(mp_entry *e) {
    e->ttl_ms++;
}
static void tw_withdrawn(mp_entry *e) {
    e->withdrawn = !e->withdrawn;
}
Test(entry, equal_notices_every_header_difference) {
    tweak_fn tweaks[] = {tw_version, tw_incarnation, tw_ttl, tw_withdrawn};
    for (size_t i = 0; i < NMAKERS; i++) {
        for (size_t t = 0; t < sizeof tweaks / sizeof tweaks[0]; t++) {
            mp_entry a, b;
            makers[i](&a);
            cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
            tweaks[t](&b);
            cr_assert_not(mp_entry_equal(&a, &b), "maker %zu tweak %zu", i, t);
            mp_entry_free(&a);
            mp_entry_free(&b);
        }
    }
}

Test(entry, equal_compares_values_unless_withdrawn) {
    mp_entry a, b;
    mk_cache(&a);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    b.u.cache.utilization = 0.25;
    cr_assert_not(mp_entry_equal(&a, &b));
    a.withdrawn = b.withdrawn = true;
    cr_assert(mp_entry_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);

    mk_node(&a);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    set(&b.u.node.capabilities.items[1], "queue");
    cr_assert_not(mp_entry_equal(&a, &b));
    mp_entry_free(&b);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&b.u.node.endpoints, "x:1"), MPREG_OK);
    cr_assert_not(mp_entry_equal(&a, &b));
    mp_entry_free(&b);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    b.u.node.incarnation++;
    cr_assert_not(mp_entry_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);

    mk_queue(&a);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    b.u.queue.healthy = !b.u.queue.healthy;
    cr_assert_not(mp_entry_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);

    mk_function(&a);
    cr_assert_eq(mp_entry_clone(&a, &b), MPREG_OK);
    b.u.function.load++;
    cr_assert_not(mp_entry_equal(&a, &b));
    mp_entry_free(&b);
    cr_assert_eq(mp_entry_function(&b, "n1", "c1", "fn", "id-2", "1.2.3-rc.1"), MPREG_OK);
    cr_assert_not(mp_entry_equal(&a, &b)); /* key differs */
    mp_entry_free(&a);
    mp_entry_free(&b);

    /* Same strings, different kinds. */
    cr_assert_eq(mp_entry_topic(&a, "n1", "c1", "q"), MPREG_OK);
    cr_assert_eq(mp_entry_queue(&b, "n1", "c1", "q", MP_QUEUE_BROADCAST), MPREG_OK);
    a.withdrawn = b.withdrawn = true;
    cr_assert_not(mp_entry_equal(&a, &b));
    mp_entry_free(&a);
    mp_entry_free(&b);
}

Test(entry, free_zeroes_and_is_idempotent) {
    mp_entry e;
    mk_node(&e);
    mp_entry_free(&e);
    cr_assert_null(e.u.node.key.node);
    cr_assert_eq(e.u.node.endpoints.count, 0);
    mp_entry_free(&e);
    mp_entry_free(NULL);
}

/* --- constructors ---------------------------------------------------------------- */

Test(entry, function_constructor_parses_the_version) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, "n1", "c1", "fn", NULL, "v2.1"), MPREG_OK);
    cr_assert_eq(e.kind, MP_ENTRY_FUNCTION);
    cr_assert_str_eq(e.u.function.key.function_id, "");
    cr_assert_str_eq(e.u.function.key.version, "v2.1");
    cr_assert_eq(e.u.function.semver.major, 2);
    cr_assert_eq(e.u.function.semver.minor, 1);
    cr_assert_eq(e.version.incarnation, 0);
    cr_assert_eq(e.version.counter, 0);
    cr_assert_eq(e.ttl_ms, 0);
    cr_assert_not(e.withdrawn);
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);

    cr_assert_eq(mp_entry_function(&e, "n1", "c1", "fn", "", "not.a.version"), MPREG_E_BAD_SEMVER);
    cr_assert_null(e.u.function.key.node); /* nothing half-built is left */
    cr_assert_eq(mp_entry_function(&e, "n1", "c1", "fn", "", NULL), MPREG_E_INVALID);
    cr_assert_eq(mp_entry_function(&e, NULL, "c1", "fn", "", "1.0"), MPREG_E_INVALID);
    cr_assert_eq(mp_entry_function(&e, "n1", NULL, "fn", "", "1.0"), MPREG_E_INVALID);
    cr_assert_null(e.u.function.key.node);
}

Test(entry, other_constructors_copy_their_strings) {
    char node[] = "n1", cluster[] = "c1", q[] = "jobs";
    mp_entry e;
    cr_assert_eq(mp_entry_queue(&e, node, cluster, q, MP_QUEUE_QUORUM), MPREG_OK);
    node[0] = cluster[0] = q[0] = 'X';
    cr_assert_str_eq(e.u.queue.key.node, "n1");
    cr_assert_str_eq(e.u.queue.cluster, "c1");
    cr_assert_str_eq(e.u.queue.key.queue, "jobs");
    cr_assert_eq(e.u.queue.modes, MP_QUEUE_QUORUM);
    cr_assert(e.u.queue.healthy);
    mp_entry_free(&e);

    cr_assert_eq(mp_entry_node(&e, "n1", NULL, "c1", 3), MPREG_OK);
    cr_assert_str_eq(e.u.node.name, "n1");
    cr_assert_eq(e.u.node.incarnation, 3);
    cr_assert_eq(e.kind, MP_ENTRY_NODE);
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);

    cr_assert_eq(mp_entry_cache(&e, "n1", "c1", NULL), MPREG_OK);
    cr_assert_str_eq(e.u.cache.region, "");
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);

    cr_assert_eq(mp_entry_topic(&e, "n1", "c1", NULL), MPREG_E_INVALID);
    cr_assert_eq(mp_entry_topic(&e, "n1", "c1", "#"), MPREG_OK);
    cr_assert_eq(mp_entry_validate(&e, NULL), MPREG_OK);
    mp_entry_free(&e);
}

/* --- string lists ---------------------------------------------------------------- */

Test(entry, strlist_helpers) {
    mp_strlist a = {NULL, 0}, b = {NULL, 0};
    cr_assert(mp_strlist_is_subset(&a, &b)); /* the empty set */
    cr_assert_not(mp_strlist_contains(&a, "x"));
    cr_assert_eq(mp_strlist_push(&a, "gpu"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&a, NULL), MPREG_E_INVALID);
    cr_assert_eq(a.count, 1);
    cr_assert_not(mp_strlist_is_subset(&a, &b));
    cr_assert(mp_strlist_is_subset(&b, &a));
    for (int i = 0; i < 40; i++) {
        char s[8];
        snprintf(s, sizeof s, "r%d", i);
        cr_assert_eq(mp_strlist_push(&b, s), MPREG_OK);
    }
    cr_assert_eq(mp_strlist_push(&b, "gpu"), MPREG_OK);
    cr_assert(mp_strlist_contains(&b, "r39"));
    cr_assert(mp_strlist_contains(&b, "gpu"));
    cr_assert_not(mp_strlist_contains(&b, "r4 "));
    cr_assert(mp_strlist_is_subset(&a, &b));
    cr_assert_eq(mp_strlist_push(&a, "tpu"), MPREG_OK);
    cr_assert_not(mp_strlist_is_subset(&a, &b));
    mp_strlist_free(&a);
    mp_strlist_free(&b);
    cr_assert_eq(b.count, 0);
    cr_assert_null(b.items);
    mp_strlist_free(&b);
}

Test(entry, kind_valid) {
    cr_assert_not(mp_entry_kind_valid(0));
    for (int k = MP_ENTRY_NODE; k <= MP_ENTRY_CACHE; k++) {
        cr_assert(mp_entry_kind_valid(k));
    }
    cr_assert_not(mp_entry_kind_valid(6));
    cr_assert_not(mp_entry_kind_valid(-1));
}

Test(entry, validate_clears_why_on_success_for_tombstones) {
    mp_entry e;
    mk_function(&e);
    e.withdrawn = true;
    const char *why = "unset";
    cr_assert_eq(mp_entry_validate(&e, &why), MPREG_OK);
    cr_assert_null(why);
    mp_entry_free(&e);
}

Test(strlist, append_copies_every_item_and_accepts_null) {
    mp_strlist src = {0}, dst = {0};
    cr_assert_eq(mp_strlist_push(&src, "gpu"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&src, "eu"), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&dst, "ssd"), MPREG_OK);
    cr_assert_eq(mp_strlist_append(&dst, &src), MPREG_OK);
    cr_assert_eq(dst.count, 3);
    cr_assert_str_eq(dst.items[0], "ssd");
    cr_assert_str_eq(dst.items[1], "gpu");
    cr_assert_str_eq(dst.items[2], "eu");
    cr_assert_neq(dst.items[1], src.items[0], "items are copies, not shared");
    cr_assert_eq(mp_strlist_append(&dst, NULL), MPREG_OK);
    cr_assert_eq(dst.count, 3);
    mp_strlist_free(&src);
    mp_strlist_free(&dst);
}
