/* AVX-512 linear products for FP8 e4m3 (128x128 block scales), bf16 and f32 weights,
 * float32 arithmetic (the exact mode): the row-set backend (kernels/rowset.h) that the
 * avx512 variant's `linear` and `expert_ffn` entries are driven by.
 *
 * One arithmetic, two paths. Every output y[i][r] is a 16-lane dot product. Per 128-column
 * scale block b, lane l sums by fused multiply-add, in increasing k, the products of the
 * converted (unscaled) weight W[r][k] and x[i][k] for the k = l (mod 16) of the block; the
 * lane's running total then takes that block sum times the block's scale by one more
 * fused multiply-add (t = fma(blocksum, scale, t)); at the end one fixed tree adds the 16
 * lanes (dsr1__hsum). Scaling once per block instead of per weight saves a multiply per
 * weight, which is what limits the decode path (the weight conversion is the bottleneck,
 * not the FMAs); the error is that of an ordinary float32 dot product. Both paths below do
 * exactly this, so an output depends only on its own activation row and weight row: not on
 * the thread split, not on m, not on the row set, not on which path ran — the engine's
 * batch invariance holds, and expert_ffn equals linear expert after expert.
 *
 * - m <= SMALL_M (decode): bandwidth-bound. Activations are rows padded off multiples of
 *   4 KB (rows of K = 7168 or 2048 floats would all map to the same L1 sets). A row set is
 *   streamed once, in groups of 8 rows, block by block, converting in registers; 8, 4 or 2
 *   rows at a time against all m rows (so that enough loads are in flight and the block
 *   sums fit in registers), with a software prefetch of the rows the next group reads
 *   (rows of 2 KB are too short for the hardware prefetcher to ramp up).
 * - larger m (prefill): compute-bound. Activations are packed block-major
 *   (X[block][row][128], zero past the last column: each group's block is 8 contiguous
 *   KB). The 16 rows of a set are converted once into an L2-resident panel and groups of
 *   16 activation rows run against it, block by block, in a 4x4 register-blocked
 *   micro-kernel (16 accumulators); the lane totals of a group (16 x 16 vectors) stay in
 *   L1 between blocks. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "avx512_common.h"

#define SMALL_M 8              /* m up to this: streaming path */
#define SM_ROWS DSR1__RS_GROUP /* weight rows streamed together */
#define TB_NB   DSR1__RS_MAX   /* weight rows of a converted panel (16 x K) */
#define TB_KB   DSR1_QBLOCK
#define TB_MG   16 /* activation rows per group (their totals stay in L1) */
#define TB_MR   4  /* micro-kernel activation rows */
#define TB_NR   4  /* micro-kernel weight rows */

DSR1_AVX512_INLINE __m512 xload(const float *p, int n)
{
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(dsr1__mask16(n), p);
}

/* Row stride, in floats, of padded activation rows and of converted panels: off multiples
 * of 4 KB, so that the rows' blocks do not all share L1 sets. */
static size_t pad_cols(int k)
{
    return (size_t)(k + 15) / 16 * 16 + 16;
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

/* Rows g0 .. g0+nrows (nrows <= SM_ROWS) of a set against mm activation rows; y at (row 0,
 * set row g0). Block by block, nr rows at a time (the block of x stays in L1 across them);
 * a short group repeats its last row (computed, not stored). */
DSR1_AVX512_INLINE void small_group(dsr1_dtype dt, int nr, int mm, const dsr1__rowset *rs, int g0,
                                    int nrows, const float *x, int ldx, float *y, int ldy)
{
    const int k = rs->cols;
    const size_t blockbytes = DSR1_QBLOCK * dsr1__wsize(dt);
    const char *wr[SM_ROWS];
    const float *sc[SM_ROWS];
    for (int jj = 0; jj < SM_ROWS; jj++) {
        const int q = g0 + (jj < nrows ? jj : nrows - 1);
        wr[jj] = rs->row[q];
        sc[jj] = rs->scale[q];
    }
    __m512 tot[SM_ROWS][SMALL_M];
    for (int jj = 0; jj < SM_ROWS; jj++)
        for (int i = 0; i < mm; i++) tot[jj][i] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < k; c0 += DSR1_QBLOCK, b++) {
        /* the rows the next group reads, a block's worth per block: short rows (2 KB at
         * K = 2048) are too-short streams for the hardware prefetcher; a hint is not */
        for (int jj = 0; jj < nrows; jj++) {
            const char *pf = rs->pf[g0 + jj];
            if (pf)
                for (size_t l = 0; l < blockbytes; l += 64)
                    _mm_prefetch(pf + b * blockbytes + l, _MM_HINT_T2);
        }
        for (int g = 0; g < SM_ROWS; g += nr) {
            if (g < nrows) {
                __m512 acc[SM_ROWS][SMALL_M];
                for (int jj = 0; jj < nr; jj++)
                    for (int i = 0; i < mm; i++) acc[jj][i] = _mm512_setzero_ps();
                const int c1 = c0 + DSR1_QBLOCK < k ? c0 + DSR1_QBLOCK : k;
                int c = c0;
                for (; c + 16 <= c1; c += 16) small_step(dt, nr, mm, wr + g, x, ldx, c, 16, acc);
                if (c < c1) small_step(dt, nr, mm, wr + g, x, ldx, c, c1 - c, acc);
                for (int jj = 0; jj < nr; jj++) {
                    const __m512 mul = _mm512_set1_ps(dsr1__rsscale(dt, sc[g + jj], b));
                    for (int i = 0; i < mm; i++)
                        tot[g + jj][i] = _mm512_fmadd_ps(acc[jj][i], mul, tot[g + jj][i]);
                }
            }
        }
    }
    for (int jj = 0; jj < nrows; jj++)
        for (int i = 0; i < mm; i++) y[(size_t)i * ldy + jj] = dsr1__hsum(tot[jj][i]);
}

/* Weight rows per step for mm activation rows: nr x mm block sums stay in registers, and
 * with few activation rows many weight streams are in flight. */
#define SM_NR(MM) ((MM) <= 2 ? 8 : (MM) <= 4 ? 4 : 2)

#define SMALL_FN(DT, MM)                                                                           \
    static void small_##DT##_##MM(const dsr1__rowset *rs, int g0, int nrows, const float *x,       \
                                  int ldx, float *y, int ldy)                                      \
    {                                                                                              \
        small_group(DT, SM_NR(MM), MM, rs, g0, nrows, x, ldx, y, ldy);                             \
    }
#define SMALL_FNS(DT)                                                                              \
    SMALL_FN(DT, 1)                                                                                \
    SMALL_FN(DT, 2)                                                                                \
    SMALL_FN(DT, 3)                                                                                \
    SMALL_FN(DT, 4) SMALL_FN(DT, 5) SMALL_FN(DT, 6) SMALL_FN(DT, 7) SMALL_FN(DT, 8)
SMALL_FNS(DSR1_DT_F8_E4M3)
SMALL_FNS(DSR1_DT_BF16)
SMALL_FNS(DSR1_DT_F32)

typedef void (*small_fn)(const dsr1__rowset *rs, int g0, int nrows, const float *x, int ldx,
                         float *y, int ldy);
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

static void small_rows(const dsr1__rowset *rs, const float *x, int ldx, int m, float *y, int ldy)
{
    const small_fn *fns = small_fns[dtype_index(rs->dtype)];
    /* up to 6 activation rows in one pass; 7 and 8 in passes of 4 (4 weight rows at a
     * time), which measured faster than one pass of 8 (2 weight rows at a time) */
    const int chunk = m <= 6 ? m : 4;
    for (int g0 = 0; g0 < rs->n; g0 += SM_ROWS) {
        const int nrows = rs->n - g0 < SM_ROWS ? rs->n - g0 : SM_ROWS;
        for (int i0 = 0; i0 < m; i0 += chunk) {
            const int mm = m - i0 < chunk ? m - i0 : chunk;
            fns[mm - 1](rs, g0, nrows, x + (size_t)i0 * ldx, ldx, y + (size_t)i0 * ldy + g0, ldy);
        }
    }
}

/* ---- tiled path -------------------------------------------------------------------- */

/* Convert the rows of a set, all columns, into the panel P (row stride ldp floats,
 * unscaled) and the rows' multipliers into mul[block][TB_NB]; rows past the set's and the
 * columns past the last (up to the next multiple of 16) are zero. */
DSR1_AVX512_INLINE void panel_fill_dt(dsr1_dtype dt, const dsr1__rowset *rs, float *P, size_t ldp,
                                      float *mul)
{
    const int k = rs->cols;
    for (int jj = 0; jj < TB_NB; jj++) {
        float *p = P + (size_t)jj * ldp;
        dsr1__rsmul(dt, rs, jj, TB_NB, mul);
        if (jj >= rs->n) {
            for (int c = 0; c < k; c += 16) _mm512_store_ps(p + c, _mm512_setzero_ps());
            continue;
        }
        const char *row = rs->row[jj];
        int c = 0;
        for (; c + 16 <= k; c += 16) _mm512_store_ps(p + c, dsr1__wraw(dt, row, c, 16));
        if (c < k) _mm512_store_ps(p + c, dsr1__wraw(dt, row, c, k - c));
    }
}

static void panel_fill(const dsr1__rowset *rs, float *P, size_t ldp, float *mul)
{
    switch (rs->dtype) {
    case DSR1_DT_F8_E4M3:
        panel_fill_dt(DSR1_DT_F8_E4M3, rs, P, ldp, mul);
        break;
    case DSR1_DT_BF16:
        panel_fill_dt(DSR1_DT_BF16, rs, P, ldp, mul);
        break;
    default:
        panel_fill_dt(DSR1_DT_F32, rs, P, ldp, mul);
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

/* The set's rows, converted once into the panel, against every group of TB_MG rows of the
 * m packed activation rows X, block by block, the group's lane totals (TB_MG x TB_NB
 * vectors) staying in L1. scratch: the panel, the multipliers, the totals. */
static void tiled_rows(const dsr1__rowset *rs, const float *X, int m, float *y, int ldy,
                       void *scratch)
{
    const int k = rs->cols, nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    const size_t ldp = pad_cols(k);
    float *P = scratch, *mul = P + TB_NB * ldp;
    __m512 *C = (__m512 *)(mul + (size_t)TB_NB * nb); /* 64-byte aligned: TB_NB = 16 */
    panel_fill(rs, P, ldp, mul);
    for (int i0 = 0; i0 < m; i0 += TB_MG) {
        const int mg = m - i0 < TB_MG ? m - i0 : TB_MG;
        for (int i = 0; i < TB_MG * TB_NB; i++) C[i] = _mm512_setzero_ps();
        for (int c0 = 0, b = 0; c0 < k; c0 += TB_KB, b++) {
            const int kbn = k - c0 < TB_KB ? k - c0 : TB_KB;
            const float *Xb = X + ((size_t)b * m + i0) * TB_KB;
            for (int rb = 0; rb < rs->n; rb += TB_NR)
                for (int ib = 0; ib < mg; ib += TB_MR)
                    micro_any(mg - ib < TB_MR ? mg - ib : TB_MR, Xb + (size_t)ib * TB_KB,
                              P + (size_t)rb * ldp + c0, ldp, mul + b * TB_NB + rb, kbn,
                              C + (size_t)ib * TB_NB + rb * TB_MR);
        }
        for (int i = 0; i < mg; i++) {
            const __m512 *ci = C + (size_t)(i / TB_MR) * TB_MR * TB_NB + (i % TB_MR) * TB_NR;
            float *yi = y + (size_t)(i0 + i) * ldy;
            for (int r = 0; r < rs->n; r++)
                yi[r] = dsr1__hsum(ci[(size_t)(r / TB_NR) * TB_MR * TB_NR + r % TB_NR]);
        }
    }
}

/* ---- the backend ------------------------------------------------------------------- */

/* m <= SMALL_M: padded rows; else block-major X[block][row][TB_KB], zero past column k. */
static size_t act_bytes(int m, int k)
{
    const size_t nb = (size_t)(k + TB_KB - 1) / TB_KB;
    return sizeof(float) * (size_t)m * (m <= SMALL_M ? pad_cols(k) : nb * TB_KB);
}

static float *act_at(float *act, int m, int k, int i, int c)
{
    return m <= SMALL_M ? act + (size_t)i * pad_cols(k) + c
                        : act + ((size_t)(c / TB_KB) * m + i) * TB_KB + c % TB_KB;
}

static void act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst)
{
    for (int i = 0; i < m; i++) {
        const float *xs = x + (size_t)(rows ? rows[i] : i) * ldx;
        if (m <= SMALL_M) {
            memcpy(act_at(dst, m, k, i, 0), xs, sizeof(float) * k);
            continue;
        }
        for (int c0 = 0; c0 < k; c0 += TB_KB) {
            const int kbn = k - c0 < TB_KB ? k - c0 : TB_KB;
            float *xd = act_at(dst, m, k, i, c0);
            for (int c = 0; c < TB_KB; c += 16)
                _mm512_store_ps(xd + c,
                                c < kbn ? xload(xs + c0 + c, kbn - c) : _mm512_setzero_ps());
        }
    }
}

static void act_put(void *dst, int m, int k, int i, int c, const float *v, int n)
{
    memcpy(act_at(dst, m, k, i, c), v, sizeof(float) * n);
}

static size_t scratch_bytes(int m, int k)
{
    const size_t nb = (size_t)(k + TB_KB - 1) / TB_KB;
    return m <= SMALL_M
               ? 0
               : sizeof(float) * TB_NB * (pad_cols(k) + nb) + sizeof(__m512) * TB_MG * TB_NB;
}

static void rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy, void *scratch)
{
    if (m <= SMALL_M)
        small_rows(rs, act, (int)pad_cols(rs->cols), m, y, ldy);
    else
        tiled_rows(rs, act, m, y, ldy, scratch);
}

static const dsr1__rowops exact = {act_bytes, act_pack, act_put, scratch_bytes, rows};

const dsr1__rowops *dsr1__avx512_rowops(void)
{
    return &exact;
}

void dsr1__avx512_linear(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                         int ldx, int m, float *y, int ldy)
{
    dsr1__rowops_linear(&exact, pool, w, r0, r1, x, ldx, m, y, ldy);
}

dsr1_status dsr1__avx512_expert_ffn(dsr1_pool *pool, const dsr1_expert *ex, int ne, const float *x,
                                    int ldx, float *y, int ldy)
{
    return dsr1__rowops_expert_ffn(&exact, pool, ex, ne, x, ldx, y, ldy);
}
