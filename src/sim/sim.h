/* sim.h - the deterministic simulator: many nodes in one process.
 *
 * A discrete-event simulator that drives N mp_node state machines (node.h)
 * the way src/runtime/server.c drives one, except that time and the network
 * are virtual:
 *
 *   - a virtual clock in milliseconds, starting at MP_SIM_EPOCH_MS so that a
 *     node's "wall clock" looks real, and an event queue ordered by
 *     (time, sequence): the same seed gives the same run, bit for bit;
 *   - one seeded generator for the network, one per node (derived from the
 *     seed, the node's index and how often it started) passed to
 *     mp_node_new, and one per simulated client;
 *   - a virtual network: node i advertises MP_SIM_ADDR(i) ("10.0.0.1:7000"
 *     for node 0); io->dial opens a connection that reaches its target
 *     after one latency or fails with MPREG_E_UNREACHABLE after the connect
 *     timeout; committed output is cut into frames (core/frame.h), each
 *     delivered after latency + jitter, in order per connection direction;
 *   - faults: loss, duplication and reordering of GOSSIP frames only
 *     (envelope kind 80: SWIM tolerates datagram-like faults, every other
 *     frame rides a TCP-like stream); partitions (frames across are
 *     dropped, connections across break after a timeout); crashes (peers'
 *     connections close after one latency) and restarts with or without the
 *     node's data;
 *   - timers: after every input to a node the simulator asks
 *     mp_node_next_wakeup and schedules a tick (stale ticks are skipped);
 *   - simulated clients that speak the client protocol (HELLO role
 *     "client", RPC requests, publish, subscribe, worker functions served by
 *     callbacks) and record every answer and delivery, so that scenarios can
 *     check invariants;
 *   - statistics: frames and bytes per node per envelope kind, events
 *     processed, virtual time, and a running hash of everything that
 *     happened (equal seeds, equal hashes).
 *
 * Sans-I/O like the rest of the core: nothing here reads a clock, a socket
 * or the OS's randomness. Single-threaded; one mp_sim is independent of
 * another.
 *
 * Typical use:
 *
 *     mp_sim_config cfg;
 *     mp_sim_config_default(&cfg);
 *     cfg.seed = 7;
 *     cfg.nodes = 5;
 *     cfg.seed_nodes = 1;          // every node joins through node 0
 *     cfg.node.no_builtins = true;
 *     mp_sim *sim = mp_sim_new(&cfg);
 *     mp_sim_start_all(sim);
 *     mp_sim_run_for(sim, 10000);  // ten virtual seconds
 *     ...
 *     mp_sim_free(sim);
 */
#ifndef MP_SIM_H
#define MP_SIM_H

#include "core/envelope.h"
#include "core/id.h"
#include "node/node.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Virtual time 0: 2023-11-14T22:13:20Z, in Unix epoch milliseconds. */
#define MP_SIM_EPOCH_MS 1700000000000ull
/* "No such node / client / operation", and "a client outside any node's
 * network position" (never partitioned). */
#define MP_SIM_NONE UINT32_MAX
/* Node ids are "n<index>"; addresses "10.a.b.c:7000" with a.b.c = index + 1. */
#define MP_SIM_PORT 7000
#define MP_SIM_ID_MAX 16
#define MP_SIM_ADDR_MAX 32

typedef struct mp_sim mp_sim;

/* ---- configuration ----------------------------------------------------------- */

typedef enum mp_sim_jitter {
    MP_SIM_JITTER_UNIFORM = 0, /* uniform in [0, jitter_ms] */
    MP_SIM_JITTER_EXP = 1,     /* exponential with mean jitter_ms, cut at 20x the mean */
} mp_sim_jitter;

/* The network. May be changed between events (mp_sim_net): what changes
 * applies to frames sent afterwards. */
typedef struct mp_sim_net_config {
    uint32_t latency_ms; /* one-way base latency; default 1 */
    uint32_t jitter_ms;  /* added per frame, see jitter; default 1 */
    mp_sim_jitter jitter;
    /* GOSSIP frames only; probabilities in [0, 1]. */
    double loss;         /* a frame is dropped */
    double dup;          /* a frame arrives twice */
    double reorder;      /* a frame is held back up to reorder_ms (default 20) so that */
    uint32_t reorder_ms; /* frames sent after it may overtake it (never earlier ones) */
    /* A dial to a node that is down, unknown or partitioned away fails
     * with MPREG_E_UNREACHABLE this long after it started; default 1000. */
    uint32_t connect_timeout_ms;
    /* A connection across a partition breaks (both sides get
     * MPREG_E_UNREACHABLE) this long after the partition began, or after it
     * lost a frame to it; default 5000. */
    uint32_t break_timeout_ms;
    /* Bytes sent on a connection and not yet read by the other side above
     * which io->over_high_water says yes; half of it is the soft mark and
     * the low-water mark. Default 8 MiB (as the runtime's transport). */
    uint64_t high_water;
} mp_sim_net_config;

typedef struct mp_sim_config {
    uint64_t seed;
    uint32_t nodes; /* node slots, 1 .. 100 000; nodes start with mp_sim_node_start */
    mp_sim_net_config net;
    /* Template of every node's configuration. The simulator fills in
     * node_id, advertise_addr and incarnation; cluster defaults to "sim";
     * when seeds is NULL and seed_nodes > 0, a node's seeds are the
     * addresses of nodes 0 .. seed_nodes-1 other than itself. */
    mp_node_config node;
    uint32_t seed_nodes;
    /* Optional: called each time node `index` is (re)created, after the
     * above, to adjust its configuration. Strings it sets must stay valid
     * while the node runs (mp_sim_addrs are, for the simulator's life). */
    void (*configure)(void *ud, mp_sim *sim, uint32_t index, mp_node_config *cfg);
    void *configure_ud;
    /* Where node logs go (NULL = nowhere), at node.log_level and above. */
    FILE *log;
} mp_sim_config;

void mp_sim_config_default(mp_sim_config *cfg);

/* NULL on a bad configuration (no nodes, probabilities outside [0, 1]) or
 * out of memory. Nodes are not started. */
mp_sim *mp_sim_new(const mp_sim_config *cfg);
/* Frees the nodes, connections, clients and pending events. NULL is fine. */
void mp_sim_free(mp_sim *s);

/* The network configuration, to change between events. */
mp_sim_net_config *mp_sim_net(mp_sim *s);

/* ---- nodes ---------------------------------------------------------------------- */

uint32_t mp_sim_node_count(const mp_sim *s);
/* Starts a node that is down: the first time with incarnation 1, after a
 * crash as mp_sim_node_restart(s, i, true). MPREG_E_EXISTS when it is up,
 * MPREG_E_INVALID when mp_node_new refused the configuration. */
mpreg_err mp_sim_node_start(mp_sim *s, uint32_t i);
/* Starts every node that is down, in index order. */
mpreg_err mp_sim_start_all(mp_sim *s);
/* The node dies at once: its mp_node is freed, frames on their way to it
 * are lost, and each of its connections closes on the peer's side one
 * latency later (after the frames it had already sent). */
void mp_sim_node_crash(mp_sim *s, uint32_t i);
/* Starts a crashed (or never started) node again with the same id: with
 * its data the incarnation is the last one + 1 and the identity key is
 * kept; without, the incarnation is the virtual clock's now in ms, as a
 * fresh data dir would still be a newer generation, and the key is new
 * (members take it only once they hold the old process dead or left:
 * PROTOCOL §12.6). Crashes it first when it is up. */
mpreg_err mp_sim_node_restart(mp_sim *s, uint32_t i, bool keep_data);

bool mp_sim_node_up(const mp_sim *s, uint32_t i);
mp_node *mp_sim_node(mp_sim *s, uint32_t i); /* NULL when down */
const char *mp_sim_node_id(const mp_sim *s, uint32_t i);
const char *mp_sim_node_addr(const mp_sim *s, uint32_t i);
/* The incarnation of its current (or last) start; 0 = never started. */
uint64_t mp_sim_node_incarnation(const mp_sim *s, uint32_t i);
/* The index of the node with this id or address; MP_SIM_NONE when none. */
uint32_t mp_sim_node_by_id(const mp_sim *s, const char *id);
uint32_t mp_sim_node_by_addr(const mp_sim *s, const char *addr);
/* Every node's address, in index order (valid for the simulator's life). */
const char *const *mp_sim_addrs(const mp_sim *s);
/* Tells the simulator that the caller called into node i directly
 * (mpreg_register_function on its registry, mp_node_leave, ...): that is an
 * input like any other, after which the node's next wakeup may have moved. */
void mp_sim_node_poke(mp_sim *s, uint32_t i);
/* Connections node i has open or opening. */
size_t mp_sim_node_conns(const mp_sim *s, uint32_t i);

/* ---- time ------------------------------------------------------------------------- */

uint64_t mp_sim_now(const mp_sim *s);     /* absolute, Unix epoch ms */
uint64_t mp_sim_elapsed(const mp_sim *s); /* ms since MP_SIM_EPOCH_MS */

/* Runs one event; false when there is none. */
bool mp_sim_step(mp_sim *s);
/* Runs every event due at or before t (absolute ms) and leaves the clock
 * at t (never moves it back). */
void mp_sim_run_until(mp_sim *s, uint64_t t);
void mp_sim_run_for(mp_sim *s, uint64_t ms);
/* Runs in steps of check_ms until pred is true (checked first at once) or
 * limit_ms have passed; returns the ms it took, or UINT64_MAX on the limit.
 * pred is cheap to call rarely, not on every event: keep check_ms >= 10. */
uint64_t mp_sim_run_until_true(mp_sim *s, bool (*pred)(mp_sim *s, void *ud), void *ud,
                               uint64_t check_ms, uint64_t limit_ms);

typedef void (*mp_sim_fn)(mp_sim *s, void *ud);
/* Calls fn(s, ud) delay_ms from now, in order with the other events (a
 * scenario's scripted actions: crashes, partitions, requests). */
mpreg_err mp_sim_at(mp_sim *s, uint64_t delay_ms, mp_sim_fn fn, void *ud);

/* ---- faults ------------------------------------------------------------------------ */

/* group[i] is node i's side; nodes on different sides cannot reach each
 * other. NULL heals (everyone on side 0). Connections across break after
 * net.break_timeout_ms unless healed before they lost a frame. */
void mp_sim_partition(mp_sim *s, const uint32_t *group);
/* Nodes 0 .. n/2-1 on one side, the rest on the other. */
void mp_sim_partition_halves(mp_sim *s);
void mp_sim_heal(mp_sim *s);
bool mp_sim_reachable(const mp_sim *s, uint32_t a, uint32_t b);

/* What io->dial does, on behalf of node i (which must be up): for tests of
 * the network, and for drivers of a node's peer links by hand. The node is
 * not told about the connection; frames that arrive on it are handed to
 * the node, which ignores connections it does not know. 0 for an address
 * that is not "host:port". */
uint64_t mp_sim_dial(mp_sim *s, uint32_t i, const char *addr);

/* ---- statistics ---------------------------------------------------------------------- */

typedef struct mp_sim_kind_stats {
    uint64_t msgs_out; /* frames the node committed (before any fault) */
    uint64_t bytes_out;
    uint64_t msgs_in; /* frames handed to the node */
    uint64_t bytes_in;
} mp_sim_kind_stats;

/* Node i's frames of one envelope kind, over all its starts (bytes count
 * the 4-byte length prefix). Kinds outside 0..127 read as zero. */
void mp_sim_node_kind_stats(const mp_sim *s, uint32_t i, mp_kind kind, mp_sim_kind_stats *out);
/* Summed over every node. */
void mp_sim_kind_totals(const mp_sim *s, mp_kind kind, mp_sim_kind_stats *out);

typedef struct mp_sim_stats {
    uint64_t events;      /* events run */
    uint64_t ticks;       /* mp_node_tick calls */
    uint64_t stale_ticks; /* scheduled ticks skipped (the wakeup moved) */
    uint64_t frames_sent; /* committed frames, any sender */
    uint64_t frames_delivered;
    uint64_t bytes_sent;
    uint64_t lost;          /* GOSSIP frames dropped by net.loss */
    uint64_t duplicated;    /* GOSSIP frames sent twice by net.dup */
    uint64_t reordered;     /* GOSSIP frames taken out of order by net.reorder */
    uint64_t cut_off;       /* frames dropped by a partition */
    uint64_t undeliverable; /* frames that arrived after their receiver was gone */
    uint64_t dials;
    uint64_t dial_failures;
    uint64_t accepted; /* connections opened at their target */
    uint64_t breaks;   /* connections broken by a partition */
    uint64_t crashes;
    uint64_t restarts;
    uint64_t node_drops; /* frames nodes said they dropped (io->count_drop) */
    uint64_t max_queue;  /* most events pending at once */
} mp_sim_stats;

void mp_sim_get_stats(const mp_sim *s, mp_sim_stats *out);
/* A hash of every event run so far (time, kind, parties, frame bytes): two
 * runs from one seed and one script give the same value. */
uint64_t mp_sim_trace_hash(const mp_sim *s);

/* ---- tracing ----------------------------------------------------------------------------- */

typedef enum mp_sim_trace_kind {
    MP_SIM_TRACE_FRAME = 1, /* a frame reached its receiver (to = the receiving side) */
    MP_SIM_TRACE_DROP,      /* a frame was lost (loss, partition, receiver gone) */
    MP_SIM_TRACE_OPEN,      /* a dial reached its target (conn = acceptor's side) */
    MP_SIM_TRACE_DIAL_FAIL, /* conn = dialer's side */
    MP_SIM_TRACE_CLOSE,     /* a side learnt its connection closed (reason) */
    MP_SIM_TRACE_TICK,
    MP_SIM_TRACE_CRASH,
    MP_SIM_TRACE_START,
} mp_sim_trace_kind;

/* Parties are nodes (index) or clients (client index | MP_SIM_CLIENT_BIT);
 * MP_SIM_NONE when there is none. */
#define MP_SIM_CLIENT_BIT 0x80000000u

typedef struct mp_sim_trace {
    mp_sim_trace_kind kind;
    uint64_t time; /* absolute ms */
    uint64_t conn; /* the connection side concerned */
    uint32_t from; /* FRAME, DROP: the sending party */
    uint32_t to;   /* the party concerned */
    mp_kind frame_kind;
    const uint8_t *frame; /* FRAME, DROP: the body (borrowed) */
    size_t len;
    mpreg_err reason; /* CLOSE, DIAL_FAIL */
} mp_sim_trace;

/* Called for every traced happening (NULL = none). Must not call into the
 * simulator. */
void mp_sim_set_trace(mp_sim *s, void (*fn)(void *ud, const mp_sim_trace *t), void *ud);

/* ---- simulated clients ----------------------------------------------------------------- */

/* A client is a program attached to one node over the simulated network
 * (its own connection, same latency, never partitioned from anything unless
 * opened "from" a node's position). It sends HELLO {"role": "client"} at
 * once and may pipeline operations before WELCOME. Each operation gets an
 * index (0, 1, ...) whose record collects every answer the node sent for
 * it, so that a scenario can check "exactly one answer". */

typedef enum mp_sim_op_type {
    MP_SIM_OP_REQUEST = 1, /* RPC_REQUEST -> RPC_REPLY | ERROR */
    MP_SIM_OP_PUBLISH,     /* PUBLISH -> nothing | ERROR */
    MP_SIM_OP_SUBSCRIBE,   /* SUBSCRIBE -> OK {"subscription"} | ERROR */
    MP_SIM_OP_UNSUBSCRIBE, /* UNSUBSCRIBE -> OK | ERROR */
    MP_SIM_OP_REGISTER,    /* REGISTER -> OK | ERROR */
    MP_SIM_OP_CONTROL,     /* CONTROL -> CONTROL_REPLY | ERROR */
    MP_SIM_OP_RAW,         /* any envelope; answers correlated to it are recorded */
} mp_sim_op_type;

typedef struct mp_sim_op {
    mp_sim_op_type type;
    mp_id id;             /* the envelope's id */
    uint64_t sent_ms;     /* absolute */
    uint32_t answers;     /* frames correlated to it (more than one is a bug) */
    uint64_t answered_ms; /* of the first answer */
    mp_kind answer_kind;  /* of the first answer */
    bool ok;              /* the first answer was a success */
    mpreg_err code;       /* else its error code */
    char message[160];    /* and message */
    mpreg_value value;    /* REQUEST: the results map; CONTROL: the reply; NIL otherwise */
    uint64_t sub;         /* SUBSCRIBE: the subscription id */
    uint64_t tag;         /* the caller's own, set by mp_sim_client_tag_op */
} mp_sim_op;

typedef struct mp_sim_delivery {
    uint64_t sub; /* the subscription it came for */
    mp_id id;     /* the published message's id */
    char *topic;  /* NUL-terminated copy */
    uint8_t *data;
    size_t len;
    uint64_t at_ms;
    bool replay;
} mp_sim_delivery;

typedef struct mp_sim_client_stats {
    uint64_t unmatched;    /* correlated answers for no operation of ours */
    uint64_t uncorrelated; /* ERRORs about no message in particular */
    uint64_t invokes;      /* RPC_INVOKEs served */
    uint64_t frames_in;
    uint64_t frames_out;
} mp_sim_client_stats;

/* A worker function: return MPREG_OK with *result set (taken), or an error
 * code (the caller sees it, MPREG_E_HANDLER for "the function failed"). args
 * is an array and kwargs a map, both borrowed. */
typedef mpreg_err (*mp_sim_handler)(void *ud, const mpreg_value *args, const mpreg_value *kwargs,
                                    mpreg_value *result);

/* Opens a client to node `node` (which may be down: the dial then fails).
 * MP_SIM_NONE on a bad index or out of memory. name may be NULL. */
uint32_t mp_sim_client_open(mp_sim *s, uint32_t node, const char *name);
/* The same from node `host`'s network position: partitions between host
 * and node apply (MP_SIM_NONE = no position, as mp_sim_client_open). */
uint32_t mp_sim_client_open_from(mp_sim *s, uint32_t host, uint32_t node, const char *name);
/* Sends GOODBYE and closes. Its records stay readable. */
void mp_sim_client_close(mp_sim *s, uint32_t c);
uint32_t mp_sim_client_count(const mp_sim *s);

bool mp_sim_client_welcomed(const mp_sim *s, uint32_t c); /* WELCOME received */
bool mp_sim_client_closed(const mp_sim *s, uint32_t c);
mpreg_err mp_sim_client_close_reason(const mp_sim *s, uint32_t c);
uint32_t mp_sim_client_node(const mp_sim *s, uint32_t c);

/* Operations: each returns the operation's index, or MP_SIM_NONE when the
 * client is closed or the arguments cannot be encoded. */

/* An RPC_REQUEST of commands (an array of command maps, sent as given:
 * invalid requests get the node's error). timeout_ms 0 = none. */
uint32_t mp_sim_client_request(mp_sim *s, uint32_t c, const mpreg_value *commands,
                               uint32_t timeout_ms);
/* The same from JSON text ("[{\"name\": \"a\", \"fun\": \"echo\", ...}]"). */
uint32_t mp_sim_client_request_json(mp_sim *s, uint32_t c, const char *json, uint32_t timeout_ms);
/* One command named "call": fun(*args). args may be NULL. */
uint32_t mp_sim_client_call(mp_sim *s, uint32_t c, const char *fun, const mpreg_value *args,
                            uint32_t timeout_ms);
uint32_t mp_sim_client_publish(mp_sim *s, uint32_t c, const char *topic, const void *data,
                               size_t len);
/* group may be NULL. The subscription id arrives in the op's `sub`. */
uint32_t mp_sim_client_subscribe(mp_sim *s, uint32_t c, const char *const *patterns, size_t n,
                                 const char *group);
uint32_t mp_sim_client_unsubscribe(mp_sim *s, uint32_t c, uint64_t sub);
/* Registers fun with the node; each RPC_INVOKE for it runs handler and the
 * RPC_RESULT goes back delay_ms later. */
uint32_t mp_sim_client_register(mp_sim *s, uint32_t c, const char *fun, mp_sim_handler handler,
                                void *ud, uint32_t delay_ms);
/* CONTROL with topic = operation ("status", "catalog", ...). */
uint32_t mp_sim_client_control(mp_sim *s, uint32_t c, const char *operation);
/* Any envelope (its id is filled in when zero): for tests of the network
 * and of the node's handling of odd frames. */
uint32_t mp_sim_client_send(mp_sim *s, uint32_t c, mp_envelope *env);
/* Sets the `tag` of an operation (the caller's own bookkeeping). */
void mp_sim_client_tag_op(mp_sim *s, uint32_t c, uint32_t op, uint64_t tag);

uint32_t mp_sim_client_op_count(const mp_sim *s, uint32_t c);
const mp_sim_op *mp_sim_client_op(const mp_sim *s, uint32_t c, uint32_t op);
size_t mp_sim_client_delivery_count(const mp_sim *s, uint32_t c);
const mp_sim_delivery *mp_sim_client_delivery(const mp_sim *s, uint32_t c, size_t k);
void mp_sim_client_get_stats(const mp_sim *s, uint32_t c, mp_sim_client_stats *out);

/* ---- cluster introspection (sim_cluster.c) ---------------------------------------------- */

/* Membership (mp_node_swim) and catalog views over every node that is up,
 * for scenarios. A standalone node (no advertise_addr, no seeds) has no
 * membership: membership checks involving it are false. */
/* Others node i lists as alive (0 when down or without membership). */
size_t mp_sim_alive_seen(mp_sim *s, uint32_t i);
/* Node i's view of node j: 0 = not listed (or unknown), else the state. */
int mp_sim_member_state(mp_sim *s, uint32_t i, uint32_t j);
/* Every up node lists every other up node as alive. */
bool mp_sim_members_converged(mp_sim *s);
/* Every up node other than j lists j as dead or left, or not at all. */
bool mp_sim_all_see_gone(mp_sim *s, uint32_t j);
/* Every up node's catalog has (has_it) / has no (!has_it) function endpoint
 * named fun of node `origin` (MP_SIM_NONE = of any node). */
bool mp_sim_catalogs_function(mp_sim *s, const char *fun, uint32_t origin, bool has_it);
/* Every up node's catalog holds no entry of node j (its descriptor
 * included). */
bool mp_sim_catalogs_forgot(mp_sim *s, uint32_t j);
/* Every up node's catalog has a node descriptor of every other up node. */
bool mp_sim_catalogs_know_all(mp_sim *s);
/* Every up node's catalog has the same mp_catalog_digest. */
bool mp_sim_catalogs_converged(mp_sim *s);
/* How many distinct digests the up nodes' catalogs have (1 = converged). */
size_t mp_sim_catalog_digests(mp_sim *s);

#endif
