/* error.c - names and messages for mpreg_err codes. */
#include "mpreg/error.h"
#include "core/check.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct mp_err_desc {
    mpreg_err code;
    const char *name;
    const char *message;
} mp_err_desc;

/* One table so a new code is one new line. */
static const mp_err_desc mp_err_table[] = {
    {MPREG_OK, "ok", "success"},
    {MPREG_E_INVALID, "invalid", "invalid argument"},
    {MPREG_E_DECODE, "decode", "malformed MessagePack or unexpected shape"},
    {MPREG_E_TRUNCATED, "truncated", "input ended in the middle of an item"},
    {MPREG_E_TOO_DEEP, "too_deep", "nesting deeper than the configured limit"},
    {MPREG_E_TOO_LARGE, "too_large", "item larger than the configured limit"},
    {MPREG_E_RANGE, "range", "number out of range"},
    {MPREG_E_TRAILING, "trailing", "unexpected bytes after a complete item"},
    {MPREG_E_JSON, "json", "invalid JSON"},
    {MPREG_E_TOPIC, "topic", "invalid topic or pattern"},
    {MPREG_E_TYPE, "type", "value has the wrong type"},
    {MPREG_E_VERSION, "version", "unsupported protocol version"},
    {MPREG_E_KIND, "kind", "unknown envelope kind"},
    {MPREG_E_MISSING_FIELD, "missing_field", "a required field is missing"},
    {MPREG_E_FRAME_EMPTY, "frame_empty", "frame with length 0"},
    {MPREG_E_FRAME_TOO_LARGE, "frame_too_large", "frame larger than the maximum frame size"},
    {MPREG_E_PATH_TOO_LONG, "path_too_long", "routing or federation path too long"},
    {MPREG_E_HOP_BUDGET, "hop_budget", "hop budget exhausted or out of range"},
    {MPREG_E_HANDSHAKE, "handshake", "handshake missing, repeated or refused"},
    {MPREG_E_AUTH, "auth", "authentication refused"},
    {MPREG_E_IDENTITY, "identity", "node id held by another process"},
    {MPREG_E_NOT_FOUND, "not_found", "no such function"},
    {MPREG_E_NO_VERSION, "no_version", "no version satisfies the constraint"},
    {MPREG_E_NO_RESOURCES, "no_resources", "no endpoint has the requested resources"},
    {MPREG_E_CYCLE, "cycle", "dependency cycle or self reference"},
    {MPREG_E_HANDLER, "handler", "the function failed"},
    {MPREG_E_DEADLINE, "deadline", "deadline exceeded"},
    {MPREG_E_DUPLICATE, "duplicate", "duplicate name"},
    {MPREG_E_WORKER_GONE, "worker_gone", "the worker serving the call disconnected"},
    {MPREG_E_BAD_SEMVER, "bad_semver", "invalid version or version constraint"},
    {MPREG_E_ROUTE, "route", "no route to the target"},
    {MPREG_E_UNREACHABLE, "unreachable", "target unreachable"},
    {MPREG_E_POLICY, "policy", "refused by federation policy"},
    {MPREG_E_CIRCUIT_OPEN, "circuit_open", "circuit breaker open"},
    {MPREG_E_STALE, "stale", "stale catalog entry"},
    {MPREG_E_BACKPRESSURE, "backpressure", "receiver is full, try again later"},
    {MPREG_E_QUEUE_FULL, "queue_full", "queue is full"},
    {MPREG_E_NO_SUCH_QUEUE, "no_such_queue", "no such queue"},
    {MPREG_E_EXISTS, "exists", "already exists"},
    {MPREG_E_CAS_MISMATCH, "cas_mismatch", "compare-and-swap value mismatch"},
    {MPREG_E_LIMIT, "limit", "a configured limit was reached"},
    {MPREG_E_NOMEM, "nomem", "out of memory"},
    {MPREG_E_IO, "io", "I/O error"},
    {MPREG_E_INTERNAL, "internal", "internal error"},
    {MPREG_E_CLOSED, "closed", "closed"},
    {MPREG_E_TIMEOUT, "timeout", "timed out"},
};

static const mp_err_desc *mp_err_find(mpreg_err err) {
    for (size_t i = 0; i < sizeof mp_err_table / sizeof mp_err_table[0]; i++) {
        if (mp_err_table[i].code == err) {
            return &mp_err_table[i];
        }
    }
    return NULL;
}

const char *mpreg_strerror(mpreg_err err) {
    const mp_err_desc *d = mp_err_find(err);
    return d ? d->message : "unknown error";
}

const char *mpreg_err_name(mpreg_err err) {
    const mp_err_desc *d = mp_err_find(err);
    return d ? d->name : "unknown";
}

/* check.h: the one place an invariant's failure is reported. */
_Noreturn void mp_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "%s:%d: invariant broken: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}
