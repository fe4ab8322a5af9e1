/* The DeepSeek-V3/R1 forward pass (MODEL.md) over a batch of sequences (see forward.h).
 *
 * All matrix products run on the whole batch's tokens at once; only attention is per
 * sequence. Attention is the weight-absorbed MLA form: the query of head h is mapped into
 * the latent space (q' = Wk_h^T q_nope), scored against the compressed cache directly,
 * and the attention-weighted latent vector is expanded with Wv_h only at the end. */
#include "forward.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "forward_sample.h"
#include "log.h"
#include "moe.h"
#include "numeric.h"
#include "rope.h"

struct dsr1_engine {
    const dsr1_weights *w;
    const dsr1_kernels *k;
    dsr1_pool *pool;
    dsr1_kv_cache *cache;
    dsr1_rope rope;
    int max_step_tokens;
    /* slot mode: slot q owns block slot_block[q] = q; n_slots 0: paged */
    int n_slots;
    int32_t *slot_block;
    /* validation marks per block (see validate): seen by the table walk with this stamp;
     * written in the step with this stamp, by sequence writer[] */
    uint64_t stamp, *seen, *written;
    int *writer;
    dsr1__sampling *sampling; /* made by the first step that samples */
};

static dsr1_status engine_new(const dsr1_weights *w, const dsr1_kernels *k, dsr1_pool *pool,
                              int n_blocks, int block_tokens, int max_step_tokens, int n_slots,
                              dsr1_engine **out)
{
    dsr1_engine *e = calloc(1, sizeof(*e));
    if (!e) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    e->w = w;
    e->k = k;
    e->pool = pool;
    e->max_step_tokens = max_step_tokens;
    e->n_slots = n_slots;
    dsr1_status st = dsr1_rope_init(&e->rope, &w->cfg);
    if (st == DSR1_OK)
        st = dsr1_kv_cache_create(&w->cfg, w->layer_begin, w->layer_end, n_blocks, block_tokens,
                                  k->kv_bf16 && k->mla_attention_bf16, &e->cache);
    if (st == DSR1_OK && max_step_tokens < 1)
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "engine: max_step_tokens %d", max_step_tokens);
    if (st == DSR1_OK) {
        e->seen = calloc((size_t)n_blocks, sizeof(*e->seen));
        e->written = calloc((size_t)n_blocks, sizeof(*e->written));
        e->writer = calloc((size_t)n_blocks, sizeof(*e->writer));
        e->slot_block = malloc(sizeof(int32_t) * ((size_t)n_slots + 1));
        if (!e->seen || !e->written || !e->writer || !e->slot_block)
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d cache blocks", n_blocks);
    }
    if (st != DSR1_OK) {
        dsr1_engine_destroy(e);
        return st;
    }
    for (int q = 0; q < n_slots; q++) e->slot_block[q] = q;
    *out = e;
    return DSR1_OK;
}

dsr1_status dsr1_engine_create(const dsr1_weights *w, const dsr1_kernels *k, dsr1_pool *pool,
                               int n_slots, int max_tokens, dsr1_engine **out)
{
    if (n_slots < 1 || max_tokens < 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "engine: %d cache slots of %d tokens", n_slots,
                          max_tokens);
    /* every slot's whole capacity in one step, at most */
    const int64_t step = (int64_t)n_slots * max_tokens;
    return engine_new(w, k, pool, n_slots, max_tokens, step < INT_MAX ? (int)step : INT_MAX,
                      n_slots, out);
}

dsr1_status dsr1_engine_create_paged(const dsr1_weights *w, const dsr1_kernels *k, dsr1_pool *pool,
                                     int n_blocks, int block_tokens, int max_step_tokens,
                                     dsr1_engine **out)
{
    return engine_new(w, k, pool, n_blocks, block_tokens, max_step_tokens, 0, out);
}

void dsr1_engine_destroy(dsr1_engine *e)
{
    if (!e) return;
    dsr1__sampling_destroy(e->sampling);
    dsr1_kv_cache_destroy(e->cache);
    dsr1_rope_free(&e->rope);
    free(e->seen);
    free(e->written);
    free(e->writer);
    free(e->slot_block);
    free(e);
}

int dsr1_engine_block_tokens(const dsr1_engine *e)
{
    return dsr1_kv_cache_block_tokens(e->cache);
}

int dsr1_engine_blocks(const dsr1_engine *e)
{
    return dsr1_kv_cache_blocks(e->cache);
}

int dsr1_seq_logit_rows(const dsr1_seq_step *q)
{
    return q->logits == DSR1_LOGITS_ALL ? q->n_tokens : q->logits == DSR1_LOGITS_LAST;
}

int dsr1_batch_logit_rows(const dsr1_batch *b)
{
    int rows = 0;
    for (int s = 0; s < b->n_seqs; s++)
        if (!b->seqs[s].sample) rows += dsr1_seq_logit_rows(&b->seqs[s]);
    return rows;
}

/* The block table a sequence uses: its own, or its slot's block (slot mode). */
static const int32_t *seq_table(const dsr1_engine *e, const dsr1_seq_step *q)
{
    return q->blocks ? q->blocks : e->slot_block + q->slot;
}

/* How many blocks of its table a sequence's step reads: those of positions [0, pos + n). */
static int seq_blocks(const dsr1_seq_step *q, int block_tokens)
{
    return (q->pos + q->n_tokens - 1) / block_tokens + 1;
}

/* Sequence s's slot, or its block table: ids in the pool, none twice, long enough. */
static dsr1_status check_table(dsr1_engine *e, int s, const dsr1_seq_step *q)
{
    const int bt = dsr1_kv_cache_block_tokens(e->cache), pool = dsr1_kv_cache_blocks(e->cache);
    const int64_t end = (int64_t)q->pos + q->n_tokens;
    if (!q->blocks) {
        if (!e->n_slots)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "sequence %d has no block table, and this engine's cache is paged",
                              s);
        if (q->slot < 0 || q->slot >= e->n_slots)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: cache slot %d outside [0, %d)", s,
                              q->slot, e->n_slots);
        if (end > bt)
            return dsr1_error(DSR1_ERR_RANGE,
                              "sequence %d: positions [%d, %lld) do not fit the cache "
                              "capacity of %d tokens",
                              s, q->pos, (long long)end, bt);
        return DSR1_OK;
    }
    if ((int64_t)q->n_blocks * bt < end)
        return dsr1_error(DSR1_ERR_RANGE,
                          "sequence %d: positions [%d, %lld) need %lld blocks of %d tokens, its "
                          "block table has %d",
                          s, q->pos, (long long)end, (long long)((end + bt - 1) / bt), bt,
                          q->n_blocks);
    const uint64_t stamp = ++e->stamp;
    for (int i = 0; i < q->n_blocks; i++) {
        const int32_t id = q->blocks[i];
        if (id < 0 || id >= pool)
            return dsr1_error(DSR1_ERR_RANGE,
                              "sequence %d: block table entry %d is block %d, outside the "
                              "pool [0, %d)",
                              s, i, id, pool);
        if (e->seen[id] == stamp)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "sequence %d: block %d appears twice in its block table", s, id);
        e->seen[id] = stamp;
    }
    return DSR1_OK;
}

/* A sequence writes the blocks of its positions [pos, pos + n_tokens) and only reads the
 * blocks before: no block may be written by two sequences of the step, nor read by one while
 * another writes it (its result would depend on the batch). Tables already checked. */
static dsr1_status check_writes(dsr1_engine *e, const dsr1_batch *b)
{
    const int bt = dsr1_kv_cache_block_tokens(e->cache);
    const uint64_t stamp = ++e->stamp;
    for (int s = 0; s < b->n_seqs; s++) {
        const dsr1_seq_step *q = &b->seqs[s];
        const int32_t *tab = seq_table(e, q);
        for (int i = q->pos / bt; i < seq_blocks(q, bt); i++) {
            if (e->written[tab[i]] == stamp)
                return dsr1_error(DSR1_ERR_INVALID_ARG,
                                  "sequences %d and %d both write cache block %d",
                                  e->writer[tab[i]], s, tab[i]);
            e->written[tab[i]] = stamp;
            e->writer[tab[i]] = s;
        }
    }
    for (int s = 0; s < b->n_seqs; s++) {
        const dsr1_seq_step *q = &b->seqs[s];
        const int32_t *tab = seq_table(e, q);
        for (int i = 0; i < q->pos / bt; i++)
            if (e->written[tab[i]] == stamp)
                return dsr1_error(DSR1_ERR_INVALID_ARG,
                                  "sequence %d reads cache block %d, which sequence %d writes in "
                                  "the same step",
                                  s, tab[i], e->writer[tab[i]]);
    }
    return DSR1_OK;
}

static dsr1_status validate(dsr1_engine *e, const dsr1_batch *b, const dsr1_step_io *io)
{
    const dsr1_weights *w = e->w;
    if (b->n_seqs < 0 || (b->n_seqs > 0 && !b->seqs) || (b->n_seqs == 0 && !io->ep))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "forward: empty batch");
    if (!io->hidden_in && w->layer_begin != 0 && b->n_seqs > 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "forward: this worker holds layers [%d, %d) and "
                          "needs the previous stage's hidden states",
                          w->layer_begin, w->layer_end);
    if (!io->hidden_out && w->layer_end != w->cfg.num_hidden_layers && b->n_seqs > 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "forward: this worker holds layers [%d, %d), not "
                          "the LM head; it must pass hidden states on",
                          w->layer_begin, w->layer_end);
    if (io->ep && !io->placement)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "forward: expert parallelism without a placement");
    int64_t T = 0;
    dsr1_status st;
    for (int s = 0; s < b->n_seqs; s++) {
        const dsr1_seq_step *q = &b->seqs[s];
        if (q->n_tokens < 1 || q->pos < 0 || q->pos > INT_MAX - q->n_tokens)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: %d tokens at position %d", s,
                              q->n_tokens, q->pos);
        if ((st = check_table(e, s, q)) != DSR1_OK) return st;
        if ((st = dsr1_seq_sample_check(q, s, w->cfg.vocab_size)) != DSR1_OK) return st;
        T += q->n_tokens;
        if (io->hidden_in) continue; /* later stages never see token ids */
        for (int i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= w->cfg.vocab_size)
                return dsr1_error(DSR1_ERR_RANGE,
                                  "sequence %d: token id %d at index %d is outside "
                                  "the vocabulary [0, %d)",
                                  s, q->tokens[i], i, w->cfg.vocab_size);
    }
    if (!io->hidden_out &&
        ((!b->logits && dsr1_batch_logit_rows(b)) || (!b->samples && dsr1_batch_samples(b)) ||
         (!b->row_logprobs && dsr1_batch_row_logprobs(b))))
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "forward: the batch has no room for its logit rows, samples or row "
                          "logprobs");
    if (T > e->max_step_tokens)
        return dsr1_error(DSR1_ERR_RANGE, "a step of %lld tokens; this engine takes at most %d",
                          (long long)T, e->max_step_tokens);
    return check_writes(e, b);
}

/* Scratch of one step, sized for T tokens. */
typedef struct {
    float *h, *x, *qa, *q, *kv, *qpe, *qabs, *oc, *ov, *y, *shared, *ffn;
    int *ids;
    float *rw;
    int *tok_seq, *tok_pos; /* per token: its sequence and position */
    const void **kv_blocks; /* one sequence's blocks in one layer, for mla_attention */
} step_buf;

static void step_free(step_buf *s)
{
    free(s->h);
    free(s->x);
    free(s->qa);
    free(s->q);
    free(s->kv);
    free(s->qpe);
    free(s->qabs);
    free(s->oc);
    free(s->ov);
    free(s->y);
    free(s->shared);
    free(s->ffn);
    free(s->ids);
    free(s->rw);
    free(s->tok_seq);
    free(s->tok_pos);
    free(s->kv_blocks);
}

/* max_blocks: the most blocks one sequence of the step reads */
static dsr1_status step_alloc(step_buf *s, const dsr1_model_config *c, int T, int max_blocks)
{
    const size_t t = T > 0 ? (size_t)T : 1,
                 /* a rank with no tokens still takes part */ nh = (size_t)c->num_attention_heads;
    const size_t inter =
        (size_t)(c->intermediate_size > c->moe_intermediate_size * c->n_shared_experts
                     ? c->intermediate_size
                     : c->moe_intermediate_size * c->n_shared_experts);
    memset(s, 0, sizeof(*s));
    s->h = malloc(sizeof(float) * t * c->hidden_size);
    s->x = malloc(sizeof(float) * t * c->hidden_size);
    s->qa = malloc(sizeof(float) * t * (c->q_lora_rank > 0 ? c->q_lora_rank : 1));
    s->q = malloc(sizeof(float) * t * nh * dsr1_cfg_qk_head_dim(c));
    s->kv = malloc(sizeof(float) * t * (c->kv_lora_rank + c->qk_rope_head_dim));
    s->qpe = malloc(sizeof(float) * t * nh * c->qk_rope_head_dim);
    s->qabs = malloc(sizeof(float) * t * nh * c->kv_lora_rank);
    s->oc = malloc(sizeof(float) * t * nh * c->kv_lora_rank);
    s->ov = malloc(sizeof(float) * t * nh * c->v_head_dim);
    s->y = malloc(sizeof(float) * t * c->hidden_size);
    s->shared = malloc(sizeof(float) * t * c->hidden_size);
    s->ffn = malloc(sizeof(float) * 2 * t * inter);
    s->ids = malloc(sizeof(int) * t * c->num_experts_per_tok);
    s->rw = malloc(sizeof(float) * t * c->num_experts_per_tok);
    s->tok_seq = malloc(sizeof(int) * t);
    s->tok_pos = malloc(sizeof(int) * t);
    s->kv_blocks = malloc(sizeof(void *) * ((size_t)max_blocks + 1));
    if (!s->h || !s->x || !s->qa || !s->q || !s->kv || !s->qpe || !s->qabs || !s->oc || !s->ov ||
        !s->y || !s->shared || !s->ffn || !s->ids || !s->rw || !s->tok_seq || !s->tok_pos ||
        !s->kv_blocks) {
        step_free(s);
        return dsr1_error(DSR1_ERR_NOMEM, "forward: out of memory for %d tokens", T);
    }
    return DSR1_OK;
}

static void attention(dsr1_engine *e, const dsr1_batch *b, int l, step_buf *s, int T)
{
    const dsr1_model_config *c = &e->w->cfg;
    const dsr1_layer_weights *L = &e->w->layers[l];
    const dsr1_kernels *k = e->k;
    const int d = c->hidden_size, nh = c->num_attention_heads, kvl = c->kv_lora_rank;
    const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, vd = c->v_head_dim;
    const int qk = nope + rope, kvw = kvl + rope, bt = dsr1_kv_cache_block_tokens(e->cache);

    k->rmsnorm(e->pool, s->h, d, L->attn_norm, d, T, c->rms_norm_eps, s->x, d);
    if (c->q_lora_rank > 0) {
        k->linear(e->pool, &L->q_a, 0, c->q_lora_rank, s->x, d, T, s->qa, c->q_lora_rank);
        k->rmsnorm(e->pool, s->qa, c->q_lora_rank, L->q_a_norm, c->q_lora_rank, T, c->rms_norm_eps,
                   s->qa, c->q_lora_rank);
        k->linear(e->pool, &L->q_b, 0, nh * qk, s->qa, c->q_lora_rank, T, s->q, nh * qk);
    } else {
        k->linear(e->pool, &L->q, 0, nh * qk, s->x, d, T, s->q, nh * qk);
    }
    k->linear(e->pool, &L->kv_a, 0, kvw, s->x, d, T, s->kv, kvw);
    k->rmsnorm(e->pool, s->kv, kvw, L->kv_a_norm, kvl, T, c->rms_norm_eps, s->kv, kvw);
    for (int t = 0; t < T; t++) {
        const int pos = s->tok_pos[t];
        float *kvt = s->kv + (size_t)t * kvw;
        dsr1_rope_apply(&e->rope, kvt + kvl, pos);
        const int32_t *tab = seq_table(e, &b->seqs[s->tok_seq[t]]);
        void *blk = dsr1_kv_cache_block(e->cache, l, tab[pos / bt]);
        if (dsr1_kv_cache_bf16(e->cache)) { /* the fast mode: rounded to nearest even */
            uint16_t *row = (uint16_t *)blk + (size_t)(pos % bt) * kvw;
            for (int v = 0; v < kvw; v++) row[v] = dsr1_f32_to_bf16(kvt[v]);
        } else {
            memcpy((float *)blk + (size_t)(pos % bt) * kvw, kvt, sizeof(float) * kvw);
        }
        for (int h = 0; h < nh; h++) {
            float *qpe = s->qpe + ((size_t)t * nh + h) * rope;
            memcpy(qpe, s->q + (size_t)t * nh * qk + (size_t)h * qk + nope, sizeof(float) * rope);
            dsr1_rope_apply(&e->rope, qpe, pos);
        }
    }
    /* absorb: q'_h = Wk_h^T q_nope_h, Wk_h = kv_b rows [h (nope + v), h (nope + v) + nope) */
    for (int h = 0; h < nh; h++)
        k->linear_t(e->pool, &L->kv_b, h * (nope + vd), h * (nope + vd) + nope,
                    s->q + (size_t)h * qk, nh * qk, T, s->qabs + (size_t)h * kvl, nh * kvl);
    for (int q = 0, t0 = 0; q < b->n_seqs; t0 += b->seqs[q].n_tokens, q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        const int32_t *tab = seq_table(e, sq);
        for (int i = 0; i < seq_blocks(sq, bt); i++)
            s->kv_blocks[i] = dsr1_kv_cache_block(e->cache, l, tab[i]);
        if (dsr1_kv_cache_bf16(e->cache))
            k->mla_attention_bf16(e->pool, sq->n_tokens, nh, kvl, rope,
                                  s->qabs + (size_t)t0 * nh * kvl, s->qpe + (size_t)t0 * nh * rope,
                                  (const uint16_t *const *)s->kv_blocks, bt, kvw, sq->pos,
                                  e->rope.softmax_scale, s->oc + (size_t)t0 * nh * kvl);
        else
            k->mla_attention(e->pool, sq->n_tokens, nh, kvl, rope, s->qabs + (size_t)t0 * nh * kvl,
                             s->qpe + (size_t)t0 * nh * rope, (const float *const *)s->kv_blocks,
                             bt, kvw, sq->pos, e->rope.softmax_scale,
                             s->oc + (size_t)t0 * nh * kvl);
    }
    /* expand: o_h = Wv_h (attention-weighted latent), Wv_h = the v rows after Wk_h */
    for (int h = 0; h < nh; h++)
        k->linear(e->pool, &L->kv_b, h * (nope + vd) + nope, (h + 1) * (nope + vd),
                  s->oc + (size_t)h * kvl, nh * kvl, T, s->ov + (size_t)h * vd, nh * vd);
    k->linear(e->pool, &L->o, 0, d, s->ov, nh * vd, T, s->y, d);
    for (size_t i = 0; i < (size_t)T * d; i++) s->h[i] += s->y[i];
}

static dsr1_status ffn(dsr1_engine *e, const dsr1_step_io *io, int l, step_buf *s, int T)
{
    const dsr1_model_config *c = &e->w->cfg;
    const dsr1_layer_weights *L = &e->w->layers[l];
    const int d = c->hidden_size;
    dsr1_status st;
    e->k->rmsnorm(e->pool, s->h, d, L->ffn_norm, d, T, c->rms_norm_eps, s->x, d);
    if (!L->moe) {
        dsr1_ffn_forward(e->k, e->pool, &L->dense, s->x, T, s->y, s->ffn);
    } else {
        if ((st = dsr1_moe_route(e->k, e->pool, c, L, s->x, T, s->ids, s->rw)) != DSR1_OK)
            return st;
        memset(s->y, 0, sizeof(float) * (size_t)T * d);
        if (io->ep && (io->ep->size > 1 || io->placement->ranks > 1))
            st = dsr1_moe_experts_ep(e->k, e->pool, c, L, e->w->expert_owned, io->placement, io->ep,
                                     s->x, T, s->ids, s->rw, s->y);
        else
            st = dsr1_moe_experts(e->k, e->pool, c, L, e->w->expert_owned, s->x, T, s->ids, s->rw,
                                  s->y);
        if (st != DSR1_OK) return st;
        /* shared expert, added after the routed sum as in the reference */
        dsr1_ffn_forward(e->k, e->pool, &L->shared, s->x, T, s->shared, s->ffn);
        for (size_t i = 0; i < (size_t)T * d; i++) s->y[i] += s->shared[i];
    }
    for (size_t i = 0; i < (size_t)T * d; i++) s->h[i] += s->y[i];
    return DSR1_OK;
}

/* Copies rows [from, n_tokens) of sequence q (its tokens start at t0) into x at *rows. */
static void gather_rows(const dsr1_seq_step *q, int t0, int from, const float *h, float *x, int d,
                        int *rows)
{
    for (int i = from; i < q->n_tokens; i++, (*rows)++)
        memcpy(x + (size_t)*rows * d, h + (size_t)(t0 + i) * d, sizeof(float) * d);
}

/* Final norm and LM head for the rows that want logits: first the rows returned in
 * b->logits, then those of the sequences sampled here, which go to the sampler. */
static dsr1_status head(dsr1_engine *e, const dsr1_batch *b, step_buf *s)
{
    const dsr1_model_config *c = &e->w->cfg;
    const int d = c->hidden_size, V = c->vocab_size;
    int out = 0;
    for (int q = 0, t0 = 0; q < b->n_seqs; t0 += b->seqs[q].n_tokens, q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        if (!sq->sample)
            gather_rows(sq, t0, sq->n_tokens - dsr1_seq_logit_rows(sq), s->h, s->x, d, &out);
    }
    int rows = out;
    for (int q = 0, t0 = 0; q < b->n_seqs; t0 += b->seqs[q].n_tokens, q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        gather_rows(sq, t0, sq->n_tokens - dsr1__sample_rows(sq), s->h, s->x, d, &rows);
    }
    if (rows == 0) return DSR1_OK;
    e->k->rmsnorm(e->pool, s->x, d, e->w->final_norm, d, rows, c->rms_norm_eps, s->x, d);
    if (out > 0) e->k->linear(e->pool, &e->w->head, 0, V, s->x, d, out, b->logits, V);
    if (rows == out) return DSR1_OK;
    dsr1_status st = DSR1_OK;
    float *sampled;
    if (!e->sampling) st = dsr1__sampling_create(V, e->pool, &e->sampling);
    if (st == DSR1_OK) st = dsr1__sampling_rows(e->sampling, rows - out, &sampled);
    if (st != DSR1_OK) return st;
    e->k->linear(e->pool, &e->w->head, 0, V, s->x + (size_t)out * d, d, rows - out, sampled, V);
    return dsr1__sampling_run(e->sampling, b, sampled);
}

dsr1_status dsr1_engine_step(dsr1_engine *e, const dsr1_batch *b, const dsr1_step_io *io)
{
    static const dsr1_step_io local = {0};
    if (!io) io = &local;
    dsr1_status st = validate(e, b, io);
    if (st != DSR1_OK) return st;
    const dsr1_model_config *c = &e->w->cfg;
    const int d = c->hidden_size;
    const int bt = dsr1_kv_cache_block_tokens(e->cache);
    int T = 0, max_blocks = 0;
    for (int q = 0; q < b->n_seqs; q++) {
        const int nb = seq_blocks(&b->seqs[q], bt);
        T += b->seqs[q].n_tokens;
        max_blocks = nb > max_blocks ? nb : max_blocks;
    }
    step_buf s;
    if ((st = step_alloc(&s, c, T, max_blocks)) != DSR1_OK) return st;
    for (int q = 0, t = 0; q < b->n_seqs; q++)
        for (int i = 0; i < b->seqs[q].n_tokens; i++, t++) {
            s.tok_seq[t] = q;
            s.tok_pos[t] = b->seqs[q].pos + i;
            if (!io->hidden_in)
                dsr1_linear_dequant_row(&e->w->embed, b->seqs[q].tokens[i], s.h + (size_t)t * d);
        }
    if (io->hidden_in) memcpy(s.h, io->hidden_in, sizeof(float) * (size_t)T * d);
    for (int l = e->w->layer_begin; l < e->w->layer_end; l++) {
        if (T > 0) attention(e, b, l, &s, T);
        if ((st = ffn(e, io, l, &s, T)) != DSR1_OK) goto out;
    }
    if (io->hidden_out)
        memcpy(io->hidden_out, s.h, sizeof(float) * (size_t)T * d);
    else
        st = head(e, b, &s);
out:
    step_free(&s);
    return st;
}

dsr1_status dsr1_engine_forward(dsr1_engine *e, const dsr1_batch *b)
{
    return dsr1_engine_step(e, b, NULL);
}
