/* Router, expert FFNs and the dense/shared FFN (see moe.h). */
#include "moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

void dsr1_ffn_forward(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_ffn_weights *f,
                      const float *x, int m, float *y, float *scratch)
{
    const int inter = f->gate.rows, d = f->gate.cols;
    float *g = scratch, *u = scratch + (size_t)m * inter;
    k->linear(pool, &f->gate, 0, inter, x, d, m, g, inter);
    k->linear(pool, &f->up, 0, inter, x, d, m, u, inter);
    for (size_t i = 0; i < (size_t)m * inter; i++) g[i] = silu(g[i]) * u[i];
    k->linear(pool, &f->down, 0, d, g, inter, m, y, d);
}

dsr1_status dsr1_moe_route(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_model_config *cfg,
                           const dsr1_layer_weights *L, const float *x, int m, int *ids,
                           float *weights)
{
    const int ne = cfg->n_routed_experts, ng = cfg->n_group, per = ne / ng;
    const int topk = cfg->num_experts_per_tok;
    float *s = malloc(sizeof(float) * (size_t)m * ne);
    float *b = malloc(sizeof(float) * (size_t)ne);
    float *gs = malloc(sizeof(float) * (size_t)ng);
    bool *keep = malloc(sizeof(bool) * (size_t)ng);
    bool *taken = malloc(sizeof(bool) * (size_t)ne);
    dsr1_status st = DSR1_OK;
    if (!s || !b || !gs || !keep || !taken) {
        st = dsr1_error(DSR1_ERR_NOMEM, "router: out of memory");
        goto out;
    }
    k->linear(pool, &L->router, 0, ne, x, cfg->hidden_size, m, s, ne);
    for (int t = 0; t < m; t++) {
        float *st_ = s + (size_t)t * ne;
        for (int e = 0; e < ne; e++) {
            st_[e] = 1.0f / (1.0f + expf(-st_[e]));
            b[e] = st_[e] + L->router_bias[e]; /* the bias steers selection only */
        }
        /* group score: sum of the two largest biased scores of the group */
        for (int g = 0; g < ng; g++) {
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (b[e] > m1) {
                    m2 = m1;
                    m1 = b[e];
                } else if (b[e] > m2) {
                    m2 = b[e];
                }
            }
            gs[g] = per > 1 ? m1 + m2 : m1;
            keep[g] = false;
        }
        for (int r = 0; r < cfg->topk_group; r++) {
            int best = -1;
            for (int g = 0; g < ng; g++)
                if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            keep[best] = true;
        }
        for (int e = 0; e < ne; e++) taken[e] = false;
        float sum = 0;
        for (int r = 0; r < topk; r++) {
            int best = -1;
            for (int e = 0; e < ne; e++)
                if (keep[e / per] && !taken[e] && (best < 0 || b[e] > b[best])) best = e;
            taken[best] = true;
            ids[(size_t)t * topk + r] = best;
            weights[(size_t)t * topk + r] = st_[best];
            sum += st_[best];
        }
        for (int r = 0; r < topk; r++) {
            float *w = &weights[(size_t)t * topk + r];
            if (cfg->norm_topk_prob) *w /= sum;
            *w *= cfg->routed_scaling_factor;
        }
    }
out:
    free(s);
    free(b);
    free(gs);
    free(keep);
    free(taken);
    return st;
}

dsr1_status dsr1_moe_experts(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_model_config *cfg,
                             const dsr1_layer_weights *L, const bool *owned, const float *x, int m,
                             const int *ids, const float *weights, float *y)
{
    const int d = cfg->hidden_size, topk = cfg->num_experts_per_tok, ne = cfg->n_routed_experts;
    int *start = calloc((size_t)ne + 1, sizeof(int)), *next = malloc(sizeof(int) * (size_t)ne);
    int *rows = malloc(sizeof(int) * ((size_t)m * topk + 1));
    float *tw = malloc(sizeof(float) * ((size_t)m * topk + 1));
    dsr1_expert *ex = malloc(sizeof(dsr1_expert) * (size_t)ne);
    dsr1_status st = DSR1_OK;
    if (!start || !next || !rows || !tw || !ex) {
        st = dsr1_error(DSR1_ERR_NOMEM, "experts: out of memory");
        goto out;
    }
    /* each owned expert's tokens, in token order (ids of experts not owned, -1 included,
     * are someone else's) */
    for (size_t i = 0; i < (size_t)m * topk; i++)
        if (ids[i] >= 0 && ids[i] < ne && owned[ids[i]]) start[ids[i] + 1]++;
    for (int e = 0; e < ne; e++) start[e + 1] += start[e];
    memcpy(next, start, sizeof(int) * (size_t)ne);
    for (size_t i = 0; i < (size_t)m * topk; i++)
        if (ids[i] >= 0 && ids[i] < ne && owned[ids[i]]) {
            rows[next[ids[i]]] = (int)(i / topk);
            tw[next[ids[i]]++] = weights[i];
        }
    /* experts in increasing id order, as the reference accumulates them */
    int nex = 0;
    for (int e = 0; e < ne; e++)
        if (start[e + 1] > start[e])
            ex[nex++] =
                (dsr1_expert){&L->experts[e].gate,     &L->experts[e].up, &L->experts[e].down,
                              start[e + 1] - start[e], rows + start[e],   tw + start[e]};
    /* an entry a variant leaves NULL is the portable one */
    const dsr1_kernels *kx = k->expert_ffn ? k : dsr1_kernels_portable();
    st = kx->expert_ffn(pool, ex, nex, x, d, y, d);
out:
    free(start);
    free(next);
    free(rows);
    free(tw);
    free(ex);
    return st;
}
