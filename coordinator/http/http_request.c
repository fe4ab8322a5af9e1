/* Request bodies to dsr1_http_request (http_request.h): one checker per field, each naming
 * the field on error. Strings are copied out of the JSON tree, which is dropped at the end. */
#include "http_request.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    dsr1_http_request *r;
    char *param;
    size_t cap;
} pctx;

/* Records the error and the field's name. */
__attribute__((format(printf, 3, 4))) static dsr1_status fail(pctx *c, const char *field,
                                                              const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->cap) snprintf(c->param, c->cap, "%s", field);
    return dsr1_error(DSR1_ERR_INVALID_ARG, "%s", msg);
}

static dsr1_status nomem(pctx *c)
{
    if (c->cap) c->param[0] = '\0';
    return dsr1_error(DSR1_ERR_NOMEM, "out of memory parsing the request");
}

static dsr1_status dup_str(pctx *c, const json_t *v, char **out)
{
    size_t n = json_string_length(v);
    char *p = malloc(n + 1);
    if (!p) return nomem(c);
    memcpy(p, json_string_value(v), n);
    p[n] = '\0';
    *out = p;
    return DSR1_OK;
}

/* A string field: absent or null leaves *out NULL. NUL bytes inside are refused (the rest
 * of the server works with C strings). */
static dsr1_status get_str(pctx *c, const json_t *o, const char *key, char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_string(v)) return fail(c, key, "'%s' must be a string", key);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return fail(c, key, "'%s' contains a NUL character", key);
    return dup_str(c, v, out);
}

static dsr1_status get_bool(pctx *c, const json_t *o, const char *key, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_boolean(v)) return fail(c, key, "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return DSR1_OK;
}

/* A number field within [lo, hi]; *has set when present. */
static dsr1_status get_num(pctx *c, const json_t *o, const char *key, double lo, double hi,
                           float *out, bool *has)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_number(v)) return fail(c, key, "'%s' must be a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return fail(c, key, "'%s' = %g: must be in [%g, %g]", key, x, lo, hi);
    *out = (float)x;
    if (has) *has = true;
    return DSR1_OK;
}

static dsr1_status get_int(pctx *c, const json_t *o, const char *key, long long lo, long long hi,
                           int *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_integer(v)) return fail(c, key, "'%s' must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return fail(c, key, "'%s' = %lld: must be in [%lld, %lld]", key, x, lo, hi);
    *out = (int)x;
    return DSR1_OK;
}

/* ---- messages ---- */

/* content: a string, or a list of parts of which only {"type":"text","text":...} is
 * supported; joined without separators. */
static dsr1_status get_content(pctx *c, const json_t *v, const char *field, char **out)
{
    if (!v || json_is_null(v)) return DSR1_OK;
    if (json_is_string(v)) {
        if (strlen(json_string_value(v)) != json_string_length(v))
            return fail(c, field, "'%s' contains a NUL character", field);
        return dup_str(c, v, out);
    }
    if (!json_is_array(v))
        return fail(c, field, "'%s' must be a string or an array of parts", field);
    size_t total = 0, i;
    json_t *part;
    json_array_foreach(v, i, part)
    {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type))
            return fail(c, field, "'%s[%zu]' must be an object with a 'type'", field, i);
        if (strcmp(json_string_value(type), "text"))
            return fail(c, field, "'%s[%zu]': parts of type '%.32s' are not supported (only text)",
                        field, i, json_string_value(type));
        if (!json_is_string(text) || strlen(json_string_value(text)) != json_string_length(text))
            return fail(c, field, "'%s[%zu].text' must be a string", field, i);
        total += json_string_length(text);
    }
    char *p = malloc(total + 1);
    if (!p) return nomem(c);
    size_t at = 0;
    json_array_foreach(v, i, part)
    {
        json_t *text = json_object_get(part, "text");
        memcpy(p + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    p[at] = '\0';
    *out = p;
    return DSR1_OK;
}

/* An assistant message's tool_calls, normalised to [{"id","type":"function","function":
 * {"name","arguments": string}}] (arguments given as an object are serialised). */
static dsr1_status get_tool_calls(pctx *c, const json_t *v, char **out)
{
    const char *f = "messages.tool_calls";
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_array(v)) return fail(c, f, "'%s' must be an array", f);
    json_t *norm = json_array();
    if (!norm) return nomem(c);
    size_t i;
    json_t *tc;
    dsr1_status st = DSR1_OK;
    json_array_foreach(v, i, tc)
    {
        json_t *fn = json_object_get(tc, "function");
        json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
        json_t *id = json_object_get(tc, "id");
        if (!json_is_object(tc) || !json_is_object(fn) || !json_is_string(name)) {
            st = fail(c, f, "'%s[%zu]' must be {\"type\":\"function\",\"function\":{\"name\":...}}",
                      f, i);
            break;
        }
        json_t *a;
        if (!args || json_is_null(args))
            a = json_string("{}");
        else if (json_is_string(args))
            a = json_incref(args);
        else if (json_is_object(args)) {
            char *s = json_dumps(args, JSON_COMPACT);
            a = s ? json_string(s) : NULL;
            free(s);
        } else {
            st = fail(c, f, "'%s[%zu].function.arguments' must be a string", f, i);
            break;
        }
        json_t *e = json_pack("{s:O?, s:s, s:{s:O, s:o?}}", "id", json_is_string(id) ? id : NULL,
                              "type", "function", "function", "name", name, "arguments", a);
        if (!e || json_array_append_new(norm, e)) {
            st = nomem(c);
            break;
        }
    }
    if (st == DSR1_OK && !(*out = json_dumps(norm, JSON_COMPACT))) st = nomem(c);
    json_decref(norm);
    return st;
}

static dsr1_status get_message(pctx *c, const json_t *m, size_t i, dsr1_http_message *out)
{
    if (!json_is_object(m)) return fail(c, "messages", "'messages[%zu]' must be an object", i);
    json_t *role = json_object_get(m, "role");
    if (!json_is_string(role))
        return fail(c, "messages.role", "'messages[%zu].role' must be a string", i);
    const char *r = json_string_value(role);
    if (!strcmp(r, "developer")) r = "system";
    if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool"))
        return fail(c, "messages.role",
                    "'messages[%zu].role' '%.32s': expected system, developer, user, assistant or "
                    "tool",
                    i, r);
    if (!(out->role = strdup(r))) return nomem(c);
    dsr1_status st =
        get_content(c, json_object_get(m, "content"), "messages.content", &out->content);
    if (st == DSR1_OK) st = get_str(c, m, "reasoning_content", &out->reasoning);
    if (st == DSR1_OK && !out->reasoning) st = get_str(c, m, "reasoning", &out->reasoning);
    if (st == DSR1_OK) st = get_str(c, m, "tool_call_id", &out->tool_call_id);
    if (st == DSR1_OK) st = get_str(c, m, "name", &out->name);
    if (st == DSR1_OK && !strcmp(r, "assistant"))
        st = get_tool_calls(c, json_object_get(m, "tool_calls"), &out->tool_calls_json);
    if (st != DSR1_OK) return st;
    if (!out->content && strcmp(r, "assistant"))
        return fail(c, "messages.content", "'messages[%zu].content' is required for role %s", i, r);
    if (!out->content && !out->tool_calls_json)
        return fail(c, "messages.content",
                    "'messages[%zu]': an assistant message needs content or tool_calls", i);
    return DSR1_OK;
}

static dsr1_status get_messages(pctx *c, const json_t *o)
{
    json_t *v = json_object_get(o, "messages");
    if (!v) return fail(c, "messages", "'messages' is required");
    if (!json_is_array(v)) return fail(c, "messages", "'messages' must be an array");
    size_t n = json_array_size(v);
    if (n == 0) return fail(c, "messages", "'messages' is empty");
    if (n > DSR1_HTTP_MAX_MESSAGES)
        return fail(c, "messages", "%zu messages: at most %d", n, DSR1_HTTP_MAX_MESSAGES);
    c->r->messages = calloc(n, sizeof(dsr1_http_message));
    if (!c->r->messages) return nomem(c);
    for (size_t i = 0; i < n; i++) {
        c->r->n_messages = (int)i + 1;
        dsr1_status st = get_message(c, json_array_get(v, i), i, &c->r->messages[i]);
        if (st != DSR1_OK) return st;
    }
    return DSR1_OK;
}

/* ---- completions prompt ---- */

static dsr1_status get_prompt(pctx *c, const json_t *o)
{
    json_t *v = json_object_get(o, "prompt");
    if (!v || json_is_null(v)) return fail(c, "prompt", "'prompt' is required");
    if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
        v = json_array_get(v, 0); /* a batch of one prompt */
    if (json_is_string(v)) {
        if (!json_string_length(v)) return fail(c, "prompt", "'prompt' is empty");
        if (strlen(json_string_value(v)) != json_string_length(v))
            return fail(c, "prompt", "'prompt' contains a NUL character");
        return dup_str(c, v, &c->r->prompt);
    }
    if (!json_is_array(v) || !json_array_size(v))
        return fail(c, "prompt",
                    "'prompt' must be a string or a non-empty array of token ids "
                    "(a list of several prompts is not supported: use n or several "
                    "requests)");
    size_t n = json_array_size(v);
    if (n > (1u << 24)) return fail(c, "prompt", "'prompt': %zu token ids is too many", n);
    c->r->prompt_ids = malloc(n * sizeof(int32_t));
    if (!c->r->prompt_ids) return nomem(c);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return fail(c, "prompt", "'prompt[%zu]' must be a token id (a non-negative integer)",
                        i);
        c->r->prompt_ids[i] = (int32_t)json_integer_value(e);
    }
    c->r->n_prompt_ids = (int)n;
    return DSR1_OK;
}

/* ---- sampling ---- */

static dsr1_status get_stop(pctx *c, const json_t *o)
{
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v)) return DSR1_OK;
    if (json_is_string(v)) {
        if (!json_string_length(v)) return DSR1_OK; /* "" means none */
        c->r->n_stop = 1;
        return get_str(c, o, "stop", &c->r->stop[0]);
    }
    if (!json_is_array(v)) return fail(c, "stop", "'stop' must be a string or an array of strings");
    if (json_array_size(v) > DSR1_HTTP_MAX_STOP)
        return fail(c, "stop", "%zu stop strings: at most %d", json_array_size(v),
                    DSR1_HTTP_MAX_STOP);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e) || !json_string_length(e) ||
            strlen(json_string_value(e)) != json_string_length(e))
            return fail(c, "stop", "'stop[%zu]' must be a non-empty string", i);
        c->r->n_stop++;
        dsr1_status st = dup_str(c, e, &c->r->stop[i]);
        if (st != DSR1_OK) return st;
    }
    return DSR1_OK;
}

static dsr1_status get_logit_bias(pctx *c, const json_t *o)
{
    json_t *v = json_object_get(o, "logit_bias");
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_object(v)) return fail(c, "logit_bias", "'logit_bias' must be an object");
    size_t n = json_object_size(v);
    if (n > DSR1_HTTP_MAX_LOGIT_BIAS)
        return fail(c, "logit_bias", "%zu logit_bias entries: at most %d", n,
                    DSR1_HTTP_MAX_LOGIT_BIAS);
    if (!n) return DSR1_OK;
    c->r->bias_ids = malloc(n * sizeof(int32_t));
    c->r->bias_values = malloc(n * sizeof(float));
    if (!c->r->bias_ids || !c->r->bias_values) return nomem(c);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id > INT32_MAX)
            return fail(c, "logit_bias", "'logit_bias' key '%.32s' is not a token id", key);
        if (!json_is_number(val) || !(fabs(json_number_value(val)) <= 100))
            return fail(c, "logit_bias", "'logit_bias[%.32s]' must be a number in [-100, 100]",
                        key);
        c->r->bias_ids[c->r->n_bias] = (int32_t)id;
        c->r->bias_values[c->r->n_bias++] = (float)json_number_value(val);
    }
    return DSR1_OK;
}

static dsr1_status get_sampling(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    dsr1_status st = DSR1_OK;
    bool dummy;
    if (!st) st = get_num(c, o, "temperature", 0, 2, &r->temperature, &r->has_temperature);
    if (!st) st = get_num(c, o, "top_p", 0, 1, &r->top_p, &r->has_top_p);
    if (!st && r->has_top_p && r->top_p <= 0) st = fail(c, "top_p", "'top_p' must be > 0");
    if (!st) st = get_num(c, o, "min_p", 0, 1, &r->min_p, &dummy);
    if (!st) st = get_num(c, o, "presence_penalty", -2, 2, &r->presence_penalty, &dummy);
    if (!st) st = get_num(c, o, "frequency_penalty", -2, 2, &r->frequency_penalty, &dummy);
    if (!st)
        st = get_num(c, o, "repetition_penalty", 0, 100, &r->repetition_penalty,
                     &r->has_repetition_penalty);
    if (!st && r->has_repetition_penalty && r->repetition_penalty <= 0)
        st = fail(c, "repetition_penalty", "'repetition_penalty' must be > 0");
    if (!st) {
        r->top_k = 0;
        json_t *k = json_object_get(o, "top_k");
        if (json_is_integer(k) && json_integer_value(k) == -1) /* vLLM's "off" */
            ;
        else
            st = get_int(c, o, "top_k", 0, 1 << 30, &r->top_k);
    }
    if (!st) {
        json_t *s = json_object_get(o, "seed");
        if (s && !json_is_null(s)) {
            if (!json_is_integer(s)) st = fail(c, "seed", "'seed' must be an integer");
            r->seed = (uint64_t)json_integer_value(s);
            r->has_seed = true;
        }
    }
    if (!st) st = get_logit_bias(c, o);
    if (!st) st = get_stop(c, o);
    if (!st) st = get_str(c, o, "user", &r->user);
    if (!st) st = get_bool(c, o, "ignore_eos", &r->ignore_eos);
    if (!st) st = get_bool(c, o, "skip_special_tokens", &r->skip_special_tokens);
    return st;
}

static dsr1_status get_lengths(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    dsr1_status st = get_int(c, o, "max_tokens", 1, INT32_MAX, &r->max_tokens);
    if (!st) st = get_int(c, o, "max_completion_tokens", 1, INT32_MAX, &r->max_tokens);
    if (!st) st = get_int(c, o, "n", 1, DSR1_HTTP_MAX_N, &r->n);
    if (!st) st = get_bool(c, o, "stream", &r->stream);
    json_t *so = json_object_get(o, "stream_options");
    if (!st && so && !json_is_null(so)) {
        if (!json_is_object(so))
            st = fail(c, "stream_options", "'stream_options' must be an object");
        else
            st = get_bool(c, so, "include_usage", &r->include_usage);
        if (!st && !r->stream)
            st = fail(c, "stream_options", "'stream_options' is only allowed with stream: true");
    }
    return st;
}

static dsr1_status get_logprobs(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    json_t *v = json_object_get(o, "logprobs");
    dsr1_status st = DSR1_OK;
    if (r->kind == DSR1_HTTP_CHAT) {
        st = get_bool(c, o, "logprobs", &r->logprobs);
        if (!st) st = get_int(c, o, "top_logprobs", 0, DSR1_HTTP_MAX_TOP_LP, &r->top_logprobs);
        if (!st && r->top_logprobs > 0 && !r->logprobs)
            st = fail(c, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    } else if (v && !json_is_null(v)) {
        st = get_int(c, o, "logprobs", 0, 5, &r->top_logprobs);
        r->logprobs = true;
    }
    if (!st && r->kind == DSR1_HTTP_COMPLETION) {
        st = get_bool(c, o, "echo", &r->echo);
        if (!st && r->echo) st = fail(c, "echo", "'echo' is not supported");
        if (!st) st = get_str(c, o, "suffix", &r->suffix);
        if (!st && r->suffix && *r->suffix) st = fail(c, "suffix", "'suffix' is not supported");
        json_t *bo = json_object_get(o, "best_of");
        if (!st && bo && !json_is_null(bo) &&
            !(json_is_integer(bo) && json_integer_value(bo) == (r->n ? r->n : 1)))
            st = fail(c, "best_of", "'best_of' is not supported (other than equal to n)");
    }
    return st;
}

/* ---- reasoning ---- */

static dsr1_status effort_of(pctx *c, const char *field, const json_t *v, int *out)
{
    static const char *const names[] = {"low", "medium", "high"};
    if (!v || json_is_null(v)) return DSR1_OK;
    if (json_is_string(v)) {
        for (int i = 0; i < 3; i++)
            if (!strcmp(json_string_value(v), names[i])) {
                *out = i + 1;
                return DSR1_OK;
            }
        if (!strcmp(json_string_value(v), "minimal") || !strcmp(json_string_value(v), "none")) {
            *out = -1; /* no thinking */
            return DSR1_OK;
        }
    }
    return fail(c, field, "'%s' must be one of none, minimal, low, medium, high", field);
}

static dsr1_status get_reasoning(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    r->reasoning_max_tokens = -1;
    dsr1_status st = effort_of(c, "reasoning_effort", json_object_get(o, "reasoning_effort"),
                               &r->reasoning_effort);
    json_t *v = json_object_get(o, "reasoning");
    if (st || !v || json_is_null(v)) goto done;
    if (!json_is_object(v)) return fail(c, "reasoning", "'reasoning' must be an object");
    json_t *en = json_object_get(v, "enabled");
    if (en && !json_is_null(en) && !json_is_boolean(en))
        return fail(c, "reasoning.enabled", "'reasoning.enabled' must be a boolean");
    if (json_is_boolean(en)) r->reasoning_enabled = json_is_true(en);
    json_t *ex = json_object_get(v, "exclude");
    if (ex && !json_is_null(ex) && !json_is_boolean(ex))
        return fail(c, "reasoning.exclude", "'reasoning.exclude' must be a boolean");
    r->reasoning_exclude = json_is_true(ex);
    st = effort_of(c, "reasoning.effort", json_object_get(v, "effort"), &r->reasoning_effort);
    json_t *mt = json_object_get(v, "max_tokens");
    if (!st && mt && !json_is_null(mt)) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 0 ||
            json_integer_value(mt) > INT32_MAX)
            return fail(c, "reasoning.max_tokens",
                        "'reasoning.max_tokens' must be a non-negative integer");
        r->reasoning_max_tokens = (int)json_integer_value(mt);
    }
done:
    if (!st && r->reasoning_effort < 0) {
        r->reasoning_enabled = false;
        r->reasoning_effort = 0;
    }
    if (!st && r->reasoning_max_tokens == 0) r->reasoning_enabled = false; /* no budget at all */
    return st;
}

/* ---- tools and response_format ---- */

static dsr1_status get_tools(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    json_t *v = json_object_get(o, "tools");
    if (!v || json_is_null(v)) return DSR1_OK;
    if (!json_is_array(v)) return fail(c, "tools", "'tools' must be an array");
    size_t n = json_array_size(v);
    if (n > DSR1_HTTP_MAX_TOOLS)
        return fail(c, "tools", "%zu tools: at most %d", n, DSR1_HTTP_MAX_TOOLS);
    if (!n) return DSR1_OK;
    r->tool_names = calloc(n, sizeof(char *));
    if (!r->tool_names) return nomem(c);
    size_t i;
    json_t *t;
    json_array_foreach(v, i, t)
    {
        json_t *type = json_object_get(t, "type"), *fn = json_object_get(t, "function");
        json_t *name = json_object_get(fn, "name"), *params = json_object_get(fn, "parameters");
        if (!json_is_object(t) || !json_is_string(type) ||
            strcmp(json_string_value(type), "function"))
            return fail(c, "tools", "'tools[%zu].type' must be \"function\"", i);
        if (!json_is_object(fn) || !json_is_string(name) || !json_string_length(name) ||
            json_string_length(name) > 64)
            return fail(c, "tools",
                        "'tools[%zu].function.name' must be a string of 1 to 64 "
                        "characters",
                        i);
        const char *nm = json_string_value(name);
        for (const char *p = nm; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.'))
                return fail(c, "tools",
                            "'tools[%zu].function.name' '%.64s': only a-z, A-Z, 0-9, "
                            "_, - and . are allowed",
                            i, nm);
        for (size_t k = 0; k < i; k++)
            if (!strcmp(r->tool_names[k], nm))
                return fail(c, "tools", "'tools[%zu].function.name' '%.64s' appears twice", i, nm);
        json_t *desc = json_object_get(fn, "description");
        if (desc && !json_is_null(desc) && !json_is_string(desc))
            return fail(c, "tools", "'tools[%zu].function.description' must be a string", i);
        if (params && !json_is_null(params) && !json_is_object(params))
            return fail(c, "tools", "'tools[%zu].function.parameters' must be a JSON Schema object",
                        i);
        json_t *strict = json_object_get(fn, "strict");
        if (strict && !json_is_null(strict) && !json_is_boolean(strict))
            return fail(c, "tools", "'tools[%zu].function.strict' must be a boolean", i);
        if (!(r->tool_names[i] = strdup(nm))) return nomem(c);
        r->n_tools = (int)i + 1;
    }
    if (!(r->tools_json = json_dumps(v, JSON_COMPACT))) return nomem(c);
    return DSR1_OK;
}

static dsr1_status get_tool_choice(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    json_t *v = json_object_get(o, "tool_choice");
    dsr1_status st = get_bool(c, o, "parallel_tool_calls", &r->parallel_tool_calls);
    if (st) return st;
    json_t *tp = json_object_get(o, "tool_prompt");
    if (tp && !json_is_null(tp)) {
        static const char *const names[] = {"auto", "builtin", "template", "none"};
        int k = -1;
        for (int i = 0; i < 4 && json_is_string(tp); i++)
            if (!strcmp(json_string_value(tp), names[i])) k = i;
        if (k < 0)
            return fail(c, "tool_prompt", "'tool_prompt' must be auto, builtin, template or none");
        r->tool_prompt = (dsr1_http_tool_prompt)k;
    }
    r->tool_choice = r->n_tools ? DSR1_HTTP_TOOL_AUTO : DSR1_HTTP_TOOL_NONE;
    if (!v || json_is_null(v)) return DSR1_OK;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "none"))
            r->tool_choice = DSR1_HTTP_TOOL_NONE;
        else if (!strcmp(s, "auto"))
            r->tool_choice = DSR1_HTTP_TOOL_AUTO;
        else if (!strcmp(s, "required"))
            r->tool_choice = DSR1_HTTP_TOOL_REQUIRED;
        else
            return fail(c, "tool_choice",
                        "'tool_choice' must be none, auto, required or "
                        "{\"type\":\"function\",\"function\":{\"name\":...}}");
    } else {
        json_t *fn = json_object_get(v, "function");
        json_t *name = json_object_get(fn, "name");
        if (!json_is_object(v) || !json_is_string(name))
            return fail(c, "tool_choice",
                        "'tool_choice' must be none, auto, required or "
                        "{\"type\":\"function\",\"function\":{\"name\":...}}");
        bool known = false;
        for (int i = 0; i < r->n_tools; i++)
            known |= !strcmp(r->tool_names[i], json_string_value(name));
        if (!known)
            return fail(c, "tool_choice",
                        "'tool_choice' names function '%.64s', which is not in "
                        "'tools'",
                        json_string_value(name));
        r->tool_choice = DSR1_HTTP_TOOL_NAMED;
        if (!(r->tool_choice_name = strdup(json_string_value(name)))) return nomem(c);
    }
    if (r->tool_choice != DSR1_HTTP_TOOL_NONE && !r->n_tools)
        return fail(c, "tool_choice", "'tool_choice' needs 'tools'");
    return DSR1_OK;
}

static dsr1_status get_response_format(pctx *c, const json_t *o)
{
    dsr1_http_request *r = c->r;
    json_t *v = json_object_get(o, "response_format");
    if (!v || json_is_null(v)) return DSR1_OK;
    json_t *type = json_object_get(v, "type");
    if (!json_is_object(v) || !json_is_string(type))
        return fail(c, "response_format", "'response_format' must be an object with a 'type'");
    const char *t = json_string_value(type);
    if (!strcmp(t, "text")) return DSR1_OK;
    if (!strcmp(t, "json_object")) {
        r->response_format = DSR1_HTTP_FORMAT_JSON_OBJECT;
        return DSR1_OK;
    }
    if (strcmp(t, "json_schema"))
        return fail(c, "response_format",
                    "'response_format.type' must be text, json_object or "
                    "json_schema");
    json_t *js = json_object_get(v, "json_schema");
    json_t *name = json_object_get(js, "name"), *schema = json_object_get(js, "schema");
    json_t *strict = json_object_get(js, "strict");
    if (!json_is_object(js) || !json_is_string(name) || !json_string_length(name))
        return fail(c, "response_format",
                    "'response_format.json_schema' must be an object with a "
                    "'name'");
    if (schema && !json_is_null(schema) && !json_is_object(schema) && !json_is_boolean(schema))
        return fail(c, "response_format",
                    "'response_format.json_schema.schema' must be a JSON "
                    "Schema object");
    if (strict && !json_is_null(strict) && !json_is_boolean(strict))
        return fail(c, "response_format", "'response_format.json_schema.strict' must be a boolean");
    r->response_format = DSR1_HTTP_FORMAT_JSON_SCHEMA;
    r->json_schema_strict = json_is_true(strict);
    if (!(r->json_schema_name = strdup(json_string_value(name)))) return nomem(c);
    r->json_schema = json_dumps(schema ? schema : json_true(), JSON_COMPACT | JSON_ENCODE_ANY);
    return r->json_schema ? DSR1_OK : nomem(c);
}

/* ---- entry ---- */

dsr1_status dsr1_http_parse(dsr1_http_kind kind, const char *body, size_t len,
                            dsr1_http_request *out, char *param, size_t cap)
{
    memset(out, 0, sizeof(*out));
    if (cap) param[0] = '\0';
    out->kind = kind;
    out->max_tokens = -1;
    out->n = 1;
    out->skip_special_tokens = true;
    out->reasoning_enabled = true;
    out->parallel_tool_calls = true;
    pctx c = {out, param, cap};
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    dsr1_status st;
    if (!o)
        st = fail(&c, "", "the body is not valid JSON: %s (line %d, column %d)", jerr.text,
                  jerr.line, jerr.column);
    else if (!json_is_object(o))
        st = fail(&c, "", "the body must be a JSON object");
    else {
        st = get_str(&c, o, "model", &out->model);
        if (!st) st = kind == DSR1_HTTP_CHAT ? get_messages(&c, o) : get_prompt(&c, o);
        if (!st) st = get_lengths(&c, o);
        if (!st) st = get_logprobs(&c, o);
        if (!st) st = get_sampling(&c, o);
        if (!st) st = get_reasoning(&c, o);
        if (!st && kind == DSR1_HTTP_CHAT) st = get_tools(&c, o);
        if (!st && kind == DSR1_HTTP_CHAT) st = get_tool_choice(&c, o);
        if (!st && kind == DSR1_HTTP_CHAT) st = get_response_format(&c, o);
    }
    json_decref(o);
    if (st) dsr1_http_request_free(out);
    return st;
}

void dsr1_http_request_free(dsr1_http_request *r)
{
    for (int i = 0; i < r->n_messages; i++) {
        dsr1_http_message *m = &r->messages[i];
        free(m->role);
        free(m->content);
        free(m->reasoning);
        free(m->tool_calls_json);
        free(m->tool_call_id);
        free(m->name);
    }
    free(r->messages);
    free(r->model);
    free(r->prompt);
    free(r->prompt_ids);
    free(r->suffix);
    free(r->bias_ids);
    free(r->bias_values);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->user);
    free(r->tools_json);
    for (int i = 0; i < r->n_tools; i++) free(r->tool_names[i]);
    free(r->tool_names);
    free(r->tool_choice_name);
    free(r->json_schema);
    free(r->json_schema_name);
    memset(r, 0, sizeof(*r));
}
