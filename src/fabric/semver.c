/* semver.c - version parsing, precedence and constraint intervals. */
#include "fabric/semver.h"

#include <stdio.h>
#include <string.h>

/* A cursor over the text being parsed; parsing functions advance it. */
typedef struct mp_cursor {
    const char *p;
    const char *end;
} mp_cursor;

static bool mp_at_end(const mp_cursor *c) {
    return c->p >= c->end;
}

static bool mp_is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

static bool mp_is_ident_char(char ch) {
    return mp_is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '-';
}

static void mp_skip_spaces(mp_cursor *c) {
    while (!mp_at_end(c) && (*c->p == ' ' || *c->p == '\t')) {
        c->p++;
    }
}

/* Parses a decimal number without leading zeros (semver forbids them). */
static mpreg_err mp_parse_number(mp_cursor *c, uint64_t *out, const char **why) {
    if (mp_at_end(c) || !mp_is_digit(*c->p)) {
        *why = "expected a number";
        return MPREG_E_BAD_SEMVER;
    }
    if (*c->p == '0' && c->p + 1 < c->end && mp_is_digit(c->p[1])) {
        *why = "leading zero in a version number";
        return MPREG_E_BAD_SEMVER;
    }
    uint64_t v = 0;
    while (!mp_at_end(c) && mp_is_digit(*c->p)) {
        uint64_t d = (uint64_t)(*c->p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            *why = "version number too large";
            return MPREG_E_BAD_SEMVER;
        }
        v = v * 10 + d;
        c->p++;
    }
    *out = v;
    return MPREG_OK;
}

/* Dot-separated identifiers of [0-9A-Za-z-], none empty, for the prerelease
 * (kept) and build metadata (checked, then dropped). */
static mpreg_err mp_parse_idents(mp_cursor *c, char *out, size_t out_len, const char **why) {
    const char *start = c->p;
    bool want_ident = true;
    while (!mp_at_end(c) && (mp_is_ident_char(*c->p) || *c->p == '.')) {
        if (*c->p == '.') {
            if (want_ident) {
                *why = "empty prerelease or build identifier";
                return MPREG_E_BAD_SEMVER;
            }
            want_ident = true;
        } else {
            want_ident = false;
        }
        c->p++;
    }
    if (want_ident) {
        *why = "empty prerelease or build identifier";
        return MPREG_E_BAD_SEMVER;
    }
    size_t n = (size_t)(c->p - start);
    if (out) {
        if (n >= out_len) {
            *why = "prerelease too long";
            return MPREG_E_BAD_SEMVER;
        }
        memcpy(out, start, n);
        out[n] = '\0';
    }
    return MPREG_OK;
}

/* Parses one version at the cursor. *parts gets how many numeric parts were
 * written (1..3), which bare constraints need. */
static mpreg_err mp_parse_version_at(mp_cursor *c, mp_semver *v, int *parts, const char **why) {
    memset(v, 0, sizeof *v);
    if (!mp_at_end(c) && (*c->p == 'v' || *c->p == 'V')) {
        c->p++;
    }
    uint64_t *fields[3] = {&v->major, &v->minor, &v->patch};
    int n = 0;
    for (; n < 3; n++) {
        if (n > 0) {
            if (mp_at_end(c) || *c->p != '.') {
                break;
            }
            c->p++;
        }
        mpreg_err err = mp_parse_number(c, fields[n], why);
        if (err) {
            return err;
        }
    }
    *parts = n;
    if (!mp_at_end(c) && *c->p == '-') {
        c->p++;
        mpreg_err err = mp_parse_idents(c, v->pre, sizeof v->pre, why);
        if (err) {
            return err;
        }
    }
    if (!mp_at_end(c) && *c->p == '+') {
        c->p++;
        mpreg_err err = mp_parse_idents(c, NULL, 0, why);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

mpreg_err mp_semver_parse(const char *s, size_t len, mp_semver *out, const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    mp_cursor c = {s, s + len};
    mp_skip_spaces(&c);
    if (mp_at_end(&c)) {
        *why = "empty version";
        return MPREG_E_BAD_SEMVER;
    }
    int parts;
    mpreg_err err = mp_parse_version_at(&c, out, &parts, why);
    if (err) {
        return err;
    }
    mp_skip_spaces(&c);
    if (!mp_at_end(&c)) {
        *why = "unexpected characters after the version";
        return MPREG_E_BAD_SEMVER;
    }
    return MPREG_OK;
}

static bool mp_all_digits(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!mp_is_digit(s[i])) {
            return false;
        }
    }
    return n > 0;
}

/* Compares one prerelease identifier pair per semver 2.0 §11. */
static int mp_ident_cmp(const char *a, size_t an, const char *b, size_t bn) {
    bool anum = mp_all_digits(a, an);
    bool bnum = mp_all_digits(b, bn);
    if (anum && bnum) {
        /* No leading zeros are enforced only for numbers; compare by length
         * first, then lexically, which is numeric order for digit strings. */
        if (an != bn) {
            return an < bn ? -1 : 1;
        }
        int r = memcmp(a, b, an);
        return (r > 0) - (r < 0);
    }
    if (anum != bnum) {
        return anum ? -1 : 1;
    }
    size_t n = an < bn ? an : bn;
    int r = memcmp(a, b, n);
    if (r) {
        return (r > 0) - (r < 0);
    }
    return (an > bn) - (an < bn);
}

static int mp_pre_cmp(const char *a, const char *b) {
    if (!*a || !*b) {
        /* A release (no prerelease) sorts after any prerelease of it. */
        return (!*a) - (!*b);
    }
    for (;;) {
        size_t an = strcspn(a, ".");
        size_t bn = strcspn(b, ".");
        int r = mp_ident_cmp(a, an, b, bn);
        if (r) {
            return r;
        }
        a += an;
        b += bn;
        if (!*a || !*b) {
            return (*a != 0) - (*b != 0);
        }
        a++;
        b++;
    }
}

static int mp_u64_cmp(uint64_t a, uint64_t b) {
    return (a > b) - (a < b);
}

int mp_semver_cmp(const mp_semver *a, const mp_semver *b) {
    int r = mp_u64_cmp(a->major, b->major);
    if (!r) {
        r = mp_u64_cmp(a->minor, b->minor);
    }
    if (!r) {
        r = mp_u64_cmp(a->patch, b->patch);
    }
    if (!r) {
        r = mp_pre_cmp(a->pre, b->pre);
    }
    return r;
}

void mp_semver_format(const mp_semver *v, char *out, size_t out_len) {
    snprintf(out, out_len, "%llu.%llu.%llu%s%s", (unsigned long long)v->major,
             (unsigned long long)v->minor, (unsigned long long)v->patch, v->pre[0] ? "-" : "",
             v->pre);
}

void mp_semver_constraint_any(mp_semver_constraint *c) {
    memset(c, 0, sizeof *c);
}

/* --- narrowing the interval -------------------------------------------- */

static void mp_narrow_lower(mp_semver_constraint *c, const mp_semver *v, bool inclusive) {
    mp_semver_bound *b = &c->lower;
    int r = b->present ? mp_semver_cmp(v, &b->version) : 1;
    if (r > 0 || (r == 0 && !inclusive)) {
        b->present = true;
        b->inclusive = inclusive;
        b->version = *v;
    }
}

static void mp_narrow_upper(mp_semver_constraint *c, const mp_semver *v, bool inclusive) {
    mp_semver_bound *b = &c->upper;
    int r = b->present ? mp_semver_cmp(v, &b->version) : -1;
    if (r < 0 || (r == 0 && !inclusive)) {
        b->present = true;
        b->inclusive = inclusive;
        b->version = *v;
    }
}

/* The smallest version above every version starting with the given parts:
 * "1.2" -> 1.3.0-0 ("-0" is the lowest prerelease, so 1.3.0-alpha is out). */
static mp_semver mp_bump(const mp_semver *v, int part) {
    mp_semver next = {0};
    if (part == 0) {
        next.major = v->major + 1;
    } else if (part == 1) {
        next.major = v->major;
        next.minor = v->minor + 1;
    } else {
        next.major = v->major;
        next.minor = v->minor;
        next.patch = v->patch + 1;
    }
    strcpy(next.pre, "0");
    return next;
}

/* Applies a range [v, bump(v, part)) for bare, caret and tilde forms. */
static void mp_narrow_range(mp_semver_constraint *c, const mp_semver *v, int part) {
    mp_narrow_lower(c, v, true);
    mp_semver up = mp_bump(v, part);
    mp_narrow_upper(c, &up, false);
}

typedef enum mp_op {
    MP_OP_BARE,
    MP_OP_EQ,
    MP_OP_NE,
    MP_OP_GT,
    MP_OP_GE,
    MP_OP_LT,
    MP_OP_LE,
    MP_OP_CARET,
    MP_OP_TILDE,
} mp_op;

static mp_op mp_parse_op(mp_cursor *c) {
    static const struct {
        const char *text;
        mp_op op;
    } ops[] = {{">=", MP_OP_GE}, {"<=", MP_OP_LE},   {"==", MP_OP_EQ},
               {"!=", MP_OP_NE}, {">", MP_OP_GT},    {"<", MP_OP_LT},
               {"=", MP_OP_EQ},  {"^", MP_OP_CARET}, {"~", MP_OP_TILDE}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        size_t n = strlen(ops[i].text);
        if ((size_t)(c->end - c->p) >= n && memcmp(c->p, ops[i].text, n) == 0) {
            c->p += n;
            return ops[i].op;
        }
    }
    return MP_OP_BARE;
}

static void mp_apply_caret(mp_semver_constraint *c, const mp_semver *v, int parts) {
    /* ^1.2.3 := [1.2.3, 2.0.0); ^0.2.3 := [0.2.3, 0.3.0); ^0.0.3 := exactly;
     * a partial ^0.0 behaves like the bare 0.0. */
    int part = 0;
    if (v->major == 0) {
        part = (v->minor == 0 && parts >= 3) ? 2 : 1;
        if (parts < 2) {
            part = 0;
        }
    }
    mp_narrow_range(c, v, part);
}

static mpreg_err mp_apply(mp_semver_constraint *c, mp_op op, const mp_semver *v, int parts,
                          const char **why) {
    switch (op) {
    case MP_OP_BARE:
        if (!v->pre[0]) {
            mp_narrow_range(c, v, parts - 1);
            break;
        }
        /* A bare prerelease names one exact version. */
        /* fall through */
    case MP_OP_EQ:
        mp_narrow_lower(c, v, true);
        mp_narrow_upper(c, v, true);
        break;
    case MP_OP_NE:
        if (c->excluded_count == MP_SEMVER_MAX_EXCLUDED) {
            *why = "too many != comparators";
            return MPREG_E_BAD_SEMVER;
        }
        c->excluded[c->excluded_count++] = *v;
        break;
    case MP_OP_GT:
        mp_narrow_lower(c, v, false);
        break;
    case MP_OP_GE:
        mp_narrow_lower(c, v, true);
        break;
    case MP_OP_LT:
        mp_narrow_upper(c, v, false);
        break;
    case MP_OP_LE:
        mp_narrow_upper(c, v, true);
        break;
    case MP_OP_CARET:
        mp_apply_caret(c, v, parts);
        break;
    case MP_OP_TILDE:
        mp_narrow_range(c, v, parts >= 2 ? 1 : 0);
        break;
    }
    return MPREG_OK;
}

/* True when no version lies in the interval (less its excluded points). */
static bool mp_constraint_empty(const mp_semver_constraint *c) {
    if (!c->lower.present || !c->upper.present) {
        return false;
    }
    int r = mp_semver_cmp(&c->lower.version, &c->upper.version);
    if (r > 0) {
        return true;
    }
    if (r == 0) {
        if (!c->lower.inclusive || !c->upper.inclusive) {
            return true;
        }
        for (uint32_t i = 0; i < c->excluded_count; i++) {
            if (mp_semver_cmp(&c->excluded[i], &c->lower.version) == 0) {
                return true;
            }
        }
    }
    return false;
}

mpreg_err mp_semver_constraint_parse(const char *s, size_t len, mp_semver_constraint *out,
                                     const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    mp_semver_constraint_any(out);
    mp_cursor c = {s, s + len};
    mp_skip_spaces(&c);
    if (mp_at_end(&c) || (c.end - c.p == 1 && *c.p == '*')) {
        return MPREG_OK;
    }
    for (;;) {
        mp_skip_spaces(&c);
        mp_op op = mp_parse_op(&c);
        mp_skip_spaces(&c);
        mp_semver v;
        int parts;
        mpreg_err err = mp_parse_version_at(&c, &v, &parts, why);
        if (err) {
            return err;
        }
        err = mp_apply(out, op, &v, parts, why);
        if (err) {
            return err;
        }
        mp_skip_spaces(&c);
        if (mp_at_end(&c)) {
            break;
        }
        if (*c.p != ',') {
            *why = "expected ',' between comparators";
            return MPREG_E_BAD_SEMVER;
        }
        c.p++;
    }
    if (mp_constraint_empty(out)) {
        *why = "contradictory constraint: no version can satisfy it";
        return MPREG_E_BAD_SEMVER;
    }
    return MPREG_OK;
}

bool mp_semver_satisfies(const mp_semver_constraint *c, const mp_semver *v) {
    if (c->lower.present) {
        int r = mp_semver_cmp(v, &c->lower.version);
        if (r < 0 || (r == 0 && !c->lower.inclusive)) {
            return false;
        }
    }
    if (c->upper.present) {
        int r = mp_semver_cmp(v, &c->upper.version);
        if (r > 0 || (r == 0 && !c->upper.inclusive)) {
            return false;
        }
    }
    for (uint32_t i = 0; i < c->excluded_count; i++) {
        if (mp_semver_cmp(v, &c->excluded[i]) == 0) {
            return false;
        }
    }
    return true;
}
