/* Every kernel of every variant against a double-precision reference computed here, on
 * random data at awkward shapes: rows and columns that are not multiples of the 128 block
 * (partial scale blocks), m = 1, 3, 17, row ranges that start mid-block, strided inputs
 * and outputs. Variants come from dsr1_kernels_select(); a variant that is not available
 * on this machine is skipped, never failed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels.h"
#include "numeric.h"

static const char *variants[] = {"portable", "avx512"};
#define NVAR (sizeof(variants) / sizeof(variants[0]))

static float frand(void)
{
    return (float)(rand() / (double)RAND_MAX * 2 - 1);
}

typedef struct {
    dsr1_linear w;
    void *data;
    float *scale;
} rand_linear;

static rand_linear make_linear(dsr1_dtype dt, int rows, int cols)
{
    rand_linear r = {{dt, rows, cols, NULL, NULL}, NULL, NULL};
    size_t n = (size_t)rows * cols;
    if (dt == DSR1_DT_F8_E4M3) {
        uint8_t *q = malloc(n);
        for (size_t i = 0; i < n; i++) {
            q[i] = (uint8_t)(rand() & 0xff);
            if ((q[i] & 0x7f) == 0x7f) q[i] ^= 1; /* no NaN patterns */
        }
        int sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        r.scale = malloc(sizeof(float) * sr * sc);
        for (int i = 0; i < sr * sc; i++) r.scale[i] = (0.5f + frand() * 0.4f) / 448.0f;
        r.data = q;
    } else if (dt == DSR1_DT_BF16) {
        uint16_t *h = malloc(2 * n);
        for (size_t i = 0; i < n; i++) h[i] = dsr1_f32_to_bf16(frand());
        r.data = h;
    } else {
        float *f = malloc(4 * n);
        for (size_t i = 0; i < n; i++) f[i] = frand();
        r.data = f;
    }
    r.w.data = r.data;
    r.w.scale = r.scale;
    return r;
}

/* W[r][c] from the raw bytes, independently of the kernels' dequant helper */
static double wval(const rand_linear *r, int row, int col)
{
    size_t i = (size_t)row * r->w.cols + col;
    switch (r->w.dtype) {
    case DSR1_DT_F8_E4M3:
        return (double)dsr1_e4m3_to_f32(((uint8_t *)r->data)[i]) *
               r->scale[(row / 128) * ((r->w.cols + 127) / 128) + col / 128];
    case DSR1_DT_BF16:
        return dsr1_bf16_to_f32(((uint16_t *)r->data)[i]);
    default:
        return ((float *)r->data)[i];
    }
}

static void check_linear(const dsr1_kernels *k, dsr1_pool *pool, dsr1_dtype dt, int rows, int cols,
                         int m, int r0, int r1)
{
    rand_linear r = make_linear(dt, rows, cols);
    /* x serves both products: cols values for linear, r1 - r0 for linear_t */
    const int kx = cols > r1 - r0 ? cols : r1 - r0;
    const int ldx = kx + 3, ldy = (r1 - r0) + 5;
    float *x = malloc(sizeof(float) * m * ldx), *y = malloc(sizeof(float) * m * ldy);
    for (int i = 0; i < m * ldx; i++) x[i] = frand();
    for (int i = 0; i < m * ldy; i++) y[i] = 12345.0f; /* sentinel: padding must stay */
    k->linear(pool, &r.w, r0, r1, x, ldx, m, y, ldy);
    for (int i = 0; i < m; i++) {
        for (int row = r0; row < r1; row++) {
            double s = 0, a = 0;
            for (int c = 0; c < cols; c++) {
                s += wval(&r, row, c) * x[i * ldx + c];
                a += fabs(wval(&r, row, c) * x[i * ldx + c]);
            }
            assert_true(fabs(y[i * ldy + row - r0] - s) <= 1e-5 * a + 1e-6);
        }
        for (int p = r1 - r0; p < ldy; p++) assert_true(y[i * ldy + p] == 12345.0f);
    }
    /* transposed product over the same row range */
    const int ldyt = cols + 2;
    float *yt = malloc(sizeof(float) * m * ldyt);
    k->linear_t(pool, &r.w, r0, r1, x, ldx, m, yt, ldyt);
    for (int i = 0; i < m; i++)
        for (int c = 0; c < cols; c++) {
            double s = 0, a = 0;
            for (int row = r0; row < r1; row++) {
                s += x[i * ldx + row - r0] * wval(&r, row, c);
                a += fabs(x[i * ldx + row - r0] * wval(&r, row, c));
            }
            assert_true(fabs(yt[i * ldyt + c] - s) <= 1e-5 * a + 1e-6);
        }
    free(yt);
    free(x);
    free(y);
    free(r.data);
    free(r.scale);
}

static void test_linear(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    srand(1);
    static const int ms[] = {1, 3, 4, 5, 8, 17};
    static const dsr1_dtype dts[] = {DSR1_DT_F8_E4M3, DSR1_DT_BF16, DSR1_DT_F32};
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        if (!k) continue;
        for (int d = 0; d < 3; d++) {
            for (int mi = 0; mi < 6; mi++) {
                check_linear(k, pool, dts[d], 300, 200, ms[mi], 0, 300);  /* partial blocks */
                check_linear(k, pool, dts[d], 300, 200, ms[mi], 37, 170); /* mid-block range */
                check_linear(k, pool, dts[d], 5, 129, ms[mi], 0, 5);      /* tiny, 1 extra col */
                check_linear(k, pool, dts[d], 70, 600, ms[mi], 3, 67);    /* several K slabs */
            }
            check_linear(k, pool, dts[d], 70, 600, 300, 3, 67); /* m = 300: several M blocks */
        }
    }
    dsr1_pool_destroy(pool);
}

/* y[i] = x[i] W^T must not depend on the other rows of x nor on the thread count: the
 * engine promises bit-identical logits for a sequence alone or in a batch, and variants
 * may switch algorithms with m. Rows of a 300-row product against m = 1 and m = 3 and a
 * single-threaded run. */
static void test_linear_batch_invariance(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    srand(4);
    static const dsr1_dtype dts[] = {DSR1_DT_F8_E4M3, DSR1_DT_BF16, DSR1_DT_F32};
    const int m = 300, rows = 70, cols = 600, ldx = cols + 1, ldy = rows;
    float *x = malloc(sizeof(float) * m * ldx);
    float *y = malloc(sizeof(float) * m * ldy), *y1 = malloc(sizeof(float) * m * ldy);
    for (int i = 0; i < m * ldx; i++) x[i] = frand();
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        if (!k) continue;
        for (int d = 0; d < 3; d++) {
            rand_linear r = make_linear(dts[d], rows, cols);
            k->linear(pool, &r.w, 0, rows, x, ldx, m, y, ldy);
            k->linear(NULL, &r.w, 0, rows, x, ldx, m, y1, ldy);
            assert_memory_equal(y, y1, sizeof(float) * m * ldy);
            static const int at[] = {0, 7, 150, 297};
            for (int a = 0; a < 4; a++) {
                const int i = at[a];
                k->linear(pool, &r.w, 0, rows, x + (size_t)i * ldx, ldx, 1, y1, ldy);
                assert_memory_equal(y + (size_t)i * ldy, y1, sizeof(float) * rows);
                k->linear(pool, &r.w, 0, rows, x + (size_t)i * ldx, ldx, 3, y1, ldy);
                assert_memory_equal(y + (size_t)i * ldy, y1, sizeof(float) * 3 * rows);
            }
            free(r.data);
            free(r.scale);
        }
    }
    free(x);
    free(y);
    free(y1);
    dsr1_pool_destroy(pool);
}

/* Every e4m3 bit pattern (subnormals, both zeros, the largest values) times a block scale
 * must come out exactly as the table value times the scale: one-hot activation rows pick
 * single weights, through the decode (m = 1) and the batched (m = 256) paths. */
static void test_linear_fp8_exact(void **state)
{
    (void)state;
    uint8_t q[2 * 256];
    float scale[2] = {0.75f, 3.0e-3f}; /* [1 row block][2 column blocks] */
    for (int c = 0; c < 256; c++) {
        q[c] = (uint8_t)c;
        q[256 + c] = (uint8_t)(255 - c);
        if ((q[c] & 0x7f) == 0x7f) q[c] ^= 1; /* no NaN patterns */
        if ((q[256 + c] & 0x7f) == 0x7f) q[256 + c] ^= 1;
    }
    const dsr1_linear w = {DSR1_DT_F8_E4M3, 2, 256, q, scale};
    float *x = calloc(256 * 256, sizeof(float)), y[256 * 2], y1[2];
    for (int c = 0; c < 256; c++) x[c * 256 + c] = 1.0f;
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        if (!k) continue;
        k->linear(NULL, &w, 0, 2, x, 256, 256, y, 2);
        for (int c = 0; c < 256; c++)
            for (int r = 0; r < 2; r++) {
                const float want = dsr1_e4m3_to_f32(q[r * 256 + c]) * scale[c / 128];
                assert_true(y[c * 2 + r] == want);
                k->linear(NULL, &w, r, r + 1, x + c * 256, 256, 1, y1, 1);
                assert_true(y1[0] == want);
            }
    }
    free(x);
}

static void test_rmsnorm(void **state)
{
    (void)state;
    srand(2);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        if (!k) continue;
        static const int ms[] = {17, 300}; /* 300 x 333: big enough to be threaded */
        for (int mi = 0; mi < 2; mi++) {
            const int n = 333, m = ms[mi], ld = 400;
            float *x = malloc(sizeof(float) * m * ld), *y = malloc(sizeof(float) * m * ld);
            float g[333];
            for (int i = 0; i < m * ld; i++) x[i] = frand() * 3;
            for (int i = 0; i < n; i++) g[i] = 1 + frand() * 0.2f;
            k->rmsnorm(pool, x, ld, g, n, m, 1e-6f, y, ld);
            for (int i = 0; i < m; i++) {
                double ss = 0;
                for (int c = 0; c < n; c++) ss += (double)x[i * ld + c] * x[i * ld + c];
                double inv = 1 / sqrt(ss / n + 1e-6);
                for (int c = 0; c < n; c++)
                    assert_true(fabs(y[i * ld + c] - x[i * ld + c] * inv * g[c]) < 1e-5);
            }
            k->rmsnorm(pool, x, ld, g, n, m, 1e-6f, x, ld); /* in place */
            for (int i = 0; i < m; i++)
                assert_memory_equal(x + (size_t)i * ld, y + (size_t)i * ld, sizeof(float) * n);
            free(x);
            free(y);
        }
    }
    dsr1_pool_destroy(pool);
}

static void test_mla_attention(void **state)
{
    (void)state;
    srand(3);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        if (!k) continue;
        static const int ts[] = {1, 3, 17}, pos0s[] = {0, 5, 300}, hs[] = {3, 10};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) {
                /* heads = 10: groups of heads that do not divide evenly */
                const int heads = hs[(a + b) % 2], kvl = 40, rope = 8, ld = kvl + rope + 3;
                int t = ts[a], pos0 = pos0s[b], n = pos0 + t;
                float *qa = malloc(sizeof(float) * t * heads * kvl);
                float *qp = malloc(sizeof(float) * t * heads * rope);
                float *kv = malloc(sizeof(float) * n * ld);
                float *out = malloc(sizeof(float) * t * heads * kvl);
                for (int i = 0; i < t * heads * kvl; i++) qa[i] = frand();
                for (int i = 0; i < t * heads * rope; i++) qp[i] = frand();
                for (int i = 0; i < n * ld; i++) kv[i] = frand();
                k->mla_attention(pool, t, heads, kvl, rope, qa, qp, kv, ld, pos0, 0.3f, out);
                double *p = malloc(sizeof(double) * n);
                for (int i = 0; i < t; i++)
                    for (int h = 0; h < heads; h++) {
                        int cnt = pos0 + i + 1;
                        double mx = -1e300, sum = 0;
                        for (int s = 0; s < cnt; s++) {
                            double d = 0;
                            for (int c = 0; c < kvl; c++)
                                d += (double)qa[(i * heads + h) * kvl + c] * kv[s * ld + c];
                            for (int c = 0; c < rope; c++)
                                d += (double)qp[(i * heads + h) * rope + c] * kv[s * ld + kvl + c];
                            p[s] = d * 0.3;
                            if (p[s] > mx) mx = p[s];
                        }
                        for (int s = 0; s < cnt; s++) sum += (p[s] = exp(p[s] - mx));
                        for (int c = 0; c < kvl; c++) {
                            double o = 0;
                            for (int s = 0; s < cnt; s++) o += p[s] / sum * kv[s * ld + c];
                            assert_true(fabs(out[(i * heads + h) * kvl + c] - o) < 1e-5);
                        }
                    }
                free(p);
                free(qa);
                free(qp);
                free(kv);
                free(out);
            }
    }
    dsr1_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),           cmocka_unit_test(test_linear_batch_invariance),
        cmocka_unit_test(test_linear_fp8_exact), cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_mla_attention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
