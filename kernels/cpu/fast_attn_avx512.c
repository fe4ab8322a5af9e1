/* The fast mode's attention on vdpbf16ps (AVX512_BF16 machines without AMX; fast_attn.h):
 * steps 2 (scores) and 4 (P.C) of the flash loop. Compiled with the AVX-512 flags,
 * -mavx512bf16 and -ffp-contract=off (kernels/meson.build); fast_tiles.c hands it out only
 * after checking the CPU.
 *
 * Scores: lanes are the 16 heads of the task; per cache row r, one accumulator takes every
 * pair p of wpad in increasing order, VDPBF16PS(acc, broadcast K[r] pair p, Q pairs p),
 * four rows at a time (independent chains). P.C: lanes are 16 latent columns; per head and
 * column group one accumulator takes the chunk's 16 position pairs in order from zero,
 * VDPBF16PS(acc, broadcast P[h] pair q, C[q]), then O = fma(O, alpha[h], acc). */
#include <math.h>
#include <string.h>

#include "avx512_common.h"
#include "fast_attn.h"

DSR1_AVX512_INLINE __m512bh dword_bcast(const uint16_t *a)
{
    int32_t v;
    memcpy(&v, a, 4);
    return (__m512bh)_mm512_set1_epi32(v);
}

/* Rows r0 .. r0 + NR of the chunk: NR independent chains. */
DSR1_AVX512_INLINE void scores_rows(int nr, dsr1__fa_task *x, int r0)
{
    const int np = x->wpad / 2;
    const uint16_t *const *k = x->krow + r0;
    __m512 a[8];
    for (int r = 0; r < nr; r++) a[r] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        const __m512bh q = (__m512bh)_mm512_load_si512(x->q + (size_t)p * 32);
        for (int r = 0; r < nr; r++) a[r] = _mm512_dpbf16_ps(a[r], dword_bcast(k[r] + 2 * p), q);
    }
    for (int r = 0; r < nr; r++) _mm512_store_ps(x->s + (r0 + r) * DSR1__FA_HG, a[r]);
}

static void vd_scores(const dsr1__fa_backend *be, dsr1__fa_task *x)
{
    (void)be;
    int r0 = 0;
    for (; r0 + 8 <= x->nv; r0 += 8) scores_rows(8, x, r0);
    if (r0 < x->nv) scores_rows(x->nv - r0 <= 4 ? 4 : 8, x, r0); /* rows past nv are zero */
}

/* Rows r0, r0 + 1 against head groups g0 .. g0 + NG: each K pair loaded once for the NG
 * groups; per score the chain of scores_rows. */
DSR1_AVX512_INLINE void scores_all_rows(int ng, const dsr1__fa_task *x, int r0, int g0,
                                        const uint16_t *q_all, size_t q_stride, float *s_all)
{
    const int np = x->wpad / 2;
    const uint16_t *k0 = x->krow[r0], *k1 = x->krow[r0 + 1];
    const uint16_t *q = q_all + (size_t)g0 * q_stride;
    __m512 a0[8], a1[8];
    for (int g = 0; g < ng; g++) a0[g] = a1[g] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        const __m512bh b0 = dword_bcast(k0 + 2 * p), b1 = dword_bcast(k1 + 2 * p);
        for (int g = 0; g < ng; g++) {
            const __m512bh qv =
                (__m512bh)_mm512_load_si512(q + (size_t)g * q_stride + (size_t)p * 32);
            a0[g] = _mm512_dpbf16_ps(a0[g], b0, qv);
            a1[g] = _mm512_dpbf16_ps(a1[g], b1, qv);
        }
    }
    for (int g = 0; g < ng; g++) {
        float *s = s_all + ((size_t)(g0 + g) * DSR1__FA_CHUNK + r0) * DSR1__FA_HG;
        _mm512_store_ps(s, a0[g]);
        _mm512_store_ps(s + DSR1__FA_HG, a1[g]);
    }
}

#define SCORES_ALL_CASE(N)                                                                         \
    case N:                                                                                        \
        scores_all_rows(N, x, r0, g0, q_all, q_stride, s_all);                                     \
        break;

static void vd_scores_all(const dsr1__fa_backend *be, const dsr1__fa_task *x, int groups,
                          const uint16_t *q_all, size_t q_stride, float *s_all)
{
    (void)be;
    for (int r0 = 0; r0 < x->nv; r0 += 2) /* row nv (when odd) is a zero row */
        for (int g0 = 0; g0 < groups; g0 += 8) {
            switch (groups - g0 < 8 ? groups - g0 : 8) {
                SCORES_ALL_CASE(1)
                SCORES_ALL_CASE(2)
                SCORES_ALL_CASE(3)
                SCORES_ALL_CASE(4)
                SCORES_ALL_CASE(5)
                SCORES_ALL_CASE(6)
                SCORES_ALL_CASE(7)
            default:
                scores_all_rows(8, x, r0, g0, q_all, q_stride, s_all);
                break;
            }
        }
}

/* Column groups g0 .. g0 + ng of heads h .. h + nh (nh <= 2): each C vector loaded once for
 * both heads. */
DSR1_AVX512_INLINE void pv_groups(int nh, int ng, const dsr1__fa_task *x, int h, int g0)
{
    __m512 acc[2][8];
    for (int i = 0; i < nh; i++)
        for (int g = 0; g < ng; g++) acc[i][g] = _mm512_setzero_ps();
    const size_t cld = 2 * (size_t)x->kvlp;
    for (int q = 0; q < DSR1__FA_CHUNK / 2; q++) {
        __m512bh b[2];
        for (int i = 0; i < nh; i++)
            b[i] = dword_bcast(x->p + (size_t)(h + i) * DSR1__FA_CHUNK + 2 * q);
        const uint16_t *c = x->c + (size_t)q * cld + (size_t)g0 * 32;
        for (int g = 0; g < ng; g++) {
            const __m512bh cv = (__m512bh)_mm512_load_si512(c + g * 32);
            for (int i = 0; i < nh; i++) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], b[i], cv);
        }
    }
    for (int i = 0; i < nh; i++) {
        const __m512 al = _mm512_set1_ps(x->alpha[h + i]);
        float *o = x->o + (size_t)(h + i) * x->kvlp + (size_t)g0 * 16;
        for (int g = 0; g < ng; g++)
            _mm512_store_ps(o + g * 16, _mm512_fmadd_ps(_mm512_load_ps(o + g * 16), al, acc[i][g]));
    }
}

static void vd_pv(const dsr1__fa_backend *be, dsr1__fa_task *x)
{
    (void)be;
    const int groups = x->kvlp / 16;
    int h = 0;
    for (; h + 2 <= x->hn; h += 2) {
        int g0 = 0;
        for (; g0 + 8 <= groups; g0 += 8) pv_groups(2, 8, x, h, g0);
        for (; g0 < groups; g0++) pv_groups(2, 1, x, h, g0);
    }
    for (; h < x->hn; h++) {
        int g0 = 0;
        for (; g0 + 8 <= groups; g0 += 8) pv_groups(1, 8, x, h, g0);
        for (; g0 < groups; g0++) pv_groups(1, 1, x, h, g0);
    }
}

/* ---- step 1's C layout and step 3, vectorised: the portable forms' bits ------------------ */

/* C[q][c] = K[2q][c], K[2q + 1][c]: 32 columns of a row pair per two permutes. */
static void vd_stage_c(dsr1__fa_task *x)
{
    __m512i lo_idx, hi_idx;
    {
        uint16_t lo[32], hi[32];
        for (int c = 0; c < 16; c++) {
            lo[2 * c] = (uint16_t)c;
            lo[2 * c + 1] = (uint16_t)(32 + c);
            hi[2 * c] = (uint16_t)(16 + c);
            hi[2 * c + 1] = (uint16_t)(48 + c);
        }
        lo_idx = _mm512_loadu_si512(lo);
        hi_idx = _mm512_loadu_si512(hi);
    }
    for (int q = 0; q < DSR1__FA_CHUNK / 2; q++) {
        const uint16_t *k0 = x->krow[2 * q], *k1 = x->krow[2 * q + 1];
        uint16_t *d = x->c + (size_t)q * x->kvlp * 2;
        for (int c = 0; c < x->kvlp; c += 32) {
            const int n = x->kvl - c;
            const __mmask32 m = n >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << n) - 1);
            const __m512i a = _mm512_maskz_loadu_epi16(m, k0 + c);
            const __m512i b = _mm512_maskz_loadu_epi16(m, k1 + c);
            _mm512_store_si512(d + 2 * c, _mm512_permutex2var_epi16(a, lo_idx, b));
            if (c + 16 < x->kvlp)
                _mm512_store_si512(d + 2 * c + 32, _mm512_permutex2var_epi16(a, hi_idx, b));
        }
    }
}

/* dsr1__fa_exp on 16 lanes: the same operations in the same order. */
DSR1_AVX512_INLINE __m512 exp16(__m512 x)
{
    const __mmask16 lo = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    const __mmask16 hi = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.5f), _CMP_GT_OQ);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269502f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693145751953125f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-1.42860677e-06f), r);
    __m512 p = _mm512_set1_ps(1.98412701e-04f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888892e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333377e-03f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666679e-02f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666672e-01f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_maskz_mov_ps((__mmask16)~lo, n)),
                         _mm512_set1_epi32(127)),
        23);
    __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    y = _mm512_maskz_mov_ps((__mmask16)~lo, y);
    return _mm512_mask_mov_ps(y, hi, _mm512_set1_ps(INFINITY));
}

/* fp32 -> bf16 bits, nearest even, in the low half of each lane (no NaN here). */
DSR1_AVX512_INLINE __m512i bf16_rne(__m512 v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))),
                             16);
}

/* Lanes are the heads: per head exactly dsr1__fa_softmax's operations. */
static void vd_softmax(dsr1__fa_task *x)
{
    const __m512 m = _mm512_load_ps(x->m), sc = _mm512_set1_ps(x->scale);
    __m512 s[DSR1__FA_CHUNK], mx = m;
    for (int r = 0; r < x->nv; r++) {
        s[r] = _mm512_mul_ps(_mm512_load_ps(x->s + r * DSR1__FA_HG), sc);
        mx = _mm512_max_ps(s[r], mx); /* s > mx ? s : mx */
    }
    const __m512 alpha = exp16(_mm512_sub_ps(m, mx));
    __m512 sum = _mm512_setzero_ps();
    uint16_t pt[DSR1__FA_CHUNK][16];
    for (int r = 0; r < DSR1__FA_CHUNK; r++) {
        __m512i b = _mm512_setzero_si512();
        if (r < x->nv) b = bf16_rne(exp16(_mm512_sub_ps(s[r], mx)));
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)));
        _mm256_storeu_si256((__m256i *)pt[r], _mm512_cvtepi32_epi16(b));
    }
    _mm512_store_ps(x->l, _mm512_fmadd_ps(_mm512_load_ps(x->l), alpha, sum));
    _mm512_store_ps(x->m, mx);
    _mm512_store_ps(x->alpha, alpha);
    for (int h = 0; h < x->hn; h++)
        for (int r = 0; r < DSR1__FA_CHUNK; r++) x->p[h * DSR1__FA_CHUNK + r] = pt[r][h];
}

static const dsr1__fa_backend vd = {.scores = vd_scores,
                                    .pv = vd_pv,
                                    .stage_c = vd_stage_c,
                                    .direct_k = 1,
                                    .scores_all = vd_scores_all,
                                    .softmax = vd_softmax};

void dsr1__fa_vd_stage_c(dsr1__fa_task *x)
{
    vd_stage_c(x);
}

void dsr1__fa_vd_softmax(dsr1__fa_task *x)
{
    vd_softmax(x);
}

const dsr1__fa_backend *dsr1__fa_vd_backend(void)
{
    return &vd;
}
