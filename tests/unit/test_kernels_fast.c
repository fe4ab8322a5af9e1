/* The fast precision mode (bf16-tiles, kernels/cpu/fast.h) and its tile layer
 * (kernels/cpu/tile.h), against references computed here:
 * - e4m3 -> bf16 for all 256 codes against the float table and a formula;
 * - the emulated TDPBF16PS against a scalar model of Intel's pseudocode on random tiles
 *   (normal, tiny and denormal values, random shapes), and against the real instruction
 *   where the CPU has AMX (DSR1_REQUIRE_AMX=1 turns its absence into a failure);
 * - each path of the variant (vdpbf16ps; tiles, emulated; tiles on AMX where present) bit
 *   for bit against a scalar model of its own documented summation order, and against a
 *   float64 reference within a bound derived from bf16 rounding, which a single wrong tile
 *   of weights exceeds (self-check);
 * - expert_ffn equal to the path's linear expert after expert;
 * - batch invariance: a row alone (M = 1) equals, bit for bit, the same row inside
 *   M = 2, 7, 16, 33, 128, 300 among other random rows, for linear and expert_ffn.
 * Paths this machine cannot run are skipped (with a line), never failed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/fast.h"
#include "kernels.h"
#include "numeric.h"

/* ---- random data ----------------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static float frand(void)
{
    return (float)(rnd() / 2147483648.0 - 1.0); /* [-1, 1) */
}

static float bf(uint16_t h)
{
    return dsr1_bf16_to_f32(h);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* A bf16 with a random sign and mantissa and an exponent field in [e0, e0 + span). */
static uint16_t rand_bf16(int e0, int span)
{
    const int e = e0 + (int)(rnd() % (unsigned)span);
    return (uint16_t)((rnd() & 0x807f) | (e << 7));
}

/* ---- the scalar model of one fp32 step: DAZ/FTZ, nearest even ------------------------------
 * Independent of tile_emu.c's fmaf: a*b of two bf16 (or a block sum and an fp32 scale
 * product in double with <= 48 significant bits) is exact in double, and c + a*b rounded to
 * double then to float is the single rounding to float (the cases where double rounding
 * could differ need more than 53 bits of span, with the smaller term far below half an ulp
 * of float). */

static float daz(float x)
{
    return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x;
}

static float step(float a, float b, float c)
{
    a = daz(a), b = daz(b), c = daz(c);
    return daz((float)((double)c + (double)a * (double)b));
}

static float add_step(float a, float b)
{
    return daz(daz(a) + daz(b));
}

/* ---- 1. e4m3 -> bf16 ---------------------------------------------------------------------- */

static void test_e4m3_bf16(void **state)
{
    (void)state;
    int subnormals = 0;
    for (int b = 0; b < 256; b++) {
        const uint16_t h = dsr1__e4m3_bf16[b];
        const int e = (b >> 3) & 15, m = b & 7, neg = b >> 7;
        if (e == 15 && m == 7) {
            assert_true(isnan(bf(h)));
            assert_int_equal(h & 0x7fff, 0x7fc0); /* quiet */
            assert_int_equal(h >> 15, neg);
            assert_true(isnan(dsr1_e4m3_table[b]));
            continue;
        }
        const double mag = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1 + m / 8.0, e - 7);
        const double want = neg ? -mag : mag;
        assert_true((double)bf(h) == want);
        assert_int_equal(bits(bf(h)), bits(dsr1_e4m3_table[b])); /* -0 stays -0 */
        assert_int_equal(h >> 15, neg);
        if (e == 0 && m != 0) {
            subnormals++;
            assert_true(((h >> 7) & 0xff) != 0); /* a normal bf16, not a denormal */
        }
    }
    assert_int_equal(dsr1__e4m3_bf16[0x00], 0x0000);
    assert_int_equal(dsr1__e4m3_bf16[0x80], 0x8000);
    assert_int_equal(subnormals, 14);
}

/* ---- 2. the tile layer ----------------------------------------------------------------------- */

typedef struct {
    int M, N, K; /* C: M x N fp32; A: M x K pairs; B: K x N pairs */
    uint16_t a[16][32], b[16][32];
    float c[16][16];
} tile_case;

/* Values mostly of ordinary size, some tiny (products underflow), some bf16 denormals. */
static uint16_t case_bf16(int kind)
{
    switch (kind) {
    case 0:
        return rand_bf16(118, 16);
    case 1:
        return rand_bf16(1, 40); /* tiny: products below FLT_MIN */
    default:
        return (uint16_t)(rnd() & 0x807f); /* exponent 0: denormal or zero */
    }
}

static void tile_case_make(tile_case *t, int full)
{
    t->M = full ? 16 : 1 + (int)(rnd() % 16);
    t->N = full ? 16 : 1 + (int)(rnd() % 16);
    t->K = full ? 16 : 1 + (int)(rnd() % 16);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 32; j++) {
            const int kind = rnd() % 10 == 0 ? 1 + (int)(rnd() % 2) : 0;
            t->a[i][j] = case_bf16(kind);
            t->b[i][j] = case_bf16(kind == 1 ? 1 : rnd() % 20 == 0 ? 2 : 0);
        }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            const int kind = rnd() % 8;
            t->c[i][j] = kind == 0   ? 0.0f
                         : kind == 1 ? ldexpf(frand(), -128) /* denormal accumulator */
                                     : frand() * 4;
        }
}

/* Intel's pseudocode (SDM vol. 2, TDPBF16PS), row by row, on the model's steps. */
static void tile_model(const tile_case *t, float out[16][16])
{
    memset(out, 0, sizeof(float) * 256);
    for (int m = 0; m < t->M; m++) {
        float tmp[32] = {0};
        for (int k = 0; k < t->K; k++)
            for (int n = 0; n < t->N; n++) {
                tmp[2 * n] = step(bf(t->a[m][2 * k]), bf(t->b[k][2 * n]), tmp[2 * n]);
                tmp[2 * n + 1] =
                    step(bf(t->a[m][2 * k + 1]), bf(t->b[k][2 * n + 1]), tmp[2 * n + 1]);
            }
        for (int n = 0; n < t->N; n++)
            out[m][n] = add_step(t->c[m][n], add_step(tmp[2 * n], tmp[2 * n + 1]));
    }
}

static void tile_run(const dsr1__tileops *T, const tile_case *t, float out[16][16])
{
    dsr1__tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[1] = cfg.rows[5] = (uint8_t)t->M; /* C in tile 1, A in 5, B in 7 */
    cfg.rows[7] = (uint8_t)t->K;
    cfg.colsb[1] = cfg.colsb[7] = (uint16_t)(4 * t->N);
    cfg.colsb[5] = (uint16_t)(4 * t->K);
    T->config(&cfg);
    memset(out, 0, sizeof(float) * 256);
    T->load(1, t->c, sizeof t->c[0]);
    T->load(5, t->a, sizeof t->a[0]);
    T->load(7, t->b, sizeof t->b[0]);
    T->dpbf16ps(1, 5, 7);
    T->store(1, out, sizeof out[0]);
    T->release();
}

static void test_fma_daz_ftz(void **state)
{
    (void)state;
    const float den = ldexpf(1.0f, -130), tiny = ldexpf(1.0f, -70);
    assert_true(dsr1__fma_daz_ftz(den, 1.0f, 0.0f) == 0.0f);  /* denormal input is zero */
    assert_true(dsr1__fma_daz_ftz(1.0f, 1.0f, den) == 1.0f);  /* also in the accumulator */
    assert_true(dsr1__fma_daz_ftz(tiny, tiny, 0.0f) == 0.0f); /* 2^-140: flushed */
    assert_true(signbit(dsr1__fma_daz_ftz(-tiny, tiny, 0.0f)));
    assert_true(dsr1__fma_daz_ftz(tiny, ldexpf(1.0f, -56), 0.0f) == ldexpf(1.0f, -126));
    /* one rounding: 1 + 2^-24 + 2^-48 rounds up, where two roundings would tie to 1 */
    const float a = 1.0f + ldexpf(1.0f, -23);
    assert_true(dsr1__fma_daz_ftz(a, a, -1.0f) == ldexpf(1.0f, -22) + ldexpf(1.0f, -46));
}

static void test_tile_emulation(void **state)
{
    (void)state;
    const dsr1__tileops *emu = dsr1__tile_emu();
    const char *why;
    const dsr1__tileops *amx = dsr1__tile_amx(&why);
    const char *req = getenv("DSR1_REQUIRE_AMX");
    if (!amx) {
        printf("tile emulation: no real AMX to compare with (%s)\n", why);
        if (req && strcmp(req, "1") == 0) fail_msg("DSR1_REQUIRE_AMX=1 but: %s", why);
    }
    static tile_case t;
    static float want[16][16], got[16][16], hw[16][16];
    long flushed = 0;
    for (int it = 0; it < 400; it++) {
        tile_case_make(&t, it % 4 == 0);
        tile_model(&t, want);
        tile_run(emu, &t, got);
        for (int m = 0; m < 16; m++)
            for (int n = 0; n < 16; n++) {
                if (bits(got[m][n]) != bits(want[m][n]))
                    fail_msg("case %d (%dx%dx%d): C[%d][%d] = %a, model %a", it, t.M, t.N, t.K, m,
                             n, got[m][n], want[m][n]);
                flushed += m < t.M && n < t.N && got[m][n] == 0.0f;
            }
        if (amx) {
            tile_run(amx, &t, hw);
            assert_memory_equal(hw, got, sizeof got);
        }
    }
    assert_true(flushed > 0); /* the cases reached the flushing paths */
}

/* ---- 3. the kernels: weights, references, models --------------------------------------------- */

typedef struct {
    dsr1_linear w;
    uint8_t *q;
    float *scale;
} fp8_weight;

/* A weight byte: mostly a normal variate (sd 64) rounded to e4m3, as trained weights
 * quantised to a block scale look; 1 in 16 any byte but NaN (subnormals, zeros, extremes). */
static uint8_t fp8_byte(void)
{
    if (rnd() % 16 == 0) {
        uint8_t q = (uint8_t)(rnd() & 0xff);
        return (q & 0x7f) == 0x7f ? q ^ 1 : q;
    }
    double g = 0;
    for (int i = 0; i < 12; i++) g += rnd() / 4294967296.0; /* Irwin-Hall: sd 1 */
    return dsr1_f32_to_e4m3((float)((g - 6) * 64));
}

static void fp8_make(fp8_weight *f, int rows, int cols)
{
    f->q = malloc((size_t)rows * cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++) f->q[i] = fp8_byte();
    const int sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    f->scale = malloc(sizeof(float) * sr * sc);
    for (int i = 0; i < sr * sc; i++)
        f->scale[i] = ldexpf(0.5f + 0.5f * fabsf(frand()), -8 - (int)(rnd() % 3));
    f->w = (dsr1_linear){DSR1_DT_F8_E4M3, rows, cols, f->q, f->scale};
}

/* One 32-column tile of row r replaced by other weights (as a tile read from the wrong
 * place would be). */
static void fp8_corrupt(fp8_weight *f, int r, int c0)
{
    for (int c = c0; c < c0 + 32 && c < f->w.cols; c++)
        f->q[(size_t)r * f->w.cols + c] = fp8_byte();
}

static void fp8_free(fp8_weight *f)
{
    free(f->q);
    free(f->scale);
}

static float fp8_scale(const dsr1_linear *w, int r, int b)
{
    return w->scale[(size_t)(r / 128) * ((w->cols + 127) / 128) + b];
}

static float wbf(const dsr1_linear *w, int r, int c)
{
    return c < w->cols ? bf(dsr1__e4m3_bf16[((const uint8_t *)w->data)[(size_t)r * w->cols + c]])
                       : 0.0f;
}

static float xbf(const float *x, int k, int c)
{
    return c < k ? bf(dsr1_f32_to_bf16(x[c])) : 0.0f;
}

/* y = x . W[r] in each path's documented order (fast.h). vdpbf16ps: 16 lanes along K;
 * per 64-column group, lane d = 4L + q takes the pair at 16L + 2q (the "A" vector), then
 * the one at 16L + 8 + 2q ("B"), each odd product then even; per block the lanes' sums
 * times the scale into the lane totals; then dsr1__hsum's tree. */
static float model_vdpbf16(const dsr1_linear *w, int r, const float *x)
{
    const int k = w->cols, nb = (k + 127) / 128;
    float tot[16] = {0};
    for (int b = 0; b < nb; b++) {
        float acc[16] = {0};
        for (int g0 = b * 128; g0 < k && g0 < b * 128 + 128; g0 += 64)
            for (int h = 0; h < 2; h++)
                for (int d = 0; d < 16; d++) {
                    const int c = g0 + 16 * (d / 4) + 8 * h + 2 * (d % 4);
                    acc[d] = step(xbf(x, k, c + 1), wbf(w, r, c + 1), acc[d]);
                    acc[d] = step(xbf(x, k, c), wbf(w, r, c), acc[d]);
                }
        for (int d = 0; d < 16; d++) tot[d] = fmaf(acc[d], fp8_scale(w, r, b), tot[d]);
    }
    float s8[8], s4[4];
    for (int d = 0; d < 8; d++) s8[d] = tot[d] + tot[d + 8];
    for (int d = 0; d < 4; d++) s4[d] = s8[d] + s8[d + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* The tile order over prepared operands: xv, wv the bf16 values of k columns (zero up to
 * a multiple of 32), sc the block scales. */
static float model_tile_v(const float *xv, const float *wv, const float *sc, int k)
{
    const int nb = (k + 127) / 128, np = (k + 31) / 32 * 16;
    float tot = 0;
    for (int b = 0; b < nb; b++) {
        float c = 0;
        for (int p0 = b * 64; p0 < np && p0 < b * 64 + 64; p0 += 16) {
            float te = 0, to = 0;
            for (int p = p0; p < p0 + 16; p++) {
                te = step(xv[2 * p], wv[2 * p], te);
                to = step(xv[2 * p + 1], wv[2 * p + 1], to);
            }
            c = add_step(c, add_step(te, to));
        }
        tot = fmaf(c, sc[b], tot);
    }
    return tot;
}

/* The order of vdpbf16ps over a VNNI panel (linear_t's on that path): per block one chain
 * over its pairs in increasing order, odd product then even, then the scale. */
static float model_vdp_v(const float *xv, const float *wv, const float *sc, int k)
{
    const int nb = (k + 127) / 128, np = (k + 31) / 32 * 16;
    float tot = 0;
    for (int b = 0; b < nb; b++) {
        float acc = 0;
        for (int p = b * 64; p < np && p < b * 64 + 64; p++) {
            acc = step(xv[2 * p + 1], wv[2 * p + 1], acc);
            acc = step(xv[2 * p], wv[2 * p], acc);
        }
        tot = fmaf(acc, sc[b], tot);
    }
    return tot;
}

#define MODEL_K 1024 /* the widest k the models take */

static float model_tile(const dsr1_linear *w, int r, const float *x)
{
    const int k = w->cols;
    float xv[MODEL_K + 32], wv[MODEL_K + 32], sc[MODEL_K / 128 + 1];
    assert_true(k <= MODEL_K);
    for (int c = 0; c < (k + 31) / 32 * 32; c++) {
        xv[c] = xbf(x, k, c);
        wv[c] = wbf(w, r, c);
    }
    for (int b = 0; b < (k + 127) / 128; b++) sc[b] = fp8_scale(w, r, b);
    return model_tile_v(xv, wv, sc, k);
}

/* The float64 reference of x . W[r] (unrounded x) and the bound on a fast-mode result.
 * Rounding x to bf16 (8 significant bits, nearest) moves each product p_c by at most
 * 2^-8 |p_c|, independently from column to column, so the sum moves by a standard
 * deviation of at most 2^-8 sqrt(sum p_c^2 / 3) (uniform errors); the fp32 accumulation
 * (k steps, then the scale) adds at most k 2^-24 sum |p_c|. Bound: 6 standard deviations
 * plus twice the accumulation's worst case. (A worst-case bound for the rounding, 2^-8
 * sum |p_c|, would be loose enough to let one wrong 32-column tile through at K = 1000.) */
static double dot_bound(double q, double a, int k) /* q = sum p_c^2, a = sum |p_c| */
{
    return 6 * ldexp(1, -8) * sqrt(q / 3) + 2 * k * ldexp(1, -24) * a + 1e-30;
}

static double ref_dot(const dsr1_linear *w, int r, const float *x, double *bound)
{
    double s = 0, a = 0, q = 0;
    for (int c = 0; c < w->cols; c++) {
        const double p = (double)x[c] * wbf(w, r, c) * fp8_scale(w, r, c / 128);
        s += p;
        a += fabs(p);
        q += p * p;
    }
    *bound = dot_bound(q, a, w->cols);
    return s;
}

typedef struct {
    dsr1__fast_path path;
    const char *name;
    float (*model)(const dsr1_linear *, int, const float *);
    float (*model_t)(const float *, const float *, const float *, int); /* linear_t's */
} path_case;

static const path_case paths[] = {
    {DSR1__FAST_VDPBF16, "vdpbf16ps", model_vdpbf16, model_vdp_v},
    {DSR1__FAST_TILE_EMU, "tiles (emulated)", model_tile, model_tile_v},
    {DSR1__FAST_TILE_AMX, "tiles (AMX)", model_tile, model_tile_v},
};
#define NPATHS (sizeof(paths) / sizeof(paths[0]))

static const dsr1_kernels *path_table(const path_case *pc)
{
    const char *why;
    const dsr1_kernels *k = dsr1__kernels_bf16_tiles(pc->path, &why);
    if (!k) printf("bf16-tiles %s: skipped (%s)\n", pc->name, why);
    return k;
}

/* max over outputs of |y - ref| / bound for rows r0 .. r1 of w (y[i][r - r0], ldy) */
static double worst_ratio(const dsr1_linear *w, int r0, int r1, const float *x, int ldx, int m,
                          const float *y, int ldy)
{
    double worst = 0;
    for (int i = 0; i < m; i++)
        for (int r = r0; r < r1; r++) {
            double bound;
            const double s = ref_dot(w, r, x + (size_t)i * ldx, &bound);
            const double q = fabs(y[(size_t)i * ldy + r - r0] - s) / bound;
            worst = q > worst ? q : worst;
        }
    return worst;
}

/* linear on every path: bit for bit its model, within the bound of the float64 reference;
 * the same check fails on weights with one 32-column tile changed. */
static void test_linear_paths(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    static const int shapes[][4] = {/* rows, cols, r0, r1 */
                                    {37, 300, 0, 37},
                                    {70, 256, 5, 61},
                                    {16, 33, 0, 16},
                                    {130, 1000, 120, 130}};
    static const int ms[] = {1, 3, 9, 17};
    int ran = 0;
    for (size_t pi = 0; pi < NPATHS; pi++) {
        const dsr1_kernels *k = path_table(&paths[pi]);
        if (!k) continue;
        ran++;
        double worst_ok = 0, least_bad = INFINITY;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int rows = shapes[s][0], cols = shapes[s][1], r0 = shapes[s][2],
                          r1 = shapes[s][3], m = ms[mi], ldx = cols + 3, ldy = r1 - r0 + 5;
                fp8_weight f;
                fp8_make(&f, rows, cols);
                float *x = malloc(sizeof(float) * m * ldx), *y = malloc(sizeof(float) * m * ldy);
                for (int i = 0; i < m * ldx; i++) x[i] = frand() * (rnd() % 4 ? 1.0f : 8.0f);
                for (int i = 0; i < m * ldy; i++) y[i] = 12345.0f;
                k->linear(pool, &f.w, r0, r1, x, ldx, m, y, ldy);
                for (int i = 0; i < m; i++) {
                    for (int r = r0; r < r1; r++) {
                        const float want = paths[pi].model(&f.w, r, x + (size_t)i * ldx);
                        const float got = y[(size_t)i * ldy + r - r0];
                        if (bits(got) != bits(want))
                            fail_msg("%s: %dx%d m=%d: y[%d][%d] = %a, model %a", paths[pi].name,
                                     rows, cols, m, i, r, got, want);
                    }
                    for (int p = r1 - r0; p < ldy; p++)
                        assert_true(y[(size_t)i * ldy + p] == 12345.0f);
                }
                const double ok = worst_ratio(&f.w, r0, r1, x, ldx, m, y, ldy);
                worst_ok = ok > worst_ok ? ok : worst_ok;
                if (ok > 1)
                    fail_msg("%s: %dx%d m=%d: error %.3g x bound", paths[pi].name, rows, cols, m,
                             ok);
                /* self-check: one 32-column tile of one weight row replaced */
                if (cols >= 64) {
                    fp8_corrupt(&f, r0 + (int)(rnd() % (unsigned)(r1 - r0)), 32);
                    const double bad = worst_ratio(&f.w, r0, r1, x, ldx, m, y, ldy);
                    least_bad = bad < least_bad ? bad : least_bad;
                    if (bad <= 1)
                        fail_msg("%s: a wrong tile went unnoticed (%.3g)", paths[pi].name, bad);
                }
                free(x);
                free(y);
                fp8_free(&f);
            }
        printf("bf16-tiles %s linear: error <= %.3f x bound; one wrong tile >= %.1f x\n",
               paths[pi].name, worst_ok, least_bad);
    }
    assert_true(ran >= 1); /* the emulated tiles run everywhere the variant is built */
    dsr1_pool_destroy(pool);
}

/* linear_t on every path: y[i][c] = sum over rows r in [r0, r1) of x[i][r - r0] W[r][c], bit
 * for bit its model over tk0 = r0 % 128 zero columns then x (rowset.h), within the bound
 * of the float64 reference; one wrong 32-column tile of one row of W goes beyond it. */
static void test_linear_t_paths(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    static const int shapes[][4] = {                     /* rows, cols, r0, r1 */
                                    {256, 200, 0, 128},  /* R1's: a head's 128 rows */
                                    {256, 64, 64, 96},   /* tiny-a's: off a block's start */
                                    {520, 70, 130, 400}, /* across blocks, odd offset pairs */
                                    {300, 33, 131, 132}, /* one row */
                                    {384, 512, 256, 384}};
    static const int ms[] = {1, 4, 9, 40};
    int ran = 0;
    for (size_t pi = 0; pi < NPATHS; pi++) {
        const dsr1_kernels *k = path_table(&paths[pi]);
        if (!k) continue;
        ran++;
        double worst_ok = 0, least_bad = INFINITY;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int rows = shapes[s][0], cols = shapes[s][1], r0 = shapes[s][2],
                          r1 = shapes[s][3], m = ms[mi], n = r1 - r0, ldx = n + 3, ldy = cols + 5;
                const int tk0 = r0 % 128, kk = tk0 + n, kp = (kk + 31) / 32 * 32;
                const int nb = (kk + 127) / 128, nbc = (cols + 127) / 128;
                assert_true(kk <= MODEL_K);
                fp8_weight f;
                fp8_make(&f, rows, cols);
                float *x = malloc(sizeof(float) * m * ldx), *y = malloc(sizeof(float) * m * ldy);
                for (int i = 0; i < m * ldx; i++) x[i] = frand() * (rnd() % 4 ? 1.0f : 8.0f);
                for (int i = 0; i < m * ldy; i++) y[i] = 12345.0f;
                k->linear_t(pool, &f.w, r0, r1, x, ldx, m, y, ldy);
                for (int pass = 0; pass < 2; pass++) {
                    double worst = 0;
                    for (int i = 0; i < m; i++)
                        for (int c = 0; c < cols; c++) {
                            float xv[MODEL_K + 32], wv[MODEL_K + 32], sc[MODEL_K / 128 + 1];
                            double ref = 0, a = 0, q = 0;
                            for (int v = 0; v < kp; v++) {
                                const int r = r0 - tk0 + v;
                                const int in = v >= tk0 && v < kk;
                                xv[v] = in ? xbf(x + (size_t)i * ldx, n, v - tk0) : 0.0f;
                                wv[v] = in ? wbf(&f.w, r, c) : 0.0f;
                                if (in) {
                                    const double p = (double)x[(size_t)i * ldx + v - tk0] *
                                                     wbf(&f.w, r, c) *
                                                     f.scale[(size_t)(r / 128) * nbc + c / 128];
                                    ref += p;
                                    a += fabs(p);
                                    q += p * p;
                                }
                            }
                            for (int b = 0; b < nb; b++)
                                sc[b] = f.scale[(size_t)((r0 - tk0) / 128 + b) * nbc + c / 128];
                            const float got = y[(size_t)i * ldy + c];
                            if (pass == 0) {
                                const float want = paths[pi].model_t(xv, wv, sc, kk);
                                if (bits(got) != bits(want))
                                    fail_msg("%s linear_t: %dx%d rows %d..%d m=%d: y[%d][%d] = %a, "
                                             "model %a",
                                             paths[pi].name, rows, cols, r0, r1, m, i, c, got,
                                             want);
                            }
                            const double e = fabs(got - ref) / dot_bound(q, a, kk);
                            worst = e > worst ? e : worst;
                        }
                    if (pass == 0) {
                        for (int i = 0; i < m; i++)
                            for (int c = cols; c < ldy; c++)
                                assert_true(y[(size_t)i * ldy + c] == 12345.0f);
                        worst_ok = worst > worst_ok ? worst : worst_ok;
                        if (worst > 1)
                            fail_msg("%s linear_t: %dx%d m=%d: error %.3g x bound", paths[pi].name,
                                     rows, cols, m, worst);
                        if (n < 32) break;
                        /* self-check: a tile of W replaced (32 of the rows summed x 16 output
                         * columns, the B operand of one product step) */
                        const int ra = r0 + (int)(rnd() % (unsigned)(n - 31));
                        for (int r = ra; r < ra + 32; r++)
                            for (int c = 0; c < 16 && c < cols; c++)
                                f.q[(size_t)r * cols + c] = fp8_byte();
                    } else {
                        least_bad = worst < least_bad ? worst : least_bad;
                        if (worst <= 1)
                            fail_msg("%s linear_t: a wrong tile went unnoticed (%.3g)",
                                     paths[pi].name, worst);
                    }
                }
                free(x);
                free(y);
                fp8_free(&f);
            }
        printf("bf16-tiles %s linear_t: error <= %.3f x bound; one wrong tile >= %.1f x\n",
               paths[pi].name, worst_ok, least_bad);
    }
    assert_true(ran >= 1);
    dsr1_pool_destroy(pool);
}

/* ---- 4. expert_ffn ------------------------------------------------------------------------ */

#define NE 3
#define FK 200 /* hidden size */
#define FI 72  /* intermediate size */
#define FD 150 /* output size */

typedef struct {
    fp8_weight gate[NE], up[NE], down[NE];
    dsr1_expert ex[NE];
    int *rows[NE];
    float *wt[NE];
} ffn_case;

/* m tokens, each routed to 2 of the NE experts (random order of rows). */
static void ffn_make(ffn_case *f, int m)
{
    for (int e = 0; e < NE; e++) {
        fp8_make(&f->gate[e], FI, FK);
        fp8_make(&f->up[e], FI, FK);
        fp8_make(&f->down[e], FD, FI);
        f->rows[e] = malloc(sizeof(int) * m);
        f->wt[e] = malloc(sizeof(float) * m);
        f->ex[e] =
            (dsr1_expert){&f->gate[e].w, &f->up[e].w, &f->down[e].w, 0, f->rows[e], f->wt[e]};
    }
    for (int t = 0; t < m; t++) {
        const int skip = (int)(rnd() % NE);
        for (int e = 0; e < NE; e++)
            if (e != skip) {
                f->rows[e][f->ex[e].n] = t;
                f->wt[e][f->ex[e].n++] = 0.2f + fabsf(frand());
            }
    }
}

static void ffn_free(ffn_case *f)
{
    for (int e = 0; e < NE; e++) {
        fp8_free(&f->gate[e]);
        fp8_free(&f->up[e]);
        fp8_free(&f->down[e]);
        free(f->rows[e]);
        free(f->wt[e]);
    }
}

/* The contract of kernels.h: y[t] += w down(silu(gate x) * up x), every product as the
 * variant's linear computes it, experts in order. */
static void ffn_by_linear(const dsr1_kernels *k, dsr1_pool *pool, const ffn_case *f, const float *x,
                          int ldx, float *y, int ldy)
{
    float g[FI], u[FI], h[FI], o[FD];
    for (int e = 0; e < NE; e++)
        for (int i = 0; i < f->ex[e].n; i++) {
            const int t = f->ex[e].rows[i];
            k->linear(pool, &f->gate[e].w, 0, FI, x + (size_t)t * ldx, ldx, 1, g, FI);
            k->linear(pool, &f->up[e].w, 0, FI, x + (size_t)t * ldx, ldx, 1, u, FI);
            for (int c = 0; c < FI; c++) {
                const float s = g[c] / (1.0f + expf(-g[c]));
                h[c] = s * u[c];
            }
            k->linear(pool, &f->down[e].w, 0, FD, h, FI, 1, o, FD);
            for (int c = 0; c < FD; c++) y[(size_t)t * ldy + c] += o[c] * f->ex[e].weight[i];
        }
}

/* The worst |error| / bound of expert_ffn's y - y0 against float64. Per expert and token:
 * the gate and up errors (ref_dot's bounds, 6 standard deviations, so sigma = bound / 6)
 * pass through silu (|silu'| <= 1.1) and the product into h, which is then rounded to
 * bf16 (2^-8 |h| / sqrt 3); the down product adds h's errors times the weights (as
 * independent terms) and its own (ref_dot's); 6 standard deviations again, and the
 * experts' bounds add up. A wrong tile of a down weight fails it. */
static double ffn_worst(const ffn_case *f, const float *x, int ldx, const float *y0, const float *y,
                        int ldy)
{
    double worst = 0;
    int m = 0;
    for (int e = 0; e < NE; e++)
        for (int i = 0; i < f->ex[e].n; i++)
            m = f->ex[e].rows[i] + 1 > m ? f->ex[e].rows[i] + 1 : m;
    double *want = calloc((size_t)m * FD, sizeof(double));
    double *bnd = calloc((size_t)m * FD, sizeof(double));
    const double u8 = ldexp(1, -8);
    for (int e = 0; e < NE; e++)
        for (int i = 0; i < f->ex[e].n; i++) {
            const int t = f->ex[e].rows[i];
            const double wt = f->ex[e].weight[i];
            double h[FI], sh[FI];
            for (int c = 0; c < FI; c++) {
                double bg, bu;
                const double g = ref_dot(&f->gate[e].w, c, x + (size_t)t * ldx, &bg);
                const double u = ref_dot(&f->up[e].w, c, x + (size_t)t * ldx, &bu);
                const double sg = bg / 6, su = bu / 6, s = g / (1 + exp(-g));
                h[c] = s * u;
                const double e1 = 1.1 * sg * (fabs(u) + bu), e2 = (fabs(s) + 1.1 * bg) * su;
                const double e3 = u8 * (fabs(h[c]) + 1.1 * bg * (fabs(u) + bu) + fabs(s) * bu);
                sh[c] = sqrt(e1 * e1 + e2 * e2 + e3 * e3 / 3);
            }
            for (int r = 0; r < FD; r++) {
                double s = 0, a = 0, q = 0;
                for (int c = 0; c < FI; c++) {
                    const double wv =
                        (double)wbf(&f->down[e].w, r, c) * fp8_scale(&f->down[e].w, r, c / 128);
                    s += h[c] * wv;
                    a += fabs(h[c] * wv);
                    q += sh[c] * wv * sh[c] * wv;
                }
                want[(size_t)t * FD + r] += wt * s;
                bnd[(size_t)t * FD + r] += wt * (6 * sqrt(q) + 2 * FI * ldexp(1, -24) * a);
            }
        }
    for (int t = 0; t < m; t++)
        for (int r = 0; r < FD; r++) {
            const double y0v = y0[(size_t)t * ldy + r], d = y[(size_t)t * ldy + r] - y0v;
            /* y += ...: the final fp32 additions round too */
            const double b = bnd[(size_t)t * FD + r] + 4 * ldexp(1, -24) * (fabs(y0v) + fabs(d));
            const double q = fabs(d - want[(size_t)t * FD + r]) / (b + 1e-30);
            worst = q > worst ? q : worst;
        }
    free(want);
    free(bnd);
    return worst;
}

static void test_expert_ffn_paths(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    const int ldx = FK + 3, ldy = FD + 7;
    static const int ms[] = {1, 5, 40};
    for (size_t pi = 0; pi < NPATHS; pi++) {
        const dsr1_kernels *k = path_table(&paths[pi]);
        if (!k) continue;
        double worst_ok = 0, least_bad = INFINITY;
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            const int m = ms[mi];
            ffn_case f;
            ffn_make(&f, m);
            float *x = malloc(sizeof(float) * m * ldx), *y = malloc(sizeof(float) * m * ldy);
            float *y0 = malloc(sizeof(float) * m * ldy), *want = malloc(sizeof(float) * m * ldy);
            for (int i = 0; i < m * ldx; i++) x[i] = frand() * 2;
            for (int i = 0; i < m * ldy; i++) y0[i] = y[i] = want[i] = frand();
            ffn_by_linear(k, pool, &f, x, ldx, want, ldy);
            assert_int_equal(k->expert_ffn(pool, f.ex, NE, x, ldx, y, ldy), DSR1_OK);
            assert_memory_equal(y, want, sizeof(float) * m * ldy);
            const double ok = ffn_worst(&f, x, ldx, y0, y, ldy);
            worst_ok = ok > worst_ok ? ok : worst_ok;
            if (ok > 1) fail_msg("%s expert_ffn m=%d: error %.3g x bound", paths[pi].name, m, ok);
            /* one 16-row x 32-column tile of a used down weight changed (the B operand of
             * one TDPBF16PS): the bound must catch it */
            const int r16 = (int)(rnd() % (FD / 16)) * 16;
            for (int r = r16; r < r16 + 16; r++) fp8_corrupt(&f.down[f.ex[0].n > 0 ? 0 : 1], r, 32);
            const double bad = ffn_worst(&f, x, ldx, y0, y, ldy);
            least_bad = bad < least_bad ? bad : least_bad;
            if (bad <= 1)
                fail_msg("%s expert_ffn: a wrong tile went unnoticed (%.3g)", paths[pi].name, bad);
            free(x);
            free(y);
            free(y0);
            free(want);
            ffn_free(&f);
        }
        printf("bf16-tiles %s expert_ffn: error <= %.3f x bound; one wrong tile >= %.1f x\n",
               paths[pi].name, worst_ok, least_bad);
    }
    dsr1_pool_destroy(pool);
}

/* ---- 5. batch invariance ----------------------------------------------------------------------
 */

static void test_batch_invariance(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    static const int ms[] = {2, 7, 16, 33, 128, 300};
    const int rows = 40, cols = 280, ldx = cols + 1, ldy = rows + 2, fldx = FK + 1, fldy = FD + 3;
    for (size_t pi = 0; pi < NPATHS; pi++) {
        const dsr1_kernels *k = path_table(&paths[pi]);
        if (!k) continue;
        fp8_weight f;
        fp8_make(&f, rows, cols);
        float *x = malloc(sizeof(float) * 300 * ldx), *y = malloc(sizeof(float) * 300 * ldy);
        float alone[64];
        float *row = malloc(sizeof(float) * ldx);
        for (int i = 0; i < ldx; i++) row[i] = frand();
        k->linear(pool, &f.w, 0, rows, row, ldx, 1, alone, rows);
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            const int m = ms[mi], at = (int)(rnd() % (unsigned)m);
            for (int i = 0; i < m * ldx; i++) x[i] = frand() * 3;
            memcpy(x + (size_t)at * ldx, row, sizeof(float) * ldx);
            k->linear(pool, &f.w, 0, rows, x, ldx, m, y, ldy);
            if (memcmp(y + (size_t)at * ldy, alone, sizeof(float) * rows) != 0)
                fail_msg("%s linear: row %d of M = %d differs from M = 1", paths[pi].name, at, m);
        }
        /* expert_ffn: token 0 alone, then among m tokens (routed at random) */
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
            const int m = ms[mi];
            ffn_case c;
            ffn_make(&c, m);
            /* the token under test at a random position, routed to experts 0 and 2 */
            const int at = (int)(rnd() % (unsigned)m);
            float *fx = malloc(sizeof(float) * m * fldx),
                  *fy = calloc((size_t)m * fldy, sizeof(float));
            for (int i = 0; i < m * fldx; i++) fx[i] = frand() * 2;
            for (int i = 0; i < fldx; i++) fx[(size_t)at * fldx + i] = row[i % ldx] * 1.5f;
            /* alone: the same two experts, the same routing weights */
            dsr1_expert one[NE];
            int r0 = 0;
            float w1[NE];
            for (int e = 0; e < NE; e++) {
                one[e] = c.ex[e];
                one[e].n = 0;
                one[e].rows = &r0;
                one[e].weight = &w1[e];
                for (int i = 0; i < c.ex[e].n; i++)
                    if (c.ex[e].rows[i] == at) {
                        one[e].n = 1;
                        w1[e] = c.ex[e].weight[i];
                    }
            }
            float fone[FD] = {0};
            assert_int_equal(k->expert_ffn(pool, one, NE, fx + (size_t)at * fldx, fldx, fone, FD),
                             DSR1_OK);
            assert_int_equal(k->expert_ffn(pool, c.ex, NE, fx, fldx, fy, fldy), DSR1_OK);
            if (memcmp(fy + (size_t)at * fldy, fone, sizeof fone) != 0)
                fail_msg("%s expert_ffn: token %d of M = %d differs from M = 1", paths[pi].name, at,
                         m);
            free(fx);
            free(fy);
            ffn_free(&c);
        }
        free(row);
        free(x);
        free(y);
        fp8_free(&f);
    }
    dsr1_pool_destroy(pool);
}

/* The in-register panel (vdpbf16ps backend) equals the portable one, bit for bit, for all
 * 256 codes (NaN included) and a short last chunk. */
void dsr1__fast_panel_fill_avx512(const dsr1__rowset *rs, uint16_t *P, float *mul);

static void test_panel(void **state)
{
    (void)state;
    const char *why;
    if (!dsr1__kernels_bf16_tiles(DSR1__FAST_VDPBF16, &why)) {
        printf("panel: skipped (%s)\n", why);
        return;
    }
    const int rows = 13, cols = 300;
    uint8_t *q = malloc((size_t)rows * cols);
    for (int i = 0; i < rows * cols; i++) q[i] = (uint8_t)(i < 256 ? (uint32_t)i : rnd());
    float scale[3 * 1] = {0.5f, 0.25f, 2.0f};
    const dsr1_linear w = {DSR1_DT_F8_E4M3, rows, cols, q, scale};
    dsr1__rowset rs = {.n = 0};
    for (int r = 0; r < rows; r++) dsr1__rowset_add(&rs, &w, r, -1);
    const size_t pb = dsr1__fast_panel_bytes(cols);
    uint16_t *a = aligned_alloc(64, pb), *b = aligned_alloc(64, pb);
    float ma[3 * 16], mb[3 * 16];
    memset(a, 0xaa, pb);
    memset(b, 0x55, pb);
    dsr1__fast_panel_fill(&rs, a, ma);
    dsr1__fast_panel_fill_avx512(&rs, b, mb);
    assert_memory_equal(a, b, pb);
    assert_memory_equal(ma, mb, sizeof ma);
    /* and the layout: pair p of row j at P[p][j] */
    for (int j = 0; j < 16; j++)
        for (int c = 0; c < (int)(pb / 64) * 2; c++) {
            const uint16_t want = j < rows && c < cols ? dsr1__e4m3_bf16[q[j * cols + c]] : 0;
            assert_int_equal(a[(c / 2) * 32 + 2 * j + c % 2], want);
        }
    /* a transposed set (linear_t): columns 3 .. 14 of the rows 1 .. 11, after 5 zero columns */
    const int tk0 = 5, tn = 11, tc = 12, tcols = tk0 + tn;
    dsr1__rowset ts = {
        .dtype = DSR1_DT_F8_E4M3, .cols = tcols, .n = tc, .tld = cols, .tk0 = tk0, .tsld = 3};
    for (int j = 0; j < tc; j++) {
        ts.row[j] = q + (size_t)1 * cols + 3 + j;
        ts.scale[j] = scale + (3 + j) / 128;
    }
    const size_t tb = dsr1__fast_panel_bytes(tcols);
    memset(a, 0xaa, tb);
    memset(b, 0x55, tb);
    dsr1__fast_panel_fill(&ts, a, ma);
    dsr1__fast_panel_fill_avx512(&ts, b, mb);
    assert_memory_equal(a, b, tb);
    assert_memory_equal(ma, mb, 16 * sizeof(float));
    for (int j = 0; j < 16; j++)
        for (int v = 0; v < (int)(tb / 64) * 2; v++) {
            const int in = j < tc && v >= tk0 && v < tcols;
            const uint16_t want = in ? dsr1__e4m3_bf16[q[(size_t)(1 + v - tk0) * cols + 3 + j]] : 0;
            assert_int_equal(a[(v / 2) * 32 + 2 * j + v % 2], want);
        }
    free(a);
    free(b);
    free(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_bf16),        cmocka_unit_test(test_fma_daz_ftz),
        cmocka_unit_test(test_tile_emulation),   cmocka_unit_test(test_panel),
        cmocka_unit_test(test_linear_paths),     cmocka_unit_test(test_linear_t_paths),
        cmocka_unit_test(test_expert_ffn_paths), cmocka_unit_test(test_batch_invariance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
