/* str.c - heap copies of strings (the views in str.h are borrowed). */
#include "core/str.h"

#include <stdlib.h>

char *mp_strndup(const char *s, size_t len) {
    if (!s && len) {
        return NULL;
    }
    char *d = malloc(len + 1);
    if (d) {
        if (len) {
            memcpy(d, s, len);
        }
        d[len] = '\0';
    }
    return d;
}

char *mp_strdup(const char *s) {
    return s ? mp_strndup(s, strlen(s)) : NULL;
}
