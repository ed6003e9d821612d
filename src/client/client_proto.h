/* client_proto.h - what the blocking and the async client share.
 *
 * Everything here is pure (no sockets, no loop): url parsing, building and
 * reading the payloads a client exchanges with a node (HELLO, WELCOME,
 * RPC_REQUEST, RPC_REPLY, REGISTER, SUBSCRIBE, DELIVER, ERROR), the table
 * of functions a worker serves and the table of subscriptions, and the
 * small argument helpers of the mpreg CLI. The two clients differ only in
 * how bytes move; what the bytes mean lives here, once. */
#ifndef MP_CLIENT_PROTO_H
#define MP_CLIENT_PROTO_H

#include "core/buf.h"
#include "core/envelope.h"
#include "core/id.h"
#include "core/rng.h"
#include "fabric/semver.h"
#include "mpreg/client.h"
#include "services/rpc_plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Host part of a url: a DNS name is at most 253 bytes; IPv6 literals fit. */
#define MP_CLIENT_HOST_MAX 256

/* ---- urls, time, ids -------------------------------------------------------- */

/* Parses "host:port", "[v6]:port", "host" (default port), with an optional
 * "tcp://" or "mpreg://" prefix and an optional trailing '/'. The host is
 * written NUL-terminated without brackets. MPREG_E_INVALID (with a reason in
 * *why) for an empty host, a bad or out-of-range port, stray characters. */
mpreg_err mp_client_parse_url(const char *url, char host[MP_CLIENT_HOST_MAX], uint16_t *port,
                              const char **why);

/* The effective timeout of an operation: its own, else the client's, else
 * MPREG_DEFAULT_TIMEOUT_MS. */
uint32_t mp_client_timeout(uint32_t op_ms, uint32_t client_ms);
/* How long a client waits for the answer to a request that carries a
 * deadline of timeout_ms: longer, so that the node's `deadline` error (which
 * says more than a local timeout) has time to arrive. */
uint32_t mp_client_reply_wait(uint32_t timeout_ms);

/* ---- errors ----------------------------------------------------------------- */

/* Frees *err and fills it (err may be NULL). Returns code. */
mpreg_err mp_client_error_set(mpreg_error *err, mpreg_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* ---- catalog pages ---------------------------------------------------------- */

/* The CONTROL "catalog" payload: {"kinds"?, "after"?, "limit"?} from opts
 * (may be NULL) and the previous page's next (NULL or NIL for the first). */
mpreg_err mp_client_catalog_payload(const mpreg_catalog_options *opts, const mpreg_value *after,
                                    mpreg_bytes *out);
/* Puts a page (taken) into *acc (NIL before the first page): each kind's
 * entries are appended to what came before. *next gets the page's "next"
 * (NIL when it was the last page). A page that promises more but brings
 * no entry is MPREG_E_DECODE: following it could go on for ever. */
mpreg_err mp_client_catalog_merge(mpreg_value *acc, mpreg_value *page, mpreg_value *next,
                                  mpreg_error *err);

/* The first answer to our HELLO was not an mpreg frame (an HTTP server, a
 * Redis, a port that says something else): MPREG_E_HANDSHAKE, "not an mpreg
 * node", quoting the first bytes it sent (first may be NULL when they are
 * not at hand) and saying what was wrong with them (`why`). Without this a
 * text reply reads as an absurd frame length and the user is told
 * "frame_too_large". */
mpreg_err mp_client_not_mpreg(mpreg_error *err, const uint8_t *first, size_t len, const char *why);
/* Moves an error shape into *err (details are taken, e is left empty). */
mpreg_err mp_client_error_from_rpc(mpreg_error *err, mp_rpc_error *e);
/* Copies *src into *dst (details cloned). */
void mp_client_error_copy(mpreg_error *dst, const mpreg_error *src);
/* Reads the error shape of an ERROR envelope into *err and returns its code
 * (MPREG_E_DECODE, described, when the payload is not an error shape). */
mpreg_err mp_client_error_from_envelope(const mp_envelope *e, mpreg_error *err);

/* ---- frames ----------------------------------------------------------------- */

/* What the client puts in an envelope besides kind and payload. */
typedef struct mp_client_msg {
    mp_kind kind;
    const mp_id *correlation; /* NULL = none */
    const char *topic;        /* NULL = none */
    uint64_t deadline_ms;     /* 0 = none */
    const void *payload;
    size_t payload_len;
} mp_client_msg;

/* Appends one frame holding m, with a fresh id (returned in *id, may be
 * NULL). On error out is unchanged. */
mpreg_err mp_client_frame(mp_buf *out, mp_rng *rng, const mp_client_msg *m, uint32_t max_frame,
                          mp_id *id);

/* ---- handshake ---------------------------------------------------------------- */

typedef struct mp_client_welcome {
    char node[MP_MAX_NAME_LEN + 1];
    char name[MP_MAX_NAME_LEN + 1];
    char cluster[MP_MAX_NAME_LEN + 1];
    char server[MP_MAX_NAME_LEN + 1];
    uint32_t max_frame; /* 0 when the node did not say */
} mp_client_welcome;

/* {"role": "client", "name"?: str, "token"?: str}. opts may be NULL. */
mpreg_err mp_client_hello_payload(const mpreg_client_options *opts, mpreg_bytes *out);
/* Reads the node's answer to HELLO: WELCOME fills *w; ERROR (or anything
 * else) becomes an error in *err (MPREG_E_HANDSHAKE unless the node said
 * more precisely, e.g. MPREG_E_AUTH). */
mpreg_err mp_client_welcome_read(const mp_envelope *e, mp_client_welcome *w, mpreg_error *err);

/* ---- RPC ------------------------------------------------------------------------ */

/* A name for the one command of a call that no string in args or kwargs
 * mentions (a string equal to it would be read as a reference to itself):
 * the function's name with '.' made '_' (cut to fit), else with "_1", "_2",
 * ... appended ("call" when fun is empty). Writes at most cap bytes. */
void mp_client_call_name(const char *fun, const mpreg_value *args, const mpreg_value *kwargs,
                         char *out, size_t cap);

/* The RPC_REQUEST payload for a single call; name gets the command's name.
 * MPREG_E_INVALID / MPREG_E_TYPE (described in err) for bad arguments. */
mpreg_err mp_client_call_payload(const char *fun, const mpreg_value *args,
                                 const mpreg_value *kwargs, const mpreg_call_options *opts,
                                 uint32_t timeout_ms, char *name, size_t name_cap, mpreg_bytes *out,
                                 mpreg_error *err);
/* The RPC_REQUEST payload for a list of commands, validated first. */
mpreg_err mp_client_request_payload(const mpreg_value *commands, uint32_t timeout_ms,
                                    mpreg_bytes *out, mpreg_error *err);

/* Reads the answer to a request: RPC_REPLY gives its results map (or its
 * error), CONTROL_REPLY and OK their payload value (NIL when empty), ERROR
 * its error. Anything else is MPREG_E_KIND. */
mpreg_err mp_client_reply_read(const mp_envelope *e, mpreg_value *out, mpreg_error *err);
/* For a call: takes the value under name out of the results map. */
mpreg_err mp_client_call_result(mpreg_value *results, const char *name, mpreg_value *out,
                                mpreg_error *err);

/* ---- worker functions ------------------------------------------------------------- */

typedef struct mp_client_function {
    char *name;
    char *function_id; /* NULL = none */
    char *version;     /* text as registered; never NULL */
    mp_semver semver;
    mp_strlist resources;
    mpreg_handler_fn handler;
    void *ctx;
} mp_client_function;

typedef struct mp_client_functions {
    mp_client_function *items;
    size_t len;
    size_t cap;
} mp_client_functions;

void mp_client_functions_free(mp_client_functions *fs);
/* Checks def and adds a copy. MPREG_E_INVALID (no name or handler, a bad
 * resource), MPREG_E_BAD_SEMVER, MPREG_E_DUPLICATE (same name, function_id
 * and version already here), MPREG_E_NOMEM; described in err. */
mpreg_err mp_client_functions_add(mp_client_functions *fs, const mpreg_worker_function *def,
                                  mpreg_error *err);
/* Drops the entry that mp_client_functions_add added last for def's name,
 * function_id and version (when the node refused it). */
void mp_client_functions_remove(mp_client_functions *fs, const mpreg_worker_function *def);
/* The REGISTER payload: {"functions": [{"name", "function_id"?, "version",
 * "resources"?}]}. */
mpreg_err mp_client_register_payload(const mpreg_worker_function *def, mpreg_bytes *out);
/* Serves one RPC_INVOKE: finds the function (by name, function_id when the
 * invoke names one, and the highest version satisfying the invoke's
 * version), runs its handler and appends the RPC_RESULT payload to out.
 * Failures of every kind (undecodable invoke, unknown function, handler
 * error) become an error result; only MPREG_E_NOMEM is returned. */
mpreg_err mp_client_functions_serve(mp_client_functions *fs, const mp_envelope *invoke,
                                    mpreg_bytes *out);

/* ---- pub/sub ------------------------------------------------------------------------ */

typedef struct mp_client_sub {
    uint64_t id;
    mpreg_message_cb cb;
    void *ud;
    uint64_t missed; /* dropped here since its last message (blocking client's queue) */
} mp_client_sub;

typedef struct mp_client_subs {
    mp_client_sub *items;
    size_t len;
    size_t cap;
} mp_client_subs;

void mp_client_subs_free(mp_client_subs *s);
mpreg_err mp_client_subs_add(mp_client_subs *s, uint64_t id, mpreg_message_cb cb, void *ud);
bool mp_client_subs_remove(mp_client_subs *s, uint64_t id);
const mp_client_sub *mp_client_subs_find(const mp_client_subs *s, uint64_t id);
mp_client_sub *mp_client_subs_find_mut(mp_client_subs *s, uint64_t id);

/* The SUBSCRIBE payload; patterns are checked first (MPREG_E_TOPIC naming
 * the bad one, MPREG_E_INVALID for none or too many). */
mpreg_err mp_client_subscribe_payload(const char *const *patterns, size_t n,
                                      const mpreg_subscribe_options *opts, mp_buf *out,
                                      mpreg_error *err);
/* Checks a topic to publish to (MPREG_E_TOPIC, described). */
mpreg_err mp_client_check_topic(const char *topic, mpreg_error *err);

/* Fills *msg from a DELIVER envelope; the topic is copied into topic_buf
 * (NUL-terminated), the payload is borrowed from the envelope. A "missed"
 * header that does not read as a count is taken as absent (0). */
mpreg_err mp_client_message_read(const mp_envelope *e, char topic_buf[MP_MAX_TOPIC_LEN + 1],
                                 mpreg_message *msg);

/* ---- command-line helpers ------------------------------------------------------------ */

/* An argument as the CLI reads it: JSON when it parses as JSON, else the
 * text itself as a string ("hi" -> "hi", "3" -> 3, "[1,2]" -> [1, 2],
 * "{" -> "{"). JSON that has no exact value is refused, not turned into
 * something else (core/value_json.h): an integer outside int64 or a number
 * beyond double range (MPREG_E_RANGE), a duplicate key (MPREG_E_JSON), over
 * 32 levels (MPREG_E_TOO_DEEP); errbuf (may be NULL) says why. */
mpreg_err mp_client_arg_value(const char *arg, mpreg_value *out, char *errbuf, size_t errbuf_len);
/* "KEY=JSON" (the value read as mp_client_arg_value reads it) into map; a
 * key given again replaces the earlier value (the last flag wins).
 * MPREG_E_INVALID with a reason in errbuf when there is no '=' or no key,
 * and mp_client_arg_value's refusals, naming the keyword. */
mpreg_err mp_client_kw_arg(const char *arg, mpreg_value *map, char *errbuf, size_t errbuf_len);
/* A message as the CLI prints it: {"topic", "data", "subscription"} plus
 * "replay": true for replayed ones and "missed": N when messages of the
 * subscription were dropped before it; data is a string when the bytes are
 * UTF-8, else {"$bin": base64}. */
mpreg_err mp_client_message_value(const mpreg_message *msg, mpreg_value *out);
/* Splits "a,b,c" into an array of strings, skipping empty items. */
mpreg_err mp_client_split_list(const char *text, mpreg_value *out);

#endif
