/* membership_wire.c - decoding SWIM messages (membership_wire.h). */
#include "fabric/membership_wire.h"

#include "core/mpread.h"
#include "core/vec.h"
#include "mpreg/value.h" /* mpreg_utf8_valid */

#include <stdlib.h>
#include <string.h>

#define MP_COMMON (MP_BIT(MP_K_VERSION) | MP_BIT(MP_K_TYPE) | MP_BIT(MP_K_FROM))
#define MP_NEWS (MP_BIT(MP_K_UPDATES) | MP_BIT(MP_K_ITEMS))
#define MP_SYNC (MP_BIT(MP_K_MEMBERS) | MP_BIT(MP_K_DIGEST))

static const uint32_t mp_required[MP_W_TYPE_MAX + 1] = {
    [MP_W_PING] = MP_COMMON | MP_BIT(MP_K_SEQ) | MP_BIT(MP_K_TARGET),
    [MP_W_PING_REQ] = MP_COMMON | MP_BIT(MP_K_SEQ) | MP_BIT(MP_K_TARGET) | MP_BIT(MP_K_TARGET_ADDR),
    [MP_W_ACK] = MP_COMMON | MP_BIT(MP_K_SEQ),
    [MP_W_GOSSIP] = MP_COMMON,
    [MP_W_SYNC] = MP_COMMON | MP_SYNC,
    [MP_W_SYNC_REPLY] = MP_COMMON | MP_SYNC,
};

static const uint32_t mp_optional[MP_W_TYPE_MAX + 1] = {
    [MP_W_PING] = MP_NEWS,
    [MP_W_PING_REQ] = MP_NEWS,
    [MP_W_ACK] = MP_NEWS,
    [MP_W_GOSSIP] = MP_NEWS,
    [MP_W_SYNC] = MP_NEWS | MP_BIT(MP_K_SEQ) | MP_BIT(MP_K_JOIN) | MP_BIT(MP_K_MEMBERS_DIGEST),
    [MP_W_SYNC_REPLY] = MP_NEWS | MP_BIT(MP_K_SEQ) | MP_BIT(MP_K_STATE) | MP_BIT(MP_K_WANT_STATE) |
                        MP_BIT(MP_K_MEMBERS_DIGEST) | MP_BIT(MP_K_WANT_MEMBERS),
};

/* Unknown keys one map may carry; bounded so the duplicate check needs no
 * allocation. */
#define MP_W_MAX_UNKNOWN 16

/* An id (min 1) or address (min 0): at most MP_SWIM_MAX_ID bytes, no NUL
 * (it would cut the C string short), valid UTF-8. */
mpreg_err mp_swim_text_check(const char *p, size_t len, size_t min) {
    if (len > MP_SWIM_MAX_ID) {
        return MPREG_E_TOO_LARGE;
    }
    if (len < min || (len && (memchr(p, '\0', len) || !mpreg_utf8_valid(p, len)))) {
        return MPREG_E_INVALID;
    }
    return MPREG_OK;
}

/* --- decoding ----------------------------------------------------------------- */

/* The whole message is checked first: at most 8 levels (ours use 3: the
 * message, the members array, a member map), ext only inside unknown
 * fields, and no container may claim more elements than bytes are left, so
 * the arrays allocated below are bounded by the input's size. */
static const mp_rd_limits mp_swim_scan_limits = {
    .max_depth = 8,
    .max_items = SIZE_MAX,
    .max_bytes = SIZE_MAX,
    .allow_ext = true,
    .early_counts = true,
    .depth_ignores_empty = false,
};

typedef struct mp_wkeys {
    uint32_t seen;
    uint32_t unknown_count;
    struct {
        uint64_t n;
        bool neg;
    } unknown[MP_W_MAX_UNKNOWN];
} mp_wkeys;

/* Reads one map key. A known key (1..max_known) is returned in *key once
 * (twice is MPREG_E_DUPLICATE); an unknown integer key is remembered for
 * the same check and its value skipped (*key = 0); any other key is
 * MPREG_E_DECODE. */
static mpreg_err mp_wkey(mp_rd *c, mp_wkeys *k, uint32_t max_known, uint32_t *key) {
    mp_rd_item it;
    mpreg_err err = mp_rd_next(c, &it);
    if (err) {
        return err;
    }
    if (it.type != MP_RD_UINT && it.type != MP_RD_NINT) {
        return MPREG_E_DECODE;
    }
    bool neg = it.type == MP_RD_NINT;
    if (!neg && it.n >= 1 && it.n <= max_known) {
        if (k->seen & MP_BIT(it.n)) {
            return MPREG_E_DUPLICATE;
        }
        k->seen |= MP_BIT(it.n);
        *key = (uint32_t)it.n;
        return MPREG_OK;
    }
    for (uint32_t i = 0; i < k->unknown_count; i++) {
        if (k->unknown[i].n == it.n && k->unknown[i].neg == neg) {
            return MPREG_E_DUPLICATE;
        }
    }
    if (k->unknown_count >= MP_W_MAX_UNKNOWN) {
        return MPREG_E_TOO_LARGE;
    }
    k->unknown[k->unknown_count].n = it.n;
    k->unknown[k->unknown_count].neg = neg;
    k->unknown_count++;
    *key = 0;
    /* The scan bounded the depth already. */
    return mp_rd_skip(c, MP_RD_ANY_DEPTH);
}

static mpreg_err mp_wtext(mp_rd *c, mp_str *s, size_t min) {
    mpreg_err err = mp_rd_str(c, s);
    return err ? err : mp_swim_text_check(s->ptr, s->len, min);
}

static mpreg_err mp_wbool(mp_rd *c, bool *b) {
    mp_rd_item it;
    mpreg_err err = mp_rd_expect(c, MP_RD_BOOL, &it);
    if (!err) {
        *b = it.n != 0;
    }
    return err;
}

static mpreg_err mp_wmember_read(mp_rd *c, mp_wmember *m) {
    uint32_t n = 0;
    mpreg_err err = mp_rd_map(c, &n);
    mp_wkeys k = {0};
    uint64_t st = MP_MEMBER_ALIVE;
    for (uint32_t i = 0; i < n && !err; i++) {
        uint32_t key = 0;
        err = mp_wkey(c, &k, MP_MK_MAX, &key);
        if (err) {
            break;
        }
        switch (key) {
        case MP_MK_ID:
            err = mp_wtext(c, &m->id, 1);
            break;
        case MP_MK_ADDR:
            err = mp_wtext(c, &m->addr, 0);
            break;
        case MP_MK_GENERATION:
            err = mp_rd_uint(c, &m->generation);
            break;
        case MP_MK_INCARNATION:
            err = mp_rd_uint(c, &m->incarnation);
            break;
        case MP_MK_STATE:
            err = mp_rd_uint(c, &st);
            if (!err && (st < MP_MEMBER_ALIVE || st > MP_MEMBER_LEFT)) {
                err = MPREG_E_INVALID;
            }
            break;
        case MP_MK_KEY:
            err = mp_rd_bin(c, &m->key);
            if (!err && m->key.len == 0) {
                err = MPREG_E_INVALID;
            } else if (!err && m->key.len > MP_SWIM_MAX_KEY) {
                err = MPREG_E_TOO_LARGE;
            }
            break;
        default:
            break; /* unknown, skipped */
        }
    }
    if (err) {
        return err;
    }
    const uint32_t need = MP_BIT(MP_MK_ID) | MP_BIT(MP_MK_ADDR) | MP_BIT(MP_MK_GENERATION) |
                          MP_BIT(MP_MK_INCARNATION);
    if ((k.seen & need) != need) {
        return MPREG_E_MISSING_FIELD;
    }
    m->state = (mp_member_state)st;
    return MPREG_OK;
}

/* An array head whose count is checked before anything is allocated for it. */
static mpreg_err mp_warray(mp_rd *c, uint32_t max, uint32_t *n) {
    mpreg_err err = mp_rd_array(c, n);
    if (err) {
        return err;
    }
    if (*n > max) {
        return MPREG_E_TOO_LARGE;
    }
    /* Every element takes a byte at least (the scan checked it too). */
    return *n > mp_rd_left(c) ? MPREG_E_TRUNCATED : MPREG_OK;
}

static mpreg_err mp_wmembers_read(mp_rd *c, mp_wmember **out, uint32_t *count) {
    uint32_t n;
    mpreg_err err = mp_warray(c, MP_SWIM_MAX_MEMBERS, &n);
    if (err || n == 0) {
        return err;
    }
    *out = calloc(n, sizeof **out);
    if (!*out) {
        return MPREG_E_NOMEM;
    }
    for (uint32_t i = 0; i < n && !err; i++) {
        err = mp_wmember_read(c, &(*out)[i]);
    }
    *count = n;
    return err;
}

static mpreg_err mp_witems_read(mp_rd *c, mp_bytes **out, uint32_t *count) {
    uint32_t n;
    mpreg_err err = mp_warray(c, MP_SWIM_MAX_MEMBERS, &n);
    if (err || n == 0) {
        return err;
    }
    *out = calloc(n, sizeof **out);
    if (!*out) {
        return MPREG_E_NOMEM;
    }
    for (uint32_t i = 0; i < n && !err; i++) {
        mp_bytes *b = &(*out)[i];
        err = mp_rd_bin(c, b);
        if (!err && b->len == 0) {
            err = MPREG_E_INVALID;
        }
        if (!err && b->len > MP_SWIM_MAX_ITEM) {
            err = MPREG_E_TOO_LARGE;
        }
    }
    *count = n;
    return err;
}

static mpreg_err mp_wfield(mp_rd *c, uint32_t key, mp_wmsg *m) {
    uint64_t v = 0;
    mpreg_err err;
    switch (key) {
    case MP_K_VERSION:
        err = mp_rd_uint(c, &v);
        return err ? err : v != MP_SWIM_WIRE_VERSION ? MPREG_E_VERSION : MPREG_OK;
    case MP_K_TYPE:
        err = mp_rd_uint(c, &v);
        if (!err && (v < 1 || v > MP_W_TYPE_MAX)) {
            err = MPREG_E_INVALID;
        }
        m->type = (uint32_t)v;
        return err;
    case MP_K_SEQ:
        return mp_rd_uint(c, &m->seq);
    case MP_K_FROM:
        err = mp_wmember_read(c, &m->from);
        /* A sender speaks for itself: alive, or leaving. */
        if (!err && m->from.state != MP_MEMBER_ALIVE && m->from.state != MP_MEMBER_LEFT) {
            err = MPREG_E_INVALID;
        }
        return err;
    case MP_K_TARGET:
        return mp_wtext(c, &m->target, 1);
    case MP_K_TARGET_ADDR:
        return mp_wtext(c, &m->target_addr, 0);
    case MP_K_UPDATES:
        return mp_wmembers_read(c, &m->updates, &m->update_count);
    case MP_K_ITEMS:
        return mp_witems_read(c, &m->items, &m->item_count);
    case MP_K_JOIN:
        return mp_wbool(c, &m->join);
    case MP_K_MEMBERS:
        return mp_wmembers_read(c, &m->members, &m->member_count);
    case MP_K_DIGEST:
        return mp_rd_uint(c, &m->digest);
    case MP_K_STATE:
        err = mp_rd_bin(c, &m->state);
        return err ? err : m->state.len > MP_SWIM_MAX_STATE ? MPREG_E_TOO_LARGE : MPREG_OK;
    case MP_K_WANT_STATE:
        return mp_wbool(c, &m->want_state);
    case MP_K_MEMBERS_DIGEST:
        return mp_rd_uint(c, &m->members_digest);
    case MP_K_WANT_MEMBERS:
        return mp_wbool(c, &m->want_members);
    }
    return MPREG_OK; /* 0: an unknown field, already skipped */
}

void mp_wmsg_free(mp_wmsg *m) {
    free(m->updates);
    free(m->items);
    free(m->members);
}

static mpreg_err mp_wmsg_read(mp_rd *c, mp_wmsg *m) {
    uint32_t n = 0;
    mpreg_err err = mp_rd_map(c, &n);
    mp_wkeys k = {0};
    for (uint32_t i = 0; i < n && !err; i++) {
        uint32_t key = 0;
        err = mp_wkey(c, &k, MP_K_MAX, &key);
        /* Version, then type, come first: a reader learns at once whether it
         * can read the rest, and how. */
        if (!err && ((i == 0 && key != MP_K_VERSION) || (i == 1 && key != MP_K_TYPE))) {
            err = MPREG_E_DECODE;
        }
        if (!err) {
            err = mp_wfield(c, key, m);
        }
    }
    if (err) {
        return err;
    }
    if (c->p != c->end) {
        return MPREG_E_TRAILING;
    }
    m->seen = k.seen;
    if (!(k.seen & MP_BIT(MP_K_VERSION)) || !(k.seen & MP_BIT(MP_K_TYPE))) {
        return MPREG_E_MISSING_FIELD;
    }
    if (k.seen & ~(mp_required[m->type] | mp_optional[m->type])) {
        return MPREG_E_INVALID; /* a field this type does not carry */
    }
    if ((k.seen & mp_required[m->type]) != mp_required[m->type]) {
        return MPREG_E_MISSING_FIELD;
    }
    return MPREG_OK;
}

mpreg_err mp_wmsg_decode(const uint8_t *data, size_t len, mp_wmsg *m) {
    memset(m, 0, sizeof *m);
    if (!data && len) {
        return MPREG_E_INVALID;
    }
    mpreg_err err = mp_rd_scan(data, len, &mp_swim_scan_limits, NULL);
    if (!err) {
        mp_rd c = mp_rd_init(data, len);
        err = mp_wmsg_read(&c, m);
    }
    if (err) {
        mp_wmsg_free(m);
        memset(m, 0, sizeof *m);
    }
    return err;
}
