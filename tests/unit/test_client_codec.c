/* test_client_codec.c - the pure parts of libmpreg (client/client_proto.h):
 * url parsing, the payloads a client builds and reads, the worker's function
 * table, message conversion and the CLI's argument helpers. No sockets: the
 * clients themselves are covered by tests/integration/test_client.c. */
#include "client/client_proto.h"
#include "runtime/sysclock.h"

#include "core/buf.h"
#include "core/envelope.h"
#include "services/pubsub.h"
#include "services/rpc_plan.h"

#include "support/value_json.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------------- */

static mp_xoshiro rng;

static void setup(void) {
    mp_xoshiro_seed(&rng, 42);
}

/* An envelope of kind with a value payload (encoded into *store). */
static mp_envelope envelope_with(mp_kind kind, const mp_id *corr, const char *payload_json,
                                 mpreg_bytes *store) {
    mp_envelope e;
    mp_envelope_init(&e, kind);
    e.id = mp_id_new(&rng.rng);
    if (corr) {
        e.correlation_id = *corr;
    }
    if (payload_json) {
        mpreg_value v = json(payload_json);
        cr_assert_eq(mpreg_value_encode(&v, store), MPREG_OK);
        mpreg_value_free(&v);
        e.payload = (mp_bytes){store->data, store->len};
    }
    return e;
}

/* ---- urls ------------------------------------------------------------------------ */

static void url_ok(const char *url, const char *host, uint16_t port) {
    char h[MP_CLIENT_HOST_MAX];
    uint16_t p = 0;
    const char *why = NULL;
    cr_assert_eq(mp_client_parse_url(url, h, &p, &why), MPREG_OK, "%s: %s", url, why);
    cr_assert_str_eq(h, host, "%s", url);
    cr_assert_eq(p, port, "%s: port %u", url, p);
}

static void url_bad(const char *url) {
    char h[MP_CLIENT_HOST_MAX];
    uint16_t p = 0;
    const char *why = NULL;
    cr_assert_eq(mp_client_parse_url(url, h, &p, &why), MPREG_E_INVALID, "%s accepted", url);
    cr_assert_not_null(why);
}

Test(client_url, forms) {
    url_ok("127.0.0.1:6464", "127.0.0.1", 6464);
    url_ok("localhost:1", "localhost", 1);
    url_ok("example.com", "example.com", MPREG_DEFAULT_PORT);
    url_ok("tcp://node-1:7000", "node-1", 7000);
    url_ok("mpreg://node-1:7000/", "node-1", 7000);
    url_ok("[::1]:65535", "::1", 65535);
    url_ok("[fe80::1]", "fe80::1", MPREG_DEFAULT_PORT);
    url_ok("::1", "::1", MPREG_DEFAULT_PORT);
}

Test(client_url, refusals) {
    url_bad("");
    url_bad(":6464");
    url_bad("host:");
    url_bad("host:0");
    url_bad("host:65536");
    url_bad("host:12x");
    url_bad("host:-1");
    url_bad("[::1");
    url_bad("[::1]x");
    url_bad("ho st:1");
    url_bad("tcp://");
    char h[MP_CLIENT_HOST_MAX];
    uint16_t p;
    cr_assert_eq(mp_client_parse_url(NULL, h, &p, NULL), MPREG_E_INVALID);
    char longhost[400];
    memset(longhost, 'a', sizeof longhost - 1);
    longhost[sizeof longhost - 1] = '\0';
    url_bad(longhost);
}

/* ---- time -------------------------------------------------------------------------- */

Test(client_time, timeouts) {
    cr_assert_eq(mp_client_timeout(5, 7), 5);
    cr_assert_eq(mp_client_timeout(0, 7), 7);
    cr_assert_eq(mp_client_timeout(0, 0), MPREG_DEFAULT_TIMEOUT_MS);
    cr_assert_eq(mp_client_reply_wait(100), 1100);
    cr_assert_eq(mp_client_reply_wait(8000), 10000);
    cr_assert_eq(mp_client_reply_wait(100000), 110000);
    cr_assert_eq(mp_client_reply_wait(UINT32_MAX), UINT32_MAX);
    uint64_t a = mp_sysclock_mono_ms(), b = mp_sysclock_mono_ms();
    cr_assert_leq(a, b);
    cr_assert_gt(mp_sysclock_wall_ms(), 1600000000000ull);
}

/* ---- frames and handshake ---------------------------------------------------------------- */

Test(client_frame, round_trip, .init = setup) {
    mp_buf out = MP_BUF_INIT;
    mp_id corr = mp_id_new(&rng.rng), id;
    mp_client_msg m = {.kind = MP_KIND_PUBLISH,
                       .correlation = &corr,
                       .topic = "a.b",
                       .deadline_ms = 1234,
                       .payload = "xy",
                       .payload_len = 2};
    cr_assert_eq(mp_client_frame(&out, &rng.rng, &m, 0, &id), MPREG_OK);
    cr_assert_eq(mp_get_u32be(out.data), out.len - 4);
    mp_envelope e;
    cr_assert_eq(mp_envelope_decode(out.data + 4, out.len - 4, &e, NULL), MPREG_OK);
    cr_assert_eq(e.kind, MP_KIND_PUBLISH);
    cr_assert(mp_id_equal(&e.id, &id));
    cr_assert(mp_id_equal(&e.correlation_id, &corr));
    cr_assert(mp_str_eq_c(e.topic, "a.b"));
    cr_assert_eq(e.deadline_ms, 1234);
    cr_assert_eq(e.payload.len, 2);
    /* An invalid envelope (PUBLISH without topic) leaves out as it was. */
    size_t before = out.len;
    m.topic = NULL;
    cr_assert_neq(mp_client_frame(&out, &rng.rng, &m, 0, NULL), MPREG_OK);
    cr_assert_eq(out.len, before);
    /* A frame over max_frame is refused and dropped. */
    char big[200] = {0};
    mp_client_msg m2 = {.kind = MP_KIND_PING, .payload = big, .payload_len = sizeof big};
    cr_assert_eq(mp_client_frame(&out, &rng.rng, &m2, 100, NULL), MPREG_E_FRAME_TOO_LARGE);
    cr_assert_eq(out.len, before);
    mp_buf_free(&out);
}

Test(client_handshake, hello_payload) {
    mpreg_bytes b = {0};
    cr_assert_eq(mp_client_hello_payload(NULL, &b), MPREG_OK);
    mpreg_value v;
    cr_assert_eq(mpreg_value_decode(b.data, b.len, NULL, &v), MPREG_OK);
    assert_json_eq(&v, "{\"role\": \"client\"}");
    mpreg_value_free(&v);
    mpreg_bytes_free(&b);
    mpreg_client_options o = {.name = "cli", .token = "s3cret"};
    cr_assert_eq(mp_client_hello_payload(&o, &b), MPREG_OK);
    cr_assert_eq(mpreg_value_decode(b.data, b.len, NULL, &v), MPREG_OK);
    assert_json_eq(&v, "{\"role\": \"client\", \"name\": \"cli\", \"token\": \"s3cret\"}");
    mpreg_value_free(&v);
    mpreg_bytes_free(&b);
}

Test(client_handshake, welcome_and_refusals, .init = setup) {
    mpreg_bytes store = {0};
    mp_id hello = mp_id_new(&rng.rng);
    mp_envelope e = envelope_with(MP_KIND_WELCOME, &hello,
                                  "{\"node\":\"n1\",\"name\":\"alpha\",\"cluster\":\"c\","
                                  "\"server\":\"mpregd/0.1\",\"max_frame\":1024,\"new\":1}",
                                  &store);
    mp_client_welcome w;
    mpreg_error err = {0};
    cr_assert_eq(mp_client_welcome_read(&e, &w, &err), MPREG_OK);
    cr_assert_str_eq(w.node, "n1");
    cr_assert_str_eq(w.name, "alpha");
    cr_assert_str_eq(w.cluster, "c");
    cr_assert_str_eq(w.server, "mpregd/0.1");
    cr_assert_eq(w.max_frame, 1024);
    mpreg_bytes_free(&store);

    e = envelope_with(MP_KIND_ERROR, &hello,
                      "{\"code\":208,\"name\":\"auth\",\"message\":\"token refused\"}", &store);
    cr_assert_eq(mp_client_welcome_read(&e, &w, &err), MPREG_E_AUTH);
    cr_assert_str_eq(err.message, "token refused");
    mpreg_bytes_free(&store);

    e = envelope_with(MP_KIND_PONG, &hello, NULL, &store);
    cr_assert_eq(mp_client_welcome_read(&e, &w, &err), MPREG_E_HANDSHAKE);
    e = envelope_with(MP_KIND_WELCOME, &hello, "[1]", &store);
    cr_assert_eq(mp_client_welcome_read(&e, &w, &err), MPREG_E_HANDSHAKE);
    mpreg_bytes_free(&store);
    mpreg_error_free(&err);
}

/* ---- RPC payloads ------------------------------------------------------------------------- */

Test(client_rpc, call_name_avoids_references) {
    char name[32];
    mpreg_value args = json("[\"hi\", {\"k\": \"v\"}]");
    mp_client_call_name("echo", &args, NULL, name, sizeof name);
    cr_assert_str_eq(name, "echo");
    mp_client_call_name("math.add", &args, NULL, name, sizeof name);
    cr_assert_str_eq(name, "math_add", "names cannot hold '.'");
    mp_client_call_name("", &args, NULL, name, sizeof name);
    cr_assert_str_eq(name, "call");
    mpreg_value_free(&args);
    args = json("[\"echo\", [\"echo_1.x\"]]");
    mpreg_value kwargs = json("{\"echo\": \"echo_2\"}"); /* keys never refer */
    mp_client_call_name("echo", &args, &kwargs, name, sizeof name);
    cr_assert_str_eq(name, "echo_3");
    mpreg_value_free(&args);
    mpreg_value_free(&kwargs);
    args = json("[\"echoes\", \"echo.\"]");
    mp_client_call_name("echo", &args, NULL, name, sizeof name);
    cr_assert_str_eq(name, "echo_1"); /* "echo." is a (bad) reference to echo */
    mpreg_value_free(&args);
    char longfun[300];
    memset(longfun, 'f', sizeof longfun - 1);
    longfun[sizeof longfun - 1] = '\0';
    mp_client_call_name(longfun, NULL, NULL, name, sizeof name);
    cr_assert_lt(strlen(name), sizeof name);
}

Test(client_rpc, call_payload_is_a_valid_request) {
    mpreg_value args = json("[\"call\", 2]");
    mpreg_value kwargs = json("{\"x\": [true]}");
    /* "call" is plain text here: no command of that name */
    const char *locs[] = {"gpu", "eu"};
    mpreg_call_options o = {.locs = locs,
                            .locs_count = 2,
                            .function_id = "fid",
                            .version = ">=1.0,<2.0",
                            .target_cluster = "west"};
    char name[32];
    mpreg_bytes b = {0};
    mpreg_error err = {0};
    cr_assert_eq(
        mp_client_call_payload("render", &args, &kwargs, &o, 1500, name, sizeof name, &b, &err),
        MPREG_OK, "%s", err.message);
    mp_rpc_request req;
    mp_rpc_error re = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_request_parse(b.data, b.len, &req, &re), MPREG_OK);
    cr_assert_eq(req.count, 1);
    cr_assert_eq(req.timeout_ms, 1500);
    mp_rpc_command *c = &req.commands[0];
    cr_assert_str_eq(c->name, name);
    cr_assert_str_eq(c->name, "render");
    cr_assert_str_eq(c->fun, "render");
    cr_assert(mpreg_value_equal(&c->args, &args));
    cr_assert(mpreg_value_equal(&c->kwargs, &kwargs));
    cr_assert_eq(c->locs.count, 2);
    cr_assert_str_eq(c->locs.items[1], "eu");
    cr_assert_str_eq(c->function_id, "fid");
    cr_assert_str_eq(c->version, ">=1.0,<2.0");
    cr_assert_str_eq(c->target_cluster, "west");
    mp_rpc_request_free(&req);
    mpreg_bytes_free(&b);

    /* No args at all is fine; bad types are caught before sending. */
    cr_assert_eq(mp_client_call_payload("echo", NULL, NULL, NULL, 0, name, sizeof name, &b, &err),
                 MPREG_OK);
    mpreg_bytes_free(&b);
    cr_assert_eq(
        mp_client_call_payload("echo", &kwargs, NULL, NULL, 0, name, sizeof name, &b, &err),
        MPREG_E_TYPE);
    cr_assert_eq(mp_client_call_payload("echo", NULL, &args, NULL, 0, name, sizeof name, &b, &err),
                 MPREG_E_TYPE);
    cr_assert_eq(mp_client_call_payload("", NULL, NULL, NULL, 0, name, sizeof name, &b, &err),
                 MPREG_E_INVALID);
    o.version = "not a version";
    cr_assert_eq(mp_client_call_payload("echo", NULL, NULL, &o, 0, name, sizeof name, &b, &err),
                 MPREG_E_BAD_SEMVER);
    cr_assert_str_eq(err.command, "", "the command name is ours, not the caller's");
    cr_assert_eq(b.len, 0);
    mpreg_value_free(&args);
    mpreg_value_free(&kwargs);
    mpreg_error_free(&err);
}

Test(client_rpc, request_payload_validates) {
    mpreg_bytes b = {0};
    mpreg_error err = {0};
    mpreg_value cmds = json("[{\"name\":\"a\",\"fun\":\"echo\",\"args\":[1]},"
                            "{\"name\":\"b\",\"fun\":\"echo\",\"args\":[\"a\"]}]");
    cr_assert_eq(mp_client_request_payload(&cmds, 0, &b, &err), MPREG_OK);
    mp_rpc_request req;
    cr_assert_eq(mp_rpc_request_parse(b.data, b.len, &req, NULL), MPREG_OK);
    cr_assert_eq(req.count, 2);
    cr_assert_eq(req.timeout_ms, 0);
    mp_rpc_request_free(&req);
    mpreg_bytes_free(&b);
    mpreg_value_free(&cmds);

    cmds = json("[{\"name\":\"a\",\"fun\":\"echo\"},{\"name\":\"a\",\"fun\":\"echo\"}]");
    cr_assert_eq(mp_client_request_payload(&cmds, 0, &b, &err), MPREG_E_DUPLICATE);
    cr_assert_str_eq(err.command, "a");
    mpreg_value_free(&cmds);
    cmds = json("[{\"fun\":\"echo\"}]");
    cr_assert_eq(mp_client_request_payload(&cmds, 0, &b, &err), MPREG_E_MISSING_FIELD);
    mpreg_value_free(&cmds);
    cmds = json("{\"name\":\"a\"}");
    cr_assert_eq(mp_client_request_payload(&cmds, 0, &b, &err), MPREG_E_TYPE);
    mpreg_value_free(&cmds);
    cmds = json("[]");
    cr_assert_eq(mp_client_request_payload(&cmds, 0, &b, &err), MPREG_E_INVALID);
    mpreg_value_free(&cmds);
    cr_assert_eq(mp_client_request_payload(NULL, 0, &b, &err), MPREG_E_INVALID);
    cr_assert_eq(b.len, 0);
    mpreg_error_free(&err);
}

Test(client_rpc, reading_replies, .init = setup) {
    mpreg_bytes store = {0};
    mp_id req = mp_id_new(&rng.rng);
    mpreg_value results = json("{\"second\": \"hi there!\", \"third\": [1, 2]}");
    cr_assert_eq(mp_rpc_reply_encode_ok(&results, &store), MPREG_OK);
    mp_envelope e = envelope_with(MP_KIND_RPC_REPLY, &req, NULL, &store);
    e.payload = (mp_bytes){store.data, store.len};
    mpreg_value out;
    mpreg_error err = {0};
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_OK);
    cr_assert(mpreg_value_equal(&out, &results));
    mpreg_value one;
    cr_assert_eq(mp_client_call_result(&out, "third", &one, &err), MPREG_OK);
    assert_json_eq(&one, "[1, 2]");
    cr_assert_eq(out.type, MPREG_NIL, "the results map is consumed");
    mpreg_value_free(&one);
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_OK);
    cr_assert_eq(mp_client_call_result(&out, "missing", &one, &err), MPREG_E_DECODE);
    cr_assert_eq(one.type, MPREG_NIL);
    mpreg_bytes_free(&store);
    mpreg_value_free(&results);

    /* An RPC_REPLY carrying an error, with command and details. */
    mp_rpc_error re = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&re, MPREG_E_CYCLE, "a", "cycle: a -> b -> a");
    re.details = json("{\"cycle\": [\"a\", \"b\", \"a\"]}");
    cr_assert_eq(mp_rpc_reply_encode_error(&re, &store), MPREG_OK);
    mp_rpc_error_free(&re);
    e.payload = (mp_bytes){store.data, store.len};
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_E_CYCLE);
    cr_assert_eq(err.code, MPREG_E_CYCLE);
    cr_assert_str_eq(err.message, "cycle: a -> b -> a");
    cr_assert_str_eq(err.command, "a");
    assert_json_eq(&err.details, "{\"cycle\": [\"a\", \"b\", \"a\"]}");
    mpreg_bytes_free(&store);

    /* An ERROR envelope, an OK with and without payload, garbage. */
    e = envelope_with(MP_KIND_ERROR, &req,
                      "{\"code\":300,\"name\":\"not_found\",\"message\":\"no such function\"}",
                      &store);
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_E_NOT_FOUND);
    cr_assert_str_eq(err.command, "");
    cr_assert_eq(err.details.type, MPREG_NIL);
    mpreg_bytes_free(&store);
    e = envelope_with(MP_KIND_OK, &req, "{\"subscription\": 3}", &store);
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_OK);
    assert_json_eq(&out, "{\"subscription\": 3}");
    mpreg_value_free(&out);
    mpreg_bytes_free(&store);
    e = envelope_with(MP_KIND_OK, &req, NULL, &store);
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_OK);
    cr_assert_eq(out.type, MPREG_NIL);
    e = envelope_with(MP_KIND_ERROR, &req, "[1]", &store);
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_E_DECODE);
    mpreg_bytes_free(&store);
    e = envelope_with(MP_KIND_DELIVER, &req, NULL, &store);
    cr_assert_eq(mp_client_reply_read(&e, &out, &err), MPREG_E_KIND);
    mpreg_error_free(&err);
}

/* ---- worker functions ------------------------------------------------------------------------ */

static int calls;

static mpreg_err add_handler(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                             mpreg_value *result, mpreg_error *err) {
    (void)kwargs;
    (void)err;
    calls++;
    int64_t sum = ctx ? *(int64_t *)ctx : 0;
    for (size_t i = 0; i < args->u.arr.len; i++) {
        sum += args->u.arr.items[i].u.i;
    }
    *result = mpreg_int(sum);
    return MPREG_OK;
}

static mpreg_err fail_handler(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                              mpreg_value *result, mpreg_error *err) {
    (void)ctx;
    (void)args;
    (void)kwargs;
    *result = mpreg_str("leaked?"); /* must be freed by the client */
    snprintf(err->message, sizeof err->message, "boom");
    err->details = mpreg_int(7);
    return MPREG_E_HANDLER;
}

static mpreg_err bad_result_handler(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                                    mpreg_value *result, mpreg_error *err) {
    (void)ctx;
    (void)args;
    (void)kwargs;
    (void)err;
    *result = mpreg_strn("\xff\xfe", 2); /* not UTF-8: cannot go on the wire */
    return MPREG_OK;
}

/* Serves an invoke of fun(args) with version constraint ver; returns the
 * outcome. */
static mp_rpc_outcome serve(mp_client_functions *fs, const char *fun, const char *fid,
                            const char *ver, const char *args_json, uint64_t deadline) {
    mp_rpc_invoke inv = {0};
    inv.command = "cmd";
    inv.fun = (char *)fun;
    inv.function_id = (char *)fid;
    inv.version = (char *)ver;
    inv.args = json(args_json);
    inv.kwargs = mpreg_map();
    mpreg_bytes p = {0};
    cr_assert_eq(mp_rpc_invoke_encode(&inv, &p), MPREG_OK);
    mpreg_value_free(&inv.args);
    mpreg_value_free(&inv.kwargs);
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_RPC_INVOKE);
    e.id = mp_id_new(&rng.rng);
    e.deadline_ms = deadline;
    e.payload = (mp_bytes){p.data, p.len};
    mpreg_bytes out = {0};
    cr_assert_eq(mp_client_functions_serve(fs, &e, &out), MPREG_OK);
    mp_rpc_outcome o = {0};
    cr_assert_eq(mp_rpc_result_decode(out.data, out.len, &o, NULL), MPREG_OK);
    mpreg_bytes_free(&p);
    mpreg_bytes_free(&out);
    return o;
}

Test(client_worker, table_and_serving, .init = setup) {
    mp_client_functions fs = {0};
    mpreg_error err = {0};
    int64_t base1 = 100, base2 = 200;
    const char *res[] = {"gpu"};
    mpreg_worker_function v1 = {.name = "add",
                                .version = "1.0.0",
                                .handler = add_handler,
                                .ctx = &base1,
                                .resources = res,
                                .resource_count = 1};
    mpreg_worker_function v2 = {
        .name = "add", .version = "2.1.0", .handler = add_handler, .ctx = &base2};
    mpreg_worker_function f = {.name = "fail", .function_id = "x", .handler = fail_handler};
    mpreg_worker_function bad = {.name = "bad", .handler = bad_result_handler};
    cr_assert_eq(mp_client_functions_add(&fs, &v1, &err), MPREG_OK);
    cr_assert_eq(mp_client_functions_add(&fs, &v2, &err), MPREG_OK);
    cr_assert_eq(mp_client_functions_add(&fs, &f, &err), MPREG_OK);
    cr_assert_eq(mp_client_functions_add(&fs, &bad, &err), MPREG_OK);
    cr_assert_eq(mp_client_functions_add(&fs, &v1, &err), MPREG_E_DUPLICATE);
    mpreg_worker_function broken = {.name = "x", .version = "one", .handler = add_handler};
    cr_assert_eq(mp_client_functions_add(&fs, &broken, &err), MPREG_E_BAD_SEMVER);
    broken = (mpreg_worker_function){.name = "x"};
    cr_assert_eq(mp_client_functions_add(&fs, &broken, &err), MPREG_E_INVALID);
    cr_assert_eq(fs.len, 4);

    /* The highest version that satisfies the constraint serves. */
    mp_rpc_outcome o = serve(&fs, "add", NULL, NULL, "[1, 2]", 0);
    cr_assert(o.ok);
    cr_assert_eq(o.value.u.i, 203);
    mp_rpc_outcome_free(&o);
    o = serve(&fs, "add", NULL, "<2", "[1]", 0);
    cr_assert(o.ok);
    cr_assert_eq(o.value.u.i, 101);
    mp_rpc_outcome_free(&o);
    o = serve(&fs, "add", NULL, ">=3", "[1]", 0);
    cr_assert(!o.ok);
    cr_assert_eq(o.error.code, MPREG_E_NO_VERSION);
    mp_rpc_outcome_free(&o);
    o = serve(&fs, "nope", NULL, NULL, "[]", 0);
    cr_assert_eq(o.error.code, MPREG_E_NOT_FOUND);
    cr_assert_str_eq(o.error.command, "cmd");
    mp_rpc_outcome_free(&o);
    /* function_id must match when the invoke names one. */
    o = serve(&fs, "fail", "y", NULL, "[]", 0);
    cr_assert_eq(o.error.code, MPREG_E_NOT_FOUND);
    mp_rpc_outcome_free(&o);
    o = serve(&fs, "fail", "x", NULL, "[]", 0);
    cr_assert_eq(o.error.code, MPREG_E_HANDLER);
    cr_assert_str_eq(o.error.message, "boom");
    cr_assert_eq(o.error.details.u.i, 7);
    mp_rpc_outcome_free(&o);
    o = serve(&fs, "bad", NULL, NULL, "[]", 0);
    cr_assert(!o.ok);
    cr_assert_eq(o.error.code, MPREG_E_INVALID);
    mp_rpc_outcome_free(&o);
    /* A passed deadline: the handler does not run. */
    calls = 0;
    o = serve(&fs, "add", NULL, NULL, "[]", 1000);
    cr_assert_eq(o.error.code, MPREG_E_DEADLINE);
    cr_assert_eq(calls, 0);
    mp_rpc_outcome_free(&o);

    /* A malformed invoke still gets an answer. */
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_RPC_INVOKE);
    e.id = mp_id_new(&rng.rng);
    e.payload = (mp_bytes){(const uint8_t *)"\x91\x01", 2};
    mpreg_bytes out = {0};
    cr_assert_eq(mp_client_functions_serve(&fs, &e, &out), MPREG_OK);
    cr_assert_eq(mp_rpc_result_decode(out.data, out.len, &o, NULL), MPREG_OK);
    cr_assert(!o.ok);
    mp_rpc_outcome_free(&o);
    mpreg_bytes_free(&out);

    mp_client_functions_remove(&fs, &v2);
    cr_assert_eq(fs.len, 3);
    o = serve(&fs, "add", NULL, NULL, "[5]", 0);
    cr_assert_eq(o.value.u.i, 105);
    mp_rpc_outcome_free(&o);
    mp_client_functions_free(&fs);
    mpreg_error_free(&err);
}

Test(client_worker, register_payload) {
    const char *res[] = {"gpu", "eu"};
    mpreg_worker_function def = {.name = "render",
                                 .function_id = "r1",
                                 .version = "1.2.3",
                                 .resources = res,
                                 .resource_count = 2,
                                 .handler = add_handler};
    mpreg_bytes b = {0};
    cr_assert_eq(mp_client_register_payload(&def, &b), MPREG_OK);
    mpreg_value v;
    cr_assert_eq(mpreg_value_decode(b.data, b.len, NULL, &v), MPREG_OK);
    assert_json_eq(&v, "{\"functions\": [{\"name\": \"render\", \"function_id\": \"r1\", "
                       "\"version\": \"1.2.3\", \"resources\": [\"gpu\", \"eu\"]}]}");
    mpreg_value_free(&v);
    mpreg_bytes_free(&b);
    mpreg_worker_function plain = {.name = "f", .handler = add_handler};
    cr_assert_eq(mp_client_register_payload(&plain, &b), MPREG_OK);
    cr_assert_eq(mpreg_value_decode(b.data, b.len, NULL, &v), MPREG_OK);
    assert_json_eq(&v, "{\"functions\": [{\"name\": \"f\", \"version\": \"0.0.0\"}]}");
    mpreg_value_free(&v);
    mpreg_bytes_free(&b);
}

/* ---- pub/sub --------------------------------------------------------------------------------- */

Test(client_pubsub, subscribe_payload) {
    const char *pats[] = {"a.*", "b.#"};
    mpreg_subscribe_options o = {.group = "g", .replay_last = 5, .replay_since_ms = 99};
    mp_buf b = MP_BUF_INIT;
    mpreg_error err = {0};
    cr_assert_eq(mp_client_subscribe_payload(pats, 2, &o, &b, &err), MPREG_OK);
    mp_pubsub_subscribe_payload p;
    cr_assert_eq(mp_pubsub_subscribe_decode(b.data, b.len, &p, NULL), MPREG_OK);
    cr_assert_eq(p.pattern_count, 2);
    cr_assert(mp_str_eq_c(p.patterns[1], "b.#"));
    cr_assert(mp_str_eq_c(p.group, "g"));
    cr_assert(p.replay.has_last && p.replay.last == 5);
    cr_assert(p.replay.has_since && p.replay.since_ms == 99);
    mp_pubsub_subscribe_payload_free(&p);
    mp_buf_free(&b);

    cr_assert_eq(mp_client_subscribe_payload(pats, 1, NULL, &b, &err), MPREG_OK);
    cr_assert_eq(mp_pubsub_subscribe_decode(b.data, b.len, &p, NULL), MPREG_OK);
    cr_assert(!p.replay.has_last && !p.replay.has_since && p.group.len == 0);
    mp_pubsub_subscribe_payload_free(&p);
    mp_buf_free(&b);

    /* Since 0 is the start of retention, not "no replay". */
    mpreg_subscribe_options from_start = {.has_replay_since = true, .replay_since_ms = 0};
    cr_assert_eq(mp_client_subscribe_payload(pats, 1, &from_start, &b, &err), MPREG_OK);
    cr_assert_eq(mp_pubsub_subscribe_decode(b.data, b.len, &p, NULL), MPREG_OK);
    cr_assert(p.replay.has_since && p.replay.since_ms == 0 && !p.replay.has_last);
    mp_pubsub_subscribe_payload_free(&p);
    mp_buf_free(&b);

    const char *bad[] = {"a.b*"};
    cr_assert_eq(mp_client_subscribe_payload(bad, 1, NULL, &b, &err), MPREG_E_TOPIC);
    cr_assert(strstr(err.message, "a.b*") != NULL);
    cr_assert_eq(mp_client_subscribe_payload(pats, 0, NULL, &b, &err), MPREG_E_INVALID);
    cr_assert_eq(mp_client_check_topic("a.b", &err), MPREG_OK);
    cr_assert_eq(mp_client_check_topic("a.*", &err), MPREG_E_TOPIC);
    cr_assert_eq(mp_client_check_topic("", &err), MPREG_E_TOPIC);
    cr_assert_eq(b.len, 0);
    mpreg_error_free(&err);
}

Test(client_pubsub, delivery_to_message, .init = setup) {
    mp_pubsub_message m = {.id = mp_id_new(&rng.rng),
                           .topic = mp_str_c("orders.eu"),
                           .payload = {(const uint8_t *)"\x00\xff", 2}};
    mp_pubsub_delivery d = {.sub = 12, .tag = mp_str_c("t"), .msg = &m, .replay = true};
    char sub_text[MP_PUBSUB_SUB_TEXT], missed_text[MP_PUBSUB_SUB_TEXT];
    mp_envelope e;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &e), MPREG_OK);
    char topic[MP_MAX_TOPIC_LEN + 1];
    mpreg_message msg;
    cr_assert_eq(mp_client_message_read(&e, topic, &msg), MPREG_OK);
    cr_assert_str_eq(msg.topic, "orders.eu");
    cr_assert_eq(msg.topic_len, 9);
    cr_assert_eq(msg.len, 2);
    cr_assert_eq(msg.subscription, 12);
    cr_assert(msg.replay);
    char hex[33];
    mp_id_to_hex(&m.id, hex);
    cr_assert_str_eq(msg.id, hex);
    mpreg_value v;
    cr_assert_eq(mp_client_message_value(&msg, &v), MPREG_OK);
    assert_json_eq(&v, "{\"topic\": \"orders.eu\", \"data\": {\"$bin\": \"AP8=\"}, "
                       "\"subscription\": 12, \"replay\": true}");
    mpreg_value_free(&v);

    d.replay = false;
    m.payload = (mp_bytes){(const uint8_t *)"h\xc3\xa9", 3};
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &e), MPREG_OK);
    cr_assert_eq(mp_client_message_read(&e, topic, &msg), MPREG_OK);
    cr_assert(!msg.replay);
    cr_assert_eq(mp_client_message_value(&msg, &v), MPREG_OK);
    assert_json_eq(&v, "{\"topic\": \"orders.eu\", \"data\": \"h\\u00e9\", \"subscription\": 12}");
    mpreg_value_free(&v);
    cr_assert_eq(msg.missed, 0);

    /* The node dropped 42 messages of this subscription before this one. */
    d.missed = 42;
    cr_assert_eq(mp_pubsub_deliver_envelope(&d, sub_text, missed_text, &e), MPREG_OK);
    cr_assert_eq(mp_client_message_read(&e, topic, &msg), MPREG_OK);
    cr_assert_eq(msg.missed, 42);
    cr_assert_eq(mp_client_message_value(&msg, &v), MPREG_OK);
    assert_json_eq(&v, "{\"topic\": \"orders.eu\", \"data\": \"h\\u00e9\", \"subscription\": 12, "
                       "\"missed\": 42}");
    mpreg_value_free(&v);
    d.missed = 0;

    /* Without a "sub" header it is no delivery of ours. */
    mp_envelope plain;
    mp_envelope_init(&plain, MP_KIND_DELIVER);
    plain.topic = mp_str_c("x");
    cr_assert_neq(mp_client_message_read(&plain, topic, &msg), MPREG_OK);
}

Test(client_pubsub, subscription_table) {
    mp_client_subs s = {0};
    int a, b;
    for (uint64_t i = 1; i <= 10; i++) {
        cr_assert_eq(mp_client_subs_add(&s, i, NULL, i % 2 ? (void *)&a : (void *)&b), MPREG_OK);
    }
    cr_assert_eq(mp_client_subs_find(&s, 3)->ud, &a);
    cr_assert(mp_client_subs_remove(&s, 3));
    cr_assert(!mp_client_subs_remove(&s, 3));
    cr_assert_null(mp_client_subs_find(&s, 3));
    cr_assert_eq(mp_client_subs_find(&s, 10)->ud, &b);
    cr_assert_eq(s.len, 9);
    mp_client_subs_free(&s);
}

/* ---- errors -------------------------------------------------------------------------------- */

Test(client_error, set_copy_free) {
    mpreg_error a = {0}, b = {0};
    cr_assert_eq(mp_client_error_set(&a, MPREG_E_TIMEOUT, "waited %d ms", 5), MPREG_E_TIMEOUT);
    cr_assert_str_eq(a.message, "waited 5 ms");
    a.details = json("{\"k\": [1]}");
    snprintf(a.command, sizeof a.command, "cmd");
    mp_client_error_copy(&b, &a);
    cr_assert_eq(b.code, MPREG_E_TIMEOUT);
    cr_assert_str_eq(b.command, "cmd");
    cr_assert(mpreg_value_equal(&a.details, &b.details));
    /* Setting over an error frees what it held. */
    mp_client_error_set(&a, MPREG_E_IO, "x");
    cr_assert_eq(a.details.type, MPREG_NIL);
    cr_assert_str_eq(a.command, "");
    cr_assert_eq(mp_client_error_set(NULL, MPREG_E_IO, "x"), MPREG_E_IO);
    mpreg_error_free(&a);
    mpreg_error_free(&b);
    mpreg_error_free(NULL);
    cr_assert_eq(b.code, MPREG_OK);
    /* A long message is cut, not overflowed. */
    char longmsg[2000];
    memset(longmsg, 'x', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    mp_client_error_set(&a, MPREG_E_IO, "%s", longmsg);
    cr_assert_eq(strlen(a.message), sizeof a.message - 1);
    mpreg_error_free(&a);
}

/* ---- CLI helpers ------------------------------------------------------------------------------
 */

static void arg_is(const char *arg, const char *want_json) {
    mpreg_value v;
    char why[256];
    cr_assert_eq(mp_client_arg_value(arg, &v, why, sizeof why), MPREG_OK, "%s: %s", arg, why);
    assert_json_eq(&v, want_json);
    mpreg_value_free(&v);
}

static void arg_refused(const char *arg, mpreg_err code, const char *because) {
    mpreg_value v;
    char why[256] = "";
    cr_assert_eq(mp_client_arg_value(arg, &v, why, sizeof why), code, "%s", arg);
    cr_assert_eq(v.type, MPREG_NIL);
    cr_assert(strstr(why, because) != NULL, "%s: %s", arg, why);
}

/* JSON is kept exact or refused; it used to fall back to a string (a
 * duplicate key, 1e400) or to a float (an integer beyond int64). */
Test(client_cli, arguments_are_exact_or_refused) {
    arg_refused("{\"a\":1,\"a\":2}", MPREG_E_JSON, "duplicate");
    arg_refused("[{\"x\": {\"a\":1,\"a\":2}}]", MPREG_E_JSON, "duplicate");
    arg_refused("1e400", MPREG_E_RANGE, "out of range");
    arg_refused("-1e400", MPREG_E_RANGE, "out of range");
    arg_refused("9223372036854775808", MPREG_E_RANGE, "int64");
    arg_refused("18446744073709551615", MPREG_E_RANGE, "int64");
    arg_refused("-9223372036854775809", MPREG_E_RANGE, "int64");
    arg_refused("[1, 99999999999999999999]", MPREG_E_RANGE, "int64");
    char deep[80] = "";
    for (int i = 0; i < 33; i++) {
        strcat(deep, "[");
    }
    for (int i = 0; i < 33; i++) {
        strcat(deep, "]");
    }
    arg_refused(deep, MPREG_E_TOO_DEEP, "32");
    /* The edges that fit stay what they are. */
    arg_is("9223372036854775807", "9223372036854775807");
    arg_is("-9223372036854775808", "-9223372036854775808");
    arg_is("1e308", "1e308");
    arg_is("\"1e400\"", "\"1e400\"");
    /* Not JSON at all: text. */
    arg_is("{\"a\":1,}", "\"{\\\"a\\\":1,}\"");
    char why[256];
    mpreg_value kw = mpreg_map();
    cr_assert_eq(mp_client_kw_arg("n=1e400", &kw, why, sizeof why), MPREG_E_RANGE);
    cr_assert(strstr(why, "keyword 'n': number out of range") != NULL, "%s", why);
    mpreg_value_free(&kw);
}

Test(client_cli, argument_values) {
    arg_is("hi", "\"hi\"");
    arg_is("hi there!", "\"hi there!\"");
    arg_is("3", "3");
    arg_is("-1.5", "-1.5");
    arg_is("true", "true");
    arg_is("null", "null");
    arg_is("[1, \"a\"]", "[1, \"a\"]");
    arg_is("{\"a\": {\"b\": 1}}", "{\"a\": {\"b\": 1}}");
    arg_is("\"quoted\"", "\"quoted\"");
    arg_is("{", "\"{\"");
    arg_is("007", "\"007\"");
    arg_is("", "\"\"");
    arg_is("first.x", "\"first.x\"");
}

Test(client_cli, keyword_arguments) {
    mpreg_value kw = mpreg_map();
    char why[128];
    cr_assert_eq(mp_client_kw_arg("n=3", &kw, why, sizeof why), MPREG_OK);
    cr_assert_eq(mp_client_kw_arg("s=hello", &kw, why, sizeof why), MPREG_OK);
    cr_assert_eq(mp_client_kw_arg("eq=a=b", &kw, why, sizeof why), MPREG_OK);
    cr_assert_eq(mp_client_kw_arg("l=[1]", &kw, why, sizeof why), MPREG_OK);
    cr_assert_eq(mp_client_kw_arg("n=4", &kw, why, sizeof why), MPREG_OK); /* last wins */
    assert_json_eq(&kw, "{\"n\": 4, \"s\": \"hello\", \"eq\": \"a=b\", \"l\": [1]}");
    cr_assert_eq(mp_client_kw_arg("novalue", &kw, why, sizeof why), MPREG_E_INVALID);
    cr_assert(strstr(why, "KEY=VALUE") != NULL);
    cr_assert_eq(mp_client_kw_arg("=3", &kw, why, sizeof why), MPREG_E_INVALID);
    mpreg_value_free(&kw);
}

Test(client_cli, split_list) {
    mpreg_value v;
    cr_assert_eq(mp_client_split_list("gpu,eu,,x", &v), MPREG_OK);
    assert_json_eq(&v, "[\"gpu\", \"eu\", \"x\"]");
    mpreg_value_free(&v);
    cr_assert_eq(mp_client_split_list("", &v), MPREG_OK);
    assert_json_eq(&v, "[]");
    mpreg_value_free(&v);
}
