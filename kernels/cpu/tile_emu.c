/* The software emulation of the tile layer (tile.h): bit-exact TDPBF16PS after Intel's
 * documented semantics, so the tile kernels run and are tested where there is no AMX.
 *
 * What is implemented, from the Intel 64 and IA-32 Architectures Software Developer's
 * Manual, vol. 2, "TDPBF16PS — Dot Product of BF16 Tiles Accumulated into Packed Single
 * Precision Tile" (Operation section), for C = tmm_c (M x N fp32), A = tmm_a (M rows of K
 * bf16 pairs), B = tmm_b (K rows of N bf16 pairs, i.e. VNNI layout), M = rows[c],
 * N = colsb[c] / 4, K = colsb[a] / 4:
 *
 *   for m < M:
 *     t[0 .. 2N) = 0
 *     for k < K: for n < N:
 *       t[2n]   = fma(A[m].bf16[2k],   B[k].bf16[2n],   t[2n])     (even chain)
 *       t[2n+1] = fma(A[m].bf16[2k+1], B[k].bf16[2n+1], t[2n+1])   (odd chain)
 *     for n < N:
 *       C[m][n] = C[m][n] + (t[2n] + t[2n+1])
 *     row m past colsb[c] bytes zeroed
 *   rows M .. 15 of C zeroed
 *
 * i.e. per output element and per instruction two separate fp32 chains (even and odd
 * elements of the pairs) over k in increasing order, started at zero, summed, then added to
 * C once. Every step is "FP32 FMA with DAZ=FTZ=1, RNE rounding, MXCSR neither consulted nor
 * updated": each fma and each add rounds once to nearest even; denormal inputs (bf16
 * denormals, a denormal already in C) are read as zero of the same sign, a denormal result
 * is flushed to zero of the same sign. The bf16 -> fp32 widening (make_fp32) is exact.
 * Tininess is judged on the rounded result (a result that rounds up to FLT_MIN is kept), as
 * x86 does for its FTZ. NaN payloads are whatever fmaf produces (the kernels never see
 * NaN). Not emulated: #GP/#UD conditions (mismatched shapes abort instead), TSX, and
 * start_row (always 0 here).
 *
 * VDPBF16PS (AVX512_BF16) is documented differently: per lane ONE chain, the odd pair
 * element first, then the even one (SDM, VDPBF16PS Operation), and that is what the AMD
 * EPYC here computes (checked bit for bit on 4.8M random lanes including underflows). So
 * AMX and AVX512_BF16 machines sum in different orders; see fast.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tile.h"

typedef struct {
    dsr1__tilecfg cfg;
    int configured;
    unsigned char t[DSR1__TILES][DSR1__TILE_ROWS * DSR1__TILE_COLSB];
} emu_state;

static _Thread_local emu_state st;

static float daz(float x)
{
    return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x;
}

float dsr1__fma_daz_ftz(float a, float b, float c)
{
    return daz(fmaf(daz(a), daz(b), daz(c)));
}

static float add_daz_ftz(float a, float b)
{
    return daz(daz(a) + daz(b));
}

static float bf16_at(const unsigned char *p)
{
    uint32_t u = (uint32_t)(p[0] | (p[1] << 8)) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void fail(const char *what)
{
    fprintf(stderr, "tile emulation: %s\n", what);
    abort();
}

static void check_tile(int t)
{
    if (t < 0 || t >= DSR1__TILES) fail("no such tile");
    if (!st.configured) fail("tile used before config");
}

static void emu_config(const dsr1__tilecfg *cfg)
{
    if (cfg->palette != 1) fail("only palette 1 is emulated");
    for (int t = 0; t < DSR1__TILES; t++)
        if (cfg->rows[t] > DSR1__TILE_ROWS || cfg->colsb[t] > DSR1__TILE_COLSB || cfg->colsb[t] % 4)
            fail("tile shape out of range");
    st.cfg = *cfg;
    st.cfg.start_row = 0;
    st.configured = 1;
    memset(st.t, 0, sizeof st.t); /* LDTILECFG zeroes the tile data */
}

static void emu_release(void)
{
    st.configured = 0;
    memset(st.t, 0, sizeof st.t);
}

static void emu_zero(int t)
{
    check_tile(t);
    memset(st.t[t], 0, sizeof st.t[t]);
}

static void emu_load(int t, const void *base, size_t stride)
{
    check_tile(t);
    const int rows = st.cfg.rows[t], colsb = st.cfg.colsb[t];
    memset(st.t[t], 0, sizeof st.t[t]);
    for (int r = 0; r < rows; r++)
        memcpy(st.t[t] + r * DSR1__TILE_COLSB, (const char *)base + (size_t)r * stride, colsb);
}

static void emu_store(int t, const void *base_out, size_t stride)
{
    check_tile(t);
    const int rows = st.cfg.rows[t], colsb = st.cfg.colsb[t];
    for (int r = 0; r < rows; r++)
        memcpy((char *)base_out + (size_t)r * stride, st.t[t] + r * DSR1__TILE_COLSB, colsb);
}

static void emu_dpbf16ps(int c, int a, int b)
{
    check_tile(c);
    check_tile(a);
    check_tile(b);
    const int M = st.cfg.rows[c], N = st.cfg.colsb[c] / 4, K = st.cfg.colsb[a] / 4;
    if (st.cfg.rows[a] != M || st.cfg.rows[b] != K || st.cfg.colsb[b] != st.cfg.colsb[c])
        fail("TDPBF16PS: tile shapes do not fit together");
    for (int m = 0; m < M; m++) {
        float t[2 * DSR1__TILE_COLSB / 4] = {0};
        const unsigned char *ar = st.t[a] + m * DSR1__TILE_COLSB;
        for (int k = 0; k < K; k++) {
            const unsigned char *br = st.t[b] + k * DSR1__TILE_COLSB;
            const float a0 = bf16_at(ar + 4 * k), a1 = bf16_at(ar + 4 * k + 2);
            for (int n = 0; n < N; n++) {
                t[2 * n] = dsr1__fma_daz_ftz(a0, bf16_at(br + 4 * n), t[2 * n]);
                t[2 * n + 1] = dsr1__fma_daz_ftz(a1, bf16_at(br + 4 * n + 2), t[2 * n + 1]);
            }
        }
        unsigned char *cr = st.t[c] + m * DSR1__TILE_COLSB;
        for (int n = 0; n < N; n++) {
            float v;
            memcpy(&v, cr + 4 * n, 4);
            v = add_daz_ftz(v, add_daz_ftz(t[2 * n], t[2 * n + 1]));
            memcpy(cr + 4 * n, &v, 4);
        }
        memset(cr + 4 * N, 0, DSR1__TILE_COLSB - 4 * N);
    }
    memset(st.t[c] + M * DSR1__TILE_COLSB, 0, (DSR1__TILE_ROWS - M) * DSR1__TILE_COLSB);
}

static void emu_fma_rows(float *tot, const float *c, const float *mul, int rows)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < 16; j++) tot[i * 16 + j] = fmaf(c[i * 16 + j], mul[j], tot[i * 16 + j]);
}

static void emu_rescale_rows(float *o, size_t ldo, const float *alpha, const float *c, int rows)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < 16; j++) o[i * ldo + j] = fmaf(o[i * ldo + j], alpha[i], c[i * 16 + j]);
}

static const dsr1__tileops emu = {"emulated", emu_config,   emu_release,  emu_zero,        emu_load,
                                  emu_store,  emu_dpbf16ps, emu_fma_rows, emu_rescale_rows};

const dsr1__tileops *dsr1__tile_emu(void)
{
    return &emu;
}
