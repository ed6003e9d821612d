/* entry.h - what the routing catalog knows: typed entries, their keys and
 * versions.
 *
 * Every entry is owned by its origin node (the node that advertises it) and
 * versioned by (incarnation, counter): the incarnation grows each time the
 * node restarts, the counter each time the node changes any of its entries.
 * Comparing versions lexicographically means a restarted node's new entries
 * always win over what it advertised before it died, even though its counter
 * started again from zero.
 *
 * Each entry kind has a named key struct: two entries are "the same entry"
 * exactly when their kinds and keys are equal. Strings in entries are owned
 * (heap copies) and freed with mp_entry_free. */
#ifndef MP_ENTRY_H
#define MP_ENTRY_H

#include "core/buf.h"
#include "fabric/semver.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_ENTRY_MAX_RESOURCES 32
#define MP_ENTRY_MAX_STR 255 /* names, ids, patterns, regions, endpoints */
#define MP_ENTRY_MAX_ENDPOINTS 8
#define MP_ENTRY_MAX_CAPABILITIES 32

typedef enum mp_entry_kind {
    MP_ENTRY_NODE = 1,     /* node descriptor */
    MP_ENTRY_FUNCTION = 2, /* an RPC function the node can run */
    MP_ENTRY_TOPIC = 3,    /* the node has subscribers for a pattern */
    MP_ENTRY_QUEUE = 4,    /* the node owns a queue */
    MP_ENTRY_CACHE = 5,    /* the node's cache role and profile */
} mp_entry_kind;

typedef struct mp_entry_version {
    uint64_t incarnation;
    uint64_t counter;
} mp_entry_version;

/* A list of owned strings (resources, capabilities, endpoints). */
typedef struct mp_strlist {
    char **items;
    uint32_t count;
} mp_strlist;

/* --- keys --------------------------------------------------------------- */

typedef struct mp_function_key {
    char *node;        /* origin node id */
    char *name;        /* function name */
    char *function_id; /* "" when the function has none */
    char *version;     /* semver text as registered, e.g. "1.2.0" */
} mp_function_key;

/* "node has subscribers on pattern in group": group "" for its ungrouped
 * subscribers, else a queue group's name. A node holds one entry per
 * (pattern, group) pair it has subscriptions for, so that a publish can go
 * to all of a pattern's ungrouped subscribers and to one member cluster-wide
 * of each group (docs/PROTOCOL.md §9.8). */
typedef struct mp_topic_key {
    char *node;
    char *pattern; /* a valid pattern (topic.h) */
    char *group;   /* "" = ungrouped */
} mp_topic_key;

typedef struct mp_queue_key {
    char *node;
    char *queue;
} mp_queue_key;

typedef struct mp_node_key {
    char *node; /* node descriptors and cache profiles are one per node */
} mp_node_key;

/* --- values ------------------------------------------------------------- */

typedef struct mp_function_endpoint {
    mp_function_key key;
    char *cluster;
    mp_semver semver;     /* parsed from key.version */
    mp_strlist resources; /* a caller's locs must be a subset of these */
    uint32_t load;        /* in-flight calls, a hint for least-loaded choice */
} mp_function_endpoint;

typedef struct mp_topic_interest {
    mp_topic_key key;
    char *cluster;
} mp_topic_interest;

/* Delivery modes a queue endpoint supports, as bit flags. */
typedef enum mp_queue_mode {
    MP_QUEUE_FIRE_AND_FORGET = 1u << 0,
    MP_QUEUE_AT_LEAST_ONCE = 1u << 1,
    MP_QUEUE_BROADCAST = 1u << 2,
    MP_QUEUE_QUORUM = 1u << 3,
} mp_queue_mode;

typedef struct mp_queue_endpoint {
    mp_queue_key key;
    char *cluster;
    uint32_t modes; /* mp_queue_mode bits */
    bool healthy;
} mp_queue_endpoint;

typedef struct mp_cache_profile {
    mp_node_key key;
    char *cluster;
    char *region;
    double latitude;
    double longitude;
    uint64_t capacity_bytes;
    double utilization; /* 0..1 */
    double latency_ms;  /* typical, as measured by the node */
    double reliability; /* 0..1 */
} mp_cache_profile;

typedef struct mp_node_descriptor {
    mp_node_key key;
    char *name; /* human name, may equal the id */
    char *cluster;
    mp_strlist endpoints;    /* "host:port" addresses peers can dial */
    mp_strlist capabilities; /* "rpc", "pubsub", "queue", "cache", ... */
    mp_strlist resources;
    uint64_t incarnation;
} mp_node_descriptor;

/* One catalog entry: a kind, a version, a TTL and (unless withdrawn) the
 * kind's value. A withdrawn entry is a tombstone: it keeps the key and the
 * version so that an older add arriving late cannot bring the entry back. */
typedef struct mp_entry {
    mp_entry_kind kind;
    mp_entry_version version;
    uint32_t ttl_ms; /* 0 = no expiry; otherwise must be refreshed in time */
    bool withdrawn;
    union {
        mp_function_endpoint function;
        mp_topic_interest topic;
        mp_queue_endpoint queue;
        mp_cache_profile cache;
        mp_node_descriptor node;
    } u;
} mp_entry;

/* <0, 0, >0 as a is older than, the same as, newer than b: incarnation
 * first, then counter, so (2,0) is newer than (1,999). */
int mp_entry_version_cmp(mp_entry_version a, mp_entry_version b);

/* True for the five kinds above. */
bool mp_entry_kind_valid(int kind);

/* The most strings a key has (a function key: node, name, function_id, version). */
#define MP_ENTRY_MAX_KEY_FIELDS 4

/* Points slots[i] at the key's string fields in key struct order (node
 * first) and returns their count; 0 for an unknown kind. The delta codec and
 * the key helpers below walk keys through this one table. */
size_t mp_entry_key_slots(mp_entry *e, char **slots[MP_ENTRY_MAX_KEY_FIELDS]);

/* Same kind and same key strings ("the same entry", whatever the versions). */
bool mp_entry_key_equal(const mp_entry *a, const mp_entry *b);

/* The origin node of any entry. */
const char *mp_entry_origin(const mp_entry *e);

/* Appends a canonical byte encoding of the entry's kind and key to out:
 * equal keys give equal bytes, different keys different bytes. The catalog
 * uses it as its map key. */
mpreg_err mp_entry_key_bytes(const mp_entry *e, mp_buf *out);

/* Checks lengths, counts and formats (pattern syntax, semver text, ranges of
 * doubles). A received entry is validated before it is applied.
 * Ids and names must be non-empty (function_id, a topic's group and the cache
 * region may be "");
 * every string is valid UTF-8 of at most MP_ENTRY_MAX_STR bytes; a withdrawn
 * entry needs
 * only a valid key. On failure *why (if non-NULL) names the field, e.g.
 * "key.pattern" or "latitude", and the code says what is wrong with it:
 * MPREG_E_INVALID (missing, empty, bad kind or modes), MPREG_E_TOO_LARGE
 * (too long, too many items), MPREG_E_RANGE (a number out of range or NaN),
 * MPREG_E_TOPIC (pattern syntax), MPREG_E_BAD_SEMVER (version text, or a
 * semver field that does not match it). */
mpreg_err mp_entry_validate(const mp_entry *e, const char **why);

/* Deep copy / free. free releases every string (value ones too, even on a
 * tombstone) and zeroes the entry, so freeing twice is harmless. */
mpreg_err mp_entry_clone(const mp_entry *src, mp_entry *dst);
void mp_entry_free(mp_entry *e);
/* Same kind, key, version, ttl and withdrawn flag, and (unless withdrawn)
 * the same value; string lists compare in order. */
bool mp_entry_equal(const mp_entry *a, const mp_entry *b);

/* String list helpers. */
mpreg_err mp_strlist_push(mp_strlist *l, const char *s);
/* Appends copies of every item of src (NULL = none) to dst. On error dst
 * keeps what was appended so far; the caller frees it. */
mpreg_err mp_strlist_append(mp_strlist *dst, const mp_strlist *src);
void mp_strlist_free(mp_strlist *l);
bool mp_strlist_contains(const mp_strlist *l, const char *s);
/* True when every item of sub is in super. */
bool mp_strlist_is_subset(const mp_strlist *sub, const mp_strlist *super);

/* Convenience constructors used by tests and the node (copy their strings).
 * Each overwrites *e without freeing it; on failure *e is left zeroed. The
 * version is {0,0}, ttl 0, not withdrawn: the caller sets them. NULL key
 * strings and clusters are MPREG_E_INVALID; a NULL function_id or region
 * becomes "", a NULL node name becomes the node id. The function constructor
 * parses version into semver (MPREG_E_BAD_SEMVER when it does not parse);
 * a queue starts healthy; other numbers start at 0. */
mpreg_err mp_entry_function(mp_entry *e, const char *node, const char *cluster, const char *name,
                            const char *function_id, const char *version);
/* Ungrouped interest: group "". */
mpreg_err mp_entry_topic(mp_entry *e, const char *node, const char *cluster, const char *pattern);
/* Interest of a queue group (NULL or "" = ungrouped, as mp_entry_topic). */
mpreg_err mp_entry_topic_group(mp_entry *e, const char *node, const char *cluster,
                               const char *pattern, const char *group);
mpreg_err mp_entry_queue(mp_entry *e, const char *node, const char *cluster, const char *queue,
                         uint32_t modes);
mpreg_err mp_entry_cache(mp_entry *e, const char *node, const char *cluster, const char *region);
mpreg_err mp_entry_node(mp_entry *e, const char *node, const char *name, const char *cluster,
                        uint64_t incarnation);

#endif
