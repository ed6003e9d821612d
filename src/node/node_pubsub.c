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
 * publisher: its reading pauses until that subscriber is back under the
 * soft mark, checked every MP_NODE_STALL_CHECK_MS. A subscriber that keeps
 * up, only less quickly than the publisher writes, then slows the
 * publisher down to its own pace instead of losing messages. The stall is
 * bounded: a subscriber that has been past the soft mark for
 * MP_NODE_STALL_MAX_MS without draining MP_NODE_STALL_MIN_DRAIN bytes
 * (io->output_pending) is not keeping up, it is stuck; the publisher goes
 * on, and that subscriber stalls nobody until it is back under the soft
 * mark (c->stall_exempt): its output reaches the high-water mark and it is
 * shed, as above. The clock is the subscriber's, not the stall's, so that
 * many subscribers stuck at once cost a publisher one bound, not one each.
 * A peer link is paused for one look only (it carries more than
 * publishes). So stuck subscribers cost a publisher about a second, where the old
 * fixed stall of 2 ms per delivery let a subscriber that read nothing
 * slow its publisher to one message per 2 ms until its output was full
 * (20 000 messages of 1 KiB took 8 s; 100 000 of 16 bytes, 24 s).
 *
 * Queue groups span the cluster. Interest is advertised per (pattern,
 * group) pair, and a client's PUBLISH goes, besides every node with
 * ungrouped interest, to one node per matching group, which the routing
 * engine picks by rendezvous hashing on the message id
 * (mp_engine_plan_publish). Each node is told which parts it delivers in
 * the "mp-deliver" header (docs/PROTOCOL.md §9.8); this node's own part
 * goes straight to its service as a filter. A PUBLISH from a peer is
 * delivered here only, as its header says (no header: the ungrouped
 * subscriptions only, as a node that predates groups across nodes means). */
#include "node/node_internal.h"

#include "core/topic.h"
#include "core/vec.h"
#include "fabric/catalog.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --- a connection's subscription ids ---------------------------------------- */

static mpreg_err mp_conn_subs_reserve(mp_conn *c) {
    return MP_VEC_GROW(c->subs, c->sub_cap, (size_t)c->sub_count + 1, 8);
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
    if (MP_VEC_GROW(n->shed_pending, n->shed_cap, (size_t)n->shed_len + 1, 8) != MPREG_OK) {
        return; /* the deliver hook still drops for it: c->shedding */
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

/* A delivery the node itself did not make (c full while it wrote, or the
 * frame not written): the deliver hook says so and the service counts it
 * as dropped, for its subscription (and the "missed" of its next DELIVER).
 * The transport's stats hear of it at once. Returns false, for the hook. */
static bool mp_ps_dropped(mp_node *n, mp_conn *c) {
    if (c->shedding) {
        c->shed_drops++;
    }
    if (n->io.count_drop) {
        n->io.count_drop(n->io.ud, c->id, 1);
    }
    return false;
}

/* sub is back under the soft mark (or drained after shedding): a subscriber like
 * any other again. */
static void mp_ps_caught_up(mp_conn *sub) {
    sub->behind = false;
    sub->stall_exempt = false;
}

void mp_ps_on_writable(mp_node *n, mp_conn *c) {
    if (!c->shedding) {
        return;
    }
    c->shedding = false;
    mp_ps_caught_up(c); /* drained under the low-water mark */
    /* The episode's drops: the service counted them all, the node's own
     * included; those went to the transport already. Subscriptions that
     * ended while shedding take their counts with them: never report a
     * negative episode. */
    uint64_t now_dropped = mp_conn_subs_dropped(n, c);
    uint64_t dropped = now_dropped > c->dropped_base ? now_dropped - c->dropped_base : 0;
    uint64_t unreported = dropped > c->shed_drops ? dropped - c->shed_drops : 0;
    mp_pubsub_set_accepting(n->pubsub, c->id, true);
    if (unreported && n->io.count_drop) {
        n->io.count_drop(n->io.ud, c->id,
                         unreported > UINT32_MAX ? UINT32_MAX : (uint32_t)unreported);
    }
    mp_node_log(n, MP_LOG_INFO, "conn %llu: caught up; %llu deliveries were dropped",
                (unsigned long long)c->id, (unsigned long long)dropped);
    c->shed_drops = 0;
}

/* --- stalling a fast publisher ---------------------------------------------- */

/* How often a stall looks at its subscriber again. */
#define MP_NODE_STALL_CHECK_MS 2
/* A subscriber past the soft mark that drains less than
 * MP_NODE_STALL_MIN_DRAIN bytes of its output in MP_NODE_STALL_MAX_MS is
 * stuck rather than slow. A second is what older nats-server releases
 * allowed a stall at most (stallClientMaxDuration; recent ones stall 2 to
 * 5 ms at a time, 10 ms per read, and then shed); it is far longer than a
 * live subscriber takes to read a little (a scheduling hiccup, a GC pause
 * of a few hundred ms), and short enough that a publisher whose subscriber
 * died goes on promptly. 64 KiB a second is a very slow reader. */
#define MP_NODE_STALL_MAX_MS 1000
#define MP_NODE_STALL_MIN_DRAIN (64u * 1024u)

static size_t mp_ps_pending(mp_node *n, uint64_t conn) {
    return n->io.output_pending ? n->io.output_pending(n->io.ud, conn) : SIZE_MAX;
}

/* sub is past the soft mark. Keeps its record of how long it has been and
 * what it drained; true when it is stuck: past the mark for
 * MP_NODE_STALL_MAX_MS without draining MP_NODE_STALL_MIN_DRAIN bytes
 * (then it stalls nobody until it is back under the mark). */
static bool mp_ps_stuck(mp_node *n, mp_conn *sub) {
    if (sub->stall_exempt) {
        return true;
    }
    size_t pending = mp_ps_pending(n, sub->id);
    if (!sub->behind ||
        (pending != SIZE_MAX && pending + MP_NODE_STALL_MIN_DRAIN <= sub->behind_mark)) {
        sub->behind = true; /* just fell behind, or draining: slow, not stuck */
        sub->behind_since = n->now_ms;
        sub->behind_mark = pending;
        return false;
    }
    if (n->now_ms < sub->behind_since + MP_NODE_STALL_MAX_MS) {
        return false;
    }
    sub->stall_exempt = true;
    mp_node_log(n, MP_LOG_INFO,
                "conn %llu: slow consumer drained under %u bytes in %u ms; it stalls no "
                "publisher until it catches up",
                (unsigned long long)sub->id, MP_NODE_STALL_MIN_DRAIN, MP_NODE_STALL_MAX_MS);
    return true;
}

/* The delivery just queued left sub past the soft mark: stop reading from
 * the publisher until sub has drained back under it, rather than let sub's
 * output reach the high-water mark and lose messages (nats-server does the
 * same to a producer that outruns a consumer). Not for a stuck sub. */
static void mp_ps_stall_publisher(mp_node *n, mp_conn *sub) {
    if (mp_ps_stuck(n, sub)) { /* first: its record starts at once, stall or not */
        return;
    }
    mp_conn *pub = n->ps_publisher ? mp_conn_get(n, n->ps_publisher) : NULL;
    if (!pub || pub->stalled || pub->state == MP_CONN_CLOSING) {
        return;
    }
    if (mp_timer_arm(&n->timers, &pub->stall, mp_add_ms(n->now_ms, MP_NODE_STALL_CHECK_MS))) {
        return; /* no memory for the timer: no stall, shedding still protects */
    }
    pub->stalled = true;
    pub->stall_on = sub->id;
    if (!pub->reading_paused) {
        n->io.set_reading(n->io.ud, pub->id, false);
    }
}

static void mp_ps_stall_end(mp_node *n, mp_conn *pub) {
    pub->stalled = false;
    pub->stall_on = 0;
    if (!pub->reading_paused && pub->state != MP_CONN_CLOSING) {
        n->io.set_reading(n->io.ud, pub->id, true);
    }
}

/* Is the subscriber a stall waits for drained, draining, or stuck? A peer
 * link is only ever paused for one look: it carries the other node's
 * gossip and RPC as well as its publishes, which must not wait a second
 * for one subscriber here (nats-server stalls client producers only, never
 * its routes). */
void mp_ps_stall_over(mp_node *n, mp_timer *t) {
    mp_conn *pub = MP_CONTAINER(t, mp_conn, stall);
    mp_conn *sub = mp_conn_get(n, pub->stall_on);
    if (sub && sub->state != MP_CONN_CLOSING && !sub->shedding &&
        !n->io.over_soft_water(n->io.ud, sub->id)) {
        mp_ps_caught_up(sub);
    }
    if (pub->role == MP_ROLE_PEER || !sub || sub->state == MP_CONN_CLOSING || sub->shedding ||
        !sub->behind || mp_ps_stuck(n, sub) ||
        mp_timer_arm(&n->timers, &pub->stall, mp_add_ms(n->now_ms, MP_NODE_STALL_CHECK_MS))) {
        mp_ps_stall_end(n, pub);
    }
}

/* --- the service's hooks ---------------------------------------------------- */

/* One DELIVER to c. The service writes the frame straight into c's output
 * from the encoding the message's deliveries share (what mp_node_send would
 * write, without encoding and checking the envelope once per subscriber);
 * what it leaves to the envelope path (a message without id, which needs a
 * fresh one per DELIVER, one it finds invalid, or a delivery that carries
 * a "missed" count) goes through mp_node_send, which fills in the id and
 * gives the error. */
static mpreg_err mp_ps_send_deliver(mp_node *n, mp_conn *c, const mp_pubsub_delivery *d) {
    mp_buf *out = n->io.output(n->io.ud, c->id);
    if (!out) {
        return MPREG_E_CLOSED;
    }
    mpreg_err err = mp_pubsub_deliver_frame(n->pubsub, d, mp_str_c(n->node_id),
                                            mp_str_c(n->cluster), n->max_frame, out);
    if (err == MPREG_OK) {
        n->io.output_commit(n->io.ud, c->id, 1);
        mp_node_note_output(n, c->id);
        return MPREG_OK;
    }
    char sub_text[MP_PUBSUB_SUB_TEXT], missed_text[MP_PUBSUB_SUB_TEXT];
    mp_envelope env;
    err = mp_pubsub_deliver_envelope(d, sub_text, missed_text, &env);
    return err ? err : mp_node_send(n, c->id, &env);
}

bool mp_ps_deliver(void *ud, const mp_pubsub_delivery *d) {
    mp_node *n = ud;
    /* Subscriptions carry their connection (they leave the service before
     * it is freed): no lookup by id per delivery. */
    mp_conn *c = d->owner_ud ? d->owner_ud : mp_conn_get(n, d->owner);
    if (!c || c->state == MP_CONN_CLOSING) {
        return false;
    }
    if (c->shedding || n->io.over_high_water(n->io.ud, c->id)) {
        mp_ps_start_shedding(n, c);
        return mp_ps_dropped(n, c);
    }
    mpreg_err err = mp_ps_send_deliver(n, c, d);
    if (err) {
        mp_node_log(n, MP_LOG_DEBUG, "conn %llu: DELIVER not sent: %s", (unsigned long long)c->id,
                    mpreg_err_name(err));
        return mp_ps_dropped(n, c);
    }
    if (n->io.over_high_water(n->io.ud, c->id)) {
        mp_ps_start_shedding(n, c);
    } else if (n->io.over_soft_water && n->io.over_soft_water(n->io.ud, c->id)) {
        mp_ps_stall_publisher(n, c);
    } else if (c->behind) {
        mp_ps_caught_up(c); /* back under the soft mark */
    }
    return true;
}

/* A (pattern, group) pair gained its first local subscriber, or lost its
 * last: the catalog's topic entry for it comes or goes, so publishes
 * elsewhere find this node. */
void mp_ps_interest(void *ud, mp_str pattern, mp_str group, bool added) {
    mp_node *n = ud;
    char text[MP_ENTRY_MAX_STR + 1], name[MP_ENTRY_MAX_STR + 1];
    if (pattern.len > MP_ENTRY_MAX_STR || group.len > MP_ENTRY_MAX_STR) {
        return;
    }
    memcpy(text, pattern.ptr, pattern.len);
    text[pattern.len] = '\0';
    if (group.len) {
        memcpy(name, group.ptr, group.len);
    }
    name[group.len] = '\0';
    mp_entry e;
    if (mp_entry_topic_group(&e, n->node_id, n->cluster, text, name) == MPREG_OK) {
        e.withdrawn = !added;
        mp_node_advertise(n, &e);
        mp_entry_free(&e);
    }
}

/* --- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------ */

/* A client's headers: "mp-" keys are the nodes' own, and a PUBLISH carries
 * at most MP_PUBSUB_MAX_MSG_HEADERS (room for a node's "mp-deliver" and for
 * DELIVER's own three). False, with the client told, when they break that. */
static bool mp_ps_client_headers_ok(mp_node *n, mp_conn *c, const mp_envelope *env,
                                    const char *what, uint32_t max) {
    if (env->header_count > max) {
        mp_node_send_errorf(n, c->id, &env->id, MPREG_E_TOO_LARGE, "%s: more than %u headers", what,
                            max);
        return false;
    }
    for (uint32_t i = 0; i < env->header_count; i++) {
        mp_str key = env->headers[i].key;
        if (mp_pubsub_node_header(key)) {
            mp_node_send_errorf(n, c->id, &env->id, MPREG_E_INVALID,
                                "%s: header %.*s: keys starting with %s are reserved", what,
                                (int)key.len, key.ptr, MP_PUBSUB_NODE_HEADER_PREFIX);
            return false;
        }
    }
    return true;
}

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

/* Subscriptions and their patterns, per connection and node-wide, within
 * the limits (§7.7): false, with the client told which limit, when this
 * one would go over. Patterns are what cost memory (a trie path, a catalog
 * entry each), so they are bounded as well as subscriptions. */
static bool mp_ps_within_limits(mp_node *n, mp_conn *c, const mp_envelope *env, uint32_t patterns) {
    const mp_node_limits *l = &n->limits;
    const char *what = NULL;
    uint64_t have = 0, limit = 0;
    if (c->sub_count >= l->subs_per_conn) {
        what = "subs_per_conn", have = c->sub_count, limit = l->subs_per_conn;
    } else if (n->sub_total >= l->subs_per_node) {
        what = "subs_per_node", have = n->sub_total, limit = l->subs_per_node;
    } else if ((uint64_t)c->pattern_count + patterns > l->patterns_per_conn) {
        what = "patterns_per_conn", have = c->pattern_count, limit = l->patterns_per_conn;
    } else if ((uint64_t)n->pattern_total + patterns > l->patterns_per_node) {
        what = "patterns_per_node", have = n->pattern_total, limit = l->patterns_per_node;
    } else if (mp_catalog_tombstones(n->catalog) >= l->tombstones) {
        what = "tombstones", have = mp_catalog_tombstones(n->catalog), limit = l->tombstones;
    }
    if (!what) {
        return true;
    }
    mp_node_refuse_limit(n, c, &env->id, "SUBSCRIBE", what, have, limit);
    return false;
}

/* Keeps the counts the limits read: a subscription added or about to go. */
static void mp_ps_count_sub(mp_node *n, mp_conn *c, uint64_t sub, bool added) {
    mp_pubsub_sub_stats st;
    if (mp_pubsub_sub_stats_get(n->pubsub, sub, &st) != MPREG_OK) {
        return;
    }
    if (added) {
        n->sub_total++;
        n->pattern_total += st.patterns;
        c->pattern_count += st.patterns;
    } else {
        n->sub_total--;
        n->pattern_total -= st.patterns;
        c->pattern_count -= st.patterns;
    }
}

void mp_ps_on_subscribe(mp_node *n, mp_conn *c, const mp_envelope *env) {
    if (!mp_ps_client_headers_ok(n, c, env, "SUBSCRIBE", MP_MAX_HEADERS)) {
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
    if (!mp_ps_within_limits(n, c, env, (uint32_t)p.pattern_count)) {
        mp_pubsub_subscribe_payload_free(&p);
        return;
    }
    mp_pubsub_sub_spec spec = mp_pubsub_spec_from_payload(&p, c->id);
    spec.owner_ud = c;
    uint64_t sub = 0;
    err = mp_conn_subs_reserve(c);
    err = err ? err : mp_pubsub_subscribe(n->pubsub, &spec, &sub);
    if (err) {
        mp_node_send_errorf(n, c->id, &env->id, err, "SUBSCRIBE: %s", mpreg_strerror(err));
        mp_pubsub_subscribe_payload_free(&p);
        return;
    }
    c->subs[c->sub_count++] = sub;
    mp_ps_count_sub(n, c, sub, true);
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
    mp_ps_count_sub(n, c, sub, false); /* before it goes: its pattern count */
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
    MP_ASSERT(n->sub_total >= c->sub_count && n->pattern_total >= c->pattern_count);
    n->sub_total -= c->sub_count;
    n->pattern_total -= c->pattern_count;
    c->pattern_count = 0;
    mp_pubsub_remove_owner(n->pubsub, c->id);
    c->sub_count = 0;
}

/* --- PUBLISH ----------------------------------------------------------------- */

/* The groups one node is given travel in its "mp-deliver" value, which must
 * fit a header: after "0:" (the plain part), each group costs its name and
 * at most four bytes more (up to three digits of length and a colon). */
static const mp_group_budget MP_PS_GROUP_BUDGET = {
    .bytes = MP_MAX_HEADER_VALUE - 2,
    .per_group = 4,
};

/* The one way a publish leaves for another node: through its connection,
 * which exists once clustering does, with the parts it delivers there (no
 * header when that is just the ungrouped subscriptions: what a node without
 * the header assumes). A publish nobody can take is not an error for the
 * publisher (nobody is owed it); it is counted and logged. */
static void mp_ps_forward(mp_node *n, const mp_publish_target *t, const mp_envelope *env) {
    mp_conn *peer = mp_conn_for_node(n, t->node);
    if (!peer) {
        n->counters.unreachable++;
        mp_node_log(n, MP_LOG_DEBUG, "publish to %.*s: no connection to node %s",
                    (int)env->topic.len, env->topic.ptr, t->node);
        return;
    }
    mp_envelope fwd = *env;
    char text[MP_MAX_HEADER_VALUE];
    if (t->group_count) {
        mp_pubsub_filter f = {
            .plain = t->plain, .groups = t->groups, .group_count = t->group_count};
        size_t len = 0;
        mpreg_err err = mp_pubsub_filter_encode(&f, text, sizeof text, &len);
        err = err ? err
                  : mp_envelope_add_header(&fwd, mp_str_c(MP_PUBSUB_DELIVER_HEADER),
                                           (mp_str){text, len});
        if (err) {
            /* Not with the engine's budget and the client's header limit. */
            mp_node_log(n, MP_LOG_WARN, "publish to %.*s: not sent to node %s: %s",
                        (int)env->topic.len, env->topic.ptr, t->node, mpreg_err_name(err));
            return;
        }
    }
    /* A peer link whose output is full gets no more publishes until it
     * drains: pub/sub sheds for a slow receiver, here a whole node, and
     * counts it (status: peer_shed). Answers on that link are not shed. */
    if (mp_node_send_droppable(n, peer->id, &fwd) == MPREG_E_BACKPRESSURE) {
        n->counters.peer_shed++;
        mp_node_log(n, MP_LOG_DEBUG, "publish to %.*s: link to node %s is full, not sent",
                    (int)env->topic.len, env->topic.ptr, t->node);
    }
}

static mp_pubsub_message mp_ps_message(const mp_envelope *env) {
    return (mp_pubsub_message){
        .id = env->id,
        .topic = env->topic,
        .payload = env->payload,
        .headers = env->headers,
        .header_count = env->header_count,
    };
}

/* The service refused env's message: the sender is told (why, when set,
 * is what is wrong with a peer's "mp-deliver"). Returns false, for the
 * callers below. */
static bool mp_ps_refused(mp_node *n, mp_conn *c, const mp_envelope *env, mpreg_err err,
                          const char *why) {
    if (why) {
        mp_node_send_errorf(n, c->id, &env->id, err, "PUBLISH: %s: %s", MP_PUBSUB_DELIVER_HEADER,
                            why);
        return false;
    }
    if (err == MPREG_E_TOPIC) {
        mp_topic_validate(env->topic.ptr, env->topic.len, &why);
    }
    mp_node_send_errorf(n, c->id, &env->id, err, "PUBLISH: %s", why ? why : mpreg_strerror(err));
    return false;
}

/* Publishes env to this node's subscribers (and its retention, when on),
 * every part of it (a node alone: the hot path). False when the publish
 * goes no further: the service refused it (the sender is told) or it is a
 * duplicate (it went on when first seen). */
static bool mp_ps_publish_here(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_pubsub_message msg = mp_ps_message(env);
    mp_pubsub_result res;
    n->ps_publisher = c->id;
    mpreg_err err = mp_pubsub_publish(n->pubsub, &msg, n->now_ms, &res);
    n->ps_publisher = 0;
    mp_ps_flush_shedding(n);
    if (err) {
        return mp_ps_refused(n, c, env, err, NULL);
    }
    n->counters.published++;
    return !res.duplicate;
}

/* The same for some parts of msg (env's message, maybe without some
 * headers): those filter f names, or, when text is set, those a peer's
 * "mp-deliver" value names. */
static bool mp_ps_publish_part(mp_node *n, mp_conn *c, const mp_envelope *env,
                               const mp_pubsub_message *msg, const mp_pubsub_filter *f,
                               mp_str text) {
    mp_pubsub_result res;
    const char *why = NULL;
    n->ps_publisher = c->id;
    mpreg_err err = text.ptr
                        ? mp_pubsub_publish_encoded(n->pubsub, msg, n->now_ms, text, &res, &why)
                        : mp_pubsub_publish_filtered(n->pubsub, msg, n->now_ms, f, &res);
    n->ps_publisher = 0;
    mp_ps_flush_shedding(n);
    if (err) {
        return mp_ps_refused(n, c, env, err, why);
    }
    n->counters.published++;
    return !res.duplicate;
}

/* Leaves the nodes' own headers out of msg, so that they never reach a
 * subscriber, and returns the "mp-deliver" value (MP_STR_NULL when absent;
 * present but empty is "", which the decoder refuses). Without a copy when
 * they come last, as nodes send them; else the others are copied to room. */
static mp_str mp_ps_strip_node_headers(const mp_envelope *env, mp_header room[MP_MAX_HEADERS],
                                       mp_pubsub_message *msg) {
    mp_str text = MP_STR_NULL;
    uint32_t first = env->header_count; /* the first node header */
    bool others_after = false;          /* a client header after it */
    for (uint32_t i = 0; i < env->header_count; i++) {
        const mp_header *h = &env->headers[i];
        if (!mp_pubsub_node_header(h->key)) {
            others_after |= first < i;
            continue;
        }
        first = first < i ? first : i;
        if (mp_str_eq_c(h->key, MP_PUBSUB_DELIVER_HEADER)) {
            text = h->value.ptr ? h->value : mp_str_c("");
        }
    }
    msg->header_count = first;
    if (others_after) {
        uint32_t kept = 0;
        for (uint32_t i = 0; i < env->header_count; i++) {
            if (!mp_pubsub_node_header(env->headers[i].key)) {
                room[kept++] = env->headers[i];
            }
        }
        msg->headers = room;
        msg->header_count = kept;
    }
    return text;
}

/* The paths of a PUBLISH from a peer and of one planned across nodes are
 * kept out of line: their frames (a copy of the headers, an envelope and a
 * header value per forward) would otherwise be set up for every publish,
 * the publishes of a node alone included. */
#define MP_PS_OUT_OF_LINE __attribute__((noinline))

/* A PUBLISH from another node, which sent it here because this node has a
 * part of it: the parts its "mp-deliver" names, or without one (a node
 * that predates queue groups across nodes) the ungrouped subscriptions. */
static MP_PS_OUT_OF_LINE void mp_ps_on_peer_publish(mp_node *n, mp_conn *c,
                                                    const mp_envelope *env) {
    static const mp_pubsub_filter plain_only = {.plain = true};
    mp_pubsub_message msg = mp_ps_message(env);
    mp_header room[MP_MAX_HEADERS];
    mp_str text = mp_ps_strip_node_headers(env, room, &msg);
    mp_ps_publish_part(n, c, env, &msg, text.ptr ? NULL : &plain_only, text);
}

/* Only here: no other node has interest in any topic. */
static void mp_ps_publish_alone(mp_node *n, mp_conn *c, const mp_envelope *env) {
    /* The catalog's topic entries are all this node's own, mirrors of its
     * service's patterns: the service's matcher alone decides, and the
     * catalog's trie is not walked for the same answer. (The service checks
     * the topic; one that matches a subscription is valid.) */
    if (n->pubsub_retains || mp_pubsub_matches(n->pubsub, env->topic)) {
        mp_ps_publish_here(n, c, env);
        return;
    }
    const char *why = NULL;
    if (mp_topic_validate(env->topic.ptr, env->topic.len, &why)) {
        mp_node_send_errorf(n, c->id, &env->id, MPREG_E_TOPIC, "PUBLISH: %s",
                            why ? why : "no topic");
        return;
    }
    n->counters.published++; /* nobody's: dropped, as routing would */
}

/* A client's PUBLISH when other nodes have interest: where each part of it
 * goes is the routing engine's plan. */
static MP_PS_OUT_OF_LINE void mp_ps_publish_planned(mp_node *n, mp_conn *c,
                                                    const mp_envelope *env) {
    mp_publish_plan plan;
    const char *why = NULL;
    mpreg_err err = mp_engine_plan_publish(n->engine, env->topic.ptr, env->topic.len, &env->id,
                                           MP_PS_GROUP_BUDGET, &plan, &why);
    if (err) {
        mp_node_send_errorf(n, c->id, &env->id, err, "PUBLISH: %s", why ? why : "no route");
        return;
    }
    if (plan.unplaced) {
        mp_node_log(n, MP_LOG_WARN,
                    "publish to %.*s: %u queue groups left out (their names overflow a header)",
                    (int)env->topic.len, env->topic.ptr, plan.unplaced);
    }
    /* With retention on, every publish is kept here, interested or not:
     * replay is for subscribers that were not there yet. The ungrouped
     * subscriptions here get it whatever the plan says (the catalog's
     * entries of this node mirror them); the groups only when placed here. */
    mp_pubsub_filter here = {
        .plain = true,
        .groups = plan.local.groups,
        .group_count = plan.local.group_count,
    };
    bool local = plan.local.plain || plan.local.group_count || n->pubsub_retains;
    mp_pubsub_message msg = mp_ps_message(env);
    if (local && !mp_ps_publish_part(n, c, env, &msg, &here, MP_STR_NULL)) {
        return; /* refused, or seen before: it was forwarded then */
    }
    if (!local) {
        n->counters.published++;
    }
    for (uint32_t i = 0; i < plan.target_count; i++) {
        mp_ps_forward(n, &plan.targets[i], env);
    }
}

void mp_ps_on_publish(mp_node *n, mp_conn *c, const mp_envelope *env) {
    mp_pubsub_prefetch(n->pubsub, &env->id); /* overlaps the miss with what comes first */
    if (c->role == MP_ROLE_PEER) {
        /* The publishing node sends a message once to each node with a part
         * of it itself, so it stops here: passing it on again would deliver
         * it twice elsewhere, or loop. Locally it still goes through the
         * dedupe, which drops a copy that came twice. */
        mp_ps_on_peer_publish(n, c, env);
        return;
    }
    if (env->header_count &&
        !mp_ps_client_headers_ok(n, c, env, "PUBLISH", MP_PUBSUB_MAX_MSG_HEADERS)) {
        return;
    }
    if (mp_catalog_remote_topic_nodes(n->catalog) == 0) {
        mp_ps_publish_alone(n, c, env);
        return;
    }
    mp_ps_publish_planned(n, c, env);
}
