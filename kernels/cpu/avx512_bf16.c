/* The bf16 precision mode ("avx512-bf16"): products of FP8 weights with at least
 * BF16_MIN_M activation rows (prefill, where the product is compute-bound) take bf16
 * activations and AVX512_BF16 dot products (vdpbf16ps: 32 multiply-adds per instruction
 * where an FMA does 16); smaller products (decode, bandwidth-bound: bf16 would not make
 * them faster), other dtypes and the other kernels are the avx512 variant's, exact.
 * Not exact: the activations entering a bf16 product are rounded to bf16 (a relative
 * 2^-9). Its error on the golden logits is in docs/kernels.md. Nor batch-invariant: a
 * token's result depends on whether its product had at least BF16_MIN_M rows.
 *
 * Arithmetic of a bf16 product (the row-set backend of kernels/rowset.h):
 * - activations rounded to bf16 (nearest even) when packed, block-major like the exact
 *   tiled path (X[block][row][128], zero past the last column);
 * - FP8 weights converted to bf16 exactly (e4m3 has 4 significant bits, bf16 8, and
 *   bf16 has float32's exponent range): the float16 image of the byte (avx512_common.h),
 *   widened to float32, narrowed to bf16, is value / 256 as in the exact mode; the 16 rows
 *   of a set at a time into an L2-resident panel;
 * - every output is a 16-lane dot product: per 128-column scale block, lane l takes the
 *   column pairs (2l, 2l+1) of each 32-column step in increasing order by vdpbf16ps (the
 *   products of bf16 values are exact in float32), the block sum then joins the lane's
 *   total times the block's scale (one FMA), and dsr1__hsum adds the lanes. Tiles of 3
 *   activation rows x 4 weight rows keep their 12 block sums and 12 lane totals in
 *   registers across all blocks (12-31% faster than totals kept in L1 between blocks).
 * Among products that take this path an output depends only on its own operands, and
 * expert_ffn chooses per expert (by its token count) as linear does per call, so the
 * variant's expert_ffn equals its linear expert after expert.
 *
 * Compiled with -mavx512bf16 on top of the avx512 flags (kernels/meson.build, this file
 * only); dispatch.c hands the variant out only after checking the CPU for AVX512_BF16. */
#include <stdlib.h>
#include <string.h>

#include "avx512_common.h"

#define BF16_MIN_M 16           /* activation rows from which a product takes bf16 */
#define BF_NB      DSR1__RS_MAX /* weight rows of a converted panel */
#define BF_KB      DSR1_QBLOCK
#define BF_MR      3 /* activation rows of a tile (3 x 4 block sums and totals in registers) */
#define BF_NR      4 /* weight rows of a tile */

/* Panel row stride in bf16 values: a multiple of 32 off multiples of 4 KB. */
static size_t panel_ld(int k)
{
    return (size_t)(k + 31) / 32 * 32 + 32;
}

/* 32 consecutive values from n (<= 32) floats at p, rounded to bf16, zero past n. */
DSR1_AVX512_INLINE __m512i bf16x32(const float *p, int n)
{
    const __m512 lo = _mm512_maskz_loadu_ps(dsr1__mask16(n), p);
    const __m512 hi = _mm512_maskz_loadu_ps(dsr1__mask16(n > 16 ? n - 16 : 0), p + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* ---- activations: bf16, block-major ------------------------------------------------ */

static size_t act_bytes(int m, int k)
{
    return sizeof(uint16_t) * (size_t)m * ((k + BF_KB - 1) / BF_KB) * BF_KB;
}

static uint16_t *act_at(void *act, int m, int i, int c)
{
    return (uint16_t *)act + ((size_t)(c / BF_KB) * m + i) * BF_KB + c % BF_KB;
}

static void act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst)
{
    for (int i = 0; i < m; i++) {
        const float *xs = x + (size_t)(rows ? rows[i] : i) * ldx;
        for (int c = 0; c < (k + BF_KB - 1) / BF_KB * BF_KB; c += 32)
            _mm512_store_si512(act_at(dst, m, i, c), bf16x32(xs + c, c < k ? k - c : 0));
    }
}

static void act_put(void *dst, int m, int k, int i, int c, const float *v, int n)
{
    (void)k;
    for (int q = 0; q < n; q += 16) {
        const __mmask16 mask = dsr1__mask16(n - q);
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, v + q));
        _mm256_mask_storeu_epi16(act_at(dst, m, i, c + q), mask, (__m256i)h);
    }
}

/* ---- products ---------------------------------------------------------------------- */

/* The set's FP8 rows (the only dtype the variant sends here) as bf16 into P (row stride
 * ldp, zero past column k and past the set's rows), their multipliers into
 * mul[block][BF_NB]. */
static void panel_fill(const dsr1__rowset *rs, uint16_t *P, size_t ldp, float *mul)
{
    const dsr1_dtype dt = DSR1_DT_F8_E4M3;
    const int k = rs->cols;
    for (int jj = 0; jj < BF_NB; jj++) {
        uint16_t *p = P + (size_t)jj * ldp;
        dsr1__rsmul(dt, rs, jj, BF_NB, mul);
        if (jj >= rs->n) {
            for (int c = 0; c < k; c += 32) _mm512_store_si512(p + c, _mm512_setzero_si512());
            continue;
        }
        for (int c = 0; c < k; c += 32) {
            const int n = k - c;
            const __m512 lo = dsr1__wraw(dt, rs->row[jj], c, n < 16 ? n : 16);
            const __m512 hi = n > 16 ? dsr1__wraw(dt, rs->row[jj], c + 16, n < 32 ? n - 16 : 16)
                                     : _mm512_setzero_ps();
            _mm512_store_si512(p + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

/* mr activation rows (X: row stride BF_KB, block stride ldb) x BF_NR panel rows, every
 * block, the lane totals kept in registers: the finished dot products of the nr (<= BF_NR)
 * rows into y. */
DSR1_AVX512_INLINE void tile(int mr, const uint16_t *X, size_t ldb, const uint16_t *P, size_t ldp,
                             const float *mul, int k, int nr, float *y, int ldy)
{
    __m512 tot[BF_MR][BF_NR];
    for (int i = 0; i < mr; i++)
        for (int jj = 0; jj < BF_NR; jj++) tot[i][jj] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < k; c0 += BF_KB, b++) {
        const int kbn = k - c0 < BF_KB ? k - c0 : BF_KB;
        const uint16_t *xb = X + (size_t)b * ldb;
        __m512 acc[BF_MR][BF_NR];
        for (int i = 0; i < mr; i++)
            for (int jj = 0; jj < BF_NR; jj++) acc[i][jj] = _mm512_setzero_ps();
        for (int c = 0; c < kbn; c += 32) {
            __m512bh xv[BF_MR];
            for (int i = 0; i < mr; i++)
                xv[i] = (__m512bh)_mm512_load_si512(xb + (size_t)i * BF_KB + c);
            for (int jj = 0; jj < BF_NR; jj++) {
                const __m512bh wv = (__m512bh)_mm512_load_si512(P + (size_t)jj * ldp + c0 + c);
                for (int i = 0; i < mr; i++) acc[i][jj] = _mm512_dpbf16_ps(acc[i][jj], xv[i], wv);
            }
        }
        for (int jj = 0; jj < BF_NR; jj++) {
            const __m512 m = _mm512_set1_ps(mul[b * BF_NB + jj]);
            for (int i = 0; i < mr; i++) tot[i][jj] = _mm512_fmadd_ps(acc[i][jj], m, tot[i][jj]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int jj = 0; jj < nr; jj++) y[(size_t)i * ldy + jj] = dsr1__hsum(tot[i][jj]);
}

static void tile_any(int mr, const uint16_t *X, size_t ldb, const uint16_t *P, size_t ldp,
                     const float *mul, int k, int nr, float *y, int ldy)
{
    if (mr >= 3)
        tile(3, X, ldb, P, ldp, mul, k, nr, y, ldy);
    else if (mr == 2)
        tile(2, X, ldb, P, ldp, mul, k, nr, y, ldy);
    else
        tile(1, X, ldb, P, ldp, mul, k, nr, y, ldy);
}

static size_t scratch_bytes(int m, int k)
{
    (void)m;
    const size_t nb = (size_t)(k + BF_KB - 1) / BF_KB;
    return sizeof(uint16_t) * BF_NB * panel_ld(k) + sizeof(float) * BF_NB * nb;
}

/* The set's panel against the activation rows, BF_MR at a time (their rows stay in L1/L2
 * across the set's BF_NR-row tiles). */
static void rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy, void *scratch)
{
    const int k = rs->cols;
    const size_t ldp = panel_ld(k);
    uint16_t *P = scratch;
    float *mul = (float *)(P + BF_NB * ldp);
    panel_fill(rs, P, ldp, mul);
    for (int i0 = 0; i0 < m; i0 += BF_MR)
        for (int rb = 0; rb < rs->n; rb += BF_NR)
            tile_any(m - i0, (const uint16_t *)act + (size_t)i0 * BF_KB, (size_t)m * BF_KB,
                     P + (size_t)rb * ldp, ldp, mul + rb, k,
                     rs->n - rb < BF_NR ? rs->n - rb : BF_NR, y + (size_t)i0 * ldy + rb, ldy);
}

static const dsr1__rowops bf16 = {act_bytes, act_pack, act_put, scratch_bytes, rows};

/* ---- the variant's entries ----------------------------------------------------------- */

/* For expert_ffn, where each expert has its own m: bf16 from BF16_MIN_M rows, else exact
 * (every entry gets m, so the layout chosen for an expert's activations is consistent). */
static const dsr1__rowops *by_m(int m)
{
    return m >= BF16_MIN_M ? &bf16 : dsr1__avx512_rowops();
}

static size_t mix_act_bytes(int m, int k)
{
    return by_m(m)->act_bytes(m, k);
}

static void mix_act_pack(const float *x, int ldx, const int *rows, int m, int k, void *dst)
{
    by_m(m)->act_pack(x, ldx, rows, m, k, dst);
}

static void mix_act_put(void *dst, int m, int k, int i, int c, const float *v, int n)
{
    by_m(m)->act_put(dst, m, k, i, c, v, n);
}

static size_t mix_scratch_bytes(int m, int k)
{
    return by_m(m)->scratch_bytes(m, k);
}

static void mix_rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy,
                     void *scratch)
{
    by_m(m)->rows(rs, act, m, y, ldy, scratch);
}

static const dsr1__rowops mixed = {mix_act_bytes, mix_act_pack, mix_act_put, mix_scratch_bytes,
                                   mix_rows};

void dsr1__avx512bf16_linear(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                             int ldx, int m, float *y, int ldy)
{
    if (w->dtype == DSR1_DT_F8_E4M3 && m >= BF16_MIN_M)
        dsr1__rowops_linear(&bf16, pool, w, r0, r1, x, ldx, m, y, ldy);
    else
        dsr1__avx512_linear(pool, w, r0, r1, x, ldx, m, y, ldy);
}

/* Experts whose weights are not all FP8 (never so in DeepSeek's checkpoints) run in the
 * exact mode, the whole call. */
dsr1_status dsr1__avx512bf16_expert_ffn(dsr1_pool *pool, const dsr1_expert *ex, int ne,
                                        const float *x, int ldx, float *y, int ldy)
{
    for (int e = 0; e < ne; e++)
        if (ex[e].n > 0 && ex[e].gate && ex[e].down &&
            (ex[e].gate->dtype != DSR1_DT_F8_E4M3 || ex[e].down->dtype != DSR1_DT_F8_E4M3))
            return dsr1__avx512_expert_ffn(pool, ex, ne, x, ldx, y, ldy);
    return dsr1__rowops_expert_ffn(&mixed, pool, ex, ne, x, ldx, y, ldy);
}
