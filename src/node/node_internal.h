/* node_internal.h - what the files of the node share, and nobody else sees.
 *
 * The node is one state machine split by concern:
 *   node.c           lifecycle, configuration, logging, catalog advertising,
 *                    ticks and stop
 *   node_timer.c     the timer heap (handshakes, deadlines, sleep)
 *   node_conn.c      connections: handshake, dispatch by kind, sending, close
 *   node_rpc.c       RPC requests: plans, calls, deadlines, worker invokes
 *   node_functions.c the local function table: registered functions and
 *                    workers' REGISTER / UNREGISTER, advertised in the catalog
 *   node_pubsub.c    SUBSCRIBE / UNSUBSCRIBE / PUBLISH, deliveries, interest
 *   node_control.c   CONTROL: status and catalog
 *   registry.c       the plugin API (mpreg_register_function, mpreg_call_*)
 *   builtins.c       echo, echos, sleep, fail, whoami
 *
 * Ownership in one paragraph: the node owns its connections (by id, in a map
 * and in open order); a connection owns the RPC requests it sent, its
 * registered worker functions and its subscription ids; a request owns its
 * plan and the calls it has in flight; a call is also linked into the
 * connection that runs it (a worker) or, for an in-process function whose
 * request went away, into the node's orphan list until the function
 * finishes it. Nothing points at a connection after it is freed: its
 * requests are freed, the calls it ran are failed, its functions leave the
 * table and its subscriptions leave the pub/sub service first. */
#ifndef MP_NODE_INTERNAL_H
#define MP_NODE_INTERNAL_H

#include "core/check.h"
#include "core/envelope.h"
#include "core/heap.h"
#include "core/list.h"
#include "core/map.h"
#include "fabric/engine.h"
#include "node/node.h"
#include "services/rpc_plan.h"

#include <stdarg.h>
#include <stddef.h>

/* --- limits: every input is bounded ---------------------------------------- */
/* The configurable ones are in mp_node_limits (node.h, n->limits). */
#define MP_NODE_MAX_RETRIES 3u /* commands of one request retried on another node */
#define MP_NODE_DEFAULT_HANDSHAKE_MS 10000u
#define MP_NODE_DEFAULT_RPC_TIMEOUT_MS 30000u
#define MP_NODE_MAX_SLEEP_MS 3600000 /* the sleep built-in: one hour at most */
#define MP_NODE_MAX_HELLO_NAME 128u  /* the HELLO "name", bytes */
#define MP_NODE_MAX_TOKEN 1024u      /* the HELLO "token", bytes */
#define MP_NODE_SERVER "mpreg/0.1.0"
/* Repeated warnings about one peer (refused joins, unreachable seeds,
 * identity conflicts) are logged once per window, with a count of the
 * ones left out (mp_node_log_every); at most this many keys are tracked,
 * the rest share one. */
#define MP_NODE_LOG_EVERY_MS 60000u
#define MP_NODE_LOG_EVERY_KEYS 1024u
#define MP_NODE_BUILTIN_VERSION "1.0.0"

/* --- timers (node_timer.c) -------------------------------------------------- */

typedef struct mp_timer mp_timer;
typedef void (*mp_timer_fn)(mp_node *n, mp_timer *t);

/* Embedded in whatever owns it (a connection, a request, a sleep); fire gets
 * the timer back and finds its owner with MP_CONTAINER. An owner cancels its
 * timer before it is freed. */
struct mp_timer {
    uint64_t due; /* absolute ms */
    uint64_t seq; /* arming order: equal due times fire in that order */
    size_t slot;  /* index in the heap; SIZE_MAX when not armed */
    mp_timer_fn fire;
};

/* The node's timers: core/heap.h over mp_timer pointers (each timer knows
 * its slot), with an arming counter to break ties. Zero-initialised is
 * empty; the heap is set up by the first arm. */
typedef struct mp_timer_heap {
    mp_heap heap;
    uint64_t seq;
} mp_timer_heap;

void mp_timer_init(mp_timer *t, mp_timer_fn fire);
static inline bool mp_timer_armed(const mp_timer *t) {
    return t->slot != SIZE_MAX;
}
/* (Re)arms t for due. MPREG_E_NOMEM leaves it as it was. */
mpreg_err mp_timer_arm(mp_timer_heap *h, mp_timer *t, uint64_t due);
void mp_timer_cancel(mp_timer_heap *h, mp_timer *t);
/* Pops every timer due at now and fires it (fire may arm and cancel timers). */
void mp_timers_run(mp_timer_heap *h, mp_node *n, uint64_t now);
uint64_t mp_timers_next(const mp_timer_heap *h); /* UINT64_MAX when none */
void mp_timer_heap_free(mp_timer_heap *h);

/* --- the local function table (node_functions.c) ------------------------- */

typedef struct mp_local_fn mp_local_fn;

/* One way to run a local function: an in-process function (built-in,
 * plugin, embedder) or a worker connection that registered it. */
typedef struct mp_provider {
    mp_link link; /* in local->providers, in registration order */
    mp_local_fn *local;
    mp_strlist resources;
    uint64_t conn;     /* the worker connection; 0 = in-process */
    mp_link conn_link; /* workers: in conn->functions */
    mpreg_function fn; /* in-process */
    void *ctx;         /* in-process */
    uint32_t inflight; /* in-process calls running (workers count per connection) */
} mp_provider;

/* One catalog function entry of this node: (name, function_id, version),
 * offered by one or more providers. It is advertised while it has one, with
 * the union of their resources (the catalog key has no resources in it, so
 * providers that differ only in resources share the entry; the node then
 * picks a provider that has every requested resource). */
struct mp_local_fn {
    char *name;
    char *function_id; /* "" = none */
    char *version;
    mp_link providers;
    uint32_t provider_count;
    mp_strlist advertised; /* the resources in the catalog entry (sorted union) */
};

/* Adds a provider. *out (may be NULL) gets it. MPREG_E_DUPLICATE when an
 * in-process provider already has the key and this is one too. */
mpreg_err mp_functions_add(mp_node *n, const char *name, const char *function_id,
                           const char *version, const mp_strlist *resources, uint64_t conn,
                           mpreg_function fn, void *ctx, mp_provider **out);
void mp_functions_remove(mp_node *n, mp_provider *p);
mp_local_fn *mp_functions_find(mp_node *n, const char *name, const char *function_id,
                               const char *version);
/* The provider to run a call on: every requested resource, least busy, then
 * in-process before workers, then registration order. NULL when none has
 * the resources. */
mp_provider *mp_functions_choose(mp_node *n, mp_local_fn *f, const mp_strlist *locs);
void mp_functions_free_all(mp_node *n);

/* --- connections (node_conn.c) --------------------------------------------- */

typedef enum mp_conn_state {
    MP_CONN_HANDSHAKE = 0, /* waiting for HELLO */
    MP_CONN_OPEN,          /* WELCOME sent */
    MP_CONN_CLOSING,       /* close requested: frames are ignored */
} mp_conn_state;

typedef enum mp_conn_role {
    MP_ROLE_NONE = 0,
    MP_ROLE_CLIENT,
    MP_ROLE_PEER,
} mp_conn_role;

typedef struct mp_conn {
    uint64_t id;
    mp_link link; /* in node->conn_list, in open order */
    mp_conn_state state;
    mp_conn_role role;
    char *name; /* from HELLO; NULL = none */
    char *addr; /* from the driver; NULL = unknown */
    mp_timer handshake;
    mp_link requests; /* mp_request.conn_link: RPC requests it sent */
    uint32_t request_count;
    mp_link invokes;   /* mpreg_call.conn_link: calls it runs (worker) */
    uint32_t inflight; /* how many */
    mp_link functions; /* mp_provider.conn_link: functions it registered */
    uint32_t function_count;
    uint64_t *subs; /* its subscription ids, unordered */
    uint32_t sub_count;
    size_t sub_cap;
    uint32_t pattern_count; /* over its subscriptions (limits.patterns_per_conn) */
    bool reading_paused;    /* we told the driver to stop reading it (RPC backpressure) */
    bool stalled;           /* a publisher paused while a subscriber catches up */
    mp_timer stall;         /* checks on the stall */
    uint64_t stall_on;      /* stalled: the subscriber's connection it waits for */
    /* As a subscriber past the soft mark (node_pubsub.c, "Fast publishers"). */
    bool behind;           /* past the soft mark since behind_since */
    uint64_t behind_since; /* ... or since it last drained MP_NODE_STALL_MIN_DRAIN */
    size_t behind_mark;    /* its output_pending then */
    bool stall_exempt;     /* stuck (drained too little for too long): stalls nobody
                              until it is back under the soft mark */
    bool shedding;         /* over high water: pub/sub deliveries are dropped */
    uint64_t dropped_base; /* the subscriptions' drop count when shedding began */
    uint64_t shed_drops;   /* of those since, the ones the node dropped as it wrote */
    /* Peer links (node_cluster.c). */
    char *peer_id;     /* the member at the other end; NULL until known */
    bool refused;      /* outbound: the peer answered our HELLO with an ERROR (logged) */
    bool outbound;     /* this node dialed it (and sent the HELLO) */
    bool welcomed;     /* outbound: its WELCOME arrived */
    mp_link peer_link; /* in node->links.lru, least recently used first */
    mp_link served;    /* mp_served.conn_link: a peer's invokes this node runs */
} mp_conn;

mp_conn *mp_conn_get(const mp_node *n, uint64_t id);
/* The connection to node `node` that messages for it go through, dialing
 * one when there is none (node_cluster.c); NULL when the node's address is
 * unknown or the driver cannot dial. */
mp_conn *mp_conn_for_node(mp_node *n, const char *node);
/* Creates the node's side of a connection (on_open and dials share it);
 * NULL on out of memory (the driver's connection is then closed). */
mp_conn *mp_conn_create(mp_node *n, uint64_t id, const char *addr);

/* Fills in id (when zero), source node and cluster, encodes the frame (never
 * one over max_frame: MPREG_E_FRAME_TOO_LARGE, nothing appended) and commits
 * it. MPREG_E_CLOSED when the connection has no output any more. What goes
 * through here is never dropped while the connection stays open: when the
 * driver refuses it (the output is at its hard limit) the connection is
 * closed with an ERROR saying so, and the caller hears MPREG_E_CLOSED. */
mpreg_err mp_node_send(mp_node *n, uint64_t conn, mp_envelope *env);
/* The same for what may be dropped (gossip, which SWIM retransmits; a
 * publish for a slow peer, which is counted): MPREG_E_BACKPRESSURE, nothing
 * else done, when the output is at its hard limit. */
mpreg_err mp_node_send_droppable(mp_node *n, uint64_t conn, mp_envelope *env);
/* An envelope of kind whose payload is the encoding of v (NULL = empty). */
mpreg_err mp_node_send_value(mp_node *n, uint64_t conn, mp_kind kind, const mp_id *correlation,
                             const char *topic, const mpreg_value *v);
/* An ERROR envelope with the error shape. correlation may be NULL. */
void mp_node_send_error(mp_node *n, uint64_t conn, const mp_id *correlation, const mp_rpc_error *e);
void mp_node_send_errorf(mp_node *n, uint64_t conn, const mp_id *correlation, mpreg_err code,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* ERROR 505 limit to the client, correlated to what it asked (`op`): which
 * limit (its --limit name), how much it holds and the limit. Counted. */
void mp_node_refuse_limit(mp_node *n, mp_conn *c, const mp_id *correlation, const char *op,
                          const char *limit_name, uint64_t have, uint64_t limit);
/* Closes after flushing; frames arriving before the driver's on_close are
 * ignored. */
void mp_node_close_conn(mp_node *n, mp_conn *c, mpreg_err reason);
/* After output was appended for a client request: when the connection is
 * over its high-water mark, stop reading it until it drains. */
void mp_conn_check_backpressure(mp_node *n, mp_conn *c);

/* --- RPC (node_rpc.c) ------------------------------------------------------ */

typedef struct mp_request {
    mp_node *node;
    mp_conn *conn; /* who asked; requests are freed before their connection */
    mp_id id;      /* the RPC_REQUEST's id: the reply's correlation */
    mp_rpc_plan *plan;
    uint64_t deadline_ms;
    mp_timer deadline;
    mp_link conn_link;   /* in conn->requests */
    mp_link calls;       /* mpreg_call.req_link: its calls in flight */
    bool advancing;      /* inside mp_request_advance: completions only record */
    uint32_t retries;    /* commands sent elsewhere after a node could not be reached */
    uint64_t held_bytes; /* its share of n->result_bytes */
} mp_request;

/* A peer's RPC_INVOKE that this node runs for it (node_rpc.c): one call,
 * answered with RPC_RESULT on the peer's connection. */
typedef struct mp_served {
    mp_conn *conn;     /* the peer that asked; served invokes go before it */
    mp_id invoke_id;   /* the RPC_RESULT's correlation */
    mp_link conn_link; /* in conn->served */
    mp_timer deadline;
    struct mpreg_call *call; /* NULL once answered */
} mp_served;

struct mpreg_call {
    mp_node *node;
    mp_request *req;   /* NULL once orphaned (the request went away first) */
    mp_served *served; /* instead of req: a peer's invoke (then req is NULL) */
    uint32_t cmd;      /* the command's id in req's plan */
    mp_link req_link;  /* in req->calls, or in node->orphans */
    /* in-process */
    mp_provider *provider;
    void (*cancel)(void *ud); /* see mp_call_set_cancel */
    void *cancel_ud;
    /* on another connection (a worker, later a peer); a call is failed
     * before the connection it runs on is freed */
    mp_conn *runner; /* NULL = in-process */
    mp_id invoke_id;
    mp_link conn_link; /* in runner->invokes */
    char *fun;         /* for worker_gone messages */
};

void mp_rpc_on_request(mp_node *n, mp_conn *c, const mp_envelope *env);
void mp_rpc_on_result(mp_node *n, mp_conn *c, const mp_envelope *env);
/* A peer asks this node to run one command (its own function, exactly the
 * function_id and version named). */
void mp_rpc_on_invoke(mp_node *n, mp_conn *c, const mp_envelope *env);
/* The peer is going: the invokes it asked for are abandoned (no answer). */
void mp_rpc_conn_served_drop(mp_node *n, mp_conn *c);
/* The connection is going: its own requests are dropped silently. */
void mp_rpc_conn_requests_drop(mp_node *n, mp_conn *c);
/* The connection ran calls (a worker) and is going: each fails with
 * MPREG_E_WORKER_GONE, and their requests answer at once. */
void mp_rpc_conn_invokes_fail(mp_node *n, mp_conn *c);
/* Fails every request of c with code (mp_node_stop), replying to c. */
void mp_rpc_conn_requests_fail(mp_node *n, mp_conn *c, mpreg_err code, const char *message);
/* Completes a call: ok with result (taken), or with error (contents taken). */
void mp_call_finish(mpreg_call *call, bool ok, mpreg_value result, mp_rpc_error *error);
/* An in-process function that finishes later may ask to hear when nobody
 * wants the result any more (deadline, client gone, request failed): then
 * cancel(ud) runs, after which the node frees the call and the function
 * must not touch it again. Internal: the built-in sleep uses it to drop its
 * timer, so abandoned sleeps do not pile up. */
void mp_call_set_cancel(mpreg_call *call, void (*cancel)(void *ud), void *ud);
void mp_rpc_free_orphans(mp_node *n);

/* --- functions and workers (node_functions.c) ---------------------------- */

void mp_functions_on_register(mp_node *n, mp_conn *c, const mp_envelope *env);
void mp_functions_on_unregister(mp_node *n, mp_conn *c, const mp_envelope *env);
/* The connection's functions leave the table (and, last provider gone, the
 * catalog). */
void mp_functions_conn_drop(mp_node *n, mp_conn *c);

/* --- pub/sub (node_pubsub.c) ----------------------------------------------- */

void mp_ps_on_subscribe(mp_node *n, mp_conn *c, const mp_envelope *env);
void mp_ps_on_unsubscribe(mp_node *n, mp_conn *c, const mp_envelope *env);
void mp_ps_on_publish(mp_node *n, mp_conn *c, const mp_envelope *env);
void mp_ps_on_writable(mp_node *n, mp_conn *c);
/* A publisher's stall (node_pubsub.c) is over: it reads again. */
void mp_ps_stall_over(mp_node *n, mp_timer *t);
void mp_ps_conn_drop(mp_node *n, mp_conn *c);
bool mp_ps_deliver(void *ud, const mp_pubsub_delivery *d);
void mp_ps_interest(void *ud, mp_str pattern, mp_str group, bool added);

/* --- peer links (node_links.c) --------------------------------------------- */

/* The node's links to other nodes: at most `max` kept, least recently used
 * idle one closed to make room; one per node that messages for it take. */
#define MP_LINKS_DEFAULT_MAX 64u

typedef struct mp_links {
    mp_map by_node; /* node id -> mp_conn * */
    mp_link lru;    /* mp_conn.peer_link, least recently used first */
    uint32_t count; /* open peer links */
    uint32_t max;
} mp_links;

void mp_links_init(mp_links *l, uint32_t max);
void mp_links_free(mp_links *l);
/* A link carried something: it moves to the back of the LRU list. */
void mp_links_touch(mp_node *n, mp_conn *c);
/* The open link messages for node take, or NULL. */
mp_conn *mp_links_find(mp_node *n, const char *node);
/* c (a link whose peer_id is known) becomes node's link, unless it has one. */
void mp_links_bind(mp_node *n, mp_conn *c);
void mp_links_forget(mp_node *n, const char *node);
/* c becomes a peer link (counted, in the LRU list). */
void mp_links_add(mp_node *n, mp_conn *c);
/* At the bound: closes least recently used idle links (never keep). */
void mp_links_make_room(mp_node *n, const mp_conn *keep);
/* Dials addr for node id (NULL: a seed not known by id yet); hello queues
 * the connection's HELLO. NULL when it cannot even start. */
mp_conn *mp_links_dial(mp_node *n, const char *id, const char *addr,
                       mpreg_err (*hello)(mp_node *n, mp_conn *c));
/* A peer link closed: out of the count, the LRU list and the map (another
 * open link to the same node takes over). */
void mp_links_closed(mp_node *n, mp_conn *c);

/* --- clustering (node_cluster.c) ------------------------------------------- */

/* Creates the membership (when the config gives an address or seeds) and
 * joins the seeds. */
mpreg_err mp_cluster_start(mp_node *n, const mp_node_config *cfg);
void mp_cluster_free(mp_node *n);
/* A local entry changed in the catalog: tell the cluster. */
void mp_cluster_entry_changed(mp_node *n, const mp_entry *e);
void mp_cluster_on_gossip(mp_node *n, mp_conn *c, const mp_envelope *env);
/* A WELCOME on a connection this node dialed. */
void mp_cluster_on_welcome(mp_node *n, mp_conn *c, const mp_envelope *env);
/* An inbound peer said HELLO naming itself (node, cluster, key: empty when
 * absent): false when it is refused, *code and why (cap bytes) saying why;
 * the refusal is logged here. */
bool mp_cluster_peer_hello(mp_node *n, mp_conn *c, mp_str node, mp_str cluster, mp_bytes key,
                           mpreg_err *code, char *why, size_t cap);
/* An outbound peer link got an ERROR: logged with its message (at warn,
 * once a minute per peer, when it refuses our HELLO). */
void mp_cluster_on_error(mp_node *n, mp_conn *c, const mp_envelope *env);
void mp_cluster_conn_closed(mp_node *n, mp_conn *c, mpreg_err reason);
/* A peer link carried something: it moves to the back of the LRU list. */
/* --- peer links (node_links.c) --------------------------------------------- */
void mp_cluster_tick(mp_node *n);
uint64_t mp_cluster_next_wakeup(const mp_node *n);
void mp_cluster_leave(mp_node *n);

/* --- control (node_control.c) ---------------------------------------------- */

void mp_control_on_request(mp_node *n, mp_conn *c, const mp_envelope *env);
mpreg_err mp_control_catalog(const mp_node *n, mpreg_value *out);

/* --- built-ins (builtins.c) ------------------------------------------------ */

mpreg_err mp_builtins_register(mp_node *n);

/* --- the node -------------------------------------------------------------- */

struct mpreg_registry {
    mp_node *node;
};

typedef struct mp_node_counters {
    uint64_t rpc_requests;    /* RPC_REQUESTs accepted */
    uint64_t rpc_errors;      /* RPC_REPLYs that carried an error */
    uint64_t published;       /* PUBLISHes accepted (routed, not refused) */
    uint64_t unreachable;     /* sends to other nodes that had no connection */
    uint64_t frame_errors;    /* ERRORs sent for bad frames */
    uint64_t overflow_closes; /* connections closed with answers owed and output full */
    uint64_t peer_shed;       /* publishes not forwarded: the peer link's output was full */
} mp_node_counters;

struct mp_node {
    char *node_id;
    char *name;
    char *cluster;
    char *token; /* NULL = none */
    mp_strlist resources;
    uint64_t incarnation;
    uint32_t max_frame;
    mp_node_limits limits; /* resolved: no zero fields */
    /* What the limits count, node-wide. */
    uint32_t conn_total;      /* connections open (limits.conns) */
    uint32_t sub_total;       /* subscriptions */
    uint32_t pattern_total;   /* their patterns */
    uint32_t worker_fn_total; /* functions registered by workers */
    uint32_t request_total;   /* RPC requests in flight, and peers' invokes served */
    uint64_t result_bytes;    /* results held by requests in flight */
    uint64_t frame_conn;      /* the connection whose frame is being handled; 0 = none */
    bool frame_out;           /* that frame produced output for that same connection */
    uint64_t limit_refusals;  /* ERROR 505 limit answers sent */
    uint64_t conns_refused;   /* connections refused at limits.conns since the last warning */
    uint64_t conns_warned_at; /* when that warning was logged; 0 = never */
    uint32_t handshake_timeout_ms;
    uint32_t rpc_timeout_ms;
    mp_log_level log_level;

    mp_node_io io;
    mp_rng *rng;
    uint64_t started_ms;
    uint64_t now_ms;  /* of the latest input */
    uint64_t counter; /* catalog version counter of this incarnation */

    mp_catalog *catalog;
    mp_engine *engine;
    mp_pubsub *pubsub;
    uint64_t ps_publisher; /* the connection whose PUBLISH is being delivered; 0 = none */
    mpreg_registry registry;

    mp_map conns; /* id -> mp_conn */
    mp_link conn_list;
    mp_map functions; /* name \0 function_id \0 version -> mp_local_fn */
    mp_map invokes;   /* invoke id -> mpreg_call (calls on other connections) */
    mp_link orphans;  /* in-process calls whose request went away */
    mp_timer_heap timers;
    mp_node_counters counters;
    bool stopping;
    bool pubsub_retains; /* retention is on: every publish is kept here for replay */
    /* Connections that went over high water during a publish: the pub/sub
     * hooks may not call back into the service, so they are marked not
     * accepting once it returns (mp_ps_flush_shedding). */
    uint64_t *shed_pending;
    uint32_t shed_len;
    size_t shed_cap;

    /* Clustering (node_cluster.c). */
    mp_swim *swim;             /* NULL: a standalone node (no address and no seeds) */
    char *advertise_addr;      /* NULL = cannot be dialed */
    uint64_t generation;       /* the SWIM generation: the incarnation at start */
    mp_links links;            /* peer links (node_links.c) */
    uint64_t seen_refutations; /* mp_swim_stats.refutations last looked at */
    bool in_swim;              /* inside an mp_swim call: broadcasts wait */
    mp_buf pending;            /* deferred broadcasts: [u32 keylen][key][u32 len][data]... */
    /* Catalog TTL (node_cluster.c, "catalog liveness"): remote entries live
     * as long as the membership vouches for their origin. */
    uint32_t catalog_ttl_ms;
    uint64_t origin_sweep_at; /* next sweep of the origins */
    uint32_t origin_sweeps;   /* sweeps done (marks the origins each one found) */
    uint64_t origins_expired; /* origins whose entries the sweep removed */
    mp_map origins;           /* origin id -> mp_origin_watch * (remote origins only) */
    /* Identity (node_cluster.c): this process's key, and what the
     * membership last refused a sender for (an ERROR for it). */
    uint8_t node_key[MP_SWIM_MAX_KEY];
    uint8_t node_key_len;
    char conflict[256]; /* "" = none pending */
    mp_map log_every;   /* key -> mp_log_every: repeated warnings (node.c) */
};

void mp_node_log(const mp_node *n, mp_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like mp_node_log, but a line with the same key is logged at most once per
 * MP_NODE_LOG_EVERY_MS: the next one after the window says how many were
 * left out. For what repeats for as long as a misconfiguration lasts (a
 * join refused every retry, a seed that cannot be reached). */
void mp_node_log_every(mp_node *n, mp_log_level level, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Applies an entry of this node with the next version (counter++). */
mpreg_err mp_node_advertise(mp_node *n, mp_entry *e);
/* Output was committed for conn: remembered when it is the connection
 * whose frame is being handled (the backpressure check after it). */
static inline void mp_node_note_output(mp_node *n, uint64_t conn) {
    if (conn == n->frame_conn) {
        n->frame_out = true;
    }
}
static inline uint64_t mp_node_now(const mp_node *n) {
    return n->now_ms;
}
/* Saturating a + b, for deadlines. */
static inline uint64_t mp_add_ms(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Sorted union without duplicates of dst and add, into dst. */
mpreg_err mp_strlist_union_into(mp_strlist *dst, const mp_strlist *add);

#endif
