/* frame.h - wire framing: a 4-byte big-endian length, then that many bytes.
 *
 * Every connection (client or peer) carries a stream of frames; each frame's
 * body is one MessagePack envelope (envelope.h), but the framer never looks
 * inside it. A length of 0 is an error (MPREG_E_FRAME_EMPTY): no envelope is
 * empty, so a zero length can only be a confused or hostile peer. A length
 * over the maximum frame size is an error (MPREG_E_FRAME_TOO_LARGE) and is
 * reported as soon as the 4 length bytes have arrived, so that a peer cannot
 * make us wait for (or buffer) a body we are going to refuse anyway.
 *
 * The decoder is sans-I/O: no sockets, no clocks, no threads. The runtime (or
 * the simulator) feeds it whatever bytes a read produced, in any chunking, and
 * the decoder hands out each complete frame body through a callback. The same
 * byte stream gives the same frames whatever the chunking; the unit tests and
 * fuzz_frame check exactly that. */
#ifndef MP_FRAME_H
#define MP_FRAME_H

#include "core/buf.h"
#include "mpreg/error.h"

#include <stddef.h>
#include <stdint.h>

/* Bytes of the length prefix. */
#define MP_FRAME_HEADER 4u
/* Default maximum body size (8 MiB): big enough for any sane envelope, small
 * enough that one connection cannot pin much memory. */
#define MP_FRAME_DEFAULT_MAX (8u * 1024u * 1024u)
/* Largest maximum a decoder or writer accepts; larger values are clamped so
 * that header + body always fits in a uint32_t / size_t on every platform. */
#define MP_FRAME_LIMIT_MAX (UINT32_MAX - MP_FRAME_HEADER)
/* What mp_frame_begin returns when it could not reserve the header. */
#define MP_FRAME_BEGIN_FAILED SIZE_MAX

/* Receives one complete frame body (len >= 1). `frame` points either into the
 * caller's fed chunk or into the decoder's own buffer, so it is valid only
 * until the callback returns: copy what must outlive it (decoded envelopes
 * borrow from it, so finish with them inside the callback). Return
 * MP_FRAME_GO to go on, MP_FRAME_PAUSE to stop after this frame with the
 * decoder intact (mp_frame_decoder_feed_some says how much was consumed, so
 * the caller can keep the rest for later), or anything else for "the
 * connection is being closed": feeding stops at once. */
typedef int (*mp_frame_cb)(void *ud, const uint8_t *frame, size_t len);
#define MP_FRAME_GO 0
#define MP_FRAME_CLOSE 1
#define MP_FRAME_PAUSE 2

typedef struct mp_frame_decoder {
    /* The frame that straddles feeds: its header bytes, then the body bytes
     * that have arrived so far. Empty whenever the last feed ended exactly on
     * a frame boundary. It grows only as bytes arrive (never to the announced
     * length up front), and its capacity never exceeds MP_FRAME_HEADER +
     * max_frame. */
    mp_buf partial;
    /* Announced body length of the frame in `partial`; meaningful only once
     * partial.len >= MP_FRAME_HEADER. */
    uint32_t body_len;
    /* Largest accepted body, bytes. */
    uint32_t max_frame;
    /* MPREG_OK, or the error that poisoned the decoder. Sticky: once the
     * stream is out of sync (or the connection is closing) no later byte can
     * be trusted, so every later feed returns it. */
    mpreg_err error;
} mp_frame_decoder;

/* max_frame = 0 means MP_FRAME_DEFAULT_MAX. Allocates nothing. */
void mp_frame_decoder_init(mp_frame_decoder *d, uint32_t max_frame);
/* Releases the buffer. The decoder is then poisoned with MPREG_E_CLOSED until
 * it is initialised again. */
void mp_frame_decoder_free(mp_frame_decoder *d);

/* Consumes data[0..len) (data may be NULL when len is 0) and calls cb once per
 * complete frame, in stream order. Bytes of a trailing incomplete frame are
 * kept for the next feed.
 *
 * A frame that lies wholly inside `data` is handed to cb in place (no copy);
 * only a frame split across feeds is assembled in the internal buffer.
 *
 * Returns MPREG_OK when everything was consumed. Otherwise the decoder is
 * poisoned (its buffer is released) and this and every later feed return the
 * same error without calling cb:
 *   MPREG_E_FRAME_EMPTY      a header announced length 0;
 *   MPREG_E_FRAME_TOO_LARGE  a header announced more than max_frame;
 *   MPREG_E_CLOSED           cb returned non-zero (frames after the one it
 *                            was given are not delivered);
 *   MPREG_E_NOMEM            the partial frame could not be buffered;
 *   MPREG_E_INVALID          cb is NULL.
 * Frames before the bad header are delivered first. cb must not feed or free
 * the same decoder. */
mpreg_err mp_frame_decoder_feed(mp_frame_decoder *d, const uint8_t *data, size_t len,
                                mp_frame_cb cb, void *ud);

/* mp_frame_decoder_feed that honours MP_FRAME_PAUSE: when cb pauses, feeding
 * stops right after that frame and returns MPREG_OK with *consumed < len
 * (the bytes up to the end of the paused frame); data[*consumed..len) has
 * not been looked at and must be fed again, first, to carry on. Without a
 * pause *consumed == len on MPREG_OK. This is how a reader stops reading a
 * connection between two frames of one read (docs/PROTOCOL.md §7.7): the
 * rest of the chunk waits instead of being dispatched. */
mpreg_err mp_frame_decoder_feed_some(mp_frame_decoder *d, const uint8_t *data, size_t len,
                                     mp_frame_cb cb, void *ud, size_t *consumed);

/* Bytes held for an incomplete frame (header included); 0 on a frame
 * boundary or after an error. Lets the runtime account per-connection memory. */
size_t mp_frame_decoder_buffered(const mp_frame_decoder *d);

/* Writing a frame whose body is encoded in place, without a second copy:
 *
 *     size_t start = mp_frame_begin(out);
 *     ... append the body to out ...
 *     err = mp_frame_end(out, start, max_frame);
 *
 * mp_frame_begin appends 4 placeholder length bytes and returns their offset,
 * or MP_FRAME_BEGIN_FAILED (out unchanged) when memory runs out; check for it
 * before encoding the body, since a body appended then has no header to
 * truncate back to.
 * mp_frame_end patches in the body length. If the body is empty or over
 * max_frame (0 = default), it truncates out back to `start` (dropping the
 * header and the body, keeping whatever was before) and returns
 * MPREG_E_FRAME_EMPTY / MPREG_E_FRAME_TOO_LARGE: we never send what a peer
 * must refuse, and a half-written frame never stays in an outgoing buffer.
 * It returns MPREG_E_NOMEM for start == MP_FRAME_BEGIN_FAILED and
 * MPREG_E_INVALID (out untouched) for a start that does not leave room for a
 * header. */
size_t mp_frame_begin(mp_buf *out);
mpreg_err mp_frame_end(mp_buf *out, size_t start, uint32_t max_frame);

/* Appends header + payload[0..len). Checks the length first, so on any error
 * out is unchanged. */
mpreg_err mp_frame_write(mp_buf *out, const void *payload, size_t len, uint32_t max_frame);

#endif
