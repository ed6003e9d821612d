/* bench_catalog.c - catalog deltas applied per second, and topic lookups
 * per second over the catalog's interest index.
 *
 * Apply: 10k function endpoints from 100 origins (100 each; 1000 names, so
 * each name has 10 endpoints), gossiped as 100 deltas of 100 entries, applied
 * into a fresh catalog. Then the same deltas again: every entry is stale, the
 * common case once a cluster has converged and gossip keeps repeating itself.
 *
 * Match: 10k topic interests (1000 nodes x 10 patterns over a 30-word
 * vocabulary) and random 3-word topics; mp_catalog_match_topic reports each
 * matching node once. */
#define _POSIX_C_SOURCE 200809L

#include "core/rng.h"
#include "fabric/catalog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ORIGINS 100
#define PER_ORIGIN 100
#define ENTRIES (ORIGINS * PER_ORIGIN)
#define DELTA_SIZE 100
#define RUNS 5

#define TOPIC_NODES 1000
#define PATTERNS_PER_NODE 10
#define VOCAB 30
#define TOPIC_POOL 4096
#define BATCH_SECONDS 0.3

typedef struct bench_text {
    size_t len;
    char text[64];
} bench_text;

/* CPU time of this thread: the bench is single-threaded on a shared box. */
static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n) {
    qsort(v, n, sizeof v[0], cmp_double);
    return v[n / 2];
}

static void die_oom(const char *what) {
    fprintf(stderr, "bench_catalog: %s failed\n", what);
    exit(1);
}

static mp_catalog *new_catalog(void) {
    mp_catalog_config cfg = {"bench", "c1", 0};
    mp_catalog *c = mp_catalog_new(&cfg);
    if (!c) {
        die_oom("mp_catalog_new");
    }
    return c;
}

/* --- apply ------------------------------------------------------------------ */

/* One delta per origin: its 100 functions, each with a couple of resources. */
static void build_deltas(mp_delta *deltas) {
    for (int o = 0; o < ORIGINS; o++) {
        mp_delta *d = &deltas[o];
        mp_delta_init(d);
        char node[32];
        snprintf(node, sizeof node, "node-%03d", o);
        for (int k = 0; k < PER_ORIGIN; k++) {
            int i = o * PER_ORIGIN + k;
            char name[32];
            snprintf(name, sizeof name, "svc.fn-%03d", i % 1000);
            mp_entry e;
            if (mp_entry_function(&e, node, "c1", name, "", "1.2.0") != MPREG_OK ||
                mp_strlist_push(&e.u.function.resources, "cpu") != MPREG_OK ||
                mp_strlist_push(&e.u.function.resources, "gpu") != MPREG_OK) {
                die_oom("building entries");
            }
            e.version = (mp_entry_version){1, (uint64_t)k + 1};
            e.ttl_ms = 30000;
            if (mp_delta_take_entry(d, &e) != MPREG_OK) {
                die_oom("mp_delta_take_entry");
            }
        }
    }
}

/* Applies every delta; returns entries per second and checks the outcome. */
static double apply_all(mp_catalog *c, const mp_delta *deltas, bool expect_stale) {
    double t0 = now_sec();
    mp_apply_stats total = {0};
    for (int o = 0; o < ORIGINS; o++) {
        mp_apply_stats st;
        if (mp_catalog_apply_delta(c, &deltas[o], 1000, &st) != MPREG_OK) {
            die_oom("mp_catalog_apply_delta");
        }
        total.added += st.added;
        total.stale += st.stale;
    }
    double elapsed = now_sec() - t0;
    uint32_t want = ENTRIES;
    if ((expect_stale ? total.stale : total.added) != want) {
        fprintf(stderr, "bench_catalog: unexpected apply outcome (added %u, stale %u)\n",
                total.added, total.stale);
        exit(1);
    }
    return (double)ENTRIES / elapsed;
}

static void bench_apply(void) {
    mp_delta *deltas = calloc(ORIGINS, sizeof *deltas);
    if (!deltas) {
        die_oom("calloc");
    }
    build_deltas(deltas);
    double fresh[RUNS], stale[RUNS];
    mp_catalog *c = NULL;
    for (int r = 0; r < RUNS; r++) {
        mp_catalog_free(c);
        c = new_catalog();
        fresh[r] = apply_all(c, deltas, false);
    }
    for (int r = 0; r < RUNS; r++) {
        stale[r] = apply_all(c, deltas, true);
    }
    printf("BENCH mpreg catalog_apply entries=%d delta_size=%d entries_per_sec=%.0f\n", ENTRIES,
           DELTA_SIZE, median(fresh, RUNS));
    printf("BENCH mpreg catalog_apply_stale entries=%d delta_size=%d entries_per_sec=%.0f\n",
           ENTRIES, DELTA_SIZE, median(stale, RUNS));
    mp_catalog_free(c);
    for (int o = 0; o < ORIGINS; o++) {
        mp_delta_free(&deltas[o]);
    }
    free(deltas);
}

/* --- topic match ------------------------------------------------------------ */

static const char *word(mp_rng *r) {
    static char words[VOCAB][8];
    static bool ready;
    if (!ready) {
        for (int i = 0; i < VOCAB; i++) {
            snprintf(words[i], sizeof words[i], "w%03d", i);
        }
        ready = true;
    }
    return words[mp_rng_below(r, VOCAB)];
}

/* 60% literal a.b.c, 25% one '*', 15% a trailing or leading '#'. */
static void make_pattern(mp_rng *r, bench_text *p) {
    const char *w[3] = {word(r), word(r), word(r)};
    uint64_t kind = mp_rng_below(r, 100);
    if (kind >= 85) {
        w[mp_rng_below(r, 2) ? 2 : 0] = "#";
    } else if (kind >= 60) {
        w[mp_rng_below(r, 3)] = "*";
    }
    p->len = (size_t)snprintf(p->text, sizeof p->text, "%s.%s.%s", w[0], w[1], w[2]);
}

static void build_interests(mp_catalog *c, mp_rng *r) {
    for (int n = 0; n < TOPIC_NODES; n++) {
        char node[32];
        snprintf(node, sizeof node, "node-%04d", n);
        for (int k = 0; k < PATTERNS_PER_NODE; k++) {
            bench_text p;
            make_pattern(r, &p);
            mp_entry e;
            if (mp_entry_topic(&e, node, "c1", p.text) != MPREG_OK) {
                die_oom("mp_entry_topic");
            }
            e.version = (mp_entry_version){1, (uint64_t)k + 1};
            if (mp_catalog_apply_entry(c, &e, 0, NULL) != MPREG_OK) {
                die_oom("mp_catalog_apply_entry");
            }
            mp_entry_free(&e);
        }
    }
}

static void count_node(void *ud, const char *node) {
    (void)node;
    (*(size_t *)ud)++;
}

static void bench_match(void) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0xCA7A10CULL);
    mp_catalog *c = new_catalog();
    build_interests(c, &x.rng);
    bench_text *topics = malloc(TOPIC_POOL * sizeof *topics);
    if (!topics) {
        die_oom("malloc");
    }
    for (int i = 0; i < TOPIC_POOL; i++) {
        topics[i].len = (size_t)snprintf(topics[i].text, sizeof topics[i].text, "%s.%s.%s",
                                         word(&x.rng), word(&x.rng), word(&x.rng));
    }
    double rates[RUNS];
    size_t matches = 0, nodes = 0, cursor = 0;
    for (int b = -1; b < RUNS; b++) { /* b = -1 warms up */
        size_t done = 0;
        double t0 = now_sec(), elapsed;
        do {
            for (int k = 0; k < 1024; k++) {
                const bench_text *t = &topics[cursor];
                cursor = (cursor + 1) % TOPIC_POOL;
                mp_catalog_match_topic(c, t->text, t->len, count_node, &nodes);
            }
            done += 1024;
            elapsed = now_sec() - t0;
        } while (elapsed < BATCH_SECONDS);
        if (b >= 0) {
            rates[b] = (double)done / elapsed;
            matches += done;
        } else {
            nodes = 0;
        }
    }
    printf("BENCH mpreg catalog_match_topic interests=%zu nodes=%d matches_per_sec=%.0f "
           "avg_nodes=%.3f\n",
           mp_catalog_count(c, MP_ENTRY_TOPIC), TOPIC_NODES, median(rates, RUNS),
           (double)nodes / (double)matches);
    free(topics);
    mp_catalog_free(c);
}

int main(void) {
    bench_apply();
    bench_match();
    return 0;
}
