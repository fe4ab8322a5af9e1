/* Chat templates: compiling, loading from a checkpoint, and running statements (see
 * chat_template.h for the contract and the supported subset).
 *
 * Scoping follows jinja2: `set` at the top level or inside `if` writes the template's
 * variables; each iteration of a `for` body gets a fresh scope on top of the enclosing
 * one (so a `set` inside a loop is forgotten at the end of the iteration, which is why
 * templates use namespace() to carry state out of loops). */
#include "chat_template.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

#define COMPILE_ARENA_LIMIT (64u << 20)
#define RENDER_ARENA_LIMIT  (256u << 20)
#define MAX_RENDER_STEPS    20000000 /* statements per render: ~1000x a long chat */
#define MAX_TEMPLATE_BYTES  (4u << 20)

struct dsr1_chat_template {
    ct_arena arena;
    ct_body body;
    char *source;
    char *tokens[4]; /* bos, eos, pad, unk: NULL when not set */
};

static const char *const TOKEN_VARS[4] = {"bos_token", "eos_token", "pad_token", "unk_token"};

enum { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };

static int exec_body(ct_ctx *c, const ct_body *b);

static void set_var(ct_ctx *c, const char *name, ct_value v)
{
    dsr1__ct_dict_set(c, c->frame->vars, name, strlen(name), v);
}

static ct_value loop_info(ct_ctx *c, const ct_list *items, size_t i)
{
    ct_dict *d = dsr1__ct_dict_new(c, 12, CT_DICT_LOOP);
    int64_t n = (int64_t)items->n, k = (int64_t)i;
    dsr1__ct_dict_set(c, d, "index", 5, ct_int(k + 1));
    dsr1__ct_dict_set(c, d, "index0", 6, ct_int(k));
    dsr1__ct_dict_set(c, d, "revindex", 8, ct_int(n - k));
    dsr1__ct_dict_set(c, d, "revindex0", 9, ct_int(n - k - 1));
    dsr1__ct_dict_set(c, d, "first", 5, ct_bool(k == 0));
    dsr1__ct_dict_set(c, d, "last", 4, ct_bool(k == n - 1));
    dsr1__ct_dict_set(c, d, "length", 6, ct_int(n));
    dsr1__ct_dict_set(c, d, "depth", 5, ct_int(1));
    dsr1__ct_dict_set(c, d, "depth0", 6, ct_int(0));
    if (i > 0) dsr1__ct_dict_set(c, d, "previtem", 8, items->v[i - 1]);
    if (i + 1 < items->n) dsr1__ct_dict_set(c, d, "nextitem", 8, items->v[i + 1]);
    ct_value v = {.t = CT_DICT, .d = d};
    return v;
}

/* The values a for loop walks: list items, dict keys, string characters; an undefined
 * iterable gives none (jinja2.Undefined iterates as empty). */
static ct_list *iteration_items(ct_ctx *c, const ct_value *v)
{
    ct_list *l = dsr1__ct_list_new(c, 0);
    switch (v->t) {
    case CT_UNDEF:
        break;
    case CT_LIST:
        return v->l;
    case CT_DICT:
        if (v->d->kind != CT_DICT_PLAIN) CT_FAIL(c, "a %s is not iterable", dsr1__ct_type_name(v));
        for (size_t i = 0; i < v->d->n; i++)
            dsr1__ct_list_push(c, l, ct_strv(v->d->k[i].p, v->d->k[i].n));
        break;
    case CT_STR:
        for (size_t i = 0, n; i < v->s.n; i += n) {
            dsr1__ct_utf8_at(v->s.p, v->s.n, i, &n);
            dsr1__ct_list_push(c, l, ct_strv(v->s.p + i, n));
        }
        break;
    default:
        CT_FAIL(c, "'%s' object is not iterable", dsr1__ct_type_name(v));
    }
    return l;
}

static void bind_targets(ct_ctx *c, const ct_stmt *s, const ct_value *item)
{
    if (s->ntargets == 1) {
        set_var(c, s->targets[0], *item);
        return;
    }
    ct_list *parts = item->t == CT_STR    ? iteration_items(c, item)
                     : item->t == CT_LIST ? item->l
                                          : NULL;
    if (!parts || parts->n != s->ntargets)
        CT_FAIL(c, "cannot unpack a %s into %zu loop variables", dsr1__ct_type_name(item),
                s->ntargets);
    for (size_t i = 0; i < s->ntargets; i++) set_var(c, s->targets[i], parts->v[i]);
}

static void exec_for(ct_ctx *c, const ct_stmt *s)
{
    ct_value it = dsr1__ct_eval(c, s->expr);
    ct_list *items = iteration_items(c, &it);
    if (s->filter) { /* the filter runs before the loop: loop.length counts what passes */
        ct_list *kept = dsr1__ct_list_new(c, 0);
        for (size_t i = 0; i < items->n; i++) {
            ct_frame f = {c->frame, dsr1__ct_dict_new(c, 4, CT_DICT_PLAIN)};
            c->frame = &f;
            bind_targets(c, s, &items->v[i]);
            ct_value keep = dsr1__ct_eval(c, s->filter);
            c->frame = f.parent;
            if (dsr1__ct_truthy(&keep)) dsr1__ct_list_push(c, kept, items->v[i]);
        }
        items = kept;
    }
    if (!items->n) {
        exec_body(c, &s->else_body);
        return;
    }
    for (size_t i = 0; i < items->n; i++) {
        ct_frame f = {c->frame, dsr1__ct_dict_new(c, 4, CT_DICT_PLAIN)};
        c->frame = &f;
        bind_targets(c, s, &items->v[i]);
        set_var(c, "loop", loop_info(c, items, i));
        int flow = exec_body(c, &s->body);
        c->frame = f.parent;
        if (flow == FLOW_BREAK) break;
    }
}

static void exec_set(ct_ctx *c, const ct_stmt *s)
{
    ct_value v = dsr1__ct_eval(c, s->expr);
    if (!s->attr) {
        set_var(c, s->targets[0], v);
        return;
    }
    ct_value ns = dsr1__ct_lookup(c, s->targets[0]);
    if (ns.t != CT_DICT || ns.d->kind != CT_DICT_NAMESPACE)
        CT_FAIL(c,
                "cannot assign attribute '%s' on '%s': only namespace() objects can be "
                "modified",
                s->attr, s->targets[0]);
    dsr1__ct_dict_set(c, ns.d, s->attr, strlen(s->attr), v);
}

static int exec_body(ct_ctx *c, const ct_body *b)
{
    for (size_t i = 0; i < b->n; i++) {
        const ct_stmt *s = b->v[i];
        c->line = s->line;
        if (++c->steps > MAX_RENDER_STEPS)
            dsr1__ct_fail(&c->err, DSR1_ERR_RANGE, c->line,
                          "the template ran more than %d "
                          "statements; giving up",
                          MAX_RENDER_STEPS);
        switch (s->k) {
        case S_TEXT:
            dsr1__ct_emit(c, s->text.p, s->text.n);
            break;
        case S_PRINT: {
            ct_value v = dsr1__ct_eval(c, s->expr);
            ct_str str = dsr1__ct_to_str(c, &v);
            dsr1__ct_emit(c, str.p, str.n);
            break;
        }
        case S_IF: {
            size_t k = 0;
            for (; k < s->nconds; k++) {
                ct_value cond = dsr1__ct_eval(c, s->conds[k]);
                if (dsr1__ct_truthy(&cond)) break;
            }
            int flow = exec_body(c, &s->bodies[k]); /* [nconds] is the else body */
            if (flow != FLOW_NEXT) return flow;
            break;
        }
        case S_FOR:
            exec_for(c, s);
            break;
        case S_SET:
            exec_set(c, s);
            break;
        case S_BREAK:
            return FLOW_BREAK;
        case S_CONTINUE:
            return FLOW_CONTINUE;
        }
    }
    return FLOW_NEXT;
}

static void free_template(dsr1_chat_template *t)
{
    dsr1__ct_arena_free(&t->arena);
    free(t->source);
    for (int i = 0; i < 4; i++) free(t->tokens[i]);
    free(t);
}

static dsr1_status compile_with_tokens(const char *src, size_t len, char *tokens[4],
                                       dsr1_chat_template **out)
{
    if (len > MAX_TEMPLATE_BYTES)
        return dsr1_error(DSR1_ERR_RANGE, "chat template: %zu bytes is too large", len);
    dsr1_chat_template *t = calloc(1, sizeof(*t));
    if (!t) return dsr1_error(DSR1_ERR_NOMEM, "chat template: out of memory");
    t->arena.limit = COMPILE_ARENA_LIMIT;
    t->source = malloc(len + 1);
    for (int i = 0; i < 4; i++) t->tokens[i] = tokens[i], tokens[i] = NULL;
    if (!t->source) {
        free_template(t);
        return dsr1_error(DSR1_ERR_NOMEM, "chat template: out of memory");
    }
    memcpy(t->source, src, len);
    t->source[len] = '\0';
    ct_err err;
    if (setjmp(err.jmp)) {
        dsr1_status st = dsr1_error(err.status, "chat template: %s", err.msg);
        free_template(t);
        return st;
    }
    ct_tokens toks = {0};
    dsr1__ct_lex(&t->arena, &err, t->source, len, &toks);
    dsr1__ct_parse(&t->arena, &err, &toks, &t->body);
    *out = t;
    return DSR1_OK;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

dsr1_status dsr1_chat_template_compile(const char *source, size_t len, const char *bos,
                                       const char *eos, dsr1_chat_template **out)
{
    if (!source || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: NULL argument");
    char *tokens[4] = {dup_or_null(bos), dup_or_null(eos), NULL, NULL};
    dsr1_status st = compile_with_tokens(source, len, tokens, out);
    for (int i = 0; i < 4; i++) free(tokens[i]);
    return st;
}

/* A special token in tokenizer_config.json: "text" or {"content": "text", ...}. */
static char *config_token(const json_t *cfg, const char *key)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? strdup(json_string_value(v)) : NULL;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *b = cap <= MAX_TEMPLATE_BYTES * 2 ? realloc(buf, cap + 1) : NULL;
            if (!b) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

dsr1_status dsr1_chat_template_load(const char *model_dir, dsr1_chat_template **out)
{
    char path[4096];
    if (!model_dir || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: NULL argument");
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", model_dir);
    json_error_t jerr;
    json_t *cfg = json_load_file(path, 0, &jerr);
    if (!cfg)
        return dsr1_error(jerr.line < 0 ? DSR1_ERR_IO : DSR1_ERR_FORMAT, "%s:%d: %s", path,
                          jerr.line, jerr.text);
    char *tokens[4];
    for (int i = 0; i < 4; i++) tokens[i] = config_token(cfg, TOKEN_VARS[i]);
    dsr1_status st;
    size_t len = 0;
    char jinja_path[4200];
    snprintf(jinja_path, sizeof(jinja_path), "%s/chat_template.jinja", model_dir);
    char *src = read_file(jinja_path, &len);
    if (src) {
        st = compile_with_tokens(src, len, tokens, out);
        free(src);
        if (st) dsr1_error_context(st, "%s", jinja_path);
    } else {
        const json_t *tmpl = json_object_get(cfg, "chat_template");
        if (json_is_array(tmpl)) { /* named templates: take "default" */
            size_t i;
            const json_t *item, *found = NULL;
            json_array_foreach(tmpl, i, item)
            {
                const char *name = json_string_value(json_object_get(item, "name"));
                if (name && !strcmp(name, "default")) found = json_object_get(item, "template");
            }
            tmpl = found;
        }
        if (!json_is_string(tmpl)) {
            st = dsr1_error(DSR1_ERR_NOT_FOUND,
                            "%s: no chat_template (and no "
                            "chat_template.jinja)",
                            path);
        } else {
            st =
                compile_with_tokens(json_string_value(tmpl), json_string_length(tmpl), tokens, out);
            if (st) dsr1_error_context(st, "%s", path);
        }
    }
    for (int i = 0; i < 4; i++) free(tokens[i]);
    json_decref(cfg);
    return st;
}

void dsr1_chat_template_free(dsr1_chat_template *t)
{
    if (t) free_template(t);
}

const char *dsr1_chat_template_source(const dsr1_chat_template *t)
{
    return t->source;
}

/* Renders with the variables of ctx_json (a JSON object, borrowed). The context lives on
 * the heap: after a longjmp, locals changed since setjmp would be indeterminate. */
static dsr1_status render(const dsr1_chat_template *t, json_t *ctx_json, char **out,
                          size_t *out_len)
{
    ct_ctx *c = calloc(1, sizeof(*c));
    if (!c) return dsr1_error(DSR1_ERR_NOMEM, "chat template: out of memory");
    c->arena.limit = RENDER_ARENA_LIMIT;
    if (setjmp(c->err.jmp)) {
        dsr1_status st = dsr1_error(c->err.status, "chat template: %s", c->err.msg);
        dsr1__ct_arena_free(&c->arena);
        free(c->out);
        free(c);
        return st;
    }
    ct_frame *top = dsr1__ct_alloc(&c->arena, &c->err, sizeof(*top));
    top->vars = dsr1__ct_dict_new(c, 16, CT_DICT_PLAIN);
    c->frame = top;
    /* transformers' defaults, then the checkpoint's special tokens, then the caller's */
    set_var(c, "tools", ct_none());
    set_var(c, "documents", ct_none());
    set_var(c, "add_generation_prompt", ct_bool(false));
    for (int i = 0; i < 4; i++)
        if (t->tokens[i]) set_var(c, TOKEN_VARS[i], ct_strv(t->tokens[i], strlen(t->tokens[i])));
    const char *key;
    json_t *val;
    json_object_foreach(ctx_json, key, val) set_var(c, key, dsr1__ct_from_json(c, val));
    if (exec_body(c, &t->body) != FLOW_NEXT) CT_FAIL(c, "break or continue outside a loop");
    dsr1__ct_emit(c, "", 0); /* a NUL-terminated buffer even when nothing was printed */
    *out = c->out;
    if (out_len) *out_len = c->out_len;
    dsr1__ct_arena_free(&c->arena);
    free(c);
    return DSR1_OK;
}

dsr1_status dsr1_chat_template_render_context(const dsr1_chat_template *t, const char *context_json,
                                              char **out, size_t *out_len)
{
    if (!t || !context_json || !out)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: NULL argument");
    json_error_t jerr;
    json_t *ctx = json_loads(context_json, JSON_ALLOW_NUL, &jerr);
    if (!ctx)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: context JSON, line %d: %s",
                          jerr.line, jerr.text);
    dsr1_status st = json_is_object(ctx)
                         ? render(t, ctx, out, out_len)
                         : dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: the context must "
                                                            "be a JSON object");
    json_decref(ctx);
    return st;
}

dsr1_status dsr1_chat_template_render(const dsr1_chat_template *t, const char *messages_json,
                                      bool add_generation_prompt, char **out, size_t *out_len)
{
    if (!t || !messages_json || !out)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: NULL argument");
    json_error_t jerr;
    json_t *msgs = json_loads(messages_json, JSON_ALLOW_NUL, &jerr);
    if (!msgs)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: messages JSON, line %d: %s",
                          jerr.line, jerr.text);
    if (!json_is_array(msgs)) {
        json_decref(msgs);
        return dsr1_error(DSR1_ERR_INVALID_ARG, "chat template: messages must be a JSON array");
    }
    json_t *ctx = json_pack("{soso}", "messages", msgs, "add_generation_prompt",
                            json_boolean(add_generation_prompt));
    if (!ctx) return dsr1_error(DSR1_ERR_NOMEM, "chat template: out of memory");
    dsr1_status st = render(t, ctx, out, out_len);
    json_decref(ctx);
    return st;
}
