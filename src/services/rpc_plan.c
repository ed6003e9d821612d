/* rpc_plan.c - request validation, the dependency plan, and RPC payloads.
 *
 * Three parts, in file order: the error shape; parsing and encoding of the
 * payloads (request, invoke, result, reply); the plan itself.
 *
 * Encoders never build an owned copy of what they send: they lay a borrowed
 * "view" over the caller's data (an mpreg_value map whose entries point at the
 * caller's strings and values) and hand it to mpreg_value_encode, so that
 * encoding an invoke with a large argument costs no copy of the argument, and
 * the value encoder's checks (UTF-8, depth) apply to every payload alike. A
 * view is never freed; its mpreg_values only borrow. */
#include "services/rpc_plan.h"

#include "core/map.h"
#include "core/mpread.h"
#include "core/str.h"
#include "fabric/semver.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== small helpers ======================================================== */

/* A borrowed string value: never freed, never written through. */
static mpreg_value mp_view_strn(const char *s, size_t len) {
    mpreg_value v = {.type = MPREG_STR};
    v.u.str.ptr = (char *)s;
    v.u.str.len = len;
    return v;
}

static mpreg_value mp_view_str(const char *s) {
    return mp_view_strn(s, strlen(s));
}

static mpreg_value mp_view_map(mpreg_kv *items, size_t len) {
    mpreg_value v = {.type = MPREG_MAP};
    v.u.map.items = items;
    v.u.map.len = len;
    v.u.map.cap = len;
    return v;
}

static bool mp_key_is(const mpreg_kv *kv, const char *name) {
    size_t n = strlen(name);
    return kv->key.u.str.len == n && memcmp(kv->key.u.str.ptr, name, n) == 0;
}

/* Encodes a borrowed view, appending to out; out is untouched on error. */
static mpreg_err mp_encode_view(const mpreg_value *view, mpreg_bytes *out) {
    return mpreg_value_encode(view, out);
}

/* Bytes of a UTF-8 sequence announced by its lead byte; 0 if it cannot lead. */
static size_t mp_utf8_seq_len(unsigned char c) {
    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        return 4;
    }
    return 0;
}

/* Replaces every byte that is not part of a well-formed UTF-8 sequence with
 * '?': messages quote what clients sent, and an error must always encode. */
static void mp_utf8_scrub(char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t n = mp_utf8_seq_len((unsigned char)s[i]);
        if (n == 0 || n > len - i || !mpreg_utf8_valid(s + i, n)) {
            s[i++] = '?';
        } else {
            i += n;
        }
    }
}

/* The largest cut <= max that does not split a UTF-8 sequence. */
static size_t mp_utf8_cut(const char *s, size_t len, size_t max) {
    if (len <= max) {
        return len;
    }
    size_t cut = max;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) {
        cut--;
    }
    return cut;
}

/* A user-supplied string shortened for quoting inside a message: at most
 * MP_QUOTE_MAX bytes, NUL bytes shown as '?', "..." when cut. */
#define MP_QUOTE_MAX 64
typedef struct mp_quote {
    char text[MP_QUOTE_MAX + 4];
} mp_quote;

static const char *mp_quote_str(mp_quote *q, const char *s, size_t len) {
    size_t n = mp_utf8_cut(s, len, MP_QUOTE_MAX);
    for (size_t i = 0; i < n; i++) {
        q->text[i] = s[i] ? s[i] : '?';
    }
    if (n < len) {
        memcpy(q->text + n, "...", 3);
        n += 3;
    }
    q->text[n] = '\0';
    return q->text;
}

/* ==== the error shape ====================================================== */

void mp_rpc_error_init(mp_rpc_error *e) {
    *e = (mp_rpc_error)MP_RPC_ERROR_INIT;
}

void mp_rpc_error_free(mp_rpc_error *e) {
    if (!e) {
        return;
    }
    free(e->message);
    free(e->command);
    mpreg_value_free(&e->details);
    mp_rpc_error_init(e);
}

/* Formats a message into a fresh heap string, cut and scrubbed. */
static char *mp_format_message(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

static char *mp_format_message(const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        return NULL;
    }
    char *msg = malloc((size_t)n + 1);
    if (!msg) {
        return NULL;
    }
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    size_t len = (size_t)n;
    if (len > MP_RPC_MAX_MESSAGE) {
        len = mp_utf8_cut(msg, len, MP_RPC_MAX_MESSAGE - 3);
        memcpy(msg + len, "...", 3);
        len += 3;
        msg[len] = '\0';
    }
    mp_utf8_scrub(msg, len);
    return msg;
}

mpreg_err mp_rpc_error_set(mp_rpc_error *e, mpreg_err code, const char *command, const char *fmt,
                           ...) {
    if (!e) {
        return code;
    }
    mp_rpc_error_free(e);
    e->code = code;
    if (command) {
        e->command = mp_strdup(command);
    }
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        e->message = mp_format_message(fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *mp_rpc_error_message(const mp_rpc_error *e) {
    return e->message ? e->message : mpreg_strerror(e->code);
}

mpreg_err mp_rpc_error_copy(const mp_rpc_error *src, mp_rpc_error *dst) {
    mp_rpc_error_init(dst);
    dst->code = src->code;
    if ((src->message && !(dst->message = mp_strdup(src->message))) ||
        (src->command && !(dst->command = mp_strdup(src->command))) ||
        mpreg_value_clone(&src->details, &dst->details) != MPREG_OK) {
        mp_rpc_error_free(dst);
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

void mp_rpc_error_move(mp_rpc_error *dst, mp_rpc_error *src) {
    mp_rpc_error_free(dst);
    *dst = *src;
    mp_rpc_error_init(src);
}

/* The error as a borrowed map. */
typedef struct mp_error_view {
    mpreg_kv kv[5];
    mpreg_value map;
} mp_error_view;

static void mp_error_view_init(mp_error_view *v, const mp_rpc_error *e) {
    size_t n = 0;
    v->kv[n++] = (mpreg_kv){mp_view_str("code"), mpreg_int((int64_t)e->code)};
    v->kv[n++] = (mpreg_kv){mp_view_str("name"), mp_view_str(mpreg_err_name(e->code))};
    v->kv[n++] = (mpreg_kv){mp_view_str("message"), mp_view_str(mp_rpc_error_message(e))};
    if (e->command) {
        v->kv[n++] = (mpreg_kv){mp_view_str("command"), mp_view_str(e->command)};
    }
    if (e->details.type != MPREG_NIL) {
        v->kv[n++] = (mpreg_kv){mp_view_str("details"), e->details};
    }
    v->map = mp_view_map(v->kv, n);
}

mpreg_err mp_rpc_error_to_value(const mp_rpc_error *e, mpreg_value *out) {
    mp_error_view view;
    mp_error_view_init(&view, e);
    return mpreg_value_clone(&view.map, out);
}

/* Copies a str value (up to an embedded NUL, if any) into a C string. */
static mpreg_err mp_copy_str(const mpreg_value *v, char **out) {
    if (v->type != MPREG_STR) {
        return MPREG_E_TYPE;
    }
    *out = mp_strndup(v->u.str.ptr, v->u.str.len);
    return *out ? MPREG_OK : MPREG_E_NOMEM;
}

static mpreg_err mp_error_field(const mpreg_kv *kv, mp_rpc_error *out, bool *have_code) {
    const mpreg_value *v = &kv->val;
    if (mp_key_is(kv, "code")) {
        if (v->type != MPREG_INT) {
            return MPREG_E_TYPE;
        }
        if (v->u.i < 100 || v->u.i > 999) {
            return MPREG_E_RANGE;
        }
        out->code = (mpreg_err)v->u.i;
        *have_code = true;
        return MPREG_OK;
    }
    if (mp_key_is(kv, "message")) {
        free(out->message);
        out->message = NULL;
        return mp_copy_str(v, &out->message);
    }
    if (mp_key_is(kv, "command")) {
        free(out->command);
        out->command = NULL;
        return mp_copy_str(v, &out->command);
    }
    if (mp_key_is(kv, "details")) {
        mpreg_value_free(&out->details);
        return mpreg_value_clone(v, &out->details);
    }
    return MPREG_OK; /* "name" and keys of later versions */
}

mpreg_err mp_rpc_error_from_value(const mpreg_value *v, mp_rpc_error *out) {
    mp_rpc_error_init(out);
    if (v->type != MPREG_MAP) {
        return MPREG_E_TYPE;
    }
    bool have_code = false;
    mpreg_err err = MPREG_OK;
    for (size_t i = 0; i < v->u.map.len && !err; i++) {
        err = mp_error_field(&v->u.map.items[i], out, &have_code);
    }
    if (!err && !have_code) {
        err = MPREG_E_MISSING_FIELD;
    }
    if (err) {
        mp_rpc_error_free(out);
    }
    return err;
}

/* ==== commands: free, view, parse ========================================= */

void mp_rpc_command_free(mp_rpc_command *c) {
    if (!c) {
        return;
    }
    free(c->name);
    free(c->fun);
    mpreg_value_free(&c->args);
    mpreg_value_free(&c->kwargs);
    mp_strlist_free(&c->locs);
    free(c->function_id);
    free(c->version);
    free(c->target_cluster);
    memset(c, 0, sizeof *c);
}

void mp_rpc_request_free(mp_rpc_request *r) {
    if (!r) {
        return;
    }
    for (uint32_t i = 0; i < r->count; i++) {
        mp_rpc_command_free(&r->commands[i]);
    }
    free(r->commands);
    memset(r, 0, sizeof *r);
}

void mp_rpc_invoke_free(mp_rpc_invoke *inv) {
    if (!inv) {
        return;
    }
    free(inv->command);
    free(inv->fun);
    mpreg_value_free(&inv->args);
    mpreg_value_free(&inv->kwargs);
    mp_strlist_free(&inv->locs);
    free(inv->function_id);
    free(inv->version);
    memset(inv, 0, sizeof *inv);
}

/* The fields a command and an invoke share; the two differ only in the key
 * that carries the name and in target_cluster, which only a request has. */
typedef struct mp_call_fields {
    const char *name_key; /* "name" (request) or "command" (invoke) */
    const char *name;
    const char *fun;
    const mpreg_value *args;
    const mpreg_value *kwargs;
    const mp_strlist *locs;
    const char *function_id;
    const char *version;
    const char *target_cluster;
} mp_call_fields;

static mp_call_fields mp_command_fields(const mp_rpc_command *c) {
    return (mp_call_fields){"name",   c->name,        c->fun,     &c->args,         &c->kwargs,
                            &c->locs, c->function_id, c->version, c->target_cluster};
}

static mp_call_fields mp_invoke_fields(const mp_rpc_invoke *inv) {
    return (mp_call_fields){"command",  inv->command,     inv->fun,     &inv->args, &inv->kwargs,
                            &inv->locs, inv->function_id, inv->version, NULL};
}

typedef struct mp_call_view {
    mpreg_kv kv[8];
    mpreg_value locs[MP_RPC_MAX_LOCS];
    mpreg_value map;
} mp_call_view;

/* Lays a map over f. Absent (NIL) args and kwargs show as [] and {}, so a
 * zero-initialised struct encodes as what the parser gives back. */
static mpreg_err mp_call_view_init(mp_call_view *v, const mp_call_fields *f) {
    if (!f->name || !f->fun || f->locs->count > MP_RPC_MAX_LOCS) {
        return f->name && f->fun ? MPREG_E_TOO_LARGE : MPREG_E_INVALID;
    }
    size_t n = 0;
    v->kv[n++] = (mpreg_kv){mp_view_str(f->name_key), mp_view_str(f->name)};
    v->kv[n++] = (mpreg_kv){mp_view_str("fun"), mp_view_str(f->fun)};
    v->kv[n++] =
        (mpreg_kv){mp_view_str("args"), f->args->type == MPREG_NIL ? mpreg_array() : *f->args};
    v->kv[n++] =
        (mpreg_kv){mp_view_str("kwargs"), f->kwargs->type == MPREG_NIL ? mpreg_map() : *f->kwargs};
    if (f->locs->count > 0) {
        for (uint32_t i = 0; i < f->locs->count; i++) {
            v->locs[i] = mp_view_str(f->locs->items[i]);
        }
        mpreg_value arr = {.type = MPREG_ARRAY};
        arr.u.arr.items = v->locs;
        arr.u.arr.len = arr.u.arr.cap = f->locs->count;
        v->kv[n++] = (mpreg_kv){mp_view_str("locs"), arr};
    }
    if (f->function_id) {
        v->kv[n++] = (mpreg_kv){mp_view_str("function_id"), mp_view_str(f->function_id)};
    }
    if (f->version) {
        v->kv[n++] = (mpreg_kv){mp_view_str("version"), mp_view_str(f->version)};
    }
    if (f->target_cluster) {
        v->kv[n++] = (mpreg_kv){mp_view_str("target_cluster"), mp_view_str(f->target_cluster)};
    }
    v->map = mp_view_map(v->kv, n);
    return MPREG_OK;
}

mpreg_err mp_rpc_command_to_value(const mp_rpc_command *c, mpreg_value *out) {
    mp_call_view view;
    mp_call_fields f = mp_command_fields(c);
    *out = mpreg_nil();
    mpreg_err err = mp_call_view_init(&view, &f);
    return err ? err : mpreg_value_clone(&view.map, out);
}

/* --- parsing --------------------------------------------------------------- */

typedef enum mp_call_mode {
    MP_CALL_REQUEST, /* a command of a request: "name", target_cluster allowed */
    MP_CALL_INVOKE,  /* an RPC_INVOKE payload: "command", no target_cluster */
} mp_call_mode;

/* Where a parse is, so that errors can say so. */
typedef struct mp_parse_ctx {
    mp_rpc_error *err;
    mp_call_mode mode;
    uint32_t index;   /* position in the command list */
    const char *name; /* the command's name once it has been read */
    bool take;        /* move args/kwargs out of the source instead of copying */
} mp_parse_ctx;

static mpreg_err mp_parse_fail(mp_parse_ctx *c, mpreg_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static mpreg_err mp_parse_fail(mp_parse_ctx *c, mpreg_err code, const char *fmt, ...) {
    char detail[MP_RPC_MAX_MESSAGE + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (c->name) {
        return mp_rpc_error_set(c->err, code, c->name, "command '%s': %s", c->name, detail);
    }
    if (c->mode == MP_CALL_INVOKE) {
        return mp_rpc_error_set(c->err, code, NULL, "invoke: %s", detail);
    }
    return mp_rpc_error_set(c->err, code, NULL, "commands[%u]: %s", c->index, detail);
}

/* Checks a string field: type, length, emptiness, NUL bytes, UTF-8. The
 * strings become C strings and message text, hence no NUL. */
static mpreg_err mp_check_string(mp_parse_ctx *c, const char *field, const mpreg_value *v,
                                 size_t max, bool allow_empty) {
    if (v->type != MPREG_STR) {
        return mp_parse_fail(c, MPREG_E_TYPE, "'%s' must be a str, got %s", field,
                             mpreg_type_name(v->type));
    }
    size_t len = v->u.str.len;
    if (len > max) {
        return mp_parse_fail(c, MPREG_E_TOO_LARGE, "'%s' is longer than %zu bytes", field, max);
    }
    if (len == 0 && !allow_empty) {
        return mp_parse_fail(c, MPREG_E_INVALID, "'%s' is empty", field);
    }
    if (memchr(v->u.str.ptr, '\0', len)) {
        return mp_parse_fail(c, MPREG_E_INVALID, "'%s' contains a NUL byte", field);
    }
    if (!mpreg_utf8_valid(v->u.str.ptr, len)) {
        return mp_parse_fail(c, MPREG_E_INVALID, "'%s' is not valid UTF-8", field);
    }
    return MPREG_OK;
}

static mpreg_err mp_parse_string(mp_parse_ctx *c, const char *field, const mpreg_value *v,
                                 size_t max, bool allow_empty, char **out) {
    if (*out) {
        return mp_parse_fail(c, MPREG_E_INVALID, "'%s' given twice", field);
    }
    mpreg_err err = mp_check_string(c, field, v, max, allow_empty);
    if (err) {
        return err;
    }
    *out = mp_strndup(v->u.str.ptr, v->u.str.len);
    return *out ? MPREG_OK : mp_parse_fail(c, MPREG_E_NOMEM, "out of memory");
}

/* True when v nests at most limit containers deep (a scalar is depth 0).
 * Stops descending at the limit, so the recursion is bounded by it. */
static bool mp_depth_within(const mpreg_value *v, uint32_t limit) {
    if (v->type == MPREG_ARRAY) {
        if (limit == 0) {
            return false;
        }
        for (size_t i = 0; i < v->u.arr.len; i++) {
            if (!mp_depth_within(&v->u.arr.items[i], limit - 1)) {
                return false;
            }
        }
    } else if (v->type == MPREG_MAP) {
        if (limit == 0) {
            return false;
        }
        for (size_t i = 0; i < v->u.map.len; i++) {
            if (!mp_depth_within(&v->u.map.items[i].val, limit - 1)) {
                return false;
            }
        }
    }
    return true;
}

/* The one wording of a too-deep args or kwargs, for the parser and for a
 * payload that did not decode (mp_blame_deep). */
typedef struct mp_deep_text {
    char text[160];
} mp_deep_text;

static const char *mp_too_deep_text(mp_deep_text *t, const char *field, uint32_t limit) {
    snprintf(t->text, sizeof t->text,
             "'%s' nests deeper than %u levels (the %s itself is level 1, so each value "
             "in it at most %u)",
             field, (unsigned)limit, strcmp(field, "args") == 0 ? "array" : "map",
             (unsigned)limit - 1);
    return t->text;
}

/* args or kwargs: checks type and depth, then moves or copies it. */
static mpreg_err mp_parse_container(mp_parse_ctx *c, const char *field, mpreg_value *v,
                                    mpreg_type want, mpreg_value *out) {
    if (v->type != want) {
        return mp_parse_fail(c, MPREG_E_TYPE, "'%s' must be a%s %s, got %s", field,
                             want == MPREG_ARRAY ? "n" : "", mpreg_type_name(want),
                             mpreg_type_name(v->type));
    }
    /* A request's arguments sit 3 levels into their payload, an invoke's 1. */
    uint32_t limit =
        c->mode == MP_CALL_REQUEST ? MP_RPC_MAX_REQUEST_ARG_DEPTH : MP_RPC_MAX_ARG_DEPTH;
    if (!mp_depth_within(v, limit)) {
        mp_deep_text t;
        return mp_parse_fail(c, MPREG_E_TOO_DEEP, "%s", mp_too_deep_text(&t, field, limit));
    }
    if (c->take) {
        *out = *v;
        *v = mpreg_nil();
        return MPREG_OK;
    }
    if (mpreg_value_clone(v, out) != MPREG_OK) {
        return mp_parse_fail(c, MPREG_E_NOMEM, "out of memory");
    }
    return MPREG_OK;
}

static mpreg_err mp_parse_locs(mp_parse_ctx *c, const mpreg_value *v, mp_strlist *out) {
    if (v->type != MPREG_ARRAY) {
        return mp_parse_fail(c, MPREG_E_TYPE, "'locs' must be an array, got %s",
                             mpreg_type_name(v->type));
    }
    if (v->u.arr.len > MP_RPC_MAX_LOCS) {
        return mp_parse_fail(c, MPREG_E_TOO_LARGE, "'locs' has %zu items, more than %d",
                             v->u.arr.len, MP_RPC_MAX_LOCS);
    }
    for (size_t i = 0; i < v->u.arr.len; i++) {
        char field[32];
        snprintf(field, sizeof field, "locs[%zu]", i);
        const mpreg_value *item = &v->u.arr.items[i];
        mpreg_err err = mp_check_string(c, field, item, MP_RPC_MAX_NAME, false);
        if (err) {
            return err;
        }
        if (mp_strlist_push(out, item->u.str.ptr) != MPREG_OK) {
            return mp_parse_fail(c, MPREG_E_NOMEM, "out of memory");
        }
    }
    return MPREG_OK;
}

static mpreg_err mp_parse_version(mp_parse_ctx *c, const mpreg_value *v, char **out) {
    mpreg_err err = mp_parse_string(c, "version", v, MP_RPC_MAX_NAME, true, out);
    if (err) {
        return err;
    }
    mp_semver_constraint constraint;
    const char *why = NULL;
    if (mp_semver_constraint_parse(*out, strlen(*out), &constraint, &why) != MPREG_OK) {
        return mp_parse_fail(c, MPREG_E_BAD_SEMVER, "bad version constraint '%s': %s", *out,
                             why ? why : "does not parse");
    }
    return MPREG_OK;
}

static const char *mp_known_keys(mp_call_mode mode) {
    return mode == MP_CALL_REQUEST
               ? "name, fun, args, kwargs, locs, function_id, version, target_cluster"
               : "command, fun, args, kwargs, locs, function_id, version";
}

/* The keys of a command map other than its name, as bits of a "seen" set:
 * mpreg maps built through the API have unique keys, but the struct is
 * public, and a repeated key must not leak or silently win. */
typedef enum mp_call_key {
    MP_KEY_FUN = 1u << 0,
    MP_KEY_ARGS = 1u << 1,
    MP_KEY_KWARGS = 1u << 2,
    MP_KEY_LOCS = 1u << 3,
    MP_KEY_FUNCTION_ID = 1u << 4,
    MP_KEY_VERSION = 1u << 5,
    MP_KEY_TARGET_CLUSTER = 1u << 6,
} mp_call_key;

static mp_call_key mp_call_key_of(const mpreg_kv *kv, mp_call_mode mode) {
    static const struct {
        const char *name;
        mp_call_key key;
    } keys[] = {
        {"fun", MP_KEY_FUN},
        {"args", MP_KEY_ARGS},
        {"kwargs", MP_KEY_KWARGS},
        {"locs", MP_KEY_LOCS},
        {"function_id", MP_KEY_FUNCTION_ID},
        {"version", MP_KEY_VERSION},
        {"target_cluster", MP_KEY_TARGET_CLUSTER},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (mp_key_is(kv, keys[i].name)) {
            bool allowed = keys[i].key != MP_KEY_TARGET_CLUSTER || mode == MP_CALL_REQUEST;
            return allowed ? keys[i].key : 0;
        }
    }
    return 0;
}

/* One key of a command map other than its name. */
static mpreg_err mp_parse_field(mp_parse_ctx *c, mpreg_kv *kv, mp_rpc_command *out,
                                unsigned *seen) {
    mp_call_key key = mp_call_key_of(kv, c->mode);
    mp_quote q;
    const char *shown = mp_quote_str(&q, kv->key.u.str.ptr, kv->key.u.str.len);
    if (key == 0) {
        return mp_parse_fail(c, MPREG_E_INVALID, "unknown key '%s' (known: %s)", shown,
                             mp_known_keys(c->mode));
    }
    if (*seen & key) {
        return mp_parse_fail(c, MPREG_E_INVALID, "'%s' given twice", shown);
    }
    *seen |= key;
    mpreg_value *v = &kv->val;
    switch (key) {
    case MP_KEY_FUN:
        return mp_parse_string(c, "fun", v, MP_RPC_MAX_NAME, false, &out->fun);
    case MP_KEY_ARGS:
        return mp_parse_container(c, "args", v, MPREG_ARRAY, &out->args);
    case MP_KEY_KWARGS:
        return mp_parse_container(c, "kwargs", v, MPREG_MAP, &out->kwargs);
    case MP_KEY_LOCS:
        return mp_parse_locs(c, v, &out->locs);
    case MP_KEY_FUNCTION_ID:
        return mp_parse_string(c, "function_id", v, MP_RPC_MAX_NAME, true, &out->function_id);
    case MP_KEY_VERSION:
        return mp_parse_version(c, v, &out->version);
    case MP_KEY_TARGET_CLUSTER:
        return mp_parse_string(c, "target_cluster", v, MP_RPC_MAX_CLUSTER, true,
                               &out->target_cluster);
    }
    return MPREG_E_INTERNAL;
}

/* The name first, so that every later error can name the command. */
static mpreg_err mp_parse_name(mp_parse_ctx *c, const mpreg_value *map, mp_rpc_command *out) {
    const char *key = c->mode == MP_CALL_REQUEST ? "name" : "command";
    const mpreg_value *v = mpreg_map_get(map, key);
    if (!v) {
        return mp_parse_fail(c, MPREG_E_MISSING_FIELD, "missing '%s'", key);
    }
    mpreg_err err = mp_parse_string(c, key, v, MP_RPC_MAX_NAME, false, &out->name);
    if (err) {
        return err;
    }
    if (strchr(out->name, '.')) {
        return mp_parse_fail(c, MPREG_E_INVALID,
                             "name '%s' contains '.', which would make references to it "
                             "ambiguous",
                             out->name);
    }
    c->name = out->name;
    return MPREG_OK;
}

/* Parses one command (or invoke) map into *out; on error *out is freed. */
static mpreg_err mp_parse_call(mp_parse_ctx *c, mpreg_value *map, mp_rpc_command *out) {
    memset(out, 0, sizeof *out);
    c->name = NULL;
    if (map->type != MPREG_MAP) {
        return mp_parse_fail(c, MPREG_E_TYPE, "expected a map, got %s", mpreg_type_name(map->type));
    }
    mpreg_err err = mp_parse_name(c, map, out);
    unsigned seen = 0;
    bool named = false;
    const char *name_key = c->mode == MP_CALL_REQUEST ? "name" : "command";
    for (size_t i = 0; i < map->u.map.len && !err; i++) {
        mpreg_kv *kv = &map->u.map.items[i];
        if (!mp_key_is(kv, name_key)) {
            err = mp_parse_field(c, kv, out, &seen);
        } else if (named) {
            err = mp_parse_fail(c, MPREG_E_INVALID, "'%s' given twice", name_key);
        }
        named = named || mp_key_is(kv, name_key);
    }
    if (!err && !out->fun) {
        err = mp_parse_fail(c, MPREG_E_MISSING_FIELD, "missing 'fun'");
    }
    if (!err) {
        if (!(seen & MP_KEY_ARGS)) {
            out->args = mpreg_array();
        }
        if (!(seen & MP_KEY_KWARGS)) {
            out->kwargs = mpreg_map();
        }
    }
    c->name = NULL; /* it points into *out, which may be freed below */
    if (err) {
        mp_rpc_command_free(out);
    }
    return err;
}

/* The list of commands. When take is true the list's args and kwargs are
 * moved out of it (the list is the parser's own decoded payload). */
static mpreg_err mp_parse_commands(mpreg_value *list, bool take, mp_rpc_request *out,
                                   mp_rpc_error *err) {
    memset(out, 0, sizeof *out);
    if (list->type != MPREG_ARRAY) {
        return mp_rpc_error_set(err, MPREG_E_TYPE, NULL, "commands must be an array, got %s",
                                mpreg_type_name(list->type));
    }
    size_t n = list->u.arr.len;
    if (n > MP_RPC_MAX_COMMANDS) {
        return mp_rpc_error_set(err, MPREG_E_TOO_LARGE, NULL,
                                "request has %zu commands, more than the limit of %d", n,
                                MP_RPC_MAX_COMMANDS);
    }
    if (n == 0) {
        return MPREG_OK;
    }
    out->commands = calloc(n, sizeof *out->commands);
    if (!out->commands) {
        return mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
    }
    mp_map names = MP_MAP_INIT;
    mp_parse_ctx c = {.err = err, .mode = MP_CALL_REQUEST, .take = take};
    mpreg_err rc = MPREG_OK;
    for (uint32_t i = 0; i < n && !rc; i++) {
        c.index = i;
        rc = mp_parse_call(&c, &list->u.arr.items[i], &out->commands[i]);
        if (rc) {
            break;
        }
        out->count = i + 1;
        const char *name = out->commands[i].name;
        void *prev = mp_map_get(&names, name, strlen(name));
        if (prev) {
            rc = mp_rpc_error_set(err, MPREG_E_DUPLICATE, name,
                                  "command '%s' appears twice (commands[%u] and commands[%u])",
                                  name, (unsigned)((uintptr_t)prev - 1), i);
        } else if (mp_map_put(&names, name, strlen(name), (void *)(uintptr_t)(i + 1), NULL)) {
            rc = mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
        }
    }
    mp_map_free(&names, NULL);
    if (rc) {
        mp_rpc_request_free(out);
    }
    return rc;
}

mpreg_err mp_rpc_commands_parse(const mpreg_value *commands, mp_rpc_request *out,
                                mp_rpc_error *err) {
    /* take = false: the list is only read. */
    return mp_parse_commands((mpreg_value *)commands, false, out, err);
}

/* Decodes a whole payload into a value that must be a map. */
static mpreg_err mp_decode_map(const void *data, size_t len, const char *what, mpreg_value *out,
                               mp_rpc_error *err) {
    mpreg_err rc = mpreg_value_decode(data, len, NULL, out);
    if (rc) {
        return mp_rpc_error_set(err, rc, NULL, "%s: %s", what, mpreg_strerror(rc));
    }
    if (out->type != MPREG_MAP) {
        rc = mp_rpc_error_set(err, MPREG_E_TYPE, NULL, "%s: expected a map, got %s", what,
                              mpreg_type_name(out->type));
        mpreg_value_free(out);
    }
    return rc;
}

static mpreg_err mp_unknown_key(mp_rpc_error *err, const char *what, const mpreg_kv *kv,
                                const char *known) {
    mp_quote q;
    return mp_rpc_error_set(err, MPREG_E_INVALID, NULL, "%s: unknown key '%s' (known: %s)", what,
                            mp_quote_str(&q, kv->key.u.str.ptr, kv->key.u.str.len), known);
}

static mpreg_err mp_parse_request_map(mpreg_value *map, mp_rpc_request *out, mp_rpc_error *err) {
    mpreg_value *commands = NULL;
    uint64_t timeout_ms = 0;
    for (size_t i = 0; i < map->u.map.len; i++) {
        mpreg_kv *kv = &map->u.map.items[i];
        if (mp_key_is(kv, "commands")) {
            commands = &kv->val;
        } else if (mp_key_is(kv, "timeout_ms")) {
            if (kv->val.type != MPREG_INT) {
                return mp_rpc_error_set(err, MPREG_E_TYPE, NULL,
                                        "request: 'timeout_ms' must be an int, got %s",
                                        mpreg_type_name(kv->val.type));
            }
            if (kv->val.u.i < 0) {
                return mp_rpc_error_set(err, MPREG_E_RANGE, NULL,
                                        "request: 'timeout_ms' is negative");
            }
            timeout_ms = (uint64_t)kv->val.u.i;
        } else {
            return mp_unknown_key(err, "request", kv, "commands, timeout_ms");
        }
    }
    if (!commands) {
        return mp_rpc_error_set(err, MPREG_E_MISSING_FIELD, NULL, "request: missing 'commands'");
    }
    mpreg_err rc = mp_parse_commands(commands, true, out, err);
    if (!rc) {
        out->timeout_ms = timeout_ms;
    }
    return rc;
}

/* One command map at the cursor: its name and the first of args/kwargs
 * deeper than the limit. False when the bytes are not shaped as expected. */
static bool mp_deep_command(mp_rd *r, mp_str *name, const char **field) {
    mp_rd_item cmd;
    if (mp_rd_next(r, &cmd) != MPREG_OK || cmd.type != MP_RD_MAP) {
        return false;
    }
    for (uint64_t f = 0; f < cmd.n; f++) {
        mp_str key;
        if (mp_rd_str(r, &key) != MPREG_OK) {
            return false;
        }
        bool is_arg = mp_str_eq_c(key, "args") || mp_str_eq_c(key, "kwargs");
        if (mp_str_eq_c(key, "name") && mp_rd_str(r, name) == MPREG_OK) {
            continue;
        }
        /* args at most 29 levels: no container inside 28 others. */
        if (is_arg && !*field && mp_rd_skip(r, MP_RPC_MAX_REQUEST_ARG_DEPTH - 1) == MPREG_OK) {
            continue;
        }
        if (is_arg && !*field) {
            *field = mp_str_eq_c(key, "args") ? "args" : "kwargs";
        }
        if (mp_rd_skip(r, MP_RD_ANY_DEPTH) != MPREG_OK) {
            return false;
        }
    }
    return true;
}

/* The payload failed to decode for its depth: find the first command whose
 * args or kwargs are too deep in the raw bytes, so that the error names it
 * as the parse would (the decoder stops before any command is read). */
static mpreg_err mp_blame_deep(const void *data, size_t len, mp_rpc_error *err) {
    mp_rd r = mp_rd_init(data, len);
    mp_rd_item top, list;
    if (mp_rd_next(&r, &top) != MPREG_OK || top.type != MP_RD_MAP) {
        return MPREG_E_TOO_DEEP;
    }
    for (uint64_t i = 0; i < top.n; i++) {
        mp_str key;
        if (mp_rd_str(&r, &key) != MPREG_OK) {
            return MPREG_E_TOO_DEEP;
        }
        if (!mp_str_eq_c(key, "commands")) {
            if (mp_rd_skip(&r, MP_RD_ANY_DEPTH) != MPREG_OK) {
                return MPREG_E_TOO_DEEP;
            }
            continue;
        }
        if (mp_rd_next(&r, &list) != MPREG_OK || list.type != MP_RD_ARRAY) {
            return MPREG_E_TOO_DEEP;
        }
        for (uint64_t k = 0; k < list.n; k++) {
            mp_str name = MP_STR_NULL;
            const char *field = NULL;
            if (!mp_deep_command(&r, &name, &field)) {
                return MPREG_E_TOO_DEEP;
            }
            mp_deep_text t;
            if (field != NULL && name.len > 0 && name.len <= MP_RPC_MAX_NAME &&
                !memchr(name.ptr, '\0', name.len) && mpreg_utf8_valid(name.ptr, name.len)) {
                char cmd[MP_RPC_MAX_NAME + 1];
                memcpy(cmd, name.ptr, name.len);
                cmd[name.len] = '\0';
                return mp_rpc_error_set(err, MPREG_E_TOO_DEEP, cmd, "command '%s': %s", cmd,
                                        mp_too_deep_text(&t, field, MP_RPC_MAX_REQUEST_ARG_DEPTH));
            }
            if (field != NULL) {
                return mp_rpc_error_set(err, MPREG_E_TOO_DEEP, NULL, "commands[%u]: %s",
                                        (unsigned)k,
                                        mp_too_deep_text(&t, field, MP_RPC_MAX_REQUEST_ARG_DEPTH));
            }
        }
        return MPREG_E_TOO_DEEP;
    }
    return MPREG_E_TOO_DEEP;
}

mpreg_err mp_rpc_request_parse(const void *data, size_t len, mp_rpc_request *out,
                               mp_rpc_error *err) {
    memset(out, 0, sizeof *out);
    mpreg_value map;
    mpreg_err rc = mp_decode_map(data, len, "request", &map, err);
    if (rc == MPREG_E_TOO_DEEP) {
        mp_rpc_error blamed = MP_RPC_ERROR_INIT;
        if (mp_blame_deep(data, len, &blamed) == MPREG_E_TOO_DEEP && blamed.code && err) {
            mp_rpc_error_free(err);
            *err = blamed;
        } else {
            mp_rpc_error_free(&blamed);
        }
    }
    if (rc) {
        return rc;
    }
    rc = mp_parse_request_map(&map, out, err);
    mpreg_value_free(&map);
    return rc;
}

mpreg_err mp_rpc_request_encode(const mp_rpc_request *r, mpreg_bytes *out) {
    if (r->count > MP_RPC_MAX_COMMANDS) {
        return MPREG_E_TOO_LARGE;
    }
    size_t n = r->count;
    mp_call_view *views = calloc(n ? n : 1, sizeof *views);
    mpreg_value *items = calloc(n ? n : 1, sizeof *items);
    mpreg_err err = views && items ? MPREG_OK : MPREG_E_NOMEM;
    for (size_t i = 0; i < n && !err; i++) {
        mp_call_fields f = mp_command_fields(&r->commands[i]);
        err = mp_call_view_init(&views[i], &f);
        items[i] = views[i].map;
    }
    if (!err) {
        mpreg_value list = {.type = MPREG_ARRAY};
        list.u.arr.items = items;
        list.u.arr.len = list.u.arr.cap = n;
        if (r->timeout_ms > INT64_MAX) {
            err = MPREG_E_RANGE;
        } else {
            mpreg_kv kv[2] = {{mp_view_str("commands"), list},
                              {mp_view_str("timeout_ms"), mpreg_int((int64_t)r->timeout_ms)}};
            mpreg_value payload = mp_view_map(kv, r->timeout_ms ? 2 : 1);
            err = mp_encode_view(&payload, out);
        }
    }
    free(views);
    free(items);
    return err;
}

/* ==== invoke, result and reply payloads =================================== */

mpreg_err mp_rpc_invoke_encode(const mp_rpc_invoke *inv, mpreg_bytes *out) {
    mp_call_view view;
    mp_call_fields f = mp_invoke_fields(inv);
    mpreg_err err = mp_call_view_init(&view, &f);
    return err ? err : mp_encode_view(&view.map, out);
}

mpreg_err mp_rpc_invoke_decode(const void *data, size_t len, mp_rpc_invoke *out,
                               mp_rpc_error *err) {
    memset(out, 0, sizeof *out);
    mpreg_value map;
    mpreg_err rc = mp_decode_map(data, len, "invoke", &map, err);
    if (rc) {
        return rc;
    }
    mp_parse_ctx c = {.err = err, .mode = MP_CALL_INVOKE, .take = true};
    mp_rpc_command cmd;
    rc = mp_parse_call(&c, &map, &cmd);
    mpreg_value_free(&map);
    if (rc) {
        return rc;
    }
    /* Same fields, other struct: move them over. */
    *out = (mp_rpc_invoke){cmd.name, cmd.fun,         cmd.args,   cmd.kwargs,
                           cmd.locs, cmd.function_id, cmd.version};
    return MPREG_OK;
}

void mp_rpc_outcome_free(mp_rpc_outcome *o) {
    if (!o) {
        return;
    }
    mpreg_value_free(&o->value);
    mp_rpc_error_free(&o->error);
    o->ok = false;
}

/* {key: value} for a borrowed value. */
static mpreg_err mp_encode_single(const char *key, const mpreg_value *v, mpreg_bytes *out) {
    mpreg_kv kv = {mp_view_str(key), *v};
    mpreg_value payload = mp_view_map(&kv, 1);
    return mp_encode_view(&payload, out);
}

static mpreg_err mp_encode_error(const mp_rpc_error *e, mpreg_bytes *out) {
    mp_error_view view;
    mp_error_view_init(&view, e);
    return mp_encode_single("error", &view.map, out);
}

mpreg_err mp_rpc_result_encode(const mp_rpc_outcome *o, mpreg_bytes *out) {
    return o->ok ? mp_encode_single("result", &o->value, out) : mp_encode_error(&o->error, out);
}

mpreg_err mp_rpc_reply_encode_ok(const mpreg_value *results, mpreg_bytes *out) {
    if (results->type != MPREG_MAP) {
        return MPREG_E_TYPE;
    }
    return mp_encode_single("results", results, out);
}

mpreg_err mp_rpc_reply_encode_error(const mp_rpc_error *e, mpreg_bytes *out) {
    return mp_encode_error(e, out);
}

/* {ok_key: value} or {"error": shape}, exactly one key. */
static mpreg_err mp_decode_outcome(const void *data, size_t len, const char *what,
                                   const char *ok_key, mp_rpc_outcome *out, mp_rpc_error *err) {
    memset(out, 0, sizeof *out);
    mpreg_value map;
    mpreg_err rc = mp_decode_map(data, len, what, &map, err);
    if (rc) {
        return rc;
    }
    if (map.u.map.len != 1) {
        rc = mp_rpc_error_set(err, MPREG_E_INVALID, NULL, "%s: expected one key, '%s' or 'error'",
                              what, ok_key);
    } else {
        mpreg_kv *kv = &map.u.map.items[0];
        if (mp_key_is(kv, ok_key)) {
            if (strcmp(ok_key, "results") == 0 && kv->val.type != MPREG_MAP) {
                rc = mp_rpc_error_set(err, MPREG_E_TYPE, NULL, "%s: 'results' must be a map", what);
            } else {
                out->ok = true;
                out->value = kv->val;
                kv->val = mpreg_nil();
            }
        } else if (mp_key_is(kv, "error")) {
            rc = mp_rpc_error_from_value(&kv->val, &out->error);
            if (rc) {
                mp_rpc_error_set(err, rc, NULL, "%s: malformed error shape", what);
            }
        } else {
            char known[32];
            snprintf(known, sizeof known, "%s, error", ok_key);
            rc = mp_unknown_key(err, what, kv, known);
        }
    }
    mpreg_value_free(&map);
    return rc;
}

mpreg_err mp_rpc_result_decode(const void *data, size_t len, mp_rpc_outcome *out,
                               mp_rpc_error *err) {
    return mp_decode_outcome(data, len, "result", "result", out, err);
}

mpreg_err mp_rpc_reply_decode(const void *data, size_t len, mp_rpc_outcome *out,
                              mp_rpc_error *err) {
    return mp_decode_outcome(data, len, "reply", "results", out, err);
}

/* ==== the plan ============================================================= */

/* One command inside a plan. */
typedef struct mp_rpc_step {
    mp_rpc_command cmd;
    uint32_t *deps; /* distinct commands this one uses, in order of first reference */
    uint32_t dep_count;
    uint32_t *users; /* commands that use this one */
    uint32_t user_count;
    uint32_t unmet; /* dependencies not complete yet */
    uint32_t level;
    bool has_refs; /* args or kwargs hold at least one reference */
    mp_rpc_state state;
    mpreg_value result;
} mp_rpc_step;

struct mp_rpc_plan {
    mp_rpc_step *steps;
    uint32_t count;
    mp_map names; /* name -> id + 1 */
    /* Ready ids in the order they became ready. Each id enters once, so a
     * plain array of count slots never wraps. */
    uint32_t *queue;
    uint32_t queue_head; /* next to hand out */
    uint32_t queue_tail;
    uint32_t running;
    uint32_t completed;
    uint32_t level_count;
    bool responded;
    mp_rpc_limits limits;
    uint64_t held_bytes; /* mp_rpc_value_cost of the results held */
    mp_rpc_error error;  /* code != MPREG_OK once the request failed */
};

/* A string that is a reference: target command and where the path starts. */
typedef struct mp_rpc_ref {
    uint32_t target;
    const char *text; /* the whole string */
    size_t len;
    size_t name_len; /* the path, if any, starts at text[name_len + 1] */
} mp_rpc_ref;

static bool mp_ref_parse(const mp_rpc_plan *p, const mpreg_value *v, mp_rpc_ref *out) {
    if (v->type != MPREG_STR || v->u.str.len == 0) {
        return false;
    }
    const char *s = v->u.str.ptr;
    const char *dot = memchr(s, '.', v->u.str.len);
    size_t name_len = dot ? (size_t)(dot - s) : v->u.str.len;
    void *hit = mp_map_get(&p->names, s, name_len);
    if (!hit) {
        return false;
    }
    *out = (mp_rpc_ref){(uint32_t)((uintptr_t)hit - 1), s, v->u.str.len, name_len};
    return true;
}

/* No empty segment: not "a.", "a..b". */
static bool mp_ref_path_ok(const mp_rpc_ref *r) {
    if (r->name_len == r->len) {
        return true;
    }
    size_t seg = 0;
    for (size_t i = r->name_len + 1; i < r->len; i++) {
        if (r->text[i] == '.') {
            if (seg == 0) {
                return false;
            }
            seg = 0;
        } else {
            seg++;
        }
    }
    return seg > 0;
}

/* A canonical decimal array index: "0" or digits without a leading zero. */
static bool mp_parse_index(const char *s, size_t len, size_t *out) {
    if (len == 0 || len > 18 || (len > 1 && s[0] == '0')) {
        return false;
    }
    size_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (size_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* Follows r's path into its target's result. NULL when a segment is not
 * there, with *miss_off / *miss_len set to that segment in r->text. */
static const mpreg_value *mp_ref_lookup(const mp_rpc_plan *p, const mp_rpc_ref *r, size_t *miss_off,
                                        size_t *miss_len) {
    const mpreg_value *cur = &p->steps[r->target].result;
    size_t pos = r->name_len;
    while (pos < r->len) {
        size_t start = pos + 1;
        const char *seg = r->text + start;
        const char *dot = memchr(seg, '.', r->len - start);
        size_t seg_len = dot ? (size_t)(dot - seg) : r->len - start;
        const mpreg_value *next = NULL;
        size_t index;
        if (cur->type == MPREG_MAP) {
            next = mpreg_map_getn(cur, seg, seg_len);
        } else if (cur->type == MPREG_ARRAY && mp_parse_index(seg, seg_len, &index) &&
                   index < cur->u.arr.len) {
            next = &cur->u.arr.items[index];
        }
        if (!next) {
            *miss_off = start;
            *miss_len = seg_len;
            return NULL;
        }
        cur = next;
        pos = start + seg_len;
    }
    return cur;
}

/* --- building -------------------------------------------------------------- */

/* Names the commands of a cycle (ids, in "uses" order) in err. */
static mpreg_err mp_report_cycle(const mp_rpc_plan *p, const uint32_t *cycle, uint32_t n,
                                 mp_rpc_error *err) {
    size_t size = 8;
    for (uint32_t i = 0; i < n; i++) {
        size += strlen(p->steps[cycle[i]].cmd.name) + 4;
    }
    size += strlen(p->steps[cycle[0]].cmd.name);
    char *text = malloc(size);
    if (!text) {
        return mp_rpc_error_set(err, MPREG_E_CYCLE, p->steps[cycle[0]].cmd.name, "cycle");
    }
    size_t len = 0;
    for (uint32_t i = 0; i <= n; i++) {
        const char *name = p->steps[cycle[i % n]].cmd.name;
        len += (size_t)snprintf(text + len, size - len, "%s%s", i ? " -> " : "", name);
    }
    mp_rpc_error_set(err, MPREG_E_CYCLE, p->steps[cycle[0]].cmd.name, "cycle: %s", text);
    free(text);
    if (err) {
        mpreg_value names = mpreg_array(), details = mpreg_map();
        bool ok = true;
        for (uint32_t i = 0; i <= n && ok; i++) {
            ok = mpreg_array_push(&names, mpreg_str(p->steps[cycle[i % n]].cmd.name)) == MPREG_OK;
        }
        if (ok && mpreg_map_set(&details, "cycle", names) == MPREG_OK) {
            err->details = details;
        } else {
            mpreg_value_free(&names); /* NIL if map_set took it */
            mpreg_value_free(&details);
        }
    }
    return MPREG_E_CYCLE;
}

/* Collecting one command's dependencies. */
typedef struct mp_scan {
    mp_rpc_plan *plan;
    uint32_t id;
    uint32_t *stamp; /* stamp[t] == id + 1 once t is among id's deps */
    mp_rpc_error *err;
} mp_scan;

static mpreg_err mp_scan_ref(mp_scan *s, const mp_rpc_ref *r) {
    mp_rpc_step *step = &s->plan->steps[s->id];
    step->has_refs = true;
    if (!mp_ref_path_ok(r)) {
        mp_quote q;
        return mp_rpc_error_set(s->err, MPREG_E_INVALID, step->cmd.name,
                                "command '%s': reference '%s' has an empty field name",
                                step->cmd.name, mp_quote_str(&q, r->text, r->len));
    }
    if (r->target == s->id) {
        return mp_report_cycle(s->plan, &s->id, 1, s->err);
    }
    if (s->stamp[r->target] != s->id + 1) {
        s->stamp[r->target] = s->id + 1;
        step->deps[step->dep_count++] = r->target;
    }
    return MPREG_OK;
}

/* Recursion depth is bounded by the parser's MP_RPC_MAX_ARG_DEPTH check. */
static mpreg_err mp_scan_value(mp_scan *s, const mpreg_value *v) {
    mp_rpc_ref r;
    mpreg_err err = MPREG_OK;
    if (v->type == MPREG_ARRAY) {
        for (size_t i = 0; i < v->u.arr.len && !err; i++) {
            err = mp_scan_value(s, &v->u.arr.items[i]);
        }
    } else if (v->type == MPREG_MAP) {
        for (size_t i = 0; i < v->u.map.len && !err; i++) {
            err = mp_scan_value(s, &v->u.map.items[i].val);
        }
    } else if (mp_ref_parse(s->plan, v, &r)) {
        err = mp_scan_ref(s, &r);
    }
    return err;
}

/* Each command's deps. A command has at most count - 1 distinct deps, so one
 * allocation of that size per command (trimmed after) bounds the work. */
static mpreg_err mp_plan_scan(mp_rpc_plan *p, mp_rpc_error *err) {
    uint32_t *stamp = calloc(p->count, sizeof *stamp);
    if (!stamp) {
        return mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
    }
    mp_scan s = {.plan = p, .stamp = stamp, .err = err};
    mpreg_err rc = MPREG_OK;
    for (uint32_t i = 0; i < p->count && !rc; i++) {
        mp_rpc_step *step = &p->steps[i];
        step->deps = malloc(p->count * sizeof *step->deps);
        if (!step->deps) {
            rc = mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
            break;
        }
        s.id = i;
        rc = mp_scan_value(&s, &step->cmd.args);
        if (!rc) {
            rc = mp_scan_value(&s, &step->cmd.kwargs);
        }
        if (!rc && step->dep_count < p->count) {
            uint32_t *shrunk =
                realloc(step->deps, (step->dep_count ? step->dep_count : 1) * sizeof *step->deps);
            step->deps = shrunk ? shrunk : step->deps;
        }
    }
    free(stamp);
    return rc;
}

/* The reverse edges: who uses each command. */
static mpreg_err mp_plan_link_users(mp_rpc_plan *p, mp_rpc_error *err) {
    for (uint32_t i = 0; i < p->count; i++) {
        for (uint32_t k = 0; k < p->steps[i].dep_count; k++) {
            p->steps[p->steps[i].deps[k]].user_count++;
        }
    }
    for (uint32_t i = 0; i < p->count; i++) {
        mp_rpc_step *step = &p->steps[i];
        if (step->user_count) {
            step->users = malloc(step->user_count * sizeof *step->users);
            if (!step->users) {
                return mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
            }
            step->user_count = 0;
        }
    }
    for (uint32_t i = 0; i < p->count; i++) {
        for (uint32_t k = 0; k < p->steps[i].dep_count; k++) {
            mp_rpc_step *dep = &p->steps[p->steps[i].deps[k]];
            dep->users[dep->user_count++] = i;
        }
    }
    return MPREG_OK;
}

/* Finds a cycle among the commands Kahn's algorithm could not order. Each
 * of those has a dependency that was not ordered either (else it would have
 * been), so following such dependencies from any of them must come back to
 * a command already on the walk: that loop is a cycle. */
static mpreg_err mp_plan_find_cycle(mp_rpc_plan *p, const bool *ordered, mp_rpc_error *err) {
    uint32_t *walk = malloc(p->count * sizeof *walk);
    uint32_t *pos = malloc(p->count * sizeof *pos);
    if (!walk || !pos) {
        free(walk);
        free(pos);
        return mp_rpc_error_set(err, MPREG_E_CYCLE, NULL, "cycle");
    }
    memset(pos, 0xff, p->count * sizeof *pos);
    uint32_t x = 0;
    while (ordered[x]) {
        x++;
    }
    uint32_t len = 0;
    while (pos[x] == UINT32_MAX) {
        pos[x] = len;
        walk[len++] = x;
        const mp_rpc_step *step = &p->steps[x];
        uint32_t k = 0;
        while (ordered[step->deps[k]]) {
            k++;
        }
        x = step->deps[k];
    }
    /* The cycle is walk[pos[x] .. len); start it at its first command in
     * request order so that the message does not depend on the walk. */
    uint32_t *cycle = walk + pos[x];
    uint32_t n = len - pos[x], first = 0;
    for (uint32_t i = 1; i < n; i++) {
        if (cycle[i] < cycle[first]) {
            first = i;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        pos[i] = cycle[(first + i) % n];
    }
    mpreg_err rc = mp_report_cycle(p, pos, n, err);
    free(walk);
    free(pos);
    return rc;
}

/* Kahn's algorithm: orders the DAG, assigns levels, detects cycles. */
static mpreg_err mp_plan_order(mp_rpc_plan *p, mp_rpc_error *err) {
    uint32_t *order = malloc((p->count ? p->count : 1) * sizeof *order);
    bool *ordered = calloc(p->count ? p->count : 1, sizeof *ordered);
    if (!order || !ordered) {
        free(order);
        free(ordered);
        return mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
    }
    uint32_t head = 0, tail = 0;
    for (uint32_t i = 0; i < p->count; i++) {
        p->steps[i].unmet = p->steps[i].dep_count;
        if (p->steps[i].unmet == 0) {
            order[tail++] = i;
        }
    }
    while (head < tail) {
        uint32_t x = order[head++];
        ordered[x] = true;
        const mp_rpc_step *step = &p->steps[x];
        p->level_count = step->level + 1 > p->level_count ? step->level + 1 : p->level_count;
        for (uint32_t k = 0; k < step->user_count; k++) {
            mp_rpc_step *user = &p->steps[step->users[k]];
            user->level = step->level + 1 > user->level ? step->level + 1 : user->level;
            if (--user->unmet == 0) {
                order[tail++] = step->users[k];
            }
        }
    }
    mpreg_err rc = tail == p->count ? MPREG_OK : mp_plan_find_cycle(p, ordered, err);
    free(order);
    free(ordered);
    return rc;
}

/* Every command without dependencies is ready, in request order. */
static void mp_plan_arm(mp_rpc_plan *p) {
    for (uint32_t i = 0; i < p->count; i++) {
        mp_rpc_step *step = &p->steps[i];
        step->unmet = step->dep_count;
        step->state = MP_RPC_WAITING;
        if (step->unmet == 0) {
            step->state = MP_RPC_READY;
            p->queue[p->queue_tail++] = i;
        }
    }
}

/* What the parser guarantees and the plan relies on, for requests built by
 * hand: names set, unique and without '.', fun set, args an array, kwargs a
 * map. */
static mpreg_err mp_plan_index(mp_rpc_plan *p, mp_rpc_error *err) {
    for (uint32_t i = 0; i < p->count; i++) {
        const mp_rpc_command *c = &p->steps[i].cmd;
        if (!c->name || !c->name[0] || strchr(c->name, '.') || !c->fun ||
            c->args.type != MPREG_ARRAY || c->kwargs.type != MPREG_MAP) {
            return mp_rpc_error_set(err, MPREG_E_INVALID, NULL, "commands[%u]: not a valid command",
                                    i);
        }
        size_t len = strlen(c->name);
        if (mp_map_contains(&p->names, c->name, len)) {
            return mp_rpc_error_set(err, MPREG_E_DUPLICATE, c->name, "command '%s' appears twice",
                                    c->name);
        }
        if (mp_map_put(&p->names, c->name, len, (void *)(uintptr_t)(i + 1), NULL)) {
            return mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
        }
    }
    return MPREG_OK;
}

mpreg_err mp_rpc_plan_new(mp_rpc_request *req, mp_rpc_plan **out, mp_rpc_error *err) {
    *out = NULL;
    if (req->count > MP_RPC_MAX_COMMANDS) {
        mp_rpc_request_free(req);
        return mp_rpc_error_set(err, MPREG_E_TOO_LARGE, NULL, "request has more than %d commands",
                                MP_RPC_MAX_COMMANDS);
    }
    mp_rpc_plan *p = calloc(1, sizeof *p);
    uint32_t n = req->count;
    mp_rpc_step *steps = calloc(n ? n : 1, sizeof *steps);
    uint32_t *queue = calloc(n ? n : 1, sizeof *queue);
    if (!p || !steps || !queue) {
        free(p);
        free(steps);
        free(queue);
        mp_rpc_request_free(req);
        return mp_rpc_error_set(err, MPREG_E_NOMEM, NULL, "out of memory");
    }
    for (uint32_t i = 0; i < n; i++) {
        steps[i].cmd = req->commands[i]; /* moved */
    }
    free(req->commands);
    req->commands = NULL;
    req->count = 0;
    p->steps = steps;
    p->count = n;
    p->queue = queue;
    mp_map_init(&p->names);
    mp_rpc_error_init(&p->error);

    mpreg_err rc = mp_plan_index(p, err);
    if (!rc) {
        rc = mp_plan_scan(p, err);
    }
    if (!rc) {
        rc = mp_plan_link_users(p, err);
    }
    if (!rc) {
        rc = mp_plan_order(p, err);
    }
    if (rc) {
        mp_rpc_plan_free(p);
        return rc;
    }
    mp_plan_arm(p);
    *out = p;
    return MPREG_OK;
}

mpreg_err mp_rpc_plan_from_value(const mpreg_value *commands, mp_rpc_plan **out,
                                 mp_rpc_error *err) {
    mp_rpc_request req;
    *out = NULL;
    mpreg_err rc = mp_rpc_commands_parse(commands, &req, err);
    return rc ? rc : mp_rpc_plan_new(&req, out, err);
}

void mp_rpc_plan_free(mp_rpc_plan *plan) {
    if (!plan) {
        return;
    }
    for (uint32_t i = 0; i < plan->count; i++) {
        mp_rpc_step *step = &plan->steps[i];
        mp_rpc_command_free(&step->cmd);
        free(step->deps);
        free(step->users);
        mpreg_value_free(&step->result);
    }
    free(plan->steps);
    free(plan->queue);
    mp_map_free(&plan->names, NULL);
    mp_rpc_error_free(&plan->error);
    free(plan);
}

void mp_rpc_plan_set_limits(mp_rpc_plan *plan, const mp_rpc_limits *limits) {
    plan->limits = limits ? *limits : (mp_rpc_limits){0, 0};
}

/* --- running --------------------------------------------------------------- */

uint32_t mp_rpc_plan_ready(mp_rpc_plan *plan, uint32_t *out_ids, uint32_t cap) {
    if (plan->error.code != MPREG_OK) {
        return 0;
    }
    uint32_t n = 0;
    while (n < cap && plan->queue_head < plan->queue_tail) {
        uint32_t id = plan->queue[plan->queue_head++];
        plan->steps[id].state = MP_RPC_RUNNING;
        plan->running++;
        out_ids[n++] = id;
    }
    return n;
}

uint32_t mp_rpc_plan_ready_count(const mp_rpc_plan *plan) {
    return plan->error.code != MPREG_OK ? 0 : plan->queue_tail - plan->queue_head;
}

static bool mp_is_running(const mp_rpc_plan *plan, uint32_t id) {
    return id < plan->count && plan->steps[id].state == MP_RPC_RUNNING;
}

/* Marks a running step failed; the first failure becomes the request's. */
static mpreg_err mp_plan_fail_step(mp_rpc_plan *plan, uint32_t id, mp_rpc_error *e) {
    mp_rpc_step *step = &plan->steps[id];
    step->state = MP_RPC_FAILED;
    plan->running--;
    if (plan->error.code != MPREG_OK) {
        mp_rpc_error_free(e);
        return MPREG_OK;
    }
    mp_rpc_error_move(&plan->error, e);
    if (plan->error.code == MPREG_OK) {
        plan->error.code = MPREG_E_INTERNAL;
    }
    free(plan->error.command);
    plan->error.command = mp_strdup(step->cmd.name);
    return MPREG_OK;
}

mpreg_err mp_rpc_plan_fail(mp_rpc_plan *plan, uint32_t id, mp_rpc_error *error) {
    mp_rpc_error none = MP_RPC_ERROR_INIT;
    mp_rpc_error *e = error ? error : &none;
    if (!mp_is_running(plan, id)) {
        mp_rpc_error_free(e);
        return MPREG_E_INVALID;
    }
    return mp_plan_fail_step(plan, id, e);
}

mpreg_err mp_rpc_plan_fail_code(mp_rpc_plan *plan, uint32_t id, mpreg_err code,
                                const char *message) {
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&e, code, NULL, "%s", message ? message : mpreg_strerror(code));
    return mp_rpc_plan_fail(plan, id, &e);
}

mpreg_err mp_rpc_plan_complete(mp_rpc_plan *plan, uint32_t id, mpreg_value result) {
    if (!mp_is_running(plan, id)) {
        mpreg_value_free(&result);
        return MPREG_E_INVALID;
    }
    mp_rpc_step *step = &plan->steps[id];
    uint64_t cost = plan->error.code == MPREG_OK ? mp_rpc_value_cost(&result) : 0;
    if (plan->limits.max_held_bytes && plan->held_bytes + cost > plan->limits.max_held_bytes) {
        mpreg_value_free(&result);
        mp_rpc_error e = MP_RPC_ERROR_INIT;
        mp_rpc_error_set(&e, MPREG_E_TOO_LARGE, step->cmd.name,
                         "command '%s': its result (%llu bytes) would take the request's results "
                         "over their budget of %zu bytes (mpregd --limit request_bytes)",
                         step->cmd.name, (unsigned long long)cost, plan->limits.max_held_bytes);
        return mp_plan_fail_step(plan, id, &e);
    }
    step->state = MP_RPC_COMPLETE;
    plan->running--;
    plan->completed++;
    if (plan->error.code != MPREG_OK) {
        mpreg_value_free(&result); /* nobody will read it */
        return MPREG_OK;
    }
    plan->held_bytes += cost;
    step->result = result;
    for (uint32_t k = 0; k < step->user_count; k++) {
        mp_rpc_step *user = &plan->steps[step->users[k]];
        if (--user->unmet == 0) {
            user->state = MP_RPC_READY;
            plan->queue[plan->queue_tail++] = step->users[k];
        }
    }
    return MPREG_OK;
}

/* Walks at most this deep; deeper parts (which no decoder lets in) count
 * as one cell each. */
#define MP_RPC_COST_DEPTH 64

static uint64_t mp_value_cost_at(const mpreg_value *v, uint32_t depth) {
    switch (v->type) {
    case MPREG_STR:
        return v->u.str.len;
    case MPREG_BIN:
        return v->u.bin.len;
    case MPREG_ARRAY:
    case MPREG_MAP: {
        bool is_map = v->type == MPREG_MAP;
        size_t n = is_map ? v->u.map.len : v->u.arr.len;
        uint64_t cost = 16u * (uint64_t)n;
        if (depth >= MP_RPC_COST_DEPTH) {
            return cost;
        }
        for (size_t i = 0; i < n; i++) {
            if (is_map) {
                cost += v->u.map.items[i].key.u.str.len;
            }
            cost +=
                mp_value_cost_at(is_map ? &v->u.map.items[i].val : &v->u.arr.items[i], depth + 1);
        }
        return cost;
    }
    default:
        return 0;
    }
}

uint64_t mp_rpc_value_cost(const mpreg_value *v) {
    return mp_value_cost_at(v, 0);
}

uint64_t mp_rpc_plan_held_bytes(const mp_rpc_plan *plan) {
    return plan->held_bytes;
}

bool mp_rpc_plan_done(const mp_rpc_plan *plan) {
    return plan->completed == plan->count || (plan->error.code != MPREG_OK && plan->running == 0);
}

const mp_rpc_error *mp_rpc_plan_error(const mp_rpc_plan *plan) {
    return plan->error.code != MPREG_OK ? &plan->error : NULL;
}

/* --- resolving arguments --------------------------------------------------- */

/* The size check before copying: walks args and kwargs as they will be once
 * substituted, counting items and bytes and the depth a result lands at,
 * and fails on the first missing field. Nothing is copied until it passes. */
typedef struct mp_measure {
    const mp_rpc_plan *plan;
    uint32_t id;
    size_t items;
    size_t bytes;
    size_t max_items;
    size_t max_bytes;
    bool budget_bound; /* max_bytes is the rest of the request's budget */
    mp_rpc_error *err;
} mp_measure;

/* Against the request's budget an argument costs what mp_rpc_value_cost
 * says its copy will: bytes plus 16 per cell. */
static size_t mp_measure_bytes(const mp_measure *m) {
    return m->budget_bound ? m->bytes + 16u * m->items : m->bytes;
}

static bool mp_measure_over(const mp_measure *m) {
    return m->items > m->max_items || mp_measure_bytes(m) > m->max_bytes;
}

/* Counts v (a copy of which lands `depth` containers deep); false when over a
 * limit. Stops descending once over the depth limit, so the recursion stays
 * bounded even for results of unbounded depth. */
static bool mp_measure_copy(mp_measure *m, const mpreg_value *v, uint32_t depth) {
    if (v->type == MPREG_STR || v->type == MPREG_BIN) {
        m->bytes += v->type == MPREG_STR ? v->u.str.len : v->u.bin.len;
    } else if (v->type == MPREG_ARRAY || v->type == MPREG_MAP) {
        if (depth >= MP_RPC_MAX_ARG_DEPTH) {
            return false;
        }
        bool is_map = v->type == MPREG_MAP;
        size_t n = is_map ? v->u.map.len : v->u.arr.len;
        m->items += n;
        for (size_t i = 0; i < n && !mp_measure_over(m); i++) {
            if (is_map) {
                m->bytes += v->u.map.items[i].key.u.str.len;
            }
            if (!mp_measure_copy(m, is_map ? &v->u.map.items[i].val : &v->u.arr.items[i],
                                 depth + 1)) {
                return false;
            }
        }
    }
    return !mp_measure_over(m);
}

static mpreg_err mp_measure_fail_size(mp_measure *m, bool deep) {
    const char *name = m->plan->steps[m->id].cmd.name;
    if (!deep && m->budget_bound && mp_measure_bytes(m) > m->max_bytes) {
        return mp_rpc_error_set(m->err, MPREG_E_TOO_LARGE, name,
                                "command '%s': its arguments would take the request's results "
                                "over their budget of %zu bytes, %llu already held (mpregd "
                                "--limit request_bytes); not run",
                                name, m->plan->limits.max_held_bytes,
                                (unsigned long long)m->plan->held_bytes);
    }
    if (deep) {
        return mp_rpc_error_set(m->err, MPREG_E_TOO_DEEP, name,
                                "command '%s': arguments nest deeper than %d levels once "
                                "references are substituted",
                                name, MP_RPC_MAX_ARG_DEPTH);
    }
    return mp_rpc_error_set(m->err, MPREG_E_TOO_LARGE, name,
                            "command '%s': arguments exceed %zu items or %zu bytes once "
                            "references are substituted",
                            name, m->max_items, m->max_bytes);
}

static mpreg_err mp_measure_missing(mp_measure *m, const mp_rpc_ref *r, size_t off, size_t len) {
    const char *name = m->plan->steps[m->id].cmd.name;
    mp_quote qr, qp, qf;
    mp_rpc_error_set(m->err, MPREG_E_INVALID, name,
                     "command '%s': reference '%s': result of '%s' has no field '%s'", name,
                     mp_quote_str(&qr, r->text, r->len), mp_quote_str(&qp, r->text, off - 1),
                     mp_quote_str(&qf, r->text + off, len));
    if (m->err) {
        mpreg_value details = mpreg_map();
        if (mpreg_map_set(&details, "reference", mpreg_strn(r->text, r->len)) == MPREG_OK &&
            mpreg_map_set(&details, "field", mpreg_strn(r->text + off, len)) == MPREG_OK) {
            m->err->details = details;
        } else {
            mpreg_value_free(&details);
        }
    }
    return MPREG_E_INVALID;
}

/* Walks an argument value; depth = containers around v inside args. */
static mpreg_err mp_measure_arg(mp_measure *m, const mpreg_value *v, uint32_t depth) {
    mp_rpc_ref r;
    if (mp_ref_parse(m->plan, v, &r)) {
        size_t off = 0, len = 0;
        const mpreg_value *target = mp_ref_lookup(m->plan, &r, &off, &len);
        if (!target) {
            return mp_measure_missing(m, &r, off, len);
        }
        if (!mp_measure_copy(m, target, depth)) {
            return mp_measure_fail_size(m, !mp_measure_over(m));
        }
        return MPREG_OK;
    }
    if (v->type != MPREG_ARRAY && v->type != MPREG_MAP) {
        return mp_measure_copy(m, v, depth) ? MPREG_OK : mp_measure_fail_size(m, false);
    }
    bool is_map = v->type == MPREG_MAP;
    size_t n = is_map ? v->u.map.len : v->u.arr.len;
    m->items += n;
    for (size_t i = 0; i < n; i++) {
        if (is_map) {
            m->bytes += v->u.map.items[i].key.u.str.len;
        }
        mpreg_err err =
            mp_measure_arg(m, is_map ? &v->u.map.items[i].val : &v->u.arr.items[i], depth + 1);
        if (err) {
            return err;
        }
    }
    return mp_measure_over(m) ? mp_measure_fail_size(m, false) : MPREG_OK;
}

/* Replaces, in a copy of the arguments, every reference by a copy of what it
 * names. Lookups cannot fail here: mp_measure_arg has just made them. A
 * substituted value is not walked again. */
static mpreg_err mp_substitute(const mp_rpc_plan *p, mpreg_value *v) {
    mp_rpc_ref r;
    if (mp_ref_parse(p, v, &r)) {
        size_t off, len;
        const mpreg_value *target = mp_ref_lookup(p, &r, &off, &len);
        mpreg_value copy;
        if (!target || mpreg_value_clone(target, &copy) != MPREG_OK) {
            return MPREG_E_NOMEM;
        }
        mpreg_value_free(v);
        *v = copy;
        return MPREG_OK;
    }
    mpreg_err err = MPREG_OK;
    if (v->type == MPREG_ARRAY) {
        for (size_t i = 0; i < v->u.arr.len && !err; i++) {
            err = mp_substitute(p, &v->u.arr.items[i]);
        }
    } else if (v->type == MPREG_MAP) {
        for (size_t i = 0; i < v->u.map.len && !err; i++) {
            err = mp_substitute(p, &v->u.map.items[i].val);
        }
    }
    return err;
}

static mpreg_err mp_copy_args(const mp_rpc_plan *p, const mp_rpc_step *step, mpreg_value *args,
                              mpreg_value *kwargs) {
    if (mpreg_value_clone(&step->cmd.args, args) != MPREG_OK ||
        mpreg_value_clone(&step->cmd.kwargs, kwargs) != MPREG_OK) {
        return MPREG_E_NOMEM;
    }
    if (step->has_refs &&
        (mp_substitute(p, args) != MPREG_OK || mp_substitute(p, kwargs) != MPREG_OK)) {
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

mpreg_err mp_rpc_plan_resolve_args(mp_rpc_plan *plan, uint32_t id, mpreg_value *args_out,
                                   mpreg_value *kwargs_out) {
    *args_out = mpreg_nil();
    *kwargs_out = mpreg_nil();
    if (!mp_is_running(plan, id)) {
        return MPREG_E_INVALID;
    }
    const mp_rpc_step *step = &plan->steps[id];
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mpreg_err rc = MPREG_OK;
    if (step->has_refs) {
        mp_measure m = {
            .plan = plan,
            .id = id,
            .max_items =
                plan->limits.max_arg_items ? plan->limits.max_arg_items : MPREG_VALUE_DEFAULT_ITEMS,
            .max_bytes =
                plan->limits.max_arg_bytes ? plan->limits.max_arg_bytes : MPREG_VALUE_DEFAULT_BYTES,
            .err = &e,
        };
        /* Arguments are built from results: a copy no bigger than what the
         * request may still hold, so a chain that doubles is stopped before
         * the copy that would go over, not after. */
        uint64_t budget = plan->limits.max_held_bytes;
        if (budget) {
            uint64_t rest = budget > plan->held_bytes ? budget - plan->held_bytes : 0;
            if (rest < m.max_bytes) {
                m.max_bytes = (size_t)rest;
                m.budget_bound = true;
            }
        }
        rc = mp_measure_arg(&m, &step->cmd.args, 0);
        if (!rc) {
            rc = mp_measure_arg(&m, &step->cmd.kwargs, 0);
        }
    }
    if (!rc && mp_copy_args(plan, step, args_out, kwargs_out) != MPREG_OK) {
        rc = mp_rpc_error_set(&e, MPREG_E_NOMEM, NULL, "command '%s': out of memory",
                              step->cmd.name);
    }
    if (rc) {
        mpreg_value_free(args_out);
        mpreg_value_free(kwargs_out);
        mp_plan_fail_step(plan, id, &e);
    }
    return rc;
}

static mpreg_err mp_strlist_copy(const mp_strlist *src, mp_strlist *dst) {
    *dst = (mp_strlist){NULL, 0};
    if (mp_strlist_append(dst, src) != MPREG_OK) {
        mp_strlist_free(dst);
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

mpreg_err mp_rpc_plan_invoke(mp_rpc_plan *plan, uint32_t id, mp_rpc_invoke *out) {
    memset(out, 0, sizeof *out);
    mpreg_err rc = mp_rpc_plan_resolve_args(plan, id, &out->args, &out->kwargs);
    if (rc) {
        return rc;
    }
    const mp_rpc_command *c = &plan->steps[id].cmd;
    out->command = mp_strdup(c->name);
    out->fun = mp_strdup(c->fun);
    out->function_id = mp_strdup(c->function_id);
    out->version = mp_strdup(c->version);
    if (!out->command || !out->fun || (c->function_id && !out->function_id) ||
        (c->version && !out->version) || mp_strlist_copy(&c->locs, &out->locs) != MPREG_OK) {
        mp_rpc_invoke_free(out);
        mp_rpc_plan_fail_code(plan, id, MPREG_E_NOMEM, "out of memory");
        return MPREG_E_NOMEM;
    }
    return MPREG_OK;
}

mpreg_err mp_rpc_plan_response(mp_rpc_plan *plan, mpreg_value *out) {
    *out = mpreg_nil();
    if (plan->completed != plan->count || plan->error.code != MPREG_OK || plan->responded) {
        return MPREG_E_INVALID;
    }
    plan->responded = true;
    mpreg_value map = mpreg_map();
    for (uint32_t i = 0; i < plan->count; i++) {
        mp_rpc_step *step = &plan->steps[i];
        if (step->user_count == 0) {
            mpreg_value result = step->result;
            step->result = mpreg_nil();
            if (mpreg_map_set(&map, step->cmd.name, result) != MPREG_OK) {
                mpreg_value_free(&map);
                return MPREG_E_NOMEM;
            }
        }
    }
    *out = map;
    return MPREG_OK;
}

/* --- inspection ------------------------------------------------------------ */

uint32_t mp_rpc_plan_count(const mp_rpc_plan *plan) {
    return plan->count;
}

const mp_rpc_command *mp_rpc_plan_command(const mp_rpc_plan *plan, uint32_t id) {
    return id < plan->count ? &plan->steps[id].cmd : NULL;
}

mp_rpc_state mp_rpc_plan_state(const mp_rpc_plan *plan, uint32_t id) {
    return id < plan->count ? plan->steps[id].state : MP_RPC_WAITING;
}

bool mp_rpc_plan_find(const mp_rpc_plan *plan, const char *name, uint32_t *id) {
    void *hit = mp_map_get(&plan->names, name, strlen(name));
    if (hit && id) {
        *id = (uint32_t)((uintptr_t)hit - 1);
    }
    return hit != NULL;
}

const uint32_t *mp_rpc_plan_deps(const mp_rpc_plan *plan, uint32_t id, uint32_t *count) {
    if (id >= plan->count) {
        *count = 0;
        return NULL;
    }
    *count = plan->steps[id].dep_count;
    return plan->steps[id].deps;
}

uint32_t mp_rpc_plan_level(const mp_rpc_plan *plan, uint32_t id) {
    return id < plan->count ? plan->steps[id].level : 0;
}

uint32_t mp_rpc_plan_level_count(const mp_rpc_plan *plan) {
    return plan->level_count;
}

bool mp_rpc_plan_is_sink(const mp_rpc_plan *plan, uint32_t id) {
    return id < plan->count && plan->steps[id].user_count == 0;
}
