/* test_error.c - names and messages of mpreg_err codes. */
#include "mpreg/error.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every code of the enum, as written in error.h. The header scan below checks
 * that this list stays complete when codes are appended. */
static const mpreg_err all_codes[] = {
    MPREG_OK,
    MPREG_E_INVALID,
    MPREG_E_DECODE,
    MPREG_E_TRUNCATED,
    MPREG_E_TOO_DEEP,
    MPREG_E_TOO_LARGE,
    MPREG_E_RANGE,
    MPREG_E_TRAILING,
    MPREG_E_JSON,
    MPREG_E_TOPIC,
    MPREG_E_TYPE,
    MPREG_E_VERSION,
    MPREG_E_KIND,
    MPREG_E_MISSING_FIELD,
    MPREG_E_FRAME_EMPTY,
    MPREG_E_FRAME_TOO_LARGE,
    MPREG_E_PATH_TOO_LONG,
    MPREG_E_HOP_BUDGET,
    MPREG_E_HANDSHAKE,
    MPREG_E_AUTH,
    MPREG_E_IDENTITY,
    MPREG_E_NOT_FOUND,
    MPREG_E_NO_VERSION,
    MPREG_E_NO_RESOURCES,
    MPREG_E_CYCLE,
    MPREG_E_HANDLER,
    MPREG_E_DEADLINE,
    MPREG_E_DUPLICATE,
    MPREG_E_WORKER_GONE,
    MPREG_E_BAD_SEMVER,
    MPREG_E_ROUTE,
    MPREG_E_UNREACHABLE,
    MPREG_E_POLICY,
    MPREG_E_CIRCUIT_OPEN,
    MPREG_E_STALE,
    MPREG_E_BACKPRESSURE,
    MPREG_E_QUEUE_FULL,
    MPREG_E_NO_SUCH_QUEUE,
    MPREG_E_EXISTS,
    MPREG_E_CAS_MISMATCH,
    MPREG_E_LIMIT,
    MPREG_E_NOMEM,
    MPREG_E_IO,
    MPREG_E_INTERNAL,
    MPREG_E_CLOSED,
    MPREG_E_TIMEOUT,
};
#define NCODES (sizeof all_codes / sizeof all_codes[0])

static bool is_snake_case(const char *s) {
    if (!*s || *s == '_') {
        return false;
    }
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) {
            return false;
        }
    }
    return true;
}

Test(error, every_code_has_a_distinct_name_and_a_message) {
    for (size_t i = 0; i < NCODES; i++) {
        const char *name = mpreg_err_name(all_codes[i]);
        const char *msg = mpreg_strerror(all_codes[i]);
        cr_assert_not_null(name);
        cr_assert_not_null(msg);
        cr_assert_str_neq(name, "unknown", "code %d has no name", all_codes[i]);
        cr_assert(is_snake_case(name), "code %d name \"%s\"", all_codes[i], name);
        cr_assert_gt(strlen(msg), 0, "code %d has an empty message", all_codes[i]);
        cr_assert_str_neq(msg, "unknown error", "code %d has no message", all_codes[i]);
        for (size_t j = 0; j < i; j++) {
            cr_assert_neq(all_codes[i], all_codes[j], "code %d listed twice", all_codes[i]);
            cr_assert_str_neq(name, mpreg_err_name(all_codes[j]), "codes %d and %d share \"%s\"",
                              all_codes[i], all_codes[j], name);
        }
    }
}

Test(error, some_names_are_pinned) {
    /* Names appear in JSON output and logs: they are part of the interface. */
    cr_assert_str_eq(mpreg_err_name(MPREG_OK), "ok");
    cr_assert_str_eq(mpreg_err_name(MPREG_E_TOO_DEEP), "too_deep");
    cr_assert_str_eq(mpreg_err_name(MPREG_E_FRAME_TOO_LARGE), "frame_too_large");
    cr_assert_str_eq(mpreg_err_name(MPREG_E_CLOSED), "closed");
    /* Numeric values travel on the wire and never change. */
    cr_assert_eq(MPREG_E_INVALID, 100);
    cr_assert_eq(MPREG_E_FRAME_EMPTY, 203);
    cr_assert_eq(MPREG_E_FRAME_TOO_LARGE, 204);
    cr_assert_eq(MPREG_E_IDENTITY, 209);
    cr_assert_str_eq(mpreg_err_name(MPREG_E_IDENTITY), "identity");
    cr_assert_eq(MPREG_E_NOT_FOUND, 300);
    cr_assert_eq(MPREG_E_ROUTE, 400);
    cr_assert_eq(MPREG_E_BACKPRESSURE, 500);
    cr_assert_eq(MPREG_E_NOMEM, 900);
    cr_assert_eq(MPREG_E_TIMEOUT, 904);
}

Test(error, unknown_codes) {
    const int unknown[] = {-1, 1, 99, 110, 199, 210, 299, 309, 405, 506, 899, 905, 999, 100000};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        mpreg_err e = (mpreg_err)unknown[i];
        cr_assert_str_eq(mpreg_err_name(e), "unknown", "code %d", unknown[i]);
        cr_assert_str_eq(mpreg_strerror(e), "unknown error", "code %d", unknown[i]);
    }
}

Test(error, table_has_no_codes_beyond_the_list) {
    size_t known = 0;
    for (int code = -10; code < 2000; code++) {
        if (strcmp(mpreg_err_name((mpreg_err)code), "unknown") != 0) {
            known++;
        }
    }
    cr_assert_eq(known, NCODES, "error.c names %zu codes, the list has %zu", known, NCODES);
}

/* Reads error.h itself (next to this file in the source tree) and checks
 * every "MPREG_E_NAME = number" in it has a name: a code appended to the enum
 * but not to error.c's table fails here. */
Test(error, header_codes_all_named) {
    char path[4096];
    const char *here = __FILE__;
    const char *slash = strrchr(here, '/');
    if (!slash || here[0] != '/') {
        cr_skip_test("source path %s is not absolute", here);
    }
    snprintf(path, sizeof path, "%.*s/../../include/mpreg/error.h", (int)(slash - here), here);
    FILE *f = fopen(path, "r");
    if (!f) {
        cr_skip_test("cannot open %s", path);
    }
    char line[512];
    size_t found = 0;
    while (fgets(line, sizeof line, f)) {
        char name[128];
        int value;
        if (sscanf(line, " MPREG_%127[A-Z0-9_] = %d", name, &value) == 2) {
            found++;
            cr_assert_str_neq(mpreg_err_name((mpreg_err)value), "unknown",
                              "MPREG_%s = %d has no name in error.c", name, value);
        }
    }
    fclose(f);
    cr_assert_eq(found, NCODES, "error.h has %zu codes, this test lists %zu", found, NCODES);
}
