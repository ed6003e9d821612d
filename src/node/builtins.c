/* builtins.c - the functions every node has: echo, echos, sleep, fail,
 * whoami.
 *
 * They exist for clients to test against (echo the canonical example, sleep
 * to see parallelism and deadlines, fail to see an error come back, whoami
 * to see where a call ran) and are registered like any plugin function, at
 * version 1.0.0 with the node's resources. Arguments are checked strictly:
 * a wrong call is MPREG_E_INVALID with a message saying what was expected. */
#include "node/node_internal.h"

#include <stdlib.h>

static bool mp_no_kwargs(const mpreg_value *kwargs) {
    return kwargs->type == MPREG_MAP && kwargs->u.map.len == 0;
}

static size_t mp_argc(const mpreg_value *args) {
    return args->type == MPREG_ARRAY ? args->u.arr.len : 0;
}

static void mp_return_copy(mpreg_call *call, const mpreg_value *v) {
    mpreg_value copy;
    if (mpreg_value_clone(v, &copy)) {
        mpreg_call_fail(call, MPREG_E_NOMEM, "out of memory");
        return;
    }
    mpreg_call_return(call, copy);
}

/* echo(x) -> x */
static void mp_builtin_echo(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                            mpreg_call *call) {
    (void)ctx;
    if (mp_argc(args) != 1 || !mp_no_kwargs(kwargs)) {
        mpreg_call_fail(call, MPREG_E_INVALID, "echo takes exactly one argument");
        return;
    }
    mp_return_copy(call, &args->u.arr.items[0]);
}

/* echos(a, b, ...) -> [a, b, ...] */
static void mp_builtin_echos(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                             mpreg_call *call) {
    (void)ctx;
    if (!mp_no_kwargs(kwargs)) {
        mpreg_call_fail(call, MPREG_E_INVALID, "echos takes no keyword arguments");
        return;
    }
    mp_return_copy(call, args);
}

/* sleep(ms) -> ms, after ms milliseconds of node time. */
typedef struct mp_sleep {
    mp_timer timer;
    mp_node *node;
    mpreg_call *call;
    int64_t ms;
} mp_sleep;

static void mp_sleep_fire(mp_node *n, mp_timer *t) {
    (void)n;
    mp_sleep *s = MP_CONTAINER(t, mp_sleep, timer);
    mpreg_call *call = s->call;
    int64_t ms = s->ms;
    free(s);
    mpreg_call_return(call, mpreg_int(ms));
}

/* Nobody waits any more: drop the timer, so abandoned sleeps cost nothing. */
static void mp_sleep_cancel(void *ud) {
    mp_sleep *s = ud;
    mp_timer_cancel(&s->node->timers, &s->timer);
    free(s);
}

static void mp_builtin_sleep(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                             mpreg_call *call) {
    mp_node *n = ctx;
    const mpreg_value *ms = mp_argc(args) == 1 ? &args->u.arr.items[0] : NULL;
    if (!ms || !mp_no_kwargs(kwargs) || ms->type != MPREG_INT || ms->u.i < 0 ||
        ms->u.i > MP_NODE_MAX_SLEEP_MS) {
        mpreg_call_fail(call, MPREG_E_INVALID,
                        "sleep takes one integer: milliseconds, 0 to 3600000");
        return;
    }
    if (ms->u.i == 0) {
        mpreg_call_return(call, mpreg_int(0)); /* no need to wait for a tick */
        return;
    }
    mp_sleep *s = malloc(sizeof *s);
    if (!s) {
        mpreg_call_fail(call, MPREG_E_NOMEM, "out of memory");
        return;
    }
    s->node = n;
    s->call = call;
    s->ms = ms->u.i;
    mp_timer_init(&s->timer, mp_sleep_fire);
    if (mp_timer_arm(&n->timers, &s->timer, mp_add_ms(mp_node_now(n), (uint64_t)s->ms))) {
        free(s);
        mpreg_call_fail(call, MPREG_E_NOMEM, "out of memory");
        return;
    }
    mp_call_set_cancel(call, mp_sleep_cancel, s);
}

/* fail(message) fails with MPREG_E_HANDLER and that message. */
static void mp_builtin_fail(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                            mpreg_call *call) {
    (void)ctx;
    const mpreg_value *msg = mp_argc(args) == 1 ? &args->u.arr.items[0] : NULL;
    if (!msg || msg->type != MPREG_STR || !mp_no_kwargs(kwargs)) {
        mpreg_call_fail(call, MPREG_E_INVALID, "fail takes exactly one string argument");
        return;
    }
    mpreg_call_fail(call, MPREG_E_HANDLER, msg->u.str.ptr);
}

/* whoami() -> {"node", "name", "cluster"}: where the call ran. */
static void mp_builtin_whoami(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                              mpreg_call *call) {
    const mp_node *n = ctx;
    if (mp_argc(args) != 0 || !mp_no_kwargs(kwargs)) {
        mpreg_call_fail(call, MPREG_E_INVALID, "whoami takes no arguments");
        return;
    }
    mpreg_value v = mpreg_map();
    mpreg_err err = mpreg_map_set(&v, "node", mpreg_str(n->node_id));
    err = err ? err : mpreg_map_set(&v, "name", mpreg_str(n->name));
    err = err ? err : mpreg_map_set(&v, "cluster", mpreg_str(n->cluster));
    if (err) {
        mpreg_value_free(&v);
        mpreg_call_fail(call, MPREG_E_NOMEM, "out of memory");
        return;
    }
    mpreg_call_return(call, v);
}

mpreg_err mp_builtins_register(mp_node *n) {
    static const struct {
        const char *name;
        mpreg_function fn;
    } builtins[] = {
        {"echo", mp_builtin_echo}, {"echos", mp_builtin_echos},   {"sleep", mp_builtin_sleep},
        {"fail", mp_builtin_fail}, {"whoami", mp_builtin_whoami},
    };
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++) {
        mpreg_function_def def = {
            .name = builtins[i].name,
            .version = MP_NODE_BUILTIN_VERSION,
            .fn = builtins[i].fn,
            .ctx = n,
        };
        mpreg_err err = mpreg_register_function(&n->registry, &def);
        if (err) {
            return err;
        }
    }
    return MPREG_OK;
}
