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
 * The executor owns the MLA cache and the scratch memory; it borrows the weights, the
 * kernel table and the thread pool, which must outlive it. */
#ifndef DSR1_FORWARD_H
#define DSR1_FORWARD_H

#include <stdint.h>

#include "comm.h"
#include "kernels.h"
#include "kv_cache.h"
#include "weights.h"

typedef enum {
    DSR1_LOGITS_NONE = 0, /* e.g. a prefill chunk that is not the prompt's last */
    DSR1_LOGITS_LAST = 1, /* the last new token's row only */
    DSR1_LOGITS_ALL = 2,  /* one row per new token (prompt logprobs, conformance dumps) */
} dsr1_logits_mode;

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
} dsr1_seq_step;

typedef struct {
    int n_seqs;
    const dsr1_seq_step *seqs;
    /* Output: the requested logit rows, vocab_size floats each, sequence after sequence
     * (0, 1 or n_tokens rows per sequence as its mode says). */
    float *logits;
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
/* Number of logit rows a batch asks for (size the output as rows * vocab_size). */
int dsr1_batch_logit_rows(const dsr1_batch *b);
/* Run one step from token ids to logits on a worker that holds every layer. Validates
 * first, and on error writes nothing to the cache: slots, block tables (ids in the pool, no
 * id twice in one table, long enough for pos + n_tokens), positions, token ids, the step's
 * tokens against max_step_tokens, and that no cache block is written by two sequences of
 * the step or written by one and read by another (a sequence's result must not depend on
 * the rest of the batch). */
dsr1_status dsr1_engine_forward(dsr1_engine *e, const dsr1_batch *b);

/* What a step exchanges with the rest of the cluster. All NULL: dsr1_engine_forward. */
typedef struct {
    /* [T][hidden] hidden states from the previous pipeline stage, T = the batch's tokens in
     * order; NULL: embed the token ids (the first stage). */
    const float *hidden_in;
    /* [T][hidden] for the next stage; NULL: this is the last stage and the batch's logits
     * are computed. */
    float *hidden_out;
    /* The expert-parallel group of this stage and the placement expert -> EP rank. Every
     * rank of the group must call dsr1_engine_step for the same step, with its own
     * sequences (n_seqs may be 0: it still serves its experts to the others). */
    dsr1_comm *ep;
    const int *expert_owner;
} dsr1_step_io;

dsr1_status dsr1_engine_step(dsr1_engine *e, const dsr1_batch *b, const dsr1_step_io *io);

#endif
