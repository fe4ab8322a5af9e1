/* Shared by the tests of sampling inside the step (test_forward.c, test_cluster.c): what the
 * sample requests of a batch must give, computed here with the sampler on the logit rows of
 * the same batch run without sample requests, and an exact comparison of results. */
#ifndef DSR1_SAMPLE_REF_H
#define DSR1_SAMPLE_REF_H

#include <stdbool.h>
#include <string.h>

#include "forward.h"
#include "sampler.h"

/* Fills samples and row_lp as forward.h specifies for batch b, from rows: every logit row
 * each sequence's mode asks for (dsr1_seq_logit_rows), one sequence after another. Returns
 * false when the sampler fails. */
static inline bool sample_reference(const dsr1_batch *b, const float *rows, int vocab,
                                    dsr1_sample_result *samples, dsr1_sample_result *row_lp)
{
    dsr1_sampler *s;
    if (dsr1_sampler_create(vocab, &s) != DSR1_OK) return false;
    bool ok = true;
    for (int q = 0; q < b->n_seqs; q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        const dsr1_seq_sample *r = sq->sample;
        const int n = dsr1_seq_logit_rows(sq);
        const float *last = rows + (size_t)(n - 1) * vocab;
        rows += (size_t)n * vocab;
        if (!r || !n) continue;
        const int top = r->params.top_logprobs;
        if (r->prompt_logprobs)
            for (int i = 0; i + 1 < sq->n_tokens; i++)
                ok &= dsr1_logprobs(s, last - (size_t)(n - 1 - i) * vocab, sq->tokens[i + 1], top,
                                    row_lp++) == DSR1_OK;
        dsr1_sampling p = r->params;
        p.top_logprobs = r->logprobs ? top : 0;
        const dsr1_token_history h = {r->history, r->n_prompt, r->history + r->n_prompt,
                                      r->n_history - r->n_prompt};
        if (r->next) {
            ok &= dsr1_logprobs(s, last, *r->next, top, samples++) == DSR1_OK;
        } else if (r->logprobs) {
            ok &= dsr1_sample(s, &p, last, &h, r->step, samples++) == DSR1_OK;
        } else { /* the token only: logprob 0, no alternatives */
            *samples = (dsr1_sample_result){0};
            ok &= dsr1_sample(s, &p, last, &h, r->step, samples) == DSR1_OK;
            *samples = (dsr1_sample_result){.token = samples->token};
            samples++;
        }
    }
    dsr1_sampler_destroy(s);
    return ok;
}

/* Same token, logprob and alternatives, bit for bit. */
static inline bool same_result(const dsr1_sample_result *a, const dsr1_sample_result *b)
{
    return a->token == b->token && !memcmp(&a->logprob, &b->logprob, sizeof(float)) &&
           a->n_top == b->n_top && !memcmp(a->top, b->top, sizeof(dsr1_logprob) * a->n_top);
}

#endif
