/* selector.h - choosing the function endpoint that runs one RPC command.
 *
 * The rules (DESIGN.md §6 "RPC", "Selection"), applied to the catalog's live
 * endpoints of the requested name:
 *   1. filters, in this order: function_id (when given), the version
 *      constraint (when given, semver.h syntax), then resources: every
 *      requested resource must be among the endpoint's resources;
 *   2. among the endpoints that pass every filter, the highest version;
 *   3. among those, the least loaded; then the local node's; then one chosen
 *      uniformly at random with the caller's rng.
 *
 * The random tie-break is a pure function of the catalog's contents and the
 * rng state: the tied endpoints are put in a canonical order (node, then
 * function_id, then version text) before one is drawn, so two nodes with the
 * same catalog and the same seed choose the same endpoint whatever order the
 * catalog returns them in. The rng is drawn from only when there is more than
 * one tie, so selections without ties do not perturb a simulation's stream.
 *
 * A failed selection names the most specific reason: the last filter that
 * removed every remaining endpoint. So when the name exists but no version
 * matches, the reason is NO_VERSION even if the resources would also have
 * failed; when some endpoint has the version but none of those has the
 * resources, it is NO_RESOURCES. */
#ifndef MP_SELECTOR_H
#define MP_SELECTOR_H

#include "core/rng.h"
#include "fabric/catalog.h"
#include "fabric/entry.h"
#include "mpreg/error.h"

#include <stdint.h>

typedef struct mp_function_query {
    const char *name;            /* required */
    const char *function_id;     /* NULL or "" = any */
    const char *version;         /* constraint text (semver.h); NULL or "" = any */
    const mp_strlist *resources; /* NULL or empty = none required */
    /* NULL = none. Endpoints on this node are passed over as if they had
     * not the resources: a retry after the node could not be reached. */
    const char *avoid_node;
} mp_function_query;

typedef enum mp_select_reason {
    MP_SELECT_LOCAL = 1,        /* chosen endpoint is on this node */
    MP_SELECT_REMOTE,           /* chosen endpoint is on another node */
    MP_SELECT_NO_SUCH_FUNCTION, /* no live endpoint has the name (MPREG_E_NOT_FOUND) */
    MP_SELECT_NO_FUNCTION_ID,   /* the name exists, not with that function_id (MPREG_E_NOT_FOUND) */
    MP_SELECT_NO_VERSION,       /* no endpoint left satisfies the constraint (MPREG_E_NO_VERSION) */
    MP_SELECT_NO_RESOURCES,     /* none left has every resource (MPREG_E_NO_RESOURCES) */
    MP_SELECT_BAD_CONSTRAINT,   /* the constraint does not parse or admits nothing
                                   (MPREG_E_BAD_SEMVER) */
    MP_SELECT_INVALID,          /* no query or an empty name (MPREG_E_INVALID) */
} mp_select_reason;

typedef struct mp_selection {
    mp_select_reason reason;
    mpreg_err error; /* MPREG_OK exactly when endpoint is set */
    /* The chosen endpoint, borrowed from the catalog: valid until the catalog
     * next changes. NULL on failure. */
    const mp_function_endpoint *endpoint;
    uint32_t candidates; /* endpoints that passed every filter */
    uint32_t ties;       /* of those, equal best on version, load and locality */
    const char *why;     /* static human text, never NULL */
} mp_selection;

/* Ties held without allocating; more than this many ties allocate. */
#define MP_SELECT_INLINE_TIES 32

/* Selects an endpoint for q. rng may be NULL: ties then go to the first in
 * the canonical order (useful where no randomness is wanted). Never
 * allocates unless more than MP_SELECT_INLINE_TIES endpoints tie; if that
 * allocation fails the first tie in canonical order is taken. */
mp_selection mp_select_function(const mp_catalog *c, const mp_function_query *q, mp_rng *rng);

/* "local", "remote", "no_such_function", ...; "unknown" for other values. */
const char *mp_select_reason_name(mp_select_reason r);

#endif
