/* engine.c - routing decisions over the catalog. */
#include "fabric/engine.h"

#include "core/map.h"
#include "core/str.h"
#include "core/topic.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_ENGINE_WHY_MAX 320

struct mp_engine {
    mp_catalog *catalog;
    mp_rng *rng;
    mp_cluster_planner *planner;
    /* Scratch behind decision.nodes, reused by every call. */
    const char **nodes;
    uint32_t node_count;
    uint32_t node_cap;
    mp_buf hash_input; /* key || 0 || node, for rendezvous weights */
    /* Scratch behind a publish plan (mp_engine_plan_publish). */
    struct mp_group_cand *cands; /* (node, group) pairs matching the topic */
    uint32_t cand_count;
    uint32_t cand_cap;
    mp_publish_target *targets;
    uint32_t target_cap;
    mp_str *groups; /* the targets' group lists, one after another */
    uint32_t group_cap;
    char why[MP_ENGINE_WHY_MAX];
    /* NUL-terminated copies of envelope fields for the catalog's C-string API. */
    char cluster_buf[MP_MAX_NAME_LEN + 1];
    char node_buf[MP_MAX_NAME_LEN + 1];
    char topic_buf[MP_MAX_TOPIC_LEN + 1];
};

/* ---- names --------------------------------------------------------------- */

const char *mp_route_action_name(mp_route_action a) {
    switch (a) {
    case MP_ROUTE_LOCAL:
        return "local";
    case MP_ROUTE_NODES:
        return "nodes";
    case MP_ROUTE_LOCAL_AND_NODES:
        return "local_and_nodes";
    case MP_ROUTE_FORWARD_CLUSTER:
        return "forward_cluster";
    case MP_ROUTE_FAIL:
        return "fail";
    }
    return "unknown";
}

const char *mp_route_reason_name(mp_route_reason r) {
    switch (r) {
    case MP_RR_FUNCTION_LOCAL:
        return "function_local";
    case MP_RR_FUNCTION_REMOTE:
        return "function_remote";
    case MP_RR_NO_SUCH_FUNCTION:
        return "no_such_function";
    case MP_RR_NO_FUNCTION_ID:
        return "no_function_id";
    case MP_RR_NO_VERSION:
        return "no_version";
    case MP_RR_NO_RESOURCES:
        return "no_resources";
    case MP_RR_BAD_CONSTRAINT:
        return "bad_constraint";
    case MP_RR_SUBSCRIBERS:
        return "subscribers";
    case MP_RR_NO_SUBSCRIBERS:
        return "no_subscribers";
    case MP_RR_QUEUE_OWNER:
        return "queue_owner";
    case MP_RR_QUEUE_OWNER_UNHEALTHY:
        return "queue_owner_unhealthy";
    case MP_RR_NO_SUCH_QUEUE:
        return "no_such_queue";
    case MP_RR_CACHE_OWNERS:
        return "cache_owners";
    case MP_RR_NO_CACHE_NODES:
        return "no_cache_nodes";
    case MP_RR_TARGET_NODE:
        return "target_node";
    case MP_RR_UNKNOWN_NODE:
        return "unknown_node";
    case MP_RR_CLUSTER_NEXT_HOP:
        return "cluster_next_hop";
    case MP_RR_NO_CLUSTER_ROUTE:
        return "no_cluster_route";
    case MP_RR_HOP_BUDGET:
        return "hop_budget";
    case MP_RR_LOCAL_KIND:
        return "local_kind";
    case MP_RR_INVALID:
        return "invalid";
    case MP_RR_NOMEM:
        return "nomem";
    }
    return "unknown";
}

/* ---- lifecycle ----------------------------------------------------------- */

mp_engine *mp_engine_new(const mp_engine_config *cfg) {
    if (!cfg || !cfg->catalog) {
        return NULL;
    }
    mp_engine *e = calloc(1, sizeof *e);
    if (!e) {
        return NULL;
    }
    e->catalog = cfg->catalog;
    e->rng = cfg->rng;
    e->planner = cfg->planner;
    mp_buf_init(&e->hash_input);
    return e;
}

void mp_engine_free(mp_engine *e) {
    if (!e) {
        return;
    }
    free(e->nodes);
    free(e->cands);
    free(e->targets);
    free(e->groups);
    mp_buf_free(&e->hash_input);
    free(e);
}

void mp_engine_set_planner(mp_engine *e, mp_cluster_planner *planner) {
    e->planner = planner;
}

/* ---- decision helpers ---------------------------------------------------- */

static bool mp_given(const char *s) {
    return s && s[0];
}

static bool mp_is_local_node(const mp_engine *e, const char *node) {
    const char *local = mp_catalog_local_node(e->catalog);
    return local && strcmp(node, local) == 0;
}

static bool mp_is_local_cluster(const mp_engine *e, const char *cluster) {
    const char *local = mp_catalog_local_cluster(e->catalog);
    return !mp_given(cluster) || (local && strcmp(cluster, local) == 0);
}

static mp_route_decision mp_decide(mp_engine *e, mp_route_action action, mp_route_reason reason,
                                   const char *why) {
    return (mp_route_decision){
        .action = action,
        .reason = reason,
        .error = MPREG_OK,
        .why = why,
        .node_count = e->node_count,
        .nodes = e->nodes,
    };
}

static mp_route_decision mp_fail(mp_engine *e, mp_route_reason reason, mpreg_err err,
                                 const char *why) {
    e->node_count = 0;
    mp_route_decision d = mp_decide(e, MP_ROUTE_FAIL, reason, why);
    d.error = err;
    return d;
}

/* Grows an array of `size`-byte items to hold at least n. */
static mpreg_err mp_reserve(void **items, uint32_t *cap, uint32_t n, size_t size) {
    if (n <= *cap) {
        return MPREG_OK;
    }
    uint32_t ncap = *cap ? *cap : 8;
    while (ncap < n) {
        if (ncap > UINT32_MAX / 2) {
            return MPREG_E_NOMEM;
        }
        ncap *= 2;
    }
    void *p = realloc(*items, (size_t)ncap * size);
    if (!p) {
        return MPREG_E_NOMEM;
    }
    *items = p;
    *cap = ncap;
    return MPREG_OK;
}

static mpreg_err mp_push_node(mp_engine *e, const char *node) {
    void *items = e->nodes;
    mpreg_err err = mp_reserve(&items, &e->node_cap, e->node_count + 1, sizeof *e->nodes);
    e->nodes = items;
    if (!err) {
        e->nodes[e->node_count++] = node;
    }
    return err;
}

/* Copies an envelope string into a NUL-terminated buffer of cap bytes. */
static bool mp_copy_str(mp_str s, char *buf, size_t cap) {
    if (s.len >= cap) {
        return false;
    }
    if (s.len) {
        memcpy(buf, s.ptr, s.len);
    }
    buf[s.len] = '\0';
    return true;
}

/* ---- inter-cluster ------------------------------------------------------- */

static mp_route_decision mp_no_cluster_route(mp_engine *e, mpreg_err err, const char *cluster) {
    snprintf(e->why, sizeof e->why, "no route to cluster %s", cluster);
    return mp_fail(e, MP_RR_NO_CLUSTER_ROUTE, err, e->why);
}

/* Asks the planner for the next hop; final_node (may be NULL) is the node the
 * message is ultimately for, reported as nodes[0]. */
static mp_route_decision mp_forward_cluster(mp_engine *e, const char *cluster,
                                            const mp_envelope *env, const char *final_node) {
    e->node_count = 0;
    if (!e->planner || !e->planner->next_hop) {
        return mp_no_cluster_route(e, MPREG_E_ROUTE, cluster);
    }
    mp_cluster_hop hop = {0};
    mpreg_err err = e->planner->next_hop(e->planner, cluster, env, &hop);
    if (err) {
        return mp_no_cluster_route(e, err, cluster);
    }
    if (!mp_given(hop.next_cluster) || !mp_given(hop.gateway_node)) {
        return mp_fail(e, MP_RR_NO_CLUSTER_ROUTE, MPREG_E_INTERNAL,
                       "the cluster planner returned an incomplete hop");
    }
    if (final_node && mp_push_node(e, final_node)) {
        return mp_fail(e, MP_RR_NOMEM, MPREG_E_NOMEM, "out of memory");
    }
    snprintf(e->why, sizeof e->why, "toward cluster %s via cluster %s, gateway %s", cluster,
             hop.next_cluster, hop.gateway_node);
    mp_route_decision d = mp_decide(e, MP_ROUTE_FORWARD_CLUSTER, MP_RR_CLUSTER_NEXT_HOP, e->why);
    d.next_hop_node = hop.gateway_node;
    d.via_cluster = hop.next_cluster;
    return d;
}

/* One destination node of known cluster: LOCAL, NODES [node], or through the
 * planner when the node is in another cluster. */
static mp_route_decision mp_to_node(mp_engine *e, const char *node, const char *cluster,
                                    const mp_envelope *env, mp_route_reason reason,
                                    const char *why) {
    e->node_count = 0;
    if (mp_is_local_node(e, node)) {
        return mp_decide(e, MP_ROUTE_LOCAL, reason, why);
    }
    if (!mp_is_local_cluster(e, cluster)) {
        return mp_forward_cluster(e, cluster, env, node);
    }
    if (mp_push_node(e, node)) {
        return mp_fail(e, MP_RR_NOMEM, MPREG_E_NOMEM, "out of memory");
    }
    return mp_decide(e, MP_ROUTE_NODES, reason, why);
}

/* ---- functions ----------------------------------------------------------- */

static mp_route_reason mp_reason_from_select(mp_select_reason r) {
    switch (r) {
    case MP_SELECT_LOCAL:
        return MP_RR_FUNCTION_LOCAL;
    case MP_SELECT_REMOTE:
        return MP_RR_FUNCTION_REMOTE;
    case MP_SELECT_NO_SUCH_FUNCTION:
        return MP_RR_NO_SUCH_FUNCTION;
    case MP_SELECT_NO_FUNCTION_ID:
        return MP_RR_NO_FUNCTION_ID;
    case MP_SELECT_NO_VERSION:
        return MP_RR_NO_VERSION;
    case MP_SELECT_NO_RESOURCES:
        return MP_RR_NO_RESOURCES;
    case MP_SELECT_BAD_CONSTRAINT:
        return MP_RR_BAD_CONSTRAINT;
    case MP_SELECT_INVALID:
        break;
    }
    return MP_RR_INVALID;
}

mp_route_decision mp_engine_route_function(mp_engine *e, const mp_function_query *q,
                                           const char *target_cluster) {
    e->node_count = 0;
    if (!mp_is_local_cluster(e, target_cluster)) {
        return mp_forward_cluster(e, target_cluster, NULL, NULL);
    }
    mp_selection s = mp_select_function(e->catalog, q, e->rng);
    if (s.error) {
        return mp_fail(e, mp_reason_from_select(s.reason), s.error, s.why);
    }
    mp_route_decision d = mp_to_node(e, s.endpoint->key.node, s.endpoint->cluster, NULL,
                                     mp_reason_from_select(s.reason), s.why);
    d.endpoint = d.action == MP_ROUTE_FAIL ? NULL : s.endpoint;
    return d;
}

/* ---- publish ------------------------------------------------------------- */

typedef struct mp_publish_walk {
    mp_engine *e;
    bool local;
    mpreg_err err;
} mp_publish_walk;

static void mp_publish_visit(void *ud, const char *node) {
    mp_publish_walk *w = ud;
    if (mp_is_local_node(w->e, node)) {
        w->local = true;
    } else if (!w->err) {
        w->err = mp_push_node(w->e, node);
    }
}

static int mp_node_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

mp_route_decision mp_engine_route_publish(mp_engine *e, const char *topic, size_t len) {
    e->node_count = 0;
    const char *why = NULL;
    if (!topic || mp_topic_validate(topic, len, &why)) {
        return mp_fail(e, MP_RR_INVALID, MPREG_E_TOPIC, why ? why : "no topic");
    }
    mp_publish_walk w = {.e = e};
    mp_catalog_match_topic(e->catalog, topic, len, mp_publish_visit, &w);
    if (w.err) {
        return mp_fail(e, MP_RR_NOMEM, w.err, "out of memory");
    }
    /* Sorted, so the send order is a function of the catalog's contents. */
    if (e->node_count > 1) {
        qsort(e->nodes, e->node_count, sizeof *e->nodes, mp_node_cmp);
    }
    if (w.local) {
        return mp_decide(e, e->node_count ? MP_ROUTE_LOCAL_AND_NODES : MP_ROUTE_LOCAL,
                         MP_RR_SUBSCRIBERS,
                         e->node_count ? "subscribers here and on other nodes"
                                       : "subscribers on this node only");
    }
    if (!e->node_count) {
        return mp_decide(e, MP_ROUTE_NODES, MP_RR_NO_SUBSCRIBERS,
                         "no node has a matching subscription; dropped");
    }
    return mp_decide(e, MP_ROUTE_NODES, MP_RR_SUBSCRIBERS, "subscribers on other nodes");
}

/* ---- publish with queue groups --------------------------------------------- */

/* A node with members of a group matching the topic. */
typedef struct mp_group_cand {
    const char *node; /* borrowed from the catalog */
    mp_str group;     /* borrowed from the catalog */
    uint64_t weight;  /* the rendezvous weight for this message */
    bool chosen;
} mp_group_cand;

typedef struct mp_group_walk {
    mp_engine *e;
    mpreg_err err;
} mp_group_walk;

static void mp_group_visit(void *ud, const char *node, const char *group) {
    mp_group_walk *w = ud;
    mp_engine *e = w->e;
    if (w->err) {
        return;
    }
    void *items = e->cands;
    w->err = mp_reserve(&items, &e->cand_cap, e->cand_count + 1, sizeof *e->cands);
    e->cands = items;
    if (!w->err) {
        e->cands[e->cand_count++] = (mp_group_cand){.node = node, .group = mp_str_c(group)};
    }
}

static int mp_bytes_cmp(mp_str a, mp_str b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    return c ? c : (a.len > b.len) - (a.len < b.len);
}

/* By group, then best first (heavier, then smaller node id). */
static int mp_cand_rank_cmp(const void *pa, const void *pb) {
    const mp_group_cand *a = pa, *b = pb;
    int c = mp_bytes_cmp(a->group, b->group);
    if (c) {
        return c;
    }
    if (a->weight != b->weight) {
        return a->weight > b->weight ? -1 : 1;
    }
    return strcmp(a->node, b->node);
}

/* By node, then group: the order of the plan's targets and their groups. */
static int mp_cand_target_cmp(const void *pa, const void *pb) {
    const mp_group_cand *a = pa, *b = pb;
    int c = strcmp(a->node, b->node);
    return c ? c : mp_bytes_cmp(a->group, b->group);
}

static mpreg_err mp_cand_weigh(mp_engine *e, const mp_id *id) {
    mp_buf *in = &e->hash_input;
    static const char sep = '\0';
    for (uint32_t i = 0; i < e->cand_count; i++) {
        mp_group_cand *c = &e->cands[i];
        mp_buf_clear(in);
        mpreg_err err = mp_buf_append(in, id->bytes, MP_ID_LEN);
        err = err ? err : mp_buf_append(in, c->group.ptr, c->group.len);
        err = err ? err : mp_buf_append(in, &sep, 1);
        err = err ? err : mp_buf_append(in, c->node, strlen(c->node));
        if (err) {
            return err;
        }
        c->weight = mp_hash_bytes(in->data, in->len);
    }
    return MPREG_OK;
}

/* What the groups already given to node cost (budgeted placement only). */
static size_t mp_node_load(const mp_engine *e, const char *node, size_t per_group) {
    size_t load = 0;
    for (uint32_t i = 0; i < e->cand_count; i++) {
        const mp_group_cand *c = &e->cands[i];
        if (c->chosen && strcmp(c->node, node) == 0) {
            load += c->group.len + per_group;
        }
    }
    return load;
}

/* Marks each group's node among the ranked candidates; returns how many
 * groups found no node with room. When every group together fits the
 * budget no node can overflow, and each group simply takes its best node:
 * the load is only summed (quadratically, but then the groups are many
 * and long) when it could matter. */
static uint32_t mp_cand_choose(mp_engine *e, mp_group_budget b) {
    size_t total = 0;
    for (uint32_t i = 0; i < e->cand_count; i++) {
        if (i == 0 || !mp_str_eq(e->cands[i].group, e->cands[i - 1].group)) {
            total += e->cands[i].group.len + b.per_group;
        }
    }
    bool limited = b.bytes && total > b.bytes;
    uint32_t unplaced = 0;
    for (uint32_t i = 0, j; i < e->cand_count; i = j) {
        for (j = i + 1; j < e->cand_count && mp_str_eq(e->cands[j].group, e->cands[i].group); j++) {
        }
        size_t cost = e->cands[i].group.len + b.per_group;
        uint32_t k = i;
        while (limited && k < j &&
               mp_node_load(e, e->cands[k].node, b.per_group) + cost > b.bytes) {
            k++;
        }
        if (k == j) {
            unplaced++;
        } else {
            e->cands[k].chosen = true;
        }
    }
    return unplaced;
}

/* Builds the targets from the sorted plain nodes (e->nodes) and the chosen
 * candidates (cands[0..chosen), sorted by node and group): one target per
 * node, merged. */
static mpreg_err mp_plan_targets(mp_engine *e, uint32_t chosen, bool local_plain,
                                 mp_publish_plan *out) {
    void *items = e->targets;
    mpreg_err err = mp_reserve(&items, &e->target_cap, e->node_count + chosen, sizeof *e->targets);
    e->targets = items;
    items = e->groups;
    err = err ? err : mp_reserve(&items, &e->group_cap, chosen, sizeof *e->groups);
    e->groups = items;
    if (err) {
        return err;
    }
    for (uint32_t k = 0; k < chosen; k++) {
        e->groups[k] = e->cands[k].group;
    }
    out->local = (mp_publish_target){
        .node = mp_catalog_local_node(e->catalog), .plain = local_plain, .groups = e->groups};
    uint32_t n = 0, p = 0, k = 0;
    while (p < e->node_count || k < chosen) {
        bool plain_next =
            k == chosen || (p < e->node_count && strcmp(e->nodes[p], e->cands[k].node) <= 0);
        const char *node = plain_next ? e->nodes[p] : e->cands[k].node;
        mp_publish_target t = {.node = node, .groups = &e->groups[k]};
        if (p < e->node_count && strcmp(e->nodes[p], node) == 0) {
            t.plain = true;
            p++;
        }
        while (k < chosen && strcmp(e->cands[k].node, node) == 0) {
            t.group_count++;
            k++;
        }
        if (mp_is_local_node(e, node)) {
            out->local.groups = t.groups;
            out->local.group_count = t.group_count;
        } else {
            e->targets[n++] = t;
        }
    }
    out->targets = e->targets;
    out->target_count = n;
    return MPREG_OK;
}

mpreg_err mp_engine_plan_publish(mp_engine *e, const char *topic, size_t len, const mp_id *id,
                                 mp_group_budget budget, mp_publish_plan *out, const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    *out = (mp_publish_plan){.local.node = mp_catalog_local_node(e->catalog)};
    if (!id) {
        *why = "no message id";
        return MPREG_E_INVALID;
    }
    mp_route_decision d = mp_engine_route_publish(e, topic, len);
    if (d.action == MP_ROUTE_FAIL) {
        *why = d.why;
        return d.error;
    }
    bool local_plain = d.action == MP_ROUTE_LOCAL || d.action == MP_ROUTE_LOCAL_AND_NODES;
    e->cand_count = 0;
    mp_group_walk w = {.e = e};
    mp_catalog_match_topic_groups(e->catalog, topic, len, mp_group_visit, &w);
    mpreg_err err = w.err ? w.err : mp_cand_weigh(e, id);
    uint32_t chosen = 0;
    if (!err && e->cand_count) {
        qsort(e->cands, e->cand_count, sizeof *e->cands, mp_cand_rank_cmp);
        out->unplaced = mp_cand_choose(e, budget);
        for (uint32_t i = 0; i < e->cand_count; i++) {
            if (e->cands[i].chosen) {
                e->cands[chosen++] = e->cands[i];
            }
        }
        qsort(e->cands, chosen, sizeof *e->cands, mp_cand_target_cmp);
    }
    err = err ? err : mp_plan_targets(e, chosen, local_plain, out);
    if (err) {
        *out = (mp_publish_plan){.local.node = mp_catalog_local_node(e->catalog)};
        *why = "out of memory";
        return err;
    }
    *why = NULL;
    return MPREG_OK;
}

/* ---- queues -------------------------------------------------------------- */

typedef struct mp_queue_walk {
    const mp_queue_endpoint *best;
} mp_queue_walk;

/* Healthy first, then the smallest node id: every node picks the same owner. */
static bool mp_queue_better(const mp_queue_endpoint *a, const mp_queue_endpoint *b) {
    if (a->healthy != b->healthy) {
        return a->healthy;
    }
    return strcmp(a->key.node, b->key.node) < 0;
}

static bool mp_queue_visit(void *ud, const mp_entry *entry) {
    mp_queue_walk *w = ud;
    if (entry->kind != MP_ENTRY_QUEUE || entry->withdrawn) {
        return true;
    }
    const mp_queue_endpoint *q = &entry->u.queue;
    if (!w->best || mp_queue_better(q, w->best)) {
        w->best = q;
    }
    return true;
}

/* env (may be NULL) is passed on to the planner when the owner is remote. */
static mp_route_decision mp_route_queue(mp_engine *e, const char *queue, const mp_envelope *env) {
    e->node_count = 0;
    if (!mp_given(queue)) {
        return mp_fail(e, MP_RR_INVALID, MPREG_E_INVALID, "no queue name");
    }
    mp_queue_walk w = {0};
    mp_catalog_each_queue(e->catalog, queue, mp_queue_visit, &w);
    if (!w.best) {
        return mp_fail(e, MP_RR_NO_SUCH_QUEUE, MPREG_E_NO_SUCH_QUEUE,
                       "no node owns a queue of that name");
    }
    if (w.best->healthy) {
        return mp_to_node(e, w.best->key.node, w.best->cluster, env, MP_RR_QUEUE_OWNER,
                          "the queue's owner");
    }
    return mp_to_node(e, w.best->key.node, w.best->cluster, env, MP_RR_QUEUE_OWNER_UNHEALTHY,
                      "the queue's owner, which reports itself unhealthy");
}

mp_route_decision mp_engine_route_queue(mp_engine *e, const char *queue) {
    return mp_route_queue(e, queue, NULL);
}

/* ---- geometry ------------------------------------------------------------ */

#define MP_PI 3.14159265358979323846

static double mp_clamp(double v, double lo, double hi) {
    if (!(v >= lo)) { /* also NaN */
        return lo;
    }
    return v > hi ? hi : v;
}

double mp_geo_distance_km(double lat1, double lon1, double lat2, double lon2) {
    if (!isfinite(lat1) || !isfinite(lon1) || !isfinite(lat2) || !isfinite(lon2)) {
        return 0;
    }
    /* Latitudes beyond the poles are clamped; longitudes wrap by themselves
     * through sin. */
    lat1 = mp_clamp(lat1, -90, 90);
    lat2 = mp_clamp(lat2, -90, 90);
    double rad = MP_PI / 180;
    double s_dlat = sin((lat2 - lat1) * rad / 2);
    double s_dlon = sin((lon2 - lon1) * rad / 2);
    /* The haversine formula; h is clamped because rounding can push it past 1. */
    double h =
        mp_clamp(s_dlat * s_dlat + cos(lat1 * rad) * cos(lat2 * rad) * s_dlon * s_dlon, 0, 1);
    return 2 * MP_EARTH_RADIUS_KM * atan2(sqrt(h), sqrt(1 - h));
}

/* ---- cache placement ----------------------------------------------------- */

double mp_cache_read_score(const mp_cache_profile *p, double extra_latency_ms) {
    double reliability = mp_clamp(p->reliability, 0, 1);
    double utilization = mp_clamp(p->utilization, 0, 1);
    double latency = mp_clamp(p->latency_ms, 0, 1e12) + mp_clamp(extra_latency_ms, 0, 1e12);
    return reliability * (1 - MP_CACHE_UTILIZATION_WEIGHT * utilization) /
           (1 + latency / MP_CACHE_LATENCY_SCALE_MS);
}

typedef struct mp_owner_walk {
    mp_engine *e;
    const char *cluster;
    size_t key_len;
    uint32_t want;
    uint32_t count;
    mp_cache_owner *out;
    mpreg_err err;
} mp_owner_walk;

static bool mp_weight_before(const mp_cache_owner *a, const mp_cache_owner *b) {
    if (a->weight != b->weight) {
        return a->weight > b->weight;
    }
    return strcmp(a->node, b->node) < 0;
}

/* Keeps out[0..count) the `want` highest weights, in descending order. */
static void mp_owner_insert(mp_owner_walk *w, mp_cache_owner cand) {
    uint32_t i = w->count < w->want ? w->count++ : w->want;
    if (i == w->want && !mp_weight_before(&cand, &w->out[w->want - 1])) {
        return;
    }
    if (i == w->want) {
        i = w->want - 1;
    }
    while (i > 0 && mp_weight_before(&cand, &w->out[i - 1])) {
        w->out[i] = w->out[i - 1];
        i--;
    }
    w->out[i] = cand;
}

static bool mp_owner_visit(void *ud, const mp_entry *entry) {
    mp_owner_walk *w = ud;
    if (entry->kind != MP_ENTRY_CACHE || entry->withdrawn) {
        return true;
    }
    const mp_cache_profile *p = &entry->u.cache;
    if (!w->cluster || strcmp(p->cluster, w->cluster) != 0) {
        return true;
    }
    mp_buf *in = &w->e->hash_input;
    in->len = w->key_len + 1;
    w->err = mp_buf_append(in, p->key.node, strlen(p->key.node));
    if (w->err) {
        return false;
    }
    mp_owner_insert(w, (mp_cache_owner){
                           .node = p->key.node,
                           .weight = mp_hash_bytes(in->data, in->len),
                           .read_score = mp_cache_read_score(p, 0),
                       });
    return true;
}

static int mp_read_order_cmp(const void *pa, const void *pb) {
    const mp_cache_owner *a = pa;
    const mp_cache_owner *b = pb;
    if (a->read_score != b->read_score) {
        return a->read_score > b->read_score ? -1 : 1;
    }
    return mp_weight_before(a, b) ? -1 : mp_weight_before(b, a);
}

mpreg_err mp_engine_cache_owners(mp_engine *e, const char *key, size_t key_len, uint32_t replicas,
                                 mp_cache_owner *out, uint32_t *count) {
    *count = 0;
    if (!key && key_len) {
        return MPREG_E_INVALID;
    }
    replicas = replicas < 1 ? 1 : replicas;
    replicas = replicas > MP_ROUTE_MAX_REPLICAS ? MP_ROUTE_MAX_REPLICAS : replicas;
    mp_buf *in = &e->hash_input;
    mp_buf_clear(in);
    static const char sep = '\0';
    mpreg_err err = key_len ? mp_buf_append(in, key, key_len) : MPREG_OK;
    if (!err) {
        err = mp_buf_append(in, &sep, 1);
    }
    if (err) {
        return err;
    }
    mp_owner_walk w = {
        .e = e,
        .cluster = mp_catalog_local_cluster(e->catalog),
        .key_len = key_len,
        .want = replicas,
        .out = out,
    };
    mp_catalog_each(e->catalog, MP_ENTRY_CACHE, mp_owner_visit, &w);
    if (w.err) {
        return w.err;
    }
    qsort(out, w.count, sizeof *out, mp_read_order_cmp);
    *count = w.count;
    return MPREG_OK;
}

mp_route_decision mp_engine_route_cache(mp_engine *e, const char *key, size_t key_len,
                                        uint32_t replicas) {
    e->node_count = 0;
    mp_cache_owner owners[MP_ROUTE_MAX_REPLICAS];
    uint32_t count = 0;
    mpreg_err err = mp_engine_cache_owners(e, key, key_len, replicas, owners, &count);
    if (err) {
        return mp_fail(e, err == MPREG_E_NOMEM ? MP_RR_NOMEM : MP_RR_INVALID, err,
                       "cannot compute the key's owners");
    }
    if (!count) {
        return mp_fail(e, MP_RR_NO_CACHE_NODES, MPREG_E_ROUTE, "no cache node in this cluster");
    }
    bool local = false;
    for (uint32_t i = 0; i < count; i++) {
        if (mp_is_local_node(e, owners[i].node)) {
            local = true;
        } else if (mp_push_node(e, owners[i].node)) {
            return mp_fail(e, MP_RR_NOMEM, MPREG_E_NOMEM, "out of memory");
        }
    }
    if (!local) {
        return mp_decide(e, MP_ROUTE_NODES, MP_RR_CACHE_OWNERS, "the key's owners");
    }
    return mp_decide(e, e->node_count ? MP_ROUTE_LOCAL_AND_NODES : MP_ROUTE_LOCAL,
                     MP_RR_CACHE_OWNERS, "the key's owners, this node among them");
}

typedef struct mp_remote_walk {
    const char *cluster; /* the local one, excluded */
    double latitude;
    double longitude;
    size_t total;
    size_t count;
    size_t cap;
    mp_remote_cache *out;
} mp_remote_walk;

static bool mp_remote_before(const mp_remote_cache *a, const mp_remote_cache *b) {
    if (a->score != b->score) {
        return a->score > b->score;
    }
    return strcmp(a->node, b->node) < 0;
}

static void mp_remote_insert(mp_remote_walk *w, mp_remote_cache cand) {
    size_t i = w->count < w->cap ? w->count++ : w->cap;
    if (i == w->cap && !mp_remote_before(&cand, &w->out[w->cap - 1])) {
        return;
    }
    if (i == w->cap) {
        i = w->cap - 1;
    }
    while (i > 0 && mp_remote_before(&cand, &w->out[i - 1])) {
        w->out[i] = w->out[i - 1];
        i--;
    }
    w->out[i] = cand;
}

static bool mp_remote_visit(void *ud, const mp_entry *entry) {
    mp_remote_walk *w = ud;
    if (entry->kind != MP_ENTRY_CACHE || entry->withdrawn) {
        return true;
    }
    const mp_cache_profile *p = &entry->u.cache;
    if (w->cluster && strcmp(p->cluster, w->cluster) == 0) {
        return true;
    }
    w->total++;
    if (!w->cap) {
        return true;
    }
    double km = mp_geo_distance_km(w->latitude, w->longitude, p->latitude, p->longitude);
    mp_remote_insert(w, (mp_remote_cache){
                            .node = p->key.node,
                            .cluster = p->cluster,
                            .distance_km = km,
                            .score = mp_cache_read_score(p, km / MP_CACHE_KM_PER_MS),
                        });
    return true;
}

size_t mp_engine_rank_remote_cache(mp_engine *e, double latitude, double longitude,
                                   mp_remote_cache *out, size_t cap) {
    mp_remote_walk w = {
        .cluster = mp_catalog_local_cluster(e->catalog),
        .latitude = latitude,
        .longitude = longitude,
        .cap = out ? cap : 0,
        .out = out,
    };
    mp_catalog_each(e->catalog, MP_ENTRY_CACHE, mp_remote_visit, &w);
    return w.total;
}

/* ---- envelopes ----------------------------------------------------------- */

/* Decimal, 1..999999999; anything else is refused. */
static bool mp_parse_replicas(mp_str s, uint32_t *out) {
    if (s.len == 0 || s.len > 9) {
        return false;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9') {
            return false;
        }
        v = v * 10 + (uint32_t)(s.ptr[i] - '0');
    }
    *out = v > MP_ROUTE_MAX_REPLICAS ? MP_ROUTE_MAX_REPLICAS : v;
    return v >= 1;
}

static mp_route_decision mp_route_target_node(mp_engine *e, const mp_envelope *env) {
    if (!mp_copy_str(env->target_node, e->node_buf, sizeof e->node_buf)) {
        return mp_fail(e, MP_RR_INVALID, MPREG_E_INVALID, "target_node too long");
    }
    if (mp_is_local_node(e, e->node_buf)) {
        return mp_decide(e, MP_ROUTE_LOCAL, MP_RR_TARGET_NODE, "addressed to this node");
    }
    const mp_node_descriptor *n = mp_catalog_node(e->catalog, e->node_buf);
    if (!n) {
        snprintf(e->why, sizeof e->why, "target node %s is not in the catalog", e->node_buf);
        return mp_fail(e, MP_RR_UNKNOWN_NODE, MPREG_E_UNREACHABLE, e->why);
    }
    return mp_to_node(e, n->key.node, n->cluster, env, MP_RR_TARGET_NODE, "addressed to that node");
}

static mp_route_decision mp_route_by_kind(mp_engine *e, const mp_envelope *env) {
    switch (env->kind) {
    case MP_KIND_PUBLISH:
        return mp_engine_route_publish(e, env->topic.ptr ? env->topic.ptr : "", env->topic.len);
    case MP_KIND_QUEUE_OP:
        if (!mp_copy_str(env->topic, e->topic_buf, sizeof e->topic_buf)) {
            return mp_fail(e, MP_RR_INVALID, MPREG_E_INVALID, "queue name too long");
        }
        return mp_route_queue(e, e->topic_buf, env);
    case MP_KIND_CACHE_OP: {
        uint32_t replicas = 1;
        mp_str h = mp_envelope_header(env, "replicas");
        if (h.ptr && !mp_parse_replicas(h, &replicas)) {
            return mp_fail(e, MP_RR_INVALID, MPREG_E_INVALID,
                           "header replicas must be a decimal number >= 1");
        }
        return mp_engine_route_cache(e, env->topic.ptr, env->topic.len, replicas);
    }
    default:
        return mp_decide(e, MP_ROUTE_LOCAL, MP_RR_LOCAL_KIND, "handled by this node");
    }
}

mp_route_decision mp_engine_route_envelope(mp_engine *e, const mp_envelope *env) {
    e->node_count = 0;
    if (!env) {
        return mp_fail(e, MP_RR_INVALID, MPREG_E_INVALID, "no envelope");
    }
    if (env->hop_budget == 0) {
        return mp_fail(e, MP_RR_HOP_BUDGET, MPREG_E_HOP_BUDGET, "hop budget exhausted");
    }
    if (!mp_str_empty(env->target_cluster) &&
        !mp_str_eq_c(env->target_cluster, mp_catalog_local_cluster(e->catalog))) {
        if (!mp_copy_str(env->target_cluster, e->cluster_buf, sizeof e->cluster_buf)) {
            return mp_fail(e, MP_RR_INVALID, MPREG_E_INVALID, "target_cluster too long");
        }
        return mp_forward_cluster(e, e->cluster_buf, env, NULL);
    }
    if (!mp_str_empty(env->target_node)) {
        return mp_route_target_node(e, env);
    }
    return mp_route_by_kind(e, env);
}
