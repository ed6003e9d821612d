/* sim_net.c - the virtual network: connections, frames, faults.
 *
 * A connection is two sides (mp_sim_ep), each with its own id as its owner
 * knows it: the dialer's side exists from the dial, the acceptor's from the
 * moment the dial reaches its target one latency later. What an owner
 * appends to its side's output is cut into frames when committed; each
 * frame is scheduled to arrive after latency + jitter, never before the
 * frame sent ahead of it on the same side (a TCP stream in order), except
 * that GOSSIP frames may be lost, duplicated or taken out of order (SWIM
 * rides datagram-like traffic and must cope; everything else would break
 * on a stream that did that, and TCP does not). A reordered GOSSIP frame is
 * held back, so that frames sent after it may overtake it; it never
 * overtakes the frames sent before it.
 *
 * Partitions: a frame that would cross one (checked when it is sent and when
 * it arrives) is dropped and marks its connection broken; every connection
 * across a partition gets a break event break_timeout_ms later, which ends
 * it on both sides with MPREG_E_UNREACHABLE unless the partition healed
 * before it lost anything (a TCP connection that saw no traffic survives a
 * short outage; one that lost bytes does not).
 *
 * Backpressure is modelled by bytes in flight: sent by a side and not yet
 * read by the other side's owner (including frames held while the reader
 * paused). Buffers are otherwise unbounded. */
#include "sim/sim_internal.h"

#include "core/mpread.h"
#include "core/vec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Output buffer capacity a side keeps between commits. */
#define MP_SIM_KEEP_OUT 4096u

mp_sim_ep *mp_sim_ep_get(const mp_sim *s, uint64_t id) {
    return id > 0 && id < s->next_ep ? s->eps[id] : NULL;
}

bool mp_sim_hosts_reachable(const mp_sim *s, uint32_t a, uint32_t b) {
    if (a >= s->node_count || b >= s->node_count) {
        return true; /* MP_SIM_NONE: a client outside any node's position */
    }
    return s->nodes[a].group == s->nodes[b].group;
}

static bool mp_ep_reachable(const mp_sim *s, const mp_sim_ep *ep) {
    return mp_sim_hosts_reachable(s, ep->host, ep->peer_host);
}

/* --- sides ------------------------------------------------------------------------ */

static mp_sim_ep *mp_sim_ep_new(mp_sim *s, mp_sim_owner kind, uint32_t owner, uint32_t host) {
    if (s->next_ep >= s->ep_cap) {
        size_t old = s->ep_cap;
        if (MP_VEC_GROW(s->eps, s->ep_cap, (size_t)s->next_ep + 1, 1024) != MPREG_OK) {
            return NULL;
        }
        memset(s->eps + old, 0, (s->ep_cap - old) * sizeof *s->eps); /* ids not yet given */
    }
    mp_sim_ep *ep = calloc(1, sizeof *ep);
    if (!ep) {
        return NULL;
    }
    ep->id = s->next_ep++;
    ep->owner_kind = kind;
    ep->owner = owner;
    ep->host = host;
    ep->peer_host = MP_SIM_NONE;
    ep->reading = true;
    ep->last_arrival = s->now;
    mp_buf_init(&ep->out);
    /* The cutter only splits what our own owners wrote; the receiving node
     * applies its own limit. */
    mp_frame_decoder_init(&ep->cutter, MP_FRAME_LIMIT_MAX);
    s->eps[ep->id] = ep;
    mp_sim_list_push(&s->all_eps, &ep->all_link);
    mp_sim_list_init(&ep->owner_link);
    if (kind == MP_SIM_OWNER_NODE) {
        mp_sim_list_push(&s->nodes[owner].eps, &ep->owner_link);
        s->nodes[owner].ep_count++;
    }
    return ep;
}

void mp_sim_ep_remove(mp_sim *s, mp_sim_ep *ep) {
    s->eps[ep->id] = NULL;
    mp_sim_list_remove(&ep->all_link);
    if (ep->owner_kind == MP_SIM_OWNER_NODE) {
        mp_sim_list_remove(&ep->owner_link);
        s->nodes[ep->owner].ep_count--;
    }
    while (ep->inbox) {
        mp_sim_inframe *f = ep->inbox;
        ep->inbox = f->next;
        free(f->data);
        free(f);
    }
    mp_buf_free(&ep->out);
    mp_frame_decoder_free(&ep->cutter);
    free(ep);
}

/* Tells a side's owner its connection is gone, after the side was removed. */
static void mp_sim_tell_closed(mp_sim *s, mp_sim_owner kind, uint32_t owner, uint64_t id,
                               mpreg_err reason) {
    mp_sim_trace t = {.kind = MP_SIM_TRACE_CLOSE,
                      .time = s->now,
                      .conn = id,
                      .from = MP_SIM_NONE,
                      .to = kind == MP_SIM_OWNER_NODE ? owner : owner | MP_SIM_CLIENT_BIT,
                      .reason = reason};
    mp_sim_emit(s, &t);
    if (kind == MP_SIM_OWNER_NODE) {
        mp_sim_node_closed(s, owner, id, reason);
    } else {
        mp_sim_client_on_close(s, owner, reason);
    }
}

/* Removes the side and tells its owner. */
static void mp_sim_ep_end(mp_sim *s, mp_sim_ep *ep, mpreg_err reason) {
    mp_sim_owner kind = ep->owner_kind;
    uint32_t owner = ep->owner;
    uint64_t id = ep->id;
    mp_sim_ep_remove(s, ep);
    mp_sim_tell_closed(s, kind, owner, id, reason);
}

/* --- latency ---------------------------------------------------------------------- */

static uint64_t mp_sim_latency(mp_sim *s) {
    const mp_sim_net_config *n = &s->cfg.net;
    uint64_t lat = n->latency_ms;
    if (n->jitter_ms == 0) {
        return lat;
    }
    mp_rng *r = &s->net_rng.rng;
    if (n->jitter == MP_SIM_JITTER_EXP) {
        double x = -log(1.0 - mp_rng_double(r)) * n->jitter_ms;
        double cap = 20.0 * n->jitter_ms;
        lat += (uint64_t)((x < cap ? x : cap) + 0.5);
    } else {
        lat += mp_rng_below(r, (uint64_t)n->jitter_ms + 1);
    }
    return lat;
}

static bool mp_sim_chance(mp_sim *s, double p) {
    return p > 0.0 && mp_rng_double(&s->net_rng.rng) < p;
}

/* --- dialing ---------------------------------------------------------------------- */

uint64_t mp_sim_net_dial(mp_sim *s, mp_sim_owner kind, uint32_t owner, uint32_t host,
                         const char *from_ip, uint32_t target) {
    mp_sim_ep *ep = mp_sim_ep_new(s, kind, owner, host);
    if (!ep) {
        return 0;
    }
    ep->state = MP_SIM_EP_CONNECTING;
    ep->dialed_ms = s->now;
    /* The address the acceptor sees: our host with an ephemeral port. */
    snprintf(ep->addr, sizeof ep->addr, "%s:%u", from_ip, (unsigned)(32768 + ep->id % 28000));
    s->stats.dials++;
    mp_sim_event ev = {
        .time = s->now + mp_sim_latency(s), .type = MP_SIM_EV_CONNECT, .a = ep->id, .node = target};
    mp_sim_schedule(s, &ev);
    return ep->id;
}

static void mp_sim_run_connect(mp_sim *s, const mp_sim_event *ev) {
    mp_sim_ep *d = mp_sim_ep_get(s, ev->a);
    if (!d || d->state != MP_SIM_EP_CONNECTING) {
        return; /* the dialer gave up first */
    }
    uint32_t t = ev->node;
    bool up = t < s->node_count && s->nodes[t].node;
    if (!up || !mp_sim_hosts_reachable(s, d->host, t)) {
        mp_sim_event fail = {.time = d->dialed_ms + s->cfg.net.connect_timeout_ms,
                             .type = MP_SIM_EV_DIAL_FAIL,
                             .a = d->id};
        mp_sim_schedule(s, &fail);
        return;
    }
    mp_sim_ep *acc = mp_sim_ep_new(s, MP_SIM_OWNER_NODE, t, t);
    if (!acc) {
        mp_sim_ep_end(s, d, MPREG_E_NOMEM);
        return;
    }
    acc->state = MP_SIM_EP_OPEN;
    acc->peer = d->id;
    acc->peer_host = d->host;
    snprintf(acc->addr, sizeof acc->addr, "%s", s->nodes[t].addr);
    d->state = MP_SIM_EP_OPEN;
    d->peer = acc->id;
    d->peer_host = t;
    s->stats.accepted++;
    uint64_t did = d->id, aid = acc->id;
    char peer_addr[sizeof d->addr];
    memcpy(peer_addr, d->addr, sizeof peer_addr);
    mp_sim_trace tr = {
        .kind = MP_SIM_TRACE_OPEN, .time = s->now, .conn = aid, .from = mp_sim_party(d), .to = t};
    mp_sim_emit(s, &tr);
    mp_sim_node_opened(s, t, aid, peer_addr);
    /* What the dialer wrote while connecting leaves now. */
    d = mp_sim_ep_get(s, did);
    if (d) {
        mp_sim_net_commit(s, d);
    }
}

static void mp_sim_run_dial_fail(mp_sim *s, const mp_sim_event *ev) {
    mp_sim_ep *d = mp_sim_ep_get(s, ev->a);
    if (!d || d->state != MP_SIM_EP_CONNECTING) {
        return;
    }
    s->stats.dial_failures++;
    mp_sim_trace t = {.kind = MP_SIM_TRACE_DIAL_FAIL,
                      .time = s->now,
                      .conn = d->id,
                      .from = MP_SIM_NONE,
                      .to = mp_sim_party(d),
                      .reason = MPREG_E_UNREACHABLE};
    mp_sim_emit(s, &t);
    mp_sim_ep_end(s, d, MPREG_E_UNREACHABLE);
}

/* --- sending ------------------------------------------------------------------------ */

/* The envelope kind (field 2 of the top-level map) without decoding the
 * rest; MP_KIND_NONE when the bytes do not get that far. */
static mp_kind mp_sim_peek_kind(const uint8_t *frame, size_t len) {
    mp_rd c = mp_rd_init(frame, len);
    uint32_t count;
    if (mp_rd_map(&c, &count)) {
        return MP_KIND_NONE;
    }
    for (uint32_t i = 0; i < count; i++) {
        mp_rd_item key;
        if (mp_rd_next(&c, &key)) {
            return MP_KIND_NONE;
        }
        if (key.type == MP_RD_UINT && key.n == MP_F_KIND) {
            uint64_t v;
            if (mp_rd_uint(&c, &v) || v >= MP_SIM_KINDS) {
                return MP_KIND_NONE;
            }
            return (mp_kind)v;
        }
        if (mp_rd_skip(&c, MP_RD_ANY_DEPTH)) {
            return MP_KIND_NONE;
        }
    }
    return MP_KIND_NONE;
}

static void mp_sim_trace_drop(mp_sim *s, const mp_sim_ep *from, uint32_t to, mp_kind kind,
                              const uint8_t *frame, size_t len) {
    mp_sim_trace t = {.kind = MP_SIM_TRACE_DROP,
                      .time = s->now,
                      .conn = from ? from->peer : 0,
                      .from = from ? mp_sim_party(from) : MP_SIM_NONE,
                      .to = to,
                      .frame_kind = kind,
                      .frame = frame,
                      .len = len};
    mp_sim_emit(s, &t);
}

static void mp_sim_send_copy(mp_sim *s, mp_sim_ep *ep, uint64_t at, mp_kind kind,
                             const uint8_t *frame, size_t len) {
    uint8_t *copy = malloc(len);
    if (!copy) {
        return;
    }
    memcpy(copy, frame, len);
    mp_sim_event ev = {.time = at,
                       .type = MP_SIM_EV_FRAME,
                       .a = ep->peer,
                       .b = ep->id,
                       .ptr = copy,
                       .len = (uint32_t)len,
                       .aux = (uint16_t)kind};
    if (mp_sim_schedule(s, &ev) == MPREG_OK) {
        ep->inflight += len;
    }
}

typedef struct mp_sim_cut {
    mp_sim *sim;
    mp_sim_ep *ep;
} mp_sim_cut;

/* One frame leaves ep: faults decide whether, when and how often it
 * arrives. */
static int mp_sim_transmit(void *ud, const uint8_t *frame, size_t len) {
    mp_sim_cut *cut = ud;
    mp_sim *s = cut->sim;
    mp_sim_ep *ep = cut->ep;
    const mp_sim_net_config *n = &s->cfg.net;
    mp_kind kind = mp_sim_peek_kind(frame, len);
    if (ep->owner_kind == MP_SIM_OWNER_NODE) {
        mp_sim_kind_stats *k = &s->nodes[ep->owner].kinds[kind];
        k->msgs_out++;
        k->bytes_out += len + MP_FRAME_HEADER;
    }
    s->stats.frames_sent++;
    s->stats.bytes_sent += len + MP_FRAME_HEADER;
    mp_sim_ep *peer = mp_sim_ep_get(s, ep->peer);
    uint32_t to = peer ? mp_sim_party(peer) : MP_SIM_NONE;
    if (!peer) {
        s->stats.undeliverable++; /* its close is on its way to us */
        mp_sim_trace_drop(s, ep, to, kind, frame, len);
        return 0;
    }
    if (!mp_ep_reachable(s, ep)) {
        s->stats.cut_off++;
        ep->lost = peer->lost = true;
        mp_sim_trace_drop(s, ep, to, kind, frame, len);
        return 0;
    }
    bool gossip = kind == MP_KIND_GOSSIP;
    if (gossip && mp_sim_chance(s, n->loss)) {
        s->stats.lost++;
        mp_sim_trace_drop(s, ep, to, kind, frame, len);
        return 0;
    }
    uint64_t at = s->now + mp_sim_latency(s);
    if (at < ep->last_arrival) {
        at = ep->last_arrival;
    }
    if (gossip && mp_sim_chance(s, n->reorder)) {
        /* Held back out of the stream's order: frames sent after it may
         * overtake it, but it never overtakes one sent before it (the
         * HELLO that opened the link, say). */
        at += mp_rng_below(&s->net_rng.rng, (uint64_t)n->reorder_ms + 1);
        s->stats.reordered++;
    } else {
        ep->last_arrival = at;
    }
    mp_sim_send_copy(s, ep, at, kind, frame, len);
    if (gossip && mp_sim_chance(s, n->dup)) {
        uint64_t again = s->now + mp_sim_latency(s);
        s->stats.duplicated++;
        mp_sim_send_copy(s, ep, again > at ? again : at, kind, frame, len);
    }
    return 0;
}

void mp_sim_net_commit(mp_sim *s, mp_sim_ep *ep) {
    if (ep->state != MP_SIM_EP_OPEN || ep->out.len == 0) {
        return; /* a dialer's output waits for the connection */
    }
    mp_sim_cut cut = {s, ep};
    mpreg_err err =
        mp_frame_decoder_feed(&ep->cutter, ep->out.data, ep->out.len, mp_sim_transmit, &cut);
    /* A thousand nodes keep tens of thousands of connections: one large
     * frame (a push-pull of the whole catalog) must not pin its size in
     * every one of them for the rest of the run. */
    if (ep->out.cap > MP_SIM_KEEP_OUT) {
        mp_buf_free(&ep->out);
    } else {
        mp_buf_clear(&ep->out);
    }
    if (err) {
        /* Only our own owners write here, through the frame writer: a bad
         * frame is a bug worth stopping the run for. */
        fprintf(stderr, "mpreg-sim: connection %llu wrote a broken frame (%s)\n",
                (unsigned long long)ep->id, mpreg_err_name(err));
        abort();
    }
}

/* --- receiving ----------------------------------------------------------------------- */

/* The sender's bytes are read: below the low-water mark again, a side that
 * was told it is over high water hears it is writable. */
static void mp_sim_release(mp_sim *s, uint64_t from, size_t len) {
    mp_sim_ep *f = mp_sim_ep_get(s, from);
    if (!f) {
        return;
    }
    f->inflight = f->inflight > len ? f->inflight - len : 0;
    if (f->over && f->inflight <= s->cfg.net.high_water / 2) {
        f->over = false;
        if (f->owner_kind == MP_SIM_OWNER_NODE) {
            mp_sim_event ev = {.time = s->now,
                               .type = MP_SIM_EV_WRITABLE,
                               .node = f->owner,
                               .a = f->id,
                               .b = s->nodes[f->owner].gen};
            mp_sim_schedule(s, &ev);
        }
    }
}

static void mp_sim_deliver(mp_sim *s, mp_sim_ep *ep, uint64_t from, mp_kind kind,
                           const uint8_t *data, size_t len) {
    mp_sim_release(s, from, len);
    s->stats.frames_delivered++;
    mp_sim_hash_bytes(s, data, len);
    mp_sim_ep *f = mp_sim_ep_get(s, from);
    mp_sim_trace t = {.kind = MP_SIM_TRACE_FRAME,
                      .time = s->now,
                      .conn = ep->id,
                      .from = f ? mp_sim_party(f) : MP_SIM_NONE,
                      .to = mp_sim_party(ep),
                      .frame_kind = kind,
                      .frame = data,
                      .len = len};
    mp_sim_emit(s, &t);
    if (ep->owner_kind == MP_SIM_OWNER_NODE) {
        mp_sim_kind_stats *k = &s->nodes[ep->owner].kinds[kind];
        k->msgs_in++;
        k->bytes_in += len + MP_FRAME_HEADER;
        mp_sim_node_frame(s, ep->owner, ep->id, data, len);
    } else {
        mp_sim_client_on_frame(s, ep->owner, data, len);
    }
}

static void mp_sim_run_frame(mp_sim *s, mp_sim_event *ev) {
    mp_sim_ep *ep = mp_sim_ep_get(s, ev->a);
    mp_kind kind = (mp_kind)ev->aux;
    if (!ep) {
        s->stats.undeliverable++;
        mp_sim_release(s, ev->b, ev->len);
        mp_sim_trace_drop(s, mp_sim_ep_get(s, ev->b), MP_SIM_NONE, kind, ev->ptr, ev->len);
        return;
    }
    if (!mp_ep_reachable(s, ep)) {
        /* The partition began while the frame was on its way. */
        mp_sim_ep *from = mp_sim_ep_get(s, ev->b);
        s->stats.cut_off++;
        ep->lost = true;
        if (from) {
            from->lost = true;
        }
        mp_sim_release(s, ev->b, ev->len);
        mp_sim_trace_drop(s, from, mp_sim_party(ep), kind, ev->ptr, ev->len);
        return;
    }
    if (!ep->reading || ep->inbox) {
        /* Held, in order, until the owner reads again. */
        mp_sim_inframe *f = malloc(sizeof *f);
        if (!f) {
            return;
        }
        *f = (mp_sim_inframe){NULL, ev->b, ev->ptr, ev->len, kind};
        ev->ptr = NULL;
        if (ep->inbox_tail) {
            ep->inbox_tail->next = f;
        } else {
            ep->inbox = f;
        }
        ep->inbox_tail = f;
        return;
    }
    mp_sim_deliver(s, ep, ev->b, kind, ev->ptr, ev->len);
}

void mp_sim_net_set_reading(mp_sim *s, mp_sim_ep *ep, bool reading) {
    ep->reading = reading;
    if (reading && ep->inbox && !ep->resume_pending) {
        ep->resume_pending = true;
        mp_sim_event ev = {.time = s->now, .type = MP_SIM_EV_RESUME, .a = ep->id};
        mp_sim_schedule(s, &ev);
    }
}

static void mp_sim_run_resume(mp_sim *s, const mp_sim_event *ev) {
    uint64_t id = ev->a;
    mp_sim_ep *ep = mp_sim_ep_get(s, id);
    if (ep) {
        ep->resume_pending = false;
    }
    while ((ep = mp_sim_ep_get(s, id)) && ep->reading && ep->inbox) {
        mp_sim_inframe *f = ep->inbox;
        ep->inbox = f->next;
        if (!ep->inbox) {
            ep->inbox_tail = NULL;
        }
        mp_sim_deliver(s, ep, f->from, f->kind, f->data, f->len);
        free(f->data);
        free(f);
    }
}

bool mp_sim_net_over(mp_sim *s, mp_sim_ep *ep, uint64_t mark) {
    (void)s;
    if (ep->inflight > mark) {
        ep->over = true;
        return true;
    }
    return false;
}

/* --- closing ------------------------------------------------------------------------- */

static void mp_sim_send_fin(mp_sim *s, mp_sim_ep *ep, bool after_frames, mpreg_err reason) {
    mp_sim_ep *peer = mp_sim_ep_get(s, ep->peer);
    if (ep->state != MP_SIM_EP_OPEN || !peer) {
        return;
    }
    uint64_t at = s->now + mp_sim_latency(s);
    if (after_frames && ep->last_arrival > at) {
        at = ep->last_arrival;
    }
    mp_sim_event ev = {.time = at, .type = MP_SIM_EV_PEER_CLOSE, .a = peer->id, .aux = reason};
    mp_sim_schedule(s, &ev);
}

void mp_sim_net_close(mp_sim *s, mp_sim_ep *ep, bool flush) {
    if (flush) {
        mp_sim_net_commit(s, ep);
    }
    /* Without a flush the close overtakes what is still on its way, and
     * frames that arrive after it are dropped (a reset). */
    mp_sim_send_fin(s, ep, flush, MPREG_E_CLOSED);
    mp_sim_ep_remove(s, ep);
}

static void mp_sim_run_peer_close(mp_sim *s, const mp_sim_event *ev) {
    mp_sim_ep *ep = mp_sim_ep_get(s, ev->a);
    if (!ep) {
        return;
    }
    if (!mp_ep_reachable(s, ep)) {
        return; /* the FIN is lost in the partition; the break ends it */
    }
    mp_sim_ep_end(s, ep, (mpreg_err)ev->aux);
}

void mp_sim_net_crash(mp_sim *s, uint32_t i) {
    mp_sim_slot *sn = &s->nodes[i];
    while (!mp_sim_list_empty(&sn->eps)) {
        mp_sim_ep *ep = MP_SIM_CONTAINER(sn->eps.next, mp_sim_ep, owner_link);
        /* The kernel of the crashed process still sends what it had, then
         * resets: peers hear of it after those frames. */
        mp_sim_send_fin(s, ep, true, MPREG_E_CLOSED);
        mp_sim_ep_remove(s, ep);
    }
}

/* --- partitions -------------------------------------------------------------------------- */

void mp_sim_net_repartition(mp_sim *s) {
    for (mp_sim_link *l = s->all_eps.next; l != &s->all_eps; l = l->next) {
        mp_sim_ep *ep = MP_SIM_CONTAINER(l, mp_sim_ep, all_link);
        if (ep->state != MP_SIM_EP_OPEN || ep->break_pending || mp_ep_reachable(s, ep)) {
            continue;
        }
        mp_sim_ep *peer = mp_sim_ep_get(s, ep->peer);
        ep->break_pending = true;
        if (peer) {
            peer->break_pending = true;
        }
        mp_sim_event ev = {
            .time = s->now + s->cfg.net.break_timeout_ms, .type = MP_SIM_EV_BREAK, .a = ep->id};
        mp_sim_schedule(s, &ev);
    }
}

static void mp_sim_run_break(mp_sim *s, const mp_sim_event *ev) {
    mp_sim_ep *ep = mp_sim_ep_get(s, ev->a);
    if (!ep) {
        return;
    }
    mp_sim_ep *peer = mp_sim_ep_get(s, ep->peer);
    if (mp_ep_reachable(s, ep) && !ep->lost && peer && !peer->lost) {
        ep->break_pending = peer->break_pending = false; /* healed in time */
        return;
    }
    s->stats.breaks++;
    /* Both sides time out together; remove both before telling either. */
    mp_sim_owner kinds[2] = {ep->owner_kind, peer ? peer->owner_kind : MP_SIM_OWNER_NODE};
    uint32_t owners[2] = {ep->owner, peer ? peer->owner : 0};
    uint64_t ids[2] = {ep->id, peer ? peer->id : 0};
    mp_sim_ep_remove(s, ep);
    if (peer) {
        mp_sim_ep_remove(s, peer);
    }
    for (int k = 0; k < 2; k++) {
        if (ids[k]) {
            mp_sim_tell_closed(s, kinds[k], owners[k], ids[k], MPREG_E_UNREACHABLE);
        }
    }
}

/* --- dispatch and teardown ------------------------------------------------------------------ */

void mp_sim_net_run(mp_sim *s, mp_sim_event *ev) {
    switch ((mp_sim_ev_type)ev->type) {
    case MP_SIM_EV_CONNECT:
        mp_sim_run_connect(s, ev);
        break;
    case MP_SIM_EV_DIAL_FAIL:
        mp_sim_run_dial_fail(s, ev);
        break;
    case MP_SIM_EV_FRAME:
        mp_sim_run_frame(s, ev);
        break;
    case MP_SIM_EV_PEER_CLOSE:
        mp_sim_run_peer_close(s, ev);
        break;
    case MP_SIM_EV_BREAK:
        mp_sim_run_break(s, ev);
        break;
    case MP_SIM_EV_RESUME:
        mp_sim_run_resume(s, ev);
        break;
    default:
        break;
    }
}

void mp_sim_net_free(mp_sim *s) {
    while (!mp_sim_list_empty(&s->all_eps)) {
        mp_sim_ep_remove(s, MP_SIM_CONTAINER(s->all_eps.next, mp_sim_ep, all_link));
    }
}
