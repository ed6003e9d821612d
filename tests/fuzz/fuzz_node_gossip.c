/* fuzz_node_gossip.c - libFuzzer target for what a node does with gossip.
 *
 * fuzz_swim covers the SWIM decoder with a no-op delegate; fuzz_delta the
 * catalog delta codec. This target covers the node between them
 * (node_cluster.c): catalog items and push-pull state from a peer, merged
 * into the catalog (deaths of this node included, which start a new epoch),
 * then the node's timers (membership, the catalog TTL sweep) for a few
 * virtual seconds. Each input gets a fresh clustered node and a peer link
 * (HELLO role "peer" from "p2"). The first byte picks how the rest is sent:
 *   0  as a whole SWIM message (the GOSSIP frame's payload);
 *   1  as one item of a GOSSIP message from p2 (a catalog delta, normally);
 *   2  as the state of a SYNC_REPLY from p2 (length-prefixed deltas).
 * It must not crash, hang, leak or read out of bounds, and afterwards the
 * node must still answer `members` and its catalog still have a digest. */
#include "core/buf.h"
#include "core/envelope.h"
#include "core/rng.h"
#include "fabric/catalog.h"
#include "mpreg/value.h"
#include "node/node.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_T0 1700000000000ull
#define FZ_MAX_ITEM 65536u

typedef struct fz_driver {
    mp_buf scratch;   /* every connection's output; emptied at each commit */
    uint64_t next_id; /* dialed connections */
} fz_driver;

static mp_buf *fz_output(void *ud, uint64_t conn) {
    (void)conn;
    return &((fz_driver *)ud)->scratch;
}

static void fz_commit(void *ud, uint64_t conn, uint32_t frames) {
    (void)conn;
    (void)frames;
    ((fz_driver *)ud)->scratch.len = 0;
}

static bool fz_high(void *ud, uint64_t conn) {
    (void)ud;
    (void)conn;
    return false;
}

static void fz_reading(void *ud, uint64_t conn, bool reading) {
    (void)ud;
    (void)conn;
    (void)reading;
}

static void fz_close(void *ud, uint64_t conn, bool flush_first, mpreg_err reason) {
    (void)ud;
    (void)conn;
    (void)flush_first;
    (void)reason;
}

static uint64_t fz_dial(void *ud, const char *addr) {
    (void)addr;
    return ((fz_driver *)ud)->next_id++;
}

/* --- a few MessagePack forms, by hand (the SWIM message around the input) --- */

static void fz_u8(mp_buf *b, uint8_t v) {
    mp_buf_append(b, &v, 1);
}

static void fz_be(mp_buf *b, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        fz_u8(b, (uint8_t)(v >> (8 * i)));
    }
}

static void fz_str(mp_buf *b, const char *s) {
    size_t len = strlen(s); /* < 32 here: fixstr */
    fz_u8(b, (uint8_t)(0xa0 | len));
    mp_buf_append(b, s, len);
}

static void fz_bin(mp_buf *b, const uint8_t *data, size_t len) {
    fz_u8(b, 0xc6);
    fz_be(b, len, 4);
    mp_buf_append(b, data, len);
}

static void fz_uint64(mp_buf *b, uint64_t v) {
    fz_u8(b, 0xcf);
    fz_be(b, v, 8);
}

/* The peer's own record: {1: id, 2: addr, 3: generation, 4: incarnation}. */
static void fz_from(mp_buf *b) {
    fz_u8(b, 0x84);
    fz_u8(b, 1);
    fz_str(b, "p2");
    fz_u8(b, 2);
    fz_str(b, "10.0.0.2:7000");
    fz_u8(b, 3);
    fz_u8(b, 1);
    fz_u8(b, 4);
    fz_u8(b, 0);
}

/* GOSSIP {1: 1, 2: 4, 4: from, 8: [item]}. */
static void fz_gossip_with_item(mp_buf *b, const uint8_t *item, size_t len) {
    fz_u8(b, 0x84);
    fz_u8(b, 1);
    fz_u8(b, 1);
    fz_u8(b, 2);
    fz_u8(b, 4);
    fz_u8(b, 4);
    fz_from(b);
    fz_u8(b, 8);
    fz_u8(b, 0x91);
    fz_bin(b, item, len);
}

/* SYNC_REPLY {1: 1, 2: 6, 4: from, 10: [], 11: digest, 12: state,
 * 14: members_digest}: no seq, so it is always used. */
static void fz_sync_reply_with_state(mp_buf *b, const uint8_t *state, size_t len) {
    fz_u8(b, 0x87);
    fz_u8(b, 1);
    fz_u8(b, 1);
    fz_u8(b, 2);
    fz_u8(b, 6);
    fz_u8(b, 4);
    fz_from(b);
    fz_u8(b, 10);
    fz_u8(b, 0x90);
    fz_u8(b, 11);
    fz_uint64(b, 7);
    fz_u8(b, 12);
    fz_bin(b, state, len);
    fz_u8(b, 14);
    fz_uint64(b, 9);
}

/* --- one input ------------------------------------------------------------ */

static void fz_send(mp_node *n, uint64_t conn, mp_kind kind, mp_xoshiro *ids,
                    const uint8_t *payload, size_t len, uint64_t now) {
    mp_envelope e;
    mp_envelope_init(&e, kind);
    e.id = mp_id_new(&ids->rng);
    e.payload = (mp_bytes){payload, len};
    mp_buf b = MP_BUF_INIT;
    if (mp_envelope_encode(&e, &b) == MPREG_OK) {
        mp_node_on_frame(n, conn, b.data, b.len, now);
    }
    mp_buf_free(&b);
}

static void fz_hello(mp_node *n, mp_xoshiro *ids, uint64_t now) {
    mpreg_value v = mpreg_map();
    mp_buf b = MP_BUF_INIT;
    if (mpreg_map_set(&v, "role", mpreg_str("peer")) == MPREG_OK &&
        mpreg_map_set(&v, "node", mpreg_str("p2")) == MPREG_OK &&
        mpreg_map_set(&v, "cluster", mpreg_str("c")) == MPREG_OK &&
        mpreg_value_encode(&v, &b) == MPREG_OK) {
        fz_send(n, 1, MP_KIND_HELLO, ids, b.data, b.len, now);
    }
    mp_buf_free(&b);
    mpreg_value_free(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    fz_driver drv = {.scratch = MP_BUF_INIT, .next_id = 100};
    mp_node_io io = {
        .ud = &drv,
        .output = fz_output,
        .output_commit = fz_commit,
        .over_high_water = fz_high,
        .set_reading = fz_reading,
        .close = fz_close,
        .dial = fz_dial,
    };
    mp_xoshiro rng, ids;
    mp_xoshiro_seed(&rng, 1);
    mp_xoshiro_seed(&ids, 2);
    mp_node_config cfg = {
        .node_id = "n1",
        .cluster = "c",
        .incarnation = 5,
        .advertise_addr = "10.0.0.1:7000",
        .no_builtins = true,
        .catalog_ttl_ms = 1000, /* so that a few virtual seconds run sweeps */
        .log_level = MP_LOG_ERROR,
    };
    uint64_t now = FZ_T0;
    mp_node *n = mp_node_new(&cfg, &io, &rng.rng, now);
    if (!n) {
        abort();
    }
    mp_node_on_open(n, 1, "10.0.0.2:40000", now);
    fz_hello(n, &ids, now);

    const uint8_t *body = data + 1;
    size_t len = size - 1;
    mp_buf msg = MP_BUF_INIT;
    switch (data[0] % 3) {
    case 0:
        fz_send(n, 1, MP_KIND_GOSSIP, &ids, body, len, now);
        break;
    case 1:
        if (len > 0 && len <= FZ_MAX_ITEM) {
            fz_gossip_with_item(&msg, body, len);
            fz_send(n, 1, MP_KIND_GOSSIP, &ids, msg.data, msg.len, now);
        }
        break;
    default:
        fz_sync_reply_with_state(&msg, body, len);
        fz_send(n, 1, MP_KIND_GOSSIP, &ids, msg.data, msg.len, now);
        break;
    }
    mp_buf_free(&msg);

    /* The node's timers for up to 5 virtual seconds (bounded in steps too:
     * a wakeup that does not move on would spin a real driver). */
    for (int step = 0; step < 200; step++) {
        uint64_t t = mp_node_next_wakeup(n);
        if (t == UINT64_MAX || t > FZ_T0 + 5000) {
            break;
        }
        now = t > now ? t : now;
        mp_node_tick(n, now);
    }
    mpreg_value members;
    if (mp_node_members(n, now, &members) != MPREG_OK) {
        abort();
    }
    mpreg_value_free(&members);
    (void)mp_catalog_digest(mp_node_catalog(n));
    mp_node_free(n);
    mp_buf_free(&drv.scratch);
    return 0;
}
