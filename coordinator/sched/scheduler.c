/* The continuous-batching scheduler (see scheduler.h).
 *
 * Threads: submit/abort/get_info run on any thread and touch only what `mu` guards (the
 * incoming list, the live-request table, abort flags and the info snapshot). Everything
 * else — waiting and running lists, cache blocks, text — belongs to the scheduler thread,
 * which calls request callbacks without holding `mu` (a callback may submit or abort).
 *
 * Sampling happens in the executor, where the logits are (the engine, or the last stage of
 * a grid): each sequence whose step ends at a logits row brings its sample request, and the
 * step returns token ids and logprobs, never logit rows. Planning a step (admission,
 * priority classes, preemption) is in admit.c. */
#include "scheduler.h"

#include <stdio.h>

#include "log.h"
#include "sched_internal.h"

static double secs(int64_t a, int64_t b)
{
    return a && b ? (double)(b - a) / 1e9 : 0.0;
}

/* ---- DSR1_SCHED_PROFILE ------------------------------------------------------------------ */

/* The clock when profiling, else 0 (no call). */
static inline int64_t prof_now(const dsr1_sched *s)
{
    return s->prof.on ? now_ns() : 0;
}

/* Adds the time since *t0 to *acc and restarts *t0 (profiling only). */
static inline void prof_add(const dsr1_sched *s, int64_t *acc, int64_t *t0)
{
    if (!s->prof.on) return;
    const int64_t t = now_ns();
    *acc += t - *t0;
    *t0 = t;
}

/* Counts a planned step's sequences, tokens and sampled rows. */
static void prof_step(dsr1_sched *s, step_slot *st)
{
    sched_profile *p = &s->prof;
    int prefill = 0;
    p->steps++;
    p->seqs += st->n;
    for (int i = 0; i < st->n; i++) {
        const dsr1_seq_step *q = &st->seqs[i];
        p->tokens += q->n_tokens;
        p->samples += q->sample != NULL;
        if (q->pos < st->seq_req[i]->n_prompt) prefill += q->n_tokens;
    }
    p->prefill_tokens += prefill;
    p->prefill_steps += prefill > 0;
    st->prefill = prefill > 0;
}

static void prof_report(const dsr1_sched *s)
{
    const sched_profile *p = &s->prof;
    const double wall = (double)(now_ns() - p->t0) / 1e9;
    const double busy = (double)(p->intake + p->plan + p->exec + p->after) / 1e9;
#define PCT(x) ((double)(x) / 1e9), (busy > 0 ? 100.0 * (double)(x) / 1e9 / busy : 0.0)
    DSR1_INFO("sched profile: %.2f s since start, %.2f s of scheduler work (idle %.2f s); of "
              "the work: executor %.3f s (%.1f%%), after_step %.3f s (%.1f%%: text %.3f s "
              "%.1f%%, callbacks %.3f s %.1f%%), plan %.3f s (%.1f%%), intake %.3f s (%.1f%%)",
              wall, busy, (double)p->idle / 1e9, PCT(p->exec), PCT(p->after), PCT(p->text),
              PCT(p->cb), PCT(p->plan), PCT(p->intake));
#undef PCT
    DSR1_INFO("sched profile: %lld steps, %.2f sequences and %.1f tokens per step, %lld steps "
              "with prefill (%lld prefill tokens, %lld decode), %lld rows sampled, %lld deltas, "
              "%.2f ms per step outside the executor; executor %.2f ms per decode-only step "
              "(%lld), %.2f ms per step with prefill",
              (long long)p->steps, p->steps ? (double)p->seqs / (double)p->steps : 0.0,
              p->steps ? (double)p->tokens / (double)p->steps : 0.0, (long long)p->prefill_steps,
              (long long)p->prefill_tokens, (long long)(p->tokens - p->prefill_tokens),
              (long long)p->samples, (long long)p->deltas,
              p->steps ? (busy - (double)p->exec / 1e9) * 1e3 / (double)p->steps : 0.0,
              p->steps > p->prefill_steps
                  ? (double)p->exec_decode / 1e6 / (double)(p->steps - p->prefill_steps)
                  : 0.0,
              (long long)(p->steps - p->prefill_steps),
              p->prefill_steps ? (double)(p->exec - p->exec_decode) / 1e6 / (double)p->prefill_steps
                               : 0.0);
}

const char *dsr1_finish_str(dsr1_finish f)
{
    static const char *const names[] = {"none", "stop", "length", "abort", "error"};
    return f >= DSR1_FINISH_NONE && f <= DSR1_FINISH_ERROR ? names[f] : "unknown";
}

/* ---- request lists ------------------------------------------------------------------- */

static req *list_find(const req_list *l, const char *id)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i]->id, id)) return l->v[i];
    return NULL;
}

/* ---- requests ------------------------------------------------------------------------- */

static void req_free(req *r)
{
    if (!r) return;
    dsr1_textout_destroy(r->text);
    dsr1_matcher_free(r->matcher);
    dsr1_grammars_release(r->grammars, r->grammar);
    free(r->mask);
    free(r->id);
    free(r->tokens);
    free(r->bias_ids);
    free(r->bias_values);
    free(r->lp);
    free(r->plp);
    free(r->blocks);
    free(r);
}

/* The reasoning part's state, the matcher and the mask (see dsr1_sched_request). */
static dsr1_status reasoning_new(const dsr1_sched *s, const dsr1_sched_request *q, req *r)
{
    const dsr1_textout_params *t = &q->text;
    const bool thinks = t->think_end_id >= 0;
    r->think_end_id = t->think_end_id;
    r->reasoning = thinks && t->in_reasoning;
    r->may_open = thinks && !r->reasoning && t->detect_think && t->think_start_id >= 0;
    r->think_start_id = r->may_open ? t->think_start_id : -1;
    r->think_budget = thinks && q->think_budget > 0 ? q->think_budget : 0;
    if (q->grammar) {
        dsr1_status st = dsr1_matcher_create(q->grammar, &r->matcher);
        if (st != DSR1_OK) return st;
        r->awaiting_trigger = q->grammar_after_trigger;
        r->trigger_id = q->trigger_id;
    }
    if ((r->matcher || r->think_budget) &&
        !(r->mask = calloc(dsr1_grammar_mask_words(s->p.vocab), sizeof(uint32_t))))
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a token mask");
    return DSR1_OK;
}

/* Computes the mask of the token r draws next into r->mask: </think> alone once the
 * reasoning has used its budget; the grammar's outside the reasoning, plus <think> where it
 * may open. False when the draw is free. */
static bool compute_mask(const dsr1_sched *s, req *r)
{
    const size_t words = dsr1_grammar_mask_words(s->p.vocab);
    if (r->reasoning) {
        if (!r->think_budget || r->n_reasoning < r->think_budget) return false;
        memset(r->mask, 0, words * sizeof(uint32_t));
        r->mask[r->think_end_id / 32] = 1u << (r->think_end_id % 32);
    } else if (r->matcher && !r->grammar_done && !r->awaiting_trigger) {
        dsr1_matcher_mask(r->matcher, r->mask);
        if (r->may_open) r->mask[r->think_start_id / 32] |= 1u << (r->think_start_id % 32);
    } else {
        return false;
    }
    return true;
}

/* The mask of the token r draws next, if any (computed once per token drawn). */
void dsr1__sched_draw_mask(const dsr1_sched *s, req *r, dsr1_sampling *p)
{
    if (r->mask_state == MASK_UNKNOWN) r->mask_state = compute_mask(s, r) ? MASK_SET : MASK_FREE;
    if (r->mask_state == MASK_FREE) return;
    p->allowed = r->mask;
    p->mask_words = (int)dsr1_grammar_mask_words(s->p.vocab);
}

/* Jump-forward: the token r draws next when its mask allows exactly one (a grammar's
 * special token or literal that only one token spells, its EOS at its end, </think> at the
 * thinking budget), else -1. The sampler would draw that token whatever the logits (every
 * other one is at -inf), with the same step index for the draws that follow, so appending
 * it without a step gives the same tokens; the next step computes its cache row within the
 * chunk that draws the following token. Not with logprobs (they need the logits). */
static int32_t forced_token(const dsr1_sched *s, req *r)
{
    dsr1_sampling p = {0};
    if (r->logprobs) return -1;
    dsr1__sched_draw_mask(s, r, &p);
    if (!p.allowed) return -1;
    int32_t tok = -1;
    for (int w = 0; w < p.mask_words; w++) {
        const uint32_t bits = p.allowed[w];
        if (!bits) continue;
        if (tok >= 0 || (bits & (bits - 1))) return -1;
        tok = w * 32 + __builtin_ctz(bits);
    }
    return tok < s->p.vocab ? tok : -1;
}

/* Follows the token just drawn: into or out of the reasoning, or through the matcher. */
static dsr1_status track_token(req *r, int32_t token)
{
    const bool may_open = r->may_open;
    r->mask_state = MASK_UNKNOWN;
    r->may_open = false;
    if (r->reasoning) {
        if (token == r->think_end_id)
            r->reasoning = false;
        else
            r->n_reasoning++;
        return DSR1_OK;
    }
    if (may_open && token == r->think_start_id) {
        r->reasoning = true;
        return DSR1_OK;
    }
    if (!r->matcher || r->grammar_done) return DSR1_OK;
    if (r->awaiting_trigger) {
        r->awaiting_trigger = token != r->trigger_id;
        return DSR1_OK;
    }
    dsr1_status st = dsr1_matcher_advance(r->matcher, token);
    if (st == DSR1_OK && dsr1_matcher_ended(r->matcher)) r->grammar_done = true;
    return st;
}

static dsr1_status req_new(const dsr1_sched *s, const dsr1_sched_request *q, req **out)
{
    const int bt = s->p.exec.block_tokens;
    req *r = calloc(1, sizeof(*r));
    if (!r) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    const int cap = q->n_prompt + q->max_tokens;
    r->id = strdup(q->id);
    r->tokens = malloc(sizeof(int32_t) * (size_t)cap);
    r->cap_blocks = (cap + bt - 1) / bt;
    r->blocks = malloc(sizeof(int32_t) * (size_t)r->cap_blocks);
    r->sp = q->sampling;
    if (q->sampling.n_bias > 0) {
        r->bias_ids = malloc(sizeof(int32_t) * (size_t)q->sampling.n_bias);
        r->bias_values = malloc(sizeof(float) * (size_t)q->sampling.n_bias);
    }
    if (q->logprobs) r->lp = malloc(sizeof(*r->lp) * (size_t)q->max_tokens);
    if (q->prompt_logprobs) r->plp = calloc((size_t)q->n_prompt, sizeof(*r->plp));
    if (!r->id || !r->tokens || !r->blocks ||
        (q->sampling.n_bias > 0 && (!r->bias_ids || !r->bias_values)) || (q->logprobs && !r->lp) ||
        (q->prompt_logprobs && !r->plp)) {
        req_free(r);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for request %s", q->id);
    }
    if (q->sampling.n_bias > 0) {
        memcpy(r->bias_ids, q->sampling.bias_ids, sizeof(int32_t) * (size_t)q->sampling.n_bias);
        memcpy(r->bias_values, q->sampling.bias_values, sizeof(float) * (size_t)q->sampling.n_bias);
    }
    r->sp.bias_ids = r->bias_ids;
    r->sp.bias_values = r->bias_values;
    memcpy(r->tokens, q->prompt, sizeof(int32_t) * (size_t)q->n_prompt);
    r->n_prompt = r->n_tokens = q->n_prompt;
    r->max_tokens = q->max_tokens;
    r->logprobs = q->logprobs;
    r->prompt_logprobs = q->prompt_logprobs;
    r->callback = q->callback;
    r->ctx = q->ctx;
    r->deadline_ns = q->deadline_ns;
    r->cls = q->cls;
    r->rank = -1;
    r->state = REQ_WAITING;
    dsr1_status st = dsr1_textout_create(s->p.tok, &q->text, &r->text);
    if (st == DSR1_OK) st = reasoning_new(s, q, r);
    if (st != DSR1_OK) {
        req_free(r);
        return st;
    }
    r->grammars = s->p.grammars; /* from now on req_free gives the grammar back */
    r->grammar = q->grammar;
    *out = r;
    return DSR1_OK;
}

dsr1_status dsr1_sched_check(const dsr1_sched *s, const dsr1_sched_request *q)
{
    const int ctx = s->p.max_context;
    if (q->n_prompt < 1) return dsr1_error(DSR1_ERR_INVALID_ARG, "the prompt is empty");
    if (q->n_prompt >= ctx)
        return dsr1_error(DSR1_ERR_RANGE,
                          "the prompt has %d tokens; the context length is %d (prompt + "
                          "max_tokens)",
                          q->n_prompt, ctx);
    if (q->max_tokens < 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "max_tokens %d: must be at least 1", q->max_tokens);
    for (int i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= s->p.vocab)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "prompt token %d (at index %d) is outside the vocabulary [0, %d)",
                              q->prompt[i], i, s->p.vocab);
    const int64_t total = (int64_t)q->n_prompt + q->max_tokens;
    const int64_t fits = (int64_t)s->p.exec.blocks_per_rank * s->p.exec.block_tokens;
    if (total > ctx)
        return dsr1_error(DSR1_ERR_RANGE,
                          "prompt (%d tokens) + max_tokens (%d) = %lld exceeds the context length "
                          "%d",
                          q->n_prompt, q->max_tokens, (long long)total, ctx);
    if (total > fits)
        return dsr1_error(DSR1_ERR_RANGE,
                          "prompt (%d tokens) + max_tokens (%d) = %lld exceeds the KV cache of one "
                          "rank (%lld tokens)",
                          q->n_prompt, q->max_tokens, (long long)total, (long long)fits);
    if (q->cls != DSR1_SCHED_INTERACTIVE && q->cls != DSR1_SCHED_BATCH)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "priority class %d: must be interactive (0) or "
                          "batch (1)",
                          (int)q->cls);
    if (q->sampling.top_logprobs > 0 && !q->logprobs && !q->prompt_logprobs)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "top_logprobs needs logprobs or prompt_logprobs");
    if (q->sampling.allowed)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "a token mask comes from a grammar, not a request");
    if (q->grammar && q->grammar_after_trigger &&
        (q->trigger_id < 0 || q->trigger_id >= s->p.vocab))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "the grammar's trigger token %d is outside [0, %d)",
                          q->trigger_id, s->p.vocab);
    if (q->grammar && dsr1_grammar_vocab_size(dsr1_grammar_get_vocab(q->grammar)) > s->p.vocab)
        return dsr1_error(
            DSR1_ERR_INVALID_ARG, "the grammar was compiled for %d tokens; the model has %d",
            (int)dsr1_grammar_vocab_size(dsr1_grammar_get_vocab(q->grammar)), s->p.vocab);
    dsr1_status st = dsr1_sampling_validate(&q->sampling, s->p.vocab);
    if (st == DSR1_OK && s->p.tok) st = dsr1_textout_params_check(s->p.tok, &q->text);
    return st;
}

/* Interactive requests waiting or coming in (what max_queued bounds); under mu. */
static int queued_interactive(const dsr1_sched *s)
{
    return s->info.queued - s->info.queued_batch + s->incoming.n - s->incoming_batch;
}

dsr1_status dsr1_sched_submit(dsr1_sched *s, const dsr1_sched_request *q)
{
    if (!q->id || !q->id[0]) return dsr1_error(DSR1_ERR_INVALID_ARG, "request id is empty");
    if (!q->callback) return dsr1_error(DSR1_ERR_INVALID_ARG, "request %s has no callback", q->id);
    dsr1_status st = dsr1_sched_check(s, q);
    if (st != DSR1_OK) return st;
    req *r = NULL;
    if ((st = req_new(s, q, &r)) != DSR1_OK) return st;
    r->t_submit = now_ns();
    pthread_mutex_lock(&s->mu);
    if (s->failed || s->stop)
        st = dsr1_error(DSR1_ERR_UNAVAILABLE, "the scheduler stopped after a worker failure");
    else if (s->down)
        st = dsr1_error(DSR1_ERR_UNAVAILABLE,
                        "the worker grid cannot serve until lost workers are replaced: %s",
                        s->down_why);
    else if (list_find(&s->live, q->id))
        st = dsr1_error(DSR1_ERR_EXISTS, "request id '%s' is already in use", q->id);
    else if (q->cls == DSR1_SCHED_INTERACTIVE && queued_interactive(s) >= s->p.max_queued)
        st = dsr1_error(DSR1_ERR_BUSY, "the queue is full (%d requests waiting)",
                        queued_interactive(s));
    else if (!list_push(&s->live, r))
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    else if (!list_push(&s->incoming, r)) {
        list_remove(&s->live, r);
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    if (st == DSR1_OK) {
        s->incoming_batch += q->cls == DSR1_SCHED_BATCH;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (st != DSR1_OK) {
        r->grammars = NULL; /* the caller keeps its reference */
        req_free(r);
    }
    return st;
}

bool dsr1_sched_abort(dsr1_sched *s, const char *id)
{
    pthread_mutex_lock(&s->mu);
    req *r = list_find(&s->live, id);
    if (r && !r->aborted) {
        r->aborted = true;
        r->abort_why = "aborted";
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return r != NULL;
}

void dsr1_sched_get_info(dsr1_sched *s, dsr1_sched_info *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->info;
    out->queued += s->incoming.n;
    out->queued_batch += s->incoming_batch;
    pthread_mutex_unlock(&s->mu);
}

/* ---- finishing -------------------------------------------------------------------------- */

void dsr1__sched_release_blocks(dsr1_sched *s, req *r)
{
    for (int i = 0; i < r->n_blocks; i++) dsr1_blocks_release(s->blocks[r->rank], r->blocks[i]);
    r->n_blocks = r->n_computed = r->n_committed = 0;
}

/* Ends r: frees its blocks, takes it out of every list, sends its FINAL event, frees it.
 * err: with ERROR, why as a status (dsr1_sched_event.status); else DSR1_OK. */
static void finish(dsr1_sched *s, req *r, dsr1_finish why, const char *stop_reason,
                   const char *error, dsr1_status err)
{
    if (r->state == REQ_RUNNING) {
        list_remove(&s->running, r);
        s->rank_running[r->rank]--;
    } else {
        list_remove(&s->waiting[r->cls], r);
    }
    if (r->rank >= 0) dsr1__sched_release_blocks(s, r);
    pthread_mutex_lock(&s->mu);
    list_remove(&s->live, r);
    pthread_mutex_unlock(&s->mu);

    const int n_out = r->n_tokens - r->n_prompt;
    const int64_t t = now_ns();
    dsr1_sched_event ev = {DSR1_EV_FINAL, r->id, r->ctx};
    ev.ids = r->tokens + r->n_prompt;
    ev.n_ids = n_out;
    ev.reasoning = dsr1_textout_reasoning(r->text, &ev.reasoning_len);
    ev.content = dsr1_textout_content(r->text, &ev.content_len);
    ev.logprobs = r->lp;
    ev.finish = why;
    ev.stop_reason = stop_reason;
    ev.error = error;
    ev.status = why == DSR1_FINISH_ERROR ? err : DSR1_OK;
    ev.prompt_logprobs = r->plp;
    ev.prompt_tokens = r->n_prompt;
    ev.completion_tokens = n_out;
    ev.cached_tokens = r->n_cached;
    ev.queue_s = secs(r->t_submit, r->t_sched);
    ev.ttft_s = secs(r->t_submit, r->t_first);
    ev.e2e_s = secs(r->t_submit, t);
    r->callback(&ev);
    if (s->prof.on) s->prof.cb += now_ns() - t;
    s->finished++;
    req_free(r);
}

/* ---- one iteration ------------------------------------------------------------------------ */

/* New requests join the waiting list; aborted and expired requests end. */
static void take_in(dsr1_sched *s)
{
    req_list ended = {0};
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->incoming.n; i++)
        if (!list_push(&s->waiting[s->incoming.v[i]->cls], s->incoming.v[i])) {
            s->incoming.v[i]->aborted = true; /* cannot happen short of ENOMEM */
            s->incoming.v[i]->abort_why = "out of memory";
        }
    s->incoming.n = s->incoming_batch = 0;
    /* submit's queue check must not see them vanish */
    s->info.queued = s->waiting[0].n + s->waiting[1].n;
    s->info.queued_batch = s->waiting[DSR1_SCHED_BATCH].n;
    const int64_t t = now_ns();
    for (int i = 0; i < s->live.n; i++) {
        req *r = s->live.v[i];
        if (!r->aborted && r->deadline_ns && t >= r->deadline_ns) {
            r->aborted = true;
            r->abort_why = "deadline exceeded";
        }
        if (r->aborted && !r->busy) list_push(&ended, r); /* busy: after its step */
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < ended.n; i++) {
        dsr1_textout_delta d;
        dsr1_textout_finish(ended.v[i]->text, &d);
        finish(s, ended.v[i], DSR1_FINISH_ABORT, NULL, ended.v[i]->abort_why, DSR1_OK);
    }
    free(ended.v);
}

/* Appends len bytes to a growable NUL-terminated buffer. */
static dsr1_status buf_append(text_buf *b, const char *t, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = 2 * (b->len + len + 1) + 256;
        char *p = realloc(b->p, cap);
        if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (len) memcpy(b->p + b->len, t, len);
    b->len += len;
    b->p[b->len] = 0;
    return DSR1_OK;
}

/* Copies a textout delta's text out (it lives only until the textout's next call). */
static dsr1_status take_text(dsr1_sched *s, const dsr1_textout_delta *d)
{
    dsr1_status st = buf_append(&s->reasoning, d->reasoning, d->reasoning_len);
    return st == DSR1_OK ? buf_append(&s->content, d->content, d->content_len) : st;
}

/* A result the executor could not compute: the model's logits predicting position pos. */
static dsr1_status check_result(const dsr1_sample_result *x, int pos)
{
    if (x->token != DSR1_SAMPLE_FAILED) return DSR1_OK;
    return dsr1_error(DSR1_ERR_RANGE,
                      "the logits predicting position %d are not finite (NaN or +inf)", pos);
}

/* Takes r's next token, sends the DELTA, ends r (*ended) when it is done. */
static dsr1_status take_token(dsr1_sched *s, req *r, const dsr1_sample_result *res, bool *ended)
{
    const int n_out = r->n_tokens - r->n_prompt;
    dsr1_status st = check_result(res, r->n_tokens);
    if (st != DSR1_OK) return st;
    if ((st = track_token(r, res->token)) != DSR1_OK) return st;
    r->tokens[r->n_tokens++] = res->token;
    if (r->lp) r->lp[n_out] = *res;
    if (!r->t_first) r->t_first = now_ns();

    dsr1_textout_delta d, tail;
    int64_t t0 = prof_now(s);
    s->reasoning.len = s->content.len = 0;
    if ((st = dsr1_textout_push(r->text, res->token, &d)) != DSR1_OK || (st = take_text(s, &d)))
        return st;
    const bool length = !d.stopped && n_out + 1 == r->max_tokens;
    if (length && ((st = dsr1_textout_finish(r->text, &tail)) || (st = take_text(s, &tail))))
        return st;
    prof_add(s, &s->prof.text, &t0);
    dsr1_sched_event ev = {DSR1_EV_DELTA, r->id, r->ctx};
    ev.ids = &res->token;
    ev.n_ids = 1;
    ev.reasoning = s->reasoning.p;
    ev.reasoning_len = s->reasoning.len;
    ev.content = s->content.p;
    ev.content_len = s->content.len;
    ev.logprobs = r->lp ? res : NULL;
    r->callback(&ev);
    s->prof.deltas++;
    prof_add(s, &s->prof.cb, &t0);
    *ended = d.stopped || length;
    if (d.stopped)
        finish(s, r, DSR1_FINISH_STOP, d.stop_reason, NULL, DSR1_OK);
    else if (length)
        finish(s, r, DSR1_FINISH_LENGTH, NULL, NULL, DSR1_OK);
    return DSR1_OK;
}

/* Takes r's next token as the executor sampled it, then the tokens its mask forces (see
 * forced_token), each with its DELTA; ends r when it is done. */
static dsr1_status next_token(dsr1_sched *s, req *r, const dsr1_sample_result *res)
{
    bool ended = false;
    dsr1_status st = take_token(s, r, res, &ended);
    int32_t f;
    while (st == DSR1_OK && !ended && (f = forced_token(s, r)) >= 0) {
        const dsr1_sample_result x = {.token = f};
        st = take_token(s, r, &x, &ended);
    }
    return st;
}

/* Records the prompt logprobs of a chunk of n tokens at pos run with them: lp[i] scores
 * position pos + i + 1 (n - 1 of them), and `next`, when the chunk is not the prompt's
 * last, position pos + n. */
static dsr1_status prompt_logprobs(req *r, int pos, int n, const dsr1_sample_result *lp,
                                   const dsr1_sample_result *next)
{
    if (r->n_plp == 0) {
        r->plp[0].token = r->tokens[0]; /* the first token has no logprob: 0 */
        r->n_plp = 1;
    }
    for (int i = 0; i < n; i++) {
        const int p = pos + i + 1; /* row i predicts position p */
        const dsr1_sample_result *x = i + 1 < n ? &lp[i] : next;
        if (!x || p < r->n_plp || p >= r->n_prompt) continue;
        dsr1_status st = check_result(x, p);
        if (st != DSR1_OK) return st;
        r->plp[p] = *x;
        r->n_plp = p + 1;
    }
    return DSR1_OK;
}

/* After a step: commit newly full blocks, record logprobs, take the sampled tokens. */
static void after_step(dsr1_sched *s, const step_slot *st)
{
    const int bt = s->p.exec.block_tokens;
    const dsr1_sample_result *sample = st->samples, *row_lp = st->row_lp;
    for (int i = 0; i < st->n; i++) {
        const dsr1_seq_step *q = &st->seqs[i];
        req *r = st->seq_req[i];
        r->busy = false;
        r->n_computed = q->pos + q->n_tokens;
        if (s->p.prefix_cache)
            for (; r->n_committed < r->n_computed / bt; r->n_committed++) {
                const int k = r->n_committed;
                dsr1_blocks_commit(s->blocks[r->rank], r->blocks[k], k ? r->blocks[k - 1] : -1,
                                   r->tokens + (size_t)k * bt);
            }
        if (!q->sample) continue;
        const dsr1_sample_result *last = sample++;
        /* a request whose row cannot be sampled (NaN logits) ends alone with ERROR */
        dsr1_status st = DSR1_OK;
        if (q->sample->prompt_logprobs) {
            st = prompt_logprobs(r, q->pos, q->n_tokens, row_lp, q->sample->next ? last : NULL);
            row_lp += q->n_tokens - 1;
        }
        if (st == DSR1_OK && !q->sample->next) st = next_token(s, r, last);
        if (st != DSR1_OK) {
            char msg[512]; /* callbacks may overwrite the thread's message */
            snprintf(msg, sizeof(msg), "%s", dsr1_errmsg());
            DSR1_WARN("sched: request %s: %s", r->id, msg);
            finish(s, r, DSR1_FINISH_ERROR, NULL, msg, st);
        }
    }
}

/* Sends a planned step to the executor (an executor without submit runs it now). */
static dsr1_status submit_step(dsr1_sched *s, step_slot *st)
{
    dsr1_batch *b = &st->batch;
    *b = (dsr1_batch){st->n, st->seqs, NULL, st->samples};
    const int n_lp = dsr1_batch_row_logprobs(b);
    if (n_lp > st->row_lp_cap) {
        dsr1_sample_result *v = realloc(st->row_lp, sizeof(*v) * (size_t)n_lp);
        if (!v) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d prompt logprobs", n_lp);
        st->row_lp = v;
        st->row_lp_cap = n_lp;
    }
    b->row_logprobs = st->row_lp;
    const dsr1_executor *x = &s->p.exec;
    if (x->submit) return x->submit(x->ctx, b, &st->id);
    st->st = x->step(x->ctx, b);
    return DSR1_OK;
}

/* Completes the oldest step in flight: its results go to its requests. */
static dsr1_status complete_step(dsr1_sched *s)
{
    step_slot *st = &s->slots[s->head];
    const dsr1_executor *x = &s->p.exec;
    dsr1_status e = x->submit ? x->wait(x->ctx, st->id) : st->st;
    if (e != DSR1_OK) return e;
    s->head = (s->head + 1) % s->depth;
    s->inflight--;
    s->steps++;
    int64_t t0 = prof_now(s);
    after_step(s, st);
    prof_add(s, &s->prof.after, &t0);
    return DSR1_OK;
}

/* Every request ends with ERROR (why) and status DSR1_ERR_UNAVAILABLE, what a submission
 * gets from now on; with `down`, the executor may come back (the scheduler refuses
 * requests until it does), else it is gone for good. */
static void fail_requests(dsr1_sched *s, const char *why, bool down)
{
    char msg[512]; /* callbacks may overwrite the thread's message */
    snprintf(msg, sizeof(msg), "%s", why);
    if (down)
        DSR1_ERROR("sched: %s; failing every request, the server is unhealthy until lost "
                   "workers are replaced",
                   msg);
    else
        DSR1_ERROR("sched: %s; failing every request, the server is unhealthy", msg);
    pthread_mutex_lock(&s->mu);
    if (down) {
        s->down = true;
        snprintf(s->down_why, sizeof(s->down_why), "%s", msg);
    } else {
        s->failed = true;
    }
    s->info.healthy = false;
    for (int i = 0; i < s->incoming.n; i++)
        list_push(&s->waiting[s->incoming.v[i]->cls], s->incoming.v[i]);
    s->incoming.n = s->incoming_batch = 0;
    pthread_mutex_unlock(&s->mu);
    s->inflight = 0; /* the executor is gone: its steps in flight never return */
    for (int i = 0; i < s->running.n; i++) s->running.v[i]->busy = false;
    while (s->running.n)
        finish(s, s->running.v[0], DSR1_FINISH_ERROR, NULL, msg, DSR1_ERR_UNAVAILABLE);
    for (int c = 0; c < 2; c++)
        while (s->waiting[c].n)
            finish(s, s->waiting[c].v[0], DSR1_FINISH_ERROR, NULL, msg, DSR1_ERR_UNAVAILABLE);
}

/* An executor failure: every request ends with ERROR, new ones are refused. */
static void fail_all(dsr1_sched *s, const char *why)
{
    fail_requests(s, why, false);
}

/* An executor error: DSR1_ERR_LOST (workers lost, the steps in flight did not run) moves
 * the executor to its survivors, after which the requests of the lost ranks are
 * recomputed elsewhere and those of the dropped steps run again; anything else, or a
 * failed recovery, fails every request. */
static void executor_failed(dsr1_sched *s, dsr1_status st)
{
    const dsr1_executor *x = &s->p.exec;
    if (st == DSR1_ERR_UNAVAILABLE && x->recover) { /* the grid waits for replacements */
        if (!s->down) fail_requests(s, dsr1_errmsg(), true);
        s->inflight = 0;
        return;
    }
    if (st != DSR1_ERR_LOST || !x->recover) {
        fail_all(s, dsr1_errmsg());
        return;
    }
    char why[512];
    snprintf(why, sizeof(why), "%s", dsr1_errmsg());
    bool *was = malloc(sizeof(bool) * (size_t)x->n_ranks);
    if (!was) {
        fail_all(s, "out of memory");
        return;
    }
    memcpy(was, s->rank_alive, sizeof(bool) * (size_t)x->n_ranks);
    if (x->recover(x->ctx, s->rank_alive) != DSR1_OK) {
        free(was);
        fail_all(s, dsr1_errmsg());
        return;
    }
    /* a rank back in service (a worker joined) starts with an empty cache */
    for (int k = 0; k < x->n_ranks; k++)
        if (!was[k] && s->rank_alive[k]) {
            dsr1_blocks *fresh;
            if (dsr1_blocks_create(x->blocks_per_rank, x->block_tokens, &fresh) != DSR1_OK) {
                s->rank_alive[k] = false;
                continue;
            }
            dsr1_blocks_destroy(s->blocks[k]);
            s->blocks[k] = fresh;
        }
    free(was);
    for (int i = 0; i < s->inflight; i++) { /* none of them ran */
        const step_slot *st = &s->slots[(s->head + i) % s->depth];
        for (int j = 0; j < st->n; j++) st->seq_req[j]->busy = false;
    }
    s->inflight = 0;
    if (s->down) { /* it can serve again */
        pthread_mutex_lock(&s->mu);
        s->down = false;
        pthread_mutex_unlock(&s->mu);
        DSR1_WARN("sched: the worker grid serves again");
    }
    int moved = 0, serving = 0;
    for (int i = s->running.n - 1; i >= 0; i--) {
        req *r = s->running.v[i];
        if (!s->rank_alive[r->rank]) {
            dsr1__sched_preempt(s, r);
            moved++;
        }
    }
    for (int k = 0; k < x->n_ranks; k++) serving += s->rank_alive[k];
    s->recoveries++;
    if (serving == 0) {
        fail_all(s, "no attention rank serves any more");
        return;
    }
    if (serving == x->n_ranks)
        DSR1_INFO("sched: %s; all %d attention ranks serve", why, serving);
    else
        DSR1_WARN("sched: %s; %d of %d attention rank(s) serve, %d request(s) of lost ranks to "
                  "be recomputed",
                  why, serving, x->n_ranks, moved);
}

static void publish_info(dsr1_sched *s)
{
    dsr1_sched_info in = {0};
    in.queued = s->waiting[0].n + s->waiting[1].n;
    in.queued_batch = s->waiting[DSR1_SCHED_BATCH].n;
    for (int i = 0; i < s->running.n; i++)
        in.running_batch += s->running.v[i]->cls == DSR1_SCHED_BATCH;
    in.running = s->running.n;
    in.block_tokens = s->p.exec.block_tokens;
    in.requests_finished = s->finished;
    in.preemptions = s->preemptions;
    in.preemptions_batch = s->preemptions_batch;
    in.steps = s->steps;
    in.n_ranks = s->p.exec.n_ranks;
    for (int k = 0; k < s->p.exec.n_ranks; k++) {
        const dsr1_blocks *b = s->blocks[k];
        in.blocks_total += dsr1_blocks_total(b);
        in.blocks_used += dsr1_blocks_used(b);
        in.blocks_cached += dsr1_blocks_cached(b);
        if (k < 64)
            in.ranks[k] = (dsr1_sched_rank_info){k, s->rank_running[k], dsr1_blocks_total(b),
                                                 dsr1_blocks_used(b), dsr1_blocks_cached(b)};
    }
    if (s->p.exec.membership) s->p.exec.membership(s->p.exec.ctx, &in.grid);
    for (int k = 0; k < s->p.exec.n_ranks; k++) in.ranks_serving += s->rank_alive[k];
    pthread_mutex_lock(&s->mu);
    in.healthy = !s->failed && !s->down;
    s->info = in;
    pthread_mutex_unlock(&s->mu);
}

static void *sched_main(void *arg)
{
    dsr1_sched *s = arg;
    const dsr1_executor *x = &s->p.exec;
    int64_t last_work = now_ns(); /* of the last step or heartbeat */
    sched_profile *prof = &s->prof;
    for (;;) {
        int64_t t0 = prof_now(s);
        take_in(s);
        publish_info(s);
        pthread_mutex_lock(&s->mu);
        const bool stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        prof_add(s, &prof->intake, &t0);
        if (stop) break;
        /* fill the pipeline, then complete the oldest step */
        while (!s->failed && !s->down && s->inflight < s->depth) {
            step_slot *st = &s->slots[(s->head + s->inflight) % s->depth];
            const int planned = dsr1__sched_plan(s, st);
            if (planned && prof->on) prof_step(s, st);
            prof_add(s, &prof->plan, &t0);
            if (planned == 0) break;
            publish_info(s); /* what was admitted and preempted */
            s->inflight++;
            prof_add(s, &prof->intake, &t0);
            const int64_t exec0 = prof->exec;
            dsr1_status e = submit_step(s, st);
            prof_add(s, &prof->exec, &t0);
            if (!st->prefill) prof->exec_decode += prof->exec - exec0;
            if (e != DSR1_OK) {
                executor_failed(s, e);
                break;
            }
        }
        if (s->inflight > 0) {
            /* complete_step's after_step counts itself; the rest is the executor's wait */
            const int64_t after0 = prof->after, exec0 = prof->exec;
            const bool decode = !s->slots[s->head].prefill;
            dsr1_status e = complete_step(s);
            if (prof->on) {
                prof_add(s, &prof->exec, &t0);
                prof->exec -= prof->after - after0;
                if (decode) prof->exec_decode += prof->exec - exec0;
            }
            if (e != DSR1_OK) executor_failed(s, e);
            last_work = now_ns();
            continue;
        }
        if (x->heartbeat && !s->failed &&
            now_ns() - last_work >= (int64_t)x->heartbeat_ms * 1000000) {
            dsr1_status e = x->heartbeat(x->ctx);
            if (e != DSR1_OK) executor_failed(s, e);
            last_work = now_ns();
        }
        /* idle: wait for a submission or abort, waking now and then for deadlines */
        pthread_mutex_lock(&s->mu);
        if (!s->stop && s->incoming.n == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        pthread_mutex_unlock(&s->mu);
        prof_add(s, &prof->idle, &t0);
    }
    /* shutting down: the steps in flight complete, then everything still live ends with
     * ABORT */
    while (s->inflight > 0 && !s->failed) {
        dsr1_status e = complete_step(s);
        if (e != DSR1_OK) executor_failed(s, e);
    }
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->live.n; i++) {
        s->live.v[i]->aborted = true;
        s->live.v[i]->abort_why = "the server is shutting down";
    }
    pthread_mutex_unlock(&s->mu);
    take_in(s);
    return NULL;
}

/* ---- lifetime ------------------------------------------------------------------------------ */

static void sched_free(dsr1_sched *s)
{
    if (s->blocks)
        for (int k = 0; k < s->p.exec.n_ranks; k++) dsr1_blocks_destroy(s->blocks[k]);
    free(s->blocks);
    free(s->rank_running);
    free(s->rank_alive);
    free(s->incoming.v);
    free(s->live.v);
    free(s->waiting[0].v);
    free(s->waiting[1].v);
    free(s->snapshot);
    free(s->running.v);
    for (int i = 0; s->slots && i < s->depth; i++) {
        free(s->slots[i].seqs);
        free(s->slots[i].seq_sample);
        free(s->slots[i].seq_req);
        free(s->slots[i].samples);
        free(s->slots[i].row_lp);
    }
    free(s->slots);
    free(s->reasoning.p);
    free(s->content.p);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

dsr1_status dsr1_sched_create(const dsr1_sched_params *p, dsr1_sched **out)
{
    const dsr1_executor *x = &p->exec;
    if (!x->step || x->n_ranks < 1 || x->blocks_per_rank < 1 || x->block_tokens < 1 || !p->tok ||
        p->vocab < 1 || p->max_context < 1 || p->step_tokens < 1 || p->max_running < 1 ||
        p->max_queued < 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "scheduler: bad parameters (ranks %d, blocks %d x %d tokens, vocab %d, "
                          "context %d, step tokens %d, running %d, queued %d, tokenizer %s)",
                          x->n_ranks, x->blocks_per_rank, x->block_tokens, p->vocab, p->max_context,
                          p->step_tokens, p->max_running, p->max_queued, p->tok ? "yes" : "none");
    dsr1_sched *s = calloc(1, sizeof(*s));
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    s->p = *p;
    const char *prof = getenv("DSR1_SCHED_PROFILE");
    s->prof.on = prof && prof[0] && strcmp(prof, "0");
    s->prof.t0 = now_ns();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    dsr1_status st = DSR1_OK;
    s->blocks = calloc((size_t)x->n_ranks, sizeof(*s->blocks));
    s->rank_running = calloc((size_t)x->n_ranks, sizeof(int));
    s->rank_alive = malloc(sizeof(bool) * (size_t)x->n_ranks);
    for (int k = 0; s->rank_alive && k < x->n_ranks; k++) s->rank_alive[k] = true;
    s->snapshot = malloc(sizeof(*s->snapshot) * (size_t)p->max_running);
    s->depth = x->submit && x->depth > 1 ? x->depth : 1;
    s->slots = calloc((size_t)s->depth, sizeof(*s->slots));
    if (!s->blocks || !s->rank_running || !s->rank_alive || !s->slots || !s->snapshot)
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    /* a step holds at most one sequence per running request */
    const size_t m = (size_t)p->max_running;
    for (int i = 0; st == DSR1_OK && i < s->depth; i++) {
        step_slot *q = &s->slots[i];
        q->seqs = malloc(sizeof(*q->seqs) * m);
        q->seq_sample = malloc(sizeof(*q->seq_sample) * m);
        q->seq_req = malloc(sizeof(*q->seq_req) * m);
        q->samples = malloc(sizeof(*q->samples) * m);
        if (!q->seqs || !q->seq_sample || !q->seq_req || !q->samples)
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    for (int k = 0; st == DSR1_OK && k < x->n_ranks; k++)
        st = dsr1_blocks_create(x->blocks_per_rank, x->block_tokens, &s->blocks[k]);
    if (st == DSR1_OK) {
        publish_info(s);
        if (pthread_create(&s->thread, NULL, sched_main, s) != 0)
            st = dsr1_error(DSR1_ERR_INTERNAL, "cannot start the scheduler thread");
    }
    if (st != DSR1_OK) {
        sched_free(s);
        return st;
    }
    DSR1_INFO("sched: %d rank(s) x %d blocks of %d tokens, step budget %d tokens, up to %d "
              "running and %d queued requests, %d step(s) in flight, prefix cache %s",
              x->n_ranks, x->blocks_per_rank, x->block_tokens, p->step_tokens, p->max_running,
              p->max_queued, s->depth, p->prefix_cache ? "on" : "off");
    *out = s;
    return DSR1_OK;
}

void dsr1_sched_destroy(dsr1_sched *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    if (s->prof.on) prof_report(s);
    sched_free(s);
}
