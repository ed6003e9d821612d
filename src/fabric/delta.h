/* delta.h - catalog deltas: what gossip carries between catalogs.
 *
 * A delta is a batch of entries (adds, refreshes and withdrawals, each a full
 * mp_entry with its version) and node deaths, from one or more origins.
 * Applying deltas is a CRDT merge (catalog.h): idempotent, commutative and
 * associative, so it does not matter how gossip duplicates or reorders them.
 *
 * Wire form: MessagePack, documented in docs/PROTOCOL.md "Catalog deltas".
 * Decoding validates every entry (mp_entry_validate) and copies strings, so a
 * decoded delta owns its memory and outlives the frame it came from. */
#ifndef MP_DELTA_H
#define MP_DELTA_H

#include "core/buf.h"
#include "fabric/entry.h"
#include "mpreg/error.h"

#include <stdint.h>

#define MP_DELTA_MAX_ENTRIES 65536
#define MP_DELTA_MAX_DEATHS 4096

/* "node died; everything it advertised at incarnation <= incarnation is gone". */
typedef struct mp_node_death {
    char *node;
    uint64_t incarnation;
} mp_node_death;

typedef struct mp_delta {
    mp_entry *entries;
    uint32_t entry_count;
    size_t entry_cap;
    mp_node_death *deaths;
    uint32_t death_count;
    size_t death_cap;
} mp_delta;

void mp_delta_init(mp_delta *d);
/* Frees every entry and death and leaves d empty (and initialised). */
void mp_delta_free(mp_delta *d);
/* Appends a deep copy of e. */
mpreg_err mp_delta_add_entry(mp_delta *d, const mp_entry *e);
/* Appends e itself, taking ownership of its strings (e is zeroed). */
mpreg_err mp_delta_take_entry(mp_delta *d, mp_entry *e);
mpreg_err mp_delta_add_death(mp_delta *d, const char *node, uint64_t incarnation);

/* Appends the encoding of d to out (out is left as it was on failure). The
 * encoding is canonical: decoding it and encoding again gives the same bytes.
 * Entries are not validated here (a catalog holds only validated ones), but
 * an unknown kind is MPREG_E_INVALID and more entries or deaths than the
 * decoder accepts is MPREG_E_TOO_LARGE. */
mpreg_err mp_delta_encode(const mp_delta *d, mp_buf *out);
/* Decodes exactly one delta from data[0..len). *out is initialised first;
 * on success it owns copies of every string, on failure it is empty and
 * nothing is allocated. *why (if non-NULL) is NULL on success, otherwise a
 * static name of where the problem is ("entry.key", "value.cluster", or an
 * mp_entry_validate field name such as "latitude"). */
mpreg_err mp_delta_decode(const void *data, size_t len, mp_delta *out, const char **why);

#endif
