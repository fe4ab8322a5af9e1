/* Prompts of the HTTP API (http_internal.h): what the server reads from the checkpoint
 * (generation_config.json's sampling defaults, the chat template, the think tokens), chat
 * messages rendered with the chat template (our tool prompt in the system message or the
 * tools handed to the template; the reasoning switch as an empty think block) and tokenized
 * so that a client cannot forge control tokens, and completions prompts (text with BOS, or
 * ids). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "log.h"

/* ---- the model ---- */

static void load_generation_config(dsr1_http_server *s)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/generation_config.json", s->model_dir);
    s->default_temperature = 1.0f;
    s->default_top_p = 1.0f;
    json_t *g = json_load_file(path, 0, NULL);
    if (!g) return;
    json_t *t = json_object_get(g, "temperature"), *p = json_object_get(g, "top_p");
    if (json_is_number(t)) s->default_temperature = (float)json_number_value(t);
    if (json_is_number(p)) s->default_top_p = (float)json_number_value(p);
    json_decref(g);
}

dsr1_status dsr1__http_model_load(dsr1_http_server *s)
{
    load_generation_config(s);
    s->think_end_id = dsr1_tokenizer_token_id(s->p.tok, "</think>");
    s->think_start_id = dsr1_tokenizer_token_id(s->p.tok, "<think>");
    if (dsr1_chat_template_load(s->model_dir, &s->tmpl) != DSR1_OK) {
        DSR1_WARN("http: no chat template (%s): /v1/chat/completions will be refused",
                  dsr1_errmsg());
        s->tmpl = NULL;
    } else {
        s->tmpl_uses_tools = strstr(dsr1_chat_template_source(s->tmpl), "tools") != NULL;
    }
    return DSR1_OK;
}

void dsr1__http_model_free(dsr1_http_server *s)
{
    dsr1_chat_template_free(s->tmpl);
    s->tmpl = NULL;
}

/* ---- prompts ---- */

static dsr1_status encode_append(const dsr1_tokenizer *tok, const char *text, size_t n,
                                 unsigned flags, http_prompt *p, size_t *cap)
{
    int32_t *part;
    size_t np;
    dsr1_status st = dsr1_tokenizer_encode(tok, text, n, flags, &part, &np);
    if (st) return st;
    if (p->n + np > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < p->n + np) c *= 2;
        int32_t *ids = realloc(p->ids, c * sizeof(int32_t));
        if (!ids) {
            free(part);
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory for the prompt");
        }
        p->ids = ids;
        *cap = c;
    }
    memcpy(p->ids + p->n, part, np * sizeof(int32_t));
    p->n += np;
    free(part);
    return DSR1_OK;
}

static bool has_special(const dsr1_tokenizer *tok, const char *text)
{
    int32_t *ids;
    size_t n;
    bool any = false;
    if (!text || dsr1_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n)) return false;
    for (size_t i = 0; i < n && !any; i++) any = dsr1_tokenizer_is_special(tok, ids[i]);
    free(ids);
    return any;
}

/* The rendered prompt's ids. As the gRPC server does: tokenized whole unless a client's
 * content holds special-token text; then in pieces, each content encoded with
 * DSR1_ENCODE_SPECIAL_AS_TEXT, so that a client cannot forge control tokens. */
static dsr1_status encode_chat(const dsr1_http_server *s, const dsr1_http_request *r,
                               const char *prompt, size_t plen, http_prompt *out)
{
    bool forged = false;
    for (int i = 0; i < r->n_messages && !forged; i++)
        forged = has_special(s->p.tok, r->messages[i].content);
    size_t cap = 0, at = 0;
    dsr1_status st = DSR1_OK;
    for (int i = 0; forged && i < r->n_messages && !st; i++) {
        const char *content = r->messages[i].content;
        size_t cn = content ? strlen(content) : 0;
        if (!cn) continue;
        const char *pos = memmem(prompt + at, plen - at, content, cn);
        if (!pos)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "messages[%d].content holds special-token text and the chat "
                              "template rewrites it; remove the special-token text",
                              i);
        st = encode_append(s->p.tok, prompt + at, (size_t)(pos - prompt) - at, 0, out, &cap);
        if (!st) st = encode_append(s->p.tok, pos, cn, DSR1_ENCODE_SPECIAL_AS_TEXT, out, &cap);
        at = (size_t)(pos - prompt) + cn;
    }
    if (!st) st = encode_append(s->p.tok, prompt + at, plen - at, 0, out, &cap);
    return st;
}

static const char *tool_choice_note(const dsr1_http_request *r, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (r->tool_choice == DSR1_HTTP_TOOL_REQUIRED)
        snprintf(buf, cap, "Now you must call at least one function.");
    else if (r->tool_choice == DSR1_HTTP_TOOL_NAMED)
        snprintf(buf, cap, "Now you must call the function %s.", r->tool_choice_name);
    if (!r->parallel_tool_calls) {
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%sCall at most one function at a time.", n ? " " : "");
    }
    return buf;
}

/* The messages (and tools) as the chat template's context. */
static dsr1_status chat_context(const dsr1_http_server *s, const dsr1_http_request *r, char **out)
{
    json_t *msgs = json_array();
    dsr1_status st = msgs ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    dsr1_http_tool_prompt mode = r->tool_prompt;
    bool tools = r->n_tools && r->tool_choice != DSR1_HTTP_TOOL_NONE;
    if (mode == DSR1_HTTP_TOOL_PROMPT_AUTO)
        mode = s->tmpl_uses_tools ? DSR1_HTTP_TOOL_PROMPT_TEMPLATE : DSR1_HTTP_TOOL_PROMPT_BUILTIN;
    char *tool_text = NULL;
    if (!st && tools && mode == DSR1_HTTP_TOOL_PROMPT_BUILTIN) {
        char note[256];
        st = dsr1_tool_prompt(r->tools_json, tool_choice_note(r, note, sizeof(note)), &tool_text);
    }
    bool system_done = false;
    for (int i = 0; i < r->n_messages && !st; i++) {
        const dsr1_http_message *m = &r->messages[i];
        json_t *o = json_object();
        if (!o) {
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
            break;
        }
        json_object_set_new(o, "role", json_string(m->role));
        json_t *content;
        if (tool_text && !system_done && !strcmp(m->role, "system")) {
            size_t n = strlen(m->content) + strlen(tool_text) + 3;
            char *c = malloc(n);
            if (c) snprintf(c, n, "%s\n\n%s", m->content, tool_text);
            content = c ? json_string(c) : NULL;
            free(c);
            system_done = true;
        } else {
            content = m->content ? json_string(m->content) : json_null();
        }
        if (!content) {
            json_decref(o);
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "messages[%d].content is not valid UTF-8", i);
            break;
        }
        json_object_set_new(o, "content", content);
        if (m->tool_calls_json)
            json_object_set_new(o, "tool_calls", json_loads(m->tool_calls_json, 0, NULL));
        if (m->tool_call_id) json_object_set_new(o, "tool_call_id", json_string(m->tool_call_id));
        if (m->name) json_object_set_new(o, "name", json_string(m->name));
        json_array_append_new(msgs, o);
    }
    if (!st && tool_text && !system_done)
        json_array_insert_new(msgs, 0,
                              json_pack("{s:s, s:s}", "role", "system", "content", tool_text));
    free(tool_text);
    json_t *ctx = st ? NULL : json_pack("{s:o, s:b}", "messages", msgs, "add_generation_prompt", 1);
    if (st) json_decref(msgs);
    if (ctx && tools && mode == DSR1_HTTP_TOOL_PROMPT_TEMPLATE)
        json_object_set_new(ctx, "tools", json_loads(r->tools_json, 0, NULL));
    if (!st && ctx && !r->reasoning_enabled) {
        json_object_set_new(ctx, "enable_thinking", json_false());
        json_object_set_new(ctx, "thinking", json_false());
    }
    if (!st && !(ctx && (*out = json_dumps(ctx, JSON_COMPACT))))
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    json_decref(ctx);
    return st;
}

dsr1_status dsr1__http_chat_prompt(const dsr1_http_server *s, const dsr1_http_request *r,
                                   http_prompt *out)
{
    if (!s->tmpl)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "the model has no chat template: use /v1/completions");
    char *ctx, *prompt;
    size_t plen;
    dsr1_status st = chat_context(s, r, &ctx);
    if (st) return st;
    st = dsr1_chat_template_render_context(s->tmpl, ctx, &prompt, &plen);
    free(ctx);
    if (st) return dsr1_error_context(st, "messages: chat template");
    bool think = dsr1_textout_prompt_in_reasoning(prompt, plen);
    if (!r->reasoning_enabled) {
        /* an empty think block: the answer follows at once */
        const char *close = think ? "\n</think>\n\n" : "<think>\n\n</think>\n\n";
        size_t cn = strlen(close);
        char *p = realloc(prompt, plen + cn + 1);
        if (!p) {
            free(prompt);
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        }
        prompt = p;
        memcpy(prompt + plen, close, cn + 1);
        plen += cn;
        think = false;
    }
    st = encode_chat(s, r, prompt, plen, out);
    free(prompt);
    out->in_reasoning = think && s->think_end_id >= 0;
    out->detect_think = r->reasoning_enabled && !think && s->think_end_id >= 0;
    return st;
}

dsr1_status dsr1__http_completion_prompt(const dsr1_http_server *s, const dsr1_http_request *r,
                                         http_prompt *out)
{
    if (r->prompt) {
        dsr1_status st =
            dsr1_tokenizer_encode(s->p.tok, r->prompt, strlen(r->prompt), 0, &out->ids, &out->n);
        if (st) return dsr1_error_context(st, "prompt");
        /* BOS first, as Hugging Face's tokenizer (add_bos_token) and vLLM do */
        int32_t bos = s->p.cfg->bos_token_id;
        if (bos >= 0 && (!out->n || out->ids[0] != bos)) {
            int32_t *ids = realloc(out->ids, (out->n + 1) * sizeof(int32_t));
            if (!ids) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
            memmove(ids + 1, ids, out->n * sizeof(int32_t));
            ids[0] = bos;
            out->ids = ids;
            out->n++;
        }
        return DSR1_OK;
    }
    int vocab = s->p.cfg->vocab_size;
    for (int i = 0; i < r->n_prompt_ids; i++)
        if (r->prompt_ids[i] >= vocab)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "prompt[%d] = %d is outside the vocabulary [0, %d)", i,
                              r->prompt_ids[i], vocab);
    if (!(out->ids = malloc((size_t)r->n_prompt_ids * sizeof(int32_t))))
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    memcpy(out->ids, r->prompt_ids, (size_t)r->n_prompt_ids * sizeof(int32_t));
    out->n = (size_t)r->n_prompt_ids;
    return DSR1_OK;
}
