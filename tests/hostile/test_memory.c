/* test_memory.c - one client cannot grow the node's memory without bound
 * (issue: hardening). Each case is an attack seen on the old main, with the
 * figure it reached there in the comment, and the bound it meets now. */
#define _GNU_SOURCE
#include "hostile.h"

#include "services/pubsub.h"

TestSuite(memory, .fini = hostile_stop, .timeout = 120);

/* A pattern of about 200 bytes, unique to (conn, sub, i): 20 words. */
static void flood_pattern(char *out, size_t cap, int conn, int sub, int i) {
    int n = snprintf(out, cap, "c%d.s%d.p%d", conn, sub, i);
    for (int w = 0; w < 17 && n < (int)cap - 12; w++) {
        n += snprintf(out + n, cap - (size_t)n, ".w%03d%06d", w, (sub * 64 + i) % 1000000);
    }
}

/* Subscribes `subs` subscriptions of 64 patterns each, pipelined in
 * batches; returns how many were accepted (OK) and sets *refused to how
 * many got ERROR 505 limit. Every SUBSCRIBE gets one answer. */
static int subscribe_flood(int fd, int conn, int subs, int *refused) {
    int ok = 0;
    *refused = 0;
    enum { BATCH = 50 };
    char pattern[256];
    for (int base = 0; base < subs; base += BATCH) {
        mp_buf frames = MP_BUF_INIT;
        int n = subs - base < BATCH ? subs - base : BATCH;
        for (int k = 0; k < n; k++) {
            mp_pubsub_subscribe_payload p = {.pattern_count = MP_PUBSUB_MAX_PATTERNS};
            char *store = malloc(MP_PUBSUB_MAX_PATTERNS * 256);
            cr_assert_not_null(store);
            for (int i = 0; i < MP_PUBSUB_MAX_PATTERNS; i++) {
                flood_pattern(pattern, sizeof pattern, conn, base + k, i);
                memcpy(store + i * 256, pattern, strlen(pattern));
                p.patterns[i] = (mp_str){store + i * 256, strlen(pattern)};
            }
            p.tag = mp_str_c("t");
            mp_buf payload = MP_BUF_INIT;
            cr_assert_eq(mp_pubsub_subscribe_encode(&p, &payload), MPREG_OK);
            mpreg_bytes b = {payload.data, payload.len};
            hostile_frame(&frames, MP_KIND_SUBSCRIBE, NULL, &b, NULL);
            mp_buf_free(&payload);
            free(store);
        }
        cr_assert_eq(mp_harness_send(fd, frames.data, frames.len), 0);
        mp_buf_free(&frames);
        mp_buf buf = MP_BUF_INIT;
        for (int k = 0; k < n; k++) {
            mp_envelope e;
            cr_assert_eq(mp_harness_recv_envelope(fd, &buf, &e, 10000), 1,
                         "SUBSCRIBE %d unanswered", base + k);
            if (e.kind == MP_KIND_OK) {
                ok++;
                continue;
            }
            cr_assert_eq(e.kind, MP_KIND_ERROR, "got %s", mp_kind_name(e.kind));
            mpreg_value v;
            cr_assert_eq(mp_harness_payload_value(&e, &v), MPREG_OK);
            cr_assert_eq(mpreg_map_get(&v, "code")->u.i, MPREG_E_LIMIT);
            mpreg_value_free(&v);
            (*refused)++;
        }
        mp_buf_free(&buf);
    }
    return ok;
}

/* Seen on the old main: 10 000 x 64 patterns of ~200 bytes on one
 * connection took RSS from 3 MB to 2.9 GB, a second connection doubled it,
 * after both closed RSS stayed at 5.9 GB and status took over 10 s. */
Test(memory, a_subscription_flood_is_refused_at_the_limit_and_memory_comes_back) {
    /* Withdrawn catalog entries are remembered for the tombstone TTL (5 min
     * by default) and hold their memory that long: 1 s here, so that the
     * test sees the memory come back in seconds. */
    hostile_start((const char *[]){"--log-level", "debug", "--tombstone-ttl", "1000", NULL});
    uint16_t port = mp_harness_port(hostile_node);
    long base = hostile_node_rss();
    int a = mp_harness_client(port), b = mp_harness_client(port);
    cr_assert(a >= 0 && b >= 0);
    int refused_a, refused_b;
    uint64_t t0 = hostile_now_ms();
    int ok_a = subscribe_flood(a, 1, 10000, &refused_a);
    uint64_t worst = hostile_worst_echo(port, 5, 50);
    int ok_b = subscribe_flood(b, 2, 10000, &refused_b);
    uint64_t t1 = hostile_now_ms();
    long peak = hostile_node_rss();
    /* patterns_per_conn is 4096 by default: 64 subscriptions of 64. */
    cr_assert_eq(ok_a, 4096 / 64, "%d accepted", ok_a);
    cr_assert_eq(refused_a, 10000 - ok_a);
    cr_assert_eq(ok_b, 4096 / 64);
    int s = mp_harness_client(port);
    uint64_t st0 = hostile_now_ms();
    mpreg_value st;
    hostile_control(s, "status", &st);
    uint64_t status_ms = hostile_now_ms() - st0;
    cr_assert_eq(hostile_int_at(&st, (const char *[]){"limits", "patterns_per_node", "used", NULL}),
                 2 * ok_a * 64);
    mpreg_value_free(&st);
    close(a);
    close(b);
    /* The node removes what they held while the next client waits. */
    uint64_t sc0 = hostile_now_ms();
    hostile_control(s, "status", &st);
    uint64_t status_close_ms = hostile_now_ms() - sc0;
    mpreg_value_free(&st);
    /* The memory goes back within a few seconds: the tombstones' TTL (1 s
     * here), then the runtime's next trim (1, 3, 7 s after the close). */
    uint64_t closed_at = hostile_now_ms();
    long after = hostile_node_rss();
    while (!MP_HOSTILE_ASAN && after - base >= 40 * 1024 && hostile_now_ms() - closed_at < 10000) {
        hostile_sleep_ms(250);
        after = hostile_node_rss();
    }
    uint64_t back_ms = hostile_now_ms() - closed_at;
    uint64_t st1 = hostile_now_ms();
    hostile_control(s, "status", &st);
    uint64_t status_after_ms = hostile_now_ms() - st1;
    mpreg_value_free(&st);
    worst = worst > hostile_worst_echo(port, 5, 50) ? worst : hostile_worst_echo(port, 5, 50);
    close(s);
    cr_log_info("subscription flood: RSS %ld KiB at start, %ld KiB at the peak (%d patterns), "
                "%ld KiB %llu ms after both closed; flood took %llu ms; status %llu ms during, "
                "%llu ms as they closed, %llu ms after; worst ordinary call %llu ms",
                base, peak, 2 * ok_a * 64, after, (unsigned long long)back_ms,
                (unsigned long long)(t1 - t0), (unsigned long long)status_ms,
                (unsigned long long)status_close_ms, (unsigned long long)status_after_ms,
                (unsigned long long)worst);
    {
        char *log = mp_harness_read_file(mp_harness_daemon_of(hostile_node)->err_path);
        const char *m = log ? strstr(log, "memory: ") : NULL;
        const char *e = m ? strchr(m, '\n') : NULL;
        cr_log_info("%.*s", m ? (int)(e ? e - m : 200) : 9, m ? m : "(no trim)");
        if (getenv("HOSTILE_LOG")) {
            fprintf(stderr, "%s", log);
            char cmd[128];
            snprintf(
                cmd, sizeof cmd,
                "awk '/^[0-9a-f]+-/{m=$0} /^Rss:/{ if ($2 > 1024) print $2, m }' /proc/%d/smaps "
                ">&2",
                (int)mp_harness_daemon_of(hostile_node)->pid);
            (void)!system(cmd);
        }
        free(log);
    }
    cr_assert_lt(peak - base, MP_HOSTILE_KIB(256 * 1024), "the flood cost %ld KiB", peak - base);
    /* What stays is the membership's news queue (MP_SWIM_MAX_NEWS items,
     * never sent by a node alone), whose items pin heap pages. */
    if (!MP_HOSTILE_ASAN) { /* the sanitizer's quarantine keeps freed memory */
        cr_assert_lt(after - base, 40 * 1024, "RSS did not come back: %ld KiB over the baseline",
                     after - base);
    }
    cr_assert_lt(status_ms, MP_HOSTILE_CALL_MS);
    cr_assert_lt(status_after_ms, MP_HOSTILE_CALL_MS);
    cr_assert_lt(status_close_ms, MP_HOSTILE_CALL_MS,
                 "status took %llu ms while the node removed "
                 "what the flood held",
                 (unsigned long long)status_close_ms);
    cr_assert_lt(worst, MP_HOSTILE_CALL_MS);
}
