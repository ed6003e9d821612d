/* buf.c - growable byte buffer. */
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

void mp_buf_init(mp_buf *b) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void mp_buf_free(mp_buf *b) {
    free(b->data);
    mp_buf_init(b);
}

void mpreg_bytes_free(mpreg_bytes *b) {
    mp_buf_free(b);
}

mpreg_err mp_buf_reserve(mp_buf *b, size_t extra) {
    if (extra > SIZE_MAX - b->len) {
        return MPREG_E_TOO_LARGE;
    }
    size_t need = b->len + extra;
    if (need <= b->cap) {
        return MPREG_OK;
    }
    /* Grow geometrically so appends are amortised O(1). */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        return MPREG_E_NOMEM;
    }
    b->data = p;
    b->cap = cap;
    return MPREG_OK;
}

mpreg_err mp_buf_append(mp_buf *b, const void *data, size_t len) {
    if (len == 0) {
        return MPREG_OK;
    }
    mpreg_err err = mp_buf_reserve(b, len);
    if (err) {
        return err;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return MPREG_OK;
}

mpreg_err mp_buf_append_u32be(mp_buf *b, uint32_t v) {
    uint8_t be[4];
    mp_put_u32be(be, v);
    return mp_buf_append(b, be, sizeof be);
}

void mp_buf_consume(mp_buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

int mp_buf_msgpack_write(void *buf, const char *data, size_t len) {
    return mp_buf_append(buf, data, len) == MPREG_OK ? 0 : -1;
}
