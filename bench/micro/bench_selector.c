/* bench_selector.c - function selection over a catalog of 10k endpoints.
 *
 * 1000 function names x 10 endpoints each, spread over 50 nodes, with
 * varied versions, resources and loads. Queries mix: no constraint, a range
 * constraint, a bare "1" constraint, and a required resource. Prints:
 *   BENCH mpreg select_function endpoints=10000 selections_per_sec=<x>
 *   BENCH mpreg catalog_each_function endpoints=10000 lookups_per_sec=<x>
 * The second figure is the catalog's per-name lookup alone (a visitor that
 * only counts), so the selector's own cost is the difference. Each figure is
 * the median of 5 timed batches. Not a test: no pass/fail. */
#define _POSIX_C_SOURCE 200809L
#include "core/rng.h"
#include "fabric/catalog.h"
#include "fabric/entry.h"
#include "fabric/selector.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MP_NAMES 1000
#define MP_PER_NAME 10
#define MP_NODES 50
#define MP_QUERIES 4096
#define MP_BATCHES 5
#define MP_BATCH_NS 150000000.0

typedef struct bench_ctx {
    mp_catalog *catalog;
    mp_xoshiro rng;
    char names[MP_NAMES][16];
    mp_strlist gpu;
    mp_function_query queries[MP_QUERIES];
    uint64_t sink; /* keeps the optimiser from deleting the work */
} bench_ctx;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void check(mpreg_err err, const char *what) {
    if (err) {
        fprintf(stderr, "bench_selector: %s: %s\n", what, mpreg_err_name(err));
        exit(1);
    }
}

static void add_endpoint(bench_ctx *c, int name, int k, uint64_t counter) {
    static const char *const versions[] = {"1.0.0", "1.2.0",  "1.2.3",      "2.0.0", "2.1.0",
                                           "0.9.0", "1.10.1", "2.0.0-rc.1", "3.0.0", "1.2.3"};
    char node[16];
    snprintf(node, sizeof node, "node-%02d", (name * 7 + k * 13) % MP_NODES);
    mp_entry e;
    check(
        mp_entry_function(&e, node, "c1", c->names[name], k % 3 == 0 ? "main" : NULL, versions[k]),
        "entry");
    e.version = (mp_entry_version){1, counter};
    e.u.function.load = (uint32_t)mp_rng_below(&c->rng.rng, 4);
    check(mp_strlist_push(&e.u.function.resources, "cpu"), "resource");
    if (k % 2 == 0) {
        check(mp_strlist_push(&e.u.function.resources, "gpu"), "resource");
    }
    if (k % 5 == 0) {
        check(mp_strlist_push(&e.u.function.resources, "ssd"), "resource");
    }
    mp_apply_result res;
    check(mp_catalog_apply_entry(c->catalog, &e, 0, &res), "apply");
    mp_entry_free(&e);
}

static void build(bench_ctx *c) {
    mp_catalog_config cfg = {.local_node = "node-00", .local_cluster = "c1"};
    c->catalog = mp_catalog_new(&cfg);
    if (!c->catalog) {
        exit(1);
    }
    mp_xoshiro_seed(&c->rng, 12345);
    uint64_t counter = 0;
    for (int n = 0; n < MP_NAMES; n++) {
        snprintf(c->names[n], sizeof c->names[n], "fn.%04d", n);
        for (int k = 0; k < MP_PER_NAME; k++) {
            add_endpoint(c, n, k, ++counter);
        }
    }
    check(mp_strlist_push(&c->gpu, "gpu"), "resource");
    static const char *const constraints[] = {NULL, ">=1.0,<2.0", "1", NULL};
    for (int i = 0; i < MP_QUERIES; i++) {
        mp_function_query *q = &c->queries[i];
        q->name = c->names[mp_rng_below(&c->rng.rng, MP_NAMES)];
        q->version = constraints[i % 4];
        q->resources = i % 4 == 3 ? &c->gpu : NULL;
    }
}

static void run_select(bench_ctx *c, long n) {
    for (long i = 0; i < n; i++) {
        mp_selection s = mp_select_function(c->catalog, &c->queries[i % MP_QUERIES], &c->rng.rng);
        if (s.error) {
            abort();
        }
        c->sink += s.candidates;
    }
}

static bool count_visit(void *ud, const mp_entry *e) {
    (void)e;
    (*(uint64_t *)ud)++;
    return true;
}

static void run_lookup(bench_ctx *c, long n) {
    for (long i = 0; i < n; i++) {
        mp_catalog_each_function(c->catalog, c->queries[i % MP_QUERIES].name, count_visit,
                                 &c->sink);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a;
    double y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Ops per second: median of MP_BATCHES batches sized to ~MP_BATCH_NS each. */
static double measure(bench_ctx *c, void (*run)(bench_ctx *, long)) {
    long n = 1000;
    for (;;) {
        double t0 = now_ns();
        run(c, n);
        double dt = now_ns() - t0;
        if (dt > MP_BATCH_NS / 10) {
            n = (long)((double)n * MP_BATCH_NS / dt);
            break;
        }
        n *= 4;
    }
    double rates[MP_BATCHES];
    for (int b = 0; b < MP_BATCHES; b++) {
        double t0 = now_ns();
        run(c, n);
        rates[b] = (double)n / ((now_ns() - t0) / 1e9);
    }
    qsort(rates, MP_BATCHES, sizeof *rates, cmp_double);
    return rates[MP_BATCHES / 2];
}

int main(void) {
    static bench_ctx c;
    build(&c);
    size_t endpoints = mp_catalog_count(c.catalog, MP_ENTRY_FUNCTION);
    double select_rate = measure(&c, run_select);
    double lookup_rate = measure(&c, run_lookup);
    printf("BENCH mpreg select_function endpoints=%zu selections_per_sec=%.0f\n", endpoints,
           select_rate);
    printf("BENCH mpreg catalog_each_function endpoints=%zu lookups_per_sec=%.0f\n", endpoints,
           lookup_rate);
    if (c.sink == 0) {
        fprintf(stderr, "bench_selector: no work done\n");
        return 1;
    }
    mp_strlist_free(&c.gpu);
    mp_catalog_free(c.catalog);
    return 0;
}
