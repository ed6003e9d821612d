/* server.c - the libuv driver of the node.
 *
 * Everything here is plumbing: the node decides, the transport moves bytes,
 * and this file connects the two and keeps time. The one piece of policy is
 * the stop sequence:
 *
 *   RUNNING --signal/mp_server_stop--> STOPPING --transport shut down--> DOWN
 *
 * In STOPPING the node has sent GOODBYE and asked for every connection to be
 * closed after a flush; the transport closes its listeners and finishes those
 * closes (bounded by its close timeout). Its shutdown callback closes the
 * timer and the signal handles, after which the loop has nothing left and
 * uv_run returns. */
#define _POSIX_C_SOURCE 200809L

#include "runtime/server.h"

#include "runtime/sysclock.h"
#include "runtime/transport.h"

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
    MP_SERVER_STOPPING,
    MP_SERVER_DOWN,
} mp_server_state;

struct mp_server {
    uv_loop_t loop;
    uv_timer_t timer;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    int inited;  /* of timer, sigint, sigterm (in that order), initialised */
    int handles; /* of those, not yet closed */
    mp_transport *transport;
    mp_node *node;
    char *node_id; /* for log lines, also those the node writes while it is created */
    mp_xoshiro rng;
    mp_log_level log_level;
    mp_server_state state;
    uint64_t armed; /* wakeup the timer is set for; UINT64_MAX = none */
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

static uint64_t mp_server_now(void) {
    return mp_sysclock_wall_ms();
}

static void mp_server_on_timer(uv_timer_t *h);

/* Points the timer at the node's next wakeup. Called after every input, so
 * it must be cheap when nothing changed: the timer is only touched when the
 * wakeup moved. */
static void mp_server_rearm(mp_server *s) {
    if (s->state == MP_SERVER_DOWN) {
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
    uint64_t now = mp_server_now();
    uint64_t delay = next > now ? next - now : 0;
    if (delay > MP_SERVER_MAX_SLEEP_MS) {
        delay = MP_SERVER_MAX_SLEEP_MS;
    }
    uv_timer_start(&s->timer, mp_server_on_timer, delay, 0);
}

static void mp_server_on_timer(uv_timer_t *h) {
    mp_server *s = h->data;
    s->armed = UINT64_MAX; /* the one-shot timer is no longer set */
    mp_node_tick(s->node, mp_server_now());
    mp_server_rearm(s);
}

/* ---- transport -> node ---------------------------------------------------- */

/* The node logs what happens to connections; the driver only forwards. */

static void mp_server_on_accept(void *ud, uint64_t conn, const char *peer) {
    mp_server *s = ud;
    mp_node_on_open(s->node, conn, peer, mp_server_now());
    mp_server_rearm(s);
}

static void mp_server_on_frame(void *ud, uint64_t conn, const uint8_t *frame, size_t len) {
    mp_server *s = ud;
    mp_node_on_frame(s->node, conn, frame, len, mp_server_now());
    mp_server_rearm(s);
}

static void mp_server_on_protocol_error(void *ud, uint64_t conn, mpreg_err err) {
    mp_server *s = ud;
    mp_node_on_protocol_error(s->node, conn, err, mp_server_now());
    mp_server_rearm(s);
}

static void mp_server_on_writable(void *ud, uint64_t conn) {
    mp_server *s = ud;
    mp_node_on_writable(s->node, conn, mp_server_now());
    mp_server_rearm(s);
}

static void mp_server_on_close(void *ud, uint64_t conn, mpreg_err reason) {
    mp_server *s = ud;
    mp_node_on_close(s->node, conn, reason, mp_server_now());
    mp_server_rearm(s);
}

/* ---- node -> transport ---------------------------------------------------- */

static mp_buf *mp_io_output(void *ud, uint64_t conn) {
    mp_server *s = ud;
    return mp_transport_output(s->transport, conn);
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

/* ---- stopping ------------------------------------------------------------- */

static void mp_server_on_handle_closed(uv_handle_t *h) {
    mp_server *s = h->data;
    s->handles--;
}

/* Closes the timer and the signal handles, those that were initialised. */
static void mp_server_close_handles(mp_server *s) {
    uv_handle_t *hs[] = {(uv_handle_t *)&s->timer, (uv_handle_t *)&s->sigint,
                         (uv_handle_t *)&s->sigterm};
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
    mp_server_log(s, MP_LOG_INFO, "stopped: connections=%llu frames_in=%llu frames_out=%llu",
                  (unsigned long long)st.accepted, (unsigned long long)st.totals.frames_in,
                  (unsigned long long)st.totals.frames_out);
    mp_server_close_handles(s);
}

void mp_server_stop(mp_server *s) {
    if (s->state != MP_SERVER_RUNNING) {
        return;
    }
    s->state = MP_SERVER_STOPPING;
    mp_node_stop(s->node, mp_server_now());
    mp_server_rearm(s);
    if (mp_transport_shutdown(s->transport, mp_server_on_shutdown) != MPREG_OK) {
        /* Only a second shutdown fails, and the state above rules that out;
         * close our handles anyway so that the loop can end. */
        mp_server_on_shutdown(s->transport, s);
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
    mp_xoshiro_seed(&s->rng, 0);
    uint64_t state[4];
    randombytes_buf(state, sizeof state);
    if ((state[0] | state[1] | state[2] | state[3]) != 0) {
        memcpy(s->rng.s, state, sizeof state);
    }
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
    return 0;
}

static mpreg_err mp_server_init_transport(mp_server *s, const mp_node_config *cfg) {
    mp_transport_config tcfg;
    mp_transport_config_default(&tcfg);
    tcfg.max_frame = cfg->max_frame;
    mp_transport_callbacks cb = {
        .on_accept = mp_server_on_accept,
        .on_frame = mp_server_on_frame,
        .on_protocol_error = mp_server_on_protocol_error,
        .on_close = mp_server_on_close,
        .on_writable = mp_server_on_writable,
    };
    return mp_transport_new(&s->loop, &tcfg, &cb, s, &s->transport);
}

static mpreg_err mp_server_init_node(mp_server *s, const mp_node_config *cfg) {
    mp_node_io io = {
        .ud = s,
        .output = mp_io_output,
        .output_commit = mp_io_output_commit,
        .over_high_water = mp_io_over_high_water,
        .set_reading = mp_io_set_reading,
        .over_soft_water = mp_io_over_soft_water,
        .close = mp_io_close,
        .count_drop = mp_io_count_drop,
        .log = mp_io_log,
    };
    s->node = mp_node_new(cfg, &io, &s->rng.rng, mp_server_now());
    return s->node != NULL ? MPREG_OK : MPREG_E_INVALID;
}

mpreg_err mp_server_new(const mp_node_config *cfg, mp_server **out) {
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
    } else if ((err = mp_server_init_node(s, cfg)) != MPREG_OK) {
        mp_log_write(MP_LOG_ERROR, cfg->node_id, "the node refused its configuration");
    }
    if (err != MPREG_OK) {
        mp_server_free(s);
        return err;
    }
    *out = s;
    return MPREG_OK;
}

/* Closes whatever is still open and runs the loop until it is. A server
 * that never got as far as a transport or a node closes just its handles. */
static void mp_server_wind_down(mp_server *s) {
    if (s->node != NULL && s->transport != NULL) {
        mp_server_stop(s);
    } else {
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
    return mp_node_registry(s->node);
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
    mp_server_rearm(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return s->state == MP_SERVER_DOWN ? MPREG_OK : MPREG_E_INTERNAL;
}
