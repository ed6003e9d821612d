/* test_rpc_plan.c - RPC requests: validation, references, the dependency
 * plan and its execution, sinks, the error shape and the RPC payloads, plus
 * a seeded property test against a reference evaluator. */
#include "services/rpc_plan.h"

#include "core/buf.h"
#include "core/rng.h"

#include "support/value_json.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------------- */

/* The fake executor: echo returns its first argument, echos its arguments as
 * a list, obj its kwargs, wrap {"x": args[0], "items": args, "kw": kwargs};
 * fail fails. */
static mpreg_err fake_run(const char *fun, const mpreg_value *args, const mpreg_value *kwargs,
                          mpreg_value *out) {
    *out = mpreg_nil();
    if (strcmp(fun, "echo") == 0) {
        return args->u.arr.len ? mpreg_value_clone(&args->u.arr.items[0], out) : MPREG_OK;
    }
    if (strcmp(fun, "echos") == 0) {
        return mpreg_value_clone(args, out);
    }
    if (strcmp(fun, "obj") == 0) {
        return mpreg_value_clone(kwargs, out);
    }
    if (strcmp(fun, "wrap") == 0) {
        mpreg_value x = mpreg_nil(), items, kw;
        if (args->u.arr.len) {
            cr_assert_eq(mpreg_value_clone(&args->u.arr.items[0], &x), MPREG_OK);
        }
        cr_assert_eq(mpreg_value_clone(args, &items), MPREG_OK);
        cr_assert_eq(mpreg_value_clone(kwargs, &kw), MPREG_OK);
        *out = mpreg_map();
        mpreg_map_set(out, "x", x);
        mpreg_map_set(out, "items", items);
        mpreg_map_set(out, "kw", kw);
        return MPREG_OK;
    }
    if (strcmp(fun, "fail") == 0) {
        return MPREG_E_HANDLER;
    }
    return MPREG_E_NOT_FOUND;
}

/* Runs one handed-out command: resolve, run, complete or fail. */
static void run_one(mp_rpc_plan *plan, uint32_t id) {
    mpreg_value args, kwargs, result;
    if (mp_rpc_plan_resolve_args(plan, id, &args, &kwargs) != MPREG_OK) {
        cr_assert_eq(args.type, MPREG_NIL);
        return; /* the plan has recorded the failure */
    }
    const mp_rpc_command *c = mp_rpc_plan_command(plan, id);
    mpreg_err err = fake_run(c->fun, &args, &kwargs, &result);
    if (err) {
        cr_assert_eq(mp_rpc_plan_fail_code(plan, id, err, "boom"), MPREG_OK);
    } else {
        cr_assert_eq(mp_rpc_plan_complete(plan, id, result), MPREG_OK);
    }
    mpreg_value_free(&args);
    mpreg_value_free(&kwargs);
}

/* The synchronous driver loop: ready -> resolve -> run -> complete. */
static void run_plan(mp_rpc_plan *plan) {
    uint32_t ids[8];
    while (!mp_rpc_plan_done(plan)) {
        uint32_t n = mp_rpc_plan_ready(plan, ids, 8);
        cr_assert(n > 0, "plan stuck: not done and nothing ready");
        for (uint32_t i = 0; i < n; i++) {
            run_one(plan, ids[i]);
        }
    }
}

static mp_rpc_plan *plan_json(const char *text) {
    mpreg_value cmds = json(text);
    mp_rpc_plan *plan = NULL;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    mpreg_err rc = mp_rpc_plan_from_value(&cmds, &plan, &err);
    cr_assert_eq(rc, MPREG_OK, "plan failed: %s", mp_rpc_error_message(&err));
    mpreg_value_free(&cmds);
    return plan;
}

/* Runs a request to completion and checks its response. */
static void expect_response(const char *request, const char *response) {
    mp_rpc_plan *plan = plan_json(request);
    run_plan(plan);
    const mp_rpc_error *e = mp_rpc_plan_error(plan);
    cr_assert_null(e, "request failed: %s", e ? mp_rpc_error_message(e) : "");
    mpreg_value out;
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_OK);
    assert_json_eq(&out, response);
    mpreg_value_free(&out);
    mp_rpc_plan_free(plan);
}

/* Plans a request that must be refused; checks code and message text. */
static void expect_plan_error(const char *request, mpreg_err code, const char *message_part,
                              const char *command) {
    mpreg_value cmds = json(request);
    mp_rpc_plan *plan = (mp_rpc_plan *)1;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    mpreg_err rc = mp_rpc_plan_from_value(&cmds, &plan, &err);
    cr_assert_eq(rc, code, "%s: got %s (%s), want %s", request, mpreg_err_name(rc),
                 mp_rpc_error_message(&err), mpreg_err_name(code));
    cr_assert_eq(err.code, code);
    cr_assert_null(plan);
    cr_assert(strstr(mp_rpc_error_message(&err), message_part), "%s: message '%s' lacks '%s'",
              request, mp_rpc_error_message(&err), message_part);
    if (command) {
        cr_assert_not_null(err.command, "%s: no command named", request);
        cr_assert_str_eq(err.command, command);
    }
    mp_rpc_error_free(&err);
    mpreg_value_free(&cmds);
}

/* ---- the canonical example ----------------------------------------------------- */

Test(rpc_plan, canonical_example) {
    expect_response("[{\"name\": \"first\", \"fun\": \"echo\", \"args\": [\"hi there!\"]},"
                    " {\"name\": \"second\", \"fun\": \"echo\", \"args\": [\"first\"]},"
                    " {\"name\": \"third\", \"fun\": \"echos\","
                    "  \"args\": [\"first\", \"AND ME TOO\"]}]",
                    "{\"second\": \"hi there!\", \"third\": [\"hi there!\", \"AND ME TOO\"]}");
}

Test(rpc_plan, canonical_example_levels_and_sinks) {
    mp_rpc_plan *plan =
        plan_json("[{\"name\": \"first\", \"fun\": \"echo\", \"args\": [\"hi there!\"]},"
                  " {\"name\": \"second\", \"fun\": \"echo\", \"args\": [\"first\"]},"
                  " {\"name\": \"third\", \"fun\": \"echos\", \"args\": [\"first\", \"x\"]}]");
    cr_assert_eq(mp_rpc_plan_count(plan), 3);
    cr_assert_eq(mp_rpc_plan_level_count(plan), 2);
    cr_assert_eq(mp_rpc_plan_level(plan, 0), 0);
    cr_assert_eq(mp_rpc_plan_level(plan, 1), 1);
    cr_assert_eq(mp_rpc_plan_level(plan, 2), 1);
    cr_assert_not(mp_rpc_plan_is_sink(plan, 0));
    cr_assert(mp_rpc_plan_is_sink(plan, 1));
    cr_assert(mp_rpc_plan_is_sink(plan, 2));
    uint32_t n, id;
    const uint32_t *deps = mp_rpc_plan_deps(plan, 2, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(deps[0], 0);
    cr_assert(mp_rpc_plan_find(plan, "third", &id));
    cr_assert_eq(id, 2);
    cr_assert_not(mp_rpc_plan_find(plan, "fourth", &id));
    mp_rpc_plan_free(plan);
}

/* ---- references ------------------------------------------------------------------ */

Test(rpc_plan, field_references) {
    expect_response("[{\"name\": \"first\", \"fun\": \"obj\", \"kwargs\": "
                    "   {\"user\": {\"name\": \"ann\", \"tags\": [\"a\", \"b\"]},"
                    "    \"items\": [10, 20, 30], \"0\": \"zero\"}},"
                    " {\"name\": \"second\", \"fun\": \"echo\", \"args\": [\"first.user.name\"]},"
                    " {\"name\": \"third\", \"fun\": \"echos\","
                    "  \"args\": [\"first.items.0\", \"first.items.2\", \"first.user.tags.1\","
                    "            \"first.0\", \"first.user\"]}]",
                    "{\"second\": \"ann\", \"third\": [10, 30, \"b\", \"zero\","
                    " {\"name\": \"ann\", \"tags\": [\"a\", \"b\"]}]}");
}

Test(rpc_plan, array_index_into_array_result) {
    expect_response("[{\"name\": \"a\", \"fun\": \"echos\", \"args\": [1, [2, 3], 4]},"
                    " {\"name\": \"b\", \"fun\": \"echos\", \"args\": [\"a.1.1\", \"a.2\"]}]",
                    "{\"b\": [3, 4]}");
}

Test(rpc_plan, references_in_kwargs_and_nested_containers) {
    expect_response(
        "[{\"name\": \"first\", \"fun\": \"echo\", \"args\": [\"x\"]},"
        " {\"name\": \"second\", \"fun\": \"obj\", \"kwargs\": "
        "   {\"a\": \"first\", \"b\": [\"first\", {\"c\": \"first\", \"d\": [[\"first\"]]}],"
        "    \"first\": \"key stays\"}}]",
        "{\"second\": {\"a\": \"x\", \"b\": [\"x\", {\"c\": \"x\", \"d\": [[\"x\"]]}],"
        " \"first\": \"key stays\"}}");
}

Test(rpc_plan, strings_that_only_look_like_references_stay_plain) {
    expect_response("[{\"name\": \"first\", \"fun\": \"echo\", \"args\": [7]},"
                    " {\"name\": \"second\", \"fun\": \"echos\", \"args\": "
                    "   [\"firstly\", \"First\", \"x.first\", \" first\", \"first \", \"\","
                    "    \"firs\", \"second_\"]}]",
                    "{\"first\": 7, \"second\": [\"firstly\", \"First\", \"x.first\", \" first\","
                    " \"first \", \"\", \"firs\", \"second_\"]}");
}

Test(rpc_plan, results_are_not_scanned_again) {
    /* b's result is the string "a"; c receives it as data, not as a's result. */
    expect_response(
        "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]},"
        " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"literal\"]},"
        " {\"name\": \"c\", \"fun\": \"obj\", \"kwargs\": {\"v\": \"b\", \"w\": \"a\"}}]",
        "{\"c\": {\"v\": \"literal\", \"w\": 1}}");
}

Test(rpc_plan, a_command_used_only_through_a_field_is_consumed) {
    expect_response("[{\"name\": \"a\", \"fun\": \"obj\", \"kwargs\": {\"k\": 1}},"
                    " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a.k\"]},"
                    " {\"name\": \"c\", \"fun\": \"echo\", \"args\": [2]}]",
                    "{\"b\": 1, \"c\": 2}");
}

Test(rpc_plan, empty_request_has_empty_response) {
    expect_response("[]", "{}");
}

Test(rpc_plan, empty_path_segment_is_refused) {
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]},"
                      " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a.\"]}]",
                      MPREG_E_INVALID, "reference 'a.' has an empty field name", "b");
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]},"
                      " {\"name\": \"b\", \"fun\": \"echo\", \"kwargs\": {\"k\": \"a..x\"}}]",
                      MPREG_E_INVALID, "empty field name", "b");
}

/* ---- cycles --------------------------------------------------------------------- */

static void expect_cycle(const char *request, const char *message, const char *command,
                         const char *details) {
    mpreg_value cmds = json(request);
    mp_rpc_plan *plan = NULL;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_plan_from_value(&cmds, &plan, &err), MPREG_E_CYCLE);
    cr_assert_null(plan);
    cr_assert_str_eq(mp_rpc_error_message(&err), message);
    cr_assert_str_eq(err.command, command);
    assert_json_eq(&err.details, details);
    mp_rpc_error_free(&err);
    mpreg_value_free(&cmds);
}

Test(rpc_plan, self_reference) {
    expect_cycle("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"a\"]}]", "cycle: a -> a", "a",
                 "{\"cycle\": [\"a\", \"a\"]}");
    expect_cycle("[{\"name\": \"z\", \"fun\": \"echo\", \"args\": [1]},"
                 " {\"name\": \"a\", \"fun\": \"echo\", \"kwargs\": {\"k\": [\"a.x.y\"]}}]",
                 "cycle: a -> a", "a", "{\"cycle\": [\"a\", \"a\"]}");
}

Test(rpc_plan, two_cycle) {
    expect_cycle("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"b\"]},"
                 " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a.f\"]}]",
                 "cycle: a -> b -> a", "a", "{\"cycle\": [\"a\", \"b\", \"a\"]}");
}

Test(rpc_plan, three_cycle) {
    expect_cycle("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"b\"]},"
                 " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"c\"]},"
                 " {\"name\": \"c\", \"fun\": \"echo\", \"args\": [\"a\"]}]",
                 "cycle: a -> b -> c -> a", "a", "{\"cycle\": [\"a\", \"b\", \"c\", \"a\"]}");
}

Test(rpc_plan, cycle_behind_acyclic_commands_is_named_alone) {
    /* x is fine; d depends on the cycle but is not part of it. */
    expect_cycle("[{\"name\": \"x\", \"fun\": \"echo\", \"args\": [1]},"
                 " {\"name\": \"d\", \"fun\": \"echo\", \"args\": [\"q\", \"x\"]},"
                 " {\"name\": \"p\", \"fun\": \"echo\", \"args\": [\"x\", \"r\"]},"
                 " {\"name\": \"q\", \"fun\": \"echo\", \"args\": [\"p\"]},"
                 " {\"name\": \"r\", \"fun\": \"echo\", \"args\": [\"q\"]}]",
                 "cycle: p -> r -> q -> p", "p", "{\"cycle\": [\"p\", \"r\", \"q\", \"p\"]}");
}

/* ---- validation ------------------------------------------------------------------ */

Test(rpc_plan, duplicate_names) {
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\"}, {\"name\": \"b\", \"fun\": \"echo\"},"
                      " {\"name\": \"a\", \"fun\": \"echos\"}]",
                      MPREG_E_DUPLICATE, "command 'a' appears twice (commands[0] and commands[2])",
                      "a");
}

Test(rpc_plan, unknown_keys) {
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\", \"kwarg\": {}}]", MPREG_E_INVALID,
                      "command 'a': unknown key 'kwarg'", "a");
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\", \"command\": \"a\"}]", MPREG_E_INVALID,
                      "unknown key 'command'", "a");
}

typedef struct bad_case {
    const char *request;
    mpreg_err code;
    const char *message_part;
} bad_case;

Test(rpc_plan, bad_types_and_values) {
    static const bad_case cases[] = {
        {"{}", MPREG_E_TYPE, "commands must be an array, got map"},
        {"[1]", MPREG_E_TYPE, "commands[0]: expected a map, got int"},
        {"[{\"fun\": \"echo\"}]", MPREG_E_MISSING_FIELD, "commands[0]: missing 'name'"},
        {"[{\"name\": 5, \"fun\": \"echo\"}]", MPREG_E_TYPE, "'name' must be a str, got int"},
        {"[{\"name\": \"\", \"fun\": \"echo\"}]", MPREG_E_INVALID, "'name' is empty"},
        {"[{\"name\": \"a.b\", \"fun\": \"echo\"}]", MPREG_E_INVALID, "contains '.'"},
        {"[{\"name\": \"a\\u0000b\", \"fun\": \"echo\"}]", MPREG_E_INVALID, "NUL"},
        {"[{\"name\": \"a\"}]", MPREG_E_MISSING_FIELD, "command 'a': missing 'fun'"},
        {"[{\"name\": \"a\", \"fun\": null}]", MPREG_E_TYPE, "'fun' must be a str, got nil"},
        {"[{\"name\": \"a\", \"fun\": \"\"}]", MPREG_E_INVALID, "'fun' is empty"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"args\": {}}]", MPREG_E_TYPE,
         "'args' must be an array, got map"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"args\": \"x\"}]", MPREG_E_TYPE,
         "'args' must be an array, got str"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"kwargs\": []}]", MPREG_E_TYPE,
         "'kwargs' must be a map, got array"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"locs\": \"gpu\"}]", MPREG_E_TYPE,
         "'locs' must be an array, got str"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"locs\": [\"gpu\", 3]}]", MPREG_E_TYPE,
         "'locs[1]' must be a str, got int"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"locs\": [\"\"]}]", MPREG_E_INVALID,
         "'locs[0]' is empty"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"version\": 1}]", MPREG_E_TYPE,
         "'version' must be a str, got int"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"function_id\": false}]", MPREG_E_TYPE,
         "'function_id' must be a str, got bool"},
        {"[{\"name\": \"a\", \"fun\": \"echo\", \"target_cluster\": []}]", MPREG_E_TYPE,
         "'target_cluster' must be a str, got array"},
        {"[{\"name\": \"ok\", \"fun\": \"echo\"}, {\"name\": \"b\", \"fun\": 1}]", MPREG_E_TYPE,
         "command 'b': 'fun' must be a str"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_plan_error(cases[i].request, cases[i].code, cases[i].message_part, NULL);
    }
}

Test(rpc_plan, string_limits) {
    char name[300], request[800];
    memset(name, 'n', 256);
    name[256] = '\0';
    snprintf(request, sizeof request, "[{\"name\": \"%s\", \"fun\": \"echo\"}]", name);
    expect_plan_error(request, MPREG_E_TOO_LARGE, "'name' is longer than 255 bytes", NULL);
    name[255] = '\0';
    snprintf(request, sizeof request, "[{\"name\": \"%s\", \"fun\": \"echo\"}]", name);
    mp_rpc_plan_free(plan_json(request));

    char locs[400] = "[";
    for (int i = 0; i < 33; i++) {
        strcat(locs, i ? ",\"r\"" : "\"r\"");
    }
    strcat(locs, "]");
    snprintf(request, sizeof request, "[{\"name\": \"a\", \"fun\": \"echo\", \"locs\": %s}]", locs);
    expect_plan_error(request, MPREG_E_TOO_LARGE, "'locs' has 33 items", "a");
}

Test(rpc_plan, too_many_commands) {
    mpreg_value list = mpreg_array();
    for (int i = 0; i <= MP_RPC_MAX_COMMANDS; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%d", i);
        mpreg_value c = mpreg_map();
        mpreg_map_set(&c, "name", mpreg_str(name));
        mpreg_map_set(&c, "fun", mpreg_str("echo"));
        mpreg_array_push(&list, c);
    }
    mp_rpc_request req;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_commands_parse(&list, &req, &err), MPREG_E_TOO_LARGE);
    cr_assert(strstr(err.message, "1025 commands"));
    cr_assert_null(req.commands);
    mp_rpc_error_free(&err);
    /* exactly the limit is fine */
    mpreg_value_free(&list.u.arr.items[MP_RPC_MAX_COMMANDS]);
    list.u.arr.len--;
    mp_rpc_plan *plan;
    cr_assert_eq(mp_rpc_plan_from_value(&list, &plan, &err), MPREG_OK);
    cr_assert_eq(mp_rpc_plan_ready_count(plan), MP_RPC_MAX_COMMANDS);
    mp_rpc_plan_free(plan);
    mpreg_value_free(&list);
}

/* n arrays nested in each other (depth n). */
static mpreg_value nested(int n) {
    mpreg_value v = mpreg_array();
    for (int i = 1; i < n; i++) {
        mpreg_value outer = mpreg_array();
        mpreg_array_push(&outer, v);
        v = outer;
    }
    return v;
}

/* {"name": name, "fun": fun, "args": args} (takes args). */
static mpreg_value command(const char *name, const char *fun, mpreg_value args) {
    mpreg_value c = mpreg_map();
    mpreg_map_set(&c, "name", mpreg_str(name));
    mpreg_map_set(&c, "fun", mpreg_str(fun));
    mpreg_map_set(&c, "args", args);
    return c;
}

Test(rpc_plan, too_deep_args) {
    /* args itself counts: 30 levels is over MP_RPC_MAX_REQUEST_ARG_DEPTH, 29
     * is fine: the payload map, the commands array and the command map take
     * the other 3 of the wire's 32. (Built by hand: the JSON reader stops at
     * 32 levels for the whole list.) */
    mpreg_value list = mpreg_array();
    mpreg_array_push(&list, command("a", "echo", nested(30)));
    mp_rpc_plan *plan;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_plan_from_value(&list, &plan, &err), MPREG_E_TOO_DEEP);
    cr_assert_str_eq(err.message, "command 'a': 'args' nests deeper than 29 levels (the array "
                                  "itself is level 1, so each value in it at most 28)");
    cr_assert_str_eq(err.command, "a");
    mp_rpc_error_free(&err);
    mpreg_value_free(&list);

    list = mpreg_array();
    mpreg_array_push(&list, command("a", "echo", nested(29)));
    cr_assert_eq(mp_rpc_plan_from_value(&list, &plan, &err), MPREG_OK);
    mp_rpc_plan_free(plan);
    mpreg_value_free(&list);
}

/* A request payload whose command "deep" has args `levels` deep, written
 * byte by byte (the encoder refuses what is over 32 levels in all); with
 * name_last, "name" comes after "args" in the command map. */
static size_t deep_request(uint8_t *out, int levels, bool name_last) {
    size_t n = 0;
    static const uint8_t head[] = {0x81, 0xa8, 'c', 'o', 'm', 'm', 'a', 'n', 'd', 's', 0x91, 0x83};
    static const uint8_t name[] = {0xa4, 'n', 'a', 'm', 'e', 0xa4, 'd', 'e', 'e', 'p'};
    static const uint8_t fun[] = {0xa3, 'f', 'u', 'n', 0xa4, 'e', 'c', 'h', 'o'};
    static const uint8_t args[] = {0xa4, 'a', 'r', 'g', 's'};
    memcpy(out + n, head, sizeof head), n += sizeof head;
    if (!name_last) {
        memcpy(out + n, name, sizeof name), n += sizeof name;
    }
    memcpy(out + n, fun, sizeof fun), n += sizeof fun;
    memcpy(out + n, args, sizeof args), n += sizeof args;
    for (int i = 1; i < levels; i++) {
        out[n++] = 0x91;
    }
    out[n++] = 0x90;
    if (name_last) {
        memcpy(out + n, name, sizeof name), n += sizeof name;
    }
    return n;
}

/* PROTOCOL 8.1's limit is what the wire carries: args 29 levels deep arrive
 * and parse; 30 cannot be decoded, and the error still names the command
 * (it used to be an anonymous "request: too_deep"). */
Test(rpc_plan, too_deep_args_on_the_wire_name_the_command) {
    uint8_t buf[128];
    for (int name_last = 0; name_last < 2; name_last++) {
        mp_rpc_request req;
        mp_rpc_error err = MP_RPC_ERROR_INIT;
        size_t len = deep_request(buf, 29, name_last);
        cr_assert_eq(mp_rpc_request_parse(buf, len, &req, &err), MPREG_OK, "%s",
                     mp_rpc_error_message(&err));
        mp_rpc_request_free(&req);
        len = deep_request(buf, 30, name_last);
        cr_assert_eq(mp_rpc_request_parse(buf, len, &req, &err), MPREG_E_TOO_DEEP);
        cr_assert_str_eq(mp_rpc_error_message(&err),
                         "command 'deep': 'args' nests deeper than 29 levels (the array itself "
                         "is level 1, so each value in it at most 28)");
        cr_assert_str_eq(err.command, "deep");
        mp_rpc_error_free(&err);
    }
}

Test(rpc_plan, version_constraints) {
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\", \"version\": \">=x\"}]",
                      MPREG_E_BAD_SEMVER, "command 'a': bad version constraint '>=x'", "a");
    expect_plan_error("[{\"name\": \"a\", \"fun\": \"echo\", \"version\": \">=2.0,<1.0\"}]",
                      MPREG_E_BAD_SEMVER, "bad version constraint", "a");
    mp_rpc_plan *plan = plan_json(
        "[{\"name\": \"a\", \"fun\": \"echo\", \"version\": \">=1.0,<2.0\", \"function_id\": \"f\","
        "  \"locs\": [\"gpu\", \"eu\"], \"target_cluster\": \"c2\"},"
        " {\"name\": \"b\", \"fun\": \"echo\", \"version\": \"1.2\"},"
        " {\"name\": \"c\", \"fun\": \"echo\", \"version\": \"\"}]");
    const mp_rpc_command *c = mp_rpc_plan_command(plan, 0);
    cr_assert_str_eq(c->version, ">=1.0,<2.0");
    cr_assert_str_eq(c->function_id, "f");
    cr_assert_str_eq(c->target_cluster, "c2");
    cr_assert_eq(c->locs.count, 2);
    cr_assert_str_eq(c->locs.items[1], "eu");
    cr_assert_eq(c->args.type, MPREG_ARRAY);
    cr_assert_eq(c->kwargs.type, MPREG_MAP);
    cr_assert_null(mp_rpc_plan_command(plan, 1)->function_id);
    mp_rpc_plan_free(plan);
}

/* ---- execution -------------------------------------------------------------------- */

/* Plans, runs, and expects the request to fail resolving `command`. */
static void expect_run_error(const char *request, mpreg_err code, const char *message,
                             const char *command) {
    mp_rpc_plan *plan = plan_json(request);
    run_plan(plan);
    const mp_rpc_error *e = mp_rpc_plan_error(plan);
    cr_assert_not_null(e, "%s: did not fail", request);
    cr_assert_eq(e->code, code);
    cr_assert_str_eq(mp_rpc_error_message(e), message);
    cr_assert_str_eq(e->command, command);
    mpreg_value out = mpreg_int(1);
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_E_INVALID);
    cr_assert_eq(out.type, MPREG_NIL);
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, missing_field_path) {
    expect_run_error("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]},"
                     " {\"name\": \"x\", \"fun\": \"echo\", \"args\": [\"a.b.c\"]}]",
                     MPREG_E_INVALID,
                     "command 'x': reference 'a.b.c': result of 'a' has no field 'b'", "x");
    expect_run_error("[{\"name\": \"a\", \"fun\": \"obj\", \"kwargs\": {\"user\": {}}},"
                     " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [[\"a.user.name\"]]}]",
                     MPREG_E_INVALID,
                     "command 'b': reference 'a.user.name': result of 'a.user' has no field "
                     "'name'",
                     "b");
    expect_run_error("[{\"name\": \"a\", \"fun\": \"echos\", \"args\": [1, 2]},"
                     " {\"name\": \"b\", \"fun\": \"echo\", \"kwargs\": {\"k\": \"a.2\"}}]",
                     MPREG_E_INVALID,
                     "command 'b': reference 'a.2': result of 'a' has no field '2'", "b");
    expect_run_error("[{\"name\": \"a\", \"fun\": \"echos\", \"args\": [1, 2]},"
                     " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a.01\"]}]",
                     MPREG_E_INVALID,
                     "command 'b': reference 'a.01': result of 'a' has no field '01'", "b");
}

Test(rpc_plan, missing_field_details) {
    mp_rpc_plan *plan = plan_json("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"s\"]},"
                                  " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a.k.z\"]}]");
    run_plan(plan);
    const mp_rpc_error *e = mp_rpc_plan_error(plan);
    cr_assert_not_null(e);
    assert_json_eq(&e->details, "{\"reference\": \"a.k.z\", \"field\": \"k\"}");
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, failure_propagation) {
    mp_rpc_plan *plan = plan_json("[{\"name\": \"a\", \"fun\": \"fail\"},"
                                  " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [\"a\"]},"
                                  " {\"name\": \"c\", \"fun\": \"echo\", \"args\": [1]},"
                                  " {\"name\": \"d\", \"fun\": \"echo\", \"args\": [\"c\"]}]");
    uint32_t ids[8];
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 2);
    cr_assert_eq(ids[0], 0);
    cr_assert_eq(ids[1], 2);
    run_one(plan, 0); /* fails */
    cr_assert_not(mp_rpc_plan_done(plan), "c is still running");
    const mp_rpc_error *e = mp_rpc_plan_error(plan);
    cr_assert_not_null(e);
    cr_assert_eq(e->code, MPREG_E_HANDLER);
    cr_assert_str_eq(e->command, "a");
    cr_assert_str_eq(mp_rpc_error_message(e), "boom");
    run_one(plan, 2); /* a late result is accepted and dropped */
    cr_assert_eq(mp_rpc_plan_state(plan, 2), MP_RPC_COMPLETE);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 0, "nothing is handed out after a failure");
    cr_assert_eq(mp_rpc_plan_ready_count(plan), 0);
    cr_assert(mp_rpc_plan_done(plan));
    cr_assert_eq(mp_rpc_plan_state(plan, 0), MP_RPC_FAILED);
    cr_assert_eq(mp_rpc_plan_state(plan, 1), MP_RPC_WAITING);
    cr_assert_eq(mp_rpc_plan_state(plan, 3), MP_RPC_WAITING);
    mpreg_value out;
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_E_INVALID);
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, first_failure_wins_and_misuse_is_refused) {
    mp_rpc_plan *plan = plan_json("[{\"name\": \"a\", \"fun\": \"x\"}, {\"name\": \"b\", "
                                  "\"fun\": \"x\"}, {\"name\": \"c\", \"fun\": \"x\"}]");
    uint32_t ids[4];
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 2), 2);
    cr_assert_eq(mp_rpc_plan_complete(plan, 2, mpreg_str("not running")), MPREG_E_INVALID);
    cr_assert_eq(mp_rpc_plan_complete(plan, 99, mpreg_nil()), MPREG_E_INVALID);
    mpreg_value args, kwargs;
    cr_assert_eq(mp_rpc_plan_resolve_args(plan, 2, &args, &kwargs), MPREG_E_INVALID);
    cr_assert_null(mp_rpc_plan_error(plan), "misuse does not fail the request");
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&e, MPREG_E_DEADLINE, "ignored", "too late");
    e.details = mpreg_int(5);
    cr_assert_eq(mp_rpc_plan_fail(plan, 1, &e), MPREG_OK);
    cr_assert_eq(e.code, MPREG_OK, "the error was taken");
    cr_assert_eq(mp_rpc_plan_fail_code(plan, 0, MPREG_E_HANDLER, "second"), MPREG_OK);
    cr_assert_eq(mp_rpc_plan_fail_code(plan, 0, MPREG_E_HANDLER, "again"), MPREG_E_INVALID);
    const mp_rpc_error *got = mp_rpc_plan_error(plan);
    cr_assert_eq(got->code, MPREG_E_DEADLINE);
    cr_assert_str_eq(got->command, "b", "the plan names the failed command");
    cr_assert_str_eq(got->message, "too late");
    cr_assert_eq(got->details.u.i, 5);
    cr_assert(mp_rpc_plan_done(plan));
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, parallel_readiness) {
    mp_rpc_plan *plan = plan_json("[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [1]},"
                                  " {\"name\": \"b\", \"fun\": \"echo\", \"args\": [2]},"
                                  " {\"name\": \"c\", \"fun\": \"echo\", \"args\": [3]}]");
    cr_assert_eq(mp_rpc_plan_ready_count(plan), 3);
    cr_assert_eq(mp_rpc_plan_level_count(plan), 1);
    uint32_t ids[8];
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 3);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 0, "each command is handed out once");
    /* complete in reverse order */
    run_one(plan, 2);
    run_one(plan, 0);
    cr_assert_not(mp_rpc_plan_done(plan));
    run_one(plan, 1);
    cr_assert(mp_rpc_plan_done(plan));
    mpreg_value out;
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_OK);
    assert_json_eq(&out, "{\"a\": 1, \"b\": 2, \"c\": 3}");
    mpreg_value_free(&out);
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_E_INVALID, "only once");
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, diamond) {
    mp_rpc_plan *plan =
        plan_json("[{\"name\": \"d\", \"fun\": \"echos\", \"args\": [\"b\", \"c\"]},"
                  " {\"name\": \"b\", \"fun\": \"echos\", \"args\": [\"a\", \"b-side\"]},"
                  " {\"name\": \"c\", \"fun\": \"echos\", \"args\": [\"a.0\", \"c-side\"]},"
                  " {\"name\": \"a\", \"fun\": \"echos\", \"args\": [\"root\"]}]");
    uint32_t ids[8];
    cr_assert_eq(mp_rpc_plan_level(plan, 3), 0);
    cr_assert_eq(mp_rpc_plan_level(plan, 1), 1);
    cr_assert_eq(mp_rpc_plan_level(plan, 2), 1);
    cr_assert_eq(mp_rpc_plan_level(plan, 0), 2);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 1);
    cr_assert_eq(ids[0], 3);
    run_one(plan, 3);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 2, "b and c are ready together");
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 2);
    run_one(plan, 2);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 0, "d still waits for b");
    cr_assert_eq(mp_rpc_plan_state(plan, 0), MP_RPC_WAITING);
    run_one(plan, 1);
    cr_assert_eq(mp_rpc_plan_state(plan, 0), MP_RPC_READY);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 8), 1);
    cr_assert_eq(ids[0], 0);
    run_one(plan, 0);
    cr_assert(mp_rpc_plan_done(plan));
    mpreg_value out;
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_OK);
    assert_json_eq(&out, "{\"d\": [[[\"root\"], \"b-side\"], [\"root\", \"c-side\"]]}");
    mpreg_value_free(&out);
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, argument_limits_stop_blowup) {
    /* Each step doubles the previous result: 2^20 leaves by the end. */
    char request[4096] = "[{\"name\": \"c0\", \"fun\": \"echos\", \"args\": [\"xxxxxxxx\"]}";
    for (int i = 1; i <= 20; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd,
                 ", {\"name\": \"c%d\", \"fun\": \"echos\", \"args\": [\"c%d\", \"c%d\"]}", i,
                 i - 1, i - 1);
        strcat(request, cmd);
    }
    strcat(request, "]");
    mp_rpc_plan *plan = plan_json(request);
    mp_rpc_plan_set_limits(plan, &(mp_rpc_limits){.max_arg_items = 1000});
    run_plan(plan);
    const mp_rpc_error *e = mp_rpc_plan_error(plan);
    cr_assert_not_null(e);
    cr_assert_eq(e->code, MPREG_E_TOO_LARGE);
    cr_assert_str_eq(e->command, "c9", "2^9 leaves + 2^9 arrays first exceed 1000 items");
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, substituted_depth_is_limited) {
    /* a returns 28 nested arrays (the deepest argument a request carries);
     * b takes it 3 levels down (31 levels in all: an RPC_INVOKE still holds
     * it), c one level further (32: too deep for an RPC_INVOKE). */
    mpreg_value a_args = mpreg_array();
    mpreg_array_push(&a_args, nested(28));
    mpreg_value b_args = nested(3), c_args = nested(4);
    mpreg_array_push(&b_args.u.arr.items[0].u.arr.items[0], mpreg_str("a"));
    mpreg_array_push(&c_args.u.arr.items[0].u.arr.items[0].u.arr.items[0], mpreg_str("a"));
    mpreg_value list = mpreg_array();
    mpreg_array_push(&list, command("a", "echo", a_args));
    mpreg_array_push(&list, command("b", "echo", b_args));
    mpreg_array_push(&list, command("c", "echo", c_args));
    mp_rpc_plan *plan;
    cr_assert_eq(mp_rpc_plan_from_value(&list, &plan, NULL), MPREG_OK);
    mpreg_value_free(&list);
    uint32_t ids[4];
    mpreg_value args, kwargs;
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 4), 1);
    run_one(plan, 0);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 4), 2);
    cr_assert_eq(mp_rpc_plan_resolve_args(plan, 1, &args, &kwargs), MPREG_OK, "31 levels fit");
    mpreg_value_free(&args);
    mpreg_value_free(&kwargs);
    cr_assert_eq(mp_rpc_plan_resolve_args(plan, 2, &args, &kwargs), MPREG_E_TOO_DEEP);
    cr_assert_str_eq(mp_rpc_plan_error(plan)->command, "c");
    mp_rpc_plan_free(plan);
}

Test(rpc_plan, invoke_from_plan) {
    mp_rpc_plan *plan = plan_json(
        "[{\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"v\"]},"
        " {\"name\": \"b\", \"fun\": \"echos\", \"args\": [\"a\", 2], \"kwargs\": {\"k\": \"a\"},"
        "  \"locs\": [\"gpu\"], \"version\": \"^1.2\", \"function_id\": \"fid\"}]");
    uint32_t ids[2];
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 2), 1);
    run_one(plan, 0);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 2), 1);
    mp_rpc_invoke inv;
    cr_assert_eq(mp_rpc_plan_invoke(plan, 1, &inv), MPREG_OK);
    cr_assert_str_eq(inv.command, "b");
    cr_assert_str_eq(inv.fun, "echos");
    cr_assert_str_eq(inv.version, "^1.2");
    cr_assert_str_eq(inv.function_id, "fid");
    cr_assert_eq(inv.locs.count, 1);
    assert_json_eq(&inv.args, "[\"v\", 2]");
    assert_json_eq(&inv.kwargs, "{\"k\": \"v\"}");

    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_rpc_invoke_encode(&inv, &buf), MPREG_OK);
    mpreg_value wire;
    cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &wire), MPREG_OK);
    assert_json_eq(&wire, "{\"command\": \"b\", \"fun\": \"echos\", \"args\": [\"v\", 2],"
                          " \"kwargs\": {\"k\": \"v\"}, \"locs\": [\"gpu\"],"
                          " \"function_id\": \"fid\", \"version\": \"^1.2\"}");
    mpreg_value_free(&wire);
    mp_rpc_invoke back;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_invoke_decode(buf.data, buf.len, &back, &err), MPREG_OK);
    cr_assert_str_eq(back.command, "b");
    cr_assert_str_eq(back.fun, "echos");
    cr_assert_str_eq(back.version, "^1.2");
    cr_assert_str_eq(back.function_id, "fid");
    cr_assert_str_eq(back.locs.items[0], "gpu");
    cr_assert(mpreg_value_equal(&back.args, &inv.args));
    cr_assert(mpreg_value_equal(&back.kwargs, &inv.kwargs));
    mp_rpc_invoke_free(&back);
    mp_rpc_invoke_free(&inv);
    mp_buf_free(&buf);
    mp_rpc_plan_free(plan);
}

/* ---- error shape and payloads --------------------------------------------------- */

static void encode_value(const char *json_text, mp_buf *out) {
    mpreg_value v = json(json_text);
    mp_buf_clear(out);
    cr_assert_eq(mpreg_value_encode(&v, out), MPREG_OK);
    mpreg_value_free(&v);
}

static void assert_errors_equal(const mp_rpc_error *a, const mp_rpc_error *b) {
    cr_assert_eq(a->code, b->code);
    cr_assert_str_eq(mp_rpc_error_message(a), mp_rpc_error_message(b));
    cr_assert_eq(a->command == NULL, b->command == NULL);
    if (a->command) {
        cr_assert_str_eq(a->command, b->command);
    }
    cr_assert(mpreg_value_equal(&a->details, &b->details));
}

Test(rpc_plan, error_shape) {
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_error_set(&e, MPREG_E_CYCLE, "a", "cycle: %s -> %s", "a", "a"),
                 MPREG_E_CYCLE);
    e.details = json("{\"cycle\": [\"a\", \"a\"]}");
    mpreg_value v;
    cr_assert_eq(mp_rpc_error_to_value(&e, &v), MPREG_OK);
    assert_json_eq(&v, "{\"code\": 303, \"name\": \"cycle\", \"message\": \"cycle: a -> a\","
                       " \"command\": \"a\", \"details\": {\"cycle\": [\"a\", \"a\"]}}");
    mp_rpc_error back;
    cr_assert_eq(mp_rpc_error_from_value(&v, &back), MPREG_OK);
    assert_errors_equal(&e, &back);
    mp_rpc_error copy;
    cr_assert_eq(mp_rpc_error_copy(&e, &copy), MPREG_OK);
    assert_errors_equal(&e, &copy);
    mp_rpc_error_free(&copy);
    mp_rpc_error_free(&back);
    mpreg_value_free(&v);

    /* no command, no details, no message: those keys are omitted / defaulted */
    mp_rpc_error_free(&e);
    e.code = MPREG_E_DEADLINE;
    cr_assert_eq(mp_rpc_error_to_value(&e, &v), MPREG_OK);
    char want[160];
    snprintf(want, sizeof want, "{\"code\": 305, \"name\": \"deadline\", \"message\": \"%s\"}",
             mpreg_strerror(MPREG_E_DEADLINE));
    assert_json_eq(&v, want);
    mpreg_value_free(&v);
    mp_rpc_error_free(&e);
}

Test(rpc_plan, error_from_value_is_lenient_about_new_keys_only) {
    mp_rpc_error e;
    mpreg_value v = json("{\"code\": 777, \"message\": \"m\", \"future\": [1], \"name\": \"x\"}");
    cr_assert_eq(mp_rpc_error_from_value(&v, &e), MPREG_OK, "unknown codes and keys are fine");
    cr_assert_eq((int)e.code, 777);
    cr_assert_null(e.command);
    mp_rpc_error_free(&e);
    mpreg_value_free(&v);
    static const struct {
        const char *json;
        mpreg_err code;
    } bad[] = {
        {"[]", MPREG_E_TYPE},
        {"{\"message\": \"m\"}", MPREG_E_MISSING_FIELD},
        {"{\"code\": \"303\"}", MPREG_E_TYPE},
        {"{\"code\": 0}", MPREG_E_RANGE},
        {"{\"code\": 1000}", MPREG_E_RANGE},
        {"{\"code\": 303, \"message\": 1}", MPREG_E_TYPE},
        {"{\"code\": 303, \"command\": []}", MPREG_E_TYPE},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = json(bad[i].json);
        cr_assert_eq(mp_rpc_error_from_value(&v, &e), bad[i].code, "%s", bad[i].json);
        cr_assert_eq(e.code, MPREG_OK);
        mpreg_value_free(&v);
    }
}

Test(rpc_plan, error_messages_are_cut_and_scrubbed) {
    mp_rpc_error e = MP_RPC_ERROR_INIT;
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    mp_rpc_error_set(&e, MPREG_E_INVALID, NULL, "%s", big);
    cr_assert_eq(strlen(e.message), MP_RPC_MAX_MESSAGE);
    cr_assert_eq(strcmp(e.message + MP_RPC_MAX_MESSAGE - 3, "..."), 0);
    mp_rpc_error_set(&e, MPREG_E_INVALID, NULL, "bad \xff byte, good \xc3\xa9");
    cr_assert_str_eq(e.message, "bad ? byte, good \xc3\xa9");
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_rpc_reply_encode_error(&e, &buf), MPREG_OK);
    mp_buf_free(&buf);
    mp_rpc_error_free(&e);
    cr_assert_eq(mp_rpc_error_set(NULL, MPREG_E_IO, NULL, "x"), MPREG_E_IO);
}

Test(rpc_plan, request_payload_round_trip) {
    mp_buf buf = MP_BUF_INIT;
    encode_value("{\"timeout_ms\": 2500, \"commands\": ["
                 " {\"name\": \"a\", \"fun\": \"echo\", \"args\": [\"hi\"]},"
                 " {\"name\": \"b\", \"fun\": \"echos\", \"args\": [\"a\", 1.5, null],"
                 "  \"kwargs\": {\"k\": [\"a\"]}, \"locs\": [\"gpu\"], \"version\": \">=1\","
                 "  \"function_id\": \"f1\", \"target_cluster\": \"eu\"}]}",
                 &buf);
    mp_rpc_request req;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_request_parse(buf.data, buf.len, &req, &err), MPREG_OK, "%s",
                 mp_rpc_error_message(&err));
    cr_assert_eq(req.count, 2);
    cr_assert_eq(req.timeout_ms, 2500);
    cr_assert_eq(req.commands[0].kwargs.type, MPREG_MAP);
    cr_assert_str_eq(req.commands[1].target_cluster, "eu");

    mp_buf again = MP_BUF_INIT;
    cr_assert_eq(mp_rpc_request_encode(&req, &again), MPREG_OK);
    mp_rpc_request back;
    cr_assert_eq(mp_rpc_request_parse(again.data, again.len, &back, &err), MPREG_OK);
    cr_assert_eq(back.count, req.count);
    cr_assert_eq(back.timeout_ms, req.timeout_ms);
    for (uint32_t i = 0; i < req.count; i++) {
        mpreg_value x, y;
        cr_assert_eq(mp_rpc_command_to_value(&req.commands[i], &x), MPREG_OK);
        cr_assert_eq(mp_rpc_command_to_value(&back.commands[i], &y), MPREG_OK);
        cr_assert(mpreg_value_equal(&x, &y));
        mpreg_value_free(&x);
        mpreg_value_free(&y);
    }
    /* the plan takes the request's commands */
    mp_rpc_plan *plan;
    cr_assert_eq(mp_rpc_plan_new(&back, &plan, &err), MPREG_OK);
    cr_assert_null(back.commands);
    cr_assert_eq(back.count, 0);
    run_plan(plan);
    mpreg_value out;
    cr_assert_eq(mp_rpc_plan_response(plan, &out), MPREG_OK);
    assert_json_eq(&out, "{\"b\": [\"hi\", 1.5, null]}");
    mpreg_value_free(&out);
    mp_rpc_plan_free(plan);
    mp_rpc_request_free(&back);
    mp_rpc_request_free(&req);
    mp_buf_free(&again);
    mp_buf_free(&buf);
}

Test(rpc_plan, request_payload_errors) {
    static const struct {
        const char *json;
        mpreg_err code;
        const char *message;
    } cases[] = {
        {"[]", MPREG_E_TYPE, "request: expected a map, got array"},
        {"{}", MPREG_E_MISSING_FIELD, "request: missing 'commands'"},
        {"{\"commands\": [], \"timeout\": 5}", MPREG_E_INVALID,
         "request: unknown key 'timeout' (known: commands, timeout_ms)"},
        {"{\"commands\": [], \"timeout_ms\": -1}", MPREG_E_RANGE,
         "request: 'timeout_ms' is negative"},
        {"{\"commands\": [], \"timeout_ms\": 1.0}", MPREG_E_TYPE,
         "request: 'timeout_ms' must be an int, got float"},
        {"{\"commands\": [{\"name\": \"a\", \"fun\": \"f\", \"args\": 1}]}", MPREG_E_TYPE,
         "command 'a': 'args' must be an array, got int"},
    };
    mp_buf buf = MP_BUF_INIT;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        encode_value(cases[i].json, &buf);
        mp_rpc_request req;
        mp_rpc_error err = MP_RPC_ERROR_INIT;
        cr_assert_eq(mp_rpc_request_parse(buf.data, buf.len, &req, &err), cases[i].code, "%s",
                     cases[i].json);
        cr_assert_str_eq(mp_rpc_error_message(&err), cases[i].message);
        cr_assert_null(req.commands);
        mp_rpc_error_free(&err);
    }
    mp_rpc_request req;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_request_parse("\x81\xa8"
                                      "commands",
                                      10, &req, &err),
                 MPREG_E_TRUNCATED);
    cr_assert_eq(err.code, MPREG_E_TRUNCATED);
    mp_rpc_error_free(&err);
    mp_buf_free(&buf);
}

Test(rpc_plan, reply_payload_round_trip) {
    mp_buf buf = MP_BUF_INIT;
    mpreg_value results = json("{\"second\": \"hi there!\", \"third\": [\"hi there!\", 1]}");
    cr_assert_eq(mp_rpc_reply_encode_ok(&results, &buf), MPREG_OK);
    mpreg_value wire;
    cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &wire), MPREG_OK);
    assert_json_eq(&wire,
                   "{\"results\": {\"second\": \"hi there!\", \"third\": [\"hi there!\", 1]}}");
    mpreg_value_free(&wire);
    mp_rpc_outcome o;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_reply_decode(buf.data, buf.len, &o, &err), MPREG_OK);
    cr_assert(o.ok);
    cr_assert(mpreg_value_equal(&o.value, &results));
    mp_rpc_outcome_free(&o);

    mp_rpc_error e = MP_RPC_ERROR_INIT;
    mp_rpc_error_set(&e, MPREG_E_NOT_FOUND, "b", "command 'b': no function 'nope'");
    e.details = json("{\"fun\": \"nope\"}");
    mp_buf_clear(&buf);
    cr_assert_eq(mp_rpc_reply_encode_error(&e, &buf), MPREG_OK);
    cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &wire), MPREG_OK);
    assert_json_eq(&wire, "{\"error\": {\"code\": 300, \"name\": \"not_found\", \"message\":"
                          " \"command 'b': no function 'nope'\", \"command\": \"b\","
                          " \"details\": {\"fun\": \"nope\"}}}");
    mpreg_value_free(&wire);
    cr_assert_eq(mp_rpc_reply_decode(buf.data, buf.len, &o, &err), MPREG_OK);
    cr_assert_not(o.ok);
    assert_errors_equal(&o.error, &e);
    mp_rpc_outcome_free(&o);

    static const char *const bad[] = {
        "{}",
        "{\"results\": {}, \"error\": {\"code\": 300}}",
        "{\"results\": []}",
        "{\"result\": 1}",
        "{\"error\": {\"message\": \"no code\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        encode_value(bad[i], &buf);
        cr_assert_neq(mp_rpc_reply_decode(buf.data, buf.len, &o, &err), MPREG_OK, "%s", bad[i]);
        cr_assert_eq(o.value.type, MPREG_NIL);
        cr_assert_eq(o.error.code, MPREG_OK);
        mp_rpc_error_free(&err);
    }
    mp_rpc_error_free(&e);
    mpreg_value_free(&results);
    mp_buf_free(&buf);
}

Test(rpc_plan, result_payload_round_trip) {
    mp_buf buf = MP_BUF_INIT;
    mp_rpc_outcome in = {.ok = true, .value = json("[1, {\"a\": null}]")};
    cr_assert_eq(mp_rpc_result_encode(&in, &buf), MPREG_OK);
    mpreg_value wire;
    cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &wire), MPREG_OK);
    assert_json_eq(&wire, "{\"result\": [1, {\"a\": null}]}");
    mpreg_value_free(&wire);
    mp_rpc_outcome o;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_result_decode(buf.data, buf.len, &o, &err), MPREG_OK);
    cr_assert(o.ok);
    cr_assert(mpreg_value_equal(&o.value, &in.value));
    mp_rpc_outcome_free(&o);
    mp_rpc_outcome_free(&in);

    /* a nil result is a result */
    in = (mp_rpc_outcome){.ok = true};
    mp_buf_clear(&buf);
    cr_assert_eq(mp_rpc_result_encode(&in, &buf), MPREG_OK);
    cr_assert_eq(mp_rpc_result_decode(buf.data, buf.len, &o, &err), MPREG_OK);
    cr_assert(o.ok);
    cr_assert_eq(o.value.type, MPREG_NIL);

    in = (mp_rpc_outcome){.ok = false};
    mp_rpc_error_set(&in.error, MPREG_E_HANDLER, "x", "division by zero");
    mp_buf_clear(&buf);
    cr_assert_eq(mp_rpc_result_encode(&in, &buf), MPREG_OK);
    cr_assert_eq(mp_rpc_result_decode(buf.data, buf.len, &o, &err), MPREG_OK);
    cr_assert_not(o.ok);
    assert_errors_equal(&o.error, &in.error);
    mp_rpc_outcome_free(&o);
    mp_rpc_outcome_free(&in);

    encode_value("{\"results\": {}}", &buf);
    cr_assert_eq(mp_rpc_result_decode(buf.data, buf.len, &o, &err), MPREG_E_INVALID);
    cr_assert(strstr(err.message, "unknown key 'results'"));
    mp_rpc_error_free(&err);
    mp_buf_free(&buf);
}

Test(rpc_plan, invoke_payload_validation) {
    static const struct {
        const char *json;
        mpreg_err code;
        const char *message;
    } cases[] = {
        {"{\"fun\": \"f\"}", MPREG_E_MISSING_FIELD, "invoke: missing 'command'"},
        {"{\"command\": \"c\"}", MPREG_E_MISSING_FIELD, "command 'c': missing 'fun'"},
        {"{\"command\": \"c\", \"fun\": \"f\", \"target_cluster\": \"x\"}", MPREG_E_INVALID,
         "command 'c': unknown key 'target_cluster'"},
        {"{\"command\": \"c\", \"fun\": \"f\", \"name\": \"c\"}", MPREG_E_INVALID,
         "command 'c': unknown key 'name'"},
        {"{\"command\": \"c\", \"fun\": \"f\", \"version\": \"x\"}", MPREG_E_BAD_SEMVER,
         "command 'c': bad version constraint 'x'"},
    };
    mp_buf buf = MP_BUF_INIT;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        encode_value(cases[i].json, &buf);
        mp_rpc_invoke inv;
        mp_rpc_error err = MP_RPC_ERROR_INIT;
        cr_assert_eq(mp_rpc_invoke_decode(buf.data, buf.len, &inv, &err), cases[i].code, "%s",
                     cases[i].json);
        cr_assert(strstr(mp_rpc_error_message(&err), cases[i].message), "%s: %s", cases[i].json,
                  mp_rpc_error_message(&err));
        cr_assert_null(inv.command);
        mp_rpc_error_free(&err);
    }
    encode_value("{\"command\": \"c\", \"fun\": \"f\"}", &buf);
    mp_rpc_invoke inv;
    cr_assert_eq(mp_rpc_invoke_decode(buf.data, buf.len, &inv, NULL), MPREG_OK);
    cr_assert_eq(inv.args.type, MPREG_ARRAY);
    cr_assert_eq(inv.kwargs.type, MPREG_MAP);
    cr_assert_null(inv.version);
    mp_rpc_invoke_free(&inv);
    mp_buf_free(&buf);
}

/* ---- property test: random DAGs against a reference evaluator -------------------- */

#define GEN_MAX 50

enum { FUN_ECHO, FUN_ECHOS, FUN_WRAP };

typedef struct gen_cmd {
    char name[16];
    int fun;
    size_t argc;
    bool has_key;       /* kwargs holds "key" (so "cN.kw.key" exists when fun is wrap) */
    mpreg_value value;  /* the command map */
    uint32_t deps[256]; /* direct deps by generation index, may repeat */
    uint32_t ndeps;
} gen_cmd;

typedef struct gen {
    mp_xoshiro rng;
    gen_cmd cmds[GEN_MAX];
    uint32_t n;
} gen;

static uint64_t rnd(gen *g, uint64_t n) {
    return mp_rng_below(&g->rng.rng, n);
}

/* A reference from command i to an earlier command j: whole, or a field path
 * that exists in j's result given its function. */
static mpreg_value gen_ref(gen *g, uint32_t i) {
    uint32_t j = (uint32_t)rnd(g, i);
    gen_cmd *t = &g->cmds[j];
    gen_cmd *c = &g->cmds[i];
    if (c->ndeps < 256) {
        c->deps[c->ndeps++] = j;
    }
    char text[64];
    uint64_t pick = rnd(g, 4);
    if (t->fun == FUN_WRAP && pick == 1) {
        snprintf(text, sizeof text, "%s.x", t->name);
    } else if (t->fun == FUN_WRAP && pick == 2) {
        snprintf(text, sizeof text, "%s.items.%u", t->name, (unsigned)rnd(g, t->argc));
    } else if (t->fun == FUN_WRAP && pick == 3) {
        snprintf(text, sizeof text, t->has_key ? "%s.kw.key" : "%s.kw", t->name);
    } else if (t->fun == FUN_ECHOS && pick != 0) {
        snprintf(text, sizeof text, "%s.%u", t->name, (unsigned)rnd(g, t->argc));
    } else {
        snprintf(text, sizeof text, "%s", t->name);
    }
    return mpreg_str(text);
}

static mpreg_value gen_arg(gen *g, uint32_t i, int depth) {
    uint64_t kind = rnd(g, depth < 2 ? 7 : 5);
    char text[32];
    switch (kind) {
    case 0:
        return mpreg_int((int64_t)rnd(g, 1000));
    case 1:
        snprintf(text, sizeof text, "c%uly", (unsigned)rnd(g, GEN_MAX));
        return mpreg_str(rnd(g, 2) ? text : "plain.text");
    case 2:
    case 3:
    case 4:
        return i > 0 ? gen_ref(g, i) : mpreg_str("c0ly");
    case 5: {
        mpreg_value a = mpreg_array();
        for (uint64_t k = rnd(g, 3); k > 0; k--) {
            mpreg_array_push(&a, gen_arg(g, i, depth + 1));
        }
        return a;
    }
    default: {
        mpreg_value m = mpreg_map();
        for (uint64_t k = rnd(g, 3); k > 0; k--) {
            char key[8];
            snprintf(key, sizeof key, "m%u", (unsigned)k);
            mpreg_map_set(&m, key, gen_arg(g, i, depth + 1));
        }
        /* a key that is a command name is never a reference */
        mpreg_map_set(&m, "c0", mpreg_int(0));
        return m;
    }
    }
}

static void gen_request(gen *g) {
    g->n = 1 + (uint32_t)rnd(g, GEN_MAX);
    static const char *const funs[] = {"echo", "echos", "wrap"};
    for (uint32_t i = 0; i < g->n; i++) {
        gen_cmd *c = &g->cmds[i];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "c%u", i);
        c->fun = (int)rnd(g, 3);
        c->argc = 1 + rnd(g, 4);
        mpreg_value args = mpreg_array();
        for (size_t k = 0; k < c->argc; k++) {
            mpreg_array_push(&args, gen_arg(g, i, 0));
        }
        mpreg_value kwargs = mpreg_map();
        if (rnd(g, 2)) {
            c->has_key = true;
            mpreg_map_set(&kwargs, "key", gen_arg(g, i, 0));
        }
        if (rnd(g, 3) == 0) {
            mpreg_map_set(&kwargs, "other", gen_arg(g, i, 1));
        }
        c->value = mpreg_map();
        mpreg_map_set(&c->value, "name", mpreg_str(c->name));
        mpreg_map_set(&c->value, "fun", mpreg_str(funs[c->fun]));
        mpreg_map_set(&c->value, "args", args);
        mpreg_map_set(&c->value, "kwargs", kwargs);
    }
}

/* The command list in a random order (shallow: the maps stay owned by g). */
static mpreg_value gen_list(gen *g, mpreg_value *items) {
    for (uint32_t i = 0; i < g->n; i++) {
        items[i] = g->cmds[i].value;
    }
    for (uint32_t i = g->n; i > 1; i--) {
        uint32_t k = (uint32_t)rnd(g, i);
        mpreg_value t = items[i - 1];
        items[i - 1] = items[k];
        items[k] = t;
    }
    mpreg_value list = {.type = MPREG_ARRAY};
    list.u.arr.items = items;
    list.u.arr.len = list.u.arr.cap = g->n;
    return list;
}

static void gen_free(gen *g) {
    for (uint32_t i = 0; i < g->n; i++) {
        mpreg_value_free(&g->cmds[i].value);
    }
}

/* --- the reference evaluator: plain recursion over the same rules, written
 * independently of the module (names found by linear search). */
typedef struct ref_eval {
    gen *g;
    mpreg_value results[GEN_MAX];
    bool have[GEN_MAX];
    bool consumed[GEN_MAX];
} ref_eval;

static int ref_find(const gen *g, const char *s, size_t len) {
    for (uint32_t i = 0; i < g->n; i++) {
        if (strlen(g->cmds[i].name) == len && memcmp(g->cmds[i].name, s, len) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static mpreg_value ref_value(ref_eval *r, uint32_t i);

static mpreg_value ref_subst(ref_eval *r, const mpreg_value *v) {
    mpreg_value out;
    if (v->type == MPREG_STR) {
        const char *s = v->u.str.ptr;
        size_t len = strcspn(s, ".");
        int t = ref_find(r->g, s, len);
        if (t < 0) {
            mpreg_value_clone(v, &out);
            return out;
        }
        r->consumed[t] = true;
        mpreg_value whole = ref_value(r, (uint32_t)t);
        const mpreg_value *cur = &whole;
        const char *p = s + len;
        while (*p == '.') {
            p++;
            size_t seg = strcspn(p, ".");
            char key[64];
            snprintf(key, sizeof key, "%.*s", (int)seg, p);
            cur = cur->type == MPREG_MAP ? mpreg_map_get(cur, key)
                                         : &cur->u.arr.items[strtoul(key, NULL, 10)];
            cr_assert_not_null(cur, "generator made a bad path %s", s);
            p += seg;
        }
        mpreg_value_clone(cur, &out);
        mpreg_value_free(&whole);
        return out;
    }
    if (v->type == MPREG_ARRAY) {
        out = mpreg_array();
        for (size_t i = 0; i < v->u.arr.len; i++) {
            mpreg_array_push(&out, ref_subst(r, &v->u.arr.items[i]));
        }
        return out;
    }
    if (v->type == MPREG_MAP) {
        out = mpreg_map();
        for (size_t i = 0; i < v->u.map.len; i++) {
            mpreg_map_set(&out, v->u.map.items[i].key.u.str.ptr,
                          ref_subst(r, &v->u.map.items[i].val));
        }
        return out;
    }
    mpreg_value_clone(v, &out);
    return out;
}

/* A copy of command i's result. */
static mpreg_value ref_value(ref_eval *r, uint32_t i) {
    if (!r->have[i]) {
        const mpreg_value *c = &r->g->cmds[i].value;
        mpreg_value args = ref_subst(r, mpreg_map_get(c, "args"));
        mpreg_value kwargs = ref_subst(r, mpreg_map_get(c, "kwargs"));
        cr_assert_eq(fake_run(mpreg_map_get(c, "fun")->u.str.ptr, &args, &kwargs, &r->results[i]),
                     MPREG_OK);
        r->have[i] = true;
        mpreg_value_free(&args);
        mpreg_value_free(&kwargs);
    }
    mpreg_value out;
    mpreg_value_clone(&r->results[i], &out);
    return out;
}

static mpreg_value ref_response(gen *g) {
    static ref_eval r;
    memset(&r, 0, sizeof r);
    r.g = g;
    for (uint32_t i = 0; i < g->n; i++) {
        mpreg_value v = ref_value(&r, i);
        mpreg_value_free(&v);
    }
    mpreg_value out = mpreg_map();
    for (uint32_t i = 0; i < g->n; i++) {
        if (!r.consumed[i]) {
            mpreg_map_set(&out, g->cmds[i].name, r.results[i]);
        } else {
            mpreg_value_free(&r.results[i]);
        }
    }
    return out;
}

/* Drives the plan with random hand-out batches and completion order. */
static void run_random(gen *g, mp_rpc_plan *plan) {
    uint32_t inflight[GEN_MAX], n_inflight = 0;
    while (!mp_rpc_plan_done(plan)) {
        bool take = mp_rpc_plan_ready_count(plan) > 0 && (n_inflight == 0 || rnd(g, 2));
        if (take) {
            uint32_t cap = 1 + (uint32_t)rnd(g, 3);
            n_inflight += mp_rpc_plan_ready(plan, inflight + n_inflight, cap);
            continue;
        }
        cr_assert(n_inflight > 0, "plan stuck");
        uint32_t k = (uint32_t)rnd(g, n_inflight);
        uint32_t id = inflight[k];
        inflight[k] = inflight[--n_inflight];
        run_one(plan, id);
    }
}

Test(rpc_plan, property_random_dags_match_reference_evaluator) {
    static gen g;
    for (uint64_t seed = 1; seed <= 300; seed++) {
        mp_xoshiro_seed(&g.rng, seed);
        gen_request(&g);
        mpreg_value items[GEN_MAX];
        mpreg_value list = gen_list(&g, items);
        mp_rpc_plan *plan;
        mp_rpc_error err = MP_RPC_ERROR_INIT;
        cr_assert_eq(mp_rpc_plan_from_value(&list, &plan, &err), MPREG_OK, "seed %llu: %s",
                     (unsigned long long)seed, mp_rpc_error_message(&err));
        run_random(&g, plan);
        const mp_rpc_error *e = mp_rpc_plan_error(plan);
        cr_assert_null(e, "seed %llu: %s", (unsigned long long)seed,
                       e ? mp_rpc_error_message(e) : "");
        mpreg_value got, want = ref_response(&g);
        cr_assert_eq(mp_rpc_plan_response(plan, &got), MPREG_OK);
        char *gj = mpreg_value_to_json(&got, false), *wj = mpreg_value_to_json(&want, false);
        cr_assert(mpreg_value_equal(&got, &want), "seed %llu:\n got %s\nwant %s",
                  (unsigned long long)seed, gj, wj);
        free(gj);
        free(wj);
        mpreg_value_free(&got);
        mpreg_value_free(&want);
        mp_rpc_plan_free(plan);
        gen_free(&g);
    }
}

/* True when command u (generation index) refers to command v directly. */
static bool gen_uses(const gen *g, uint32_t u, uint32_t v) {
    for (uint32_t k = 0; k < g->cmds[u].ndeps; k++) {
        if (g->cmds[u].deps[k] == v) {
            return true;
        }
    }
    return false;
}

Test(rpc_plan, property_back_edge_is_a_cycle) {
    static gen g;
    for (uint64_t seed = 1; seed <= 300; seed++) {
        mp_xoshiro_seed(&g.rng, seed);
        gen_request(&g);
        /* Walk some dependency edges down from i to j, then add j -> i. */
        uint32_t i = (uint32_t)rnd(&g, g.n), j = i;
        for (uint64_t steps = rnd(&g, 4); steps > 0 && g.cmds[j].ndeps > 0; steps--) {
            j = g.cmds[j].deps[rnd(&g, g.cmds[j].ndeps)];
        }
        gen_cmd *back = &g.cmds[j];
        mpreg_value *args = (mpreg_value *)mpreg_map_get(&back->value, "args");
        char text[32];
        snprintf(text, sizeof text, rnd(&g, 2) ? "%s" : "%s.some.field", g.cmds[i].name);
        mpreg_value added = mpreg_str(text);
        if (rnd(&g, 2)) {
            mpreg_value wrapper = mpreg_array();
            mpreg_array_push(&wrapper, added);
            added = wrapper;
        }
        mpreg_array_push(args, added);
        back->deps[back->ndeps++] = i;

        mpreg_value items[GEN_MAX];
        mpreg_value list = gen_list(&g, items);
        mp_rpc_plan *plan = (mp_rpc_plan *)1;
        mp_rpc_error err = MP_RPC_ERROR_INIT;
        cr_assert_eq(mp_rpc_plan_from_value(&list, &plan, &err), MPREG_E_CYCLE, "seed %llu",
                     (unsigned long long)seed);
        cr_assert_null(plan, "nothing may run");
        /* The reported cycle is a real one: each command uses the next. */
        const mpreg_value *cycle = mpreg_map_get(&err.details, "cycle");
        cr_assert_not_null(cycle);
        size_t len = cycle->u.arr.len;
        cr_assert_geq(len, 2);
        cr_assert(mpreg_value_equal(&cycle->u.arr.items[0], &cycle->u.arr.items[len - 1]));
        cr_assert_str_eq(err.command, cycle->u.arr.items[0].u.str.ptr);
        for (size_t k = 0; k + 1 < len; k++) {
            const mpreg_value *a = &cycle->u.arr.items[k], *b = &cycle->u.arr.items[k + 1];
            int u = ref_find(&g, a->u.str.ptr, a->u.str.len);
            int v = ref_find(&g, b->u.str.ptr, b->u.str.len);
            cr_assert(u >= 0 && v >= 0 && gen_uses(&g, (uint32_t)u, (uint32_t)v),
                      "seed %llu: %s does not use %s (%s)", (unsigned long long)seed, a->u.str.ptr,
                      b->u.str.ptr, mp_rpc_error_message(&err));
        }
        cr_assert(strncmp(mp_rpc_error_message(&err), "cycle: ", 7) == 0);
        mp_rpc_error_free(&err);
        gen_free(&g);
    }
}

/* ---- the example of docs/PROTOCOL.md §8.6 ------------------------------------------ */

Test(rpc_plan, protocol_doc_example) {
    static const uint8_t request[] = {
        0x81, 0xa8, 0x63, 0x6f, 0x6d, 0x6d, 0x61, 0x6e, 0x64, 0x73, 0x93, 0x83, 0xa4, 0x6e, 0x61,
        0x6d, 0x65, 0xa5, 0x66, 0x69, 0x72, 0x73, 0x74, 0xa3, 0x66, 0x75, 0x6e, 0xa4, 0x65, 0x63,
        0x68, 0x6f, 0xa4, 0x61, 0x72, 0x67, 0x73, 0x91, 0xa9, 0x68, 0x69, 0x20, 0x74, 0x68, 0x65,
        0x72, 0x65, 0x21, 0x83, 0xa4, 0x6e, 0x61, 0x6d, 0x65, 0xa6, 0x73, 0x65, 0x63, 0x6f, 0x6e,
        0x64, 0xa3, 0x66, 0x75, 0x6e, 0xa4, 0x65, 0x63, 0x68, 0x6f, 0xa4, 0x61, 0x72, 0x67, 0x73,
        0x91, 0xa5, 0x66, 0x69, 0x72, 0x73, 0x74, 0x83, 0xa4, 0x6e, 0x61, 0x6d, 0x65, 0xa5, 0x74,
        0x68, 0x69, 0x72, 0x64, 0xa3, 0x66, 0x75, 0x6e, 0xa5, 0x65, 0x63, 0x68, 0x6f, 0x73, 0xa4,
        0x61, 0x72, 0x67, 0x73, 0x92, 0xa5, 0x66, 0x69, 0x72, 0x73, 0x74, 0xaa, 0x41, 0x4e, 0x44,
        0x20, 0x4d, 0x45, 0x20, 0x54, 0x4f, 0x4f};
    cr_assert_eq(sizeof request, 127);
    mp_rpc_request req;
    mp_rpc_error err = MP_RPC_ERROR_INIT;
    cr_assert_eq(mp_rpc_request_parse(request, sizeof request, &req, &err), MPREG_OK);
    mp_rpc_plan *plan;
    cr_assert_eq(mp_rpc_plan_new(&req, &plan, &err), MPREG_OK);
    uint32_t ids[4];
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 4), 1);
    run_one(plan, ids[0]);
    cr_assert_eq(mp_rpc_plan_ready(plan, ids, 4), 2);
    mp_rpc_invoke inv;
    cr_assert_eq(mp_rpc_plan_invoke(plan, 2, &inv), MPREG_OK);
    mp_buf buf = MP_BUF_INIT;
    cr_assert_eq(mp_rpc_invoke_encode(&inv, &buf), MPREG_OK);
    mpreg_value wire;
    cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &wire), MPREG_OK);
    assert_json_eq(&wire, "{\"command\": \"third\", \"fun\": \"echos\","
                          " \"args\": [\"hi there!\", \"AND ME TOO\"], \"kwargs\": {}}");
    mpreg_value_free(&wire);
    mp_rpc_invoke_free(&inv);
    run_one(plan, 1);
    run_one(plan, 2);
    mpreg_value results;
    cr_assert_eq(mp_rpc_plan_response(plan, &results), MPREG_OK);
    mp_buf_clear(&buf);
    cr_assert_eq(mp_rpc_reply_encode_ok(&results, &buf), MPREG_OK);
    static const char reply[] = "\x81\xa7results\x82\xa6second\xa9hi there!\xa5third\x92"
                                "\xa9hi there!\xaa"
                                "AND ME TOO";
    cr_assert_eq(buf.len, sizeof reply - 1);
    cr_assert_eq(memcmp(buf.data, reply, buf.len), 0);
    mpreg_value_free(&results);
    mp_rpc_plan_free(plan);

    /* the doc's cycle variant */
    mpreg_value cmds = json("[{\"name\": \"first\", \"fun\": \"echo\", \"args\": [\"hi there!\","
                            " \"third\"]}, {\"name\": \"second\", \"fun\": \"echo\", \"args\":"
                            " [\"first\"]}, {\"name\": \"third\", \"fun\": \"echos\", \"args\":"
                            " [\"first\", \"AND ME TOO\"]}]");
    cr_assert_eq(mp_rpc_plan_from_value(&cmds, &plan, &err), MPREG_E_CYCLE);
    mp_buf_clear(&buf);
    cr_assert_eq(mp_rpc_reply_encode_error(&err, &buf), MPREG_OK);
    cr_assert_eq(mpreg_value_decode(buf.data, buf.len, NULL, &wire), MPREG_OK);
    assert_json_eq(&wire, "{\"error\": {\"code\": 303, \"name\": \"cycle\", \"message\":"
                          " \"cycle: first -> third -> first\", \"command\": \"first\","
                          " \"details\": {\"cycle\": [\"first\", \"third\", \"first\"]}}}");
    mpreg_value_free(&wire);
    mpreg_value_free(&cmds);
    mp_rpc_error_free(&err);
    mp_buf_free(&buf);
}
