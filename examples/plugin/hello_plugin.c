/* hello_plugin.c - an example mpreg plugin.
 *
 * Build it as a shared object and load it into a node:
 *
 *     mpregd --plugin build/examples/plugin/hello_plugin.so
 *     mpreg call hello world     ->  "hello, world"
 *     mpreg call add 2 3         ->  5
 *
 * A plugin sees only the public headers: it registers functions through
 * plugin.h and reads and builds values through value.h. Functions run on the
 * node's event loop, so they must not block; these two finish at once. */
#include "mpreg/plugin.h"
#include "mpreg/value.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The one positional argument, or the keyword argument `key`; NULL (and
 * the call failed with a message) when the caller gave neither or both. */
static const mpreg_value *hello_arg(const mpreg_value *args, const mpreg_value *kwargs,
                                    const char *fun, const char *key, mpreg_call *call) {
    const mpreg_value *kw = mpreg_map_get(kwargs, key);
    size_t positional = args->u.arr.len;
    if (positional + (kw != NULL ? 1 : 0) != 1 || kwargs->u.map.len > (kw != NULL ? 1u : 0u)) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s takes exactly one argument, %s", fun, key);
        mpreg_call_fail(call, MPREG_E_INVALID, msg);
        return NULL;
    }
    return kw != NULL ? kw : &args->u.arr.items[0];
}

/* hello(name) -> "hello, <name>" */
static void hello(void *ctx, const mpreg_value *args, const mpreg_value *kwargs, mpreg_call *call) {
    (void)ctx;
    const mpreg_value *name = hello_arg(args, kwargs, "hello", "name", call);
    if (name == NULL) {
        return;
    }
    if (name->type != MPREG_STR) {
        char msg[128];
        snprintf(msg, sizeof msg, "hello: name must be a string, got %s",
                 mpreg_type_name(name->type));
        mpreg_call_fail(call, MPREG_E_TYPE, msg);
        return;
    }
    static const char prefix[] = "hello, ";
    size_t plen = sizeof prefix - 1;
    char *text = malloc(plen + name->u.str.len);
    mpreg_value out = mpreg_nil();
    if (text != NULL) {
        memcpy(text, prefix, plen);
        memcpy(text + plen, name->u.str.ptr, name->u.str.len);
        out = mpreg_strn(text, plen + name->u.str.len);
        free(text);
    }
    if (out.type != MPREG_STR) {
        mpreg_call_fail(call, MPREG_E_NOMEM, "hello: out of memory");
        return;
    }
    mpreg_call_return(call, out);
}

/* add(a, b) -> a + b, for two integers whose sum fits in 64 bits. */
static void add(void *ctx, const mpreg_value *args, const mpreg_value *kwargs, mpreg_call *call) {
    (void)ctx;
    if (args->u.arr.len != 2 || kwargs->u.map.len != 0) {
        mpreg_call_fail(call, MPREG_E_INVALID, "add takes exactly two arguments, a and b");
        return;
    }
    const mpreg_value *a = &args->u.arr.items[0];
    const mpreg_value *b = &args->u.arr.items[1];
    if (a->type != MPREG_INT || b->type != MPREG_INT) {
        char msg[128];
        snprintf(msg, sizeof msg, "add: both arguments must be integers, got %s and %s",
                 mpreg_type_name(a->type), mpreg_type_name(b->type));
        mpreg_call_fail(call, MPREG_E_TYPE, msg);
        return;
    }
    if ((b->u.i > 0 && a->u.i > INT64_MAX - b->u.i) ||
        (b->u.i < 0 && a->u.i < INT64_MIN - b->u.i)) {
        mpreg_call_fail(call, MPREG_E_RANGE, "add: the sum does not fit in 64 bits");
        return;
    }
    mpreg_call_return(call, mpreg_int(a->u.i + b->u.i));
}

int mpreg_plugin_init(mpreg_registry *reg) {
    if (mpreg_plugin_api_version() != MPREG_PLUGIN_API_VERSION) {
        return 1; /* built against another plugin.h: refuse rather than misbehave */
    }
    const mpreg_function_def defs[] = {
        {.name = "hello", .version = "1.0.0", .fn = hello},
        {.name = "add", .version = "1.0.0", .fn = add},
    };
    for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
        if (mpreg_register_function(reg, &defs[i]) != MPREG_OK) {
            return 1;
        }
    }
    return 0;
}
