/* test_semver.c - version parsing, precedence and constraints. */
#include "fabric/semver.h"

#include <criterion/criterion.h>
#include <string.h>

static mp_semver v(const char *s) {
    mp_semver out;
    const char *why = NULL;
    mpreg_err err = mp_semver_parse(s, strlen(s), &out, &why);
    cr_assert_eq(err, MPREG_OK, "parse %s: %s", s, why ? why : "");
    return out;
}

static bool sat(const char *constraint, const char *version) {
    mp_semver_constraint c;
    const char *why = NULL;
    mpreg_err err = mp_semver_constraint_parse(constraint, strlen(constraint), &c, &why);
    cr_assert_eq(err, MPREG_OK, "constraint %s: %s", constraint, why ? why : "");
    mp_semver ver = v(version);
    return mp_semver_satisfies(&c, &ver);
}

static mpreg_err constraint_err(const char *constraint) {
    mp_semver_constraint c;
    return mp_semver_constraint_parse(constraint, strlen(constraint), &c, NULL);
}

Test(semver, parses_full_partial_and_prefixed) {
    mp_semver a = v("1.2.3");
    cr_assert(a.major == 1 && a.minor == 2 && a.patch == 3 && a.pre[0] == 0);
    mp_semver b = v("v2");
    cr_assert(b.major == 2 && b.minor == 0 && b.patch == 0);
    mp_semver c = v("1.2.3-rc.1+build.5");
    cr_assert_str_eq(c.pre, "rc.1");
    char text[MP_SEMVER_TEXT_MAX];
    mp_semver_format(&c, text, sizeof text);
    cr_assert_str_eq(text, "1.2.3-rc.1");
}

Test(semver, rejects_malformed) {
    const char *bad[] = {"",       "x",          "1.",      "1..2",    "01.2.3",
                         "1.2.3-", "1.2.3-a..b", "1.2.3 x", "1.2.3.4", "99999999999999999999999",
                         "-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mp_semver out;
        const char *why = NULL;
        cr_assert_eq(mp_semver_parse(bad[i], strlen(bad[i]), &out, &why), MPREG_E_BAD_SEMVER,
                     "%s should not parse", bad[i]);
        cr_assert_not_null(why);
    }
}

Test(semver, precedence_follows_semver_2) {
    /* The ordering example from semver.org §11, ascending. */
    const char *order[] = {"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta",
                           "1.0.0-beta",  "1.0.0-beta.2",  "1.0.0-beta.11",
                           "1.0.0-rc.1",  "1.0.0",         "1.0.1",
                           "1.1.0",       "2.0.0",         "10.0.0"};
    size_t n = sizeof order / sizeof order[0];
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            mp_semver a = v(order[i]), b = v(order[j]);
            int want = (i > j) - (i < j);
            cr_assert_eq(mp_semver_cmp(&a, &b), want, "%s vs %s", order[i], order[j]);
        }
    }
    mp_semver x = v("1.0.0+a"), y = v("1.0.0+b");
    cr_assert_eq(mp_semver_cmp(&x, &y), 0, "build metadata is ignored");
}

Test(semver, comparators) {
    cr_assert(sat(">=1.0,<2.0", "1.5.0"));
    cr_assert(sat(">=1.0,<2.0", "1.0.0"));
    cr_assert_not(sat(">=1.0,<2.0", "2.0.0"));
    cr_assert_not(sat(">=1.0,<2.0", "0.9.9"));
    cr_assert(sat("==1.2.0", "1.2.0"));
    cr_assert_not(sat("==1.2.0", "1.2.1"));
    cr_assert(sat(">1.2.0", "1.2.1"));
    cr_assert_not(sat(">1.2.0", "1.2.0"));
    cr_assert(sat("<=1.2.0", "1.2.0"));
    cr_assert(sat("!=1.2.0", "1.2.1"));
    cr_assert_not(sat("!=1.2.0", "1.2.0"));
    cr_assert(sat(" >= 1.0 , < 2 ", "1.9.9"));
    cr_assert(sat("", "7.7.7"));
    cr_assert(sat("*", "0.0.1"));
}

Test(semver, bare_versions_match_the_parts_written) {
    cr_assert(sat("1.2", "1.2.0"));
    cr_assert(sat("1.2", "1.2.99"));
    cr_assert_not(sat("1.2", "1.3.0"));
    cr_assert_not(sat("1.2", "1.3.0-alpha"), "prereleases of the next minor stay out");
    cr_assert_not(sat("1.2", "1.1.9"));
    cr_assert(sat("1", "1.9.0"));
    cr_assert_not(sat("1", "2.0.0"));
    cr_assert(sat("v1.2.3", "1.2.3"));
    cr_assert_not(sat("1.2.3", "1.2.4"));
    cr_assert(sat("1.2.3-rc.1", "1.2.3-rc.1"));
    cr_assert_not(sat("1.2.3-rc.1", "1.2.3"), "a bare prerelease is exact");
}

Test(semver, caret_and_tilde) {
    cr_assert(sat("^1.2.3", "1.9.0"));
    cr_assert_not(sat("^1.2.3", "2.0.0"));
    cr_assert_not(sat("^1.2.3", "1.2.2"));
    cr_assert(sat("^0.2.3", "0.2.9"));
    cr_assert_not(sat("^0.2.3", "0.3.0"));
    cr_assert(sat("^0.0.3", "0.0.3"));
    cr_assert_not(sat("^0.0.3", "0.0.4"));
    cr_assert(sat("~1.2.3", "1.2.9"));
    cr_assert_not(sat("~1.2.3", "1.3.0"));
    cr_assert(sat("~1", "1.5.0"));
}

Test(semver, contradictions_are_rejected) {
    cr_assert_eq(constraint_err(">=2.0,<1.0"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err(">1.0,<1.0"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err(">=1.0,<1.0"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err("==1.0.0,!=1.0.0"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err("==1.0.0,==1.0.1"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err("1.2,2.0"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err(">=1.0,<=1.0"), MPREG_OK, "a single point is satisfiable");
    cr_assert_eq(constraint_err(">=1.0,,<2"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err(">=1.0 <2"), MPREG_E_BAD_SEMVER);
    cr_assert_eq(constraint_err(">="), MPREG_E_BAD_SEMVER);
}

Test(semver, narrowing_is_order_independent) {
    const char *versions[] = {"0.9.0", "1.0.0", "1.4.0", "1.5.0", "1.9.9", "2.0.0", "3.0.0"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        cr_assert_eq(sat(">=1.0,<2.0,!=1.5.0,>1.2", versions[i]),
                     sat(">1.2,!=1.5.0,<2.0,>=1.0", versions[i]), "%s", versions[i]);
    }
}
