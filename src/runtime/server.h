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
 * SIGINT and SIGTERM stop the server gracefully: the node says GOODBYE and
 * closes its connections after flushing them, the transport shuts down, the
 * loop runs out of work and mp_server_run returns. A second signal while
 * that is under way ends the process at once, by that signal.
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

/* Creates the loop, the transport (its max_frame is cfg->max_frame), the
 * random source (seeded from libsodium's randombytes) and the node with cfg,
 * whose strings the node copies. cfg->log_level also filters the server's
 * own log lines. Failures are logged; they are MPREG_E_NOMEM,
 * MPREG_E_INTERNAL (libsodium would not initialise), MPREG_E_INVALID (the
 * node refused cfg) or MPREG_E_IO (libuv could not set up the loop). */
mpreg_err mp_server_new(const mp_node_config *cfg, mp_server **out);

/* Frees everything. A server that is still running is stopped first and its
 * loop run until every handle has closed. NULL is ignored. */
void mp_server_free(mp_server *s);

/* The node's function registry, for plugins (before mp_server_run). */
mpreg_registry *mp_server_registry(mp_server *s);
mp_node *mp_server_node(mp_server *s);

/* Listens on host:port (see mp_transport_listen: port 0 picks a free port,
 * *bound_port gets the real one). MPREG_E_IO on failure with the reason in
 * mp_server_last_error, e.g. "listen 127.0.0.1:6464: address already in
 * use (EADDRINUSE)". */
mpreg_err mp_server_listen(mp_server *s, const char *host, uint16_t port, uint16_t *bound_port);
const char *mp_server_last_error(const mp_server *s);

/* Runs the loop until the server has stopped (a signal or mp_server_stop)
 * and every connection has been closed. MPREG_OK after a graceful stop. */
mpreg_err mp_server_run(mp_server *s);

/* Starts the graceful stop described above; mp_server_run returns when it is
 * done. Calling it again does nothing. */
void mp_server_stop(mp_server *s);

/* A log line for this node, written when level is within the configured
 * log level. */
void mp_server_log(mp_server *s, mp_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
