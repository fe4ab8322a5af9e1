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
    const int ldx = cols + 3, ldy = (r1 - r0) + 5;
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
    static const int ms[] = {1, 3, 17};
    static const dsr1_dtype dts[] = {DSR1_DT_F8_E4M3, DSR1_DT_BF16, DSR1_DT_F32};
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        if (!k) continue;
        for (int d = 0; d < 3; d++)
            for (int mi = 0; mi < 3; mi++) {
                check_linear(k, pool, dts[d], 300, 200, ms[mi], 0, 300);  /* partial blocks */
                check_linear(k, pool, dts[d], 300, 200, ms[mi], 37, 170); /* mid-block range */
                check_linear(k, pool, dts[d], 5, 129, ms[mi], 0, 5);      /* tiny, 1 extra col */
            }
    }
    dsr1_pool_destroy(pool);
}

static void test_rmsnorm(void **state)
{
    (void)state;
    srand(2);
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        const int n = 333, m = 17, ld = 400;
        float *x = malloc(sizeof(float) * m * ld), *y = malloc(sizeof(float) * m * ld);
        float g[333];
        for (int i = 0; i < m * ld; i++) x[i] = frand() * 3;
        for (int i = 0; i < n; i++) g[i] = 1 + frand() * 0.2f;
        k->rmsnorm(NULL, x, ld, g, n, m, 1e-6f, y, ld);
        for (int i = 0; i < m; i++) {
            double ss = 0;
            for (int c = 0; c < n; c++) ss += (double)x[i * ld + c] * x[i * ld + c];
            double inv = 1 / sqrt(ss / n + 1e-6);
            for (int c = 0; c < n; c++)
                assert_true(fabs(y[i * ld + c] - x[i * ld + c] * inv * g[c]) < 1e-5);
        }
        k->rmsnorm(NULL, x, ld, g, n, m, 1e-6f, x, ld); /* in place */
        assert_memory_equal(x, y, sizeof(float) * n);
        free(x);
        free(y);
    }
}

static void test_mla_attention(void **state)
{
    (void)state;
    srand(3);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    for (size_t v = 0; v < NVAR; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(variants[v]);
        const int heads = 3, kvl = 40, rope = 8, ld = kvl + rope + 3;
        static const int ts[] = {1, 3, 17}, pos0s[] = {0, 5, 300};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++) {
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
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_mla_attention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
