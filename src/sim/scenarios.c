/* scenarios.c - the scenario table, reports, shared helpers and the
 * single-node scenarios.
 *
 * The single-node scenarios run on what a node does alone (RPC with
 * dependency chains, workers, deadlines; pub/sub with overlapping patterns
 * and queue groups) while the network mangles GOSSIP frames as hard as it
 * can: nothing else may notice, so every request still gets exactly one
 * answer and every message arrives once. */
#include "sim/scenarios_internal.h"

#include "core/topic.h"
#include "mpreg/plugin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the table ---------------------------------------------------------------------- */

static const mp_sim_scenario mp_scenarios[] = {
    {"single-rpc",
     "one node; clients send RPC requests (echo, dependency chains, a worker's function, "
     "failures, deadlines, cycles): every request gets exactly one, correct, answer",
     1, 1, 1, false, sc_single_rpc},
    {"single-pubsub",
     "one node; subscribers (overlapping patterns, a queue group) and publishers: every "
     "message delivered once to each matching subscription, in publish order",
     1, 1, 1, false, sc_single_pubsub},
    {"join",
     "N nodes join through one seed: virtual time and gossip rounds until every node lists "
     "every other alive (join_ms) and every catalog describes every node (catalog_ms), both "
     "from the start, then until a newly registered function is in every catalog (fn_ms, from "
     "its registration)",
     16, 2, MP_SIM_MAX_NODES, true, sc_join},
    {"crash",
     "kill one node of a converged cluster: time until every live node lists it dead and "
     "its catalog entries are gone everywhere",
     16, 3, MP_SIM_MAX_NODES, true, sc_crash},
    {"partition-heal",
     "split the cluster in two halves, change each side, heal: catalogs converge (one digest "
     "everywhere) with both sides' changes, members all alive again",
     16, 4, MP_SIM_MAX_NODES, true, sc_partition_heal},
    {"rpc-across",
     "functions on some nodes, clients on others, gossip loss and a function host crashing "
     "mid-run: exactly one reply or one error per request, correct results",
     8, 6, MP_SIM_MAX_NODES, true, sc_rpc_across},
    {"pubsub-across",
     "subscribers on several nodes, publishers on others, gossip faults: every message once "
     "to each subscription, in publish order",
     8, 4, MP_SIM_MAX_NODES, true, sc_pubsub_across},
    {"queue-group-across",
     "members of one queue group on three nodes, plain subscribers on two, publishers on the "
     "others, gossip faults: each message to exactly one member cluster-wide and once to each "
     "plain subscriber; every group node gets some",
     8, 6, MP_SIM_MAX_NODES, true, sc_queue_group_across},
    {"rest-traffic",
     "a converged cluster at rest: per-node GOSSIP msgs/s and bytes/s and dials/s over 60 "
     "virtual seconds, and no false suspicion",
     16, 2, MP_SIM_MAX_NODES, true, sc_rest_traffic},
    {"scale",
     "join, change dissemination, crash detection and rest traffic at N nodes, in one line "
     "of figures",
     1000, 4, MP_SIM_MAX_NODES, true, sc_scale},
};

const mp_sim_scenario *mp_sim_scenarios(size_t *count) {
    *count = sizeof mp_scenarios / sizeof mp_scenarios[0];
    return mp_scenarios;
}

const mp_sim_scenario *mp_sim_scenario_find(const char *name) {
    for (size_t i = 0; i < sizeof mp_scenarios / sizeof mp_scenarios[0]; i++) {
        if (strcmp(mp_scenarios[i].name, name) == 0) {
            return &mp_scenarios[i];
        }
    }
    return NULL;
}

bool mp_sim_scenario_run(const mp_sim_scenario *sc, const mp_sim_run_opts *o, mp_sim_report *r) {
    memset(r, 0, sizeof *r);
    r->ok = true;
    mp_sim_run_opts run = *o;
    if (run.nodes == 0) {
        run.nodes = sc->default_nodes;
    }
    r->seed = run.seed;
    r->nodes = run.nodes;
    if (run.nodes < sc->min_nodes || run.nodes > sc->max_nodes) {
        if (sc->min_nodes == sc->max_nodes) {
            sc_fail(r, "%s runs on exactly %u node%s, not %u", sc->name, sc->min_nodes,
                    sc->min_nodes == 1 ? "" : "s", run.nodes);
        } else {
            sc_fail(r, "%s needs between %u and %u nodes, not %u", sc->name, sc->min_nodes,
                    sc->max_nodes, run.nodes);
        }
        return false;
    }
    sc->run(&run, r);
    return r->ok;
}

const mp_sim_metric *mp_sim_report_get(const mp_sim_report *r, const char *name) {
    for (size_t i = 0; i < r->metric_count; i++) {
        if (strcmp(r->metrics[i].name, name) == 0) {
            return &r->metrics[i];
        }
    }
    return NULL;
}

/* --- reports and helpers ----------------------------------------------------------------- */

void sc_fail(mp_sim_report *r, const char *fmt, ...) {
    if (!r->ok) {
        return;
    }
    r->ok = false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->failure, sizeof r->failure, fmt, ap);
    va_end(ap);
}

void sc_metric(mp_sim_report *r, const char *name, double value, const char *unit) {
    if (r->metric_count == MP_SIM_METRICS_MAX) {
        return;
    }
    mp_sim_metric *m = &r->metrics[r->metric_count++];
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->unit, sizeof m->unit, "%s", unit ? unit : "");
    m->value = value;
}

void sc_say(const mp_sim_run_opts *o, const char *fmt, ...) {
    if (!o->out) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(o->out, fmt, ap);
    va_end(ap);
    fputc('\n', o->out);
    fflush(o->out);
}

mp_sim *sc_new(const mp_sim_run_opts *o, mp_sim_config *cfg, mp_sim_report *r) {
    cfg->seed = o->seed;
    cfg->log = o->log;
    cfg->node.log_level = o->log_level;
    mp_sim *s = mp_sim_new(cfg);
    if (!s) {
        sc_fail(r, "the simulator refused its configuration");
        return NULL;
    }
    if (mp_sim_start_all(s)) {
        sc_fail(r, "a node refused its configuration");
        mp_sim_free(s);
        return NULL;
    }
    return s;
}

void sc_finish(mp_sim *s, mp_sim_report *r) {
    if (!s) {
        return;
    }
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    r->virtual_ms = mp_sim_elapsed(s);
    r->events = st.events;
    r->trace_hash = mp_sim_trace_hash(s);
    mp_sim_free(s);
}

static int sc_u64_cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

double sc_percentile(uint64_t *v, size_t n, double p) {
    if (n == 0) {
        return 0;
    }
    qsort(v, n, sizeof *v, sc_u64_cmp);
    size_t k = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[k < n ? k : n - 1];
}

bool sc_check_answered(mp_sim *s, uint32_t c, mp_sim_op_type type, mp_sim_report *r) {
    uint32_t n = mp_sim_client_op_count(s, c);
    for (uint32_t k = 0; k < n; k++) {
        const mp_sim_op *op = mp_sim_client_op(s, c, k);
        if (op->type == type && op->answers != 1) {
            sc_fail(r, "client %u (on node %u): operation %u sent at %llu ms got %u answers", c,
                    mp_sim_client_node(s, c), k,
                    (unsigned long long)(op->sent_ms - MP_SIM_EPOCH_MS), op->answers);
            return false;
        }
    }
    return true;
}

bool sc_value_is(const mpreg_value *v, const char *want_json) {
    mpreg_value want;
    if (mpreg_value_from_json(want_json, strlen(want_json), &want, NULL, 0)) {
        return false;
    }
    bool eq = mpreg_value_equal(v, &want);
    mpreg_value_free(&want);
    return eq;
}

static void sc_fn_echo(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                       mpreg_call *call) {
    (void)ctx;
    (void)kwargs;
    mpreg_value copy = mpreg_nil();
    if (args->type == MPREG_ARRAY && args->u.arr.len > 0 &&
        mpreg_value_clone(&args->u.arr.items[0], &copy)) {
        mpreg_call_fail(call, MPREG_E_NOMEM, "out of memory");
        return;
    }
    mpreg_call_return(call, copy);
}

static void sc_fn_inc(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                      mpreg_call *call) {
    (void)ctx;
    (void)kwargs;
    if (args->type != MPREG_ARRAY || args->u.arr.len != 1 ||
        args->u.arr.items[0].type != MPREG_INT) {
        mpreg_call_fail(call, MPREG_E_INVALID, "inc takes one int");
        return;
    }
    mpreg_call_return(call, mpreg_int(args->u.arr.items[0].u.i + 1));
}

/* Registering is an input to the node (it advertises, and may gossip):
 * the simulator hears of it so that the node's next wakeup is re-read. */
static mpreg_err sc_register(mp_sim *s, uint32_t i, const char *name, mpreg_function fn) {
    mp_node *n = mp_sim_node(s, i);
    if (!n) {
        return MPREG_E_CLOSED;
    }
    mpreg_function_def def = {.name = name, .version = "1.0.0", .fn = fn};
    mpreg_err err = mpreg_register_function(mp_node_registry(n), &def);
    mp_sim_node_poke(s, i);
    return err;
}

mpreg_err sc_register_echo(mp_sim *s, uint32_t i, const char *name) {
    return sc_register(s, i, name, sc_fn_echo);
}

mpreg_err sc_register_inc(mp_sim *s, uint32_t i, const char *name) {
    return sc_register(s, i, name, sc_fn_inc);
}

/* Mangles GOSSIP frames as hard as the network can: a node alone sends
 * none, so nothing a client does may notice. */
static void sc_hostile_gossip(mp_sim_config *cfg) {
    cfg->net.loss = 0.5;
    cfg->net.dup = 0.5;
    cfg->net.reorder = 0.5;
    cfg->net.jitter = MP_SIM_JITTER_EXP;
    cfg->net.jitter_ms = 2;
}

/* --- single-rpc ------------------------------------------------------------------------------- */

typedef enum sc_rq {
    SC_RQ_ECHO,
    SC_RQ_CHAIN,
    SC_RQ_WORKER,
    SC_RQ_FAIL,
    SC_RQ_DEADLINE,
    SC_RQ_CYCLE,
    SC_RQ_KINDS,
} sc_rq;

#define SC_RPC_CLIENTS 4
#define SC_RPC_REQUESTS 250 /* per client */
#define SC_RPC_EVERY_MS 4

static mpreg_err sc_double(void *ud, const mpreg_value *args, const mpreg_value *kwargs,
                           mpreg_value *result) {
    (void)ud;
    (void)kwargs;
    if (args->u.arr.len != 1 || args->u.arr.items[0].type != MPREG_INT) {
        return MPREG_E_INVALID;
    }
    *result = mpreg_int(args->u.arr.items[0].u.i * 2);
    return MPREG_OK;
}

static uint32_t sc_rpc_send(mp_sim *s, uint32_t c, sc_rq kind, int64_t x) {
    char json[512];
    uint32_t timeout = 0;
    switch (kind) {
    case SC_RQ_ECHO:
        snprintf(json, sizeof json, "[{\"name\":\"e\",\"fun\":\"echo\",\"args\":[%lld]}]",
                 (long long)x);
        break;
    case SC_RQ_CHAIN:
        snprintf(json, sizeof json,
                 "[{\"name\":\"first\",\"fun\":\"echo\",\"args\":[%lld]},"
                 "{\"name\":\"second\",\"fun\":\"echo\",\"args\":[\"first\"]},"
                 "{\"name\":\"third\",\"fun\":\"echos\",\"args\":[\"first\",\"AND\"]}]",
                 (long long)x);
        break;
    case SC_RQ_WORKER:
        snprintf(json, sizeof json, "[{\"name\":\"d\",\"fun\":\"sim.double\",\"args\":[%lld]}]",
                 (long long)x);
        break;
    case SC_RQ_FAIL:
        snprintf(json, sizeof json, "[{\"name\":\"f\",\"fun\":\"fail\",\"args\":[\"boom\"]}]");
        break;
    case SC_RQ_DEADLINE:
        snprintf(json, sizeof json, "[{\"name\":\"z\",\"fun\":\"sleep\",\"args\":[50]}]");
        timeout = 10;
        break;
    default:
        snprintf(json, sizeof json,
                 "[{\"name\":\"a\",\"fun\":\"echo\",\"args\":[\"b\"]},"
                 "{\"name\":\"b\",\"fun\":\"echo\",\"args\":[\"a\"]}]");
        break;
    }
    uint32_t op = mp_sim_client_request_json(s, c, json, timeout);
    mp_sim_client_tag_op(s, c, op, ((uint64_t)kind << 48) | (uint64_t)x);
    return op;
}

/* Is the one answer what this kind of request must get? */
static bool sc_rpc_correct(const mp_sim_op *op, char *why, size_t cap) {
    sc_rq kind = (sc_rq)(op->tag >> 48);
    long long x = (long long)(op->tag & 0xffffffffffffull);
    char want[256];
    mpreg_err code = MPREG_OK;
    switch (kind) {
    case SC_RQ_ECHO:
        snprintf(want, sizeof want, "{\"e\": %lld}", x);
        break;
    case SC_RQ_CHAIN:
        snprintf(want, sizeof want, "{\"second\": %lld, \"third\": [%lld, \"AND\"]}", x, x);
        break;
    case SC_RQ_WORKER:
        snprintf(want, sizeof want, "{\"d\": %lld}", 2 * x);
        break;
    case SC_RQ_FAIL:
        code = MPREG_E_HANDLER;
        break;
    case SC_RQ_DEADLINE:
        code = MPREG_E_DEADLINE;
        break;
    default:
        code = MPREG_E_CYCLE;
        break;
    }
    if (code != MPREG_OK) {
        snprintf(why, cap, "expected error %s, got %s", mpreg_err_name(code),
                 op->ok ? "a result" : mpreg_err_name(op->code));
        return !op->ok && op->code == code;
    }
    if (!op->ok) {
        snprintf(why, cap, "expected %s, got error %s: %s", want, mpreg_err_name(op->code),
                 op->message);
        return false;
    }
    char *got = mpreg_value_to_json(&op->value, false);
    snprintf(why, cap, "expected %s, got %s", want, got ? got : "?");
    free(got);
    return sc_value_is(&op->value, want);
}

void sc_single_rpc(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim_config cfg;
    mp_sim_config_default(&cfg);
    cfg.nodes = 1;
    sc_hostile_gossip(&cfg);
    mp_sim *s = sc_new(o, &cfg, r);
    if (!s) {
        return;
    }
    uint32_t worker = mp_sim_client_open(s, 0, "worker");
    uint32_t reg = mp_sim_client_register(s, worker, "sim.double", sc_double, NULL, 3);
    mp_sim_run_for(s, 50);
    const mp_sim_op *rop = mp_sim_client_op(s, worker, reg);
    if (!rop || rop->answers != 1 || !rop->ok) {
        sc_fail(r, "the worker could not register its function");
        sc_finish(s, r);
        return;
    }
    uint32_t clients[SC_RPC_CLIENTS];
    for (uint32_t c = 0; c < SC_RPC_CLIENTS; c++) {
        clients[c] = mp_sim_client_open(s, 0, NULL);
    }
    for (uint32_t k = 0; k < SC_RPC_REQUESTS; k++) {
        for (uint32_t c = 0; c < SC_RPC_CLIENTS; c++) {
            sc_rpc_send(s, clients[c], (sc_rq)((k + c) % SC_RQ_KINDS), (int64_t)(c * 100000 + k));
        }
        mp_sim_run_for(s, SC_RPC_EVERY_MS);
    }
    mp_sim_run_for(s, 2000);

    uint64_t lat[SC_RPC_CLIENTS * SC_RPC_REQUESTS];
    size_t nlat = 0, ok = 0, errors = 0;
    for (uint32_t c = 0; c < SC_RPC_CLIENTS && r->ok; c++) {
        if (!sc_check_answered(s, clients[c], MP_SIM_OP_REQUEST, r)) {
            break;
        }
        for (uint32_t k = 0; k < mp_sim_client_op_count(s, clients[c]); k++) {
            const mp_sim_op *op = mp_sim_client_op(s, clients[c], k);
            char why[512];
            if (!sc_rpc_correct(op, why, sizeof why)) {
                sc_fail(r, "client %u request %u: %s", clients[c], k, why);
                break;
            }
            ok += op->ok;
            errors += !op->ok;
            lat[nlat++] = op->answered_ms - op->sent_ms;
        }
    }
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    sc_metric(r, "requests", (double)nlat, "");
    sc_metric(r, "results", (double)ok, "");
    sc_metric(r, "errors_expected", (double)errors, "");
    sc_metric(r, "latency_p50", sc_percentile(lat, nlat, 0.5), "ms");
    sc_metric(r, "latency_p99", sc_percentile(lat, nlat, 0.99), "ms");
    sc_metric(r, "frames", (double)st.frames_delivered, "");
    sc_finish(s, r);
}

/* --- single-pubsub --------------------------------------------------------------------------- */

#define SC_PS_PUBLISHERS 3
#define SC_PS_MESSAGES 200 /* per publisher */

typedef struct sc_ps_sub {
    const char *patterns[2];
    size_t n;
    const char *group;
} sc_ps_sub;

static const sc_ps_sub sc_ps_subs[] = {
    {{"ps.#"}, 1, NULL}, {{"ps.*.a"}, 1, NULL}, {{"ps.x.a", "ps.#"}, 2, NULL},
    {{"ps.#"}, 1, "g"},  {{"ps.#"}, 1, "g"},    {{"ps.y.*"}, 1, NULL},
};
#define SC_PS_SUBS (sizeof sc_ps_subs / sizeof sc_ps_subs[0])

static const char *const sc_ps_topics[] = {"ps.x.a", "ps.y.b", "ps.z.a", "ps.y.a"};

static bool sc_ps_matches(const sc_ps_sub *sub, const char *topic) {
    for (size_t i = 0; i < sub->n; i++) {
        if (mp_pattern_matches(sub->patterns[i], strlen(sub->patterns[i]), topic, strlen(topic))) {
            return true;
        }
    }
    return false;
}

/* Counts a subscriber's deliveries per message id into seen (id -> count),
 * checking publish order per publisher ("p:seq" payloads). */
static void sc_ps_collect(mp_sim *s, uint32_t c, mp_map *seen, uint64_t *dups, uint64_t *disorder) {
    long last[SC_PS_PUBLISHERS];
    for (int p = 0; p < SC_PS_PUBLISHERS; p++) {
        last[p] = -1;
    }
    for (size_t k = 0; k < mp_sim_client_delivery_count(s, c); k++) {
        const mp_sim_delivery *d = mp_sim_client_delivery(s, c, k);
        uintptr_t n = (uintptr_t)mp_map_get(seen, d->id.bytes, MP_ID_LEN);
        *dups += n > 0;
        mp_map_put(seen, d->id.bytes, MP_ID_LEN, (void *)(n + 1), NULL);
        unsigned p = 0;
        long seq = 0;
        char text[32];
        snprintf(text, sizeof text, "%.*s", (int)(d->len < 31 ? d->len : 31),
                 (const char *)d->data);
        if (sscanf(text, "%u:%ld", &p, &seq) == 2 && p < SC_PS_PUBLISHERS) {
            *disorder += seq <= last[p];
            last[p] = seq;
        }
    }
}

void sc_single_pubsub(const mp_sim_run_opts *o, mp_sim_report *r) {
    mp_sim_config cfg;
    mp_sim_config_default(&cfg);
    cfg.nodes = 1;
    sc_hostile_gossip(&cfg);
    mp_sim *s = sc_new(o, &cfg, r);
    if (!s) {
        return;
    }
    uint32_t subs[SC_PS_SUBS], subops[SC_PS_SUBS];
    for (size_t i = 0; i < SC_PS_SUBS; i++) {
        subs[i] = mp_sim_client_open(s, 0, NULL);
        subops[i] = mp_sim_client_subscribe(s, subs[i], sc_ps_subs[i].patterns, sc_ps_subs[i].n,
                                            sc_ps_subs[i].group);
    }
    mp_sim_run_for(s, 50);
    for (size_t i = 0; i < SC_PS_SUBS; i++) {
        const mp_sim_op *op = mp_sim_client_op(s, subs[i], subops[i]);
        if (!op || op->answers != 1 || !op->ok) {
            sc_fail(r, "subscription %zu was not confirmed", i);
        }
    }
    uint32_t pubs[SC_PS_PUBLISHERS];
    for (int p = 0; p < SC_PS_PUBLISHERS; p++) {
        pubs[p] = mp_sim_client_open(s, 0, NULL);
    }
    for (int k = 0; k < SC_PS_MESSAGES && r->ok; k++) {
        for (int p = 0; p < SC_PS_PUBLISHERS; p++) {
            char data[32];
            int len = snprintf(data, sizeof data, "%d:%d", p, k);
            const char *topic = sc_ps_topics[(k + p) % 4];
            uint32_t op = mp_sim_client_publish(s, pubs[p], topic, data, (size_t)len);
            mp_sim_client_tag_op(s, pubs[p], op, (uint64_t)((k + p) % 4));
        }
        mp_sim_run_for(s, 1);
    }
    mp_sim_run_for(s, 1000);

    uint64_t delivered = 0, expected = 0, dups = 0, disorder = 0, missing = 0;
    mp_map group_seen = MP_MAP_INIT;
    for (size_t i = 0; i < SC_PS_SUBS && r->ok; i++) {
        mp_map seen = MP_MAP_INIT;
        mp_map *into = sc_ps_subs[i].group ? &group_seen : &seen;
        sc_ps_collect(s, subs[i], into, &dups, &disorder);
        delivered += mp_sim_client_delivery_count(s, subs[i]);
        if (!sc_ps_subs[i].group) {
            for (int p = 0; p < SC_PS_PUBLISHERS; p++) {
                for (uint32_t k = 0; k < mp_sim_client_op_count(s, pubs[p]); k++) {
                    const mp_sim_op *op = mp_sim_client_op(s, pubs[p], k);
                    if (sc_ps_matches(&sc_ps_subs[i], sc_ps_topics[op->tag])) {
                        expected++;
                        missing += !mp_map_get(&seen, op->id.bytes, MP_ID_LEN);
                    }
                }
            }
        }
        mp_map_free(&seen, NULL);
    }
    /* The group as a whole gets every matching message once. */
    for (int p = 0; p < SC_PS_PUBLISHERS; p++) {
        for (uint32_t k = 0; k < mp_sim_client_op_count(s, pubs[p]); k++) {
            const mp_sim_op *op = mp_sim_client_op(s, pubs[p], k);
            expected++;
            missing += !mp_map_get(&group_seen, op->id.bytes, MP_ID_LEN);
            if (op->answers != 0) {
                sc_fail(r, "publisher %d: publish %u was answered (%s)", p, k,
                        mpreg_err_name(op->code));
            }
        }
    }
    mp_map_free(&group_seen, NULL);
    if (dups) {
        sc_fail(r, "%llu messages delivered twice to one subscription (or group)",
                (unsigned long long)dups);
    } else if (missing) {
        sc_fail(r, "%llu of %llu expected deliveries missing", (unsigned long long)missing,
                (unsigned long long)expected);
    } else if (disorder) {
        sc_fail(r, "%llu deliveries out of publish order", (unsigned long long)disorder);
    }
    sc_metric(r, "published", SC_PS_PUBLISHERS * SC_PS_MESSAGES, "");
    sc_metric(r, "delivered", (double)delivered, "");
    sc_metric(r, "expected", (double)expected, "");
    sc_metric(r, "duplicates", (double)dups, "");
    sc_metric(r, "missing", (double)missing, "");
    sc_metric(r, "out_of_order", (double)disorder, "");
    sc_finish(s, r);
}
