/* Completions (http_internal.h): a parsed request becomes a prompt (http_prompt.c) and n
 * scheduler requests; their events become OpenAI's chunks (streamed as Server-Sent Events)
 * or, at the end, one response body.
 *
 * Events arrive on the scheduler's thread: they only format bytes into the job's buffer
 * and resume its connection. A streamed job whose unread bytes pass max_stream_bytes (a
 * reader slower than generation) has its requests aborted, and the stream ends with an
 * error event saying so. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_internal.h"
#include "log.h"

/* ---- jobs ---- */

static void job_free(http_job *j)
{
    dsr1_http_server *s = j->s;
    pthread_mutex_lock(&s->mu);
    if (j->prev) j->prev->next = j->next;
    if (s->jobs == j) s->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    s->n_jobs--;
    if (j->batch) s->n_batch_jobs--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < j->n; i++) {
        dsr1_toolparse_destroy(j->ch[i].tools);
        json_decref(j->ch[i].choice);
    }
    free(j->ch);
    free(j->out);
    dsr1_grammars_release(s->p.grammars, j->rest.grammar);
    free(j->rest_prompt);
    free(j->rest_bias_ids);
    free(j->rest_bias_values);
    for (int i = 0; i < DSR1_HTTP_MAX_STOP; i++) free(j->rest_stop[i]);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

bool dsr1__http_job_ref_live(http_job *j)
{
    int refs = atomic_load(&j->refs);
    while (refs > 0 && !atomic_compare_exchange_weak(&j->refs, &refs, refs + 1)) {
    }
    return refs > 0;
}

void dsr1__http_job_unref(http_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) == 1) job_free(j);
}

void dsr1__http_job_abort(http_job *j)
{
    pthread_mutex_lock(&j->mu);
    int n = j->n_submitted;
    pthread_mutex_unlock(&j->mu);
    for (int i = 0; i < n; i++) dsr1_sched_abort(j->s->p.sched, j->ch[i].rid);
}

/* A job for connection c, or with rid a batch item's (no connection). */
static http_job *job_new(dsr1_http_server *s, struct MHD_Connection *c, const dsr1_http_request *r,
                         const char *rid)
{
    http_job *j = calloc(1, sizeof(*j));
    if (!j || !(j->ch = calloc((size_t)r->n, sizeof(http_choice)))) {
        free(j);
        return NULL;
    }
    atomic_init(&j->refs, 1);
    pthread_mutex_init(&j->mu, NULL);
    j->s = s;
    j->conn = c;
    j->kind = r->kind;
    j->n = r->n;
    j->stream = r->stream;
    j->include_usage = r->include_usage;
    j->logprobs = r->logprobs;
    j->exclude_reasoning = r->reasoning_exclude;
    j->created = (long long)time(NULL);
    j->batch = rid != NULL;
    snprintf(j->id, sizeof(j->id), "%s%016llx", r->kind == DSR1_HTTP_CHAT ? "chatcmpl-" : "cmpl-",
             (unsigned long long)dsr1__http_random(s));
    for (int i = 0; i < r->n; i++) {
        snprintf(j->ch[i].id, sizeof(j->ch[i].id), "%s-%d", j->id, i);
        if (!rid)
            snprintf(j->ch[i].rid, sizeof(j->ch[i].rid), "%s", j->ch[i].id);
        else if (i == 0)
            snprintf(j->ch[i].rid, sizeof(j->ch[i].rid), "%s", rid);
        else
            snprintf(j->ch[i].rid, sizeof(j->ch[i].rid), "%s#%d", rid, i);
        bool tools = r->n_tools && r->tool_choice != DSR1_HTTP_TOOL_NONE;
        if (tools && dsr1_toolparse_create(&j->ch[i].tools)) {
            for (int k = 0; k < i; k++) dsr1_toolparse_destroy(j->ch[k].tools);
            free(j->ch);
            free(j);
            return NULL;
        }
    }
    pthread_mutex_lock(&s->mu);
    j->serial = s->next_serial++;
    j->next = s->jobs;
    if (s->jobs) s->jobs->prev = j;
    s->jobs = j;
    s->n_jobs++;
    if (j->batch) s->n_batch_jobs++;
    pthread_mutex_unlock(&s->mu);
    return j;
}

/* Appends to the job's output (j->mu held); false when out of memory. */
static bool out_add(http_job *j, const char *p, size_t n)
{
    if (j->out_n + n + 1 > j->out_cap) {
        size_t cap = j->out_cap ? j->out_cap : 4096;
        while (cap < j->out_n + n + 1) cap *= 2;
        char *b = realloc(j->out, cap);
        if (!b) return false;
        j->out = b;
        j->out_cap = cap;
    }
    memcpy(j->out + j->out_n, p, n);
    j->out_n += n;
    j->out[j->out_n] = '\0';
    return true;
}

/* One SSE event with a JSON object (taken over). */
static void sse_json(http_job *j, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return;
    if (!out_add(j, "data: ", 6) || !out_add(j, text, strlen(text)) || !out_add(j, "\n\n", 2))
        j->overflow = true;
    free(text);
}

/* ---- logprobs ---- */

static json_t *token_string(const dsr1_http_server *s, int32_t id, json_t **bytes)
{
    char *text = NULL;
    size_t n = 0;
    if (dsr1_tokenizer_decode(s->p.tok, &id, 1, false, &text, &n)) {
        text = NULL;
        n = 0;
    }
    json_t *str = json_stringn(text ? text : "", n);
    if (!str) str = json_string("\xef\xbf\xbd");
    if (bytes) {
        *bytes = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(*bytes, json_integer((unsigned char)text[i]));
    }
    free(text);
    return str;
}

/* Chat: {"content": [{"token","logprob","bytes","top_logprobs":[...]}, ...]}. */
static json_t *chat_logprobs(const dsr1_http_server *s, const dsr1_sample_result *r, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        json_t *bytes, *top = json_array();
        json_t *e = json_pack("{s:o, s:f}", "token", token_string(s, r[i].token, &bytes), "logprob",
                              (double)r[i].logprob);
        json_object_set_new(e, "bytes", bytes);
        for (int k = 0; k < r[i].n_top; k++) {
            json_t *tb;
            json_t *t = json_pack("{s:o, s:f}", "token", token_string(s, r[i].top[k].token_id, &tb),
                                  "logprob", (double)r[i].top[k].logprob);
            json_object_set_new(t, "bytes", tb);
            json_array_append_new(top, t);
        }
        json_object_set_new(e, "top_logprobs", top);
        json_array_append_new(arr, e);
    }
    return json_pack("{s:o, s:n}", "content", arr, "refusal");
}

/* Completions: {"tokens","token_logprobs","top_logprobs":[{tok: lp}],"text_offset"}. */
static json_t *text_logprobs(const dsr1_http_server *s, const dsr1_sample_result *r, int n,
                             size_t offset)
{
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int i = 0; i < n; i++) {
        json_t *t = token_string(s, r[i].token, NULL);
        json_array_append_new(offs, json_integer((json_int_t)offset));
        /* offsets count characters: every byte that does not continue a UTF-8 sequence */
        for (size_t k = 0; k < json_string_length(t); k++)
            offset += ((unsigned char)json_string_value(t)[k] & 0xC0) != 0x80;
        json_array_append_new(toks, t);
        json_array_append_new(lps, json_real(r[i].logprob));
        json_t *top = json_object();
        for (int k = 0; k < r[i].n_top; k++) {
            json_t *tt = token_string(s, r[i].top[k].token_id, NULL);
            json_object_set_new(top, json_string_value(tt), json_real(r[i].top[k].logprob));
            json_decref(tt);
        }
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}

/* ---- events ---- */

static const char *finish_name(const http_choice *c, bool tool_calls)
{
    if (tool_calls && c->finish == DSR1_FINISH_STOP) return "tool_calls";
    return c->finish == DSR1_FINISH_LENGTH ? "length" : "stop";
}

int dsr1__http_reasoning_tokens(const http_choice *c, int completion_tokens)
{
    if (!c->reasoning_seen) return 0;
    return c->content_seen ? c->tokens_before_content : completion_tokens;
}

/* tool_calls deltas from parser events. */
static json_t *tool_call_deltas(http_job *j, int ci, const dsr1_tool_event *ev, int n)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        json_t *args = json_stringn(ev[i].args, ev[i].args_len);
        json_t *fn = json_pack("{s:o}", "arguments", args ? args : json_string(""));
        json_t *d = json_pack("{s:i}", "index", ev[i].index);
        if (ev[i].name) {
            char id[160];
            snprintf(id, sizeof(id), "call_%s_%d",
                     j->ch[ci].id + (j->kind == DSR1_HTTP_CHAT ? 9 : 5), ev[i].index);
            json_object_set_new(d, "id", json_string(id));
            json_object_set_new(d, "type", json_string("function"));
            json_object_set_new(fn, "name", json_string(ev[i].name));
        }
        json_object_set_new(d, "function", fn);
        json_array_append_new(arr, d);
    }
    return arr;
}

static json_t *chunk(http_job *j, json_t *choice)
{
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", j->id, "object",
                  j->kind == DSR1_HTTP_CHAT ? "chat.completion.chunk" : "text_completion",
                  "created", (json_int_t)j->created, "model", j->s->model_name, "choices", choice);
    if (o && j->include_usage) json_object_set_new(o, "usage", json_null());
    return o;
}

/* A streamed DELTA (j->mu held). */
static void stream_delta(http_job *j, int ci, const dsr1_sched_event *ev)
{
    http_choice *c = &j->ch[ci];
    const dsr1_http_server *s = j->s;
    if (j->kind == DSR1_HTTP_COMPLETION) {
        if (!ev->content_len && !ev->logprobs) return;
        json_t *t = json_stringn(ev->content, ev->content_len);
        json_t *ch = json_pack("{s:i, s:o, s:n, s:n}", "index", ci, "text", t ? t : json_string(""),
                               "logprobs", "finish_reason");
        if (ev->logprobs)
            json_object_set_new(ch, "logprobs", text_logprobs(s, ev->logprobs, ev->n_ids, 0));
        sse_json(j, chunk(j, ch));
        return;
    }
    json_t *delta = json_object();
    if (!c->role_sent) {
        json_object_set_new(delta, "role", json_string("assistant"));
        json_object_set_new(delta, "content", json_string(""));
        c->role_sent = true;
    }
    if (ev->reasoning_len && !j->exclude_reasoning)
        json_object_set_new(delta, "reasoning_content",
                            json_stringn(ev->reasoning, ev->reasoning_len));
    const char *content = ev->content;
    size_t clen = ev->content_len;
    int n_ev = 0;
    const dsr1_tool_event *tev = NULL;
    if (c->tools && clen) {
        dsr1_toolparse_feed(c->tools, content, clen, false);
        content = dsr1_toolparse_content(c->tools, &clen);
        tev = dsr1_toolparse_events(c->tools, &n_ev);
    }
    if (clen) json_object_set_new(delta, "content", json_stringn(content, clen));
    if (n_ev) json_object_set_new(delta, "tool_calls", tool_call_deltas(j, ci, tev, n_ev));
    if (json_object_size(delta) == 0 && !ev->logprobs) {
        json_decref(delta);
        return;
    }
    json_t *ch =
        json_pack("{s:i, s:o, s:n, s:n}", "index", ci, "delta", delta, "logprobs", "finish_reason");
    if (ev->logprobs)
        json_object_set_new(ch, "logprobs", chat_logprobs(s, ev->logprobs, ev->n_ids));
    sse_json(j, chunk(j, ch));
}

static json_t *usage(http_job *j)
{
    int prompt = j->ch[0].prompt_tokens, cached = j->ch[0].cached_tokens, completion = 0,
        reasoning = 0;
    for (int i = 0; i < j->n; i++) {
        completion += j->ch[i].completion_tokens;
        reasoning += dsr1__http_reasoning_tokens(&j->ch[i], j->ch[i].completion_tokens);
    }
    return json_pack("{s:i, s:i, s:i, s:{s:i}, s:{s:i}}", "prompt_tokens", prompt,
                     "completion_tokens", completion, "total_tokens", prompt + completion,
                     "prompt_tokens_details", "cached_tokens", cached, "completion_tokens_details",
                     "reasoning_tokens", reasoning);
}

/* A streamed FINAL (j->mu held). */
static void stream_final(http_job *j, int ci, const dsr1_sched_event *ev)
{
    http_choice *c = &j->ch[ci];
    bool calls = false;
    if (c->tools) {
        dsr1_toolparse_feed(c->tools, "", 0, true);
        size_t clen;
        const char *content = dsr1_toolparse_content(c->tools, &clen);
        int n_ev;
        const dsr1_tool_event *tev = dsr1_toolparse_events(c->tools, &n_ev);
        if (clen || n_ev) {
            json_t *delta = json_object();
            if (clen) json_object_set_new(delta, "content", json_stringn(content, clen));
            if (n_ev) json_object_set_new(delta, "tool_calls", tool_call_deltas(j, ci, tev, n_ev));
            sse_json(j, chunk(j, json_pack("{s:i, s:o, s:n, s:n}", "index", ci, "delta", delta,
                                           "logprobs", "finish_reason")));
        }
        calls = dsr1_toolparse_calls(c->tools) > 0;
    }
    if (ev->finish == DSR1_FINISH_ABORT || ev->finish == DSR1_FINISH_ERROR) {
        pthread_mutex_lock(&j->s->mu);
        bool stopping = j->s->stopping;
        pthread_mutex_unlock(&j->s->mu);
        const char *why = j->overflow ? "the client reads the stream too slowly: its unread "
                                        "output passed the server's bound, so the request was "
                                        "aborted"
                          : stopping  ? "the server is shutting down"
                                      : (ev->error ? ev->error : "aborted");
        char *e = dsr1__http_error_json(
            why, ev->finish == DSR1_FINISH_ERROR ? "server_error" : "request_aborted", NULL, NULL);
        if (e) {
            out_add(j, "data: ", 6);
            out_add(j, e, strlen(e));
            out_add(j, "\n\n", 2);
        }
        free(e);
        return;
    }
    json_t *ch = j->kind == DSR1_HTTP_CHAT
                     ? json_pack("{s:i, s:{}, s:n, s:s}", "index", ci, "delta", "logprobs",
                                 "finish_reason", finish_name(c, calls))
                     : json_pack("{s:i, s:s, s:n, s:s}", "index", ci, "text", "", "logprobs",
                                 "finish_reason", finish_name(c, calls));
    bool keep = j->overflow;
    sse_json(j, chunk(j, ch));
    j->overflow = keep;
}

/* A non-streamed FINAL: the choice object (j->mu held). */
static void final_choice(http_job *j, int ci, const dsr1_sched_event *ev)
{
    http_choice *c = &j->ch[ci];
    const dsr1_http_server *s = j->s;
    json_t *lp = ev->logprobs
                     ? (j->kind == DSR1_HTTP_CHAT ? chat_logprobs(s, ev->logprobs, ev->n_ids)
                                                  : text_logprobs(s, ev->logprobs, ev->n_ids, 0))
                     : json_null();
    json_t *content = json_stringn(ev->content, ev->content_len);
    if (j->kind == DSR1_HTTP_COMPLETION) {
        c->choice = json_pack("{s:i, s:o, s:o, s:s}", "index", ci, "text",
                              content ? content : json_string(""), "logprobs", lp, "finish_reason",
                              finish_name(c, false));
        return;
    }
    json_t *msg = json_pack("{s:s, s:n}", "role", "assistant", "refusal");
    bool calls = false;
    if (c->tools) {
        json_decref(content);
        dsr1_toolparse_feed(c->tools, ev->content, ev->content_len, true);
        size_t clen;
        const char *text = dsr1_toolparse_content(c->tools, &clen);
        int n_ev;
        const dsr1_tool_event *tev = dsr1_toolparse_events(c->tools, &n_ev);
        /* whitespace-only content around calls is no content */
        size_t k = 0;
        while (k < clen && strchr(" \n\r\t", text[k])) k++;
        content = n_ev && k == clen ? json_null() : json_stringn(text, clen);
        json_t *tc = json_array();
        for (int i = 0; i < n_ev; i++) {
            if (!tev[i].name) continue; /* merged per call: names come first */
            char id[160];
            snprintf(id, sizeof(id), "call_%s_%d", c->id + 9, tev[i].index);
            /* one event per call: a whole feed merges a call's fragments into it */
            json_t *args = json_stringn(tev[i].args, tev[i].args_len);
            json_array_append_new(tc, json_pack("{s:s, s:s, s:{s:s, s:o}}", "id", id, "type",
                                                "function", "function", "name", tev[i].name,
                                                "arguments", args ? args : json_string("")));
        }
        calls = json_array_size(tc) > 0;
        if (calls)
            json_object_set_new(msg, "tool_calls", tc);
        else
            json_decref(tc);
    }
    json_object_set_new(msg, "content", content ? content : json_string(""));
    if (!j->exclude_reasoning && ev->reasoning_len)
        json_object_set_new(msg, "reasoning_content",
                            json_stringn(ev->reasoning, ev->reasoning_len));
    c->choice = json_pack("{s:i, s:o, s:o, s:s}", "index", ci, "message", msg, "logprobs", lp,
                          "finish_reason", finish_name(c, calls));
}

/* Every choice final (j->mu held): the end of the stream, or the whole body. */
static void job_end(http_job *j)
{
    if (j->stream && j->fail_status) {
        char *e = dsr1__http_error_json(j->fail_msg, "server_error", NULL,
                                        j->fail_status == 429 ? "queue_full" : NULL);
        if (e) {
            out_add(j, "data: ", 6);
            out_add(j, e, strlen(e));
            out_add(j, "\n\n", 2);
        }
        free(e);
    }
    if (j->stream) {
        if (j->include_usage) {
            json_t *o = json_pack(
                "{s:s, s:s, s:I, s:s, s:[], s:o}", "id", j->id, "object",
                j->kind == DSR1_HTTP_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                (json_int_t)j->created, "model", j->s->model_name, "choices", "usage", usage(j));
            sse_json(j, o);
        }
        out_add(j, "data: [DONE]\n\n", 14);
        j->ended = true;
        return;
    }
    int bad = -1;
    for (int i = 0; i < j->n && bad < 0; i++)
        if (j->ch[i].finish == DSR1_FINISH_ABORT || j->ch[i].finish == DSR1_FINISH_ERROR ||
            !j->ch[i].choice)
            bad = i;
    char *body;
    if (j->fail_status) {
        j->status = j->fail_status;
        body = dsr1__http_error_json(j->fail_msg,
                                     j->status == 429   ? "rate_limit_error"
                                     : j->status == 503 ? "service_unavailable"
                                                        : "server_error",
                                     NULL, j->status == 429 ? "queue_full" : NULL);
    } else if (bad >= 0) {
        pthread_mutex_lock(&j->s->mu);
        bool stopping = j->s->stopping;
        pthread_mutex_unlock(&j->s->mu);
        j->status = stopping || j->ch[bad].finish == DSR1_FINISH_ERROR ? 503 : 500;
        body = dsr1__http_error_json(
            stopping ? "the server is shutting down" : "the request was aborted",
            j->status == 503 ? "service_unavailable" : "server_error", NULL, NULL);
    } else {
        json_t *choices = json_array();
        for (int i = 0; i < j->n; i++) {
            json_array_append(choices, j->ch[i].choice);
        }
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", j->id, "object",
                              j->kind == DSR1_HTTP_CHAT ? "chat.completion" : "text_completion",
                              "created", (json_int_t)j->created, "model", j->s->model_name,
                              "choices", choices, "usage", usage(j));
        body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        j->status = 200;
    }
    j->out_n = j->out_off = 0;
    if (!body || !out_add(j, body, strlen(body))) j->status = 500;
    free(body);
    j->ended = true;
}

static int choice_of(const http_job *j, const char *id)
{
    for (int i = 1; i < j->n; i++)
        if (!strcmp(j->ch[i].rid, id)) return i;
    return 0;
}

/* Whether the job has just ended and its end is to be told (j->mu held): a batch item's. */
static bool end_to_tell(http_job *j)
{
    if (!j->ended || !j->on_end || j->end_told) return false;
    j->end_told = true;
    return true;
}

static void sched_done(dsr1_http_server *s, const http_job *j)
{
    pthread_mutex_lock(&s->mu);
    s->n_sched--;
    if (j->batch) s->n_sched_batch--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void submit_rest(http_job *j);

/* The scheduler's events (its thread). */
static void on_event(const dsr1_sched_event *ev)
{
    http_job *j = ev->ctx;
    dsr1_http_server *s = j->s;
    int ci = choice_of(j, ev->request_id);
    http_choice *c = &j->ch[ci];
    double now = dsr1__http_now();
    bool final = ev->kind == DSR1_EV_FINAL;
    pthread_mutex_lock(&j->mu);
    if (!final) {
        if (c->n_tokens) dsr1__http_metrics_itl(&s->metrics, now - c->last_t);
        c->last_t = now;
        if (ev->content_len && !c->content_seen) {
            c->content_seen = true;
            c->tokens_before_content = c->n_tokens;
        }
        if (ev->reasoning_len) c->reasoning_seen = true;
        c->n_tokens += ev->n_ids;
        if (j->stream && !j->overflow && !j->gone) stream_delta(j, ci, ev);
    } else {
        c->final_seen = true;
        c->finish = ev->finish;
        c->status = ev->status;
        c->prompt_tokens = ev->prompt_tokens;
        c->completion_tokens = ev->completion_tokens;
        c->cached_tokens = ev->cached_tokens;
        /* counted before the answer can go out, so that a client reading /metrics after it
         * sees this request (the metrics' lock is a leaf: taken under j->mu only) */
        dsr1__http_metrics_final(&s->metrics, ev);
        if (j->stream)
            stream_final(j, ci, ev);
        else if (ev->finish != DSR1_FINISH_ABORT && ev->finish != DSR1_FINISH_ERROR)
            final_choice(j, ci, ev);
        if (ci == 0 && j->deferred &&
            (ev->finish == DSR1_FINISH_ABORT || ev->finish == DSR1_FINISH_ERROR || j->gone)) {
            j->deferred = false; /* choice 0 failed: the others are not started */
            snprintf(j->fail_msg, sizeof(j->fail_msg), "%s",
                     ev->error ? ev->error : "the request was aborted");
            j->fail_status = 503;
            j->fail_st = ev->status;
        }
        if (++j->n_final == j->n_submitted && !j->deferred) job_end(j);
    }
    bool run_rest = ci == 0 && j->deferred && !j->gone;
    bool abort_now = false;
    if (j->stream && !j->overflow && j->out_n - j->out_off > (size_t)s->p.max_stream_bytes &&
        !final) {
        j->overflow = true;
        abort_now = true;
        DSR1_WARN("http: %s: the client reads too slowly (%zu bytes unread): aborting", j->id,
                  j->out_n - j->out_off);
    }
    if (j->out_n > j->out_off || j->ended) dsr1__http_resume(s, j);
    bool tell = end_to_tell(j);
    pthread_mutex_unlock(&j->mu);
    if (abort_now) dsr1__http_job_abort(j);
    if (tell) j->on_end(j);
    if (run_rest) submit_rest(j);
    if (final) {
        sched_done(s, j);
        dsr1__http_job_unref(j);
    }
}

/* ---- submission ---- */

/* Submits choice i of q's request (seed + i). The request takes its own reference on the
 * grammar, which the scheduler gives back when it ends. */
static dsr1_status submit_one(dsr1_http_server *s, http_job *j, const dsr1_sched_request *req,
                              int i)
{
    dsr1_sched_request q = *req;
    q.id = j->ch[i].rid;
    q.cls = j->batch ? DSR1_SCHED_BATCH : DSR1_SCHED_INTERACTIVE;
    q.sampling.seed += (uint64_t)i;
    atomic_fetch_add(&j->refs, 1);
    pthread_mutex_lock(&s->mu);
    s->n_sched++;
    if (j->batch) s->n_sched_batch++;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&j->mu);
    j->n_submitted++;
    pthread_mutex_unlock(&j->mu);
    dsr1_grammars_retain(s->p.grammars, q.grammar);
    dsr1_status st = dsr1_sched_submit(s->p.sched, &q);
    if (st) {
        dsr1_grammars_release(s->p.grammars, q.grammar);
        pthread_mutex_lock(&j->mu);
        j->n_submitted--;
        pthread_mutex_unlock(&j->mu);
        sched_done(s, j);
        atomic_fetch_sub(&j->refs, 1);
    }
    return st;
}

/* Keeps owned copies of what choices 1.. need (j->rest). */
static dsr1_status keep_rest(http_job *j, const dsr1_sched_request *q)
{
    j->rest = *q;
    dsr1_grammars_retain(j->s->p.grammars, q->grammar); /* released when the job ends */
    j->rest_prompt = malloc((size_t)q->n_prompt * sizeof(int32_t));
    if (!j->rest_prompt) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    memcpy(j->rest_prompt, q->prompt, (size_t)q->n_prompt * sizeof(int32_t));
    j->rest.prompt = j->rest_prompt;
    int nb = q->sampling.n_bias;
    if (nb) {
        j->rest_bias_ids = malloc((size_t)nb * sizeof(int32_t));
        j->rest_bias_values = malloc((size_t)nb * sizeof(float));
        if (!j->rest_bias_ids || !j->rest_bias_values)
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        memcpy(j->rest_bias_ids, q->sampling.bias_ids, (size_t)nb * sizeof(int32_t));
        memcpy(j->rest_bias_values, q->sampling.bias_values, (size_t)nb * sizeof(float));
        j->rest.sampling.bias_ids = j->rest_bias_ids;
        j->rest.sampling.bias_values = j->rest_bias_values;
    }
    for (int i = 0; i < q->text.n_stop; i++)
        if (!(j->rest_stop[i] = strdup(q->text.stop[i])))
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    j->rest.text.stop = (const char *const *)j->rest_stop;
    return DSR1_OK;
}

/* Choices 1.. of a job whose choice 0 has computed the prompt (the scheduler's thread). A
 * failure ends the job with an error (the choices already running are aborted). */
static void submit_rest(http_job *j)
{
    dsr1_http_server *s = j->s;
    dsr1_status st = DSR1_OK;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) st = dsr1_error(DSR1_ERR_UNAVAILABLE, "the server is shutting down");
    pthread_mutex_unlock(&s->mu);
    for (int i = 1; i < j->n && !st; i++) st = submit_one(s, j, &j->rest, i);
    /* a shutdown or hang-up that came while they were submitted has missed them */
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&j->mu);
    bool gone = j->gone;
    pthread_mutex_unlock(&j->mu);
    if (!st && (stopping || gone)) dsr1__http_job_abort(j);
    pthread_mutex_lock(&j->mu);
    j->deferred = false;
    if (st) {
        j->fail_status = dsr1__http_status_of(st);
        j->fail_st = st;
        snprintf(j->fail_msg, sizeof(j->fail_msg), "choices 1 to %d: %s", j->n - 1, dsr1_errmsg());
    }
    bool end = j->n_final == j->n_submitted;
    if (end) {
        job_end(j);
        dsr1__http_resume(s, j);
    }
    bool tell = end_to_tell(j);
    pthread_mutex_unlock(&j->mu);
    if (st) dsr1__http_job_abort(j);
    if (tell) j->on_end(j);
}

/* Submits the job's requests: all at once for n = 1; for n > 1, choice 0 now and the
 * others from its first event (see http_job.deferred). */
static dsr1_status submit(dsr1_http_server *s, http_job *j, const http_prepared *p)
{
    dsr1_sched_request q;
    dsr1__http_sched_request(p, &q);
    q.callback = on_event;
    q.ctx = j;
    if (j->n > 1) {
        dsr1_status st = keep_rest(j, &q);
        if (st) return st;
        j->deferred = true;
    }
    dsr1_status st = submit_one(s, j, &q, 0);
    if (st) j->deferred = false;
    return st;
}

static enum MHD_Result sse_response(dsr1_http_server *s, struct MHD_Connection *c, http_job *j);

/* A job that submitted nothing (or whose submissions were aborted) given up by its
 * creator. */
static void job_drop(dsr1_http_server *s, http_job *j)
{
    if (j->conn) dsr1__http_unwatch(s, j);
    pthread_mutex_lock(&j->mu);
    j->gone = true;
    j->conn = NULL;
    j->on_end = NULL;
    pthread_mutex_unlock(&j->mu);
    dsr1__http_job_unref(j);
}

dsr1_status dsr1__http_job_submit_batch(dsr1_http_server *s, const http_prepared *p,
                                        const char *rid, void (*on_end)(http_job *j), void *end_ctx)
{
    http_job *j = job_new(s, NULL, &p->r, rid);
    if (!j) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    j->on_end = on_end;
    j->end_ctx = end_ctx;
    dsr1_status st = submit(s, j, p);
    if (st) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", dsr1_errmsg());
        job_drop(s, j); /* n > 1: choice 0 failed, nothing runs */
        return dsr1_error(st, "%s", msg);
    }
    return DSR1_OK; /* j may have ended already */
}

enum MHD_Result dsr1__http_generate(dsr1_http_server *s, struct MHD_Connection *c,
                                    dsr1_http_kind kind, const char *body, size_t len,
                                    http_job **job)
{
    http_prepared *p;
    http_fail f;
    if (dsr1__http_prepare(s, kind, body, len, false, &p, &f))
        return dsr1__http_send_error(s, c, f.status, NULL, f.param, f.code, f.message);
    http_job *j = job_new(s, c, &p->r, NULL);
    dsr1_status st = DSR1_OK;
    if (!j) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (!st) {
        pthread_mutex_lock(&j->mu);
        dsr1__http_watch(s, j);
        pthread_mutex_unlock(&j->mu);
        st = submit(s, j, p);
        if (st && j->n_submitted) { /* some were queued: abort them, answer the error */
            dsr1__http_job_abort(j);
        }
    }
    dsr1__http_prepared_free(s, p);
    if (st) {
        int status = dsr1__http_status_of(st);
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", dsr1_errmsg());
        if (j) job_drop(s, j);
        return dsr1__http_send_error(s, c, status, NULL, NULL, status == 429 ? "queue_full" : NULL,
                                     msg);
    }
    *job = j;
    if (j->stream) return sse_response(s, c, j);
    pthread_mutex_lock(&j->mu);
    enum MHD_Result ret = MHD_YES;
    if (j->ended)
        ret = MHD_NO; /* answered below, outside the lock */
    else
        dsr1__http_suspend(s, j);
    pthread_mutex_unlock(&j->mu);
    return ret == MHD_NO ? dsr1__http_job_respond(s, c, j) : MHD_YES;
}

enum MHD_Result dsr1__http_job_respond(dsr1_http_server *s, struct MHD_Connection *c, http_job *j)
{
    pthread_mutex_lock(&j->mu);
    if (!j->ended) { /* resumed early: wait again */
        dsr1__http_suspend(s, j);
        pthread_mutex_unlock(&j->mu);
        return MHD_YES;
    }
    char *body = j->out;
    int status = j->status;
    j->out = NULL;
    j->out_n = j->out_cap = j->out_off = 0;
    pthread_mutex_unlock(&j->mu);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(body ? strlen(body) : 0, body ? body : (char *)"",
                                        body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    dsr1__http_metrics_status(&s->metrics, status);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---- Server-Sent Events ---- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    http_job *j = cls;
    pthread_mutex_lock(&j->mu);
    ssize_t n;
    if (j->out_n > j->out_off) {
        size_t k = j->out_n - j->out_off;
        if (k > max) k = max;
        memcpy(buf, j->out + j->out_off, k);
        j->out_off += k;
        if (j->out_off == j->out_n) j->out_off = j->out_n = 0;
        n = (ssize_t)k;
    } else if (j->ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        dsr1__http_suspend(j->s, j);
        n = 0;
    }
    pthread_mutex_unlock(&j->mu);
    return n;
}

static void sse_free(void *cls)
{
    dsr1__http_job_unref(cls);
}

static enum MHD_Result sse_response(dsr1_http_server *s, struct MHD_Connection *c, http_job *j)
{
    atomic_fetch_add(&j->refs, 1); /* the response's */
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, j, sse_free);
    if (!r) {
        dsr1__http_job_unref(j);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    dsr1__http_metrics_status(&s->metrics, 200);
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}
