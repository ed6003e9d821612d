/* bench_envelope.c - encode and decode cost of a typical PUBLISH envelope.
 *
 * Prints one BENCH line per figure (see bench/CMakeLists.txt):
 *   BENCH mpreg envelope_encode size=16 count=<n> ns_per_op=<x>
 * Each figure is the median of 5 timed batches; the batch size is calibrated
 * so that the whole program runs for about 1-2 s. Not a test: no pass/fail. */
#define _POSIX_C_SOURCE 200809L
#include "core/envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MP_BATCHES 5
/* Aim per figure: 4 figures x 5 batches x 60 ms = 1.2 s, plus calibration. */
#define MP_BATCH_NS 60000000.0

typedef struct bench_ctx {
    mp_envelope env;
    mp_envelope out;
    mp_buf buf;
    uint8_t payload[1024];
    uint64_t sink; /* keeps the optimiser from deleting the work */
} bench_ctx;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void make_publish(bench_ctx *c, size_t size) {
    static const uint8_t id[MP_ID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    mp_envelope_init(&c->env, MP_KIND_PUBLISH);
    memcpy(c->env.id.bytes, id, MP_ID_LEN);
    c->env.topic = mp_str_c("orders.eu.created");
    c->env.source_node = mp_str_c("node-eu-1");
    c->env.source_cluster = mp_str_c("eu-west");
    mp_envelope_add_header(&c->env, mp_str_c("content-type"), mp_str_c("application/json"));
    mp_envelope_add_header(&c->env, mp_str_c("trace-id"), mp_str_c("4bf92f3577b34da6"));
    memset(c->payload, 'p', sizeof c->payload);
    c->env.payload = (mp_bytes){c->payload, size};
}

static void run_encode(bench_ctx *c, long n) {
    for (long i = 0; i < n; i++) {
        mp_buf_clear(&c->buf);
        if (mp_envelope_encode(&c->env, &c->buf) != MPREG_OK) {
            abort();
        }
        c->sink += c->buf.len;
    }
}

static void run_decode(bench_ctx *c, long n) {
    for (long i = 0; i < n; i++) {
        if (mp_envelope_decode(c->buf.data, c->buf.len, &c->out, NULL) != MPREG_OK) {
            abort();
        }
        c->sink += c->out.payload.len;
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef void (*bench_fn)(bench_ctx *, long);

static void measure(bench_ctx *c, bench_fn fn, const char *name, size_t size) {
    /* Calibrate: grow n until one batch takes long enough to time well. */
    long n = 1000;
    for (;;) {
        double t0 = now_ns();
        fn(c, n);
        double dt = now_ns() - t0;
        if (dt > MP_BATCH_NS / 10) {
            n = (long)((double)n * MP_BATCH_NS / dt) + 1;
            break;
        }
        n *= 10;
    }
    double per_op[MP_BATCHES];
    for (int b = 0; b < MP_BATCHES; b++) {
        double t0 = now_ns();
        fn(c, n);
        per_op[b] = (now_ns() - t0) / (double)n;
    }
    qsort(per_op, MP_BATCHES, sizeof per_op[0], cmp_double);
    printf("BENCH mpreg %s size=%zu count=%ld ns_per_op=%.1f\n", name, size, n,
           per_op[MP_BATCHES / 2]);
    fflush(stdout);
}

int main(void) {
    static const size_t sizes[] = {16, 1024};
    bench_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        return 1;
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        make_publish(c, sizes[i]);
        measure(c, run_encode, "envelope_encode", sizes[i]);
        /* run_encode left the encoding in c->buf for the decoder. */
        measure(c, run_decode, "envelope_decode", sizes[i]);
    }
    mp_buf_free(&c->buf);
    int rc = c->sink == 0; /* never true; makes the sink observable */
    free(c);
    return rc;
}
