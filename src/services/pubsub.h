/* pubsub.h - the node-local pub/sub service, as a sans-I/O state machine.
 *
 * The service holds the subscriptions of one node's connections and decides,
 * for each published message, which of them receive it. It does no I/O: a
 * message comes in as an argument with the current time, and every delivery
 * goes out through the `deliver` hook, synchronously, before the call that
 * caused it returns. The node turns deliveries into DELIVER frames
 * (mp_pubsub_deliver_frame, or mp_pubsub_deliver_envelope and the envelope
 * encoder) and interest changes into catalog entries.
 *
 * Subscriptions. A subscription belongs to an owner (the node uses the
 * connection id: subscriptions die with their connection through
 * mp_pubsub_remove_owner), has an id assigned here (1, 2, 3, ... in
 * subscription order, never reused), a client-chosen tag echoed in every
 * delivery, 1..MP_PUBSUB_MAX_PATTERNS patterns (topic.h syntax; identical
 * patterns collapse), an optional queue group and an optional replay
 * request. A subscription receives a matching message once, however many of
 * its patterns match it.
 *
 * Delivery order. The deliveries of one publish are emitted in ascending
 * subscription id, i.e. oldest subscription first.
 *
 * Queue groups (NATS semantics). Groups are named service-wide, across
 * owners and patterns. Of the subscriptions that match a message, the
 * ungrouped ones all receive it, and each group present among them gives it
 * to exactly one of its matching members. Two members of group "g" with
 * patterns "a.*" and "a.b" therefore compete for "a.b", and the first alone
 * gets "a.c". The member is chosen round robin: the group remembers the id
 * of the member it chose last and takes the matching member with the
 * smallest id above it, wrapping around to the smallest. Members whose owner
 * is not accepting are skipped when at least one accepting member matches;
 * when none does, the rule picks among all matching members and that
 * delivery is dropped (and counted on the member). With every member
 * matching, messages go to the members in turn, in subscription order.
 *
 * Filtered publishing. In a cluster a queue group spans the nodes: the
 * routing engine picks, per message, the one node whose members of a group
 * get it (engine.h, mp_engine_plan_publish), and each node is told which
 * parts of a message are its to deliver: its ungrouped subscriptions or
 * not, and which groups (mp_pubsub_publish_filtered; between nodes, the
 * "mp-deliver" header below). A group left out keeps its round-robin
 * cursor where it was. mp_pubsub_publish delivers every part, as a single
 * node does.
 *
 * Flow control (the slow-consumer policy). The node marks an owner as not
 * accepting (mp_pubsub_set_accepting) when its connection's send buffer is
 * full. Deliveries to its ungrouped subscriptions are then dropped and
 * counted per subscription (mp_pubsub_sub_stats_get), never queued here:
 * pub/sub does not buffer for a slow consumer, it tells the user how much
 * it lost. The deliver hook may drop a delivery as well (the node finds
 * the connection full while writing): it returns false, and the delivery
 * is counted as dropped, not delivered, exactly as if the owner had not
 * been accepting. Each subscription also counts what it missed since its
 * last delivery, and hands that number to the next delivery it gets
 * (mp_pubsub_delivery.missed): how the subscriber learns, from the stream
 * itself, that messages were dropped for it (DELIVER's "missed" header).
 *
 * Replay. With retain_per_topic > 0 the service keeps, for each topic (exact
 * topic, not pattern), the last retain_per_topic messages published to it:
 * id, topic, payload and publish time, not headers. All retained messages
 * share a byte budget (retain_max_bytes, counting topic + payload bytes);
 * when it is exceeded the oldest retained message of any topic goes first.
 * A message larger than the whole budget is not retained. A subscription
 * may ask for the retained messages matching its patterns: the last N of
 * them (`last`), those published at or after a time (`since_ms`), or both
 * (the last N of those published since). They are delivered oldest first,
 * marked `replay`, by mp_pubsub_replay, which the node calls right after it
 * has sent the OK that names the new subscription id, so that a client
 * knows the id before the first DELIVER carrying it. A replay still pending
 * when the next message is published is flushed first, so replayed
 * messages always come before live ones. Replay is per subscription: a group
 * member gets its replay whatever the group, and the group rule applies to
 * live messages only.
 *
 * Duplicates. Every accepted message id is remembered for a window (at most
 * dedupe_max_ids ids and/or dedupe_window_ms milliseconds from the first
 * time it was seen); a message whose id is remembered is ignored and
 * counted as a duplicate. That is what makes cross-node delivery
 * exactly-once on meshes where a message may arrive twice. The zero id means
 * "no id" and is never deduplicated.
 *
 * Interest. The service counts, per distinct (pattern, group) pair, the
 * subscriptions holding it, group "" standing for the ungrouped ones;
 * on_interest fires when a pair gains its first subscription or loses its
 * last, and mp_pubsub_each_pattern lists the live ones, for the catalog's
 * topic entries (one per pair: entry.h).
 *
 * Hooks run synchronously and must not call back into the service, with
 * one exception: the deliver hook may pass its delivery to
 * mp_pubsub_deliver_frame. */
#ifndef MP_PUBSUB_H
#define MP_PUBSUB_H

#include "core/buf.h"
#include "core/envelope.h"
#include "core/id.h"
#include "core/str.h"
#include "mpreg/error.h"
#include "mpreg/value.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_PUBSUB_MAX_PATTERNS 64 /* patterns in one subscription */
#define MP_PUBSUB_MAX_TAG 255     /* tag bytes */
#define MP_PUBSUB_MAX_GROUP 255   /* queue group name bytes */
/* Headers a published message may carry: DELIVER adds "sub", "tag" and
 * "replay" or "missed" (a replay carries no message headers, so "missed"
 * on a replay still fits), and an envelope holds MP_MAX_HEADERS. */
#define MP_PUBSUB_MAX_MSG_HEADERS (MP_MAX_HEADERS - 3)
/* Room for a subscription id in decimal and its NUL. */
#define MP_PUBSUB_SUB_TEXT 21

typedef struct mp_pubsub mp_pubsub;

typedef struct mp_pubsub_config {
    uint32_t retain_per_topic; /* messages kept per topic; 0 = no retention */
    size_t retain_max_bytes;   /* budget over all retained topic + payload bytes */
    size_t dedupe_max_ids;     /* ids remembered; 0 = no count limit */
    uint64_t dedupe_window_ms; /* how long an id is remembered; 0 = no time limit */
} mp_pubsub_config;            /* dedupe_max_ids = dedupe_window_ms = 0: no dedupe */

#define MP_PUBSUB_DEFAULT_RETAIN_BYTES (64u * 1024u * 1024u)
#define MP_PUBSUB_DEFAULT_DEDUPE_IDS 100000u
#define MP_PUBSUB_DEFAULT_DEDUPE_WINDOW_MS 120000u

/* No retention; 64 MiB retention budget; 100 000 ids / 2 minutes of dedupe. */
void mp_pubsub_config_default(mp_pubsub_config *cfg);

/* A message, borrowed for the duration of a call. */
typedef struct mp_pubsub_message {
    mp_id id; /* the dedupe key; zero = none */
    mp_str topic;
    mp_bytes payload; /* opaque: never parsed */
    const mp_header *headers;
    size_t header_count; /* at most MP_PUBSUB_MAX_MSG_HEADERS */
} mp_pubsub_message;

/* One message for one subscription. Everything is borrowed and valid only
 * during the deliver call. A replayed message has no headers. */
typedef struct mp_pubsub_delivery {
    uint64_t owner;
    uint64_t sub;
    mp_str tag;
    const mp_pubsub_message *msg;
    uint64_t published_ms; /* the time given to mp_pubsub_publish */
    bool replay;           /* from retention, not live */
    /* The message's number in this service: every delivery of one publish,
     * or of one replayed message, has the same, and no other does. */
    uint64_t seq;
    /* The subscription's "sub" and "tag" DELIVER headers, MessagePack
     * encoded when it subscribed, for mp_pubsub_deliver_frame. */
    mp_bytes sub_headers;
    void *owner_ud; /* the subscription's spec.owner_ud */
    /* Messages dropped for this subscription since its previous delivery
     * (0 almost always): the DELIVER's "missed" header. */
    uint64_t missed;
} mp_pubsub_delivery;

typedef struct mp_pubsub_hooks {
    void *ud;
    /* Makes the delivery; false when it could not (the connection is full):
     * the service then counts it as dropped, and its `missed` as still
     * owed to the next delivery. May be NULL (every delivery made). */
    bool (*deliver)(void *ud, const mp_pubsub_delivery *d);
    /* (pattern, group) gained its first subscription (added) or lost its
     * last; group is empty for ungrouped subscriptions. May be NULL. */
    void (*on_interest)(void *ud, mp_str pattern, mp_str group, bool added);
} mp_pubsub_hooks;

/* cfg NULL = defaults; hooks NULL = none. Returns NULL when out of memory. */
mp_pubsub *mp_pubsub_new(const mp_pubsub_config *cfg, const mp_pubsub_hooks *hooks);
void mp_pubsub_free(mp_pubsub *ps);

/* --- subscriptions ---------------------------------------------------------- */

typedef struct mp_pubsub_replay_opts {
    bool has_last;
    uint64_t last; /* the last `last` matching retained messages */
    bool has_since;
    uint64_t since_ms; /* retained messages published at or after since_ms */
} mp_pubsub_replay_opts;

typedef struct mp_pubsub_sub_spec {
    uint64_t owner;
    mp_str tag;   /* <= MP_PUBSUB_MAX_TAG bytes, no NUL; may be empty */
    mp_str group; /* empty = ungrouped; <= MP_PUBSUB_MAX_GROUP bytes, no NUL */
    const mp_str *patterns;
    size_t pattern_count; /* 1 .. MP_PUBSUB_MAX_PATTERNS */
    mp_pubsub_replay_opts replay;
    /* Opaque, handed back in every delivery to the subscription, so that a
     * caller need not look its owner up per delivery (the node passes the
     * connection, which outlives its subscriptions). May be NULL. */
    void *owner_ud;
} mp_pubsub_sub_spec;

/* Adds a subscription and returns its id in *sub. Errors, with nothing
 * changed: MPREG_E_TOPIC for a bad pattern, MPREG_E_INVALID for no pattern
 * or a NUL in tag or group, MPREG_E_TOO_LARGE for too many patterns or a
 * tag or group over its limit, MPREG_E_NOMEM. Fires on_interest for each
 * pattern it is the first to hold in its group. A requested replay is left pending for
 * mp_pubsub_replay; nothing is delivered here. */
mpreg_err mp_pubsub_subscribe(mp_pubsub *ps, const mp_pubsub_sub_spec *spec, uint64_t *sub);

/* Delivers the pending replay of sub (see the top of this file) and returns
 * how many messages it handed to the deliver hook. 0 when the subscription
 * is unknown or has nothing pending; a replay happens at most once. */
size_t mp_pubsub_replay(mp_pubsub *ps, uint64_t sub);

/* Ends a subscription of owner. MPREG_E_NOT_FOUND when owner holds no
 * subscription with that id (a connection may only end its own). Fires
 * on_interest for each pattern it was the last to hold in its group. */
mpreg_err mp_pubsub_unsubscribe(mp_pubsub *ps, uint64_t owner, uint64_t sub);

/* Ends every subscription of owner and forgets its accepting flag (a closed
 * connection). Returns how many subscriptions ended. */
size_t mp_pubsub_remove_owner(mp_pubsub *ps, uint64_t owner);

/* Marks owner as (not) accepting deliveries. Owners accept by default; the
 * flag sticks until changed or mp_pubsub_remove_owner. MPREG_E_NOMEM only
 * when an owner with no subscription is marked not accepting. */
mpreg_err mp_pubsub_set_accepting(mp_pubsub *ps, uint64_t owner, bool accepting);
bool mp_pubsub_is_accepting(const mp_pubsub *ps, uint64_t owner);

/* --- publishing ------------------------------------------------------------- */

typedef struct mp_pubsub_result {
    size_t delivered; /* deliveries the deliver hook made (live ones) */
    size_t dropped;   /* deliveries dropped: owner not accepting, or the hook said no */
    bool duplicate;   /* id seen within the window: ignored, nothing else done */
    bool retained;    /* kept for replay */
} mp_pubsub_result;

/* Publishes msg at now_ms: checks it, ignores it when its id is a duplicate,
 * otherwise remembers its id, retains it (when retention is on), flushes
 * pending replays and delivers it. MPREG_E_TOPIC for a bad topic,
 * MPREG_E_TOO_LARGE for more than MP_PUBSUB_MAX_MSG_HEADERS headers,
 * MPREG_E_NOMEM (nothing delivered or remembered); a duplicate is MPREG_OK
 * with res->duplicate. res may be NULL. A node forwards a message to other
 * nodes only when it was not a duplicate. */
mpreg_err mp_pubsub_publish(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                            mp_pubsub_result *res);

/* Which parts of a message a publish delivers (see "Filtered publishing"). */
typedef struct mp_pubsub_filter {
    bool plain;           /* the ungrouped subscriptions get it */
    bool all_groups;      /* every group gives it to a member; else only... */
    const mp_str *groups; /* ...these groups (names; a name twice counts once) */
    size_t group_count;
} mp_pubsub_filter;

/* mp_pubsub_publish delivering only the parts f names (f NULL = all of
 * them). Everything else is the same: the checks, the dedupe (a message is
 * one id, whatever part of it a node delivers), retention, replay. */
mpreg_err mp_pubsub_publish_filtered(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                                     const mp_pubsub_filter *f, mp_pubsub_result *res);

/* A hint, with no effect on the service's state: a publish of id is coming.
 * It starts fetching the line of the dedupe set that publish will look at,
 * so that the cache miss (the set outgrows the caches) overlaps whatever
 * the caller does first. */
void mp_pubsub_prefetch(const mp_pubsub *ps, const mp_id *id);

/* True when a subscription of this service matches topic (a valid topic).
 * Answered, like publishing, from a small cache of recent topics' matches,
 * so asking before publishing costs little. */
bool mp_pubsub_matches(mp_pubsub *ps, mp_str topic);

/* Forgets message ids older than the dedupe window. Publishing does this as
 * well; a timer calling it keeps memory low on a quiet node. */
void mp_pubsub_expire(mp_pubsub *ps, uint64_t now_ms);

/* --- statistics and interest ------------------------------------------------ */

typedef struct mp_pubsub_sub_stats {
    uint64_t delivered; /* live and replayed */
    uint64_t dropped;   /* not accepting at the time, or dropped by the hook */
    uint64_t missed;    /* of those, dropped since its last delivery */
    uint32_t patterns;  /* its distinct patterns */
} mp_pubsub_sub_stats;

typedef struct mp_pubsub_stats {
    uint64_t published;  /* accepted publishes, duplicates not included */
    uint64_t delivered;  /* deliveries, replayed included */
    uint64_t replayed;   /* of those, replayed */
    uint64_t dropped;    /* deliveries dropped for slow consumers */
    uint64_t duplicates; /* publishes ignored as duplicates */
    uint64_t evicted;    /* retained messages pushed out by the limits */
    size_t retained_messages;
    size_t retained_bytes; /* topic + payload bytes */
    size_t retained_topics;
    size_t subscriptions;
    size_t patterns; /* distinct (pattern, group) pairs with subscribers */
    size_t groups;   /* queue groups with members */
    size_t dedupe_ids;
} mp_pubsub_stats;

void mp_pubsub_stats_get(const mp_pubsub *ps, mp_pubsub_stats *out);
/* MPREG_E_NOT_FOUND for an unknown subscription. */
mpreg_err mp_pubsub_sub_stats_get(const mp_pubsub *ps, uint64_t sub, mp_pubsub_sub_stats *out);

/* Calls cb once per distinct (pattern, group) pair with subscribers (group
 * empty: the ungrouped ones), with their number; returns how many pairs
 * there were. The order is deterministic. cb must not change the service. */
size_t mp_pubsub_each_pattern(const mp_pubsub *ps,
                              void (*cb)(void *ud, mp_str pattern, mp_str group,
                                         size_t subscribers),
                              void *ud);

/* The rules mp_pubsub_subscribe applies to a subscription's parts (a tag
 * and group of at most 255 bytes without NUL, 1..MP_PUBSUB_MAX_PATTERNS
 * patterns of valid syntax): MPREG_OK, or the error with *why naming the
 * part. The SUBSCRIBE decoder (pubsub_wire.c) applies the same. */
mpreg_err mp_pubsub_parts_check(mp_str tag, mp_str group, const mp_str *patterns, size_t count,
                                const char **why);

/* --- wire payloads (docs/PROTOCOL.md "Pub/sub") ----------------------------- */
/* (pubsub_wire.c) */

/* The SUBSCRIBE payload. Decoding fills the views from `storage`, which owns
 * the decoded strings (free with mp_pubsub_subscribe_payload_free); to
 * encode, fill the views and leave storage NIL. */
typedef struct mp_pubsub_subscribe_payload {
    mp_str patterns[MP_PUBSUB_MAX_PATTERNS];
    size_t pattern_count;
    mp_str tag;
    mp_str group; /* empty = none (the key is then absent on the wire) */
    mp_pubsub_replay_opts replay;
    mpreg_value storage;
} mp_pubsub_subscribe_payload;

void mp_pubsub_subscribe_payload_free(mp_pubsub_subscribe_payload *p);

/* Appends the payload (checked by the decoder's rules first: an encoding is
 * always decodable); out is left as it was on error. */
mpreg_err mp_pubsub_subscribe_encode(const mp_pubsub_subscribe_payload *p, mp_buf *out);
/* Decodes and checks a SUBSCRIBE payload: strict types, no unknown keys,
 * every rule of mp_pubsub_subscribe (so the spec built from it subscribes).
 * On error *out is empty (nothing to free) and *why (if non-NULL) is a
 * static text naming the field ("patterns: more than 64", "unknown key") or,
 * for MPREG_E_TOPIC, what is wrong with the pattern (topic.h's reasons); on
 * success *why is NULL. */
mpreg_err mp_pubsub_subscribe_decode(const void *data, size_t len, mp_pubsub_subscribe_payload *out,
                                     const char **why);

/* A subscription spec for owner from a decoded payload (views into it). */
mp_pubsub_sub_spec mp_pubsub_spec_from_payload(const mp_pubsub_subscribe_payload *p,
                                               uint64_t owner);

/* {"subscription": id}: the UNSUBSCRIBE payload, and the payload of the OK
 * answering a SUBSCRIBE. Ids are 1 .. 2^63-1. */
mpreg_err mp_pubsub_subscription_encode(uint64_t sub, mp_buf *out);
mpreg_err mp_pubsub_subscription_decode(const void *data, size_t len, uint64_t *sub,
                                        const char **why);

/* Fills *out as the DELIVER envelope for d: kind, the message's id, topic
 * and payload, its headers except the reserved "sub", "tag", "replay" and
 * "missed", then "sub" (d->sub in decimal, written to sub_text), "tag",
 * for a replay "replay" = "1", and when d->missed is not 0 "missed" (in
 * decimal, written to missed_text). *out borrows from d and the texts. */
mpreg_err mp_pubsub_deliver_envelope(const mp_pubsub_delivery *d, char sub_text[MP_PUBSUB_SUB_TEXT],
                                     char missed_text[MP_PUBSUB_SUB_TEXT], mp_envelope *out);
/* Appends to out the whole frame (length prefix, then the envelope) of the
 * DELIVER for d with source_node and source_cluster: byte for byte what
 * encoding mp_pubsub_deliver_envelope's envelope with those names would
 * give, at the cost of a copy. The part every delivery of a message shares
 * is encoded, and checked as mp_envelope_validate would, once per message
 * (d->seq; the names once while they stay the same); the subscription's
 * headers were encoded when it subscribed. For the deliver hook of ps,
 * with the delivery it was given. Errors, with out as it was: MPREG_E_FRAME_TOO_LARGE when the
 * envelope is over max_frame (0 = MP_FRAME_DEFAULT_MAX), MPREG_E_NOMEM, and
 * for what needs the envelope path (mp_pubsub_deliver_envelope, then
 * mp_envelope_encode): MPREG_E_INVALID for the zero message id (each DELIVER
 * then needs an id of its own) or a delivery without sub_headers, and the
 * error mp_envelope_validate gives for bad message headers or names.
 * A delivery that carries a "missed" count (d->missed, rare) is left to the
 * envelope path too (MPREG_E_INVALID), so that the shared encoding stays
 * the same for every other. */
mpreg_err mp_pubsub_deliver_frame(mp_pubsub *ps, const mp_pubsub_delivery *d, mp_str source_node,
                                  mp_str source_cluster, uint32_t max_frame, mp_buf *out);

/* --- between nodes (docs/PROTOCOL.md §9.8) ---------------------------------- */

/* Header keys starting with this are the nodes' own: a client may not use
 * them, and they never reach a subscriber. */
#define MP_PUBSUB_NODE_HEADER_PREFIX "mp-"
/* The header of a PUBLISH between nodes saying which parts the receiving
 * node delivers. Absent (a node that predates queue groups across nodes):
 * the ungrouped subscriptions only. */
#define MP_PUBSUB_DELIVER_HEADER "mp-deliver"

/* True for a key starting with MP_PUBSUB_NODE_HEADER_PREFIX. */
bool mp_pubsub_node_header(mp_str key);

/* The "mp-deliver" value: a list of items, each the byte length of a name
 * in decimal (no leading zero), ':' and the name; the empty name ("0:")
 * stands for the ungrouped subscriptions (no group is named ""). So
 * "0:1:g7:workers" is plain, group "g" and group "workers", and "3:a:b"
 * group "a:b". Encodes f into out[0..cap) and sets *len: MPREG_E_INVALID
 * for all_groups (not expressible), a nothing-to-deliver filter, or a group
 * name that is empty or over MP_PUBSUB_MAX_GROUP bytes; MPREG_E_TOO_LARGE
 * when it does not fit in cap. At most MP_PUBSUB_FILTER_ITEM_MAX bytes per
 * group. */
#define MP_PUBSUB_FILTER_ITEM_MAX (3 + 1 + MP_PUBSUB_MAX_GROUP)
mpreg_err mp_pubsub_filter_encode(const mp_pubsub_filter *f, char *out, size_t cap, size_t *len);
/* Parses a value into *f, its group names viewing text and listed in
 * groups[0..cap). MPREG_E_INVALID (with *why, if non-NULL, saying where)
 * for an empty value, a bad length, a name cut short, "0:" twice, or a
 * name with NUL or invalid UTF-8; MPREG_E_TOO_LARGE for more than cap
 * groups. */
mpreg_err mp_pubsub_filter_decode(mp_str text, mp_str *groups, size_t cap, mp_pubsub_filter *f,
                                  const char **why);
/* mp_pubsub_publish_filtered with the filter text describes (decoded into
 * the service's own scratch: no limit on groups but the text's length).
 * A bad text is its decoder error, with *why (if non-NULL) saying what is
 * wrong, and nothing is published; *why is NULL after any other outcome. */
mpreg_err mp_pubsub_publish_encoded(mp_pubsub *ps, const mp_pubsub_message *msg, uint64_t now_ms,
                                    mp_str text, mp_pubsub_result *res, const char **why);

/* The client side: the subscription id and tag of a DELIVER envelope.
 * MPREG_E_MISSING_FIELD without them, MPREG_E_INVALID when "sub" is not a
 * canonical decimal id (1 .. 2^63-1, no sign, no leading zero). */
mpreg_err mp_pubsub_deliver_parse(const mp_envelope *e, uint64_t *sub, mp_str *tag);
/* The "missed" header of a DELIVER envelope: 0 when absent; MPREG_E_INVALID
 * (*missed 0) when it is not canonical decimal (0 .. 2^63-1: digits only,
 * no sign, no leading zero). */
mpreg_err mp_pubsub_deliver_missed(const mp_envelope *e, uint64_t *missed);

#endif
