/* node.h - the node: one state machine composing the fabric and the services.
 *
 * Sans-I/O. The driver (runtime/ with libuv, or sim/) owns sockets and
 * timers; it tells the node what happened (a connection opened, a frame
 * arrived, time passed) and the node answers through the mp_node_io
 * callbacks (append frames to a connection's output, close it, pause its
 * reading). The node never blocks and never reads a clock: every input
 * carries now_ms, wall-clock milliseconds since the Unix epoch (deadlines in
 * envelopes are in the same unit).
 *
 * Connections speak docs/PROTOCOL.md: the first frame must be HELLO (role
 * "client" or "peer"), answered by WELCOME; then
 *   PING -> PONG; GOODBYE -> orderly close;
 *   RPC_REQUEST -> RPC_REPLY (dependency resolution, services/rpc_plan.h);
 *   REGISTER / UNREGISTER (a worker offers functions) -> OK | ERROR;
 *   RPC_RESULT (a worker answering an RPC_INVOKE the node sent it);
 *   SUBSCRIBE -> OK {"subscription": id} | ERROR; UNSUBSCRIBE -> OK | ERROR;
 *   PUBLISH -> (no reply; ERROR on a bad topic) and DELIVER to subscribers;
 *   CONTROL (topic = operation: "status", "catalog", "subscriptions")
 *     -> CONTROL_REPLY.
 * Any bad frame gets an ERROR naming the problem; the connection stays open
 * unless the framing itself is broken (the driver reports that through
 * mp_node_on_protocol_error) or the handshake failed.
 *
 * Nothing here assumes a single node: RPC commands and publishes are routed
 * through the routing engine over the catalog, which will hold other
 * nodes' entries once membership exists. */
#ifndef MP_NODE_H
#define MP_NODE_H

#include "core/buf.h"
#include "core/rng.h"
#include "fabric/catalog.h"
#include "fabric/membership.h"
#include "mpreg/error.h"
#include "mpreg/plugin.h"
#include "mpreg/value.h"
#include "services/pubsub.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum mp_log_level {
    MP_LOG_ERROR = 0,
    MP_LOG_WARN = 1,
    MP_LOG_INFO = 2,
    MP_LOG_DEBUG = 3,
} mp_log_level;

const char *mp_log_level_name(mp_log_level level); /* "error", "warn", "info", "debug" */

/* What the driver does for the node. Connection ids are the driver's
 * (never reused). Every callback is required unless marked optional.
 * Callbacks must not call back into the node: in particular the
 * mp_node_on_close that follows io->close comes later, from the driver's
 * loop, never from inside io->close. */
typedef struct mp_node_io {
    void *ud;
    /* The connection's pending output: the node appends whole frames
     * (mp_envelope_encode_frame). NULL when the connection is gone. */
    mp_buf *(*output)(void *ud, uint64_t conn);
    /* Optional: the connection's output even past the driver's hard limit,
     * for the one ERROR the node sends before closing a connection whose
     * output is full (NULL when the connection is gone). Without it such a
     * connection is closed without that ERROR. */
    mp_buf *(*output_final)(void *ud, uint64_t conn);
    /* Tells the driver `frames` frames were appended (stats, flushing). */
    void (*output_commit)(void *ud, uint64_t conn, uint32_t frames);
    /* True when the connection's pending output is above its high-water
     * mark: the node sheds pub/sub deliveries and stops reading RPC. */
    bool (*over_high_water)(void *ud, uint64_t conn);
    void (*set_reading)(void *ud, uint64_t conn, bool reading);
    /* Optional: true when the connection's pending output is past half its
     * high-water mark. A publish whose delivery leaves a subscriber there
     * stalls the publisher (its reading pauses until the subscriber is back
     * under that mark), as nats-server stalls a fast producer, so that a
     * subscriber that keeps up, only less quickly, slows the publisher down
     * rather than being shed. A subscriber that drains too little for too
     * long stalls nobody any more (node_pubsub.c). Shedding at the
     * high-water mark is unchanged. NULL = never stall. */
    bool (*over_soft_water)(void *ud, uint64_t conn);
    /* Optional: the bytes of the connection's output not yet taken by the
     * kernel, as exactly as the driver knows (a write in progress counts
     * what is left of it): how the node sees a stalled-for subscriber
     * drain. NULL = the node cannot see it, and a stall on a subscriber
     * still over the soft mark lasts its whole bound. */
    size_t (*output_pending)(void *ud, uint64_t conn);
    /* Closes the connection; with flush_first its pending output goes first.
     * The driver later reports mp_node_on_close. */
    void (*close)(void *ud, uint64_t conn, bool flush_first, mpreg_err reason);
    /* Optional: counts frames the node dropped for this connection. */
    void (*count_drop)(void *ud, uint64_t conn, uint32_t frames);
    /* Optional: one structured log line (the driver adds time and node). */
    void (*log)(void *ud, mp_log_level level, const char *message);
    /* Optional (required for clustering): opens an outgoing connection to
     * addr ("host:port") and returns its id (never reused, never 0), or 0
     * when it cannot even start (bad address, no memory). The node may
     * append frames to its output at once: the driver sends them once
     * connected. Success is NOT reported through mp_node_on_open (the node
     * already knows the connection); failure, at any time, through
     * mp_node_on_close with MPREG_E_UNREACHABLE. */
    uint64_t (*dial)(void *ud, const char *addr);
    /* Optional: adds the driver's own figures (its limits and what they
     * refused) to the "status" reply's map. */
    mpreg_err (*status)(void *ud, mpreg_value *status_map);
} mp_node_io;

/* What one connection, and the node as a whole, may make the node hold
 * (docs/PROTOCOL.md §7.7). A client that reaches one gets ERROR
 * `505 limit` naming it, and nothing else changes; every other client is
 * served as before. Zero fields take the defaults (mp_node_limits_default),
 * which bound the node's memory for these inputs to a few hundred MiB at
 * worst (the figures are in PROTOCOL §7.7). The names are mpregd's
 * `--limit NAME=VALUE`. */
typedef struct mp_node_limits {
    uint32_t conns;              /* connections at once, clients and peers: 10 000 */
    uint32_t subs_per_conn;      /* subscriptions of one connection: 10 000 */
    uint32_t subs_per_node;      /* of all connections: 100 000 */
    uint32_t patterns_per_conn;  /* patterns over one connection's subscriptions: 4096 */
    uint32_t patterns_per_node;  /* of all connections: 100 000 */
    uint32_t functions_per_conn; /* functions one worker connection registers: 256 */
    uint32_t functions_per_node; /* registered by all workers: 10 000 */
    uint32_t requests_per_conn;  /* RPC requests in flight on one connection: 1024 */
    uint32_t requests_per_node;  /* on all connections, peers' invokes included: 16 384 */
    uint64_t request_bytes;      /* results one request may hold at once: 16 MiB */
    uint64_t results_bytes;      /* results all requests may hold at once: 256 MiB */
    /* Withdrawn catalog entries remembered (tombstones, kept for the
     * tombstone TTL): a client that churns subscriptions or functions makes
     * one per pattern or function it drops, so past this many new ones are
     * refused until old ones expire: 200 000 (about 170 MiB). */
    uint32_t tombstones;
} mp_node_limits;

void mp_node_limits_default(mp_node_limits *l);
/* Fills the zero fields of l with the defaults. */
void mp_node_limits_resolve(mp_node_limits *l);

typedef struct mp_node_config {
    const char *node_id;          /* required; unique in the fabric */
    const char *name;             /* NULL = node_id */
    const char *cluster;          /* NULL = "default" */
    const char *const *resources; /* of built-in and plugin functions */
    uint32_t resource_count;
    uint64_t incarnation;          /* grows with each start (the driver persists it) */
    const char *token;             /* NULL = no authentication */
    uint32_t max_frame;            /* 0 = MP_FRAME_DEFAULT_MAX; told to clients in WELCOME */
    uint32_t handshake_timeout_ms; /* 0 = 10 000 */
    uint32_t rpc_timeout_ms;       /* a request without deadline gets this; 0 = 30 000 */
    mp_log_level log_level;
    mp_pubsub_config pubsub; /* all zero = mp_pubsub_config_default; else used as given */
    /* Clustering. advertise_addr is the "host:port" other members dial to
     * reach this node (NULL = this node cannot be dialed: it still joins,
     * but members reach it only over connections it opened). seeds are
     * addresses of members to join through (any one live member is
     * enough). swim all zero = mp_swim_config_default. */
    const char *advertise_addr;
    const char *const *seeds;
    uint32_t seed_count;
    mp_swim_config swim;
    uint32_t max_peer_conns; /* peer connections kept open at most; 0 = 64 */
    /* The TTL of other nodes' catalog entries: the membership refreshes
     * them while it lists their origin alive or suspect; entries of an
     * origin it has not vouched for this long are dropped. 0 = three
     * push-pull intervals (90 s by default). */
    uint32_t catalog_ttl_ms;
    /* How long withdrawn entries are kept as tombstones; 0 = the
     * catalog's default (5 minutes). */
    uint32_t tombstone_ttl_ms;
    bool no_builtins;      /* simulator: skip echo, echos, ... (small catalogs) */
    mp_node_limits limits; /* zero fields: the defaults */
    /* This process's identity key, 0..MP_SWIM_MAX_KEY bytes (0 = none): the
     * driver keeps it with the node's data, so that a restart keeps it and
     * a second process started under the same node_id elsewhere has
     * another. It goes in the peer HELLO and in this node's SWIM record. A
     * peer or member that says this node's id, or the id of a member
     * listed alive or suspect, with another key is refused (PROTOCOL §7.1,
     * §12.6), and both sides log it at warn. Without a key, the node's id
     * is not defended. */
    const uint8_t *node_key;
    size_t node_key_len;
} mp_node_config;

typedef struct mp_node mp_node;

/* NULL on a bad config or out of memory. rng is borrowed. */
mp_node *mp_node_new(const mp_node_config *cfg, const mp_node_io *io, mp_rng *rng, uint64_t now_ms);
void mp_node_free(mp_node *n);

/* Functions: built-ins are registered by mp_node_new (echo, echos, sleep,
 * fail, whoami); plugins and embedders use the registry. */
mpreg_registry *mp_node_registry(mp_node *n);

/* --- driver inputs ------------------------------------------------------ */
void mp_node_on_open(mp_node *n, uint64_t conn, const char *peer_addr, uint64_t now_ms);
void mp_node_on_frame(mp_node *n, uint64_t conn, const uint8_t *frame, size_t len, uint64_t now_ms);
/* The framing of conn broke (oversized or empty frame): the node queues an
 * ERROR and closes the connection after flushing it. */
void mp_node_on_protocol_error(mp_node *n, uint64_t conn, mpreg_err err, uint64_t now_ms);
/* conn drained below its low-water mark. */
void mp_node_on_writable(mp_node *n, uint64_t conn, uint64_t now_ms);
void mp_node_on_close(mp_node *n, uint64_t conn, mpreg_err reason, uint64_t now_ms);
/* Runs timers due at now_ms (deadlines, handshakes, sleep, expiry). */
void mp_node_tick(mp_node *n, uint64_t now_ms);
/* When the node next needs mp_node_tick: absolute ms; UINT64_MAX = never.
 * Any input may arm a timer (a request's deadline, a sleep), so drivers
 * ask again after each one. */
uint64_t mp_node_next_wakeup(const mp_node *n);
/* Graceful stop: in-flight requests are answered with MPREG_E_CLOSED, then
 * every connection gets a GOODBYE and is closed after flushing; connections
 * opened afterwards are closed at once, and frames still arriving are
 * ignored. */
void mp_node_stop(mp_node *n, uint64_t now_ms);
/* Graceful leave, for a clustered node before mp_node_stop: LEFT is
 * broadcast and sent at once to a few members, so they drop this node's
 * entries without waiting for the suspicion timeout. */
void mp_node_leave(mp_node *n, uint64_t now_ms);

/* --- introspection -------------------------------------------------------- */
/* The "status" control reply: node, cluster, uptime, connections, counters. */
mpreg_err mp_node_status(const mp_node *n, uint64_t now_ms, mpreg_value *out);
mp_catalog *mp_node_catalog(mp_node *n);
/* The "members" control reply: {"self": id, "members": [{id, addr, state,
 * generation, incarnation, since_ms}...], "stats": {...}}. */
mpreg_err mp_node_members(const mp_node *n, uint64_t now_ms, mpreg_value *out);
mp_swim *mp_node_swim(mp_node *n);
const char *mp_node_id(const mp_node *n);

#endif
