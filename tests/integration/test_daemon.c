/* test_daemon.c - mpregd as a user runs it: a real process, real sockets.
 *
 * Each test starts its daemons on 127.0.0.1 port 0 in a private temporary
 * directory (harness.h), talks to them with hand-built frames, and stops them
 * with SIGTERM, checking that they exit 0 and that no sanitizer complained
 * in their stderr. The fixture kills whatever a failed test left running. */
#define _GNU_SOURCE
#include "harness.h"

#include "core/frame.h"
#include "services/rpc_plan.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_DAEMONS 4
#define MAX_FDS 8

static char *dir;
static mp_harness_daemon daemons[MAX_DAEMONS];
static int ndaemons;
static int fds[MAX_FDS];
static int nfds;

static void setup(void) {
    dir = mp_harness_tmpdir_new();
    cr_assert_not_null(dir, "cannot make a temporary directory");
}

static void teardown(void) {
    for (int i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    for (int i = 0; i < ndaemons; i++) {
        mp_harness_daemon_kill(&daemons[i]);
    }
    mp_harness_tmpdir_remove(dir);
}

TestSuite(daemon, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ------------------------------------------------------------------ */

static void show_stderr(const mp_harness_daemon *d) {
    char *text = mp_harness_read_file(d->err_path);
    cr_log_info("%s stderr:\n%s", d->name, text ? text : "(none)");
    free(text);
}

/* The daemon's stderr must hold no sanitizer report. */
static void assert_no_sanitizer(const mp_harness_daemon *d) {
    if (mp_harness_file_contains(d->err_path, "Sanitizer") ||
        mp_harness_file_contains(d->err_path, "runtime error:")) {
        show_stderr(d);
        cr_assert_fail("%s: sanitizer report in its stderr", d->name);
    }
}

static mp_harness_daemon *start(const char *name, const char *const *extra) {
    cr_assert_lt(ndaemons, MAX_DAEMONS);
    mp_harness_daemon *d = &daemons[ndaemons++];
    if (mp_harness_daemon_start(d, dir, name, extra) != 0) {
        show_stderr(d);
        cr_assert_fail("%s did not start (status %d)", name, d->status);
    }
    return d;
}

/* SIGTERM: it must exit 0, promptly, and cleanly. The test's connections
 * close first, as a client's would on GOODBYE: a connection that stays open
 * holds the stop up to the transport's close timeout (a test of its own). */
static void stop(mp_harness_daemon *d) {
    while (nfds > 0) {
        close(fds[--nfds]);
    }
    int status = mp_harness_daemon_stop(d, MP_HARNESS_STOP_TIMEOUT_MS);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        show_stderr(d);
        cr_assert_fail("%s: expected exit 0 after SIGTERM, got status %d", d->name, status);
    }
    assert_no_sanitizer(d);
}

static int track(int fd) {
    cr_assert_geq(fd, 0, "cannot connect");
    cr_assert_lt(nfds, MAX_FDS);
    fds[nfds++] = fd;
    return fd;
}

static void untrack(int fd) {
    for (int i = 0; i < nfds; i++) {
        if (fds[i] == fd) {
            close(fd);
            fds[i] = fds[--nfds];
            return;
        }
    }
}

static int client(const mp_harness_daemon *d) {
    return track(mp_harness_client(d->port));
}

/* Receives one envelope, which must be of kind. */
static void expect_kind(int fd, mp_buf *buf, mp_envelope *e, mp_kind kind) {
    int rc = mp_harness_recv_envelope(fd, buf, e, MP_HARNESS_IO_TIMEOUT_MS);
    cr_assert_eq(rc, 1, "expected %s, got nothing (rc %d)", mp_kind_name(kind), rc);
    cr_assert_eq(e->kind, kind, "expected %s, got %s", mp_kind_name(kind), mp_kind_name(e->kind));
}

/* The next envelope must be an ERROR with code. */
static void expect_error(int fd, mpreg_err code) {
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_ERROR);
    mpreg_value v;
    cr_assert_eq(mp_harness_payload_value(&e, &v), MPREG_OK);
    const mpreg_value *c = mpreg_map_get(&v, "code");
    cr_assert(c != NULL && c->type == MPREG_INT, "ERROR without a code");
    cr_assert_eq(c->u.i, code, "expected error %d, got %lld", code, (long long)c->u.i);
    const mpreg_value *m = mpreg_map_get(&v, "message");
    cr_assert(m != NULL && m->type == MPREG_STR && m->u.str.len > 0, "ERROR without a message");
    mpreg_value_free(&v);
    mp_buf_free(&buf);
}

static void ping_pong(int fd) {
    mp_id id;
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_PING, NULL, NULL, &id), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_PONG);
    cr_assert(mp_id_equal(&e.correlation_id, &id));
    mp_buf_free(&buf);
}

/* Sends an RPC_REQUEST of the commands (JSON) and returns the decoded
 * RPC_REPLY. */
static void rpc(int fd, const char *commands_json, mp_rpc_outcome *out) {
    mpreg_value commands;
    char why[128];
    cr_assert_eq(
        mpreg_value_from_json(commands_json, strlen(commands_json), &commands, why, sizeof why),
        MPREG_OK, "bad test JSON: %s", why);
    mp_rpc_request req = {0};
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_commands_parse(&commands, &req, &err), MPREG_OK, "%s",
                 mp_rpc_error_message(&err));
    mpreg_bytes payload = {0};
    cr_assert_eq(mp_rpc_request_encode(&req, &payload), MPREG_OK);
    mp_id id;
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_RPC_REQUEST, NULL, &payload, &id), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_RPC_REPLY);
    cr_assert(mp_id_equal(&e.correlation_id, &id), "RPC_REPLY for another request");
    cr_assert_eq(mp_rpc_reply_decode(e.payload.ptr, e.payload.len, out, &err), MPREG_OK, "%s",
                 mp_rpc_error_message(&err));
    mp_buf_free(&buf);
    mpreg_bytes_free(&payload);
    mp_rpc_request_free(&req);
    mpreg_value_free(&commands);
}

/* A single call that must succeed; returns its result as JSON (malloc'd). */
static char *call_ok(int fd, const char *commands_json, const char *name) {
    mp_rpc_outcome o = {0};
    rpc(fd, commands_json, &o);
    cr_assert(o.ok, "call failed: %s", mp_rpc_error_message(&o.error));
    const mpreg_value *r = mpreg_map_get(&o.value, name);
    cr_assert_not_null(r, "no result for %s", name);
    char *json = mpreg_value_to_json(r, false);
    mp_rpc_outcome_free(&o);
    return json;
}

/* A single call that must fail with code; returns its message (malloc'd). */
static char *call_fails(int fd, const char *commands_json, mpreg_err code) {
    mp_rpc_outcome o = {0};
    rpc(fd, commands_json, &o);
    cr_assert(!o.ok, "call succeeded where it should fail");
    cr_assert_eq(o.error.code, code, "expected error %d, got %d (%s)", code, o.error.code,
                 mp_rpc_error_message(&o.error));
    char *msg = strdup(mp_rpc_error_message(&o.error));
    mp_rpc_outcome_free(&o);
    return msg;
}

/* The CONTROL "status" reply. */
static void status(int fd, mpreg_value *out) {
    mp_id id;
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_CONTROL, "status", NULL, &id), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_CONTROL_REPLY);
    cr_assert(mp_id_equal(&e.correlation_id, &id));
    cr_assert_eq(mp_harness_payload_value(&e, out), MPREG_OK);
    cr_assert_eq(out->type, MPREG_MAP);
    mp_buf_free(&buf);
}

static int64_t status_int(const mpreg_value *st, const char *key) {
    const mpreg_value *v = mpreg_map_get(st, key);
    cr_assert(v != NULL && v->type == MPREG_INT, "status has no integer \"%s\"", key);
    return v->u.i;
}

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- starting and stopping ----------------------------------------------------- */

Test(daemon, listens_on_port_0_and_says_where) {
    mp_harness_daemon *d = start("n1", NULL);
    char expect[64];
    snprintf(expect, sizeof expect, "listening on 127.0.0.1:%u\n", (unsigned)d->port);
    char *out = mp_harness_read_file(d->out_path);
    cr_assert_str_eq(out, expect);
    free(out);
    cr_assert(mp_harness_file_contains(d->err_path, " info node=n1 "), "no structured log line");
    stop(d);
    cr_assert(access(d->port_file, F_OK) != 0, "port file left behind");
}

Test(daemon, sigterm_says_goodbye_and_exits_0_promptly) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = client(d);
    ping_pong(fd);
    uint64_t t0 = mono_ms();
    kill(d->pid, SIGTERM);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_GOODBYE);
    mp_buf_free(&buf);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS),
              "connection not closed after GOODBYE");
    untrack(fd);
    int status = mp_harness_daemon_wait(d, MP_HARNESS_STOP_TIMEOUT_MS);
    uint64_t took = mono_ms() - t0;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    cr_assert_lt(took, 2000, "stopping took %llu ms", (unsigned long long)took);
    assert_no_sanitizer(d);
    cr_assert(mp_harness_file_contains(d->err_path, "stopped:"));
    /* Alone in its cluster: nobody to tell, so no lingering to leave. */
    cr_assert(!mp_harness_file_contains(d->err_path, "leaving the cluster"));
}

Test(daemon, a_silent_client_does_not_hold_up_the_stop) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = client(d); /* never reads its GOODBYE, never closes */
    ping_pong(fd);
    uint64_t t0 = mono_ms();
    kill(d->pid, SIGTERM);
    int status = mp_harness_daemon_wait(d, MP_HARNESS_STOP_TIMEOUT_MS);
    uint64_t took = mono_ms() - t0;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    cr_assert_lt(took, 4000, "stopping took %llu ms", (unsigned long long)took);
    assert_no_sanitizer(d);
}

Test(daemon, restart_is_a_new_incarnation) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = client(d);
    mpreg_value st;
    status(fd, &st);
    cr_assert_eq(status_int(&st, "incarnation"), 1);
    mpreg_value_free(&st);
    untrack(fd);
    stop(d);

    mp_harness_daemon *again = start("n1", NULL);
    fd = client(again);
    status(fd, &st);
    cr_assert_eq(status_int(&st, "incarnation"), 2);
    mpreg_value_free(&st);
    untrack(fd);
    stop(again);

    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/incarnation", d->data_dir);
    char *text = mp_harness_read_file(path);
    cr_assert_str_eq(text, "2\n");
    free(text);
}

Test(daemon, one_node_per_data_dir) {
    mp_harness_daemon *d = start("n1", NULL);
    char *err = NULL;
    const char *args[] = {"--listen", "127.0.0.1:0", "--data-dir", d->data_dir, NULL};
    int rc = mp_harness_run(dir, args, MP_HARNESS_START_TIMEOUT_MS, NULL, &err);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "status %d", rc);
    cr_assert(err != NULL && strstr(err, "in use by another mpregd") != NULL, "stderr: %s", err);
    free(err);
    stop(d);
}

Test(daemon, default_data_dir_follows_xdg) {
    mp_harness_daemon *d = &daemons[ndaemons++];
    char port_file[PATH_MAX], xdg[PATH_MAX + 32];
    snprintf(port_file, sizeof port_file, "%s/x.port", dir);
    snprintf(xdg, sizeof xdg, "XDG_DATA_HOME=%s/xdg", dir);
    const char *args[] = {"--listen", "127.0.0.1:0", "--port-file", port_file,
                          "--name",   "x1",          NULL};
    const char *env[] = {xdg, NULL};
    snprintf(d->name, sizeof d->name, "x1");
    cr_assert_eq(mp_harness_daemon_spawn(d, dir, "x1", args, env), 0);
    cr_assert_eq(mp_harness_daemon_wait_port(d, port_file, MP_HARNESS_START_TIMEOUT_MS), 0);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/xdg/mpreg/x1/incarnation", dir);
    char *text = mp_harness_read_file(path);
    cr_assert_str_eq(text, "1\n");
    free(text);
    stop(d);
}

/* ---- the protocol over real sockets ------------------------------------------------ */

Test(daemon, hello_gets_welcome) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = track(mp_harness_connect(d->port));
    mp_id id;
    mpreg_value hello = mpreg_map();
    mpreg_map_set(&hello, "role", mpreg_str("client"));
    mpreg_bytes payload = {0};
    cr_assert_eq(mpreg_value_encode(&hello, &payload), MPREG_OK);
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_HELLO, NULL, &payload, &id), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_WELCOME);
    cr_assert(mp_id_equal(&e.correlation_id, &id));
    mpreg_value w;
    cr_assert_eq(mp_harness_payload_value(&e, &w), MPREG_OK);
    const mpreg_value *node = mpreg_map_get(&w, "node");
    cr_assert(node != NULL && node->type == MPREG_STR && strcmp(node->u.str.ptr, "n1") == 0);
    mpreg_value_free(&w);
    mpreg_value_free(&hello);
    mpreg_bytes_free(&payload);
    mp_buf_free(&buf);
    ping_pong(fd);
    stop(d);
}

Test(daemon, first_frame_must_be_hello) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_PING, NULL, NULL, NULL), 0);
    expect_error(fd, MPREG_E_HANDSHAKE);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS));
    stop(d);
}

Test(daemon, token_is_checked) {
    const char *extra[] = {"--token", "s3cret", NULL};
    mp_harness_daemon *d = start("n1", extra);
    int fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, NULL), MP_KIND_ERROR);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS));
    fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, "wrong"), MP_KIND_ERROR);
    fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, "s3cret"), MP_KIND_WELCOME);
    ping_pong(fd);
    stop(d);
}

/* The token can stay out of ps: $MPREG_TOKEN stands in for --token, and
 * the flag still wins over it. */
Test(daemon, token_from_the_environment) {
    setenv("MPREG_TOKEN", "from-env", 1);
    mp_harness_daemon *d = start("n1", NULL);
    int fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, NULL), MP_KIND_ERROR);
    fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, "from-env"), MP_KIND_WELCOME);
    stop(d);
    const char *extra[] = {"--token", "from-flag", NULL};
    d = start("n2", extra);
    fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, "from-env"), MP_KIND_ERROR);
    fd = track(mp_harness_connect(d->port));
    cr_assert_eq(mp_harness_hello(fd, "from-flag"), MP_KIND_WELCOME);
    stop(d);
    unsetenv("MPREG_TOKEN");
}

Test(daemon, rpc_echo_and_dependencies) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = client(d);
    char *r = call_ok(fd, "[{\"name\": \"e\", \"fun\": \"echo\", \"args\": [\"hi\"]}]", "e");
    cr_assert_str_eq(r, "\"hi\"");
    free(r);
    /* The example of docs/PROTOCOL.md §8.6: two sinks fed by one command. */
    mp_rpc_outcome o = {0};
    rpc(fd,
        "[{\"name\": \"first\", \"fun\": \"echo\", \"args\": [\"hi there!\"]},"
        " {\"name\": \"second\", \"fun\": \"echo\", \"args\": [\"first\"]},"
        " {\"name\": \"third\", \"fun\": \"echos\", \"args\": [\"first\", \"AND ME TOO\"]}]",
        &o);
    cr_assert(o.ok, "%s", mp_rpc_error_message(&o.error));
    char *json = mpreg_value_to_json(&o.value, false);
    cr_assert_str_eq(json, "{\"second\":\"hi there!\",\"third\":[\"hi there!\",\"AND ME TOO\"]}");
    free(json);
    mp_rpc_outcome_free(&o);
    char *msg =
        call_fails(fd, "[{\"name\": \"x\", \"fun\": \"no_such_function\"}]", MPREG_E_NOT_FOUND);
    free(msg);
    stop(d);
}

/* ---- hostile input -------------------------------------------------------------------- */

Test(daemon, broken_framing_closes_only_that_connection) {
    mp_harness_daemon *d = start("n1", NULL);
    int good = client(d);

    /* Someone points a web browser at the port: "GET " reads as a length
     * of about 1.2 GB. */
    int fd = track(mp_harness_connect(d->port));
    static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    cr_assert_eq(mp_harness_send(fd, http, sizeof http - 1), 0);
    expect_error(fd, MPREG_E_FRAME_TOO_LARGE);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS));

    /* One byte over the default maximum, from a client past its HELLO. */
    fd = client(d);
    uint8_t head[MP_FRAME_HEADER];
    mp_put_u32be(head, MP_FRAME_DEFAULT_MAX + 1);
    cr_assert_eq(mp_harness_send(fd, head, sizeof head), 0);
    expect_error(fd, MPREG_E_FRAME_TOO_LARGE);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS));

    /* An empty frame. */
    fd = client(d);
    mp_put_u32be(head, 0);
    cr_assert_eq(mp_harness_send(fd, head, sizeof head), 0);
    expect_error(fd, MPREG_E_FRAME_EMPTY);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS));

    ping_pong(good);
    stop(d);
}

Test(daemon, undecodable_envelope_is_refused_and_the_stream_goes_on) {
    mp_harness_daemon *d = start("n1", NULL);
    int fd = client(d);
    static const uint8_t junk[] = {0, 0, 0, 5, 0xc1, 'j', 'u', 'n', 'k'};
    cr_assert_eq(mp_harness_send(fd, junk, sizeof junk), 0);
    expect_error(fd, MPREG_E_DECODE);
    ping_pong(fd);
    stop(d);
}

Test(daemon, max_frame_is_configurable) {
    const char *extra[] = {"--max-frame", "1K", NULL};
    mp_harness_daemon *d = start("n1", extra);
    int fd = client(d);
    uint8_t head[MP_FRAME_HEADER];
    mp_put_u32be(head, 1025);
    cr_assert_eq(mp_harness_send(fd, head, sizeof head), 0);
    expect_error(fd, MPREG_E_FRAME_TOO_LARGE);
    cr_assert(mp_harness_wait_closed(fd, MP_HARNESS_IO_TIMEOUT_MS));
    stop(d);
}

/* ---- plugins --------------------------------------------------------------------------- */

Test(daemon, plugin_functions_are_callable) {
    const char *extra[] = {"--plugin", mp_harness_plugin_path(), NULL};
    mp_harness_daemon *d = start("n1", extra);
    int fd = client(d);
    char *r = call_ok(fd, "[{\"name\": \"h\", \"fun\": \"hello\", \"args\": [\"world\"]}]", "h");
    cr_assert_str_eq(r, "\"hello, world\"");
    free(r);
    r = call_ok(fd, "[{\"name\": \"h\", \"fun\": \"hello\", \"kwargs\": {\"name\": \"you\"}}]",
                "h");
    cr_assert_str_eq(r, "\"hello, you\"");
    free(r);
    r = call_ok(fd, "[{\"name\": \"s\", \"fun\": \"add\", \"args\": [2, 40]}]", "s");
    cr_assert_str_eq(r, "42");
    free(r);
    char *msg =
        call_fails(fd, "[{\"name\": \"s\", \"fun\": \"add\", \"args\": [\"x\", 1]}]", MPREG_E_TYPE);
    cr_assert(strstr(msg, "integers") != NULL, "message: %s", msg);
    free(msg);
    msg = call_fails(fd, "[{\"name\": \"h\", \"fun\": \"hello\"}]", MPREG_E_INVALID);
    cr_assert(strstr(msg, "exactly one argument") != NULL, "message: %s", msg);
    free(msg);
    msg =
        call_fails(fd, "[{\"name\": \"s\", \"fun\": \"add\", \"args\": [9223372036854775807, 1]}]",
                   MPREG_E_RANGE);
    free(msg);
    stop(d);
}

Test(daemon, a_bad_plugin_stops_the_start) {
    char not_elf[PATH_MAX + 16];
    snprintf(not_elf, sizeof not_elf, "%s/not_a_plugin.so", dir);
    cr_assert_eq(mp_harness_write_file(not_elf, "hello\n"), 0);
    const char *paths[] = {"/nonexistent/plugin.so", not_elf};
    for (size_t i = 0; i < 2; i++) {
        char data_dir[PATH_MAX + 16];
        snprintf(data_dir, sizeof data_dir, "%s/d%zu", dir, i);
        const char *args[] = {"--listen", "127.0.0.1:0", "--data-dir", data_dir,
                              "--plugin", paths[i],      NULL};
        char *err = NULL;
        int rc = mp_harness_run(dir, args, MP_HARNESS_START_TIMEOUT_MS, NULL, &err);
        cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "%s: status %d", paths[i], rc);
        char expect[PATH_MAX + 32];
        snprintf(expect, sizeof expect, "plugin %s: cannot load", paths[i]);
        cr_assert(err != NULL && strstr(err, expect) != NULL, "stderr: %s", err);
        cr_assert(strstr(err, "Sanitizer") == NULL, "stderr: %s", err);
        free(err);
    }
}

/* ---- usage errors ------------------------------------------------------------------------ */

Test(daemon, port_in_use_is_a_clear_error) {
    mp_harness_daemon *d = start("n1", NULL);
    char listen[64], data_dir[PATH_MAX + 16];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", (unsigned)d->port);
    snprintf(data_dir, sizeof data_dir, "%s/other", dir);
    const char *args[] = {"--listen", listen, "--data-dir", data_dir, NULL};
    char *err = NULL;
    int rc = mp_harness_run(dir, args, MP_HARNESS_START_TIMEOUT_MS, NULL, &err);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "status %d", rc);
    cr_assert(err != NULL && strstr(err, "address already in use") != NULL, "stderr: %s", err);
    cr_assert(strstr(err, listen) != NULL, "stderr does not name %s: %s", listen, err);
    cr_assert(strstr(err, "Sanitizer") == NULL, "stderr: %s", err);
    free(err);
    ping_pong(client(d)); /* the first one is unharmed */
    stop(d);
}

typedef struct bad_case {
    const char *args[4];
    const char *config; /* written to DIR/c.json and passed with --config */
    const char *says;
} bad_case;

Test(daemon, bad_flags_and_config_exit_2) {
    static const bad_case cases[] = {
        {{"--bogus"}, NULL, "unknown option '--bogus'"},
        {{"--peer", "nonsense"}, NULL, "--peer 'nonsense': expected HOST:PORT"},
        {{"--peer", "127.0.0.1:0"}, NULL, "--peer '127.0.0.1:0'"},
        {{"--peer", "::1:6464"}, NULL, "--peer '::1:6464'"},
        {{"--advertise", "0.0.0.0:6464"}, NULL, "other members cannot dial 0.0.0.0"},
        {{"--advertise", "somehost"}, NULL, "--advertise 'somehost'"},
        {{"--swim", "bogus=1"}, NULL, "unknown field 'bogus'"},
        {{"--swim", "probe_interval_ms"}, NULL, "expected FIELD=VALUE"},
        {{"--swim", "probe_interval_ms=soon"}, NULL, "probe_interval_ms must be a number"},
        {{"--swim", "gossip_nodes=0"},
         NULL,
         "gossip_nodes=0 is out of range: it must be from 1 to 64"},
        /* A field tied to another says so, and what the other one is. */
        {{"--swim", "probe_timeout_ms=5000"},
         NULL,
         "probe_timeout_ms=5000 must be below probe_interval_ms=1000"},
        {{"--swim", "probe_interval_ms=200"},
         NULL,
         "probe_timeout_ms=500 must be below probe_interval_ms=200"},
        {{NULL},
         "{\"swim\": {\"probe_timeout_ms\": 2000}}",
         "probe_timeout_ms=2000 must be below probe_interval_ms=1000"},
        {{"--max-peer-conns", "0"}, NULL, "--max-peer-conns '0'"},
        {{"--max-peer-conns", "many"}, NULL, "--max-peer-conns 'many'"},
        {{"--catalog-ttl", "999"}, NULL, "--catalog-ttl '999': expected milliseconds from 1000"},
        {{"--catalog-ttl", "soon"}, NULL, "--catalog-ttl 'soon'"},
        {{"--catalog-ttl", "-5"}, NULL, "--catalog-ttl '-5'"},
        {{NULL}, "{\"catalog_ttl_ms\": 10}", "--catalog-ttl '10'"},
        {{"--federation-mode", "strict"}, NULL, "unknown option '--federation-mode'"},
        {{"--name"}, NULL, "option '--name' needs an argument"},
        {{"stray"}, NULL, "unexpected argument 'stray'"},
        {{"--listen", "nonsense"}, NULL, "--listen 'nonsense'"},
        {{"--listen", "127.0.0.1:70000"}, NULL, "port must be a number"},
        {{"--listen", ":6464"}, NULL, "missing host"},
        {{"--log-level", "loud"}, NULL, "--log-level 'loud'"},
        {{"--max-frame", "12"}, NULL, "--max-frame '12'"},
        {{"--max-frame", "lots"}, NULL, "--max-frame 'lots'"},
        {{"--retain", "-1"}, NULL, "--retain '-1'"},
        {{"--name", "a/b"}, NULL, "--name 'a/b'"},
        {{"--cluster", ""}, NULL, "--cluster ''"},
        {{NULL}, "{\"listen\": 6464}", "\"listen\" must be a string"},
        {{NULL}, "{\"peers\": \"127.0.0.1:1\"}", "\"peers\" must be an array"},
        {{NULL}, "{\"peers\": [\"x\"]}", "--peer 'x'"},
        {{NULL}, "{\"swim\": 5}", "\"swim\" must be an object"},
        {{NULL}, "{\"swim\": {\"nope\": 1}}", "unknown field \"nope\""},
        {{NULL}, "{\"swim\": {\"probe_interval_ms\": -1}}", "must be a number"},
        {{NULL}, "{\"federation\": 1}", "unknown key \"federation\""},
        {{NULL}, "{\"resources\": \"gpu\"}", "\"resources\" must be an array"},
        {{NULL}, "{\"name\": \"a\",", "line 1"},
        {{NULL}, "[]", "expected a JSON object"},
    };
    char data_dir[PATH_MAX + 16], config[PATH_MAX + 16];
    snprintf(data_dir, sizeof data_dir, "%s/unused", dir);
    snprintf(config, sizeof config, "%s/c.json", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        /* Safe settings first (never the fixed default port, should the
         * daemon wrongly start); the bad part comes after and wins. */
        const char *args[12] = {"--listen", "127.0.0.1:0", "--data-dir", data_dir};
        size_t n = 4;
        if (c->config != NULL) {
            cr_assert_eq(mp_harness_write_file(config, c->config), 0);
            args[n++] = "--config";
            args[n++] = config;
        }
        for (size_t j = 0; j < 4 && c->args[j] != NULL; j++) {
            args[n++] = c->args[j];
        }
        args[n] = NULL;
        char *err = NULL;
        int rc = mp_harness_run(dir, args, MP_HARNESS_START_TIMEOUT_MS, NULL, &err);
        cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "case %zu (%s): status %d", i, c->says,
                  rc);
        cr_assert(err != NULL && strstr(err, c->says) != NULL, "case %zu: stderr: %s", i, err);
        cr_assert(strstr(err, "--help") != NULL, "case %zu: no usage hint: %s", i, err);
        free(err);
    }
    cr_assert(access(data_dir, F_OK) != 0, "a usage error got as far as the data dir");
    /* A missing config file is named. */
    const char *args[] = {"--config", "/nonexistent/mpregd.json", NULL};
    char *err = NULL;
    int rc = mp_harness_run(dir, args, MP_HARNESS_START_TIMEOUT_MS, NULL, &err);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "status %d", rc);
    cr_assert(err != NULL && strstr(err, "/nonexistent/mpregd.json") != NULL, "stderr: %s", err);
    free(err);
}

Test(daemon, config_file_with_flags_on_top) {
    char config[PATH_MAX + 16], port_file[PATH_MAX + 16], data_dir[PATH_MAX + 16];
    snprintf(config, sizeof config, "%s/n.json", dir);
    snprintf(port_file, sizeof port_file, "%s/n.port", dir);
    snprintf(data_dir, sizeof data_dir, "%s/cfg", dir);
    char text[4 * PATH_MAX];
    snprintf(text, sizeof text,
             "{\"listen\": \"127.0.0.1:0\", \"port-file\": \"%s\", \"data_dir\": \"%s\","
             " \"name\": \"from-file\", \"cluster\": \"c-file\", \"log_level\": \"debug\","
             " \"max_frame\": 4096, \"resources\": [\"gpu\"]}",
             port_file, data_dir);
    cr_assert_eq(mp_harness_write_file(config, text), 0);
    mp_harness_daemon *d = &daemons[ndaemons++];
    snprintf(d->name, sizeof d->name, "from-file");
    const char *args[] = {"--config", config, "--cluster", "c-flag", NULL};
    cr_assert_eq(mp_harness_daemon_spawn(d, dir, "cfg", args, NULL), 0);
    if (mp_harness_daemon_wait_port(d, port_file, MP_HARNESS_START_TIMEOUT_MS) != 0) {
        show_stderr(d);
        cr_assert_fail("did not start");
    }
    int fd = track(mp_harness_connect(d->port));
    mpreg_value hello = mpreg_map();
    mpreg_map_set(&hello, "role", mpreg_str("client"));
    mpreg_bytes payload = {0};
    cr_assert_eq(mpreg_value_encode(&hello, &payload), MPREG_OK);
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_HELLO, NULL, &payload, NULL), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_WELCOME);
    mpreg_value w;
    cr_assert_eq(mp_harness_payload_value(&e, &w), MPREG_OK);
    char *json = mpreg_value_to_json(&w, false);
    cr_assert(strstr(json, "\"node\":\"from-file\"") != NULL, "%s", json);
    cr_assert(strstr(json, "\"cluster\":\"c-flag\"") != NULL, "%s", json);
    cr_assert(strstr(json, "\"max_frame\":4096") != NULL, "%s", json);
    free(json);
    mpreg_value_free(&w);
    mpreg_value_free(&hello);
    mpreg_bytes_free(&payload);
    mp_buf_free(&buf);
    stop(d);
    cr_assert(mp_harness_file_contains(d->err_path, " debug node=from-file "), "no debug lines");
}

/* The CONTROL "members" reply. */
static void members(int fd, mpreg_value *out) {
    mp_id id;
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_CONTROL, "members", NULL, &id), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    expect_kind(fd, &buf, &e, MP_KIND_CONTROL_REPLY);
    cr_assert(mp_id_equal(&e.correlation_id, &id));
    cr_assert_eq(mp_harness_payload_value(&e, out), MPREG_OK);
    cr_assert_eq(out->type, MPREG_MAP);
    mp_buf_free(&buf);
}

/* The address the node advertises: its own entry in the member list. */
static char *self_addr(const mp_harness_daemon *d) {
    mpreg_value m;
    int fd = client(d);
    members(fd, &m);
    untrack(fd);
    const mpreg_value *self = mpreg_map_get(&m, "self");
    const mpreg_value *list = mpreg_map_get(&m, "members");
    cr_assert(self != NULL && self->type == MPREG_STR, "no self in the members reply");
    cr_assert(list != NULL && list->type == MPREG_ARRAY, "no member list");
    char *addr = NULL;
    for (size_t i = 0; i < list->u.arr.len; i++) {
        const mpreg_value *id = mpreg_map_get(&list->u.arr.items[i], "id");
        const mpreg_value *a = mpreg_map_get(&list->u.arr.items[i], "addr");
        if (id != NULL && id->type == MPREG_STR && strcmp(id->u.str.ptr, self->u.str.ptr) == 0 &&
            a != NULL && a->type == MPREG_STR) {
            addr = strdup(a->u.str.ptr);
        }
    }
    cr_assert_not_null(addr, "the node does not list itself");
    mpreg_value_free(&m);
    return addr;
}

Test(daemon, advertise_defaults_to_the_bound_address) {
    /* Every interface and port 0: members must dial loopback and the real port. */
    const char *any[] = {"--listen", "0.0.0.0:0", NULL};
    mp_harness_daemon *d = start("any", any);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", (unsigned)d->port);
    char *addr = self_addr(d);
    cr_assert_str_eq(addr, want);
    free(addr);
    char said[80];
    snprintf(said, sizeof said, "advertising %s", want);
    cr_assert(mp_harness_file_contains(d->err_path, said), "no '%s' in the log", said);
    stop(d);

    const char *given[] = {"--advertise", "127.0.0.1:7", NULL};
    d = start("given", given);
    addr = self_addr(d);
    cr_assert_str_eq(addr, "127.0.0.1:7");
    free(addr);
    stop(d);
}

Test(daemon, cluster_settings_from_the_config_file_and_flags) {
    char config[PATH_MAX + 16];
    snprintf(config, sizeof config, "%s/cluster.json", dir);
    cr_assert_eq(mp_harness_write_file(config,
                                       "{\"advertise\": \"localhost:9\", \"max-peer-conns\": 8,"
                                       " \"catalog-ttl-ms\": 45000,"
                                       " \"peers\": [\"127.0.0.1:1\"],"
                                       " \"swim\": {\"probe_interval_ms\": 700,"
                                       " \"gossip-interval-ms\": 70}}"),
                 0);
    /* A --swim flag overrides its field only; the file's other fields stay. */
    const char *extra[] = {"--config",    config,  "--swim", "gossip_interval_ms=60",
                           "--log-level", "debug", NULL};
    mp_harness_daemon *d = start("cfg", extra);
    char *addr = self_addr(d);
    cr_assert_str_eq(addr, "localhost:9");
    free(addr);
    cr_assert(mp_harness_file_contains(d->err_path, "probe_interval_ms=700 probe_timeout_ms=500"),
              "the file's swim settings were not used");
    cr_assert(mp_harness_file_contains(d->err_path, "gossip_interval_ms=60 "),
              "the --swim flag did not win over the file");
    cr_assert(mp_harness_file_contains(d->err_path, "1 peer to join through"));
    cr_assert(mp_harness_file_contains(d->err_path, "entries expire 45000 ms after"),
              "the file's catalog_ttl_ms was not used");
    /* A seed that does not answer does not stop the node from serving. */
    ping_pong(client(d));
    stop(d);
}

Test(daemon, help_and_version) {
    char *out = NULL;
    const char *help[] = {"--help", NULL};
    int rc = mp_harness_run(dir, help, MP_HARNESS_START_TIMEOUT_MS, &out, NULL);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "status %d", rc);
    static const char *const flags[] = {
        "--config",
        "--listen",
        "--port-file",
        "--name",
        "--cluster",
        "--data-dir",
        "--resource",
        "--plugin",
        "--token",
        "--max-frame",
        "--log-level",
        "--help",
        "--version",
        "127.0.0.1:6464",
        "Example",
        "--peer",
        "--advertise",
        "--swim",
        "--max-peer-conns",
        "probe_interval_ms",
        "A cluster of three nodes on one machine",
        "--catalog-ttl",
        "reconnect_interval_ms",
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        cr_assert(out != NULL && strstr(out, flags[i]) != NULL, "help lacks %s", flags[i]);
    }
    free(out);
    const char *version[] = {"--version", NULL};
    rc = mp_harness_run(dir, version, MP_HARNESS_START_TIMEOUT_MS, &out, NULL);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "status %d", rc);
    cr_assert(out != NULL && strncmp(out, "mpregd ", 7) == 0, "version: %s", out);
    free(out);
}
