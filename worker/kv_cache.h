/* The MLA cache of one worker: a pool of fixed-size blocks. A block holds block_tokens
 * consecutive positions of one sequence, for every layer the worker owns: per layer, one row
 * per position of kv_lora_rank normalised latent values followed by qk_rope_head_dim
 * rotated key values (the only per-token state attention needs; R1: 576 values), as float32
 * (the exact mode) or as bf16 rounded to nearest even (the fast mode, half the memory: the
 * kernel table's kv_bf16 says which). Which
 * blocks a sequence uses, in which order, is its block table (forward.h); the pool itself
 * knows nothing of sequences.
 *
 * The pool is reserved virtually and its pages are touched only as rows are written, so a
 * large pool costs only what is used. */
#ifndef DSR1_KV_CACHE_H
#define DSR1_KV_CACHE_H

#include <stdbool.h>

#include "model_config.h"
#include "status.h"

typedef struct dsr1_kv_cache dsr1_kv_cache;

/* bf16: store the values as bf16 (2 bytes) instead of float32 (4). */
dsr1_status dsr1_kv_cache_create(const dsr1_model_config *cfg, int layer_begin, int layer_end,
                                 int n_blocks, int block_tokens, bool bf16, dsr1_kv_cache **out);
void dsr1_kv_cache_destroy(dsr1_kv_cache *c);
int dsr1_kv_cache_blocks(const dsr1_kv_cache *c);
int dsr1_kv_cache_block_tokens(const dsr1_kv_cache *c);
int dsr1_kv_cache_row_width(const dsr1_kv_cache *c); /* kv_lora_rank + qk_rope_head_dim */
bool dsr1_kv_cache_bf16(const dsr1_kv_cache *c);     /* values are bf16 (else float32) */
/* The first row of `block` (in [0, blocks)) for absolute layer `layer` (within the cache's
 * layers); the block's block_tokens rows follow at a stride of row_width values (float, or
 * uint16_t bf16 bits when dsr1_kv_cache_bf16). */
void *dsr1_kv_cache_block(dsr1_kv_cache *c, int layer, int block);

#endif
