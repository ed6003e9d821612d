/* topic.h - pub/sub topic and pattern syntax (AMQP topic-exchange rules).
 *
 * A topic is a non-empty sequence of words joined by '.':
 *
 *     orders.eu.created        sensors.bldg-7.t°C
 *
 * Topic rules:
 *   - length 1..MP_TOPIC_MAX_LEN (255) bytes;
 *   - 1..MP_TOPIC_MAX_WORDS (32) words;
 *   - no empty word: no leading or trailing '.', no "..";
 *   - a word is made of printable ASCII 0x21..0x7E other than '.', '*' and
 *     '#', and of well-formed UTF-8 multibyte sequences (no overlong forms,
 *     no surrogates, nothing above U+10FFFF);
 *   - space, DEL and control characters are invalid bytes, and so are the C1
 *     controls U+0080..U+009F even when correctly encoded. Other non-ASCII
 *     code points (including Unicode spaces such as U+00A0) are accepted.
 *
 * A pattern follows the same rules, except that a word may be exactly "*"
 * (matches exactly one word) or exactly "#" (matches zero or more words).
 * '*' or '#' inside a longer word ("a*", "#b") is an error. "#" alone matches
 * every topic; "a.#" matches "a" itself; "#.#" is legal and means "#".
 *
 * Rejections return MPREG_E_TOPIC and, when `why` is non-NULL, a static
 * reason: "empty", "too long", "too many words", "empty word", "invalid byte",
 * "invalid UTF-8", "wildcard must be a whole word" (patterns) or
 * "wildcard in topic" (a topic containing '*' or '#'). */
#ifndef MP_TOPIC_H
#define MP_TOPIC_H

#include "core/str.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>

#define MP_TOPIC_MAX_LEN 255
#define MP_TOPIC_MAX_WORDS 32

/* A topic or pattern cut into words. The words view the caller's bytes. */
typedef struct mp_topic_words {
    size_t count;
    mp_str words[MP_TOPIC_MAX_WORDS];
} mp_topic_words;

mpreg_err mp_topic_validate(const char *t, size_t len, const char **why);
mpreg_err mp_pattern_validate(const char *p, size_t len, const char **why);

/* Validate and split in one pass. On error *out is unspecified. */
mpreg_err mp_topic_split(const char *t, size_t len, mp_topic_words *out, const char **why);
mpreg_err mp_pattern_split(const char *p, size_t len, mp_topic_words *out, const char **why);

static inline bool mp_word_is_star(mp_str w) {
    return w.len == 1 && w.ptr[0] == '*';
}
static inline bool mp_word_is_hash(mp_str w) {
    return w.len == 1 && w.ptr[0] == '#';
}

/* True when a (valid) pattern has no wildcard word, i.e. it matches exactly
 * one topic: itself. Only meaningful for patterns that passed validation. */
bool mp_pattern_is_literal(const char *p, size_t len);

/* Does one pattern match one topic? Invalid patterns or topics never match.
 * Runs the standard dynamic programme over words: O(pattern words x topic
 * words), whatever the number of '#'. The matcher (matcher.h) is the fast
 * path for many patterns; this is for replay filters and as a reference. */
bool mp_pattern_matches(const char *pattern, size_t plen, const char *topic, size_t tlen);

#endif
