/* The block manager of one attention rank's paged MLA cache, kept by the scheduler: which
 * cache blocks are free, which are held by running requests, and which hold a reusable
 * prompt prefix (the prefix cache).
 *
 * A block is identified by its id (0 .. n_blocks-1; the worker's cache holds its rows).
 * Once every position of a block has been computed, the scheduler commits it with the
 * tokens it holds and the block before it: committed blocks are found again by
 * dsr1_blocks_match() for a later prompt that starts with the same tokens. Matching is
 * exact: a hash of (previous block, tokens) finds candidates and the tokens and the chain
 * are compared, so a hash collision can never reuse the wrong rows. A committed block
 * whose last holder releases it stays cached (reusable) until it is needed for a new
 * allocation: the least recently released cached block is evicted first. */
#ifndef DSR1_BLOCKS_H
#define DSR1_BLOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

typedef struct dsr1_blocks dsr1_blocks;

dsr1_status dsr1_blocks_create(int n_blocks, int block_tokens, dsr1_blocks **out);
void dsr1_blocks_destroy(dsr1_blocks *b);

int dsr1_blocks_total(const dsr1_blocks *b);
int dsr1_blocks_used(const dsr1_blocks *b);      /* held by at least one request */
int dsr1_blocks_cached(const dsr1_blocks *b);    /* free but holding a reusable prefix */
int dsr1_blocks_available(const dsr1_blocks *b); /* free, cached ones included */

/* The number of leading full blocks of tokens[0..n) found in the cache, at most max_blocks.
 * With `take`, the matched ids are written to ids and a reference is taken on each. */
int dsr1_blocks_match(dsr1_blocks *b, const int32_t *tokens, int n, int max_blocks, bool take,
                      int32_t *ids);
/* A free block, evicting the least recently used cached block when no other is free; -1
 * when every block is held. */
int32_t dsr1_blocks_alloc(dsr1_blocks *b);
/* Drops one reference; at zero the block becomes free (still cached if committed). */
void dsr1_blocks_release(dsr1_blocks *b, int32_t id);
/* Registers a full block: it holds `tokens` (block_tokens ids) after block `prev` (-1 for a
 * sequence's first block, which must itself be committed otherwise). A block whose content
 * is already cached under another id is left uncommitted. */
void dsr1_blocks_commit(dsr1_blocks *b, int32_t id, int32_t prev, const int32_t *tokens);

#endif
