/* sim_cluster.c - membership and catalog views over the simulated nodes.
 *
 * What scenarios ask of a cluster: does every node list every other as
 * alive, does every catalog hold (or no longer hold) an entry, do all
 * catalogs agree. Each check is O(nodes) (or O(nodes x entries) for the
 * "forgot everything of j" check), meant to be polled every few hundred
 * virtual milliseconds, not per event.
 *
 * Membership is read through mp_node_swim (node_cluster.c); a node that
 * runs standalone has none, and every membership check is then false. */
#include "sim/sim_internal.h"

#include "fabric/catalog.h"
#include "fabric/membership.h"

#include <stdlib.h>
#include <string.h>

static mp_swim *mp_sim_swim(mp_sim *s, uint32_t i) {
    mp_node *n = mp_sim_node(s, i);
    return n ? mp_node_swim(n) : NULL;
}

size_t mp_sim_alive_seen(mp_sim *s, uint32_t i) {
    mp_swim *sw = mp_sim_swim(s, i);
    return sw ? mp_swim_member_count(sw, true) : 0;
}

int mp_sim_member_state(mp_sim *s, uint32_t i, uint32_t j) {
    mp_swim *sw = mp_sim_swim(s, i);
    mp_member m;
    if (!sw || j >= s->node_count || !mp_swim_find(sw, s->nodes[j].id, &m)) {
        return 0;
    }
    return (int)m.state;
}

bool mp_sim_members_converged(mp_sim *s) {
    /* The count alone could hide a missing node behind a dead one still
     * listed alive: nodes that ran and are down must not be alive. */
    uint32_t *down = malloc(s->node_count * sizeof *down);
    if (!down) {
        return false;
    }
    uint32_t up = 0, ndown = 0;
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (s->nodes[i].node) {
            up++;
        } else if (s->nodes[i].starts > 0) {
            down[ndown++] = i;
        }
    }
    bool ok = true;
    for (uint32_t i = 0; i < s->node_count && ok; i++) {
        if (!s->nodes[i].node) {
            continue;
        }
        ok = mp_sim_alive_seen(s, i) == up - 1;
        for (uint32_t k = 0; k < ndown && ok; k++) {
            ok = mp_sim_member_state(s, i, down[k]) != MP_MEMBER_ALIVE;
        }
    }
    free(down);
    return ok;
}

bool mp_sim_all_see_gone(mp_sim *s, uint32_t j) {
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (i == j || !s->nodes[i].node) {
            continue;
        }
        int st = mp_sim_member_state(s, i, j);
        if (st == MP_MEMBER_ALIVE || st == MP_MEMBER_SUSPECT) {
            return false;
        }
    }
    return true;
}

typedef struct mp_fn_probe {
    const char *origin; /* NULL = any */
    bool found;
} mp_fn_probe;

static bool mp_fn_visit(void *ud, const mp_entry *e) {
    mp_fn_probe *p = ud;
    if (!p->origin || strcmp(e->u.function.key.node, p->origin) == 0) {
        p->found = true;
        return false;
    }
    return true;
}

bool mp_sim_catalogs_function(mp_sim *s, const char *fun, uint32_t origin, bool has_it) {
    const char *oid = origin < s->node_count ? s->nodes[origin].id : NULL;
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (!s->nodes[i].node) {
            continue;
        }
        mp_fn_probe p = {oid, false};
        mp_catalog_each_function(mp_node_catalog(s->nodes[i].node), fun, mp_fn_visit, &p);
        if (p.found != has_it) {
            return false;
        }
    }
    return true;
}

typedef struct mp_origin_probe {
    const char *origin;
    bool found;
} mp_origin_probe;

static bool mp_origin_visit(void *ud, const mp_entry *e) {
    mp_origin_probe *p = ud;
    const char *o = mp_entry_origin(e);
    if (o && strcmp(o, p->origin) == 0) {
        p->found = true;
        return false;
    }
    return true;
}

bool mp_sim_catalogs_forgot(mp_sim *s, uint32_t j) {
    if (j >= s->node_count) {
        return false;
    }
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (i == j || !s->nodes[i].node) {
            continue;
        }
        mp_origin_probe p = {s->nodes[j].id, false};
        mp_catalog_each(mp_node_catalog(s->nodes[i].node), 0, mp_origin_visit, &p);
        if (p.found) {
            return false;
        }
    }
    return true;
}

bool mp_sim_catalogs_know_all(mp_sim *s) {
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (!s->nodes[i].node) {
            continue;
        }
        const mp_catalog *cat = mp_node_catalog(s->nodes[i].node);
        for (uint32_t j = 0; j < s->node_count; j++) {
            if (j != i && s->nodes[j].node && !mp_catalog_node(cat, s->nodes[j].id)) {
                return false;
            }
        }
    }
    return true;
}

static int mp_u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

size_t mp_sim_catalog_digests(mp_sim *s) {
    uint64_t *d = malloc(s->node_count * sizeof *d);
    if (!d) {
        return 0;
    }
    size_t n = 0;
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (s->nodes[i].node) {
            d[n++] = mp_catalog_digest(mp_node_catalog(s->nodes[i].node));
        }
    }
    qsort(d, n, sizeof *d, mp_u64_cmp);
    size_t distinct = 0;
    for (size_t k = 0; k < n; k++) {
        distinct += k == 0 || d[k] != d[k - 1];
    }
    free(d);
    return distinct;
}

bool mp_sim_catalogs_converged(mp_sim *s) {
    return mp_sim_catalog_digests(s) == 1;
}
