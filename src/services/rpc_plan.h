/* rpc_plan.h - RPC requests, their dependency graph, and the RPC payloads.
 *
 * The sans-I/O heart of RPC (DESIGN.md §6 "RPC", docs/PROTOCOL.md §8). A
 * request is a set of named commands; a string argument that names another
 * command stands for that command's result. This module
 *
 *   - parses and validates requests (mp_rpc_commands_parse for a value,
 *     mp_rpc_request_parse for the RPC_REQUEST payload bytes);
 *   - turns a request into a plan: the dependency DAG, checked for self
 *     references and cycles before anything runs (mp_rpc_plan_new);
 *   - drives execution without doing any: the caller asks which commands are
 *     ready, runs them wherever it likes, in any order and in parallel, and
 *     reports each result or failure back;
 *   - builds each command's arguments with references substituted, and the
 *     response: the results of the sinks (commands no other command uses);
 *   - encodes and decodes the four RPC payloads and the one error shape.
 *
 * References. A STRING inside a command's args or kwargs, at any depth
 * (array elements and map values; map keys never), is a reference when it is
 * a command name, or a command name followed by '.' and a field path:
 *
 *     "first"              the whole result of command "first"
 *     "first.user.name"    field "user" of the result, then its field "name"
 *     "first.items.0"      field "items", then element 0 of that array
 *
 * Each segment of the path selects a map entry by key when the value at that
 * point is a map, or an array element when it is an array and the segment is
 * a canonical decimal index ("0", "17"; not "01", "+1", "-1"). A segment of a
 * map key that looks like a number still selects by key. Path segments may not
 * be empty ("first." and "first..x" are refused at plan time). Any other
 * string - "firstly", "First", "x.first" - is plain text and is passed as is.
 * Command names cannot contain '.', so the name part is unambiguous. A
 * substituted result is not scanned again: strings inside a result are data.
 *
 * Execution model (all single-threaded; the plan is a plain data structure):
 *
 *     mp_rpc_plan *plan;
 *     mp_rpc_plan_new(&req, &plan, &err);           // fails on cycles etc.
 *     while (!mp_rpc_plan_done(plan)) {
 *         n = mp_rpc_plan_ready(plan, ids, cap);    // hands out, marks running
 *         for each id: mp_rpc_plan_resolve_args(plan, id, &args, &kwargs)
 *                      ... run it (now or later) ...
 *                      mp_rpc_plan_complete(plan, id, result)  or
 *                      mp_rpc_plan_fail(plan, id, &error)
 *     }
 *     mp_rpc_plan_error(plan) ? reply with the error
 *                             : mp_rpc_plan_response(plan, &results);
 *
 * The first failure fails the whole request: from then on no command is
 * handed out, and the error (its `command` set to the failed command's name)
 * is what the client gets. Results of commands still running may still be
 * reported; they are dropped. The plan keeps every result until it is freed
 * (any later command may still name it); the sinks' results are moved out by
 * mp_rpc_plan_response. */
#ifndef MP_RPC_PLAN_H
#define MP_RPC_PLAN_H

#include "fabric/entry.h"
#include "mpreg/error.h"
#include "mpreg/value.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on a request. Names and function names share the catalog's string
 * limit (a longer function name could never be found); locs the catalog's
 * resource limit (more could never be satisfied); target_cluster the
 * envelope's cluster-id limit. */
#define MP_RPC_MAX_COMMANDS 1024
#define MP_RPC_MAX_NAME MP_ENTRY_MAX_STR /* name, fun, function_id, version, each loc */
#define MP_RPC_MAX_LOCS MP_ENTRY_MAX_RESOURCES
#define MP_RPC_MAX_CLUSTER 128 /* target_cluster, bytes (MP_MAX_NAME_LEN) */
/* args and kwargs nest at most this deep (the args array itself is depth 1)
 * after substitution, so that an RPC_INVOKE, which wraps them in one more
 * map, always stays within the wire's 32 levels. */
#define MP_RPC_MAX_ARG_DEPTH (MPREG_VALUE_DEFAULT_DEPTH - 1)
/* ... and at most this deep as a request carries them: the RPC_REQUEST
 * payload map, its commands array and the command map take 3 of the 32
 * levels, so an argument inside args can itself nest 28 levels. A deeper
 * request could not be sent or decoded; the parser says so by this limit,
 * naming the command, rather than leaving it to the decoder. */
#define MP_RPC_MAX_REQUEST_ARG_DEPTH (MPREG_VALUE_DEFAULT_DEPTH - 3)
/* Error messages are cut (at a UTF-8 boundary, with "...") beyond this. */
#define MP_RPC_MAX_MESSAGE 1024

/* ---- the error shape ------------------------------------------------------ */

/* The one error shape of the fabric ({code, name, message, command, details};
 * PROTOCOL.md §6). Every field owns its memory. An all-zero struct (or
 * MP_RPC_ERROR_INIT) is "no error". */
typedef struct mp_rpc_error {
    mpreg_err code;      /* MPREG_OK = no error */
    char *message;       /* one line for humans; NULL = mpreg_strerror(code) */
    char *command;       /* the failed command's name; NULL = not one command's fault */
    mpreg_value details; /* structured context; NIL = none */
} mp_rpc_error;

#define MP_RPC_ERROR_INIT                                                                          \
    {                                                                                              \
        MPREG_OK, NULL, NULL, {                                                                    \
            MPREG_NIL, {                                                                           \
                0                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

void mp_rpc_error_init(mp_rpc_error *e);
/* Frees the contents and leaves *e as "no error". NULL is fine. */
void mp_rpc_error_free(mp_rpc_error *e);
/* Replaces *e (freeing what it held) with code, a copy of command (may be
 * NULL) and a printf-style message; details become NIL. The message is cut
 * to MP_RPC_MAX_MESSAGE bytes and bytes that are not UTF-8 become '?', so an
 * error always encodes. Returns code, so `return mp_rpc_error_set(...)`
 * works; e may be NULL (then only the code is returned). On out-of-memory
 * the message or command stays NULL; the code is always set. */
mpreg_err mp_rpc_error_set(mp_rpc_error *e, mpreg_err code, const char *command, const char *fmt,
                           ...) __attribute__((format(printf, 4, 5)));
/* The message, or mpreg_strerror(code) when there is none. Never NULL. */
const char *mp_rpc_error_message(const mp_rpc_error *e);
/* Deep copy into *dst (overwritten, not freed). */
mpreg_err mp_rpc_error_copy(const mp_rpc_error *src, mp_rpc_error *dst);
/* Moves *src into *dst (freeing what dst held); *src is left as no error. */
void mp_rpc_error_move(mp_rpc_error *dst, mp_rpc_error *src);

/* {"code": int, "name": str, "message": str, "command"?: str, "details"?: any};
 * command is omitted when NULL, details when NIL. *out is overwritten. */
mpreg_err mp_rpc_error_to_value(const mp_rpc_error *e, mpreg_value *out);
/* The reverse, as clients read it: "code" (int 100..999) is required;
 * "message" and "command" must be strings when present, "name" is ignored
 * (it follows from the code), "details" is copied, and keys this version does
 * not know are ignored so the shape can grow. MPREG_E_TYPE / MPREG_E_RANGE /
 * MPREG_E_MISSING_FIELD otherwise. *out is overwritten (left empty on error). */
mpreg_err mp_rpc_error_from_value(const mpreg_value *v, mp_rpc_error *out);

/* ---- requests ------------------------------------------------------------- */

/* One command of a request, validated. Owns every field. */
typedef struct mp_rpc_command {
    char *name;           /* 1..255 bytes of UTF-8, no NUL, no '.', unique in the request */
    char *fun;            /* function name, 1..255 bytes */
    mpreg_value args;     /* always an ARRAY (absent on the wire = []) */
    mpreg_value kwargs;   /* always a MAP (absent = {}) */
    mp_strlist locs;      /* resources the endpoint must have, each 1..255 bytes */
    char *function_id;    /* NULL = any */
    char *version;        /* semver constraint text (checked to parse); NULL = any */
    char *target_cluster; /* NULL = wherever the fabric finds the function */
} mp_rpc_command;

typedef struct mp_rpc_request {
    mp_rpc_command *commands;
    uint32_t count;
    uint64_t timeout_ms; /* 0 = none */
} mp_rpc_request;

void mp_rpc_command_free(mp_rpc_command *c);
void mp_rpc_request_free(mp_rpc_request *r); /* leaves an empty request */

/* The command as its request value (a map of the keys that are set). */
mpreg_err mp_rpc_command_to_value(const mp_rpc_command *c, mpreg_value *out);

/* Parses and validates a list of commands (an ARRAY of MAPs), e.g. from the
 * CLI's JSON. Copies what it keeps. On error *out is empty and err (may be
 * NULL) says what and where: "command 'x': ..." or "commands[3]: ..." with
 * err->command set when the command's name is known. Codes:
 *   MPREG_E_TYPE           a field (or the list, or a command) of the wrong type
 *   MPREG_E_MISSING_FIELD  no "name" or no "fun"
 *   MPREG_E_INVALID        empty name/fun/loc, '.' in a name, NUL or bad UTF-8
 *                          in a string field, an unknown key ("kwarg")
 *   MPREG_E_DUPLICATE      two commands with one name
 *   MPREG_E_BAD_SEMVER     a version that is not a satisfiable constraint
 *   MPREG_E_TOO_LARGE      over MP_RPC_MAX_COMMANDS, a string or locs limit
 *   MPREG_E_TOO_DEEP       args or kwargs deeper than MP_RPC_MAX_REQUEST_ARG_DEPTH
 * Checks go command by command in order, so the first bad command is named.
 * References are not looked at here: that is mp_rpc_plan_new's job. */
mpreg_err mp_rpc_commands_parse(const mpreg_value *commands, mp_rpc_request *out,
                                mp_rpc_error *err);

/* The RPC_REQUEST payload: {"commands": [...], "timeout_ms"?: uint}. Decodes
 * with the default value limits (a decoding failure keeps its code; one for
 * depth names the first command whose args or kwargs are too deep, as the
 * parse would), then validates as above; unknown top-level keys are
 * MPREG_E_INVALID, a negative timeout MPREG_E_RANGE. */
mpreg_err mp_rpc_request_parse(const void *data, size_t len, mp_rpc_request *out,
                               mp_rpc_error *err);
/* Appends the RPC_REQUEST payload for r (timeout_ms omitted when 0). On error
 * out is left as it was. */
mpreg_err mp_rpc_request_encode(const mp_rpc_request *r, mpreg_bytes *out);

/* ---- the plan ------------------------------------------------------------- */

typedef struct mp_rpc_plan mp_rpc_plan;

typedef enum mp_rpc_state {
    MP_RPC_WAITING = 0, /* some dependency has not completed */
    MP_RPC_READY,       /* every dependency complete; not handed out yet */
    MP_RPC_RUNNING,     /* handed out by mp_rpc_plan_ready */
    MP_RPC_COMPLETE,    /* result recorded */
    MP_RPC_FAILED,      /* failure recorded */
} mp_rpc_state;

/* Caps on one command's arguments after substitution (0 = the value
 * decoder's default: MPREG_VALUE_DEFAULT_ITEMS / MPREG_VALUE_DEFAULT_BYTES).
 * References copy results, and a chain of commands that each pass on two
 * copies of the previous result doubles at each step: this is what keeps a
 * small request from building an enormous value. */
typedef struct mp_rpc_limits {
    size_t max_arg_items; /* array elements + map entries in args + kwargs */
    size_t max_arg_bytes; /* string, binary and key bytes in args + kwargs */
    /* What the request's results may hold at once, by mp_rpc_value_cost
     * (0 = unbounded): a command whose arguments would take the request over
     * it is failed before they are built, and a result that takes it over
     * fails its command, in both cases with MPREG_E_TOO_LARGE naming the
     * command and the budget. */
    size_t max_held_bytes;
} mp_rpc_limits;

/* What a value costs a request that holds it: its string, binary and key
 * bytes, plus 16 per element or entry (the value cells). */
uint64_t mp_rpc_value_cost(const mpreg_value *v);
/* The sum of the costs of the results the plan holds right now. */
uint64_t mp_rpc_plan_held_bytes(const mp_rpc_plan *plan);

/* Builds the plan of a request. Takes req's commands (always: on error too;
 * req is left empty but for timeout_ms). Finds every reference, refuses a
 * path with an empty segment (MPREG_E_INVALID), a command that refers to
 * itself and any cycle (MPREG_E_CYCLE: the message reads "cycle: a -> b -> a",
 * where "a -> b" means a uses b's result, starting at the cycle's command
 * that comes first in the request; err->command is that command and
 * err->details is {"cycle": ["a", "b", "a"]}). */
mpreg_err mp_rpc_plan_new(mp_rpc_request *req, mp_rpc_plan **out, mp_rpc_error *err);
/* mp_rpc_commands_parse, then mp_rpc_plan_new. */
mpreg_err mp_rpc_plan_from_value(const mpreg_value *commands, mp_rpc_plan **out, mp_rpc_error *err);
void mp_rpc_plan_free(mp_rpc_plan *plan); /* NULL is fine */

void mp_rpc_plan_set_limits(mp_rpc_plan *plan, const mp_rpc_limits *limits);

/* Hands out up to cap commands whose dependencies have all completed, marking
 * them RUNNING, and returns how many it wrote to out_ids. Each command is
 * handed out once. Order: commands without dependencies in request order,
 * then others in the order they became ready. 0 once the request failed. */
uint32_t mp_rpc_plan_ready(mp_rpc_plan *plan, uint32_t *out_ids, uint32_t cap);
/* How many commands are ready and not yet handed out. */
uint32_t mp_rpc_plan_ready_count(const mp_rpc_plan *plan);

/* Builds a running command's arguments: copies of args and kwargs with every
 * reference replaced by a copy of the (field of the) result it names. Both
 * outputs are overwritten (NIL on error). A field that is not there fails
 * the request with MPREG_E_INVALID ("command 'x': reference 'a.b.c': result
 * of 'a' has no field 'b'", details {"reference": "a.b.c", "field": "b"});
 * arguments over the limits with MPREG_E_TOO_LARGE or MPREG_E_TOO_DEEP; out
 * of memory with MPREG_E_NOMEM; in each case the command is failed as by
 * mp_rpc_plan_fail and the code returned. MPREG_E_INVALID without failing
 * anything when id is not a running command (a caller bug). */
mpreg_err mp_rpc_plan_resolve_args(mp_rpc_plan *plan, uint32_t id, mpreg_value *args_out,
                                   mpreg_value *kwargs_out);

/* What an RPC_INVOKE for the running command id carries: its fields and the
 * resolved arguments. Fails like mp_rpc_plan_resolve_args. */
typedef struct mp_rpc_invoke mp_rpc_invoke;
mpreg_err mp_rpc_plan_invoke(mp_rpc_plan *plan, uint32_t id, mp_rpc_invoke *out);

/* Records the result of running command id; takes result (always). Commands
 * waiting only on it become ready. MPREG_E_INVALID when id is not running.
 * After the request failed the result is accepted and dropped. */
mpreg_err mp_rpc_plan_complete(mp_rpc_plan *plan, uint32_t id, mpreg_value result);
/* Records that running command id failed; takes error's contents (always;
 * *error is left empty; NULL means a bare MPREG_E_INTERNAL). The first
 * failure becomes the request's error, with `command` set to id's name (and
 * MPREG_E_INTERNAL if its code was MPREG_OK); later ones are dropped.
 * MPREG_E_INVALID when id is not running. */
mpreg_err mp_rpc_plan_fail(mp_rpc_plan *plan, uint32_t id, mp_rpc_error *error);
/* mp_rpc_plan_fail with a fresh error of code and message. */
mpreg_err mp_rpc_plan_fail_code(mp_rpc_plan *plan, uint32_t id, mpreg_err code,
                                const char *message);

/* True when every command has completed, or the request failed and no
 * command is still running: nothing more will happen. */
bool mp_rpc_plan_done(const mp_rpc_plan *plan);
/* The request's error, or NULL while it has not failed. Borrowed. */
const mp_rpc_error *mp_rpc_plan_error(const mp_rpc_plan *plan);

/* The response once every command completed: a map from each sink's name to
 * its result, in request order. A command counts as consumed when any other
 * command refers to it, whole or through a field path. The results are
 * moved into *out, so this works once; MPREG_E_INVALID before every command
 * completed, after a failure, or the second time. */
mpreg_err mp_rpc_plan_response(mp_rpc_plan *plan, mpreg_value *out);

/* ---- inspection (ids are 0..count-1, in request order) */
uint32_t mp_rpc_plan_count(const mp_rpc_plan *plan);
const mp_rpc_command *mp_rpc_plan_command(const mp_rpc_plan *plan, uint32_t id);
mp_rpc_state mp_rpc_plan_state(const mp_rpc_plan *plan, uint32_t id);
/* The id of the command called name, or false. */
bool mp_rpc_plan_find(const mp_rpc_plan *plan, const char *name, uint32_t *id);
/* The distinct commands id uses, in order of first reference (borrowed). */
const uint32_t *mp_rpc_plan_deps(const mp_rpc_plan *plan, uint32_t id, uint32_t *count);
/* Level 0: no dependencies; otherwise 1 + the highest level among them.
 * Commands of one level never depend on each other. */
uint32_t mp_rpc_plan_level(const mp_rpc_plan *plan, uint32_t id);
uint32_t mp_rpc_plan_level_count(const mp_rpc_plan *plan);
/* True when no other command uses id's result. */
bool mp_rpc_plan_is_sink(const mp_rpc_plan *plan, uint32_t id);

/* ---- payloads ------------------------------------------------------------- */

/* RPC_INVOKE: one command sent to the node or worker that runs it. */
struct mp_rpc_invoke {
    char *command;      /* the command's name, for error messages */
    char *fun;          /* 1..255 bytes */
    mpreg_value args;   /* ARRAY, references already substituted */
    mpreg_value kwargs; /* MAP */
    mp_strlist locs;
    char *function_id; /* NULL = any */
    char *version;     /* NULL = any */
};

void mp_rpc_invoke_free(mp_rpc_invoke *inv);
/* {"command", "fun", "args", "kwargs", "function_id"?, "version"?, "locs"?}
 * (locs omitted when empty). MPREG_E_TOO_DEEP when args or kwargs nest too
 * deep for the wire. On error out is left as it was. */
mpreg_err mp_rpc_invoke_encode(const mp_rpc_invoke *inv, mpreg_bytes *out);
/* Validates like a request's command ("command" in place of "name", no
 * target_cluster; args and kwargs absent = empty); on error *out is empty. */
mpreg_err mp_rpc_invoke_decode(const void *data, size_t len, mp_rpc_invoke *out, mp_rpc_error *err);

/* The outcome carried by RPC_RESULT (one command) and RPC_REPLY (a request):
 * a value, or an error. */
typedef struct mp_rpc_outcome {
    bool ok;
    mpreg_value value;  /* ok: the result (RPC_RESULT) or the results map (RPC_REPLY) */
    mp_rpc_error error; /* !ok */
} mp_rpc_outcome;

void mp_rpc_outcome_free(mp_rpc_outcome *o);

/* RPC_RESULT: {"result": value} or {"error": shape}. */
mpreg_err mp_rpc_result_encode(const mp_rpc_outcome *o, mpreg_bytes *out);
mpreg_err mp_rpc_result_decode(const void *data, size_t len, mp_rpc_outcome *out,
                               mp_rpc_error *err);

/* RPC_REPLY: {"results": {name: value, ...}} or {"error": shape}. */
mpreg_err mp_rpc_reply_encode_ok(const mpreg_value *results, mpreg_bytes *out);
mpreg_err mp_rpc_reply_encode_error(const mp_rpc_error *e, mpreg_bytes *out);
mpreg_err mp_rpc_reply_decode(const void *data, size_t len, mp_rpc_outcome *out, mp_rpc_error *err);

#endif
