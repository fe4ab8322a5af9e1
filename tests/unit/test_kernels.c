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
/* with the fast mode, which has its own arithmetic (test_kernels_fast.c) but the same
 * promise that expert_ffn is its linear expert after expert */
static const char *all_variants[] = {"portable", "avx512", "bf16-tiles"};
#define NALL (sizeof(all_variants) / sizeof(all_variants[0]))

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

/* linear and linear_t within 1e-5 x sum |w x| of a double reference; with bf16_x, the
 * reference of linear takes the activations rounded to bf16 (the bf16 precision mode). */
static void check_linear(const dsr1_kernels *k, dsr1_pool *pool, dsr1_dtype dt, int rows, int cols,
                         int m, int r0, int r1, bool bf16_x)
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
                const float xv = x[i * ldx + c];
                const double xr = bf16_x ? dsr1_bf16_to_f32(dsr1_f32_to_bf16(xv)) : xv;
                s += wval(&r, row, c) * xr;
                a += fabs(wval(&r, row, c) * xr);
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
                check_linear(k, pool, dts[d], 300, 200, ms[mi], 0, 300, false); /* partial blocks */
                check_linear(k, pool, dts[d], 300, 200, ms[mi], 37, 170, false); /* mid-block */
                check_linear(k, pool, dts[d], 5, 129, ms[mi], 0, 5, false);      /* 1 extra col */
                check_linear(k, pool, dts[d], 70, 600, ms[mi], 3, 67, false);    /* K slabs */
            }
            check_linear(k, pool, dts[d], 70, 600, 300, 3, 67, false); /* several M blocks */
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

/* avx512-bf16 is retired (it was not batch-invariant): the name selects the fast mode,
 * bf16-tiles, where this build and CPU have it, and nothing where they do not. */
static void test_avx512_bf16_alias(void **state)
{
    (void)state;
    const dsr1_kernels *alias = dsr1_kernels_select("avx512-bf16");
    const dsr1_kernels *tiles = dsr1_kernels_select("bf16-tiles");
    assert_ptr_equal(alias, tiles);
    if (tiles) assert_string_equal(alias->name, tiles->name);
}

/* Which names are the fast mode: the coordinator and the workers compare their modes by
 * this, so a fast name read as exact (or the reverse) would refuse a matching grid. Every
 * table dsr1_kernels_select hands out must agree with its own name: a fast table keeps a
 * bf16 cache, an exact one does not. */
static void test_name_is_fast(void **state)
{
    (void)state;
    assert_true(dsr1_kernels_name_is_fast("bf16-tiles"));
    assert_true(dsr1_kernels_name_is_fast("bf16-tiles-emulated"));
    assert_true(dsr1_kernels_name_is_fast("avx512-bf16"));
    assert_false(dsr1_kernels_name_is_fast(NULL));
    assert_false(dsr1_kernels_name_is_fast("auto"));
    assert_false(dsr1_kernels_name_is_fast("portable"));
    assert_false(dsr1_kernels_name_is_fast("avx512"));
    assert_false(dsr1_kernels_name_is_fast(""));
    assert_false(dsr1_kernels_name_is_fast("bf16-tiles-"));
    assert_false(dsr1_kernels_name_is_fast("bf16"));
    const char *names[] = {NULL,         "auto",        "portable",           "avx512",
                           "bf16-tiles", "avx512-bf16", "bf16-tiles-emulated"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const dsr1_kernels *k = dsr1_kernels_select(names[i]);
        if (!k) continue; /* not in this build or on this CPU */
        assert_int_equal(dsr1_kernels_name_is_fast(k->name), k->kv_bf16 != 0);
        if (names[i] && strcmp(names[i], "auto"))
            assert_int_equal(dsr1_kernels_name_is_fast(names[i]), k->kv_bf16 != 0);
    }
}

/* ---- expert_ffn ---------------------------------------------------------------------- */

/* The experts run one after another through k->linear: what worker/moe.c did before the
 * grouped entry. silu(g) * u written as the kernels write it. */
static void experts_one_by_one(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_expert *ex,
                               int ne, const float *x, int ldx, float *y, int ldy)
{
    for (int e = 0; e < ne; e++) {
        const int n = ex[e].n, kk = ex[e].gate->cols, inter = ex[e].gate->rows;
        const int d = ex[e].down->rows;
        if (n == 0) continue;
        float *xin = malloc(sizeof(float) * n * kk), *g = malloc(sizeof(float) * n * inter);
        float *u = malloc(sizeof(float) * n * inter), *o = malloc(sizeof(float) * n * d);
        for (int i = 0; i < n; i++)
            memcpy(xin + (size_t)i * kk, x + (size_t)ex[e].rows[i] * ldx, sizeof(float) * kk);
        k->linear(pool, ex[e].gate, 0, inter, xin, kk, n, g, inter);
        k->linear(pool, ex[e].up, 0, inter, xin, kk, n, u, inter);
        for (int i = 0; i < n * inter; i++) {
            const float s = g[i] / (1.0f + expf(-g[i]));
            g[i] = s * u[i];
        }
        k->linear(pool, ex[e].down, 0, d, g, inter, n, o, d);
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++)
                y[(size_t)ex[e].rows[i] * ldy + c] += o[(size_t)i * d + c] * ex[e].weight[i];
        free(xin);
        free(g);
        free(u);
        free(o);
    }
}

#define FFN_NE 6

/* Six experts ([inter = 100][hidden = 200] gate and up, [200][100] down: partial 128-blocks,
 * units that do not divide 100 or 200); each of m tokens goes to two of experts 0, 1, 3, 4,
 * so experts 2 and 5 get none. */
typedef struct {
    rand_linear w[FFN_NE][3];
    dsr1_expert ex[FFN_NE];
    int rows[FFN_NE][300];
    float weight[FFN_NE][300];
} ffn_case;

static void ffn_case_make(ffn_case *f, dsr1_dtype dt, int m)
{
    static const int used[] = {0, 1, 3, 4};
    for (int e = 0; e < FFN_NE; e++) {
        f->w[e][0] = make_linear(dt, 100, 200);
        f->w[e][1] = make_linear(dt, 100, 200);
        f->w[e][2] = make_linear(dt, 200, 100);
        f->ex[e] =
            (dsr1_expert){&f->w[e][0].w, &f->w[e][1].w, &f->w[e][2].w, 0, f->rows[e], f->weight[e]};
    }
    for (int t = 0; t < m; t++) {
        const int a = used[rand() % 4], b = used[(a + 1 + rand() % 3) % 4];
        for (int j = 0; j < 2; j++) {
            dsr1_expert *x = &f->ex[j ? b : a];
            f->rows[x - f->ex][x->n] = t;
            f->weight[x - f->ex][x->n++] = 0.1f + 0.9f * fabsf(frand());
        }
    }
}

static void ffn_case_free(ffn_case *f)
{
    for (int e = 0; e < FFN_NE; e++)
        for (int j = 0; j < 3; j++) {
            free(f->w[e][j].data);
            free(f->w[e][j].scale);
        }
}

/* Every variant's expert_ffn against its own linear applied expert after expert, bit for
 * bit, into strided x and y (y is accumulated into: random to start with; its padding must
 * stay), at m = 1, 3, 17 and 300 tokens (300 x 2 routed rows: more than one wave). */
static void test_expert_ffn(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    srand(5);
    static const int ms[] = {1, 3, 17, 300};
    const int ldx = 203, ldy = 207;
    for (size_t v = 0; v < NALL; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(all_variants[v]);
        if (!k) continue;
        for (int mi = 0; mi < 4; mi++)
            for (int d = 0; d < 2; d++) {
                const int m = ms[mi];
                if (d == 1 && m != 17) continue; /* bf16 weights: one size is enough */
                ffn_case *f = calloc(1, sizeof(*f));
                ffn_case_make(f, d ? DSR1_DT_BF16 : DSR1_DT_F8_E4M3, m);
                float *x = malloc(sizeof(float) * m * ldx), *y = malloc(sizeof(float) * m * ldy);
                float *want = malloc(sizeof(float) * m * ldy);
                for (int i = 0; i < m * ldx; i++) x[i] = frand();
                for (int i = 0; i < m * ldy; i++) want[i] = y[i] = frand();
                experts_one_by_one(k, pool, f->ex, FFN_NE, x, ldx, want, ldy);
                assert_int_equal(k->expert_ffn(pool, f->ex, FFN_NE, x, ldx, y, ldy), DSR1_OK);
                assert_memory_equal(y, want, sizeof(float) * m * ldy);
                free(x);
                free(y);
                free(want);
                ffn_case_free(f);
                free(f);
            }
    }
    dsr1_pool_destroy(pool);
}

/* Shapes that do not fit together are refused, y untouched; no tokens at all is a no-op. */
static void test_expert_ffn_bad_shapes(void **state)
{
    (void)state;
    srand(6);
    ffn_case *f = calloc(1, sizeof(*f));
    ffn_case_make(f, DSR1_DT_F8_E4M3, 4);
    float x[4 * 200], y[4 * 200], y0[4 * 200];
    for (int i = 0; i < 4 * 200; i++) {
        x[i] = frand();
        y0[i] = y[i] = frand();
    }
    for (size_t v = 0; v < NALL; v++) {
        const dsr1_kernels *k = dsr1_kernels_select(all_variants[v]);
        if (!k) continue;
        dsr1_expert ex[FFN_NE];
        memcpy(ex, f->ex, sizeof(ex));
        ex[3].up = ex[3].down; /* [200][100] where [100][200] belongs */
        assert_int_equal(k->expert_ffn(NULL, ex, FFN_NE, x, 200, y, 200), DSR1_ERR_INVALID_ARG);
        assert_memory_equal(y, y0, sizeof(y));
        for (int e = 0; e < FFN_NE; e++) ex[e].n = 0;
        assert_int_equal(k->expert_ffn(NULL, ex, FFN_NE, x, 200, y, 200), DSR1_OK);
        assert_memory_equal(y, y0, sizeof(y));
    }
    ffn_case_free(f);
    free(f);
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

/* A sequence's n cache rows kv[n][ld] copied into a paged pool of blocks of bt rows: its
 * blocks get shuffled ids among twice as many, so they are neither contiguous nor in order.
 * Returns the pool (caller frees) and fills blocks[] with the first row of each. */
static float *page_rows(const float *kv, int n, int ld, int bt, const float **blocks)
{
    const int need = (n + bt - 1) / bt, total = 2 * need + 1;
    float *pool = malloc(sizeof(float) * total * bt * ld);
    int *ids = malloc(sizeof(int) * total);
    for (int i = 0; i < total * bt * ld; i++) pool[i] = frand(); /* unused rows: noise */
    for (int i = 0; i < total; i++) ids[i] = i;
    for (int i = total - 1; i > 0; i--) {
        const int r = rand() % (i + 1), t = ids[i];
        ids[i] = ids[r];
        ids[r] = t;
    }
    for (int b = 0; b < need; b++) {
        blocks[b] = pool + (size_t)ids[b] * bt * ld;
        const int rows = n - b * bt < bt ? n - b * bt : bt;
        memcpy((float *)blocks[b], kv + (size_t)b * bt * ld, sizeof(float) * rows * ld);
    }
    free(ids);
    return pool;
}

/* Attention over a paged cache: against the double reference for every variant, and
 * bit-identical whatever the block size (5 and 16 rows, which do not divide the positions,
 * and one block holding everything). */
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
                const int bts[] = {5, 16, n};
                float *qa = malloc(sizeof(float) * t * heads * kvl);
                float *qp = malloc(sizeof(float) * t * heads * rope);
                float *kv = malloc(sizeof(float) * n * ld);
                float *out = malloc(sizeof(float) * t * heads * kvl);
                float *first = malloc(sizeof(float) * t * heads * kvl);
                const float **blocks = malloc(sizeof(float *) * n);
                for (int i = 0; i < t * heads * kvl; i++) qa[i] = frand();
                for (int i = 0; i < t * heads * rope; i++) qp[i] = frand();
                for (int i = 0; i < n * ld; i++) kv[i] = frand();
                for (int bi = 0; bi < 3; bi++) {
                    float *paged = page_rows(kv, n, ld, bts[bi], blocks);
                    k->mla_attention(pool, t, heads, kvl, rope, qa, qp, blocks, bts[bi], ld, pos0,
                                     0.3f, bi ? out : first);
                    free(paged);
                }
                assert_memory_equal(out, first, sizeof(float) * t * heads * kvl);
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
                free(first);
                free(blocks);
            }
    }
    dsr1_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_linear_batch_invariance),
        cmocka_unit_test(test_linear_fp8_exact),
        cmocka_unit_test(test_avx512_bf16_alias),
        cmocka_unit_test(test_name_is_fast),
        cmocka_unit_test(test_expert_ffn),
        cmocka_unit_test(test_expert_ffn_bad_shapes),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_mla_attention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
