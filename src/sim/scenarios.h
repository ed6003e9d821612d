/* scenarios.h - the simulator's scenarios: seeded runs with invariants.
 *
 * Each scenario builds a simulation (sim.h), drives it (clients, crashes,
 * partitions), checks its invariants and fills a report: ok or the first
 * violation, and named figures (times in virtual ms, rates, counts). The
 * same seed and node count give the same report, bit for bit. mpreg-sim
 * runs them from the command line; tests/sim runs them as tests.
 *
 * Scenarios marked needs_cluster exercise clustering (membership, gossip
 * of catalog deltas, cross-node RPC and pub/sub): they fail, saying so,
 * on a build whose node does not cluster. */
#ifndef MP_SIM_SCENARIOS_H
#define MP_SIM_SCENARIOS_H

#include "sim/sim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MP_SIM_METRICS_MAX 48

typedef struct mp_sim_run_opts {
    uint64_t seed;
    uint32_t nodes; /* 0 = the scenario's default */
    FILE *out;      /* progress lines and per-node figures; NULL = quiet */
    FILE *log;      /* node logs; NULL = none */
    mp_log_level log_level;
} mp_sim_run_opts;

typedef struct mp_sim_metric {
    char name[40];
    double value;
    char unit[12]; /* "ms", "msgs/s", "bytes/s", "" for counts */
} mp_sim_metric;

typedef struct mp_sim_report {
    bool ok;
    char failure[512]; /* the first invariant that failed */
    uint64_t seed;
    uint32_t nodes;
    uint64_t virtual_ms;
    uint64_t events;
    uint64_t trace_hash;
    size_t metric_count;
    mp_sim_metric metrics[MP_SIM_METRICS_MAX];
} mp_sim_report;

typedef void (*mp_sim_scenario_fn)(const mp_sim_run_opts *o, mp_sim_report *r);

typedef struct mp_sim_scenario {
    const char *name;
    const char *description;
    uint32_t default_nodes;
    /* The node counts it can run with: a single-node scenario is exactly 1
     * (it would report 5 nodes and still run one); a cluster scenario
     * needs a few to check what it checks. mpreg-sim refuses --nodes
     * outside the range as a bad command line. */
    uint32_t min_nodes;
    uint32_t max_nodes;
    bool needs_cluster;
    mp_sim_scenario_fn run;
} mp_sim_scenario;

/* The table, in the order `mpreg-sim list` shows it. */
const mp_sim_scenario *mp_sim_scenarios(size_t *count);
const mp_sim_scenario *mp_sim_scenario_find(const char *name);

/* The most nodes any scenario may ask for. */
#define MP_SIM_MAX_NODES 100000u

/* Runs sc with o (nodes 0 = its default; outside min_nodes..max_nodes is
 * refused as a failure) into *r, which it initialises. Returns r->ok. */
bool mp_sim_scenario_run(const mp_sim_scenario *sc, const mp_sim_run_opts *o, mp_sim_report *r);

/* The figure called name, or NULL. */
const mp_sim_metric *mp_sim_report_get(const mp_sim_report *r, const char *name);

#endif
