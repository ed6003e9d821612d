/* envelope.h - the UnifiedMessage: one envelope for every kind of traffic.
 *
 * Clients and peers exchange envelopes, each in one frame (frame.h). The
 * envelope carries routing fields the fabric reads and a payload only the
 * addressed service reads, so a node forwards a message without decoding its
 * payload. Wire form: a MessagePack map from small integer field numbers to
 * values (docs/PROTOCOL.md "Envelope"); absent fields take their defaults and
 * unknown field numbers are skipped, so fields can be added compatibly.
 *
 * Decoding does not copy: the mp_str/mp_bytes fields of a decoded envelope
 * point into the input bytes and are valid only while those bytes are. */
#ifndef MP_ENVELOPE_H
#define MP_ENVELOPE_H

#include "core/buf.h"
#include "core/id.h"
#include "core/str.h"
#include "mpreg/error.h"

#include <stdint.h>

#define MP_PROTOCOL_VERSION 1

#define MP_MAX_PATH 32           /* entries in routing_path / federation_path */
#define MP_MAX_HEADERS 64        /* header entries */
#define MP_MAX_HOPS 64           /* largest hop budget a sender may ask for */
#define MP_DEFAULT_HOPS 16       /* hop budget when a sender gives none */
#define MP_MAX_NAME_LEN 128      /* node ids and cluster ids, bytes */
#define MP_MAX_TOPIC_LEN 255     /* topic field, bytes (syntax checked by topic.h) */
#define MP_MAX_HEADER_KEY 256    /* header key, bytes */
#define MP_MAX_HEADER_VALUE 4096 /* header value, bytes */

/* Wire numbers of the kinds. Grouped by service in blocks of 16; never
 * renumbered. */
typedef enum mp_kind {
    MP_KIND_NONE = 0, /* invalid on the wire */
    /* connection control */
    MP_KIND_HELLO = 1,   /* first frame on every connection: who am I */
    MP_KIND_WELCOME = 2, /* reply to HELLO */
    MP_KIND_PING = 3,
    MP_KIND_PONG = 4,
    MP_KIND_ERROR = 5,   /* structured error; correlation_id names the request if any */
    MP_KIND_OK = 6,      /* generic success reply to a request with no result */
    MP_KIND_GOODBYE = 7, /* orderly close */
    /* RPC */
    MP_KIND_RPC_REQUEST = 16, /* a set of named commands from a client */
    MP_KIND_RPC_REPLY = 17,   /* the sinks' results, or an error */
    MP_KIND_RPC_INVOKE = 18,  /* one command sent to the node/worker that runs it */
    MP_KIND_RPC_RESULT = 19,  /* the result of one RPC_INVOKE */
    MP_KIND_REGISTER = 20,    /* a worker offers functions */
    MP_KIND_UNREGISTER = 21,
    /* pub/sub */
    MP_KIND_PUBLISH = 32,
    MP_KIND_DELIVER = 33,
    MP_KIND_SUBSCRIBE = 34,
    MP_KIND_UNSUBSCRIBE = 35,
    /* queues */
    MP_KIND_QUEUE_OP = 48,
    MP_KIND_QUEUE_REPLY = 49,
    MP_KIND_QUEUE_DELIVER = 50,
    /* cache */
    MP_KIND_CACHE_OP = 64,
    MP_KIND_CACHE_REPLY = 65,
    /* fabric */
    MP_KIND_GOSSIP = 80,
    MP_KIND_CONTROL = 96,
    MP_KIND_CONTROL_REPLY = 97,
} mp_kind;

/* Field numbers of the wire map. */
typedef enum mp_field {
    MP_F_VERSION = 1,
    MP_F_KIND = 2,
    MP_F_ID = 3,
    MP_F_CORRELATION = 4,
    MP_F_TOPIC = 5,
    MP_F_SOURCE_NODE = 6,
    MP_F_SOURCE_CLUSTER = 7,
    MP_F_TARGET_CLUSTER = 8,
    MP_F_TARGET_NODE = 9,
    MP_F_HOP_BUDGET = 10,
    MP_F_ROUTING_PATH = 11,
    MP_F_FEDERATION_PATH = 12,
    MP_F_DEADLINE = 13,
    MP_F_HEADERS = 14,
    MP_F_PAYLOAD = 15,
} mp_field;

typedef struct mp_header {
    mp_str key;
    mp_str value;
} mp_header;

typedef struct mp_envelope {
    uint32_t version; /* MP_PROTOCOL_VERSION */
    mp_kind kind;
    mp_id id;             /* unique per message; never zero */
    mp_id correlation_id; /* the request this answers; zero = none */
    mp_str topic;         /* pub/sub topic, queue name, cache key, ... per kind */
    mp_str source_node;
    mp_str source_cluster;
    mp_str target_cluster; /* empty = the local cluster */
    mp_str target_node;    /* empty = let the routing engine choose */
    uint32_t hop_budget;   /* counts down at each forwarding hop; 0 = drop with error */
    uint32_t routing_path_len;
    mp_str routing_path[MP_MAX_PATH]; /* node ids this message passed */
    uint32_t federation_path_len;
    mp_str federation_path[MP_MAX_PATH]; /* cluster ids this message passed */
    uint64_t deadline_ms;                /* Unix epoch milliseconds; 0 = none */
    uint32_t header_count;
    mp_header headers[MP_MAX_HEADERS];
    mp_bytes payload; /* service-specific bytes; see docs/PROTOCOL.md per kind */
} mp_envelope;

/* Zeroes *e and sets version and the default hop budget. */
void mp_envelope_init(mp_envelope *e, mp_kind kind);
/* The same, but leaves the path and header arrays (3 KiB) as they are:
 * only their entries below the counts (set to 0) mean anything. For code
 * that builds an envelope per message. */
void mp_envelope_init_fields(mp_envelope *e, mp_kind kind);

/* True for the kinds in the enum above. */
bool mp_kind_is_known(uint32_t kind);
/* True for kinds that answer another message (need correlation_id). */
bool mp_kind_is_reply(mp_kind kind);
const char *mp_kind_name(mp_kind kind); /* "rpc_request", ...; "unknown" */

/* Checks every rule of docs/PROTOCOL.md "Validation": version, kind, id,
 * correlation for replies, topic for pub/sub kinds, lengths of names, paths,
 * headers (keys unique) and topic, hop budget range. On error *why (if
 * non-NULL) gets a static description naming the field. */
mpreg_err mp_envelope_validate(const mp_envelope *e, const char **why);

/* Appends the MessagePack encoding of e to out. Validates first: an invalid
 * envelope is never encoded. */
mpreg_err mp_envelope_encode(const mp_envelope *e, mp_buf *out);
/* Appends a whole frame: 4-byte big-endian length, then the encoding. */
mpreg_err mp_envelope_encode_frame(const mp_envelope *e, mp_buf *out);

/* The header rules of mp_envelope_validate alone: count, key and value
 * lengths, UTF-8, no empty or duplicate key. For a caller that builds an
 * envelope from parts it has checked except its headers. */
mpreg_err mp_envelope_validate_headers(const mp_envelope *e, const char **why);

/* The trusted encoding, split for copies that differ in a few headers and
 * leaving the payload where it is. It appends e's encoding to out as
 * mp_envelope_encode would, except that
 *   - the map of headers announces e->header_count + extra_headers entries,
 *     and *split is set to the offset in out (counted from out->data) where
 *     the first entry after e's own headers belongs;
 *   - it stops before the payload's bytes (the payload is the last field).
 * A copy is then out[start, split), the extra_headers entries (str key, str
 * value, MessagePack), out[split, end), then e->payload's bytes: byte for
 * byte what mp_envelope_encode writes for e with those headers appended.
 * The node encodes a DELIVER once per published message this way, then
 * writes one copy per subscriber with its "sub" and "tag" (services/pubsub.h).
 *
 * Trusted: nothing is validated, so that the per-message cost is the copy.
 * Only for envelopes whose every field is valid by construction, with the
 * extra headers included (constants, checked names, a checked topic,
 * headers passed through mp_envelope_validate_headers); everything else
 * goes through mp_envelope_encode. Errors leave out as it was: MPREG_E_NOMEM,
 * MPREG_E_TOO_LARGE for counts no envelope may have. */
mpreg_err mp_envelope_encode_split(const mp_envelope *e, uint32_t extra_headers, mp_buf *out,
                                   size_t *split);

/* Decodes one envelope spanning all of data[0..len) and validates it. Fields
 * of *out point into data. On error *why (if non-NULL) gets a static
 * description naming the field, and *out holds no meaning; on success *why is
 * NULL. Path and header entries beyond their counts are left untouched (not
 * zeroed). Never allocates, never reads outside data, never crashes on any
 * input. */
mpreg_err mp_envelope_decode(const void *data, size_t len, mp_envelope *out, const char **why);

/* Header lookup (first match); MP_STR_NULL when absent. */
mp_str mp_envelope_header(const mp_envelope *e, const char *key);
/* Adds a header (borrowing key and value). Keys are unique: adding a key
 * that is present replaces its value. MPREG_E_TOO_LARGE when full or when key
 * or value is over its limit, MPREG_E_INVALID for an empty key. */
mpreg_err mp_envelope_add_header(mp_envelope *e, mp_str key, mp_str value);

/* Field-by-field equality (strings and payload by content, paths and headers
 * up to their counts, in order). */
bool mp_envelope_equal(const mp_envelope *a, const mp_envelope *b);

#endif
