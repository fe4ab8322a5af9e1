/* The OpenAI-compatible request bodies (/v1/chat/completions, /v1/completions) as C structs.
 *
 * dsr1_http_parse is a pure function: body bytes in, a request or an error out (no server,
 * no tokenizer, no allocation left behind on failure), so that it can be fuzzed on its own
 * (tests/fuzz/fuzz_http_request.c). It checks the JSON types and ranges of every field it
 * knows and ignores the fields it does not; an error names the field at fault (`param`, in
 * OpenAI's error object) and says what was expected. What depends on the model (the
 * vocabulary, the context length, the chat template) is checked later by the server. */
#ifndef DSR1_HTTP_REQUEST_H
#define DSR1_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DSR1_HTTP_MAX_N          16   /* choices per request */
#define DSR1_HTTP_MAX_STOP       16   /* stop strings */
#define DSR1_HTTP_MAX_LOGIT_BIAS 1024 /* logit_bias entries */
#define DSR1_HTTP_MAX_MESSAGES   4096
#define DSR1_HTTP_MAX_TOOLS      128
#define DSR1_HTTP_MAX_TOP_LP     20

typedef enum { DSR1_HTTP_CHAT = 0, DSR1_HTTP_COMPLETION = 1 } dsr1_http_kind;

typedef enum {
    DSR1_HTTP_TOOL_AUTO = 0, /* the default with tools */
    DSR1_HTTP_TOOL_NONE,
    DSR1_HTTP_TOOL_REQUIRED,
    DSR1_HTTP_TOOL_NAMED,
} dsr1_http_tool_choice;

typedef enum {
    DSR1_HTTP_FORMAT_TEXT = 0,
    DSR1_HTTP_FORMAT_JSON_OBJECT,
    DSR1_HTTP_FORMAT_JSON_SCHEMA,
} dsr1_http_format;

/* Where the tools are described to the model (field `tool_prompt`, a dsr1 extension). */
typedef enum {
    DSR1_HTTP_TOOL_PROMPT_AUTO = 0, /* the chat template's, if it uses `tools`; else builtin */
    DSR1_HTTP_TOOL_PROMPT_BUILTIN,  /* ours, appended to the system prompt */
    DSR1_HTTP_TOOL_PROMPT_TEMPLATE, /* `tools` passed to the chat template only */
    DSR1_HTTP_TOOL_PROMPT_NONE,     /* the client's own system message describes them */
} dsr1_http_tool_prompt;

typedef struct {
    char *role;            /* system, user, assistant, tool (developer is taken as system) */
    char *content;         /* text parts joined; NULL for a null content */
    char *reasoning;       /* assistant reasoning_content (dropped by the templates) or NULL */
    char *tool_calls_json; /* assistant tool_calls as a JSON array (arguments strings) */
    char *tool_call_id, *name;
} dsr1_http_message;

typedef struct {
    dsr1_http_kind kind;
    char *model; /* NULL: the served model */

    /* chat */
    dsr1_http_message *messages;
    int n_messages;
    /* completions: a string, or token ids */
    char *prompt;
    int32_t *prompt_ids;
    int n_prompt_ids;
    bool echo;
    char *suffix;

    int max_tokens; /* max_tokens / max_completion_tokens; -1: unset */
    int n;          /* 1..DSR1_HTTP_MAX_N */
    bool stream, include_usage;
    bool logprobs;
    int top_logprobs; /* chat: top_logprobs; completions: logprobs N */

    bool has_temperature, has_top_p, has_seed, has_repetition_penalty;
    float temperature, top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty;
    int top_k;
    uint64_t seed;
    int32_t *bias_ids;
    float *bias_values;
    int n_bias;
    char *stop[DSR1_HTTP_MAX_STOP];
    int n_stop;
    char *user;
    bool ignore_eos;          /* extension (vLLM's) */
    bool skip_special_tokens; /* extension; default true */

    /* reasoning: OpenRouter's `reasoning` object and OpenAI's `reasoning_effort` */
    bool reasoning_enabled;   /* default true */
    bool reasoning_exclude;   /* drop reasoning from the response (still counted) */
    int reasoning_effort;     /* 0 unset, 1 low, 2 medium, 3 high */
    int reasoning_max_tokens; /* -1: unset (thinking budget: parsed, not enforced yet) */

    /* tools */
    char *tools_json; /* the tools array as given (validated), NULL when none */
    int n_tools;
    char **tool_names;
    dsr1_http_tool_choice tool_choice;
    char *tool_choice_name;
    bool parallel_tool_calls; /* default true */
    dsr1_http_tool_prompt tool_prompt;

    dsr1_http_format response_format;
    char *json_schema; /* the schema as JSON text, for json_schema */
    char *json_schema_name;
    bool json_schema_strict;
} dsr1_http_request;

/* Parses and checks a request body of the given kind. On failure returns
 * DSR1_ERR_INVALID_ARG (or DSR1_ERR_NOMEM) with the message recorded by dsr1_error and the
 * name of the field at fault in param (cap bytes; "" when the body itself is at fault);
 * *out is then empty. */
dsr1_status dsr1_http_parse(dsr1_http_kind kind, const char *body, size_t len,
                            dsr1_http_request *out, char *param, size_t cap);
void dsr1_http_request_free(dsr1_http_request *r);

#endif
