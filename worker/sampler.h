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
 * The parameters and result types are shared with the coordinator (common/net/sampling.h). */
#ifndef DSR1_SAMPLER_H
#define DSR1_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "sampling.h"
#include "status.h"

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
