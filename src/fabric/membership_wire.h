/* membership_wire.h - the SWIM messages on the wire (docs/PROTOCOL.md §12):
 * their numbers, the decoded form and the strict decoder. Membership's
 * codec, apart from its state machine (membership.c), which encodes what it
 * sends itself (the encodings need its member records) with these numbers.
 *
 * Trust rule (as core/mpread.h): the whole message is scanned under limits
 * before anything is allocated, and no count is trusted before the bytes it
 * claims are there. A decoded message's strings view the input bytes. */
#ifndef MP_MEMBERSHIP_WIRE_H
#define MP_MEMBERSHIP_WIRE_H

#include "core/str.h"
#include "fabric/membership.h"
#include "mpreg/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MP_SWIM_WIRE_VERSION 1

typedef enum mp_wtype {
    MP_W_PING = 1,
    MP_W_PING_REQ = 2,
    MP_W_ACK = 3,
    MP_W_GOSSIP = 4,
    MP_W_SYNC = 5,
    MP_W_SYNC_REPLY = 6,
} mp_wtype;
#define MP_W_TYPE_MAX 6

/* Fields of a message. */
enum {
    MP_K_VERSION = 1,
    MP_K_TYPE = 2,
    MP_K_SEQ = 3,
    MP_K_FROM = 4,
    MP_K_TARGET = 5,
    MP_K_TARGET_ADDR = 6,
    MP_K_UPDATES = 7,
    MP_K_ITEMS = 8,
    MP_K_JOIN = 9,
    MP_K_MEMBERS = 10,
    MP_K_DIGEST = 11,
    MP_K_STATE = 12,
    MP_K_WANT_STATE = 13,
    MP_K_MEMBERS_DIGEST = 14,
    MP_K_WANT_MEMBERS = 15,
};
#define MP_K_MAX 15

/* Fields of a member record. */
enum {
    MP_MK_ID = 1,
    MP_MK_ADDR = 2,
    MP_MK_GENERATION = 3,
    MP_MK_INCARNATION = 4,
    MP_MK_STATE = 5,
    MP_MK_KEY = 6,
};
#define MP_MK_MAX 6

#define MP_BIT(k) (1u << (k))

typedef struct mp_wmember {
    mp_str id;
    mp_str addr;
    uint64_t generation;
    uint64_t incarnation;
    mp_member_state state;
    mp_bytes key; /* len 0: none said */
} mp_wmember;

typedef struct mp_wmsg {
    uint32_t type;
    uint32_t seen; /* MP_BIT(field) for each field read */
    uint64_t seq;
    mp_wmember from;
    mp_str target;
    mp_str target_addr;
    mp_wmember *updates;
    uint32_t update_count;
    mp_bytes *items;
    uint32_t item_count;
    mp_wmember *members;
    uint32_t member_count;
    bool join;
    bool want_state;
    bool want_members;
    uint64_t digest;
    uint64_t members_digest;
    mp_bytes state;
} mp_wmsg;

/* Decodes and checks one message (fields allowed and required per type,
 * no duplicates, sane texts). MPREG_E_DECODE / _TOO_LARGE / _INVALID /
 * _DUPLICATE / _VERSION on bad input; *m is then empty. */
mpreg_err mp_wmsg_decode(const uint8_t *data, size_t len, mp_wmsg *m);
void mp_wmsg_free(mp_wmsg *m);

/* A member id or address: at most MP_SWIM_MAX_ID bytes of UTF-8 without
 * NUL, at least `min`. */
mpreg_err mp_swim_text_check(const char *p, size_t len, size_t min);

#endif
