/* mpread.c - strict MessagePack reading over untrusted bytes.
 *
 * Everything goes through mp_rd_head_read, the only code that interprets
 * type bytes: it reads an item's head (type byte, then any length, count,
 * value and ext type bytes) and says how many body bytes follow, without
 * looking at them. Its callers decide what to check before the body: the
 * cursor only bounds it, a scan first weighs it against its limits. */
#include "core/mpread.h"

#include <string.h>

/* An item head as read, before its body is looked at. */
typedef struct mp_rd_head {
    mp_rd_type type;
    int8_t ext_type;
    size_t size;   /* bytes of the head, type byte included */
    uint64_t n;    /* as mp_rd_item.n */
    uint64_t body; /* bytes after the head that belong to the item */
} mp_rd_head;

/* The type bytes from 0xc0 on, which are not fix-forms: the big-endian
 * field after the type byte (a length, count or value) is `width` bytes,
 * and the body's length when `sized`; `fixed` is the body of the forms
 * whose length the type byte implies (float bits, fixext data); `ext` is 1
 * where an ext type byte ends the head. Reserved marks 0xc1, never used. */
enum { MP_RD_RESERVED = -1 };

typedef struct mp_rd_format {
    signed char type; /* mp_rd_type or MP_RD_RESERVED */
    uint8_t width;
    uint8_t sized;
    uint8_t fixed;
    uint8_t ext;
} mp_rd_format;

static const mp_rd_format mp_rd_formats[32] = {
    {MP_RD_NIL, 0, 0, 0, 0},      /* c0 nil */
    {MP_RD_RESERVED, 0, 0, 0, 0}, /* c1 never used */
    {MP_RD_BOOL, 0, 0, 0, 0},     /* c2 false */
    {MP_RD_BOOL, 0, 0, 0, 0},     /* c3 true */
    {MP_RD_BIN, 1, 1, 0, 0},      /* c4 bin8 */
    {MP_RD_BIN, 2, 1, 0, 0},      /* c5 bin16 */
    {MP_RD_BIN, 4, 1, 0, 0},      /* c6 bin32 */
    {MP_RD_EXT, 1, 1, 0, 1},      /* c7 ext8 */
    {MP_RD_EXT, 2, 1, 0, 1},      /* c8 ext16 */
    {MP_RD_EXT, 4, 1, 0, 1},      /* c9 ext32 */
    {MP_RD_F32, 0, 0, 4, 0},      /* ca float32 */
    {MP_RD_F64, 0, 0, 8, 0},      /* cb float64 */
    {MP_RD_UINT, 1, 0, 0, 0},     /* cc uint8 */
    {MP_RD_UINT, 2, 0, 0, 0},     /* cd uint16 */
    {MP_RD_UINT, 4, 0, 0, 0},     /* ce uint32 */
    {MP_RD_UINT, 8, 0, 0, 0},     /* cf uint64 */
    {MP_RD_NINT, 1, 0, 0, 0},     /* d0 int8: NINT or UINT by sign */
    {MP_RD_NINT, 2, 0, 0, 0},     /* d1 int16 */
    {MP_RD_NINT, 4, 0, 0, 0},     /* d2 int32 */
    {MP_RD_NINT, 8, 0, 0, 0},     /* d3 int64 */
    {MP_RD_EXT, 0, 0, 1, 1},      /* d4 fixext1 */
    {MP_RD_EXT, 0, 0, 2, 1},      /* d5 fixext2 */
    {MP_RD_EXT, 0, 0, 4, 1},      /* d6 fixext4 */
    {MP_RD_EXT, 0, 0, 8, 1},      /* d7 fixext8 */
    {MP_RD_EXT, 0, 0, 16, 1},     /* d8 fixext16 */
    {MP_RD_STR, 1, 1, 0, 0},      /* d9 str8 */
    {MP_RD_STR, 2, 1, 0, 0},      /* da str16 */
    {MP_RD_STR, 4, 1, 0, 0},      /* db str32 */
    {MP_RD_ARRAY, 2, 0, 0, 0},    /* dc array16 */
    {MP_RD_ARRAY, 4, 0, 0, 0},    /* dd array32 */
    {MP_RD_MAP, 2, 0, 0, 0},      /* de map16 */
    {MP_RD_MAP, 4, 0, 0, 0},      /* df map32 */
};

static uint64_t mp_rd_load(const uint8_t *p, unsigned width) {
    uint64_t v = 0;
    for (unsigned i = 0; i < width; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

/* A big-endian field of the widths the format has, each load unrolled. */
static uint64_t mp_rd_be(const uint8_t *p, unsigned width) {
    switch (width) {
    case 1:
        return p[0];
    case 2:
        return mp_rd_load(p, 2);
    case 4:
        return mp_rd_load(p, 4);
    case 8:
        return mp_rd_load(p, 8);
    default:
        return 0;
    }
}

/* Heads that are the type byte alone: fixints, fixmap, fixarray, fixstr. */
static mp_rd_head mp_rd_fix_head(uint8_t b) {
    if (b <= 0x7f) {
        return (mp_rd_head){.type = MP_RD_UINT, .size = 1, .n = b};
    }
    if (b >= 0xe0) {
        return (mp_rd_head){.type = MP_RD_NINT, .size = 1, .n = (uint64_t)(int64_t)(int8_t)b};
    }
    if (b <= 0x9f) {
        mp_rd_type type = b <= 0x8f ? MP_RD_MAP : MP_RD_ARRAY;
        return (mp_rd_head){.type = type, .size = 1, .n = b & 0x0fu};
    }
    return (mp_rd_head){.type = MP_RD_STR, .size = 1, .n = b & 0x1fu, .body = b & 0x1fu};
}

/* Signed formats: sign-extended to 64 bits, and UINT when not negative. */
static void mp_rd_signed(uint64_t raw, unsigned width, mp_rd_head *h) {
    uint64_t sign = (uint64_t)1 << (width * 8 - 1);
    if (raw & sign) {
        h->type = MP_RD_NINT;
        h->n = width == 8 ? raw : raw | ~((sign << 1) - 1);
    } else {
        h->type = MP_RD_UINT;
        h->n = raw;
    }
}

/* Reads the head of the item at p (avail >= 1 bytes there). Ext is refused
 * on its type byte when allow_ext is false, before the head's length is. */
static inline mpreg_err mp_rd_head_read(const uint8_t *p, size_t avail, bool allow_ext,
                                        mp_rd_head *h) {
    uint8_t b = p[0];
    if (b <= 0xbf || b >= 0xe0) {
        *h = mp_rd_fix_head(b);
        return MPREG_OK;
    }
    mp_rd_format f = mp_rd_formats[b - 0xc0];
    if (f.type == MP_RD_RESERVED || (f.type == MP_RD_EXT && !allow_ext)) {
        return MPREG_E_DECODE;
    }
    size_t size = 1 + (size_t)f.width + f.ext;
    if (avail < size) {
        return MPREG_E_TRUNCATED;
    }
    uint64_t v = mp_rd_be(p + 1, f.width);
    h->type = (mp_rd_type)f.type;
    h->ext_type = f.ext ? (int8_t)p[size - 1] : 0;
    h->size = size;
    h->n = f.fixed ? f.fixed : v; /* a fixed body has no field: width 0 */
    h->body = f.sized ? v : f.fixed;
    if (h->type == MP_RD_NINT) {
        mp_rd_signed(v, f.width, h);
    } else if (h->type == MP_RD_BOOL) {
        h->n = b & 1;
    }
    return MPREG_OK;
}

/* The head at the cursor plus a bounds check of its body. */
static mpreg_err mp_rd_item_read(const mp_rd *c, bool allow_ext, mp_rd_head *h) {
    if (c->p == c->end) {
        return MPREG_E_TRUNCATED;
    }
    size_t avail = mp_rd_left(c);
    mpreg_err err = mp_rd_head_read(c->p, avail, allow_ext, h);
    if (err == MPREG_OK && h->body > avail - h->size) {
        err = MPREG_E_TRUNCATED;
    }
    return err;
}

static double mp_rd_float(const uint8_t *p, mp_rd_type type) {
    if (type == MP_RD_F32) {
        uint32_t bits = (uint32_t)mp_rd_load(p, 4);
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    uint64_t bits = mp_rd_load(p, 8);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

mpreg_err mp_rd_next_slow(mp_rd *c, mp_rd_item *it) {
    mp_rd_head h;
    mpreg_err err = mp_rd_item_read(c, true, &h);
    if (err) {
        return err;
    }
    it->type = h.type;
    it->ext_type = h.ext_type;
    it->n = h.n;
    it->ptr = c->p + h.size;
    it->f = h.type == MP_RD_F32 || h.type == MP_RD_F64 ? mp_rd_float(it->ptr, h.type) : 0.0;
    c->p += h.size + (size_t)h.body;
    return MPREG_OK;
}

/* Skip at any depth: a counter of items still owed replaces the stack. It
 * cannot overflow: a map32 head adds at most 2^33 items for its 5 bytes,
 * so even 4 GiB of them stays below 2^63. */
static mpreg_err mp_rd_skip_flat(mp_rd *c) {
    mp_rd r = *c;
    uint64_t owed = 1;
    while (owed > 0) {
        mp_rd_head h;
        mpreg_err err = mp_rd_item_read(&r, true, &h);
        if (err) {
            return err;
        }
        r.p += h.size + (size_t)h.body;
        owed--;
        if (h.type == MP_RD_ARRAY) {
            owed += h.n;
        } else if (h.type == MP_RD_MAP) {
            owed += 2 * h.n;
        }
    }
    *c = r;
    return MPREG_OK;
}

/* The state of a depth-capped walk. left[d] counts the items still
 * expected at nesting level d; level 0 is the top, which expects one. */
typedef struct mp_rd_walker {
    mp_rd r;
    const mp_rd_limits *lim;
    uint32_t max_depth;
    uint32_t depth;
    size_t items;
    size_t bytes;
    uint64_t *left; /* max_depth + 1 levels */
} mp_rd_walker;

static mpreg_err mp_rd_walk_body(mp_rd_walker *w, const mp_rd_head *h) {
    bool data = h->type == MP_RD_STR || h->type == MP_RD_BIN || h->type == MP_RD_EXT;
    if (data && h->body > w->lim->max_bytes - w->bytes) {
        return MPREG_E_TOO_LARGE;
    }
    if (h->body > mp_rd_left(&w->r)) {
        return MPREG_E_TRUNCATED;
    }
    if (data) {
        w->bytes += (size_t)h->body;
    }
    w->r.p += h->body;
    return MPREG_OK;
}

static mpreg_err mp_rd_walk_container(mp_rd_walker *w, const mp_rd_head *h) {
    uint64_t elems = h->type == MP_RD_MAP ? 2 * h->n : h->n;
    if (w->lim->early_counts && elems > mp_rd_left(&w->r)) {
        return MPREG_E_TRUNCATED;
    }
    if (w->depth >= w->max_depth && !(w->lim->depth_ignores_empty && h->n == 0)) {
        return MPREG_E_TOO_DEEP;
    }
    if (h->n > w->lim->max_items - w->items) {
        return MPREG_E_TOO_LARGE;
    }
    w->items += (size_t)h->n;
    if (elems > 0) {
        /* An empty container expects nothing: no level to open. */
        w->left[++w->depth] = elems;
    }
    return MPREG_OK;
}

/* Walks one complete item at the cursor under *lim and steps over it. */
static mpreg_err mp_rd_walk(mp_rd *c, const mp_rd_limits *lim) {
    uint64_t left[MP_RD_MAX_DEPTH + 1];
    mp_rd_walker w = {.r = *c, .lim = lim, .max_depth = lim->max_depth, .left = left};
    if (w.max_depth > MP_RD_MAX_DEPTH) {
        w.max_depth = MP_RD_MAX_DEPTH;
    }
    left[0] = 1;
    for (;;) {
        while (w.left[w.depth] == 0) {
            if (w.depth == 0) {
                *c = w.r;
                return MPREG_OK;
            }
            w.depth--;
        }
        w.left[w.depth]--;
        if (w.r.p == w.r.end) {
            return MPREG_E_TRUNCATED;
        }
        mp_rd_head h;
        mpreg_err err = mp_rd_head_read(w.r.p, mp_rd_left(&w.r), lim->allow_ext, &h);
        if (err) {
            return err;
        }
        w.r.p += h.size;
        if (h.type == MP_RD_ARRAY || h.type == MP_RD_MAP) {
            err = mp_rd_walk_container(&w, &h);
        } else {
            err = mp_rd_walk_body(&w, &h);
        }
        if (err) {
            return err;
        }
    }
}

mpreg_err mp_rd_skip(mp_rd *c, uint32_t max_depth) {
    if (max_depth == MP_RD_ANY_DEPTH) {
        return mp_rd_skip_flat(c);
    }
    const mp_rd_limits lim = {
        .max_depth = max_depth,
        .max_items = SIZE_MAX,
        .max_bytes = SIZE_MAX,
        .allow_ext = true,
    };
    return mp_rd_walk(c, &lim);
}

mpreg_err mp_rd_scan(const void *data, size_t len, const mp_rd_limits *lim, size_t *used) {
    mp_rd c = mp_rd_init(data, len);
    const uint8_t *start = c.p;
    mpreg_err err = mp_rd_walk(&c, lim);
    if (err) {
        return err;
    }
    if (used) {
        *used = (size_t)(c.p - start);
    }
    return c.p == c.end ? MPREG_OK : MPREG_E_TRAILING;
}
