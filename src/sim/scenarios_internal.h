/* scenarios_internal.h - what the scenario files share.
 *
 *   scenarios.c          the table, reports, shared helpers, and the
 *                        single-node scenarios (single-rpc, single-pubsub)
 *   scenarios_cluster.c  the scenarios that need clustering (join, crash,
 *                        partition-heal, rpc-across, pubsub-across,
 *                        queue-group-across, rest-traffic, scale) */
#ifndef MP_SIM_SCENARIOS_INTERNAL_H
#define MP_SIM_SCENARIOS_INTERNAL_H

#include "sim/scenarios.h"

#include "core/map.h"

/* The first failure stands; later ones are dropped. */
void sc_fail(mp_sim_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sc_metric(mp_sim_report *r, const char *name, double value, const char *unit);
/* A progress line on o->out (nothing when it is NULL). */
void sc_say(const mp_sim_run_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A simulator from cfg with the run's seed and logging; NULL is a failure
 * already reported in r. */
mp_sim *sc_new(const mp_sim_run_opts *o, mp_sim_config *cfg, mp_sim_report *r);
/* Records virtual time, events and the trace hash, and frees s. */
void sc_finish(mp_sim *s, mp_sim_report *r);

/* The p-th percentile (0..1) of v[0..n) (sorts v); 0 when n is 0. */
double sc_percentile(uint64_t *v, size_t n, double p);

/* Checks every operation of type `type` of client c got exactly one
 * answer; reports the first that did not. */
bool sc_check_answered(mp_sim *s, uint32_t c, mp_sim_op_type type, mp_sim_report *r);
/* The op's value equals the JSON text want (a request's results map). */
bool sc_value_is(const mpreg_value *v, const char *want_json);

/* In-process functions registered on node i: "echo"-like (returns its
 * first argument) and "inc" (its integer argument + 1). */
mpreg_err sc_register_echo(mp_sim *s, uint32_t i, const char *name);
mpreg_err sc_register_inc(mp_sim *s, uint32_t i, const char *name);

/* Scenario entry points. */
void sc_single_rpc(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_single_pubsub(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_join(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_crash(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_partition_heal(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_rpc_across(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_pubsub_across(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_queue_group_across(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_rest_traffic(const mp_sim_run_opts *o, mp_sim_report *r);
void sc_scale(const mp_sim_run_opts *o, mp_sim_report *r);

#endif
