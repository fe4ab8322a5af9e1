/* The batched forward pass of one worker: the model executor.
 *
 * One call runs one step for several sequences at once. Each sequence brings its own new
 * tokens (a prefill chunk or a single decode token), where its cache lives, and the
 * position of its first new token — exactly what a continuous-batching scheduler hands a
 * worker. Sequences never see each other: each token's result is the same alone or in any
 * batch (every kernel computes a row independently of the others).
 *
 * The cache is a pool of blocks of block_tokens positions (kv_cache.h). A paged engine
 * (dsr1_engine_create_paged) is just the pool: every sequence brings its block table, chosen
 * by the scheduler; blocks may be shared read-only between sequences (a common prompt
 * prefix). A slot engine (dsr1_engine_create) gives each of its slots a fixed region of the
 * pool, used by the sequences that bring no block table.
 *
 * A sequence may also bring a sampling request (dsr1_seq_sample): the engine that computes
 * its logits then draws its next token there (sampler.h, a pure function of the
 * request, the row, the history and the step index) and returns the id, with logprobs
 * when asked, instead of the logit rows. On a worker grid this runs on the last pipeline
 * stage, so that only ids travel back to the coordinator.
 *
 * The cache's values are float32, or bf16 when the kernel table has kv_bf16 (the fast mode,
 * kernels.h): the kernel table decides, at engine creation.
 *
 * The executor owns the MLA cache and the scratch memory (and the samplers); it borrows the
 * weights, the kernel table and the thread pool, which must outlive it. */
#ifndef DSR1_FORWARD_H
#define DSR1_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "comm.h"
#include "kernels.h"
#include "kv_cache.h"
#include "moe.h"
#include "sampler.h"
#include "weights.h"

typedef enum {
    DSR1_LOGITS_NONE = 0, /* e.g. a prefill chunk that is not the prompt's last */
    DSR1_LOGITS_LAST = 1, /* the last new token's row only */
    DSR1_LOGITS_ALL = 2,  /* one row per new token (prompt logprobs, conformance dumps) */
} dsr1_logits_mode;

/* What to do with a sequence's logit rows in the engine instead of returning them. */
typedef struct {
    dsr1_sampling params;    /* common/net/sampling.h; bias arrays borrowed for the step */
    uint64_t step;           /* index of the token being drawn, 0 for the first (RNG counter) */
    const int32_t *history;  /* prompt then generated ids so far, for the penalties */
    int n_prompt, n_history; /* history may be NULL/0 when no penalty is on */
    /* Return the drawn token's logprob and params.top_logprobs alternatives (without it the
     * result holds the token only: logprob 0, n_top 0, and the sampler skips its pass over
     * the vocabulary for the log-sum-exp). */
    bool logprobs;
    /* With DSR1_LOGITS_ALL: the logprob (and params.top_logprobs alternatives) of each next
     * token inside the chunk: row i scores tokens[i + 1], for rows 0 .. n_tokens - 2. */
    bool prompt_logprobs;
    /* NULL: draw the token after the chunk from its last row. Else that token is already
     * known (a prompt chunk before the last one): the last row scores *next instead, like a
     * prompt logprob (its logprob and params.top_logprobs alternatives), and nothing is
     * drawn. */
    const int32_t *next;
} dsr1_seq_sample;

typedef struct {
    int slot;              /* cache slot of the sequence (slot mode) */
    int pos;               /* position of tokens[0]; positions [0, pos) are already cached */
    int n_tokens;          /* >= 1 */
    const int32_t *tokens; /* n_tokens ids */
    dsr1_logits_mode logits;
    /* Paged cache: the sequence's block table. blocks[i] holds positions [i*B, (i+1)*B) (B =
     * the engine's block_tokens) and must cover pos + n_tokens positions; NULL: the slot's
     * fixed region (slot mode). */
    const int32_t *blocks;
    int n_blocks;
    /* With a block table, the attention data-parallel rank of the sequence in a worker grid
     * (0 .. ep-1), read by the grid; slot is then ignored. */
    int rank;
    /* NULL: return the logit rows. Else the rows stay in the engine: the last one is sampled
     * (or scores `next`), and with prompt_logprobs the others score the chunk's tokens.
     * Ignored with DSR1_LOGITS_NONE. */
    const dsr1_seq_sample *sample;
} dsr1_seq_step;

typedef struct {
    int n_seqs;
    const dsr1_seq_step *seqs;
    /* Outputs, each sequence after sequence; a pointer may be NULL when its count is 0.
     * logits: the rows of the sequences without a sample request, vocab_size floats each
     * (0, 1 or n_tokens rows per sequence as its mode says); dsr1_batch_logit_rows rows.
     * samples: one per sequence with a sample request and logits: the token drawn from (or
     * `next` scored by) its last row; dsr1_batch_samples entries. A row with a NaN or +inf
     * logit gives token DSR1_SAMPLE_FAILED there (that sequence fails, the step does not).
     * row_logprobs: n_tokens - 1 per sequence with prompt_logprobs, for rows 0 ..
     * n_tokens - 2 of its chunk (token = the chunk's next id); dsr1_batch_row_logprobs. */
    float *logits;
    dsr1_sample_result *samples;
    dsr1_sample_result *row_logprobs;
} dsr1_batch;

typedef struct dsr1_engine dsr1_engine;

/* Slot mode: n_slots sequences of up to max_tokens tokens. The pool has one block of
 * max_tokens tokens per slot (slot q owns block q); sequences with a block table may use the
 * same pool. */
dsr1_status dsr1_engine_create(const dsr1_weights *w, const dsr1_kernels *k, dsr1_pool *pool,
                               int n_slots, int max_tokens, dsr1_engine **out);
/* Paged: a pool of n_blocks blocks of block_tokens tokens per layer; every sequence brings a
 * block table, any table of the pool's blocks is usable. max_step_tokens bounds the tokens
 * of one step (the scratch memory of a step grows with them); the longest sequence is
 * n_blocks * block_tokens tokens. */
dsr1_status dsr1_engine_create_paged(const dsr1_weights *w, const dsr1_kernels *k, dsr1_pool *pool,
                                     int n_blocks, int block_tokens, int max_step_tokens,
                                     dsr1_engine **out);
void dsr1_engine_destroy(dsr1_engine *e);
int dsr1_engine_block_tokens(const dsr1_engine *e); /* slot mode: max_tokens */
int dsr1_engine_blocks(const dsr1_engine *e);       /* slot mode: n_slots */
/* Logit rows a sequence's mode asks for: 0, 1 or n_tokens (returned, or kept to sample). */
int dsr1_seq_logit_rows(const dsr1_seq_step *q);
/* Sizes of a batch's outputs: logit rows returned (size logits as rows * vocab_size),
 * sample results, row logprobs. */
int dsr1_batch_logit_rows(const dsr1_batch *b);
int dsr1_batch_samples(const dsr1_batch *b);
int dsr1_batch_row_logprobs(const dsr1_batch *b);
/* Checks the sample request of sequence s of a batch (s only names it in messages), as
 * dsr1_engine_forward does: parameters (dsr1_sampling_validate), the history (when a
 * penalty reads it), the chunk's tokens (with prompt logprobs) and `next` inside the
 * vocabulary, prompt logprobs only with DSR1_LOGITS_ALL. The grid checks requests with it
 * before they travel. */
dsr1_status dsr1_seq_sample_check(const dsr1_seq_step *q, int s, int vocab);
/* Run one step from token ids to logits (and samples) on a worker that holds every layer.
 * Validates first, and on error writes nothing to the cache: slots, block tables (ids in the
 * pool, no id twice in one table, long enough for pos + n_tokens), positions, token ids,
 * the step's tokens against max_step_tokens, that no cache block is written by two
 * sequences of the step or written by one and read by another (a sequence's result must not
 * depend on the rest of the batch), and sample requests (parameters, history and `next` ids
 * in the vocabulary, prompt_logprobs only with DSR1_LOGITS_ALL). */
dsr1_status dsr1_engine_forward(dsr1_engine *e, const dsr1_batch *b);

/* What a step exchanges with the rest of the cluster. All NULL: dsr1_engine_forward. */
typedef struct {
    /* [T][hidden] hidden states from the previous pipeline stage, T = the batch's tokens in
     * order; NULL: embed the token ids (the first stage). */
    const float *hidden_in;
    /* [T][hidden] for the next stage; NULL: this is the last stage and the batch's logits
     * (and samples) are computed. */
    float *hidden_out;
    /* The expert-parallel group of this stage (its live ranks) and where the experts are
     * (moe.h). Every rank of the group must call dsr1_engine_step for the same step, with
     * its own sequences (n_seqs may be 0: it still serves its experts to the others). */
    dsr1_comm *ep;
    const dsr1_moe_placement *placement;
} dsr1_step_io;

dsr1_status dsr1_engine_step(dsr1_engine *e, const dsr1_batch *b, const dsr1_step_io *io);

#endif
