/* test_node.c - the node state machine, end to end, with a fake driver.
 *
 * The fake driver records the frames the node appends per connection, lets
 * a test toggle each connection's high-water flag, records closes, reading
 * and drops, and owns a manual clock. A small fake client builds envelopes
 * (mostly from JSON, for brevity) and feeds them with mp_node_on_frame, then
 * reads back what the node answered. Everything is seeded: same run, same
 * frames. */
#include "node/node.h"

#include "core/envelope.h"
#include "core/frame.h"
#include "core/rng.h"
#include "fabric/catalog.h"
#include "mpreg/plugin.h"
#include "services/pubsub.h"
#include "services/rpc_plan.h"

#include "support/value_json.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the fake driver ------------------------------------------------------- */

#define MAXC 32
#define T0 1700000000000ull

typedef struct fconn {
    mp_buf out;  /* every frame the node appended */
    size_t read; /* how far the test has read */
    uint32_t commits;
    bool gone;      /* after on_close: output() is NULL */
    bool high;      /* over_high_water answer */
    bool soft;      /* over_soft_water answer */
    size_t pending; /* output_pending answer */
    bool reading;   /* last set_reading */
    int reading_calls;
    bool closed;
    bool flush;
    mpreg_err reason;
    uint64_t drops;
} fconn;

typedef struct fake {
    fconn c[MAXC + 1];
    uint64_t now;
    uint64_t next_id;
    mp_xoshiro rng;
    mp_xoshiro client_rng;
    mp_node *node;
    int logs;
    char last_log[256];
    int warns;
    char last_warn[512];
} fake;

static fake F;

static mp_buf *f_output(void *ud, uint64_t conn) {
    fake *f = ud;
    cr_assert(conn >= 1 && conn <= MAXC);
    return f->c[conn].gone ? NULL : &f->c[conn].out;
}
static void f_commit(void *ud, uint64_t conn, uint32_t frames) {
    fake *f = ud;
    f->c[conn].commits += frames;
}
static bool f_high(void *ud, uint64_t conn) {
    fake *f = ud;
    return f->c[conn].high;
}
static bool f_soft(void *ud, uint64_t conn) {
    fake *f = ud;
    return f->c[conn].soft;
}
static size_t f_pending(void *ud, uint64_t conn) {
    fake *f = ud;
    return f->c[conn].pending;
}
static void f_set_reading(void *ud, uint64_t conn, bool reading) {
    fake *f = ud;
    f->c[conn].reading = reading;
    f->c[conn].reading_calls++;
}
static void f_close(void *ud, uint64_t conn, bool flush_first, mpreg_err reason) {
    fake *f = ud;
    f->c[conn].closed = true;
    f->c[conn].flush = flush_first;
    f->c[conn].reason = reason;
}
static void f_count_drop(void *ud, uint64_t conn, uint32_t frames) {
    fake *f = ud;
    f->c[conn].drops += frames;
}
static void f_log(void *ud, mp_log_level level, const char *message) {
    fake *f = ud;
    f->logs++;
    snprintf(f->last_log, sizeof f->last_log, "%s", message);
    if (level == MP_LOG_WARN) {
        f->warns++;
        snprintf(f->last_warn, sizeof f->last_warn, "%s", message);
    }
}

static const mp_node_io IO = {
    .ud = &F,
    .output = f_output,
    .output_commit = f_commit,
    .over_high_water = f_high,
    .set_reading = f_set_reading,
    .over_soft_water = f_soft,
    .output_pending = f_pending,
    .close = f_close,
    .count_drop = f_count_drop,
    .log = f_log,
};

static void start_node(const mp_node_config *cfg) {
    memset(&F, 0, sizeof F);
    F.now = T0;
    F.next_id = 1;
    mp_xoshiro_seed(&F.rng, 42);
    mp_xoshiro_seed(&F.client_rng, 7);
    F.node = mp_node_new(cfg, &IO, &F.rng.rng, F.now);
    cr_assert_not_null(F.node);
}

static void default_node(void) {
    mp_node_config cfg = {.node_id = "n1",
                          .name = "alpha",
                          .cluster = "c1",
                          .incarnation = 1,
                          .log_level = MP_LOG_DEBUG};
    start_node(&cfg);
}

static void teardown(void) {
    mp_node_free(F.node);
    F.node = NULL;
    for (int i = 0; i <= MAXC; i++) {
        mp_buf_free(&F.c[i].out);
    }
}

TestSuite(node, .init = default_node, .fini = teardown);

static void advance(uint64_t ms) {
    F.now += ms;
    mp_node_tick(F.node, F.now);
}

/* --- values ----------------------------------------------------------------- */

static const mpreg_value *get(const mpreg_value *map, const char *key) {
    const mpreg_value *v = mpreg_map_get(map, key);
    cr_assert_not_null(v, "no key '%s'", key);
    return v;
}

static int64_t get_int(const mpreg_value *map, const char *key) {
    const mpreg_value *v = get(map, key);
    cr_assert_eq(v->type, MPREG_INT, "'%s' is not an int", key);
    return v->u.i;
}

static const char *get_str(const mpreg_value *map, const char *key) {
    const mpreg_value *v = get(map, key);
    cr_assert_eq(v->type, MPREG_STR, "'%s' is not a string", key);
    return v->u.str.ptr;
}

/* --- reading what the node sent ----------------------------------------------- */

typedef struct frame {
    uint8_t *body;
    size_t len;
    mp_envelope env;
    mpreg_value payload; /* NIL when empty */
} frame;

static void frame_free(frame *fr) {
    free(fr->body);
    mpreg_value_free(&fr->payload);
    memset(fr, 0, sizeof *fr);
}

static bool next_frame(uint64_t conn, frame *fr) {
    fconn *c = &F.c[conn];
    memset(fr, 0, sizeof *fr);
    if (c->read == c->out.len) {
        return false;
    }
    cr_assert_geq(c->out.len - c->read, 4);
    uint32_t len = mp_get_u32be(c->out.data + c->read);
    cr_assert_geq(c->out.len - c->read - 4, len);
    fr->body = malloc(len);
    memcpy(fr->body, c->out.data + c->read + 4, len);
    fr->len = len;
    c->read += 4 + len;
    const char *why = NULL;
    cr_assert_eq(mp_envelope_decode(fr->body, len, &fr->env, &why), MPREG_OK,
                 "the node sent an envelope that does not decode: %s", why);
    fr->payload = mpreg_nil();
    /* PONG and DELIVER carry opaque bytes; every other payload the node
     * writes is a value. */
    bool opaque = fr->env.kind == MP_KIND_PONG || fr->env.kind == MP_KIND_DELIVER;
    if (fr->env.payload.len && !opaque) {
        cr_assert_eq(
            mpreg_value_decode(fr->env.payload.ptr, fr->env.payload.len, NULL, &fr->payload),
            MPREG_OK, "a %s payload that is not a value", mp_kind_name(fr->env.kind));
    }
    return true;
}

static size_t pending(uint64_t conn) {
    size_t n = 0;
    for (size_t at = F.c[conn].read; at < F.c[conn].out.len;) {
        at += 4 + mp_get_u32be(F.c[conn].out.data + at);
        n++;
    }
    return n;
}

static void skip_all(uint64_t conn) {
    F.c[conn].read = F.c[conn].out.len;
}

/* The next frame must be of kind, answering id (zero id: any correlation). */
static frame expect(uint64_t conn, mp_kind kind, const mp_id *id) {
    frame fr;
    cr_assert(next_frame(conn, &fr), "conn %llu: expected %s, got nothing",
              (unsigned long long)conn, mp_kind_name(kind));
    if (fr.env.kind != kind) {
        char *p = mpreg_value_to_json(&fr.payload, false);
        cr_assert_fail("conn %llu: expected %s, got %s %s", (unsigned long long)conn,
                       mp_kind_name(kind), mp_kind_name(fr.env.kind), p);
    }
    if (id) {
        cr_assert(mp_id_equal(&fr.env.correlation_id, id), "wrong correlation");
    }
    return fr;
}

/* An ERROR answering id (NULL: without correlation) with code. */
static void expect_error(uint64_t conn, const mp_id *id, mpreg_err code) {
    frame fr = expect(conn, MP_KIND_ERROR, NULL);
    if (id) {
        cr_assert(mp_id_equal(&fr.env.correlation_id, id), "ERROR with the wrong correlation");
    } else {
        cr_assert(mp_id_is_zero(&fr.env.correlation_id));
    }
    cr_assert_eq(get_int(&fr.payload, "code"), code, "got error %lld (%s), want %d",
                 (long long)get_int(&fr.payload, "code"), get_str(&fr.payload, "message"), code);
    cr_assert_str_eq(get_str(&fr.payload, "name"), mpreg_err_name(code));
    frame_free(&fr);
}

static void expect_nothing(uint64_t conn) {
    frame fr;
    if (next_frame(conn, &fr)) {
        char *p = mpreg_value_to_json(&fr.payload, false);
        cr_assert_fail("conn %llu: expected nothing, got %s %s", (unsigned long long)conn,
                       mp_kind_name(fr.env.kind), p);
    }
}

/* --- the fake client -------------------------------------------------------------- */

static mp_id send_env(uint64_t conn, mp_envelope *e) {
    if (mp_id_is_zero(&e->id)) {
        e->id = mp_id_new(&F.client_rng.rng);
    }
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mp_envelope_encode(e, &b), MPREG_OK);
    mp_node_on_frame(F.node, conn, b.data, b.len, F.now);
    mp_buf_free(&b);
    return e->id;
}

static mp_id send_bytes(uint64_t conn, mp_kind kind, const char *topic, const void *payload,
                        size_t len) {
    mp_envelope e;
    mp_envelope_init(&e, kind);
    e.topic = topic ? mp_str_c(topic) : MP_STR_NULL;
    e.payload = (mp_bytes){payload, len};
    return send_env(conn, &e);
}

static mp_id send_value(uint64_t conn, mp_kind kind, const char *topic, const mpreg_value *v) {
    mp_buf b = MP_BUF_INIT;
    if (v) {
        cr_assert_eq(mpreg_value_encode(v, &b), MPREG_OK);
    }
    mp_id id = send_bytes(conn, kind, topic, b.data, b.len);
    mp_buf_free(&b);
    return id;
}

static mp_id send_json(uint64_t conn, mp_kind kind, const char *topic, const char *payload_json) {
    mpreg_value v = json(payload_json);
    mp_id id = send_value(conn, kind, topic, &v);
    mpreg_value_free(&v);
    return id;
}

static uint64_t open_conn(void) {
    uint64_t id = F.next_id++;
    cr_assert_leq(id, MAXC);
    mp_node_on_open(F.node, id, "127.0.0.1:5555", F.now);
    return id;
}

static uint64_t connect_as(const char *role) {
    uint64_t c = open_conn();
    char hello[128];
    /* A peer names itself (its member id); a client need not. */
    snprintf(hello, sizeof hello, "{\"role\": \"%s\", \"name\": \"test\", \"node\": \"p9\"}", role);
    mp_id id = send_json(c, MP_KIND_HELLO, NULL, hello);
    frame fr = expect(c, MP_KIND_WELCOME, &id);
    frame_free(&fr);
    return c;
}

static uint64_t client(void) {
    return connect_as("client");
}

static mp_id rpc(uint64_t conn, const char *commands_json) {
    mpreg_value payload = mpreg_map();
    mpreg_map_set(&payload, "commands", json(commands_json));
    mp_id id = send_value(conn, MP_KIND_RPC_REQUEST, NULL, &payload);
    mpreg_value_free(&payload);
    return id;
}

static mp_id rpc_timeout(uint64_t conn, const char *commands_json, int64_t timeout_ms) {
    mpreg_value payload = mpreg_map();
    mpreg_map_set(&payload, "commands", json(commands_json));
    mpreg_map_set(&payload, "timeout_ms", mpreg_int(timeout_ms));
    mp_id id = send_value(conn, MP_KIND_RPC_REQUEST, NULL, &payload);
    mpreg_value_free(&payload);
    return id;
}

static void expect_results(uint64_t conn, const mp_id *id, const char *want_json) {
    frame fr = expect(conn, MP_KIND_RPC_REPLY, id);
    const mpreg_value *results = mpreg_map_get(&fr.payload, "results");
    if (!results) {
        char *p = mpreg_value_to_json(&fr.payload, false);
        cr_assert_fail("expected results, got %s", p);
    }
    assert_json_eq(results, want_json);
    frame_free(&fr);
}

/* The RPC_REPLY error; returns it (free with mp_rpc_error_free). */
static mp_rpc_error expect_rpc_error(uint64_t conn, const mp_id *id, mpreg_err code) {
    frame fr = expect(conn, MP_KIND_RPC_REPLY, id);
    const mpreg_value *err = mpreg_map_get(&fr.payload, "error");
    if (!err) {
        char *p = mpreg_value_to_json(&fr.payload, false);
        cr_assert_fail("expected an error, got %s", p);
    }
    mp_rpc_error e;
    cr_assert_eq(mp_rpc_error_from_value(err, &e), MPREG_OK);
    cr_assert_eq(e.code, code, "got %d (%s), want %d", e.code, mp_rpc_error_message(&e), code);
    frame_free(&fr);
    return e;
}

static void expect_rpc_error_free(uint64_t conn, const mp_id *id, mpreg_err code) {
    mp_rpc_error e = expect_rpc_error(conn, id, code);
    mp_rpc_error_free(&e);
}

static void close_conn(uint64_t conn) {
    F.c[conn].gone = true;
    mp_node_on_close(F.node, conn, MPREG_E_CLOSED, F.now);
}

/* A worker: registers functions, then answers invokes by hand. */
static uint64_t worker(const char *functions_json) {
    uint64_t w = client();
    char payload[1024];
    snprintf(payload, sizeof payload, "{\"functions\": %s}", functions_json);
    mp_id id = send_json(w, MP_KIND_REGISTER, NULL, payload);
    frame fr = expect(w, MP_KIND_OK, &id);
    frame_free(&fr);
    return w;
}

static mp_id answer(uint64_t w, const frame *invoke, const char *outcome_json) {
    mp_envelope e;
    mpreg_value v = json(outcome_json);
    mp_buf b = MP_BUF_INIT;
    cr_assert_eq(mpreg_value_encode(&v, &b), MPREG_OK);
    mp_envelope_init(&e, MP_KIND_RPC_RESULT);
    e.correlation_id = invoke->env.id;
    e.payload = (mp_bytes){b.data, b.len};
    mp_id id = send_env(w, &e);
    mp_buf_free(&b);
    mpreg_value_free(&v);
    return id;
}

static mpreg_value control(uint64_t conn, const char *op) {
    mp_id id = send_bytes(conn, MP_KIND_CONTROL, op, NULL, 0);
    frame fr = expect(conn, MP_KIND_CONTROL_REPLY, &id);
    cr_assert(mp_str_eq_c(fr.env.topic, op));
    mpreg_value v = fr.payload;
    fr.payload = mpreg_nil();
    frame_free(&fr);
    return v;
}

static size_t count_functions(const char *name) {
    size_t n = 0;
    mpreg_value cat = control(client(), "catalog");
    const mpreg_value *fns = get(&cat, "functions");
    for (size_t i = 0; i < fns->u.arr.len; i++) {
        n += strcmp(get_str(&fns->u.arr.items[i], "name"), name) == 0;
    }
    mpreg_value_free(&cat);
    return n;
}

static uint64_t subscribe(uint64_t conn, const char *payload_json) {
    mp_id id = send_json(conn, MP_KIND_SUBSCRIBE, NULL, payload_json);
    frame fr = expect(conn, MP_KIND_OK, &id);
    int64_t sub = get_int(&fr.payload, "subscription");
    frame_free(&fr);
    return (uint64_t)sub;
}

static mp_id publish(uint64_t conn, const char *topic, const char *payload) {
    return send_bytes(conn, MP_KIND_PUBLISH, topic, payload, strlen(payload));
}

static void expect_deliver(uint64_t conn, const char *topic, const char *payload, bool replay) {
    frame fr = expect(conn, MP_KIND_DELIVER, NULL);
    cr_assert(mp_str_eq_c(fr.env.topic, topic), "delivered %.*s, want %s", (int)fr.env.topic.len,
              fr.env.topic.ptr, topic);
    cr_assert_eq(fr.env.payload.len, strlen(payload));
    cr_assert(memcmp(fr.env.payload.ptr, payload, strlen(payload)) == 0);
    mp_str r = mp_envelope_header(&fr.env, "replay");
    cr_assert_eq(r.ptr != NULL, replay);
    uint64_t sub;
    mp_str tag;
    cr_assert_eq(mp_pubsub_deliver_parse(&fr.env, &sub, &tag), MPREG_OK);
    frame_free(&fr);
}

/* The next frame on conn is a live DELIVER of payload whose "missed" header
 * says missed (absent when 0). */
static void expect_deliver_missed(uint64_t conn, const char *payload, uint64_t missed) {
    frame fr = expect(conn, MP_KIND_DELIVER, NULL);
    cr_assert_eq(fr.env.payload.len, strlen(payload));
    cr_assert(memcmp(fr.env.payload.ptr, payload, strlen(payload)) == 0);
    mp_str h = mp_envelope_header(&fr.env, "missed");
    cr_assert_eq(h.ptr != NULL, missed != 0, "a \"missed\" header only after drops");
    uint64_t got = 0;
    cr_assert_eq(mp_pubsub_deliver_missed(&fr.env, &got), MPREG_OK);
    cr_assert_eq(got, missed, "missed %llu, want %llu", (unsigned long long)got,
                 (unsigned long long)missed);
    frame_free(&fr);
}

/* --- handshake ---------------------------------------------------------------------- */

Test(node, handshake_ok) {
    uint64_t c = open_conn();
    mp_id id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\", \"name\": \"cli\"}");
    frame fr = expect(c, MP_KIND_WELCOME, &id);
    cr_assert_str_eq(get_str(&fr.payload, "node"), "n1");
    cr_assert_str_eq(get_str(&fr.payload, "name"), "alpha");
    cr_assert_str_eq(get_str(&fr.payload, "cluster"), "c1");
    cr_assert_str_eq(get_str(&fr.payload, "server"), "mpreg/0.1.0");
    cr_assert_eq(get_int(&fr.payload, "max_frame"), MP_FRAME_DEFAULT_MAX);
    cr_assert(mp_str_eq_c(fr.env.source_node, "n1"));
    frame_free(&fr);
    cr_assert_not(F.c[c].closed);
    /* The handshake timer is gone with the HELLO. */
    advance(60000);
    cr_assert_not(F.c[c].closed);
    expect_nothing(c);
}

Test(node, handshake_protocol_example_bytes) {
    /* PROTOCOL.md §7.1: {"role": "client"}. */
    static const uint8_t hello[] = {0x81, 0xa4, 0x72, 0x6f, 0x6c, 0x65, 0xa6,
                                    0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74};
    uint64_t c = open_conn();
    mp_id id = send_bytes(c, MP_KIND_HELLO, NULL, hello, sizeof hello);
    frame fr = expect(c, MP_KIND_WELCOME, &id);
    frame_free(&fr);
}

Test(node, handshake_peer_role_recorded) {
    uint64_t p = connect_as("peer");
    mpreg_value st = control(client(), "status");
    cr_assert_eq(get_int(get(&st, "connections"), "peers"), 1);
    cr_assert_eq(get_int(get(&st, "connections"), "clients"), 1);
    mpreg_value_free(&st);
    /* Peers may ping; a client's kinds are refused on a peer link. */
    mp_id id = send_bytes(p, MP_KIND_PING, NULL, NULL, 0);
    frame fr = expect(p, MP_KIND_PONG, &id);
    frame_free(&fr);
    id = send_json(p, MP_KIND_RPC_REQUEST, NULL, "{\"commands\": []}");
    expect_error(p, &id, MPREG_E_KIND);
    cr_assert_not(F.c[p].closed);
    /* A standalone node is in no cluster: GOSSIP gets an error. */
    id = send_bytes(p, MP_KIND_GOSSIP, NULL, NULL, 0);
    expect_error(p, &id, MPREG_E_KIND);
}

Test(node, peer_hello_must_name_another_node_of_this_cluster) {
    static const char *const bad[] = {
        "{\"role\": \"peer\"}",                                        /* no node */
        "{\"role\": \"peer\", \"node\": \"\"}",                        /* empty */
        "{\"role\": \"peer\", \"node\": \"n1\"}",                      /* this node itself */
        "{\"role\": \"peer\", \"node\": 7}",                           /* not a string */
        "{\"role\": \"peer\", \"node\": \"p2\", \"cluster\": \"zz\"}", /* another cluster */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t c = open_conn();
        mp_id id = send_json(c, MP_KIND_HELLO, NULL, bad[i]);
        expect_error(c, &id, MPREG_E_HANDSHAKE);
        cr_assert(F.c[c].closed, "%s must be refused", bad[i]);
    }
    uint64_t ok = open_conn();
    mp_id id = send_json(ok, MP_KIND_HELLO, NULL,
                         "{\"role\": \"peer\", \"node\": \"p2\", \"cluster\": \"c1\"}");
    frame fr = expect(ok, MP_KIND_WELCOME, &id);
    frame_free(&fr);
}

/* A node that keeps knocking as a peer of another cluster is told why
 * every time (an ERROR with the reason), but the warning is logged once a
 * minute, the next one counting those left out. */
Test(node, a_refused_peer_is_warned_about_once_a_minute) {
    const char *hello = "{\"role\": \"peer\", \"node\": \"p2\", \"cluster\": \"zz\"}";
    for (int i = 0; i < 5; i++) {
        uint64_t c = open_conn();
        mp_id id = send_json(c, MP_KIND_HELLO, NULL, hello);
        frame fr = expect(c, MP_KIND_ERROR, &id);
        cr_assert_eq(get_int(&fr.payload, "code"), MPREG_E_HANDSHAKE);
        cr_assert_str_eq(get_str(&fr.payload, "message"),
                         "cluster mismatch: node n1 is in cluster \"c1\", not \"zz\"");
        frame_free(&fr);
        cr_assert(F.c[c].closed);
        mp_node_on_close(F.node, c, MPREG_E_HANDSHAKE, F.now);
        F.c[c].gone = true;
        advance(2000);
    }
    cr_assert_eq(F.warns, 1, "%d warnings, the last: %s", F.warns, F.last_warn);
    cr_assert_str_eq(F.last_warn, "refused peer p2 from 127.0.0.1:5555: cluster mismatch: node "
                                  "n1 is in cluster \"c1\", not \"zz\"");
    advance(60000);
    uint64_t c = open_conn();
    mp_id id = send_json(c, MP_KIND_HELLO, NULL, hello);
    expect_error(c, &id, MPREG_E_HANDSHAKE);
    cr_assert_eq(F.warns, 2);
    cr_assert(strstr(F.last_warn, "(4 more like this in the last 60 s)"), "%s", F.last_warn);
    /* Another peer has a window of its own. */
    c = open_conn();
    id = send_json(c, MP_KIND_HELLO, NULL,
                   "{\"role\": \"peer\", \"node\": \"p3\", \"cluster\": \"zz\"}");
    expect_error(c, &id, MPREG_E_HANDSHAKE);
    cr_assert_eq(F.warns, 3);
    cr_assert(strstr(F.last_warn, "refused peer p3"), "%s", F.last_warn);
}

/* A peer runs one command of another node's request: RPC_INVOKE of a
 * function of this node, answered by RPC_RESULT; a function this node does
 * not have is an error result, not a hang. */
Test(node, peer_invoke_runs_a_local_function) {
    uint64_t p = connect_as("peer");
    mp_id id = send_json(p, MP_KIND_RPC_INVOKE, NULL,
                         "{\"command\": \"a\", \"fun\": \"echo\", \"args\": [\"hi\"], "
                         "\"version\": \"1.0.0\"}");
    frame fr = expect(p, MP_KIND_RPC_RESULT, &id);
    assert_json_eq(get(&fr.payload, "result"), "\"hi\"");
    frame_free(&fr);
    id = send_json(p, MP_KIND_RPC_INVOKE, NULL,
                   "{\"command\": \"a\", \"fun\": \"nope\", \"version\": \"1.0.0\"}");
    fr = expect(p, MP_KIND_RPC_RESULT, &id);
    cr_assert_eq(get_int(get(&fr.payload, "error"), "code"), MPREG_E_NOT_FOUND);
    frame_free(&fr);
}

Test(node, handshake_missing) {
    uint64_t c = open_conn();
    mp_id id = send_bytes(c, MP_KIND_PING, NULL, NULL, 0);
    expect_error(c, &id, MPREG_E_HANDSHAKE);
    cr_assert(F.c[c].closed);
    cr_assert(F.c[c].flush, "the ERROR must be flushed before the close");
    /* Frames after the close request are ignored. */
    send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\"}");
    expect_nothing(c);
}

Test(node, handshake_timeout) {
    uint64_t c = open_conn();
    cr_assert_eq(mp_node_next_wakeup(F.node), T0 + 10000);
    advance(9999);
    expect_nothing(c);
    cr_assert_not(F.c[c].closed);
    advance(1);
    expect_error(c, NULL, MPREG_E_HANDSHAKE);
    cr_assert(F.c[c].closed);
    cr_assert(F.c[c].flush);
    cr_assert_eq(F.c[c].reason, MPREG_E_HANDSHAKE);
    cr_assert_eq(mp_node_next_wakeup(F.node), UINT64_MAX);
}

Test(node, handshake_configured_timeout) {
    teardown();
    mp_node_config cfg = {.node_id = "n1", .handshake_timeout_ms = 250};
    start_node(&cfg);
    uint64_t c = open_conn();
    advance(250);
    expect_error(c, NULL, MPREG_E_HANDSHAKE);
}

Test(node, handshake_double) {
    uint64_t c = client();
    mp_id id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\"}");
    expect_error(c, &id, MPREG_E_HANDSHAKE);
    cr_assert(F.c[c].closed);
}

Test(node, handshake_bad_payloads) {
    const char *bad[] = {"{}",
                         "{\"role\": \"admin\"}",
                         "{\"role\": 1}",
                         "[\"client\"]",
                         "{\"role\": \"client\", \"name\": 5}",
                         "{\"role\": \"client\", \"token\": []}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t c = open_conn();
        mp_id id = send_json(c, MP_KIND_HELLO, NULL, bad[i]);
        expect_error(c, &id, MPREG_E_HANDSHAKE);
        cr_assert(F.c[c].closed, "%s", bad[i]);
    }
    uint64_t c = open_conn();
    mp_id id = send_bytes(c, MP_KIND_HELLO, NULL, "\xc1", 1);
    expect_error(c, &id, MPREG_E_HANDSHAKE);
    /* Unknown keys are fine: later versions may say more. */
    c = open_conn();
    id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\", \"future\": [1, 2]}");
    frame fr = expect(c, MP_KIND_WELCOME, &id);
    frame_free(&fr);
}

Test(node, handshake_token) {
    teardown();
    mp_node_config cfg = {.node_id = "n1", .token = "s3cret"};
    start_node(&cfg);
    uint64_t c = open_conn();
    mp_id id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\"}");
    expect_error(c, &id, MPREG_E_AUTH);
    cr_assert(F.c[c].closed);

    c = open_conn();
    id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\", \"token\": \"s3cre\"}");
    expect_error(c, &id, MPREG_E_AUTH);
    cr_assert(F.c[c].closed);

    c = open_conn();
    id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\", \"token\": \"s3cret!\"}");
    expect_error(c, &id, MPREG_E_AUTH);

    c = open_conn();
    id = send_json(c, MP_KIND_HELLO, NULL, "{\"role\": \"client\", \"token\": \"s3cret\"}");
    frame fr = expect(c, MP_KIND_WELCOME, &id);
    frame_free(&fr);
    cr_assert_not(F.c[c].closed);
}

Test(node, bad_envelope_before_hello_closes) {
    uint64_t c = open_conn();
    mp_node_on_frame(F.node, c, (const uint8_t *)"\x93\x01\x02\x03", 4, F.now);
    expect_error(c, NULL, MPREG_E_DECODE);
    cr_assert(F.c[c].closed);
}

/* --- connection basics --------------------------------------------------------------- */

Test(node, ping_pong) {
    uint64_t c = client();
    mp_id id = send_bytes(c, MP_KIND_PING, NULL, "t=1", 3);
    frame fr = expect(c, MP_KIND_PONG, &id);
    cr_assert_eq(fr.env.payload.len, 3);
    cr_assert(memcmp(fr.env.payload.ptr, "t=1", 3) == 0);
    frame_free(&fr);
}

Test(node, goodbye_closes_after_flush) {
    uint64_t c = client();
    send_bytes(c, MP_KIND_GOODBYE, NULL, NULL, 0);
    cr_assert(F.c[c].closed);
    cr_assert(F.c[c].flush);
    send_bytes(c, MP_KIND_PING, NULL, NULL, 0);
    expect_nothing(c);
    close_conn(c);
}

Test(node, bad_envelope_keeps_connection) {
    uint64_t c = client();
    /* Not a map. */
    mp_node_on_frame(F.node, c, (const uint8_t *)"\xc1", 1, F.now);
    expect_error(c, NULL, MPREG_E_DECODE);
    /* A map with an id, then a bad version: the ERROR names the id. */
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_PING);
    e.id = mp_id_new(&F.client_rng.rng);
    uint8_t buf[64];
    size_t n = 0;
    buf[n++] = 0x83;
    buf[n++] = 0x03;
    buf[n++] = 0xc4;
    buf[n++] = 16;
    memcpy(buf + n, e.id.bytes, 16);
    n += 16;
    buf[n++] = 0x01;
    buf[n++] = 0x07; /* version 7 */
    buf[n++] = 0x02;
    buf[n++] = 0x03;
    mp_node_on_frame(F.node, c, buf, n, F.now);
    expect_error(c, &e.id, MPREG_E_VERSION);
    /* A reply kind without correlation: {1: 1, 2: 19, 3: id, 10: 16}. */
    n = 0;
    buf[n++] = 0x84;
    buf[n++] = 0x01;
    buf[n++] = 0x01;
    buf[n++] = 0x02;
    buf[n++] = MP_KIND_RPC_RESULT;
    buf[n++] = 0x03;
    buf[n++] = 0xc4;
    buf[n++] = 16;
    memcpy(buf + n, e.id.bytes, 16);
    n += 16;
    buf[n++] = 0x0a;
    buf[n++] = 0x10;
    mp_node_on_frame(F.node, c, buf, n, F.now);
    expect_error(c, &e.id, MPREG_E_MISSING_FIELD);
    cr_assert_not(F.c[c].closed);
    mp_id id = send_bytes(c, MP_KIND_PING, NULL, NULL, 0);
    frame fr = expect(c, MP_KIND_PONG, &id);
    frame_free(&fr);
}

Test(node, kinds_not_accepted) {
    uint64_t c = client();
    mp_kind kinds[] = {MP_KIND_WELCOME,  MP_KIND_DELIVER, MP_KIND_RPC_INVOKE,    MP_KIND_QUEUE_OP,
                       MP_KIND_CACHE_OP, MP_KIND_GOSSIP,  MP_KIND_CONTROL_REPLY, MP_KIND_OK};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        mp_envelope e;
        mp_envelope_init(&e, kinds[i]);
        e.correlation_id = mp_id_new(&F.client_rng.rng);
        if (kinds[i] == MP_KIND_DELIVER) {
            e.topic = mp_str_c("a.b");
        }
        mp_id id = send_env(c, &e);
        expect_error(c, &id, MPREG_E_KIND);
    }
    /* An ERROR is never answered with an ERROR; a PONG needs no answer. */
    send_json(c, MP_KIND_ERROR, NULL, "{\"code\": 100}");
    mp_envelope pong;
    mp_envelope_init(&pong, MP_KIND_PONG);
    pong.correlation_id = mp_id_new(&F.client_rng.rng);
    send_env(c, &pong);
    expect_nothing(c);
    cr_assert_not(F.c[c].closed);
}

Test(node, protocol_error_closes) {
    uint64_t c = client();
    mp_node_on_protocol_error(F.node, c, MPREG_E_FRAME_TOO_LARGE, F.now);
    expect_error(c, NULL, MPREG_E_FRAME_TOO_LARGE);
    cr_assert(F.c[c].closed);
    cr_assert(F.c[c].flush);
    cr_assert_eq(F.c[c].reason, MPREG_E_FRAME_TOO_LARGE);
    close_conn(c);
    /* Reports for a gone connection are ignored. */
    mp_node_on_protocol_error(F.node, c, MPREG_E_FRAME_EMPTY, F.now);
    mp_node_on_writable(F.node, c, F.now);
    mp_node_on_close(F.node, c, MPREG_E_CLOSED, F.now);
}

Test(node, garbage_payloads_for_every_kind) {
    uint64_t c = client();
    const char garbage[] = "\xc1\xff\x00";
    mp_kind kinds[] = {MP_KIND_RPC_REQUEST, MP_KIND_REGISTER, MP_KIND_UNREGISTER, MP_KIND_SUBSCRIBE,
                       MP_KIND_UNSUBSCRIBE};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        mp_id id = send_bytes(c, kinds[i], NULL, garbage, 3);
        frame fr;
        cr_assert(next_frame(c, &fr), "no answer to %s", mp_kind_name(kinds[i]));
        cr_assert(mp_id_equal(&fr.env.correlation_id, &id));
        if (kinds[i] == MP_KIND_RPC_REQUEST) {
            cr_assert_eq(fr.env.kind, MP_KIND_RPC_REPLY);
            cr_assert_not_null(mpreg_map_get(&fr.payload, "error"));
        } else {
            cr_assert_eq(fr.env.kind, MP_KIND_ERROR, "%s", mp_kind_name(kinds[i]));
        }
        frame_free(&fr);
        /* Empty and wrongly shaped payloads too. */
        id = send_bytes(c, kinds[i], NULL, NULL, 0);
        cr_assert(next_frame(c, &fr));
        cr_assert(fr.env.kind == MP_KIND_ERROR || fr.env.kind == MP_KIND_RPC_REPLY);
        frame_free(&fr);
        id = send_json(c, kinds[i], NULL, "[1, {\"x\": null}]");
        cr_assert(next_frame(c, &fr));
        cr_assert(fr.env.kind == MP_KIND_ERROR || fr.env.kind == MP_KIND_RPC_REPLY);
        frame_free(&fr);
    }
    /* PUBLISH: a bad topic is an ERROR; a payload is opaque (never parsed). */
    mp_id id = publish(c, "a..b", "x");
    expect_error(c, &id, MPREG_E_TOPIC);
    id = publish(c, "a.*", "x");
    expect_error(c, &id, MPREG_E_TOPIC);
    publish(c, "a.b", garbage);
    expect_nothing(c);
    /* CONTROL: an unknown operation. */
    id = send_bytes(c, MP_KIND_CONTROL, "reboot", garbage, 3);
    expect_error(c, &id, MPREG_E_INVALID);
    /* RPC_RESULT for nothing in flight is dropped silently. */
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_RPC_RESULT);
    e.correlation_id = mp_id_new(&F.client_rng.rng);
    e.payload = (mp_bytes){(const uint8_t *)garbage, 3};
    send_env(c, &e);
    expect_nothing(c);
    /* And the connection still works. */
    cr_assert_not(F.c[c].closed);
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]}]");
    expect_results(c, &id, "{\"a\": 1}");
}

/* --- RPC ------------------------------------------------------------------------------- */

Test(node, canonical_example) {
    uint64_t c = client();
    mp_id id = rpc(c, "["
                      "{\"name\": \"first\", \"fun\": \"echo\", \"args\": [\"hi there!\"]},"
                      "{\"name\": \"second\", \"fun\": \"echo\", \"args\": [\"first\"]},"
                      "{\"name\": \"third\", \"fun\": \"echos\", \"args\": [\"first\", \"AND ME "
                      "TOO\"]}"
                      "]");
    expect_results(c, &id,
                   "{\"second\": \"hi there!\", \"third\": [\"hi there!\", \"AND ME TOO\"]}");
    expect_nothing(c);
}

static void kw_fn(void *ctx, const mpreg_value *args, const mpreg_value *kwargs, mpreg_call *call) {
    (void)ctx;
    (void)args;
    mpreg_value v;
    cr_assert_eq(mpreg_value_clone(kwargs, &v), MPREG_OK);
    mpreg_call_return(call, v);
}

Test(node, nested_field_and_kwargs_references) {
    mpreg_function_def def = {.name = "kw", .version = "2.1.0", .fn = kw_fn};
    cr_assert_eq(mpreg_register_function(mp_node_registry(F.node), &def), MPREG_OK);
    uint64_t c = client();
    mp_id id = rpc(c, "["
                      "{\"name\": \"first\", \"fun\": \"echo\", \"args\": [{\"user\": {\"name\": "
                      "\"ann\"}, \"items\": [10, 20]}]},"
                      "{\"name\": \"second\", \"fun\": \"echos\", \"args\": [\"first.user.name\", "
                      "[\"first.items.1\"]]},"
                      "{\"name\": \"third\", \"fun\": \"kw\", \"kwargs\": {\"who\": "
                      "\"first.user.name\", \"n\": {\"deep\": \"first.items.0\"}, \"plain\": "
                      "\"firstly\"}}"
                      "]");
    expect_results(c, &id,
                   "{\"second\": [\"ann\", [20]], \"third\": {\"who\": \"ann\", \"n\": {\"deep\": "
                   "10}, \"plain\": \"firstly\"}}");
    /* A field that is not there fails the request. */
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [{\"x\": 1}]},"
                "{\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a.y\"]}]");
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_INVALID);
    cr_assert_str_eq(e.command, "b");
    mp_rpc_error_free(&e);
}

Test(node, unknown_function) {
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"x\", \"fun\": \"nosuch\"}]");
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_NOT_FOUND);
    cr_assert_str_eq(e.command, "x");
    cr_assert_not_null(strstr(mp_rpc_error_message(&e), "nosuch"));
    mp_rpc_error_free(&e);
}

Test(node, cycle_before_anything_runs) {
    uint64_t w = worker("[{\"name\": \"work\"}]");
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\", \"args\": [\"b\"]},"
                      "{\"name\": \"b\", \"fun\": \"work\", \"args\": [\"a\"]},"
                      "{\"name\": \"z\", \"fun\": \"work\"}]");
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_CYCLE);
    cr_assert_not_null(strstr(mp_rpc_error_message(&e), "a -> b -> a"));
    mp_rpc_error_free(&e);
    expect_nothing(w); /* not even the independent command ran */
    /* A self reference too. */
    id = rpc(c, "[{\"name\": \"s\", \"fun\": \"echo\", \"args\": [\"s\"]}]");
    expect_rpc_error_free(c, &id, MPREG_E_CYCLE);
}

Test(node, missing_resources) {
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"locs\": [\"gpu\"]}]");
    expect_rpc_error_free(c, &id, MPREG_E_NO_RESOURCES);
}

Test(node, configured_resources) {
    teardown();
    const char *res[] = {"cpu", "eu"};
    mp_node_config cfg = {.node_id = "n1", .resources = res, .resource_count = 2};
    start_node(&cfg);
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"locs\": [\"eu\", "
                      "\"cpu\"]}]");
    expect_results(c, &id, "{\"x\": 1}");
    id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"locs\": [\"us\"]}]");
    expect_rpc_error_free(c, &id, MPREG_E_NO_RESOURCES);
}

Test(node, version_constraints) {
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"version\": "
                      "\">=1.0,<2.0\"}]");
    expect_results(c, &id, "{\"x\": 1}");
    id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"version\": \">=2.0\"}]");
    expect_rpc_error_free(c, &id, MPREG_E_NO_VERSION);
    id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"version\": \"banana\"}]");
    expect_rpc_error_free(c, &id, MPREG_E_BAD_SEMVER);
    id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1], \"version\": \">=2,<1\"}]");
    expect_rpc_error_free(c, &id, MPREG_E_BAD_SEMVER);
}

Test(node, fail_builtin) {
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"oops\", \"fun\": \"fail\", \"args\": [\"it broke\"]}]");
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_HANDLER);
    cr_assert_str_eq(mp_rpc_error_message(&e), "it broke");
    cr_assert_str_eq(e.command, "oops");
    mp_rpc_error_free(&e);
}

Test(node, builtin_argument_checks) {
    uint64_t c = client();
    const char *bad[] = {
        "[{\"name\": \"x\", \"fun\": \"echo\"}]",
        "[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1, 2]}]",
        "[{\"name\": \"x\", \"fun\": \"sleep\", \"args\": [-1]}]",
        "[{\"name\": \"x\", \"fun\": \"sleep\", \"args\": [1.5]}]",
        "[{\"name\": \"x\", \"fun\": \"sleep\", \"args\": [\"10\"]}]",
        "[{\"name\": \"x\", \"fun\": \"sleep\", \"args\": [3600001]}]",
        "[{\"name\": \"x\", \"fun\": \"fail\", \"args\": [3]}]",
        "[{\"name\": \"x\", \"fun\": \"whoami\", \"args\": [1]}]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mp_id id = rpc(c, bad[i]);
        cr_assert_eq(pending(c), 1, "no answer to %s", bad[i]);
        expect_rpc_error_free(c, &id, MPREG_E_INVALID);
    }
    mp_id id = rpc(c, "[{\"name\": \"x\", \"fun\": \"sleep\", \"args\": [0]}]");
    expect_results(c, &id, "{\"x\": 0}");
    id = rpc(c, "[{\"name\": \"x\", \"fun\": \"echos\"}]");
    expect_results(c, &id, "{\"x\": []}");
}

Test(node, sleep_past_deadline) {
    uint64_t c = client();
    mp_id id = rpc_timeout(c,
                           "[{\"name\": \"nap\", \"fun\": \"sleep\", \"args\": [100]},"
                           "{\"name\": \"quick\", \"fun\": \"echo\", \"args\": [1]}]",
                           50);
    expect_nothing(c);
    cr_assert_eq(mp_node_next_wakeup(F.node), T0 + 50);
    advance(49);
    expect_nothing(c);
    advance(1);
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_DEADLINE);
    cr_assert_str_eq(e.command, "nap");
    mp_rpc_error_free(&e);
    /* The abandoned sleep is cancelled: nothing more comes, no timer stays. */
    cr_assert_eq(mp_node_next_wakeup(F.node), UINT64_MAX);
    advance(100);
    expect_nothing(c);
}

Test(node, the_earlier_deadline_wins) {
    uint64_t c = client();
    mpreg_value payload = mpreg_map();
    mpreg_map_set(&payload, "commands",
                  json("[{\"name\": \"nap\", \"fun\": \"sleep\", \"args\": [10000]}]"));
    mpreg_map_set(&payload, "timeout_ms", mpreg_int(1000));
    mp_buf b = MP_BUF_INIT;
    mpreg_value_encode(&payload, &b);
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_RPC_REQUEST);
    e.deadline_ms = F.now + 30;
    e.payload = (mp_bytes){b.data, b.len};
    mp_id id = send_env(c, &e);
    advance(29);
    expect_nothing(c);
    advance(1);
    expect_rpc_error_free(c, &id, MPREG_E_DEADLINE);
    /* The payload's timeout, when it is the earlier. */
    e.id = mp_id_new(&F.client_rng.rng);
    e.deadline_ms = F.now + 5000;
    id = send_env(c, &e);
    advance(999);
    expect_nothing(c);
    advance(1);
    expect_rpc_error_free(c, &id, MPREG_E_DEADLINE);
    /* A deadline already past: refused at once. */
    e.id = mp_id_new(&F.client_rng.rng);
    e.deadline_ms = F.now - 1;
    id = send_env(c, &e);
    expect_rpc_error_free(c, &id, MPREG_E_DEADLINE);
    mp_buf_free(&b);
    mpreg_value_free(&payload);
}

Test(node, default_rpc_timeout) {
    teardown();
    mp_node_config cfg = {.node_id = "n1", .rpc_timeout_ms = 500};
    start_node(&cfg);
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"nap\", \"fun\": \"sleep\", \"args\": [1000]}]");
    advance(499);
    expect_nothing(c);
    advance(1);
    expect_rpc_error_free(c, &id, MPREG_E_DEADLINE);
}

Test(node, sleeps_run_in_parallel) {
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"sleep\", \"args\": [100]},"
                      "{\"name\": \"b\", \"fun\": \"sleep\", \"args\": [100]},"
                      "{\"name\": \"c\", \"fun\": \"echos\", \"args\": [\"a\", \"b\"]}]");
    advance(99);
    expect_nothing(c);
    advance(1);
    expect_results(c, &id, "{\"c\": [100, 100]}");
}

Test(node, whoami) {
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"me\", \"fun\": \"whoami\"}]");
    expect_results(c, &id,
                   "{\"me\": {\"node\": \"n1\", \"name\": \"alpha\", \"cluster\": \"c1\"}}");
}

Test(node, request_limit_per_connection) {
    uint64_t c = client();
    for (int i = 0; i < 1024; i++) {
        rpc(c, "[{\"name\": \"a\", \"fun\": \"sleep\", \"args\": [100]}]");
    }
    expect_nothing(c);
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"sleep\", \"args\": [100]}]");
    expect_error(c, &id, MPREG_E_LIMIT);
    advance(100);
    cr_assert_eq(pending(c), 1024);
    skip_all(c);
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]}]");
    expect_results(c, &id, "{\"a\": 1}");
}

Test(node, reply_backpressure_pauses_reading) {
    uint64_t c = client();
    F.c[c].high = true;
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]}]");
    expect_results(c, &id, "{\"a\": 1}");
    cr_assert_eq(F.c[c].reading_calls, 1);
    cr_assert_not(F.c[c].reading);
    F.c[c].high = false;
    mp_node_on_writable(F.node, c, F.now);
    cr_assert_eq(F.c[c].reading_calls, 2);
    cr_assert(F.c[c].reading);
}

Test(node, reply_over_max_frame) {
    teardown();
    mp_node_config cfg = {.node_id = "n1", .max_frame = 512};
    start_node(&cfg);
    uint64_t c = client();
    char big[700];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    /* Fits in (the node takes any frame the driver hands it), too big to echo. */
    char cmds[900];
    snprintf(cmds, sizeof cmds, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"%s\"]}]", big);
    mp_id id = rpc(c, cmds);
    expect_rpc_error_free(c, &id, MPREG_E_TOO_LARGE);
}

/* Puts another node's entry in the catalog, as gossip will. */
static void remote_entry(mp_entry *e) {
    e->version = (mp_entry_version){1, 1};
    cr_assert_eq(mp_catalog_apply_entry(mp_node_catalog(F.node), e, F.now, NULL), MPREG_OK);
    mp_entry_free(e);
}

Test(node, remote_endpoints_are_unreachable_for_now) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, "n2", "c1", "far", NULL, "1.0.0"), MPREG_OK);
    remote_entry(&e);
    cr_assert_eq(mp_entry_function(&e, "n3", "c9", "abroad", NULL, "1.0.0"), MPREG_OK);
    remote_entry(&e);
    cr_assert_eq(mp_entry_topic(&e, "n2", "c1", "news.#"), MPREG_OK);
    remote_entry(&e);
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"far\"}]");
    mp_rpc_error err = expect_rpc_error(c, &id, MPREG_E_UNREACHABLE);
    cr_assert_not_null(strstr(mp_rpc_error_message(&err), "no connection to node n2"));
    mp_rpc_error_free(&err);
    /* Another cluster, and no federation to get there. */
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"abroad\", \"target_cluster\": \"c9\"}]");
    expect_rpc_error_free(c, &id, MPREG_E_ROUTE);
    /* A publish that only another node wants: not an error, counted. */
    publish(c, "news.today", "x");
    expect_nothing(c);
    mpreg_value st = control(c, "status");
    cr_assert_eq(get_int(get(&st, "counters"), "unreachable"), 2);
    cr_assert_eq(get_int(get(&st, "counters"), "published"), 1);
    mpreg_value_free(&st);
}

/* A publish from a peer was sent once to each interested node by its
 * publisher's node: it goes to this node's subscribers and nowhere else. */
Test(node, peer_publish_is_delivered_locally_and_never_forwarded) {
    mp_entry e;
    cr_assert_eq(mp_entry_topic(&e, "n2", "c1", "news.#"), MPREG_OK);
    remote_entry(&e);
    uint64_t c = client();
    subscribe(c, "{\"patterns\": [\"news.*\"], \"tag\": \"t\"}");
    uint64_t p = connect_as("peer");
    publish(p, "news.today", "from a peer");
    expect_deliver(c, "news.today", "from a peer", false);
    mpreg_value st = control(c, "status");
    cr_assert_eq(get_int(get(&st, "counters"), "unreachable"), 0, "no forward was tried");
    mpreg_value_free(&st);
    /* A client's publish is delivered here and forwarded to n2 (no link: counted). */
    publish(c, "news.today", "from a client");
    expect_deliver(c, "news.today", "from a client", false);
    st = control(c, "status");
    cr_assert_eq(get_int(get(&st, "counters"), "unreachable"), 1, "a client's publish goes on");
    mpreg_value_free(&st);
}

/* --- links to other nodes ------------------------------------------------------ */

static char g_dialed[MAXC + 1][64]; /* the address each dialed connection went to */

static uint64_t f_dial(void *ud, const char *addr) {
    fake *f = ud;
    uint64_t id = f->next_id++;
    cr_assert_leq(id, MAXC);
    snprintf(g_dialed[id], sizeof g_dialed[id], "%s", addr);
    return id;
}

/* A remote node n with a function `far` reachable at addr. */
static void remote_node_with_far(const char *node, const char *addr) {
    mp_entry e;
    cr_assert_eq(mp_entry_node(&e, node, node, "c1", 1), MPREG_OK);
    cr_assert_eq(mp_strlist_push(&e.u.node.endpoints, addr), MPREG_OK);
    remote_entry(&e);
    cr_assert_eq(mp_entry_function(&e, node, "c1", "far", NULL, "1.0.0"), MPREG_OK);
    remote_entry(&e);
}

/* The RPC_INVOKE on a dialed link comes after the node's peer HELLO. */
static frame expect_dialed_invoke(uint64_t link) {
    frame hello = expect(link, MP_KIND_HELLO, NULL);
    cr_assert_str_eq(get_str(&hello.payload, "role"), "peer");
    cr_assert_str_eq(get_str(&hello.payload, "node"), "n1");
    frame_free(&hello);
    return expect(link, MP_KIND_RPC_INVOKE, NULL);
}

/* A call on a link that never came up (no WELCOME) never started: it goes
 * to another node that has the function; with none left, the error names
 * the node that could not be reached. */
Test(node, unreachable_node_call_is_retried_elsewhere) {
    mp_node_io io = IO;
    io.dial = f_dial;
    mp_node_free(F.node);
    F.node = mp_node_new(&(mp_node_config){.node_id = "n1", .cluster = "c1", .incarnation = 1}, &io,
                         &F.rng.rng, F.now);
    cr_assert_not_null(F.node);
    remote_node_with_far("n2", "10.0.0.2:7000");
    remote_node_with_far("n3", "10.0.0.3:7000");
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"far\", \"args\": [1]}]");
    uint64_t first = F.next_id - 1;
    cr_assert(strstr(g_dialed[first], "10.0.0."), "a link was dialed");
    frame inv = expect_dialed_invoke(first);
    frame_free(&inv);
    /* The dial fails before any WELCOME: the call moves to the other node. */
    mp_node_on_close(F.node, first, MPREG_E_UNREACHABLE, F.now);
    F.c[first].gone = true;
    expect_nothing(c);
    uint64_t second = F.next_id - 1;
    cr_assert_neq(second, first);
    cr_assert_str_neq(g_dialed[second], g_dialed[first], "not the same node again");
    inv = expect_dialed_invoke(second);
    answer(second, &inv, "{\"result\": 42}");
    frame_free(&inv);
    expect_results(c, &id, "{\"a\": 42}");

    /* Only one node has `solo`, and it cannot be reached. */
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, "n2", "c1", "solo", NULL, "1.0.0"), MPREG_OK);
    remote_entry(&e);
    id = rpc(c, "[{\"name\": \"s\", \"fun\": \"solo\"}]");
    uint64_t link = F.next_id - 1;
    if (strcmp(g_dialed[link], "10.0.0.2:7000") != 0) {
        link = second; /* the link to n2 is still open from before */
    }
    mp_node_on_close(F.node, link, MPREG_E_UNREACHABLE, F.now);
    F.c[link].gone = true;
    mp_rpc_error err = expect_rpc_error(c, &id, MPREG_E_UNREACHABLE);
    cr_assert_not_null(strstr(mp_rpc_error_message(&err), "n2"), "%s", mp_rpc_error_message(&err));
    mp_rpc_error_free(&err);
}

/* The node joins through a seed that answers its HELLO with an ERROR (its
 * token is wrong, say): the ERROR's message is logged at warn, once however
 * many times the join is retried, and the failed links' closes are not. */
Test(node, a_seed_s_refusal_is_logged_with_its_message_once) {
    mp_node_io io = IO;
    io.dial = f_dial;
    mp_node_free(F.node);
    const char *seeds[] = {"10.0.0.9:7000"};
    mp_swim_config swim;
    mp_swim_config_default(&swim);
    F.node = mp_node_new(&(mp_node_config){.node_id = "n1",
                                           .cluster = "c1",
                                           .incarnation = 1,
                                           .log_level = MP_LOG_INFO,
                                           .advertise_addr = "10.0.0.1:7000",
                                           .seeds = seeds,
                                           .seed_count = 1,
                                           .swim = swim,
                                           .node_key = (const uint8_t *)"0123456789abcdef",
                                           .node_key_len = 16},
                         &io, &F.rng.rng, F.now);
    cr_assert_not_null(F.node);
    int logs = F.logs;
    for (int i = 0; i < 4; i++) {
        uint64_t link = F.next_id - 1;
        cr_assert_str_eq(g_dialed[link], "10.0.0.9:7000", "try %d dialed the seed", i);
        frame hello = expect(link, MP_KIND_HELLO, NULL);
        const mpreg_value *key = mpreg_map_get(&hello.payload, "key");
        cr_assert(key && key->type == MPREG_BIN && key->u.bin.len == 16 &&
                      memcmp(key->u.bin.ptr, "0123456789abcdef", 16) == 0,
                  "the HELLO carries the node key");
        mpreg_value err =
            json("{\"code\": 208, \"name\": \"auth\", \"message\": \"token refused\"}");
        mp_buf b = MP_BUF_INIT;
        cr_assert_eq(mpreg_value_encode(&err, &b), MPREG_OK);
        mp_envelope e;
        mp_envelope_init(&e, MP_KIND_ERROR);
        e.correlation_id = hello.env.id;
        e.payload = (mp_bytes){b.data, b.len};
        send_env(link, &e);
        mp_buf_free(&b);
        mpreg_value_free(&err);
        frame_free(&hello);
        mp_node_on_close(F.node, link, MPREG_E_CLOSED, F.now);
        F.c[link].gone = true;
        /* The join is tried again every two probe intervals. */
        advance(2 * swim.probe_interval_ms + 1);
    }
    cr_assert_eq(F.warns, 1, "%d warnings", F.warns);
    cr_assert_str_eq(F.last_warn, "seed 10.0.0.9:7000 refused this node (auth): token refused");
    cr_assert_eq(F.logs, logs + 1, "one line in all at info, the last: %s", F.last_log);
}

/* --- workers ------------------------------------------------------------------------------ */

Test(node, worker_register_call_result) {
    uint64_t w = worker("[{\"name\": \"add\", \"function_id\": \"math\", \"version\": \"1.2.0\", "
                        "\"resources\": [\"gpu\"]}]");
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"sum\", \"fun\": \"add\", \"args\": [1, 2], \"kwargs\": "
                      "{\"k\": \"v\"}, \"locs\": [\"gpu\"], \"version\": \">=1\"}]");
    expect_nothing(c);
    frame inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    cr_assert(mp_str_eq_c(inv.env.topic, "add"));
    mp_rpc_invoke in;
    cr_assert_eq(mp_rpc_invoke_decode(inv.env.payload.ptr, inv.env.payload.len, &in, NULL),
                 MPREG_OK);
    cr_assert_str_eq(in.command, "sum");
    cr_assert_str_eq(in.fun, "add");
    cr_assert_str_eq(in.function_id, "math");
    cr_assert_str_eq(in.version, "1.2.0"); /* the exact version chosen, not the constraint */
    assert_json_eq(&in.args, "[1, 2]");
    assert_json_eq(&in.kwargs, "{\"k\": \"v\"}");
    mp_rpc_invoke_free(&in);
    cr_assert_gt(inv.env.deadline_ms, F.now);
    answer(w, &inv, "{\"result\": 3}");
    expect_results(c, &id, "{\"sum\": 3}");
    /* A result for the same invoke again is dropped. */
    answer(w, &inv, "{\"result\": 4}");
    expect_nothing(c);
    expect_nothing(w);
    frame_free(&inv);
}

Test(node, worker_error_and_bad_result) {
    uint64_t w = worker("[{\"name\": \"work\"}]");
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    frame inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    answer(w, &inv, "{\"error\": {\"code\": 304, \"message\": \"disk on fire\"}}");
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_HANDLER);
    cr_assert_str_eq(mp_rpc_error_message(&e), "disk on fire");
    cr_assert_str_eq(e.command, "a");
    mp_rpc_error_free(&e);
    frame_free(&inv);

    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    /* A result that does not decode: the worker hears why, the caller
     * gets a handler error naming the function. */
    mp_id rid = answer(w, &inv, "{\"nonsense\": 1}");
    frame err = expect(w, MP_KIND_ERROR, &rid);
    frame_free(&err);
    e = expect_rpc_error(c, &id, MPREG_E_HANDLER);
    cr_assert_not_null(strstr(mp_rpc_error_message(&e), "work"));
    mp_rpc_error_free(&e);
    frame_free(&inv);
}

Test(node, worker_sequenced_commands_and_parallel_invokes) {
    uint64_t w = worker("[{\"name\": \"work\"}]");
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\", \"args\": [1]},"
                      "{\"name\": \"b\", \"fun\": \"work\", \"args\": [2]},"
                      "{\"name\": \"c\", \"fun\": \"echos\", \"args\": [\"a\", \"b\"]}]");
    /* a and b go out together. */
    cr_assert_eq(pending(w), 2);
    frame ia = expect(w, MP_KIND_RPC_INVOKE, NULL);
    frame ib = expect(w, MP_KIND_RPC_INVOKE, NULL);
    answer(w, &ib, "{\"result\": \"B\"}");
    expect_nothing(c);
    answer(w, &ia, "{\"result\": \"A\"}");
    expect_results(c, &id, "{\"c\": [\"A\", \"B\"]}");
    frame_free(&ia);
    frame_free(&ib);
}

Test(node, worker_least_busy) {
    uint64_t w1 = worker("[{\"name\": \"work\"}]");
    uint64_t w2 = worker("[{\"name\": \"work\"}]");
    cr_assert_eq(count_functions("work"), 1, "one entry however many workers");
    uint64_t c = client();
    rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    cr_assert_eq(pending(w1), 1);
    cr_assert_eq(pending(w2), 1);
    rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    cr_assert_eq(pending(w1) + pending(w2), 3);
}

Test(node, worker_resources_pick_the_right_worker) {
    uint64_t w1 = worker("[{\"name\": \"work\", \"resources\": [\"gpu\"]}]");
    uint64_t w2 = worker("[{\"name\": \"work\", \"resources\": [\"ssd\"]}]");
    uint64_t c = client();
    rpc(c, "[{\"name\": \"a\", \"fun\": \"work\", \"locs\": [\"ssd\"]}]");
    cr_assert_eq(pending(w1), 0);
    cr_assert_eq(pending(w2), 1);
    /* No single worker has both. */
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\", \"locs\": [\"ssd\", \"gpu\"]}]");
    expect_rpc_error_free(c, &id, MPREG_E_NO_RESOURCES);
}

Test(node, worker_disconnect_mid_call) {
    uint64_t w = worker("[{\"name\": \"work\"}]");
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"},"
                      "{\"name\": \"b\", \"fun\": \"sleep\", \"args\": [1000]}]");
    frame inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    close_conn(w);
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_WORKER_GONE);
    cr_assert_str_eq(e.command, "a");
    cr_assert_not_null(strstr(mp_rpc_error_message(&e), "work"));
    mp_rpc_error_free(&e);
    /* The sleep was abandoned with it (what is left to wake up for is the
     * catalog's tombstone of the withdrawn function). */
    cr_assert_neq(mp_node_next_wakeup(F.node), T0 + 1000);
    advance(1000);
    expect_nothing(c);
    frame_free(&inv);
    /* And the function is gone. */
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    expect_rpc_error_free(c, &id, MPREG_E_NOT_FOUND);
}

Test(node, worker_functions_leave_the_catalog) {
    uint64_t w1 = worker("[{\"name\": \"work\", \"version\": \"1.0.0\"},"
                         "{\"name\": \"work\", \"version\": \"2.0.0\"}]");
    uint64_t w2 = worker("[{\"name\": \"work\", \"version\": \"1.0.0\"}]");
    cr_assert_eq(count_functions("work"), 2);
    close_conn(w1);
    cr_assert_eq(count_functions("work"), 1);
    mpreg_value cat = control(client(), "catalog");
    const mpreg_value *fns = get(&cat, "functions");
    bool found = false;
    for (size_t i = 0; i < fns->u.arr.len; i++) {
        const mpreg_value *f = &fns->u.arr.items[i];
        if (strcmp(get_str(f, "name"), "work") == 0) {
            cr_assert_str_eq(get_str(f, "version"), "1.0.0");
            cr_assert_str_eq(get_str(f, "node"), "n1");
            cr_assert_str_eq(get_str(f, "cluster"), "c1");
            found = true;
        }
    }
    cr_assert(found);
    mpreg_value_free(&cat);
    close_conn(w2);
    cr_assert_eq(count_functions("work"), 0);
}

Test(node, worker_register_errors) {
    uint64_t w = client();
    mp_id id = send_json(w, MP_KIND_REGISTER, NULL,
                         "{\"functions\": [{\"name\": \"f\", \"version\": \"one\"}]}");
    expect_error(w, &id, MPREG_E_BAD_SEMVER);
    id = send_json(
        w, MP_KIND_REGISTER, NULL,
        "{\"functions\": [{\"name\": \"f\"}, {\"name\": \"f\", \"version\": \"0.0.0\"}]}");
    expect_error(w, &id, MPREG_E_DUPLICATE);
    id = send_json(w, MP_KIND_REGISTER, NULL, "{\"functions\": [{\"name\": \"f\"}]}");
    frame fr = expect(w, MP_KIND_OK, &id);
    cr_assert_eq(get_int(&fr.payload, "registered"), 1);
    frame_free(&fr);
    id = send_json(w, MP_KIND_REGISTER, NULL, "{\"functions\": [{\"name\": \"f\"}]}");
    expect_error(w, &id, MPREG_E_DUPLICATE);
    id = send_json(w, MP_KIND_REGISTER, NULL,
                   "{\"functions\": [{\"name\": \"g\", \"resorces\": []}]}");
    expect_error(w, &id, MPREG_E_INVALID);
    id = send_json(w, MP_KIND_REGISTER, NULL, "{\"functions\": [{\"name\": \"\"}]}");
    expect_error(w, &id, MPREG_E_INVALID);
    id = send_json(w, MP_KIND_REGISTER, NULL, "{\"functions\": [{\"version\": \"1.0.0\"}]}");
    expect_error(w, &id, MPREG_E_MISSING_FIELD);
    id = send_json(w, MP_KIND_REGISTER, NULL, "{\"functions\": []}");
    expect_error(w, &id, MPREG_E_INVALID);
    /* All or nothing: a bad item keeps the good ones out. */
    id = send_json(w, MP_KIND_REGISTER, NULL,
                   "{\"functions\": [{\"name\": \"h\"}, {\"name\": \"i\", \"version\": \"x\"}]}");
    expect_error(w, &id, MPREG_E_BAD_SEMVER);
    cr_assert_eq(count_functions("h"), 0);
    /* Too many for one connection. */
    mp_buf b = MP_BUF_INIT;
    mp_buf_append(&b, "{\"functions\": [", 15);
    for (int i = 0; i < 256; i++) {
        char item[48];
        int len = snprintf(item, sizeof item, "%s{\"name\": \"fn%d\"}", i ? "," : "", i);
        mp_buf_append(&b, item, (size_t)len);
    }
    mp_buf_append(&b, "]}", 3);
    id = send_json(w, MP_KIND_REGISTER, NULL, (const char *)b.data);
    expect_error(w, &id, MPREG_E_LIMIT);
    mp_buf_free(&b);
    cr_assert_not(F.c[w].closed);
}

Test(node, worker_unregister) {
    uint64_t w = worker("[{\"name\": \"work\", \"version\": \"1.0.0\"},"
                        "{\"name\": \"work\", \"version\": \"2.0.0\"}, {\"name\": \"other\"}]");
    mp_id id = send_json(w, MP_KIND_UNREGISTER, NULL,
                         "{\"functions\": [{\"name\": \"work\", \"version\": \"2.0.0\"}]}");
    frame fr = expect(w, MP_KIND_OK, &id);
    cr_assert_eq(get_int(&fr.payload, "unregistered"), 1);
    frame_free(&fr);
    cr_assert_eq(count_functions("work"), 1);
    id = send_json(w, MP_KIND_UNREGISTER, NULL, "{\"functions\": [{\"name\": \"work\"}]}");
    fr = expect(w, MP_KIND_OK, &id);
    cr_assert_eq(get_int(&fr.payload, "unregistered"), 1);
    frame_free(&fr);
    cr_assert_eq(count_functions("work"), 0);
    cr_assert_eq(count_functions("other"), 1);
    id = send_json(w, MP_KIND_UNREGISTER, NULL, "{\"functions\": [{\"name\": \"nope\"}]}");
    fr = expect(w, MP_KIND_OK, &id);
    cr_assert_eq(get_int(&fr.payload, "unregistered"), 0);
    frame_free(&fr);
}

Test(node, worker_shares_entry_with_builtin) {
    /* A worker may offer what an in-process function offers: one entry. */
    uint64_t w = worker("[{\"name\": \"echo\", \"version\": \"1.0.0\", \"resources\": [\"gpu\"]}]");
    cr_assert_eq(count_functions("echo"), 1);
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]}]");
    expect_results(c, &id, "{\"a\": 1}"); /* in-process first on a tie */
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1], \"locs\": [\"gpu\"]}]");
    frame inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    answer(w, &inv, "{\"result\": \"from worker\"}");
    expect_results(c, &id, "{\"a\": \"from worker\"}");
    frame_free(&inv);
    close_conn(w);
    cr_assert_eq(count_functions("echo"), 1);
}

Test(node, client_gone_drops_its_requests) {
    uint64_t w = worker("[{\"name\": \"work\"}]");
    uint64_t c = client();
    rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    frame inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    close_conn(c);
    answer(w, &inv, "{\"result\": 1}"); /* late: dropped */
    expect_nothing(w);
    frame_free(&inv);
    mpreg_value st = control(client(), "status");
    cr_assert_eq(get_int(get(&st, "connections"), "workers"), 1);
    mpreg_value_free(&st);
}

/* --- the plugin API ------------------------------------------------------------------------- */

static mpreg_call *kept;

static void keep_fn(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                    mpreg_call *call) {
    (void)ctx;
    (void)args;
    (void)kwargs;
    kept = call;
}

Test(node, registry_api) {
    mpreg_registry *reg = mp_node_registry(F.node);
    cr_assert_eq(mpreg_plugin_api_version(), MPREG_PLUGIN_API_VERSION);
    mpreg_function_def def = {.name = "echo", .version = "1.0.0", .fn = kw_fn};
    cr_assert_eq(mpreg_register_function(reg, &def), MPREG_E_DUPLICATE);
    def.version = "nope";
    cr_assert_eq(mpreg_register_function(reg, &def), MPREG_E_BAD_SEMVER);
    def.name = "";
    def.version = NULL;
    cr_assert_eq(mpreg_register_function(reg, &def), MPREG_E_INVALID);
    mpreg_function_def later = {.name = "later", .fn = keep_fn};
    cr_assert_eq(mpreg_register_function(reg, &later), MPREG_OK);

    /* A function that finishes its call later, and one whose request went away. */
    uint64_t c = client();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"later\", \"version\": \"0.0.0\"}]");
    cr_assert_not_null(kept);
    expect_nothing(c);
    mpreg_call_return(kept, mpreg_str("done"));
    expect_results(c, &id, "{\"a\": \"done\"}");

    kept = NULL;
    id = rpc_timeout(c, "[{\"name\": \"a\", \"fun\": \"later\"}]", 10);
    advance(10);
    expect_rpc_error_free(c, &id, MPREG_E_DEADLINE);
    mpreg_call_fail(kept, MPREG_OK, NULL); /* goes nowhere, frees the call */
    expect_nothing(c);

    kept = NULL;
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"later\"}]");
    mpreg_call_fail(kept, MPREG_E_NO_SUCH_QUEUE, "custom");
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_NO_SUCH_QUEUE);
    cr_assert_str_eq(mp_rpc_error_message(&e), "custom");
    mp_rpc_error_free(&e);

    /* An orphan still held when the node goes is freed with it. */
    kept = NULL;
    rpc(c, "[{\"name\": \"a\", \"fun\": \"later\"}]");
    close_conn(c);
}

/* --- pub/sub ---------------------------------------------------------------------------------- */

Test(node, pubsub_wildcards) {
    uint64_t s = client();
    uint64_t p = client();
    uint64_t sub =
        subscribe(s, "{\"patterns\": [\"orders.*.created\", \"logs.#\"], \"tag\": \"t\"}");
    cr_assert_eq(sub, 1);
    publish(p, "orders.eu.created", "o1");
    publish(p, "logs", "l0");
    publish(p, "logs.a.b.c", "l3");
    publish(p, "orders.eu", "no");
    publish(p, "orders.eu.us.created", "no");
    expect_deliver(s, "orders.eu.created", "o1", false);
    expect_deliver(s, "logs", "l0", false);
    expect_deliver(s, "logs.a.b.c", "l3", false);
    expect_nothing(s);
    expect_nothing(p);
    /* The interest is in the catalog. */
    mpreg_value cat = control(p, "catalog");
    assert_json_eq(get(&cat, "topics"), "[{\"pattern\": \"logs.#\", \"node\": \"n1\"},"
                                        "{\"pattern\": \"orders.*.created\", \"node\": \"n1\"}]");
    mpreg_value_free(&cat);
}

Test(node, pubsub_deliver_headers) {
    uint64_t s = client();
    subscribe(s, "{\"patterns\": [\"a.b\", \"a.*\"], \"tag\": \"mine\"}");
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_PUBLISH);
    e.topic = mp_str_c("a.b");
    mp_envelope_add_header(&e, mp_str_c("trace"), mp_str_c("xyz"));
    mp_id id = send_env(s, &e);
    frame fr = expect(s, MP_KIND_DELIVER, NULL);
    cr_assert(mp_id_equal(&fr.env.id, &id));
    uint64_t sub;
    mp_str tag;
    cr_assert_eq(mp_pubsub_deliver_parse(&fr.env, &sub, &tag), MPREG_OK);
    cr_assert_eq(sub, 1);
    cr_assert(mp_str_eq_c(tag, "mine"));
    cr_assert(mp_str_eq_c(mp_envelope_header(&fr.env, "trace"), "xyz"));
    frame_free(&fr);
    expect_nothing(s); /* once, though both patterns match */
    /* The same message id again is a duplicate. */
    send_env(s, &e);
    expect_nothing(s);
}

Test(node, pubsub_queue_groups_across_connections) {
    uint64_t a = client();
    uint64_t b = client();
    uint64_t all = client();
    subscribe(a, "{\"patterns\": [\"jobs.*\"], \"tag\": \"a\", \"group\": \"g\"}");
    subscribe(b, "{\"patterns\": [\"jobs.*\"], \"tag\": \"b\", \"group\": \"g\"}");
    subscribe(all, "{\"patterns\": [\"jobs.*\"], \"tag\": \"all\"}");
    uint64_t p = client();
    for (int i = 0; i < 4; i++) {
        publish(p, "jobs.x", "j");
    }
    cr_assert_eq(pending(a), 2);
    cr_assert_eq(pending(b), 2);
    cr_assert_eq(pending(all), 4);
    /* A slow member is skipped while another can take the message. */
    skip_all(a);
    skip_all(b);
    F.c[a].high = true;
    publish(p, "jobs.x", "j"); /* a's turn: dropped at a, a goes shedding */
    for (int i = 0; i < 4; i++) {
        publish(p, "jobs.x", "j");
    }
    cr_assert_eq(pending(a), 0);
    cr_assert_eq(pending(b), 4);
}

Test(node, pubsub_replay) {
    teardown();
    mp_node_config cfg = {.node_id = "n1",
                          .pubsub = {.retain_per_topic = 10, .retain_max_bytes = 1 << 20}};
    start_node(&cfg);
    uint64_t p = client();
    publish(p, "t.a", "1");
    publish(p, "t.a", "2");
    publish(p, "t.b", "3");
    publish(p, "u.a", "4");
    uint64_t s = client();
    mp_id id = send_json(s, MP_KIND_SUBSCRIBE, NULL,
                         "{\"patterns\": [\"t.*\"], \"tag\": \"r\", \"replay_last\": 2}");
    /* The OK first, then the replay, oldest first. */
    frame fr = expect(s, MP_KIND_OK, &id);
    frame_free(&fr);
    expect_deliver(s, "t.a", "2", true);
    expect_deliver(s, "t.b", "3", true);
    expect_nothing(s);
    publish(p, "t.c", "5");
    expect_deliver(s, "t.c", "5", false);
}

Test(node, pubsub_slow_subscriber) {
    uint64_t s = client();
    uint64_t sub = subscribe(s, "{\"patterns\": [\"x\"], \"tag\": \"t\"}");
    uint64_t p = client();
    publish(p, "x", "1");
    expect_deliver(s, "x", "1", false);
    F.c[s].high = true;
    publish(p, "x", "2"); /* over high water: shed at once */
    publish(p, "x", "3"); /* the service drops it */
    publish(p, "x", "4");
    expect_nothing(s);
    cr_assert_not(F.c[s].closed);
    cr_assert_eq(F.c[s].drops, 1);
    mpreg_value st = control(p, "status");
    cr_assert_eq(get_int(get(&st, "counters"), "dropped"), 3);
    cr_assert_eq(get_int(get(&st, "counters"), "published"), 4);
    cr_assert_eq(get_int(get(&st, "counters"), "delivered"), 1);
    mpreg_value_free(&st);
    cr_assert_eq(sub, 1);
    /* Exact per subscription: the one the node shed as it wrote (2) is a
     * drop there too, not a delivery. */
    mpreg_value mine = control(s, "subscriptions");
    assert_json_eq(&mine, "{\"subscriptions\": [{\"subscription\": 1, \"delivered\": 1, "
                          "\"dropped\": 3}]}");
    mpreg_value_free(&mine);
    /* Drained: accepted again, and the driver hears about the drops. */
    F.c[s].high = false;
    mp_node_on_writable(F.node, s, F.now);
    cr_assert_eq(F.c[s].drops, 3);
    /* The subscriber hears it too, from the next DELIVER: 3 missed. */
    publish(p, "x", "5");
    expect_deliver_missed(s, "5", 3);
    publish(p, "x", "6");
    expect_deliver_missed(s, "6", 0);
}

Test(node, pubsub_missed_counts_each_subscription_of_a_connection) {
    uint64_t s = client();
    uint64_t a = subscribe(s, "{\"patterns\": [\"x.*\"], \"tag\": \"a\"}");
    uint64_t b = subscribe(s, "{\"patterns\": [\"x.b\"], \"tag\": \"b\"}");
    uint64_t p = client();
    F.c[s].high = true;
    publish(p, "x.a", "1"); /* a: shed as the node writes */
    publish(p, "x.b", "2"); /* a and b: dropped by the service */
    publish(p, "x.a", "3"); /* a */
    F.c[s].high = false;
    mp_node_on_writable(F.node, s, F.now);
    publish(p, "x.b", "4");
    /* One DELIVER per subscription, each with its own count. */
    for (int i = 0; i < 2; i++) {
        frame fr = expect(s, MP_KIND_DELIVER, NULL);
        uint64_t sub = 0, missed = 0;
        mp_str tag;
        cr_assert_eq(mp_pubsub_deliver_parse(&fr.env, &sub, &tag), MPREG_OK);
        cr_assert_eq(mp_pubsub_deliver_missed(&fr.env, &missed), MPREG_OK);
        cr_assert_eq(missed, sub == a ? 3 : 1, "subscription %llu missed %llu",
                     (unsigned long long)sub, (unsigned long long)missed);
        cr_assert(sub == a || sub == b);
        frame_free(&fr);
    }
    mpreg_value mine = control(s, "subscriptions");
    char want[256];
    snprintf(want, sizeof want,
             "{\"subscriptions\": [{\"subscription\": %llu, \"delivered\": 1, \"dropped\": 3}, "
             "{\"subscription\": %llu, \"delivered\": 1, \"dropped\": 1}]}",
             (unsigned long long)a, (unsigned long long)b);
    assert_json_eq(&mine, want);
    mpreg_value_free(&mine);
    mpreg_value st = control(p, "status");
    cr_assert_eq(get_int(get(&st, "counters"), "delivered"), 2);
    cr_assert_eq(get_int(get(&st, "counters"), "dropped"), 4);
    mpreg_value_free(&st);
}

Test(node, pubsub_stalls_a_publisher_that_outruns_a_subscriber) {
    uint64_t s = client();
    subscribe(s, "{\"patterns\": [\"x\"], \"tag\": \"t\"}");
    uint64_t p = client();
    int calls = F.c[p].reading_calls;
    /* Past the soft mark the message still goes out, and the publisher
     * stops being read instead of the subscriber being shed. */
    F.c[s].soft = true;
    F.c[s].pending = 5u << 20;
    publish(p, "x", "1");
    expect_deliver(s, "x", "1", false);
    cr_assert_eq(F.c[p].reading_calls, calls + 1);
    cr_assert_not(F.c[p].reading);
    publish(p, "x", "2"); /* already stalled: delivered, no second pause */
    expect_deliver(s, "x", "2", false);
    cr_assert_eq(F.c[p].reading_calls, calls + 1);
    cr_assert_eq(F.c[s].drops, 0);
    /* The stall lasts while the subscriber is still past the mark and
     * draining (here 64 KiB every 100 ms), not a fixed moment: a publisher
     * let go early would only fill the subscriber up to the point where it
     * is shed. */
    for (int ms = 0; ms < 3000; ms += 2) {
        advance(2);
        if (ms % 100 == 0) {
            F.c[s].pending -= 64u * 1024u;
        }
        cr_assert_not(F.c[p].reading, "the stall ended at %d ms, the subscriber still behind", ms);
    }
    cr_assert_eq(F.c[p].reading_calls, calls + 1);
    /* Back under the mark: the publisher is read again. */
    F.c[s].soft = false;
    advance(2);
    cr_assert_eq(F.c[p].reading_calls, calls + 2);
    cr_assert(F.c[p].reading);
    cr_assert_eq(mp_node_next_wakeup(F.node), UINT64_MAX);
    cr_assert_eq(F.c[s].drops, 0);
}

Test(node, pubsub_a_stuck_subscriber_stalls_a_publisher_for_a_second_at_most) {
    uint64_t s = client();
    subscribe(s, "{\"patterns\": [\"x\"], \"tag\": \"t\"}");
    uint64_t p = client();
    int calls = F.c[p].reading_calls;
    F.c[s].soft = true;
    F.c[s].pending = 5u << 20; /* and it never drains */
    publish(p, "x", "1");
    expect_deliver(s, "x", "1", false);
    cr_assert_not(F.c[p].reading);
    uint64_t t0 = F.now;
    while (!F.c[p].reading) {
        advance(2);
        cr_assert_leq(F.now - t0, 1010, "the stall outlasted its bound");
    }
    cr_assert_geq(F.now - t0, 1000, "released after %llu ms, before the bound",
                  (unsigned long long)(F.now - t0));
    cr_assert_eq(F.c[p].reading_calls, calls + 2);
    /* It stalls nobody now: its output fills at the publisher's pace (and
     * is shed at high water, as ever). */
    publish(p, "x", "2");
    expect_deliver(s, "x", "2", false);
    cr_assert(F.c[p].reading);
    cr_assert_eq(F.c[p].reading_calls, calls + 2);
    /* Back under the soft mark it is a subscriber like any other. */
    F.c[s].soft = false;
    publish(p, "x", "3");
    expect_deliver(s, "x", "3", false);
    F.c[s].soft = true;
    publish(p, "x", "4");
    expect_deliver(s, "x", "4", false);
    cr_assert_not(F.c[p].reading, "stalled again");
    /* A subscriber that goes away ends the stall at the next look. */
    mp_node_on_close(F.node, s, MPREG_E_CLOSED, F.now);
    advance(2);
    cr_assert(F.c[p].reading);
}

Test(node, pubsub_goes_over_high_water_while_delivering) {
    uint64_t s = client();
    subscribe(s, "{\"patterns\": [\"x\"], \"tag\": \"t\"}");
    uint64_t p = client();
    publish(p, "x", "1");
    expect_deliver(s, "x", "1", false);
    /* The delivery that fills the buffer goes out; the next ones do not. */
    F.c[s].high = false;
    publish(p, "x", "2");
    F.c[s].high = true;
    expect_deliver(s, "x", "2", false);
    publish(p, "x", "3");
    expect_nothing(s);
}

Test(node, pubsub_unsubscribe) {
    uint64_t s = client();
    uint64_t sub = subscribe(s, "{\"patterns\": [\"x.#\"], \"tag\": \"t\"}");
    char payload[64];
    snprintf(payload, sizeof payload, "{\"subscription\": %llu}", (unsigned long long)sub);
    mp_id id = send_json(s, MP_KIND_UNSUBSCRIBE, NULL, payload);
    frame fr = expect(s, MP_KIND_OK, &id);
    cr_assert_eq(fr.env.payload.len, 0);
    frame_free(&fr);
    publish(s, "x.y", "1");
    expect_nothing(s);
    id = send_json(s, MP_KIND_UNSUBSCRIBE, NULL, payload);
    expect_error(s, &id, MPREG_E_NOT_FOUND);
    /* Nobody may end another connection's subscription. */
    sub = subscribe(s, "{\"patterns\": [\"x.#\"], \"tag\": \"t\"}");
    uint64_t other = client();
    snprintf(payload, sizeof payload, "{\"subscription\": %llu}", (unsigned long long)sub);
    id = send_json(other, MP_KIND_UNSUBSCRIBE, NULL, payload);
    expect_error(other, &id, MPREG_E_NOT_FOUND);
    mpreg_value cat = control(other, "catalog");
    cr_assert_eq(get(&cat, "topics")->u.arr.len, 1);
    mpreg_value_free(&cat);
}

Test(node, pubsub_subscriptions_die_with_connection) {
    uint64_t s = client();
    subscribe(s, "{\"patterns\": [\"a.*\", \"b\"], \"tag\": \"t\"}");
    subscribe(s, "{\"patterns\": [\"b\"], \"tag\": \"u\"}");
    uint64_t p = client();
    mpreg_value st = control(p, "status");
    cr_assert_eq(get_int(&st, "subscriptions"), 2);
    mpreg_value_free(&st);
    close_conn(s);
    st = control(p, "status");
    cr_assert_eq(get_int(&st, "subscriptions"), 0);
    mpreg_value_free(&st);
    mpreg_value cat = control(p, "catalog");
    cr_assert_eq(get(&cat, "topics")->u.arr.len, 0);
    mpreg_value_free(&cat);
    publish(p, "b", "x"); /* nobody: not an error */
    expect_nothing(p);
}

Test(node, pubsub_subscribe_errors) {
    uint64_t s = client();
    mp_id id = send_json(s, MP_KIND_SUBSCRIBE, NULL, "{\"patterns\": [\"a..b\"], \"tag\": \"t\"}");
    expect_error(s, &id, MPREG_E_TOPIC);
    id = send_json(s, MP_KIND_SUBSCRIBE, NULL, "{\"patterns\": [\"a\"]}");
    expect_error(s, &id, MPREG_E_MISSING_FIELD);
    id = send_json(s, MP_KIND_SUBSCRIBE, NULL,
                   "{\"patterns\": [\"a\"], \"tag\": \"t\", \"replay_lats\": 1}");
    expect_error(s, &id, MPREG_E_INVALID);
}

/* --- queue groups across nodes ------------------------------------------------------ */

/* An inbound peer link from node `node` of this cluster. */
static uint64_t peer_as(const char *node) {
    uint64_t c = open_conn();
    char hello[128];
    snprintf(hello, sizeof hello, "{\"role\": \"peer\", \"node\": \"%s\", \"cluster\": \"c1\"}",
             node);
    mp_id id = send_json(c, MP_KIND_HELLO, NULL, hello);
    frame fr = expect(c, MP_KIND_WELCOME, &id);
    frame_free(&fr);
    return c;
}

/* Many subscribers stuck at once cost a publisher one bound, not one each:
 * the clock is each subscriber's, started when it fell behind. */
Test(node, pubsub_stuck_subscribers_together_stall_a_publisher_for_a_second) {
    enum { K = 4 };
    uint64_t subs[K];
    for (int i = 0; i < K; i++) {
        subs[i] = client();
        subscribe(subs[i], "{\"patterns\": [\"x\"], \"tag\": \"t\"}");
        F.c[subs[i]].soft = true;
        F.c[subs[i]].pending = 5u << 20;
    }
    uint64_t p = client();
    uint64_t t0 = F.now;
    for (int m = 0; m < 10; m++) {
        publish(p, "x", "m");
        while (!F.c[p].reading) {
            advance(2);
        }
    }
    cr_assert_leq(F.now - t0, 1100, "%d stuck subscribers held the publisher %llu ms", K,
                  (unsigned long long)(F.now - t0));
    for (int i = 0; i < K; i++) {
        cr_assert_eq(pending(subs[i]), 10, "every message still went to subscriber %d", i);
    }
}

/* A peer link carries the other node's gossip and RPC too: a subscriber
 * here that is behind pauses it for one look (2 ms), not until it drains. */
Test(node, pubsub_a_peer_link_is_stalled_for_a_moment_only) {
    uint64_t s = client();
    subscribe(s, "{\"patterns\": [\"x\"], \"tag\": \"t\"}");
    uint64_t peer = peer_as("n2");
    F.c[s].soft = true;
    F.c[s].pending = 5u << 20;
    publish(peer, "x", "1");
    expect_deliver(s, "x", "1", false);
    cr_assert_not(F.c[peer].reading);
    advance(2);
    cr_assert(F.c[peer].reading, "the peer link waited for the subscriber");
}

static void remote_group_entry(const char *node, const char *pattern, const char *group) {
    mp_entry e;
    cr_assert_eq(mp_entry_topic_group(&e, node, "c1", pattern, group), MPREG_OK);
    remote_entry(&e);
}

/* The PUBLISHes a peer link carried since last asked: each must be id, and
 * carry the "mp-deliver" value want (NULL: no such header). */
static int forwarded(uint64_t peer, const mp_id *id, const char *want) {
    int n = 0;
    frame fr;
    while (next_frame(peer, &fr)) {
        cr_assert_eq(fr.env.kind, MP_KIND_PUBLISH, "a peer gets PUBLISH, not %s",
                     mp_kind_name(fr.env.kind));
        cr_assert(mp_id_equal(&fr.env.id, id), "the message keeps its id");
        mp_str h = mp_envelope_header(&fr.env, MP_PUBSUB_DELIVER_HEADER);
        if (want) {
            cr_assert(mp_str_eq_c(h, want), "mp-deliver %.*s, want %s", (int)h.len, h.ptr, want);
        } else {
            cr_assert_null(h.ptr, "no mp-deliver for the plain part alone");
        }
        frame_free(&fr);
        n++;
    }
    return n;
}

static int delivered(uint64_t conn) {
    int n = 0;
    frame fr;
    while (next_frame(conn, &fr)) {
        cr_assert_eq(fr.env.kind, MP_KIND_DELIVER);
        cr_assert_null(mp_envelope_header(&fr.env, MP_PUBSUB_DELIVER_HEADER).ptr);
        frame_free(&fr);
        n++;
    }
    return n;
}

/* Members of group g here, on n2 and on n3: each message goes to exactly
 * one of the three nodes, which delivers it to one member; all three get
 * some. The plain subscribers, here and on n2, get every message. */
Test(node, pubsub_queue_group_spans_the_cluster) {
    uint64_t p2 = peer_as("n2"), p3 = peer_as("n3");
    uint64_t member = client(), plain = client();
    subscribe(member, "{\"patterns\": [\"jobs.#\"], \"tag\": \"w\", \"group\": \"g\"}");
    subscribe(plain, "{\"patterns\": [\"jobs.*\"], \"tag\": \"p\"}");
    remote_group_entry("n2", "jobs.*", "g");
    remote_group_entry("n3", "#", "g");
    remote_group_entry("n2", "jobs.a", "");
    uint64_t pub = client();
    int here = 0, at2 = 0, at3 = 0;
    for (int k = 0; k < 90; k++) {
        mp_id id = publish(pub, "jobs.a", "x");
        cr_assert_eq(delivered(plain), 1, "the plain subscriber here, every time");
        int h = delivered(member);
        /* n2 always has the plain part; g only when it was chosen. */
        frame fr;
        cr_assert(next_frame(p2, &fr), "n2 gets every message");
        mp_str v = mp_envelope_header(&fr.env, MP_PUBSUB_DELIVER_HEADER);
        cr_assert(v.ptr == NULL || mp_str_eq_c(v, "0:1:g"), "%.*s", (int)v.len, v.ptr);
        int g2 = v.ptr != NULL;
        frame_free(&fr);
        cr_assert_eq(forwarded(p2, &id, NULL), 0, "n2 once");
        int g3 = forwarded(p3, &id, "1:g");
        cr_assert_eq(h + g2 + g3, 1, "message %d: group g got it %d times", k, h + g2 + g3);
        here += h;
        at2 += g2;
        at3 += g3;
    }
    cr_assert(here > 10 && at2 > 10 && at3 > 10, "spread: %d here, %d on n2, %d on n3", here, at2,
              at3);
    expect_nothing(pub);
    /* A topic only n3's members match: always n3, and nothing for n2. */
    mp_id id = publish(pub, "other", "x");
    cr_assert_eq(forwarded(p3, &id, "1:g"), 1);
    cr_assert_eq(forwarded(p2, &id, NULL), 0);
    cr_assert_eq(delivered(member), 0);
}

/* A PUBLISH from a peer delivers the parts its mp-deliver names; without
 * one (a node from before groups spanned the cluster), the plain part. The
 * header never reaches a subscriber, other headers do. */
Test(node, pubsub_peer_publish_delivers_the_parts_it_names) {
    uint64_t member = client(), other = client(), plain = client();
    subscribe(member, "{\"patterns\": [\"a.*\"], \"tag\": \"m\", \"group\": \"g\"}");
    subscribe(other, "{\"patterns\": [\"a.*\"], \"tag\": \"o\", \"group\": \"h\"}");
    subscribe(plain, "{\"patterns\": [\"a.b\"], \"tag\": \"p\"}");
    uint64_t peer = peer_as("n2");
    static const struct {
        const char *value; /* NULL: no header */
        bool before;       /* the header before a client header, not last */
        int member, other, plain;
    } cases[] = {
        {NULL, false, 0, 0, 1},    {"1:g", false, 1, 0, 0},   {"0:", true, 0, 0, 1},
        {"0:1:h", false, 0, 1, 1}, {"1:h1:g", true, 1, 1, 0}, {"4:none", false, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp_envelope e;
        mp_envelope_init(&e, MP_KIND_PUBLISH);
        e.topic = mp_str_c("a.b");
        e.payload = (mp_bytes){(const uint8_t *)"x", 1};
        if (cases[i].value && cases[i].before) {
            mp_envelope_add_header(&e, mp_str_c(MP_PUBSUB_DELIVER_HEADER),
                                   mp_str_c(cases[i].value));
        }
        mp_envelope_add_header(&e, mp_str_c("trace"), mp_str_c("t1"));
        if (cases[i].value && !cases[i].before) {
            mp_envelope_add_header(&e, mp_str_c(MP_PUBSUB_DELIVER_HEADER),
                                   mp_str_c(cases[i].value));
        }
        mp_envelope_add_header(&e, mp_str_c("mp-future"), mp_str_c("for nodes"));
        send_env(peer, &e);
        struct {
            uint64_t conn;
            int want;
        } who[] = {{member, cases[i].member}, {other, cases[i].other}, {plain, cases[i].plain}};
        for (size_t w = 0; w < 3; w++) {
            frame fr;
            int n = 0;
            while (next_frame(who[w].conn, &fr)) {
                cr_assert(mp_str_eq_c(mp_envelope_header(&fr.env, "trace"), "t1"));
                cr_assert_null(mp_envelope_header(&fr.env, MP_PUBSUB_DELIVER_HEADER).ptr);
                cr_assert_null(mp_envelope_header(&fr.env, "mp-future").ptr);
                frame_free(&fr);
                n++;
            }
            cr_assert_eq(n, who[w].want, "case %zu conn %zu: %d deliveries", i, w, n);
        }
        expect_nothing(peer);
    }
    /* A value that does not parse: refused to the peer, delivered to nobody. */
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_PUBLISH);
    e.topic = mp_str_c("a.b");
    mp_envelope_add_header(&e, mp_str_c(MP_PUBSUB_DELIVER_HEADER), mp_str_c("2:g"));
    mp_id id = send_env(peer, &e);
    expect_error(peer, &id, MPREG_E_INVALID);
    cr_assert_eq(delivered(member) + delivered(other) + delivered(plain), 0);
}

Test(node, pubsub_clients_may_not_use_node_headers) {
    uint64_t c = client();
    subscribe(c, "{\"patterns\": [\"a\"], \"tag\": \"t\"}");
    mp_envelope e;
    mp_envelope_init(&e, MP_KIND_PUBLISH);
    e.topic = mp_str_c("a");
    mp_envelope_add_header(&e, mp_str_c(MP_PUBSUB_DELIVER_HEADER), mp_str_c("1:g"));
    mp_id id = send_env(c, &e);
    expect_error(c, &id, MPREG_E_INVALID);
    expect_nothing(c);
    mp_envelope_init(&e, MP_KIND_SUBSCRIBE);
    mp_envelope_add_header(&e, mp_str_c("mp-anything"), mp_str_c(""));
    id = send_env(c, &e);
    expect_error(c, &id, MPREG_E_INVALID);
    /* At most MP_PUBSUB_MAX_MSG_HEADERS, whether anyone here is interested
     * or not: a node adds its own when it forwards. */
    mp_envelope_init(&e, MP_KIND_PUBLISH);
    e.topic = mp_str_c("nobody.here");
    char keys[MP_PUBSUB_MAX_MSG_HEADERS + 1][8];
    for (int i = 0; i <= MP_PUBSUB_MAX_MSG_HEADERS; i++) {
        snprintf(keys[i], sizeof keys[i], "h%d", i);
        mp_envelope_add_header(&e, mp_str_c(keys[i]), mp_str_c("v"));
    }
    id = send_env(c, &e);
    expect_error(c, &id, MPREG_E_TOO_LARGE);
    e.header_count--;
    e.id = (mp_id){{0}};
    send_env(c, &e);
    expect_nothing(c);
}

/* --- control ------------------------------------------------------------------------------------
 */

Test(node, status_reply) {
    uint64_t c = client();
    worker("[{\"name\": \"work\"}]");
    open_conn(); /* still handshaking */
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"nosuch\"}]");
    expect_rpc_error_free(c, &id, MPREG_E_NOT_FOUND);
    id = rpc(c, "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]}]");
    expect_results(c, &id, "{\"a\": 1}");
    advance(1234);
    mpreg_value st = control(c, "status");
    cr_assert_str_eq(get_str(&st, "node"), "n1");
    cr_assert_str_eq(get_str(&st, "name"), "alpha");
    cr_assert_str_eq(get_str(&st, "cluster"), "c1");
    cr_assert_eq(get_int(&st, "incarnation"), 1);
    cr_assert_eq(get_int(&st, "uptime_ms"), 1234);
    const mpreg_value *conns = get(&st, "connections");
    cr_assert_eq(get_int(conns, "clients"), 2);
    cr_assert_eq(get_int(conns, "workers"), 1);
    cr_assert_eq(get_int(conns, "peers"), 0);
    cr_assert_eq(get_int(conns, "handshaking"), 1);
    cr_assert_eq(get_int(&st, "functions"), 6); /* 5 built-ins and work */
    cr_assert_eq(get_int(&st, "subscriptions"), 0);
    const mpreg_value *k = get(&st, "counters");
    cr_assert_eq(get_int(k, "rpc_requests"), 2);
    cr_assert_eq(get_int(k, "rpc_errors"), 1);
    cr_assert_eq(get_int(k, "published"), 0);
    mpreg_value_free(&st);
    mpreg_value direct;
    cr_assert_eq(mp_node_status(F.node, F.now, &direct), MPREG_OK);
    cr_assert_eq(direct.type, MPREG_MAP);
    mpreg_value_free(&direct);
}

Test(node, catalog_reply) {
    uint64_t c = client();
    mpreg_value cat = control(c, "catalog");
    const mpreg_value *fns = get(&cat, "functions");
    cr_assert_eq(fns->u.arr.len, 5);
    const char *names[] = {"echo", "echos", "fail", "sleep", "whoami"}; /* sorted */
    for (size_t i = 0; i < 5; i++) {
        const mpreg_value *f = &fns->u.arr.items[i];
        cr_assert_str_eq(get_str(f, "name"), names[i]);
        cr_assert_str_eq(get_str(f, "version"), "1.0.0");
        cr_assert_str_eq(get_str(f, "function_id"), "");
        cr_assert_str_eq(get_str(f, "node"), "n1");
        assert_json_eq(get(f, "resources"), "[]");
    }
    assert_json_eq(get(&cat, "nodes"), "[{\"node\": \"n1\", \"name\": \"alpha\", \"cluster\": "
                                       "\"c1\", \"endpoints\": [], \"incarnation\": 1}]");
    assert_json_eq(get(&cat, "topics"), "[]");
    mpreg_value_free(&cat);
    cr_assert_not_null(mp_node_catalog(F.node));
    cr_assert_str_eq(mp_node_id(F.node), "n1");
}

/* --- stop ----------------------------------------------------------------------------------------
 */

Test(node, stop) {
    uint64_t c = client();
    uint64_t w = worker("[{\"name\": \"work\"}]");
    uint64_t h = open_conn();
    mp_id id = rpc(c, "[{\"name\": \"a\", \"fun\": \"sleep\", \"args\": [1000]}]");
    mp_id id2 = rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}]");
    skip_all(w);
    mp_node_stop(F.node, F.now);
    expect_rpc_error_free(c, &id, MPREG_E_CLOSED);
    expect_rpc_error_free(c, &id2, MPREG_E_CLOSED);
    frame fr = expect(c, MP_KIND_GOODBYE, NULL);
    frame_free(&fr);
    fr = expect(w, MP_KIND_GOODBYE, NULL);
    frame_free(&fr);
    fr = expect(h, MP_KIND_GOODBYE, NULL);
    frame_free(&fr);
    cr_assert(F.c[c].closed && F.c[c].flush);
    cr_assert(F.c[w].closed && F.c[w].flush);
    cr_assert(F.c[h].closed && F.c[h].flush);
    cr_assert_eq(mp_node_next_wakeup(F.node), UINT64_MAX);
    /* New connections are refused; closes arrive later. */
    uint64_t late = open_conn();
    cr_assert(F.c[late].closed);
    close_conn(w);
    close_conn(c);
    close_conn(h);
    mp_node_stop(F.node, F.now); /* twice is harmless */
}

/* --- determinism
 * ----------------------------------------------------------------------------------- */

static void run_script(mp_buf *transcript) {
    uint64_t c = client();
    uint64_t w = worker("[{\"name\": \"work\"}]");
    subscribe(c, "{\"patterns\": [\"a.#\"], \"tag\": \"t\"}");
    rpc(c, "[{\"name\": \"a\", \"fun\": \"work\"}, {\"name\": \"b\", \"fun\": \"whoami\"}]");
    frame inv = expect(w, MP_KIND_RPC_INVOKE, NULL);
    answer(w, &inv, "{\"result\": [1, 2, 3]}");
    frame_free(&inv);
    publish(w, "a.b", "hello");
    mp_buf_append(transcript, F.c[c].out.data, F.c[c].out.len);
    mp_buf_append(transcript, F.c[w].out.data, F.c[w].out.len);
}

Test(node, deterministic_with_a_seed) {
    mp_buf one = MP_BUF_INIT, two = MP_BUF_INIT;
    run_script(&one);
    teardown();
    default_node();
    run_script(&two);
    cr_assert_eq(one.len, two.len);
    cr_assert(memcmp(one.data, two.data, one.len) == 0);
    mp_buf_free(&one);
    mp_buf_free(&two);
}

Test(node, bad_config) {
    mp_xoshiro r;
    mp_xoshiro_seed(&r, 1);
    mp_node_config cfg = {.node_id = NULL};
    cr_assert_null(mp_node_new(&cfg, &IO, &r.rng, T0));
    cfg.node_id = "";
    cr_assert_null(mp_node_new(&cfg, &IO, &r.rng, T0));
    cfg.node_id = "n";
    cr_assert_null(mp_node_new(&cfg, &IO, NULL, T0));
    mp_node_io io = IO;
    io.close = NULL;
    cr_assert_null(mp_node_new(&cfg, &io, &r.rng, T0));
    const char *res[] = {""};
    cfg.resources = res;
    cfg.resource_count = 1;
    cr_assert_null(mp_node_new(&cfg, &IO, &r.rng, T0));
    cr_assert_str_eq(mp_log_level_name(MP_LOG_WARN), "warn");
}

/* ---- limits: every client-held resource is bounded (PROTOCOL §7.7) ------------ */

/* The next frame is an OK to id (its payload not looked at). */
static void expect_ok(uint64_t conn, const mp_id *id) {
    frame fr = expect(conn, MP_KIND_OK, id);
    frame_free(&fr);
}

static void limited_node(const mp_node_limits *limits) {
    teardown(); /* the suite's default node */
    mp_node_config cfg = {.node_id = "n1",
                          .name = "alpha",
                          .cluster = "c1",
                          .incarnation = 1,
                          .log_level = MP_LOG_DEBUG,
                          .limits = *limits};
    start_node(&cfg);
}

/* The next frame is ERROR 505 whose message names the limit. */
static void expect_limit(uint64_t conn, const mp_id *id, const char *name) {
    frame fr = expect(conn, MP_KIND_ERROR, id);
    cr_assert_eq(get_int(&fr.payload, "code"), MPREG_E_LIMIT);
    const mpreg_value *m = mpreg_map_get(&fr.payload, "message");
    cr_assert(m && m->type == MPREG_STR && strstr(m->u.str.ptr, name), "message %s names no %s",
              m ? m->u.str.ptr : "(none)", name);
    frame_free(&fr);
}

static int64_t limit_used(const char *name) {
    uint64_t c = client();
    mpreg_value st = control(c, "status");
    const mpreg_value *limits = mpreg_map_get(&st, "limits");
    cr_assert_not_null(limits, "status has no limits");
    const mpreg_value *one = mpreg_map_get(limits, name);
    cr_assert_not_null(one, "status.limits has no %s", name);
    int64_t used = get_int(one, "used");
    mpreg_value_free(&st);
    close_conn(c);
    return used;
}

Test(node, subscriptions_and_patterns_are_bounded_per_connection_and_node, .fini = teardown) {
    mp_node_limits l = {
        .subs_per_conn = 3, .subs_per_node = 5, .patterns_per_conn = 4, .patterns_per_node = 6};
    limited_node(&l);
    uint64_t a = client();
    subscribe(a, "{\"patterns\": [\"a.1\"], \"tag\": \"\"}");
    subscribe(a, "{\"patterns\": [\"a.2\", \"a.3\"], \"tag\": \"\"}");
    /* 3 patterns held; two more would make 5 > 4. */
    mp_id id =
        send_json(a, MP_KIND_SUBSCRIBE, NULL, "{\"patterns\": [\"a.4\", \"a.5\"], \"tag\": \"\"}");
    expect_limit(a, &id, "patterns_per_conn");
    uint64_t third = subscribe(a, "{\"patterns\": [\"a.4\"], \"tag\": \"\"}");
    id = send_json(a, MP_KIND_SUBSCRIBE, NULL, "{\"patterns\": [\"x\"], \"tag\": \"\"}");
    expect_limit(a, &id, "subs_per_conn");
    /* Node-wide: 4 patterns held by a; b may add 2 more, not 3. */
    uint64_t b = client();
    id = send_json(b, MP_KIND_SUBSCRIBE, NULL,
                   "{\"patterns\": [\"b.1\", \"b.2\", \"b.3\"], \"tag\": \"\"}");
    expect_limit(b, &id, "patterns_per_node");
    subscribe(b, "{\"patterns\": [\"b.1\", \"b.2\"], \"tag\": \"\"}");
    cr_assert_eq(limit_used("patterns_per_node"), 6);
    cr_assert_eq(limit_used("subs_per_node"), 4);
    /* An unsubscribe gives its share back. */
    char unsub[64];
    snprintf(unsub, sizeof unsub, "{\"subscription\": %llu}", (unsigned long long)third);
    id = send_json(a, MP_KIND_UNSUBSCRIBE, NULL, unsub);
    expect_ok(a, &id);
    cr_assert_eq(limit_used("patterns_per_node"), 5);
    /* A closed connection gives everything back. */
    close_conn(a);
    cr_assert_eq(limit_used("patterns_per_node"), 2);
    cr_assert_eq(limit_used("subs_per_node"), 1);
    /* The refused ones were told; nothing else changed for b. */
    subscribe(b, "{\"patterns\": [\"b.9\"], \"tag\": \"\"}");
}

/* Churn: each pattern subscribed and dropped leaves a tombstone in the
 * catalog for the tombstone TTL; past the limit new ones are refused until
 * old ones expire. */
Test(node, subscription_churn_is_bounded_by_tombstones, .fini = teardown) {
    mp_node_limits l = {.tombstones = 6};
    limited_node(&l);
    uint64_t a = client();
    int refused_at = -1;
    for (int i = 0; i < 10 && refused_at < 0; i++) {
        char json[96];
        snprintf(json, sizeof json,
                 "{\"patterns\": [\"churn.%d.a\", \"churn.%d.b\"], \"tag\": \"\"}", i, i);
        mp_id id = send_json(a, MP_KIND_SUBSCRIBE, NULL, json);
        frame fr;
        cr_assert(next_frame(a, &fr), "no answer to SUBSCRIBE %d", i);
        cr_assert(mp_id_equal(&fr.env.correlation_id, &id));
        if (fr.env.kind == MP_KIND_ERROR) {
            cr_assert_eq(get_int(&fr.payload, "code"), MPREG_E_LIMIT);
            const mpreg_value *m = mpreg_map_get(&fr.payload, "message");
            cr_assert(m && strstr(m->u.str.ptr, "tombstones"));
            refused_at = i;
            frame_free(&fr);
            break;
        }
        cr_assert_eq(fr.env.kind, MP_KIND_OK);
        uint64_t sub = (uint64_t)get_int(&fr.payload, "subscription");
        frame_free(&fr);
        char unsub[64];
        snprintf(unsub, sizeof unsub, "{\"subscription\": %llu}", (unsigned long long)sub);
        id = send_json(a, MP_KIND_UNSUBSCRIBE, NULL, unsub);
        expect_ok(a, &id);
    }
    /* Two tombstones a round: the fourth SUBSCRIBE finds six. */
    cr_assert_eq(refused_at, 3, "refused at round %d", refused_at);
    cr_assert_eq(limit_used("tombstones"), 6);
    /* They expire (5 minutes by default), and then it goes on. */
    advance(5u * 60u * 1000u + 1000u);
    subscribe(a, "{\"patterns\": [\"after.expiry\"], \"tag\": \"\"}");
}

Test(node, worker_functions_are_bounded_per_node, .fini = teardown) {
    mp_node_limits l = {.functions_per_node = 3};
    limited_node(&l);
    uint64_t w1 = client();
    mp_id id = send_json(w1, MP_KIND_REGISTER, NULL,
                         "{\"functions\": [{\"name\": \"f1\"}, {\"name\": \"f2\"}]}");
    expect_ok(w1, &id);
    uint64_t w2 = client();
    id = send_json(w2, MP_KIND_REGISTER, NULL,
                   "{\"functions\": [{\"name\": \"g1\"}, {\"name\": \"g2\"}]}");
    expect_limit(w2, &id, "functions_per_node");
    id = send_json(w2, MP_KIND_REGISTER, NULL, "{\"functions\": [{\"name\": \"g1\"}]}");
    expect_ok(w2, &id);
    cr_assert_eq(limit_used("functions_per_node"), 3);
    close_conn(w1);
    cr_assert_eq(limit_used("functions_per_node"), 1);
}

Test(node, requests_in_flight_are_bounded_per_node, .fini = teardown) {
    mp_node_limits l = {.requests_per_node = 4};
    limited_node(&l);
    uint64_t a = client(), b = client();
    for (int i = 0; i < 3; i++) {
        rpc(a, "[{\"name\": \"s\", \"fun\": \"sleep\", \"args\": [100]}]");
    }
    rpc(b, "[{\"name\": \"s\", \"fun\": \"sleep\", \"args\": [100]}]");
    expect_nothing(a);
    mp_id id = rpc(b, "[{\"name\": \"s\", \"fun\": \"sleep\", \"args\": [100]}]");
    expect_limit(b, &id, "requests_per_node");
    advance(100);
    cr_assert_eq(pending(a), 3);
    skip_all(a);
    skip_all(b);
    id = rpc(b, "[{\"name\": \"e\", \"fun\": \"echo\", \"args\": [1]}]");
    expect_results(b, &id, "{\"e\": 1}");
}

/* c0 = echo(1000 x's), c_i = echos(c_{i-1}, c_{i-1}): doubles each step. */
static mp_id doubling(uint64_t conn, int levels) {
    char *json = malloc(4096);
    int n = snprintf(json, 4096, "[{\"name\": \"c0\", \"fun\": \"echo\", \"args\": [\"");
    memset(json + n, 'x', 1000);
    n += 1000;
    n += snprintf(json + n, 4096 - (size_t)n, "\"]}");
    for (int i = 1; i <= levels; i++) {
        n += snprintf(json + n, 4096 - (size_t)n,
                      ", {\"name\": \"c%d\", \"fun\": \"echos\", \"args\": [\"c%d\", \"c%d\"]}", i,
                      i - 1, i - 1);
    }
    snprintf(json + n, 4096 - (size_t)n, "]");
    mp_id id = rpc(conn, json);
    free(json);
    return id;
}

Test(node, a_request_that_doubles_its_results_is_refused_before_building, .fini = teardown) {
    mp_node_limits l = {.request_bytes = 1024 * 1024};
    limited_node(&l);
    uint64_t c = client();
    /* Results held: about 1000 * (2^(k+1) - 1) bytes after level k, plus
     * their cells; at 1 MiB the arguments of c9 (2 x 256 000 bytes and
     * 2 x 255 cells) would take it over: c9 is refused before it runs, so
     * nothing bigger than c8's 256 KB is ever built. */
    mp_id id = doubling(c, 16);
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_TOO_LARGE);
    cr_assert_str_eq(e.command, "c9");
    cr_assert(strstr(mp_rpc_error_message(&e), "request_bytes"), "%s", mp_rpc_error_message(&e));
    cr_assert(strstr(mp_rpc_error_message(&e), "not run"), "%s", mp_rpc_error_message(&e));
    mp_rpc_error_free(&e);
    /* Within the budget it runs. */
    id = doubling(c, 5);
    frame fr = expect(c, MP_KIND_RPC_REPLY, &id);
    cr_assert_not_null(mpreg_map_get(&fr.payload, "results"));
    frame_free(&fr);
    cr_assert_eq(limit_used("results_bytes"), 0, "nothing is held once requests are done");
}

Test(node, results_held_by_all_requests_are_bounded, .fini = teardown) {
    mp_node_limits l = {.results_bytes = 300 * 1000};
    limited_node(&l);
    uint64_t c = client();
    /* Each holds ~100 KB while it sleeps; the fourth would go over. */
    /* A string argument of 100 000 bytes, built in the test. */
    mp_buf big = MP_BUF_INIT;
    const char *head = "[{\"name\": \"big\", \"fun\": \"echo\", \"args\": [\"";
    mp_buf_append(&big, head, strlen(head));
    for (int i = 0; i < 100000; i++) {
        mp_buf_append(&big, "y", 1);
    }
    const char *tail = "\"]}, {\"name\": \"s\", \"fun\": \"sleep\", \"args\": [100]},"
                       " {\"name\": \"r\", \"fun\": \"echos\", \"args\": [\"s\", 1]}]";
    mp_buf_append(&big, tail, strlen(tail) + 1);
    for (int i = 0; i < 3; i++) {
        rpc(c, (const char *)big.data);
    }
    expect_nothing(c);
    mp_id id = rpc(c, (const char *)big.data);
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_LIMIT);
    cr_assert_str_eq(e.command, "big");
    cr_assert(strstr(mp_rpc_error_message(&e), "results_bytes"));
    mp_rpc_error_free(&e);
    advance(100);
    cr_assert_eq(limit_used("results_bytes"), 0);
    mp_buf_free(&big);
}

Test(node, connections_over_the_limit_are_told_and_closed, .fini = teardown) {
    mp_node_limits l = {.conns = 2};
    limited_node(&l);
    uint64_t a = client();
    uint64_t b = client();
    uint64_t c = open_conn();
    frame fr = expect(c, MP_KIND_ERROR, NULL);
    cr_assert_eq(get_int(&fr.payload, "code"), MPREG_E_LIMIT);
    frame_free(&fr);
    cr_assert(F.c[c].closed);
    cr_assert_not(F.c[a].closed);
    cr_assert_not(F.c[b].closed);
    close_conn(c);
    close_conn(b);
    uint64_t d = client(); /* room again */
    cr_assert_not(F.c[d].closed);
}

/* --- catalog pages ------------------------------------------------------------------------------
 */

/* One page of the catalog, asked for with payload_json (the request's
 * `after` etc.); the reply frame must fit in max_frame. */
static mpreg_value catalog_page(uint64_t c, const char *payload_json, uint32_t max_frame) {
    mp_id id = send_json(c, MP_KIND_CONTROL, "catalog", payload_json);
    frame fr = expect(c, MP_KIND_CONTROL_REPLY, &id);
    cr_assert_leq(fr.len, max_frame, "a page of %zu bytes over max_frame %u", fr.len, max_frame);
    mpreg_value v = fr.payload;
    fr.payload = mpreg_nil();
    frame_free(&fr);
    return v;
}

/* Follows `next` from page to page; returns the entries of `kind`, in
 * order, as one array (and how many pages it took). */
static mpreg_value catalog_all(uint64_t c, const char *extra_json, const char *kind,
                               uint32_t max_frame, size_t *pages) {
    mpreg_value all = mpreg_array(), next = mpreg_nil();
    *pages = 0;
    do {
        char *after = next.type == MPREG_NIL ? NULL : mpreg_value_to_json(&next, false);
        char req[2048];
        snprintf(req, sizeof req, "{%s%s%s%s}", extra_json, after && extra_json[0] ? ", " : "",
                 after ? "\"after\": " : "", after ? after : "");
        free(after);
        mpreg_value_free(&next);
        mpreg_value page = catalog_page(c, req, max_frame);
        const mpreg_value *list = get(&page, kind);
        for (size_t i = 0; i < list->u.arr.len; i++) {
            mpreg_value copy;
            cr_assert_eq(mpreg_value_clone(&list->u.arr.items[i], &copy), MPREG_OK);
            cr_assert_eq(mpreg_array_push(&all, copy), MPREG_OK);
        }
        const mpreg_value *n = mpreg_map_get(&page, "next");
        if (n) {
            cr_assert_eq(mpreg_value_clone(n, &next), MPREG_OK);
        }
        mpreg_value_free(&page);
        cr_assert_lt(++*pages, 1000, "pages without end");
    } while (next.type != MPREG_NIL);
    return all;
}

/* A catalog far larger than a frame used to be answered with too_large
 * only; now it comes in pages that each fit, and together hold everything
 * once, in order. */
Test(node, catalog_pages_fit_in_max_frame) {
    teardown();
    mp_node_config cfg = {.node_id = "n1", .cluster = "c1", .max_frame = 1024};
    start_node(&cfg);
    for (int i = 0; i < 150; i++) {
        char name[32];
        snprintf(name, sizeof name, "work_%03d", i);
        mp_entry e;
        cr_assert_eq(mp_entry_function(&e, "n2", "c1", name, NULL, "1.0.0"), MPREG_OK);
        remote_entry(&e);
    }
    uint64_t c = client();
    /* Without paging in mind (the old request) the first page comes, with next. */
    mpreg_value first = control(c, "catalog");
    cr_assert_not_null(mpreg_map_get(&first, "next"));
    mpreg_value_free(&first);
    size_t pages;
    mpreg_value fns = catalog_all(c, "", "functions", 1024, &pages);
    cr_assert_gt(pages, 5);
    cr_assert_eq(fns.u.arr.len, 150 + 5, "%zu functions", fns.u.arr.len); /* + the built-ins */
    for (size_t i = 1; i < fns.u.arr.len; i++) {
        cr_assert_lt(
            strcmp(get_str(&fns.u.arr.items[i - 1], "name"), get_str(&fns.u.arr.items[i], "name")),
            0, "out of order or repeated at %zu", i);
    }
    mpreg_value_free(&fns);
    /* The kinds asked for, and only those: nodes fit in one page. */
    mpreg_value only = catalog_page(c, "{\"kinds\": [\"nodes\", \"queues\"]}", 1024);
    cr_assert_null(mpreg_map_get(&only, "functions"));
    cr_assert_null(mpreg_map_get(&only, "queues"), "a kind the node does not know");
    cr_assert_null(mpreg_map_get(&only, "next"));
    cr_assert_eq(get(&only, "nodes")->u.arr.len, 1);
    mpreg_value_free(&only);
    /* limit caps a page. */
    mpreg_value two = catalog_page(c, "{\"kinds\": [\"functions\"], \"limit\": 2}", 1024);
    cr_assert_eq(get(&two, "functions")->u.arr.len, 2);
    assert_json_eq(get(&two, "next"), "[\"functions\", \"echos\", \"n1\", \"\", \"1.0.0\"]");
    mpreg_value_free(&two);
    fns = catalog_all(c, "\"limit\": 7", "functions", 1024, &pages);
    cr_assert_eq(fns.u.arr.len, 155);
    cr_assert_eq(pages, 23);
    mpreg_value_free(&fns);
}

Test(node, catalog_request_is_checked) {
    uint64_t c = client();
    mp_id id = send_json(c, MP_KIND_CONTROL, "catalog", "{\"kind\": [\"nodes\"]}");
    expect_error(c, &id, MPREG_E_INVALID);
    id = send_json(c, MP_KIND_CONTROL, "catalog", "{\"kinds\": []}");
    expect_error(c, &id, MPREG_E_INVALID);
    id = send_json(c, MP_KIND_CONTROL, "catalog", "{\"kinds\": \"nodes\"}");
    expect_error(c, &id, MPREG_E_TYPE);
    id = send_json(c, MP_KIND_CONTROL, "catalog", "{\"limit\": 0}");
    expect_error(c, &id, MPREG_E_RANGE);
    id = send_json(c, MP_KIND_CONTROL, "catalog", "{\"after\": [\"nodes\", \"a\", \"b\"]}");
    expect_error(c, &id, MPREG_E_INVALID);
    id = send_json(c, MP_KIND_CONTROL, "catalog", "{\"after\": [\"tables\", \"a\"]}");
    expect_error(c, &id, MPREG_E_INVALID);
    /* A cursor past everything: empty lists, no next. */
    mpreg_value end = catalog_page(c, "{\"after\": [\"nodes\", \"zzz\"]}", MP_FRAME_DEFAULT_MAX);
    assert_json_eq(&end, "{\"functions\": [], \"topics\": [], \"nodes\": []}");
    mpreg_value_free(&end);
}

/* --- argument depth ------------------------------------------------------------------------------
 */

/* An RPC_REQUEST payload whose command "deep" has args `levels` deep,
 * byte by byte (over 32 levels in all cannot be encoded). */
static size_t deep_args_request(uint8_t *out, int levels) {
    static const uint8_t head[] = {0x81, 0xa8, 'c',  'o',  'm',  'm', 'a', 'n', 'd',
                                   's',  0x91, 0x83, 0xa4, 'n',  'a', 'm', 'e', 0xa4,
                                   'd',  'e',  'e',  'p',  0xa3, 'f', 'u', 'n', 0xa4,
                                   'e',  'c',  'h',  'o',  0xa4, 'a', 'r', 'g', 's'};
    size_t n = sizeof head;
    memcpy(out, head, n);
    for (int i = 1; i < levels; i++) {
        out[n++] = 0x91;
    }
    out[n++] = 0x90;
    return n;
}

/* PROTOCOL 8.1: args nest at most 29 levels, each argument 28. The node
 * runs that, and answers one level more with an error naming the command. */
Test(node, argument_depth_limit_names_the_command) {
    uint64_t c = client();
    uint8_t buf[128];
    size_t len = deep_args_request(buf, 29);
    mp_id id = send_bytes(c, MP_KIND_RPC_REQUEST, NULL, buf, len);
    frame fr = expect(c, MP_KIND_RPC_REPLY, &id);
    cr_assert_not_null(mpreg_map_get(&fr.payload, "results"));
    frame_free(&fr);
    len = deep_args_request(buf, 30);
    id = send_bytes(c, MP_KIND_RPC_REQUEST, NULL, buf, len);
    mp_rpc_error e = expect_rpc_error(c, &id, MPREG_E_TOO_DEEP);
    cr_assert_str_eq(e.command, "deep");
    cr_assert(strstr(mp_rpc_error_message(&e), "command 'deep': 'args' nests deeper than 29") !=
                  NULL,
              "%s", mp_rpc_error_message(&e));
    mp_rpc_error_free(&e);
}
