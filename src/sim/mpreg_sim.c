/* mpreg_sim.c - mpreg-sim, the simulator's command line.
 *
 *     mpreg-sim list
 *     mpreg-sim run single-rpc
 *     mpreg-sim run scale --nodes 1000 --seed 7 --json
 *
 * A thin shell over scenarios.h: pick a scenario, run it with a seed, print
 * its figures. When an invariant fails it prints the failure, the seed and
 * the exact command line that replays the run, and exits 1; a command line
 * that makes no sense exits 2. */
#define _POSIX_C_SOURCE 200809L

#include "sim/scenarios.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef MPREG_VERSION
#define MPREG_VERSION "0.1.0"
#endif

#define EXIT_USAGE 2

static const char *const usage =
    "usage: mpreg-sim list\n"
    "       mpreg-sim run SCENARIO [--seed N] [--nodes N] [--json] [--quiet] [--log LEVEL]\n"
    "       mpreg-sim --help | --version\n"
    "\n"
    "The deterministic simulator of mpreg: many nodes in one process, a virtual\n"
    "clock and a virtual network (latency, jitter, loss / duplication / reordering\n"
    "of gossip, partitions, crashes, restarts). The same seed gives the same run,\n"
    "bit for bit: a failing run is replayed by running it again with its seed.\n"
    "\n"
    "commands:\n"
    "  list                  list the scenarios with their node counts\n"
    "  run SCENARIO          run one scenario and print its figures\n"
    "\n"
    "options of run:\n"
    "  --seed N              the run's seed (default 1)\n"
    "  --nodes N             how many nodes (default: the scenario's; list shows\n"
    "                        each one's default and the counts it allows)\n"
    "  --json                print the report as one JSON object on stdout\n"
    "  --quiet               no progress lines (the report only)\n"
    "  --log LEVEL           node logs on stderr at LEVEL and above: error, warn,\n"
    "                        info, debug (default: none)\n"
    "  -h, --help            this help\n"
    "  --version             print the version\n"
    "\n"
    "Scenarios marked [cluster] need the node's clustering (membership and\n"
    "gossip); the others run on a single node.\n"
    "\n"
    "examples:\n"
    "  mpreg-sim run single-rpc\n"
    "  mpreg-sim run join --nodes 64 --seed 3\n"
    "  mpreg-sim run scale --nodes 1000 --json\n"
    "\n"
    "Exit status: 0 when every invariant held, 1 when one failed (the failure,\n"
    "the seed and the command line that replays it go to stderr), 2 for a bad\n"
    "command line.\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mpreg-sim: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see mpreg-sim --help)\n");
    va_end(ap);
    return EXIT_USAGE;
}

static bool parse_u64(const char *text, uint64_t max, uint64_t *out) {
    if (!text || !*text || *text == '-' || *text == '+') {
        return false;
    }
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end || v > max) {
        return false;
    }
    *out = v;
    return true;
}

static bool parse_level(const char *text, mp_log_level *out) {
    static const mp_log_level levels[] = {MP_LOG_ERROR, MP_LOG_WARN, MP_LOG_INFO, MP_LOG_DEBUG};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        if (text && strcmp(text, mp_log_level_name(levels[i])) == 0) {
            *out = levels[i];
            return true;
        }
    }
    return false;
}

static int cmd_list(void) {
    size_t n;
    const mp_sim_scenario *sc = mp_sim_scenarios(&n);
    int width = 0; /* the longest name, so that the columns line up */
    for (size_t i = 0; i < n; i++) {
        int len = (int)strlen(sc[i].name);
        width = len > width ? len : width;
    }
    for (size_t i = 0; i < n; i++) {
        char range[48];
        if (sc[i].min_nodes == sc[i].max_nodes) {
            snprintf(range, sizeof range, "exactly %u", sc[i].min_nodes);
        } else {
            snprintf(range, sizeof range, "%u to %u", sc[i].min_nodes, sc[i].max_nodes);
        }
        printf("%-*s %5u node%s%s (--nodes: %s)\n    %s\n", width, sc[i].name, sc[i].default_nodes,
               sc[i].default_nodes == 1 ? " " : "s", sc[i].needs_cluster ? " [cluster]" : "", range,
               sc[i].description);
    }
    return 0;
}

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void print_text(const mp_sim_scenario *sc, const mp_sim_report *r, double wall) {
    printf("scenario %s  seed %llu  nodes %u\n", sc->name, (unsigned long long)r->seed, r->nodes);
    for (size_t i = 0; i < r->metric_count; i++) {
        const mp_sim_metric *m = &r->metrics[i];
        if (m->value == floor(m->value) && fabs(m->value) < 1e15) {
            printf("  %-24s %14.0f %s\n", m->name, m->value, m->unit);
        } else {
            printf("  %-24s %14.2f %s\n", m->name, m->value, m->unit);
        }
    }
    printf("%s: %llu events, %.3f virtual s, %.2f wall s, trace %016llx\n", r->ok ? "ok" : "FAILED",
           (unsigned long long)r->events, (double)r->virtual_ms / 1000.0, wall,
           (unsigned long long)r->trace_hash);
}

static void print_json(const mp_sim_scenario *sc, const mp_sim_report *r, double wall,
                       const char *replay) {
    json_t *o = json_object();
    json_t *metrics = json_object();
    char hash[17];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)r->trace_hash);
    json_object_set_new(o, "scenario", json_string(sc->name));
    json_object_set_new(o, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(o, "nodes", json_integer(r->nodes));
    json_object_set_new(o, "ok", json_boolean(r->ok));
    if (!r->ok) {
        json_object_set_new(o, "failure", json_string(r->failure));
        json_object_set_new(o, "replay", json_string(replay));
    }
    json_object_set_new(o, "events", json_integer((json_int_t)r->events));
    json_object_set_new(o, "virtual_ms", json_integer((json_int_t)r->virtual_ms));
    json_object_set_new(o, "wall_s", json_real(wall));
    json_object_set_new(o, "trace_hash", json_string(hash));
    for (size_t i = 0; i < r->metric_count; i++) {
        const mp_sim_metric *m = &r->metrics[i];
        bool whole = m->value == floor(m->value) && fabs(m->value) < 9e15;
        json_object_set_new(metrics, m->name,
                            whole ? json_integer((json_int_t)m->value) : json_real(m->value));
    }
    json_object_set_new(o, "metrics", metrics);
    char *text = json_dumps(o, JSON_COMPACT);
    if (text) {
        printf("%s\n", text);
        free(text);
    }
    json_decref(o);
}

static int cmd_run(int argc, char **argv) {
    const char *name = NULL;
    mp_sim_run_opts o = {.seed = 1, .out = stdout, .log_level = MP_LOG_ERROR};
    bool json = false, quiet = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        if (strcmp(a, "--seed") == 0) {
            if (i + 1 >= argc || !parse_u64(argv[++i], UINT64_MAX, &v)) {
                return usage_error("--seed needs a number, got '%s'", i < argc ? argv[i] : "");
            }
            o.seed = v;
        } else if (strcmp(a, "--nodes") == 0) {
            if (i + 1 >= argc || !parse_u64(argv[++i], MP_SIM_MAX_NODES, &v) || v == 0) {
                return usage_error("--nodes needs a number from 1 to %u, got '%s'",
                                   MP_SIM_MAX_NODES, i < argc ? argv[i] : "");
            }
            o.nodes = (uint32_t)v;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--quiet") == 0) {
            quiet = true;
        } else if (strcmp(a, "--log") == 0) {
            if (i + 1 >= argc || !parse_level(argv[++i], &o.log_level)) {
                return usage_error("--log needs error, warn, info or debug, got '%s'",
                                   i < argc ? argv[i] : "");
            }
            o.log = stderr;
        } else if (a[0] == '-') {
            return usage_error("unknown option '%s'", a);
        } else if (name) {
            return usage_error("one scenario at a time ('%s' is one too many)", a);
        } else {
            name = a;
        }
    }
    if (!name) {
        return usage_error("run needs a scenario (mpreg-sim list shows them)");
    }
    const mp_sim_scenario *sc = mp_sim_scenario_find(name);
    if (!sc) {
        return usage_error("no scenario '%s' (mpreg-sim list shows them)", name);
    }
    /* A node count the scenario cannot use is a bad command line, not a
     * failed run: single-rpc would otherwise report 5 nodes and run one. */
    if (o.nodes != 0 && sc->min_nodes == sc->max_nodes && o.nodes != sc->min_nodes) {
        return usage_error("%s runs on exactly %u node%s: --nodes %u is not allowed", sc->name,
                           sc->min_nodes, sc->min_nodes == 1 ? "" : "s", o.nodes);
    }
    if (o.nodes != 0 && (o.nodes < sc->min_nodes || o.nodes > sc->max_nodes)) {
        return usage_error("%s runs on %u to %u nodes: --nodes %u is not allowed", sc->name,
                           sc->min_nodes, sc->max_nodes, o.nodes);
    }
    if (json || quiet) {
        o.out = json ? (quiet ? NULL : stderr) : NULL;
    }
    mp_sim_report r;
    double t0 = wall_seconds();
    mp_sim_scenario_run(sc, &o, &r);
    double wall = wall_seconds() - t0;
    char replay[256];
    snprintf(replay, sizeof replay, "mpreg-sim run %s --seed %llu --nodes %u", sc->name,
             (unsigned long long)r.seed, r.nodes);
    if (json) {
        print_json(sc, &r, wall, replay);
    } else {
        print_text(sc, &r, wall);
    }
    if (!r.ok) {
        fprintf(stderr, "mpreg-sim: %s failed: %s\nseed: %llu\nreplay: %s\n", sc->name, r.failure,
                (unsigned long long)r.seed, replay);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("mpreg-sim %s\n", MPREG_VERSION);
        return 0;
    }
    if (strcmp(cmd, "list") == 0) {
        return argc == 2 ? cmd_list() : usage_error("list takes no arguments");
    }
    if (strcmp(cmd, "run") == 0) {
        return cmd_run(argc - 2, argv + 2);
    }
    return usage_error("unknown command '%s'", cmd);
}
