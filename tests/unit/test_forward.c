/* The engine's forward pass against a naive reference written here from MODEL.md alone:
 * double precision, attention NOT weight-absorbed (per-head K and V materialised), YaRN
 * computed from the formulas, router by sorting. Random weights (dsr1_weights_dummy) on
 * small configs with awkward sizes (partial 128-blocks), with and without q_lora, with and
 * without YaRN. Also: chunked prefill + decode == one prefill; a sequence's logits are
 * bit-identical alone and inside a batch with other sequences at other positions. */
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
    dsr1_slice all = dsr1_slice_all(&c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(&c, &all, 5, &w), DSR1_OK);
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
    batch_invariance(variant(0));
    if (variant(1) != variant(0)) batch_invariance(variant(1));
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_qlora_yarn),
        cmocka_unit_test(test_reference_plain_q),
        cmocka_unit_test(test_reference_no_yarn),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_bad_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
