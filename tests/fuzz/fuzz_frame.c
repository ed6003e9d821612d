/* fuzz_frame.c - the frame decoder must give the same frames and the same
 * final result whatever the chunking and wherever a reader pauses
 * (mp_frame_decoder_feed_some), and agree with a naive whole-buffer
 * parser.
 *
 * Input: byte 0 picks the chunk size (low 5 bits) and a small maximum frame
 * size (high 3 bits), so that "too large" and frames split over many feeds
 * are both easy to reach; the rest is the byte stream. */
#include "core/frame.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const size_t chunk_sizes[32] = {
    1,  2,  3,   4,   5,   6,   7,   8,   9,    11,   13,   16,   17,   31,   32,   33,
    63, 64, 100, 127, 255, 256, 257, 511, 1000, 1023, 1024, 1025, 4095, 4096, 4097, 65536};
static const uint32_t max_sizes[8] = {1, 2, 5, 16, 100, 1000, 4095, 4096};

/* One recorded frame: its length and an FNV-1a hash of its bytes. */
typedef struct frame_rec {
    size_t len;
    uint64_t hash;
} frame_rec;

typedef struct frame_list {
    frame_rec *items;
    size_t count, cap;
    uint32_t max_frame;
} frame_list;

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void list_add(frame_list *l, const uint8_t *frame, size_t len) {
    if (len == 0 || len > l->max_frame) {
        abort(); /* the decoder must never hand out such a frame */
    }
    if (l->count == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->items = realloc(l->items, l->cap * sizeof *l->items);
        if (!l->items) {
            abort();
        }
    }
    l->items[l->count++] = (frame_rec){len, fnv1a(frame, len)};
}

static int record(void *ud, const uint8_t *frame, size_t len) {
    list_add(ud, frame, len);
    return 0;
}

static int must_not_call(void *ud, const uint8_t *frame, size_t len) {
    (void)ud;
    (void)frame;
    (void)len;
    abort();
}

static void check_same(const frame_list *a, const frame_list *b) {
    if (a->count != b->count) {
        abort();
    }
    for (size_t i = 0; i < a->count; i++) {
        if (a->items[i].len != b->items[i].len || a->items[i].hash != b->items[i].hash) {
            abort();
        }
    }
}

/* Feeds data in `chunk`-sized pieces; returns the final result and (through
 * *trailing) what stays buffered. Checks the memory bound on the way. */
static mpreg_err decode(const uint8_t *data, size_t len, size_t chunk, uint32_t max_frame,
                        frame_list *out, size_t *trailing) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, max_frame);
    mpreg_err err = MPREG_OK;
    for (size_t off = 0; off < len && !err; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        err = mp_frame_decoder_feed(&d, data + off, n, record, out);
        if (d.partial.cap > MP_FRAME_HEADER + max_frame) {
            abort();
        }
    }
    *trailing = mp_frame_decoder_buffered(&d);
    if (err) {
        /* Poisoned: the same error again, no calls, no memory held. */
        if (mp_frame_decoder_feed(&d, data, len, must_not_call, NULL) != err || *trailing != 0) {
            abort();
        }
    }
    mp_frame_decoder_free(&d);
    return err;
}

/* Records, then pauses on every other frame. */
static int record_pausing(void *ud, const uint8_t *frame, size_t len) {
    frame_list *l = ud;
    list_add(l, frame, len);
    return l->count % 2 ? MP_FRAME_PAUSE : MP_FRAME_GO;
}

/* As decode, with pauses: after each one the rest of the chunk is fed
 * again (as the transport does on resume). Must give the same frames. */
static mpreg_err decode_pausing(const uint8_t *data, size_t len, size_t chunk, uint32_t max_frame,
                                frame_list *out, size_t *trailing) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, max_frame);
    mpreg_err err = MPREG_OK;
    for (size_t off = 0; off < len && !err; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        size_t done = 0;
        while (done < n && !err) {
            size_t consumed = 0;
            err = mp_frame_decoder_feed_some(&d, data + off + done, n - done, record_pausing, out,
                                             &consumed);
            if (!err && (consumed == 0 || consumed > n - done)) {
                abort(); /* a feed always makes progress and never overruns */
            }
            done += consumed;
        }
    }
    *trailing = mp_frame_decoder_buffered(&d);
    mp_frame_decoder_free(&d);
    return err;
}

/* The obvious non-incremental parser, as the reference. */
static mpreg_err reference(const uint8_t *data, size_t len, uint32_t max_frame, frame_list *out,
                           size_t *trailing) {
    size_t off = 0;
    while (len - off >= MP_FRAME_HEADER) {
        uint32_t n = mp_get_u32be(data + off);
        if (n == 0) {
            *trailing = 0;
            return MPREG_E_FRAME_EMPTY;
        }
        if (n > max_frame) {
            *trailing = 0;
            return MPREG_E_FRAME_TOO_LARGE;
        }
        if (len - off - MP_FRAME_HEADER < n) {
            break;
        }
        list_add(out, data + off + MP_FRAME_HEADER, n);
        off += MP_FRAME_HEADER + n;
    }
    *trailing = len - off;
    return MPREG_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    size_t chunk = chunk_sizes[data[0] & 31];
    uint32_t max_frame = max_sizes[data[0] >> 5];
    data++;
    size--;

    frame_list chunked = {NULL, 0, 0, max_frame};
    frame_list whole = {NULL, 0, 0, max_frame};
    frame_list ref = {NULL, 0, 0, max_frame};
    frame_list paused = {NULL, 0, 0, max_frame};
    size_t trail_chunked, trail_whole, trail_ref, trail_paused;
    mpreg_err e1 = decode(data, size, chunk, max_frame, &chunked, &trail_chunked);
    mpreg_err e2 = decode(data, size, size ? size : 1, max_frame, &whole, &trail_whole);
    mpreg_err e3 = reference(data, size, max_frame, &ref, &trail_ref);
    mpreg_err e4 = decode_pausing(data, size, chunk, max_frame, &paused, &trail_paused);
    if (e1 != e2 || e1 != e3 || e1 != e4 || trail_chunked != trail_whole ||
        trail_chunked != trail_ref || trail_chunked != trail_paused) {
        abort();
    }
    check_same(&chunked, &whole);
    check_same(&chunked, &ref);
    check_same(&chunked, &paused);
    free(paused.items);
    free(chunked.items);
    free(whole.items);
    free(ref.items);
    return 0;
}
