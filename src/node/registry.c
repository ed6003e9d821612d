/* registry.c - the plugin API: registering functions, finishing calls.
 *
 * Built-ins, plugins and embedders all come through mpreg_register_function;
 * a registered function becomes an in-process provider in the node's
 * function table (node_functions.c) and, with the node's resources, a
 * catalog entry of this node. A call handed to a function is finished with
 * exactly one of mpreg_call_return / mpreg_call_fail, now or later; the node
 * takes it from there (node_rpc.c). */
#include "node/node_internal.h"

#include "fabric/semver.h"
#include "mpreg/plugin.h"

#include <string.h>

static bool mp_def_str_ok(const char *s, bool may_be_empty) {
    size_t len = strlen(s);
    return (may_be_empty || len > 0) && len <= MP_ENTRY_MAX_STR && mpreg_utf8_valid(s, len);
}

mpreg_err mpreg_register_function(mpreg_registry *reg, const mpreg_function_def *def) {
    if (!reg || !def || !def->name || !def->fn || !mp_def_str_ok(def->name, false)) {
        return MPREG_E_INVALID;
    }
    const char *function_id = def->function_id ? def->function_id : "";
    const char *version = def->version ? def->version : "0.0.0";
    if (!mp_def_str_ok(function_id, true)) {
        return MPREG_E_INVALID;
    }
    mp_semver sv;
    if (!mp_def_str_ok(version, false) || mp_semver_parse(version, strlen(version), &sv, NULL)) {
        return MPREG_E_BAD_SEMVER;
    }
    mp_node *n = reg->node;
    mpreg_err err = mp_functions_add(n, def->name, function_id, version, &n->resources, 0, def->fn,
                                     def->ctx, NULL);
    if (err) {
        mp_node_log(n, MP_LOG_WARN, "function %s %s not registered: %s", def->name, version,
                    mpreg_err_name(err));
    } else {
        mp_node_log(n, MP_LOG_DEBUG, "function %s %s registered", def->name, version);
    }
    return err;
}

void mpreg_call_return(mpreg_call *call, mpreg_value result) {
    if (!call) {
        mpreg_value_free(&result);
        return;
    }
    mp_call_finish(call, true, result, NULL);
}

void mpreg_call_fail(mpreg_call *call, mpreg_err code, const char *message) {
    if (!call) {
        return;
    }
    mpreg_err c = code == MPREG_OK ? MPREG_E_HANDLER : code;
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&e, c, NULL, "%s", message ? message : mpreg_strerror(c));
    mp_call_finish(call, false, mpreg_nil(), &e);
}

int mpreg_plugin_api_version(void) {
    return MPREG_PLUGIN_API_VERSION;
}
