/* hostile.h - what the hostile tests share: a node, raw clients, RPC by
 * hand, the daemon's memory, and an ordinary call timed while an attack
 * runs.
 *
 * Every hostile test plays a client that means harm (or is merely broken)
 * against a real mpregd, and checks three things: nothing owed is dropped
 * in silence, the daemon's memory stays under a stated bound, and another,
 * ordinary client is served at normal latency meanwhile (MP_HOSTILE_CALL_MS).
 * The header is included by exactly one test file per executable. */
#ifndef MP_HOSTILE_H
#define MP_HOSTILE_H

#include "harness.h"

#include "services/rpc_plan.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Under AddressSanitizer (make test-asan, which builds mpregd the same way)
 * every allocation carries redzones and freed memory sits in a quarantine
 * of up to 256 MiB before it is reused: memory bounds are then checked at
 * four times their figure, and memory coming back is not checked at all
 * (the quarantine keeps it by design). The figures in the comments and
 * in the notes are those of the ordinary build. */
#if defined(__SANITIZE_ADDRESS__)
#define MP_HOSTILE_ASAN 1
#define MP_HOSTILE_KIB(k) ((long)(k)*4)
#else
#define MP_HOSTILE_ASAN 0
#define MP_HOSTILE_KIB(k) ((long)(k))
#endif

/* An ordinary call must be answered within this while an attack runs
 * (five times that under AddressSanitizer, which slows everything). */
#define MP_HOSTILE_CALL_MS (MP_HOSTILE_ASAN ? 500 : 100)

static inline uint64_t hostile_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline void hostile_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The daemon's resident memory, KiB (VmRSS), or -1. */
static inline long hostile_rss_kib(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) {
            break;
        }
    }
    fclose(f);
    return kib;
}

/* The one node a test attacks (tests that need more start their own). */
static mp_harness_node *hostile_node;

/* mpregd on 127.0.0.1 port 0 with extra flags (NULL-terminated, may be
 * NULL); the suite's .fini stops it (hostile_stop). */
static inline void hostile_start(const char *const *extra) {
    hostile_node = mp_harness_start(extra);
    cr_assert_not_null(hostile_node, "mpregd did not start");
}

static inline void hostile_stop(void) {
    cr_expect_eq(mp_harness_stop(hostile_node), 0, "mpregd did not stop cleanly");
    hostile_node = NULL;
}

static inline long hostile_node_rss(void) {
    return hostile_rss_kib(mp_harness_daemon_of(hostile_node)->pid);
}

/* An RPC_REQUEST payload for the commands (JSON list). */
static inline void hostile_request_payload(const char *commands_json, mpreg_bytes *payload) {
    mpreg_value commands;
    char why[128];
    cr_assert_eq(
        mpreg_value_from_json(commands_json, strlen(commands_json), &commands, why, sizeof why),
        MPREG_OK, "bad test JSON: %s", why);
    mp_rpc_request req = {0};
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_commands_parse(&commands, &req, &err), MPREG_OK, "%s",
                 mp_rpc_error_message(&err));
    cr_assert_eq(mp_rpc_request_encode(&req, payload), MPREG_OK);
    mp_rpc_request_free(&req);
    mpreg_value_free(&commands);
}

/* Appends one frame of an envelope of kind (fresh id into *id when not
 * NULL) to out. */
static inline void hostile_frame(mp_buf *out, mp_kind kind, const char *topic,
                                 const mpreg_bytes *payload, mp_id *id) {
    mp_envelope e;
    mp_envelope_init(&e, kind);
    e.id = mp_harness_id();
    if (id) {
        *id = e.id;
    }
    e.topic = topic ? mp_str_c(topic) : MP_STR_NULL;
    if (payload) {
        e.payload = (mp_bytes){payload->data, payload->len};
    }
    cr_assert_eq(mp_envelope_encode_frame(&e, out), MPREG_OK);
}

/* The decoded RPC_REPLY to an RPC_REQUEST of commands_json on fd. */
static inline void hostile_rpc(int fd, const char *commands_json, mp_rpc_outcome *out) {
    mpreg_bytes payload = {0};
    hostile_request_payload(commands_json, &payload);
    mp_id id;
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_RPC_REQUEST, NULL, &payload, &id), 0);
    mpreg_bytes_free(&payload);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    int rc = mp_harness_recv_envelope(fd, &buf, &e, MP_HARNESS_IO_TIMEOUT_MS);
    cr_assert_eq(rc, 1, "no answer to an RPC_REQUEST");
    if (e.kind == MP_KIND_ERROR) {
        mpreg_value v;
        cr_assert_eq(mp_harness_payload_value(&e, &v), MPREG_OK);
        char *json = mpreg_value_to_json(&v, false);
        cr_assert_fail("RPC_REQUEST answered with an ERROR: %s", json);
    }
    cr_assert_eq(e.kind, MP_KIND_RPC_REPLY, "got %s", mp_kind_name(e.kind));
    cr_assert(mp_id_equal(&e.correlation_id, &id));
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_reply_decode(e.payload.ptr, e.payload.len, out, &err), MPREG_OK);
    mp_buf_free(&buf);
}

/* One echo call on fd, timed (ms); it must succeed. */
static inline uint64_t hostile_timed_echo(int fd) {
    uint64_t t0 = hostile_now_ms();
    mp_rpc_outcome o = {0};
    hostile_rpc(fd, "[{\"name\": \"e\", \"fun\": \"echo\", \"args\": [\"ok\"]}]", &o);
    uint64_t ms = hostile_now_ms() - t0;
    cr_assert(o.ok, "an ordinary call failed: %s", mp_rpc_error_message(&o.error));
    mp_rpc_outcome_free(&o);
    return ms;
}

/* The worst of `count` ordinary calls on a connection of its own, spread
 * over about `spread_ms`: what an innocent client sees during an attack. */
static inline uint64_t hostile_worst_echo(uint16_t port, int count, int spread_ms) {
    int fd = mp_harness_client(port);
    cr_assert_geq(fd, 0, "an ordinary client could not connect");
    uint64_t worst = 0;
    for (int i = 0; i < count; i++) {
        uint64_t ms = hostile_timed_echo(fd);
        worst = ms > worst ? ms : worst;
        hostile_sleep_ms(spread_ms / count);
    }
    close(fd);
    return worst;
}

/* The CONTROL reply for op on fd, which must come. */
static inline void hostile_control(int fd, const char *op, mpreg_value *out) {
    mp_id id;
    cr_assert_eq(mp_harness_send_kind(fd, MP_KIND_CONTROL, op, NULL, &id), 0);
    mp_buf buf = MP_BUF_INIT;
    mp_envelope e;
    cr_assert_eq(mp_harness_recv_envelope(fd, &buf, &e, MP_HARNESS_IO_TIMEOUT_MS), 1);
    cr_assert_eq(e.kind, MP_KIND_CONTROL_REPLY, "got %s", mp_kind_name(e.kind));
    cr_assert_eq(mp_harness_payload_value(&e, out), MPREG_OK);
    mp_buf_free(&buf);
}

/* status["path"]["to"]... as an integer (path: NULL-terminated keys). */
static inline int64_t hostile_int_at(const mpreg_value *v, const char *const *path) {
    for (; *path; path++) {
        cr_assert(v && v->type == MPREG_MAP, "no map at \"%s\"", *path);
        v = mpreg_map_get(v, *path);
    }
    cr_assert(v && v->type == MPREG_INT, "no integer at the path");
    return v->u.i;
}

/* A thread that writes a buffer to a socket (blocking), so that the test
 * can read while it writes. */
typedef struct hostile_writer {
    pthread_t thread;
    int fd;
    const uint8_t *data;
    size_t len;
    int rc;
} hostile_writer;

static inline void *hostile_writer_run(void *ud) {
    hostile_writer *w = ud;
    w->rc = mp_harness_send(w->fd, w->data, w->len);
    return NULL;
}

static inline void hostile_writer_start(hostile_writer *w, int fd, const mp_buf *data) {
    *w = (hostile_writer){.fd = fd, .data = data->data, .len = data->len};
    cr_assert_eq(pthread_create(&w->thread, NULL, hostile_writer_run, w), 0);
}

static inline int hostile_writer_join(hostile_writer *w) {
    pthread_join(w->thread, NULL);
    return w->rc;
}

#endif
