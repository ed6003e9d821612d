/* test_identity.c - one identity per node id, and refusals a person can
 * read, with real mpregd processes on loopback.
 *
 *   - A second "n2" (another data dir, so another DATA_DIR/node_key, and a
 *     higher incarnation) joins a cluster where n2 is alive: it is refused,
 *     both sides say why at warn (once, however often it retries), every
 *     node keeps listing the real n2 at its address and generation, and
 *     publishes still reach n2's subscriber.
 *   - n3 killed and restarted from its data dir on another port: the same
 *     key, so it is taken back at once, at its new address.
 *   - Nodes that cannot join (another --cluster, a wrong --token, a seed
 *     nobody listens on) say why in one warn line, not one line per retry
 *     (they retry every 400 ms with the harness's fast settings).
 *
 * Every wait is bounded (MP_HARNESS_WAIT_MS). */
#define _GNU_SOURCE
#include "harness.h"

#include "mpreg/client.h"
#include "mpreg/value.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void setup(void) {
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(identity, .init = setup, .timeout = 120);

/* What viewer says of member id: its address, state and generation. */
typedef struct member_view {
    char addr[64];
    char state[16];
    uint64_t generation;
    char key[72]; /* hex, "" = none */
} member_view;

static bool member_of(const char *url, const char *id, member_view *out) {
    mpreg_client_options o = {.name = "test", .timeout_ms = 5000};
    mpreg_error err = {0};
    mpreg_client *c = mpreg_connect(url, &o, &err);
    if (c == NULL) {
        return false;
    }
    mpreg_value m;
    bool found = false;
    if (mpreg_members(c, &m, &err) == MPREG_OK) {
        const mpreg_value *list = mpreg_map_get(&m, "members");
        for (size_t i = 0; list != NULL && i < list->u.arr.len && !found; i++) {
            const mpreg_value *e = &list->u.arr.items[i];
            const mpreg_value *mid = mpreg_map_get(e, "id");
            if (mid == NULL || mid->type != MPREG_STR || strcmp(mid->u.str.ptr, id) != 0) {
                continue;
            }
            const mpreg_value *addr = mpreg_map_get(e, "addr");
            const mpreg_value *state = mpreg_map_get(e, "state");
            const mpreg_value *gen = mpreg_map_get(e, "generation");
            const mpreg_value *key = mpreg_map_get(e, "key");
            snprintf(out->key, sizeof out->key, "%s",
                     key && key->type == MPREG_STR ? key->u.str.ptr : "");
            snprintf(out->addr, sizeof out->addr, "%s", addr ? addr->u.str.ptr : "");
            snprintf(out->state, sizeof out->state, "%s", state ? state->u.str.ptr : "");
            out->generation = gen && gen->type == MPREG_INT ? (uint64_t)gen->u.i : 0;
            found = true;
        }
        mpreg_value_free(&m);
    }
    mpreg_error_free(&err);
    mpreg_close(c);
    return found;
}

typedef struct member_want {
    const char *url; /* the viewer */
    const char *id;
    const char *addr; /* NULL: any */
    const char *state;
    uint64_t min_generation;
    member_view seen;
} member_want;

static bool member_is(void *ud) {
    member_want *w = ud;
    return member_of(w->url, w->id, &w->seen) && strcmp(w->seen.state, w->state) == 0 &&
           (w->addr == NULL || strcmp(w->seen.addr, w->addr) == 0) &&
           w->seen.generation >= w->min_generation;
}

static uint64_t wait_member(const char *url, const char *id, const char *addr, const char *state,
                            uint64_t min_generation) {
    member_want w = {url, id, addr, state, min_generation, {{0}}};
    uint64_t t0 = now_ms();
    if (!mp_harness_wait_until(member_is, &w, MP_HARNESS_WAIT_MS)) {
        char *json = mp_harness_control_json(url, "members");
        cr_assert_fail("%s did not list %s %s at %s (generation >= %llu) within %d ms: %s", url, id,
                       state, addr ? addr : "any address", (unsigned long long)min_generation,
                       MP_HARNESS_WAIT_MS, json ? json : "?");
    }
    return now_ms() - t0;
}

static bool file_has(void *ud) {
    const char *const *args = ud; /* path, needle */
    return mp_harness_file_contains(args[0], args[1]);
}

static void wait_log(const char *path, const char *needle) {
    const char *args[] = {path, needle};
    if (!mp_harness_wait_until(file_has, (void *)args, MP_HARNESS_WAIT_MS)) {
        char *text = mp_harness_read_file(path);
        cr_assert_fail("%s never said \"%s\"; it said:\n%s", path, needle, text ? text : "");
    }
}

static int count_lines(const char *path, const char *a, const char *b, const char *c) {
    const char *needles[] = {a, b, c, NULL};
    return mp_harness_file_count_lines(path, needles);
}

/* DATA_DIR/node_key, without its newline (the node's identity key, hex). */
static void read_key(const char *data_dir, char out[72]) {
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/node_key", data_dir);
    char *text = mp_harness_read_file(path);
    cr_assert_not_null(text, "no %s", path);
    cr_assert_eq(strlen(text), 33, "%s: \"%s\"", path, text);
    snprintf(out, 72, "%.32s", text);
    free(text);
}

/* A daemon outside the harness's cluster, in a directory of its own:
 * fast membership settings, the given name and extra flags, its data dir
 * DIR/data (with an incarnation file saying `incarnation` when non-zero). */
typedef struct outsider {
    char *dir;
    mp_harness_daemon d;
} outsider;

static void outsider_start(outsider *o, const char *name, uint64_t incarnation,
                           const char *const *extra) {
    o->dir = mp_harness_tmpdir_new();
    cr_assert_not_null(o->dir);
    char data[PATH_MAX], port_file[PATH_MAX];
    snprintf(data, sizeof data, "%s/data", o->dir);
    snprintf(port_file, sizeof port_file, "%s/port", o->dir);
    if (incarnation) {
        cr_assert_eq(mkdir(data, 0700), 0);
        char path[PATH_MAX + 16], text[32];
        snprintf(path, sizeof path, "%s/incarnation", data);
        snprintf(text, sizeof text, "%llu\n", (unsigned long long)incarnation);
        cr_assert_eq(mp_harness_write_file(path, text), 0);
    }
    const char *args[64];
    size_t n = 0;
    for (size_t i = 0; mp_harness_fast_swim[i] != NULL; i++) {
        args[n++] = mp_harness_fast_swim[i];
    }
    const char *fixed[] = {"--listen",   "127.0.0.1:0", "--port-file", port_file,
                           "--data-dir", data,          "--name",      name};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        args[n++] = fixed[i];
    }
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 62; i++) {
        args[n++] = extra[i];
    }
    args[n] = NULL;
    memset(&o->d, 0, sizeof o->d);
    snprintf(o->d.name, sizeof o->d.name, "%s", name);
    cr_assert_eq(mp_harness_daemon_spawn(&o->d, o->dir, name, args, NULL), 0);
    cr_assert_eq(mp_harness_daemon_wait_port(&o->d, port_file, MP_HARNESS_START_TIMEOUT_MS), 0,
                 "%s did not start", name);
}

/* Stops it; it must still be running (refused nodes keep trying) and exit 0. */
static void outsider_stop(outsider *o) {
    cr_assert_neq(o->d.pid, 0, "%s exited by itself", o->d.name);
    int status = mp_harness_daemon_stop(&o->d, MP_HARNESS_STOP_TIMEOUT_MS);
    cr_assert(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "%s did not exit 0 on SIGTERM", o->d.name);
    mp_harness_tmpdir_remove(o->dir);
}

/* ---- one identity per node id ------------------------------------------------------ */

#define PUBLISHES 10

static void on_message(const mpreg_message *m, void *ud) {
    (void)m;
    (*(int *)ud)++;
}

Test(identity, a_second_n2_is_refused_and_the_real_one_keeps_its_place) {
    mp_harness_cluster *cl = mp_harness_cluster_start(3, NULL);
    cr_assert_not_null(cl);
    const char *n1 = mp_harness_cluster_url(cl, 0), *n2 = mp_harness_cluster_url(cl, 1);
    const char *n3 = mp_harness_cluster_url(cl, 2);
    wait_member(n1, "n2", n2, "alive", 0);
    wait_member(n3, "n2", n2, "alive", 0);

    /* A subscriber on the real n2, known to n1's catalog. */
    mpreg_client_options co = {.name = "sub", .timeout_ms = 5000};
    mpreg_error err = {0};
    mpreg_client *sub = mpreg_connect(n2, &co, &err);
    cr_assert_not_null(sub, "%s", err.message);
    int got = 0;
    const char *patterns[] = {"orders.#"};
    cr_assert_eq(mpreg_subscribe(sub, patterns, 1, NULL, on_message, &got, NULL, &err), MPREG_OK);
    uint64_t t0 = now_ms();
    while (!mp_harness_catalog_has_topic(n1, "orders.#", "n2")) {
        cr_assert_lt(now_ms() - t0, MP_HARNESS_WAIT_MS, "the subscription did not reach n1");
        mpreg_poll(sub, 50);
    }

    /* The impostor: another data dir, a higher incarnation (it would win
     * on generations alone), joining through n1. */
    outsider imp;
    char peer[48];
    snprintf(peer, sizeof peer, "%s", n1);
    const char *extra[] = {"--peer", peer, NULL};
    outsider_start(&imp, "n2", 5, extra);
    char n2_key[72], imp_key[72], imp_data[PATH_MAX];
    read_key(mp_harness_cluster_daemon(cl, 1)->data_dir, n2_key);
    snprintf(imp_data, sizeof imp_data, "%s/data", imp.dir);
    read_key(imp_data, imp_key);
    cr_assert_str_neq(n2_key, imp_key, "two data dirs, two keys");
    /* It keeps trying (every 400 ms here): for a few seconds, every node
     * lists the real n2, at its address and generation. */
    uint64_t until = now_ms() + 3000;
    while (now_ms() < until) {
        member_view v;
        for (size_t i = 0; i < 3; i++) {
            if (i == 1) {
                continue;
            }
            const char *url = mp_harness_cluster_url(cl, i);
            cr_assert(member_of(url, "n2", &v), "%s lost n2", url);
            cr_assert_str_eq(v.addr, n2, "%s lists n2 at the impostor's address", url);
            cr_assert_str_eq(v.state, "alive");
            cr_assert_eq(v.generation, 1, "%s lists the impostor's generation", url);
            cr_assert_str_eq(v.key, n2_key, "%s lists another key for n2", url);
        }
        mpreg_poll(sub, 100);
    }
    /* Both sides said why. */
    char expect[160];
    snprintf(expect, sizeof expect, "identity conflict: node n2 is alive at %s with another key",
             n2);
    wait_log(imp.d.err_path, expect);
    wait_log(mp_harness_cluster_daemon(cl, 0)->err_path, expect);
    /* Publishes to n2's subscriber still arrive, all of them. */
    mpreg_client *pub = mpreg_connect(n1, &co, &err);
    cr_assert_not_null(pub);
    for (int i = 0; i < PUBLISHES; i++) {
        cr_assert_eq(mpreg_publish(pub, "orders.eu.created", "x", 1, &err), MPREG_OK);
    }
    t0 = now_ms();
    while (got < PUBLISHES && now_ms() - t0 < MP_HARNESS_WAIT_MS) {
        cr_assert_geq(mpreg_poll(sub, 100), 0);
    }
    cr_assert_eq(got, PUBLISHES, "%d of %d publishes reached n2's subscriber", got, PUBLISHES);
    mpreg_close(pub);
    mpreg_close(sub);

    /* One warning on each side, however many tries. */
    int imp_warns = count_lines(imp.d.err_path, " warn ", "refused this node", "identity");
    int n1_warns = count_lines(mp_harness_cluster_daemon(cl, 0)->err_path, " warn ",
                               "refused peer n2", "identity conflict");
    cr_assert_eq(imp_warns, 1, "the impostor warned %d times", imp_warns);
    cr_assert_eq(n1_warns, 1, "n1 warned %d times", n1_warns);
    cr_assert_eq(count_lines(imp.d.err_path, "sent an ERROR", NULL, NULL), 0);
    outsider_stop(&imp);
    cr_assert_eq(mp_harness_cluster_stop(cl), 0);
}

Test(identity, a_restart_from_the_same_data_dir_at_a_new_port_is_taken_at_once) {
    mp_harness_cluster *cl = mp_harness_cluster_start(3, NULL);
    cr_assert_not_null(cl);
    const char *n1 = mp_harness_cluster_url(cl, 0);
    wait_member(n1, "n3", mp_harness_cluster_url(cl, 2), "alive", 0);
    wait_member(mp_harness_cluster_url(cl, 1), "n3", NULL, "alive", 0);
    char old_addr[32];
    snprintf(old_addr, sizeof old_addr, "%s", mp_harness_cluster_url(cl, 2));
    /* kill -9, and straight back: n1 still lists the old process alive. */
    mp_harness_cluster_kill(cl, 2);
    cr_assert_eq(mp_harness_cluster_restart_elsewhere(cl, 2), 0);
    const char *n3 = mp_harness_cluster_url(cl, 2);
    cr_assert_str_neq(n3, old_addr, "the same port again");
    uint64_t took = wait_member(n1, "n3", n3, "alive", 2);
    cr_log_info("n1 listed the restarted n3 at its new address after %llu ms",
                (unsigned long long)took);
    cr_assert_lt(took, 2000, "took %llu ms", (unsigned long long)took);
    wait_member(mp_harness_cluster_url(cl, 1), "n3", n3, "alive", 2);
    /* The same process as far as the members can tell: the same key. */
    char key[72];
    read_key(mp_harness_cluster_daemon(cl, 2)->data_dir, key);
    member_view v;
    cr_assert(member_of(n1, "n3", &v));
    cr_assert_str_eq(v.key, key);
    const char *path = mp_harness_cluster_daemon(cl, 2)->err_path;
    cr_assert_eq(count_lines(path, "identity conflict", NULL, NULL), 0);
    cr_assert_eq(mp_harness_cluster_stop(cl), 0);
}

/* ---- joins that cannot succeed say why, once ---------------------------------------- */

Test(identity, a_refused_join_says_why_once_not_every_retry) {
    /* n1 at debug: its log shows every refused try, so that the test knows
     * there were many. */
    const char *n1_flags[] = {"--token", "s3cret", "--log-level", "debug", NULL};
    mp_harness_cluster *cl = mp_harness_cluster_start(1, n1_flags);
    cr_assert_not_null(cl);
    char peer[48];
    snprintf(peer, sizeof peer, "%s", mp_harness_cluster_url(cl, 0));
    outsider other, wrong, lost;
    const char *other_flags[] = {"--cluster", "other", "--token", "s3cret", "--peer", peer, NULL};
    const char *wrong_flags[] = {"--token", "wrong", "--peer", peer, NULL};
    const char *lost_flags[] = {"--peer", "127.0.0.1:1", NULL};
    outsider_start(&other, "w1", 0, other_flags);
    outsider_start(&wrong, "w2", 0, wrong_flags);
    outsider_start(&lost, "w3", 0, lost_flags);
    const char *n1_log = mp_harness_cluster_daemon(cl, 0)->err_path;
    /* Enough time for several tries each (every 400 ms). */
    uint64_t t0 = now_ms();
    while (count_lines(n1_log, "handshake refused", "token refused", NULL) < 5 ||
           count_lines(n1_log, "handshake refused", "cluster mismatch", NULL) < 5) {
        cr_assert_lt(now_ms() - t0, MP_HARNESS_WAIT_MS, "too few tries");
        sleep_ms(100);
    }
    sleep_ms(1000);

    struct {
        outsider *o;
        const char *reason;
    } cases[] = {
        {&other, "cluster mismatch: node n1 is in cluster \"default\", not \"other\""},
        {&wrong, "token refused"},
        {&lost, "cannot reach 127.0.0.1:1 (seed)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = cases[i].o->d.err_path;
        char *text = mp_harness_read_file(path);
        int warns = count_lines(path, " warn ", NULL, NULL);
        int with_reason = count_lines(path, " warn ", cases[i].reason, NULL);
        int lines = count_lines(path, "", NULL, NULL);
        cr_assert_eq(warns, 1, "%s: %d warnings:\n%s", cases[i].o->d.name, warns, text);
        cr_assert_eq(with_reason, 1, "%s does not say \"%s\":\n%s", cases[i].o->d.name,
                     cases[i].reason, text);
        cr_assert_lt(lines, 8, "%s wrote %d lines:\n%s", cases[i].o->d.name, lines, text);
        cr_assert_eq(count_lines(path, "sent an ERROR", NULL, NULL), 0);
        free(text);
    }
    /* The refusing side: one warning per refused node, with the reason. */
    cr_assert_eq(count_lines(n1_log, " warn ", "refused peer w1", "cluster mismatch"), 1);
    cr_assert_eq(count_lines(n1_log, " warn ", "refused peer w2", "token refused"), 1);
    outsider_stop(&other);
    outsider_stop(&wrong);
    outsider_stop(&lost);
    cr_assert_eq(mp_harness_cluster_stop(cl), 0);
}
