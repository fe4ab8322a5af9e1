/* The DeepSeek-V3/R1 forward pass (MODEL.md) over a batch of sequences (see forward.h).
 *
 * All matrix products run on the whole batch's tokens at once; only attention is per
 * sequence. Attention is the weight-absorbed MLA form: the query of head h is mapped into
 * the latent space (q' = Wk_h^T q_nope), scored against the compressed cache directly,
 * and the attention-weighted latent vector is expanded with Wv_h only at the end. */
#include "forward.h"

#include <stdlib.h>
#include <string.h>

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
};

dsr1_status dsr1_engine_create(const dsr1_weights *w, const dsr1_kernels *k, dsr1_pool *pool,
                               int n_slots, int max_tokens, dsr1_engine **out)
{
    dsr1_engine *e = calloc(1, sizeof(*e));
    if (!e) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    e->w = w;
    e->k = k;
    e->pool = pool;
    dsr1_status st = dsr1_rope_init(&e->rope, &w->cfg);
    if (st == DSR1_OK)
        st = dsr1_kv_cache_create(&w->cfg, w->layer_begin, w->layer_end, n_slots, max_tokens,
                                  &e->cache);
    if (st != DSR1_OK) {
        dsr1_engine_destroy(e);
        return st;
    }
    *out = e;
    return DSR1_OK;
}

void dsr1_engine_destroy(dsr1_engine *e)
{
    if (!e) return;
    dsr1_kv_cache_destroy(e->cache);
    dsr1_rope_free(&e->rope);
    free(e);
}

int dsr1_batch_logit_rows(const dsr1_batch *b)
{
    int rows = 0;
    for (int s = 0; s < b->n_seqs; s++)
        rows += b->seqs[s].logits == DSR1_LOGITS_ALL    ? b->seqs[s].n_tokens
                : b->seqs[s].logits == DSR1_LOGITS_LAST ? 1
                                                        : 0;
    return rows;
}

static dsr1_status validate(const dsr1_engine *e, const dsr1_batch *b, const dsr1_step_io *io)
{
    const int cap = dsr1_kv_cache_capacity(e->cache), slots = dsr1_kv_cache_slots(e->cache);
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
    if (io->ep && !io->expert_owner)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "forward: expert parallelism without a placement");
    for (int s = 0; s < b->n_seqs; s++) {
        const dsr1_seq_step *q = &b->seqs[s];
        if (q->slot < 0 || q->slot >= slots)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: cache slot %d outside [0, %d)", s,
                              q->slot, slots);
        for (int o = 0; o < s; o++)
            if (b->seqs[o].slot == q->slot)
                return dsr1_error(DSR1_ERR_INVALID_ARG, "sequences %d and %d share cache slot %d",
                                  o, s, q->slot);
        if (q->n_tokens < 1 || q->pos < 0 || q->pos > cap - q->n_tokens)
            return dsr1_error(DSR1_ERR_RANGE,
                              "sequence %d: positions [%d, %d) do not fit the "
                              "cache capacity of %d tokens",
                              s, q->pos, q->pos + q->n_tokens, cap);
        if (io->hidden_in) continue; /* later stages never see token ids */
        for (int i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= w->cfg.vocab_size)
                return dsr1_error(DSR1_ERR_RANGE,
                                  "sequence %d: token id %d at index %d is outside "
                                  "the vocabulary [0, %d)",
                                  s, q->tokens[i], i, w->cfg.vocab_size);
    }
    return DSR1_OK;
}

/* Scratch of one step, sized for T tokens. */
typedef struct {
    float *h, *x, *qa, *q, *kv, *qpe, *qabs, *oc, *ov, *y, *shared, *ffn;
    int *ids;
    float *rw;
    int *tok_seq, *tok_pos; /* per token: its sequence and position */
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
}

static dsr1_status step_alloc(step_buf *s, const dsr1_model_config *c, int T)
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
    if (!s->h || !s->x || !s->qa || !s->q || !s->kv || !s->qpe || !s->qabs || !s->oc || !s->ov ||
        !s->y || !s->shared || !s->ffn || !s->ids || !s->rw || !s->tok_seq || !s->tok_pos) {
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
    const int qk = nope + rope, kvw = kvl + rope;

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
        float *row =
            dsr1_kv_cache_rows(e->cache, b->seqs[s->tok_seq[t]].slot, l) + (size_t)pos * kvw;
        memcpy(row, kvt, sizeof(float) * kvw);
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
        k->mla_attention(e->pool, sq->n_tokens, nh, kvl, rope, s->qabs + (size_t)t0 * nh * kvl,
                         s->qpe + (size_t)t0 * nh * rope, dsr1_kv_cache_rows(e->cache, sq->slot, l),
                         kvw, sq->pos, e->rope.softmax_scale, s->oc + (size_t)t0 * nh * kvl);
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
        if (io->ep && io->ep->size > 1)
            st = dsr1_moe_experts_ep(e->k, e->pool, c, L, e->w->expert_owned, io->expert_owner,
                                     io->ep, s->x, T, s->ids, s->rw, s->y);
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

static dsr1_status head(dsr1_engine *e, const dsr1_batch *b, step_buf *s)
{
    const dsr1_model_config *c = &e->w->cfg;
    const int d = c->hidden_size;
    /* gather the rows that want logits into x, in output order */
    int rows = 0;
    for (int q = 0, t0 = 0; q < b->n_seqs; t0 += b->seqs[q].n_tokens, q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        int from = sq->logits == DSR1_LOGITS_ALL    ? 0
                   : sq->logits == DSR1_LOGITS_LAST ? sq->n_tokens - 1
                                                    : sq->n_tokens;
        for (int i = from; i < sq->n_tokens; i++, rows++)
            memcpy(s->x + (size_t)rows * d, s->h + (size_t)(t0 + i) * d, sizeof(float) * d);
    }
    if (rows == 0) return DSR1_OK;
    e->k->rmsnorm(e->pool, s->x, d, e->w->final_norm, d, rows, c->rms_norm_eps, s->x, d);
    e->k->linear(e->pool, &e->w->head, 0, c->vocab_size, s->x, d, rows, b->logits, c->vocab_size);
    return DSR1_OK;
}

dsr1_status dsr1_engine_step(dsr1_engine *e, const dsr1_batch *b, const dsr1_step_io *io)
{
    static const dsr1_step_io local = {0};
    if (!io) io = &local;
    dsr1_status st = validate(e, b, io);
    if (st != DSR1_OK) return st;
    const dsr1_model_config *c = &e->w->cfg;
    const int d = c->hidden_size;
    int T = 0;
    for (int q = 0; q < b->n_seqs; q++) T += b->seqs[q].n_tokens;
    step_buf s;
    if ((st = step_alloc(&s, c, T)) != DSR1_OK) return st;
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
