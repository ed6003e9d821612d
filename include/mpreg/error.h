/* error.h - the one error vocabulary of mpreg.
 *
 * Every fallible function returns an mpreg_err. The numeric values are part
 * of the wire protocol (they travel in ERROR envelopes and in RPC error
 * shapes), so they never change meaning: new codes are only appended.
 * Codes are grouped by hundreds: 1xx input/encoding, 2xx protocol,
 * 3xx RPC, 4xx routing/fabric, 5xx services, 9xx internal. */
#ifndef MPREG_ERROR_H
#define MPREG_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mpreg_err {
    MPREG_OK = 0,

    /* 1xx: malformed or out-of-limit input */
    MPREG_E_INVALID = 100,   /* an argument or field is not acceptable */
    MPREG_E_DECODE = 101,    /* bytes are not valid MessagePack of the expected shape */
    MPREG_E_TRUNCATED = 102, /* input ended in the middle of an item */
    MPREG_E_TOO_DEEP = 103,  /* nesting deeper than the configured limit */
    MPREG_E_TOO_LARGE = 104, /* a string, container or message over its size limit */
    MPREG_E_RANGE = 105,     /* a number outside the representable or allowed range */
    MPREG_E_TRAILING = 106,  /* bytes left over after a complete item */
    MPREG_E_JSON = 107,      /* text is not valid JSON */
    MPREG_E_TOPIC = 108,     /* a topic or pattern breaks the topic syntax */
    MPREG_E_TYPE = 109,      /* a value has the wrong type */

    /* 2xx: wire protocol */
    MPREG_E_VERSION = 200,         /* unsupported protocol version */
    MPREG_E_KIND = 201,            /* unknown envelope kind */
    MPREG_E_MISSING_FIELD = 202,   /* a field the kind requires is absent */
    MPREG_E_FRAME_EMPTY = 203,     /* a frame announced length 0 */
    MPREG_E_FRAME_TOO_LARGE = 204, /* a frame over the maximum frame size */
    MPREG_E_PATH_TOO_LONG = 205,   /* routing or federation path over its limit */
    MPREG_E_HOP_BUDGET = 206,      /* hop budget exhausted or over its limit */
    MPREG_E_HANDSHAKE = 207,       /* HELLO missing, repeated or refused */
    MPREG_E_AUTH = 208,            /* token refused */
    MPREG_E_IDENTITY = 209,        /* a node id claimed by another process */

    /* 3xx: RPC */
    MPREG_E_NOT_FOUND = 300,    /* no such function */
    MPREG_E_NO_VERSION = 301,   /* the function exists, no version satisfies the constraint */
    MPREG_E_NO_RESOURCES = 302, /* no endpoint has every requested resource */
    MPREG_E_CYCLE = 303,        /* dependency cycle or self reference */
    MPREG_E_HANDLER = 304,      /* the function itself failed */
    MPREG_E_DEADLINE = 305,     /* the deadline passed */
    MPREG_E_DUPLICATE = 306,    /* a name used twice where names must be unique */
    MPREG_E_WORKER_GONE = 307,  /* the worker serving a call disconnected */
    MPREG_E_BAD_SEMVER = 308,   /* a version or constraint does not parse / contradicts itself */

    /* 4xx: routing and fabric */
    MPREG_E_ROUTE = 400,        /* no route to the target */
    MPREG_E_UNREACHABLE = 401,  /* the target node is down or the link is broken */
    MPREG_E_POLICY = 402,       /* a federation policy refused it */
    MPREG_E_CIRCUIT_OPEN = 403, /* the peer's circuit breaker is open */
    MPREG_E_STALE = 404,        /* a catalog entry older than what is known */

    /* 5xx: services */
    MPREG_E_BACKPRESSURE = 500, /* the receiver is full; try again later */
    MPREG_E_QUEUE_FULL = 501,
    MPREG_E_NO_SUCH_QUEUE = 502,
    MPREG_E_EXISTS = 503,
    MPREG_E_CAS_MISMATCH = 504,
    MPREG_E_LIMIT = 505, /* a configured per-connection or per-node limit was reached */

    /* 9xx: internal */
    MPREG_E_NOMEM = 900,
    MPREG_E_IO = 901,
    MPREG_E_INTERNAL = 902,
    MPREG_E_CLOSED = 903,  /* the connection or object was closed */
    MPREG_E_TIMEOUT = 904, /* a local wait (not an RPC deadline) timed out */
} mpreg_err;

/* A one-line human description ("nesting deeper than the configured limit").
 * Never NULL; unknown codes give "unknown error". */
const char *mpreg_strerror(mpreg_err err);

/* A stable snake_case name for the code ("too_deep"), as used in JSON output
 * and logs. Never NULL; unknown codes give "unknown". */
const char *mpreg_err_name(mpreg_err err);

#ifdef __cplusplus
}
#endif
#endif
