/* test_frame.c - the length-prefixed framer: decoder and writer. */
#include "core/buf.h"
#include "core/frame.h"
#include "core/rng.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- a callback that records what it was given --------------------------- */

/* Frames are recorded by re-framing them into `frames`: for a valid stream
 * decoded in any chunking, the record must equal the stream byte for byte. */
typedef struct frame_log {
    size_t count;
    mp_buf frames;
    size_t stop_at;       /* return non-zero on this frame (1-based); 0 = never */
    const uint8_t *chunk; /* when set: count frames that point into it */
    size_t chunk_len;
    size_t in_chunk;
} frame_log;

static void log_init(frame_log *l) {
    memset(l, 0, sizeof *l);
    mp_buf_init(&l->frames);
}

static int log_frame(void *ud, const uint8_t *frame, size_t len) {
    frame_log *l = ud;
    cr_assert(len >= 1, "a frame body is never empty");
    l->count++;
    cr_assert_eq(mp_frame_write(&l->frames, frame, len, MP_FRAME_LIMIT_MAX), MPREG_OK);
    if (l->chunk && frame >= l->chunk && frame + len <= l->chunk + l->chunk_len) {
        l->in_chunk++;
    }
    return l->stop_at && l->count == l->stop_at;
}

static int never_called(void *ud, const uint8_t *frame, size_t len) {
    (void)ud;
    (void)frame;
    (void)len;
    cr_assert_fail("callback must not be called");
    return 1;
}

static void append_frame(mp_buf *stream, const void *payload, size_t len) {
    cr_assert_eq(mp_frame_write(stream, payload, len, MP_FRAME_LIMIT_MAX), MPREG_OK);
}

static void append_header(mp_buf *stream, uint32_t n) {
    cr_assert_eq(mp_buf_append_u32be(stream, n), MPREG_OK);
}

/* ---- basics ---------------------------------------------------------------- */

Test(frame, init_defaults) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    cr_assert_eq(d.max_frame, MP_FRAME_DEFAULT_MAX);
    cr_assert_eq(d.error, MPREG_OK);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    mp_frame_decoder_free(&d);
    mp_frame_decoder_init(&d, 123);
    cr_assert_eq(d.max_frame, 123);
    mp_frame_decoder_free(&d);
    mp_frame_decoder_init(&d, UINT32_MAX);
    cr_assert_eq(d.max_frame, MP_FRAME_LIMIT_MAX, "clamped so header + body fits");
    mp_frame_decoder_free(&d);
}

Test(frame, single_frame) {
    mp_buf s = MP_BUF_INIT;
    append_frame(&s, "hello", 5);
    cr_assert_eq(s.len, 9);
    const uint8_t want[] = {0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'};
    cr_assert_arr_eq(s.data, want, sizeof want);

    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, s.len, log_frame, &l), MPREG_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(l.frames.len, s.len);
    cr_assert_arr_eq(l.frames.data, s.data, s.len);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

Test(frame, empty_feed_is_a_no_op) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    cr_assert_eq(mp_frame_decoder_feed(&d, NULL, 0, never_called, NULL), MPREG_OK);
    const uint8_t half[] = {0, 0};
    cr_assert_eq(mp_frame_decoder_feed(&d, half, 2, never_called, NULL), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_feed(&d, NULL, 0, never_called, NULL), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 2);
    mp_frame_decoder_free(&d);
}

Test(frame, null_callback_is_invalid) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    const uint8_t b[] = {0, 0, 0, 1, 'x'};
    cr_assert_eq(mp_frame_decoder_feed(&d, b, sizeof b, NULL, NULL), MPREG_E_INVALID);
    mp_frame_decoder_free(&d);
}

Test(frame, many_frames_in_one_chunk_are_zero_copy) {
    mp_buf s = MP_BUF_INIT;
    char payload[300];
    for (size_t i = 0; i < sizeof payload; i++) {
        payload[i] = (char)i;
    }
    for (size_t i = 1; i <= 1000; i++) {
        append_frame(&s, payload, 1 + i % sizeof payload);
    }
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    l.chunk = s.data;
    l.chunk_len = s.len;
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, s.len, log_frame, &l), MPREG_OK);
    cr_assert_eq(l.count, 1000);
    cr_assert_eq(l.in_chunk, 1000, "whole frames inside the chunk are not copied");
    cr_assert_eq(l.frames.len, s.len);
    cr_assert_arr_eq(l.frames.data, s.data, s.len);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

Test(frame, split_frame_is_assembled_then_rest_is_zero_copy) {
    mp_buf s = MP_BUF_INIT;
    append_frame(&s, "abcdef", 6);
    append_frame(&s, "gh", 2);
    append_frame(&s, "ijk", 3);
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    /* First feed ends inside frame 1's body. */
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, 7, log_frame, &l), MPREG_OK);
    cr_assert_eq(l.count, 0);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 7);
    l.chunk = s.data + 7;
    l.chunk_len = s.len - 7;
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data + 7, s.len - 7, log_frame, &l), MPREG_OK);
    cr_assert_eq(l.count, 3);
    cr_assert_eq(l.in_chunk, 2, "frame 1 came from the buffer, frames 2 and 3 in place");
    cr_assert_arr_eq(l.frames.data, s.data, s.len);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

Test(frame, byte_by_byte) {
    mp_buf s = MP_BUF_INIT;
    uint8_t payload[1000];
    for (size_t i = 0; i < sizeof payload; i++) {
        payload[i] = (uint8_t)(i * 7);
    }
    for (size_t i = 0; i < 50; i++) {
        append_frame(&s, payload, 1 + (i * 37) % sizeof payload);
    }
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    size_t frames_before = 0;
    for (size_t i = 0; i < s.len; i++) {
        cr_assert_eq(mp_frame_decoder_feed(&d, s.data + i, 1, log_frame, &l), MPREG_OK);
        cr_assert_leq(l.count, frames_before + 1, "one byte completes at most one frame");
        frames_before = l.count;
    }
    cr_assert_eq(l.count, 50);
    cr_assert_eq(l.frames.len, s.len);
    cr_assert_arr_eq(l.frames.data, s.data, s.len);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

/* ---- errors ---------------------------------------------------------------- */

Test(frame, zero_length_is_an_error) {
    const uint8_t zero[] = {0, 0, 0, 0, 'x', 'y'};
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    cr_assert_eq(mp_frame_decoder_feed(&d, zero, sizeof zero, never_called, NULL),
                 MPREG_E_FRAME_EMPTY);
    mp_frame_decoder_free(&d);

    /* Frames before the bad header are still delivered, then the error. */
    mp_buf s = MP_BUF_INIT;
    append_frame(&s, "ok", 2);
    append_header(&s, 0);
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, s.len, log_frame, &l), MPREG_E_FRAME_EMPTY);
    cr_assert_eq(l.count, 1);
    mp_frame_decoder_free(&d);

    /* Same when the zero header arrives split. */
    mp_frame_decoder_init(&d, 0);
    cr_assert_eq(mp_frame_decoder_feed(&d, zero, 3, never_called, NULL), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_feed(&d, zero + 3, 1, never_called, NULL), MPREG_E_FRAME_EMPTY);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

Test(frame, oversize_detected_from_the_header_alone) {
    mp_frame_decoder d;
    uint8_t h[4];
    /* Default max: 8 MiB + 1 refused with nothing but the header fed. */
    mp_frame_decoder_init(&d, 0);
    mp_put_u32be(h, MP_FRAME_DEFAULT_MAX + 1);
    cr_assert_eq(mp_frame_decoder_feed(&d, h, 4, never_called, NULL), MPREG_E_FRAME_TOO_LARGE);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    mp_frame_decoder_free(&d);

    mp_frame_decoder_init(&d, 0);
    mp_put_u32be(h, UINT32_MAX);
    cr_assert_eq(mp_frame_decoder_feed(&d, h, 4, never_called, NULL), MPREG_E_FRAME_TOO_LARGE);
    mp_frame_decoder_free(&d);

    /* Header split over feeds: the error comes with the fourth byte. */
    mp_frame_decoder_init(&d, 100);
    mp_put_u32be(h, 101);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(mp_frame_decoder_feed(&d, h + i, 1, never_called, NULL), MPREG_OK);
    }
    cr_assert_eq(mp_frame_decoder_feed(&d, h + 3, 1, never_called, NULL), MPREG_E_FRAME_TOO_LARGE);
    mp_frame_decoder_free(&d);

    /* Exactly the max with only the header: fine, waits for the body. */
    mp_frame_decoder_init(&d, 0);
    mp_put_u32be(h, MP_FRAME_DEFAULT_MAX);
    cr_assert_eq(mp_frame_decoder_feed(&d, h, 4, never_called, NULL), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 4);
    mp_frame_decoder_free(&d);
}

Test(frame, poisoned_after_error) {
    mp_buf good = MP_BUF_INIT;
    append_frame(&good, "fine", 4);
    uint8_t bad[6] = {0, 0, 0, 200, 1, 2};
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 100);
    /* A partial frame is buffered first, then a bad header follows. */
    cr_assert_eq(mp_frame_decoder_feed(&d, good.data, 6, never_called, NULL), MPREG_OK);
    frame_log l;
    log_init(&l);
    cr_assert_eq(mp_frame_decoder_feed(&d, good.data + 6, good.len - 6, log_frame, &l), MPREG_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(mp_frame_decoder_feed(&d, bad, sizeof bad, never_called, NULL),
                 MPREG_E_FRAME_TOO_LARGE);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(mp_frame_decoder_feed(&d, good.data, good.len, never_called, NULL),
                     MPREG_E_FRAME_TOO_LARGE);
        cr_assert_eq(mp_frame_decoder_feed(&d, NULL, 0, never_called, NULL),
                     MPREG_E_FRAME_TOO_LARGE);
        cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    }
    cr_assert_eq(d.partial.cap, 0, "a poisoned decoder holds no memory");
    mp_frame_decoder_free(&d);
    /* A freed decoder refuses to work until initialised again. */
    cr_assert_eq(mp_frame_decoder_feed(&d, good.data, good.len, never_called, NULL),
                 MPREG_E_CLOSED);
    mp_buf_free(&l.frames);
    mp_buf_free(&good);
}

Test(frame, callback_stop_in_place) {
    mp_buf s = MP_BUF_INIT;
    append_frame(&s, "a", 1);
    append_frame(&s, "b", 1);
    append_frame(&s, "c", 1);
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    l.stop_at = 2;
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, s.len, log_frame, &l), MPREG_E_CLOSED);
    cr_assert_eq(l.count, 2, "nothing after the frame that said stop");
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, s.len, never_called, NULL), MPREG_E_CLOSED);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

Test(frame, callback_stop_on_assembled_frame) {
    mp_buf s = MP_BUF_INIT;
    append_frame(&s, "split", 5);
    append_frame(&s, "after", 5);
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    l.stop_at = 1;
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, 3, log_frame, &l), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data + 3, s.len - 3, log_frame, &l), MPREG_E_CLOSED);
    cr_assert_eq(l.count, 1);
    cr_assert_eq(d.error, MPREG_E_CLOSED);
    cr_assert_eq(mp_frame_decoder_feed(&d, s.data, s.len, never_called, NULL), MPREG_E_CLOSED);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&s);
}

Test(frame, max_frame_boundary) {
    const uint32_t max = 10;
    uint8_t payload[11];
    memset(payload, 'z', sizeof payload);
    /* Decoder: max bytes accepted, whole and split; max + 1 refused. */
    for (size_t split = 0; split <= 14; split++) {
        mp_buf s = MP_BUF_INIT;
        append_frame(&s, payload, max);
        mp_frame_decoder d;
        mp_frame_decoder_init(&d, max);
        frame_log l;
        log_init(&l);
        cr_assert_eq(mp_frame_decoder_feed(&d, s.data, split, log_frame, &l), MPREG_OK);
        cr_assert_eq(mp_frame_decoder_feed(&d, s.data + split, s.len - split, log_frame, &l),
                     MPREG_OK);
        cr_assert_eq(l.count, 1);
        cr_assert_leq(d.partial.cap, MP_FRAME_HEADER + max);
        mp_frame_decoder_free(&d);
        mp_buf_free(&l.frames);

        mp_buf_clear(&s);
        append_frame(&s, payload, max + 1);
        mp_frame_decoder_init(&d, max);
        mpreg_err first = mp_frame_decoder_feed(&d, s.data, split, never_called, NULL);
        cr_assert_eq(first, split >= 4 ? MPREG_E_FRAME_TOO_LARGE : MPREG_OK);
        cr_assert_eq(mp_frame_decoder_feed(&d, s.data + split, s.len - split, never_called, NULL),
                     MPREG_E_FRAME_TOO_LARGE);
        mp_frame_decoder_free(&d);
        mp_buf_free(&s);
    }
    /* Writer: the same boundary, and a refused write leaves out unchanged. */
    mp_buf out = MP_BUF_INIT;
    cr_assert_eq(mp_frame_write(&out, payload, max, max), MPREG_OK);
    cr_assert_eq(out.len, 4 + max);
    cr_assert_eq(mp_frame_write(&out, payload, max + 1, max), MPREG_E_FRAME_TOO_LARGE);
    cr_assert_eq(mp_frame_write(&out, payload, 0, max), MPREG_E_FRAME_EMPTY);
    cr_assert_eq(out.len, 4 + max);
    mp_buf_free(&out);
}

/* ---- writer ---------------------------------------------------------------- */

Test(frame, begin_end_round_trip) {
    mp_buf out = MP_BUF_INIT;
    cr_assert_eq(mp_buf_append(&out, "prefix", 6), MPREG_OK);
    size_t start = mp_frame_begin(&out);
    cr_assert_eq(start, 6);
    cr_assert_eq(out.len, 10);
    cr_assert_eq(mp_buf_append(&out, "payload!", 8), MPREG_OK);
    cr_assert_eq(mp_frame_end(&out, start, 0), MPREG_OK);
    const uint8_t want[] = {'p', 'r', 'e', 'f', 'i', 'x', 0,   0,   0,
                            8,   'p', 'a', 'y', 'l', 'o', 'a', 'd', '!'};
    cr_assert_eq(out.len, sizeof want);
    cr_assert_arr_eq(out.data, want, sizeof want);

    /* Same bytes as mp_frame_write. */
    mp_buf w = MP_BUF_INIT;
    cr_assert_eq(mp_frame_write(&w, "payload!", 8, 0), MPREG_OK);
    cr_assert_arr_eq(w.data, out.data + 6, w.len);

    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    cr_assert_eq(mp_frame_decoder_feed(&d, out.data + 6, out.len - 6, log_frame, &l), MPREG_OK);
    cr_assert_eq(l.count, 1);
    cr_assert_arr_eq(l.frames.data, w.data, w.len);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&w);
    mp_buf_free(&out);
}

Test(frame, end_truncates_on_error) {
    mp_buf out = MP_BUF_INIT;
    cr_assert_eq(mp_frame_write(&out, "one", 3, 0), MPREG_OK);
    size_t keep = out.len;

    size_t start = mp_frame_begin(&out);
    cr_assert_eq(mp_frame_end(&out, start, 0), MPREG_E_FRAME_EMPTY);
    cr_assert_eq(out.len, keep);

    start = mp_frame_begin(&out);
    cr_assert_eq(mp_buf_append(&out, "0123456789", 10), MPREG_OK);
    cr_assert_eq(mp_frame_end(&out, start, 9), MPREG_E_FRAME_TOO_LARGE);
    cr_assert_eq(out.len, keep);
    const uint8_t want[] = {0, 0, 0, 3, 'o', 'n', 'e'};
    cr_assert_arr_eq(out.data, want, sizeof want);

    /* Exactly at the max is fine. */
    start = mp_frame_begin(&out);
    cr_assert_eq(mp_buf_append(&out, "012345678", 9), MPREG_OK);
    cr_assert_eq(mp_frame_end(&out, start, 9), MPREG_OK);
    cr_assert_eq(out.len, keep + 13);

    /* Bad starts are refused without touching out. */
    size_t len = out.len;
    cr_assert_eq(mp_frame_end(&out, len - 3, 0), MPREG_E_INVALID);
    cr_assert_eq(mp_frame_end(&out, len + 1, 0), MPREG_E_INVALID);
    cr_assert_eq(mp_frame_end(&out, MP_FRAME_BEGIN_FAILED, 0), MPREG_E_NOMEM);
    cr_assert_eq(out.len, len);
    mp_buf_free(&out);
}

/* ---- memory ---------------------------------------------------------------- */

Test(frame, huge_announcement_costs_only_what_arrived) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    uint8_t *body = calloc(MP_FRAME_DEFAULT_MAX, 1);
    cr_assert_not_null(body);
    uint8_t h[4];
    mp_put_u32be(h, MP_FRAME_DEFAULT_MAX);
    frame_log l;
    log_init(&l);
    cr_assert_eq(mp_frame_decoder_feed(&d, h, 4, log_frame, &l), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_feed(&d, body, 1, log_frame, &l), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 5);
    cr_assert_leq(d.partial.cap, 64, "5 bytes in, not 8 MiB");
    cr_assert_eq(mp_frame_decoder_feed(&d, body + 1, 1000, log_frame, &l), MPREG_OK);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 1005);
    cr_assert_leq(d.partial.cap, 2048);
    /* The rest, in 64 KiB reads: growth stays within header + max. */
    size_t off = 1001;
    while (off < MP_FRAME_DEFAULT_MAX) {
        size_t n = MP_FRAME_DEFAULT_MAX - off < 65536 ? MP_FRAME_DEFAULT_MAX - off : 65536;
        cr_assert_eq(mp_frame_decoder_feed(&d, body + off, n, log_frame, &l), MPREG_OK);
        off += n;
        cr_assert_leq(d.partial.cap, MP_FRAME_HEADER + MP_FRAME_DEFAULT_MAX);
        cr_assert_leq(d.partial.cap, 2 * (mp_frame_decoder_buffered(&d) + 64));
    }
    cr_assert_eq(l.count, 1);
    cr_assert_eq(l.frames.len, 4 + MP_FRAME_DEFAULT_MAX);
    cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
    cr_assert_eq(d.partial.cap, 0, "a big assembly buffer is released after its frame");
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    free(body);
}

/* ---- property: any chunking gives the same frames -------------------------- */

enum { PROP_MAX = 70000 };

static size_t random_frame_size(mp_rng *r) {
    uint64_t pick = mp_rng_below(r, 10);
    if (pick < 4) {
        return 1 + (size_t)mp_rng_below(r, 64);
    }
    if (pick < 7) {
        return 1 + (size_t)mp_rng_below(r, 1024);
    }
    if (pick < 9) {
        return 1 + (size_t)mp_rng_below(r, PROP_MAX);
    }
    return PROP_MAX;
}

static void build_stream(mp_rng *r, mp_buf *stream, size_t nframes) {
    static uint8_t payload[PROP_MAX];
    for (size_t i = 0; i < nframes; i++) {
        size_t n = random_frame_size(r);
        mp_rng_fill(r, payload, n);
        append_frame(stream, payload, n);
    }
}

typedef enum chunking {
    CHUNK_WHOLE,
    CHUNK_ONE,
    CHUNK_SMALL,  /* 1..8: splits headers every which way */
    CHUNK_MEDIUM, /* 1..4096 */
    CHUNK_LARGE,  /* 1..3 * PROP_MAX */
    CHUNK_COUNT
} chunking;

static size_t next_chunk(mp_rng *r, chunking how, size_t left) {
    size_t n;
    switch (how) {
    case CHUNK_WHOLE:
        n = left;
        break;
    case CHUNK_ONE:
        n = 1;
        break;
    case CHUNK_SMALL:
        n = 1 + (size_t)mp_rng_below(r, 8);
        break;
    case CHUNK_MEDIUM:
        n = 1 + (size_t)mp_rng_below(r, 4096);
        break;
    default:
        n = 1 + (size_t)mp_rng_below(r, 3 * PROP_MAX);
        break;
    }
    return n < left ? n : left;
}

/* Feeds the stream in the given chunking; returns the feed's final result. */
static mpreg_err decode_chunked(const mp_buf *stream, mp_rng *r, chunking how, frame_log *l) {
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, PROP_MAX);
    mpreg_err err = MPREG_OK;
    size_t off = 0;
    while (off < stream->len) {
        size_t n = next_chunk(r, how, stream->len - off);
        err = mp_frame_decoder_feed(&d, stream->data + off, n, log_frame, l);
        off += n;
        cr_assert_leq(d.partial.cap, MP_FRAME_HEADER + PROP_MAX);
        if (err) {
            break;
        }
    }
    if (!err) {
        cr_assert_eq(mp_frame_decoder_buffered(&d), 0, "stream ended on a frame boundary");
    }
    mp_frame_decoder_free(&d);
    return err;
}

Test(frame, property_any_chunking_same_frames, .timeout = 120) {
    for (uint64_t seed = 1; seed <= 12; seed++) {
        mp_xoshiro x;
        mp_xoshiro_seed(&x, 0xf4a3e000 + seed);
        mp_buf stream = MP_BUF_INIT;
        size_t nframes = 20 + (size_t)mp_rng_below(&x.rng, 60);
        build_stream(&x.rng, &stream, nframes);
        for (int how = 0; how < CHUNK_COUNT; how++) {
            frame_log l;
            log_init(&l);
            cr_assert_eq(decode_chunked(&stream, &x.rng, (chunking)how, &l), MPREG_OK);
            cr_assert_eq(l.count, nframes, "seed %llu chunking %d", (unsigned long long)seed, how);
            cr_assert_eq(l.frames.len, stream.len);
            cr_assert(memcmp(l.frames.data, stream.data, stream.len) == 0,
                      "seed %llu chunking %d: frames differ", (unsigned long long)seed, how);
            mp_buf_free(&l.frames);
        }
        mp_buf_free(&stream);
    }
}

Test(frame, property_bad_tail_same_frames_and_error, .timeout = 120) {
    for (uint64_t seed = 1; seed <= 8; seed++) {
        mp_xoshiro x;
        mp_xoshiro_seed(&x, 0xbad7a11 + seed);
        mp_buf stream = MP_BUF_INIT;
        size_t nframes = 5 + (size_t)mp_rng_below(&x.rng, 20);
        build_stream(&x.rng, &stream, nframes);
        size_t good_len = stream.len;
        bool empty = seed % 2;
        append_header(&stream, empty ? 0 : PROP_MAX + 1);
        cr_assert_eq(mp_buf_append(&stream, "junk", 4), MPREG_OK);
        mpreg_err want = empty ? MPREG_E_FRAME_EMPTY : MPREG_E_FRAME_TOO_LARGE;
        for (int how = 0; how < CHUNK_COUNT; how++) {
            frame_log l;
            log_init(&l);
            cr_assert_eq(decode_chunked(&stream, &x.rng, (chunking)how, &l), want);
            cr_assert_eq(l.count, nframes);
            cr_assert_eq(l.frames.len, good_len);
            cr_assert(memcmp(l.frames.data, stream.data, good_len) == 0);
            mp_buf_free(&l.frames);
        }
        mp_buf_free(&stream);
    }
}

/* ---- pausing: the rest of a chunk waits, nothing is lost or repeated ------- */

typedef struct pause_log {
    frame_log log;
    mp_rng *r;
    size_t pauses;
} pause_log;

/* Records the frame, then pauses after about one frame in three. */
static int log_frame_pausing(void *ud, const uint8_t *frame, size_t len) {
    pause_log *p = ud;
    cr_assert_eq(log_frame(&p->log, frame, len), 0);
    if (mp_rng_below(p->r, 3) == 0) {
        p->pauses++;
        return MP_FRAME_PAUSE;
    }
    return MP_FRAME_GO;
}

/* Feeds each chunk with feed_some; after a pause the unconsumed rest of the
 * chunk is fed again (as the transport does on resume) before the next
 * chunk. Every frame must come out once, in order, byte for byte. */
Test(frame, property_pause_keeps_the_rest_of_the_chunk, .timeout = 120) {
    for (uint64_t seed = 1; seed <= 10; seed++) {
        mp_xoshiro x;
        mp_xoshiro_seed(&x, 0x9a05e000 + seed);
        mp_buf stream = MP_BUF_INIT;
        size_t nframes = 20 + (size_t)mp_rng_below(&x.rng, 60);
        build_stream(&x.rng, &stream, nframes);
        for (int how = 0; how < CHUNK_COUNT; how++) {
            pause_log p = {.r = &x.rng};
            log_init(&p.log);
            mp_frame_decoder d;
            mp_frame_decoder_init(&d, PROP_MAX);
            size_t off = 0;
            while (off < stream.len) {
                size_t n = next_chunk(&x.rng, (chunking)how, stream.len - off);
                size_t done = 0;
                while (done < n) {
                    size_t consumed = SIZE_MAX;
                    cr_assert_eq(mp_frame_decoder_feed_some(&d, stream.data + off + done, n - done,
                                                            log_frame_pausing, &p, &consumed),
                                 MPREG_OK);
                    cr_assert(consumed >= 1 && consumed <= n - done);
                    done += consumed;
                }
                off += n;
            }
            cr_assert_eq(mp_frame_decoder_buffered(&d), 0);
            cr_assert_eq(p.log.count, nframes, "seed %llu chunking %d", (unsigned long long)seed,
                         how);
            cr_assert_eq(p.log.frames.len, stream.len);
            cr_assert(memcmp(p.log.frames.data, stream.data, stream.len) == 0);
            cr_assert_gt(p.pauses, 0);
            mp_frame_decoder_free(&d);
            mp_buf_free(&p.log.frames);
        }
        mp_buf_free(&stream);
    }
}

static int pause_always(void *ud, const uint8_t *frame, size_t len) {
    cr_assert_eq(log_frame(ud, frame, len), 0);
    return MP_FRAME_PAUSE;
}

Test(frame, a_pause_stops_right_after_its_frame) {
    mp_buf stream = MP_BUF_INIT;
    append_frame(&stream, "ab", 2);
    append_frame(&stream, "cd", 2);
    mp_frame_decoder d;
    mp_frame_decoder_init(&d, 0);
    frame_log l;
    log_init(&l);
    size_t consumed = 0;
    cr_assert_eq(
        mp_frame_decoder_feed_some(&d, stream.data, stream.len, pause_always, &l, &consumed),
        MPREG_OK);
    cr_assert_eq(consumed, MP_FRAME_HEADER + 2, "only the first frame is consumed");
    cr_assert_eq(l.count, 1);
    cr_assert_eq(mp_frame_decoder_feed_some(&d, stream.data + consumed, stream.len - consumed,
                                            pause_always, &l, &consumed),
                 MPREG_OK);
    cr_assert_eq(consumed, MP_FRAME_HEADER + 2);
    cr_assert_eq(l.count, 2);
    /* A split frame completed by a feed that then pauses: the feed consumed
     * the end of that frame only. */
    mp_buf_clear(&stream);
    append_frame(&stream, "efgh", 4);
    append_frame(&stream, "ij", 2);
    cr_assert_eq(mp_frame_decoder_feed_some(&d, stream.data, 3, pause_always, &l, &consumed),
                 MPREG_OK);
    cr_assert_eq(consumed, 3);
    cr_assert_eq(mp_frame_decoder_feed_some(&d, stream.data + 3, stream.len - 3, pause_always, &l,
                                            &consumed),
                 MPREG_OK);
    cr_assert_eq(consumed, MP_FRAME_HEADER + 4 - 3);
    cr_assert_eq(l.count, 3);
    mp_frame_decoder_free(&d);
    mp_buf_free(&l.frames);
    mp_buf_free(&stream);
}
