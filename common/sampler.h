/* Token sampling: from one logit row to one token id, with the request's sampling
 * parameters, its token history and its own random stream.
 *
 * The sampler is a pure function of (params, logits, history, step index): it keeps no
 * state between calls, so it runs wherever the logits are (inside the engine's step: the
 * last pipeline stage of a grid, worker/forward.h) and a seeded request gives the same
 * tokens whatever else is in the batch, however the batch is split, and on any rank. The
 * random number of step i of a request is derived from (seed, i) alone (counter-based
 * generator).
 *
 * Order of operations (the one vLLM and HF document): logit_bias; repetition penalty
 * (prompt and generated tokens: positive logits divided by it, negative multiplied);
 * presence and frequency penalties (generated tokens only: logit -= presence + frequency *
 * count); then, unless greedy, temperature, top_k, top_p, min_p, and one draw. temperature
 * 0 is greedy: the argmax of the penalised logits (lowest id on ties).
 * Log-probabilities are the log-softmax of the raw logits (before any of the above). */
#ifndef DSR1_SAMPLER_H
#define DSR1_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

#define DSR1_MAX_TOP_LOGPROBS 20

typedef struct {
    float temperature; /* 0: greedy */
    float top_p;       /* (0, 1]; 1: off */
    int top_k;         /* 0: off */
    float min_p;       /* [0, 1]; 0: off */
    uint64_t seed;
    float presence_penalty, frequency_penalty; /* 0: off */
    float repetition_penalty;                  /* 1: off */
    int n_bias;                                /* logit_bias entries */
    const int32_t *bias_ids;
    const float *bias_values;
    int top_logprobs; /* alternatives to report, 0 .. DSR1_MAX_TOP_LOGPROBS */
} dsr1_sampling;

/* The defaults before generation_config.json: temperature 1, top_p 1, repetition 1,
 * everything else off. */
dsr1_sampling dsr1_sampling_defaults(void);
/* Checks every range above; the message names the field and its allowed range. */
dsr1_status dsr1_sampling_validate(const dsr1_sampling *s, int vocab);
/* Whether a penalty is on, i.e. whether dsr1_sample reads the token history. */
bool dsr1_sampling_uses_history(const dsr1_sampling *s);

/* A request's tokens so far, for the penalties: prompt ids and generated ids. */
typedef struct {
    const int32_t *prompt;
    int n_prompt;
    const int32_t *output;
    int n_output;
} dsr1_token_history;

typedef struct {
    int32_t token_id;
    float logprob;
} dsr1_logprob;

typedef struct {
    int32_t token; /* the sampled id */
    float logprob; /* of `token` under the raw logits */
    int n_top;     /* = params.top_logprobs (the vocabulary size if smaller) */
    dsr1_logprob top[DSR1_MAX_TOP_LOGPROBS]; /* most likely first (raw logits; ties: lower id) */
} dsr1_sample_result;

/* The token of a result that could not be computed, e.g. from a logit row with a NaN or
 * +inf logit, where results travel without the error (worker/forward.h). */
#define DSR1_SAMPLE_FAILED (-1)

/* Scratch for one thread's sampling; reused across calls (no allocation per token). */
typedef struct dsr1_sampler dsr1_sampler;
dsr1_status dsr1_sampler_create(int vocab, dsr1_sampler **out);
void dsr1_sampler_destroy(dsr1_sampler *s);

/* Samples step `step` (0 for the first generated token) of a request from its logit row
 * (vocab floats; not modified). h may be NULL (no history). A row with a NaN or +inf logit,
 * or with no finite one, is DSR1_ERR_RANGE; so is a history id outside the vocabulary. */
dsr1_status dsr1_sample(dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                        const dsr1_token_history *h, uint64_t step, dsr1_sample_result *out);

/* The token dsr1_sample would draw, without its log-probability (and without the pass over
 * the vocabulary that the log-sum-exp costs): for requests that asked for no logprobs. */
dsr1_status dsr1_sample_token(dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                              const dsr1_token_history *h, uint64_t step, int32_t *token);

/* Log-probability of `token` and the top-n alternatives under a raw logit row (prompt
 * logprobs). */
dsr1_status dsr1_logprobs(dsr1_sampler *s, const float *logits, int32_t token, int n_top,
                          dsr1_sample_result *out);

/* The number in [0, 1) that step `step` of a request with this seed draws with: the top 53
 * bits of output step + 1 of SplitMix64 started from the state mix(seed) (mix: SplitMix64's
 * output function). A pure function of (seed, step), the same on every machine. */
double dsr1_sample_uniform(uint64_t seed, uint64_t step);

#endif
