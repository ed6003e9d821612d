/* mpreg_bench.c - the project side of bench/compare/compare.sh.
 *
 *   mpreg-bench pubsub COUNT SIZE     one publisher -> one subscriber
 *   mpreg-bench fanout COUNT SIZE K   one publisher -> K subscribers
 *   mpreg-bench reqrep COUNT SIZE     sequential RPC to a function of a worker
 *   mpreg-bench slowsub COUNT SIZE EVERY US
 *                                     pubsub with a subscriber that sleeps US
 *                                     microseconds every EVERY deliveries (one
 *                                     that keeps up, only less quickly: PROTOCOL
 *                                     §9.6); received= says what it lost
 *
 * It mirrors peers/nats_raw_bench.c: a lean load generator speaking the
 * native protocol over plain sockets (the project's frame and envelope codec,
 * no client library, no event loop), publisher, subscribers and worker as
 * separate processes with their own connections, publishes written 256
 * frames per write(). So the figure is the node's, as nats_raw_bench's is
 * nats-server's. It starts its own mpregd on a free loopback port, prints one
 * BENCH line with the same keys as nats_raw_bench and stops the node.
 *
 * Flow control: like nats_raw_bench, the publisher does not pace itself; the
 * node's slow-consumer policy may drop deliveries, and a short count is
 * reported in received= with a non-zero exit. The figures are computed as
 * nats_raw_bench computes them (recv_rate = received / (last receive -
 * publisher start)), so that the ratio compares like with like. */
#define _GNU_SOURCE

#include "core/buf.h"
#include "core/envelope.h"
#include "core/frame.h"
#include "core/id.h"
#include "core/rng.h"
#include "mpreg/value.h"
#include "services/pubsub.h"
#include "services/rpc_plan.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BENCH_TOPIC "bench.x"
#define BENCH_FUN "bench_echo"
#define BENCH_BATCH 256                     /* publishes per write(), as nats_raw_bench */
#define BENCH_READ_BUF (4u * 1024u * 1024u) /* as nats_raw_bench's reader */
#define BENCH_MAX_SUBS 64
/* A subscriber stops waiting this long after its last delivery: a dropped
 * delivery (slow consumer) never arrives, and unlike nats-server the node
 * keeps the connection open, so there is no EOF to end on. */
#define BENCH_IDLE_MS 2000
#define BENCH_FIRST_MS 60000

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void fail(const char *what, mpreg_err err) {
    fprintf(stderr, "mpreg-bench: %s: %s\n", what, mpreg_strerror(err));
    exit(2);
}

/* ---- one connection: a socket, a framer, an id source ---------------------- */

typedef struct bench_conn {
    int fd;
    mp_frame_decoder dec;
    uint8_t *rbuf;
    mp_xoshiro rng;
    mp_buf out;
} bench_conn;

static void write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

static void conn_flush(bench_conn *c) {
    write_all(c->fd, c->out.data, c->out.len);
    mp_buf_clear(&c->out);
}

/* Appends one frame holding an envelope of kind with a fresh id. */
static mp_id conn_frame(bench_conn *c, mp_kind kind, const char *topic, const mp_id *corr,
                        const void *payload, size_t len) {
    mp_envelope env;
    mp_envelope_init(&env, kind);
    env.id = mp_id_new(&c->rng.rng);
    if (corr) {
        env.correlation_id = *corr;
    }
    if (topic) {
        env.topic = mp_str_c(topic);
    }
    env.payload = (mp_bytes){payload, len};
    mpreg_err err = mp_envelope_encode_frame(&env, &c->out);
    if (err != MPREG_OK) {
        fail("encode", err);
    }
    return env.id;
}

/* Reads once (waiting at most timeout_ms, -1 = forever) and feeds the framer.
 * Returns 1 when bytes came, 0 on timeout, -1 on EOF. */
static int conn_pump(bench_conn *c, int timeout_ms, mp_frame_cb cb, void *ud) {
    if (timeout_ms >= 0) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int n = poll(&p, 1, timeout_ms);
        if (n == 0) {
            return 0;
        }
        if (n < 0 && errno != EINTR) {
            die("poll");
        }
    }
    ssize_t n = read(c->fd, c->rbuf, BENCH_READ_BUF);
    if (n < 0 && errno == EINTR) {
        return 1;
    }
    if (n <= 0) {
        return -1;
    }
    mpreg_err err = mp_frame_decoder_feed(&c->dec, c->rbuf, (size_t)n, cb, ud);
    if (err != MPREG_OK) {
        fail("framing", err);
    }
    return 1;
}

static void check_error(const mp_envelope *e) {
    if (e->kind == MP_KIND_ERROR) {
        fprintf(stderr, "mpreg-bench: node sent an ERROR (%zu bytes of payload)\n", e->payload.len);
        exit(2);
    }
}

static void decode_or_die(const uint8_t *frame, size_t len, mp_envelope *env) {
    const char *why = NULL;
    mpreg_err err = mp_envelope_decode(frame, len, env, &why);
    if (err != MPREG_OK) {
        fprintf(stderr, "mpreg-bench: bad envelope: %s\n", why ? why : mpreg_strerror(err));
        exit(2);
    }
}

/* Waiting for the answer to one request: its kind and correlation. */
typedef struct bench_wait {
    mp_kind kind;
    mp_id corr;
    bool done;
    mp_envelope env;
} bench_wait;

static int on_wait(void *ud, const uint8_t *frame, size_t len) {
    bench_wait *w = ud;
    decode_or_die(frame, len, &w->env);
    check_error(&w->env);
    if (w->env.kind == w->kind && mp_id_equal(&w->env.correlation_id, &w->corr)) {
        w->done = true;
    }
    return 0;
}

/* Sends what is buffered and waits for the reply of kind to request id. */
static void conn_await(bench_conn *c, mp_kind kind, mp_id id) {
    bench_wait w = {.kind = kind, .corr = id};
    conn_flush(c);
    while (!w.done) {
        if (conn_pump(c, -1, on_wait, &w) < 0) {
            die("connection closed while waiting");
        }
    }
}

static void encode_value(const mpreg_value *v, mp_buf *out) {
    mpreg_err err = mpreg_value_encode(v, out);
    if (err != MPREG_OK) {
        fail("encode value", err);
    }
}

static void conn_open(bench_conn *c, int port) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) {
        die("connect");
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    mp_frame_decoder_init(&c->dec, 0);
    c->rbuf = malloc(BENCH_READ_BUF);
    if (!c->rbuf) {
        die("malloc");
    }
    mp_xoshiro_seed(&c->rng,
                    (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(now_s() * 1e9));
    mp_buf_init(&c->out);
    /* HELLO {"role": "client"}, then wait for the WELCOME. */
    mpreg_value hello = mpreg_map();
    mpreg_map_set(&hello, "role", mpreg_str("client"));
    mp_buf p;
    mp_buf_init(&p);
    encode_value(&hello, &p);
    mp_id id = conn_frame(c, MP_KIND_HELLO, NULL, NULL, p.data, p.len);
    conn_await(c, MP_KIND_WELCOME, id);
    mpreg_value_free(&hello);
    mp_buf_free(&p);
}

/* PING / PONG: the flush barrier nats_raw_bench's sync_pong is. */
static void conn_sync(bench_conn *c) {
    mp_id id = conn_frame(c, MP_KIND_PING, NULL, NULL, NULL, 0);
    conn_await(c, MP_KIND_PONG, id);
}

/* ---- pub/sub and fanout ------------------------------------------------------ */

typedef struct bench_sub_rx {
    long got;
    double first;
    mp_envelope env;
    long sleep_every; /* slowsub: sleep sleep_us every sleep_every deliveries */
    long sleep_us;
} bench_sub_rx;

/* slowsub's pace, set from the command line before the subscriber forks. */
static long g_sleep_every, g_sleep_us;

/* The kind of an envelope as every encoder writes it: a map whose first
 * entries are field 1 (version 1) and field 2 (kind), kind < 128. Like
 * nats_raw_bench's look at the "MSG" line, this reads the head of each
 * frame and skips the body; anything else is decoded in full. */
static bool peek_kind(const uint8_t *frame, size_t len, mp_kind *kind) {
    if (len < 5 || (frame[0] & 0xf0u) != 0x80u || frame[1] != MP_F_VERSION ||
        frame[2] != MP_PROTOCOL_VERSION || frame[3] != MP_F_KIND || frame[4] >= 0x80u) {
        return false;
    }
    *kind = (mp_kind)frame[4];
    return true;
}

static int on_deliver(void *ud, const uint8_t *frame, size_t len) {
    bench_sub_rx *rx = ud;
    mp_kind kind;
    if (!peek_kind(frame, len, &kind)) {
        decode_or_die(frame, len, &rx->env);
        check_error(&rx->env);
        kind = rx->env.kind;
    }
    if (kind == MP_KIND_ERROR) {
        decode_or_die(frame, len, &rx->env);
        check_error(&rx->env);
    }
    if (kind == MP_KIND_DELIVER) {
        if (rx->got == 0) {
            rx->first = now_s();
        }
        rx->got++;
        if (rx->sleep_every > 0 && rx->got % rx->sleep_every == 0) {
            usleep((useconds_t)rx->sleep_us);
        }
    }
    return 0;
}

/* One subscriber process: subscribe, say ready, count deliveries, report
 * "got first last" on the report pipe. */
static void run_subscriber(int port, long count, int ready_fd, int report_fd) {
    bench_conn c;
    conn_open(&c, port);
    mp_pubsub_subscribe_payload sp = {.pattern_count = 1};
    sp.patterns[0] = mp_str_c(BENCH_TOPIC);
    sp.tag = mp_str_c("bench");
    mp_buf p;
    mp_buf_init(&p);
    mpreg_err err = mp_pubsub_subscribe_encode(&sp, &p);
    if (err != MPREG_OK) {
        fail("subscribe payload", err);
    }
    mp_id id = conn_frame(&c, MP_KIND_SUBSCRIBE, NULL, NULL, p.data, p.len);
    conn_await(&c, MP_KIND_OK, id);
    char one = 1;
    if (write(ready_fd, &one, 1) != 1) {
        die("ready");
    }
    bench_sub_rx rx = {.sleep_every = g_sleep_every, .sleep_us = g_sleep_us};
    double last = 0;
    while (rx.got < count) {
        int r = conn_pump(&c, rx.got ? BENCH_IDLE_MS : BENCH_FIRST_MS, on_deliver, &rx);
        if (r <= 0) {
            break;
        }
        last = now_s();
    }
    char line[128];
    int n = snprintf(line, sizeof line, "%ld %.9f %.9f\n", rx.got, rx.first, last);
    if (write(report_fd, line, (size_t)n) != n) {
        die("report");
    }
    _exit(0);
}

/* Swallows what the node sends a publisher (nothing, unless it refuses a
 * PUBLISH: that is fatal, a bench must not count refused messages). */
static int on_publisher_input(void *ud, const uint8_t *frame, size_t len) {
    mp_envelope *env = ud;
    decode_or_die(frame, len, env);
    check_error(env);
    return 0;
}

/* A PUBLISH frame encoded once; each copy gets its own id (the node drops a
 * repeated id as a duplicate), patched in place rather than re-encoded, as
 * nats_raw_bench copies one pre-built PUB. */
typedef struct bench_template {
    mp_buf frame;
    size_t id_off;
    uint64_t id_hi;
} bench_template;

static void template_build(bench_template *t, bench_conn *c, int size) {
    uint8_t *payload = malloc((size_t)size + 1);
    memset(payload, 'x', (size_t)size);
    mp_buf_init(&t->frame);
    mp_envelope env;
    mp_envelope_init(&env, MP_KIND_PUBLISH);
    env.id = mp_id_new(&c->rng.rng);
    env.topic = mp_str_c(BENCH_TOPIC);
    env.payload = (mp_bytes){payload, (size_t)size};
    mpreg_err err = mp_envelope_encode_frame(&env, &t->frame);
    if (err != MPREG_OK) {
        fail("publish frame", err);
    }
    uint8_t *at = memmem(t->frame.data, t->frame.len, env.id.bytes, MP_ID_LEN);
    if (!at) {
        fprintf(stderr, "mpreg-bench: id not found in the encoded frame\n");
        exit(2);
    }
    t->id_off = (size_t)(at - t->frame.data);
    t->id_hi = mp_rng_u64(&c->rng.rng) | 1u; /* never the zero id */
    free(payload);
}

static void template_stamp(const bench_template *t, uint8_t *dst, uint64_t seq) {
    memcpy(dst, t->frame.data, t->frame.len);
    memcpy(dst + t->id_off, &t->id_hi, 8);
    memcpy(dst + t->id_off + 8, &seq, 8);
}

static double run_publisher(int port, long count, int size, double *t0) {
    bench_conn c;
    conn_open(&c, port);
    bench_template t;
    template_build(&t, &c, size);
    size_t one = t.frame.len;
    uint8_t *out = malloc(one * BENCH_BATCH);
    mp_envelope env;
    *t0 = now_s();
    long sent = 0;
    while (sent < count) {
        long n = count - sent < BENCH_BATCH ? count - sent : BENCH_BATCH;
        for (long i = 0; i < n; i++) {
            template_stamp(&t, out + (size_t)i * one, (uint64_t)(sent + i));
        }
        write_all(c.fd, out, (size_t)n * one);
        sent += n;
        struct pollfd p = {.fd = c.fd, .events = POLLIN};
        while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
            if (conn_pump(&c, -1, on_publisher_input, &env) < 0) {
                break;
            }
        }
    }
    conn_sync(&c);
    double tp = now_s();
    free(out);
    mp_buf_free(&t.frame);
    return tp;
}

static int bench_pubsub(int port, const char *mode, long count, int size, int k) {
    int report[2];
    if (pipe(report) < 0) {
        die("pipe");
    }
    pid_t kids[BENCH_MAX_SUBS];
    for (int i = 0; i < k; i++) {
        int ready[2];
        if (pipe(ready) < 0) {
            die("pipe");
        }
        kids[i] = fork();
        if (kids[i] < 0) {
            die("fork");
        }
        if (kids[i] == 0) {
            run_subscriber(port, count, ready[1], report[1]);
        }
        char ch;
        if (read(ready[0], &ch, 1) != 1) {
            die("subscriber ready");
        }
        close(ready[0]);
        close(ready[1]);
    }
    double t0 = 0;
    double tp = run_publisher(port, count, size, &t0);
    long tot = 0;
    double last = 0;
    for (int i = 0; i < k; i++) {
        char line[128];
        int n = 0;
        char ch;
        while (read(report[0], &ch, 1) == 1 && ch != '\n' && n < 127) {
            line[n++] = ch;
        }
        line[n] = 0;
        long got = 0;
        double a = 0, b = 0;
        if (sscanf(line, "%ld %lf %lf", &got, &a, &b) == 3) {
            tot += got;
            last = b > last ? b : last;
        }
    }
    for (int i = 0; i < k; i++) {
        waitpid(kids[i], NULL, 0);
    }
    double e2e = last - t0;
    printf("BENCH mpreg %s size=%d count=%ld subs=%d pub_rate=%.0f recv_rate=%.0f received=%ld\n",
           mode, size, count, k, (double)count / (tp - t0), e2e > 0 ? (double)tot / e2e : 0.0, tot);
    fflush(stdout);
    return tot == count * k ? 0 : 1;
}

/* ---- request/reply ------------------------------------------------------------ */

typedef struct bench_worker {
    bench_conn *c;
    mp_envelope env;
    mp_buf result;
} bench_worker;

/* RPC_INVOKE -> RPC_RESULT {"result": args[0]}: the echo a responder does. */
static int on_invoke(void *ud, const uint8_t *frame, size_t len) {
    bench_worker *w = ud;
    decode_or_die(frame, len, &w->env);
    if (w->env.kind != MP_KIND_RPC_INVOKE) {
        check_error(&w->env);
        return 0;
    }
    mp_rpc_invoke inv = {0};
    mp_rpc_error rerr = MP_RPC_ERROR_INIT;
    mpreg_err err = mp_rpc_invoke_decode(w->env.payload.ptr, w->env.payload.len, &inv, &rerr);
    if (err != MPREG_OK || inv.args.u.arr.len != 1) {
        fprintf(stderr, "mpreg-bench: bad invoke\n");
        exit(2);
    }
    mp_rpc_outcome o = {.ok = true, .value = inv.args.u.arr.items[0]};
    mp_buf_clear(&w->result);
    err = mp_rpc_result_encode(&o, &w->result);
    if (err != MPREG_OK) {
        fail("result", err);
    }
    conn_frame(w->c, MP_KIND_RPC_RESULT, NULL, &w->env.id, w->result.data, w->result.len);
    conn_flush(w->c);
    mp_rpc_invoke_free(&inv);
    return 0;
}

static void run_worker(int port, int ready_fd) {
    bench_conn c;
    conn_open(&c, port);
    mpreg_value fn = mpreg_map(), list = mpreg_array(), reg = mpreg_map();
    mpreg_map_set(&fn, "name", mpreg_str(BENCH_FUN));
    mpreg_array_push(&list, fn);
    mpreg_map_set(&reg, "functions", list);
    mp_buf p;
    mp_buf_init(&p);
    encode_value(&reg, &p);
    mp_id id = conn_frame(&c, MP_KIND_REGISTER, NULL, NULL, p.data, p.len);
    conn_await(&c, MP_KIND_OK, id);
    char one = 1;
    if (write(ready_fd, &one, 1) != 1) {
        die("ready");
    }
    bench_worker w = {.c = &c};
    mp_buf_init(&w.result);
    while (conn_pump(&c, -1, on_invoke, &w) >= 0) {
    }
    _exit(0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Checks the first reply in full: one result, the argument echoed. */
static void check_reply(const mp_envelope *env, const uint8_t *arg, int size) {
    mp_rpc_outcome o = {0};
    mp_rpc_error rerr = MP_RPC_ERROR_INIT;
    mpreg_err err = mp_rpc_reply_decode(env->payload.ptr, env->payload.len, &o, &rerr);
    const mpreg_value *v = err == MPREG_OK && o.ok ? mpreg_map_get(&o.value, "c") : NULL;
    if (!v || v->type != MPREG_BIN || v->u.bin.len != (size_t)size ||
        memcmp(v->u.bin.ptr, arg, (size_t)size) != 0) {
        fprintf(stderr, "mpreg-bench: unexpected reply (%s)\n",
                err ? mpreg_strerror(err) : mp_rpc_error_message(&o.error));
        exit(2);
    }
    mp_rpc_outcome_free(&o);
    mp_rpc_error_free(&rerr);
}

static int bench_reqrep(int port, long count, int size) {
    int ready[2];
    if (pipe(ready) < 0) {
        die("pipe");
    }
    pid_t kid = fork();
    if (kid < 0) {
        die("fork");
    }
    if (kid == 0) {
        run_worker(port, ready[1]);
    }
    char ch;
    if (read(ready[0], &ch, 1) != 1) {
        die("worker ready");
    }
    bench_conn c;
    conn_open(&c, port);
    /* {"commands": [{"name": "c", "fun": "bench_echo", "args": [SIZE bytes]}]},
     * encoded once: every request is the same command. */
    uint8_t *arg = malloc((size_t)size + 1);
    memset(arg, 'x', (size_t)size);
    mpreg_value cmd = mpreg_map(), args = mpreg_array(), cmds = mpreg_array(), req = mpreg_map();
    mpreg_array_push(&args, mpreg_bin(arg, (size_t)size));
    mpreg_map_set(&cmd, "name", mpreg_str("c"));
    mpreg_map_set(&cmd, "fun", mpreg_str(BENCH_FUN));
    mpreg_map_set(&cmd, "args", args);
    mpreg_array_push(&cmds, cmd);
    mpreg_map_set(&req, "commands", cmds);
    mp_buf p;
    mp_buf_init(&p);
    encode_value(&req, &p);
    double *lat = malloc(sizeof(double) * (size_t)count);
    long warm = count / 10 + 100;
    for (long i = -warm; i < count; i++) {
        double a = now_s();
        mp_id id = conn_frame(&c, MP_KIND_RPC_REQUEST, NULL, NULL, p.data, p.len);
        bench_wait w = {.kind = MP_KIND_RPC_REPLY, .corr = id};
        conn_flush(&c);
        while (!w.done) {
            if (conn_pump(&c, -1, on_wait, &w) < 0) {
                die("connection closed");
            }
        }
        if (i >= 0) {
            lat[i] = now_s() - a;
        } else if (i == -warm) {
            check_reply(&w.env, arg, size);
        }
    }
    double sum = 0;
    for (long i = 0; i < count; i++) {
        sum += lat[i];
    }
    qsort(lat, (size_t)count, sizeof(double), cmp_double);
    printf("BENCH mpreg reqrep size=%d count=%ld rate=%.0f p50_us=%.1f p99_us=%.1f\n", size, count,
           (double)count / sum, lat[count / 2] * 1e6, lat[count * 99 / 100] * 1e6);
    fflush(stdout);
    kill(kid, SIGTERM);
    waitpid(kid, NULL, 0);
    mpreg_value_free(&req);
    mp_buf_free(&p);
    free(lat);
    free(arg);
    return 0;
}

/* ---- the node ------------------------------------------------------------------- */

typedef struct bench_node {
    pid_t pid;
    int port;
    char dir[64];
} bench_node;

static void mpregd_path(char *out, size_t cap) {
    const char *env = getenv("MPREG_MPREGD");
    if (env && env[0]) {
        snprintf(out, cap, "%s", env);
        return;
    }
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        die("readlink /proc/self/exe");
    }
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash) {
        *slash = 0;
    }
    snprintf(out, cap, "%s/../src/cli/mpregd", self);
}

static int read_port(const char *file) {
    FILE *f = fopen(file, "r");
    int port = 0;
    if (f) {
        if (fscanf(f, "%d", &port) != 1) {
            port = 0;
        }
        fclose(f);
    }
    return port;
}

static void node_start(bench_node *nd) {
    char exe[4200], port_file[128], data_dir[128];
    mpregd_path(exe, sizeof exe);
    snprintf(nd->dir, sizeof nd->dir, "%s", "/tmp/mpreg-bench-XXXXXX");
    if (!mkdtemp(nd->dir)) {
        die("mkdtemp");
    }
    snprintf(port_file, sizeof port_file, "%s/port", nd->dir);
    snprintf(data_dir, sizeof data_dir, "%s/data", nd->dir);
    nd->pid = fork();
    if (nd->pid < 0) {
        die("fork");
    }
    if (nd->pid == 0) {
        if (!freopen("/dev/null", "w", stdout)) {
            _exit(127);
        }
        execl(exe, exe, "--listen", "127.0.0.1:0", "--port-file", port_file, "--data-dir", data_dir,
              "--name", "bench", "--log-level", "warn", (char *)NULL);
        fprintf(stderr, "mpreg-bench: cannot run %s: %s (set MPREG_MPREGD)\n", exe,
                strerror(errno));
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        if ((nd->port = read_port(port_file)) > 0) {
            return;
        }
        if (waitpid(nd->pid, NULL, WNOHANG) == nd->pid) {
            fprintf(stderr, "mpreg-bench: mpregd exited before listening\n");
            exit(2);
        }
        usleep(10000);
    }
    fprintf(stderr, "mpreg-bench: mpregd did not write its port\n");
    kill(nd->pid, SIGTERM);
    exit(2);
}

/* The node of this run, stopped at exit whatever the path out (a die() in
 * the main process included); children inherit the handler, hence owner. */
static bench_node *g_node;
static pid_t g_owner;

static void node_stop(bench_node *nd);

static void node_stop_at_exit(void) {
    if (g_node && getpid() == g_owner) {
        node_stop(g_node);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void node_stop(bench_node *nd) {
    if (nd->pid <= 0) {
        return;
    }
    kill(nd->pid, SIGTERM);
    waitpid(nd->pid, NULL, 0);
    nftw(nd->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    nd->pid = 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr,
                "usage: %s pubsub|fanout|reqrep COUNT SIZE [K]\n"
                "       %s slowsub COUNT SIZE EVERY US\n",
                argv[0], argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    long count = atol(argv[2]);
    int size = atoi(argv[3]);
    int k = argc > 4 ? atoi(argv[4]) : 1;
    bool pubsub = !strcmp(mode, "pubsub"), fanout = !strcmp(mode, "fanout");
    if (!strcmp(mode, "slowsub")) {
        pubsub = true;
        g_sleep_every = k;
        g_sleep_us = argc > 5 ? atol(argv[5]) : -1;
        k = 1;
        if (g_sleep_every < 1 || g_sleep_us < 0) {
            fprintf(stderr, "mpreg-bench: slowsub needs EVERY >= 1 and US >= 0\n");
            return 2;
        }
    }
    if ((!pubsub && !fanout && strcmp(mode, "reqrep")) || count <= 0 || size < 0 || k < 1 ||
        k > BENCH_MAX_SUBS) {
        fprintf(stderr, "mpreg-bench: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    static bench_node nd;
    node_start(&nd);
    g_node = &nd;
    g_owner = getpid();
    atexit(node_stop_at_exit);
    int rc;
    if (pubsub || fanout) {
        rc = bench_pubsub(nd.port, mode, count, size, pubsub ? 1 : k);
    } else {
        rc = bench_reqrep(nd.port, count, size);
    }
    node_stop(&nd);
    return rc;
}
