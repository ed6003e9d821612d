/* server.c - the libuv driver of the node.
 *
 * Everything here is plumbing: the node decides, the transport moves bytes,
 * and this file connects the two and keeps time. The one piece of policy is
 * the stop sequence:
 *
 *   RUNNING --signal/mp_server_stop--> [LEAVING --linger--> ] STOPPING
 *           --transport shut down--> DOWN
 *
 * LEAVING is only for a node with cluster members: it has broadcast LEFT and
 * the loop keeps running, node and all, for about one gossip round so that
 * the news goes out (members then drop it at once instead of waiting for the
 * suspicion timeout). In STOPPING the node has sent GOODBYE and asked for
 * every connection to be closed after a flush; the transport closes its
 * listeners and finishes those closes (bounded by its close timeout). Its
 * shutdown callback closes the timers and the signal handles, after which
 * the loop has nothing left and uv_run returns. */
#define _POSIX_C_SOURCE 200809L

#include "runtime/server.h"

#include "core/map.h"
#include "runtime/sysclock.h"
#include "runtime/transport.h"

#include <malloc.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* The timer never sleeps longer than this while the node has a wakeup
 * pending: wakeups are wall-clock times and the loop's timers are monotonic,
 * so a step of the wall clock would otherwise delay a wakeup by the step. */
#define MP_SERVER_MAX_SLEEP_MS 1000u
/* Longest log line; longer messages are cut with "...". */
#define MP_LOG_LINE_MAX 4096

typedef enum mp_server_state {
    MP_SERVER_RUNNING,
    MP_SERVER_LEAVING,
    MP_SERVER_STOPPING,
    MP_SERVER_DOWN,
} mp_server_state;

struct mp_server {
    uv_loop_t loop;
    uv_timer_t timer;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_timer_t leave_timer;
    uv_timer_t trim_timer;  /* gives freed memory back, a moment after a close */
    uint32_t trim_delay_ms; /* the trim timer's current delay (doubles) */
    int inited;  /* of timer, sigint, sigterm, leave_timer, trim_timer (in order), initialised */
    int handles; /* of those, not yet closed */
    mp_transport *transport;
    mp_node *node;
    char *node_id; /* for log lines, also those the node writes while it is created */
    mp_xoshiro rng;
    mp_log_level log_level;
    mp_server_state state;
    uint64_t armed;    /* wakeup the timer is set for; UINT64_MAX = none */
    uint32_t leave_ms; /* how long LEAVING lasts */
    /* Dials that failed and whose on_close is still to come: the node hears
     * of them as MPREG_E_UNREACHABLE, whatever the transport's reason. */
    mp_map failed_dials;
    /* The wall clock as read once per loop iteration (see mp_server_now). */
    uint64_t accept_errors;    /* accepts that failed (EMFILE, ...) */
    uint64_t accept_logged_at; /* uv_now() of the last warning about them; 0 = never */
    uint64_t accept_unsaid;    /* failures since that warning */
    uint64_t clock_mono;       /* uv_now() when clock_wall was read */
    uint64_t clock_wall;
};

/* ---- logging ---------------------------------------------------------------- */

bool mp_log_level_parse(const char *text, mp_log_level *out) {
    static const mp_log_level levels[] = {MP_LOG_ERROR, MP_LOG_WARN, MP_LOG_INFO, MP_LOG_DEBUG};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        if (text != NULL && strcmp(text, mp_log_level_name(levels[i])) == 0) {
            *out = levels[i];
            return true;
        }
    }
    return false;
}

/* "2026-11-24T00:00:00.123Z" into out (at least 25 bytes). */
static void mp_log_timestamp(char *out, size_t size) {
    uint64_t ms = mp_sysclock_wall_ms();
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(out, size, "-");
        return;
    }
    size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, size - n, ".%03uZ", (unsigned)(ms % 1000));
}

/* Appends text to line[*len..cap), escaping control characters, and cuts
 * with "..." when it does not fit. */
static void mp_log_append_escaped(char *line, size_t *len, size_t cap, const char *text) {
    static const char hex[] = "0123456789abcdef";
    size_t n = *len;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        bool control = *p < 0x20 || *p == 0x7f;
        size_t need = control ? 4 : 1;
        if (n + need + 4 > cap) { /* room for "..." and the newline */
            memcpy(line + n, "...", 3);
            n += 3;
            break;
        }
        if (control) {
            line[n++] = '\\';
            line[n++] = 'x';
            line[n++] = hex[*p >> 4];
            line[n++] = hex[*p & 0xf];
        } else {
            line[n++] = (char)*p;
        }
    }
    *len = n;
}

static void mp_log_emit(mp_log_level level, const char *node, const char *message) {
    char line[MP_LOG_LINE_MAX];
    char stamp[32];
    mp_log_timestamp(stamp, sizeof stamp);
    int head;
    if (node != NULL) {
        head = snprintf(line, sizeof line, "%s %s node=%s ", stamp, mp_log_level_name(level), node);
    } else {
        head = snprintf(line, sizeof line, "%s %s ", stamp, mp_log_level_name(level));
    }
    size_t len = head < 0 ? 0 : (size_t)head;
    if (len >= sizeof line / 2) { /* an absurd node id: keep the message */
        len = sizeof line / 2;
    }
    mp_log_append_escaped(line, &len, sizeof line, message);
    line[len++] = '\n';
    /* One write per line, so that lines from a crashing process or from
     * several processes sharing the file never interleave mid-line. */
    fwrite(line, 1, len, stderr);
}

static void mp_log_vwrite(mp_log_level level, const char *node, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void mp_log_vwrite(mp_log_level level, const char *node, const char *fmt, va_list ap) {
    char message[MP_LOG_LINE_MAX];
    vsnprintf(message, sizeof message, fmt, ap);
    mp_log_emit(level, node, message);
}

void mp_log_write(mp_log_level level, const char *node, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    mp_log_vwrite(level, node, fmt, ap);
    va_end(ap);
}

void mp_server_log(mp_server *s, mp_log_level level, const char *fmt, ...) {
    if (level > s->log_level) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    mp_log_vwrite(level, s->node_id, fmt, ap);
    va_end(ap);
}

/* ---- time ----------------------------------------------------------------- */

/* The node's now: the wall clock, read once per loop iteration rather than
 * once per frame. A read of many small frames (a publisher's burst) would
 * otherwise spend a tenth of its time asking the kernel the time; uv_now()
 * is libuv's cached loop time, which moves only between iterations, and
 * the timer callback re-reads so that a wakeup never sees a stale now. */
static uint64_t mp_server_now(mp_server *s) {
    uint64_t mono = uv_now(&s->loop);
    if (mono != s->clock_mono || s->clock_wall == 0) {
        s->clock_mono = mono;
        s->clock_wall = mp_sysclock_wall_ms();
    }
    return s->clock_wall;
}

static uint64_t mp_server_now_fresh(mp_server *s) {
    s->clock_mono = uv_now(&s->loop);
    s->clock_wall = mp_sysclock_wall_ms();
    return s->clock_wall;
}

static void mp_server_on_timer(uv_timer_t *h);

/* Points the timer at the node's next wakeup. Called after every input, so
 * it must be cheap when nothing changed: the timer is only touched when the
 * wakeup moved. */
static void mp_server_rearm(mp_server *s) {
    if (s->state == MP_SERVER_DOWN || s->node == NULL) {
        return;
    }
    uint64_t next = mp_node_next_wakeup(s->node);
    if (next == s->armed) {
        return;
    }
    s->armed = next;
    if (next == UINT64_MAX) {
        uv_timer_stop(&s->timer);
        return;
    }
    uint64_t now = mp_server_now(s);
    uint64_t delay = next > now ? next - now : 0;
    if (delay > MP_SERVER_MAX_SLEEP_MS) {
        delay = MP_SERVER_MAX_SLEEP_MS;
    }
    uv_timer_start(&s->timer, mp_server_on_timer, delay, 0);
}

static void mp_server_on_timer(uv_timer_t *h) {
    mp_server *s = h->data;
    s->armed = UINT64_MAX; /* the one-shot timer is no longer set */
    mp_node_tick(s->node, mp_server_now_fresh(s));
    mp_server_rearm(s);
}

/* ---- transport -> node ---------------------------------------------------- */

/* The node logs what happens to connections; the driver only forwards. */

static void mp_server_on_accept(void *ud, uint64_t conn, const char *peer) {
    mp_server *s = ud;
    if (s->node == NULL) { /* only while a server that never started winds down */
        (void)mp_transport_close(s->transport, conn, false, MPREG_E_CLOSED);
        return;
    }
    mp_node_on_open(s->node, conn, peer, mp_server_now(s));
    mp_server_rearm(s);
}

/* The node already knows a dialed connection (it asked for it), so a
 * successful connect needs no word; a failure is remembered so that its
 * on_close says MPREG_E_UNREACHABLE. A dial closed locally first (the node
 * gave up on it, or the server is stopping) keeps the reason it was given. */
static void mp_server_on_connected(void *ud, uint64_t conn, mpreg_err status) {
    mp_server *s = ud;
    if (status == MPREG_OK || status == MPREG_E_CLOSED) {
        return;
    }
    mp_server_log(s, MP_LOG_DEBUG, "conn %llu: %s", (unsigned long long)conn,
                  mp_transport_last_error(s->transport));
    /* Out of memory here only costs the reason its precision. */
    (void)mp_map_put(&s->failed_dials, &conn, sizeof conn, s, NULL);
}

static void mp_server_on_frame(void *ud, uint64_t conn, const uint8_t *frame, size_t len) {
    mp_server *s = ud;
    mp_node_on_frame(s->node, conn, frame, len, mp_server_now(s));
    mp_server_rearm(s);
}

static void mp_server_on_protocol_error(void *ud, uint64_t conn, mpreg_err err) {
    mp_server *s = ud;
    mp_node_on_protocol_error(s->node, conn, err, mp_server_now(s));
    mp_server_rearm(s);
}

/* Out of file descriptors (or another accept failure): libuv has closed
 * what was waiting, so clients see a refused connection, not a hang. Said
 * at warn, at most once a minute, with the count of those not said. */
#define MP_ACCEPT_LOG_EVERY_MS 60000u

static void mp_server_on_accept_error(void *ud, const char *why) {
    mp_server *s = ud;
    s->accept_errors++;
    uint64_t now = uv_now(&s->loop);
    if (s->accept_logged_at != 0 && now - s->accept_logged_at < MP_ACCEPT_LOG_EVERY_MS) {
        s->accept_unsaid++;
        return;
    }
    mp_server_log(s, MP_LOG_WARN,
                  "cannot accept connections: %s; waiting clients are closed (%llu more since "
                  "the last report; raise the file limit, ulimit -n, or lower --limit conns)",
                  why, (unsigned long long)s->accept_unsaid);
    s->accept_logged_at = now == 0 ? 1 : now;
    s->accept_unsaid = 0;
}

static void mp_server_on_writable(void *ud, uint64_t conn) {
    mp_server *s = ud;
    mp_node_on_writable(s->node, conn, mp_server_now(s));
    mp_server_rearm(s);
}

/* Memory the node freed (a client's subscriptions, its requests' results,
 * its buffers) goes back to the system: glibc keeps freed chunks in the
 * middle of its heap for reuse, so without this a flood that ended would
 * keep its peak resident for ever. Checked a second after a close (closes
 * come in bursts), then again after 2, 4, 8 ... seconds (up to
 * MP_TRIM_MAX_DELAY_MS), since some of what a client held goes later
 * (catalog tombstones, after their TTL); and only when the allocator holds
 * a good deal free: malloc_trim walks the free lists, which is not free on
 * a big heap. */
#define MP_TRIM_FIRST_DELAY_MS 1000u
#define MP_TRIM_MAX_DELAY_MS (512u * 1000u)
#define MP_TRIM_MIN_FREE (16u * 1024u * 1024u)

/* Resident pages of this process, KiB (0 when unknown). */
static uint64_t mp_rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    return (uint64_t)resident * ((uint64_t)sysconf(_SC_PAGESIZE) / 1024u);
}

static void mp_server_on_trim(uv_timer_t *h) {
    mp_server *s = h->data;
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks < MP_TRIM_MIN_FREE) {
        return; /* nothing worth it: the next close starts again */
    }
    uint64_t before = mp_rss_kib();
    uint64_t t0 = uv_hrtime();
    malloc_trim(0);
    uint64_t trim_us = (uv_hrtime() - t0) / 1000u;
    mp_server_log(s, MP_LOG_DEBUG,
                  "memory: %zu KiB in use; resident %llu KiB before giving free memory back, "
                  "%llu KiB after (%llu us)",
                  mi.uordblks / 1024, (unsigned long long)before, (unsigned long long)mp_rss_kib(),
                  (unsigned long long)trim_us);
    if (s->trim_delay_ms < MP_TRIM_MAX_DELAY_MS && s->state == MP_SERVER_RUNNING) {
        s->trim_delay_ms *= 2;
        uv_timer_start(&s->trim_timer, mp_server_on_trim, s->trim_delay_ms, 0);
    }
}

static void mp_server_schedule_trim(mp_server *s) {
    /* A check already due within the first delay stays as it is, so that
     * a steady stream of closes cannot put it off for ever. */
    bool soon =
        uv_is_active((uv_handle_t *)&s->trim_timer) && s->trim_delay_ms == MP_TRIM_FIRST_DELAY_MS;
    if (s->state == MP_SERVER_RUNNING && !soon) {
        s->trim_delay_ms = MP_TRIM_FIRST_DELAY_MS;
        uv_timer_start(&s->trim_timer, mp_server_on_trim, MP_TRIM_FIRST_DELAY_MS, 0);
    }
}

static void mp_server_on_close(void *ud, uint64_t conn, mpreg_err reason) {
    mp_server *s = ud;
    mp_server_schedule_trim(s);
    if (mp_map_remove(&s->failed_dials, &conn, sizeof conn) != NULL) {
        reason = MPREG_E_UNREACHABLE;
    }
    if (s->node == NULL) {
        return;
    }
    uint64_t t0 = uv_hrtime();
    mp_node_on_close(s->node, conn, reason, mp_server_now(s));
    uint64_t took_us = (uv_hrtime() - t0) / 1000u;
    if (took_us >= 20000u) {
        mp_server_log(s, MP_LOG_DEBUG, "conn %llu: its close took %llu ms",
                      (unsigned long long)conn, (unsigned long long)(took_us / 1000u));
    }
    mp_server_rearm(s);
}

/* ---- node -> transport ---------------------------------------------------- */

static mp_buf *mp_io_output(void *ud, uint64_t conn) {
    mp_server *s = ud;
    return mp_transport_output(s->transport, conn);
}

static mp_buf *mp_io_output_final(void *ud, uint64_t conn) {
    mp_server *s = ud;
    return mp_transport_output_final(s->transport, conn);
}

static void mp_io_output_commit(void *ud, uint64_t conn, uint32_t frames) {
    mp_server *s = ud;
    mp_transport_output_commit(s->transport, conn, frames);
}

static bool mp_io_over_high_water(void *ud, uint64_t conn) {
    mp_server *s = ud;
    return mp_transport_over_high_water(s->transport, conn);
}

static bool mp_io_over_soft_water(void *ud, uint64_t conn) {
    mp_server *s = ud;
    return mp_transport_over_soft_water(s->transport, conn);
}

static size_t mp_io_output_pending(void *ud, uint64_t conn) {
    mp_server *s = ud;
    return mp_transport_output_pending(s->transport, conn);
}

static void mp_io_set_reading(void *ud, uint64_t conn, bool reading) {
    mp_server *s = ud;
    /* MPREG_E_CLOSED (the connection is already gone) needs no answer: its
     * on_close is on its way to the node. */
    if (reading) {
        (void)mp_transport_resume_reading(s->transport, conn);
    } else {
        (void)mp_transport_pause_reading(s->transport, conn);
    }
}

static void mp_io_close(void *ud, uint64_t conn, bool flush_first, mpreg_err reason) {
    mp_server *s = ud;
    (void)mp_transport_close(s->transport, conn, flush_first, reason);
}

static void mp_io_count_drop(void *ud, uint64_t conn, uint32_t frames) {
    mp_server *s = ud;
    mp_transport_count_drop(s->transport, conn, frames);
}

static void mp_io_log(void *ud, mp_log_level level, const char *message) {
    mp_server *s = ud;
    mp_server_log(s, level, "%s", message);
}

static mpreg_err mp_status_int(mpreg_err err, mpreg_value *map, const char *key, uint64_t v) {
    return err ? err : mpreg_map_set(map, key, mpreg_int(v > INT64_MAX ? INT64_MAX : (int64_t)v));
}

/* "transport": the driver's limits and what they did, for status. */
static mpreg_err mp_io_status(void *ud, mpreg_value *status) {
    mp_server *s = ud;
    mp_transport_stats st;
    mp_transport_config cfg;
    mp_transport_get_stats(s->transport, &st);
    mp_transport_get_config(s->transport, &cfg);
    mpreg_value t = mpreg_map();
    mpreg_err err = mp_status_int(MPREG_OK, &t, "output_high_water", cfg.high_water);
    err = mp_status_int(err, &t, "output_hard_limit", cfg.hard_limit);
    err = mp_status_int(err, &t, "read_timeout_ms", cfg.read_timeout_ms);
    err = mp_status_int(err, &t, "partial_bytes_limit", cfg.max_partial_bytes);
    err = mp_status_int(err, &t, "partial_bytes", st.partial_bytes);
    err = mp_status_int(err, &t, "pending_output_bytes", st.totals.pending_bytes);
    err = mp_status_int(err, &t, "read_timeouts", st.read_timeouts);
    err = mp_status_int(err, &t, "partial_refused", st.partial_refused);
    err = mp_status_int(err, &t, "accept_errors", st.accept_errors);
    err = mp_status_int(err, &t, "frames_dropped", st.totals.frames_dropped);
    if (err) {
        mpreg_value_free(&t);
        return err;
    }
    return mpreg_map_set(status, "transport", t);
}

/* 0 when the dial cannot even start: a bad address, a stopping transport,
 * out of memory. The reason goes to the debug log; the node decides what a
 * failed dial means. */
static uint64_t mp_io_dial(void *ud, const char *addr) {
    mp_server *s = ud;
    uint64_t conn = 0;
    mpreg_err err = mp_transport_dial_addr(s->transport, addr, &conn);
    if (err != MPREG_OK) {
        mp_server_log(s, MP_LOG_DEBUG, "dial %s: %s (%s)", addr != NULL ? addr : "(null)",
                      mpreg_strerror(err), mp_transport_last_error(s->transport));
        return 0;
    }
    return conn;
}

/* ---- stopping ------------------------------------------------------------- */

static void mp_server_on_handle_closed(uv_handle_t *h) {
    mp_server *s = h->data;
    s->handles--;
}

/* Closes the timer and the signal handles, those that were initialised. */
static void mp_server_close_handles(mp_server *s) {
    uv_handle_t *hs[] = {(uv_handle_t *)&s->timer, (uv_handle_t *)&s->sigint,
                         (uv_handle_t *)&s->sigterm, (uv_handle_t *)&s->leave_timer,
                         (uv_handle_t *)&s->trim_timer};
    for (int i = 0; i < s->inited; i++) {
        if (!uv_is_closing(hs[i])) {
            hs[i]->data = s;
            uv_close(hs[i], mp_server_on_handle_closed);
        }
    }
}

/* Everything the transport had is closed; what is left of the loop is ours. */
static void mp_server_on_shutdown(mp_transport *t, void *ud) {
    (void)t;
    mp_server *s = ud;
    s->state = MP_SERVER_DOWN;
    mp_transport_stats st;
    mp_transport_get_stats(s->transport, &st);
    mp_server_log(
        s, MP_LOG_INFO, "stopped: connections=%llu dialed=%llu frames_in=%llu frames_out=%llu",
        (unsigned long long)st.accepted, (unsigned long long)st.dialed,
        (unsigned long long)st.totals.frames_in, (unsigned long long)st.totals.frames_out);
    mp_server_close_handles(s);
}

/* The stop proper: GOODBYE, flushing closes, transport shutdown. */
static void mp_server_shut_down(mp_server *s) {
    s->state = MP_SERVER_STOPPING;
    uv_timer_stop(&s->leave_timer);
    if (s->node != NULL) {
        mp_node_stop(s->node, mp_server_now(s));
        mp_server_rearm(s);
    }
    if (mp_transport_shutdown(s->transport, mp_server_on_shutdown) != MPREG_OK) {
        /* Only a second shutdown fails, and the state rules that out; close
         * our handles anyway so that the loop can end. */
        mp_server_on_shutdown(s->transport, s);
    }
}

static void mp_server_on_left(uv_timer_t *h) {
    mp_server *s = h->data;
    if (s->state == MP_SERVER_LEAVING) {
        mp_server_shut_down(s);
    }
}

typedef struct mp_member_tally {
    const char *self;
    size_t reachable;
} mp_member_tally;

static bool mp_server_tally_member(void *ud, const mp_member *m) {
    mp_member_tally *t = ud;
    bool other = strcmp(m->id, t->self) != 0;
    t->reachable += other && (m->state == MP_MEMBER_ALIVE || m->state == MP_MEMBER_SUSPECT);
    return true;
}

/* Members worth telling that we leave: alive ones, and suspect ones (they
 * may well be alive). Dead and left ones are listed for a while, but
 * lingering for them would only delay the stop. */
static size_t mp_server_members(mp_server *s) {
    mp_swim *swim = s->node != NULL ? mp_node_swim(s->node) : NULL;
    if (swim == NULL || mp_swim_member_count(swim, false) == 0) {
        return 0;
    }
    mp_member_tally t = {.self = mp_node_id(s->node)};
    mp_swim_each(swim, mp_server_tally_member, &t);
    return t.reachable;
}

void mp_server_stop(mp_server *s) {
    if (s->state != MP_SERVER_RUNNING) {
        return;
    }
    size_t members = mp_server_members(s);
    if (members == 0 || s->leave_ms == 0) {
        mp_server_shut_down(s);
        return;
    }
    s->state = MP_SERVER_LEAVING;
    mp_server_log(s, MP_LOG_INFO, "leaving the cluster (%zu members); stopping in %u ms", members,
                  (unsigned)s->leave_ms);
    mp_node_leave(s->node, mp_server_now(s));
    mp_server_rearm(s);
    if (uv_timer_start(&s->leave_timer, mp_server_on_left, s->leave_ms, 0) != 0) {
        mp_server_shut_down(s);
    }
}

static void mp_server_on_signal(uv_signal_t *h, int signum) {
    mp_server *s = h->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (s->state != MP_SERVER_RUNNING) {
        mp_server_log(s, MP_LOG_WARN, "%s again: exiting now", name);
        /* Die by the signal itself, so that whoever waits on us sees why. */
        signal(signum, SIG_DFL);
        raise(signum);
        _exit(128 + signum);
    }
    mp_server_log(s, MP_LOG_INFO, "%s: stopping (send it again to exit at once)", name);
    mp_server_stop(s);
}

/* ---- life ----------------------------------------------------------------- */

/* 256 bits from the OS's secure source: ids drawn from this generator must
 * not collide with another node's, and a 64-bit seed would make that merely
 * unlikely. xoshiro's state may be anything but all zero. */
static void mp_server_seed_rng(mp_server *s) {
    mp_sysrand_seed(&s->rng);
}

static int mp_server_init_handles(mp_server *s) {
    int rc = uv_timer_init(&s->loop, &s->timer);
    if (rc != 0) {
        return rc;
    }
    s->timer.data = s;
    s->inited++;
    s->handles++;
    uv_signal_t *sigs[] = {&s->sigint, &s->sigterm};
    int signums[] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        rc = uv_signal_init(&s->loop, sigs[i]);
        if (rc != 0) {
            return rc;
        }
        sigs[i]->data = s;
        s->inited++;
        s->handles++;
        /* Started now rather than in mp_server_run: a supervisor may signal
         * us as soon as we announce the port, before the loop runs. */
        rc = uv_signal_start(sigs[i], mp_server_on_signal, signums[i]);
        if (rc != 0) {
            return rc;
        }
    }
    rc = uv_timer_init(&s->loop, &s->leave_timer);
    if (rc != 0) {
        return rc;
    }
    s->leave_timer.data = s;
    s->inited++;
    s->handles++;
    rc = uv_timer_init(&s->loop, &s->trim_timer);
    if (rc != 0) {
        return rc;
    }
    s->trim_timer.data = s;
    s->inited++;
    s->handles++;
    uv_unref((uv_handle_t *)&s->trim_timer); /* never what keeps the loop alive */
    return 0;
}

static mpreg_err mp_server_init_transport(mp_server *s, const mp_server_config *cfg) {
    mp_transport_config tcfg;
    mp_transport_config_default(&tcfg);
    tcfg.max_frame = cfg->max_frame;
    if (cfg->connect_timeout_ms != 0) {
        tcfg.connect_timeout_ms = cfg->connect_timeout_ms;
    }
    if (cfg->output_high_water != 0) {
        tcfg.high_water = cfg->output_high_water;
        tcfg.low_water = 0; /* half of it */
    }
    if (cfg->output_hard_limit != 0) {
        tcfg.hard_limit = cfg->output_hard_limit;
    }
    if (cfg->read_timeout_ms != 0) {
        tcfg.read_timeout_ms = cfg->read_timeout_ms;
    }
    if (cfg->max_partial_bytes != 0) {
        tcfg.max_partial_bytes = cfg->max_partial_bytes;
    }
    mp_transport_callbacks cb = {
        .on_accept = mp_server_on_accept,
        .on_connected = mp_server_on_connected,
        .on_frame = mp_server_on_frame,
        .on_protocol_error = mp_server_on_protocol_error,
        .on_close = mp_server_on_close,
        .on_writable = mp_server_on_writable,
        .on_accept_error = mp_server_on_accept_error,
    };
    return mp_transport_new(&s->loop, &tcfg, &cb, s, &s->transport);
}

/* About one gossip round: LEFT is queued on the next gossip, and a second
 * interval covers a retransmission. Bounded, so that a slow gossip setting
 * cannot hold up a stop. */
static uint32_t mp_server_leave_ms(const mp_swim_config *swim) {
    static const mp_swim_config zero;
    mp_swim_config c = *swim;
    if (memcmp(&c, &zero, sizeof c) == 0) {
        mp_swim_config_default(&c);
    }
    uint64_t ms = 2u * (uint64_t)c.gossip_interval_ms;
    return ms > MP_SERVER_LEAVE_MAX_MS ? MP_SERVER_LEAVE_MAX_MS : (uint32_t)ms;
}

mpreg_err mp_server_start(mp_server *s, const mp_node_config *cfg) {
    if (s->node != NULL || s->state != MP_SERVER_RUNNING) {
        return MPREG_E_CLOSED;
    }
    mp_node_io io = {
        .ud = s,
        .output = mp_io_output,
        .output_final = mp_io_output_final,
        .output_commit = mp_io_output_commit,
        .over_high_water = mp_io_over_high_water,
        .set_reading = mp_io_set_reading,
        .over_soft_water = mp_io_over_soft_water,
        .output_pending = mp_io_output_pending,
        .close = mp_io_close,
        .count_drop = mp_io_count_drop,
        .log = mp_io_log,
        .dial = mp_io_dial,
        .status = mp_io_status,
    };
    /* One max_frame for both: the node tells clients the limit in WELCOME,
     * the transport enforces it. */
    mp_node_config c = *cfg;
    c.max_frame = mp_transport_max_frame(s->transport);
    s->node = mp_node_new(&c, &io, &s->rng.rng, mp_server_now(s));
    if (s->node == NULL) {
        mp_log_write(MP_LOG_ERROR, s->node_id, "the node refused its configuration");
        return MPREG_E_INVALID;
    }
    s->leave_ms = mp_server_leave_ms(&cfg->swim);
    return MPREG_OK;
}

mpreg_err mp_server_new(const mp_server_config *cfg, mp_server **out) {
    *out = NULL;
    mp_server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "out of memory");
        return MPREG_E_NOMEM;
    }
    if (sodium_init() < 0) { /* idempotent: whoever came first did the work */
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "libsodium failed to initialise");
        free(s);
        return MPREG_E_INTERNAL;
    }
    s->log_level = cfg->log_level;
    s->armed = UINT64_MAX;
    mp_map_init(&s->failed_dials);
    s->node_id = strdup(cfg->node_id != NULL ? cfg->node_id : "");
    if (s->node_id == NULL) {
        free(s);
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "out of memory");
        return MPREG_E_NOMEM;
    }
    mp_server_seed_rng(s);
    int rc = uv_loop_init(&s->loop);
    if (rc != 0) {
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "event loop: %s", uv_strerror(rc));
        free(s->node_id);
        free(s);
        return MPREG_E_IO;
    }
    mpreg_err err = MPREG_OK;
    rc = mp_server_init_handles(s);
    if (rc != 0) {
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "event loop: %s", uv_strerror(rc));
        err = MPREG_E_IO;
    } else if ((err = mp_server_init_transport(s, cfg)) != MPREG_OK) {
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "transport: %s", mpreg_strerror(err));
    }
    if (err != MPREG_OK) {
        mp_server_free(s);
        return err;
    }
    *out = s;
    return MPREG_OK;
}

/* Closes whatever is still open and runs the loop until it is. A server
 * that never got as far as a transport closes just its handles. */
static void mp_server_wind_down(mp_server *s) {
    bool up = s->state == MP_SERVER_RUNNING || s->state == MP_SERVER_LEAVING;
    if (s->transport != NULL && up) {
        mp_server_shut_down(s);                  /* no leaving here: nobody would wait for it */
    } else if (s->state != MP_SERVER_STOPPING) { /* STOPPING: the loop below finishes it */
        if (s->transport != NULL) {
            (void)mp_transport_shutdown(s->transport, NULL);
        }
        s->state = MP_SERVER_DOWN;
        mp_server_close_handles(s);
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

void mp_server_free(mp_server *s) {
    if (s == NULL) {
        return;
    }
    if (s->state != MP_SERVER_DOWN || s->handles > 0) {
        mp_server_wind_down(s);
    }
    mp_node_free(s->node);
    mp_map_free(&s->failed_dials, NULL);
    if (mp_transport_free(s->transport) != MPREG_OK) {
        mp_log_write(MP_LOG_ERROR, NULL, "transport still busy at exit (a bug)");
    }
    if (uv_loop_close(&s->loop) != 0) {
        mp_log_write(MP_LOG_ERROR, NULL, "event loop still busy at exit (a bug)");
    }
    free(s->node_id);
    free(s);
}

mpreg_registry *mp_server_registry(mp_server *s) {
    return s->node != NULL ? mp_node_registry(s->node) : NULL;
}

mp_node *mp_server_node(mp_server *s) {
    return s->node;
}

mpreg_err mp_server_listen(mp_server *s, const char *host, uint16_t port, uint16_t *bound_port) {
    return mp_transport_listen(s->transport, host, port, bound_port);
}

const char *mp_server_last_error(const mp_server *s) {
    return mp_transport_last_error(s->transport);
}

mpreg_err mp_server_run(mp_server *s) {
    if (s->node == NULL) {
        mp_log_write(MP_LOG_ERROR, s->node_id, "mp_server_run before mp_server_start (a bug)");
        return MPREG_E_INVALID;
    }
    mp_server_rearm(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return s->state == MP_SERVER_DOWN ? MPREG_OK : MPREG_E_INTERNAL;
}
