/* value_json.h - writing expected values as JSON in tests.
 *
 * Header-only (static functions) so that any Criterion test executable can
 * use it without another library: json() parses a literal the test wrote
 * (a typo there fails the test, naming the parser's complaint), and
 * assert_json_eq() compares a value against one, printing both on a
 * mismatch. */
#ifndef MP_TEST_VALUE_JSON_H
#define MP_TEST_VALUE_JSON_H

#include "mpreg/value.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static inline mpreg_value json(const char *text) {
    mpreg_value v;
    char why[128] = "";
    mpreg_err err = mpreg_value_from_json(text, strlen(text), &v, why, sizeof why);
    cr_assert_eq(err, MPREG_OK, "bad JSON in test: %s (%s)", why, text);
    return v;
}

static inline void assert_json_eq(const mpreg_value *got, const char *want_json) {
    mpreg_value want = json(want_json);
    char *g = mpreg_value_to_json(got, false);
    cr_assert(mpreg_value_equal(got, &want), "got %s, want %s", g, want_json);
    free(g);
    mpreg_value_free(&want);
}

#endif
