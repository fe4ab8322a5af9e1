/* Sampling inside the engine's step (see forward.h), internal to the worker library.
 *
 * The logit rows of the sequences that bring a sample request never leave the engine: after
 * the LM head, each one's last row is sampled (or scores the known next token) and, with
 * prompt logprobs, every other row scores the chunk's next token. The rows are independent,
 * so they are shared out over the engine's thread pool, each thread with its own sampler
 * scratch (sampler.h); results do not depend on which thread ran what. */
#ifndef DSR1_FORWARD_SAMPLE_H
#define DSR1_FORWARD_SAMPLE_H

#include "forward.h"
#include "threadpool.h"

typedef struct dsr1__sampling dsr1__sampling;

/* Logit rows the engine computes for sequence q's sample request: every row of the chunk
 * with prompt logprobs, else the last one; 0 without a request or without logits. */
int dsr1__sample_rows(const dsr1_seq_step *q);

/* One sampler per thread of pool (NULL: one), made when the engine first samples. */
dsr1_status dsr1__sampling_create(int vocab, dsr1_pool *pool, dsr1__sampling **out);
void dsr1__sampling_destroy(dsr1__sampling *s);

/* Room for n logit rows, owned by s and kept for later steps (grown when too small). */
dsr1_status dsr1__sampling_rows(dsr1__sampling *s, int n, float **rows);

/* Samples a checked batch: rows holds dsr1__sample_rows(q) rows of each sequence, one
 * sequence after another. Fills b->samples and b->row_logprobs; a row that cannot be
 * sampled (NaN or +inf logits) gives a result with token DSR1_SAMPLE_FAILED. */
dsr1_status dsr1__sampling_run(dsr1__sampling *s, const dsr1_batch *b, const float *rows);

#endif
