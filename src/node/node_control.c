/* node_control.c - CONTROL: what a node says about itself.
 *
 * A CONTROL envelope names its operation in the topic and gets one
 * CONTROL_REPLY (or an ERROR). "status" is the node's vital signs,
 * "catalog" what the node knows about the fabric, "subscriptions" the
 * asking connection's own subscriptions with their counts, "members" the
 * cluster's members as this node sees them (node_cluster.c), all as plain
 * values so that the CLI can print them as JSON. Lists are sorted, so two nodes with
 * the same catalog print the same text. */
#include "node/node_internal.h"

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
    /* The service counts a delivery when it hands it to the node, which
     * may still shed it: those are drops, not deliveries. */
    uint64_t delivered = ps.delivered > n->counters.shed ? ps.delivered - n->counters.shed : 0;
    err = mp_set(err, &counters, "delivered", mp_uint_value(delivered));
    err = mp_set(err, &counters, "dropped", mp_uint_value(ps.dropped + n->counters.shed));
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
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        const mp_entry **items = realloc(l->items, cap * sizeof *items);
        if (!items) {
            l->nomem = true;
            return false;
        }
        l->items = items;
        l->cap = cap;
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

/* The live entries of one kind, sorted, each made a value. */
static mpreg_err mp_catalog_list(const mp_node *n, mp_entry_kind kind,
                                 int (*cmp)(const void *, const void *),
                                 mpreg_value (*to_value)(const mp_entry *), mpreg_value *out) {
    mp_entry_list l = {0};
    mp_catalog_each(n->catalog, kind, mp_collect, &l);
    mpreg_err err = l.nomem ? MPREG_E_NOMEM : MPREG_OK;
    if (!err && l.len > 1) {
        qsort(l.items, l.len, sizeof *l.items, cmp);
    }
    *out = mpreg_array();
    for (size_t i = 0; i < l.len && !err; i++) {
        mpreg_value v = to_value(l.items[i]);
        err = v.type == MPREG_MAP ? mpreg_array_push(out, v) : MPREG_E_NOMEM;
    }
    free(l.items);
    return err;
}

mpreg_err mp_control_catalog(const mp_node *n, mpreg_value *out) {
    mpreg_value functions, topics, nodes;
    mpreg_err err =
        mp_catalog_list(n, MP_ENTRY_FUNCTION, mp_cmp_function, mp_function_value, &functions);
    mpreg_err e2 = mp_catalog_list(n, MP_ENTRY_TOPIC, mp_cmp_topic, mp_topic_value, &topics);
    mpreg_err e3 = mp_catalog_list(n, MP_ENTRY_NODE, mp_cmp_node, mp_node_value, &nodes);
    err = err ? err : e2 ? e2 : e3;
    *out = mpreg_map();
    err = mp_set(err, out, "functions", functions);
    err = mp_set(err, out, "topics", topics);
    err = mp_set(err, out, "nodes", nodes);
    if (err) {
        mpreg_value_free(out);
    }
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
        err = mp_control_catalog(n, &v);
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
