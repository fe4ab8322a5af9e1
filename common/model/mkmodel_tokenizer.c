/* DeepSeek-R1's tokenizer files from DeepSeek-V3's (see mkmodel.h).
 *
 * R1 ships V3's tokenizer with two changes: the placeholder tokens 128798/128799 become the
 * plain (non-special) "<think>"/"</think>", and the chat template drops the reasoning of
 * earlier assistant turns and opens a <think> block in the generation prompt. Both are
 * applied here on the parsed JSON, so the output stays valid whatever V3's formatting. */
#include "mkmodel.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The V3 template's last assistant branch, and R1's: keep only the text after </think>. */
static const char V3_ASSISTANT[] =
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}";
static const char R1_ASSISTANT[] =
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}";
/* The generation prompt at the very end of the template. */
static const char V3_GEN[] = "{{'<｜Assistant｜>'}}{% endif %}";
static const char R1_GEN[] = "{{'<｜Assistant｜><think>\\n'}}{% endif %}";

dsr1_status dsr1_r1_chat_template(const char *v3, char **out)
{
    size_t n = strlen(v3), la = strlen(V3_ASSISTANT), lg = strlen(V3_GEN);
    size_t count = 0;
    for (const char *p = strstr(v3, V3_ASSISTANT); p; p = strstr(p + la, V3_ASSISTANT)) count++;
    if (count == 0 || n < lg || strcmp(v3 + n - lg, V3_GEN) != 0)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "tokenizer_config.json: chat_template is not DeepSeek-V3's (%s); "
                          "cannot derive R1's template from it",
                          count == 0 ? "no assistant-turn branch" : "unexpected ending");
    size_t cap = n + count * (strlen(R1_ASSISTANT) - la) + strlen(R1_GEN) + 1;
    char *r = malloc(cap), *w = r;
    if (!r) return dsr1_error(DSR1_ERR_NOMEM, "chat template: out of memory");
    const char *body_end = v3 + n - lg, *p = v3;
    /* replace every occurrence (none overlaps the ending, which has no "{%- else") */
    for (const char *q; (q = strstr(p, V3_ASSISTANT)) && q < body_end; p = q + la) {
        memcpy(w, p, (size_t)(q - p));
        w += q - p;
        memcpy(w, R1_ASSISTANT, strlen(R1_ASSISTANT));
        w += strlen(R1_ASSISTANT);
    }
    memcpy(w, p, (size_t)(body_end - p));
    w += body_end - p;
    strcpy(w, R1_GEN);
    *out = r;
    return DSR1_OK;
}

static dsr1_status load(const char *dir, const char *name, json_t **out)
{
    char path[4096];
    json_error_t e;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    json_t *o = json_load_file(path, 0, &e);
    if (!o) return dsr1_error(DSR1_ERR_FORMAT, "%s: line %d: %s", path, e.line, e.text);
    if (!json_is_object(o)) {
        json_decref(o);
        return dsr1_error(DSR1_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = o;
    return DSR1_OK;
}

static dsr1_status save(json_t *o, const char *dir, const char *name, size_t flags)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (json_dump_file(o, path, flags | JSON_PRESERVE_ORDER) != 0)
        return dsr1_error(DSR1_ERR_IO, "%s: cannot write", path);
    return DSR1_OK;
}

/* Give added token `id` R1's content and make it a plain token. */
static dsr1_status retag(json_t *tok, const char *src, int id, const char *content)
{
    json_t *added = json_object_get(tok, "added_tokens"), *t;
    size_t i;
    json_array_foreach(added, i, t)
    {
        if (json_integer_value(json_object_get(t, "id")) == id) {
            if (json_object_set_new(t, "content", json_string(content)) ||
                json_object_set_new(t, "special", json_false()))
                return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
            return DSR1_OK;
        }
    }
    return dsr1_error(DSR1_ERR_FORMAT,
                      "%s/tokenizer.json: no added token with id %d; is this DeepSeek-V3's "
                      "tokenizer?",
                      src, id);
}

dsr1_status dsr1_mkmodel_tokenizer(const char *src_dir, const char *out_dir)
{
    json_t *tok = NULL, *tc = NULL;
    char *tmpl = NULL;
    dsr1_status st = load(src_dir, "tokenizer.json", &tok);
    if (st == DSR1_OK) st = retag(tok, src_dir, 128798, "<think>");
    if (st == DSR1_OK) st = retag(tok, src_dir, 128799, "</think>");
    if (st == DSR1_OK) st = load(src_dir, "tokenizer_config.json", &tc);
    if (st == DSR1_OK) {
        const char *v3 = json_string_value(json_object_get(tc, "chat_template"));
        if (!v3)
            st = dsr1_error(DSR1_ERR_FORMAT, "%s/tokenizer_config.json: no chat_template string",
                            src_dir);
        else
            st = dsr1_r1_chat_template(v3, &tmpl);
    }
    if (st == DSR1_OK && json_object_set_new(tc, "chat_template", json_string(tmpl)))
        st = dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
    if (st == DSR1_OK) st = save(tok, out_dir, "tokenizer.json", 0);
    if (st == DSR1_OK) st = save(tc, out_dir, "tokenizer_config.json", JSON_INDENT(1));
    free(tmpl);
    json_decref(tok);
    json_decref(tc);
    return st;
}
