/* The MLA cache of one worker: per sequence slot and per layer it owns, one row per
 * cached token of kv_lora_rank normalised latent values followed by qk_rope_head_dim
 * rotated key values (the only per-token state attention needs; R1: 576 floats).
 *
 * This first version gives each slot a contiguous region of `max_tokens` rows per layer,
 * reserved virtually and touched only as tokens arrive. The paged cache of the serving
 * issue replaces the inside of this object; callers only use dsr1_kv_cache_rows(). */
#ifndef DSR1_KV_CACHE_H
#define DSR1_KV_CACHE_H

#include "model_config.h"
#include "status.h"

typedef struct dsr1_kv_cache dsr1_kv_cache;

dsr1_status dsr1_kv_cache_create(const dsr1_model_config *cfg, int layer_begin, int layer_end,
                                 int n_slots, int max_tokens, dsr1_kv_cache **out);
void dsr1_kv_cache_destroy(dsr1_kv_cache *c);
int dsr1_kv_cache_slots(const dsr1_kv_cache *c);
int dsr1_kv_cache_capacity(const dsr1_kv_cache *c);  /* tokens per slot */
int dsr1_kv_cache_row_width(const dsr1_kv_cache *c); /* kv_lora_rank + qk_rope_head_dim */
/* Rows [0, capacity) of `slot` for absolute layer `layer` (within the cache's layers). */
float *dsr1_kv_cache_rows(dsr1_kv_cache *c, int slot, int layer);

#endif
