/* test_sim_cluster.c - the cluster scenarios as seeded tests.
 *
 * Each runs a scenario of src/sim/scenarios.h on a few nodes (bounded in
 * virtual time by the scenario itself) and asserts its invariants held;
 * the failure message is the scenario's, with the command line that
 * replays it. They exercise the node's clustering (membership, gossip,
 * peer links) end to end. */
#define _POSIX_C_SOURCE 200809L

#include "sim/scenarios.h"
#include "sim/sim.h"

#include "fabric/catalog.h"
#include "fabric/membership.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mp_sim_report run(const char *name, uint64_t seed, uint32_t nodes) {
    const mp_sim_scenario *sc = mp_sim_scenario_find(name);
    cr_assert_not_null(sc, "no scenario %s", name);
    cr_assert(sc->needs_cluster);
    mp_sim_run_opts o = {.seed = seed, .nodes = nodes};
    mp_sim_report r;
    mp_sim_scenario_run(sc, &o, &r);
    cr_assert(r.ok, "%s failed: %s (replay: mpreg-sim run %s --seed %llu --nodes %u)", name,
              r.failure, name, (unsigned long long)seed, nodes);
    return r;
}

static double metric(const mp_sim_report *r, const char *name) {
    const mp_sim_metric *m = mp_sim_report_get(r, name);
    cr_assert_not_null(m, "no figure %s", name);
    return m->value;
}

Test(sim_cluster, join_converges_and_spreads_a_change) {
    mp_sim_report r = run("join", 1, 8);
    cr_assert_gt(metric(&r, "join_ms"), 0);
    cr_assert_lt(metric(&r, "join_ms"), 60000);
    cr_assert_geq(metric(&r, "fn_ms"), 0);
    cr_assert_gt(metric(&r, "gossip_msgs"), 0);
}

/* The join's progress lines and its report used to disagree on catalog
 * time (the line showed the wait after membership converged, the report
 * the time from the start): each line now says both, and "at" is the
 * report's catalog_ms. */
Test(sim_cluster, join_progress_agrees_with_the_report) {
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    cr_assert_not_null(out);
    mp_sim_run_opts o = {.seed = 1, .nodes = 8, .out = out, .log_level = MP_LOG_ERROR};
    mp_sim_report r;
    cr_assert(mp_sim_scenario_run(mp_sim_scenario_find("join"), &o, &r), "%s", r.failure);
    fclose(out);
    const char *line = strstr(text, "every catalog describes every node");
    cr_assert_not_null(line, "%s", text);
    unsigned long long wait = 0, at = 0;
    cr_assert_eq(sscanf(line + strlen("every catalog describes every node"),
                        " %llu ms (at %llu ms)", &wait, &at),
                 2, "%s", line);
    cr_assert_eq((double)at, metric(&r, "catalog_ms"), "line %s vs catalog_ms %.0f", line,
                 metric(&r, "catalog_ms"));
    cr_assert_eq((double)(at - wait), metric(&r, "join_ms"));
    line = strstr(text, "every node lists every other alive");
    cr_assert_not_null(line);
    cr_assert_eq(sscanf(line + strlen("every node lists every other alive"),
                        " %llu ms (at %llu ms)", &wait, &at),
                 2);
    cr_assert_eq((double)wait, metric(&r, "join_ms"));
    free(text);
}

Test(sim_cluster, join_with_other_seeds) {
    for (uint64_t seed = 2; seed <= 4; seed++) {
        run("join", seed, 5);
    }
}

Test(sim_cluster, join_replays_bit_for_bit) {
    mp_sim_report a = run("join", 9, 6), b = run("join", 9, 6);
    cr_assert_eq(a.trace_hash, b.trace_hash);
    cr_assert_eq(a.events, b.events);
    cr_assert_eq(a.virtual_ms, b.virtual_ms);
}

Test(sim_cluster, crash_is_detected_and_purged) {
    mp_sim_report r = run("crash", 1, 8);
    cr_assert_gt(metric(&r, "detect_ms"), 0);
    cr_assert_geq(metric(&r, "purge_ms"), metric(&r, "detect_ms"));
}

Test(sim_cluster, partition_heals) {
    mp_sim_report r = run("partition-heal", 1, 8);
    cr_assert_geq(metric(&r, "digests_at_heal"), 2, "each side changed on its own");
}

Test(sim_cluster, rpc_across_answers_every_request_once) {
    mp_sim_report r = run("rpc-across", 1, 8);
    cr_assert_gt(metric(&r, "requests"), 0);
    cr_assert_gt(metric(&r, "results"), metric(&r, "requests") / 2);
}

Test(sim_cluster, pubsub_across_delivers_every_message_once) {
    mp_sim_report r = run("pubsub-across", 1, 6);
    cr_assert_eq(metric(&r, "duplicates"), 0);
    cr_assert_eq(metric(&r, "delivered"), metric(&r, "expected"));
}

Test(sim_cluster, queue_group_across_delivers_each_message_to_one_member) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        mp_sim_report r = run("queue-group-across", seed, 7);
        cr_assert_eq(metric(&r, "group_delivered"), metric(&r, "published"));
        cr_assert_eq(metric(&r, "plain_delivered"), metric(&r, "plain_expected"));
        for (int i = 0; i < 3; i++) {
            char name[32];
            snprintf(name, sizeof name, "group_node%d", i);
            /* Rendezvous spreads a third to each; far from none. */
            cr_assert_gt(metric(&r, name), metric(&r, "published") / 6, "%s", name);
        }
    }
}

Test(sim_cluster, rest_traffic_is_modest) {
    mp_sim_report r = run("rest-traffic", 1, 6);
    cr_assert_gt(metric(&r, "gossip_msgs_s_mean"), 0);
    /* At rest a node pings one member a probe interval and answers pings:
     * a handful of messages a second, whatever the cluster size. */
    cr_assert_lt(metric(&r, "gossip_msgs_s_max"), 20);
}

Test(sim_cluster, scale_runs_every_phase) {
    mp_sim_report r = run("scale", 1, 24);
    cr_assert_gt(metric(&r, "join_ms"), 0);
    cr_assert_geq(metric(&r, "fn_ms"), 0);
    cr_assert_gt(metric(&r, "detect_ms"), 0);
    cr_assert_gt(metric(&r, "gossip_msgs_s_mean"), 0);
}

/* --- restarts, through the simulator directly ------------------------------------------------ */

static bool converged(mp_sim *s, void *ud) {
    (void)ud;
    return mp_sim_members_converged(s);
}

static bool gone(mp_sim *s, void *ud) {
    return mp_sim_all_see_gone(s, *(uint32_t *)ud);
}

/* Every catalog describes node *ud with its current incarnation (or a
 * later epoch of it). */
static bool know_new_incarnation(mp_sim *s, void *ud) {
    uint32_t j = *(uint32_t *)ud;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        if (i == j || !mp_sim_node_up(s, i)) {
            continue;
        }
        const mp_node_descriptor *d =
            mp_catalog_node(mp_node_catalog(mp_sim_node(s, i)), mp_sim_node_id(s, j));
        if (!d || d->incarnation < mp_sim_node_incarnation(s, j)) {
            return false;
        }
    }
    return true;
}

static void small_cluster_config(mp_sim_config *cfg, uint64_t seed, uint32_t n) {
    mp_sim_config_default(cfg);
    cfg->seed = seed;
    cfg->nodes = n;
    cfg->seed_nodes = 1;
    cfg->node.no_builtins = true;
}

static mp_sim *start_converged(const mp_sim_config *cfg) {
    mp_sim *s = mp_sim_new(cfg);
    cr_assert_not_null(s);
    cr_assert_eq(mp_sim_start_all(s), MPREG_OK);
    cr_assert_neq(mp_sim_run_until_true(s, converged, NULL, 50, 60000), UINT64_MAX,
                  "no convergence");
    return s;
}

static mp_sim *cluster(uint64_t seed, uint32_t n) {
    mp_sim_config cfg;
    small_cluster_config(&cfg, seed, n);
    return start_converged(&cfg);
}

Test(sim_cluster, a_restarted_node_rejoins_as_a_newer_generation) {
    for (int keep = 0; keep <= 1; keep++) {
        mp_sim *s = cluster(5, 6);
        uint32_t victim = 4;
        mp_sim_node_crash(s, victim);
        cr_assert_neq(mp_sim_run_until_true(s, gone, &victim, 50, 60000), UINT64_MAX,
                      "the crash was not detected");
        cr_assert_eq(mp_sim_node_restart(s, victim, keep), MPREG_OK);
        uint64_t ms = mp_sim_run_until_true(s, converged, NULL, 50, 60000);
        cr_assert_neq(ms, UINT64_MAX, "the restarted node (%s data) was not taken back",
                      keep ? "with its" : "without");
        /* Everyone lists it alive and describes its new incarnation. */
        for (uint32_t i = 0; i < 6; i++) {
            if (i != victim) {
                cr_assert_eq(mp_sim_member_state(s, i, victim), MP_MEMBER_ALIVE);
            }
        }
        cr_assert_neq(mp_sim_run_until_true(s, know_new_incarnation, &victim, 50, 60000),
                      UINT64_MAX, "catalogs kept the old incarnation");
        mp_sim_free(s);
    }
}

/* Node *ud's generation as every other running node lists it: true when
 * each lists it alive at the incarnation of its current start. */
static bool all_take_current(mp_sim *s, void *ud) {
    uint32_t j = *(uint32_t *)ud;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        mp_member m;
        if (i == j || !mp_sim_node_up(s, i)) {
            continue;
        }
        if (!mp_swim_find(mp_node_swim(mp_sim_node(s, i)), mp_sim_node_id(s, j), &m) ||
            m.state != MP_MEMBER_ALIVE || m.generation != mp_sim_node_incarnation(s, j)) {
            return false;
        }
    }
    return true;
}

/* A node that crashes and comes straight back: from its data dir (same
 * identity key) it is taken at once as a newer generation; without it (a
 * new key: another process, as far as the members can tell) it is refused
 * while they still hold the old one alive or suspect, and let in once they
 * hold it dead. */
Test(sim_cluster, a_restart_without_data_waits_for_the_old_process_to_be_dead) {
    for (int keep = 1; keep >= 0; keep--) {
        mp_sim *s = cluster(7, 6);
        uint32_t victim = 3;
        uint64_t t0 = mp_sim_now(s);
        cr_assert_eq(mp_sim_node_restart(s, victim, keep), MPREG_OK);
        uint64_t ms = mp_sim_run_until_true(s, all_take_current, &victim, 10, 60000);
        cr_assert_neq(ms, UINT64_MAX, "the restarted node (%s data) was never taken",
                      keep ? "with its" : "without");
        uint64_t took = mp_sim_now(s) - t0;
        uint64_t identity = 0;
        for (uint32_t i = 0; i < 6; i++) {
            mp_swim_stats st;
            if (i != victim) {
                mp_swim_get_stats(mp_node_swim(mp_sim_node(s, i)), &st);
                identity += st.identity_conflicts;
            }
        }
        fprintf(stderr, "test_sim_cluster: a restart %s its data is taken after %llu ms\n",
                keep ? "with" : "without", (unsigned long long)took);
        if (keep) {
            cr_assert_lt(took, 1000, "with its data: taken after %llu ms",
                         (unsigned long long)took);
            cr_assert_eq(identity, 0);
        } else {
            /* The old process must first be suspected, then declared dead. */
            cr_assert_gt(took, 3000,
                         "without its data: taken after %llu ms, before the old "
                         "process could have been declared dead",
                         (unsigned long long)took);
            cr_assert_gt(identity, 0, "its claims were refused meanwhile");
        }
        cr_assert_neq(mp_sim_run_until_true(s, converged, NULL, 50, 60000), UINT64_MAX);
        mp_sim_free(s);
    }
}

Test(sim_cluster, gossip_faults_do_not_stop_convergence) {
    mp_sim_config cfg;
    small_cluster_config(&cfg, 3, 8);
    cfg.net.loss = 0.2;
    cfg.net.dup = 0.1;
    cfg.net.reorder = 0.2;
    cfg.net.jitter = MP_SIM_JITTER_EXP;
    cfg.net.jitter_ms = 3;
    mp_sim *s = mp_sim_new(&cfg);
    cr_assert_eq(mp_sim_start_all(s), MPREG_OK);
    cr_assert_neq(mp_sim_run_until_true(s, converged, NULL, 50, 60000), UINT64_MAX);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_gt(st.lost, 0);
    cr_assert_gt(st.duplicated, 0);
    cr_assert_gt(st.reordered, 0);
    /* And it stays converged: lost pings are made up by indirect probes and
     * refutations. At 20% loss a member may be suspected for a moment at any
     * given instant, so the check is "converged again within a bound". */
    mp_sim_run_for(s, 30000);
    cr_assert_neq(mp_sim_run_until_true(s, converged, NULL, 50, 20000), UINT64_MAX,
                  "members converge again after 30 s of faults");
    mp_sim_free(s);
}

/* --- catalog TTL: entries live while the membership vouches for their origin ------------------ */

#define TTL_MS 4000u

typedef struct fn_probe {
    const char *origin;
    bool found;
} fn_probe;

static bool fn_probe_visit(void *ud, const mp_entry *e) {
    fn_probe *p = ud;
    if (strcmp(mp_entry_origin(e), p->origin) == 0) {
        p->found = true;
        return false;
    }
    return true;
}

/* How many running nodes hold a live function "fn" advertised by origin. */
static uint32_t holders(mp_sim *s, const char *origin, const char *fn) {
    uint32_t count = 0;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        if (!mp_sim_node_up(s, i)) {
            continue;
        }
        fn_probe p = {.origin = origin};
        mp_catalog_each_function(mp_node_catalog(mp_sim_node(s, i)), fn, fn_probe_visit, &p);
        count += p.found ? 1 : 0;
    }
    return count;
}

typedef struct held_by {
    const char *origin;
    uint32_t at_least; /* true when at least this many hold it ... */
    uint32_t at_most;  /* ... and at most this many */
} held_by;

static bool held(mp_sim *s, void *ud) {
    const held_by *h = ud;
    uint32_t k = holders(s, h->origin, "ghost_fn");
    return k >= h->at_least && k <= h->at_most;
}

/* Puts a function entry of `origin` at `incarnation` straight into node
 * i's catalog, as if an anti-entropy exchange had brought it. */
static void inject(mp_sim *s, uint32_t i, const char *origin, uint64_t incarnation) {
    mp_entry e;
    cr_assert_eq(mp_entry_function(&e, origin, "sim", "ghost_fn", NULL, "1.0.0"), MPREG_OK);
    e.version.incarnation = incarnation;
    e.version.counter = 1;
    mp_apply_result r;
    cr_assert_eq(mp_catalog_apply_entry(mp_node_catalog(mp_sim_node(s, i)), &e, mp_sim_now(s), &r),
                 MPREG_OK);
    cr_assert_eq(r, MP_APPLY_ADDED);
    mp_entry_free(&e);
}

static mp_sim *ttl_cluster(uint64_t seed, uint32_t n) {
    mp_sim_config cfg;
    small_cluster_config(&cfg, seed, n);
    cfg.node.catalog_ttl_ms = TTL_MS;
    cfg.node.log_level = MP_LOG_INFO;
    cfg.log = getenv("SIM_LOG") ? stderr : NULL; /* SIM_LOG=1: the nodes' logs */
    mp_swim_config_default(&cfg.node.swim);
    cfg.node.swim.push_pull_interval_ms = 1000; /* so that a ghost spreads within the test */
    return start_converged(&cfg);
}

static size_t live_descriptors(mp_sim *s, uint32_t i) {
    return mp_catalog_count(mp_node_catalog(mp_sim_node(s, i)), MP_ENTRY_NODE);
}

Test(sim_cluster, entries_of_an_origin_no_member_vouches_for_expire_everywhere) {
    const uint32_t n = 5;
    mp_sim *s = ttl_cluster(11, n);
    /* "ghost" never joined: its entry reaches the others by push-pull ... */
    uint64_t t0 = mp_sim_elapsed(s);
    inject(s, 0, "ghost", 7);
    held_by spread = {.origin = "ghost", .at_least = 2, .at_most = n};
    cr_assert_neq(mp_sim_run_until_true(s, held, &spread, 50, TTL_MS / 2), UINT64_MAX,
                  "the ghost entry did not spread (the test would prove nothing)");
    /* ... and leaves every catalog within one TTL, two sweep intervals (the
     * first sweep to see it starts its clock, the first one a TTL later
     * ends it) and a few gossip rounds for the death to reach the others. */
    held_by none = {.origin = "ghost", .at_least = 0, .at_most = 0};
    uint64_t took = mp_sim_run_until_true(s, held, &none, 50, 3 * TTL_MS);
    cr_assert_neq(took, UINT64_MAX, "the ghost entry outlived its TTL on %u nodes",
                  holders(s, "ghost", "ghost_fn"));
    cr_assert_leq(mp_sim_elapsed(s) - t0, TTL_MS + 2 * (TTL_MS / 3) + 1000, "took %llu ms",
                  (unsigned long long)(mp_sim_elapsed(s) - t0));
    /* It stays gone (its death travels with the catalog), and no live
     * member's entries were taken for stale in ten TTLs. */
    mp_sim_run_for(s, 10 * TTL_MS);
    cr_assert_eq(holders(s, "ghost", "ghost_fn"), 0);
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(live_descriptors(s, i), n, "node %u lists %zu nodes", i,
                     live_descriptors(s, i));
        cr_assert_gt(mp_catalog_death(mp_node_catalog(mp_sim_node(s, i)), "ghost"), 0);
    }
    mp_sim_free(s);
}

Test(sim_cluster, a_dead_members_newer_entries_expire_too) {
    const uint32_t n = 5;
    uint32_t victim = 4;
    mp_sim *s = ttl_cluster(12, n);
    mp_sim_node_crash(s, victim);
    cr_assert_neq(mp_sim_run_until_true(s, gone, &victim, 50, 60000), UINT64_MAX,
                  "the crash was not detected");
    /* An entry of a later epoch of the dead node, as the other side of a
     * partition might hand over: above its recorded death, so the catalog
     * takes it, but the membership lists the node dead. */
    const char *id = mp_sim_node_id(s, victim);
    uint64_t epoch = mp_catalog_death(mp_node_catalog(mp_sim_node(s, 0)), id) + 1000;
    inject(s, 0, id, epoch);
    held_by none = {.origin = id, .at_least = 0, .at_most = 0};
    cr_assert_neq(mp_sim_run_until_true(s, held, &none, 50, 3 * TTL_MS), UINT64_MAX,
                  "the dead member's newer entry outlived its TTL");
    /* Restarted, the node is taken back at once with its new generation. */
    cr_assert_eq(mp_sim_node_restart(s, victim, true), MPREG_OK);
    cr_assert_neq(mp_sim_run_until_true(s, know_new_incarnation, &victim, 50, 60000), UINT64_MAX,
                  "the restarted node's entries were not taken back");
    mp_sim_free(s);
}

/* --- bounded links: no full mesh -----------------------------------------------------------------
 */

typedef struct conn_watch {
    size_t most_links; /* the most peer links a node counted at a sample */
    size_t most_conns; /* the most connections any node had open at a sample */
} conn_watch;

/* The peer links node i counts (its members' stats, as `mpreg members`
 * shows them). */
static size_t peer_links(mp_sim *s, uint32_t i) {
    mpreg_value m;
    cr_assert_eq(mp_node_members(mp_sim_node(s, i), mp_sim_now(s), &m), MPREG_OK);
    const mpreg_value *st = mpreg_map_get(&m, "stats");
    const mpreg_value *links = st ? mpreg_map_get(st, "peer_links") : NULL;
    cr_assert(links && links->type == MPREG_INT);
    size_t v = (size_t)links->u.i;
    mpreg_value_free(&m);
    return v;
}

static bool sample_conns(mp_sim *s, void *ud) {
    conn_watch *w = ud;
    for (uint32_t i = 0; i < mp_sim_node_count(s); i++) {
        if (!mp_sim_node_up(s, i)) {
            continue;
        }
        size_t links = peer_links(s, i);
        size_t conns = mp_sim_node_conns(s, i);
        w->most_links = links > w->most_links ? links : w->most_links;
        w->most_conns = conns > w->most_conns ? conns : w->most_conns;
    }
    return false; /* keep sampling */
}

/* Joins, 20 s at rest and a crash with max_peer_conns = bound, sampled
 * every 10 ms. */
static conn_watch watch_links(uint32_t n, uint32_t bound) {
    mp_sim_config cfg;
    small_cluster_config(&cfg, 21, n);
    cfg.node.max_peer_conns = bound;
    mp_sim *s = start_converged(&cfg);
    conn_watch w = {0};
    mp_sim_run_until_true(s, sample_conns, &w, 10, 20000);
    uint32_t victim = n - 1;
    mp_sim_node_crash(s, victim);
    cr_assert_neq(mp_sim_run_until_true(s, gone, &victim, 50, 60000), UINT64_MAX,
                  "the crash was not detected with %u links per node", bound);
    mp_sim_run_until_true(s, sample_conns, &w, 10, 5000);
    mp_sim_free(s);
    return w;
}

Test(sim_cluster, links_per_node_stay_within_max_peer_conns) {
    const uint32_t n = 24, bound = 4;
    conn_watch w = watch_links(n, bound);
    /* At rest no link is busy, so none may go over the bound. */
    cr_assert_leq(w.most_links, bound, "a node kept %zu peer links (max_peer_conns %u)",
                  w.most_links, bound);
    /* On the wire a node may also hold, for a moment, links the far side
     * already closed (their FIN in flight) and ones accepted but not yet
     * introduced by a HELLO. */
    cr_assert_leq(w.most_conns, bound + 3, "a node had %zu connections (max_peer_conns %u)",
                  w.most_conns, bound);
    /* Without a tight bound the same run keeps many more: the bound is
     * what kept the count down, not the workload. */
    conn_watch unbounded = watch_links(n, 1000);
    cr_assert_gt(unbounded.most_links, 2 * bound, "only %zu links without a bound",
                 unbounded.most_links);
}
