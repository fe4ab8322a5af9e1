/* The block pool of the MLA cache (see kv_cache.h). One anonymous mapping, block-major
 * (block, then layer, then row), so that a block's rows of every layer are contiguous and
 * untouched blocks cost no memory. */
#include "kv_cache.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

struct dsr1_kv_cache {
    int layer_begin, layer_end, n_blocks, block_tokens, width;
    size_t elem; /* bytes per value: 4 (float32) or 2 (bf16) */
    char *mem;
    size_t bytes;
};

dsr1_status dsr1_kv_cache_create(const dsr1_model_config *cfg, int layer_begin, int layer_end,
                                 int n_blocks, int block_tokens, bool bf16, dsr1_kv_cache **out)
{
    if (n_blocks < 1 || block_tokens < 1 || layer_begin < 0 || layer_end <= layer_begin)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "kv cache: bad shape (%d blocks of %d tokens, layers [%d, %d))", n_blocks,
                          block_tokens, layer_begin, layer_end);
    const int width = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    /* each factor is below 2^31, so blocks x layers cannot overflow; the rest is checked */
    const size_t regions = (size_t)n_blocks * (size_t)(layer_end - layer_begin);
    const size_t elem = bf16 ? sizeof(uint16_t) : sizeof(float);
    if (regions > SIZE_MAX / elem / (size_t)width / (size_t)block_tokens)
        return dsr1_error(DSR1_ERR_NOMEM, "kv cache of %d blocks of %d tokens is too large",
                          n_blocks, block_tokens);
    const size_t bytes = regions * (size_t)block_tokens * (size_t)width * elem;
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED)
        return dsr1_error(DSR1_ERR_NOMEM, "kv cache: cannot reserve %zu bytes", bytes);
    dsr1_kv_cache *c = calloc(1, sizeof(*c));
    if (!c) {
        munmap(m, bytes);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    *c = (dsr1_kv_cache){layer_begin, layer_end, n_blocks, block_tokens, width, elem, m, bytes};
    *out = c;
    return DSR1_OK;
}

void dsr1_kv_cache_destroy(dsr1_kv_cache *c)
{
    if (!c) return;
    munmap(c->mem, c->bytes);
    free(c);
}

int dsr1_kv_cache_blocks(const dsr1_kv_cache *c)
{
    return c->n_blocks;
}

int dsr1_kv_cache_block_tokens(const dsr1_kv_cache *c)
{
    return c->block_tokens;
}

int dsr1_kv_cache_row_width(const dsr1_kv_cache *c)
{
    return c->width;
}

bool dsr1_kv_cache_bf16(const dsr1_kv_cache *c)
{
    return c->elem == sizeof(uint16_t);
}

void *dsr1_kv_cache_block(dsr1_kv_cache *c, int layer, int block)
{
    const size_t region =
        (size_t)block * (size_t)(c->layer_end - c->layer_begin) + (size_t)(layer - c->layer_begin);
    return c->mem + region * (size_t)c->block_tokens * (size_t)c->width * c->elem;
}
