/* fuzz_topic.c - topic/pattern validation and the trie matcher against the
 * single-pattern matcher.
 *
 * Input: NUL-separated segments. The first is a pattern, the second a topic
 * (without a NUL, the input is both), any further ones more patterns. Every
 * segment is validated as topic and as pattern. When the topic is valid,
 * pattern i is bound to subscription i + 1 and also to subscription 0, and
 * one match must report exactly the subscriptions whose pattern matches
 * according to mp_pattern_matches, each once (subscription 0 once if any
 * does). Removing everything must leave an empty trie. */
#include "core/matcher.h"
#include "core/topic.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PATTERNS 8

typedef struct seg {
    const char *ptr;
    size_t len;
} seg;

typedef struct fuzz_hits {
    uint32_t count[MAX_PATTERNS + 1];
} fuzz_hits;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_hit(void *ud, uint64_t sub) {
    fuzz_hits *h = ud;
    if (sub > MAX_PATTERNS) {
        abort();
    }
    h->count[sub]++;
}

static size_t split(const uint8_t *data, size_t size, seg *segs, size_t max) {
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < max; i++) {
        if (i == size || data[i] == 0) {
            segs[n++] = (seg){(const char *)data + start, i - start};
            start = i + 1;
        }
    }
    return n;
}

/* Validation must be total and consistent: a valid topic is a valid
 * pattern, and a literal pattern matches exactly itself. */
static void check_syntax(seg s) {
    const char *why = NULL;
    mpreg_err te = mp_topic_validate(s.ptr, s.len, &why);
    if (te != MPREG_OK && (te != MPREG_E_TOPIC || !why)) {
        abort();
    }
    mpreg_err pe = mp_pattern_validate(s.ptr, s.len, &why);
    if (pe != MPREG_OK && (pe != MPREG_E_TOPIC || !why)) {
        abort();
    }
    if (te == MPREG_OK && pe != MPREG_OK) {
        abort();
    }
    if (te == MPREG_OK &&
        (!mp_pattern_is_literal(s.ptr, s.len) || !mp_pattern_matches(s.ptr, s.len, s.ptr, s.len))) {
        abort();
    }
}

static void check_match(const seg *patterns, size_t np, seg topic) {
    mp_matcher *m = mp_matcher_new();
    if (!m) {
        abort();
    }
    bool expect[MAX_PATTERNS + 1] = {false};
    bool bound[MAX_PATTERNS] = {false};
    for (size_t i = 0; i < np; i++) {
        seg p = patterns[i];
        bool valid = mp_pattern_validate(p.ptr, p.len, NULL) == MPREG_OK;
        mpreg_err err = mp_matcher_add(m, i + 1, p.ptr, p.len);
        if (err != (valid ? MPREG_OK : MPREG_E_TOPIC)) {
            abort();
        }
        if (valid && mp_matcher_add(m, 0, p.ptr, p.len) != MPREG_OK) {
            abort();
        }
        bound[i] = valid;
        if (valid && mp_pattern_matches(p.ptr, p.len, topic.ptr, topic.len)) {
            expect[i + 1] = true;
            expect[0] = true;
        }
    }
    fuzz_hits h = {{0}};
    size_t got = mp_matcher_match(m, topic.ptr, topic.len, on_hit, &h);
    size_t want = 0;
    for (size_t s = 0; s <= MAX_PATTERNS; s++) {
        if (h.count[s] != (expect[s] ? 1u : 0u)) {
            abort();
        }
        want += expect[s];
    }
    if (got != want) {
        abort();
    }
    for (size_t i = 0; i < np; i++) {
        if (bound[i] && mp_matcher_remove(m, i + 1, patterns[i].ptr, patterns[i].len) != MPREG_OK) {
            abort();
        }
    }
    mp_matcher_remove_sub(m, 0);
    if (mp_matcher_node_count(m) != 0 || mp_matcher_pattern_count(m) != 0 ||
        mp_matcher_sub_count(m) != 0) {
        abort();
    }
    mp_matcher_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    seg segs[MAX_PATTERNS + 1];
    size_t n = split(data, size, segs, MAX_PATTERNS + 1);
    for (size_t i = 0; i < n; i++) {
        check_syntax(segs[i]);
    }
    seg topic = n > 1 ? segs[1] : segs[0];
    if (mp_topic_validate(topic.ptr, topic.len, NULL) != MPREG_OK) {
        return 0;
    }
    /* the patterns: segment 0, then segments 2.. */
    seg patterns[MAX_PATTERNS];
    size_t np = 0;
    patterns[np++] = segs[0];
    for (size_t i = 2; i < n; i++) {
        patterns[np++] = segs[i];
    }
    check_match(patterns, np, topic);
    return 0;
}
