/* client.c - the blocking client: one socket, poll(), no threads.
 *
 * Every call appends its frame to the output buffer and then "pumps" the
 * socket - poll() for readable (and writable while output is pending), read
 * whatever came, write whatever is pending - until the answer it waits for
 * has arrived or its deadline passes. Reading never stops while we wait or
 * write: a node that is sending us deliveries while we push a large request
 * must never find both directions stuck.
 *
 * Whatever arrives is sorted as it is decoded: a reply goes to the call
 * waiting for its correlation id (a stack-allocated waiter; several can be
 * waiting when a handler makes a call of its own), a DELIVER to the delivery
 * queue (dispatched by mpreg_poll only, so callbacks never run inside
 * mpreg_call), an RPC_INVOKE to the invoke queue (served by mpreg_poll and
 * by every wait), a PING is answered at once. A reply nobody waits for any
 * more (its call timed out) is dropped.
 *
 * Frames are copied out of the read buffer into one allocation each and
 * decoded again when they are used; decoding is cheap next to a syscall
 * and keeps queued frames small. */
#define _GNU_SOURCE
#include "mpreg/client.h"

#include "client/client_proto.h"
#include "core/frame.h"
#include "runtime/sysclock.h"
#include "services/pubsub.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MP_CL_READ_CHUNK (64u * 1024u)
/* Bytes read per pump before we look at what arrived, so that a firehose
 * of deliveries cannot keep a waiting call from seeing its reply. */
#define MP_CL_READ_BUDGET (1024u * 1024u)
#define MP_CL_DEFAULT_QUEUED (64u * 1024u * 1024u)
/* How deep handlers may nest (a handler's call serving another invoke ...). */
#define MP_CL_MAX_SERVE_DEPTH 8
/* mpreg_close: how long GOODBYE and queued output may take to go out. */
#define MP_CL_CLOSE_GRACE_MS 2000u
#define MP_CL_DRAIN_MS 500u

typedef struct mp_cl_frame {
    struct mp_cl_frame *next;
    uint64_t missed; /* a delivery: what this client dropped of its subscription before it */
    size_t len;
    uint8_t data[];
} mp_cl_frame;

typedef struct mp_cl_queue {
    mp_cl_frame *head;
    mp_cl_frame *tail;
    size_t count;
    size_t bytes;
} mp_cl_queue;

typedef struct mp_cl_waiter {
    struct mp_cl_waiter *next;
    mp_id id;
    mp_cl_frame *reply;
} mp_cl_waiter;

struct mpreg_client {
    int fd;
    mpreg_err closed;      /* MPREG_OK while the connection is usable */
    mpreg_error close_err; /* why it closed; the node's error when it sent one */
    bool closing;          /* mpreg_close is draining: drop what arrives */
    bool welcomed;         /* a WELCOME or ERROR has come: the node speaks mpreg */
    uint8_t first[64];     /* the first bytes the node sent, to quote if they are not mpreg */
    size_t first_len;
    uint32_t timeout_ms;
    uint32_t max_frame; /* the node's limit for what we send */
    size_t max_queued;
    mp_frame_decoder dec;
    mp_buf out;
    size_t out_off; /* bytes of out already written */
    mp_xoshiro rng;
    mp_cl_queue deliveries;
    mp_cl_queue invokes;
    mp_cl_waiter *waiters;
    mp_client_subs subs;
    mp_client_functions funcs;
    mp_client_welcome welcome;
    uint64_t dropped;
    uint64_t owed; /* dropped deliveries not yet attached to a later one */
    int serve_depth;
    uint8_t rbuf[MP_CL_READ_CHUNK];
};

void mpreg_error_free(mpreg_error *err) {
    if (err == NULL) {
        return;
    }
    mpreg_value_free(&err->details);
    err->code = MPREG_OK;
    err->message[0] = '\0';
    err->command[0] = '\0';
}

/* ==== queues ================================================================ */

static mp_cl_frame *mp_cl_frame_new(const uint8_t *data, size_t len) {
    mp_cl_frame *f = malloc(sizeof *f + len);
    if (f) {
        f->next = NULL;
        f->missed = 0;
        f->len = len;
        memcpy(f->data, data, len);
    }
    return f;
}

static void mp_cl_queue_push(mp_cl_queue *q, mp_cl_frame *f) {
    if (q->tail) {
        q->tail->next = f;
    } else {
        q->head = f;
    }
    q->tail = f;
    q->count++;
    q->bytes += f->len;
}

static mp_cl_frame *mp_cl_queue_pop(mp_cl_queue *q) {
    mp_cl_frame *f = q->head;
    if (f) {
        q->head = f->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        q->count--;
        q->bytes -= f->len;
        f->next = NULL;
    }
    return f;
}

static void mp_cl_queue_clear(mp_cl_queue *q) {
    mp_cl_frame *f;
    while ((f = mp_cl_queue_pop(q)) != NULL) {
        free(f);
    }
}

/* ==== connection state ======================================================== */

static void mp_cl_mark_closed(mpreg_client *c, mpreg_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void mp_cl_mark_closed(mpreg_client *c, mpreg_err code, const char *fmt, ...) {
    if (c->closed != MPREG_OK) {
        return;
    }
    c->closed = MPREG_E_CLOSED;
    if (c->close_err.code == MPREG_OK) {
        c->close_err.code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->close_err.message, sizeof c->close_err.message, fmt, ap);
        va_end(ap);
    }
}

/* The error every call on a closed client gets. */
static mpreg_err mp_cl_closed_error(const mpreg_client *c, mpreg_error *err) {
    return mp_client_error_set(err, MPREG_E_CLOSED, "connection closed: %s",
                               c->close_err.message[0] ? c->close_err.message : "closed");
}

/* ==== inbound ================================================================== */

static mp_cl_waiter *mp_cl_find_waiter(mpreg_client *c, const mp_id *id) {
    for (mp_cl_waiter *w = c->waiters; w; w = w->next) {
        if (mp_id_equal(&w->id, id)) {
            return w;
        }
    }
    return NULL;
}

static void mp_cl_queue_out(mpreg_client *c, const mp_client_msg *m) {
    /* Only PONG and RPC_RESULT are queued from here; if memory runs out the
     * node times the exchange out, which is all we could do anyway. */
    (void)mp_client_frame(&c->out, &c->rng.rng, m, c->max_frame, NULL);
}

/* An ERROR without correlation concerns the connection: usually the node
 * closes it next, and then this is the reason every later call reports. */
static void mp_cl_connection_error(mpreg_client *c, const mp_envelope *e) {
    mpreg_error nerr = {0};
    mp_client_error_from_envelope(e, &nerr);
    if (c->close_err.code == MPREG_OK) {
        mp_client_error_set(&c->close_err, nerr.code, "%s: %s", mpreg_err_name(nerr.code),
                            nerr.message);
    }
    mpreg_error_free(&nerr);
}

static void mp_cl_sort_reply(mpreg_client *c, const mp_envelope *e, const uint8_t *frame,
                             size_t len) {
    mp_cl_waiter *w = mp_cl_find_waiter(c, &e->correlation_id);
    if (w == NULL || w->reply != NULL) {
        return; /* a late answer to a call that gave up */
    }
    w->reply = mp_cl_frame_new(frame, len);
    if (w->reply == NULL) {
        mp_cl_mark_closed(c, MPREG_E_NOMEM, "%s", "out of memory");
    }
}

/* The subscription a delivery frame is for; NULL when it names none this
 * client has. */
static mp_client_sub *mp_cl_delivery_sub(mpreg_client *c, const uint8_t *frame, size_t len,
                                         uint64_t *node_missed) {
    mp_envelope e;
    uint64_t sub = 0;
    mp_str tag;
    if (mp_envelope_decode(frame, len, &e, NULL) != MPREG_OK ||
        mp_pubsub_deliver_parse(&e, &sub, &tag) != MPREG_OK) {
        return NULL;
    }
    if (node_missed) {
        (void)mp_pubsub_deliver_missed(&e, node_missed);
    }
    return mp_client_subs_find_mut(&c->subs, sub);
}

/* A delivery the client cannot keep: counted, and owed to the next message
 * of its subscription that it does keep (with whatever the node said was
 * missed before this one), so that the application hears of it. */
static void mp_cl_drop_delivery(mpreg_client *c, const uint8_t *frame, size_t len) {
    c->dropped++;
    uint64_t missed = 0;
    mp_client_sub *s = mp_cl_delivery_sub(c, frame, len, &missed);
    if (s) {
        s->missed += 1 + missed;
        c->owed += 1 + missed;
    }
}

static void mp_cl_sort_delivery(mpreg_client *c, const uint8_t *frame, size_t len) {
    if (c->deliveries.bytes + len > c->max_queued) {
        mp_cl_drop_delivery(c, frame, len);
        return;
    }
    mp_cl_frame *f = mp_cl_frame_new(frame, len);
    if (f == NULL) {
        mp_cl_drop_delivery(c, frame, len);
        return;
    }
    if (c->owed) { /* only after drops: the frame is read for its subscription */
        mp_client_sub *s = mp_cl_delivery_sub(c, frame, len, NULL);
        if (s && s->missed) {
            f->missed = s->missed;
            c->owed -= s->missed < c->owed ? s->missed : c->owed;
            s->missed = 0;
        }
    }
    mp_cl_queue_push(&c->deliveries, f);
}

/* Before the WELCOME, what does not read as mpreg is a stranger on the
 * port, and saying so beats reporting a framing error. */
static void mp_cl_not_mpreg(mpreg_client *c, const char *why) {
    mp_client_not_mpreg(&c->close_err, c->first, c->first_len, why);
    mp_cl_mark_closed(c, MPREG_E_HANDSHAKE, "%s", c->close_err.message);
}

static int mp_cl_on_frame(void *ud, const uint8_t *frame, size_t len) {
    mpreg_client *c = ud;
    if (c->closing) {
        return 0;
    }
    mp_envelope e;
    const char *why = NULL;
    mpreg_err rc = mp_envelope_decode(frame, len, &e, &why);
    if (rc != MPREG_OK && !c->welcomed) {
        mp_cl_not_mpreg(c, "is not an envelope");
        return 1;
    }
    if (rc != MPREG_OK) {
        mp_cl_mark_closed(c, rc, "the node sent an invalid envelope (%s)", why ? why : "?");
        return 1;
    }
    if (!c->welcomed && e.kind != MP_KIND_WELCOME && e.kind != MP_KIND_ERROR) {
        mp_cl_not_mpreg(c, "is neither WELCOME nor ERROR");
        return 1;
    }
    c->welcomed = true;
    switch (e.kind) {
    case MP_KIND_PING: {
        mp_client_msg m = {.kind = MP_KIND_PONG, .correlation = &e.id};
        mp_cl_queue_out(c, &m);
        return 0;
    }
    case MP_KIND_DELIVER:
        mp_cl_sort_delivery(c, frame, len);
        return 0;
    case MP_KIND_RPC_INVOKE: {
        mp_cl_frame *f = mp_cl_frame_new(frame, len);
        if (f == NULL) {
            mp_cl_mark_closed(c, MPREG_E_NOMEM, "%s", "out of memory");
            return 1;
        }
        mp_cl_queue_push(&c->invokes, f);
        return 0;
    }
    case MP_KIND_GOODBYE:
        mp_cl_mark_closed(c, MPREG_E_CLOSED, "%s", "the node said goodbye");
        return 0;
    case MP_KIND_ERROR:
        if (mp_id_is_zero(&e.correlation_id)) {
            mp_cl_connection_error(c, &e);
            return 0;
        }
        mp_cl_sort_reply(c, &e, frame, len);
        return 0;
    default:
        if (!mp_id_is_zero(&e.correlation_id)) {
            mp_cl_sort_reply(c, &e, frame, len);
        }
        return 0; /* nothing else is meant for a client: ignore it */
    }
}

static void mp_cl_read(mpreg_client *c) {
    size_t total = 0;
    while (c->fd >= 0 && total < MP_CL_READ_BUDGET) {
        ssize_t n = recv(c->fd, c->rbuf, sizeof c->rbuf, MSG_DONTWAIT);
        if (n > 0) {
            if (c->first_len < sizeof c->first) {
                size_t k = sizeof c->first - c->first_len;
                k = k < (size_t)n ? k : (size_t)n;
                memcpy(c->first + c->first_len, c->rbuf, k);
                c->first_len += k;
            }
            total += (size_t)n;
            mpreg_err rc = mp_frame_decoder_feed(&c->dec, c->rbuf, (size_t)n, mp_cl_on_frame, c);
            if (!c->welcomed && (rc == MPREG_E_FRAME_EMPTY || rc == MPREG_E_FRAME_TOO_LARGE)) {
                mp_cl_not_mpreg(c, rc == MPREG_E_FRAME_EMPTY ? "is an empty frame"
                                                             : "has an absurd frame length");
                return;
            }
            if (rc == MPREG_E_FRAME_EMPTY || rc == MPREG_E_FRAME_TOO_LARGE) {
                mp_cl_mark_closed(c, rc, "the node sent a bad frame (%s)", mpreg_err_name(rc));
            }
            if (rc != MPREG_OK) {
                mp_cl_mark_closed(c, rc, "%s", mpreg_strerror(rc));
                return;
            }
            continue;
        }
        if (n == 0) {
            mp_cl_mark_closed(c, MPREG_E_CLOSED, "%s", "the node closed the connection");
            return;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            mp_cl_mark_closed(c, MPREG_E_IO, "connection lost: %s", strerror(errno));
        }
        return;
    }
}

/* ==== outbound ==================================================================== */

static bool mp_cl_out_pending(const mpreg_client *c) {
    return c->out_off < c->out.len;
}

static void mp_cl_write(mpreg_client *c) {
    while (mp_cl_out_pending(c)) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            mp_cl_mark_closed(c, MPREG_E_IO, "connection lost: %s", strerror(errno));
        }
        break;
    }
    if (c->out_off == c->out.len) {
        c->out.len = 0;
        c->out_off = 0;
    } else if (c->out_off > (1u << 20) && c->out_off > c->out.len / 2) {
        mp_buf_consume(&c->out, c->out_off);
        c->out_off = 0;
    }
}

/* One round: wait up to wait_ms (negative = no limit) for the socket, then
 * read and write what it allows. MPREG_E_TIMEOUT when nothing happened. */
static mpreg_err mp_cl_pump(mpreg_client *c, int wait_ms) {
    if (c->closed) {
        return c->closed;
    }
    if (mp_cl_out_pending(c)) {
        /* The common case: the kernel takes it all at once. That is
         * progress enough for one round; the caller looks again. */
        mp_cl_write(c);
        if (!mp_cl_out_pending(c)) {
            return c->closed;
        }
    }
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (mp_cl_out_pending(c)) {
        p.events |= POLLOUT;
    }
    int n = poll(&p, 1, wait_ms);
    if (n < 0) {
        if (errno == EINTR) {
            return MPREG_OK;
        }
        mp_cl_mark_closed(c, MPREG_E_IO, "poll: %s", strerror(errno));
        return c->closed;
    }
    if (n == 0) {
        return MPREG_E_TIMEOUT;
    }
    if (p.revents & POLLOUT) {
        mp_cl_write(c);
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        mp_cl_read(c);
    }
    return c->closed;
}

static int mp_cl_remaining(uint64_t deadline) {
    uint64_t now = mp_sysclock_mono_ms();
    if (now >= deadline) {
        return 0;
    }
    uint64_t left = deadline - now;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Writes everything pending, reading meanwhile. */
static mpreg_err mp_cl_flush(mpreg_client *c, uint64_t deadline) {
    while (!c->closed && mp_cl_out_pending(c)) {
        int left = mp_cl_remaining(deadline);
        mpreg_err rc = mp_cl_pump(c, left);
        if (rc == MPREG_E_TIMEOUT || (left == 0 && mp_cl_out_pending(c))) {
            return c->closed ? c->closed : MPREG_E_TIMEOUT;
        }
    }
    return c->closed;
}

/* ==== serving invocations ============================================================== */

static int mp_cl_serve_invokes(mpreg_client *c) {
    if (c->serve_depth >= MP_CL_MAX_SERVE_DEPTH) {
        return 0;
    }
    int served = 0;
    mp_cl_frame *f;
    while (!c->closed && (f = mp_cl_queue_pop(&c->invokes)) != NULL) {
        mp_envelope e;
        if (mp_envelope_decode(f->data, f->len, &e, NULL) == MPREG_OK) {
            mpreg_bytes payload = {0};
            c->serve_depth++;
            mpreg_err rc = mp_client_functions_serve(&c->funcs, &e, &payload);
            c->serve_depth--;
            if (rc == MPREG_OK) {
                mp_client_msg m = {.kind = MP_KIND_RPC_RESULT,
                                   .correlation = &e.id,
                                   .payload = payload.data,
                                   .payload_len = payload.len};
                mp_cl_queue_out(c, &m);
            }
            mpreg_bytes_free(&payload);
            served++;
        }
        free(f);
    }
    if (served && mp_cl_out_pending(c) && !c->closed) {
        mp_cl_write(c);
    }
    return served;
}

/* ==== requests ============================================================================ */

static void mp_cl_unlink(mpreg_client *c, mp_cl_waiter *w) {
    for (mp_cl_waiter **p = &c->waiters; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            return;
        }
    }
}

/* Waits for w's reply until deadline, serving invocations meanwhile. */
static mpreg_err mp_cl_wait(mpreg_client *c, mp_cl_waiter *w, uint64_t deadline) {
    for (;;) {
        if (w->reply) {
            return MPREG_OK;
        }
        if (c->invokes.head) {
            mp_cl_serve_invokes(c);
            continue;
        }
        if (c->closed) {
            return c->closed;
        }
        int left = mp_cl_remaining(deadline);
        if (left == 0) {
            return MPREG_E_TIMEOUT;
        }
        mp_cl_pump(c, left);
    }
}

typedef struct mp_cl_req {
    mp_kind kind;
    const char *topic;
    const void *payload;
    size_t payload_len;
    uint64_t deadline_ms; /* the envelope's: wall clock */
    uint32_t wait_ms;     /* how long we wait for the answer */
} mp_cl_req;

/* Sends r and reads the answer into *out (see mp_client_reply_read). */
static mpreg_err mp_cl_request(mpreg_client *c, const mp_cl_req *r, mpreg_value *out,
                               mpreg_error *err) {
    *out = mpreg_nil();
    if (c->closed) {
        return mp_cl_closed_error(c, err);
    }
    mp_cl_waiter w = {0};
    mp_client_msg m = {.kind = r->kind,
                       .topic = r->topic,
                       .deadline_ms = r->deadline_ms,
                       .payload = r->payload,
                       .payload_len = r->payload_len};
    mpreg_err rc = mp_client_frame(&c->out, &c->rng.rng, &m, c->max_frame, &w.id);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "cannot send %s: %s", mp_kind_name(r->kind),
                                   mpreg_strerror(rc));
    }
    w.next = c->waiters;
    c->waiters = &w;
    rc = mp_cl_wait(c, &w, mp_sysclock_mono_ms() + r->wait_ms);
    mp_cl_unlink(c, &w);
    if (rc == MPREG_E_TIMEOUT) {
        return mp_client_error_set(err, MPREG_E_TIMEOUT, "no answer from the node within %u ms",
                                   (unsigned)r->wait_ms);
    }
    if (rc != MPREG_OK) {
        return mp_cl_closed_error(c, err);
    }
    mp_envelope e;
    const char *why = NULL;
    rc = mp_envelope_decode(w.reply->data, w.reply->len, &e, &why);
    if (rc == MPREG_OK) {
        rc = mp_client_reply_read(&e, out, err);
    }
    free(w.reply);
    return rc;
}

static mp_cl_req mp_cl_simple(mp_kind kind, const char *topic, const mpreg_bytes *payload,
                              uint32_t wait_ms) {
    return (mp_cl_req){.kind = kind,
                       .topic = topic,
                       .payload = payload ? payload->data : NULL,
                       .payload_len = payload ? payload->len : 0,
                       .wait_ms = wait_ms};
}

/* ==== connecting =================================================================== */

static mpreg_err mp_cl_connect_addr(const struct addrinfo *ai, uint64_t deadline, int *fd_out,
                                    int *errno_out) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        *errno_out = errno;
        return MPREG_E_IO;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        *errno_out = errno;
        close(fd);
        return MPREG_E_UNREACHABLE;
    }
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n = poll(&p, 1, mp_cl_remaining(deadline));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            *errno_out = n == 0 ? ETIMEDOUT : errno;
            close(fd);
            return n == 0 ? MPREG_E_TIMEOUT : MPREG_E_IO;
        }
        break;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        *errno_out = soerr ? soerr : errno;
        close(fd);
        return MPREG_E_UNREACHABLE;
    }
    *fd_out = fd;
    return MPREG_OK;
}

static mpreg_err mp_cl_dial(const char *host, uint16_t port, uint64_t deadline, int *fd,
                            mpreg_error *err) {
    char service[8];
    snprintf(service, sizeof service, "%u", (unsigned)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(host, service, &hints, &res);
    if (g != 0) {
        return mp_client_error_set(err, MPREG_E_UNREACHABLE, "cannot resolve %s: %s", host,
                                   gai_strerror(g));
    }
    mpreg_err rc = MPREG_E_UNREACHABLE;
    int e = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        rc = mp_cl_connect_addr(ai, deadline, fd, &e);
        if (rc == MPREG_OK || rc == MPREG_E_TIMEOUT) {
            break;
        }
    }
    freeaddrinfo(res);
    if (rc == MPREG_E_TIMEOUT) {
        return mp_client_error_set(err, rc, "connect %s:%u: timed out", host, (unsigned)port);
    }
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, MPREG_E_UNREACHABLE, "connect %s:%u: %s", host,
                                   (unsigned)port, strerror(e));
    }
    return MPREG_OK;
}

static mpreg_client *mp_cl_new(const mpreg_client_options *opts) {
    mpreg_client *c = calloc(1, sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->fd = -1;
    c->timeout_ms = mp_client_timeout(0, opts ? opts->timeout_ms : 0);
    c->max_queued = opts && opts->max_queued_bytes ? opts->max_queued_bytes : MP_CL_DEFAULT_QUEUED;
    c->max_frame = MP_FRAME_DEFAULT_MAX;
    mp_frame_decoder_init(&c->dec, MP_FRAME_DEFAULT_MAX);
    mp_sysrand_seed(&c->rng);
    return c;
}

static void mp_cl_free(mpreg_client *c) {
    if (c->fd >= 0) {
        close(c->fd);
    }
    mp_frame_decoder_free(&c->dec);
    mp_buf_free(&c->out);
    mp_cl_queue_clear(&c->deliveries);
    mp_cl_queue_clear(&c->invokes);
    mp_client_subs_free(&c->subs);
    mp_client_functions_free(&c->funcs);
    mpreg_error_free(&c->close_err);
    free(c);
}

/* HELLO, then the node's WELCOME (or its refusal). */
static mpreg_err mp_cl_handshake(mpreg_client *c, const mpreg_client_options *opts,
                                 uint64_t deadline, mpreg_error *err) {
    mpreg_bytes hello = {0};
    mpreg_err rc = mp_client_hello_payload(opts, &hello);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "cannot build HELLO: %s", mpreg_strerror(rc));
    }
    mp_cl_waiter w = {0};
    mp_client_msg m = {.kind = MP_KIND_HELLO, .payload = hello.data, .payload_len = hello.len};
    rc = mp_client_frame(&c->out, &c->rng.rng, &m, c->max_frame, &w.id);
    mpreg_bytes_free(&hello);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "cannot send HELLO: %s", mpreg_strerror(rc));
    }
    w.next = c->waiters;
    c->waiters = &w;
    rc = mp_cl_wait(c, &w, deadline);
    mp_cl_unlink(c, &w);
    if (rc == MPREG_E_TIMEOUT) {
        return mp_client_error_set(err, rc, "no WELCOME from the node in time");
    }
    if (rc != MPREG_OK) {
        /* A refusal without correlation (bad token, ...) says more than
         * "closed". */
        if (c->close_err.code != MPREG_OK && c->close_err.code != MPREG_E_CLOSED) {
            mp_client_error_copy(err, &c->close_err);
            return c->close_err.code;
        }
        return mp_client_error_set(err, MPREG_E_HANDSHAKE,
                                   "the node closed the connection "
                                   "during the handshake");
    }
    mp_envelope e;
    rc = mp_envelope_decode(w.reply->data, w.reply->len, &e, NULL);
    if (rc == MPREG_OK) {
        rc = mp_client_welcome_read(&e, &c->welcome, err);
    }
    free(w.reply);
    if (rc == MPREG_OK && c->welcome.max_frame) {
        /* The node's limit holds both ways: what we send, what it sends. */
        c->max_frame = c->welcome.max_frame;
        if (c->welcome.max_frame > c->dec.max_frame) {
            c->dec.max_frame = c->welcome.max_frame;
        }
    }
    return rc;
}

mpreg_client *mpreg_connect(const char *url, const mpreg_client_options *opts, mpreg_error *err) {
    char host[MP_CLIENT_HOST_MAX];
    uint16_t port;
    const char *why = NULL;
    if (mp_client_parse_url(url, host, &port, &why) != MPREG_OK) {
        mp_client_error_set(err, MPREG_E_INVALID, "bad url '%s': %s", url ? url : "", why);
        return NULL;
    }
    mpreg_client *c = mp_cl_new(opts);
    if (c == NULL) {
        mp_client_error_set(err, MPREG_E_NOMEM, "out of memory");
        return NULL;
    }
    uint64_t deadline = mp_sysclock_mono_ms() + c->timeout_ms;
    if (mp_cl_dial(host, port, deadline, &c->fd, err) != MPREG_OK ||
        mp_cl_handshake(c, opts, deadline, err) != MPREG_OK) {
        mp_cl_free(c);
        return NULL;
    }
    return c;
}

void mpreg_close(mpreg_client *c) {
    if (c == NULL) {
        return;
    }
    if (c->fd >= 0 && !c->closed) {
        mp_client_msg m = {.kind = MP_KIND_GOODBYE};
        uint32_t grace =
            c->timeout_ms < MP_CL_CLOSE_GRACE_MS ? c->timeout_ms : MP_CL_CLOSE_GRACE_MS;
        c->closing = true;
        if (mp_client_frame(&c->out, &c->rng.rng, &m, c->max_frame, NULL) == MPREG_OK) {
            mp_cl_flush(c, mp_sysclock_mono_ms() + grace);
        }
        /* Half-close and wait briefly for the node's side to end, so that
         * it reads everything we sent instead of a reset. */
        if (!c->closed && shutdown(c->fd, SHUT_WR) == 0) {
            uint64_t deadline = mp_sysclock_mono_ms() + MP_CL_DRAIN_MS;
            while (!c->closed && mp_cl_remaining(deadline) > 0) {
                mp_cl_pump(c, mp_cl_remaining(deadline));
            }
        }
    }
    mp_cl_free(c);
}

/* ==== RPC ============================================================================= */

mpreg_err mpreg_call(mpreg_client *c, const char *fun, const mpreg_value *args,
                     const mpreg_value *kwargs, const mpreg_call_options *opts, mpreg_value *result,
                     mpreg_error *err) {
    *result = mpreg_nil();
    if (c == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no client");
    }
    uint32_t timeout = mp_client_timeout(opts ? opts->timeout_ms : 0, c->timeout_ms);
    char name[32];
    mpreg_bytes payload = {0};
    mpreg_err rc =
        mp_client_call_payload(fun, args, kwargs, opts, timeout, name, sizeof name, &payload, err);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_cl_req r = mp_cl_simple(MP_KIND_RPC_REQUEST, NULL, &payload, mp_client_reply_wait(timeout));
    r.deadline_ms = mp_sysclock_wall_ms() + timeout;
    mpreg_value results;
    rc = mp_cl_request(c, &r, &results, err);
    mpreg_bytes_free(&payload);
    if (rc != MPREG_OK) {
        if (err) {
            err->command[0] = '\0'; /* one command: naming it says nothing */
        }
        return rc;
    }
    return mp_client_call_result(&results, name, result, err);
}

mpreg_err mpreg_request(mpreg_client *c, const mpreg_value *commands, uint32_t timeout_ms,
                        mpreg_value *results, mpreg_error *err) {
    *results = mpreg_nil();
    if (c == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no client");
    }
    uint32_t timeout = mp_client_timeout(timeout_ms, c->timeout_ms);
    mpreg_bytes payload = {0};
    mpreg_err rc = mp_client_request_payload(commands, timeout, &payload, err);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_cl_req r = mp_cl_simple(MP_KIND_RPC_REQUEST, NULL, &payload, mp_client_reply_wait(timeout));
    r.deadline_ms = mp_sysclock_wall_ms() + timeout;
    rc = mp_cl_request(c, &r, results, err);
    mpreg_bytes_free(&payload);
    return rc;
}

/* ==== pub/sub ========================================================================= */

mpreg_err mpreg_publish(mpreg_client *c, const char *topic, const void *data, size_t len,
                        mpreg_error *err) {
    if (c == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no client");
    }
    mpreg_err rc = mp_client_check_topic(topic, err);
    if (rc != MPREG_OK) {
        return rc;
    }
    if (c->closed) {
        return mp_cl_closed_error(c, err);
    }
    mp_client_msg m = {
        .kind = MP_KIND_PUBLISH, .topic = topic, .payload = data, .payload_len = len};
    rc = mp_client_frame(&c->out, &c->rng.rng, &m, c->max_frame, NULL);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "cannot publish: %s", mpreg_strerror(rc));
    }
    rc = mp_cl_flush(c, mp_sysclock_mono_ms() + c->timeout_ms);
    if (rc == MPREG_E_TIMEOUT) {
        return mp_client_error_set(err, rc, "the node did not take the message within %u ms",
                                   (unsigned)c->timeout_ms);
    }
    return rc == MPREG_OK ? MPREG_OK : mp_cl_closed_error(c, err);
}

mpreg_err mpreg_subscribe(mpreg_client *c, const char *const *patterns, size_t n, const char *group,
                          mpreg_message_cb cb, void *ud, uint64_t *sub_id, mpreg_error *err) {
    mpreg_subscribe_options o = {.group = group};
    return mpreg_subscribe_ex(c, patterns, n, &o, cb, ud, sub_id, err);
}

/* The subscription id in the OK answering a SUBSCRIBE. */
static mpreg_err mp_cl_sub_id(const mpreg_value *ok, uint64_t *id, mpreg_error *err) {
    const mpreg_value *v = mpreg_map_get(ok, "subscription");
    if (v == NULL || v->type != MPREG_INT || v->u.i <= 0) {
        return mp_client_error_set(err, MPREG_E_DECODE, "the node's OK holds no subscription id");
    }
    *id = (uint64_t)v->u.i;
    return MPREG_OK;
}

mpreg_err mpreg_subscribe_ex(mpreg_client *c, const char *const *patterns, size_t n,
                             const mpreg_subscribe_options *opts, mpreg_message_cb cb, void *ud,
                             uint64_t *sub_id, mpreg_error *err) {
    if (c == NULL || cb == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "subscribe needs a client and a callback");
    }
    mp_buf payload = MP_BUF_INIT;
    mpreg_err rc = mp_client_subscribe_payload(patterns, n, opts, &payload, err);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_cl_req r = mp_cl_simple(MP_KIND_SUBSCRIBE, NULL, &payload, c->timeout_ms);
    mpreg_value ok;
    rc = mp_cl_request(c, &r, &ok, err);
    mp_buf_free(&payload);
    uint64_t id = 0;
    if (rc == MPREG_OK) {
        rc = mp_cl_sub_id(&ok, &id, err);
    }
    mpreg_value_free(&ok);
    if (rc == MPREG_OK && mp_client_subs_add(&c->subs, id, cb, ud) != MPREG_OK) {
        rc = mp_client_error_set(err, MPREG_E_NOMEM, "out of memory");
    }
    if (rc == MPREG_OK && sub_id) {
        *sub_id = id;
    }
    return rc;
}

mpreg_err mpreg_unsubscribe(mpreg_client *c, uint64_t sub_id, mpreg_error *err) {
    if (c == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no client");
    }
    const mp_client_sub *gone = mp_client_subs_find(&c->subs, sub_id);
    if (gone) {
        c->owed -= gone->missed < c->owed ? gone->missed : c->owed; /* nobody to tell */
    }
    mp_client_subs_remove(&c->subs, sub_id);
    mp_buf payload = MP_BUF_INIT;
    mpreg_err rc = mp_pubsub_subscription_encode(sub_id, &payload);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "bad subscription id %llu", (unsigned long long)sub_id);
    }
    mp_cl_req r = mp_cl_simple(MP_KIND_UNSUBSCRIBE, NULL, &payload, c->timeout_ms);
    mpreg_value ok;
    rc = mp_cl_request(c, &r, &ok, err);
    mpreg_value_free(&ok);
    mp_buf_free(&payload);
    return rc;
}

/* ==== workers and control ================================================================ */

mpreg_err mpreg_register(mpreg_client *c, const mpreg_worker_function *def, mpreg_error *err) {
    if (c == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no client");
    }
    /* Added before the node hears of it: the first invoke may arrive right
     * behind the OK. */
    mpreg_err rc = mp_client_functions_add(&c->funcs, def, err);
    if (rc != MPREG_OK) {
        return rc;
    }
    mpreg_bytes payload = {0};
    rc = mp_client_register_payload(def, &payload);
    if (rc != MPREG_OK) {
        mp_client_functions_remove(&c->funcs, def);
        return mp_client_error_set(err, rc, "cannot encode REGISTER: %s", mpreg_strerror(rc));
    }
    mp_cl_req r = mp_cl_simple(MP_KIND_REGISTER, NULL, &payload, c->timeout_ms);
    mpreg_value ok;
    rc = mp_cl_request(c, &r, &ok, err);
    mpreg_value_free(&ok);
    mpreg_bytes_free(&payload);
    if (rc != MPREG_OK) {
        mp_client_functions_remove(&c->funcs, def);
    }
    return rc;
}

static mpreg_err mp_cl_control_payload(mpreg_client *c, const char *op, const mpreg_bytes *payload,
                                       mpreg_value *out, mpreg_error *err) {
    *out = mpreg_nil();
    if (c == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no client");
    }
    mp_cl_req r = mp_cl_simple(MP_KIND_CONTROL, op, payload, c->timeout_ms);
    return mp_cl_request(c, &r, out, err);
}

static mpreg_err mp_cl_control(mpreg_client *c, const char *op, mpreg_value *out,
                               mpreg_error *err) {
    static uint8_t empty_map[1] = {0x80};
    mpreg_bytes p = {.data = empty_map, .len = sizeof empty_map};
    return mp_cl_control_payload(c, op, &p, out, err);
}

mpreg_err mpreg_status(mpreg_client *c, mpreg_value *out, mpreg_error *err) {
    return mp_cl_control(c, "status", out, err);
}

mpreg_err mpreg_catalog(mpreg_client *c, mpreg_value *out, mpreg_error *err) {
    return mpreg_catalog_ex(c, NULL, out, err);
}

/* Page after page until the node has no `next`. */
mpreg_err mpreg_catalog_ex(mpreg_client *c, const mpreg_catalog_options *opts, mpreg_value *out,
                           mpreg_error *err) {
    *out = mpreg_nil();
    mpreg_value acc = mpreg_nil(), next = mpreg_nil();
    mpreg_err rc;
    do {
        mpreg_bytes payload = {0};
        rc = mp_client_catalog_payload(opts, &next, &payload);
        mpreg_value_free(&next);
        if (rc != MPREG_OK) {
            mp_client_error_set(err, rc, "cannot ask for the catalog: %s", mpreg_strerror(rc));
            break;
        }
        mpreg_value page;
        rc = mp_cl_control_payload(c, "catalog", &payload, &page, err);
        mpreg_bytes_free(&payload);
        rc = rc ? rc : mp_client_catalog_merge(&acc, &page, &next, err);
    } while (rc == MPREG_OK && next.type != MPREG_NIL);
    if (rc != MPREG_OK) {
        mpreg_value_free(&acc);
        return rc;
    }
    *out = acc;
    return MPREG_OK;
}

mpreg_err mpreg_members(mpreg_client *c, mpreg_value *out, mpreg_error *err) {
    return mp_cl_control(c, "members", out, err);
}

/* ==== polling ============================================================================= */

static void mp_cl_dispatch_one(mpreg_client *c, mp_cl_frame *f) {
    mp_envelope e;
    mpreg_message msg;
    char topic[MP_MAX_TOPIC_LEN + 1];
    if (mp_envelope_decode(f->data, f->len, &e, NULL) == MPREG_OK &&
        mp_client_message_read(&e, topic, &msg) == MPREG_OK) {
        const mp_client_sub *s = mp_client_subs_find(&c->subs, msg.subscription);
        if (s) {
            msg.missed += f->missed; /* what this client dropped itself */
            /* Copy out: the callback may unsubscribe, moving the table. */
            mp_client_sub sub = *s;
            sub.cb(&msg, sub.ud);
        }
    }
    free(f);
}

/* Dispatches what is queued now (not what callbacks cause to arrive). */
static int mp_cl_dispatch(mpreg_client *c) {
    int handled = mp_cl_serve_invokes(c);
    size_t n = c->deliveries.count;
    for (size_t i = 0; i < n; i++) {
        mp_cl_frame *f = mp_cl_queue_pop(&c->deliveries);
        if (f == NULL) {
            break;
        }
        mp_cl_dispatch_one(c, f);
        handled++;
    }
    return handled;
}

int mpreg_poll(mpreg_client *c, int timeout_ms) {
    if (c == NULL) {
        return -MPREG_E_INVALID;
    }
    uint64_t deadline = timeout_ms > 0 ? mp_sysclock_mono_ms() + (uint64_t)timeout_ms : 0;
    while (!c->closed && !c->deliveries.head && !c->invokes.head) {
        int wait = timeout_ms < 0 ? -1 : timeout_ms == 0 ? 0 : mp_cl_remaining(deadline);
        if (mp_cl_pump(c, wait) == MPREG_E_TIMEOUT || (timeout_ms >= 0 && wait == 0)) {
            break;
        }
    }
    if (!c->closed) {
        mp_cl_pump(c, 0); /* take whatever else is already here, in one go */
    }
    int handled = mp_cl_dispatch(c);
    if (mp_cl_out_pending(c) && !c->closed) {
        mp_cl_flush(c, mp_sysclock_mono_ms() + c->timeout_ms);
    }
    if (handled == 0 && c->closed) {
        return -(int)MPREG_E_CLOSED;
    }
    return handled;
}

/* ==== accessors ============================================================================ */

const char *mpreg_client_node(const mpreg_client *c) {
    return c ? c->welcome.node : "";
}

const char *mpreg_client_cluster(const mpreg_client *c) {
    return c ? c->welcome.cluster : "";
}

int mpreg_client_fd(const mpreg_client *c) {
    return c && !c->closed ? c->fd : -1;
}

uint64_t mpreg_client_dropped(const mpreg_client *c) {
    return c ? c->dropped : 0;
}
