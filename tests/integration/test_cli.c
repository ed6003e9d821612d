/* test_cli.c - the mpreg command-line client, run as a program against a
 * real mpregd (harness.h).
 *
 * The binary comes from the MPREG_CLI environment variable (set by CMake).
 * Every run is bounded: a child that outlives its time is killed and the
 * test fails, so a hanging CLI shows up as a failure, never as a stuck
 * suite. */
#define _GNU_SOURCE
#include "harness.h"

#include "mpreg/client.h"
#include "mpreg/value.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define RUN_LIMIT_MS 15000

static mp_harness_node *node;

static void node_up(void) {
    signal(SIGPIPE, SIG_IGN);
    node = mp_harness_start(NULL);
    cr_assert_not_null(node, "mpregd did not start");
}

static void node_down(void) {
    mp_harness_stop(node);
    node = NULL;
}

static const char *cli_path(void) {
    const char *p = getenv("MPREG_CLI");
    cr_assert(p && p[0], "MPREG_CLI is not set (the path of the mpreg binary)");
    return p;
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- running the CLI ---------------------------------------------------------- */

typedef struct child {
    pid_t pid;
    int in;  /* its stdin, or -1 */
    int out; /* its stdout */
    int err; /* its stderr */
} child;

typedef struct result {
    int status; /* exit code; 128 + signal when killed */
    char out[65536];
    size_t out_len;
    char err[16384];
    size_t err_len;
} result;

/* Starts mpreg with args (NULL-terminated, without the program name). With
 * an env_url, MPREG_URL is set to it; otherwise it is unset. */
static child spawn_cli(const char *const *args, bool with_stdin, const char *env_url) {
    int pin[2], pout[2], perr[2];
    cr_assert_eq(pipe2(pin, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(pout, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(perr, O_CLOEXEC), 0);
    const char *argv[32];
    size_t n = 0;
    argv[n++] = cli_path();
    for (size_t i = 0; args[i] && n < 31; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        if (env_url) {
            setenv("MPREG_URL", env_url, 1);
        } else {
            unsetenv("MPREG_URL");
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    if (!with_stdin) {
        close(pin[1]);
        pin[1] = -1;
    }
    return (child){pid, pin[1], pout[0], perr[0]};
}

static void write_stdin(child *c, const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t w = write(c->in, text, len);
        cr_assert_gt(w, 0, "writing the CLI's stdin: %s", strerror(errno));
        text += w;
        len -= (size_t)w;
    }
    close(c->in);
    c->in = -1;
}

/* Reads the child's output until it exits (or kills it at the limit). */
static void collect(child *c, result *r) {
    memset(r, 0, sizeof *r);
    uint64_t deadline = now_ms() + RUN_LIMIT_MS;
    bool out_open = true, err_open = true;
    while (out_open || err_open) {
        struct pollfd p[2] = {{.fd = out_open ? c->out : -1, .events = POLLIN},
                              {.fd = err_open ? c->err : -1, .events = POLLIN}};
        int left = (int)(deadline > now_ms() ? deadline - now_ms() : 0);
        if (left == 0 || poll(p, 2, left) == 0) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, NULL, 0);
            cr_assert_fail("mpreg did not finish within %d ms; stdout: %.*s", RUN_LIMIT_MS,
                           (int)r->out_len, r->out);
        }
        if (p[0].revents) {
            ssize_t n = read(c->out, r->out + r->out_len, sizeof r->out - 1 - r->out_len);
            out_open = n > 0;
            r->out_len += n > 0 ? (size_t)n : 0;
        }
        if (p[1].revents) {
            ssize_t n = read(c->err, r->err + r->err_len, sizeof r->err - 1 - r->err_len);
            err_open = n > 0;
            r->err_len += n > 0 ? (size_t)n : 0;
        }
    }
    int status;
    waitpid(c->pid, &status, 0);
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    close(c->out);
    close(c->err);
    if (c->in >= 0) {
        close(c->in);
    }
    cr_assert(strstr(r->err, "Sanitizer") == NULL, "mpreg: %s", r->err);
}

static void run(const char *const *args, const char *stdin_text, result *r) {
    child c = spawn_cli(args, stdin_text != NULL, NULL);
    if (stdin_text) {
        write_stdin(&c, stdin_text);
    }
    collect(&c, r);
}

/* mpreg --url <node> args... */
static void run_url(const char *const *args, const char *stdin_text, result *r) {
    const char *full[32] = {"--url", mp_harness_url(node)};
    size_t n = 2;
    for (size_t i = 0; args[i] && n < 31; i++) {
        full[n++] = args[i];
    }
    full[n] = NULL;
    run(full, stdin_text, r);
}

static void assert_stdout_json(const result *r, const char *want_json) {
    mpreg_value got, want;
    char why[128] = "";
    cr_assert_eq(mpreg_value_from_json(r->out, r->out_len, &got, why, sizeof why), MPREG_OK,
                 "stdout is not JSON (%s): %s", why, r->out);
    cr_assert_eq(mpreg_value_from_json(want_json, strlen(want_json), &want, NULL, 0), MPREG_OK);
    cr_assert(mpreg_value_equal(&got, &want), "stdout %s, want %s", r->out, want_json);
    mpreg_value_free(&got);
    mpreg_value_free(&want);
}

/* ---- RPC --------------------------------------------------------------------- */

Test(cli, call_echo_hi, .init = node_up, .fini = node_down) {
    result r;
    const char *args[] = {"call", "echo", "hi", NULL};
    run_url(args, NULL, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "\"hi\"\n");
    cr_assert_eq(r.err_len, 0, "stderr: %s", r.err);
}

Test(cli, call_arguments_are_json_or_strings, .init = node_up, .fini = node_down) {
    result r;
    const char *args[] = {"call", "echos", "1", "[2, {\"a\": null}]", "hi there", "--json",
                          "--",   "--x",   NULL};
    run_url(args, NULL, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "[1,[2,{\"a\":null}],\"hi there\",\"--x\"]\n");
}

/* An argument that is JSON without an exact value is refused, named by
 * its position, before anything is sent; it used to go out as a string
 * (duplicate keys, 1e400) or a float (beyond int64). */
Test(cli, call_arguments_without_an_exact_value_are_refused) {
    static const struct {
        const char *arg;
        const char *says;
    } cases[] = {
        {"{\"a\":1,\"a\":2}", "argument 2 ('{\"a\":1,\"a\":2}'): duplicate object key"},
        {"1e400", "argument 2 ('1e400'): number out of range"},
        {"9223372036854775808", "argument 2 ('9223372036854775808'): number out of range"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* No node: the line is refused before any connection. */
        const char *args[] = {"--url", "127.0.0.1:1", "call", "echos", "ok", cases[i].arg, NULL};
        result r;
        run(args, NULL, &r);
        cr_assert_eq(r.status, 2, "%s: %s", cases[i].arg, r.err);
        cr_assert(strstr(r.err, cases[i].says) != NULL, "stderr: %s", r.err);
        cr_assert_eq(r.out_len, 0);
    }
    const char *kw[] = {"--url", "127.0.0.1:1", "call", "f", "--kw", "n=1e400", NULL};
    result r;
    run(kw, NULL, &r);
    cr_assert_eq(r.status, 2, "%s", r.err);
    cr_assert(strstr(r.err, "--kw: keyword 'n': number out of range") != NULL, "%s", r.err);
}

Test(cli, url_from_the_environment, .init = node_up, .fini = node_down) {
    const char *args[] = {"call", "echo", "7", NULL};
    child c = spawn_cli(args, false, mp_harness_url(node));
    result r;
    collect(&c, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "7\n");
}

static const char canonical[] =
    "[{\"name\":\"first\",\"fun\":\"echo\",\"args\":[\"hi there!\"]},"
    " {\"name\":\"second\",\"fun\":\"echo\",\"args\":[\"first\"]},"
    " {\"name\":\"third\",\"fun\":\"echos\",\"args\":[\"first\",\"AND ME TOO\"]}]";

Test(cli, request_from_stdin, .init = node_up, .fini = node_down) {
    result r;
    const char *args[] = {"request", "-", NULL};
    run_url(args, canonical, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert_str_eq(r.out,
                     "{\"second\":\"hi there!\",\"third\":[\"hi there!\",\"AND ME TOO\"]}\n");
}

/* PROTOCOL 8.6 writes a request as {"commands": [...]}: the CLI takes
 * that as well as the bare list. */
Test(cli, request_in_the_protocol_object_form, .init = node_up, .fini = node_down) {
    char text[sizeof canonical + 64];
    snprintf(text, sizeof text, "{\"commands\": %s, \"timeout_ms\": 5000}", canonical);
    result r;
    const char *args[] = {"request", "-", NULL};
    run_url(args, text, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    assert_stdout_json(&r, "{\"second\":\"hi there!\",\"third\":[\"hi there!\",\"AND ME TOO\"]}");
    run_url(args, "{\"commands\": [], \"timeot_ms\": 1}", &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "unknown key 'timeot_ms'") != NULL, "%s", r.err);
    run_url(args, "{\"cmds\": []}", &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "unknown key 'cmds'") != NULL, "%s", r.err);
    run_url(args, "{}", &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "no \"commands\" list") != NULL, "%s", r.err);
    /* A request file is read exactly too: no integer turned into a float. */
    run_url(args, "[{\"name\": \"a\", \"fun\": \"echo\",\n  \"args\": [9223372036854775808]}]", &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "error: range: -: number out of range (line 2 column") != NULL, "%s",
              r.err);
    run_url(args, "[{\"name\": \"a\", \"name\": \"b\", \"fun\": \"echo\"}]", &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "duplicate object key") != NULL, "%s", r.err);
}

Test(cli, request_from_a_file, .init = node_up, .fini = node_down) {
    char path[] = "/tmp/mpreg-cli-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, canonical, strlen(canonical)), (ssize_t)strlen(canonical));
    close(fd);
    result r;
    const char *args[] = {"request", path, NULL};
    run_url(args, NULL, &r);
    unlink(path);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    assert_stdout_json(&r, "{\"second\":\"hi there!\",\"third\":[\"hi there!\",\"AND ME TOO\"]}");
    /* Bad JSON is an error, not a usage error. */
    run_url(args, NULL, &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "error: io:") != NULL, "%s", r.err);
    const char *dash[] = {"request", "-", NULL};
    run_url(dash, "[{\"name\": ", &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strncmp(r.err, "error: json:", 12) == 0, "%s", r.err);
}

Test(cli, errors_exit_1_with_the_name, .init = node_up, .fini = node_down) {
    result r;
    const char *unknown[] = {"call", "no_such_function", NULL};
    run_url(unknown, NULL, &r);
    cr_assert_eq(r.status, 1);
    cr_assert_eq(r.out_len, 0);
    cr_assert(strncmp(r.err, "error: not_found: ", 18) == 0, "stderr: %s", r.err);

    const char *deadline[] = {"call", "sleep", "3000", "--timeout", "100", NULL};
    uint64_t t0 = now_ms();
    run_url(deadline, NULL, &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strncmp(r.err, "error: deadline: ", 17) == 0, "stderr: %s", r.err);
    cr_assert_lt(now_ms() - t0, 2500);

    const char *cycle[] = {"request", "-", NULL};
    run_url(cycle,
            "[{\"name\":\"a\",\"fun\":\"echo\",\"args\":[\"b\"]},"
            "{\"name\":\"b\",\"fun\":\"echo\",\"args\":[\"a\"]}]",
            &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strncmp(r.err, "error: cycle: ", 14) == 0, "stderr: %s", r.err);
    cr_assert(strstr(r.err, "(command 'a')") != NULL, "stderr: %s", r.err);

    const char *nowhere[] = {"--url", "127.0.0.1:1", "status", NULL};
    run(nowhere, NULL, &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strncmp(r.err, "error: unreachable: ", 20) == 0, "stderr: %s", r.err);
}

/* ---- usage --------------------------------------------------------------------- */

Test(cli, bad_usage_exits_2_with_a_hint) {
    const char *cases[][6] = {
        {NULL},
        {"frob", NULL},
        {"call", NULL},
        {"call", "echo", "--bogus", NULL},
        {"call", "echo", "--timeout", "soon", NULL},
        {"call", "echo", "--kw", "novalue", NULL},
        {"sub", NULL},
        {"sub", "a", "--count", "x", NULL},
        {"pub", "topic-only", NULL},
        {"status", "extra", NULL},
        {"request", NULL},
        {"--url", NULL},
        {"members", "extra", NULL},
        {"members", "--kind", "nodes", NULL},
        {"catalog", "--kind", NULL},
        {"catalog", "--kind", "bogus", NULL},
        {"catalog", "--kind", "functions,", NULL},
        {"catalog", "--kind=functions,nodes,tables", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        result r;
        run(cases[i], NULL, &r);
        cr_assert_eq(r.status, 2, "case %zu (%s): exit %d, stderr %s", i,
                     cases[i][0] ? cases[i][0] : "", r.status, r.err);
        cr_assert(strstr(r.err, "mpreg") != NULL, "case %zu: no hint: %s", i, r.err);
    }
}

Test(cli, help_and_version) {
    result r;
    const char *main_help[] = {"--help", NULL};
    run(main_help, NULL, &r);
    cr_assert_eq(r.status, 0);
    cr_assert(strstr(r.out, "usage: mpreg") != NULL);
    cr_assert(strstr(r.out, "examples:") != NULL);
    const char *subs[] = {"call", "request", "pub", "sub", "status", "catalog", "members"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        const char *args[] = {subs[i], "--help", NULL};
        run(args, NULL, &r);
        cr_assert_eq(r.status, 0, "%s --help", subs[i]);
        char want[64];
        snprintf(want, sizeof want, "usage: mpreg %s", subs[i]);
        cr_assert(strstr(r.out, want) != NULL, "%s --help: %s", subs[i], r.out);
        cr_assert(strstr(r.out, "example") != NULL, "%s --help has no example", subs[i]);
    }
    const char *version[] = {"--version", NULL};
    run(version, NULL, &r);
    cr_assert_eq(r.status, 0);
    cr_assert(strncmp(r.out, "mpreg ", 6) == 0, "%s", r.out);
}

/* ---- control --------------------------------------------------------------------- */

Test(cli, status_and_catalog_are_json, .init = node_up, .fini = node_down) {
    result r;
    const char *status[] = {"status", NULL};
    run_url(status, NULL, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    mpreg_value v;
    cr_assert_eq(mpreg_value_from_json(r.out, r.out_len, &v, NULL, 0), MPREG_OK, "%s", r.out);
    cr_assert_eq(v.type, MPREG_MAP);
    cr_assert_not_null(mpreg_map_get(&v, "node"), "%s", r.out);
    cr_assert_eq(strchr(r.out, '\n'), r.out + r.out_len - 1, "not one line: %s", r.out);
    mpreg_value_free(&v);
    const char *catalog[] = {"catalog", "--json", NULL};
    run_url(catalog, NULL, &r);
    cr_assert_eq(r.status, 0, "stderr: %s", r.err);
    cr_assert_eq(mpreg_value_from_json(r.out, r.out_len, &v, NULL, 0), MPREG_OK, "%s", r.out);
    cr_assert(strstr(r.out, "echo") != NULL, "%s", r.out);
    mpreg_value_free(&v);
}

Test(cli, bad_kind_and_members_flags_say_what_is_wrong) {
    result r;
    const char *bad_kind[] = {"catalog", "--kind", "tables", NULL};
    run(bad_kind, NULL, &r);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "--kind: unknown kind 'tables'") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, "functions, topics, nodes, queues, caches") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, "mpreg catalog --help") != NULL, "%s", r.err);
    const char *members_kind[] = {"members", "--kind", "nodes", NULL};
    run(members_kind, NULL, &r);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "unknown option '--kind'") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, "mpreg members --help") != NULL, "%s", r.err);
}

Test(cli, members_and_catalog_help) {
    result r;
    const char *members[] = {"members", "--help", NULL};
    run(members, NULL, &r);
    cr_assert_eq(r.status, 0);
    const char *says[] = {"usage: mpreg members",
                          "ADDR",
                          "STATE",
                          "GENERATION",
                          "INCARNATION",
                          "alive",
                          "suspect",
                          "dead",
                          "left",
                          "--json",
                          "examples:"};
    for (size_t i = 0; i < sizeof says / sizeof says[0]; i++) {
        cr_assert(strstr(r.out, says[i]) != NULL, "members --help lacks '%s': %s", says[i], r.out);
    }
    const char *catalog[] = {"catalog", "--help", NULL};
    run(catalog, NULL, &r);
    cr_assert_eq(r.status, 0);
    const char *csays[] = {"usage: mpreg catalog",
                           "--kind",
                           "functions",
                           "topics",
                           "nodes",
                           "queues",
                           "caches",
                           "NODES",
                           "examples:"};
    for (size_t i = 0; i < sizeof csays / sizeof csays[0]; i++) {
        cr_assert(strstr(r.out, csays[i]) != NULL, "catalog --help lacks '%s': %s", csays[i],
                  r.out);
    }
    const char *main_help[] = {"--help", NULL};
    run(main_help, NULL, &r);
    cr_assert(strstr(r.out, "members") != NULL, "%s", r.out);
}

/* The keys of a JSON object printed on stdout, sorted, joined with ','. */
static void stdout_keys(const result *r, char *out, size_t size) {
    mpreg_value v;
    cr_assert_eq(mpreg_value_from_json(r->out, r->out_len, &v, NULL, 0), MPREG_OK, "%s", r->out);
    cr_assert_eq(v.type, MPREG_MAP, "%s", r->out);
    out[0] = '\0';
    /* At most 5 keys: a selection sort by hand is plenty. */
    bool used[8] = {false};
    cr_assert_leq(v.u.map.len, 8);
    for (size_t n = 0; n < v.u.map.len; n++) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < v.u.map.len; i++) {
            if (!used[i] && (best == SIZE_MAX || strcmp(v.u.map.items[i].key.u.str.ptr,
                                                        v.u.map.items[best].key.u.str.ptr) < 0)) {
                best = i;
            }
        }
        used[best] = true;
        size_t len = strlen(out);
        snprintf(out + len, size - len, "%s%s", n ? "," : "", v.u.map.items[best].key.u.str.ptr);
    }
    mpreg_value_free(&v);
}

Test(cli, catalog_kind_filters_the_json, .init = node_up, .fini = node_down) {
    result r;
    char keys[128];
    const char *all[] = {"catalog", NULL};
    run_url(all, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    stdout_keys(&r, keys, sizeof keys);
    cr_assert(strstr(keys, "functions") && strstr(keys, "topics") && strstr(keys, "nodes"), "%s",
              keys);

    const char *fns[] = {"catalog", "--kind", "functions", NULL};
    run_url(fns, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    stdout_keys(&r, keys, sizeof keys);
    cr_assert_str_eq(keys, "functions");
    cr_assert(strstr(r.out, "\"echo\"") != NULL, "%s", r.out);

    /* A list, repeated, and a kind the node has nothing of: an empty list. */
    const char *two[] = {"catalog", "--kind", "nodes,queues", "--kind=topics", "--json", NULL};
    run_url(two, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    stdout_keys(&r, keys, sizeof keys);
    cr_assert_str_eq(keys, "nodes,queues,topics");
    cr_assert(strstr(r.out, "\"queues\":[]") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\"node\":\"node\"") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "echo") == NULL, "functions were not asked for: %s", r.out);
}

Test(cli, members_is_json_when_piped, .init = node_up, .fini = node_down) {
    result r;
    const char *members[] = {"members", NULL};
    run_url(members, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(strchr(r.out, '\n'), r.out + r.out_len - 1, "not one line: %s", r.out);
    mpreg_value v;
    cr_assert_eq(mpreg_value_from_json(r.out, r.out_len, &v, NULL, 0), MPREG_OK, "%s", r.out);
    const mpreg_value *self = mpreg_map_get(&v, "self");
    const mpreg_value *list = mpreg_map_get(&v, "members");
    cr_assert(self && self->type == MPREG_STR && strcmp(self->u.str.ptr, "node") == 0, "%s", r.out);
    cr_assert(list && list->type == MPREG_ARRAY && list->u.arr.len >= 1, "%s", r.out);
    const mpreg_value *me = &list->u.arr.items[0];
    cr_assert_str_eq(mpreg_map_get(me, "id")->u.str.ptr, "node");
    cr_assert_str_eq(mpreg_map_get(me, "state")->u.str.ptr, "alive");
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)mp_harness_port(node));
    cr_assert_str_eq(mpreg_map_get(me, "addr")->u.str.ptr, addr);
    mpreg_value_free(&v);
}

/* Runs mpreg --url <node> args with stdout on a pseudo-terminal, as a user
 * at a shell would: the readable output. */
static void run_on_tty(const char *const *args, result *r) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    cr_assert_geq(master, 0, "posix_openpt: %s", strerror(errno));
    cr_assert_eq(grantpt(master), 0);
    cr_assert_eq(unlockpt(master), 0);
    const char *slave_name = ptsname(master);
    cr_assert_not_null(slave_name);
    int perr[2];
    cr_assert_eq(pipe2(perr, O_CLOEXEC), 0);
    const char *argv[32] = {cli_path(), "--url", mp_harness_url(node)};
    size_t n = 3;
    for (size_t i = 0; args[i] && n < 31; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int slave = open(slave_name, O_RDWR | O_NOCTTY);
        if (slave < 0) {
            _exit(127);
        }
        /* No echo, no CR added to newlines: the bytes as the CLI wrote them. */
        struct termios tio;
        if (tcgetattr(slave, &tio) == 0) {
            cfmakeraw(&tio);
            tcsetattr(slave, TCSANOW, &tio);
        }
        dup2(slave, 1);
        dup2(perr[1], 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(perr[1]);
    /* Reading the master ends with EIO once the child (the only holder of
     * the slave) has exited. */
    child c = {pid, -1, master, perr[0]};
    collect(&c, r);
}

static mpreg_err never_called(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                              mpreg_value *out, mpreg_error *err) {
    (void)ctx;
    (void)args;
    (void)kwargs;
    (void)out;
    (void)err;
    return MPREG_E_HANDLER;
}

Test(cli, members_and_catalog_print_tables_on_a_terminal, .init = node_up, .fini = node_down) {
    result r;
    const char *members[] = {"members", NULL};
    run_on_tty(members, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "ID") && strstr(r.out, "ADDR") && strstr(r.out, "STATE") &&
                  strstr(r.out, "GENERATION") && strstr(r.out, "INCARNATION"),
              "no table header: %s", r.out);
    char row[64];
    snprintf(row, sizeof row, "127.0.0.1:%u  alive", (unsigned)mp_harness_port(node));
    cr_assert(strstr(r.out, row) != NULL, "no row for the node: %s", r.out);
    cr_assert(strstr(r.out, "node *") != NULL, "the node is not marked as itself: %s", r.out);
    cr_assert(strstr(r.out, "1 member: 1 alive") != NULL, "%s", r.out);
    cr_assert(strchr(r.out, '{') == NULL, "JSON on a terminal: %s", r.out);

    /* A worker's function next to the built-ins: one row per function,
     * its nodes listed. */
    mpreg_client *w = mpreg_connect(mp_harness_url(node), NULL, NULL);
    cr_assert_not_null(w);
    const char *res[] = {"gpu", "ssd"};
    mpreg_worker_function def = {.name = "render",
                                 .function_id = "render-v2",
                                 .version = "2.1.0",
                                 .resources = res,
                                 .resource_count = 2,
                                 .handler = never_called};
    cr_assert_eq(mpreg_register(w, &def, NULL), MPREG_OK);

    const char *catalog[] = {"catalog", NULL};
    run_on_tty(catalog, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strncmp(r.out, "functions (6)\n", 14) == 0, "%s", r.out);
    cr_assert(strstr(r.out, "NAME") && strstr(r.out, "VERSION") && strstr(r.out, "FUNCTION_ID") &&
                  strstr(r.out, "RESOURCES") && strstr(r.out, "NODES"),
              "%s", r.out);
    cr_assert(strstr(r.out, "render  2.1.0    render-v2    gpu, ssd   node") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\ntopics (0)\n  (none)\n") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "\nnodes (1)\n") != NULL, "%s", r.out);
    cr_assert(strstr(r.out, "CLUSTER") && strstr(r.out, "ENDPOINTS"), "%s", r.out);
    cr_assert(strstr(r.out, "default") != NULL, "%s", r.out);

    const char *only[] = {"catalog", "--kind", "nodes", NULL};
    run_on_tty(only, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strncmp(r.out, "nodes (1)\n", 10) == 0, "%s", r.out);
    cr_assert(strstr(r.out, "functions") == NULL, "%s", r.out);
    /* --json wins over the terminal. */
    const char *json[] = {"catalog", "--kind", "nodes", "--json", NULL};
    run_on_tty(json, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strncmp(r.out, "{\"nodes\":[", 10) == 0, "%s", r.out);
    mpreg_close(w);
}

/* ---- pub/sub ------------------------------------------------------------------------ */

/* Waits until the node counts n subscriptions (the CLI has subscribed). */
static void wait_subscriptions(int64_t n) {
    mpreg_client *c = mpreg_connect(mp_harness_url(node), NULL, NULL);
    cr_assert_not_null(c);
    uint64_t deadline = now_ms() + 5000;
    for (;;) {
        mpreg_value st;
        cr_assert_eq(mpreg_status(c, &st, NULL), MPREG_OK);
        const mpreg_value *s = mpreg_map_get(&st, "subscriptions");
        bool done = s && s->type == MPREG_INT && s->u.i >= n;
        mpreg_value_free(&st);
        if (done) {
            break;
        }
        cr_assert_lt(now_ms(), deadline, "the CLI never subscribed");
        usleep(10000);
    }
    mpreg_close(c);
}

Test(cli, pub_and_sub_with_count, .init = node_up, .fini = node_down) {
    const char *sub_args[] = {
        "--url", mp_harness_url(node), "sub",   "orders.*", "logs.#", "--count",
        "3",     "--timeout",          "10000", NULL};
    child sub = spawn_cli(sub_args, false, NULL);
    wait_subscriptions(1);

    char path[] = "/tmp/mpreg-cli-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_eq(write(fd, "\x00\xff\x01", 3), 3);
    close(fd);
    result r;
    const char *p1[] = {"pub", "orders.created", "{\"id\": 7}", NULL};
    const char *p2[] = {"pub", "nobody.listens", "x", NULL};
    const char *p3[] = {"pub", "logs.app.error", "--file", path, NULL};
    const char *p4[] = {"pub", "orders.eu", "héllo", NULL};
    const char *p5[] = {"pub", "orders.late", "after the count", NULL};
    const char *const *pubs[] = {p1, p2, p3, p4};
    for (size_t i = 0; i < 4; i++) {
        run_url(pubs[i], NULL, &r);
        cr_assert_eq(r.status, 0, "pub %zu: %s", i, r.err);
        cr_assert_eq(r.out_len, 0);
    }
    unlink(path);
    result s;
    collect(&sub, &s);
    cr_assert_eq(s.status, 0, "sub stderr: %s", s.err);
    /* One JSON object per line, in publish order. */
    char *line2 = strchr(s.out, '\n');
    cr_assert_not_null(line2);
    *line2++ = '\0';
    char *line3 = strchr(line2, '\n');
    cr_assert_not_null(line3);
    *line3++ = '\0';
    char *end = strchr(line3, '\n');
    cr_assert_not_null(end);
    *end = '\0';
    cr_assert_eq(end[1], '\0', "more than 3 lines");
    mpreg_value v;
    cr_assert_eq(mpreg_value_from_json(s.out, strlen(s.out), &v, NULL, 0), MPREG_OK, "%s", s.out);
    cr_assert_str_eq(mpreg_map_get(&v, "topic")->u.str.ptr, "orders.created");
    cr_assert_str_eq(mpreg_map_get(&v, "data")->u.str.ptr, "{\"id\": 7}");
    cr_assert_eq(mpreg_map_get(&v, "subscription")->type, MPREG_INT);
    mpreg_value_free(&v);
    cr_assert_str_eq(line2, "{\"topic\":\"logs.app.error\",\"data\":{\"$bin\":\"AP8B\"},"
                            "\"subscription\":1}");
    cr_assert(strstr(line3, "\"orders.eu\"") != NULL, "%s", line3);
    cr_assert(strstr(line3, "h\xc3\xa9llo") != NULL || strstr(line3, "h\\u00e9llo") != NULL, "%s",
              line3);
    run_url(p5, NULL, &r);
    cr_assert_eq(r.status, 0);
}

Test(cli, sub_timeout, .init = node_up, .fini = node_down) {
    result r;
    const char *with_count[] = {"sub", "quiet.*", "--count", "1", "--timeout", "300", NULL};
    uint64_t t0 = now_ms();
    run_url(with_count, NULL, &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strncmp(r.err, "error: timeout: ", 16) == 0, "%s", r.err);
    cr_assert_lt(now_ms() - t0, 3000);
    const char *no_count[] = {"sub", "quiet.*", "--timeout", "300", NULL};
    run_url(no_count, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(r.out_len, 0);
    const char *bad_pattern[] = {"sub", "a.b*", "--timeout", "300", NULL};
    run_url(bad_pattern, NULL, &r);
    cr_assert_eq(r.status, 1);
    cr_assert(strncmp(r.err, "error: topic: ", 14) == 0, "%s", r.err);
}

/* Issue 10: `mpreg sub` says what it missed. It is stopped (SIGSTOP) while
 * 32 MiB are published, so the node sheds it; once it runs again and has
 * read its backlog, the next message tells it how many it lost: a line on
 * stderr, "missed" in the message's JSON, and the total at exit, all the
 * number the node counted. Its stdout goes to a file (it prints more than a
 * pipe holds). */
Test(cli, sub_says_how_many_messages_it_missed, .init = node_up, .fini = node_down) {
    char out_path[] = "/tmp/mpreg-cli-missed-XXXXXX";
    int out_fd = mkstemp(out_path);
    cr_assert_geq(out_fd, 0);
    int perr[2];
    cr_assert_eq(pipe2(perr, O_CLOEXEC), 0);
    const char *argv[] = {cli_path(),  "--url", mp_harness_url(node),
                          "--json",    "sub",   "flood.#",
                          "--timeout", "5000",  NULL};
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(out_fd, 1);
        dup2(perr[1], 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(perr[1]);
    wait_subscriptions(1);
    kill(pid, SIGSTOP);
    mpreg_client *pub = mpreg_connect(mp_harness_url(node), NULL, NULL);
    cr_assert_not_null(pub);
    static char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 2048; i++) {
        cr_assert_eq(mpreg_publish(pub, "flood.data", chunk, sizeof chunk, NULL), MPREG_OK);
    }
    kill(pid, SIGCONT);
    usleep(1500 * 1000); /* it reads what was buffered for it */
    cr_assert_eq(mpreg_publish(pub, "flood.tail", "tail", 4, NULL), MPREG_OK);
    mpreg_value st;
    cr_assert_eq(mpreg_status(pub, &st, NULL), MPREG_OK);
    int64_t dropped = mpreg_map_get(mpreg_map_get(&st, "counters"), "dropped")->u.i;
    mpreg_value_free(&st);
    mpreg_close(pub);
    cr_assert_gt(dropped, 0, "nothing was shed: the test proves nothing");

    char err[4096];
    size_t err_len = 0;
    ssize_t n;
    while ((n = read(perr[0], err + err_len, sizeof err - 1 - err_len)) > 0) {
        err_len += (size_t)n;
    }
    err[err_len] = '\0';
    close(perr[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit %d: %s", status, err);
    char want[160];
    snprintf(want, sizeof want,
             "mpreg: subscription 1 missed %lld messages (slow consumer)\n"
             "mpreg: subscription 1 missed %lld messages in all (slow consumer)\n",
             (long long)dropped, (long long)dropped);
    cr_assert_str_eq(err, want);
    /* The tail's JSON line says so too, for scripts. */
    FILE *f = fopen(out_path, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    char key[64];
    snprintf(key, sizeof key, "\"missed\":%lld", (long long)dropped);
    int with = 0;
    while (getline(&line, &cap, f) > 0) {
        if (strstr(line, "\"missed\"")) {
            with++;
            cr_assert(strstr(line, key) && strstr(line, "\"flood.tail\""), "%s", line);
        }
    }
    free(line);
    fclose(f);
    close(out_fd);
    unlink(out_path);
    cr_assert_eq(with, 1);
}

Test(cli, sub_in_a_queue_group, .init = node_up, .fini = node_down) {
    const char *a1[] = {"--url", mp_harness_url(node), "sub",   "jobs.*", "--group", "g", "--count",
                        "2",     "--timeout",          "10000", NULL};
    child s1 = spawn_cli(a1, false, NULL);
    child s2 = spawn_cli(a1, false, NULL);
    wait_subscriptions(2);
    result r;
    for (int i = 0; i < 4; i++) {
        char data[32];
        snprintf(data, sizeof data, "job%d", i);
        const char *p[] = {"pub", "jobs.new", data, NULL};
        run_url(p, NULL, &r);
        cr_assert_eq(r.status, 0);
    }
    result o1, o2;
    collect(&s1, &o1);
    collect(&s2, &o2);
    cr_assert_eq(o1.status, 0, "%s", o1.err);
    cr_assert_eq(o2.status, 0, "%s", o2.err);
    /* Two each, and every job exactly once. */
    for (int i = 0; i < 4; i++) {
        char want[32];
        snprintf(want, sizeof want, "\"job%d\"", i);
        bool in1 = strstr(o1.out, want) != NULL, in2 = strstr(o2.out, want) != NULL;
        cr_assert(in1 != in2, "%s went to %s", want, in1 ? "both" : "neither");
    }
}

/* ---- replay ------------------------------------------------------------------ */

static void retaining_node_up(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *extra[] = {"--retain", "4", NULL};
    node = mp_harness_start(extra);
    cr_assert_not_null(node, "mpregd did not start");
}

/* 0 is a time, the start of retention: it used to be read as "no replay
 * asked for", and the subscriber saw nothing. */
Test(cli, sub_replay_since_zero_replays_everything_retained, .init = retaining_node_up,
     .fini = node_down) {
    result r;
    const char *p1[] = {"pub", "news.a", "first", NULL};
    const char *p2[] = {"pub", "news.b", "second", NULL};
    run_url(p1, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    run_url(p2, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *sub[] = {"sub", "news.*",    "--replay-since", "0", "--count",
                         "2",   "--timeout", "5000",           NULL};
    run_url(sub, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    char *second = strchr(r.out, '\n');
    cr_assert_not_null(second, "%s", r.out);
    cr_assert(strstr(r.out, "\"first\"") < second && strstr(r.out, "\"first\"") != NULL, "%s",
              r.out);
    cr_assert(strstr(second, "\"second\"") != NULL, "%s", r.out);
    cr_assert(strstr(second, "\"replay\":true") != NULL, "%s", r.out);
    /* A time after both: nothing to replay. */
    const char *later[] = {"sub", "news.*", "--replay-since", "99999999999999", "--timeout",
                           "300", NULL};
    run_url(later, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_eq(r.out_len, 0, "%s", r.out);
}

/* ---- tokens ------------------------------------------------------------------ */

static void token_node_up(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *extra[] = {"--token", "s3cret", NULL};
    node = mp_harness_start(extra);
    cr_assert_not_null(node, "mpregd did not start");
}

/* $MPREG_TOKEN keeps the token out of ps; --token still wins over it. */
Test(cli, token_from_the_environment, .init = token_node_up, .fini = node_down) {
    result r;
    const char *status[] = {"status", NULL};
    unsetenv("MPREG_TOKEN");
    run_url(status, NULL, &r);
    cr_assert_eq(r.status, 1, "%s", r.out);
    cr_assert(strstr(r.err, "error: auth:") != NULL, "%s", r.err);
    setenv("MPREG_TOKEN", "s3cret", 1);
    run_url(status, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    const char *wrong[] = {"--token", "wrong", "status", NULL};
    run_url(wrong, NULL, &r);
    cr_assert_eq(r.status, 1, "%s", r.out);
    unsetenv("MPREG_TOKEN");
}

/* ---- a stranger on the port ------------------------------------------------------ */

/* A listener on a free port that answers the first connection with `reply`
 * and closes: an HTTP server, a Redis, anything that is not mpreg. Returns
 * the port; *pid is the listening child. */
static uint16_t stranger_start(const char *reply, size_t len, pid_t *pid) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(s, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(s, 4), 0);
    cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &alen), 0);
    *pid = fork();
    cr_assert_geq(*pid, 0);
    if (*pid == 0) {
        int c = accept(s, NULL, NULL);
        char buf[512];
        (void)!read(c, buf, sizeof buf); /* the HELLO, unread */
        (void)!write(c, reply, len);
        close(c);
        _exit(0);
    }
    close(s);
    return ntohs(a.sin_port);
}

static void assert_not_mpreg(const char *reply, size_t len) {
    pid_t pid;
    uint16_t port = stranger_start(reply, len, &pid);
    char url[32];
    snprintf(url, sizeof url, "127.0.0.1:%u", (unsigned)port);
    const char *args[] = {"--url", url, "status", NULL};
    result r;
    run(args, NULL, &r);
    waitpid(pid, NULL, 0);
    cr_assert_eq(r.status, 1, "%s", r.out);
    cr_assert(strstr(r.err, "not an mpreg node") != NULL, "stderr: %s", r.err);
    cr_assert(strstr(r.err, "frame_too_large") == NULL, "stderr: %s", r.err);
}

Test(cli, a_port_that_does_not_speak_mpreg_is_named_so) {
    static const char http[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    assert_not_mpreg(http, sizeof http - 1);
    static const char redis[] = "-ERR unknown command\r\n";
    assert_not_mpreg(redis, sizeof redis - 1);
    /* A plausible length, then bytes that are no envelope. */
    static const char garbage[] = "\0\0\0\5hello";
    assert_not_mpreg(garbage, sizeof garbage - 1);
}

/* ---- a catalog bigger than a frame ----------------------------------------------- */

static void ignore_message(const mpreg_message *msg, void *ud) {
    (void)msg;
    (void)ud;
}

static void small_frame_node_up(void) {
    signal(SIGPIPE, SIG_IGN);
    const char *extra[] = {"--max-frame", "1K", NULL};
    node = mp_harness_start(extra);
    cr_assert_not_null(node, "mpregd did not start");
}

/* 64 topic interests make a catalog of several KiB, far over a 1 KiB frame:
 * the node used to answer too_large, even to --kind nodes. It pages now,
 * and the CLI prints every entry. */
Test(cli, catalog_larger_than_a_frame_is_printed_whole, .init = small_frame_node_up,
     .fini = node_down) {
    char pats[64][48];
    const char *patterns[64];
    for (int i = 0; i < 64; i++) {
        snprintf(pats[i], sizeof pats[i], "a.fairly.long.topic.pattern.number.%02d.#", i);
        patterns[i] = pats[i];
    }
    /* spawn_cli takes at most 30 arguments: subscribe through the library. */
    mpreg_client *s = mpreg_connect(mp_harness_url(node), NULL, NULL);
    cr_assert_not_null(s);
    mpreg_error err = {0};
    for (int i = 0; i < 64; i += 8) { /* eight at a time: a SUBSCRIBE must fit in 1K too */
        cr_assert_eq(mpreg_subscribe(s, patterns + i, 8, NULL, ignore_message, NULL, NULL, &err),
                     MPREG_OK, "%s", err.message);
    }
    result r;
    const char *all[] = {"catalog", "--json", NULL};
    run_url(all, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    mpreg_value v;
    cr_assert_eq(mpreg_value_from_json(r.out, r.out_len, &v, NULL, 0), MPREG_OK, "%s", r.out);
    const mpreg_value *topics = mpreg_map_get(&v, "topics");
    cr_assert(topics && topics->type == MPREG_ARRAY);
    cr_assert_eq(topics->u.arr.len, 64, "%zu topics", topics->u.arr.len);
    for (int i = 0; i < 64; i++) {
        cr_assert_str_eq(mpreg_map_get(&topics->u.arr.items[i], "pattern")->u.str.ptr, pats[i]);
    }
    cr_assert_null(mpreg_map_get(&v, "next"), "the CLI must follow the pages");
    mpreg_value_free(&v);
    cr_assert_gt(r.out_len, 2048);
    const char *nodes[] = {"catalog", "--kind", "nodes", "--json", NULL};
    run_url(nodes, NULL, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strncmp(r.out, "{\"nodes\":[{", 11) == 0, "%s", r.out);
    cr_assert(strstr(r.out, "pattern") == NULL, "%s", r.out);
    mpreg_close(s);
}
