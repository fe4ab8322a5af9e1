/* Conversions between the API's messages and the scheduler's structs: an Input to prompt
 * ids (tokenizing text, rendering chat messages with the chat template), SamplingParams
 * to sampling and text parameters with the defaults filled in and every limit checked,
 * and scheduler events to Delta and Completion messages (allocated in an arena, since a
 * message is a tree of small allocations that is packed once and dropped). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

#define MAX_STOP_TOKEN_IDS 256
#define MAX_LOGIT_BIAS     1024

/* ---- arena ---- */

struct srv_arena_block {
    struct srv_arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *dsr1__srv_alloc(srv_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct srv_arena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        b = malloc(sizeof(*b) + cap);
        if (!b) return NULL;
        *b = (struct srv_arena_block){a->head, 0, cap};
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

void dsr1__srv_arena_free(srv_arena *a)
{
    while (a->head) {
        struct srv_arena_block *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}

static char *arena_strndup(srv_arena *a, const char *s, size_t n)
{
    char *p = dsr1__srv_alloc(a, n + 1);
    if (p && n) memcpy(p, s, n);
    return p;
}

bool dsr1__srv_utf8_valid(const char *s)
{
    json_t *j = json_string(s); /* jansson checks UTF-8 when it makes a string */
    json_decref(j);
    return j != NULL;
}

/* ---- prompts ---- */

/* Appends the ids of text[0, n) encoded with flags to *ids (*len ids, *cap allocated). */
static dsr1_status encode_append(const dsr1_tokenizer *tok, const char *text, size_t n,
                                 unsigned flags, int32_t **ids, size_t *len, size_t *cap)
{
    int32_t *part;
    size_t np;
    dsr1_status st = dsr1_tokenizer_encode(tok, text, n, flags, &part, &np);
    if (st != DSR1_OK) return st;
    if (*len + np > *cap) {
        size_t c = (*len + np) * 2;
        int32_t *grown = realloc(*ids, c * sizeof(int32_t));
        if (!grown) {
            free(part);
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory tokenizing the prompt");
        }
        *ids = grown;
        *cap = c;
    }
    if (np) memcpy(*ids + *len, part, np * sizeof(int32_t));
    *len += np;
    free(part);
    return DSR1_OK;
}

/* Whether text would produce a special token (e.g. "<｜User｜>") if tokenized as is. */
static dsr1_status has_special(const dsr1_tokenizer *tok, const char *text, bool *out)
{
    int32_t *ids;
    size_t n;
    dsr1_status st = dsr1_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n);
    if (st != DSR1_OK) return st;
    *out = false;
    for (size_t i = 0; i < n && !*out; i++) *out = dsr1_tokenizer_is_special(tok, ids[i]);
    free(ids);
    return DSR1_OK;
}

/* The rendered conversation's ids. The prompt is tokenized whole, as Hugging Face does,
 * unless a message's content holds special-token text: then it is tokenized in pieces so
 * that each content is encoded with DSR1_ENCODE_SPECIAL_AS_TEXT (a user cannot forge
 * control tokens). The pieces split at special tokens of the template, where the
 * tokenizer splits anyway. */
static dsr1_status encode_chat(const dsr1_tokenizer *tok, const Dsr1__V1__ChatMessages *chat,
                               const char *prompt, size_t plen, int32_t **ids, size_t *n)
{
    bool forged = false;
    for (size_t i = 0; i < chat->n_messages && !forged; i++) {
        dsr1_status st = has_special(tok, chat->messages[i]->content, &forged);
        if (st != DSR1_OK) return dsr1_error_context(st, "input.chat.messages[%zu].content", i);
    }
    size_t len = 0, cap = 0, at = 0;
    *ids = NULL;
    dsr1_status st = DSR1_OK;
    for (size_t i = 0; forged && i < chat->n_messages && st == DSR1_OK; i++) {
        const char *content = chat->messages[i]->content;
        size_t cn = strlen(content);
        if (!cn) continue;
        const char *pos = memmem(prompt + at, plen - at, content, cn);
        if (!pos) {
            st = dsr1_error(DSR1_ERR_INVALID_ARG,
                            "input.chat.messages[%zu].content holds special-token text and the "
                            "chat template rewrites it; remove the special-token text",
                            i);
            break;
        }
        st = encode_append(tok, prompt + at, (size_t)(pos - prompt) - at, 0, ids, &len, &cap);
        if (st == DSR1_OK)
            st = encode_append(tok, pos, cn, DSR1_ENCODE_SPECIAL_AS_TEXT, ids, &len, &cap);
        at = (size_t)(pos - prompt) + cn;
    }
    if (st == DSR1_OK) st = encode_append(tok, prompt + at, plen - at, 0, ids, &len, &cap);
    if (st != DSR1_OK) {
        free(*ids);
        return st;
    }
    *n = len;
    return DSR1_OK;
}

/* The messages as the JSON array the chat template takes. */
static dsr1_status chat_json(const Dsr1__V1__ChatMessages *chat, char **out)
{
    static const char *const roles[] = {"system", "user", "assistant"};
    json_t *arr = json_array();
    dsr1_status st = arr ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < chat->n_messages && st == DSR1_OK; i++) {
        const Dsr1__V1__ChatMessage *m = chat->messages[i];
        bool known = false;
        for (size_t r = 0; r < 3; r++) known |= !strcmp(m->role, roles[r]);
        json_t *content = json_string(m->content);
        if (!known)
            st = dsr1_error(DSR1_ERR_INVALID_ARG,
                            "input.chat.messages[%zu].role '%.64s': expected system, user or "
                            "assistant",
                            i, m->role);
        else if (!content)
            st = dsr1_error(DSR1_ERR_INVALID_ARG,
                            "input.chat.messages[%zu].content is not valid UTF-8", i);
        else
            json_array_append_new(arr,
                                  json_pack("{s:s, s:O}", "role", m->role, "content", content));
        json_decref(content);
    }
    if (st == DSR1_OK && !(*out = json_dumps(arr, JSON_COMPACT)))
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    json_decref(arr);
    return st;
}

static dsr1_status chat_prompt(const dsr1_server *s, const Dsr1__V1__ChatMessages *chat,
                               srv_prompt *out, size_t *n)
{
    if (!s->tmpl)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "input.chat: the model has no chat template; send text or token_ids");
    if (!chat->n_messages) return dsr1_error(DSR1_ERR_INVALID_ARG, "input.chat has no messages");
    char *json, *prompt;
    size_t plen;
    dsr1_status st = chat_json(chat, &json);
    if (st != DSR1_OK) return st;
    st = dsr1_chat_template_render(s->tmpl, json, true, &prompt, &plen);
    free(json);
    if (st != DSR1_OK) return dsr1_error_context(st, "input.chat: chat template");
    st = encode_chat(s->p.tok, chat, prompt, plen, &out->prompt, n);
    out->in_reasoning = dsr1_textout_prompt_in_reasoning(prompt, plen);
    out->detect_think = !out->in_reasoning;
    free(prompt);
    return st;
}

static dsr1_status ids_prompt(const dsr1_server *s, const Dsr1__V1__TokenIds *t, srv_prompt *out,
                              size_t *n)
{
    if (!t->n_ids) return dsr1_error(DSR1_ERR_INVALID_ARG, "input.token_ids is empty");
    int vocab = s->p.cfg->vocab_size;
    for (size_t i = 0; i < t->n_ids; i++)
        if (t->ids[i] < 0 || t->ids[i] >= vocab)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "input.token_ids[%zu] = %d is outside the vocabulary [0, %d)", i,
                              t->ids[i], vocab);
    out->prompt = malloc(t->n_ids * sizeof(int32_t));
    if (!out->prompt) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for the prompt");
    memcpy(out->prompt, t->ids, t->n_ids * sizeof(int32_t));
    *n = t->n_ids;
    /* the last few ids' text tells whether the prompt opened <think> */
    size_t k = t->n_ids < 4 ? t->n_ids : 4;
    char *tail;
    size_t tn;
    if (dsr1_tokenizer_decode(s->p.tok, t->ids + t->n_ids - k, k, false, &tail, &tn) == DSR1_OK) {
        out->in_reasoning = dsr1_textout_prompt_in_reasoning(tail, tn);
        free(tail);
    }
    return DSR1_OK;
}

dsr1_status dsr1__srv_prompt(const dsr1_server *s, const Dsr1__V1__Input *in, srv_prompt *out)
{
    *out = (srv_prompt){0};
    int kind = in ? (int)in->kind_case : 0;
    size_t n = 0;
    dsr1_status st;
    switch (kind) {
    case DSR1__V1__INPUT__KIND_TEXT:
        if (!*in->text) return dsr1_error(DSR1_ERR_INVALID_ARG, "input.text is empty");
        st = dsr1_tokenizer_encode(s->p.tok, in->text, strlen(in->text), 0, &out->prompt, &n);
        if (st != DSR1_OK) return dsr1_error_context(st, "input.text");
        out->in_reasoning = dsr1_textout_prompt_in_reasoning(in->text, strlen(in->text));
        break;
    case DSR1__V1__INPUT__KIND_CHAT:
        st = chat_prompt(s, in->chat, out, &n);
        break;
    case DSR1__V1__INPUT__KIND_TOKEN_IDS:
        st = ids_prompt(s, in->token_ids, out, &n);
        break;
    default:
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "input is required: set one of text, chat or token_ids");
    }
    if (st != DSR1_OK) {
        dsr1__srv_prompt_free(out);
        return st;
    }
    out->n_prompt = (int)n;
    return DSR1_OK;
}

void dsr1__srv_prompt_free(srv_prompt *p)
{
    free(p->prompt);
    p->prompt = NULL;
}

/* ---- sampling parameters ---- */

void dsr1__srv_default_sampling(const dsr1_server *s, Dsr1__V1__SamplingParams *out)
{
    dsr1__v1__sampling_params__init(out);
    dsr1_sampling d = dsr1_sampling_defaults();
    out->opt_temperature_case = DSR1__V1__SAMPLING_PARAMS__OPT_TEMPERATURE_TEMPERATURE;
    out->temperature = s->default_temperature;
    out->opt_top_p_case = DSR1__V1__SAMPLING_PARAMS__OPT_TOP_P_TOP_P;
    out->top_p = s->default_top_p;
    out->opt_max_tokens_case = DSR1__V1__SAMPLING_PARAMS__OPT_MAX_TOKENS_MAX_TOKENS;
    out->max_tokens = s->p.max_context;
    out->opt_repetition_penalty_case =
        DSR1__V1__SAMPLING_PARAMS__OPT_REPETITION_PENALTY_REPETITION_PENALTY;
    out->repetition_penalty = d.repetition_penalty;
    out->opt_skip_special_tokens_case =
        DSR1__V1__SAMPLING_PARAMS__OPT_SKIP_SPECIAL_TOKENS_SKIP_SPECIAL_TOKENS;
    out->skip_special_tokens = 1;
}

/* max_tokens: the request's, else what the context leaves after the prompt (at least 1: a
 * prompt that fills the context is dsr1_sched_check's error, with its own message). */
static int max_tokens_of(const dsr1_server *s, const Dsr1__V1__SamplingParams *sp, int n_prompt)
{
    if (sp && sp->opt_max_tokens_case == DSR1__V1__SAMPLING_PARAMS__OPT_MAX_TOKENS_MAX_TOKENS)
        return sp->max_tokens;
    int left = s->p.max_context - n_prompt;
    return left > 1 ? left : 1;
}

/* The limits of the API itself; everything else is checked by dsr1_sched_check. */
static dsr1_status check_counts(const Dsr1__V1__SamplingParams *sp)
{
    if (sp->n_stop_token_ids > MAX_STOP_TOKEN_IDS)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%zu stop_token_ids: at most %d",
                          sp->n_stop_token_ids, MAX_STOP_TOKEN_IDS);
    if (sp->n_logit_bias > MAX_LOGIT_BIAS)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%zu logit_bias entries: at most %d",
                          sp->n_logit_bias, MAX_LOGIT_BIAS);
    return DSR1_OK;
}

/* Copies the request's fields over the defaults in o. */
static dsr1_status apply(const Dsr1__V1__SamplingParams *sp, srv_params *o)
{
    dsr1_sampling *d = &o->sampling;
    if (sp->opt_temperature_case) d->temperature = sp->temperature;
    if (sp->opt_top_p_case) d->top_p = sp->top_p;
    if (sp->opt_seed_case) d->seed = sp->seed;
    if (sp->opt_repetition_penalty_case) d->repetition_penalty = sp->repetition_penalty;
    if (sp->opt_skip_special_tokens_case) o->text.skip_special = sp->skip_special_tokens;
    d->top_k = sp->top_k;
    d->min_p = sp->min_p;
    d->presence_penalty = sp->presence_penalty;
    d->frequency_penalty = sp->frequency_penalty;
    d->top_logprobs = sp->top_logprobs;
    o->logprobs = sp->logprobs;
    o->prompt_logprobs = sp->prompt_logprobs;
    o->text.ignore_eos = sp->ignore_eos;
    o->text.stop = (const char *const *)sp->stop;
    o->text.n_stop = (int)sp->n_stop;
    o->text.stop_ids = sp->stop_token_ids;
    o->text.n_stop_ids = (int)sp->n_stop_token_ids;
    if (!sp->n_logit_bias) return DSR1_OK;
    o->bias_ids = malloc(sp->n_logit_bias * sizeof(int32_t));
    o->bias_values = malloc(sp->n_logit_bias * sizeof(float));
    if (!o->bias_ids || !o->bias_values) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < sp->n_logit_bias; i++) {
        o->bias_ids[i] = sp->logit_bias[i]->key;
        o->bias_values[i] = sp->logit_bias[i]->value;
    }
    d->n_bias = (int)sp->n_logit_bias;
    d->bias_ids = o->bias_ids;
    d->bias_values = o->bias_values;
    return DSR1_OK;
}

/* The compiled grammar of the request's constraint (a reference in o), if it has one. */
static dsr1_status constraint(const dsr1_server *s, const Dsr1__V1__SamplingParams *sp,
                              srv_params *o)
{
    dsr1_grammar_kind kind;
    const char *text = NULL;
    switch (sp->constraint_case) {
    case DSR1__V1__SAMPLING_PARAMS__CONSTRAINT_JSON_SCHEMA:
        kind = DSR1_GRAMMAR_JSON_SCHEMA;
        text = sp->json_schema;
        break;
    case DSR1__V1__SAMPLING_PARAMS__CONSTRAINT_REGEX:
        kind = DSR1_GRAMMAR_REGEX;
        text = sp->regex;
        break;
    case DSR1__V1__SAMPLING_PARAMS__CONSTRAINT_EBNF:
        kind = DSR1_GRAMMAR_EBNF;
        text = sp->ebnf;
        break;
    case DSR1__V1__SAMPLING_PARAMS__CONSTRAINT_JSON_OBJECT:
        if (!sp->json_object) return DSR1_OK;
        kind = DSR1_GRAMMAR_JSON_OBJECT;
        break;
    default:
        return DSR1_OK;
    }
    if (!s->p.grammars)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "constraint: this server has no grammar engine");
    const dsr1_grammar_opts opts = {.json_whitespace = sp->json_whitespace,
                                    .strict_objects = sp->json_strict};
    o->grammars = s->p.grammars;
    return dsr1_grammars_get(s->p.grammars, kind, text, text ? strlen(text) : 0, &opts,
                             &o->grammar);
}

dsr1_status dsr1__srv_params(dsr1_server *s, const Dsr1__V1__SamplingParams *sp,
                             const srv_prompt *prompt, srv_params *out)
{
    *out = (srv_params){0};
    out->sampling = dsr1_sampling_defaults();
    out->sampling.temperature = s->default_temperature;
    out->sampling.top_p = s->default_top_p;
    out->sampling.seed = dsr1__srv_random(s); /* unless the request brings one */
    out->text = (dsr1_textout_params){
        .in_reasoning = prompt->in_reasoning && s->think_end_id >= 0,
        .skip_special = true,
        .eos_id = s->p.cfg->eos_token_id,
        .think_end_id = s->think_end_id,
        .detect_think = prompt->detect_think && s->think_end_id >= 0,
        .think_start_id = s->think_start_id,
    };
    out->max_tokens = max_tokens_of(s, sp, prompt->n_prompt);
    dsr1_status st = sp ? check_counts(sp) : DSR1_OK;
    if (st == DSR1_OK && sp) st = apply(sp, out);
    if (st == DSR1_OK && sp) st = constraint(s, sp, out);
    if (st == DSR1_OK) {
        dsr1_sched_request q = dsr1__srv_request(prompt, out);
        st = dsr1_sched_check(s->p.sched, &q);
    }
    if (st != DSR1_OK) dsr1__srv_params_free(out);
    return st;
}

void dsr1__srv_submitted(srv_params *pa)
{
    pa->grammar = NULL;
}

dsr1_sched_request dsr1__srv_request(const srv_prompt *prompt, const srv_params *pa)
{
    return (dsr1_sched_request){
        .prompt = prompt->prompt,
        .n_prompt = prompt->n_prompt,
        .sampling = pa->sampling,
        .max_tokens = pa->max_tokens,
        .logprobs = pa->logprobs,
        .prompt_logprobs = pa->prompt_logprobs,
        .text = pa->text,
        .grammar = pa->grammar,
    };
}

void dsr1__srv_params_free(srv_params *p)
{
    dsr1_grammars_release(p->grammars, p->grammar);
    p->grammar = NULL;
    free(p->bias_ids);
    free(p->bias_values);
    p->bias_ids = NULL;
    p->bias_values = NULL;
}

/* ---- events to messages ---- */

Dsr1__V1__FinishReason dsr1__srv_finish_reason(dsr1_finish f)
{
    switch (f) {
    case DSR1_FINISH_STOP:
        return DSR1__V1__FINISH_REASON__STOP;
    case DSR1_FINISH_LENGTH:
        return DSR1__V1__FINISH_REASON__LENGTH;
    case DSR1_FINISH_ABORT:
        return DSR1__V1__FINISH_REASON__ABORT;
    case DSR1_FINISH_ERROR:
        return DSR1__V1__FINISH_REASON__ERROR;
    default:
        return DSR1__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
    }
}

/* A token's text for logprobs (invalid UTF-8 as U+FFFD; "" for ids beyond the tokenizer). */
static char *token_text(const dsr1_server *s, int32_t id, srv_arena *a)
{
    char *text;
    size_t n;
    if (dsr1_tokenizer_decode(s->p.tok, &id, 1, false, &text, &n) != DSR1_OK)
        return arena_strndup(a, "", 0);
    char *p = arena_strndup(a, text, n);
    free(text);
    return p;
}

static Dsr1__V1__TokenLogprob **logprobs(const dsr1_server *s, const dsr1_sample_result *r, int n,
                                         srv_arena *a)
{
    Dsr1__V1__TokenLogprob **out = dsr1__srv_alloc(a, (size_t)n * sizeof(*out));
    for (int i = 0; out && i < n; i++) {
        Dsr1__V1__TokenLogprob *t = out[i] = dsr1__srv_alloc(a, sizeof(*t));
        Dsr1__V1__TopLogprob **top = dsr1__srv_alloc(a, (size_t)r[i].n_top * sizeof(*top));
        if (!t || !top) return NULL;
        dsr1__v1__token_logprob__init(t);
        t->token_id = r[i].token;
        t->logprob = r[i].logprob;
        t->n_top = (size_t)r[i].n_top;
        t->top = top;
        for (int k = 0; k < r[i].n_top; k++) {
            Dsr1__V1__TopLogprob *e = top[k] = dsr1__srv_alloc(a, sizeof(*e));
            if (!e) return NULL;
            dsr1__v1__top_logprob__init(e);
            e->token_id = r[i].top[k].token_id;
            e->logprob = r[i].top[k].logprob;
            if (!(e->token = token_text(s, e->token_id, a))) return NULL;
        }
    }
    return out;
}

Dsr1__V1__Delta *dsr1__srv_delta(const dsr1_server *s, const dsr1_sched_event *ev, srv_arena *a)
{
    Dsr1__V1__Delta *d = dsr1__srv_alloc(a, sizeof(*d));
    if (!d) return NULL;
    dsr1__v1__delta__init(d);
    d->n_token_ids = (size_t)ev->n_ids;
    d->token_ids = (int32_t *)ev->ids;
    d->reasoning_text = arena_strndup(a, ev->reasoning, ev->reasoning_len);
    d->text = arena_strndup(a, ev->content, ev->content_len);
    if (ev->logprobs) {
        d->n_logprobs = (size_t)ev->n_ids;
        d->logprobs = logprobs(s, ev->logprobs, ev->n_ids, a);
        if (!d->logprobs) return NULL;
    }
    return d->reasoning_text && d->text ? d : NULL;
}

Dsr1__V1__Completion *dsr1__srv_completion(const dsr1_server *s, const dsr1_sched_event *ev,
                                           srv_arena *a)
{
    Dsr1__V1__Completion *c = dsr1__srv_alloc(a, sizeof(*c));
    Dsr1__V1__Usage *u = dsr1__srv_alloc(a, sizeof(*u));
    Dsr1__V1__Timings *t = dsr1__srv_alloc(a, sizeof(*t));
    if (!c || !u || !t) return NULL;
    dsr1__v1__completion__init(c);
    dsr1__v1__usage__init(u);
    dsr1__v1__timings__init(t);
    u->prompt_tokens = ev->prompt_tokens;
    u->completion_tokens = ev->completion_tokens;
    u->cached_tokens = ev->cached_tokens;
    t->queue_s = ev->queue_s;
    t->time_to_first_token_s = ev->ttft_s;
    t->e2e_s = ev->e2e_s;
    c->usage = u;
    c->timings = t;
    c->request_id = (char *)ev->request_id;
    c->n_token_ids = (size_t)ev->n_ids;
    c->token_ids = (int32_t *)ev->ids;
    c->reasoning_content = arena_strndup(a, ev->reasoning, ev->reasoning_len);
    c->content = arena_strndup(a, ev->content, ev->content_len);
    c->finish_reason = dsr1__srv_finish_reason(ev->finish);
    if (ev->stop_reason) c->stop_reason = (char *)ev->stop_reason;
    if (ev->error) c->error = (char *)ev->error;
    if (ev->logprobs) {
        c->n_logprobs = (size_t)ev->n_ids;
        if (!(c->logprobs = logprobs(s, ev->logprobs, ev->n_ids, a))) return NULL;
    }
    if (ev->prompt_logprobs) {
        c->n_prompt_logprobs = (size_t)ev->prompt_tokens;
        c->prompt_logprobs = logprobs(s, ev->prompt_logprobs, ev->prompt_tokens, a);
        if (!c->prompt_logprobs) return NULL;
    }
    return c->reasoning_content && c->content ? c : NULL;
}
