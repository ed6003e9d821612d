/* test_transport.c - the libuv TCP transport, over real loopback sockets.
 *
 * Every test runs its own loop with a guard timer that fails the test after
 * GUARD_MS, so a lost callback shows up as a failure rather than a hang. Two
 * transports usually share the loop (server and client), which is also the
 * check that transports keep no global state. Misbehaving peers are plain
 * POSIX sockets watched with uv_poll. */
#define _GNU_SOURCE
#include "core/buf.h"
#include "core/frame.h"
#include "runtime/transport.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define GUARD_MS 5000
#define MAX_CONNS 16

/* ---- harness: one loop per test, guarded ------------------------------------ */

typedef struct harness {
    uv_loop_t loop;
    uv_timer_t guard;
} harness;

static void guard_fired(uv_timer_t *h) {
    (void)h;
    cr_assert_fail("test timed out after %d ms", GUARD_MS);
}

static void h_init(harness *h) {
    signal(SIGPIPE, SIG_IGN); /* see transport.h */
    cr_assert_eq(uv_loop_init(&h->loop), 0);
    cr_assert_eq(uv_timer_init(&h->loop, &h->guard), 0);
    cr_assert_eq(uv_timer_start(&h->guard, guard_fired, GUARD_MS, 0), 0);
}

/* The guard keeps the loop alive, so UV_RUN_ONCE always waits for something.
 * A condition can become true in the timer phase of an iteration that then
 * blocks in poll; so every callback that records an event pokes the loop
 * (uv_stop: poll does not block, uv_run returns) to have it re-checked. */
#define RUN_UNTIL(h, cond)                                                                         \
    do {                                                                                           \
        while (!(cond)) {                                                                          \
            uv_run(&(h)->loop, UV_RUN_ONCE);                                                       \
        }                                                                                          \
    } while (0)

static void poke(uv_loop_t *loop) {
    uv_stop(loop);
}

static void flag_timer(uv_timer_t *t) {
    *(bool *)t->data = true;
    poke(t->loop);
}

/* Lets the loop run for ms more, to catch callbacks that should not come. */
static void run_for(harness *h, uint64_t ms) {
    uv_timer_t t;
    bool done = false;
    uv_timer_init(&h->loop, &t);
    t.data = &done;
    uv_timer_start(&t, flag_timer, ms, 0);
    RUN_UNTIL(h, done);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&h->loop, UV_RUN_NOWAIT);
}

static void h_finish(harness *h) {
    uv_close((uv_handle_t *)&h->guard, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "a handle was left open");
}

/* ---- frame contents ------------------------------------------------------------ */

static uint8_t pattern_byte(uint32_t seq, size_t i) {
    return (uint8_t)(seq * 131u + i * 7u + (i >> 8));
}

/* A body of len bytes: the sequence number first (when it fits), then a
 * pattern that depends on both, so misplaced or mangled bytes show. */
static uint8_t *make_body(uint32_t seq, size_t len) {
    uint8_t *b = malloc(len);
    cr_assert_not_null(b);
    for (size_t i = 0; i < len; i++) {
        b[i] = pattern_byte(seq, i);
    }
    if (len >= 4) {
        mp_put_u32be(b, seq);
    }
    return b;
}

static void check_body(uint32_t seq, const uint8_t *b, size_t len) {
    if (len >= 4) {
        cr_assert_eq(mp_get_u32be(b), seq, "frame out of order: got %u, want %u", mp_get_u32be(b),
                     seq);
    }
    for (size_t i = len >= 4 ? 4 : 0; i < len; i++) {
        if (b[i] != pattern_byte(seq, i)) {
            cr_assert_fail("frame %u (len %zu) corrupt at byte %zu", seq, len, i);
        }
    }
}

/* ---- an endpoint: a transport plus a record of its callbacks ------------------- */

typedef struct endpoint endpoint;
typedef void (*frame_hook)(endpoint *e, uint64_t id, const uint8_t *f, size_t len);
typedef void (*conn_hook)(endpoint *e, uint64_t id);

struct endpoint {
    harness *h;
    mp_transport *t;
    int seq; /* event clock, to check callback order */

    uint64_t accepted[MAX_CONNS];
    size_t n_accepted;
    uint64_t connected[MAX_CONNS];
    mpreg_err connect_status[MAX_CONNS];
    size_t n_connected;
    uint64_t closed[MAX_CONNS];
    mpreg_err close_reason[MAX_CONNS];
    int close_seq[MAX_CONNS];
    size_t frames_at_close[MAX_CONNS];
    size_t n_closed;
    uint64_t proto_conn;
    mpreg_err proto_err;
    int proto_seq;
    size_t n_proto;
    size_t n_writable;
    bool shut;

    size_t n_frames;
    mp_buf log; /* every frame received, re-framed */
    bool echo;
    bool pause_on_accept;
    const char *error_reply; /* queued from on_protocol_error */
    frame_hook on_frame;
    conn_hook on_accept;
    conn_hook on_connected;
    void *user;
};

static void ep_accept(void *ud, uint64_t id, const char *peer) {
    endpoint *e = ud;
    poke(&e->h->loop);
    cr_assert_not_null(peer);
    cr_assert(strchr(peer, ':') != NULL, "peer text '%s' has no port", peer);
    cr_assert_lt(e->n_accepted, MAX_CONNS);
    e->accepted[e->n_accepted++] = id;
    e->seq++;
    if (e->pause_on_accept) {
        cr_assert_eq(mp_transport_pause_reading(e->t, id), MPREG_OK);
    }
    if (e->on_accept) {
        e->on_accept(e, id);
    }
}

static void ep_connected(void *ud, uint64_t id, mpreg_err status) {
    endpoint *e = ud;
    poke(&e->h->loop);
    for (size_t i = 0; i < e->n_connected; i++) {
        cr_assert_neq(e->connected[i], id, "on_connected twice for %lu", (unsigned long)id);
    }
    cr_assert_lt(e->n_connected, MAX_CONNS);
    e->connected[e->n_connected] = id;
    e->connect_status[e->n_connected++] = status;
    e->seq++;
    if (status == MPREG_OK && e->on_connected) {
        e->on_connected(e, id);
    }
}

/* Echoes alternately through mp_transport_send and by framing in place. */
static void ep_echo(endpoint *e, uint64_t id, const uint8_t *f, size_t len) {
    if (e->n_frames % 2) {
        cr_assert_eq(mp_transport_send(e->t, id, f, len), MPREG_OK);
        return;
    }
    mp_buf *out = mp_transport_output(e->t, id);
    cr_assert_not_null(out);
    size_t start = mp_frame_begin(out);
    cr_assert_neq(start, MP_FRAME_BEGIN_FAILED);
    cr_assert_eq(mp_buf_append(out, f, len), MPREG_OK);
    cr_assert_eq(mp_frame_end(out, start, mp_transport_max_frame(e->t)), MPREG_OK);
    mp_transport_output_commit(e->t, id, 1);
}

static void ep_frame(void *ud, uint64_t id, const uint8_t *f, size_t len) {
    endpoint *e = ud;
    poke(&e->h->loop);
    cr_assert_geq(len, 1);
    e->seq++;
    if (e->on_frame) {
        e->on_frame(e, id, f, len);
    } else {
        cr_assert_eq(mp_frame_write(&e->log, f, len, MP_FRAME_LIMIT_MAX), MPREG_OK);
    }
    if (e->echo) {
        ep_echo(e, id, f, len);
    }
    e->n_frames++;
}

static void ep_protocol_error(void *ud, uint64_t id, mpreg_err err) {
    endpoint *e = ud;
    poke(&e->h->loop);
    e->n_proto++;
    e->proto_conn = id;
    e->proto_err = err;
    e->proto_seq = ++e->seq;
    if (e->error_reply) {
        cr_assert_eq(mp_transport_send(e->t, id, e->error_reply, strlen(e->error_reply)), MPREG_OK);
    }
}

static void ep_close(void *ud, uint64_t id, mpreg_err reason) {
    endpoint *e = ud;
    poke(&e->h->loop);
    for (size_t i = 0; i < e->n_closed; i++) {
        cr_assert_neq(e->closed[i], id, "on_close twice for %lu", (unsigned long)id);
    }
    cr_assert_lt(e->n_closed, MAX_CONNS);
    e->closed[e->n_closed] = id;
    e->close_reason[e->n_closed] = reason;
    e->frames_at_close[e->n_closed] = e->n_frames;
    e->close_seq[e->n_closed++] = ++e->seq;
    /* The id is dead at once. */
    cr_assert_eq(mp_transport_send(e->t, id, "x", 1), MPREG_E_CLOSED);
}

static void ep_writable(void *ud, uint64_t id) {
    endpoint *e = ud;
    poke(&e->h->loop);
    (void)id;
    e->n_writable++;
}

static const mp_transport_callbacks ep_callbacks = {
    .on_accept = ep_accept,
    .on_connected = ep_connected,
    .on_frame = ep_frame,
    .on_protocol_error = ep_protocol_error,
    .on_close = ep_close,
    .on_writable = ep_writable,
};

static void ep_init(endpoint *e, harness *h, const mp_transport_config *cfg) {
    memset(e, 0, sizeof *e);
    e->h = h;
    mp_buf_init(&e->log);
    cr_assert_eq(mp_transport_new(&h->loop, cfg, &ep_callbacks, e, &e->t), MPREG_OK);
}

static void ep_shut(mp_transport *t, void *ud) {
    endpoint *e = ud;
    poke(&e->h->loop);
    cr_assert_eq(e->t, t);
    e->shut = true;
}

static void ep_teardown(endpoint *e) {
    if (!e->shut) {
        cr_assert_eq(mp_transport_shutdown(e->t, ep_shut), MPREG_OK);
        RUN_UNTIL(e->h, e->shut);
    }
    mp_transport_stats st;
    mp_transport_get_stats(e->t, &st);
    cr_assert_eq(st.connections, 0);
    cr_assert_eq(st.listeners, 0);
    cr_assert_eq(mp_transport_free(e->t), MPREG_OK);
    mp_buf_free(&e->log);
}

static uint16_t ep_listen(endpoint *e) {
    uint16_t port = 0;
    cr_assert_eq(mp_transport_listen(e->t, "127.0.0.1", 0, &port), MPREG_OK, "%s",
                 mp_transport_last_error(e->t));
    cr_assert_neq(port, 0);
    return port;
}

/* Dials and waits until both sides know the connection. */
static uint64_t ep_connect(endpoint *c, endpoint *s, const char *host, uint16_t port) {
    uint64_t id = 0;
    size_t acc = s->n_accepted;
    size_t con = c->n_connected;
    cr_assert_eq(mp_transport_dial(c->t, host, port, &id), MPREG_OK, "%s",
                 mp_transport_last_error(c->t));
    cr_assert_neq(id, 0);
    RUN_UNTIL(c->h, c->n_connected > con && s->n_accepted > acc);
    cr_assert_eq(c->connected[con], id);
    cr_assert_eq(c->connect_status[con], MPREG_OK, "%s", mp_transport_last_error(c->t));
    return id;
}

/* ---- a raw peer: a plain socket that can misbehave ----------------------------- */

typedef struct raw_peer {
    int fd;
    uv_poll_t poll;
    mp_buf in;
    bool eof;
} raw_peer;

static void raw_readable(uv_poll_t *p, int status, int events) {
    raw_peer *r = p->data;
    uint8_t tmp[65536];
    (void)status;
    (void)events;
    poke(p->loop);
    for (;;) {
        ssize_t n = recv(r->fd, tmp, sizeof tmp, 0);
        if (n > 0) {
            cr_assert_eq(mp_buf_append(&r->in, tmp, (size_t)n), MPREG_OK);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        r->eof = true; /* EOF or reset: either way the stream is over */
        uv_poll_stop(p);
        return;
    }
}

static void raw_connect(raw_peer *r, harness *h, uint16_t port) {
    memset(r, 0, sizeof *r);
    mp_buf_init(&r->in);
    r->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(r->fd, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The listener's backlog completes the handshake without the loop. */
    cr_assert_eq(connect(r->fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
    int one = 1;
    cr_assert_eq(setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
    cr_assert_eq(fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK), 0);
    cr_assert_eq(uv_poll_init(&h->loop, &r->poll, r->fd), 0);
    r->poll.data = r;
    cr_assert_eq(uv_poll_start(&r->poll, UV_READABLE, raw_readable), 0);
}

static void raw_write(raw_peer *r, const void *data, size_t len) {
    ssize_t n = send(r->fd, data, len, MSG_NOSIGNAL);
    cr_assert_eq(n, (ssize_t)len, "raw send: %s", n < 0 ? strerror(errno) : "short");
}

static void raw_closed(uv_handle_t *h) {
    raw_peer *r = h->data;
    close(r->fd);
    r->fd = -1;
    mp_buf_free(&r->in);
}

static void raw_close(raw_peer *r) {
    uv_close((uv_handle_t *)&r->poll, raw_closed);
}

/* A framed copy of body, to compare streams with. */
static void expect_frame(mp_buf *b, const char *body) {
    cr_assert_eq(mp_frame_write(b, body, strlen(body), MP_FRAME_LIMIT_MAX), MPREG_OK);
}

static void assert_stream_eq(const mp_buf *got, const mp_buf *want) {
    cr_assert_eq(got->len, want->len, "got %zu bytes, want %zu", got->len, want->len);
    cr_assert(memcmp(got->data, want->data, want->len) == 0, "stream differs");
}

/* ---- listening ------------------------------------------------------------------ */

Test(transport, listen_port_zero_ipv4_ipv6_localhost) {
    harness h;
    endpoint s, c;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);

    uint16_t p4 = ep_listen(&s);
    uint16_t p6 = 0, plocal = 0;
    cr_assert_eq(mp_transport_listen(s.t, "::1", 0, &p6), MPREG_OK, "%s",
                 mp_transport_last_error(s.t));
    cr_assert_neq(p6, 0);
    cr_assert_eq(mp_transport_listen(s.t, "localhost", 0, &plocal), MPREG_OK, "%s",
                 mp_transport_last_error(s.t));
    cr_assert_neq(plocal, 0);
    mp_transport_stats st;
    mp_transport_get_stats(s.t, &st);
    cr_assert_geq(st.listeners, 3);

    ep_connect(&c, &s, "127.0.0.1", p4);
    ep_connect(&c, &s, "::1", p6);
    ep_connect(&c, &s, "[::1]", p6);
    ep_connect(&c, &s, "localhost", plocal);
    cr_assert_eq(s.n_accepted, 4);

    ep_teardown(&c);
    ep_teardown(&s);
    cr_assert_eq(s.n_closed, 4);
    cr_assert_eq(c.n_closed, 4);
    h_finish(&h);
}

Test(transport, listen_on_port_in_use_is_a_clear_error) {
    harness h;
    endpoint s;
    h_init(&h);
    ep_init(&s, &h, NULL);
    uint16_t port = ep_listen(&s);
    uint16_t again = 0;
    cr_assert_eq(mp_transport_listen(s.t, "127.0.0.1", port, &again), MPREG_E_IO);
    const char *msg = mp_transport_last_error(s.t);
    cr_assert(strstr(msg, "address already in use") != NULL, "message: %s", msg);
    cr_assert(strstr(msg, "127.0.0.1") != NULL, "message: %s", msg);
    cr_assert_eq(again, 0);
    mp_transport_stats st;
    mp_transport_get_stats(s.t, &st);
    cr_assert_eq(st.listeners, 1, "the failed listener must not linger");
    cr_assert_eq(mp_transport_listen(s.t, "127.0.0.1", port, NULL), MPREG_E_IO);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- frames both ways ------------------------------------------------------------ */

static const size_t echo_sizes[] = {1,    2,     3,     4,     5,      100,     1000,   4095,
                                    4096, 65535, 65536, 65537, 262144, 1048575, 1048576};
#define N_ECHO_SIZES (sizeof echo_sizes / sizeof echo_sizes[0])
#define ECHO_SMALL 200
#define ECHO_BURSTS 4
#define ECHO_PER_BURST (N_ECHO_SIZES + ECHO_SMALL)

typedef struct echo_state {
    uint32_t sent;
    uint32_t received;
    uint64_t conn;
    uint64_t bytes_sent;
} echo_state;

static size_t echo_len(uint32_t seq) {
    uint32_t k = seq % ECHO_PER_BURST;
    return k < N_ECHO_SIZES ? echo_sizes[k] : 1 + (k - N_ECHO_SIZES) % 37;
}

static void echo_send_burst(endpoint *c) {
    echo_state *st = c->user;
    for (size_t i = 0; i < ECHO_PER_BURST; i++) {
        size_t len = echo_len(st->sent);
        uint8_t *b = make_body(st->sent, len);
        cr_assert_eq(mp_transport_send(c->t, st->conn, b, len), MPREG_OK);
        free(b);
        st->sent++;
        st->bytes_sent += MP_FRAME_HEADER + len;
    }
}

static void echo_client_frame(endpoint *c, uint64_t id, const uint8_t *f, size_t len) {
    echo_state *st = c->user;
    cr_assert_eq(id, st->conn);
    cr_assert_lt(st->received, st->sent);
    cr_assert_eq(len, echo_len(st->received), "frame %u has the wrong length", st->received);
    check_body(st->received, f, len);
    st->received++;
    /* The next burst goes out once this one is back: several round trips. */
    if (st->received == st->sent && st->sent < ECHO_BURSTS * ECHO_PER_BURST) {
        echo_send_burst(c);
    }
}

static void echo_client_connected(endpoint *c, uint64_t id) {
    echo_state *st = c->user;
    st->conn = id;
    echo_send_burst(c);
}

Test(transport, frames_both_ways_1b_to_1mib_in_order) {
    harness h;
    endpoint s, c;
    echo_state st = {0};
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    s.echo = true;
    s.on_frame = NULL;
    c.user = &st;
    c.on_frame = echo_client_frame;
    c.on_connected = echo_client_connected;
    uint16_t port = ep_listen(&s);

    uint64_t id = ep_connect(&c, &s, "127.0.0.1", port);
    cr_assert_eq(id, st.conn);
    RUN_UNTIL(&h, st.received == ECHO_BURSTS * ECHO_PER_BURST);
    cr_assert_eq(st.sent, st.received);

    mp_transport_conn_stats cs, ss;
    cr_assert_eq(mp_transport_get_conn_stats(c.t, id, &cs), MPREG_OK);
    cr_assert_eq(mp_transport_get_conn_stats(s.t, s.accepted[0], &ss), MPREG_OK);
    cr_assert_eq(cs.frames_out, st.sent);
    cr_assert_eq(cs.frames_in, st.sent);
    cr_assert_eq(ss.frames_in, st.sent);
    cr_assert_eq(ss.frames_out, st.sent);
    cr_assert_eq(cs.bytes_out, st.bytes_sent);
    cr_assert_eq(ss.bytes_in, st.bytes_sent);
    cr_assert_eq(ss.bytes_out, st.bytes_sent);
    cr_assert_eq(cs.pending_bytes, 0);
    cr_assert_eq(cs.buffered_in, 0);
    mp_transport_stats ts;
    mp_transport_get_stats(c.t, &ts);
    cr_assert_eq(ts.totals.frames_out, st.sent);
    cr_assert_eq(ts.dialed, 1);
    cr_assert_eq(ts.connections, 1);

    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- a frame dribbled in one byte at a time --------------------------------------- */

typedef struct dribble {
    raw_peer *peer;
    mp_buf bytes;
    size_t off;
} dribble;

static void dribble_tick(uv_timer_t *t) {
    dribble *d = t->data;
    poke(t->loop);
    raw_write(d->peer, d->bytes.data + d->off, 1);
    if (++d->off == d->bytes.len) {
        uv_timer_stop(t);
    }
}

Test(transport, frame_split_into_single_bytes_arrives_intact) {
    harness h;
    endpoint s;
    raw_peer r;
    dribble d = {0};
    h_init(&h);
    ep_init(&s, &h, NULL);
    uint16_t port = ep_listen(&s);
    raw_connect(&r, &h, port);
    RUN_UNTIL(&h, s.n_accepted == 1);

    mp_buf want = MP_BUF_INIT;
    expect_frame(&want, "hello, one byte at a time");
    expect_frame(&want, "!");
    d.peer = &r;
    mp_buf_init(&d.bytes);
    cr_assert_eq(mp_buf_append(&d.bytes, want.data, want.len), MPREG_OK);
    uv_timer_t tick;
    uv_timer_init(&h.loop, &tick);
    tick.data = &d;
    uv_timer_start(&tick, dribble_tick, 1, 1);
    RUN_UNTIL(&h, s.n_frames == 2);
    assert_stream_eq(&s.log, &want);
    cr_assert_eq(d.off, d.bytes.len);

    /* Two whole frames and half a third in one write, then the rest. */
    mp_buf more = MP_BUF_INIT;
    expect_frame(&more, "alpha");
    expect_frame(&more, "beta");
    expect_frame(&more, "gamma-gamma");
    raw_write(&r, more.data, more.len - 6);
    RUN_UNTIL(&h, s.n_frames == 4);
    mp_transport_conn_stats cs;
    cr_assert_eq(mp_transport_get_conn_stats(s.t, s.accepted[0], &cs), MPREG_OK);
    cr_assert_eq(cs.buffered_in, 4 + 11 - 6);
    raw_write(&r, more.data + more.len - 6, 6);
    RUN_UNTIL(&h, s.n_frames == 5);
    cr_assert_eq(mp_buf_append(&want, more.data, more.len), MPREG_OK);
    assert_stream_eq(&s.log, &want);

    uv_close((uv_handle_t *)&tick, NULL);
    raw_close(&r);
    ep_teardown(&s);
    mp_buf_free(&want);
    mp_buf_free(&more);
    mp_buf_free(&d.bytes);
    h_finish(&h);
}

/* ---- framing errors ------------------------------------------------------------------ */

static void protocol_error_case(uint32_t bad_len, mpreg_err want) {
    harness h;
    endpoint s, c;
    raw_peer r;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    s.echo = true;
    s.error_reply = "ERROR: bad frame";
    uint16_t port = ep_listen(&s);
    uint64_t good = ep_connect(&c, &s, "127.0.0.1", port);

    raw_connect(&r, &h, port);
    RUN_UNTIL(&h, s.n_accepted == 2);
    uint64_t bad = s.accepted[1];
    uint8_t junk[64];
    mp_put_u32be(junk, bad_len);
    memset(junk + 4, 0xab, sizeof junk - 4);
    raw_write(&r, junk, sizeof junk);

    /* The ERROR frame arrives, then our FIN; no frame was delivered. */
    RUN_UNTIL(&h, r.eof);
    cr_assert_eq(s.n_proto, 1);
    cr_assert_eq(s.proto_conn, bad);
    cr_assert_eq(s.proto_err, want);
    mp_buf expect = MP_BUF_INIT;
    expect_frame(&expect, "ERROR: bad frame");
    assert_stream_eq(&r.in, &expect);
    mp_buf_free(&expect);
    cr_assert_eq(s.n_frames, 0);

    /* Once the peer is gone too, the connection closes, after the error. */
    raw_close(&r);
    RUN_UNTIL(&h, s.n_closed == 1);
    cr_assert_eq(s.closed[0], bad);
    cr_assert_eq(s.close_reason[0], want);
    cr_assert_lt(s.proto_seq, s.close_seq[0]);
    mp_transport_stats st;
    mp_transport_get_stats(s.t, &st);
    cr_assert_eq(st.protocol_errors, 1);

    /* The other connection never noticed. */
    cr_assert_eq(mp_transport_send(c.t, good, "still here", 10), MPREG_OK);
    RUN_UNTIL(&h, c.n_frames == 1);
    mp_buf echo = MP_BUF_INIT;
    expect_frame(&echo, "still here");
    assert_stream_eq(&c.log, &echo);
    mp_buf_free(&echo);
    cr_assert_eq(c.n_closed, 0);

    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

Test(transport, oversized_frame_is_a_protocol_error_then_close) {
    protocol_error_case(MP_FRAME_DEFAULT_MAX + 1, MPREG_E_FRAME_TOO_LARGE);
}

Test(transport, huge_length_is_a_protocol_error_then_close) {
    protocol_error_case(UINT32_MAX, MPREG_E_FRAME_TOO_LARGE);
}

Test(transport, empty_frame_is_a_protocol_error_then_close) {
    protocol_error_case(0, MPREG_E_FRAME_EMPTY);
}

/* ---- the peer goes away ------------------------------------------------------------- */

Test(transport, peer_eof_closes_once) {
    harness h;
    endpoint s;
    raw_peer r;
    h_init(&h);
    ep_init(&s, &h, NULL);
    uint16_t port = ep_listen(&s);
    raw_connect(&r, &h, port);
    mp_buf f = MP_BUF_INIT;
    expect_frame(&f, "last words");
    raw_write(&r, f.data, f.len);
    cr_assert_eq(shutdown(r.fd, SHUT_WR), 0);

    RUN_UNTIL(&h, s.n_closed == 1);
    cr_assert_eq(s.n_frames, 1, "the frame before EOF is delivered");
    assert_stream_eq(&s.log, &f);
    cr_assert_eq(s.close_reason[0], MPREG_E_CLOSED);
    cr_assert_eq(s.closed[0], s.accepted[0]);
    RUN_UNTIL(&h, r.eof);
    run_for(&h, 50);
    cr_assert_eq(s.n_closed, 1);
    cr_assert_eq(mp_transport_close(s.t, s.accepted[0], false, MPREG_OK), MPREG_E_CLOSED);

    raw_close(&r);
    ep_teardown(&s);
    mp_buf_free(&f);
    h_finish(&h);
}

Test(transport, dial_refused_reports_then_closes_once) {
    harness h;
    endpoint c;
    h_init(&h);
    ep_init(&c, &h, NULL);
    /* A port that is bound but not listening refuses connections. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    socklen_t salen = sizeof sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &salen), 0);

    uint64_t id = 0;
    cr_assert_eq(mp_transport_dial(c.t, "127.0.0.1", ntohs(sa.sin_port), &id), MPREG_OK);
    /* Queued before the connection exists; dropped with it. */
    cr_assert_eq(mp_transport_send(c.t, id, "early", 5), MPREG_OK);
    RUN_UNTIL(&h, c.n_closed == 1);
    cr_assert_eq(c.n_connected, 1);
    cr_assert_eq(c.connected[0], id);
    cr_assert_eq(c.connect_status[0], MPREG_E_UNREACHABLE);
    cr_assert_eq(c.closed[0], id);
    const char *msg = mp_transport_last_error(c.t);
    cr_assert(strstr(msg, "connection refused") != NULL, "message: %s", msg);

    cr_assert_eq(mp_transport_dial(c.t, "", 1, &id), MPREG_E_INVALID);
    cr_assert_eq(mp_transport_dial(c.t, "127.0.0.1", 0, &id), MPREG_E_INVALID);
    close(fd);
    ep_teardown(&c);
    h_finish(&h);
}

/* ---- backpressure -------------------------------------------------------------------- */

#define BP_FRAME 16384
#define BP_HIGH (256u * 1024u)
#define BP_HARD (1024u * 1024u)

typedef struct bp_state {
    endpoint *c;
    uint64_t conn;
    uint32_t sent;
    uint32_t received;
    size_t max_pending;
    bool refused;
    uint8_t body[BP_FRAME];
} bp_state;

static void bp_tick(uv_timer_t *t) {
    bp_state *st = t->data;
    poke(t->loop);
    /* A few frames per tick, so that the socket takes some between ticks. */
    for (int i = 0; i < 8; i++) {
        mp_put_u32be(st->body, st->sent);
        mpreg_err err = mp_transport_send(st->c->t, st->conn, st->body, sizeof st->body);
        mp_transport_conn_stats cs;
        cr_assert_eq(mp_transport_get_conn_stats(st->c->t, st->conn, &cs), MPREG_OK);
        if (cs.pending_bytes > st->max_pending) {
            st->max_pending = cs.pending_bytes;
        }
        if (err == MPREG_E_BACKPRESSURE) {
            st->refused = true;
            uv_timer_stop(t);
            return;
        }
        cr_assert_eq(err, MPREG_OK);
        st->sent++;
    }
}

static void bp_reader_frame(endpoint *s, uint64_t id, const uint8_t *f, size_t len) {
    bp_state *st = s->user;
    (void)id;
    cr_assert_eq(len, BP_FRAME);
    cr_assert_eq(mp_get_u32be(f), st->received, "frames out of order");
    st->received++;
}

Test(transport, backpressure_at_hard_limit_then_writable) {
    harness h;
    endpoint s, c;
    bp_state *st = calloc(1, sizeof *st);
    cr_assert_not_null(st);
    h_init(&h);
    mp_transport_config cfg;
    mp_transport_config_default(&cfg);
    cfg.high_water = BP_HIGH;
    cfg.hard_limit = BP_HARD;
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, &cfg);
    s.pause_on_accept = true;
    s.on_frame = bp_reader_frame;
    s.user = st;
    st->c = &c;
    uint16_t port = ep_listen(&s);
    st->conn = ep_connect(&c, &s, "127.0.0.1", port);

    uv_timer_t tick;
    uv_timer_init(&h.loop, &tick);
    tick.data = st;
    uv_timer_start(&tick, bp_tick, 1, 1);
    RUN_UNTIL(&h, st->refused);
    cr_assert_gt(st->sent, BP_HARD / BP_FRAME, "the kernel buffers take some first (%u sent)",
                 st->sent);
    cr_assert_leq(st->max_pending, BP_HARD, "pending output went past the hard limit");
    cr_assert_geq(st->max_pending + BP_FRAME + MP_FRAME_HEADER, BP_HARD);
    cr_assert(mp_transport_over_high_water(c.t, st->conn));
    mp_transport_count_drop(c.t, st->conn, 3);

    /* While the socket buffers grew, the connection may have gone over and
     * back under already; count from here. Nothing drains while the reader
     * is paused. */
    size_t writable = c.n_writable;
    run_for(&h, 50);
    cr_assert_eq(c.n_writable, writable);
    cr_assert_eq(st->received, 0);
    mp_transport_conn_stats cs;
    cr_assert_eq(mp_transport_get_conn_stats(c.t, st->conn, &cs), MPREG_OK);
    cr_assert_leq(cs.pending_bytes, BP_HARD);
    cr_assert_geq(cs.pending_bytes, BP_HIGH);

    cr_assert_eq(mp_transport_resume_reading(s.t, s.accepted[0]), MPREG_OK);
    RUN_UNTIL(&h, c.n_writable > writable && st->received == st->sent);
    cr_assert(!mp_transport_over_high_water(c.t, st->conn));
    run_for(&h, 20);
    cr_assert_eq(c.n_writable, writable + 1, "on_writable fires once per crossing");

    cr_assert_eq(mp_transport_get_conn_stats(c.t, st->conn, &cs), MPREG_OK);
    cr_assert_eq(cs.frames_dropped, 3);
    cr_assert_eq(cs.pending_bytes, 0);
    mp_transport_stats ts;
    mp_transport_get_stats(c.t, &ts);
    cr_assert_geq(ts.backpressure, 1);
    cr_assert_eq(ts.totals.frames_dropped, 3);

    uv_close((uv_handle_t *)&tick, NULL);
    ep_teardown(&c);
    ep_teardown(&s);
    free(st);
    h_finish(&h);
}

/* ---- coalescing ------------------------------------------------------------------------ */

#define COALESCE_N 1000

typedef struct coalesce_state {
    uint64_t conn;
    uint32_t sent;
    uint32_t received;
} coalesce_state;

static void coalesce_burst(endpoint *c) {
    coalesce_state *st = c->user;
    for (int i = 0; i < COALESCE_N; i++) {
        size_t len = 4 + (size_t)(st->sent % 60);
        uint8_t *b = make_body(st->sent, len);
        cr_assert_eq(mp_transport_send(c->t, st->conn, b, len), MPREG_OK);
        free(b);
        st->sent++;
    }
}

static void coalesce_connected(endpoint *c, uint64_t id) {
    coalesce_state *st = c->user;
    st->conn = id;
    coalesce_burst(c); /* from an I/O callback: flushed by the check handle */
}

static void coalesce_timer(uv_timer_t *t) {
    poke(t->loop);
    coalesce_burst(t->data); /* from a timer: flushed by the prepare handle */
}

static void coalesce_reader(endpoint *s, uint64_t id, const uint8_t *f, size_t len) {
    coalesce_state *st = s->user;
    (void)id;
    cr_assert_eq(len, 4 + (size_t)(st->received % 60));
    check_body(st->received, f, len);
    st->received++;
}

Test(transport, small_sends_in_one_iteration_are_coalesced) {
    harness h;
    endpoint s, c;
    coalesce_state st = {0};
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    s.on_frame = coalesce_reader;
    s.user = &st;
    c.user = &st;
    c.on_connected = coalesce_connected;
    uint16_t port = ep_listen(&s);
    ep_connect(&c, &s, "127.0.0.1", port);
    RUN_UNTIL(&h, st.received == COALESCE_N);

    uv_timer_t t;
    uv_timer_init(&h.loop, &t);
    t.data = &c;
    uv_timer_start(&t, coalesce_timer, 1, 0);
    RUN_UNTIL(&h, st.received == 2 * COALESCE_N);

    mp_transport_conn_stats cs;
    cr_assert_eq(mp_transport_get_conn_stats(c.t, st.conn, &cs), MPREG_OK);
    cr_assert_eq(cs.frames_out, 2 * COALESCE_N);
    cr_assert_lt(cs.write_calls, 50, "%lu write calls for %d frames", (unsigned long)cs.write_calls,
                 2 * COALESCE_N);

    uv_close((uv_handle_t *)&t, NULL);
    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- closing -------------------------------------------------------------------------- */

#define FLUSH_N 200
#define FLUSH_LEN 8192

static void flush_on_accept(endpoint *s, uint64_t id) {
    for (uint32_t i = 0; i < FLUSH_N; i++) {
        uint8_t *b = make_body(i, FLUSH_LEN);
        cr_assert_eq(mp_transport_send(s->t, id, b, FLUSH_LEN), MPREG_OK);
        free(b);
    }
    cr_assert_eq(mp_transport_close(s->t, id, true, MPREG_OK), MPREG_OK);
    cr_assert_eq(mp_transport_send(s->t, id, "late", 4), MPREG_E_CLOSED);
    cr_assert_null(mp_transport_output(s->t, id));
    /* A second graceful close is a no-op. */
    cr_assert_eq(mp_transport_close(s->t, id, true, MPREG_E_INTERNAL), MPREG_OK);
}

static void flush_reader(endpoint *c, uint64_t id, const uint8_t *f, size_t len) {
    (void)id;
    cr_assert_eq(len, FLUSH_LEN);
    check_body((uint32_t)c->n_frames, f, len);
}

Test(transport, close_with_flush_delivers_pending_frames_before_eof) {
    harness h;
    endpoint s, c;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    s.on_accept = flush_on_accept;
    c.on_frame = flush_reader;
    uint16_t port = ep_listen(&s);
    uint64_t id = 0;
    cr_assert_eq(mp_transport_dial(c.t, "127.0.0.1", port, &id), MPREG_OK);
    RUN_UNTIL(&h, c.n_closed == 1 && s.n_closed == 1);
    cr_assert_eq(c.closed[0], id);
    cr_assert_eq(c.frames_at_close[0], FLUSH_N, "every frame arrives before the close");
    cr_assert_eq(c.close_reason[0], MPREG_E_CLOSED);
    cr_assert_eq(s.close_reason[0], MPREG_OK, "the reason given, not a later one");
    mp_transport_stats ts;
    mp_transport_get_stats(s.t, &ts);
    cr_assert_eq(ts.totals.frames_out, FLUSH_N);
    cr_assert_eq(ts.totals.bytes_out, (uint64_t)FLUSH_N * (MP_FRAME_HEADER + FLUSH_LEN));
    cr_assert_eq(ts.closed, 1);
    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

static void close_after_first(endpoint *s, uint64_t id, const uint8_t *f, size_t len) {
    (void)f;
    (void)len;
    cr_assert_eq(s->n_frames, 0, "no frame after the close");
    cr_assert_eq(mp_transport_close(s->t, id, false, MPREG_E_HANDSHAKE), MPREG_OK);
}

Test(transport, close_without_flush_and_from_on_frame) {
    harness h;
    endpoint s, c;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    uint16_t port = ep_listen(&s);
    uint64_t a = ep_connect(&c, &s, "127.0.0.1", port);
    cr_assert_eq(mp_transport_close(c.t, a, false, MPREG_E_INTERNAL), MPREG_OK);
    cr_assert_eq(mp_transport_close(c.t, a, false, MPREG_E_INTERNAL), MPREG_E_CLOSED);
    RUN_UNTIL(&h, c.n_closed == 1 && s.n_closed == 1);
    cr_assert_eq(c.close_reason[0], MPREG_E_INTERNAL);
    cr_assert_eq(s.close_reason[0], MPREG_E_CLOSED);

    /* Three frames in one write; the owner closes on the first. */
    s.on_frame = close_after_first;
    uint64_t b = ep_connect(&c, &s, "127.0.0.1", port);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(mp_transport_send(c.t, b, "abc", 3), MPREG_OK);
    }
    RUN_UNTIL(&h, c.n_closed == 2 && s.n_closed == 2);
    cr_assert_eq(s.n_frames, 1);
    cr_assert_eq(s.close_reason[1], MPREG_E_HANDSHAKE);
    cr_assert_eq(mp_transport_close(c.t, 999999, true, MPREG_OK), MPREG_E_CLOSED);
    cr_assert_eq(mp_transport_pause_reading(c.t, 999999), MPREG_E_CLOSED);
    cr_assert(!mp_transport_over_high_water(c.t, 999999));
    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

/* A peer that neither reads nor closes cannot hold a flushing close open
 * past the close timeout. */
static void stuck_on_accept(endpoint *s, uint64_t id) {
    uint8_t *b = make_body(0, 1024 * 1024);
    for (int i = 0; i < 16; i++) {
        cr_assert_eq(mp_transport_send(s->t, id, b, 1024 * 1024), MPREG_OK);
    }
    free(b);
    cr_assert_eq(mp_transport_close(s->t, id, true, MPREG_E_POLICY), MPREG_OK);
}

static void stuck_on_connected(endpoint *c, uint64_t id) {
    cr_assert_eq(mp_transport_pause_reading(c->t, id), MPREG_OK);
}

Test(transport, flushing_close_gives_up_after_the_timeout) {
    harness h;
    endpoint s, c;
    h_init(&h);
    mp_transport_config cfg;
    mp_transport_config_default(&cfg);
    cfg.close_timeout_ms = 200;
    ep_init(&s, &h, &cfg);
    ep_init(&c, &h, NULL);
    s.on_accept = stuck_on_accept;
    c.on_connected = stuck_on_connected;
    uint16_t port = ep_listen(&s);
    uv_update_time(&h.loop);
    uint64_t t0 = uv_now(&h.loop);
    uint64_t id = ep_connect(&c, &s, "127.0.0.1", port);
    RUN_UNTIL(&h, s.n_closed == 1);
    uv_update_time(&h.loop);
    uint64_t took = uv_now(&h.loop) - t0;
    cr_assert_geq(took, 180, "closed after %lu ms", (unsigned long)took);
    cr_assert_lt(took, 1500, "closed after %lu ms", (unsigned long)took);
    cr_assert_eq(s.close_reason[0], MPREG_E_POLICY, "the reason given, not the timeout");
    cr_assert(strstr(mp_transport_last_error(s.t), "timed out") != NULL);

    cr_assert_eq(mp_transport_resume_reading(c.t, id), MPREG_OK);
    RUN_UNTIL(&h, c.n_closed == 1);
    cr_assert_lt(c.n_frames, 16, "a dropped close does not deliver everything");
    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- shutdown -------------------------------------------------------------------------- */

Test(transport, shutdown_closes_everything) {
    harness h;
    endpoint s, c;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    uint16_t port = ep_listen(&s);
    uint16_t p6 = 0;
    cr_assert_eq(mp_transport_listen(s.t, "::1", 0, &p6), MPREG_OK);
    for (int i = 0; i < 3; i++) {
        ep_connect(&c, &s, i == 2 ? "::1" : "127.0.0.1", i == 2 ? p6 : port);
    }
    /* Output queued just before shutdown still goes out. */
    cr_assert_eq(mp_transport_send(s.t, s.accepted[0], "bye", 3), MPREG_OK);
    cr_assert_eq(mp_transport_free(s.t), MPREG_E_INVALID, "free before shutdown is refused");

    cr_assert_eq(mp_transport_shutdown(s.t, ep_shut), MPREG_OK);
    cr_assert_eq(mp_transport_shutdown(s.t, ep_shut), MPREG_E_CLOSED);
    uint64_t id;
    uint16_t p;
    cr_assert_eq(mp_transport_dial(s.t, "127.0.0.1", port, &id), MPREG_E_CLOSED);
    cr_assert_eq(mp_transport_listen(s.t, "127.0.0.1", 0, &p), MPREG_E_CLOSED);
    RUN_UNTIL(&h, s.shut);
    cr_assert_eq(s.n_closed, 3);
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(s.close_reason[i], MPREG_E_CLOSED);
        bool found = false;
        for (size_t j = 0; j < 3; j++) {
            found = found || s.closed[i] == s.accepted[j];
        }
        cr_assert(found);
    }
    RUN_UNTIL(&h, c.n_closed == 3);
    cr_assert_eq(c.n_frames, 1);

    /* A dial still resolving when its transport shuts down. */
    cr_assert_eq(mp_transport_dial(c.t, "localhost", port, &id), MPREG_OK);
    ep_teardown(&c);
    cr_assert_eq(c.n_closed, 4);
    cr_assert_eq(c.connected[3], id);
    cr_assert_eq(c.connect_status[3], MPREG_E_CLOSED);
    ep_teardown(&s);
    h_finish(&h);
}

Test(transport, shutdown_of_an_idle_transport) {
    harness h;
    endpoint s;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- dialing by address ---------------------------------------------------------- */

Test(transport, split_addr_accepts_host_port_and_bracketed_ipv6) {
    char host[MP_TRANSPORT_HOST_MAX];
    uint16_t port = 0;
    cr_assert_eq(mp_transport_split_addr("127.0.0.1:6464", false, host, &port), MPREG_OK);
    cr_assert_str_eq(host, "127.0.0.1");
    cr_assert_eq(port, 6464);
    cr_assert_eq(mp_transport_split_addr("[::1]:1", false, host, &port), MPREG_OK);
    cr_assert_str_eq(host, "::1");
    cr_assert_eq(port, 1);
    cr_assert_eq(mp_transport_split_addr("localhost:65535", false, host, &port), MPREG_OK);
    cr_assert_str_eq(host, "localhost");
    cr_assert_eq(port, 65535);
    cr_assert_eq(mp_transport_split_addr("0.0.0.0:0", true, host, &port), MPREG_OK);
    cr_assert_eq(port, 0);

    static const char *const bad[] = {
        "",           "6464",     ":6464",       "host:",    "host:0",
        "host:65536", "host:12x", "host:-1",     "::1:6464", "[::1]6464",
        "[::1",       "[]:6464",  "host:123456", "host: 80", "host:6464 ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(mp_transport_split_addr(bad[i], false, host, &port), MPREG_E_INVALID,
                     "'%s' was accepted", bad[i]);
    }
    char long_host[MP_TRANSPORT_HOST_MAX + 8];
    memset(long_host, 'a', MP_TRANSPORT_HOST_MAX);
    memcpy(long_host + MP_TRANSPORT_HOST_MAX, ":80", 4);
    cr_assert_eq(mp_transport_split_addr(long_host, false, host, &port), MPREG_E_INVALID);
    cr_assert_eq(mp_transport_split_addr(NULL, false, host, &port), MPREG_E_INVALID);
}

/* The server greets every connection it accepts, then echoes. */
static void greet_on_accept(endpoint *s, uint64_t id) {
    cr_assert_eq(mp_transport_send(s->t, id, "welcome", 7), MPREG_OK);
}

Test(transport, dial_addr_exchanges_frames_both_ways) {
    harness h;
    endpoint s, c;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    s.echo = true;
    s.on_accept = greet_on_accept;
    uint16_t port = ep_listen(&s);

    const char *hosts[] = {"127.0.0.1", "localhost"};
    mp_buf want = MP_BUF_INIT;
    for (size_t i = 0; i < 2; i++) {
        char addr[64];
        snprintf(addr, sizeof addr, "%s:%u", hosts[i], (unsigned)port);
        uint64_t id = 0;
        cr_assert_eq(mp_transport_dial_addr(c.t, addr, &id), MPREG_OK, "%s: %s", addr,
                     mp_transport_last_error(c.t));
        cr_assert_neq(id, 0);
        RUN_UNTIL(&h, c.n_connected == i + 1 && s.n_accepted == i + 1);
        cr_assert_eq(c.connected[i], id);
        cr_assert_eq(c.connect_status[i], MPREG_OK);
        /* After the connect it is a connection like any other: frames both
         * ways, through the decoder, in order. */
        cr_assert_eq(mp_transport_send(c.t, id, "ping", 4), MPREG_OK);
        cr_assert_eq(mp_transport_send(c.t, id, addr, strlen(addr)), MPREG_OK);
        expect_frame(&want, "welcome");
        expect_frame(&want, "ping");
        expect_frame(&want, addr);
        RUN_UNTIL(&h, c.n_frames == 3 * (i + 1));
        assert_stream_eq(&c.log, &want);
        mp_transport_conn_stats cs;
        cr_assert_eq(mp_transport_get_conn_stats(c.t, id, &cs), MPREG_OK);
        cr_assert_eq(cs.frames_in, 3);
        cr_assert_eq(cs.frames_out, 2);
        cr_assert_eq(cs.pending_bytes, 0);
    }
    cr_assert_eq(s.n_frames, 4);
    mp_transport_stats ts;
    mp_transport_get_stats(c.t, &ts);
    cr_assert_eq(ts.dialed, 2);
    cr_assert_eq(ts.accepted, 0);

    mp_buf_free(&want);
    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

Test(transport, dial_addr_to_a_closed_port_reports_failure_on_close) {
    harness h;
    endpoint s, c;
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    /* A port that was listening a moment ago and is closed now. */
    uint16_t port = ep_listen(&s);
    ep_teardown(&s);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);

    uint64_t id = 0;
    cr_assert_eq(mp_transport_dial_addr(c.t, addr, &id), MPREG_OK);
    cr_assert_neq(id, 0);
    cr_assert_eq(mp_transport_send(c.t, id, "lost", 4), MPREG_OK);
    cr_assert_eq(c.n_closed, 0, "no callback from inside the dial");
    RUN_UNTIL(&h, c.n_closed == 1);
    cr_assert_eq(c.closed[0], id);
    cr_assert_eq(c.close_reason[0], MPREG_E_UNREACHABLE);
    cr_assert_eq(c.n_connected, 1);
    cr_assert_eq(c.connect_status[0], MPREG_E_UNREACHABLE);
    const char *msg = mp_transport_last_error(c.t);
    cr_assert(strstr(msg, "connection refused") != NULL, "message: %s", msg);
    cr_assert(strstr(msg, addr) != NULL, "message does not name %s: %s", addr, msg);
    cr_assert_eq(mp_transport_send(c.t, id, "x", 1), MPREG_E_CLOSED);

    /* An address that does not parse: refused at once, no id, no callback. */
    static const char *const bad[] = {"127.0.0.1", "127.0.0.1:0", "::1:80", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t none = 0;
        cr_assert_eq(mp_transport_dial_addr(c.t, bad[i], &none), MPREG_E_INVALID, "%s", bad[i]);
        cr_assert_eq(none, 0);
        cr_assert(strstr(mp_transport_last_error(c.t), "expected HOST:PORT") != NULL, "%s",
                  mp_transport_last_error(c.t));
    }
    run_for(&h, 20);
    cr_assert_eq(c.n_closed, 1);
    cr_assert_eq(c.n_connected, 1);
    ep_teardown(&c);
    h_finish(&h);
}

#define EARLY_N 300

typedef struct early_state {
    uint64_t conn;
} early_state;

static void early_connected(endpoint *c, uint64_t id) {
    early_state *st = c->user;
    cr_assert_eq(id, st->conn);
    /* Everything queued is still waiting: nothing was written yet. */
    mp_transport_conn_stats cs;
    cr_assert_eq(mp_transport_get_conn_stats(c->t, id, &cs), MPREG_OK);
    cr_assert_eq(cs.bytes_out, 0);
    cr_assert_gt(cs.pending_bytes, 0);
}

static void early_reader(endpoint *s, uint64_t id, const uint8_t *f, size_t len) {
    (void)id;
    size_t seq = s->n_frames;
    cr_assert_eq(len, 4 + seq % 50, "frame %zu has the wrong length", seq);
    check_body((uint32_t)seq, f, len);
}

Test(transport, output_queued_before_connect_arrives_in_order) {
    harness h;
    endpoint s, c;
    early_state st = {0};
    h_init(&h);
    ep_init(&s, &h, NULL);
    ep_init(&c, &h, NULL);
    s.on_frame = early_reader;
    c.user = &st;
    c.on_connected = early_connected;
    uint16_t port = ep_listen(&s);
    char addr[64];
    snprintf(addr, sizeof addr, "localhost:%u", (unsigned)port);
    cr_assert_eq(mp_transport_dial_addr(c.t, addr, &st.conn), MPREG_OK);

    /* Before the loop has run at all, the connection cannot be up: queue
     * frames both ways a caller can (send, and framing in place). */
    for (uint32_t i = 0; i < EARLY_N; i++) {
        size_t len = 4 + i % 50;
        uint8_t *b = make_body(i, len);
        if (i % 2) {
            cr_assert_eq(mp_transport_send(c.t, st.conn, b, len), MPREG_OK);
        } else {
            mp_buf *out = mp_transport_output(c.t, st.conn);
            cr_assert_not_null(out);
            size_t start = mp_frame_begin(out);
            cr_assert_eq(mp_buf_append(out, b, len), MPREG_OK);
            cr_assert_eq(mp_frame_end(out, start, mp_transport_max_frame(c.t)), MPREG_OK);
            mp_transport_output_commit(c.t, st.conn, 1);
        }
        free(b);
    }
    cr_assert_eq(c.n_connected, 0);
    mp_transport_conn_stats cs;
    cr_assert_eq(mp_transport_get_conn_stats(c.t, st.conn, &cs), MPREG_OK);
    cr_assert_eq(cs.frames_out, EARLY_N);
    cr_assert_gt(cs.pending_bytes, 0);

    RUN_UNTIL(&h, s.n_frames == EARLY_N);
    cr_assert_eq(c.n_connected, 1);
    cr_assert_eq(c.connect_status[0], MPREG_OK);
    cr_assert_eq(mp_transport_get_conn_stats(c.t, st.conn, &cs), MPREG_OK);
    cr_assert_eq(cs.pending_bytes, 0);
    /* Queued while connecting, written as one coalesced burst. */
    cr_assert_lt(cs.write_calls, 5, "%lu writes", (unsigned long)cs.write_calls);
    run_for(&h, 20);
    cr_assert_eq(s.n_frames, EARLY_N);
    cr_assert_eq(s.n_closed, 0);

    ep_teardown(&c);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- a pause from on_frame holds the rest of the read ----------------------------- */

typedef struct pause_state {
    uint64_t conn;
    size_t frames_when_paused;
} pause_state;

/* Pauses after the first frame: the other frames of the same read must
 * wait for the resume. */
static void pause_after_first(endpoint *s, uint64_t id, const uint8_t *f, size_t len) {
    pause_state *p = s->user;
    cr_assert_eq(mp_frame_write(&s->log, f, len, MP_FRAME_LIMIT_MAX), MPREG_OK);
    if (s->n_frames == 0) {
        p->conn = id;
        cr_assert_eq(mp_transport_pause_reading(s->t, id), MPREG_OK);
        p->frames_when_paused = s->n_frames + 1;
    }
}

Test(transport, a_pause_from_on_frame_holds_the_rest_of_the_read) {
    harness h;
    endpoint s;
    raw_peer r;
    pause_state p = {0};
    h_init(&h);
    ep_init(&s, &h, NULL);
    s.on_frame = pause_after_first;
    s.user = &p;
    uint16_t port = ep_listen(&s);
    raw_connect(&r, &h, port);
    RUN_UNTIL(&h, s.n_accepted == 1);
    mp_buf stream = MP_BUF_INIT;
    for (int i = 0; i < 50; i++) {
        char body[32];
        snprintf(body, sizeof body, "frame %d", i);
        expect_frame(&stream, body);
    }
    raw_write(&r, stream.data, stream.len); /* one write: one read */
    RUN_UNTIL(&h, s.n_frames >= 1);
    run_for(&h, 100);
    cr_assert_eq(s.n_frames, 1, "%zu frames delivered after the pause", s.n_frames);
    mp_transport_conn_stats cs;
    cr_assert_eq(mp_transport_get_conn_stats(s.t, p.conn, &cs), MPREG_OK);
    cr_assert_gt(cs.buffered_in, 0, "the rest is held");
    cr_assert_eq(mp_transport_resume_reading(s.t, p.conn), MPREG_OK);
    cr_assert_eq(s.n_frames, 1, "resume calls nobody back from inside");
    RUN_UNTIL(&h, s.n_frames == 50);
    assert_stream_eq(&s.log, &stream);
    cr_assert_eq(mp_transport_get_conn_stats(s.t, p.conn, &cs), MPREG_OK);
    cr_assert_eq(cs.buffered_in, 0);
    /* The socket is read again afterwards. */
    mp_buf more = MP_BUF_INIT;
    expect_frame(&more, "after");
    raw_write(&r, more.data, more.len);
    RUN_UNTIL(&h, s.n_frames == 51);
    mp_buf_free(&more);
    mp_buf_free(&stream);
    raw_close(&r);
    RUN_UNTIL(&h, s.n_closed == 1);
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- partial frames: read timeout and shared budget ------------------------------- */

Test(transport, a_peer_that_stalls_mid_frame_is_closed_after_the_read_timeout) {
    harness h;
    endpoint s;
    raw_peer r, idle;
    h_init(&h);
    mp_transport_config cfg;
    mp_transport_config_default(&cfg);
    cfg.read_timeout_ms = 150;
    ep_init(&s, &h, &cfg);
    s.error_reply = "ERROR: stalled";
    uint16_t port = ep_listen(&s);
    raw_connect(&r, &h, port);
    raw_connect(&idle, &h, port);
    RUN_UNTIL(&h, s.n_accepted == 2);
    uint8_t head[16];
    mp_put_u32be(head, 1000); /* announces 1000 bytes, sends 12 */
    memset(head + 4, 'a', sizeof head - 4);
    raw_write(&r, head, sizeof head);
    run_for(&h, 50);
    cr_assert_eq(s.n_proto, 0, "not before the timeout");
    RUN_UNTIL(&h, r.eof);
    cr_assert_eq(s.n_proto, 1);
    cr_assert_eq(s.proto_err, MPREG_E_TIMEOUT);
    mp_buf expect = MP_BUF_INIT;
    expect_frame(&expect, "ERROR: stalled");
    assert_stream_eq(&r.in, &expect);
    mp_buf_free(&expect);
    /* A connection idle between frames is not a stall. */
    run_for(&h, 300);
    cr_assert_not(idle.eof, "an idle connection was closed");
    mp_transport_stats st;
    mp_transport_get_stats(s.t, &st);
    cr_assert_eq(st.read_timeouts, 1);
    raw_close(&r);
    raw_close(&idle);
    RUN_UNTIL(&h, s.n_closed == 2);
    ep_teardown(&s);
    h_finish(&h);
}

Test(transport, partial_frames_over_the_shared_budget_are_refused) {
    harness h;
    endpoint s;
    raw_peer r[3];
    h_init(&h);
    mp_transport_config cfg;
    mp_transport_config_default(&cfg);
    cfg.max_partial_bytes = 100 * 1024;
    ep_init(&s, &h, &cfg);
    s.error_reply = "ERROR: busy";
    uint16_t port = ep_listen(&s);
    size_t body = 40 * 1024;
    uint8_t *half = malloc(4 + body);
    cr_assert_not_null(half);
    mp_put_u32be(half, 1024 * 1024); /* a 1 MiB frame, 40 KiB of it sent */
    memset(half + 4, 'b', body);
    for (int i = 0; i < 3; i++) {
        raw_connect(&r[i], &h, port);
        RUN_UNTIL(&h, s.n_accepted == (size_t)i + 1);
        raw_write(&r[i], half, 4 + body);
        run_for(&h, 50);
    }
    /* Two fit in 100 KiB; the third does not and is refused, with an
     * error; the first two wait on, unharmed. */
    RUN_UNTIL(&h, r[2].eof);
    cr_assert_eq(s.n_proto, 1);
    cr_assert_eq(s.proto_err, MPREG_E_LIMIT);
    cr_assert_not(r[0].eof);
    cr_assert_not(r[1].eof);
    mp_transport_stats st;
    mp_transport_get_stats(s.t, &st);
    cr_assert_eq(st.partial_refused, 1);
    cr_assert_leq(st.partial_bytes, cfg.max_partial_bytes);
    cr_assert_geq(st.partial_bytes, 2 * body);
    free(half);
    for (int i = 0; i < 3; i++) {
        raw_close(&r[i]);
    }
    RUN_UNTIL(&h, s.n_closed == 3);
    mp_transport_get_stats(s.t, &st);
    cr_assert_eq(st.partial_bytes, 0, "the budget comes back");
    ep_teardown(&s);
    h_finish(&h);
}

/* ---- output_final takes one frame past the hard limit ------------------------------ */

Test(transport, output_final_goes_past_the_hard_limit) {
    harness h;
    endpoint s;
    raw_peer r;
    h_init(&h);
    mp_transport_config cfg;
    mp_transport_config_default(&cfg);
    cfg.high_water = 64 * 1024;
    cfg.hard_limit = 128 * 1024;
    ep_init(&s, &h, &cfg);
    uint16_t port = ep_listen(&s);
    raw_connect(&r, &h, port);
    RUN_UNTIL(&h, s.n_accepted == 1);
    uint64_t id = s.accepted[0];
    /* Fill the output without running the loop: nothing is written. */
    static uint8_t chunk[16 * 1024];
    mp_buf *o;
    int frames = 0;
    while ((o = mp_transport_output(s.t, id)) != NULL) {
        cr_assert_eq(mp_frame_write(o, chunk, sizeof chunk, 0), MPREG_OK);
        mp_transport_output_commit(s.t, id, 1);
        cr_assert_lt(++frames, 100, "the hard limit never came");
    }
    cr_assert_null(mp_transport_output(s.t, id), "at the hard limit");
    mp_buf *out = mp_transport_output_final(s.t, id);
    cr_assert_not_null(out, "one last frame may go");
    cr_assert_eq(mp_frame_write(out, "bye", 3, 0), MPREG_OK);
    mp_transport_output_commit(s.t, id, 1);
    raw_close(&r);
    RUN_UNTIL(&h, s.n_closed == 1);
    ep_teardown(&s);
    h_finish(&h);
}
