/* test_topic.c - topic/pattern syntax and the single-pattern matcher. */
#include "core/topic.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct syntax_case {
    const char *text;
    size_t len;      /* 0: strlen(text) */
    const char *why; /* NULL: accepted */
} syntax_case;

static size_t case_len(const syntax_case *c) {
    return c->len ? c->len : strlen(c->text);
}

static void check_topic(const syntax_case *c) {
    const char *why = NULL;
    mpreg_err err = mp_topic_validate(c->text, case_len(c), &why);
    if (!c->why) {
        cr_expect_eq(err, MPREG_OK, "topic '%s' rejected: %s", c->text, why ? why : "?");
    } else {
        cr_expect_eq(err, MPREG_E_TOPIC, "topic '%s' accepted", c->text);
        cr_expect(why && strcmp(why, c->why) == 0, "topic '%s': why '%s', expected '%s'", c->text,
                  why ? why : "(null)", c->why);
    }
}

static void check_pattern(const syntax_case *c) {
    const char *why = NULL;
    mpreg_err err = mp_pattern_validate(c->text, case_len(c), &why);
    if (!c->why) {
        cr_expect_eq(err, MPREG_OK, "pattern '%s' rejected: %s", c->text, why ? why : "?");
    } else {
        cr_expect_eq(err, MPREG_E_TOPIC, "pattern '%s' accepted", c->text);
        cr_expect(why && strcmp(why, c->why) == 0, "pattern '%s': why '%s', expected '%s'", c->text,
                  why ? why : "(null)", c->why);
    }
}

/* Builds "w.w.w..." with n words into buf. */
static size_t make_words(char *buf, size_t n, const char *w) {
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        len += (size_t)sprintf(buf + len, "%s%s", i ? "." : "", w);
    }
    return len;
}

Test(topic, accepts_plain_topics) {
    static const syntax_case cases[] = {
        {"a", 0, NULL},
        {"orders.eu.created", 0, NULL},
        {"A-Z_0~9!\"$%&'()+,/:;<=>?@[\\]^`{|}", 0, NULL},
        {"caf\xc3\xa9.na\xc3\xafve", 0, NULL},              /* 2-byte UTF-8 */
        {"\xe2\x82\xac.\xe6\x97\xa5\xe6\x9c\xac", 0, NULL}, /* 3-byte */
        {"\xf0\x9f\x98\x80", 0, NULL},                      /* 4-byte: U+1F600 */
        {"\xf4\x8f\xbf\xbf", 0, NULL},                      /* U+10FFFF */
        {"\xc2\xa0", 0, NULL},                              /* U+00A0 is accepted */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_topic(&cases[i]);
        check_pattern(&cases[i]); /* every topic is also a literal pattern */
    }
}

Test(topic, rejects_by_rule) {
    static const syntax_case cases[] = {
        {"", 0, "empty"},
        {".a", 0, "empty word"},
        {"a.", 0, "empty word"},
        {"a..b", 0, "empty word"},
        {".", 0, "empty word"},
        {"a b", 0, "invalid byte"},
        {" ", 0, "invalid byte"},
        {"a\tb", 0, "invalid byte"},
        {"a\x7f", 0, "invalid byte"},
        {"a\x01", 0, "invalid byte"},
        {"a\0b", 3, "invalid byte"},
        {"\xc2\x85", 0, "invalid byte"},          /* U+0085, a C1 control */
        {"\x80", 0, "invalid UTF-8"},             /* stray continuation */
        {"\xc3", 0, "invalid UTF-8"},             /* truncated */
        {"\xc3.a", 0, "invalid UTF-8"},           /* truncated by a dot */
        {"\xc0\xaf", 0, "invalid UTF-8"},         /* overlong '/' */
        {"\xc1\xbf", 0, "invalid UTF-8"},         /* overlong */
        {"\xe0\x80\xaf", 0, "invalid UTF-8"},     /* overlong 3-byte */
        {"\xed\xa0\x80", 0, "invalid UTF-8"},     /* surrogate U+D800 */
        {"\xf0\x80\x80\xaf", 0, "invalid UTF-8"}, /* overlong 4-byte */
        {"\xf4\x90\x80\x80", 0, "invalid UTF-8"}, /* above U+10FFFF */
        {"\xf5\x80\x80\x80", 0, "invalid UTF-8"},
        {"\xff", 0, "invalid UTF-8"},
        {"\xe2\x82", 0, "invalid UTF-8"},
        {"\xe2\x28\xa1", 0, "invalid UTF-8"}, /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_topic(&cases[i]);
        check_pattern(&cases[i]);
    }
}

Test(topic, wildcards_only_in_patterns) {
    static const syntax_case topics[] = {
        {"*", 0, "wildcard in topic"},
        {"a.#", 0, "wildcard in topic"},
        {"a*b", 0, "wildcard in topic"},
    };
    static const syntax_case patterns[] = {
        {"*", 0, NULL},
        {"#", 0, NULL},
        {"a.*.b", 0, NULL},
        {"#.#", 0, NULL},
        {"*.*.#.a.#", 0, NULL},
        {"a*", 0, "wildcard must be a whole word"},
        {"#b", 0, "wildcard must be a whole word"},
        {"a.b*c", 0, "wildcard must be a whole word"},
        {"**", 0, "wildcard must be a whole word"},
        {"*#", 0, "wildcard must be a whole word"},
        {"a.##", 0, "wildcard must be a whole word"},
        {"*.", 0, "empty word"},
        {"..#", 0, "empty word"},
    };
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++) {
        check_topic(&topics[i]);
    }
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        check_pattern(&patterns[i]);
    }
}

Test(topic, length_limits) {
    char buf[600];
    const char *why = NULL;
    memset(buf, 'x', sizeof buf);
    cr_expect_eq(mp_topic_validate(buf, MP_TOPIC_MAX_LEN, &why), MPREG_OK);
    cr_expect_eq(mp_topic_validate(buf, MP_TOPIC_MAX_LEN + 1, &why), MPREG_E_TOPIC);
    cr_expect_str_eq(why, "too long");
    cr_expect_eq(mp_pattern_validate(buf, MP_TOPIC_MAX_LEN + 1, &why), MPREG_E_TOPIC);
    cr_expect_str_eq(why, "too long");
}

Test(topic, word_limits) {
    char buf[600];
    const char *why = NULL;
    size_t len = make_words(buf, MP_TOPIC_MAX_WORDS, "a");
    cr_expect_eq(mp_topic_validate(buf, len, &why), MPREG_OK);
    len = make_words(buf, MP_TOPIC_MAX_WORDS + 1, "a");
    cr_expect_eq(mp_topic_validate(buf, len, &why), MPREG_E_TOPIC);
    cr_expect_str_eq(why, "too many words");
    len = make_words(buf, MP_TOPIC_MAX_WORDS + 1, "#");
    cr_expect_eq(mp_pattern_validate(buf, len, &why), MPREG_E_TOPIC);
    cr_expect_str_eq(why, "too many words");
    len = make_words(buf, MP_TOPIC_MAX_WORDS, "*");
    cr_expect_eq(mp_pattern_validate(buf, len, NULL), MPREG_OK);
}

Test(topic, split_gives_words) {
    mp_topic_words w;
    cr_assert_eq(mp_pattern_split("a.*.bc.#", 8, &w, NULL), MPREG_OK);
    cr_assert_eq(w.count, 4);
    cr_expect(mp_str_eq_c(w.words[0], "a"));
    cr_expect(mp_word_is_star(w.words[1]));
    cr_expect(mp_str_eq_c(w.words[2], "bc"));
    cr_expect(mp_word_is_hash(w.words[3]));
    cr_expect_eq(mp_topic_split("a.*", 3, &w, NULL), MPREG_E_TOPIC);
    /* why may be NULL */
    cr_expect_eq(mp_topic_validate("", 0, NULL), MPREG_E_TOPIC);
}

Test(topic, is_literal) {
    cr_expect(mp_pattern_is_literal("a.b.c", 5));
    cr_expect(mp_pattern_is_literal("a", 1));
    cr_expect_not(mp_pattern_is_literal("a.*", 3));
    cr_expect_not(mp_pattern_is_literal("#", 1));
    cr_expect_not(mp_pattern_is_literal("a.#.c", 5));
}

typedef struct match_case {
    const char *pattern;
    const char *topic;
    bool match;
} match_case;

static const match_case match_cases[] = {
    {"a.b", "a.b", true},
    {"a.b", "a.c", false},
    {"a.b", "a", false},
    {"a.b", "a.b.c", false},
    {"a", "ab", false},
    {"ab", "a", false},
    {"a.*", "a.b", true},
    {"a.*", "a", false},
    {"a.*", "a.b.c", false},
    {"*", "a", true},
    {"*", "a.b", false},
    {"*.*", "a.b", true},
    {"*.b", "a.b", true},
    {"*.b", "a.c", false},
    {"a.#", "a", true},
    {"a.#", "a.b", true},
    {"a.#", "a.b.c", true},
    {"a.#", "b.a", false},
    {"#", "a", true},
    {"#", "a.b.c.d", true},
    {"#", "x.y", true},
    {"#.a", "a", true},
    {"#.a", "x.a", true},
    {"#.a", "x.y.a", true},
    {"#.a", "a.x", false},
    {"a.#.b", "a.b", true},
    {"a.#.b", "a.x.b", true},
    {"a.#.b", "a.x.y.b", true},
    {"a.#.b", "a.x.y.c", false},
    {"a.#.b", "a", false},
    {"*.#", "a", true},
    {"*.#", "a.b.c", true},
    {"#.*", "a", true},
    {"#.*", "a.b.c", true},
    {"#.#", "a", true},
    {"#.#", "a.b", true},
    {"#.*.#", "a", true},
    {"*.*.#", "a", false},
    {"*.*.#", "a.b", true},
    {"#.*.*", "a", false},
    {"#.*.*", "a.b.c", true},
    {"#.a.#", "a", true},
    {"#.a.#", "x.a.y", true},
    {"#.a.#", "x.b.y", false},
    {"#.a.#.b.#", "b.a", false},
    {"#.a.#.b.#", "a.b", true},
    {"#.a.#.b.#", "x.a.y.y.b.z", true},
    {"a.*.#.c", "a.b.c", true},
    {"a.*.#.c", "a.c", false},
    {"caf\xc3\xa9.*", "caf\xc3\xa9.au-lait", true},
    /* invalid input never matches */
    {"a*", "a", false},
    {"#", "a..b", false},
    {"#", "a.*", false},
};

Test(topic, wildcard_semantics) {
    for (size_t i = 0; i < sizeof match_cases / sizeof match_cases[0]; i++) {
        const match_case *c = &match_cases[i];
        bool got = mp_pattern_matches(c->pattern, strlen(c->pattern), c->topic, strlen(c->topic));
        cr_expect_eq(got, c->match, "'%s' vs '%s': got %d, expected %d", c->pattern, c->topic, got,
                     c->match);
    }
}

static double now_sec(void) {
    return (double)clock() / CLOCKS_PER_SEC;
}

Test(topic, pathological_hash_patterns_are_fast) {
    char pat[600], topic[600];
    size_t plen = (size_t)sprintf(pat, "#.#.#.#.#.#.#.#.a");
    size_t tlen = make_words(topic, MP_TOPIC_MAX_WORDS, "b"); /* no 'a': a full search */
    double t0 = now_sec();
    for (int i = 0; i < 2000; i++) {
        cr_assert_not(mp_pattern_matches(pat, plen, topic, tlen));
    }
    /* the worst case: 31 '#' then a literal that never matches */
    plen = make_words(pat, MP_TOPIC_MAX_WORDS - 1, "#");
    plen += (size_t)sprintf(pat + plen, ".a");
    for (int i = 0; i < 2000; i++) {
        cr_assert_not(mp_pattern_matches(pat, plen, topic, tlen));
    }
    topic[tlen - 1] = 'a';
    cr_assert(mp_pattern_matches(pat, plen, topic, tlen));
    cr_expect_lt(now_sec() - t0, 2.0, "4000 pathological matches took too long");
}
