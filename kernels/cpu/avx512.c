/* The AVX-512 kernel variant ("avx512"): float32 arithmetic on weights converted in
 * registers (the exact mode), with the same results contract as the portable variant:
 * every output element is computed by one thread in an order fixed by the shapes alone,
 * so results do not depend on the thread split or on the other rows of a batch.
 *
 * This file holds the ops table and the smaller kernels (transposed linear, RMSNorm, MLA
 * attention); the linear layer is in avx512_linear.c. Compiled with -mavx512f/bw/vl/dq
 * (kernels/meson.build, this file only); dispatch.c hands this table out only after
 * checking the CPU, and nothing here runs before that. */
#include <math.h>
#include <stdlib.h>

#include "avx512_common.h"

/* ---- linear_t: y[i][c] = sum_r x[i][r - r0] W[r][c] --------------------------------- */

#define LT_COLS 64 /* output columns per task: 4 vectors, inside one 128-column scale block */
#define LT_MR   6  /* activation rows per pass: 6 x 4 accumulators */

typedef struct {
    const dsr1_linear *w;
    int r0, r1;
    const float *x;
    int ldx, m;
    float *y;
    int ldy;
} lt_job;

/* Columns c .. c+64 (fewer at the end) for activation rows x[0 .. mr); the sum over r runs
 * in increasing r for every column, whatever the split (tasks own column ranges). */
DSR1_AVX512_INLINE void lt_block(dsr1_dtype dt, int mr, const lt_job *j, int c, const float *x,
                                 float *y)
{
    const dsr1_linear *w = j->w;
    const int n = w->cols - c < LT_COLS ? w->cols - c : LT_COLS;
    int nq[4];
    for (int q = 0; q < 4; q++) nq[q] = n - 16 * q < 0 ? 0 : n - 16 * q > 16 ? 16 : n - 16 * q;
    const size_t rowbytes = (size_t)w->cols * dsr1__wsize(dt);
    __m512 acc[LT_MR][4];
    for (int i = 0; i < mr; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm512_setzero_ps();
    for (int r = j->r0; r < j->r1; r++) {
        const char *row = (const char *)w->data + (size_t)r * rowbytes;
        const __m512 mul = _mm512_set1_ps(dsr1__wscale(w, r, c / DSR1_QBLOCK));
        __m512 wv[4];
        for (int q = 0; q < 4; q++)
            wv[q] = nq[q] == 16 ? dsr1__wload(dt, row, c + 16 * q, 16, mul)
                    : nq[q] > 0 ? dsr1__wload(dt, row, c + 16 * q, nq[q], mul)
                                : _mm512_setzero_ps();
        for (int i = 0; i < mr; i++) {
            const __m512 xb = _mm512_set1_ps(x[(size_t)i * j->ldx + (r - j->r0)]);
            for (int q = 0; q < 4; q++) acc[i][q] = _mm512_fmadd_ps(wv[q], xb, acc[i][q]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int q = 0; q < 4; q++)
            if (nq[q] > 0)
                _mm512_mask_storeu_ps(y + (size_t)i * j->ldy + c + 16 * q, dsr1__mask16(nq[q]),
                                      acc[i][q]);
}

#define LT_FN(DT)                                                                                  \
    static void lt_##DT(const lt_job *j, int c, int mr, const float *x, float *y)                  \
    {                                                                                              \
        switch (mr) {                                                                              \
        case 1:                                                                                    \
            lt_block(DT, 1, j, c, x, y);                                                           \
            break;                                                                                 \
        case 2:                                                                                    \
            lt_block(DT, 2, j, c, x, y);                                                           \
            break;                                                                                 \
        case 3:                                                                                    \
            lt_block(DT, 3, j, c, x, y);                                                           \
            break;                                                                                 \
        case 4:                                                                                    \
            lt_block(DT, 4, j, c, x, y);                                                           \
            break;                                                                                 \
        case 5:                                                                                    \
            lt_block(DT, 5, j, c, x, y);                                                           \
            break;                                                                                 \
        default:                                                                                   \
            lt_block(DT, 6, j, c, x, y);                                                           \
            break;                                                                                 \
        }                                                                                          \
    }
LT_FN(DSR1_DT_F8_E4M3)
LT_FN(DSR1_DT_BF16)
LT_FN(DSR1_DT_F32)

static void lt_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const lt_job *j = arg;
    void (*fn)(const lt_job *, int, int, const float *, float *) =
        j->w->dtype == DSR1_DT_F8_E4M3 ? lt_DSR1_DT_F8_E4M3
        : j->w->dtype == DSR1_DT_BF16  ? lt_DSR1_DT_BF16
                                       : lt_DSR1_DT_F32;
    for (int t = begin; t < end; t++)
        for (int i0 = 0; i0 < j->m; i0 += LT_MR) {
            const int mr = j->m - i0 < LT_MR ? j->m - i0 : LT_MR;
            fn(j, t * LT_COLS, mr, j->x + (size_t)i0 * j->ldx, j->y + (size_t)i0 * j->ldy);
        }
}

void dsr1__avx512_linear_t(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                           int ldx, int m, float *y, int ldy)
{
    if (m <= 0) return;
    lt_job j = {w, r0, r1, x, ldx, m, y, ldy};
    const long work = (long)(r1 - r0) * w->cols * (m + 1);
    dsr1_pool_run(work < 32768 ? NULL : pool, (w->cols + LT_COLS - 1) / LT_COLS, 1, lt_task, &j);
}

/* ---- RMSNorm ------------------------------------------------------------------------- */

typedef struct {
    const float *x;
    int ldx;
    const float *g;
    int n;
    float eps;
    float *y;
    int ldy;
} rms_job;

/* The sum of squares in double (as the portable kernel), the scaling in the portable order
 * (x * inv) * g; only the order of the double additions differs. */
static void rms_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const rms_job *j = arg;
    const int n = j->n;
    for (int i = begin; i < end; i++) {
        const float *xi = j->x + (size_t)i * j->ldx;
        float *yi = j->y + (size_t)i * j->ldy;
        __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
        for (int c = 0; c < n; c += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(dsr1__mask16(n - c), xi + c);
            const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
            const __m512d hi =
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
            a0 = _mm512_fmadd_pd(lo, lo, a0);
            a1 = _mm512_fmadd_pd(hi, hi, a1);
        }
        const double ss = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
        const __m512 inv = _mm512_set1_ps((float)(1.0 / sqrt(ss / n + j->eps)));
        for (int c = 0; c < n; c += 16) {
            const __mmask16 k = dsr1__mask16(n - c);
            const __m512 v = _mm512_maskz_loadu_ps(k, xi + c);
            const __m512 g = _mm512_maskz_loadu_ps(k, j->g + c);
            _mm512_mask_storeu_ps(yi + c, k, _mm512_mul_ps(_mm512_mul_ps(v, inv), g));
        }
    }
}

static void avx512_rmsnorm(dsr1_pool *pool, const float *x, int ldx, const float *g, int n, int m,
                           float eps, float *y, int ldy)
{
    rms_job j = {x, ldx, g, n, eps, y, ldy};
    dsr1_pool_run((long)m * n < 65536 ? NULL : pool, m, 4, rms_task, &j);
}

/* ---- MLA attention ------------------------------------------------------------------- */

/* Heads per group: one read of a cache row serves all of them (scores: 8 heads x 2 rows =
 * 16 accumulators; weighted sum: 8 heads x 32 columns). */
#define AT_HG 8
/* Cache rows per tile (64 x 576 floats = 147 KB, L2-resident): a task runs all its groups
 * of heads over one tile before the next, so that the cache streams from memory once per
 * task and pass, not once per group. */
#define AT_TILE 64
/* Groups per pool chunk, at least: fewer, larger chunks read the cache fewer times. */
#define AT_GRAIN 4

typedef struct {
    int t, heads, kvl, rope;
    const float *q_abs, *q_pe;
    const float *const *kv_blocks;
    int block_tokens, ld_kv, pos0;
    float scale;
    float *out;
} attn_job;

/* rows[s - s0] = cache row s, for s in s0 .. s1 (a tile, which may span blocks). */
static void tile_rows(const attn_job *j, int s0, int s1, const float **rows)
{
    for (int s = s0; s < s1; s++)
        rows[s - s0] = j->kv_blocks[s / j->block_tokens] + (size_t)(s % j->block_tokens) * j->ld_kv;
}

/* acc[h] += q[h][c .. c+16) * row[c .. c+16) over c < len, for two rows at once */
DSR1_AVX512_INLINE void score_part(int hn, const float *const *q, const float *row0,
                                   const float *row1, int len, __m512 a0[AT_HG], __m512 a1[AT_HG])
{
    for (int c = 0; c < len; c += 16) {
        const __mmask16 k = dsr1__mask16(len - c);
        const __m512 k0 = _mm512_maskz_loadu_ps(k, row0 + c);
        const __m512 k1 = _mm512_maskz_loadu_ps(k, row1 + c);
        for (int h = 0; h < hn; h++) {
            const __m512 qv = _mm512_maskz_loadu_ps(k, q[h] + c);
            a0[h] = _mm512_fmadd_ps(qv, k0, a0[h]);
            a1[h] = _mm512_fmadd_ps(qv, k1, a1[h]);
        }
    }
}

/* Scores of heads h0 .. h0+hn of token i against cache rows s0 .. s1 (rows: tile_rows) into
 * p[h][s] (row stride n). Each score is a 16-lane dot product over the latent then the rope
 * values. */
DSR1_AVX512_INLINE void score_tile(int hn, const attn_job *j, int i, int h0, int s0, int s1, int n,
                                   const float *const *rows, float *p)
{
    const float *qa[AT_HG], *qp[AT_HG];
    for (int h = 0; h < hn; h++) {
        qa[h] = j->q_abs + ((size_t)i * j->heads + h0 + h) * j->kvl;
        qp[h] = j->q_pe + ((size_t)i * j->heads + h0 + h) * j->rope;
    }
    for (int s = s0; s < s1; s += 2) {
        const float *r0 = rows[s - s0];
        const float *r1 = s + 1 < s1 ? rows[s + 1 - s0] : r0; /* odd count: repeat, not stored */
        __m512 a0[AT_HG], a1[AT_HG];
        for (int h = 0; h < hn; h++) a0[h] = a1[h] = _mm512_setzero_ps();
        score_part(hn, qa, r0, r1, j->kvl, a0, a1);
        score_part(hn, qp, r0 + j->kvl, r1 + j->kvl, j->rope, a0, a1);
        for (int h = 0; h < hn; h++) {
            p[(size_t)h * n + s] = _mm512_reduce_add_ps(a0[h]) * j->scale;
            if (s + 1 < s1) p[(size_t)h * n + s + 1] = _mm512_reduce_add_ps(a1[h]) * j->scale;
        }
    }
}

/* out[h] += sum over s in s0 .. s1, in order, of p[h][s] kv[s][:kvl], for heads h0 .. h0+hn
 * of token i; out holds the running sums between tiles. */
DSR1_AVX512_INLINE void sum_tile(int hn, const attn_job *j, int i, int h0, int s0, int s1, int n,
                                 const float *const *rows, const float *p)
{
    const int kvl = j->kvl;
    for (int c = 0; c < kvl; c += 32) {
        const __mmask16 k0 = dsr1__mask16(kvl - c);
        const __mmask16 k1 = dsr1__mask16(kvl - c - 16 < 0 ? 0 : kvl - c - 16);
        float *o[AT_HG];
        __m512 o0[AT_HG], o1[AT_HG];
        for (int h = 0; h < hn; h++) {
            o[h] = j->out + ((size_t)i * j->heads + h0 + h) * kvl + c;
            o0[h] = _mm512_maskz_loadu_ps(k0, o[h]);
            o1[h] = _mm512_maskz_loadu_ps(k1, o[h] + 16);
        }
        for (int s = s0; s < s1; s++) {
            const float *row = rows[s - s0] + c;
            const __m512 v0 = _mm512_maskz_loadu_ps(k0, row);
            const __m512 v1 = _mm512_maskz_loadu_ps(k1, row + 16);
            for (int h = 0; h < hn; h++) {
                const __m512 wb = _mm512_set1_ps(p[(size_t)h * n + s]);
                o0[h] = _mm512_fmadd_ps(wb, v0, o0[h]);
                o1[h] = _mm512_fmadd_ps(wb, v1, o1[h]);
            }
        }
        for (int h = 0; h < hn; h++) {
            _mm512_mask_storeu_ps(o[h], k0, o0[h]);
            _mm512_mask_storeu_ps(o[h] + 16, k1, o1[h]);
        }
    }
}

#define AT_DISPATCH(FN, hn, ...)                                                                   \
    switch (hn) {                                                                                  \
    case 1:                                                                                        \
        FN(1, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    case 2:                                                                                        \
        FN(2, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    case 3:                                                                                        \
        FN(3, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    case 4:                                                                                        \
        FN(4, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    case 5:                                                                                        \
        FN(5, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    case 6:                                                                                        \
        FN(6, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    case 7:                                                                                        \
        FN(7, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    default:                                                                                       \
        FN(8, __VA_ARGS__);                                                                        \
        break;                                                                                     \
    }

/* Groups g0 .. g1 of token i: scores tile by tile, softmax per head, weighted sums tile by
 * tile. p: [g1 - g0][AT_HG][n] scratch. */
static void attn_token(const attn_job *j, int i, int g0, int g1, float *p)
{
    const int n = j->pos0 + i + 1; /* causal: cache rows 0 .. pos0+i */
    const float *rows[AT_TILE];
    for (int s0 = 0; s0 < n; s0 += AT_TILE) {
        const int s1 = s0 + AT_TILE < n ? s0 + AT_TILE : n;
        tile_rows(j, s0, s1, rows);
        for (int g = g0; g < g1; g++) {
            const int h0 = g * AT_HG, hn = j->heads - h0 < AT_HG ? j->heads - h0 : AT_HG;
            AT_DISPATCH(score_tile, hn, j, i, h0, s0, s1, n, rows,
                        p + (size_t)(g - g0) * AT_HG * n);
        }
    }
    for (int g = g0; g < g1; g++) {
        const int h0 = g * AT_HG, hn = j->heads - h0 < AT_HG ? j->heads - h0 : AT_HG;
        for (int h = 0; h < hn; h++) {
            float *ph = p + ((size_t)(g - g0) * AT_HG + h) * n, mx = -INFINITY, sum = 0;
            for (int s = 0; s < n; s++) mx = ph[s] > mx ? ph[s] : mx;
            for (int s = 0; s < n; s++) sum += (ph[s] = expf(ph[s] - mx));
            const float inv = 1.0f / sum;
            for (int s = 0; s < n; s++) ph[s] *= inv;
            float *o = j->out + ((size_t)i * j->heads + h0 + h) * j->kvl;
            for (int c = 0; c < j->kvl; c += 16)
                _mm512_mask_storeu_ps(o + c, dsr1__mask16(j->kvl - c), _mm512_setzero_ps());
        }
    }
    for (int s0 = 0; s0 < n; s0 += AT_TILE) {
        const int s1 = s0 + AT_TILE < n ? s0 + AT_TILE : n;
        tile_rows(j, s0, s1, rows);
        for (int g = g0; g < g1; g++) {
            const int h0 = g * AT_HG, hn = j->heads - h0 < AT_HG ? j->heads - h0 : AT_HG;
            AT_DISPATCH(sum_tile, hn, j, i, h0, s0, s1, n, rows, p + (size_t)(g - g0) * AT_HG * n);
        }
    }
}

/* Tasks are (token, group of heads), token-major; a chunk handles its tasks token by token. */
static void attn_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const attn_job *j = arg;
    const int groups = (j->heads + AT_HG - 1) / AT_HG;
    const int span = end - begin < groups ? end - begin : groups;
    float *p = malloc(sizeof(float) * AT_HG * (size_t)span * (j->pos0 + j->t));
    if (!p) abort(); /* scores of the chunk's heads; failing here, the process is lost */
    for (int task = begin; task < end;) {
        const int i = task / groups, g0 = task % groups;
        const int g1 = end - task < groups - g0 ? g0 + (end - task) : groups;
        attn_token(j, i, g0, g1, p);
        task += g1 - g0;
    }
    free(p);
}

static void avx512_mla_attention(dsr1_pool *pool, int t, int heads, int kvl, int rope,
                                 const float *q_abs, const float *q_pe,
                                 const float *const *kv_blocks, int block_tokens, int ld_kv,
                                 int pos0, float scale, float *out)
{
    attn_job j = {t,         heads,        kvl,   rope, q_abs, q_pe,
                  kv_blocks, block_tokens, ld_kv, pos0, scale, out};
    dsr1_pool_run(pool, t * ((heads + AT_HG - 1) / AT_HG), AT_GRAIN, attn_task, &j);
}

static const dsr1_kernels avx512 = {
    .name = "avx512",
    .linear = dsr1__avx512_linear,
    .expert_ffn = dsr1__avx512_expert_ffn,
    .linear_t = dsr1__avx512_linear_t,
    .rmsnorm = avx512_rmsnorm,
    .mla_attention = avx512_mla_attention,
};

const dsr1_kernels *dsr1__kernels_avx512(void)
{
    return &avx512;
}
