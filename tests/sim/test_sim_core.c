/* test_sim_core.c - the simulator itself: determinism, the virtual network
 * and its faults, partitions, crashes, restarts, timers, backpressure, and
 * simulated clients doing RPC and pub/sub through a simulated node.
 *
 * Network behaviour is observed through the trace hook: every frame that
 * reaches its receiver (with its bytes), every drop, open, close and dial
 * failure. GOSSIP frames are produced by a client sending raw envelopes of
 * kind 80 (the node refuses them from a client, which does not matter: the
 * network carried them first). */
#include "sim/sim.h"

#include "core/envelope.h"
#include "fabric/catalog.h"

#include "support/value_json.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* --- the trace recorder ------------------------------------------------------------- */

typedef struct rec {
    mp_sim_trace_kind kind;
    uint64_t time;
    uint64_t conn;
    uint32_t from;
    uint32_t to;
    mp_kind frame_kind;
    mp_id id; /* the envelope's id, for frames */
    size_t len;
    mpreg_err reason;
} rec;

typedef struct recorder {
    rec *items;
    size_t len;
    size_t cap;
    uint64_t fnv; /* over every field, computed here, not by the simulator */
} recorder;

static void fnv_mix(uint64_t *h, const void *data, size_t len) {
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        *h = (*h ^ p[i]) * 0x100000001b3ull;
    }
}

static void on_trace(void *ud, const mp_sim_trace *t) {
    recorder *r = ud;
    if (r->len == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 1024;
        r->items = realloc(r->items, r->cap * sizeof *r->items);
        cr_assert_not_null(r->items);
    }
    rec *x = &r->items[r->len++];
    memset(x, 0, sizeof *x);
    x->kind = t->kind;
    x->time = t->time;
    x->conn = t->conn;
    x->from = t->from;
    x->to = t->to;
    x->frame_kind = t->frame_kind;
    x->len = t->len;
    x->reason = t->reason;
    mp_envelope env;
    if (t->frame && mp_envelope_decode(t->frame, t->len, &env, NULL) == MPREG_OK) {
        x->id = env.id;
    }
    fnv_mix(&r->fnv, x, sizeof *x);
    if (t->frame) {
        fnv_mix(&r->fnv, t->frame, t->len);
    }
}

static void recorder_free(recorder *r) {
    free(r->items);
    memset(r, 0, sizeof *r);
}

/* --- helpers ---------------------------------------------------------------------------- */

#define CLIENT(c) ((c) | MP_SIM_CLIENT_BIT)

static mp_sim_config base_config(uint64_t seed, uint32_t nodes) {
    mp_sim_config cfg;
    mp_sim_config_default(&cfg);
    cfg.seed = seed;
    cfg.nodes = nodes;
    return cfg;
}

static mp_sim *start(const mp_sim_config *cfg, recorder *rec_or_null) {
    mp_sim *s = mp_sim_new(cfg);
    cr_assert_not_null(s);
    if (rec_or_null) {
        memset(rec_or_null, 0, sizeof *rec_or_null);
        rec_or_null->fnv = 0xcbf29ce484222325ull;
        mp_sim_set_trace(s, on_trace, rec_or_null);
    }
    cr_assert_eq(mp_sim_start_all(s), MPREG_OK);
    return s;
}

static uint64_t rel(uint64_t t) {
    return t - MP_SIM_EPOCH_MS;
}

/* A raw envelope of kind from client c; returns the op and its id. */
static uint32_t send_kind(mp_sim *s, uint32_t c, mp_kind kind, mp_id *id) {
    mp_envelope env;
    mp_envelope_init(&env, kind);
    if (kind == MP_KIND_PUBLISH) {
        env.topic = mp_str_c("t");
    }
    uint32_t op = mp_sim_client_send(s, c, &env);
    cr_assert_neq(op, MP_SIM_NONE);
    if (id) {
        *id = mp_sim_client_op(s, c, op)->id;
    }
    return op;
}

/* Frames of a kind handed to party `to`, in arrival order. */
static size_t frames_to(const recorder *r, uint32_t to, mp_kind kind, const rec **out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < r->len; i++) {
        const rec *x = &r->items[i];
        if (x->kind == MP_SIM_TRACE_FRAME && x->to == to && x->frame_kind == kind) {
            if (out && n < cap) {
                out[n] = x;
            }
            n++;
        }
    }
    return n;
}

static size_t count_id(const recorder *r, uint32_t to, const mp_id *id) {
    size_t n = 0;
    for (size_t i = 0; i < r->len; i++) {
        const rec *x = &r->items[i];
        n += x->kind == MP_SIM_TRACE_FRAME && x->to == to && mp_id_equal(&x->id, id);
    }
    return n;
}

static const rec *find(const recorder *r, mp_sim_trace_kind kind, uint32_t to) {
    for (size_t i = 0; i < r->len; i++) {
        if (r->items[i].kind == kind && r->items[i].to == to) {
            return &r->items[i];
        }
    }
    return NULL;
}

/* --- configuration ---------------------------------------------------------------------------- */

Test(sim_config, refuses_nonsense) {
    mp_sim_config cfg = base_config(1, 0);
    cr_assert_null(mp_sim_new(&cfg));
    cfg = base_config(1, 2);
    cfg.net.loss = 1.5;
    cr_assert_null(mp_sim_new(&cfg));
    cfg = base_config(1, 2);
    cfg.net.dup = -0.1;
    cr_assert_null(mp_sim_new(&cfg));
    cfg = base_config(1, 2);
    cfg.seed_nodes = 3;
    cr_assert_null(mp_sim_new(&cfg));
    cfg = base_config(1, 2);
    mp_sim *s = mp_sim_new(&cfg);
    cr_assert_not_null(s);
    mp_sim_free(s);
}

Test(sim_config, nodes_have_ids_addresses_and_seeds) {
    mp_sim_config cfg = base_config(1, 300);
    cfg.seed_nodes = 2;
    mp_sim *s = mp_sim_new(&cfg);
    cr_assert_str_eq(mp_sim_node_id(s, 0), "n0");
    cr_assert_str_eq(mp_sim_node_addr(s, 0), "10.0.0.1:7000");
    cr_assert_str_eq(mp_sim_node_addr(s, 299), "10.0.1.44:7000");
    cr_assert_eq(mp_sim_node_by_addr(s, "10.0.1.44:7000"), 299);
    cr_assert_eq(mp_sim_node_by_id(s, "n17"), 17);
    cr_assert_eq(mp_sim_node_by_id(s, "n300"), MP_SIM_NONE);
    cr_assert_str_eq(mp_sim_addrs(s)[5], "10.0.0.6:7000");
    cr_assert_eq(mp_sim_node_incarnation(s, 3), 0, "never started");
    cr_assert_not(mp_sim_node_up(s, 3));
    cr_assert_eq(mp_sim_node_start(s, 3), MPREG_OK);
    cr_assert_eq(mp_sim_node_start(s, 3), MPREG_E_EXISTS);
    cr_assert_eq(mp_sim_node_incarnation(s, 3), 1);
    cr_assert_str_eq(mp_node_id(mp_sim_node(s, 3)), "n3");
    cr_assert_eq(mp_sim_elapsed(s), 0);
    cr_assert_eq(mp_sim_now(s), MP_SIM_EPOCH_MS);
    mp_sim_free(s);
}

typedef struct seen_cfg {
    uint32_t calls;
    bool had_seeds_of_0_and_1;
} seen_cfg;

static void configure(void *ud, mp_sim *s, uint32_t i, mp_node_config *cfg) {
    seen_cfg *seen = ud;
    seen->calls++;
    if (i == 2) {
        seen->had_seeds_of_0_and_1 = cfg->seed_count == 2 &&
                                     strcmp(cfg->seeds[0], mp_sim_node_addr(s, 0)) == 0 &&
                                     strcmp(cfg->seeds[1], mp_sim_node_addr(s, 1)) == 0;
    }
    cr_assert_str_eq(cfg->node_id, mp_sim_node_id(s, i));
    cr_assert_str_eq(cfg->advertise_addr, mp_sim_node_addr(s, i));
    cr_assert_str_eq(cfg->cluster, "sim");
    cfg->name = "renamed";
}

Test(sim_config, configure_hook_sees_and_changes_each_node) {
    seen_cfg seen = {0};
    mp_sim_config cfg = base_config(1, 3);
    cfg.seed_nodes = 2;
    cfg.configure = configure;
    cfg.configure_ud = &seen;
    mp_sim *s = start(&cfg, NULL);
    cr_assert_eq(seen.calls, 3);
    cr_assert(seen.had_seeds_of_0_and_1);
    /* The name the hook set is what WELCOME says. */
    uint32_t c = mp_sim_client_open(s, 1, NULL);
    uint32_t op = mp_sim_client_control(s, c, "status");
    mp_sim_run_for(s, 50);
    const mp_sim_op *o = mp_sim_client_op(s, c, op);
    cr_assert_eq(o->answers, 1);
    cr_assert(o->ok);
    const mpreg_value *name = mpreg_map_get(&o->value, "name");
    cr_assert(name && name->type == MPREG_STR && strcmp(name->u.str.ptr, "renamed") == 0);
    mp_sim_free(s);
}

/* --- determinism --------------------------------------------------------------------------------
 */

/* A run touching every source of randomness: jitter, gossip faults, node
 * and client ids, timers, a crash and a restart. */
static void script(uint64_t seed, uint64_t *sim_hash, uint64_t *trace_fnv, size_t *events) {
    mp_sim_config cfg = base_config(seed, 3);
    cfg.seed_nodes = 1;
    cfg.net.jitter_ms = 5;
    cfg.net.jitter = MP_SIM_JITTER_EXP;
    cfg.net.loss = 0.2;
    cfg.net.dup = 0.2;
    cfg.net.reorder = 0.2;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    uint32_t a = mp_sim_client_open(s, 0, NULL), b = mp_sim_client_open(s, 1, NULL);
    for (int k = 0; k < 40; k++) {
        mp_sim_client_request_json(s, a, "[{\"name\":\"x\",\"fun\":\"sleep\",\"args\":[7]}]", 0);
        send_kind(s, b, MP_KIND_GOSSIP, NULL);
        send_kind(s, b, MP_KIND_PING, NULL);
        mp_sim_run_for(s, 3);
    }
    mp_sim_node_crash(s, 2);
    mp_sim_run_for(s, 100);
    mp_sim_node_restart(s, 2, true);
    mp_sim_run_for(s, 3000);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    *sim_hash = mp_sim_trace_hash(s);
    *trace_fnv = r.fnv;
    *events = r.len;
    cr_assert_gt(st.lost, 0);
    cr_assert_gt(st.duplicated, 0);
    cr_assert_gt(st.reordered, 0);
    mp_sim_free(s);
    recorder_free(&r);
}

Test(sim_determinism, same_seed_same_run_bit_for_bit) {
    uint64_t h1, f1, h2, f2;
    size_t e1, e2;
    script(42, &h1, &f1, &e1);
    /* Allocate something in between so that the second run's heap addresses
     * differ from the first's: nothing may depend on them. */
    void *junk = malloc(12345);
    script(42, &h2, &f2, &e2);
    free(junk);
    cr_assert_eq(e1, e2);
    cr_assert_eq(f1, f2, "traces differ");
    cr_assert_eq(h1, h2, "simulator hashes differ");
}

Test(sim_determinism, different_seeds_differ) {
    uint64_t h1, f1, h2, f2;
    size_t e1, e2;
    script(42, &h1, &f1, &e1);
    script(43, &h2, &f2, &e2);
    cr_assert_neq(h1, h2);
    cr_assert_neq(f1, f2);
}

/* --- latency and jitter
 * --------------------------------------------------------------------------- */

Test(sim_net, connect_then_frames_after_one_latency_each) {
    mp_sim_config cfg = base_config(1, 1);
    cfg.net.latency_ms = 10;
    cfg.net.jitter_ms = 0;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    uint32_t c = mp_sim_client_open(s, 0, "probe");
    mp_sim_run_for(s, 100);
    const rec *open = find(&r, MP_SIM_TRACE_OPEN, 0);
    cr_assert_not_null(open);
    cr_assert_eq(rel(open->time), 10, "the dial reaches the node after one latency");
    const rec *hello[1], *welcome[1];
    cr_assert_eq(frames_to(&r, 0, MP_KIND_HELLO, hello, 1), 1);
    cr_assert_eq(rel(hello[0]->time), 20, "HELLO leaves when connected");
    cr_assert_eq(frames_to(&r, CLIENT(c), MP_KIND_WELCOME, welcome, 1), 1);
    cr_assert_eq(rel(welcome[0]->time), 30);
    cr_assert(mp_sim_client_welcomed(s, c));
    mp_sim_free(s);
    recorder_free(&r);
}

/* One-way delays of PINGs sent 100 ms apart (far enough apart that the
 * stream order never holds one back). */
static void ping_delays(mp_sim_config *cfg, uint64_t *d, size_t n) {
    recorder r;
    mp_sim *s = start(cfg, &r);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mp_sim_run_for(s, 1000);
    uint64_t *sent = calloc(n, sizeof *sent);
    mp_id *ids = calloc(n, sizeof *ids);
    for (size_t k = 0; k < n; k++) {
        sent[k] = mp_sim_now(s);
        send_kind(s, c, MP_KIND_PING, &ids[k]);
        mp_sim_run_for(s, 100);
    }
    mp_sim_run_for(s, 1000);
    for (size_t k = 0; k < n; k++) {
        d[k] = UINT64_MAX;
        for (size_t i = 0; i < r.len; i++) {
            if (r.items[i].kind == MP_SIM_TRACE_FRAME && r.items[i].to == 0 &&
                mp_id_equal(&r.items[i].id, &ids[k])) {
                d[k] = r.items[i].time - sent[k];
            }
        }
        cr_assert_neq(d[k], UINT64_MAX, "ping %zu never arrived", k);
    }
    free(sent);
    free(ids);
    mp_sim_free(s);
    recorder_free(&r);
}

Test(sim_net, uniform_jitter_stays_in_range_and_covers_it) {
    mp_sim_config cfg = base_config(5, 1);
    cfg.net.latency_ms = 5;
    cfg.net.jitter_ms = 10;
    uint64_t d[300];
    ping_delays(&cfg, d, 300);
    uint64_t lo = UINT64_MAX, hi = 0, sum = 0;
    for (size_t k = 0; k < 300; k++) {
        lo = d[k] < lo ? d[k] : lo;
        hi = d[k] > hi ? d[k] : hi;
        sum += d[k];
    }
    cr_assert_eq(lo, 5);
    cr_assert_eq(hi, 15);
    cr_assert(sum / 300 >= 9 && sum / 300 <= 11, "mean %llu", (unsigned long long)(sum / 300));
}

Test(sim_net, exponential_jitter_has_its_mean_and_a_tail) {
    mp_sim_config cfg = base_config(6, 1);
    cfg.net.latency_ms = 5;
    cfg.net.jitter_ms = 10;
    cfg.net.jitter = MP_SIM_JITTER_EXP;
    uint64_t d[600];
    ping_delays(&cfg, d, 600);
    uint64_t sum = 0, tail = 0, lo = UINT64_MAX, hi = 0;
    for (size_t k = 0; k < 600; k++) {
        sum += d[k];
        tail += d[k] > 5 + 20; /* more than twice the mean: about e^-2 = 13.5 % */
        lo = d[k] < lo ? d[k] : lo;
        hi = d[k] > hi ? d[k] : hi;
    }
    double mean = (double)sum / 600;
    cr_assert(mean > 13 && mean < 17, "mean %.2f", mean);
    cr_assert(tail > 40 && tail < 130, "tail %llu", (unsigned long long)tail);
    cr_assert_geq(lo, 5);
    cr_assert_leq(hi, 5 + 200, "cut at 20x the mean");
}

Test(sim_net, stream_frames_keep_their_order_despite_jitter) {
    mp_sim_config cfg = base_config(7, 1);
    cfg.net.latency_ms = 1;
    cfg.net.jitter_ms = 50;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mp_id ids[200];
    for (int k = 0; k < 200; k++) {
        send_kind(s, c, MP_KIND_PING, &ids[k]);
        if (k % 10 == 0) {
            mp_sim_run_for(s, 1);
        }
    }
    mp_sim_run_for(s, 2000);
    const rec *got[200];
    cr_assert_eq(frames_to(&r, 0, MP_KIND_PING, got, 200), 200);
    for (int k = 0; k < 200; k++) {
        cr_assert(mp_id_equal(&got[k]->id, &ids[k]), "ping %d overtaken", k);
    }
    mp_sim_free(s);
    recorder_free(&r);
}

/* --- faults touch GOSSIP frames only -------------------------------------------------------------
 */

typedef struct fault_run {
    size_t gossip_sent;
    size_t gossip_arrived; /* frames, duplicates included */
    size_t gossip_distinct;
    size_t gossip_twice;
    size_t inversions; /* gossip arrivals out of send order */
} fault_run;

/* Sends n GOSSIP and n PING frames in bursts of 10 and checks every PING
 * arrives exactly once, in order, whatever the faults. */
static fault_run fault_run_with(double loss, double dup, double reorder, size_t n) {
    mp_sim_config cfg = base_config(11, 1);
    cfg.net.loss = loss;
    cfg.net.dup = dup;
    cfg.net.reorder = reorder;
    cfg.net.reorder_ms = 30;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mp_id *g = calloc(n, sizeof *g), *p = calloc(n, sizeof *p);
    uint32_t *pops = calloc(n, sizeof *pops);
    for (size_t k = 0; k < n; k++) {
        send_kind(s, c, MP_KIND_GOSSIP, &g[k]);
        pops[k] = send_kind(s, c, MP_KIND_PING, &p[k]);
        if (k % 10 == 9) {
            mp_sim_run_for(s, 1);
        }
    }
    mp_sim_run_for(s, 2000);
    /* PINGs: once each, in order, each answered once. */
    const rec **pings = calloc(n + 1, sizeof *pings);
    cr_assert_eq(frames_to(&r, 0, MP_KIND_PING, pings, n + 1), n, "pings lost or duplicated");
    for (size_t k = 0; k < n; k++) {
        cr_assert(mp_id_equal(&pings[k]->id, &p[k]), "ping %zu out of order", k);
        cr_assert_eq(mp_sim_client_op(s, c, pops[k])->answers, 1);
        cr_assert_eq(mp_sim_client_op(s, c, pops[k])->answer_kind, MP_KIND_PONG);
    }
    fault_run out = {.gossip_sent = n};
    const rec **gs = calloc(3 * n + 1, sizeof *gs);
    out.gossip_arrived = frames_to(&r, 0, MP_KIND_GOSSIP, gs, 3 * n + 1);
    for (size_t k = 0; k < n; k++) {
        size_t times = count_id(&r, 0, &g[k]);
        out.gossip_distinct += times > 0;
        out.gossip_twice += times == 2;
        cr_assert_leq(times, 2);
    }
    /* Inversions: an arrival whose send index is below an earlier one's. */
    size_t max_seen = 0;
    for (size_t i = 0; i < out.gossip_arrived; i++) {
        size_t idx = 0;
        while (idx < n && !mp_id_equal(&g[idx], &gs[i]->id)) {
            idx++;
        }
        if (i > 0 && idx < max_seen) {
            out.inversions++;
        }
        max_seen = idx > max_seen ? idx : max_seen;
    }
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_eq(st.lost, n - out.gossip_distinct);
    cr_assert_eq(st.duplicated, out.gossip_twice);
    free(g);
    free(p);
    free(pops);
    free(pings);
    free(gs);
    mp_sim_free(s);
    recorder_free(&r);
    return out;
}

Test(sim_faults, none_configured_none_happen) {
    fault_run f = fault_run_with(0, 0, 0, 300);
    cr_assert_eq(f.gossip_arrived, 300);
    cr_assert_eq(f.gossip_distinct, 300);
    cr_assert_eq(f.inversions, 0);
}

Test(sim_faults, loss_drops_that_share_of_gossip_only) {
    fault_run all = fault_run_with(1.0, 0, 0, 200);
    cr_assert_eq(all.gossip_arrived, 0);
    fault_run some = fault_run_with(0.3, 0, 0, 1000);
    size_t lost = 1000 - some.gossip_distinct;
    cr_assert(lost > 240 && lost < 360, "lost %zu of 1000 at 30 %%", lost);
    cr_assert_eq(some.gossip_arrived, some.gossip_distinct, "no duplicates without dup");
}

Test(sim_faults, dup_delivers_gossip_twice_only) {
    fault_run all = fault_run_with(0, 1.0, 0, 200);
    cr_assert_eq(all.gossip_arrived, 400);
    cr_assert_eq(all.gossip_twice, 200);
    fault_run some = fault_run_with(0, 0.25, 0, 1000);
    cr_assert(some.gossip_twice > 190 && some.gossip_twice < 310, "twice %zu", some.gossip_twice);
    cr_assert_eq(some.gossip_distinct, 1000);
}

Test(sim_faults, reorder_takes_gossip_out_of_order_only) {
    fault_run f = fault_run_with(0, 0, 1.0, 300);
    cr_assert_eq(f.gossip_arrived, 300);
    cr_assert_gt(f.inversions, 30, "only %zu inversions", f.inversions);
}

Test(sim_faults, all_at_once_still_spare_the_stream) {
    fault_run f = fault_run_with(1.0, 1.0, 1.0, 200);
    cr_assert_eq(f.gossip_arrived, 0);
}

Test(sim_faults, can_change_while_running) {
    mp_sim_config cfg = base_config(3, 1);
    recorder r;
    mp_sim *s = start(&cfg, &r);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mp_sim_run_for(s, 10);
    for (int k = 0; k < 50; k++) {
        send_kind(s, c, MP_KIND_GOSSIP, NULL);
    }
    mp_sim_run_for(s, 100);
    mp_sim_net(s)->loss = 1.0;
    for (int k = 0; k < 50; k++) {
        send_kind(s, c, MP_KIND_GOSSIP, NULL);
    }
    mp_sim_run_for(s, 100);
    cr_assert_eq(frames_to(&r, 0, MP_KIND_GOSSIP, NULL, 0), 50);
    mp_sim_free(s);
    recorder_free(&r);
}

/* --- partitions
 * ------------------------------------------------------------------------------------ */

static uint32_t echo(mp_sim *s, uint32_t c, int x) {
    char text[96];
    snprintf(text, sizeof text, "[{\"name\":\"e\",\"fun\":\"echo\",\"args\":[%d]}]", x);
    uint32_t op = mp_sim_client_request_json(s, c, text, 0);
    cr_assert_neq(op, MP_SIM_NONE);
    return op;
}

Test(sim_partition, cuts_frames_then_breaks_the_connection) {
    mp_sim_config cfg = base_config(1, 2);
    cfg.net.break_timeout_ms = 3000;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    /* A client at node 0's network position, talking to node 1. */
    uint32_t c = mp_sim_client_open_from(s, 0, 1, NULL);
    uint32_t before = echo(s, c, 1);
    mp_sim_run_for(s, 100);
    cr_assert_eq(mp_sim_client_op(s, c, before)->answers, 1);
    uint32_t group[2] = {0, 1};
    mp_sim_partition(s, group);
    cr_assert_not(mp_sim_reachable(s, 0, 1));
    cr_assert(mp_sim_reachable(s, 0, 0));
    cr_assert(mp_sim_reachable(s, MP_SIM_NONE, 1), "outside any position: never cut off");
    uint64_t cut_at = mp_sim_now(s);
    uint32_t during = echo(s, c, 2);
    mp_sim_run_for(s, 2900);
    cr_assert_eq(mp_sim_client_op(s, c, during)->answers, 0);
    cr_assert_not(mp_sim_client_closed(s, c));
    mp_sim_run_for(s, 200);
    cr_assert(mp_sim_client_closed(s, c));
    cr_assert_eq(mp_sim_client_close_reason(s, c), MPREG_E_UNREACHABLE);
    const rec *node_side = find(&r, MP_SIM_TRACE_CLOSE, 1);
    cr_assert_not_null(node_side);
    cr_assert_eq(node_side->reason, MPREG_E_UNREACHABLE);
    cr_assert_eq(node_side->time, cut_at + 3000);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_geq(st.cut_off, 1);
    cr_assert_eq(st.breaks, 1);
    /* A client outside the positions still reaches node 1. */
    uint32_t outside = mp_sim_client_open(s, 1, NULL);
    uint32_t op = echo(s, outside, 3);
    mp_sim_run_for(s, 100);
    cr_assert_eq(mp_sim_client_op(s, outside, op)->answers, 1);
    mp_sim_free(s);
    recorder_free(&r);
}

Test(sim_partition, dials_across_fail_after_the_connect_timeout) {
    mp_sim_config cfg = base_config(1, 2);
    cfg.net.connect_timeout_ms = 700;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    mp_sim_partition_halves(s);
    uint64_t t0 = mp_sim_now(s);
    uint32_t c = mp_sim_client_open_from(s, 0, 1, NULL);
    uint64_t conn = mp_sim_dial(s, 0, mp_sim_node_addr(s, 1));
    cr_assert_neq(conn, 0);
    mp_sim_run_for(s, 699);
    cr_assert_not(mp_sim_client_closed(s, c));
    mp_sim_run_for(s, 1);
    cr_assert(mp_sim_client_closed(s, c));
    cr_assert_eq(mp_sim_client_close_reason(s, c), MPREG_E_UNREACHABLE);
    const rec *fail = find(&r, MP_SIM_TRACE_DIAL_FAIL, 0);
    cr_assert_not_null(fail, "node 0's own dial failed too");
    cr_assert_eq(fail->conn, conn);
    cr_assert_eq(fail->time, t0 + 700);
    cr_assert_null(find(&r, MP_SIM_TRACE_OPEN, 1), "nothing reached node 1");
    /* Healed: the same dial goes through. */
    mp_sim_heal(s);
    uint32_t again = mp_sim_client_open_from(s, 0, 1, NULL);
    uint32_t op = echo(s, again, 4);
    mp_sim_run_for(s, 100);
    cr_assert_eq(mp_sim_client_op(s, again, op)->answers, 1);
    cr_assert_eq(mp_sim_dial(s, 0, "no-port"), 0, "not host:port");
    mp_sim_free(s);
    recorder_free(&r);
}

Test(sim_partition, a_quiet_connection_survives_a_short_one) {
    mp_sim_config cfg = base_config(1, 2);
    cfg.net.break_timeout_ms = 5000;
    mp_sim *s = start(&cfg, NULL);
    uint32_t c = mp_sim_client_open_from(s, 0, 1, NULL);
    mp_sim_run_for(s, 100);
    mp_sim_partition_halves(s);
    mp_sim_run_for(s, 1000);
    mp_sim_heal(s);
    mp_sim_run_for(s, 6000);
    cr_assert_not(mp_sim_client_closed(s, c));
    uint32_t op = echo(s, c, 5);
    mp_sim_run_for(s, 100);
    cr_assert_eq(mp_sim_client_op(s, c, op)->answers, 1);
    /* One that lost a frame does not, even if healed before the timeout. */
    mp_sim_partition_halves(s);
    echo(s, c, 6);
    mp_sim_run_for(s, 1000);
    mp_sim_heal(s);
    mp_sim_run_for(s, 4100);
    cr_assert(mp_sim_client_closed(s, c));
    cr_assert_eq(mp_sim_client_close_reason(s, c), MPREG_E_UNREACHABLE);
    mp_sim_free(s);
}

/* --- crash and restart
 * ----------------------------------------------------------------------------- */

Test(sim_crash, closes_peers_connections_after_a_latency) {
    mp_sim_config cfg = base_config(1, 2);
    cfg.net.latency_ms = 20;
    cfg.net.jitter_ms = 0;
    recorder r;
    mp_sim *s = start(&cfg, &r);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    uint64_t link = mp_sim_dial(s, 1, mp_sim_node_addr(s, 0));
    mp_sim_run_for(s, 200);
    cr_assert_not_null(find(&r, MP_SIM_TRACE_OPEN, 0));
    cr_assert_eq(mp_sim_node_conns(s, 0), 2);
    uint32_t pending =
        mp_sim_client_request_json(s, c, "[{\"name\":\"z\",\"fun\":\"sleep\",\"args\":[1000]}]", 0);
    mp_sim_run_for(s, 100);
    uint64_t t = mp_sim_now(s);
    mp_sim_node_crash(s, 0);
    cr_assert_not(mp_sim_node_up(s, 0));
    cr_assert_null(mp_sim_node(s, 0));
    cr_assert_eq(mp_sim_node_conns(s, 0), 0);
    mp_sim_run_for(s, 19);
    cr_assert_not(mp_sim_client_closed(s, c));
    mp_sim_run_for(s, 1);
    cr_assert(mp_sim_client_closed(s, c));
    cr_assert_eq(mp_sim_client_close_reason(s, c), MPREG_E_CLOSED);
    cr_assert_eq(mp_sim_client_op(s, c, pending)->answers, 0, "no answer from the dead");
    bool link_closed = false;
    for (size_t i = 0; i < r.len; i++) {
        const rec *x = &r.items[i];
        if (x->kind == MP_SIM_TRACE_CLOSE && x->to == 1 && x->conn == link) {
            link_closed = true;
            cr_assert_eq(x->time, t + 20);
        }
    }
    cr_assert(link_closed, "node 1's side of the link closed");
    /* Dialing a dead node fails after the connect timeout. */
    uint32_t late = mp_sim_client_open(s, 0, NULL);
    mp_sim_run_for(s, cfg.net.connect_timeout_ms);
    cr_assert(mp_sim_client_closed(s, late));
    cr_assert_eq(mp_sim_client_close_reason(s, late), MPREG_E_UNREACHABLE);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_eq(st.crashes, 1);
    cr_assert_geq(st.dial_failures, 1);
    mp_sim_free(s);
    recorder_free(&r);
}

Test(sim_crash, frames_on_their_way_to_a_dead_node_are_lost) {
    mp_sim_config cfg = base_config(1, 1);
    cfg.net.latency_ms = 50;
    cfg.net.jitter_ms = 0;
    mp_sim *s = start(&cfg, NULL);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mp_sim_run_for(s, 200);
    for (int k = 0; k < 5; k++) {
        send_kind(s, c, MP_KIND_PING, NULL);
    }
    mp_sim_run_for(s, 10);
    mp_sim_node_crash(s, 0);
    mp_sim_run_for(s, 200);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_eq(st.undeliverable, 5);
    mp_sim_free(s);
}

Test(sim_restart, with_data_is_the_next_incarnation_without_is_now) {
    mp_sim_config cfg = base_config(1, 1);
    mp_sim *s = start(&cfg, NULL);
    cr_assert_eq(mp_sim_node_incarnation(s, 0), 1);
    mp_sim_run_for(s, 1234);
    cr_assert_eq(mp_sim_node_restart(s, 0, true), MPREG_OK, "crashes it first");
    cr_assert_eq(mp_sim_node_incarnation(s, 0), 2);
    const mp_node_descriptor *d = mp_catalog_node(mp_node_catalog(mp_sim_node(s, 0)), "n0");
    cr_assert_not_null(d);
    cr_assert_eq(d->incarnation, 2);
    mp_sim_run_for(s, 1000);
    mp_sim_node_crash(s, 0);
    cr_assert_eq(mp_sim_node_start(s, 0), MPREG_OK, "start after a crash keeps the data");
    cr_assert_eq(mp_sim_node_incarnation(s, 0), 3);
    mp_sim_run_for(s, 1000);
    cr_assert_eq(mp_sim_node_restart(s, 0, false), MPREG_OK);
    cr_assert_eq(mp_sim_node_incarnation(s, 0), mp_sim_now(s));
    cr_assert_gt(mp_sim_node_incarnation(s, 0), 3);
    cr_assert_str_eq(mp_node_id(mp_sim_node(s, 0)), "n0");
    d = mp_catalog_node(mp_node_catalog(mp_sim_node(s, 0)), "n0");
    cr_assert_eq(d->incarnation, mp_sim_now(s));
    /* And it serves. */
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    uint32_t op = echo(s, c, 9);
    mp_sim_run_for(s, 100);
    cr_assert_eq(mp_sim_client_op(s, c, op)->answers, 1);
    assert_json_eq(&mp_sim_client_op(s, c, op)->value, "{\"e\": 9}");
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_eq(st.restarts, 2);
    mp_sim_free(s);
}

/* --- timers
 * ---------------------------------------------------------------------------------------- */

Test(sim_timers, node_timers_fire_on_virtual_time) {
    mp_sim_config cfg = base_config(1, 1);
    cfg.net.latency_ms = 1;
    cfg.net.jitter_ms = 0;
    mp_sim *s = start(&cfg, NULL);
    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mp_sim_run_for(s, 10);
    uint32_t slow =
        mp_sim_client_request_json(s, c, "[{\"name\":\"z\",\"fun\":\"sleep\",\"args\":[500]}]", 0);
    uint32_t late = mp_sim_client_request_json(
        s, c, "[{\"name\":\"z\",\"fun\":\"sleep\",\"args\":[500]}]", 100);
    mp_sim_run_for(s, 1000);
    const mp_sim_op *a = mp_sim_client_op(s, c, slow), *b = mp_sim_client_op(s, c, late);
    cr_assert_eq(a->answers, 1);
    cr_assert(a->ok);
    cr_assert_eq(a->answered_ms - a->sent_ms, 502, "500 ms of sleep and two latencies");
    cr_assert_eq(b->answers, 1);
    cr_assert_not(b->ok);
    cr_assert_eq(b->code, MPREG_E_DEADLINE);
    cr_assert_eq(b->answered_ms - b->sent_ms, 102);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_lt(st.ticks, 100, "ticks only when a timer is due (%llu)",
                 (unsigned long long)st.ticks);
    mp_sim_free(s);
}

typedef struct tick_at {
    int fired;
    uint64_t at;
} tick_at;

static void action(mp_sim *s, void *ud) {
    tick_at *t = ud;
    t->fired++;
    t->at = mp_sim_elapsed(s);
}

Test(sim_timers, actions_run_at_their_time_and_clock_moves_only_forward) {
    mp_sim_config cfg = base_config(1, 1);
    mp_sim *s = start(&cfg, NULL);
    tick_at t = {0};
    cr_assert_eq(mp_sim_at(s, 250, action, &t), MPREG_OK);
    mp_sim_run_until(s, MP_SIM_EPOCH_MS + 249);
    cr_assert_eq(t.fired, 0);
    mp_sim_run_until(s, MP_SIM_EPOCH_MS + 100); /* never back */
    cr_assert_eq(mp_sim_elapsed(s), 249);
    mp_sim_run_for(s, 1);
    cr_assert_eq(t.fired, 1);
    cr_assert_eq(t.at, 250);
    mp_sim_free(s);
}

static bool after(mp_sim *s, void *ud) {
    return mp_sim_elapsed(s) >= *(uint64_t *)ud;
}

Test(sim_timers, run_until_true_polls_and_gives_up) {
    mp_sim_config cfg = base_config(1, 1);
    mp_sim *s = start(&cfg, NULL);
    uint64_t when = 730;
    cr_assert_eq(mp_sim_run_until_true(s, after, &when, 100, 5000), 800);
    when = 100000;
    cr_assert_eq(mp_sim_run_until_true(s, after, &when, 100, 5000), UINT64_MAX);
    cr_assert_eq(mp_sim_elapsed(s), 5800);
    mp_sim_free(s);
}

/* --- backpressure
 * ------------------------------------------------------------------------------------ */

/* A subscriber whose bytes take 100 ms to arrive keeps up, only slowly:
 * the publisher is stalled until it has read, and nothing is lost. */
Test(sim_backpressure, a_slow_consumer_slows_the_publisher_down) {
    mp_sim_config cfg = base_config(1, 1);
    cfg.net.latency_ms = 100;
    cfg.net.jitter_ms = 0;
    cfg.net.high_water = 4000;
    mp_sim *s = start(&cfg, NULL);
    uint32_t sub = mp_sim_client_open(s, 0, NULL), pub = mp_sim_client_open(s, 0, NULL);
    const char *pat = "bp.#";
    uint32_t sop = mp_sim_client_subscribe(s, sub, &pat, 1, NULL);
    mp_sim_run_for(s, 500);
    cr_assert(mp_sim_client_op(s, sub, sop)->ok);
    char big[600];
    memset(big, 'x', sizeof big);
    for (int k = 0; k < 40; k++) {
        mp_sim_client_publish(s, pub, "bp.a", big, sizeof big);
    }
    mp_sim_run_for(s, 5000);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_eq(mp_sim_client_delivery_count(s, sub), 40);
    cr_assert_eq(st.node_drops, 0);
    mp_sim_free(s);
}

/* One whose bytes take longer than the stall's bound (a second) to arrive
 * is taken for stuck: the publisher goes on, and it is shed. */
Test(sim_backpressure, bytes_in_flight_make_a_slow_consumer) {
    mp_sim_config cfg = base_config(1, 1);
    cfg.net.latency_ms = 1500;
    cfg.net.jitter_ms = 0;
    cfg.net.high_water = 4000;
    mp_sim *s = start(&cfg, NULL);
    uint32_t sub = mp_sim_client_open(s, 0, NULL), pub = mp_sim_client_open(s, 0, NULL);
    const char *pat = "bp.#";
    uint32_t sop = mp_sim_client_subscribe(s, sub, &pat, 1, NULL);
    mp_sim_run_for(s, 5000);
    cr_assert(mp_sim_client_op(s, sub, sop)->ok);
    char big[600];
    memset(big, 'x', sizeof big);
    for (int k = 0; k < 40; k++) {
        mp_sim_client_publish(s, pub, "bp.a", big, sizeof big);
    }
    mp_sim_run_for(s, 10000);
    size_t first = mp_sim_client_delivery_count(s, sub);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_lt(first, 40, "some deliveries were shed");
    cr_assert_gt(first, 0);
    cr_assert_gt(st.node_drops, 0, "the node counted its drops");
    /* Once the bytes were read, the node hears it may write again. */
    mp_sim_client_publish(s, pub, "bp.b", "late", 4);
    mp_sim_run_for(s, 5000);
    size_t total = mp_sim_client_delivery_count(s, sub);
    cr_assert_eq(total, first + 1);
    cr_assert_str_eq(mp_sim_client_delivery(s, sub, total - 1)->topic, "bp.b");
    mp_sim_free(s);
}

/* --- clients: RPC
 * --------------------------------------------------------------------------------------- */

static mpreg_err triple(void *ud, const mpreg_value *args, const mpreg_value *kwargs,
                        mpreg_value *result) {
    (void)kwargs;
    (*(int *)ud)++;
    if (args->u.arr.len != 1 || args->u.arr.items[0].type != MPREG_INT) {
        return MPREG_E_HANDLER;
    }
    *result = mpreg_int(3 * args->u.arr.items[0].u.i);
    return MPREG_OK;
}

Test(sim_client, rpc_round_trips_with_chains_workers_and_errors) {
    mp_sim_config cfg = base_config(1, 1);
    cfg.net.jitter_ms = 0;
    mp_sim *s = start(&cfg, NULL);
    int calls = 0;
    uint32_t w = mp_sim_client_open(s, 0, "worker");
    uint32_t reg = mp_sim_client_register(s, w, "triple", triple, &calls, 40);
    mp_sim_run_for(s, 20);
    cr_assert(mp_sim_client_welcomed(s, w));
    cr_assert_eq(mp_sim_client_op(s, w, reg)->answers, 1);
    cr_assert(mp_sim_client_op(s, w, reg)->ok);

    uint32_t c = mp_sim_client_open(s, 0, NULL);
    mpreg_value args = json("[\"hi\"]");
    uint32_t call = mp_sim_client_call(s, c, "echo", &args, 0);
    mpreg_value_free(&args);
    uint32_t chain =
        mp_sim_client_request_json(s, c,
                                   "[{\"name\":\"a\",\"fun\":\"echo\",\"args\":[7]},"
                                   "{\"name\":\"b\",\"fun\":\"triple\",\"args\":[\"a\"]},"
                                   "{\"name\":\"c\",\"fun\":\"echos\",\"args\":[\"a\",\"b\"]}]",
                                   0);
    uint32_t missing =
        mp_sim_client_request_json(s, c, "[{\"name\":\"m\",\"fun\":\"nope\",\"args\":[]}]", 0);
    uint32_t bad = mp_sim_client_request_json(s, c, "[{\"name\":\"m\"}]", 0);
    uint32_t status = mp_sim_client_control(s, c, "status");
    mp_sim_run_for(s, 200);

    const mp_sim_op *o = mp_sim_client_op(s, c, call);
    cr_assert_eq(o->answers, 1);
    assert_json_eq(&o->value, "{\"call\": \"hi\"}");
    o = mp_sim_client_op(s, c, chain);
    cr_assert_eq(o->answers, 1);
    cr_assert(o->ok, "%s", o->message);
    assert_json_eq(&o->value, "{\"c\": [7, 21]}");
    cr_assert_geq(o->answered_ms - o->sent_ms, 40, "the worker took its time");
    cr_assert_eq(calls, 1);
    o = mp_sim_client_op(s, c, missing);
    cr_assert_eq(o->answers, 1);
    cr_assert_not(o->ok);
    cr_assert_eq(o->code, MPREG_E_NOT_FOUND);
    o = mp_sim_client_op(s, c, bad);
    cr_assert_eq(o->answers, 1);
    cr_assert_eq(o->code, MPREG_E_MISSING_FIELD);
    o = mp_sim_client_op(s, c, status);
    cr_assert_eq(o->answer_kind, MP_KIND_CONTROL_REPLY);
    const mpreg_value *node = mpreg_map_get(&o->value, "node");
    cr_assert(node && strcmp(node->u.str.ptr, "n0") == 0);
    mp_sim_client_stats cs;
    mp_sim_client_get_stats(s, w, &cs);
    cr_assert_eq(cs.invokes, 1);
    mp_sim_client_get_stats(s, c, &cs);
    cr_assert_eq(cs.unmatched, 0);

    /* A worker that leaves: its call fails with worker_gone, once. */
    uint32_t gone =
        mp_sim_client_request_json(s, c, "[{\"name\":\"t\",\"fun\":\"triple\",\"args\":[1]}]", 0);
    mp_sim_run_for(s, 10);
    mp_sim_client_close(s, w);
    mp_sim_run_for(s, 200);
    o = mp_sim_client_op(s, c, gone);
    cr_assert_eq(o->answers, 1);
    cr_assert_eq(o->code, MPREG_E_WORKER_GONE);
    cr_assert(mp_sim_client_closed(s, w));
    cr_assert_eq(mp_sim_client_request_json(s, w, "[]", 0), MP_SIM_NONE, "closed clients refuse");
    mp_sim_free(s);
}

/* --- clients: pub/sub
 * --------------------------------------------------------------------------------------- */

Test(sim_client, pubsub_round_trips_once_per_subscription) {
    mp_sim_config cfg = base_config(1, 1);
    mp_sim *s = start(&cfg, NULL);
    uint32_t a = mp_sim_client_open(s, 0, NULL), b = mp_sim_client_open(s, 0, NULL);
    uint32_t g1 = mp_sim_client_open(s, 0, NULL), g2 = mp_sim_client_open(s, 0, NULL);
    uint32_t pub = mp_sim_client_open(s, 0, NULL);
    const char *both[2] = {"news.#", "news.*"};
    const char *one = "news.sport";
    uint32_t sa = mp_sim_client_subscribe(s, a, both, 2, NULL);
    uint32_t sb = mp_sim_client_subscribe(s, b, &one, 1, NULL);
    mp_sim_client_subscribe(s, g1, both, 1, "grp");
    mp_sim_client_subscribe(s, g2, both, 1, "grp");
    mp_sim_run_for(s, 50);
    uint64_t sub_a = mp_sim_client_op(s, a, sa)->sub;
    cr_assert_gt(sub_a, 0);
    uint32_t p1 = mp_sim_client_publish(s, pub, "news.sport", "goal", 4);
    mp_sim_client_publish(s, pub, "news.weather", "rain", 4);
    mp_sim_client_publish(s, pub, "news.sport", "again", 5);
    mp_sim_run_for(s, 50);
    cr_assert_eq(mp_sim_client_delivery_count(s, a), 3, "once each, though both patterns match");
    const mp_sim_delivery *d = mp_sim_client_delivery(s, a, 0);
    cr_assert_eq(d->sub, sub_a);
    cr_assert_str_eq(d->topic, "news.sport");
    cr_assert_eq(d->len, 4);
    cr_assert_eq(memcmp(d->data, "goal", 4), 0);
    cr_assert(mp_id_equal(&d->id, &mp_sim_client_op(s, pub, p1)->id));
    cr_assert_eq(mp_sim_client_delivery_count(s, b), 2);
    cr_assert_eq(mp_sim_client_delivery_count(s, g1) + mp_sim_client_delivery_count(s, g2), 3,
                 "the group gets each message once");
    /* Unsubscribed: nothing more. */
    uint32_t un = mp_sim_client_unsubscribe(s, b, mp_sim_client_op(s, b, sb)->sub);
    mp_sim_run_for(s, 20);
    cr_assert(mp_sim_client_op(s, b, un)->ok);
    mp_sim_client_publish(s, pub, "news.sport", "late", 4);
    mp_sim_run_for(s, 50);
    cr_assert_eq(mp_sim_client_delivery_count(s, b), 2);
    cr_assert_eq(mp_sim_client_delivery_count(s, a), 4);
    /* A bad topic is refused with an ERROR correlated to the publish. */
    uint32_t bad = mp_sim_client_publish(s, pub, "news.*", "x", 1);
    mp_sim_run_for(s, 20);
    cr_assert_eq(mp_sim_client_op(s, pub, bad)->answers, 1);
    cr_assert_eq(mp_sim_client_op(s, pub, bad)->code, MPREG_E_TOPIC);
    mp_sim_free(s);
}

/* --- statistics
 * ------------------------------------------------------------------------------------------------
 */

Test(sim_stats, frames_and_bytes_per_node_per_kind) {
    mp_sim_config cfg = base_config(1, 2);
    mp_sim *s = start(&cfg, NULL);
    uint32_t c = mp_sim_client_open(s, 1, NULL);
    for (int k = 0; k < 7; k++) {
        send_kind(s, c, MP_KIND_PING, NULL);
    }
    mp_sim_run_for(s, 100);
    mp_sim_kind_stats k;
    mp_sim_node_kind_stats(s, 1, MP_KIND_PING, &k);
    cr_assert_eq(k.msgs_in, 7);
    cr_assert_gt(k.bytes_in, 7 * 20);
    mp_sim_node_kind_stats(s, 1, MP_KIND_PONG, &k);
    cr_assert_eq(k.msgs_out, 7);
    mp_sim_node_kind_stats(s, 1, MP_KIND_HELLO, &k);
    cr_assert_eq(k.msgs_in, 1);
    mp_sim_node_kind_stats(s, 0, MP_KIND_PONG, &k);
    cr_assert_eq(k.msgs_out, 0, "node 0 had no client");
    mp_sim_kind_totals(s, MP_KIND_PONG, &k);
    cr_assert_eq(k.msgs_out, 7);
    mp_sim_node_kind_stats(s, 1, (mp_kind)500, &k);
    cr_assert_eq(k.msgs_out, 0);
    mp_sim_stats st;
    mp_sim_get_stats(s, &st);
    cr_assert_eq(st.frames_sent, st.frames_delivered);
    cr_assert_gt(st.events, 0);
    mp_sim_client_stats cs;
    mp_sim_client_get_stats(s, c, &cs);
    cr_assert_eq(cs.frames_out, 8, "HELLO and seven PINGs");
    cr_assert_eq(cs.frames_in, 8, "WELCOME and seven PONGs");
    mp_sim_free(s);
}

/* --- the scenario table and the single-node scenarios -------------------------------------------
 */

#include "sim/scenarios.h"

Test(sim_scenarios, table_names_each_scenario_once) {
    size_t n;
    const mp_sim_scenario *sc = mp_sim_scenarios(&n);
    static const char *const want[] = {"single-rpc",    "single-pubsub",      "join",
                                       "crash",         "partition-heal",     "rpc-across",
                                       "pubsub-across", "queue-group-across", "rest-traffic",
                                       "scale"};
    cr_assert_eq(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n; i++) {
        cr_assert_str_eq(sc[i].name, want[i]);
        cr_assert_eq(mp_sim_scenario_find(want[i]), &sc[i]);
        cr_assert_geq(sc[i].default_nodes, sc[i].min_nodes);
        cr_assert_leq(sc[i].default_nodes, sc[i].max_nodes);
        /* A single-node scenario runs one node, whatever it is asked. */
        cr_assert_eq(sc[i].max_nodes, sc[i].needs_cluster ? MP_SIM_MAX_NODES : 1);
        cr_assert_gt(strlen(sc[i].description), 20);
        cr_assert_eq(sc[i].needs_cluster, i >= 2);
    }
    cr_assert_null(mp_sim_scenario_find("nope"));
    cr_assert_eq(mp_sim_scenario_find("scale")->default_nodes, 1000);
}

Test(sim_scenarios, too_few_nodes_is_a_failure_not_a_crash) {
    mp_sim_run_opts o = {.seed = 1, .nodes = 2};
    mp_sim_report r;
    cr_assert_not(mp_sim_scenario_run(mp_sim_scenario_find("rpc-across"), &o, &r));
    cr_assert_not(r.ok);
    cr_assert(strstr(r.failure, "needs between 6 and 100000 nodes, not 2"), "%s", r.failure);
}

/* single-rpc with 5 nodes used to run one node and report 5. */
Test(sim_scenarios, a_single_node_scenario_refuses_more_nodes) {
    mp_sim_run_opts o = {.seed = 1, .nodes = 5};
    mp_sim_report r;
    cr_assert_not(mp_sim_scenario_run(mp_sim_scenario_find("single-rpc"), &o, &r));
    cr_assert_str_eq(r.failure, "single-rpc runs on exactly 1 node, not 5");
    o.nodes = 1;
    cr_assert(mp_sim_scenario_run(mp_sim_scenario_find("single-pubsub"), &o, &r), "%s", r.failure);
    cr_assert_eq(r.nodes, 1);
}

static mp_sim_report run_single(const char *name, uint64_t seed) {
    mp_sim_run_opts o = {.seed = seed};
    mp_sim_report r;
    mp_sim_scenario_run(mp_sim_scenario_find(name), &o, &r);
    cr_assert(r.ok, "%s seed %llu: %s", name, (unsigned long long)seed, r.failure);
    cr_assert_eq(r.nodes, 1);
    return r;
}

static double figure(const mp_sim_report *r, const char *name) {
    const mp_sim_metric *m = mp_sim_report_get(r, name);
    cr_assert_not_null(m, "no %s", name);
    return m->value;
}

Test(sim_scenarios, single_rpc_answers_every_request_once_correctly) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        mp_sim_report r = run_single("single-rpc", seed);
        cr_assert_eq(figure(&r, "requests"), 1000);
        cr_assert_gt(figure(&r, "results"), 0);
        cr_assert_gt(figure(&r, "errors_expected"), 0);
    }
    mp_sim_report a = run_single("single-rpc", 4), b = run_single("single-rpc", 4);
    cr_assert_eq(a.trace_hash, b.trace_hash);
}

Test(sim_scenarios, single_pubsub_delivers_once_in_order) {
    for (uint64_t seed = 1; seed <= 3; seed++) {
        mp_sim_report r = run_single("single-pubsub", seed);
        cr_assert_eq(figure(&r, "duplicates"), 0);
        cr_assert_eq(figure(&r, "missing"), 0);
        cr_assert_eq(figure(&r, "delivered"), figure(&r, "expected"));
        cr_assert_eq(figure(&r, "out_of_order"), 0);
    }
}
