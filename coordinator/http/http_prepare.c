/* Completions requests parsed and checked (http_internal.h): the body (http_request.c), the
 * model, the prompt (http_prompt.c) and the parameters, grammars compiled, as the
 * endpoints do before submitting and as a batch's codec does for each line of its input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"

/* The thinking budget: reasoning.max_tokens, else reasoning effort as a share of the
 * request's max_tokens (OpenRouter's: low 20%, medium 50%, high 80%), else none. */
static int think_budget(const dsr1_http_request *r, int max_tokens)
{
    static const int percent[4] = {0, 20, 50, 80};
    if (r->reasoning_max_tokens > 0) return r->reasoning_max_tokens;
    if (r->reasoning_effort >= 1 && r->reasoning_effort <= 3) {
        const int64_t b = (int64_t)max_tokens * percent[r->reasoning_effort] / 100;
        return b > 0 ? (int)b : 1;
    }
    return 0;
}

/* response_format json_object / json_schema: its compiled grammar (a reference in o). */
static dsr1_status format_grammar(dsr1_http_server *s, const dsr1_http_request *r, http_params *o,
                                  char *param, size_t cap)
{
    if (r->response_format == DSR1_HTTP_FORMAT_TEXT) return DSR1_OK;
    snprintf(param, cap, "response_format");
    if (!s->p.grammars)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "response_format: this server has no grammar engine");
    const dsr1_grammar_opts opts = {.strict_objects = r->json_schema_strict};
    dsr1_status st =
        r->response_format == DSR1_HTTP_FORMAT_JSON_OBJECT
            ? dsr1_grammars_get(s->p.grammars, DSR1_GRAMMAR_JSON_OBJECT, NULL, 0, &opts,
                                &o->grammar)
            : dsr1_grammars_get(s->p.grammars, DSR1_GRAMMAR_JSON_SCHEMA, r->json_schema,
                                strlen(r->json_schema), &opts, &o->grammar);
    if (st == DSR1_OK) param[0] = '\0';
    return st;
}

/* Tools with tool_choice required, a named function or auto: the grammar of well-formed
 * calls (http_tool_grammar.c), the whole answer for required and named, from
 * <｜tool▁calls▁begin｜> on for auto (a reference in o). With response_format and auto, the
 * format's grammar stays (no tool calls are possible then). */
static dsr1_status tool_grammar(dsr1_http_server *s, const dsr1_http_request *r, http_params *o,
                                char *param, size_t cap)
{
    if (!r->n_tools || r->tool_choice == DSR1_HTTP_TOOL_NONE) return DSR1_OK;
    const bool autoc = r->tool_choice == DSR1_HTTP_TOOL_AUTO;
    if (autoc && o->grammar) return DSR1_OK;
    if (!s->p.grammars) {
        if (autoc) return DSR1_OK; /* free text, parsed as today */
        snprintf(param, cap, "tool_choice");
        return dsr1_error(DSR1_ERR_INVALID_ARG, "tool_choice: this server has no grammar engine");
    }
    int32_t trigger = -1;
    if (autoc) {
        trigger = dsr1_tokenizer_token_id(s->p.tok, DSR1_TOOL_CALLS_BEGIN);
        if (trigger < 0) return DSR1_OK; /* not R1's vocabulary: nothing to enforce */
    }
    char *text = NULL;
    size_t len = 0;
    dsr1_status st = dsr1_tool_grammar(
        r->tools_json, r->tool_choice == DSR1_HTTP_TOOL_NAMED ? r->tool_choice_name : NULL,
        r->parallel_tool_calls && r->tool_choice != DSR1_HTTP_TOOL_NAMED, autoc, &text, &len, param,
        cap);
    if (st) return st;
    const dsr1_grammar *g = NULL;
    st = dsr1_grammars_get(s->p.grammars, DSR1_GRAMMAR_EBNF, text, len, NULL, &g);
    free(text);
    if (st) {
        snprintf(param, cap, "tools");
        return dsr1_error_context(st, "tools: the tool-call grammar");
    }
    dsr1_grammars_release(s->p.grammars, o->grammar); /* required / named replace a format */
    o->grammar = g;
    o->after_trigger = autoc;
    o->trigger_id = trigger;
    return DSR1_OK;
}

static dsr1_status make_params(dsr1_http_server *s, const dsr1_http_request *r,
                               const http_prompt *pr, http_params *o, char *param, size_t cap)
{
    int ctx = s->p.max_context;
    if ((int64_t)pr->n >= ctx) {
        snprintf(param, cap, "%s", r->kind == DSR1_HTTP_CHAT ? "messages" : "prompt");
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "the prompt has %zu tokens; this server's context length is %d "
                          "(prompt + max_tokens)",
                          pr->n, ctx);
    }
    o->max_tokens = r->max_tokens > 0 ? r->max_tokens : ctx - (int)pr->n;
    if ((int64_t)pr->n + o->max_tokens > ctx) {
        snprintf(param, cap, "max_tokens");
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "prompt (%zu tokens) + max_tokens (%d) exceeds this server's context "
                          "length %d",
                          pr->n, o->max_tokens, ctx);
    }
    dsr1_sampling *d = &o->sampling;
    *d = dsr1_sampling_defaults();
    d->temperature = r->has_temperature ? r->temperature : s->default_temperature;
    d->top_p = r->has_top_p ? r->top_p : s->default_top_p;
    d->top_k = r->top_k;
    d->min_p = r->min_p;
    d->presence_penalty = r->presence_penalty;
    d->frequency_penalty = r->frequency_penalty;
    if (r->has_repetition_penalty) d->repetition_penalty = r->repetition_penalty;
    d->n_bias = r->n_bias;
    d->bias_ids = r->bias_ids;
    d->bias_values = r->bias_values;
    d->top_logprobs = r->logprobs ? r->top_logprobs : 0;
    d->seed = r->has_seed ? r->seed : dsr1__http_random(s);
    dsr1_status st = dsr1_sampling_validate(d, s->p.cfg->vocab_size);
    if (st) {
        snprintf(param, cap, "%s", r->n_bias ? "logit_bias" : "");
        return st;
    }
    o->text = (dsr1_textout_params){
        .in_reasoning = pr->in_reasoning,
        .skip_special = r->skip_special_tokens,
        .eos_id = s->p.cfg->eos_token_id,
        .ignore_eos = r->ignore_eos,
        .think_end_id = s->think_end_id,
        .detect_think = pr->detect_think,
        .think_start_id = s->think_start_id,
        .stop = (const char *const *)r->stop,
        .n_stop = r->n_stop,
    };
    dsr1_textout *t;
    st = dsr1_textout_create(s->p.tok, &o->text, &t);
    if (st) {
        snprintf(param, cap, "stop");
        return st;
    }
    dsr1_textout_destroy(t);
    o->think_budget = think_budget(r, o->max_tokens);
    st = format_grammar(s, r, o, param, cap);
    return st ? st : tool_grammar(s, r, o, param, cap);
}

void dsr1__http_sched_request(const http_prepared *p, dsr1_sched_request *q)
{
    *q = (dsr1_sched_request){
        .prompt = p->pr.ids,
        .n_prompt = (int)p->pr.n,
        .sampling = p->pa.sampling,
        .max_tokens = p->pa.max_tokens,
        .logprobs = p->r.logprobs,
        .text = p->pa.text,
        .grammar = p->pa.grammar,
        .grammar_after_trigger = p->pa.after_trigger,
        .trigger_id = p->pa.trigger_id,
        .think_budget = p->pa.think_budget,
    };
}

void dsr1__http_prepared_free(dsr1_http_server *s, http_prepared *p)
{
    if (!p) return;
    free(p->pr.ids);
    dsr1_http_request_free(&p->r);
    dsr1_grammars_release(s->p.grammars, p->pa.grammar); /* each request holds its own */
    free(p);
}

int dsr1__http_prepare(dsr1_http_server *s, dsr1_http_kind kind, const char *body, size_t len,
                       bool batch, http_prepared **out, http_fail *f)
{
    memset(f, 0, sizeof(*f));
    *out = NULL;
    http_prepared *p = calloc(1, sizeof(*p));
    if (!p) {
        f->status = 500;
        snprintf(f->message, sizeof(f->message), "out of memory");
        return f->status;
    }
    dsr1_status st = dsr1_http_parse(kind, body, len, &p->r, f->param, sizeof(f->param));
    if (st) {
        free(p);
        f->status = st == DSR1_ERR_NOMEM ? 500 : 400;
        snprintf(f->message, sizeof(f->message), "%s", dsr1_errmsg());
        return f->status;
    }
    if (p->r.model && strcmp(p->r.model, s->model_name)) {
        snprintf(f->message, sizeof(f->message),
                 "The model '%.200s' does not exist (this server serves '%.100s')", p->r.model,
                 s->model_name);
        snprintf(f->param, sizeof(f->param), "model");
        f->code = "model_not_found";
        f->status = 404;
    } else if (batch && p->r.stream) {
        snprintf(f->message, sizeof(f->message), "stream: a batch request cannot be streamed");
        snprintf(f->param, sizeof(f->param), "stream");
        f->status = 400;
    }
    if (f->status) {
        dsr1__http_prepared_free(s, p);
        return f->status;
    }
    st = kind == DSR1_HTTP_CHAT ? dsr1__http_chat_prompt(s, &p->r, &p->pr)
                                : dsr1__http_completion_prompt(s, &p->r, &p->pr);
    if (st)
        snprintf(f->param, sizeof(f->param), "%s", kind == DSR1_HTTP_CHAT ? "messages" : "prompt");
    if (!st) st = make_params(s, &p->r, &p->pr, &p->pa, f->param, sizeof(f->param));
    if (!st && batch) { /* what the scheduler would refuse later (one rank's cache) */
        dsr1_sched_request q;
        dsr1__http_sched_request(p, &q);
        st = dsr1_sched_check(s->p.sched, &q);
        if (st) f->param[0] = '\0';
    }
    if (st) {
        f->status = dsr1__http_status_of(st);
        snprintf(f->message, sizeof(f->message), "%s", dsr1_errmsg());
        if (f->status != 400) f->param[0] = '\0';
        dsr1__http_prepared_free(s, p);
        return f->status;
    }
    *out = p;
    return 0;
}
