/* str.h - borrowed byte-string views, and the one heap string copy.
 *
 * Decoded envelopes point into the frame they came from instead of copying:
 * an mp_str is valid only as long as the bytes it views. Strings are not
 * NUL-terminated; always use len. */
#ifndef MP_STR_H
#define MP_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct mp_str {
    const char *ptr;
    size_t len;
} mp_str;

typedef struct mp_bytes {
    const uint8_t *ptr;
    size_t len;
} mp_bytes;

#define MP_STR_NULL ((mp_str){NULL, 0})

static inline mp_str mp_str_c(const char *s) {
    return (mp_str){s, s ? strlen(s) : 0};
}
static inline bool mp_str_empty(mp_str s) {
    return s.len == 0;
}
static inline bool mp_str_eq(mp_str a, mp_str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}
static inline bool mp_str_eq_c(mp_str a, const char *b) {
    return mp_str_eq(a, mp_str_c(b));
}

/* The one strdup of the project: a heap copy of s (NULL for NULL, or when
 * memory runs out). */
char *mp_strdup(const char *s);
/* A heap copy of s[0..len) with a NUL after it (s may hold NULs, and may be
 * NULL when len is 0: an empty view copies to ""; NULL when memory runs
 * out). */
char *mp_strndup(const char *s, size_t len);

#endif
