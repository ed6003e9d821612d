/* mpreg.c - the command-line client.
 *
 *     mpreg call echo hi                 -> "hi"
 *     mpreg request commands.json
 *     mpreg pub orders.eu.created '{"id": 7}'
 *     mpreg sub 'orders.#' --count 10
 *     mpreg status
 *     mpreg members
 *     mpreg catalog --kind functions
 *
 * A thin shell over libmpreg's blocking client: parse the command line,
 * connect, do one thing, print the answer. Output is compact JSON when
 * stdout is not a terminal (or with --json), so that scripts can pipe it
 * into jq; on a terminal it is pretty JSON, except for members and catalog,
 * which print tables. Errors go to stderr as "error: <name>: <message>" with
 * exit status 1; a command line that makes no sense exits with 2 and a
 * hint. */
#define _GNU_SOURCE
#include "mpreg/client.h"
#include "mpreg/value.h"

#include "client/client_proto.h"
#include "core/value_json.h"
#include "core/vec.h"
#include "runtime/sysclock.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MPREG_VERSION
#define MPREG_VERSION "0.1.0"
#endif

#define EXIT_USAGE 2

/* ==== help ================================================================== */

static const char *const usage_main =
    "usage: mpreg [--url HOST:PORT] [--json] <command> [arguments]\n"
    "\n"
    "The command-line client of an mpreg fabric.\n"
    "\n"
    "commands:\n"
    "  call FUN [ARG...]     call a function and print its result; an ARG is JSON\n"
    "                        when it parses as JSON (kept exact, or refused), else\n"
    "                        a string: see 'mpreg call --help'\n"
    "  request FILE|-        send a request of several commands (JSON)\n"
    "  pub TOPIC DATA        publish a message\n"
    "  sub PATTERN...        print messages published to matching topics\n"
    "  status                print the node's status\n"
    "  members               list the cluster's members as the node sees them\n"
    "  catalog               list what the fabric offers: functions, topics, nodes\n"
    "\n"
    "global options (anywhere on the line):\n"
    "  --url HOST:PORT       the node to talk to (default: $MPREG_URL, else " MPREG_DEFAULT_URL
    ")\n"
    "  --json                compact JSON output (the default when stdout is not a terminal)\n"
    "  --token TOKEN         when the node requires one (default: $MPREG_TOKEN);\n"
    "                        other users see a flag in ps: prefer $MPREG_TOKEN\n"
    "  --timeout MS          how long to wait (see each command)\n"
    "  -h, --help            help; 'mpreg COMMAND --help' for a command's\n"
    "  --version             print the version (before the command)\n"
    "\n"
    "examples:\n"
    "  mpreg call echo hi\n"
    "  mpreg --url 10.0.0.5:6464 status\n"
    "  mpreg members\n"
    "  mpreg catalog --kind functions\n"
    "  mpreg sub 'orders.#' --count 1 &  mpreg pub orders.eu.created hello\n"
    "\n"
    "Exit status: 0 on success, 1 when the operation failed, 2 for a bad command line.\n";

static const char *const usage_call =
    "usage: mpreg call FUN [ARG...] [options]\n"
    "\n"
    "Calls FUN somewhere in the fabric and prints its result as JSON. Each ARG\n"
    "is read as JSON when it parses as JSON (3, true, [1,2], {\"a\":1}, \"quoted\"),\n"
    "else taken as a string (hi, {, 007). JSON is kept exact or refused (exit 2):\n"
    "an integer must fit in int64 (-9223372036854775808..9223372036854775807),\n"
    "any other number in a double (1e400 is refused), object keys must be\n"
    "unique, nesting at most 28 levels. Quote to send text: '\"1e400\"'.\n"
    "Use -- before arguments that start with '--'.\n"
    "\n"
    "options:\n"
    "  --kw KEY=VALUE        a keyword argument (VALUE read like ARG); repeatable\n"
    "  --locs R1,R2          only endpoints that have all these resources\n"
    "  --function-id ID      only this function id\n"
    "  --version CONSTRAINT  a semver constraint: 1.2, >=1.0,<2.0, ==1.2.0\n"
    "  --timeout MS          the call's deadline (default 30000)\n"
    "\n"
    "examples:\n"
    "  mpreg call echo hi                     prints \"hi\"\n"
    "  mpreg call echos a '[1,2]'             prints [\"a\", [1, 2]]\n"
    "  mpreg call render --kw size=3 --locs gpu --version '>=1.0,<2.0'\n"
    "  mpreg call sleep 5000 --timeout 100    fails: error: deadline: ...\n";

static const char *const usage_request =
    "usage: mpreg request FILE|- [--timeout MS]\n"
    "\n"
    "Sends the commands in FILE (or standard input for -), a JSON list of\n"
    "  {\"name\", \"fun\", \"args\"?, \"kwargs\"?, \"locs\"?, \"function_id\"?, \"version\"?}\n"
    "or the request object of docs/PROTOCOL.md 8.6, {\"commands\": [...], \"timeout_ms\"?: N}\n"
    "(--timeout wins over its timeout_ms). The JSON is read exactly, as call's\n"
    "ARGs are: an integer beyond int64, a number beyond a double or a duplicate\n"
    "key is refused, not approximated.\n"
    "A string argument equal to another command's name (or name.field.0) stands\n"
    "for that command's result. Prints the results of the commands no other\n"
    "command used, keyed by name.\n"
    "\n"
    "example:\n"
    "  echo '[{\"name\":\"first\",\"fun\":\"echo\",\"args\":[\"hi there!\"]},\n"
    "         {\"name\":\"second\",\"fun\":\"echo\",\"args\":[\"first\"]}]' | mpreg request -\n"
    "  prints {\"second\": \"hi there!\"}\n";

static const char *const usage_pub =
    "usage: mpreg pub TOPIC DATA\n"
    "       mpreg pub TOPIC --file PATH|-\n"
    "\n"
    "Publishes DATA (its bytes, as given) or the contents of a file (- for\n"
    "standard input) to TOPIC, a dotted name without wildcards. Prints nothing.\n"
    "\n"
    "options:\n"
    "  --file PATH           publish the file's bytes\n"
    "  --timeout MS          how long the node may take to accept it\n"
    "\n"
    "example:\n"
    "  mpreg pub orders.eu.created '{\"id\": 7}'\n";

static const char *const usage_sub =
    "usage: mpreg sub PATTERN... [options]\n"
    "\n"
    "Subscribes to the patterns (dotted words; * is one word, # zero or more)\n"
    "and prints each message on its own line, as a JSON object:\n"
    "  {\"topic\": ..., \"data\": ..., \"subscription\": N}\n"
    "data is a string when the bytes are UTF-8, else {\"$bin\": \"<base64>\"};\n"
    "replayed messages carry \"replay\": true. When the node dropped messages\n"
    "for this subscriber because it did not keep up (a slow consumer), the\n"
    "next message carries \"missed\": N, the number lost just before it, and\n"
    "stderr says so; at exit stderr gives the total missed, if any.\n"
    "\n"
    "options:\n"
    "  --count N             exit after N messages\n"
    "  --group G             join queue group G: each message goes to one member\n"
    "  --replay-last N       first replay up to N retained messages\n"
    "  --replay-since MS     ... published at or after this Unix time in ms;\n"
    "                        0 replays everything the node retains (mpregd --retain)\n"
    "  --timeout MS          stop after MS milliseconds (an error if --count\n"
    "                        messages did not arrive by then)\n"
    "\n"
    "examples:\n"
    "  mpreg sub 'orders.#'\n"
    "  mpreg sub 'sensors.*.temp' --count 1 --timeout 5000\n"
    "  mpreg sub jobs.new --group workers\n";

static const char *const usage_status = "usage: mpreg status\n"
                                        "\n"
                                        "Prints the node's status (node, cluster, uptime,\n"
                                        "connections, counters) as JSON.\n"
                                        "\n"
                                        "example:\n"
                                        "  mpreg status --json | jq .node\n";

static const char *const usage_members =
    "usage: mpreg members [--json]\n"
    "\n"
    "Lists the members of the node's cluster as the node sees them, itself\n"
    "included (marked *):\n"
    "  ID           the member's node id\n"
    "  ADDR         the address members dial to reach it\n"
    "  STATE        alive, suspect (missed its probes; may still refute),\n"
    "               dead (declared failed) or left (stopped gracefully)\n"
    "  GENERATION   the member's start count: a restart is a new generation\n"
    "  INCARNATION  bumped by the member to refute a suspicion\n"
    "A member that left stays listed for 60 s after the node heard so, a dead\n"
    "one for 6 hours, while the node still tries to reach it (a partition may\n"
    "heal); then it is forgotten (mpregd --swim dead_keep_ms and\n"
    "reconnect_timeout_ms set these times). since_ms (JSON) is when the node\n"
    "saw the member enter its state.\n"
    "\n"
    "On a terminal it prints a table; with --json or when piped, the node's\n"
    "answer as JSON: {\"self\", \"members\": [{\"id\", \"addr\", \"state\",\n"
    "\"generation\", \"incarnation\", \"since_ms\"}...], \"stats\": {...}}.\n"
    "\n"
    "examples:\n"
    "  mpreg members\n"
    "  mpreg --url 127.0.0.1:6465 members --json | jq -r '.members[].state'\n";

static const char *const usage_catalog =
    "usage: mpreg catalog [--kind KIND[,KIND...]] [--json]\n"
    "\n"
    "Lists what the node knows the fabric offers, grouped by kind:\n"
    "  functions  NAME, VERSION, FUNCTION_ID, RESOURCES and the NODES serving it\n"
    "  topics     PATTERN and the NODES with subscribers to it\n"
    "  nodes      ID, NAME, CLUSTER and ENDPOINTS of every node\n"
    "  queues, caches (when the fabric has any)\n"
    "\n"
    "options:\n"
    "  --kind KIND           only these kinds: functions, topics, nodes, queues,\n"
    "                        caches (comma-separated, or repeated)\n"
    "\n"
    "On a terminal it prints tables; with --json or when piped, the node's\n"
    "answer as JSON (a map from kind to its entries, one per node), keeping\n"
    "only the kinds asked for. A catalog too big for one frame comes from the\n"
    "node in pages; all of them are fetched and printed as one.\n"
    "\n"
    "examples:\n"
    "  mpreg catalog\n"
    "  mpreg catalog --kind functions,topics\n"
    "  mpreg catalog --kind nodes --json | jq -r '.nodes[].node'\n";

/* ==== the command line ========================================================= */

typedef enum cli_cmd {
    CMD_NONE = 0,
    CMD_CALL = 1 << 0,
    CMD_REQUEST = 1 << 1,
    CMD_PUB = 1 << 2,
    CMD_SUB = 1 << 3,
    CMD_STATUS = 1 << 4,
    CMD_CATALOG = 1 << 5,
    CMD_MEMBERS = 1 << 6,
} cli_cmd;

#define CMD_ALL                                                                                    \
    (CMD_CALL | CMD_REQUEST | CMD_PUB | CMD_SUB | CMD_STATUS | CMD_CATALOG | CMD_MEMBERS)

typedef struct cli_command {
    const char *name;
    cli_cmd cmd;
    const char *usage;
} cli_command;

static const cli_command commands[] = {
    {"call", CMD_CALL, usage_call},
    {"request", CMD_REQUEST, usage_request},
    {"pub", CMD_PUB, usage_pub},
    {"sub", CMD_SUB, usage_sub},
    {"status", CMD_STATUS, usage_status},
    {"catalog", CMD_CATALOG, usage_catalog},
    {"members", CMD_MEMBERS, usage_members},
};

typedef enum cli_opt_id {
    OPT_URL,
    OPT_TOKEN,
    OPT_JSON,
    OPT_HELP,
    OPT_TIMEOUT,
    OPT_KW,
    OPT_LOCS,
    OPT_FUNCTION_ID,
    OPT_VERSION,
    OPT_FILE,
    OPT_COUNT,
    OPT_GROUP,
    OPT_REPLAY_LAST,
    OPT_REPLAY_SINCE,
    OPT_KIND,
} cli_opt_id;

typedef struct cli_opt_spec {
    const char *name;
    cli_opt_id id;
    bool has_value;
    unsigned cmds; /* where it is accepted */
} cli_opt_spec;

static const cli_opt_spec opt_specs[] = {
    {"--url", OPT_URL, true, CMD_ALL},
    {"--token", OPT_TOKEN, true, CMD_ALL},
    {"--json", OPT_JSON, false, CMD_ALL},
    {"--help", OPT_HELP, false, CMD_ALL},
    {"-h", OPT_HELP, false, CMD_ALL},
    {"--timeout", OPT_TIMEOUT, true, CMD_ALL},
    {"--kw", OPT_KW, true, CMD_CALL},
    {"--locs", OPT_LOCS, true, CMD_CALL},
    {"--function-id", OPT_FUNCTION_ID, true, CMD_CALL},
    {"--version", OPT_VERSION, true, CMD_CALL},
    {"--file", OPT_FILE, true, CMD_PUB},
    {"--count", OPT_COUNT, true, CMD_SUB},
    {"--group", OPT_GROUP, true, CMD_SUB},
    {"--replay-last", OPT_REPLAY_LAST, true, CMD_SUB},
    {"--replay-since", OPT_REPLAY_SINCE, true, CMD_SUB},
    {"--kind", OPT_KIND, true, CMD_CATALOG},
};

/* The catalog's kinds, in the order they are printed. */
static const char *const catalog_kinds[] = {"functions", "topics", "nodes", "queues", "caches"};
#define N_KINDS (sizeof catalog_kinds / sizeof catalog_kinds[0])

typedef struct cli {
    const cli_command *command;
    const char *url;
    const char *token;
    bool json;
    bool help;
    bool has_timeout;
    uint32_t timeout_ms;
    mpreg_value kwargs; /* MAP, or NIL when no --kw */
    mpreg_value args;   /* call's ARGs as values (call_args) */
    const char *locs;
    const char *function_id;
    const char *version;
    const char *file;
    uint64_t count; /* 0 = no limit */
    const char *group;
    uint64_t replay_last;
    bool has_replay_since; /* --replay-since 0 is a time: the start of retention */
    uint64_t replay_since;
    unsigned kinds;   /* catalog kinds asked for, bit i = catalog_kinds[i]; 0 = all */
    const char **pos; /* positional arguments after the command */
    size_t npos;
} cli;

static const char *prog = "mpreg";

static int usage_error(const cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const cli *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (c && c->command) {
        fprintf(stderr, "\ntry '%s %s --help'\n", prog, c->command->name);
    } else {
        fprintf(stderr, "\ntry '%s --help'\n", prog);
    }
    return EXIT_USAGE;
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out) {
    if (s == NULL || *s < '0' || *s > '9') {
        return false;
    }
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0' || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* "functions,topics": each word must be a kind. */
static int parse_kinds(cli *c, const char *val) {
    const char *p = val;
    for (;;) {
        size_t len = strcspn(p, ",");
        size_t k = 0;
        while (k < N_KINDS &&
               (strlen(catalog_kinds[k]) != len || strncmp(catalog_kinds[k], p, len) != 0)) {
            k++;
        }
        if (k == N_KINDS) {
            return usage_error(c,
                               "--kind: unknown kind '%.*s' (known: functions, topics, nodes, "
                               "queues, caches)",
                               (int)len, p);
        }
        c->kinds |= 1u << k;
        if (p[len] == '\0') {
            return 0;
        }
        p += len + 1;
    }
}

static const cli_opt_spec *find_opt(const char *arg, size_t len) {
    for (size_t i = 0; i < sizeof opt_specs / sizeof opt_specs[0]; i++) {
        if (strlen(opt_specs[i].name) == len && strncmp(opt_specs[i].name, arg, len) == 0) {
            return &opt_specs[i];
        }
    }
    return NULL;
}

static int apply_opt(cli *c, const cli_opt_spec *o, const char *val) {
    uint64_t n = 0;
    switch (o->id) {
    case OPT_URL:
        c->url = val;
        return 0;
    case OPT_TOKEN:
        c->token = val;
        return 0;
    case OPT_JSON:
        c->json = true;
        return 0;
    case OPT_HELP:
        c->help = true;
        return 0;
    case OPT_TIMEOUT:
        if (!parse_u64(val, UINT32_MAX, &n) || n == 0) {
            return usage_error(c, "--timeout: expected milliseconds (1 or more), got '%s'", val);
        }
        c->has_timeout = true;
        c->timeout_ms = (uint32_t)n;
        return 0;
    case OPT_KW: {
        char why[256];
        if (c->kwargs.type != MPREG_MAP) {
            c->kwargs = mpreg_map();
        }
        if (mp_client_kw_arg(val, &c->kwargs, why, sizeof why) != MPREG_OK) {
            return usage_error(c, "--kw: %s", why);
        }
        return 0;
    }
    case OPT_LOCS:
        c->locs = val;
        return 0;
    case OPT_FUNCTION_ID:
        c->function_id = val;
        return 0;
    case OPT_VERSION:
        c->version = val;
        return 0;
    case OPT_FILE:
        c->file = val;
        return 0;
    case OPT_COUNT:
        if (!parse_u64(val, UINT64_MAX, &c->count) || c->count == 0) {
            return usage_error(c, "--count: expected a number (1 or more), got '%s'", val);
        }
        return 0;
    case OPT_GROUP:
        c->group = val;
        return 0;
    case OPT_REPLAY_LAST:
        if (!parse_u64(val, INT64_MAX, &c->replay_last) || c->replay_last == 0) {
            return usage_error(c, "--replay-last: expected a number (1 or more), got '%s'", val);
        }
        return 0;
    case OPT_REPLAY_SINCE:
        if (!parse_u64(val, INT64_MAX, &c->replay_since)) {
            return usage_error(c,
                               "--replay-since: expected Unix milliseconds (0 = everything "
                               "retained), got '%s'",
                               val);
        }
        c->has_replay_since = true;
        return 0;
    case OPT_KIND:
        return parse_kinds(c, val);
    }
    return 0;
}

/* Reads one option at argv[*i] (advancing past its value). */
static int take_opt(cli *c, int argc, char **argv, int *i, unsigned where) {
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    const cli_opt_spec *o = find_opt(arg, len);
    if (o == NULL || !(o->cmds & where)) {
        return usage_error(c, "unknown option '%.*s'", (int)len, arg);
    }
    const char *val = NULL;
    if (o->has_value) {
        if (eq) {
            val = eq + 1;
        } else if (*i + 1 < argc) {
            val = argv[++*i];
        } else {
            return usage_error(c, "%s needs a value", o->name);
        }
    } else if (eq) {
        return usage_error(c, "%s takes no value", o->name);
    }
    return apply_opt(c, o, val);
}

static bool is_option(const char *arg) {
    return arg[0] == '-' && arg[1] != '\0' && (arg[1] == '-' || strcmp(arg, "-h") == 0);
}

/* Global options, then the command, then its arguments and options. */
static int parse_args(cli *c, int argc, char **argv, bool *version) {
    int i = 1;
    for (; i < argc && is_option(argv[i]); i++) {
        if (strcmp(argv[i], "--version") == 0) {
            *version = true;
            continue;
        }
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        int rc = take_opt(c, argc, argv, &i, CMD_STATUS); /* the options every command has */
        if (rc) {
            return rc;
        }
    }
    if (i >= argc) {
        return 0;
    }
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++) {
        if (strcmp(argv[i], commands[k].name) == 0) {
            c->command = &commands[k];
        }
    }
    if (c->command == NULL) {
        return usage_error(c, "unknown command '%s'", argv[i]);
    }
    c->pos = calloc((size_t)argc, sizeof *c->pos);
    if (c->pos == NULL) {
        return usage_error(c, "out of memory");
    }
    bool dashdash = false;
    for (i++; i < argc; i++) {
        if (!dashdash && strcmp(argv[i], "--") == 0) {
            dashdash = true;
        } else if (!dashdash && is_option(argv[i])) {
            int rc = take_opt(c, argc, argv, &i, (unsigned)c->command->cmd);
            if (rc) {
                return rc;
            }
        } else {
            c->pos[c->npos++] = argv[i];
        }
    }
    return 0;
}

/* ==== output ====================================================================== */

static bool pretty_output(const cli *c) {
    return !c->json && isatty(STDOUT_FILENO);
}

static int print_value(const cli *c, const mpreg_value *v, bool pretty) {
    (void)c;
    char *text = mpreg_value_to_json(v, pretty);
    if (text == NULL) {
        fprintf(stderr, "error: nomem: out of memory\n");
        return 1;
    }
    puts(text);
    free(text);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int print_error(const mpreg_error *err) {
    fprintf(stderr, "error: %s: %s", mpreg_err_name(err->code),
            err->message[0] ? err->message : mpreg_strerror(err->code));
    if (err->command[0]) {
        fprintf(stderr, " (command '%s')", err->command);
    }
    fputc('\n', stderr);
    if (err->details.type != MPREG_NIL) {
        char *d = mpreg_value_to_json(&err->details, false);
        if (d) {
            fprintf(stderr, "details: %s\n", d);
            free(d);
        }
    }
    return 1;
}

static int fail(mpreg_error *err) {
    print_error(err);
    mpreg_error_free(err);
    return 1;
}

static int fail_msg(mpreg_err code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail_msg(mpreg_err code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s: ", mpreg_err_name(code));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* ==== commands ====================================================================== */

/* call's ARGs as values, before anything is sent: one that has no exact
 * value is a bad command line, named by its position. */
static int call_args(cli *c) {
    c->args = mpreg_array();
    for (size_t i = 1; i < c->npos; i++) {
        mpreg_value v;
        char why[256] = "";
        mpreg_err rc = mp_client_arg_value(c->pos[i], &v, why, sizeof why);
        if (rc == MPREG_E_NOMEM || (rc == MPREG_OK && mpreg_array_push(&c->args, v))) {
            return fail_msg(MPREG_E_NOMEM, "out of memory");
        }
        if (rc != MPREG_OK) {
            return usage_error(c, "call: argument %zu ('%.40s%s'): %s", i, c->pos[i],
                               strlen(c->pos[i]) > 40 ? "..." : "", why);
        }
    }
    return 0;
}

static int cmd_call(const cli *c, mpreg_client *client) {
    mpreg_value locs = mpreg_nil(), result;
    mpreg_call_options o = {.function_id = c->function_id,
                            .version = c->version,
                            .timeout_ms = c->has_timeout ? c->timeout_ms : 0};
    const char **loc_ptrs = NULL;
    if (c->locs && mp_client_split_list(c->locs, &locs) == MPREG_OK && locs.u.arr.len) {
        loc_ptrs = calloc(locs.u.arr.len, sizeof *loc_ptrs);
        for (size_t i = 0; loc_ptrs && i < locs.u.arr.len; i++) {
            loc_ptrs[i] = locs.u.arr.items[i].u.str.ptr;
        }
        o.locs = loc_ptrs;
        o.locs_count = loc_ptrs ? locs.u.arr.len : 0;
    }
    mpreg_error err = {0};
    const mpreg_value *kw = c->kwargs.type == MPREG_MAP ? &c->kwargs : NULL;
    mpreg_err rc = mpreg_call(client, c->pos[0], &c->args, kw, &o, &result, &err);
    free(loc_ptrs);
    mpreg_value_free(&locs);
    if (rc != MPREG_OK) {
        return fail(&err);
    }
    int status = print_value(c, &result, pretty_output(c));
    mpreg_value_free(&result);
    return status;
}

/* Reads all of path ("-" = stdin) into a malloc'd, NUL-terminated buffer. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *grown = realloc(buf, cap * 2);
            if (grown == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (f != stdin) {
        fclose(f);
    }
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

/* A request file holds either the bare list of commands or the RPC_REQUEST
 * payload as PROTOCOL 8.6 shows it, {"commands": [...], "timeout_ms"?: N}:
 * people copy that example. The list is moved out of *doc into *cmds. */
static int request_commands(const char *path, mpreg_value *doc, mpreg_value *cmds,
                            uint32_t *timeout_ms) {
    if (doc->type != MPREG_MAP) {
        *cmds = *doc;
        *doc = mpreg_nil();
        return 0;
    }
    mpreg_value *list = NULL;
    for (size_t i = 0; i < doc->u.map.len; i++) {
        mpreg_kv *kv = &doc->u.map.items[i];
        const char *key = kv->key.u.str.ptr;
        if (strcmp(key, "commands") == 0) {
            list = &kv->val;
        } else if (strcmp(key, "timeout_ms") == 0) {
            if (kv->val.type != MPREG_INT || kv->val.u.i < 1 || kv->val.u.i > UINT32_MAX) {
                return fail_msg(MPREG_E_RANGE, "%s: timeout_ms must be milliseconds, 1 to %u", path,
                                UINT32_MAX);
            }
            *timeout_ms = (uint32_t)kv->val.u.i;
        } else {
            return fail_msg(MPREG_E_INVALID,
                            "%s: unknown key '%s' (a request is a list of commands or "
                            "{\"commands\": [...], \"timeout_ms\": N})",
                            path, key);
        }
    }
    if (list == NULL) {
        return fail_msg(MPREG_E_MISSING_FIELD, "%s: no \"commands\" list", path);
    }
    *cmds = *list;
    *list = mpreg_nil();
    return 0;
}

static int cmd_request(const cli *c, mpreg_client *client) {
    size_t len = 0;
    char *text = read_all(c->pos[0], &len);
    if (text == NULL) {
        return fail_msg(MPREG_E_IO, "cannot read %s: %s", c->pos[0], strerror(errno));
    }
    mpreg_value doc, cmds, results;
    char why[256] = "";
    bool is_json = false; /* a request is JSON either way: the flag is not needed */
    mpreg_err rc = mp_value_from_json_exact(text, len, &doc, &is_json, why, sizeof why);
    free(text);
    if (rc != MPREG_OK) {
        return fail_msg(rc, "%s: %s", c->pos[0], why[0] ? why : mpreg_strerror(rc));
    }
    uint32_t timeout_ms = 0; /* the file's, unless --timeout says otherwise */
    int status = request_commands(c->pos[0], &doc, &cmds, &timeout_ms);
    mpreg_value_free(&doc);
    if (status != 0) {
        return status;
    }
    mpreg_error err = {0};
    rc = mpreg_request(client, &cmds, c->has_timeout ? c->timeout_ms : timeout_ms, &results, &err);
    mpreg_value_free(&cmds);
    if (rc != MPREG_OK) {
        return fail(&err);
    }
    status = print_value(c, &results, pretty_output(c));
    mpreg_value_free(&results);
    return status;
}

static int cmd_pub(const cli *c, mpreg_client *client) {
    bool from_file = c->file != NULL;
    size_t len = 0;
    char *file_data = NULL;
    const char *data = NULL;
    if (from_file) {
        file_data = read_all(c->file, &len);
        if (file_data == NULL) {
            return fail_msg(MPREG_E_IO, "cannot read %s: %s", c->file, strerror(errno));
        }
        data = file_data;
    } else {
        data = c->pos[1];
        len = strlen(data);
    }
    mpreg_error err = {0};
    mpreg_err rc = mpreg_publish(client, c->pos[0], data, len, &err);
    free(file_data);
    return rc == MPREG_OK ? 0 : fail(&err);
}

typedef struct sub_state {
    const cli *c;
    uint64_t seen;
    uint64_t sub_id;
    uint64_t missed; /* in all: messages the node (or the client) dropped for us */
    int status;
} sub_state;

static volatile sig_atomic_t interrupted = 0;

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

static void on_message(const mpreg_message *msg, void *ud) {
    sub_state *s = ud;
    if (s->c->count && s->seen >= s->c->count) {
        return; /* the rest of a batch that arrived together */
    }
    if (msg->missed) {
        /* Said on stderr, in JSON mode too: stdout stays one message per
         * line, and that line carries "missed" for scripts. */
        s->missed += msg->missed;
        fprintf(stderr, "mpreg: subscription %llu missed %llu messages (slow consumer)\n",
                (unsigned long long)msg->subscription, (unsigned long long)msg->missed);
    }
    mpreg_value v;
    if (mp_client_message_value(msg, &v) != MPREG_OK) {
        s->status = fail_msg(MPREG_E_NOMEM, "out of memory");
        return;
    }
    /* One message per line, always: a stream is read line by line. */
    if (print_value(s->c, &v, false) != 0) {
        s->status = 1;
    }
    mpreg_value_free(&v);
    s->seen++;
}

static bool sub_done(const sub_state *s) {
    return s->status != 0 || interrupted || (s->c->count && s->seen >= s->c->count);
}

/* cmd_sub's receiving, until done: its exit status. */
static int sub_loop(const cli *c, mpreg_client *client, sub_state *s) {
    mpreg_error err = {0};
    uint64_t deadline = c->has_timeout ? mp_sysclock_mono_ms() + c->timeout_ms : 0;
    while (!sub_done(s)) {
        int slice = 250; /* wake up now and then to notice signals */
        if (deadline) {
            uint64_t now = mp_sysclock_mono_ms();
            if (now >= deadline) {
                break;
            }
            slice = deadline - now < (uint64_t)slice ? (int)(deadline - now) : slice;
        }
        int n = mpreg_poll(client, slice);
        if (n < 0) {
            mpreg_value status;
            /* Say why, in the words the client has for it. */
            if (mpreg_status(client, &status, &err) == MPREG_OK) {
                mpreg_value_free(&status);
            }
            return err.code ? fail(&err) : fail_msg(MPREG_E_CLOSED, "connection closed");
        }
    }
    if (s->status != 0) {
        return s->status;
    }
    if (c->count && s->seen < c->count && !interrupted) {
        return fail_msg(MPREG_E_TIMEOUT, "%llu of %llu messages within %u ms",
                        (unsigned long long)s->seen, (unsigned long long)c->count,
                        (unsigned)c->timeout_ms);
    }
    return 0;
}

static int cmd_sub(const cli *c, mpreg_client *client) {
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sub_state s = {.c = c};
    mpreg_subscribe_options o = {.group = c->group,
                                 .replay_last = c->replay_last,
                                 .has_replay_since = c->has_replay_since,
                                 .replay_since_ms = c->replay_since};
    mpreg_error err = {0};
    mpreg_err rc = mpreg_subscribe_ex(client, c->pos, c->npos, &o, on_message, &s, &s.sub_id, &err);
    if (rc != MPREG_OK) {
        return fail(&err);
    }
    int status = sub_loop(c, client, &s);
    /* However it ends: what was lost, in all, is the last word. */
    if (s.missed) {
        fprintf(stderr, "mpreg: subscription %llu missed %llu messages in all (slow consumer)\n",
                (unsigned long long)s.sub_id, (unsigned long long)s.missed);
    }
    return status;
}

static int cmd_status(const cli *c, mpreg_client *client) {
    mpreg_value out;
    mpreg_error err = {0};
    if (mpreg_status(client, &out, &err) != MPREG_OK) {
        return fail(&err);
    }
    int status = print_value(c, &out, pretty_output(c));
    mpreg_value_free(&out);
    return status;
}

/* ==== tables ========================================================================= */

/* Rows of text cells, printed with aligned columns. Cells are copied; out of
 * memory is remembered and reported once, at print time. */
typedef struct text_table {
    size_t ncols;
    char **cells; /* row after row */
    size_t ncells;
    size_t cap;
    bool nomem;
} text_table;

static void table_cell(text_table *t, const char *text) {
    if (t->nomem) {
        return;
    }
    if (MP_VEC_GROW(t->cells, t->cap, t->ncells + 1, 64) != MPREG_OK) {
        t->nomem = true;
        return;
    }
    char *copy = strdup(text != NULL && text[0] != '\0' ? text : "-");
    if (copy == NULL) {
        t->nomem = true;
        return;
    }
    t->cells[t->ncells++] = copy;
}

/* Takes a malloc'd cell (NULL = out of memory). */
static void table_cell_owned(text_table *t, char *text) {
    if (text == NULL) {
        t->nomem = true;
        return;
    }
    table_cell(t, text);
    free(text);
}

static void table_free(text_table *t) {
    for (size_t i = 0; i < t->ncells; i++) {
        free(t->cells[i]);
    }
    free(t->cells);
    *t = (text_table){0};
}

/* Display width: UTF-8 continuation bytes take no column. */
static size_t text_width(const char *s) {
    size_t w = 0;
    for (; *s != '\0'; s++) {
        w += ((unsigned char)*s & 0xc0) != 0x80;
    }
    return w;
}

/* Prints the table (its first row is the header) with two spaces between
 * columns; the last column is not padded. */
static int table_print(const text_table *t, const char *indent) {
    if (t->nomem || t->ncols == 0) {
        return fail_msg(MPREG_E_NOMEM, "out of memory");
    }
    size_t *width = calloc(t->ncols, sizeof *width);
    if (width == NULL) {
        return fail_msg(MPREG_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < t->ncells; i++) {
        size_t w = text_width(t->cells[i]);
        width[i % t->ncols] = w > width[i % t->ncols] ? w : width[i % t->ncols];
    }
    for (size_t i = 0; i < t->ncells; i++) {
        size_t col = i % t->ncols;
        if (col == 0) {
            fputs(indent, stdout);
        }
        fputs(t->cells[i], stdout);
        if (col + 1 < t->ncols) {
            printf("%*s", (int)(width[col] - text_width(t->cells[i]) + 2), "");
        } else {
            putchar('\n');
        }
    }
    free(width);
    return 0;
}

/* ---- reading the node's answers ---------------------------------------------------- */

static const char *field_str(const mpreg_value *m, const char *key) {
    const mpreg_value *v = m != NULL && m->type == MPREG_MAP ? mpreg_map_get(m, key) : NULL;
    return v != NULL && v->type == MPREG_STR ? v->u.str.ptr : NULL;
}

/* A scalar as text, an array as its items joined with ", ", malloc'd. A
 * missing field is "" (printed as "-"); anything else as compact JSON. */
static char *value_text(const mpreg_value *v) {
    if (v == NULL || v->type == MPREG_NIL) {
        return strdup("");
    }
    if (v->type == MPREG_STR) {
        return strdup(v->u.str.ptr);
    }
    if (v->type == MPREG_INT) {
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)v->u.i);
        return strdup(buf);
    }
    if (v->type != MPREG_ARRAY) {
        return mpreg_value_to_json(v, false);
    }
    size_t cap = 1, len = 0;
    char *out = calloc(1, 1);
    for (size_t i = 0; out != NULL && i < v->u.arr.len; i++) {
        char *item = value_text(&v->u.arr.items[i]);
        if (item == NULL) {
            free(out);
            return NULL;
        }
        size_t n = strlen(item);
        char *grown = realloc(out, cap + n + 2);
        if (grown == NULL) {
            free(item);
            free(out);
            return NULL;
        }
        out = grown;
        cap += n + 2;
        len += (size_t)sprintf(out + len, "%s%s", i > 0 ? ", " : "", item);
        free(item);
    }
    return out;
}

static char *field_text(const mpreg_value *m, const char *key) {
    return value_text(m != NULL && m->type == MPREG_MAP ? mpreg_map_get(m, key) : NULL);
}

/* An answer's list under key: the array, or NULL when absent or not one. */
static const mpreg_value *field_list(const mpreg_value *m, const char *key) {
    const mpreg_value *v = m != NULL && m->type == MPREG_MAP ? mpreg_map_get(m, key) : NULL;
    return v != NULL && v->type == MPREG_ARRAY ? v : NULL;
}

/* ==== members ======================================================================== */

static int print_members(const mpreg_value *v) {
    const mpreg_value *list = field_list(v, "members");
    if (list == NULL) {
        return fail_msg(MPREG_E_DECODE, "the node's answer has no member list");
    }
    const char *self = field_str(v, "self");
    const char *cluster = field_str(v, "cluster");
    static const char *const states[] = {"alive", "suspect", "dead", "left"};
    size_t count[4] = {0};
    text_table t = {.ncols = 5};
    const char *head[] = {"ID", "ADDR", "STATE", "GENERATION", "INCARNATION"};
    for (size_t i = 0; i < 5; i++) {
        table_cell(&t, head[i]);
    }
    for (size_t i = 0; i < list->u.arr.len; i++) {
        const mpreg_value *m = &list->u.arr.items[i];
        const char *id = field_str(m, "id");
        bool is_self = id != NULL && self != NULL && strcmp(id, self) == 0;
        char *id_text = NULL;
        if (asprintf(&id_text, "%s%s", id != NULL ? id : "?", is_self ? " *" : "") < 0) {
            id_text = NULL;
        }
        table_cell_owned(&t, id_text);
        table_cell_owned(&t, field_text(m, "addr"));
        table_cell_owned(&t, field_text(m, "state"));
        table_cell_owned(&t, field_text(m, "generation"));
        table_cell_owned(&t, field_text(m, "incarnation"));
        const char *state = field_str(m, "state");
        for (size_t k = 0; state != NULL && k < 4; k++) {
            count[k] += strcmp(state, states[k]) == 0;
        }
    }
    if (cluster != NULL && self != NULL) {
        printf("cluster %s, as %s sees it:\n", cluster, self);
    }
    int status = table_print(&t, "");
    table_free(&t);
    if (status == 0) {
        printf("%zu member%s: %zu alive, %zu suspect, %zu dead, %zu left\n", list->u.arr.len,
               list->u.arr.len == 1 ? "" : "s", count[0], count[1], count[2], count[3]);
    }
    return status != 0 || fflush(stdout) != 0 ? 1 : 0;
}

static int cmd_members(const cli *c, mpreg_client *client) {
    mpreg_value out;
    mpreg_error err = {0};
    if (mpreg_members(client, &out, &err) != MPREG_OK) {
        return fail(&err);
    }
    int status = pretty_output(c) ? print_members(&out) : print_value(c, &out, false);
    mpreg_value_free(&out);
    return status;
}

/* ==== catalog ======================================================================== */

/* One row of a grouped kind: the entries that differ only by node. */
typedef struct entry_ref {
    const mpreg_value *entry;
    char *key; /* the grouping fields, joined; malloc'd */
} entry_ref;

static int cmp_entry_ref(const void *a, const void *b) {
    const entry_ref *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c != 0) {
        return c;
    }
    const char *nx = field_str(x->entry, "node"), *ny = field_str(y->entry, "node");
    return strcmp(nx != NULL ? nx : "", ny != NULL ? ny : "");
}

/* Groups entries that agree on every field in `fields` (one row each) and
 * lists the nodes that hold them in the last column. */
static void add_grouped(text_table *t, const mpreg_value *list, const char *const *fields,
                        size_t nfields) {
    size_t n = list->u.arr.len;
    entry_ref *refs = calloc(n ? n : 1, sizeof *refs);
    if (refs == NULL) {
        t->nomem = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        refs[i].entry = &list->u.arr.items[i];
        /* Fields joined with a byte no field text contains. */
        size_t len = 0;
        char *key = calloc(1, 1);
        for (size_t f = 0; key != NULL && f < nfields; f++) {
            char *text = field_text(refs[i].entry, fields[f]);
            char *grown = text != NULL ? realloc(key, len + strlen(text) + 2) : NULL;
            if (grown == NULL) {
                free(text);
                free(key);
                key = NULL;
                break;
            }
            key = grown;
            len += (size_t)sprintf(key + len, "%s\x1f", text);
            free(text);
        }
        if (key == NULL) {
            t->nomem = true;
        }
        refs[i].key = key != NULL ? key : strdup("");
    }
    if (!t->nomem) {
        qsort(refs, n, sizeof *refs, cmp_entry_ref);
    }
    for (size_t i = 0; i < n && !t->nomem;) {
        size_t j = i;
        mpreg_value nodes = mpreg_array();
        for (; j < n && strcmp(refs[j].key, refs[i].key) == 0; j++) {
            const char *node = field_str(refs[j].entry, "node");
            if (mpreg_array_push(&nodes, mpreg_str(node != NULL ? node : "?")) != MPREG_OK) {
                t->nomem = true;
            }
        }
        for (size_t f = 0; f < nfields; f++) {
            table_cell_owned(t, field_text(refs[i].entry, fields[f]));
        }
        table_cell_owned(t, value_text(&nodes));
        mpreg_value_free(&nodes);
        i = j;
    }
    for (size_t i = 0; i < n; i++) {
        free(refs[i].key);
    }
    free(refs);
}

/* Kinds the CLI has no layout for: a column per field, in the order the
 * fields first appear. */
static void add_generic(text_table *t, const mpreg_value *list, const char ***headers) {
    const char **cols = NULL;
    size_t ncols = 0;
    for (size_t i = 0; i < list->u.arr.len; i++) {
        const mpreg_value *e = &list->u.arr.items[i];
        for (size_t k = 0; e->type == MPREG_MAP && k < e->u.map.len; k++) {
            const char *name = e->u.map.items[k].key.u.str.ptr;
            size_t c = 0;
            while (c < ncols && strcmp(cols[c], name) != 0) {
                c++;
            }
            if (c == ncols) {
                const char **grown = realloc(cols, (ncols + 1) * sizeof *cols);
                if (grown == NULL) {
                    t->nomem = true;
                    free(cols);
                    return;
                }
                cols = grown;
                cols[ncols++] = name;
            }
        }
    }
    t->ncols = ncols;
    for (size_t c = 0; c < ncols; c++) {
        char *upper = strdup(cols[c]);
        for (char *p = upper; p != NULL && *p != '\0'; p++) {
            *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
        }
        table_cell_owned(t, upper);
    }
    for (size_t i = 0; i < list->u.arr.len; i++) {
        for (size_t c = 0; c < ncols; c++) {
            table_cell_owned(t, field_text(&list->u.arr.items[i], cols[c]));
        }
    }
    *headers = cols;
}

/* One section: "functions (3)", then its table, or "(none)". */
static int print_kind(const char *kind, const mpreg_value *list) {
    static const char *const fn_fields[] = {"name", "version", "function_id", "resources"};
    static const char *const fn_head[] = {"NAME", "VERSION", "FUNCTION_ID", "RESOURCES", "NODES"};
    static const char *const topic_fields[] = {"pattern"};
    static const char *const topic_head[] = {"PATTERN", "NODES"};
    static const char *const node_fields[] = {"node", "name", "cluster", "endpoints"};
    static const char *const node_head[] = {"ID", "NAME", "CLUSTER", "ENDPOINTS"};
    text_table t = {0};
    const char **generic_cols = NULL;
    bool empty = list == NULL || list->u.arr.len == 0;
    if (!empty && strcmp(kind, "functions") == 0) {
        t.ncols = 5;
        for (size_t i = 0; i < 5; i++) {
            table_cell(&t, fn_head[i]);
        }
        add_grouped(&t, list, fn_fields, 4);
    } else if (!empty && strcmp(kind, "topics") == 0) {
        t.ncols = 2;
        for (size_t i = 0; i < 2; i++) {
            table_cell(&t, topic_head[i]);
        }
        add_grouped(&t, list, topic_fields, 1);
    } else if (!empty && strcmp(kind, "nodes") == 0) {
        t.ncols = 4;
        for (size_t i = 0; i < 4; i++) {
            table_cell(&t, node_head[i]);
        }
        for (size_t i = 0; i < list->u.arr.len; i++) {
            for (size_t f = 0; f < 4; f++) {
                table_cell_owned(&t, field_text(&list->u.arr.items[i], node_fields[f]));
            }
        }
    } else if (!empty) {
        add_generic(&t, list, &generic_cols);
    }
    int status = 0;
    size_t rows = t.ncols > 0 ? t.ncells / t.ncols : 0;
    printf("%s (%zu)\n", kind, rows > 0 ? rows - 1 : 0);
    if (rows == 0) {
        printf("  (none)\n");
    } else {
        status = table_print(&t, "  ");
    }
    free(generic_cols);
    table_free(&t);
    return status;
}

static bool kind_wanted(const cli *c, size_t k) {
    return c->kinds == 0 || (c->kinds & (1u << k)) != 0;
}

/* The answer with only the kinds asked for; a kind the node did not send is
 * an empty list, so that a script can count on the key. */
static mpreg_err filter_kinds(const cli *c, const mpreg_value *v, mpreg_value *out) {
    if (c->kinds == 0) {
        return mpreg_value_clone(v, out);
    }
    *out = mpreg_map();
    for (size_t k = 0; k < N_KINDS; k++) {
        if (!kind_wanted(c, k)) {
            continue;
        }
        const mpreg_value *list = field_list(v, catalog_kinds[k]);
        mpreg_value copy = mpreg_array();
        mpreg_err err = list != NULL ? mpreg_value_clone(list, &copy) : MPREG_OK;
        err = err ? err : mpreg_map_set(out, catalog_kinds[k], copy);
        if (err) {
            mpreg_value_free(out);
            return err;
        }
    }
    return MPREG_OK;
}

static int cmd_catalog(const cli *c, mpreg_client *client) {
    /* The node leaves out the kinds not asked for, and pages a catalog too
     * big for one frame; the library fetches every page. */
    const char *kinds[N_KINDS];
    mpreg_catalog_options o = {.kinds = kinds};
    for (size_t k = 0; k < N_KINDS && c->kinds != 0; k++) {
        if (kind_wanted(c, k)) {
            kinds[o.kinds_count++] = catalog_kinds[k];
        }
    }
    mpreg_value out;
    mpreg_error err = {0};
    if (mpreg_catalog_ex(client, &o, &out, &err) != MPREG_OK) {
        return fail(&err);
    }
    int status = 0;
    if (pretty_output(c)) {
        bool first = true;
        for (size_t k = 0; k < N_KINDS && status == 0; k++) {
            const mpreg_value *list = field_list(&out, catalog_kinds[k]);
            /* Kinds the node does not know yet are left out unless asked for. */
            if (!kind_wanted(c, k) || (list == NULL && c->kinds == 0)) {
                continue;
            }
            if (!first) {
                putchar('\n');
            }
            first = false;
            status = print_kind(catalog_kinds[k], list);
        }
        status = status != 0 || fflush(stdout) != 0 ? 1 : 0;
    } else {
        mpreg_value filtered;
        if (filter_kinds(c, &out, &filtered) != MPREG_OK) {
            status = fail_msg(MPREG_E_NOMEM, "out of memory");
        } else {
            status = print_value(c, &filtered, false);
            mpreg_value_free(&filtered);
        }
    }
    mpreg_value_free(&out);
    return status;
}

/* ==== main ========================================================================== */

/* The arguments each command needs, checked before we connect. */
static int check_arity(const cli *c) {
    switch (c->command->cmd) {
    case CMD_CALL:
        return c->npos >= 1 ? 0 : usage_error(c, "call: which function?");
    case CMD_REQUEST:
        return c->npos == 1
                   ? 0
                   : usage_error(c, "request: expected one FILE (or - for standard input)");
    case CMD_PUB:
        if (c->file) {
            return c->npos == 1 ? 0 : usage_error(c, "pub: expected TOPIC with --file");
        }
        return c->npos == 2 ? 0 : usage_error(c, "pub: expected TOPIC and DATA");
    case CMD_SUB:
        return c->npos >= 1 ? 0 : usage_error(c, "sub: expected at least one PATTERN");
    default:
        return c->npos == 0 ? 0 : usage_error(c, "%s takes no arguments", c->command->name);
    }
}

static int run(const cli *c) {
    mpreg_client_options o = {.name = "mpreg-cli",
                              .token = c->token ? c->token : getenv("MPREG_TOKEN")};
    if (c->has_timeout && c->command->cmd != CMD_SUB) {
        o.timeout_ms = c->timeout_ms;
    }
    const char *url = c->url ? c->url : getenv("MPREG_URL");
    if (url == NULL || url[0] == '\0') {
        url = MPREG_DEFAULT_URL;
    }
    mpreg_error err = {0};
    mpreg_client *client = mpreg_connect(url, &o, &err);
    if (client == NULL) {
        return fail(&err);
    }
    int status;
    switch (c->command->cmd) {
    case CMD_CALL:
        status = cmd_call(c, client);
        break;
    case CMD_REQUEST:
        status = cmd_request(c, client);
        break;
    case CMD_PUB:
        status = cmd_pub(c, client);
        break;
    case CMD_SUB:
        status = cmd_sub(c, client);
        break;
    case CMD_MEMBERS:
        status = cmd_members(c, client);
        break;
    case CMD_CATALOG:
        status = cmd_catalog(c, client);
        break;
    default:
        status = cmd_status(c, client);
        break;
    }
    mpreg_close(client);
    return status;
}

int main(int argc, char **argv) {
    cli c = {0};
    bool version = false;
    int status = parse_args(&c, argc, argv, &version);
    if (status == 0) {
        if (version) {
            printf("mpreg %s\n", MPREG_VERSION);
        } else if (c.help || c.command == NULL) {
            if (c.command == NULL && !c.help) {
                fputs(usage_main, stderr);
                status = EXIT_USAGE;
            } else {
                fputs(c.command ? c.command->usage : usage_main, stdout);
            }
        } else {
            status = check_arity(&c);
            if (status == 0 && c.command->cmd == CMD_CALL) {
                status = call_args(&c);
            }
            status = status ? status : run(&c);
        }
    }
    mpreg_value_free(&c.kwargs);
    mpreg_value_free(&c.args);
    free(c.pos);
    return status;
}
