/* entry.c - catalog entries: versions, keys, validation, deep copies.
 *
 * Every entry kind's value struct begins with its key, and the key's strings
 * are reached through one table (mp_entry_key_slots), so key bytes, equality,
 * copying and the delta codec walk keys the same way for every kind.
 *
 * NULL strings are tolerated everywhere except validation: free, clone and
 * equal treat NULL like "" so that a half-built entry (a constructor that ran
 * out of memory, a tombstone whose value was never filled) is still safe to
 * handle. Validation rejects NULL, so nothing NULL survives a decode. */
#include "fabric/entry.h"

#include "core/str.h"
#include "core/topic.h"
#include "mpreg/value.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MP_QUEUE_MODES_KNOWN                                                                       \
    (MP_QUEUE_FIRE_AND_FORGET | MP_QUEUE_AT_LEAST_ONCE | MP_QUEUE_BROADCAST | MP_QUEUE_QUORUM)

static const char *mp_s(const char *s) {
    return s ? s : "";
}

static bool mp_str_same(const char *a, const char *b) {
    return strcmp(mp_s(a), mp_s(b)) == 0;
}

/* --- versions and keys ---------------------------------------------------- */

int mp_entry_version_cmp(mp_entry_version a, mp_entry_version b) {
    if (a.incarnation != b.incarnation) {
        return a.incarnation < b.incarnation ? -1 : 1;
    }
    if (a.counter != b.counter) {
        return a.counter < b.counter ? -1 : 1;
    }
    return 0;
}

bool mp_entry_kind_valid(int kind) {
    return kind >= MP_ENTRY_NODE && kind <= MP_ENTRY_CACHE;
}

size_t mp_entry_key_slots(mp_entry *e, char **slots[MP_ENTRY_MAX_KEY_FIELDS]) {
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        slots[0] = &e->u.function.key.node;
        slots[1] = &e->u.function.key.name;
        slots[2] = &e->u.function.key.function_id;
        slots[3] = &e->u.function.key.version;
        return 4;
    case MP_ENTRY_TOPIC:
        slots[0] = &e->u.topic.key.node;
        slots[1] = &e->u.topic.key.pattern;
        slots[2] = &e->u.topic.key.group;
        return 3;
    case MP_ENTRY_QUEUE:
        slots[0] = &e->u.queue.key.node;
        slots[1] = &e->u.queue.key.queue;
        return 2;
    case MP_ENTRY_CACHE:
        slots[0] = &e->u.cache.key.node;
        return 1;
    case MP_ENTRY_NODE:
        slots[0] = &e->u.node.key.node;
        return 1;
    }
    return 0;
}

/* The same table for read-only callers; the slots are never written through. */
static size_t mp_key_strings(const mp_entry *e, const char *out[MP_ENTRY_MAX_KEY_FIELDS]) {
    char **slots[MP_ENTRY_MAX_KEY_FIELDS];
    size_t n = mp_entry_key_slots((mp_entry *)e, slots);
    for (size_t i = 0; i < n; i++) {
        out[i] = *slots[i];
    }
    return n;
}

const char *mp_entry_origin(const mp_entry *e) {
    /* Every key struct starts with the origin node, so any kind's slot 0 is it. */
    const char *keys[MP_ENTRY_MAX_KEY_FIELDS];
    return mp_key_strings(e, keys) ? mp_s(keys[0]) : "";
}

/* Kind byte, then each key string as a 4-byte big-endian length and its
 * bytes. The number of strings is fixed by the kind and each carries its
 * length, so ("ab","c") and ("a","bc") cannot collide. */
mpreg_err mp_entry_key_bytes(const mp_entry *e, mp_buf *out) {
    const char *keys[MP_ENTRY_MAX_KEY_FIELDS];
    size_t n = mp_key_strings(e, keys);
    if (n == 0) {
        return MPREG_E_INVALID;
    }
    size_t start = out->len;
    uint8_t kind = (uint8_t)e->kind;
    mpreg_err err = mp_buf_append(out, &kind, 1);
    for (size_t i = 0; i < n && !err; i++) {
        size_t len = strlen(mp_s(keys[i]));
        if (len > UINT32_MAX) {
            err = MPREG_E_TOO_LARGE;
            break;
        }
        err = mp_buf_append_u32be(out, (uint32_t)len);
        if (!err) {
            err = mp_buf_append(out, mp_s(keys[i]), len);
        }
    }
    if (err) {
        out->len = start; /* leave out as it was */
    }
    return err;
}

bool mp_entry_key_equal(const mp_entry *a, const mp_entry *b) {
    if (a->kind != b->kind) {
        return false;
    }
    const char *ka[MP_ENTRY_MAX_KEY_FIELDS];
    const char *kb[MP_ENTRY_MAX_KEY_FIELDS];
    size_t n = mp_key_strings(a, ka);
    mp_key_strings(b, kb);
    for (size_t i = 0; i < n; i++) {
        if (!mp_str_same(ka[i], kb[i])) {
            return false;
        }
    }
    return n > 0;
}

/* --- validation ------------------------------------------------------------ */

/* Each check sets *why to the field's name; the error code says what is
 * wrong with it (MPREG_E_INVALID: missing or empty, MPREG_E_TOO_LARGE: too
 * long or too many, MPREG_E_RANGE: a number out of range, ...). */
static mpreg_err mp_check_str(const char *s, bool required, const char *field, const char **why) {
    *why = field;
    if (!s) {
        return MPREG_E_INVALID;
    }
    size_t len = strlen(s);
    if (required && len == 0) {
        return MPREG_E_INVALID;
    }
    if (len > MP_ENTRY_MAX_STR) {
        return MPREG_E_TOO_LARGE;
    }
    /* Names travel to clients in other languages and end up in JSON output:
     * the same rule as every str of an envelope. */
    return mpreg_utf8_valid(s, len) ? MPREG_OK : MPREG_E_INVALID;
}

static mpreg_err mp_check_list(const mp_strlist *l, uint32_t max, const char *field,
                               const char **why) {
    *why = field;
    if (l->count > max) {
        return MPREG_E_TOO_LARGE;
    }
    if (l->count > 0 && !l->items) {
        return MPREG_E_INVALID;
    }
    for (uint32_t i = 0; i < l->count; i++) {
        mpreg_err err = mp_check_str(l->items[i], true, field, why);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

/* Inclusive range; NaN fails every comparison and so is rejected too. */
static mpreg_err mp_check_range(double v, double lo, double hi, const char *field,
                                const char **why) {
    *why = field;
    return v >= lo && v <= hi ? MPREG_OK : MPREG_E_RANGE;
}

static bool mp_semver_same(const mp_semver *a, const mp_semver *b) {
    return a->major == b->major && a->minor == b->minor && a->patch == b->patch &&
           strncmp(a->pre, b->pre, sizeof a->pre) == 0;
}

static mpreg_err mp_validate_function_key(const mp_function_key *k, const char **why) {
    mpreg_err err = mp_check_str(k->node, true, "key.node", why);
    if (!err) {
        err = mp_check_str(k->name, true, "key.name", why);
    }
    if (!err) {
        err = mp_check_str(k->function_id, false, "key.function_id", why);
    }
    if (!err) {
        err = mp_check_str(k->version, true, "key.version", why);
    }
    if (!err) {
        mp_semver v;
        err = mp_semver_parse(k->version, strlen(k->version), &v, NULL);
    }
    return err;
}

static mpreg_err mp_validate_key(const mp_entry *e, const char **why) {
    mpreg_err err;
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        return mp_validate_function_key(&e->u.function.key, why);
    case MP_ENTRY_TOPIC:
        err = mp_check_str(e->u.topic.key.node, true, "key.node", why);
        if (!err) {
            err = mp_check_str(e->u.topic.key.pattern, true, "key.pattern", why);
        }
        if (!err) {
            const char *p = e->u.topic.key.pattern;
            err = mp_pattern_validate(p, strlen(p), NULL);
        }
        if (!err) {
            /* The same rule as a SUBSCRIBE's group, and "" for ungrouped. */
            err = mp_check_str(e->u.topic.key.group, false, "key.group", why);
        }
        return err;
    case MP_ENTRY_QUEUE:
        err = mp_check_str(e->u.queue.key.node, true, "key.node", why);
        if (!err) {
            err = mp_check_str(e->u.queue.key.queue, true, "key.queue", why);
        }
        return err;
    case MP_ENTRY_CACHE:
        return mp_check_str(e->u.cache.key.node, true, "key.node", why);
    case MP_ENTRY_NODE:
        return mp_check_str(e->u.node.key.node, true, "key.node", why);
    }
    *why = "kind";
    return MPREG_E_INVALID;
}

static mpreg_err mp_validate_function(const mp_function_endpoint *f, const char **why) {
    mpreg_err err = mp_check_str(f->cluster, true, "cluster", why);
    if (err) {
        return err;
    }
    mp_semver parsed;
    *why = "semver";
    if (mp_semver_parse(f->key.version, strlen(f->key.version), &parsed, NULL) ||
        !mp_semver_same(&parsed, &f->semver)) {
        return MPREG_E_BAD_SEMVER;
    }
    return mp_check_list(&f->resources, MP_ENTRY_MAX_RESOURCES, "resources", why);
}

static mpreg_err mp_validate_queue(const mp_queue_endpoint *q, const char **why) {
    mpreg_err err = mp_check_str(q->cluster, true, "cluster", why);
    if (err) {
        return err;
    }
    *why = "modes";
    if (q->modes == 0 || (q->modes & ~(uint32_t)MP_QUEUE_MODES_KNOWN) != 0) {
        return MPREG_E_INVALID;
    }
    return MPREG_OK;
}

static mpreg_err mp_validate_cache(const mp_cache_profile *c, const char **why) {
    mpreg_err err = mp_check_str(c->cluster, true, "cluster", why);
    if (!err) {
        err = mp_check_str(c->region, false, "region", why);
    }
    if (!err) {
        err = mp_check_range(c->latitude, -90.0, 90.0, "latitude", why);
    }
    if (!err) {
        err = mp_check_range(c->longitude, -180.0, 180.0, "longitude", why);
    }
    if (!err) {
        err = mp_check_range(c->utilization, 0.0, 1.0, "utilization", why);
    }
    if (!err) {
        /* Finite as well as non-negative: an infinite latency is no measurement. */
        err = mp_check_range(c->latency_ms, 0.0, HUGE_VAL, "latency_ms", why);
        if (!err && !isfinite(c->latency_ms)) {
            err = MPREG_E_RANGE;
        }
    }
    if (!err) {
        err = mp_check_range(c->reliability, 0.0, 1.0, "reliability", why);
    }
    return err;
}

static mpreg_err mp_validate_node(const mp_node_descriptor *n, const char **why) {
    mpreg_err err = mp_check_str(n->name, true, "name", why);
    if (!err) {
        err = mp_check_str(n->cluster, true, "cluster", why);
    }
    if (!err) {
        err = mp_check_list(&n->endpoints, MP_ENTRY_MAX_ENDPOINTS, "endpoints", why);
    }
    if (!err) {
        err = mp_check_list(&n->capabilities, MP_ENTRY_MAX_CAPABILITIES, "capabilities", why);
    }
    if (!err) {
        err = mp_check_list(&n->resources, MP_ENTRY_MAX_RESOURCES, "resources", why);
    }
    return err;
}

mpreg_err mp_entry_validate(const mp_entry *e, const char **why) {
    const char *dummy;
    why = why ? why : &dummy;
    *why = NULL;
    mpreg_err err = mp_validate_key(e, why);
    if (err) {
        return err;
    }
    if (e->withdrawn) {
        *why = NULL; /* a tombstone carries no value to check */
        return MPREG_OK;
    }
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        err = mp_validate_function(&e->u.function, why);
        break;
    case MP_ENTRY_TOPIC:
        err = mp_check_str(e->u.topic.cluster, true, "cluster", why);
        break;
    case MP_ENTRY_QUEUE:
        err = mp_validate_queue(&e->u.queue, why);
        break;
    case MP_ENTRY_CACHE:
        err = mp_validate_cache(&e->u.cache, why);
        break;
    case MP_ENTRY_NODE:
        err = mp_validate_node(&e->u.node, why);
        break;
    }
    if (!err) {
        *why = NULL;
    }
    return err;
}

/* --- string lists ------------------------------------------------------------ */

/* Grows by one item at a time: lists are short (tens of items at most), and
 * no capacity field means a list built by hand is always safe to push to. */
mpreg_err mp_strlist_push(mp_strlist *l, const char *s) {
    if (!s) {
        return MPREG_E_INVALID;
    }
    if (l->count == UINT32_MAX) {
        return MPREG_E_TOO_LARGE;
    }
    char *copy = mp_strdup(s);
    if (!copy) {
        return MPREG_E_NOMEM;
    }
    char **items = realloc(l->items, ((size_t)l->count + 1) * sizeof *items);
    if (!items) {
        free(copy);
        return MPREG_E_NOMEM;
    }
    items[l->count++] = copy;
    l->items = items;
    return MPREG_OK;
}

mpreg_err mp_strlist_append(mp_strlist *dst, const mp_strlist *src) {
    for (uint32_t i = 0; src && i < src->count; i++) {
        mpreg_err err = mp_strlist_push(dst, src->items[i]);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}

void mp_strlist_free(mp_strlist *l) {
    for (uint32_t i = 0; i < l->count && l->items; i++) {
        free(l->items[i]);
    }
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

bool mp_strlist_contains(const mp_strlist *l, const char *s) {
    for (uint32_t i = 0; i < l->count; i++) {
        if (mp_str_same(l->items[i], s)) {
            return true;
        }
    }
    return false;
}

bool mp_strlist_is_subset(const mp_strlist *sub, const mp_strlist *super) {
    for (uint32_t i = 0; i < sub->count; i++) {
        if (!mp_strlist_contains(super, sub->items[i])) {
            return false;
        }
    }
    return true;
}

static mpreg_err mp_strlist_clone(const mp_strlist *src, mp_strlist *dst) {
    *dst = (mp_strlist){NULL, 0};
    for (uint32_t i = 0; i < src->count; i++) {
        mpreg_err err = mp_strlist_push(dst, mp_s(src->items[i]));
        if (err) {
            mp_strlist_free(dst);
            return err;
        }
    }
    return MPREG_OK;
}

/* Order matters: resources and endpoints are compared as sequences, which is
 * what a codec round trip preserves. */
static bool mp_strlist_equal(const mp_strlist *a, const mp_strlist *b) {
    if (a->count != b->count) {
        return false;
    }
    for (uint32_t i = 0; i < a->count; i++) {
        if (!mp_str_same(a->items[i], b->items[i])) {
            return false;
        }
    }
    return true;
}

/* --- free, clone, equal ---------------------------------------------------- */

/* The owned strings of the value, other than the key: a table for free and
 * clone alike, so that adding a string field means adding one line here. */
#define MP_ENTRY_MAX_VALUE_STRS 2
static size_t mp_value_slots(mp_entry *e, char **slots[MP_ENTRY_MAX_VALUE_STRS]) {
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        slots[0] = &e->u.function.cluster;
        return 1;
    case MP_ENTRY_TOPIC:
        slots[0] = &e->u.topic.cluster;
        return 1;
    case MP_ENTRY_QUEUE:
        slots[0] = &e->u.queue.cluster;
        return 1;
    case MP_ENTRY_CACHE:
        slots[0] = &e->u.cache.cluster;
        slots[1] = &e->u.cache.region;
        return 2;
    case MP_ENTRY_NODE:
        slots[0] = &e->u.node.name;
        slots[1] = &e->u.node.cluster;
        return 2;
    }
    return 0;
}

#define MP_ENTRY_MAX_LISTS 3
static size_t mp_list_slots(mp_entry *e, mp_strlist *lists[MP_ENTRY_MAX_LISTS]) {
    switch (e->kind) {
    case MP_ENTRY_FUNCTION:
        lists[0] = &e->u.function.resources;
        return 1;
    case MP_ENTRY_NODE:
        lists[0] = &e->u.node.endpoints;
        lists[1] = &e->u.node.capabilities;
        lists[2] = &e->u.node.resources;
        return 3;
    default:
        return 0;
    }
}

void mp_entry_free(mp_entry *e) {
    if (!e) {
        return;
    }
    char **keys[MP_ENTRY_MAX_KEY_FIELDS];
    size_t n = mp_entry_key_slots(e, keys);
    for (size_t i = 0; i < n; i++) {
        free(*keys[i]);
    }
    char **strs[MP_ENTRY_MAX_VALUE_STRS];
    n = mp_value_slots(e, strs);
    for (size_t i = 0; i < n; i++) {
        free(*strs[i]);
    }
    mp_strlist *lists[MP_ENTRY_MAX_LISTS];
    n = mp_list_slots(e, lists);
    for (size_t i = 0; i < n; i++) {
        mp_strlist_free(lists[i]);
    }
    memset(e, 0, sizeof *e);
}

/* NULL stays NULL: clone reproduces the source, it does not repair it. */
static mpreg_err mp_copy_slot(char **slot, const char *s) {
    if (!s) {
        return MPREG_OK;
    }
    *slot = mp_strdup(s);
    return *slot ? MPREG_OK : MPREG_E_NOMEM;
}

mpreg_err mp_entry_clone(const mp_entry *src, mp_entry *dst) {
    /* A shallow copy brings the scalars and the semver; then every pointer
     * slot of dst is cleared, so dst can be freed at any point, and filled
     * with a copy of the matching slot of src. */
    *dst = *src;
    mp_entry *s = (mp_entry *)src; /* read only: the slot tables want non-const */
    char **dk[MP_ENTRY_MAX_KEY_FIELDS], **sk[MP_ENTRY_MAX_KEY_FIELDS];
    char **ds[MP_ENTRY_MAX_VALUE_STRS], **ss[MP_ENTRY_MAX_VALUE_STRS];
    mp_strlist *dl[MP_ENTRY_MAX_LISTS], *sl[MP_ENTRY_MAX_LISTS];
    size_t nk = mp_entry_key_slots(dst, dk);
    size_t ns = mp_value_slots(dst, ds);
    size_t nl = mp_list_slots(dst, dl);
    mp_entry_key_slots(s, sk);
    mp_value_slots(s, ss);
    mp_list_slots(s, sl);
    for (size_t i = 0; i < nk; i++) {
        *dk[i] = NULL;
    }
    for (size_t i = 0; i < ns; i++) {
        *ds[i] = NULL;
    }
    for (size_t i = 0; i < nl; i++) {
        *dl[i] = (mp_strlist){NULL, 0};
    }
    mpreg_err err = MPREG_OK;
    for (size_t i = 0; i < nk && !err; i++) {
        err = mp_copy_slot(dk[i], *sk[i]);
    }
    for (size_t i = 0; i < ns && !err; i++) {
        err = mp_copy_slot(ds[i], *ss[i]);
    }
    for (size_t i = 0; i < nl && !err; i++) {
        err = mp_strlist_clone(sl[i], dl[i]);
    }
    if (err) {
        mp_entry_free(dst);
    }
    return err;
}

static bool mp_function_value_equal(const mp_function_endpoint *a, const mp_function_endpoint *b) {
    return mp_str_same(a->cluster, b->cluster) && mp_semver_same(&a->semver, &b->semver) &&
           mp_strlist_equal(&a->resources, &b->resources) && a->load == b->load;
}

static bool mp_cache_value_equal(const mp_cache_profile *a, const mp_cache_profile *b) {
    return mp_str_same(a->cluster, b->cluster) && mp_str_same(a->region, b->region) &&
           a->latitude == b->latitude && a->longitude == b->longitude &&
           a->capacity_bytes == b->capacity_bytes && a->utilization == b->utilization &&
           a->latency_ms == b->latency_ms && a->reliability == b->reliability;
}

static bool mp_node_value_equal(const mp_node_descriptor *a, const mp_node_descriptor *b) {
    return mp_str_same(a->name, b->name) && mp_str_same(a->cluster, b->cluster) &&
           mp_strlist_equal(&a->endpoints, &b->endpoints) &&
           mp_strlist_equal(&a->capabilities, &b->capabilities) &&
           mp_strlist_equal(&a->resources, &b->resources) && a->incarnation == b->incarnation;
}

static bool mp_value_equal(const mp_entry *a, const mp_entry *b) {
    switch (a->kind) {
    case MP_ENTRY_FUNCTION:
        return mp_function_value_equal(&a->u.function, &b->u.function);
    case MP_ENTRY_TOPIC:
        return mp_str_same(a->u.topic.cluster, b->u.topic.cluster);
    case MP_ENTRY_QUEUE:
        return mp_str_same(a->u.queue.cluster, b->u.queue.cluster) &&
               a->u.queue.modes == b->u.queue.modes && a->u.queue.healthy == b->u.queue.healthy;
    case MP_ENTRY_CACHE:
        return mp_cache_value_equal(&a->u.cache, &b->u.cache);
    case MP_ENTRY_NODE:
        return mp_node_value_equal(&a->u.node, &b->u.node);
    }
    return false;
}

bool mp_entry_equal(const mp_entry *a, const mp_entry *b) {
    if (!mp_entry_key_equal(a, b) || mp_entry_version_cmp(a->version, b->version) != 0 ||
        a->ttl_ms != b->ttl_ms || a->withdrawn != b->withdrawn) {
        return false;
    }
    return a->withdrawn || mp_value_equal(a, b);
}

/* --- constructors ------------------------------------------------------------ */

/* Starts an entry of the given kind and copies its key strings (in key
 * struct order). NULL key strings are refused: a key is what names the
 * entry. Optional strings elsewhere (function_id, region) take "" for NULL. */
static mpreg_err mp_entry_start(mp_entry *e, mp_entry_kind kind, const char *const *keys,
                                size_t nkeys) {
    memset(e, 0, sizeof *e);
    e->kind = kind;
    char **slots[MP_ENTRY_MAX_KEY_FIELDS];
    size_t n = mp_entry_key_slots(e, slots);
    if (n != nkeys) {
        return MPREG_E_INTERNAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!keys[i]) {
            mp_entry_free(e);
            return MPREG_E_INVALID;
        }
        *slots[i] = mp_strdup(keys[i]);
        if (!*slots[i]) {
            mp_entry_free(e);
            return MPREG_E_NOMEM;
        }
    }
    return MPREG_OK;
}

/* Copies s (NULL: "" when optional, an error otherwise) into *slot. */
static mpreg_err mp_set_str(char **slot, const char *s, bool optional) {
    if (!s && !optional) {
        return MPREG_E_INVALID;
    }
    *slot = mp_strdup(mp_s(s));
    return *slot ? MPREG_OK : MPREG_E_NOMEM;
}

/* Frees a partly built entry on failure, so callers never see half of one. */
static mpreg_err mp_entry_finish(mp_entry *e, mpreg_err err) {
    if (err) {
        mp_entry_free(e);
    }
    return err;
}

mpreg_err mp_entry_function(mp_entry *e, const char *node, const char *cluster, const char *name,
                            const char *function_id, const char *version) {
    const char *keys[] = {node, name, mp_s(function_id), version};
    mpreg_err err = mp_entry_start(e, MP_ENTRY_FUNCTION, keys, 4);
    if (err) {
        return err;
    }
    err = mp_semver_parse(version, strlen(version), &e->u.function.semver, NULL);
    if (err) {
        return mp_entry_finish(e, MPREG_E_BAD_SEMVER);
    }
    return mp_entry_finish(e, mp_set_str(&e->u.function.cluster, cluster, false));
}

mpreg_err mp_entry_topic(mp_entry *e, const char *node, const char *cluster, const char *pattern) {
    return mp_entry_topic_group(e, node, cluster, pattern, "");
}

mpreg_err mp_entry_topic_group(mp_entry *e, const char *node, const char *cluster,
                               const char *pattern, const char *group) {
    const char *keys[] = {node, pattern, mp_s(group)};
    mpreg_err err = mp_entry_start(e, MP_ENTRY_TOPIC, keys, 3);
    if (err) {
        return err;
    }
    return mp_entry_finish(e, mp_set_str(&e->u.topic.cluster, cluster, false));
}

mpreg_err mp_entry_queue(mp_entry *e, const char *node, const char *cluster, const char *queue,
                         uint32_t modes) {
    const char *keys[] = {node, queue};
    mpreg_err err = mp_entry_start(e, MP_ENTRY_QUEUE, keys, 2);
    if (err) {
        return err;
    }
    e->u.queue.modes = modes;
    e->u.queue.healthy = true;
    return mp_entry_finish(e, mp_set_str(&e->u.queue.cluster, cluster, false));
}

mpreg_err mp_entry_cache(mp_entry *e, const char *node, const char *cluster, const char *region) {
    const char *keys[] = {node};
    mpreg_err err = mp_entry_start(e, MP_ENTRY_CACHE, keys, 1);
    if (err) {
        return err;
    }
    err = mp_set_str(&e->u.cache.cluster, cluster, false);
    if (!err) {
        err = mp_set_str(&e->u.cache.region, region, true);
    }
    return mp_entry_finish(e, err);
}

mpreg_err mp_entry_node(mp_entry *e, const char *node, const char *name, const char *cluster,
                        uint64_t incarnation) {
    const char *keys[] = {node};
    mpreg_err err = mp_entry_start(e, MP_ENTRY_NODE, keys, 1);
    if (err) {
        return err;
    }
    e->u.node.incarnation = incarnation;
    err = mp_set_str(&e->u.node.name, name ? name : node, false);
    if (!err) {
        err = mp_set_str(&e->u.node.cluster, cluster, false);
    }
    return mp_entry_finish(e, err);
}
