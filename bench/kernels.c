/* `dsr1-bench kernels`: how close the CPU kernels come to this machine's limits, and how
 * they compare with oneDNN on the same products.
 *
 * Everything in one run, so that every ratio compares numbers taken minutes apart on the
 * same (often shared, noisy) machine, each the best of several repetitions:
 *   1. the limits (bench/limits.c, `dsr1-bench limits`): streaming read bandwidth, fp32
 *      FMA peak and the bf16 peaks of vdpbf16ps and AMX tiles (n/a where absent), measured
 *      before and again after the kernels; the larger of the two measurements is used, and
 *      a large disagreement is reported (the machine was busy at one of the two times);
 *   2. the FP8 linear layer at DeepSeek-R1 expert shapes (N x K = 2048 x 7168, gate/up, and
 *      7168 x 2048, down) for M = 1, 8, 64, 512 (and 4096 without --quick), for every kernel
 *      variant available and for oneDNN's bf16 and f32 matmul on the same product
 *      (bench/onednn.c, when built in), all interleaved per repetition: GFLOP/s, weight
 *      GB/s, % of bandwidth, % of FMA peak, % of the roofline min(peak, bandwidth x 2M
 *      flops per weight byte), speed-up over portable, the largest difference from
 *      portable, and our fastest variant's GFLOP/s over oneDNN's; bf16-tiles rows also
 *      get %bf16, of the measured peak of the arithmetic they run on (AMX tiles where
 *      bf16-tiles uses them, else vdpbf16ps);
 *   3. the decode-step absorption (q' = Wk^T q over kv_b, FP8) per variant;
 *   4. MLA attention of one decode token against 1K-32K cached rows in a paged cache,
 *      per variant: time per call and cache bytes read per second against the bandwidth
 *      (variants with a bf16 cache, kv_bf16 — the fast mode — read the same values rounded
 *      to bf16, half the bytes, through mla_attention_bf16).
 * Weights are random e4m3 bytes (no NaN patterns) with random positive block scales; many
 * copies (of weights, of caches) are cycled so that, as in a real step, they come from DRAM
 * rather than cache.
 * With --attention, only the limits and section 4, for avx512 and bf16-tiles (the speed-up
 * column is then over avx512, the exact mode).
 * usage: dsr1-bench kernels [--quick] [--attention] [--json FILE] */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cpu/tile.h"
#include "kernels.h"
#include "numeric.h"
#include "progress.h"

#define MAX_VARIANTS 8
#define MAX_ROWS     160

typedef struct {
    bool quick;
    int reps;          /* repetitions per measurement (best kept) */
    double min_time;   /* seconds per repetition, at least one call */
    double budget;     /* seconds per measurement before repetitions are cut */
    size_t pool_bytes; /* weight copies cycled per shape */
} bench_opts;

/* One measured kernel call: a linear at (n, k, m) or a decode kernel (m = 1) at ctx. */
typedef struct {
    const char *kernel; /* "linear_fp8", "onednn_matmul", "absorb", "mla_attention" */
    int n, k, m, ctx;
    const char *variant;
    double sec, bytes, flops, speedup, diff; /* diff: NaN when not checked */
    char impl[64];                           /* oneDNN's implementation */
    bool bf16; /* runs the fast mode's bf16 arithmetic (AMX tiles or vdpbf16ps): gets %bf16 */
} result;

typedef struct {
    result r[MAX_ROWS];
    int n;
    char onednn_why[160]; /* why oneDNN is absent, when it is */
} results;

static result *results_add(results *rs)
{
    return rs->n < MAX_ROWS ? &rs->r[rs->n++] : NULL;
}

static float frand(uint64_t *s) /* uniform in [-1, 1) */
{
    return (float)((dsr1__bench_rand(s) >> 11) * 0x1p-52 - 1.0);
}

static uint8_t e4m3_rand(uint64_t *s) /* any e4m3 byte but the NaN patterns */
{
    const uint8_t v = (uint8_t)dsr1__bench_rand(s);
    return (v & 0x7f) == 0x7f ? v ^ 1 : v;
}

/* Best seconds per call of each of n implementations: fn(arg, i) calls implementation i
 * once. Implementations interleaved per repetition, so that drift on a shared machine hits
 * all of them; each repetition calls one for at least min_time. */
static void time_interleaved(void (*fn)(void *arg, int i), void *arg, int n, const bench_opts *o,
                             double *sec)
{
    for (int i = 0; i < n; i++) sec[i] = INFINITY;
    const double start = dsr1_now();
    for (int rep = 0; rep < o->reps && dsr1_now() - start < o->budget; rep++)
        for (int i = 0; i < n; i++) {
            int calls = 0;
            const double t0 = dsr1_now();
            double t;
            do {
                fn(arg, i);
                calls++;
            } while ((t = dsr1_now() - t0) < o->min_time);
            sec[i] = fmin(sec[i], t / calls);
        }
}

static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return mx > 0 ? d / mx : d;
}

/* ---- FP8 linear at expert shapes, and oneDNN on the same products ------------------ */

typedef struct {
    dsr1_linear *w;
    int ncopies;
    uint8_t *q;
    float *scale;
} weight_pool;

static int weight_pool_make(weight_pool *p, int n, int k, size_t pool_bytes, uint64_t seed)
{
    const size_t wb = (size_t)n * k;
    const int sr = (n + DSR1_QBLOCK - 1) / DSR1_QBLOCK, sc = (k + DSR1_QBLOCK - 1) / DSR1_QBLOCK;
    p->ncopies = (int)((pool_bytes + wb - 1) / wb);
    if (p->ncopies < 2) p->ncopies = 2;
    p->q = malloc(wb * p->ncopies);
    p->scale = malloc(sizeof(float) * sr * sc * p->ncopies);
    p->w = malloc(sizeof(dsr1_linear) * p->ncopies);
    if (!p->q || !p->scale || !p->w) return -1;
    uint64_t s = seed;
    for (size_t i = 0; i < wb * p->ncopies; i++) p->q[i] = e4m3_rand(&s);
    for (size_t i = 0; i < (size_t)sr * sc * p->ncopies; i++)
        p->scale[i] = (float)((0.25 + (dsr1__bench_rand(&s) >> 11) * 0x1p-53) * 1e-3); /* > 0 */
    for (int c = 0; c < p->ncopies; c++)
        p->w[c] =
            (dsr1_linear){DSR1_DT_F8_E4M3, n, k, p->q + wb * c, p->scale + (size_t)sr * sc * c};
    return 0;
}

static void weight_pool_free(weight_pool *p)
{
    free(p->w);
    free(p->q);
    free(p->scale);
}

/* One implementation of a linear shape: one of our kernel tables, or oneDNN. */
typedef struct {
    const char *name;
    const dsr1_kernels *k;  /* NULL: oneDNN */
    dsr1__onednn_mm *mm;    /* oneDNN */
    dsr1__onednn_desc desc; /* oneDNN */
    int next;               /* ours: weight copy of the next call */
} contender;

typedef struct {
    contender c[MAX_VARIANTS + 2];
    dsr1_pool *pool;
    const weight_pool *wp;
    const float *x;
    int m;
    float *y;
} linear_job;

/* One call of contender i on its next weight copy. */
static void linear_call(void *arg, int i)
{
    linear_job *j = arg;
    contender *c = &j->c[i];
    if (c->mm) {
        dsr1__onednn_run(c->mm);
        return;
    }
    const dsr1_linear *w = &j->wp->w[c->next];
    c->k->linear(j->pool, w, 0, w->rows, j->x, w->cols, j->m, j->y, w->rows);
    c->next = (c->next + 1) % j->wp->ncopies;
}

/* oneDNN's bf16 and f32 matmuls on W dequantised (wf), when it is built in; the reason
 * it is not is kept in rs->onednn_why. Returns the number of contenders added. */
static int onednn_add(linear_job *j, int nc, const float *wf, int n, int k, const bench_opts *o,
                      results *rs)
{
    int added = 0;
    for (int bf16 = 1; bf16 >= 0; bf16--) {
        contender *c = &j->c[nc + added];
        *c = (contender){bf16 ? "onednn-bf16" : "onednn-f32"};
        c->mm =
            dsr1__onednn_create(bf16, wf, n, k, j->x, j->m, o->pool_bytes, dsr1_pool_size(j->pool),
                                &c->desc, rs->onednn_why, sizeof(rs->onednn_why));
        added += c->mm != NULL;
    }
    return added;
}

static void bench_linear(dsr1_pool *pool, const bench_opts *o, int n, int k, const int *ms, int nm,
                         const dsr1_kernels **vars, int nv, results *rs)
{
    weight_pool wp;
    const int mmax = ms[nm - 1];
    float *x = malloc(sizeof(float) * mmax * k), *y = malloc(sizeof(float) * mmax * n);
    float *yref = malloc(sizeof(float) * mmax * n), *yv = malloc(sizeof(float) * mmax * n);
    float *wf = malloc(sizeof(float) * n * k);
    linear_job *j = calloc(1, sizeof(*j));
    if (weight_pool_make(&wp, n, k, o->pool_bytes, 0x9e3779b97f4a7c15ull ^ (uint64_t)n) != 0 ||
        !x || !y || !yref || !yv || !wf || !j) {
        fprintf(stderr, "dsr1-bench: out of memory for %d x %d, M = %d\n", n, k, mmax);
        goto out;
    }
    uint64_t s = 12345;
    for (size_t i = 0; i < (size_t)mmax * k; i++) x[i] = frand(&s);
    memset(y, 0, sizeof(float) * mmax * n);
    for (int r = 0; r < n; r++) dsr1_linear_dequant_row(&wp.w[0], r, wf + (size_t)r * k);
    const double wbytes =
        (double)n * k + sizeof(float) * (double)((n + 127) / 128) * ((k + 127) / 128);
    *j = (linear_job){.pool = pool, .wp = &wp, .x = x, .y = y};
    for (int mi = 0; mi < nm; mi++) {
        const int m = ms[mi];
        fprintf(stderr, "linear %d x %d, M = %d ...\n", n, k, m);
        j->m = m;
        for (int v = 0; v < nv; v++) j->c[v] = (contender){vars[v]->name, vars[v], .next = 1};
        const int nc = nv + onednn_add(j, nv, wf, n, k, o, rs);
        double sec[MAX_VARIANTS + 2], diff[MAX_VARIANTS + 2];
        /* the reference result on copy 0 (also the warm-up); compared when it was cheap */
        const double t0 = dsr1_now();
        vars[0]->linear(pool, &wp.w[0], 0, n, x, k, m, yref, n);
        const bool check = dsr1_now() - t0 < 2.0;
        for (int c = 0; c < nc; c++) {
            diff[c] = NAN;
            if (c == 0 || !check) continue;
            const contender *cc = &j->c[c];
            if (cc->mm) /* oneDNN's first call is on its copy of W 0 */
                linear_call(j, c);
            else
                vars[c]->linear(pool, &wp.w[0], 0, n, x, k, m, yv, n);
            diff[c] = max_rel_diff(cc->mm ? cc->desc.y : yv, yref, (size_t)m * n);
        }
        time_interleaved(linear_call, j, nc, o, sec);
        for (int c = 0; c < nc; c++) {
            const contender *cc = &j->c[c];
            result *r = results_add(rs);
            if (r)
                *r = (result){cc->mm ? "onednn_matmul" : "linear_fp8",
                              n,
                              k,
                              m,
                              0,
                              cc->name,
                              sec[c],
                              cc->mm ? cc->desc.weight_bytes : wbytes,
                              2.0 * m * n * k,
                              sec[0] / sec[c],
                              diff[c]};
            if (r && cc->mm) snprintf(r->impl, sizeof(r->impl), "%s", cc->desc.impl);
            if (r && !cc->mm) r->bf16 = cc->k->kv_bf16; /* the fast mode's tables */
            dsr1__onednn_destroy(cc->mm);
        }
    }
out:
    free(x);
    free(y);
    free(yref);
    free(yv);
    free(wf);
    free(j);
    weight_pool_free(&wp);
}

/* ---- decode-step absorption -------------------------------------------------------- */

typedef struct {
    const dsr1_kernels *k;
    dsr1_pool *pool;
    const dsr1_linear *w;
    const float *x;
    float *y;
} absorb_job;

/* q' = Wk^T q for all 128 heads of one token (kv_b: 128 x (128 nope + 128 v) rows of 512) */
static void run_absorb(const absorb_job *j)
{
    for (int h = 0; h < 128; h++)
        j->k->linear_t(j->pool, j->w, h * 256, h * 256 + 128, j->x + h * 128, 128 * 128, 1,
                       j->y + h * 512, 512);
}

/* At R1 shapes: kv_b of 128 heads, kv_lora 512, one token; best single call. */
static void bench_absorb(dsr1_pool *pool, const bench_opts *o, const dsr1_kernels **vars, int nv,
                         results *rs)
{
    const int rows = 128 * 256, cols = 512;
    uint8_t *q = malloc((size_t)rows * cols);
    float *sc = malloc(sizeof(float) * (rows / 128) * (cols / 128));
    float *x = malloc(sizeof(float) * 128 * 128), *y = malloc(sizeof(float) * 128 * 512);
    if (!q || !sc || !x || !y) {
        fprintf(stderr, "dsr1-bench: out of memory for the absorption\n");
        goto out;
    }
    uint64_t s = 777;
    for (size_t i = 0; i < (size_t)rows * cols; i++) q[i] = e4m3_rand(&s);
    for (int i = 0; i < (rows / 128) * (cols / 128); i++)
        sc[i] = (float)((0.25 + (dsr1__bench_rand(&s) >> 11) * 0x1p-53) * 1e-3);
    for (int i = 0; i < 128 * 128; i++) x[i] = frand(&s);
    const dsr1_linear w = {DSR1_DT_F8_E4M3, rows, cols, q, sc};
    fprintf(stderr, "absorption ...\n");
    double base = 0;
    for (int v = 0; v < nv; v++) {
        const absorb_job j = {vars[v], pool, &w, x, y};
        double t = INFINITY;
        const double start = dsr1_now();
        for (int rep = 0; rep < o->reps * 3 && dsr1_now() - start < o->budget / 2; rep++) {
            const double t0 = dsr1_now();
            run_absorb(&j);
            t = fmin(t, dsr1_now() - t0);
        }
        base = v == 0 ? t : base;
        result *r = results_add(rs);
        if (r)
            *r = (result){"absorb",
                          rows,
                          cols,
                          1,
                          0,
                          vars[v]->name,
                          t,
                          (double)128 * 128 * cols,
                          2.0 * 128 * 128 * cols,
                          base / t,
                          NAN};
        /* a fast table whose linear_t is an exact table's runs the absorption in fp32 */
        bool own = vars[v]->kv_bf16;
        for (int e = 0; e < nv; e++)
            own &= vars[e]->kv_bf16 || vars[e]->linear_t != vars[v]->linear_t;
        if (r) r->bf16 = own;
    }
out:
    free(q);
    free(sc);
    free(x);
    free(y);
}

/* ---- MLA decode attention ---------------------------------------------------------- */

#define MLA_HEADS 128
#define MLA_KVL   512
#define MLA_ROPE  64
#define MLA_ROW   (MLA_KVL + MLA_ROPE)
#define MLA_BLOCK 64 /* cache rows per block of the paged cache */

/* One decode token against ctx cached rows. The cache buffer holds ncopies contexts (far
 * more than the caches hold), cycled call by call as the 61 layers' caches of a real step
 * would be, so rows come from DRAM. It is cut into blocks of MLA_BLOCK rows listed in
 * random order, as a paged cache hands them out; copy c is blocks[c * nblocks ...]. */
typedef struct {
    const dsr1_kernels *const *vars;
    dsr1_pool *pool;
    const float *qa, *qp;
    const float *const *blocks;
    const uint16_t *const *blocks16; /* the same cache in bf16, for variants with kv_bf16 */
    int ctx, nblocks, ncopies, next[MAX_VARIANTS];
    float *out;
} mla_job;

static void mla_call(void *arg, int v)
{
    mla_job *j = arg;
    const size_t at = (size_t)j->next[v] * j->nblocks;
    if (j->vars[v]->kv_bf16 && j->vars[v]->mla_attention_bf16)
        j->vars[v]->mla_attention_bf16(j->pool, 1, MLA_HEADS, MLA_KVL, MLA_ROPE, j->qa, j->qp,
                                       j->blocks16 + at, MLA_BLOCK, MLA_ROW, j->ctx - 1, 0.1f,
                                       j->out);
    else
        j->vars[v]->mla_attention(j->pool, 1, MLA_HEADS, MLA_KVL, MLA_ROPE, j->qa, j->qp,
                                  j->blocks + at, MLA_BLOCK, MLA_ROW, j->ctx - 1, 0.1f, j->out);
    j->next[v] = (j->next[v] + 1) % j->ncopies;
}

static void bench_mla_attention(dsr1_pool *pool, const bench_opts *o, const dsr1_kernels **vars,
                                int nv, results *rs)
{
    static const int ctxs[] = {1024, 4096, 8192, 16384, 32768};
    const int nctx = sizeof(ctxs) / sizeof(ctxs[0]), ctx_max = ctxs[nctx - 1];
    const size_t row_bytes = sizeof(float) * MLA_ROW,
                 rows = (o->pool_bytes > 2 * ctx_max * row_bytes ? o->pool_bytes
                                                                 : 2 * ctx_max * row_bytes) /
                        row_bytes;
    float *kv = malloc(row_bytes * rows), *out = malloc(sizeof(float) * MLA_HEADS * MLA_KVL);
    float *qa = malloc(sizeof(float) * MLA_HEADS * MLA_KVL);
    float *qp = malloc(sizeof(float) * MLA_HEADS * MLA_ROPE);
    const float **blocks = malloc(sizeof(*blocks) * (rows / MLA_BLOCK));
    uint16_t *kv16 = malloc(sizeof(uint16_t) * MLA_ROW * rows);
    const uint16_t **blocks16 = malloc(sizeof(*blocks16) * (rows / MLA_BLOCK));
    if (!kv || !out || !qa || !qp || !blocks || !kv16 || !blocks16) {
        fprintf(stderr, "dsr1-bench: out of memory for the MLA cache\n");
        goto out;
    }
    uint64_t s = 4242;
    for (size_t i = 0; i < rows * MLA_ROW; i++) kv[i] = frand(&s);
    for (int i = 0; i < MLA_HEADS * MLA_KVL; i++) qa[i] = frand(&s);
    for (int i = 0; i < MLA_HEADS * MLA_ROPE; i++) qp[i] = frand(&s);
    const size_t nb = rows / MLA_BLOCK;
    for (size_t b = 0; b < nb; b++) blocks[b] = kv + b * MLA_BLOCK * MLA_ROW;
    for (size_t b = nb - 1; b > 0; b--) {
        const size_t r = dsr1__bench_rand(&s) % (b + 1);
        const float *t = blocks[b];
        blocks[b] = blocks[r];
        blocks[r] = t;
    }
    /* the fast mode's bf16 cache: the same values rounded, the same block order */
    for (size_t i = 0; i < rows * MLA_ROW; i++) kv16[i] = dsr1_f32_to_bf16(kv[i]);
    for (size_t b = 0; b < nb; b++) blocks16[b] = kv16 + (blocks[b] - kv);
    for (int ci = 0; ci < nctx; ci++) {
        const int ctx = ctxs[ci];
        fprintf(stderr, "MLA attention, %d cached tokens ...\n", ctx);
        mla_job j = {vars, pool, qa, qp, blocks, blocks16, ctx, ctx / MLA_BLOCK, (int)(rows / ctx)};
        j.out = out;
        double sec[MAX_VARIANTS];
        time_interleaved(mla_call, &j, nv, o, sec);
        for (int v = 0; v < nv; v++) {
            result *r = results_add(rs);
            if (r)
                *r = (result){"mla_attention",
                              0,
                              0,
                              1,
                              ctx,
                              vars[v]->name,
                              sec[v],
                              (double)ctx * MLA_ROW *
                                  (vars[v]->kv_bf16 ? sizeof(uint16_t) : sizeof(float)),
                              2.0 * MLA_HEADS * ctx * (MLA_ROW + MLA_KVL),
                              sec[0] / sec[v],
                              NAN};
            if (r) r->bf16 = vars[v]->kv_bf16 && vars[v]->mla_attention_bf16;
        }
    }
out:
    free(kv);
    free(kv16);
    free(blocks16);
    free(out);
    free(qa);
    free(qp);
    free(blocks);
}

/* ---- report ------------------------------------------------------------------------ */

static bool is_linear(const result *r)
{
    return !strcmp(r->kernel, "linear_fp8") || !strcmp(r->kernel, "onednn_matmul");
}

/* GFLOP/s of `r` (ours) over oneDNN's `variant` on the same shape; NaN when not measured. */
static double vs_onednn(const results *rs, const result *r, const char *variant)
{
    for (int i = 0; i < rs->n; i++) {
        const result *o = &rs->r[i];
        if (!strcmp(o->variant, variant) && o->n == r->n && o->k == r->k && o->m == r->m)
            return o->sec / r->sec;
    }
    return NAN;
}

/* The compute ceiling of a row: the fp32 FMA peak, twice that for bf16 (one vdpbf16ps does
 * two multiply-adds per fp32 lane of an FMA). */
static double row_peak(const result *r, double peak)
{
    return strstr(r->variant, "bf16") ? 2 * peak : peak;
}

/* "%bf16": GFLOP/s over bf16_peak (0: not measured) for rows on the fast mode's bf16
 * arithmetic; "-" for the others. */
static const char *pct_bf16(const result *r, double bf16_peak, char *buf, size_t len)
{
    if (!r->bf16) return "-";
    if (bf16_peak <= 0) return "n/a";
    snprintf(buf, len, "%.1f%%", 100 * r->flops / r->sec / 1e9 / bf16_peak);
    return buf;
}

static json_t *row_json(const result *r, double bw, double fma_peak, double bf16_peak)
{
    const double peak = row_peak(r, fma_peak);
    const double gf = r->flops / r->sec / 1e9, gb = r->bytes / r->sec / 1e9;
    json_t *e =
        json_pack("{s:s,s:s,s:f,s:f,s:f,s:f,s:f,s:f,s:i,s:i,s:i}", "kernel", r->kernel, "variant",
                  r->variant, "seconds", r->sec, "gflops", gf, "gbps", gb, "pct_bandwidth",
                  100 * gb / bw, "pct_fma_peak", peak > 0 ? 100 * gf / peak : 0,
                  "speedup_vs_portable", r->speedup, "n", r->n, "k", r->k, "m", r->m);
    if (r->ctx) json_object_set_new(e, "ctx", json_integer(r->ctx));
    if (!isnan(r->diff)) json_object_set_new(e, "max_rel_diff_vs_portable", json_real(r->diff));
    if (r->impl[0]) json_object_set_new(e, "impl", json_string(r->impl));
    if (r->bf16)
        json_object_set_new(e, "pct_bf16_peak",
                            bf16_peak > 0 ? json_real(100 * gf / bf16_peak) : json_null());
    return e;
}

static void report_linear(const results *rs, double bw, double peak, double bf16_peak, json_t *jres)
{
    printf("\nFP8 e4m3 linear y = x W^T, W: N x K with 128x128 block scales, x: M x K fp32; "
           "oneDNN: the same W dequantised, as bf16 or f32 (%%FMA of bf16: of twice the fp32 "
           "peak; %%bf16: of the measured peak of the bf16 arithmetic bf16-tiles runs)\n");
    printf("%5s %5s %5s  %-11s %10s %9s %8s %7s %7s %7s %7s %8s  %s\n", "N", "K", "M", "variant",
           "ms/call", "GFLOP/s", "W GB/s", "%BW", "%FMA", "%bf16", "%roof", "speedup",
           "max|diff|/max|y|");
    for (int i = 0; i < rs->n; i++) {
        const result *r = &rs->r[i];
        if (!is_linear(r)) continue;
        const double gf = r->flops / r->sec / 1e9, gb = r->bytes / r->sec / 1e9;
        const double pk = row_peak(r, peak);
        /* the roofline of this variant's own weight bytes */
        const double roof = fmin(pk > 0 ? pk : INFINITY, bw * r->flops / r->bytes);
        char d[32] = "(reference)";
        if (!isnan(r->diff))
            snprintf(d, sizeof(d), "%.1e", r->diff);
        else if (r->speedup != 1.0 || strcmp(r->variant, "portable"))
            strcpy(d, "-");
        char b16[16];
        printf("%5d %5d %5d  %-11s %10.3f %9.1f %8.2f %6.1f%% %6.1f%% %7s %6.1f%% %7.2fx  %s\n",
               r->n, r->k, r->m, r->variant, r->sec * 1e3, gf, gb, 100 * gb / bw,
               pk > 0 ? 100 * gf / pk : 0, pct_bf16(r, bf16_peak, b16, sizeof(b16)),
               100 * gf / roof, r->speedup, d);
        json_t *e = row_json(r, bw, peak, bf16_peak);
        json_object_set_new(e, "pct_roofline", json_real(100 * gf / roof));
        const double rb = vs_onednn(rs, r, "onednn-bf16"), rf = vs_onednn(rs, r, "onednn-f32");
        if (!isnan(rb)) json_object_set_new(e, "vs_onednn_bf16", json_real(rb));
        if (!isnan(rf)) json_object_set_new(e, "vs_onednn_f32", json_real(rf));
        json_array_append_new(jres, e);
    }
}

/* Each of our variants (but portable, when there are others) against oneDNN, shape by
 * shape (n/a without oneDNN). */
static void report_vs_onednn(const results *rs, int nv, int threads)
{
    char ver[96];
    printf("\nFP8 linear (ours) against oneDNN's matmul on the same product, same run, %d threads "
           "each (%s): GFLOP/s and ours / oneDNN\n",
           threads, dsr1__onednn_version(ver, sizeof(ver)));
    if (rs->onednn_why[0]) printf("oneDNN: %s\n", rs->onednn_why);
    printf("%5s %5s %5s  %-11s %8s %8s %10s %8s %9s  %s\n", "N", "K", "M", "ours", "GFLOP/s",
           "bf16", "ours/bf16", "f32", "ours/f32", "oneDNN bf16 implementation");
    for (int i = 0; i < rs->n; i++) {
        const result *r = &rs->r[i];
        if (strcmp(r->kernel, "linear_fp8") || (nv > 1 && !strcmp(r->variant, "portable")))
            continue;
        const double gf = r->flops / r->sec / 1e9;
        char cell[4][16];
        const char *impl = "n/a";
        for (int d = 0; d < 2; d++) {
            const double q = vs_onednn(rs, r, d == 0 ? "onednn-bf16" : "onednn-f32");
            snprintf(cell[2 * d], 16, isnan(q) ? "n/a" : "%.1f", gf / q);
            snprintf(cell[2 * d + 1], 16, isnan(q) ? "n/a" : "%.2fx", q);
        }
        for (int j = 0; j < rs->n; j++)
            if (!strcmp(rs->r[j].variant, "onednn-bf16") && rs->r[j].n == r->n &&
                rs->r[j].k == r->k && rs->r[j].m == r->m)
                impl = rs->r[j].impl;
        printf("%5d %5d %5d  %-11s %8.1f %8s %10s %8s %9s  %s\n", r->n, r->k, r->m, r->variant, gf,
               cell[0], cell[1], cell[2], cell[3], impl);
    }
}

static void report_decode(const results *rs, double bw, double peak, double bf16_peak, json_t *jres)
{
    printf("\ndecode-step kernels at R1 shapes (128 heads, kv_lora 512, rope 64), one token; "
           "GB/s: weights read (absorb) or cache rows read (attention, paged in blocks of %d "
           "rows)\n",
           MLA_BLOCK);
    printf("%-35s %-10s %10s %9s %8s %7s %7s %7s %8s\n", "kernel", "variant", "ms/call", "GFLOP/s",
           "GB/s", "%BW", "%FMA", "%bf16", "speedup");
    for (int i = 0; i < rs->n; i++) {
        const result *r = &rs->r[i];
        if (is_linear(r)) continue;
        const double gf = r->flops / r->sec / 1e9, gb = r->bytes / r->sec / 1e9;
        char name[64];
        if (r->ctx)
            snprintf(name, sizeof(name), "MLA attention, %d cached tokens", r->ctx);
        else
            snprintf(name, sizeof(name), "absorb q' = Wk^T q (kv_b, FP8)");
        char b16[16];
        printf("%-35s %-10s %10.3f %9.1f %8.2f %6.1f%% %6.1f%% %7s %7.2fx\n", name, r->variant,
               r->sec * 1e3, gf, gb, 100 * gb / bw, peak > 0 ? 100 * gf / peak : 0,
               pct_bf16(r, bf16_peak, b16, sizeof(b16)), r->speedup);
        json_array_append_new(jres, row_json(r, bw, peak, bf16_peak));
    }
}

/* A bf16 peak for the limits line: "best GFLOP/s (before b, after a)" or "n/a (why)". */
static const char *peak_str(char *buf, size_t len, double best, double before, double after,
                            const char *why)
{
    if (best > 0)
        snprintf(buf, len, "%.1f GFLOP/s (before %.1f, after %.1f)", best, before, after);
    else
        snprintf(buf, len, "n/a (%s)", why);
    return buf;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: dsr1-bench kernels [--quick] [--attention] [--json FILE]\n\n"
               "Machine limits (read bandwidth, FMA and bf16 peaks: dsr1-bench limits); FP8\n"
               "linear at R1 expert shapes per kernel variant and against oneDNN's bf16/f32\n"
               "matmul (n/a when not built in); the decode-step absorption; MLA attention over\n"
               "1K-32K cached tokens.\n\n"
               "  --quick      smaller buffers, fewer repetitions, no M = 4096 (a few minutes)\n"
               "  --attention  only MLA attention, avx512 against bf16-tiles (speed-up over\n"
               "               avx512)\n"
               "  --json FILE  also write the results as JSON\n"
               "environment: DSR1_THREADS=N threads (default: all cores; oneDNN gets as many)\n");
}

int dsr1__bench_kernels(int argc, char **argv)
{
    bool quick, attention_only = false;
    const char *json_path;
    for (int i = 1; i < argc; i++) /* --attention: taken out before the common options */
        if (strcmp(argv[i], "--attention") == 0) {
            attention_only = true;
            for (int q = i; q + 1 < argc; q++) argv[q] = argv[q + 1];
            argc--;
            i--;
        }
    const int prc =
        dsr1__bench_quick_json("dsr1-bench kernels", argc, argv, usage, &quick, &json_path);
    if (prc) return prc == 1 ? 0 : 2;
    const bench_opts o = quick ? (bench_opts){true, 3, 0.15, 3.0, (size_t)192 << 20}
                               : (bench_opts){false, 5, 0.25, 10.0, (size_t)512 << 20};
    dsr1_pool *pool;
    if (dsr1_pool_create(0, &pool) != DSR1_OK) {
        fprintf(stderr, "dsr1-bench: %s\n", dsr1_errmsg());
        return 1;
    }
    const dsr1_kernels *vars[MAX_VARIANTS];
    int nv = 0;
    if (!attention_only) vars[nv++] = dsr1_kernels_portable();
    static const char *const names[] = {"avx512", "bf16-tiles"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const dsr1_kernels *k = dsr1_kernels_select(names[i]);
        if (k) vars[nv++] = k;
    }
    const size_t bw_bytes = o.quick ? (size_t)512 << 20 : (size_t)1 << 30;
    const int passes = o.quick ? 10 : 20;
    const char *why_bf16 = "", *why_amx = "";
    fprintf(stderr, "machine limits ...\n");
    const double bw0 = dsr1__bench_read_gbps(pool, bw_bytes, passes / 2);
    const double peak0 = dsr1__bench_fma_gflops(pool, passes);
    const double bf0 = dsr1__bench_bf16_gflops(pool, passes, &why_bf16);
    const double amx0 = dsr1__bench_amx_gflops(pool, passes, &why_amx);

    results *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        dsr1_pool_destroy(pool);
        return 1;
    }
    static const int ms_quick[] = {1, 8, 64, 512}, ms_full[] = {1, 8, 64, 512, 4096};
    const int *ms = o.quick ? ms_quick : ms_full, nm = o.quick ? 4 : 5;
    if (!attention_only) {
        bench_linear(pool, &o, 2048, 7168, ms, nm, vars, nv, rs);
        bench_linear(pool, &o, 7168, 2048, ms, nm, vars, nv, rs);
        bench_absorb(pool, &o, vars, nv, rs);
    }
    if (nv > 0) bench_mla_attention(pool, &o, vars, nv, rs);

    fprintf(stderr, "machine limits again ...\n");
    const double bw1 = dsr1__bench_read_gbps(pool, bw_bytes, passes / 2);
    const double peak1 = dsr1__bench_fma_gflops(pool, passes);
    const double bf1 = dsr1__bench_bf16_gflops(pool, passes, &why_bf16);
    const double amx1 = dsr1__bench_amx_gflops(pool, passes, &why_amx);
    const double bw = fmax(bw0, bw1), peak = fmax(peak0, peak1);
    const double bf16 = fmax(bf0, bf1), amx = fmax(amx0, amx1);
    /* bf16-tiles runs on AMX tiles wherever the tile layer has them (kernels/cpu/fast.h),
     * else on vdpbf16ps: its rows' %bf16 is of that arithmetic's peak */
    bool has_tiles = false;
    for (int v = 0; v < nv; v++) has_tiles |= !strcmp(vars[v]->name, "bf16-tiles");
    const bool on_amx = dsr1__tile_amx(NULL) != NULL;
    const double tiles_peak = on_amx ? amx : bf16;
    const char *tiles_on = !has_tiles ? "n/a" : on_amx ? "AMX" : "vdpbf16ps";
    printf("dsr1-bench kernels%s: %d threads; variants:", o.quick ? " --quick" : "",
           dsr1_pool_size(pool));
    for (int v = 0; v < nv; v++) printf(" %s", vars[v]->name);
    printf("\nstreaming read %.1f GB/s (before %.1f, after %.1f); AVX-512 fp32 FMA peak %s%.1f "
           "GFLOP/s (before %.1f, after %.1f)\n",
           bw, bw0, bw1, peak > 0 ? "" : "(n/a) ", peak, peak0, peak1);
    char pk[2][160];
    printf("AVX512_BF16 vdpbf16ps peak %s; AMX bf16 TDPBF16PS peak %s; bf16-tiles runs on %s\n",
           peak_str(pk[0], sizeof(pk[0]), bf16, bf0, bf1, why_bf16),
           peak_str(pk[1], sizeof(pk[1]), amx, amx0, amx1, why_amx), tiles_on);
    if (fmin(bw0, bw1) < 0.85 * bw || fmin(peak0, peak1) < 0.85 * peak ||
        fmin(bf0, bf1) < 0.85 * bf16 || fmin(amx0, amx1) < 0.85 * amx)
        printf("note: the limits moved by more than 15%% during the run: the machine was busy "
               "(ratios use the larger values)\n");

    json_t *root = json_object(), *jres = json_array();
    if (!attention_only) {
        report_linear(rs, bw, peak, tiles_peak, jres);
        report_vs_onednn(rs, nv, dsr1_pool_size(pool));
    }
    report_decode(rs, bw, peak, tiles_peak, jres);
    json_object_set_new(root, "threads", json_integer(dsr1_pool_size(pool)));
    json_object_set_new(root, "quick", json_boolean(o.quick));
    char ver[96];
    json_object_set_new(root, "onednn", json_string(dsr1__onednn_version(ver, sizeof(ver))));
    json_object_set_new(root, "read_gbps", json_real(bw));
    json_object_set_new(root, "fma_peak_gflops", json_real(peak));
    json_object_set_new(root, "read_gbps_before_after", json_pack("[f,f]", bw0, bw1));
    json_object_set_new(root, "fma_peak_gflops_before_after", json_pack("[f,f]", peak0, peak1));
    /* null where n/a */
    json_object_set_new(root, "bf16_peak_gflops", bf16 > 0 ? json_real(bf16) : json_null());
    json_object_set_new(root, "amx_bf16_peak_gflops", amx > 0 ? json_real(amx) : json_null());
    if (bf16 > 0)
        json_object_set_new(root, "bf16_peak_gflops_before_after", json_pack("[f,f]", bf0, bf1));
    if (amx > 0)
        json_object_set_new(root, "amx_bf16_peak_gflops_before_after",
                            json_pack("[f,f]", amx0, amx1));
    if (has_tiles) /* which peak its rows' pct_bf16_peak is of */
        json_object_set_new(root, "bf16_tiles_arithmetic",
                            json_string(on_amx ? "amx" : "vdpbf16ps"));
    json_object_set_new(root, "results", jres);
    int rc = 0;
    if (json_path && json_dump_file(root, json_path, JSON_INDENT(2)) != 0) {
        fprintf(stderr, "dsr1-bench: cannot write %s\n", json_path);
        rc = 1;
    }
    json_decref(root);
    free(rs);
    dsr1_pool_destroy(pool);
    return rc;
}
