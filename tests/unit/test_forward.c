/* The engine's forward pass against a naive reference written here from MODEL.md alone:
 * double precision, attention NOT weight-absorbed (per-head K and V materialised), YaRN
 * computed from the formulas, router by sorting. Random weights (dsr1_weights_dummy) on
 * small configs with awkward sizes (partial 128-blocks), with and without q_lora, with and
 * without YaRN. Also: chunked prefill + decode == one prefill; a sequence's logits are
 * bit-identical alone and inside a batch with other sequences at other positions; the
 * paged cache (shuffled block tables, chunks across block boundaries, a shared prefix
 * block) gives the slot cache's logits bit for bit, and bad block tables are refused.
 * Sampling inside the step gives what the sampler gives on the engine's own logit rows. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "forward.h"
#include "kernels.h"
#include "sample_ref.h"
#include "weights.h"

static dsr1_model_config small_config(int q_lora, int yarn)
{
    dsr1_model_config c = test_config();
    c.q_lora_rank = q_lora;
    c.rope_type = yarn ? DSR1_ROPE_YARN : DSR1_ROPE_NONE;
    c.rope_original_max_position_embeddings = 64; /* small, so YaRN's ramp is mid-range */
    return c;
}

/* ---- the naive reference ---- */

static double *dq(const dsr1_linear *w) /* whole matrix, dequantised */
{
    double *m = malloc(sizeof(double) * w->rows * w->cols);
    float *row = malloc(sizeof(float) * w->cols);
    for (int r = 0; r < w->rows; r++) {
        dsr1_linear_dequant_row(w, r, row);
        for (int c = 0; c < w->cols; c++) m[(size_t)r * w->cols + c] = row[c];
    }
    free(row);
    return m;
}

static void matvec(const dsr1_linear *w, const double *x, double *y)
{
    double *m = dq(w);
    for (int r = 0; r < w->rows; r++) {
        double s = 0;
        for (int c = 0; c < w->cols; c++) s += m[(size_t)r * w->cols + c] * x[c];
        y[r] = s;
    }
    free(m);
}

static void rms(const double *x, const float *g, int n, double eps, double *y)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * inv * g[i];
}

static void ffn(const dsr1_ffn_weights *f, const double *x, double *y)
{
    int inter = f->gate.rows;
    double *g = malloc(sizeof(double) * inter), *u = malloc(sizeof(double) * inter);
    matvec(&f->gate, x, g);
    matvec(&f->up, x, u);
    for (int i = 0; i < inter; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
    matvec(&f->down, g, y);
    free(g);
    free(u);
}

static void rope_ref(const dsr1_model_config *c, double *x, int pos)
{
    int dim = c->qk_rope_head_dim;
    for (int i = 0; i < dim / 2; i++) {
        double f = pow(c->rope_theta, -2.0 * i / dim);
        if (c->rope_type == DSR1_ROPE_YARN) {
            double O = c->rope_original_max_position_embeddings, th = c->rope_theta;
            double dfast = dim * log(O / (c->rope_beta_fast * 2 * M_PI)) / (2 * log(th));
            double dslow = dim * log(O / (c->rope_beta_slow * 2 * M_PI)) / (2 * log(th));
            double low = fmax(floor(dfast), 0), high = fmin(ceil(dslow), dim - 1);
            if (low == high) high += 0.001;
            double ramp = fmin(fmax((i - low) / (high - low), 0), 1);
            f = f / c->rope_factor * ramp + f * (1 - ramp);
        }
        double a = x[2 * i], b = x[2 * i + 1], ang = pos * f;
        x[2 * i] = a * cos(ang) - b * sin(ang);
        x[2 * i + 1] = a * sin(ang) + b * cos(ang);
    }
}

/* logits[n][vocab] for tokens[0..n) from position 0 */
static void reference(const dsr1_weights *w, const int32_t *tok, int n, double *logits)
{
    const dsr1_model_config *c = &w->cfg;
    const int d = c->hidden_size, H = c->num_attention_heads, nope = c->qk_nope_head_dim;
    const int rp = c->qk_rope_head_dim, vd = c->v_head_dim, kvl = c->kv_lora_rank;
    const int qk = nope + rp;
    double scale = 1 / sqrt((double)qk);
    if (c->rope_type == DSR1_ROPE_YARN) {
        double m = 0.1 * c->rope_mscale_all_dim * log(c->rope_factor) + 1;
        scale *= m * m;
    }
    double *h = calloc((size_t)n * d, sizeof(double));
    float *row = malloc(sizeof(float) * d);
    for (int t = 0; t < n; t++) {
        dsr1_linear_dequant_row(&w->embed, tok[t], row);
        for (int i = 0; i < d; i++) h[(size_t)t * d + i] = row[i];
    }
    double *x = malloc(sizeof(double) * d), *y = malloc(sizeof(double) * d);
    double *q = malloc(sizeof(double) * H * qk), *qa = malloc(sizeof(double) * (kvl + d + 1024));
    double *K = malloc(sizeof(double) * n * H * qk), *V = malloc(sizeof(double) * n * H * vd);
    double *Q = malloc(sizeof(double) * n * H * qk),
           *kvo = malloc(sizeof(double) * H * (nope + vd));
    double *kv = malloc(sizeof(double) * (kvl + rp)), *cn = malloc(sizeof(double) * kvl);
    double *att = malloc(sizeof(double) * H * vd), *p = malloc(sizeof(double) * n);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const dsr1_layer_weights *L = &w->layers[l];
        for (int t = 0; t < n; t++) {
            rms(h + (size_t)t * d, L->attn_norm, d, c->rms_norm_eps, x);
            if (c->q_lora_rank) {
                double *tmp = malloc(sizeof(double) * c->q_lora_rank);
                matvec(&L->q_a, x, tmp);
                rms(tmp, L->q_a_norm, c->q_lora_rank, c->rms_norm_eps, qa);
                matvec(&L->q_b, qa, q);
                free(tmp);
            } else {
                matvec(&L->q, x, q);
            }
            matvec(&L->kv_a, x, kv);
            rms(kv, L->kv_a_norm, kvl, c->rms_norm_eps, cn);
            rope_ref(c, kv + kvl, t);
            matvec(&L->kv_b, cn, kvo); /* per head: k_nope [nope], v [vd] */
            for (int hh = 0; hh < H; hh++) {
                double *qh = q + hh * qk;
                rope_ref(c, qh + nope, t);
                memcpy(Q + ((size_t)t * H + hh) * qk, qh, sizeof(double) * qk);
                double *kh = K + ((size_t)t * H + hh) * qk;
                memcpy(kh, kvo + hh * (nope + vd), sizeof(double) * nope);
                memcpy(kh + nope, kv + kvl, sizeof(double) * rp);
                memcpy(V + ((size_t)t * H + hh) * vd, kvo + hh * (nope + vd) + nope,
                       sizeof(double) * vd);
            }
        }
        double *hn = malloc(sizeof(double) * n * d);
        for (int t = 0; t < n; t++) {
            for (int hh = 0; hh < H; hh++) {
                double mx = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    double dot = 0;
                    for (int i = 0; i < qk; i++)
                        dot += Q[((size_t)t * H + hh) * qk + i] * K[((size_t)s * H + hh) * qk + i];
                    p[s] = dot * scale;
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
                for (int i = 0; i < vd; i++) {
                    double o = 0;
                    for (int s = 0; s <= t; s++) o += p[s] / sum * V[((size_t)s * H + hh) * vd + i];
                    att[hh * vd + i] = o;
                }
            }
            matvec(&L->o, att, y);
            for (int i = 0; i < d; i++) hn[(size_t)t * d + i] = h[(size_t)t * d + i] + y[i];
        }
        for (int t = 0; t < n; t++) {
            double *ht = hn + (size_t)t * d;
            rms(ht, L->ffn_norm, d, c->rms_norm_eps, x);
            if (!L->moe) {
                ffn(&L->dense, x, y);
            } else {
                const int E = c->n_routed_experts, per = E / c->n_group;
                double s[64], b[64], gs[16], ye[1024];
                matvec(&L->router, x, s);
                for (int e = 0; e < E; e++) {
                    s[e] = 1 / (1 + exp(-s[e]));
                    b[e] = s[e] + L->router_bias[e];
                }
                for (int g = 0; g < c->n_group; g++) { /* top-2 sum by full sort */
                    double v[64] = {0};
                    for (int i = 0; i < per; i++) v[i] = b[g * per + i];
                    for (int i = 0; i < per; i++)
                        for (int j = i + 1; j < per; j++)
                            if (v[j] > v[i]) {
                                double tt = v[i];
                                v[i] = v[j];
                                v[j] = tt;
                            }
                    gs[g] = per > 1 ? v[0] + v[1] : v[0];
                }
                int keep[16] = {0};
                for (int r = 0; r < c->topk_group; r++) {
                    int best = -1;
                    for (int g = 0; g < c->n_group; g++)
                        if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
                    keep[best] = 1;
                }
                int chosen[64] = {0}, ids[16];
                double wsum = 0;
                for (int r = 0; r < c->num_experts_per_tok; r++) {
                    int best = -1;
                    for (int e = 0; e < E; e++)
                        if (keep[e / per] && !chosen[e] && (best < 0 || b[e] > b[best])) best = e;
                    chosen[best] = 1;
                    ids[r] = best;
                    wsum += s[best];
                }
                for (int i = 0; i < d; i++) y[i] = 0;
                for (int r = 0; r < c->num_experts_per_tok; r++) {
                    ffn(&L->experts[ids[r]], x, ye);
                    double wt = s[ids[r]] / wsum * c->routed_scaling_factor;
                    for (int i = 0; i < d; i++) y[i] += wt * ye[i];
                }
                ffn(&L->shared, x, ye);
                for (int i = 0; i < d; i++) y[i] += ye[i];
            }
            for (int i = 0; i < d; i++) ht[i] += y[i];
        }
        memcpy(h, hn, sizeof(double) * n * d);
        free(hn);
    }
    double *head = dq(&w->head);
    for (int t = 0; t < n; t++) {
        rms(h + (size_t)t * d, w->final_norm, d, c->rms_norm_eps, x);
        for (int v = 0; v < c->vocab_size; v++) {
            double s = 0;
            for (int i = 0; i < d; i++) s += head[(size_t)v * d + i] * x[i];
            logits[(size_t)t * c->vocab_size + v] = s;
        }
    }
    free(head);
    free(h);
    free(row);
    free(x);
    free(y);
    free(q);
    free(qa);
    free(K);
    free(V);
    free(Q);
    free(kvo);
    free(kv);
    free(cn);
    free(att);
    free(p);
}

/* ---- tests ---- */

static void random_tokens(int32_t *t, int n, int vocab, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < n; i++) t[i] = rand() % vocab;
}

/* max over rows of max|a - b| / std(b row) */
static double row_err(const float *a, const double *b, int rows, int vocab)
{
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        double m = 0, v = 0, e = 0;
        for (int i = 0; i < vocab; i++) m += b[(size_t)r * vocab + i];
        m /= vocab;
        for (int i = 0; i < vocab; i++) v += pow(b[(size_t)r * vocab + i] - m, 2);
        double sd = sqrt(v / vocab);
        for (int i = 0; i < vocab; i++)
            e = fmax(e, fabs(a[(size_t)r * vocab + i] - b[(size_t)r * vocab + i]));
        worst = fmax(worst, e / sd);
    }
    return worst;
}

/* Every test runs with the portable kernels and with the ones this CPU selects. */
static const dsr1_kernels *variant(int i)
{
    return i == 0 ? dsr1_kernels_portable() : dsr1_kernels_select(NULL);
}

/* Random weights (dsr1_weights_dummy) for every layer of c. */
static dsr1_weights *dummy_weights(const dsr1_model_config *c, uint64_t seed)
{
    dsr1_slice all = dsr1_slice_all(c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(c, &all, seed, &w), DSR1_OK);
    return w;
}

/* Run a check with the portable kernels and, when they differ, the ones this CPU selects. */
static void each_variant(void (*check)(const dsr1_kernels *kern))
{
    check(variant(0));
    if (variant(1) != variant(0)) check(variant(1));
}

static void check_variant(int q_lora, int yarn, const dsr1_kernels *kern);

static void check_against_reference(int q_lora, int yarn)
{
    check_variant(q_lora, yarn, variant(0));
    if (variant(1) != variant(0)) check_variant(q_lora, yarn, variant(1));
}

static void check_variant(int q_lora, int yarn, const dsr1_kernels *kern)
{
    dsr1_model_config c = small_config(q_lora, yarn);
    dsr1_slice all = dsr1_slice_all(&c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(&c, &all, 7 + q_lora + yarn, &w), DSR1_OK);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    dsr1_engine *e;
    const int n = 11;
    assert_int_equal(dsr1_engine_create(w, kern, pool, 2, 64, &e), DSR1_OK);
    int32_t tok[11];
    random_tokens(tok, n, c.vocab_size, 3);
    double *ref = malloc(sizeof(double) * n * c.vocab_size);
    reference(w, tok, n, ref);

    /* (1) one prefill of all n tokens */
    float *lg = malloc(sizeof(float) * n * c.vocab_size);
    dsr1_seq_step s1 = {0, 0, n, tok, DSR1_LOGITS_ALL};
    dsr1_batch b1 = {1, &s1, lg};
    assert_int_equal(dsr1_engine_forward(e, &b1), DSR1_OK);
    double err = row_err(lg, ref, n, c.vocab_size);
    print_message("%s: q_lora %d yarn %d: prefill error %.2e std\n", kern->name, q_lora, yarn, err);
    assert_true(err < 1e-4);

    /* (2) slot 1: chunk of 4, chunk of 3, then 4 single decode steps */
    float *lg2 = malloc(sizeof(float) * n * c.vocab_size);
    int at = 0, chunks[] = {4, 3, 1, 1, 1, 1};
    for (int k = 0; k < 6; k++) {
        dsr1_seq_step s = {1, at, chunks[k], tok + at, DSR1_LOGITS_ALL};
        dsr1_batch b = {1, &s, lg2 + (size_t)at * c.vocab_size};
        assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
        at += chunks[k];
    }
    err = row_err(lg2, ref, n, c.vocab_size);
    print_message("%s: q_lora %d yarn %d: chunked error %.2e std\n", kern->name, q_lora, yarn, err);
    assert_true(err < 1e-4);
    free(lg2);
    free(lg);
    free(ref);
    dsr1_engine_destroy(e);
    dsr1_pool_destroy(pool);
    dsr1_weights_destroy(w);
}

static void test_reference_qlora_yarn(void **state)
{
    (void)state;
    check_against_reference(96, 1);
}

static void test_reference_plain_q(void **state)
{
    (void)state;
    check_against_reference(0, 1);
}

static void test_reference_no_yarn(void **state)
{
    (void)state;
    check_against_reference(96, 0);
}

/* Three sequences at different positions in one step give bit-identical logits to the
 * same steps run alone. */
static void batch_invariance(const dsr1_kernels *kern)
{
    dsr1_model_config c = small_config(96, 1);
    dsr1_weights *w = dummy_weights(&c, 5);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    dsr1_engine *alone, *batched;
    assert_int_equal(dsr1_engine_create(w, kern, pool, 3, 32, &alone), DSR1_OK);
    assert_int_equal(dsr1_engine_create(w, kern, pool, 3, 32, &batched), DSR1_OK);
    int32_t tok[3][12];
    for (int s = 0; s < 3; s++) random_tokens(tok[s], 12, c.vocab_size, 10 + s);
    const int V = c.vocab_size;
    /* step 1: prefills of 5, 8, 2 tokens; step 2: decode, chunk of 3, decode */
    int pos1[3] = {0, 0, 0}, n1[3] = {5, 8, 2}, n2[3] = {1, 3, 1};
    for (int step = 0; step < 2; step++) {
        dsr1_seq_step ss[3];
        int rows = 0;
        for (int s = 0; s < 3; s++) {
            int pos = step ? n1[s] : pos1[s], n = step ? n2[s] : n1[s];
            ss[s] = (dsr1_seq_step){s, pos, n, tok[s] + pos, DSR1_LOGITS_ALL};
            rows += n;
        }
        float *lb = malloc(sizeof(float) * rows * V), *la = malloc(sizeof(float) * rows * V);
        dsr1_batch bb = {3, ss, lb};
        assert_int_equal(dsr1_batch_logit_rows(&bb), rows);
        assert_int_equal(dsr1_engine_forward(batched, &bb), DSR1_OK);
        for (int s = 0, r = 0; s < 3; r += ss[s].n_tokens, s++) {
            dsr1_batch b = {1, &ss[s], la + (size_t)r * V};
            assert_int_equal(dsr1_engine_forward(alone, &b), DSR1_OK);
        }
        assert_memory_equal(la, lb, sizeof(float) * rows * V);
        free(la);
        free(lb);
    }
    dsr1_engine_destroy(alone);
    dsr1_engine_destroy(batched);
    dsr1_pool_destroy(pool);
    dsr1_weights_destroy(w);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    each_variant(batch_invariance);
}

static void test_bad_steps(void **state)
{
    (void)state;
    dsr1_model_config c = small_config(96, 1);
    c.num_hidden_layers = 1;
    dsr1_slice all = dsr1_slice_all(&c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(&c, &all, 5, &w), DSR1_OK);
    dsr1_engine *e;
    assert_int_equal(dsr1_engine_create(w, dsr1_kernels_portable(), NULL, 2, 8, &e), DSR1_OK);
    float lg[300 * 8];
    int32_t ok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bad[2] = {3, 300};
    dsr1_seq_step s = {0, 0, 2, bad, DSR1_LOGITS_LAST};
    dsr1_batch b = {1, &s, lg};
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_ERR_RANGE);
    assert_non_null(strstr(dsr1_errmsg(), "token id 300"));
    s = (dsr1_seq_step){0, 4, 5, ok, DSR1_LOGITS_LAST}; /* past capacity */
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_ERR_RANGE);
    s = (dsr1_seq_step){2, 0, 1, ok, DSR1_LOGITS_LAST}; /* no such slot */
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_ERR_RANGE);
    dsr1_seq_step two[2] = {{0, 0, 1, ok, 1}, {0, 0, 1, ok, 1}};
    dsr1_batch b2 = {2, two, lg};
    assert_int_equal(dsr1_engine_forward(e, &b2), DSR1_ERR_INVALID_ARG);
    dsr1_engine_destroy(e);
    dsr1_weights_destroy(w);
}

/* ---- the paged cache ---- */

/* A shuffled permutation of the pool's block ids, handed out as block tables. */
static void shuffled_ids(int32_t *ids, int n, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < n; i++) ids[i] = i;
    for (int i = n - 1; i > 0; i--) {
        const int r = rand() % (i + 1);
        const int32_t t = ids[i];
        ids[i] = ids[r];
        ids[r] = t;
    }
}

/* Three sequences in three steps of chunks that cross block boundaries (prefill chunks,
 * then decode), on a slot engine and on paged engines whose block tables are shuffled ids:
 * bit-identical logits. */
static void paged_equals_slots(const dsr1_kernels *kern)
{
    dsr1_model_config c = small_config(96, 1);
    dsr1_weights *w = dummy_weights(&c, 5);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    enum { NS = 3, STEPS = 3, LEN = 13, POOL = 20 };
    static const int chunk[STEPS][NS] = {{6, 7, 3}, {5, 1, 7}, {1, 1, 1}};
    int32_t tok[NS][LEN], ids[POOL];
    for (int q = 0; q < NS; q++) random_tokens(tok[q], LEN, c.vocab_size, 20 + q);
    const int V = c.vocab_size;
    float *want = malloc(sizeof(float) * NS * LEN * V), *got = malloc(sizeof(float) * NS * LEN * V);
    static const int block_tokens[] = {4, 5};
    for (int bi = 0; bi < 2; bi++) {
        const int bt = block_tokens[bi];
        dsr1_engine *slots, *paged;
        assert_int_equal(dsr1_engine_create(w, kern, pool, NS, 32, &slots), DSR1_OK);
        assert_int_equal(dsr1_engine_create_paged(w, kern, pool, POOL, bt, 64, &paged), DSR1_OK);
        assert_int_equal(dsr1_engine_block_tokens(paged), bt);
        assert_int_equal(dsr1_engine_blocks(paged), POOL);
        shuffled_ids(ids, POOL, 30 + bi);
        int pos[NS] = {0};
        for (int st = 0; st < STEPS; st++) {
            dsr1_seq_step ss[NS], sp[NS];
            int rows = 0;
            for (int q = 0; q < NS; q++) {
                ss[q] = (dsr1_seq_step){q, pos[q], chunk[st][q], tok[q] + pos[q], DSR1_LOGITS_ALL};
                sp[q] = ss[q];
                sp[q].slot = -1; /* ignored with a table */
                sp[q].blocks = ids + q * (POOL / NS);
                sp[q].n_blocks = POOL / NS;
                pos[q] += chunk[st][q];
                rows += chunk[st][q];
            }
            dsr1_batch bs = {NS, ss, want}, bp = {NS, sp, got};
            assert_int_equal(dsr1_engine_forward(slots, &bs), DSR1_OK);
            assert_int_equal(dsr1_engine_forward(paged, &bp), DSR1_OK);
            assert_memory_equal(want, got, sizeof(float) * rows * V);
        }
        dsr1_engine_destroy(slots);
        dsr1_engine_destroy(paged);
    }
    free(want);
    free(got);
    dsr1_pool_destroy(pool);
    dsr1_weights_destroy(w);
}

static void test_paged_equals_slots(void **state)
{
    (void)state;
    each_variant(paged_equals_slots);
}

/* Sequence B shares sequence A's first (full) block, read-only, and starts after it; in the
 * same step A decodes into another block. B's logits equal B's whole prompt run alone, A's
 * equal A alone. */
static void shared_prefix(const dsr1_kernels *kern)
{
    dsr1_model_config c = small_config(96, 1);
    dsr1_weights *w = dummy_weights(&c, 6);
    enum { BT = 4, LA = 10, LB = 9 };
    const int V = c.vocab_size;
    int32_t a[LA + 1], b[LB];
    random_tokens(a, LA + 1, V, 40);
    random_tokens(b, LB, V, 41);
    memcpy(b, a, sizeof(int32_t) * BT); /* the common prefix: one full block */
    const int32_t ta[] = {7, 2, 9}, tb[] = {7, 5, 11}, alone_b[] = {0, 1, 2}, alone_a[] = {3, 4, 5};
    dsr1_engine *e, *ref;
    assert_int_equal(dsr1_engine_create_paged(w, kern, NULL, 12, BT, 32, &e), DSR1_OK);
    assert_int_equal(dsr1_engine_create_paged(w, kern, NULL, 6, BT, 32, &ref), DSR1_OK);
    float *got = malloc(sizeof(float) * (LB + 1) * V), *want = malloc(sizeof(float) * LB * V);
    dsr1_seq_step pa = {0, 0, LA, a, DSR1_LOGITS_NONE, ta, 3, 0};
    dsr1_batch ba = {1, &pa, got};
    assert_int_equal(dsr1_engine_forward(e, &ba), DSR1_OK);
    dsr1_seq_step two[2] = {{0, BT, LB - BT, b + BT, DSR1_LOGITS_ALL, tb, 3, 0},
                            {0, LA, 1, a + LA, DSR1_LOGITS_LAST, ta, 3, 0}};
    dsr1_batch bb = {2, two, got};
    assert_int_equal(dsr1_engine_forward(e, &bb), DSR1_OK);

    dsr1_seq_step rb = {0, 0, LB, b, DSR1_LOGITS_ALL, alone_b, 3, 0};
    dsr1_batch b1 = {1, &rb, want};
    assert_int_equal(dsr1_engine_forward(ref, &b1), DSR1_OK);
    assert_memory_equal(got, want + (size_t)BT * V, sizeof(float) * (LB - BT) * V);
    dsr1_seq_step ra = {0, 0, LA + 1, a, DSR1_LOGITS_LAST, alone_a, 3, 0};
    dsr1_batch b2 = {1, &ra, want};
    assert_int_equal(dsr1_engine_forward(ref, &b2), DSR1_OK);
    assert_memory_equal(got + (size_t)(LB - BT) * V, want, sizeof(float) * V);
    free(got);
    free(want);
    dsr1_engine_destroy(e);
    dsr1_engine_destroy(ref);
    dsr1_weights_destroy(w);
}

static void test_shared_prefix(void **state)
{
    (void)state;
    each_variant(shared_prefix);
}

/* Expect `want` and a message containing `needle` from batch b. */
static void expect_batch_error(dsr1_engine *e, const dsr1_batch *b, dsr1_status want,
                               const char *needle)
{
    assert_int_equal(dsr1_engine_forward(e, b), want);
    if (!strstr(dsr1_errmsg(), needle)) fail_msg("'%s' does not say '%s'", dsr1_errmsg(), needle);
}

/* The same from a batch of n sequences. */
static void expect_error(dsr1_engine *e, dsr1_seq_step *seqs, int n, dsr1_status want,
                         const char *needle)
{
    float lg[8 * 300];
    expect_batch_error(e, &(dsr1_batch){n, seqs, lg}, want, needle);
}

/* Bad block tables are refused before anything is written: afterwards a sequence whose
 * blocks a refused batch would have overwritten still gives the logits it gives alone. */
static void test_paged_bad_steps(void **state)
{
    (void)state;
    dsr1_model_config c = small_config(96, 1);
    c.num_hidden_layers = 1;
    dsr1_weights *w = dummy_weights(&c, 5);
    const dsr1_kernels *k = dsr1_kernels_portable();
    dsr1_engine *e;
    assert_int_equal(dsr1_engine_create_paged(w, k, NULL, 0, 4, 8, &e), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_engine_create_paged(w, k, NULL, 6, 0, 8, &e), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_engine_create_paged(w, k, NULL, 6, 4, 0, &e), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_engine_create_paged(w, k, NULL, 6, 4, 8, &e), DSR1_OK);
    const int V = c.vocab_size;
    int32_t tok[9];
    random_tokens(tok, 9, V, 50);
    const int32_t t01[] = {0, 1}, t2[] = {2}, t23[] = {2, 3}, t22[] = {2, 2}, t6[] = {4, 6},
                  t0[] = {0}, t45[] = {4, 5};
    /* A: 6 tokens in blocks 0, 1 */
    float a1[300], a2[300];
    dsr1_seq_step a = {0, 0, 6, tok, DSR1_LOGITS_LAST, t01, 2, 0};
    dsr1_batch ba = {1, &a, a1};
    assert_int_equal(dsr1_engine_forward(e, &ba), DSR1_OK);

    dsr1_seq_step s[2] = {{0, 0, 1, tok, DSR1_LOGITS_LAST}};
    expect_error(e, s, 1, DSR1_ERR_INVALID_ARG, "no block table");
    s[0] = (dsr1_seq_step){0, 0, 5, tok, DSR1_LOGITS_LAST, t2, 1, 0};
    expect_error(e, s, 1, DSR1_ERR_RANGE, "need 2 blocks of 4 tokens");
    s[0] = (dsr1_seq_step){0, 0, 5, tok, DSR1_LOGITS_LAST, t6, 2, 0};
    expect_error(e, s, 1, DSR1_ERR_RANGE, "block 6, outside the pool [0, 6)");
    s[0] = (dsr1_seq_step){0, 0, 5, tok, DSR1_LOGITS_LAST, t22, 2, 0};
    expect_error(e, s, 1, DSR1_ERR_INVALID_ARG, "block 2 appears twice");
    s[0] = (dsr1_seq_step){0, 0, 9, tok, DSR1_LOGITS_LAST, t23, 2, 0};
    expect_error(e, s, 1, DSR1_ERR_RANGE, "need 3 blocks"); /* 9 tokens in 8 positions */
    s[0] = (dsr1_seq_step){0, 0, 8, tok, DSR1_LOGITS_LAST, t23, 2, 0};
    s[1] = (dsr1_seq_step){0, 0, 1, tok, DSR1_LOGITS_LAST, t45, 2, 0};
    expect_error(e, s, 2, DSR1_ERR_RANGE, "at most 8"); /* max_step_tokens */
    /* B writes A's block 0 (would corrupt A) while C writes it too, or while C reads it */
    s[0] = (dsr1_seq_step){0, 0, 4, tok + 5, DSR1_LOGITS_LAST, t0, 1, 0};
    s[1] = (dsr1_seq_step){0, 2, 1, tok + 5, DSR1_LOGITS_LAST, t0, 1, 0};
    expect_error(e, s, 2, DSR1_ERR_INVALID_ARG, "sequences 0 and 1 both write cache block 0");
    s[1] = (dsr1_seq_step){0, 4, 1, tok + 5, DSR1_LOGITS_LAST, t01, 2, 0};
    expect_error(e, s, 2, DSR1_ERR_INVALID_ARG, "sequence 1 reads cache block 0, which sequence 0");
    s[1] = (dsr1_seq_step){0, 0, 1, tok, DSR1_LOGITS_LAST, t22, 2, 0};
    expect_error(e, s, 2, DSR1_ERR_INVALID_ARG, "appears twice");

    /* A continues as if nothing had happened */
    a = (dsr1_seq_step){0, 6, 1, tok + 6, DSR1_LOGITS_LAST, t01, 2, 0};
    assert_int_equal(dsr1_engine_forward(e, &ba), DSR1_OK);
    dsr1_engine *ref;
    assert_int_equal(dsr1_engine_create(w, k, NULL, 1, 8, &ref), DSR1_OK);
    dsr1_seq_step r = {0, 0, 7, tok, DSR1_LOGITS_LAST};
    dsr1_batch br = {1, &r, a2};
    assert_int_equal(dsr1_engine_forward(ref, &br), DSR1_OK);
    assert_memory_equal(a1, a2, sizeof(a1));
    dsr1_engine_destroy(ref);
    dsr1_engine_destroy(e);
    dsr1_weights_destroy(w);
}

/* ---- sampling inside the step ---- */

enum { NS = 6 };
static const int sample_len[NS] = {6, 4, 7, 5, 3, 2};
static const dsr1_logits_mode sample_mode[NS] = {DSR1_LOGITS_LAST, DSR1_LOGITS_LAST,
                                                 DSR1_LOGITS_ALL,  DSR1_LOGITS_ALL,
                                                 DSR1_LOGITS_ALL,  DSR1_LOGITS_NONE};

/* Sample requests of every kind (sequence 4 has none and returns its rows; sequence 5 has no
 * logits, so its request is ignored): greedy with logprobs; seeded top_k/top_p/min_p with
 * every penalty over a history (whose generated ids are set to the row's argmax, so that
 * the penalties change the token) and logit biases; prompt logprobs scoring a known next
 * token; prompt logprobs and a seeded draw with logprobs and a decisive logit bias. */
typedef struct {
    int32_t tok[NS][8], hist[7], next, bias_ids[3];
    float bias_values[3];
    dsr1_seq_sample req[NS];
} sample_case;

static void sample_case_init(sample_case *k, int vocab)
{
    for (int q = 0; q < NS; q++) random_tokens(k->tok[q], 8, vocab, 60 + q);
    memcpy(k->hist, k->tok[1], sizeof(int32_t) * 4); /* prompt, then 3 generated ids */
    k->next = k->tok[2][7];
    k->bias_ids[0] = k->tok[1][0];
    k->bias_ids[1] = 17;
    k->bias_values[0] = 3.5f;
    k->bias_values[1] = -2;
    k->bias_ids[2] = 17; /* sequence 3 draws it: a bias of 100 outweighs everything */
    k->bias_values[2] = 100;
    dsr1_sampling p = dsr1_sampling_defaults();
    p.temperature = 0;
    p.top_logprobs = 5;
    k->req[0] = (dsr1_seq_sample){p, 0, .logprobs = true};
    p = (dsr1_sampling){.temperature = 0.05f,
                        .top_p = 0.9f,
                        .top_k = 50,
                        .min_p = 0.02f,
                        .seed = 99,
                        .presence_penalty = 0.5f,
                        .frequency_penalty = 0.4f,
                        .repetition_penalty = 1.3f,
                        .n_bias = 2,
                        .bias_ids = k->bias_ids,
                        .bias_values = k->bias_values};
    k->req[1] = (dsr1_seq_sample){p, 3, k->hist, 4, 7};
    p = dsr1_sampling_defaults();
    p.top_logprobs = 2;
    k->req[2] = (dsr1_seq_sample){p, .prompt_logprobs = true, .next = &k->next};
    p.seed = 5;
    p.top_logprobs = 3;
    p.n_bias = 1;
    p.bias_ids = k->bias_ids + 2;
    p.bias_values = k->bias_values + 2;
    k->req[3] = (dsr1_seq_sample){p, 0, .logprobs = true, .prompt_logprobs = true};
    k->req[5] = k->req[0];
}

static void sample_steps(sample_case *k, dsr1_seq_step *ss, bool with_samples)
{
    for (int q = 0; q < NS; q++) {
        ss[q] = (dsr1_seq_step){q, 0, sample_len[q], k->tok[q], sample_mode[q]};
        if (with_samples && q != 4) ss[q].sample = &k->req[q];
    }
}

static void engine_sampling(const dsr1_kernels *kern)
{
    dsr1_model_config c = small_config(96, 1);
    dsr1_weights *w = dummy_weights(&c, 5);
    const int V = c.vocab_size;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    dsr1_engine *plain, *sampling;
    assert_int_equal(dsr1_engine_create(w, kern, pool, NS, 16, &plain), DSR1_OK);
    assert_int_equal(dsr1_engine_create(w, kern, pool, NS, 16, &sampling), DSR1_OK);
    sample_case k;
    sample_case_init(&k, V);
    dsr1_seq_step ss[NS];
    sample_steps(&k, ss, false);
    dsr1_batch b = {NS, ss};
    const int all_rows = dsr1_batch_logit_rows(&b);
    float *rows = malloc(sizeof(float) * all_rows * V), *mine = malloc(sizeof(float) * 3 * V);
    b.logits = rows;
    assert_int_equal(dsr1_engine_forward(plain, &b), DSR1_OK);

    const float *row1 = rows + V; /* sequence 1's only row */
    int32_t top1 = 0;
    for (int v = 0; v < V; v++)
        if (row1[v] > row1[top1]) top1 = v;
    for (int i = 4; i < 7; i++) k.hist[i] = top1;

    sample_steps(&k, ss, true);
    assert_int_equal(dsr1_batch_logit_rows(&b), 3);    /* sequence 4 */
    assert_int_equal(dsr1_batch_samples(&b), 4);       /* sequences 0..3 */
    assert_int_equal(dsr1_batch_row_logprobs(&b), 10); /* 6 + 4 */
    dsr1_sample_result got[4], want[4], got_lp[10], want_lp[10];
    assert_true(sample_reference(&b, rows, V, want, want_lp));
    b = (dsr1_batch){NS, ss, mine, got, got_lp};
    assert_int_equal(dsr1_engine_forward(sampling, &b), DSR1_OK);
    for (int i = 0; i < 4; i++) assert_true(same_result(&got[i], &want[i]));
    for (int i = 0; i < 10; i++) assert_true(same_result(&got_lp[i], &want_lp[i]));
    assert_memory_equal(mine, rows + (size_t)(all_rows - 3) * V, sizeof(float) * 3 * V);
    /* what the requests ask for */
    assert_int_equal(got[0].n_top, 5);
    assert_int_equal(got[1].n_top, 0);        /* no logprobs asked */
    assert_int_not_equal(got[1].token, top1); /* penalised */
    assert_int_equal(got[2].token, k.next);
    assert_int_equal(got[2].n_top, 2);
    assert_int_equal(got_lp[0].token, k.tok[2][1]);
    assert_int_equal(got_lp[9].token, k.tok[3][4]);
    assert_int_equal(got_lp[9].n_top, 3);
    assert_int_equal(got[3].token, 17);
    int32_t greedy = 0; /* sequence 0's row is the first */
    for (int v = 0; v < V; v++)
        if (rows[v] > rows[greedy]) greedy = v;
    assert_int_equal(got[0].token, greedy);

    /* decode: every sequence draws its next token, no rows come back (logits NULL) */
    dsr1_seq_sample dec[NS];
    for (int q = 0; q < NS; q++) {
        dec[q] = k.req[q == 4 ? 0 : q];
        dec[q].prompt_logprobs = false;
        dec[q].next = NULL;
        dec[q].step++;
        ss[q] = (dsr1_seq_step){q, sample_len[q], 1, k.tok[q] + sample_len[q], DSR1_LOGITS_LAST};
    }
    assert_int_equal(dsr1_engine_forward(plain, &(dsr1_batch){NS, ss, rows}), DSR1_OK);
    for (int q = 0; q < NS; q++) ss[q].sample = &dec[q];
    dsr1_sample_result more[NS], more_want[NS];
    b = (dsr1_batch){NS, ss, NULL, more};
    assert_int_equal(dsr1_engine_forward(sampling, &b), DSR1_OK);
    assert_true(sample_reference(&b, rows, V, more_want, NULL));
    for (int q = 0; q < NS; q++) assert_true(same_result(&more[q], &more_want[q]));
    free(rows);
    free(mine);
    dsr1_engine_destroy(plain);
    dsr1_engine_destroy(sampling);
    dsr1_pool_destroy(pool);
    dsr1_weights_destroy(w);
}

static void test_engine_sampling(void **state)
{
    (void)state;
    each_variant(engine_sampling);
}

/* Expect `want` and a message with `needle` from one sequence with sample request r. */
static void expect_sample_error(dsr1_engine *e, const int32_t *tok, dsr1_logits_mode mode,
                                const dsr1_seq_sample *r, dsr1_status want, const char *needle)
{
    dsr1_seq_step q = {0, 0, 3, tok, mode};
    q.sample = r;
    dsr1_sample_result res[3];
    expect_batch_error(e, &(dsr1_batch){1, &q, NULL, res, res + 1}, want, needle);
}

/* Bad sample requests are refused before anything runs; a row of NaN logits fails only its
 * own result. */
static void test_sampling_errors(void **state)
{
    (void)state;
    dsr1_model_config c = small_config(96, 1);
    c.num_hidden_layers = 1;
    dsr1_weights *w = dummy_weights(&c, 5);
    dsr1_engine *e;
    assert_int_equal(dsr1_engine_create(w, dsr1_kernels_portable(), NULL, 1, 8, &e), DSR1_OK);
    int32_t tok[3] = {4, 5, 6}, bad[4] = {1, 2, 300, 3}, far = 300;
    const dsr1_sampling ok = dsr1_sampling_defaults();
    dsr1_seq_sample r = {ok, .prompt_logprobs = true};
    expect_sample_error(e, tok, DSR1_LOGITS_LAST, &r, DSR1_ERR_INVALID_ARG,
                        "prompt logprobs need every logit row");
    r = (dsr1_seq_sample){ok};
    r.params.top_p = 1.5f;
    expect_sample_error(e, tok, DSR1_LOGITS_LAST, &r, DSR1_ERR_INVALID_ARG,
                        "sequence 0: sampling: top_p = 1.5");
    r = (dsr1_seq_sample){ok, 0, bad, 2, 4};
    r.params.repetition_penalty = 1.1f;
    expect_sample_error(e, tok, DSR1_LOGITS_LAST, &r, DSR1_ERR_RANGE, "history id 300 at index 2");
    r = (dsr1_seq_sample){ok, 0, bad, 3, 2};
    expect_sample_error(e, tok, DSR1_LOGITS_LAST, &r, DSR1_ERR_INVALID_ARG, "history of 2 ids");
    r = (dsr1_seq_sample){ok, .next = &far};
    expect_sample_error(e, tok, DSR1_LOGITS_LAST, &r, DSR1_ERR_RANGE, "next token id 300");
    dsr1_seq_step q = {0, 0, 3, tok, DSR1_LOGITS_LAST};
    r = (dsr1_seq_sample){ok};
    q.sample = &r;
    dsr1_batch b = {1, &q};
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_ERR_INVALID_ARG); /* no room for it */

    w->final_norm[0] = NAN; /* every logit NaN */
    dsr1_sample_result res[3];
    r.prompt_logprobs = true;
    q.logits = DSR1_LOGITS_ALL;
    b = (dsr1_batch){1, &q, NULL, res, res + 1};
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
    for (int i = 0; i < 3; i++) assert_int_equal(res[i].token, DSR1_SAMPLE_FAILED);
    dsr1_engine_destroy(e);
    dsr1_weights_destroy(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_qlora_yarn),
        cmocka_unit_test(test_reference_plain_q),
        cmocka_unit_test(test_reference_no_yarn),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_bad_steps),
        cmocka_unit_test(test_paged_equals_slots),
        cmocka_unit_test(test_shared_prefix),
        cmocka_unit_test(test_paged_bad_steps),
        cmocka_unit_test(test_engine_sampling),
        cmocka_unit_test(test_sampling_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
