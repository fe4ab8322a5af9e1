/* Sampling inside the engine's step (see forward_sample.h).
 *
 * A step's work is a list of items, one per row to sample or score, built in batch order so
 * that each item knows where its result goes; the pool then runs the items in any order. The
 * only failure left once the batch is checked is a row with NaN or +inf logits, which ends
 * that item alone (DSR1_SAMPLE_FAILED) rather than the step of every sequence. */
#include "forward_sample.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

typedef struct {
    const float *row;
    const dsr1_seq_sample *req;
    bool draw;     /* draw the next token; else score `token` */
    int32_t token; /* the scored token */
    dsr1_sample_result *out;
} item;

struct dsr1__sampling {
    int vocab;
    dsr1_pool *pool;
    int n_samplers;
    dsr1_sampler **samplers; /* [n_samplers]: one per pool thread */
    float *rows;
    size_t rows_cap; /* floats */
    item *items;
    int items_cap;
    /* DSR1_SCHED_PROFILE: time spent sampling, logged at destroy */
    bool prof;
    double prof_s;
    int64_t prof_rows, prof_steps;
};

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int dsr1__sample_rows(const dsr1_seq_step *q)
{
    if (!q->sample || q->logits == DSR1_LOGITS_NONE) return 0;
    return q->sample->prompt_logprobs ? q->n_tokens : 1;
}

int dsr1_batch_samples(const dsr1_batch *b)
{
    int n = 0;
    for (int s = 0; s < b->n_seqs; s++) n += dsr1__sample_rows(&b->seqs[s]) > 0;
    return n;
}

int dsr1_batch_row_logprobs(const dsr1_batch *b)
{
    int n = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const dsr1_seq_step *q = &b->seqs[s];
        if (dsr1__sample_rows(q) && q->sample->prompt_logprobs) n += q->n_tokens - 1;
    }
    return n;
}

static dsr1_status check_ids(const int32_t *ids, int n, int s, const char *what, int vocab)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return dsr1_error(DSR1_ERR_RANGE,
                              "sequence %d: %s id %d at index %d is outside the vocabulary [0, %d)",
                              s, what, ids[i], i, vocab);
    return DSR1_OK;
}

dsr1_status dsr1_seq_sample_check(const dsr1_seq_step *q, int s, int vocab)
{
    const dsr1_seq_sample *r = q->sample;
    if (!dsr1__sample_rows(q)) return DSR1_OK;
    if (r->prompt_logprobs && q->logits != DSR1_LOGITS_ALL)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "sequence %d: prompt logprobs need every logit row of the chunk "
                          "(DSR1_LOGITS_ALL)",
                          s);
    dsr1_status st = dsr1_sampling_validate(&r->params, vocab);
    if (st != DSR1_OK) return dsr1_error_context(st, "sequence %d", s);
    if (r->n_prompt < 0 || r->n_history < r->n_prompt || (r->n_history > 0 && !r->history))
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "sequence %d: a history of %d ids, %d of them the prompt%s", s,
                          r->n_history, r->n_prompt, r->history ? "" : ", and no array");
    if (dsr1_sampling_uses_history(&r->params) &&
        (st = check_ids(r->history, r->n_history, s, "history", vocab)) != DSR1_OK)
        return st;
    if (r->prompt_logprobs && (st = check_ids(q->tokens + 1, q->n_tokens - 1, s, "token", vocab)))
        return st;
    return r->next ? check_ids(r->next, 1, s, "next token", vocab) : DSR1_OK;
}

dsr1_status dsr1__sampling_create(int vocab, dsr1_pool *pool, dsr1__sampling **out)
{
    dsr1__sampling *s = calloc(1, sizeof(*s));
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    s->vocab = vocab;
    s->pool = pool;
    const char *prof = getenv("DSR1_SCHED_PROFILE");
    s->prof = prof && prof[0] && strcmp(prof, "0");
    const int n = pool ? dsr1_pool_size(pool) : 1;
    s->samplers = calloc((size_t)n, sizeof(*s->samplers));
    dsr1_status st = s->samplers ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (; st == DSR1_OK && s->n_samplers < n; s->n_samplers++)
        st = dsr1_sampler_create(vocab, &s->samplers[s->n_samplers]);
    if (st != DSR1_OK) {
        dsr1__sampling_destroy(s);
        return st;
    }
    *out = s;
    return DSR1_OK;
}

void dsr1__sampling_destroy(dsr1__sampling *s)
{
    if (!s) return;
    if (s->prof && s->prof_steps)
        DSR1_INFO("sampling profile: %.3f s in %lld steps (%.2f ms per step), %lld rows "
                  "(%.3f ms per row)",
                  s->prof_s, (long long)s->prof_steps, s->prof_s * 1e3 / (double)s->prof_steps,
                  (long long)s->prof_rows,
                  s->prof_rows ? s->prof_s * 1e3 / (double)s->prof_rows : 0.0);
    for (int i = 0; i < s->n_samplers; i++) dsr1_sampler_destroy(s->samplers[i]);
    free(s->samplers);
    free(s->rows);
    free(s->items);
    free(s);
}

dsr1_status dsr1__sampling_rows(dsr1__sampling *s, int n, float **rows)
{
    const size_t need = (size_t)n * (size_t)s->vocab;
    if (need > s->rows_cap) {
        float *r = realloc(s->rows, sizeof(float) * need);
        if (!r) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d logit rows to sample", n);
        s->rows = r;
        s->rows_cap = need;
    }
    *rows = s->rows;
    return DSR1_OK;
}

static void run_items(void *arg, int begin, int end, int tid)
{
    dsr1__sampling *s = arg;
    dsr1_sampler *sm = s->samplers[tid];
    for (int i = begin; i < end; i++) {
        const item *it = &s->items[i];
        const dsr1_seq_sample *r = it->req;
        dsr1_status st;
        if (it->draw) {
            dsr1_sampling p = r->params;
            if (!r->logprobs) p.top_logprobs = 0;
            dsr1_token_history h = {0}, *hp = NULL;
            if (r->n_history) {
                h = (dsr1_token_history){r->history, r->n_prompt, r->history + r->n_prompt,
                                         r->n_history - r->n_prompt};
                hp = &h;
            }
            if (r->logprobs) {
                st = dsr1_sample(sm, &p, it->row, hp, r->step, it->out);
            } else { /* the logprob is not wanted: skip the log-sum-exp */
                *it->out = (dsr1_sample_result){0};
                st = dsr1_sample_token(sm, &p, it->row, hp, r->step, &it->out->token);
            }
        } else {
            st = dsr1_logprobs(sm, it->row, it->token, r->params.top_logprobs, it->out);
        }
        if (st != DSR1_OK) *it->out = (dsr1_sample_result){.token = DSR1_SAMPLE_FAILED};
    }
}

dsr1_status dsr1__sampling_run(dsr1__sampling *s, const dsr1_batch *b, const float *rows)
{
    const int n_items = dsr1_batch_samples(b) + dsr1_batch_row_logprobs(b);
    if (n_items > s->items_cap) {
        item *v = realloc(s->items, sizeof(*v) * (size_t)n_items);
        if (!v) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        s->items = v;
        s->items_cap = n_items;
    }
    const size_t V = (size_t)s->vocab;
    dsr1_sample_result *sample = b->samples, *row_lp = b->row_logprobs;
    int n = 0;
    for (int q = 0; q < b->n_seqs; q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        const dsr1_seq_sample *r = sq->sample;
        const int nr = dsr1__sample_rows(sq);
        if (!nr) continue;
        if (r->prompt_logprobs)
            for (int i = 0; i + 1 < sq->n_tokens; i++)
                s->items[n++] = (item){rows + i * V, r, false, sq->tokens[i + 1], row_lp++};
        const float *last = rows + (size_t)(nr - 1) * V;
        s->items[n++] = (item){last, r, !r->next, r->next ? *r->next : 0, sample++};
        rows += (size_t)nr * V;
    }
    const double t0 = s->prof ? wall_s() : 0;
    dsr1_pool_run(s->pool, n, 1, run_items, s);
    if (s->prof) {
        s->prof_s += wall_s() - t0;
        s->prof_rows += n;
        s->prof_steps++;
    }
    return DSR1_OK;
}
