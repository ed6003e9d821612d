/* value_json.c - values to and from JSON, through jansson.
 *
 * JSON is for people (the CLI, config files), so both directions go through
 * a jansson tree and let jansson own the text rules. What is ours is the
 * mapping: BIN travels as {"$bin": "<base64>"}, non-finite floats become
 * null, and integers keep being integers as long as int64 can hold them. */
#include "mpreg/value.h"

#include "core/buf.h"
#include "core/value_json.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_BIN_KEY "$bin"
#define MP_BIN_KEY_LEN 4

/* --- base64 (RFC 4648, standard alphabet, padded) ------------------------- */

static const char mp_b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Returns a malloc'd base64 text of p[0..len) and its length, or NULL. */
static char *mp_b64_encode(const uint8_t *p, size_t len, size_t *outlen) {
    if (len / 3 >= SIZE_MAX / 4 - 1) {
        return NULL;
    }
    size_t n = (len + 2) / 3 * 4;
    char *out = malloc(n + 1);
    if (!out) {
        return NULL;
    }
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = mp_b64_chars[v >> 18];
        *o++ = mp_b64_chars[(v >> 12) & 63];
        *o++ = mp_b64_chars[(v >> 6) & 63];
        *o++ = mp_b64_chars[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = mp_b64_chars[v >> 18];
        *o++ = mp_b64_chars[(v >> 12) & 63];
        *o++ = i + 1 < len ? mp_b64_chars[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    *outlen = n;
    return out;
}

static int mp_b64_digit(unsigned char c) {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Strict decoding: padded to a multiple of 4, no whitespace, and the unused
 * bits of the last group zero, so every binary has exactly one text form. */
static mpreg_err mp_b64_decode(const char *s, size_t len, mpreg_value *out) {
    if (len % 4) {
        return MPREG_E_JSON;
    }
    size_t pad = 0;
    if (len && s[len - 1] == '=') {
        pad = s[len - 2] == '=' ? 2 : 1;
    }
    size_t n = len / 4 * 3 - pad;
    uint8_t *buf = n ? malloc(n) : NULL;
    if (n && !buf) {
        return MPREG_E_NOMEM;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        bool last = i + 4 == len;
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            int d = last && k >= 4 - pad ? 0 : mp_b64_digit((unsigned char)s[i + k]);
            if (d < 0) {
                free(buf);
                return MPREG_E_JSON;
            }
            v = v << 6 | (uint32_t)d;
        }
        uint8_t group[3] = {(uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
        size_t take = last ? 3 - pad : 3;
        /* Bits the padding says are unused must be zero. */
        if (take < 3 && group[take] != 0) {
            free(buf);
            return MPREG_E_JSON;
        }
        memcpy(buf + o, group, take);
        o += take;
    }
    *out = (mpreg_value){.type = MPREG_BIN, .u.bin = {buf, n}};
    return MPREG_OK;
}

/* --- value -> JSON -------------------------------------------------------- */

/* jansson insists on valid UTF-8, and a locally built string need not be.
 * Replace each bad byte by U+FFFD into tmp rather than fail the whole
 * rendering: JSON output is for reading. Returns false on out-of-memory. */
static bool mp_utf8_fix(const char *s, size_t len, mp_buf *tmp, const char **p, size_t *n) {
    *p = s;
    *n = len;
    if (mpreg_utf8_valid(s, len)) {
        return true;
    }
    mp_buf_clear(tmp);
    for (size_t i = 0; i < len;) {
        /* The shortest valid run from a byte is exactly one code point. */
        size_t k = 1;
        while (k <= 4 && (i + k > len || !mpreg_utf8_valid(s + i, k))) {
            k++;
        }
        bool ok = k <= 4;
        mpreg_err err = ok ? mp_buf_append(tmp, s + i, k) : mp_buf_append(tmp, "\xef\xbf\xbd", 3);
        if (err) {
            return false;
        }
        i += ok ? k : 1;
    }
    *p = (const char *)tmp->data;
    *n = tmp->len;
    return true;
}

static json_t *mp_json_string(const char *s, size_t len, mp_buf *tmp) {
    const char *p;
    size_t n;
    if (!mp_utf8_fix(s, len, tmp, &p, &n)) {
        return NULL;
    }
    return json_stringn_nocheck(p, n);
}

static json_t *mp_json_bin(const mpreg_value *v) {
    size_t n;
    char *text = mp_b64_encode(v->u.bin.ptr, v->u.bin.len, &n);
    json_t *obj = json_object();
    json_t *str = text ? json_stringn_nocheck(text, n) : NULL;
    free(text);
    if (!obj || !str) {
        json_decref(obj);
        json_decref(str);
        return NULL;
    }
    /* The _new setters take the reference even when they fail. */
    if (json_object_setn_new_nocheck(obj, MP_BIN_KEY, MP_BIN_KEY_LEN, str)) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

static json_t *mp_to_json(const mpreg_value *v, mp_buf *tmp);

static json_t *mp_json_map(const mpreg_value *v, mp_buf *tmp) {
    json_t *obj = json_object();
    for (size_t i = 0; obj && i < v->u.map.len; i++) {
        const mpreg_kv *kv = &v->u.map.items[i];
        json_t *val = mp_to_json(&kv->val, tmp);
        const char *k;
        size_t klen;
        /* The key is fixed after the value: both may use tmp. */
        bool ok = val && mp_utf8_fix(kv->key.u.str.ptr, kv->key.u.str.len, tmp, &k, &klen);
        if (!ok) {
            json_decref(val);
        }
        /* json_object_setn_new_nocheck takes val even when it fails. */
        if (!ok || json_object_setn_new_nocheck(obj, k, klen, val)) {
            json_decref(obj);
            obj = NULL;
        }
    }
    return obj;
}

static json_t *mp_to_json(const mpreg_value *v, mp_buf *tmp) {
    switch (v->type) {
    case MPREG_NIL:
        return json_null();
    case MPREG_BOOL:
        return json_boolean(v->u.b);
    case MPREG_INT:
        return json_integer(v->u.i);
    case MPREG_FLOAT:
        /* JSON has no NaN or infinities. */
        return isfinite(v->u.f) ? json_real(v->u.f) : json_null();
    case MPREG_STR:
        return mp_json_string(v->u.str.ptr, v->u.str.len, tmp);
    case MPREG_BIN:
        return mp_json_bin(v);
    case MPREG_ARRAY: {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < v->u.arr.len; i++) {
            json_t *item = mp_to_json(&v->u.arr.items[i], tmp);
            if (!item || json_array_append_new(arr, item)) {
                json_decref(arr);
                arr = NULL;
            }
        }
        return arr;
    }
    case MPREG_MAP:
        return mp_json_map(v, tmp);
    }
    return NULL;
}

static int mp_json_write(const char *data, size_t len, void *buf) {
    return mp_buf_append(buf, data, len) == MPREG_OK ? 0 : -1;
}

char *mpreg_value_to_json(const mpreg_value *v, bool pretty) {
    mp_buf tmp = MP_BUF_INIT;
    json_t *root = mp_to_json(v, &tmp);
    mp_buf_free(&tmp);
    if (!root) {
        return NULL;
    }
    /* Dump through our own buffer so the result is plain malloc memory
     * whatever allocator jansson was configured with. */
    size_t flags = JSON_ENCODE_ANY | JSON_PRESERVE_ORDER | (pretty ? JSON_INDENT(2) : JSON_COMPACT);
    mp_buf out = MP_BUF_INIT;
    int rc = json_dump_callback(root, mp_json_write, &out, flags);
    json_decref(root);
    if (rc != 0 || mp_buf_append(&out, "", 1) != MPREG_OK) {
        mp_buf_free(&out);
        return NULL;
    }
    return (char *)out.data;
}

/* --- JSON -> value -------------------------------------------------------- */

static void mp_errf(char *errbuf, size_t errbuf_len, const char *msg) {
    if (errbuf && errbuf_len) {
        snprintf(errbuf, errbuf_len, "%s", msg);
    }
}

static mpreg_err mp_from_json(const json_t *j, mpreg_value *out, uint32_t depth, char *errbuf,
                              size_t errbuf_len);

static mpreg_err mp_container_start(uint32_t depth, char *errbuf, size_t errbuf_len) {
    if (depth >= MPREG_VALUE_DEFAULT_DEPTH) {
        mp_errf(errbuf, errbuf_len, "nesting deeper than 32 levels");
        return MPREG_E_TOO_DEEP;
    }
    return MPREG_OK;
}

static mpreg_err mp_object_from_json(const json_t *j, mpreg_value *out, uint32_t depth,
                                     char *errbuf, size_t errbuf_len) {
    const json_t *bin = json_object_getn(j, MP_BIN_KEY, MP_BIN_KEY_LEN);
    if (bin && json_object_size(j) == 1) {
        mpreg_err err = MPREG_E_JSON;
        if (json_is_string(bin)) {
            err = mp_b64_decode(json_string_value(bin), json_string_length(bin), out);
        }
        if (err == MPREG_E_JSON) {
            mp_errf(errbuf, errbuf_len, "$bin: expected a padded base64 string");
        }
        return err;
    }
    mpreg_err err = mp_container_start(depth, errbuf, errbuf_len);
    if (err) {
        return err;
    }
    size_t n = json_object_size(j);
    *out = mpreg_map();
    if (n == 0) {
        return MPREG_OK;
    }
    out->u.map.items = calloc(n, sizeof(mpreg_kv));
    if (!out->u.map.items) {
        return MPREG_E_NOMEM;
    }
    out->u.map.cap = n;
    const char *key;
    size_t klen;
    json_t *val;
    /* jansson keeps keys unique (we load with JSON_REJECT_DUPLICATES) and in
     * document order, so entries go straight in. */
    json_object_keylen_foreach((json_t *)j, key, klen, val) {
        mpreg_kv *kv = &out->u.map.items[out->u.map.len++];
        kv->key = mpreg_strn(key, klen);
        if (kv->key.type != MPREG_STR) {
            return MPREG_E_NOMEM;
        }
        err = mp_from_json(val, &kv->val, depth + 1, errbuf, errbuf_len);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

static mpreg_err mp_array_from_json(const json_t *j, mpreg_value *out, uint32_t depth, char *errbuf,
                                    size_t errbuf_len) {
    mpreg_err err = mp_container_start(depth, errbuf, errbuf_len);
    if (err) {
        return err;
    }
    size_t n = json_array_size(j);
    *out = mpreg_array();
    if (n == 0) {
        return MPREG_OK;
    }
    out->u.arr.items = calloc(n, sizeof(mpreg_value));
    if (!out->u.arr.items) {
        return MPREG_E_NOMEM;
    }
    out->u.arr.cap = n;
    for (size_t i = 0; i < n && !err; i++) {
        out->u.arr.len = i + 1;
        err =
            mp_from_json(json_array_get(j, i), &out->u.arr.items[i], depth + 1, errbuf, errbuf_len);
    }
    return err;
}

/* depth = containers around j. On error *out may be partly built. */
static mpreg_err mp_from_json(const json_t *j, mpreg_value *out, uint32_t depth, char *errbuf,
                              size_t errbuf_len) {
    *out = mpreg_nil();
    switch (json_typeof(j)) {
    case JSON_NULL:
        return MPREG_OK;
    case JSON_TRUE:
        *out = mpreg_bool(true);
        return MPREG_OK;
    case JSON_FALSE:
        *out = mpreg_bool(false);
        return MPREG_OK;
    case JSON_INTEGER:
        *out = mpreg_int(json_integer_value(j));
        return MPREG_OK;
    case JSON_REAL:
        *out = mpreg_float(json_real_value(j));
        return MPREG_OK;
    case JSON_STRING:
        *out = mpreg_strn(json_string_value(j), json_string_length(j));
        return out->type == MPREG_STR ? MPREG_OK : MPREG_E_NOMEM;
    case JSON_ARRAY:
        return mp_array_from_json(j, out, depth, errbuf, errbuf_len);
    case JSON_OBJECT:
        return mp_object_from_json(j, out, depth, errbuf, errbuf_len);
    }
    return MPREG_E_INTERNAL;
}

/* True when the integer token t[0..len) ("-"? digits) fits in int64. */
static bool mp_int_token_fits(const char *t, size_t len) {
    bool neg = t[0] == '-';
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t acc = 0;
    for (size_t i = neg; i < len; i++) {
        uint64_t d = (uint64_t)(t[i] - '0');
        if (acc > (limit - d) / 10) {
            return false;
        }
        acc = acc * 10 + d;
    }
    return true;
}

static bool mp_is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* Copies text into out with ".0" after every integer too big for int64
 * (jansson refuses those, we want them as FLOAT), recording in ins where
 * each insertion starts in out. Strings are copied untouched. */
static mpreg_err mp_json_widen(const char *text, size_t len, mp_buf *out, mp_buf *ins) {
    bool in_str = false;
    mpreg_err err = MPREG_OK;
    for (size_t i = 0; i < len && !err;) {
        size_t j = i + 1;
        char c = text[i];
        if (in_str) {
            if (c == '\\' && j < len) {
                j++;
            }
            in_str = c != '"';
        } else if (c == '"') {
            in_str = true;
        } else if (c == '-' || mp_is_digit(c)) {
            bool integer = true;
            while (j < len && (mp_is_digit(text[j]) || (text[j] && strchr(".eE+-", text[j])))) {
                integer = integer && mp_is_digit(text[j]);
                j++;
            }
            if (integer && j - i > (c == '-') && !mp_int_token_fits(text + i, j - i)) {
                err = mp_buf_append(out, text + i, j - i);
                size_t at = out->len;
                if (!err) {
                    err = mp_buf_append(ins, &at, sizeof at);
                }
                if (!err) {
                    err = mp_buf_append(out, ".0", 2);
                }
                i = j;
                continue;
            }
        }
        err = mp_buf_append(out, text + i, j - i);
        i = j;
    }
    return err;
}

/* jansson-style position: line from 1, column in characters on the line. */
static void mp_json_locate(const char *text, size_t pos, json_error_t *e) {
    int line = 1, col = 0;
    for (size_t i = 0; i < pos; i++) {
        if (text[i] == '\n') {
            line++, col = 0;
        } else if (((unsigned char)text[i] & 0xc0) != 0x80) {
            col++;
        }
    }
    e->line = line;
    e->column = col;
    e->position = (int)pos;
}

static json_t *mp_json_load_widened(const char *text, size_t len, size_t flags, json_error_t *e) {
    mp_buf wide = MP_BUF_INIT, ins = MP_BUF_INIT;
    json_t *root = NULL;
    if (mp_json_widen(text, len, &wide, &ins) == MPREG_OK) {
        root = json_loadb((const char *)wide.data, wide.len, flags, e);
        if (!root && e->position >= 0) {
            /* Report where the error is in the text we were given. */
            size_t pos = (size_t)e->position, shift = 0;
            const size_t *at = (const size_t *)ins.data;
            for (size_t i = 0; i < ins.len / sizeof *at && at[i] < pos; i++) {
                shift += pos - at[i] < 2 ? pos - at[i] : 2;
            }
            mp_json_locate(text, pos - shift > len ? len : pos - shift, e);
        }
    }
    mp_buf_free(&wide);
    mp_buf_free(&ins);
    return root;
}

mpreg_err mpreg_value_from_json(const char *text, size_t len, mpreg_value *out, char *errbuf,
                                size_t errbuf_len) {
    *out = mpreg_nil();
    mp_errf(errbuf, errbuf_len, "");
    if (!text && len) {
        return MPREG_E_INVALID;
    }
    json_error_t e;
    size_t flags = JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES;
    json_t *root = json_loadb(text ? text : "", len, flags, &e);
    if (!root && json_error_code(&e) == json_error_numeric_overflow) {
        root = mp_json_load_widened(text, len, flags, &e);
    }
    if (!root) {
        if (errbuf && errbuf_len) {
            snprintf(errbuf, errbuf_len, "line %d column %d: %s", e.line, e.column, e.text);
        }
        switch (json_error_code(&e)) {
        case json_error_out_of_memory:
            return MPREG_E_NOMEM;
        case json_error_stack_overflow:
            return MPREG_E_TOO_DEEP;
        default:
            return MPREG_E_JSON;
        }
    }
    mpreg_err err = mp_from_json(root, out, 0, errbuf, errbuf_len);
    json_decref(root);
    if (err) {
        mpreg_value_free(out);
    }
    return err;
}

/* jansson's failure, as mp_value_from_json_exact reports it. */
static mpreg_err mp_exact_refusal(const json_error_t *e, bool *is_json, char *errbuf,
                                  size_t errbuf_len) {
    *is_json = true;
    switch (json_error_code(e)) {
    case json_error_numeric_overflow:
        if (errbuf && errbuf_len) {
            snprintf(errbuf, errbuf_len,
                     "number out of range (line %d column %d): an integer must be within int64 "
                     "(-9223372036854775808 to 9223372036854775807), any other number within "
                     "a double (about 1.8e308)",
                     e->line, e->column);
        }
        return MPREG_E_RANGE;
    case json_error_duplicate_key:
    case json_error_null_byte_in_key:
        if (errbuf && errbuf_len) {
            snprintf(errbuf, errbuf_len, "%s (line %d column %d)", e->text, e->line, e->column);
        }
        return MPREG_E_JSON;
    case json_error_stack_overflow:
        mp_errf(errbuf, errbuf_len, "nesting deeper than 32 levels");
        return MPREG_E_TOO_DEEP;
    case json_error_out_of_memory:
        mp_errf(errbuf, errbuf_len, "out of memory");
        return MPREG_E_NOMEM;
    default:
        *is_json = false;
        if (errbuf && errbuf_len) {
            snprintf(errbuf, errbuf_len, "line %d column %d: %s", e->line, e->column, e->text);
        }
        return MPREG_E_JSON;
    }
}

mpreg_err mp_value_from_json_exact(const char *text, size_t len, mpreg_value *out, bool *is_json,
                                   char *errbuf, size_t errbuf_len) {
    *out = mpreg_nil();
    *is_json = false;
    mp_errf(errbuf, errbuf_len, "");
    json_error_t e;
    /* No widening: an integer jansson cannot hold is out of range here. */
    size_t flags = JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES;
    json_t *root = json_loadb(text ? text : "", text ? len : 0, flags, &e);
    if (!root) {
        return mp_exact_refusal(&e, is_json, errbuf, errbuf_len);
    }
    *is_json = true;
    mpreg_err err = mp_from_json(root, out, 0, errbuf, errbuf_len);
    json_decref(root);
    if (err) {
        mpreg_value_free(out);
    }
    return err;
}
