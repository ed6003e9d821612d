/* fuzz_swim.c - libFuzzer target for the SWIM message decoder and handlers.
 *
 * Any input goes to mp_swim_on_payload of a fresh mp_swim with a no-op
 * delegate. It must not crash, hang, leak or read out of bounds. A refused
 * message must change nothing: no member learnt, no news queued, nothing to
 * send, bad_messages counted (abort() otherwise). An accepted one may make
 * the node answer and, after timers run, probe and gossip; everything it
 * sends must be accepted by another fresh node (abort() otherwise), so the
 * decoder never takes what the encoder cannot write and the encoder never
 * writes what the decoder refuses. Then the node is ticked at each wakeup it
 * asks for, for a while: a tick at the wakeup time must move the wakeup on
 * (a driver that ticks at the wakeup would spin otherwise). */
#include "core/rng.h"
#include "fabric/membership.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Items are always news here, so they are queued and encoded again. */
static bool fz_item(void *ud, const uint8_t *data, size_t len, const char *from_id) {
    (void)ud;
    if (!data || len == 0 || len > MP_SWIM_MAX_ITEM || !from_id || !*from_id) {
        abort();
    }
    return true;
}

/* ud is the node's own id: it is never told about itself. */
static void fz_member(void *ud, mp_member_event_kind ev, const mp_member *m) {
    if (ev < MP_MEMBER_JOINED || ev > MP_MEMBER_UPDATED || !m->id || !*m->id || !m->addr ||
        strcmp(m->id, (const char *)ud) == 0) {
        abort();
    }
}

static uint64_t fz_digest(void *ud) {
    (void)ud;
    return 1;
}

static mpreg_err fz_encode(void *ud, mp_buf *out) {
    (void)ud;
    return mp_buf_append(out, "state", 5);
}

static void fz_merge(void *ud, const uint8_t *data, size_t len, const char *from_id) {
    (void)ud;
    (void)data;
    if (len > MP_SWIM_MAX_STATE || !from_id || !*from_id) {
        abort();
    }
}

static mp_swim *fz_new(mp_xoshiro *x, const char *id, uint64_t seed) {
    mp_swim_config cfg;
    mp_swim_config_default(&cfg);
    mp_xoshiro_seed(x, seed);
    mp_swim_self self = {id, "127.0.0.1:7000", 1};
    mp_swim_delegate d = {(void *)id, fz_item, fz_member, fz_digest, fz_encode, fz_merge, NULL};
    mp_swim *s = mp_swim_new(&cfg, &self, &d, &x->rng, 0);
    if (!s) {
        abort();
    }
    return s;
}

/* Everything a sends must decode on a fresh node. */
static void fz_check_sends(mp_swim *a) {
    mp_xoshiro x;
    mp_swim *b = fz_new(&x, "other", 2);
    mp_swim_send out;
    while (mp_swim_next_send(a, &out)) {
        if (!out.to_addr || mp_swim_on_payload(b, out.payload, out.len, 1) != MPREG_OK) {
            abort();
        }
        mp_swim_send ignored;
        while (mp_swim_next_send(b, &ignored)) {
        }
    }
    mp_swim_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mp_xoshiro x;
    mp_swim *s = fz_new(&x, "self", 1);
    mpreg_err err = mp_swim_on_payload(s, data, size, 10);
    mp_swim_stats st;
    mp_swim_get_stats(s, &st);
    if (err != MPREG_OK) {
        mp_swim_send out;
        if (st.bad_messages != 1 || st.msgs_received != 0 || mp_swim_member_count(s, false) != 0 ||
            mp_swim_queued(s) != 0 || mp_swim_next_send(s, &out)) {
            abort();
        }
        mp_swim_free(s);
        return 0;
    }
    if (st.bad_messages != 0 || st.msgs_received != 1) {
        abort();
    }
    fz_check_sends(s);
    /* Timers: a probe, indirect probes, suspicion, gossip, push-pull,
     * reconnection (a dead member was heard of). */
    static const uint64_t times[] = {1000, 1600, 2100, 5000, 31000, 120000};
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        mp_swim_tick(s, times[i]);
        fz_check_sends(s);
    }
    for (int i = 0; i < 64; i++) {
        uint64_t w = mp_swim_next_wakeup(s);
        if (w == UINT64_MAX || w > 400000) {
            break;
        }
        uint64_t at = w < 120000 ? 120000 : w; /* time never goes back */
        mp_swim_tick(s, at);
        fz_check_sends(s);
        if (mp_swim_next_wakeup(s) <= at) {
            abort();
        }
    }
    mp_swim_leave(s, 130000);
    fz_check_sends(s);
    mp_swim_free(s);
    return 0;
}
