/* Contiguous per-slot MLA cache (see kv_cache.h). mmap'd anonymous memory so that a
 * large capacity costs only what is used. */
#include "kv_cache.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

struct dsr1_kv_cache {
    int layer_begin, layer_end, n_slots, capacity, width;
    float *mem;
    size_t bytes;
};

dsr1_status dsr1_kv_cache_create(const dsr1_model_config *cfg, int layer_begin, int layer_end,
                                 int n_slots, int max_tokens, dsr1_kv_cache **out)
{
    if (n_slots < 1 || max_tokens < 1 || layer_begin < 0 || layer_end <= layer_begin)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "kv cache: bad shape (%d slots, %d tokens, "
                          "layers [%d, %d))",
                          n_slots, max_tokens, layer_begin, layer_end);
    dsr1_kv_cache *c = calloc(1, sizeof(*c));
    if (!c) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    c->layer_begin = layer_begin;
    c->layer_end = layer_end;
    c->n_slots = n_slots;
    c->capacity = max_tokens;
    c->width = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    size_t n = (size_t)n_slots * (size_t)(layer_end - layer_begin) * (size_t)max_tokens;
    if (n > SIZE_MAX / sizeof(float) / (size_t)c->width) {
        free(c);
        return dsr1_error(DSR1_ERR_NOMEM, "kv cache too large");
    }
    c->bytes = n * (size_t)c->width * sizeof(float);
    void *m = mmap(NULL, c->bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        free(c);
        return dsr1_error(DSR1_ERR_NOMEM, "kv cache: cannot reserve %zu bytes", n);
    }
    c->mem = m;
    *out = c;
    return DSR1_OK;
}

void dsr1_kv_cache_destroy(dsr1_kv_cache *c)
{
    if (!c) return;
    munmap(c->mem, c->bytes);
    free(c);
}

int dsr1_kv_cache_slots(const dsr1_kv_cache *c)
{
    return c->n_slots;
}

int dsr1_kv_cache_capacity(const dsr1_kv_cache *c)
{
    return c->capacity;
}

int dsr1_kv_cache_row_width(const dsr1_kv_cache *c)
{
    return c->width;
}

float *dsr1_kv_cache_rows(dsr1_kv_cache *c, int slot, int layer)
{
    size_t region =
        (size_t)slot * (size_t)(c->layer_end - c->layer_begin) + (size_t)(layer - c->layer_begin);
    return c->mem + region * (size_t)c->capacity * (size_t)c->width;
}
