/* node_pubsub.c - pub/sub on the wire: SUBSCRIBE, UNSUBSCRIBE, PUBLISH,
 * DELIVER, and the catalog's topic entries.
 *
 * The pub/sub service (services/pubsub.h) decides who gets what; the node
 * turns its deliveries into DELIVER frames, its interest changes into
 * catalog entries, and the routing engine's publish decision into a local
 * publish plus sends to the other interested nodes.
 *
 * Slow consumers. Pub/sub never queues for a connection that cannot keep
 * up: when a connection's output goes over its high-water mark, the node
 * marks it not accepting in the service, which then drops (and counts, per
 * subscription) what would have gone to it and steers queue-group messages
 * to other members. When the driver reports the connection writable again,
 * it accepts again and the drops of the episode are reported through
 * io->count_drop. The connection itself stays open: losing messages is the
 * slow consumer's penalty, not losing the link.
 *
 * Fast publishers. Before it comes to shedding, a delivery that leaves its
 * subscriber's output past half the mark (io->over_soft_water) stalls the
 * publisher: its reading pauses for MP_NODE_STALL_MS. A subscriber that
 * keeps up, only less quickly than the publisher writes, then slows the
 * publisher down instead of losing messages. */
#include "node/node_internal.h"

#include <stdlib.h>
#include <string.h>

/* --- a connection's subscription ids ---------------------------------------- */

static mpreg_err mp_conn_subs_reserve(mp_conn *c) {
    if (c->sub_count < c->sub_cap) {
        return MPREG_OK;
    }
    uint32_t cap = c->sub_cap ? c->sub_cap * 2 : 8;
    uint64_t *subs = realloc(c->subs, cap * sizeof *subs);
    if (!subs) {
        return MPREG_E_NOMEM;
    }
    c->subs = subs;
    c->sub_cap = cap;
    return MPREG_OK;
}

static void mp_conn_subs_remove(mp_conn *c, uint64_t sub) {
    for (uint32_t i = 0; i < c->sub_count; i++) {
        if (c->subs[i] == sub) {
            c->subs[i] = c->subs[--c->sub_count];
            return;
        }
    }
}

static uint64_t mp_conn_subs_dropped(const mp_node *n, const mp_conn *c) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < c->sub_count; i++) {
        mp_pubsub_sub_stats st;
        if (mp_pubsub_sub_stats_get(n->pubsub, c->subs[i], &st) == MPREG_OK) {
            total += st.dropped;
        }
    }
    return total;
}

/* --- slow consumers --------------------------------------------------------- */

static void mp_ps_start_shedding(mp_node *n, mp_conn *c) {
    if (c->shedding) {
        return;
    }
    c->shedding = true;
    c->dropped_base = mp_conn_subs_dropped(n, c);
    mp_node_log(n, MP_LOG_DEBUG, "conn %llu: slow consumer, shedding deliveries",
                (unsigned long long)c->id);
    if (n->shed_len == n->shed_cap) {
        uint32_t cap = n->shed_cap ? n->shed_cap * 2 : 8;
        uint64_t *p = realloc(n->shed_pending, cap * sizeof *p);
        if (!p) {
            return; /* the deliver hook still drops for it: c->shedding */
        }
        n->shed_pending = p;
        n->shed_cap = cap;
    }
    n->shed_pending[n->shed_len++] = c->id;
}

/* After the service returned: tell it who stopped accepting. */
static void mp_ps_flush_shedding(mp_node *n) {
    for (uint32_t i = 0; i < n->shed_len; i++) {
        mp_conn *c = mp_conn_get(n, n->shed_pending[i]);
        if (c && c->shedding) {
            mp_pubsub_set_accepting(n->pubsub, c->id, false);
        }
    }
    n->shed_len = 0;
}

static void mp_ps_count_drop(mp_node *n, mp_conn *c) {
    c->shed_drops++;
    n->counters.shed++;
    if (n->io.count_drop) {
        n->io.count_drop(n->io.ud, c->id, 1);
    }
}

void mp_ps_on_writable(mp_node *n, mp_conn *c) {
    if (!c->shedding) {
        return;
    }
    c->shedding = false;
    /* Subscriptions that ended while shedding take their counts with
     * them: never report a negative episode. */
    uint64_t now_dropped = mp_conn_subs_dropped(n, c);
    uint64_t dropped = now_dropped > c->dropped_base ? now_dropped - c->dropped_base : 0;
    mp_pubsub_set_accepting(n->pubsub, c->id, true);
    if (dropped && n->io.count_drop) {
        n->io.count_drop(n->io.ud, c->id, dropped > UINT32_MAX ? UINT32_MAX : (uint32_t)dropped);
    }
    mp_node_log(n, MP_LOG_INFO, "conn %llu: caught up; %llu deliveries were dropped",
                (unsigned long long)c->id, (unsigned long long)(dropped + c->shed_drops));
    c->shed_drops = 0;
}

/* --- stalling a fast publisher ---------------------------------------------- */

/* A stall pauses the publisher's reading for this long, at most; a
 * subscriber that stays behind longer goes over high water and is shed. */
#define MP_NODE_STALL_MS 2

/* The delivery just queued left its subscriber past the soft mark: stop
 * reading from the publisher for a moment rather than let the subscriber's
 * output reach the high-water mark and lose messages (nats-server does the
 * same to a producer that outruns a consumer). */
static void mp_ps_stall_publisher(mp_node *n) {
    mp_conn *pub = n->ps_publisher ? mp_conn_get(n, n->ps_publisher) : NULL;
    if (!pub || pub->stalled || pub->state == MP_CONN_CLOSING) {
        return;
    }
    if (mp_timer_arm(&n->timers, &pub->stall, mp_add_ms(n->now_ms, MP_NODE_STALL_MS))) {
        return; /* no memory for the timer: no stall, shedding still protects */
    }
    pub->stalled = true;
    if (!pub->reading_paused) {
        n->io.set_reading(n->io.ud, pub->id, false);
    }
}

void mp_ps_stall_over(mp_node *n, mp_timer *t) {
    mp_conn *c = MP_CONTAINER(t, mp_conn, stall);
    c->stalled = false;
    if (!c->reading_paused && c->state != MP_CONN_CLOSING) {
        n->io.set_reading(n->io.ud, c->id, true);
    }
}

/* --- the service's hooks ---------------------------------------------------- */

void mp_ps_deliver(void *ud, const mp_pubsub_delivery *d) {
    mp_node *n = ud;
    mp_conn *c = mp_conn_get(n, d->owner);
    if (!c || c->state == MP_CONN_CLOSING) {
        return;
    }
    if (c->shedding || n->io.over_high_water(n->io.ud, c->id)) {
        mp_ps_start_shedding(n, c);
        mp_ps_count_drop(n, c);
        return;
    }
    char sub_text[MP_PUBSUB_SUB_TEXT];
    mp_envelope env;
    mpreg_err err = mp_pubsub_deliver_envelope(d, sub_text, &env);
    err = err ? err : mp_node_send(n, c->id, &env);
    if (err) {
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: DELIVER not sent: %s", (unsigned long long)c->id,
                    mpreg_err_name(err));
        mp_ps_count_drop(n, c);
        return;
    }
    if (n->io.over_high_water(n->io.ud, c->id)) {
        mp_ps_start_shedding(n, c);
    } else if (n->io.over_soft_water && n->io.over_soft_water(n->io.ud, c->id)) {
        mp_ps_stall_publisher(n);
    }
}

/* A pattern gained its first local subscriber, or lost its last: the
 * catalog's topic entry for it comes or goes, so publishes elsewhere find
 * this node. */
void mp_ps_interest(void *ud, mp_str pattern, bool added) {
    mp_node *n = ud;
    char text[MP_ENTRY_MAX_STR + 1];
    if (pattern.len > MP_ENTRY_MAX_STR) {
        return;
    }
    memcpy(text, pattern.ptr, pattern.len);
    text[pattern.len] = '\0';
    mp_entry e;
    if (mp_entry_topic(&e, n->node_id, n->cluster, text) == MPREG_OK) {
        e.withdrawn = !added;
        mp_node_advertise(n, &e);
        mp_entry_free(&e);
    }
}

/* --- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------ */

static void mp_ps_send_subscription(mp_node *n, mp_conn *c, const mp_id *id, uint64_t sub) {
    mp_buf p = MP_BUF_INIT;
    if (mp_pubsub_subscription_encode(sub, &p) == MPREG_OK) {
        mp_envelope env;
        mp_envelope_init(&env, MP_KIND_OK);
        env.correlation_id = *id;
        env.payload = (mp_bytes){p.data, p.len};
        mp_node_send(n, c->id, &env);
    }
    mp_buf_free(&p);
}

void mp_ps_on_subscribe(mp_node *n, mp_conn *c, const mp_envelope *env) {
    if (c->sub_count >= MP_NODE_MAX_SUBS_PER_CONN) {
        mp_node_send_errorf(n, c->id, &env->id, MPREG_E_TOO_LARGE,
                            "too many subscriptions on this connection (at most %u)",
                            MP_NODE_MAX_SUBS_PER_CONN);
        return;
    }
    mp_pubsub_subscribe_payload p;
    const char *why = NULL;
    mpreg_err err = mp_pubsub_subscribe_decode(env->payload.ptr, env->payload.len, &p, &why);
    if (err) {
        mp_node_send_errorf(n, c->id, &env->id, err, "SUBSCRIBE: %s",
                            why ? why : mpreg_strerror(err));
        return;
    }
    mp_pubsub_sub_spec spec = mp_pubsub_spec_from_payload(&p, c->id);
    uint64_t sub = 0;
    err = mp_conn_subs_reserve(c);
    err = err ? err : mp_pubsub_subscribe(n->pubsub, &spec, &sub);
    if (err) {
        mp_node_send_errorf(n, c->id, &env->id, err, "SUBSCRIBE: %s", mpreg_strerror(err));
        mp_pubsub_subscribe_payload_free(&p);
        return;
    }
    c->subs[c->sub_count++] = sub;
    if (c->shedding) {
        mp_pubsub_set_accepting(n->pubsub, c->id, false);
    }
    /* The OK first, so the client knows the id before a DELIVER names it;
     * then whatever the subscription asked to be replayed. */
    mp_ps_send_subscription(n, c, &env->id, sub);
    mp_pubsub_replay(n->pubsub, sub);
    mp_ps_flush_shedding(n);
    mp_pubsub_subscribe_payload_free(&p);
}

void mp_ps_on_unsubscribe(mp_node *n, mp_conn *c, const mp_envelope *env) {
    uint64_t sub = 0;
    const char *why = NULL;
    mpreg_err err = mp_pubsub_subscription_decode(env->payload.ptr, env->payload.len, &sub, &why);
    if (err) {
        mp_node_send_errorf(n, c->id, &env->id, err, "UNSUBSCRIBE: %s",
                            why ? why : mpreg_strerror(err));
        return;
    }
    if (mp_pubsub_unsubscribe(n->pubsub, c->id, sub) != MPREG_OK) {
        mp_node_send_errorf(n, c->id, &env->id, MPREG_E_NOT_FOUND,
                            "no subscription %llu on this connection", (unsigned long long)sub);
        return;
    }
    mp_conn_subs_remove(c, sub);
    mp_envelope ok;
    mp_envelope_init(&ok, MP_KIND_OK); /* PROTOCOL §9.3: an empty payload */
    ok.correlation_id = env->id;
    mp_node_send(n, c->id, &ok);
}

void mp_ps_conn_drop(mp_node *n, mp_conn *c) {
    mp_pubsub_remove_owner(n->pubsub, c->id);
    c->sub_count = 0;
}

/* --- PUBLISH ----------------------------------------------------------------- */

/* The one way a publish leaves for another node: through its connection,
 * which exists once clustering does. A publish nobody can take is not an
 * error for the publisher (nobody is owed it); it is counted and logged. */
static void mp_ps_forward(mp_node *n, const char *node, const mp_envelope *env) {
    mp_conn *peer = mp_conn_for_node(n, node);
    if (!peer) {
        n->counters.unreachable++;
        mp_node_log(n, MP_LOG_DEBUG, "publish to %.*s: no connection to node %s",
                    (int)env->topic.len, env->topic.ptr, node);
        return;
    }
    mp_envelope fwd = *env;
    mp_node_send(n, peer->id, &fwd);
}

void mp_ps_on_publish(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_pubsub_prefetch(n->pubsub, &env->id); /* overlaps the miss with routing */
    mp_route_decision d = mp_engine_route_publish(n->engine, env->topic.ptr, env->topic.len);
    if (d.action == MP_ROUTE_FAIL) {
        mp_node_send_errorf(n, c->id, &env->id, d.error ? d.error : MPREG_E_ROUTE, "PUBLISH: %s",
                            d.why);
        return;
    }
    /* With retention on, every publish is kept here, interested or not:
     * replay is for subscribers that were not there yet. */
    bool local =
        d.action == MP_ROUTE_LOCAL || d.action == MP_ROUTE_LOCAL_AND_NODES || n->pubsub_retains;
    if (local) {
        mp_pubsub_message msg = {
            .id = env->id,
            .topic = env->topic,
            .payload = env->payload,
            .headers = env->headers,
            .header_count = env->header_count,
        };
        mp_pubsub_result res;
        n->ps_publisher = c->id;
        mpreg_err err = mp_pubsub_publish(n->pubsub, &msg, n->now_ms, &res);
        n->ps_publisher = 0;
        mp_ps_flush_shedding(n);
        if (err) {
            mp_node_send_errorf(n, c->id, &env->id, err, "PUBLISH: %s", mpreg_strerror(err));
            return;
        }
        n->counters.published++;
        if (res.duplicate) {
            return; /* seen before: it was forwarded then */
        }
    }
    if (!local) {
        n->counters.published++;
    }
    if (d.action == MP_ROUTE_NODES || d.action == MP_ROUTE_LOCAL_AND_NODES) {
        for (uint32_t i = 0; i < d.node_count; i++) {
            mp_ps_forward(n, d.nodes[i], env);
        }
    }
}
