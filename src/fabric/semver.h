/* semver.h - semantic versions and version constraints for function selection.
 *
 * Versions: MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], an optional leading
 * 'v'. Missing minor/patch are 0 ("1.2" is 1.2.0). Precedence is semver 2.0:
 * build metadata is ignored, a prerelease sorts before its release
 * (1.0.0-rc.1 < 1.0.0), prerelease identifiers compare numerically when both
 * are numeric, numeric before alphanumeric, shorter before longer.
 *
 * Constraints: comparators separated by commas, all of which must hold:
 *   >=V  >V  <=V  <V  ==V  =V  !=V
 *   ^V   same major (for 0.x: same minor; for 0.0.x: exactly)
 *   ~V   same major.minor
 *   V    bare: the parts written must match, "1.2" = any 1.2.x,
 *        "1" = any 1.x.y, "1.2.3" = exactly 1.2.3
 *   * or an empty string: any version
 * The comparators narrow one interval (plus up to MP_SEMVER_MAX_EXCLUDED
 * excluded points); a constraint no version can satisfy (">=2,<1", "==1.0,!=1.0")
 * is rejected at parse time with MPREG_E_BAD_SEMVER rather than silently
 * matching nothing. */
#ifndef MP_SEMVER_H
#define MP_SEMVER_H

#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_SEMVER_PRE_MAX 64     /* prerelease text, bytes incl. NUL */
#define MP_SEMVER_MAX_EXCLUDED 8 /* != comparators in one constraint */
#define MP_SEMVER_TEXT_MAX 96    /* longest formatted version, incl. NUL */

typedef struct mp_semver {
    uint64_t major;
    uint64_t minor;
    uint64_t patch;
    char pre[MP_SEMVER_PRE_MAX]; /* "" for a release */
} mp_semver;

typedef struct mp_semver_bound {
    bool present;
    bool inclusive;
    mp_semver version;
} mp_semver_bound;

typedef struct mp_semver_constraint {
    mp_semver_bound lower;
    mp_semver_bound upper;
    uint32_t excluded_count;
    mp_semver excluded[MP_SEMVER_MAX_EXCLUDED];
} mp_semver_constraint;

mpreg_err mp_semver_parse(const char *s, size_t len, mp_semver *out, const char **why);
int mp_semver_cmp(const mp_semver *a, const mp_semver *b);
/* "1.2.3" or "1.2.3-rc.1"; out must hold MP_SEMVER_TEXT_MAX bytes. */
void mp_semver_format(const mp_semver *v, char *out, size_t out_len);

/* A constraint that admits every version. */
void mp_semver_constraint_any(mp_semver_constraint *c);
mpreg_err mp_semver_constraint_parse(const char *s, size_t len, mp_semver_constraint *out,
                                     const char **why);
bool mp_semver_satisfies(const mp_semver_constraint *c, const mp_semver *v);

#endif
