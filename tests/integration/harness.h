/* harness.h - real mpregd processes for integration tests.
 *
 * Starts mpregd as a child process on 127.0.0.1 port 0 (never a fixed port,
 * so tests run side by side), with its data and files in a private temporary
 * directory, waits (bounded) for the port it picked, and stops it with
 * SIGTERM (bounded; SIGKILL when it does not go). The daemon's stdout and
 * stderr go to files in that directory, so a test can read what it said and
 * check that no sanitizer complained.
 *
 * A child is killed if the test process dies first (PR_SET_PDEATHSIG), so
 * a crashed or timed-out test leaves no daemon behind.
 *
 * Most tests need just one node: mp_harness_start / mp_harness_url /
 * mp_harness_stop. Tests about the daemon itself use the lower level
 * (mp_harness_daemon_*), and the raw-socket helpers, which speak the wire
 * protocol by hand (frames of envelopes) with every read bounded. Cluster
 * tests start several nodes that join each other (mp_harness_cluster_*),
 * kill and restart them, and poll the nodes' views (bounded waits) through
 * libmpreg's blocking client. */
#ifndef MP_HARNESS_H
#define MP_HARNESS_H

#include "core/buf.h"
#include "core/envelope.h"
#include "mpreg/value.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* How long a daemon may take to announce its port, and to stop. Generous,
 * for sanitizer builds on a loaded machine; a healthy run takes a fraction. */
#define MP_HARNESS_START_TIMEOUT_MS 10000
#define MP_HARNESS_STOP_TIMEOUT_MS 5000
/* How long one read on a raw socket waits. */
#define MP_HARNESS_IO_TIMEOUT_MS 5000

/* The daemon and plugin under test: $MPREGD and $MPREG_HELLO_PLUGIN when
 * set, else the paths the build compiled in. */
const char *mp_harness_mpregd_path(void);
const char *mp_harness_plugin_path(void);

/* A fresh private directory under $TMPDIR (or /tmp), malloc'd; NULL when
 * none can be made. mp_harness_tmpdir_remove deletes it, everything in it, and
 * frees the path. */
char *mp_harness_tmpdir_new(void);
void mp_harness_tmpdir_remove(char *dir);

typedef struct mp_harness_daemon {
    pid_t pid;  /* 0 once reaped */
    int status; /* wait status, once reaped */
    uint16_t port;
    char name[64];
    char data_dir[PATH_MAX];
    char port_file[PATH_MAX];
    char out_path[PATH_MAX]; /* its stdout */
    char err_path[PATH_MAX]; /* its stderr */
} mp_harness_daemon;

/* Starts `mpregd --listen 127.0.0.1:0 --port-file DIR/NAME.port --data-dir
 * DIR/NAME --name NAME EXTRA...` (extra: NULL-terminated, may be NULL) and
 * waits for the port file. 0 when the daemon is up (d->port set); -1 when it
 * exited first (d->status says how) or did not come up in time (then it has
 * been killed). An existing port file is removed first, so a restart never
 * reads the previous run's port. */
int mp_harness_daemon_start(mp_harness_daemon *d, const char *dir, const char *name,
                            const char *const *extra);

/* Like mp_harness_daemon_start with the exact arguments given (no defaults), and
 * env (NULL-terminated "KEY=VALUE" strings, may be NULL) added to the
 * child's environment. Does not wait for anything. */
int mp_harness_daemon_spawn(mp_harness_daemon *d, const char *dir, const char *tag,
                            const char *const *args, const char *const *env);

/* Waits (bounded) until port_file holds a port, which goes to d->port: 0.
 * -1 when the daemon exited first or did not write it in time (then it has
 * been killed). */
int mp_harness_daemon_wait_port(mp_harness_daemon *d, const char *port_file, int timeout_ms);
/* Waits up to timeout_ms for the daemon to exit; its wait status, or -1 on
 * timeout (the daemon keeps running). */
int mp_harness_daemon_wait(mp_harness_daemon *d, int timeout_ms);
/* SIGTERM, then mp_harness_daemon_wait; on timeout SIGKILL and -1. */
int mp_harness_daemon_stop(mp_harness_daemon *d, int timeout_ms);
/* SIGKILL and reap, if still running: for clean-up paths. */
void mp_harness_daemon_kill(mp_harness_daemon *d);

/* Runs mpregd with args to completion (bounded by timeout_ms, then killed),
 * its output captured in files in dir; returns the wait status (-1 on timeout) and, when non-NULL,
 * what it wrote to stdout and stderr (malloc'd). */
int mp_harness_run(const char *dir, const char *const *args, int timeout_ms, char **out,
                   char **err);

/* The whole file, NUL-terminated (malloc'd), or NULL. */
char *mp_harness_read_file(const char *path);
/* Writes text to path; 0 or -1. */
int mp_harness_write_file(const char *path, const char *text);
/* True when the file exists and contains needle. */
bool mp_harness_file_contains(const char *path, const char *needle);
/* How many lines of the file contain every one of the needles
 * (NULL-terminated); 0 when it cannot be read. */
int mp_harness_file_count_lines(const char *path, const char *const *needles);

/* ---- one node, the simple way ------------------------------------------------ */

/* A daemon in a temporary directory of its own. */
typedef struct mp_harness_node mp_harness_node;

/* Starts mpregd on 127.0.0.1 port 0 with extra flags appended (NULL-
 * terminated, may be NULL), in a fresh temporary directory. NULL when it did
 * not come up; its stderr is then copied to ours. */
mp_harness_node *mp_harness_start(const char *const *extra);
/* "127.0.0.1:PORT" */
const char *mp_harness_url(const mp_harness_node *n);
uint16_t mp_harness_port(const mp_harness_node *n);
mp_harness_daemon *mp_harness_daemon_of(mp_harness_node *n);
/* SIGTERM and a bounded wait (SIGKILL when it does not go), then removes the
 * directory and frees n. 0 when the daemon exited 0 and its stderr holds no
 * sanitizer report; otherwise -1, and its stderr is copied to ours, where
 * ctest's FAIL_REGULAR_EXPRESSION finds any sanitizer report. NULL is
 * fine. */
int mp_harness_stop(mp_harness_node *n);

/* ---- clusters ---------------------------------------------------------------- */

/* Several daemons on this machine that form one cluster: n1 starts plain,
 * n2..nK join through n1 (--peer 127.0.0.1:<n1's port>). All run with fast
 * membership settings (mp_harness_fast_swim: probes every 200 ms, so a dead
 * member is declared within about a second and a half), so that tests
 * about failures take seconds, not minutes. Every daemon lives in one
 * temporary directory: DIR/nI is its data dir, DIR/nI.stderr its log (a
 * restart keeps the previous one as DIR/nI.stderr.1). */
#define MP_HARNESS_MAX_CLUSTER 8
/* The flags every cluster daemon gets, NULL-terminated. */
extern const char *const mp_harness_fast_swim[];
/* The longest a cluster test waits for any one thing. */
#define MP_HARNESS_WAIT_MS 15000

typedef struct mp_harness_cluster mp_harness_cluster;

/* Starts k (1..MP_HARNESS_MAX_CLUSTER) daemons, extra flags (NULL-
 * terminated, may be NULL) appended to each. Returns once each has said it
 * listens; they find each other in the background (wait with
 * mp_harness_wait_until and mp_harness_member_state). NULL when one did not
 * start: its stderr is copied to ours and the others are stopped. */
mp_harness_cluster *mp_harness_cluster_start(size_t k, const char *const *extra);
size_t mp_harness_cluster_size(const mp_harness_cluster *c);
/* Member i (0-based: index 0 is n1). */
mp_harness_daemon *mp_harness_cluster_daemon(mp_harness_cluster *c, size_t i);
const char *mp_harness_cluster_name(const mp_harness_cluster *c, size_t i); /* "n<i+1>" */
const char *mp_harness_cluster_url(const mp_harness_cluster *c, size_t i);  /* "127.0.0.1:PORT" */
/* kill -9: SIGKILL by pid, then reaped. The others are not told. */
void mp_harness_cluster_kill(mp_harness_cluster *c, size_t i);
/* SIGTERM and a bounded wait: the wait status, -1 when it did not exit in
 * MP_HARNESS_STOP_TIMEOUT_MS (then it has been killed). */
int mp_harness_cluster_term(mp_harness_cluster *c, size_t i);
/* Starts member i again (it must not be running) with the same name, data
 * dir, flags and, when it is free, port; it joins through the first other
 * member still running. 0 once it listens, -1 otherwise. */
int mp_harness_cluster_restart(mp_harness_cluster *c, size_t i);
/* The same, but on a new port (port 0): the member comes back from the same
 * data dir at another address. */
int mp_harness_cluster_restart_elsewhere(mp_harness_cluster *c, size_t i);
/* SIGTERM to every member still running (bounded), then removes the
 * directory and frees c. 0 when each of them exited 0 and no member's log
 * holds a sanitizer report; otherwise -1 with the logs concerned copied to
 * our stderr. NULL is fine. */
int mp_harness_cluster_stop(mp_harness_cluster *c);

/* ---- waiting for the fabric ---------------------------------------------------- */

/* Calls pred(ud) every MP_HARNESS_POLL_INTERVAL_MS until it returns true
 * (true) or timeout_ms have passed (false, after one last try). */
#define MP_HARNESS_POLL_INTERVAL_MS 50
bool mp_harness_wait_until(bool (*pred)(void *ud), void *ud, int timeout_ms);

/* What the node at url says of member id: its state ("alive", "suspect",
 * "dead", "left") and generation into the outputs (either may be NULL).
 * false when the node does not list id or could not be asked. */
bool mp_harness_member_state(const char *url, const char *id, char state[16], uint64_t *generation);
/* True when the node at url lists function fun served by node (NULL: any
 * node) in its catalog; false also when it could not be asked. */
bool mp_harness_catalog_has_function(const char *url, const char *fun, const char *node);
/* The same for a topic pattern subscribed to on node (NULL: any). */
bool mp_harness_catalog_has_topic(const char *url, const char *pattern, const char *node);
/* The node's CONTROL reply for op ("members", "catalog", "status") as one
 * line of JSON (malloc'd; an error text when it could not be asked), for
 * the messages of failing assertions. */
char *mp_harness_control_json(const char *url, const char *op);

/* ---- raw sockets ------------------------------------------------------------- */

/* A blocking TCP connection to 127.0.0.1:port, or -1. */
int mp_harness_connect(uint16_t port);
/* Writes all of data; 0 or -1 (a reset counts as -1, never as SIGPIPE). */
int mp_harness_send(int fd, const void *data, size_t len);
/* Reads one frame body into *out (cleared first): 1 = a frame, 0 = the peer
 * closed, -1 = error, timeout or a bad length prefix. */
int mp_harness_read_frame(int fd, mp_buf *out, int timeout_ms);
/* True when the peer closes the connection within timeout_ms; frames that
 * arrive before are read and dropped. */
bool mp_harness_wait_closed(int fd, int timeout_ms);

/* A fresh random message id. */
mp_id mp_harness_id(void);
/* Encodes and sends one envelope; 0 or -1. */
int mp_harness_send_envelope(int fd, const mp_envelope *e);
/* Sends an envelope of kind with a fresh id (returned in *id, may be NULL),
 * topic (may be NULL) and payload; 0 or -1. */
int mp_harness_send_kind(int fd, mp_kind kind, const char *topic, const mpreg_bytes *payload,
                         mp_id *id);
/* Reads one frame into *buf and decodes it into *e (which points into buf);
 * 1 on success, 0 when the peer closed, -1 on error (an undecodable frame
 * included). */
int mp_harness_recv_envelope(int fd, mp_buf *buf, mp_envelope *e, int timeout_ms);
/* The envelope's payload as a value; MPREG_OK or the decoder's error. */
mpreg_err mp_harness_payload_value(const mp_envelope *e, mpreg_value *out);

/* HELLO as a client (with token when non-NULL); returns the kind of the
 * answer (MP_KIND_WELCOME, MP_KIND_ERROR) or MP_KIND_NONE when none came. */
mp_kind mp_harness_hello(int fd, const char *token);
/* Connects and says HELLO; the fd, or -1 when either failed. */
int mp_harness_client(uint16_t port);

#endif
