/* node_rpc.c - RPC requests: from RPC_REQUEST to RPC_REPLY.
 *
 * A request becomes a plan (services/rpc_plan.h), and the node drives it:
 * every ready command is routed by the engine, then run where the decision
 * says - an in-process function, a worker connection (RPC_INVOKE, answered
 * by RPC_RESULT) or, once clustering exists, another node. Commands run as
 * soon as their inputs are there, so independent ones overlap in time.
 *
 * The request answers once: with the sinks' results when every command
 * completed, or with the first error as soon as it happens (no point
 * waiting for the others: the answer is already decided), or with a
 * deadline error when its timer fires first. Whatever is still running
 * then is orphaned: a late result finds nobody and is dropped.
 *
 * Completions may come back synchronously, from inside the function the
 * node just called. A request being advanced only records them (the
 * `advancing` flag); its loop picks up what became ready, so there is no
 * recursion however long a chain of synchronous commands is. */
#include "node/node_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void mp_request_advance(mp_request *r);

/* --- replies ---------------------------------------------------------------- */

static void mp_rpc_send_reply_payload(mp_node *n, mp_conn *c, const mp_id *id, const mp_buf *p);

static void mp_rpc_reply_error(mp_node *n, mp_conn *c, const mp_id *id, const mp_rpc_error *e) {
    mp_buf p = MP_BUF_INIT;
    n->counters.rpc_errors++;
    if (mp_rpc_reply_encode_error(e, &p) == MPREG_OK) {
        mp_rpc_send_reply_payload(n, c, id, &p);
    }
    mp_buf_free(&p);
    mp_conn_check_backpressure(n, c);
}

static void mp_rpc_reply_errorf(mp_node *n, mp_conn *c, const mp_id *id, mpreg_err code,
                                const char *command, const char *message) {
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&e, code, command, "%s", message);
    mp_rpc_reply_error(n, c, id, &e);
    mp_rpc_error_free(&e);
}

static void mp_rpc_send_reply_payload(mp_node *n, mp_conn *c, const mp_id *id, const mp_buf *p) {
    mp_envelope env;
    mp_envelope_init(&env, MP_KIND_RPC_REPLY);
    env.correlation_id = *id;
    env.payload = (mp_bytes){p->data, p->len};
    mpreg_err err = mp_node_send(n, c->id, &env);
    if (err == MPREG_E_FRAME_TOO_LARGE) {
        /* The results are too big for one frame: the client still gets an
         * answer, one that says so. */
        char msg[128];
        snprintf(msg, sizeof msg, "the reply (%zu bytes) is over the maximum frame size (%u)",
                 p->len, n->max_frame);
        mp_rpc_reply_errorf(n, c, id, MPREG_E_TOO_LARGE, NULL, msg);
    } else if (err && err != MPREG_E_CLOSED) {
        mp_node_log(n, MP_LOG_WARN, "conn %llu: RPC_REPLY not sent: %s", (unsigned long long)c->id,
                    mpreg_err_name(err));
    }
}

static void mp_rpc_reply_results(mp_node *n, mp_request *r) {
    mpreg_value results;
    mp_buf p = MP_BUF_INIT;
    mpreg_err err = mp_rpc_plan_response(r->plan, &results);
    err = err ? err : mp_rpc_reply_encode_ok(&results, &p);
    if (err) {
        /* A result too deep (or otherwise unfit) for the wire: say so. */
        mp_rpc_reply_errorf(n, r->conn, &r->id, err, NULL, "the results cannot be sent");
    } else {
        mp_rpc_send_reply_payload(n, r->conn, &r->id, &p);
        mp_conn_check_backpressure(n, r->conn);
    }
    mpreg_value_free(&results);
    mp_buf_free(&p);
}

/* --- calls ------------------------------------------------------------------ */

static void mp_call_free(mpreg_call *call) {
    free(call->fun);
    free(call);
}

/* Unlinks the call from everything but its request's plan. */
static void mp_call_detach(mpreg_call *call) {
    mp_list_remove(&call->req_link);
    if (call->runner) {
        mp_map_remove(&call->node->invokes, call->invoke_id.bytes, MP_ID_LEN);
        mp_list_remove(&call->conn_link);
        call->runner->inflight--;
        call->runner = NULL;
    } else if (call->provider) {
        call->provider->inflight--;
        call->provider = NULL;
    }
}

/* The request no longer wants this call's result. */
static void mp_call_orphan(mp_node *n, mpreg_call *call) {
    call->req = NULL;
    if (call->runner || call->cancel) {
        /* A worker's late RPC_RESULT will find no call and be dropped; a
         * cancellable function stops now. */
        void (*cancel)(void *) = call->cancel;
        void *ud = call->cancel_ud;
        mp_call_detach(call);
        mp_call_free(call);
        if (cancel) {
            cancel(ud);
        }
        return;
    }
    /* An in-process function still holds the call: it stays valid until the
     * function finishes it, and its result goes nowhere. */
    mp_list_remove(&call->req_link);
    mp_list_push(&n->orphans, &call->req_link);
}

void mp_call_set_cancel(mpreg_call *call, void (*cancel)(void *ud), void *ud) {
    call->cancel = cancel;
    call->cancel_ud = ud;
}

static void mp_served_answer(mp_node *n, mp_served *s, bool ok, mpreg_value *result,
                             mp_rpc_error *error);

/* Records a command's result, within the node-wide budget for results held
 * by requests in flight (limits.results_bytes): many requests that each
 * stay within their own budget must not add up to an unbounded node. */
static void mp_rpc_complete_within_budget(mp_request *r, uint32_t cmd, mpreg_value result) {
    mp_node *n = r->node;
    uint64_t cost = mp_rpc_value_cost(&result);
    if (n->result_bytes + cost > n->limits.results_bytes) {
        mpreg_value_free(&result);
        const char *name = mp_rpc_plan_command(r->plan, cmd)->name;
        n->limit_refusals++;
        mp_rpc_error e = MP_RPC_ERROR_INIT;
        mp_rpc_error_set(&e, MPREG_E_LIMIT, name,
                         "command '%s': limit results_bytes reached: requests in flight on this "
                         "node hold %llu bytes of results, at most %llu (mpregd --limit "
                         "results_bytes=N)",
                         name, (unsigned long long)n->result_bytes,
                         (unsigned long long)n->limits.results_bytes);
        mp_rpc_plan_fail(r->plan, cmd, &e);
        return;
    }
    mp_rpc_plan_complete(r->plan, cmd, result);
    uint64_t held = mp_rpc_plan_held_bytes(r->plan);
    n->result_bytes = n->result_bytes - r->held_bytes + held;
    r->held_bytes = held;
}

void mp_call_finish(mpreg_call *call, bool ok, mpreg_value result, mp_rpc_error *error) {
    if (call->served) {
        mp_served *s = call->served;
        mp_node *n = call->node;
        mp_call_detach(call);
        mp_call_free(call);
        s->call = NULL;
        mp_served_answer(n, s, ok, &result, error);
        return;
    }
    mp_request *r = call->req;
    uint32_t cmd = call->cmd;
    mp_call_detach(call);
    mp_call_free(call);
    if (!r) {
        mpreg_value_free(&result);
        mp_rpc_error_free(error);
        return;
    }
    if (ok) {
        mp_rpc_complete_within_budget(r, cmd, result);
    } else {
        mp_rpc_plan_fail(r->plan, cmd, error);
    }
    if (!r->advancing) {
        mp_request_advance(r);
    }
}

void mp_rpc_free_orphans(mp_node *n) {
    while (!mp_list_empty(&n->orphans)) {
        mpreg_call *call = MP_CONTAINER(n->orphans.next, mpreg_call, req_link);
        void (*cancel)(void *) = call->cancel;
        void *ud = call->cancel_ud;
        mp_call_detach(call);
        mp_call_free(call);
        if (cancel) {
            cancel(ud);
        }
    }
}

/* --- requests --------------------------------------------------------------- */

static void mp_request_free(mp_request *r) {
    mp_node *n = r->node;
    while (!mp_list_empty(&r->calls)) {
        mp_call_orphan(n, MP_CONTAINER(r->calls.next, mpreg_call, req_link));
    }
    mp_timer_cancel(&n->timers, &r->deadline);
    mp_list_remove(&r->conn_link);
    r->conn->request_count--;
    MP_ASSERT(n->request_total > 0 && n->result_bytes >= r->held_bytes);
    n->request_total--;
    n->result_bytes -= r->held_bytes;
    mp_rpc_plan_free(r->plan);
    free(r);
}

static void mp_request_finish(mp_request *r) {
    const mp_rpc_error *e = mp_rpc_plan_error(r->plan);
    if (e) {
        mp_rpc_reply_error(r->node, r->conn, &r->id, e);
    } else {
        mp_rpc_reply_results(r->node, r);
    }
    mp_request_free(r);
}

static void mp_rpc_failf(mp_request *r, uint32_t id, mpreg_err code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void mp_rpc_failf(mp_request *r, uint32_t id, mpreg_err code, const char *fmt, ...) {
    char message[MP_RPC_MAX_MESSAGE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    mp_rpc_plan_fail_code(r->plan, id, code, message);
}

/* Runs command id in this process. The function may finish the call before
 * it returns, or keep it and finish it later. */
static void mp_rpc_run_fn(mp_request *r, uint32_t id, mp_provider *p) {
    mpreg_value args, kwargs;
    if (mp_rpc_plan_resolve_args(r->plan, id, &args, &kwargs)) {
        return; /* the plan failed the command, and with it the request */
    }
    mpreg_call *call = calloc(1, sizeof *call);
    if (!call) {
        mpreg_value_free(&args);
        mpreg_value_free(&kwargs);
        mp_rpc_plan_fail_code(r->plan, id, MPREG_E_NOMEM, "out of memory");
        return;
    }
    call->node = r->node;
    call->req = r;
    call->cmd = id;
    call->provider = p;
    mp_list_init(&call->conn_link);
    mp_list_push(&r->calls, &call->req_link);
    p->inflight++;
    p->fn(p->ctx, &args, &kwargs, call); /* call may be gone when this returns */
    mpreg_value_free(&args);
    mpreg_value_free(&kwargs);
}

/* Replaces *slot with a copy of s ("" = NULL). */
static mpreg_err mp_set_exact(char **slot, const char *s) {
    free(*slot);
    *slot = NULL;
    if (s && *s) {
        size_t len = strlen(s) + 1;
        if (!(*slot = malloc(len))) {
            return MPREG_E_NOMEM;
        }
        memcpy(*slot, s, len);
    }
    return MPREG_OK;
}

static mpreg_err mp_rpc_send_invoke(mp_node *n, mp_request *r, mp_conn *runner,
                                    const mp_rpc_invoke *inv, const mp_id *invoke_id) {
    mp_buf payload = MP_BUF_INIT;
    mpreg_err err = mp_rpc_invoke_encode(inv, &payload);
    if (!err) {
        mp_envelope env;
        mp_envelope_init(&env, MP_KIND_RPC_INVOKE);
        env.id = *invoke_id;
        env.topic = mp_str_c(inv->fun);
        env.deadline_ms = r->deadline_ms == UINT64_MAX ? 0 : r->deadline_ms;
        env.payload = (mp_bytes){payload.data, payload.len};
        err = mp_node_send(n, runner->id, &env);
    }
    mp_buf_free(&payload);
    return err;
}

/* Runs command id on another connection: a worker that registered the
 * function (or, with clustering, a peer). The invoke names the exact
 * function_id and version that were selected, not the request's
 * constraint, so the runner knows which of its registrations is meant. */
static void mp_rpc_run_on(mp_request *r, uint32_t id, mp_conn *runner, const char *function_id,
                          const char *version) {
    mp_node *n = r->node;
    mp_rpc_invoke inv;
    if (mp_rpc_plan_invoke(r->plan, id, &inv)) {
        return;
    }
    mpreg_call *call = calloc(1, sizeof *call);
    mpreg_err err = call ? MPREG_OK : MPREG_E_NOMEM;
    err = err ? err : mp_set_exact(&inv.function_id, function_id);
    err = err ? err : mp_set_exact(&inv.version, version);
    if (!err) {
        call->invoke_id = mp_id_new(n->rng);
        call->fun = inv.fun;
        inv.fun = NULL;
        err = mp_map_put(&n->invokes, call->invoke_id.bytes, MP_ID_LEN, call, NULL);
    }
    if (!err) {
        inv.fun = call->fun; /* borrowed back for the encoding */
        err = mp_rpc_send_invoke(n, r, runner, &inv, &call->invoke_id);
        inv.fun = NULL;
        if (err) {
            mp_map_remove(&n->invokes, call->invoke_id.bytes, MP_ID_LEN);
        }
    }
    mp_rpc_invoke_free(&inv);
    if (err) {
        const char *fun = mp_rpc_plan_command(r->plan, id)->fun;
        if (call) {
            mp_call_free(call);
        }
        if (err == MPREG_E_CLOSED) {
            mp_rpc_failf(r, id, MPREG_E_WORKER_GONE, "the worker running '%s' is gone", fun);
        } else if (err == MPREG_E_FRAME_TOO_LARGE) {
            mp_rpc_failf(r, id, MPREG_E_TOO_LARGE,
                         "the arguments of '%s' do not fit in one frame (max %u bytes)", fun,
                         n->max_frame);
        } else {
            mp_rpc_failf(r, id, err, "could not send '%s' to its worker: %s", fun,
                         mpreg_strerror(err));
        }
        return;
    }
    call->node = n;
    call->req = r;
    call->cmd = id;
    call->runner = runner;
    mp_list_push(&r->calls, &call->req_link);
    mp_list_push(&runner->invokes, &call->conn_link);
    runner->inflight++;
}

static void mp_rpc_run_local(mp_request *r, uint32_t id, const mp_function_endpoint *ep) {
    mp_node *n = r->node;
    const mp_rpc_command *cmd = mp_rpc_plan_command(r->plan, id);
    mp_local_fn *f = mp_functions_find(n, ep->key.name, ep->key.function_id, ep->key.version);
    if (!f) {
        mp_rpc_failf(r, id, MPREG_E_INTERNAL, "function '%s' is advertised but not registered",
                     cmd->fun);
        return;
    }
    mp_provider *p = mp_functions_choose(n, f, &cmd->locs);
    if (!p) {
        /* The entry advertises the union of its providers' resources; no
         * single one of them has all that were asked for. */
        mp_rpc_failf(r, id, MPREG_E_NO_RESOURCES,
                     "function '%s': no provider on this node has every requested resource",
                     cmd->fun);
        return;
    }
    if (p->conn == 0) {
        mp_rpc_run_fn(r, id, p);
        return;
    }
    mp_conn *worker = mp_conn_get(n, p->conn);
    if (!worker) {
        mp_rpc_failf(r, id, MPREG_E_WORKER_GONE, "the worker running '%s' is gone", cmd->fun);
        return;
    }
    mp_rpc_run_on(r, id, worker, f->function_id, f->version);
}

/* The one way out to another node. Until clustering links nodes, there is
 * never a connection, and the command fails as unreachable. */
static void mp_rpc_run_remote(mp_request *r, uint32_t id, const char *node,
                              const mp_function_endpoint *ep) {
    mp_node *n = r->node;
    mp_conn *peer = node ? mp_conn_for_node(n, node) : NULL;
    if (!peer) {
        n->counters.unreachable++;
        mp_rpc_failf(r, id, MPREG_E_UNREACHABLE, "no connection to node %s",
                     node ? node : "(none)");
        return;
    }
    mp_rpc_run_on(r, id, peer, ep ? ep->key.function_id : NULL, ep ? ep->key.version : NULL);
}

/* Routes command id and runs it; avoid (NULL = none) is a node that could
 * not be reached, for a retry elsewhere. */
static void mp_rpc_dispatch_avoiding(mp_request *r, uint32_t id, const char *avoid) {
    const mp_rpc_command *cmd = mp_rpc_plan_command(r->plan, id);
    mp_function_query q = {
        .name = cmd->fun,
        .function_id = cmd->function_id,
        .version = cmd->version,
        .resources = &cmd->locs,
        .avoid_node = avoid,
    };
    mp_route_decision d = mp_engine_route_function(r->node->engine, &q, cmd->target_cluster);
    switch (d.action) {
    case MP_ROUTE_LOCAL:
        mp_rpc_run_local(r, id, d.endpoint);
        return;
    case MP_ROUTE_NODES:
        if (d.node_count > 0) {
            mp_rpc_run_remote(r, id, d.nodes[0], d.endpoint);
            return;
        }
        break;
    case MP_ROUTE_FORWARD_CLUSTER:
        mp_rpc_run_remote(r, id, d.next_hop_node, d.endpoint);
        return;
    default:
        break;
    }
    if (avoid) {
        mp_rpc_failf(r, id, MPREG_E_UNREACHABLE,
                     "node %s could not be reached to run '%s', and no other node can run it",
                     avoid, cmd->fun);
        return;
    }
    mp_rpc_failf(r, id, d.error ? d.error : MPREG_E_ROUTE, "function '%s': %s", cmd->fun, d.why);
}

static void mp_rpc_dispatch(mp_request *r, uint32_t id) {
    mp_rpc_dispatch_avoiding(r, id, NULL);
}

static void mp_request_advance(mp_request *r) {
    r->advancing = true;
    uint32_t ids[32];
    while (!mp_rpc_plan_error(r->plan)) {
        uint32_t k = mp_rpc_plan_ready(r->plan, ids, sizeof ids / sizeof ids[0]);
        if (k == 0) {
            break;
        }
        for (uint32_t i = 0; i < k && !mp_rpc_plan_error(r->plan); i++) {
            mp_rpc_dispatch(r, ids[i]);
        }
    }
    r->advancing = false;
    if (mp_rpc_plan_error(r->plan) || mp_rpc_plan_done(r->plan)) {
        mp_request_finish(r);
    }
}

/* The deadline fired first: answer with the name of a command that was
 * still running (the one to blame, or at least to look at). */
static void mp_request_expired(mp_node *n, mp_timer *t) {
    mp_request *r = MP_CONTAINER(t, mp_request, deadline);
    const char *running = NULL;
    for (uint32_t i = 0; i < mp_rpc_plan_count(r->plan) && !running; i++) {
        if (mp_rpc_plan_state(r->plan, i) == MP_RPC_RUNNING) {
            running = mp_rpc_plan_command(r->plan, i)->name;
        }
    }
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    if (running) {
        mp_rpc_error_set(&e, MPREG_E_DEADLINE, running,
                         "the deadline passed while '%s' was still running", running);
    } else {
        mp_rpc_error_set(&e, MPREG_E_DEADLINE, NULL, "the deadline passed");
    }
    mp_node_log(n, MP_LOG_DEBUG, "conn %llu: request deadline passed (%s)",
                (unsigned long long)r->conn->id, running ? running : "-");
    mp_rpc_reply_error(n, r->conn, &r->id, &e);
    mp_rpc_error_free(&e);
    mp_request_free(r);
}

/* The earlier of the envelope's deadline and the payload's timeout; the
 * node's default only when the request gives neither. */
static uint64_t mp_request_deadline(const mp_node *n, const mp_envelope *env, uint64_t timeout_ms) {
    if (!env->deadline_ms && !timeout_ms) {
        return mp_add_ms(n->now_ms, n->rpc_timeout_ms);
    }
    uint64_t by_timeout = timeout_ms ? mp_add_ms(n->now_ms, timeout_ms) : UINT64_MAX;
    uint64_t by_envelope = env->deadline_ms ? env->deadline_ms : UINT64_MAX;
    return by_timeout < by_envelope ? by_timeout : by_envelope;
}

void mp_rpc_on_request(mp_node *n, mp_conn *c, const mp_envelope *env) {
    n->counters.rpc_requests++;
    if (c->request_count >= n->limits.requests_per_conn) {
        mp_node_refuse_limit(n, c, &env->id, "RPC_REQUEST", "requests_per_conn", c->request_count,
                             n->limits.requests_per_conn);
        return;
    }
    if (n->request_total >= n->limits.requests_per_node) {
        mp_node_refuse_limit(n, c, &env->id, "RPC_REQUEST", "requests_per_node", n->request_total,
                             n->limits.requests_per_node);
        return;
    }
    mp_rpc_request req;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    mp_rpc_plan *plan = NULL;
    if (mp_rpc_request_parse(env->payload.ptr, env->payload.len, &req, &err)) {
        mp_rpc_reply_error(n, c, &env->id, &err);
        mp_rpc_error_free(&err);
        return;
    }
    uint64_t deadline = mp_request_deadline(n, env, req.timeout_ms);
    if (mp_rpc_plan_new(&req, &plan, &err)) {
        mp_rpc_request_free(&req);
        mp_rpc_reply_error(n, c, &env->id, &err);
        mp_rpc_error_free(&err);
        return;
    }
    mp_rpc_request_free(&req);
    mp_rpc_limits limits = {.max_held_bytes = (size_t)n->limits.request_bytes};
    mp_rpc_plan_set_limits(plan, &limits);
    if (deadline <= n->now_ms) {
        mp_rpc_plan_free(plan);
        mp_rpc_reply_errorf(n, c, &env->id, MPREG_E_DEADLINE, NULL,
                            "the deadline passed before the request started");
        return;
    }
    mp_request *r = calloc(1, sizeof *r);
    if (!r) {
        mp_rpc_plan_free(plan);
        mp_rpc_reply_errorf(n, c, &env->id, MPREG_E_NOMEM, NULL, "out of memory");
        return;
    }
    r->node = n;
    r->conn = c;
    r->id = env->id;
    r->plan = plan;
    r->deadline_ms = deadline;
    mp_list_init(&r->calls);
    mp_timer_init(&r->deadline, mp_request_expired);
    mp_list_push(&c->requests, &r->conn_link);
    c->request_count++;
    n->request_total++;
    if (mp_timer_arm(&n->timers, &r->deadline, deadline)) {
        mp_rpc_reply_errorf(n, c, &env->id, MPREG_E_NOMEM, NULL, "out of memory");
        mp_request_free(r);
        return;
    }
    mp_request_advance(r);
}

void mp_rpc_on_result(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mpreg_call *call = mp_map_get(&n->invokes, env->correlation_id.bytes, MP_ID_LEN);
    if (!call || call->runner != c) {
        /* A result for a call that was abandoned (deadline, failure, client
         * gone) or that was never sent to this connection. */
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: RPC_RESULT for no call in flight: dropped",
                    (unsigned long long)c->id);
        return;
    }
    mp_rpc_outcome o;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    if (mp_rpc_result_decode(env->payload.ptr, env->payload.len, &o, &err)) {
        /* Tell the worker, and fail the command: its result is lost. */
        mp_node_send_error(n, c->id, &env->id, &err);
        mp_rpc_error e = MP_RPC_ERROR_INIT;
        mp_rpc_error_set(&e, MPREG_E_HANDLER, NULL, "the worker sent a bad RPC_RESULT for '%s': %s",
                         call->fun, mp_rpc_error_message(&err));
        mp_rpc_error_free(&err);
        mp_call_finish(call, false, mpreg_nil(), &e);
        return;
    }
    if (o.ok) {
        mpreg_value v = o.value;
        o.value = mpreg_nil();
        mp_call_finish(call, true, v, NULL);
    } else {
        mp_call_finish(call, false, mpreg_nil(), &o.error);
    }
    mp_rpc_outcome_free(&o);
}

void mp_rpc_conn_requests_drop(mp_node *n, mp_conn *c) {
    (void)n;
    while (!mp_list_empty(&c->requests)) {
        mp_request_free(MP_CONTAINER(c->requests.next, mp_request, conn_link));
    }
}

void mp_rpc_conn_requests_fail(mp_node *n, mp_conn *c, mpreg_err code, const char *message) {
    while (!mp_list_empty(&c->requests)) {
        mp_request *r = MP_CONTAINER(c->requests.next, mp_request, conn_link);
        mp_rpc_reply_errorf(n, c, &r->id, code, NULL, message);
        mp_request_free(r);
    }
}

/* A call on a link this node dialed that never got its WELCOME never
 * started: it goes to another node that has the function, if any (a few
 * times per request at most, so two dead nodes cannot bounce it until its
 * deadline). */
static bool mp_rpc_retry_elsewhere(mp_node *n, mp_conn *c, mpreg_call *call) {
    mp_request *r = call->req;
    if (c->role != MP_ROLE_PEER || !c->outbound || c->welcomed || !r || !c->peer_id ||
        r->retries >= MP_NODE_MAX_RETRIES) {
        return false;
    }
    uint32_t cmd = call->cmd;
    r->retries++;
    mp_call_detach(call);
    mp_call_free(call);
    mp_node_log(n, MP_LOG_INFO, "node %s could not be reached: command '%s' tries elsewhere",
                c->peer_id, mp_rpc_plan_command(r->plan, cmd)->name);
    r->advancing = true;
    mp_rpc_dispatch_avoiding(r, cmd, c->peer_id);
    r->advancing = false;
    mp_request_advance(r); /* answers when the retry failed at once */
    return true;
}

void mp_rpc_conn_invokes_fail(mp_node *n, mp_conn *c) {
    /* One at a time from the head: answering one request orphans its other
     * calls, which may be on this connection too and leave the list. */
    while (!mp_list_empty(&c->invokes)) {
        mpreg_call *call = MP_CONTAINER(c->invokes.next, mpreg_call, conn_link);
        if (mp_rpc_retry_elsewhere(n, c, call)) {
            continue;
        }
        mp_rpc_error e = MP_RPC_ERROR_INIT;
        if (c->role != MP_ROLE_PEER) {
            mp_rpc_error_set(&e, MPREG_E_WORKER_GONE, NULL, "the worker running '%s' disconnected",
                             call->fun);
        } else if (c->welcomed || !c->outbound) {
            mp_rpc_error_set(&e, MPREG_E_UNREACHABLE, NULL, "node %s went away while running '%s'",
                             c->peer_id ? c->peer_id : "?", call->fun);
        } else {
            mp_rpc_error_set(&e, MPREG_E_UNREACHABLE, NULL,
                             "node %s could not be reached to run '%s'",
                             c->peer_id ? c->peer_id : "?", call->fun);
        }
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: call of '%s' fails: worker gone",
                    (unsigned long long)c->id, call->fun);
        mp_call_finish(call, false, mpreg_nil(), &e);
    }
}

/* --- serving a peer's invokes ------------------------------------------------- */

static void mp_served_free(mp_node *n, mp_served *s) {
    mp_timer_cancel(&n->timers, &s->deadline);
    mp_list_remove(&s->conn_link);
    free(s);
}

static void mp_served_send(mp_node *n, mp_conn *c, const mp_id *invoke_id,
                           const mp_rpc_outcome *o) {
    mp_buf p = MP_BUF_INIT;
    mpreg_err err = mp_rpc_result_encode(o, &p);
    if (!err) {
        mp_envelope env;
        mp_envelope_init(&env, MP_KIND_RPC_RESULT);
        env.correlation_id = *invoke_id;
        env.payload = (mp_bytes){p.data, p.len};
        err = mp_node_send(n, c->id, &env);
    }
    if (err == MPREG_E_FRAME_TOO_LARGE || err == MPREG_E_TOO_DEEP) {
        mp_rpc_outcome fail = {.ok = false};
        mp_rpc_error_set(&fail.error, MPREG_E_TOO_LARGE, NULL,
                         "the result cannot be sent back (%s)", mpreg_err_name(err));
        mp_served_send(n, c, invoke_id, &fail);
        mp_rpc_error_free(&fail.error);
    } else if (err && err != MPREG_E_CLOSED) {
        mp_node_log(n, MP_LOG_WARN, "conn %llu: RPC_RESULT not sent: %s", (unsigned long long)c->id,
                    mpreg_err_name(err));
    }
    mp_buf_free(&p);
}

static void mp_served_fail(mp_node *n, mp_conn *c, const mp_id *invoke_id, mpreg_err code,
                           const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void mp_served_fail(mp_node *n, mp_conn *c, const mp_id *invoke_id, mpreg_err code,
                           const char *fmt, ...) {
    char message[MP_RPC_MAX_MESSAGE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    mp_rpc_outcome o = {.ok = false};
    mp_rpc_error_set(&o.error, code, NULL, "%s", message);
    mp_served_send(n, c, invoke_id, &o);
    mp_rpc_error_free(&o.error);
}

static void mp_served_answer(mp_node *n, mp_served *s, bool ok, mpreg_value *result,
                             mp_rpc_error *error) {
    mp_rpc_outcome o = {.ok = ok};
    if (ok) {
        o.value = *result;
    } else {
        mpreg_value_free(result);
        if (error) {
            mp_rpc_error_move(&o.error, error);
        }
        if (o.error.code == MPREG_OK) {
            o.error.code = MPREG_E_HANDLER;
        }
    }
    mp_served_send(n, s->conn, &s->invoke_id, &o);
    mp_rpc_outcome_free(&o);
    mp_served_free(n, s);
}

/* The asker's deadline passed: it has answered its client already. */
static void mp_served_expired(mp_node *n, mp_timer *t) {
    mp_served *s = MP_CONTAINER(t, mp_served, deadline);
    if (s->call) {
        s->call->served = NULL;
        mp_call_orphan(n, s->call);
        s->call = NULL;
    }
    mp_served_free(n, s);
}

static void mp_served_start(mp_node *n, mp_served *s, mp_provider *p, mp_rpc_invoke *inv) {
    mpreg_call *call = calloc(1, sizeof *call);
    if (!call) {
        mp_served_fail(n, s->conn, &s->invoke_id, MPREG_E_NOMEM, "out of memory");
        mp_served_free(n, s);
        return;
    }
    call->node = n;
    call->served = s;
    mp_list_init(&call->req_link);
    mp_list_init(&call->conn_link);
    s->call = call;
    if (p->conn == 0) {
        call->provider = p;
        p->inflight++;
        p->fn(p->ctx, &inv->args, &inv->kwargs, call); /* call may be gone when this returns */
        return;
    }
    /* A worker of this node runs it: the invoke goes on, and its result
     * comes back through mp_rpc_on_result to this call. */
    mp_conn *worker = mp_conn_get(n, p->conn);
    mp_buf payload = MP_BUF_INIT;
    mpreg_err err = worker ? MPREG_OK : MPREG_E_WORKER_GONE;
    call->invoke_id = mp_id_new(n->rng);
    call->fun = inv->fun;
    inv->fun = NULL;
    inv->fun = call->fun; /* borrowed for the encoding */
    err = err ? err : mp_rpc_invoke_encode(inv, &payload);
    inv->fun = NULL;
    err = err ? err : mp_map_put(&n->invokes, call->invoke_id.bytes, MP_ID_LEN, call, NULL);
    if (!err) {
        mp_envelope env;
        mp_envelope_init(&env, MP_KIND_RPC_INVOKE);
        env.id = call->invoke_id;
        env.topic = mp_str_c(call->fun);
        env.deadline_ms = mp_timer_armed(&s->deadline) ? s->deadline.due : 0;
        env.payload = (mp_bytes){payload.data, payload.len};
        err = mp_node_send(n, worker->id, &env);
        if (err) {
            mp_map_remove(&n->invokes, call->invoke_id.bytes, MP_ID_LEN);
        }
    }
    mp_buf_free(&payload);
    if (err) {
        mp_served_fail(n, s->conn, &s->invoke_id, MPREG_E_WORKER_GONE,
                       "the worker running '%s' on this node is gone", call->fun);
        mp_call_free(call);
        mp_served_free(n, s);
        return;
    }
    call->runner = worker;
    mp_list_push(&worker->invokes, &call->conn_link);
    worker->inflight++;
}

void mp_rpc_on_invoke(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_rpc_invoke inv;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    if (mp_rpc_invoke_decode(env->payload.ptr, env->payload.len, &inv, &err)) {
        mp_rpc_outcome o = {.ok = false};
        mp_rpc_error_move(&o.error, &err);
        mp_served_send(n, c, &env->id, &o);
        mp_rpc_outcome_free(&o);
        return;
    }
    mp_local_fn *f = mp_functions_find(n, inv.fun, inv.function_id ? inv.function_id : "",
                                       inv.version ? inv.version : "");
    mp_provider *p = f ? mp_functions_choose(n, f, &inv.locs) : NULL;
    if (!f) {
        mp_served_fail(n, c, &env->id, MPREG_E_NOT_FOUND,
                       "function '%s' is not on node %s (any more)", inv.fun, n->node_id);
    } else if (!p) {
        mp_served_fail(n, c, &env->id, MPREG_E_NO_RESOURCES,
                       "function '%s': no provider on node %s has every requested resource",
                       inv.fun, n->node_id);
    } else if (env->deadline_ms && env->deadline_ms <= n->now_ms) {
        mp_served_fail(n, c, &env->id, MPREG_E_DEADLINE,
                       "the deadline of '%s' passed before it reached node %s", inv.fun,
                       n->node_id);
    } else {
        mp_served *s = calloc(1, sizeof *s);
        if (!s) {
            mp_served_fail(n, c, &env->id, MPREG_E_NOMEM, "out of memory");
        } else {
            s->conn = c;
            s->invoke_id = env->id;
            mp_timer_init(&s->deadline, mp_served_expired);
            mp_list_push(&c->served, &s->conn_link);
            if (env->deadline_ms) {
                mp_timer_arm(&n->timers, &s->deadline, env->deadline_ms);
            }
            mp_served_start(n, s, p, &inv);
        }
    }
    mp_rpc_invoke_free(&inv);
}

void mp_rpc_conn_served_drop(mp_node *n, mp_conn *c) {
    while (!mp_list_empty(&c->served)) {
        mp_served *s = MP_CONTAINER(c->served.next, mp_served, conn_link);
        if (s->call) {
            s->call->served = NULL;
            mp_call_orphan(n, s->call);
            s->call = NULL;
        }
        mp_served_free(n, s);
    }
}
