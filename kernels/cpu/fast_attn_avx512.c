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
#include <string.h>

#include "avx512_common.h"
#include "fast_attn.h"

DSR1_AVX512_INLINE __m512bh dword_bcast(const uint16_t *a)
{
    int32_t v;
    memcpy(&v, a, 4);
    return (__m512bh)_mm512_set1_epi32(v);
}

static void vd_scores(const dsr1__fa_backend *be, dsr1__fa_task *x)
{
    (void)be;
    const int np = x->wpad / 2;
    for (int r0 = 0; r0 < x->nv; r0 += 4) {
        const uint16_t *k = x->k + (size_t)r0 * x->wpad;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int p = 0; p < np; p++) {
            const __m512bh q = (__m512bh)_mm512_load_si512(x->q + (size_t)p * 32);
            a0 = _mm512_dpbf16_ps(a0, dword_bcast(k + 2 * p), q);
            a1 = _mm512_dpbf16_ps(a1, dword_bcast(k + x->wpad + 2 * p), q);
            a2 = _mm512_dpbf16_ps(a2, dword_bcast(k + 2 * x->wpad + 2 * p), q);
            a3 = _mm512_dpbf16_ps(a3, dword_bcast(k + 3 * x->wpad + 2 * p), q);
        }
        _mm512_store_ps(x->s + (r0 + 0) * DSR1__FA_HG, a0);
        _mm512_store_ps(x->s + (r0 + 1) * DSR1__FA_HG, a1);
        _mm512_store_ps(x->s + (r0 + 2) * DSR1__FA_HG, a2);
        _mm512_store_ps(x->s + (r0 + 3) * DSR1__FA_HG, a3);
    }
}

/* Column groups g0 .. g0 + NG of head h. */
DSR1_AVX512_INLINE void pv_groups(int ng, const dsr1__fa_task *x, int h, int g0)
{
    __m512 acc[8];
    for (int g = 0; g < ng; g++) acc[g] = _mm512_setzero_ps();
    const uint16_t *p = x->p + (size_t)h * DSR1__FA_CHUNK;
    const size_t cld = 2 * (size_t)x->kvlp;
    for (int q = 0; q < DSR1__FA_CHUNK / 2; q++) {
        const __m512bh b = dword_bcast(p + 2 * q);
        const uint16_t *c = x->c + (size_t)q * cld + (size_t)g0 * 32;
        for (int g = 0; g < ng; g++)
            acc[g] = _mm512_dpbf16_ps(acc[g], b, (__m512bh)_mm512_load_si512(c + g * 32));
    }
    const __m512 al = _mm512_set1_ps(x->alpha[h]);
    float *o = x->o + (size_t)h * x->kvlp + (size_t)g0 * 16;
    for (int g = 0; g < ng; g++)
        _mm512_store_ps(o + g * 16, _mm512_fmadd_ps(_mm512_load_ps(o + g * 16), al, acc[g]));
}

static void vd_pv(const dsr1__fa_backend *be, dsr1__fa_task *x)
{
    (void)be;
    const int groups = x->kvlp / 16;
    for (int h = 0; h < x->hn; h++) {
        int g0 = 0;
        for (; g0 + 8 <= groups; g0 += 8) pv_groups(8, x, h, g0);
        for (; g0 < groups; g0++) pv_groups(1, x, h, g0);
    }
}

static const dsr1__fa_backend vd = {NULL, vd_scores, vd_pv, NULL, NULL};

const dsr1__fa_backend *dsr1__fa_vd_backend(void)
{
    return &vd;
}
