/* The grammar that makes tool calls well-formed (http_tools.h, dsr1_tool_grammar): R1's
 * tool-call format with its special tokens as special-token terminals (grammar.h's
 * <|TEXT|>), each function's name followed by its arguments as compact JSON valid against
 * that function's `parameters` schema.
 *
 * Each schema goes through dsr1_json_schema_to_ebnf on its own (with the function's
 * `strict`), and its rules are renamed with a per-function prefix (`f0-root`, `f0-value`,
 * ...) so that the functions' grammars live side by side in one grammar text; the text is
 * then the key of the server's grammar cache. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "http_tools.h"
#include "strbuf.h"

static bool name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
static bool name_char(char c)
{
    return name_start(c) || (c >= '0' && c <= '9') || c == '-';
}

/* Copies grammar text with every rule name (definitions and references) prefixed: names
 * are identifiers outside literals "...", classes [...], /regex/ terminals, {n,m} bounds
 * and # comments. */
static void rename_rules(dsr1_strbuf *b, const char *s, size_t n, const char *prefix)
{
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        size_t j = i + 1;
        if (c == '"' || c == '[' || c == '{') {
            char close = c == '"' ? '"' : c == '[' ? ']' : '}';
            while (j < n && s[j] != close) j += s[j] == '\\' && j + 1 < n ? 2 : 1;
            j = j < n ? j + 1 : n;
        } else if (c == '/') {
            bool cls = false;
            while (j < n && (s[j] != '/' || cls)) {
                if (s[j] == '[') cls = true;
                if (s[j] == ']') cls = false;
                j += s[j] == '\\' && j + 1 < n ? 2 : 1;
            }
            j = j < n ? j + 1 : n;
        } else if (c == '#') {
            while (j < n && s[j] != '\n') j++;
        } else if (name_start(c)) {
            while (j < n && name_char(s[j])) j++;
            dsr1_strbuf_str(b, prefix);
        }
        dsr1_strbuf_add(b, s + i, j - i);
        i = j;
    }
}

/* The arguments grammar of one function: its rules, prefixed, appended to b. */
static dsr1_status function_rules(dsr1_strbuf *b, const json_t *fn, int index, char *param,
                                  size_t cap)
{
    const json_t *params = json_object_get(fn, "parameters");
    const char *name = json_string_value(json_object_get(fn, "name"));
    char *schema = NULL;
    /* no parameters: an empty parameter list (OpenAI's meaning), so "{}"; parameters {}:
     * any JSON object, as arguments always are */
    if (!params)
        schema = strdup("{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}");
    else if (json_is_object(params) && json_object_size(params) == 0)
        schema = strdup("{\"type\":\"object\"}");
    else
        schema = json_dumps(params, JSON_COMPACT);
    if (!schema) return dsr1_error(DSR1_ERR_NOMEM, "tool grammar: out of memory");
    const dsr1_grammar_opts opts = {.strict_objects = json_is_true(json_object_get(fn, "strict"))};
    char *text = NULL;
    size_t len = 0;
    dsr1_status st = dsr1_json_schema_to_ebnf(schema, strlen(schema), &opts, &text, &len);
    free(schema);
    if (st) {
        snprintf(param, cap, "tools");
        return dsr1_error_context(st, "tools[%d] (function '%s'): parameters", index,
                                  name ? name : "?");
    }
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "f%d-", index);
    rename_rules(b, text, len, prefix);
    if (len && text[len - 1] != '\n') dsr1_strbuf_str(b, "\n");
    free(text);
    return DSR1_OK;
}

dsr1_status dsr1_tool_grammar(const char *tools_json, const char *only, bool parallel,
                              bool after_begin, char **out, size_t *out_len, char *param,
                              size_t cap)
{
    json_t *tools = json_loads(tools_json, 0, NULL);
    if (!json_is_array(tools)) {
        json_decref(tools);
        snprintf(param, cap, "tools");
        return dsr1_error(DSR1_ERR_INVALID_ARG, "tools: not a JSON array");
    }
    dsr1_strbuf b = {0}, rules = {0};
    dsr1_status st = DSR1_OK;
    /* R1-0528's format; with tool_choice auto the scheduler has already seen the
     * <｜tool▁calls▁begin｜> that triggered the grammar */
    dsr1_strbuf_str(&b, "root ::= ");
    if (!after_begin) dsr1_strbuf_str(&b, "<|" DSR1_TOOL_CALLS_BEGIN "|> ");
    dsr1_strbuf_str(&b, parallel ? "call+ " : "call ");
    dsr1_strbuf_str(&b, "<|" DSR1_TOOL_CALLS_END "|>\n");
    dsr1_strbuf_str(&b, "call ::= <|" DSR1_TOOL_CALL_BEGIN "|> \"function\" <|" DSR1_TOOL_SEP
                        "|> fn \"\\n```\" <|" DSR1_TOOL_CALL_END "|>\n");
    dsr1_strbuf_str(&b, "fn ::= ");
    size_t i;
    json_t *t;
    int nfn = 0;
    json_array_foreach(tools, i, t)
    {
        const json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (!name || (only && strcmp(name, only))) continue;
        /* names are [A-Za-z0-9_-] (the request parser checks), safe in a literal */
        char alt[160];
        snprintf(alt, sizeof(alt), "%s\"%s\\n```json\\n\" f%d-root", nfn ? " | " : "", name,
                 (int)i);
        dsr1_strbuf_str(&b, alt);
        if ((st = function_rules(&rules, fn, (int)i, param, cap))) break;
        nfn++;
    }
    json_decref(tools);
    if (!st && !nfn) {
        snprintf(param, cap, "tool_choice");
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "tool_choice: no function '%s' in 'tools'",
                        only ? only : "");
    }
    dsr1_strbuf_str(&b, "\n");
    if (!st) dsr1_strbuf_add(&b, rules.p ? rules.p : "", rules.n);
    if (!st && (b.oom || rules.oom)) st = dsr1_error(DSR1_ERR_NOMEM, "tool grammar: out of memory");
    free(rules.p);
    if (st) {
        free(b.p);
        return st;
    }
    *out = b.p;
    *out_len = b.n;
    return DSR1_OK;
}
