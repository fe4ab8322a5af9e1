/* The fast precision mode's vdpbf16ps backend (AVX512_BF16 machines without AMX; fast.h). Compiled
 * with the AVX-512 flags and -mavx512bf16 (kernels/meson.build); fast_tiles.c
 * hands this backend out only after checking the CPU for AVX512_BF16.
 *
 * The vdpbf16ps backend: the row set's panel is filled in registers (32 FP8 bytes of each
 * of the 16 rows transposed as byte pairs into VNNI order, then converted exactly to bf16
 * by integer operations: chunk_vnni); then, for groups of up to 8 activation
 * rows, per 128-column block, one accumulator of 16 lanes (the set's rows) per activation
 * row takes every pair of the block in increasing order by VDPBF16PS with the row's pair
 * broadcast (odd product then even, each rounded, DAZ/FTZ), and the row's 16 totals take
 * the block sum times the 16 block scales by one FMA. Small groups interleave 2 or 4 blocks
 * (independent chains: the latency of one chain would bound decode) and still add them
 * into the totals in block order, so the order of every output is the same for every M.
 * Up to 4 activation rows (decode) skip the stored panel: each 32-column chunk of the 16
 * rows is converted and transposed in registers and used at once, in the same order. */
#include <string.h>

#include "avx512_common.h"
#include "fast.h"

/* ---- the panel, in registers ----------------------------------------------------------- */

/* 32 FP8 bytes (n < 32: the first n, the rest zero) as 32 bf16, exactly, with integer
 * operations only. The byte sign-extended to 16 bits, S..S S EEEE MMM, shifted left by 4
 * and masked with 0x87f0 is S 0000 EEEE MMM 0000; adding 120 << 7 rebiases the exponent
 * (e4m3 bias 7, bf16 127): that is the bf16 of every normal e4m3 value. Exponent 0 (zero
 * and the subnormals M x 2^-9, normal in bf16) subtracts a correction looked up by M
 * (vpermw); the NaN pattern (E = 15, M = 7, which became S | 0x43f0) adds 0x3bd0 to give
 * the table's quiet NaN S | 0x7fc0. */
DSR1_AVX512_INLINE __m512i e4m3x32_bf16(__m256i b)
{
    /* (120 << 7) + 16 M minus the bf16 of M x 2^-9 (0, 2^-9, 2^-8, 1.5 2^-8, 2^-7, ...) */
    const __m512i fix =
        _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                         0x3c70 - 0x3c60, 0x3c60 - 0x3c40, 0x3c50 - 0x3c20, 0x3c40 - 0x3c00,
                         0x3c30 - 0x3bc0, 0x3c20 - 0x3b80, 0x3c10 - 0x3b00, 0x3c00);
    const __m512i v = _mm512_cvtepi8_epi16(b);
    __m512i r = _mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16((short)0x87f0));
    r = _mm512_add_epi16(r, _mm512_set1_epi16(0x3c00));
    const __mmask32 sub = _mm512_testn_epi16_mask(v, _mm512_set1_epi16(0x78));
    r = _mm512_mask_sub_epi16(r, sub, r, _mm512_permutexvar_epi16(v, fix));
    const __m512i m7f = _mm512_set1_epi16(0x7f);
    const __mmask32 nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, m7f), m7f);
    return _mm512_mask_add_epi16(r, nan, r, _mm512_set1_epi16(0x3bd0));
}

/* r[j] = 16 words (byte pairs) of row j -> r[t] = word t of rows 0..15: a 16 x 16
 * transpose of 16-bit elements on the FP8 bytes, before conversion (half the data of a
 * transpose of the bf16 pairs, and 256-bit shuffles: 64 of them). */
DSR1_AVX512_INLINE void transpose16x16_epi16(__m256i r[16])
{
    __m256i v[2][8];
    for (int h = 0; h < 2; h++) {
        const __m256i *x = r + 8 * h;
        __m256i t[8], u[8];
        for (int i = 0; i < 4; i++) {
            t[2 * i] = _mm256_unpacklo_epi16(x[2 * i], x[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_epi16(x[2 * i], x[2 * i + 1]);
        }
        for (int i = 0; i < 2; i++) {
            u[4 * i + 0] = _mm256_unpacklo_epi32(t[4 * i], t[4 * i + 2]);
            u[4 * i + 1] = _mm256_unpackhi_epi32(t[4 * i], t[4 * i + 2]);
            u[4 * i + 2] = _mm256_unpacklo_epi32(t[4 * i + 1], t[4 * i + 3]);
            u[4 * i + 3] = _mm256_unpackhi_epi32(t[4 * i + 1], t[4 * i + 3]);
        }
        /* u[q] (q < 4): rows 0..3 of the half, words 2q, 2q+1 (+8 in the high lane);
         * u[4 + q]: rows 4..7 */
        for (int q = 0; q < 4; q++) {
            v[h][2 * q] = _mm256_unpacklo_epi64(u[q], u[4 + q]);
            v[h][2 * q + 1] = _mm256_unpackhi_epi64(u[q], u[4 + q]);
        }
    }
    /* v[h][w]: rows 8h .. 8h+7, word w (low lane) and w + 8 (high lane) */
    for (int w = 0; w < 8; w++) {
        r[w] = _mm256_permute2x128_si256(v[0][w], v[1][w], 0x20);
        r[w + 8] = _mm256_permute2x128_si256(v[0][w], v[1][w], 0x31);
    }
}

/* chunk_vnni for a transposed set (rowset.h): its 16 rows are consecutive columns of W,
 * so pair p is two rows of W's bytes at those columns, interleaved: no transposition. */
DSR1_AVX512_INLINE void chunk_vnni_t(const dsr1__rowset *rs, int p0, __m512i z[16])
{
    const int k = rs->cols;
    const __mmask16 live = dsr1__mask16(rs->n);
    const uint8_t *w = rs->row[0];
    for (int t = 0; t < 16; t++) {
        __m128i h[2];
        for (int e = 0; e < 2; e++) {
            const int v = 2 * (p0 + t) + e;
            h[e] = v < rs->tk0 || v >= k
                       ? _mm_setzero_si128()
                       : _mm_maskz_loadu_epi8(live, w + (size_t)(v - rs->tk0) * rs->tld);
        }
        z[t] = e4m3x32_bf16(
            _mm256_set_m128i(_mm_unpackhi_epi8(h[0], h[1]), _mm_unpacklo_epi8(h[0], h[1])));
    }
}

/* The set's 32 columns from pair p0 on as VNNI: z[t] = pair p0 + t of the 16 rows, bf16
 * (zero past column k and past the set's rows). */
DSR1_AVX512_INLINE void chunk_vnni(const dsr1__rowset *rs, int p0, __m512i z[16])
{
    if (rs->tld > 0) {
        chunk_vnni_t(rs, p0, z);
        return;
    }
    const int c = 2 * p0, n = rs->cols - c;
    const __mmask32 tail = n >= 32 ? ~(__mmask32)0 : (__mmask32)(~0u >> (32 - n));
    __m256i r[16];
    for (int j = 0; j < 16; j++) {
        const uint8_t *p = (const uint8_t *)rs->row[j < rs->n ? j : 0] + c;
        r[j] = j >= rs->n ? _mm256_setzero_si256()
               : n >= 32  ? _mm256_loadu_si256((const __m256i *)p)
                          : _mm256_maskz_loadu_epi8(tail, p);
    }
    transpose16x16_epi16(r);
    for (int t = 0; t < 16; t++) z[t] = e4m3x32_bf16(r[t]);
}

void dsr1__fast_panel_fill_avx512(const dsr1__rowset *rs, uint16_t *P, float *mul)
{
    const int k = rs->cols, np = dsr1__fast_pairs(k), nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    for (int j = 0; j < DSR1__RS_MAX; j++)
        for (int b = 0; b < nb; b++)
            mul[b * DSR1__RS_MAX + j] = j < rs->n ? dsr1__rs_scale(rs, j, b) : 0;
    for (int c = 0; c < 2 * np; c += 32) {
        __m512i z[16];
        chunk_vnni(rs, c / 2, z);
        for (int t = 0; t < 16; t++) _mm512_store_si512(P + (size_t)(c / 2 + t) * 32, z[t]);
    }
}

/* ---- the products ---------------------------------------------------------------------- */

#define VD_MR 8 /* activation rows per group */

DSR1_AVX512_INLINE __m512bh pair_bcast(const uint16_t *a)
{
    int32_t v;
    memcpy(&v, a, 4);
    return (__m512bh)_mm512_set1_epi32(v);
}

/* mr activation rows (A, row stride ld) against the panel, nbk blocks interleaved; the
 * rows' 16 outputs into y. */
DSR1_AVX512_INLINE void vd_group(int mr, int nbk, const uint16_t *A, size_t ld, const uint16_t *P,
                                 const float *mul, int k, int n, float *y, int ldy)
{
    const int np = dsr1__fast_pairs(k), nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    __m512 tot[VD_MR];
    for (int i = 0; i < mr; i++) tot[i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += nbk) {
        __m512 acc[4][VD_MR];
        int qn[4];
        for (int bb = 0; bb < nbk; bb++) {
            const int p0 = (b + bb) * 64;
            qn[bb] = p0 >= np ? 0 : np - p0 < 64 ? np - p0 : 64;
            for (int i = 0; i < mr; i++) acc[bb][i] = _mm512_setzero_ps();
        }
        for (int q = 0; q < qn[0]; q++)
            for (int bb = 0; bb < nbk; bb++) {
                if (q >= qn[bb]) continue;
                const int p = (b + bb) * 64 + q;
                const __m512bh w = (__m512bh)_mm512_load_si512(P + (size_t)p * 32);
                for (int i = 0; i < mr; i++)
                    acc[bb][i] = _mm512_dpbf16_ps(acc[bb][i], pair_bcast(A + i * ld + 2 * p), w);
            }
        for (int bb = 0; bb < nbk && b + bb < nb; bb++) {
            const __m512 m = _mm512_loadu_ps(mul + (b + bb) * DSR1__RS_MAX);
            for (int i = 0; i < mr; i++) tot[i] = _mm512_fmadd_ps(acc[bb][i], m, tot[i]);
        }
    }
    for (int i = 0; i < mr; i++)
        _mm512_mask_storeu_ps(y + (size_t)i * ldy, dsr1__mask16(n), tot[i]);
}

static void vd_group_any(int mr, const uint16_t *A, size_t ld, const uint16_t *P, const float *mul,
                         int k, int n, float *y, int ldy)
{
    switch (mr) {
    case 1:
        vd_group(1, 4, A, ld, P, mul, k, n, y, ldy);
        break;
    case 2:
        vd_group(2, 4, A, ld, P, mul, k, n, y, ldy);
        break;
    case 3:
        vd_group(3, 2, A, ld, P, mul, k, n, y, ldy);
        break;
    case 4:
        vd_group(4, 2, A, ld, P, mul, k, n, y, ldy);
        break;
    case 5:
        vd_group(5, 1, A, ld, P, mul, k, n, y, ldy);
        break;
    case 6:
        vd_group(6, 1, A, ld, P, mul, k, n, y, ldy);
        break;
    case 7:
        vd_group(7, 1, A, ld, P, mul, k, n, y, ldy);
        break;
    default:
        vd_group(8, 1, A, ld, P, mul, k, n, y, ldy);
        break;
    }
}

/* m <= VD_SMALL (decode): the panel is never stored. Per 32-column chunk the 16 rows are
 * converted and transposed in registers and used at once by the mr activation rows; the
 * same order as vd_group (per block one chain over its pairs, then the scale). */
#define VD_SMALL 4

/* One block at a time: per 32-column chunk, the 16 rows converted and transposed in
 * registers, then the chunk's 16 pairs into the block's chain. */
DSR1_AVX512_INLINE void vd_small(int mr, const dsr1__rowset *rs, const uint16_t *A, size_t ld,
                                 const float *mul, float *y, int ldy)
{
    const int k = rs->cols, np = dsr1__fast_pairs(k), nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    __m512 tot[VD_SMALL];
    for (int i = 0; i < mr; i++) tot[i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512 acc[VD_SMALL];
        for (int i = 0; i < mr; i++) acc[i] = _mm512_setzero_ps();
        const int p1 = (b + 1) * 64 < np ? (b + 1) * 64 : np;
        for (int p0 = b * 64; p0 < p1; p0 += 16) {
            __m512i z[16];
            chunk_vnni(rs, p0, z);
#pragma GCC unroll 16
            for (int t = 0; t < 16; t++)
                for (int i = 0; i < mr; i++)
                    acc[i] = _mm512_dpbf16_ps(acc[i], pair_bcast(A + i * ld + 2 * (p0 + t)),
                                              (__m512bh)z[t]);
        }
        const __m512 m = _mm512_loadu_ps(mul + b * DSR1__RS_MAX);
        for (int i = 0; i < mr; i++) tot[i] = _mm512_fmadd_ps(acc[i], m, tot[i]);
    }
    for (int i = 0; i < mr; i++)
        _mm512_mask_storeu_ps(y + (size_t)i * ldy, dsr1__mask16(rs->n), tot[i]);
}

static void vd_small_any(int mr, const dsr1__rowset *rs, const uint16_t *A, size_t ld,
                         const float *mul, float *y, int ldy)
{
    switch (mr) {
    case 1:
        vd_small(1, rs, A, ld, mul, y, ldy);
        break;
    case 2:
        vd_small(2, rs, A, ld, mul, y, ldy);
        break;
    case 3:
        vd_small(3, rs, A, ld, mul, y, ldy);
        break;
    default:
        vd_small(4, rs, A, ld, mul, y, ldy);
        break;
    }
}

static size_t vd_scratch_bytes(int m, int k)
{
    (void)m;
    return dsr1__fast_panel_bytes(k) + dsr1__fast_mul_bytes(k);
}

static void vd_rows(const dsr1__rowset *rs, const void *act, int m, float *y, int ldy,
                    void *scratch)
{
    const int k = rs->cols;
    const size_t ld = dsr1__fast_act_ld(k);
    uint16_t *P = scratch;
    float *mul = (float *)((char *)scratch + dsr1__fast_panel_bytes(k));
    if (m <= VD_SMALL) {
        const int nb = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
        for (int j = 0; j < DSR1__RS_MAX; j++)
            for (int b = 0; b < nb; b++)
                mul[b * DSR1__RS_MAX + j] = j < rs->n ? dsr1__rs_scale(rs, j, b) : 0;
        vd_small_any(m, rs, act, ld, mul, y, ldy);
        return;
    }
    dsr1__fast_panel_fill_avx512(rs, P, mul);
    for (int i0 = 0; i0 < m; i0 += VD_MR)
        vd_group_any(m - i0 < VD_MR ? m - i0 : VD_MR, (const uint16_t *)act + (size_t)i0 * ld, ld,
                     P, mul, k, rs->n, y + (size_t)i0 * ldy, ldy);
}

static const dsr1__rowops vdp_rowops = {dsr1__fast_act_bytes, dsr1__fast_act_pack,
                                        dsr1__fast_act_put, vd_scratch_bytes, vd_rows};

const dsr1__rowops *dsr1__fast_vdp_rowops(void)
{
    return &vdp_rowops;
}
