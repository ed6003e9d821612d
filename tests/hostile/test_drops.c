/* test_drops.c - nothing owed is dropped in silence (issue: hardening).
 *
 * A client that pipelines far more than it reads must get every answer it
 * is owed, or see its connection closed with an ERROR that says why; it
 * must never find answers simply missing. PROTOCOL §7.7: a connection
 * whose output is full is not read until it drains. */
#define _GNU_SOURCE
#include "hostile.h"

static mp_harness_node *node;

static void setup(void) {
    node = mp_harness_start(NULL);
    cr_assert_not_null(node, "mpregd did not start");
}

static void teardown(void) {
    cr_expect_eq(mp_harness_stop(node), 0, "mpregd did not stop cleanly");
}

TestSuite(drops, .init = setup, .fini = teardown, .timeout = 120);

/* c0 = echo("x" * 1000), c_i = echos(c_{i-1}, c_{i-1}): a reply of about
 * 1000 * 2^levels bytes from a request of about a kilobyte. */
static char *doubling_request(int levels) {
    size_t cap = 2048 + (size_t)levels * 96;
    char *json = malloc(cap);
    cr_assert_not_null(json);
    int n = snprintf(json, cap, "[{\"name\": \"c0\", \"fun\": \"echo\", \"args\": [\"");
    memset(json + n, 'x', 1000);
    n += 1000;
    n += snprintf(json + n, cap - (size_t)n, "\"]}");
    for (int i = 1; i <= levels; i++) {
        n += snprintf(json + n, cap - (size_t)n,
                      ", {\"name\": \"c%d\", \"fun\": \"echos\", \"args\": [\"c%d\", \"c%d\"]}", i,
                      i - 1, i - 1);
    }
    snprintf(json + n, cap - (size_t)n, "]");
    return json;
}

/* Seen on the old main: of 60 such requests sent in one write, 32 replies
 * came back and 28 never did, with no error anywhere. */
Test(drops, sixty_pipelined_4mb_replies_all_arrive) {
    uint16_t port = mp_harness_port(node);
    int fd = mp_harness_client(port);
    cr_assert_geq(fd, 0);
    char *json = doubling_request(12);
    mpreg_bytes payload = {0};
    hostile_request_payload(json, &payload);
    free(json);
    enum { N = 60 };
    mp_buf burst = MP_BUF_INIT;
    for (int i = 0; i < N; i++) {
        hostile_frame(&burst, MP_KIND_RPC_REQUEST, NULL, &payload, NULL);
    }
    mpreg_bytes_free(&payload);
    cr_assert_eq(mp_harness_send(fd, burst.data, burst.len), 0, "one write of 60 requests");
    mp_buf_free(&burst);

    /* The client does not read for a while: its answers pile up. */
    uint64_t worst = hostile_worst_echo(port, 10, 1000);
    cr_expect_leq(worst, MP_HOSTILE_CALL_MS, "an ordinary call took %llu ms during the attack",
                  (unsigned long long)worst);

    int replies = 0, ok = 0;
    mp_buf buf = MP_BUF_INIT;
    for (int i = 0; i < N; i++) {
        mp_envelope e;
        int rc = mp_harness_recv_envelope(fd, &buf, &e, 10000);
        if (rc != 1) {
            break;
        }
        cr_assert_eq(e.kind, MP_KIND_RPC_REPLY, "reply %d is a %s", i, mp_kind_name(e.kind));
        replies++;
        mp_rpc_outcome o = {0};
        mp_rpc_error err = MP_RPC_ERROR_INIT;
        cr_assert_eq(mp_rpc_reply_decode(e.payload.ptr, e.payload.len, &o, &err), MPREG_OK);
        ok += o.ok;
        mp_rpc_outcome_free(&o);
    }
    mp_buf_free(&buf);
    cr_assert_eq(replies, N, "%d of %d replies arrived", replies, N);
    cr_assert_eq(ok, N, "%d of %d replies were results", ok, N);

    mpreg_value st;
    hostile_control(fd, "status", &st);
    cr_assert_eq(hostile_int_at(&st, (const char *[]){"counters", "rpc_errors", NULL}), 0);
    mpreg_value_free(&st);
    close(fd);
}

/* Seen on the old main: 2000 PINGs of 64 KiB, read 3 s later: 1088 PONGs. */
Test(drops, two_thousand_64k_pings_get_two_thousand_pongs) {
    uint16_t port = mp_harness_port(node);
    int fd = mp_harness_client(port);
    cr_assert_geq(fd, 0);
    enum { N = 2000, SIZE = 64 * 1024 };
    uint8_t *blob = malloc(SIZE);
    cr_assert_not_null(blob);
    memset(blob, 'p', SIZE);
    mpreg_bytes payload = {blob, SIZE};
    mp_buf pings = MP_BUF_INIT;
    for (int i = 0; i < N; i++) {
        hostile_frame(&pings, MP_KIND_PING, NULL, &payload, NULL);
    }
    free(blob);
    hostile_writer w;
    hostile_writer_start(&w, fd, &pings);
    hostile_sleep_ms(3000);
    pid_t pid = mp_harness_daemon_of(node)->pid;
    long rss = hostile_rss_kib(pid);
    int pongs = 0;
    mp_buf buf = MP_BUF_INIT;
    for (int i = 0; i < N; i++) {
        mp_envelope e;
        int rc = mp_harness_recv_envelope(fd, &buf, &e, 10000);
        if (rc != 1) {
            char *log = mp_harness_read_file(mp_harness_daemon_of(node)->err_path);
            cr_log_warn("after %d PONGs: %s (%s); the daemon said:\n%s", pongs,
                        rc == 0 ? "closed" : "read failed", strerror(errno), log ? log : "");
            free(log);
            break;
        }
        cr_assert_eq(e.kind, MP_KIND_PONG, "answer %d is a %s", i, mp_kind_name(e.kind));
        cr_assert_eq(e.payload.len, SIZE);
        pongs++;
    }
    mp_buf_free(&buf);
    cr_assert_eq(hostile_writer_join(&w), 0, "the writer could not write every PING");
    mp_buf_free(&pings);
    cr_assert_eq(pongs, N, "%d of %d PONGs arrived", pongs, N);
    /* Paused at the high-water mark (8 MiB), the node held little while the
     * client was not reading: well under the 128 MiB of PONGs. */
    cr_assert_lt(rss, MP_HOSTILE_KIB(64 * 1024),
                 "daemon RSS %ld KiB while the client was not reading", rss);
    close(fd);
}
