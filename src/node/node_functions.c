/* node_functions.c - the functions this node runs, and how the fabric
 * learns about them.
 *
 * A function is local when something on this node can run it: an
 * in-process function (built-in, plugin, embedder; registry.c) or a worker,
 * a client connection that sent REGISTER. Each distinct (name, function_id,
 * version) is one catalog entry of this node, whoever provides it and
 * however many do: it is advertised when its first provider arrives,
 * re-advertised when the union of its providers' resources changes, and
 * withdrawn when its last provider leaves (a worker disconnecting or
 * sending UNREGISTER).
 *
 * Which provider runs a call is decided here, not by the catalog: the one
 * with every requested resource that has the fewest calls in flight,
 * in-process before workers on a tie, then the first registered. */
#include "node/node_internal.h"

#include "fabric/semver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_FN_KEY_MAX (3 * (MP_ENTRY_MAX_STR + 1))

/* name \0 function_id \0 version: unambiguous, as none of them holds a NUL. */
static size_t mp_fn_key(char out[MP_FN_KEY_MAX], const char *name, const char *function_id,
                        const char *version) {
    const char *parts[3] = {name, function_id ? function_id : "", version};
    size_t len = 0;
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(parts[i]);
        if (l > MP_ENTRY_MAX_STR) {
            return 0;
        }
        memcpy(out + len, parts[i], l + 1);
        len += l + 1;
    }
    return len;
}

mp_local_fn *mp_functions_find(mp_node *n, const char *name, const char *function_id,
                               const char *version) {
    char key[MP_FN_KEY_MAX];
    size_t len = mp_fn_key(key, name, function_id, version);
    return len ? mp_map_get(&n->functions, key, len) : NULL;
}

static void mp_local_free(void *v) {
    mp_local_fn *f = v;
    while (!mp_list_empty(&f->providers)) {
        mp_provider *p = MP_CONTAINER(f->providers.next, mp_provider, link);
        mp_list_remove(&p->link);
        mp_strlist_free(&p->resources);
        free(p);
    }
    mp_strlist_free(&f->advertised);
    free(f->name);
    free(f->function_id);
    free(f->version);
    free(f);
}

void mp_functions_free_all(mp_node *n) {
    mp_map_free(&n->functions, mp_local_free);
}

/* --- the catalog side ------------------------------------------------------ */

static mpreg_err mp_local_entry(const mp_node *n, const mp_local_fn *f, mp_entry *e) {
    return mp_entry_function(e, n->node_id, n->cluster, f->name, f->function_id, f->version);
}

static bool mp_strlist_same(const mp_strlist *a, const mp_strlist *b) {
    if (a->count != b->count) {
        return false;
    }
    for (uint32_t i = 0; i < a->count; i++) {
        if (strcmp(a->items[i], b->items[i]) != 0) {
            return false;
        }
    }
    return true;
}

/* Advertises f with the union of its providers' resources, unless the
 * catalog already has exactly that (force for a new entry). */
static mpreg_err mp_local_advertise(mp_node *n, mp_local_fn *f, bool force) {
    mp_strlist all = {0};
    mpreg_err err = MPREG_OK;
    for (mp_link *l = f->providers.next; l != &f->providers && !err; l = l->next) {
        err = mp_strlist_union_into(&all, &MP_CONTAINER(l, mp_provider, link)->resources);
    }
    if (!err && all.count > MP_ENTRY_MAX_RESOURCES) {
        /* An entry holds at most 32: the rest cannot be asked for remotely. */
        mp_node_log(n, MP_LOG_WARN, "function %s: providers have %u resources, advertising 32",
                    f->name, all.count);
        while (all.count > MP_ENTRY_MAX_RESOURCES) {
            free(all.items[--all.count]);
        }
    }
    if (!err && (force || !mp_strlist_same(&all, &f->advertised))) {
        mp_entry e;
        err = mp_local_entry(n, f, &e);
        err = err ? err : mp_strlist_append(&e.u.function.resources, &all);
        err = err ? err : mp_node_advertise(n, &e);
        mp_entry_free(&e);
        if (!err) {
            mp_strlist_free(&f->advertised);
            f->advertised = all;
            all = (mp_strlist){0};
        }
    }
    mp_strlist_free(&all);
    return err;
}

static void mp_local_withdraw(mp_node *n, mp_local_fn *f) {
    mp_entry e;
    if (mp_local_entry(n, f, &e) == MPREG_OK) {
        e.withdrawn = true;
        mp_node_advertise(n, &e);
        mp_entry_free(&e);
    }
}

/* --- providers ------------------------------------------------------------- */

static mp_local_fn *mp_local_create(mp_node *n, const char *key, size_t klen, const char *name,
                                    const char *function_id, const char *version) {
    mp_local_fn *f = calloc(1, sizeof *f);
    if (!f) {
        return NULL;
    }
    mp_list_init(&f->providers);
    f->name = mp_strdup(name);
    f->function_id = mp_strdup(function_id);
    f->version = mp_strdup(version);
    if (!f->name || !f->function_id || !f->version ||
        mp_map_put(&n->functions, key, klen, f, NULL)) {
        mp_local_free(f);
        return NULL;
    }
    return f;
}

static bool mp_local_has_inprocess(const mp_local_fn *f) {
    for (const mp_link *l = f->providers.next; l != &f->providers; l = l->next) {
        if (MP_CONTAINER(l, mp_provider, link)->conn == 0) {
            return true;
        }
    }
    return false;
}

/* Forgets f entirely (its last provider is gone). */
static void mp_local_drop(mp_node *n, mp_local_fn *f) {
    char key[MP_FN_KEY_MAX];
    size_t len = mp_fn_key(key, f->name, f->function_id, f->version);
    mp_map_remove(&n->functions, key, len);
    mp_local_free(f);
}

mpreg_err mp_functions_add(mp_node *n, const char *name, const char *function_id,
                           const char *version, const mp_strlist *resources, uint64_t conn,
                           mpreg_function fn, void *ctx, mp_provider **out) {
    function_id = function_id ? function_id : "";
    char key[MP_FN_KEY_MAX];
    size_t klen = mp_fn_key(key, name, function_id, version);
    if (!klen) {
        return MPREG_E_TOO_LARGE;
    }
    mp_local_fn *f = mp_map_get(&n->functions, key, klen);
    bool created = f == NULL;
    if (f && conn == 0 && mp_local_has_inprocess(f)) {
        return MPREG_E_DUPLICATE;
    }
    if (!f && !(f = mp_local_create(n, key, klen, name, function_id, version))) {
        return MPREG_E_NOMEM;
    }
    mp_provider *p = calloc(1, sizeof *p);
    mpreg_err err = p ? mp_strlist_append(&p->resources, resources) : MPREG_E_NOMEM;
    if (!err) {
        p->local = f;
        p->conn = conn;
        p->fn = fn;
        p->ctx = ctx;
        mp_list_init(&p->conn_link);
        mp_list_push(&f->providers, &p->link);
        f->provider_count++;
        err = mp_local_advertise(n, f, created);
        if (err) {
            mp_list_remove(&p->link);
            f->provider_count--;
        }
    }
    if (err) {
        if (p) {
            mp_strlist_free(&p->resources);
            free(p);
        }
        if (created) {
            mp_local_drop(n, f);
        }
        return err;
    }
    if (out) {
        *out = p;
    }
    return MPREG_OK;
}

void mp_functions_remove(mp_node *n, mp_provider *p) {
    mp_local_fn *f = p->local;
    mp_list_remove(&p->link);
    mp_list_remove(&p->conn_link);
    mp_strlist_free(&p->resources);
    free(p);
    f->provider_count--;
    if (f->provider_count == 0) {
        mp_local_withdraw(n, f);
        mp_local_drop(n, f);
    } else {
        mp_local_advertise(n, f, false);
    }
}

mp_provider *mp_functions_choose(mp_node *n, mp_local_fn *f, const mp_strlist *locs) {
    mp_provider *best = NULL;
    uint32_t best_busy = 0;
    for (mp_link *l = f->providers.next; l != &f->providers; l = l->next) {
        mp_provider *p = MP_CONTAINER(l, mp_provider, link);
        if (locs && locs->count && !mp_strlist_is_subset(locs, &p->resources)) {
            continue;
        }
        uint32_t busy = p->inflight;
        if (p->conn) {
            /* A worker on its way out is the last resort: its calls would
             * only fail as worker_gone when it closes. */
            mp_conn *c = mp_conn_get(n, p->conn);
            busy = c && c->state != MP_CONN_CLOSING ? c->inflight : UINT32_MAX;
        }
        bool better =
            !best || busy < best_busy || (busy == best_busy && p->conn == 0 && best->conn != 0);
        if (better) {
            best = p;
            best_busy = busy;
        }
    }
    return best;
}

void mp_functions_conn_drop(mp_node *n, mp_conn *c) {
    while (!mp_list_empty(&c->functions)) {
        mp_functions_remove(n, MP_CONTAINER(c->functions.next, mp_provider, conn_link));
    }
    MP_ASSERT(n->worker_fn_total >= c->function_count);
    n->worker_fn_total -= c->function_count;
    c->function_count = 0;
}

/* --- REGISTER / UNREGISTER ------------------------------------------------- */

/* One item of a REGISTER or UNREGISTER list. Strings view the decoded
 * payload (mpreg strings are NUL-terminated). */
typedef struct mp_fn_item {
    const char *name;
    const char *function_id; /* NULL = absent */
    const char *version;     /* NULL = absent */
    mp_strlist resources;    /* REGISTER only; items borrowed (not freed) */
    char *resource_ptrs[MP_ENTRY_MAX_RESOURCES];
} mp_fn_item;

typedef struct mp_fn_error {
    mpreg_err code;
    char message[512];
} mp_fn_error;

static mpreg_err mp_fn_fail(mp_fn_error *fe, mpreg_err code, size_t index, const char *what) {
    fe->code = code;
    snprintf(fe->message, sizeof fe->message, "functions[%zu]: %s", index, what);
    return code;
}

/* A string of 0..255 bytes without NUL (the catalog's string rule). */
static bool mp_fn_str_ok(const mpreg_value *v, bool may_be_empty) {
    return v->type == MPREG_STR && (may_be_empty || v->u.str.len > 0) &&
           v->u.str.len <= MP_ENTRY_MAX_STR && !memchr(v->u.str.ptr, '\0', v->u.str.len);
}

static mpreg_err mp_fn_resources(const mpreg_value *v, mp_fn_item *it, size_t i, mp_fn_error *fe) {
    if (v->type != MPREG_ARRAY) {
        return mp_fn_fail(fe, MPREG_E_TYPE, i, "resources: expected an array of strings");
    }
    if (v->u.arr.len > MP_ENTRY_MAX_RESOURCES) {
        return mp_fn_fail(fe, MPREG_E_TOO_LARGE, i, "resources: more than 32");
    }
    it->resources.items = it->resource_ptrs;
    for (size_t k = 0; k < v->u.arr.len; k++) {
        if (!mp_fn_str_ok(&v->u.arr.items[k], false)) {
            return mp_fn_fail(fe, MPREG_E_INVALID, i,
                              "resources: each must be a string of 1..255 bytes");
        }
        it->resource_ptrs[it->resources.count++] = v->u.arr.items[k].u.str.ptr;
    }
    return MPREG_OK;
}

static mpreg_err mp_fn_item_field(const mpreg_kv *kv, bool reg, mp_fn_item *it, size_t i,
                                  mp_fn_error *fe) {
    const char *key = kv->key.u.str.ptr;
    const mpreg_value *v = &kv->val;
    if (strcmp(key, "name") == 0) {
        if (!mp_fn_str_ok(v, false)) {
            return mp_fn_fail(fe, MPREG_E_INVALID, i, "name: expected a string of 1..255 bytes");
        }
        it->name = v->u.str.ptr;
    } else if (strcmp(key, "function_id") == 0) {
        if (!mp_fn_str_ok(v, true)) {
            return mp_fn_fail(fe, MPREG_E_INVALID, i,
                              "function_id: expected a string of at most 255 bytes");
        }
        it->function_id = v->u.str.ptr;
    } else if (strcmp(key, "version") == 0) {
        if (!mp_fn_str_ok(v, false)) {
            return mp_fn_fail(fe, MPREG_E_INVALID, i, "version: expected a string of 1..255 bytes");
        }
        it->version = v->u.str.ptr;
    } else if (reg && strcmp(key, "resources") == 0) {
        return mp_fn_resources(v, it, i, fe);
    } else {
        /* Strict: a misspelt "resorces" must not register without them. */
        char what[MP_ENTRY_MAX_STR + 32];
        snprintf(what, sizeof what, "unknown key '%.200s'", key);
        return mp_fn_fail(fe, MPREG_E_INVALID, i, what);
    }
    return MPREG_OK;
}

static mpreg_err mp_fn_item_parse(const mpreg_value *v, bool reg, mp_fn_item *it, size_t i,
                                  mp_fn_error *fe) {
    memset(it, 0, sizeof *it);
    if (v->type != MPREG_MAP) {
        return mp_fn_fail(fe, MPREG_E_TYPE, i, "expected a map");
    }
    for (size_t k = 0; k < v->u.map.len; k++) {
        mpreg_err err = mp_fn_item_field(&v->u.map.items[k], reg, it, i, fe);
        if (err) {
            return err;
        }
    }
    if (!it->name) {
        return mp_fn_fail(fe, MPREG_E_MISSING_FIELD, i, "name: missing");
    }
    if (!reg) {
        return MPREG_OK;
    }
    if (!it->version) {
        it->version = "0.0.0";
    }
    mp_semver sv;
    const char *why = NULL;
    if (mp_semver_parse(it->version, strlen(it->version), &sv, &why)) {
        char what[128];
        snprintf(what, sizeof what, "version: not a semantic version (%s)", why ? why : "?");
        return mp_fn_fail(fe, MPREG_E_BAD_SEMVER, i, what);
    }
    return MPREG_OK;
}

/* The "functions" list of a REGISTER / UNREGISTER payload. */
static mpreg_err mp_fn_payload(const mp_envelope *env, mpreg_value *root, const mpreg_value **list,
                               mp_fn_error *fe) {
    mpreg_value_limits limits = {.max_depth = 4, .max_items = 16384, .max_bytes = 1u << 20};
    mpreg_err err = mpreg_value_decode(env->payload.ptr, env->payload.len, &limits, root);
    if (err) {
        fe->code = err;
        snprintf(fe->message, sizeof fe->message, "payload: %s", mpreg_strerror(err));
        return err;
    }
    *list = mpreg_map_get(root, "functions");
    if (root->type != MPREG_MAP || root->u.map.len != 1 || !*list || (*list)->type != MPREG_ARRAY) {
        fe->code = MPREG_E_INVALID;
        snprintf(fe->message, sizeof fe->message,
                 "payload: expected {\"functions\": [...]} and nothing else");
        return fe->code;
    }
    return MPREG_OK;
}

static bool mp_fn_same(const char *name, const char *fid, const char *version,
                       const mp_local_fn *f) {
    return strcmp(name, f->name) == 0 && strcmp(fid ? fid : "", f->function_id) == 0 &&
           strcmp(version, f->version) == 0;
}

static bool mp_conn_has_function(const mp_conn *c, const mp_fn_item *it) {
    for (const mp_link *l = c->functions.next; l != &c->functions; l = l->next) {
        const mp_provider *p = MP_CONTAINER(l, mp_provider, conn_link);
        if (mp_fn_same(it->name, it->function_id, it->version, p->local)) {
            return true;
        }
    }
    return false;
}

static bool mp_fn_items_same(const mp_fn_item *a, const mp_fn_item *b) {
    return strcmp(a->name, b->name) == 0 &&
           strcmp(a->function_id ? a->function_id : "", b->function_id ? b->function_id : "") ==
               0 &&
           strcmp(a->version, b->version) == 0;
}

/* Parses and checks every item before anything changes: a REGISTER is
 * all or nothing. */
static mpreg_err mp_register_check(mp_node *n, const mp_conn *c, const mpreg_value *list,
                                   mp_fn_item *items, mp_fn_error *fe) {
    size_t count = list->u.arr.len;
    if (count == 0) {
        fe->code = MPREG_E_INVALID;
        snprintf(fe->message, sizeof fe->message, "functions: empty");
        return fe->code;
    }
    const mp_node_limits *l = &n->limits;
    if ((uint64_t)c->function_count + count > l->functions_per_conn) {
        fe->code = MPREG_E_LIMIT;
        snprintf(fe->message, sizeof fe->message,
                 "REGISTER: limit functions_per_conn reached (%u registered, %zu more asked, at "
                 "most %u; mpregd --limit functions_per_conn=N)",
                 c->function_count, count, l->functions_per_conn);
        return fe->code;
    }
    if (mp_catalog_tombstones(n->catalog) >= l->tombstones) {
        fe->code = MPREG_E_LIMIT;
        snprintf(fe->message, sizeof fe->message,
                 "REGISTER: limit tombstones reached (%zu withdrawn catalog entries remembered, at "
                 "most %u; they expire after --tombstone-ttl; mpregd --limit tombstones=N)",
                 mp_catalog_tombstones(n->catalog), l->tombstones);
        return fe->code;
    }
    if ((uint64_t)n->worker_fn_total + count > l->functions_per_node) {
        fe->code = MPREG_E_LIMIT;
        snprintf(fe->message, sizeof fe->message,
                 "REGISTER: limit functions_per_node reached (%u registered by workers, %zu more "
                 "asked, at most %u; mpregd --limit functions_per_node=N)",
                 n->worker_fn_total, count, l->functions_per_node);
        return fe->code;
    }
    for (size_t i = 0; i < count; i++) {
        mpreg_err err = mp_fn_item_parse(&list->u.arr.items[i], true, &items[i], i, fe);
        if (err) {
            return err;
        }
        mp_entry e;
        const char *why = NULL;
        err = mp_entry_function(&e, n->node_id, n->cluster, items[i].name, items[i].function_id,
                                items[i].version);
        err = err ? err : mp_strlist_append(&e.u.function.resources, &items[i].resources);
        err = err ? err : mp_entry_validate(&e, &why);
        mp_entry_free(&e);
        if (err) {
            return mp_fn_fail(fe, err, i, why ? why : mpreg_strerror(err));
        }
        bool dup = mp_conn_has_function(c, &items[i]);
        for (size_t k = 0; k < i && !dup; k++) {
            dup = mp_fn_items_same(&items[k], &items[i]);
        }
        if (dup) {
            return mp_fn_fail(fe, MPREG_E_DUPLICATE, i, "already registered on this connection");
        }
    }
    return MPREG_OK;
}

static void mp_send_ok_count(mp_node *n, mp_conn *c, const mp_id *id, const char *key,
                             size_t count) {
    mpreg_value v = mpreg_map();
    if (mpreg_map_set(&v, key, mpreg_int((int64_t)count)) == MPREG_OK) {
        mp_node_send_value(n, c->id, MP_KIND_OK, id, NULL, &v);
    }
    mpreg_value_free(&v);
}

void mp_functions_on_register(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mpreg_value root = mpreg_nil();
    const mpreg_value *list = NULL;
    mp_fn_error fe = {MPREG_OK, ""};
    mp_fn_item *items = NULL;
    mpreg_err err = mp_fn_payload(env, &root, &list, &fe);
    if (!err) {
        items = calloc(list->u.arr.len ? list->u.arr.len : 1, sizeof *items);
        err = items ? mp_register_check(n, c, list, items, &fe) : MPREG_E_NOMEM;
    }
    size_t added = 0;
    for (; !err && added < list->u.arr.len; added++) {
        const mp_fn_item *it = &items[added];
        mp_provider *p = NULL;
        err = mp_functions_add(n, it->name, it->function_id, it->version, &it->resources, c->id,
                               NULL, NULL, &p);
        if (err) {
            fe.code = err;
            snprintf(fe.message, sizeof fe.message, "functions[%zu]: %s", added,
                     mpreg_strerror(err));
            break;
        }
        mp_list_push(&c->functions, &p->conn_link);
        c->function_count++;
        n->worker_fn_total++;
    }
    if (err) {
        /* All or nothing: what this REGISTER added goes again (newest are
         * at the tail of the connection's list). */
        for (size_t k = 0; k < added; k++) {
            mp_functions_remove(n, MP_CONTAINER(c->functions.prev, mp_provider, conn_link));
            c->function_count--;
            n->worker_fn_total--;
        }
        if (fe.code == MPREG_E_LIMIT) {
            n->limit_refusals++;
        }
        mp_node_send_errorf(n, c->id, &env->id, fe.code ? fe.code : err, "%s",
                            fe.message[0] ? fe.message : mpreg_strerror(err));
    } else {
        mp_node_log(n, MP_LOG_INFO, "conn %llu registered %zu functions", (unsigned long long)c->id,
                    added);
        mp_send_ok_count(n, c, &env->id, "registered", added);
    }
    free(items);
    mpreg_value_free(&root);
}

/* UNREGISTER: each item removes this connection's registrations of the
 * name that also match function_id and version when those are given.
 * Names it does not hold are not an error (the answer counts what went). */
void mp_functions_on_unregister(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mpreg_value root = mpreg_nil();
    const mpreg_value *list = NULL;
    mp_fn_error fe = {MPREG_OK, ""};
    mpreg_err err = mp_fn_payload(env, &root, &list, &fe);
    if (!err && list->u.arr.len > n->limits.functions_per_conn) {
        err = fe.code = MPREG_E_TOO_LARGE;
        snprintf(fe.message, sizeof fe.message, "functions: more than %u",
                 n->limits.functions_per_conn);
    }
    mp_fn_item it;
    for (size_t i = 0; !err && i < list->u.arr.len; i++) {
        err = mp_fn_item_parse(&list->u.arr.items[i], false, &it, i, &fe);
    }
    if (err) {
        mp_node_send_errorf(n, c->id, &env->id, fe.code, "%s", fe.message);
        mpreg_value_free(&root);
        return;
    }
    size_t removed = 0;
    for (size_t i = 0; i < list->u.arr.len; i++) {
        mp_fn_item_parse(&list->u.arr.items[i], false, &it, i, &fe);
        for (mp_link *l = c->functions.next, *next; l != &c->functions; l = next) {
            next = l->next;
            mp_provider *p = MP_CONTAINER(l, mp_provider, conn_link);
            const mp_local_fn *f = p->local;
            if (strcmp(f->name, it.name) == 0 &&
                (!it.function_id || strcmp(f->function_id, it.function_id) == 0) &&
                (!it.version || strcmp(f->version, it.version) == 0)) {
                mp_functions_remove(n, p);
                c->function_count--;
                n->worker_fn_total--;
                removed++;
            }
        }
    }
    mp_send_ok_count(n, c, &env->id, "unregistered", removed);
    mpreg_value_free(&root);
}
