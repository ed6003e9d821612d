/* mpread.h - strict MessagePack reading over untrusted bytes.
 *
 * The one place that knows how a MessagePack item head is laid out and how
 * to bound it against the input that is left. Nothing here allocates or
 * recurses, and no length, count or value is trusted before the bytes it
 * claims have been checked to be there.
 *
 * Two ways in:
 *  - a cursor (mp_rd) that reads one item head at a time, with typed reads
 *    for decoders that walk their format themselves (envelope.c: zero copy,
 *    strings view the input);
 *  - mp_rd_scan, a structural check of one complete item under limits, for
 *    decoders that then hand the bytes to msgpack-c (value.c, delta.c),
 *    whose unpacker allocates for whatever element count a 5-byte header
 *    claims and whose fixed 32-level stack turns deep input into an
 *    anonymous parse error.
 *
 * Errors: MPREG_E_TRUNCATED (the input ends inside an item), MPREG_E_DECODE
 * (the never-used byte 0xc1, a refused ext, or a typed read of the wrong
 * type), and for scans also MPREG_E_TOO_DEEP, MPREG_E_TOO_LARGE and
 * MPREG_E_TRAILING. A function that fails leaves the cursor where it was. */
#ifndef MP_MPREAD_H
#define MP_MPREAD_H

#include "core/str.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Type families: the wire format's widths are folded away. */
typedef enum mp_rd_type {
    MP_RD_NIL,
    MP_RD_BOOL,  /* n: 0 or 1 */
    MP_RD_UINT,  /* an integer >= 0 in any format (fixint, uint8..64, int8..64); n: it */
    MP_RD_NINT,  /* an integer < 0 in any format; n: its two's complement, (int64_t)n */
    MP_RD_F32,   /* f: the value; ptr: its 4 big-endian bytes */
    MP_RD_F64,   /* f: the value; ptr: its 8 big-endian bytes */
    MP_RD_STR,   /* n: length; ptr: the bytes (not checked to be UTF-8) */
    MP_RD_BIN,   /* n: length; ptr: the bytes */
    MP_RD_ARRAY, /* n: element count; the elements follow at the cursor */
    MP_RD_MAP,   /* n: entry count (key and value pairs); the entries follow */
    MP_RD_EXT,   /* n: data length; ptr: the data; ext_type: the application's type */
} mp_rd_type;

/* One item head. Signed integers that hold a value >= 0 read as UINT, so
 * that a field another language's encoder wrote as int8 still reads as a
 * number, and every width of -1 reads as the same NINT. */
typedef struct mp_rd_item {
    mp_rd_type type;
    int8_t ext_type;
    uint64_t n;
    double f;
    const uint8_t *ptr; /* into the input; its n bytes (4/8 for floats) are there */
} mp_rd_item;

typedef struct mp_rd {
    const uint8_t *p;   /* the next unread byte */
    const uint8_t *end; /* one past the last byte of the input */
} mp_rd;

/* Containers nested in containers that a depth-capped walk can follow: its
 * stack of per-level counts lives on the C stack (8 bytes a level). */
#define MP_RD_MAX_DEPTH 64u
/* mp_rd_skip's cap for "any depth": a counter instead of a stack. */
#define MP_RD_ANY_DEPTH UINT32_MAX

/* A cursor over len bytes at data. NULL data is an empty input. */
static inline mp_rd mp_rd_init(const void *data, size_t len) {
    /* NULL + 0 is undefined behaviour; an empty view of "" is not. */
    const uint8_t *p = data ? (const uint8_t *)data : (const uint8_t *)"";
    return (mp_rd){p, p + (data ? len : 0)};
}

static inline size_t mp_rd_left(const mp_rd *c) {
    return (size_t)(c->end - c->p);
}

/* mp_rd_next for every head; mp_rd_next takes the common ones inline. */
mpreg_err mp_rd_next_slow(mp_rd *c, mp_rd_item *it);

/* Reads one item head and steps over it. A str, bin, ext or float body has
 * been bounds-checked and stepped over too (it->ptr views it); an array's
 * elements or a map's entries are what the cursor reads next. The heads an
 * envelope is mostly made of (small numbers and field keys, short strings,
 * small maps and arrays) take the inline path: it is the broker's hot path. */
static inline mpreg_err mp_rd_next(mp_rd *c, mp_rd_item *it) {
    if (c->p < c->end) {
        uint8_t b = *c->p;
        if (b <= 0x7f) {
            c->p++;
            it->type = MP_RD_UINT;
            it->n = b;
            return MPREG_OK;
        }
        if ((b & 0xe0) == 0xa0 && mp_rd_left(c) > (size_t)(b & 0x1f)) {
            it->type = MP_RD_STR;
            it->n = b & 0x1f;
            it->ptr = c->p + 1;
            c->p += 1 + it->n;
            return MPREG_OK;
        }
        if ((b & 0xe0) == 0x80) {
            c->p++;
            it->type = b <= 0x8f ? MP_RD_MAP : MP_RD_ARRAY;
            it->n = b & 0x0f;
            return MPREG_OK;
        }
    }
    return mp_rd_next_slow(c, it);
}

/* Reads one item head and insists on its type: MPREG_E_DECODE when it is
 * another (the cursor stays put), MPREG_E_TRUNCATED when the input ends
 * inside the item, whatever its type (a short frame is not a type error). */
static inline mpreg_err mp_rd_expect(mp_rd *c, mp_rd_type type, mp_rd_item *it) {
    const uint8_t *start = c->p;
    mpreg_err err = mp_rd_next(c, it);
    if (err == MPREG_OK && it->type != type) {
        c->p = start;
        err = MPREG_E_DECODE;
    }
    return err;
}

/* Typed reads, as mp_rd_expect. Views point into the input. */
static inline mpreg_err mp_rd_uint(mp_rd *c, uint64_t *v) {
    mp_rd_item it;
    mpreg_err err = mp_rd_expect(c, MP_RD_UINT, &it);
    if (err == MPREG_OK) {
        *v = it.n;
    }
    return err;
}

static inline mpreg_err mp_rd_str(mp_rd *c, mp_str *s) {
    mp_rd_item it;
    mpreg_err err = mp_rd_expect(c, MP_RD_STR, &it);
    if (err == MPREG_OK) {
        s->ptr = (const char *)it.ptr;
        s->len = (size_t)it.n;
    }
    return err;
}

/* bin8 and bin16 inline: every envelope has a bin8 id, most a payload. */
static inline mpreg_err mp_rd_bin(mp_rd *c, mp_bytes *b) {
    size_t left = mp_rd_left(c);
    if (left >= 3 && (c->p[0] == 0xc4 || c->p[0] == 0xc5)) {
        size_t head = c->p[0] == 0xc4 ? 2 : 3;
        size_t len = head == 2 ? c->p[1] : (size_t)c->p[1] << 8 | c->p[2];
        if (left - head >= len) {
            b->ptr = c->p + head;
            b->len = len;
            c->p += head + len;
            return MPREG_OK;
        }
    }
    mp_rd_item it;
    mpreg_err err = mp_rd_expect(c, MP_RD_BIN, &it);
    if (err == MPREG_OK) {
        b->ptr = it.ptr;
        b->len = (size_t)it.n;
    }
    return err;
}

/* Array and map heads: the count, at most UINT32_MAX by the format. The
 * elements are not read, so a count is a claim, not a promise. */
static inline mpreg_err mp_rd_array(mp_rd *c, uint32_t *n) {
    mp_rd_item it;
    mpreg_err err = mp_rd_expect(c, MP_RD_ARRAY, &it);
    if (err == MPREG_OK) {
        *n = (uint32_t)it.n;
    }
    return err;
}

static inline mpreg_err mp_rd_map(mp_rd *c, uint32_t *n) {
    mp_rd_item it;
    mpreg_err err = mp_rd_expect(c, MP_RD_MAP, &it);
    if (err == MPREG_OK) {
        *n = (uint32_t)it.n;
    }
    return err;
}

/* Steps over one complete item of any type, ext included, without
 * recursion. Containers nested deeper than max_depth (a container inside
 * max_depth others) fail with MPREG_E_TOO_DEEP; caps above MP_RD_MAX_DEPTH
 * are MP_RD_MAX_DEPTH. MP_RD_ANY_DEPTH counts the items still owed instead,
 * so depth costs nothing: for skipping values one does not read, where the
 * depth is the sender's business. Every item takes a byte at least, so a
 * lying count ends in MPREG_E_TRUNCATED, not a long loop. */
mpreg_err mp_rd_skip(mp_rd *c, uint32_t max_depth);

/* What mp_rd_scan accepts. A zero limit allows none of what it counts
 * (max_depth 0: scalars only); SIZE_MAX items or bytes is no limit. */
typedef struct mp_rd_limits {
    /* A container inside max_depth others is MPREG_E_TOO_DEEP; the top
     * item is inside none. At most MP_RD_MAX_DEPTH. */
    uint32_t max_depth;
    /* Array elements plus map entries (a key and value pair counts once),
     * summed over the item: MPREG_E_TOO_LARGE above it. */
    size_t max_items;
    /* str, bin and ext data bytes summed over the item: MPREG_E_TOO_LARGE
     * above it, checked before the input is (a huge claim is too large
     * rather than merely truncated). */
    size_t max_bytes;
    /* Ext items pass as opaque data; otherwise they are MPREG_E_DECODE as
     * soon as their type byte is read. */
    bool allow_ext;
    /* A container claiming more elements than bytes are left fails as
     * MPREG_E_TRUNCATED at its head (each element takes a byte at least),
     * before its depth is checked, instead of where the input runs out.
     * Without it the first problem in input order names the error. */
    bool early_counts;
    /* Empty containers are not checked against max_depth: they open no
     * level (of this walk or of a stack-based unpacker), so only
     * containers holding something count. */
    bool depth_ignores_empty;
} mp_rd_limits;

/* Checks that len bytes at data are exactly one item within *lim,
 * without allocating. Problems are reported as they are met in input
 * order (but see early_counts). *used, when not NULL, gets the item's
 * length on MPREG_OK and on MPREG_E_TRAILING (bytes after a complete
 * item). */
mpreg_err mp_rd_scan(const void *data, size_t len, const mp_rd_limits *lim, size_t *used);

#endif
