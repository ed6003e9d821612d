/* node_links.c - peer links: the connections between nodes, whatever
 * travels on them (SWIM today, federation's bridges next).
 *
 * A link is an ordinary connection whose role is peer, named by the node at
 * the other end (c->peer_id). This module owns what makes a set of links:
 *   - one link per node that messages for it take (n->links.by_node; a
 *     second open link to the same node, when both dialed each other at
 *     once, takes over when the first closes);
 *   - the bound: at most links.max are kept; making room closes the least
 *     recently used idle one (a link carrying calls is never closed for
 *     room: the node goes over the bound rather than fail them), so a large
 *     cluster never needs a full mesh;
 *   - dialing on demand, with the HELLO left to the caller (what a link
 *     says about its node is the cluster's business).
 * Least recently used: every frame a link carries moves it to the back of
 * links.lru (mp_links_touch), so the front is the one to close first. */
#include "node/node_internal.h"

#include "core/map.h"

#include <stdio.h>
#include <string.h>

void mp_links_init(mp_links *l, uint32_t max) {
    mp_map_init(&l->by_node);
    mp_list_init(&l->lru);
    l->count = 0;
    l->max = max;
}

void mp_links_free(mp_links *l) {
    mp_map_free(&l->by_node, NULL);
}

static bool mp_link_idle(const mp_conn *c) {
    return c->inflight == 0 && mp_list_empty(&c->served) && mp_list_empty(&c->requests);
}

void mp_links_touch(mp_node *n, mp_conn *c) {
    if (c->role == MP_ROLE_PEER && c->state != MP_CONN_CLOSING) {
        mp_list_remove(&c->peer_link);
        mp_list_push(&n->links.lru, &c->peer_link);
    }
}

mp_conn *mp_links_find(mp_node *n, const char *node) {
    mp_conn *c = mp_map_get(&n->links.by_node, node, strlen(node));
    if (c && c->state == MP_CONN_CLOSING) {
        mp_map_remove(&n->links.by_node, node, strlen(node));
        c = NULL;
    }
    return c;
}

void mp_links_bind(mp_node *n, mp_conn *c) {
    MP_ASSERT(c->peer_id != NULL);
    if (!mp_map_get(&n->links.by_node, c->peer_id, strlen(c->peer_id))) {
        mp_map_put(&n->links.by_node, c->peer_id, strlen(c->peer_id), c, NULL);
    }
}

void mp_links_forget(mp_node *n, const char *node) {
    mp_map_remove(&n->links.by_node, node, strlen(node));
}

void mp_links_add(mp_node *n, mp_conn *c) {
    c->role = MP_ROLE_PEER;
    mp_list_push(&n->links.lru, &c->peer_link);
    n->links.count++;
}

void mp_links_make_room(mp_node *n, const mp_conn *keep) {
    while (n->links.count >= n->links.max) {
        mp_conn *lru = NULL;
        for (mp_link *l = n->links.lru.next; l != &n->links.lru && !lru; l = l->next) {
            mp_conn *c = MP_CONTAINER(l, mp_conn, peer_link);
            if (c != keep && mp_link_idle(c)) {
                lru = c;
            }
        }
        if (!lru) {
            return; /* every link is busy: go over the bound rather than fail calls */
        }
        mp_node_log(n, MP_LOG_DEBUG, "peer link to %s closed to make room",
                    lru->peer_id ? lru->peer_id : "?");
        if (lru->peer_id &&
            mp_map_get(&n->links.by_node, lru->peer_id, strlen(lru->peer_id)) == lru) {
            mp_map_remove(&n->links.by_node, lru->peer_id, strlen(lru->peer_id));
        }
        mp_envelope bye;
        mp_envelope_init(&bye, MP_KIND_GOODBYE);
        mp_node_send(n, lru->id, &bye);
        mp_node_close_conn(n, lru, MPREG_E_CLOSED);
        MP_ASSERT(n->links.count > 0);
        n->links.count--; /* counted out now; its close will not count it again */
        mp_list_remove(&lru->peer_link);
        lru->role = MP_ROLE_NONE;
    }
}

mp_conn *mp_links_dial(mp_node *n, const char *id, const char *addr,
                       mpreg_err (*hello)(mp_node *n, mp_conn *c)) {
    if (!n->io.dial || !addr || !*addr || n->stopping) {
        return NULL;
    }
    mp_links_make_room(n, NULL);
    uint64_t conn = n->io.dial(n->io.ud, addr);
    if (conn == 0) {
        char key[2 * MP_SWIM_MAX_ID + 16];
        snprintf(key, sizeof key, "reach:%s", addr);
        mp_node_log_every(n, MP_LOG_WARN, key, "cannot dial %s (%s)", addr, id ? id : "seed");
        return NULL;
    }
    mp_conn *c = mp_conn_create(n, conn, addr);
    if (!c) {
        return NULL;
    }
    c->outbound = true;
    c->state = MP_CONN_OPEN; /* its handshake timer waits for the WELCOME */
    mp_links_add(n, c);
    if (id && (!(c->peer_id = mp_strdup(id)) ||
               mp_map_put(&n->links.by_node, c->peer_id, strlen(c->peer_id), c, NULL))) {
        mp_node_close_conn(n, c, MPREG_E_NOMEM);
        return NULL;
    }
    if (hello(n, c)) {
        mp_node_close_conn(n, c, MPREG_E_NOMEM);
        return NULL;
    }
    mp_node_log(n, MP_LOG_DEBUG, "dialing %s (%s) on conn %llu", addr, id ? id : "seed",
                (unsigned long long)conn);
    return c;
}

void mp_links_closed(mp_node *n, mp_conn *c) {
    MP_ASSERT(c->role == MP_ROLE_PEER && n->links.count > 0);
    mp_list_remove(&c->peer_link);
    n->links.count--;
    if (!c->peer_id || mp_map_get(&n->links.by_node, c->peer_id, strlen(c->peer_id)) != c) {
        return;
    }
    mp_map_remove(&n->links.by_node, c->peer_id, strlen(c->peer_id));
    /* Another open link to the same node takes over. */
    for (mp_link *l = n->conn_list.next; l != &n->conn_list; l = l->next) {
        mp_conn *o = MP_CONTAINER(l, mp_conn, link);
        if (o != c && o->role == MP_ROLE_PEER && o->state != MP_CONN_CLOSING && o->peer_id &&
            strcmp(o->peer_id, c->peer_id) == 0) {
            mp_map_put(&n->links.by_node, o->peer_id, strlen(o->peer_id), o, NULL);
            break;
        }
    }
}
