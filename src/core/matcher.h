/* matcher.h - many subscription patterns against one topic.
 *
 * A trie over pattern words. Each node has its literal children (looked up
 * by the word's hash), plus at most one '*' child and one '#' child, and
 * lists the subscriptions whose pattern ends there. Matching a topic walks
 * only the branches the topic's words can reach: the literal child named by
 * the next word, the '*' child, and the '#' child at each remaining
 * position, never twice at the same position. So its cost depends on the
 * patterns that could match, not on how many there are (matcher.c says how
 * the memory layout keeps that true once the trie outgrows the cache).
 *
 * Subscriptions are ids chosen by the caller. One subscription may hold many
 * patterns; a match reports it once however many of them match, and however
 * many ways one '#' pattern matches ("#.a.#" against "a.a.a"). */
#ifndef MP_MATCHER_H
#define MP_MATCHER_H

#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mp_matcher mp_matcher;

/* Returns NULL when out of memory. */
mp_matcher *mp_matcher_new(void);
void mp_matcher_free(mp_matcher *m);

/* Binds pattern to sub. The pattern is validated (MPREG_E_TOPIC when bad).
 * Binding the same (sub, pattern) again is a successful no-op. On
 * MPREG_E_NOMEM the matcher is left as it was. */
mpreg_err mp_matcher_add(mp_matcher *m, uint64_t sub, const char *pattern, size_t len);

/* Unbinds one pattern from sub; MPREG_E_NOT_FOUND if it was not bound. Trie
 * nodes left with nothing are freed. */
mpreg_err mp_matcher_remove(mp_matcher *m, uint64_t sub, const char *pattern, size_t len);

/* Unbinds every pattern of sub (a subscription dying with its connection).
 * Unknown subs are ignored. */
void mp_matcher_remove_sub(mp_matcher *m, uint64_t sub);

typedef void (*mp_matcher_cb)(void *ud, uint64_t sub);

/* Calls cb once per subscription with a pattern matching topic, and returns
 * how many there were. An invalid topic matches nothing. cb may be NULL (just
 * count) and must not change the matcher. Order of calls is deterministic
 * (it follows the trie and insertion order) but otherwise unspecified. */
size_t mp_matcher_match(mp_matcher *m, const char *topic, size_t len, mp_matcher_cb cb, void *ud);

/* Subscriptions holding at least one pattern. */
size_t mp_matcher_sub_count(const mp_matcher *m);
/* (subscription, pattern) bindings. */
size_t mp_matcher_pattern_count(const mp_matcher *m);
/* Trie nodes, not counting the root: 0 once everything is removed. */
size_t mp_matcher_node_count(const mp_matcher *m);

#endif
