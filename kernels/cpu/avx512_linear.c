/* AVX-512 linear layer y = x W^T for FP8 e4m3 (128x128 block scales), bf16 and f32
 * weights, float32 arithmetic (the exact mode).
 *
 * Two paths with one arithmetic. Every output y[i][r] is a 16-lane dot product: lane l
 * accumulates, by fused multiply-add in increasing k, the products W[r][k] x[i][k] for
 * k = l (mod 16), the weight being the exact portable dequantised value (e4m3 x scale,
 * rounded once); the 16 lanes are then added by one fixed tree (hsum). Both paths do
 * exactly this, so an output depends only on its own activation row and weight row: not
 * on the thread split, not on the number of rows m, not on which path ran. That keeps the
 * engine's batch invariance (a sequence's logits are bit-identical alone or in a batch).
 *
 * - m <= SMALL_M (decode): bandwidth-bound. Each weight row is streamed once, converted in
 *   registers and dotted with all (up to 4 at a time) activation rows, 4 weight rows at a
 *   time; threads split the rows.
 * - larger m (prefill): compute-bound. A task owns 16 weight rows; for each 256-column
 *   slab it dequantises them once into an L1 tile, which a 4x4 register-blocked
 *   micro-kernel (4 activation rows x 4 weight rows, 16 accumulators) reuses for up to 64
 *   activation rows; the partial lane sums carry between slabs in a small buffer. */
#include <stdbool.h>
#include <stdlib.h>

#include "avx512_common.h"

#define SMALL_M 4   /* m up to this: streaming path */
#define SM_NR   4   /* weight rows per streaming step */
#define TB_NB   16  /* weight rows per tiled task */
#define TB_KB   256 /* columns per dequantised tile (a multiple of 16) */
#define TB_MB   64  /* activation rows sharing one tile */
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

/* One 16-column step of the streaming path: n = 16 (constant) or the tail count. */
DSR1_AVX512_INLINE void small_step(dsr1_dtype dt, int mm, const char *const *wr, const __m512 *mul,
                                   const float *x, int ldx, int c, int n, __m512 acc[][SMALL_M])
{
    __m512 xv[SMALL_M];
    for (int i = 0; i < mm; i++) xv[i] = xload(x + (size_t)i * ldx + c, n);
    for (int jj = 0; jj < SM_NR; jj++) {
        const __m512 wv = dsr1__wload(dt, wr[jj], c, n, mul[jj]);
        for (int i = 0; i < mm; i++) acc[jj][i] = _mm512_fmadd_ps(wv, xv[i], acc[jj][i]);
    }
}

/* Rows ra .. ra+nrows (nrows <= SM_NR) against mm activation rows; y at (row 0, ra). A
 * short group repeats its last row (computed, not stored). */
DSR1_AVX512_INLINE void small_block(dsr1_dtype dt, int mm, const dsr1_linear *w, int ra, int nrows,
                                    const float *x, int ldx, float *y, int ldy)
{
    const int k = w->cols;
    const char *wr[SM_NR];
    int rr[SM_NR];
    for (int jj = 0; jj < SM_NR; jj++) {
        rr[jj] = ra + (jj < nrows ? jj : nrows - 1);
        wr[jj] = (const char *)w->data + (size_t)rr[jj] * k * dsr1__wsize(dt);
    }
    __m512 acc[SM_NR][SMALL_M];
    for (int jj = 0; jj < SM_NR; jj++)
        for (int i = 0; i < mm; i++) acc[jj][i] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < k; c0 += DSR1_QBLOCK, b++) {
        const int c1 = c0 + DSR1_QBLOCK < k ? c0 + DSR1_QBLOCK : k;
        __m512 mul[SM_NR];
        for (int jj = 0; jj < SM_NR; jj++) mul[jj] = _mm512_set1_ps(dsr1__wscale(w, rr[jj], b));
        int c = c0;
        for (; c + 16 <= c1; c += 16) small_step(dt, mm, wr, mul, x, ldx, c, 16, acc);
        if (c < c1) small_step(dt, mm, wr, mul, x, ldx, c, c1 - c, acc);
    }
    for (int jj = 0; jj < nrows; jj++)
        for (int i = 0; i < mm; i++) y[(size_t)i * ldy + jj] = hsum(acc[jj][i]);
}

#define SMALL_FN(DT, MM)                                                                           \
    static void small_##DT##_##MM(const dsr1_linear *w, int ra, int nrows, const float *x,         \
                                  int ldx, float *y, int ldy)                                      \
    {                                                                                              \
        small_block(DT, MM, w, ra, nrows, x, ldx, y, ldy);                                         \
    }
#define SMALL_FNS(DT) SMALL_FN(DT, 1) SMALL_FN(DT, 2) SMALL_FN(DT, 3) SMALL_FN(DT, 4)
SMALL_FNS(DSR1_DT_F8_E4M3)
SMALL_FNS(DSR1_DT_BF16)
SMALL_FNS(DSR1_DT_F32)

typedef void (*small_fn)(const dsr1_linear *w, int ra, int nrows, const float *x, int ldx, float *y,
                         int ldy);
#define SMALL_ROW(DT)                                                                              \
    {                                                                                              \
        small_##DT##_1, small_##DT##_2, small_##DT##_3, small_##DT##_4                             \
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
    for (int t = begin; t < end; t++) {
        const int ra = j->r0 + t * SM_NR;
        const int nrows = j->r1 - ra < SM_NR ? j->r1 - ra : SM_NR;
        for (int i0 = 0; i0 < j->m; i0 += SMALL_M) {
            const int mm = j->m - i0 < SMALL_M ? j->m - i0 : SMALL_M;
            fns[mm - 1](j->w, ra, nrows, j->x + (size_t)i0 * j->ldx, j->ldx,
                        j->y + (size_t)i0 * j->ldy + (ra - j->r0), j->ldy);
        }
    }
}

/* ---- tiled path -------------------------------------------------------------------- */

/* Dequantise rows ra .. ra+nrows, columns c0 .. c0+kbn of W into T[TB_NB][TB_KB]; rows
 * past nrows and columns past kbn (up to the next multiple of 16) are zero. */
DSR1_AVX512_INLINE void tile_fill_dt(dsr1_dtype dt, const dsr1_linear *w, int ra, int nrows, int c0,
                                     int kbn, float *T)
{
    const size_t rowbytes = (size_t)w->cols * dsr1__wsize(dt);
    for (int jj = 0; jj < TB_NB; jj++) {
        float *t = T + (size_t)jj * TB_KB;
        if (jj >= nrows) {
            for (int c = 0; c < kbn; c += 16) _mm512_store_ps(t + c, _mm512_setzero_ps());
            continue;
        }
        const int r = ra + jj;
        const char *row = (const char *)w->data + (size_t)r * rowbytes;
        for (int cb = c0; cb < c0 + kbn; cb += DSR1_QBLOCK) {
            const int ce = cb + DSR1_QBLOCK < c0 + kbn ? cb + DSR1_QBLOCK : c0 + kbn;
            const __m512 mul = _mm512_set1_ps(dsr1__wscale(w, r, cb / DSR1_QBLOCK));
            int c = cb;
            for (; c + 16 <= ce; c += 16)
                _mm512_store_ps(t + (c - c0), dsr1__wload(dt, row, c, 16, mul));
            if (c < ce) _mm512_store_ps(t + (c - c0), dsr1__wload(dt, row, c, ce - c, mul));
        }
    }
}

static void tile_fill(const dsr1_linear *w, int ra, int nrows, int c0, int kbn, float *T)
{
    switch (w->dtype) {
    case DSR1_DT_F8_E4M3:
        tile_fill_dt(DSR1_DT_F8_E4M3, w, ra, nrows, c0, kbn, T);
        break;
    case DSR1_DT_BF16:
        tile_fill_dt(DSR1_DT_BF16, w, ra, nrows, c0, kbn, T);
        break;
    default:
        tile_fill_dt(DSR1_DT_F32, w, ra, nrows, c0, kbn, T);
        break;
    }
}

/* mr activation rows (x at their column c0) x TB_NR tile rows over kbn columns. The lane
 * sums start from zero (first slab) or C, and end in C or, after the last slab, in y. */
DSR1_AVX512_INLINE void micro(int mr, const float *x, int ldx, const float *T, int kbn, __m512 *C,
                              bool first, bool last, float *y, int ldy, int nvalid)
{
    __m512 acc[TB_MR][TB_NR];
    for (int i = 0; i < mr; i++)
        for (int jj = 0; jj < TB_NR; jj++)
            acc[i][jj] = first ? _mm512_setzero_ps() : _mm512_load_ps((float *)&C[i * TB_NB + jj]);
    int c = 0;
    for (; c + 16 <= kbn; c += 16) {
        __m512 xv[TB_MR];
        for (int i = 0; i < mr; i++) xv[i] = _mm512_loadu_ps(x + (size_t)i * ldx + c);
        for (int jj = 0; jj < TB_NR; jj++) {
            const __m512 wv = _mm512_load_ps(T + (size_t)jj * TB_KB + c);
            for (int i = 0; i < mr; i++) acc[i][jj] = _mm512_fmadd_ps(wv, xv[i], acc[i][jj]);
        }
    }
    if (c < kbn) {
        __m512 xv[TB_MR];
        for (int i = 0; i < mr; i++) xv[i] = xload(x + (size_t)i * ldx + c, kbn - c);
        for (int jj = 0; jj < TB_NR; jj++) {
            const __m512 wv = _mm512_load_ps(T + (size_t)jj * TB_KB + c);
            for (int i = 0; i < mr; i++) acc[i][jj] = _mm512_fmadd_ps(wv, xv[i], acc[i][jj]);
        }
    }
    if (last) {
        for (int i = 0; i < mr; i++)
            for (int jj = 0; jj < nvalid; jj++) y[(size_t)i * ldy + jj] = hsum(acc[i][jj]);
    } else {
        for (int i = 0; i < mr; i++)
            for (int jj = 0; jj < TB_NR; jj++)
                _mm512_store_ps((float *)&C[i * TB_NB + jj], acc[i][jj]);
    }
}

static void micro_any(int mr, const float *x, int ldx, const float *T, int kbn, __m512 *C,
                      bool first, bool last, float *y, int ldy, int nvalid)
{
    switch (mr) {
    case 1:
        micro(1, x, ldx, T, kbn, C, first, last, y, ldy, nvalid);
        break;
    case 2:
        micro(2, x, ldx, T, kbn, C, first, last, y, ldy, nvalid);
        break;
    case 3:
        micro(3, x, ldx, T, kbn, C, first, last, y, ldy, nvalid);
        break;
    default:
        micro(4, x, ldx, T, kbn, C, first, last, y, ldy, nvalid);
        break;
    }
}

static void tiled_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const lin_job *j = arg;
    const int k = j->w->cols;
    float *T = aligned_alloc(64, sizeof(float) * TB_NB * TB_KB);
    __m512 *C = aligned_alloc(64, sizeof(__m512) * TB_MB * TB_NB);
    if (!T || !C) abort(); /* 80 KB; failing here means the process is already lost */
    for (int t = begin; t < end; t++) {
        const int ra = j->r0 + t * TB_NB;
        const int nrows = j->r1 - ra < TB_NB ? j->r1 - ra : TB_NB;
        for (int i0 = 0; i0 < j->m; i0 += TB_MB) {
            const int mb = j->m - i0 < TB_MB ? j->m - i0 : TB_MB;
            for (int c0 = 0; c0 < k; c0 += TB_KB) {
                const int kbn = k - c0 < TB_KB ? k - c0 : TB_KB;
                const bool first = c0 == 0, last = c0 + kbn >= k;
                tile_fill(j->w, ra, nrows, c0, kbn, T);
                for (int ib = 0; ib < mb; ib += TB_MR) {
                    const int mr = mb - ib < TB_MR ? mb - ib : TB_MR;
                    const float *x = j->x + (size_t)(i0 + ib) * j->ldx + c0;
                    float *y = j->y + (size_t)(i0 + ib) * j->ldy + (ra - j->r0);
                    for (int rb = 0; rb < nrows; rb += TB_NR) {
                        const int nv = nrows - rb < TB_NR ? nrows - rb : TB_NR;
                        micro_any(mr, x, j->ldx, T + (size_t)rb * TB_KB, kbn, C + ib * TB_NB + rb,
                                  first, last, y + rb, j->ldy, nv);
                    }
                }
            }
        }
    }
    free(C);
    free(T);
}

void dsr1__avx512_linear(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                         int ldx, int m, float *y, int ldy)
{
    if (m <= 0 || r1 <= r0) return;
    lin_job j = {w, r0, r1, x, ldx, m, y, ldy};
    /* small products are not worth waking threads for */
    const long work = (long)(r1 - r0) * w->cols * (m + 1);
    dsr1_pool *p = work < 32768 ? NULL : pool;
    if (m <= SMALL_M)
        dsr1_pool_run(p, (r1 - r0 + SM_NR - 1) / SM_NR, 1, small_task, &j);
    else
        dsr1_pool_run(p, (r1 - r0 + TB_NB - 1) / TB_NB, 1, tiled_task, &j);
}
