/* transport.c - libuv TCP transport: framing in, coalesced writes out.
 *
 * A connection's life:
 *
 *   RESOLVING -> CONNECTING -> OPEN -> DRAINING -> SHUTDOWN -> CLOSED
 *   (dials only)               (accepts start here)
 *
 * DRAINING and SHUTDOWN are the two halves of a graceful close: first every
 * pending byte is written, then our FIN goes out and we wait for the peer's.
 * Waiting for it matters: closing a socket that still has unread input makes
 * the kernel send a reset, and a reset can destroy the very bytes (an ERROR
 * frame, the last replies) that we just took care to write. So while closing
 * we keep reading and throw the input away. The close timer bounds the whole
 * thing. CLOSED means uv_close has been called; the memory goes, and on_close
 * fires, once the last of the connection's handles has called back.
 *
 * Output is double-buffered. out[cur] collects frames; a flush hands all of
 * it to the kernel with uv_try_write and, if the socket would not take it
 * all, passes the rest to uv_write and flips cur, so that new frames collect
 * in the other buffer while the write is in flight. Flushes run from a
 * prepare handle (catching output queued by timers and close callbacks,
 * before the loop blocks in poll) and from a check handle (catching output
 * queued by read callbacks during poll), and only while some connection has
 * something to flush. */
#define _POSIX_C_SOURCE 200809L

#include "runtime/transport.h"

#include "core/addr.h"
#include "core/check.h"
#include "core/frame.h"
#include "core/map.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

/* Addresses kept per name (listen on each; dial each in turn). */
#define MP_MAX_ADDRS 8
/* An output buffer bigger than this is freed, not kept, once written: one
 * burst must not pin its memory for the connection's lifetime. */
#define MP_OUT_RETAIN (1024u * 1024u)
/* Upper bound for the output limits, so that limit arithmetic cannot wrap. */
#define MP_LIMIT_MAX (SIZE_MAX / 4)
/* "[ipv6]:port" */
#define MP_ADDR_TEXT (INET6_ADDRSTRLEN + 16)
#define MP_HOST_MAX MP_TRANSPORT_HOST_MAX

typedef enum mp_conn_state {
    MP_CONN_RESOLVING,
    MP_CONN_CONNECTING,
    MP_CONN_OPEN,
    MP_CONN_DRAINING,
    MP_CONN_SHUTDOWN,
    MP_CONN_CLOSED,
} mp_conn_state;

/* What an outgoing connection needs until it is connected. */
typedef struct mp_dial {
    uv_getaddrinfo_t gai;
    uv_connect_t req;
    bool resolving; /* gai is outstanding: the connection must wait for it */
    bool reported;  /* on_connected was called */
    struct sockaddr_storage addrs[MP_MAX_ADDRS];
    size_t naddrs;
    size_t next; /* next address to try */
    char host[MP_HOST_MAX];
    uint16_t port;
} mp_dial;

typedef struct mp_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* connect timeout, then close timeout */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uv_buf_t wbuf; /* what wreq is writing */
    struct mp_transport *t;
    uint64_t id;
    mp_conn_state state;
    mpreg_err reason; /* for on_close; the first cause wins */
    bool reason_set;
    int handles;      /* our handles still open in the loop (tcp, timer) */
    bool tcp_closing; /* uv_close was called on tcp (or it is not initialised) */
    bool timer_on;    /* timer initialised */
    bool announced;   /* the owner knows the id, so on_close is owed */
    bool reading;     /* uv_read_start is in effect */
    bool paused;      /* the owner asked for no reading */
    bool proto_error; /* the peer broke the framing: deliver nothing more */
    bool peer_eof;    /* the peer's FIN arrived */
    bool fin_sent;    /* our FIN went out (uv_shutdown completed) */
    bool writing;     /* wreq is in flight */
    bool over_high;   /* went over high water; on_writable owed */
    bool dirty;       /* on the transport's flush list */
    unsigned cur;     /* out[cur] collects; out[cur ^ 1] is in flight while writing */
    mp_buf out[2];
    size_t inflight; /* bytes of the write in flight */
    mp_frame_decoder dec;
    /* Bytes read but not yet fed to the decoder: the rest of a read that the
     * owner paused in the middle of (at most one read buffer). They are fed,
     * first, when reading resumes; the socket is not read until they are. */
    mp_buf held;
    size_t held_off;      /* held.data[held_off..len) is still to be fed */
    bool feed_queued;     /* on the transport's list of held input to feed */
    size_t partial_count; /* this connection's share of t->partial_bytes */
    struct mp_conn *feed_next;
    mp_dial *dial; /* outgoing connections, until connected */
    struct mp_conn *dirty_prev;
    struct mp_conn *dirty_next;
    mp_transport_conn_stats stats;
} mp_conn;

typedef struct mp_listener {
    uv_tcp_t tcp;
    struct mp_transport *t;
    struct mp_listener *next;
} mp_listener;

struct mp_transport {
    uv_loop_t *loop;
    mp_transport_callbacks cb;
    void *ud;
    mp_transport_config cfg; /* resolved: no zero fields */
    /* One read buffer for every connection: read callbacks run one at a time
     * and consume their bytes before returning, so no two reads overlap. */
    uint8_t *rbuf;
    mp_map conns;  /* id -> mp_conn* */
    mp_conn *last; /* one-entry lookup cache: sends come in runs per connection */
    uint64_t next_id;
    size_t nconns; /* allocated and not yet released */
    mp_listener *listeners;
    size_t nlisteners;
    mp_conn *dirty_head;
    mp_conn *dirty_tail;
    uv_prepare_t prepare;
    uv_check_t check;
    bool flushers_closing;
    size_t live; /* connections + listeners + flush handles not yet released */
    bool shutting_down;
    bool shutdown_reported;
    mp_transport_shutdown_cb shutdown_cb;
    mp_transport_conn_stats gone; /* counters of released connections */
    uint64_t accepted;
    uint64_t dialed;
    uint64_t closed;
    uint64_t protocol_errors;
    uint64_t backpressure;
    uint64_t read_timeouts;
    uint64_t partial_refused;
    uint64_t accept_errors;
    /* Bytes of incomplete inbound frames over every connection, against
     * cfg.max_partial_bytes. */
    size_t partial_bytes;
    /* Connections whose held input waits to be fed (singly linked). */
    mp_conn *feed_head;
    char err[512];
};

static void mp_conn_finish(mp_conn *c, mpreg_err reason);
static void mp_conn_flush(mp_conn *c);
static void mp_feed_held_all(mp_transport *t);
static void mp_flushers_start(mp_transport *t);
static void mp_dial_next(mp_conn *c);

/* ---- small helpers ---------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
mp_set_error(mp_transport *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
}

static void mp_sa_set_port(struct sockaddr_storage *ss, uint16_t port) {
    if (ss->ss_family == AF_INET) {
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    } else if (ss->ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    }
}

static uint16_t mp_sa_port(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) {
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    }
    if (ss->ss_family == AF_INET6) {
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    }
    return 0;
}

/* "1.2.3.4:80" or "[::1]:80". */
static void mp_sa_text(const struct sockaddr_storage *ss, char *buf, size_t size) {
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof ip);
        snprintf(buf, size, "%s:%u", ip, (unsigned)mp_sa_port(ss));
    } else if (ss->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof ip);
        snprintf(buf, size, "[%s]:%u", ip, (unsigned)mp_sa_port(ss));
    } else {
        snprintf(buf, size, "?");
    }
}

/* Parses an IPv4 or IPv6 literal (IPv6 optionally in brackets). "localhost"
 * counts as the literal 127.0.0.1: RFC 6761 reserves the name for loopback,
 * and asking the resolver would fail on hosts without an /etc/hosts entry
 * (minimal containers) or, worse, ask DNS. */
static bool mp_parse_literal(const char *host, uint16_t port, struct sockaddr_storage *ss) {
    char tmp[MP_ADDR_TEXT];
    if (strcasecmp(host, "localhost") == 0) {
        host = "127.0.0.1";
    }
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        if (n - 2 >= sizeof tmp) {
            return false;
        }
        memcpy(tmp, host + 1, n - 2);
        tmp[n - 2] = '\0';
        host = tmp;
    }
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) {
        return true;
    }
    memset(ss, 0, sizeof *ss);
    return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0;
}

/* Copies the TCP-usable addresses of a getaddrinfo answer, port set. */
static size_t mp_copy_addrs(const struct addrinfo *ai, uint16_t port, struct sockaddr_storage *out,
                            size_t max) {
    size_t n = 0;
    for (; ai && n < max; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof out[n]) {
            continue;
        }
        memset(&out[n], 0, sizeof out[n]);
        memcpy(&out[n], ai->ai_addr, ai->ai_addrlen);
        mp_sa_set_port(&out[n], port);
        n++;
    }
    return n;
}

static void mp_stats_add(mp_transport_conn_stats *sum, const mp_transport_conn_stats *s) {
    sum->frames_in += s->frames_in;
    sum->bytes_in += s->bytes_in;
    sum->frames_out += s->frames_out;
    sum->bytes_out += s->bytes_out;
    sum->frames_dropped += s->frames_dropped;
    sum->write_calls += s->write_calls;
    sum->pending_bytes += s->pending_bytes;
    sum->buffered_in += s->buffered_in;
}

/* Forgets written output; a big buffer is given back rather than kept. */
static void mp_out_reset(mp_buf *b) {
    if (b->cap > MP_OUT_RETAIN) {
        mp_buf_free(b);
    } else {
        mp_buf_clear(b);
    }
}

/* ---- configuration ---------------------------------------------------------- */

void mp_transport_config_default(mp_transport_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->max_frame = MP_FRAME_DEFAULT_MAX;
    cfg->high_water = MP_TRANSPORT_DEFAULT_HIGH_WATER;
    cfg->low_water = MP_TRANSPORT_DEFAULT_HIGH_WATER / 2;
    cfg->hard_limit = MP_TRANSPORT_DEFAULT_HARD_LIMIT;
    cfg->read_buffer = MP_TRANSPORT_DEFAULT_READ_BUFFER;
    cfg->close_timeout_ms = MP_TRANSPORT_DEFAULT_CLOSE_TIMEOUT_MS;
    cfg->connect_timeout_ms = MP_TRANSPORT_DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->keepalive_s = MP_TRANSPORT_DEFAULT_KEEPALIVE_S;
    cfg->backlog = MP_TRANSPORT_DEFAULT_BACKLOG;
    cfg->read_timeout_ms = MP_TRANSPORT_DEFAULT_READ_TIMEOUT_MS;
    cfg->max_partial_bytes = MP_TRANSPORT_DEFAULT_MAX_PARTIAL;
}

static void mp_config_resolve(mp_transport_config *dst, const mp_transport_config *src) {
    mp_transport_config d;
    mp_transport_config_default(&d);
    if (!src) {
        *dst = d;
        return;
    }
    *dst = *src;
    dst->max_frame = src->max_frame ? src->max_frame : d.max_frame;
    if (dst->max_frame > MP_FRAME_LIMIT_MAX) {
        dst->max_frame = MP_FRAME_LIMIT_MAX;
    }
    dst->high_water = src->high_water ? src->high_water : d.high_water;
    dst->hard_limit = src->hard_limit ? src->hard_limit : d.hard_limit;
    if (dst->hard_limit > MP_LIMIT_MAX) {
        dst->hard_limit = MP_LIMIT_MAX;
    }
    if (dst->high_water > dst->hard_limit) {
        dst->high_water = dst->hard_limit;
    }
    dst->low_water = src->low_water ? src->low_water : dst->high_water / 2;
    if (dst->low_water > dst->high_water) {
        dst->low_water = dst->high_water;
    }
    dst->read_buffer = src->read_buffer ? src->read_buffer : d.read_buffer;
    dst->close_timeout_ms = src->close_timeout_ms ? src->close_timeout_ms : d.close_timeout_ms;
    dst->connect_timeout_ms =
        src->connect_timeout_ms ? src->connect_timeout_ms : d.connect_timeout_ms;
    dst->keepalive_s = src->keepalive_s ? src->keepalive_s : d.keepalive_s;
    dst->backlog = src->backlog > 0 ? src->backlog : d.backlog;
    dst->read_timeout_ms = src->read_timeout_ms ? src->read_timeout_ms : d.read_timeout_ms;
    dst->max_partial_bytes = src->max_partial_bytes ? src->max_partial_bytes : d.max_partial_bytes;
}

/* ---- the flush list --------------------------------------------------------- */

static void mp_on_prepare(uv_prepare_t *h);
static void mp_on_check(uv_check_t *h);

static void mp_dirty_unlink(mp_transport *t, mp_conn *c) {
    if (!c->dirty) {
        return;
    }
    if (c->dirty_prev) {
        c->dirty_prev->dirty_next = c->dirty_next;
    } else {
        t->dirty_head = c->dirty_next;
    }
    if (c->dirty_next) {
        c->dirty_next->dirty_prev = c->dirty_prev;
    } else {
        t->dirty_tail = c->dirty_prev;
    }
    c->dirty_prev = c->dirty_next = NULL;
    c->dirty = false;
}

/* Puts the connection on the list flushed before and after the next poll.
 * The flush handles run only while the list is non-empty, so an idle
 * transport costs the loop nothing, yet keeps it alive until output is out. */
static void mp_conn_mark_dirty(mp_conn *c) {
    mp_transport *t = c->t;
    if (c->dirty || t->flushers_closing) {
        return;
    }
    c->dirty = true;
    c->dirty_next = NULL;
    c->dirty_prev = t->dirty_tail;
    if (t->dirty_tail) {
        t->dirty_tail->dirty_next = c;
    } else {
        t->dirty_head = c;
        mp_flushers_start(t);
    }
    t->dirty_tail = c;
}

static void mp_flushers_start(mp_transport *t) {
    uv_prepare_start(&t->prepare, mp_on_prepare);
    uv_check_start(&t->check, mp_on_check);
}

static void mp_flush_all(mp_transport *t) {
    /* Flushing can run callbacks (on_writable) that queue more output, even
     * on connections already flushed; those go round again here. */
    while (t->dirty_head) {
        mp_conn *c = t->dirty_head;
        mp_dirty_unlink(t, c);
        mp_conn_flush(c);
    }
    if (!t->feed_head) {
        uv_prepare_stop(&t->prepare);
        uv_check_stop(&t->check);
    }
}

/* Held input goes first: it may produce output, which the flush then
 * writes in the same pass. */
static void mp_on_prepare(uv_prepare_t *h) {
    mp_feed_held_all(h->data);
    mp_flush_all(h->data);
}

static void mp_on_check(uv_check_t *h) {
    mp_feed_held_all(h->data);
    mp_flush_all(h->data);
}

/* ---- connection bookkeeping ------------------------------------------------- */

static mp_conn *mp_conn_lookup(mp_transport *t, uint64_t id) {
    if (t->last && t->last->id == id) {
        return t->last;
    }
    mp_conn *c = mp_map_get(&t->conns, &id, sizeof id);
    if (c) {
        t->last = c;
    }
    return c;
}

static size_t mp_conn_pending(const mp_conn *c) {
    return c->out[c->cur].len + c->inflight;
}

static bool mp_conn_accepts_output(const mp_conn *c) {
    return c->state == MP_CONN_RESOLVING || c->state == MP_CONN_CONNECTING ||
           c->state == MP_CONN_OPEN;
}

static void mp_conn_set_reason(mp_conn *c, mpreg_err reason) {
    if (!c->reason_set) {
        c->reason = reason;
        c->reason_set = true;
    }
}

static void mp_on_conn_handle_closed(uv_handle_t *h);

static mp_conn *mp_conn_new(mp_transport *t) {
    mp_conn *c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    if (uv_tcp_init(t->loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    c->t = t;
    c->id = t->next_id++;
    c->handles = 1;
    c->tcp.data = c;
    mp_buf_init(&c->out[0]);
    mp_buf_init(&c->out[1]);
    mp_buf_init(&c->held);
    mp_frame_decoder_init(&c->dec, t->cfg.max_frame);
    t->nconns++;
    t->live++;
    return c;
}

static mpreg_err mp_conn_register(mp_conn *c) {
    return mp_map_put(&c->t->conns, &c->id, sizeof c->id, c, NULL);
}

static void mp_transport_maybe_done(mp_transport *t);

/* Frees the connection once nothing of libuv's refers to it any more, and
 * tells the owner. Everything is torn down before the callbacks run, so the
 * owner may do anything there, dial a replacement included. */
static void mp_conn_maybe_release(mp_conn *c) {
    if (c->handles > 0 || (c->dial && c->dial->resolving)) {
        return;
    }
    mp_transport *t = c->t;
    uint64_t id = c->id;
    bool announced = c->announced;
    bool owe_connected = c->dial && !c->dial->reported;
    mpreg_err reason = c->reason;

    mp_map_remove(&t->conns, &id, sizeof id);
    if (t->last == c) {
        t->last = NULL;
    }
    mp_dirty_unlink(t, c);
    c->stats.pending_bytes = 0;
    c->stats.buffered_in = 0;
    mp_stats_add(&t->gone, &c->stats);
    t->partial_bytes -= c->partial_count;
    if (c->feed_queued) {
        mp_conn **pp = &t->feed_head;
        while (*pp != c) {
            pp = &(*pp)->feed_next;
        }
        *pp = c->feed_next;
    }
    mp_frame_decoder_free(&c->dec);
    mp_buf_free(&c->held);
    mp_buf_free(&c->out[0]);
    mp_buf_free(&c->out[1]);
    free(c->dial);
    free(c);
    t->nconns--;

    if (announced) {
        t->closed++;
        if (owe_connected && t->cb.on_connected) {
            t->cb.on_connected(t->ud, id, MPREG_E_CLOSED);
        }
        t->cb.on_close(t->ud, id, reason);
    }
    t->live--;
    mp_transport_maybe_done(t);
}

static void mp_on_conn_handle_closed(uv_handle_t *h) {
    mp_conn *c = h->data;
    c->handles--;
    mp_conn_maybe_release(c);
}

/* Drops the connection now: handles close, in-flight requests are cancelled,
 * and on_close follows from the close callbacks. */
static void mp_conn_finish(mp_conn *c, mpreg_err reason) {
    if (c->state == MP_CONN_CLOSED) {
        return;
    }
    mp_conn_set_reason(c, reason);
    c->state = MP_CONN_CLOSED;
    c->reading = false;
    if (c->dial && c->dial->resolving) {
        uv_cancel((uv_req_t *)&c->dial->gai); /* its callback still comes; we wait for it */
    }
    if (!c->tcp_closing) {
        c->tcp_closing = true;
        uv_close((uv_handle_t *)&c->tcp, mp_on_conn_handle_closed);
    }
    if (c->timer_on && !uv_is_closing((uv_handle_t *)&c->timer)) {
        uv_close((uv_handle_t *)&c->timer, mp_on_conn_handle_closed);
    }
}

static void mp_conn_io_error(mp_conn *c, const char *what, int uverr) {
    mp_set_error(c->t, "conn %" PRIu64 ": %s: %s (%s)", c->id, what, uv_strerror(uverr),
                 uv_err_name(uverr));
    mp_conn_finish(c, MPREG_E_IO);
}

static int mp_conn_arm_timer(mp_conn *c, uint64_t ms, uv_timer_cb cb) {
    if (!c->timer_on) {
        int r = uv_timer_init(c->t->loop, &c->timer);
        if (r != 0) {
            return r;
        }
        c->timer.data = c;
        c->timer_on = true;
        c->handles++;
    }
    return uv_timer_start(&c->timer, cb, ms, 0);
}

/* Best effort: a socket without these options still works. */
static void mp_conn_tune_socket(mp_conn *c) {
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, c->t->cfg.keepalive_s);
}

/* ---- reading ---------------------------------------------------------------- */

static void mp_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    mp_conn *c = h->data;
    (void)suggested;
    buf->base = (char *)c->t->rbuf;
    buf->len = c->t->cfg.read_buffer;
}

static void mp_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* While open: unless paused or poisoned. While closing: always (input is
 * discarded), until the peer's FIN, so that our close is not a reset. */
static bool mp_conn_wants_read(const mp_conn *c) {
    switch (c->state) {
    case MP_CONN_OPEN:
        /* Held input is fed before the socket is read again: order. */
        return !c->paused && !c->proto_error && !c->peer_eof && c->held_off == c->held.len;
    case MP_CONN_DRAINING:
    case MP_CONN_SHUTDOWN:
        return !c->peer_eof;
    default:
        return false;
    }
}

static void mp_conn_update_reading(mp_conn *c) {
    bool want = mp_conn_wants_read(c);
    if (want == c->reading) {
        return;
    }
    if (want) {
        int r = uv_read_start((uv_stream_t *)&c->tcp, mp_on_alloc, mp_on_read);
        if (r != 0) {
            mp_conn_io_error(c, "read", r);
            return;
        }
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = want;
}

static void mp_on_close_timeout(uv_timer_t *h) {
    mp_conn *c = h->data;
    mp_set_error(c->t, "conn %" PRIu64 ": close timed out after %" PRIu32 " ms", c->id,
                 c->t->cfg.close_timeout_ms);
    mp_conn_finish(c, MPREG_E_TIMEOUT);
}

/* Starts a graceful close: stop delivering, flush, then FIN (mp_conn_flush
 * sends it once nothing is pending). */
static void mp_conn_drain(mp_conn *c, mpreg_err reason) {
    mp_conn_set_reason(c, reason);
    c->state = MP_CONN_DRAINING;
    int r = mp_conn_arm_timer(c, c->t->cfg.close_timeout_ms, mp_on_close_timeout);
    if (r != 0) {
        mp_conn_io_error(c, "timer", r);
        return;
    }
    mp_conn_update_reading(c);
    mp_conn_mark_dirty(c);
}

static int mp_conn_deliver(void *ud, const uint8_t *frame, size_t len) {
    mp_conn *c = ud;
    mp_transport *t = c->t;
    c->stats.frames_in++;
    t->cb.on_frame(t->ud, c->id, frame, len);
    /* The owner closed it from on_frame: deliver nothing more. */
    if (c->state != MP_CONN_OPEN) {
        return MP_FRAME_CLOSE;
    }
    /* The owner paused it from on_frame: the rest of this read waits. This
     * is what makes a pause a pause: a client that pipelines a thousand
     * requests in one write gets them answered as fast as it reads the
     * answers, not all at once into an output it is not draining. */
    return c->paused ? MP_FRAME_PAUSE : MP_FRAME_GO;
}

/* Errors the owner hears of through on_protocol_error, with time to queue
 * an ERROR that says why before the connection closes. */
static bool mp_err_is_reportable(mpreg_err err) {
    return err == MPREG_E_FRAME_EMPTY || err == MPREG_E_FRAME_TOO_LARGE || err == MPREG_E_TIMEOUT ||
           err == MPREG_E_LIMIT;
}

static void mp_conn_protocol_error(mp_conn *c, mpreg_err err) {
    mp_transport *t = c->t;
    mp_set_error(t, "conn %" PRIu64 ": %s", c->id, mpreg_strerror(err));
    if (!mp_err_is_reportable(err)) {
        mp_conn_finish(c, err); /* out of memory: nothing sensible to send */
        return;
    }
    t->protocol_errors++;
    c->proto_error = true;
    /* Nothing more is delivered: what was half-read or held goes now, and
     * gives its share of the partial-frame budget back. */
    mp_frame_decoder_free(&c->dec);
    t->partial_bytes -= c->partial_count;
    c->partial_count = 0;
    mp_buf_free(&c->held);
    c->held_off = 0;
    mp_conn_update_reading(c);
    if (t->cb.on_protocol_error) {
        t->cb.on_protocol_error(t->ud, c->id, err);
    }
    if (c->state == MP_CONN_OPEN) {
        mp_conn_drain(c, err);
    }
}

/* ---- partial frames: a deadline and a shared budget ------------------------- */

static void mp_on_read_timeout(uv_timer_t *h) {
    mp_conn *c = h->data;
    if (c->state != MP_CONN_OPEN || c->proto_error) {
        return;
    }
    c->t->read_timeouts++;
    mp_conn_protocol_error(c, MPREG_E_TIMEOUT);
}

/* After a feed: account the partial frame against the shared budget, and
 * keep the read deadline armed exactly while a frame is half-read and we
 * are reading (a pause is ours, not the peer's stall). MPREG_E_LIMIT when
 * this connection's partial frame takes the total over the budget. */
static mpreg_err mp_conn_after_feed(mp_conn *c) {
    mp_transport *t = c->t;
    size_t now = mp_frame_decoder_buffered(&c->dec);
    MP_ASSERT(t->partial_bytes >= c->partial_count);
    t->partial_bytes = t->partial_bytes - c->partial_count + now;
    c->partial_count = now;
    if (c->state != MP_CONN_OPEN) {
        return MPREG_OK;
    }
    if (now > 0 && t->partial_bytes > t->cfg.max_partial_bytes) {
        t->partial_refused++;
        return MPREG_E_LIMIT;
    }
    if (now > 0 && !c->paused) {
        int r = mp_conn_arm_timer(c, t->cfg.read_timeout_ms, mp_on_read_timeout);
        if (r != 0) {
            mp_conn_io_error(c, "timer", r);
        }
    } else if (c->timer_on) {
        uv_timer_stop(&c->timer);
    }
    return MPREG_OK;
}

/* Feeds bytes of a read (or held ones) to the decoder. Bytes after a pause
 * are appended to the held input. */
static void mp_conn_feed(mp_conn *c, const uint8_t *data, size_t len, bool from_held) {
    size_t consumed = 0;
    mpreg_err err = mp_frame_decoder_feed_some(&c->dec, data, len, mp_conn_deliver, c, &consumed);
    if (from_held) {
        c->held_off += consumed;
    } else if (err == MPREG_OK && consumed < len) {
        if (mp_buf_append(&c->held, data + consumed, len - consumed) != MPREG_OK) {
            mp_conn_finish(c, MPREG_E_NOMEM);
            return;
        }
    }
    if (c->held_off == c->held.len && c->held.len > 0) {
        mp_buf_free(&c->held); /* a burst's worth: not kept */
        c->held_off = 0;
    }
    /* After a close from on_frame the decoder says MPREG_E_CLOSED; that is
     * no protocol error. */
    if (err == MPREG_OK) {
        err = mp_conn_after_feed(c);
    } else {
        mp_conn_after_feed(c);
    }
    if (err != MPREG_OK && c->state == MP_CONN_OPEN) {
        mp_conn_protocol_error(c, err);
    }
}

/* Feeds every connection's held input whose reading was resumed. Runs from
 * the prepare and check handles, never from inside a transport call, so
 * that resume_reading does not call the owner back. */
static void mp_feed_held_all(mp_transport *t) {
    while (t->feed_head) {
        mp_conn *c = t->feed_head;
        t->feed_head = c->feed_next;
        c->feed_next = NULL;
        c->feed_queued = false;
        if (c->state == MP_CONN_OPEN && !c->paused && !c->proto_error &&
            c->held_off < c->held.len) {
            mp_conn_feed(c, c->held.data + c->held_off, c->held.len - c->held_off, true);
        }
        if (c->state == MP_CONN_OPEN) {
            mp_conn_update_reading(c); /* the socket again, once held is done */
        }
    }
}

static void mp_conn_queue_feed(mp_conn *c) {
    mp_transport *t = c->t;
    if (c->feed_queued || t->flushers_closing) {
        return;
    }
    c->feed_queued = true;
    c->feed_next = t->feed_head;
    t->feed_head = c;
    mp_flushers_start(t);
}

static void mp_conn_on_eof(mp_conn *c) {
    c->peer_eof = true;
    c->reading = false; /* libuv stops reading at EOF by itself */
    switch (c->state) {
    case MP_CONN_OPEN:
        /* The peer may still read: what it asked for is flushed first. */
        mp_conn_drain(c, MPREG_E_CLOSED);
        break;
    case MP_CONN_SHUTDOWN:
        if (c->fin_sent) {
            mp_conn_finish(c, MPREG_E_CLOSED);
        }
        break;
    default:
        break; /* DRAINING: keep flushing; FIN and close follow */
    }
}

static void mp_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    mp_conn *c = s->data;
    if (nread > 0) {
        c->stats.bytes_in += (uint64_t)nread;
        if (c->state != MP_CONN_OPEN || c->proto_error) {
            return; /* closing: input is read only to be dropped */
        }
        mp_conn_feed(c, (const uint8_t *)buf->base, (size_t)nread, false);
        /* libuv reads a busy socket up to 32 times (8 MiB with our buffer)
         * before the check handle runs. Flush what this chunk produced now,
         * so that a fast publisher's fan-out reaches the kernel chunk by
         * chunk instead of piling up past the high-water mark (and being
         * shed) within a single loop iteration. Still one write per
         * connection per chunk, never per frame. */
        if (c->t->dirty_head) {
            mp_flush_all(c->t);
        }
        return;
    }
    if (nread == 0) {
        return; /* EAGAIN */
    }
    if (nread == UV_EOF) {
        mp_conn_on_eof(c);
        return;
    }
    mp_conn_io_error(c, "read", (int)nread);
}

/* ---- writing ---------------------------------------------------------------- */

/* Fires on_writable once a connection that went over high water has drained
 * below low water. */
static void mp_conn_drained_some(mp_conn *c) {
    mp_transport *t = c->t;
    if (c->over_high && c->state == MP_CONN_OPEN && mp_conn_pending(c) < t->cfg.low_water) {
        c->over_high = false;
        if (t->cb.on_writable) {
            t->cb.on_writable(t->ud, c->id);
        }
    }
}

static void mp_on_shutdown(uv_shutdown_t *req, int status) {
    mp_conn *c = req->data;
    if (c->state != MP_CONN_SHUTDOWN) {
        return; /* closed meanwhile: status is UV_ECANCELED */
    }
    if (status < 0 || c->peer_eof) {
        mp_conn_finish(c, MPREG_E_CLOSED);
        return;
    }
    c->fin_sent = true; /* now the peer's FIN (mp_conn_on_eof) or the timer */
}

static void mp_conn_send_fin(mp_conn *c) {
    c->sreq.data = c;
    int r = uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, mp_on_shutdown);
    if (r != 0) {
        mp_conn_finish(c, MPREG_E_CLOSED); /* e.g. the peer reset: nothing to wait for */
        return;
    }
    c->state = MP_CONN_SHUTDOWN;
}

static void mp_on_write(uv_write_t *req, int status) {
    mp_conn *c = req->data;
    size_t n = c->inflight;
    c->writing = false;
    c->inflight = 0;
    mp_out_reset(&c->out[c->cur ^ 1u]);
    if (c->state == MP_CONN_CLOSED) {
        return; /* cancelled by the close */
    }
    if (status < 0) {
        mp_conn_io_error(c, "write", status);
        return;
    }
    c->stats.bytes_out += n;
    mp_conn_drained_some(c);
    if (c->out[c->cur].len > 0 || c->state == MP_CONN_DRAINING) {
        mp_conn_mark_dirty(c);
    }
}

/* Writes everything pending in one go: uv_try_write first (an idle socket
 * takes it all at once, with no request and no callback), uv_write for what
 * the socket would not take. */
static void mp_conn_flush(mp_conn *c) {
    if (c->writing || (c->state != MP_CONN_OPEN && c->state != MP_CONN_DRAINING)) {
        return; /* the write callback, or the connect callback, comes back here */
    }
    mp_transport *t = c->t;
    mp_buf *b = &c->out[c->cur];
    if (b->len == 0) {
        if (c->state == MP_CONN_DRAINING) {
            mp_conn_send_fin(c);
        }
        return;
    }
    if (b->len >= t->cfg.high_water) {
        c->over_high = true;
    }
    uv_stream_t *s = (uv_stream_t *)&c->tcp;
    uv_buf_t ub = {.base = (char *)b->data, .len = b->len};
    int n = uv_try_write(s, &ub, 1);
    c->stats.write_calls++;
    if (n < 0 && n != UV_EAGAIN) {
        mp_conn_io_error(c, "write", n);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    c->stats.bytes_out += done;
    if (done == b->len) {
        mp_out_reset(b);
        mp_conn_drained_some(c);
        if (c->state == MP_CONN_DRAINING) {
            mp_conn_send_fin(c);
        }
        return;
    }
    c->wbuf.base = (char *)b->data + done;
    c->wbuf.len = b->len - done;
    c->wreq.data = c;
    int r = uv_write(&c->wreq, s, &c->wbuf, 1, mp_on_write);
    c->stats.write_calls++;
    if (r != 0) {
        mp_conn_io_error(c, "write", r);
        return;
    }
    c->writing = true;
    c->inflight = c->wbuf.len;
    c->cur ^= 1u;
}

/* Output was appended: schedule the flush, note the high-water mark. */
static void mp_conn_queued(mp_conn *c) {
    if (mp_conn_pending(c) >= c->t->cfg.high_water) {
        c->over_high = true;
    }
    mp_conn_mark_dirty(c);
}

/* ---- accepting and listening ------------------------------------------------ */

static void mp_on_connection(uv_stream_t *server, int status) {
    mp_listener *l = server->data;
    mp_transport *t = l->t;
    if (status < 0) {
        /* Out of file descriptors, typically. libuv has already accepted
         * and closed what was waiting (its EMFILE trick), so the clients
         * see a closed connection rather than a hang; the owner hears of
         * it so that a person can. */
        mp_set_error(t, "accept: %s (%s)", uv_strerror(status), uv_err_name(status));
        t->accept_errors++;
        if (t->cb.on_accept_error) {
            t->cb.on_accept_error(t->ud, t->err);
        }
        return;
    }
    mp_conn *c = mp_conn_new(t);
    if (!c) {
        mp_set_error(t, "accept: out of memory");
        return;
    }
    int r = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (r != 0) {
        mp_set_error(t, "accept: %s (%s)", uv_strerror(r), uv_err_name(r));
        mp_conn_finish(c, MPREG_E_IO); /* never announced: no on_close */
        return;
    }
    if (mp_conn_register(c) != MPREG_OK) {
        mp_set_error(t, "accept: out of memory");
        mp_conn_finish(c, MPREG_E_NOMEM);
        return;
    }
    mp_conn_tune_socket(c);
    c->state = MP_CONN_OPEN;
    c->announced = true;
    t->accepted++;

    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    char peer[MP_ADDR_TEXT] = "?";
    memset(&ss, 0, sizeof ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        mp_sa_text(&ss, peer, sizeof peer);
    }
    if (t->cb.on_accept) {
        t->cb.on_accept(t->ud, c->id, peer);
    }
    /* After on_accept, so that a pause or close there takes effect first. */
    mp_conn_update_reading(c);
}

static void mp_on_listener_closed(uv_handle_t *h) {
    mp_listener *l = h->data;
    mp_transport *t = l->t;
    free(l);
    t->live--;
    mp_transport_maybe_done(t);
}

static void mp_listener_close(mp_transport *t, mp_listener *l) {
    mp_listener **pp = &t->listeners;
    while (*pp && *pp != l) {
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = l->next;
        t->nlisteners--;
    }
    uv_close((uv_handle_t *)&l->tcp, mp_on_listener_closed);
}

/* Binds and listens on one address. Returns 0 or a libuv error, with the
 * error text set. EADDRINUSE may come from bind or (on Unix, usually) from
 * listen, so both are checked the same way. */
static int mp_listener_open(mp_transport *t, struct sockaddr_storage *ss, bool v6only,
                            uint16_t *port) {
    char where[MP_ADDR_TEXT];
    mp_sa_text(ss, where, sizeof where);
    mp_listener *l = calloc(1, sizeof *l);
    if (!l) {
        mp_set_error(t, "listen %s: out of memory", where);
        return UV_ENOMEM;
    }
    int r = uv_tcp_init(t->loop, &l->tcp);
    if (r != 0) {
        free(l);
        mp_set_error(t, "listen %s: %s (%s)", where, uv_strerror(r), uv_err_name(r));
        return r;
    }
    l->t = t;
    l->tcp.data = l;
    l->next = t->listeners;
    t->listeners = l;
    t->nlisteners++;
    t->live++;

    unsigned flags = (v6only && ss->ss_family == AF_INET6) ? UV_TCP_IPV6ONLY : 0;
    r = uv_tcp_bind(&l->tcp, (const struct sockaddr *)ss, flags);
    if (r == 0) {
        r = uv_listen((uv_stream_t *)&l->tcp, t->cfg.backlog, mp_on_connection);
    }
    struct sockaddr_storage bound;
    int len = (int)sizeof bound;
    if (r == 0) {
        r = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len);
    }
    if (r != 0) {
        mp_set_error(t, "listen %s: %s (%s)", where, uv_strerror(r), uv_err_name(r));
        mp_listener_close(t, l);
        return r;
    }
    *port = mp_sa_port(&bound);
    return 0;
}

/* Literal, or a name resolved synchronously (listen is a start-up call). */
static mpreg_err mp_resolve_sync(mp_transport *t, const char *host, uint16_t port,
                                 struct sockaddr_storage *out, size_t *n) {
    if (mp_parse_literal(host, port, &out[0])) {
        *n = 1;
        return MPREG_OK;
    }
    uv_getaddrinfo_t req;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    int r = uv_getaddrinfo(t->loop, &req, NULL, host, NULL, &hints);
    if (r != 0) {
        mp_set_error(t, "listen %s: cannot resolve: %s (%s)", host, uv_strerror(r), uv_err_name(r));
        return MPREG_E_IO;
    }
    *n = mp_copy_addrs(req.addrinfo, port, out, MP_MAX_ADDRS);
    uv_freeaddrinfo(req.addrinfo);
    if (*n == 0) {
        mp_set_error(t, "listen %s: no IPv4 or IPv6 address", host);
        return MPREG_E_IO;
    }
    return MPREG_OK;
}

mpreg_err mp_transport_listen(mp_transport *t, const char *host, uint16_t port,
                              uint16_t *bound_port) {
    if (!t) {
        return MPREG_E_INVALID;
    }
    if (t->shutting_down) {
        return MPREG_E_CLOSED;
    }
    if (!host || !*host) {
        host = "0.0.0.0";
    }
    struct sockaddr_storage addrs[MP_MAX_ADDRS];
    size_t n = 0;
    mpreg_err err = mp_resolve_sync(t, host, port, addrs, &n);
    if (err) {
        return err;
    }
    /* A name with several addresses ("localhost") gets one listener per
     * address, all on the same port: the first one picks it when port is 0.
     * An address family the host lacks is skipped; any other failure undoes
     * the listeners this call opened. */
    mp_listener *before = t->listeners;
    uint16_t bound = port;
    size_t opened = 0;
    for (size_t i = 0; i < n; i++) {
        mp_sa_set_port(&addrs[i], bound);
        uint16_t got = 0;
        int r = mp_listener_open(t, &addrs[i], n > 1, &got);
        if (r == 0) {
            opened++;
            bound = got;
            continue;
        }
        if (n > 1 && (r == UV_EADDRNOTAVAIL || r == UV_EAFNOSUPPORT)) {
            continue;
        }
        while (t->listeners != before) {
            mp_listener_close(t, t->listeners);
        }
        return MPREG_E_IO;
    }
    if (opened == 0) {
        return MPREG_E_IO;
    }
    if (bound_port) {
        *bound_port = bound;
    }
    return MPREG_OK;
}

/* ---- dialing ---------------------------------------------------------------- */

static void mp_dial_report(mp_conn *c, mpreg_err status) {
    mp_transport *t = c->t;
    if (!c->dial || c->dial->reported || !c->announced) {
        return;
    }
    c->dial->reported = true;
    if (t->cb.on_connected) {
        t->cb.on_connected(t->ud, c->id, status);
    }
}

static void mp_dial_fail(mp_conn *c, mpreg_err err) {
    mp_conn_set_reason(c, err);
    mp_dial_report(c, err);
    mp_conn_finish(c, err);
}

static void mp_on_retry_closed(uv_handle_t *h) {
    mp_conn *c = h->data;
    c->handles--;
    if (c->state != MP_CONN_CONNECTING) {
        mp_conn_maybe_release(c);
        return;
    }
    /* A socket whose connect failed cannot be reused: a fresh one per try. */
    if (uv_tcp_init(c->t->loop, &c->tcp) != 0) {
        mp_set_error(c->t, "dial %s:%u: cannot create a socket", c->dial->host,
                     (unsigned)c->dial->port);
        mp_dial_fail(c, MPREG_E_IO);
        return;
    }
    c->tcp.data = c;
    c->handles++;
    c->tcp_closing = false;
    mp_dial_next(c);
}

static void mp_dial_attempt_failed(mp_conn *c, const struct sockaddr_storage *ss, int uverr) {
    char where[MP_ADDR_TEXT];
    mp_sa_text(ss, where, sizeof where);
    mp_set_error(c->t, "dial %s:%u: connect %s: %s (%s)", c->dial->host, (unsigned)c->dial->port,
                 where, uv_strerror(uverr), uv_err_name(uverr));
    if (c->dial->next < c->dial->naddrs) {
        c->tcp_closing = true;
        uv_close((uv_handle_t *)&c->tcp, mp_on_retry_closed);
        return;
    }
    mp_dial_fail(c, MPREG_E_UNREACHABLE);
}

static void mp_on_connect(uv_connect_t *req, int status) {
    mp_conn *c = req->data;
    if (c->state != MP_CONN_CONNECTING) {
        return; /* closed meanwhile: status is UV_ECANCELED */
    }
    if (status < 0) {
        mp_dial_attempt_failed(c, &c->dial->addrs[c->dial->next - 1], status);
        return;
    }
    uv_timer_stop(&c->timer);
    mp_conn_tune_socket(c);
    c->state = MP_CONN_OPEN;
    mp_dial_report(c, MPREG_OK);
    /* libuv is done with req once this callback returns, so the dial state
     * can go; nothing is owed any more. */
    free(c->dial);
    c->dial = NULL;
    mp_conn_update_reading(c);
    if (mp_conn_pending(c) > 0) {
        mp_conn_mark_dirty(c);
    }
}

/* Connects c->tcp (fresh) to the next address. */
static void mp_dial_next(mp_conn *c) {
    mp_dial *d = c->dial;
    const struct sockaddr_storage *ss = &d->addrs[d->next++];
    int r = uv_tcp_connect(&d->req, &c->tcp, (const struct sockaddr *)ss, mp_on_connect);
    if (r != 0) {
        mp_dial_attempt_failed(c, ss, r);
    }
}

static void mp_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    mp_conn *c = req->data;
    mp_dial *d = c->dial;
    d->resolving = false;
    if (c->state != MP_CONN_RESOLVING) {
        uv_freeaddrinfo(res);
        mp_conn_maybe_release(c); /* closed meanwhile; it waited for us */
        return;
    }
    if (status < 0) {
        mp_set_error(c->t, "dial %s:%u: cannot resolve: %s (%s)", d->host, (unsigned)d->port,
                     uv_strerror(status), uv_err_name(status));
        uv_freeaddrinfo(res);
        mp_dial_fail(c, MPREG_E_UNREACHABLE);
        return;
    }
    d->naddrs = mp_copy_addrs(res, d->port, d->addrs, MP_MAX_ADDRS);
    uv_freeaddrinfo(res);
    if (d->naddrs == 0) {
        mp_set_error(c->t, "dial %s:%u: no IPv4 or IPv6 address", d->host, (unsigned)d->port);
        mp_dial_fail(c, MPREG_E_UNREACHABLE);
        return;
    }
    c->state = MP_CONN_CONNECTING;
    mp_dial_next(c);
}

static void mp_on_connect_timeout(uv_timer_t *h) {
    mp_conn *c = h->data;
    mp_set_error(c->t, "dial %s:%u: timed out after %" PRIu32 " ms", c->dial->host,
                 (unsigned)c->dial->port, c->t->cfg.connect_timeout_ms);
    mp_dial_fail(c, MPREG_E_TIMEOUT);
}

/* Starts resolving or connecting. Errors here are returned to the caller of
 * mp_transport_dial, so no callback may be owed yet. */
static int mp_dial_start(mp_conn *c) {
    mp_dial *d = c->dial;
    mp_transport *t = c->t;
    int r;
    if (mp_parse_literal(d->host, d->port, &d->addrs[0])) {
        d->naddrs = 1;
        d->next = 1;
        c->state = MP_CONN_CONNECTING;
        r = uv_tcp_connect(&d->req, &c->tcp, (const struct sockaddr *)&d->addrs[0], mp_on_connect);
        if (r != 0) {
            mp_set_error(t, "dial %s:%u: %s (%s)", d->host, (unsigned)d->port, uv_strerror(r),
                         uv_err_name(r));
            return r;
        }
    } else {
        struct addrinfo hints;
        char port[8];
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        snprintf(port, sizeof port, "%u", (unsigned)d->port);
        c->state = MP_CONN_RESOLVING;
        r = uv_getaddrinfo(t->loop, &d->gai, mp_on_resolved, d->host, port, &hints);
        if (r != 0) {
            mp_set_error(t, "dial %s:%u: cannot resolve: %s (%s)", d->host, (unsigned)d->port,
                         uv_strerror(r), uv_err_name(r));
            return r;
        }
        d->resolving = true;
    }
    r = mp_conn_arm_timer(c, t->cfg.connect_timeout_ms, mp_on_connect_timeout);
    if (r != 0) {
        mp_set_error(t, "dial %s:%u: timer: %s", d->host, (unsigned)d->port, uv_strerror(r));
    }
    return r;
}

mpreg_err mp_transport_dial(mp_transport *t, const char *host, uint16_t port, uint64_t *conn_id) {
    if (!t || !host || !*host || port == 0 || !conn_id || strlen(host) >= MP_HOST_MAX) {
        return MPREG_E_INVALID;
    }
    if (t->shutting_down) {
        return MPREG_E_CLOSED;
    }
    mp_conn *c = mp_conn_new(t);
    if (!c) {
        return MPREG_E_NOMEM;
    }
    c->dial = calloc(1, sizeof *c->dial);
    if (!c->dial || mp_conn_register(c) != MPREG_OK) {
        mp_conn_finish(c, MPREG_E_NOMEM);
        return MPREG_E_NOMEM;
    }
    c->dial->gai.data = c;
    c->dial->req.data = c;
    c->dial->port = port;
    memcpy(c->dial->host, host, strlen(host) + 1);
    if (mp_dial_start(c) != 0) {
        mp_conn_finish(c, MPREG_E_UNREACHABLE); /* not announced: silent */
        return MPREG_E_UNREACHABLE;
    }
    c->announced = true;
    t->dialed++;
    *conn_id = c->id;
    return MPREG_OK;
}

mpreg_err mp_transport_split_addr(const char *addr, bool allow_port_0,
                                  char host[MP_TRANSPORT_HOST_MAX], uint16_t *port) {
    return mp_addr_split(addr, allow_port_0, host, port);
}

mpreg_err mp_transport_dial_addr(mp_transport *t, const char *addr, uint64_t *conn_id) {
    char host[MP_TRANSPORT_HOST_MAX];
    uint16_t port = 0;
    if (!t) {
        return MPREG_E_INVALID;
    }
    if (mp_transport_split_addr(addr, false, host, &port) != MPREG_OK) {
        mp_set_error(t, "dial '%s': expected HOST:PORT (IPv6 as [ADDR]:PORT, port 1 to 65535)",
                     addr ? addr : "(null)");
        return MPREG_E_INVALID;
    }
    return mp_transport_dial(t, host, port, conn_id);
}

/* ---- the transport ---------------------------------------------------------- */

mpreg_err mp_transport_new(uv_loop_t *loop, const mp_transport_config *cfg,
                           const mp_transport_callbacks *cb, void *ud, mp_transport **out) {
    if (!loop || !cb || !cb->on_frame || !cb->on_close || !out) {
        return MPREG_E_INVALID;
    }
    mp_transport *t = calloc(1, sizeof *t);
    if (!t) {
        return MPREG_E_NOMEM;
    }
    mp_config_resolve(&t->cfg, cfg);
    t->rbuf = malloc(t->cfg.read_buffer);
    if (!t->rbuf) {
        free(t);
        return MPREG_E_NOMEM;
    }
    t->loop = loop;
    t->cb = *cb;
    t->ud = ud;
    t->next_id = 1;
    mp_map_init(&t->conns);
    uv_prepare_init(loop, &t->prepare);
    uv_check_init(loop, &t->check);
    t->prepare.data = t;
    t->check.data = t;
    t->live = 2;
    *out = t;
    return MPREG_OK;
}

static void mp_on_flusher_closed(uv_handle_t *h) {
    mp_transport *t = h->data;
    t->live--;
    mp_transport_maybe_done(t);
}

/* During shutdown: once connections and listeners are gone, close the flush
 * handles (they were needed until the last connection had drained); once
 * those are gone too, report. Reporting is the last thing done with t: the
 * callback may free it. */
static void mp_transport_maybe_done(mp_transport *t) {
    if (!t->shutting_down) {
        return;
    }
    if (t->nconns == 0 && !t->listeners && !t->flushers_closing) {
        t->flushers_closing = true;
        uv_close((uv_handle_t *)&t->prepare, mp_on_flusher_closed);
        uv_close((uv_handle_t *)&t->check, mp_on_flusher_closed);
        return;
    }
    if (t->live == 0 && !t->shutdown_reported) {
        t->shutdown_reported = true;
        if (t->shutdown_cb) {
            t->shutdown_cb(t, t->ud);
        }
    }
}

mpreg_err mp_transport_shutdown(mp_transport *t, mp_transport_shutdown_cb cb) {
    if (!t) {
        return MPREG_E_INVALID;
    }
    if (t->shutting_down) {
        return MPREG_E_CLOSED;
    }
    t->shutting_down = true;
    t->shutdown_cb = cb;
    while (t->listeners) {
        mp_listener_close(t, t->listeners);
    }
    /* Closing changes no map entry (connections leave the map in their close
     * callbacks), so iterating here is safe. */
    const void *key;
    size_t klen;
    void *val;
    for (size_t it = 0; mp_map_next(&t->conns, &it, &key, &klen, &val);) {
        mp_conn *c = val;
        if (c->state == MP_CONN_OPEN) {
            mp_conn_drain(c, MPREG_E_CLOSED);
        } else if (c->state == MP_CONN_RESOLVING || c->state == MP_CONN_CONNECTING) {
            mp_conn_finish(c, MPREG_E_CLOSED);
        }
    }
    mp_transport_maybe_done(t);
    return MPREG_OK;
}

mpreg_err mp_transport_free(mp_transport *t) {
    if (!t) {
        return MPREG_OK;
    }
    if (t->live != 0) {
        return MPREG_E_INVALID;
    }
    mp_map_free(&t->conns, NULL);
    free(t->rbuf);
    free(t);
    return MPREG_OK;
}

/* ---- per-connection calls --------------------------------------------------- */

mpreg_err mp_transport_send(mp_transport *t, uint64_t conn_id, const void *body, size_t len) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c || !mp_conn_accepts_output(c)) {
        return MPREG_E_CLOSED;
    }
    size_t pending = mp_conn_pending(c);
    size_t limit = t->cfg.hard_limit;
    if (pending > 0 && (len > limit || pending + MP_FRAME_HEADER + len > limit)) {
        t->backpressure++;
        c->over_high = true; /* so that on_writable tells the sender when to retry */
        return MPREG_E_BACKPRESSURE;
    }
    mpreg_err err = mp_frame_write(&c->out[c->cur], body, len, t->cfg.max_frame);
    if (err) {
        return err;
    }
    c->stats.frames_out++;
    mp_conn_queued(c);
    return MPREG_OK;
}

mp_buf *mp_transport_output(mp_transport *t, uint64_t conn_id) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c || !mp_conn_accepts_output(c)) {
        return NULL;
    }
    if (mp_conn_pending(c) >= t->cfg.hard_limit) {
        t->backpressure++;
        c->over_high = true;
        return NULL;
    }
    mp_conn_mark_dirty(c);
    return &c->out[c->cur];
}

mp_buf *mp_transport_output_final(mp_transport *t, uint64_t conn_id) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c || !mp_conn_accepts_output(c)) {
        return NULL;
    }
    mp_conn_mark_dirty(c);
    return &c->out[c->cur];
}

void mp_transport_output_commit(mp_transport *t, uint64_t conn_id, uint64_t frames) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c) {
        return;
    }
    c->stats.frames_out += frames;
    if (mp_conn_accepts_output(c)) {
        mp_conn_queued(c);
    }
}

bool mp_transport_over_soft_water(mp_transport *t, uint64_t conn_id) {
    const mp_conn *c = mp_conn_lookup(t, conn_id);
    return c && mp_conn_pending(c) >= t->cfg.high_water / 2;
}

size_t mp_transport_output_pending(mp_transport *t, uint64_t conn_id) {
    const mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c) {
        return 0;
    }
    size_t left = c->writing ? uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) : 0;
    return c->out[c->cur].len + (left < c->inflight ? left : c->inflight);
}

bool mp_transport_over_high_water(mp_transport *t, uint64_t conn_id) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c) {
        return false;
    }
    if (mp_conn_pending(c) >= t->cfg.high_water) {
        c->over_high = true;
        return true;
    }
    return false;
}

mpreg_err mp_transport_pause_reading(mp_transport *t, uint64_t conn_id) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c || c->state == MP_CONN_CLOSED) {
        return MPREG_E_CLOSED;
    }
    c->paused = true;
    mp_conn_update_reading(c);
    if (c->state == MP_CONN_OPEN && c->timer_on) {
        uv_timer_stop(&c->timer); /* no read deadline while we hold it back */
    }
    return MPREG_OK;
}

mpreg_err mp_transport_resume_reading(mp_transport *t, uint64_t conn_id) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c || c->state == MP_CONN_CLOSED) {
        return MPREG_E_CLOSED;
    }
    c->paused = false;
    if (c->state == MP_CONN_OPEN && c->held_off < c->held.len) {
        mp_conn_queue_feed(c); /* fed from the loop, then the socket */
    } else {
        mp_conn_update_reading(c);
    }
    if (c->state == MP_CONN_OPEN && c->partial_count > 0 && !c->proto_error) {
        int r = mp_conn_arm_timer(c, t->cfg.read_timeout_ms, mp_on_read_timeout);
        if (r != 0) {
            mp_conn_io_error(c, "timer", r);
        }
    }
    return MPREG_OK;
}

mpreg_err mp_transport_close(mp_transport *t, uint64_t conn_id, bool flush_first,
                             mpreg_err reason) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (!c || c->state == MP_CONN_CLOSED) {
        return MPREG_E_CLOSED;
    }
    switch (c->state) {
    case MP_CONN_OPEN:
        if (flush_first) {
            mp_conn_drain(c, reason);
        } else {
            mp_conn_finish(c, reason);
        }
        break;
    case MP_CONN_DRAINING:
    case MP_CONN_SHUTDOWN:
        if (!flush_first) {
            mp_conn_finish(c, reason);
        }
        break;
    default:
        mp_conn_finish(c, reason); /* not connected yet: nothing to flush to */
        break;
    }
    return MPREG_OK;
}

void mp_transport_count_drop(mp_transport *t, uint64_t conn_id, uint64_t n) {
    mp_conn *c = mp_conn_lookup(t, conn_id);
    if (c) {
        c->stats.frames_dropped += n;
    }
}

static void mp_conn_snapshot(const mp_conn *c, mp_transport_conn_stats *out) {
    *out = c->stats;
    out->pending_bytes = mp_conn_pending(c);
    out->buffered_in = mp_frame_decoder_buffered(&c->dec) + (c->held.len - c->held_off);
}

mpreg_err mp_transport_get_conn_stats(const mp_transport *t, uint64_t conn_id,
                                      mp_transport_conn_stats *out) {
    const mp_conn *c = mp_map_get(&t->conns, &conn_id, sizeof conn_id);
    if (!c) {
        return MPREG_E_CLOSED;
    }
    mp_conn_snapshot(c, out);
    return MPREG_OK;
}

void mp_transport_get_stats(const mp_transport *t, mp_transport_stats *out) {
    memset(out, 0, sizeof *out);
    out->totals = t->gone;
    const void *key;
    size_t klen;
    void *val;
    for (size_t it = 0; mp_map_next(&t->conns, &it, &key, &klen, &val);) {
        mp_transport_conn_stats s;
        mp_conn_snapshot(val, &s);
        mp_stats_add(&out->totals, &s);
    }
    out->accepted = t->accepted;
    out->dialed = t->dialed;
    out->closed = t->closed;
    out->protocol_errors = t->protocol_errors;
    out->backpressure = t->backpressure;
    out->read_timeouts = t->read_timeouts;
    out->partial_refused = t->partial_refused;
    out->accept_errors = t->accept_errors;
    out->partial_bytes = t->partial_bytes;
    out->connections = mp_map_count(&t->conns);
    out->listeners = t->nlisteners;
}

const char *mp_transport_last_error(const mp_transport *t) {
    return t->err;
}

void mp_transport_get_config(const mp_transport *t, mp_transport_config *out) {
    *out = t->cfg;
}

uint32_t mp_transport_max_frame(const mp_transport *t) {
    return t->cfg.max_frame;
}
