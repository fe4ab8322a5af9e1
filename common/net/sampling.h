/* A request's sampling parameters and what sampling gives back: the types that travel
 * between the coordinator and the last pipeline stage. The coordinator validates the
 * parameters and sends them with each step (wire.h's sample record); the last stage samples
 * with them (worker/sampler.h) and returns dsr1_sample_result records.
 *
 * Order of operations (the one vLLM and HF document): logit_bias; repetition penalty
 * (prompt and generated tokens: positive logits divided by it, negative multiplied);
 * presence and frequency penalties (generated tokens only: logit -= presence + frequency *
 * count); then, unless greedy, temperature, top_k, top_p, min_p, and one draw. temperature
 * 0 is greedy: the argmax of the penalised logits (lowest id on ties).
 * Log-probabilities are the log-softmax of the raw logits (before any of the above). */
#ifndef DSR1_SAMPLING_H
#define DSR1_SAMPLING_H

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
    /* Constrained decoding (a grammar's matcher, common/grammar/grammar.h): NULL, or one bit
     * per token, bit (id % 32) of word (id / 32) set = the token may be drawn, in
     * mask_words = (vocab + 31) / 32 words. Applied first: logit_bias and the penalties
     * change the allowed tokens only, and every filter and the draw see the others at -inf.
     * Logprobs stay those of the raw logits. Borrowed for one step (it changes every step). */
    const uint32_t *allowed;
    int mask_words;
} dsr1_sampling;

/* The defaults before generation_config.json: temperature 1, top_p 1, repetition 1,
 * everything else off. */
dsr1_sampling dsr1_sampling_defaults(void);
/* Checks every range above (and that a mask has (vocab + 31) / 32 words); the message names
 * the field and its allowed range. */
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

#endif
