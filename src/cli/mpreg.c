/* mpreg.c - the command-line client.
 *
 *     mpreg call echo hi                 -> "hi"
 *     mpreg request commands.json
 *     mpreg pub orders.eu.created '{"id": 7}'
 *     mpreg sub 'orders.#' --count 10
 *     mpreg status
 *
 * A thin shell over libmpreg's blocking client: parse the command line,
 * connect, do one thing, print JSON. Output is pretty JSON on a terminal and
 * compact JSON otherwise (or with --json), so that scripts can pipe it into
 * jq. Errors go to stderr as "error: <name>: <message>" with exit status 1;
 * a command line that makes no sense exits with 2 and a hint. */
#define _GNU_SOURCE
#include "mpreg/client.h"
#include "mpreg/value.h"
#include "runtime/client_proto.h"

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
    "  call FUN [ARG...]     call a function and print its result\n"
    "  request FILE|-        send a request of several commands (a JSON list)\n"
    "  pub TOPIC DATA        publish a message\n"
    "  sub PATTERN...        print messages published to matching topics\n"
    "  status                print the node's status\n"
    "  catalog               print the node's catalog\n"
    "\n"
    "global options (anywhere on the line):\n"
    "  --url HOST:PORT       the node to talk to (default: $MPREG_URL, else " MPREG_DEFAULT_URL
    ")\n"
    "  --json                compact JSON output (the default when stdout is not a terminal)\n"
    "  --token TOKEN         when the node requires one (default: $MPREG_TOKEN)\n"
    "  --timeout MS          how long to wait (see each command)\n"
    "  -h, --help            help; 'mpreg COMMAND --help' for a command's\n"
    "  --version             print the version (before the command)\n"
    "\n"
    "examples:\n"
    "  mpreg call echo hi\n"
    "  mpreg --url 10.0.0.5:6464 status\n"
    "  mpreg sub 'orders.#' --count 1 &  mpreg pub orders.eu.created hello\n"
    "\n"
    "Exit status: 0 on success, 1 when the operation failed, 2 for a bad command line.\n";

static const char *const usage_call =
    "usage: mpreg call FUN [ARG...] [options]\n"
    "\n"
    "Calls FUN somewhere in the fabric and prints its result as JSON. Each ARG\n"
    "is read as JSON when it parses as JSON (3, true, [1,2], {\"a\":1}, \"quoted\"),\n"
    "else taken as a string. Use -- before arguments that start with '--'.\n"
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
    "replayed messages carry \"replay\": true.\n"
    "\n"
    "options:\n"
    "  --count N             exit after N messages\n"
    "  --group G             join queue group G: each message goes to one member\n"
    "  --replay-last N       first replay up to N retained messages\n"
    "  --replay-since MS     ... published at or after this Unix time in ms\n"
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

static const char *const usage_catalog = "usage: mpreg catalog\n"
                                         "\n"
                                         "Prints the catalog the node knows (functions,\n"
                                         "subscriptions, nodes) as JSON.\n"
                                         "\n"
                                         "example:\n"
                                         "  mpreg catalog\n";

/* ==== the command line ========================================================= */

typedef enum cli_cmd {
    CMD_NONE = 0,
    CMD_CALL = 1 << 0,
    CMD_REQUEST = 1 << 1,
    CMD_PUB = 1 << 2,
    CMD_SUB = 1 << 3,
    CMD_STATUS = 1 << 4,
    CMD_CATALOG = 1 << 5,
} cli_cmd;

#define CMD_ALL (CMD_CALL | CMD_REQUEST | CMD_PUB | CMD_SUB | CMD_STATUS | CMD_CATALOG)

typedef struct cli_command {
    const char *name;
    cli_cmd cmd;
    const char *usage;
} cli_command;

static const cli_command commands[] = {
    {"call", CMD_CALL, usage_call},       {"request", CMD_REQUEST, usage_request},
    {"pub", CMD_PUB, usage_pub},          {"sub", CMD_SUB, usage_sub},
    {"status", CMD_STATUS, usage_status}, {"catalog", CMD_CATALOG, usage_catalog},
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
};

typedef struct cli {
    const cli_command *command;
    const char *url;
    const char *token;
    bool json;
    bool help;
    bool has_timeout;
    uint32_t timeout_ms;
    mpreg_value kwargs; /* MAP, or NIL when no --kw */
    const char *locs;
    const char *function_id;
    const char *version;
    const char *file;
    uint64_t count; /* 0 = no limit */
    const char *group;
    uint64_t replay_last;
    uint64_t replay_since;
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
        if (!parse_u64(val, UINT64_MAX, &c->replay_last) || c->replay_last == 0) {
            return usage_error(c, "--replay-last: expected a number (1 or more), got '%s'", val);
        }
        return 0;
    case OPT_REPLAY_SINCE:
        if (!parse_u64(val, UINT64_MAX, &c->replay_since)) {
            return usage_error(c, "--replay-since: expected Unix milliseconds, got '%s'", val);
        }
        return 0;
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

static int cmd_call(const cli *c, mpreg_client *client) {
    mpreg_value args = mpreg_array(), locs = mpreg_nil(), result;
    for (size_t i = 1; i < c->npos; i++) {
        mpreg_value v;
        if (mp_client_arg_value(c->pos[i], &v) != MPREG_OK || mpreg_array_push(&args, v)) {
            mpreg_value_free(&args);
            return fail_msg(MPREG_E_NOMEM, "out of memory");
        }
    }
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
    mpreg_err rc = mpreg_call(client, c->pos[0], &args, kw, &o, &result, &err);
    free(loc_ptrs);
    mpreg_value_free(&locs);
    mpreg_value_free(&args);
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

static int cmd_request(const cli *c, mpreg_client *client) {
    size_t len = 0;
    char *text = read_all(c->pos[0], &len);
    if (text == NULL) {
        return fail_msg(MPREG_E_IO, "cannot read %s: %s", c->pos[0], strerror(errno));
    }
    mpreg_value cmds, results;
    char why[256] = "";
    mpreg_err rc = mpreg_value_from_json(text, len, &cmds, why, sizeof why);
    free(text);
    if (rc != MPREG_OK) {
        return fail_msg(rc, "%s: %s", c->pos[0], why[0] ? why : mpreg_strerror(rc));
    }
    mpreg_error err = {0};
    rc = mpreg_request(client, &cmds, c->has_timeout ? c->timeout_ms : 0, &results, &err);
    mpreg_value_free(&cmds);
    if (rc != MPREG_OK) {
        return fail(&err);
    }
    int status = print_value(c, &results, pretty_output(c));
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

static int cmd_sub(const cli *c, mpreg_client *client) {
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sub_state s = {.c = c};
    mpreg_subscribe_options o = {
        .group = c->group, .replay_last = c->replay_last, .replay_since_ms = c->replay_since};
    mpreg_error err = {0};
    mpreg_err rc = mpreg_subscribe_ex(client, c->pos, c->npos, &o, on_message, &s, NULL, &err);
    if (rc != MPREG_OK) {
        return fail(&err);
    }
    uint64_t deadline = c->has_timeout ? mp_client_mono_ms() + c->timeout_ms : 0;
    while (!sub_done(&s)) {
        int slice = 250; /* wake up now and then to notice signals */
        if (deadline) {
            uint64_t now = mp_client_mono_ms();
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
    if (s.status != 0) {
        return s.status;
    }
    if (c->count && s.seen < c->count && !interrupted) {
        return fail_msg(MPREG_E_TIMEOUT, "%llu of %llu messages within %u ms",
                        (unsigned long long)s.seen, (unsigned long long)c->count,
                        (unsigned)c->timeout_ms);
    }
    return 0;
}

static int cmd_control(const cli *c, mpreg_client *client) {
    mpreg_value out;
    mpreg_error err = {0};
    mpreg_err rc = c->command->cmd == CMD_STATUS ? mpreg_status(client, &out, &err)
                                                 : mpreg_catalog(client, &out, &err);
    if (rc != MPREG_OK) {
        return fail(&err);
    }
    int status = print_value(c, &out, pretty_output(c));
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
    default:
        status = cmd_control(c, client);
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
            status = status ? status : run(&c);
        }
    }
    mpreg_value_free(&c.kwargs);
    free(c.pos);
    return status;
}
