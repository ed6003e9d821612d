/* node_control.c - CONTROL: what a node says about itself.
 *
 * A CONTROL envelope names its operation in the topic and gets one
 * CONTROL_REPLY (or an ERROR). "status" is the node's vital signs,
 * "catalog" what the node knows about the fabric (in pages that each fit
 * in a frame, of the kinds asked for), "subscriptions" the
 * asking connection's own subscriptions with their counts, "members" the
 * cluster's members as this node sees them (node_cluster.c), all as plain
 * values so that the CLI can print them as JSON. Lists are sorted, so two nodes with
 * the same catalog print the same text. */
#include "node/node_internal.h"

#include "core/vec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- building values without a ladder of error checks ----------------------- */

/* Sets key in map unless an earlier step failed; returns the running error. */
static mpreg_err mp_set(mpreg_err err, mpreg_value *map, const char *key, mpreg_value v) {
    if (err) {
        mpreg_value_free(&v);
        return err;
    }
    return mpreg_map_set(map, key, v);
}

static mpreg_value mp_uint_value(uint64_t v) {
    return mpreg_int(v > INT64_MAX ? INT64_MAX : (int64_t)v);
}

static mpreg_value mp_strlist_value(const mp_strlist *l) {
    mpreg_value a = mpreg_array();
    for (uint32_t i = 0; i < l->count; i++) {
        if (mpreg_array_push(&a, mpreg_str(l->items[i]))) {
            mpreg_value_free(&a);
            return mpreg_nil();
        }
    }
    return a;
}

/* --- status ------------------------------------------------------------------ */

typedef struct mp_conn_counts {
    uint64_t clients;
    uint64_t workers;
    uint64_t peers;
    uint64_t handshaking;
} mp_conn_counts;

static mp_conn_counts mp_count_conns(const mp_node *n) {
    mp_conn_counts k = {0};
    for (const mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        const mp_conn *c = MP_CONTAINER(l, mp_conn, link);
        if (c->state == MP_CONN_HANDSHAKE) {
            k.handshaking++;
        } else if (c->role == MP_ROLE_PEER) {
            k.peers++;
        } else if (c->role == MP_ROLE_CLIENT) {
            k.clients++;
            k.workers += c->function_count > 0;
        }
    }
    return k;
}

/* {"limit": L, "used": U} */
static mpreg_err mp_limit_set(mpreg_err err, mpreg_value *map, const char *name, uint64_t limit,
                              uint64_t used) {
    mpreg_value one = mpreg_map();
    err = mp_set(err, &one, "limit", mp_uint_value(limit));
    err = mp_set(err, &one, "used", mp_uint_value(used));
    return mp_set(err, map, name, one);
}

/* Every node-wide limit with what is held against it now; per-connection
 * ones with the most any one connection holds. */
static mpreg_err mp_limits_value(const mp_node *n, mpreg_value *out) {
    uint64_t subs = 0, patterns = 0, fns = 0, reqs = 0;
    for (const mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        const mp_conn *c = MP_CONTAINER(l, mp_conn, link);
        subs = c->sub_count > subs ? c->sub_count : subs;
        patterns = c->pattern_count > patterns ? c->pattern_count : patterns;
        fns = c->function_count > fns ? c->function_count : fns;
        reqs = c->request_count > reqs ? c->request_count : reqs;
    }
    const mp_node_limits *L = &n->limits;
    mpreg_value m = mpreg_map();
    mpreg_err err = mp_limit_set(MPREG_OK, &m, "conns", L->conns, n->conn_total);
    err = mp_limit_set(err, &m, "subs_per_conn", L->subs_per_conn, subs);
    err = mp_limit_set(err, &m, "subs_per_node", L->subs_per_node, n->sub_total);
    err = mp_limit_set(err, &m, "patterns_per_conn", L->patterns_per_conn, patterns);
    err = mp_limit_set(err, &m, "patterns_per_node", L->patterns_per_node, n->pattern_total);
    err = mp_limit_set(err, &m, "functions_per_conn", L->functions_per_conn, fns);
    err = mp_limit_set(err, &m, "functions_per_node", L->functions_per_node, n->worker_fn_total);
    err = mp_limit_set(err, &m, "requests_per_conn", L->requests_per_conn, reqs);
    err = mp_limit_set(err, &m, "requests_per_node", L->requests_per_node, n->request_total);
    uint64_t req_bytes = 0;
    for (const mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        const mp_conn *c = MP_CONTAINER(l, mp_conn, link);
        for (const mp_link *q = c->requests.next; q != &c->requests; q = q->next) {
            const mp_request *r = MP_CONTAINER(q, mp_request, conn_link);
            req_bytes = r->held_bytes > req_bytes ? r->held_bytes : req_bytes;
        }
    }
    err = mp_limit_set(err, &m, "request_bytes", L->request_bytes, req_bytes);
    err = mp_limit_set(err, &m, "results_bytes", L->results_bytes, n->result_bytes);
    err = mp_limit_set(err, &m, "tombstones", L->tombstones, mp_catalog_tombstones(n->catalog));
    if (err) {
        mpreg_value_free(&m);
        return err;
    }
    *out = m;
    return MPREG_OK;
}

mpreg_err mp_node_status(const mp_node *n, uint64_t now_ms, mpreg_value *out) {
    mp_conn_counts k = mp_count_conns(n);
    mp_pubsub_stats ps;
    mp_pubsub_stats_get(n->pubsub, &ps);

    mpreg_value conns = mpreg_map();
    mpreg_err err = mp_set(MPREG_OK, &conns, "clients", mp_uint_value(k.clients));
    err = mp_set(err, &conns, "workers", mp_uint_value(k.workers));
    err = mp_set(err, &conns, "peers", mp_uint_value(k.peers));
    err = mp_set(err, &conns, "handshaking", mp_uint_value(k.handshaking));

    mpreg_value counters = mpreg_map();
    err = mp_set(err, &counters, "rpc_requests", mp_uint_value(n->counters.rpc_requests));
    err = mp_set(err, &counters, "rpc_errors", mp_uint_value(n->counters.rpc_errors));
    err = mp_set(err, &counters, "published", mp_uint_value(n->counters.published));
    /* The service counts what the node sheds as it writes as dropped (the
     * deliver hook says so), not delivered. */
    err = mp_set(err, &counters, "delivered", mp_uint_value(ps.delivered));
    err = mp_set(err, &counters, "dropped", mp_uint_value(ps.dropped));
    err = mp_set(err, &counters, "unreachable", mp_uint_value(n->counters.unreachable));
    err = mp_set(err, &counters, "frame_errors", mp_uint_value(n->counters.frame_errors));
    err = mp_set(err, &counters, "overflow_closes", mp_uint_value(n->counters.overflow_closes));
    err = mp_set(err, &counters, "peer_shed", mp_uint_value(n->counters.peer_shed));
    err = mp_set(err, &counters, "limit_refusals", mp_uint_value(n->limit_refusals));
    mpreg_value limits = mpreg_nil();
    err = err ? err : mp_limits_value(n, &limits);

    mpreg_value s = mpreg_map();
    err = mp_set(err, &s, "node", mpreg_str(n->node_id));
    err = mp_set(err, &s, "name", mpreg_str(n->name));
    err = mp_set(err, &s, "cluster", mpreg_str(n->cluster));
    err = mp_set(err, &s, "incarnation", mp_uint_value(n->incarnation));
    err = mp_set(err, &s, "uptime_ms",
                 mp_uint_value(now_ms > n->started_ms ? now_ms - n->started_ms : 0));
    err = mp_set(err, &s, "connections", conns);
    err = mp_set(err, &s, "functions", mp_uint_value(mp_map_count(&n->functions)));
    err = mp_set(err, &s, "subscriptions", mp_uint_value(ps.subscriptions));
    err = mp_set(err, &s, "counters", counters);
    err = mp_set(err, &s, "limits", limits);
    if (!err && n->io.status) {
        err = n->io.status(n->io.ud, &s); /* the driver's own figures */
    }
    if (err) {
        mpreg_value_free(&s);
        *out = mpreg_nil();
        return err;
    }
    *out = s;
    return MPREG_OK;
}

/* --- catalog ------------------------------------------------------------------ */

typedef struct mp_entry_list {
    const mp_entry **items;
    size_t len;
    size_t cap;
    bool nomem;
} mp_entry_list;

static bool mp_collect(void *ud, const mp_entry *e) {
    mp_entry_list *l = ud;
    if (MP_VEC_GROW(l->items, l->cap, l->len + 1, 32) != MPREG_OK) {
        l->nomem = true;
        return false;
    }
    l->items[l->len++] = e;
    return true;
}

static int mp_cmp_function(const void *a, const void *b) {
    const mp_function_key *x = &(*(const mp_entry *const *)a)->u.function.key;
    const mp_function_key *y = &(*(const mp_entry *const *)b)->u.function.key;
    int c = strcmp(x->name, y->name);
    c = c ? c : strcmp(x->node, y->node);
    c = c ? c : strcmp(x->function_id, y->function_id);
    return c ? c : strcmp(x->version, y->version);
}

static int mp_cmp_topic(const void *a, const void *b) {
    const mp_topic_key *x = &(*(const mp_entry *const *)a)->u.topic.key;
    const mp_topic_key *y = &(*(const mp_entry *const *)b)->u.topic.key;
    int c = strcmp(x->pattern, y->pattern);
    c = c ? c : strcmp(x->node, y->node);
    return c ? c : strcmp(x->group ? x->group : "", y->group ? y->group : "");
}

static int mp_cmp_node(const void *a, const void *b) {
    return strcmp((*(const mp_entry *const *)a)->u.node.key.node,
                  (*(const mp_entry *const *)b)->u.node.key.node);
}

static mpreg_value mp_function_value(const mp_entry *e) {
    const mp_function_endpoint *f = &e->u.function;
    mpreg_value v = mpreg_map();
    mpreg_err err = mp_set(MPREG_OK, &v, "name", mpreg_str(f->key.name));
    err = mp_set(err, &v, "function_id", mpreg_str(f->key.function_id));
    err = mp_set(err, &v, "version", mpreg_str(f->key.version));
    err = mp_set(err, &v, "node", mpreg_str(f->key.node));
    err = mp_set(err, &v, "cluster", mpreg_str(f->cluster));
    err = mp_set(err, &v, "resources", mp_strlist_value(&f->resources));
    if (err) {
        mpreg_value_free(&v);
    }
    return v;
}

static mpreg_value mp_topic_value(const mp_entry *e) {
    mpreg_value v = mpreg_map();
    mpreg_err err = mp_set(MPREG_OK, &v, "pattern", mpreg_str(e->u.topic.key.pattern));
    err = mp_set(err, &v, "node", mpreg_str(e->u.topic.key.node));
    if (e->u.topic.key.group && e->u.topic.key.group[0]) {
        err = mp_set(err, &v, "group", mpreg_str(e->u.topic.key.group));
    }
    if (err) {
        mpreg_value_free(&v);
    }
    return v;
}

static mpreg_value mp_node_value(const mp_entry *e) {
    mpreg_value v = mpreg_map();
    mpreg_err err = mp_set(MPREG_OK, &v, "node", mpreg_str(e->u.node.key.node));
    err = mp_set(err, &v, "name", mpreg_str(e->u.node.name));
    err = mp_set(err, &v, "cluster", mpreg_str(e->u.node.cluster));
    err = mp_set(err, &v, "endpoints", mp_strlist_value(&e->u.node.endpoints));
    err = mp_set(err, &v, "incarnation", mpreg_int((int64_t)e->u.node.incarnation));
    if (err) {
        mpreg_value_free(&v);
    }
    return v;
}

/* --- catalog pages -------------------------------------------------------------
 *
 * A catalog can outgrow a frame (thousands of worker functions, one topic
 * interest per subscription), so a reply is a page: the node adds entries,
 * kind after kind and each kind sorted, while the reply still fits in
 * max_frame (and the request's `limit`), and names the last one it added
 * in `next`. The client sends that back as `after` and gets the entries
 * that sort after it. A cursor is a key rather than an offset, so entries
 * added or removed between pages neither shift the rest nor repeat. The
 * request may also name the kinds it wants: `mpreg catalog --kind nodes`
 * needs no function list built, sent and thrown away. PROTOCOL 13.2. */

/* The kinds in the order a reply lists them and pages walk them. */
typedef struct mp_cat_kind {
    const char *name;
    mp_entry_kind kind;
    size_t nkey; /* strings in its sort key */
    void (*key)(const mp_entry *e, const char *out[4]);
    int (*cmp)(const void *, const void *);
    mpreg_value (*to_value)(const mp_entry *);
} mp_cat_kind;

/* Sort keys, in the order of the comparators above. */
static void mp_function_sort_key(const mp_entry *e, const char *k[4]) {
    const mp_function_key *f = &e->u.function.key;
    k[0] = f->name;
    k[1] = f->node;
    k[2] = f->function_id;
    k[3] = f->version;
}

static void mp_topic_sort_key(const mp_entry *e, const char *k[4]) {
    const mp_topic_key *t = &e->u.topic.key;
    k[0] = t->pattern;
    k[1] = t->node;
    k[2] = t->group ? t->group : "";
}

static void mp_node_sort_key(const mp_entry *e, const char *k[4]) {
    k[0] = e->u.node.key.node;
}

static const mp_cat_kind mp_cat_kinds[] = {
    {"functions", MP_ENTRY_FUNCTION, 4, mp_function_sort_key, mp_cmp_function, mp_function_value},
    {"topics", MP_ENTRY_TOPIC, 3, mp_topic_sort_key, mp_cmp_topic, mp_topic_value},
    {"nodes", MP_ENTRY_NODE, 1, mp_node_sort_key, mp_cmp_node, mp_node_value},
};
#define MP_CAT_KINDS (sizeof mp_cat_kinds / sizeof mp_cat_kinds[0])

/* What a catalog request asks for. Strings are borrowed from its payload. */
typedef struct mp_cat_query {
    unsigned kinds; /* bit i = mp_cat_kinds[i] */
    bool has_after;
    size_t after_kind;
    const char *after_key[4];
    uint64_t limit; /* entries per page; 0 = as many as fit */
} mp_cat_query;

static mpreg_err mp_cat_fail(char *why, size_t len, mpreg_err code, const char *msg) {
    snprintf(why, len, "%s", msg);
    return code;
}

static size_t mp_cat_kind_index(const mpreg_value *v) {
    size_t k = 0;
    while (k < MP_CAT_KINDS && strcmp(v->u.str.ptr, mp_cat_kinds[k].name) != 0) {
        k++;
    }
    return k;
}

/* A kind this node does not know (a newer node's) is asked for in vain, not
 * wrongly: the reply has no key for it. */
static mpreg_err mp_cat_parse_kinds(const mpreg_value *v, mp_cat_query *q, char *why, size_t len) {
    if (v->type != MPREG_ARRAY) {
        return mp_cat_fail(why, len, MPREG_E_TYPE, "kinds: expected an array of str");
    }
    if (v->u.arr.len == 0) {
        return mp_cat_fail(why, len, MPREG_E_INVALID, "kinds: empty (omit the key for all)");
    }
    q->kinds = 0;
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const mpreg_value *k = &v->u.arr.items[i];
        if (k->type != MPREG_STR) {
            return mp_cat_fail(why, len, MPREG_E_TYPE, "kinds: expected an array of str");
        }
        size_t idx = mp_cat_kind_index(k);
        q->kinds |= idx < MP_CAT_KINDS ? 1u << idx : 0;
    }
    return MPREG_OK;
}

/* `after` is a `next` this node gave: [kind, key strings...]. */
static mpreg_err mp_cat_parse_after(const mpreg_value *v, mp_cat_query *q, char *why, size_t len) {
    const char *bad = "after: not a 'next' this node sent";
    if (v->type != MPREG_ARRAY || v->u.arr.len < 2) {
        return mp_cat_fail(why, len, MPREG_E_INVALID, bad);
    }
    for (size_t i = 0; i < v->u.arr.len; i++) {
        if (v->u.arr.items[i].type != MPREG_STR) {
            return mp_cat_fail(why, len, MPREG_E_INVALID, bad);
        }
    }
    size_t k = mp_cat_kind_index(&v->u.arr.items[0]);
    if (k == MP_CAT_KINDS || v->u.arr.len != 1 + mp_cat_kinds[k].nkey) {
        return mp_cat_fail(why, len, MPREG_E_INVALID, bad);
    }
    q->has_after = true;
    q->after_kind = k;
    for (size_t i = 1; i < v->u.arr.len; i++) {
        q->after_key[i - 1] = v->u.arr.items[i].u.str.ptr;
    }
    return MPREG_OK;
}

/* The request's payload: none or {} for everything, else {"kinds"?,
 * "after"?, "limit"?}; any other key is refused, as everywhere. */
static mpreg_err mp_cat_query_parse(const mpreg_value *p, mp_cat_query *q, char *why, size_t len) {
    *q = (mp_cat_query){.kinds = (1u << MP_CAT_KINDS) - 1};
    if (p->type == MPREG_NIL) {
        return MPREG_OK;
    }
    if (p->type != MPREG_MAP) {
        return mp_cat_fail(why, len, MPREG_E_TYPE, "payload: expected a map");
    }
    mpreg_err err = MPREG_OK;
    for (size_t i = 0; i < p->u.map.len && !err; i++) {
        const char *key = p->u.map.items[i].key.u.str.ptr;
        const mpreg_value *v = &p->u.map.items[i].val;
        if (strcmp(key, "kinds") == 0) {
            err = mp_cat_parse_kinds(v, q, why, len);
        } else if (strcmp(key, "after") == 0) {
            err = mp_cat_parse_after(v, q, why, len);
        } else if (strcmp(key, "limit") == 0) {
            if (v->type != MPREG_INT || v->u.i < 1) {
                err = mp_cat_fail(why, len, v->type == MPREG_INT ? MPREG_E_RANGE : MPREG_E_TYPE,
                                  "limit: expected an int >= 1");
            }
            q->limit = err ? 0 : (uint64_t)v->u.i;
        } else {
            snprintf(why, len, "unknown key '%.64s' (known: kinds, after, limit)", key);
            err = MPREG_E_INVALID;
        }
    }
    return err;
}

/* A page being filled: payload bytes it may still take, and where it ends. */
typedef struct mp_cat_page {
    size_t room;
    uint64_t limit;
    uint64_t count;
    bool full;            /* an entry was left for the next page */
    const mp_entry *last; /* the last entry added, and its kind */
    size_t last_kind;
    mp_buf scratch;
} mp_cat_page;

/* The encoded size of `next` naming e: [kind, key...] after the key "next". */
static size_t mp_cat_cursor_size(size_t kind, const mp_entry *e) {
    const char *key[4];
    mp_cat_kinds[kind].key(e, key);
    size_t n = 5 + 5 + 5 + strlen(mp_cat_kinds[kind].name);
    for (size_t i = 0; i < mp_cat_kinds[kind].nkey; i++) {
        n += 5 + strlen(key[i]);
    }
    return n;
}

static int mp_cat_key_cmp(const mp_cat_query *q, size_t kind, const mp_entry *e) {
    const char *key[4];
    mp_cat_kinds[kind].key(e, key);
    int c = 0;
    for (size_t i = 0; i < mp_cat_kinds[kind].nkey && c == 0; i++) {
        c = strcmp(key[i], q->after_key[i]);
    }
    return c;
}

/* Adds the kind's entries that come after the cursor while they fit. */
static mpreg_err mp_cat_fill(const mp_node *n, const mp_cat_query *q, size_t kind, mp_cat_page *pg,
                             mpreg_value *out) {
    *out = mpreg_array();
    if (pg->full || (q->has_after && kind < q->after_kind)) {
        return MPREG_OK;
    }
    mp_entry_list l = {0};
    mp_catalog_each(n->catalog, mp_cat_kinds[kind].kind, mp_collect, &l);
    mpreg_err err = l.nomem ? MPREG_E_NOMEM : MPREG_OK;
    if (!err && l.len > 1) {
        qsort(l.items, l.len, sizeof *l.items, mp_cat_kinds[kind].cmp);
    }
    size_t i = 0;
    while (q->has_after && kind == q->after_kind && i < l.len &&
           mp_cat_key_cmp(q, kind, l.items[i]) <= 0) {
        i++;
    }
    for (; i < l.len && !err; i++) {
        mpreg_value v = mp_cat_kinds[kind].to_value(l.items[i]);
        pg->scratch.len = 0;
        err = v.type == MPREG_MAP ? mpreg_value_encode(&v, &pg->scratch) : MPREG_E_NOMEM;
        size_t need = pg->scratch.len + mp_cat_cursor_size(kind, l.items[i]);
        if (!err && (need > pg->room || (pg->limit && pg->count == pg->limit))) {
            pg->full = true;
            mpreg_value_free(&v);
            break;
        }
        err = err ? (mpreg_value_free(&v), err) : mpreg_array_push(out, v);
        pg->room -= err ? 0 : pg->scratch.len;
        pg->count++;
        pg->last = l.items[i];
        pg->last_kind = kind;
    }
    free(l.items);
    return err;
}

static mpreg_value mp_cat_cursor(const mp_cat_page *pg) {
    const char *key[4];
    mp_cat_kinds[pg->last_kind].key(pg->last, key);
    mpreg_value c = mpreg_array();
    mpreg_err err = mpreg_array_push(&c, mpreg_str(mp_cat_kinds[pg->last_kind].name));
    for (size_t i = 0; i < mp_cat_kinds[pg->last_kind].nkey && !err; i++) {
        err = mpreg_array_push(&c, mpreg_str(key[i]));
    }
    if (err) {
        mpreg_value_free(&c);
    }
    return c;
}

/* One page of the catalog in at most `room` payload bytes. */
static mpreg_err mp_cat_page_build(const mp_node *n, const mp_cat_query *q, size_t room,
                                   mpreg_value *out, char *why, size_t why_len) {
    mp_cat_page pg = {.limit = q->limit, .scratch = MP_BUF_INIT};
    /* The map's own bytes: its head, each kind's key and array head. */
    size_t frame = 1 + 5;
    for (size_t k = 0; k < MP_CAT_KINDS; k++) {
        frame += (q->kinds & (1u << k)) ? 1 + strlen(mp_cat_kinds[k].name) + 5 : 0;
    }
    pg.room = room > frame ? room - frame : 0;
    *out = mpreg_map();
    mpreg_err err = MPREG_OK;
    for (size_t k = 0; k < MP_CAT_KINDS && !err; k++) {
        if (q->kinds & (1u << k)) {
            mpreg_value list;
            err = mp_cat_fill(n, q, k, &pg, &list);
            err = mp_set(err, out, mp_cat_kinds[k].name, list);
        }
    }
    mp_buf_free(&pg.scratch);
    if (!err && pg.full && pg.count == 0) {
        snprintf(why, why_len, "a catalog entry alone exceeds the frame limit (max_frame %u)",
                 (unsigned)n->max_frame);
        err = MPREG_E_TOO_LARGE;
    }
    if (!err && pg.full) {
        mpreg_value next = mp_cat_cursor(&pg);
        err = next.type == MPREG_ARRAY ? mpreg_map_set(out, "next", next) : MPREG_E_NOMEM;
    }
    if (err) {
        mpreg_value_free(out);
    }
    return err;
}

mpreg_err mp_control_catalog(const mp_node *n, mpreg_value *out) {
    mp_cat_query q = {.kinds = (1u << MP_CAT_KINDS) - 1};
    char why[128];
    return mp_cat_page_build(n, &q, SIZE_MAX, out, why, sizeof why);
}

/* Payload bytes a CONTROL_REPLY to env may carry within max_frame: the
 * envelope around an empty payload is measured, plus the growth of the
 * payload's bin head (2 bytes empty, 5 at most). */
static size_t mp_cat_reply_room(const mp_node *n, const mp_envelope *env) {
    mp_envelope reply;
    mp_envelope_init(&reply, MP_KIND_CONTROL_REPLY);
    reply.id = env->id; /* any id: they all encode to the same size */
    reply.correlation_id = env->id;
    reply.topic = env->topic;
    reply.source_node = mp_str_c(n->node_id);
    reply.source_cluster = mp_str_c(n->cluster);
    mp_buf b = MP_BUF_INIT;
    size_t used = mp_envelope_encode(&reply, &b) == MPREG_OK ? b.len + 8 : n->max_frame;
    mp_buf_free(&b);
    return n->max_frame > used ? n->max_frame - used : 0;
}

/* The catalog request: parses the query, builds the page. On failure *why
 * holds the message for the ERROR. */
static mpreg_err mp_control_catalog_page(const mp_node *n, const mp_envelope *env, mpreg_value *out,
                                         char *why, size_t why_len) {
    mpreg_value p = mpreg_nil();
    mpreg_err err = MPREG_OK;
    if (env->payload.len > 0) {
        err = mpreg_value_decode(env->payload.ptr, env->payload.len, NULL, &p);
        if (err) {
            snprintf(why, why_len, "payload: %s", mpreg_strerror(err));
            return err;
        }
    }
    mp_cat_query q;
    err = mp_cat_query_parse(&p, &q, why, why_len);
    if (!err) {
        err = mp_cat_page_build(n, &q, mp_cat_reply_room(n, env), out, why, why_len);
    }
    mpreg_value_free(&p);
    return err;
}

/* --- subscriptions -------------------------------------------------------------- */

static int mp_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The asking connection's own subscriptions and what each has delivered and
 * dropped: how a slow consumer finds out what it missed. */
static mpreg_err mp_control_subscriptions(const mp_node *n, const mp_conn *c, mpreg_value *out) {
    uint64_t *ids = malloc((c->sub_count ? c->sub_count : 1) * sizeof *ids);
    if (!ids) {
        return MPREG_E_NOMEM;
    }
    if (c->sub_count) {
        memcpy(ids, c->subs, c->sub_count * sizeof *ids);
        qsort(ids, c->sub_count, sizeof *ids, mp_cmp_u64);
    }
    mpreg_value list = mpreg_array();
    mpreg_err err = MPREG_OK;
    for (uint32_t i = 0; i < c->sub_count && !err; i++) {
        mp_pubsub_sub_stats st = {0};
        mp_pubsub_sub_stats_get(n->pubsub, ids[i], &st);
        mpreg_value v = mpreg_map();
        err = mp_set(MPREG_OK, &v, "subscription", mp_uint_value(ids[i]));
        err = mp_set(err, &v, "delivered", mp_uint_value(st.delivered));
        err = mp_set(err, &v, "dropped", mp_uint_value(st.dropped));
        err = err ? (mpreg_value_free(&v), err) : mpreg_array_push(&list, v);
    }
    free(ids);
    *out = mpreg_map();
    err = mp_set(err, out, "subscriptions", list);
    if (err) {
        mpreg_value_free(out);
    }
    return err;
}

/* --- the CONTROL envelope ------------------------------------------------------- */

void mp_control_on_request(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mpreg_value v = mpreg_nil();
    mpreg_err err;
    if (mp_str_eq_c(env->topic, "status")) {
        err = mp_node_status(n, n->now_ms, &v);
    } else if (mp_str_eq_c(env->topic, "catalog")) {
        char why[160] = "";
        err = mp_control_catalog_page(n, env, &v, why, sizeof why);
        if (err && why[0]) {
            mp_node_send_errorf(n, c->id, &env->id, err, "CONTROL catalog: %s", why);
            return;
        }
    } else if (mp_str_eq_c(env->topic, "subscriptions")) {
        err = mp_control_subscriptions(n, c, &v);
    } else if (mp_str_eq_c(env->topic, "members")) {
        err = mp_node_members(n, n->now_ms, &v);
    } else {
        mp_node_send_errorf(n, c->id, &env->id, MPREG_E_INVALID,
                            "unknown control operation '%.*s' (known: status, catalog, "
                            "subscriptions, members)",
                            (int)(env->topic.len > 64 ? 64 : env->topic.len),
                            env->topic.ptr ? env->topic.ptr : "");
        return;
    }
    mp_buf p = MP_BUF_INIT;
    err = err ? err : mpreg_value_encode(&v, &p);
    if (!err) {
        mp_envelope reply;
        mp_envelope_init(&reply, MP_KIND_CONTROL_REPLY);
        reply.correlation_id = env->id;
        reply.topic = env->topic;
        reply.payload = (mp_bytes){p.data, p.len};
        err = mp_node_send(n, c->id, &reply);
    }
    if (err && err != MPREG_E_CLOSED) {
        mp_node_send_errorf(
            n, c->id, &env->id, err == MPREG_E_FRAME_TOO_LARGE ? MPREG_E_TOO_LARGE : err,
            "CONTROL %.*s: %s", (int)env->topic.len, env->topic.ptr, mpreg_strerror(err));
    }
    mp_conn_check_backpressure(n, c);
    mp_buf_free(&p);
    mpreg_value_free(&v);
}
