/* sim_internal.h - what the simulator's files share, and nobody else sees.
 *
 *   sim.c         lifecycle, the event loop, node slots (start, crash,
 *                 restart), ticks, the mp_node_io callbacks, statistics
 *   sim_heap.c    the event queue: a binary heap ordered by (time, seq)
 *   sim_net.c     the virtual network: connections, dials, frames, faults,
 *                 partitions, closes
 *   sim_client.c  simulated clients
 *   sim_cluster.c membership and catalog views for scenarios
 *
 * Ownership: the simulator owns node slots (and their mp_node), endpoints
 * (one per side of a connection, by id in `eps`), clients and events.
 * Events name endpoints by id, never by pointer, and every call into a node
 * may close endpoints: after one, look the endpoint up again. */
#ifndef MP_SIM_INTERNAL_H
#define MP_SIM_INTERNAL_H

#include "sim/sim.h"

#include "core/buf.h"
#include "core/frame.h"
#include "core/heap.h"
#include "core/map.h"
#include "core/rng.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_SIM_KINDS 128 /* envelope kinds counted per node (all known ones are < 128) */

/* --- intrusive lists ---------------------------------------------------------- */

typedef struct mp_sim_link {
    struct mp_sim_link *prev;
    struct mp_sim_link *next;
} mp_sim_link;

#define MP_SIM_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void mp_sim_list_init(mp_sim_link *h) {
    h->prev = h->next = h;
}
static inline bool mp_sim_list_empty(const mp_sim_link *h) {
    return h->next == h;
}
static inline void mp_sim_list_push(mp_sim_link *h, mp_sim_link *l) {
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}
static inline void mp_sim_list_remove(mp_sim_link *l) {
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

/* --- events (sim_heap.c) ------------------------------------------------------------ */

typedef enum mp_sim_ev_type {
    MP_SIM_EV_ACTION = 1, /* ptr: mp_sim_action (scenario callback or client reply) */
    MP_SIM_EV_TICK,       /* node; a = due; b = node generation */
    MP_SIM_EV_CONNECT,    /* a = dialer side; node = target */
    MP_SIM_EV_DIAL_FAIL,  /* a = dialer side */
    MP_SIM_EV_FRAME,      /* a = receiving side; b = sending side; ptr/len: the body; aux: kind */
    MP_SIM_EV_PEER_CLOSE, /* a = side told; aux = reason */
    MP_SIM_EV_OWN_CLOSE,  /* node, b = generation; a = side the node closed; aux = reason */
    MP_SIM_EV_BREAK,      /* a = one side of a connection across a partition */
    MP_SIM_EV_RESUME,     /* a = side whose reading resumed: drain its inbox */
    MP_SIM_EV_WRITABLE,   /* node, b = generation; a = side that drained */
} mp_sim_ev_type;

typedef struct mp_sim_event {
    uint64_t time;
    uint64_t seq;
    uint64_t a;
    uint64_t b;
    void *ptr;
    uint32_t len;
    uint32_t node;
    uint16_t type;
    uint16_t aux;
} mp_sim_event;

/* The event queue: core/heap.h over events by value, earliest (time, seq)
 * first (sim_heap.c). */
void mp_sim_heap_init(mp_heap *h);

typedef struct mp_sim_action {
    mp_sim_fn fn;
    void *ud;
    /* client replies: the client, its side, and the frame to send */
    uint32_t client;
    uint64_t ep;
    mp_buf frame;
} mp_sim_action;

/* --- endpoints: one side of a connection (sim_net.c) -------------------------------- */

typedef enum mp_sim_owner {
    MP_SIM_OWNER_NODE = 1,
    MP_SIM_OWNER_CLIENT,
} mp_sim_owner;

typedef enum mp_sim_ep_state {
    MP_SIM_EP_CONNECTING = 1, /* dialer side before the target accepted */
    MP_SIM_EP_OPEN,
} mp_sim_ep_state;

/* A frame that arrived while its receiver was not reading. */
typedef struct mp_sim_inframe {
    struct mp_sim_inframe *next;
    uint64_t from; /* sending side, for its in-flight count */
    uint8_t *data;
    uint32_t len;
    mp_kind kind;
} mp_sim_inframe;

typedef struct mp_sim_ep {
    uint64_t id;
    uint64_t peer;      /* the other side; 0 while connecting */
    uint32_t host;      /* network position (node index) or MP_SIM_NONE */
    uint32_t peer_host; /* the other side's */
    mp_sim_owner owner_kind;
    uint32_t owner; /* node or client index */
    mp_sim_ep_state state;
    bool reading;
    bool resume_pending;
    bool over;          /* said over high water: owes the owner a writable */
    bool lost;          /* lost a frame to a partition: the stream is broken */
    bool break_pending; /* a BREAK event is scheduled */
    uint64_t dialed_ms;
    char addr[MP_SIM_ADDR_MAX + 8]; /* how the other side sees this side */
    mp_buf out;                     /* the owner appends frames here */
    mp_frame_decoder cutter;        /* cuts out into frames */
    uint64_t last_arrival;          /* order of the direction this -> peer */
    uint64_t inflight;              /* bytes sent, not yet read by the peer's owner */
    mp_sim_inframe *inbox;
    mp_sim_inframe *inbox_tail;
    mp_sim_link owner_link; /* in the node slot's eps (nodes only) */
    mp_sim_link all_link;   /* in sim->all_eps */
} mp_sim_ep;

/* --- node slots and clients ------------------------------------------------------------ */

typedef struct mp_sim_slot {
    mp_sim *sim;
    uint32_t index;
    mp_node *node; /* NULL while down */
    char id[MP_SIM_ID_MAX];
    char addr[MP_SIM_ADDR_MAX];
    uint64_t incarnation;
    uint8_t key[16]; /* identity key: kept by a restart with data, new without */
    uint32_t keys;   /* keys drawn so far */
    uint32_t starts;
    uint64_t gen;   /* grows at every start and crash: older events are stale */
    uint64_t armed; /* the tick scheduled as current; UINT64_MAX = none */
    mp_xoshiro rng;
    mp_sim_link eps;
    size_t ep_count;
    uint32_t group; /* partition side */
    const char **seeds;
    uint32_t seed_count;
    mp_sim_kind_stats kinds[MP_SIM_KINDS];
} mp_sim_slot;

typedef struct mp_sim_worker_fn {
    char *name;
    mp_sim_handler fn;
    void *ud;
    uint32_t delay_ms;
} mp_sim_worker_fn;

typedef struct mp_sim_client {
    uint32_t index;
    uint32_t node;
    uint32_t host;
    char name[64];
    uint64_t ep; /* 0 once closed */
    bool welcomed;
    bool closed;
    mpreg_err close_reason;
    mp_id hello_id;
    mp_xoshiro rng;
    mp_sim_op *ops;
    uint32_t op_len;
    size_t op_cap;
    mp_map op_by_id; /* message id -> op index + 1 */
    mp_sim_delivery *dels;
    size_t del_len;
    size_t del_cap;
    mp_sim_worker_fn *fns;
    size_t fn_len;
    mp_sim_client_stats stats;
} mp_sim_client;

/* --- the simulator ------------------------------------------------------------------------ */

struct mp_sim {
    mp_sim_config cfg;
    uint64_t now; /* absolute ms */
    uint64_t seq;
    mp_heap heap;
    mp_xoshiro net_rng;
    mp_sim_slot *nodes;
    uint32_t node_count;
    const char **addrs;
    mp_map by_addr; /* address -> index + 1 */
    mp_map by_id;   /* node id -> index + 1 */
    /* endpoints by id (ids are never reused; slot NULL once gone) */
    mp_sim_ep **eps;
    size_t ep_cap;
    uint64_t next_ep;
    mp_sim_link all_eps;
    mp_sim_client **clients;
    uint32_t client_len;
    size_t client_cap;
    mp_sim_stats stats;
    uint64_t hash;
    void (*trace)(void *ud, const mp_sim_trace *t);
    void *trace_ud;
};

/* sim.c */
/* An independent seed per (what, which) stream. */
uint64_t mp_sim_derive_seed(uint64_t seed, uint64_t what, uint64_t which);
mpreg_err mp_sim_schedule(mp_sim *s, mp_sim_event *ev); /* fills seq; ev->time >= now */
void mp_sim_hash_mix(mp_sim *s, uint64_t v);
void mp_sim_hash_bytes(mp_sim *s, const uint8_t *data, size_t len);
void mp_sim_emit(mp_sim *s, const mp_sim_trace *t);
/* After any input to node i: point its tick at mp_node_next_wakeup. */
void mp_sim_rearm(mp_sim *s, uint32_t i);
/* The party number of an endpoint's owner, for traces. */
uint32_t mp_sim_party(const mp_sim_ep *ep);

/* sim_net.c */
mp_sim_ep *mp_sim_ep_get(const mp_sim *s, uint64_t id);
uint64_t mp_sim_net_dial(mp_sim *s, mp_sim_owner kind, uint32_t owner, uint32_t host,
                         const char *from_addr, uint32_t target);
/* Sends what the owner appended to ep->out (held while connecting). */
void mp_sim_net_commit(mp_sim *s, mp_sim_ep *ep);
/* The owner closes its side (frames already committed go first when
 * flush). The owner is not told: callers report that themselves. */
void mp_sim_net_close(mp_sim *s, mp_sim_ep *ep, bool flush);
void mp_sim_net_set_reading(mp_sim *s, mp_sim_ep *ep, bool reading);
bool mp_sim_net_over(mp_sim *s, mp_sim_ep *ep, uint64_t mark);
/* Node i crashed: its sides go, peers hear of it one latency later. */
void mp_sim_net_crash(mp_sim *s, uint32_t i);
/* Partition changed: schedule breaks of connections now across it. */
void mp_sim_net_repartition(mp_sim *s);
/* Runs a network event; takes ev->ptr when it keeps it (sets it NULL). */
void mp_sim_net_run(mp_sim *s, mp_sim_event *ev);
void mp_sim_net_free(mp_sim *s);
/* Removes and frees a side (its owner is not told). */
void mp_sim_ep_remove(mp_sim *s, mp_sim_ep *ep);
bool mp_sim_hosts_reachable(const mp_sim *s, uint32_t a, uint32_t b);

/* sim_client.c */
void mp_sim_client_on_frame(mp_sim *s, uint32_t c, const uint8_t *frame, size_t len);
void mp_sim_client_on_close(mp_sim *s, uint32_t c, mpreg_err reason);
void mp_sim_client_run_action(mp_sim *s, mp_sim_action *a);
void mp_sim_clients_free(mp_sim *s);

/* Tells a node slot or a client what happened on one of its sides. */
void mp_sim_node_frame(mp_sim *s, uint32_t i, uint64_t conn, const uint8_t *frame, size_t len);
void mp_sim_node_closed(mp_sim *s, uint32_t i, uint64_t conn, mpreg_err reason);
void mp_sim_node_opened(mp_sim *s, uint32_t i, uint64_t conn, const char *peer_addr);

#endif
