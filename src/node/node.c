/* node.c - the node's lifecycle: configuration, the modules it composes,
 * logging, catalog advertising, ticks and the graceful stop.
 *
 * The rest of the node lives next door (node_internal.h has the map). This
 * file wires the catalog, the routing engine and the pub/sub service
 * together, advertises what the node is in the catalog, and turns the
 * driver's clock into timer firings. */
#include "node/node_internal.h"

#include "core/frame.h"
#include "core/str.h"
#include "mpreg/value.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- small helpers shared by the node's files ------------------------------ */

const char *mp_log_level_name(mp_log_level level) {
    switch (level) {
    case MP_LOG_ERROR:
        return "error";
    case MP_LOG_WARN:
        return "warn";
    case MP_LOG_INFO:
        return "info";
    case MP_LOG_DEBUG:
        return "debug";
    }
    return "unknown";
}

void mp_node_log(const mp_node *n, mp_log_level level, const char *fmt, ...) {
    if (!n->io.log || level > n->log_level) {
        return;
    }
    /* One line, cut if it must be: a log line is not worth an allocation. */
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    n->io.log(n->io.ud, level, line);
}

typedef struct mp_log_every {
    uint64_t next_ms;    /* the next line with this key is logged from then on */
    uint32_t suppressed; /* lines left out since the last one logged */
} mp_log_every;

/* The window's state for key, created if need be; when the table is full
 * (a peer could make up ids to flood it), expired windows go, and if
 * none has, every new key shares one window. */
static mp_log_every *mp_log_every_get(mp_node *n, const char *key) {
    mp_log_every *w = mp_map_get(&n->log_every, key, strlen(key));
    if (w) {
        return w;
    }
    if (mp_map_count(&n->log_every) >= MP_NODE_LOG_EVERY_KEYS) {
        size_t iter = 0;
        const void *k;
        size_t klen;
        void *val;
        /* The map must not change while iterated: one expired key per pass. */
        while (mp_map_count(&n->log_every) >= MP_NODE_LOG_EVERY_KEYS) {
            bool found = false;
            iter = 0;
            while (mp_map_next(&n->log_every, &iter, &k, &klen, &val)) {
                if (((mp_log_every *)val)->next_ms <= n->now_ms) {
                    free(mp_map_remove(&n->log_every, k, klen));
                    found = true;
                    break;
                }
            }
            if (!found) {
                key = "*";
                w = mp_map_get(&n->log_every, key, 1);
                if (w) {
                    return w;
                }
                break;
            }
        }
    }
    w = calloc(1, sizeof *w);
    if (w && mp_map_put(&n->log_every, key, strlen(key), w, NULL) != MPREG_OK) {
        free(w);
        w = NULL;
    }
    return w;
}

void mp_node_log_every(mp_node *n, mp_log_level level, const char *key, const char *fmt, ...) {
    if (!n->io.log || level > n->log_level) {
        return;
    }
    mp_log_every *w = mp_log_every_get(n, key);
    if (w && n->now_ms < w->next_ms) {
        w->suppressed++;
        return;
    }
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t at = len < 0 ? 0 : (size_t)len < sizeof line ? (size_t)len : sizeof line - 1;
    if (w && w->suppressed > 0) {
        snprintf(line + at, sizeof line - at, " (%u more like this in the last %u s)",
                 w->suppressed, MP_NODE_LOG_EVERY_MS / 1000);
    }
    if (w) {
        w->next_ms = mp_add_ms(n->now_ms, MP_NODE_LOG_EVERY_MS);
        w->suppressed = 0;
    }
    n->io.log(n->io.ud, level, line);
}

static int mp_cstr_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds add's items that dst lacks, then sorts: advertised resource lists
 * are canonical, so the same providers always give the same entry. */
mpreg_err mp_strlist_union_into(mp_strlist *dst, const mp_strlist *add) {
    for (uint32_t i = 0; add && i < add->count; i++) {
        if (!mp_strlist_contains(dst, add->items[i])) {
            mpreg_err err = mp_strlist_push(dst, add->items[i]);
            if (err) {
                return err;
            }
        }
    }
    if (dst->count > 1) {
        qsort(dst->items, dst->count, sizeof *dst->items, mp_cstr_cmp);
    }
    return MPREG_OK;
}

mpreg_err mp_node_advertise(mp_node *n, mp_entry *e) {
    e->version.incarnation = n->incarnation;
    e->version.counter = ++n->counter;
    e->ttl_ms = 0; /* our own entries live as long as we do */
    mp_apply_result result;
    mpreg_err err = mp_catalog_apply_entry(n->catalog, e, n->now_ms, &result);
    if (err) {
        mp_node_log(n, MP_LOG_WARN, "catalog refused an entry of this node: %s",
                    mpreg_err_name(err));
    } else if (result == MP_APPLY_ADDED || result == MP_APPLY_UPDATED ||
               result == MP_APPLY_WITHDRAWN) {
        mp_cluster_entry_changed(n, e);
    }
    return err;
}

/* --- configuration --------------------------------------------------------- */

static bool mp_name_ok(const char *s, size_t max) {
    size_t len = s ? strlen(s) : 0;
    return len > 0 && len <= max && mpreg_utf8_valid(s, len);
}

static bool mp_config_ok(const mp_node_config *cfg, const mp_node_io *io, mp_rng *rng) {
    if (!cfg || !io || !rng || !io->output || !io->output_commit || !io->over_high_water ||
        !io->set_reading || !io->close) {
        return false;
    }
    if (!mp_name_ok(cfg->node_id, MP_MAX_NAME_LEN) ||
        (cfg->cluster && !mp_name_ok(cfg->cluster, MP_MAX_NAME_LEN)) ||
        (cfg->name && !mp_name_ok(cfg->name, MP_ENTRY_MAX_STR))) {
        return false;
    }
    if (cfg->resource_count > MP_ENTRY_MAX_RESOURCES ||
        (cfg->resource_count > 0 && !cfg->resources)) {
        return false;
    }
    if (cfg->node_key_len > MP_SWIM_MAX_KEY || (cfg->node_key_len > 0 && !cfg->node_key)) {
        return false;
    }
    for (uint32_t i = 0; i < cfg->resource_count; i++) {
        if (!mp_name_ok(cfg->resources[i], MP_ENTRY_MAX_STR)) {
            return false;
        }
    }
    return true;
}

void mp_node_limits_default(mp_node_limits *l) {
    *l = (mp_node_limits){
        .conns = 10000,
        .subs_per_conn = 10000,
        .subs_per_node = 100000,
        .patterns_per_conn = 4096,
        .patterns_per_node = 100000,
        .functions_per_conn = 256,
        .functions_per_node = 10000,
        .requests_per_conn = 1024,
        .requests_per_node = 16384,
        .request_bytes = 16u * 1024u * 1024u,
        .results_bytes = 256u * 1024u * 1024u,
        .tombstones = 200000,
    };
}

void mp_node_limits_resolve(mp_node_limits *l) {
    mp_node_limits d;
    mp_node_limits_default(&d);
#define MP_LIMIT_DEFAULT(f)                                                                        \
    if (l->f == 0) {                                                                               \
        l->f = d.f;                                                                                \
    }
    MP_LIMIT_DEFAULT(conns)
    MP_LIMIT_DEFAULT(subs_per_conn)
    MP_LIMIT_DEFAULT(subs_per_node)
    MP_LIMIT_DEFAULT(patterns_per_conn)
    MP_LIMIT_DEFAULT(patterns_per_node)
    MP_LIMIT_DEFAULT(functions_per_conn)
    MP_LIMIT_DEFAULT(functions_per_node)
    MP_LIMIT_DEFAULT(requests_per_conn)
    MP_LIMIT_DEFAULT(requests_per_node)
    MP_LIMIT_DEFAULT(request_bytes)
    MP_LIMIT_DEFAULT(results_bytes)
    MP_LIMIT_DEFAULT(tombstones)
#undef MP_LIMIT_DEFAULT
}

static mpreg_err mp_node_copy_config(mp_node *n, const mp_node_config *cfg) {
    n->node_id = mp_strdup(cfg->node_id);
    n->name = mp_strdup(cfg->name ? cfg->name : cfg->node_id);
    n->cluster = mp_strdup(cfg->cluster ? cfg->cluster : "default");
    /* An empty token is no token: nobody could be refused for lacking it. */
    bool has_token = cfg->token && cfg->token[0];
    n->token = has_token ? mp_strdup(cfg->token) : NULL;
    if (!n->node_id || !n->name || !n->cluster || (has_token && !n->token)) {
        return MPREG_E_NOMEM;
    }
    for (uint32_t i = 0; i < cfg->resource_count; i++) {
        mp_strlist one = {(char **)&cfg->resources[i], 1};
        mpreg_err err = mp_strlist_union_into(&n->resources, &one);
        if (err) {
            return err;
        }
    }
    n->incarnation = cfg->incarnation;
    if (cfg->node_key_len) {
        memcpy(n->node_key, cfg->node_key, cfg->node_key_len);
        n->node_key_len = (uint8_t)cfg->node_key_len;
    }
    n->max_frame = cfg->max_frame ? cfg->max_frame : MP_FRAME_DEFAULT_MAX;
    if (n->max_frame > MP_FRAME_LIMIT_MAX) {
        n->max_frame = MP_FRAME_LIMIT_MAX;
    }
    n->limits = cfg->limits;
    mp_node_limits_resolve(&n->limits);
    n->handshake_timeout_ms =
        cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : MP_NODE_DEFAULT_HANDSHAKE_MS;
    n->rpc_timeout_ms = cfg->rpc_timeout_ms ? cfg->rpc_timeout_ms : MP_NODE_DEFAULT_RPC_TIMEOUT_MS;
    n->log_level = cfg->log_level;
    return MPREG_OK;
}

static bool mp_pubsub_config_zero(const mp_pubsub_config *c) {
    return c->retain_per_topic == 0 && c->retain_max_bytes == 0 && c->dedupe_max_ids == 0 &&
           c->dedupe_window_ms == 0;
}

static mpreg_err mp_node_compose(mp_node *n, const mp_node_config *cfg) {
    mp_catalog_config cc = {.local_node = n->node_id,
                            .local_cluster = n->cluster,
                            .tombstone_ttl_ms = cfg->tombstone_ttl_ms};
    n->catalog = mp_catalog_new(&cc);
    if (!n->catalog) {
        return MPREG_E_NOMEM;
    }
    mp_engine_config ec = {.catalog = n->catalog, .rng = n->rng};
    n->engine = mp_engine_new(&ec);
    mp_pubsub_config pc = cfg->pubsub;
    if (mp_pubsub_config_zero(&pc)) {
        mp_pubsub_config_default(&pc);
    }
    n->pubsub_retains = pc.retain_per_topic > 0;
    mp_pubsub_hooks hooks = {.ud = n, .deliver = mp_ps_deliver, .on_interest = mp_ps_interest};
    n->pubsub = mp_pubsub_new(&pc, &hooks);
    return n->engine && n->pubsub ? MPREG_OK : MPREG_E_NOMEM;
}

/* The node descriptor: what other nodes learn about this one. */
static mpreg_err mp_node_describe(mp_node *n, const mp_node_config *cfg) {
    mp_entry e;
    mpreg_err err = mp_entry_node(&e, n->node_id, n->name, n->cluster, n->incarnation);
    if (err) {
        return err;
    }
    static const char *const caps[] = {"rpc", "pubsub"};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0] && !err; i++) {
        err = mp_strlist_push(&e.u.node.capabilities, caps[i]);
    }
    if (!err) {
        err = mp_strlist_append(&e.u.node.resources, &n->resources);
    }
    if (!err && cfg->advertise_addr) {
        err = mp_strlist_push(&e.u.node.endpoints, cfg->advertise_addr);
    }
    if (!err) {
        err = mp_node_advertise(n, &e);
    }
    mp_entry_free(&e);
    return err;
}

mp_node *mp_node_new(const mp_node_config *cfg, const mp_node_io *io, mp_rng *rng,
                     uint64_t now_ms) {
    if (!mp_config_ok(cfg, io, rng)) {
        return NULL;
    }
    mp_node *n = calloc(1, sizeof *n);
    if (!n) {
        return NULL;
    }
    n->io = *io;
    n->rng = rng;
    n->started_ms = n->now_ms = now_ms;
    n->registry.node = n;
    mp_map_init(&n->conns);
    mp_map_init(&n->functions);
    mp_map_init(&n->invokes);
    mp_list_init(&n->conn_list);
    mp_list_init(&n->orphans);
    mp_map_init(&n->origins);
    mp_map_init(&n->log_every);
    mp_links_init(&n->links, cfg->max_peer_conns ? cfg->max_peer_conns : MP_LINKS_DEFAULT_MAX);
    if (mp_node_copy_config(n, cfg) || mp_node_compose(n, cfg) || mp_node_describe(n, cfg) ||
        (!cfg->no_builtins && mp_builtins_register(n)) || mp_cluster_start(n, cfg)) {
        mp_node_free(n);
        return NULL;
    }
    mp_node_log(n, MP_LOG_INFO, "node %s (%s) of cluster %s, incarnation %llu", n->node_id, n->name,
                n->cluster, (unsigned long long)n->incarnation);
    return n;
}

static void mp_conn_free_all(mp_node *n) {
    /* Requests first, everywhere: freeing them releases the calls they have
     * on workers, so nothing is failed (and nothing sent) on the way out. */
    for (mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        mp_rpc_conn_requests_drop(n, MP_CONTAINER(l, mp_conn, link));
    }
    while (!mp_list_empty(&n->conn_list)) {
        mp_conn *c = MP_CONTAINER(n->conn_list.next, mp_conn, link);
        mp_list_remove(&c->link);
        mp_timer_cancel(&n->timers, &c->handshake);
        free(c->subs);
        free(c->name);
        free(c->addr);
        free(c->peer_id);
        free(c);
    }
    mp_map_free(&n->conns, NULL);
}

void mp_node_free(mp_node *n) {
    if (!n) {
        return;
    }
    mp_conn_free_all(n);
    mp_cluster_free(n);
    mp_rpc_free_orphans(n);
    mp_functions_free_all(n);
    mp_map_free(&n->invokes, NULL);
    mp_timer_heap_free(&n->timers);
    free(n->shed_pending);
    mp_pubsub_free(n->pubsub);
    mp_engine_free(n->engine);
    mp_catalog_free(n->catalog);
    mp_strlist_free(&n->resources);
    mp_map_free(&n->log_every, free);
    free(n->node_id);
    free(n->name);
    free(n->cluster);
    free(n->token);
    free(n);
}

/* --- time ------------------------------------------------------------------ */

void mp_node_tick(mp_node *n, uint64_t now_ms) {
    n->now_ms = now_ms;
    mp_timers_run(&n->timers, n, now_ms);
    mp_catalog_expire(n->catalog, now_ms);
    mp_pubsub_expire(n->pubsub, now_ms);
    mp_cluster_tick(n);
}

uint64_t mp_node_next_wakeup(const mp_node *n) {
    uint64_t t = mp_timers_next(&n->timers);
    uint64_t c = mp_catalog_next_expiry(n->catalog);
    uint64_t m = mp_cluster_next_wakeup(n);
    t = t < c ? t : c;
    return t < m ? t : m;
}

/* --- stop ------------------------------------------------------------------ */

void mp_node_stop(mp_node *n, uint64_t now_ms) {
    n->now_ms = now_ms;
    if (n->stopping) {
        return;
    }
    n->stopping = true;
    mp_node_log(n, MP_LOG_INFO, "stopping: saying goodbye to %zu connections",
                mp_map_count(&n->conns));
    for (mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        mp_conn *c = MP_CONTAINER(l, mp_conn, link);
        if (c->state == MP_CONN_CLOSING) {
            continue;
        }
        mp_rpc_conn_requests_fail(n, c, MPREG_E_CLOSED, "the node is stopping");
        mp_envelope bye;
        mp_envelope_init(&bye, MP_KIND_GOODBYE);
        mp_node_send(n, c->id, &bye);
        mp_node_close_conn(n, c, MPREG_E_CLOSED);
    }
}

void mp_node_leave(mp_node *n, uint64_t now_ms) {
    n->now_ms = now_ms;
    if (!n->stopping) {
        mp_cluster_leave(n);
    }
}

/* --- accessors ------------------------------------------------------------- */

mpreg_registry *mp_node_registry(mp_node *n) {
    return &n->registry;
}

mp_catalog *mp_node_catalog(mp_node *n) {
    return n->catalog;
}

const char *mp_node_id(const mp_node *n) {
    return n->node_id;
}
