/* selector.c - one pass over a function name's endpoints: filter, keep the
 * best so far and the endpoints tied with it, then break the tie. */
#include "fabric/selector.h"

#include "fabric/semver.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* How far the walk got, for the most specific failure reason. */
typedef struct mp_filter_counts {
    uint32_t named;        /* endpoints with the name */
    uint32_t with_id;      /* ... and the function_id */
    uint32_t with_version; /* ... and a satisfying version */
    uint32_t candidates;   /* ... and every resource */
} mp_filter_counts;

/* The endpoints tied for best; inline storage covers the usual few. */
typedef struct mp_tie_set {
    const mp_function_endpoint *inline_items[MP_SELECT_INLINE_TIES];
    const mp_function_endpoint **items;
    uint32_t count; /* stored in items */
    uint32_t cap;
    uint32_t total;  /* tied, stored or not */
    bool overflowed; /* a heap growth failed: fall back to canon_min */
    const mp_function_endpoint *canon_min;
} mp_tie_set;

typedef struct mp_select_walk {
    const mp_function_query *q;
    const mp_semver_constraint *constraint; /* NULL = any version */
    const char *local_node;
    mp_filter_counts counts;
    const mp_function_endpoint *best; /* a representative of the tie set */
    mp_tie_set ties;
} mp_select_walk;

static bool mp_str_given(const char *s) {
    return s && s[0];
}

static bool mp_is_local(const mp_select_walk *w, const mp_function_endpoint *ep) {
    return w->local_node && strcmp(ep->key.node, w->local_node) == 0;
}

/* The canonical order of tied endpoints: node, then function_id, then the
 * version text (the rest of the entry key; the name is equal). */
static int mp_canon_cmp(const mp_function_endpoint *a, const mp_function_endpoint *b) {
    int c = strcmp(a->key.node, b->key.node);
    if (c) {
        return c;
    }
    c = strcmp(a->key.function_id, b->key.function_id);
    if (c) {
        return c;
    }
    return strcmp(a->key.version, b->key.version);
}

static int mp_canon_qsort_cmp(const void *a, const void *b) {
    return mp_canon_cmp(*(const mp_function_endpoint *const *)a,
                        *(const mp_function_endpoint *const *)b);
}

/* > 0 when a is preferred to b: higher version, then lower load, then local. */
static int mp_preference_cmp(const mp_select_walk *w, const mp_function_endpoint *a,
                             const mp_function_endpoint *b) {
    int c = mp_semver_cmp(&a->semver, &b->semver);
    if (c) {
        return c;
    }
    if (a->load != b->load) {
        return a->load < b->load ? 1 : -1;
    }
    return (int)mp_is_local(w, a) - (int)mp_is_local(w, b);
}

static void mp_ties_init(mp_tie_set *t) {
    t->items = t->inline_items;
    t->count = 0;
    t->cap = MP_SELECT_INLINE_TIES;
    t->total = 0;
    t->overflowed = false;
    t->canon_min = NULL;
}

static void mp_ties_free(mp_tie_set *t) {
    if (t->items != t->inline_items) {
        free(t->items);
    }
}

static void mp_ties_reset(mp_tie_set *t) {
    t->count = 0;
    t->total = 0;
    t->overflowed = false;
    t->canon_min = NULL;
}

static bool mp_ties_grow(mp_tie_set *t) {
    uint32_t cap = t->cap * 2;
    const mp_function_endpoint **items = malloc(cap * sizeof *items);
    if (!items) {
        return false;
    }
    memcpy(items, t->items, t->count * sizeof *items);
    mp_ties_free(t);
    t->items = items;
    t->cap = cap;
    return true;
}

static void mp_ties_add(mp_tie_set *t, const mp_function_endpoint *ep) {
    t->total++;
    if (!t->canon_min || mp_canon_cmp(ep, t->canon_min) < 0) {
        t->canon_min = ep;
    }
    if (t->overflowed || (t->count == t->cap && !mp_ties_grow(t))) {
        t->overflowed = true;
        return;
    }
    t->items[t->count++] = ep;
}

static bool mp_passes_filters(mp_select_walk *w, const mp_function_endpoint *ep) {
    const mp_function_query *q = w->q;
    if (mp_str_given(q->function_id) && strcmp(ep->key.function_id, q->function_id) != 0) {
        return false;
    }
    w->counts.with_id++;
    if (w->constraint && !mp_semver_satisfies(w->constraint, &ep->semver)) {
        return false;
    }
    w->counts.with_version++;
    if (q->resources && !mp_strlist_is_subset(q->resources, &ep->resources)) {
        return false;
    }
    if (q->avoid_node && strcmp(ep->key.node, q->avoid_node) == 0) {
        return false;
    }
    w->counts.candidates++;
    return true;
}

static bool mp_select_visit(void *ud, const mp_entry *e) {
    mp_select_walk *w = ud;
    if (e->kind != MP_ENTRY_FUNCTION || e->withdrawn) {
        return true;
    }
    const mp_function_endpoint *ep = &e->u.function;
    w->counts.named++;
    if (!mp_passes_filters(w, ep)) {
        return true;
    }
    int c = w->best ? mp_preference_cmp(w, ep, w->best) : 1;
    if (c > 0) {
        w->best = ep;
        mp_ties_reset(&w->ties);
    }
    if (c >= 0) {
        mp_ties_add(&w->ties, ep);
    }
    return true;
}

static const mp_function_endpoint *mp_break_tie(mp_tie_set *t, mp_rng *rng) {
    if (t->overflowed || !rng || t->count == 1) {
        return t->canon_min;
    }
    qsort(t->items, t->count, sizeof *t->items, mp_canon_qsort_cmp);
    return t->items[mp_rng_below(rng, t->count)];
}

static mp_selection mp_fail(mp_select_reason reason, mpreg_err err, const char *why) {
    return (mp_selection){.reason = reason, .error = err, .why = why};
}

/* The last filter that left nothing decides the reason. */
static mp_selection mp_failure_from_counts(const mp_filter_counts *n) {
    if (!n->named) {
        return mp_fail(MP_SELECT_NO_SUCH_FUNCTION, MPREG_E_NOT_FOUND,
                       "no endpoint with that function name");
    }
    if (!n->with_id) {
        return mp_fail(MP_SELECT_NO_FUNCTION_ID, MPREG_E_NOT_FOUND, "no endpoint with function_id");
    }
    if (!n->with_version) {
        return mp_fail(MP_SELECT_NO_VERSION, MPREG_E_NO_VERSION,
                       "no endpoint version satisfies the constraint");
    }
    return mp_fail(MP_SELECT_NO_RESOURCES, MPREG_E_NO_RESOURCES,
                   "no endpoint has every requested resource");
}

mp_selection mp_select_function(const mp_catalog *c, const mp_function_query *q, mp_rng *rng) {
    if (!c || !q || !mp_str_given(q->name)) {
        return mp_fail(MP_SELECT_INVALID, MPREG_E_INVALID, "no function name given");
    }
    mp_semver_constraint constraint;
    if (mp_str_given(q->version)) {
        const char *why = NULL;
        if (mp_semver_constraint_parse(q->version, strlen(q->version), &constraint, &why)) {
            return mp_fail(MP_SELECT_BAD_CONSTRAINT, MPREG_E_BAD_SEMVER,
                           why ? why : "bad version constraint");
        }
    }
    mp_select_walk w = {
        .q = q,
        .constraint = mp_str_given(q->version) ? &constraint : NULL,
        .local_node = mp_catalog_local_node(c),
    };
    mp_ties_init(&w.ties);
    mp_catalog_each_function(c, q->name, mp_select_visit, &w);

    mp_selection s;
    if (!w.best) {
        s = mp_failure_from_counts(&w.counts);
    } else {
        const mp_function_endpoint *ep = mp_break_tie(&w.ties, rng);
        bool local = mp_is_local(&w, ep);
        s = (mp_selection){
            .reason = local ? MP_SELECT_LOCAL : MP_SELECT_REMOTE,
            .error = MPREG_OK,
            .endpoint = ep,
            .ties = w.ties.total,
            .why = local ? "selected an endpoint on this node"
                         : "selected an endpoint on another node",
        };
    }
    s.candidates = w.counts.candidates;
    mp_ties_free(&w.ties);
    return s;
}

const char *mp_select_reason_name(mp_select_reason r) {
    switch (r) {
    case MP_SELECT_LOCAL:
        return "local";
    case MP_SELECT_REMOTE:
        return "remote";
    case MP_SELECT_NO_SUCH_FUNCTION:
        return "no_such_function";
    case MP_SELECT_NO_FUNCTION_ID:
        return "no_function_id";
    case MP_SELECT_NO_VERSION:
        return "no_version";
    case MP_SELECT_NO_RESOURCES:
        return "no_resources";
    case MP_SELECT_BAD_CONSTRAINT:
        return "bad_constraint";
    case MP_SELECT_INVALID:
        return "invalid";
    }
    return "unknown";
}
