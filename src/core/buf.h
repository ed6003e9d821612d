/* buf.h - a growable byte buffer.
 *
 * The one place bytes accumulate before they are sent or after they arrive:
 * encoders append to it, framers consume from its front. It doubles as a
 * msgpack-c write target (mp_buf_msgpack_write). */
#ifndef MP_BUF_H
#define MP_BUF_H

#include "mpreg/error.h"
#include "mpreg/value.h"

#include <stddef.h>
#include <stdint.h>

/* The public mpreg_bytes (data, len = bytes in use, cap = bytes allocated)
 * is the same buffer; internals use the mp_buf_ functions on it. */
typedef mpreg_bytes mp_buf;

#define MP_BUF_INIT                                                                                \
    { NULL, 0, 0 }

void mp_buf_init(mp_buf *b);
void mp_buf_free(mp_buf *b);

/* Makes room for at least `extra` more bytes without changing len. */
mpreg_err mp_buf_reserve(mp_buf *b, size_t extra);
mpreg_err mp_buf_append(mp_buf *b, const void *data, size_t len);
mpreg_err mp_buf_append_u32be(mp_buf *b, uint32_t v);

/* Drops the first n bytes (n <= len), keeping the rest in order. */
void mp_buf_consume(mp_buf *b, size_t n);
/* Forgets the contents, keeps the allocation for reuse. */
static inline void mp_buf_clear(mp_buf *b) {
    b->len = 0;
}

/* msgpack-c write callback: msgpack_packer_init(&pk, buf, mp_buf_msgpack_write).
 * Returns 0 on success, -1 when memory runs out. */
int mp_buf_msgpack_write(void *buf, const char *data, size_t len);

/* Big-endian helpers for framing. */
static inline void mp_put_u32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t mp_get_u32be(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

#endif
