/* client_async.c - the callback client on a libuv loop.
 *
 * One mp_transport with one dialed connection. HELLO is queued at once,
 * right behind the dial, and every later operation is queued behind it
 * without waiting for WELCOME: the node reads a connection's frames in
 * order, so by the time it reads our first request it has accepted (or
 * refused, and closed) the handshake.
 *
 * Every request in flight is an op, keyed by its envelope id, completed by
 * the reply that carries that id as correlation, by its deadline (one
 * uv_timer, armed for the earliest deadline), or by the connection's end.
 * Each op's callback runs exactly once, from the loop.
 *
 * Closing is a chain of libuv-style callbacks: GOODBYE is queued, the
 * transport shuts down (flushing, then closing the connection, whose
 * on_close fails whatever is still pending), its shutdown callback frees it
 * and closes the timer, and the timer's close callback frees the client. */
#define _GNU_SOURCE
#include "mpreg/client.h"

#include "client/client_proto.h"
#include "core/frame.h"
#include "core/map.h"
#include "core/str.h"
#include "core/vec.h"
#include "runtime/sysclock.h"
#include "runtime/transport.h"
#include "services/pubsub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef enum mp_ac_state {
    MP_AC_CONNECTING = 0, /* dialing, or waiting for WELCOME */
    MP_AC_READY,
    MP_AC_DOWN, /* the connection is gone (or never came) */
} mp_ac_state;

typedef enum mp_ac_op_kind {
    MP_AC_OP_HELLO = 0,
    MP_AC_OP_VALUE,     /* request, status, catalog, members: the reply value */
    MP_AC_OP_CALL,      /* call: the one result out of the results map */
    MP_AC_OP_SUBSCRIBE, /* the subscription id out of the OK */
    MP_AC_OP_DONE,      /* unsubscribe, register: OK or not */
    MP_AC_OP_REGISTER,
    MP_AC_OP_CATALOG, /* the catalog: page after page, then the whole */
} mp_ac_op_kind;

typedef struct mp_ac_op {
    mp_id id;
    mp_ac_op_kind kind;
    uint64_t deadline; /* monotonic ms */
    char name[32];     /* MP_AC_OP_CALL: the command's name */
    mpreg_reply_cb reply;
    mpreg_subscribed_cb subscribed;
    mpreg_done_cb done;
    mpreg_message_cb on_message;
    mpreg_worker_function reg; /* MP_AC_OP_REGISTER: to take back on refusal */
    /* MP_AC_OP_CATALOG: the pages so far, and what each page asks for. */
    mpreg_value cat_acc;
    const char **cat_kinds; /* copies; NULL = all */
    size_t cat_kinds_count;
    uint32_t cat_limit;
    void *ud;
} mp_ac_op;

struct mpreg_async_client {
    uv_loop_t *loop;
    mp_transport *t;
    uv_timer_t timer;
    uint64_t conn;
    bool conn_live;    /* conn has not had its on_close */
    bool closing;      /* mpreg_async_close was called */
    bool connect_told; /* connect_cb has run */
    bool ready_once;   /* the handshake succeeded at some point */
    mp_ac_state state;
    uint64_t armed; /* deadline the timer is armed for; 0 = stopped */
    uint32_t timeout_ms;
    uint32_t max_frame;
    mpreg_connect_cb connect_cb;
    void *connect_ud;
    mpreg_done_cb disc_cb;
    void *disc_ud;
    mp_map ops; /* id bytes -> mp_ac_op */
    mp_client_subs subs;
    mp_client_functions funcs;
    mp_xoshiro rng;
    mp_client_welcome welcome;
    mpreg_error down_err; /* why the connection is gone */
};

/* ==== ops ================================================================== */

static void mp_ac_op_free(mp_ac_op *op) {
    if (op) {
        mpreg_value_free(&op->cat_acc);
        for (size_t i = 0; i < op->cat_kinds_count; i++) {
            free((char *)op->cat_kinds[i]);
        }
        free(op->cat_kinds);
        free((char *)op->reg.name);
        free((char *)op->reg.function_id);
        free((char *)op->reg.version);
        free(op);
    }
}

static void mp_ac_timer_cb(uv_timer_t *h);

static void mp_ac_arm(mpreg_async_client *c, uint64_t deadline) {
    if (c->closing && !c->conn_live) {
        return;
    }
    if (c->armed != 0 && c->armed <= deadline) {
        return;
    }
    uint64_t now = mp_sysclock_mono_ms();
    c->armed = deadline;
    uv_timer_start(&c->timer, mp_ac_timer_cb, deadline > now ? deadline - now : 0, 0);
}

/* Runs op's callback with a value (NULL) or an error (NULL), then frees op. */
static void mp_ac_op_finish(mpreg_async_client *c, mp_ac_op *op, mpreg_value *value,
                            uint64_t sub_id, const mpreg_error *err) {
    switch (op->kind) {
    case MP_AC_OP_HELLO:
        break;
    case MP_AC_OP_VALUE:
    case MP_AC_OP_CALL:
    case MP_AC_OP_CATALOG:
        if (op->reply) {
            op->reply(c, err ? NULL : value, err, op->ud);
        }
        break;
    case MP_AC_OP_SUBSCRIBE:
        if (op->subscribed) {
            op->subscribed(c, err ? 0 : sub_id, err, op->ud);
        }
        break;
    case MP_AC_OP_DONE:
    case MP_AC_OP_REGISTER:
        if (err && op->kind == MP_AC_OP_REGISTER) {
            mp_client_functions_remove(&c->funcs, &op->reg);
        }
        if (op->done) {
            op->done(c, err, op->ud);
        }
        break;
    }
    mp_ac_op_free(op);
}

static void mp_ac_tell_connect(mpreg_async_client *c, const mpreg_error *err) {
    if (c->connect_told) {
        return;
    }
    c->connect_told = true;
    if (c->connect_cb) {
        c->connect_cb(c, err, c->connect_ud);
    }
}

static mpreg_err mp_ac_down_error(const mpreg_async_client *c, mpreg_error *err) {
    return mp_client_error_set(err, MPREG_E_CLOSED, "connection closed: %s",
                               c->down_err.message[0] ? c->down_err.message : "closed");
}

/* Fails every pending op with err. The ops leave the map first: callbacks
 * may start new operations (which then fail at once, the client being down). */
static void mp_ac_fail_all(mpreg_async_client *c, const mpreg_error *err) {
    mp_map ops = c->ops;
    mp_map_init(&c->ops);
    const void *key;
    size_t klen;
    void *val;
    for (size_t it = 0; mp_map_next(&ops, &it, &key, &klen, &val);) {
        mp_ac_op *op = val;
        if (op->kind == MP_AC_OP_HELLO) {
            mp_ac_tell_connect(c, err);
            mp_ac_op_free(op);
        } else {
            mp_ac_op_finish(c, op, NULL, 0, err);
        }
    }
    mp_map_free(&ops, NULL);
}

static void mp_ac_timer_cb(uv_timer_t *h) {
    mpreg_async_client *c = h->data;
    c->armed = 0;
    uint64_t now = mp_sysclock_mono_ms();
    uint64_t next = 0;
    bool partial = false;
    /* Collect first: the map must not change while it is iterated. */
    mp_ac_op **expired = NULL;
    size_t n = 0, cap = 0;
    const void *key;
    size_t klen;
    void *val;
    for (size_t it = 0; mp_map_next(&c->ops, &it, &key, &klen, &val);) {
        mp_ac_op *op = val;
        if (op->deadline <= now) {
            if (MP_VEC_GROW(expired, cap, n + 1, 16) != MPREG_OK) {
                partial = true; /* the rest expire on the next tick */
                break;
            }
            expired[n++] = op;
        } else if (next == 0 || op->deadline < next) {
            next = op->deadline;
        }
    }
    for (size_t i = 0; i < n; i++) {
        mp_map_remove(&c->ops, expired[i]->id.bytes, MP_ID_LEN);
    }
    if (partial) {
        next = now + 1;
    }
    if (next) {
        mp_ac_arm(c, next);
    }
    for (size_t i = 0; i < n; i++) {
        mp_ac_op *op = expired[i];
        mpreg_error err = {0};
        if (op->kind == MP_AC_OP_HELLO) {
            mp_client_error_set(&err, MPREG_E_TIMEOUT, "no WELCOME from the node in time");
            mp_ac_tell_connect(c, &err);
            mp_ac_op_free(op);
            if (c->conn_live) {
                mp_transport_close(c->t, c->conn, false, MPREG_E_TIMEOUT);
            }
        } else {
            mp_client_error_set(&err, MPREG_E_TIMEOUT, "no answer from the node in time");
            mp_ac_op_finish(c, op, NULL, 0, &err);
        }
        mpreg_error_free(&err);
    }
    free(expired);
    /* A dial that failed inside mpreg_async_connect is reported from here. */
    if (c->state == MP_AC_DOWN && !c->connect_told) {
        mp_ac_tell_connect(c, &c->down_err);
    }
}

/* ==== sending ================================================================ */

static mpreg_err mp_ac_send(mpreg_async_client *c, const mp_client_msg *m, mp_id *id) {
    if (c->closing || c->state == MP_AC_DOWN || !c->conn_live) {
        return MPREG_E_CLOSED;
    }
    mp_buf *out = mp_transport_output(c->t, c->conn);
    if (out == NULL) {
        return MPREG_E_BACKPRESSURE;
    }
    mpreg_err rc = mp_client_frame(out, &c->rng.rng, m, c->max_frame, id);
    if (rc == MPREG_OK) {
        mp_transport_output_commit(c->t, c->conn, 1);
    }
    return rc;
}

/* Sends m as a request and files op (taken, also on error) under its id. */
static mpreg_err mp_ac_start(mpreg_async_client *c, const mp_client_msg *m, mp_ac_op *op,
                             uint32_t wait_ms) {
    if (op == NULL) {
        return MPREG_E_NOMEM;
    }
    mpreg_err rc = mp_ac_send(c, m, &op->id);
    if (rc == MPREG_OK) {
        rc = mp_map_put(&c->ops, op->id.bytes, MP_ID_LEN, op, NULL);
    }
    if (rc != MPREG_OK) {
        mp_ac_op_free(op);
        return rc;
    }
    op->deadline = mp_sysclock_mono_ms() + wait_ms;
    mp_ac_arm(c, op->deadline);
    return MPREG_OK;
}

static mp_ac_op *mp_ac_op_new(mp_ac_op_kind kind, void *ud) {
    mp_ac_op *op = calloc(1, sizeof *op);
    if (op) {
        op->kind = kind;
        op->ud = ud;
    }
    return op;
}

/* ==== receiving ================================================================ */

static void mp_ac_on_welcome(mpreg_async_client *c, mp_ac_op *op, const mp_envelope *e) {
    mpreg_error err = {0};
    if (mp_client_welcome_read(e, &c->welcome, &err) == MPREG_OK) {
        c->state = MP_AC_READY;
        c->ready_once = true;
        if (c->welcome.max_frame && c->welcome.max_frame < c->max_frame) {
            c->max_frame = c->welcome.max_frame;
        }
        mp_ac_tell_connect(c, NULL);
    } else {
        mp_client_error_copy(&c->down_err, &err);
        mp_ac_tell_connect(c, &err);
        if (c->conn_live) {
            mp_transport_close(c->t, c->conn, false, err.code);
        }
    }
    mpreg_error_free(&err);
    mp_ac_op_free(op);
}

static mpreg_err mp_ac_catalog_send(mpreg_async_client *c, mp_ac_op *op, const mpreg_value *after);

/* A catalog page: merged, then the next one asked for, or the whole told. */
static void mp_ac_on_catalog_page(mpreg_async_client *c, mp_ac_op *op, const mp_envelope *e) {
    mpreg_error err = {0};
    mpreg_value page, next = mpreg_nil();
    mpreg_err rc = mp_client_reply_read(e, &page, &err);
    rc = rc ? rc : mp_client_catalog_merge(&op->cat_acc, &page, &next, &err);
    if (rc == MPREG_OK && next.type != MPREG_NIL) {
        rc = mp_ac_catalog_send(c, op, &next); /* op goes on under a new id */
        mpreg_value_free(&next);
        if (rc == MPREG_OK) {
            return;
        }
        mp_client_error_set(&err, rc, "cannot ask for the next catalog page: %s",
                            mpreg_strerror(rc));
    }
    mpreg_value whole = op->cat_acc;
    op->cat_acc = mpreg_nil();
    mp_ac_op_finish(c, op, &whole, 0, rc == MPREG_OK ? NULL : &err);
    mpreg_value_free(&whole);
    mpreg_error_free(&err);
}

static void mp_ac_on_reply(mpreg_async_client *c, const mp_envelope *e) {
    mp_ac_op *op = mp_map_remove(&c->ops, e->correlation_id.bytes, MP_ID_LEN);
    if (op == NULL) {
        return; /* it timed out already */
    }
    if (op->kind == MP_AC_OP_HELLO) {
        mp_ac_on_welcome(c, op, e);
        return;
    }
    if (op->kind == MP_AC_OP_CATALOG) {
        mp_ac_on_catalog_page(c, op, e);
        return;
    }
    mpreg_error err = {0};
    mpreg_value v;
    mpreg_err rc = mp_client_reply_read(e, &v, &err);
    uint64_t sub_id = 0;
    if (rc == MPREG_OK && op->kind == MP_AC_OP_CALL) {
        mpreg_value results = v;
        rc = mp_client_call_result(&results, op->name, &v, &err);
    } else if (rc == MPREG_OK && op->kind == MP_AC_OP_SUBSCRIBE) {
        const mpreg_value *s = mpreg_map_get(&v, "subscription");
        if (s && s->type == MPREG_INT && s->u.i > 0) {
            sub_id = (uint64_t)s->u.i;
            rc = mp_client_subs_add(&c->subs, sub_id, op->on_message, op->ud);
            if (rc) {
                mp_client_error_set(&err, rc, "out of memory");
            }
        } else {
            rc =
                mp_client_error_set(&err, MPREG_E_DECODE, "the node's OK holds no subscription id");
        }
    }
    if (op->kind == MP_AC_OP_CALL) {
        err.command[0] = '\0'; /* one command: naming it says nothing */
    }
    mp_ac_op_finish(c, op, &v, sub_id, rc == MPREG_OK ? NULL : &err);
    mpreg_value_free(&v);
    mpreg_error_free(&err);
}

static void mp_ac_on_deliver(mpreg_async_client *c, const mp_envelope *e) {
    mpreg_message msg;
    char topic[MP_MAX_TOPIC_LEN + 1];
    if (mp_client_message_read(e, topic, &msg) != MPREG_OK) {
        return;
    }
    const mp_client_sub *s = mp_client_subs_find(&c->subs, msg.subscription);
    if (s && s->cb) {
        mp_client_sub sub = *s; /* the callback may unsubscribe */
        sub.cb(&msg, sub.ud);
    }
}

static void mp_ac_on_invoke(mpreg_async_client *c, const mp_envelope *e) {
    mpreg_bytes payload = {0};
    if (mp_client_functions_serve(&c->funcs, e, &payload) == MPREG_OK) {
        mp_client_msg m = {.kind = MP_KIND_RPC_RESULT,
                           .correlation = &e->id,
                           .payload = payload.data,
                           .payload_len = payload.len};
        (void)mp_ac_send(c, &m, NULL); /* on failure the node times the call out */
    }
    mpreg_bytes_free(&payload);
}

static void mp_ac_on_frame(void *ud, uint64_t conn, const uint8_t *frame, size_t len) {
    mpreg_async_client *c = ud;
    (void)conn;
    mp_envelope e;
    const char *why = NULL;
    mpreg_err rc = mp_envelope_decode(frame, len, &e, &why);
    if (rc != MPREG_OK && !c->ready_once && c->down_err.code == MPREG_OK) {
        mp_client_not_mpreg(&c->down_err, frame, len, "is not an envelope");
        mp_transport_close(c->t, c->conn, false, MPREG_E_HANDSHAKE);
        return;
    }
    if (rc != MPREG_OK) {
        if (c->down_err.code == MPREG_OK) {
            mp_client_error_set(&c->down_err, rc, "the node sent an invalid envelope (%s)",
                                why ? why : "?");
        }
        mp_transport_close(c->t, c->conn, false, rc);
        return;
    }
    switch (e.kind) {
    case MP_KIND_PING: {
        mp_client_msg m = {.kind = MP_KIND_PONG, .correlation = &e.id};
        (void)mp_ac_send(c, &m, NULL);
        return;
    }
    case MP_KIND_DELIVER:
        mp_ac_on_deliver(c, &e);
        return;
    case MP_KIND_RPC_INVOKE:
        mp_ac_on_invoke(c, &e);
        return;
    case MP_KIND_GOODBYE:
        if (c->down_err.code == MPREG_OK) {
            mp_client_error_set(&c->down_err, MPREG_E_CLOSED, "the node said goodbye");
        }
        return;
    default:
        break;
    }
    if (!mp_id_is_zero(&e.correlation_id)) {
        mp_ac_on_reply(c, &e);
    } else if (e.kind == MP_KIND_ERROR && c->down_err.code == MPREG_OK) {
        /* About the whole connection; the node closes it next. */
        mpreg_error nerr = {0};
        mp_client_error_from_envelope(&e, &nerr);
        mp_client_error_set(&c->down_err, nerr.code, "%s: %s", mpreg_err_name(nerr.code),
                            nerr.message);
        mpreg_error_free(&nerr);
    }
}

static void mp_ac_on_connected(void *ud, uint64_t conn, mpreg_err status) {
    mpreg_async_client *c = ud;
    (void)conn;
    if (status != MPREG_OK && c->down_err.code == MPREG_OK) {
        const char *why = mp_transport_last_error(c->t);
        mp_client_error_set(&c->down_err, status == MPREG_E_TIMEOUT ? status : MPREG_E_UNREACHABLE,
                            "%s", why && why[0] ? why : mpreg_strerror(status));
    }
}

static void mp_ac_on_close(void *ud, uint64_t conn, mpreg_err reason) {
    mpreg_async_client *c = ud;
    (void)conn;
    c->conn_live = false;
    bool was_ready = c->state == MP_AC_READY;
    c->state = MP_AC_DOWN;
    bool bad_framing = reason == MPREG_E_FRAME_TOO_LARGE || reason == MPREG_E_FRAME_EMPTY;
    if (c->down_err.code == MPREG_OK && c->closing) {
        mp_client_error_set(&c->down_err, MPREG_E_CLOSED, "closed by the application");
    } else if (c->down_err.code == MPREG_OK && bad_framing && !c->ready_once) {
        /* The first bytes back were no mpreg frame: a stranger on the port. */
        mp_client_not_mpreg(&c->down_err, NULL, 0,
                            reason == MPREG_E_FRAME_EMPTY ? "is an empty frame"
                                                          : "has an absurd frame length");
    } else if (c->down_err.code == MPREG_OK) {
        mp_client_error_set(&c->down_err, reason, "%s", mpreg_strerror(reason));
    }
    /* The connect callback hears the precise reason (unreachable, auth, ...);
     * operations hear "closed" with that reason in the message. */
    if (!c->connect_told) {
        mp_ac_tell_connect(c, &c->down_err);
    }
    mpreg_error err = {0};
    mp_ac_down_error(c, &err);
    mp_ac_fail_all(c, &err);
    mpreg_error_free(&err);
    if (was_ready && !c->closing && c->disc_cb) {
        c->disc_cb(c, &c->down_err, c->disc_ud);
    }
    if (c->armed) {
        uv_timer_stop(&c->timer);
        c->armed = 0;
    }
}

/* ==== connect and close =========================================================== */

static mpreg_err mp_ac_send_hello(mpreg_async_client *c, const mpreg_client_options *opts) {
    mpreg_bytes hello = {0};
    mpreg_err rc = mp_client_hello_payload(opts, &hello);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_client_msg m = {.kind = MP_KIND_HELLO, .payload = hello.data, .payload_len = hello.len};
    rc = mp_ac_start(c, &m, mp_ac_op_new(MP_AC_OP_HELLO, NULL), c->timeout_ms);
    mpreg_bytes_free(&hello);
    return rc;
}

mpreg_async_client *mpreg_async_connect(struct uv_loop_s *loop, const char *url,
                                        const mpreg_client_options *opts, mpreg_connect_cb cb,
                                        void *ud) {
    char host[MP_CLIENT_HOST_MAX];
    uint16_t port;
    if (loop == NULL || mp_client_parse_url(url, host, &port, NULL) != MPREG_OK) {
        return NULL;
    }
    mpreg_async_client *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->loop = loop;
    c->timeout_ms = mp_client_timeout(0, opts ? opts->timeout_ms : 0);
    c->connect_cb = cb;
    c->connect_ud = ud;
    mp_map_init(&c->ops);
    mp_sysrand_seed(&c->rng);
    mp_transport_config cfg = {.connect_timeout_ms = c->timeout_ms};
    mp_transport_callbacks cbs = {
        .on_connected = mp_ac_on_connected, .on_frame = mp_ac_on_frame, .on_close = mp_ac_on_close};
    if (mp_transport_new(loop, &cfg, &cbs, c, &c->t) != MPREG_OK) {
        free(c);
        return NULL;
    }
    c->max_frame = mp_transport_max_frame(c->t);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    mpreg_err rc = mp_transport_dial(c->t, host, port, &c->conn);
    if (rc == MPREG_OK) {
        c->conn_live = true;
        rc = mp_ac_send_hello(c, opts);
        if (rc != MPREG_OK) {
            mp_client_error_set(&c->down_err, rc, "cannot send HELLO: %s", mpreg_strerror(rc));
            mp_transport_close(c->t, c->conn, false, rc);
        }
    } else {
        /* No connection, so no on_close: report from the loop. */
        c->state = MP_AC_DOWN;
        const char *why = mp_transport_last_error(c->t);
        mp_client_error_set(&c->down_err, MPREG_E_UNREACHABLE, "connect %s:%u: %s", host,
                            (unsigned)port, why && why[0] ? why : mpreg_strerror(rc));
        mp_ac_arm(c, mp_sysclock_mono_ms());
    }
    return c;
}

void mpreg_async_on_disconnect(mpreg_async_client *c, mpreg_done_cb cb, void *ud) {
    if (c) {
        c->disc_cb = cb;
        c->disc_ud = ud;
    }
}

static void mp_ac_timer_closed(uv_handle_t *h) {
    mpreg_async_client *c = h->data;
    mp_map_free(&c->ops, NULL); /* empty by now */
    mp_client_subs_free(&c->subs);
    mp_client_functions_free(&c->funcs);
    mpreg_error_free(&c->down_err);
    free(c);
}

static void mp_ac_shutdown_done(mp_transport *t, void *ud) {
    mpreg_async_client *c = ud;
    mp_transport_free(t);
    c->t = NULL;
    /* A dial that failed at once, closed before the timer reported it. */
    if (!c->connect_told) {
        mpreg_error err = {0};
        mp_client_error_set(&err, MPREG_E_CLOSED, "closed by the application");
        mp_ac_tell_connect(c, c->down_err.code ? &c->down_err : &err);
        mpreg_error_free(&err);
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, mp_ac_timer_closed);
}

void mpreg_async_close(mpreg_async_client *c) {
    if (c == NULL || c->closing) {
        return;
    }
    if (c->conn_live && c->state == MP_AC_READY) {
        mp_client_msg m = {.kind = MP_KIND_GOODBYE};
        (void)mp_ac_send(c, &m, NULL);
    }
    c->closing = true;
    /* Ops pending now fail in on_close, from the loop. */
    mp_transport_shutdown(c->t, mp_ac_shutdown_done);
}

/* ==== operations ==================================================================== */

static mpreg_err mp_ac_check(const mpreg_async_client *c) {
    if (c == NULL) {
        return MPREG_E_INVALID;
    }
    return c->closing || c->state == MP_AC_DOWN ? MPREG_E_CLOSED : MPREG_OK;
}

mpreg_err mpreg_async_call(mpreg_async_client *c, const char *fun, const mpreg_value *args,
                           const mpreg_value *kwargs, const mpreg_call_options *opts,
                           mpreg_reply_cb cb, void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    uint32_t timeout = mp_client_timeout(opts ? opts->timeout_ms : 0, c->timeout_ms);
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_CALL, ud);
    if (op == NULL) {
        return MPREG_E_NOMEM;
    }
    op->reply = cb;
    mpreg_bytes payload = {0};
    rc = mp_client_call_payload(fun, args, kwargs, opts, timeout, op->name, sizeof op->name,
                                &payload, NULL);
    if (rc != MPREG_OK) {
        mp_ac_op_free(op);
        return rc;
    }
    mp_client_msg m = {.kind = MP_KIND_RPC_REQUEST,
                       .deadline_ms = mp_sysclock_wall_ms() + timeout,
                       .payload = payload.data,
                       .payload_len = payload.len};
    rc = mp_ac_start(c, &m, op, mp_client_reply_wait(timeout));
    mpreg_bytes_free(&payload);
    return rc;
}

mpreg_err mpreg_async_request(mpreg_async_client *c, const mpreg_value *commands,
                              uint32_t timeout_ms, mpreg_reply_cb cb, void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    uint32_t timeout = mp_client_timeout(timeout_ms, c->timeout_ms);
    mpreg_bytes payload = {0};
    rc = mp_client_request_payload(commands, timeout, &payload, NULL);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_VALUE, ud);
    if (op) {
        op->reply = cb;
    }
    mp_client_msg m = {.kind = MP_KIND_RPC_REQUEST,
                       .deadline_ms = mp_sysclock_wall_ms() + timeout,
                       .payload = payload.data,
                       .payload_len = payload.len};
    rc = mp_ac_start(c, &m, op, mp_client_reply_wait(timeout));
    mpreg_bytes_free(&payload);
    return rc;
}

mpreg_err mpreg_async_publish(mpreg_async_client *c, const char *topic, const void *data,
                              size_t len) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    rc = mp_client_check_topic(topic, NULL);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_client_msg m = {
        .kind = MP_KIND_PUBLISH, .topic = topic, .payload = data, .payload_len = len};
    return mp_ac_send(c, &m, NULL);
}

mpreg_err mpreg_async_subscribe(mpreg_async_client *c, const char *const *patterns, size_t n,
                                const mpreg_subscribe_options *opts, mpreg_message_cb on_message,
                                mpreg_subscribed_cb done, void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    if (on_message == NULL) {
        return MPREG_E_INVALID;
    }
    mp_buf payload = MP_BUF_INIT;
    rc = mp_client_subscribe_payload(patterns, n, opts, &payload, NULL);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_SUBSCRIBE, ud);
    if (op) {
        op->subscribed = done;
        op->on_message = on_message;
    }
    mp_client_msg m = {
        .kind = MP_KIND_SUBSCRIBE, .payload = payload.data, .payload_len = payload.len};
    rc = mp_ac_start(c, &m, op, c->timeout_ms);
    mp_buf_free(&payload);
    return rc;
}

mpreg_err mpreg_async_unsubscribe(mpreg_async_client *c, uint64_t sub_id, mpreg_done_cb done,
                                  void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_buf payload = MP_BUF_INIT;
    rc = mp_pubsub_subscription_encode(sub_id, &payload);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_client_subs_remove(&c->subs, sub_id);
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_DONE, ud);
    if (op) {
        op->done = done;
    }
    mp_client_msg m = {
        .kind = MP_KIND_UNSUBSCRIBE, .payload = payload.data, .payload_len = payload.len};
    rc = mp_ac_start(c, &m, op, c->timeout_ms);
    mp_buf_free(&payload);
    return rc;
}

mpreg_err mpreg_async_register(mpreg_async_client *c, const mpreg_worker_function *def,
                               mpreg_done_cb done, void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    rc = mp_client_functions_add(&c->funcs, def, NULL);
    if (rc != MPREG_OK) {
        return rc;
    }
    mpreg_bytes payload = {0};
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_REGISTER, ud);
    if (op) {
        op->done = done;
        op->reg = *def;
        op->reg.name = mp_strdup(def->name);
        op->reg.function_id = mp_strdup(def->function_id);
        op->reg.version = mp_strdup(def->version);
        op->reg.resources = NULL;
        op->reg.resource_count = 0;
    }
    rc = op && op->reg.name ? mp_client_register_payload(def, &payload) : MPREG_E_NOMEM;
    if (rc == MPREG_OK) {
        mp_client_msg m = {
            .kind = MP_KIND_REGISTER, .payload = payload.data, .payload_len = payload.len};
        rc = mp_ac_start(c, &m, op, c->timeout_ms);
        op = NULL; /* taken */
    }
    if (rc != MPREG_OK) {
        mp_client_functions_remove(&c->funcs, def);
    }
    mp_ac_op_free(op);
    mpreg_bytes_free(&payload);
    return rc;
}

static mpreg_err mp_ac_control(mpreg_async_client *c, const char *topic, mpreg_reply_cb cb,
                               void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    static const uint8_t empty_map[1] = {0x80};
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_VALUE, ud);
    if (op) {
        op->reply = cb;
    }
    mp_client_msg m = {.kind = MP_KIND_CONTROL,
                       .topic = topic,
                       .payload = empty_map,
                       .payload_len = sizeof empty_map};
    return mp_ac_start(c, &m, op, c->timeout_ms);
}

mpreg_err mpreg_async_status(mpreg_async_client *c, mpreg_reply_cb cb, void *ud) {
    return mp_ac_control(c, "status", cb, ud);
}

mpreg_err mpreg_async_catalog(mpreg_async_client *c, mpreg_reply_cb cb, void *ud) {
    return mpreg_async_catalog_ex(c, NULL, cb, ud);
}

/* Asks for the page after `after` (NIL: the first) under a new id. On
 * failure op stays the caller's. */
static mpreg_err mp_ac_catalog_send(mpreg_async_client *c, mp_ac_op *op, const mpreg_value *after) {
    mpreg_catalog_options o = {
        .kinds = op->cat_kinds, .kinds_count = op->cat_kinds_count, .page_limit = op->cat_limit};
    mpreg_bytes payload = {0};
    mpreg_err rc = mp_client_catalog_payload(&o, after, &payload);
    if (rc == MPREG_OK) {
        mp_client_msg m = {.kind = MP_KIND_CONTROL,
                           .topic = "catalog",
                           .payload = payload.data,
                           .payload_len = payload.len};
        rc = mp_ac_send(c, &m, &op->id);
    }
    mpreg_bytes_free(&payload);
    rc = rc ? rc : mp_map_put(&c->ops, op->id.bytes, MP_ID_LEN, op, NULL);
    if (rc == MPREG_OK) {
        op->deadline = mp_sysclock_mono_ms() + c->timeout_ms;
        mp_ac_arm(c, op->deadline);
    }
    return rc;
}

mpreg_err mpreg_async_catalog_ex(mpreg_async_client *c, const mpreg_catalog_options *opts,
                                 mpreg_reply_cb cb, void *ud) {
    mpreg_err rc = mp_ac_check(c);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_ac_op *op = mp_ac_op_new(MP_AC_OP_CATALOG, ud);
    size_t nk = opts && opts->kinds ? opts->kinds_count : 0;
    if (op && nk) {
        op->cat_kinds = calloc(nk, sizeof *op->cat_kinds);
        for (size_t i = 0; op->cat_kinds && i < nk; i++) {
            op->cat_kinds[i] = strdup(opts->kinds[i] ? opts->kinds[i] : "");
            op->cat_kinds_count += op->cat_kinds[i] != NULL;
        }
    }
    if (op == NULL || op->cat_kinds_count != nk) {
        mp_ac_op_free(op);
        return MPREG_E_NOMEM;
    }
    op->reply = cb;
    op->cat_limit = opts ? opts->page_limit : 0;
    mpreg_value none = mpreg_nil();
    rc = mp_ac_catalog_send(c, op, &none);
    if (rc != MPREG_OK) {
        mp_ac_op_free(op);
    }
    return rc;
}

mpreg_err mpreg_async_members(mpreg_async_client *c, mpreg_reply_cb cb, void *ud) {
    return mp_ac_control(c, "members", cb, ud);
}
