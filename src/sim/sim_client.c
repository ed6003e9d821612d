/* sim_client.c - simulated clients: programs that use a node.
 *
 * A client speaks the client side of docs/PROTOCOL.md with the payload
 * codecs the node itself uses (services/rpc_plan.h, services/pubsub.h), so
 * it needs no libuv and no sockets: HELLO {"role": "client"} first, then
 * any operation, pipelined. It is a recorder more than a program: every
 * frame the node sends is matched to the operation it answers (by
 * correlation id) and counted there, every DELIVER is kept, and workers'
 * RPC_INVOKEs are served by the callback registered for the function. The
 * scenarios then check invariants over these records ("every request got
 * exactly one answer", "no message delivered twice"). */
#include "sim/sim_internal.h"

#include "core/vec.h"

#include "services/pubsub.h"
#include "services/rpc_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mp_sim_client *mp_cl_get(const mp_sim *s, uint32_t c) {
    return c < s->client_len ? s->clients[c] : NULL;
}

/* --- opening and closing ---------------------------------------------------------- */

static mpreg_err mp_cl_send(mp_sim *s, mp_sim_client *cl, mp_envelope *env) {
    mp_sim_ep *ep = cl->closed ? NULL : mp_sim_ep_get(s, cl->ep);
    if (!ep) {
        return MPREG_E_CLOSED;
    }
    if (mp_id_is_zero(&env->id)) {
        env->id = mp_id_new(&cl->rng.rng);
    }
    mpreg_err err = mp_envelope_encode_frame(env, &ep->out);
    if (err) {
        return err;
    }
    cl->stats.frames_out++;
    mp_sim_net_commit(s, ep);
    return MPREG_OK;
}

static mpreg_err mp_cl_hello(mp_sim *s, mp_sim_client *cl) {
    mpreg_value h = mpreg_map();
    mpreg_err err = mpreg_map_set(&h, "role", mpreg_str("client"));
    err = err ? err : mpreg_map_set(&h, "name", mpreg_str(cl->name));
    mp_buf payload = MP_BUF_INIT;
    err = err ? err : mpreg_value_encode(&h, &payload);
    if (!err) {
        mp_envelope env;
        mp_envelope_init(&env, MP_KIND_HELLO);
        env.payload = (mp_bytes){payload.data, payload.len};
        err = mp_cl_send(s, cl, &env);
        cl->hello_id = env.id;
    }
    mp_buf_free(&payload);
    mpreg_value_free(&h);
    return err;
}

uint32_t mp_sim_client_open_from(mp_sim *s, uint32_t host, uint32_t node, const char *name) {
    if (node >= s->node_count || (host != MP_SIM_NONE && host >= s->node_count)) {
        return MP_SIM_NONE;
    }
    if (MP_VEC_GROW(s->clients, s->client_cap, (size_t)s->client_len + 1, 16) != MPREG_OK) {
        return MP_SIM_NONE;
    }
    mp_sim_client *cl = calloc(1, sizeof *cl);
    if (!cl) {
        return MP_SIM_NONE;
    }
    cl->index = s->client_len;
    cl->node = node;
    cl->host = host;
    if (name) {
        snprintf(cl->name, sizeof cl->name, "%s", name);
    } else {
        snprintf(cl->name, sizeof cl->name, "client-%u", cl->index);
    }
    mp_xoshiro_seed(&cl->rng, mp_sim_derive_seed(s->cfg.seed, 1ull << 40, cl->index));
    mp_map_init(&cl->op_by_id);
    s->clients[s->client_len++] = cl;
    /* Clients outside any node's position live on 192.168.0.0/16. */
    char ip[MP_SIM_ADDR_MAX];
    if (host == MP_SIM_NONE) {
        snprintf(ip, sizeof ip, "192.168.%u.%u", (cl->index >> 8) & 255u, cl->index & 255u);
    } else {
        snprintf(ip, sizeof ip, "%.*s",
                 (int)(strchr(s->nodes[host].addr, ':') - s->nodes[host].addr),
                 s->nodes[host].addr);
    }
    cl->ep = mp_sim_net_dial(s, MP_SIM_OWNER_CLIENT, cl->index, host, ip, node);
    if (!cl->ep || mp_cl_hello(s, cl)) {
        cl->closed = true;
        cl->close_reason = MPREG_E_NOMEM;
    }
    return cl->index;
}

uint32_t mp_sim_client_open(mp_sim *s, uint32_t node, const char *name) {
    return mp_sim_client_open_from(s, MP_SIM_NONE, node, name);
}

void mp_sim_client_close(mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (!cl || cl->closed) {
        return;
    }
    mp_envelope bye;
    mp_envelope_init(&bye, MP_KIND_GOODBYE);
    mp_cl_send(s, cl, &bye);
    mp_sim_ep *ep = mp_sim_ep_get(s, cl->ep);
    if (ep) {
        mp_sim_net_close(s, ep, true);
    }
    cl->closed = true;
    cl->close_reason = MPREG_E_CLOSED;
    cl->ep = 0;
}

void mp_sim_client_on_close(mp_sim *s, uint32_t c, mpreg_err reason) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (cl && !cl->closed) {
        cl->closed = true;
        cl->close_reason = reason;
        cl->ep = 0;
    }
}

/* --- operations ------------------------------------------------------------------------- */

static uint32_t mp_cl_op(mp_sim *s, uint32_t c, mp_sim_op_type type, mp_envelope *env) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (!cl || cl->closed) {
        return MP_SIM_NONE;
    }
    if (MP_VEC_GROW(cl->ops, cl->op_cap, (size_t)cl->op_len + 1, 64) != MPREG_OK) {
        return MP_SIM_NONE;
    }
    if (mp_cl_send(s, cl, env)) {
        return MP_SIM_NONE;
    }
    uint32_t idx = cl->op_len++;
    mp_sim_op *op = &cl->ops[idx];
    memset(op, 0, sizeof *op);
    op->type = type;
    op->id = env->id;
    op->sent_ms = s->now;
    op->value = mpreg_nil();
    mp_map_put(&cl->op_by_id, op->id.bytes, MP_ID_LEN, (void *)((uintptr_t)idx + 1), NULL);
    return idx;
}

/* An operation whose payload is the encoding of v. */
static uint32_t mp_cl_op_value(mp_sim *s, uint32_t c, mp_sim_op_type type, mp_kind kind,
                               const char *topic, const mpreg_value *v) {
    mp_buf payload = MP_BUF_INIT;
    if (v && mpreg_value_encode(v, &payload)) {
        mp_buf_free(&payload);
        return MP_SIM_NONE;
    }
    mp_envelope env;
    mp_envelope_init(&env, kind);
    env.topic = mp_str_c(topic);
    env.payload = (mp_bytes){payload.data, payload.len};
    uint32_t op = mp_cl_op(s, c, type, &env);
    mp_buf_free(&payload);
    return op;
}

uint32_t mp_sim_client_request(mp_sim *s, uint32_t c, const mpreg_value *commands,
                               uint32_t timeout_ms) {
    mpreg_value req = mpreg_map();
    mpreg_value copy;
    if (mpreg_value_clone(commands, &copy) || mpreg_map_set(&req, "commands", copy) ||
        (timeout_ms && mpreg_map_set(&req, "timeout_ms", mpreg_int(timeout_ms)))) {
        mpreg_value_free(&req);
        return MP_SIM_NONE;
    }
    uint32_t op = mp_cl_op_value(s, c, MP_SIM_OP_REQUEST, MP_KIND_RPC_REQUEST, NULL, &req);
    mpreg_value_free(&req);
    return op;
}

uint32_t mp_sim_client_request_json(mp_sim *s, uint32_t c, const char *json, uint32_t timeout_ms) {
    mpreg_value commands;
    if (mpreg_value_from_json(json, strlen(json), &commands, NULL, 0)) {
        return MP_SIM_NONE;
    }
    uint32_t op = mp_sim_client_request(s, c, &commands, timeout_ms);
    mpreg_value_free(&commands);
    return op;
}

uint32_t mp_sim_client_call(mp_sim *s, uint32_t c, const char *fun, const mpreg_value *args,
                            uint32_t timeout_ms) {
    mpreg_value a = mpreg_array();
    if (args) {
        mpreg_value_free(&a);
        if (mpreg_value_clone(args, &a)) {
            return MP_SIM_NONE;
        }
    }
    /* mpreg_map_set and mpreg_array_push take their value, even on error. */
    mpreg_value cmd = mpreg_map();
    mpreg_value commands = mpreg_array();
    mpreg_err err = mpreg_map_set(&cmd, "args", a);
    err = err ? err : mpreg_map_set(&cmd, "name", mpreg_str("call"));
    err = err ? err : mpreg_map_set(&cmd, "fun", mpreg_str(fun));
    if (err) {
        mpreg_value_free(&cmd);
    } else {
        err = mpreg_array_push(&commands, cmd);
    }
    if (err) {
        mpreg_value_free(&commands);
        return MP_SIM_NONE;
    }
    uint32_t op = mp_sim_client_request(s, c, &commands, timeout_ms);
    mpreg_value_free(&commands);
    return op;
}

uint32_t mp_sim_client_publish(mp_sim *s, uint32_t c, const char *topic, const void *data,
                               size_t len) {
    mp_envelope env;
    mp_envelope_init(&env, MP_KIND_PUBLISH);
    env.topic = mp_str_c(topic);
    env.payload = (mp_bytes){data, len};
    return mp_cl_op(s, c, MP_SIM_OP_PUBLISH, &env);
}

uint32_t mp_sim_client_subscribe(mp_sim *s, uint32_t c, const char *const *patterns, size_t n,
                                 const char *group) {
    if (n == 0 || n > MP_PUBSUB_MAX_PATTERNS) {
        return MP_SIM_NONE;
    }
    mp_pubsub_subscribe_payload p;
    memset(&p, 0, sizeof p);
    for (size_t i = 0; i < n; i++) {
        p.patterns[i] = mp_str_c(patterns[i]);
    }
    p.pattern_count = n;
    p.tag = mp_str_c("sim");
    p.group = group ? mp_str_c(group) : MP_STR_NULL;
    p.storage = mpreg_nil();
    mp_buf payload = MP_BUF_INIT;
    if (mp_pubsub_subscribe_encode(&p, &payload)) {
        mp_buf_free(&payload);
        return MP_SIM_NONE;
    }
    mp_envelope env;
    mp_envelope_init(&env, MP_KIND_SUBSCRIBE);
    env.payload = (mp_bytes){payload.data, payload.len};
    uint32_t op = mp_cl_op(s, c, MP_SIM_OP_SUBSCRIBE, &env);
    mp_buf_free(&payload);
    return op;
}

uint32_t mp_sim_client_unsubscribe(mp_sim *s, uint32_t c, uint64_t sub) {
    mp_buf payload = MP_BUF_INIT;
    if (mp_pubsub_subscription_encode(sub, &payload)) {
        mp_buf_free(&payload);
        return MP_SIM_NONE;
    }
    mp_envelope env;
    mp_envelope_init(&env, MP_KIND_UNSUBSCRIBE);
    env.payload = (mp_bytes){payload.data, payload.len};
    uint32_t op = mp_cl_op(s, c, MP_SIM_OP_UNSUBSCRIBE, &env);
    mp_buf_free(&payload);
    return op;
}

uint32_t mp_sim_client_register(mp_sim *s, uint32_t c, const char *fun, mp_sim_handler handler,
                                void *ud, uint32_t delay_ms) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (!cl || cl->closed || !fun || !handler) {
        return MP_SIM_NONE;
    }
    mp_sim_worker_fn *fns = realloc(cl->fns, (cl->fn_len + 1) * sizeof *fns);
    if (!fns) {
        return MP_SIM_NONE;
    }
    cl->fns = fns;
    char *name = malloc(strlen(fun) + 1);
    if (!name) {
        return MP_SIM_NONE;
    }
    strcpy(name, fun);
    cl->fns[cl->fn_len++] = (mp_sim_worker_fn){name, handler, ud, delay_ms};
    /* {"functions": [{"name": fun}]}. The setters take their value, even
     * when they fail, so each container is freed by whoever holds it. */
    mpreg_value f = mpreg_map();
    if (mpreg_map_set(&f, "name", mpreg_str(fun))) {
        mpreg_value_free(&f);
        return MP_SIM_NONE;
    }
    mpreg_value list = mpreg_array();
    if (mpreg_array_push(&list, f)) {
        mpreg_value_free(&list);
        return MP_SIM_NONE;
    }
    mpreg_value reg = mpreg_map();
    uint32_t op = MP_SIM_NONE;
    if (!mpreg_map_set(&reg, "functions", list)) {
        op = mp_cl_op_value(s, c, MP_SIM_OP_REGISTER, MP_KIND_REGISTER, NULL, &reg);
    }
    mpreg_value_free(&reg);
    return op;
}

uint32_t mp_sim_client_control(mp_sim *s, uint32_t c, const char *operation) {
    return mp_cl_op_value(s, c, MP_SIM_OP_CONTROL, MP_KIND_CONTROL, operation, NULL);
}

uint32_t mp_sim_client_send(mp_sim *s, uint32_t c, mp_envelope *env) {
    return mp_cl_op(s, c, MP_SIM_OP_RAW, env);
}

void mp_sim_client_tag_op(mp_sim *s, uint32_t c, uint32_t op, uint64_t tag) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (cl && op < cl->op_len) {
        cl->ops[op].tag = tag;
    }
}

/* --- what the node sends ---------------------------------------------------------------------- */

static void mp_cl_error_into(mp_sim_op *op, const mp_rpc_error *e) {
    op->ok = false;
    op->code = e->code;
    snprintf(op->message, sizeof op->message, "%s", mp_rpc_error_message(e));
}

/* The ERROR shape of an ERROR envelope. */
static void mp_cl_read_error(mp_sim_op *op, const mp_envelope *env) {
    mpreg_value v;
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    if (mpreg_value_decode(env->payload.ptr, env->payload.len, NULL, &v) == MPREG_OK &&
        mp_rpc_error_from_value(&v, &e) == MPREG_OK) {
        mp_cl_error_into(op, &e);
    } else {
        op->ok = false;
        op->code = MPREG_E_DECODE;
        snprintf(op->message, sizeof op->message, "an ERROR without an error shape");
    }
    mpreg_value_free(&v);
    mp_rpc_error_free(&e);
}

static void mp_cl_read_answer(mp_sim_op *op, const mp_envelope *env) {
    op->ok = true;
    switch (env->kind) {
    case MP_KIND_ERROR:
        mp_cl_read_error(op, env);
        return;
    case MP_KIND_RPC_REPLY: {
        mp_rpc_outcome o;
        memset(&o, 0, sizeof o);
        mp_rpc_error perr = MP_RPC_ERROR_INIT;
        if (mp_rpc_reply_decode(env->payload.ptr, env->payload.len, &o, &perr)) {
            op->ok = false;
            op->code = MPREG_E_DECODE;
            snprintf(op->message, sizeof op->message, "a malformed RPC_REPLY");
        } else if (o.ok) {
            op->value = o.value;
            o.value = mpreg_nil();
        } else {
            mp_cl_error_into(op, &o.error);
        }
        mp_rpc_outcome_free(&o);
        mp_rpc_error_free(&perr);
        return;
    }
    case MP_KIND_OK:
        if (op->type == MP_SIM_OP_SUBSCRIBE &&
            mp_pubsub_subscription_decode(env->payload.ptr, env->payload.len, &op->sub, NULL)) {
            op->ok = false;
            op->code = MPREG_E_DECODE;
        }
        return;
    case MP_KIND_CONTROL_REPLY:
        if (env->payload.len &&
            mpreg_value_decode(env->payload.ptr, env->payload.len, NULL, &op->value)) {
            op->value = mpreg_nil();
            op->ok = false;
            op->code = MPREG_E_DECODE;
        }
        return;
    default:
        return; /* PONG and the like: a success with nothing in it */
    }
}

static void mp_cl_on_deliver(mp_sim *s, mp_sim_client *cl, const mp_envelope *env) {
    uint64_t sub = 0;
    mp_str tag;
    if (mp_pubsub_deliver_parse(env, &sub, &tag)) {
        cl->stats.uncorrelated++;
        return;
    }
    if (MP_VEC_GROW(cl->dels, cl->del_cap, cl->del_len + 1, 64) != MPREG_OK) {
        return;
    }
    mp_sim_delivery *d = &cl->dels[cl->del_len];
    d->topic = malloc(env->topic.len + 1);
    d->data = malloc(env->payload.len ? env->payload.len : 1);
    if (!d->topic || !d->data) {
        free(d->topic);
        free(d->data);
        return;
    }
    memcpy(d->topic, env->topic.ptr, env->topic.len);
    d->topic[env->topic.len] = '\0';
    if (env->payload.len) {
        memcpy(d->data, env->payload.ptr, env->payload.len);
    }
    d->len = env->payload.len;
    d->sub = sub;
    d->id = env->id;
    d->at_ms = s->now;
    d->replay = !mp_str_empty(mp_envelope_header(env, "replay"));
    cl->del_len++;
}

static const mp_sim_worker_fn *mp_cl_find_fn(const mp_sim_client *cl, const char *name) {
    for (size_t i = 0; i < cl->fn_len; i++) {
        if (strcmp(cl->fns[i].name, name) == 0) {
            return &cl->fns[i];
        }
    }
    return NULL;
}

/* Runs the function an RPC_INVOKE names and builds the RPC_RESULT frame. */
static mpreg_err mp_cl_invoke(mp_sim_client *cl, const mp_envelope *env, mp_buf *frame,
                              uint32_t *delay_ms) {
    mp_rpc_outcome o;
    memset(&o, 0, sizeof o);
    o.value = mpreg_nil();
    mp_rpc_invoke inv;
    memset(&inv, 0, sizeof inv);
    *delay_ms = 0;
    if (mp_rpc_invoke_decode(env->payload.ptr, env->payload.len, &inv, &o.error) == MPREG_OK) {
        const mp_sim_worker_fn *fn = mp_cl_find_fn(cl, inv.fun);
        if (!fn) {
            mp_rpc_error_set(&o.error, MPREG_E_NOT_FOUND, inv.command, "no function '%s' here",
                             inv.fun);
        } else {
            *delay_ms = fn->delay_ms;
            mpreg_err code = fn->fn(fn->ud, &inv.args, &inv.kwargs, &o.value);
            if (code == MPREG_OK) {
                o.ok = true;
            } else {
                mpreg_value_free(&o.value);
                mp_rpc_error_set(&o.error, code, inv.command, "%s failed", inv.fun);
            }
        }
        mp_rpc_invoke_free(&inv);
    }
    mp_buf payload = MP_BUF_INIT;
    mpreg_err err = mp_rpc_result_encode(&o, &payload);
    mp_rpc_outcome_free(&o);
    if (!err) {
        mp_envelope res;
        mp_envelope_init(&res, MP_KIND_RPC_RESULT);
        res.id = mp_id_new(&cl->rng.rng);
        res.correlation_id = env->id;
        res.payload = (mp_bytes){payload.data, payload.len};
        err = mp_envelope_encode_frame(&res, frame);
    }
    mp_buf_free(&payload);
    return err;
}

static void mp_cl_on_invoke(mp_sim *s, mp_sim_client *cl, const mp_envelope *env) {
    mp_sim_action *a = calloc(1, sizeof *a);
    if (!a) {
        return;
    }
    uint32_t delay = 0;
    cl->stats.invokes++;
    if (mp_cl_invoke(cl, env, &a->frame, &delay)) {
        mp_buf_free(&a->frame);
        free(a);
        return;
    }
    a->client = cl->index;
    a->ep = cl->ep;
    if (delay == 0) {
        mp_sim_client_run_action(s, a);
        mp_buf_free(&a->frame);
        free(a);
        return;
    }
    mp_sim_event ev = {.time = s->now + delay, .type = MP_SIM_EV_ACTION, .ptr = a};
    mp_sim_schedule(s, &ev);
}

void mp_sim_client_run_action(mp_sim *s, mp_sim_action *a) {
    mp_sim_client *cl = mp_cl_get(s, a->client);
    mp_sim_ep *ep = cl && !cl->closed && cl->ep == a->ep ? mp_sim_ep_get(s, a->ep) : NULL;
    if (!ep || mp_buf_append(&ep->out, a->frame.data, a->frame.len)) {
        return; /* the worker left before its answer was ready */
    }
    cl->stats.frames_out++;
    mp_sim_net_commit(s, ep);
}

void mp_sim_client_on_frame(mp_sim *s, uint32_t c, const uint8_t *frame, size_t len) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (!cl) {
        return;
    }
    cl->stats.frames_in++;
    mp_envelope env;
    if (mp_envelope_decode(frame, len, &env, NULL)) {
        cl->stats.uncorrelated++;
        return;
    }
    switch (env.kind) {
    case MP_KIND_WELCOME:
        cl->welcomed = cl->welcomed || mp_id_equal(&env.correlation_id, &cl->hello_id);
        return;
    case MP_KIND_DELIVER:
        mp_cl_on_deliver(s, cl, &env);
        return;
    case MP_KIND_RPC_INVOKE:
        mp_cl_on_invoke(s, cl, &env);
        return;
    case MP_KIND_GOODBYE:
    case MP_KIND_PING:
        return;
    default:
        break;
    }
    if (mp_id_is_zero(&env.correlation_id) || mp_id_equal(&env.correlation_id, &cl->hello_id)) {
        cl->stats.uncorrelated++;
        return;
    }
    void *v = mp_map_get(&cl->op_by_id, env.correlation_id.bytes, MP_ID_LEN);
    if (!v) {
        cl->stats.unmatched++;
        return;
    }
    mp_sim_op *op = &cl->ops[(uintptr_t)v - 1];
    if (op->answers++ > 0) {
        return; /* a second answer: counted, the first one stands */
    }
    op->answered_ms = s->now;
    op->answer_kind = env.kind;
    mp_cl_read_answer(op, &env);
}

/* --- records ------------------------------------------------------------------------------------
 */

uint32_t mp_sim_client_count(const mp_sim *s) {
    return s->client_len;
}

bool mp_sim_client_welcomed(const mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl && cl->welcomed;
}

bool mp_sim_client_closed(const mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return !cl || cl->closed;
}

mpreg_err mp_sim_client_close_reason(const mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl ? cl->close_reason : MPREG_E_INVALID;
}

uint32_t mp_sim_client_node(const mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl ? cl->node : MP_SIM_NONE;
}

uint32_t mp_sim_client_op_count(const mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl ? cl->op_len : 0;
}

const mp_sim_op *mp_sim_client_op(const mp_sim *s, uint32_t c, uint32_t op) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl && op < cl->op_len ? &cl->ops[op] : NULL;
}

size_t mp_sim_client_delivery_count(const mp_sim *s, uint32_t c) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl ? cl->del_len : 0;
}

const mp_sim_delivery *mp_sim_client_delivery(const mp_sim *s, uint32_t c, size_t k) {
    mp_sim_client *cl = mp_cl_get(s, c);
    return cl && k < cl->del_len ? &cl->dels[k] : NULL;
}

void mp_sim_client_get_stats(const mp_sim *s, uint32_t c, mp_sim_client_stats *out) {
    mp_sim_client *cl = mp_cl_get(s, c);
    if (cl) {
        *out = cl->stats;
    } else {
        memset(out, 0, sizeof *out);
    }
}

void mp_sim_clients_free(mp_sim *s) {
    for (uint32_t c = 0; c < s->client_len; c++) {
        mp_sim_client *cl = s->clients[c];
        for (uint32_t i = 0; i < cl->op_len; i++) {
            mpreg_value_free(&cl->ops[i].value);
        }
        for (size_t i = 0; i < cl->del_len; i++) {
            free(cl->dels[i].topic);
            free(cl->dels[i].data);
        }
        for (size_t i = 0; i < cl->fn_len; i++) {
            free(cl->fns[i].name);
        }
        free(cl->ops);
        free(cl->dels);
        free(cl->fns);
        mp_map_free(&cl->op_by_id, NULL);
        free(cl);
    }
    free(s->clients);
    s->clients = NULL;
    s->client_len = s->client_cap = 0;
}
