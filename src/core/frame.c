/* frame.c - incremental length-prefixed frame decoder and frame writer. */
#include "core/frame.h"

#include <stdlib.h>
#include <string.h>

/* First allocation for a partial frame: small, since most split frames are
 * small envelopes and a lying header must not cost more than what arrived. */
#define MP_FRAME_MIN_ALLOC 64u
/* A partial buffer bigger than this is released once its frame is delivered,
 * so one large frame does not pin its memory for the connection's lifetime. */
#define MP_FRAME_RETAIN_MAX (64u * 1024u)

static uint32_t mp_frame_resolve_max(uint32_t max_frame) {
    if (max_frame == 0) {
        return MP_FRAME_DEFAULT_MAX;
    }
    return max_frame > MP_FRAME_LIMIT_MAX ? MP_FRAME_LIMIT_MAX : max_frame;
}

static mpreg_err mp_frame_check_len(uint64_t len, uint32_t max_frame) {
    if (len == 0) {
        return MPREG_E_FRAME_EMPTY;
    }
    if (len > max_frame) {
        return MPREG_E_FRAME_TOO_LARGE;
    }
    return MPREG_OK;
}

static size_t mp_min_size(size_t a, size_t b) {
    return a < b ? a : b;
}

/* ---- decoder -------------------------------------------------------------- */

void mp_frame_decoder_init(mp_frame_decoder *d, uint32_t max_frame) {
    mp_buf_init(&d->partial);
    d->body_len = 0;
    d->max_frame = mp_frame_resolve_max(max_frame);
    d->error = MPREG_OK;
}

void mp_frame_decoder_free(mp_frame_decoder *d) {
    mp_buf_free(&d->partial);
    d->body_len = 0;
    d->error = MPREG_E_CLOSED;
}

size_t mp_frame_decoder_buffered(const mp_frame_decoder *d) {
    return d->partial.len;
}

/* Records the error and drops the buffered bytes: nothing after a bad header
 * or a close can be used, so there is no reason to keep holding them. */
static mpreg_err mp_frame_poison(mp_frame_decoder *d, mpreg_err err) {
    mp_buf_free(&d->partial);
    d->body_len = 0;
    d->error = err;
    return err;
}

/* Makes room for `need` bytes in total. Grows geometrically (amortised O(1)
 * per byte) but never past `limit`, which is the size of the frame being
 * assembled: mp_buf_reserve's doubling could otherwise reach twice the
 * maximum frame size. */
static mpreg_err mp_frame_grow(mp_buf *b, size_t need, size_t limit) {
    if (need <= b->cap) {
        return MPREG_OK;
    }
    size_t cap = b->cap > limit / 2 ? limit : b->cap * 2;
    if (cap < MP_FRAME_MIN_ALLOC) {
        cap = MP_FRAME_MIN_ALLOC;
    }
    if (cap < need) {
        cap = need;
    }
    if (cap > limit) {
        cap = limit;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        return MPREG_E_NOMEM;
    }
    b->data = p;
    b->cap = cap;
    return MPREG_OK;
}

/* Moves up to `want` bytes from data into the partial buffer, whose size is
 * capped at `limit`; returns the number moved through *moved. */
static mpreg_err mp_frame_take(mp_frame_decoder *d, const uint8_t *data, size_t len, size_t want,
                               size_t limit, size_t *moved) {
    size_t n = mp_min_size(want, len);
    *moved = 0;
    if (n == 0) {
        return MPREG_OK;
    }
    mpreg_err err = mp_frame_grow(&d->partial, d->partial.len + n, limit);
    if (err) {
        return err;
    }
    memcpy(d->partial.data + d->partial.len, data, n);
    d->partial.len += n;
    *moved = n;
    return MPREG_OK;
}

/* A pause travels as this internal code until mp_frame_decoder_feed_some
 * turns it back into MPREG_OK; it never escapes this file. */
#define MP_FRAME_PAUSED ((mpreg_err)-1)

static mpreg_err mp_frame_stop_err(int stop) {
    if (stop == MP_FRAME_GO) {
        return MPREG_OK;
    }
    return stop == MP_FRAME_PAUSE ? MP_FRAME_PAUSED : MPREG_E_CLOSED;
}

/* Hands the assembled frame to cb and resets the buffer for the next one.
 * The buffer is cleared only after cb returns: cb reads from it. */
static mpreg_err mp_frame_deliver_partial(mp_frame_decoder *d, mp_frame_cb cb, void *ud) {
    int stop = cb(ud, d->partial.data + MP_FRAME_HEADER, d->body_len);
    if (d->partial.cap > MP_FRAME_RETAIN_MAX) {
        mp_buf_free(&d->partial);
    } else {
        mp_buf_clear(&d->partial);
    }
    d->body_len = 0;
    return mp_frame_stop_err(stop);
}

/* Continues (or starts) the frame held in the partial buffer with bytes from
 * data. *used gets the bytes consumed; when the frame completes it is
 * delivered and the partial buffer is empty again. */
static mpreg_err mp_frame_feed_partial(mp_frame_decoder *d, const uint8_t *data, size_t len,
                                       mp_frame_cb cb, void *ud, size_t *used) {
    size_t off = 0;
    size_t moved;
    mpreg_err err;
    *used = 0;
    if (d->partial.len < MP_FRAME_HEADER) {
        err =
            mp_frame_take(d, data, len, MP_FRAME_HEADER - d->partial.len, MP_FRAME_HEADER, &moved);
        off += moved;
        *used = off;
        if (err || d->partial.len < MP_FRAME_HEADER) {
            return err;
        }
        uint32_t n = mp_get_u32be(d->partial.data);
        err = mp_frame_check_len(n, d->max_frame);
        if (err) {
            return err;
        }
        d->body_len = n;
    }
    size_t total = (size_t)MP_FRAME_HEADER + d->body_len;
    err = mp_frame_take(d, data + off, len - off, total - d->partial.len, total, &moved);
    off += moved;
    *used = off;
    if (err || d->partial.len < total) {
        return err;
    }
    return mp_frame_deliver_partial(d, cb, ud);
}

/* Delivers every frame that lies wholly inside data, in place. Stops at the
 * first incomplete frame; *used gets the bytes of the complete ones. */
static mpreg_err mp_frame_feed_whole(mp_frame_decoder *d, const uint8_t *data, size_t len,
                                     mp_frame_cb cb, void *ud, size_t *used) {
    size_t off = 0;
    mpreg_err err = MPREG_OK;
    while (len - off >= MP_FRAME_HEADER) {
        uint32_t n = mp_get_u32be(data + off);
        err = mp_frame_check_len(n, d->max_frame);
        if (err || len - off - MP_FRAME_HEADER < n) {
            break;
        }
        int stop = cb(ud, data + off + MP_FRAME_HEADER, n);
        off += MP_FRAME_HEADER + (size_t)n;
        if (stop != MP_FRAME_GO) {
            err = mp_frame_stop_err(stop);
            break;
        }
    }
    *used = off;
    return err;
}

mpreg_err mp_frame_decoder_feed(mp_frame_decoder *d, const uint8_t *data, size_t len,
                                mp_frame_cb cb, void *ud) {
    size_t consumed;
    return mp_frame_decoder_feed_some(d, data, len, cb, ud, &consumed);
}

/* A pause ends the feed with what was consumed; any other error poisons. */
static mpreg_err mp_frame_feed_end(mp_frame_decoder *d, mpreg_err err, size_t off,
                                   size_t *consumed) {
    if (err == MP_FRAME_PAUSED) {
        *consumed = off;
        return MPREG_OK;
    }
    return mp_frame_poison(d, err);
}

mpreg_err mp_frame_decoder_feed_some(mp_frame_decoder *d, const uint8_t *data, size_t len,
                                     mp_frame_cb cb, void *ud, size_t *consumed) {
    *consumed = 0;
    if (d->error) {
        return d->error;
    }
    if (!cb) {
        return mp_frame_poison(d, MPREG_E_INVALID);
    }
    if (len == 0) {
        return MPREG_OK; /* also keeps pointer arithmetic off a NULL data */
    }
    size_t off = 0;
    size_t used;
    mpreg_err err;
    /* 1. Finish the frame left over from earlier feeds. */
    if (d->partial.len > 0) {
        err = mp_frame_feed_partial(d, data, len, cb, ud, &used);
        if (err) {
            return mp_frame_feed_end(d, err, used, consumed);
        }
        off = used;
        if (d->partial.len > 0) {
            *consumed = len;
            return MPREG_OK; /* still incomplete: all of data went into it */
        }
    }
    /* 2. Frames wholly inside this chunk: zero-copy. */
    err = mp_frame_feed_whole(d, data + off, len - off, cb, ud, &used);
    if (err) {
        return mp_frame_feed_end(d, err, off + used, consumed);
    }
    off += used;
    /* 3. The tail starts a frame that a later feed completes. */
    if (off < len) {
        err = mp_frame_feed_partial(d, data + off, len - off, cb, ud, &used);
        if (err) {
            return mp_frame_feed_end(d, err, off + used, consumed);
        }
    }
    *consumed = len;
    return MPREG_OK;
}

/* ---- writer --------------------------------------------------------------- */

size_t mp_frame_begin(mp_buf *out) {
    size_t start = out->len;
    if (mp_buf_append_u32be(out, 0) != MPREG_OK) {
        return MP_FRAME_BEGIN_FAILED;
    }
    return start;
}

mpreg_err mp_frame_end(mp_buf *out, size_t start, uint32_t max_frame) {
    if (start == MP_FRAME_BEGIN_FAILED) {
        return MPREG_E_NOMEM;
    }
    if (start > out->len || out->len - start < MP_FRAME_HEADER) {
        return MPREG_E_INVALID;
    }
    size_t body = out->len - start - MP_FRAME_HEADER;
    mpreg_err err = mp_frame_check_len(body, mp_frame_resolve_max(max_frame));
    if (err) {
        out->len = start;
        return err;
    }
    mp_put_u32be(out->data + start, (uint32_t)body);
    return MPREG_OK;
}

mpreg_err mp_frame_write(mp_buf *out, const void *payload, size_t len, uint32_t max_frame) {
    mpreg_err err = mp_frame_check_len(len, mp_frame_resolve_max(max_frame));
    if (err) {
        return err;
    }
    /* Reserve both parts first so a failure cannot leave a lone header. */
    err = mp_buf_reserve(out, MP_FRAME_HEADER + len);
    if (err) {
        return err;
    }
    mp_buf_append_u32be(out, (uint32_t)len);
    mp_buf_append(out, payload, len);
    return MPREG_OK;
}
