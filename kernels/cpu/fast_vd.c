/* The fast precision mode's vdpbf16ps backend for `linear` and `expert_ffn` (AVX512_BF16
 * CPUs without AMX; fast.h gives the order). Compiled with the AVX-512 flags,
 * -mavx512bf16 and -mavx512vbmi (kernels/meson.build); fast_tiles.c hands it out only on a
 * CPU that has all three.
 *
 * Lanes run along K, as in the exact variant (avx512_linear.c), so that decode streams
 * every FP8 weight row once, converting it in registers, with no transposition: 64 weight
 * bytes become 64 bf16 in five instructions (two byte-table lookups, VPERMT2B, give the
 * low and high bytes of each bf16; a ternary logic op puts the sign back; two byte
 * unpacks pair them up). The unpacks interleave within 128-bit lanes, so the bf16 come out
 * in "unpack order": of a 64-column group, vector A holds columns 16L + 0..7 and vector B
 * columns 16L + 8..15, L = 0..3, and dword lane d = 4L + q of A (B) the column pair
 * 16L + 2q (+ 8), +1. The activations are laid out in that same order (vd_pos), so lane d
 * of a weight vector meets the activation pair of the same columns.
 *
 * Per output y[i][j], whatever m: per 128-column block b, each of the 16 lanes starts from
 * zero and takes, group by group (64 columns; a block has two, fewer at the end of K), the
 * group's A pair then its B pair by VDPBF16PS (odd product, then even, each rounded,
 * DAZ/FTZ); then the lane's total takes the block sum times the row's block scale by one
 * fused multiply-add (tot = fma(acc, scale_b, tot)); at the end dsr1__hsum adds the 16
 * lanes in its fixed tree. Both paths below do exactly that:
 * - m <= SMALL_M (decode): activation rows padded off multiples of 4 KB; the set is
 *   streamed once, 8 rows at a time, block by block, converted in registers, against all
 *   m rows, with a software prefetch of the rows the next group reads;
 * - larger m (prefill): activations packed block-major (X[block][row][128]), the set's 16
 *   rows converted once into an L2-resident panel, groups of 12 activation rows against
 *   it four blocks at a time in a 3 x 4 register-blocked micro-kernel (its lane totals in
 *   registers over the four blocks, in L1 between). */
#include <pthread.h>
#include <string.h>

#include "avx512_common.h"
#include "fast.h"
#include "numeric.h"

#define SMALL_M 8              /* m up to this: streaming path */
#define SM_ROWS DSR1__RS_GROUP /* weight rows streamed together */
#define TB_NB   DSR1__RS_MAX   /* weight rows of a converted panel */
#define TB_KB   DSR1_QBLOCK    /* columns per block (two groups of 64) */
#define TB_MG   12             /* activation rows per group (their totals stay in L1) */
#define TB_MR   3              /* micro-kernel activation rows */
#define TB_NR   4              /* micro-kernel weight rows */
#define TB_KC   4              /* blocks per micro-kernel call (its totals in registers) */

/* ---- e4m3 -> bf16 by table lookup ----------------------------------------------------- */

/* The low and the high byte of the bf16 of every e4m3 magnitude (index: the byte without
 * its sign; VPERMT2B ignores bit 7 of an index), 128 entries each, as two vectors. */
static _Alignas(64) uint8_t tab_lo[128], tab_hi[128];
static pthread_once_t tab_once = PTHREAD_ONCE_INIT;

static void tab_init(void)
{
    for (int b = 0; b < 128; b++) {
        tab_lo[b] = (uint8_t)(dsr1__e4m3_bf16[b] & 0xff);
        tab_hi[b] = (uint8_t)(dsr1__e4m3_bf16[b] >> 8);
    }
}

typedef struct {
    __m512i lo0, lo1, hi0, hi1;
} vd_tab;

DSR1_AVX512_INLINE vd_tab tab_load(void)
{
    return (vd_tab){_mm512_load_si512(tab_lo), _mm512_load_si512(tab_lo + 64),
                    _mm512_load_si512(tab_hi), _mm512_load_si512(tab_hi + 64)};
}

/* 64 e4m3 bytes -> their bf16 in unpack order: *a (the pairs of columns 16L + 0..7) and *b
 * (16L + 8..15); exact, as dsr1__e4m3_bf16 (the table above is its copy), NaN included. */
DSR1_AVX512_INLINE void cvt64(const vd_tab *t, __m512i w, __m512i *a, __m512i *b)
{
    const __m512i lo = _mm512_permutex2var_epi8(t->lo0, w, t->lo1);
    __m512i hi = _mm512_permutex2var_epi8(t->hi0, w, t->hi1);
    hi = _mm512_ternarylogic_epi32(hi, w, _mm512_set1_epi8((char)0x80), 0xf8); /* hi | w & 80 */
    *a = _mm512_unpacklo_epi8(lo, hi);
    *b = _mm512_unpackhi_epi8(lo, hi);
}

/* The 64 bytes of a row from column c (n < 64: the first n, the rest 0, unread). */
DSR1_AVX512_INLINE __m512i wload64(const uint8_t *row, int c, int n)
{
    return n >= 64 ? _mm512_loadu_si512(row + c)
                   : _mm512_maskz_loadu_epi8(n <= 0 ? 0 : (~(__mmask64)0) >> (64 - n), row + c);
}

/* ---- activations: bf16 in unpack order ------------------------------------------------- */

/* Position of column c in a row of prepared activations: its group's 64 positions hold
 * the columns 16L + 0..7 (L = 0..3), then 16L + 8..15. */
static inline size_t vd_pos(int c)
{
    const int u = c & 63, l = u >> 4, r = u & 15;
    return (size_t)(c & ~63) + (r < 8 ? 8 * l + r : 32 + 8 * l + r - 8);
}

/* Row stride, in bf16, of padded activation rows: whole groups, off multiples of 4 KB. */
static size_t pad_cols(int k)
{
    return (size_t)(k + 63) / 64 * 64 + 32;
}

static size_t act_bytes(int m, int k)
{
    const size_t nb = (size_t)(k + TB_KB - 1) / TB_KB;
    return sizeof(uint16_t) * (size_t)m * (m <= SMALL_M ? pad_cols(k) : nb * TB_KB);
}

/* Row i's position of column c: padded rows (m <= SMALL_M) or block-major. */
static uint16_t *act_at(uint16_t *act, int m, int k, int i, int c)
{
    return m <= SMALL_M ? act + (size_t)i * pad_cols(k) + vd_pos(c)
                        : act + ((size_t)(c / TB_KB) * m + i) * TB_KB + vd_pos(c % TB_KB);
}

/* 16 floats -> 16 bf16, dsr1_f32_to_bf16's bits (nearest even, NaN quieted, no flush). */
DSR1_AVX512_INLINE __m256i f32x16_bf16(__m512 v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan,
                              _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}

/* Columns c0 .. c0+64 of x (fewer than 64 left: the rest 0) into the group at d. */
DSR1_AVX512_INLINE void act_group(const float *x, int c0, int k, uint16_t *d)
{
    for (int l = 0; l < 4; l++) {
        const int c = c0 + 16 * l, n = k - c;
        const __m512 v = n >= 16 ? _mm512_loadu_ps(x + c)
                         : n > 0 ? _mm512_maskz_loadu_ps(dsr1__mask16(n), x + c)
                                 : _mm512_setzero_ps();
        const __m256i h = f32x16_bf16(v);
        _mm_storeu_si128((__m128i *)(d + 8 * l), _mm256_castsi256_si128(h));
        _mm_storeu_si128((__m128i *)(d + 32 + 8 * l), _mm256_extracti128_si256(h, 1));
    }
}

static void act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst)
{
    uint16_t *act = dst;
    for (int i = 0; i < m; i++) {
        const float *xs = x + (size_t)(rows ? rows[i] : i) * ldx;
        /* positions past the last group are never read */
        for (int c0 = 0; c0 < k; c0 += 64) act_group(xs, c0, k, act_at(act, m, k, i, c0));
    }
}

static void act_put(void *dst, int m, int k, int i, int c, const float *v, int n)
{
    for (int q = 0; q < n; q++) *act_at(dst, m, k, i, c + q) = dsr1_f32_to_bf16(v[q]);
}

/* ---- streaming path ------------------------------------------------------------------ */

/* Rows g0 .. g0+nrows (nrows <= SM_ROWS) of a set against mm activation rows (stride ld);
 * y at (row 0, set row g0). Block by block, nr rows at a time (the block of x stays in L1
 * across them); a short group repeats its last row (computed, not stored). */
DSR1_AVX512_INLINE void small_group(int nr, int mm, const dsr1__rowset *rs, int g0, int nrows,
                                    const uint16_t *x, size_t ld, float *y, int ldy)
{
    const int k = rs->cols;
    const vd_tab t = tab_load();
    const uint8_t *wr[SM_ROWS];
    const float *sc[SM_ROWS];
    for (int jj = 0; jj < SM_ROWS; jj++) {
        const int q = g0 + (jj < nrows ? jj : nrows - 1);
        wr[jj] = rs->row[q];
        sc[jj] = rs->scale[q];
    }
    __m512 tot[SM_ROWS][SMALL_M];
    for (int jj = 0; jj < SM_ROWS; jj++)
        for (int i = 0; i < mm; i++) tot[jj][i] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < k; c0 += TB_KB, b++) {
        /* the rows the next group reads, a block's worth per block (short rows are too
         * short a stream for the hardware prefetcher), into L1: on the Zen 5 here the
         * stream then runs at 0.79-0.85 of the read bandwidth, against 0.50-0.71 with the
         * hint to L2 that the exact variant uses (whose conversion, not the memory, is
         * what limits it; docs/benchmarks.md) */
        for (int jj = 0; jj < nrows; jj++) {
            const char *pf = rs->pf[g0 + jj];
            if (pf) {
                _mm_prefetch(pf + c0, _MM_HINT_T0);
                _mm_prefetch(pf + c0 + 64, _MM_HINT_T0);
            }
        }
        const int c1 = c0 + TB_KB < k ? c0 + TB_KB : k;
        for (int g = 0; g < SM_ROWS; g += nr) {
            if (g >= nrows) break;
            __m512 acc[SM_ROWS][SMALL_M];
            for (int jj = 0; jj < nr; jj++)
                for (int i = 0; i < mm; i++) acc[jj][i] = _mm512_setzero_ps();
            for (int c = c0; c < c1; c += 64) {
                __m512bh xa[SMALL_M], xb[SMALL_M];
                for (int i = 0; i < mm; i++) {
                    xa[i] = (__m512bh)_mm512_load_si512(x + (size_t)i * ld + c);
                    xb[i] = (__m512bh)_mm512_load_si512(x + (size_t)i * ld + c + 32);
                }
                for (int jj = 0; jj < nr; jj++) {
                    __m512i wa, wb;
                    cvt64(&t, wload64(wr[g + jj], c, c1 - c), &wa, &wb);
                    for (int i = 0; i < mm; i++) {
                        acc[jj][i] = _mm512_dpbf16_ps(acc[jj][i], xa[i], (__m512bh)wa);
                        acc[jj][i] = _mm512_dpbf16_ps(acc[jj][i], xb[i], (__m512bh)wb);
                    }
                }
            }
            for (int jj = 0; jj < nr; jj++) {
                const __m512 mul = _mm512_set1_ps(sc[g + jj][b]);
                for (int i = 0; i < mm; i++)
                    tot[g + jj][i] = _mm512_fmadd_ps(acc[jj][i], mul, tot[g + jj][i]);
            }
        }
    }
    for (int jj = 0; jj < nrows; jj++)
        for (int i = 0; i < mm; i++) y[(size_t)i * ldy + jj] = dsr1__hsum(tot[jj][i]);
}

/* Weight rows per step for mm activation rows (as the exact variant measured best). */
#define SM_NR(MM) ((MM) <= 2 ? 8 : (MM) <= 4 ? 4 : 2)

#define SMALL_FN(MM)                                                                               \
    static void small_##MM(const dsr1__rowset *rs, int g0, int nrows, const uint16_t *x,           \
                           size_t ld, float *y, int ldy)                                           \
    {                                                                                              \
        small_group(SM_NR(MM), MM, rs, g0, nrows, x, ld, y, ldy);                                  \
    }
SMALL_FN(1)
SMALL_FN(2)
SMALL_FN(3)
SMALL_FN(4)
SMALL_FN(5)
SMALL_FN(6)
SMALL_FN(7)
SMALL_FN(8)

typedef void (*small_fn)(const dsr1__rowset *rs, int g0, int nrows, const uint16_t *x, size_t ld,
                         float *y, int ldy);
static const small_fn small_fns[SMALL_M] = {small_1, small_2, small_3, small_4,
                                            small_5, small_6, small_7, small_8};

static void small_rows(const dsr1__rowset *rs, const uint16_t *x, int m, float *y, int ldy)
{
    const size_t ld = pad_cols(rs->cols);
    const int chunk = m <= 6 ? m : 4; /* 7 and 8 rows in passes of 4, as the exact variant */
    for (int g0 = 0; g0 < rs->n; g0 += SM_ROWS) {
        const int nrows = rs->n - g0 < SM_ROWS ? rs->n - g0 : SM_ROWS;
        for (int i0 = 0; i0 < m; i0 += chunk) {
            const int mm = m - i0 < chunk ? m - i0 : chunk;
            small_fns[mm - 1](rs, g0, nrows, x + (size_t)i0 * ld, ld, y + (size_t)i0 * ldy + g0,
                              ldy);
        }
    }
}

/* ---- tiled path ---------------------------------------------------------------------- */

/* Row stride, in bf16, of a converted panel: whole blocks, off multiples of 4 KB. */
static size_t panel_ld(int k)
{
    return (size_t)(k + TB_KB - 1) / TB_KB * TB_KB + 32;
}

/* The set's rows converted into the panel P (unpack order, zero past column k up to the
 * block's end and past the set's rows) and their block scales into mul[block][TB_NB]. */
static void panel_fill(const dsr1__rowset *rs, uint16_t *P, size_t ldp, float *mul)
{
    const int k = rs->cols, nb = (k + TB_KB - 1) / TB_KB;
    const vd_tab t = tab_load();
    for (int jj = 0; jj < TB_NB; jj++) {
        uint16_t *p = P + (size_t)jj * ldp;
        for (int b = 0; b < nb; b++) mul[b * TB_NB + jj] = jj < rs->n ? rs->scale[jj][b] : 0.0f;
        for (int c = 0; c < nb * TB_KB; c += 64) {
            __m512i a = _mm512_setzero_si512(), bv = a;
            if (jj < rs->n && c < k) cvt64(&t, wload64(rs->row[jj], c, k - c), &a, &bv);
            _mm512_store_si512(p + c, a);
            _mm512_store_si512(p + c + 32, bv);
        }
    }
}

/* mr (<= TB_MR) packed activation rows x TB_NR panel rows over nbk consecutive blocks (x:
 * the first block's first row; blocks m rows apart; the last block of the product has ngl
 * groups), their lane totals C (mr x TB_NR vectors, in registers meanwhile): per block the
 * block sums times the rows' multipliers (mul: the first block's, TB_NB apart) join them. */
DSR1_AVX512_INLINE void micro(int mr, const uint16_t *x, int m, const uint16_t *P, size_t ldp,
                              const float *mul, int nbk, int last, int ngl, __m512 *C)
{
    __m512 tot[TB_MR][TB_NR];
    for (int i = 0; i < mr; i++)
        for (int jj = 0; jj < TB_NR; jj++) tot[i][jj] = C[i * TB_NR + jj];
    for (int kb = 0; kb < nbk; kb++) {
        const uint16_t *xb = x + (size_t)kb * m * TB_KB, *pb = P + (size_t)kb * TB_KB;
        const int steps = 2 * (last && kb == nbk - 1 ? ngl : 2);
        __m512 acc[TB_MR][TB_NR];
        for (int i = 0; i < mr; i++)
            for (int jj = 0; jj < TB_NR; jj++) acc[i][jj] = _mm512_setzero_ps();
        for (int st = 0; st < steps; st++) {
            __m512bh wv[TB_NR];
            for (int jj = 0; jj < TB_NR; jj++)
                wv[jj] = (__m512bh)_mm512_load_si512(pb + (size_t)jj * ldp + 32 * st);
            for (int i = 0; i < mr; i++) {
                const __m512bh xv = (__m512bh)_mm512_load_si512(xb + (size_t)i * TB_KB + 32 * st);
                for (int jj = 0; jj < TB_NR; jj++)
                    acc[i][jj] = _mm512_dpbf16_ps(acc[i][jj], xv, wv[jj]);
            }
        }
        for (int jj = 0; jj < TB_NR; jj++) {
            const __m512 s = _mm512_set1_ps(mul[kb * TB_NB + jj]);
            for (int i = 0; i < mr; i++) tot[i][jj] = _mm512_fmadd_ps(acc[i][jj], s, tot[i][jj]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int jj = 0; jj < TB_NR; jj++) C[i * TB_NR + jj] = tot[i][jj];
}

static void micro_any(int mr, const uint16_t *x, int m, const uint16_t *P, size_t ldp,
                      const float *mul, int nbk, int last, int ngl, __m512 *C)
{
    switch (mr) {
    case 1:
        micro(1, x, m, P, ldp, mul, nbk, last, ngl, C);
        break;
    case 2:
        micro(2, x, m, P, ldp, mul, nbk, last, ngl, C);
        break;
    default:
        micro(3, x, m, P, ldp, mul, nbk, last, ngl, C);
        break;
    }
}

/* The set's rows, converted once into the panel, against every group of TB_MG rows of the m
 * packed activation rows X, TB_KC blocks at a time (the group's and the panel's share of
 * them stay in L1), the group's lane totals (TB_MG x TB_NB vectors) in L1 between. */
static void tiled_rows(const dsr1__rowset *rs, const uint16_t *X, int m, float *y, int ldy,
                       void *scratch)
{
    const int k = rs->cols, nb = (k + TB_KB - 1) / TB_KB, ngl = (k - (nb - 1) * TB_KB + 63) / 64;
    const size_t ldp = panel_ld(k);
    uint16_t *P = scratch;
    float *mul = (float *)(P + TB_NB * ldp);
    __m512 *C = (__m512 *)(mul + (size_t)TB_NB * nb); /* 64-byte aligned: TB_NB = 16 */
    panel_fill(rs, P, ldp, mul);
    for (int i0 = 0; i0 < m; i0 += TB_MG) {
        const int mg = m - i0 < TB_MG ? m - i0 : TB_MG;
        for (int i = 0; i < TB_MG * TB_NB; i++) C[i] = _mm512_setzero_ps();
        for (int b0 = 0; b0 < nb; b0 += TB_KC) {
            const int nbk = nb - b0 < TB_KC ? nb - b0 : TB_KC, last = b0 + nbk == nb;
            const uint16_t *Xb = X + ((size_t)b0 * m + i0) * TB_KB;
            for (int rb = 0; rb < rs->n; rb += TB_NR)
                for (int ib = 0; ib < mg; ib += TB_MR)
                    micro_any(mg - ib < TB_MR ? mg - ib : TB_MR, Xb + (size_t)ib * TB_KB, m,
                              P + (size_t)rb * ldp + (size_t)b0 * TB_KB, ldp, mul + b0 * TB_NB + rb,
                              nbk, last, ngl, C + (size_t)ib * TB_NB + rb * TB_MR);
        }
        for (int i = 0; i < mg; i++) {
            const __m512 *ci = C + (size_t)(i / TB_MR) * TB_MR * TB_NB + (i % TB_MR) * TB_NR;
            float *yi = y + (size_t)(i0 + i) * ldy;
            for (int r = 0; r < rs->n; r++)
                yi[r] = dsr1__hsum(ci[(size_t)(r / TB_NR) * TB_MR * TB_NR + r % TB_NR]);
        }
    }
}

/* ---- linear_t, few rows ------------------------------------------------------------- */

/* linear_t (the query absorption) for m <= LT_SMALL rows in the order of the vdpbf16ps
 * path's transposed sets (fast.h: lanes = output columns, per block one chain over the
 * row pairs in increasing order, odd product then even, then tot = fma(acc, scale, tot)),
 * 64 output columns at a time instead of a set's 16: rows v and v + 1 of W, 64 bytes each,
 * interleaved byte by byte (the VNNI pairs) and converted by cvt64 give four vectors of 16
 * pairs, column 16L + 4k + q of the 64 in lane 4L + q of vector k. The same bits as the
 * panel path (tests/unit/test_kernels_fast.c), with a quarter of its loads and a fifth of
 * its conversion work per weight. */
#define LT_SMALL 4
#define LT_KMAX  1024 /* reduction columns (tk0 + r1 - r0) this path takes */

typedef struct {
    const dsr1_linear *w;
    int r0, tk0, k, m;
    const uint16_t *xv; /* [m][k rounded up to 32]: bf16, zero before tk0 and from k */
    float *y;
    int ldy;
} ltv_job;

/* Columns c0 .. c0+64 (n valid) for mr <= 2 rows of xv (row stride kp). */
DSR1_AVX512_INLINE void ltv_cols(int mr, const ltv_job *j, const uint16_t *xv, int kp, int c0,
                                 int n, float *y)
{
    const dsr1_linear *w = j->w;
    const vd_tab t = tab_load();
    const int nbc = (w->cols + TB_KB - 1) / TB_KB, np = kp / 2, nb = (j->k + TB_KB - 1) / TB_KB;
    const uint8_t *base = (const uint8_t *)w->data + (size_t)(j->r0 - j->tk0) * w->cols + c0;
    const float *sc = w->scale + (size_t)((j->r0 - j->tk0) / TB_KB) * nbc + c0 / TB_KB;
    __m512 tot[2][4];
    for (int i = 0; i < mr; i++)
        for (int q = 0; q < 4; q++) tot[i][q] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512 acc[2][4];
        for (int i = 0; i < mr; i++)
            for (int q = 0; q < 4; q++) acc[i][q] = _mm512_setzero_ps();
        const int p1 = (b + 1) * 64 < np ? (b + 1) * 64 : np;
        for (int p = b * 64; p < p1; p++) {
            const int v = 2 * p;
            const __m512i a = v >= j->tk0 && v < j->k ? wload64(base + (size_t)v * w->cols, 0, n)
                                                      : _mm512_setzero_si512();
            const __m512i c = v + 1 >= j->tk0 && v + 1 < j->k
                                  ? wload64(base + (size_t)(v + 1) * w->cols, 0, n)
                                  : _mm512_setzero_si512();
            __m512i z[4];
            cvt64(&t, _mm512_unpacklo_epi8(a, c), &z[0], &z[1]);
            cvt64(&t, _mm512_unpackhi_epi8(a, c), &z[2], &z[3]);
            for (int i = 0; i < mr; i++) {
                int32_t pr;
                memcpy(&pr, xv + (size_t)i * kp + v, 4);
                const __m512bh xp = (__m512bh)_mm512_set1_epi32(pr);
                for (int q = 0; q < 4; q++)
                    acc[i][q] = _mm512_dpbf16_ps(acc[i][q], xp, (__m512bh)z[q]);
            }
        }
        const __m512 s = _mm512_set1_ps(sc[(size_t)b * nbc]);
        for (int i = 0; i < mr; i++)
            for (int q = 0; q < 4; q++) tot[i][q] = _mm512_fmadd_ps(acc[i][q], s, tot[i][q]);
    }
    for (int i = 0; i < mr; i++) {
        float o[64];
        for (int q = 0; q < 4; q++) _mm512_storeu_ps(o + 16 * q, tot[i][q]);
        /* vector q lane 4L + r: column 16L + 4q + r (unpack, then cvt64's unpack) */
        for (int q = 0; q < 4; q++)
            for (int d = 0; d < 16; d++) {
                const int col = 16 * (d / 4) + 4 * q + d % 4;
                if (col < n) y[(size_t)i * j->ldy + col] = o[16 * q + d];
            }
    }
}

static void ltv_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    const ltv_job *j = arg;
    const int kp = (j->k + 31) / 32 * 32;
    for (int g = begin; g < end; g++) {
        const int c0 = 64 * g, n = j->w->cols - c0 < 64 ? j->w->cols - c0 : 64;
        for (int i0 = 0; i0 < j->m; i0 += 2) {
            const uint16_t *xv = j->xv + (size_t)i0 * kp;
            float *y = j->y + (size_t)i0 * j->ldy + c0;
            if (j->m - i0 >= 2)
                ltv_cols(2, j, xv, kp, c0, n, y);
            else
                ltv_cols(1, j, xv, kp, c0, n, y);
        }
    }
}

int dsr1__fast_vd_linear_t_small(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1,
                                 const float *x, int ldx, int m, float *y, int ldy)
{
    const int tk0 = r0 % TB_KB, k = tk0 + r1 - r0, kp = (k + 31) / 32 * 32;
    if (m > LT_SMALL || m <= 0 || r1 <= r0 || k > LT_KMAX || w->dtype != DSR1_DT_F8_E4M3) return 0;
    pthread_once(&tab_once, tab_init);
    uint16_t xv[LT_SMALL * LT_KMAX];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < kp; v++)
            xv[(size_t)i * kp + v] =
                v < tk0 || v >= k ? 0 : dsr1_f32_to_bf16(x[(size_t)i * ldx + v - tk0]);
    ltv_job j = {w, r0, tk0, k, m, xv, y, ldy};
    const long work = (long)(r1 - r0) * w->cols * (m + 1);
    dsr1_pool_run(work < 32768 ? NULL : pool, (w->cols + 63) / 64, 1, ltv_task, &j);
    return 1;
}

/* ---- the backend --------------------------------------------------------------------- */

static size_t scratch_bytes(int m, int k)
{
    const size_t nb = (size_t)(k + TB_KB - 1) / TB_KB;
    return m <= SMALL_M ? 0
                        : sizeof(uint16_t) * TB_NB * panel_ld(k) + sizeof(float) * TB_NB * nb +
                              sizeof(__m512) * TB_MG * TB_NB;
}

static void rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy, void *scratch)
{
    if (m <= SMALL_M)
        small_rows(rs, act, m, y, ldy);
    else
        tiled_rows(rs, act, m, y, ldy, scratch);
}

static const dsr1__rowops vd = {act_bytes, act_pack, act_put, scratch_bytes, rows};

const dsr1__rowops *dsr1__fast_vd_rowops(void)
{
    pthread_once(&tab_once, tab_init);
    return &vd;
}
