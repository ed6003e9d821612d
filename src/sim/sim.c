/* sim.c - the simulator's core: lifecycle, the event loop, node slots and
 * the driver side of each node (its mp_node_io).
 *
 * This file plays the part src/runtime/server.c plays for one real node,
 * for every node at once: connection callbacks become mp_node_on_* calls,
 * io callbacks go to the virtual network (sim_net.c), and after every input
 * the node's next wakeup is turned into a tick event. Nothing here calls a
 * node from inside one of its own callbacks: whatever a node asks for is
 * scheduled and happens later, from the loop, as the runtime does. */
#include "sim/sim_internal.h"

#include "core/addr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- seeds and hashing ---------------------------------------------------------- */

static uint64_t mp_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* An independent stream per (what, which): the network, each start of each
 * node, each client. A restarted node draws new ids, never its old ones. */
uint64_t mp_sim_derive_seed(uint64_t seed, uint64_t what, uint64_t which) {
    uint64_t x = seed;
    uint64_t a = mp_splitmix(&x);
    x = a ^ (what * 0xd1b54a32d192ed03ull);
    uint64_t b = mp_splitmix(&x);
    x = b ^ (which * 0xabc98388fb8fac03ull);
    return mp_splitmix(&x);
}

void mp_sim_hash_mix(mp_sim *s, uint64_t v) {
    uint64_t h = (s->hash ^ v) * 0x9fb21c651e98df25ull;
    s->hash = h ^ (h >> 29);
}

/* Frame bodies go into the run's hash eight bytes at a time: a thousand
 * nodes move gigabytes, and a byte-wise hash would show in profiles. */
void mp_sim_hash_bytes(mp_sim *s, const uint8_t *data, size_t len) {
    uint64_t h = s->hash ^ (len * 0x9e3779b97f4a7c15ull);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    memcpy(&tail, data + i, len - i);
    s->hash = h;
    mp_sim_hash_mix(s, tail);
}

void mp_sim_emit(mp_sim *s, const mp_sim_trace *t) {
    if (s->trace) {
        s->trace(s->trace_ud, t);
    }
}

uint32_t mp_sim_party(const mp_sim_ep *ep) {
    return ep->owner_kind == MP_SIM_OWNER_NODE ? ep->owner : ep->owner | MP_SIM_CLIENT_BIT;
}

/* --- configuration ---------------------------------------------------------------- */

void mp_sim_config_default(mp_sim_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->seed = 1;
    cfg->nodes = 1;
    cfg->net.latency_ms = 1;
    cfg->net.jitter_ms = 1;
    cfg->net.jitter = MP_SIM_JITTER_UNIFORM;
    cfg->net.reorder_ms = 20;
    cfg->net.connect_timeout_ms = 1000;
    cfg->net.break_timeout_ms = 5000;
    cfg->net.high_water = 8u * 1024u * 1024u;
    cfg->node.log_level = MP_LOG_ERROR;
}

static bool mp_prob_ok(double p) {
    return p >= 0.0 && p <= 1.0; /* false for NaN too */
}

static bool mp_sim_config_ok(const mp_sim_config *cfg) {
    const mp_sim_net_config *n = &cfg->net;
    return cfg->nodes >= 1 && cfg->nodes <= 100000 && mp_prob_ok(n->loss) && mp_prob_ok(n->dup) &&
           mp_prob_ok(n->reorder) && n->high_water > 0 && cfg->seed_nodes <= cfg->nodes;
}

mp_sim_net_config *mp_sim_net(mp_sim *s) {
    return &s->cfg.net;
}

/* --- lifecycle ------------------------------------------------------------------------ */

static void mp_sim_node_addr_of(uint32_t i, char *out, size_t cap) {
    uint32_t v = i + 1;
    snprintf(out, cap, "10.%u.%u.%u:%u", (v >> 16) & 255u, (v >> 8) & 255u, v & 255u, MP_SIM_PORT);
}

static mpreg_err mp_sim_init_nodes(mp_sim *s) {
    s->nodes = calloc(s->node_count, sizeof *s->nodes);
    s->addrs = calloc(s->node_count, sizeof *s->addrs);
    if (!s->nodes || !s->addrs) {
        return MPREG_E_NOMEM;
    }
    for (uint32_t i = 0; i < s->node_count; i++) {
        mp_sim_slot *sn = &s->nodes[i];
        sn->sim = s;
        sn->index = i;
        sn->armed = UINT64_MAX;
        snprintf(sn->id, sizeof sn->id, "n%u", i);
        mp_sim_node_addr_of(i, sn->addr, sizeof sn->addr);
        mp_sim_list_init(&sn->eps);
        s->addrs[i] = sn->addr;
        uintptr_t v = (uintptr_t)i + 1;
        if (mp_map_put(&s->by_addr, sn->addr, strlen(sn->addr), (void *)v, NULL) ||
            mp_map_put(&s->by_id, sn->id, strlen(sn->id), (void *)v, NULL)) {
            return MPREG_E_NOMEM;
        }
    }
    /* Seeds: the first seed_nodes nodes, each node leaving itself out. */
    for (uint32_t i = 0; i < s->node_count && s->cfg.seed_nodes > 0; i++) {
        mp_sim_slot *sn = &s->nodes[i];
        sn->seeds = calloc(s->cfg.seed_nodes, sizeof *sn->seeds);
        if (!sn->seeds) {
            return MPREG_E_NOMEM;
        }
        for (uint32_t j = 0; j < s->cfg.seed_nodes; j++) {
            if (j != i) {
                sn->seeds[sn->seed_count++] = s->addrs[j];
            }
        }
    }
    return MPREG_OK;
}

mp_sim *mp_sim_new(const mp_sim_config *cfg) {
    if (!cfg || !mp_sim_config_ok(cfg)) {
        return NULL;
    }
    mp_sim *s = calloc(1, sizeof *s);
    if (!s) {
        return NULL;
    }
    s->cfg = *cfg;
    mp_sim_heap_init(&s->heap);
    s->now = MP_SIM_EPOCH_MS;
    s->node_count = cfg->nodes;
    s->next_ep = 1;
    s->hash = 0x6a09e667f3bcc908ull;
    mp_map_init(&s->by_addr);
    mp_map_init(&s->by_id);
    mp_sim_list_init(&s->all_eps);
    mp_xoshiro_seed(&s->net_rng, mp_sim_derive_seed(cfg->seed, 0, 0));
    if (mp_sim_init_nodes(s)) {
        mp_sim_free(s);
        return NULL;
    }
    return s;
}

static void mp_sim_event_release(mp_sim_event *ev) {
    if (ev->type == MP_SIM_EV_ACTION) {
        mp_sim_action *a = ev->ptr;
        mp_buf_free(&a->frame);
        free(a);
    } else {
        free(ev->ptr);
    }
}

void mp_sim_free(mp_sim *s) {
    if (!s) {
        return;
    }
    for (uint32_t i = 0; s->nodes && i < s->node_count; i++) {
        mp_node *n = s->nodes[i].node;
        s->nodes[i].node = NULL;
        mp_node_free(n);
    }
    mp_sim_net_free(s);
    mp_sim_event ev;
    while (mp_heap_pop(&s->heap, &ev)) {
        mp_sim_event_release(&ev);
    }
    mp_heap_free(&s->heap);
    mp_sim_clients_free(s);
    for (uint32_t i = 0; s->nodes && i < s->node_count; i++) {
        free(s->nodes[i].seeds);
    }
    free(s->eps);
    free(s->nodes);
    free(s->addrs);
    mp_map_free(&s->by_addr, NULL);
    mp_map_free(&s->by_id, NULL);
    free(s);
}

/* --- the event loop ------------------------------------------------------------------------ */

mpreg_err mp_sim_schedule(mp_sim *s, mp_sim_event *ev) {
    if (ev->time < s->now) {
        ev->time = s->now;
    }
    ev->seq = ++s->seq;
    mpreg_err err = mp_heap_push(&s->heap, ev);
    if (err) {
        mp_sim_event_release(ev);
        return err;
    }
    if (mp_heap_len(&s->heap) > s->stats.max_queue) {
        s->stats.max_queue = mp_heap_len(&s->heap);
    }
    return MPREG_OK;
}

uint64_t mp_sim_now(const mp_sim *s) {
    return s->now;
}

uint64_t mp_sim_elapsed(const mp_sim *s) {
    return s->now - MP_SIM_EPOCH_MS;
}

static mp_sim_slot *mp_sim_slot_live(mp_sim *s, uint32_t i, uint64_t gen) {
    mp_sim_slot *sn = &s->nodes[i];
    return sn->node && sn->gen == gen ? sn : NULL;
}

static void mp_sim_run_tick(mp_sim *s, const mp_sim_event *ev) {
    mp_sim_slot *sn = mp_sim_slot_live(s, ev->node, ev->b);
    if (!sn || sn->armed != ev->a) {
        s->stats.stale_ticks++;
        return;
    }
    sn->armed = UINT64_MAX; /* this tick is spent */
    s->stats.ticks++;
    mp_sim_trace t = {
        .kind = MP_SIM_TRACE_TICK, .time = s->now, .to = ev->node, .from = MP_SIM_NONE};
    mp_sim_emit(s, &t);
    mp_node_tick(sn->node, s->now);
    mp_sim_rearm(s, ev->node);
}

static void mp_sim_run_event(mp_sim *s, mp_sim_event *ev) {
    s->now = ev->time;
    s->stats.events++;
    mp_sim_hash_mix(s, ev->time);
    mp_sim_hash_mix(s, ((uint64_t)ev->type << 48) ^ ((uint64_t)ev->aux << 32) ^ ev->node);
    mp_sim_hash_mix(s, ev->a);
    mp_sim_hash_mix(s, ev->b ^ ((uint64_t)ev->len << 40));
    switch ((mp_sim_ev_type)ev->type) {
    case MP_SIM_EV_ACTION: {
        mp_sim_action *a = ev->ptr;
        if (a->fn) {
            a->fn(s, a->ud);
        } else {
            mp_sim_client_run_action(s, a);
        }
        mp_buf_free(&a->frame);
        free(a);
        return;
    }
    case MP_SIM_EV_TICK:
        mp_sim_run_tick(s, ev);
        return;
    case MP_SIM_EV_OWN_CLOSE: {
        mp_sim_slot *sn = mp_sim_slot_live(s, ev->node, ev->b);
        if (sn) {
            mp_node_on_close(sn->node, ev->a, (mpreg_err)ev->aux, s->now);
            mp_sim_rearm(s, ev->node);
        }
        return;
    }
    case MP_SIM_EV_WRITABLE: {
        mp_sim_slot *sn = mp_sim_slot_live(s, ev->node, ev->b);
        if (sn && mp_sim_ep_get(s, ev->a)) {
            mp_node_on_writable(sn->node, ev->a, s->now);
            mp_sim_rearm(s, ev->node);
        }
        return;
    }
    default:
        mp_sim_net_run(s, ev);
        free(ev->ptr);
        return;
    }
}

bool mp_sim_step(mp_sim *s) {
    mp_sim_event ev;
    if (!mp_heap_pop(&s->heap, &ev)) {
        return false;
    }
    mp_sim_run_event(s, &ev);
    return true;
}

void mp_sim_run_until(mp_sim *s, uint64_t t) {
    const mp_sim_event *next;
    while ((next = mp_heap_peek(&s->heap)) && next->time <= t) {
        mp_sim_step(s);
    }
    if (t > s->now) {
        s->now = t;
    }
}

void mp_sim_run_for(mp_sim *s, uint64_t ms) {
    mp_sim_run_until(s, s->now + ms);
}

uint64_t mp_sim_run_until_true(mp_sim *s, bool (*pred)(mp_sim *s, void *ud), void *ud,
                               uint64_t check_ms, uint64_t limit_ms) {
    uint64_t start = s->now;
    if (check_ms == 0) {
        check_ms = 1;
    }
    for (;;) {
        uint64_t spent = s->now - start;
        if (pred(s, ud)) {
            return spent;
        }
        if (spent >= limit_ms) {
            return UINT64_MAX;
        }
        uint64_t step = limit_ms - spent < check_ms ? limit_ms - spent : check_ms;
        mp_sim_run_for(s, step);
    }
}

mpreg_err mp_sim_at(mp_sim *s, uint64_t delay_ms, mp_sim_fn fn, void *ud) {
    mp_sim_action *a = calloc(1, sizeof *a);
    if (!a) {
        return MPREG_E_NOMEM;
    }
    a->fn = fn;
    a->ud = ud;
    mp_sim_event ev = {.time = s->now + delay_ms, .type = MP_SIM_EV_ACTION, .ptr = a};
    return mp_sim_schedule(s, &ev);
}

/* --- ticks ------------------------------------------------------------------------------------ */

void mp_sim_rearm(mp_sim *s, uint32_t i) {
    mp_sim_slot *sn = &s->nodes[i];
    if (!sn->node) {
        return;
    }
    uint64_t next = mp_node_next_wakeup(sn->node);
    if (next == sn->armed) {
        return;
    }
    /* The tick scheduled before (if any) becomes stale: it carries the old
     * due time and is skipped when it comes up. */
    sn->armed = next;
    if (next == UINT64_MAX) {
        return;
    }
    mp_sim_event ev = {.time = next, .type = MP_SIM_EV_TICK, .node = i, .a = next, .b = sn->gen};
    mp_sim_schedule(s, &ev);
}

/* --- the node's io -----------------------------------------------------------------------------
 */

static mp_sim_ep *mp_io_ep(mp_sim_slot *sn, uint64_t conn) {
    mp_sim_ep *ep = mp_sim_ep_get(sn->sim, conn);
    return ep && ep->owner_kind == MP_SIM_OWNER_NODE && ep->owner == sn->index ? ep : NULL;
}

static mp_buf *mp_io_output(void *ud, uint64_t conn) {
    mp_sim_ep *ep = mp_io_ep(ud, conn);
    return ep ? &ep->out : NULL;
}

static void mp_io_output_commit(void *ud, uint64_t conn, uint32_t frames) {
    (void)frames; /* the cutter finds them */
    mp_sim_slot *sn = ud;
    mp_sim_ep *ep = mp_io_ep(sn, conn);
    if (ep) {
        mp_sim_net_commit(sn->sim, ep);
    }
}

static bool mp_io_over_high_water(void *ud, uint64_t conn) {
    mp_sim_slot *sn = ud;
    mp_sim_ep *ep = mp_io_ep(sn, conn);
    return ep && mp_sim_net_over(sn->sim, ep, sn->sim->cfg.net.high_water);
}

static bool mp_io_over_soft_water(void *ud, uint64_t conn) {
    mp_sim_slot *sn = ud;
    mp_sim_ep *ep = mp_io_ep(sn, conn);
    return ep && ep->inflight > sn->sim->cfg.net.high_water / 2;
}

static void mp_io_set_reading(void *ud, uint64_t conn, bool reading) {
    mp_sim_slot *sn = ud;
    mp_sim_ep *ep = mp_io_ep(sn, conn);
    if (ep) {
        mp_sim_net_set_reading(sn->sim, ep, reading);
    }
}

static void mp_io_close(void *ud, uint64_t conn, bool flush_first, mpreg_err reason) {
    mp_sim_slot *sn = ud;
    mp_sim *s = sn->sim;
    mp_sim_ep *ep = mp_io_ep(sn, conn);
    if (!ep) {
        return; /* already gone: its on_close is on its way */
    }
    mp_sim_net_close(s, ep, flush_first);
    /* "The mp_node_on_close that follows io->close comes later, from the
     * driver's loop": an event at the same instant. */
    mp_sim_event ev = {.time = s->now,
                       .type = MP_SIM_EV_OWN_CLOSE,
                       .node = sn->index,
                       .a = conn,
                       .b = sn->gen,
                       .aux = (uint16_t)reason};
    mp_sim_schedule(s, &ev);
}

static void mp_io_count_drop(void *ud, uint64_t conn, uint32_t frames) {
    mp_sim_slot *sn = ud;
    (void)conn;
    sn->sim->stats.node_drops += frames;
}

static void mp_io_log(void *ud, mp_log_level level, const char *message) {
    mp_sim_slot *sn = ud;
    mp_sim *s = sn->sim;
    if (s->cfg.log) {
        uint64_t ms = mp_sim_elapsed(s);
        fprintf(s->cfg.log, "%8llu.%03llu %-5s %s: %s\n", (unsigned long long)(ms / 1000),
                (unsigned long long)(ms % 1000), mp_log_level_name(level), sn->id, message);
    }
}

/* "host:port" with a non-empty host and a port; anything else cannot even
 * be dialed. */
static bool mp_addr_ok(const char *addr) {
    char host[MP_ADDR_HOST_MAX];
    uint16_t port;
    return mp_addr_split(addr, false, host, &port) == MPREG_OK;
}

static uint64_t mp_io_dial(void *ud, const char *addr) {
    mp_sim_slot *sn = ud;
    mp_sim *s = sn->sim;
    if (!mp_addr_ok(addr)) {
        return 0;
    }
    char ip[MP_SIM_ADDR_MAX];
    snprintf(ip, sizeof ip, "%.*s", (int)(strchr(sn->addr, ':') - sn->addr), sn->addr);
    return mp_sim_net_dial(s, MP_SIM_OWNER_NODE, sn->index, sn->index, ip,
                           mp_sim_node_by_addr(s, addr));
}

uint64_t mp_sim_dial(mp_sim *s, uint32_t i, const char *addr) {
    if (i >= s->node_count || !s->nodes[i].node) {
        return 0;
    }
    return mp_io_dial(&s->nodes[i], addr);
}

/* --- what the network tells a node -------------------------------------------------------------
 */

void mp_sim_node_frame(mp_sim *s, uint32_t i, uint64_t conn, const uint8_t *frame, size_t len) {
    mp_sim_slot *sn = &s->nodes[i];
    if (sn->node) {
        mp_node_on_frame(sn->node, conn, frame, len, s->now);
        mp_sim_rearm(s, i);
    }
}

void mp_sim_node_closed(mp_sim *s, uint32_t i, uint64_t conn, mpreg_err reason) {
    mp_sim_slot *sn = &s->nodes[i];
    if (sn->node) {
        mp_node_on_close(sn->node, conn, reason, s->now);
        mp_sim_rearm(s, i);
    }
}

void mp_sim_node_opened(mp_sim *s, uint32_t i, uint64_t conn, const char *peer_addr) {
    mp_sim_slot *sn = &s->nodes[i];
    if (sn->node) {
        mp_node_on_open(sn->node, conn, peer_addr, s->now);
        mp_sim_rearm(s, i);
    }
}

/* --- node slots ----------------------------------------------------------------------------------
 */

uint32_t mp_sim_node_count(const mp_sim *s) {
    return s->node_count;
}

/* A new identity key for node i, as a fresh data dir would make (seeded:
 * the same run, the same keys). */
static void mp_sim_new_key(mp_sim *s, uint32_t i) {
    mp_sim_slot *sn = &s->nodes[i];
    mp_xoshiro x;
    mp_xoshiro_seed(&x, mp_sim_derive_seed(s->cfg.seed, (2ull << 40) + i, sn->keys++));
    for (size_t b = 0; b < sizeof sn->key; b += 8) {
        uint64_t v = mp_rng_u64(&x.rng);
        memcpy(sn->key + b, &v, 8);
    }
}

static mpreg_err mp_sim_boot(mp_sim *s, uint32_t i, uint64_t incarnation) {
    mp_sim_slot *sn = &s->nodes[i];
    if (sn->starts == 0) {
        mp_sim_new_key(s, i);
    }
    sn->starts++;
    sn->gen++;
    sn->incarnation = incarnation;
    sn->armed = UINT64_MAX;
    mp_xoshiro_seed(&sn->rng, mp_sim_derive_seed(s->cfg.seed, 1 + (uint64_t)i, sn->starts));
    mp_node_config nc = s->cfg.node;
    nc.node_id = sn->id;
    nc.advertise_addr = sn->addr;
    nc.incarnation = incarnation;
    nc.node_key = sn->key;
    nc.node_key_len = sizeof sn->key;
    if (!nc.cluster) {
        nc.cluster = "sim";
    }
    if (!nc.seeds && s->cfg.seed_nodes > 0) {
        nc.seeds = sn->seeds;
        nc.seed_count = sn->seed_count;
    }
    if (s->cfg.configure) {
        s->cfg.configure(s->cfg.configure_ud, s, i, &nc);
    }
    mp_node_io io = {
        .ud = sn,
        .output = mp_io_output,
        .output_commit = mp_io_output_commit,
        .over_high_water = mp_io_over_high_water,
        .set_reading = mp_io_set_reading,
        .over_soft_water = mp_io_over_soft_water,
        .close = mp_io_close,
        .count_drop = mp_io_count_drop,
        .log = mp_io_log,
        .dial = mp_io_dial,
    };
    mp_node *n = mp_node_new(&nc, &io, &sn->rng.rng, s->now);
    if (!n) {
        /* It may have dialed before it gave up: those sides go too. */
        mp_sim_net_crash(s, i);
        return MPREG_E_INVALID;
    }
    sn->node = n;
    mp_sim_hash_mix(s, 0x5354415254000000ull ^ ((uint64_t)i << 8) ^ incarnation);
    mp_sim_trace t = {.kind = MP_SIM_TRACE_START, .time = s->now, .to = i, .from = MP_SIM_NONE};
    mp_sim_emit(s, &t);
    mp_sim_rearm(s, i);
    return MPREG_OK;
}

mpreg_err mp_sim_node_start(mp_sim *s, uint32_t i) {
    if (i >= s->node_count) {
        return MPREG_E_INVALID;
    }
    mp_sim_slot *sn = &s->nodes[i];
    if (sn->node) {
        return MPREG_E_EXISTS;
    }
    return mp_sim_boot(s, i, sn->starts == 0 ? 1 : sn->incarnation + 1);
}

mpreg_err mp_sim_start_all(mp_sim *s) {
    for (uint32_t i = 0; i < s->node_count; i++) {
        if (!s->nodes[i].node) {
            mpreg_err err = mp_sim_node_start(s, i);
            if (err) {
                return err;
            }
        }
    }
    return MPREG_OK;
}

void mp_sim_node_crash(mp_sim *s, uint32_t i) {
    if (i >= s->node_count || !s->nodes[i].node) {
        return;
    }
    mp_sim_slot *sn = &s->nodes[i];
    mp_node *n = sn->node;
    sn->node = NULL; /* from here on its callbacks and events are no-ops */
    sn->gen++;
    sn->armed = UINT64_MAX;
    mp_sim_net_crash(s, i);
    mp_node_free(n);
    s->stats.crashes++;
    mp_sim_hash_mix(s, 0x4352415348000000ull ^ i);
    mp_sim_trace t = {.kind = MP_SIM_TRACE_CRASH, .time = s->now, .to = i, .from = MP_SIM_NONE};
    mp_sim_emit(s, &t);
}

mpreg_err mp_sim_node_restart(mp_sim *s, uint32_t i, bool keep_data) {
    if (i >= s->node_count) {
        return MPREG_E_INVALID;
    }
    mp_sim_node_crash(s, i);
    mp_sim_slot *sn = &s->nodes[i];
    uint64_t inc = keep_data ? sn->incarnation + 1 : s->now;
    if (!keep_data) {
        mp_sim_new_key(s, i); /* a fresh data dir: another process, as far as members know */
    }
    s->stats.restarts++;
    return mp_sim_boot(s, i, inc);
}

bool mp_sim_node_up(const mp_sim *s, uint32_t i) {
    return i < s->node_count && s->nodes[i].node != NULL;
}

mp_node *mp_sim_node(mp_sim *s, uint32_t i) {
    return i < s->node_count ? s->nodes[i].node : NULL;
}

const char *mp_sim_node_id(const mp_sim *s, uint32_t i) {
    return i < s->node_count ? s->nodes[i].id : NULL;
}

const char *mp_sim_node_addr(const mp_sim *s, uint32_t i) {
    return i < s->node_count ? s->nodes[i].addr : NULL;
}

uint64_t mp_sim_node_incarnation(const mp_sim *s, uint32_t i) {
    return i < s->node_count ? s->nodes[i].incarnation : 0;
}

static uint32_t mp_sim_lookup(const mp_map *m, const char *key) {
    void *v = key ? mp_map_get(m, key, strlen(key)) : NULL;
    return v ? (uint32_t)((uintptr_t)v - 1) : MP_SIM_NONE;
}

uint32_t mp_sim_node_by_id(const mp_sim *s, const char *id) {
    return mp_sim_lookup(&s->by_id, id);
}

uint32_t mp_sim_node_by_addr(const mp_sim *s, const char *addr) {
    return mp_sim_lookup(&s->by_addr, addr);
}

const char *const *mp_sim_addrs(const mp_sim *s) {
    return s->addrs;
}

void mp_sim_node_poke(mp_sim *s, uint32_t i) {
    if (i < s->node_count) {
        mp_sim_rearm(s, i);
    }
}

size_t mp_sim_node_conns(const mp_sim *s, uint32_t i) {
    return i < s->node_count ? s->nodes[i].ep_count : 0;
}

/* --- partitions ----------------------------------------------------------------------------------
 */

void mp_sim_partition(mp_sim *s, const uint32_t *group) {
    for (uint32_t i = 0; i < s->node_count; i++) {
        s->nodes[i].group = group ? group[i] : 0;
        mp_sim_hash_mix(s, s->nodes[i].group);
    }
    mp_sim_net_repartition(s);
}

void mp_sim_partition_halves(mp_sim *s) {
    uint32_t *g = malloc(s->node_count * sizeof *g);
    if (!g) {
        return;
    }
    for (uint32_t i = 0; i < s->node_count; i++) {
        g[i] = i < s->node_count / 2 ? 0 : 1;
    }
    mp_sim_partition(s, g);
    free(g);
}

void mp_sim_heal(mp_sim *s) {
    mp_sim_partition(s, NULL);
}

bool mp_sim_reachable(const mp_sim *s, uint32_t a, uint32_t b) {
    return mp_sim_hosts_reachable(s, a, b);
}

/* --- statistics ----------------------------------------------------------------------------------
 */

void mp_sim_node_kind_stats(const mp_sim *s, uint32_t i, mp_kind kind, mp_sim_kind_stats *out) {
    memset(out, 0, sizeof *out);
    if (i < s->node_count && (unsigned)kind < MP_SIM_KINDS) {
        *out = s->nodes[i].kinds[kind];
    }
}

void mp_sim_kind_totals(const mp_sim *s, mp_kind kind, mp_sim_kind_stats *out) {
    memset(out, 0, sizeof *out);
    if ((unsigned)kind >= MP_SIM_KINDS) {
        return;
    }
    for (uint32_t i = 0; i < s->node_count; i++) {
        const mp_sim_kind_stats *k = &s->nodes[i].kinds[kind];
        out->msgs_out += k->msgs_out;
        out->bytes_out += k->bytes_out;
        out->msgs_in += k->msgs_in;
        out->bytes_in += k->bytes_in;
    }
}

void mp_sim_get_stats(const mp_sim *s, mp_sim_stats *out) {
    *out = s->stats;
}

uint64_t mp_sim_trace_hash(const mp_sim *s) {
    return s->hash;
}

void mp_sim_set_trace(mp_sim *s, void (*fn)(void *ud, const mp_sim_trace *t), void *ud) {
    s->trace = fn;
    s->trace_ud = ud;
}
