/* test_cluster.c - several mpregd processes forming one cluster on loopback.
 *
 * Each test starts three daemons (harness.h: n1 plain, n2 and n3 joining
 * through n1, fast membership settings) and drives them with libmpreg's
 * blocking client: membership converges, a function served on one node is
 * called from another, a request's commands run on three nodes, a publish
 * crosses nodes exactly once, a queue group spans the nodes (one member
 * cluster-wide per message), and failures are seen: kill -9 (dead, its
 * entries gone, calls answered with an error rather than left hanging), a
 * restart from the same data dir (alive again, a new generation), a
 * graceful stop (left, quickly).
 *
 * Everything that waits is bounded (MP_HARNESS_WAIT_MS at most), and a
 * failed wait prints what the nodes said, so that a broken cluster fails
 * with a reason instead of hanging the suite. */
#define _GNU_SOURCE
#include "harness.h"

#include "mpreg/client.h"
#include "mpreg/value.h"

#include "support/value_json.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NODES 3
/* A member that stops gracefully is listed "left" within this: LEFT is
 * gossiped at once, so it takes a few gossip rounds, far less than the
 * suspicion timeout a crash costs. */
#define LEFT_FAST_MS 3000

static mp_harness_cluster *cluster;

static void cluster_up(void) {
    signal(SIGPIPE, SIG_IGN);
    cluster = mp_harness_cluster_start(NODES, NULL);
    cr_assert_not_null(cluster, "the cluster did not start");
}

static void cluster_down(void) {
    mp_harness_cluster_stop(cluster);
    cluster = NULL;
}

TestSuite(cluster, .init = cluster_up, .fini = cluster_down, .timeout = 120);

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *url(size_t i) {
    return mp_harness_cluster_url(cluster, i);
}

static const char *name(size_t i) {
    return mp_harness_cluster_name(cluster, i);
}

/* Fails the test with what node i says about op. */
static void fail_showing(size_t i, const char *op, const char *what) {
    char *json = mp_harness_control_json(url(i), op);
    cr_assert_fail("%s within %d ms; %s says (%s): %s", what, MP_HARNESS_WAIT_MS, name(i), op,
                   json ? json : "?");
}

/* ---- waiting on membership ------------------------------------------------------ */

typedef struct member_want {
    size_t viewer;         /* whose view */
    size_t member;         /* about whom */
    const char *states[3]; /* any of these, NULL-terminated */
    uint64_t min_generation;
    char seen[16]; /* the state last seen, "" = not listed */
} member_want;

static bool member_is(void *ud) {
    member_want *w = ud;
    uint64_t gen = 0;
    if (!mp_harness_member_state(url(w->viewer), name(w->member), w->seen, &gen)) {
        w->seen[0] = '\0';
        return false;
    }
    for (size_t i = 0; i < 3 && w->states[i] != NULL; i++) {
        if (strcmp(w->seen, w->states[i]) == 0 && gen >= w->min_generation) {
            return true;
        }
    }
    return false;
}

/* Waits (bounded) until viewer lists member in state; returns how long it
 * took, in ms. */
static uint64_t wait_member(size_t viewer, size_t member, const char *state,
                            uint64_t min_generation) {
    member_want w = {.viewer = viewer, .member = member, .min_generation = min_generation};
    w.states[0] = state;
    uint64_t t0 = now_ms();
    if (!mp_harness_wait_until(member_is, &w, MP_HARNESS_WAIT_MS)) {
        char what[128];
        snprintf(what, sizeof what, "%s did not list %s as %s (last seen: %s)", name(viewer),
                 name(member), state, w.seen[0] ? w.seen : "not listed");
        fail_showing(viewer, "members", what);
    }
    return now_ms() - t0;
}

/* Every running node lists every node alive. */
static void wait_all_alive(void) {
    for (size_t v = 0; v < NODES; v++) {
        for (size_t m = 0; m < NODES; m++) {
            wait_member(v, m, "alive", 0);
        }
    }
}

static uint64_t generation_of(size_t viewer, size_t member) {
    char state[16];
    uint64_t gen = 0;
    cr_assert(mp_harness_member_state(url(viewer), name(member), state, &gen),
              "%s does not list %s", name(viewer), name(member));
    return gen;
}

/* ---- waiting on the catalog ----------------------------------------------------- */

typedef struct catalog_want {
    size_t viewer;
    const char *fun;     /* a function ... */
    const char *pattern; /* ... or a topic */
    const char *node;
    bool present;
} catalog_want;

static bool catalog_is(void *ud) {
    catalog_want *w = ud;
    bool has = w->fun != NULL ? mp_harness_catalog_has_function(url(w->viewer), w->fun, w->node)
                              : mp_harness_catalog_has_topic(url(w->viewer), w->pattern, w->node);
    return has == w->present;
}

static void wait_function(size_t viewer, const char *fun, const char *node, bool present) {
    catalog_want w = {.viewer = viewer, .fun = fun, .node = node, .present = present};
    if (!mp_harness_wait_until(catalog_is, &w, MP_HARNESS_WAIT_MS)) {
        char what[160];
        snprintf(what, sizeof what, "function %s of %s %s %s's catalog", fun, node,
                 present ? "did not reach" : "did not leave", name(viewer));
        fail_showing(viewer, "catalog", what);
    }
}

static void wait_topic(size_t viewer, const char *pattern, const char *node) {
    catalog_want w = {.viewer = viewer, .pattern = pattern, .node = node, .present = true};
    if (!mp_harness_wait_until(catalog_is, &w, MP_HARNESS_WAIT_MS)) {
        char what[160];
        snprintf(what, sizeof what, "the subscription to %s on %s did not reach %s's catalog",
                 pattern, node, name(viewer));
        fail_showing(viewer, "catalog", what);
    }
}

/* ---- workers -------------------------------------------------------------------- */

/* Blocking clients serve calls of their functions only inside mpreg_poll
 * (or another blocking call), so workers get a thread that polls them. */
#define MAX_WORKERS 4

typedef struct workers {
    mpreg_client *clients[MAX_WORKERS];
    size_t n;
    pthread_t thread;
    atomic_bool stop;
    bool running;
} workers;

static void *workers_loop(void *arg) {
    workers *w = arg;
    while (!atomic_load(&w->stop)) {
        for (size_t i = 0; i < w->n; i++) {
            mpreg_poll(w->clients[i], 10);
        }
    }
    return NULL;
}

/* A worker on node i serving fun with handler (ctx passed as is). Workers
 * must all be added before workers_start. */
static void worker_add(workers *w, size_t node, const char *fun, mpreg_handler_fn handler,
                       void *ctx) {
    cr_assert_lt(w->n, MAX_WORKERS);
    mpreg_client_options o = {.name = fun, .timeout_ms = 5000};
    mpreg_error err = {0};
    mpreg_client *c = mpreg_connect(url(node), &o, &err);
    cr_assert_not_null(c, "worker on %s: %s", name(node), err.message);
    mpreg_worker_function def = {.name = fun, .handler = handler, .ctx = ctx};
    cr_assert_eq(mpreg_register(c, &def, &err), MPREG_OK, "register %s on %s: %s", fun, name(node),
                 err.message);
    w->clients[w->n++] = c;
}

static void workers_start(workers *w) {
    atomic_store(&w->stop, false);
    cr_assert_eq(pthread_create(&w->thread, NULL, workers_loop, w), 0);
    w->running = true;
}

static void workers_stop(workers *w) {
    if (w->running) {
        atomic_store(&w->stop, true);
        pthread_join(w->thread, NULL);
        w->running = false;
    }
    for (size_t i = 0; i < w->n; i++) {
        mpreg_close(w->clients[i]);
    }
    w->n = 0;
}

/* Concatenates its string arguments and appends ctx (the stage's mark):
 * the result says which stages ran, in which order. */
static mpreg_err stage_handler(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                               mpreg_value *out, mpreg_error *err) {
    (void)kwargs;
    char buf[256] = "";
    size_t len = 0;
    for (size_t i = 0; args != NULL && i < args->u.arr.len; i++) {
        const mpreg_value *a = &args->u.arr.items[i];
        if (a->type != MPREG_STR) {
            snprintf(err->message, sizeof err->message, "argument %zu is not a string", i);
            return MPREG_E_HANDLER;
        }
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s", a->u.str.ptr);
        len = len < sizeof buf ? len : sizeof buf - 1;
    }
    snprintf(buf + len, sizeof buf - len, "%s", (const char *)ctx);
    *out = mpreg_str(buf);
    return MPREG_OK;
}

/* Triples its one integer argument. */
static mpreg_err triple_handler(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                                mpreg_value *out, mpreg_error *err) {
    (void)ctx;
    (void)kwargs;
    if (args == NULL || args->u.arr.len != 1 || args->u.arr.items[0].type != MPREG_INT) {
        snprintf(err->message, sizeof err->message, "triple takes one integer");
        return MPREG_E_HANDLER;
    }
    *out = mpreg_int(3 * args->u.arr.items[0].u.i);
    return MPREG_OK;
}

static mpreg_client *client_of(size_t node) {
    mpreg_client_options o = {.name = "test", .timeout_ms = 10000};
    mpreg_error err = {0};
    mpreg_client *c = mpreg_connect(url(node), &o, &err);
    cr_assert_not_null(c, "connect to %s: %s", name(node), err.message);
    return c;
}

/* ---- membership ------------------------------------------------------------------ */

Test(cluster, three_nodes_list_each_other_alive) {
    wait_all_alive();
    /* Each one's view, read once more: three members, itself among them. */
    for (size_t v = 0; v < NODES; v++) {
        mpreg_client *c = client_of(v);
        mpreg_value m;
        mpreg_error err = {0};
        cr_assert_eq(mpreg_members(c, &m, &err), MPREG_OK, "%s", err.message);
        const mpreg_value *self = mpreg_map_get(&m, "self");
        const mpreg_value *list = mpreg_map_get(&m, "members");
        cr_assert(self != NULL && self->type == MPREG_STR && strcmp(self->u.str.ptr, name(v)) == 0);
        cr_assert(list != NULL && list->type == MPREG_ARRAY);
        cr_assert_eq(list->u.arr.len, NODES, "%s lists %zu members", name(v), list->u.arr.len);
        for (size_t i = 0; i < list->u.arr.len; i++) {
            const mpreg_value *e = &list->u.arr.items[i];
            const mpreg_value *id = mpreg_map_get(e, "id");
            const mpreg_value *addr = mpreg_map_get(e, "addr");
            cr_assert(id != NULL && id->type == MPREG_STR);
            /* The address a member is dialed at is the one it listens on. */
            size_t k = 0;
            while (k < NODES && strcmp(name(k), id->u.str.ptr) != 0) {
                k++;
            }
            cr_assert_lt(k, NODES, "unknown member %s", id->u.str.ptr);
            cr_assert(addr != NULL && addr->type == MPREG_STR &&
                          strcmp(addr->u.str.ptr, url(k)) == 0,
                      "%s's address: %s, want %s", id->u.str.ptr,
                      addr && addr->type == MPREG_STR ? addr->u.str.ptr : "?", url(k));
        }
        mpreg_value_free(&m);
        mpreg_close(c);
    }
}

/* ---- RPC across nodes ------------------------------------------------------------ */

Test(cluster, a_function_on_n3_is_called_from_n1) {
    wait_all_alive();
    workers w = {0};
    worker_add(&w, 2, "triple", triple_handler, NULL);
    workers_start(&w);
    wait_function(0, "triple", name(2), true);

    mpreg_client *c = client_of(0);
    mpreg_value args = json("[14]"), result;
    mpreg_error err = {0};
    mpreg_call_options o = {.timeout_ms = 5000};
    cr_assert_eq(mpreg_call(c, "triple", &args, NULL, &o, &result, &err), MPREG_OK, "%s: %s",
                 mpreg_err_name(err.code), err.message);
    assert_json_eq(&result, "42");
    mpreg_value_free(&result);
    mpreg_value_free(&args);
    mpreg_error_free(&err);
    mpreg_close(c);
    workers_stop(&w);
}

Test(cluster, a_request_runs_its_commands_on_three_nodes) {
    wait_all_alive();
    workers w = {0};
    worker_add(&w, 0, "stage_a", stage_handler, "a");
    worker_add(&w, 1, "stage_b", stage_handler, "b");
    worker_add(&w, 2, "stage_c", stage_handler, "c");
    workers_start(&w);
    /* The client's node is n2: every stage but one is elsewhere. */
    const char *funs[] = {"stage_a", "stage_b", "stage_c"};
    for (size_t i = 0; i < 3; i++) {
        wait_function(1, funs[i], name(i), true);
    }
    mpreg_client *c = client_of(1);
    /* a on n1, then b on n2 with a's result, then c on n3 with both;
     * d on n2 stands alone. The sinks are c and d. */
    mpreg_value cmds = json("[{\"name\":\"a\",\"fun\":\"stage_a\",\"args\":[\"x\"]},"
                            " {\"name\":\"b\",\"fun\":\"stage_b\",\"args\":[\"a\"]},"
                            " {\"name\":\"c\",\"fun\":\"stage_c\",\"args\":[\"b\",\"-\",\"a\"]},"
                            " {\"name\":\"d\",\"fun\":\"stage_b\",\"args\":[\"y\"]}]");
    mpreg_value results;
    mpreg_error err = {0};
    cr_assert_eq(mpreg_request(c, &cmds, 5000, &results, &err), MPREG_OK, "%s: %s (command %s)",
                 mpreg_err_name(err.code), err.message, err.command);
    assert_json_eq(&results, "{\"c\": \"xab-xac\", \"d\": \"yb\"}");
    mpreg_value_free(&results);
    mpreg_value_free(&cmds);
    mpreg_error_free(&err);
    mpreg_close(c);
    workers_stop(&w);
}

/* ---- pub/sub across nodes -------------------------------------------------------- */

#define PUBLISHES 10

typedef struct inbox {
    int count[PUBLISHES];
    int total;
    int strays;
} inbox;

static void on_message(const mpreg_message *m, void *ud) {
    inbox *in = ud;
    in->total++;
    /* The payload is bytes, not a C string. */
    char text[32] = "";
    int k = -1;
    if (m->len < sizeof text) {
        memcpy(text, m->data, m->len);
        if (strncmp(text, "msg-", 4) == 0 && text[4] != '\0') {
            k = atoi(text + 4);
        }
    }
    if (k >= 0 && k < PUBLISHES && strcmp(m->topic, "orders.eu.created") == 0) {
        in->count[k]++;
    } else {
        in->strays++;
    }
}

Test(cluster, a_publish_on_n1_reaches_a_subscriber_on_n2_once) {
    wait_all_alive();
    mpreg_client *sub = client_of(1);
    inbox in = {0};
    const char *patterns[] = {"orders.#"};
    mpreg_error err = {0};
    cr_assert_eq(mpreg_subscribe(sub, patterns, 1, NULL, on_message, &in, NULL, &err), MPREG_OK,
                 "%s", err.message);
    wait_topic(0, "orders.#", name(1));

    mpreg_client *pub = client_of(0);
    for (int i = 0; i < PUBLISHES; i++) {
        char data[32];
        int n = snprintf(data, sizeof data, "msg-%d", i);
        cr_assert_eq(mpreg_publish(pub, "orders.eu.created", data, (size_t)n, &err), MPREG_OK, "%s",
                     err.message);
    }
    cr_assert_eq(mpreg_publish(pub, "invoices.eu", "msg-0", 5, &err), MPREG_OK);
    uint64_t deadline = now_ms() + MP_HARNESS_WAIT_MS;
    while (in.total < PUBLISHES && now_ms() < deadline) {
        cr_assert_geq(mpreg_poll(sub, 100), 0, "the subscriber's connection broke");
    }
    cr_assert_eq(in.total, PUBLISHES, "%d of %d messages within %d ms", in.total, PUBLISHES,
                 MP_HARNESS_WAIT_MS);
    /* Duplicates would arrive right behind the originals. */
    uint64_t settle = now_ms() + 500;
    while (now_ms() < settle) {
        cr_assert_geq(mpreg_poll(sub, 50), 0);
    }
    cr_assert_eq(in.strays, 0, "a message that matches nothing arrived");
    for (int i = 0; i < PUBLISHES; i++) {
        cr_assert_eq(in.count[i], 1, "message %d arrived %d times", i, in.count[i]);
    }
    mpreg_close(pub);
    mpreg_close(sub);
}

/* ---- a queue group across nodes --------------------------------------------------- */

#define GROUP_PUBLISHES 30

typedef struct group_inbox {
    int *count; /* per message, shared by the members */
    int got;    /* this member's */
    int strays;
} group_inbox;

static void on_group_message(const mpreg_message *m, void *ud) {
    group_inbox *in = ud;
    char text[32] = "";
    int k = -1;
    if (m->len < sizeof text) {
        memcpy(text, m->data, m->len);
        if (strncmp(text, "job-", 4) == 0 && text[4] != '\0') {
            k = atoi(text + 4);
        }
    }
    if (k >= 0 && k < GROUP_PUBLISHES) {
        in->count[k]++;
        in->got++;
    } else {
        in->strays++;
    }
}

/* Members of group "workers" on all three nodes: each message published on
 * n1 reaches exactly one of them, and not always the same one. */
Test(cluster, a_queue_group_spans_the_nodes) {
    wait_all_alive();
    int count[GROUP_PUBLISHES] = {0};
    group_inbox in[NODES];
    mpreg_client *members[NODES];
    const char *patterns[] = {"jobs.*"};
    mpreg_error err = {0};
    for (size_t i = 0; i < NODES; i++) {
        in[i] = (group_inbox){.count = count};
        members[i] = client_of(i);
        cr_assert_eq(mpreg_subscribe(members[i], patterns, 1, "workers", on_group_message, &in[i],
                                     NULL, &err),
                     MPREG_OK, "%s", err.message);
    }
    for (size_t i = 0; i < NODES; i++) {
        wait_topic(0, "jobs.*", name(i));
    }
    mpreg_client *pub = client_of(0);
    for (int k = 0; k < GROUP_PUBLISHES; k++) {
        char data[32];
        int n = snprintf(data, sizeof data, "job-%d", k);
        cr_assert_eq(mpreg_publish(pub, "jobs.run", data, (size_t)n, &err), MPREG_OK, "%s",
                     err.message);
    }
    int total = 0;
    uint64_t deadline = now_ms() + MP_HARNESS_WAIT_MS;
    while (total < GROUP_PUBLISHES && now_ms() < deadline) {
        total = 0;
        for (size_t i = 0; i < NODES; i++) {
            cr_assert_geq(mpreg_poll(members[i], 20), 0, "member on %s: connection broke", name(i));
            total += in[i].got;
        }
    }
    cr_assert_eq(total, GROUP_PUBLISHES, "%d of %d messages within %d ms", total, GROUP_PUBLISHES,
                 MP_HARNESS_WAIT_MS);
    /* A second delivery would come right behind the first. */
    uint64_t settle = now_ms() + 500;
    while (now_ms() < settle) {
        for (size_t i = 0; i < NODES; i++) {
            cr_assert_geq(mpreg_poll(members[i], 10), 0);
        }
    }
    int busy = 0;
    for (size_t i = 0; i < NODES; i++) {
        cr_assert_eq(in[i].strays, 0);
        busy += in[i].got > 0;
    }
    for (int k = 0; k < GROUP_PUBLISHES; k++) {
        cr_assert_eq(count[k], 1, "job %d reached %d members of the group", k, count[k]);
    }
    cr_assert_gt(busy, 1, "one member got everything (%d/%d/%d)", in[0].got, in[1].got, in[2].got);
    mpreg_close(pub);
    for (size_t i = 0; i < NODES; i++) {
        mpreg_close(members[i]);
    }
}

/* ---- failures -------------------------------------------------------------------- */

/* A call of fun from node i must end with a structured error within
 * limit_ms: the fabric's own answer, never the client giving up. */
static void call_fails_in_time(size_t node, const char *fun, uint32_t deadline_ms,
                               uint64_t limit_ms) {
    mpreg_client *c = client_of(node);
    mpreg_value args = json("[1]"), result = mpreg_nil();
    mpreg_error err = {0};
    mpreg_call_options o = {.timeout_ms = deadline_ms};
    uint64_t t0 = now_ms();
    mpreg_err rc = mpreg_call(c, fun, &args, NULL, &o, &result, &err);
    uint64_t took = now_ms() - t0;
    cr_assert_neq(rc, MPREG_OK, "the call of %s succeeded", fun);
    cr_assert_neq(rc, MPREG_E_TIMEOUT, "no answer from the node: the call hung (%s)", err.message);
    cr_assert_eq(rc, err.code);
    cr_assert_gt(strlen(err.message), 0, "an error without a message");
    cr_assert_leq(took, limit_ms, "the error took %llu ms", (unsigned long long)took);
    mpreg_value_free(&args);
    mpreg_value_free(&result);
    mpreg_error_free(&err);
    mpreg_close(c);
}

Test(cluster, kill_9_is_detected_and_its_functions_leave_the_catalog) {
    wait_all_alive();
    workers w = {0};
    worker_add(&w, 2, "only_on_n3", triple_handler, NULL);
    workers_start(&w);
    wait_function(0, "only_on_n3", name(2), true);

    mp_harness_cluster_kill(cluster, 2);
    /* Right after the crash n1 may still route there: the call must end
     * in an error within its deadline all the same. */
    call_fails_in_time(0, "only_on_n3", 3000, 4000);

    uint64_t took = wait_member(0, 2, "dead", 0);
    cr_log_info("n1 declared n3 dead after %llu ms", (unsigned long long)took);
    wait_member(1, 2, "dead", 0);
    wait_function(0, "only_on_n3", name(2), false);
    /* Known dead and gone from the catalog: refused at once. */
    call_fails_in_time(0, "only_on_n3", 5000, 1000);
    /* The survivors still see each other. */
    wait_member(0, 1, "alive", 0);
    wait_member(1, 0, "alive", 0);
    workers_stop(&w);
}

Test(cluster, a_restarted_node_is_alive_again_quickly) {
    wait_all_alive();
    uint64_t before = generation_of(0, 2);
    mp_harness_cluster_kill(cluster, 2);
    wait_member(0, 2, "dead", 0);
    cr_assert_eq(mp_harness_cluster_restart(cluster, 2), 0, "n3 did not restart");
    /* A new process, a new generation: taken back at once, not after the
     * old one's death is forgotten. */
    uint64_t took = wait_member(0, 2, "alive", before + 1);
    cr_log_info("n1 listed the restarted n3 alive after %llu ms", (unsigned long long)took);
    cr_assert_lt(took, 5000, "the restarted n3 took %llu ms to be listed alive",
                 (unsigned long long)took);
    cr_assert_gt(generation_of(0, 2), before);
    wait_member(1, 2, "alive", before + 1);
    wait_member(2, 0, "alive", 0);
    wait_member(2, 1, "alive", 0);
    /* And it serves again: its built-ins reach n1's catalog under it. */
    wait_function(0, "echo", name(2), true);
}

Test(cluster, a_graceful_stop_is_listed_left_fast) {
    wait_all_alive();
    uint64_t t0 = now_ms();
    int status = mp_harness_cluster_term(cluster, 1);
    uint64_t stop_took = now_ms() - t0;
    cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "n2 did not exit 0 on SIGTERM (status %d)", status);
    /* Leaving lingers one gossip round at most, bounded to a second. */
    cr_assert_lt(stop_took, 3000, "n2 took %llu ms to stop", (unsigned long long)stop_took);
    cr_assert(mp_harness_file_contains(mp_harness_cluster_daemon(cluster, 1)->err_path,
                                       "leaving the cluster"),
              "n2 did not say it was leaving");
    uint64_t took = wait_member(0, 1, "left", 0);
    cr_assert_lt(took, LEFT_FAST_MS, "n1 listed n2 as left only after %llu ms",
                 (unsigned long long)took);
    took = wait_member(2, 1, "left", 0);
    cr_assert_lt(took, LEFT_FAST_MS, "n3 listed n2 as left only after %llu ms",
                 (unsigned long long)took);
    /* Its entries go with it. */
    wait_function(0, "echo", name(1), false);
}

Test(cluster, a_node_whose_members_are_all_gone_stops_at_once) {
    wait_all_alive();
    mp_harness_cluster_kill(cluster, 1);
    mp_harness_cluster_kill(cluster, 2);
    wait_member(0, 1, "dead", 0);
    wait_member(0, 2, "dead", 0);
    /* Dead members are still listed, but there is nobody to tell. */
    int status = mp_harness_cluster_term(cluster, 0);
    cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    cr_assert(!mp_harness_file_contains(mp_harness_cluster_daemon(cluster, 0)->err_path,
                                        "leaving the cluster"),
              "n1 lingered to tell dead members it was leaving");
}
