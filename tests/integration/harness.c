/* harness.c - real mpregd processes and raw sockets for integration tests. */
#define _GNU_SOURCE

#include "harness.h"

#include "core/frame.h"
#include "core/rng.h"
#include "mpreg/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MP_HARNESS_MPREGD
#define MP_HARNESS_MPREGD "mpregd"
#endif
#ifndef MP_HARNESS_HELLO_PLUGIN
#define MP_HARNESS_HELLO_PLUGIN "hello_plugin.so"
#endif

#define MP_HARNESS_POLL_MS 5
#define MP_HARNESS_MAX_ARGS 64

const char *mp_harness_mpregd_path(void) {
    const char *env = getenv("MPREGD");
    return env != NULL && env[0] != '\0' ? env : MP_HARNESS_MPREGD;
}

const char *mp_harness_plugin_path(void) {
    const char *env = getenv("MPREG_HELLO_PLUGIN");
    return env != NULL && env[0] != '\0' ? env : MP_HARNESS_HELLO_PLUGIN;
}

static uint64_t mp_harness_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void mp_harness_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- files -------------------------------------------------------------------- */

char *mp_harness_tmpdir_new(void) {
    const char *base = getenv("TMPDIR");
    char *path;
    if (asprintf(&path, "%s/mpreg-it-XXXXXX", base != NULL && base[0] ? base : "/tmp") < 0) {
        return NULL;
    }
    if (mkdtemp(path) == NULL) {
        free(path);
        return NULL;
    }
    return path;
}

static int mp_harness_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

void mp_harness_tmpdir_remove(char *dir) {
    if (dir != NULL) {
        nftw(dir, mp_harness_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(dir);
    }
}

char *mp_harness_read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        len += fread(buf + len, 1, cap - len - 1, f);
        if (len < cap - 1) {
            break;
        }
        char *bigger = realloc(buf, cap * 2);
        if (bigger == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    fclose(f);
    if (buf != NULL) {
        buf[len] = '\0';
    }
    return buf;
}

int mp_harness_write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return -1;
    }
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

bool mp_harness_file_contains(const char *path, const char *needle) {
    char *text = mp_harness_read_file(path);
    bool found = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return found;
}

int mp_harness_file_count_lines(const char *path, const char *const *needles) {
    char *text = mp_harness_read_file(path);
    int count = 0;
    for (char *line = text, *next; line != NULL && *line != '\0'; line = next) {
        next = strchr(line, '\n');
        if (next != NULL) {
            *next++ = '\0';
        }
        bool all = true;
        for (size_t i = 0; needles[i] != NULL && all; i++) {
            all = strstr(line, needles[i]) != NULL;
        }
        count += all;
    }
    free(text);
    return count;
}

/* ---- processes ------------------------------------------------------------------ */

static void mp_harness_child_exec(const char *out_path, const char *err_path, char *const *argv,
                                  const char *const *env, pid_t parent) {
    /* Die with the test: a failed assertion must not leave a daemon behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(127);
    }
    int in = open("/dev/null", O_RDONLY);
    int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) {
        _exit(127);
    }
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        putenv((char *)env[i]);
    }
    /* The test process may ignore SIGPIPE or block signals; the daemon
     * starts from the defaults, as it would from a shell. */
    signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(argv[0], argv);
    dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

int mp_harness_daemon_spawn(mp_harness_daemon *d, const char *dir, const char *tag,
                            const char *const *args, const char *const *env) {
    char *argv[MP_HARNESS_MAX_ARGS + 2];
    size_t n = 0;
    argv[n++] = (char *)mp_harness_mpregd_path();
    for (size_t i = 0; args != NULL && args[i] != NULL && n < MP_HARNESS_MAX_ARGS; i++) {
        argv[n++] = (char *)args[i];
    }
    argv[n] = NULL;
    snprintf(d->out_path, sizeof d->out_path, "%s/%s.stdout", dir, tag);
    snprintf(d->err_path, sizeof d->err_path, "%s/%s.stderr", dir, tag);
    d->status = -1;
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        mp_harness_child_exec(d->out_path, d->err_path, argv, env, parent);
    }
    d->pid = pid;
    return 0;
}

int mp_harness_daemon_wait(mp_harness_daemon *d, int timeout_ms) {
    if (d->pid == 0) {
        return d->status;
    }
    uint64_t deadline = mp_harness_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(d->pid, &status, WNOHANG);
        if (r == d->pid) {
            d->pid = 0;
            d->status = status;
            return status;
        }
        if (r < 0 && errno != EINTR) {
            return -1;
        }
        if (mp_harness_now_ms() >= deadline) {
            return -1;
        }
        mp_harness_sleep_ms(MP_HARNESS_POLL_MS);
    }
}

void mp_harness_daemon_kill(mp_harness_daemon *d) {
    if (d->pid != 0) {
        kill(d->pid, SIGKILL);
        int status;
        while (waitpid(d->pid, &status, 0) < 0 && errno == EINTR) {
        }
        d->pid = 0;
        d->status = status;
    }
}

int mp_harness_daemon_stop(mp_harness_daemon *d, int timeout_ms) {
    if (d->pid == 0) {
        return d->status;
    }
    kill(d->pid, SIGTERM);
    int status = mp_harness_daemon_wait(d, timeout_ms);
    if (status == -1) {
        mp_harness_daemon_kill(d);
    }
    return status;
}

/* The port in the port file once it is complete (it is renamed into place,
 * but be strict anyway: digits and a newline). */
static bool mp_harness_read_port(const char *path, uint16_t *port) {
    char *text = mp_harness_read_file(path);
    if (text == NULL) {
        return false;
    }
    char *end;
    unsigned long v = strtoul(text, &end, 10);
    bool ok = end != text && *end == '\n' && v > 0 && v <= 65535;
    free(text);
    if (ok) {
        *port = (uint16_t)v;
    }
    return ok;
}

int mp_harness_daemon_wait_port(mp_harness_daemon *d, const char *port_file, int timeout_ms) {
    uint64_t deadline = mp_harness_now_ms() + (uint64_t)timeout_ms;
    while (!mp_harness_read_port(port_file, &d->port)) {
        if (mp_harness_daemon_wait(d, 0) != -1) {
            return -1; /* it exited without listening */
        }
        if (mp_harness_now_ms() >= deadline) {
            mp_harness_daemon_kill(d);
            return -1;
        }
        mp_harness_sleep_ms(MP_HARNESS_POLL_MS);
    }
    return 0;
}

int mp_harness_daemon_start(mp_harness_daemon *d, const char *dir, const char *name,
                            const char *const *extra) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    snprintf(d->data_dir, sizeof d->data_dir, "%s/%s", dir, name);
    snprintf(d->port_file, sizeof d->port_file, "%s/%s.port", dir, name);
    unlink(d->port_file);
    const char *args[MP_HARNESS_MAX_ARGS + 1] = {
        "--listen",   "127.0.0.1:0", "--port-file", d->port_file,
        "--data-dir", d->data_dir,   "--name",      name,
    };
    size_t n = 8;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < MP_HARNESS_MAX_ARGS; i++) {
        args[n++] = extra[i];
    }
    args[n] = NULL;
    if (mp_harness_daemon_spawn(d, dir, name, args, NULL) != 0) {
        return -1;
    }
    return mp_harness_daemon_wait_port(d, d->port_file, MP_HARNESS_START_TIMEOUT_MS);
}

int mp_harness_run(const char *dir, const char *const *args, int timeout_ms, char **out,
                   char **err) {
    static unsigned counter;
    char tag[32];
    snprintf(tag, sizeof tag, "run%u", counter++);
    mp_harness_daemon d;
    memset(&d, 0, sizeof d);
    if (mp_harness_daemon_spawn(&d, dir, tag, args, NULL) != 0) {
        return -1;
    }
    int status = mp_harness_daemon_wait(&d, timeout_ms);
    if (status == -1) {
        mp_harness_daemon_kill(&d);
    }
    if (out != NULL) {
        *out = mp_harness_read_file(d.out_path);
    }
    if (err != NULL) {
        *err = mp_harness_read_file(d.err_path);
    }
    return status;
}

/* ---- one node, the simple way ------------------------------------------------ */

struct mp_harness_node {
    char *dir;
    mp_harness_daemon daemon;
    char url[32];
};

static bool mp_harness_unclean(const mp_harness_daemon *d) {
    return mp_harness_file_contains(d->err_path, "Sanitizer") ||
           mp_harness_file_contains(d->err_path, "runtime error:");
}

static void mp_harness_copy_stderr(const mp_harness_daemon *d, const char *why) {
    char *text = mp_harness_read_file(d->err_path);
    fprintf(stderr, "mpregd %s (status %d); its stderr:\n%s", why, d->status,
            text != NULL ? text : "(unreadable)\n");
    free(text);
}

mp_harness_node *mp_harness_start(const char *const *extra) {
    mp_harness_node *n = calloc(1, sizeof *n);
    if (n == NULL || (n->dir = mp_harness_tmpdir_new()) == NULL) {
        free(n);
        return NULL;
    }
    if (mp_harness_daemon_start(&n->daemon, n->dir, "node", extra) != 0) {
        mp_harness_copy_stderr(&n->daemon, "did not start");
        mp_harness_tmpdir_remove(n->dir);
        free(n);
        return NULL;
    }
    snprintf(n->url, sizeof n->url, "127.0.0.1:%u", (unsigned)n->daemon.port);
    return n;
}

const char *mp_harness_url(const mp_harness_node *n) {
    return n->url;
}

uint16_t mp_harness_port(const mp_harness_node *n) {
    return n->daemon.port;
}

mp_harness_daemon *mp_harness_daemon_of(mp_harness_node *n) {
    return &n->daemon;
}

int mp_harness_stop(mp_harness_node *n) {
    if (n == NULL) {
        return 0;
    }
    int status = mp_harness_daemon_stop(&n->daemon, MP_HARNESS_STOP_TIMEOUT_MS);
    int rc = 0;
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        mp_harness_copy_stderr(&n->daemon, "did not exit 0 on SIGTERM");
        rc = -1;
    } else if (mp_harness_unclean(&n->daemon)) {
        mp_harness_copy_stderr(&n->daemon, "reported a sanitizer error");
        rc = -1;
    }
    mp_harness_tmpdir_remove(n->dir);
    free(n);
    return rc;
}

/* ---- raw sockets ------------------------------------------------------------------ */

int mp_harness_connect(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int mp_harness_send(int fd, const void *data, size_t len) {
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly len bytes: 1, 0 on EOF before any byte, -1 otherwise. */
static int mp_harness_read_exact(int fd, uint8_t *buf, size_t len, uint64_t deadline) {
    size_t got = 0;
    while (got < len) {
        uint64_t now = mp_harness_now_ms();
        if (now >= deadline) {
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            return -1;
        }
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n == 0) {
            return got == 0 ? 0 : -1;
        }
        if (n < 0) {
            /* A reset after the peer's last bytes counts as its close. */
            return got == 0 && errno == ECONNRESET ? 0 : -1;
        }
        got += (size_t)n;
    }
    return 1;
}

int mp_harness_read_frame(int fd, mp_buf *out, int timeout_ms) {
    uint64_t deadline = mp_harness_now_ms() + (uint64_t)timeout_ms;
    uint8_t head[MP_FRAME_HEADER];
    mp_buf_clear(out);
    int rc = mp_harness_read_exact(fd, head, sizeof head, deadline);
    if (rc != 1) {
        return rc;
    }
    uint32_t len = mp_get_u32be(head);
    if (len == 0 || len > MP_FRAME_DEFAULT_MAX || mp_buf_reserve(out, len) != MPREG_OK) {
        return -1;
    }
    if (mp_harness_read_exact(fd, out->data, len, deadline) != 1) {
        return -1;
    }
    out->len = len;
    return 1;
}

bool mp_harness_wait_closed(int fd, int timeout_ms) {
    uint64_t deadline = mp_harness_now_ms() + (uint64_t)timeout_ms;
    uint8_t buf[4096];
    for (;;) {
        uint64_t now = mp_harness_now_ms();
        if (now >= deadline) {
            return false;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            return false;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            return true;
        }
        if (n < 0 && errno != EINTR) {
            return false;
        }
    }
}

mp_id mp_harness_id(void) {
    static mp_xoshiro rng;
    static bool seeded;
    if (!seeded) {
        mp_xoshiro_seed(&rng, mp_harness_now_ms() ^ ((uint64_t)getpid() << 32));
        seeded = true;
    }
    return mp_id_new(&rng.rng);
}

int mp_harness_send_envelope(int fd, const mp_envelope *e) {
    mp_buf buf = MP_BUF_INIT;
    int rc = -1;
    if (mp_envelope_encode_frame(e, &buf) == MPREG_OK) {
        rc = mp_harness_send(fd, buf.data, buf.len);
    }
    mp_buf_free(&buf);
    return rc;
}

int mp_harness_send_kind(int fd, mp_kind kind, const char *topic, const mpreg_bytes *payload,
                         mp_id *id) {
    mp_envelope e;
    mp_envelope_init(&e, kind);
    e.id = mp_harness_id();
    if (topic != NULL) {
        e.topic = mp_str_c(topic);
    }
    if (payload != NULL) {
        e.payload = (mp_bytes){payload->data, payload->len};
    }
    if (id != NULL) {
        *id = e.id;
    }
    return mp_harness_send_envelope(fd, &e);
}

int mp_harness_recv_envelope(int fd, mp_buf *buf, mp_envelope *e, int timeout_ms) {
    int rc = mp_harness_read_frame(fd, buf, timeout_ms);
    if (rc != 1) {
        return rc;
    }
    return mp_envelope_decode(buf->data, buf->len, e, NULL) == MPREG_OK ? 1 : -1;
}

mpreg_err mp_harness_payload_value(const mp_envelope *e, mpreg_value *out) {
    return mpreg_value_decode(e->payload.ptr, e->payload.len, NULL, out);
}

mp_kind mp_harness_hello(int fd, const char *token) {
    mpreg_value hello = mpreg_map();
    mpreg_map_set(&hello, "role", mpreg_str("client"));
    if (token != NULL) {
        mpreg_map_set(&hello, "token", mpreg_str(token));
    }
    mpreg_bytes payload = {0};
    mpreg_err err = mpreg_value_encode(&hello, &payload);
    mpreg_value_free(&hello);
    mp_kind kind = MP_KIND_NONE;
    if (err == MPREG_OK && mp_harness_send_kind(fd, MP_KIND_HELLO, NULL, &payload, NULL) == 0) {
        mp_buf buf = MP_BUF_INIT;
        mp_envelope e;
        if (mp_harness_recv_envelope(fd, &buf, &e, MP_HARNESS_IO_TIMEOUT_MS) == 1) {
            kind = e.kind;
        }
        mp_buf_free(&buf);
    }
    mpreg_bytes_free(&payload);
    return kind;
}

int mp_harness_client(uint16_t port) {
    int fd = mp_harness_connect(port);
    if (fd >= 0 && mp_harness_hello(fd, NULL) != MP_KIND_WELCOME) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* ---- clusters ------------------------------------------------------------------- */

/* Probing every 200 ms with the default suspicion multiplier declares a dead
 * member dead within about a second and a half; gossip every 50 ms spreads
 * news (a death, LEFT, catalog changes) within a few rounds. */
const char *const mp_harness_fast_swim[] = {
    "--swim", "probe_interval_ms=200", "--swim", "probe_timeout_ms=100",
    "--swim", "gossip_interval_ms=50", "--swim", "push_pull_interval_ms=2000",
    NULL,
};

struct mp_harness_cluster {
    char *dir;
    size_t k;
    mp_harness_daemon daemons[MP_HARNESS_MAX_CLUSTER];
    char names[MP_HARNESS_MAX_CLUSTER][16];
    char urls[MP_HARNESS_MAX_CLUSTER][32];
    const char *extra[MP_HARNESS_MAX_ARGS]; /* the caller's flags (borrowed) */
};

static bool mp_harness_running(const mp_harness_daemon *d) {
    return d->pid != 0;
}

/* Starts member i: the fast settings, the caller's flags, then (when given)
 * the port to listen on and the member to join through, which come last so
 * that they win. */
static int mp_harness_cluster_spawn(mp_harness_cluster *c, size_t i, uint16_t port,
                                    const mp_harness_daemon *seed) {
    const char *args[MP_HARNESS_MAX_ARGS];
    size_t n = 0;
    for (size_t j = 0; mp_harness_fast_swim[j] != NULL; j++) {
        args[n++] = mp_harness_fast_swim[j];
    }
    for (size_t j = 0; c->extra[j] != NULL && n < MP_HARNESS_MAX_ARGS - 5; j++) {
        args[n++] = c->extra[j];
    }
    char listen[32], peer[32];
    if (port != 0) {
        snprintf(listen, sizeof listen, "127.0.0.1:%u", (unsigned)port);
        args[n++] = "--listen";
        args[n++] = listen;
    }
    if (seed != NULL) {
        snprintf(peer, sizeof peer, "127.0.0.1:%u", (unsigned)seed->port);
        args[n++] = "--peer";
        args[n++] = peer;
    }
    args[n] = NULL;
    int rc = mp_harness_daemon_start(&c->daemons[i], c->dir, c->names[i], args);
    if (rc == 0) {
        snprintf(c->urls[i], sizeof c->urls[i], "127.0.0.1:%u", (unsigned)c->daemons[i].port);
    }
    return rc;
}

mp_harness_cluster *mp_harness_cluster_start(size_t k, const char *const *extra) {
    if (k == 0 || k > MP_HARNESS_MAX_CLUSTER) {
        return NULL;
    }
    mp_harness_cluster *c = calloc(1, sizeof *c);
    if (c == NULL || (c->dir = mp_harness_tmpdir_new()) == NULL) {
        free(c);
        return NULL;
    }
    c->k = k;
    for (size_t j = 0; extra != NULL && extra[j] != NULL && j < MP_HARNESS_MAX_ARGS - 1; j++) {
        c->extra[j] = extra[j];
    }
    for (size_t i = 0; i < k; i++) {
        snprintf(c->names[i], sizeof c->names[i], "n%zu", i + 1);
        if (mp_harness_cluster_spawn(c, i, 0, i > 0 ? &c->daemons[0] : NULL) != 0) {
            mp_harness_copy_stderr(&c->daemons[i], "did not start");
            c->k = i + 1;
            mp_harness_cluster_stop(c);
            return NULL;
        }
    }
    return c;
}

size_t mp_harness_cluster_size(const mp_harness_cluster *c) {
    return c->k;
}

mp_harness_daemon *mp_harness_cluster_daemon(mp_harness_cluster *c, size_t i) {
    return &c->daemons[i];
}

const char *mp_harness_cluster_name(const mp_harness_cluster *c, size_t i) {
    return c->names[i];
}

const char *mp_harness_cluster_url(const mp_harness_cluster *c, size_t i) {
    return c->urls[i];
}

void mp_harness_cluster_kill(mp_harness_cluster *c, size_t i) {
    mp_harness_daemon_kill(&c->daemons[i]);
}

int mp_harness_cluster_term(mp_harness_cluster *c, size_t i) {
    return mp_harness_daemon_stop(&c->daemons[i], MP_HARNESS_STOP_TIMEOUT_MS);
}

static int mp_harness_cluster_respawn(mp_harness_cluster *c, size_t i, bool same_port) {
    mp_harness_daemon *d = &c->daemons[i];
    if (mp_harness_running(d)) {
        return -1;
    }
    const mp_harness_daemon *seed = NULL;
    for (size_t j = 0; j < c->k && seed == NULL; j++) {
        if (j != i && mp_harness_running(&c->daemons[j])) {
            seed = &c->daemons[j];
        }
    }
    /* Keep the last run's log for whoever debugs a failure. */
    char old[PATH_MAX + 8];
    snprintf(old, sizeof old, "%s.1", d->err_path);
    rename(d->err_path, old);
    /* The same port keeps the member's address; should someone have taken
     * it meanwhile, any port will do (the member tells the others). */
    uint16_t port = same_port ? d->port : 0;
    if (mp_harness_cluster_spawn(c, i, port, seed) == 0) {
        return 0;
    }
    if (mp_harness_file_contains(d->err_path, "address already in use") &&
        mp_harness_cluster_spawn(c, i, 0, seed) == 0) {
        return 0;
    }
    mp_harness_copy_stderr(d, "did not restart");
    return -1;
}

int mp_harness_cluster_restart(mp_harness_cluster *c, size_t i) {
    return mp_harness_cluster_respawn(c, i, true);
}

int mp_harness_cluster_restart_elsewhere(mp_harness_cluster *c, size_t i) {
    return mp_harness_cluster_respawn(c, i, false);
}

int mp_harness_cluster_stop(mp_harness_cluster *c) {
    if (c == NULL) {
        return 0;
    }
    int rc = 0;
    /* SIGTERM to all first, so that they leave side by side rather than one
     * waiting for the next. */
    for (size_t i = 0; i < c->k; i++) {
        if (mp_harness_running(&c->daemons[i])) {
            kill(c->daemons[i].pid, SIGTERM);
        }
    }
    for (size_t i = 0; i < c->k; i++) {
        mp_harness_daemon *d = &c->daemons[i];
        bool was_running = mp_harness_running(d);
        /* Not a second SIGTERM: that one means "exit at once". */
        int status = mp_harness_daemon_wait(d, MP_HARNESS_STOP_TIMEOUT_MS);
        if (status == -1) {
            mp_harness_daemon_kill(d);
        }
        if (was_running && (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
            mp_harness_copy_stderr(d, "did not exit 0 on SIGTERM");
            rc = -1;
        } else if (mp_harness_unclean(d)) {
            mp_harness_copy_stderr(d, "reported a sanitizer error");
            rc = -1;
        }
    }
    mp_harness_tmpdir_remove(c->dir);
    free(c);
    return rc;
}

/* ---- waiting for the fabric --------------------------------------------------------- */

bool mp_harness_wait_until(bool (*pred)(void *ud), void *ud, int timeout_ms) {
    uint64_t deadline = mp_harness_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (pred(ud)) {
            return true;
        }
        if (mp_harness_now_ms() >= deadline) {
            return pred(ud);
        }
        mp_harness_sleep_ms(MP_HARNESS_POLL_INTERVAL_MS);
    }
}

/* A short-lived client for one question: a node that is down or slow must
 * make a poll fail, not hang it. */
static mpreg_client *mp_harness_ask(const char *url) {
    mpreg_client_options o = {.timeout_ms = 2000, .name = "harness"};
    return mpreg_connect(url, &o, NULL);
}

static bool mp_harness_control(const char *url, const char *op, mpreg_value *out) {
    mpreg_client *c = mp_harness_ask(url);
    if (c == NULL) {
        return false;
    }
    mpreg_err err;
    if (strcmp(op, "members") == 0) {
        err = mpreg_members(c, out, NULL);
    } else if (strcmp(op, "catalog") == 0) {
        err = mpreg_catalog(c, out, NULL);
    } else {
        err = mpreg_status(c, out, NULL);
    }
    mpreg_close(c);
    return err == MPREG_OK;
}

static const char *mp_harness_str(const mpreg_value *map, const char *key) {
    const mpreg_value *v = map->type == MPREG_MAP ? mpreg_map_get(map, key) : NULL;
    return v != NULL && v->type == MPREG_STR ? v->u.str.ptr : NULL;
}

static bool mp_harness_str_is(const mpreg_value *map, const char *key, const char *want) {
    const char *s = mp_harness_str(map, key);
    return s != NULL && strcmp(s, want) == 0;
}

bool mp_harness_member_state(const char *url, const char *id, char state[16],
                             uint64_t *generation) {
    mpreg_value m;
    if (!mp_harness_control(url, "members", &m)) {
        return false;
    }
    const mpreg_value *list = m.type == MPREG_MAP ? mpreg_map_get(&m, "members") : NULL;
    bool found = false;
    for (size_t i = 0; list != NULL && list->type == MPREG_ARRAY && i < list->u.arr.len; i++) {
        const mpreg_value *e = &list->u.arr.items[i];
        if (!mp_harness_str_is(e, "id", id)) {
            continue;
        }
        const char *s = mp_harness_str(e, "state");
        const mpreg_value *g = mpreg_map_get(e, "generation");
        if (state != NULL) {
            snprintf(state, 16, "%s", s != NULL ? s : "?");
        }
        if (generation != NULL) {
            *generation = g != NULL && g->type == MPREG_INT && g->u.i > 0 ? (uint64_t)g->u.i : 0;
        }
        found = true;
        break;
    }
    mpreg_value_free(&m);
    return found;
}

static bool mp_harness_catalog_has(const char *url, const char *kind, const char *field,
                                   const char *value, const char *node) {
    mpreg_value cat;
    if (!mp_harness_control(url, "catalog", &cat)) {
        return false;
    }
    const mpreg_value *list = cat.type == MPREG_MAP ? mpreg_map_get(&cat, kind) : NULL;
    bool found = false;
    for (size_t i = 0; list != NULL && list->type == MPREG_ARRAY && i < list->u.arr.len; i++) {
        const mpreg_value *e = &list->u.arr.items[i];
        if (mp_harness_str_is(e, field, value) &&
            (node == NULL || mp_harness_str_is(e, "node", node))) {
            found = true;
            break;
        }
    }
    mpreg_value_free(&cat);
    return found;
}

bool mp_harness_catalog_has_function(const char *url, const char *fun, const char *node) {
    return mp_harness_catalog_has(url, "functions", "name", fun, node);
}

bool mp_harness_catalog_has_topic(const char *url, const char *pattern, const char *node) {
    return mp_harness_catalog_has(url, "topics", "pattern", pattern, node);
}

char *mp_harness_control_json(const char *url, const char *op) {
    mpreg_value v;
    if (!mp_harness_control(url, op, &v)) {
        char *msg = NULL;
        if (asprintf(&msg, "(%s did not answer CONTROL %s)", url, op) < 0) {
            return NULL;
        }
        return msg;
    }
    char *json = mpreg_value_to_json(&v, false);
    mpreg_value_free(&v);
    return json;
}
