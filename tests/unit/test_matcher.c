/* test_matcher.c - the subscription trie, and a property test against an
 * independent reference matcher. */
#include "core/matcher.h"
#include "core/rng.h"
#include "core/topic.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_HITS 64

/* Collects the subscriptions a match reports, in call order. */
typedef struct hits {
    size_t n;
    uint64_t subs[MAX_HITS];
} hits;

static void on_hit(void *ud, uint64_t sub) {
    hits *h = ud;
    cr_assert_lt(h->n, MAX_HITS);
    h->subs[h->n++] = sub;
}

static size_t match(mp_matcher *m, const char *topic, hits *h) {
    h->n = 0;
    size_t r = mp_matcher_match(m, topic, strlen(topic), on_hit, h);
    cr_assert_eq(r, h->n, "match returned %zu but called back %zu times", r, h->n);
    return r;
}

static bool has(const hits *h, uint64_t sub) {
    for (size_t i = 0; i < h->n; i++) {
        if (h->subs[i] == sub) {
            return true;
        }
    }
    return false;
}

static mpreg_err add(mp_matcher *m, uint64_t sub, const char *pattern) {
    return mp_matcher_add(m, sub, pattern, strlen(pattern));
}

static mpreg_err del(mp_matcher *m, uint64_t sub, const char *pattern) {
    return mp_matcher_remove(m, sub, pattern, strlen(pattern));
}

Test(matcher, add_match_remove) {
    mp_matcher *m = mp_matcher_new();
    hits h;
    cr_assert_eq(add(m, 1, "a.b"), MPREG_OK);
    cr_assert_eq(add(m, 2, "a.*"), MPREG_OK);
    cr_assert_eq(add(m, 3, "#.c"), MPREG_OK);
    cr_expect_eq(mp_matcher_sub_count(m), 3);
    cr_expect_eq(mp_matcher_pattern_count(m), 3);

    cr_expect_eq(match(m, "a.b", &h), 2);
    cr_expect(has(&h, 1) && has(&h, 2));
    cr_expect_eq(match(m, "a.c", &h), 2);
    cr_expect(has(&h, 2) && has(&h, 3));
    cr_expect_eq(match(m, "c", &h), 1);
    cr_expect_eq(match(m, "x.y", &h), 0);
    cr_expect_eq(match(m, "a", &h), 0);

    cr_expect_eq(del(m, 2, "a.*"), MPREG_OK);
    cr_expect_eq(match(m, "a.b", &h), 1);
    cr_expect(has(&h, 1));
    cr_expect_eq(del(m, 2, "a.*"), MPREG_E_NOT_FOUND);
    cr_expect_eq(del(m, 1, "a.c"), MPREG_E_NOT_FOUND);
    cr_expect_eq(del(m, 3, "a.b"), MPREG_E_NOT_FOUND, "pattern of another subscription");
    cr_expect_eq(mp_matcher_sub_count(m), 2);
    mp_matcher_free(m);
}

Test(matcher, rejects_invalid_patterns_and_topics) {
    mp_matcher *m = mp_matcher_new();
    hits h;
    cr_expect_eq(add(m, 1, "a*"), MPREG_E_TOPIC);
    cr_expect_eq(add(m, 1, ""), MPREG_E_TOPIC);
    cr_expect_eq(add(m, 1, "a..b"), MPREG_E_TOPIC);
    cr_expect_eq(mp_matcher_pattern_count(m), 0);
    cr_expect_eq(mp_matcher_sub_count(m), 0);
    cr_expect_eq(mp_matcher_node_count(m), 0);
    cr_expect_eq(del(m, 1, "a*"), MPREG_E_NOT_FOUND);

    cr_assert_eq(add(m, 1, "#"), MPREG_OK);
    cr_expect_eq(match(m, "a.*", &h), 0, "a topic with a wildcard is invalid");
    cr_expect_eq(match(m, "", &h), 0);
    cr_expect_eq(match(m, "a", &h), 1);
    mp_matcher_free(m);
}

Test(matcher, one_report_per_subscription) {
    mp_matcher *m = mp_matcher_new();
    hits h;
    /* several patterns of one subscription all match */
    cr_assert_eq(add(m, 7, "a.b.c"), MPREG_OK);
    cr_assert_eq(add(m, 7, "a.*.c"), MPREG_OK);
    cr_assert_eq(add(m, 7, "#"), MPREG_OK);
    cr_assert_eq(add(m, 7, "a.#"), MPREG_OK);
    cr_assert_eq(add(m, 8, "a.#"), MPREG_OK);
    cr_expect_eq(match(m, "a.b.c", &h), 2);
    cr_expect(has(&h, 7) && has(&h, 8));
    /* the next match reports them again: dedupe is per match */
    cr_expect_eq(match(m, "a.b.c", &h), 2);
    mp_matcher_free(m);
}

Test(matcher, one_report_across_hash_paths) {
    mp_matcher *m = mp_matcher_new();
    hits h;
    /* "#.a.#" matches "a.a.a" three ways; "#.#.#" in many ways */
    cr_assert_eq(add(m, 1, "#.a.#"), MPREG_OK);
    cr_assert_eq(add(m, 2, "#.#.#"), MPREG_OK);
    cr_assert_eq(add(m, 3, "#.*.#"), MPREG_OK);
    cr_assert_eq(add(m, 4, "a.#.#.a"), MPREG_OK);
    cr_expect_eq(match(m, "a.a.a", &h), 4);
    cr_expect_eq(match(m, "a.a.a.a.a.a", &h), 4);
    cr_expect_eq(match(m, "b", &h), 2);
    cr_expect(has(&h, 2) && has(&h, 3));
    cr_expect_eq(match(m, "a", &h), 3, "'a.#.#.a' needs two words");
    mp_matcher_free(m);
}

Test(matcher, idempotent_add) {
    mp_matcher *m = mp_matcher_new();
    hits h;
    cr_assert_eq(add(m, 1, "x.*"), MPREG_OK);
    size_t nodes = mp_matcher_node_count(m);
    cr_assert_eq(add(m, 1, "x.*"), MPREG_OK);
    cr_expect_eq(mp_matcher_pattern_count(m), 1);
    cr_expect_eq(mp_matcher_node_count(m), nodes);
    cr_expect_eq(match(m, "x.y", &h), 1);
    cr_expect_eq(del(m, 1, "x.*"), MPREG_OK);
    cr_expect_eq(del(m, 1, "x.*"), MPREG_E_NOT_FOUND);
    cr_expect_eq(match(m, "x.y", &h), 0);
    mp_matcher_free(m);
}

Test(matcher, remove_sub_drops_every_pattern) {
    mp_matcher *m = mp_matcher_new();
    hits h;
    cr_assert_eq(add(m, 1, "a"), MPREG_OK);
    cr_assert_eq(add(m, 1, "a.#"), MPREG_OK);
    cr_assert_eq(add(m, 1, "*.b"), MPREG_OK);
    cr_assert_eq(add(m, 2, "a.#"), MPREG_OK);
    mp_matcher_remove_sub(m, 1);
    cr_expect_eq(mp_matcher_sub_count(m), 1);
    cr_expect_eq(mp_matcher_pattern_count(m), 1);
    cr_expect_eq(match(m, "a", &h), 1);
    cr_expect(has(&h, 2));
    cr_expect_eq(match(m, "x.b", &h), 0);
    mp_matcher_remove_sub(m, 1); /* unknown now: ignored */
    mp_matcher_remove_sub(m, 2);
    cr_expect_eq(mp_matcher_sub_count(m), 0);
    cr_expect_eq(mp_matcher_pattern_count(m), 0);
    cr_expect_eq(mp_matcher_node_count(m), 0);
    mp_matcher_free(m);
}

Test(matcher, prunes_to_nothing) {
    static const char *patterns[] = {"a",     "a.b",   "a.b.c", "a.*.c", "#",     "#.c",
                                     "a.#",   "*.*",   "*",     "#.#",   "x.#.y", "x.*.#",
                                     "b.c.d", "a.b.d", "*.b.#", "#.*"};
    size_t np = sizeof patterns / sizeof patterns[0];
    mp_matcher *m = mp_matcher_new();
    for (uint64_t sub = 0; sub < 5; sub++) {
        for (size_t i = 0; i < np; i++) {
            cr_assert_eq(add(m, sub, patterns[i]), MPREG_OK);
        }
    }
    cr_expect_eq(mp_matcher_pattern_count(m), 5 * np);
    size_t full = mp_matcher_node_count(m);
    cr_expect_gt(full, 0);
    /* Remove in a different order than added; a deep pattern going first
     * must leave the shallower ones intact. */
    for (uint64_t sub = 0; sub < 5; sub++) {
        for (size_t i = np; i-- > 0;) {
            cr_assert_eq(del(m, sub, patterns[(i * 7) % np]), MPREG_OK);
        }
        if (sub < 4) {
            cr_expect_eq(mp_matcher_node_count(m), full, "nodes still shared by other subs");
        }
    }
    cr_expect_eq(mp_matcher_pattern_count(m), 0);
    cr_expect_eq(mp_matcher_sub_count(m), 0);
    cr_expect_eq(mp_matcher_node_count(m), 0);
    /* and it still works afterwards */
    cr_assert_eq(add(m, 9, "a.b"), MPREG_OK);
    cr_expect_eq(mp_matcher_node_count(m), 2);
    mp_matcher_free(m); /* frees what is left: ASan checks for leaks */
}

Test(matcher, many_subs_on_one_pattern) {
    mp_matcher *m = mp_matcher_new();
    for (uint64_t sub = 0; sub < 1000; sub++) {
        cr_assert_eq(add(m, sub, "t.#"), MPREG_OK);
    }
    cr_expect_eq(mp_matcher_match(m, "t.a.b", 5, NULL, NULL), 1000);
    for (uint64_t sub = 0; sub < 1000; sub += 2) {
        mp_matcher_remove_sub(m, sub);
    }
    cr_expect_eq(mp_matcher_match(m, "t", 1, NULL, NULL), 500);
    cr_expect_eq(mp_matcher_node_count(m), 2);
    mp_matcher_free(m);
}

/* Nodes with many literal children: they grow from one child to an array
 * to a table and shrink back as children go. Checked at every step. */
Test(matcher, wide_nodes_grow_and_shrink) {
    enum { N = 300 };
    mp_matcher *m = mp_matcher_new();
    char pat[32], topic[32];
    for (int i = 0; i < N; i++) {
        sprintf(pat, "w%d.x", i);
        cr_assert_eq(add(m, (uint64_t)i, pat), MPREG_OK);
        sprintf(pat, "p.w%d", i);
        cr_assert_eq(add(m, (uint64_t)i, pat), MPREG_OK);
        for (int j = 0; j <= i; j += 1 + i / 8) {
            sprintf(topic, "p.w%d", j);
            cr_assert_eq(mp_matcher_match(m, topic, strlen(topic), NULL, NULL), 1, "%s", topic);
        }
    }
    cr_expect_eq(mp_matcher_node_count(m), 2 * N + 1 + N);
    /* remove in a scattered order, checking the survivors */
    for (int k = 0; k < N; k++) {
        int i = (k * 7919) % N;
        sprintf(pat, "p.w%d", i);
        cr_assert_eq(del(m, (uint64_t)i, pat), MPREG_OK);
        sprintf(topic, "p.w%d", i);
        cr_assert_eq(mp_matcher_match(m, topic, strlen(topic), NULL, NULL), 0);
        for (int j = 0; j < N; j += 1 + k / 8) {
            bool gone = false;
            for (int q = 0; q <= k && !gone; q++) {
                gone = (q * 7919) % N == j;
            }
            sprintf(topic, "p.w%d", j);
            cr_assert_eq(mp_matcher_match(m, topic, strlen(topic), NULL, NULL), gone ? 0 : 1,
                         "%s after %d removals", topic, k + 1);
            sprintf(topic, "w%d.x", j);
            cr_assert_eq(mp_matcher_match(m, topic, strlen(topic), NULL, NULL), 1);
        }
    }
    for (int i = 0; i < N; i++) {
        mp_matcher_remove_sub(m, (uint64_t)i);
    }
    cr_expect_eq(mp_matcher_node_count(m), 0);
    mp_matcher_free(m);
}

/* Nodes keep a word's first 15 bytes inline and the rest apart: words
 * around that length, and words equal up to it, must still be told apart. */
Test(matcher, long_words) {
    static const char *words[] = {
        "abcdefghijklmn",
        "abcdefghijklmno",
        "abcdefghijklmnop",
        "abcdefghijklmnoq",
        "abcdefghijklmnopq",
        "abcdefghijklmnopqrstuvwxyz0123456789",
        "abcdefghijklmnopqrstuvwxyz0123456788",
    };
    enum { NW = sizeof words / sizeof words[0] };
    mp_matcher *m = mp_matcher_new();
    hits h;
    char buf[600];
    for (int i = 0; i < NW; i++) {
        sprintf(buf, "%s.end", words[i]);
        cr_assert_eq(add(m, (uint64_t)i, buf), MPREG_OK);
        cr_assert_eq(add(m, 100 + (uint64_t)i, words[i]), MPREG_OK);
    }
    cr_assert_eq(add(m, 99, "*.end"), MPREG_OK);
    for (int i = 0; i < NW; i++) {
        sprintf(buf, "%s.end", words[i]);
        cr_expect_eq(match(m, buf, &h), 2, "%s", buf);
        cr_expect(has(&h, (uint64_t)i) && has(&h, 99), "%s", buf);
        cr_expect_eq(match(m, words[i], &h), 1, "%s", words[i]);
        cr_expect(has(&h, 100 + (uint64_t)i));
    }
    cr_expect_eq(match(m, "abcdefghijklmnoz.end", &h), 1);
    cr_expect_eq(match(m, "abcdefghijklmnopqrstuvwxyz0123456787.end", &h), 1);
    cr_expect_eq(match(m, "abcdefghijklmnopqrstuvwxyz0123456789x", &h), 0);

    /* one word of the maximum length */
    memset(buf, 'w', MP_TOPIC_MAX_LEN);
    cr_assert_eq(mp_matcher_add(m, 7, buf, MP_TOPIC_MAX_LEN), MPREG_OK);
    cr_expect_eq(mp_matcher_match(m, buf, MP_TOPIC_MAX_LEN, NULL, NULL), 1);
    buf[MP_TOPIC_MAX_LEN - 1] = 'v';
    cr_expect_eq(mp_matcher_match(m, buf, MP_TOPIC_MAX_LEN, NULL, NULL), 0);
    buf[MP_TOPIC_MAX_LEN - 1] = 'w';
    cr_expect_eq(mp_matcher_remove(m, 7, buf, MP_TOPIC_MAX_LEN), MPREG_OK);

    for (uint64_t sub = 0; sub < 200; sub++) {
        mp_matcher_remove_sub(m, sub);
    }
    cr_expect_eq(mp_matcher_node_count(m), 0);
    mp_matcher_free(m);
}

Test(matcher, pathological_patterns_are_cheap) {
    char pat[600], topic[600];
    size_t tlen = 0;
    for (int i = 0; i < MP_TOPIC_MAX_WORDS; i++) {
        tlen += (size_t)sprintf(topic + tlen, "%sb", i ? "." : "");
    }
    mp_matcher *m = mp_matcher_new();
    size_t plen = 0;
    for (int k = 0; k < MP_TOPIC_MAX_WORDS - 1; k++) {
        plen += (size_t)sprintf(pat + plen, "%s#", k ? "." : "");
        cr_assert_eq(mp_matcher_add(m, 1, pat, plen), MPREG_OK);
        char tail[600];
        int n = sprintf(tail, "%.*s.a", (int)plen, pat);
        cr_assert_eq(mp_matcher_add(m, 2, tail, (size_t)n), MPREG_OK);
    }
    clock_t t0 = clock();
    for (int i = 0; i < 2000; i++) {
        cr_assert_eq(mp_matcher_match(m, topic, tlen, NULL, NULL), 1);
    }
    topic[tlen - 1] = 'a';
    cr_assert_eq(mp_matcher_match(m, topic, tlen, NULL, NULL), 2);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    cr_expect_lt(secs, 2.0, "2000 pathological matches took %.2fs", secs);
    mp_matcher_free(m);
}

/* --- property test -------------------------------------------------------
 * The reference is deliberately written apart from topic.c: its own word
 * splitting and a plain recursive definition of the semantics. */

/* The small runs draw from the first 5 words, so that matches are frequent;
 * the wide runs from all 24, so that trie nodes get many literal children
 * (they change representation past 1 and 8 children, and back). */
#define VOCAB_MAX 24
static const char *const vocab[VOCAB_MAX] = {
    "a", "b", "c", "dd", "e", "f", "g", "h", "i", "j", "k", "l", "m", "nn", "o", "p", "q", "r", "s",
    "t", "u", "xyz",
    /* longer than the 15 bytes a trie node keeps inline, equal up to there */
    "abcdefghijklmnopq1", "abcdefghijklmnopq2"};

typedef struct ref_words {
    int n;
    char w[8][20];
} ref_words;

static void ref_split(const char *s, ref_words *out) {
    out->n = 0;
    int k = 0;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            out->w[out->n++][k] = '\0';
            k = 0;
            if (*p == '\0') {
                return;
            }
        } else {
            out->w[out->n][k++] = *p;
        }
    }
}

static bool ref_match(const ref_words *p, int i, const ref_words *t, int j) {
    if (i == p->n) {
        return j == t->n;
    }
    if (strcmp(p->w[i], "#") == 0) {
        return ref_match(p, i + 1, t, j) || (j < t->n && ref_match(p, i, t, j + 1));
    }
    if (j == t->n) {
        return false;
    }
    if (strcmp(p->w[i], "*") == 0 || strcmp(p->w[i], t->w[j]) == 0) {
        return ref_match(p, i + 1, t, j + 1);
    }
    return false;
}

#define PROP_SUBS 12
#define PROP_MAX_BINDS 64

typedef struct prop_bind {
    uint64_t sub;
    char pattern[96];
    ref_words words;
} prop_bind;

typedef struct prop_model {
    size_t n;
    prop_bind binds[PROP_MAX_BINDS];
} prop_model;

typedef struct prop_run {
    mp_rng *rng;
    uint64_t vocab_n;
} prop_run;

static void rand_text(const prop_run *pr, char *out, int nwords, bool wild) {
    mp_rng *r = pr->rng;
    size_t len = 0;
    for (int i = 0; i < nwords; i++) {
        const char *w;
        uint64_t roll = mp_rng_below(r, 10);
        if (wild && roll < 2) {
            w = "*";
        } else if (wild && roll < 4) {
            w = "#";
        } else {
            w = vocab[mp_rng_below(r, pr->vocab_n)];
        }
        len += (size_t)sprintf(out + len, "%s%s", i ? "." : "", w);
    }
}

static int model_find(const prop_model *md, uint64_t sub, const char *pattern) {
    for (size_t i = 0; i < md->n; i++) {
        if (md->binds[i].sub == sub && strcmp(md->binds[i].pattern, pattern) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static void model_drop(prop_model *md, size_t i) {
    md->binds[i] = md->binds[--md->n];
}

static void prop_add(mp_matcher *m, prop_model *md, const prop_run *pr) {
    mp_rng *r = pr->rng;
    prop_bind b;
    b.sub = mp_rng_below(r, PROP_SUBS);
    rand_text(pr, b.pattern, 1 + (int)mp_rng_below(r, 4), true);
    cr_assert_eq(add(m, b.sub, b.pattern), MPREG_OK, "add '%s'", b.pattern);
    if (model_find(md, b.sub, b.pattern) < 0) {
        ref_split(b.pattern, &b.words);
        md->binds[md->n++] = b;
    }
}

static void prop_remove(mp_matcher *m, prop_model *md, const prop_run *pr) {
    mp_rng *r = pr->rng;
    if (md->n == 0 || mp_rng_below(r, 8) == 0) {
        /* a pattern that may well not be bound */
        char pattern[96];
        uint64_t sub = mp_rng_below(r, PROP_SUBS);
        rand_text(pr, pattern, 1 + (int)mp_rng_below(r, 4), true);
        int i = model_find(md, sub, pattern);
        cr_assert_eq(del(m, sub, pattern), i < 0 ? MPREG_E_NOT_FOUND : MPREG_OK);
        if (i >= 0) {
            model_drop(md, (size_t)i);
        }
        return;
    }
    size_t i = mp_rng_below(r, md->n);
    cr_assert_eq(del(m, md->binds[i].sub, md->binds[i].pattern), MPREG_OK);
    model_drop(md, i);
}

static void prop_remove_sub(mp_matcher *m, prop_model *md, const prop_run *pr) {
    mp_rng *r = pr->rng;
    uint64_t sub = mp_rng_below(r, PROP_SUBS);
    mp_matcher_remove_sub(m, sub);
    for (size_t i = md->n; i-- > 0;) {
        if (md->binds[i].sub == sub) {
            model_drop(md, i);
        }
    }
}

static void prop_check(mp_matcher *m, const prop_model *md, const prop_run *pr) {
    mp_rng *r = pr->rng;
    char topic[128];
    rand_text(pr, topic, 1 + (int)mp_rng_below(r, 6), false);
    ref_words tw;
    ref_split(topic, &tw);

    bool want[PROP_SUBS] = {false};
    size_t nwant = 0;
    for (size_t i = 0; i < md->n; i++) {
        const prop_bind *b = &md->binds[i];
        bool ref = ref_match(&b->words, 0, &tw, 0);
        bool direct = mp_pattern_matches(b->pattern, strlen(b->pattern), topic, strlen(topic));
        cr_assert_eq(direct, ref, "mp_pattern_matches('%s', '%s') = %d", b->pattern, topic, direct);
        if (ref && !want[b->sub]) {
            want[b->sub] = true;
            nwant++;
        }
    }

    hits h;
    size_t got = match(m, topic, &h);
    cr_assert_eq(got, nwant, "topic '%s': %zu subscriptions matched, expected %zu", topic, got,
                 nwant);
    bool seen[PROP_SUBS] = {false};
    for (size_t i = 0; i < h.n; i++) {
        cr_assert_lt(h.subs[i], PROP_SUBS);
        cr_assert(want[h.subs[i]], "topic '%s': sub %llu reported but matches nothing", topic,
                  (unsigned long long)h.subs[i]);
        cr_assert_not(seen[h.subs[i]], "topic '%s': sub %llu reported twice", topic,
                      (unsigned long long)h.subs[i]);
        seen[h.subs[i]] = true;
    }
    cr_assert_eq(mp_matcher_pattern_count(m), md->n);
}

/* Random adds, removes and remove_subs, each step followed by a random
 * topic checked against the model. The matcher is replaced every few
 * thousand steps so that many pattern sets are seen. */
static void prop_run_steps(uint64_t seed, uint64_t vocab_n, size_t cases, size_t max_binds) {
    mp_xoshiro x;
    mp_xoshiro_seed(&x, seed);
    prop_run pr = {&x.rng, vocab_n};
    mp_rng *r = pr.rng;
    const size_t per_matcher = 3000;
    mp_matcher *m = NULL;
    prop_model md;
    for (size_t step = 0; step < cases; step++) {
        if (step % per_matcher == 0) {
            mp_matcher_free(m);
            m = mp_matcher_new();
            cr_assert_not_null(m);
            md.n = 0;
        }
        uint64_t roll = mp_rng_below(r, 100);
        if (roll < 30 && md.n < max_binds) {
            prop_add(m, &md, &pr);
        } else if (roll < 30 + (md.n > max_binds * 2 / 3 ? 35 : 15)) {
            prop_remove(m, &md, &pr);
        } else if (roll < 52) {
            prop_remove_sub(m, &md, &pr);
        }
        prop_check(m, &md, &pr);
        if (md.n == 0) {
            cr_assert_eq(mp_matcher_node_count(m), 0, "empty matcher kept trie nodes");
        }
    }
    mp_matcher_free(m);
}

Test(matcher, property_vs_reference) {
    prop_run_steps(0x70F1C5EEDULL, 5, 100000, 32);
}

Test(matcher, property_vs_reference_wide) {
    prop_run_steps(0xD1CE5EEDULL, VOCAB_MAX, 50000, PROP_MAX_BINDS);
}
