/* AVX-512 linear layer y = x W^T for FP8 e4m3 (128x128 block scales), bf16 and f32
 * weights, float32 arithmetic (the exact mode).
 *
 * One arithmetic, two paths. Every output y[i][r] is a 16-lane dot product. Per 128-column
 * scale block b, lane l sums by fused multiply-add, in increasing k, the products of the
 * converted (unscaled) weight W[r][k] and x[i][k] for the k = l (mod 16) of the block; the
 * lane's running total then takes that block sum times the block's scale by one more
 * fused multiply-add (t = fma(blocksum, scale, t)); at the end one fixed tree adds the 16
 * lanes (hsum). Scaling once per block instead of per weight saves a multiply per weight,
 * which is what limits the decode path (the weight conversion is the bottleneck, not the
 * FMAs); the error is that of an ordinary float32 dot product. Both paths below do exactly
 * this, so an output depends only on its own activation row and weight row: not on the
 * thread split, not on m, not on which path ran — the engine's batch invariance holds.
 *
 * - m <= SMALL_M (decode): bandwidth-bound. A task streams a group of 8 weight rows once,
 *   block by block, converting in registers; 8, 4 or 2 rows at a time against all m rows
 *   (so that enough loads are in flight and the block sums fit in registers), with a
 *   software prefetch of the next group (rows of 2 KB are too short for the hardware
 *   prefetcher to ramp up). For m >= 2 the rows of x are first copied to a padded buffer:
 *   rows a multiple of 4 KB apart (K = 7168, 2048) would all map to the same L1 sets.
 * - larger m (prefill): compute-bound. The activations are packed block-major in
 *   superblocks of up to 256 rows (7 MB at K = 7168, they stay in the last-level cache). A
 *   task converts 16 weight rows once per superblock into an L2-resident panel and runs
 *   groups of 16 activation rows against it, block by block, in a 4x4 register-blocked
 *   micro-kernel (16 accumulators); the lane totals of a group (16 x 16 vectors) stay in
 *   L1 between blocks. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "avx512_common.h"

#define SMALL_M 8  /* m up to this: streaming path */
#define SM_ROWS 8  /* weight rows per streaming task */
#define TB_NB   16 /* weight rows per tiled task (a converted panel of 16 x K) */
#define TB_KB   DSR1_QBLOCK
#define TB_MG   16  /* activation rows per group (their totals stay in L1) */
#define TB_MS   256 /* activation rows per superblock (packed: 7 MB at K = 7168) */
#define TB_MR   4   /* micro-kernel activation rows */
#define TB_NR   4   /* micro-kernel weight rows */

typedef struct {
    const dsr1_linear *w;
    int r0, r1;
    const float *x;
    int ldx, m;
    float *y;
    int ldy;
} lin_job;

/* The fixed reduction tree shared by both paths. */
DSR1_AVX512_INLINE float hsum(__m512 v)
{
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

DSR1_AVX512_INLINE __m512 xload(const float *p, int n)
{
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(dsr1__mask16(n), p);
}

/* ---- streaming path ---------------------------------------------------------------- */

/* One 16-column step: n = 16 (constant) or the tail count. */
DSR1_AVX512_INLINE void small_step(dsr1_dtype dt, int nr, int mm, const char *const *wr,
                                   const float *x, int ldx, int c, int n, __m512 acc[][SMALL_M])
{
    __m512 xv[SMALL_M];
    for (int i = 0; i < mm; i++) xv[i] = xload(x + (size_t)i * ldx + c, n);
    for (int jj = 0; jj < nr; jj++) {
        const __m512 wv = dsr1__wraw(dt, wr[jj], c, n);
        for (int i = 0; i < mm; i++) acc[jj][i] = _mm512_fmadd_ps(wv, xv[i], acc[jj][i]);
    }
}

/* Rows ra .. ra+nrows (nrows <= SM_ROWS) against mm activation rows; y at (row 0, ra).
 * Block by block, nr rows at a time (the block of x stays in L1 across them); a short
 * group repeats its last row (computed, not stored). */
DSR1_AVX512_INLINE void small_group(dsr1_dtype dt, int nr, int mm, const dsr1_linear *w, int ra,
                                    int nrows, const float *x, int ldx, float *y, int ldy)
{
    const int k = w->cols;
    const size_t es = dsr1__wsize(dt);
    const char *wr[SM_ROWS];
    int rr[SM_ROWS];
    for (int jj = 0; jj < SM_ROWS; jj++) {
        rr[jj] = ra + (jj < nrows ? jj : nrows - 1);
        wr[jj] = (const char *)w->data + (size_t)rr[jj] * k * es;
    }
    __m512 tot[SM_ROWS][SMALL_M];
    for (int jj = 0; jj < SM_ROWS; jj++)
        for (int i = 0; i < mm; i++) tot[jj][i] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < k; c0 += DSR1_QBLOCK, b++) {
        const int c1 = c0 + DSR1_QBLOCK < k ? c0 + DSR1_QBLOCK : k;
        { /* the next group's rows, a block's worth per block: short rows (2 KB at K = 2048)
           * are too-short streams for the hardware prefetcher; a sequential hint is not */
            const size_t chunk = (size_t)SM_ROWS * DSR1_QBLOCK * es;
            const char *pf = (const char *)w->data + (size_t)(ra + SM_ROWS) * k * es + b * chunk;
            for (size_t l = 0; l < chunk; l += 64) _mm_prefetch(pf + l, _MM_HINT_T2);
        }
        for (int g = 0; g < SM_ROWS; g += nr) {
            if (g < nrows) {
                __m512 acc[SM_ROWS][SMALL_M];
                for (int jj = 0; jj < nr; jj++)
                    for (int i = 0; i < mm; i++) acc[jj][i] = _mm512_setzero_ps();
                int c = c0;
                for (; c + 16 <= c1; c += 16) small_step(dt, nr, mm, wr + g, x, ldx, c, 16, acc);
                if (c < c1) small_step(dt, nr, mm, wr + g, x, ldx, c, c1 - c, acc);
                for (int jj = 0; jj < nr; jj++) {
                    const __m512 mul = _mm512_set1_ps(dsr1__wscale(w, rr[g + jj], b));
                    for (int i = 0; i < mm; i++)
                        tot[g + jj][i] = _mm512_fmadd_ps(acc[jj][i], mul, tot[g + jj][i]);
                }
            }
        }
    }
    for (int jj = 0; jj < nrows; jj++)
        for (int i = 0; i < mm; i++) y[(size_t)i * ldy + jj] = hsum(tot[jj][i]);
}

/* Weight rows per step for mm activation rows: nr x mm block sums stay in registers, and
 * with few activation rows many weight streams are in flight. */
#define SM_NR(MM) ((MM) <= 2 ? 8 : (MM) <= 4 ? 4 : 2)

#define SMALL_FN(DT, MM)                                                                           \
    static void small_##DT##_##MM(const dsr1_linear *w, int ra, int nrows, const float *x,         \
                                  int ldx, float *y, int ldy)                                      \
    {                                                                                              \
        small_group(DT, SM_NR(MM), MM, w, ra, nrows, x, ldx, y, ldy);                              \
    }
#define SMALL_FNS(DT)                                                                              \
    SMALL_FN(DT, 1)                                                                                \
    SMALL_FN(DT, 2)                                                                                \
    SMALL_FN(DT, 3)                                                                                \
    SMALL_FN(DT, 4) SMALL_FN(DT, 5) SMALL_FN(DT, 6) SMALL_FN(DT, 7) SMALL_FN(DT, 8)
SMALL_FNS(DSR1_DT_F8_E4M3)
SMALL_FNS(DSR1_DT_BF16)
SMALL_FNS(DSR1_DT_F32)

typedef void (*small_fn)(const dsr1_linear *w, int ra, int nrows, const float *x, int ldx, float *y,
                         int ldy);
#define SMALL_ROW(DT)                                                                              \
    {                                                                                              \
        small_##DT##_1, small_##DT##_2, small_##DT##_3, small_##DT##_4, small_##DT##_5,            \
            small_##DT##_6, small_##DT##_7, small_##DT##_8                                         \
    }
static const small_fn small_fns[3][SMALL_M] = {SMALL_ROW(DSR1_DT_F8_E4M3), SMALL_ROW(DSR1_DT_BF16),
                                               SMALL_ROW(DSR1_DT_F32)};

static int dtype_index(dsr1_dtype dt)
{
    return dt == DSR1_DT_F8_E4M3 ? 0 : dt == DSR1_DT_BF16 ? 1 : 2;
}

static void small_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const lin_job *j = arg;
    const small_fn *fns = small_fns[dtype_index(j->w->dtype)];
    /* up to 6 activation rows in one pass; 7 and 8 in passes of 4 (4 weight rows at a
     * time), which measured faster than one pass of 8 (2 weight rows at a time) */
    const int chunk = j->m <= 6 ? j->m : 4;
    for (int t = begin; t < end; t++) {
        const int ra = j->r0 + t * SM_ROWS;
        const int nrows = j->r1 - ra < SM_ROWS ? j->r1 - ra : SM_ROWS;
        for (int i0 = 0; i0 < j->m; i0 += chunk) {
            const int mm = j->m - i0 < chunk ? j->m - i0 : chunk;
            fns[mm - 1](j->w, ra, nrows, j->x + (size_t)i0 * j->ldx, j->ldx,
                        j->y + (size_t)i0 * j->ldy + (ra - j->r0), j->ldy);
        }
    }
}

/* ---- tiled path -------------------------------------------------------------------- */

/* Convert rows ra .. ra+nrows of W, all columns, into the panel P (row stride ldp floats,
 * unscaled) and the rows' multipliers into mul[block][TB_NB]; rows past nrows and the
 * columns past the last (up to the next multiple of 16) are zero. */
DSR1_AVX512_INLINE void panel_fill_dt(dsr1_dtype dt, const dsr1_linear *w, int ra, int nrows,
                                      float *P, size_t ldp, float *mul)
{
    const int k = w->cols, nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    const size_t rowbytes = (size_t)k * dsr1__wsize(dt);
    for (int jj = 0; jj < TB_NB; jj++) {
        float *p = P + (size_t)jj * ldp;
        if (jj >= nrows) {
            for (int c = 0; c < k; c += 16) _mm512_store_ps(p + c, _mm512_setzero_ps());
            for (int b = 0; b < nb; b++) mul[b * TB_NB + jj] = 0;
            continue;
        }
        const int r = ra + jj;
        const char *row = (const char *)w->data + (size_t)r * rowbytes;
        for (int b = 0; b < nb; b++) mul[b * TB_NB + jj] = dsr1__wscale(w, r, b);
        int c = 0;
        for (; c + 16 <= k; c += 16) _mm512_store_ps(p + c, dsr1__wraw(dt, row, c, 16));
        if (c < k) _mm512_store_ps(p + c, dsr1__wraw(dt, row, c, k - c));
    }
}

static void panel_fill(const dsr1_linear *w, int ra, int nrows, float *P, size_t ldp, float *mul)
{
    switch (w->dtype) {
    case DSR1_DT_F8_E4M3:
        panel_fill_dt(DSR1_DT_F8_E4M3, w, ra, nrows, P, ldp, mul);
        break;
    case DSR1_DT_BF16:
        panel_fill_dt(DSR1_DT_BF16, w, ra, nrows, P, ldp, mul);
        break;
    default:
        panel_fill_dt(DSR1_DT_F32, w, ra, nrows, P, ldp, mul);
        break;
    }
}

/* mr packed activation rows (stride TB_KB) x TB_NR panel rows (stride ldp) over one block
 * of kbn columns; the block sums, times the rows' multipliers, go into the lane totals C
 * (TB_MR x TB_NR vectors). */
DSR1_AVX512_INLINE void micro(int mr, const float *x, const float *P, size_t ldp, const float *mul,
                              int kbn, __m512 *C)
{
    __m512 acc[TB_MR][TB_NR];
    for (int i = 0; i < mr; i++)
        for (int jj = 0; jj < TB_NR; jj++) acc[i][jj] = _mm512_setzero_ps();
    for (int c = 0; c < kbn; c += 16) {
        __m512 xv[TB_MR];
        for (int i = 0; i < mr; i++) xv[i] = _mm512_load_ps(x + (size_t)i * TB_KB + c);
        for (int jj = 0; jj < TB_NR; jj++) {
            const __m512 wv = _mm512_load_ps(P + (size_t)jj * ldp + c);
            for (int i = 0; i < mr; i++) acc[i][jj] = _mm512_fmadd_ps(wv, xv[i], acc[i][jj]);
        }
    }
    for (int jj = 0; jj < TB_NR; jj++) {
        const __m512 m = _mm512_set1_ps(mul[jj]);
        for (int i = 0; i < mr; i++)
            C[i * TB_NR + jj] = _mm512_fmadd_ps(acc[i][jj], m, C[i * TB_NR + jj]);
    }
}

static void micro_any(int mr, const float *x, const float *P, size_t ldp, const float *mul, int kbn,
                      __m512 *C)
{
    switch (mr) {
    case 1:
        micro(1, x, P, ldp, mul, kbn, C);
        break;
    case 2:
        micro(2, x, P, ldp, mul, kbn, C);
        break;
    case 3:
        micro(3, x, P, ldp, mul, kbn, C);
        break;
    default:
        micro(4, x, P, ldp, mul, kbn, C);
        break;
    }
}

/* A task converts its TB_NB weight rows once (an L2-resident panel; the row stride is
 * padded so that the rows' blocks do not all share L1 sets) and runs every group of TB_MG
 * activation rows against it, block by block, the lane totals (TB_MG x TB_NB vectors)
 * staying in L1. The activations come packed by the caller, block-major
 * (X[block][row][TB_KB], zero past the last column): each group's block is 8 contiguous
 * KB, where rows of x, often a multiple of 4 KB apart, would all share L1 sets. */
static void tiled_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const lin_job *j = arg;
    const int k = j->w->cols, nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    const size_t ldp = (size_t)(k + 15) / 16 * 16 + 16;
    float *P = aligned_alloc(64, sizeof(float) * TB_NB * ldp);
    float *mul = malloc(sizeof(float) * TB_NB * nb);
    __m512 *C = aligned_alloc(64, sizeof(__m512) * TB_MG * TB_NB);
    if (!P || !mul || !C) abort(); /* ~0.5 MB; failing here, the process is lost */
    for (int t = begin; t < end; t++) {
        const int ra = j->r0 + t * TB_NB;
        const int nrows = j->r1 - ra < TB_NB ? j->r1 - ra : TB_NB;
        panel_fill(j->w, ra, nrows, P, ldp, mul);
        for (int i0 = 0; i0 < j->m; i0 += TB_MG) {
            const int mg = j->m - i0 < TB_MG ? j->m - i0 : TB_MG;
            for (int i = 0; i < TB_MG * TB_NB; i++) C[i] = _mm512_setzero_ps();
            for (int c0 = 0, b = 0; c0 < k; c0 += TB_KB, b++) {
                const int kbn = k - c0 < TB_KB ? k - c0 : TB_KB;
                const float *X = j->x + ((size_t)b * j->m + i0) * TB_KB;
                for (int rb = 0; rb < nrows; rb += TB_NR)
                    for (int ib = 0; ib < mg; ib += TB_MR)
                        micro_any(mg - ib < TB_MR ? mg - ib : TB_MR, X + (size_t)ib * TB_KB,
                                  P + (size_t)rb * ldp + c0, ldp, mul + b * TB_NB + rb, kbn,
                                  C + (size_t)ib * TB_NB + rb * TB_MR);
            }
            for (int i = 0; i < mg; i++) {
                const __m512 *ci = C + (size_t)(i / TB_MR) * TB_MR * TB_NB + (i % TB_MR) * TB_NR;
                float *y = j->y + (size_t)(i0 + i) * j->ldy + (ra - j->r0);
                for (int r = 0; r < nrows; r++)
                    y[r] = hsum(ci[(size_t)(r / TB_NR) * TB_MR * TB_NR + r % TB_NR]);
            }
        }
    }
    free(C);
    free(mul);
    free(P);
}

/* x rows [0, m) into X[block][row][TB_KB], zero past column k. */
static void pack_blocks(const float *x, int ldx, int m, int k, float *X)
{
    for (int c0 = 0, b = 0; c0 < k; c0 += TB_KB, b++) {
        const int kbn = k - c0 < TB_KB ? k - c0 : TB_KB;
        for (int i = 0; i < m; i++) {
            const float *xs = x + (size_t)i * ldx + c0;
            float *xd = X + ((size_t)b * m + i) * TB_KB;
            for (int c = 0; c < TB_KB; c += 16)
                _mm512_store_ps(xd + c, c < kbn ? xload(xs + c, kbn - c) : _mm512_setzero_ps());
        }
    }
}

void dsr1__avx512_linear(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                         int ldx, int m, float *y, int ldy)
{
    if (m <= 0 || r1 <= r0) return;
    lin_job j = {w, r0, r1, x, ldx, m, y, ldy};
    /* small products are not worth waking threads for */
    const long work = (long)(r1 - r0) * w->cols * (m + 1);
    dsr1_pool *p = work < 32768 ? NULL : pool;
    if (m <= SMALL_M) {
        /* a padded copy of x (see the top of the file); without memory, x as it is: the
         * copy moves data, the arithmetic is the same */
        float *xp = NULL;
        if (m >= 2) {
            const int ldp = (w->cols + 15) / 16 * 16 + 16;
            xp = aligned_alloc(64, sizeof(float) * m * ldp);
            if (xp) {
                for (int i = 0; i < m; i++)
                    memcpy(xp + (size_t)i * ldp, x + (size_t)i * ldx, sizeof(float) * w->cols);
                j.x = xp;
                j.ldx = ldp;
            }
        }
        dsr1_pool_run(p, (r1 - r0 + SM_ROWS - 1) / SM_ROWS, 1, small_task, &j);
        free(xp);
    } else {
        /* activation rows in superblocks that stay in the last-level cache while every
         * weight panel passes over them (each panel is converted once per superblock) */
        const int nb = (w->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
        const int ms = m < TB_MS ? m : TB_MS;
        float *X = aligned_alloc(64, sizeof(float) * ms * nb * TB_KB);
        if (!X) abort(); /* a few MB; failing here, the process is lost */
        for (int i0 = 0; i0 < m; i0 += TB_MS) {
            lin_job js = j;
            js.m = m - i0 < TB_MS ? m - i0 : TB_MS;
            pack_blocks(x + (size_t)i0 * ldx, ldx, js.m, w->cols, X);
            js.x = X;
            js.ldx = TB_KB;
            js.y = y + (size_t)i0 * ldy;
            dsr1_pool_run(p, (r1 - r0 + TB_NB - 1) / TB_NB, 1, tiled_task, &js);
        }
        free(X);
    }
}
