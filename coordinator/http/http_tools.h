/* Tool calls in DeepSeek-R1(-0528)'s format, both ways:
 *
 * - out of the generated content: an incremental parser that passes ordinary text through
 *   and turns
 *     <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
 *     ...<｜tool▁calls▁end｜>
 *   into events in the order OpenAI streams them: a call's name first (with its index), then
 *   fragments of its arguments. Text that could be the start of a marker is held back until
 *   decided, so no streamed content ever holds part of one. The same parser serves
 *   non-streamed responses (everything fed at once).
 * - as a grammar (dsr1_tool_grammar): what the grammar engine enforces so that every call
 *   is well-formed and its arguments validate (tool_choice required, named, or auto after
 *   <｜tool▁calls▁begin｜>).
 * - into the prompt: dsr1's own tool prompt (docs/api.md), which R1's official chat templates
 *   lack: the tools as JSON Schema and the exact call format, for the system prompt. */
#ifndef DSR1_HTTP_TOOLS_H
#define DSR1_HTTP_TOOLS_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

#define DSR1_TOOL_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define DSR1_TOOL_CALLS_END   "<｜tool▁calls▁end｜>"
#define DSR1_TOOL_CALL_BEGIN  "<｜tool▁call▁begin｜>"
#define DSR1_TOOL_CALL_END    "<｜tool▁call▁end｜>"
#define DSR1_TOOL_SEP         "<｜tool▁sep｜>"

typedef struct {
    int index;       /* the call's index in this response, from 0 */
    char *name;      /* set on the call's first event only */
    char *args;      /* an arguments fragment ("" on the first event), NUL-terminated */
    size_t args_len; /* its length (the text may hold NUL bytes) */
} dsr1_tool_event;

typedef struct dsr1_toolparse dsr1_toolparse;

dsr1_status dsr1_toolparse_create(dsr1_toolparse **out);
void dsr1_toolparse_destroy(dsr1_toolparse *p);

/* Feeds text; `final` at the end of generation (held text is decided). Afterwards
 * dsr1_toolparse_content gives the content released by this call and
 * dsr1_toolparse_events the call events; both borrowed until the next feed. */
dsr1_status dsr1_toolparse_feed(dsr1_toolparse *p, const char *text, size_t len, bool final);
const char *dsr1_toolparse_content(const dsr1_toolparse *p, size_t *len);
const dsr1_tool_event *dsr1_toolparse_events(const dsr1_toolparse *p, int *n);
/* Calls begun so far; whether the last one ended well-formed (its end marker seen). */
int dsr1_toolparse_calls(const dsr1_toolparse *p);
bool dsr1_toolparse_complete(const dsr1_toolparse *p);

/* The tool prompt for a tools array (JSON text, validated by the request parser), with
 * the caller's instruction about tool_choice ("" for auto); malloc'd. */
dsr1_status dsr1_tool_prompt(const char *tools_json, const char *choice_note, char **out);

/* The grammar of well-formed tool calls (http_tool_grammar.c), in grammar.h's text format:
 * one call (parallel false) or more, of the function named `only` (NULL: any of the tools),
 * each NAME followed by its arguments as compact JSON valid against that function's
 * `parameters` (JSON Schema, OpenAI strict mode where the function says `strict`), in
 * R1's format with its special tokens. after_begin: the text starts after
 * <｜tool▁calls▁begin｜> (tool_choice auto, the grammar triggered by that token). A schema
 * the grammar engine cannot enforce is DSR1_ERR_INVALID_ARG naming the function and the
 * keyword's JSON pointer, with `param` set to "tools". *out is malloc'd. */
dsr1_status dsr1_tool_grammar(const char *tools_json, const char *only, bool parallel,
                              bool after_begin, char **out, size_t *out_len, char *param,
                              size_t cap);

#endif
