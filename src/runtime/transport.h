/* transport.h - the libuv TCP transport: listeners, dials, connections, frames.
 *
 * The transport moves frames, not meaning. It accepts and dials TCP
 * connections, cuts each inbound byte stream into frames (frame.h) and hands
 * them to its owner, and writes whatever frames the owner queues. What a
 * frame says, and what to send back, is the sans-I/O core's business; the
 * node daemon and the client library both sit on top of this module.
 *
 * Connections are named by 64-bit ids that are never reused, so a stale id
 * held by the owner can only ever find nothing (MPREG_E_CLOSED), never some
 * other connection.
 *
 * The transport keeps no global state: several may share one loop. Like the
 * loop, it is single-threaded: call it only from the loop's thread. As in
 * every libuv program, the process must ignore SIGPIPE (libuv writes with
 * plain write(2), so a peer's reset would otherwise kill the process rather
 * than fail the write); the transport does not change signal dispositions
 * itself, since that is the process's business, not a module's.
 *
 * Callbacks. Every callback is called from the event loop, never from inside
 * a transport function, so the owner never sees its own call re-enter it.
 * Inside a callback the owner may call any transport function except
 * mp_transport_free (the shutdown callback excepted).
 *   on_accept     a listener accepted conn_id; `peer` is "ip:port" or
 *                 "[ip6]:port". Closing it here refuses it.
 *   on_connected  a dial finished: MPREG_OK, or why not (MPREG_E_UNREACHABLE,
 *                 MPREG_E_TIMEOUT, MPREG_E_CLOSED when closed locally first;
 *                 mp_transport_last_error has the details). Exactly once per
 *                 dial, always before that connection's on_close.
 *   on_frame      one frame body (len >= 1). The bytes are valid only during
 *                 the call: they live in the transport's shared read buffer.
 *   on_protocol_error
 *                 the peer broke the framing (MPREG_E_FRAME_EMPTY,
 *                 MPREG_E_FRAME_TOO_LARGE), stalled in the middle of a
 *                 frame (MPREG_E_TIMEOUT) or its partial frame went over
 *                 the shared budget (MPREG_E_LIMIT). Reading has stopped;
 *                 output queued now (an ERROR frame) is flushed before the
 *                 connection is closed. Optional.
 *   on_close      the connection is gone and its id is dead. Exactly once for
 *                 every id handed out (by on_accept or mp_transport_dial),
 *                 whatever the cause: peer EOF (MPREG_E_CLOSED), I/O error
 *                 (MPREG_E_IO), framing error (its code), failed dial, local
 *                 close (the reason given), transport shutdown.
 *   on_writable   a connection that went over its high-water mark has
 *                 drained below the low-water mark. Once per crossing.
 *                 Optional.
 *
 * Output. Nothing is written when the owner sends: frames are appended to the
 * connection's pending buffer and every connection with pending output is
 * flushed once per loop iteration (and after each chunk read, so that a
 * burst of reads does not pile up output), with one write of everything
 * pending. A request/reply exchange costs one write per side, and a burst of
 * a thousand small frames costs one write, not a thousand. */
#ifndef MP_TRANSPORT_H
#define MP_TRANSPORT_H

#include "core/addr.h"
#include "core/buf.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* libuv's loop; declared here so that users of the transport need not
 * include uv.h. */
struct uv_loop_s;

typedef struct mp_transport mp_transport;

/* Defaults for the zero fields of mp_transport_config. */
#define MP_TRANSPORT_DEFAULT_HIGH_WATER (8u * 1024u * 1024u)
#define MP_TRANSPORT_DEFAULT_HARD_LIMIT (64u * 1024u * 1024u)
#define MP_TRANSPORT_DEFAULT_READ_BUFFER (256u * 1024u)
#define MP_TRANSPORT_DEFAULT_CLOSE_TIMEOUT_MS 2000u
#define MP_TRANSPORT_DEFAULT_CONNECT_TIMEOUT_MS 10000u
#define MP_TRANSPORT_DEFAULT_KEEPALIVE_S 30u
#define MP_TRANSPORT_DEFAULT_BACKLOG 511
#define MP_TRANSPORT_DEFAULT_READ_TIMEOUT_MS 30000u
#define MP_TRANSPORT_DEFAULT_MAX_PARTIAL (256u * 1024u * 1024u)

/* Every field may be left 0 for its default. */
typedef struct mp_transport_config {
    uint32_t max_frame;          /* largest frame body in either direction; MP_FRAME_DEFAULT_MAX */
    size_t high_water;           /* pending output at which a connection counts as full */
    size_t low_water;            /* on_writable fires below this; default high_water / 2 */
    size_t hard_limit;           /* pending output beyond which sends are refused */
    size_t read_buffer;          /* size of the shared read buffer */
    uint32_t close_timeout_ms;   /* how long a flushing close may take */
    uint32_t connect_timeout_ms; /* how long a dial may take, resolution included */
    uint32_t keepalive_s;        /* TCP keepalive idle time */
    int backlog;                 /* listen backlog */
    /* A connection in the middle of a frame that sends no byte for this
     * long is closed (MPREG_E_TIMEOUT through on_protocol_error). Idle
     * connections between frames never time out. */
    uint32_t read_timeout_ms;
    /* Bytes of incomplete inbound frames all connections may hold together;
     * the connection whose partial frame goes over it is refused
     * (MPREG_E_LIMIT through on_protocol_error). */
    size_t max_partial_bytes;
} mp_transport_config;

typedef struct mp_transport_callbacks {
    void (*on_accept)(void *ud, uint64_t conn_id, const char *peer);
    void (*on_connected)(void *ud, uint64_t conn_id, mpreg_err status);
    void (*on_frame)(void *ud, uint64_t conn_id, const uint8_t *frame, size_t len);
    void (*on_protocol_error)(void *ud, uint64_t conn_id, mpreg_err err);
    void (*on_close)(void *ud, uint64_t conn_id, mpreg_err reason);
    void (*on_writable)(void *ud, uint64_t conn_id);
    /* A listener could not accept (EMFILE: out of file descriptors, ...);
     * `why` is the error text. Optional. */
    void (*on_accept_error)(void *ud, const char *why);
} mp_transport_callbacks;

/* Counters of one connection (and, summed, of the transport). */
typedef struct mp_transport_conn_stats {
    uint64_t frames_in;      /* frames delivered to on_frame */
    uint64_t bytes_in;       /* bytes read from the socket */
    uint64_t frames_out;     /* frames queued (send, output_commit) */
    uint64_t bytes_out;      /* bytes the kernel accepted */
    uint64_t frames_dropped; /* frames the owner shed (mp_transport_count_drop) */
    uint64_t write_calls;    /* uv_try_write + uv_write calls */
    size_t pending_bytes;    /* output queued or in flight, right now */
    size_t buffered_in;      /* bytes of an incomplete inbound frame, right now */
} mp_transport_conn_stats;

typedef struct mp_transport_stats {
    /* Counters summed over every connection the transport ever had; the two
     * "right now" fields are summed over the open ones. */
    mp_transport_conn_stats totals;
    uint64_t accepted;        /* connections accepted */
    uint64_t dialed;          /* dials started */
    uint64_t closed;          /* connections gone (on_close fired) */
    uint64_t protocol_errors; /* framing errors */
    uint64_t backpressure;    /* sends refused with MPREG_E_BACKPRESSURE */
    uint64_t read_timeouts;   /* connections closed mid-frame by the read timeout */
    uint64_t partial_refused; /* connections refused over max_partial_bytes */
    uint64_t accept_errors;   /* accepts that failed (EMFILE, ...) */
    size_t partial_bytes;     /* bytes of incomplete inbound frames, right now */
    size_t connections;       /* connections alive right now */
    size_t listeners;         /* listening sockets right now */
} mp_transport_stats;

typedef void (*mp_transport_shutdown_cb)(mp_transport *t, void *ud);

/* Fills cfg with the defaults (the same values that zero fields get). */
void mp_transport_config_default(mp_transport_config *cfg);

/* Creates a transport on `loop`, which the caller owns and runs. cfg may be
 * NULL for the defaults; cb is copied; on_frame and on_close are required.
 * `ud` is passed to every callback. */
mpreg_err mp_transport_new(struct uv_loop_s *loop, const mp_transport_config *cfg,
                           const mp_transport_callbacks *cb, void *ud, mp_transport **out);

/* Frees a transport whose shutdown has completed (it may be called from the
 * shutdown callback). Returns MPREG_E_INVALID, freeing nothing, while the
 * transport still has handles in the loop. NULL is ignored. */
mpreg_err mp_transport_free(mp_transport *t);

/* Closes listeners, closes every connection gracefully (pending output is
 * flushed, within the close timeout), then calls cb(t, ud) from the loop once
 * every handle is closed. Each connection gets its on_close first. Listen,
 * dial and send are refused from now on. MPREG_E_CLOSED when called twice. */
mpreg_err mp_transport_shutdown(mp_transport *t, mp_transport_shutdown_cb cb);

/* Listens on host:port. host is an IPv4 or IPv6 literal ("127.0.0.1", "::1",
 * "[::1]"), "localhost" (always 127.0.0.1, never the resolver), another
 * name (resolved synchronously: this is a start-up call; a name with several
 * addresses listens on each) or NULL / "" for every IPv4
 * interface. Port 0 picks a free port; *bound_port (may be NULL) gets the
 * port actually bound. May be called several times. MPREG_E_IO on failure
 * with the reason in mp_transport_last_error, e.g.
 * "listen 127.0.0.1:4222: address already in use (EADDRINUSE)". */
mpreg_err mp_transport_listen(mp_transport *t, const char *host, uint16_t port,
                              uint16_t *bound_port);

/* Starts connecting to host:port (literal or name, resolved asynchronously;
 * each address is tried in turn). *conn_id gets the new connection's id at
 * once; on_connected reports the outcome. Frames may be sent before the
 * connection is up: they are written when it is. An error here (bad
 * argument, shut down, resolver or socket failure) means no id and no
 * callbacks. */
mpreg_err mp_transport_dial(mp_transport *t, const char *host, uint16_t port, uint64_t *conn_id);

/* The longest host mp_transport_split_addr hands back, NUL included. */
#define MP_TRANSPORT_HOST_MAX MP_ADDR_HOST_MAX

/* mp_addr_split (core/addr.h), for the transport's users. Splits
 * "host:port" or "[ipv6]:port" into host (brackets dropped) and
 * port. The port must be 1..65535 when allow_port_0 is false, else
 * 0..65535. MPREG_E_INVALID for anything else: no port, an empty host, an
 * IPv6 address without brackets (its colons are ambiguous), a host longer
 * than MP_TRANSPORT_HOST_MAX - 1 bytes, stray characters. */
mpreg_err mp_transport_split_addr(const char *addr, bool allow_port_0,
                                  char host[MP_TRANSPORT_HOST_MAX], uint16_t *port);

/* mp_transport_dial on an address "host:port" ("[::1]:6464" for IPv6;
 * "localhost" is 127.0.0.1, as for listening): the form membership and
 * configuration use. MPREG_E_INVALID, with the reason in
 * mp_transport_last_error, when the address does not parse. */
mpreg_err mp_transport_dial_addr(mp_transport *t, const char *addr, uint64_t *conn_id);

/* Queues one frame (header + body[0..len)) on the connection. Refused, with
 * nothing queued: MPREG_E_CLOSED (unknown id, or closing),
 * MPREG_E_BACKPRESSURE (the frame would take the connection's pending output
 * past the hard limit; a frame on an empty connection is always accepted),
 * MPREG_E_FRAME_EMPTY / MPREG_E_FRAME_TOO_LARGE (len is 0 or over max_frame),
 * MPREG_E_NOMEM. */
mpreg_err mp_transport_send(mp_transport *t, uint64_t conn_id, const void *body, size_t len);

/* The connection's pending output, for encoding frames in place:
 *
 *     mp_buf *out = mp_transport_output(t, id);
 *     size_t start = mp_frame_begin(out);
 *     ... encode the body into out ...
 *     if (mp_frame_end(out, start, max_frame) == MPREG_OK) {
 *         mp_transport_output_commit(t, id, 1);
 *     }
 *
 * Append only whole frames, and only before returning to the loop: the
 * pointer is valid until then and no longer. NULL when the connection is
 * unknown, closing, or at its hard limit (nothing may be appended then). */
mp_buf *mp_transport_output(mp_transport *t, uint64_t conn_id);
/* mp_transport_output even at the hard limit, for one last frame (an ERROR
 * saying why) before the owner closes a connection it must not drop
 * anything on: NULL only when the connection is unknown or closing. */
mp_buf *mp_transport_output_final(mp_transport *t, uint64_t conn_id);
/* Accounts `frames` frames appended through mp_transport_output (stats and
 * the high-water mark). Optional, but without it frames_out undercounts. */
void mp_transport_output_commit(mp_transport *t, uint64_t conn_id, uint64_t frames);

/* True while the connection's pending output is at or over the high-water
 * mark: time to shed droppable traffic or to stop reading from whoever is
 * producing it. After a true answer, on_writable fires when it drains. False
 * for unknown ids. */
bool mp_transport_over_high_water(mp_transport *t, uint64_t conn_id);
/* True while the connection's pending output is at or over half the
 * high-water mark (no callback follows). False for unknown ids. */
bool mp_transport_over_soft_water(mp_transport *t, uint64_t conn_id);
/* The bytes of output the kernel has not taken yet: what is queued, plus
 * what is left of a write in progress (which the marks above count whole
 * until it completes). It shrinks as a slow reader reads. 0 for unknown
 * ids. */
size_t mp_transport_output_pending(mp_transport *t, uint64_t conn_id);

/* Stops / restarts reading from a connection (pushback). A pause takes
 * effect at once, also from inside on_frame: the frames left in that read
 * are held (at most one read buffer) and delivered, in order, after
 * resume_reading and before the socket is read again. MPREG_E_CLOSED for
 * unknown ids. */
mpreg_err mp_transport_pause_reading(mp_transport *t, uint64_t conn_id);
mpreg_err mp_transport_resume_reading(mp_transport *t, uint64_t conn_id);

/* Closes a connection; on_close(reason) follows from the loop. With
 * flush_first, inbound frames are no longer delivered, pending output is
 * written, the write side is shut down and the close waits (at most the
 * close timeout in all) for the peer to finish, so that the peer reads every
 * byte we sent rather than a reset. Without, the connection is dropped now.
 * Closing a closing connection without flush_first hurries it up; otherwise
 * it is a no-op. A connection still dialing is dropped either way (its
 * on_connected says MPREG_E_CLOSED). The reason given is the one on_close
 * reports, even when the close then times out. MPREG_E_CLOSED for unknown
 * ids. */
mpreg_err mp_transport_close(mp_transport *t, uint64_t conn_id, bool flush_first, mpreg_err reason);

/* Records n frames the owner dropped for this connection (shed pub/sub
 * traffic), for the stats. */
void mp_transport_count_drop(mp_transport *t, uint64_t conn_id, uint64_t n);

mpreg_err mp_transport_get_conn_stats(const mp_transport *t, uint64_t conn_id,
                                      mp_transport_conn_stats *out);
void mp_transport_get_stats(const mp_transport *t, mp_transport_stats *out);

/* Text of the most recent failure (listen, dial, connection error), "" when
 * there was none. The next failure overwrites it, so read it right after the
 * failing call or inside the callback that reported the failure. */
const char *mp_transport_last_error(const mp_transport *t);

/* The configuration in force (zero fields resolved to the defaults). */
void mp_transport_get_config(const mp_transport *t, mp_transport_config *out);

/* The resolved max_frame, for callers framing in place. */
uint32_t mp_transport_max_frame(const mp_transport *t);

#endif
