/* catalog.h - the routing catalog: every node's view of what the fabric has.
 *
 * A pure data structure (sans-I/O): time comes in as now_ms arguments. It
 * stores entries (entry.h) keyed by kind + key, merges incoming entries and
 * node deaths as a CRDT, expires entries whose TTL ran out, and keeps the
 * indexes routing needs:
 *   - functions by name (then function_id, version, resources: selector.h),
 *   - topic tries over every node's interest patterns (matcher.h), answering
 *     "which nodes have ungrouped subscribers for this topic", each node
 *     once, and "which (node, queue group) pairs have members for it",
 *     each pair once,
 *   - queues by name, cache profiles, node descriptors by node id.
 *
 * Merge rules (per entry key, last writer wins on the version):
 *   - an entry whose version is not newer than the stored one is ignored;
 *   - at an equal version a withdrawal beats a live entry, and two different
 *     contents (never sent by an honest origin) are ordered by a canonical
 *     encoding, so every replica keeps the same one;
 *   - a withdrawal is stored as a tombstone with its version (its value, which
 *     the wire does not carry, is dropped);
 *   - a death (node, inc) removes every entry of that origin with
 *     incarnation <= inc and makes later-arriving ones of those incarnations
 *     ignored; the highest death incarnation per node is kept;
 *   - entries from an incarnation above a death are accepted at once (a
 *     restarted node is never taken as stale).
 * So any two catalogs that applied the same set of entries and deaths, in
 * any order and with any duplication, hold the same live entries.
 *
 * Expiry: an entry with ttl_ms > 0 expires at (time applied + ttl) unless a
 * newer version (a refresh) arrives first. Tombstones are kept for
 * tombstone_ttl_ms, long enough to outlive any delayed duplicate. An expired
 * entry's version is remembered locally for tombstone_ttl_ms too (outside
 * queries, digest and snapshots), so a peer whose copy has not expired yet
 * cannot hand the same version back; a newer version revives the entry.
 * Deaths are kept for the catalog's lifetime. */
#ifndef MP_CATALOG_H
#define MP_CATALOG_H

#include "fabric/delta.h"
#include "fabric/entry.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_CATALOG_DEFAULT_TOMBSTONE_TTL_MS (5u * 60u * 1000u)

typedef struct mp_catalog mp_catalog;

typedef struct mp_catalog_config {
    const char *local_node;    /* this node's id (copied) */
    const char *local_cluster; /* this node's cluster (copied) */
    uint32_t tombstone_ttl_ms; /* 0 = default */
} mp_catalog_config;

typedef enum mp_apply_result {
    MP_APPLY_ADDED = 1, /* a live entry for a key not live before (new, or a
                           tombstone / expired entry superseded) */
    MP_APPLY_UPDATED,   /* a newer version of a live key (a refresh or change) */
    MP_APPLY_WITHDRAWN, /* a newer withdrawal, now the key's tombstone (the key
                           was live, a tombstone, or unknown) */
    MP_APPLY_STALE,     /* not newer than what is stored: ignored */
    MP_APPLY_DEAD,      /* from an incarnation known dead: ignored */
} mp_apply_result;

typedef struct mp_apply_stats {
    uint32_t added;
    uint32_t updated;
    uint32_t withdrawn;
    uint32_t stale;
    uint32_t dead;
    uint32_t removed_by_death; /* live entries dropped by deaths in the delta */
} mp_apply_stats;

mp_catalog *mp_catalog_new(const mp_catalog_config *cfg);
void mp_catalog_free(mp_catalog *c);

const char *mp_catalog_local_node(const mp_catalog *c);
const char *mp_catalog_local_cluster(const mp_catalog *c);

/* Merges one entry (copied; validated first: invalid -> error, nothing changes). */
mpreg_err mp_catalog_apply_entry(mp_catalog *c, const mp_entry *e, uint64_t now_ms,
                                 mp_apply_result *result);
/* Records a node death (node: 1..MP_ENTRY_MAX_STR bytes, else MPREG_E_INVALID).
 * *removed (may be NULL) gets how many live entries it dropped. */
mpreg_err mp_catalog_apply_death(mp_catalog *c, const char *node, uint64_t incarnation,
                                 uint64_t now_ms, uint32_t *removed);
/* Applies every death, then every entry, of a delta. stats may be NULL.
 * Everything is validated first: a bad item fails the call and changes
 * nothing. */
mpreg_err mp_catalog_apply_delta(mp_catalog *c, const mp_delta *d, uint64_t now_ms,
                                 mp_apply_stats *stats);

/* Drops entries whose TTL passed and tombstones past their keep time.
 * Returns how many live entries expired. */
size_t mp_catalog_expire(mp_catalog *c, uint64_t now_ms);
/* The earliest time at which mp_catalog_expire would do something, or
 * UINT64_MAX when nothing can expire (drivers arm a timer for it). */
uint64_t mp_catalog_next_expiry(const mp_catalog *c);

/* --- queries: all skip tombstones. Pointers are borrowed and valid until the
 * catalog next changes. Visitors return false to stop early. ------------ */

typedef bool (*mp_entry_visit)(void *ud, const mp_entry *e);

/* Live entries of one kind (or all kinds with kind 0), in no particular order. */
void mp_catalog_each(const mp_catalog *c, mp_entry_kind kind, mp_entry_visit visit, void *ud);
/* Every stored record, tombstones included (anti-entropy, tests); not the
 * local memory of expired entries. */
void mp_catalog_each_record(const mp_catalog *c, mp_entry_visit visit, void *ud);
/* Live function endpoints with this name. */
void mp_catalog_each_function(const mp_catalog *c, const char *name, mp_entry_visit visit,
                              void *ud);
/* Calls cb once per node with at least one live ungrouped interest (topic
 * entries with group "") whose pattern matches the topic; returns how many
 * nodes. Queue groups' interests are not counted here. */
size_t mp_catalog_match_topic(mp_catalog *c, const char *topic, size_t len,
                              void (*cb)(void *ud, const char *node), void *ud);
/* Calls cb once per (node, group) pair, group != "", with at least one live
 * interest whose pattern matches the topic; returns how many pairs. A node
 * with members of two groups is visited twice, once per group. */
size_t mp_catalog_match_topic_groups(mp_catalog *c, const char *topic, size_t len,
                                     void (*cb)(void *ud, const char *node, const char *group),
                                     void *ud);
/* How many nodes other than the local one have at least one live topic
 * interest, of any group. O(1): at 0, a publish here can only be for local
 * subscribers, and the node lets its pub/sub service's own matcher decide
 * alone. */
size_t mp_catalog_remote_topic_nodes(const mp_catalog *c);
/* Live endpoints of a queue (normally one owner). */
void mp_catalog_each_queue(const mp_catalog *c, const char *queue, mp_entry_visit visit, void *ud);
const mp_node_descriptor *mp_catalog_node(const mp_catalog *c, const char *node);
const mp_cache_profile *mp_catalog_cache_profile(const mp_catalog *c, const char *node);

size_t mp_catalog_count(const mp_catalog *c, mp_entry_kind kind); /* live; kind 0 = all */
size_t mp_catalog_tombstones(const mp_catalog *c);
/* The highest dead incarnation recorded for node (0 = none). */
uint64_t mp_catalog_death(const mp_catalog *c, const char *node);

/* An order-independent digest of every record (tombstones and deaths
 * included): two catalogs with the same contents have the same digest. */
uint64_t mp_catalog_digest(const mp_catalog *c);

/* A delta holding every record (live and tombstone) and death, for push-pull
 * anti-entropy. Initialises *out (free it with mp_delta_free; on error it is
 * left empty). Past MP_DELTA_MAX_ENTRIES records the caller must split it
 * before encoding. */
mpreg_err mp_catalog_snapshot(const mp_catalog *c, mp_delta *out);

#endif
