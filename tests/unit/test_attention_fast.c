/* The fast mode's attention against the bf16 MLA cache (kernels/cpu/fast_attn.h,
 * mla_attention_bf16 of the bf16-tiles tables) and the bf16 cache itself:
 * - the mode's exp against libm's in double;
 * - each path (vdpbf16ps; tiles, emulated; tiles on AMX where present) against a float64
 *   reference on random data (the same bf16 cache, float32 queries), within a bound derived
 *   from the bf16 roundings; a reference with one 16-position tile of the cache replaced
 *   exceeds that bound (the bound can fail);
 * - the emulated tiles equal AMX bit for bit where the CPU has AMX (DSR1_REQUIRE_AMX=1
 *   turns its absence into a failure);
 * - invariance, bit for bit: a token's result is the same computed alone (t = 1), inside a
 *   prefill of t tokens, with block_tokens 7, 16 or 64, and with or without threads;
 * - the bf16 cache: half the bytes, values rounded to nearest even;
 * - the engine: bf16-tiles (bf16 cache, tile attention, bf16 products) against the exact
 *   variant on a small random model within a bound, bf16-tiles-emulated equal to bf16-tiles
 *   where both run on tiles (AMX), and a sequence's logits alone equal to the same in a
 *   batch. Paths this machine cannot run are skipped (with a line), never failed. */
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
#include "cpu/fast_attn.h"
#include "forward.h"
#include "kernels.h"
#include "kv_cache.h"
#include "numeric.h"
#include "test_util.h"
#include "weights.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static float frand(void) /* [-1, 1), never exactly zero in practice */
{
    return (float)(rnd() / 2147483648.0 - 1.0);
}

static const dsr1_kernels *path(dsr1__fast_path p)
{
    const char *why = NULL;
    return dsr1__kernels_bf16_tiles(p, &why);
}

static const char *path_name(int p)
{
    return p == DSR1__FAST_VDPBF16    ? "vdpbf16ps"
           : p == DSR1__FAST_TILE_EMU ? "tiles-emulated"
                                      : "amx";
}

/* ---- exp -------------------------------------------------------------------------------- */

static void test_exp(void **state)
{
    (void)state;
    assert_true(dsr1__fa_exp(-INFINITY) == 0.0f);
    assert_true(dsr1__fa_exp(0.0f) == 1.0f);
    assert_true(dsr1__fa_exp(-100.0f) == 0.0f);
    double worst = 0;
    for (int i = 0; i < 200000; i++) {
        const float x = -87.0f * (float)(rnd() / 4294967296.0) * (i % 2 ? 1.0f : 0.05f);
        const double e = exp((double)x), got = dsr1__fa_exp(x);
        if (e > 1e-37) worst = fmax(worst, fabs(got - e) / e);
    }
    printf("  exp: worst relative error %.3g on [-87, 0]\n", worst);
    assert_true(worst < 4e-7);
}

/* ---- attention against float64 ----------------------------------------------------------- */

typedef struct {
    int t, heads, kvl, rope, pos0, n; /* n = pos0 + t cache rows */
    float *qa, *qp;                   /* [t][heads][kvl], [t][heads][rope] */
    uint16_t *kv;                     /* [n][kvl + rope], contiguous */
    float scale;
} attn_case;

static attn_case make_case(int t, int heads, int kvl, int rope, int pos0)
{
    attn_case a = {t, heads, kvl, rope, pos0, pos0 + t, NULL, NULL, NULL, 0};
    a.qa = malloc(sizeof(float) * t * heads * kvl);
    a.qp = malloc(sizeof(float) * t * heads * rope);
    a.kv = malloc(sizeof(uint16_t) * a.n * (kvl + rope));
    for (size_t i = 0; i < (size_t)t * heads * kvl; i++) a.qa[i] = 2 * frand();
    for (size_t i = 0; i < (size_t)t * heads * rope; i++) a.qp[i] = 2 * frand();
    for (size_t i = 0; i < (size_t)a.n * (kvl + rope); i++) a.kv[i] = dsr1_f32_to_bf16(frand());
    a.scale = 1.0f / sqrtf((float)(kvl + rope)) * 1.5f;
    return a;
}

static void free_case(attn_case *a)
{
    free(a->qa);
    free(a->qp);
    free(a->kv);
}

/* The case's cache split into blocks of bt rows (copied: rows at stride ld = width + 3). */
typedef struct {
    uint16_t *mem;
    const uint16_t **blocks;
    int bt, ld;
} paged;

static paged page(const attn_case *a, int bt)
{
    const int w = a->kvl + a->rope, nb = (a->n + bt - 1) / bt;
    paged p = {malloc(sizeof(uint16_t) * (size_t)nb * bt * (w + 3)),
               malloc(sizeof(uint16_t *) * nb), bt, w + 3};
    for (size_t i = 0; i < (size_t)nb * bt * (w + 3); i++) p.mem[i] = 0x7fc0; /* NaN: never read */
    /* blocks in reverse order in memory, so a wrong block index shows */
    for (int b = 0; b < nb; b++) p.blocks[b] = p.mem + (size_t)(nb - 1 - b) * bt * p.ld;
    for (int r = 0; r < a->n; r++)
        memcpy((uint16_t *)p.blocks[r / bt] + (size_t)(r % bt) * p.ld, a->kv + (size_t)r * w,
               sizeof(uint16_t) * w);
    return p;
}

static void run_paged(const dsr1_kernels *k, dsr1_pool *pool, const attn_case *a, int bt, int i0,
                      int t, float *out)
{
    paged p = page(a, bt);
    k->mla_attention_bf16(
        pool, t, a->heads, a->kvl, a->rope, a->qa + (size_t)i0 * a->heads * a->kvl,
        a->qp + (size_t)i0 * a->heads * a->rope, p.blocks, bt, p.ld, a->pos0 + i0, a->scale, out);
    free(p.mem);
    free(p.blocks);
}

/* out[i][h][:] in double from the bf16 cache (kv, or `alt` rows where not NULL) and the
 * float queries; bound[i][h] the error allowed (see the top of the file). */
static void reference(const attn_case *a, const uint16_t *alt, double *out, double *bound)
{
    const int w = a->kvl + a->rope;
    const uint16_t *kv = alt ? alt : a->kv;
    double *s = malloc(sizeof(double) * a->n);
    for (int i = 0; i < a->t; i++)
        for (int h = 0; h < a->heads; h++) {
            const float *qa = a->qa + ((size_t)i * a->heads + h) * a->kvl;
            const float *qp = a->qp + ((size_t)i * a->heads + h) * a->rope;
            const int n = a->pos0 + i + 1;
            double mx = -INFINITY, l = 0, dsmax = 0, cmax = 0;
            for (int j = 0; j < n; j++) {
                double d = 0, ad = 0;
                for (int c = 0; c < w; c++) {
                    const double q = c < a->kvl ? qa[c] : qp[c - a->kvl];
                    const double v = dsr1_bf16_to_f32(kv[(size_t)j * w + c]);
                    d += q * v;
                    ad += fabs(q * v);
                }
                s[j] = d * a->scale;
                dsmax = fmax(dsmax, ad * a->scale);
                mx = fmax(mx, s[j]);
            }
            for (int j = 0; j < n; j++) l += (s[j] = exp(s[j] - mx));
            double *o = out + ((size_t)i * a->heads + h) * a->kvl;
            for (int c = 0; c < a->kvl; c++) {
                double v = 0;
                for (int j = 0; j < n; j++) {
                    const double cv = dsr1_bf16_to_f32(kv[(size_t)j * w + c]);
                    v += s[j] * cv;
                    cmax = fmax(cmax, fabs(cv));
                }
                o[c] = v / l;
            }
            /* p rounded to bf16 (2^-9 relative, twice: numerator and the sum), the queries
             * rounded to bf16 (each score off by up to 2^-9 of its absolute sum, the weights
             * by twice that), fp32 sums and exp (1e-5) */
            bound[(size_t)i * a->heads + h] = cmax * (4 * 0x1p-9 + 4 * 0x1p-9 * dsmax + 1e-5);
        }
    free(s);
}

/* max over outputs of |got - ref| / bound */
static double worst_ratio(const attn_case *a, const float *got, const double *ref,
                          const double *bound)
{
    double worst = 0;
    for (int i = 0; i < a->t; i++)
        for (int h = 0; h < a->heads; h++)
            for (int c = 0; c < a->kvl; c++) {
                const size_t o = ((size_t)i * a->heads + h) * a->kvl + c;
                worst = fmax(worst, fabs(got[o] - ref[o]) / bound[(size_t)i * a->heads + h]);
            }
    return worst;
}

static const int shapes[][5] = {
    /* t, heads, kvl, rope, pos0 */
    {1, 16, 64, 16, 150}, {3, 5, 40, 8, 70}, {2, 20, 136, 8, 33}, {4, 1, 16, 6, 0},
    {1, 128, 32, 32, 40}, {5, 3, 24, 4, 31}, {3, 3, 32, 8, 2046}, /* across the first two splits of
                                                                     DSR1__FA_SPLIT positions */
};

static void test_attention_paths(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    for (int p = DSR1__FAST_VDPBF16; p <= DSR1__FAST_TILE_AMX; p++) {
        const dsr1_kernels *k = path((dsr1__fast_path)p);
        if (!k) {
            printf("  skip %s: not available here\n", path_name(p));
            continue;
        }
        assert_true(k->kv_bf16);
        assert_non_null(k->mla_attention_bf16);
        double worst = 0, worst_bad = INFINITY;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            attn_case a =
                make_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
            const size_t no = (size_t)a.t * a.heads * a.kvl;
            float *got = malloc(sizeof(float) * no);
            double *ref = malloc(sizeof(double) * no),
                   *bound = malloc(sizeof(double) * a.t * a.heads);
            run_paged(k, pool, &a, 16, 0, a.t, got);
            reference(&a, NULL, ref, bound);
            const double r = worst_ratio(&a, got, ref, bound);
            worst = fmax(worst, r);
            if (r >= 1) printf("  %s: shape %zu: error %.3g x the bound\n", path_name(p), s, r);
            assert_true(r < 1);
            if (a.n >= 48 && a.n < 400) { /* one 16-row tile of the cache replaced: the
                                           * bound must catch it (in a short context) */
                const int w = a.kvl + a.rope;
                uint16_t *alt = malloc(sizeof(uint16_t) * a.n * w);
                memcpy(alt, a.kv, sizeof(uint16_t) * a.n * w);
                for (int j = 16; j < 32; j++)
                    for (int c = 0; c < w; c++) alt[(size_t)j * w + c] = dsr1_f32_to_bf16(frand());
                reference(&a, alt, ref, bound);
                const double rb = worst_ratio(&a, got, ref, bound);
                worst_bad = fmin(worst_bad, rb);
                assert_true(rb > 1);
                free(alt);
            }
            free(got);
            free(ref);
            free(bound);
            free_case(&a);
        }
        printf("  %s: worst error %.3f of the bound; a wrong tile %.1f x the bound\n", path_name(p),
               worst, worst_bad);
    }
    dsr1_pool_destroy(pool);
}

/* ---- invariance and AMX == emulation ------------------------------------------------------- */

static void test_attention_invariance(void **state)
{
    (void)state;
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    const int bts[] = {7, 16, 64};
    for (int p = DSR1__FAST_VDPBF16; p <= DSR1__FAST_TILE_AMX; p++) {
        const dsr1_kernels *k = path((dsr1__fast_path)p);
        if (!k) continue;
        for (int s = 0; s < 3; s++) {
            const int t = 6;
            /* the last case crosses a split (DSR1__FA_SPLIT) inside the prefill */
            attn_case a = make_case(t,
                                    s == 0   ? 16
                                    : s == 1 ? 19
                                             : 4,
                                    48, 16,
                                    s == 0   ? 0
                                    : s == 1 ? 45
                                             : DSR1__FA_SPLIT - 3);
            const size_t row = (size_t)a.heads * a.kvl;
            float *all = malloc(sizeof(float) * t * row), *one = malloc(sizeof(float) * t * row);
            run_paged(k, pool, &a, 16, 0, t, all);
            for (int b = 0; b < 3; b++) {
                /* token by token (decode), without threads */
                for (int i = 0; i < t; i++) run_paged(k, NULL, &a, bts[b], i, 1, one + i * row);
                assert_memory_equal(all, one, sizeof(float) * t * row);
                /* two chunks: 4 tokens, then 2 */
                run_paged(k, pool, &a, bts[b], 0, 4, one);
                run_paged(k, pool, &a, bts[b], 4, 2, one + 4 * row);
                assert_memory_equal(all, one, sizeof(float) * t * row);
                /* all 6 at once, in waves of one token (a tiny partial-result budget) */
                const size_t saved = dsr1__fa_wave_bytes;
                dsr1__fa_wave_bytes = 1;
                run_paged(k, pool, &a, bts[b], 0, t, one);
                dsr1__fa_wave_bytes = saved;
                assert_memory_equal(all, one, sizeof(float) * t * row);
            }
            free(all);
            free(one);
            free_case(&a);
        }
    }
    dsr1_pool_destroy(pool);
}

/* The emulated tile backend with the vectorised staging and softmax (as the AMX path runs
 * them) equals the portable one, bit for bit, end to end. */
static void test_tile_vd_steps(void **state)
{
    (void)state;
    if (!path(DSR1__FAST_VDPBF16)) {
        printf("  skip: no vdpbf16ps here\n");
        return;
    }
    dsr1__fa_backend plain, mixed;
    dsr1__fa_tile_backend(dsr1__tile_emu(), &plain);
    mixed = plain;
    mixed.stage_c = dsr1__fa_vd_stage_c;
    mixed.softmax = dsr1__fa_vd_softmax;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        attn_case a =
            make_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
        const size_t no = (size_t)a.t * a.heads * a.kvl;
        float *x = malloc(sizeof(float) * no), *y = malloc(sizeof(float) * no);
        paged p = page(&a, 16);
        dsr1__fa_attention(&plain, NULL, a.t, a.heads, a.kvl, a.rope, a.qa, a.qp, p.blocks, 16,
                           p.ld, a.pos0, a.scale, x);
        dsr1__fa_attention(&mixed, NULL, a.t, a.heads, a.kvl, a.rope, a.qa, a.qp, p.blocks, 16,
                           p.ld, a.pos0, a.scale, y);
        assert_memory_equal(x, y, sizeof(float) * no);
        free(p.mem);
        free(p.blocks);
        free(x);
        free(y);
        free_case(&a);
    }
}

static void test_attention_amx_equals_emulation(void **state)
{
    (void)state;
    const char *req = getenv("DSR1_REQUIRE_AMX");
    const dsr1_kernels *amx = path(DSR1__FAST_TILE_AMX), *emu = path(DSR1__FAST_TILE_EMU);
    if (!amx) {
        if (req && strcmp(req, "1") == 0) fail_msg("DSR1_REQUIRE_AMX=1 but AMX is not usable here");
        printf("  skip: no AMX here\n");
        return;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        attn_case a =
            make_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
        const size_t no = (size_t)a.t * a.heads * a.kvl;
        float *x = malloc(sizeof(float) * no), *y = malloc(sizeof(float) * no);
        run_paged(amx, NULL, &a, 16, 0, a.t, x);
        run_paged(emu, NULL, &a, 16, 0, a.t, y);
        assert_memory_equal(x, y, sizeof(float) * no);
        free(x);
        free(y);
        free_case(&a);
    }
}

/* The vdpbf16ps backend's vectorised staging and softmax against the portable ones, bit for
 * bit, on random chunks (scores spread so that some weights underflow to 0 or denormals). */
static void test_vd_steps(void **state)
{
    (void)state;
    if (!path(DSR1__FAST_VDPBF16)) {
        printf("  skip: no vdpbf16ps here\n");
        return;
    }
    for (int it = 0; it < 200; it++) {
        dsr1__fa_task x[2];
        const int kvl = 1 + (int)(rnd() % 200), rope = (int)(rnd() % 70);
        for (int v = 0; v < 2; v++) {
            dsr1__fa_task *t = &x[v];
            *t = (dsr1__fa_task){.hn = 1 + (int)(rnd() % 16),
                                 .kvl = kvl,
                                 .wpad = (kvl + rope + 31) / 32 * 32,
                                 .kvlp = (kvl + 15) / 16 * 16,
                                 .nv = 1 + (int)(rnd() % 32),
                                 .scale = 0.1f + (float)(rnd() % 100)};
            t->k = aligned_alloc(64, sizeof(uint16_t) * 32 * t->wpad);
            t->c = aligned_alloc(64, sizeof(uint16_t) * 32 * t->kvlp);
            t->s = aligned_alloc(64, sizeof(float) * 32 * 16);
            t->p = aligned_alloc(64, sizeof(uint16_t) * 32 * 16);
            t->m = aligned_alloc(64, sizeof(float) * 64);
            t->l = t->m + 16;
            t->alpha = t->m + 32;
            memset(t->p, 0, sizeof(uint16_t) * 32 * 16);
            memset(t->c, 0xff, sizeof(uint16_t) * 32 * t->kvlp);
        }
        x[1].hn = x[0].hn;
        x[1].nv = x[0].nv;
        x[1].scale = x[0].scale;
        for (int i = 0; i < 32 * x[0].wpad; i++) x[0].k[i] = x[1].k[i] = dsr1_f32_to_bf16(frand());
        for (int r = 0; r < 32; r++) {
            x[0].krow[r] = x[0].k + (size_t)r * x[0].wpad;
            x[1].krow[r] = x[1].k + (size_t)r * x[1].wpad;
        }
        for (int i = 0; i < 32 * 16; i++) x[0].s[i] = x[1].s[i] = frand() * 10;
        for (int h = 0; h < 16; h++) {
            x[0].m[h] = x[1].m[h] = it % 3 == 0 ? -INFINITY : frand() * 5;
            x[0].l[h] = x[1].l[h] = it % 3 == 0 ? 0 : 1 + 4 * fabsf(frand());
        }
        dsr1__fa_stage_c(&x[0]);
        dsr1__fa_vd_stage_c(&x[1]);
        assert_memory_equal(x[0].c, x[1].c, sizeof(uint16_t) * 32 * x[0].kvlp);
        dsr1__fa_softmax(&x[0]);
        dsr1__fa_vd_softmax(&x[1]);
        for (int h = 0; h < x[0].hn; h++) {
            assert_memory_equal(&x[0].m[h], &x[1].m[h], 4);
            assert_memory_equal(&x[0].l[h], &x[1].l[h], 4);
            assert_memory_equal(&x[0].alpha[h], &x[1].alpha[h], 4);
            assert_memory_equal(x[0].p + h * 32, x[1].p + h * 32, 64);
        }
        for (int v = 0; v < 2; v++) {
            free(x[v].k);
            free(x[v].c);
            free(x[v].s);
            free(x[v].p);
            free(x[v].m);
        }
    }
}

/* ---- the bf16 cache ------------------------------------------------------------------------ */

static void test_bf16_cache(void **state)
{
    (void)state;
    dsr1_model_config c = test_config();
    dsr1_kv_cache *f, *b;
    assert_int_equal(dsr1_kv_cache_create(&c, 1, 3, 4, 8, false, &f), DSR1_OK);
    assert_int_equal(dsr1_kv_cache_create(&c, 1, 3, 4, 8, true, &b), DSR1_OK);
    assert_false(dsr1_kv_cache_bf16(f));
    assert_true(dsr1_kv_cache_bf16(b));
    const int w = dsr1_kv_cache_row_width(b);
    assert_int_equal(w, c.kv_lora_rank + c.qk_rope_head_dim);
    /* block-major, 2 layers per block: a block spans 2 x 8 rows of w values */
    assert_int_equal((char *)dsr1_kv_cache_block(f, 1, 1) - (char *)dsr1_kv_cache_block(f, 1, 0),
                     (ptrdiff_t)(2 * 8 * w * sizeof(float)));
    assert_int_equal((char *)dsr1_kv_cache_block(b, 1, 1) - (char *)dsr1_kv_cache_block(b, 1, 0),
                     (ptrdiff_t)(2 * 8 * w * sizeof(uint16_t)));
    assert_int_equal((char *)dsr1_kv_cache_block(b, 2, 3) - (char *)dsr1_kv_cache_block(b, 1, 3),
                     (ptrdiff_t)(8 * w * sizeof(uint16_t)));
    /* round trip: nearest even, within half a bf16 ulp (2^-8 of the value's binade) */
    uint16_t *row = (uint16_t *)dsr1_kv_cache_block(b, 2, 3) + 5 * w;
    for (int i = 0; i < 100000; i++) {
        const float v = frand() * ldexpf(1.0f, (int)(rnd() % 40) - 20);
        row[i % w] = dsr1_f32_to_bf16(v);
        const float back = dsr1_bf16_to_f32(row[i % w]);
        assert_true(fabsf(back - v) <= ldexpf(fabsf(v), -8));
        uint32_t u;
        memcpy(&u, &v, 4);
        const uint32_t lo = u & 0xffff;
        if (lo != 0x8000)
            assert_int_equal(row[i % w], (u >> 16) + (lo > 0x8000));
        else
            assert_int_equal(row[i % w], (u >> 16) + ((u >> 16) & 1));
    }
    dsr1_kv_cache_destroy(f);
    dsr1_kv_cache_destroy(b);
}

/* ---- the engine ----------------------------------------------------------------------------- */

static void random_tokens(int32_t *t, int n, int vocab, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < n; i++) t[i] = rand() % vocab;
}

/* Logits of 3 sequences (prefill of 9, 4, 13 tokens, then a decode token each) with kern:
 * [26 + 3][vocab] rows, the batch's, and each sequence's alone equal to them. */
static float *engine_logits(const dsr1_weights *w, const dsr1_kernels *kern, dsr1_pool *pool)
{
    const int V = w->cfg.vocab_size, n1[3] = {9, 4, 13};
    int32_t tok[3][14];
    for (int s = 0; s < 3; s++) random_tokens(tok[s], 14, V, 20 + s);
    dsr1_engine *e, *alone;
    assert_int_equal(dsr1_engine_create(w, kern, pool, 3, 48, &e), DSR1_OK);
    assert_int_equal(dsr1_engine_create(w, kern, pool, 3, 48, &alone), DSR1_OK);
    float *out = malloc(sizeof(float) * 29 * V), *la = malloc(sizeof(float) * 29 * V);
    for (int step = 0, r0 = 0; step < 2; step++) {
        dsr1_seq_step ss[3];
        int rows = 0;
        for (int s = 0; s < 3; s++) {
            const int pos = step ? n1[s] : 0, n = step ? 1 : n1[s];
            ss[s] = (dsr1_seq_step){s, pos, n, tok[s] + pos, DSR1_LOGITS_ALL};
            rows += n;
        }
        dsr1_batch b = {3, ss, out + (size_t)r0 * V};
        assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
        for (int s = 0, r = 0; s < 3; r += ss[s].n_tokens, s++) {
            dsr1_batch b1 = {1, &ss[s], la + (size_t)(r0 + r) * V};
            assert_int_equal(dsr1_engine_forward(alone, &b1), DSR1_OK);
        }
        assert_memory_equal(la + (size_t)r0 * V, out + (size_t)r0 * V, sizeof(float) * rows * V);
        r0 += rows;
    }
    free(la);
    dsr1_engine_destroy(e);
    dsr1_engine_destroy(alone);
    return out;
}

/* max over rows of max|a - b| / std(b's row), and the median row's */
static void row_errors(const float *a, const float *b, int rows, int V, double *worst,
                       double *median)
{
    double e[64];
    for (int r = 0; r < rows; r++) {
        double m = 0, var = 0, x = 0;
        for (int i = 0; i < V; i++) m += b[(size_t)r * V + i];
        m /= V;
        for (int i = 0; i < V; i++) var += pow(b[(size_t)r * V + i] - m, 2);
        for (int i = 0; i < V; i++) x = fmax(x, fabs(a[(size_t)r * V + i] - b[(size_t)r * V + i]));
        e[r] = x / sqrt(var / V);
    }
    for (int i = 1; i < rows; i++) /* insertion sort */
        for (int j = i; j > 0 && e[j] < e[j - 1]; j--) {
            const double t = e[j];
            e[j] = e[j - 1];
            e[j - 1] = t;
        }
    *worst = e[rows - 1];
    *median = e[rows / 2];
}

/* dense: every layer's FFN dense (no router whose near-ties the precision may flip) */
static void engine_check(int dense)
{
    dsr1_model_config c = test_config();
    c.num_attention_heads = 20; /* two head groups, one short */
    if (dense) c.first_k_dense_replace = c.num_hidden_layers;
    printf("  %s model:\n", dense ? "dense" : "MoE");
    dsr1_slice all = dsr1_slice_all(&c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(&c, &all, 11, &w), DSR1_OK);
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(2, &pool), DSR1_OK);
    const int V = c.vocab_size, rows = 29;
    const dsr1_kernels *ex = dsr1_kernels_select(NULL);
    float *exact = engine_logits(w, ex, pool);
    const dsr1_kernels *fast = dsr1_kernels_select("bf16-tiles");
    const dsr1_kernels *emu = dsr1_kernels_select("bf16-tiles-emulated");
    assert_non_null(emu);
    /* the exact products with the fast mode's cache and attention alone (emulated tiles):
     * what the attention changes, without the experts that bf16 products flip */
    dsr1_kernels attn_only = *ex;
    attn_only.kv_bf16 = 1;
    attn_only.mla_attention_bf16 = emu->mla_attention_bf16;
    float *fa = engine_logits(w, &attn_only, pool);
    float *fe = engine_logits(w, emu, pool);
    float *ff = fast ? engine_logits(w, fast, pool) : NULL;
    if (!ff) printf("  skip bf16-tiles: not available here\n");
    if (ff && path(DSR1__FAST_TILE_AMX) != NULL) /* both on tiles: the same bits */
        assert_memory_equal(fe, ff, sizeof(float) * rows * V);
    const float *got[3] = {fa, fe, ff};
    const char *name[3] = {"exact + bf16 cache and tile attention", "bf16-tiles-emulated",
                           "bf16-tiles"};
    for (int v = 0; v < 3; v++) {
        if (!got[v]) continue;
        double worst, median;
        row_errors(got[v], exact, rows, V, &worst, &median);
        printf("    %s vs exact: max |dlogit| / row std: median row %.4f, worst %.4f\n", name[v],
               median, worst);
        assert_true(worst > 0); /* another precision: equal bits would mean exact ran */
        /* bf16 rounding (2^-9) through 3 layers; with experts, a perturbation of any kind
         * flips near-tied router choices of the random model in a few rows: there, a bound
         * on the median row */
        if (dense)
            assert_true(worst < 0.2);
        else
            assert_true(median < 0.1);
    }
    free(exact);
    free(fa);
    free(fe);
    free(ff);
    dsr1_pool_destroy(pool);
    dsr1_weights_destroy(w);
}

static void test_engine(void **state)
{
    (void)state;
    engine_check(1);
    engine_check(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_vd_steps),
        cmocka_unit_test(test_attention_paths),
        cmocka_unit_test(test_attention_invariance),
        cmocka_unit_test(test_tile_vd_steps),
        cmocka_unit_test(test_attention_amx_equals_emulation),
        cmocka_unit_test(test_bf16_cache),
        cmocka_unit_test(test_engine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
