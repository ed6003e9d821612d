/* engine.h - the routing engine: where does a message go?
 *
 * Given an envelope (or a service's query) and the catalog, the engine
 * decides: deliver locally, send to one or more nodes of this cluster,
 * forward toward another cluster, or fail with a reason. It is sans-I/O and
 * sends nothing itself: the node turns a decision into deliveries and
 * envelopes in its outbox. It never changes the envelope either: the node
 * decrements the hop budget and extends the paths when it forwards.
 *
 * Every decision carries an action, a reason code (mp_route_reason_name()
 * gives a stable snake_case name), an mpreg_err (MPREG_OK unless the action
 * is FAIL) and a human `why`.
 *
 * Lifetimes: node ids in a decision are borrowed from the catalog (valid
 * until it next changes); the `nodes` array and a formatted `why` live in
 * the engine and are valid until the next mp_engine_* call on the same
 * engine. Copy what you keep. next_hop_node and via_cluster are borrowed
 * from the planner (see mp_cluster_hop).
 *
 * Inter-cluster routing is delegated to an mp_cluster_planner (federation
 * implements it). Without one, anything bound for another cluster fails with
 * MPREG_E_ROUTE "no route to cluster X". A selected function endpoint, queue
 * owner or target node whose catalog entry names another cluster is reached
 * the same way (FORWARD_CLUSTER, with that node as nodes[0], the final
 * target): inside a cluster data goes straight to the node, between clusters
 * only over bridges. */
#ifndef MP_ENGINE_H
#define MP_ENGINE_H

#include "core/envelope.h"
#include "core/rng.h"
#include "fabric/catalog.h"
#include "fabric/entry.h"
#include "fabric/selector.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_ROUTE_MAX_REPLICAS 16 /* cache owners per key, at most */

/* --- the inter-cluster planner interface -------------------------------- */

/* One step toward a target cluster. Both strings are borrowed from the
 * planner and must stay valid until its state next changes. */
typedef struct mp_cluster_hop {
    const char *next_cluster; /* the neighbouring cluster the message crosses into */
    const char *gateway_node; /* the node to hand the message to: a local bridge node,
                                 or the neighbour's gateway; may be this node */
} mp_cluster_hop;

typedef struct mp_cluster_planner mp_cluster_planner;
struct mp_cluster_planner {
    /* Fills *out with the next hop toward target_cluster, or returns an error
     * (MPREG_E_ROUTE: no route; MPREG_E_POLICY: refused; ...), which becomes
     * the decision's error. env is the message when routing an envelope and
     * NULL for a bare query (mp_engine_route_function). */
    mpreg_err (*next_hop)(mp_cluster_planner *self, const char *target_cluster,
                          const mp_envelope *env, mp_cluster_hop *out);
};

/* --- decisions ---------------------------------------------------------- */

typedef enum mp_route_action {
    MP_ROUTE_LOCAL = 1,       /* deliver to this node's service */
    MP_ROUTE_NODES,           /* send to nodes[0..node_count) (maybe none: see publish) */
    MP_ROUTE_LOCAL_AND_NODES, /* both; this node is never also in nodes */
    MP_ROUTE_FORWARD_CLUSTER, /* send to next_hop_node, crossing into via_cluster */
    MP_ROUTE_FAIL,            /* error and why say what went wrong */
} mp_route_action;

typedef enum mp_route_reason {
    MP_RR_FUNCTION_LOCAL = 1, /* the selected endpoint is on this node */
    MP_RR_FUNCTION_REMOTE,    /* ... on another node of this cluster */
    MP_RR_NO_SUCH_FUNCTION,   /* the selector's failures, one for one */
    MP_RR_NO_FUNCTION_ID,
    MP_RR_NO_VERSION,
    MP_RR_NO_RESOURCES,
    MP_RR_BAD_CONSTRAINT,
    MP_RR_SUBSCRIBERS,           /* publish: nodes with matching interest */
    MP_RR_NO_SUBSCRIBERS,        /* publish: nobody is interested (not an error) */
    MP_RR_QUEUE_OWNER,           /* the queue's (healthy) owner */
    MP_RR_QUEUE_OWNER_UNHEALTHY, /* no owner is healthy: sent to one anyway (see below) */
    MP_RR_NO_SUCH_QUEUE,
    MP_RR_CACHE_OWNERS,     /* the key's rendezvous owners */
    MP_RR_NO_CACHE_NODES,   /* no cache node in this cluster */
    MP_RR_TARGET_NODE,      /* the envelope named its target node */
    MP_RR_UNKNOWN_NODE,     /* ... which the catalog does not know */
    MP_RR_CLUSTER_NEXT_HOP, /* the planner gave the next hop to another cluster */
    MP_RR_NO_CLUSTER_ROUTE, /* no planner, or it found no route */
    MP_RR_HOP_BUDGET,       /* the hop budget is spent */
    MP_RR_LOCAL_KIND,       /* a kind the local node handles itself */
    MP_RR_INVALID,          /* bad arguments or envelope fields */
    MP_RR_NOMEM,
} mp_route_reason;

typedef struct mp_route_decision {
    mp_route_action action;
    mp_route_reason reason;
    mpreg_err error; /* MPREG_OK unless action is FAIL */
    const char *why; /* never NULL */
    uint32_t node_count;
    const char *const *nodes;  /* other nodes to send to (never this node) */
    const char *next_hop_node; /* FORWARD_CLUSTER only */
    const char *via_cluster;   /* FORWARD_CLUSTER only */
    /* Function routes: the selected endpoint (borrowed from the catalog), so
     * the caller can invoke exactly that function_id and version. */
    const mp_function_endpoint *endpoint;
} mp_route_decision;

const char *mp_route_action_name(mp_route_action a); /* "local", "nodes", ... */
const char *mp_route_reason_name(mp_route_reason r); /* "function_local", ... */

/* --- the engine --------------------------------------------------------- */

typedef struct mp_engine mp_engine;

typedef struct mp_engine_config {
    mp_catalog *catalog;         /* required; borrowed. The local node and cluster are
                                    the catalog's (mp_catalog_local_node/_cluster). */
    mp_rng *rng;                 /* borrowed; NULL = ties go to the canonical first */
    mp_cluster_planner *planner; /* borrowed; NULL = no inter-cluster routes */
} mp_engine_config;

/* NULL when cfg or cfg->catalog is NULL, or memory runs out. */
mp_engine *mp_engine_new(const mp_engine_config *cfg);
void mp_engine_free(mp_engine *e);
/* Federation attaches its planner once it exists (NULL detaches). */
void mp_engine_set_planner(mp_engine *e, mp_cluster_planner *planner);

/* An RPC command: target_cluster NULL, "" or the local cluster selects in
 * this cluster (selector.h); any other cluster goes to the planner. Result:
 * LOCAL (reason FUNCTION_LOCAL) or NODES with one node (FUNCTION_REMOTE),
 * endpoint set; or FAIL with the selector's error and reason. */
mp_route_decision mp_engine_route_function(mp_engine *e, const mp_function_query *q,
                                           const char *target_cluster);

/* A publish to ungrouped subscribers: every node with an ungrouped
 * interest pattern matching the topic (mp_catalog_match_topic), each once,
 * sorted by node id. This node, when interested, is the LOCAL part:
 * LOCAL (only here), LOCAL_AND_NODES, or NODES (only elsewhere).
 * Nobody interested is NOT an error: action NODES, node_count 0, reason
 * NO_SUBSCRIBERS, error MPREG_OK (pub/sub drops such messages silently).
 * An invalid topic fails with MPREG_E_TOPIC. Queue groups are placed by
 * mp_engine_plan_publish. */
mp_route_decision mp_engine_route_publish(mp_engine *e, const char *topic, size_t len);

/* --- a publish with queue groups (docs/PROTOCOL.md §9.8) ----------------
 *
 * A queue group spans the cluster: of the members of a group whose patterns
 * match a message, one cluster-wide receives it. The engine picks the node,
 * that node's pub/sub service the member among its own. For each group
 * with interest matching the topic anywhere (mp_catalog_match_topic_groups),
 * the node is the one with the highest rendezvous weight
 *
 *     mp_hash_bytes(id || group || 0x00 || node)
 *
 * (id: the message id's 16 bytes; neither name holds a NUL) among the nodes
 * with that group's interest. So every node that places the same message
 * picks the same node, and a group's messages spread evenly over its nodes,
 * message by message.
 *
 * Budget. The groups a node is given travel in one header of bounded size,
 * so each node may be given groups costing at most budget.bytes, a group
 * costing its name's length plus budget.per_group. A group that would take
 * its node past that goes to the next node of its ranking that has room;
 * when none has, it is left out of this message and counted in `unplaced`.
 * Groups are placed in bytewise order of their names. */
typedef struct mp_group_budget {
    size_t bytes; /* per node; 0 = no limit */
    size_t per_group;
} mp_group_budget;

/* One node's part of a publish. */
typedef struct mp_publish_target {
    const char *node;     /* borrowed from the catalog */
    bool plain;           /* its ungrouped subscribers get the message */
    uint32_t group_count; /* and one member of each of these groups */
    const mp_str *groups; /* names borrowed from the catalog, bytewise order */
} mp_publish_target;

typedef struct mp_publish_plan {
    /* This node's part (node = this node): plain when it has an ungrouped
     * interest matching the topic, and the groups placed here. */
    mp_publish_target local;
    /* Every other node with a part, sorted by node id; never this node. */
    uint32_t target_count;
    const mp_publish_target *targets;
    uint32_t unplaced; /* groups no node had room for (see Budget) */
} mp_publish_plan;

/* Plans the publish of message id to topic: the ungrouped part as
 * mp_engine_route_publish decides it, plus each matching group's node.
 * Nobody interested is an empty plan, not an error. Errors: MPREG_E_TOPIC
 * for an invalid topic, MPREG_E_INVALID without an id, MPREG_E_NOMEM; *why
 * (if non-NULL) then says what is wrong. The plan's arrays live in the
 * engine until its next call. */
mpreg_err mp_engine_plan_publish(mp_engine *e, const char *topic, size_t len, const mp_id *id,
                                 mp_group_budget budget, mp_publish_plan *out, const char **why);

/* A queue operation goes to the queue's owner. With several live endpoints
 * the choice is deterministic: the healthy one with the smallest node id.
 * When none is healthy, the smallest node id anyway (reason
 * QUEUE_OWNER_UNHEALTHY): only the owner can say what is wrong or recover.
 * No endpoint: FAIL with MPREG_E_NO_SUCH_QUEUE. */
mp_route_decision mp_engine_route_queue(mp_engine *e, const char *queue);

/* --- cache placement ----------------------------------------------------
 *
 * Owners (L3): rendezvous (highest-random-weight) hashing of the key over
 * the nodes of the local cluster with a live cache profile. Each node's
 * weight is mp_hash_bytes(key || 0x00 || node_id); the `replicas` nodes with
 * the highest weights own the key. So a key's owners depend only on the key
 * and the set of cache nodes, and when a node leaves, only the keys it owned
 * move (each to the node that ranked next for it).
 *
 * Reads then try the owners in order of read score, highest first (ties:
 * higher weight first):
 *
 *   read_score = reliability * (1 - 0.5 * utilization)
 *                / (1 + latency_ms / 10 ms)
 *
 * reliability and utilization clamped to [0, 1], latency to >= 0: a node
 * that always answers, idle and on a 0 ms link scores 1; 10 ms halves the
 * score; a fully utilized node loses half; an unreliable one scales down in
 * proportion. */
#define MP_CACHE_LATENCY_SCALE_MS 10.0
#define MP_CACHE_UTILIZATION_WEIGHT 0.5
/* L4: a remote replica's geographic distance is turned into the latency it
 * adds: light in fibre covers ~200 km per ms, so a round trip costs about
 * 1 ms per 100 km of great-circle (haversine) distance. */
#define MP_CACHE_KM_PER_MS 100.0
#define MP_EARTH_RADIUS_KM 6371.0088

typedef struct mp_cache_owner {
    const char *node; /* borrowed from the catalog */
    uint64_t weight;  /* the rendezvous weight */
    double read_score;
} mp_cache_owner;

/* Fills out[0..*count) with the key's owners in read order; replicas is
 * clamped to [1, MP_ROUTE_MAX_REPLICAS] and out must hold that many.
 * *count is 0 when the cluster has no cache node. */
mpreg_err mp_engine_cache_owners(mp_engine *e, const char *key, size_t key_len, uint32_t replicas,
                                 mp_cache_owner *out, uint32_t *count);

/* A cache operation: its owners (see above). When this node is an owner it
 * is the LOCAL part (reads should try it first: no network hop) and nodes
 * holds the other owners in read order. No cache node in the cluster: FAIL
 * with MPREG_E_ROUTE, reason NO_CACHE_NODES. */
mp_route_decision mp_engine_route_cache(mp_engine *e, const char *key, size_t key_len,
                                        uint32_t replicas);

typedef struct mp_remote_cache {
    const char *node;    /* borrowed from the catalog */
    const char *cluster; /* borrowed from the catalog */
    double distance_km;  /* haversine distance from the given point */
    double score;        /* read_score with latency_ms + distance_km / MP_CACHE_KM_PER_MS */
} mp_remote_cache;

/* L4: ranks the cache nodes of OTHER clusters for a reader at
 * (latitude, longitude) in degrees, best score first (ties: node id).
 * Writes the best min(total, cap) to out and returns the total number of
 * remote cache nodes. */
size_t mp_engine_rank_remote_cache(mp_engine *e, double latitude, double longitude,
                                   mp_remote_cache *out, size_t cap);

/* The read score above, with extra_latency_ms added to the profile's own. */
double mp_cache_read_score(const mp_cache_profile *p, double extra_latency_ms);
/* Great-circle distance between two points given in degrees (haversine). */
double mp_geo_distance_km(double lat1, double lon1, double lat2, double lon2);

/* --- envelopes ---------------------------------------------------------- */

/* Routes one envelope, checking in this order:
 *   1. hop_budget 0: FAIL MPREG_E_HOP_BUDGET (it may go nowhere, not even
 *      to a local service);
 *   2. target_cluster set and not the local cluster: the planner
 *      (FORWARD_CLUSTER, or FAIL MPREG_E_ROUTE);
 *   3. target_node set: LOCAL when it is this node, NODES with it when the
 *      catalog has its descriptor, else FAIL MPREG_E_UNREACHABLE;
 *   4. by kind: PUBLISH -> publish routing on topic; QUEUE_OP -> queue
 *      routing on topic (the queue name); CACHE_OP -> cache routing on topic
 *      (the key) with header "replicas" (decimal, >= 1; default 1; above
 *      MP_ROUTE_MAX_REPLICAS is clamped); every other kind -> LOCAL. */
mp_route_decision mp_engine_route_envelope(mp_engine *e, const mp_envelope *env);

#endif
