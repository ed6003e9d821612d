/* membership.h - SWIM membership with piggybacked dissemination (sans-I/O).
 *
 * One mp_swim per node. It knows the other members of the cluster, probes
 * them to find out which are alive, and spreads two kinds of news through
 * the cluster by gossip:
 *   - member updates (alive / suspect / dead / left, with incarnations);
 *   - opaque "items" the node hands it (catalog deltas): each item is
 *     retransmitted a bounded number of times, piggybacked on probes and on
 *     gossip messages to a few random members.
 * Periodically (and on join) it runs a push-pull exchange with one random
 * member (anti-entropy), digest first: the initiator sends a digest of its
 * member table and a digest of the node's own state (the catalog); the
 * responder sends its member list only when the member digests differ, and
 * its full state only when the state digests differ, and asks for the
 * initiator's in return. A join always exchanges member lists. So at rest
 * a push-pull costs two small messages whatever the cluster size.
 *
 * Failure detection (SWIM, as in memberlist / Lifeguard without the local
 * health multiplier):
 *   - every probe_interval_ms the next member of a shuffled round-robin
 *     list is sent a PING; an ACK within probe_timeout_ms means alive;
 *   - otherwise up to indirect_checks other alive members are asked
 *     (PING_REQ) to ping it on our behalf and forward its ACK;
 *   - no ACK by the end of the probe interval: the member becomes SUSPECT
 *     (broadcast); a suspect that does not refute within the suspicion
 *     timeout, suspicion_mult * max(1, log10(n)) * probe_interval_ms, is
 *     declared DEAD (broadcast);
 *   - a member that hears it is suspected (or declared dead while it is
 *     still running) refutes by raising its incarnation and broadcasting
 *     ALIVE.
 *
 * Precedence of updates about one member: a higher generation always wins
 * (the member restarted: a new process is accepted at once, whatever was
 * said of the old one); within a generation a higher incarnation wins; at
 * the same incarnation DEAD/LEFT > SUSPECT > ALIVE. A member that is dead or
 * left is only revived by an ALIVE with a higher (generation, incarnation).
 *
 * Generation vs incarnation: `generation` is the node's start counter (its
 * catalog entries' incarnation, persisted by the driver in the data dir);
 * `incarnation` is SWIM's refutation counter, starting at 0 in each
 * generation. When a member is declared dead the node records a catalog
 * death for (id, generation).
 *
 * Dissemination: an update or item is queued with a transmit count; each
 * outgoing message (PING, PING_REQ, ACK, GOSSIP) takes the queued news with
 * the fewest transmits first, as many as fit in max_piggyback_bytes, and an
 * item is dropped after retransmit_mult * ceil(log10(n + 1)) transmits.
 * A newer item with the same key replaces an older queued one. Every
 * gossip_interval_ms, when news is queued, a GOSSIP goes to gossip_nodes
 * random members (other than the previous round's when there are enough).
 * So news reaches every member in O(log n) rounds, and at rest a node sends
 * one PING and one ACK per probe interval plus one small push-pull digest
 * per push_pull_interval_ms, whatever n is. A node whose join was answered
 * gossips its own ALIVE too (as memberlist's nodes do).
 *
 * Partitions (as serf/Consul): a DEAD member stays listed for
 * reconnect_timeout_ms (LEFT ones only dead_keep_ms: they said goodbye), and
 * every reconnect_interval_ms a node starts a push-pull with one random DEAD
 * member. If it is in fact running on the far side of a healed partition,
 * the exchanged member lists tell each side that the other holds it dead;
 * both refute (higher incarnation, ALIVE spreads) and the halves merge. In a
 * member list a DEAD about a member listed here alive is taken as SUSPECT
 * (as memberlist does): it gets a suspicion timeout to refute instead of an
 * instant death. When a member comes back from dead (or this node refutes
 * its own death), the next push-pull is brought forward to a few gossip
 * rounds later, with a revived member: what gossip spread while the sides
 * still held each other dead reached one side only. A node that has no
 * alive member and was given seeds retries them every
 * reconnect_interval_ms too.
 *
 * Forgetting: each node drops a gone member its keep time (above) after it
 * heard of the end; hearing it again restarts nothing. A push-pull list
 * never teaches a DEAD or LEFT member this node does not list (as
 * memberlist), so a member one node forgot is not taught back by another
 * that heard later, and the member digest counts live members only, so
 * that such tables still agree.
 *
 * Identity: a node may carry a key (random bytes its driver keeps with its
 * data, so that a restart keeps it and a second process started under the
 * same id elsewhere has another). Member records carry it. Same id, same
 * key: the same node, and the rules above apply (a restart is a newer
 * generation, accepted at once). Same id, another key, while the member is
 * listed alive or suspect: another process claims a live member's id; the
 * claim is refused (never replaces the record), and a message whose sender
 * is such a claimant is refused whole (mp_swim_on_payload says
 * MPREG_E_IDENTITY) so that nothing it says is applied; the delegate's
 * on_conflict hears of it. Once the member is listed dead or left (or
 * forgotten), an ALIVE or SUSPECT with another key takes the id over as a
 * new process would, whatever its generation (a replacement for a node
 * whose data was lost). A record without a key (a sender that has none) is
 * judged by the other rules alone. The key is not authentication: it
 * travels in clear, so it tells honest processes apart (a second daemon
 * started by mistake), not an attacker (the cluster token keeps those out).
 *
 * Addresses: members are addressed by id; each also has an address
 * ("host:port") the driver dials. The join seeds are bare addresses (ids
 * unknown): a push-pull to a seed goes out with to_id NULL.
 *
 * Lifetimes: strings in outputs and events are borrowed and valid until the
 * next call on the same mp_swim. All input bytes are validated; a bad
 * message is refused with an error and changes nothing. */
#ifndef MP_MEMBERSHIP_H
#define MP_MEMBERSHIP_H

#include "core/buf.h"
#include "core/rng.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_SWIM_MAX_ID 255            /* member ids and addresses, bytes */
#define MP_SWIM_MAX_MEMBERS 100000    /* a member list longer than this is refused */
#define MP_SWIM_MAX_ITEM 65536        /* one disseminated item, bytes */
#define MP_SWIM_MAX_STATE (64u << 20) /* one push-pull state blob, bytes */
#define MP_SWIM_MAX_KEY 32            /* a member's identity key, bytes */

typedef enum mp_member_state {
    MP_MEMBER_ALIVE = 1,
    MP_MEMBER_SUSPECT = 2,
    MP_MEMBER_DEAD = 3,
    MP_MEMBER_LEFT = 4, /* left gracefully: like DEAD, but said by itself */
} mp_member_state;

const char *mp_member_state_name(mp_member_state s); /* "alive", "suspect", ... */

/* Defaults (mp_swim_config_default) are memberlist's LAN profile, except
 * retransmit_mult (6, memberlist has 4: items carry catalog changes, worth
 * more than membership chatter; on 8 nodes at 4 about 1 change in 20 (1 in
 * 35 with the distinct gossip targets) failed to reach every node within
 * 2 s, and the one that missed it waited for a push-pull; at 6 none of 2000
 * did, see test_membership.c) and the two reconnect fields, which are
 * serf's idea (serf's reconnect_interval is 30 s, its reconnect_timeout
 * 24 h; Consul uses 72 h). */
typedef struct mp_swim_config {
    uint32_t probe_interval_ms;     /* 1000 */
    uint32_t probe_timeout_ms;      /* 500 */
    uint32_t indirect_checks;       /* 3 */
    uint32_t suspicion_mult;        /* 4 */
    uint32_t retransmit_mult;       /* 6 */
    uint32_t gossip_interval_ms;    /* 200 */
    uint32_t gossip_nodes;          /* 3 */
    uint32_t push_pull_interval_ms; /* 30000 */
    /* 60000: how long a LEFT member stays listed after this node heard it
     * left (the name is historical; DEAD ones stay reconnect_timeout_ms). */
    uint32_t dead_keep_ms;
    uint32_t max_piggyback_bytes; /* 16384: news per outgoing message */
    /* 21 600 000 (6 h): how long DEAD members stay listed (and are tried
     * again). 1 ms .. 30 days. */
    uint32_t reconnect_timeout_ms;
    /* 10000: a push-pull with one random DEAD member, and the seeds again
     * when no member is alive, this often. 1 ms .. 1 day. */
    uint32_t reconnect_interval_ms;
} mp_swim_config;

void mp_swim_config_default(mp_swim_config *cfg);
/* Checks every field is in a sane range (e.g. probe_timeout_ms <
 * probe_interval_ms, intervals >= 1 ms, gossip_nodes >= 1, the reconnect
 * fields >= 1 ms); *why names the field. Zero fields are NOT defaulted: call
 * mp_swim_config_default first (a config from before the reconnect fields
 * existed, with them 0, is refused, not silently given a default). */
mpreg_err mp_swim_config_check(const mp_swim_config *cfg, const char **why);
/* The same, and msg (msg_len bytes, may be NULL) says what the field must
 * satisfy: its range ("... must be from 1 to 3600000"), or the other field
 * it is tied to ("probe_timeout_ms=2000 must be below probe_interval_ms=1000
 * ..."), so that an operator can fix the setting without the source. */
mpreg_err mp_swim_config_explain(const mp_swim_config *cfg, const char **why, char *msg,
                                 size_t msg_len);

/* A member as the table holds it (borrowed view). */
typedef struct mp_member {
    const char *id;
    const char *addr;
    uint64_t generation;
    uint64_t incarnation;
    mp_member_state state;
    uint64_t since_ms;  /* when it entered this state */
    const uint8_t *key; /* its identity key; NULL (key_len 0) when none was said */
    size_t key_len;
} mp_member;

typedef enum mp_member_event_kind {
    /* First seen alive, or alive again after dead/left, or a new generation. */
    MP_MEMBER_JOINED = 1,
    MP_MEMBER_SUSPECTED,
    MP_MEMBER_RECOVERED, /* suspect -> alive (refuted) */
    MP_MEMBER_DIED,
    MP_MEMBER_LEFT_EV,
    MP_MEMBER_UPDATED, /* address changed (same generation) */
} mp_member_event_kind;

/* What the node does for the membership; all callbacks required. They are
 * called synchronously from mp_swim_* calls and must not call back into
 * the same mp_swim. */
typedef struct mp_swim_delegate {
    void *ud;
    /* An item arrived by gossip. Return true when it was news (the node
     * applied something new): it is then queued for retransmission here
     * too, which is what spreads it epidemically. Stale or bad items: false. */
    bool (*on_item)(void *ud, const uint8_t *data, size_t len, const char *from_id);
    /* A member changed state (never called about this node itself). */
    void (*on_member)(void *ud, mp_member_event_kind ev, const mp_member *m);
    /* The digest of the node's own state (order-independent, e.g. the
     * catalog digest) and its full encoding, for push-pull. */
    uint64_t (*state_digest)(void *ud);
    mpreg_err (*state_encode)(void *ud, mp_buf *out);
    /* A peer's full state arrived in a push-pull (already length-checked). */
    void (*state_merge)(void *ud, const uint8_t *data, size_t len, const char *from_id);
    /* Optional (NULL: not told). A claim to be `listed` (a member listed
     * alive or suspect, or this node itself) with another identity key was
     * refused. claimant is what the claim said (its address, generation,
     * key); by_itself is true when the claimant sent the message itself
     * (the whole message was refused), false for a record that a member
     * passed on. */
    void (*on_conflict)(void *ud, const mp_member *listed, const mp_member *claimant,
                        bool by_itself);
} mp_swim_delegate;

/* One message to send: the driver sends payload (a GOSSIP envelope's
 * payload) to member to_id, dialing to_addr when it has no connection.
 * to_id is NULL for a seed known only by address. */
typedef struct mp_swim_send {
    const char *to_id;
    const char *to_addr;
    const uint8_t *payload;
    size_t len;
} mp_swim_send;

typedef struct mp_swim mp_swim;

typedef struct mp_swim_self {
    const char *id;   /* this node's id, 1..MP_SWIM_MAX_ID bytes */
    const char *addr; /* the address others dial, "host:port"; NULL or "" = not dialable */
    uint64_t generation;
    const uint8_t *key; /* identity key, 0..MP_SWIM_MAX_KEY bytes (0: none) */
    size_t key_len;
} mp_swim_self;

/* NULL on a bad config/self or out of memory. rng is borrowed. */
mp_swim *mp_swim_new(const mp_swim_config *cfg, const mp_swim_self *self, const mp_swim_delegate *d,
                     mp_rng *rng, uint64_t now_ms);
void mp_swim_free(mp_swim *s);

/* Starts a push-pull with the member at addr (a seed): once it answers,
 * this node knows its members and they learn of this node. Can be called
 * for several seeds; a seed that does not answer is retried every
 * probe_interval_ms * 2 until one seed answered (any one live member is
 * enough). Later, whenever no member is listed alive, the seeds are tried
 * again every reconnect_interval_ms. */
mpreg_err mp_swim_join(mp_swim *s, const char *addr, uint64_t now_ms);
/* Broadcasts LEFT about this node (queued news goes out on the next
 * messages; the driver keeps ticking for about a gossip round before it
 * closes). After leave the node stops probing. */
void mp_swim_leave(mp_swim *s, uint64_t now_ms);

/* Queues an item for dissemination. key (may be NULL) identifies what the
 * item is about: a queued item with the same key is replaced. */
mpreg_err mp_swim_broadcast(mp_swim *s, const char *key, const uint8_t *data, size_t len);

/* A GOSSIP payload from a peer connection. from_conn_id is informative
 * only (the message names its sender). MPREG_E_DECODE / _INVALID /
 * _TOO_LARGE on bad bytes, MPREG_E_IDENTITY when the sender claims the id
 * of a live member (or of this node) with another key: nothing changes. */
mpreg_err mp_swim_on_payload(mp_swim *s, const uint8_t *data, size_t len, uint64_t now_ms);
/* The connection to member id broke or could not be made: a probe in
 * flight to it fails now instead of waiting for its timeout (a hint, not a
 * verdict: the member still gets indirect probes). */
void mp_swim_unreachable(mp_swim *s, const char *id, uint64_t now_ms);

void mp_swim_tick(mp_swim *s, uint64_t now_ms);
uint64_t mp_swim_next_wakeup(const mp_swim *s);

/* Takes the next message to send; false when none. The view is valid
 * until the next call on s. */
bool mp_swim_next_send(mp_swim *s, mp_swim_send *out);

/* --- introspection --------------------------------------------------------- */
/* Others, not self: at most MP_SWIM_MAX_MEMBERS - 1 are listed (the member
 * list with self must fit a message). When the table is full, a new alive
 * member takes the place of the member that has been dead or left longest;
 * news of a dead or left stranger is then not recorded. */
size_t mp_swim_member_count(const mp_swim *s, bool alive_only);
/* Visits every listed member (self first, then others by id, dead and left
 * ones included) while visit returns true. alive_only above counts
 * MP_MEMBER_ALIVE members only. */
void mp_swim_each(const mp_swim *s, bool (*visit)(void *ud, const mp_member *m), void *ud);
bool mp_swim_find(const mp_swim *s, const char *id, mp_member *out);
/* Would a process that says it is `id` with key (len 0: none) be refused?
 * True when id is this node's or a member's listed alive or suspect, with
 * a key, and key is another one; *holder (may be NULL) then gets the
 * listed member (this node itself when id is ours). For a peer's HELLO. */
bool mp_swim_identity_conflict(const mp_swim *s, const char *id, const uint8_t *key, size_t key_len,
                               mp_member *holder);
uint64_t mp_swim_incarnation(const mp_swim *s);
size_t mp_swim_queued(const mp_swim *s); /* news waiting for transmission */
/* News waiting for transmission is bounded: past this many pieces the
 * oldest catalog item is dropped (push-pull repairs what it carried), so a
 * client that churns subscriptions cannot grow the queue without bound. */
#define MP_SWIM_MAX_NEWS 2048u
/* The digest of the member table that push-pull compares (PROTOCOL §12.9):
 * equal on two nodes that list the same alive and suspect members (self
 * included unless it left) with the same address, generation, incarnation
 * and state; dead and left members do not count. */
uint64_t mp_swim_members_digest(const mp_swim *s);

typedef struct mp_swim_stats {
    uint64_t msgs_sent;
    uint64_t bytes_sent;
    uint64_t msgs_received;
    uint64_t bytes_received;
    uint64_t probes;
    uint64_t indirect_probes;
    uint64_t suspicions; /* members this node suspected */
    uint64_t refutations;
    uint64_t push_pulls;       /* started (join included) or answered */
    uint64_t full_state_syncs; /* push-pulls whose state digests differed */
    uint64_t bad_messages;
    uint64_t member_syncs;       /* push-pulls (not joins) whose member digests differed */
    uint64_t reconnects;         /* push-pulls started with a DEAD member */
    uint64_t stale_sync_replies; /* duplicated or unsolicited answers, not used */
    uint64_t identity_conflicts; /* claims refused: a live member's id with another key */
} mp_swim_stats;
void mp_swim_get_stats(const mp_swim *s, mp_swim_stats *out);

#endif
