/* bench_matcher.c - topic matches per second against 1k, 10k and 100k
 * subscriptions.
 *
 * Each subscription holds one pattern of 2-5 words drawn from a 10k-word
 * vocabulary: 70% literal, 20% with '*' and 10% with '#', wildcards at any
 * position. Topics are random 3-5 word topics over the same vocabulary, so
 * most match nothing or little. The figure that matters is the last line:
 * matching must not slow down because of subscriptions that do not match. */
#define _POSIX_C_SOURCE 200809L

#include "core/matcher.h"
#include "core/rng.h"
#include "core/topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define VOCAB_WORDS 10000
#define TOPIC_POOL 8192
#define BATCHES 5
#define BATCH_SECONDS 0.3

typedef struct bench_word {
    char text[12];
} bench_word;

typedef struct bench_text {
    size_t len;
    char text[MP_TOPIC_MAX_LEN + 1];
} bench_text;

/* The thread's CPU time, not the wall clock: the bench is single-threaded
 * and shares a small machine, and time spent descheduled is not the
 * matcher's. */
static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Lower-case words of 3-10 letters; a duplicate now and then is harmless. */
static void make_vocab(mp_rng *r, bench_word *vocab) {
    for (size_t i = 0; i < VOCAB_WORDS; i++) {
        size_t len = 3 + mp_rng_below(r, 8);
        for (size_t k = 0; k < len; k++) {
            vocab[i].text[k] = (char)('a' + mp_rng_below(r, 26));
        }
        vocab[i].text[len] = '\0';
    }
}

static void text_append(bench_text *t, const char *word) {
    t->len += (size_t)sprintf(t->text + t->len, "%s%s", t->len ? "." : "", word);
}

/* A pattern: literal words, then for 30% of patterns a wildcard in place of
 * a word, at any position: '#' (10%) or '*' (20%, a quarter of those with a
 * second '*'). */
static void make_pattern(mp_rng *r, const bench_word *vocab, bench_text *out) {
    size_t n = 2 + mp_rng_below(r, 4);
    const char *words[5];
    for (size_t i = 0; i < n; i++) {
        words[i] = vocab[mp_rng_below(r, VOCAB_WORDS)].text;
    }
    uint64_t kind = mp_rng_below(r, 100);
    if (kind >= 90) {
        words[mp_rng_below(r, n)] = "#";
    } else if (kind >= 70) {
        words[mp_rng_below(r, n)] = "*";
        if (mp_rng_below(r, 4) == 0) {
            words[mp_rng_below(r, n)] = "*";
        }
    }
    out->len = 0;
    for (size_t i = 0; i < n; i++) {
        text_append(out, words[i]);
    }
}

static void make_topic(mp_rng *r, const bench_word *vocab, bench_text *out) {
    size_t n = 3 + mp_rng_below(r, 3);
    out->len = 0;
    for (size_t i = 0; i < n; i++) {
        text_append(out, vocab[mp_rng_below(r, VOCAB_WORDS)].text);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One subscription count under test: its matcher and its measurements. */
typedef struct bench_size {
    size_t subs;
    mp_matcher *m;
    size_t cursor;
    size_t matches;
    size_t hits;
    double rates[BATCHES];
} bench_size;

/* One batch: match pool topics round-robin until BATCH_SECONDS have passed.
 * Returns matches per second and adds to the totals. */
static double run_batch(bench_size *b, const bench_text *topics) {
    size_t done = 0;
    double t0 = now_sec(), elapsed;
    do {
        for (int k = 0; k < 1024; k++) {
            const bench_text *t = &topics[b->cursor];
            b->cursor = (b->cursor + 1) % TOPIC_POOL;
            b->hits += mp_matcher_match(b->m, t->text, t->len, NULL, NULL);
        }
        done += 1024;
        elapsed = now_sec() - t0;
    } while (elapsed < BATCH_SECONDS);
    b->matches += done;
    return (double)done / elapsed;
}

static void build(bench_size *b, const bench_word *vocab) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0xBE4C4000ULL + b->subs);
    b->m = mp_matcher_new();
    if (!b->m) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < b->subs; i++) {
        bench_text p;
        make_pattern(&x.rng, vocab, &p);
        if (mp_matcher_add(b->m, i, p.text, p.len) != MPREG_OK) {
            fprintf(stderr, "add '%s' failed\n", p.text);
            exit(1);
        }
    }
}

static double median(double *v, size_t n) {
    qsort(v, n, sizeof v[0], cmp_double);
    return v[n / 2];
}

int main(void) {
    static const size_t sizes[] = {1000, 10000, 100000};
    enum { NSIZES = sizeof sizes / sizeof sizes[0] };
    bench_word *vocab = malloc(VOCAB_WORDS * sizeof *vocab);
    bench_text *topics = malloc(TOPIC_POOL * sizeof *topics);
    if (!vocab || !topics) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    mp_xoshiro x;
    mp_xoshiro_seed(&x, 0x70F1CULL);
    make_vocab(&x.rng, vocab);
    for (size_t i = 0; i < TOPIC_POOL; i++) {
        make_topic(&x.rng, vocab, &topics[i]);
    }
    bench_size runs[NSIZES];
    for (size_t i = 0; i < NSIZES; i++) {
        runs[i] = (bench_size){.subs = sizes[i]};
        build(&runs[i], vocab);
        run_batch(&runs[i], topics); /* warm up */
        runs[i].matches = runs[i].hits = 0;
    }
    /* Sizes take turns batch by batch, so a noisy neighbour on a shared
     * machine slows all of them alike instead of skewing the ratio. */
    for (int b = 0; b < BATCHES; b++) {
        for (size_t i = 0; i < NSIZES; i++) {
            runs[i].rates[b] = run_batch(&runs[i], topics);
        }
    }
    double rate[NSIZES];
    for (size_t i = 0; i < NSIZES; i++) {
        rate[i] = median(runs[i].rates, BATCHES);
        printf("BENCH mpreg topic_match subs=%zu matches_per_sec=%.0f avg_hits=%.4f\n", sizes[i],
               rate[i], (double)runs[i].hits / (double)runs[i].matches);
        mp_matcher_free(runs[i].m);
    }
    printf("BENCH mpreg topic_match_scaling ratio_100k_over_1k=%.3f\n", rate[NSIZES - 1] / rate[0]);
    free(topics);
    free(vocab);
    return 0;
}
