/* client.h - libmpreg, the C client of an mpreg fabric.
 *
 * Two ways to talk to a node, over the native protocol (docs/PROTOCOL.md):
 *
 *   - a blocking client (mpreg_client): one TCP connection, plain sockets,
 *     no threads, no event loop. Every call waits for its answer, within a
 *     timeout, and never longer.
 *   - an asynchronous client (mpreg_async_client) on a libuv loop the
 *     caller owns: every operation takes a callback.
 *
 * Both speak RPC (call one function, or send a request of several commands
 * whose arguments name each other's results), pub/sub (publish, subscribe
 * with wildcards, queue groups and replay), act as a worker (register
 * functions the fabric may then route calls to) and read the node's status,
 * catalog and view of the cluster's members.
 *
 *     mpreg_error err = {0};
 *     mpreg_client *c = mpreg_connect("127.0.0.1:6464", NULL, &err);
 *     if (c == NULL) { fprintf(stderr, "%s\n", err.message); ... }
 *     mpreg_value args = mpreg_array(), result;
 *     mpreg_array_push(&args, mpreg_str("hi"));
 *     if (mpreg_call(c, "echo", &args, NULL, NULL, &result, &err) == MPREG_OK) {
 *         ... result is "hi" ...
 *         mpreg_value_free(&result);
 *     }
 *     mpreg_value_free(&args);
 *     mpreg_error_free(&err);
 *     mpreg_close(c);
 *
 * Errors. Every fallible function returns an mpreg_err and, when given an
 * mpreg_error, fills it: the code, a one-line message, the RPC command that
 * failed (for requests of several commands) and the structured details the
 * node sent. Errors raised by the fabric (not_found, cycle, deadline, ...)
 * carry the node's codes unchanged; local failures use MPREG_E_TIMEOUT (no
 * answer in time), MPREG_E_CLOSED (the connection is gone; every later call
 * fails the same way), MPREG_E_IO, MPREG_E_INVALID (a bad argument, caught
 * before anything is sent) and MPREG_E_HANDSHAKE / MPREG_E_AUTH (the node
 * refused us). A zero-initialised mpreg_error means "no error"; call
 * mpreg_error_free when done with one that may hold details (it is safe to
 * reuse an mpreg_error for another call without freeing in between: it is
 * freed and overwritten).
 *
 * Threads. A client is not thread-safe: use each from one thread at a time.
 * Different clients are independent.
 *
 * Values follow include/mpreg/value.h: arguments are borrowed, results are
 * the caller's to free with mpreg_value_free. */
#ifndef MPREG_CLIENT_H
#define MPREG_CLIENT_H

#include "mpreg/error.h"
#include "mpreg/value.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where mpreg_connect goes when the caller has no better idea (the mpreg CLI
 * also reads MPREG_URL). */
#define MPREG_DEFAULT_URL "127.0.0.1:6464"
#define MPREG_DEFAULT_PORT 6464
/* Default for every wait of a client that sets no timeout_ms. */
#define MPREG_DEFAULT_TIMEOUT_MS 30000u

/* ---- errors ---------------------------------------------------------------- */

typedef struct mpreg_error {
    mpreg_err code;      /* MPREG_OK = no error */
    char message[512];   /* one line for a human, NUL-terminated (cut if longer) */
    char command[256];   /* the failed RPC command's name, or "" */
    mpreg_value details; /* structured context from the node; NIL = none */
} mpreg_error;

/* Frees details and leaves *err as "no error". NULL is fine. */
void mpreg_error_free(mpreg_error *err);

/* ---- options ------------------------------------------------------------- */

typedef struct mpreg_client_options {
    /* Connect + handshake, and the default for every later wait (calls,
     * control requests, subscribe, flushing output). 0 = 30 s. */
    uint32_t timeout_ms;
    const char *name;  /* how the node lists this client; NULL = none */
    const char *token; /* when the node requires one; NULL = none */
    /* Blocking client: bytes of deliveries it keeps for mpreg_poll while
     * the application is busy elsewhere; beyond this new deliveries are
     * dropped (and counted, see mpreg_client_dropped). 0 = 64 MiB. */
    size_t max_queued_bytes;
} mpreg_client_options;

typedef struct mpreg_call_options {
    const char *const *locs; /* resources the serving endpoint must have */
    size_t locs_count;
    const char *function_id;    /* NULL = any */
    const char *version;        /* semver constraint ("1.2", ">=1,<2"); NULL = any */
    const char *target_cluster; /* NULL = wherever the fabric finds the function */
    /* The call's deadline: the node answers MPREG_E_DEADLINE once it has
     * passed. The client waits a little longer than this for that answer
     * before giving up locally with MPREG_E_TIMEOUT. 0 = the client's. */
    uint32_t timeout_ms;
} mpreg_call_options;

typedef struct mpreg_subscribe_options {
    const char *group;    /* queue group: one member gets each message; NULL = none */
    uint64_t replay_last; /* first deliver up to this many retained messages; 0 = none */
    /* Replay the retained messages published at or after replay_since_ms
     * (Unix time, ms) when has_replay_since is set: 0 then means "from the
     * start of retention". 0 is a time, not "absent", so presence is its
     * own flag; a nonzero replay_since_ms without the flag is honoured too,
     * as before the flag existed. With replay_last as well: the last N of
     * those. */
    bool has_replay_since;
    uint64_t replay_since_ms;
} mpreg_subscribe_options;

/* ---- messages and worker functions ----------------------------------------- */

/* A published message as a subscriber receives it. Everything is borrowed
 * for the duration of the callback. */
typedef struct mpreg_message {
    const char *topic; /* NUL-terminated */
    size_t topic_len;
    const void *data; /* the payload bytes as published (not NUL-terminated) */
    size_t len;
    uint64_t subscription; /* the id mpreg_subscribe returned */
    bool replay;           /* from the node's retention, not live */
    char id[33];           /* the message id, 32 hex digits */
    /* Messages of this subscription that were dropped before this one and
     * after the previous one it received: 0 normally. The node drops
     * messages for a subscriber that does not keep up (a slow consumer,
     * docs/PROTOCOL.md 9.6) and says how many on the next message it
     * delivers; the blocking client adds the ones it dropped itself (see
     * max_queued_bytes). Nothing is dropped in silence. */
    uint64_t missed;
} mpreg_message;

typedef void (*mpreg_message_cb)(const mpreg_message *msg, void *ud);

/* A function a worker serves. It runs on the client's thread (inside
 * mpreg_poll and blocking calls, or on the loop for the async client), must
 * not block for long, and returns either MPREG_OK with *result set (taken by
 * the client), or an error code (MPREG_E_HANDLER for "the function failed")
 * with err->message (and optionally err->details, taken) saying why. args
 * is an array, kwargs a map, both borrowed for the call. */
typedef mpreg_err (*mpreg_handler_fn)(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                                      mpreg_value *result, mpreg_error *err);

typedef struct mpreg_worker_function {
    const char *name;             /* required */
    const char *function_id;      /* NULL = none */
    const char *version;          /* semver; NULL = "0.0.0" */
    const char *const *resources; /* what callers may ask for in locs */
    size_t resource_count;
    mpreg_handler_fn handler; /* required */
    void *ctx;                /* passed to handler as is */
} mpreg_worker_function;

/* ==== blocking client ======================================================= */

typedef struct mpreg_client mpreg_client;

/* Connects to url ("host:port", "[v6addr]:port", "host" for the default
 * port; an optional "tcp://" or "mpreg://" prefix is accepted) and does the
 * HELLO/WELCOME handshake. NULL on failure, with err (may be NULL) saying
 * why: MPREG_E_INVALID (bad url), MPREG_E_UNREACHABLE (resolution or
 * connection failed), MPREG_E_TIMEOUT, MPREG_E_HANDSHAKE / MPREG_E_AUTH. */
mpreg_client *mpreg_connect(const char *url, const mpreg_client_options *opts, mpreg_error *err);

/* Says GOODBYE, flushes what is queued (within a short grace period),
 * closes and frees. Subscriptions and registered functions end with the
 * connection. NULL is fine. */
void mpreg_close(mpreg_client *c);

/* Calls fun(*args, **kwargs) somewhere in the fabric and waits for the
 * result (*result, the caller's to free). args (an array) and kwargs (a
 * map) may be NULL for none; opts may be NULL. A string argument is sent as
 * is: a single call has no other commands to refer to. */
mpreg_err mpreg_call(mpreg_client *c, const char *fun, const mpreg_value *args,
                     const mpreg_value *kwargs, const mpreg_call_options *opts, mpreg_value *result,
                     mpreg_error *err);

/* Sends a request of several commands - an array of maps {name, fun, args?,
 * kwargs?, locs?, function_id?, version?, target_cluster?}, where a string
 * argument naming another command ("first", or "first.field.0") stands for
 * its result - and waits for *results: a map from the name of every command
 * whose result no other command used to that result. The commands are
 * checked here first (MPREG_E_TYPE, MPREG_E_DUPLICATE, ... with err->command
 * set), so a malformed request is never sent. timeout_ms 0 = the client's. */
mpreg_err mpreg_request(mpreg_client *c, const mpreg_value *commands, uint32_t timeout_ms,
                        mpreg_value *results, mpreg_error *err);

/* Publishes data[0..len) to topic (no wildcards). Returns once the message
 * is written to the socket: publishing is fire-and-forget, the node does
 * not acknowledge it. An invalid topic is refused here (MPREG_E_TOPIC).
 * MPREG_E_TIMEOUT means the node did not take the bytes in time; they stay
 * queued and go out with the next operation. */
mpreg_err mpreg_publish(mpreg_client *c, const char *topic, const void *data, size_t len,
                        mpreg_error *err);

/* Subscribes to messages matching any of the n patterns ("orders.*.created",
 * "logs.#"); each matching message is delivered once to cb, from
 * mpreg_poll. group may be NULL. *sub_id (may be NULL) gets the
 * subscription's id, which every message carries. */
mpreg_err mpreg_subscribe(mpreg_client *c, const char *const *patterns, size_t n, const char *group,
                          mpreg_message_cb cb, void *ud, uint64_t *sub_id, mpreg_error *err);
/* The same with a queue group and replay of retained messages (opts may be
 * NULL). Replayed messages come before live ones. */
mpreg_err mpreg_subscribe_ex(mpreg_client *c, const char *const *patterns, size_t n,
                             const mpreg_subscribe_options *opts, mpreg_message_cb cb, void *ud,
                             uint64_t *sub_id, mpreg_error *err);
/* Ends a subscription; deliveries for it still queued are discarded. */
mpreg_err mpreg_unsubscribe(mpreg_client *c, uint64_t sub_id, mpreg_error *err);

/* Registers a function with the node: from now on the fabric may route
 * calls of it to this client. Calls are served inside mpreg_poll and while
 * the client waits in any blocking call (so that a worker that calls
 * through the fabric a function it serves itself does not deadlock). The
 * definition's strings are copied. */
mpreg_err mpreg_register(mpreg_client *c, const mpreg_worker_function *def, mpreg_error *err);

/* Waits up to timeout_ms (0 = do not wait, negative = until something
 * happens) for incoming traffic, then dispatches everything that has
 * arrived: subscription messages to their callbacks, in order, and calls of
 * registered functions to their handlers. Deliveries that arrive while the
 * client waits inside another blocking call are queued for mpreg_poll
 * (callbacks never run inside mpreg_call and friends); calls of registered
 * functions are served at once. Returns the number of messages and calls
 * handled (0 on timeout), or a negative mpreg_err (-MPREG_E_CLOSED once the
 * connection is gone and nothing queued is left). Callbacks and handlers may
 * use the client (publish, call, unsubscribe, ...) but must not close it. */
int mpreg_poll(mpreg_client *c, int timeout_ms);

/* What mpreg_catalog_ex asks for. A node answers a large catalog in pages
 * that each fit in a frame; the client fetches them all. */
typedef struct mpreg_catalog_options {
    /* Only these kinds ("functions", "topics", "nodes"); NULL = all. A kind
     * the node does not know is absent from the answer. */
    const char *const *kinds;
    size_t kinds_count;
    /* At most this many entries per page; 0 = as many as fit in a frame. */
    uint32_t page_limit;
} mpreg_catalog_options;

/* The node's status, as the CONTROL_REPLY map the node sends. */
mpreg_err mpreg_status(mpreg_client *c, mpreg_value *out, mpreg_error *err);
/* The node's catalog: {"functions": [...], "topics": [...], "nodes": [...]}
 * (docs/PROTOCOL.md 13.2), every page of it put together. */
mpreg_err mpreg_catalog(mpreg_client *c, mpreg_value *out, mpreg_error *err);
mpreg_err mpreg_catalog_ex(mpreg_client *c, const mpreg_catalog_options *opts, mpreg_value *out,
                           mpreg_error *err);
/* The cluster's members as the node sees them: {"self": id, "members":
 * [{"id", "addr", "state" ("alive", "suspect", "dead", "left"),
 * "generation", "incarnation", "since_ms"}...], "stats": {...}}. */
mpreg_err mpreg_members(mpreg_client *c, mpreg_value *out, mpreg_error *err);

/* What the node said in WELCOME (borrowed; "" when it did not say). */
const char *mpreg_client_node(const mpreg_client *c);
const char *mpreg_client_cluster(const mpreg_client *c);
/* The socket, for applications that multiplex it with their own poll():
 * when it is readable, call mpreg_poll(c, 0). -1 once closed. */
int mpreg_client_fd(const mpreg_client *c);
/* Deliveries dropped because more than max_queued_bytes were waiting (each
 * is also counted in the `missed` of its subscription's next message). */
uint64_t mpreg_client_dropped(const mpreg_client *c);

/* ==== asynchronous client on a libuv loop ==================================== */

/* libuv's loop type, declared so that this header does not need uv.h. */
struct uv_loop_s;

typedef struct mpreg_async_client mpreg_async_client;

/* Callbacks. Each operation's callback runs exactly once, always from the
 * loop and never from inside the call that started it - unless that call
 * returns an error, in which case it never runs. `err` is NULL on success;
 * otherwise it says why and the other arguments are empty. Borrowed
 * arguments are valid only during the callback. */
typedef void (*mpreg_connect_cb)(mpreg_async_client *c, const mpreg_error *err, void *ud);
typedef void (*mpreg_reply_cb)(mpreg_async_client *c, const mpreg_value *result,
                               const mpreg_error *err, void *ud);
typedef void (*mpreg_subscribed_cb)(mpreg_async_client *c, uint64_t sub_id, const mpreg_error *err,
                                    void *ud);
typedef void (*mpreg_done_cb)(mpreg_async_client *c, const mpreg_error *err, void *ud);

/* Starts connecting; cb reports the outcome (after the handshake).
 * Operations may be started before that: they are sent once the handshake
 * is done, or fail with the connection. Returns NULL only for a bad url or
 * out of memory. On success or failure alike, the client must eventually be
 * released with mpreg_async_close. The process must ignore SIGPIPE (as any
 * libuv program that writes to sockets). */
mpreg_async_client *mpreg_async_connect(struct uv_loop_s *loop, const char *url,
                                        const mpreg_client_options *opts, mpreg_connect_cb cb,
                                        void *ud);

/* Called once if the connection is lost or refused after a successful
 * connect (not after mpreg_async_close). */
void mpreg_async_on_disconnect(mpreg_async_client *c, mpreg_done_cb cb, void *ud);

mpreg_err mpreg_async_call(mpreg_async_client *c, const char *fun, const mpreg_value *args,
                           const mpreg_value *kwargs, const mpreg_call_options *opts,
                           mpreg_reply_cb cb, void *ud);
mpreg_err mpreg_async_request(mpreg_async_client *c, const mpreg_value *commands,
                              uint32_t timeout_ms, mpreg_reply_cb cb, void *ud);
/* Queues the message; there is no acknowledgement. MPREG_E_BACKPRESSURE
 * when too much output is already waiting for the node. */
mpreg_err mpreg_async_publish(mpreg_async_client *c, const char *topic, const void *data,
                              size_t len);
/* on_message receives the subscription's messages from the loop, starting
 * right after done reported the subscription id; both get ud. */
mpreg_err mpreg_async_subscribe(mpreg_async_client *c, const char *const *patterns, size_t n,
                                const mpreg_subscribe_options *opts, mpreg_message_cb on_message,
                                mpreg_subscribed_cb done, void *ud);
mpreg_err mpreg_async_unsubscribe(mpreg_async_client *c, uint64_t sub_id, mpreg_done_cb done,
                                  void *ud);
/* Calls of the function run its handler on the loop. */
mpreg_err mpreg_async_register(mpreg_async_client *c, const mpreg_worker_function *def,
                               mpreg_done_cb done, void *ud);
mpreg_err mpreg_async_status(mpreg_async_client *c, mpreg_reply_cb cb, void *ud);
mpreg_err mpreg_async_catalog(mpreg_async_client *c, mpreg_reply_cb cb, void *ud);
/* All pages, put together, then cb once; opts may be NULL (copied). */
mpreg_err mpreg_async_catalog_ex(mpreg_async_client *c, const mpreg_catalog_options *opts,
                                 mpreg_reply_cb cb, void *ud);
mpreg_err mpreg_async_members(mpreg_async_client *c, mpreg_reply_cb cb, void *ud);

/* Closes the connection (after saying GOODBYE and flushing) and releases
 * the client. Operations still pending get MPREG_E_CLOSED. The memory goes
 * once the loop has run the close to its end: keep running the loop (for
 * instance until uv_run returns) before closing it. NULL is fine; calling
 * it twice is not. */
void mpreg_async_close(mpreg_async_client *c);

#ifdef __cplusplus
}
#endif
#endif
