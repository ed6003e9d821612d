/* node_cluster.c - the node in a cluster: membership, catalog gossip and
 * peer links.
 *
 * Membership is fabric/membership.h (SWIM); this file is its delegate and
 * its transport:
 *   - every change of a local catalog entry is disseminated as an item (a
 *     one-entry catalog delta); an item from a peer is merged into the
 *     catalog and, when it was news, spread further by the membership;
 *   - push-pull anti-entropy carries the catalog's digest, and the whole
 *     catalog (a snapshot, in chunks) when digests differ;
 *   - a member declared dead (or that left) takes its entries with it: the
 *     node records a catalog death for it and closes its link, so calls in
 *     flight there fail at once;
 *   - SWIM messages, RPC invokes and forwarded publishes travel over peer
 *     links (node_links.c: dialed on demand, bounded, least recently used
 *     idle one closed to make room); this file says what a link's HELLO
 *     carries, where a member is dialed and what a link's loss means to
 *     the membership.
 *
 * Epochs. The incarnation of this node's catalog entries (n->incarnation)
 * starts at the configured incarnation and may grow while the node runs:
 * when the node learns that the cluster recorded its death (it was taken
 * for dead during a partition, and refuted), the entries of that epoch are
 * ignored everywhere for good, so it re-advertises everything under a new
 * epoch, max(epoch + 1, now). A restarted node starts above any epoch of its
 * previous life (the driver persists the counter, and the clock moved on).
 *
 * The membership must not be re-entered from its own callbacks, so
 * broadcasts made while inside it wait in n->pending until it returns. */
#include "node/node_internal.h"

#include "core/map.h"
#include "core/vec.h"
#include "fabric/delta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_CLUSTER_STATE_CHUNK 4096u /* catalog records per push-pull chunk */

static void mp_cluster_flush(mp_node *n);
static void mp_cluster_check_epoch(mp_node *n);

/* --- broadcasts -------------------------------------------------------------- */

static void mp_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t mp_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Queues (key, data) for mp_swim_broadcast once the membership is not busy. */
static void mp_cluster_defer(mp_node *n, const mp_buf *key, const mp_buf *data) {
    uint8_t len[4];
    mp_put_u32(len, (uint32_t)key->len);
    mpreg_err err = mp_buf_append(&n->pending, len, 4);
    err = err ? err : mp_buf_append(&n->pending, key->data, key->len);
    mp_put_u32(len, (uint32_t)data->len);
    err = err ? err : mp_buf_append(&n->pending, len, 4);
    err = err ? err : mp_buf_append(&n->pending, data->data, data->len);
    if (err) {
        mp_node_log(n, MP_LOG_WARN, "gossip: a catalog change could not be queued: %s",
                    mpreg_err_name(err));
    }
}

static void mp_cluster_broadcast_pending(mp_node *n) {
    size_t off = 0;
    char key[64];
    while (off + 8 <= n->pending.len) {
        uint32_t klen = mp_get_u32(n->pending.data + off);
        const uint8_t *k = n->pending.data + off + 4;
        uint32_t dlen = mp_get_u32(k + klen);
        const uint8_t *d = k + klen + 4;
        size_t kl = klen < sizeof key - 1 ? klen : sizeof key - 1;
        memcpy(key, k, kl);
        key[kl] = '\0';
        mpreg_err err = mp_swim_broadcast(n->swim, key, d, dlen);
        if (err) {
            mp_node_log(n, MP_LOG_WARN, "gossip: broadcast refused: %s", mpreg_err_name(err));
        }
        off += 8 + klen + dlen;
    }
    n->pending.len = 0;
}

/* The membership's "newer replaces older" key for an item: a kind prefix
 * and a hash of the canonical key bytes (what the item is about). */
static void mp_cluster_item_key(const mp_buf *raw, char prefix, mp_buf *out) {
    char text[24];
    int n = snprintf(text, sizeof text, "%c%016llx", prefix,
                     (unsigned long long)mp_hash_bytes(raw->data, raw->len));
    mp_buf_append(out, text, (size_t)n);
}

static void mp_cluster_broadcast_delta(mp_node *n, const mp_delta *d, const mp_buf *raw_key,
                                       char prefix) {
    mp_buf data = MP_BUF_INIT, key = MP_BUF_INIT;
    mpreg_err err = mp_delta_encode(d, &data);
    if (!err) {
        mp_cluster_item_key(raw_key, prefix, &key);
        mp_cluster_defer(n, &key, &data);
        if (!n->in_swim) {
            mp_cluster_broadcast_pending(n);
            mp_cluster_flush(n);
        }
    } else {
        mp_node_log(n, MP_LOG_WARN, "gossip: a catalog change could not be encoded: %s",
                    mpreg_err_name(err));
    }
    mp_buf_free(&data);
    mp_buf_free(&key);
}

void mp_cluster_entry_changed(mp_node *n, const mp_entry *e) {
    if (!n->swim) {
        return;
    }
    mp_delta d;
    mp_delta_init(&d);
    mp_buf key = MP_BUF_INIT;
    if (mp_delta_add_entry(&d, e) == MPREG_OK && mp_entry_key_bytes(e, &key) == MPREG_OK) {
        mp_cluster_broadcast_delta(n, &d, &key, 'e');
    }
    mp_buf_free(&key);
    mp_delta_free(&d);
}

static void mp_cluster_broadcast_death(mp_node *n, const char *node, uint64_t incarnation) {
    mp_delta d;
    mp_delta_init(&d);
    mp_buf key = MP_BUF_INIT;
    if (mp_delta_add_death(&d, node, incarnation) == MPREG_OK &&
        mp_buf_append(&key, node, strlen(node)) == MPREG_OK) {
        mp_cluster_broadcast_delta(n, &d, &key, 'd');
    }
    mp_buf_free(&key);
    mp_delta_free(&d);
}

/* --- epochs -------------------------------------------------------------------- */

typedef struct mp_own_entries {
    const char *self;
    mp_entry *items;
    size_t len;
    size_t cap;
    bool failed;
} mp_own_entries;

static bool mp_collect_own(void *ud, const mp_entry *e) {
    mp_own_entries *o = ud;
    if (strcmp(mp_entry_origin(e), o->self) != 0) {
        return true;
    }
    if (MP_VEC_GROW(o->items, o->cap, o->len + 1, 16) != MPREG_OK) {
        o->failed = true;
        return false;
    }
    if (mp_entry_clone(e, &o->items[o->len]) != MPREG_OK) {
        o->failed = true;
        return false;
    }
    o->len++;
    return true;
}

/* The cluster recorded this node's death at `dead_at` (>= its epoch): move
 * every entry to a new epoch above it, and tell everyone the old one is over. */
static void mp_cluster_new_epoch(mp_node *n, uint64_t dead_at) {
    uint64_t old = n->incarnation;
    uint64_t next = dead_at + 1 > old + 1 ? dead_at + 1 : old + 1;
    n->incarnation = next > n->now_ms ? next : n->now_ms;
    n->counter = 0;
    mp_own_entries own = {.self = n->node_id};
    mp_catalog_each(n->catalog, 0, mp_collect_own, &own);
    mp_node_log(n, MP_LOG_INFO, "the cluster took this node for dead: new epoch %llu (was %llu)",
                (unsigned long long)n->incarnation, (unsigned long long)old);
    for (size_t i = 0; i < own.len; i++) {
        if (own.items[i].kind == MP_ENTRY_NODE) {
            own.items[i].u.node.incarnation = n->incarnation;
        }
        mp_node_advertise(n, &own.items[i]);
        mp_entry_free(&own.items[i]);
    }
    free(own.items);
    uint64_t dead = dead_at > old ? dead_at : old;
    mp_catalog_apply_death(n->catalog, n->node_id, dead, n->now_ms, NULL);
    mp_cluster_broadcast_death(n, n->node_id, dead);
}

static void mp_cluster_check_epoch(mp_node *n) {
    if (!n->swim) {
        return;
    }
    mp_swim_stats st;
    mp_swim_get_stats(n->swim, &st);
    if (st.refutations != n->seen_refutations) {
        n->seen_refutations = st.refutations;
        /* A refutation may answer a death others already recorded against
         * this epoch, and only a new epoch brings the entries back there. A
         * refuted suspicion costs the same few re-advertised entries. */
        mp_cluster_new_epoch(n, n->incarnation);
    }
}

/* --- merging what peers send --------------------------------------------------- */

/* Merges a delta from a peer: never entries about this node (it alone
 * speaks for itself), and a death of this node at or above its epoch makes
 * a new epoch first (so it removes nothing live). True when anything was
 * news. */
static bool mp_cluster_merge_delta(mp_node *n, const mp_delta *d) {
    bool news = false;
    for (uint32_t i = 0; i < d->death_count; i++) {
        const mp_node_death *dd = &d->deaths[i];
        uint64_t before = mp_catalog_death(n->catalog, dd->node);
        if (strcmp(dd->node, n->node_id) == 0 && dd->incarnation >= n->incarnation) {
            mp_cluster_new_epoch(n, dd->incarnation);
        }
        uint32_t removed = 0;
        if (mp_catalog_apply_death(n->catalog, dd->node, dd->incarnation, n->now_ms, &removed) ==
                MPREG_OK &&
            (removed > 0 || mp_catalog_death(n->catalog, dd->node) != before)) {
            news = true;
        }
    }
    for (uint32_t i = 0; i < d->entry_count; i++) {
        const mp_entry *e = &d->entries[i];
        if (strcmp(mp_entry_origin(e), n->node_id) == 0) {
            continue;
        }
        mp_apply_result r;
        if (mp_catalog_apply_entry(n->catalog, e, n->now_ms, &r) == MPREG_OK &&
            (r == MP_APPLY_ADDED || r == MP_APPLY_UPDATED || r == MP_APPLY_WITHDRAWN)) {
            news = true;
        }
    }
    return news;
}

static bool mp_swim_on_item_cb(void *ud, const uint8_t *data, size_t len, const char *from_id) {
    mp_node *n = ud;
    mp_delta d;
    const char *why = NULL;
    if (mp_delta_decode(data, len, &d, &why) != MPREG_OK) {
        mp_node_log(n, MP_LOG_DEBUG, "gossip: bad catalog item from %s: %s",
                    from_id ? from_id : "?", why ? why : "undecodable");
        return false;
    }
    bool news = mp_cluster_merge_delta(n, &d);
    mp_delta_free(&d);
    return news;
}

static uint64_t mp_swim_digest_cb(void *ud) {
    mp_node *n = ud;
    return mp_catalog_digest(n->catalog);
}

/* The catalog as push-pull state: length-prefixed catalog deltas (u32 big
 * endian, then the delta), each at most MP_CLUSTER_STATE_CHUNK records. */
static mpreg_err mp_swim_state_encode_cb(void *ud, mp_buf *out) {
    mp_node *n = ud;
    mp_delta all;
    mpreg_err err = mp_catalog_snapshot(n->catalog, &all);
    if (err) {
        return err;
    }
    uint32_t next = 0;
    bool deaths_sent = false;
    while (!err && (next < all.entry_count || !deaths_sent)) {
        mp_delta chunk;
        mp_delta_init(&chunk);
        /* Borrow the snapshot's arrays: the chunk is never freed. */
        uint32_t take = all.entry_count - next;
        take = take > MP_CLUSTER_STATE_CHUNK ? MP_CLUSTER_STATE_CHUNK : take;
        chunk.entries = all.entries + next;
        chunk.entry_count = take;
        if (!deaths_sent) {
            chunk.deaths = all.deaths;
            chunk.death_count =
                all.death_count > MP_DELTA_MAX_DEATHS ? MP_DELTA_MAX_DEATHS : all.death_count;
            deaths_sent = true;
        }
        size_t at = out->len;
        uint8_t len[4] = {0};
        err = mp_buf_append(out, len, 4);
        err = err ? err : mp_delta_encode(&chunk, out);
        if (!err) {
            mp_put_u32(out->data + at, (uint32_t)(out->len - at - 4));
        }
        next += take;
    }
    mp_delta_free(&all);
    return err;
}

static void mp_swim_state_merge_cb(void *ud, const uint8_t *data, size_t len, const char *from_id) {
    mp_node *n = ud;
    size_t off = 0;
    while (off + 4 <= len) {
        uint32_t clen = mp_get_u32(data + off);
        if (clen > len - off - 4) {
            break;
        }
        mp_delta d;
        const char *why = NULL;
        if (mp_delta_decode(data + off + 4, clen, &d, &why) != MPREG_OK) {
            mp_node_log(n, MP_LOG_INFO, "push-pull: bad catalog state from %s: %s",
                        from_id ? from_id : "?", why ? why : "undecodable");
            return;
        }
        mp_cluster_merge_delta(n, &d);
        mp_delta_free(&d);
        off += 4 + (size_t)clen;
    }
    if (off != len) {
        mp_node_log(n, MP_LOG_INFO, "push-pull: truncated catalog state from %s",
                    from_id ? from_id : "?");
    }
}

/* --- members coming and going ---------------------------------------------------- */

static void mp_cluster_close_links(mp_node *n, const char *id, mpreg_err reason) {
    for (mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        mp_conn *c = MP_CONTAINER(l, mp_conn, link);
        if (c->role == MP_ROLE_PEER && c->peer_id && strcmp(c->peer_id, id) == 0) {
            mp_node_close_conn(n, c, reason);
        }
    }
    mp_links_forget(n, id);
}

static void mp_swim_on_member_cb(void *ud, mp_member_event_kind ev, const mp_member *m) {
    mp_node *n = ud;
    switch (ev) {
    case MP_MEMBER_JOINED:
        mp_node_log(n, MP_LOG_INFO, "member %s joined (%s, generation %llu)", m->id, m->addr,
                    (unsigned long long)m->generation);
        /* Whatever an earlier life of it advertised is over. */
        if (m->generation > 0) {
            mp_catalog_apply_death(n->catalog, m->id, m->generation - 1, n->now_ms, NULL);
        }
        break;
    case MP_MEMBER_SUSPECTED:
        mp_node_log(n, MP_LOG_INFO, "member %s is suspected", m->id);
        break;
    case MP_MEMBER_RECOVERED:
        mp_node_log(n, MP_LOG_INFO, "member %s is alive again", m->id);
        break;
    case MP_MEMBER_DIED:
    case MP_MEMBER_LEFT_EV: {
        const mp_node_descriptor *desc = mp_catalog_node(n->catalog, m->id);
        uint64_t epoch = m->generation;
        if (desc && desc->incarnation > epoch) {
            epoch = desc->incarnation;
        }
        uint32_t removed = 0;
        mp_catalog_apply_death(n->catalog, m->id, epoch, n->now_ms, &removed);
        mp_node_log(n, MP_LOG_INFO, "member %s %s: %u catalog entries removed", m->id,
                    ev == MP_MEMBER_DIED ? "died" : "left", removed);
        mp_cluster_close_links(n, m->id, MPREG_E_UNREACHABLE);
        break;
    }
    case MP_MEMBER_UPDATED:
        mp_node_log(n, MP_LOG_INFO, "member %s now at %s", m->id, m->addr);
        break;
    }
}

/* --- identity ------------------------------------------------------------------------ */

/* The membership refused a claim to a live member's id (or ours) by
 * another process: a warning, once a minute per id. When the claimant
 * sent the message itself, the GOSSIP's connection gets an ERROR saying
 * why (mp_cluster_on_gossip), so that the other side can log it too. */
static void mp_swim_on_conflict_cb(void *ud, const mp_member *listed, const mp_member *claimant,
                                   bool by_itself) {
    mp_node *n = ud;
    bool us = strcmp(listed->id, n->node_id) == 0;
    if (by_itself) {
        snprintf(n->conflict, sizeof n->conflict,
                 "identity conflict: node %s is alive at %s with another key", listed->id,
                 listed->addr[0] ? listed->addr : "(no address)");
    }
    char key[MP_SWIM_MAX_ID + 16];
    snprintf(key, sizeof key, "conflict:%s", listed->id);
    if (us) {
        mp_node_log_every(n, MP_LOG_WARN, key,
                          "identity conflict: another process claims this node's id %s (at %s, "
                          "generation %llu, another key)%s; refused",
                          listed->id, claimant->addr[0] ? claimant->addr : "(no address)",
                          (unsigned long long)claimant->generation,
                          by_itself ? "" : ", as a member passed it on");
    } else {
        mp_node_log_every(n, MP_LOG_WARN, key,
                          "identity conflict: a process at %s (generation %llu) claims to be "
                          "member %s, which is %s at %s with another key%s; refused",
                          claimant->addr[0] ? claimant->addr : "(no address)",
                          (unsigned long long)claimant->generation, listed->id,
                          mp_member_state_name(listed->state),
                          listed->addr[0] ? listed->addr : "(no address)",
                          by_itself ? "" : " (a member passed it on)");
    }
}

/* An ERROR on a peer link. The peer refusing the HELLO of a link this
 * node dialed (wrong token or cluster, this node's id held by another
 * process) is what a person must see to fix it: its message at warn, once
 * a minute per address (the join is retried every few seconds). Others
 * (a GOSSIP it refused, ...) go to the info log with their message. */
void mp_cluster_on_error(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mpreg_value_limits limits = {.max_depth = 4, .max_items = 64, .max_bytes = 16384};
    mpreg_value v;
    int64_t code = 0;
    char message[MP_RPC_MAX_MESSAGE] = "(no message)";
    if (mpreg_value_decode(env->payload.ptr, env->payload.len, &limits, &v) == MPREG_OK) {
        const mpreg_value *cv = v.type == MPREG_MAP ? mpreg_map_get(&v, "code") : NULL;
        const mpreg_value *mv = v.type == MPREG_MAP ? mpreg_map_get(&v, "message") : NULL;
        code = cv && cv->type == MPREG_INT ? cv->u.i : 0;
        if (mv && mv->type == MPREG_STR) {
            snprintf(message, sizeof message, "%.*s", (int)mv->u.str.len, mv->u.str.ptr);
        }
        mpreg_value_free(&v);
    }
    const char *name = mpreg_err_name((mpreg_err)code);
    if (c->role == MP_ROLE_PEER && c->outbound && !c->welcomed) {
        c->refused = true;
        char key[2 * MP_SWIM_MAX_ID + 16];
        snprintf(key, sizeof key, "refused:%s", c->addr ? c->addr : "?");
        mp_node_log_every(n, MP_LOG_WARN, key, "%s %s refused this node (%s): %s%s",
                          c->peer_id ? "member" : "seed", c->addr ? c->addr : "?", name, message,
                          code == MPREG_E_IDENTITY
                              ? "; another process runs under this node's id: this node keeps "
                                "trying, and is let in once that one is gone"
                              : "");
        return;
    }
    mp_node_log(n, MP_LOG_INFO, "conn %llu (%s) sent an ERROR (%s): %s", (unsigned long long)c->id,
                c->peer_id ? c->peer_id
                : c->addr  ? c->addr
                           : "?",
                name, message);
}

/* --- catalog liveness (TTL refresh) ------------------------------------------------ *
 *
 * Entries of other nodes carry no TTL of their own on the wire: refreshing
 * every entry every TTL would cost bytes in proportion to the whole
 * catalog, on every node. Their refresh is the membership instead: while
 * SWIM lists an origin alive or suspect (which it does only while the
 * origin answers probes, directly or through others), its entries are
 * fresh. A member that dies or leaves takes its entries at once (see
 * mp_swim_on_member_cb); the sweep here catches what that cannot: entries
 * of an origin the membership does not vouch for at all, such as entries
 * that reached this node by push-pull from a member that still had them
 * after this node had forgotten their (long dead) origin, or entries of a
 * node that is listed dead but whose newer epoch came in from the other
 * side of a partition. Every catalog_ttl_ms / 3 the sweep looks at each
 * remote origin of a live entry; one not vouched for since a full TTL is
 * given a catalog death at the highest incarnation of its entries, which
 * is gossiped like any death (a later epoch of the origin, if it is alive
 * after all, is taken at once; and when the death reaches the origin it
 * moves to a new epoch, as after any death it refutes). */

#define MP_CLUSTER_TTL_PUSH_PULLS 3u /* default TTL: this many push-pull intervals */
#define MP_CLUSTER_TTL_SWEEPS 3u     /* sweeps per TTL */

typedef struct mp_origin_watch {
    uint64_t unvouched_since; /* 0: the membership vouched for it at the last sweep */
    uint64_t epoch;           /* highest incarnation of its live entries, this sweep */
    uint32_t sweep;           /* the last sweep that found a live entry of it */
} mp_origin_watch;

typedef struct mp_origin_scan {
    mp_node *n;
    bool failed;
} mp_origin_scan;

static bool mp_origin_scan_visit(void *ud, const mp_entry *e) {
    mp_origin_scan *scan = ud;
    mp_node *n = scan->n;
    const char *origin = mp_entry_origin(e);
    if (strcmp(origin, n->node_id) == 0) {
        return true;
    }
    size_t len = strlen(origin);
    mp_origin_watch *w = mp_map_get(&n->origins, origin, len);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || mp_map_put(&n->origins, origin, len, w, NULL) != MPREG_OK) {
            free(w);
            scan->failed = true;
            return false;
        }
    }
    if (w->sweep != n->origin_sweeps) {
        w->sweep = n->origin_sweeps;
        w->epoch = 0;
    }
    uint64_t inc = e->version.incarnation;
    if (e->kind == MP_ENTRY_NODE && e->u.node.incarnation > inc) {
        inc = e->u.node.incarnation;
    }
    w->epoch = inc > w->epoch ? inc : w->epoch;
    return true;
}

/* True when the membership lists the origin alive or suspect: probes still
 * reach it (or did until a moment ago), so its entries are fresh. */
static bool mp_origin_vouched(const mp_node *n, const char *origin) {
    mp_member m;
    return mp_swim_find(n->swim, origin, &m) &&
           (m.state == MP_MEMBER_ALIVE || m.state == MP_MEMBER_SUSPECT);
}

static void mp_origin_expire(mp_node *n, const char *origin, const mp_origin_watch *w) {
    uint32_t removed = 0;
    mp_catalog_apply_death(n->catalog, origin, w->epoch, n->now_ms, &removed);
    /* Gossiped too: the other holders learn it within a few gossip rounds
     * instead of each waiting out its own TTL (or a push-pull). */
    mp_cluster_broadcast_death(n, origin, w->epoch);
    n->origins_expired++;
    mp_node_log(n, MP_LOG_WARN,
                "catalog: %u entries of %s expired (not a live member for %llu ms, TTL %u ms)",
                removed, origin, (unsigned long long)(n->now_ms - w->unvouched_since),
                n->catalog_ttl_ms);
}

/* Updates an origin's watch for this sweep; true when it is to be dropped:
 * it has no live entry left, or the membership has not vouched for it
 * since a full TTL. */
static bool mp_origin_due(mp_node *n, const char *origin, mp_origin_watch *w) {
    if (w->sweep != n->origin_sweeps) {
        return true;
    }
    if (mp_origin_vouched(n, origin)) {
        w->unvouched_since = 0;
        return false;
    }
    if (w->unvouched_since == 0) {
        w->unvouched_since = n->now_ms ? n->now_ms : 1; /* its clock starts now */
        return false;
    }
    return n->now_ms - w->unvouched_since >= n->catalog_ttl_ms;
}

/* One sweep: marks the origins of live remote entries, forgets origins
 * with none left, and expires those not vouched for within the TTL. */
static void mp_cluster_sweep_origins(mp_node *n) {
    n->origin_sweeps++;
    mp_origin_scan scan = {.n = n};
    mp_catalog_each(n->catalog, 0, mp_origin_scan_visit, &scan);
    size_t count = mp_map_count(&n->origins);
    char **drop = count ? calloc(count, sizeof *drop) : NULL;
    if (scan.failed || (count && !drop)) {
        free(drop);
        return; /* out of memory: try again next sweep, expiring nothing */
    }
    /* The map must not change while iterated: decide first, act after. */
    size_t drop_len = 0;
    size_t iter = 0;
    const void *key;
    size_t klen;
    void *val;
    while (mp_map_next(&n->origins, &iter, &key, &klen, &val)) {
        char origin[MP_ENTRY_MAX_STR + 1]; /* map keys are not NUL-terminated */
        klen = klen < sizeof origin ? klen : sizeof origin - 1;
        memcpy(origin, key, klen);
        origin[klen] = '\0';
        if (mp_origin_due(n, origin, val) && (drop[drop_len] = mp_strdup(origin))) {
            drop_len++;
        }
    }
    for (size_t i = 0; i < drop_len; i++) {
        mp_origin_watch *w = mp_map_remove(&n->origins, drop[i], strlen(drop[i]));
        if (w && w->sweep == n->origin_sweeps) {
            mp_origin_expire(n, drop[i], w);
        }
        free(w);
        free(drop[i]);
    }
    free(drop);
}

static uint64_t mp_cluster_sweep_interval(const mp_node *n) {
    uint32_t every = n->catalog_ttl_ms / MP_CLUSTER_TTL_SWEEPS;
    return every ? every : 1;
}

static void mp_cluster_sweep_due(mp_node *n) {
    if (n->now_ms < n->origin_sweep_at) {
        return;
    }
    mp_cluster_sweep_origins(n);
    n->origin_sweep_at = n->now_ms + mp_cluster_sweep_interval(n);
    mp_node_log(n, MP_LOG_DEBUG,
                "catalog: other nodes' entries expire %u ms after the "
                "membership last vouched for their node",
                n->catalog_ttl_ms);
}

/* --- peer links (node_links.c owns them; this is what the cluster says) ----------- */

static mpreg_err mp_cluster_send_hello(mp_node *n, mp_conn *c) {
    mpreg_value h = mpreg_map();
    mpreg_err err = mpreg_map_set(&h, "role", mpreg_str("peer"));
    err = err ? err : mpreg_map_set(&h, "name", mpreg_str(n->node_id));
    err = err ? err : mpreg_map_set(&h, "node", mpreg_str(n->node_id));
    err = err ? err : mpreg_map_set(&h, "cluster", mpreg_str(n->cluster));
    if (!err && n->advertise_addr) {
        err = mpreg_map_set(&h, "addr", mpreg_str(n->advertise_addr));
    }
    if (!err && n->token) {
        err = mpreg_map_set(&h, "token", mpreg_str(n->token));
    }
    if (!err && n->node_key_len) {
        err = mpreg_map_set(&h, "key", mpreg_bin(n->node_key, n->node_key_len));
    }
    err = err ? err : mp_node_send_value(n, c->id, MP_KIND_HELLO, NULL, NULL, &h);
    mpreg_value_free(&h);
    return err;
}

static mp_conn *mp_cluster_dial(mp_node *n, const char *id, const char *addr) {
    return mp_links_dial(n, id, addr, mp_cluster_send_hello);
}

/* Where member `node` can be dialed: its membership address, else the
 * first endpoint of its catalog descriptor. */
static const char *mp_cluster_addr_of(mp_node *n, const char *node) {
    mp_member m;
    if (n->swim && mp_swim_find(n->swim, node, &m) && m.addr && *m.addr) {
        if (m.state == MP_MEMBER_DEAD || m.state == MP_MEMBER_LEFT) {
            return NULL;
        }
        return m.addr;
    }
    const mp_node_descriptor *d = mp_catalog_node(n->catalog, node);
    return d && d->endpoints.count > 0 ? d->endpoints.items[0] : NULL;
}

mp_conn *mp_conn_for_node(mp_node *n, const char *node) {
    if (!node || strcmp(node, n->node_id) == 0) {
        return NULL;
    }
    mp_conn *c = mp_links_find(n, node);
    if (!c) {
        c = mp_cluster_dial(n, node, mp_cluster_addr_of(n, node));
    }
    if (c) {
        mp_links_touch(n, c);
    }
    return c;
}

bool mp_cluster_peer_hello(mp_node *n, mp_conn *c, mp_str node, mp_str cluster, mp_bytes key,
                           mpreg_err *code, char *why, size_t cap) {
    *code = MPREG_E_HANDSHAKE;
    if (node.len == 0 || node.len > MP_SWIM_MAX_ID || memchr(node.ptr, '\0', node.len)) {
        snprintf(why, cap, "node: a peer must name itself (1..255 bytes, no NUL)");
        return false;
    }
    char id[MP_SWIM_MAX_ID + 1];
    memcpy(id, node.ptr, node.len);
    id[node.len] = '\0';
    mp_member holder;
    if (n->swim && mp_swim_identity_conflict(n->swim, id, key.ptr, key.len, &holder)) {
        /* Another process says it is a live member (or this node): the
         * member keeps its id; the newcomer is told, and keeps trying (it
         * is let in once the member is dead or left). */
        *code = MPREG_E_IDENTITY;
        snprintf(why, cap, "identity conflict: node %s is alive at %s with another key", id,
                 holder.addr[0] ? holder.addr : "(no address)");
        return false;
    }
    if (mp_str_eq_c(node, n->node_id)) {
        snprintf(why, cap, "node: %s is this node's own id", id);
        return false;
    }
    if (cluster.len && !mp_str_eq_c(cluster, n->cluster)) {
        snprintf(why, cap, "cluster mismatch: node %s is in cluster \"%s\", not \"%.*s\"",
                 n->node_id, n->cluster, (int)cluster.len, cluster.ptr);
        return false;
    }
    c->peer_id = mp_strdup(id);
    if (!c->peer_id) {
        *code = MPREG_E_NOMEM;
        snprintf(why, cap, "out of memory");
        return false;
    }
    mp_links_add(n, c);
    mp_links_bind(n, c);
    mp_links_make_room(n, c);
    return true;
}

void mp_cluster_on_welcome(mp_node *n, mp_conn *c, const mp_envelope *env) {
    if (!c->outbound || c->welcomed) {
        return;
    }
    mpreg_value_limits limits = {.max_depth = 4, .max_items = 64, .max_bytes = 16384};
    mpreg_value v;
    if (mpreg_value_decode(env->payload.ptr, env->payload.len, &limits, &v) != MPREG_OK) {
        mp_node_close_conn(n, c, MPREG_E_HANDSHAKE);
        return;
    }
    const mpreg_value *node = mpreg_map_get(&v, "node");
    bool ok =
        node && node->type == MPREG_STR && node->u.str.len > 0 && node->u.str.len <= MP_SWIM_MAX_ID;
    if (ok && c->peer_id) {
        /* An address now answered by another node (a restart elsewhere). */
        ok = strlen(c->peer_id) == node->u.str.len &&
             memcmp(c->peer_id, node->u.str.ptr, node->u.str.len) == 0;
    } else if (ok) {
        c->peer_id = malloc(node->u.str.len + 1);
        if ((ok = c->peer_id != NULL)) {
            memcpy(c->peer_id, node->u.str.ptr, node->u.str.len);
            c->peer_id[node->u.str.len] = '\0';
            ok = strcmp(c->peer_id, n->node_id) != 0;
            if (ok) {
                mp_links_bind(n, c);
            }
        }
    }
    mpreg_value_free(&v);
    if (!ok) {
        mp_node_log(n, MP_LOG_INFO, "conn %llu: the peer at %s is not who was dialed",
                    (unsigned long long)c->id, c->addr ? c->addr : "?");
        mp_node_close_conn(n, c, MPREG_E_HANDSHAKE);
        return;
    }
    c->welcomed = true;
    mp_timer_cancel(&n->timers, &c->handshake);
}

/* A link this node dialed that never came up (no connection, or no
 * WELCOME): a warning once a minute per address, for a seed or a member
 * the membership still counts on; for a member it holds dead (tried again
 * every reconnect interval for hours) the debug log is enough. A refused
 * HELLO was logged with its reason already. */
static void mp_cluster_log_unreachable(mp_node *n, const mp_conn *c, mpreg_err reason) {
    if (!c->outbound || c->welcomed || c->refused ||
        (reason != MPREG_E_UNREACHABLE && reason != MPREG_E_CLOSED) || n->stopping) {
        return;
    }
    mp_member m;
    bool dead = c->peer_id && n->swim && mp_swim_find(n->swim, c->peer_id, &m) &&
                (m.state == MP_MEMBER_DEAD || m.state == MP_MEMBER_LEFT);
    char key[2 * MP_SWIM_MAX_ID + 16];
    snprintf(key, sizeof key, "reach:%s", c->addr ? c->addr : "?");
    const char *what = reason == MPREG_E_UNREACHABLE ? "cannot reach" : "connection closed by";
    mp_node_log_every(n, dead ? MP_LOG_DEBUG : MP_LOG_WARN, key, "%s %s (%s%s); retrying", what,
                      c->addr ? c->addr : "?", c->peer_id ? "member " : "seed",
                      c->peer_id ? c->peer_id : "");
}

void mp_cluster_conn_closed(mp_node *n, mp_conn *c, mpreg_err reason) {
    if (c->role != MP_ROLE_PEER) {
        return;
    }
    mp_cluster_log_unreachable(n, c, reason);
    mp_links_closed(n, c);
    if (!c->peer_id) {
        return;
    }
    if (n->swim && reason != MPREG_OK && reason != MPREG_E_CLOSED) {
        n->in_swim = true;
        mp_swim_unreachable(n->swim, c->peer_id, n->now_ms);
        n->in_swim = false;
        mp_cluster_broadcast_pending(n);
        mp_cluster_flush(n);
    }
}

/* --- the membership's traffic ------------------------------------------------------ */

static void mp_cluster_flush(mp_node *n) {
    if (!n->swim || n->in_swim) {
        return;
    }
    mp_swim_send s;
    while (mp_swim_next_send(n->swim, &s)) {
        mp_conn *c = s.to_id ? mp_links_find(n, s.to_id) : NULL;
        if (!c) {
            c = mp_cluster_dial(n, s.to_id, s.to_addr);
        }
        if (!c) {
            continue; /* the membership's timeouts cover a message that never left */
        }
        mp_links_touch(n, c);
        mp_envelope env;
        mp_envelope_init(&env, MP_KIND_GOSSIP);
        env.payload = (mp_bytes){s.payload, s.len};
        /* Gossip is datagram-like: a message lost to a full link is one
         * SWIM's timeouts and retransmits already cover. */
        mp_node_send_droppable(n, c->id, &env);
    }
    mp_cluster_check_epoch(n);
}

void mp_cluster_on_gossip(mp_node *n, mp_conn *c, const mp_envelope *env) {
    if (!n->swim) {
        mp_node_send_errorf(n, c->id, &env->id, MPREG_E_KIND,
                            "GOSSIP: this node is not in a cluster");
        return;
    }
    mp_links_touch(n, c);
    n->in_swim = true;
    n->conflict[0] = '\0';
    mpreg_err err = mp_swim_on_payload(n->swim, env->payload.ptr, env->payload.len, n->now_ms);
    n->in_swim = false;
    if (err == MPREG_E_IDENTITY) {
        /* Another process speaks under a live member's id (or ours): it is
         * told why, and the link it came over goes. */
        mp_node_send_errorf(n, c->id, &env->id, err, "%s",
                            n->conflict[0] ? n->conflict : "identity conflict");
        mp_node_close_conn(n, c, err);
    } else if (err) {
        mp_node_log(n, MP_LOG_INFO, "conn %llu: bad GOSSIP: %s", (unsigned long long)c->id,
                    mpreg_err_name(err));
        mp_node_send_errorf(n, c->id, &env->id, err, "GOSSIP: %s", mpreg_strerror(err));
    }
    mp_cluster_broadcast_pending(n);
    mp_cluster_flush(n);
}

void mp_cluster_tick(mp_node *n) {
    if (!n->swim || n->stopping) {
        return;
    }
    n->in_swim = true;
    mp_swim_tick(n->swim, n->now_ms);
    n->in_swim = false;
    mp_cluster_sweep_due(n);
    mp_cluster_broadcast_pending(n);
    mp_cluster_flush(n);
}

uint64_t mp_cluster_next_wakeup(const mp_node *n) {
    if (!n->swim || n->stopping) {
        return UINT64_MAX;
    }
    uint64_t t = mp_swim_next_wakeup(n->swim);
    return t < n->origin_sweep_at ? t : n->origin_sweep_at;
}

void mp_cluster_leave(mp_node *n) {
    if (!n->swim) {
        return;
    }
    n->in_swim = true;
    mp_swim_leave(n->swim, n->now_ms);
    n->in_swim = false;
    mp_cluster_broadcast_pending(n);
    mp_cluster_flush(n);
}

/* --- lifecycle ------------------------------------------------------------------------ */

static bool mp_broadcast_own(void *ud, const mp_entry *e) {
    mp_node *n = ud;
    if (strcmp(mp_entry_origin(e), n->node_id) == 0) {
        mp_cluster_entry_changed(n, e);
    }
    return true;
}

mpreg_err mp_cluster_start(mp_node *n, const mp_node_config *cfg) {
    n->generation = n->incarnation;
    if (n->incarnation > 0) {
        /* Entries of an earlier life of this node, still gossiped by
         * others, must not come back to it. */
        mp_catalog_apply_death(n->catalog, n->node_id, n->incarnation - 1, n->now_ms, NULL);
    }
    if (!cfg->advertise_addr && cfg->seed_count == 0) {
        return MPREG_OK; /* standalone */
    }
    if (cfg->advertise_addr && !(n->advertise_addr = mp_strdup(cfg->advertise_addr))) {
        return MPREG_E_NOMEM;
    }
    mp_swim_config sc = cfg->swim;
    if (sc.probe_interval_ms == 0) {
        mp_swim_config_default(&sc);
    }
    n->catalog_ttl_ms = cfg->catalog_ttl_ms;
    if (n->catalog_ttl_ms == 0) {
        uint64_t ttl = (uint64_t)sc.push_pull_interval_ms * MP_CLUSTER_TTL_PUSH_PULLS;
        n->catalog_ttl_ms = ttl > UINT32_MAX ? UINT32_MAX : (uint32_t)ttl;
    }
    n->origin_sweep_at = n->now_ms + mp_cluster_sweep_interval(n);
    mp_node_log(n, MP_LOG_DEBUG,
                "catalog: other nodes' entries expire %u ms after the "
                "membership last vouched for their node",
                n->catalog_ttl_ms);
    mp_swim_self self = {
        .id = n->node_id,
        .addr = n->advertise_addr ? n->advertise_addr : "",
        .generation = n->generation,
        .key = n->node_key,
        .key_len = n->node_key_len,
    };
    mp_swim_delegate d = {
        .ud = n,
        .on_item = mp_swim_on_item_cb,
        .on_member = mp_swim_on_member_cb,
        .state_digest = mp_swim_digest_cb,
        .state_encode = mp_swim_state_encode_cb,
        .state_merge = mp_swim_state_merge_cb,
        .on_conflict = mp_swim_on_conflict_cb,
    };
    n->swim = mp_swim_new(&sc, &self, &d, n->rng, n->now_ms);
    if (!n->swim) {
        mp_node_log(n, MP_LOG_ERROR, "membership: bad configuration");
        return MPREG_E_INVALID;
    }
    /* What the node advertised before it had a membership goes out now. */
    mp_catalog_each(n->catalog, 0, mp_broadcast_own, n);
    for (uint32_t i = 0; i < cfg->seed_count; i++) {
        if (n->advertise_addr && strcmp(cfg->seeds[i], n->advertise_addr) == 0) {
            continue; /* a node listed among its own seeds */
        }
        n->in_swim = true;
        mpreg_err err = mp_swim_join(n->swim, cfg->seeds[i], n->now_ms);
        n->in_swim = false;
        if (err) {
            mp_node_log(n, MP_LOG_WARN, "cannot join through %s: %s", cfg->seeds[i],
                        mpreg_err_name(err));
        }
    }
    mp_cluster_broadcast_pending(n);
    mp_cluster_flush(n);
    return MPREG_OK;
}

void mp_cluster_free(mp_node *n) {
    mp_swim_free(n->swim);
    n->swim = NULL;
    mp_links_free(&n->links);
    mp_map_free(&n->origins, free);
    mp_buf_free(&n->pending);
    free(n->advertise_addr);
    n->advertise_addr = NULL;
}

/* --- introspection ------------------------------------------------------------------ */

mp_swim *mp_node_swim(mp_node *n) {
    return n->swim;
}

typedef struct mp_members_acc {
    mpreg_value *list;
    mpreg_err err;
} mp_members_acc;

static bool mp_members_visit(void *ud, const mp_member *m) {
    mp_members_acc *a = ud;
    mpreg_value v = mpreg_map();
    mpreg_err err = mpreg_map_set(&v, "id", mpreg_str(m->id));
    err = err ? err : mpreg_map_set(&v, "addr", mpreg_str(m->addr ? m->addr : ""));
    err = err ? err : mpreg_map_set(&v, "state", mpreg_str(mp_member_state_name(m->state)));
    err = err ? err : mpreg_map_set(&v, "generation", mpreg_int((int64_t)m->generation));
    err = err ? err : mpreg_map_set(&v, "incarnation", mpreg_int((int64_t)m->incarnation));
    err = err ? err : mpreg_map_set(&v, "since_ms", mpreg_int((int64_t)m->since_ms));
    if (!err && m->key_len) {
        /* Hex, as mpregd prints it at start and keeps it in node_key. */
        char hex[2 * MP_SWIM_MAX_KEY + 1];
        for (size_t i = 0; i < m->key_len; i++) {
            snprintf(hex + 2 * i, 3, "%02x", m->key[i]);
        }
        err = mpreg_map_set(&v, "key", mpreg_str(hex));
    }
    err = err ? err : mpreg_array_push(a->list, v);
    if (err) {
        mpreg_value_free(&v);
        a->err = err;
        return false;
    }
    return true;
}

mpreg_err mp_node_members(const mp_node *n, uint64_t now_ms, mpreg_value *out) {
    (void)now_ms;
    *out = mpreg_map();
    mpreg_value list = mpreg_array();
    mp_members_acc acc = {.list = &list};
    mpreg_err err = mpreg_map_set(out, "self", mpreg_str(n->node_id));
    err = err ? err : mpreg_map_set(out, "cluster", mpreg_str(n->cluster));
    if (!err && n->swim) {
        mp_swim_each(n->swim, mp_members_visit, &acc);
        err = acc.err;
    } else if (!err) {
        mp_member self = {.id = n->node_id,
                          .addr = n->advertise_addr ? n->advertise_addr : "",
                          .generation = n->generation,
                          .state = MP_MEMBER_ALIVE,
                          .since_ms = n->started_ms,
                          .key = n->node_key_len ? n->node_key : NULL,
                          .key_len = n->node_key_len};
        mp_members_visit(&acc, &self);
        err = acc.err;
    }
    err = err ? err : mpreg_map_set(out, "members", list);
    if (err) {
        mpreg_value_free(&list);
    }
    if (!err && n->swim) {
        mp_swim_stats st;
        mp_swim_get_stats(n->swim, &st);
        mpreg_value s = mpreg_map();
        err = mpreg_map_set(&s, "msgs_sent", mpreg_int((int64_t)st.msgs_sent));
        err = err ? err : mpreg_map_set(&s, "bytes_sent", mpreg_int((int64_t)st.bytes_sent));
        err = err ? err : mpreg_map_set(&s, "msgs_received", mpreg_int((int64_t)st.msgs_received));
        err =
            err ? err : mpreg_map_set(&s, "bytes_received", mpreg_int((int64_t)st.bytes_received));
        err = err ? err : mpreg_map_set(&s, "probes", mpreg_int((int64_t)st.probes));
        err = err ? err : mpreg_map_set(&s, "suspicions", mpreg_int((int64_t)st.suspicions));
        err = err ? err : mpreg_map_set(&s, "refutations", mpreg_int((int64_t)st.refutations));
        err = err ? err : mpreg_map_set(&s, "push_pulls", mpreg_int((int64_t)st.push_pulls));
        err = err ? err : mpreg_map_set(&s, "peer_links", mpreg_int((int64_t)n->links.count));
        err = err ? err
                  : mpreg_map_set(&s, "identity_conflicts",
                                  mpreg_int((int64_t)st.identity_conflicts));
        err =
            err ? err : mpreg_map_set(&s, "catalog_ttl_ms", mpreg_int((int64_t)n->catalog_ttl_ms));
        err = err ? err
                  : mpreg_map_set(&s, "origins_expired", mpreg_int((int64_t)n->origins_expired));
        err = err ? err : mpreg_map_set(out, "stats", s);
    }
    if (err) {
        mpreg_value_free(out);
    }
    return err;
}
