/* node_conn.c - connections: the handshake, dispatch by kind, sending, and
 * the end of a connection.
 *
 * A connection starts in HANDSHAKE: its first frame must be a HELLO, within
 * handshake_timeout_ms, else it gets an ERROR and is closed (after the
 * ERROR is flushed). Once OPEN, a frame that does not decode gets an ERROR
 * and the connection carries on: the length prefix keeps the stream in step,
 * so one bad envelope says nothing about the next. Only a broken framing
 * (the driver's mp_node_on_protocol_error) or a failed handshake closes.
 *
 * The node never answers an ERROR with an ERROR: two confused endpoints
 * would otherwise bounce them forever. */
#include "node/node_internal.h"

#include "core/frame.h"
#include "core/mpread.h"
#include "core/str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mp_conn *mp_conn_get(const mp_node *n, uint64_t id) {
    return mp_map_get(&n->conns, &id, sizeof id);
}

/* --- sending --------------------------------------------------------------- */

/* Encodes env as one frame at the end of out and commits it. */
static mpreg_err mp_node_frame_into(mp_node *n, uint64_t conn, mp_buf *out, mp_envelope *env) {
    if (mp_id_is_zero(&env->id)) {
        env->id = mp_id_new(n->rng);
    }
    if (mp_str_empty(env->source_node)) {
        env->source_node = mp_str_c(n->node_id);
        env->source_cluster = mp_str_c(n->cluster);
    }
    size_t start = mp_frame_begin(out);
    if (start == MP_FRAME_BEGIN_FAILED) {
        return MPREG_E_NOMEM;
    }
    mpreg_err err = mp_envelope_encode(env, out);
    if (err) {
        out->len = start;
        return err;
    }
    /* Never send what the peer must refuse: a frame over max_frame is cut
     * back out of the buffer and the caller hears FRAME_TOO_LARGE. */
    err = mp_frame_end(out, start, n->max_frame);
    if (err) {
        return err;
    }
    n->io.output_commit(n->io.ud, conn, 1);
    mp_node_note_output(n, conn);
    return MPREG_OK;
}

mpreg_err mp_node_send_droppable(mp_node *n, uint64_t conn, mp_envelope *env) {
    mp_buf *out = n->io.output(n->io.ud, conn);
    if (!out) {
        const mp_conn *c = mp_conn_get(n, conn);
        /* Open here but refused by the driver: its output is at the hard
         * limit. Gone or closing: nobody is owed anything any more. */
        return c && c->state != MP_CONN_CLOSING ? MPREG_E_BACKPRESSURE : MPREG_E_CLOSED;
    }
    return mp_node_frame_into(n, conn, out, env);
}

/* The connection's output is at its hard limit and the node has an answer
 * for it that must not be lost. Buffering on would let a client that does
 * not read grow the node without bound; dropping the answer would leave it
 * waiting for ever. So it is closed, after one last ERROR that says why
 * (the driver takes that frame past the limit), and the client knows that
 * what it did not get is lost with the connection. */
static void mp_conn_overflow(mp_node *n, mp_conn *c, mp_kind kind) {
    mp_buf *out = n->io.output_final ? n->io.output_final(n->io.ud, c->id) : NULL;
    if (out) {
        n->counters.overflow_closes++;
        mp_node_log(n, MP_LOG_WARN,
                    "conn %llu (%s): output limit reached with a %s to send; closing it "
                    "(it does not read what it asked for)",
                    (unsigned long long)c->id,
                    c->name   ? c->name
                    : c->addr ? c->addr
                              : "?",
                    mp_kind_name(kind));
        char message[MP_RPC_MAX_MESSAGE];
        snprintf(message, sizeof message,
                 "output limit reached: the connection's unread output is at the node's hard "
                 "limit and a %s could not be queued; closing the connection (read your replies, "
                 "or pipeline less)",
                 mp_kind_name(kind));
        mp_rpc_error e = MP_RPC_ERROR_INIT;
        mp_rpc_error_set(&e, MPREG_E_BACKPRESSURE, NULL, "%s", message);
        mpreg_value v;
        mp_buf payload = MP_BUF_INIT;
        if (mp_rpc_error_to_value(&e, &v) == MPREG_OK) {
            if (mpreg_value_encode(&v, &payload) == MPREG_OK) {
                mp_envelope env;
                mp_envelope_init(&env, MP_KIND_ERROR);
                env.payload = (mp_bytes){payload.data, payload.len};
                mp_node_frame_into(n, c->id, out, &env);
            }
            mpreg_value_free(&v);
        }
        mp_buf_free(&payload);
        mp_rpc_error_free(&e);
    }
    mp_node_close_conn(n, c, MPREG_E_BACKPRESSURE);
}

mpreg_err mp_node_send(mp_node *n, uint64_t conn, mp_envelope *env) {
    mpreg_err err = mp_node_send_droppable(n, conn, env);
    if (err == MPREG_E_BACKPRESSURE) {
        mp_conn_overflow(n, mp_conn_get(n, conn), env->kind);
        return MPREG_E_CLOSED;
    }
    return err;
}

mpreg_err mp_node_send_value(mp_node *n, uint64_t conn, mp_kind kind, const mp_id *correlation,
                             const char *topic, const mpreg_value *v) {
    mp_buf payload = MP_BUF_INIT;
    mpreg_err err = v ? mpreg_value_encode(v, &payload) : MPREG_OK;
    if (!err) {
        mp_envelope env;
        mp_envelope_init(&env, kind);
        if (correlation) {
            env.correlation_id = *correlation;
        }
        env.topic = topic ? mp_str_c(topic) : MP_STR_NULL;
        env.payload = (mp_bytes){payload.data, payload.len};
        err = mp_node_send(n, conn, &env);
    }
    mp_buf_free(&payload);
    return err;
}

void mp_node_send_error(mp_node *n, uint64_t conn, const mp_id *correlation,
                        const mp_rpc_error *e) {
    mpreg_value v;
    mpreg_err err = mp_rpc_error_to_value(e, &v);
    if (!err) {
        err = mp_node_send_value(n, conn, MP_KIND_ERROR, correlation, NULL, &v);
    }
    mpreg_value_free(&v);
    if (err && err != MPREG_E_CLOSED) {
        mp_node_log(n, MP_LOG_WARN, "conn %llu: could not send an ERROR: %s",
                    (unsigned long long)conn, mpreg_err_name(err));
    }
}

void mp_node_send_errorf(mp_node *n, uint64_t conn, const mp_id *correlation, mpreg_err code,
                         const char *fmt, ...) {
    char message[MP_RPC_MAX_MESSAGE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&e, code, NULL, "%s", message);
    mp_node_send_error(n, conn, correlation, &e);
    mp_rpc_error_free(&e);
}

void mp_node_refuse_limit(mp_node *n, mp_conn *c, const mp_id *correlation, const char *op,
                          const char *limit_name, uint64_t have, uint64_t limit) {
    n->limit_refusals++;
    mp_node_log(n, MP_LOG_DEBUG, "conn %llu: %s refused: limit %s (%llu)",
                (unsigned long long)c->id, op, limit_name, (unsigned long long)limit);
    mp_node_send_errorf(n, c->id, correlation, MPREG_E_LIMIT,
                        "%s: limit %s reached (%llu held, at most %llu; mpregd --limit %s=N)", op,
                        limit_name, (unsigned long long)have, (unsigned long long)limit,
                        limit_name);
}

void mp_node_close_conn(mp_node *n, mp_conn *c, mpreg_err reason) {
    if (c->state == MP_CONN_CLOSING) {
        return;
    }
    c->state = MP_CONN_CLOSING;
    mp_timer_cancel(&n->timers, &c->handshake);
    n->io.close(n->io.ud, c->id, true, reason);
}

void mp_conn_check_backpressure(mp_node *n, mp_conn *c) {
    if (!c->reading_paused && c->state != MP_CONN_CLOSING &&
        n->io.over_high_water(n->io.ud, c->id)) {
        c->reading_paused = true;
        n->io.set_reading(n->io.ud, c->id, false);
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: over high water, reading paused",
                    (unsigned long long)c->id);
    }
}

/* --- opening and the handshake ---------------------------------------------- */

static void mp_handshake_expired(mp_node *n, mp_timer *t) {
    mp_conn *c = MP_CONTAINER(t, mp_conn, handshake);
    if (c->outbound) {
        /* A link this node dialed: the peer never answered the HELLO. */
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: no WELCOME from %s within %u ms",
                    (unsigned long long)c->id, c->addr ? c->addr : "?", n->handshake_timeout_ms);
        mp_node_close_conn(n, c, MPREG_E_UNREACHABLE);
        return;
    }
    mp_node_log(n, MP_LOG_INFO, "conn %llu: no HELLO within %u ms", (unsigned long long)c->id,
                n->handshake_timeout_ms);
    mp_node_send_errorf(n, c->id, NULL, MPREG_E_HANDSHAKE, "no HELLO within %u ms",
                        n->handshake_timeout_ms);
    mp_node_close_conn(n, c, MPREG_E_HANDSHAKE);
}

mp_conn *mp_conn_create(mp_node *n, uint64_t id, const char *addr) {
    mp_conn *c = calloc(1, sizeof *c);
    if (!c || (addr && !(c->addr = mp_strndup(addr, strlen(addr))))) {
        free(c);
        n->io.close(n->io.ud, id, false, MPREG_E_NOMEM);
        return NULL;
    }
    c->id = id;
    mp_list_init(&c->requests);
    mp_list_init(&c->invokes);
    mp_list_init(&c->functions);
    mp_list_init(&c->served);
    mp_list_init(&c->peer_link);
    mp_timer_init(&c->handshake, mp_handshake_expired);
    mp_timer_init(&c->stall, mp_ps_stall_over);
    if (mp_map_put(&n->conns, &c->id, sizeof c->id, c, NULL) ||
        mp_timer_arm(&n->timers, &c->handshake, mp_add_ms(n->now_ms, n->handshake_timeout_ms))) {
        mp_map_remove(&n->conns, &c->id, sizeof c->id);
        mp_timer_cancel(&n->timers, &c->handshake);
        free(c->addr);
        free(c);
        n->io.close(n->io.ud, id, false, MPREG_E_NOMEM);
        return NULL;
    }
    mp_list_push(&n->conn_list, &c->link);
    n->conn_total++;
    return c;
}

void mp_node_on_open(mp_node *n, uint64_t conn, const char *peer_addr, uint64_t now_ms) {
    n->now_ms = now_ms;
    if (n->stopping) {
        n->io.close(n->io.ud, conn, false, MPREG_E_CLOSED);
        return;
    }
    if (mp_conn_get(n, conn)) {
        mp_node_log(n, MP_LOG_WARN, "conn %llu opened twice", (unsigned long long)conn);
        return;
    }
    mp_conn *c = mp_conn_create(n, conn, peer_addr);
    if (c && n->conn_total > n->limits.conns) {
        /* Over the limit: told why, then closed, rather than held open or
         * dropped without a word (file descriptors are a node's to keep). */
        n->limit_refusals++;
        n->conns_refused++;
        /* Said at warn once a minute at most, with how many since. */
        if (n->conns_warned_at == 0 || n->now_ms - n->conns_warned_at >= 60000) {
            mp_node_log(n, MP_LOG_WARN,
                        "connection from %s refused: limit conns (%u) reached (%llu refused "
                        "since the last report; mpregd --limit conns=N, ulimit -n)",
                        peer_addr ? peer_addr : "?", n->limits.conns,
                        (unsigned long long)n->conns_refused);
            n->conns_warned_at = n->now_ms ? n->now_ms : 1;
            n->conns_refused = 0;
        }
        mp_node_send_errorf(n, conn, NULL, MPREG_E_LIMIT,
                            "connection refused: limit conns reached (at most %u connections; "
                            "mpregd --limit conns=N)",
                            n->limits.conns);
        mp_node_close_conn(n, c, MPREG_E_LIMIT);
        return;
    }
    if (c) {
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu open from %s", (unsigned long long)conn,
                    peer_addr ? peer_addr : "?");
    }
}

/* Compares the whole of both, whatever their contents, so the time taken
 * says nothing about how much of the token was right. */
static bool mp_token_equal(const char *want, mp_str got) {
    size_t wl = strlen(want);
    unsigned diff = wl != got.len;
    for (size_t i = 0; i < got.len; i++) {
        diff |= (unsigned)((uint8_t)got.ptr[i] ^ (uint8_t)want[i < wl ? i : 0]);
    }
    return diff == 0;
}

typedef struct mp_hello {
    mp_conn_role role;
    mp_str name;
    bool has_token;
    mp_str token;
    mp_str node;    /* peers: the member id */
    mp_str cluster; /* peers: its cluster */
    mp_bytes key;   /* peers: its identity key (len 0: none) */
} mp_hello;

static mp_str mp_value_view(const mpreg_value *v) {
    return (mp_str){v->u.str.ptr, v->u.str.len};
}

/* Reads the HELLO payload; unknown keys are ignored so that later versions
 * can say more in a HELLO. On error *why says what is wrong. */
static mpreg_err mp_hello_parse(const mpreg_value *v, mp_hello *h, const char **why) {
    memset(h, 0, sizeof *h);
    if (v->type != MPREG_MAP) {
        *why = "payload: expected a map";
        return MPREG_E_HANDSHAKE;
    }
    const mpreg_value *role = mpreg_map_get(v, "role");
    const mpreg_value *name = mpreg_map_get(v, "name");
    const mpreg_value *token = mpreg_map_get(v, "token");
    if (!role || role->type != MPREG_STR) {
        *why = "role: missing or not a string";
        return MPREG_E_HANDSHAKE;
    }
    if (mp_str_eq_c(mp_value_view(role), "client")) {
        h->role = MP_ROLE_CLIENT;
    } else if (mp_str_eq_c(mp_value_view(role), "peer")) {
        h->role = MP_ROLE_PEER;
    } else {
        *why = "role: must be \"client\" or \"peer\"";
        return MPREG_E_HANDSHAKE;
    }
    if (name && (name->type != MPREG_STR || name->u.str.len > MP_NODE_MAX_HELLO_NAME ||
                 memchr(name->u.str.ptr, '\0', name->u.str.len))) {
        *why = "name: must be a string of at most 128 bytes without NUL";
        return MPREG_E_HANDSHAKE;
    }
    if (token && token->type != MPREG_STR) {
        *why = "token: must be a string";
        return MPREG_E_HANDSHAKE;
    }
    const mpreg_value *node = mpreg_map_get(v, "node");
    const mpreg_value *cluster = mpreg_map_get(v, "cluster");
    if ((node && node->type != MPREG_STR) || (cluster && cluster->type != MPREG_STR)) {
        *why = "node, cluster: must be strings";
        return MPREG_E_HANDSHAKE;
    }
    const mpreg_value *key = mpreg_map_get(v, "key");
    if (key &&
        (key->type != MPREG_BIN || key->u.bin.len == 0 || key->u.bin.len > MP_SWIM_MAX_KEY)) {
        *why = "key: must be 1 to 32 bytes (bin)";
        return MPREG_E_HANDSHAKE;
    }
    h->key = key ? (mp_bytes){key->u.bin.ptr, key->u.bin.len} : (mp_bytes){NULL, 0};
    h->node = node ? mp_value_view(node) : MP_STR_NULL;
    h->cluster = cluster ? mp_value_view(cluster) : MP_STR_NULL;
    h->name = name ? mp_value_view(name) : MP_STR_NULL;
    h->has_token = token != NULL;
    h->token = token ? mp_value_view(token) : MP_STR_NULL;
    return MPREG_OK;
}

static mpreg_err mp_send_welcome(mp_node *n, mp_conn *c, const mp_id *hello_id) {
    mpreg_value w = mpreg_map();
    mpreg_err err = mpreg_map_set(&w, "node", mpreg_str(n->node_id));
    err = err ? err : mpreg_map_set(&w, "name", mpreg_str(n->name));
    err = err ? err : mpreg_map_set(&w, "cluster", mpreg_str(n->cluster));
    err = err ? err : mpreg_map_set(&w, "server", mpreg_str(MP_NODE_SERVER));
    err = err ? err : mpreg_map_set(&w, "max_frame", mpreg_int(n->max_frame));
    err = err ? err : mp_node_send_value(n, c->id, MP_KIND_WELCOME, hello_id, NULL, &w);
    mpreg_value_free(&w);
    return err;
}

static void mp_handshake_refuse(mp_node *n, mp_conn *c, const mp_id *id, mpreg_err code,
                                const char *why) {
    mp_node_log(n, MP_LOG_INFO, "conn %llu: handshake refused: %s", (unsigned long long)c->id, why);
    mp_node_send_errorf(n, c->id, id, code, "%s", why);
    mp_node_close_conn(n, c, code);
}

/* A node that wants to join and is refused (token, cluster, identity)
 * retries every few seconds for as long as it runs: a warning once a
 * minute per peer id says it all, the rest go to the debug log. */
static void mp_peer_refuse(mp_node *n, mp_conn *c, const mp_hello *h, const mp_id *id,
                           mpreg_err code, const char *why) {
    char peer[MP_SWIM_MAX_ID + 1];
    size_t len = h->node.len < MP_SWIM_MAX_ID ? h->node.len : MP_SWIM_MAX_ID;
    memcpy(peer, h->node.ptr ? h->node.ptr : "", len);
    peer[len] = '\0';
    char key[MP_SWIM_MAX_ID + 16];
    snprintf(key, sizeof key, "refuse:%s", peer);
    mp_node_log_every(n, MP_LOG_WARN, key, "refused peer %s from %s: %s",
                      peer[0] ? peer : "(unnamed)", c->addr ? c->addr : "?", why);
    mp_node_log(n, MP_LOG_DEBUG, "conn %llu: handshake refused: %s", (unsigned long long)c->id,
                why);
    mp_node_send_errorf(n, c->id, id, code, "%s", why);
    mp_node_close_conn(n, c, code);
}

static void mp_conn_on_hello(mp_node *n, mp_conn *c, const mp_envelope *env) {
    if (env->kind != MP_KIND_HELLO) {
        char why[96];
        snprintf(why, sizeof why, "expected HELLO as the first frame, got %s",
                 mp_kind_name(env->kind));
        mp_handshake_refuse(n, c, &env->id, MPREG_E_HANDSHAKE, why);
        return;
    }
    /* A HELLO is a few short strings: tight limits keep a hostile one cheap. */
    mpreg_value_limits limits = {.max_depth = 4, .max_items = 256, .max_bytes = 16384};
    mpreg_value v;
    const char *why = NULL;
    mpreg_err err = mpreg_value_decode(env->payload.ptr, env->payload.len, &limits, &v);
    mp_hello h;
    if (err) {
        why = "payload: not a MessagePack map of acceptable size";
    } else {
        err = mp_hello_parse(&v, &h, &why);
    }
    if (!err && n->token && (!h.has_token || !mp_token_equal(n->token, h.token))) {
        const char *why_auth = h.has_token ? "token refused" : "token required";
        if (h.role == MP_ROLE_PEER) {
            mp_peer_refuse(n, c, &h, &env->id, MPREG_E_AUTH, why_auth);
        } else {
            mp_handshake_refuse(n, c, &env->id, MPREG_E_AUTH, why_auth);
        }
        mpreg_value_free(&v);
        return;
    }
    if (err) {
        char msg[160];
        snprintf(msg, sizeof msg, "bad HELLO: %s", why);
        mp_handshake_refuse(n, c, &env->id, MPREG_E_HANDSHAKE, msg);
        mpreg_value_free(&v);
        return;
    }
    char msg[MP_RPC_MAX_MESSAGE];
    mpreg_err code = MPREG_E_HANDSHAKE;
    if (h.role == MP_ROLE_PEER &&
        !mp_cluster_peer_hello(n, c, h.node, h.cluster, h.key, &code, msg, sizeof msg)) {
        mp_peer_refuse(n, c, &h, &env->id, code, msg);
        mpreg_value_free(&v);
        return;
    }
    c->role = h.role;
    if (h.name.len && !(c->name = mp_strndup(h.name.ptr, h.name.len))) {
        mpreg_value_free(&v);
        mp_handshake_refuse(n, c, &env->id, MPREG_E_NOMEM, "out of memory");
        return;
    }
    mpreg_value_free(&v);
    c->state = MP_CONN_OPEN;
    mp_timer_cancel(&n->timers, &c->handshake);
    mp_send_welcome(n, c, &env->id);
    mp_node_log(n, MP_LOG_INFO, "conn %llu: %s %s joined", (unsigned long long)c->id,
                c->role == MP_ROLE_PEER ? "peer" : "client", c->name ? c->name : "(unnamed)");
}

/* --- frames ----------------------------------------------------------------- */

/* The id of an envelope that did not decode, when the bytes get that far:
 * the top-level map, read up to field 3. An ERROR can then name what it
 * refuses; otherwise it goes without a correlation. */
static bool mp_peek_id(const uint8_t *frame, size_t len, mp_id *out) {
    mp_rd c = mp_rd_init(frame, len);
    uint32_t count;
    if (mp_rd_map(&c, &count)) {
        return false;
    }
    for (uint32_t i = 0; i < count; i++) {
        mp_rd_item key;
        if (mp_rd_next(&c, &key)) {
            return false;
        }
        if (key.type == MP_RD_UINT && key.n == MP_F_ID) {
            mp_bytes b;
            if (mp_rd_bin(&c, &b) || b.len != MP_ID_LEN) {
                return false;
            }
            memcpy(out->bytes, b.ptr, MP_ID_LEN);
            return !mp_id_is_zero(out);
        }
        if (mp_rd_skip(&c, MP_RD_ANY_DEPTH)) {
            return false;
        }
    }
    return false;
}

static void mp_conn_refuse_kind(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_node_send_errorf(n, c->id, &env->id, MPREG_E_KIND, "%s is not accepted from a %s",
                        mp_kind_name(env->kind), c->role == MP_ROLE_PEER ? "peer" : "client");
}

static void mp_conn_on_ping(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_envelope pong;
    mp_envelope_init(&pong, MP_KIND_PONG);
    pong.correlation_id = env->id;
    pong.payload = env->payload; /* echoed: a client may carry a timestamp */
    mp_node_send(n, c->id, &pong);
}

/* Kinds both clients and peers may send. True when handled. */
static bool mp_conn_dispatch_common(mp_node *n, mp_conn *c, const mp_envelope *env) {
    switch (env->kind) {
    case MP_KIND_HELLO:
        mp_handshake_refuse(n, c, &env->id, MPREG_E_HANDSHAKE, "HELLO sent twice");
        return true;
    case MP_KIND_PING:
        mp_conn_on_ping(n, c, env);
        return true;
    case MP_KIND_PONG:
        return true;
    case MP_KIND_GOODBYE:
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu said goodbye", (unsigned long long)c->id);
        mp_node_close_conn(n, c, MPREG_E_CLOSED);
        return true;
    case MP_KIND_ERROR:
        mp_cluster_on_error(n, c, env);
        return true;
    default:
        return false;
    }
}

static void mp_conn_dispatch_client(mp_node *n, mp_conn *c, const mp_envelope *env) {
    switch (env->kind) {
    case MP_KIND_RPC_REQUEST:
        mp_rpc_on_request(n, c, env);
        break;
    case MP_KIND_RPC_RESULT:
        mp_rpc_on_result(n, c, env);
        break;
    case MP_KIND_REGISTER:
        mp_functions_on_register(n, c, env);
        break;
    case MP_KIND_UNREGISTER:
        mp_functions_on_unregister(n, c, env);
        break;
    case MP_KIND_SUBSCRIBE:
        mp_ps_on_subscribe(n, c, env);
        break;
    case MP_KIND_UNSUBSCRIBE:
        mp_ps_on_unsubscribe(n, c, env);
        break;
    case MP_KIND_PUBLISH:
        mp_ps_on_publish(n, c, env);
        break;
    case MP_KIND_CONTROL:
        mp_control_on_request(n, c, env);
        break;
    default:
        mp_conn_refuse_kind(n, c, env);
        break;
    }
}

/* What peers carry: membership gossip, invokes of this node's functions
 * and their results, and publishes for this node's subscribers. */
static void mp_conn_dispatch_peer(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_links_touch(n, c);
    switch (env->kind) {
    case MP_KIND_WELCOME:
        mp_cluster_on_welcome(n, c, env);
        break;
    case MP_KIND_GOSSIP:
        mp_cluster_on_gossip(n, c, env);
        break;
    case MP_KIND_RPC_INVOKE:
        mp_rpc_on_invoke(n, c, env);
        break;
    case MP_KIND_RPC_RESULT:
        mp_rpc_on_result(n, c, env);
        break;
    case MP_KIND_PUBLISH:
        mp_ps_on_publish(n, c, env);
        break;
    default:
        mp_conn_refuse_kind(n, c, env);
        break;
    }
}

void mp_node_on_frame(mp_node *n, uint64_t conn, const uint8_t *frame, size_t len,
                      uint64_t now_ms) {
    n->now_ms = now_ms;
    mp_conn *c = mp_conn_get(n, conn);
    if (!c || c->state == MP_CONN_CLOSING) {
        return; /* closing: the stream is no longer ours to answer */
    }
    mp_envelope env;
    const char *why = NULL;
    mpreg_err err = mp_envelope_decode(frame, len, &env, &why);
    if (err) {
        mp_id id;
        bool has_id = mp_peek_id(frame, len, &id);
        n->counters.frame_errors++;
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: bad envelope: %s", (unsigned long long)conn,
                    why ? why : mpreg_strerror(err));
        mp_node_send_errorf(n, conn, has_id ? &id : NULL, err, "bad envelope: %s",
                            why ? why : mpreg_strerror(err));
        if (c->state == MP_CONN_HANDSHAKE) {
            mp_node_close_conn(n, c, MPREG_E_HANDSHAKE);
        }
        return;
    }
    if (c->state == MP_CONN_HANDSHAKE) {
        mp_conn_on_hello(n, c, &env);
        return;
    }
    n->frame_conn = conn;
    n->frame_out = false;
    if (!mp_conn_dispatch_common(n, c, &env) && !n->stopping) {
        if (c->role == MP_ROLE_CLIENT) {
            mp_conn_dispatch_client(n, c, &env);
        } else {
            mp_conn_dispatch_peer(n, c, &env);
        }
    }
    n->frame_conn = 0;
    if (c->role == MP_ROLE_CLIENT && n->frame_out) {
        /* Whatever it asked for, if its answers now fill its output, it is
         * not read again until they drain (§7.7): the frames it pipelined
         * behind this one wait in the driver, unread, rather than being
         * answered into an output nobody reads. Peers are not paused: two
         * nodes that each stop reading the other while full would wait for
         * each other for ever; a peer that does not drain is closed
         * instead (mp_conn_overflow). Asked only when this frame
         * produced output for it: a publisher's PUBLISH usually produces
         * none, and asking the driver per frame cost 10% of the pub/sub
         * rate. */
        mp_conn_check_backpressure(n, c);
    }
}

void mp_node_on_protocol_error(mp_node *n, uint64_t conn, mpreg_err err, uint64_t now_ms) {
    n->now_ms = now_ms;
    mp_conn *c = mp_conn_get(n, conn);
    if (!c || c->state == MP_CONN_CLOSING) {
        return;
    }
    n->counters.frame_errors++;
    mp_node_log(n, MP_LOG_INFO, "conn %llu: broken framing: %s", (unsigned long long)conn,
                mpreg_err_name(err));
    if (err == MPREG_E_TIMEOUT) {
        mp_node_send_errorf(n, conn, NULL, err,
                            "read timeout: part of a frame arrived, then nothing for "
                            "read_timeout_ms; closing");
    } else if (err == MPREG_E_LIMIT) {
        mp_node_send_errorf(n, conn, NULL, err,
                            "limit partial_bytes reached: the node holds too many half-read "
                            "frames of all connections; closing this one (retry later)");
    } else {
        mp_node_send_errorf(n, conn, NULL, err, "%s", mpreg_strerror(err));
    }
    mp_node_close_conn(n, c, err);
}

void mp_node_on_writable(mp_node *n, uint64_t conn, uint64_t now_ms) {
    n->now_ms = now_ms;
    mp_conn *c = mp_conn_get(n, conn);
    if (!c) {
        return;
    }
    if (c->reading_paused) {
        c->reading_paused = false;
        if (c->state != MP_CONN_CLOSING && !c->stalled) {
            n->io.set_reading(n->io.ud, conn, true);
        }
    }
    mp_ps_on_writable(n, c);
}

void mp_node_on_close(mp_node *n, uint64_t conn, mpreg_err reason, uint64_t now_ms) {
    n->now_ms = now_ms;
    mp_conn *c = mp_map_remove(&n->conns, &conn, sizeof conn);
    if (!c) {
        return;
    }
    mp_list_remove(&c->link);
    MP_ASSERT(n->conn_total > 0);
    n->conn_total--;
    mp_timer_cancel(&n->timers, &c->handshake);
    mp_timer_cancel(&n->timers, &c->stall);
    /* A handshake that failed, or a link this node dialed that never came
     * up, was logged already (refused or unreachable, at warn once a
     * minute): for a node that keeps knocking, a line per try is noise. */
    bool never_up = c->role == MP_ROLE_NONE || (c->outbound && !c->welcomed);
    mp_node_log(n, never_up ? MP_LOG_DEBUG : MP_LOG_INFO,
                "conn %llu closed (%s): %u requests, %u calls in flight", (unsigned long long)conn,
                mpreg_err_name(reason), c->request_count, c->inflight);
    /* Its own requests go quietly: nobody is left to answer. */
    mp_rpc_conn_requests_drop(n, c);
    /* Its functions leave the table before its calls fail, so the requests
     * those failures wake up cannot pick this worker again. */
    mp_functions_conn_drop(n, c);
    mp_rpc_conn_invokes_fail(n, c);
    mp_rpc_conn_served_drop(n, c);
    mp_ps_conn_drop(n, c);
    mp_cluster_conn_closed(n, c, reason);
    free(c->subs);
    free(c->name);
    free(c->addr);
    free(c->peer_id);
    free(c);
}
