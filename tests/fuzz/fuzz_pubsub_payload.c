/* fuzz_pubsub_payload.c - libFuzzer target for the pub/sub payload decoders.
 *
 * Every input is tried as a SUBSCRIBE payload and as an UNSUBSCRIBE (or
 * SUBSCRIBE's OK) payload. Decoding must not crash, hang, leak or read out of
 * bounds, and must fail with a known code, a reason and nothing left to
 * free. What decodes must hold only what the service accepts (it is
 * subscribed to a live service, and matched against), must encode, and must
 * decode again to the same fields; the second encoding must equal the first
 * (the encoder is canonical). Any mismatch aborts. */
#include "services/pubsub.h"

#include "core/topic.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void mp_check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_pubsub_payload: %s\n", what);
        abort();
    }
}

static bool mp_payloads_equal(const mp_pubsub_subscribe_payload *a,
                              const mp_pubsub_subscribe_payload *b) {
    if (a->pattern_count != b->pattern_count || !mp_str_eq(a->tag, b->tag) ||
        !mp_str_eq(a->group, b->group) || a->replay.has_last != b->replay.has_last ||
        a->replay.has_since != b->replay.has_since ||
        (a->replay.has_last && a->replay.last != b->replay.last) ||
        (a->replay.has_since && a->replay.since_ms != b->replay.since_ms)) {
        return false;
    }
    for (size_t i = 0; i < a->pattern_count; i++) {
        if (!mp_str_eq(a->patterns[i], b->patterns[i])) {
            return false;
        }
    }
    return true;
}

static void mp_check_decoded(const mp_pubsub_subscribe_payload *p) {
    mp_check(p->pattern_count >= 1 && p->pattern_count <= MP_PUBSUB_MAX_PATTERNS,
             "pattern count out of range");
    for (size_t i = 0; i < p->pattern_count; i++) {
        mp_check(mp_pattern_validate(p->patterns[i].ptr, p->patterns[i].len, NULL) == MPREG_OK,
                 "accepted an invalid pattern");
    }
    mp_check(p->tag.len <= MP_PUBSUB_MAX_TAG && p->group.len <= MP_PUBSUB_MAX_GROUP,
             "tag or group over its limit");

    /* The service takes whatever the decoder gives it. */
    mp_pubsub *ps = mp_pubsub_new(NULL, NULL);
    mp_check(ps != NULL, "out of memory");
    mp_pubsub_sub_spec spec = mp_pubsub_spec_from_payload(p, 1);
    uint64_t sub;
    mp_check(mp_pubsub_subscribe(ps, &spec, &sub) == MPREG_OK, "service refused a payload");
    mp_pubsub_message msg = {.topic = mp_str_c("a.b.c")};
    mp_check(mp_pubsub_publish(ps, &msg, 0, NULL) == MPREG_OK, "publish failed");
    mp_check(mp_pubsub_unsubscribe(ps, 1, sub) == MPREG_OK, "unsubscribe failed");
    mp_pubsub_free(ps);
}

static void mp_fuzz_subscribe(const uint8_t *data, size_t size) {
    static mp_buf first = MP_BUF_INIT, second = MP_BUF_INIT;
    mp_pubsub_subscribe_payload a, b;
    const char *why = NULL;
    mpreg_err err = mp_pubsub_subscribe_decode(data, size, &a, &why);
    if (err) {
        mp_check(why != NULL && strcmp(mpreg_err_name(err), "unknown") != 0,
                 "error without a reason or with an unknown code");
        mp_check(a.storage.type == MPREG_NIL && a.pattern_count == 0, "error left data behind");
        return;
    }
    mp_check(why == NULL, "success with a reason");
    mp_check_decoded(&a);
    mp_buf_clear(&first);
    mp_check(mp_pubsub_subscribe_encode(&a, &first) == MPREG_OK, "re-encode failed");
    mp_check(mp_pubsub_subscribe_decode(first.data, first.len, &b, &why) == MPREG_OK,
             "decode of our own encoding failed");
    mp_check(mp_payloads_equal(&a, &b), "round trip changed the payload");
    mp_buf_clear(&second);
    mp_check(mp_pubsub_subscribe_encode(&b, &second) == MPREG_OK, "second encode failed");
    mp_check(second.len == first.len && memcmp(first.data, second.data, first.len) == 0,
             "encoding is not canonical");
    mp_pubsub_subscribe_payload_free(&a);
    mp_pubsub_subscribe_payload_free(&b);
}

static void mp_fuzz_subscription(const uint8_t *data, size_t size) {
    static mp_buf buf = MP_BUF_INIT;
    uint64_t sub = 99, again = 0;
    const char *why = NULL;
    mpreg_err err = mp_pubsub_subscription_decode(data, size, &sub, &why);
    if (err) {
        mp_check(why != NULL && sub == 0, "error without a reason, or an id");
        return;
    }
    mp_check(why == NULL && sub >= 1 && sub <= INT64_MAX, "bad id accepted");
    mp_buf_clear(&buf);
    mp_check(mp_pubsub_subscription_encode(sub, &buf) == MPREG_OK, "re-encode failed");
    mp_check(mp_pubsub_subscription_decode(buf.data, buf.len, &again, NULL) == MPREG_OK &&
                 again == sub,
             "subscription round trip");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mp_fuzz_subscribe(data, size);
    mp_fuzz_subscription(data, size);
    return 0;
}
