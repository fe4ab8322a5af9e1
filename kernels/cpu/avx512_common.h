/* Internal to the AVX-512 kernel variant (kernels/cpu/avx512*.c): weight conversion in
 * registers and the entry points the ops table in avx512.c is made of.
 *
 * Only files compiled with the AVX-512 flags (see kernels/meson.build) may include this
 * header, and nothing in them may run before dispatch.c has checked the CPU.
 *
 * FP8 e4m3 -> float32 without a table: the byte, sign-extended to 16 bits and shifted left
 * by 7, is a float16 with the e4m3 exponent and mantissa in the right places (sign in bit
 * 15, the sign copy that lands in bit 14 masked off). Its value is the e4m3 value / 2^8
 * (float16 bias 15 vs e4m3 bias 7), e4m3 subnormals become float16 subnormals, and the
 * hardware float16 -> float32 conversion is exact, so value = half * (scale * 256) is
 * bit-identical to the portable e4m3_table[b] * scale: the same real product, rounded
 * once, only the exponent of one factor moved. No float32 denormal ever appears (which a
 * shift straight into float32 bits would produce for e4m3 subnormals: denormal operands
 * made the decode path up to 2.5x slower on the AMD EPYC we measured). The NaN
 * patterns (S.1111.111) become +-480: they never occur in checkpoints and cannot fault. */
#ifndef DSR1_AVX512_COMMON_H
#define DSR1_AVX512_COMMON_H

#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"
#include "rowset.h"

#define DSR1_AVX512_INLINE static inline __attribute__((always_inline))

/* float multiplier that turns the float16 image of an e4m3 byte into value * scale */
#define DSR1_E4M3_HALF_BIAS 256.0f

/* Lanes [0, n) set, n in [0, 16]. */
DSR1_AVX512_INLINE __mmask16 dsr1__mask16(int n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* 16 e4m3 bytes -> their float32 values / 256 (multiply by scale * 256). */
DSR1_AVX512_INLINE __m512 dsr1__e4m3x16(const uint8_t *p)
{
    __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
    h = _mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16((short)0xbfff));
    return _mm512_cvtph_ps(h);
}

/* The same for the first n bytes (n < 16); lanes past n are 0 and bytes past n unread. */
DSR1_AVX512_INLINE __m512 dsr1__e4m3x16_n(const uint8_t *p, int n)
{
    __m256i h = _mm256_cvtepi8_epi16(_mm_maskz_loadu_epi8(dsr1__mask16(n), p));
    h = _mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16((short)0xbfff));
    return _mm512_cvtph_ps(h);
}

DSR1_AVX512_INLINE __m512 dsr1__bf16x16(const uint16_t *p)
{
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

DSR1_AVX512_INLINE __m512 dsr1__bf16x16_n(const uint16_t *p, int n)
{
    __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(dsr1__mask16(n), p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

/* Weights c .. c+16 (or c .. c+n with n < 16, the rest 0) of one row as float32, unscaled:
 * for FP8 the e4m3 value / 256 (the block scale's multiplier, dsr1__wscale, puts it right),
 * bf16 and f32 exact. `dt` is a compile-time constant at every call site, so the switch
 * disappears. */
DSR1_AVX512_INLINE __m512 dsr1__wraw(dsr1_dtype dt, const void *row, int c, int n)
{
    switch (dt) {
    case DSR1_DT_F8_E4M3: {
        const uint8_t *p = (const uint8_t *)row + c;
        return n >= 16 ? dsr1__e4m3x16(p) : dsr1__e4m3x16_n(p, n);
    }
    case DSR1_DT_BF16: {
        const uint16_t *p = (const uint16_t *)row + c;
        return n >= 16 ? dsr1__bf16x16(p) : dsr1__bf16x16_n(p, n);
    }
    default: {
        const float *p = (const float *)row + c;
        return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(dsr1__mask16(n), p);
    }
    }
}

/* The same times `mul` (dsr1__wscale): the exact dequantised weights (FP8 only; bf16 and
 * f32 are returned as they are). */
DSR1_AVX512_INLINE __m512 dsr1__wload(dsr1_dtype dt, const void *row, int c, int n, __m512 mul)
{
    const __m512 v = dsr1__wraw(dt, row, c, n);
    return dt == DSR1_DT_F8_E4M3 ? _mm512_mul_ps(v, mul) : v;
}

/* Element size of a linear weight's dtype (1, 2 or 4 bytes). */
DSR1_AVX512_INLINE size_t dsr1__wsize(dsr1_dtype dt)
{
    return dt == DSR1_DT_F8_E4M3 ? 1 : dt == DSR1_DT_BF16 ? 2 : 4;
}

/* The same from a row's block scales (a row set's scale[j]; NULL for non-FP8 weights). */
DSR1_AVX512_INLINE float dsr1__rsscale(dsr1_dtype dt, const float *s, int b)
{
    return dt == DSR1_DT_F8_E4M3 ? s[b] * DSR1_E4M3_HALF_BIAS : 1.0f;
}

/* Row j of a set's multipliers, mul[block * stride + j]: its block scales (times 256 for
 * FP8, 1 otherwise), or 0 past the set's rows (a converted panel's zero rows). */
DSR1_AVX512_INLINE void dsr1__rsmul(dsr1_dtype dt, const dsr1__rowset *rs, int j, int stride,
                                    float *mul)
{
    const int nb = (rs->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    for (int b = 0; b < nb; b++)
        mul[b * stride + j] = j < rs->n ? dsr1__rsscale(dt, rs->scale[j], b) : 0.0f;
}

/* The fixed tree that adds the 16 lanes of a dot product. */
DSR1_AVX512_INLINE float dsr1__hsum(__m512 v)
{
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* The multiplier for row r, column block b (1 for non-FP8 weights). */
DSR1_AVX512_INLINE float dsr1__wscale(const dsr1_linear *w, int r, int b)
{
    if (w->dtype != DSR1_DT_F8_E4M3) return 1.0f;
    const int nb = (w->cols + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    return w->scale[(size_t)(r / DSR1_QBLOCK) * nb + b] * DSR1_E4M3_HALF_BIAS;
}

/* The exact mode's row-set backend, which drives the two below. */
const dsr1__rowops *dsr1__avx512_rowops(void);
void dsr1__avx512_linear(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                         int ldx, int m, float *y, int ldy);
dsr1_status dsr1__avx512_expert_ffn(dsr1_pool *pool, const dsr1_expert *ex, int ne, const float *x,
                                    int ldx, float *y, int ldy);
void dsr1__avx512_linear_t(dsr1_pool *pool, const dsr1_linear *w, int r0, int r1, const float *x,
                           int ldx, int m, float *y, int ldy);

#endif
