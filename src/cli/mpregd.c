/* mpregd.c - the node daemon.
 *
 * Reads its settings (flags, then a JSON config file under them), prepares
 * the data directory (locks it and bumps the node's incarnation there),
 * creates the server (runtime/server.h), listens, creates the node (after
 * listening, so that the address it advertises to cluster members names
 * the port actually bound), loads plugins into the node's registry, says
 * where it listens, and runs until SIGINT or SIGTERM.
 *
 * Exit status: 0 after a graceful stop, 1 when the node could not start
 * (port in use, data dir, plugin), 2 for a usage error (bad flag or config). */
#define _GNU_SOURCE

#include "core/addr.h"
#include "core/envelope.h"
#include "core/frame.h"
#include "fabric/entry.h"
#include "fabric/membership.h"
#include "runtime/server.h"
#include "runtime/transport.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MPREG_VERSION
#define MPREG_VERSION "0.0.0"
#endif

#define MP_DEFAULT_LISTEN "127.0.0.1:6464"
#define MP_DEFAULT_CLUSTER "default"
#define MP_MIN_FRAME 1024u
#define MP_MAX_FRAME MP_TRANSPORT_DEFAULT_HARD_LIMIT
#define MP_TOKEN_MAX 1024u
#define MP_HOST_MAX 256u
#define MP_MAX_RETAIN 1000000u
#define MP_MAX_PEER_CONNS 100000u
#define MP_MIN_CATALOG_TTL_MS 1000u

#define MP_EXIT_FAIL 1
#define MP_EXIT_USAGE 2

static const char *mp_prog = "mpregd";

/* ---- settings --------------------------------------------------------------- */

typedef struct mp_list {
    char **items;
    size_t len;
    bool set; /* given at all (an empty list in a config file counts) */
} mp_list;

/* ---- limits ----------------------------------------------------------------- */

/* Everything a client can make the node hold is bounded (docs/PROTOCOL.md
 * §7.7); these are the bounds, by the name --limit and the config file's
 * "limits" use. The node's own and the transport's, in one table. */
typedef struct mp_limits {
    mp_node_limits node;
    uint64_t output_high_water;
    uint64_t output_hard_limit;
    uint64_t read_timeout_ms;
    uint64_t partial_bytes;
} mp_limits;

typedef struct mp_limit_field {
    const char *name;
    size_t offset;     /* in mp_limits */
    size_t size;       /* 4 or 8 */
    uint64_t min, max; /* allowed values */
    bool bytes;        /* accepts K, M, G suffixes */
    const char *help;  /* the default and what it bounds, for --help */
} mp_limit_field;

#define MP_LIMIT_NODE(f, lo, hi, is_bytes, text)                                                   \
    {                                                                                              \
#f, offsetof(mp_limits, node) + offsetof(mp_node_limits, f),                               \
            sizeof(((mp_node_limits *)0)->f), lo, hi, is_bytes, text                               \
    }
#define MP_LIMIT_DRIVER(f, lo, hi, is_bytes, text)                                                 \
    { #f, offsetof(mp_limits, f), sizeof(uint64_t), lo, hi, is_bytes, text }
static const mp_limit_field mp_limit_fields[] = {
    MP_LIMIT_NODE(conns, 1, 1000000, false, "10000: connections at once"),
    MP_LIMIT_NODE(subs_per_conn, 1, UINT32_MAX, false, "10000: subscriptions, one conn."),
    MP_LIMIT_NODE(subs_per_node, 1, UINT32_MAX, false, "100000: subscriptions, all"),
    MP_LIMIT_NODE(patterns_per_conn, 1, UINT32_MAX, false, "4096: patterns, one connection"),
    MP_LIMIT_NODE(patterns_per_node, 1, UINT32_MAX, false, "100000: patterns, all"),
    MP_LIMIT_NODE(functions_per_conn, 1, UINT32_MAX, false, "256: functions, one worker"),
    MP_LIMIT_NODE(functions_per_node, 1, UINT32_MAX, false, "10000: functions, all workers"),
    MP_LIMIT_NODE(requests_per_conn, 1, UINT32_MAX, false, "1024: RPCs in flight, one conn."),
    MP_LIMIT_NODE(requests_per_node, 1, UINT32_MAX, false, "16384: RPCs in flight, all"),
    MP_LIMIT_NODE(request_bytes, 1024, UINT64_MAX / 4, true, "16M: results one RPC holds"),
    MP_LIMIT_NODE(results_bytes, 1024, UINT64_MAX / 4, true, "256M: results all RPCs hold"),
    MP_LIMIT_NODE(tombstones, 1000, UINT32_MAX, false, "200000: withdrawn entries kept"),
    MP_LIMIT_DRIVER(output_high_water, 4096, UINT64_MAX / 8, true,
                    "8M: unsent output: stop reading"),
    MP_LIMIT_DRIVER(output_hard_limit, 4096, UINT64_MAX / 8, true, "64M: unsent output: close"),
    MP_LIMIT_DRIVER(read_timeout_ms, 100, UINT32_MAX, false, "30000: silence inside a frame"),
    MP_LIMIT_DRIVER(partial_bytes, 65536, UINT64_MAX / 8, true, "256M: half-read frames, all"),
};
#define MP_LIMIT_COUNT (sizeof mp_limit_fields / sizeof mp_limit_fields[0])

static const mp_limit_field *mp_limit_field_find(const char *name, size_t len) {
    for (size_t i = 0; i < MP_LIMIT_COUNT; i++) {
        if (strlen(mp_limit_fields[i].name) == len &&
            strncmp(mp_limit_fields[i].name, name, len) == 0) {
            return &mp_limit_fields[i];
        }
    }
    return NULL;
}

/* The names, comma separated, for messages. */
static const char *mp_limit_names(void) {
    static char buf[512];
    if (buf[0] == '\0') {
        size_t n = 0;
        for (size_t i = 0; i < MP_LIMIT_COUNT; i++) {
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", i ? ", " : "",
                                  mp_limit_fields[i].name);
        }
    }
    return buf;
}

static void mp_usage_limits(FILE *out) {
    for (size_t i = 0; i < MP_LIMIT_COUNT; i++) {
        fprintf(out, "                            %-19s %s\n", mp_limit_fields[i].name,
                mp_limit_fields[i].help);
    }
}

/* Everything a user can set, as text, from one source (the flags or the
 * config file). NULL / unset = not given there. */
typedef struct mp_settings {
    char *config;
    char *listen;
    char *port_file;
    char *name;
    char *cluster;
    char *data_dir;
    mp_list resources;
    mp_list plugins;
    char *token;
    char *max_frame;
    char *retain;
    char *log_level;
    mp_list peers;
    char *advertise;
    mp_list swim;   /* "FIELD=VALUE", applied in order: the file's, then the flags' */
    mp_list limits; /* "NAME=VALUE" (--limit), the same way */
    char *max_peer_conns;
    char *catalog_ttl;
    char *tombstone_ttl;
} mp_settings;

/* The settings checked and resolved, defaults applied. */
/* The node's identity key: random bytes kept in DATA_DIR/node_key (hex). */
#define MP_NODE_KEY_BYTES 16

typedef struct mp_options {
    char host[MP_HOST_MAX]; /* as given (brackets kept), for "listening on" */
    uint16_t port;
    const char *port_file;
    char name[MP_MAX_NAME_LEN + 1];
    const char *cluster;
    char *data_dir; /* owned */
    const char **resources;
    uint32_t resource_count;
    const mp_list *plugins;
    const char *token;
    uint32_t max_frame;
    uint32_t retain;
    mp_log_level log_level;
    const char **seeds; /* --peer addresses, deduplicated */
    uint32_t seed_count;
    char advertise[MP_SWIM_MAX_ID + 1]; /* "" until given or derived from the bound address */
    mp_swim_config swim;
    uint32_t max_peer_conns;   /* 0 = the node's default */
    uint32_t catalog_ttl_ms;   /* 0 = the node's default */
    uint32_t tombstone_ttl_ms; /* 0 = the catalog's default */
    mp_limits limits;
    uint8_t node_key[MP_NODE_KEY_BYTES]; /* DATA_DIR/node_key */
} mp_options;

static void mp_oom(void) {
    fprintf(stderr, "%s: out of memory\n", mp_prog);
    exit(MP_EXIT_FAIL);
}

static char *mp_xstrdup(const char *s) {
    char *d = strdup(s);
    if (d == NULL) {
        mp_oom();
    }
    return d;
}

static void mp_set(char **slot, const char *value) {
    free(*slot);
    *slot = mp_xstrdup(value);
}

static void mp_list_push(mp_list *l, const char *value) {
    char **items = realloc(l->items, (l->len + 1) * sizeof *items);
    if (items == NULL) {
        mp_oom();
    }
    l->items = items;
    l->items[l->len++] = mp_xstrdup(value);
    l->set = true;
}

static void mp_list_free(mp_list *l) {
    for (size_t i = 0; i < l->len; i++) {
        free(l->items[i]);
    }
    free(l->items);
    *l = (mp_list){0};
}

static void mp_settings_free(mp_settings *s) {
    char **strs[] = {&s->config,      &s->listen,       &s->port_file, &s->name,
                     &s->cluster,     &s->data_dir,     &s->token,     &s->max_frame,
                     &s->retain,      &s->log_level,    &s->advertise, &s->max_peer_conns,
                     &s->catalog_ttl, &s->tombstone_ttl};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        free(*strs[i]);
        *strs[i] = NULL;
    }
    mp_list_free(&s->resources);
    mp_list_free(&s->plugins);
    mp_list_free(&s->peers);
    mp_list_free(&s->swim);
    mp_list_free(&s->limits);
}

/* ---- usage ------------------------------------------------------------------ */

static void mp_usage(FILE *out) {
    fprintf(out,
            "Usage: %s [OPTION]...\n"
            "Runs one mpreg node: RPC and pub/sub over one TCP port.\n"
            "\n"
            "  -c, --config FILE       read settings from a JSON file; flags given on the\n"
            "                          command line win over it (keys below)\n"
            "  -l, --listen HOST:PORT  address to listen on (default " MP_DEFAULT_LISTEN ");\n"
            "                          port 0 picks a free port; IPv6 as [::1]:6464;\n"
            "                          0.0.0.0 listens on every IPv4 interface\n"
            "      --port-file PATH    once listening, write the bound port (and a newline)\n"
            "                          to PATH, atomically; removed at exit (default: none)\n"
            "  -n, --name NAME         node name, unique in the fabric: letters, digits,\n"
            "                          '.', '_', '-' (default: node-<8 random hex digits>)\n"
            "      --cluster ID        cluster id, same characters (default \"" MP_DEFAULT_CLUSTER
            "\")\n"
            "  -d, --data-dir DIR      the node's state; created if missing (default\n"
            "                          $XDG_DATA_HOME/mpreg/NAME or ~/.local/share/mpreg/NAME)\n"
            "  -r, --resource NAME     a resource the node's functions offer, for callers'\n"
            "                          locs (repeatable; default: none)\n"
            "  -p, --plugin PATH       load a plugin .so, which registers functions through\n"
            "                          mpreg_plugin_init (repeatable; default: none)\n"
            "      --token TOKEN       clients must present TOKEN in HELLO (default:\n"
            "                          $MPREG_TOKEN, else none); a flag is visible to\n"
            "                          other users in ps: prefer $MPREG_TOKEN or the\n"
            "                          config file's \"token\"\n"
            "      --max-frame BYTES   largest frame received or sent; K and M suffixes\n"
            "                          (1K to 64M; default 8M)\n"
            "      --retain N          keep the last N messages of each topic, for\n"
            "                          subscribers that ask for a replay (default 0: none)\n"
            "      --log-level LEVEL   error, warn, info or debug (default info)\n"
            "      --limit NAME=VALUE  what clients may make the node hold (repeatable);\n"
            "                          a client over one gets ERROR 505 limit naming it;\n"
            "                          a client that does not read its answers is not read\n"
            "                          (stop reading), then closed with an ERROR (close).\n"
            "                          Sizes take K, M, G. NAME (default: what it bounds):\n",
            mp_prog);
    mp_usage_limits(out);
    fprintf(out,
            "  -h, --help              show this help and exit\n"
            "  -V, --version           show the version and exit\n"
            "\n"
            "Clustering (nodes with the same --cluster find each other through any member):\n"
            "      --peer HOST:PORT    a member to join through (repeatable; any one live\n"
            "                          member is enough; default: none, a cluster of one\n"
            "                          that others may join)\n"
            "      --advertise HOST:PORT\n"
            "                          the address other members dial to reach this node\n"
            "                          (default: the bound --listen address, with 0.0.0.0\n"
            "                          or :: replaced by 127.0.0.1; give it when members\n"
            "                          run on other machines)\n"
            "      --swim FIELD=VALUE  tune membership (repeatable), in milliseconds or\n"
            "                          counts: probe_interval_ms (1000), probe_timeout_ms\n"
            "                          (500), indirect_checks (3), suspicion_mult (4),\n"
            "                          retransmit_mult (6), gossip_interval_ms (200),\n"
            "                          gossip_nodes (3), push_pull_interval_ms (30000),\n"
            "                          dead_keep_ms (60000: how long a member that left\n"
            "                          stays listed), max_piggyback_bytes (16384),\n"
            "                          reconnect_timeout_ms (21600000: how long a dead\n"
            "                          member stays listed and is still tried),\n"
            "                          reconnect_interval_ms (10000: how often one is\n"
            "                          tried); probe_timeout_ms must stay below\n"
            "                          probe_interval_ms\n"
            "      --max-peer-conns N  peer connections kept open at most (default 64)\n"
            "      --catalog-ttl MS    other nodes' catalog entries expire this long after\n"
            "                          the membership last listed their node alive or\n"
            "                          suspect (default: 3 push-pull intervals, 90000\n"
            "                          with the default push_pull_interval_ms; at least\n"
            "                          1000)\n"
            "      --tombstone-ttl MS  how long withdrawn catalog entries are remembered,\n"
            "                          so that late copies cannot bring them back; their\n"
            "                          memory is held that long (default 300000; at\n"
            "                          least 1000)\n"
            "\n"
            "Once listening it prints \"listening on HOST:PORT\" on stdout. Logs go to\n"
            "stderr. SIGINT or SIGTERM stops it gracefully (a member of a cluster first\n"
            "tells the others it is leaving, which takes at most a second); a second\n"
            "signal exits at once. Each start bumps the node's incarnation, kept in\n"
            "DIR/incarnation: members take a restarted node back at once. DIR/node_key\n"
            "(made on the first start) tells this node from another process started\n"
            "under the same --name with another data dir: while this one is alive,\n"
            "members refuse that one (both log why, at warn; it keeps trying, and is\n"
            "let in once this one is dead or left).\n"
            "\n"
            "The config file is a JSON object with the keys listen, port_file, name,\n"
            "cluster, data_dir, token, log_level, advertise (strings), max_frame (a\n"
            "number or a string like \"1M\"), retain, max_peer_conns, catalog_ttl_ms and\n"
            "tombstone_ttl_ms (numbers), resources, plugins and peers (arrays of\n"
            "strings), swim (an object of the --swim fields, numbers) and limits (an\n"
            "object of the --limit names: numbers, or strings like \"16M\"); '-' may\n"
            "stand for '_'. A setting given as a flag replaces the file's (a list\n"
            "too); --swim and --limit fields override the file's one by one. Relative\n"
            "paths are relative to the working directory. For example:\n"
            "  {\"listen\": \"0.0.0.0:6464\", \"name\": \"n1\", \"resources\": [\"gpu\"],\n"
            "   \"plugins\": [\"./hello_plugin.so\"], \"log_level\": \"debug\",\n"
            "   \"peers\": [\"10.0.0.2:6464\"], \"advertise\": \"10.0.0.1:6464\",\n"
            "   \"swim\": {\"probe_interval_ms\": 500, \"probe_timeout_ms\": 200}}\n"
            "\n"
            "Examples:\n"
            "  %s\n"
            "  %s --listen 127.0.0.1:0 --port-file /tmp/mpregd.port --data-dir /tmp/n1\n"
            "  %s --name n1 --resource gpu --plugin build/examples/plugin/hello_plugin.so\n"
            "\n"
            "A cluster of three nodes on one machine (one shell each, or add '&'):\n"
            "  %s --name n1 --listen 127.0.0.1:6464 --data-dir /tmp/mpreg/n1\n"
            "  %s --name n2 --listen 127.0.0.1:6465 --data-dir /tmp/mpreg/n2 \\\n"
            "         --peer 127.0.0.1:6464\n"
            "  %s --name n3 --listen 127.0.0.1:6466 --data-dir /tmp/mpreg/n3 \\\n"
            "         --peer 127.0.0.1:6464\n"
            "  mpreg --url 127.0.0.1:6466 members   # n1, n2 and n3, all alive\n",
            mp_prog, mp_prog, mp_prog, mp_prog, mp_prog, mp_prog);
}

/* A usage error: the problem, a hint, exit 2. */
static void mp_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void mp_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", mp_prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", mp_prog);
    exit(MP_EXIT_USAGE);
}

/* ---- flags ------------------------------------------------------------------ */

enum {
    MP_OPT_PORT_FILE = 256,
    MP_OPT_CLUSTER,
    MP_OPT_TOKEN,
    MP_OPT_MAX_FRAME,
    MP_OPT_RETAIN,
    MP_OPT_LOG_LEVEL,
    MP_OPT_PEER,
    MP_OPT_ADVERTISE,
    MP_OPT_SWIM,
    MP_OPT_MAX_PEER_CONNS,
    MP_OPT_CATALOG_TTL,
    MP_OPT_LIMIT,
    MP_OPT_TOMBSTONE_TTL,
};

static const struct option mp_long_options[] = {
    {"config", required_argument, NULL, 'c'},
    {"listen", required_argument, NULL, 'l'},
    {"port-file", required_argument, NULL, MP_OPT_PORT_FILE},
    {"name", required_argument, NULL, 'n'},
    {"cluster", required_argument, NULL, MP_OPT_CLUSTER},
    {"data-dir", required_argument, NULL, 'd'},
    {"resource", required_argument, NULL, 'r'},
    {"plugin", required_argument, NULL, 'p'},
    {"token", required_argument, NULL, MP_OPT_TOKEN},
    {"max-frame", required_argument, NULL, MP_OPT_MAX_FRAME},
    {"retain", required_argument, NULL, MP_OPT_RETAIN},
    {"log-level", required_argument, NULL, MP_OPT_LOG_LEVEL},
    {"peer", required_argument, NULL, MP_OPT_PEER},
    {"advertise", required_argument, NULL, MP_OPT_ADVERTISE},
    {"swim", required_argument, NULL, MP_OPT_SWIM},
    {"max-peer-conns", required_argument, NULL, MP_OPT_MAX_PEER_CONNS},
    {"catalog-ttl", required_argument, NULL, MP_OPT_CATALOG_TTL},
    {"limit", required_argument, NULL, MP_OPT_LIMIT},
    {"tombstone-ttl", required_argument, NULL, MP_OPT_TOMBSTONE_TTL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* The option as the user wrote it, for messages about it: "--name" (without
 * any "=value") or "-x". */
static const char *mp_bad_option(char **argv, int optopt_value) {
    static char buf[64];
    const char *arg = argv[optind - 1];
    if (strncmp(arg, "--", 2) == 0) {
        snprintf(buf, sizeof buf, "%.*s", (int)strcspn(arg, "="), arg);
    } else {
        snprintf(buf, sizeof buf, "-%c", optopt_value);
    }
    return buf;
}

static void mp_parse_flags(int argc, char **argv, mp_settings *f) {
    opterr = 0; /* our own messages, with the usage hint */
    int c;
    while ((c = getopt_long(argc, argv, ":c:l:n:d:r:p:hV", mp_long_options, NULL)) != -1) {
        switch (c) {
        case 'c':
            mp_set(&f->config, optarg);
            break;
        case 'l':
            mp_set(&f->listen, optarg);
            break;
        case MP_OPT_PORT_FILE:
            mp_set(&f->port_file, optarg);
            break;
        case 'n':
            mp_set(&f->name, optarg);
            break;
        case MP_OPT_CLUSTER:
            mp_set(&f->cluster, optarg);
            break;
        case 'd':
            mp_set(&f->data_dir, optarg);
            break;
        case 'r':
            mp_list_push(&f->resources, optarg);
            break;
        case 'p':
            mp_list_push(&f->plugins, optarg);
            break;
        case MP_OPT_TOKEN:
            mp_set(&f->token, optarg);
            break;
        case MP_OPT_MAX_FRAME:
            mp_set(&f->max_frame, optarg);
            break;
        case MP_OPT_RETAIN:
            mp_set(&f->retain, optarg);
            break;
        case MP_OPT_LOG_LEVEL:
            mp_set(&f->log_level, optarg);
            break;
        case MP_OPT_PEER:
            mp_list_push(&f->peers, optarg);
            break;
        case MP_OPT_ADVERTISE:
            mp_set(&f->advertise, optarg);
            break;
        case MP_OPT_SWIM:
            mp_list_push(&f->swim, optarg);
            break;
        case MP_OPT_MAX_PEER_CONNS:
            mp_set(&f->max_peer_conns, optarg);
            break;
        case MP_OPT_CATALOG_TTL:
            mp_set(&f->catalog_ttl, optarg);
            break;
        case MP_OPT_TOMBSTONE_TTL:
            mp_set(&f->tombstone_ttl, optarg);
            break;
        case MP_OPT_LIMIT:
            mp_list_push(&f->limits, optarg);
            break;
        case 'h':
            mp_usage(stdout);
            exit(0);
        case 'V':
            printf("%s %s\n", mp_prog, MPREG_VERSION);
            exit(0);
        case ':':
            mp_usage_error("option '%s' needs an argument", mp_bad_option(argv, optopt));
        default:
            mp_usage_error("unknown option '%s'", mp_bad_option(argv, optopt));
        }
    }
    if (optind < argc) {
        mp_usage_error("unexpected argument '%s' (every setting is an option)", argv[optind]);
    }
}

/* ---- config file ---------------------------------------------------------- */

/* A config key in canonical form ('-' read as '_'), or NULL when too long. */
static const char *mp_config_key(const char *key, char *buf, size_t size) {
    size_t n = strlen(key);
    if (n >= size) {
        return NULL;
    }
    for (size_t i = 0; i <= n; i++) {
        buf[i] = key[i] == '-' ? '_' : key[i];
    }
    return buf;
}

static void mp_config_string(const char *path, const char *key, json_t *v, char **slot) {
    if (!json_is_string(v)) {
        mp_usage_error("config %s: \"%s\" must be a string", path, key);
    }
    mp_set(slot, json_string_value(v));
}

static void mp_config_list(const char *path, const char *key, json_t *v, mp_list *l) {
    if (!json_is_array(v)) {
        mp_usage_error("config %s: \"%s\" must be an array of strings", path, key);
    }
    l->set = true;
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        if (!json_is_string(item)) {
            mp_usage_error("config %s: \"%s\"[%zu] must be a string", path, key, i);
        }
        mp_list_push(l, json_string_value(item));
    }
}

/* A number, or a string such as "8M". */
static void mp_config_number(const char *path, const char *key, json_t *v, char **slot) {
    if (json_is_integer(v)) {
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        mp_set(slot, buf);
        return;
    }
    if (!json_is_string(v)) {
        mp_usage_error("config %s: \"%s\" must be a number", path, key);
    }
    mp_set(slot, json_string_value(v));
}

/* The membership settings --swim and the config file's "swim" may set. */
typedef struct mp_swim_field {
    const char *name;
    size_t offset; /* of its uint32_t in mp_swim_config */
} mp_swim_field;

#define MP_SWIM_FIELD(f)                                                                           \
    { #f, offsetof(mp_swim_config, f) }
static const mp_swim_field mp_swim_fields[] = {
    MP_SWIM_FIELD(probe_interval_ms),    MP_SWIM_FIELD(probe_timeout_ms),
    MP_SWIM_FIELD(indirect_checks),      MP_SWIM_FIELD(suspicion_mult),
    MP_SWIM_FIELD(retransmit_mult),      MP_SWIM_FIELD(gossip_interval_ms),
    MP_SWIM_FIELD(gossip_nodes),         MP_SWIM_FIELD(push_pull_interval_ms),
    MP_SWIM_FIELD(dead_keep_ms),         MP_SWIM_FIELD(max_piggyback_bytes),
    MP_SWIM_FIELD(reconnect_timeout_ms), MP_SWIM_FIELD(reconnect_interval_ms),
};
#define MP_SWIM_FIELD_NAMES                                                                        \
    "probe_interval_ms, probe_timeout_ms, indirect_checks, suspicion_mult, retransmit_mult, "      \
    "gossip_interval_ms, gossip_nodes, push_pull_interval_ms, dead_keep_ms, max_piggyback_bytes, " \
    "reconnect_timeout_ms, reconnect_interval_ms"

static const mp_swim_field *mp_swim_field_find(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof mp_swim_fields / sizeof mp_swim_fields[0]; i++) {
        if (strlen(mp_swim_fields[i].name) == len &&
            strncmp(mp_swim_fields[i].name, name, len) == 0) {
            return &mp_swim_fields[i];
        }
    }
    return NULL;
}

/* A config object of named numbers ("swim", "limits"), kept as NAME=VALUE
 * items like the repeatable flag it stands for, and checked with the
 * flags. */
typedef struct mp_config_fields_kind {
    const char *what;    /* "membership settings" */
    const char *example; /* "{\"probe_interval_ms\": 500}" */
    bool (*known)(const char *name);
    const char *(*names)(void);
    bool sizes; /* values may be strings such as "16M" */
} mp_config_fields_kind;

static void mp_config_fields(const char *path, const char *key, json_t *v, mp_list *l,
                             const mp_config_fields_kind *k) {
    if (!json_is_object(v)) {
        mp_usage_error("config %s: \"%s\" must be an object of %s, e.g. %s", path, key, k->what,
                       k->example);
    }
    l->set = true;
    const char *field;
    json_t *value;
    json_object_foreach(v, field, value) {
        char buf[64];
        const char *name = mp_config_key(field, buf, sizeof buf);
        if (name == NULL || !k->known(name)) {
            mp_usage_error("config %s: \"%s\": unknown field \"%s\" (known: %s)", path, key, field,
                           k->names());
        }
        char item[128];
        if (json_is_integer(value) && json_integer_value(value) >= 0 &&
            (k->sizes || json_integer_value(value) <= UINT32_MAX)) {
            snprintf(item, sizeof item, "%s=%lld", name, (long long)json_integer_value(value));
        } else if (k->sizes && json_is_string(value) && strlen(json_string_value(value)) < 32) {
            snprintf(item, sizeof item, "%s=%s", name, json_string_value(value));
        } else if (k->sizes) {
            mp_usage_error("config %s: \"%s\".\"%s\" must be a number (sizes may be a string "
                           "such as \"16M\")",
                           path, key, field);
        } else {
            mp_usage_error("config %s: \"%s\".\"%s\" must be a number from 0 to %u", path, key,
                           field, UINT32_MAX);
        }
        mp_list_push(l, item);
    }
}

static bool mp_swim_known(const char *name) {
    return mp_swim_field_find(name, strlen(name)) != NULL;
}

static const char *mp_swim_names(void) {
    return MP_SWIM_FIELD_NAMES;
}

static bool mp_limit_known(const char *name) {
    return mp_limit_field_find(name, strlen(name)) != NULL;
}

static const mp_config_fields_kind mp_swim_kind = {
    "membership settings", "{\"probe_interval_ms\": 500}", mp_swim_known, mp_swim_names, false};
static const mp_config_fields_kind mp_limits_kind = {"limits", "{\"subs_per_conn\": 100}",
                                                     mp_limit_known, mp_limit_names, true};

static void mp_config_entry(const char *path, const char *raw_key, json_t *v, mp_settings *c) {
    char buf[32];
    const char *key = mp_config_key(raw_key, buf, sizeof buf);
    struct {
        const char *key;
        char **slot;
    } strings[] = {
        {"listen", &c->listen},       {"port_file", &c->port_file}, {"name", &c->name},
        {"cluster", &c->cluster},     {"data_dir", &c->data_dir},   {"token", &c->token},
        {"log_level", &c->log_level}, {"advertise", &c->advertise},
    };
    for (size_t i = 0; key != NULL && i < sizeof strings / sizeof strings[0]; i++) {
        if (strcmp(key, strings[i].key) == 0) {
            mp_config_string(path, raw_key, v, strings[i].slot);
            return;
        }
    }
    if (key != NULL && strcmp(key, "resources") == 0) {
        mp_config_list(path, raw_key, v, &c->resources);
    } else if (key != NULL && strcmp(key, "plugins") == 0) {
        mp_config_list(path, raw_key, v, &c->plugins);
    } else if (key != NULL && strcmp(key, "max_frame") == 0) {
        mp_config_number(path, raw_key, v, &c->max_frame);
    } else if (key != NULL && strcmp(key, "retain") == 0) {
        mp_config_number(path, raw_key, v, &c->retain);
    } else if (key != NULL && strcmp(key, "peers") == 0) {
        mp_config_list(path, raw_key, v, &c->peers);
    } else if (key != NULL && strcmp(key, "max_peer_conns") == 0) {
        mp_config_number(path, raw_key, v, &c->max_peer_conns);
    } else if (key != NULL && strcmp(key, "catalog_ttl_ms") == 0) {
        mp_config_number(path, raw_key, v, &c->catalog_ttl);
    } else if (key != NULL && strcmp(key, "tombstone_ttl_ms") == 0) {
        mp_config_number(path, raw_key, v, &c->tombstone_ttl);
    } else if (key != NULL && strcmp(key, "swim") == 0) {
        mp_config_fields(path, raw_key, v, &c->swim, &mp_swim_kind);
    } else if (key != NULL && strcmp(key, "limits") == 0) {
        mp_config_fields(path, raw_key, v, &c->limits, &mp_limits_kind);
    } else {
        mp_usage_error("config %s: unknown key \"%s\" (known: listen, port_file, name, cluster, "
                       "data_dir, resources, plugins, token, max_frame, retain, log_level, "
                       "peers, advertise, swim, limits, max_peer_conns, catalog_ttl_ms, "
                       "tombstone_ttl_ms)",
                       path, raw_key);
    }
}

static void mp_load_config(const char *path, mp_settings *c) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        if (jerr.line < 0) { /* could not read the file at all */
            mp_usage_error("config %s: %s", path, jerr.text);
        }
        mp_usage_error("config %s: line %d column %d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        mp_usage_error("config %s: expected a JSON object at the top", path);
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        mp_config_entry(path, key, v, c);
    }
    json_decref(root);
}

/* The file's value where the flags have none (taking it). */
static void mp_take(char **flag, char **file) {
    if (*flag == NULL) {
        *flag = *file;
        *file = NULL;
    }
}

static void mp_take_list(mp_list *flag, mp_list *file) {
    if (!flag->set) {
        mp_list_free(flag);
        *flag = *file;
        *file = (mp_list){0};
    }
}

/* $MPREG_TOKEN stands in for --token: a flag's value is visible to every
 * user in ps, the environment only to the owner. The flag still wins; the
 * environment wins over the config file, as a flag would. */
static void mp_token_from_env(mp_settings *flags) {
    const char *env = getenv("MPREG_TOKEN");
    if (flags->token == NULL && env != NULL && env[0] != '\0') {
        mp_set(&flags->token, env);
    }
}

/* Flags win: a setting given on the command line replaces the file's. */
static void mp_merge(mp_settings *flags, mp_settings *file) {
    mp_take(&flags->listen, &file->listen);
    mp_take(&flags->port_file, &file->port_file);
    mp_take(&flags->name, &file->name);
    mp_take(&flags->cluster, &file->cluster);
    mp_take(&flags->data_dir, &file->data_dir);
    mp_take(&flags->token, &file->token);
    mp_take(&flags->max_frame, &file->max_frame);
    mp_take(&flags->retain, &file->retain);
    mp_take(&flags->log_level, &file->log_level);
    mp_take(&flags->advertise, &file->advertise);
    mp_take(&flags->max_peer_conns, &file->max_peer_conns);
    mp_take(&flags->catalog_ttl, &file->catalog_ttl);
    mp_take(&flags->tombstone_ttl, &file->tombstone_ttl);
    mp_take_list(&flags->resources, &file->resources);
    mp_take_list(&flags->plugins, &file->plugins);
    mp_take_list(&flags->peers, &file->peers);
    /* Membership fields merge one by one: the file's first, so that a flag
     * applied later wins over the same field from the file. */
    for (size_t i = 0; i < flags->swim.len; i++) {
        mp_list_push(&file->swim, flags->swim.items[i]);
    }
    mp_list_free(&flags->swim);
    flags->swim = file->swim;
    file->swim = (mp_list){0};
    for (size_t i = 0; i < flags->limits.len; i++) {
        mp_list_push(&file->limits, flags->limits.items[i]);
    }
    mp_list_free(&flags->limits);
    flags->limits = file->limits;
    file->limits = (mp_list){0};
}

/* ---- checking ------------------------------------------------------------- */

/* "HOST:PORT" or "[V6]:PORT". */
static void mp_check_listen(const char *text, mp_options *o) {
    const char *colon;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':') {
            mp_usage_error("--listen '%s': expected [IPV6]:PORT", text);
        }
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL) {
            mp_usage_error("--listen '%s': expected HOST:PORT, e.g. 127.0.0.1:6464", text);
        }
        if (memchr(text, ':', (size_t)(colon - text)) != NULL) {
            mp_usage_error("--listen '%s': write an IPv6 address in brackets, e.g. [::1]:6464",
                           text);
        }
    }
    size_t host_len = (size_t)(colon - text);
    if (host_len == 0 || (text[0] == '[' && host_len == 2)) {
        mp_usage_error("--listen '%s': missing host (0.0.0.0 listens on every interface)", text);
    }
    if (host_len >= sizeof o->host) {
        mp_usage_error("--listen '%s': host too long", text);
    }
    if (!mp_port_parse(colon + 1, strlen(colon + 1), true, &o->port)) {
        mp_usage_error("--listen '%s': port must be a number from 0 to 65535", text);
    }
    memcpy(o->host, text, host_len);
    o->host[host_len] = '\0';
}

/* Names become directory names and travel in every envelope: keep them to
 * characters that are safe everywhere. */
static void mp_check_name(const char *what, const char *text) {
    size_t n = strlen(text);
    if (n == 0 || n > MP_MAX_NAME_LEN) {
        mp_usage_error("%s '%s': must be 1 to %u characters", what, text, MP_MAX_NAME_LEN);
    }
    if (text[0] == '.') {
        mp_usage_error("%s '%s': must not start with '.'", what, text);
    }
    for (size_t i = 0; i < n; i++) {
        char ch = text[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok) {
            mp_usage_error("%s '%s': only letters, digits, '.', '_' and '-' are allowed", what,
                           text);
        }
    }
}

/* "8388608", "512K", "8M" (binary multiples). */
static void mp_check_max_frame(const char *text, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    bool ok = end != text && text[0] != '-' && errno == 0;
    unsigned long long mult = 1;
    if (ok && (*end == 'k' || *end == 'K')) {
        mult = 1024;
        end++;
    } else if (ok && (*end == 'm' || *end == 'M')) {
        mult = 1024 * 1024;
        end++;
    }
    if (!ok || *end != '\0') {
        mp_usage_error("--max-frame '%s': expected a number of bytes, e.g. 8388608 or 8M", text);
    }
    if (v > MP_MAX_FRAME / mult || v * mult < MP_MIN_FRAME) {
        mp_usage_error("--max-frame '%s': must be from 1K to %uM", text,
                       (unsigned)(MP_MAX_FRAME >> 20));
    }
    *out = (uint32_t)(v * mult);
}

static void mp_check_retain(const char *text, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || text[0] == '-' || errno != 0 || v > MP_MAX_RETAIN) {
        mp_usage_error("--retain '%s': expected a number of messages from 0 to %u", text,
                       MP_MAX_RETAIN);
    }
    *out = (uint32_t)v;
}

static void mp_check_resources(const mp_list *l, mp_options *o) {
    if (l->len > MP_ENTRY_MAX_RESOURCES) {
        mp_usage_error("--resource: at most %u resources", MP_ENTRY_MAX_RESOURCES);
    }
    o->resources = calloc(l->len + 1, sizeof *o->resources);
    if (o->resources == NULL) {
        mp_oom();
    }
    for (size_t i = 0; i < l->len; i++) {
        const char *r = l->items[i];
        size_t n = strlen(r);
        if (n == 0 || n > MP_ENTRY_MAX_STR || !mpreg_utf8_valid(r, n)) {
            mp_usage_error("--resource '%s': must be 1 to %u bytes of UTF-8", r, MP_ENTRY_MAX_STR);
        }
        bool seen = false; /* a repeated resource is the same resource */
        for (uint32_t j = 0; j < o->resource_count; j++) {
            seen = seen || strcmp(o->resources[j], r) == 0;
        }
        if (!seen) {
            o->resources[o->resource_count++] = r;
        }
    }
}

/* A member's address: HOST:PORT or [IPV6]:PORT, a real port, short enough
 * for membership messages. */
static void mp_check_member_addr(const char *what, const char *text) {
    char host[MP_TRANSPORT_HOST_MAX];
    uint16_t port = 0;
    if (strlen(text) > MP_SWIM_MAX_ID) {
        mp_usage_error("%s '%s': at most %u characters", what, text, MP_SWIM_MAX_ID);
    }
    if (mp_transport_split_addr(text, false, host, &port) != MPREG_OK) {
        mp_usage_error("%s '%s': expected HOST:PORT with a port from 1 to 65535, e.g. "
                       "127.0.0.1:6464 (IPv6 as [::1]:6464)",
                       what, text);
    }
}

static bool mp_unspecified_host(const char *host) {
    return strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 || strcmp(host, "[::]") == 0;
}

static void mp_check_peers(const mp_list *l, mp_options *o) {
    o->seeds = calloc(l->len + 1, sizeof *o->seeds);
    if (o->seeds == NULL) {
        mp_oom();
    }
    for (size_t i = 0; i < l->len; i++) {
        const char *p = l->items[i];
        mp_check_member_addr("--peer", p);
        bool seen = false; /* the same seed twice is one seed */
        for (uint32_t j = 0; j < o->seed_count; j++) {
            seen = seen || strcmp(o->seeds[j], p) == 0;
        }
        if (!seen) {
            o->seeds[o->seed_count++] = p;
        }
    }
}

static void mp_check_advertise(const char *text, mp_options *o) {
    mp_check_member_addr("--advertise", text);
    char host[MP_TRANSPORT_HOST_MAX];
    uint16_t port = 0;
    (void)mp_transport_split_addr(text, false, host, &port);
    if (mp_unspecified_host(host)) {
        mp_usage_error("--advertise '%s': other members cannot dial %s; give an address of this "
                       "machine they can reach",
                       text, host);
    }
    snprintf(o->advertise, sizeof o->advertise, "%s", text);
}

/* The '=' of a repeatable flag's NAME=VALUE item; a usage error without. */
static const char *mp_item_eq(const char *flag, const char *item, const char *form) {
    const char *eq = strchr(item, '=');
    if (eq == NULL) {
        mp_usage_error("%s '%s': expected %s", flag, item, form);
    }
    return eq;
}

/* Each FIELD=VALUE over the defaults, in order, then the whole checked:
 * some limits tie two fields together (probe_timeout_ms < probe_interval_ms). */
static void mp_check_swim(const mp_list *l, mp_options *o) {
    mp_swim_config_default(&o->swim);
    for (size_t i = 0; i < l->len; i++) {
        const char *item = l->items[i];
        const char *eq = mp_item_eq("--swim", item, "FIELD=VALUE, e.g. probe_interval_ms=500");
        const mp_swim_field *f = mp_swim_field_find(item, (size_t)(eq - item));
        if (f == NULL) {
            mp_usage_error("--swim '%s': unknown field '%.*s' (known: " MP_SWIM_FIELD_NAMES ")",
                           item, (int)(eq - item), item);
        }
        char *end;
        errno = 0;
        unsigned long long v = strtoull(eq + 1, &end, 10);
        if (end == eq + 1 || *end != '\0' || eq[1] == '-' || errno != 0 || v > UINT32_MAX) {
            mp_usage_error("--swim '%s': %s must be a number from 0 to %u", item, f->name,
                           UINT32_MAX);
        }
        uint32_t u = (uint32_t)v;
        memcpy((char *)&o->swim + f->offset, &u, sizeof u);
    }
    const char *why = NULL;
    char msg[256] = "";
    mpreg_err err = mp_swim_config_explain(&o->swim, &why, msg, sizeof msg);
    if (err != MPREG_OK) {
        mp_usage_error("--swim: %s", msg[0] ? msg : mpreg_strerror(err));
    }
}

static void mp_check_max_peer_conns(const char *text, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || text[0] == '-' || errno != 0 || v == 0 ||
        v > MP_MAX_PEER_CONNS) {
        mp_usage_error("--max-peer-conns '%s': expected a number of connections from 1 to %u", text,
                       MP_MAX_PEER_CONNS);
    }
    *out = (uint32_t)v;
}

static void mp_check_catalog_ttl(const char *text, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || text[0] == '-' || errno != 0 || v < MP_MIN_CATALOG_TTL_MS ||
        v > UINT32_MAX) {
        mp_usage_error("--catalog-ttl '%s': expected milliseconds from %u to %u", text,
                       MP_MIN_CATALOG_TTL_MS, UINT32_MAX);
    }
    *out = (uint32_t)v;
}

/* "16M", "512K", "2G", "1000": a number with an optional binary suffix
 * (sizes only). false when it does not parse or overflows. */
static bool mp_parse_amount(const char *text, bool bytes, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || text[0] == '-' || errno != 0) {
        return false;
    }
    uint64_t mult = 1;
    if (bytes && (*end == 'k' || *end == 'K')) {
        mult = 1024;
        end++;
    } else if (bytes && (*end == 'm' || *end == 'M')) {
        mult = 1024 * 1024;
        end++;
    } else if (bytes && (*end == 'g' || *end == 'G')) {
        mult = 1024ull * 1024 * 1024;
        end++;
    }
    if (*end != '\0' || v > UINT64_MAX / mult) {
        return false;
    }
    *out = (uint64_t)v * mult;
    return true;
}

/* Each NAME=VALUE over the defaults, in order (the file's, then the
 * flags'), then the two that tie together: the hard limit above high water. */
static void mp_check_limits(const mp_list *l, mp_options *o) {
    mp_node_limits_default(&o->limits.node);
    o->limits.output_high_water = 8u * 1024 * 1024;
    o->limits.output_hard_limit = 64u * 1024 * 1024;
    o->limits.read_timeout_ms = 30000;
    o->limits.partial_bytes = 256u * 1024 * 1024;
    for (size_t i = 0; i < l->len; i++) {
        const char *item = l->items[i];
        const char *eq = mp_item_eq("--limit", item, "NAME=VALUE, e.g. subs_per_conn=1000");
        const mp_limit_field *f = mp_limit_field_find(item, (size_t)(eq - item));
        if (f == NULL) {
            mp_usage_error("--limit '%s': unknown limit '%.*s' (known: %s)", item, (int)(eq - item),
                           item, mp_limit_names());
        }
        uint64_t v = 0;
        uint64_t max = f->size == 4 && f->max > UINT32_MAX ? UINT32_MAX : f->max;
        if (!mp_parse_amount(eq + 1, f->bytes, &v) || v < f->min || v > max) {
            mp_usage_error("--limit '%s': %s must be %s from %llu to %llu", item, f->name,
                           f->bytes ? "a size (K, M, G allowed)" : "a number",
                           (unsigned long long)f->min, (unsigned long long)max);
        }
        if (f->size == 4) {
            uint32_t u = (uint32_t)v;
            memcpy((char *)&o->limits + f->offset, &u, sizeof u);
        } else {
            memcpy((char *)&o->limits + f->offset, &v, sizeof v);
        }
    }
    if (o->limits.output_hard_limit <= o->limits.output_high_water) {
        mp_usage_error("--limit: output_hard_limit (%llu) must be above output_high_water (%llu)",
                       (unsigned long long)o->limits.output_hard_limit,
                       (unsigned long long)o->limits.output_high_water);
    }
}

static void mp_check(const mp_settings *s, mp_options *o) {
    mp_check_listen(s->listen != NULL ? s->listen : MP_DEFAULT_LISTEN, o);
    if (s->port_file != NULL && s->port_file[0] == '\0') {
        mp_usage_error("--port-file: empty path");
    }
    o->port_file = s->port_file;
    if (s->name != NULL) {
        mp_check_name("--name", s->name);
        snprintf(o->name, sizeof o->name, "%s", s->name);
    }
    o->cluster = s->cluster != NULL ? s->cluster : MP_DEFAULT_CLUSTER;
    mp_check_name("--cluster", o->cluster);
    if (s->data_dir != NULL && s->data_dir[0] == '\0') {
        mp_usage_error("--data-dir: empty path");
    }
    mp_check_resources(&s->resources, o);
    for (size_t i = 0; i < s->plugins.len; i++) {
        if (s->plugins.items[i][0] == '\0') {
            mp_usage_error("--plugin: empty path");
        }
    }
    o->plugins = &s->plugins;
    if (s->token != NULL && (s->token[0] == '\0' || strlen(s->token) > MP_TOKEN_MAX)) {
        mp_usage_error("--token: must be 1 to %u bytes", MP_TOKEN_MAX);
    }
    o->token = s->token;
    o->max_frame = MP_FRAME_DEFAULT_MAX;
    if (s->max_frame != NULL) {
        mp_check_max_frame(s->max_frame, &o->max_frame);
    }
    if (s->retain != NULL) {
        mp_check_retain(s->retain, &o->retain);
    }
    o->log_level = MP_LOG_INFO;
    if (s->log_level != NULL && !mp_log_level_parse(s->log_level, &o->log_level)) {
        mp_usage_error("--log-level '%s': expected error, warn, info or debug", s->log_level);
    }
    mp_check_peers(&s->peers, o);
    if (s->advertise != NULL) {
        mp_check_advertise(s->advertise, o);
    } else if (strlen(o->host) + sizeof ":65535" > sizeof o->advertise) {
        mp_usage_error("--listen host '%s' is too long to advertise to cluster members: give "
                       "--advertise HOST:PORT",
                       o->host);
    }
    mp_check_swim(&s->swim, o);
    if (s->max_peer_conns != NULL) {
        mp_check_max_peer_conns(s->max_peer_conns, &o->max_peer_conns);
    }
    if (s->catalog_ttl != NULL) {
        mp_check_catalog_ttl(s->catalog_ttl, &o->catalog_ttl_ms);
    }
    if (s->tombstone_ttl != NULL) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s->tombstone_ttl, &end, 10);
        if (end == s->tombstone_ttl || *end != '\0' || s->tombstone_ttl[0] == '-' || errno != 0 ||
            v < 1000 || v > UINT32_MAX) {
            mp_usage_error("--tombstone-ttl '%s': expected milliseconds from 1000 to %u",
                           s->tombstone_ttl, UINT32_MAX);
        }
        o->tombstone_ttl_ms = (uint32_t)v;
    }
    mp_check_limits(&s->limits, o);
}

/* ---- start-up failures ------------------------------------------------------ */

static void mp_fail(const char *node, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs why the node cannot start. The caller exits with MP_EXIT_FAIL. */
static void mp_fail(const char *node, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mp_log_write(MP_LOG_ERROR, node, "%s", msg);
}

/* ---- data directory ------------------------------------------------------- */

static char *mp_join(const char *a, const char *b) {
    char *out;
    if (asprintf(&out, "%s/%s", a, b) < 0) {
        mp_oom();
    }
    return out;
}

/* $XDG_DATA_HOME/mpreg/NAME, else $HOME/.local/share/mpreg/NAME; NULL when
 * there is no home to find. */
static char *mp_default_data_dir(const char *name) {
    char *out = NULL;
    const char *xdg = getenv("XDG_DATA_HOME");
    if (xdg != NULL && xdg[0] == '/') { /* the spec says to ignore relative ones */
        if (asprintf(&out, "%s/mpreg/%s", xdg, name) < 0) {
            mp_oom();
        }
        return out;
    }
    const char *home = getenv("HOME");
    if (home == NULL || home[0] == '\0') {
        struct passwd *pw = getpwuid(getuid());
        home = pw != NULL ? pw->pw_dir : NULL;
    }
    if (home == NULL || home[0] == '\0') {
        return NULL;
    }
    if (asprintf(&out, "%s/.local/share/mpreg/%s", home, name) < 0) {
        mp_oom();
    }
    return out;
}

/* mkdir -p, new directories private to the user. */
static int mp_mkdirs(const char *path) {
    char *p = mp_xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; rc == 0; s++) {
        bool end = *s == '\0';
        if (*s == '/' || end) {
            *s = '\0';
            if (mkdir(p, 0700) != 0 && errno != EEXIST) {
                rc = -1;
            }
            if (end) {
                break;
            }
            *s = '/';
        }
    }
    free(p);
    struct stat st;
    if (rc == 0 && (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))) {
        errno = ENOTDIR;
        rc = -1;
    }
    return rc;
}

/* One node per data dir: two would bump one incarnation, and later share
 * durable state. The lock dies with the process, however it dies. */
static int mp_lock_data_dir(const char *node, const char *dir) {
    char *path = mp_join(dir, "lock");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        mp_fail(node, "data dir %s: cannot open %s: %s", dir, path, strerror(errno));
        free(path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        mp_fail(node, "data dir %s is in use by another mpregd%s%s%s (use another --data-dir)", dir,
                holder[0] ? " (pid " : "", holder, holder[0] ? ")" : "");
        close(fd);
        free(path);
        return -1;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        /* The pid is only a courtesy for the message above. */
    }
    free(path);
    return fd;
}

/* Writes text to path atomically: a reader sees the old file or the new one,
 * never half of one, even across a crash. */
static int mp_write_atomic(const char *path, const char *text) {
    char *tmp;
    if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0) {
        mp_oom();
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(tmp);
        return -1;
    }
    size_t len = strlen(text);
    bool ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    int saved = errno;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        saved = ok ? errno : saved;
        unlink(tmp);
        free(tmp);
        errno = saved;
        return -1;
    }
    free(tmp);
    return 0;
}

/* Reads DIR/incarnation (absent = 0), adds one, writes it back before the
 * node starts: every start is a new incarnation, so the node's catalog
 * entries from before a restart can never win over the new ones. */
static int mp_bump_incarnation(const char *node, const char *dir, uint64_t *out) {
    char *path = mp_join(dir, "incarnation");
    uint64_t prev = 0;
    FILE *f = fopen(path, "re");
    int rc = -1;
    if (f == NULL && errno != ENOENT) {
        mp_fail(node, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (f != NULL) {
        char buf[32] = "";
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *end;
        errno = 0;
        prev = strtoull(buf, &end, 10);
        if (end == buf || buf[0] == '-' || errno != 0 || (*end != '\0' && *end != '\n') ||
            prev == UINT64_MAX) {
            mp_fail(node, "%s is corrupt (expected a number): fix it or use another --data-dir",
                    path);
            goto done;
        }
    }
    char text[32];
    snprintf(text, sizeof text, "%llu\n", (unsigned long long)(prev + 1));
    if (mp_write_atomic(path, text) != 0) {
        mp_fail(node, "cannot write %s: %s", path, strerror(errno));
        goto done;
    }
    *out = prev + 1;
    rc = 0;
done:
    free(path);
    return rc;
}

/* Reads DIR/node_key, or makes it on a first start: 16 random bytes, kept as
 * 32 hex digits and a newline (written atomically, like the incarnation).
 * It tells this node from another process started under the same --name
 * with another data dir: members refuse that one while this one is alive
 * (and take a restart of this one, which has the same key, at once). */
static int mp_load_node_key(const char *node, const char *dir, uint8_t key[MP_NODE_KEY_BYTES]) {
    char *path = mp_join(dir, "node_key");
    int rc = -1;
    FILE *f = fopen(path, "re");
    if (f == NULL && errno != ENOENT) {
        mp_fail(node, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (f != NULL) {
        char buf[2 * MP_NODE_KEY_BYTES + 4] = "";
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        bool ok = (n == 2 * MP_NODE_KEY_BYTES ||
                   (n == 2 * MP_NODE_KEY_BYTES + 1 && buf[2 * MP_NODE_KEY_BYTES] == '\n'));
        for (size_t i = 0; ok && i < MP_NODE_KEY_BYTES; i++) {
            unsigned byte = 0;
            char pair[3] = {buf[2 * i], buf[2 * i + 1], '\0'};
            ok = isxdigit((unsigned char)pair[0]) && isxdigit((unsigned char)pair[1]) &&
                 sscanf(pair, "%2x", &byte) == 1;
            key[i] = (uint8_t)byte;
        }
        if (!ok) {
            mp_fail(node,
                    "%s is corrupt (expected %d hex digits): remove it to give this node a new "
                    "identity (members refuse it under its name while the old one is alive)",
                    path, 2 * MP_NODE_KEY_BYTES);
            goto done;
        }
        rc = 0;
        goto done;
    }
    randombytes_buf(key, MP_NODE_KEY_BYTES);
    char text[2 * MP_NODE_KEY_BYTES + 2];
    for (size_t i = 0; i < MP_NODE_KEY_BYTES; i++) {
        snprintf(text + 2 * i, 3, "%02x", key[i]);
    }
    text[2 * MP_NODE_KEY_BYTES] = '\n';
    text[2 * MP_NODE_KEY_BYTES + 1] = '\0';
    if (mp_write_atomic(path, text) != 0) {
        mp_fail(node, "cannot write %s: %s", path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(path);
    return rc;
}

/* ---- plugins -------------------------------------------------------------- */

typedef int (*mp_plugin_init_fn)(mpreg_registry *reg);

typedef struct mp_plugins {
    void **handles;
    size_t len;
} mp_plugins;

static int mp_load_plugin(mp_server *server, const char *node, const char *path, void **handle) {
    /* A bare file name is a file here, not a library for the linker's
     * search path: that is what a user typing "--plugin x.so" means. */
    char *local = NULL;
    if (strchr(path, '/') == NULL && asprintf(&local, "./%s", path) < 0) {
        mp_oom();
    }
    dlerror();
    *handle = dlopen(local != NULL ? local : path, RTLD_NOW | RTLD_LOCAL);
    free(local);
    if (*handle == NULL) {
        mp_fail(node, "plugin %s: cannot load: %s", path, dlerror());
        return -1;
    }
    mp_plugin_init_fn init;
    /* POSIX's way to turn dlsym's object pointer into a function pointer. */
    *(void **)&init = dlsym(*handle, "mpreg_plugin_init");
    if (init == NULL) {
        mp_fail(node, "plugin %s: no mpreg_plugin_init function (is it an mpreg plugin?)", path);
        return -1;
    }
    int rc = init(mp_server_registry(server));
    if (rc != 0) {
        mp_fail(node, "plugin %s: mpreg_plugin_init refused to load (returned %d)", path, rc);
        return -1;
    }
    mp_server_log(server, MP_LOG_INFO, "plugin %s loaded", path);
    return 0;
}

static int mp_load_plugins(mp_server *server, const char *node, const mp_list *paths,
                           mp_plugins *out) {
    out->handles = calloc(paths->len + 1, sizeof *out->handles);
    if (out->handles == NULL) {
        mp_oom();
    }
    for (size_t i = 0; i < paths->len; i++) {
        int rc = mp_load_plugin(server, node, paths->items[i], &out->handles[out->len]);
        if (out->handles[out->len] != NULL) {
            out->len++;
        }
        if (rc != 0) {
            return -1;
        }
    }
    return 0;
}

/* After the node is gone: its registry held pointers into the plugins. */
static void mp_unload_plugins(mp_plugins *p) {
    for (size_t i = p->len; i > 0; i--) {
        dlclose(p->handles[i - 1]);
    }
    free(p->handles);
    *p = (mp_plugins){0};
}

/* ---- main ------------------------------------------------------------------- */

static void mp_random_name(char *out, size_t size) {
    uint8_t bytes[4];
    randombytes_buf(bytes, sizeof bytes);
    snprintf(out, size, "node-%02x%02x%02x%02x", bytes[0], bytes[1], bytes[2], bytes[3]);
}

/* Everything that must be undone at exit, whatever point start-up reached. */
typedef struct mp_daemon {
    mp_settings flags;
    mp_settings file;
    mp_options opts;
    int lock_fd;
    mp_server *server;
    mp_plugins plugins;
    bool port_file_written;
} mp_daemon;

static void mp_daemon_free(mp_daemon *d) {
    mp_server_free(d->server);
    mp_unload_plugins(&d->plugins);
    if (d->port_file_written) {
        unlink(d->opts.port_file); /* a stale port would mislead whoever waits for it */
    }
    if (d->lock_fd >= 0) {
        close(d->lock_fd);
    }
    free(d->opts.data_dir);
    free(d->opts.resources);
    free(d->opts.seeds);
    mp_settings_free(&d->flags);
    mp_settings_free(&d->file);
}

static int mp_prepare_data_dir(mp_daemon *d, uint64_t *incarnation) {
    mp_options *o = &d->opts;
    const mp_settings *s = &d->flags;
    o->data_dir = s->data_dir != NULL ? mp_xstrdup(s->data_dir) : mp_default_data_dir(o->name);
    if (o->data_dir == NULL) {
        mp_fail(o->name, "no home directory for the default data dir: give --data-dir");
        return -1;
    }
    if (mp_mkdirs(o->data_dir) != 0) {
        mp_fail(o->name, "data dir %s: %s", o->data_dir, strerror(errno));
        return -1;
    }
    d->lock_fd = mp_lock_data_dir(o->name, o->data_dir);
    if (d->lock_fd < 0) {
        return -1;
    }
    if (mp_load_node_key(o->name, o->data_dir, o->node_key) != 0) {
        return -1;
    }
    return mp_bump_incarnation(o->name, o->data_dir, incarnation);
}

static int mp_listen(mp_daemon *d, uint16_t *bound) {
    mp_options *o = &d->opts;
    if (mp_server_listen(d->server, o->host, o->port, bound) != MPREG_OK) {
        mp_fail(o->name, "%s%s", mp_server_last_error(d->server),
                strstr(mp_server_last_error(d->server), "in use") != NULL
                    ? " (is another mpregd running? pick another --listen port, or 0 for any)"
                    : "");
        return -1;
    }
    return 0;
}

/* The default --advertise: where we listen, as a member on this machine
 * can dial it. The unspecified address is no destination, so it becomes
 * loopback; a port 0 becomes the port the kernel picked. */
static void mp_default_advertise(mp_options *o, uint16_t bound) {
    const char *host = mp_unspecified_host(o->host) ? "127.0.0.1" : o->host;
    /* mp_check made sure the host leaves room for the port. */
    size_t n = strlen(host);
    memcpy(o->advertise, host, n);
    snprintf(o->advertise + n, sizeof o->advertise - n, ":%u", (unsigned)bound);
}

/* The membership settings in force, as --swim would set them. */
static void mp_log_swim(mp_server *server, const mp_swim_config *swim) {
    char line[512];
    size_t n = 0;
    for (size_t i = 0; i < sizeof mp_swim_fields / sizeof mp_swim_fields[0] && n < sizeof line;
         i++) {
        uint32_t v;
        memcpy(&v, (const char *)swim + mp_swim_fields[i].offset, sizeof v);
        int w = snprintf(line + n, sizeof line - n, "%s%s=%u", i ? " " : "", mp_swim_fields[i].name,
                         (unsigned)v);
        n += w > 0 ? (size_t)w : 0;
    }
    mp_server_log(server, MP_LOG_DEBUG, "membership: %s", line);
}

/* Says where we listen, once everything is ready: whoever waits for the port
 * file or the line may use the node at once. */
static int mp_announce(mp_daemon *d, uint16_t bound) {
    mp_options *o = &d->opts;
    if (o->port_file != NULL) {
        char text[16];
        snprintf(text, sizeof text, "%u\n", (unsigned)bound);
        if (mp_write_atomic(o->port_file, text) != 0) {
            mp_fail(o->name, "--port-file %s: %s", o->port_file, strerror(errno));
            return -1;
        }
        d->port_file_written = true;
    }
    printf("listening on %s:%u\n", o->host, (unsigned)bound);
    fflush(stdout);
    return 0;
}

static int mp_start(mp_daemon *d) {
    mp_options *o = &d->opts;
    uint64_t incarnation = 0;
    if (mp_prepare_data_dir(d, &incarnation) != 0) {
        return -1;
    }
    mp_server_config scfg = {
        .node_id = o->name,
        .log_level = o->log_level,
        .max_frame = o->max_frame,
        .output_high_water = (size_t)o->limits.output_high_water,
        .output_hard_limit = (size_t)o->limits.output_hard_limit,
        .read_timeout_ms = (uint32_t)o->limits.read_timeout_ms,
        .max_partial_bytes = (size_t)o->limits.partial_bytes,
    };
    if (mp_server_new(&scfg, &d->server) != MPREG_OK) {
        return -1;
    }
    mp_server_log(d->server, MP_LOG_INFO, "data dir %s, node key %02x%02x%02x%02x... (node_key)",
                  o->data_dir, o->node_key[0], o->node_key[1], o->node_key[2], o->node_key[3]);
    /* Listening first, so that the advertised address has the real port.
     * Nobody is served before mp_server_run: connections wait in the
     * backlog until the node and its plugins are ready. */
    uint16_t bound = 0;
    if (mp_listen(d, &bound) != 0) {
        return -1;
    }
    if (o->advertise[0] == '\0') {
        mp_default_advertise(o, bound);
    }
    mp_node_config cfg = {
        .node_id = o->name,
        .name = o->name,
        .cluster = o->cluster,
        .resources = o->resources,
        .resource_count = o->resource_count,
        .incarnation = incarnation,
        .token = o->token,
        .max_frame = o->max_frame,
        .log_level = o->log_level,
        .advertise_addr = o->advertise,
        .seeds = o->seeds,
        .seed_count = o->seed_count,
        .swim = o->swim,
        .max_peer_conns = o->max_peer_conns,
        .catalog_ttl_ms = o->catalog_ttl_ms,
        .tombstone_ttl_ms = o->tombstone_ttl_ms,
        .limits = o->limits.node,
        .node_key = o->node_key,
        .node_key_len = sizeof o->node_key,
    };
    /* A zeroed pubsub config means "all defaults" to the node; with one field
     * set, the others must be filled in too. */
    mp_pubsub_config_default(&cfg.pubsub);
    cfg.pubsub.retain_per_topic = o->retain;
    if (mp_server_start(d->server, &cfg) != MPREG_OK) {
        return -1;
    }
    mp_server_log(d->server, MP_LOG_INFO, "cluster %s: advertising %s, %u peer%s to join through",
                  o->cluster, o->advertise, (unsigned)o->seed_count, o->seed_count == 1 ? "" : "s");
    mp_log_swim(d->server, &o->swim);
    /* Plugins before announcing: a client never sees the node without them. */
    if (mp_load_plugins(d->server, o->name, o->plugins, &d->plugins) != 0) {
        return -1;
    }
    return mp_announce(d, bound);
}

/* File descriptors the node keeps for itself beyond its connections: the
 * loop's own (epoll, signal pipes, eventfds, libuv's spare for EMFILE),
 * the listener, standard streams, the data dir's files, logs; as Redis
 * keeps 32. */
#define MP_FD_RESERVE 32u

/* Connections need file descriptors, and running out of them is the worst
 * way to find a limit (libuv then closes whatever is waiting, unseen): so
 * the soft RLIMIT_NOFILE goes up to the hard one, as most servers do, and
 * the conns limit comes down to what the descriptors allow, saying so.
 * Then a client past it gets ERROR 505 limit, not a connection that
 * vanishes. */
static void mp_fit_conns_to_fds(mp_options *o, bool conns_given) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max > 1048576 ? 1048576 : rl.rlim_max;
        if (up.rlim_cur > rl.rlim_cur && setrlimit(RLIMIT_NOFILE, &up) == 0) {
            rl = up;
        }
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > MP_FD_RESERVE + o->limits.node.conns) {
        return;
    }
    uint32_t fit = rl.rlim_cur > MP_FD_RESERVE + 8 ? (uint32_t)(rl.rlim_cur - MP_FD_RESERVE) : 8u;
    mp_log_write(conns_given ? MP_LOG_WARN : MP_LOG_INFO, NULL,
                 "limit conns lowered from %u to %u: the process may open %llu file "
                 "descriptors (ulimit -n), %u of them kept for the node itself",
                 o->limits.node.conns, fit, (unsigned long long)rl.rlim_cur, MP_FD_RESERVE);
    o->limits.node.conns = fit;
}

int main(int argc, char **argv) {
    /* A peer's reset must fail a write, not kill the daemon (transport.h). */
    signal(SIGPIPE, SIG_IGN);
    mp_daemon d = {.lock_fd = -1};
    mp_parse_flags(argc, argv, &d.flags);
    if (d.flags.config != NULL) {
        mp_load_config(d.flags.config, &d.file);
    }
    mp_token_from_env(&d.flags);
    mp_merge(&d.flags, &d.file);
    mp_check(&d.flags, &d.opts);
    bool conns_given = false;
    for (size_t i = 0; i < d.flags.limits.len; i++) {
        conns_given = conns_given || strncmp(d.flags.limits.items[i], "conns=", 6) == 0;
    }
    mp_fit_conns_to_fds(&d.opts, conns_given);
    if (sodium_init() < 0) {
        mp_fail(NULL, "libsodium failed to initialise");
        mp_daemon_free(&d);
        return MP_EXIT_FAIL;
    }
    if (d.opts.name[0] == '\0') {
        mp_random_name(d.opts.name, sizeof d.opts.name);
    }
    int status = MP_EXIT_FAIL;
    if (mp_start(&d) == 0 && mp_server_run(d.server) == MPREG_OK) {
        status = 0;
    }
    mp_daemon_free(&d);
    return status;
}
