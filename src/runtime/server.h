/* server.h - the real driver: one libuv loop, one transport, one node.
 *
 * The node (node/node.h) is a sans-I/O state machine; this module is what
 * gives it a world. It owns a uv loop, an mp_transport that listens and
 * carries frames, a timer, the signal handlers and the node's random
 * source, and it translates in both directions:
 *
 *   transport accept / frame / protocol error / writable / close
 *       -> mp_node_on_open / on_frame / on_protocol_error / on_writable / on_close
 *   node output / output_commit / over_high_water / set_reading / close / log
 *       -> mp_transport_output / ... / mp_transport_close / a stderr log line
 *
 * Every input carries now_ms, the wall clock in milliseconds (sysclock.h),
 * and after every input the timer is re-armed for mp_node_next_wakeup, so
 * the node is ticked exactly when it asked to be (and at least once a
 * second while it has anything pending, which keeps a wall-clock step from
 * stalling it for long).
 *
 * The node's outgoing connections (io->dial, for clustering) are the
 * transport's dials: their ids come from the same counter as accepted
 * connections (never 0, never reused), frames the node queues before the
 * connect completes go out once it does, and a dial that fails is reported
 * as mp_node_on_close(MPREG_E_UNREACHABLE).
 *
 * Start-up comes in three steps, so that the node can be told the address it
 * is reachable at: mp_server_new (loop, transport, signals), mp_server_listen
 * (the port, possibly picked by the kernel), mp_server_start (the node, whose
 * advertise_addr may now name that port).
 *
 * SIGINT and SIGTERM stop the server gracefully. A node that has cluster
 * members first leaves: mp_node_leave, then the loop keeps running for about
 * one gossip round (2 x gossip_interval_ms, at most MP_SERVER_LEAVE_MAX_MS)
 * so that LEFT reaches the others. Then the node says GOODBYE and closes its
 * connections after flushing them, the transport shuts down, the loop runs
 * out of work and mp_server_run returns. A second signal while that is under
 * way ends the process at once, by that signal.
 *
 * The process must ignore SIGPIPE before running a server (transport.h
 * says why); the server does not change dispositions it does not own.
 *
 * Single-threaded like the loop: call everything from the thread that runs
 * mp_server_run. */
#ifndef MP_SERVER_H
#define MP_SERVER_H

#include "mpreg/error.h"
#include "mpreg/plugin.h"
#include "node/node.h"

#include <stdint.h>

typedef struct mp_server mp_server;

/* Writes one log line to stderr, whatever the level:
 *
 *     2026-11-24T00:00:00.123Z info node=<node> message
 *
 * The time is UTC with milliseconds. node may be NULL (the field is left
 * out) for lines written before a node exists. Control characters in the
 * message are escaped (\n becomes \x0a) so that one call is always one line,
 * whatever a peer managed to get into the text. */
void mp_log_write(mp_log_level level, const char *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Parses "error", "warn", "info" or "debug". false for anything else. */
bool mp_log_level_parse(const char *text, mp_log_level *out);

/* The longest a leaving node keeps running to spread LEFT. */
#define MP_SERVER_LEAVE_MAX_MS 1000u

typedef struct mp_server_config {
    const char *node_id;         /* for log lines (the node's id); copied */
    mp_log_level log_level;      /* also filters the server's own log lines */
    uint32_t max_frame;          /* the transport's, and so the node's; 0 = MP_FRAME_DEFAULT_MAX */
    uint32_t connect_timeout_ms; /* outgoing connections; 0 = the transport's default */
    /* The transport's limits (transport.h); 0 = its default. */
    size_t output_high_water; /* a connection's unsent output at which it is not read */
    size_t output_hard_limit; /* ... at which it is closed when an answer is owed */
    uint32_t read_timeout_ms; /* a connection silent mid-frame this long is closed */
    size_t max_partial_bytes; /* half-read frames over all connections */
} mp_server_config;

/* Creates the loop, the transport, the signal handles and the random source
 * (seeded from libsodium's randombytes). No node yet: mp_server_start makes
 * it. Failures are logged; they are MPREG_E_NOMEM, MPREG_E_INTERNAL
 * (libsodium would not initialise) or MPREG_E_IO (libuv could not set up
 * the loop). */
mpreg_err mp_server_new(const mp_server_config *cfg, mp_server **out);

/* Creates the node with cfg, whose strings the node copies (cfg->max_frame
 * is ignored: the node gets the transport's). Call it once, after
 * mp_server_listen when cfg->advertise_addr names the bound port, and
 * before mp_server_run. MPREG_E_INVALID (logged) when the node refused cfg,
 * MPREG_E_CLOSED when called twice or after a stop. */
mpreg_err mp_server_start(mp_server *s, const mp_node_config *cfg);

/* Frees everything. A server that is still running is stopped first and its
 * loop run until every handle has closed. NULL is ignored. */
void mp_server_free(mp_server *s);

/* The node's function registry, for plugins (after mp_server_start, before
 * mp_server_run); NULL before mp_server_start, like mp_server_node. */
mpreg_registry *mp_server_registry(mp_server *s);
mp_node *mp_server_node(mp_server *s);

/* Listens on host:port (see mp_transport_listen: port 0 picks a free port,
 * *bound_port gets the real one). MPREG_E_IO on failure with the reason in
 * mp_server_last_error, e.g. "listen 127.0.0.1:6464: address already in
 * use (EADDRINUSE)". */
mpreg_err mp_server_listen(mp_server *s, const char *host, uint16_t port, uint16_t *bound_port);
const char *mp_server_last_error(const mp_server *s);

/* Runs the loop until the server has stopped (a signal or mp_server_stop)
 * and every connection has been closed. MPREG_OK after a graceful stop;
 * MPREG_E_INVALID without mp_server_start. */
mpreg_err mp_server_run(mp_server *s);

/* Starts the graceful stop described above (leaving first when the node has
 * cluster members); mp_server_run returns when it is done. Calling it again
 * does nothing. */
void mp_server_stop(mp_server *s);

/* A log line for this node, written when level is within the configured
 * log level. */
void mp_server_log(mp_server *s, mp_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
