/* plugin.h - functions that run inside a node.
 *
 * Built-in functions, plugins (shared objects loaded by `mpregd --plugin
 * path.so`, in the spirit of Redis modules) and embedders register
 * functions through this one interface. A function runs on the node's event
 * loop thread; it must not block. It either finishes at once - calling
 * mpreg_call_return or mpreg_call_fail before it returns - or keeps the
 * call and finishes it later from the same thread.
 *
 * A plugin exports one symbol:
 *
 *     int mpreg_plugin_init(mpreg_registry *reg);
 *
 * which registers its functions with mpreg_register_function and returns 0
 * (non-zero refuses to load, and mpregd exits with an error naming the
 * plugin). MPREG_PLUGIN_API_VERSION guards against plugins built for another
 * version of this header: a plugin should check mpreg_plugin_api_version(). */
#ifndef MPREG_PLUGIN_H
#define MPREG_PLUGIN_H

#include "mpreg/error.h"
#include "mpreg/value.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MPREG_PLUGIN_API_VERSION 1

typedef struct mpreg_call mpreg_call;
typedef struct mpreg_registry mpreg_registry;

/* args is an array, kwargs a map; both borrowed for the duration of the
 * function call only (clone what you keep for a later completion). */
typedef void (*mpreg_function)(void *ctx, const mpreg_value *args, const mpreg_value *kwargs,
                               mpreg_call *call);

typedef struct mpreg_function_def {
    const char *name;        /* required */
    const char *function_id; /* NULL or "" = none */
    const char *version;     /* semver, NULL = "0.0.0" */
    mpreg_function fn;
    void *ctx; /* passed to fn as is */
} mpreg_function_def;

/* Registers a function: the node advertises it in the catalog with the
 * node's resources. MPREG_E_DUPLICATE when (name, function_id, version) is
 * already registered on this node; MPREG_E_BAD_SEMVER for a bad version. */
mpreg_err mpreg_register_function(mpreg_registry *reg, const mpreg_function_def *def);

/* Finishes a call with a result (taken). Exactly one of return/fail per call. */
void mpreg_call_return(mpreg_call *call, mpreg_value result);
/* Finishes a call with an error; the caller sees code MPREG_E_HANDLER unless
 * another code is given, and the message. */
void mpreg_call_fail(mpreg_call *call, mpreg_err code, const char *message);

int mpreg_plugin_api_version(void);

#ifdef __cplusplus
}
#endif
#endif
