/* client_proto.c - payloads, tables and helpers shared by both clients. */
#define _GNU_SOURCE
#include "client/client_proto.h"
#include "runtime/sysclock.h"

#include "core/addr.h"
#include "core/frame.h"
#include "core/str.h"
#include "core/topic.h"
#include "core/value_json.h"
#include "core/vec.h"
#include "services/pubsub.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ==== small helpers ========================================================= */

/* Copies s[0..len) into out (cap bytes), cutting if needed; always NUL-ends. */
static void mp_cl_copy(char *out, size_t cap, const char *s, size_t len) {
    if (cap == 0) {
        return;
    }
    if (len >= cap) {
        len = cap - 1;
    }
    if (len) {
        memcpy(out, s, len);
    }
    out[len] = '\0';
}

static bool mp_cl_eq(const char *a, const char *b) {
    const char *x = a ? a : "";
    const char *y = b ? b : "";
    return strcmp(x, y) == 0;
}

/* ==== urls, time, ids ======================================================== */

static const char *mp_cl_skip_scheme(const char *url) {
    static const char *const schemes[] = {"tcp://", "mpreg://"};
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i]);
        if (strncmp(url, schemes[i], n) == 0) {
            return url + n;
        }
    }
    return url;
}

mpreg_err mp_client_parse_url(const char *url, char host[MP_CLIENT_HOST_MAX], uint16_t *port,
                              const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    *why = NULL;
    if (url == NULL) {
        *why = "no url";
        return MPREG_E_INVALID;
    }
    const char *p = mp_cl_skip_scheme(url);
    size_t len = strlen(p);
    if (len > 0 && p[len - 1] == '/') {
        len--;
    }
    const char *h = p;
    size_t hlen;
    const char *rest; /* ":port" or the end */
    if (len > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', len);
        if (close == NULL) {
            *why = "missing ']' after an IPv6 address";
            return MPREG_E_INVALID;
        }
        h = p + 1;
        hlen = (size_t)(close - h);
        rest = close + 1;
    } else {
        const char *colon = memchr(p, ':', len);
        const char *second = colon ? memchr(colon + 1, ':', len - (size_t)(colon + 1 - p)) : NULL;
        /* Two colons without brackets: a bare IPv6 address, default port. */
        hlen = (colon && !second) ? (size_t)(colon - p) : len;
        rest = p + hlen;
    }
    size_t rlen = len - (size_t)(rest - p);
    if (hlen == 0) {
        *why = "no host";
        return MPREG_E_INVALID;
    }
    if (hlen >= MP_CLIENT_HOST_MAX) {
        *why = "host too long";
        return MPREG_E_INVALID;
    }
    for (size_t i = 0; i < hlen; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (ch <= ' ' || ch == '/' || ch == '[' || ch == ']' || ch == 0x7f) {
            *why = "invalid character in host";
            return MPREG_E_INVALID;
        }
    }
    *port = MPREG_DEFAULT_PORT;
    if (rlen > 0) {
        if (rest[0] != ':') {
            *why = "expected ':' and a port after the host";
            return MPREG_E_INVALID;
        }
        if (!mp_port_parse(rest + 1, rlen - 1, false, port)) {
            *why = "port must be a number from 1 to 65535";
            return MPREG_E_INVALID;
        }
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    return MPREG_OK;
}

uint32_t mp_client_timeout(uint32_t op_ms, uint32_t client_ms) {
    if (op_ms) {
        return op_ms;
    }
    return client_ms ? client_ms : MPREG_DEFAULT_TIMEOUT_MS;
}

uint32_t mp_client_reply_wait(uint32_t timeout_ms) {
    /* The node's deadline error has to cross the network back to us: allow
     * a quarter more, at least a second, at most ten. */
    uint32_t grace = timeout_ms / 4;
    grace = grace < 1000 ? 1000 : grace > 10000 ? 10000 : grace;
    return timeout_ms > UINT32_MAX - grace ? UINT32_MAX : timeout_ms + grace;
}

/* ==== errors ================================================================== */

mpreg_err mp_client_error_set(mpreg_error *err, mpreg_err code, const char *fmt, ...) {
    if (err == NULL) {
        return code;
    }
    mpreg_error_free(err);
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

/* ==== catalog pages ==================================================== */

mpreg_err mp_client_catalog_payload(const mpreg_catalog_options *opts, const mpreg_value *after,
                                    mpreg_bytes *out) {
    mpreg_value p = mpreg_map();
    mpreg_err rc = MPREG_OK;
    if (opts && opts->kinds && opts->kinds_count) {
        mpreg_value kinds = mpreg_array();
        for (size_t i = 0; i < opts->kinds_count && !rc; i++) {
            rc = mpreg_array_push(&kinds, mpreg_str(opts->kinds[i] ? opts->kinds[i] : ""));
        }
        rc = rc ? (mpreg_value_free(&kinds), rc) : mpreg_map_set(&p, "kinds", kinds);
    }
    if (!rc && after && after->type != MPREG_NIL) {
        mpreg_value copy;
        rc = mpreg_value_clone(after, &copy);
        rc = rc ? rc : mpreg_map_set(&p, "after", copy);
    }
    if (!rc && opts && opts->page_limit) {
        rc = mpreg_map_set(&p, "limit", mpreg_int(opts->page_limit));
    }
    rc = rc ? rc : mpreg_value_encode(&p, out);
    mpreg_value_free(&p);
    return rc;
}

mpreg_err mp_client_catalog_merge(mpreg_value *acc, mpreg_value *page, mpreg_value *next,
                                  mpreg_error *err) {
    *next = mpreg_nil();
    if (page->type != MPREG_MAP) {
        mpreg_value_free(page);
        return mp_client_error_set(err, MPREG_E_DECODE, "the node's catalog is not a map");
    }
    if (acc->type != MPREG_MAP) {
        *acc = mpreg_map();
    }
    size_t entries = 0;
    mpreg_err rc = MPREG_OK;
    for (size_t i = 0; i < page->u.map.len && !rc; i++) {
        mpreg_kv *kv = &page->u.map.items[i];
        const char *key = kv->key.u.str.ptr;
        mpreg_value *have = (mpreg_value *)mpreg_map_get(acc, key);
        if (strcmp(key, "next") == 0) {
            *next = kv->val;
        } else if (kv->val.type == MPREG_ARRAY && have && have->type == MPREG_ARRAY) {
            for (size_t k = 0; k < kv->val.u.arr.len && !rc; k++) {
                rc = mpreg_array_push(have, kv->val.u.arr.items[k]);
                kv->val.u.arr.items[k] = mpreg_nil();
            }
            entries += kv->val.u.arr.len;
            mpreg_value_free(&kv->val);
        } else {
            entries += kv->val.type == MPREG_ARRAY ? kv->val.u.arr.len : 0;
            rc = mpreg_map_set(acc, key, kv->val);
        }
        kv->val = mpreg_nil();
    }
    mpreg_value_free(page);
    if (rc) {
        mpreg_value_free(next);
        return mp_client_error_set(err, rc, "out of memory");
    }
    if (next->type != MPREG_NIL && entries == 0) {
        mpreg_value_free(next);
        return mp_client_error_set(err, MPREG_E_DECODE,
                                   "the node's catalog page promises more but holds nothing");
    }
    return MPREG_OK;
}

mpreg_err mp_client_not_mpreg(mpreg_error *err, const uint8_t *first, size_t len, const char *why) {
    /* Printable ASCII as is, the rest escaped, at most 40 bytes' worth. */
    char quoted[40 * 4 + 8];
    size_t q = 0;
    for (size_t i = 0; first != NULL && i < len && i < 40; i++) {
        unsigned char b = first[i];
        if (b == '\r' || b == '\n') {
            q += (size_t)snprintf(quoted + q, sizeof quoted - q, "\\%c", b == '\r' ? 'r' : 'n');
        } else if (b >= 0x20 && b < 0x7f && b != '"' && b != '\\') {
            quoted[q++] = (char)b;
        } else {
            q += (size_t)snprintf(quoted + q, sizeof quoted - q, "\\x%02x", b);
        }
    }
    quoted[q] = '\0';
    if (first == NULL || len == 0) {
        return mp_client_error_set(err, MPREG_E_HANDSHAKE,
                                   "not an mpreg node: its answer to HELLO %s", why);
    }
    return mp_client_error_set(err, MPREG_E_HANDSHAKE,
                               "not an mpreg node: its answer to HELLO %s (it began \"%s\"%s)", why,
                               quoted, len > 40 ? "..." : "");
}

mpreg_err mp_client_error_from_rpc(mpreg_error *err, mp_rpc_error *e) {
    mpreg_err code = e->code ? e->code : MPREG_E_INTERNAL;
    if (err) {
        mpreg_error_free(err);
        err->code = code;
        const char *msg = mp_rpc_error_message(e);
        mp_cl_copy(err->message, sizeof err->message, msg, strlen(msg));
        if (e->command) {
            mp_cl_copy(err->command, sizeof err->command, e->command, strlen(e->command));
        }
        err->details = e->details;
        e->details = mpreg_nil();
    }
    mp_rpc_error_free(e);
    return code;
}

void mp_client_error_copy(mpreg_error *dst, const mpreg_error *src) {
    if (dst == NULL || src == NULL || dst == src) {
        return;
    }
    mpreg_error_free(dst);
    dst->code = src->code;
    memcpy(dst->message, src->message, sizeof dst->message);
    memcpy(dst->command, src->command, sizeof dst->command);
    if (mpreg_value_clone(&src->details, &dst->details) != MPREG_OK) {
        dst->details = mpreg_nil();
    }
}

mpreg_err mp_client_error_from_envelope(const mp_envelope *e, mpreg_error *err) {
    mpreg_value v = mpreg_nil();
    mp_rpc_error re = MP_RPC_ERROR_INIT;
    mpreg_err rc = mpreg_value_decode(e->payload.ptr, e->payload.len, NULL, &v);
    if (rc == MPREG_OK) {
        rc = mp_rpc_error_from_value(&v, &re);
    }
    mpreg_value_free(&v);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, MPREG_E_DECODE, "the node sent a malformed ERROR (%s)",
                                   mpreg_err_name(rc));
    }
    return mp_client_error_from_rpc(err, &re);
}

/* ==== frames ===================================================================== */

mpreg_err mp_client_frame(mp_buf *out, mp_rng *rng, const mp_client_msg *m, uint32_t max_frame,
                          mp_id *id) {
    mp_envelope env;
    mp_envelope_init(&env, m->kind);
    env.id = mp_id_new(rng);
    if (m->correlation) {
        env.correlation_id = *m->correlation;
    }
    if (m->topic) {
        env.topic = mp_str_c(m->topic);
    }
    env.deadline_ms = m->deadline_ms;
    env.payload = (mp_bytes){m->payload, m->payload_len};
    size_t start = mp_frame_begin(out);
    if (start == MP_FRAME_BEGIN_FAILED) {
        return MPREG_E_NOMEM;
    }
    mpreg_err err = mp_envelope_encode(&env, out);
    if (err != MPREG_OK) {
        out->len = start;
        return err;
    }
    err = mp_frame_end(out, start, max_frame);
    if (err == MPREG_OK && id) {
        *id = env.id;
    }
    return err;
}

/* ==== handshake ====================================================================== */

mpreg_err mp_client_hello_payload(const mpreg_client_options *opts, mpreg_bytes *out) {
    mpreg_value m = mpreg_map();
    mpreg_err err = mpreg_map_set(&m, "role", mpreg_str("client"));
    if (!err && opts && opts->name) {
        err = mpreg_map_set(&m, "name", mpreg_str(opts->name));
    }
    if (!err && opts && opts->token) {
        err = mpreg_map_set(&m, "token", mpreg_str(opts->token));
    }
    if (!err) {
        err = mpreg_value_encode(&m, out);
    }
    mpreg_value_free(&m);
    return err;
}

static void mp_cl_copy_field(const mpreg_value *map, const char *key, char *out, size_t cap) {
    const mpreg_value *v = mpreg_map_get(map, key);
    if (v && v->type == MPREG_STR) {
        mp_cl_copy(out, cap, v->u.str.ptr, v->u.str.len);
    }
}

mpreg_err mp_client_welcome_read(const mp_envelope *e, mp_client_welcome *w, mpreg_error *err) {
    memset(w, 0, sizeof *w);
    if (e->kind == MP_KIND_ERROR) {
        mpreg_err code = mp_client_error_from_envelope(e, err);
        if (code == MPREG_E_DECODE) {
            return mp_client_error_set(err, MPREG_E_HANDSHAKE, "the node refused the handshake");
        }
        return code;
    }
    if (e->kind != MP_KIND_WELCOME) {
        return mp_client_error_set(err, MPREG_E_HANDSHAKE, "expected WELCOME, the node sent %s",
                                   mp_kind_name(e->kind));
    }
    if (e->payload.len == 0) {
        return MPREG_OK;
    }
    mpreg_value v = mpreg_nil();
    if (mpreg_value_decode(e->payload.ptr, e->payload.len, NULL, &v) != MPREG_OK ||
        v.type != MPREG_MAP) {
        mpreg_value_free(&v);
        return mp_client_error_set(err, MPREG_E_HANDSHAKE, "malformed WELCOME payload");
    }
    mp_cl_copy_field(&v, "node", w->node, sizeof w->node);
    mp_cl_copy_field(&v, "name", w->name, sizeof w->name);
    mp_cl_copy_field(&v, "cluster", w->cluster, sizeof w->cluster);
    mp_cl_copy_field(&v, "server", w->server, sizeof w->server);
    const mpreg_value *mf = mpreg_map_get(&v, "max_frame");
    if (mf && mf->type == MPREG_INT && mf->u.i > 0) {
        w->max_frame =
            mf->u.i > (int64_t)MP_FRAME_LIMIT_MAX ? MP_FRAME_LIMIT_MAX : (uint32_t)mf->u.i;
    }
    mpreg_value_free(&v);
    return MPREG_OK;
}

/* ==== RPC ================================================================================ */

/* True when some string inside v (not a map key) is name or name.<path>. */
static bool mp_cl_mentions(const mpreg_value *v, const char *name, size_t nlen) {
    if (v == NULL) {
        return false;
    }
    switch (v->type) {
    case MPREG_STR:
        return v->u.str.len >= nlen && memcmp(v->u.str.ptr, name, nlen) == 0 &&
               (v->u.str.len == nlen || v->u.str.ptr[nlen] == '.');
    case MPREG_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++) {
            if (mp_cl_mentions(&v->u.arr.items[i], name, nlen)) {
                return true;
            }
        }
        return false;
    case MPREG_MAP:
        for (size_t i = 0; i < v->u.map.len; i++) {
            if (mp_cl_mentions(&v->u.map.items[i].val, name, nlen)) {
                return true;
            }
        }
        return false;
    default:
        return false;
    }
}

void mp_client_call_name(const char *fun, const mpreg_value *args, const mpreg_value *kwargs,
                         char *out, size_t cap) {
    /* The function's name reads best in the node's messages ("the deadline
     * passed while 'sleep' was still running"); names cannot hold '.'. */
    char base[64];
    size_t n = 0;
    for (const char *p = fun ? fun : ""; *p && n < sizeof base - 1 && n + 12 < cap; p++) {
        base[n++] = *p == '.' ? '_' : *p;
    }
    base[n] = '\0';
    snprintf(out, cap, "%s", n ? base : "call");
    for (unsigned i = 1; i != 0; i++) {
        size_t len = strlen(out);
        if (!mp_cl_mentions(args, out, len) && !mp_cl_mentions(kwargs, out, len)) {
            return;
        }
        snprintf(out, cap, "%s_%u", n ? base : "call", i);
    }
}

static mpreg_err mp_cl_set_clone(mpreg_value *map, const char *key, const mpreg_value *v) {
    mpreg_value copy;
    mpreg_err err = mpreg_value_clone(v, &copy);
    return err ? err : mpreg_map_set(map, key, copy);
}

static mpreg_err mp_cl_set_str(mpreg_value *map, const char *key, const char *s) {
    return s ? mpreg_map_set(map, key, mpreg_str(s)) : MPREG_OK;
}

static mpreg_err mp_cl_command_value(const char *fun, const char *name, const mpreg_value *args,
                                     const mpreg_value *kwargs, const mpreg_call_options *opts,
                                     mpreg_value *out) {
    mpreg_value cmd = mpreg_map();
    mpreg_err err = mpreg_map_set(&cmd, "name", mpreg_str(name));
    err = err ? err : mpreg_map_set(&cmd, "fun", mpreg_str(fun));
    if (!err && args) {
        err = mp_cl_set_clone(&cmd, "args", args);
    }
    if (!err && kwargs) {
        err = mp_cl_set_clone(&cmd, "kwargs", kwargs);
    }
    if (!err && opts && opts->locs_count) {
        mpreg_value locs = mpreg_array();
        for (size_t i = 0; i < opts->locs_count && !err; i++) {
            err = mpreg_array_push(&locs, mpreg_str(opts->locs[i] ? opts->locs[i] : ""));
        }
        err = err ? (mpreg_value_free(&locs), err) : mpreg_map_set(&cmd, "locs", locs);
    }
    if (!err && opts) {
        err = mp_cl_set_str(&cmd, "function_id", opts->function_id);
        err = err ? err : mp_cl_set_str(&cmd, "version", opts->version);
        err = err ? err : mp_cl_set_str(&cmd, "target_cluster", opts->target_cluster);
    }
    if (err) {
        mpreg_value_free(&cmd);
        return err;
    }
    *out = cmd;
    return MPREG_OK;
}

mpreg_err mp_client_call_payload(const char *fun, const mpreg_value *args,
                                 const mpreg_value *kwargs, const mpreg_call_options *opts,
                                 uint32_t timeout_ms, char *name, size_t name_cap, mpreg_bytes *out,
                                 mpreg_error *err) {
    if (fun == NULL || fun[0] == '\0') {
        return mp_client_error_set(err, MPREG_E_INVALID, "no function name");
    }
    if (args && args->type != MPREG_ARRAY) {
        return mp_client_error_set(err, MPREG_E_TYPE, "args must be an array, not %s",
                                   mpreg_type_name(args->type));
    }
    if (kwargs && kwargs->type != MPREG_MAP) {
        return mp_client_error_set(err, MPREG_E_TYPE, "kwargs must be a map, not %s",
                                   mpreg_type_name(kwargs->type));
    }
    mp_client_call_name(fun, args, kwargs, name, name_cap);
    mpreg_value cmd, list = mpreg_array();
    mpreg_err rc = mp_cl_command_value(fun, name, args, kwargs, opts, &cmd);
    rc = rc ? rc : mpreg_array_push(&list, cmd);
    if (rc) {
        mpreg_value_free(&list);
        return mp_client_error_set(err, rc, "cannot build the request: %s", mpreg_strerror(rc));
    }
    rc = mp_client_request_payload(&list, timeout_ms, out, err);
    mpreg_value_free(&list);
    if (rc && err) {
        err->command[0] = '\0'; /* the command's name is ours, not the caller's */
    }
    return rc;
}

mpreg_err mp_client_request_payload(const mpreg_value *commands, uint32_t timeout_ms,
                                    mpreg_bytes *out, mpreg_error *err) {
    if (commands == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no commands");
    }
    mp_rpc_request req = {0};
    mp_rpc_error re = MP_RPC_ERROR_INIT;
    mpreg_err rc = mp_rpc_commands_parse(commands, &req, &re);
    if (rc != MPREG_OK) {
        if (re.code == MPREG_OK) {
            re.code = rc;
        }
        return mp_client_error_from_rpc(err, &re);
    }
    if (req.count == 0) {
        mp_rpc_request_free(&req);
        return mp_client_error_set(err, MPREG_E_INVALID, "a request needs at least one command");
    }
    req.timeout_ms = timeout_ms;
    rc = mp_rpc_request_encode(&req, out);
    mp_rpc_request_free(&req);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "cannot encode the request: %s", mpreg_strerror(rc));
    }
    return MPREG_OK;
}

mpreg_err mp_client_reply_read(const mp_envelope *e, mpreg_value *out, mpreg_error *err) {
    *out = mpreg_nil();
    switch (e->kind) {
    case MP_KIND_ERROR:
        return mp_client_error_from_envelope(e, err);
    case MP_KIND_RPC_REPLY: {
        mp_rpc_outcome o = {0};
        mp_rpc_error re = MP_RPC_ERROR_INIT;
        mpreg_err rc = mp_rpc_reply_decode(e->payload.ptr, e->payload.len, &o, &re);
        if (rc != MPREG_OK) {
            mp_rpc_error_free(&re);
            return mp_client_error_set(err, MPREG_E_DECODE,
                                       "the node sent a malformed RPC_REPLY (%s)",
                                       mpreg_err_name(rc));
        }
        mp_rpc_error_free(&re);
        if (!o.ok) {
            rc = mp_client_error_from_rpc(err, &o.error);
            mp_rpc_outcome_free(&o);
            return rc;
        }
        *out = o.value;
        o.value = mpreg_nil();
        mp_rpc_outcome_free(&o);
        return MPREG_OK;
    }
    case MP_KIND_CONTROL_REPLY:
    case MP_KIND_OK:
    case MP_KIND_PONG:
        if (e->payload.len == 0) {
            return MPREG_OK;
        }
        if (mpreg_value_decode(e->payload.ptr, e->payload.len, NULL, out) != MPREG_OK) {
            return mp_client_error_set(err, MPREG_E_DECODE, "the node sent a malformed %s",
                                       mp_kind_name(e->kind));
        }
        return MPREG_OK;
    default:
        return mp_client_error_set(err, MPREG_E_KIND, "unexpected %s in answer to a request",
                                   mp_kind_name(e->kind));
    }
}

mpreg_err mp_client_call_result(mpreg_value *results, const char *name, mpreg_value *out,
                                mpreg_error *err) {
    *out = mpreg_nil();
    if (results->type == MPREG_MAP) {
        for (size_t i = 0; i < results->u.map.len; i++) {
            mpreg_kv *kv = &results->u.map.items[i];
            if (kv->key.u.str.len == strlen(name) && strcmp(kv->key.u.str.ptr, name) == 0) {
                *out = kv->val;
                kv->val = mpreg_nil();
                mpreg_value_free(results);
                return MPREG_OK;
            }
        }
    }
    mpreg_value_free(results);
    return mp_client_error_set(err, MPREG_E_DECODE, "the reply holds no result for the call");
}

/* ==== worker functions ======================================================================== */

static void mp_cl_function_free(mp_client_function *f) {
    free(f->name);
    free(f->function_id);
    free(f->version);
    mp_strlist_free(&f->resources);
    memset(f, 0, sizeof *f);
}

void mp_client_functions_free(mp_client_functions *fs) {
    if (fs == NULL) {
        return;
    }
    for (size_t i = 0; i < fs->len; i++) {
        mp_cl_function_free(&fs->items[i]);
    }
    free(fs->items);
    memset(fs, 0, sizeof *fs);
}

static bool mp_cl_function_is(const mp_client_function *f, const mpreg_worker_function *def,
                              const mp_semver *v) {
    return strcmp(f->name, def->name) == 0 && mp_cl_eq(f->function_id, def->function_id) &&
           mp_semver_cmp(&f->semver, v) == 0;
}

static mpreg_err mp_cl_function_check(const mpreg_worker_function *def, mp_semver *v,
                                      mpreg_error *err) {
    if (def == NULL || def->name == NULL || def->name[0] == '\0' || def->handler == NULL) {
        return mp_client_error_set(err, MPREG_E_INVALID, "a function needs a name and a handler");
    }
    if (strlen(def->name) > MP_RPC_MAX_NAME ||
        (def->function_id && strlen(def->function_id) > MP_RPC_MAX_NAME)) {
        return mp_client_error_set(err, MPREG_E_TOO_LARGE, "function name or id too long");
    }
    if (def->resource_count > MP_RPC_MAX_LOCS) {
        return mp_client_error_set(err, MPREG_E_TOO_LARGE, "more than %d resources",
                                   (int)MP_RPC_MAX_LOCS);
    }
    for (size_t i = 0; i < def->resource_count; i++) {
        const char *r = def->resources[i];
        if (r == NULL || r[0] == '\0' || strlen(r) > MP_RPC_MAX_NAME) {
            return mp_client_error_set(err, MPREG_E_INVALID, "resource %zu is empty or too long",
                                       i);
        }
    }
    const char *ver = def->version ? def->version : "0.0.0";
    const char *why = NULL;
    if (mp_semver_parse(ver, strlen(ver), v, &why) != MPREG_OK) {
        return mp_client_error_set(err, MPREG_E_BAD_SEMVER, "version '%s': %s", ver,
                                   why ? why : "does not parse");
    }
    return MPREG_OK;
}

mpreg_err mp_client_functions_add(mp_client_functions *fs, const mpreg_worker_function *def,
                                  mpreg_error *err) {
    mp_semver v;
    mpreg_err rc = mp_cl_function_check(def, &v, err);
    if (rc) {
        return rc;
    }
    for (size_t i = 0; i < fs->len; i++) {
        if (mp_cl_function_is(&fs->items[i], def, &v)) {
            return mp_client_error_set(err, MPREG_E_DUPLICATE, "'%s' is already registered",
                                       def->name);
        }
    }
    if (MP_VEC_GROW(fs->items, fs->cap, fs->len + 1, 4) != MPREG_OK) {
        return mp_client_error_set(err, MPREG_E_NOMEM, "out of memory");
    }
    mp_client_function f = {0};
    f.name = mp_strdup(def->name);
    f.function_id = def->function_id && def->function_id[0] ? mp_strdup(def->function_id) : NULL;
    f.version = mp_strdup(def->version ? def->version : "0.0.0");
    f.semver = v;
    f.handler = def->handler;
    f.ctx = def->ctx;
    bool ok = f.name && f.version && (f.function_id || !def->function_id || !def->function_id[0]);
    for (size_t i = 0; ok && i < def->resource_count; i++) {
        ok = mp_strlist_push(&f.resources, def->resources[i]) == MPREG_OK;
    }
    if (!ok) {
        mp_cl_function_free(&f);
        return mp_client_error_set(err, MPREG_E_NOMEM, "out of memory");
    }
    fs->items[fs->len++] = f;
    return MPREG_OK;
}

void mp_client_functions_remove(mp_client_functions *fs, const mpreg_worker_function *def) {
    mp_semver v;
    if (mp_cl_function_check(def, &v, NULL) != MPREG_OK) {
        return;
    }
    for (size_t i = fs->len; i-- > 0;) {
        if (mp_cl_function_is(&fs->items[i], def, &v)) {
            mp_cl_function_free(&fs->items[i]);
            memmove(&fs->items[i], &fs->items[i + 1], (fs->len - i - 1) * sizeof fs->items[0]);
            fs->len--;
            return;
        }
    }
}

mpreg_err mp_client_register_payload(const mpreg_worker_function *def, mpreg_bytes *out) {
    mpreg_value f = mpreg_map();
    mpreg_err err = mpreg_map_set(&f, "name", mpreg_str(def->name));
    if (!err && def->function_id && def->function_id[0]) {
        err = mpreg_map_set(&f, "function_id", mpreg_str(def->function_id));
    }
    err =
        err ? err : mpreg_map_set(&f, "version", mpreg_str(def->version ? def->version : "0.0.0"));
    if (!err && def->resource_count) {
        mpreg_value rs = mpreg_array();
        for (size_t i = 0; i < def->resource_count && !err; i++) {
            err = mpreg_array_push(&rs, mpreg_str(def->resources[i]));
        }
        err = err ? (mpreg_value_free(&rs), err) : mpreg_map_set(&f, "resources", rs);
    }
    mpreg_value list = mpreg_array(), top = mpreg_map();
    err = err ? (mpreg_value_free(&f), err) : mpreg_array_push(&list, f);
    err = err ? (mpreg_value_free(&list), err) : mpreg_map_set(&top, "functions", list);
    err = err ? err : mpreg_value_encode(&top, out);
    mpreg_value_free(&top);
    return err;
}

/* The function an invoke names: by name, function_id when given, and the
 * highest version that satisfies the invoke's version. NULL, with *code
 * saying why, when there is none. */
static mp_client_function *mp_cl_function_find(mp_client_functions *fs, const mp_rpc_invoke *inv,
                                               mpreg_err *code) {
    mp_semver_constraint c;
    mp_semver_constraint_any(&c);
    if (inv->version &&
        mp_semver_constraint_parse(inv->version, strlen(inv->version), &c, NULL) != MPREG_OK) {
        *code = MPREG_E_BAD_SEMVER;
        return NULL;
    }
    mp_client_function *best = NULL;
    bool named = false;
    for (size_t i = 0; i < fs->len; i++) {
        mp_client_function *f = &fs->items[i];
        if (strcmp(f->name, inv->fun) != 0 ||
            (inv->function_id && !mp_cl_eq(f->function_id, inv->function_id))) {
            continue;
        }
        named = true;
        if (mp_semver_satisfies(&c, &f->semver) &&
            (best == NULL || mp_semver_cmp(&f->semver, &best->semver) > 0)) {
            best = f;
        }
    }
    *code = best ? MPREG_OK : named ? MPREG_E_NO_VERSION : MPREG_E_NOT_FOUND;
    return best;
}

/* Runs f for inv and records the outcome in *o. */
static void mp_cl_function_run(mp_client_function *f, mp_rpc_invoke *inv, mp_rpc_outcome *o) {
    mpreg_value result = mpreg_nil();
    mpreg_error herr = {0};
    mpreg_err rc = f->handler(f->ctx, &inv->args, &inv->kwargs, &result, &herr);
    if (rc == MPREG_OK) {
        o->ok = true;
        o->value = result;
        mpreg_error_free(&herr);
        return;
    }
    mpreg_value_free(&result);
    if (rc < 100 || rc > 999) {
        rc = MPREG_E_HANDLER;
    }
    if (herr.message[0]) {
        mp_rpc_error_set(&o->error, rc, inv->command, "%s", herr.message);
    } else {
        mp_rpc_error_set(&o->error, rc, inv->command, "%s: %s", f->name, mpreg_strerror(rc));
    }
    o->error.details = herr.details;
    herr.details = mpreg_nil();
}

mpreg_err mp_client_functions_serve(mp_client_functions *fs, const mp_envelope *invoke,
                                    mpreg_bytes *out) {
    mp_rpc_invoke inv = {0};
    mp_rpc_outcome o = {0};
    mp_rpc_error re = MP_RPC_ERROR_INIT;
    mpreg_err rc = mp_rpc_invoke_decode(invoke->payload.ptr, invoke->payload.len, &inv, &re);
    if (rc != MPREG_OK) {
        if (re.code == MPREG_OK) {
            mp_rpc_error_set(&re, rc, NULL, "malformed RPC_INVOKE");
        }
        mp_rpc_error_move(&o.error, &re);
    } else if (invoke->deadline_ms && mp_sysclock_wall_ms() > invoke->deadline_ms) {
        mp_rpc_error_set(&o.error, MPREG_E_DEADLINE, inv.command, "deadline passed before '%s' ran",
                         inv.fun);
    } else {
        mpreg_err code;
        mp_client_function *f = mp_cl_function_find(fs, &inv, &code);
        if (f == NULL) {
            mp_rpc_error_set(&o.error, code, inv.command, "this worker has no function '%s'%s",
                             inv.fun, code == MPREG_E_NO_VERSION ? " in that version" : "");
        } else {
            mp_cl_function_run(f, &inv, &o);
        }
    }
    size_t before = out->len;
    rc = mp_rpc_result_encode(&o, out);
    if (rc != MPREG_OK && rc != MPREG_E_NOMEM) {
        /* A result the wire cannot carry (bad UTF-8, too deep, too big) is
         * the function's failure, and the caller deserves to hear it. */
        out->len = before;
        mp_rpc_outcome_free(&o);
        o = (mp_rpc_outcome){0};
        mp_rpc_error_set(&o.error, rc, inv.command, "the result of '%s' cannot be sent: %s",
                         inv.fun ? inv.fun : "?", mpreg_strerror(rc));
        rc = mp_rpc_result_encode(&o, out);
    }
    mp_rpc_outcome_free(&o);
    mp_rpc_error_free(&re);
    mp_rpc_invoke_free(&inv);
    return rc == MPREG_OK ? MPREG_OK : MPREG_E_NOMEM;
}

/* ==== pub/sub ========================================================================== */

void mp_client_subs_free(mp_client_subs *s) {
    if (s) {
        free(s->items);
        memset(s, 0, sizeof *s);
    }
}

mpreg_err mp_client_subs_add(mp_client_subs *s, uint64_t id, mpreg_message_cb cb, void *ud) {
    if (MP_VEC_GROW(s->items, s->cap, s->len + 1, 4) != MPREG_OK) {
        return MPREG_E_NOMEM;
    }
    s->items[s->len++] = (mp_client_sub){id, cb, ud};
    return MPREG_OK;
}

bool mp_client_subs_remove(mp_client_subs *s, uint64_t id) {
    for (size_t i = 0; i < s->len; i++) {
        if (s->items[i].id == id) {
            memmove(&s->items[i], &s->items[i + 1], (s->len - i - 1) * sizeof s->items[0]);
            s->len--;
            return true;
        }
    }
    return false;
}

const mp_client_sub *mp_client_subs_find(const mp_client_subs *s, uint64_t id) {
    for (size_t i = 0; i < s->len; i++) {
        if (s->items[i].id == id) {
            return &s->items[i];
        }
    }
    return NULL;
}

mp_client_sub *mp_client_subs_find_mut(mp_client_subs *s, uint64_t id) {
    return (mp_client_sub *)mp_client_subs_find(s, id);
}

mpreg_err mp_client_subscribe_payload(const char *const *patterns, size_t n,
                                      const mpreg_subscribe_options *opts, mp_buf *out,
                                      mpreg_error *err) {
    if (patterns == NULL || n == 0) {
        return mp_client_error_set(err, MPREG_E_INVALID, "no pattern to subscribe to");
    }
    if (n > MP_PUBSUB_MAX_PATTERNS) {
        return mp_client_error_set(err, MPREG_E_TOO_LARGE, "more than %d patterns",
                                   MP_PUBSUB_MAX_PATTERNS);
    }
    mp_pubsub_subscribe_payload p;
    memset(&p, 0, sizeof p);
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        const char *pat = patterns[i] ? patterns[i] : "";
        if (mp_pattern_validate(pat, strlen(pat), &why) != MPREG_OK) {
            return mp_client_error_set(err, MPREG_E_TOPIC, "pattern '%s': %s", pat,
                                       why ? why : "invalid");
        }
        p.patterns[i] = mp_str_c(pat);
    }
    p.pattern_count = n;
    if (opts && opts->group) {
        p.group = mp_str_c(opts->group);
    }
    if (opts && opts->replay_last) {
        p.replay.has_last = true;
        p.replay.last = opts->replay_last;
    }
    if (opts && (opts->has_replay_since || opts->replay_since_ms)) {
        p.replay.has_since = true;
        p.replay.since_ms = opts->replay_since_ms;
    }
    p.storage = mpreg_nil();
    mpreg_err rc = mp_pubsub_subscribe_encode(&p, out);
    if (rc != MPREG_OK) {
        return mp_client_error_set(err, rc, "cannot encode the subscription: %s",
                                   mpreg_strerror(rc));
    }
    return MPREG_OK;
}

mpreg_err mp_client_check_topic(const char *topic, mpreg_error *err) {
    const char *why = NULL;
    const char *t = topic ? topic : "";
    if (mp_topic_validate(t, strlen(t), &why) != MPREG_OK) {
        return mp_client_error_set(err, MPREG_E_TOPIC, "topic '%s': %s", t, why ? why : "invalid");
    }
    return MPREG_OK;
}

mpreg_err mp_client_message_read(const mp_envelope *e, char topic_buf[MP_MAX_TOPIC_LEN + 1],
                                 mpreg_message *msg) {
    memset(msg, 0, sizeof *msg);
    mp_str tag;
    mpreg_err rc = mp_pubsub_deliver_parse(e, &msg->subscription, &tag);
    if (rc != MPREG_OK) {
        return rc;
    }
    mp_cl_copy(topic_buf, MP_MAX_TOPIC_LEN + 1, e->topic.ptr, e->topic.len);
    msg->topic = topic_buf;
    msg->topic_len = e->topic.len > MP_MAX_TOPIC_LEN ? MP_MAX_TOPIC_LEN : e->topic.len;
    msg->data = e->payload.len ? (const void *)e->payload.ptr : (const void *)"";
    msg->len = e->payload.len;
    msg->replay = mp_str_eq_c(mp_envelope_header(e, "replay"), "1");
    (void)mp_pubsub_deliver_missed(e, &msg->missed); /* unreadable: 0 */
    mp_id_to_hex(&e->id, msg->id);
    return MPREG_OK;
}

/* ==== command-line helpers ======================================================================
 */

mpreg_err mp_client_arg_value(const char *arg, mpreg_value *out, char *errbuf, size_t errbuf_len) {
    const char *a = arg ? arg : "";
    bool is_json = false;
    mpreg_err rc = mp_value_from_json_exact(a, strlen(a), out, &is_json, errbuf, errbuf_len);
    if (rc == MPREG_OK || is_json) {
        return rc;
    }
    *out = mpreg_str(a);
    return out->type == MPREG_STR ? MPREG_OK : MPREG_E_NOMEM;
}

mpreg_err mp_client_kw_arg(const char *arg, mpreg_value *map, char *errbuf, size_t errbuf_len) {
    const char *eq = arg ? strchr(arg, '=') : NULL;
    if (eq == NULL || eq == arg) {
        if (errbuf && errbuf_len) {
            snprintf(errbuf, errbuf_len, "expected KEY=VALUE, got '%s'", arg ? arg : "");
        }
        return MPREG_E_INVALID;
    }
    mpreg_value v;
    char why[256] = "";
    mpreg_err rc = mp_client_arg_value(eq + 1, &v, why, sizeof why);
    if (rc == MPREG_OK) {
        rc = mpreg_map_setn(map, arg, (size_t)(eq - arg), v);
    }
    if (rc != MPREG_OK && errbuf && errbuf_len) {
        snprintf(errbuf, errbuf_len, "keyword '%.*s': %s", (int)(eq - arg), arg,
                 why[0] ? why : mpreg_strerror(rc));
    }
    return rc;
}

mpreg_err mp_client_message_value(const mpreg_message *msg, mpreg_value *out) {
    mpreg_value m = mpreg_map();
    mpreg_value data = mpreg_utf8_valid(msg->data, msg->len) ? mpreg_strn(msg->data, msg->len)
                                                             : mpreg_bin(msg->data, msg->len);
    mpreg_err rc = mpreg_map_set(&m, "topic", mpreg_strn(msg->topic, msg->topic_len));
    rc = rc ? (mpreg_value_free(&data), rc) : mpreg_map_set(&m, "data", data);
    rc = rc ? rc : mpreg_map_set(&m, "subscription", mpreg_int((int64_t)msg->subscription));
    if (!rc && msg->replay) {
        rc = mpreg_map_set(&m, "replay", mpreg_bool(true));
    }
    if (!rc && msg->missed) {
        uint64_t missed = msg->missed > INT64_MAX ? INT64_MAX : msg->missed;
        rc = mpreg_map_set(&m, "missed", mpreg_int((int64_t)missed));
    }
    if (rc) {
        mpreg_value_free(&m);
        return rc;
    }
    *out = m;
    return MPREG_OK;
}

mpreg_err mp_client_split_list(const char *text, mpreg_value *out) {
    mpreg_value arr = mpreg_array();
    const char *p = text ? text : "";
    mpreg_err rc = MPREG_OK;
    while (*p && !rc) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n) {
            rc = mpreg_array_push(&arr, mpreg_strn(p, n));
        }
        p += n + (comma ? 1 : 0);
    }
    if (rc) {
        mpreg_value_free(&arr);
        return rc;
    }
    *out = arr;
    return MPREG_OK;
}
