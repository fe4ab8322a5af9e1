/* Deterministic random weights (see randw.h): xoshiro256** streams seeded by splitmix64,
 * a 256-layer ziggurat for normals, and block-FP8 quantisation. */
#include "randw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "numeric.h"

/* Ziggurat for f(x) = exp(-x^2/2) with 256 layers of equal area V: the base layer is
 * [0, R] x [0, f(R)] plus the tail beyond R. (Marsaglia & Tsang, "The Ziggurat Method for
 * Generating Random Variables", 2000: these R and V close the recurrence at x = 0.) */
#define ZIG_R 3.6541528853610088
#define ZIG_V 0.00492867323399

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void dsr1_randw_init(dsr1_randw *rw, uint64_t seed)
{
    memset(rw, 0, sizeof(*rw));
    rw->seed = seed;
    double *x = rw->zx, *f = rw->zf;
    x[0] = ZIG_V / exp(-0.5 * ZIG_R * ZIG_R);
    x[1] = ZIG_R;
    for (int i = 1; i < DSR1_ZIG_LAYERS - 1; i++)
        x[i + 1] = sqrt(-2.0 * log(ZIG_V / x[i] + exp(-0.5 * x[i] * x[i])));
    x[DSR1_ZIG_LAYERS] = 0.0;
    for (int i = 0; i <= DSR1_ZIG_LAYERS; i++) f[i] = exp(-0.5 * x[i] * x[i]);
    for (int i = 0; i < DSR1_ZIG_LAYERS; i++) {
        rw->zk32[i] = (uint32_t)(x[i + 1] / x[i] * 8388608.0); /* 2^23 */
        rw->zw32[i] = (float)(x[i] / 8388608.0);
    }
}

void dsr1_rng_init(dsr1_rng *r, const dsr1_randw *rw, const char *stream, uint64_t piece)
{
    uint64_t k = rw->seed;
    uint64_t a = splitmix64(&k);
    k = a ^ fnv1a64(stream);
    uint64_t b = splitmix64(&k);
    k = b ^ (piece * 0xd1b54a32d192ed03ull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&k);
    r->spare = 0;
    r->has_spare = 0;
    r->rw = rw;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman & Vigna) */
static inline uint64_t rng_next(dsr1_rng *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

uint64_t dsr1_rng_next(dsr1_rng *r)
{
    return rng_next(r);
}

static inline double rng_uniform(dsr1_rng *r)
{
    return (double)(int64_t)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

double dsr1_rng_uniform(dsr1_rng *r)
{
    return rng_uniform(r);
}

/* The rare slow path: tail (layer 0) or wedge; returns 0 with *ok = 0 to retry. */
static double normal_slow(dsr1_rng *r, int i, double x, int *ok)
{
    const dsr1_randw *rw = r->rw;
    *ok = 1;
    if (i == 0) {
        double a, b;
        do {
            a = -log(1.0 - rng_uniform(r)) / ZIG_R;
            b = -log(1.0 - rng_uniform(r));
        } while (b + b < a * a);
        return ZIG_R + a;
    }
    double y = rw->zf[i] + rng_uniform(r) * (rw->zf[i + 1] - rw->zf[i]);
    if (y < exp(-0.5 * x * x)) return x;
    *ok = 0;
    return 0.0;
}

/* n values add + mul * normal into out. Each 64-bit draw gives two 32-bit words, one per
 * normal (8 bits layer, 1 sign, 23 bits position: float precision, plenty for weights
 * stored in 8 or 16 bits); a word left over stays in r->spare, so the values never depend
 * on how a caller splits its requests. The generator state is held in registers: through
 * r->s it would be stored and reloaded every draw, which triples the cost. */
static void normals(dsr1_rng *r, float *out, int64_t n, float mul, float add)
{
    const dsr1_randw *rw = r->rw;
    uint64_t s0 = r->s[0], s1 = r->s[1], s2 = r->s[2], s3 = r->s[3];
    uint32_t spare = r->spare;
    int have = r->has_spare;
    for (int64_t k = 0; k < n;) {
        uint32_t w;
        if (have) {
            w = spare;
            have = 0;
        } else {
            uint64_t u = rotl(s1 * 5, 7) * 9, t = s1 << 17;
            s2 ^= s0;
            s3 ^= s1;
            s1 ^= s2;
            s0 ^= s3;
            s2 ^= t;
            s3 = rotl(s3, 45);
            w = (uint32_t)u;
            spare = (uint32_t)(u >> 32);
            have = 1;
        }
        int i = (int)(w & 0xff);
        uint32_t m = w >> 9;
        float x = (float)(int32_t)m * rw->zw32[i];
        if (m >= rw->zk32[i]) { /* about 1 in 100: tail or wedge */
            int ok;
            r->s[0] = s0, r->s[1] = s1, r->s[2] = s2, r->s[3] = s3;
            x = (float)normal_slow(r, i, x, &ok);
            s0 = r->s[0], s1 = r->s[1], s2 = r->s[2], s3 = r->s[3];
            if (!ok) continue;
        }
        /* random sign by flipping the sign bit: a branch on it would mispredict half the time */
        uint32_t xb;
        memcpy(&xb, &x, 4);
        xb ^= (w & 0x100) << 23;
        memcpy(&x, &xb, 4);
        out[k++] = add + mul * x;
    }
    r->s[0] = s0, r->s[1] = s1, r->s[2] = s2, r->s[3] = s3;
    r->spare = spare;
    r->has_spare = have;
}

double dsr1_rng_normal(dsr1_rng *r)
{
    float x;
    normals(r, &x, 1, 1.0f, 0.0f);
    return x;
}

void dsr1_randw_fp8_rows(const dsr1_randw *rw, const char *stream, int64_t out, int64_t in,
                         float gain, int64_t brow0, int64_t brow1, uint8_t *q, float *scale)
{
    const int64_t B = DSR1_FP8_BLOCK;
    const int64_t scols = (in + B - 1) / B;
    const double std = gain / sqrt((double)in);
    float blk[DSR1_FP8_BLOCK * DSR1_FP8_BLOCK];
    for (int64_t b = brow0; b < brow1; b++) {
        dsr1_rng r;
        dsr1_rng_init(&r, rw, stream, (uint64_t)b);
        int64_t r0 = b * B, nr = out - r0 < B ? out - r0 : B;
        uint8_t *qrow = q + (r0 - brow0 * B) * in;
        float *srow = scale + (b - brow0) * scols;
        for (int64_t j = 0; j < scols; j++) {
            int64_t c0 = j * B, nc = in - c0 < B ? in - c0 : B;
            double s = std * (0.5 + 1.5 * rng_uniform(&r)); /* block magnitude in [0.5, 2) */
            float amax = 0.0f;
            normals(&r, blk, nr * nc, (float)s, 0.0f);
            for (int64_t k = 0; k < nr * nc; k++) {
                float a = fabsf(blk[k]);
                amax = a > amax ? a : amax;
            }
            float sc = (amax > 1e-12f ? amax : 1e-12f) / 448.0f;
            float inv = 1.0f / sc;
            srow[j] = sc;
            for (int64_t y = 0; y < nr; y++) {
                uint8_t *dst = qrow + y * in + c0;
                const float *src = blk + y * nc;
                for (int64_t x = 0; x < nc; x++) dst[x] = dsr1_randw_e4m3(src[x] * inv);
            }
        }
    }
}

void dsr1_randw_normal_range(const dsr1_randw *rw, const char *stream, dsr1_dtype dtype, float mean,
                             float std, int64_t begin, int64_t end, void *dst)
{
    enum { BUF = 4096 };
    const int64_t C = DSR1_RANDW_CHUNK;
    float buf[BUF];
    int64_t i = begin;
    while (i < end) {
        int64_t c = i / C, c0 = c * C, c1 = c0 + C < end ? c0 + C : end;
        dsr1_rng r;
        dsr1_rng_init(&r, rw, stream, (uint64_t)c);
        for (int64_t k = c0; k < i; k += BUF) /* the head of the chunk before `begin` */
            normals(&r, buf, i - k < BUF ? i - k : BUF, std, mean);
        while (i < c1) {
            int n = c1 - i < BUF ? (int)(c1 - i) : BUF;
            normals(&r, buf, n, std, mean);
            if (dtype == DSR1_DT_BF16) {
                uint16_t *o = (uint16_t *)dst + (i - begin);
                for (int k = 0; k < n; k++) o[k] = dsr1_f32_to_bf16(buf[k]);
            } else {
                memcpy((float *)dst + (i - begin), buf, (size_t)n * sizeof(float));
            }
            i += n;
        }
    }
}

dsr1_status dsr1_randw_fill(const dsr1_randw *rw, const dsr1_tensor_spec *t, void *data,
                            void *companion)
{
    const int64_t B = DSR1_FP8_BLOCK;
    if (t->init == DSR1_INIT_NORMAL && (t->dtype == DSR1_DT_BF16 || t->dtype == DSR1_DT_F32)) {
        dsr1_randw_normal_range(rw, t->stream, t->dtype, t->mean, t->std, 0, dsr1_tensor_numel(t),
                                data);
        return DSR1_OK;
    }
    if (t->init == DSR1_INIT_FP8_WEIGHT && t->ndim == 2) {
        int64_t out = t->shape[0], in = t->shape[1], bro = (out + B - 1) / B;
        float *sc = companion;
        if (!sc) sc = malloc((size_t)(bro * ((in + B - 1) / B)) * sizeof(float));
        if (!sc) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", t->name);
        dsr1_randw_fp8_rows(rw, t->stream, out, in, t->gain, 0, bro, data, sc);
        if (sc != companion) free(sc);
        return DSR1_OK;
    }
    if (t->init == DSR1_INIT_FP8_SCALE && t->ndim == 2) {
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%s: a scale_inv is generated together with its weight; call "
                          "dsr1_randw_fill() on the weight with this buffer as companion",
                          t->name);
    }
    return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: no random init for this tensor", t->name);
}
