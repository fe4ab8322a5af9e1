/* Block manager with an exact prefix cache (see blocks.h).
 *
 * A committed block is keyed by (previous block id, that block's generation, its tokens).
 * A block's generation changes whenever it is evicted, so a cached child of an evicted
 * block can never be matched after its parent's rows were overwritten: chains stay exact
 * without tracking children. Free blocks sit in one of two lists: plain (never committed,
 * or evicted) used first, and cached (committed, ref 0) in release order, evicted oldest
 * first. */
#include "blocks.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int ref;
    bool committed;
    uint32_t gen;
    int32_t prev; /* committed: previous block (-1: first of a sequence) */
    uint32_t prev_gen;
    uint64_t hash;
    int32_t next_hash; /* bucket chain */
    int32_t lru_prev, lru_next;
} block;

struct dsr1_blocks {
    int n, bt;
    block *b;
    int32_t *tokens;  /* [n][bt] content of committed blocks */
    int32_t *buckets; /* [n_buckets] head of a chain, -1 empty */
    int n_buckets;
    int32_t *plain; /* stack of plain free blocks */
    int n_plain;
    int32_t lru_head, lru_tail; /* cached free blocks, oldest first */
    int n_cached, n_used;
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static uint64_t key_hash(const dsr1_blocks *b, int32_t prev, uint32_t prev_gen,
                         const int32_t *tokens)
{
    uint64_t h = mix((uint64_t)(uint32_t)prev, prev_gen);
    for (int i = 0; i < b->bt; i++) h = mix(h, (uint32_t)tokens[i]);
    return h;
}

dsr1_status dsr1_blocks_create(int n_blocks, int block_tokens, dsr1_blocks **out)
{
    if (n_blocks < 1 || block_tokens < 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "cache of %d blocks of %d tokens", n_blocks,
                          block_tokens);
    dsr1_blocks *b = calloc(1, sizeof(*b));
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    b->n = n_blocks;
    b->bt = block_tokens;
    b->n_buckets = n_blocks;
    b->b = calloc((size_t)n_blocks, sizeof(*b->b));
    b->tokens = malloc(sizeof(int32_t) * (size_t)n_blocks * (size_t)block_tokens);
    b->buckets = malloc(sizeof(int32_t) * (size_t)n_blocks);
    b->plain = malloc(sizeof(int32_t) * (size_t)n_blocks);
    if (!b->b || !b->tokens || !b->buckets || !b->plain) {
        dsr1_blocks_destroy(b);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d cache blocks", n_blocks);
    }
    for (int i = 0; i < n_blocks; i++) {
        b->buckets[i] = -1;
        b->plain[i] = n_blocks - 1 - i; /* block 0 is popped first */
    }
    b->n_plain = n_blocks;
    b->lru_head = b->lru_tail = -1;
    *out = b;
    return DSR1_OK;
}

void dsr1_blocks_destroy(dsr1_blocks *b)
{
    if (!b) return;
    free(b->b);
    free(b->tokens);
    free(b->buckets);
    free(b->plain);
    free(b);
}

int dsr1_blocks_total(const dsr1_blocks *b)
{
    return b->n;
}
int dsr1_blocks_used(const dsr1_blocks *b)
{
    return b->n_used;
}
int dsr1_blocks_cached(const dsr1_blocks *b)
{
    return b->n_cached;
}
int dsr1_blocks_available(const dsr1_blocks *b)
{
    return b->n_plain + b->n_cached;
}

static void lru_unlink(dsr1_blocks *b, int32_t id)
{
    block *k = &b->b[id];
    if (k->lru_prev >= 0)
        b->b[k->lru_prev].lru_next = k->lru_next;
    else
        b->lru_head = k->lru_next;
    if (k->lru_next >= 0)
        b->b[k->lru_next].lru_prev = k->lru_prev;
    else
        b->lru_tail = k->lru_prev;
    b->n_cached--;
}

static void lru_append(dsr1_blocks *b, int32_t id)
{
    block *k = &b->b[id];
    k->lru_prev = b->lru_tail;
    k->lru_next = -1;
    if (b->lru_tail >= 0)
        b->b[b->lru_tail].lru_next = id;
    else
        b->lru_head = id;
    b->lru_tail = id;
    b->n_cached++;
}

/* The committed block holding `tokens` after (prev, prev_gen), or -1. */
static int32_t find(const dsr1_blocks *b, int32_t prev, uint32_t prev_gen, const int32_t *tokens)
{
    const uint64_t h = key_hash(b, prev, prev_gen, tokens);
    for (int32_t id = b->buckets[h % (uint64_t)b->n_buckets]; id >= 0; id = b->b[id].next_hash) {
        const block *k = &b->b[id];
        if (k->hash == h && k->prev == prev && k->prev_gen == prev_gen &&
            !memcmp(b->tokens + (size_t)id * b->bt, tokens, sizeof(int32_t) * (size_t)b->bt))
            return id;
    }
    return -1;
}

static void take_ref(dsr1_blocks *b, int32_t id)
{
    if (b->b[id].ref++ == 0) {
        if (b->b[id].committed) lru_unlink(b, id);
        b->n_used++;
    }
}

int dsr1_blocks_match(dsr1_blocks *b, const int32_t *tokens, int n, int max_blocks, bool take,
                      int32_t *ids)
{
    int32_t prev = -1;
    uint32_t prev_gen = 0;
    int m = 0;
    for (; m < max_blocks && (m + 1) * b->bt <= n; m++) {
        const int32_t id = find(b, prev, prev_gen, tokens + (size_t)m * b->bt);
        if (id < 0) break;
        if (take) {
            take_ref(b, id);
            ids[m] = id;
        }
        prev = id;
        prev_gen = b->b[id].gen;
    }
    return m;
}

static void uncommit(dsr1_blocks *b, int32_t id)
{
    block *k = &b->b[id];
    int32_t *link = &b->buckets[k->hash % (uint64_t)b->n_buckets];
    while (*link != id) link = &b->b[*link].next_hash;
    *link = k->next_hash;
    k->committed = false;
    k->gen++; /* children keyed on the old generation can no longer match */
}

int32_t dsr1_blocks_alloc(dsr1_blocks *b)
{
    int32_t id;
    if (b->n_plain > 0) {
        id = b->plain[--b->n_plain];
    } else if (b->lru_head >= 0) {
        id = b->lru_head;
        lru_unlink(b, id);
        uncommit(b, id);
    } else {
        return -1;
    }
    b->b[id].ref = 1;
    b->n_used++;
    return id;
}

void dsr1_blocks_release(dsr1_blocks *b, int32_t id)
{
    block *k = &b->b[id];
    if (--k->ref > 0) return;
    b->n_used--;
    if (k->committed)
        lru_append(b, id);
    else
        b->plain[b->n_plain++] = id;
}

void dsr1_blocks_commit(dsr1_blocks *b, int32_t id, int32_t prev, const int32_t *tokens)
{
    block *k = &b->b[id];
    if (k->committed || (prev >= 0 && !b->b[prev].committed)) return;
    const uint32_t prev_gen = prev >= 0 ? b->b[prev].gen : 0;
    if (find(b, prev, prev_gen, tokens) >= 0) return;
    memcpy(b->tokens + (size_t)id * b->bt, tokens, sizeof(int32_t) * (size_t)b->bt);
    k->committed = true;
    k->prev = prev;
    k->prev_gen = prev_gen;
    k->hash = key_hash(b, prev, prev_gen, tokens);
    const uint64_t bucket = k->hash % (uint64_t)b->n_buckets;
    k->next_hash = b->buckets[bucket];
    b->buckets[bucket] = id;
}
