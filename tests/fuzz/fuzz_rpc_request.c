/* fuzz_rpc_request.c - libFuzzer target for RPC_REQUEST payloads and plans.
 *
 * Any input: parse must not crash, hang or leak, and must fail with a code
 * and a message. A request that parses must re-encode and parse again; its
 * plan either fails (cycles, bad paths) with a message, or runs to the end
 * under a fake executor that hands commands out in small batches and
 * completes them in an order taken from the input, with every command going
 * through an RPC_INVOKE encode/decode round trip and the outcome through an
 * RPC_RESULT and RPC_REPLY round trip. Small argument limits keep chains of
 * references that double their result from taking the fuzzer's time. */
#include "services/rpc_plan.h"

#include "core/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void mp_check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_rpc_request: %s\n", what);
        abort();
    }
}

/* echo: first argument; fail: a handler error; anything else: its
 * arguments, plus its kwargs when there are any, so that field paths into
 * maps have something to find. */
static mpreg_err mp_fake_run(const mp_rpc_invoke *inv, mpreg_value *out) {
    *out = mpreg_nil();
    if (strcmp(inv->fun, "fail") == 0) {
        return MPREG_E_HANDLER;
    }
    if (strcmp(inv->fun, "echo") == 0) {
        return inv->args.u.arr.len ? mpreg_value_clone(&inv->args.u.arr.items[0], out) : MPREG_OK;
    }
    if (inv->kwargs.u.map.len > 0) {
        return mpreg_value_clone(&inv->kwargs, out);
    }
    return mpreg_value_clone(&inv->args, out);
}

/* Sends the invoke over the "wire" and back, runs it, and sends the outcome
 * over the wire and back too. */
static void mp_run_command(mp_rpc_plan *plan, uint32_t id, mp_buf *buf) {
    mp_rpc_invoke inv, remote;
    if (mp_rpc_plan_invoke(plan, id, &inv) != MPREG_OK) {
        mp_check(mp_rpc_plan_error(plan) != NULL, "invoke failed without failing the plan");
        return;
    }
    mp_buf_clear(buf);
    mp_check(mp_rpc_invoke_encode(&inv, buf) == MPREG_OK, "invoke does not encode");
    mp_rpc_invoke_free(&inv);
    mp_check(mp_rpc_invoke_decode(buf->data, buf->len, &remote, NULL) == MPREG_OK,
             "invoke does not decode");

    mp_rpc_outcome outcome = {.ok = true};
    mpreg_err err = mp_fake_run(&remote, &outcome.value);
    if (err) {
        outcome.ok = false;
        mp_rpc_error_set(&outcome.error, err, remote.command, "%s failed", remote.fun);
    }
    mp_rpc_invoke_free(&remote);
    mp_buf_clear(buf);
    mp_check(mp_rpc_result_encode(&outcome, buf) == MPREG_OK, "result does not encode");
    mp_rpc_outcome_free(&outcome);
    mp_check(mp_rpc_result_decode(buf->data, buf->len, &outcome, NULL) == MPREG_OK,
             "result does not decode");
    if (outcome.ok) {
        mp_check(mp_rpc_plan_complete(plan, id, outcome.value) == MPREG_OK, "complete refused");
        outcome.value = mpreg_nil();
    } else {
        mp_check(mp_rpc_plan_fail(plan, id, &outcome.error) == MPREG_OK, "fail refused");
    }
    mp_rpc_outcome_free(&outcome);
}

/* The reply the client would get, over the wire and back. */
static void mp_check_reply(mp_rpc_plan *plan, mp_buf *buf) {
    mp_buf_clear(buf);
    const mp_rpc_error *e = mp_rpc_plan_error(plan);
    mp_rpc_outcome back;
    if (e) {
        mp_check(mp_rpc_reply_encode_error(e, buf) == MPREG_OK, "error reply does not encode");
        mp_check(mp_rpc_reply_decode(buf->data, buf->len, &back, NULL) == MPREG_OK && !back.ok &&
                     back.error.code == e->code,
                 "error reply round trip");
    } else {
        mpreg_value results;
        mp_check(mp_rpc_plan_response(plan, &results) == MPREG_OK, "no response");
        /* A result may nest 31 levels; inside {"results": {name: ...}} that
         * is over the wire's 32, which the encoder must refuse. */
        mpreg_err rc = mp_rpc_reply_encode_ok(&results, buf);
        if (rc == MPREG_E_TOO_DEEP) {
            mpreg_value_free(&results);
            return;
        }
        mp_check(rc == MPREG_OK, "reply does not encode");
        mp_check(mp_rpc_reply_decode(buf->data, buf->len, &back, NULL) == MPREG_OK && back.ok &&
                     mpreg_value_equal(&back.value, &results),
                 "reply round trip");
        mpreg_value_free(&results);
    }
    mp_rpc_outcome_free(&back);
}

/* Runs the plan: batches of 1..3, completion order driven by the input. */
static void mp_run_plan(mp_rpc_plan *plan, const uint8_t *data, size_t size, mp_buf *buf) {
    uint32_t inflight[MP_RPC_MAX_COMMANDS];
    uint32_t n = 0;
    size_t cursor = 0;
    while (!mp_rpc_plan_done(plan)) {
        uint8_t choice = size ? data[cursor++ % size] : 0;
        if (mp_rpc_plan_ready_count(plan) > 0 && (n == 0 || (choice & 1))) {
            n += mp_rpc_plan_ready(plan, inflight + n, 1 + (choice >> 1) % 3);
            continue;
        }
        mp_check(n > 0, "plan stuck");
        uint32_t k = (uint32_t)(choice % n);
        uint32_t id = inflight[k];
        inflight[k] = inflight[--n];
        mp_run_command(plan, id, buf);
    }
    /* After a failure, commands still in flight report late results. */
    mp_check(n == 0, "done with commands in flight");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mp_buf buf = MP_BUF_INIT;
    mp_rpc_request req;
    mp_rpc_error err = MP_RPC_ERROR_INIT;

    mpreg_err rc = mp_rpc_request_parse(data, size, &req, &err);
    if (rc != MPREG_OK) {
        mp_check(err.code == rc && err.message != NULL && req.commands == NULL,
                 "parse error without a message");
        mp_rpc_error_free(&err);
        return 0;
    }
    mp_buf_clear(&buf);
    mp_check(mp_rpc_request_encode(&req, &buf) == MPREG_OK, "request does not re-encode");
    mp_rpc_request again;
    mp_check(mp_rpc_request_parse(buf.data, buf.len, &again, NULL) == MPREG_OK &&
                 again.count == req.count && again.timeout_ms == req.timeout_ms,
             "request round trip");
    mp_rpc_request_free(&again);

    mp_rpc_plan *plan;
    rc = mp_rpc_plan_new(&req, &plan, &err);
    mp_check(req.commands == NULL, "plan did not take the commands");
    if (rc != MPREG_OK) {
        mp_check(err.code == rc && err.message != NULL && plan == NULL, "plan error");
        mp_rpc_error_free(&err);
        return 0;
    }
    mp_rpc_plan_set_limits(plan,
                           &(mp_rpc_limits){.max_arg_items = 4096, .max_arg_bytes = 64 * 1024});
    mp_run_plan(plan, data, size, &buf);
    mp_check_reply(plan, &buf);
    mp_rpc_plan_free(plan);
    return 0;
}
