/* test_engine.c - routing decisions: functions, publish, queues, cache
 * placement (rendezvous, read order, remote ranking), envelopes, planner. */
#include "core/envelope.h"
#include "core/map.h"
#include "core/rng.h"
#include "core/str.h"
#include "fabric/catalog.h"
#include "fabric/engine.h"
#include "fabric/entry.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

/* ---- fixtures ----------------------------------------------------------------- */

static uint64_t g_counter;

typedef struct stub_planner {
    mp_cluster_planner base; /* first member */
    int calls;
    char last_target[64];
    const mp_envelope *last_env;
    mpreg_err result;
} stub_planner;

static mpreg_err stub_next_hop(mp_cluster_planner *self, const char *target_cluster,
                               const mp_envelope *env, mp_cluster_hop *out) {
    stub_planner *p = (stub_planner *)self;
    p->calls++;
    snprintf(p->last_target, sizeof p->last_target, "%s", target_cluster);
    p->last_env = env;
    if (p->result) {
        return p->result;
    }
    out->next_cluster = "c2";
    out->gateway_node = "gw1";
    return MPREG_OK;
}

static stub_planner stub_new(mpreg_err result) {
    return (stub_planner){.base = {.next_hop = stub_next_hop}, .result = result};
}

typedef struct fixture {
    mp_catalog *cat;
    mp_xoshiro rng;
    mp_engine *eng;
} fixture;

static fixture fx_new(mp_cluster_planner *planner) {
    fixture f;
    mp_catalog_config cfg = {.local_node = "n1", .local_cluster = "c1"};
    f.cat = mp_catalog_new(&cfg);
    cr_assert_not_null(f.cat);
    mp_xoshiro_seed(&f.rng, 99);
    mp_engine_config ecfg = {.catalog = f.cat, .rng = &f.rng.rng, .planner = planner};
    f.eng = mp_engine_new(&ecfg);
    cr_assert_not_null(f.eng);
    return f;
}

static void fx_free(fixture *f) {
    mp_engine_free(f->eng);
    mp_catalog_free(f->cat);
}

static void apply(mp_catalog *c, mp_entry *e) {
    e->version = (mp_entry_version){1, ++g_counter};
    mp_apply_result res;
    cr_assert_eq(mp_catalog_apply_entry(c, e, 0, &res), MPREG_OK);
    mp_entry_free(e);
}

static void add_fn(fixture *f, const char *node, const char *cluster, const char *name,
                   const char *version) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, node, cluster, name, NULL, version), MPREG_OK);
    apply(f->cat, &e);
}

static void add_topic(fixture *f, const char *node, const char *pattern) {
    mp_entry e;
    cr_assert_eq(mp_entry_topic(&e, node, "c1", pattern), MPREG_OK);
    apply(f->cat, &e);
}

static void add_queue(fixture *f, const char *node, const char *cluster, const char *queue,
                      bool healthy) {
    mp_entry e;
    cr_assert_eq(mp_entry_queue(&e, node, cluster, queue, MP_QUEUE_AT_LEAST_ONCE), MPREG_OK);
    e.u.queue.healthy = healthy;
    apply(f->cat, &e);
}

typedef struct cache_spec {
    const char *node;
    const char *cluster;
    double latitude;
    double longitude;
    double reliability;
    double latency_ms;
    double utilization;
} cache_spec;

static void add_cache(fixture *f, cache_spec s) {
    mp_entry e;
    cr_assert_eq(mp_entry_cache(&e, s.node, s.cluster, "region"), MPREG_OK);
    e.u.cache.latitude = s.latitude;
    e.u.cache.longitude = s.longitude;
    e.u.cache.reliability = s.reliability;
    e.u.cache.latency_ms = s.latency_ms;
    e.u.cache.utilization = s.utilization;
    e.u.cache.capacity_bytes = 1u << 30;
    apply(f->cat, &e);
}

static void withdraw_cache(fixture *f, const char *node, const char *cluster) {
    mp_entry e;
    cr_assert_eq(mp_entry_cache(&e, node, cluster, "region"), MPREG_OK);
    e.withdrawn = true;
    apply(f->cat, &e);
}

static void add_node(fixture *f, const char *node, const char *cluster) {
    mp_entry e;
    cr_assert_eq(mp_entry_node(&e, node, NULL, cluster, 1), MPREG_OK);
    apply(f->cat, &e);
}

static void assert_action(mp_route_decision d, mp_route_action a, mp_route_reason r) {
    cr_assert_eq(d.action, a, "action %s, want %s (%s)", mp_route_action_name(d.action),
                 mp_route_action_name(a), d.why);
    cr_assert_eq(d.reason, r, "reason %s, want %s (%s)", mp_route_reason_name(d.reason),
                 mp_route_reason_name(r), d.why);
    cr_assert_not_null(d.why);
    if (a != MP_ROUTE_FAIL) {
        cr_assert_eq(d.error, MPREG_OK);
    }
}

static void assert_fail(mp_route_decision d, mp_route_reason r, mpreg_err err) {
    assert_action(d, MP_ROUTE_FAIL, r);
    cr_assert_eq(d.error, err, "error %s, want %s", mpreg_err_name(d.error), mpreg_err_name(err));
    cr_assert_eq(d.node_count, 0);
}

static void assert_nodes(mp_route_decision d, const char *const *want) {
    uint32_t n = 0;
    while (want[n]) {
        n++;
    }
    cr_assert_eq(d.node_count, n, "node_count %u, want %u", d.node_count, n);
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_str_eq(d.nodes[i], want[i]);
    }
}

/* ---- functions ------------------------------------------------------------------- */

Test(engine, function_local_and_remote) {
    fixture f = fx_new(NULL);
    add_fn(&f, "n1", "c1", "local_fn", "1.0.0");
    add_fn(&f, "n2", "c1", "remote_fn", "1.0.0");

    mp_function_query q = {.name = "local_fn"};
    mp_route_decision d = mp_engine_route_function(f.eng, &q, NULL);
    assert_action(d, MP_ROUTE_LOCAL, MP_RR_FUNCTION_LOCAL);
    cr_assert_eq(d.node_count, 0);
    cr_assert_not_null(d.endpoint);
    cr_assert_str_eq(d.endpoint->key.node, "n1");

    q.name = "remote_fn";
    d = mp_engine_route_function(f.eng, &q, "c1"); /* the local cluster, named */
    assert_action(d, MP_ROUTE_NODES, MP_RR_FUNCTION_REMOTE);
    assert_nodes(d, (const char *[]){"n2", NULL});
    cr_assert_str_eq(d.endpoint->key.name, "remote_fn");
    fx_free(&f);
}

Test(engine, function_failures_carry_selector_errors) {
    fixture f = fx_new(NULL);
    add_fn(&f, "n2", "c1", "f", "1.0.0");
    mp_function_query q = {.name = "missing"};
    assert_fail(mp_engine_route_function(f.eng, &q, NULL), MP_RR_NO_SUCH_FUNCTION,
                MPREG_E_NOT_FOUND);
    q = (mp_function_query){.name = "f", .function_id = "nope"};
    assert_fail(mp_engine_route_function(f.eng, &q, NULL), MP_RR_NO_FUNCTION_ID, MPREG_E_NOT_FOUND);
    q = (mp_function_query){.name = "f", .version = ">=2"};
    assert_fail(mp_engine_route_function(f.eng, &q, NULL), MP_RR_NO_VERSION, MPREG_E_NO_VERSION);
    q = (mp_function_query){.name = "f", .version = ">=2,<1"};
    assert_fail(mp_engine_route_function(f.eng, &q, NULL), MP_RR_BAD_CONSTRAINT,
                MPREG_E_BAD_SEMVER);
    mp_strlist res = {0};
    cr_assert_eq(mp_strlist_push(&res, "gpu"), MPREG_OK);
    q = (mp_function_query){.name = "f", .resources = &res};
    mp_route_decision d = mp_engine_route_function(f.eng, &q, NULL);
    assert_fail(d, MP_RR_NO_RESOURCES, MPREG_E_NO_RESOURCES);
    cr_assert_null(d.endpoint);
    mp_strlist_free(&res);
    q = (mp_function_query){.name = NULL};
    assert_fail(mp_engine_route_function(f.eng, &q, NULL), MP_RR_INVALID, MPREG_E_INVALID);
    fx_free(&f);
}

Test(engine, function_in_other_cluster_without_planner) {
    fixture f = fx_new(NULL);
    add_fn(&f, "n1", "c1", "f", "1.0.0");
    mp_function_query q = {.name = "f"};
    mp_route_decision d = mp_engine_route_function(f.eng, &q, "c9");
    assert_fail(d, MP_RR_NO_CLUSTER_ROUTE, MPREG_E_ROUTE);
    cr_assert_str_eq(d.why, "no route to cluster c9");
    fx_free(&f);
}

Test(engine, function_in_other_cluster_with_planner) {
    stub_planner p = stub_new(MPREG_OK);
    fixture f = fx_new(&p.base);
    mp_function_query q = {.name = "f"};
    mp_route_decision d = mp_engine_route_function(f.eng, &q, "c9");
    assert_action(d, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP);
    cr_assert_eq(p.calls, 1);
    cr_assert_str_eq(p.last_target, "c9");
    cr_assert_null(p.last_env, "a bare query has no envelope");
    cr_assert_str_eq(d.next_hop_node, "gw1");
    cr_assert_str_eq(d.via_cluster, "c2");
    cr_assert_eq(d.node_count, 0);

    /* An endpoint the catalog places in another cluster goes over the bridge
     * too, its node reported as the final target. */
    add_fn(&f, "far", "c7", "g", "1.0.0");
    q.name = "g";
    d = mp_engine_route_function(f.eng, &q, NULL);
    assert_action(d, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP);
    cr_assert_str_eq(p.last_target, "c7");
    assert_nodes(d, (const char *[]){"far", NULL});
    cr_assert_str_eq(d.endpoint->key.node, "far");

    p.result = MPREG_E_POLICY;
    d = mp_engine_route_function(f.eng, &q, NULL);
    assert_fail(d, MP_RR_NO_CLUSTER_ROUTE, MPREG_E_POLICY);
    cr_assert_str_eq(d.why, "no route to cluster c7");
    fx_free(&f);
}

/* ---- publish ------------------------------------------------------------------------ */

static fixture publish_fixture(void) {
    fixture f = fx_new(NULL);
    /* Several patterns per node that match the same topics: each node once. */
    add_topic(&f, "n1", "a.*");
    add_topic(&f, "n1", "a.#");
    add_topic(&f, "n1", "local.only");
    add_topic(&f, "n3", "a.b");
    add_topic(&f, "n3", "a.*");
    add_topic(&f, "n3", "*.b");
    add_topic(&f, "n3", "#");
    add_topic(&f, "n2", "a.b");
    add_topic(&f, "n2", "a.#");
    add_topic(&f, "n4", "x.#");
    return f;
}

Test(engine, publish_local_and_remote_each_once) {
    fixture f = publish_fixture();
    mp_route_decision d = mp_engine_route_publish(f.eng, "a.b", 3);
    assert_action(d, MP_ROUTE_LOCAL_AND_NODES, MP_RR_SUBSCRIBERS);
    assert_nodes(d, (const char *[]){"n2", "n3", NULL}); /* sorted, n1 never in nodes */

    d = mp_engine_route_publish(f.eng, "x.y.z", 5);
    assert_action(d, MP_ROUTE_NODES, MP_RR_SUBSCRIBERS);
    assert_nodes(d, (const char *[]){"n3", "n4", NULL});
    fx_free(&f);
}

Test(engine, publish_local_only) {
    fixture f = fx_new(NULL);
    add_topic(&f, "n1", "local.only");
    add_topic(&f, "n1", "local.*");
    add_topic(&f, "n2", "other");
    mp_route_decision d = mp_engine_route_publish(f.eng, "local.only", 10);
    assert_action(d, MP_ROUTE_LOCAL, MP_RR_SUBSCRIBERS);
    cr_assert_eq(d.node_count, 0);
    fx_free(&f);
}

Test(engine, publish_without_subscribers_is_not_an_error) {
    fixture f = fx_new(NULL);
    add_topic(&f, "n2", "a.b");
    mp_route_decision d = mp_engine_route_publish(f.eng, "q.z", 3);
    assert_action(d, MP_ROUTE_NODES, MP_RR_NO_SUBSCRIBERS);
    cr_assert_eq(d.error, MPREG_OK);
    cr_assert_eq(d.node_count, 0);
    fx_free(&f);
}

Test(engine, publish_invalid_topic) {
    fixture f = fx_new(NULL);
    assert_fail(mp_engine_route_publish(f.eng, "a..b", 4), MP_RR_INVALID, MPREG_E_TOPIC);
    assert_fail(mp_engine_route_publish(f.eng, "a.*", 3), MP_RR_INVALID, MPREG_E_TOPIC);
    assert_fail(mp_engine_route_publish(f.eng, NULL, 0), MP_RR_INVALID, MPREG_E_TOPIC);
    fx_free(&f);
}

/* ---- publish with queue groups -------------------------------------------------------- */

static void add_group_topic(fixture *f, const char *node, const char *pattern, const char *group) {
    mp_entry e;
    cr_assert_eq(mp_entry_topic_group(&e, node, "c1", pattern, group), MPREG_OK);
    apply(f->cat, &e);
}

static mp_id msg_id(uint64_t n) {
    mp_id id;
    memset(&id, 0x5a, sizeof id);
    memcpy(id.bytes, &n, sizeof n);
    return id;
}

static const mp_group_budget NO_BUDGET = {0, 0};

static mp_publish_plan plan_of(fixture *f, const char *topic, const mp_id *id) {
    mp_publish_plan p;
    const char *why = "unset";
    mpreg_err err = mp_engine_plan_publish(f->eng, topic, strlen(topic), id, NO_BUDGET, &p, &why);
    cr_assert_eq(err, MPREG_OK, "%s", why ? why : "");
    cr_assert_null(why);
    return p;
}

/* The node the plan gives group g to (this node included); NULL when none. */
static const char *group_node(const mp_publish_plan *p, const char *g) {
    const char *at = NULL;
    for (uint32_t i = 0; i <= p->target_count; i++) {
        const mp_publish_target *t = i < p->target_count ? &p->targets[i] : &p->local;
        for (uint32_t k = 0; k < t->group_count; k++) {
            if (mp_str_eq_c(t->groups[k], g)) {
                cr_assert_null(at, "group %s placed twice (%s and %s)", g, at, t->node);
                at = t->node;
            }
        }
    }
    return at;
}

/* The rendezvous rule of engine.h, spelled out. */
static const char *best_node(const mp_id *id, const char *g, const char *const *nodes) {
    const char *best = NULL;
    uint64_t top = 0;
    for (size_t i = 0; nodes[i]; i++) {
        uint8_t in[16 + 64];
        size_t n = 0;
        memcpy(in, id->bytes, 16);
        n = 16;
        memcpy(in + n, g, strlen(g) + 1); /* the name and its 0x00 */
        n += strlen(g) + 1;
        memcpy(in + n, nodes[i], strlen(nodes[i]));
        n += strlen(nodes[i]);
        uint64_t w = mp_hash_bytes(in, n);
        if (!best || w > top || (w == top && strcmp(nodes[i], best) < 0)) {
            best = nodes[i];
            top = w;
        }
    }
    return best;
}

Test(engine, plan_publish_places_each_group_on_one_node_by_rendezvous) {
    fixture f = fx_new(NULL);
    add_group_topic(&f, "n1", "jobs.#", "g");
    add_group_topic(&f, "n2", "jobs.*", "g");
    add_group_topic(&f, "n3", "#", "g");
    add_group_topic(&f, "n3", "jobs.a", "g"); /* n3 twice in g: still one candidate */
    add_group_topic(&f, "n2", "jobs.a", "h");
    add_topic(&f, "n4", "jobs.a");
    static const char *const g_nodes[] = {"n1", "n2", "n3", NULL};
    size_t per_node[4] = {0};
    for (uint64_t k = 0; k < 600; k++) {
        mp_id id = msg_id(k);
        mp_publish_plan p = plan_of(&f, "jobs.a", &id);
        const char *g = group_node(&p, "g");
        cr_assert_not_null(g);
        cr_assert_str_eq(g, best_node(&id, "g", g_nodes), "message %llu", (unsigned long long)k);
        per_node[g[1] - '1']++;
        cr_assert_str_eq(group_node(&p, "h"), "n2", "one node has h: always it");
        cr_assert_eq(p.unplaced, 0);
        /* The same message is placed the same way every time. */
        mp_publish_plan again = plan_of(&f, "jobs.a", &id);
        cr_assert_str_eq(group_node(&again, "g"), best_node(&id, "g", g_nodes));
    }
    for (int i = 0; i < 3; i++) {
        cr_assert_gt(per_node[i], 150, "n%d got %zu of 600", i + 1, per_node[i]);
    }
    fx_free(&f);
}

Test(engine, plan_publish_merges_parts_per_node) {
    fixture f = fx_new(NULL);
    add_topic(&f, "n1", "a.*");
    add_topic(&f, "n4", "a.b");
    add_topic(&f, "n2", "a.#");
    add_group_topic(&f, "n2", "a.b", "only-n2");
    add_group_topic(&f, "n3", "a.b", "only-n3");
    add_group_topic(&f, "n3", "a.b", "also-n3");
    add_group_topic(&f, "n1", "a.b", "only-n1");
    add_group_topic(&f, "n5", "zzz", "elsewhere");
    mp_id id = msg_id(1);
    mp_publish_plan p = plan_of(&f, "a.b", &id);
    cr_assert_str_eq(p.local.node, "n1");
    cr_assert(p.local.plain);
    cr_assert_eq(p.local.group_count, 1);
    cr_assert(mp_str_eq_c(p.local.groups[0], "only-n1"));
    cr_assert_eq(p.target_count, 3, "n2, n3, n4: never this node");
    cr_assert_str_eq(p.targets[0].node, "n2");
    cr_assert(p.targets[0].plain);
    cr_assert_eq(p.targets[0].group_count, 1);
    cr_assert(mp_str_eq_c(p.targets[0].groups[0], "only-n2"));
    cr_assert_str_eq(p.targets[1].node, "n3");
    cr_assert_not(p.targets[1].plain, "n3 has groups only");
    cr_assert_eq(p.targets[1].group_count, 2);
    cr_assert(mp_str_eq_c(p.targets[1].groups[0], "also-n3"), "bytewise order");
    cr_assert(mp_str_eq_c(p.targets[1].groups[1], "only-n3"));
    cr_assert_str_eq(p.targets[2].node, "n4");
    cr_assert(p.targets[2].plain);
    cr_assert_eq(p.targets[2].group_count, 0);
    /* A topic nobody wants: an empty plan, not an error. */
    p = plan_of(&f, "q", &id);
    cr_assert_not(p.local.plain);
    cr_assert_eq(p.local.group_count, 0);
    cr_assert_eq(p.target_count, 0);
    /* Only groups here: no target, the local part has them. */
    fixture g = fx_new(NULL);
    add_group_topic(&g, "n1", "x", "g");
    p = plan_of(&g, "x", &id);
    cr_assert_not(p.local.plain);
    cr_assert_eq(p.local.group_count, 1);
    cr_assert_eq(p.target_count, 0);
    fx_free(&g);
    fx_free(&f);
}

Test(engine, plan_publish_errors) {
    fixture f = fx_new(NULL);
    mp_publish_plan p;
    const char *why = NULL;
    mp_id id = msg_id(1);
    cr_assert_eq(mp_engine_plan_publish(f.eng, "a..b", 4, &id, NO_BUDGET, &p, &why), MPREG_E_TOPIC);
    cr_assert_not_null(why);
    cr_assert_eq(mp_engine_plan_publish(f.eng, "a.b", 3, NULL, NO_BUDGET, &p, &why),
                 MPREG_E_INVALID);
    cr_assert_eq(p.target_count, 0);
    fx_free(&f);
}

/* Groups whose names would overflow a node's budget go to the next node of
 * their ranking with room; with no room anywhere they are left out. */
Test(engine, plan_publish_budget_moves_groups_to_the_next_node) {
    fixture f = fx_new(NULL);
    char names[12][64];
    for (int i = 0; i < 12; i++) {
        snprintf(names[i], sizeof names[i], "group-%02d-%040d", i, 0); /* 49 bytes */
        add_group_topic(&f, "n2", "t", names[i]);
        add_group_topic(&f, "n3", "t", names[i]);
    }
    /* Room for 4 groups (49 + 1 bytes each) per node. */
    mp_group_budget budget = {.bytes = 200, .per_group = 1};
    for (uint64_t k = 0; k < 50; k++) {
        mp_id id = msg_id(k);
        mp_publish_plan p;
        cr_assert_eq(mp_engine_plan_publish(f.eng, "t", 1, &id, budget, &p, NULL), MPREG_OK);
        cr_assert_eq(p.target_count, 2);
        cr_assert_eq(p.targets[0].group_count, 4);
        cr_assert_eq(p.targets[1].group_count, 4);
        cr_assert_eq(p.unplaced, 4, "twelve groups, room for eight");
        /* Groups are placed in bytewise order: no node can be full before
         * the fifth, so the first four are on their best node. */
        static const char *const both[] = {"n2", "n3", NULL};
        for (int i = 0; i < 4; i++) {
            cr_assert_str_eq(group_node(&p, names[i]), best_node(&id, names[i], both));
        }
        for (int i = 4; i < 8; i++) {
            cr_assert_not_null(group_node(&p, names[i]), "group %d placed", i);
        }
        for (int i = 8; i < 12; i++) {
            cr_assert_null(group_node(&p, names[i]), "group %d had no room", i);
        }
    }
    /* With room enough, every group on its best node. */
    budget.bytes = 12 * 50;
    mp_id id = msg_id(7);
    mp_publish_plan p;
    cr_assert_eq(mp_engine_plan_publish(f.eng, "t", 1, &id, budget, &p, NULL), MPREG_OK);
    cr_assert_eq(p.unplaced, 0);
    static const char *const both[] = {"n2", "n3", NULL};
    for (int i = 0; i < 12; i++) {
        cr_assert_str_eq(group_node(&p, names[i]), best_node(&id, names[i], both));
    }
    fx_free(&f);
}

/* ---- queues --------------------------------------------------------------------------- */

Test(engine, queue_owner) {
    fixture f = fx_new(NULL);
    add_queue(&f, "n3", "c1", "jobs", true);
    add_queue(&f, "n1", "c1", "mine", true);
    mp_route_decision d = mp_engine_route_queue(f.eng, "jobs");
    assert_action(d, MP_ROUTE_NODES, MP_RR_QUEUE_OWNER);
    assert_nodes(d, (const char *[]){"n3", NULL});
    assert_action(mp_engine_route_queue(f.eng, "mine"), MP_ROUTE_LOCAL, MP_RR_QUEUE_OWNER);
    assert_fail(mp_engine_route_queue(f.eng, "nope"), MP_RR_NO_SUCH_QUEUE, MPREG_E_NO_SUCH_QUEUE);
    assert_fail(mp_engine_route_queue(f.eng, ""), MP_RR_INVALID, MPREG_E_INVALID);
    fx_free(&f);
}

Test(engine, queue_several_endpoints_deterministic) {
    fixture f = fx_new(NULL);
    add_queue(&f, "n6", "c1", "q", true);
    add_queue(&f, "n4", "c1", "q", false);
    add_queue(&f, "n5", "c1", "q", true);
    mp_route_decision d = mp_engine_route_queue(f.eng, "q");
    assert_action(d, MP_ROUTE_NODES, MP_RR_QUEUE_OWNER);
    assert_nodes(d, (const char *[]){"n5", NULL}); /* healthy, smallest id */

    add_queue(&f, "n8", "c1", "sick", false);
    add_queue(&f, "n7", "c1", "sick", false);
    d = mp_engine_route_queue(f.eng, "sick");
    assert_action(d, MP_ROUTE_NODES, MP_RR_QUEUE_OWNER_UNHEALTHY);
    assert_nodes(d, (const char *[]){"n7", NULL});
    fx_free(&f);
}

Test(engine, queue_in_other_cluster) {
    stub_planner p = stub_new(MPREG_OK);
    fixture f = fx_new(&p.base);
    add_queue(&f, "far", "c5", "remote", true);
    mp_route_decision d = mp_engine_route_queue(f.eng, "remote");
    assert_action(d, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP);
    cr_assert_str_eq(p.last_target, "c5");
    cr_assert_null(p.last_env);
    assert_nodes(d, (const char *[]){"far", NULL});

    /* Routed from an envelope, the planner sees the envelope. */
    mp_envelope env;
    mp_envelope_init(&env, MP_KIND_QUEUE_OP);
    env.topic = mp_str_c("remote");
    d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP);
    cr_assert_eq(p.last_env, &env);
    cr_assert_eq(p.calls, 2);
    fx_free(&f);
}

/* ---- cache: read score and geometry --------------------------------------------------- */

static void assert_near(double got, double want, double tol) {
    cr_assert(got > want - tol && got < want + tol, "got %.6f, want %.6f +- %g", got, want, tol);
}

Test(engine, read_score_formula) {
    mp_cache_profile p = {.reliability = 1, .latency_ms = 0, .utilization = 0};
    assert_near(mp_cache_read_score(&p, 0), 1.0, 1e-12);
    p.latency_ms = 10;
    assert_near(mp_cache_read_score(&p, 0), 0.5, 1e-12);
    p.latency_ms = 0;
    assert_near(mp_cache_read_score(&p, 10), 0.5, 1e-12);
    p.utilization = 1;
    assert_near(mp_cache_read_score(&p, 0), 0.5, 1e-12);
    p.utilization = 0;
    p.reliability = 0.25;
    assert_near(mp_cache_read_score(&p, 0), 0.25, 1e-12);
    p = (mp_cache_profile){.reliability = 0.9, .latency_ms = 5, .utilization = 0.4};
    assert_near(mp_cache_read_score(&p, 0), 0.9 * 0.8 / 1.5, 1e-12);
}

Test(engine, haversine_distances) {
    /* London - Paris, New York - Los Angeles: well-known great-circle figures. */
    assert_near(mp_geo_distance_km(51.5074, -0.1278, 48.8566, 2.3522), 343.5, 1.0);
    assert_near(mp_geo_distance_km(40.7128, -74.0060, 34.0522, -118.2437), 3936.0, 5.0);
    assert_near(mp_geo_distance_km(-33.8688, 151.2093, 51.5074, -0.1278), 16994.0, 20.0);
    double half = 3.14159265358979323846 * MP_EARTH_RADIUS_KM;
    assert_near(mp_geo_distance_km(0, 0, 0, 180), half, 1e-6);
    assert_near(mp_geo_distance_km(90, 0, -90, 0), half, 1e-6);
    assert_near(mp_geo_distance_km(10, 20, 10, 20), 0, 1e-12);
    /* Longitude wraps: 179 and -179 are 2 degrees apart on the equator. */
    assert_near(mp_geo_distance_km(0, 179, 0, -179), 2 * half / 180, 1e-6);
    assert_near(mp_geo_distance_km(0, 10, 0, 370), 0, 1e-6);
    /* Symmetric. */
    assert_near(mp_geo_distance_km(48.8566, 2.3522, 51.5074, -0.1278), 343.5, 1.0);
}

/* ---- cache: rendezvous owners ----------------------------------------------------------- */

#define CACHE_NODES 8

static fixture cache_fixture(void) {
    fixture f = fx_new(NULL);
    char node[16];
    for (int i = 1; i <= CACHE_NODES; i++) {
        snprintf(node, sizeof node, "n%d", i);
        add_cache(&f, (cache_spec){node, "c1", 50, 8, 0.99, 1, 0.2});
    }
    /* Other clusters' cache nodes never own local keys. */
    add_cache(&f, (cache_spec){"x1", "c2", 50, 8, 1, 0, 0});
    add_cache(&f, (cache_spec){"x2", "c3", 50, 8, 1, 0, 0});
    return f;
}

static const char *owner_of(fixture *f, const char *key) {
    mp_cache_owner out[MP_ROUTE_MAX_REPLICAS];
    uint32_t n = 0;
    cr_assert_eq(mp_engine_cache_owners(f->eng, key, strlen(key), 1, out, &n), MPREG_OK);
    cr_assert_eq(n, 1);
    return out[0].node;
}

static int node_index(const char *node) {
    int i = 0;
    cr_assert_eq(sscanf(node, "n%d", &i), 1, "owner %s is not a local cache node", node);
    cr_assert(i >= 1 && i <= CACHE_NODES);
    return i;
}

Test(engine, rendezvous_is_stable) {
    fixture f = cache_fixture();
    char key[32];
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "user:%d", k);
        const char *a = owner_of(&f, key);
        const char *b = owner_of(&f, key);
        cr_assert_str_eq(a, b);
    }
    /* The same contents in another catalog, inserted in another order. */
    fixture g = fx_new(NULL);
    add_cache(&g, (cache_spec){"x1", "c2", 50, 8, 1, 0, 0});
    char node[16];
    for (int i = CACHE_NODES; i >= 1; i--) {
        snprintf(node, sizeof node, "n%d", i);
        add_cache(&g, (cache_spec){node, "c1", 50, 8, 0.99, 1, 0.2});
    }
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "user:%d", k);
        cr_assert_str_eq(owner_of(&f, key), owner_of(&g, key));
    }
    fx_free(&g);
    fx_free(&f);
}

Test(engine, rendezvous_spreads_keys_evenly) {
    fixture f = cache_fixture();
    enum { KEYS = 10000 };
    int counts[CACHE_NODES + 1] = {0};
    char key[32];
    for (int k = 0; k < KEYS; k++) {
        snprintf(key, sizeof key, "key-%d", k);
        counts[node_index(owner_of(&f, key))]++;
    }
    /* Chi-square with 7 degrees of freedom: P(X > 24.3) = 0.001. */
    double expect = (double)KEYS / CACHE_NODES;
    double chi2 = 0;
    for (int i = 1; i <= CACHE_NODES; i++) {
        double d = counts[i] - expect;
        chi2 += d * d / expect;
    }
    cr_assert_lt(chi2, 24.3, "chi-square %.2f over %d nodes", chi2, CACHE_NODES);
    fx_free(&f);
}

Test(engine, rendezvous_removal_moves_only_the_removed_nodes_keys) {
    fixture f = cache_fixture();
    enum { KEYS = 10000, R = 3 };
    static char before[KEYS][R][16];
    char key[32];
    for (int k = 0; k < KEYS; k++) {
        snprintf(key, sizeof key, "k%d", k);
        mp_cache_owner out[MP_ROUTE_MAX_REPLICAS];
        uint32_t n = 0;
        cr_assert_eq(mp_engine_cache_owners(f.eng, key, strlen(key), R, out, &n), MPREG_OK);
        cr_assert_eq(n, R);
        for (int r = 0; r < R; r++) {
            snprintf(before[k][r], sizeof before[k][r], "%s", out[r].node);
        }
    }
    /* Single owner (replicas 1) of each key, before removal. */
    static char owner_before[KEYS][16];
    for (int k = 0; k < KEYS; k++) {
        snprintf(key, sizeof key, "k%d", k);
        snprintf(owner_before[k], sizeof owner_before[k], "%s", owner_of(&f, key));
    }

    withdraw_cache(&f, "n5", "c1");

    int moved = 0;
    int owned_by_n5 = 0;
    for (int k = 0; k < KEYS; k++) {
        snprintf(key, sizeof key, "k%d", k);
        const char *now = owner_of(&f, key);
        cr_assert_str_neq(now, "n5");
        if (strcmp(owner_before[k], "n5") == 0) {
            owned_by_n5++;
        } else {
            cr_assert_str_eq(now, owner_before[k], "key %s moved although its owner stayed", key);
        }
        moved += strcmp(now, owner_before[k]) != 0;

        /* With replicas, the surviving owners stay owners. */
        mp_cache_owner out[MP_ROUTE_MAX_REPLICAS];
        uint32_t n = 0;
        cr_assert_eq(mp_engine_cache_owners(f.eng, key, strlen(key), R, out, &n), MPREG_OK);
        cr_assert_eq(n, R);
        for (int r = 0; r < R; r++) {
            if (strcmp(before[k][r], "n5") == 0) {
                continue;
            }
            bool kept = false;
            for (uint32_t j = 0; j < n; j++) {
                kept = kept || strcmp(out[j].node, before[k][r]) == 0;
            }
            cr_assert(kept, "key %s lost surviving owner %s", key, before[k][r]);
        }
    }
    cr_assert_eq(moved, owned_by_n5, "exactly n5's keys moved");
    cr_assert_gt(owned_by_n5, KEYS / CACHE_NODES / 2);
    fx_free(&f);
}

Test(engine, owners_ordered_for_reads) {
    fixture f = fx_new(NULL);
    add_cache(&f, (cache_spec){"n2", "c1", 0, 0, 0.5, 0, 0});  /* 0.5 */
    add_cache(&f, (cache_spec){"n3", "c1", 0, 0, 1.0, 0, 0});  /* 1.0 */
    add_cache(&f, (cache_spec){"n4", "c1", 0, 0, 1.0, 10, 0}); /* 0.5 * ... see below */
    add_cache(&f, (cache_spec){"n5", "c1", 0, 0, 1.0, 2, 0});  /* 1/1.2 */
    add_cache(&f, (cache_spec){"n6", "c1", 0, 0, 0.9, 0, 1});  /* 0.45 */
    mp_cache_owner out[MP_ROUTE_MAX_REPLICAS];
    uint32_t n = 0;
    /* replicas above the number of nodes: every node owns. */
    cr_assert_eq(mp_engine_cache_owners(f.eng, "k", 1, 10, out, &n), MPREG_OK);
    cr_assert_eq(n, 5);
    cr_assert_str_eq(out[0].node, "n3");
    cr_assert_str_eq(out[1].node, "n5");
    /* n2 and n4 both score 0.5: the higher rendezvous weight first. */
    cr_assert(strcmp(out[2].node, "n2") == 0 || strcmp(out[2].node, "n4") == 0);
    cr_assert(strcmp(out[3].node, "n2") == 0 || strcmp(out[3].node, "n4") == 0);
    cr_assert_gt(out[2].weight, out[3].weight);
    cr_assert_str_eq(out[4].node, "n6");
    for (uint32_t i = 1; i < n; i++) {
        cr_assert_geq(out[i - 1].read_score, out[i].read_score);
    }
    fx_free(&f);
}

Test(engine, route_cache_actions) {
    fixture f = cache_fixture();
    /* Find a key the local node owns alone, and one it does not. */
    char mine[32] = "", theirs[32] = "";
    for (int k = 0; !mine[0] || !theirs[0]; k++) {
        char key[32];
        snprintf(key, sizeof key, "c%d", k);
        bool local = strcmp(owner_of(&f, key), "n1") == 0;
        snprintf(local ? mine : theirs, sizeof mine, "%s", key);
    }
    mp_route_decision d = mp_engine_route_cache(f.eng, mine, strlen(mine), 1);
    assert_action(d, MP_ROUTE_LOCAL, MP_RR_CACHE_OWNERS);
    cr_assert_eq(d.node_count, 0);

    d = mp_engine_route_cache(f.eng, theirs, strlen(theirs), 1);
    assert_action(d, MP_ROUTE_NODES, MP_RR_CACHE_OWNERS);
    cr_assert_eq(d.node_count, 1);
    cr_assert_str_eq(d.nodes[0], owner_of(&f, theirs));

    /* Every local cache node owns with replicas = 8: local plus 7 others. */
    d = mp_engine_route_cache(f.eng, mine, strlen(mine), CACHE_NODES);
    assert_action(d, MP_ROUTE_LOCAL_AND_NODES, MP_RR_CACHE_OWNERS);
    cr_assert_eq(d.node_count, CACHE_NODES - 1);
    for (uint32_t i = 0; i < d.node_count; i++) {
        cr_assert_str_neq(d.nodes[i], "n1");
        node_index(d.nodes[i]);
    }
    fx_free(&f);
}

Test(engine, route_cache_without_cache_nodes) {
    fixture f = fx_new(NULL);
    add_cache(&f, (cache_spec){"x1", "c2", 0, 0, 1, 0, 0}); /* another cluster only */
    assert_fail(mp_engine_route_cache(f.eng, "k", 1, 1), MP_RR_NO_CACHE_NODES, MPREG_E_ROUTE);
    fx_free(&f);
}

/* ---- cache: remote ranking (L4) --------------------------------------------------------- */

Test(engine, remote_cache_ranked_by_distance_and_profile) {
    fixture f = fx_new(NULL);
    add_cache(&f, (cache_spec){"local-cache", "c1", 51.5, -0.1, 1, 0, 0});
    add_cache(&f, (cache_spec){"paris", "c2", 48.8566, 2.3522, 1, 1, 0});
    add_cache(&f, (cache_spec){"nyc", "c3", 40.7128, -74.0060, 1, 1, 0});
    add_cache(&f, (cache_spec){"sydney", "c4", -33.8688, 151.2093, 1, 1, 0});
    add_cache(&f, (cache_spec){"paris-flaky", "c2", 48.8566, 2.3522, 0.1, 1, 0});

    mp_remote_cache out[8];
    size_t total = mp_engine_rank_remote_cache(f.eng, 51.5074, -0.1278, out, 8);
    cr_assert_eq(total, 4, "the local cluster's cache node is not remote");
    /* A close but unreliable node ranks below a far reliable one when the
     * reliability gap outweighs the distance: paris-flaky (0.1 / 1.44)
     * after nyc (1 / 6.67), before sydney (1 / 18.1). */
    const char *order[] = {"paris", "nyc", "paris-flaky", "sydney"};
    for (size_t i = 0; i < 4; i++) {
        cr_assert_str_eq(out[i].node, order[i], "rank %zu: %s", i, out[i].node);
    }
    cr_assert_str_eq(out[0].cluster, "c2");
    assert_near(out[0].distance_km, 343.5, 1.0);
    /* score = reliability * (1 - 0.5 u) / (1 + (latency + km/100) / 10) */
    assert_near(out[0].score, 1.0 / (1 + (1 + out[0].distance_km / 100) / 10), 1e-12);

    /* cap below the total: the best cap, and the total. */
    total = mp_engine_rank_remote_cache(f.eng, 48.8566, 2.3522, out, 2);
    cr_assert_eq(total, 4);
    cr_assert_str_eq(out[0].node, "paris");
    cr_assert_str_eq(out[1].node, "nyc");
    assert_near(out[0].distance_km, 0, 1e-9);

    cr_assert_eq(mp_engine_rank_remote_cache(f.eng, 0, 0, NULL, 0), 4);
    fx_free(&f);
}

/* ---- envelopes ----------------------------------------------------------------------------- */

static mp_envelope env_new(mp_kind kind, const char *topic) {
    mp_envelope env;
    mp_envelope_init(&env, kind);
    env.topic = mp_str_c(topic);
    return env;
}

Test(engine, envelope_hop_budget) {
    fixture f = publish_fixture();
    mp_envelope env = env_new(MP_KIND_PUBLISH, "a.b");
    cr_assert_gt(env.hop_budget, 0);
    env.hop_budget = 0;
    assert_fail(mp_engine_route_envelope(f.eng, &env), MP_RR_HOP_BUDGET, MPREG_E_HOP_BUDGET);
    env.hop_budget = 1;
    assert_action(mp_engine_route_envelope(f.eng, &env), MP_ROUTE_LOCAL_AND_NODES,
                  MP_RR_SUBSCRIBERS);
    assert_fail(mp_engine_route_envelope(f.eng, NULL), MP_RR_INVALID, MPREG_E_INVALID);
    fx_free(&f);
}

Test(engine, envelope_target_cluster_with_planner) {
    stub_planner p = stub_new(MPREG_OK);
    fixture f = fx_new(&p.base);
    mp_envelope env = env_new(MP_KIND_RPC_REQUEST, "");
    env.target_cluster = mp_str_c("c9");
    mp_route_decision d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP);
    cr_assert_eq(p.calls, 1);
    cr_assert_str_eq(p.last_target, "c9");
    cr_assert_eq(p.last_env, &env);
    cr_assert_str_eq(d.next_hop_node, "gw1");
    cr_assert_str_eq(d.via_cluster, "c2");

    /* The local cluster named explicitly is not forwarded. */
    env.target_cluster = mp_str_c("c1");
    assert_action(mp_engine_route_envelope(f.eng, &env), MP_ROUTE_LOCAL, MP_RR_LOCAL_KIND);
    cr_assert_eq(p.calls, 1);

    p.result = MPREG_E_ROUTE;
    env.target_cluster = mp_str_c("c9");
    assert_fail(mp_engine_route_envelope(f.eng, &env), MP_RR_NO_CLUSTER_ROUTE, MPREG_E_ROUTE);
    fx_free(&f);
}

Test(engine, envelope_target_cluster_without_planner) {
    fixture f = fx_new(NULL);
    mp_envelope env = env_new(MP_KIND_PUBLISH, "a.b");
    env.target_cluster = mp_str_c("elsewhere");
    mp_route_decision d = mp_engine_route_envelope(f.eng, &env);
    assert_fail(d, MP_RR_NO_CLUSTER_ROUTE, MPREG_E_ROUTE);
    cr_assert_str_eq(d.why, "no route to cluster elsewhere");

    /* A planner attached later is used. */
    stub_planner p = stub_new(MPREG_OK);
    mp_engine_set_planner(f.eng, &p.base);
    assert_action(mp_engine_route_envelope(f.eng, &env), MP_ROUTE_FORWARD_CLUSTER,
                  MP_RR_CLUSTER_NEXT_HOP);
    fx_free(&f);
}

Test(engine, envelope_target_node) {
    stub_planner p = stub_new(MPREG_OK);
    fixture f = fx_new(&p.base);
    add_node(&f, "n2", "c1");
    add_node(&f, "far", "c8");
    mp_envelope env = env_new(MP_KIND_RPC_INVOKE, "");

    env.target_node = mp_str_c("n1");
    assert_action(mp_engine_route_envelope(f.eng, &env), MP_ROUTE_LOCAL, MP_RR_TARGET_NODE);

    env.target_node = mp_str_c("n2");
    mp_route_decision d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_NODES, MP_RR_TARGET_NODE);
    assert_nodes(d, (const char *[]){"n2", NULL});

    env.target_node = mp_str_c("ghost");
    d = mp_engine_route_envelope(f.eng, &env);
    assert_fail(d, MP_RR_UNKNOWN_NODE, MPREG_E_UNREACHABLE);
    cr_assert_str_eq(d.why, "target node ghost is not in the catalog");

    /* A target node known to live in another cluster goes over the bridge. */
    env.target_node = mp_str_c("far");
    d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP);
    cr_assert_str_eq(p.last_target, "c8");
    assert_nodes(d, (const char *[]){"far", NULL});

    /* Target node wins over the kind's own routing. */
    mp_envelope pub = env_new(MP_KIND_PUBLISH, "nobody.listens");
    pub.target_node = mp_str_c("n2");
    assert_action(mp_engine_route_envelope(f.eng, &pub), MP_ROUTE_NODES, MP_RR_TARGET_NODE);
    fx_free(&f);
}

Test(engine, envelope_kinds) {
    fixture f = publish_fixture();
    add_queue(&f, "n3", "c1", "jobs", true);
    char node[16];
    for (int i = 1; i <= 4; i++) {
        snprintf(node, sizeof node, "n%d", i);
        add_cache(&f, (cache_spec){node, "c1", 0, 0, 1, 1, 0});
    }

    mp_envelope env = env_new(MP_KIND_PUBLISH, "x.y");
    mp_route_decision d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_NODES, MP_RR_SUBSCRIBERS);
    assert_nodes(d, (const char *[]){"n3", "n4", NULL});

    env = env_new(MP_KIND_PUBLISH, "other"); /* only n3's "#" matches */
    d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_NODES, MP_RR_SUBSCRIBERS);
    assert_nodes(d, (const char *[]){"n3", NULL});

    env = env_new(MP_KIND_QUEUE_OP, "jobs");
    d = mp_engine_route_envelope(f.eng, &env);
    assert_action(d, MP_ROUTE_NODES, MP_RR_QUEUE_OWNER);
    assert_nodes(d, (const char *[]){"n3", NULL});
    env = env_new(MP_KIND_QUEUE_OP, "none");
    assert_fail(mp_engine_route_envelope(f.eng, &env), MP_RR_NO_SUCH_QUEUE, MPREG_E_NO_SUCH_QUEUE);

    env = env_new(MP_KIND_CACHE_OP, "some-key");
    d = mp_engine_route_envelope(f.eng, &env);
    cr_assert_eq(d.reason, MP_RR_CACHE_OWNERS);
    cr_assert_eq(d.node_count + (d.action == MP_ROUTE_LOCAL), 1, "one replica by default");

    cr_assert_eq(mp_envelope_add_header(&env, mp_str_c("replicas"), mp_str_c("3")), MPREG_OK);
    d = mp_engine_route_envelope(f.eng, &env);
    cr_assert_eq(d.reason, MP_RR_CACHE_OWNERS);
    cr_assert_eq(d.node_count + (d.action == MP_ROUTE_LOCAL_AND_NODES), 3);

    cr_assert_eq(mp_envelope_add_header(&env, mp_str_c("replicas"), mp_str_c("99")), MPREG_OK);
    d = mp_engine_route_envelope(f.eng, &env);
    cr_assert_eq(d.node_count + (d.action == MP_ROUTE_LOCAL_AND_NODES), 4, "clamped to nodes");

    const char *bad[] = {"0", "x", "-1", "1.5", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(mp_envelope_add_header(&env, mp_str_c("replicas"), mp_str_c(bad[i])),
                     MPREG_OK);
        assert_fail(mp_engine_route_envelope(f.eng, &env), MP_RR_INVALID, MPREG_E_INVALID);
    }

    const mp_kind local_kinds[] = {MP_KIND_RPC_REQUEST, MP_KIND_RPC_INVOKE, MP_KIND_GOSSIP,
                                   MP_KIND_PING,        MP_KIND_SUBSCRIBE,  MP_KIND_CONTROL};
    for (size_t i = 0; i < sizeof local_kinds / sizeof *local_kinds; i++) {
        env = env_new(local_kinds[i], "");
        assert_action(mp_engine_route_envelope(f.eng, &env), MP_ROUTE_LOCAL, MP_RR_LOCAL_KIND);
    }
    fx_free(&f);
}

/* ---- names and construction -------------------------------------------------------------- */

Test(engine, names) {
    for (int a = MP_ROUTE_LOCAL; a <= MP_ROUTE_FAIL; a++) {
        cr_assert_str_neq(mp_route_action_name((mp_route_action)a), "unknown");
    }
    for (int r = MP_RR_FUNCTION_LOCAL; r <= MP_RR_NOMEM; r++) {
        cr_assert_str_neq(mp_route_reason_name((mp_route_reason)r), "unknown", "reason %d", r);
    }
    cr_assert_str_eq(mp_route_reason_name(MP_RR_NO_SUBSCRIBERS), "no_subscribers");
    cr_assert_str_eq(mp_route_action_name(MP_ROUTE_FORWARD_CLUSTER), "forward_cluster");
    cr_assert_str_eq(mp_route_reason_name((mp_route_reason)0), "unknown");
    cr_assert_str_eq(mp_route_action_name((mp_route_action)0), "unknown");
}

Test(engine, new_requires_catalog) {
    cr_assert_null(mp_engine_new(NULL));
    mp_engine_config cfg = {0};
    cr_assert_null(mp_engine_new(&cfg));
    mp_engine_free(NULL);
}
