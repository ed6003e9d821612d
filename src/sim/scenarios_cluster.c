/* scenarios_cluster.c - the scenarios that need clustering.
 *
 * Every one starts the same way: N nodes, each joining through node 0
 * (seed_nodes = 1), without built-in functions so that catalogs hold just
 * what the scenario puts there, and waits until every node lists every
 * other as alive. Then each exercises one thing: change dissemination,
 * crash detection, partitions, cross-node RPC and pub/sub (queue groups
 * spanning nodes included), traffic at rest, scale. Waits are bounded in virtual time and polled
 * every few tens or hundreds of virtual ms (times are exact to that step).
 *
 * Gossip rounds are reported as time / 200 ms, the default gossip interval
 * of the membership (membership.h: gossip_interval_ms), which the
 * scenarios do not change. */
#include "sim/scenarios_internal.h"

#include "fabric/catalog.h"
#include "fabric/membership.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SC_GOSSIP_MS 200.0

/* --- shared steps --------------------------------------------------------------------- */

static uint64_t sc_check_ms(uint32_t n) {
    return n <= 64 ? 50 : n <= 256 ? 100 : 250;
}

typedef struct sc_faults {
    double loss;
    double dup;
    double reorder;
} sc_faults;

/* N clustered nodes, started together; NULL when that failed (reported). */
static mp_sim *sc_cluster(const mp_sim_run_opts *o, mp_sim_report *r, sc_faults f) {
    mp_sim_config cfg;
    mp_sim_config_default(&cfg);
    cfg.nodes = o->nodes;
    cfg.seed_nodes = 1;
    cfg.node.no_builtins = true;
    cfg.net.loss = f.loss;
    cfg.net.dup = f.dup;
    cfg.net.reorder = f.reorder;
    return sc_new(o, &cfg, r);
}

static bool sc_p_members(mp_sim *s, void *ud) {
    (void)ud;
    return mp_sim_members_converged(s);
}

static bool sc_p_know_all(mp_sim *s, void *ud) {
    (void)ud;
    return mp_sim_catalogs_know_all(s);
}

static bool sc_p_digests(mp_sim *s, void *ud) {
    (void)ud;
    return mp_sim_catalogs_converged(s);
}

/* Functions that must be (or not be) in every catalog. */
typedef struct sc_fns {
    const char *fun[4];
    uint32_t origin[4];
    size_t n;
    bool has;
    bool and_digests; /* and every catalog has the same digest */
} sc_fns;

static bool sc_p_fns(mp_sim *s, void *ud) {
    const sc_fns *q = ud;
    for (size_t i = 0; i < q->n; i++) {
        if (!mp_sim_catalogs_function(s, q->fun[i], q->origin[i], q->has)) {
            return false;
        }
    }
    return !q->and_digests || mp_sim_catalogs_converged(s);
}

static bool sc_p_gone(mp_sim *s, void *ud) {
    return mp_sim_all_see_gone(s, *(const uint32_t *)ud);
}

typedef struct sc_purge {
    uint32_t node;
    const char *fun;
} sc_purge;

static bool sc_p_purged(mp_sim *s, void *ud) {
    const sc_purge *p = ud;
    return mp_sim_catalogs_forgot(s, p->node) &&
           mp_sim_catalogs_function(s, p->fun, p->node, false);
}

/* Waits for pred; on the limit, fails with "what" and returns UINT64_MAX. */
static uint64_t sc_wait(mp_sim *s, const mp_sim_run_opts *o, mp_sim_report *r,
                        bool (*pred)(mp_sim *, void *), void *ud, uint64_t limit_ms,
                        const char *what) {
    uint64_t ms = mp_sim_run_until_true(s, pred, ud, sc_check_ms(o->nodes), limit_ms);
    if (ms == UINT64_MAX) {
        sc_fail(r, "%s did not happen within %llu virtual s (at %llu ms)", what,
                (unsigned long long)(limit_ms / 1000), (unsigned long long)mp_sim_elapsed(s));
    } else {
        /* How long this wait took, and when it ended: the figures count
         * either (fn_ms the wait, catalog_ms from the start), and a line
         * that showed only the first disagreed with the report. */
        sc_say(o, "  %-44s %8llu ms  (at %llu ms)", what, (unsigned long long)ms,
               (unsigned long long)mp_sim_elapsed(s));
    }
    return ms;
}

/* Adds how many members the nodes see to a membership failure. */
static void sc_explain_members(mp_sim *s, mp_sim_report *r) {
    size_t lo = SIZE_MAX, hi = 0;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        if (mp_sim_node_up(s, i)) {
            size_t a = mp_sim_alive_seen(s, i);
            lo = a < lo ? a : lo;
            hi = a > hi ? a : hi;
        }
    }
    size_t len = strlen(r->failure);
    snprintf(r->failure + len, sizeof r->failure - len,
             "; nodes list between %zu and %zu others alive", lo == SIZE_MAX ? 0 : lo, hi);
}

static uint64_t sc_join_limit(uint32_t n) {
    return n <= 64 ? 60000 : 180000;
}

/* Every node lists every other alive: the start of every scenario here. */
static uint64_t sc_converge(mp_sim *s, const mp_sim_run_opts *o, mp_sim_report *r) {
    uint64_t ms = sc_wait(s, o, r, sc_p_members, NULL, sc_join_limit(o->nodes),
                          "every node lists every other alive");
    if (ms == UINT64_MAX) {
        sc_explain_members(s, r);
    }
    return ms;
}

static mpreg_err sc_echo_on(mp_sim *s, uint32_t i, const char *fun, mp_sim_report *r) {
    mpreg_err err = sc_register_echo(s, i, fun);
    if (err) {
        sc_fail(r, "registering %s on node %u: %s", fun, i, mpreg_err_name(err));
    }
    return err;
}

static uint64_t sc_gossip_out(mp_sim *s, uint32_t i, bool bytes) {
    mp_sim_kind_stats k;
    mp_sim_node_kind_stats(s, i, MP_KIND_GOSSIP, &k);
    return bytes ? k.bytes_out : k.msgs_out;
}

static void sc_gossip_totals(mp_sim *s, mp_sim_report *r) {
    mp_sim_kind_stats k;
    mp_sim_kind_totals(s, MP_KIND_GOSSIP, &k);
    sc_metric(r, "gossip_msgs", (double)k.msgs_out, "");
    sc_metric(r, "gossip_bytes", (double)k.bytes_out, "bytes");
}

/* --- join ------------------------------------------------------------------------------- */

void sc_join(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0});
    if (!s) {
        return;
    }
    sc_say(o, "join: %u nodes through node 0", o->nodes);
    uint64_t members = sc_converge(s, o, r);
    if (members != UINT64_MAX) {
        sc_metric(r, "join_ms", (double)members, "ms");
        sc_metric(r, "join_rounds", (double)members / SC_GOSSIP_MS, "");
        uint64_t cat =
            sc_wait(s, o, r, sc_p_know_all, NULL, 60000, "every catalog describes every node");
        if (cat != UINT64_MAX) {
            /* From the start, like join_ms: the progress line's "at". */
            sc_metric(r, "catalog_ms", (double)mp_sim_elapsed(s), "ms");
        }
    }
    uint32_t origin = o->nodes - 1;
    if (r->ok && sc_echo_on(s, origin, "sim.join.fn", r) == MPREG_OK) {
        sc_fns q = {{"sim.join.fn"}, {origin}, 1, true, false};
        uint64_t fn = sc_wait(s, o, r, sc_p_fns, &q, 60000, "a new function is in every catalog");
        if (fn != UINT64_MAX) {
            sc_metric(r, "fn_ms", (double)fn, "ms");
            sc_metric(r, "fn_rounds", (double)fn / SC_GOSSIP_MS, "");
        }
    }
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}

/* --- crash ------------------------------------------------------------------------------- */

void sc_crash(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0});
    if (!s) {
        return;
    }
    uint32_t victim = o->nodes - 1;
    sc_say(o, "crash: %u nodes, node %u dies", o->nodes, victim);
    sc_fns q = {{"sim.crash.fn"}, {victim}, 1, true, false};
    if (sc_converge(s, o, r) != UINT64_MAX && sc_echo_on(s, victim, "sim.crash.fn", r) == 0) {
        sc_wait(s, o, r, sc_p_fns, &q, 60000, "the victim's function is in every catalog");
    }
    if (r->ok) {
        mp_sim_node_crash(s, victim);
        uint64_t gone = sc_wait(s, o, r, sc_p_gone, &victim, 60000, "every node lists it dead");
        if (gone != UINT64_MAX) {
            sc_metric(r, "detect_ms", (double)gone, "ms");
            sc_metric(r, "detect_rounds", (double)gone / SC_GOSSIP_MS, "");
            sc_purge p = {victim, "sim.crash.fn"};
            uint64_t purged =
                sc_wait(s, o, r, sc_p_purged, &p, 60000, "its entries are gone from every catalog");
            if (purged != UINT64_MAX) {
                sc_metric(r, "purge_ms", (double)(gone + purged), "ms");
            }
        }
    }
    if (r->ok) {
        /* Nobody else was taken for dead on the way. */
        sc_wait(s, o, r, sc_p_members, NULL, 10000, "the survivors all list each other alive");
    }
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}

/* --- partition-heal ------------------------------------------------------------------------ */

#define SC_PARTITION_MS 20000

void sc_partition_heal(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0});
    if (!s) {
        return;
    }
    uint32_t n = o->nodes, a = 0, b = n - 1, a2 = 1, b2 = n - 2;
    sc_say(o, "partition-heal: %u nodes split %u / %u for %u s", n, n / 2, n - n / 2,
           SC_PARTITION_MS / 1000);
    sc_fns before = {{"sim.ph.a", "sim.ph.b"}, {a, b}, 2, true, false};
    if (sc_converge(s, o, r) != UINT64_MAX && sc_echo_on(s, a, "sim.ph.a", r) == 0 &&
        sc_echo_on(s, b, "sim.ph.b", r) == 0) {
        sc_wait(s, o, r, sc_p_fns, &before, 60000, "both functions are in every catalog");
    }
    if (!r->ok) {
        sc_finish(s, r);
        return;
    }
    mp_sim_partition_halves(s);
    mp_sim_run_for(s, 1000);
    /* A change on each side while they cannot talk. */
    if (sc_echo_on(s, a2, "sim.ph.a2", r) || sc_echo_on(s, b2, "sim.ph.b2", r)) {
        sc_finish(s, r);
        return;
    }
    mp_sim_run_for(s, SC_PARTITION_MS - 1000);
    uint32_t cross_dead = 0;
    for (uint32_t i = 0; i < n / 2; i++) {
        int st = mp_sim_member_state(s, i, b);
        cross_dead += st == MP_MEMBER_DEAD || st == MP_MEMBER_LEFT || st == 0;
    }
    sc_metric(r, "split_views_dead", (double)cross_dead, "");
    sc_metric(r, "digests_at_heal", (double)mp_sim_catalog_digests(s), "");
    mp_sim_heal(s);
    sc_fns after = {
        {"sim.ph.a", "sim.ph.b", "sim.ph.a2", "sim.ph.b2"}, {a, b, a2, b2}, 4, true, true};
    uint64_t cat =
        sc_wait(s, o, r, sc_p_fns, &after, 120000, "catalogs converge with both sides' changes");
    if (cat != UINT64_MAX) {
        sc_metric(r, "catalog_heal_ms", (double)cat, "ms");
        uint64_t mem = sc_converge(s, o, r);
        if (mem != UINT64_MAX) {
            sc_metric(r, "members_heal_ms", (double)(cat + mem), "ms");
        }
    } else {
        size_t len = strlen(r->failure);
        snprintf(r->failure + len, sizeof r->failure - len, "; %zu distinct catalog digests",
                 mp_sim_catalog_digests(s));
    }
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}

/* --- rpc-across ------------------------------------------------------------------------------ */

/* Roles: node 0 serves sim.rpc.a (echo), nodes 1 and 2 sim.rpc.b (inc),
 * a worker client on node 3 sim.rpc.w (double, 5 ms); clients on nodes
 * 4.. send requests; node 2 crashes mid-run. */
#define SC_RA_VICTIM 2
#define SC_RA_LOAD_MS 16000
#define SC_RA_CRASH_MS 4000
#define SC_RA_EVERY_MS 20
#define SC_RA_TIMEOUT_MS 3000
#define SC_RA_SETTLE_MS 1000 /* after everyone saw the crash, requests must succeed */

static mpreg_err sc_ra_double(void *ud, const mpreg_value *args, const mpreg_value *kwargs,
                              mpreg_value *result) {
    (void)ud;
    (void)kwargs;
    if (args->u.arr.len != 1 || args->u.arr.items[0].type != MPREG_INT) {
        return MPREG_E_INVALID;
    }
    *result = mpreg_int(args->u.arr.items[0].u.i * 2);
    return MPREG_OK;
}

static uint32_t sc_ra_send(mp_sim *s, uint32_t c, int kind, long long x) {
    char json[320];
    switch (kind) {
    case 0:
        snprintf(json, sizeof json, "[{\"name\":\"r\",\"fun\":\"sim.rpc.a\",\"args\":[%lld]}]", x);
        break;
    case 1:
        snprintf(json, sizeof json,
                 "[{\"name\":\"s\",\"fun\":\"sim.rpc.a\",\"args\":[%lld]},"
                 "{\"name\":\"t\",\"fun\":\"sim.rpc.b\",\"args\":[\"s\"]}]",
                 x);
        break;
    case 2:
        snprintf(json, sizeof json, "[{\"name\":\"u\",\"fun\":\"sim.rpc.w\",\"args\":[%lld]}]", x);
        break;
    default:
        snprintf(json, sizeof json,
                 "[{\"name\":\"v\",\"fun\":\"sim.rpc.b\",\"args\":[%lld]},"
                 "{\"name\":\"w\",\"fun\":\"sim.rpc.w\",\"args\":[\"v\"]}]",
                 x);
        break;
    }
    uint32_t op = mp_sim_client_request_json(s, c, json, SC_RA_TIMEOUT_MS);
    mp_sim_client_tag_op(s, c, op, ((uint64_t)kind << 48) | (uint64_t)x);
    return op;
}

static bool sc_ra_correct(const mp_sim_op *op) {
    int kind = (int)(op->tag >> 48);
    long long x = (long long)(op->tag & 0xffffffffffffull);
    char want[128];
    static const char *const names[] = {"r", "t", "u", "w"};
    long long v = kind == 0 ? x : kind == 1 ? x + 1 : kind == 2 ? 2 * x : 2 * (x + 1);
    snprintf(want, sizeof want, "{\"%s\": %lld}", names[kind & 3], v);
    return sc_value_is(&op->value, want);
}

static bool sc_ra_setup(mp_sim *s, const mp_sim_run_opts *o, mp_sim_report *r) {
    if (sc_converge(s, o, r) == UINT64_MAX) {
        return false;
    }
    if (sc_register_echo(s, 0, "sim.rpc.a") || sc_register_inc(s, 1, "sim.rpc.b") ||
        sc_register_inc(s, 2, "sim.rpc.b")) {
        sc_fail(r, "registering the functions failed");
        return false;
    }
    uint32_t worker = mp_sim_client_open(s, 3, "worker");
    mp_sim_client_register(s, worker, "sim.rpc.w", sc_ra_double, NULL, 5);
    sc_fns q = {{"sim.rpc.a", "sim.rpc.b", "sim.rpc.b", "sim.rpc.w"}, {0, 1, 2, 3}, 4, true, false};
    return sc_wait(s, o, r, sc_p_fns, &q, 60000, "every function is in every catalog") !=
           UINT64_MAX;
}

void sc_rpc_across(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0.05, 0.02, 0.05});
    if (!s) {
        return;
    }
    sc_say(o, "rpc-across: %u nodes, clients on nodes 4..%u, node %d crashes at +%d ms", o->nodes,
           o->nodes - 1, SC_RA_VICTIM, SC_RA_CRASH_MS);
    if (!sc_ra_setup(s, o, r)) {
        sc_finish(s, r);
        return;
    }
    uint32_t first = 4, nclients = o->nodes - first;
    uint32_t *clients = calloc(nclients, sizeof *clients);
    if (!clients) {
        sc_fail(r, "out of memory");
        sc_finish(s, r);
        return;
    }
    for (uint32_t k = 0; k < nclients; k++) {
        clients[k] = mp_sim_client_open(s, first + k, NULL);
    }
    uint64_t start = mp_sim_now(s), crash_at = start + SC_RA_CRASH_MS, seen_at = 0;
    for (uint32_t step = 0; (uint64_t)step * SC_RA_EVERY_MS < SC_RA_LOAD_MS; step++) {
        if (mp_sim_now(s) >= crash_at && mp_sim_node_up(s, SC_RA_VICTIM)) {
            mp_sim_node_crash(s, SC_RA_VICTIM);
        }
        if (!seen_at && !mp_sim_node_up(s, SC_RA_VICTIM) && mp_sim_all_see_gone(s, SC_RA_VICTIM)) {
            seen_at = mp_sim_now(s);
        }
        for (uint32_t k = 0; k < nclients; k++) {
            sc_ra_send(s, clients[k], (int)((step + k) % 4), (long long)k * 1000000 + step);
        }
        mp_sim_run_for(s, SC_RA_EVERY_MS);
    }
    mp_sim_run_for(s, SC_RA_TIMEOUT_MS + 2000);
    if (!seen_at) {
        sc_fail(r, "the crash of node %d was not detected by everyone within %d ms", SC_RA_VICTIM,
                SC_RA_LOAD_MS - SC_RA_CRASH_MS);
    }
    size_t total = 0, ok = 0, nlat = 0, late_errors = 0, early_errors = 0;
    size_t cap = (size_t)nclients * (SC_RA_LOAD_MS / SC_RA_EVERY_MS + 1);
    uint64_t *lat = calloc(cap, sizeof *lat);
    uint64_t codes[10] = {0}; /* by hundreds: 3xx rpc, 4xx routing, 9xx internal */
    for (uint32_t k = 0; k < nclients && lat; k++) {
        if (mp_sim_client_closed(s, clients[k])) {
            sc_fail(r, "client %u lost its connection to node %u", clients[k], first + k);
        }
        sc_check_answered(s, clients[k], MP_SIM_OP_REQUEST, r);
        for (uint32_t i = 0; i < mp_sim_client_op_count(s, clients[k]); i++) {
            const mp_sim_op *op = mp_sim_client_op(s, clients[k], i);
            total++;
            if (op->ok) {
                ok++;
                if (!sc_ra_correct(op)) {
                    sc_fail(r, "client %u request %u: a wrong result", clients[k], i);
                }
                if (nlat < cap) {
                    lat[nlat++] = op->answered_ms - op->sent_ms;
                }
                continue;
            }
            codes[(op->code / 100) % 10]++;
            if (op->sent_ms + SC_RA_TIMEOUT_MS + 100 < crash_at) {
                early_errors++;
            } else if (seen_at && op->sent_ms >= seen_at + SC_RA_SETTLE_MS) {
                late_errors++;
            }
        }
    }
    if (early_errors) {
        sc_fail(r, "%zu requests failed before the crash", early_errors);
    }
    if (late_errors) {
        sc_fail(r, "%zu requests failed after every node had seen the crash", late_errors);
    }
    sc_metric(r, "requests", (double)total, "");
    sc_metric(r, "results", (double)ok, "");
    sc_metric(r, "errors", (double)(total - ok), "");
    sc_metric(r, "errors_rpc_3xx", (double)codes[3], "");
    sc_metric(r, "errors_route_4xx", (double)codes[4], "");
    sc_metric(r, "errors_other", (double)(total - ok - codes[3] - codes[4]), "");
    if (seen_at) {
        sc_metric(r, "detect_ms", (double)(seen_at - crash_at), "ms");
    }
    sc_metric(r, "latency_p50", sc_percentile(lat, nlat, 0.5), "ms");
    sc_metric(r, "latency_p99", sc_percentile(lat, nlat, 0.99), "ms");
    free(lat);
    free(clients);
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}

/* --- pubsub-across ------------------------------------------------------------------------------
 */

#define SC_PA_MESSAGES 100 /* per publisher */
#define SC_PA_EVERY_MS 10

typedef struct sc_interest {
    const char *topic;
    size_t nodes; /* every catalog matches the topic for this many nodes */
} sc_interest;

static void sc_count_node(void *ud, const char *node) {
    (void)node;
    (*(size_t *)ud)++;
}

static bool sc_p_interest(mp_sim *s, void *ud) {
    const sc_interest *q = ud;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        mp_node *n = mp_sim_node(s, i);
        size_t count = 0;
        if (n) {
            mp_catalog_match_topic(mp_node_catalog(n), q->topic, strlen(q->topic), sc_count_node,
                                   &count);
            if (count != q->nodes) {
                return false;
            }
        }
    }
    return true;
}

/* Per subscription: no id twice, every message, each publisher in order
 * ("p:seq" payloads). */
static void sc_pa_check(mp_sim *s, uint32_t c, uint32_t npubs, uint64_t expected, mp_sim_report *r,
                        uint64_t *dups, uint64_t *disorder, uint64_t *lat, size_t *nlat,
                        size_t cap) {
    mp_map seen = MP_MAP_INIT;
    long *last = calloc(npubs, sizeof *last);
    if (!last) {
        return;
    }
    for (uint32_t p = 0; p < npubs; p++) {
        last[p] = -1;
    }
    size_t got = mp_sim_client_delivery_count(s, c);
    for (size_t k = 0; k < got; k++) {
        const mp_sim_delivery *d = mp_sim_client_delivery(s, c, k);
        if (mp_map_get(&seen, d->id.bytes, MP_ID_LEN)) {
            (*dups)++;
            continue;
        }
        mp_map_put(&seen, d->id.bytes, MP_ID_LEN, (void *)1, NULL);
        char text[32];
        unsigned p;
        long seq;
        snprintf(text, sizeof text, "%.*s", (int)(d->len < 31 ? d->len : 31),
                 (const char *)d->data);
        if (sscanf(text, "%u:%ld", &p, &seq) == 2 && p < npubs) {
            *disorder += seq <= last[p];
            last[p] = seq;
            if (*nlat < cap) {
                lat[(*nlat)++] = d->at_ms; /* turned into latencies by the caller */
            }
        }
    }
    if (mp_map_count(&seen) != expected) {
        sc_fail(r, "subscriber %u got %zu distinct messages of %llu", c, mp_map_count(&seen),
                (unsigned long long)expected);
    }
    mp_map_free(&seen, NULL);
    free(last);
}

void sc_pubsub_across(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0.05, 0.05, 0.05});
    if (!s) {
        return;
    }
    uint32_t nsubs = o->nodes / 2, npubs = o->nodes - nsubs;
    sc_say(o, "pubsub-across: subscribers on nodes 0..%u, publishers on %u..%u", nsubs - 1, nsubs,
           o->nodes - 1);
    if (sc_converge(s, o, r) == UINT64_MAX) {
        sc_finish(s, r);
        return;
    }
    uint32_t *subs = calloc(nsubs, sizeof *subs), *pubs = calloc(npubs, sizeof *pubs);
    if (!subs || !pubs) {
        sc_fail(r, "out of memory");
    }
    for (uint32_t k = 0; k < nsubs && r->ok; k++) {
        /* Node 0's subscriber has overlapping patterns: still once per message. */
        const char *pats[2] = {"sim.ps.#", "sim.ps.*"};
        subs[k] = mp_sim_client_open(s, k, NULL);
        mp_sim_client_subscribe(s, subs[k], pats, k == 0 ? 2 : 1, NULL);
    }
    sc_interest q = {"sim.ps.p0", nsubs};
    if (r->ok) {
        sc_wait(s, o, r, sc_p_interest, &q, 60000, "every catalog knows every subscriber");
    }
    for (uint32_t p = 0; p < npubs && r->ok; p++) {
        pubs[p] = mp_sim_client_open(s, nsubs + p, NULL);
    }
    mp_sim_run_for(s, 100);
    uint64_t t0 = mp_sim_now(s);
    for (uint32_t k = 0; k < SC_PA_MESSAGES && r->ok; k++) {
        for (uint32_t p = 0; p < npubs; p++) {
            char topic[32], data[32];
            snprintf(topic, sizeof topic, "sim.ps.p%u", p);
            int len = snprintf(data, sizeof data, "%u:%u", p, k);
            mp_sim_client_publish(s, pubs[p], topic, data, (size_t)len);
        }
        mp_sim_run_for(s, SC_PA_EVERY_MS);
    }
    mp_sim_run_for(s, 3000);
    uint64_t dups = 0, disorder = 0, delivered = 0;
    size_t cap = (size_t)nsubs * npubs * SC_PA_MESSAGES, nlat = 0;
    uint64_t *lat = calloc(cap ? cap : 1, sizeof *lat);
    for (uint32_t k = 0; k < nsubs && r->ok && lat; k++) {
        delivered += mp_sim_client_delivery_count(s, subs[k]);
        sc_pa_check(s, subs[k], npubs, (uint64_t)npubs * SC_PA_MESSAGES, r, &dups, &disorder, lat,
                    &nlat, cap);
    }
    for (uint32_t p = 0; p < npubs && r->ok; p++) {
        for (uint32_t k = 0; k < mp_sim_client_op_count(s, pubs[p]); k++) {
            if (mp_sim_client_op(s, pubs[p], k)->answers) {
                sc_fail(r, "publisher %u: publish %u was refused", p, k);
            }
        }
    }
    if (dups) {
        sc_fail(r, "%llu messages delivered twice to one subscription", (unsigned long long)dups);
    }
    if (disorder) {
        sc_fail(r, "%llu deliveries out of publish order", (unsigned long long)disorder);
    }
    sc_metric(r, "published", (double)npubs * SC_PA_MESSAGES, "");
    sc_metric(r, "delivered", (double)delivered, "");
    sc_metric(r, "expected", (double)nsubs * npubs * SC_PA_MESSAGES, "");
    sc_metric(r, "duplicates", (double)dups, "");
    sc_metric(r, "out_of_order", (double)disorder, "");
    /* Delivery times relative to the start of publishing, as a spread. */
    for (size_t k = 0; k < nlat; k++) {
        lat[k] -= t0;
    }
    sc_metric(r, "last_delivery_ms", nlat ? sc_percentile(lat, nlat, 1.0) : 0, "ms");
    free(lat);
    free(subs);
    free(pubs);
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}

/* --- queue-group-across --------------------------------------------------------------------------
 */

#define SC_QG_MESSAGES 100 /* per publisher */
#define SC_QG_GROUP_NODES 3
#define SC_QG_PLAIN_NODES 2

typedef struct sc_group_interest {
    const char *topic;
    size_t plain; /* every catalog matches the topic for this many nodes ... */
    size_t pairs; /* ... and this many (node, group) pairs */
} sc_group_interest;

static void sc_count_pair(void *ud, const char *node, const char *group) {
    (void)node;
    (void)group;
    (*(size_t *)ud)++;
}

static bool sc_p_group_interest(mp_sim *s, void *ud) {
    const sc_group_interest *q = ud;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        mp_node *n = mp_sim_node(s, i);
        if (!n) {
            continue;
        }
        mp_catalog *c = mp_node_catalog(n);
        size_t plain = 0, pairs = 0;
        mp_catalog_match_topic(c, q->topic, strlen(q->topic), sc_count_node, &plain);
        mp_catalog_match_topic_groups(c, q->topic, strlen(q->topic), sc_count_pair, &pairs);
        if (plain != q->plain || pairs != q->pairs) {
            return false;
        }
    }
    return true;
}

/* The message a delivery is, from its "p:seq" payload; -1 when it is none. */
static long sc_qg_message(const mp_sim_delivery *d, uint32_t npubs) {
    char text[32];
    unsigned p;
    long seq;
    snprintf(text, sizeof text, "%.*s", (int)(d->len < 31 ? d->len : 31), (const char *)d->data);
    if (sscanf(text, "%u:%ld", &p, &seq) != 2 || p >= npubs || seq < 0 || seq >= SC_QG_MESSAGES) {
        return -1;
    }
    return (long)p * SC_QG_MESSAGES + seq;
}

/* Adds client c's deliveries to count[message]; returns how many there were. */
static size_t sc_qg_tally(mp_sim *s, uint32_t c, uint32_t npubs, uint32_t *count,
                          mp_sim_report *r) {
    size_t got = mp_sim_client_delivery_count(s, c);
    for (size_t k = 0; k < got; k++) {
        long m = sc_qg_message(mp_sim_client_delivery(s, c, k), npubs);
        if (m < 0) {
            sc_fail(r, "client %u got a message nobody published", c);
            continue;
        }
        count[m]++;
    }
    return got;
}

void sc_queue_group_across(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0.05, 0.05, 0.05});
    if (!s) {
        return;
    }
    uint32_t first_pub = SC_QG_GROUP_NODES + SC_QG_PLAIN_NODES, npubs = o->nodes - first_pub;
    sc_say(o,
           "queue-group-across: group g on nodes 0..%u, plain subscribers on %u..%u, "
           "publishers on %u..%u",
           SC_QG_GROUP_NODES - 1, SC_QG_GROUP_NODES, first_pub - 1, first_pub, o->nodes - 1);
    if (sc_converge(s, o, r) == UINT64_MAX) {
        sc_finish(s, r);
        return;
    }
    /* Two members on node 0 (they share its part), one on each other group
     * node; the plain subscribers' pattern is another than the members'. */
    uint32_t members[SC_QG_GROUP_NODES + 1], member_node[SC_QG_GROUP_NODES + 1];
    uint32_t plain[SC_QG_PLAIN_NODES];
    const char *group_pats[] = {"sim.qg.#"}, *plain_pats[] = {"sim.qg.*"};
    size_t nmembers = 0;
    for (uint32_t i = 0; i < SC_QG_GROUP_NODES; i++) {
        for (uint32_t k = 0; k < (i == 0 ? 2u : 1u); k++) {
            member_node[nmembers] = i;
            members[nmembers] = mp_sim_client_open(s, i, NULL);
            mp_sim_client_subscribe(s, members[nmembers++], group_pats, 1, "g");
        }
    }
    for (uint32_t i = 0; i < SC_QG_PLAIN_NODES; i++) {
        plain[i] = mp_sim_client_open(s, SC_QG_GROUP_NODES + i, NULL);
        mp_sim_client_subscribe(s, plain[i], plain_pats, 1, NULL);
    }
    sc_group_interest q = {"sim.qg.p0", SC_QG_PLAIN_NODES, SC_QG_GROUP_NODES};
    sc_wait(s, o, r, sc_p_group_interest, &q, 60000, "every catalog knows every subscriber");
    uint32_t *pubs = calloc(npubs, sizeof *pubs);
    uint32_t *group_count = calloc((size_t)npubs * SC_QG_MESSAGES, sizeof *group_count);
    uint32_t *plain_count = calloc((size_t)npubs * SC_QG_MESSAGES, sizeof *plain_count);
    if (!pubs || !group_count || !plain_count) {
        sc_fail(r, "out of memory");
    }
    for (uint32_t p = 0; p < npubs && r->ok; p++) {
        pubs[p] = mp_sim_client_open(s, first_pub + p, NULL);
    }
    mp_sim_run_for(s, 100);
    for (uint32_t k = 0; k < SC_QG_MESSAGES && r->ok; k++) {
        for (uint32_t p = 0; p < npubs; p++) {
            char topic[32], data[32];
            snprintf(topic, sizeof topic, "sim.qg.p%u", p);
            int len = snprintf(data, sizeof data, "%u:%u", p, k);
            mp_sim_client_publish(s, pubs[p], topic, data, (size_t)len);
        }
        mp_sim_run_for(s, SC_PA_EVERY_MS);
    }
    mp_sim_run_for(s, 3000);
    size_t per_node[SC_QG_GROUP_NODES] = {0}, group_total = 0, plain_total = 0;
    size_t expected = (size_t)npubs * SC_QG_MESSAGES;
    for (size_t m = 0; m < nmembers && r->ok; m++) {
        size_t n = sc_qg_tally(s, members[m], npubs, group_count, r);
        per_node[member_node[m]] += n;
        group_total += n;
    }
    for (uint32_t i = 0; i < SC_QG_PLAIN_NODES && r->ok; i++) {
        memset(plain_count, 0, expected * sizeof *plain_count);
        plain_total += sc_qg_tally(s, plain[i], npubs, plain_count, r);
        for (size_t m = 0; m < expected && r->ok; m++) {
            if (plain_count[m] != 1) {
                sc_fail(r, "plain subscriber on node %u got message %u:%zu %u times",
                        SC_QG_GROUP_NODES + i, (unsigned)(m / SC_QG_MESSAGES), m % SC_QG_MESSAGES,
                        plain_count[m]);
            }
        }
    }
    for (size_t m = 0; m < expected && r->ok; m++) {
        if (group_count[m] != 1) {
            sc_fail(r, "message %u:%zu reached %u members of group g (want exactly one)",
                    (unsigned)(m / SC_QG_MESSAGES), m % SC_QG_MESSAGES, group_count[m]);
        }
    }
    for (uint32_t i = 0; i < SC_QG_GROUP_NODES && r->ok; i++) {
        if (per_node[i] == 0) {
            sc_fail(r, "the members on node %u got no message: the load does not spread", i);
        }
    }
    for (uint32_t p = 0; p < npubs && r->ok; p++) {
        for (uint32_t k = 0; k < mp_sim_client_op_count(s, pubs[p]); k++) {
            if (mp_sim_client_op(s, pubs[p], k)->answers) {
                sc_fail(r, "publisher %u: publish %u was refused", p, k);
            }
        }
    }
    sc_metric(r, "published", (double)expected, "");
    sc_metric(r, "group_delivered", (double)group_total, "");
    sc_metric(r, "plain_delivered", (double)plain_total, "");
    sc_metric(r, "plain_expected", (double)expected * SC_QG_PLAIN_NODES, "");
    for (uint32_t i = 0; i < SC_QG_GROUP_NODES; i++) {
        char name[32];
        snprintf(name, sizeof name, "group_node%u", i);
        sc_metric(r, name, (double)per_node[i], "");
    }
    free(pubs);
    free(group_count);
    free(plain_count);
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}

/* --- rest-traffic ------------------------------------------------------------------------------
 */

typedef struct sc_rest {
    double msgs_mean, msgs_min, msgs_max;
    double bytes_mean, bytes_min, bytes_max;
    /* Connections dialed per node per second: once a cluster has more
     * members than a node keeps links (max_peer_conns), probing them in
     * turn means dialing most of them. */
    double dials_mean;
} sc_rest;

/* Per-node GOSSIP and dial rates over window_ms of a cluster left alone. */
static bool sc_measure_rest(mp_sim *s, const mp_sim_run_opts *o, mp_sim_report *r,
                            uint64_t window_ms, bool per_node, sc_rest *out) {
    uint32_t n = mp_sim_node_count(s);
    uint64_t *m0 = calloc(n, sizeof *m0), *b0 = calloc(n, sizeof *b0);
    if (!m0 || !b0) {
        free(m0);
        free(b0);
        sc_fail(r, "out of memory");
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        m0[i] = sc_gossip_out(s, i, false);
        b0[i] = sc_gossip_out(s, i, true);
    }
    mp_sim_stats st0, st1;
    mp_sim_get_stats(s, &st0);
    mp_sim_run_for(s, window_ms);
    mp_sim_get_stats(s, &st1);
    double secs = (double)window_ms / 1000.0, sm = 0, sb = 0;
    uint32_t up = 0;
    out->msgs_min = out->bytes_min = 1e300;
    out->msgs_max = out->bytes_max = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!mp_sim_node_up(s, i)) {
            continue;
        }
        double mr = (double)(sc_gossip_out(s, i, false) - m0[i]) / secs;
        double br = (double)(sc_gossip_out(s, i, true) - b0[i]) / secs;
        if (per_node) {
            sc_say(o, "  %-8s gossip %8.2f msgs/s %10.1f bytes/s", mp_sim_node_id(s, i), mr, br);
        }
        if (mr == 0) {
            sc_fail(r, "node %u sent no gossip in %llu s at rest", i,
                    (unsigned long long)(window_ms / 1000));
        }
        up++;
        sm += mr;
        sb += br;
        out->msgs_min = mr < out->msgs_min ? mr : out->msgs_min;
        out->msgs_max = mr > out->msgs_max ? mr : out->msgs_max;
        out->bytes_min = br < out->bytes_min ? br : out->bytes_min;
        out->bytes_max = br > out->bytes_max ? br : out->bytes_max;
    }
    out->msgs_mean = up ? sm / up : 0;
    out->bytes_mean = up ? sb / up : 0;
    out->dials_mean = up ? (double)(st1.dials - st0.dials) / up / secs : 0;
    free(m0);
    free(b0);
    return true;
}

static void sc_rest_metrics(mp_sim_report *r, const sc_rest *x) {
    sc_metric(r, "gossip_msgs_s_mean", x->msgs_mean, "msgs/s");
    sc_metric(r, "gossip_msgs_s_min", x->msgs_min, "msgs/s");
    sc_metric(r, "gossip_msgs_s_max", x->msgs_max, "msgs/s");
    sc_metric(r, "gossip_bytes_s_mean", x->bytes_mean, "bytes/s");
    sc_metric(r, "gossip_bytes_s_min", x->bytes_min, "bytes/s");
    sc_metric(r, "gossip_bytes_s_max", x->bytes_max, "bytes/s");
    sc_metric(r, "dials_s_mean", x->dials_mean, "dials/s");
}

void sc_rest_traffic(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0});
    if (!s) {
        return;
    }
    sc_say(o, "rest-traffic: %u nodes, 60 s at rest after convergence", o->nodes);
    if (sc_converge(s, o, r) != UINT64_MAX) {
        sc_wait(s, o, r, sc_p_digests, NULL, 60000, "every catalog has one digest");
    }
    sc_rest x;
    if (r->ok) {
        mp_sim_run_for(s, 5000); /* let the join's news die down */
        if (sc_measure_rest(s, o, r, 60000, o->nodes <= 64, &x)) {
            sc_rest_metrics(r, &x);
        }
    }
    if (r->ok && !mp_sim_members_converged(s)) {
        sc_fail(r, "a node was taken for dead at rest");
        sc_explain_members(s, r);
    }
    sc_finish(s, r);
}

/* --- scale ---------------------------------------------------------------------------------------
 */

void sc_scale(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim *s = sc_cluster(o, r, (sc_faults){0});
    if (!s) {
        return;
    }
    uint32_t n = o->nodes, origin = n / 2, victim = n - 1;
    double join = -1, dissem = -1, detect = -1;
    sc_rest x = {0};
    uint64_t ms = sc_converge(s, o, r);
    if (ms != UINT64_MAX) {
        join = (double)ms;
    }
    if (r->ok && sc_echo_on(s, origin, "sim.scale.fn", r) == 0) {
        sc_fns q = {{"sim.scale.fn"}, {origin}, 1, true, false};
        ms = sc_wait(s, o, r, sc_p_fns, &q, 60000, "a new function is in every catalog");
        dissem = ms == UINT64_MAX ? -1 : (double)ms;
    }
    if (r->ok) {
        mp_sim_node_crash(s, victim);
        ms = sc_wait(s, o, r, sc_p_gone, &victim, 90000, "every node lists the crashed one dead");
        detect = ms == UINT64_MAX ? -1 : (double)ms;
    }
    if (r->ok) {
        mp_sim_run_for(s, 5000);
        sc_measure_rest(s, o, r, 60000, false, &x);
    }
    sc_metric(r, "join_ms", join, "ms");
    sc_metric(r, "join_rounds", join < 0 ? -1 : join / SC_GOSSIP_MS, "");
    sc_metric(r, "fn_ms", dissem, "ms");
    sc_metric(r, "detect_ms", detect, "ms");
    sc_rest_metrics(r, &x);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    sc_say(o,
           "scale nodes=%u join_ms=%.0f join_rounds=%.1f fn_ms=%.0f detect_ms=%.0f "
           "rest_gossip_msgs_s=%.2f rest_gossip_bytes_s=%.0f rest_dials_s=%.2f events=%llu "
           "virtual_s=%.1f",
           n, join, join < 0 ? -1 : join / SC_GOSSIP_MS, dissem, detect, x.msgs_mean, x.bytes_mean,
           x.dials_mean, (unsigned long long)st.events, (double)mp_sim_elapsed(s) / 1000.0);
    sc_gossip_totals(s, r);
    sc_finish(s, r);
}
