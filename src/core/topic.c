/* topic.c - topic and pattern validation, splitting, single-pattern match.
 *
 * Topics arrive from the wire, so validation is one strict pass over the
 * bytes that also cuts the words: whoever needs the words (the matcher, the
 * replay filter) never scans twice. */
#include "core/topic.h"

#include <stdint.h>
#include <string.h>

static mpreg_err mp_topic_reject(const char **why, const char *reason) {
    if (why) {
        *why = reason;
    }
    return MPREG_E_TOPIC;
}

/* Checks the UTF-8 sequence at s (avail bytes left in the input). On success
 * returns NULL and sets *used to its length; otherwise returns the reason.
 * Continuation bytes are 0x80..0xBF, so a sequence can never swallow a '.'. */
static const char *mp_utf8_check(const uint8_t *s, size_t avail, size_t *used) {
    uint8_t c = s[0];
    size_t n;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) {
            lo = 0xA0; /* overlong below U+0800 */
        } else if (c == 0xED) {
            hi = 0x9F; /* U+D800..U+DFFF are surrogates */
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) {
            lo = 0x90; /* overlong below U+10000 */
        } else if (c == 0xF4) {
            hi = 0x8F; /* above U+10FFFF */
        }
    } else {
        return "invalid UTF-8"; /* stray continuation, C0/C1 overlong lead, F5..FF */
    }
    if (avail < n || s[1] < lo || s[1] > hi) {
        return "invalid UTF-8";
    }
    for (size_t k = 2; k < n; k++) {
        if (s[k] < 0x80 || s[k] > 0xBF) {
            return "invalid UTF-8";
        }
    }
    if (c == 0xC2 && s[1] <= 0x9F) {
        return "invalid byte"; /* U+0080..U+009F: C1 control characters */
    }
    *used = n;
    return NULL;
}

/* Closes the word s[start..end): checks it and records it in out. `wild`
 * says whether the word holds a '*' or '#' byte (patterns only). */
static mpreg_err mp_topic_end_word(const char *s, size_t start, size_t end, bool wild,
                                   mp_topic_words *out, const char **why) {
    if (end == start) {
        return mp_topic_reject(why, "empty word");
    }
    if (out->count == MP_TOPIC_MAX_WORDS) {
        return mp_topic_reject(why, "too many words");
    }
    if (wild && end - start != 1) {
        return mp_topic_reject(why, "wildcard must be a whole word");
    }
    out->words[out->count++] = (mp_str){s + start, end - start};
    return MPREG_OK;
}

static mpreg_err mp_topic_scan(const char *s, size_t len, bool pattern, mp_topic_words *out,
                               const char **why) {
    if (len == 0) {
        return mp_topic_reject(why, "empty");
    }
    if (len > MP_TOPIC_MAX_LEN) {
        return mp_topic_reject(why, "too long");
    }
    const uint8_t *u = (const uint8_t *)s;
    out->count = 0;
    size_t start = 0;
    bool wild = false;
    size_t i = 0;
    for (;;) {
        if (i == len || u[i] == '.') {
            mpreg_err err = mp_topic_end_word(s, start, i, wild, out, why);
            if (err || i == len) {
                return err;
            }
            i++;
            start = i;
            wild = false;
            continue;
        }
        uint8_t c = u[i];
        if (c == '*' || c == '#') {
            if (!pattern) {
                return mp_topic_reject(why, "wildcard in topic");
            }
            wild = true;
            i++;
        } else if (c >= 0x21 && c <= 0x7E) {
            i++;
        } else if (c >= 0x80) {
            size_t used = 0;
            const char *bad = mp_utf8_check(u + i, len - i, &used);
            if (bad) {
                return mp_topic_reject(why, bad);
            }
            i += used;
        } else {
            return mp_topic_reject(why, "invalid byte"); /* controls, space, DEL */
        }
    }
}

mpreg_err mp_topic_split(const char *t, size_t len, mp_topic_words *out, const char **why) {
    return mp_topic_scan(t, len, false, out, why);
}

mpreg_err mp_pattern_split(const char *p, size_t len, mp_topic_words *out, const char **why) {
    return mp_topic_scan(p, len, true, out, why);
}

mpreg_err mp_topic_validate(const char *t, size_t len, const char **why) {
    mp_topic_words w;
    return mp_topic_scan(t, len, false, &w, why);
}

mpreg_err mp_pattern_validate(const char *p, size_t len, const char **why) {
    mp_topic_words w;
    return mp_topic_scan(p, len, true, &w, why);
}

bool mp_pattern_is_literal(const char *p, size_t len) {
    /* In a valid pattern '*' and '#' bytes only occur as whole words. */
    return !memchr(p, '*', len) && !memchr(p, '#', len);
}

/* can[i][j] = "pattern words i.. match topic words j..", computed for i from
 * the last pattern word down, keeping only rows i and i+1. */
static bool mp_words_match(const mp_topic_words *pw, const mp_topic_words *tw) {
    size_t m = pw->count, n = tw->count;
    bool next[MP_TOPIC_MAX_WORDS + 1]; /* row i+1 */
    bool cur[MP_TOPIC_MAX_WORDS + 1];  /* row i */
    for (size_t j = 0; j <= n; j++) {
        next[j] = (j == n);
    }
    for (size_t i = m; i-- > 0;) {
        mp_str w = pw->words[i];
        cur[n] = mp_word_is_hash(w) && next[n];
        for (size_t j = n; j-- > 0;) {
            if (mp_word_is_hash(w)) {
                /* '#' matches nothing here, or swallows word j and stays. */
                cur[j] = next[j] || cur[j + 1];
            } else if (mp_word_is_star(w)) {
                cur[j] = next[j + 1];
            } else {
                cur[j] = next[j + 1] && mp_str_eq(w, tw->words[j]);
            }
        }
        memcpy(next, cur, (n + 1) * sizeof cur[0]);
    }
    return next[0];
}

bool mp_pattern_matches(const char *pattern, size_t plen, const char *topic, size_t tlen) {
    mp_topic_words pw, tw;
    if (mp_pattern_split(pattern, plen, &pw, NULL) || mp_topic_split(topic, tlen, &tw, NULL)) {
        return false;
    }
    return mp_words_match(&pw, &tw);
}
